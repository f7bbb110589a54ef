/* SPDX-License-Identifier: MIT */
/* Trajectories: ids per source, steps stored in each storage format (F32 exactly, F16 within
 * half precision, Q8 within half a block step) for odd widths, any attention length and many
 * steps growing the arena, copy-out accessors refusing short buffers, strings kept, latency
 * measured, bad input refused with nothing changed, no change after end; a trajectory as bytes
 * (the state file's queue) reading back as the same one, bad records refused. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/rng.h"
#include "core/memory/trajectory_internal.h"
#include "support/fill.h"
#include <sona.h>

static const sona_storage all_storages[] = {SONA_STORAGE_F32, SONA_STORAGE_F16, SONA_STORAGE_Q8};
static const char *const storage_names[] = {"f32", "f16", "q8"};

/* Mixed magnitudes with an occasional outlier channel (what Q8's per-block scales are for). */
static sona_id_source *make_ids(uint64_t first)
{
    sona_id_source *ids = NULL;
    cr_assert_eq(sona_id_source_create(first, &ids), SONA_OK);
    return ids;
}

/* Checks that got[n] is what x[n] stored as s reads back as: F32 exact; F16 within half a unit
 * in the last place (2^-11 relative, 2^-25 absolute for subnormal halves); Q8 within half a
 * step of the block of 32 it is in (step = the block's largest magnitude / 127), plus the
 * rounding of the scale. */
static void expect_stored(sona_storage s, const float *x, const float *got, uint32_t n, const char *what)
{
    for (uint32_t i = 0; i < n; i++) {
        double bound = 0.0;
        if (s == SONA_STORAGE_F16) {
            bound = fmax(fabs((double)x[i]) * 0x1p-11, 0x1p-25);
        } else if (s == SONA_STORAGE_Q8) {
            double amax = 0.0;
            for (uint32_t j = i / 32 * 32; j < n && j < i / 32 * 32 + 32; j++)
                amax = fmax(amax, fabs((double)x[j]));
            bound = 0.5 * amax / 127.0 + 2e-6 * amax + 0x1p-142; /* 127 units of a subnormal scale */
        }
        cr_assert_leq(fabs((double)got[i] - x[i]), bound, "%s: %s[%u] = %a reads back as %a (bound %g)",
                      storage_names[s], what, i, x[i], got[i], bound);
    }
}

Test(trajectory, ids_come_from_their_own_source)
{
    sona_id_source *a = make_ids(100), *b = make_ids(0);
    float q[3] = {1, 2, 3};
    sona_trajectory *t1, *t2, *t3;
    cr_assert_eq(sona_trajectory_begin(a, SONA_STORAGE_F32, q, 3, &t1), SONA_OK);
    cr_assert_eq(sona_trajectory_begin(b, SONA_STORAGE_Q8, q, 3, &t2), SONA_OK);
    cr_assert_eq(sona_trajectory_begin(a, SONA_STORAGE_F16, q, 3, &t3), SONA_OK);
    cr_expect_eq(sona_trajectory_id(t1), 100);
    cr_expect_eq(sona_trajectory_id(t2), 0, "a second source starts on its own");
    cr_expect_eq(sona_trajectory_id(t3), 101);
    cr_expect_eq(sona_id_source_peek(a), 102);
    sona_id_source_set(b, 7);
    cr_expect_eq(sona_id_source_next(b), 7);
    sona_trajectory_destroy(t1);
    sona_trajectory_destroy(t2);
    sona_trajectory_destroy(t3);
    sona_trajectory_destroy(NULL);
    sona_id_source_destroy(a);
    sona_id_source_destroy(b);
    sona_id_source_destroy(NULL);
}

