/* SPDX-License-Identifier: MIT */
/* LoRA kernels: batched multi-adapter apply (BGMV: one block per row, each row gathers its own
 * adapter) and gradients grouped by adapter.
 *
 * The rank is a template bucket (1, 2, 4, ..., 64) so per-rank accumulators stay in registers;
 * the real rank r <= bucket masks the unused ones. VEC paths use float4 loads when hidden is a
 * multiple of 4 and every row start is 16-byte aligned (checked by the host side). */
#include "cuda/cuda_internal.h"

#include <stdint.h>

namespace {

/* Programmatic dependent launch (sm_90 and later): the shrink kernel lets the expand kernel
 * start early (launch, id scan) and the expand kernel waits for the shrink's results before
 * touching anything the shrink writes or reads. Both are no-ops on older devices and when the
 * expand kernel was launched without the attribute. */
__device__ __forceinline__ void pdl_release_dependents()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait_for_primary()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* out[j] = scale * <M_j, v> for j < r, M rank-major (r rows of H). Every thread of the block must
 * call it; out is shared memory and is ready for every thread on return. */
template <int R, bool VEC>
__device__ void block_row_dots(const float *__restrict__ M, const float *v, size_t H, int r,
                               float scale, float *out)
{
    __shared__ float part[R][SONA_CUDA_BLOCK / 32];
    float acc[R];
#pragma unroll
    for (int j = 0; j < R; j++)
        acc[j] = 0.0f;
    if (VEC) {
        const size_t H4 = H / 4;
        const float4 *v4 = reinterpret_cast<const float4 *>(v);
        for (size_t h = threadIdx.x; h < H4; h += blockDim.x) {
            const float4 xv = v4[h];
#pragma unroll
            for (int j = 0; j < R; j++) {
                if (j < r) {
                    const float4 m = __ldg(reinterpret_cast<const float4 *>(M + (size_t)j * H) + h);
                    acc[j] += m.x * xv.x + m.y * xv.y + m.z * xv.z + m.w * xv.w;
                }
            }
        }
    } else {
        for (size_t h = threadIdx.x; h < H; h += blockDim.x) {
            const float xv = v[h];
#pragma unroll
            for (int j = 0; j < R; j++)
                if (j < r)
                    acc[j] += __ldg(M + (size_t)j * H + h) * xv;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int j = 0; j < R; j++) {
        if (j < r) {
            const float s = sona_cuda_warp_sum(acc[j]);
            if (lane == 0)
                part[j][warp] = s;
        }
    }
    __syncthreads();
    if ((int)threadIdx.x < r) {
        float s = 0.0f;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++)
            s += part[threadIdx.x][w];
        out[threadIdx.x] = scale * s;
    }
    __syncthreads();
}

/* y = x over the units [u0, u1) of one row (a unit is a float4 with VEC), each thread taking
 * every blockDim.x-th from u0 + threadIdx.x; x == y: nothing to do. */
template <bool VEC>
__device__ void copy_units(const float *x, float *y, size_t u0, size_t u1)
{
    if (x == y)
        return;
    for (size_t u = u0 + threadIdx.x; u < u1; u += blockDim.x) {
        if (VEC)
            reinterpret_cast<float4 *>(y)[u] = reinterpret_cast<const float4 *>(x)[u];
        else
            y[u] = x[u];
    }
}

template <int R, bool VEC>
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    lora_apply_kernel(sona_lora_weights w, const int32_t *ids, const float *x, float *y)
{
    __shared__ float t[R];
    const size_t H = w.hidden;
    const int r = (int)w.rank;
    const float *xr = x + (size_t)blockIdx.x * H;
    float *yr = y + (size_t)blockIdx.x * H;
    const int32_t id = ids ? ids[blockIdx.x] : 0;
    if (id < 0 || (uint32_t)id >= w.num_adapters) {
        copy_units<VEC>(xr, yr, 0, VEC ? H / 4 : H);
        return;
    }
    const size_t off = (size_t)id * w.rank * H;
    /* Shrink: t = s A x. Every read of x happens before the barrier inside, so y may be x. */
    block_row_dots<R, VEC>(w.A + off, xr, H, r, w.scale[id], t);
    float tj[R];
#pragma unroll
    for (int j = 0; j < R; j++)
        tj[j] = j < r ? t[j] : 0.0f;
    /* Expand: y = x + Bt^T t. */
    const float *__restrict__ Bt = w.Bt + off;
    if (VEC) {
        const float4 *x4 = reinterpret_cast<const float4 *>(xr);
        float4 *y4 = reinterpret_cast<float4 *>(yr);
        for (size_t h = threadIdx.x; h < H / 4; h += blockDim.x) {
            float4 o = x4[h];
#pragma unroll
            for (int j = 0; j < R; j++) {
                if (j < r) {
                    const float4 b = __ldg(reinterpret_cast<const float4 *>(Bt + (size_t)j * H) + h);
                    o.x += b.x * tj[j];
                    o.y += b.y * tj[j];
                    o.z += b.z * tj[j];
                    o.w += b.w * tj[j];
                }
            }
            y4[h] = o;
        }
    } else {
        for (size_t h = threadIdx.x; h < H; h += blockDim.x) {
            float o = xr[h];
#pragma unroll
            for (int j = 0; j < R; j++)
                if (j < r)
                    o += __ldg(Bt + (size_t)j * H + h) * tj[j];
            yr[h] = o;
        }
    }
}

/* ---- rows of one adapter in groups (the grouped kernel and the sliced pair) ---------------- */

constexpr int GROUP = 4;
constexpr int ID_CHUNK = SONA_CUDA_BLOCK;
constexpr int WARPS = SONA_CUDA_BLOCK / 32;

/* ptr[g] = base + rows_s[g0 + g] * H for the gn rows of a group; entries past gn repeat the
 * first row and are never dereferenced. */
template <int G, typename T>
__device__ __forceinline__ void group_rows(T *base, size_t H, const int *rows_s, int g0, int gn,
                                           T *(&ptr)[G])
{
#pragma unroll
    for (int g = 0; g < G; g++)
        ptr[g] = base + (size_t)rows_s[g0 + (g < gn ? g : 0)] * H;
}

/* acc[g][j] = this thread's part of <M_j, x_g> for the rows g < gn of a group: the units of
 * [u0, u1) it takes, as in copy_units. M is rank-major (r rows of H). */
template <int R, int G, bool VEC>
__device__ __forceinline__ void group_dots(const float *__restrict__ M, size_t H, size_t u0,
                                           size_t u1, int r, const float *const *xg, int gn,
                                           float (&acc)[G][R])
{
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int j = 0; j < R; j++)
            acc[g][j] = 0.0f;
    for (size_t unit = u0 + threadIdx.x; unit < u1; unit += blockDim.x) {
        if (VEC) {
            float4 xv[G];
#pragma unroll
            for (int g = 0; g < G; g++)
                xv[g] = g < gn ? reinterpret_cast<const float4 *>(xg[g])[unit]
                               : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int j = 0; j < R; j++) {
                if (j < r) {
                    const float4 m =
                        __ldg(reinterpret_cast<const float4 *>(M + (size_t)j * H) + unit);
#pragma unroll
                    for (int g = 0; g < G; g++)
                        acc[g][j] += m.x * xv[g].x + m.y * xv[g].y + m.z * xv[g].z + m.w * xv[g].w;
                }
            }
        } else {
            float xv[G];
#pragma unroll
            for (int g = 0; g < G; g++)
                xv[g] = g < gn ? xg[g][unit] : 0.0f;
#pragma unroll
            for (int j = 0; j < R; j++) {
                if (j < r) {
                    const float m = __ldg(M + (size_t)j * H + unit);
#pragma unroll
                    for (int g = 0; g < G; g++)
                        acc[g][j] += m * xv[g];
                }
            }
        }
    }
}

