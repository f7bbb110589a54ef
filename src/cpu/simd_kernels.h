/* SPDX-License-Identifier: MIT */
/* The vector kernels of every SIMD CPU variant, written once against a small vector interface.
 *
 * Include this from exactly one variant file (ops_avx2.c, ops_avx512.c, ops_neon.c) after
 * defining, for that ISA:
 *   SV_W                    lanes of one vector of floats
 *   sv_f                    the vector type
 *   sv_zero() sv_set1(f) sv_load(p) sv_store(p, v) sv_fma(a, b, c) (= a*b + c)
 *   sv_add(a, b) sv_sub(a, b) sv_mul(a, b) sv_hsum(v)
 *   sv_loadn(p, n)          the first n < SV_W floats, zeros above; reads only those n
 *   sv_storen(p, v, n)      writes only the first n < SV_W lanes
 *   SV_GEMM_MR              rows of the GEMM micro-tile (its columns are 2 * SV_W)
 * and, for the cluster merge's double kernels (optional: a variant without them takes scalar's),
 *   SV_D_W                  lanes of one vector of doubles (2, 4 or 8)
 *   sv_d                    its type
 *   sv_d_set1(x) sv_d_load(p) sv_d_store(p, v) sv_d_add(a, b) sv_d_mul(a, b)
 *   sv_d_load_f32(p)        SV_D_W floats, widened
 * Everything here is static, so each variant gets its own copy compiled with its own flags and
 * nothing of one ISA leaks into another translation unit. Accumulation is in float, like the
 * scalar variant; the error bounds of tests/support/op_cases.c hold for any summation order. */
#ifndef SONA_CPU_SIMD_KERNELS_H
#define SONA_CPU_SIMD_KERNELS_H

#include "cpu/cpu.h"
#include "cpu/host_loops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SV_INLINE static inline __attribute__((always_inline))

/* Dot product of two n-long rows, four independent accumulator chains. */
SV_INLINE float sv_dot(const float *a, const float *b, uint32_t n)
{
    sv_f s0 = sv_zero(), s1 = sv_zero(), s2 = sv_zero(), s3 = sv_zero();
    uint32_t h = 0;
    for (; h + 4 * SV_W <= n; h += 4 * SV_W) {
        s0 = sv_fma(sv_load(a + h), sv_load(b + h), s0);
        s1 = sv_fma(sv_load(a + h + SV_W), sv_load(b + h + SV_W), s1);
        s2 = sv_fma(sv_load(a + h + 2 * SV_W), sv_load(b + h + 2 * SV_W), s2);
        s3 = sv_fma(sv_load(a + h + 3 * SV_W), sv_load(b + h + 3 * SV_W), s3);
    }
    for (; h + SV_W <= n; h += SV_W)
        s0 = sv_fma(sv_load(a + h), sv_load(b + h), s0);
    if (h < n)
        s1 = sv_fma(sv_loadn(a + h, n - h), sv_loadn(b + h, n - h), s1);
    return sv_hsum(sv_add(sv_add(s0, s1), sv_add(s2, s3)));
}

/* y[h] += c * x[h] over n floats. */
SV_INLINE void sv_axpy(float *y, float c, const float *x, uint32_t n)
{
    const sv_f cv = sv_set1(c);
    uint32_t h = 0;
    for (; h + 2 * SV_W <= n; h += 2 * SV_W) {
        sv_store(y + h, sv_fma(cv, sv_load(x + h), sv_load(y + h)));
        sv_store(y + h + SV_W, sv_fma(cv, sv_load(x + h + SV_W), sv_load(y + h + SV_W)));
    }
    for (; h + SV_W <= n; h += SV_W)
        sv_store(y + h, sv_fma(cv, sv_load(x + h), sv_load(y + h)));
    if (h < n)
        sv_storen(y + h, sv_fma(cv, sv_loadn(x + h, n - h), sv_loadn(y + h, n - h)), n - h);
}

/* ---- lora_apply ------------------------------------------------------------------------ */

/* t[q][j0 + u] = s * (A_{j0+u} . x_q) for u < J, q < R, in J x R accumulator chains. J and R
 * are compile-time constants at every call. */
SV_INLINE void sv_down_block(int R, uint32_t J, const float *A, uint32_t j0, uint32_t H, const float *const *x,
                             float s, float t[][SONA_LORA_MAX_RANK])
{
    const float *aj = A + (size_t)j0 * H;
    sv_f acc[6][4];
    for (uint32_t u = 0; u < J; u++)
        for (int q = 0; q < R; q++)
            acc[u][q] = sv_zero();
    uint32_t h = 0;
    for (; h + SV_W <= H; h += SV_W) {
        sv_f va[6];
        for (uint32_t u = 0; u < J; u++)
            va[u] = sv_load(aj + u * H + h);
        for (int q = 0; q < R; q++) {
            const sv_f xv = sv_load(x[q] + h);
            for (uint32_t u = 0; u < J; u++)
                acc[u][q] = sv_fma(va[u], xv, acc[u][q]);
        }
    }
    if (h < H) {
        const uint32_t rest = H - h;
        sv_f va[6];
        for (uint32_t u = 0; u < J; u++)
            va[u] = sv_loadn(aj + u * H + h, rest);
        for (int q = 0; q < R; q++) {
            const sv_f xv = sv_loadn(x[q] + h, rest);
            for (uint32_t u = 0; u < J; u++)
                acc[u][q] = sv_fma(va[u], xv, acc[u][q]);
        }
    }
    for (int q = 0; q < R; q++)
        for (uint32_t u = 0; u < J; u++)
            t[q][j0 + u] = s * sv_hsum(acc[u][q]);
}

/* t[q][j] = s * (A_j . x_q) for R rows that share one adapter: each A row is loaded once for
 * all R inputs, several A rows at a time, so that many independent accumulator chains hide the
 * FMA latency and each x load serves several FMAs. AVX-512's 32 registers take 6 A rows by 4
 * inputs (24 chains: 10 loads for 24 FMAs, where 4 x 4 took 8 for 16), then 4; AVX2's 16 take 2
 * by 4 (a single row takes four A rows at once). R is a compile-time constant at every call. */
SV_INLINE void sv_lora_down(int R, const float *A, uint32_t r, uint32_t H, const float *const *x,
                            float s, float t[][SONA_LORA_MAX_RANK])
{
    uint32_t j = 0;
    if (SV_W >= 16 && R == 4)
        for (; j + 6 <= r; j += 6)
            sv_down_block(R, 6, A, j, H, x, s, t);
    const uint32_t J = R == 1 || SV_W >= 16 ? 4 : 2;
    for (; j + J <= r; j += J)
        sv_down_block(R, J, A, j, H, x, s, t);
    for (; j + 2 <= r && J > 2; j += 2)
        sv_down_block(R, 2, A, j, H, x, s, t);
    for (; j < r; j++)
        for (int q = 0; q < R; q++)
            t[q][j] = s * sv_dot(A + (size_t)j * H, x[q], H);
}

/* y_q = src_q + sum_{u < U} t[q][j0 + u] Bt_{j0+u} for R rows: one pass of U Bt rows over the
 * y rows. Passes in order j0 = 0, U, ... add the Bt rows in the order of a single pass. R and U
 * are compile-time constants at every call. */
