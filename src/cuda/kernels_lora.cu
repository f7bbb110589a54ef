/* LoRA kernels: batched multi-adapter apply (BGMV: one block per row, each row gathers its own
 * adapter) and gradients grouped by adapter.
 *
 * The rank is a template bucket (1, 2, 4, ..., 64) so per-rank accumulators stay in registers;
 * the real rank r <= bucket masks the unused ones. VEC paths use float4 loads when hidden is a
 * multiple of 4 and every row start is 16-byte aligned (checked by the host side). */
#include "cuda/cuda_internal.h"

#include <cooperative_groups.h>
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

/* y_g = x_g + Bt^T t_g for the rows g < gn of a group (t in shared memory, already scaled),
 * over the units of [u0, u1) this thread takes. A row's x unit is read before its y unit is
 * written, by the same thread, so y may be x. */
template <int R, int G, bool VEC>
__device__ __forceinline__ void group_expand(const float *__restrict__ Bt, size_t H, size_t u0,
                                             size_t u1, int r, const float (*t)[R],
                                             const float *const *xg, float *const *yg, int gn)
{
    for (size_t unit = u0 + threadIdx.x; unit < u1; unit += blockDim.x) {
        if (VEC) {
            float4 o[G];
#pragma unroll
            for (int g = 0; g < G; g++)
                o[g] = g < gn ? reinterpret_cast<const float4 *>(xg[g])[unit]
                              : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int j = 0; j < R; j++) {
                if (j < r) {
                    const float4 b =
                        __ldg(reinterpret_cast<const float4 *>(Bt + (size_t)j * H) + unit);
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
                    const float b = __ldg(Bt + (size_t)j * H + unit);
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
            group_expand<R, GROUP, VEC>(Bt, H, 0, units, r, t, xg, yg, gn);
            __syncthreads(); /* t and part are reused by the next group */
        }
        __syncthreads(); /* rows_s and count_s are reused by the next chunk */
    }
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
            const float *p = tp + (size_t)rows_s[g0 + g] * slices * r + j;
            float sum = 0.0f;
            for (uint32_t q = 0; q < slices; q++)
                sum += p[(size_t)q * r];
            t[g][j] = s * sum;
        }
        __syncthreads();
        const float *xg[GROUP];
        float *yg[GROUP];
        group_rows<GROUP>(x, H, rows_s, g0, gn, xg);
        group_rows<GROUP>(y, H, rows_s, g0, gn, yg);
        group_expand<R, GROUP, VEC>(Bt, H, u0, u1, r, t, xg, yg, gn);
        __syncthreads(); /* t is reused by the next group */
    }
}

/* ---- the fused kernel (thread-block clusters, sm_90 and later) -----------------------------
 * One launch, and each byte the op must move crosses DRAM once: x, y, and A and Bt of each
 * adapter in use (per chunk of FUSED_IDS ids). A cluster of CS blocks takes the rows of one
 * adapter in a chunk and splits hidden into CS slices, one per block. For each group of G rows
 * a block computes the partial dots A x over its slice, the blocks exchange them through
 * distributed shared memory (one cluster barrier a group), and each block expands its own slice
 * y = x + s Bt^T t. x is read from DRAM once (the expand's second read of the same units hits
 * L1/L2), and the block's Bt slice is prefetched into L2 before the shrink, so DRAM stays busy
 * through the reductions and the barrier instead of idling between a shrink and an expand
 * kernel (the sliced pair also reads x twice and goes through a global tp round trip).
 *
 * Bytes and occupancy, H200 (132 SMs, 4166 GB/s copy): 256 rows x 4096, rank 16, 64 adapters
 * of 4 rows: x 4 MiB + y 4 MiB + A 16 MiB + Bt 16 MiB = 42 MB, 10.1 us at copy speed, 14.4 us
 * at 70 %. CS = 1024 float4 units / 256 threads = 4: 64 working clusters = 256 blocks of 256
 * threads, two per SM in one wave (launch bounds: <= 128 registers). A thread keeps G x R = 64
 * accumulators and about R + G float4 loads in flight, ~64 KB per SM, enough for the ~32 GB/s
 * each SM must pull. Decode (few rows): CS grows to 8 so one row spreads over 8 SMs (n = 1, r
 * = 16: A and Bt are 256 KB each; the row kernel streams them through one SM), and the grid
 * has one cluster per row slot (by_row): a cluster whose row is not the first of its adapter
 * in the chunk leaves after the id scan, and a row without an adapter is copied by its own
 * cluster. Larger batches use one cluster per adapter (y) plus FUSED_COPIERS clusters that
 * share the rows without an adapter. Ranks 1-2 are x/y traffic (G = 4 rows a group); rank 32
 * takes G = 2 and rank 64 G = 1 (the slices of A and Bt are then re-read per group, from
 * L1/L2), keeping 64 accumulators. Every block of a cluster finds the same rows in the same
 * order (collect_rows_ordered), so the group slots of the exchange match. */