/* Where group_expand reads Bt: its rank-major rows of H floats in global memory, ... */
struct bt_global {
    const float *__restrict__ Bt;
    size_t H;
    __device__ float4 vec(int j, size_t unit) const
    {
        return __ldg(reinterpret_cast<const float4 *>(Bt + (size_t)j * H) + unit);
    }
    __device__ float one(int j, size_t unit) const { return __ldg(Bt + (size_t)j * H + unit); }
};

/* ... or this block's slice of them in shared memory, float4 units [u0, u0 + blockDim.x) of
 * each rank row. */
struct bt_shared_slice {
    const float4 *rows;
    size_t u0;
    __device__ float4 vec(int j, size_t unit) const { return rows[j * blockDim.x + (unit - u0)]; }
};

/* y_g = x_g + Bt^T t_g for the rows g < gn of a group (t in shared memory, already scaled),
 * over the units of [u0, u1) this thread takes. A row's x unit is read before its y unit is
 * written, by the same thread, so y may be x. */
template <int R, int G, bool VEC, typename BtSource>
__device__ __forceinline__ void group_expand(const BtSource &bt, size_t u0, size_t u1, int r,
                                             const float (*t)[R], const float *const *xg,
                                             float *const *yg, int gn)
{
    for (size_t unit = u0 + threadIdx.x; unit < u1; unit += blockDim.x) {
        if constexpr (VEC) {
            float4 o[G];
#pragma unroll
            for (int g = 0; g < G; g++)
                o[g] = g < gn ? reinterpret_cast<const float4 *>(xg[g])[unit]
                              : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int j = 0; j < R; j++) {
                if (j < r) {
                    const float4 b = bt.vec(j, unit);
#pragma unroll
                    for (int g = 0; g < G; g++) {
                        const float tg = t[g][j];
                        o[g].x += b.x * tg;
                        o[g].y += b.y * tg;
                        o[g].z += b.z * tg;
                        o[g].w += b.w * tg;
                    }
                }
            }
#pragma unroll
            for (int g = 0; g < G; g++)
                if (g < gn)
                    reinterpret_cast<float4 *>(yg[g])[unit] = o[g];
        } else {
            float o[G];
#pragma unroll
            for (int g = 0; g < G; g++)
                o[g] = g < gn ? xg[g][unit] : 0.0f;
#pragma unroll
            for (int j = 0; j < R; j++) {
                if (j < r) {
                    const float b = bt.one(j, unit);
#pragma unroll
                    for (int g = 0; g < G; g++)
                        o[g] += b * t[g][j];
                }
            }
#pragma unroll
            for (int g = 0; g < G; g++)
                if (g < gn)
                    yg[g][unit] = o[g];
        }
    }
}

/* part[g][j][warp] = this warp's sum of acc[g][j] (j < r); the caller syncs the block before
 * reading part. */
template <int R, int G>
__device__ __forceinline__ void group_warp_partials(float (&acc)[G][R], int r,
                                                    float (&part)[G][R][WARPS])
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int j = 0; j < R; j++)
            if (j < r) {
                const float v = sona_cuda_warp_sum(acc[g][j]);
                if (lane == 0)
                    part[g][j][warp] = v;
            }
}

/* The block's total of one (row, rank) entry of part. */
__device__ __forceinline__ float warps_total(const float (&p)[WARPS])
{
    float sum = 0.0f;
    for (int q = 0; q < WARPS; q++)
        sum += p[q];
    return sum;
}

/* The rows of chunk `base` that block a takes (rows with id a; for a == num_adapters, rows
 * without an adapter), in rows_s; returns how many (same for every thread). */
__device__ int collect_rows(const int32_t *ids, uint32_t n, size_t base, uint32_t a,
                            uint32_t num_adapters, int *rows_s, int *count_s)
{
    if (threadIdx.x == 0)
        *count_s = 0;
    __syncthreads();
    const size_t i = base + threadIdx.x;
    if (i < n) {
        const int32_t id = ids[i];
        const bool valid = id >= 0 && (uint32_t)id < num_adapters;
        if (a == num_adapters ? !valid : (valid && (uint32_t)id == a))
            rows_s[atomicAdd(count_s, 1)] = (int)i;
    }
    __syncthreads();
    return *count_s;
}

/* Rows of one adapter handled together: block (a, p) takes the rows with id a from every
 * P-th chunk of 256 ids, G rows at a time, so each group reads A and Bt once instead of once
 * per row (the row kernel above leans on L2 for that). Rows without an adapter are copied by
 * the blocks with blockIdx.x == num_adapters. R <= 16 keeps G x R accumulators in registers. */
