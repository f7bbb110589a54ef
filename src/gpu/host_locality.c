/* SPDX-License-Identifier: MIT */
#include "gpu/host_locality.h"

#include <stddef.h>
#include <stdio.h>

#ifdef SONA_HAVE_HWLOC
#include <hwloc.h>
#endif

void sona_host_locality_init(sona_host_locality *l, sona_device_cpuset_fn device_cpuset,
                             const void *device)
{
    l->topology = l->near_cpus = NULL;
#ifdef SONA_HAVE_HWLOC
    hwloc_topology_t topo;
    snprintf(l->text, sizeof l->text, "CPUs: no preference (hwloc cannot place it)");
    if (hwloc_topology_init(&topo) != 0)
        return;
    /* PCI devices are filtered out by default; they are what ties a GPU to a NUMA node. */
    hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (!set || hwloc_topology_load(topo) != 0 || device_cpuset(topo, set, device) != 0 ||
        hwloc_bitmap_iszero(set) ||
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
    (void)device_cpuset;
    (void)device;
    snprintf(l->text, sizeof l->text, "CPUs: no preference (built without hwloc)");
#endif
}

int sona_host_locality_bind(const sona_host_locality *l)
{
#ifdef SONA_HAVE_HWLOC
    if (l->near_cpus && hwloc_set_cpubind((hwloc_topology_t)l->topology,
                                          (hwloc_const_bitmap_t)l->near_cpus,
                                          HWLOC_CPUBIND_THREAD) != 0)
        return -1;
#else
    (void)l;
#endif
    return 0;
}

void sona_host_locality_free(sona_host_locality *l)
{
#ifdef SONA_HAVE_HWLOC
    if (l->near_cpus)
        hwloc_bitmap_free((hwloc_bitmap_t)l->near_cpus);
    if (l->topology)
        hwloc_topology_destroy((hwloc_topology_t)l->topology);
#endif
    l->topology = l->near_cpus = NULL;
}