SV_INLINE void sv_lora_up_pass(int R, uint32_t U, const float *Bt, uint32_t j0, uint32_t H,
                               const float *const *src, float *const *y, const float t[][SONA_LORA_MAX_RANK])
{
    const float *b = Bt + (size_t)j0 * H;
    const float *from[4];
    float *to[4];
    sv_f tv[4][4]; /* hoisted: y's stores might alias t and the row pointers for all gcc knows */
    for (int q = 0; q < R; q++) {
        from[q] = src[q];
        to[q] = y[q];
        for (uint32_t u = 0; u < U; u++)
            tv[q][u] = sv_set1(t[q][j0 + u]);
    }
    uint32_t h = 0;
    for (; h + SV_W <= H; h += SV_W) {
        sv_f bv[4];
        for (uint32_t u = 0; u < U; u++)
            bv[u] = sv_load(b + (size_t)u * H + h);
        for (int q = 0; q < R; q++) {
            sv_f acc = sv_load(from[q] + h);
            for (uint32_t u = 0; u < U; u++)
                acc = sv_fma(bv[u], tv[q][u], acc);
            sv_store(to[q] + h, acc);
        }
    }
    if (h < H) {
        const uint32_t rest = H - h;
        sv_f bv[4];
        for (uint32_t u = 0; u < U; u++)
            bv[u] = sv_loadn(b + (size_t)u * H + h, rest);
        for (int q = 0; q < R; q++) {
            sv_f acc = sv_loadn(from[q] + h, rest);
            for (uint32_t u = 0; u < U; u++)
                acc = sv_fma(bv[u], tv[q][u], acc);
            sv_storen(to[q] + h, acc, rest);
        }
    }
}

/* y_q = x_q + sum_j t[q][j] Bt_j for R rows, V vectors of h at a time: each Bt load serves
 * all R rows, and the R x V accumulators stay in registers. x_q may equal y_q. */
SV_INLINE void sv_lora_up(int R, const float *Bt, uint32_t r, uint32_t H, const float *const *x,
                          float *const *y, const float t[][SONA_LORA_MAX_RANK])
{
    if (r > 4) {
        /* High rank: four Bt rows per pass over the y rows, so the weights stream in a few
         * sequential runs the prefetcher follows, instead of r runs of a few vectors each. */
        uint32_t j0 = 0;
        for (; j0 + 4 <= r; j0 += 4)
            sv_lora_up_pass(R, 4, Bt, j0, H, j0 == 0 ? x : (const float *const *)y, y, t);
        for (; j0 < r; j0++)
            sv_lora_up_pass(R, 1, Bt, j0, H, (const float *const *)y, y, t);
        return;
    }
    const uint32_t V = R == 1 ? 4 : 2;
    uint32_t h = 0;
    for (; h + V * SV_W <= H; h += V * SV_W) {
        sv_f acc[4][4];
        for (int q = 0; q < R; q++)
            for (uint32_t v = 0; v < V; v++)
                acc[q][v] = sv_load(x[q] + h + v * SV_W);
        for (uint32_t j = 0; j < r; j++) {
            const float *b = Bt + (size_t)j * H + h;
            sv_f bv[4];
            for (uint32_t v = 0; v < V; v++)
                bv[v] = sv_load(b + v * SV_W);
            for (int q = 0; q < R; q++) {
                const sv_f tv = sv_set1(t[q][j]);
                for (uint32_t v = 0; v < V; v++)
                    acc[q][v] = sv_fma(bv[v], tv, acc[q][v]);
            }
        }
        for (int q = 0; q < R; q++)
            for (uint32_t v = 0; v < V; v++)
                sv_store(y[q] + h + v * SV_W, acc[q][v]);
    }
    for (; h < H; h += SV_W) {
        const uint32_t rest = H - h < SV_W ? H - h : SV_W;
        sv_f acc[4];
        for (int q = 0; q < R; q++)
            acc[q] = rest == SV_W ? sv_load(x[q] + h) : sv_loadn(x[q] + h, rest);
        for (uint32_t j = 0; j < r; j++) {
            const float *b = Bt + (size_t)j * H + h;
            const sv_f bv = rest == SV_W ? sv_load(b) : sv_loadn(b, rest);
            for (int q = 0; q < R; q++)
                acc[q] = sv_fma(bv, sv_set1(t[q][j]), acc[q]);
        }
        for (int q = 0; q < R; q++) {
            if (rest == SV_W)
                sv_store(y[q] + h, acc[q]);
            else
                sv_storen(y[q] + h, acc[q], rest);
        }
    }
}

SV_INLINE void sv_lora_group(int R, const sona_lora_weights *w, int32_t id, const float *const *x,
                             float *const *y)
{
    const uint32_t H = w->hidden, r = w->rank;
    const size_t off = (size_t)id * r * H;
    float t[4][SONA_LORA_MAX_RANK];
    sv_lora_down(R, w->A + off, r, H, x, w->scale[id], t);
    sv_lora_up(R, w->Bt + off, r, H, x, y, t);
}

/* Rows run in groups of up to four that use the same adapter, so a batch over few adapters
 * reads each adapter's weights once per group instead of once per row. Grouping keeps the
 * order of rows within an adapter; rows of other adapters in between are left for later. */
#define SV_APPLY_WINDOW 256
static void sv_apply_rows(const sona_lora_apply_args *a, uint32_t first, uint32_t last)
{
    const uint32_t H = a->w.hidden;
    const float *xs[4];
    float *ys[4];
    /* Within a window of rows, mark rows done as their group runs (a bitmap on the stack). */
    for (uint32_t base = first; base < last; base += SV_APPLY_WINDOW) {
        const uint32_t end = last - base < SV_APPLY_WINDOW ? last : base + SV_APPLY_WINDOW;
        unsigned char done[SV_APPLY_WINDOW] = {0};
        for (uint32_t i = base; i < end; i++) {
            if (done[i - base])
                continue;
            const int32_t id = a->ids ? a->ids[i] : 0;
            const float *x = a->x + (size_t)i * H;
            float *y = a->y + (size_t)i * H;
            if (id < 0) {
                if (y != x)
                    memcpy(y, x, H * sizeof *y);
                continue;
            }
            int R = 0;
            for (uint32_t k = i; k < end && R < 4; k++) {
                if (done[k - base] || (a->ids ? a->ids[k] : 0) != id)
                    continue;
                done[k - base] = 1;
                xs[R] = a->x + (size_t)k * H;
                ys[R] = a->y + (size_t)k * H;
                R++;
            }
            switch (R) {
            case 1: sv_lora_group(1, &a->w, id, xs, ys); break;
            case 2: sv_lora_group(2, &a->w, id, xs, ys); break;
            case 3: sv_lora_group(3, &a->w, id, xs, ys); break;
            default: sv_lora_group(4, &a->w, id, xs, ys); break;
            }
        }
    }
}

/* Work by adapter, for the batched ops: the rows are ordered by adapter id (a stable counting
 * sort; rows of id -1 left out), taken in groups of up to max_group rows of one adapter, and the
 * adapters cut into chunks at adapter boundaries near equal shares of rows, which `parts` threads
 * claim as they go (sona_cpu_parallel_chunks), so no two threads touch one adapter's weights or
 * gradients and every adapter's data comes from memory once. group() runs one group. */
typedef void (*sv_group_fn)(const void *args, int32_t id, const uint32_t *rows, uint32_t G);
typedef struct sv_by_adapter {
    const void *args;
    const int32_t *ids;
    const uint32_t *order, *bounds; /* chunk c: order[bounds[c] .. bounds[c + 1]) */
    uint32_t max_group;
    sv_group_fn group;
} sv_by_adapter;

static void sv_by_adapter_chunk(void *arg, uint32_t chunk)
{
    const sv_by_adapter *w = arg;
    for (uint32_t at = w->bounds[chunk], end = w->bounds[chunk + 1]; at < end;) {
        const int32_t id = w->ids ? w->ids[w->order[at]] : 0;
        uint32_t G = 1;
        while (at + G < end && G < w->max_group && (w->ids ? w->ids[w->order[at + G]] : 0) == id)
            G++;
        w->group(w->args, id, w->order + at, G);
        at += G;
    }
}

/* Runs the rows with ids[i] >= 0 through group() by adapter (see sv_by_adapter), over `parts`
 * threads. 0 when there is no memory for the order (nothing has run then). */
