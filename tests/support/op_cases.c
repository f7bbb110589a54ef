/* SPDX-License-Identifier: MIT */
#include "support/op_cases.h"

#include "common/rng.h"
#include "dispatch/dispatch.h"
#include "dispatch/op_buffers.h"
#include "support/fill.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define U (FLT_EPSILON / 2) /* unit roundoff of float */
#define GUARD 16            /* floats of guard band on each side of host outputs */
static const float guard_value = -7777.25f;

/* clang-format off */
const op_case op_cases[] = {
    /* lora_apply: odd hidden sizes, every rank band, mixed ids including -1, in place */
    {.op = SONA_OP_LORA_APPLY, .n = 1, .hidden = 1, .rank = 1, .adapters = 1},
    {.op = SONA_OP_LORA_APPLY, .n = 3, .hidden = 7, .rank = 2, .adapters = 2},
    {.op = SONA_OP_LORA_APPLY, .n = 5, .hidden = 257, .rank = 1, .adapters = 3},
    {.op = SONA_OP_LORA_APPLY, .n = 9, .hidden = 131, .rank = 3, .adapters = 4},
    {.op = SONA_OP_LORA_APPLY, .n = 17, .hidden = 1000, .rank = 16, .adapters = 5},
    {.op = SONA_OP_LORA_APPLY, .n = 4, .hidden = 77, .rank = 64, .adapters = 2},
    {.op = SONA_OP_LORA_APPLY, .n = 6, .hidden = 513, .rank = 5, .adapters = 3, .in_place = 1},
    {.op = SONA_OP_LORA_APPLY, .n = 2, .hidden = 2048, .rank = 2, .adapters = 1},
    {.op = SONA_OP_LORA_APPLY, .n = 1, .hidden = 301, .rank = 13, .adapters = 2}, /* one row, high rank */
    /* above the CPU's split threshold (16 MFLOP): rows run on several threads */
    {.op = SONA_OP_LORA_APPLY, .n = 301, .hidden = 2053, .rank = 7, .adapters = 5},
    /* lora_grad */
    {.op = SONA_OP_LORA_GRAD, .n = 1, .hidden = 1, .rank = 1, .adapters = 1},
    {.op = SONA_OP_LORA_GRAD, .n = 4, .hidden = 33, .rank = 2, .adapters = 2},
    {.op = SONA_OP_LORA_GRAD, .n = 7, .hidden = 257, .rank = 1, .adapters = 3},
    {.op = SONA_OP_LORA_GRAD, .n = 11, .hidden = 301, .rank = 7, .adapters = 4},
    {.op = SONA_OP_LORA_GRAD, .n = 3, .hidden = 129, .rank = 64, .adapters = 2},
    {.op = SONA_OP_LORA_GRAD, .n = 8, .hidden = 1024, .rank = 16, .adapters = 8},
    /* many rows per adapter: groups of 16 and a rest, odd width, a rank that is not a multiple of 4 */
    {.op = SONA_OP_LORA_GRAD, .n = 41, .hidden = 203, .rank = 6, .adapters = 2},
    /* above the CPU's split threshold (16 MFLOP): the work runs on several threads */
    {.op = SONA_OP_LORA_GRAD, .n = 401, .hidden = 1031, .rank = 7, .adapters = 5},
    /* param_update */
    {.op = SONA_OP_PARAM_UPDATE, .segments = 1, .len = 1},
    {.op = SONA_OP_PARAM_UPDATE, .segments = 1, .len = 1001, .with_clip = 1},
    {.op = SONA_OP_PARAM_UPDATE, .segments = 3, .len = 333, .with_ewc = 1, .with_fisher = 1},
    {.op = SONA_OP_PARAM_UPDATE, .segments = 5, .len = 259, .with_ewc = 1, .with_fisher = 1, .with_clip = 1},
    {.op = SONA_OP_PARAM_UPDATE, .segments = 2, .len = 100003, .with_fisher = 1, .with_clip = 1},
    /* sqdist_argmin */
    {.op = SONA_OP_SQDIST_ARGMIN, .n = 1, .k = 1, .d = 1},
    {.op = SONA_OP_SQDIST_ARGMIN, .n = 13, .k = 5, .d = 3},
    {.op = SONA_OP_SQDIST_ARGMIN, .n = 101, .k = 17, .d = 257},
    {.op = SONA_OP_SQDIST_ARGMIN, .n = 1000, .k = 50, .d = 256},
    {.op = SONA_OP_SQDIST_ARGMIN, .n = 37, .k = 129, .d = 31},
    /* knn_exact */
    {.op = SONA_OP_KNN_EXACT, .m = 1, .n = 1, .d = 1, .k = 1},
    {.op = SONA_OP_KNN_EXACT, .m = 3, .n = 5, .d = 7, .k = 8},
    {.op = SONA_OP_KNN_EXACT, .m = 7, .n = 1001, .d = 257, .k = 10},
    {.op = SONA_OP_KNN_EXACT, .m = 33, .n = 500, .d = 256, .k = 1},
    {.op = SONA_OP_KNN_EXACT, .m = 5, .n = 300, .d = 65, .k = 33},
    /* gemm */
    {.op = SONA_OP_GEMM, .m = 1, .n = 1, .k = 1},
    {.op = SONA_OP_GEMM, .m = 7, .n = 5, .k = 3},
    {.op = SONA_OP_GEMM, .m = 33, .n = 65, .k = 129, .trans_a = 1},
    {.op = SONA_OP_GEMM, .m = 17, .n = 31, .k = 257, .trans_b = 1},
    {.op = SONA_OP_GEMM, .m = 64, .n = 100, .k = 77, .trans_a = 1, .trans_b = 1},
    {.op = SONA_OP_GEMM, .m = 129, .n = 257, .k = 300},
    /* one row panel of A (k-means' seeding): B's whole panels read in place, the ragged last one
     * packed, over two k blocks; then exactly AVX-512's 12 rows, whole panels only */
    {.op = SONA_OP_GEMM, .m = 11, .n = 300, .k = 300},
    {.op = SONA_OP_GEMM, .m = 12, .n = 256, .k = 37, .trans_a = 1},
    /* cluster_sums (idx includes out-of-range rows, which are ignored) */
    {.op = SONA_OP_CLUSTER_SUMS, .n = 1, .k = 1, .d = 1},
    {.op = SONA_OP_CLUSTER_SUMS, .n = 100, .k = 7, .d = 33},
    {.op = SONA_OP_CLUSTER_SUMS, .n = 1001, .k = 50, .d = 256},
};
/* clang-format on */
const size_t op_case_count = sizeof op_cases / sizeof op_cases[0];

