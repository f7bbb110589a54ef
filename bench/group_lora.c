/* SPDX-License-Identifier: MIT */
/* LoRA groups of the spec (micro_lora_forward, gradient_accumulation, base_lora_forward) and
 * the batched multi-adapter apply, through the public sona_lora API on every backend: each CPU
 * variant (a handle created on that variant's table) and each GPU backend (per-call uploads and
 * downloads included, as a request would see them). */
#include "bench.h"

#include "common/rng.h"
#include "core/adapt/lora_internal.h"
#include "support/fill.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { INPUT_SETS = 8 }; /* inputs rotate over this many buffers so no cache flatters a call */

typedef struct lora_fixture {
    sona_lora *lora;
    uint32_t n;                 /* rows per call */
    int32_t *ids;
    float *x[INPUT_SETS], *d[INPUT_SETS], *y;
    unsigned next;
} lora_fixture;

static void fixture_free(lora_fixture *f)
{
    sona_lora_destroy(f->lora);
    for (int i = 0; i < INPUT_SETS; i++) {
        free(f->x[i]);
        free(f->d[i]);
    }
    free(f->y);
    free(f->ids);
}

/* A handle on backend b with random non-zero B for every adapter (a zero B would let a kernel
 * skip work), n rows per call spread over the adapters, and random inputs. */
static int fixture_init(lora_fixture *f, const sona_backend *b, const sona_lora_config *cfg, uint32_t n,
                        char *why, size_t why_len)
{
    *f = (lora_fixture){.n = n};
    if (sona_lora_create_on(cfg, b, &f->lora) != SONA_OK) {
        snprintf(why, why_len, "cannot create the adapters: %s", sona_lora_last_error(NULL));
        return -1;
    }
    sona_rng r;
    sona_rng_seed(&r, 0x5eed, cfg->hidden * 131u + cfg->rank);
    const size_t H = cfg->hidden, rows = (size_t)n * H;
    float *B = new_uniform(&r, H * cfg->rank, -0.5f, 0.5f);
    int ok = B != NULL;
    for (uint32_t a = 0; ok && a < cfg->count; a++)
        ok = sona_lora_set_weights(f->lora, (int32_t)a, NULL, B) == SONA_OK;
    free(B);
    f->ids = malloc(n * sizeof *f->ids);
    f->y = malloc(rows * sizeof *f->y);
    ok = ok && f->ids && f->y;
    for (uint32_t i = 0; ok && i < n; i++)
        f->ids[i] = (int32_t)(i % cfg->count);
    for (int s = 0; ok && s < INPUT_SETS; s++) {
        f->x[s] = new_uniform(&r, rows, -1, 1);
        f->d[s] = new_uniform(&r, rows, -1, 1);
        ok = f->x[s] && f->d[s];
    }
    if (!ok) {
        snprintf(why, why_len, "setup failed: %s", sona_lora_last_error(f->lora));
        fixture_free(f);
        return -1;
    }
    return 0;
}

static int call_forward(void *arg)
{
    lora_fixture *f = arg;
    const unsigned s = f->next++ % INPUT_SETS;
    return sona_lora_forward_batch(f->lora, f->n, f->ids, f->x[s], f->y) != SONA_OK;
}

static int call_accumulate(void *arg)
{
    lora_fixture *f = arg;
    const unsigned s = f->next++ % INPUT_SETS;
    return sona_lora_accumulate(f->lora, 0, f->x[s], f->d[s], 0.8f) != SONA_OK;
}

/* One case on every selected backend. expected_scalar / expected_vector: the spec's figure for
 * the scalar variant and for the vector variants and GPUs (the same where it gives one). */
static void run_case(bench_ctx *ctx, bench_row row, const sona_lora_config *cfg, uint32_t n, int grad,
                     double expected_scalar, double expected_vector)
{
    const sona_op op = grad ? SONA_OP_LORA_GRAD : SONA_OP_LORA_APPLY;
    const sona_backend *bs[16];
    const char *labels[16];
    const int nb = bench_backends(ctx, bs, labels, 16);
    for (int i = 0; i < nb; i++) {
        row.backend = labels[i];
        row.expected_us = bs[i]->host_memory && !strcmp(bs[i]->name, "scalar") ? expected_scalar : expected_vector;
        char why[300];
        if (!bench_backend_own_op(bs[i], op)) {
            snprintf(why, sizeof why, "%s has no %s kernel of its own (it would time the scalar one)",
                     labels[i], sona_op_name(op));
            bench_skip(ctx, &row, why);
            continue;
        }
        lora_fixture f;
        if (fixture_init(&f, bs[i], cfg, n, why, sizeof why) != 0) {
            bench_skip(ctx, &row, why);
            continue;
        }
        bench_measure(ctx, &row, grad ? call_accumulate : call_forward, &f);
        fixture_free(&f);
    }
}