static int sv_run_by_adapter(const void *args, const int32_t *ids, uint32_t n, uint32_t adapters, uint32_t parts,
                             uint32_t max_group, sv_group_fn group)
{
    const uint32_t chunks = sona_cpu_chunks(parts);
    uint32_t *order = malloc(((size_t)n + adapters + 1 + chunks + 1) * sizeof *order);
    if (!order)
        return 0;
    uint32_t *start = order + n, *bounds = start + adapters + 1; /* bucket starts, chunk bounds */
    memset(start, 0, ((size_t)adapters + 1) * sizeof *start);
    for (uint32_t i = 0; i < n; i++) {
        const int32_t id = ids ? ids[i] : 0;
        if (id >= 0)
            start[id + 1]++;
    }
    for (uint32_t k = 0; k < adapters; k++)
        start[k + 1] += start[k];
    const uint32_t placed = start[adapters];
    /* Chunk bounds at the bucket start nearest each equal share (before the scatter below moves
     * the starts on); a chunk may be empty when one adapter has more rows than a share. */
    bounds[0] = 0;
    for (uint32_t c = 1, k = 0; c < chunks; c++) {
        const uint64_t want = (uint64_t)placed * c / chunks;
        while (k < adapters && start[k] < want)
            k++;
        bounds[c] = start[k] > bounds[c - 1] ? start[k] : bounds[c - 1];
    }
    bounds[chunks] = placed;
    for (uint32_t i = 0; i < n; i++) {
        const int32_t id = ids ? ids[i] : 0;
        if (id >= 0)
            order[start[id]++] = i; /* start[id] ends at the next bucket's start */
    }
    sv_by_adapter w = {args, ids, order, bounds, max_group, group};
    sona_cpu_parallel_chunks(sv_by_adapter_chunk, &w, chunks, parts);
    free(order);
    return 1;
}

/* One adapter's rows of a large apply, four at a time while its weights are cache-hot. Split by
 * rows instead of adapters, both cores read most adapters' weights (46 GB/s of traffic for 36
 * GFLOP/s at 256 x 4 096 x r16 over 64 adapters). */
static void sv_apply_group(const void *args, int32_t id, const uint32_t *rows, uint32_t G)
{
    const sona_lora_apply_args *a = args;
    const uint32_t H = a->w.hidden;
    for (uint32_t q0 = 0; q0 < G; q0 += 4) {
        const float *xs[4];
        float *ys[4];
        const uint32_t R = G - q0 < 4 ? G - q0 : 4;
        for (uint32_t q = 0; q < R; q++) {
            xs[q] = a->x + (size_t)rows[q0 + q] * H;
            ys[q] = a->y + (size_t)rows[q0 + q] * H;
        }
        switch (R) {
        case 1: sv_lora_group(1, &a->w, id, xs, ys); break;
        case 2: sv_lora_group(2, &a->w, id, xs, ys); break;
        case 3: sv_lora_group(3, &a->w, id, xs, ys); break;
        default: sv_lora_group(4, &a->w, id, xs, ys); break;
        }
    }
}

static sona_status sv_lora_apply(void *ctx, const sona_lora_apply_args *a)
{
    (void)ctx;
    const uint32_t H = a->w.hidden;
    if (a->n == 1) { /* the per-request path: no grouping work at all */
        const int32_t id = a->ids ? a->ids[0] : 0;
        const float *xs[1] = {a->x};
        float *ys[1] = {a->y};
        if (id >= 0)
            sv_lora_group(1, &a->w, id, xs, ys);
        else if (a->y != a->x)
            memcpy(a->y, a->x, H * sizeof(float));
        return SONA_OK;
    }
    const uint32_t parts = sona_cpu_parallel_parts(4.0 * a->n * a->w.rank * H);
    if (parts <= 1 || !sv_run_by_adapter(a, a->ids, a->n, a->w.num_adapters, parts, UINT32_MAX, sv_apply_group)) {
        sv_apply_rows(a, 0, a->n);
        return SONA_OK;
    }
    for (uint32_t i = 0; a->ids && a->y != a->x && i < a->n; i++) /* no adapter: y = x */
        if (a->ids[i] < 0)
            memcpy(a->y + (size_t)i * H, a->x + (size_t)i * H, H * sizeof(float));
    return SONA_OK;
}

/* ---- lora_grad ------------------------------------------------------------------------- */

/* Out rows j0..j0+U-1 at columns h..h+2*SV_W: o = out + j0 * H + h, each += the sum over the G
 * rows q of coef[q][j] v_q; the accumulators stay in registers while the input rows stream
 * through. U is a constant at every call. */
SV_INLINE void sv_grad_block(uint32_t U, uint32_t G, const float coef[][SONA_LORA_MAX_RANK], const float *const *v,
                             uint32_t h, float *o, uint32_t j0, uint32_t H)
{
    sv_f acc[8][2];
    for (uint32_t u = 0; u < U; u++) {
        acc[u][0] = sv_load(o + (size_t)u * H);
        acc[u][1] = sv_load(o + (size_t)u * H + SV_W);
    }
    for (uint32_t q = 0; q < G; q++) {
        const sv_f v0 = sv_load(v[q] + h), v1 = sv_load(v[q] + h + SV_W);
        for (uint32_t u = 0; u < U; u++) {
            const sv_f c = sv_set1(coef[q][j0 + u]);
            acc[u][0] = sv_fma(c, v0, acc[u][0]);
            acc[u][1] = sv_fma(c, v1, acc[u][1]);
        }
    }
    for (uint32_t u = 0; u < U; u++) {
        sv_store(o + (size_t)u * H, acc[u][0]);
        sv_store(o + (size_t)u * H + SV_W, acc[u][1]);
    }
}

/* out_j += sum_q coef[q][j] v_q for j < r, over G rows q: the gradient's outer products of one
 * adapter's rows, summed while each out row is in registers. Each pass holds a block of four out
 * rows by two vectors of h and streams the G input rows (L1-resident) through it, so an out row
 * is read and written once per group instead of once per row. */
SV_INLINE void sv_grad_rows(uint32_t G, const float coef[][SONA_LORA_MAX_RANK], const float *const *v, float *out,
                            uint32_t r, uint32_t H)
{
    const uint32_t whole = H / (2 * SV_W) * (2 * SV_W);
    uint32_t j = 0;
    /* Eight out rows at a time where the rank allows and the ISA has the registers (16
     * accumulators: AVX-512's 32 vector registers, not AVX2's 16): half the passes over the
     * input rows. */
    for (; SV_W >= 16 && j + 8 <= r; j += 8)
        for (uint32_t h = 0; h < whole; h += 2 * SV_W)
            sv_grad_block(8, G, coef, v, h, out + (size_t)j * H + h, j, H);
    for (; j + 4 <= r; j += 4)
        for (uint32_t h = 0; h < whole; h += 2 * SV_W)
            sv_grad_block(4, G, coef, v, h, out + (size_t)j * H + h, j, H);
    for (; j < r; j++)
        for (uint32_t h = 0; h < whole; h += 2 * SV_W) {
            sv_f a0 = sv_load(out + (size_t)j * H + h), a1 = sv_load(out + (size_t)j * H + h + SV_W);
            for (uint32_t q = 0; q < G; q++) {
                const sv_f c = sv_set1(coef[q][j]);
                a0 = sv_fma(c, sv_load(v[q] + h), a0);
                a1 = sv_fma(c, sv_load(v[q] + h + SV_W), a1);
            }
            sv_store(out + (size_t)j * H + h, a0);
            sv_store(out + (size_t)j * H + h + SV_W, a1);
        }
    for (uint32_t h = whole; h < H; h += SV_W) {
        const uint32_t rest = H - h < SV_W ? H - h : SV_W;
        for (uint32_t jt = 0; jt < r; jt++) {
            float *o = out + (size_t)jt * H + h;
            sv_f acc = rest == SV_W ? sv_load(o) : sv_loadn(o, rest);
            for (uint32_t q = 0; q < G; q++)
                acc = sv_fma(sv_set1(coef[q][jt]), rest == SV_W ? sv_load(v[q] + h) : sv_loadn(v[q] + h, rest), acc);
            if (rest == SV_W)
                sv_store(o, acc);
            else
                sv_storen(o, acc, rest);
        }
    }
}