/* clang-format off */
const op_case op_large_cases[] = {
    {.op = SONA_OP_KNN_EXACT, .m = 37, .n = 70001, .d = 19, .k = 10},
    {.op = SONA_OP_KNN_EXACT, .m = 300, .n = 33000, .d = 33, .k = 64},
    {.op = SONA_OP_KNN_EXACT, .m = 9, .n = 40000, .d = 8, .k = 1},
    /* TF32 pass: query and pattern tiles crossed (2048 x 8192) with 64 candidates, and d = 2,
     * where near-ties send every query through the FP32 fallback. */
    {.op = SONA_OP_KNN_EXACT, .m = 2100, .n = 9000, .d = 40, .k = 20},
    {.op = SONA_OP_KNN_EXACT, .m = 50, .n = 40000, .d = 2, .k = 10},
    {.op = SONA_OP_SQDIST_ARGMIN, .n = 20011, .k = 1000, .d = 16},
    {.op = SONA_OP_SQDIST_ARGMIN, .n = 3, .k = 9000001, .d = 1},
    {.op = SONA_OP_CLUSTER_SUMS, .n = 200003, .k = 1000, .d = 33},
    {.op = SONA_OP_LORA_APPLY, .n = 513, .hidden = 4096, .rank = 16, .adapters = 64},
    {.op = SONA_OP_LORA_APPLY, .n = 300, .hidden = 1023, .rank = 64, .adapters = 7},
    {.op = SONA_OP_LORA_APPLY, .n = 64, .hidden = 4096, .rank = 33, .adapters = 64, .in_place = 1},
    /* Past the id chunks of the grouped kernels (256, and 1024 for the one-pass kernel): many
     * rows per adapter in a chunk, more adapters than resident slots (blocks take several), and
     * the rank-32 bucket on an odd hidden size; then several slices with several chunks. */
    {.op = SONA_OP_LORA_APPLY, .n = 2500, .hidden = 96, .rank = 4, .adapters = 3},
    {.op = SONA_OP_LORA_APPLY, .n = 1500, .hidden = 64, .rank = 2, .adapters = 2000, .in_place = 1},
    {.op = SONA_OP_LORA_APPLY, .n = 41, .hidden = 515, .rank = 20, .adapters = 3},
    {.op = SONA_OP_LORA_APPLY, .n = 3000, .hidden = 2048, .rank = 8, .adapters = 5},
    {.op = SONA_OP_LORA_APPLY, .n = 2049, .hidden = 4100, .rank = 16, .adapters = 300, .in_place = 1},
    {.op = SONA_OP_LORA_GRAD, .n = 1000, .hidden = 512, .rank = 8, .adapters = 37},
    {.op = SONA_OP_LORA_GRAD, .n = 97, .hidden = 4096, .rank = 64, .adapters = 3},
    {.op = SONA_OP_PARAM_UPDATE, .segments = 3, .len = 1000003, .with_ewc = 1, .with_fisher = 1, .with_clip = 1},
    {.op = SONA_OP_PARAM_UPDATE, .segments = 70000, .len = 3, .with_clip = 1},
    {.op = SONA_OP_GEMM, .m = 1000, .n = 999, .k = 1001, .trans_b = 1},
};
/* clang-format on */
const size_t op_large_case_count = sizeof op_large_cases / sizeof op_large_cases[0];

