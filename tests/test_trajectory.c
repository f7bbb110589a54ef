/* Trajectories: ids per source, steps stored exactly (odd widths, any attention length, many
 * steps growing the arena), strings kept, latency measured, bad input refused with nothing
 * changed, no change after end. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rng.h"
#include "support/op_cases.h"
#include <sona.h>

static void fill(sona_rng *r, float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        v[i] = 2.0f * sona_rng_uniform(r) - 1.0f;
}

static sona_id_source *make_ids(uint64_t first)
{
    sona_id_source *ids = NULL;
    cr_assert_eq(sona_id_source_create(first, &ids), SONA_OK);
    return ids;
}

Test(trajectory, ids_come_from_their_own_source)
{
    sona_id_source *a = make_ids(100), *b = make_ids(0);
    float q[3] = {1, 2, 3};
    sona_trajectory *t1, *t2, *t3;
    cr_assert_eq(sona_trajectory_begin(a, q, 3, &t1), SONA_OK);
    cr_assert_eq(sona_trajectory_begin(b, q, 3, &t2), SONA_OK);
    cr_assert_eq(sona_trajectory_begin(a, q, 3, &t3), SONA_OK);
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

/* Builds a trajectory of `steps` random steps and checks every stored value. */
static void build_and_check(uint32_t dim, uint32_t steps, uint64_t seed)
{
    printf("[trajectory] dim=%u steps=%u seed %" PRIu64 "\n", dim, steps, seed);
    sona_rng r;
    sona_rng_seed(&r, seed, dim);
    sona_id_source *ids = make_ids(1);
    float *q = malloc(dim * sizeof *q);
    fill(&r, q, dim);
    sona_trajectory *t;
    cr_assert_eq(sona_trajectory_begin(ids, q, dim, &t), SONA_OK);
    /* Step i: activations of width dim + i % 3, attention of length (i * 7) % 11 (0 included). */
    const uint32_t max_len = dim + 2 + 11;
    float *acts = malloc((size_t)steps * max_len * sizeof *acts);
    float *attn = malloc((size_t)steps * 11 * sizeof *attn);
    fill(&r, acts, (size_t)steps * max_len);
    fill(&r, attn, (size_t)steps * 11);
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

    uint32_t d = 0;
    const float *qq = sona_trajectory_query(t, &d);
    cr_assert_eq(d, dim);
    cr_assert_eq(memcmp(qq, q, dim * sizeof *q), 0, "query not kept exactly");
    cr_assert_eq(sona_trajectory_step_count(t), steps);
    for (uint32_t i = 0; i < steps; i++) {
        sona_trajectory_step s;
        cr_assert_eq(sona_trajectory_get_step(t, i, &s), SONA_OK);
        const uint32_t al = dim + i % 3, tl = (i * 7) % 11;
        cr_assert_eq(s.activations_len, al);
        cr_assert_eq(memcmp(s.activations, acts + (size_t)i * max_len, al * sizeof(float)), 0, "step %u activations", i);
        cr_assert_eq(s.attention_len, tl);
        if (tl)
            cr_assert_eq(memcmp(s.attention, attn + (size_t)i * 11, tl * sizeof(float)), 0, "step %u attention", i);
        else
            cr_assert_null(s.attention);
        cr_assert_eq(s.reward, 0.01f * (float)i);
        cr_assert_eq(s.layer, i % 4 == 0 ? SONA_LAYER_NONE : (int32_t)(i % 12));
        cr_assert_eq(((uintptr_t)s.activations) % 16, 0, "vectors are 16-byte aligned");
        uint32_t len;
        cr_assert_eq(sona_trajectory_step_activations(t, i, &len), s.activations);
        cr_assert_eq(len, al);
        cr_assert_eq(sona_trajectory_step_reward(t, i), s.reward);
        cr_assert_eq(sona_trajectory_step_layer(t, i), s.layer);
    }
    sona_trajectory_step s;
    cr_expect_eq(sona_trajectory_get_step(t, steps, &s), SONA_E_INVALID);
    cr_expect_null(sona_trajectory_step_activations(t, steps, NULL));
    cr_expect_str_eq(sona_trajectory_route(t), "expert-7");
    cr_assert_eq(sona_trajectory_context_count(t), 3);
    cr_expect_str_eq(sona_trajectory_context(t, 0), "doc:17");
    cr_expect_str_eq(sona_trajectory_context(t, 1), "");
    cr_expect_str_eq(sona_trajectory_context(t, 2), "tenant:acme");
    cr_expect_null(sona_trajectory_context(t, 3));
    cr_expect_eq(sona_trajectory_quality(t), 0.75f);
    cr_expect(sona_trajectory_ended(t));
    free(q);
    free(acts);
    free(attn);
    sona_trajectory_destroy(t);
    sona_id_source_destroy(ids);
}

Test(trajectory, steps_are_stored_exactly)
{
    const uint64_t seed = op_test_seed();
    build_and_check(1, 1, seed);
    build_and_check(37, 5, seed);
    build_and_check(257, 300, seed); /* the arena grows many times */
}