template <int R, bool VEC>
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    lora_apply_grouped_kernel(sona_lora_weights w, uint32_t n, const int32_t *ids, const float *x,
                              float *y)
{
    __shared__ int rows_s[ID_CHUNK];
    __shared__ int count_s;
    __shared__ float part[GROUP][R][WARPS];
    __shared__ float t[GROUP][R];
    const size_t H = w.hidden, units = VEC ? H / 4 : H;
    const int r = (int)w.rank;
    const uint32_t a = blockIdx.x;
    const bool copier = a == w.num_adapters;
    for (size_t base = (size_t)blockIdx.y * ID_CHUNK; base < n; base += (size_t)gridDim.y * ID_CHUNK) {
        const int count = collect_rows(ids, n, base, a, w.num_adapters, rows_s, &count_s);
        if (copier) {
            for (int q = 0; q < count; q++)
                copy_units<VEC>(x + (size_t)rows_s[q] * H, y + (size_t)rows_s[q] * H, 0, units);
            __syncthreads();
            continue;
        }
        const size_t off = (size_t)a * w.rank * H;
        const float *__restrict__ A = w.A + off;
        const float *__restrict__ Bt = w.Bt + off;
        const float s = w.scale[a];
        for (int g0 = 0; g0 < count; g0 += GROUP) {
            const int gn = count - g0 < GROUP ? count - g0 : GROUP;
            const float *xg[GROUP];
            float *yg[GROUP];
            group_rows<GROUP>(x, H, rows_s, g0, gn, xg);
            group_rows<GROUP>(y, H, rows_s, g0, gn, yg);
            /* Shrink: acc[g][j] = <A_j, x_g>. All reads of x come before the barrier below. */
            float acc[GROUP][R];
            group_dots<R, GROUP, VEC>(A, H, 0, units, r, xg, gn, acc);
            group_warp_partials<R, GROUP>(acc, r, part);
            __syncthreads();
            if ((int)threadIdx.x < GROUP * r) {
                const int g = threadIdx.x / r, j = threadIdx.x % r;
                t[g][j] = s * warps_total(part[g][j]);
            }
            __syncthreads();
            /* Expand: y_g = x_g + Bt^T t_g, Bt read once per group. */
            group_expand<R, GROUP, VEC>(bt_global{Bt, H}, 0, units, r, t, xg, yg, gn);
            __syncthreads(); /* t and part are reused by the next group */
        }
        __syncthreads(); /* rows_s and count_s are reused by the next chunk */
    }
}

/* A row's rank-j partial dot summed over its slices: tp holds rows x slices x r partials (the
 * sliced pair's and the one-pass kernel's exchange), read from L2 (written by other blocks). */
__device__ __forceinline__ float slices_total(const float *tp, int row, uint32_t slices, int r, int j)
{
    const float *p = tp + (size_t)row * slices * r + j;
    float sum = 0.0f;
    for (uint32_t q = 0; q < slices; q++)
        sum += __ldcg(p + (size_t)q * r);
    return sum;
}

/* The sliced pair: the grouped scheme split along hidden so that every SM has blocks even when
 * there are few adapters or rows. Block (a, slice, chunk) takes the rows with id a among the
 * chunk-th ID_CHUNK ids and one slice of SONA_CUDA_BLOCK units (float4 with VEC) of hidden, one
 * unit per thread. The shrink kernel writes each row's partial dots per slice to tp (n x slices
 * x rank, unscaled); the expand kernel sums them and writes its slice of y, reading its Bt slice
 * once per group of rows. The kernel boundary orders every read of x before any write of y, so
 * in place is safe. Rows without an adapter are copied by the blocks with a == num_adapters. */
template <int R, bool VEC>
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    lora_shrink_sliced_kernel(sona_lora_weights w, uint32_t n, const int32_t *ids, const float *x,
                              float *tp)
{
    __shared__ int rows_s[ID_CHUNK];
    __shared__ int count_s;
    __shared__ float part[GROUP][R][WARPS];
    const uint32_t a = blockIdx.x, slice = blockIdx.y, slices = gridDim.y;
    pdl_release_dependents();
    if (a >= w.num_adapters) /* the copier has nothing to shrink (uniform per block) */
        return;
    const int count =
        collect_rows(ids, n, (size_t)blockIdx.z * ID_CHUNK, a, w.num_adapters, rows_s, &count_s);
    if (!count)
        return;
    const size_t H = w.hidden, units = VEC ? H / 4 : H;
    const size_t u0 = (size_t)slice * blockDim.x; /* the slice: one unit per thread */
    const size_t u1 = u0 + blockDim.x < units ? u0 + blockDim.x : units;
    const int r = (int)w.rank;
    const float *__restrict__ A = w.A + (size_t)a * w.rank * H;
    for (int g0 = 0; g0 < count; g0 += GROUP) {
        const int gn = count - g0 < GROUP ? count - g0 : GROUP;
        const float *xg[GROUP];
        group_rows<GROUP>(x, H, rows_s, g0, gn, xg);
        float acc[GROUP][R];
        group_dots<R, GROUP, VEC>(A, H, u0, u1, r, xg, gn, acc);
        group_warp_partials<R, GROUP>(acc, r, part);
        __syncthreads();
        if ((int)threadIdx.x < gn * r) {
            const int g = threadIdx.x / r, j = threadIdx.x % r;
            tp[((size_t)rows_s[g0 + g] * slices + slice) * r + j] = warps_total(part[g][j]);
        }
        __syncthreads(); /* part is reused by the next group */
    }
}

template <int R, bool VEC>
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    lora_expand_sliced_kernel(sona_lora_weights w, uint32_t n, const int32_t *ids, const float *x,
                              const float *tp, float *y)
{
    __shared__ int rows_s[ID_CHUNK];
    __shared__ int count_s;
    __shared__ float t[GROUP][R];
    const uint32_t a = blockIdx.x, slice = blockIdx.y, slices = gridDim.y;
    const int count =
        collect_rows(ids, n, (size_t)blockIdx.z * ID_CHUNK, a, w.num_adapters, rows_s, &count_s);
    if (!count)
        return;
    pdl_wait_for_primary(); /* tp complete, every read of x by the shrink done */
    const size_t H = w.hidden, units = VEC ? H / 4 : H;
    const size_t u0 = (size_t)slice * blockDim.x; /* the slice: one unit per thread */
    const size_t u1 = u0 + blockDim.x < units ? u0 + blockDim.x : units;
    if (a == w.num_adapters) { /* the copier: rows without an adapter */
        for (int q = 0; q < count; q++)
            copy_units<VEC>(x + (size_t)rows_s[q] * H, y + (size_t)rows_s[q] * H, u0, u1);
        return;
    }
    const int r = (int)w.rank;
    const float *__restrict__ Bt = w.Bt + (size_t)a * w.rank * H;
    const float s = w.scale[a];
    for (int g0 = 0; g0 < count; g0 += GROUP) {
        const int gn = count - g0 < GROUP ? count - g0 : GROUP;
        if ((int)threadIdx.x < gn * r) {
            const int g = threadIdx.x / r, j = threadIdx.x % r;
            t[g][j] = s * slices_total(tp, rows_s[g0 + g], slices, r, j);
        }
        __syncthreads();
        const float *xg[GROUP];
        float *yg[GROUP];
        group_rows<GROUP>(x, H, rows_s, g0, gn, xg);
        group_rows<GROUP>(y, H, rows_s, g0, gn, yg);
        group_expand<R, GROUP, VEC>(bt_global{Bt, H}, u0, u1, r, t, xg, yg, gn);
        __syncthreads(); /* t is reused by the next group */
    }
}