/* clang-format off */
const op_bench_case op_bench_cases[] = {
    /* lora_apply decode: batch 1-256 of 4096-wide rows over 64 adapters, Micro and Base ranks */
    {.c = {.op = SONA_OP_LORA_APPLY, .n = 1, .hidden = 4096, .rank = 1, .adapters = 64}},
    {.c = {.op = SONA_OP_LORA_APPLY, .n = 1, .hidden = 4096, .rank = 2, .adapters = 64}},
    {.c = {.op = SONA_OP_LORA_APPLY, .n = 1, .hidden = 4096, .rank = 16, .adapters = 64}},
    {.c = {.op = SONA_OP_LORA_APPLY, .n = 8, .hidden = 4096, .rank = 1, .adapters = 64}},
    {.c = {.op = SONA_OP_LORA_APPLY, .n = 8, .hidden = 4096, .rank = 2, .adapters = 64}},
    {.c = {.op = SONA_OP_LORA_APPLY, .n = 8, .hidden = 4096, .rank = 16, .adapters = 64}},
    {.c = {.op = SONA_OP_LORA_APPLY, .n = 64, .hidden = 4096, .rank = 1, .adapters = 64}},
    {.c = {.op = SONA_OP_LORA_APPLY, .n = 64, .hidden = 4096, .rank = 2, .adapters = 64}},
    {.c = {.op = SONA_OP_LORA_APPLY, .n = 64, .hidden = 4096, .rank = 16, .adapters = 64}},
    {.c = {.op = SONA_OP_LORA_APPLY, .n = 256, .hidden = 4096, .rank = 1, .adapters = 64}},
    {.c = {.op = SONA_OP_LORA_APPLY, .n = 256, .hidden = 4096, .rank = 2, .adapters = 64}},
    {.c = {.op = SONA_OP_LORA_APPLY, .n = 256, .hidden = 4096, .rank = 16, .adapters = 64}},
    /* prefill-sized batch */
    {.c = {.op = SONA_OP_LORA_APPLY, .n = 4096, .hidden = 4096, .rank = 16, .adapters = 64}, .large = 1},
    /* lora_grad */
    {.c = {.op = SONA_OP_LORA_GRAD, .n = 64, .hidden = 256, .rank = 1, .adapters = 8}},
    {.c = {.op = SONA_OP_LORA_GRAD, .n = 256, .hidden = 2048, .rank = 16, .adapters = 8}},
    {.c = {.op = SONA_OP_LORA_GRAD, .n = 1024, .hidden = 4096, .rank = 16, .adapters = 64}, .large = 1},
    /* param_update */
    {.c = {.op = SONA_OP_PARAM_UPDATE, .segments = 1, .len = 1000, .with_clip = 1}},
    {.c = {.op = SONA_OP_PARAM_UPDATE, .segments = 1, .len = 100000, .with_ewc = 1, .with_fisher = 1, .with_clip = 1}},
    /* 64 adapters of rank 16 x 4096, one clipping segment each */
    {.c = {.op = SONA_OP_PARAM_UPDATE, .segments = 64, .len = 65536, .with_ewc = 1, .with_fisher = 1, .with_clip = 1}},
    /* sqdist_argmin */
    {.c = {.op = SONA_OP_SQDIST_ARGMIN, .n = 1000, .k = 50, .d = 256}},
    {.c = {.op = SONA_OP_SQDIST_ARGMIN, .n = 5000, .k = 100, .d = 256}},
    {.c = {.op = SONA_OP_SQDIST_ARGMIN, .n = 100000, .k = 1000, .d = 256}, .large = 1, .slow_cpu = 1},
    /* cluster_sums */
    {.c = {.op = SONA_OP_CLUSTER_SUMS, .n = 1000, .k = 50, .d = 256}},
    {.c = {.op = SONA_OP_CLUSTER_SUMS, .n = 100000, .k = 1000, .d = 256}},
    /* knn_exact */
    {.c = {.op = SONA_OP_KNN_EXACT, .m = 1, .n = 10000, .d = 256, .k = 10}},
    {.c = {.op = SONA_OP_KNN_EXACT, .m = 64, .n = 10000, .d = 256, .k = 10}},
    {.c = {.op = SONA_OP_KNN_EXACT, .m = 1000, .n = 100000, .d = 256, .k = 10}, .large = 1, .slow_cpu = 1},
    {.c = {.op = SONA_OP_KNN_EXACT, .m = 10000, .n = 1000000, .d = 256, .k = 10}, .gpu_only = 1},
    /* gemm */
    {.c = {.op = SONA_OP_GEMM, .m = 256, .n = 256, .k = 256}},
    {.c = {.op = SONA_OP_GEMM, .m = 4096, .n = 16, .k = 4096, .trans_b = 1}}, /* X A^T of a Base-LoRA batch */
    {.c = {.op = SONA_OP_GEMM, .m = 1024, .n = 1024, .k = 1024}, .large = 1, .slow_cpu = 1},
    {.c = {.op = SONA_OP_GEMM, .m = 4096, .n = 4096, .k = 4096}, .gpu_only = 1},
    /* one k-means Lloyd iteration (sqdist_argmin, cluster_sums, the host's centroid update) */
    {.lloyd = 1, .c = {.op = SONA_OP_SQDIST_ARGMIN, .n = 5000, .k = 100, .d = 256}},
    {.lloyd = 1, .c = {.op = SONA_OP_SQDIST_ARGMIN, .n = 1000000, .k = 1000, .d = 256}, .gpu_only = 1},
};
/* clang-format on */
const size_t op_bench_case_count = sizeof op_bench_cases / sizeof op_bench_cases[0];

