/* SPDX-License-Identifier: MIT */
/* The op table: what every backend and every CPU variant implements (docs/architecture.md).
 *
 * Ops take plain buffers and shapes, never core types. A buffer is whatever the backend's
 * alloc() returned: a host pointer for the CPU, a device pointer for CUDA, a cl_mem for OpenCL
 * (cast to the pointer type of the field). All data is float32, rows are contiguous (row-major). */
#ifndef SONA_BACKEND_OPS_H
#define SONA_BACKEND_OPS_H

#include "sona/common.h"
#include "sona/lora.h"

/* The ops of backend/ops.def, numbered from 0. */
typedef enum sona_op {
#define SONA_OP(id, field, args) SONA_OP_##id,
#include "backend/ops.def"
#undef SONA_OP
    SONA_OP_COUNT
} sona_op;

const char *sona_op_name(sona_op op);

/* Adapter weights of a set of `num_adapters` adapters of one shape:
 *   A  [num_adapters][rank][hidden]   (A x is rank dot products of length hidden)
 *   Bt [num_adapters][rank][hidden]   (B transposed: row j is column j of B)
 *   scale[num_adapters]               (alpha / rank, per adapter)
 * Both matrices are stored rank-major so that every kernel streams hidden-long rows. */
typedef struct sona_lora_weights {
    uint32_t hidden, rank, num_adapters;
    const float *A;
    const float *Bt;
    const float *scale;
} sona_lora_weights;

/* y[i] = x[i] + scale[id] * Bt[id]^T (A[id] x[i]) for each row i with ids[i] >= 0, y[i] = x[i]
 * when ids[i] == -1. x and y are n x hidden; y may be the same buffer as x. */
typedef struct sona_lora_apply_args {
    sona_lora_weights w;
    uint32_t n;
    const int32_t *ids;
    const float *x;
    float *y;
} sona_lora_apply_args;

/* Accumulates ascent gradients of J = sum_i wt[i] <y(x_i) - x_i, d_i> for the rows with
 * ids[i] >= 0 (rows with -1 are skipped):
 *   gA[id]  += wt[i] * s * (B^T d_i) x_i^T      (rank x hidden)
 *   gBt[id] += wt[i] * s * (A x_i) d_i^T        (rank x hidden, i.e. dB transposed)
 * x and d are n x hidden; gA and gBt have the shape of A and Bt. */
typedef struct sona_lora_grad_args {
    sona_lora_weights w;
    uint32_t n;
    const int32_t *ids;
    const float *x;
    const float *d;
    const float *wt;
    float *gA;
    float *gBt;
} sona_lora_grad_args;

/* Fused update of `segments` parameter vectors of len floats each, stored back to back in
 * theta[segments * len], with ascent gradients g (same shape). For each segment:
 *   c       = (clip_norm > 0 && |g_seg|_2 > clip_norm) ? clip_norm / |g_seg|_2 : 1
 *   theta  += lr * (c * g[i] - lambda * (fisher_sum[i] * theta[i] - fisher_theta[i]))
 *   fisher  = decay * fisher + (1 - decay) * (c * g[i])^2          (when fisher != NULL)
 * The EWC penalty lambda * sum_t F_t (theta - theta*_t) is passed pre-reduced as
 * fisher_sum = sum_t F_t and fisher_theta = sum_t F_t theta*_t (both NULL: no penalty).
 * theta on the right-hand side is the value before the step. A zero gradient without a
 * penalty leaves theta bit-for-bit unchanged. */
typedef struct sona_param_update_args {
    uint32_t segments, len;
    float *theta;
    const float *g;
    const float *fisher_sum;
    const float *fisher_theta;
    float *fisher;
    float lr, lambda, clip_norm, decay;
} sona_param_update_args;

/* For each row of X[n][d]: the index of the nearest row of C[k][d] by squared Euclidean
 * distance (lowest index on ties) and that distance (>= 0). */
typedef struct sona_sqdist_argmin_args {
    uint32_t n, k, d;
    const float *X;
    const float *C;
    int32_t *idx;
    float *dist;
} sona_sqdist_argmin_args;

/* For each query row of Q[m][d]: the k rows of P[n][d] with the highest cosine similarity,
 * best first (lower index first on ties), as idx[m][k] and sim[m][k]. A zero-norm row has
 * similarity 0 with everything. When k > n the tail is idx -1, sim -INFINITY. */
