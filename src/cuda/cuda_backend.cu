/* SPDX-License-Identifier: MIT */
/* The CUDA backend module (libsona-cuda.so): device buffers, one stream, pinned staging for
 * transfers, cuBLAS for the GEMMs and the kernels of kernels_*.cu for the rest.
 *
 * Every entry point takes the context lock (the stream, the scratch buffer and the staging
 * buffers are shared), checks every CUDA and cuBLAS status, and on failure leaves a message that
 * names the failing call in a per-thread buffer read by last_error(). */
#include "backend/module.h"
#include "cuda/cuda_internal.h"

#include <cublas_v2.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

namespace {

/* Bound on the GEMM tiles of sqdist_argmin and knn_exact (floats): 32 MiB stays in L2 on
 * recent data-centre GPUs and keeps the memory of huge problems bounded. */
constexpr size_t TILE_FLOATS = (size_t)8 << 20;
/* Widest pattern tile of knn_exact: wide enough to amortise the per-tile merge. */
constexpr uint32_t KNN_TILE_COLS = 32768;
/* Tiles of the TF32 knn pass: one warp per query row merges the tile's columns, so a tile
 * has enough rows to fill the GPU (2048 x 8192, 64 MiB). */
constexpr size_t KNN_TF32_TILE_FLOATS = (size_t)16 << 20;
constexpr uint32_t KNN_TF32_TILE_COLS = 8192;
constexpr size_t KNN_TF32_TILE_ROWS = 16384;
/* Each of the two pinned staging buffers. */
constexpr size_t STAGING_BYTES = (size_t)4 << 20;

struct cuda_ctx {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    pthread_mutex_t lock;
    void *scratch;
    size_t scratch_bytes;
    unsigned char *pinned[2]; /* NULL when pinned memory was refused: plain copies then */
    cudaEvent_t pinned_done[2];
    cudaEvent_t timer[2]; /* device timing for benchmarks: start, stop */
    sona_host_locality near; /* host CPUs near the device */
    char device_desc[320];
    /* Forced kernels, for benchmarks and checks: SONA_CUDA_LORA and SONA_CUDA_KNN read once when
     * the device opens, or set by sona_cuda_force_kernels (-1 / 0: the backend chooses). */
    int lora_kernel;
    int knn_fp32;
};

cuda_ctx g_ctx;
sona_backend g_backend;
thread_local char t_error[256];

sona_status fail(sona_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
sona_status fail(sona_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t_error, sizeof t_error, fmt, ap);
    va_end(ap);
    return st;
}

sona_status fail_cuda(cudaError_t e, const char *call)
{
    /* Clears a non-sticky error so the next call starts clean. */
    (void)cudaGetLastError();
    return fail(e == cudaErrorMemoryAllocation ? SONA_E_NOMEM : SONA_E_BACKEND, "%s: %s (%s)",
                call, cudaGetErrorName(e), cudaGetErrorString(e));
}

sona_status fail_blas(cublasStatus_t e, const char *call)
{
    return fail(e == CUBLAS_STATUS_ALLOC_FAILED ? SONA_E_NOMEM : SONA_E_BACKEND, "%s: %s", call,
                cublasGetStatusString(e));
}

#define CUDA_TRY(call)                                    \
    do {                                                  \
        const cudaError_t e_ = (call);                    \
        if (e_ != cudaSuccess)                            \
            return fail_cuda(e_, #call);                  \
    } while (0)
#define BLAS_TRY(call)                                    \
    do {                                                  \
        const cublasStatus_t e_ = (call);                 \
        if (e_ != CUBLAS_STATUS_SUCCESS)                  \
            return fail_blas(e_, #call);                  \
    } while (0)

/* Runs body under the context lock on the backend's device. */
template <typename F>
sona_status locked(cuda_ctx *c, F body)
{
    pthread_mutex_lock(&c->lock);
    sona_status st;
    const cudaError_t e = cudaSetDevice(c->device);
    st = e == cudaSuccess ? body() : fail_cuda(e, "cudaSetDevice");
    pthread_mutex_unlock(&c->lock);
    return st;
}

cuda_ctx *ctx_of(void *ctx) { return static_cast<cuda_ctx *>(ctx); }

/* The scratch buffer, grown to at least bytes (its old contents are not kept). */
sona_status scratch_get(cuda_ctx *c, size_t bytes, void **out)
{
    if (c->scratch_bytes < bytes) {
        if (c->scratch) {
            CUDA_TRY(cudaStreamSynchronize(c->stream));
            CUDA_TRY(cudaFree(c->scratch));
            c->scratch = NULL;
            c->scratch_bytes = 0;
        }
        CUDA_TRY(cudaMalloc(&c->scratch, bytes));
        c->scratch_bytes = bytes;
    }
    *out = c->scratch;
    return SONA_OK;
}

/* Carves consecutive 256-byte aligned pieces out of the scratch buffer: take() books a piece
 * and place() grows the buffer to what was booked and points every booked pointer at its piece. */
struct carver {
    static constexpr int MAX_PIECES = 16;
    struct piece {
        void *slot;
        size_t at;
        void (*point)(void *slot, unsigned char *at);
    };
    piece pieces[MAX_PIECES];
    int count = 0;
    size_t used = 0;

    /* Books room for n values of T; *out points at it after place(). */
    template <typename T>
    void take(T **out, size_t n)
    {
        if (count < MAX_PIECES)
            pieces[count] = {out, used, [](void *slot, unsigned char *at) {
                                 *static_cast<T **>(slot) = reinterpret_cast<T *>(at);
                             }};
        count++;
        used += (n * sizeof(T) + 255) & ~(size_t)255;
    }
    sona_status place(cuda_ctx *c)
    {
        if (count > MAX_PIECES)
            return fail(SONA_E_BACKEND, "scratch: %d pieces booked, room for %d", count, MAX_PIECES);
        void *s;
        const sona_status st = scratch_get(c, used, &s);
        if (st != SONA_OK)
            return st;
        for (int i = 0; i < count; i++)
            pieces[i].point(pieces[i].slot, static_cast<unsigned char *>(s) + pieces[i].at);
        return SONA_OK;
    }
};

int fits_int(uint64_t v) { return v <= (uint64_t)INT32_MAX; }

/* ---- buffers --------------------------------------------------------------------------- */

sona_status cu_alloc(void *ctx, size_t bytes, void **buf)
{
    *buf = NULL;
    return locked(ctx_of(ctx), [&]() -> sona_status {
        CUDA_TRY(cudaMalloc(buf, bytes ? bytes : 1));
        return SONA_OK;
    });
}

void cu_free(void *ctx, void *buf)
{
    if (!buf)
        return;
    locked(ctx_of(ctx), [&]() -> sona_status {
        CUDA_TRY(cudaFree(buf));
        return SONA_OK;
    });
}

sona_status cu_upload(void *ctx, void *buf, size_t offset, const void *src, size_t bytes)
{
    cuda_ctx *c = ctx_of(ctx);
    return locked(c, [&]() -> sona_status {
        unsigned char *dst = static_cast<unsigned char *>(buf) + offset;
        const unsigned char *from = static_cast<const unsigned char *>(src);
        if (!bytes)
            return SONA_OK;
        if (!c->pinned[0]) {
            CUDA_TRY(cudaMemcpyAsync(dst, from, bytes, cudaMemcpyHostToDevice, c->stream));
            CUDA_TRY(cudaStreamSynchronize(c->stream));
            return SONA_OK;
        }
        /* Double-buffered: fill one half while the other is copied; src is free on return. */
        int half = 0;
        for (size_t done = 0; done < bytes; half ^= 1) {
            const size_t n = bytes - done < STAGING_BYTES ? bytes - done : STAGING_BYTES;
            CUDA_TRY(cudaEventSynchronize(c->pinned_done[half]));
            memcpy(c->pinned[half], from + done, n);
            CUDA_TRY(cudaMemcpyAsync(dst + done, c->pinned[half], n, cudaMemcpyHostToDevice,
                                     c->stream));
            CUDA_TRY(cudaEventRecord(c->pinned_done[half], c->stream));
            done += n;
        }
        return SONA_OK;
    });
}

sona_status cu_download(void *ctx, void *dst, const void *buf, size_t offset, size_t bytes)
{
    cuda_ctx *c = ctx_of(ctx);
    return locked(c, [&]() -> sona_status {
        const unsigned char *from = static_cast<const unsigned char *>(buf) + offset;
        unsigned char *to = static_cast<unsigned char *>(dst);
        if (!bytes)
            return SONA_OK;
        if (!c->pinned[0]) {
            CUDA_TRY(cudaMemcpyAsync(to, from, bytes, cudaMemcpyDeviceToHost, c->stream));
            CUDA_TRY(cudaStreamSynchronize(c->stream));
            return SONA_OK;
        }
        /* Two chunks in flight: copy one out of pinned memory while the next arrives. */
        size_t issued = 0, at[2] = {0, 0}, len[2] = {0, 0};
        auto issue = [&](int h) -> sona_status {
            len[h] = bytes - issued < STAGING_BYTES ? bytes - issued : STAGING_BYTES;
            at[h] = issued;
            CUDA_TRY(cudaMemcpyAsync(c->pinned[h], from + issued, len[h], cudaMemcpyDeviceToHost,
                                     c->stream));
            CUDA_TRY(cudaEventRecord(c->pinned_done[h], c->stream));
            issued += len[h];
            return SONA_OK;
        };
        sona_status st = issue(0);
        if (st == SONA_OK && issued < bytes)
            st = issue(1);
        for (int h = 0; st == SONA_OK && len[h]; h ^= 1) {
            CUDA_TRY(cudaEventSynchronize(c->pinned_done[h]));
            memcpy(to + at[h], c->pinned[h], len[h]);
            len[h] = 0;
            if (issued < bytes)
                st = issue(h);
        }
        return st;
    });
}

sona_status cu_sync(void *ctx)
{
    cuda_ctx *c = ctx_of(ctx);
    return locked(c, [&]() -> sona_status {
        CUDA_TRY(cudaStreamSynchronize(c->stream));
        return SONA_OK;
    });
}

sona_status cu_timer_start(void *ctx)
{
    cuda_ctx *c = ctx_of(ctx);
    return locked(c, [&]() -> sona_status {
        CUDA_TRY(cudaEventRecord(c->timer[0], c->stream));
        return SONA_OK;
    });
}

sona_status cu_timer_stop(void *ctx, double *elapsed_us)
{
    cuda_ctx *c = ctx_of(ctx);
    return locked(c, [&]() -> sona_status {
        float ms = 0.0f;
        CUDA_TRY(cudaEventRecord(c->timer[1], c->stream));
        CUDA_TRY(cudaEventSynchronize(c->timer[1]));
        CUDA_TRY(cudaEventElapsedTime(&ms, c->timer[0], c->timer[1]));
        *elapsed_us = 1e3 * (double)ms;
        return SONA_OK;
    });
}

/* ---- ops ------------------------------------------------------------------------------- */

sona_status cu_lora_apply(void *ctx, const sona_lora_apply_args *a)
{
    cuda_ctx *c = ctx_of(ctx);
    if (!a->n)
        return SONA_OK;
    const int kernel = c->lora_kernel; /* -1: the default chooses (see lora_kernel_named) */
    return locked(c, [&]() -> sona_status {
        float *scratch = NULL;
        const size_t floats = sona_cuda_lora_apply_scratch(a, kernel);
        if (floats) {
            void *s;
            const sona_status st = scratch_get(c, floats * sizeof(float), &s);
            if (st != SONA_OK)
                return st;
            scratch = static_cast<float *>(s);
        }
        CUDA_TRY(sona_cuda_launch_lora_apply(a, kernel, scratch, c->stream));
        return SONA_OK;
    });
}

sona_status cu_lora_grad(void *ctx, const sona_lora_grad_args *a)
{
    cuda_ctx *c = ctx_of(ctx);
    if (!a->n)
        return SONA_OK;
    return locked(c, [&]() -> sona_status {
        const size_t nr = (size_t)a->n * a->w.rank, A = a->w.num_adapters;
        float *u = NULL, *v = NULL;
        uint32_t *groups = NULL;
        carver cv;
        cv.take(&u, nr);
        cv.take(&v, nr);
        cv.take(&groups, 3 * A + 1 + a->n);
        const sona_status st = cv.place(c);
        if (st != SONA_OK)
            return st;
        CUDA_TRY(sona_cuda_launch_lora_grad_project(a, u, v, c->stream));
        CUDA_TRY(sona_cuda_launch_lora_grad_accumulate(a, u, v, groups, c->stream));
        return SONA_OK;
    });
}

sona_status cu_param_update(void *ctx, const sona_param_update_args *a)
{
    cuda_ctx *c = ctx_of(ctx);
    if (!a->segments || !a->len)
        return SONA_OK;
    return locked(c, [&]() -> sona_status {
        double *sumsq = NULL;
        if (a->clip_norm > 0.0f) {
            void *s;
            const sona_status st = scratch_get(c, (size_t)a->segments * sizeof(double), &s);
            if (st != SONA_OK)
                return st;
            sumsq = static_cast<double *>(s);
            CUDA_TRY(cudaMemsetAsync(sumsq, 0, (size_t)a->segments * sizeof(double), c->stream));
            CUDA_TRY(sona_cuda_launch_segment_sumsq(a, sumsq, c->stream));
        }
        CUDA_TRY(sona_cuda_launch_param_step(a, sumsq, c->stream));
        return SONA_OK;
    });
}

/* Row-major Out[rows][cols] = alpha * L[rows][d] . R[cols][d]^T + beta * Out: in column-major
 * terms Out^T = R . L^T with R read transposed. */
sona_status gemm_rows_dot(cuda_ctx *c, const float *L, uint32_t rows, const float *R,
                          uint32_t cols, uint32_t d, float alpha, float *Out)
{
    const float beta = 0.0f;
    BLAS_TRY(cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)cols, (int)rows, (int)d, &alpha,
                         R, (int)d, L, (int)d, &beta, Out, (int)cols));
    return SONA_OK;
}

/* gemm_rows_dot with alpha 1 on TF32 tensor cores (FP32 inputs, output and accumulation). */
sona_status gemm_rows_dot_tf32(cuda_ctx *c, const float *L, uint32_t rows, const float *R,
                               uint32_t cols, uint32_t d, float *Out)
{
    const float alpha = 1.0f, beta = 0.0f;
    BLAS_TRY(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)cols, (int)rows, (int)d, &alpha,
                          R, CUDA_R_32F, (int)d, L, CUDA_R_32F, (int)d, &beta, Out, CUDA_R_32F,
                          (int)cols, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
    return SONA_OK;
}

sona_status cu_sqdist_argmin(void *ctx, const sona_sqdist_argmin_args *a)
{
    cuda_ctx *c = ctx_of(ctx);
    if (!a->n)
        return SONA_OK;
    return locked(c, [&]() -> sona_status {
        size_t tile = TILE_FLOATS / a->k;
        if (tile < 1)
            tile = 1;
        if (tile > a->n)
            tile = a->n;
        float *cn = NULL, *xn = NULL, *G = NULL;
        carver cv;
        cv.take(&cn, a->k);
        cv.take(&xn, tile);
        cv.take(&G, tile * a->k);
        const sona_status st = cv.place(c);
        if (st != SONA_OK)
            return st;
        CUDA_TRY(sona_cuda_launch_row_sqnorms(a->C, a->k, a->d, cn, c->stream));
        for (size_t r0 = 0; r0 < a->n; r0 += tile) {
            const uint32_t rows = (uint32_t)(a->n - r0 < tile ? a->n - r0 : tile);
            const float *X = a->X + r0 * a->d;
            CUDA_TRY(sona_cuda_launch_row_sqnorms(X, rows, a->d, xn, c->stream));
            const sona_status gs = gemm_rows_dot(c, X, rows, a->C, a->k, a->d, 1.0f, G);
            if (gs != SONA_OK)
                return gs;
            CUDA_TRY(sona_cuda_launch_argmin_rows(G, rows, a->k, xn, cn, a->idx + r0,
                                                  a->dist + r0, c->stream));
        }
        return SONA_OK;
    });
}

/* The exact FP32 knn of the query rows Q[rows] (inverse norms qinv) against all of P, written
 * to idx/sim (rows x k): SGEMM tiles of at most s_floats floats in S, each merged into the
 * running lists. a gives P, n, d and k. */
sona_status knn_fp32_rows(cuda_ctx *c, const sona_knn_exact_args *a, const float *Q,
                          uint32_t rows, const float *qinv, const float *pinv, int32_t *idx,
                          float *sim, float *S, size_t s_floats)
{
    uint32_t tile_cols = a->n < KNN_TILE_COLS ? a->n : KNN_TILE_COLS;
    if (tile_cols > s_floats)
        tile_cols = (uint32_t)s_floats;
    size_t tile_rows = s_floats / (tile_cols ? tile_cols : 1);
    if (tile_rows > rows)
        tile_rows = rows;
    for (size_t q0 = 0; q0 < rows; q0 += tile_rows) {
        const uint32_t r = (uint32_t)(rows - q0 < tile_rows ? rows - q0 : tile_rows);
        const float *Qt = Q + q0 * a->d;
        int32_t *it = idx + q0 * a->k;
        float *st = sim + q0 * a->k;
        if (!a->n) { /* nothing to search: every list is empty */
            CUDA_TRY(sona_cuda_launch_topk_merge(S, r, 0, 0, qinv + q0, pinv, a->k, 1, it, st,
                                                 c->stream));
            continue;
        }
        for (uint32_t p0 = 0; p0 < a->n; p0 += tile_cols) {
            const uint32_t cols = a->n - p0 < tile_cols ? a->n - p0 : tile_cols;
            const sona_status gs =
                gemm_rows_dot(c, Qt, r, a->P + (size_t)p0 * a->d, cols, a->d, 1.0f, S);
            if (gs != SONA_OK)
                return gs;
            CUDA_TRY(sona_cuda_launch_topk_merge(S, r, cols, p0, qinv + q0, pinv + p0, a->k,
                                                 p0 == 0, it, st, c->stream));
        }
    }
    return SONA_OK;
}

/* Bound on the similarity error of the TF32 pass, relative to |q| |p| (so on a cosine): TF32
 * keeps 10 mantissa bits, so each operand is off by at most 2^-10 relative (truncation; 2^-11
 * when rounded) and each product by 2^-9 + 2^-20; summed, that is at most (2^-9 + 2^-20)
 * sum |q_i p_i| <= (2^-9 + 2^-20) |q| |p|. FP32 accumulation adds at most about d 2^-24 of
 * the same sum, and the norms and scaling a few ulps. The bound used doubles every term. */
float knn_tf32_error_bound(uint32_t d)
{
    return 2.0f * (0x1p-9f + 0x1p-20f) + ((float)d + 16.0f) * 0x1p-22f;
}

/* knn_exact in two passes. The similarities are first computed with TF32 tensor-core GEMMs
 * and each query keeps its best C (> k) approximate candidates; the candidates are then
 * re-ranked by FP32 cosines of the original vectors and the best k kept. Why that is exact:
 * with e the error bound above, T the true k-th best similarity and a_k the k-th best
 * approximate one, every true top-k neighbour has approximate similarity >= T - e, and a_k <=
 * T + e (a higher approximate value implies a true one above T, and fewer than k have that),
 * so every true neighbour is >= a_k - 2e. The candidates are the exact top C of the
 * approximate values (or were dropped with a recorded bound, see knn_candidates_kernel), so
 * everything left out is <= a_C (or that bound): when that is < a_k - 2e no true neighbour was
 * left out. A query where that fails (a near-tie wider than the C - k spare candidates,
 * or a zero query where all similarities tie at 0) is recomputed by the FP32 path. */
sona_status cu_knn_exact(void *ctx, const sona_knn_exact_args *a)
{
    cuda_ctx *c = ctx_of(ctx);
    if (!a->m)
        return SONA_OK;
    const int fp32_only = c->knn_fp32; /* forced plain FP32 path, for benchmarks and checks */
    const uint32_t C = sona_cuda_knn_candidates(a->k);
    return locked(c, [&]() -> sona_status {
        if (fp32_only || !C || !a->n) {
            const uint32_t tile_cols = a->n < KNN_TILE_COLS ? a->n : KNN_TILE_COLS;
            size_t tile_rows = TILE_FLOATS / (tile_cols ? tile_cols : 1);
            if (tile_rows > a->m)
                tile_rows = a->m;
            const size_t s_floats = tile_rows * (tile_cols ? tile_cols : 1);
            float *qinv = NULL, *pinv = NULL, *S = NULL;
            carver cv;
            cv.take(&qinv, a->m);
            cv.take(&pinv, a->n);
            cv.take(&S, s_floats);
            const sona_status st = cv.place(c);
            if (st != SONA_OK)
                return st;
            CUDA_TRY(sona_cuda_launch_row_inv_norms(a->Q, a->m, a->d, qinv, c->stream));
            if (a->n)
                CUDA_TRY(sona_cuda_launch_row_inv_norms(a->P, a->n, a->d, pinv, c->stream));
            return knn_fp32_rows(c, a, a->Q, a->m, qinv, pinv, a->idx, a->sim, S, s_floats);
        }
        const uint32_t tile_cols = a->n < KNN_TF32_TILE_COLS ? a->n : KNN_TF32_TILE_COLS;
        size_t tile_rows = KNN_TF32_TILE_FLOATS / tile_cols;
        if (tile_rows > KNN_TF32_TILE_ROWS) /* bounds the per-row scratch when n is small */
            tile_rows = KNN_TF32_TILE_ROWS;
        if (tile_rows > a->m)
            tile_rows = a->m;
        const size_t s_floats = tile_rows * tile_cols;
        float *qinv = NULL, *pinv = NULL, *S = NULL, *csim = NULL, *dropped = NULL, *fQ = NULL;
        float *fqinv = NULL, *fsim = NULL;
        int32_t *cidx = NULL, *fidx = NULL;
        uint32_t *flagged = NULL;
        carver cv;
        cv.take(&qinv, a->m);
        cv.take(&pinv, a->n);
        cv.take(&S, s_floats);
        cv.take(&cidx, tile_rows * C);
        cv.take(&csim, tile_rows * C);
        cv.take(&dropped, tile_rows);
        cv.take(&flagged, 1 + tile_rows);
        cv.take(&fQ, tile_rows * a->d);
        cv.take(&fqinv, tile_rows);
        cv.take(&fidx, tile_rows * a->k);
        cv.take(&fsim, tile_rows * a->k);
        const sona_status st = cv.place(c);
        if (st != SONA_OK)
            return st;
        const float margin = 2.0f * knn_tf32_error_bound(a->d);
        CUDA_TRY(sona_cuda_launch_row_inv_norms(a->Q, a->m, a->d, qinv, c->stream));
        CUDA_TRY(sona_cuda_launch_row_inv_norms(a->P, a->n, a->d, pinv, c->stream));
        for (size_t q0 = 0; q0 < a->m; q0 += tile_rows) {
            const uint32_t rows = (uint32_t)(a->m - q0 < tile_rows ? a->m - q0 : tile_rows);
            const float *Q = a->Q + q0 * a->d;
            int32_t *idx = a->idx + q0 * a->k;
            float *sim = a->sim + q0 * a->k;
            for (uint32_t p0 = 0; p0 < a->n; p0 += tile_cols) {
                const uint32_t cols = a->n - p0 < tile_cols ? a->n - p0 : tile_cols;
                const sona_status gs = gemm_rows_dot_tf32(c, Q, rows, a->P + (size_t)p0 * a->d,
                                                          cols, a->d, S);
                if (gs != SONA_OK)
                    return gs;
                CUDA_TRY(sona_cuda_launch_knn_candidates(S, rows, cols, p0, qinv + q0, pinv + p0,
                                                         C, p0 == 0, cidx, csim, dropped,
                                                         c->stream));
            }
            CUDA_TRY(cudaMemsetAsync(flagged, 0, sizeof(uint32_t), c->stream));
            CUDA_TRY(sona_cuda_launch_knn_refine(Q, a->P, rows, a->d, qinv + q0, pinv, a->k,
                                                 margin, C, cidx, csim, dropped, idx, sim, flagged,
                                                 c->stream));
            uint32_t count = 0;
            CUDA_TRY(cudaMemcpyAsync(&count, flagged, sizeof count, cudaMemcpyDeviceToHost,
                                     c->stream));
            CUDA_TRY(cudaStreamSynchronize(c->stream));
            if (count > rows)
                return fail(SONA_E_BACKEND, "knn_exact: %u flagged queries in a tile of %u", count,
                            rows);
            if (!count)
                continue;
            /* The flagged queries of this tile, gathered, go through the FP32 path. */
            const uint32_t *list = flagged + 1;
            CUDA_TRY(sona_cuda_launch_gather_rows(Q, a->d, list, count, fQ, c->stream));
            CUDA_TRY(sona_cuda_launch_row_inv_norms(fQ, count, a->d, fqinv, c->stream));
            const sona_status fs =
                knn_fp32_rows(c, a, fQ, count, fqinv, pinv, fidx, fsim, S, s_floats);
            if (fs != SONA_OK)
                return fs;
            CUDA_TRY(sona_cuda_launch_scatter_lists(fidx, fsim, a->k, list, count, idx, sim,
                                                    c->stream));
        }
        return SONA_OK;
    });
}

sona_status cu_gemm(void *ctx, const sona_gemm_args *a)
{
    cuda_ctx *c = ctx_of(ctx);
    if (!a->m || !a->n)
        return SONA_OK;
    return locked(c, [&]() -> sona_status {
        if (!a->k) { /* C = beta * C: cuBLAS wants k >= 1 for its leading dimensions */
            if (a->beta == 0.0f) {
                CUDA_TRY(cudaMemsetAsync(a->C, 0, (size_t)a->m * a->n * sizeof(float), c->stream));
            } else {
                BLAS_TRY(cublasSscal(c->blas, (int)((size_t)a->m * a->n), &a->beta, a->C, 1));
            }
            return SONA_OK;
        }
        /* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands. */
        const cublasOperation_t ob = a->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
        const cublasOperation_t oa = a->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
        const int ldb = (int)(a->trans_b ? a->k : a->n);
        const int lda = (int)(a->trans_a ? a->m : a->k);
        BLAS_TRY(cublasSgemm(c->blas, ob, oa, (int)a->n, (int)a->m, (int)a->k, &a->alpha, a->B, ldb,
                             a->A, lda, &a->beta, a->C, (int)a->n));
        return SONA_OK;
    });
}

sona_status cu_cluster_sums(void *ctx, const sona_cluster_sums_args *a)
{
    cuda_ctx *c = ctx_of(ctx);
    return locked(c, [&]() -> sona_status {
        CUDA_TRY(cudaMemsetAsync(a->sums, 0, (size_t)a->k * a->d * sizeof(float), c->stream));
        CUDA_TRY(cudaMemsetAsync(a->counts, 0, (size_t)a->k * sizeof(uint32_t), c->stream));
        if (a->n && a->k && a->d)
            CUDA_TRY(sona_cuda_launch_cluster_sums(a, c->stream));
        else if (a->n && a->k)
            return fail(SONA_E_INVALID, "cluster_sums: d must be at least 1");
        return SONA_OK;
    });
}

int cu_supports(void *ctx, sona_op op, const void *args)
{
    (void)ctx;
    switch (op) {
    case SONA_OP_LORA_APPLY: {
        const sona_lora_apply_args *a = static_cast<const sona_lora_apply_args *>(args);
        return a->w.rank >= 1 && a->w.rank <= SONA_LORA_MAX_RANK && a->w.hidden >= 1 &&
               fits_int(a->n);
    }
    case SONA_OP_LORA_GRAD: {
        const sona_lora_grad_args *a = static_cast<const sona_lora_grad_args *>(args);
        return a->w.rank >= 1 && a->w.rank <= SONA_LORA_MAX_RANK && a->w.hidden >= 1 &&
               a->w.num_adapters >= 1 && fits_int(a->n);
    }
    case SONA_OP_SQDIST_ARGMIN: {
        const sona_sqdist_argmin_args *a = static_cast<const sona_sqdist_argmin_args *>(args);
        return a->k >= 1 && a->d >= 1 && fits_int(a->n) && fits_int(a->k) && fits_int(a->d);
    }
    case SONA_OP_KNN_EXACT: {
        const sona_knn_exact_args *a = static_cast<const sona_knn_exact_args *>(args);
        return a->k >= 1 && a->k <= SONA_CUDA_MAX_TOPK && a->d >= 1 && fits_int(a->m) &&
               fits_int(a->n) && fits_int(a->d);
    }
    case SONA_OP_GEMM: {
        const sona_gemm_args *a = static_cast<const sona_gemm_args *>(args);
        return fits_int(a->m) && fits_int(a->n) && fits_int(a->k) &&
               fits_int((uint64_t)a->m * a->n);
    }
    case SONA_OP_CLUSTER_SUMS: {
        const sona_cluster_sums_args *a = static_cast<const sona_cluster_sums_args *>(args);
        return a->d >= 1;
    }
    default:
        return 1;
    }
}

sona_status cu_bind_host_thread(void *ctx)
{
    const cuda_ctx *c = ctx_of(ctx);
    if (sona_host_locality_bind(&c->near) != 0)
        return fail(SONA_E_BACKEND, "hwloc_set_cpubind to the %s failed", c->near.text);
    return SONA_OK;
}

const char *cu_last_error(void *ctx)
{
    (void)ctx;
    return t_error;
}

void cu_shutdown(void *ctx)
{
    cuda_ctx *c = ctx_of(ctx);
    pthread_mutex_lock(&c->lock);
    if (cudaSetDevice(c->device) == cudaSuccess) {
        (void)cudaStreamSynchronize(c->stream);
        for (int h = 0; h < 2; h++) {
            if (c->pinned[h])
                (void)cudaFreeHost(c->pinned[h]);
            if (c->pinned_done[h])
                (void)cudaEventDestroy(c->pinned_done[h]);
            c->pinned[h] = NULL;
            c->pinned_done[h] = NULL;
        }
        for (int t = 0; t < 2; t++) {
            if (c->timer[t])
                (void)cudaEventDestroy(c->timer[t]);
            c->timer[t] = NULL;
        }
        if (c->scratch)
            (void)cudaFree(c->scratch);
        c->scratch = NULL;
        c->scratch_bytes = 0;
        if (c->blas)
            (void)cublasDestroy(c->blas);
        c->blas = NULL;
        if (c->stream)
            (void)cudaStreamDestroy(c->stream);
        c->stream = NULL;
    }
    sona_host_locality_free(&c->near);
    pthread_mutex_unlock(&c->lock);
}

/* The lora_apply kernel a name forces: rows, grouped, sliced or coop (coop is not the default
 * until measured); -1 for anything else: the default chooses. */
int lora_kernel_named(const char *mode)
{
    static const char *const kernels[] = {"rows", "grouped", "sliced", "coop"};
    for (int k = 0; mode && k < (int)(sizeof kernels / sizeof kernels[0]); k++)
        if (!strcmp(mode, kernels[k]))
            return k;
    return -1;
}

/* Brings the device up; on failure says why in why and leaves nothing allocated that matters. */
sona_status open_device(cuda_ctx *c, char *why, size_t why_len)
{
    c->lora_kernel = lora_kernel_named(getenv("SONA_CUDA_LORA"));
    const char *knn = getenv("SONA_CUDA_KNN");
    c->knn_fp32 = knn && !strcmp(knn, "fp32");
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(why, why_len, "no usable CUDA driver or device: %s", cudaGetErrorString(e));
        return SONA_E_UNAVAILABLE;
    }
    if (count < 1) {
        snprintf(why, why_len, "no CUDA device");
        return SONA_E_UNAVAILABLE;
    }
    c->device = 0;
    const char *env = getenv("SONA_CUDA_DEVICE");
    if (env && *env) {
        char *end;
        const long d = strtol(env, &end, 10);
        if (*end || d < 0 || d >= count) {
            snprintf(why, why_len, "SONA_CUDA_DEVICE=%s: not a device index below %d", env, count);
            return SONA_E_UNAVAILABLE;
        }
        c->device = (int)d;
    }
    cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, c->device)) != cudaSuccess ||
        (e = cudaSetDevice(c->device)) != cudaSuccess) {
        snprintf(why, why_len, "CUDA device %d: %s", c->device, cudaGetErrorString(e));
        return SONA_E_UNAVAILABLE;
    }
    if ((e = sona_cuda_probe_kernel_image()) != cudaSuccess) {
        snprintf(why, why_len, "%.100s (sm_%d%d): this build has no kernels for it: %s", prop.name,
                 prop.major, prop.minor, cudaGetErrorString(e));
        (void)cudaGetLastError();
        return SONA_E_UNAVAILABLE;
    }
    if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        snprintf(why, why_len, "cudaStreamCreateWithFlags: %s", cudaGetErrorString(e));
        return SONA_E_UNAVAILABLE;
    }
    cublasStatus_t be = cublasCreate(&c->blas);
    if (be == CUBLAS_STATUS_SUCCESS)
        be = cublasSetStream(c->blas, c->stream);
    /* Plain FP32 (no TF32): the op contract is float32 accuracy. */
    if (be == CUBLAS_STATUS_SUCCESS)
        be = cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH);
    if (be != CUBLAS_STATUS_SUCCESS) {
        snprintf(why, why_len, "cuBLAS: %s", cublasGetStatusString(be));
        if (c->blas)
            (void)cublasDestroy(c->blas);
        (void)cudaStreamDestroy(c->stream);
        c->blas = NULL;
        c->stream = NULL;
        return SONA_E_UNAVAILABLE;
    }
    for (int h = 0; h < 2; h++) {
        void *p = NULL;
        if (cudaMallocHost(&p, STAGING_BYTES) != cudaSuccess ||
            cudaEventCreateWithFlags(&c->pinned_done[h], cudaEventDisableTiming) != cudaSuccess) {
            (void)cudaGetLastError(); /* staging is an optimisation: go on without it */
            if (p)
                (void)cudaFreeHost(p);
            for (int o = 0; o < h; o++) {
                (void)cudaFreeHost(c->pinned[o]);
                (void)cudaEventDestroy(c->pinned_done[o]);
            }
            c->pinned[0] = c->pinned[1] = NULL;
            c->pinned_done[0] = c->pinned_done[1] = NULL;
            break;
        }
        c->pinned[h] = static_cast<unsigned char *>(p);
    }
    /* Device timers are a benchmark aid: without them the backend works, untimed by events. */
    for (int t = 0; t < 2; t++)
        if (cudaEventCreate(&c->timer[t]) != cudaSuccess) {
            (void)cudaGetLastError();
            c->timer[t] = NULL;
        }
    int runtime = 0, driver = 0;
    (void)cudaRuntimeGetVersion(&runtime);
    (void)cudaDriverGetVersion(&driver);
    sona_cuda_locality_init(&c->near, c->device);
    snprintf(c->device_desc, sizeof c->device_desc,
             "%.100s (device %d, sm_%d%d, %d SMs, %.1f GiB), CUDA runtime %d.%d, driver %d.%d, "
             "host %s",
             prop.name, c->device, prop.major, prop.minor, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), runtime / 1000,
             runtime % 1000 / 10, driver / 1000, driver % 1000 / 10, c->near.text);
    return SONA_OK;
}

} // namespace

