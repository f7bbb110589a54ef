/* SPDX-License-Identifier: MIT */
/* Loop C: dreams walk the pattern graph and are evaluated by the documented formulas, Phi is
 * in [0, 1], consolidation merges near-duplicates and keeps the rest, valuable dreams train
 * Base-LoRA, and a configured state path gets a loadable checkpoint. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/patterns/dream.h"
#include "engine/inspect.h"
#include "support/fill.h"

enum { H = 24 };

static sona_engine *make(const char *state_path)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, H);
    c.background_thread = 0;
    c.loop_b_threshold = 1u << 30;
    c.base_layers = 3;
    c.dreams_per_cycle = 20;
    c.dream_length = 6;
    c.dream_replay_min_score = 0.0f; /* replay every dream */
    if (state_path)
        snprintf(c.state_path, sizeof c.state_path, "%s", state_path);
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_OK, "%s", sona_last_error());
    return e;
}

/* The engine's bank, each call under its cycle lock (engine/inspect.h). */
static sona_status restore(sona_engine *e, const sona_pattern *p, const float *v)
{
    sona_bank *bank = eng_inspect_bank_begin(e);
    const sona_status st = sona_bank_pattern_restore(bank, p, v);
    eng_inspect_bank_end(e);
    return st;
}

static sona_status pattern_get(sona_engine *e, uint64_t id, sona_pattern *p, float *v)
{
    const sona_bank *bank = eng_inspect_bank_begin(e);
    const sona_status st = sona_bank_pattern_get(bank, id, p, v);
    eng_inspect_bank_end(e);
    return st;
}

static sona_status phi_of(sona_engine *e, float *phi)
{
    const sona_bank *bank = eng_inspect_bank_begin(e);
    const sona_status st = sona_pattern_phi(bank, phi);
    eng_inspect_bank_end(e);
    return st;
}

/* n patterns around random directions, restored straight into the engine's bank. */
static void add_patterns(sona_engine *e, sona_rng *r, uint32_t n, uint64_t first_id)
{
    float v[H];
    for (uint32_t i = 0; i < n; i++) {
        for (int h = 0; h < H; h++)
            v[h] = sona_rng_normal(r);
        sona_pattern p = {.id = first_id + i, .size = 1 + i % 5, .total_weight = 1.0,
                          .avg_quality = sona_rng_uniform(r), .access_count = 10};
        cr_assert_eq(restore(e, &p, v), SONA_OK, "%s", sona_last_error());
    }
}

Test(engine_dreams, evaluation_follows_the_documented_formulas)
{
    sona_dream d;
    cr_assert_eq(sona_dream_init(&d, 2, 3), SONA_OK);
    const float vecs[] = {1, 0, 0, 1, 1, 0}; /* orthogonal, then back */
    memcpy(d.vecs, vecs, sizeof vecs);
    const uint64_t ids[] = {1, 2, 1};
    memcpy(d.ids, ids, sizeof ids);
    d.quality[0] = 0.5f, d.quality[1] = 1.5f, d.quality[2] = 0.5f; /* 1.5 clamps to 1 */
    d.visits[0] = 0, d.visits[1] = 1, d.visits[2] = 3;
    d.len = 3;
    sona_dream_evaluate(&d);
    cr_assert_float_eq(d.utility, (0.5f + 1.0f + 0.5f) / 3, 1e-6);
    cr_assert_float_eq(d.novelty, (1.0f + 0.5f + 0.25f) / 3, 1e-6);
    cr_assert_float_eq(d.coherence, 0.5f, 1e-6);  /* both steps orthogonal: (1+0)/2 */
    cr_assert_float_eq(d.diversity, 1.0f, 1e-6);  /* distinct pairs (1,2),(2,1): cos 0 */
    cr_assert_float_eq(d.score, 0.35f * d.utility + 0.25f * d.coherence + 0.2f * d.novelty + 0.2f * d.diversity, 1e-6);
    sona_dream_free(&d);
}