constexpr int FUSED_IDS = 4 * SONA_CUDA_BLOCK; /* ids a cluster scans: 4 per thread */
constexpr int FUSED_MAX_CLUSTER = 8;           /* the portable cluster size */
constexpr uint32_t FUSED_COPIERS = 8;          /* by adapter: clusters of rows without one */

template <int R>
struct fused_group {
    static constexpr int rows = R <= 16 ? 4 : R <= 32 ? 2 : 1;
};

/* Device code that uses clusters (the fused kernel's body and its helpers) is compiled for
 * sm_90 and later only; the host never launches the kernel elsewhere. */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define SONA_CUDA_CLUSTERS 1
#else
#define SONA_CUDA_CLUSTERS 0
#endif

#if SONA_CUDA_CLUSTERS
/* Like collect_rows for chunk `base` of FUSED_IDS ids, in rising row order (the same in every
 * block): the rows with id a, or for a >= num_adapters the rows without an adapter. ids NULL
 * means adapter 0 for every row. */
__device__ int collect_rows_ordered(const int32_t *ids, uint32_t n, size_t base, uint32_t a,
                                    uint32_t num_adapters, int *rows_s, int *warp_counts)
{
    constexpr int PER = FUSED_IDS / SONA_CUDA_BLOCK;
    const bool copier = a >= num_adapters;
    const size_t first = base + (size_t)threadIdx.x * PER;
    unsigned mine = 0; /* bit k: row first + k is taken */
#pragma unroll
    for (int k = 0; k < PER; k++) {
        const size_t i = first + k;
        if (i < n) {
            const int32_t id = ids ? ids[i] : 0;
            const bool valid = id >= 0 && (uint32_t)id < num_adapters;
            if (copier ? !valid : (valid && (uint32_t)id == a))
                mine |= 1u << k;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int own = __popc(mine);
    int incl = own; /* inclusive scan over the warp's lanes */
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o)
            incl += v;
    }
    if (lane == 31)
        warp_counts[warp] = incl;
    __syncthreads();
    int at = incl - own, total = 0;
    for (int q = 0; q < WARPS; q++) {
        const int c = warp_counts[q];
        at += q < warp ? c : 0;
        total += c;
    }
#pragma unroll
    for (int k = 0; k < PER; k++)
        if (mine >> k & 1u)
            rows_s[at++] = (int)(first + k);
    __syncthreads();
    return total;
}

/* Starts moving a line of global memory into L2 (no register, no wait). */
__device__ __forceinline__ void prefetch_l2(const void *p)
{
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}
#endif

/* Grid (CS, slots, chunks) in clusters of (CS, 1, 1). by_row: slot = a row of the chunk; else
 * slot = an adapter, or num_adapters + k for the k-th copier. */