extern "C" SONA_MODULE_EXPORT sona_status sona_module_open(uint32_t abi, const sona_backend **out,
                                                           char *why, size_t why_len)
{
    static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
    static int opened = 0;
    static sona_status open_status = SONA_E_UNAVAILABLE;
    static char open_why[200];
    if (!out || !why)
        return SONA_E_NULL;
    *out = NULL;
    if (abi != SONA_MODULE_ABI) {
        snprintf(why, why_len, "module ABI %d, libsona asked for %u", SONA_MODULE_ABI, abi);
        return SONA_E_VERSION;
    }
    pthread_mutex_lock(&open_lock);
    if (!opened) {
        opened = 1;
        cuda_ctx *c = &g_ctx;
        memset(c, 0, sizeof *c);
        pthread_mutex_init(&c->lock, NULL);
        open_status = open_device(c, open_why, sizeof open_why);
        if (open_status == SONA_OK) {
            sona_backend *b = &g_backend;
            memset(b, 0, sizeof *b);
            b->name = "cuda";
            b->device = c->device_desc;
            b->host_memory = 0;
            b->ctx = c;
            b->supports = cu_supports;
            b->alloc = cu_alloc;
            b->free = cu_free;
            b->upload = cu_upload;
            b->download = cu_download;
            b->sync = cu_sync;
            if (c->timer[0] && c->timer[1]) {
                b->timer_start = cu_timer_start;
                b->timer_stop = cu_timer_stop;
            }
            b->bind_host_thread = cu_bind_host_thread;
            b->lora_apply = cu_lora_apply;
            b->lora_grad = cu_lora_grad;
            b->param_update = cu_param_update;
            b->sqdist_argmin = cu_sqdist_argmin;
            b->knn_exact = cu_knn_exact;
            b->gemm = cu_gemm;
            b->cluster_sums = cu_cluster_sums;
            b->last_error = cu_last_error;
            b->shutdown = cu_shutdown;
        }
    }
    pthread_mutex_unlock(&open_lock);
    if (open_status != SONA_OK) {
        snprintf(why, why_len, "%s", open_why);
        return open_status;
    }
    *out = &g_backend;
    return SONA_OK;
}

/* Forces lora_apply's kernel (rows, grouped, sliced, coop; NULL or "" for the default) and
 * knn_exact's plain FP32 path (fp32 non-zero) for the calls that follow, as SONA_CUDA_LORA and
 * SONA_CUDA_KNN do at start-up: tools/gpu/gpu_bench.c measures each kernel in one process. Not
 * while ops run on another thread. */
extern "C" SONA_MODULE_EXPORT void sona_cuda_force_kernels(const char *lora, int fp32)
{
    g_ctx.lora_kernel = lora_kernel_named(lora);
    g_ctx.knn_fp32 = fp32 != 0;
}