Test(engine_dreams, deep_cycle_dreams_consolidates_and_checkpoints)
{
    const uint64_t seed = test_seed();
    printf("[engine_dreams] seed %" PRIu64 "\n", seed);
    char path[128];
    snprintf(path, sizeof path, "/tmp/sona_dreams_%ld.state", (long)getpid());
    sona_engine *e = make(path);
    sona_rng r;
    sona_rng_seed(&r, seed, 0);
    add_patterns(e, &r, 60, 100);
    /* A near-duplicate of pattern 100 and one of 101: both merge. */
    float c[H];
    sona_pattern p;
    for (uint64_t id = 100; id < 102; id++) {
        cr_assert_eq(pattern_get(e, id, &p, c), SONA_OK);
        c[0] += 1e-4f;
        p.id = id + 1000;
        p.size = 3;
        cr_assert_eq(restore(e, &p, c), SONA_OK);
    }
    cr_assert_eq(pattern_get(e, 100, &p, NULL), SONA_OK);
    const uint64_t size100 = p.size;
    float x[H], y[H];
    for (int h = 0; h < H; h++)
        x[h] = sona_rng_normal(&r);
    cr_assert_eq(sona_apply_layer(e, 0, x, y), SONA_OK);
    cr_assert_eq(memcmp(x, y, sizeof x), 0);

    cr_assert_eq(sona_deep_cycle(e), SONA_OK, "%s", sona_engine_last_error(e));
    sona_stats s;
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    printf("[engine_dreams] dreams %" PRIu64 " replayed %" PRIu64 " phi %.3f patterns %" PRIu64 "\n",
           s.dreams, s.dreams_replayed, s.last_phi, s.patterns);
    cr_assert_eq(s.dreams, 20);
    cr_assert_eq(s.dreams_replayed, 20);
    cr_assert_gt(s.last_phi, 0.0f);
    cr_assert_leq(s.last_phi, 1.0f);
    cr_assert_eq(s.patterns, 60, "near-duplicates were not merged (or others were)");
    cr_assert_eq(s.patterns_merged, 2);
    cr_assert_eq(pattern_get(e, 1100, &p, NULL), SONA_E_NOT_FOUND);
    cr_assert_eq(pattern_get(e, 100, &p, NULL), SONA_OK);
    cr_assert_eq(p.size, size100 + 3, "merged sizes add up");
    cr_assert_lt(p.access_count, 20, "importance (access count) decays");
    cr_assert_eq(s.loop_c_cycles, 1);
    cr_assert_geq(s.tasks, 1, "EWC++ consolidation stores a task");
    cr_assert_eq(sona_apply_layer(e, 0, x, y), SONA_OK);
    cr_assert_neq(memcmp(x, y, sizeof x), 0, "replayed dreams did not train Base-LoRA");

    /* The checkpoint loads into a fresh engine and gives the same Base-LoRA. */
    sona_engine *f = make(NULL);
    cr_assert_eq(sona_load(f, path), SONA_OK, "%s", sona_engine_last_error(f));
    float z[H];
    cr_assert_eq(sona_apply_layer(f, 0, x, z), SONA_OK);
    cr_assert_eq(memcmp(y, z, sizeof z), 0);
    sona_stats fs;
    sona_get_stats(f, &fs);
    cr_assert_eq(fs.patterns, 60);
    unlink(path);
    sona_engine_destroy(f);
    sona_engine_destroy(e);
}

Test(engine_dreams, phi_of_an_empty_and_a_single_component_graph)
{
    sona_engine *e = make(NULL);
    float phi = -1;
    cr_assert_eq(phi_of(e, &phi), SONA_OK);
    cr_assert_eq(phi, 0.0f);
    sona_rng r;
    sona_rng_seed(&r, 3, 0);
    add_patterns(e, &r, 30, 1);
    cr_assert_eq(phi_of(e, &phi), SONA_OK);
    /* HNSW links every node (one component); random directions: mean (1+cos)/2 near 0.5. */
    cr_assert_gt(phi, 0.4f);
    cr_assert_lt(phi, 0.8f);
    sona_engine_destroy(e);
}
