/* SPDX-License-Identifier: MIT */
/* The trajectory buffer on one thread: FIFO order, both full-buffer policies with their
 * ownership rules, exact counters, partial drains, bad input. The many-thread stress test is
 * test_concurrent_buffer.c. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "core/memory/trajectory_internal.h"
#include <sona.h>

static sona_trajectory *tiny(sona_id_source *ids)
{
    float q = 1.0f;
    sona_trajectory *t = NULL;
    cr_assert_eq(sona_trajectory_begin(ids, SONA_STORAGE_F32, &q, 1, &t), SONA_OK);
    cr_assert_eq(sona_trajectory_end(t, 0.5f), SONA_OK);
    return t;
}

static sona_trajectory_buffer *make(uint32_t capacity, sona_full_policy policy)
{
    sona_trajectory_buffer_config cfg;
    sona_trajectory_buffer_config_default(&cfg);
    cfg.capacity = capacity;
    cfg.policy = policy;
    sona_trajectory_buffer *b = NULL;
    cr_assert_eq(sona_trajectory_buffer_create(&cfg, &b), SONA_OK, "%s", sona_last_error());
    return b;
}

static void expect_stats(sona_trajectory_buffer *b, uint64_t rec, uint64_t drained, uint64_t dropped,
                         uint32_t len)
{
    sona_trajectory_buffer_stats s;
    sona_trajectory_buffer_get_stats(b, &s);
    cr_expect_eq(s.recorded, rec, "recorded %llu, expected %llu", (unsigned long long)s.recorded,
                 (unsigned long long)rec);
    cr_expect_eq(s.drained, drained, "drained %llu, expected %llu", (unsigned long long)s.drained,
                 (unsigned long long)drained);
    cr_expect_eq(s.dropped, dropped, "dropped %llu, expected %llu", (unsigned long long)s.dropped,
                 (unsigned long long)dropped);
    cr_expect_eq(s.len, len);
    cr_expect_eq(s.retries, 0, "one thread never contends");
    cr_expect_eq(sona_trajectory_buffer_len(b), len);
}

Test(trajectory_buffer, defaults_and_bad_config)
{
    sona_trajectory_buffer_config cfg;
    sona_trajectory_buffer_config_default(&cfg);
    cr_expect_eq(cfg.capacity, 10000);
    cr_expect_eq(cfg.policy, SONA_FULL_DROP_NEWEST);
    sona_trajectory_buffer *b = (sona_trajectory_buffer *)0x1;
    cfg.capacity = 0;
    cr_expect_eq(sona_trajectory_buffer_create(&cfg, &b), SONA_E_INVALID);
    cr_expect_null(b);
    cfg.capacity = 4;
    cfg.policy = (sona_full_policy)7;
    cr_expect_eq(sona_trajectory_buffer_create(&cfg, &b), SONA_E_INVALID);
    cr_expect_eq(sona_trajectory_buffer_create(NULL, &b), SONA_E_NULL);
    sona_trajectory_buffer_destroy(NULL);
}

Test(trajectory_buffer, fifo_and_partial_drains)
{
    sona_id_source *ids;
    cr_assert_eq(sona_id_source_create(0, &ids), SONA_OK);
    sona_trajectory_buffer *b = make(7, SONA_FULL_DROP_NEWEST);
    sona_trajectory *out[7];
    uint32_t taken = 99;
    cr_assert_eq(sona_trajectory_buffer_drain(b, out, 7, &taken), SONA_OK);
    cr_expect_eq(taken, 0, "an empty buffer gives nothing");
    uint64_t next_expected = 0;
    /* Several laps around the ring, with drains of varying size. */
    for (int round = 0; round < 10; round++) {
        const uint32_t n = 1 + (uint32_t)round % 7;
        for (uint32_t i = 0; i < n; i++)
            cr_assert_eq(sona_trajectory_buffer_record(b, tiny(ids)), SONA_OK);
        cr_expect_eq(sona_trajectory_buffer_len(b), n);
        uint32_t got = 0;
        while (got < n) {
            cr_assert_eq(sona_trajectory_buffer_drain(b, out, 2, &taken), SONA_OK);
            cr_assert_gt(taken, 0);
            cr_assert_leq(taken, 2);
            for (uint32_t i = 0; i < taken; i++) {
                cr_expect_eq(sona_trajectory_id(out[i]), next_expected++, "not first in, first out");
                sona_trajectory_destroy(out[i]);
            }
            got += taken;
        }
    }
    expect_stats(b, next_expected, next_expected, 0, 0);
    sona_trajectory_buffer_destroy(b);
    sona_id_source_destroy(ids);
}