/* Decoded vectors of a and b compared exactly: query, then each step's activations and attention. */
static void expect_same_vectors(const sona_trajectory *a, const sona_trajectory *b)
{
    const uint32_t dim = sona_trajectory_dim(a);
    cr_assert_eq(sona_trajectory_dim(b), dim);
    float *x = malloc(dim * sizeof *x), *y = malloc(dim * sizeof *y);
    cr_assert_eq(sona_trajectory_query(a, x, dim), SONA_OK);
    cr_assert_eq(sona_trajectory_query(b, y, dim), SONA_OK);
    cr_expect_eq(memcmp(x, y, dim * sizeof *x), 0, "the query differs");
    free(x);
    free(y);
    for (uint32_t i = 0; i < sona_trajectory_step_count(a); i++) {
        sona_trajectory_step sa, sb;
        cr_assert_eq(sona_trajectory_get_step(a, i, &sa), SONA_OK);
        cr_assert_eq(sona_trajectory_get_step(b, i, &sb), SONA_OK);
        cr_assert(sa.activations_len == sb.activations_len && sa.attention_len == sb.attention_len &&
                      sa.reward == sb.reward && sa.layer == sb.layer,
                  "step %u differs", i);
        const uint32_t n = sa.activations_len > sa.attention_len ? sa.activations_len : sa.attention_len;
        x = malloc(n * sizeof *x);
        y = malloc(n * sizeof *y);
        cr_assert_eq(sona_trajectory_step_activations(a, i, x, n), SONA_OK);
        cr_assert_eq(sona_trajectory_step_activations(b, i, y, n), SONA_OK);
        cr_expect_eq(memcmp(x, y, sa.activations_len * sizeof *x), 0, "step %u's activations differ", i);
        cr_assert_eq(sona_trajectory_step_attention(a, i, x, n), SONA_OK);
        cr_assert_eq(sona_trajectory_step_attention(b, i, y, n), SONA_OK);
        cr_expect_eq(memcmp(x, y, sa.attention_len * sizeof *x), 0, "step %u's attention differs", i);
        free(x);
        free(y);
    }
}

/* t written as bytes (core/memory/trajectory_internal.h) reads back as the same trajectory, which
 * writes the same bytes again; every shorter record is refused. */
static void expect_round_trip(const sona_trajectory *t)
{
    sona_wbuf w = {0}, w2 = {0};
    sona_trajectory_write(t, &w);
    cr_assert_not(w.oom);
    sona_rbuf r = {.p = w.p, .len = w.len};
    sona_trajectory *u = NULL;
    cr_assert_eq(sona_trajectory_read(&r, &u), SONA_OK, "%s", sona_last_error());
    cr_expect_eq(r.pos, w.len, "the record was not read to its end");
    cr_expect_eq(sona_trajectory_id(u), sona_trajectory_id(t));
    cr_expect_eq(sona_trajectory_storage(u), sona_trajectory_storage(t));
    cr_expect_eq(sona_trajectory_step_count(u), sona_trajectory_step_count(t));
    cr_expect_eq(sona_trajectory_quality(u), sona_trajectory_quality(t));
    cr_expect_eq(sona_trajectory_latency_us(u), sona_trajectory_latency_us(t));
    cr_expect_eq(sona_trajectory_start_us(u), 0, "the start time is another process's clock: unknown");
    cr_expect(sona_trajectory_ended(u));
    expect_same_vectors(t, u);
    const char *rt = sona_trajectory_route(t), *ru = sona_trajectory_route(u);
    cr_expect((!rt && !ru) || (rt && ru && strcmp(rt, ru) == 0), "the route differs");
    cr_assert_eq(sona_trajectory_context_count(u), sona_trajectory_context_count(t));
    for (uint32_t i = 0; i < sona_trajectory_context_count(t); i++)
        cr_expect_str_eq(sona_trajectory_context(u, i), sona_trajectory_context(t, i));
    sona_trajectory_write(u, &w2);
    cr_assert(w2.len == w.len && memcmp(w.p, w2.p, w.len) == 0, "written again, the bytes differ");
    for (size_t cut = 0; cut < w.len; cut += 1 + cut / 16) {
        sona_rbuf rc = {.p = w.p, .len = cut};
        sona_trajectory *v = (sona_trajectory *)0x1;
        cr_assert_eq(sona_trajectory_read(&rc, &v), SONA_E_CORRUPT, "cut at %zu of %zu", cut, w.len);
        cr_assert_null(v);
    }
    sona_trajectory_destroy(u);
    free(w.p);
    free(w2.p);
}