typedef struct sona_knn_exact_args {
    uint32_t m, n, d, k;
    const float *Q;
    const float *P;
    int32_t *idx;
    float *sim;
} sona_knn_exact_args;

/* C[m][n] = alpha * op(A) op(B) + beta * C, row-major; op(A) is m x k (A is k x m when
 * trans_a), op(B) is k x n (B is n x k when trans_b). beta == 0 ignores C's old contents. */
typedef struct sona_gemm_args {
    uint32_t m, n, k;
    int trans_a, trans_b;
    float alpha, beta;
    const float *A;
    const float *B;
    float *C;
} sona_gemm_args;

/* The k-means centroid step: for each cluster j < k, sums[j] = sum of the rows X[i] (of
 * X[n][d]) with idx[i] == j, and counts[j] = how many (exact integers). Rows with idx outside
 * 0..k-1 are ignored. Both outputs are overwritten. */
typedef struct sona_cluster_sums_args {
    uint32_t n, k, d;
    const float *X;
    const int32_t *idx;
    float *sums;
    uint32_t *counts;
} sona_cluster_sums_args;

/* Host kernels: the small loops core code runs on host memory one vector at a time (graph
 * search, finite checks, EWC++ updates, Q8 storage), where an op call per pair would cost more
 * than the arithmetic. CPU variants only (all NULL in GPU backends); the registry fills a
 * variant's NULL entries from scalar, so callers always get a kernel. Every variant gives
 * bit-identical results except dot, dot_f16 and dot_q8, whose summation order follows the
 * vector width. */
typedef float (*sona_dot_fn)(const float *a, const float *b, size_t n);
/* a (f32) . b (IEEE half, see common/half.h), accumulated in f32. */
typedef float (*sona_dot_f16_fn)(const float *a, const uint16_t *b, size_t n);
/* Widens n halves to f32. */
typedef void (*sona_widen_f16_fn)(const uint16_t *h, float *out, size_t n);
/* a (f32) . q (Q8 blocks, see common/q8.h), accumulated in f32. */
typedef float (*sona_dot_q8_fn)(const float *a, const void *q, size_t n);

typedef struct sona_host_kernels {
    sona_dot_fn dot;
    sona_dot_f16_fn dot_f16;
    sona_widen_f16_fn widen_f16;
    sona_dot_q8_fn dot_q8;
    /* whether all n floats are finite */
    int (*all_finite)(const float *v, size_t n);
    /* f = d * f + (1 - d) * g^2 */
    void (*fisher_ema)(float *f, const float *g, size_t n, float d);
    /* out = g - lambda * (fs * theta - ft) */
    void (*penalise)(float *out, const float *g, const float *theta, const float *fs,
                     const float *ft, size_t n, float lambda);
    double (*sum_squares)(const float *v, size_t n);
    /* the largest |v[i]| as IEEE bits (common/float_bits.h's sona_max_magnitude_bits) */
    uint32_t (*max_magnitude)(const float *v, size_t n);
    /* rows <- p rows in place: r <= 64 rows of n floats, stride apart, p r x r row-major */
    void (*mix_rows)(float *rows, size_t stride, const float *p, uint32_t r, size_t n);
    /* y += c x (y and x do not overlap); v *= c */
    void (*axpy)(float *y, const float *x, size_t n, float c);
    void (*scale)(float *v, size_t n, float c);
    /* Q8 (common/q8.h); encode returns 0 on NaN or Inf */
    int (*q8_encode)(const float *x, size_t n, void *out);
    void (*q8_decode)(const void *q, size_t n, float *out);
    /* x . y in double (of doubles, or of floats each product widened) in 8 lanes summed in a
     * fixed order; y += c x (x double or float): the same bits in every variant (the cluster
     * merge's arithmetic) */
    double (*dot_f64)(const double *x, const double *y, size_t n);
    double (*dot_f32_f64)(const float *x, const float *y, size_t n);
    void (*axpy_f64)(double *y, const double *x, size_t n, double c);
    void (*axpy_f32_f64)(double *y, const float *x, size_t n, double c);
    /* Four at once, with the bits of four calls of the above. The dots' lanes: for n a
     * multiple of 8, the products of x with y[j] added into the 8 lanes acc[8 j .. 8 j + 7]
     * (lane q: elements q, q + 8, ... in order; dispatch/vecmath.h's sona_dots_* add the tail
     * and the lanes' sum). The axpys: y += c[0] x[0] + ... + c[3] x[3], added in that order.
     * The SIMD variants read x (the dots) or y (the axpys) once for the four and keep four
     * sums in flight. */
    void (*dot4_lanes_f64)(const double *x, const double *const *y, size_t n, double *acc);
    void (*dot4_lanes_f32_f64)(const float *x, const float *const *y, size_t n, double *acc);
    void (*axpy4_f64)(double *y, const double *const *x, const double *c, size_t n);
    void (*axpy4_f32_f64)(double *y, const float *const *x, const double *c, size_t n);
    /* z[i r + j] = W_{ids[i]} row j . x_i (j < r) for the rows i < n with ids[i] >= 0, other
     * rows of z untouched: the unscaled down-projection of lora_apply (W laid out as its A or
     * Bt: adapters of r rows of h floats), accumulated in f32 like dot. The SIMD variants take
     * the rows by adapter, a few at a time, so each adapter's W is read once for several rows
     * (and a large call splits over the cores). */
    void (*lora_down)(const float *W, uint32_t r, uint32_t h, uint32_t adapters, uint32_t n, const int32_t *ids,
                      const float *x, float *z);
} sona_host_kernels;