/* ---- the one-pass kernel (cooperative launch) ---------------------------------------------
 * One launch: block (s, p) takes slice s of hidden, one float4 unit per thread, for adapters
 * p, p + P, p + 2P, ... in that order. For each adapter with rows in the batch it starts the copy
 * of its Bt slice into shared memory (cp.async), loads its A slice into registers (read once
 * however many rows), computes the partial dots of the rows G at a time (G = 1 when the batch
 * has about one row per adapter, else 2) and writes them to tp, meets the other blocks of the adapter at a barrier on global counters, then expands its
 * slice of each row from the shared Bt. The launch is cooperative, so every block is resident and
 * the barrier cannot deadlock; when the grid would not fit, P shrinks and a block takes several
 * adapters in the same order as its peers (the barrier is per p).
 *
 * Why this shape (H200, session 3, 256 rows x 4096, rank 16, 64 adapters of 4 rows, 42 MB moved,
 * 10.1 us at copy speed): the sliced pair took 27.7 us, a cluster kernel with the exchange in
 * distributed shared memory 38 us, a lab copy of this kernel 14.8 us. What decided it:
 * registers. At one unit per thread the whole problem fills the register file, so accumulators
 * for 4 rows x rank 16 left no room for loads in flight (G = 4: 30 us); A in registers shared by
 * groups of 2 rows, partial dots 8 ranks at a time, and Bt arriving in shared memory without
 * holding registers keep the memory system busy through the shrink.
 * Rows with no adapter are copied by the blocks with p == row % P. */
constexpr int COOP_IDS = 1024;             /* ids a block scans into shared memory at a time */
constexpr uint32_t COOP_MAX_SLOTS = 8192;  /* barrier slots: more than any resident grid has */

/* Barrier state, one pair per slot p: zero at module load, arrive back at zero after every
 * barrier, gen counting barriers. Launches are serialised on the backend's one stream. */
__device__ unsigned g_coop_arrive[COOP_MAX_SLOTS];
__device__ unsigned g_coop_gen[COOP_MAX_SLOTS];

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
#else /* no async copies before sm_80: a plain copy (each thread reads back only its own) */
    *static_cast<float4 *>(smem) = *static_cast<const float4 *>(gmem);
#endif
}

__device__ __forceinline__ void cp_async_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

__device__ __forceinline__ void cp_async_wait_all()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned *p)
{
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void st_release(unsigned *p, unsigned v)
{
    asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ unsigned atom_add_acq_rel(unsigned *p, unsigned v)
{
    unsigned old;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
    return old;
}

/* Waits until the gridDim.x blocks of slot p have all arrived (sense reversal: the last one
 * resets the count and moves gen on). The block's earlier global writes are visible to the
 * others after it, through thread 0's release and acquire and the block barriers. */
__device__ __forceinline__ void coop_barrier(uint32_t p)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned *arrive = &g_coop_arrive[p], *gen = &g_coop_gen[p];
        const unsigned epoch = ld_acquire(gen);
        if (atom_add_acq_rel(arrive, 1u) == gridDim.x - 1) {
            *arrive = 0;
            st_release(gen, epoch + 1);
        } else {
            while (ld_acquire(gen) == epoch) {
            }
        }
    }
    __syncthreads();
}

/* Sum over the warp of V values per lane, scattered (a butterfly that halves the values at each
 * step: 31 shuffles for V = 32 instead of 5 V): for V >= 32 lane L ends with the totals of values
 * L V/32 + k in v[k], k < V/32; for V < 32 v[0] holds the total of value L / (32 / V). */
template <int V>
__device__ __forceinline__ void warp_reduce_scatter(float (&v)[V])
{
    const int lane = threadIdx.x & 31;
    int n = V;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        if (n > 1) {
            const bool upper = lane & o;
            const int half = n / 2;
#pragma unroll
            for (int i = 0; i < V / 2; i++) {
                if (i < half) {
                    const float send = upper ? v[i] : v[i + half];
                    const float keep = upper ? v[i + half] : v[i];
                    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
                }
            }
            n = half;
        } else {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
        }
    }
}

/* The rows among ids [base, base + COOP_IDS) with adapter a, in rising order (the same in every
 * block), into rows_s; returns how many (the same for every thread). ids NULL: adapter 0.
 * *no_adapter becomes 1 (in every thread) when one of those rows has no adapter. */
__device__ __forceinline__ int coop_collect(const int32_t *ids, uint32_t n, uint32_t num_adapters,
                                            size_t base, uint32_t a, int *rows_s, int *warp_counts,
                                            int *no_adapter)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t end = base + COOP_IDS < n ? base + COOP_IDS : n;
    int total = 0;
    for (size_t b = base; b < end; b += blockDim.x) {
        const size_t i = b + threadIdx.x;
        const int32_t id = i < end && ids ? ids[i] : 0;
        const bool take = i < end && id == (int32_t)a;
        const unsigned m = __ballot_sync(0xffffffffu, take);
        if (lane == 0)
            warp_counts[warp] = __popc(m);
        if (__syncthreads_or(i < end && (id < 0 || (uint32_t)id >= num_adapters)))
            *no_adapter = 1;
        int at = total, sum = 0;
        for (int q = 0; q < WARPS; q++) {
            const int c = warp_counts[q];
            at += q < warp ? c : 0;
            sum += c;
        }
        if (take)
            rows_s[at + __popc(m & ((1u << lane) - 1u))] = (int)i;
        total += sum;
        __syncthreads();
    }
    return total;
}

/* Grid (S slices, P slots), SONA_CUDA_BLOCK threads, R * SONA_CUDA_BLOCK float4 of dynamic
 * shared memory; tp holds n x S x rank floats. Needs hidden % 4 == 0 and 16-byte alignment.
 * ONE_CHUNK: n <= COOP_IDS, the rows of the shrink still in rows_s for the expand (its own
 * instantiation: the loops over chunks cost the shrink registers, ptxas 144 bytes of spills
 * against 64 at rank 16). */
