/* SPDX-License-Identifier: MIT */
/* The op case tables shared by the cross-backend tests, the GPU check and the benchmarks (like
 * ggml's test-backend-ops): the shapes, random inputs from a printed seed, a double-precision
 * reference, and a checker with error bounds derived from each output's magnitude. */
#ifndef SONA_TEST_OP_CASES_H
#define SONA_TEST_OP_CASES_H

#include "backend/ops.h"

#include <stddef.h>
#include <stdint.h>

typedef struct op_case {
    sona_op op;
    /* lora_apply / lora_grad: n rows, hidden, rank, adapters (ids mixed, -1 included) */
    uint32_t n, hidden, rank, adapters;
    /* param_update: segments x len; flags below */
    uint32_t segments, len;
    /* sqdist_argmin, cluster_sums: n x d, k clusters;  knn_exact: m x d against n, top k;
     * gemm: m n k */
    uint32_t m, k, d;
    int trans_a, trans_b;
    int with_ewc, with_fisher, with_clip; /* param_update options */
    int in_place;                         /* lora_apply: y == x */
} op_case;

/* The correctness table: small and odd sizes (not multiples of any vector width). */
extern const op_case op_cases[];
extern const size_t op_case_count;

/* Correctness cases for GPU targets (sona_ops_check runs them there): shapes past the GPU kernels' tile
 * sizes (32768 pattern columns, 8M-float GEMM tiles, the 2048 x 8192 tiles of the TF32 knn
 * pass), too slow for the test suite's CPU runs. */
extern const op_case op_large_cases[];
extern const size_t op_large_case_count;

/* The benchmark table (`sona bench`'s op groups): serving sizes, each marked with where it is
 * worth timing. */
typedef struct op_bench_case {
    op_case c;
    int lloyd;    /* times a whole k-means Lloyd iteration (sqdist_argmin, cluster_sums, the
                   * centroid update on the host), not the op alone */
    int large;    /* skipped on CPU backends (OpenCL CPU devices included) by --quick */
    int slow_cpu; /* run only on SIMD CPU variants and GPUs: a minute or more per call on the
                   * scalar reference or an OpenCL CPU device */
    int gpu_only; /* skipped on CPU variants and OpenCL CPU devices */
} op_bench_case;
extern const op_bench_case op_bench_cases[];
extern const size_t op_bench_case_count;

/* Writes a short description such as "lora_apply n=5 h=257 r=3 a=4". */
void op_case_describe(const op_case *c, char *buf, size_t len);

/* One prepared instance: host inputs, the double reference, and a backend's result. */
typedef struct op_instance {
    op_case c;
    uint64_t seed;
    /* inputs (host) */
    int32_t *ids;
    float *x, *d, *wt, *A, *Bt, *scale;          /* lora */
    float *gA0, *gBt0;                           /* lora_grad: accumulators' initial values */
    float *theta0, *g, *fsum, *ftheta, *fisher0; /* param_update */
    float *X, *C;                                /* sqdist_argmin: X n x d, C k x d; gemm: A B C0 */
    float *Q, *P;                                /* knn */
    float *gemmA, *gemmB, *gemmC0;
    int32_t *iin;                                /* cluster_sums: idx */
    float alpha, beta;
    float lr, lambda, clip, decay;
    /* outputs: up to two float arrays and one int array, each with `out_len` elements */
    size_t out_len[2], iout_len;
    double *ref[2];        /* reference values */
    double *mag[2];        /* magnitude (sum of |terms|) per output, for the error bound */
    float *got[2];         /* backend results (host copies) */
    int32_t *iref, *igot;  /* argmin / top-k indices */
} op_instance;

/* Fills inputs from seed and computes the double reference. Returns 0 on success. */
int op_instance_prepare(op_instance *in, const op_case *c, uint64_t seed);
/* Only the inputs (the same values as op_instance_prepare), without outputs or reference: for
 * benchmarks, whose sizes would make the double reference far too slow. */
int op_instance_prepare_inputs(op_instance *in, const op_case *c, uint64_t seed);
void op_instance_free(op_instance *in);

/* Runs the case on backend b (uploads inputs to b's buffers, runs, downloads the results into
 * in->got / in->igot). Host-memory backends write straight into guarded host arrays and the
 * guards are checked. Returns SONA_OK, SONA_E_UNSUPPORTED when b lacks the op or shape, or the
 * backend's failure; msg gets details. */
sona_status op_instance_run(op_instance *in, const sona_backend *b, char *msg, size_t msg_len);

/* Compares got against the reference; 1 when within bounds, else 0 with the first
 * discrepancy described in msg. */
int op_instance_check(const op_instance *in, char *msg, size_t msg_len);

/* One row of the lora_apply reference in double: y = x + s Bt^T (A x) with A and Bt of r rows of
 * H, and mag the sum of the terms' magnitudes per output (the error bound's scale). r = 0: y = x. */
void op_ref_lora_row(const float *x, size_t H, size_t r, const float *A, const float *Bt, double s, double *y,
                     double *mag);

#endif
