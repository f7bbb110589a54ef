/* SPDX-License-Identifier: MIT */
/* The ReasoningBank: extraction finds the clusters, extracting again merges instead of
 * duplicating, prune and capacity behave, search stays in step with the patterns, a bank
 * restored with its counters extracts as the original, and bad input gets a status and changes
 * nothing. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "core/patterns/bank_device.h"
#include "dispatch/cost.h"
#include "dispatch/dispatch.h"
#include "support/device_skip.h"
#include "support/fill.h"
#include <sona.h>

#define DIM 37

typedef struct fake_clock {
    uint64_t ms;
} fake_clock;

static uint64_t read_clock(void *ctx) { return ((fake_clock *)ctx)->ms; }

static double cosine(const float *a, const float *b);

static sona_bank *make_merging_at(uint32_t k, fake_clock *clk, float merge_threshold)
{
    sona_bank_config cfg;
    sona_bank_config_default(&cfg, DIM);
    cfg.k_clusters = k;
    cfg.merge_threshold = merge_threshold;
    cfg.index.ef_construction = 64;
    cfg.clock_ms = read_clock;
    cfg.clock_ctx = clk;
    sona_bank *b = NULL;
    cr_assert_eq(sona_bank_create(&cfg, &b), SONA_OK, "%s", sona_last_error());
    return b;
}

static sona_bank *make(uint32_t k, fake_clock *clk)
{
    sona_bank_config cfg;
    sona_bank_config_default(&cfg, DIM);
    return make_merging_at(k, clk, cfg.merge_threshold);
}

/* n rows around `groups` well-separated random directions; row i belongs to group i % groups. */
static float *rows(uint64_t seed, uint32_t n, uint32_t groups)
{
    sona_rng r;
    sona_rng_seed(&r, seed, 3);
    float *c = malloc((size_t)groups * DIM * sizeof *c), *X = malloc((size_t)n * DIM * sizeof *X);
    for (size_t i = 0; i < (size_t)groups * DIM; i++)
        c[i] = 10.0f * sona_rng_normal(&r);
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t t = 0; t < DIM; t++)
            X[(size_t)i * DIM + t] = c[(size_t)(i % groups) * DIM + t] + 0.3f * sona_rng_normal(&r);
    free(c);
    return X;
}

static void add_all(sona_bank *b, const float *X, uint32_t n, float quality)
{
    float *q = malloc(n * sizeof *q);
    for (uint32_t i = 0; i < n; i++)
        q[i] = quality;
    cr_assert_eq(sona_bank_add_batch(b, n, X, DIM, q, NULL, NULL), SONA_OK, "%s", sona_bank_last_error(b));
    free(q);
}

Test(bank, extracting_twice_does_not_duplicate)
{
    const uint64_t seed = test_seed();
    printf("[bank] no duplicates seed %" PRIu64 "\n", seed);
    fake_clock clk = {1000};
    sona_bank *b = make(5, &clk);
    const uint32_t n = 203;
    float *X = rows(seed, n, 5);
    const char *routes[203];
    float q[203];
    for (uint32_t i = 0; i < n; i++) {
        routes[i] = (i % 2) ? "code" : "math";
        q[i] = (i % 2) ? 0.8f : 0.4f;
    }
    cr_assert_eq(sona_bank_add_batch(b, n, X, DIM, q, NULL, routes), SONA_OK);
    sona_bank_extract_result res;
    cr_assert_eq(sona_bank_extract(b, &res), SONA_OK);
    cr_assert_eq(res.trajectories, n);
    cr_assert_eq(res.created, 5);
    cr_assert_eq(sona_bank_pattern_count(b), 5);
    cr_assert_eq(sona_bank_pending(b), 0);
    /* Same data again: every cluster merges. */
    cr_assert_eq(sona_bank_add_batch(b, n, X, DIM, q, NULL, routes), SONA_OK);
    cr_assert_eq(sona_bank_extract(b, &res), SONA_OK);
    cr_assert_eq(res.created, 0);
    cr_assert_eq(res.merged, 5);
    cr_assert_eq(sona_bank_pattern_count(b), 5);
    uint64_t total = 0;
    for (uint32_t i = 0; i < 5; i++) {
        sona_pattern p;
        float c[DIM];
        cr_assert_eq(sona_bank_pattern_at(b, i, &p, c), SONA_OK);
        total += p.size;
        cr_assert_float_eq(p.total_weight, (double)p.size, 1e-9);
        cr_assert_eq(p.route_count, 2);
        uint64_t rc_sum = 0;
        for (uint32_t r = 0; r < p.route_count; r++) {
            const char *name;
            uint64_t cnt;
            float mq;
            cr_assert_eq(sona_bank_pattern_route(b, p.id, r, &name, &cnt, &mq), SONA_OK);
            cr_assert_float_eq(mq, strcmp(name, "code") ? 0.4f : 0.8f, 1e-6f);
            rc_sum += cnt;
        }
        cr_assert_eq(rc_sum, p.size);
        /* The pattern's own centroid finds it first. */
        uint64_t id;
        float sim;
        uint32_t found;
        cr_assert_eq(sona_bank_search(b, c, DIM, 1, &id, &sim, &found), SONA_OK);
        cr_assert(found == 1 && id == p.id);
        cr_assert_float_eq(sim, 1.0f, 1e-5f);
    }
    cr_assert_eq(total, 2 * n);
    sona_bank_stats st;
    cr_assert_eq(sona_bank_stats_get(b, &st), SONA_OK);
    cr_assert_eq(st.trajectories_added, 2 * n);
    cr_assert_eq(st.extractions, 2);
    cr_assert_eq(st.patterns_created, 5);
    cr_assert_eq(st.patterns_merged, 5);
    cr_assert_eq(st.searches, 5);
    free(X);
    sona_bank_destroy(b);
}

static size_t heap_bytes(void)
{
    const struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;
}

/* An extraction keeps its memory for the next one only while it is at most twice what it
 * needed: after an occasional large batch, ordinary ones release its memory. Heap seen through
 * glibc's mallinfo2: skipped where it does not see the allocations (the sanitizers' allocator). */
Test(bank, large_batch_memory_released_by_ordinary_ones)
{
    fake_clock clk = {1000};
    sona_bank *b = make(8, &clk);
    const uint32_t ordinary = 100, large = 50000;
    float *small_rows = rows(21, ordinary, 8), *large_rows = rows(22, large, 8);
    add_all(b, small_rows, ordinary, 0.5f);
    cr_assert_eq(sona_bank_extract(b, NULL), SONA_OK);
    const size_t before = heap_bytes();
    add_all(b, large_rows, large, 0.5f);
    cr_assert_eq(sona_bank_extract(b, NULL), SONA_OK);
    const size_t after_large = heap_bytes();
    if (after_large < before + (size_t)large * DIM * sizeof(float))
        cr_skip_test("mallinfo2 does not see this allocator (%zu -> %zu bytes)", before, after_large);
    for (int i = 0; i < 3; i++) {
        add_all(b, small_rows, ordinary, 0.5f);
        cr_assert_eq(sona_bank_extract(b, NULL), SONA_OK);
    }
    const size_t after = heap_bytes();
    cr_assert_lt(after, before + (1u << 20), "heap %zu -> %zu after the large batch -> %zu", before,
                 after_large, after);
    sona_bank_destroy(b);
    free(small_rows);
    free(large_rows);
}

