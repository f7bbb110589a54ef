/* Host-thread placement near the CUDA device: hwloc tells which host CPUs are local to the
 * device's PCI slot (hwloc/cudart.h: the runtime's PCI ids, then the slot's local_cpus in
 * sysfs). A device hwloc cannot place, or one local to every CPU, gets no preference: binding
 * then leaves the thread where it is. Host code only. */
#include "cuda/cuda_internal.h"

#include <stdio.h>

#ifdef SONA_HAVE_HWLOC
#include <hwloc.h>
#include <hwloc/cudart.h>
#endif

void sona_cuda_locality_init(sona_cuda_locality *l, int device)
{
    l->topology = l->near_cpus = NULL;
#ifdef SONA_HAVE_HWLOC
    snprintf(l->text, sizeof l->text, "CPUs: no preference (hwloc cannot place it)");
    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo) != 0)
        return;
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (!set || hwloc_topology_load(topo) != 0 ||
        hwloc_cudart_get_device_cpuset(topo, device, set) != 0 || hwloc_bitmap_iszero(set) ||
        hwloc_bitmap_isincluded(hwloc_topology_get_topology_cpuset(topo), set)) {
        if (set && !hwloc_bitmap_iszero(set))
            snprintf(l->text, sizeof l->text, "CPUs: no preference (device local to all)");
        hwloc_bitmap_free(set);
        hwloc_topology_destroy(topo);
        return;
    }
    char list[64];
    hwloc_bitmap_list_snprintf(list, sizeof list, set);
    snprintf(l->text, sizeof l->text, "CPUs near it: %s", list);
    l->topology = topo;
    l->near_cpus = set;
#else
    (void)device;
    snprintf(l->text, sizeof l->text, "CPUs: no preference (built without hwloc)");
#endif
}

int sona_cuda_locality_bind(const sona_cuda_locality *l)
{
#ifdef SONA_HAVE_HWLOC
    if (l->near_cpus && hwloc_set_cpubind(static_cast<hwloc_topology_t>(l->topology),
                                          static_cast<hwloc_const_bitmap_t>(l->near_cpus),
                                          HWLOC_CPUBIND_THREAD) != 0)
        return -1;
#else
    (void)l;
#endif
    return 0;
}

void sona_cuda_locality_free(sona_cuda_locality *l)
{
#ifdef SONA_HAVE_HWLOC
    if (l->near_cpus)
        hwloc_bitmap_free(static_cast<hwloc_bitmap_t>(l->near_cpus));
    if (l->topology)
        hwloc_topology_destroy(static_cast<hwloc_topology_t>(l->topology));
#endif
    l->topology = l->near_cpus = NULL;
}