/* t[q][j] = A_j . x_q for G rows, four rows at a time through sv_lora_down. */
SV_INLINE void sv_grad_down(uint32_t G, const float *A, uint32_t r, uint32_t H, const float *const *x,
                            float t[][SONA_LORA_MAX_RANK])
{
    uint32_t q = 0;
    for (; q + 4 <= G; q += 4)
        sv_lora_down(4, A, r, H, x + q, 1.0f, t + q);
    switch (G - q) {
    case 3: sv_lora_down(3, A, r, H, x + q, 1.0f, t + q); break;
    case 2: sv_lora_down(2, A, r, H, x + q, 1.0f, t + q); break;
    case 1: sv_lora_down(1, A, r, H, x + q, 1.0f, t + q); break;
    default: break;
    }
}

/* The rows of one adapter in groups of up to SV_GRAD_GROUP: for a group, u = c (A x) and
 * v = c (B^T d) for every row, then gA += v x^T and gBt += u d^T with each gradient row touched
 * once. Row by row, a batch of many rows per adapter read and wrote the adapter's gradients once
 * per row (15 GFLOP/s at 1 024 rows x 4 096 x rank 16 over 64 adapters, against gemm's 185 on
 * the same core). */
#define SV_GRAD_GROUP 16
SV_INLINE void sv_grad_group(const sona_lora_grad_args *a, int32_t id, const uint32_t *rows, uint32_t G)
{
    const uint32_t H = a->w.hidden, r = a->w.rank;
    const float *xs[SV_GRAD_GROUP], *ds[SV_GRAD_GROUP];
    float u[SV_GRAD_GROUP][SONA_LORA_MAX_RANK], v[SV_GRAD_GROUP][SONA_LORA_MAX_RANK];
    for (uint32_t q = 0; q < G; q++) {
        xs[q] = a->x + (size_t)rows[q] * H;
        ds[q] = a->d + (size_t)rows[q] * H;
    }
    const size_t off = (size_t)id * r * H;
    sv_grad_down(G, a->w.A + off, r, H, xs, u);
    sv_grad_down(G, a->w.Bt + off, r, H, ds, v);
    for (uint32_t q = 0; q < G; q++) {
        const float c = a->wt[rows[q]] * a->w.scale[id];
        for (uint32_t j = 0; j < r; j++) {
            u[q][j] *= c;
            v[q][j] *= c;
        }
    }
    sv_grad_rows(G, v, xs, a->gA + off, r, H);
    sv_grad_rows(G, u, ds, a->gBt + off, r, H);
}

static void sv_grad_group_fn(const void *args, int32_t id, const uint32_t *rows, uint32_t G)
{
    sv_grad_group(args, id, rows, G);
}

/* Rows by adapter (sv_run_by_adapter), so all of an adapter's rows share its passes over the
 * gradients however the batch interleaves them; a large call splits over the cores. Without the
 * memory for the order, rows go one at a time. */
static sona_status sv_lora_grad(void *ctx, const sona_lora_grad_args *a)
{
    (void)ctx;
    const uint32_t parts = a->n > 1 ? sona_cpu_parallel_parts(8.0 * a->n * a->w.rank * a->w.hidden) : 1;
    if (a->n > 1 && sv_run_by_adapter(a, a->ids, a->n, a->w.num_adapters, parts, SV_GRAD_GROUP, sv_grad_group_fn))
        return SONA_OK;
    for (uint32_t i = 0; i < a->n; i++) {
        const int32_t id = a->ids ? a->ids[i] : 0;
        if (id >= 0)
            sv_grad_group(a, id, &i, 1);
    }
    return SONA_OK;
}

/* ---- lora_down (host kernel) ------------------------------------------------------------- */

/* backend/ops.h's lora_down: the rows by adapter (sv_run_by_adapter), four at a time through the
 * down blocks, so an adapter's W is read once per four rows where a dot per row and weight row
 * read it once per row (loop B's signal normalisation at hidden 4 096: 512 KB a row). */
typedef struct sv_down_args {
    const float *W, *x;
    float *z;
    uint32_t r, h;
} sv_down_args;

static void sv_lora_down_group(const void *args, int32_t id, const uint32_t *rows, uint32_t G)
{
    const sv_down_args *a = args;
    const float *W = a->W + (size_t)id * a->r * a->h;
    for (uint32_t q0 = 0; q0 < G; q0 += 4) {
        const uint32_t R = G - q0 < 4 ? G - q0 : 4;
        const float *xs[4];
        float t[4][SONA_LORA_MAX_RANK];
        for (uint32_t q = 0; q < R; q++)
            xs[q] = a->x + (size_t)rows[q0 + q] * a->h;
        sv_grad_down(R, W, a->r, a->h, xs, t);
        for (uint32_t q = 0; q < R; q++)
            memcpy(a->z + (size_t)rows[q0 + q] * a->r, t[q], a->r * sizeof(float));
    }
}

static void sv_lora_down_host(const float *W, uint32_t r, uint32_t h, uint32_t adapters, uint32_t n,
                              const int32_t *ids, const float *x, float *z)
{
    const sv_down_args a = {.W = W, .x = x, .z = z, .r = r, .h = h};
    if (n > 1 && r <= SONA_LORA_MAX_RANK &&
        sv_run_by_adapter(&a, ids, n, adapters, sona_cpu_parallel_parts(2.0 * n * r * h), UINT32_MAX,
                          sv_lora_down_group))
        return;
    for (uint32_t i = 0; i < n; i++) /* one row, or no memory for the order */
        if (ids[i] >= 0)
            for (uint32_t j = 0; j < r; j++)
                z[(size_t)i * r + j] = sv_dot(W + ((size_t)ids[i] * r + j) * h, x + (size_t)i * h, h);
}

/* The host kernel entries every SIMD variant puts in its table. */
#define SV_HOST_KERNELS .lora_down = sv_lora_down_host

/* ---- param_update ---------------------------------------------------------------------- */

SV_INLINE float sv_sumsq(const float *g, uint32_t n)
{
    sv_f s0 = sv_zero(), s1 = sv_zero(), s2 = sv_zero(), s3 = sv_zero();
    uint32_t i = 0;
    for (; i + 4 * SV_W <= n; i += 4 * SV_W) {
        const sv_f g0 = sv_load(g + i), g1 = sv_load(g + i + SV_W);
        const sv_f g2 = sv_load(g + i + 2 * SV_W), g3 = sv_load(g + i + 3 * SV_W);
        s0 = sv_fma(g0, g0, s0);
        s1 = sv_fma(g1, g1, s1);
        s2 = sv_fma(g2, g2, s2);
        s3 = sv_fma(g3, g3, s3);
    }
    for (; i < n; i += SV_W) {
        const sv_f gv = n - i < SV_W ? sv_loadn(g + i, n - i) : sv_load(g + i);
        s0 = sv_fma(gv, gv, s0);
    }
    return sv_hsum(sv_add(sv_add(s0, s1), sv_add(s2, s3)));
}