/* Builds a trajectory of `steps` random steps (optionally reserved up front) and checks every
 * stored value. */
static void build_and_check(sona_storage storage, uint32_t dim, uint32_t steps, int reserve, uint64_t seed)
{
    printf("[trajectory] %s dim=%u steps=%u reserve=%d seed %" PRIu64 "\n", storage_names[storage], dim,
           steps, reserve, seed);
    sona_rng r;
    sona_rng_seed(&r, seed, dim * 4u + storage);
    sona_id_source *ids = make_ids(1);
    float *q = malloc(dim * sizeof *q);
    fill_spread(&r, q, dim);
    sona_trajectory *t;
    cr_assert_eq(sona_trajectory_begin(ids, storage, q, dim, &t), SONA_OK);
    cr_assert_eq(sona_trajectory_storage(t), storage);
    if (reserve)
        cr_assert_eq(sona_trajectory_reserve(t, steps, dim + 2, 10), SONA_OK, "%s", sona_trajectory_last_error(t));
    /* Step i: activations of width dim + i % 3, attention of length (i * 7) % 11 (0 included). */
    const uint32_t max_len = dim + 2 + 11;
    float *acts = malloc((size_t)steps * max_len * sizeof *acts);
    float *attn = malloc((size_t)steps * 11 * sizeof *attn);
    float *got = malloc((max_len + 1) * sizeof *got);
    fill_spread(&r, acts, (size_t)steps * max_len);
    fill_spread(&r, attn, (size_t)steps * 11);
    for (uint32_t i = 0; i < steps; i++) {
        const uint32_t al = dim + i % 3, tl = (i * 7) % 11;
        const int32_t layer = i % 4 == 0 ? SONA_LAYER_NONE : (int32_t)(i % 12);
        cr_assert_eq(sona_trajectory_add_step(t, acts + (size_t)i * max_len, al,
                                              tl ? attn + (size_t)i * 11 : NULL, tl, 0.01f * (float)i, layer),
                     SONA_OK, "%s", sona_trajectory_last_error(t));
    }
    cr_assert_eq(sona_trajectory_set_route(t, "expert-3"), SONA_OK);
    cr_assert_eq(sona_trajectory_set_route(t, "expert-7"), SONA_OK);
    cr_assert_eq(sona_trajectory_add_context(t, "doc:17"), SONA_OK);
    cr_assert_eq(sona_trajectory_add_context(t, ""), SONA_OK);
    cr_assert_eq(sona_trajectory_add_context(t, "tenant:acme"), SONA_OK);
    cr_assert_eq(sona_trajectory_end(t, 0.75f), SONA_OK);

    cr_assert_eq(sona_trajectory_dim(t), dim);
    got[dim] = 42.0f;
    cr_assert_eq(sona_trajectory_query(t, got, dim), SONA_OK);
    cr_assert_eq(got[dim], 42.0f, "the query copy wrote past dim");
    expect_stored(storage, q, got, dim, "query");
    cr_assert_eq(sona_trajectory_step_count(t), steps);
    for (uint32_t i = 0; i < steps; i++) {
        sona_trajectory_step s;
        cr_assert_eq(sona_trajectory_get_step(t, i, &s), SONA_OK);
        const uint32_t al = dim + i % 3, tl = (i * 7) % 11;
        cr_assert_eq(s.activations_len, al);
        cr_assert_eq(s.attention_len, tl);
        got[al] = 42.0f;
        cr_assert_eq(sona_trajectory_step_activations(t, i, got, al), SONA_OK);
        cr_assert_eq(got[al], 42.0f, "step %u: the activations copy wrote past its length", i);
        expect_stored(storage, acts + (size_t)i * max_len, got, al, "activations");
        got[tl] = 42.0f;
        cr_assert_eq(sona_trajectory_step_attention(t, i, got, tl), SONA_OK);
        cr_assert_eq(got[tl], 42.0f, "step %u: the attention copy wrote past its length", i);
        expect_stored(storage, attn + (size_t)i * 11, got, tl, "attention");
        cr_assert_eq(s.reward, 0.01f * (float)i);
        cr_assert_eq(s.layer, i % 4 == 0 ? SONA_LAYER_NONE : (int32_t)(i % 12));
        cr_assert_eq(sona_trajectory_step_reward(t, i), s.reward);
        cr_assert_eq(sona_trajectory_step_layer(t, i), s.layer);
    }
    sona_trajectory_step s;
    cr_expect_eq(sona_trajectory_get_step(t, steps, &s), SONA_E_INVALID);
    cr_expect_eq(sona_trajectory_step_activations(t, steps, got, max_len), SONA_E_INVALID);
    cr_expect_str_eq(sona_trajectory_route(t), "expert-7");
    cr_assert_eq(sona_trajectory_context_count(t), 3);
    cr_expect_str_eq(sona_trajectory_context(t, 0), "doc:17");
    cr_expect_str_eq(sona_trajectory_context(t, 1), "");
    cr_expect_str_eq(sona_trajectory_context(t, 2), "tenant:acme");
    cr_expect_null(sona_trajectory_context(t, 3));
    cr_expect_eq(sona_trajectory_quality(t), 0.75f);
    cr_expect(sona_trajectory_ended(t));
    expect_round_trip(t);
    free(q);
    free(acts);
    free(attn);
    free(got);
    sona_trajectory_destroy(t);
    sona_id_source_destroy(ids);
}