Test(bank, prune_low_quality_and_stale)
{
    const uint64_t seed = test_seed();
    printf("[bank] prune seed %" PRIu64 "\n", seed);
    fake_clock clk = {5000};
    sona_bank_config cfg;
    sona_bank_config_default(&cfg, DIM);
    cfg.k_clusters = 4;
    cfg.min_quality = 0.5f;
    cfg.stale_after_ms = 1000;
    cfg.clock_ms = read_clock;
    cfg.clock_ctx = &clk;
    sona_bank *b = NULL;
    cr_assert_eq(sona_bank_create(&cfg, &b), SONA_OK);
    const uint32_t n = 40;
    float *X = rows(seed, n, 4);
    float q[40];
    for (uint32_t i = 0; i < n; i++)
        q[i] = (i % 4 == 3) ? 0.1f : 0.9f; /* group 3 is poor */
    cr_assert_eq(sona_bank_add_batch(b, n, X, DIM, q, NULL, NULL), SONA_OK);
    sona_bank_extract_result res;
    cr_assert_eq(sona_bank_extract(b, &res), SONA_OK);
    cr_assert_eq(res.created, 4);
    cr_assert_eq(res.pruned, 1);
    cr_assert_eq(sona_bank_pattern_count(b), 3);
    /* The poor group's direction now finds only good patterns. */
    uint64_t ids[4];
    float sims[4];
    uint32_t found;
    cr_assert_eq(sona_bank_search(b, X + 3 * DIM, DIM, 4, ids, sims, &found), SONA_OK);
    cr_assert_eq(found, 3);
    for (uint32_t i = 0; i < found; i++) {
        sona_pattern p;
        cr_assert_eq(sona_bank_pattern_get(b, ids[i], &p, NULL), SONA_OK);
        cr_assert_gt(p.avg_quality, 0.5f);
    }
    /* Time passes; searching group 0 keeps its pattern fresh, the others go stale. */
    clk.ms += 800;
    cr_assert_eq(sona_bank_search(b, X, DIM, 1, ids, sims, &found), SONA_OK);
    const uint64_t kept = ids[0];
    clk.ms += 800;
    uint32_t removed;
    cr_assert_eq(sona_bank_prune(b, &removed), SONA_OK);
    cr_assert_eq(removed, 2);
    cr_assert_eq(sona_bank_pattern_count(b), 1);
    sona_pattern p;
    cr_assert_eq(sona_bank_pattern_get(b, kept, &p, NULL), SONA_OK);
    cr_assert_eq(p.access_count, 2);
    cr_assert_eq(p.last_access_ms, 5800);
    cr_assert_eq(sona_bank_search(b, X + DIM, DIM, 4, ids, sims, &found), SONA_OK);
    cr_assert(found == 1 && ids[0] == kept, "pruned patterns still searchable");
    sona_bank_stats st;
    sona_bank_stats_get(b, &st);
    cr_assert_eq(st.patterns_pruned_quality, 1);
    cr_assert_eq(st.patterns_pruned_stale, 2);
    free(X);
    sona_bank_destroy(b);
}

Test(bank, capacity_evicts_lowest_value)
{
    const uint64_t seed = test_seed();
    printf("[bank] capacity seed %" PRIu64 "\n", seed);
    fake_clock clk = {0};
    sona_bank_config cfg;
    sona_bank_config_default(&cfg, DIM);
    cfg.k_clusters = 6;
    cfg.capacity = 4;
    cfg.clock_ms = read_clock;
    cfg.clock_ctx = &clk;
    sona_bank *b = NULL;
    cr_assert_eq(sona_bank_create(&cfg, &b), SONA_OK);
    const uint32_t n = 60;
    float *X = rows(seed, n, 6);
    float q[60];
    for (uint32_t i = 0; i < n; i++)
        q[i] = 0.1f + 0.15f * (float)(i % 6); /* group g has quality 0.1 + 0.15 g */
    cr_assert_eq(sona_bank_add_batch(b, n, X, DIM, q, NULL, NULL), SONA_OK);
    sona_bank_extract_result res;
    cr_assert_eq(sona_bank_extract(b, &res), SONA_OK);
    cr_assert_eq(res.created, 6);
    cr_assert_eq(res.evicted, 2);
    cr_assert_eq(sona_bank_pattern_count(b), 4);
    for (uint32_t i = 0; i < 4; i++) {
        sona_pattern p;
        cr_assert_eq(sona_bank_pattern_at(b, i, &p, NULL), SONA_OK);
        cr_assert_gt(p.avg_quality, 0.35f, "a low-value pattern survived eviction");
    }
    free(X);
    sona_bank_destroy(b);
}

Test(bank, bad_input_changes_nothing)
{
    fake_clock clk = {0};
    sona_bank *b = make(3, &clk);
    float v[DIM], bad[DIM];
    for (uint32_t t = 0; t < DIM; t++)
        v[t] = bad[t] = (float)t + 1.0f;
    bad[DIM - 2] = NAN;
    cr_assert_eq(sona_bank_add(b, v, DIM, 0.5f, 1.0f, "r"), SONA_OK);
    cr_assert_eq(sona_bank_add(b, bad, DIM, 0.5f, 1.0f, NULL), SONA_E_NONFINITE);
    cr_assert_eq(sona_bank_add(b, v, DIM, NAN, 1.0f, NULL), SONA_E_NONFINITE);
    cr_assert_eq(sona_bank_add(b, v, DIM, 0.5f, -1.0f, NULL), SONA_E_INVALID);
    cr_assert_eq(sona_bank_add(b, NULL, DIM, 0.5f, 1.0f, NULL), SONA_E_NULL);
    float zero[DIM] = {0};
    cr_assert_eq(sona_bank_add(b, zero, DIM, 0.5f, 1.0f, NULL), SONA_E_INVALID);
    cr_assert_eq(sona_bank_add(b, v, DIM - 1, 0.5f, 1.0f, NULL), SONA_E_SIZE);
    /* A batch with one bad row adds nothing. */
    float two[2 * DIM], q2[2] = {0.5f, 0.5f};
    memcpy(two, v, sizeof v);
    memcpy(two + DIM, bad, sizeof bad);
    cr_assert_eq(sona_bank_add_batch(b, 2, two, DIM, q2, NULL, NULL), SONA_E_NONFINITE);
    cr_assert_eq(sona_bank_pending(b), 1);
    sona_bank_stats st;
    sona_bank_stats_get(b, &st);
    cr_assert_eq(st.trajectories_added, 1);
    cr_assert_eq(st.trajectories_rejected, 8);
    cr_assert_neq(sona_bank_last_error(b)[0], '\0');
    uint64_t id;
    uint32_t found;
    cr_assert_eq(sona_bank_search(b, bad, DIM, 1, &id, NULL, &found), SONA_E_NONFINITE);
    cr_assert_eq(sona_bank_search(b, v, DIM + 1, 1, &id, NULL, &found), SONA_E_SIZE);
    cr_assert_eq(sona_bank_extract(NULL, NULL), SONA_E_NULL);
    sona_pattern p = {.id = 0};
    cr_assert_eq(sona_bank_pattern_restore(b, &p, v), SONA_E_STATE);
    p.id = 99;
    cr_assert_eq(sona_bank_pattern_restore(b, &p, bad), SONA_E_NONFINITE);
    cr_assert_eq(sona_bank_pattern_count(b), 0);
    sona_bank_config cfg;
    sona_bank_config_default(&cfg, 0);
    sona_bank *none = (sona_bank *)1;
    cr_assert_eq(sona_bank_create(&cfg, &none), SONA_E_INVALID);
    cr_assert_null(none);
    sona_bank_config_default(&cfg, DIM);
    cfg.capacity = (1u << 24) + 1; /* past the index's node limit */
    cr_assert_eq(sona_bank_create(&cfg, &none), SONA_E_INVALID);
    sona_bank_destroy(NULL);
    sona_bank_destroy(b);
}

