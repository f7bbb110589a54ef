/* SPDX-License-Identifier: MIT */
/* The op table on OpenCL: launches of the kernels in kernels.cl, GEMM through CLBlast. Every
 * call is checked and named in the error; ops return SONA_E_BACKEND on a failure so the
 * dispatch layer can redo them on the CPU. */
#include "opencl/ocl_ops.h"
#include "opencl/ocl_program.h"

#include <clblast_c.h>
#include <stdio.h>
#include <string.h>

typedef struct karg {
    size_t size;
    const void *value;
} karg;
#define ARG(v) ((karg){sizeof(v), &(v)})

static cl_mem mem_of(const void *p) { return (cl_mem)(uintptr_t)p; }

static size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

/* A scratch buffer of at least bytes (grown on demand; held under c->lock). A failure is
 * SONA_E_BACKEND: the op fails and falls back, it is not out of host memory. */
static sona_status scratch_get(ocl_ctx *c, int slot, size_t bytes, cl_mem *out)
{
    ocl_scratch *s = &c->scratch[slot];
    if (!bytes)
        bytes = 4;
    if (s->cap < bytes || !s->buf) {
        if (s->buf)
            clReleaseMemObject(s->buf);
        s->buf = NULL;
        s->cap = 0;
        if (bytes > c->max_alloc)
            return ocl_failf(SONA_E_BACKEND, "clCreateBuffer: %zu bytes exceed the device's largest "
                             "allocation (%zu)", bytes, c->max_alloc);
        cl_int err;
        cl_mem m = clCreateBuffer(c->context, CL_MEM_READ_WRITE, bytes, NULL, &err);
        if (err != CL_SUCCESS)
            return ocl_fail(SONA_E_BACKEND, "clCreateBuffer", err, "scratch");
        s->buf = m;
        s->cap = bytes;
    }
    *out = s->buf;
    return SONA_OK;
}

static const char *clblast_status_name(CLBlastStatusCode s);

/* SONA_OPENCL_FAULT=<op>|all makes that op fail before it touches anything (tests). */
static int fault_injected(const ocl_ctx *c, const char *op)
{
    return c->fault_op && (!strcmp(c->fault_op, op) || !strcmp(c->fault_op, "all"));
}
#define CHECK_FAULT(c, op)                                                                       \
    do {                                                                                         \
        if (fault_injected(c, op))                                                               \
            return ocl_failf(SONA_E_BACKEND, "%s: failure injected by SONA_OPENCL_FAULT", op); \
    } while (0)