Test(trajectory, steps_are_stored_in_each_format)
{
    const uint64_t seed = test_seed();
    for (int k = 0; k < 3; k++) {
        build_and_check(all_storages[k], 1, 1, 0, seed);
        build_and_check(all_storages[k], 37, 5, 1, seed);
        build_and_check(all_storages[k], 256, 10, 1, seed);
        build_and_check(all_storages[k], 257, 300, 0, seed); /* the arena grows many times */
    }
}

/* Tiny and huge magnitudes: Q8 blocks whose scale is subnormal, and F16's range limit. */
Test(trajectory, extreme_magnitudes)
{
    sona_id_source *ids = make_ids(0);
    float q[40], got[40];
    for (int i = 0; i < 40; i++)
        q[i] = (float)(i - 20) * 1e-40f; /* subnormal floats: a subnormal Q8 scale */
    sona_trajectory *t;
    cr_assert_eq(sona_trajectory_begin(ids, SONA_STORAGE_Q8, q, 40, &t), SONA_OK);
    cr_assert_eq(sona_trajectory_query(t, got, 40), SONA_OK);
    expect_stored(SONA_STORAGE_Q8, q, got, 40, "subnormal query");
    for (int i = 0; i < 40; i++)
        q[i] = (float)(i - 20) * 1.5e37f; /* up to 3e38, near FLT_MAX */
    cr_assert_eq(sona_trajectory_add_step(t, q, 40, NULL, 0, 0.0f, 0), SONA_OK);
    cr_assert_eq(sona_trajectory_step_activations(t, 0, got, 40), SONA_OK);
    expect_stored(SONA_STORAGE_Q8, q, got, 40, "huge activations");
    sona_trajectory_destroy(t);

    float h[3] = {65504.0f, -65519.0f, 1e-8f};
    cr_assert_eq(sona_trajectory_begin(ids, SONA_STORAGE_F16, h, 3, &t), SONA_OK, "the largest halves fit");
    cr_assert_eq(sona_trajectory_query(t, got, 3), SONA_OK);
    cr_expect_eq(got[0], 65504.0f);
    cr_expect_eq(got[1], -65504.0f);
    expect_stored(SONA_STORAGE_F16, h, got, 3, "F16 range");
    h[1] = 65520.0f; /* rounds to Inf as a half */
    cr_expect_eq(sona_trajectory_add_step(t, h, 3, NULL, 0, 0.0f, 0), SONA_E_NONFINITE);
    cr_expect_eq(sona_trajectory_add_step(t, got, 3, h, 3, 0.0f, 0), SONA_E_NONFINITE);
    cr_expect_eq(sona_trajectory_reset(t, ids, h, 3), SONA_E_NONFINITE);
    cr_expect_eq(sona_trajectory_step_count(t), 0);
    cr_assert_eq(sona_trajectory_query(t, got, 3), SONA_OK);
    cr_expect_eq(got[1], -65504.0f, "a refused reset changed the query");
    sona_trajectory_destroy(t);
    sona_id_source_destroy(ids);
}