Test(bank, pending_is_bounded)
{
    fake_clock clk = {0};
    sona_bank_config cfg;
    sona_bank_config_default(&cfg, DIM);
    cfg.max_pending = 3;
    sona_bank *b = NULL;
    cr_assert_eq(sona_bank_create(&cfg, &b), SONA_OK);
    (void)clk;
    float *X = rows(1, 4, 2);
    float q[4] = {1, 1, 1, 1};
    cr_assert_eq(sona_bank_add_batch(b, 4, X, DIM, q, NULL, NULL), SONA_E_FULL);
    cr_assert_eq(sona_bank_add_batch(b, 3, X, DIM, q, NULL, NULL), SONA_OK);
    cr_assert_eq(sona_bank_add(b, X, DIM, 1, 1, NULL), SONA_E_FULL);
    sona_bank_stats st;
    sona_bank_stats_get(b, &st);
    cr_assert_eq(st.trajectories_refused_full, 5);
    cr_assert_eq(st.pending, 3);
    cr_assert_eq(sona_bank_extract(b, NULL), SONA_OK);
    cr_assert_eq(sona_bank_add(b, X, DIM, 1, 1, NULL), SONA_OK);
    free(X);
    sona_bank_destroy(b);
}

Test(bank, trajectory_embedding_helper)
{
    const uint32_t d = 4;
    const float query[4] = {2, 0, 0, 0};
    const float act[3 * 4] = {0, 1, 0, 0, 0, 0, 1, 0, 0, 5, 0, 0};
    const float rewards[3] = {1, 0, 0}, none[3] = {0, 0, 0};
    float out[4];
    /* unit(query) + unit(1 * a0) = (1, 1, 0, 0) -> normalised. */
    cr_assert_eq(sona_bank_trajectory_embedding(d, query, 3, act, rewards, out), SONA_OK);
    cr_assert_float_eq(out[0], 0.70710678f, 1e-6f);
    cr_assert_float_eq(out[1], 0.70710678f, 1e-6f);
    cr_assert_float_eq(out[2], 0.0f, 1e-6f);
    /* No reward at all: the plain mean (0, 6, 1, 0)/3 direction. */
    cr_assert_eq(sona_bank_trajectory_embedding(d, NULL, 3, act, none, out), SONA_OK);
    cr_assert_float_eq(out[1] / out[2], 6.0f, 1e-5f);
    float nan_q[4] = {NAN, 0, 0, 0};
    cr_assert_eq(sona_bank_trajectory_embedding(d, nan_q, 3, act, rewards, out), SONA_E_NONFINITE);
    cr_assert_eq(sona_bank_trajectory_embedding(d, NULL, 0, NULL, NULL, out), SONA_E_INVALID);
    const float zero[4] = {0};
    cr_assert_eq(sona_bank_trajectory_embedding(d, zero, 0, NULL, NULL, out), SONA_E_INVALID);
}

Test(bank, restore_and_neighbors)
{
    fake_clock clk = {0};
    sona_bank *b = make(3, &clk);
    float c[DIM];
    for (uint32_t i = 0; i < 5; i++) {
        for (uint32_t t = 0; t < DIM; t++)
            c[t] = (t == i) ? 1.0f : 0.1f;
        sona_pattern p = {.id = 10 + i, .size = 3, .total_weight = 3, .avg_quality = 0.7f,
                          .access_count = i, .created_ms = 1, .last_access_ms = 2};
        cr_assert_eq(sona_bank_pattern_restore(b, &p, c), SONA_OK);
    }
    sona_pattern p;
    cr_assert_eq(sona_bank_pattern_get(b, 13, &p, NULL), SONA_OK);
    cr_assert_eq(p.access_count, 3);
    cr_assert_eq(p.route_count, 0);
    cr_assert_eq(sona_bank_pattern_restore_route(b, 13, "chat", 4, 0.25f), SONA_OK);
    cr_assert_eq(sona_bank_pattern_restore_route(b, 13, "chat", 4, 0.75f), SONA_OK);
    cr_assert_eq(sona_bank_pattern_restore_route(b, 13, "chat", 0, 0.75f), SONA_E_INVALID);
    cr_assert_eq(sona_bank_pattern_restore_route(b, 99, "chat", 1, 0.75f), SONA_E_NOT_FOUND);
    const char *name;
    uint64_t cnt;
    float mq;
    cr_assert_eq(sona_bank_pattern_route(b, 13, 0, &name, &cnt, &mq), SONA_OK);
    cr_assert_str_eq(name, "chat");
    cr_assert_eq(cnt, 8);
    cr_assert_float_eq(mq, 0.5f, 1e-6f);
    cr_assert_eq(sona_bank_pattern_route(b, 13, 1, &name, &cnt, &mq), SONA_E_INVALID);
    uint64_t nb[32];
    uint32_t n;
    cr_assert_eq(sona_bank_neighbors(b, 12, nb, 32, &n), SONA_OK);
    cr_assert(n >= 1 && n <= 4);
    for (uint32_t i = 0; i < n; i++)
        cr_assert(nb[i] >= 10 && nb[i] <= 14 && nb[i] != 12);
    cr_assert_eq(sona_bank_neighbors(b, 99, nb, 32, &n), SONA_E_NOT_FOUND);
    /* New patterns get ids above the restored ones. */
    float *X = rows(3, 9, 3);
    add_all(b, X, 9, 0.5f);
    cr_assert_eq(sona_bank_extract(b, NULL), SONA_OK);
    for (uint32_t i = 0; i < sona_bank_pattern_count(b); i++) {
        cr_assert_eq(sona_bank_pattern_at(b, i, &p, NULL), SONA_OK);
        cr_assert(p.id >= 10 && p.id != 0);
        if (p.id >= 15)
            cr_assert_eq(p.size, 3);
    }
    free(X);
    sona_bank_destroy(b);
}

/* Consolidation folds a near-duplicate into its earlier neighbour (size-weighted centroid and
 * quality, summed sizes, decayed accesses), keeps the distinct pattern, and leaves the original
 * bank as it was. */
Test(bank, consolidate_merges_near_duplicates_into_a_copy)
{
    fake_clock clk = {0};
    sona_bank *b = make(3, &clk);
    float c[3][DIM];
    for (uint32_t t = 0; t < DIM; t++) {
        c[0][t] = t == 0 ? 1.0f : 0.01f;
        c[1][t] = t == 0 ? 1.0f : t == 1 ? 0.5f : 0.01f; /* cosine with c[0] about 0.9 */
        c[2][t] = t == 2 ? 1.0f : 0.01f;                 /* far from both */
    }
    const float quality[3] = {0.2f, 0.8f, 0.5f};
    const uint64_t size[3] = {1, 3, 2};
    for (uint32_t i = 0; i < 3; i++) {
        sona_pattern p = {.id = 1 + i, .size = size[i], .total_weight = (double)size[i],
                          .avg_quality = quality[i], .access_count = 10, .created_ms = 5 - i, .last_access_ms = 7 + i};
        cr_assert_eq(sona_bank_pattern_restore(b, &p, c[i]), SONA_OK);
    }
    sona_bank *fresh = NULL;
    uint32_t merged = 99;
    cr_assert_eq(sona_bank_consolidate(NULL, 0.98f, 0.5f, &fresh, &merged), SONA_E_NULL);
    cr_assert_eq(sona_bank_consolidate(b, 0.98f, 1.5f, &fresh, &merged), SONA_E_INVALID);
    cr_assert_null(fresh);
    cr_assert_eq(sona_bank_consolidate(b, 0.85f, 0.5f, &fresh, &merged), SONA_OK, "%s", sona_last_error());
    cr_assert_eq(merged, 1);
    cr_assert_eq(sona_bank_pattern_count(b), 3, "the original bank is left as it was");
    cr_assert_eq(sona_bank_pattern_count(fresh), 2);
    sona_pattern p;
    float got[DIM];
    cr_assert_eq(sona_bank_pattern_get(fresh, 1, &p, got), SONA_OK, "the group keeps its first pattern's id");
    cr_assert_eq(p.size, 4);
    cr_assert_float_eq(p.avg_quality, (0.2f * 1 + 0.8f * 3) / 4, 1e-5f);
    cr_assert_eq(p.access_count, 10, "20 accesses decayed by half");
    cr_assert_eq(p.created_ms, 4);
    cr_assert_eq(p.last_access_ms, 8);
    /* The centroid is the size-weighted mean of the stored ones, to a step of the stored form's
     * grid (at most 1/64 for values up to 1); the plain mean would be 0.12 off at t = 1. */
    float c0[DIM], c1[DIM];
    cr_assert_eq(sona_bank_pattern_get(b, 1, &p, c0), SONA_OK);
    cr_assert_eq(sona_bank_pattern_get(b, 2, &p, c1), SONA_OK);
    for (uint32_t t = 0; t < DIM; t++)
        cr_assert_float_eq(got[t], (c0[t] * 1 + c1[t] * 3) / 4, 1.0f / 64, "t %u: %g", t,
                           got[t]);
    cr_assert_eq(sona_bank_pattern_get(fresh, 3, &p, NULL), SONA_OK);
    cr_assert_eq(p.size, 2);
    cr_assert_eq(sona_bank_pattern_get(fresh, 2, &p, NULL), SONA_E_NOT_FOUND);
    cr_assert_eq(sona_bank_next_id(fresh), sona_bank_next_id(b), "merged-away ids are never handed out again");
    sona_bank_destroy(fresh);
    sona_bank_destroy(b);
}

