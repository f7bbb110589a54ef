/* SPDX-License-Identifier: MIT */
/* sona_get_stats while requests end and loop B cycles run: in every result the trajectory counts
 * add up, recorded == processed + in cycle + queued, and the monotonic counters never go back,
 * including trajectories a running cycle holds (in cycle), which a reader must see at least
 * once for the check to mean anything. Producers also send out-of-range values now and then:
 * those are refused and counted exactly (inputs_out_of_range) under contention. Run under
 * ThreadSanitizer by scripts/test.sh (label "concurrent"). */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#include "support/concurrent_test.h"
#include <sona.h>

enum { PRODUCERS = 4, PER_PRODUCER = 3000, DIM = 32, HOSTILE_EVERY = 7 };

typedef struct shared {
    sona_engine *e;
    atomic_int seen; /* the reader saw a cycle in flight: producers may stop after their share */
    double deadline; /* ...or at this time (CLOCK_MONOTONIC s) */
    atomic_uint_fast64_t ended, refused, failures;
} shared;

/* Counts an unexpected status; the first few are printed with the engine's message. */
static void failed(shared *s, const char *call, sona_status st)
{
    if (atomic_fetch_add(&s->failures, 1) < 5)
        fprintf(stderr, "[concurrent] %s: %s (%s)\n", call, sona_status_str(st), sona_engine_last_error(s->e));
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

typedef struct producer {
    shared *s;
    int index;
    atomic_uint_fast64_t *done;
} producer;

static void *produce(void *p)
{
    producer *pr = p;
    shared *s = pr->s;
    float x[DIM], a[DIM];
    /* Their share, and on until the reader has seen a cycle in flight (or the deadline). */
    for (int i = 0; i < PER_PRODUCER || (!atomic_load(&s->seen) && now_s() < s->deadline); i++) {
        for (int h = 0; h < DIM; h++)
            x[h] = (float)((h * 31 + i * 7 + pr->index * 13) % 17) / 17.0f - 0.5f;
        for (int h = 0; h < DIM; h++)
            a[h] = x[(h + 1) % DIM];
        if (i >= PER_PRODUCER) {
            /* Past their share only to give the reader a cycle to see: slower, so that the
             * reader and the loop thread get the cores (four producers flat out on two cores
             * under ASan once starved the reader to 377 reads in 60 s, none during a cycle). */
            const struct timespec pause = {0, 200000};
            nanosleep(&pause, NULL);
        }
        sona_request *r;
        sona_status st = sona_request_begin(s->e, 0, x, &r);
        if (st != SONA_OK) {
            failed(s, "begin", st);
            continue;
        }
        const int hostile = i % HOSTILE_EVERY == HOSTILE_EVERY - 1;
        if ((st = sona_request_step(r, (uint32_t)(i % 2), a, NULL, 0, 0.5f)) != SONA_OK)
            failed(s, "step", st);
        /* a quality of 3e38: refused before any baseline, counted once */
        st = sona_request_end(r, hostile ? 3e38f : 0.25f + (float)(i % 4) * 0.2f);
        if (hostile) {
            if (st != SONA_E_INVALID)
                failed(s, "end (hostile)", st);
            atomic_fetch_add(&s->refused, 1);
        } else {
            if (st != SONA_OK)
                failed(s, "end", st);
            atomic_fetch_add(&s->ended, 1);
        }
    }
    atomic_fetch_add(pr->done, 1);
    return NULL;
}

CONCURRENT_TEST(concurrent_stats, trajectory_counts_add_up_at_every_read)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, DIM);
    c.base_layers = 2;
    c.loop_b_threshold = 16;
    c.loop_b_min_batch = 1;
    c.loop_b_interval_ms = 1;
    c.clusters_per_cycle = 4;
    c.device_apply = 0;
    c.background_thread = 1; /* loop B in the engine's thread, concurrent with the producers */
    shared s = {0};
    REQUIRE(sona_engine_create(&c, &s.e) == SONA_OK, "create: %s", sona_last_error());
    s.deadline = now_s() + 60.0;
    atomic_uint_fast64_t done = 0;
    pthread_t th[PRODUCERS];
    producer pr[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++) {
        pr[i] = (producer){&s, i, &done};
        REQUIRE(pthread_create(&th[i], NULL, produce, &pr[i]) == 0, "pthread_create failed");
    }
    uint64_t reads = 0, bad = 0, backwards = 0, seen_in_cycle = 0;
    sona_stats last = {0};
    int running = 1;
    while (running) {
        running = atomic_load(&done) < PRODUCERS;
        sona_stats st;
        REQUIRE(sona_get_stats(s.e, &st) == SONA_OK, "get_stats");
        reads++;
        if (st.trajectories_recorded != st.trajectories_processed + st.trajectories_in_cycle + st.trajectories_queued)
            bad++;
        if (st.trajectories_recorded < last.trajectories_recorded ||
            st.trajectories_processed < last.trajectories_processed || st.signals_accepted < last.signals_accepted ||
            st.inputs_out_of_range < last.inputs_out_of_range || st.loop_b_cycles < last.loop_b_cycles)
            backwards++;
        if (st.trajectories_in_cycle > 0) {
            seen_in_cycle++;
            atomic_store(&s.seen, 1);
        }
        last = st;
    }
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(th[i], NULL);
    REQUIRE(sona_force_learn(s.e) == SONA_OK, "force_learn: %s", sona_engine_last_error(s.e));
    sona_stats fin;
    REQUIRE(sona_get_stats(s.e, &fin) == SONA_OK, "get_stats");
    printf("[concurrent] stats: %" PRIu64 " reads, %" PRIu64 " saw a cycle's trajectories in flight; %" PRIu64
           " loop B cycles, recorded %" PRIu64 " dropped %" PRIu64 ", %" PRIu64 " refused out of range\n",
           reads, seen_in_cycle, fin.loop_b_cycles, fin.trajectories_recorded, fin.trajectories_dropped,
           fin.inputs_out_of_range);
    CHECK(atomic_load(&s.failures) == 0, "%" PRIu64 " calls returned an unexpected status",
          (uint64_t)atomic_load(&s.failures));
    CHECK(bad == 0, "%" PRIu64 " of %" PRIu64 " reads: recorded != processed + in cycle + queued", bad, reads);
    CHECK(backwards == 0, "%" PRIu64 " reads saw a monotonic counter go back", backwards);
    CHECK(fin.loop_b_cycles > 1, "loop B ran %" PRIu64 " cycles", fin.loop_b_cycles);
    CHECK(seen_in_cycle > 0, "no read saw a cycle in flight: the in-cycle count went unchecked");
    CHECK(fin.trajectories_recorded + fin.trajectories_dropped == atomic_load(&s.ended), "recorded + dropped != ended");
    CHECK(fin.trajectories_processed == fin.trajectories_recorded && fin.trajectories_in_cycle == 0 &&
              fin.trajectories_queued == 0,
          "after force_learn: processed %" PRIu64 ", in cycle %" PRIu64 ", queued %" PRIu64, fin.trajectories_processed,
          fin.trajectories_in_cycle, fin.trajectories_queued);
    CHECK(fin.inputs_out_of_range == atomic_load(&s.refused), "out of range %" PRIu64 ", refused %" PRIu64,
          fin.inputs_out_of_range, (uint64_t)atomic_load(&s.refused));
    CHECK(fin.signals_rejected >= atomic_load(&s.refused), "rejected %" PRIu64, fin.signals_rejected);
    sona_engine_destroy(s.e);
}

CONCURRENT_MAIN(concurrent_stats_trajectory_counts_add_up_at_every_read)