Test(trajectory, copies_refuse_short_buffers)
{
    sona_id_source *ids = make_ids(0);
    float q[5] = {1, 2, 3, 4, 5}, a[7] = {1, 2, 3, 4, 5, 6, 7}, att[2] = {0.5f, 0.5f}, got[8];
    for (int k = 0; k < 3; k++) {
        sona_trajectory *t;
        cr_assert_eq(sona_trajectory_begin(ids, all_storages[k], q, 5, &t), SONA_OK);
        cr_assert_eq(sona_trajectory_add_step(t, a, 7, att, 2, 0.5f, 1), SONA_OK);
        cr_assert_eq(sona_trajectory_add_step(t, a, 7, NULL, 0, 0.5f, 1), SONA_OK);
        for (int i = 0; i < 8; i++)
            got[i] = -1.0f;
        cr_expect_eq(sona_trajectory_query(t, got, 4), SONA_E_SIZE);
        cr_expect_eq(sona_trajectory_step_activations(t, 0, got, 6), SONA_E_SIZE);
        cr_expect_eq(sona_trajectory_step_attention(t, 0, got, 1), SONA_E_SIZE);
        for (int i = 0; i < 8; i++)
            cr_expect_eq(got[i], -1.0f, "%s: a refused copy wrote got[%d]", storage_names[k], i);
        cr_expect(strlen(sona_last_error()) > 0);
        cr_expect_eq(sona_trajectory_query(NULL, got, 8), SONA_E_NULL);
        cr_expect_eq(sona_trajectory_query(t, NULL, 8), SONA_E_NULL);
        cr_expect_eq(sona_trajectory_step_activations(t, 0, NULL, 8), SONA_E_NULL);
        cr_expect_eq(sona_trajectory_step_activations(NULL, 0, got, 8), SONA_E_NULL);
        cr_expect_eq(sona_trajectory_step_attention(t, 1, NULL, 0), SONA_OK, "an empty attention needs no buffer");
        cr_expect_eq(sona_trajectory_step_attention(t, 2, got, 8), SONA_E_INVALID);
        sona_trajectory_destroy(t);
    }
    sona_id_source_destroy(ids);
}

Test(trajectory, latency_is_measured_in_microseconds)
{
    sona_id_source *ids = make_ids(0);
    float q = 1.0f;
    sona_trajectory *t;
    cr_assert_eq(sona_trajectory_begin(ids, SONA_STORAGE_F32, &q, 1, &t), SONA_OK);
    cr_expect_eq(sona_trajectory_latency_us(t), 0, "no latency before end");
    cr_expect(isnan(sona_trajectory_quality(t)));
    struct timespec pause = {0, 3 * 1000 * 1000};
    nanosleep(&pause, NULL);
    cr_assert_eq(sona_trajectory_end(t, 0.5f), SONA_OK);
    const uint64_t lat = sona_trajectory_latency_us(t);
    cr_expect_geq(lat, 3000, "latency %" PRIu64 " us after a 3 ms sleep", lat);
    cr_expect_lt(lat, 60000000, "latency %" PRIu64 " us is not in microseconds", lat);
    cr_expect_gt(sona_trajectory_start_us(t), 0);
    sona_trajectory_destroy(t);
    sona_id_source_destroy(ids);
}

/* Step 0 of t reads back as what it read back as before (decoded values compared exactly). */
static void expect_step0(sona_trajectory *t, const float *before_acts, const float *before_att)
{
    float acts[5], att[3];
    cr_assert_eq(sona_trajectory_step_activations(t, 0, acts, 5), SONA_OK);
    cr_assert_eq(sona_trajectory_step_attention(t, 0, att, 3), SONA_OK);
    cr_expect_eq(memcmp(acts, before_acts, sizeof acts), 0, "step 0's activations changed");
    cr_expect_eq(memcmp(att, before_att, sizeof att), 0, "step 0's attention changed");
}