/* Clusters that are all alike (cosine above the threshold) collapse into one pattern within a
 * single extraction (k-means' 12 parts of one cluster: combined in step 0 or merged in step 3),
 * and the merged pattern stays searchable. */
Test(bank, similar_clusters_merge_within_one_extraction)
{
    const uint64_t seed = test_seed();
    printf("[bank] merge within extraction seed %" PRIu64 "\n", seed);
    fake_clock clk = {0};
    sona_bank *b = make(12, &clk);
    sona_rng r;
    sona_rng_seed(&r, seed, 5);
    const uint32_t n = 121;
    float *X = malloc((size_t)n * DIM * sizeof *X);
    for (size_t i = 0; i < (size_t)n * DIM; i++)
        X[i] = 5.0f + sona_rng_uniform(&r); /* every direction within cosine 0.99 of (1,...,1) */
    add_all(b, X, n, 0.6f);
    sona_bank_extract_result res;
    cr_assert_eq(sona_bank_extract(b, &res), SONA_OK);
    cr_assert_eq(res.created, 1);
    cr_assert_eq(res.combined + res.merged, 11, "%u combined, %u merged", res.combined, res.merged);
    sona_pattern p;
    float c[DIM];
    cr_assert_eq(sona_bank_pattern_at(b, 0, &p, c), SONA_OK);
    cr_assert_eq(p.size, n);
    cr_assert_float_eq(p.avg_quality, 0.6f, 1e-6f);
    uint64_t id;
    uint32_t found;
    cr_assert_eq(sona_bank_search(b, X, DIM, 1, &id, NULL, &found), SONA_OK);
    cr_assert(found == 1 && id == p.id);
    free(X);
    sona_bank_destroy(b);
}

/* A batch too small for a cluster per group: 10 rows of 4 groups (3, 3, 2 and 2 rows), so
 * k-means (k = 3) mixes two, here the 3 and 2 rows of the two closest groups: half the rows,
 * which made the noise estimate (then the mean of the two middle distances) take the mix for
 * noise and keep it as one pattern (the concurrency test below failed so in about 1 % of runs).
 * The mix is split: one pattern per group. */
Test(bank, a_batch_half_mixed_by_kmeans_is_split)
{
    const uint64_t seed = test_seed();
    printf("[bank] half-mixed batch seed %" PRIu64 "\n", seed);
    fake_clock clk = {0};
    sona_bank *b = make(4, &clk);
    /* Groups 0 and 2 are 20 apart (cosine 0.89, below merge_threshold), the others 57 or more;
     * the noise is 0.3 a dimension (a squared distance of about 3.3 from the group's center). */
    float centers[4][DIM] = {{0}};
    centers[0][0] = 40.0f;
    centers[1][1] = 40.0f;
    centers[2][0] = 40.0f;
    centers[2][2] = 20.0f;
    centers[3][3] = 40.0f;
    const uint32_t group_of[10] = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1}, n = 10;
    sona_rng r;
    sona_rng_seed(&r, seed, 11);
    float X[10 * DIM];
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t t = 0; t < DIM; t++)
            X[i * DIM + t] = centers[group_of[i]][t] + 0.3f * sona_rng_normal(&r);
    add_all(b, X, n, 0.5f);
    sona_bank_extract_result res;
    cr_assert_eq(sona_bank_extract(b, &res), SONA_OK, "%s", sona_bank_last_error(b));
    cr_assert_eq(res.clusters, 3);
    cr_assert_eq(res.split, 1, "the mixed cluster was not split");
    cr_assert_eq(sona_bank_pattern_count(b), 4);
    int seen[4] = {0};
    for (uint32_t i = 0; i < 4; i++) {
        sona_pattern p;
        float c[DIM];
        cr_assert_eq(sona_bank_pattern_at(b, i, &p, c), SONA_OK);
        int g = 0;
        for (int j = 1; j < 4; j++)
            if (cosine(c, centers[j]) > cosine(c, centers[g]))
                g = j;
        /* The mix of groups 0 and 2 has a cosine of 0.98 with group 0's center. */
        cr_assert_gt(cosine(c, centers[g]), 0.99, "pattern %u lies between groups", i);
        cr_assert_eq(p.size, g < 2 ? 3u : 2u, "pattern of group %d holds %" PRIu64 " rows", g, p.size);
        seen[g]++;
    }
    for (int g = 0; g < 4; g++)
        cr_assert_eq(seen[g], 1, "group %d has %d patterns", g, seen[g]);
    sona_bank_destroy(b);
}

/* Adds and searches from several threads while extractions run: nothing is lost or counted
 * twice (every added trajectory ends up in exactly one pattern's size). */
typedef struct worker {
    sona_bank *bank;
    const float *X;
    uint32_t first, count;
    int searches;
} worker;

static void *adder(void *arg)
{
    worker *w = arg;
    float q[10];
    for (uint32_t i = 0; i < 10; i++)
        q[i] = 0.5f;
    for (uint32_t i = w->first; i < w->first + w->count; i += 10)
        cr_assert_eq(sona_bank_add_batch(w->bank, 10, w->X + (size_t)i * DIM, DIM, q, NULL, NULL), SONA_OK);
    return NULL;
}

static void *searcher(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < w->searches; i++) {
        uint64_t ids[3];
        uint32_t found;
        cr_assert_eq(sona_bank_search(w->bank, w->X + (size_t)(i % 50) * DIM, DIM, 3, ids, NULL, &found),
                     SONA_OK);
    }
    return NULL;
}

Test(bank, concurrent_adds_searches_and_extractions)
{
    const uint64_t seed = test_seed();
    printf("[bank] concurrency seed %" PRIu64 "\n", seed);
    fake_clock clk = {0};
    sona_bank *b = make(4, &clk);
    const uint32_t n = 1200;
    float *X = rows(seed, n, 4);
    worker w[3] = {{b, X, 0, 600, 0}, {b, X, 600, 600, 0}, {b, X, 0, 0, 300}};
    pthread_t t[3];
    cr_assert_eq(pthread_create(&t[0], NULL, adder, &w[0]), 0);
    cr_assert_eq(pthread_create(&t[1], NULL, adder, &w[1]), 0);
    cr_assert_eq(pthread_create(&t[2], NULL, searcher, &w[2]), 0);
    for (int i = 0; i < 20; i++)
        cr_assert_eq(sona_bank_extract(b, NULL), SONA_OK);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    cr_assert_eq(sona_bank_extract(b, NULL), SONA_OK);
    sona_bank_stats st;
    cr_assert_eq(sona_bank_stats_get(b, &st), SONA_OK);
    cr_assert_eq(st.trajectories_added, n);
    cr_assert_eq(st.pending, 0);
    cr_assert_eq(st.searches, 300);
    uint64_t total = 0;
    for (uint32_t i = 0; i < st.patterns; i++) {
        sona_pattern p;
        cr_assert_eq(sona_bank_pattern_at(b, i, &p, NULL), SONA_OK);
        total += p.size;
    }
    cr_assert_eq(total, n, "pattern sizes add up to %" PRIu64 " of %u trajectories", total, n);
    cr_assert_eq(st.patterns, 4);
    free(X);
    sona_bank_destroy(b);
}

