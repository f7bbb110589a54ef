/* Distance kernels around cuBLAS GEMM tiles: row norms, the argmin of squared distances, the
 * running top-k merge of cosine similarities, and the k-means centroid sums. */
#include "cuda/cuda_internal.h"

#include <climits>
#include <math_constants.h>

namespace {

constexpr int WARPS = SONA_CUDA_BLOCK / 32;

/* One warp per row: out[row] = f(|row|^2). */
template <bool INVERSE>
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    row_norms_kernel(const float *M, uint32_t rows, uint32_t d, float *out)
{
    const int lane = threadIdx.x & 31;
    for (size_t row = blockIdx.x * (size_t)WARPS + (threadIdx.x >> 5); row < rows;
         row += (size_t)gridDim.x * WARPS) {
        const float *m = M + row * d;
        float acc = 0.0f;
        for (uint32_t t = lane; t < d; t += 32)
            acc += m[t] * m[t];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0)
            out[row] = INVERSE ? (acc > 0.0f ? 1.0f / sqrtf(acc) : 0.0f) : acc;
    }
}

/* (s, i) is better than (t, j): higher value, lower index on ties. */
__device__ __forceinline__ bool higher(float s, int i, float t, int j)
{
    return s > t || (s == t && i < j);
}
__device__ __forceinline__ bool lower(float s, int i, float t, int j)
{
    return s < t || (s == t && i < j);
}

/* One warp per row of the tile: the nearest centroid, lowest index on ties. */
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    argmin_rows_kernel(const float *G, uint32_t rows, uint32_t k, const float *xn,
                       const float *cn, int32_t *idx, float *dist)
{
    const int lane = threadIdx.x & 31;
    for (size_t row = blockIdx.x * (size_t)WARPS + (threadIdx.x >> 5); row < rows;
         row += (size_t)gridDim.x * WARPS) {
        const float *g = G + row * k;
        const float x2 = xn[row];
        float best = CUDART_INF_F;
        int bj = INT_MAX;
        for (uint32_t j = lane; j < k; j += 32) {
            const float dd = fmaf(-2.0f, g[j], x2 + cn[j]);
            if (dd < best) { /* j grows within a lane: strict < keeps the lowest index */
                best = dd;
                bj = (int)j;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ob = __shfl_xor_sync(0xffffffffu, best, o);
            const int oj = __shfl_xor_sync(0xffffffffu, bj, o);
            if (lower(ob, oj, best, bj)) {
                best = ob;
                bj = oj;
            }
        }
        if (lane == 0) {
            /* Cancellation in |x|^2 + |c|^2 - 2 x.c can go slightly negative. */
            idx[row] = bj == INT_MAX ? 0 : bj;
            dist[row] = fmaxf(best, 0.0f);
        }
    }
}

/* Inserts (s, i) into the descending list (L, I) of KL entries, dropping the worst. Compile-time
 * indices only, so the list stays in registers. */
template <int KL>
__device__ __forceinline__ void list_insert(float (&L)[KL], int (&I)[KL], float s, int i)
{
#pragma unroll
    for (int j = 0; j < KL; j++) {
        if (higher(s, i, L[j], I[j])) {
            const float ts = L[j];
            const int ti = I[j];
            L[j] = s;
            I[j] = i;
            s = ts;
            i = ti;
        }
    }
}

/* Block per query row of the tile. Each thread keeps its own best KL of the columns it scans
 * (plus the running list, spread over the threads), then k rounds of a block-wide argmax pick
 * the merged best k. Empty entries are (-inf, INT_MAX) inside and (-inf, -1) outside. A column
 * that does not beat the running list's k-th entry cannot enter it and is skipped early. */
template <int KL>
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    topk_merge_kernel(const float *S, uint32_t cols, uint32_t col0, const float *qinv,
                      const float *pinv, uint32_t k, int first, int32_t *idx, float *sim)
{
    __shared__ float ws[WARPS];
    __shared__ int wi[WARPS];
    __shared__ int win;
    float L[KL];
    int I[KL];
#pragma unroll
    for (int j = 0; j < KL; j++) {
        L[j] = -CUDART_INF_F;
        I[j] = INT_MAX;
    }
    const size_t q = blockIdx.x;
    int32_t *oi = idx + q * k;
    float *os = sim + q * k;
    float thr = -CUDART_INF_F;
    if (!first) {
        if (oi[k - 1] >= 0)
            thr = os[k - 1];
        for (uint32_t t = threadIdx.x; t < k; t += blockDim.x)
            if (oi[t] >= 0)
                list_insert<KL>(L, I, os[t], oi[t]);
    }
    const float *row = S + q * cols;
    const float qi = qinv[q];
    for (uint32_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const float s = row[c] * qi * pinv[c];
        const int i = (int)(col0 + c);
        if (s > thr && higher(s, i, L[KL - 1], I[KL - 1]))
            list_insert<KL>(L, I, s, i);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (uint32_t r = 0; r < k; r++) {
        float s = L[0];
        int i = I[0];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float os2 = __shfl_xor_sync(0xffffffffu, s, o);
            const int oi2 = __shfl_xor_sync(0xffffffffu, i, o);
            if (higher(os2, oi2, s, i)) {
                s = os2;
                i = oi2;
            }
        }
        if (lane == 0) {
            ws[warp] = s;
            wi[warp] = i;
        }
        __syncthreads();
        if (warp == 0) {
            s = lane < WARPS ? ws[lane] : -CUDART_INF_F;
            i = lane < WARPS ? wi[lane] : INT_MAX;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const float os2 = __shfl_xor_sync(0xffffffffu, s, o);
                const int oi2 = __shfl_xor_sync(0xffffffffu, i, o);
                if (higher(os2, oi2, s, i)) {
                    s = os2;
                    i = oi2;
                }
            }
            if (lane == 0) {
                win = i;
                oi[r] = i == INT_MAX ? -1 : i;
                os[r] = i == INT_MAX ? -CUDART_INF_F : s;
            }
        }
        __syncthreads();
        const int w = win;
        if (w == INT_MAX) { /* nothing left anywhere: the rest of the list is empty */
            for (uint32_t t = r + 1 + threadIdx.x; t < k; t += blockDim.x) {
                oi[t] = -1;
                os[t] = -CUDART_INF_F;
            }
            break;
        }
        if (I[0] == w) { /* indices are unique, so exactly one thread pops */
#pragma unroll
            for (int j = 0; j < KL - 1; j++) {
                L[j] = L[j + 1];
                I[j] = I[j + 1];
            }
            L[KL - 1] = -CUDART_INF_F;
            I[KL - 1] = INT_MAX;
        }
    }
}