static void bad_input_case(sona_storage storage)
{
    sona_id_source *ids = make_ids(0);
    float q[5] = {1, 2, 3, 4, 5}, a[5] = {0.5f, -0.25f, 0.5f, 0.125f, 0.5f}, att[3] = {0.1f, 0.2f, 0.7f};
    sona_trajectory *t = (sona_trajectory *)0x1;
    q[2] = NAN;
    cr_expect_eq(sona_trajectory_begin(ids, storage, q, 5, &t), SONA_E_NONFINITE);
    cr_expect_null(t);
    cr_expect(strlen(sona_last_error()) > 0);
    q[2] = 3;
    cr_expect_eq(sona_trajectory_begin(ids, storage, q, 0, &t), SONA_E_INVALID);
    cr_expect_eq(sona_trajectory_begin(NULL, storage, q, 5, &t), SONA_E_NULL);
    cr_expect_eq(sona_trajectory_begin(ids, (sona_storage)7, q, 5, &t), SONA_E_INVALID);
    cr_assert_eq(sona_trajectory_begin(ids, storage, q, 5, &t), SONA_OK);
    cr_expect_str_eq(sona_trajectory_last_error(t), "");
    cr_assert_eq(sona_trajectory_add_step(t, a, 5, att, 3, 0.5f, 2), SONA_OK);
    const uint64_t id = sona_trajectory_id(t);
    float acts0[5], att0[3];
    cr_assert_eq(sona_trajectory_step_activations(t, 0, acts0, 5), SONA_OK);
    cr_assert_eq(sona_trajectory_step_attention(t, 0, att0, 3), SONA_OK);

    a[4] = INFINITY;
    cr_expect_eq(sona_trajectory_add_step(t, a, 5, att, 3, 0.5f, 2), SONA_E_NONFINITE);
    a[4] = 0.5f;
    att[0] = NAN;
    cr_expect_eq(sona_trajectory_add_step(t, a, 5, att, 3, 0.5f, 2), SONA_E_NONFINITE);
    att[0] = 0.1f;
    cr_expect_eq(sona_trajectory_add_step(t, a, 5, att, 3, NAN, 2), SONA_E_NONFINITE);
    cr_expect_eq(sona_trajectory_add_step(t, a, 5, att, 3, -INFINITY, 2), SONA_E_NONFINITE);
    cr_expect_eq(sona_trajectory_add_step(t, a, 0, att, 3, 0.5f, 2), SONA_E_INVALID);
    cr_expect_eq(sona_trajectory_add_step(t, a, 5, att, 3, 0.5f, -2), SONA_E_INVALID);
    cr_expect_eq(sona_trajectory_add_step(t, a, 5, NULL, 3, 0.5f, 2), SONA_E_NULL);
    cr_expect_eq(sona_trajectory_add_step(t, NULL, 5, att, 3, 0.5f, 2), SONA_E_NULL);
    cr_expect_eq(sona_trajectory_reserve(t, 2, UINT32_MAX, UINT32_MAX), SONA_E_NOMEM, "past 4 GiB");
    cr_expect_eq(sona_trajectory_set_route(t, NULL), SONA_E_NULL);
    cr_expect_eq(sona_trajectory_end(t, NAN), SONA_E_NONFINITE);
    cr_expect(strlen(sona_trajectory_last_error(t)) > 0);

    cr_expect_eq(sona_trajectory_step_count(t), 1, "a refused step was stored");
    cr_expect_eq(sona_trajectory_id(t), id);
    cr_expect_not(sona_trajectory_ended(t), "a refused end() ended the trajectory");
    expect_step0(t, acts0, att0);
    cr_expect_null(sona_trajectory_route(t));

    /* A refused step's bytes do not leak into the next one. */
    cr_assert_eq(sona_trajectory_add_step(t, a, 5, NULL, 0, 1.0f, SONA_LAYER_NONE), SONA_OK);
    float got[5];
    cr_assert_eq(sona_trajectory_step_activations(t, 1, got, 5), SONA_OK);
    cr_expect_eq(memcmp(got, acts0, sizeof got), 0, "the same activations read back the same");
    cr_assert_eq(sona_trajectory_step_attention(t, 1, NULL, 0), SONA_OK);

    /* After end(), nothing changes it. */
    cr_assert_eq(sona_trajectory_end(t, 0.9f), SONA_OK);
    cr_expect_eq(sona_trajectory_add_step(t, a, 5, att, 3, 0.5f, 2), SONA_E_STATE);
    cr_expect_eq(sona_trajectory_reserve(t, 1, 5, 0), SONA_E_STATE);
    cr_expect_eq(sona_trajectory_set_route(t, "r"), SONA_E_STATE);
    cr_expect_eq(sona_trajectory_add_context(t, "c"), SONA_E_STATE);
    cr_expect_eq(sona_trajectory_end(t, 0.1f), SONA_E_STATE);
    cr_expect_eq(sona_trajectory_quality(t), 0.9f);
    cr_expect_eq(sona_trajectory_step_count(t), 2);
    expect_step0(t, acts0, att0);
    sona_trajectory_destroy(t);
    sona_id_source_destroy(ids);
}