/* The Q8 step of value t of x (DIM floats): the smallest power of two with its block's
 * largest magnitude at most 127 of them. */
static double q8_step(const float *x, uint32_t t)
{
    const uint32_t lo = t / 32 * 32, hi = lo + 32 < DIM ? lo + 32 : DIM;
    double amax = 0;
    for (uint32_t j = lo; j < hi; j++)
        amax = fmax(amax, fabs((double)x[j]));
    return exp2(ceil(log2(amax / 127)));
}

static double cosine(const float *a, const float *b)
{
    double ab = 0, aa = 0, bb = 0;
    for (uint32_t t = 0; t < DIM; t++) {
        ab += (double)a[t] * b[t];
        aa += (double)a[t] * a[t];
        bb += (double)b[t] * b[t];
    }
    return ab / sqrt(aa * bb);
}

/* The one copy of each centroid is Q8 by default: a restored centroid reads back within half a
 * step of its block, search similarities are the cosines with those stored centroids, the best
 * pattern is found, and two banks built the same way answer the same. */
Test(bank, search_similarities_are_cosines_with_stored_centroids)
{
    const uint64_t seed = test_seed();
    printf("[bank] search seed %" PRIu64 "\n", seed);
    fake_clock clk = {0};
    sona_bank *b = make(3, &clk), *twin = make(3, &clk);
    const uint32_t n = 500, nq = 40, k = 5;
    cr_assert_eq(sona_bank_get_config(b)->index.storage, SONA_STORAGE_Q8);
    float *C = rows(seed, n + nq, 60); /* 60 groups: several close patterns per query */
    for (uint32_t i = 0; i < n; i++) {
        sona_pattern p = {.id = 1 + i, .size = 1, .total_weight = 1, .avg_quality = 0.5f};
        cr_assert_eq(sona_bank_pattern_restore(b, &p, C + (size_t)i * DIM), SONA_OK);
        cr_assert_eq(sona_bank_pattern_restore(twin, &p, C + (size_t)i * DIM), SONA_OK);
        float got[DIM];
        cr_assert_eq(sona_bank_pattern_get(b, 1 + i, NULL, got), SONA_OK);
        for (uint32_t t = 0; t < DIM; t++)
            cr_assert_leq(fabs(got[t] - C[(size_t)i * DIM + t]), q8_step(C + (size_t)i * DIM, t) / 2,
                          "centroid %u value %u off by more than half a Q8 step", i, t);
    }
    uint32_t top_hits = 0;
    double worst = 0;
    for (uint32_t q = 0; q < nq; q++) {
        const float *qv = C + (size_t)(n + q) * DIM;
        uint64_t ids[5], tids[5];
        float sims[5], tsims[5];
        uint32_t found, tfound;
        cr_assert_eq(sona_bank_search(b, qv, DIM, k, ids, sims, &found), SONA_OK);
        cr_assert_eq(sona_bank_search(twin, qv, DIM, k, tids, tsims, &tfound), SONA_OK);
        cr_assert_eq(found, k);
        cr_assert(tfound == found && !memcmp(ids, tids, sizeof ids) && !memcmp(sims, tsims, sizeof sims),
                  "same bank, same query, different answer");
        /* The best by stored centroid is what the graph should find; the best by exact
         * centroid may differ only in a near tie (within the storage's rounding). */
        double best = -2, best_stored = -2, exact_of_top = -2;
        uint64_t best_id = 0;
        for (uint32_t i = 0; i < n; i++) {
            const double cosv = cosine(qv, C + (size_t)i * DIM);
            float stored[DIM];
            cr_assert_eq(sona_bank_pattern_get(b, 1 + i, NULL, stored), SONA_OK);
            const double cos_stored = cosine(qv, stored);
            if (cos_stored > best_stored) {
                best_stored = cos_stored;
                best_id = 1 + i;
            }
            best = fmax(best, cosv);
            if (ids[0] == 1 + i)
                exact_of_top = cosv;
            for (uint32_t j = 0; j < k; j++) {
                if (ids[j] != 1 + i)
                    continue;
                cr_assert_float_eq(sims[j], cos_stored, 2e-6, "similarity of %" PRIu64 " is not the cosine with its centroid", ids[j]);
                worst = fmax(worst, fabs(sims[j] - cosv));
            }
        }
        for (uint32_t j = 1; j < k; j++)
            cr_assert_geq(sims[j - 1], sims[j], "not best first");
        top_hits += ids[0] == best_id;
        cr_assert_geq(exact_of_top, best - 1e-3, "the top pattern is no near tie of the exact best");
    }
    printf("[bank] similarities within %.2g of the exact centroids' cosines\n", worst);
    cr_assert_leq(worst, 5e-3, "Q8 similarity %.3g off the exact cosine", worst);
    cr_assert_geq(top_hits, nq * 95 / 100, "best pattern found for %u of %u queries", top_hits, nq);
    free(C);
    sona_bank_destroy(b);
    sona_bank_destroy(twin);
}

/* A large pattern absorbing hundreds of small clusters: its centroid follows the exact weighted
 * mean of every trajectory merged into it (bank.h states the bound: unbiased, a few Q8 steps),
 * where re-storing the rounded mean would have left it where it started. */
