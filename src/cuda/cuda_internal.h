/* SPDX-License-Identifier: MIT */
/* Private to the CUDA module: the backend context, status checking and the kernel launchers.
 * Host code in cuda_backend.cu owns the context; each kernels_*.cu file owns its kernels and
 * exposes one launcher per op step (launch only: the caller checks the launch status). */
#ifndef SONA_CUDA_CUDA_INTERNAL_H
#define SONA_CUDA_CUDA_INTERNAL_H

#include "backend/ops.h"
#include "gpu/host_locality.h"

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#define SONA_CUDA_MAX_TOPK 64

/* Block size of every kernel that is not tied to a data shape. */
#define SONA_CUDA_BLOCK 256

/* Sum of v over the 32 lanes of a full warp, in every lane (float or double). */
template <typename T>
__device__ __forceinline__ T sona_cuda_warp_sum(T v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ---- lora (kernels_lora.cu) ------------------------------------------------------------ */

/* The batch: shrink (A x), then expand (x + s Bt^T t). mode: 0 one block per row, 1 rows of one
 * adapter together (ranks <= 16, else per row), 2 the sliced pair (rows of one adapter together,
 * hidden split over blocks; needs scratch, else per row), 3 one pass (one cooperative launch,
 * hidden split over blocks that meet per adapter at a barrier; ranks <= 16 in float4 layout,
 * needs scratch, else as -1), -1 choose. */
cudaError_t sona_cuda_launch_lora_apply(const sona_lora_apply_args *a, int mode, float *scratch,
                                        cudaStream_t s);
/* Floats of scratch that mode needs for a (0: none). */
size_t sona_cuda_lora_apply_scratch(const sona_lora_apply_args *a, int mode);

/* u[i][j] = wt[i] s (A x_i)_j and v[i][j] = wt[i] s (Bt d_i)_j for rows with an adapter, zero
 * for the others; u and v are n x rank scratch arrays. */
cudaError_t sona_cuda_launch_lora_grad_project(const sona_lora_grad_args *a, float *u, float *v,
                                               cudaStream_t s);
/* gA[a] += sum over rows of adapter a of v_i x_i^T, gBt[a] += u_i d_i^T. Rows are grouped by
 * adapter first (a counting sort); scratch holds 3 * num_adapters + 1 + n uint32 values. */
cudaError_t sona_cuda_launch_lora_grad_accumulate(const sona_lora_grad_args *a, const float *u,
                                                  const float *v, uint32_t *scratch,
                                                  cudaStream_t s);

/* ---- param_update (kernels_update.cu) ------------------------------------------------- */

/* sumsq[seg] += sum of g^2 over the segment (sumsq zeroed by the caller). */
cudaError_t sona_cuda_launch_segment_sumsq(const sona_param_update_args *a, double *sumsq,
                                           cudaStream_t s);
/* The fused step; sumsq is NULL when there is no clipping. */
cudaError_t sona_cuda_launch_param_step(const sona_param_update_args *a, const double *sumsq,
                                        cudaStream_t s);

/* ---- distances, search, clustering (kernels_dist.cu) ---------------------------------- */

/* out[i] = |row i|^2 for rows of M[rows][d]. */
cudaError_t sona_cuda_launch_row_sqnorms(const float *M, uint32_t rows, uint32_t d, float *out,
                                         cudaStream_t s);
/* out[i] = 1/|row i| (0 for a zero row). */
cudaError_t sona_cuda_launch_row_inv_norms(const float *M, uint32_t rows, uint32_t d, float *out,
                                           cudaStream_t s);
/* For rows of a tile of X: argmin over j of xn[i] + cn[j] - 2 G[i][j] (G is rows x k, the
 * tile's dot products), clamped at 0; writes idx[i], dist[i] of the tile. */
cudaError_t sona_cuda_launch_argmin_rows(const float *G, uint32_t rows, uint32_t k,
                                         const float *xn, const float *cn, int32_t *idx,
                                         float *dist, cudaStream_t s);
/* Merges one tile of dot products S[rows][cols] (the tile's queries against patterns col0..)
 * into the running top-k lists idx/sim of those queries (rows x k, best first). qinv and pinv
 * are the inverse norms of the tile's queries and columns. first: no running list yet (rows
 * >= 1; cols may be 0, which just writes empty lists when first). */
cudaError_t sona_cuda_launch_topk_merge(const float *S, uint32_t rows, uint32_t cols,
                                        uint32_t col0, const float *qinv, const float *pinv,
                                        uint32_t k, int first, int32_t *idx, float *sim,
                                        cudaStream_t s);
/* The approximate-then-exact knn path (cuda_backend.cu explains why it is exact). Candidates
 * kept per query for top-k: 32 or 64, or 0 when k is too large for the path. */
uint32_t sona_cuda_knn_candidates(uint32_t k);
/* Merges one tile of approximate dot products S[rows][cols] into the running top-C candidate
 * lists cidx/csim (rows x C, approximate cosines, best first); first: no list yet. dropped[q]
 * (rows floats) is the highest approximate value of a column left out other than below the
 * C-th (-inf when none). */
cudaError_t sona_cuda_launch_knn_candidates(const float *S, uint32_t rows, uint32_t cols,
                                            uint32_t col0, const float *qinv, const float *pinv,
                                            uint32_t C, int first, int32_t *cidx, float *csim,
                                            float *dropped, cudaStream_t s);
/* Re-ranks each query's candidates by FP32 cosines of the original rows of Q (the tile's) and P
 * into idx/sim (rows x k, k < C). Queries whose C-th approximate similarity is not below their
 * k-th minus margin (or where dropped is) go to flagged[1 + ...] (tile row numbers; flagged[0] counts, zeroed by the
 * caller): their candidates may miss a true neighbour. */
cudaError_t sona_cuda_launch_knn_refine(const float *Q, const float *P, uint32_t rows, uint32_t d,
                                        const float *qinv, const float *pinv, uint32_t k,
                                        float margin, uint32_t C, const int32_t *cidx,
                                        const float *csim, const float *dropped, int32_t *idx,
                                        float *sim, uint32_t *flagged, cudaStream_t s);
/* dst[r] = src[rows[r]] for rows of d floats, r < count. */
cudaError_t sona_cuda_launch_gather_rows(const float *src, uint32_t d, const uint32_t *rows,
                                         uint32_t count, float *dst, cudaStream_t s);
/* idx/sim[rows[r]] = fidx/fsim[r] for lists of k entries, r < count. */
cudaError_t sona_cuda_launch_scatter_lists(const int32_t *fidx, const float *fsim, uint32_t k,
                                           const uint32_t *rows, uint32_t count, int32_t *idx,
                                           float *sim, cudaStream_t s);
/* sums[idx[i]] += X[i], counts[idx[i]] += 1 (outputs zeroed by the caller). */
cudaError_t sona_cuda_launch_cluster_sums(const sona_cluster_sums_args *a, cudaStream_t s);

/* ---- host locality (cuda_locality.cu) ------------------------------------------------- */

/* The host CPUs near CUDA device `device`, for bind_host_thread. */
void sona_cuda_locality_init(sona_host_locality *l, int device);

/* Whether this build has a kernel image the current device can run (cudaSuccess if so). */
cudaError_t sona_cuda_probe_kernel_image(void);

/* Blocks for a grid-stride loop over n items, capped to keep the grid legal. */
static inline unsigned sona_cuda_blocks(size_t n, unsigned block)
{
    size_t b = (n + block - 1) / block;
    if (b < 1)
        b = 1;
    if (b > 65535u * 8u)
        b = 65535u * 8u;
    return (unsigned)b;
}

#endif /* SONA_CUDA_CUDA_INTERNAL_H */