template <int R, bool VEC>
__global__ void __launch_bounds__(SONA_CUDA_BLOCK, R > 32 ? 1 : 2) /* rank 64: registers over blocks */
    lora_apply_fused_kernel(sona_lora_weights w, uint32_t n, const int32_t *ids, const float *x,
                            float *y, int by_row)
{
#if SONA_CUDA_CLUSTERS
    constexpr int G = fused_group<R>::rows;
    __shared__ int rows_s[FUSED_IDS];
    __shared__ int warp_counts[WARPS];
    __shared__ float part[G][R][WARPS];
    __shared__ float tpart[2][G][R]; /* this block's partial dots, double-buffered */
    __shared__ float t[G][R];
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    const unsigned cs = cluster.num_blocks();
    const size_t H = w.hidden, units = VEC ? H / 4 : H;
    const size_t per = (units + cs - 1) / cs;
    const size_t u0 = cluster.block_rank() * per, u1 = u0 + per < units ? u0 + per : units;
    const size_t base = (size_t)blockIdx.z * FUSED_IDS;
    /* Every branch below is the same for all blocks of the cluster (same slot, same chunk). */
    uint32_t a;
    int count;
    if (by_row) {
        const size_t lead = base + blockIdx.y;
        if (lead >= n)
            return;
        const int32_t id = ids ? ids[lead] : 0;
        if (id < 0 || (uint32_t)id >= w.num_adapters) {
            copy_units<VEC>(x + lead * H, y + lead * H, u0, u1);
            return;
        }
        a = (uint32_t)id;
        count = collect_rows_ordered(ids, n, base, a, w.num_adapters, rows_s, warp_counts);
        if (rows_s[0] != (int)lead) /* another cluster leads this adapter's rows */
            return;
    } else {
        a = blockIdx.y;
        count = collect_rows_ordered(ids, n, base, a, w.num_adapters, rows_s, warp_counts);
        if (a >= w.num_adapters) {
            for (int q = (int)(a - w.num_adapters); q < count; q += (int)FUSED_COPIERS)
                copy_units<VEC>(x + (size_t)rows_s[q] * H, y + (size_t)rows_s[q] * H, u0, u1);
            return;
        }
        if (!count)
            return;
    }
    const int r = (int)w.rank;
    const size_t off = (size_t)a * w.rank * H;
    const float *__restrict__ A = w.A + off;
    const float *__restrict__ Bt = w.Bt + off;
    const float s = w.scale[a];
    for (size_t u = u0 + threadIdx.x; u < u1; u += blockDim.x)
        for (int j = 0; j < r; j++)
            prefetch_l2(Bt + (size_t)j * H + (VEC ? 4 * u : u));
    int buf = 0;
    for (int g0 = 0; g0 < count; g0 += G, buf ^= 1) {
        const int gn = count - g0 < G ? count - g0 : G;
        const float *xg[G];
        float *yg[G];
        group_rows<G>(x, H, rows_s, g0, gn, xg);
        group_rows<G>(y, H, rows_s, g0, gn, yg);
        float acc[G][R];
        group_dots<R, G, VEC>(A, H, u0, u1, r, xg, gn, acc);
        group_warp_partials<R, G>(acc, r, part);
        __syncthreads();
        if ((int)threadIdx.x < gn * r) {
            const int g = threadIdx.x / r, j = threadIdx.x % r;
            tpart[buf][g][j] = warps_total(part[g][j]);
        }
        /* Every block's partials of this group are visible cluster-wide after this barrier;
         * tpart[buf] is next written two groups on, after the next barrier, which no block
         * passes before it has read this group's partials. */
        cluster.sync();
        if ((int)threadIdx.x < gn * r) {
            const int g = threadIdx.x / r, j = threadIdx.x % r;
            float sum = 0.0f;
            for (unsigned b = 0; b < cs; b++) /* the same order in every block */
                sum += *cluster.map_shared_rank(&tpart[buf][g][j], (int)b);
            t[g][j] = s * sum;
        }
        __syncthreads();
        group_expand<R, G, VEC>(Bt, H, u0, u1, r, t, xg, yg, gn);
    }
    cluster.sync(); /* tpart stays alive until every block of the cluster has read it */
#else /* launched on sm_90 and later only */
    (void)w;
    (void)n;
    (void)ids;
    (void)x;
    (void)y;
    (void)by_row;
#endif
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

/* Compute capability major and SM count of the current device, read once (the module drives
 * one device; launches run under the backend's lock). */
int device_sm_major()
{
    static int major = -1;
    if (major < 0) {
        int dev = 0, v = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
            v = 0;
        major = v;
    }
    return major;
}

int device_sm_count()
{
    static int count = -1;
    if (count < 0) {
        int dev = 0, v = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
            v = 0;
        count = v;
    }
    return count;
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

/* Grid of the fused kernel: (CS, slots, chunks), x = 0 when it does not take this shape or the
 * device has no thread-block clusters; *by_row tells what a slot is (see the kernel). */
dim3 fused_grid(const sona_lora_apply_args *a, bool vec, int *by_row)
{
    *by_row = 0;
    if (device_sm_major() < 9)
        return dim3(0, 0, 0);
    const uint64_t units = vec ? a->w.hidden / 4 : a->w.hidden;
    const uint64_t n = a->n, adapters = a->w.num_adapters;
    const uint64_t chunks = (n + FUSED_IDS - 1) / FUSED_IDS;
    const uint64_t row_slots = n < (uint64_t)FUSED_IDS ? n : (uint64_t)FUSED_IDS;
    const uint64_t adapter_slots = adapters + FUSED_COPIERS;
    *by_row = row_slots < adapter_slots;
    const uint64_t slots = *by_row ? row_slots : adapter_slots;
    /* Clusters of 1, 2, 4 or 8 blocks: one unit per thread where hidden allows; then, when the
     * clusters with work (at most one per row or adapter, and one for rows without) leave SMs
     * idle, wider clusters while each block keeps at least 64 units. */
    uint64_t cs = 1;
    while (cs < (uint64_t)FUSED_MAX_CLUSTER && cs * SONA_CUDA_BLOCK < units)
        cs *= 2;
    const uint64_t busy = n < adapters + 1 ? n : adapters + 1;
    const uint64_t sms = device_sm_count() > 0 ? (uint64_t)device_sm_count() : 64;
    while (cs < (uint64_t)FUSED_MAX_CLUSTER && busy * cs < sms && units >= 64 * 2 * cs)
        cs *= 2;
    /* Every block scans its id chunk: keep the grid (and that scan) bounded. */
    if (!units || slots > 65535 || chunks > 65535 || cs * slots * chunks > ((uint64_t)1 << 20))
        return dim3(0, 0, 0);
    return dim3((unsigned)cs, (unsigned)slots, (unsigned)chunks);
}

struct apply_fused_launch {
    const sona_lora_apply_args *a;
    dim3 grid;
    int by_row;
    cudaStream_t s;
    template <int R, bool VEC>
    cudaError_t operator()() const
    {
        cudaLaunchAttribute cluster[1];
        cluster[0].id = cudaLaunchAttributeClusterDimension;
        cluster[0].val.clusterDim.x = grid.x;
        cluster[0].val.clusterDim.y = 1;
        cluster[0].val.clusterDim.z = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid;
        cfg.blockDim = dim3(SONA_CUDA_BLOCK);
        cfg.stream = s;
        cfg.attrs = cluster;
        cfg.numAttrs = 1;
        return cudaLaunchKernelEx(&cfg, lora_apply_fused_kernel<R, VEC>, a->w, a->n, a->ids, a->x,
                                  a->y, by_row);
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

} // namespace

size_t sona_cuda_lora_apply_scratch(const sona_lora_apply_args *a, int mode)
{
    const bool vec = lora_vec(a);
    int by_row;
    if (mode == 0 || mode == 1 || (mode == 3 && fused_grid(a, vec, &by_row).x))
        return 0;
    const dim3 grid = sliced_grid(a, vec);
    return grid.x ? (size_t)a->n * grid.y * a->w.rank : 0;
}

cudaError_t sona_cuda_launch_lora_apply(const sona_lora_apply_args *a, int mode, float *scratch,
                                        cudaStream_t s)
{
    const bool vec = lora_vec(a);
    if (mode == 3) {
        int by_row;
        const dim3 grid = fused_grid(a, vec, &by_row);
        if (grid.x)
            return with_rank_bucket(a->w.rank, vec, apply_fused_launch{a, grid, by_row, s});
        mode = -1; /* no clusters here, or a shape it does not take */
    }
    const bool sliced_ok = scratch && sliced_grid(a, vec).x;
    /* Auto: the sliced pair whenever it takes the shape (it spreads any batch over every SM and
     * reads each adapter slice once per group of rows), except for decode batches of at most
     * one row per SM with adapters up to 16 x 4096: one launch of one block per row has the
     * lower latency there (H200: n = 1, r = 16, h = 4096 in 13.6 us against 17.5 sliced). */
    if (mode < 0) {
        const bool decode = a->n <= (uint32_t)(device_sm_count() > 0 ? device_sm_count() : 64) &&
                            (uint64_t)a->w.rank * a->w.hidden <= 65536;
        mode = sliced_ok && !decode ? 2 : 0;
    }
    if (mode == 2 && sliced_ok)
        return with_rank_bucket(a->w.rank, vec, apply_sliced_launch{a, scratch, s});
    if (mode == 1 && a->ids && a->w.rank <= 16 && a->w.num_adapters < INT32_MAX)
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