template <int R, int G, bool ONE_CHUNK>
__global__ void __launch_bounds__(SONA_CUDA_BLOCK, 2)
    lora_apply_coop_kernel(sona_lora_weights w, uint32_t n, const int32_t *ids, const float *x,
                           float *y, float *tp)
{
    constexpr int V = G * R, RJ = R < 8 ? R : 8, VJ = G * RJ; /* partial dots a thread holds */
    extern __shared__ float4 bt_s[]; /* R x SONA_CUDA_BLOCK: this block's slice of Bt */
    __shared__ int rows_s[COOP_IDS];
    __shared__ int warp_counts[WARPS];
    __shared__ float part[WARPS][V];
    __shared__ float t[G][R];
    const uint32_t S = gridDim.x, s = blockIdx.x, P = gridDim.y, p = blockIdx.y;
    const size_t H = w.hidden, units = H / 4, u0 = (size_t)s * blockDim.x;
    const size_t u1 = u0 + blockDim.x < units ? u0 + blockDim.x : units, u = u0 + threadIdx.x;
    const bool mine = u < units; /* this thread's unit of the slice [u0, u1) */
    const int r = (int)w.rank, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const size_t chunks_end = ONE_CHUNK ? 1 : n; /* the bases of the chunks of ids */
    int no_adapter = 0; /* some row has no adapter (every id is scanned for the first adapter) */
    for (uint32_t a = p; a < w.num_adapters; a += P) {
        const size_t off = (size_t)a * w.rank * H;
        const float *__restrict__ A = w.A + off;
        const float *__restrict__ Bt = w.Bt + off;
        bool loaded = false; /* the same in every block of the slot: the rows decide it */
        int first_count = 0; /* rows in the first chunk, still in rows_s when it is the only one */
        /* Shrink: partial dots of every row of the adapter over this slice, into tp. */
        for (size_t base = 0; base < chunks_end; base += COOP_IDS) {
            const int count = coop_collect(ids, n, w.num_adapters, base, a, rows_s, warp_counts, &no_adapter);
            if (base == 0)
                first_count = count;
            if (!count)
                continue;
            if (!loaded && mine) /* Bt's slice arrives in shared memory during the shrink */
#pragma unroll
                for (int j = 0; j < R; j++)
                    if (j < r)
                        cp_async16(&bt_s[j * blockDim.x + threadIdx.x],
                                   reinterpret_cast<const float4 *>(Bt + (size_t)j * H) + u);
            cp_async_commit();
            loaded = true;
            /* A's slice in registers for every group of the chunk (again per chunk, from L2:
             * kept across chunks it spills). */
            float4 am[R];
#pragma unroll
            for (int j = 0; j < R; j++)
                am[j] = mine && j < r ? __ldg(reinterpret_cast<const float4 *>(A + (size_t)j * H) + u)
                                      : make_float4(0.f, 0.f, 0.f, 0.f);
            for (int g0 = 0; g0 < count; g0 += G) {
                const int gn = count - g0 < G ? count - g0 : G;
                float4 xv[G];
#pragma unroll
                for (int g = 0; g < G; g++)
                    xv[g] = mine && g < gn ? reinterpret_cast<const float4 *>(x + (size_t)rows_s[g0 + g] * H)[u]
                                           : make_float4(0.f, 0.f, 0.f, 0.f);
                /* RJ ranks at a time: all R at once, with A's registers, spills (ptxas). */
#pragma unroll
                for (int j0 = 0; j0 < R; j0 += RJ) {
                    float acc[VJ];
#pragma unroll
                    for (int g = 0; g < G; g++)
#pragma unroll
                        for (int jj = 0; jj < RJ; jj++)
                            acc[g * RJ + jj] = am[j0 + jj].x * xv[g].x + am[j0 + jj].y * xv[g].y +
                                               am[j0 + jj].z * xv[g].z + am[j0 + jj].w * xv[g].w;
                    warp_reduce_scatter<VJ>(acc);
                    /* This lane's totals (see warp_reduce_scatter), value k = g RJ + jj. */
                    if (VJ >= 32) {
#pragma unroll
                        for (int kk = 0; kk < (VJ >= 32 ? VJ / 32 : 1); kk++) {
                            const int k = lane * (VJ >= 32 ? VJ / 32 : 1) + kk;
                            part[warp][k / RJ * R + j0 + k % RJ] = acc[kk];
                        }
                    } else if (lane % (32 / (VJ < 32 ? VJ : 32)) == 0) {
                        const int k = lane / (32 / (VJ < 32 ? VJ : 32));
                        part[warp][k / RJ * R + j0 + k % RJ] = acc[0];
                    }
                }
                __syncthreads();
                if ((int)threadIdx.x < gn * R && (int)threadIdx.x % R < r) {
                    const int g = threadIdx.x / R, j = threadIdx.x % R;
                    float sum = 0.0f;
                    for (int q = 0; q < WARPS; q++)
                        sum += part[q][threadIdx.x];
                    __stcg(tp + ((size_t)rows_s[g0 + g] * S + s) * r + j, sum);
                }
                __syncthreads(); /* part is reused by the next group */
            }
        }
        if (!loaded) /* no rows for this adapter: every block of the slot skips it */
            continue;
        coop_barrier(p); /* every read of these rows' x done, every partial in tp */
        cp_async_wait_all();
        const float sc = w.scale[a];
        /* Expand: y = x + s Bt^T t for every row of the adapter, this slice. */
        for (size_t base = 0; base < chunks_end; base += COOP_IDS) {
            const int count = ONE_CHUNK ? first_count
                                        : coop_collect(ids, n, w.num_adapters, base, a, rows_s, warp_counts, &no_adapter);
            for (int g0 = 0; g0 < count; g0 += G) {
                const int gn = count - g0 < G ? count - g0 : G;
                if ((int)threadIdx.x < gn * R) {
                    const int g = threadIdx.x / R, j = threadIdx.x % R;
                    t[g][j] = j < r ? sc * slices_total(tp, rows_s[g0 + g], S, r, j) : 0.0f;
                }
                __syncthreads();
                const float *xg[G];
                float *yg[G];
                group_rows<G>(x, H, rows_s, g0, gn, xg);
                group_rows<G>(y, H, rows_s, g0, gn, yg);
                group_expand<R, G, true>(bt_shared_slice{bt_s, u0}, u0, u1, r, t, xg, yg, gn);
                __syncthreads(); /* t is reused by the next group */
            }
        }
    }
    /* Rows without an adapter: y = x, this slice of the rows with row % P == p. */
    if (no_adapter && x != y)
        for (size_t i = p; i < n; i += P) {
            const int32_t id = ids[i];
            if (id < 0 || (uint32_t)id >= w.num_adapters)
                copy_units<true>(x + i * H, y + i * H, u0, u1);
        }
}

/* u[i] = wt[i] s A x_i, v[i] = wt[i] s Bt d_i (rank values each), zero for rows without an
 * adapter. */
