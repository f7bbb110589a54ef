/* SPDX-License-Identifier: MIT */
/* The op entry points (ocl_ops.c), above ocl.h and ocl_program.h. */
#ifndef SONA_OPENCL_OCL_OPS_H
#define SONA_OPENCL_OCL_OPS_H

#include "opencl/ocl.h"

int ocl_supports(void *ctx, sona_op op, const void *args);
sona_status ocl_lora_apply(void *ctx, const sona_lora_apply_args *a);
sona_status ocl_lora_grad(void *ctx, const sona_lora_grad_args *a);
sona_status ocl_param_update(void *ctx, const sona_param_update_args *a);
sona_status ocl_sqdist_argmin(void *ctx, const sona_sqdist_argmin_args *a);
sona_status ocl_knn_exact(void *ctx, const sona_knn_exact_args *a);
sona_status ocl_gemm(void *ctx, const sona_gemm_args *a);
sona_status ocl_cluster_sums(void *ctx, const sona_cluster_sums_args *a);

#endif