void op_case_describe(const op_case *c, char *buf, size_t len)
{
    switch (c->op) {
    case SONA_OP_LORA_APPLY:
    case SONA_OP_LORA_GRAD:
        snprintf(buf, len, "%s n=%u h=%u r=%u adapters=%u%s", sona_op_name(c->op), c->n, c->hidden,
                 c->rank, c->adapters, c->in_place ? " in-place" : "");
        break;
    case SONA_OP_PARAM_UPDATE:
        snprintf(buf, len, "param_update %ux%u%s%s%s", c->segments, c->len, c->with_clip ? " clip" : "",
                 c->with_ewc ? " ewc" : "", c->with_fisher ? " fisher" : "");
        break;
    case SONA_OP_SQDIST_ARGMIN:
        snprintf(buf, len, "sqdist_argmin n=%u k=%u d=%u", c->n, c->k, c->d);
        break;
    case SONA_OP_KNN_EXACT:
        snprintf(buf, len, "knn_exact m=%u n=%u d=%u k=%u", c->m, c->n, c->d, c->k);
        break;
    case SONA_OP_GEMM:
        snprintf(buf, len, "gemm m=%u n=%u k=%u%s%s", c->m, c->n, c->k, c->trans_a ? " At" : "",
                 c->trans_b ? " Bt" : "");
        break;
    case SONA_OP_CLUSTER_SUMS:
        snprintf(buf, len, "cluster_sums n=%u k=%u d=%u", c->n, c->k, c->d);
        break;
    default:
        snprintf(buf, len, "unknown op");
    }
}

/* Host output array with guard bands; returns the pointer to the first element. */
static float *guarded_alloc(size_t n)
{
    float *base = malloc((n + 2 * GUARD) * sizeof *base);
    for (size_t i = 0; i < n + 2 * GUARD; i++)
        base[i] = guard_value;
    return base + GUARD;
}
static void guarded_free(void *p)
{
    if (p)
        free((float *)p - GUARD);
}
static int guards_intact(const void *p, size_t n)
{
    const float *f = (const float *)p;
    for (size_t i = 1; i <= GUARD; i++)
        if (memcmp(&f[-(ptrdiff_t)i], &guard_value, sizeof(float)) ||
            memcmp(&f[n - 1 + i], &guard_value, sizeof(float)))
            return 0;
    return 1;
}

static void alloc_outputs(op_instance *in, size_t f0, size_t f1, size_t iout)
{
    in->out_len[0] = f0;
    in->out_len[1] = f1;
    in->iout_len = iout;
    for (int o = 0; o < 2; o++) {
        size_t n = in->out_len[o];
        if (!n)
            continue;
        in->ref[o] = calloc(n, sizeof(double));
        in->mag[o] = calloc(n, sizeof(double));
        in->got[o] = guarded_alloc(n);
    }
    if (iout) {
        in->iref = calloc(iout, sizeof(int32_t));
        in->igot = (int32_t *)guarded_alloc(iout);
    }
}

void op_ref_lora_row(const float *x, size_t H, size_t r, const float *A, const float *Bt, double s, double *y,
                     double *mag)
{
    for (size_t h = 0; h < H; h++) {
        y[h] = x[h];
        mag[h] = fabs(x[h]);
    }
    for (size_t j = 0; j < r; j++) {
        double t = 0, tm = 0;
        for (size_t h = 0; h < H; h++) {
            t += (double)A[j * H + h] * x[h];
            tm += fabs((double)A[j * H + h] * x[h]);
        }
        for (size_t h = 0; h < H; h++) {
            y[h] += Bt[j * H + h] * s * t;
            mag[h] += fabs(Bt[j * H + h] * s) * tm;
        }
    }
}

static void ref_lora_apply(op_instance *in)
{
    const op_case *c = &in->c;
    const size_t H = c->hidden, r = c->rank;
    for (size_t i = 0; i < c->n; i++) {
        const int id = in->ids[i];
        const size_t at = (size_t)(id < 0 ? 0 : id) * r * H;
        op_ref_lora_row(in->x + i * H, H, id < 0 ? 0 : r, in->A + at, in->Bt + at, id < 0 ? 0 : in->scale[id],
                        in->ref[0] + i * H, in->mag[0] + i * H);
    }
}

static void ref_lora_grad(op_instance *in)
{
    const op_case *c = &in->c;
    const size_t H = c->hidden, r = c->rank, total = (size_t)c->adapters * r * H;
    for (size_t i = 0; i < total; i++) {
        in->ref[0][i] = in->gA0[i];
        in->mag[0][i] = fabs(in->gA0[i]);
        in->ref[1][i] = in->gBt0[i];
        in->mag[1][i] = fabs(in->gBt0[i]);
    }
    for (size_t i = 0; i < c->n; i++) {
        const int id = in->ids[i];
        if (id < 0)
            continue;
        const float *x = in->x + i * H, *d = in->d + i * H;
        const size_t off = (size_t)id * r * H;
        const double cw = (double)in->wt[i] * in->scale[id];
        for (size_t j = 0; j < r; j++) {
            double u = 0, um = 0, v = 0, vm = 0;
            for (size_t h = 0; h < H; h++) {
                u += (double)in->A[off + j * H + h] * x[h];
                um += fabs((double)in->A[off + j * H + h] * x[h]);
                v += (double)in->Bt[off + j * H + h] * d[h];
                vm += fabs((double)in->Bt[off + j * H + h] * d[h]);
            }
            for (size_t h = 0; h < H; h++) {
                in->ref[0][off + j * H + h] += cw * v * x[h];
                in->mag[0][off + j * H + h] += fabs(cw * x[h]) * vm;
                in->ref[1][off + j * H + h] += cw * u * d[h];
                in->mag[1][off + j * H + h] += fabs(cw * d[h]) * um;
            }
        }
    }
}