Test(bank, merged_centroid_tracks_the_exact_mean)
{
    const uint64_t seed = test_seed();
    printf("[bank] many merges seed %" PRIu64 "\n", seed);
    fake_clock clk = {0};
    /* Each 3-row cluster must merge: its cosine with the pattern is about 1 - |target - start|^2
     * / (2 |start|^2), ~0.98 but below the default 0.95 for about one seed in 40 (a short
     * random start, a long random step). This test is about the merged mean, not the
     * threshold, so the threshold is one no seed comes near. */
    sona_bank *b = make_merging_at(1, &clk, 0.8f);
    sona_rng r;
    sona_rng_seed(&r, seed, 4);
    float start[DIM], target[DIM], row[3 * DIM], q[3] = {0.5f, 0.5f, 0.5f};
    double sum[DIM] = {0}, count = 0;
    for (uint32_t t = 0; t < DIM; t++) {
        start[t] = sona_rng_normal(&r);
        target[t] = start[t] + 0.2f * sona_rng_normal(&r);
    }
    float *first = malloc((size_t)500 * DIM * sizeof *first);
    for (uint32_t i = 0; i < 500; i++)
        for (uint32_t t = 0; t < DIM; t++) {
            first[(size_t)i * DIM + t] = start[t] + 0.1f * sona_rng_normal(&r);
            sum[t] += first[(size_t)i * DIM + t];
        }
    count = 500;
    float *q500 = malloc(500 * sizeof *q500);
    for (uint32_t i = 0; i < 500; i++)
        q500[i] = 0.5f;
    cr_assert_eq(sona_bank_add_batch(b, 500, first, DIM, q500, NULL, NULL), SONA_OK);
    cr_assert_eq(sona_bank_extract(b, NULL), SONA_OK);
    cr_assert_eq(sona_bank_pattern_count(b), 1);
    for (uint32_t m = 0; m < 600; m++) {
        for (uint32_t i = 0; i < 3; i++)
            for (uint32_t t = 0; t < DIM; t++) {
                row[i * DIM + t] = target[t] + 0.1f * sona_rng_normal(&r);
                sum[t] += row[i * DIM + t];
            }
        count += 3;
        sona_bank_extract_result res;
        cr_assert_eq(sona_bank_add_batch(b, 3, row, DIM, q, NULL, NULL), SONA_OK);
        cr_assert_eq(sona_bank_extract(b, &res), SONA_OK);
        cr_assert_eq(res.merged, 1, "extraction %u did not merge", m);
    }
    sona_pattern p;
    float got[DIM], exact[DIM];
    cr_assert_eq(sona_bank_pattern_at(b, 0, &p, got), SONA_OK);
    cr_assert_eq(p.size, (uint64_t)count);
    double err = 0, moved = 0, worst = 0;
    for (uint32_t t = 0; t < DIM; t++) {
        exact[t] = (float)(sum[t] / count);
        err += (got[t] - exact[t]) * (double)(got[t] - exact[t]);
        moved += (exact[t] - start[t]) * (double)(exact[t] - start[t]);
    }
    for (uint32_t t = 0; t < DIM; t++)
        worst = fmax(worst, fabs(got[t] - exact[t]) / q8_step(exact, t));
    printf("[bank] after 600 merges: centroid %.3g from the exact mean, which moved %.3g; worst value %.2f Q8 steps off, cosine 1 - %.2g\n",
           sqrt(err), sqrt(moved), worst, 1 - cosine(got, exact));
    cr_assert_gt(sqrt(moved), 0.5, "the test data should move the mean");
    cr_assert_lt(sqrt(err), 0.35 * sqrt(moved), "the centroid did not follow the mean");
    cr_assert_leq(worst, 16.0, "a value is %.2f Q8 steps off the exact mean", worst);
    cr_assert_geq(cosine(got, exact), 1 - 3e-3);
    free(first);
    free(q500);
    sona_bank_destroy(b);
}

/* A copy of b made the way a checkpoint restores one: its patterns, then (with_counters) its
 * counters and next id. */
static sona_bank *restored_copy(const sona_bank *b, fake_clock *clk, int with_counters)
{
    sona_bank *c = make(sona_bank_get_config(b)->k_clusters, clk);
    sona_pattern p;
    float centroid[DIM];
    for (uint32_t i = 0; sona_bank_pattern_at(b, i, &p, centroid) == SONA_OK; i++)
        cr_assert_eq(sona_bank_pattern_restore(c, &p, centroid), SONA_OK, "%s", sona_bank_last_error(c));
    if (!with_counters)
        return c;
    sona_bank_stats st;
    cr_assert_eq(sona_bank_stats_get(b, &st), SONA_OK);
    cr_assert_eq(sona_bank_restore_counters(c, &st, sona_bank_next_id(b)), SONA_OK, "%s", sona_bank_last_error(c));
    return c;
}

/* A bank restored with its counters extracts as the original goes on to: the extraction count
 * seeds k-means, and new ids continue from the original's. Without the counters the copy
 * clusters the same rows otherwise. A next id not above the patterns' is refused and
 * changes nothing. Few patterns, so that every search is exhaustive (the copy's HNSW graph is
 * another one). */
Test(bank, restored_counters_continue_the_extraction_sequence)
{
    const uint64_t seed = test_seed();
    printf("[bank] restored counters seed %" PRIu64 "\n", seed);
    fake_clock clk = {0};
    sona_bank *b = make(4, &clk);
    sona_rng r;
    sona_rng_seed(&r, seed, 8);
    float X[40 * DIM], q[40];
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < 40 * DIM; i++)
            X[i] = sona_rng_normal(&r);
        for (int i = 0; i < 40; i++)
            q[i] = sona_rng_uniform(&r);
        cr_assert_eq(sona_bank_add_batch(b, 40, X, DIM, q, NULL, NULL), SONA_OK);
        cr_assert_eq(sona_bank_extract(b, NULL), SONA_OK, "%s", sona_bank_last_error(b));
    }
    sona_bank *c = restored_copy(b, &clk, 1), *fresh = restored_copy(b, &clk, 0);
    sona_bank_stats sb, sc;
    memset(&sb, 0, sizeof sb);
    memset(&sc, 0, sizeof sc);
    sona_bank_stats_get(b, &sb);
    sona_bank_stats_get(c, &sc);
    cr_assert_eq(memcmp(&sb, &sc, sizeof sb), 0, "the counters were not restored");
    cr_assert_eq(sona_bank_next_id(c), sona_bank_next_id(b));
    /* Refused: next id 1, below the patterns'. */
    sona_bank_stats zero = {0};
    cr_assert_eq(sona_bank_restore_counters(c, &zero, 1), SONA_E_INVALID);
    cr_assert_eq(sona_bank_restore_counters(c, NULL, 99), SONA_E_NULL);
    sona_bank_stats_get(c, &sc);
    cr_assert_eq(memcmp(&sb, &sc, sizeof sb), 0, "a refused restore changed the counters");
    cr_assert_eq(sona_bank_next_id(c), sona_bank_next_id(b));
    /* fresh, without the counters, for contrast. */
    for (size_t i = 0; i < 40 * DIM; i++)
        X[i] = sona_rng_normal(&r);
    sona_bank *all[3] = {b, c, fresh};
    for (int k = 0; k < 3; k++) {
        cr_assert_eq(sona_bank_add_batch(all[k], 40, X, DIM, q, NULL, NULL), SONA_OK);
        cr_assert_eq(sona_bank_extract(all[k], NULL), SONA_OK, "%s", sona_bank_last_error(all[k]));
    }
    const uint32_t n = sona_bank_pattern_count(b);
    cr_assert_eq(sona_bank_pattern_count(c), n);
    int fresh_differs = sona_bank_pattern_count(fresh) != n;
    for (uint32_t i = 0; i < n; i++) {
        sona_pattern pb, pc, pf;
        float cb[DIM], cc[DIM], cf[DIM];
        cr_assert_eq(sona_bank_pattern_at(b, i, &pb, cb), SONA_OK);
        cr_assert_eq(sona_bank_pattern_at(c, i, &pc, cc), SONA_OK);
        cr_assert(pb.id == pc.id && pb.size == pc.size && memcmp(cb, cc, sizeof cb) == 0,
                  "pattern %u differs (id %" PRIu64 " vs %" PRIu64 ")", i, pb.id, pc.id);
        if (!fresh_differs && sona_bank_pattern_at(fresh, i, &pf, cf) == SONA_OK)
            fresh_differs = pf.size != pb.size || memcmp(cb, cf, sizeof cb) != 0;
    }
    cr_assert(fresh_differs, "k-means gave the same clusters with the extraction count restarted");
    for (int k = 0; k < 3; k++)
        sona_bank_destroy(all[k]);
}

/* ---- many small extractions, and large ones ---------------------------------------------------- */

enum { TRUE_CLUSTERS = 4 };

typedef struct cluster_stream {
    sona_rng r;
    float centers[TRUE_CLUSTERS][DIM]; /* unit */
} cluster_stream;

static void unit(float *v)
{
    double n = 0;
    for (uint32_t t = 0; t < DIM; t++)
        n += (double)v[t] * v[t];
    for (uint32_t t = 0; t < DIM; t++)
        v[t] = (float)(v[t] / sqrt(n));
}

static void stream_init(cluster_stream *s, uint64_t seed)
{
    sona_rng_seed(&s->r, seed, 9);
    for (int c = 0; c < TRUE_CLUSTERS; c++) {
        for (uint32_t t = 0; t < DIM; t++)
            s->centers[c][t] = sona_rng_normal(&s->r);
        unit(s->centers[c]);
    }
}