Test(trajectory_buffer, drop_newest_refuses_and_the_caller_keeps_it)
{
    sona_id_source *ids;
    cr_assert_eq(sona_id_source_create(0, &ids), SONA_OK);
    sona_trajectory_buffer *b = make(3, SONA_FULL_DROP_NEWEST);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(sona_trajectory_buffer_record(b, tiny(ids)), SONA_OK);
    for (int i = 0; i < 2; i++) {
        sona_trajectory *t = tiny(ids);
        cr_expect_eq(sona_trajectory_buffer_record(b, t), SONA_E_FULL);
        /* Still the caller's: readable, and ours to destroy (ASan checks both). */
        cr_expect_eq(sona_trajectory_id(t), 3 + (uint64_t)i);
        sona_trajectory_destroy(t);
    }
    expect_stats(b, 3, 0, 2, 3);
    sona_trajectory *out[3];
    uint32_t taken;
    cr_assert_eq(sona_trajectory_buffer_drain(b, out, 3, &taken), SONA_OK);
    cr_assert_eq(taken, 3);
    for (uint32_t i = 0; i < 3; i++) {
        cr_expect_eq(sona_trajectory_id(out[i]), i, "the oldest are kept");
        sona_trajectory_destroy(out[i]);
    }
    expect_stats(b, 3, 3, 2, 0);
    sona_trajectory_buffer_destroy(b);
    sona_id_source_destroy(ids);
}

Test(trajectory_buffer, overwrite_oldest_evicts_and_frees)
{
    sona_id_source *ids;
    cr_assert_eq(sona_id_source_create(0, &ids), SONA_OK);
    sona_trajectory_buffer *b = make(3, SONA_FULL_OVERWRITE_OLDEST);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(sona_trajectory_buffer_record(b, tiny(ids)), SONA_OK);
    /* recorded == drained + len + dropped */
    expect_stats(b, 8, 0, 5, 3);
    sona_trajectory *out[3];
    uint32_t taken;
    cr_assert_eq(sona_trajectory_buffer_drain(b, out, 3, &taken), SONA_OK);
    cr_assert_eq(taken, 3);
    for (uint32_t i = 0; i < 3; i++) {
        cr_expect_eq(sona_trajectory_id(out[i]), 5 + i, "the newest are kept");
        sona_trajectory_destroy(out[i]);
    }
    expect_stats(b, 8, 3, 5, 0);
    /* Destroying a buffer that still holds trajectories frees them (ASan's leak check). */
    for (int i = 0; i < 2; i++)
        cr_assert_eq(sona_trajectory_buffer_record(b, tiny(ids)), SONA_OK);
    sona_trajectory_buffer_destroy(b);
    sona_id_source_destroy(ids);
}

Test(trajectory_buffer, bad_input_leaves_ownership_with_the_caller)
{
    sona_id_source *ids;
    cr_assert_eq(sona_id_source_create(0, &ids), SONA_OK);
    sona_trajectory_buffer *b = make(4, SONA_FULL_DROP_NEWEST);
    float q = 1.0f;
    sona_trajectory *open;
    cr_assert_eq(sona_trajectory_begin(ids, SONA_STORAGE_F32, &q, 1, &open), SONA_OK);
    cr_expect_eq(sona_trajectory_buffer_record(b, open), SONA_E_STATE, "an open trajectory is refused");
    cr_expect_eq(sona_trajectory_buffer_record(b, NULL), SONA_E_NULL);
    cr_expect_eq(sona_trajectory_buffer_record(NULL, open), SONA_E_NULL);
    uint32_t taken;
    cr_expect_eq(sona_trajectory_buffer_drain(b, NULL, 4, &taken), SONA_E_NULL);
    cr_expect_eq(sona_trajectory_buffer_drain(b, NULL, 0, &taken), SONA_OK);
    expect_stats(b, 0, 0, 0, 0);
    sona_trajectory_destroy(open);
    sona_trajectory_buffer_destroy(b);
    sona_id_source_destroy(ids);
}

