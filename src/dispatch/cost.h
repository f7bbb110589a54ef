/* SPDX-License-Identifier: MIT */
/* Routing by cost (docs/architecture.md, "Routing by cost"): each backend has a cost model, each
 * op of backend/ops.def a flop count and a byte count per shape, and an op goes to the backend
 * whose model says it finishes first:
 *
 *   time(b, op, shape) = launch(b) + transfer_bytes(op, shape) / transfer_bw(b)
 *                        + max(flops(op, shape) / (peak(b) * efficiency(b, op)),
 *                              bytes(op, shape) / memory_bw(b))
 *
 * where memory_bw is the cache's (cache_gbs) for operands that fit in cache_bytes (the CPU's
 * last-level cache: a per-request op finds its adapter there, touched by the request before).
 *
 * transfer_bytes are the bytes a call moves between host and device when the backend's buffers
 * are not host memory: the rows in and out, with the operands that stay resident between calls
 * (adapter weights, centroids, the searched set, accumulated gradients) left out. A model starts
 * from a table of defaults per backend kind and is refined once per process by a few
 * microbenchmarks on the backend itself (under ~50 ms in all; not cached on disk). SONA_BACKEND
 * overrides the model. Every op run through sona_op_call / sona_op_run is counted per op and per
 * backend kind. */
#ifndef SONA_DISPATCH_COST_H
#define SONA_DISPATCH_COST_H

#include "backend/ops.h"
#include "dispatch/op_buffers.h"

#include <stdint.h>
#include <stdio.h>

/* The kinds of backend calls are counted and models are defaulted by: every CPU variant is
 * "cpu". */
typedef enum sona_backend_kind {
    SONA_KIND_CPU,
    SONA_KIND_OPENCL,
    SONA_KIND_CUDA,
    SONA_KIND_COUNT
} sona_backend_kind;

sona_backend_kind sona_backend_kind_of(const sona_backend *b);
const char *sona_backend_kind_name(sona_backend_kind k);

typedef struct sona_cost_model {
    double launch_us;         /* fixed cost of one call (launch, queue, sync) */
    double transfer_gbs;      /* host <-> device GB/s; 0: buffers are host memory, nothing moves */
    double peak_gflops;       /* compute peak */
    double memory_gbs;        /* bandwidth of the memory the op's operands live in */
    double cache_bytes;       /* operands up to this size are served by the cache: 0 = none */
    double cache_gbs;         /* ... at this bandwidth */
    double efficiency[SONA_OP_COUNT]; /* the share of peak each op reaches, in (0, 1] */
    int calibrated;           /* 1: refined by microbenchmarks in this process */
} sona_cost_model;

/* The defaults of a backend kind (a table; no measurement). */
void sona_cost_model_default(sona_backend_kind k, sona_cost_model *out);

/* b's model: the one set by sona_cost_model_set, else the defaults of b's kind refined once by
 * microbenchmarks on b (at its first use; thread-safe). */
void sona_cost_model_get(const sona_backend *b, sona_cost_model *out);

/* Installs a model for b (tests, or a caller with a measured table): no calibration for b after
 * this. NULL removes it (b's next use calibrates again). Keeps up to 8 backends. */
void sona_cost_model_set(const sona_backend *b, const sona_cost_model *m);

/* The work of op with args (its sona_*_args; only the shape fields are read). */
typedef struct sona_op_work {
    double flops;          /* floating-point operations */
    double bytes;          /* bytes read and written in the backend's memory */
    double transfer_bytes; /* bytes crossing host <-> device per call (operands that stay resident
                            * on the device between calls left out) */
} sona_op_work;
int sona_op_work_of(sona_op op, const void *args, sona_op_work *out); /* 0: unknown op */

/* Estimated microseconds of op with args on b. */
double sona_cost_us(const sona_backend *b, sona_op op, const void *args);

/* The backend op with args should run on: SONA_BACKEND's when set (device when it names device's
 * backend, else the CPU), else whichever of the CPU and device (NULL: none) has the lower cost,
 * the CPU on a tie or when device does not support the op with these args. Never NULL. */
const sona_backend *sona_route(sona_op op, const void *args, const sona_backend *device);

/* The shape family `sona info` reports crossovers on: args of op with its size axis at `size`
 * (rows for the row ops, floats for param_update, queries for knn_exact, m = n = k for gemm) and
 * the other dimensions fixed at a typical engine shape. `axis` describes the axis and the fixed
 * dimensions. 0 for an unknown op. */
int sona_cost_shape(sona_op op, uint64_t size, sona_op_args *args, const char **axis);

/* The smallest size of op's shape family (sona_cost_shape) from which device costs less than
 * the CPU, searched up to 2^26; 0 when it never does. */
uint64_t sona_cost_crossover(sona_op op, const sona_backend *device);

/* Calls run through sona_op_call (and so sona_op_run, the CPU fallback included), per op and
 * backend kind, since the process started: counted per thread without locked instructions,
 * summed when read (exact for the calls that returned before the read). */
uint64_t sona_dispatch_calls(sona_op op, sona_backend_kind k);
void sona_dispatch_count_call(sona_op op, const sona_backend *b);

/* Writes the routing table to f: each backend's model, and per op the size from which each
 * device takes over from the CPU ("never" when it does not; from its kind's table, marked, when
 * it is not available here) and the calls counted so far. Loads the GPU modules. `sona info`
 * prints it. */
void sona_cost_report(FILE *f);

#endif /* SONA_DISPATCH_COST_H */