/* n embeddings like the engine's: unit(center + noise of norm about 1), so each has a cosine of
 * about 0.7 with its cluster's center and two of one cluster about 0.5 with each other. */
static void stream_rows(cluster_stream *s, uint32_t n, float *X, float *q)
{
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t c = sona_rng_below(&s->r, TRUE_CLUSTERS);
        for (uint32_t t = 0; t < DIM; t++)
            X[(size_t)i * DIM + t] = s->centers[c][t] + sona_rng_normal(&s->r) / sqrtf((float)DIM);
        unit(X + (size_t)i * DIM);
        q[i] = 0.5f;
    }
}

static sona_bank *engine_like(fake_clock *clk, int noise_rules)
{
    sona_bank_config cfg;
    sona_bank_config_default(&cfg, DIM);
    cfg.k_clusters = 32; /* the engine's clusters_per_cycle */
    cfg.clock_ms = read_clock;
    cfg.clock_ctx = clk;
    if (!noise_rules) { /* the bank before the noise rules: merges by cosine, a cluster per row */
        cfg.merge_z = 0.0f;
        cfg.rows_per_cluster = 1;
    }
    sona_bank *b = NULL;
    cr_assert_eq(sona_bank_create(&cfg, &b), SONA_OK, "%s", sona_last_error());
    return b;
}

/* Feeds total rows in extractions of `per`; returns the patterns after the first extraction. */
static uint32_t feed(sona_bank *b, cluster_stream *s, uint32_t total, uint32_t per)
{
    float *X = malloc((size_t)per * DIM * sizeof *X), *q = malloc(per * sizeof *q);
    uint32_t first = 0;
    for (uint32_t done = 0; done < total; done += per) {
        stream_rows(s, per, X, q);
        cr_assert_eq(sona_bank_add_batch(b, per, X, DIM, q, NULL, NULL), SONA_OK, "%s", sona_bank_last_error(b));
        cr_assert_eq(sona_bank_extract(b, NULL), SONA_OK, "%s", sona_bank_last_error(b));
        if (!done)
            first = sona_bank_pattern_count(b);
    }
    free(X);
    free(q);
    return first;
}

/* How far centroid c leans toward center k beyond what its own center (at) shares with k: its
 * cosine with the part of k orthogonal to at (centers are unit vectors). For orthogonal centers
 * it is the plain cosine with k; unlike that, a pure pattern's stays near 0 however close the
 * two centers are (seed 1911: centers at cosine 0.573, a pure pattern's plain cosine with the
 * other 0.613). */
static double lean_toward(const float *c, const float *at, const float *k)
{
    const double g = cosine(at, k);
    return (cosine(c, k) - g * cosine(c, at)) / sqrt(1.0 - g * g);
}

/* Every trajectory is in exactly one pattern; each true cluster has a pattern close to its
 * center holding at least min_share of the trajectories of one cluster; every pattern of 50 or
 * more is close to one center and does not lean toward another (no pattern mixing two
 * clusters). */
static void check_patterns(sona_bank *b, const cluster_stream *s, uint64_t total, double min_share)
{
    const uint32_t n = sona_bank_pattern_count(b);
    uint64_t sum = 0, best_size[TRUE_CLUSTERS] = {0};
    for (uint32_t i = 0; i < n; i++) {
        sona_pattern p;
        float c[DIM];
        cr_assert_eq(sona_bank_pattern_at(b, i, &p, c), SONA_OK);
        sum += p.size;
        double best = -2, lean = -2;
        int at = 0;
        for (int k = 0; k < TRUE_CLUSTERS; k++) {
            const double cs = cosine(c, s->centers[k]);
            if (cs > best)
                best = cs, at = k;
        }
        for (int k = 0; k < TRUE_CLUSTERS; k++) {
            const double l = k == at ? -2 : lean_toward(c, s->centers[at], s->centers[k]);
            lean = l > lean ? l : lean;
        }
        if (p.size >= 50)
            cr_assert(best >= 0.9 && lean < 0.6,
                      "pattern %u of %" PRIu64 ": cosine %.3f with the nearest center, leaning %.3f toward another", i,
                      p.size, best, lean);
        if (best >= 0.9 && p.size > best_size[at])
            best_size[at] = p.size;
    }
    cr_assert_eq(sum, total, "pattern sizes add up to %" PRIu64 " of %" PRIu64, sum, total);
    for (int k = 0; k < TRUE_CLUSTERS; k++)
        cr_assert_geq((double)best_size[k], min_share * (double)total / TRUE_CLUSTERS,
                      "cluster %d: its largest pattern holds %" PRIu64 " of about %" PRIu64, k, best_size[k],
                      total / TRUE_CLUSTERS);
}

/* Loop B with a cycle every 20 trajectories: 2,000 trajectories of 4 clusters. Merging by cosine
 * alone made a pattern of nearly every trajectory (a centroid of a few noisy trajectories never
 * reaches cosine 0.95 with its pattern); with the noise rules the bank ends with a handful, each
 * cluster's bulk in one pattern. Known to fail on about 2 seeds in 1 000 (502, 804, 1076, 1874
 * of the first 2 000): a cluster kept in two halves, or a pattern mixed from its first rows
 * (docs/notes/bank-small-extractions.md). */
Test(bank, small_extractions_keep_a_pattern_per_cluster)
{
    const uint64_t seed = test_seed();
    printf("[bank] small extractions seed %" PRIu64 "\n", seed);
    fake_clock clk = {0};
    cluster_stream s, old_s;
    stream_init(&s, seed);
    old_s = s;
    sona_bank *b = engine_like(&clk, 1), *old = engine_like(&clk, 0);
    feed(b, &s, 2000, 20);
    feed(old, &old_s, 2000, 20);
    const uint32_t n = sona_bank_pattern_count(b), n_old = sona_bank_pattern_count(old);
    printf("[bank] 2000 trajectories of 4 clusters in extractions of 20: %u patterns (by cosine alone %u)\n", n, n_old);
    cr_assert_gt(n_old, 1000, "the test data should defeat the cosine rule alone");
    cr_assert_leq(n, 16);
    check_patterns(b, &s, 2000, 0.8);
    sona_bank_destroy(b);
    sona_bank_destroy(old);
}

/* Extractions of 1,000 into at most 32 clusters: k-means cuts each of the 4 clusters into about
 * 8 parts; step 0 combines the parts (before it the first extraction made 30 to 33 patterns,
 * each within a cluster; over 300 seeds now 4 to 6, each cluster's largest holding over 85 % of
 * its trajectories at the end), and later extractions add few (tail trajectories: at most one
 * over those seeds), where merging by cosine alone added about 30 each. */
Test(bank, large_extractions_keep_their_patterns)
{
    const uint64_t seed = test_seed();
    printf("[bank] large extractions seed %" PRIu64 "\n", seed);
    fake_clock clk = {0};
    cluster_stream s;
    stream_init(&s, seed);
    sona_bank *b = engine_like(&clk, 1);
    const uint32_t first = feed(b, &s, 4000, 1000), n = sona_bank_pattern_count(b);
    printf("[bank] 4000 trajectories of 4 clusters in extractions of 1000: %u patterns after the first, %u after "
           "the fourth\n", first, n);
    cr_assert_leq(first, 8, "k-means' parts of 4 clusters should combine: %u patterns", first);
    cr_assert_leq(n, first + 3, "%u patterns after the first extraction, %u after three more", first, n);
    check_patterns(b, &s, 4000, 0.8);
    sona_bank_destroy(b);
}

/* Extracting X again (the n rows whose extraction made b's `groups` patterns) merges every row
 * into its group's pattern, so each pattern's size doubles; returns the knn_exact calls on kind
 * meanwhile. */