template <int R, bool VEC>
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    lora_grad_project_kernel(sona_lora_weights w, const int32_t *ids, const float *x,
                             const float *d, const float *wt, float *u, float *v)
{
    __shared__ float tu[R], tv[R];
    const size_t H = w.hidden;
    const int r = (int)w.rank;
    const size_t i = blockIdx.x;
    const int32_t id = ids ? ids[i] : 0;
    if (id < 0 || (uint32_t)id >= w.num_adapters) {
        if ((int)threadIdx.x < r) {
            u[i * r + threadIdx.x] = 0.0f;
            v[i * r + threadIdx.x] = 0.0f;
        }
        return;
    }
    const size_t off = (size_t)id * w.rank * H;
    const float c = wt[i] * w.scale[id];
    block_row_dots<R, VEC>(w.A + off, x + i * H, H, r, c, tu);
    block_row_dots<R, VEC>(w.Bt + off, d + i * H, H, r, c, tv);
    if ((int)threadIdx.x < r) {
        u[i * r + threadIdx.x] = tu[threadIdx.x];
        v[i * r + threadIdx.x] = tv[threadIdx.x];
    }
}

/* ---- grouping rows by adapter (counting sort on the device) ---------------------------- */

__global__ void count_rows_kernel(const int32_t *ids, uint32_t n, uint32_t adapters,
                                  uint32_t *counts)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const int32_t id = ids ? ids[i] : 0;
        if (id >= 0 && (uint32_t)id < adapters)
            atomicAdd(&counts[id], 1u);
    }
}

/* One block: start[a] = sum of counts[0..a), start[adapters] = total; cursor = start. Each
 * thread scans a contiguous slice; thread 0 scans the slice totals. */
__global__ void scan_counts_kernel(const uint32_t *counts, uint32_t adapters, uint32_t *start,
                                   uint32_t *cursor)
{
    __shared__ uint32_t slice_base[SONA_CUDA_BLOCK];
    const uint32_t per = (adapters + blockDim.x - 1) / blockDim.x;
    const uint32_t lo = threadIdx.x * per;
    const uint32_t hi = min(adapters, lo + per);
    uint32_t total = 0;
    for (uint32_t a = lo; a < hi; a++)
        total += counts[a];
    slice_base[threadIdx.x] = total;
    __syncthreads();
    if (threadIdx.x == 0) {
        uint32_t run = 0;
        for (uint32_t t = 0; t < blockDim.x; t++) {
            const uint32_t c = slice_base[t];
            slice_base[t] = run;
            run += c;
        }
        start[adapters] = run;
    }
    __syncthreads();
    uint32_t run = slice_base[threadIdx.x];
    for (uint32_t a = lo; a < hi; a++) {
        start[a] = run;
        cursor[a] = run;
        run += counts[a];
    }
}

__global__ void scatter_rows_kernel(const int32_t *ids, uint32_t n, uint32_t adapters,
                                    uint32_t *cursor, uint32_t *order)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const int32_t id = ids ? ids[i] : 0;
        if (id >= 0 && (uint32_t)id < adapters)
            order[atomicAdd(&cursor[id], 1u)] = (uint32_t)i;
    }
}

/* Block (h chunk, j, adapter): gA[a][j][h] += sum over the adapter's rows of v[i][j] x[i][h]
 * and gBt[a][j][h] += u[i][j] d[i][h]. Each element has one owner thread: no atomics. */
__global__ void __launch_bounds__(SONA_CUDA_BLOCK)
    lora_grad_accumulate_kernel(sona_lora_grad_args a, const uint32_t *start,
                                const uint32_t *order, const float *u, const float *v)
{
    const size_t H = a.w.hidden;
    const uint32_t r = a.w.rank;
    const size_t h = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    const uint32_t j = blockIdx.y;
    if (h >= H)
        return;
    for (uint32_t ad = blockIdx.z; ad < a.w.num_adapters; ad += gridDim.z) {
        const uint32_t p0 = start[ad], p1 = start[ad + 1];
        if (p0 == p1)
            continue;
        float ga = 0.0f, gb = 0.0f;
        for (uint32_t p = p0; p < p1; p++) {
            const size_t i = order[p];
            ga += v[i * r + j] * a.x[i * H + h];
            gb += u[i * r + j] * a.d[i * H + h];
        }
        const size_t o = ((size_t)ad * r + j) * H + h;
        a.gA[o] += ga;
        a.gBt[o] += gb;
    }
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* Calls f.template operator()<R, VEC>() for the bucket that holds rank r. */
template <typename F>
cudaError_t with_rank_bucket(uint32_t r, bool vec, F f)
{
#define SONA_BUCKET(R)                                                                        \
    if (r <= R)                                                                               \
        return vec ? f.template operator()<R, true>() : f.template operator()<R, false>();
    SONA_BUCKET(1)
    SONA_BUCKET(2)
    SONA_BUCKET(4)
    SONA_BUCKET(8)
    SONA_BUCKET(16)
    SONA_BUCKET(32)
    SONA_BUCKET(64)
#undef SONA_BUCKET
    return cudaErrorInvalidValue;
}

struct apply_launch {
    const sona_lora_apply_args *a;
    cudaStream_t s;
    template <int R, bool VEC>
    cudaError_t operator()() const
    {
        lora_apply_kernel<R, VEC><<<a->n, SONA_CUDA_BLOCK, 0, s>>>(a->w, a->ids, a->x, a->y);
        return cudaGetLastError();
    }
};

struct apply_grouped_launch {
    const sona_lora_apply_args *a;
    cudaStream_t s;
    template <int R, bool VEC>
    cudaError_t operator()() const
    {
        if (R > 16) /* not instantiated past 16: too many accumulators */
            return cudaErrorInvalidValue;
        constexpr int RG = R > 16 ? 16 : R;
        /* Enough id chunks per adapter to give every SM a couple of blocks. */
        const uint32_t chunks = (a->n + ID_CHUNK - 1) / ID_CHUNK;
        uint32_t parts = (264 + a->w.num_adapters) / (a->w.num_adapters + 1);
        if (parts > chunks)
            parts = chunks;
        if (parts < 1)
            parts = 1;
        if (parts > 65535)
            parts = 65535;
        const dim3 grid(a->w.num_adapters + 1, parts);
        lora_apply_grouped_kernel<RG, VEC><<<grid, SONA_CUDA_BLOCK, 0, s>>>(a->w, a->n, a->ids, a->x, a->y);
        return cudaGetLastError();
    }
};

/* An attribute of the current device, read once into *cache (-1 until then; 0 when it cannot be
 * read). The module drives one device, and launches run under the backend's lock. */
int device_attribute(cudaDeviceAttr attr, int *cache)
{
    if (*cache < 0) {
        int dev = 0, v = 0;
        if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, attr, dev) != cudaSuccess)
            v = 0;
        *cache = v;
    }
    return *cache;
}

