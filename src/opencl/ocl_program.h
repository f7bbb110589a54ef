/* SPDX-License-Identifier: MIT */
/* The module's program and kernels (ocl_program.c), above ocl.h. */
#ifndef SONA_OPENCL_OCL_PROGRAM_H
#define SONA_OPENCL_OCL_PROGRAM_H

#include "opencl/ocl.h"

/* Builds (or loads from the disk cache) the program and creates every kernel. */
sona_status ocl_program_load(ocl_ctx *c);
/* The kernel function's name, for error messages. */
const char *ocl_kernel_name(int k);

#endif