/* One vector of the fused step; EWC and FISHER are compile-time constants at each call. */
SV_INLINE void sv_update_vec(int EWC, int FISHER, const sona_param_update_args *a, size_t i, uint32_t n,
                             sv_f cv, sv_f lr, sv_f lambda, sv_f decay, sv_f one_minus_decay)
{
#define SV_LD(p) (n < SV_W ? sv_loadn((p) + i, n) : sv_load((p) + i))
    const sv_f g = sv_mul(cv, SV_LD(a->g));
    const sv_f th = SV_LD(a->theta);
    sv_f step = g;
    if (EWC)
        step = sv_sub(step, sv_mul(lambda, sv_sub(sv_mul(SV_LD(a->fisher_sum), th), SV_LD(a->fisher_theta))));
    const sv_f nth = sv_add(th, sv_mul(lr, step));
    sv_f nf = sv_zero();
    if (FISHER)
        nf = sv_add(sv_mul(decay, SV_LD(a->fisher)), sv_mul(one_minus_decay, sv_mul(g, g)));
#undef SV_LD
    if (n < SV_W) {
        sv_storen(a->theta + i, nth, n);
        if (FISHER)
            sv_storen(a->fisher + i, nf, n);
    } else {
        sv_store(a->theta + i, nth);
        if (FISHER)
            sv_store(a->fisher + i, nf);
    }
}

SV_INLINE void sv_update_segment(int EWC, int FISHER, const sona_param_update_args *a, size_t base, float c)
{
    const sv_f cv = sv_set1(c), lr = sv_set1(a->lr), lambda = sv_set1(a->lambda);
    const sv_f decay = sv_set1(a->decay), omd = sv_set1(1.0f - a->decay);
    const size_t end = base + a->len;
    size_t i = base;
    for (; i + SV_W <= end; i += SV_W)
        sv_update_vec(EWC, FISHER, a, i, SV_W, cv, lr, lambda, decay, omd);
    if (i < end)
        sv_update_vec(EWC, FISHER, a, i, (uint32_t)(end - i), cv, lr, lambda, decay, omd);
}

static sona_status sv_param_update(void *ctx, const sona_param_update_args *a)
{
    (void)ctx;
    const int ewc = a->fisher_sum != NULL, fisher = a->fisher != NULL;
    for (uint32_t seg = 0; seg < a->segments; seg++) {
        const size_t base = (size_t)seg * a->len;
        float c = 1.0f;
        if (a->clip_norm > 0.0f) {
            const double norm = sqrt((double)sv_sumsq(a->g + base, a->len));
            if (norm > a->clip_norm)
                c = (float)(a->clip_norm / norm);
        }
        if (ewc && fisher)
            sv_update_segment(1, 1, a, base, c);
        else if (ewc)
            sv_update_segment(1, 0, a, base, c);
        else if (fisher)
            sv_update_segment(0, 1, a, base, c);
        else
            sv_update_segment(0, 0, a, base, c);
    }
    return SONA_OK;
}

/* ---- sqdist_argmin --------------------------------------------------------------------- */

/* Squared distances from x to four centroids at once (x is loaded once for all four). */
SV_INLINE void sv_sqdist4(const float *x, const float *c0, size_t stride, uint32_t d, float out[4])
{
    sv_f acc[4] = {sv_zero(), sv_zero(), sv_zero(), sv_zero()};
    uint32_t t = 0;
    for (; t + SV_W <= d; t += SV_W) {
        const sv_f xv = sv_load(x + t);
        for (int q = 0; q < 4; q++) {
            const sv_f diff = sv_sub(xv, sv_load(c0 + q * stride + t));
            acc[q] = sv_fma(diff, diff, acc[q]);
        }
    }
    if (t < d) {
        const sv_f xv = sv_loadn(x + t, d - t);
        for (int q = 0; q < 4; q++) {
            const sv_f diff = sv_sub(xv, sv_loadn(c0 + q * stride + t, d - t));
            acc[q] = sv_fma(diff, diff, acc[q]);
        }
    }
    for (int q = 0; q < 4; q++)
        out[q] = sv_hsum(acc[q]);
}

SV_INLINE float sv_sqdist(const float *x, const float *c, uint32_t d)
{
    sv_f acc = sv_zero(), acc1 = sv_zero();
    uint32_t t = 0;
    for (; t + 2 * SV_W <= d; t += 2 * SV_W) {
        const sv_f d0 = sv_sub(sv_load(x + t), sv_load(c + t));
        const sv_f d1 = sv_sub(sv_load(x + t + SV_W), sv_load(c + t + SV_W));
        acc = sv_fma(d0, d0, acc);
        acc1 = sv_fma(d1, d1, acc1);
    }
    for (; t < d; t += SV_W) {
        const uint32_t rest = d - t < SV_W ? d - t : SV_W;
        const sv_f diff = sv_sub(sv_loadn(x + t, rest), sv_loadn(c + t, rest));
        acc = sv_fma(diff, diff, acc);
    }
    return sv_hsum(sv_add(acc, acc1));
}

/* Direct differences, row by row: exact to float rounding, and the faster form for a few
 * centroids, where a packed tile would be mostly padding. */
static void sv_sqdist_argmin_direct(const sona_sqdist_argmin_args *a)
{
    const uint32_t d = a->d, k = a->k;
    for (uint32_t i = 0; i < a->n; i++) {
        const float *x = a->X + (size_t)i * d;
        float best = INFINITY;
        int32_t best_j = 0;
        uint32_t j = 0;
        for (; j + 4 <= k; j += 4) {
            float dist[4];
            sv_sqdist4(x, a->C + (size_t)j * d, d, d, dist);
            for (int q = 0; q < 4; q++)
                if (dist[q] < best) {
                    best = dist[q];
                    best_j = (int32_t)(j + q);
                }
        }
        for (; j < k; j++) {
            const float dj = sv_sqdist(x, a->C + (size_t)j * d, d);
            if (dj < best) {
                best = dj;
                best_j = (int32_t)j;
            }
        }
        a->idx[i] = best_j;
        a->dist[i] = best;
    }
}

/* ---- cluster_sums ---------------------------------------------------------------------- */

static sona_status sv_cluster_sums(void *ctx, const sona_cluster_sums_args *a)
{
    (void)ctx;
    memset(a->sums, 0, (size_t)a->k * a->d * sizeof *a->sums);
    memset(a->counts, 0, a->k * sizeof *a->counts);
    for (uint32_t i = 0; i < a->n; i++) {
        const int32_t j = a->idx[i];
        if (j < 0 || j >= (int32_t)a->k)
            continue;
        sv_axpy(a->sums + (size_t)j * a->d, 1.0f, a->X + (size_t)i * a->d, a->d);
        a->counts[j]++;
    }
    return SONA_OK;
}

/* ---- knn_exact ------------------------------------------------------------------------- */

/* Dot products of q with four rows of P at once. */
SV_INLINE void sv_dot4(const float *q, const float *p0, size_t stride, uint32_t d, float out[4])
{
    sv_f acc[4] = {sv_zero(), sv_zero(), sv_zero(), sv_zero()};
    uint32_t t = 0;
    for (; t + SV_W <= d; t += SV_W) {
        const sv_f qv = sv_load(q + t);
        for (int r = 0; r < 4; r++)
            acc[r] = sv_fma(qv, sv_load(p0 + r * stride + t), acc[r]);
    }
    if (t < d) {
        const sv_f qv = sv_loadn(q + t, d - t);
        for (int r = 0; r < 4; r++)
            acc[r] = sv_fma(qv, sv_loadn(p0 + r * stride + t, d - t), acc[r]);
    }
    for (int r = 0; r < 4; r++)
        out[r] = sv_hsum(acc[r]);
}

/* The norms of P and Q are computed once per call. P is walked in blocks small enough to stay
 * in L1 while every query visits them, so P streams from memory once rather than once per
 * query. The similarity is formed as in the scalar variant, and each query's candidates reach
 * sona_topk_insert in index order, so ties resolve the same way (lower index first). */
#define SV_KNN_BLOCK 32
SV_INLINE float sv_cosine(float dot, float qn, float pn)
{
    return (qn > 0.0f && pn > 0.0f) ? dot / (qn * pn) : 0.0f;
}