int device_sm_major()
{
    static int major = -1;
    return device_attribute(cudaDevAttrComputeCapabilityMajor, &major);
}

int device_sm_count()
{
    static int count = -1;
    return device_attribute(cudaDevAttrMultiProcessorCount, &count);
}

/* Grid of the sliced pair: (num_adapters + 1, slices, id chunks); x = 0 when the sliced pair
 * does not take this shape. */
dim3 sliced_grid(const sona_lora_apply_args *a, bool vec)
{
    const uint64_t units = vec ? a->w.hidden / 4 : a->w.hidden;
    const uint64_t slices = (units + SONA_CUDA_BLOCK - 1) / SONA_CUDA_BLOCK;
    const uint64_t chunks = ((uint64_t)a->n + ID_CHUNK - 1) / ID_CHUNK;
    const uint64_t adapters = (uint64_t)a->w.num_adapters + 1;
    /* Every block scans its id chunk: keep the grid (and that scan) bounded. */
    if (!a->ids || a->w.rank > 16 || slices > 65535 || chunks > 65535 ||
        adapters * slices * chunks > ((uint64_t)1 << 20))
        return dim3(0, 0, 0);
    return dim3((unsigned)adapters, (unsigned)slices, (unsigned)chunks);
}

struct apply_sliced_launch {
    const sona_lora_apply_args *a;
    float *tp;
    cudaStream_t s;
    template <int R, bool VEC>
    cudaError_t operator()() const
    {
        if (R > 16) /* not instantiated past 16: too many accumulators */
            return cudaErrorInvalidValue;
        constexpr int RG = R > 16 ? 16 : R;
        const dim3 grid = sliced_grid(a, VEC);
        if (!grid.x)
            return cudaErrorInvalidValue;
        lora_shrink_sliced_kernel<RG, VEC><<<grid, SONA_CUDA_BLOCK, 0, s>>>(a->w, a->n, a->ids, a->x, tp);
        const cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return e;
        cudaLaunchAttribute early[1];
        early[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        early[0].val.programmaticStreamSerializationAllowed = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid;
        cfg.blockDim = dim3(SONA_CUDA_BLOCK);
        cfg.stream = s;
        cfg.attrs = early;
        cfg.numAttrs = device_sm_major() >= 9 ? 1 : 0;
        return cudaLaunchKernelEx(&cfg, lora_expand_sliced_kernel<RG, VEC>, a->w, a->n, a->ids,
                                  a->x, static_cast<const float *>(tp), a->y);
    }
};

/* The one-pass kernel's launch for rank bucket R and G rows a group: its grid (x = 0 when it
 * does not take the shape: ranks past 16, no float4 layout, no cooperative launch here, or more
 * slices than fit), set up once per instantiation. */
template <int R, int G, bool ONE_CHUNK>
struct coop_kernel_info {
    static int blocks_per_sm; /* -1: not set up yet, 0: unusable */
    static size_t smem() { return (size_t)R * SONA_CUDA_BLOCK * sizeof(float4); }
    static int resident()
    {
        if (blocks_per_sm < 0) {
            static int cooperative = -1;
            int b = 0;
            if (!device_attribute(cudaDevAttrCooperativeLaunch, &cooperative) ||
                cudaFuncSetAttribute(lora_apply_coop_kernel<R, G, ONE_CHUNK>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem()) != cudaSuccess ||
                cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, lora_apply_coop_kernel<R, G, ONE_CHUNK>,
                                                              SONA_CUDA_BLOCK, smem()) != cudaSuccess)
                b = 0;
            (void)cudaGetLastError(); /* an unusable kernel is not an error of the next call */
            blocks_per_sm = b;
        }
        return blocks_per_sm * device_sm_count();
    }
};
template <int R, int G, bool ONE_CHUNK>
int coop_kernel_info<R, G, ONE_CHUNK>::blocks_per_sm = -1;

/* The instantiation for a batch: G rows a group (one when the batch has about one row per
 * adapter, else two), one chunk of ids or several (then always G = 2). */
enum coop_variant { COOP_G1, COOP_G2, COOP_G2_CHUNKS };

coop_variant coop_variant_of(const sona_lora_apply_args *a)
{
    if (a->n > (uint32_t)COOP_IDS)
        return COOP_G2_CHUNKS;
    return a->n <= a->w.num_adapters ? COOP_G1 : COOP_G2;
}

/* Calls f.template variant<R, G, ONE_CHUNK>() for the one-pass instantiation that takes a: its
 * rank bucket and the batch's coop_variant. cudaErrorInvalidValue for shapes it does not take
 * (ranks past 16, no float4 layout). */
template <typename F>
struct coop_dispatch {
    const sona_lora_apply_args *a;
    F f;
    template <int R, bool VEC>
    cudaError_t operator()() const
    {
        if constexpr (!VEC || R > 16) {
            return cudaErrorInvalidValue;
        } else {
            switch (coop_variant_of(a)) {
            case COOP_G1:
                return f.template variant<R, 1, true>();
            case COOP_G2:
                return f.template variant<R, 2, true>();
            default:
                return f.template variant<R, 2, false>();
            }
        }
    }
};

template <typename F>
cudaError_t with_coop_variant(const sona_lora_apply_args *a, bool vec, F f)
{
    if (a->w.rank > 16)
        return cudaErrorInvalidValue;
    return with_rank_bucket(a->w.rank, vec, coop_dispatch<F>{a, f});
}

/* The grid of a one-pass instantiation for a: (S slices, P slots), P capped at what is resident. */
struct coop_grid_of {
    const sona_lora_apply_args *a;
    dim3 *grid;
    template <int R, int G, bool ONE_CHUNK>
    cudaError_t variant() const
    {
        const uint64_t S = (a->w.hidden / 4 + SONA_CUDA_BLOCK - 1) / SONA_CUDA_BLOCK;
        const uint64_t resident = (uint64_t)coop_kernel_info<R, G, ONE_CHUNK>::resident();
        uint64_t P = a->w.num_adapters;
        if (S * P > resident)
            P = resident / S;
        if (P > COOP_MAX_SLOTS)
            P = COOP_MAX_SLOTS;
        if (S && P && S <= 65535)
            *grid = dim3((unsigned)S, (unsigned)P);
        return cudaSuccess;
    }
};

/* The one-pass kernel's grid for a (x = 0: it does not take this shape). */
dim3 coop_grid(const sona_lora_apply_args *a, bool vec)
{
    dim3 grid(0, 0, 0);
    (void)with_coop_variant(a, vec, coop_grid_of{a, &grid});
    return grid;
}

