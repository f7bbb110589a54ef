/* SPDX-License-Identifier: MIT */
/* Internal state of the OpenCL module: one context, one in-order queue and one program on the
 * chosen device. Buffers handed to libsona are cl_mem handles cast to pointers.
 *
 * The module's files depend only downward: this header (the state and the error helpers of
 * ocl_error.c) at the bottom; ocl_program.h, ocl_locality.h and ocl_ops.h (each its .c) above
 * it; ocl_context.c, the entry point, on top. Nothing below calls into what is above.
 *
 * Environment:
 *   SONA_OPENCL_DEVICE  device index (as listed in the "not available" message), a substring of
 *                       the device name, or "any" (GPUs first, else a CPU device such as PoCL).
 *                       Unset: GPUs and accelerators only, unless SONA_BACKEND=opencl.
 *   SONA_CACHE_DIR      program binary cache (default $XDG_CACHE_HOME/sona/opencl or
 *                       ~/.cache/sona/opencl); used only when it is this user's alone.
 *   SONA_OPENCL_FAULT   an op name or "all": that op fails with SONA_E_BACKEND (tests of the
 *                       CPU fallback). */
#ifndef SONA_OPENCL_OCL_H
#define SONA_OPENCL_OCL_H

#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <pthread.h>

#include "backend/ops.h"
#include "gpu/host_locality.h"

enum ocl_kernel_id {
    K_LORA_APPLY,
    K_LORA_GRAD_ROWS,
    K_LORA_GRAD_ACCUMULATE,
    K_SEGMENT_CLIP,
    K_PARAM_STEP,
    K_SQDIST_ARGMIN,
    K_ROW_NORMS,
    K_COSINE_BLOCK,
    K_TOPK_ROWS,
    K_CLUSTER_SUMS,
    K_ARGMIN_FROM_GEMM,
    K_COUNT
};

typedef struct ocl_scratch {
    cl_mem buf;
    size_t cap;
} ocl_scratch;

enum { S_A, S_B, S_C, S_DUMMY, S_COUNT };

typedef struct ocl_ctx {
    cl_platform_id platform;
    cl_device_id device;
    cl_context context;
    cl_command_queue queue;
    cl_program program;
    cl_kernel kernels[K_COUNT];
    size_t wg;                /* SONA_WG of the program */
    size_t max_alloc;         /* CL_DEVICE_MAX_MEM_ALLOC_SIZE */
    int from_cache;           /* the program binary came from the disk cache */
    char cache_path[1024];    /* where the binary is (or would be) cached */
    char cache_note[256];     /* why the cache was not used ("" when it was, or was empty) */
    char device_text[1024];   /* sona_backend.device */
    const char *fault_op;     /* SONA_OPENCL_FAULT: op name (or "all") that fails on purpose */
    sona_host_locality near;  /* host CPUs near the device */
    pthread_mutex_t lock;     /* kernels' arguments and scratch buffers are shared state */
    ocl_scratch scratch[S_COUNT];
} ocl_ctx;

/* Errors (ocl_error.c). Records "call: CL status name (detail)" as the thread's last error;
 * returns st. */
sona_status ocl_fail(sona_status st, const char *call, cl_int err, const char *detail);
/* Records a message without a CL status. */
sona_status ocl_failf(sona_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *ocl_last_error(void *ctx);
const char *ocl_status_name(cl_int err);

#endif