static void ref_param_update(op_instance *in)
{
    const op_case *c = &in->c;
    for (size_t s = 0; s < c->segments; s++) {
        const size_t base = s * c->len;
        double cc = 1.0;
        if (in->clip > 0) {
            double ss = 0;
            for (size_t i = 0; i < c->len; i++)
                ss += (double)in->g[base + i] * in->g[base + i];
            if (sqrt(ss) > in->clip)
                cc = in->clip / sqrt(ss);
        }
        for (size_t i = base; i < base + c->len; i++) {
            const double g = cc * in->g[i], th = in->theta0[i];
            double step = g, stepm = fabs(g);
            if (in->fsum) {
                step -= (double)in->lambda * ((double)in->fsum[i] * th - in->ftheta[i]);
                stepm += fabs(in->lambda) * (fabs(in->fsum[i] * th) + fabs(in->ftheta[i]));
            }
            in->ref[0][i] = th + (double)in->lr * step;
            in->mag[0][i] = fabs(th) + fabs(in->lr) * stepm;
            if (in->fisher0) {
                in->ref[1][i] = (double)in->decay * in->fisher0[i] + (1.0 - in->decay) * g * g;
                in->mag[1][i] = fabs(in->decay * in->fisher0[i]) + (1.0 - in->decay) * g * g;
            }
        }
    }
}

static double sqdist_d(const float *a, const float *b, size_t d)
{
    double acc = 0;
    for (size_t t = 0; t < d; t++) {
        const double diff = (double)a[t] - b[t];
        acc += diff * diff;
    }
    return acc;
}

static void ref_sqdist_argmin(op_instance *in)
{
    const op_case *c = &in->c;
    double cmax = 0;
    for (size_t j = 0; j < c->k; j++) {
        double nn = 0;
        for (size_t t = 0; t < c->d; t++)
            nn += (double)in->C[j * c->d + t] * in->C[j * c->d + t];
        if (nn > cmax)
            cmax = nn;
    }
    for (size_t i = 0; i < c->n; i++) {
        double best = INFINITY, xn = 0;
        int32_t bj = 0;
        for (size_t j = 0; j < c->k; j++) {
            const double dd = sqdist_d(in->X + i * c->d, in->C + j * c->d, c->d);
            if (dd < best) {
                best = dd;
                bj = (int32_t)j;
            }
        }
        for (size_t t = 0; t < c->d; t++)
            xn += (double)in->X[i * c->d + t] * in->X[i * c->d + t];
        in->ref[0][i] = best;
        /* Bound that covers the |x|^2 + |c|^2 - 2 x.c formulation used by GEMM-based kernels. */
        in->mag[0][i] = 2.0 * (xn + cmax);
        in->iref[i] = bj;
    }
}

static double cosine_d(const float *a, const float *b, size_t d)
{
    double ab = 0, aa = 0, bb = 0;
    for (size_t t = 0; t < d; t++) {
        ab += (double)a[t] * b[t];
        aa += (double)a[t] * a[t];
        bb += (double)b[t] * b[t];
    }
    return (aa > 0 && bb > 0) ? ab / sqrt(aa * bb) : 0.0;
}

static void ref_knn_exact(op_instance *in)
{
    const op_case *c = &in->c;
    double *all = malloc(c->n * sizeof *all);
    for (size_t q = 0; q < c->m; q++) {
        for (size_t i = 0; i < c->n; i++)
            all[i] = cosine_d(in->Q + q * c->d, in->P + i * c->d, c->d);
        /* Selection of the k best, lowest index first on ties. */
        for (size_t t = 0; t < c->k; t++) {
            int32_t bi = -1;
            double bs = -INFINITY;
            for (size_t i = 0; i < c->n; i++)
                if (all[i] > bs) {
                    bs = all[i];
                    bi = (int32_t)i;
                }
            in->ref[0][q * c->k + t] = bs;
            in->mag[0][q * c->k + t] = 1.0;
            in->iref[q * c->k + t] = bi;
            if (bi >= 0)
                all[bi] = -HUGE_VAL;
        }
    }
    free(all);
}

