/* SPDX-License-Identifier: MIT */
/* Host-thread placement near the CUDA device: hwloc finds the CPUs local to the device's PCI
 * slot from the runtime's PCI ids and sysfs (hwloc/cudart.h; gpu/host_locality.c does the
 * rest). A device hwloc cannot place, or one local to every CPU, gets no preference. */
#include "cuda/cuda_internal.h"

#ifdef SONA_HAVE_HWLOC
#include <hwloc.h>
#include <hwloc/cudart.h>

namespace {

int device_cpuset(void *topology, void *set, const void *device)
{
    return hwloc_cudart_get_device_cpuset(static_cast<hwloc_topology_t>(topology),
                                          *static_cast<const int *>(device),
                                          static_cast<hwloc_cpuset_t>(set));
}

} // namespace
#endif

void sona_cuda_locality_init(sona_host_locality *l, int device)
{
#ifdef SONA_HAVE_HWLOC
    sona_host_locality_init(l, device_cpuset, &device);
#else
    sona_host_locality_init(l, NULL, &device);
#endif
}