struct apply_coop_launch {
    const sona_lora_apply_args *a;
    dim3 grid;
    float *tp;
    cudaStream_t s;
    template <int R, int G, bool ONE_CHUNK>
    cudaError_t variant() const
    {
        cudaLaunchAttribute coop[1];
        coop[0].id = cudaLaunchAttributeCooperative;
        coop[0].val.cooperative = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid;
        cfg.blockDim = dim3(SONA_CUDA_BLOCK);
        cfg.dynamicSmemBytes = coop_kernel_info<R, G, ONE_CHUNK>::smem();
        cfg.stream = s;
        cfg.attrs = coop;
        cfg.numAttrs = 1;
        return cudaLaunchKernelEx(&cfg, lora_apply_coop_kernel<R, G, ONE_CHUNK>, a->w, a->n, a->ids, a->x,
                                  a->y, tp);
    }
};

struct project_launch {
    const sona_lora_grad_args *a;
    float *u, *v;
    cudaStream_t s;
    template <int R, bool VEC>
    cudaError_t operator()() const
    {
        lora_grad_project_kernel<R, VEC>
            <<<a->n, SONA_CUDA_BLOCK, 0, s>>>(a->w, a->ids, a->x, a->d, a->wt, u, v);
        return cudaGetLastError();
    }
};

bool lora_vec(const sona_lora_apply_args *a)
{
    return a->w.hidden % 4 == 0 && aligned16(a->x) && aligned16(a->y) && aligned16(a->w.A) &&
           aligned16(a->w.Bt);
}

/* The kernel that runs for a in mode (see cuda_internal.h), a forced kernel that does not take
 * the shape replaced. Auto, from measurements on an H200 (hidden 4096, 64 adapters):
 * - adapters of at most 8192 values (rank <= 2 at 4096) in batches up to 256 rows: one block per
 *   row, a launch with little to wait on (n = 256, r = 2: 5.8 us; one-pass 10.2, sliced 8.4);
 * - else the one-pass kernel wherever it takes the shape (ranks <= 16 in float4 layout): 256 rows,
 *   rank 16: 14.8 us against 27.7 for the sliced pair; 4096 rows 143 us against 245; decode
 *   n = 1, rank 16: 7.8 us against 13.6 for one block per row;
 * - past it the sliced pair, except decode batches of at most one row per SM with adapters up to
 *   16 x 4096, where one block per row has the lower latency. */
int resolve_mode(const sona_lora_apply_args *a, int mode, bool vec)
{
    if (mode < 0 && a->n <= 256 && (uint64_t)a->w.rank * a->w.hidden <= 8192)
        return 0;
    if ((mode == 3 || mode < 0) && coop_grid(a, vec).x)
        return 3;
    if (mode == 3)
        mode = -1;
    if (mode < 0) {
        const bool decode = a->n <= (uint32_t)(device_sm_count() > 0 ? device_sm_count() : 64) &&
                            (uint64_t)a->w.rank * a->w.hidden <= 65536;
        mode = !decode ? 2 : 0;
    }
    if (mode == 2 && !sliced_grid(a, vec).x)
        mode = 0;
    if (mode == 1 && !(a->ids && a->w.rank <= 16 && a->w.num_adapters < INT32_MAX))
        mode = 0;
    return mode;
}

} // namespace

size_t sona_cuda_lora_apply_scratch(const sona_lora_apply_args *a, int mode)
{
    const bool vec = lora_vec(a);
    switch (resolve_mode(a, mode, vec)) {
    case 3:
        return (size_t)a->n * coop_grid(a, vec).x * a->w.rank;
    case 2:
        return (size_t)a->n * sliced_grid(a, vec).y * a->w.rank;
    default:
        return 0;
    }
}

cudaError_t sona_cuda_launch_lora_apply(const sona_lora_apply_args *a, int mode, float *scratch,
                                        cudaStream_t s)
{
    const bool vec = lora_vec(a);
    mode = resolve_mode(a, mode, vec);
    if (!scratch && (mode == 3 || mode == 2)) /* no partial-sum buffer: the per-row kernel */
        mode = 0;
    if (mode == 3)
        return with_coop_variant(a, vec, apply_coop_launch{a, coop_grid(a, vec), scratch, s});
    if (mode == 2)
        return with_rank_bucket(a->w.rank, vec, apply_sliced_launch{a, scratch, s});
    if (mode == 1)
        return with_rank_bucket(a->w.rank, vec, apply_grouped_launch{a, s});
    return with_rank_bucket(a->w.rank, vec, apply_launch{a, s});
}

cudaError_t sona_cuda_launch_lora_grad_project(const sona_lora_grad_args *a, float *u, float *v,
                                               cudaStream_t s)
{
    const bool vec = a->w.hidden % 4 == 0 && aligned16(a->x) && aligned16(a->d) &&
                     aligned16(a->w.A) && aligned16(a->w.Bt);
    return with_rank_bucket(a->w.rank, vec, project_launch{a, u, v, s});
}

/* scratch: counts[adapters], start[adapters + 1], cursor[adapters], order[n] (uint32 each),
 * counts zeroed here. */
cudaError_t sona_cuda_launch_lora_grad_accumulate(const sona_lora_grad_args *a, const float *u,
                                                  const float *v, uint32_t *scratch,
                                                  cudaStream_t s)
{
    const uint32_t A = a->w.num_adapters, n = a->n;
    uint32_t *counts = scratch, *start = counts + A, *cursor = start + A + 1, *order = cursor + A;
    cudaError_t e = cudaMemsetAsync(counts, 0, (size_t)A * sizeof *counts, s);
    if (e != cudaSuccess)
        return e;
    const unsigned rb = sona_cuda_blocks(n, SONA_CUDA_BLOCK);
    count_rows_kernel<<<rb, SONA_CUDA_BLOCK, 0, s>>>(a->ids, n, A, counts);
    if ((e = cudaGetLastError()) != cudaSuccess)
        return e;
    scan_counts_kernel<<<1, SONA_CUDA_BLOCK, 0, s>>>(counts, A, start, cursor);
    if ((e = cudaGetLastError()) != cudaSuccess)
        return e;
    scatter_rows_kernel<<<rb, SONA_CUDA_BLOCK, 0, s>>>(a->ids, n, A, cursor, order);
    if ((e = cudaGetLastError()) != cudaSuccess)
        return e;
    const dim3 grid((unsigned)((a->w.hidden + SONA_CUDA_BLOCK - 1) / SONA_CUDA_BLOCK), a->w.rank,
                    A < 65535u ? A : 65535u);
    lora_grad_accumulate_kernel<<<grid, SONA_CUDA_BLOCK, 0, s>>>(*a, start, order, u, v);
    return cudaGetLastError();
}
