/* SPDX-License-Identifier: MIT */
/* Spec groups dream_generation (1,000 / 10,000 / 50,000 memory nodes) and dream_evaluation:
 * dreams are walks over the HNSW graph of a pattern bank (src/core/patterns/dream.h). Memory nodes are
 * patterns with the spec's fields: a random 256-float embedding in [0, 1), an access count
 * below 100 and an importance in [0, 1) (the pattern's average quality). */
#include "bench.h"

#include "common/rng.h"
#include "core/patterns/dream.h"

#include <stdio.h>
#include <math.h>
#include <stdlib.h>

enum { DREAM_DIM = 256, DREAM_LENGTH = 15 };

/* A bank of n memory nodes. The graph is built with ef_construction 40 to keep set-up short;
 * a walk only reads the links. */
sona_bank *bench_dream_bank(uint32_t n, uint64_t seed);
sona_bank *bench_dream_bank(uint32_t n, uint64_t seed)
{
    sona_bank_config c;
    sona_bank_config_default(&c, DREAM_DIM);
    c.capacity = n;
    c.index.ef_construction = 40;
    c.index.initial_capacity = n;
    sona_bank *b = NULL;
    if (sona_bank_create(&c, &b) != SONA_OK)
        return NULL;
    sona_rng r;
    sona_rng_seed(&r, seed, 0);
    float v[DREAM_DIM];
    for (uint32_t i = 0; i < n; i++) {
        for (int h = 0; h < DREAM_DIM; h++)
            v[h] = sona_rng_uniform(&r);
        sona_pattern p = {.id = i + 1, .size = 1, .total_weight = 1.0, .avg_quality = sona_rng_uniform(&r),
                          .access_count = sona_rng_below(&r, 100)};
        if (sona_bank_pattern_restore(b, &p, v) != SONA_OK) {
            sona_bank_destroy(b);
            return NULL;
        }
    }
    return b;
}

typedef struct dream_case {
    sona_bank *bank;
    sona_dream_visits state;
    sona_dream dream;
    sona_dream_params params;
    sona_rng rng;
    double path_sum;
    uint64_t dreams;
} dream_case;

static int generate_one(void *arg)
{
    dream_case *c = arg;
    if (sona_dream_generate(c->bank, &c->state, &c->params, &c->rng, &c->dream) != SONA_OK)
        return -1;
    c->path_sum += c->dream.len;
    c->dreams++;
    return 0;
}

static void run_dream_generation(bench_ctx *ctx)
{
    static const struct {
        uint32_t nodes;
        double expected_ms;
        const char *name;
    } cases[] = {{1000, 12, "1000"}, {10000, 45, "10000"}, {50000, 85, "50000"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bench_row row = {.group = "dream_generation", .name = cases[i].name, .backend = "cpu",
                               .target_us = 100000, .stretch_us = 50000,
                               .expected_us = cases[i].expected_ms * 1000};
        dream_case c = {.params = {.length = DREAM_LENGTH, .temperature = 0.5f, .jump_prob = 0.1f,
                                   .novelty_bonus = 0.5f}};
        sona_rng_seed(&c.rng, 7, i);
        if (!(c.bank = bench_dream_bank(cases[i].nodes, 42)) ||
            sona_dream_init(&c.dream, DREAM_DIM, DREAM_LENGTH) != SONA_OK) {
            bench_skip(ctx, &row, "out of memory building the memory nodes");
            sona_bank_destroy(c.bank);
            continue;
        }
        bench_measure(ctx, &row, generate_one, &c);
        if (c.dreams)
            bench_report(ctx, &row, "avg_path_length", c.path_sum / (double)c.dreams, "nodes");
        sona_dream_free(&c.dream);
        sona_idmap_free(&c.state.visits);
        sona_bank_destroy(c.bank);
    }
}

static int evaluate_one(void *arg)
{
    sona_dream_evaluate(arg);
    return 0;
}

static void run_dream_evaluation(bench_ctx *ctx)
{
    const bench_row row = {.group = "dream_evaluation", .name = "path15/256", .backend = "cpu",
                           .target_us = 50000};
    sona_dream d;
    if (sona_dream_init(&d, DREAM_DIM, DREAM_LENGTH) != SONA_OK) {
        bench_skip(ctx, &row, "out of memory");
        return;
    }
    sona_rng r;
    sona_rng_seed(&r, 3, 0);
    for (uint32_t i = 0; i < DREAM_LENGTH; i++) { /* the spec's dream: 15 nodes, 3 jumps */
        double n2 = 0;
        for (int h = 0; h < DREAM_DIM; h++) {
            const float v = sona_rng_uniform(&r);
            d.vecs[i * DREAM_DIM + h] = v;
            n2 += (double)v * v;
        }
        for (int h = 0; h < DREAM_DIM; h++)
            d.vecs[i * DREAM_DIM + h] /= (float)sqrt(n2);
        d.ids[i] = i;
        d.quality[i] = 0.5f;
        d.visits[i] = 10;
    }
    d.len = DREAM_LENGTH;
    d.jumps = 3;
    bench_measure(ctx, &row, evaluate_one, &d);
    sona_dream_free(&d);
}

const bench_group bench_dream_generation = {"dream_generation", "one dream over 1k/10k/50k memory nodes",
                                            run_dream_generation};
const bench_group bench_dream_evaluation = {"dream_evaluation", "novelty, coherence, utility, diversity of a 15-node dream",
                                            run_dream_evaluation};
