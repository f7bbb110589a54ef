/* SPDX-License-Identifier: MIT */
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
        acc = sona_cuda_warp_sum(acc);
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

/* Warp-wide best of the lanes' (s, i) pairs, in every lane: the highest value (LOWEST: the
 * lowest), lower index on ties. */
template <bool LOWEST>
__device__ __forceinline__ void warp_pick(float &s, int &i)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float os2 = __shfl_xor_sync(0xffffffffu, s, o);
        const int oi2 = __shfl_xor_sync(0xffffffffu, i, o);
        if (LOWEST ? lower(os2, oi2, s, i) : higher(os2, oi2, s, i)) {
            s = os2;
            i = oi2;
        }
    }
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
        warp_pick<true>(best, bj);
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

/* Empties the list (L, I) of KL entries. */
template <int KL>
__device__ __forceinline__ void list_clear(float (&L)[KL], int (&I)[KL])
{
#pragma unroll
    for (int j = 0; j < KL; j++) {
        L[j] = -CUDART_INF_F;
        I[j] = INT_MAX;
    }
}

/* Drops the head of the list (L, I) of KL entries; the freed tail entry is empty. */
template <int KL>
__device__ __forceinline__ void list_pop_front(float (&L)[KL], int (&I)[KL])
{
#pragma unroll
    for (int j = 0; j < KL - 1; j++) {
        L[j] = L[j + 1];
        I[j] = I[j + 1];
    }
    L[KL - 1] = -CUDART_INF_F;
    I[KL - 1] = INT_MAX;
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
    list_clear<KL>(L, I);
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
        warp_pick<false>(s, i);
        if (lane == 0) {
            ws[warp] = s;
            wi[warp] = i;
        }
        __syncthreads();
        if (warp == 0) {
            s = lane < WARPS ? ws[lane] : -CUDART_INF_F;
            i = lane < WARPS ? wi[lane] : INT_MAX;
            warp_pick<false>(s, i);
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
        if (I[0] == w) /* indices are unique, so exactly one thread pops */
            list_pop_front<KL>(L, I);
    }
}

/* Candidate selection of the approximate (TF32) knn pass: one warp per query row of the tile
 * keeps the top C of the approximate similarities seen so far in cidx/csim (rows x C, best
 * first, empty entries -1/-inf). Each lane keeps a short list of LANE_LIST of its columns (few
 * registers, so many warps in flight); a value a full lane list pushes out or turns away is
 * not lost silently: dropped[q] keeps the highest such value over all tiles, and the refine
 * step treats it like the C-th candidate (a bound on everything left out). A tile that brings
 * nothing new leaves the stored list as it is. */
constexpr int LANE_LIST = 8;

template <int C>
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    knn_candidates_kernel(const float *S, uint32_t rows, uint32_t cols, uint32_t col0,
                          const float *qinv, const float *pinv, int first, int32_t *cidx,
                          float *csim, float *dropped)
{
    const int lane = threadIdx.x & 31;
    const size_t q = blockIdx.x * (size_t)WARPS + (threadIdx.x >> 5);
    if (q >= rows) /* uniform per warp */
        return;
    float L[LANE_LIST];
    int I[LANE_LIST];
    list_clear<LANE_LIST>(L, I);
    float dmax = -CUDART_INF_F; /* highest value this lane dropped */
    int32_t *oi = cidx + q * C;
    float *os = csim + q * C;
    float thr = -CUDART_INF_F;
    if (!first) {
        /* Later columns have higher indices, so only a strictly higher value beats the C-th. */
        if (oi[C - 1] >= 0)
            thr = os[C - 1];
        for (int t = lane; t < C; t += 32) /* C / 32 <= LANE_LIST entries per lane: none lost */
            if (oi[t] >= 0)
                list_insert<LANE_LIST>(L, I, os[t], oi[t]);
    }
    const float *row = S + q * cols;
    const float qi = qinv[q];
    bool fresh = false;
    constexpr int UNROLL = 8; /* loads in flight per lane before the compare chain */
    for (uint32_t c0 = lane; c0 < cols; c0 += 32 * UNROLL) {
        float v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const uint32_t c = c0 + 32u * u;
            v[u] = c < cols ? row[c] * qi * pinv[c] : -CUDART_INF_F;
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const uint32_t c = c0 + 32u * u;
            const int i = (int)(col0 + c);
            if (c < cols && v[u] > thr) {
                if (higher(v[u], i, L[LANE_LIST - 1], I[LANE_LIST - 1])) {
                    if (I[LANE_LIST - 1] != INT_MAX) /* the last entry is pushed out */
                        dmax = fmaxf(dmax, L[LANE_LIST - 1]);
                    list_insert<LANE_LIST>(L, I, v[u], i);
                    fresh = true;
                } else {
                    dmax = fmaxf(dmax, v[u]);
                }
            }
        }
    }
    float dm = dmax;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        dm = fmaxf(dm, __shfl_xor_sync(0xffffffffu, dm, o));
    if (lane == 0 && (first || dm > dropped[q]))
        dropped[q] = dm;
    if (!first && !__any_sync(0xffffffffu, fresh))
        return;
    for (int r = 0; r < C; r++) {
        float s = L[0];
        int i = I[0];
        warp_pick<false>(s, i);
        if (i == INT_MAX) { /* nothing left: the rest of the list is empty */
            for (int t = r + lane; t < C; t += 32) {
                oi[t] = -1;
                os[t] = -CUDART_INF_F;
            }
            break;
        }
        if (lane == 0) {
            oi[r] = i;
            os[r] = s;
        }
        if (I[0] == i) /* indices are unique, so exactly one lane pops */
            list_pop_front<LANE_LIST>(L, I);
    }
    /* Entries of the lane lists beyond the top C are left out too: the C-th bounds them. */
}

