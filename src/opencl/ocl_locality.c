/* SPDX-License-Identifier: MIT */
/* Host-thread placement near the OpenCL device: hwloc finds the CPUs local to the device's PCI
 * slot through the AMD/NVIDIA topology extensions (gpu/host_locality.c does the rest). A CPU
 * device, or a GPU hwloc cannot place, gets no preference: binding then leaves the thread where
 * it is. */
#include "opencl/ocl_locality.h"

#ifdef SONA_HAVE_HWLOC
#include <hwloc.h>
#include <hwloc/opencl.h>

static int device_cpuset(void *topology, void *set, const void *device)
{
    return hwloc_opencl_get_device_cpuset((hwloc_topology_t)topology,
                                          *(const cl_device_id *)device, (hwloc_cpuset_t)set);
}
#else
#define device_cpuset NULL
#endif

void ocl_locality_init(ocl_ctx *c)
{
    sona_host_locality_init(&c->near, device_cpuset, &c->device);
}

sona_status ocl_bind_host_thread(void *ctx)
{
    const ocl_ctx *c = ctx;
    if (sona_host_locality_bind(&c->near) != 0)
        return ocl_failf(SONA_E_BACKEND, "hwloc_set_cpubind to the %s failed", c->near.text);
    return SONA_OK;
}