static void ref_gemm(op_instance *in)
{
    const op_case *c = &in->c;
    const size_t M = c->m, N = c->n, K = c->k;
    for (size_t i = 0; i < M; i++)
        for (size_t j = 0; j < N; j++) {
            double acc = 0, am = 0;
            for (size_t p = 0; p < K; p++) {
                const double a = c->trans_a ? in->gemmA[p * M + i] : in->gemmA[i * K + p];
                const double b = c->trans_b ? in->gemmB[j * K + p] : in->gemmB[p * N + j];
                acc += a * b;
                am += fabs(a * b);
            }
            const double c0 = in->gemmC0[i * N + j];
            in->ref[0][i * N + j] = in->alpha * acc + in->beta * c0;
            in->mag[0][i * N + j] = fabs(in->alpha) * am + fabs(in->beta * c0);
        }
}

static void ref_cluster_sums(op_instance *in)
{
    const op_case *c = &in->c;
    for (size_t i = 0; i < c->n; i++) {
        const int32_t j = in->iin[i];
        if (j < 0 || j >= (int32_t)c->k)
            continue;
        for (size_t t = 0; t < c->d; t++) {
            in->ref[0][(size_t)j * c->d + t] += in->X[i * c->d + t];
            in->mag[0][(size_t)j * c->d + t] += fabs(in->X[i * c->d + t]);
        }
        in->iref[j]++;
    }
}

int op_instance_prepare_inputs(op_instance *in, const op_case *c, uint64_t seed)
{
    memset(in, 0, sizeof *in);
    in->c = *c;
    in->seed = seed;
    sona_rng r;
    sona_rng_seed(&r, seed, (uint64_t)c->op * 7919u + c->n * 31u + c->hidden + c->d + c->len);
    switch (c->op) {
    case SONA_OP_LORA_APPLY:
    case SONA_OP_LORA_GRAD: {
        const size_t H = c->hidden, w = (size_t)c->adapters * c->rank * H;
        in->ids = malloc(c->n * sizeof *in->ids);
        for (size_t i = 0; i < c->n; i++) /* about one row in five uses no adapter */
            in->ids[i] = sona_rng_below(&r, 5) == 0 && c->n > 1 ? -1
                                                                 : (int32_t)sona_rng_below(&r, c->adapters);
        in->x = new_uniform(&r, c->n * H, -1, 1);
        in->A = new_uniform(&r, w, -0.5f, 0.5f);
        in->Bt = new_uniform(&r, w, -0.5f, 0.5f);
        in->scale = new_uniform(&r, c->adapters, 0.25f, 2.0f);
        if (c->op == SONA_OP_LORA_GRAD) {
            in->d = new_uniform(&r, c->n * H, -1, 1);
            in->wt = new_uniform(&r, c->n, -1, 1);
            in->gA0 = new_uniform(&r, w, -0.1f, 0.1f);
            in->gBt0 = new_uniform(&r, w, -0.1f, 0.1f);
        }
        break;
    }
    case SONA_OP_PARAM_UPDATE: {
        const size_t n = (size_t)c->segments * c->len;
        in->theta0 = new_uniform(&r, n, -1, 1);
        in->g = new_uniform(&r, n, -1, 1);
        in->lr = 0.05f;
        in->clip = c->with_clip ? 0.5f : 0.0f;
        if (c->with_ewc) {
            in->fsum = new_uniform(&r, n, 0, 2);
            in->ftheta = new_uniform(&r, n, -1, 1);
            in->lambda = 0.7f;
        }
        if (c->with_fisher) {
            in->fisher0 = new_uniform(&r, n, 0, 1);
            in->decay = 0.9f;
        }
        break;
    }
    case SONA_OP_SQDIST_ARGMIN:
        in->X = new_uniform(&r, (size_t)c->n * c->d, -1, 1);
        in->C = new_uniform(&r, (size_t)c->k * c->d, -1, 1);
        break;
    case SONA_OP_KNN_EXACT:
        in->Q = new_uniform(&r, (size_t)c->m * c->d, -1, 1);
        in->P = new_uniform(&r, (size_t)c->n * c->d, -1, 1);
        if (c->n > 3) /* a zero row: similarity 0 with everything */
            memset(in->P + 2 * (size_t)c->d, 0, c->d * sizeof(float));
        break;
    case SONA_OP_CLUSTER_SUMS:
        in->X = new_uniform(&r, (size_t)c->n * c->d, -1, 1);
        in->iin = malloc(c->n * sizeof *in->iin);
        for (size_t i = 0; i < c->n; i++) /* a few rows point outside 0..k-1 */
            in->iin[i] = sona_rng_below(&r, 20) == 0 ? (int32_t)c->k + 1 : (int32_t)sona_rng_below(&r, c->k);
        break;
    case SONA_OP_GEMM:
        in->gemmA = new_uniform(&r, (size_t)c->m * c->k, -1, 1);
        in->gemmB = new_uniform(&r, (size_t)c->k * c->n, -1, 1);
        in->gemmC0 = new_uniform(&r, (size_t)c->m * c->n, -1, 1);
        in->alpha = 1.25f;
        in->beta = (c->m + c->n) % 2 ? 0.5f : 0.0f;
        break;
    default:
        return -1;
    }
    return 0;
}