/* One warp per row: its centroid's sums and count, by atomics (coalesced along d). */
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    cluster_sums_kernel(const float *X, const int32_t *idx, uint32_t n, uint32_t k, uint32_t d,
                        float *sums, uint32_t *counts)
{
    const int lane = threadIdx.x & 31;
    for (size_t row = blockIdx.x * (size_t)WARPS + (threadIdx.x >> 5); row < n;
         row += (size_t)gridDim.x * WARPS) {
        const int32_t j = idx[row];
        if (j < 0 || (uint32_t)j >= k)
            continue;
        if (lane == 0)
            atomicAdd(&counts[j], 1u);
        const float *x = X + row * d;
        float *s = sums + (size_t)j * d;
        for (uint32_t t = lane; t < d; t += 32)
            atomicAdd(&s[t], x[t]);
    }
}

unsigned warp_row_blocks(size_t rows) { return sona_cuda_blocks((rows + WARPS - 1) / WARPS, 1); }

} // namespace

cudaError_t sona_cuda_launch_row_sqnorms(const float *M, uint32_t rows, uint32_t d, float *out,
                                         cudaStream_t s)
{
    row_norms_kernel<false><<<warp_row_blocks(rows), SONA_CUDA_BLOCK, 0, s>>>(M, rows, d, out);
    return cudaGetLastError();
}

cudaError_t sona_cuda_launch_row_inv_norms(const float *M, uint32_t rows, uint32_t d, float *out,
                                           cudaStream_t s)
{
    row_norms_kernel<true><<<warp_row_blocks(rows), SONA_CUDA_BLOCK, 0, s>>>(M, rows, d, out);
    return cudaGetLastError();
}

cudaError_t sona_cuda_launch_argmin_rows(const float *G, uint32_t rows, uint32_t k,
                                         const float *xn, const float *cn, int32_t *idx,
                                         float *dist, cudaStream_t s)
{
    argmin_rows_kernel<<<warp_row_blocks(rows), SONA_CUDA_BLOCK, 0, s>>>(G, rows, k, xn, cn, idx,
                                                                         dist);
    return cudaGetLastError();
}

cudaError_t sona_cuda_launch_topk_merge(const float *S, uint32_t rows, uint32_t cols,
                                        uint32_t col0, const float *qinv, const float *pinv,
                                        uint32_t k, int first, int32_t *idx, float *sim,
                                        cudaStream_t s)
{
#define SONA_TOPK(KL)                                                                         \
    if (k <= KL) {                                                                            \
        topk_merge_kernel<KL>                                                                 \
            <<<rows, SONA_CUDA_BLOCK, 0, s>>>(S, cols, col0, qinv, pinv, k, first, idx, sim); \
        return cudaGetLastError();                                                            \
    }
    SONA_TOPK(8)
    SONA_TOPK(16)
    SONA_TOPK(32)
    SONA_TOPK(64)
#undef SONA_TOPK
    return cudaErrorInvalidValue;
}

cudaError_t sona_cuda_launch_cluster_sums(const sona_cluster_sums_args *a, cudaStream_t s)
{
    cluster_sums_kernel<<<warp_row_blocks(a->n), SONA_CUDA_BLOCK, 0, s>>>(
        a->X, a->idx, a->n, a->k, a->d, a->sums, a->counts);
    return cudaGetLastError();
}

cudaError_t sona_cuda_probe_kernel_image(void)
{
    cudaFuncAttributes attr;
    return cudaFuncGetAttributes(&attr, argmin_rows_kernel);
}
