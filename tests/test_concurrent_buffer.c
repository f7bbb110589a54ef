/* SPDX-License-Identifier: MIT */
/* The trajectory buffer under contention: 4 producers and 1 drainer move 1,000,000 tiny
 * trajectories, each with a unique id. Every one must come out exactly once or be counted as
 * dropped, and the counters must be exact, under both full-buffer policies. Run under
 * ThreadSanitizer by scripts/test.sh (every test_concurrent_* test is). */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support/concurrent_test.h"
#include <sona.h>

enum { PRODUCERS = 4, TOTAL = 1000000, PER_PRODUCER = TOTAL / PRODUCERS, DRAIN_BATCH = 256 };

typedef struct shared {
    sona_trajectory_buffer *buf;
    uint32_t capacity;
    sona_id_source *ids;
    _Atomic int producers_left;
    unsigned char *refused; /* refused[id] = 1: written only by the producer that owned id */
    unsigned char *seen;    /* seen[id]: written only by the drainer */
    uint64_t duplicates, out_of_range;
} shared;

typedef struct producer_arg {
    shared *s;
    int index;
    uint64_t refused; /* this producer's refusals */
} producer_arg;

static void *produce(void *p)
{
    producer_arg *a = p;
    shared *s = a->s;
    const float q = (float)a->index;
    for (int i = 0; i < PER_PRODUCER; i++) {
        sona_trajectory *t = NULL;
        if (sona_trajectory_begin(s->ids, SONA_STORAGE_F32, &q, 1, &t) != SONA_OK || sona_trajectory_end(t, 0.5f) != SONA_OK)
            abort();
        const uint64_t id = sona_trajectory_id(t);
        if (sona_trajectory_buffer_len(s->buf) >= s->capacity)
            sched_yield(); /* give the drainer a turn, so both paths see heavy traffic */
        const sona_status st = sona_trajectory_buffer_record(s->buf, t);
        if (st == SONA_E_FULL) {
            s->refused[id] = 1; /* drop newest: still ours */
            a->refused++;
            sona_trajectory_destroy(t);
        } else if (st != SONA_OK) {
            abort();
        }
    }
    atomic_fetch_sub(&s->producers_left, 1);
    return NULL;
}

static void take(shared *s, sona_trajectory **out, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        const uint64_t id = sona_trajectory_id(out[i]);
        if (id >= TOTAL)
            s->out_of_range++;
        else if (s->seen[id]++)
            s->duplicates++;
        sona_trajectory_destroy(out[i]);
    }
}

static void stress(sona_full_policy policy, uint32_t capacity)
{
    printf("[concurrent] %d producers, 1 drainer, %d trajectories, capacity %u, policy %s\n", PRODUCERS,
           TOTAL, capacity, policy == SONA_FULL_DROP_NEWEST ? "drop newest" : "overwrite oldest");
    shared s;
    memset(&s, 0, sizeof s);
    s.refused = calloc(TOTAL, 1);
    s.seen = calloc(TOTAL, 1);
    REQUIRE(s.refused && s.seen, "out of memory");
    sona_trajectory_buffer_config cfg;
    sona_trajectory_buffer_config_default(&cfg);
    cfg.capacity = capacity;
    cfg.policy = policy;
    s.capacity = capacity;
    REQUIRE(sona_trajectory_buffer_create(&cfg, &s.buf) == SONA_OK, "create: %s", sona_last_error());
    REQUIRE(sona_id_source_create(0, &s.ids) == SONA_OK, "id source: %s", sona_last_error());
    atomic_init(&s.producers_left, PRODUCERS);

    pthread_t th[PRODUCERS];
    producer_arg args[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++) {
        args[i] = (producer_arg){&s, i, 0};
        REQUIRE(pthread_create(&th[i], NULL, produce, &args[i]) == 0, "pthread_create failed");
    }
    /* The drainer (this thread): drain until the producers are done, then once more. */
    sona_trajectory *out[DRAIN_BATCH];
    uint32_t taken;
    uint64_t drained = 0;
    for (;;) {
        const int done = atomic_load(&s.producers_left) == 0;
        do {
            REQUIRE(sona_trajectory_buffer_drain(s.buf, out, DRAIN_BATCH, &taken) == SONA_OK, "drain failed");
            take(&s, out, taken);
            drained += taken;
        } while (taken == DRAIN_BATCH);
        if (done)
            break;
    }
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(th[i], NULL);

    sona_trajectory_buffer_stats st;
    sona_trajectory_buffer_get_stats(s.buf, &st);
    uint64_t refused = 0;
    for (int i = 0; i < PRODUCERS; i++)
        refused += args[i].refused;
    printf("[concurrent] recorded %llu drained %llu dropped %llu (refused %llu), contention %.3f%%\n",
           (unsigned long long)st.recorded, (unsigned long long)st.drained,
           (unsigned long long)st.dropped, (unsigned long long)refused,
           100.0 * (double)st.retries / (double)(st.recorded + st.drained + 1));
    CHECK(sona_id_source_peek(s.ids) == TOTAL, "every id was issued once");
    CHECK(s.duplicates == 0, "%llu trajectories came out twice", (unsigned long long)s.duplicates);
    CHECK(s.out_of_range == 0, "%llu ids were never issued", (unsigned long long)s.out_of_range);
    CHECK(st.len == 0, "the buffer was emptied");
    CHECK(st.drained == drained, "drained counter %llu, drainer saw %llu", (unsigned long long)st.drained,
                 (unsigned long long)drained);
    /* Every id: drained, refused, or (overwrite) evicted, and never two of these. */
    uint64_t missing = 0, both = 0;
    for (uint64_t id = 0; id < TOTAL; id++) {
        if (s.seen[id] && s.refused[id])
            both++;
        if (!s.seen[id] && !s.refused[id])
            missing++;
    }
    CHECK(both == 0, "a refused trajectory was also drained");
    CHECK(st.drained > 0, "nothing was drained");
    if (policy == SONA_FULL_DROP_NEWEST) {
        CHECK(st.dropped == refused, "dropped counts each refusal");
        CHECK(missing == 0, "%llu trajectories were lost", (unsigned long long)missing);
        CHECK(st.recorded == TOTAL - refused, "recorded + refused is not the total");
        CHECK(st.recorded == st.drained, "recorded != drained");
    } else {
        CHECK(refused == 0, "overwrite oldest never refuses");
        CHECK(st.recorded == TOTAL, "not every record was accepted");
        CHECK(missing == st.dropped, "%llu missing, %llu counted as evicted", (unsigned long long)missing,
                     (unsigned long long)st.dropped);
        CHECK(st.recorded == st.drained + st.dropped, "recorded != drained + dropped");
    }
    sona_trajectory_buffer_destroy(s.buf);
    sona_id_source_destroy(s.ids);
    free(s.refused);
    free(s.seen);
}

CONCURRENT_TEST(concurrent_buffer, drop_newest_loses_nothing_uncounted) { stress(SONA_FULL_DROP_NEWEST, 1024); }
CONCURRENT_TEST(concurrent_buffer, overwrite_oldest_loses_nothing_uncounted) { stress(SONA_FULL_OVERWRITE_OLDEST, 1024); }
CONCURRENT_MAIN(concurrent_buffer_drop_newest_loses_nothing_uncounted,
                concurrent_buffer_overwrite_oldest_loses_nothing_uncounted)