/* Sets the kernel's arguments and enqueues it; local NULL lets the driver choose. */
static sona_status launch(ocl_ctx *c, int k, const karg *args, cl_uint nargs, cl_uint dims,
                          const size_t *global, const size_t *local)
{
    cl_kernel kern = c->kernels[k];
    char what[96] = "";
    for (cl_uint i = 0; i < nargs; i++) {
        cl_int err = clSetKernelArg(kern, i, args[i].size, args[i].value);
        if (err != CL_SUCCESS) {
            snprintf(what, sizeof what, "%s argument %u", ocl_kernel_name(k), i);
            return ocl_fail(SONA_E_BACKEND, "clSetKernelArg", err, what);
        }
    }
    cl_int err = clEnqueueNDRangeKernel(c->queue, kern, dims, NULL, global, local, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return ocl_fail(SONA_E_BACKEND, "clEnqueueNDRangeKernel", err, ocl_kernel_name(k));
    return SONA_OK;
}

/* A buffer argument that may be NULL in the op's arguments. */
static sona_status optional(ocl_ctx *c, const void *p, cl_mem *out)
{
    if (p) {
        *out = mem_of(p);
        return SONA_OK;
    }
    return scratch_get(c, S_DUMMY, 4, out);
}

int ocl_supports(void *ctx, sona_op op, const void *args)
{
    (void)ctx;
    switch (op) {
    case SONA_OP_LORA_APPLY: return ((const sona_lora_apply_args *)args)->w.rank <= SONA_LORA_MAX_RANK;
    case SONA_OP_LORA_GRAD: return ((const sona_lora_grad_args *)args)->w.rank <= SONA_LORA_MAX_RANK;
    case SONA_OP_GEMM: {
        const sona_gemm_args *g = args;
        return g->k > 0; /* CLBlast refuses k == 0 */
    }
    default: return 1;
    }
}

sona_status ocl_lora_apply(void *ctx, const sona_lora_apply_args *a)
{
    ocl_ctx *c = ctx;
    CHECK_FAULT(c, "lora_apply");
    if (a->n == 0 || a->w.hidden == 0)
        return SONA_OK;
    cl_mem A = mem_of(a->w.A), Bt = mem_of(a->w.Bt), s = mem_of(a->w.scale), ids = mem_of(a->ids),
           x = mem_of(a->x), y = mem_of(a->y);
    const karg args[] = {ARG(a->w.hidden), ARG(a->w.rank), ARG(A), ARG(Bt), ARG(s), ARG(ids), ARG(x), ARG(y)};
    const size_t global = (size_t)a->n * c->wg;
    pthread_mutex_lock(&c->lock);
    sona_status st = launch(c, K_LORA_APPLY, args, 8, 1, &global, &c->wg);
    pthread_mutex_unlock(&c->lock);
    return st;
}

sona_status ocl_lora_grad(void *ctx, const sona_lora_grad_args *a)
{
    ocl_ctx *c = ctx;
    CHECK_FAULT(c, "lora_grad");
    if (a->n == 0 || a->w.hidden == 0)
        return SONA_OK;
    cl_mem A = mem_of(a->w.A), Bt = mem_of(a->w.Bt), s = mem_of(a->w.scale), ids = mem_of(a->ids),
           x = mem_of(a->x), d = mem_of(a->d), wt = mem_of(a->wt), gA = mem_of(a->gA),
           gBt = mem_of(a->gBt), uv;
    pthread_mutex_lock(&c->lock);
    sona_status st = scratch_get(c, S_A, (size_t)a->n * 2 * a->w.rank * sizeof(float), &uv);
    if (st == SONA_OK) {
        const karg rows[] = {ARG(a->w.hidden), ARG(a->w.rank), ARG(A), ARG(Bt), ARG(s), ARG(ids),
                             ARG(x), ARG(d), ARG(wt), ARG(uv)};
        const size_t global = (size_t)a->n * c->wg;
        st = launch(c, K_LORA_GRAD_ROWS, rows, 10, 1, &global, &c->wg);
    }
    if (st == SONA_OK) {
        const karg acc[] = {ARG(a->w.hidden), ARG(a->w.rank), ARG(a->n), ARG(a->w.num_adapters),
                            ARG(ids), ARG(x), ARG(d), ARG(uv), ARG(gA), ARG(gBt)};
        const size_t global = round_up((size_t)a->w.num_adapters * a->w.rank * a->w.hidden, 64);
        st = launch(c, K_LORA_GRAD_ACCUMULATE, acc, 10, 1, &global, NULL);
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}

sona_status ocl_param_update(void *ctx, const sona_param_update_args *a)
{
    ocl_ctx *c = ctx;
    CHECK_FAULT(c, "param_update");
    const cl_ulong total = (cl_ulong)a->segments * a->len;
    if (total == 0)
        return SONA_OK;
    const cl_uint flags = (a->clip_norm > 0.0f ? 1u : 0u) | (a->fisher_sum ? 2u : 0u) | (a->fisher ? 4u : 0u);
    cl_mem theta = mem_of(a->theta), g = mem_of(a->g), clip = NULL, fs = NULL, ft = NULL, fisher = NULL;
    pthread_mutex_lock(&c->lock);
    sona_status st = (flags & 1) ? scratch_get(c, S_A, a->segments * sizeof(float), &clip)
                                 : optional(c, NULL, &clip);
    if (st == SONA_OK && (flags & 1)) {
        const karg args[] = {ARG(a->len), ARG(a->clip_norm), ARG(g), ARG(clip)};
        const size_t global = (size_t)a->segments * c->wg;
        st = launch(c, K_SEGMENT_CLIP, args, 4, 1, &global, &c->wg);
    }
    if (st == SONA_OK && (st = optional(c, a->fisher_sum, &fs)) == SONA_OK &&
        (st = optional(c, a->fisher_theta, &ft)) == SONA_OK &&
        (st = optional(c, a->fisher, &fisher)) == SONA_OK) {
        const karg args[] = {ARG(a->len), ARG(total), ARG(flags), ARG(a->lr), ARG(a->lambda),
                             ARG(a->decay), ARG(theta), ARG(g), ARG(clip), ARG(fs), ARG(ft), ARG(fisher)};
        const size_t global = round_up((size_t)total, 64);
        st = launch(c, K_PARAM_STEP, args, 12, 1, &global, NULL);
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}

/* Below this many multiply-adds a direct kernel beats the three launches of the GEMM form. */
#define SQDIST_GEMM_MIN_FLOPS ((size_t)1 << 22)
/* The GEMM output is produced for a block of rows at a time, at most this many bytes. */
#define SQDIST_BLOCK_BYTES ((size_t)64 << 20)

/* Large shapes: squared norms, then per block of rows G = -2 X C^T (CLBlast), then argmin. */
static sona_status sqdist_argmin_gemm(ocl_ctx *c, const sona_sqdist_argmin_args *a, cl_mem X,
                                      cl_mem C, cl_mem idx, cl_mem dist)
{
    cl_mem xsq, csq, G;
    const size_t row_bytes = (size_t)a->k * sizeof(float);
    const size_t block = SQDIST_BLOCK_BYTES < c->max_alloc ? SQDIST_BLOCK_BYTES : c->max_alloc;
    size_t rows = block / row_bytes ? block / row_bytes : 1;
    if (rows > a->n)
        rows = a->n;
    sona_status st = scratch_get(c, S_A, a->n * sizeof(float), &xsq);
    if (st == SONA_OK)
        st = scratch_get(c, S_B, row_bytes, &csq);
    if (st == SONA_OK)
        st = scratch_get(c, S_C, rows * row_bytes, &G);
    const cl_uint squared = 1;
    if (st == SONA_OK) {
        const karg args[] = {ARG(a->n), ARG(a->d), ARG(squared), ARG(X), ARG(xsq)};
        const size_t global = round_up(a->n, 64);
        st = launch(c, K_ROW_NORMS, args, 5, 1, &global, NULL);
    }
    if (st == SONA_OK) {
        const karg args[] = {ARG(a->k), ARG(a->d), ARG(squared), ARG(C), ARG(csq)};
        const size_t global = round_up(a->k, 64);
        st = launch(c, K_ROW_NORMS, args, 5, 1, &global, NULL);
    }
    for (cl_uint q0 = 0; st == SONA_OK && q0 < a->n; q0 += (cl_uint)rows) {
        const cl_uint nrows = (cl_uint)(a->n - q0 < rows ? a->n - q0 : rows);
        CLBlastStatusCode s = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo,
                                           CLBlastTransposeYes, nrows, a->k, a->d, -2.0f, X,
                                           (size_t)q0 * a->d, a->d, C, 0, a->d, 0.0f, G, 0, a->k,
                                           &c->queue, NULL);
        if (s != CLBlastSuccess) {
            st = ocl_failf(SONA_E_BACKEND, "CLBlastSgemm (sqdist_argmin): %s (%d)",
                           clblast_status_name(s), (int)s);
            break;
        }
        const karg args[] = {ARG(q0), ARG(nrows), ARG(a->k), ARG(G), ARG(xsq), ARG(csq), ARG(idx), ARG(dist)};
        const size_t global = round_up(nrows, 64);
        st = launch(c, K_ARGMIN_FROM_GEMM, args, 8, 1, &global, NULL);
    }
    return st;
}

sona_status ocl_sqdist_argmin(void *ctx, const sona_sqdist_argmin_args *a)
{
    ocl_ctx *c = ctx;
    CHECK_FAULT(c, "sqdist_argmin");
    if (a->n == 0)
        return SONA_OK;
    cl_mem X = mem_of(a->X), C = mem_of(a->C), idx = mem_of(a->idx), dist = mem_of(a->dist);
    pthread_mutex_lock(&c->lock);
    sona_status st;
    if ((size_t)a->n * a->k * a->d < SQDIST_GEMM_MIN_FLOPS || a->k == 0 || a->d == 0) {
        const karg args[] = {ARG(a->n), ARG(a->k), ARG(a->d), ARG(X), ARG(C), ARG(idx), ARG(dist)};
        const size_t global = round_up(a->n, 64);
        st = launch(c, K_SQDIST_ARGMIN, args, 7, 1, &global, NULL);
    } else {
        st = sqdist_argmin_gemm(c, a, X, C, idx, dist);
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}

/* Similarities are computed for a block of queries at a time, at most this many bytes. */
#define KNN_BLOCK_BYTES ((size_t)64 << 20)

sona_status ocl_knn_exact(void *ctx, const sona_knn_exact_args *a)
{
    ocl_ctx *c = ctx;
    CHECK_FAULT(c, "knn_exact");
    if (a->m == 0 || a->k == 0)
        return SONA_OK;
    cl_mem Q = mem_of(a->Q), P = mem_of(a->P), idx = mem_of(a->idx), sim = mem_of(a->sim);
    cl_mem qn, pn, S;
    const size_t row_bytes = (a->n ? a->n : 1) * sizeof(float);
    size_t block = KNN_BLOCK_BYTES < c->max_alloc ? KNN_BLOCK_BYTES : c->max_alloc;
    size_t rows = block / row_bytes ? block / row_bytes : 1;
    if (rows > a->m)
        rows = a->m;
    pthread_mutex_lock(&c->lock);
    sona_status st = scratch_get(c, S_A, a->m * sizeof(float), &qn);
    if (st == SONA_OK)
        st = scratch_get(c, S_B, row_bytes, &pn);
    if (st == SONA_OK)
        st = scratch_get(c, S_C, rows * row_bytes, &S);
    if (st == SONA_OK) {
        const cl_uint squared = 0;
        const karg args[] = {ARG(a->m), ARG(a->d), ARG(squared), ARG(Q), ARG(qn)};
        const size_t global = round_up(a->m, 64);
        st = launch(c, K_ROW_NORMS, args, 5, 1, &global, NULL);
    }
    if (st == SONA_OK && a->n) {
        const cl_uint squared = 0;
        const karg args[] = {ARG(a->n), ARG(a->d), ARG(squared), ARG(P), ARG(pn)};
        const size_t global = round_up(a->n, 64);
        st = launch(c, K_ROW_NORMS, args, 5, 1, &global, NULL);
    }
    for (cl_uint q0 = 0; st == SONA_OK && q0 < a->m; q0 += (cl_uint)rows) {
        const cl_uint nrows = (cl_uint)(a->m - q0 < rows ? a->m - q0 : rows);
        if (a->n) {
            const karg args[] = {ARG(q0), ARG(nrows), ARG(a->n), ARG(a->d), ARG(Q), ARG(P), ARG(qn), ARG(pn), ARG(S)};
            const size_t global[2] = {round_up(a->n, 16), nrows};
            st = launch(c, K_COSINE_BLOCK, args, 9, 2, global, NULL);
        }
        if (st == SONA_OK) {
            const karg args[] = {ARG(q0), ARG(nrows), ARG(a->n), ARG(a->k), ARG(S), ARG(idx), ARG(sim)};
            const size_t global = round_up(nrows, 16);
            st = launch(c, K_TOPK_ROWS, args, 7, 1, &global, NULL);
        }
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}

static const char *clblast_status_name(CLBlastStatusCode s)
{
    if (s > -1000)
        return ocl_status_name((cl_int)s); /* CLBlast passes OpenCL statuses through */
    switch (s) {
    case CLBlastNotImplemented: return "CLBlastNotImplemented";
    case CLBlastInvalidMatrixA: return "CLBlastInvalidMatrixA";
    case CLBlastInvalidMatrixB: return "CLBlastInvalidMatrixB";
    case CLBlastInvalidMatrixC: return "CLBlastInvalidMatrixC";
    case CLBlastInsufficientMemoryA: return "CLBlastInsufficientMemoryA";
    case CLBlastInsufficientMemoryB: return "CLBlastInsufficientMemoryB";
    case CLBlastInsufficientMemoryC: return "CLBlastInsufficientMemoryC";
    case CLBlastInvalidLocalMemUsage: return "CLBlastInvalidLocalMemUsage";
    case CLBlastNoHalfPrecision: return "CLBlastNoHalfPrecision";
    case CLBlastUnknownError: return "CLBlastUnknownError";
    default: return "CLBlast error";
    }
}

sona_status ocl_gemm(void *ctx, const sona_gemm_args *a)
{
    ocl_ctx *c = ctx;
    CHECK_FAULT(c, "gemm");
    if (a->m == 0 || a->n == 0)
        return SONA_OK;
    cl_mem A = mem_of(a->A), B = mem_of(a->B), C = mem_of(a->C);
    const size_t lda = a->trans_a ? a->m : a->k, ldb = a->trans_b ? a->k : a->n;
    pthread_mutex_lock(&c->lock);
    sona_status st = SONA_OK;
    if (a->beta == 0.0f) {
        /* beta == 0 ignores C's old contents, even NaN (BLAS would compute 0 * NaN). */
        const float zero = 0.0f;
        cl_int err = clEnqueueFillBuffer(c->queue, C, &zero, sizeof zero, 0,
                                         (size_t)a->m * a->n * sizeof(float), 0, NULL, NULL);
        if (err != CL_SUCCESS)
            st = ocl_fail(SONA_E_BACKEND, "clEnqueueFillBuffer", err, "gemm C");
    }
    if (st == SONA_OK) {
        CLBlastStatusCode s = CLBlastSgemm(
            CLBlastLayoutRowMajor, a->trans_a ? CLBlastTransposeYes : CLBlastTransposeNo,
            a->trans_b ? CLBlastTransposeYes : CLBlastTransposeNo, a->m, a->n, a->k, a->alpha, A, 0,
            lda, B, 0, ldb, a->beta, C, 0, a->n, &c->queue, NULL);
        if (s != CLBlastSuccess)
            st = ocl_failf(SONA_E_BACKEND, "CLBlastSgemm: %s (%d)", clblast_status_name(s), (int)s);
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}

sona_status ocl_cluster_sums(void *ctx, const sona_cluster_sums_args *a)
{
    ocl_ctx *c = ctx;
    CHECK_FAULT(c, "cluster_sums");
    if (a->k == 0)
        return SONA_OK;
    cl_mem X = mem_of(a->X), idx = mem_of(a->idx), sums = mem_of(a->sums), counts = mem_of(a->counts);
    const karg args[] = {ARG(a->n), ARG(a->k), ARG(a->d), ARG(X), ARG(idx), ARG(sums), ARG(counts)};
    const size_t global = round_up(a->d ? a->d : 1, 64);
    pthread_mutex_lock(&c->lock);
    sona_status st = launch(c, K_CLUSTER_SUMS, args, 7, 1, &global, NULL);
    pthread_mutex_unlock(&c->lock);
    return st;
}