static sona_status sv_knn_exact(void *ctx, const sona_knn_exact_args *a)
{
    (void)ctx;
    const uint32_t d = a->d, k = a->k, n = a->n, m = a->m;
    float *pn = malloc(((size_t)n + m + 1) * sizeof *pn);
    uint32_t *len = calloc((size_t)m + 1, sizeof *len);
    if (!pn || !len) {
        free(pn);
        free(len);
        return SONA_E_NOMEM;
    }
    float *qn = pn + n;
    for (uint32_t i = 0; i < n; i++)
        pn[i] = sqrtf(sv_dot(a->P + (size_t)i * d, a->P + (size_t)i * d, d));
    for (uint32_t q = 0; q < m; q++)
        qn[q] = sqrtf(sv_dot(a->Q + (size_t)q * d, a->Q + (size_t)q * d, d));
    for (uint32_t i0 = 0; i0 < n; i0 += SV_KNN_BLOCK) {
        const uint32_t i1 = n - i0 < SV_KNN_BLOCK ? n : i0 + SV_KNN_BLOCK;
        for (uint32_t q = 0; q < m; q++) {
            const float *qv = a->Q + (size_t)q * d;
            int32_t *idx = a->idx + (size_t)q * k;
            float *sim = a->sim + (size_t)q * k;
            uint32_t i = i0;
            for (; i + 4 <= i1; i += 4) {
                float dots[4];
                sv_dot4(qv, a->P + (size_t)i * d, d, d, dots);
                for (uint32_t r = 0; r < 4; r++)
                    sona_topk_insert(idx, sim, k, &len[q], (int32_t)(i + r), sv_cosine(dots[r], qn[q], pn[i + r]));
            }
            for (; i < i1; i++)
                sona_topk_insert(idx, sim, k, &len[q], (int32_t)i,
                                 sv_cosine(sv_dot(qv, a->P + (size_t)i * d, d), qn[q], pn[i]));
        }
    }
    for (uint32_t q = 0; q < m; q++)
        for (uint32_t t = len[q]; t < k; t++) {
            a->idx[(size_t)q * k + t] = -1;
            a->sim[(size_t)q * k + t] = -INFINITY;
        }
    free(pn);
    free(len);
    return SONA_OK;
}

/* ---- gemm ------------------------------------------------------------------------------ */

/* Packed, register-blocked SGEMM (the usual three-level blocking). op(B) is packed into
 * column panels of SV_GEMM_NR floats per k step, op(A) into row panels of SV_GEMM_MR; the
 * packing absorbs both transpositions and zero-pads the edges, so the micro-kernel always
 * computes a full MR x NR tile and only the write-back knows about edges. */
#define SV_GEMM_NR (2 * SV_W)
#define SV_GEMM_KC 256
#define SV_GEMM_MC (SV_GEMM_MR * 16)
#define SV_GEMM_NC 2048

SV_INLINE float sv_gemm_a(const sona_gemm_args *g, size_t i, size_t p)
{
    return g->trans_a ? g->A[p * g->m + i] : g->A[i * g->k + p];
}

/* Ap[panel][p][ii] for rows i0..i0+mc, k range p0..p0+kc. */
static void sv_gemm_pack_a(const sona_gemm_args *g, uint32_t i0, uint32_t mc, uint32_t p0, uint32_t kc,
                           float *Ap)
{
    for (uint32_t ip = 0; ip < mc; ip += SV_GEMM_MR) {
        const uint32_t rows = mc - ip < SV_GEMM_MR ? mc - ip : SV_GEMM_MR;
        for (uint32_t p = 0; p < kc; p++) {
            uint32_t ii = 0;
            if (g->trans_a) { /* row p of A holds op(A)'s column: contiguous in i */
                const float *src = g->A + (size_t)(p0 + p) * g->m + i0 + ip;
                for (; ii < rows; ii++)
                    Ap[ii] = src[ii];
            } else {
                for (; ii < rows; ii++)
                    Ap[ii] = sv_gemm_a(g, i0 + ip + ii, p0 + p);
            }
            for (; ii < SV_GEMM_MR; ii++)
                Ap[ii] = 0.0f;
            Ap += SV_GEMM_MR;
        }
    }
}

/* Bp[panel][p][jj] for columns j0..j0+nc, k range p0..p0+kc. */
static void sv_gemm_pack_b(const sona_gemm_args *g, uint32_t j0, uint32_t nc, uint32_t p0, uint32_t kc,
                           float *Bp)
{
    for (uint32_t jp = 0; jp < nc; jp += SV_GEMM_NR) {
        const uint32_t cols = nc - jp < SV_GEMM_NR ? nc - jp : SV_GEMM_NR;
        for (uint32_t p = 0; p < kc; p++) {
            uint32_t jj = 0;
            if (!g->trans_b) {
                const float *src = g->B + (size_t)(p0 + p) * g->n + j0 + jp;
                if (cols == SV_GEMM_NR) {
                    sv_store(Bp, sv_load(src));
                    sv_store(Bp + SV_W, sv_load(src + SV_W));
                    jj = cols;
                } else {
                    for (; jj < cols; jj++)
                        Bp[jj] = src[jj];
                }
            } else {
                for (; jj < cols; jj++)
                    Bp[jj] = g->B[(size_t)(j0 + jp + jj) * g->k + p0 + p];
            }
            for (; jj < SV_GEMM_NR; jj++)
                Bp[jj] = 0.0f;
            Bp += SV_GEMM_NR;
        }
    }
}

/* acc0/acc1[i] = the MR x NR tile Ap^T Bp over kc steps (acc0: columns 0..SV_W-1); Bp's rows
 * of NR floats are ldb apart (NR when packed, op(B)'s row length when read in place). */
SV_INLINE void sv_gemm_tile(uint32_t kc, const float *Ap, const float *Bp, size_t ldb, sv_f acc0[SV_GEMM_MR],
                            sv_f acc1[SV_GEMM_MR])
{
    for (int i = 0; i < SV_GEMM_MR; i++)
        acc0[i] = acc1[i] = sv_zero();
    for (uint32_t p = 0; p < kc; p++) {
        const sv_f b0 = sv_load(Bp), b1 = sv_load(Bp + SV_W);
        for (int i = 0; i < SV_GEMM_MR; i++) {
            const sv_f av = sv_set1(Ap[i]);
            acc0[i] = sv_fma(av, b0, acc0[i]);
            acc1[i] = sv_fma(av, b1, acc1[i]);
        }
        Ap += SV_GEMM_MR;
        Bp += ldb;
    }
}

/* acc = Ap^T Bp over kc, then C = alpha acc + beta C (first k block) or C += alpha acc. */
static void sv_gemm_micro(uint32_t kc, const float *Ap, const float *Bp, size_t ldb, float *C, size_t ldc,
                          uint32_t rows, uint32_t cols, float alpha, float beta, int first)
{
    sv_f acc0[SV_GEMM_MR], acc1[SV_GEMM_MR];
    sv_gemm_tile(kc, Ap, Bp, ldb, acc0, acc1);
    const sv_f av = sv_set1(alpha), bv = sv_set1(first ? beta : 1.0f);
    const int keep = !first || beta != 0.0f; /* beta == 0 ignores C's old contents */
    for (uint32_t i = 0; i < rows; i++) {
        float *c = C + i * ldc;
        if (cols == SV_GEMM_NR) {
            sv_f r0 = sv_mul(av, acc0[i]), r1 = sv_mul(av, acc1[i]);
            if (keep) {
                r0 = sv_fma(bv, sv_load(c), r0);
                r1 = sv_fma(bv, sv_load(c + SV_W), r1);
            }
            sv_store(c, r0);
            sv_store(c + SV_W, r1);
        } else {
            const uint32_t c0 = cols < SV_W ? cols : SV_W, c1 = cols - c0;
            sv_f r0 = sv_mul(av, acc0[i]), r1 = sv_mul(av, acc1[i]);
            if (keep) {
                r0 = sv_fma(bv, c0 == SV_W ? sv_load(c) : sv_loadn(c, c0), r0);
                if (c1)
                    r1 = sv_fma(bv, sv_loadn(c + SV_W, c1), r1);
            }
            if (c0 == SV_W)
                sv_store(c, r0);
            else
                sv_storen(c, r0, c0);
            if (c1)
                sv_storen(c + SV_W, r1, c1);
        }
    }
}