static uint64_t knn_calls_extracting(sona_bank *b, const float *X, uint32_t n, sona_backend_kind kind,
                                     sona_bank_extract_result *res)
{
    add_all(b, X, n, 1.0f);
    const uint64_t before = sona_dispatch_calls(SONA_OP_KNN_EXACT, kind);
    cr_assert_eq(sona_bank_extract(b, res), SONA_OK, "%s", sona_bank_last_error(b));
    return sona_dispatch_calls(SONA_OP_KNN_EXACT, kind) - before;
}

static uint64_t extract_again(sona_bank *b, const float *X, uint32_t n, uint32_t groups, sona_backend_kind kind)
{
    uint64_t size[64];
    cr_assert_leq(groups, 64);
    for (uint32_t i = 0; i < groups; i++) {
        sona_pattern p;
        cr_assert_eq(sona_bank_pattern_at(b, i, &p, NULL), SONA_OK);
        size[i] = p.size;
    }
    sona_bank_extract_result res;
    const uint64_t calls = knn_calls_extracting(b, X, n, kind, &res);
    cr_assert_eq(sona_bank_pattern_count(b), groups,
                 "%u patterns after extracting the groups again (%u clusters: %u merged, %u rows joined, %u "
                 "split, %u created)",
                 sona_bank_pattern_count(b), res.clusters, res.merged, res.joined, res.split, res.created);
    cr_assert_eq(res.created, 0);
    for (uint32_t i = 0; i < groups; i++) {
        sona_pattern p;
        cr_assert_eq(sona_bank_pattern_at(b, i, &p, NULL), SONA_OK);
        cr_assert_eq(p.size, 2 * size[i], "pattern %u: %" PRIu64 " rows, had %" PRIu64, i, p.size, size[i]);
    }
    return calls;
}

/* An extraction's searches against the patterns (each cluster's, then the rows of clusters that
 * did not merge) run as one exact search (knn_exact) while the patterns are few enough that it
 * costs less than a graph search each, and through the index otherwise: with 7 patterns and
 * the default index (ef_search 50, M 16) exactly, with ef_search 1 and M 2 through the graph
 * (which then may miss a cluster's pattern: seed 2 found a cosine of 0.05 for one whose
 * pattern was at 0.99997, and made it a pattern again, so only the route is checked there). */
Test(bank, extraction_searches_exactly_while_patterns_are_few)
{
    const uint64_t seed = test_seed();
    printf("[bank] exact searches seed %" PRIu64 "\n", seed);
    enum { N = 350, G = 7 };
    float *X = rows(seed, N, G);
    for (int graph = 0; graph < 2; graph++) {
        fake_clock clk = {1000};
        sona_bank_config cfg;
        sona_bank_config_default(&cfg, DIM);
        cfg.k_clusters = G;
        cfg.clock_ms = read_clock;
        cfg.clock_ctx = &clk;
        if (graph)
            cfg.index.ef_search = 1, cfg.index.M = 2;
        sona_bank *b = NULL;
        cr_assert_eq(sona_bank_create(&cfg, &b), SONA_OK, "%s", sona_last_error());
        add_all(b, X, N, 1.0f);
        cr_assert_eq(sona_bank_extract(b, NULL), SONA_OK, "%s", sona_bank_last_error(b));
        cr_assert_eq(sona_bank_pattern_count(b), G);
        sona_bank_extract_result res;
        const uint64_t calls = graph ? knn_calls_extracting(b, X, N, SONA_KIND_CPU, &res)
                                     : extract_again(b, X, N, G, SONA_KIND_CPU);
        printf("[bank] ef_search %u, M %u: %" PRIu64 " exact searches\n", cfg.index.ef_search, cfg.index.M, calls);
        if (graph)
            cr_assert_eq(calls, 0, "the graph is cheaper than an exact search of 7 patterns at ef_search 1");
        else
            cr_assert_gt(calls, 0, "7 patterns searched through the graph");
        sona_bank_destroy(b);
    }
    free(X);
}

/* An extraction clusters, and searches its patterns, on the device the bank was given
 * (core/patterns/bank_device.h) when the cost model says it finishes first there, and on the CPU
 * when it says otherwise; on either it finds the same patterns. Skips without an accelerator (CI: PoCL through
 * SONA_OPENCL_DEVICE=any). */
static void extract_on(const sona_backend *dev, int device_wins, const float *X, uint32_t n,
                       uint32_t groups, float *centroids, uint64_t *sizes)
{
    sona_cost_model m;
    sona_cost_model_default(sona_backend_kind_of(dev), &m);
    m.launch_us = device_wins ? 0.0 : 1e9;
    m.transfer_gbs = device_wins ? 0.0 : m.transfer_gbs;
    m.peak_gflops = device_wins ? 1e12 : m.peak_gflops;
    m.memory_gbs = device_wins ? 1e12 : m.memory_gbs;
    sona_cost_model_set(dev, &m);
    fake_clock clk = {1000};
    sona_bank *b = make(groups, &clk);
    sona_bank_set_device(b, dev);
    add_all(b, X, n, 1.0f);
    const sona_backend_kind kind = sona_backend_kind_of(dev);
    const uint64_t before = sona_dispatch_calls(SONA_OP_SQDIST_ARGMIN, kind);
    cr_assert_eq(sona_bank_extract(b, NULL), SONA_OK, "%s", sona_bank_last_error(b));
    const uint64_t calls = sona_dispatch_calls(SONA_OP_SQDIST_ARGMIN, kind) - before;
    if (device_wins)
        cr_assert_gt(calls, 0, "k-means on %s", dev->name);
    else
        cr_assert_eq(calls, 0, "k-means stayed on the CPU");
    cr_assert_eq(sona_bank_pattern_count(b), groups);
    for (uint32_t i = 0; i < groups; i++) { /* by the group of the centroid's nearest row */
        sona_pattern p;
        float c[DIM];
        cr_assert_eq(sona_bank_pattern_at(b, i, &p, c), SONA_OK);
        uint32_t g = 0;
        double best = -2.0;
        for (uint32_t j = 0; j < groups; j++) {
            const double s = cosine(c, X + (size_t)j * DIM);
            if (s > best)
                best = s, g = j;
        }
        memcpy(centroids + (size_t)g * DIM, c, sizeof c);
        sizes[g] = p.size;
    }
    /* Once patterns exist its searches go to the same place. */
    const uint64_t searches = extract_again(b, X, n, groups, kind);
    if (device_wins)
        cr_assert_gt(searches, 0, "the patterns searched on %s", dev->name);
    else
        cr_assert_eq(searches, 0, "the patterns searched on the CPU");
    sona_bank_destroy(b);
    sona_cost_model_set(dev, NULL);
}

Test(bank, extraction_clusters_where_the_cost_model_sends_it)
{
    const sona_backend *dev = device_or_skip("bank: device extraction");
    const uint64_t seed = test_seed();
    printf("[bank] device extraction on %s: seed %" PRIu64 "\n", dev->name, seed);
    enum { N = 603, G = 7 };
    float *X = rows(seed, N, G);
    static float cd[G * DIM], cc[G * DIM];
    uint64_t sd[G] = {0}, sc[G] = {0};
    extract_on(dev, 1, X, N, G, cd, sd);
    extract_on(dev, 0, X, N, G, cc, sc);
    double worst = 0.0;
    for (uint32_t g = 0; g < G; g++) {
        cr_assert_eq(sd[g], sc[g], "group %u: %" PRIu64 " rows on the device, %" PRIu64 " on the CPU", g, sd[g], sc[g]);
        worst = fmax(worst, 1.0 - cosine(cd + (size_t)g * DIM, cc + (size_t)g * DIM));
    }
    printf("[bank] device extraction: %u patterns, largest 1 - cosine to the CPU's %.3g\n", G, worst);
    cr_assert(worst < 1e-5, "centroids apart by 1 - cosine %g", worst);
    free(X);
}