Test(trajectory, bad_input_is_refused_and_changes_nothing)
{
    for (int k = 0; k < 3; k++)
        bad_input_case(all_storages[k]);
}

Test(trajectory, reset_reuses_the_trajectory_and_keeps_its_format)
{
    sona_id_source *ids = make_ids(10);
    float q1[4] = {1, 2, 3, 4}, q2[9] = {9, 8, 7, 6, 5, 4, 3, 2, 1}, a[9] = {0}, got[9];
    a[3] = 1;
    for (int k = 0; k < 3; k++) {
        sona_id_source_set(ids, 10);
        sona_trajectory *t;
        cr_assert_eq(sona_trajectory_begin(ids, all_storages[k], q1, 4, &t), SONA_OK);
        for (int i = 0; i < 50; i++)
            cr_assert_eq(sona_trajectory_add_step(t, a, 4, a, 9, 0.1f, 0), SONA_OK);
        cr_assert_eq(sona_trajectory_set_route(t, "x"), SONA_OK);
        cr_assert_eq(sona_trajectory_end(t, 0.3f), SONA_OK);
        q2[8] = NAN;
        cr_expect_eq(sona_trajectory_reset(t, ids, q2, 9), SONA_E_NONFINITE);
        cr_expect_eq(sona_trajectory_step_count(t), 50, "a refused reset changed the trajectory");
        cr_expect_eq(sona_trajectory_id(t), 10);
        cr_assert_eq(sona_trajectory_query(t, got, 9), SONA_OK);
        expect_stored(all_storages[k], q1, got, 4, "query after a refused reset");
        q2[8] = 1;
        cr_assert_eq(sona_trajectory_reset(t, ids, q2, 9), SONA_OK);
        cr_expect_eq(sona_trajectory_storage(t), all_storages[k]);
        cr_expect_eq(sona_trajectory_dim(t), 9);
        cr_assert_eq(sona_trajectory_query(t, got, 9), SONA_OK);
        expect_stored(all_storages[k], q2, got, 9, "query after reset");
        cr_expect_eq(sona_trajectory_id(t), 11);
        cr_expect_eq(sona_trajectory_step_count(t), 0);
        cr_expect_not(sona_trajectory_ended(t));
        cr_expect_null(sona_trajectory_route(t));
        cr_expect_eq(sona_trajectory_context_count(t), 0);
        cr_assert_eq(sona_trajectory_add_step(t, a, 9, NULL, 0, 0.1f, 0), SONA_OK);
        cr_assert_eq(sona_trajectory_step_activations(t, 0, got, 9), SONA_OK);
        expect_stored(all_storages[k], a, got, 9, "activations after reset");
        sona_trajectory_destroy(t);
    }
    sona_id_source_destroy(ids);
}