/* Exact re-ranking of the candidates: one warp per query row of the tile computes the FP32
 * cosine of each candidate from the original vectors and keeps the best k (lower index on
 * ties) in idx/sim (rows x k). A query where something left out of its candidates may be within
 * margin of its k-th approximate similarity is appended to flagged[1..] (flagged[0] counts). */
template <int C>
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    knn_refine_kernel(const float *Q, const float *P, uint32_t rows, uint32_t d,
                      const float *qinv, const float *pinv, uint32_t k, float margin,
                      const int32_t *cidx, const float *csim, const float *dropped,
                      int32_t *idx, float *sim, uint32_t *flagged)
{
    __shared__ float es[WARPS][C];
    __shared__ int ej[WARPS][C];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t q = blockIdx.x * (size_t)WARPS + warp;
    if (q >= rows) /* uniform per warp; no block barrier below */
        return;
    const int32_t *ci = cidx + q * C;
    const float *x = Q + q * (size_t)d;
    const float qi = qinv[q];
    for (int c = 0; c < C; c++) {
        const int32_t j = ci[c];
        float acc = 0.0f;
        if (j >= 0) { /* valid entries come first, but keep every lane on the same path */
            const float *p = P + (size_t)j * d;
            for (uint32_t t = lane; t < d; t += 32)
                acc = fmaf(x[t], p[t], acc);
        }
        acc = sona_cuda_warp_sum(acc);
        if (lane == 0) {
            es[warp][c] = j >= 0 ? acc * qi * pinv[j] : -CUDART_INF_F;
            ej[warp][c] = j >= 0 ? (int)j : INT_MAX;
        }
    }
    __syncwarp();
    constexpr int PER = C / 32;
    float E[PER];
    int J[PER];
#pragma unroll
    for (int t = 0; t < PER; t++) {
        E[t] = es[warp][lane + 32 * t];
        J[t] = ej[warp][lane + 32 * t];
    }
    int32_t *oi = idx + q * k;
    float *os = sim + q * k;
    for (uint32_t r = 0; r < k; r++) {
        float s = E[0];
        int i = J[0];
#pragma unroll
        for (int t = 1; t < PER; t++)
            if (higher(E[t], J[t], s, i)) {
                s = E[t];
                i = J[t];
            }
        warp_pick<false>(s, i);
        if (lane == 0) {
            oi[r] = i == INT_MAX ? -1 : i;
            os[r] = i == INT_MAX ? -CUDART_INF_F : s;
        }
#pragma unroll
        for (int t = 0; t < PER; t++)
            if (J[t] == i && i != INT_MAX) {
                E[t] = -CUDART_INF_F;
                J[t] = INT_MAX;
            }
    }
    /* Everything left out is <= the C-th candidate (when the list is full) or <= dropped. */
    float out_bound = dropped[q];
    if (ci[C - 1] >= 0)
        out_bound = fmaxf(out_bound, csim[q * C + C - 1]);
    if (lane == 0 && out_bound > -CUDART_INF_F && out_bound >= csim[q * C + k - 1] - margin) {
        const uint32_t at = atomicAdd(&flagged[0], 1u);
        flagged[1 + at] = (uint32_t)q;
    }
}