int op_instance_prepare(op_instance *in, const op_case *c, uint64_t seed)
{
    if (op_instance_prepare_inputs(in, c, seed) != 0)
        return -1;
    switch (c->op) {
    case SONA_OP_LORA_APPLY:
        alloc_outputs(in, (size_t)c->n * c->hidden, 0, 0);
        ref_lora_apply(in);
        break;
    case SONA_OP_LORA_GRAD: {
        const size_t w = (size_t)c->adapters * c->rank * c->hidden;
        alloc_outputs(in, w, w, 0);
        ref_lora_grad(in);
        break;
    }
    case SONA_OP_PARAM_UPDATE: {
        const size_t n = (size_t)c->segments * c->len;
        alloc_outputs(in, n, c->with_fisher ? n : 0, 0);
        ref_param_update(in);
        break;
    }
    case SONA_OP_SQDIST_ARGMIN:
        alloc_outputs(in, c->n, 0, c->n);
        ref_sqdist_argmin(in);
        break;
    case SONA_OP_KNN_EXACT:
        alloc_outputs(in, (size_t)c->m * c->k, 0, (size_t)c->m * c->k);
        ref_knn_exact(in);
        break;
    case SONA_OP_CLUSTER_SUMS:
        alloc_outputs(in, (size_t)c->k * c->d, 0, c->k);
        ref_cluster_sums(in);
        break;
    case SONA_OP_GEMM:
        alloc_outputs(in, (size_t)c->m * c->n, 0, 0);
        ref_gemm(in);
        break;
    default:
        return -1;
    }
    return 0;
}

void op_instance_free(op_instance *in)
{
    void *host[] = {in->ids, in->x, in->d, in->wt, in->A, in->Bt, in->scale, in->gA0, in->gBt0,
                    in->theta0, in->g, in->fsum, in->ftheta, in->fisher0, in->X, in->C, in->Q,
                    in->P, in->gemmA, in->gemmB, in->gemmC0, in->iin, in->ref[0], in->ref[1], in->mag[0],
                    in->mag[1], in->iref};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
        free(host[i]);
    guarded_free(in->got[0]);
    guarded_free(in->got[1]);
    guarded_free(in->igot);
    memset(in, 0, sizeof *in);
}

/* ---- running on a backend -------------------------------------------------------------- */

/* The case's args on host arrays: inputs from the instance, outputs in the guarded got arrays,
 * which first get the starting values of the buffers the op updates. */
static void host_args(op_instance *in, sona_op_args *a)
{
    const op_case *c = &in->c;
    const sona_lora_weights w = {.hidden = c->hidden, .rank = c->rank, .num_adapters = c->adapters,
                                 .A = in->A, .Bt = in->Bt, .scale = in->scale};
    const float *start[2] = {NULL, NULL};
    memset(a, 0, sizeof *a);
    switch (c->op) {
    case SONA_OP_LORA_APPLY:
        start[0] = c->in_place ? in->x : NULL;
        a->apply = (sona_lora_apply_args){.w = w, .n = c->n, .ids = in->ids,
                                          .x = c->in_place ? in->got[0] : in->x, .y = in->got[0]};
        break;
    case SONA_OP_LORA_GRAD:
        start[0] = in->gA0;
        start[1] = in->gBt0;
        a->grad = (sona_lora_grad_args){.w = w, .n = c->n, .ids = in->ids, .x = in->x, .d = in->d,
                                        .wt = in->wt, .gA = in->got[0], .gBt = in->got[1]};
        break;
    case SONA_OP_PARAM_UPDATE:
        start[0] = in->theta0;
        start[1] = in->fisher0;
        a->upd = (sona_param_update_args){.segments = c->segments, .len = c->len, .theta = in->got[0],
                                          .g = in->g, .fisher_sum = in->fsum, .fisher_theta = in->ftheta,
                                          .fisher = in->got[1], .lr = in->lr, .lambda = in->lambda,
                                          .clip_norm = in->clip, .decay = in->decay};
        break;
    case SONA_OP_SQDIST_ARGMIN:
        a->sq = (sona_sqdist_argmin_args){.n = c->n, .k = c->k, .d = c->d, .X = in->X, .C = in->C,
                                          .idx = in->igot, .dist = in->got[0]};
        break;
    case SONA_OP_KNN_EXACT:
        a->knn = (sona_knn_exact_args){.m = c->m, .n = c->n, .d = c->d, .k = c->k, .Q = in->Q, .P = in->P,
                                       .idx = in->igot, .sim = in->got[0]};
        break;
    case SONA_OP_CLUSTER_SUMS:
        a->cs = (sona_cluster_sums_args){.n = c->n, .k = c->k, .d = c->d, .X = in->X, .idx = in->iin,
                                         .sums = in->got[0], .counts = (uint32_t *)in->igot};
        break;
    case SONA_OP_GEMM:
        start[0] = in->gemmC0;
        a->gemm = (sona_gemm_args){.m = c->m, .n = c->n, .k = c->k, .trans_a = c->trans_a,
                                   .trans_b = c->trans_b, .alpha = in->alpha, .beta = in->beta,
                                   .A = in->gemmA, .B = in->gemmB, .C = in->got[0]};
        break;
    default: break;
    }
    for (int o = 0; o < 2; o++)
        if (start[o])
            memcpy(in->got[o], start[o], in->out_len[o] * sizeof(float));
}