Test(trajectory, bytes_round_trip_without_strings_or_steps)
{
    sona_id_source *ids = make_ids(5);
    float q[3] = {0.5f, -2.0f, 1e-3f};
    for (int k = 0; k < 3; k++) {
        sona_trajectory *t;
        cr_assert_eq(sona_trajectory_begin(ids, all_storages[k], q, 3, &t), SONA_OK);
        cr_assert_eq(sona_trajectory_end(t, -0.25f), SONA_OK);
        expect_round_trip(t); /* no step, no route, no context */
        sona_trajectory_destroy(t);
    }
    sona_id_source_destroy(ids);
}

/* Reads a copy of rec[n] with `bytes` bytes at `at` replaced by v: must be refused. */
static void expect_refused(const uint8_t *rec, size_t n, size_t at, const void *v, size_t bytes, const char *what)
{
    uint8_t *bad = malloc(n);
    memcpy(bad, rec, n);
    memcpy(bad + at, v, bytes);
    sona_rbuf r = {.p = bad, .len = n};
    sona_trajectory *t = (sona_trajectory *)0x1;
    cr_expect_eq(sona_trajectory_read(&r, &t), SONA_E_CORRUPT, "%s was accepted", what);
    cr_expect_null(t);
    sona_trajectory_destroy(t);
    free(bad);
}

Test(trajectory, records_that_do_not_hold_are_refused)
{
    sona_id_source *ids = make_ids(1);
    const float q[5] = {1, 2, 3, 4, 5}, a[5] = {0.5f, -0.25f, 0.5f, 0.125f, 0.5f}, att[3] = {0.1f, 0.2f, 0.7f};
    for (int k = 0; k < 3; k++) {
        const sona_storage s = all_storages[k];
        sona_trajectory *t;
        cr_assert_eq(sona_trajectory_begin(ids, s, q, 5, &t), SONA_OK);
        cr_assert_eq(sona_trajectory_add_step(t, a, 5, att, 3, 0.5f, 2), SONA_OK);
        cr_assert_eq(sona_trajectory_set_route(t, "r"), SONA_OK);
        cr_assert_eq(sona_trajectory_add_context(t, "c"), SONA_OK);
        cr_assert_eq(sona_trajectory_end(t, 0.5f), SONA_OK);
        sona_wbuf w = {0};
        sona_trajectory_write(t, &w);
        /* Offsets from core/memory/trajectory_internal.h: a 40-byte header, 16 bytes per step, the
         * query; the record ends with the route "r" and the context (u32 1, "c"). */
        const uint32_t storage3 = 3, zero = 0, layer_m2 = (uint32_t)-2, f16_inf = 0x7c00;
        const float nan = NAN, inf = INFINITY, huge = 3.0e38f;
        expect_refused(w.p, w.len, 8, &storage3, 4, "an unknown storage format");
        expect_refused(w.p, w.len, 12, &zero, 4, "a zero width");
        expect_refused(w.p, w.len, 16, &nan, 4, "a NaN quality");
        expect_refused(w.p, w.len, 40, &zero, 4, "a step without activations");
        expect_refused(w.p, w.len, 48, &inf, 4, "an infinite reward");
        expect_refused(w.p, w.len, 52, &layer_m2, 4, "layer -2");
        expect_refused(w.p, w.len, w.len - 6, &zero, 1, "a zero byte in the route");
        expect_refused(w.p, w.len, w.len - 1, &zero, 1, "a zero byte in a context");
        /* The query's first value (Q8: its block's scale) decoding to NaN or Inf. */
        if (s == SONA_STORAGE_F32)
            expect_refused(w.p, w.len, 56, &nan, 4, "an F32 NaN");
        else if (s == SONA_STORAGE_F16)
            expect_refused(w.p, w.len, 56, &f16_inf, 2, "an F16 Inf");
        else {
            expect_refused(w.p, w.len, 56, &inf, 4, "a Q8 scale of Inf");
            expect_refused(w.p, w.len, 56, &huge, 4, "a Q8 scale whose codes overflow");
        }
        sona_rbuf r = {.p = w.p, .len = w.len};
        sona_trajectory *u;
        cr_assert_eq(sona_trajectory_read(&r, &u), SONA_OK, "the unpatched record: %s", sona_last_error());
        sona_trajectory_destroy(u);
        sona_trajectory_destroy(t);
        free(w.p);
    }
    sona_id_source_destroy(ids);
}