/* dst[r] = src[rows[r]] for r < count (rows of d floats). */
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    gather_rows_kernel(const float *src, uint32_t d, const uint32_t *rows, uint32_t count,
                       float *dst)
{
    const size_t total = (size_t)count * d;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        const size_t r = e / d, t = e % d;
        dst[e] = src[(size_t)rows[r] * d + t];
    }
}

/* idx[rows[r]] = fidx[r], sim[rows[r]] = fsim[r] for r < count (rows of k entries). */
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    scatter_lists_kernel(const int32_t *fidx, const float *fsim, uint32_t k, const uint32_t *rows,
                         uint32_t count, int32_t *idx, float *sim)
{
    const size_t total = (size_t)count * k;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        const size_t r = e / k, t = e % k, at = (size_t)rows[r] * k + t;
        idx[at] = fidx[e];
        sim[at] = fsim[e];
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

uint32_t sona_cuda_knn_candidates(uint32_t k)
{
    return k <= 16 ? 32u : k <= 48 ? 64u : 0u;
}

cudaError_t sona_cuda_launch_knn_candidates(const float *S, uint32_t rows, uint32_t cols,
                                            uint32_t col0, const float *qinv, const float *pinv,
                                            uint32_t C, int first, int32_t *cidx, float *csim,
                                            float *dropped, cudaStream_t s)
{
    if (C == 32)
        knn_candidates_kernel<32><<<warp_row_blocks(rows), SONA_CUDA_BLOCK, 0, s>>>(
            S, rows, cols, col0, qinv, pinv, first, cidx, csim, dropped);
    else if (C == 64)
        knn_candidates_kernel<64><<<warp_row_blocks(rows), SONA_CUDA_BLOCK, 0, s>>>(
            S, rows, cols, col0, qinv, pinv, first, cidx, csim, dropped);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}

cudaError_t sona_cuda_launch_knn_refine(const float *Q, const float *P, uint32_t rows, uint32_t d,
                                        const float *qinv, const float *pinv, uint32_t k,
                                        float margin, uint32_t C, const int32_t *cidx,
                                        const float *csim, const float *dropped, int32_t *idx,
                                        float *sim, uint32_t *flagged, cudaStream_t s)
{
    if (k < 1 || k >= C)
        return cudaErrorInvalidValue;
    if (C == 32)
        knn_refine_kernel<32><<<warp_row_blocks(rows), SONA_CUDA_BLOCK, 0, s>>>(
            Q, P, rows, d, qinv, pinv, k, margin, cidx, csim, dropped, idx, sim, flagged);
    else if (C == 64)
        knn_refine_kernel<64><<<warp_row_blocks(rows), SONA_CUDA_BLOCK, 0, s>>>(
            Q, P, rows, d, qinv, pinv, k, margin, cidx, csim, dropped, idx, sim, flagged);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}

cudaError_t sona_cuda_launch_gather_rows(const float *src, uint32_t d, const uint32_t *rows,
                                         uint32_t count, float *dst, cudaStream_t s)
{
    gather_rows_kernel<<<sona_cuda_blocks((size_t)count * d, SONA_CUDA_BLOCK), SONA_CUDA_BLOCK, 0,
                         s>>>(src, d, rows, count, dst);
    return cudaGetLastError();
}

cudaError_t sona_cuda_launch_scatter_lists(const int32_t *fidx, const float *fsim, uint32_t k,
                                           const uint32_t *rows, uint32_t count, int32_t *idx,
                                           float *sim, cudaStream_t s)
{
    scatter_lists_kernel<<<sona_cuda_blocks((size_t)count * k, SONA_CUDA_BLOCK), SONA_CUDA_BLOCK,
                           0, s>>>(fidx, fsim, k, rows, count, idx, sim);
    return cudaGetLastError();
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