static sona_status sv_gemm(void *ctx, const sona_gemm_args *g)
{
    (void)ctx;
    const uint32_t M = g->m, N = g->n, K = g->k;
    if (M == 0 || N == 0)
        return SONA_OK;
    if (K == 0) { /* C = beta C */
        for (size_t i = 0; i < (size_t)M * N; i++)
            g->C[i] = g->beta == 0.0f ? 0.0f : g->beta * g->C[i];
        return SONA_OK;
    }
    const uint32_t nc_max = N < SV_GEMM_NC ? N : SV_GEMM_NC;
    const uint32_t mc_max = M < SV_GEMM_MC ? M : SV_GEMM_MC;
    const uint32_t kc_max = K < SV_GEMM_KC ? K : SV_GEMM_KC;
    /* One row panel of A (k-means' seeding: a few candidates against a block of rows): each
     * panel of B serves one tile only, so it is read in place rather than copied first (the
     * copy cost half as much again as the tiles: a seeding round's products 295 -> 191 us);
     * the ragged last panel is still packed (zero-padded), so Bp holds one panel. */
    const int b_in_place = M <= SV_GEMM_MR && !g->trans_b;
    const size_t bp_floats =
        (b_in_place ? 1 : (size_t)((nc_max + SV_GEMM_NR - 1) / SV_GEMM_NR)) * SV_GEMM_NR * kc_max;
    const size_t ap_floats = (size_t)((mc_max + SV_GEMM_MR - 1) / SV_GEMM_MR) * SV_GEMM_MR * kc_max;
    float *Bp = malloc(bp_floats * sizeof(float)), *Ap = malloc(ap_floats * sizeof(float));
    if (!Bp || !Ap) {
        free(Bp);
        free(Ap);
        return SONA_E_NOMEM;
    }
    for (uint32_t j0 = 0; j0 < N; j0 += SV_GEMM_NC) {
        const uint32_t nc = N - j0 < SV_GEMM_NC ? N - j0 : SV_GEMM_NC;
        const uint32_t whole = b_in_place ? nc / SV_GEMM_NR * SV_GEMM_NR : 0;
        for (uint32_t p0 = 0; p0 < K; p0 += SV_GEMM_KC) {
            const uint32_t kc = K - p0 < SV_GEMM_KC ? K - p0 : SV_GEMM_KC;
            if (whole < nc) /* all of the block's panels, or the ragged one (then at Bp) */
                sv_gemm_pack_b(g, j0 + whole, nc - whole, p0, kc, Bp);
            for (uint32_t i0 = 0; i0 < M; i0 += SV_GEMM_MC) {
                const uint32_t mc = M - i0 < SV_GEMM_MC ? M - i0 : SV_GEMM_MC;
                sv_gemm_pack_a(g, i0, mc, p0, kc, Ap);
                for (uint32_t jp = 0; jp < nc; jp += SV_GEMM_NR) {
                    const float *panel = jp < whole ? g->B + (size_t)p0 * N + j0 + jp : Bp + (size_t)(jp - whole) * kc;
                    const size_t ldb = jp < whole ? N : SV_GEMM_NR;
                    for (uint32_t ip = 0; ip < mc; ip += SV_GEMM_MR)
                        sv_gemm_micro(kc, Ap + (size_t)ip * kc, panel, ldb, g->C + (size_t)(i0 + ip) * N + j0 + jp, N,
                                      mc - ip < SV_GEMM_MR ? mc - ip : SV_GEMM_MR,
                                      nc - jp < SV_GEMM_NR ? nc - jp : SV_GEMM_NR, g->alpha, g->beta,
                                      p0 == 0);
                }
            }
        }
    }
    free(Bp);
    free(Ap);
    return SONA_OK;
}

/* ---- sqdist_argmin (blocked) ------------------------------------------------------------ */

/* acc0/acc1[i] = X_i . (the panel's columns) for SV_GEMM_MR rows of X[.][d] read in place:
 * broadcasting straight from the rows costs the same loads as a packed panel, without the
 * packing pass that would rival the tile's own work when k is small. */
SV_INLINE void sv_sqdist_tile(uint32_t d, const float *X, const float *Bp, sv_f acc0[SV_GEMM_MR],
                              sv_f acc1[SV_GEMM_MR])
{
    for (int i = 0; i < SV_GEMM_MR; i++)
        acc0[i] = acc1[i] = sv_zero();
    for (uint32_t p = 0; p < d; p++) {
        const sv_f b0 = sv_load(Bp), b1 = sv_load(Bp + SV_W);
        for (int i = 0; i < SV_GEMM_MR; i++) {
            const sv_f av = sv_set1(X[(size_t)i * d + p]);
            acc0[i] = sv_fma(av, b0, acc0[i]);
            acc1[i] = sv_fma(av, b1, acc1[i]);
        }
        Bp += SV_GEMM_NR;
    }
}

/* What the chunks of a large sqdist_argmin share: the packed centroids, their norms, and the
 * padded copy of the last partial row block (only the chunk that ends the rows uses it). */
typedef struct sv_sqdist_job {
    const sona_sqdist_argmin_args *a;
    const float *Cp, *cnorm;
    float *Xp;
    uint32_t panels, chunks;
} sv_sqdist_job;

/* Rows i0 .. i1 - 1 (i0 a multiple of SV_GEMM_MR). */
static void sv_sqdist_rows(const sv_sqdist_job *job, uint32_t i0, uint32_t i1)
{
    const sona_sqdist_argmin_args *a = job->a;
    const uint32_t k = a->k, d = a->d;
    const sv_f minus2 = sv_set1(-2.0f);
    for (; i0 < i1; i0 += SV_GEMM_MR) {
        const uint32_t rows = i1 - i0 < SV_GEMM_MR ? i1 - i0 : SV_GEMM_MR;
        /* Full row blocks are read in place; the last partial one is copied and zero-padded. */
        const float *xb = a->X + (size_t)i0 * d;
        if (rows < SV_GEMM_MR) {
            memcpy(job->Xp, xb, (size_t)rows * d * sizeof *job->Xp);
            memset(job->Xp + (size_t)rows * d, 0, (size_t)(SV_GEMM_MR - rows) * d * sizeof *job->Xp);
            xb = job->Xp;
        }
        float best[SV_GEMM_MR];
        int32_t best_j[SV_GEMM_MR];
        for (uint32_t r = 0; r < SV_GEMM_MR; r++) {
            best[r] = INFINITY;
            best_j[r] = 0;
        }
        for (uint32_t jp = 0; jp < job->panels; jp++) {
            const uint32_t j0 = jp * SV_GEMM_NR;
            const uint32_t cols = k - j0 < SV_GEMM_NR ? k - j0 : SV_GEMM_NR;
            sv_f acc0[SV_GEMM_MR], acc1[SV_GEMM_MR];
            sv_sqdist_tile(d, xb, job->Cp + (size_t)j0 * d, acc0, acc1);
            const sv_f cn0 = sv_load(job->cnorm + j0), cn1 = sv_load(job->cnorm + j0 + SV_W);
            for (uint32_t r = 0; r < rows; r++) {
                /* |c|^2 - 2 x.c: |x|^2 is the same for the whole row, added at the end. */
                float part[SV_GEMM_NR];
                sv_store(part, sv_fma(minus2, acc0[r], cn0));
                sv_store(part + SV_W, sv_fma(minus2, acc1[r], cn1));
                for (uint32_t c = 0; c < cols; c++)
                    if (part[c] < best[r]) {
                        best[r] = part[c];
                        best_j[r] = (int32_t)(j0 + c);
                    }
            }
        }
        for (uint32_t r = 0; r < rows; r++) {
            const float *x = a->X + (size_t)(i0 + r) * d;
            const float dist = sv_dot(x, x, d) + best[r];
            a->idx[i0 + r] = best_j[r];
            a->dist[i0 + r] = dist > 0.0f ? dist : 0.0f;
        }
    }
}

