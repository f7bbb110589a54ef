/* Host-thread placement near the OpenCL device: hwloc tells which host CPUs are local to the
 * device's PCI slot (through the AMD/NVIDIA topology extensions). A CPU device, or a GPU hwloc
 * cannot place, gets no preference: binding then leaves the thread where it is. */
#include "opencl/ocl.h"

#include <stdio.h>

#ifdef SONA_HAVE_HWLOC
#include <hwloc.h>
#include <hwloc/opencl.h>
#endif

void ocl_locality_init(ocl_ctx *c)
{
#ifdef SONA_HAVE_HWLOC
    hwloc_topology_t topo;
    snprintf(c->near_text, sizeof c->near_text, "CPUs: no preference (hwloc cannot place it)");
    if (hwloc_topology_init(&topo) != 0)
        return;
    /* PCI devices are filtered out by default; they are what ties a GPU to a NUMA node. */
    hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (!set || hwloc_topology_load(topo) != 0 ||
        hwloc_opencl_get_device_cpuset(topo, c->device, set) != 0 || hwloc_bitmap_iszero(set) ||
        hwloc_bitmap_isincluded(hwloc_topology_get_topology_cpuset(topo), set)) {
        if (set && !hwloc_bitmap_iszero(set))
            snprintf(c->near_text, sizeof c->near_text, "CPUs: no preference (device local to all)");
        hwloc_bitmap_free(set);
        hwloc_topology_destroy(topo);
        return;
    }
    char list[64];
    hwloc_bitmap_list_snprintf(list, sizeof list, set);
    snprintf(c->near_text, sizeof c->near_text, "CPUs near it: %s", list);
    c->topology = topo;
    c->near_cpus = set;
#else
    snprintf(c->near_text, sizeof c->near_text, "CPUs: no preference (built without hwloc)");
#endif
}

void ocl_locality_free(ocl_ctx *c)
{
#ifdef SONA_HAVE_HWLOC
    if (c->near_cpus)
        hwloc_bitmap_free((hwloc_bitmap_t)c->near_cpus);
    if (c->topology)
        hwloc_topology_destroy((hwloc_topology_t)c->topology);
#endif
    c->near_cpus = c->topology = NULL;
}

sona_status ocl_bind_host_thread(void *ctx)
{
    ocl_ctx *c = ctx;
#ifdef SONA_HAVE_HWLOC
    if (c->near_cpus && hwloc_set_cpubind((hwloc_topology_t)c->topology,
                                          (hwloc_const_bitmap_t)c->near_cpus,
                                          HWLOC_CPUBIND_THREAD) != 0)
        return ocl_failf(SONA_E_BACKEND, "hwloc_set_cpubind to the %s failed", c->near_text);
#else
    (void)c;
#endif
    return SONA_OK;
}