Test(trajectory_buffer, peek_sees_the_oldest_first_and_takes_nothing)
{
    sona_id_source *ids;
    cr_assert_eq(sona_id_source_create(0, &ids), SONA_OK);
    sona_trajectory_buffer *b = make(5, SONA_FULL_DROP_NEWEST);
    const sona_trajectory *seen[8];
    cr_expect_eq(sona_trajectory_buffer_peek(b, seen, 8), 0, "an empty buffer shows nothing");
    /* Move the ring's start, so that what is held wraps around its end. */
    sona_trajectory *out[5];
    uint32_t taken;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(sona_trajectory_buffer_record(b, tiny(ids)), SONA_OK);
    cr_assert_eq(sona_trajectory_buffer_drain(b, out, 3, &taken), SONA_OK);
    for (uint32_t i = 0; i < taken; i++)
        sona_trajectory_destroy(out[i]);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(sona_trajectory_buffer_record(b, tiny(ids)), SONA_OK);
    cr_assert_eq(sona_trajectory_buffer_peek(b, seen, 8), 5);
    for (uint32_t i = 0; i < 5; i++)
        cr_expect_eq(sona_trajectory_id(seen[i]), 3 + i, "not oldest first");
    cr_assert_eq(sona_trajectory_buffer_peek(b, seen, 2), 2, "max is respected");
    cr_expect_eq(sona_trajectory_id(seen[1]), 4);
    expect_stats(b, 8, 3, 0, 5); /* peeking took nothing and counted nothing */
    cr_assert_eq(sona_trajectory_buffer_peek(b, seen, 8), 5);
    cr_assert_eq(sona_trajectory_buffer_drain(b, out, 5, &taken), SONA_OK);
    cr_assert_eq(taken, 5);
    for (uint32_t i = 0; i < 5; i++) {
        cr_expect_eq(out[i], seen[i], "drain gives what peek showed, in its order");
        sona_trajectory_destroy(out[i]);
    }
    sona_trajectory_buffer_destroy(b);
    sona_id_source_destroy(ids);
}

/* Capacity 1 under both policies, over several laps: a full one refuses (or evicts), never
 * overwrites a held trajectory in place. */
Test(trajectory_buffer, capacity_one)
{
    sona_id_source *ids;
    cr_assert_eq(sona_id_source_create(1, &ids), SONA_OK);
    sona_trajectory_buffer *drop = make(1, SONA_FULL_DROP_NEWEST);
    sona_trajectory_buffer *over = make(1, SONA_FULL_OVERWRITE_OLDEST);
    for (uint64_t lap = 0; lap < 3; lap++) {
        sona_trajectory *a = tiny(ids), *b = tiny(ids), *out[2];
        cr_assert_eq(sona_trajectory_buffer_record(drop, a), SONA_OK);
        cr_assert_eq(sona_trajectory_buffer_record(drop, b), SONA_E_FULL, "lap %llu", (unsigned long long)lap);
        uint32_t taken = 0;
        cr_assert_eq(sona_trajectory_buffer_drain(drop, out, 2, &taken), SONA_OK);
        cr_assert_eq(taken, 1);
        cr_expect_eq(out[0], a);
        expect_stats(drop, lap + 1, lap + 1, lap + 1, 0);
        sona_trajectory_destroy(a);

        cr_assert_eq(sona_trajectory_buffer_record(over, b), SONA_OK);
        sona_trajectory *c = tiny(ids);
        cr_assert_eq(sona_trajectory_buffer_record(over, c), SONA_OK); /* b is evicted */
        cr_assert_eq(sona_trajectory_buffer_drain(over, out, 2, &taken), SONA_OK);
        cr_assert_eq(taken, 1);
        cr_expect_eq(out[0], c);
        sona_trajectory_destroy(c);
    }
    sona_trajectory_buffer_destroy(drop);
    sona_trajectory_buffer_destroy(over);
    sona_id_source_destroy(ids);
}