Test(trajectory, latency_is_measured_in_microseconds)
{
    sona_id_source *ids = make_ids(0);
    float q = 1.0f;
    sona_trajectory *t;
    cr_assert_eq(sona_trajectory_begin(ids, &q, 1, &t), SONA_OK);
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

Test(trajectory, bad_input_is_refused_and_changes_nothing)
{
    sona_id_source *ids = make_ids(0);
    float q[5] = {1, 2, 3, 4, 5}, a[5] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f}, att[3] = {0.1f, 0.2f, 0.7f};
    sona_trajectory *t = (sona_trajectory *)0x1;
    q[2] = NAN;
    cr_expect_eq(sona_trajectory_begin(ids, q, 5, &t), SONA_E_NONFINITE);
    cr_expect_null(t);
    cr_expect(strlen(sona_last_error()) > 0);
    q[2] = 3;
    cr_expect_eq(sona_trajectory_begin(ids, q, 0, &t), SONA_E_INVALID);
    cr_expect_eq(sona_trajectory_begin(NULL, q, 5, &t), SONA_E_NULL);
    cr_assert_eq(sona_trajectory_begin(ids, q, 5, &t), SONA_OK);
    cr_assert_eq(sona_trajectory_add_step(t, a, 5, att, 3, 0.5f, 2), SONA_OK);
    const uint64_t id = sona_trajectory_id(t);

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
    cr_expect_eq(sona_trajectory_set_route(t, NULL), SONA_E_NULL);
    cr_expect_eq(sona_trajectory_end(t, NAN), SONA_E_NONFINITE);
    cr_expect(strlen(sona_trajectory_last_error(t)) > 0);

    cr_expect_eq(sona_trajectory_step_count(t), 1, "a refused step was stored");
    cr_expect_eq(sona_trajectory_id(t), id);
    cr_expect_not(sona_trajectory_ended(t), "a refused end() ended the trajectory");
    sona_trajectory_step s;
    cr_assert_eq(sona_trajectory_get_step(t, 0, &s), SONA_OK);
    cr_expect_eq(s.activations[4], 0.5f);
    cr_expect_eq(s.attention[0], 0.1f);
    cr_expect_null(sona_trajectory_route(t));

    /* A refused step's bytes do not leak into the next one. */
    cr_assert_eq(sona_trajectory_add_step(t, a, 5, NULL, 0, 1.0f, SONA_LAYER_NONE), SONA_OK);
    cr_assert_eq(sona_trajectory_get_step(t, 1, &s), SONA_OK);
    cr_expect_eq(memcmp(s.activations, a, sizeof a), 0);

    /* After end(), nothing changes it. */
    cr_assert_eq(sona_trajectory_end(t, 0.9f), SONA_OK);
    cr_expect_eq(sona_trajectory_add_step(t, a, 5, att, 3, 0.5f, 2), SONA_E_STATE);
    cr_expect_eq(sona_trajectory_set_route(t, "r"), SONA_E_STATE);
    cr_expect_eq(sona_trajectory_add_context(t, "c"), SONA_E_STATE);
    cr_expect_eq(sona_trajectory_end(t, 0.1f), SONA_E_STATE);
    cr_expect_eq(sona_trajectory_quality(t), 0.9f);
    cr_expect_eq(sona_trajectory_step_count(t), 2);
    sona_trajectory_destroy(t);
    sona_id_source_destroy(ids);
}

Test(trajectory, reset_reuses_the_trajectory)
{
    sona_id_source *ids = make_ids(10);
    float q1[4] = {1, 2, 3, 4}, q2[9] = {9, 8, 7, 6, 5, 4, 3, 2, 1}, a[9] = {0};
    a[3] = 1;
    sona_trajectory *t;
    cr_assert_eq(sona_trajectory_begin(ids, q1, 4, &t), SONA_OK);
    for (int i = 0; i < 50; i++)
        cr_assert_eq(sona_trajectory_add_step(t, a, 4, a, 9, 0.1f, 0), SONA_OK);
    cr_assert_eq(sona_trajectory_set_route(t, "x"), SONA_OK);
    cr_assert_eq(sona_trajectory_end(t, 0.3f), SONA_OK);
    q2[8] = NAN;
    cr_expect_eq(sona_trajectory_reset(t, ids, q2, 9), SONA_E_NONFINITE);
    cr_expect_eq(sona_trajectory_step_count(t), 50, "a refused reset changed the trajectory");
    cr_expect_eq(sona_trajectory_id(t), 10);
    q2[8] = 1;
    cr_assert_eq(sona_trajectory_reset(t, ids, q2, 9), SONA_OK);
    uint32_t d;
    const float *q = sona_trajectory_query(t, &d);
    cr_expect_eq(d, 9);
    cr_expect_eq(memcmp(q, q2, sizeof q2), 0);
    cr_expect_eq(sona_trajectory_id(t), 11);
    cr_expect_eq(sona_trajectory_step_count(t), 0);
    cr_expect_not(sona_trajectory_ended(t));
    cr_expect_null(sona_trajectory_route(t));
    cr_expect_eq(sona_trajectory_context_count(t), 0);
    cr_assert_eq(sona_trajectory_add_step(t, a, 9, NULL, 0, 0.1f, 0), SONA_OK);
    sona_trajectory_destroy(t);
    sona_id_source_destroy(ids);
}