/* Chunk `chunk` of job->chunks: a share of the row blocks. */
static void sv_sqdist_chunk(void *arg, uint32_t chunk)
{
    const sv_sqdist_job *job = arg;
    const uint32_t n = job->a->n, blocks = (n + SV_GEMM_MR - 1) / SV_GEMM_MR;
    const uint32_t b0 = (uint32_t)((uint64_t)blocks * chunk / job->chunks);
    const uint32_t b1 = (uint32_t)((uint64_t)blocks * (chunk + 1) / job->chunks);
    sv_sqdist_rows(job, b0 * SV_GEMM_MR, b1 * SV_GEMM_MR < n ? b1 * SV_GEMM_MR : n);
}

/* |x - c|^2 = |x|^2 + |c|^2 - 2 x.c, with the dot products from a GEMM-like micro-tile of
 * SV_GEMM_MR rows of X by SV_GEMM_NR centroids: the centroids are packed once per call into
 * SV_GEMM_NR-wide panels (their norms alongside), and each tile's distances fold straight
 * into a running argmin, so no n x k matrix is ever stored. The formulation loses relative precision when x is close to
 * c (the error scales with |x|^2 + |c|^2, which the op's bound allows); results are clamped
 * at 0. Columns run in increasing order with a strict <, so ties keep the lowest index. */
static sona_status sv_sqdist_argmin(void *ctx, const sona_sqdist_argmin_args *a)
{
    (void)ctx;
    const uint32_t n = a->n, k = a->k, d = a->d;
    if (n == 0)
        return SONA_OK;
    if (k < SV_W || n < SV_GEMM_MR) {
        sv_sqdist_argmin_direct(a);
        return SONA_OK;
    }
    const uint32_t panels = (k + SV_GEMM_NR - 1) / SV_GEMM_NR;
    const size_t cp_floats = (size_t)panels * SV_GEMM_NR * d;
    const size_t floats = cp_floats + (size_t)panels * SV_GEMM_NR + (size_t)SV_GEMM_MR * d;
    float *Cp = malloc(floats * sizeof(float));
    if (!Cp)
        return SONA_E_NOMEM;
    float *cnorm = Cp + cp_floats, *Xp = cnorm + (size_t)panels * SV_GEMM_NR;
    /* Reuse the GEMM packer: C is op(B) stored transposed (k x d). */
    const sona_gemm_args g = {.m = n, .n = k, .k = d, .trans_b = 1, .A = a->X, .B = a->C};
    sv_gemm_pack_b(&g, 0, k, 0, d, Cp);
    for (uint32_t j = 0; j < panels * SV_GEMM_NR; j++)
        cnorm[j] = j < k ? sv_dot(a->C + (size_t)j * d, a->C + (size_t)j * d, d) : 0.0f;
    /* Rows are independent: a large call splits them over the cores, with the same bits. */
    const uint32_t parts = sona_cpu_parallel_parts(3.0 * n * k * d);
    sv_sqdist_job job = {a, Cp, cnorm, Xp, panels, sona_cpu_chunks(parts)};
    sona_cpu_parallel_chunks(sv_sqdist_chunk, &job, job.chunks, parts);
    free(Cp);
    return SONA_OK;
}

/* The op table entries a variant file puts in its sona_backend. */
#define SV_BACKEND_OPS                    \
    .lora_apply = sv_lora_apply,          \
    .lora_grad = sv_lora_grad,            \
    .param_update = sv_param_update,      \
    .sqdist_argmin = sv_sqdist_argmin,    \
    .knn_exact = sv_knn_exact,            \
    .gemm = sv_gemm,                      \
    .cluster_sums = sv_cluster_sums

#ifdef SV_D_W
/* ---- the merge's double kernels, four rows at once (backend/ops.h's dot4_lanes_f64 ...
 * axpy4_f32_f64): host_loops.h's 8 lanes in 8 / SV_D_W vectors, added in its order, so every
 * variant gives the scalar loops' bits; what they gain is x (or y) read once for four rows and
 * four independent chains of adds. */
#define SV_D_PARTS (8 / SV_D_W)

#define SV_DEFINE_DOT4_LANES(name, T, load)                                                     \
    static void name(const T *x, const T *const *y, size_t n, double *lanes)                    \
    {                                                                                           \
        sv_d acc[4][SV_D_PARTS];                                                                \
        for (int j = 0; j < 4; j++)                                                             \
            for (int p = 0; p < SV_D_PARTS; p++)                                                \
                acc[j][p] = sv_d_load(lanes + 8 * j + p * SV_D_W);                              \
        for (size_t i = 0; i < n; i += 8)                                                       \
            for (int p = 0; p < SV_D_PARTS; p++) {                                              \
                const sv_d xv = load(x + i + p * SV_D_W);                                       \
                for (int j = 0; j < 4; j++) {                                                   \
                    const sv_d prod = sv_d_mul(xv, load(y[j] + i + p * SV_D_W));                \
                    acc[j][p] = sv_d_add(acc[j][p], prod);                                      \
                }                                                                               \
            }                                                                                   \
        for (int j = 0; j < 4; j++)                                                             \
            for (int p = 0; p < SV_D_PARTS; p++)                                                \
                sv_d_store(lanes + 8 * j + p * SV_D_W, acc[j][p]);                              \
    }

#define SV_DEFINE_AXPY4(name, T, load, tail)                                                    \
    static void name(double *y, const T *const *x, const double *c, size_t n)                   \
    {                                                                                           \
        sv_d cv[4];                                                                             \
        for (int j = 0; j < 4; j++)                                                             \
            cv[j] = sv_d_set1(c[j]);                                                            \
        size_t i = 0;                                                                           \
        for (; i + SV_D_W <= n; i += SV_D_W) {                                                  \
            sv_d v = sv_d_load(y + i);                                                          \
            for (int j = 0; j < 4; j++) {                                                       \
                const sv_d prod = sv_d_mul(cv[j], load(x[j] + i));                              \
                v = sv_d_add(v, prod);                                                          \
            }                                                                                   \
            sv_d_store(y + i, v);                                                               \
        }                                                                                       \
        const T *rest[4] = {x[0] + i, x[1] + i, x[2] + i, x[3] + i};                            \
        tail(y + i, rest, c, n - i);                                                            \
    }

SV_DEFINE_DOT4_LANES(sv_dot4_lanes_f64, double, sv_d_load)
SV_DEFINE_DOT4_LANES(sv_dot4_lanes_f32_f64, float, sv_d_load_f32)
SV_DEFINE_AXPY4(sv_axpy4_f64, double, sv_d_load, host_axpy4_f64)
SV_DEFINE_AXPY4(sv_axpy4_f32_f64, float, sv_d_load_f32, host_axpy4_f32_f64)

/* The host kernel entries a variant with SV_D_W puts in its table. */
#define SV_F64_HOST_KERNELS                                                                     \
    .dot4_lanes_f64 = sv_dot4_lanes_f64, .dot4_lanes_f32_f64 = sv_dot4_lanes_f32_f64,            \
    .axpy4_f64 = sv_axpy4_f64, .axpy4_f32_f64 = sv_axpy4_f32_f64
#endif

#endif /* SONA_CPU_SIMD_KERNELS_H */