static sona_lora_config config(sona_lora_kind kind, uint32_t hidden, uint32_t rank, uint32_t count)
{
    sona_lora_config cfg;
    sona_lora_config_default(&cfg, kind, hidden);
    cfg.rank = rank;
    cfg.count = count;
    return cfg;
}

/* ---- micro_lora_forward: one request through a rank 1-2 adapter ------------------------- */

static void run_micro_forward(bench_ctx *ctx)
{
    static const uint32_t hiddens[4] = {256, 512, 1024, 2048};
    /* The spec's table: [rank-1][hidden]: AVX2 and Scalar columns. */
    static const double avx2_us[2][4] = {{3.2, 5.8, 10.4, 19.7}, {5.1, 9.3, 17.2, 33.1}};
    static const double scalar_us[2][4] = {{12.5, 24.1, 47.3, 93.8}, {23.4, 46.2, 91.5, 182.4}};
    for (uint32_t rank = 1; rank <= 2; rank++)
        for (int h = 0; h < 4; h++) {
            char name[32];
            snprintf(name, sizeof name, "rank%u/%u", rank, hiddens[h]);
            const bench_row row = {.group = "micro_lora_forward", .name = name, .target_us = 50,
                                   .stretch_us = 20, .flops = 4.0 * hiddens[h] * rank};
            const sona_lora_config cfg = config(SONA_LORA_MICRO, hiddens[h], rank, 1);
            run_case(ctx, row, &cfg, 1, 0, scalar_us[rank - 1][h], avx2_us[rank - 1][h]);
        }
}

/* ---- gradient_accumulation: one learning signal into a rank-1 adapter -------------------- */

static void run_gradient_accumulation(bench_ctx *ctx)
{
    static const uint32_t hiddens[3] = {256, 512, 1024};
    static const double expected_us[3] = {8.3, 15.7, 30.2};
    for (int h = 0; h < 3; h++) {
        char name[32];
        snprintf(name, sizeof name, "%u", hiddens[h]);
        const bench_row row = {.group = "gradient_accumulation", .name = name, .target_us = 100,
                               .stretch_us = 50, .flops = 8.0 * hiddens[h]};
        const sona_lora_config cfg = config(SONA_LORA_MICRO, hiddens[h], 1, 1);
        run_case(ctx, row, &cfg, 1, 1, expected_us[h], expected_us[h]);
    }
}

/* ---- base_lora_forward: one layer of a rank 4-16 Base-LoRA ------------------------------- */

static void run_base_forward(bench_ctx *ctx)
{
    static const uint32_t ranks[3] = {4, 8, 16}, hiddens[3] = {512, 1024, 2048};
    static const double expected_us[3][3] = {{45, 85, 162}, {82, 158, 305}, {155, 298, 582}};
    for (int r = 0; r < 3; r++)
        for (int h = 0; h < 3; h++) {
            char name[32];
            snprintf(name, sizeof name, "rank%u/%u", ranks[r], hiddens[h]);
            const bench_row row = {.group = "base_lora_forward", .name = name, .target_us = 200,
                                   .stretch_us = 100, .flops = 4.0 * hiddens[h] * ranks[r]};
            const sona_lora_config cfg = config(SONA_LORA_BASE, hiddens[h], ranks[r], 1);
            run_case(ctx, row, &cfg, 1, 0, expected_us[r][h], expected_us[r][h]);
        }
}

/* ---- batched_lora_apply: a batch whose rows use different adapters (BGMV-like) ----------- */

static void run_batched_apply(bench_ctx *ctx)
{
    const uint32_t n = 64, hidden = 2048, rank = 16, adapters = 8;
    const bench_row row = {.group = "batched_lora_apply", .name = "64x2048/r16/8adapters",
                           .flops = 4.0 * n * hidden * rank};
    const sona_lora_config cfg = config(SONA_LORA_BASE, hidden, rank, adapters);
    run_case(ctx, row, &cfg, n, 0, 0, 0);
}

const bench_group bench_micro_lora_forward = {"micro_lora_forward",
                                              "Micro-LoRA forward, one request, rank 1-2 (spec)",
                                              run_micro_forward};
const bench_group bench_gradient_accumulation = {"gradient_accumulation",
                                                 "one learning signal into a rank-1 Micro-LoRA (spec)",
                                                 run_gradient_accumulation};
const bench_group bench_base_lora_forward = {"base_lora_forward", "Base-LoRA forward, one layer, rank 4-16 (spec)",
                                             run_base_forward};
const bench_group bench_batched_lora_apply = {"batched_lora_apply",
                                              "64 rows x 2048 x rank 16 over 8 adapters in one call",
                                              run_batched_apply};
