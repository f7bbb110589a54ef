/* SPDX-License-Identifier: MIT */
/* param_update: a per-segment squared-norm reduction (only when clipping), then one fused
 * elementwise step (clip, EWC penalty, step, Fisher EMA) in the scalar variant's order. */
#include "cuda/cuda_internal.h"

namespace {

/* Block (x, seg): a slice of segment seg; the block's double sum goes to sumsq[seg] by one
 * atomic. */
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    segment_sumsq_kernel(const float *g, uint32_t segments, uint32_t len, double *sumsq)
{
    __shared__ double part[SONA_CUDA_BLOCK / 32];
    for (uint32_t seg = blockIdx.y; seg < segments; seg += gridDim.y) {
        const float *gs = g + (size_t)seg * len;
        double acc = 0.0;
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < len;
             i += (size_t)gridDim.x * blockDim.x)
            acc += (double)gs[i] * gs[i];
        acc = sona_cuda_warp_sum(acc);
        if ((threadIdx.x & 31) == 0)
            part[threadIdx.x >> 5] = acc;
        __syncthreads();
        if (threadIdx.x == 0) {
            double s = 0.0;
            for (unsigned w = 0; w < blockDim.x / 32; w++)
                s += part[w];
            atomicAdd(&sumsq[seg], s);
        }
        __syncthreads();
    }
}

__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    param_step_kernel(sona_param_update_args a, const double *sumsq)
{
    const size_t total = (size_t)a.segments * a.len;
    const bool penalty = a.fisher_sum && a.fisher_theta;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float c = 1.0f;
        if (sumsq) {
            const double norm = sqrt(sumsq[i / a.len]);
            if (norm > a.clip_norm)
                c = (float)(a.clip_norm / norm);
        }
        const float g = c * a.g[i];
        const float th = a.theta[i];
        float step = g;
        if (penalty)
            step -= a.lambda * (a.fisher_sum[i] * th - a.fisher_theta[i]);
        a.theta[i] = th + a.lr * step;
        if (a.fisher)
            a.fisher[i] = a.decay * a.fisher[i] + (1.0f - a.decay) * g * g;
    }
}

} // namespace

cudaError_t sona_cuda_launch_segment_sumsq(const sona_param_update_args *a, double *sumsq,
                                           cudaStream_t s)
{
    /* Enough blocks per segment to fill the device on one long segment, few on many short. */
    const size_t per_block = (size_t)SONA_CUDA_BLOCK * 8;
    size_t bx = (a->len + per_block - 1) / per_block;
    if (bx < 1)
        bx = 1;
    if (bx > 1024)
        bx = 1024;
    const dim3 grid((unsigned)bx, a->segments < 65535u ? a->segments : 65535u);
    segment_sumsq_kernel<<<grid, SONA_CUDA_BLOCK, 0, s>>>(a->g, a->segments, a->len, sumsq);
    return cudaGetLastError();
}

cudaError_t sona_cuda_launch_param_step(const sona_param_update_args *a, const double *sumsq,
                                        cudaStream_t s)
{
    const size_t total = (size_t)a->segments * a->len;
    param_step_kernel<<<sona_cuda_blocks(total, SONA_CUDA_BLOCK), SONA_CUDA_BLOCK, 0, s>>>(*a,
                                                                                        sumsq);
    return cudaGetLastError();
}
