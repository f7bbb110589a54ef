/* SPDX-License-Identifier: MIT */
/* Host-thread placement near the device (ocl_locality.c), above ocl.h. */
#ifndef SONA_OPENCL_OCL_LOCALITY_H
#define SONA_OPENCL_OCL_LOCALITY_H

#include "opencl/ocl.h"

void ocl_locality_init(ocl_ctx *c);
sona_status ocl_bind_host_thread(void *ctx);

#endif