/* The host kernels in sona_host_kernels order, for code that handles each the same way. */
#define SONA_HOST_KERNEL_LIST(X)                                                                \
    X(dot) X(dot_f16) X(widen_f16) X(dot_q8) X(all_finite) X(fisher_ema) X(penalise)            \
    X(sum_squares) X(max_magnitude) X(mix_rows) X(axpy) X(scale) X(q8_encode) X(q8_decode)      \
    X(dot_f64) X(dot_f32_f64) X(axpy_f64) X(axpy_f32_f64) X(dot4_lanes_f64)                    \
    X(dot4_lanes_f32_f64) X(axpy4_f64) X(axpy4_f32_f64) X(lora_down)

/* One backend, or one CPU variant: a struct of function pointers. A NULL op is unsupported.
 * ctx is the backend's own state (NULL for CPU variants). */
typedef struct sona_backend {
    const char *name;        /* "scalar", "avx2", "avx512", "neon", "opencl", "cuda" */
    const char *device;      /* human-readable device description */
    int host_memory;         /* 1: buffers are plain host pointers (alloc = aligned malloc) */
    void *ctx;

    /* Whether op can run with these args (shape limits, e.g. rank > 64). NULL: all shapes. */
    int (*supports)(void *ctx, sona_op op, const void *args);

    sona_status (*alloc)(void *ctx, size_t bytes, void **buf);
    void (*free)(void *ctx, void *buf);
    sona_status (*upload)(void *ctx, void *buf, size_t offset, const void *src, size_t bytes);
    sona_status (*download)(void *ctx, void *dst, const void *buf, size_t offset, size_t bytes);
    sona_status (*sync)(void *ctx);
    /* Optional device timing (NULL on host backends): timer_start marks the backend's queue;
     * timer_stop marks it again, waits for that mark and gives the device time between the
     * two marks in microseconds. For benchmarks: work issued in between is timed without host
     * waits. */
    sona_status (*timer_start)(void *ctx);
    sona_status (*timer_stop)(void *ctx, double *elapsed_us);
    /* Optional (NULL: no preference): binds the calling host thread to the CPUs nearest the
     * device (hwloc), so the host work that feeds the device stays on its NUMA node. SONA_OK
     * also when the device is not tied to a node. */
    sona_status (*bind_host_thread)(void *ctx);

    /* One field per op of backend/ops.def: sona_status lora_apply(void *ctx,
     * const sona_lora_apply_args *a), and so on. */
#define SONA_OP(id, field, args) sona_status (*field)(void *ctx, const args *a);
#include "backend/ops.def"
#undef SONA_OP

    /* Message of the backend's last failure, naming the failing call. */
    const char *(*last_error)(void *ctx);
    void (*shutdown)(void *ctx);

    sona_host_kernels host; /* CPU variants only */
} sona_backend;

/* Whether backend b can run op with args: the op exists and supports() agrees. */
int sona_backend_supports(const sona_backend *b, sona_op op, const void *args);

#endif /* SONA_BACKEND_OPS_H */