sona_status op_instance_run(op_instance *in, const sona_backend *b, char *msg, size_t msg_len)
{
    msg[0] = '\0';
    sona_op_args host;
    host_args(in, &host);
    if (!sona_backend_supports(b, in->c.op, &host)) {
        snprintf(msg, msg_len, "%s does not support this op or shape", b->name);
        return SONA_E_UNSUPPORTED;
    }
    /* On host backends the op writes the guarded arrays themselves. */
    const sona_status st = sona_op_run_host(b, in->c.op, &host, sona_op_call);
    if (st != SONA_OK)
        snprintf(msg, msg_len, "%s failed: %s (%s)", b->name, sona_status_str(st),
                 b->last_error ? b->last_error(b->ctx) : "");
    return st;
}

/* ---- checking -------------------------------------------------------------------------- */

static int within(double got, double ref, double mag, size_t K)
{
    const double tol = 2.0 * (double)(K + 4) * U * mag + 1e-35;
    return fabs(got - ref) <= tol && isfinite(got) == isfinite(ref);
}

int op_instance_check(const op_instance *in, char *msg, size_t msg_len)
{
    const op_case *c = &in->c;
    for (int o = 0; o < 2; o++)
        if (in->out_len[o] && !guards_intact(in->got[o], in->out_len[o])) {
            snprintf(msg, msg_len, "output %d: guard values around the output were overwritten", o);
            return 0;
        }
    if (in->iout_len && !guards_intact(in->igot, in->iout_len)) {
        snprintf(msg, msg_len, "index output: guard values around the output were overwritten");
        return 0;
    }
    size_t K = 0;
    switch (c->op) {
    case SONA_OP_LORA_APPLY: K = c->hidden + c->rank; break;
    case SONA_OP_LORA_GRAD: K = c->hidden + c->n + 2; break;
    case SONA_OP_PARAM_UPDATE: K = c->len + 8; break;
    case SONA_OP_GEMM: K = c->k + 2; break;
    case SONA_OP_SQDIST_ARGMIN: K = 2 * c->d + 4; break;
    case SONA_OP_KNN_EXACT: K = 3 * c->d + 16; break;
    case SONA_OP_CLUSTER_SUMS: K = c->n + 2; break;
    default: break;
    }
    if (c->op == SONA_OP_SQDIST_ARGMIN) {
        for (size_t i = 0; i < c->n; i++) {
            const int32_t j = in->igot[i];
            if (j < 0 || j >= (int32_t)c->k) {
                snprintf(msg, msg_len, "row %zu: index %d out of range", i, j);
                return 0;
            }
            const double dj = sqdist_d(in->X + i * c->d, in->C + (size_t)j * c->d, c->d);
            if (!within(dj, in->ref[0][i], in->mag[0][i], K) || !within(in->got[0][i], dj, in->mag[0][i], K)) {
                snprintf(msg, msg_len, "row %zu: got index %d dist %.9g (true %.9g), best %d at %.9g",
                         i, j, in->got[0][i], dj, in->iref[i], in->ref[0][i]);
                return 0;
            }
        }
        return 1;
    }
    if (c->op == SONA_OP_KNN_EXACT) {
        for (size_t q = 0; q < c->m; q++)
            for (size_t t = 0; t < c->k; t++) {
                const size_t at = q * c->k + t;
                const int32_t i = in->igot[at];
                const double want = in->ref[0][at];
                if (in->iref[at] < 0) {
                    if (i != -1 || !(isinf(in->got[0][at]) && in->got[0][at] < 0)) {
                        snprintf(msg, msg_len, "query %zu rank %zu: expected the -1/-inf tail", q, t);
                        return 0;
                    }
                    continue;
                }
                if (i < 0 || i >= (int32_t)c->n) {
                    snprintf(msg, msg_len, "query %zu rank %zu: index %d out of range", q, t, i);
                    return 0;
                }
                for (size_t u = 0; u < t; u++)
                    if (in->igot[q * c->k + u] == i) {
                        snprintf(msg, msg_len, "query %zu: index %d returned twice", q, i);
                        return 0;
                    }
                const double si = cosine_d(in->Q + q * c->d, in->P + (size_t)i * c->d, c->d);
                if (!within(si, want, 1.0, K) || !within(in->got[0][at], si, 1.0, K)) {
                    snprintf(msg, msg_len,
                             "query %zu rank %zu: got index %d sim %.9g (true %.9g), want %d at %.9g", q,
                             t, i, in->got[0][at], si, in->iref[at], want);
                    return 0;
                }
            }
        return 1;
    }
    if (c->op == SONA_OP_CLUSTER_SUMS)
        for (size_t j = 0; j < c->k; j++)
            if (in->igot[j] != in->iref[j]) {
                snprintf(msg, msg_len, "cluster %zu: count %d, want %d", j, in->igot[j], in->iref[j]);
                return 0;
            }
    for (int o = 0; o < 2; o++)
        for (size_t i = 0; i < in->out_len[o]; i++)
            if (!within(in->got[o][i], in->ref[o][i], in->mag[o][i], K)) {
                snprintf(msg, msg_len, "output %d element %zu: got %.9g, want %.9g (bound %.3g)", o, i,
                         in->got[o][i], in->ref[o][i], 2.0 * (double)(K + 4) * U * in->mag[o][i]);
                return 0;
            }
    return 1;
}
