/* SPDX-License-Identifier: MIT */
/* EWC++ groups of the spec: fisher_update (one online Fisher EMA step) and ewc_constraints (the
 * penalised gradient with 5 stored tasks). Host-side work: backend "cpu". */
#include "bench.h"

#include "common/rng.h"
#include "support/fill.h"
#include <sona.h>

#include <stdio.h>
#include <stdlib.h>

typedef struct ewc_fixture {
    sona_ewc *ewc;
    float *theta, *g, *out;
    uint32_t n;
} ewc_fixture;

static int call_update_fisher(void *arg)
{
    ewc_fixture *f = arg;
    return sona_ewc_update_fisher(f->ewc, f->g, f->n) != SONA_OK;
}

static int call_constraints(void *arg)
{
    ewc_fixture *f = arg;
    return sona_ewc_apply_constraints(f->ewc, f->theta, f->g, f->out, f->n) != SONA_OK;
}

/* Random gradients (uniform [0, 0.01), as in the spec) and parameters; `tasks` snapshots,
 * each after 100 Fisher updates, with theta moved between them. */
static int fixture_init(ewc_fixture *f, uint32_t n, uint32_t tasks)
{
    *f = (ewc_fixture){.n = n};
    sona_ewc_config cfg;
    sona_ewc_config_default(&cfg, n);
    cfg.max_tasks = 5;
    f->theta = malloc(n * sizeof(float));
    f->g = malloc(n * sizeof(float));
    f->out = malloc(n * sizeof(float));
    if (!f->theta || !f->g || !f->out || sona_ewc_create(&cfg, &f->ewc) != SONA_OK)
        return -1;
    sona_rng r;
    sona_rng_seed(&r, 0xe3c, n);
    for (uint32_t t = 0; t < tasks; t++) {
        fill_uniform(&r, f->theta, n, -1.0f, 1.0f);
        for (int s = 0; s < 100; s++) {
            fill_uniform(&r, f->g, n, 0.0f, 0.01f);
            if (sona_ewc_update_fisher(f->ewc, f->g, n) != SONA_OK)
                return -1;
        }
        if (sona_ewc_end_task(f->ewc, f->theta, n) != SONA_OK)
            return -1;
    }
    fill_uniform(&r, f->g, n, 0.0f, 0.01f);
    return 0;
}

static void fixture_free(ewc_fixture *f)
{
    sona_ewc_destroy(f->ewc);
    free(f->theta);
    free(f->g);
    free(f->out);
}

static const uint32_t param_counts[] = {1000, 10000, 100000};

static void run_fisher(bench_ctx *ctx)
{
    static const double expected[] = {15, 120, 1150};
    for (int c = 0; c < 3; c++) {
        const uint32_t n = param_counts[c];
        char name[16];
        snprintf(name, sizeof name, "%u", n);
        const bench_row row = {.group = "fisher_update", .name = name, .backend = "cpu", .target_us = 1000,
                               .expected_us = expected[c], .flops = 3.0 * n, .bytes = 12.0 * n};
        ewc_fixture f;
        if (fixture_init(&f, n, 0) == 0)
            bench_measure(ctx, &row, call_update_fisher, &f);
        else
            bench_skip(ctx, &row, "setup failed (out of memory)");
        fixture_free(&f);
    }
}

static void run_constraints(bench_ctx *ctx)
{
    for (int c = 0; c < 3; c++) {
        const uint32_t n = param_counts[c];
        char name[24];
        snprintf(name, sizeof name, "%u/5tasks", n);
        const bench_row row = {.group = "ewc_constraints", .name = name, .backend = "cpu", .target_us = 500,
                               .flops = 4.0 * n, .bytes = 20.0 * n};
        ewc_fixture f;
        if (fixture_init(&f, n, 5) == 0)
            bench_measure(ctx, &row, call_constraints, &f);
        else
            bench_skip(ctx, &row, "setup failed (out of memory)");
        fixture_free(&f);
    }
}

const bench_group bench_fisher_update = {"fisher_update", "EWC++ online Fisher update (spec)", run_fisher};
const bench_group bench_ewc_constraints = {"ewc_constraints",
                                           "EWC++ constrained gradient, 5 stored tasks (spec)", run_constraints};
