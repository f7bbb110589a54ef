/* SPDX-License-Identifier: MIT */
/* The host CPUs near a GPU, for the GPU modules' bind_host_thread: hwloc says which CPUs are
 * local to the device's PCI slot, and a thread feeding the device is bound to them. Compiled
 * into each module (OpenCL, CUDA) with that module's SONA_HAVE_HWLOC; C and C++. */
#ifndef SONA_GPU_HOST_LOCALITY_H
#define SONA_GPU_HOST_LOCALITY_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sona_host_locality {
    void *topology;  /* hwloc_topology_t, when the device is tied to some host CPUs */
    void *near_cpus; /* hwloc_bitmap_t of those CPUs, else NULL */
    char text[96];   /* "CPUs near it: 0-15", or why there is no preference */
} sona_host_locality;

/* Writes the device's local CPUs into set (topology: hwloc_topology_t, loaded; set:
 * hwloc_cpuset_t); 0 on success. */
typedef int (*sona_device_cpuset_fn)(void *topology, void *set, const void *device);

/* Fills l. A device the callback cannot place, one local to every CPU, or a build without
 * hwloc (device_cpuset is then never called and may be NULL) gets no preference. */
void sona_host_locality_init(sona_host_locality *l, sona_device_cpuset_fn device_cpuset,
                             const void *device);
/* Binds the calling thread to the CPUs near the device (nothing to do without a preference):
 * 0, or -1 when hwloc refused. */
int sona_host_locality_bind(const sona_host_locality *l);
void sona_host_locality_free(sona_host_locality *l);

#ifdef __cplusplus
}
#endif

#endif /* SONA_GPU_HOST_LOCALITY_H */
