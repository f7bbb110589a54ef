/* Many inference threads apply and record while loop B runs in the engine's thread and tenants
 * come and go: every apply succeeds with finite output, and the counters add up exactly. The same
 * while another thread saves the state again and again: saving leaves the queue alone, and each
 * file is a consistent snapshot (recorded == processed + queued in it). */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/rng.h"
#include "support/concurrent_test.h"
#include "support/op_cases.h"
#include <sona.h>

enum { H = 33, THREADS = 4, REQUESTS = 300 };

typedef struct worker {
    sona_engine *e;
    uint64_t seed;
    int id;
    int requests; /* 0: REQUESTS */
    uint64_t ended_ok, apply_failures, nonfinite_outputs;
} worker;

static atomic_int stop_churn;

static void *inference(void *arg)
{
    worker *w = arg;
    sona_rng r;
    sona_rng_seed(&r, w->seed, (uint64_t)w->id);
    float x[H], y[H], a[H];
    for (int i = 0; i < (w->requests ? w->requests : REQUESTS); i++) {
        for (int h = 0; h < H; h++)
            x[h] = 2.0f * sona_rng_uniform(&r) - 1.0f;
        if (sona_apply(w->e, 0, x, y) != SONA_OK)
            w->apply_failures++;
        if (sona_apply_layer(w->e, (uint32_t)i % 2, y, y) != SONA_OK)
            w->apply_failures++;
        for (int h = 0; h < H; h++)
            if (!isfinite(y[h]))
                w->nonfinite_outputs++;
        sona_request *req;
        if (sona_request_begin(w->e, 0, x, &req) != SONA_OK)
            continue;
        for (uint32_t s = 0; s < 2; s++) {
            for (int h = 0; h < H; h++)
                a[h] = y[h] + 0.1f * sona_rng_normal(&r);
            sona_request_step(req, s, a, NULL, 0, sona_rng_uniform(&r));
        }
        if (sona_request_end(req, sona_rng_uniform(&r)) == SONA_OK)
            w->ended_ok++;
    }
    return NULL;
}

static void *tenant_churn(void *arg)
{
    sona_engine *e = arg;
    float x[H] = {1.0f}, y[H];
    while (!atomic_load(&stop_churn)) {
        int32_t t;
        if (sona_tenant_create(e, &t) == SONA_OK) {
            sona_apply(e, t, x, y);
            sona_tenant_remove(e, t);
        }
        sona_flush(e);
    }
    return NULL;
}

CONCURRENT_TEST(concurrent_engine, apply_record_and_loop_b_together)
{
    const uint64_t seed = op_test_seed();
    printf("[concurrent_engine] seed %" PRIu64 "\n", seed);
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, H);
    c.background_thread = 1;
    c.loop_b_threshold = 64;
    c.loop_b_min_batch = 8;
    c.loop_b_interval_ms = 5;
    c.clusters_per_cycle = 4;
    c.base_layers = 2;
    c.buffer_capacity = 400; /* small: some requests are dropped, and counted */
    c.max_tenants = 4;
    sona_engine *e = NULL;
    REQUIRE(sona_engine_create(&c, &e) == SONA_OK, "%s", sona_last_error());
    pthread_t th[THREADS], churn;
    worker w[THREADS];
    atomic_store(&stop_churn, 0);
    REQUIRE(pthread_create(&churn, NULL, tenant_churn, e) == 0, "pthread_create");
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.e = e, .seed = seed, .id = i};
        REQUIRE(pthread_create(&th[i], NULL, inference, &w[i]) == 0, "pthread_create");
    }
    uint64_t ended = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK(w[i].apply_failures == 0, "thread %d: %" PRIu64 " applies failed", i, w[i].apply_failures);
        CHECK(w[i].nonfinite_outputs == 0, "thread %d: non-finite outputs", i);
        ended += w[i].ended_ok;
    }
    atomic_store(&stop_churn, 1);
    pthread_join(churn, NULL);
    /* A cycle may be running in the engine's thread: a forced cycle waits for it to finish. */
    REQUIRE(sona_force_learn(e) == SONA_OK, "%s", sona_engine_last_error(e));
    sona_stats s;
    REQUIRE(sona_get_stats(e, &s) == SONA_OK, "stats");
    printf("[concurrent_engine] recorded %" PRIu64 " dropped %" PRIu64 " processed %" PRIu64
           " queued %" PRIu64 " cycles %" PRIu64 "\n",
           s.trajectories_recorded, s.trajectories_dropped, s.trajectories_processed,
           s.trajectories_queued, s.loop_b_cycles);
    CHECK(s.trajectories_recorded + s.trajectories_dropped == ended, "recorded + dropped != ended");
    CHECK(s.signals_accepted + s.signals_rejected == ended, "accepted + rejected != ended");
    CHECK(s.trajectories_processed + s.trajectories_queued == s.trajectories_recorded, "processed + queued != recorded");
    sona_engine_destroy(e);
}

enum { SAVES = 6 };

typedef struct saver {
    sona_engine *e;
    char paths[SAVES][96];
    uint32_t saves;
    uint32_t failures;
} saver;

static atomic_int stop_saving;

/* Saves over the first SAVES - 1 files in turn until told to stop. */
static void *saving(void *arg)
{
    saver *s = arg;
    do {
        if (sona_save(s->e, s->paths[s->saves % (SAVES - 1)]) == SONA_OK)
            s->saves++;
        else
            s->failures++;
    } while (!atomic_load(&stop_saving));
    return NULL;
}

static sona_engine *engine_for_saves(int background)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, H);
    c.background_thread = background;
    c.loop_b_threshold = 64;
    c.loop_b_min_batch = 8;
    c.loop_b_interval_ms = 5;
    c.clusters_per_cycle = 4;
    c.base_layers = 2;
    c.buffer_capacity = THREADS * 5 * REQUESTS; /* never full: saves meet producers mid-push */
    sona_engine *e = NULL;
    REQUIRE(sona_engine_create(&c, &e) == SONA_OK, "%s", sona_last_error());
    return e;
}

CONCURRENT_TEST(concurrent_engine, save_while_recording_and_learning)
{
    const uint64_t seed = op_test_seed();
    printf("[concurrent_engine] seed %" PRIu64 "\n", seed);
    sona_engine *e = engine_for_saves(1);
    saver sv = {.e = e};
    for (int i = 0; i < SAVES; i++)
        snprintf(sv.paths[i], sizeof sv.paths[i], "/tmp/sona_concurrent_%ld_%d.state", (long)getpid(), i);
    atomic_store(&stop_saving, 0);
    pthread_t th[THREADS], save_thread;
    worker w[THREADS];
    REQUIRE(pthread_create(&save_thread, NULL, saving, &sv) == 0, "pthread_create");
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.e = e, .seed = seed, .id = i, .requests = 5 * REQUESTS}; /* time for saves */
        REQUIRE(pthread_create(&th[i], NULL, inference, &w[i]) == 0, "pthread_create");
    }
    uint64_t ended = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        ended += w[i].ended_ok;
    }
    atomic_store(&stop_saving, 1);
    pthread_join(save_thread, NULL);
    CHECK(sv.failures == 0, "%u saves failed", sv.failures);
    /* Learning off, then a save between two equal looks at the counters: no cycle ran meanwhile
     * (one the loop thread had begun before may still finish first). */
    sona_engine_set_enabled(e, 0);
    sona_stats live, check;
    do {
        sona_get_stats(e, &live);
        REQUIRE(sona_save(e, sv.paths[SAVES - 1]) == SONA_OK, "%s", sona_engine_last_error(e));
        sona_get_stats(e, &check);
    } while (check.loop_b_cycles != live.loop_b_cycles);
    printf("[concurrent_engine] %u saves; recorded %" PRIu64 " dropped %" PRIu64 " processed %" PRIu64
           " queued %" PRIu64 "\n",
           sv.saves, live.trajectories_recorded, live.trajectories_dropped, live.trajectories_processed,
           live.trajectories_queued);
    CHECK(live.trajectories_recorded + live.trajectories_dropped == ended, "recorded + dropped != ended");
    CHECK(live.trajectories_processed + live.trajectories_queued == live.trajectories_recorded,
          "processed + queued != recorded: saving disturbed the queue");

    /* Every file taken while requests and cycles ran is a snapshot that adds up. */
    for (uint32_t i = 0; i < sv.saves && i < SAVES - 1; i++) {
        sona_engine *f = engine_for_saves(0);
        REQUIRE(sona_load(f, sv.paths[i]) == SONA_OK, "%s", sona_engine_last_error(f));
        sona_stats s;
        sona_get_stats(f, &s);
        printf("[concurrent_engine] file %u: recorded %" PRIu64 " processed %" PRIu64 " queued %" PRIu64 "\n", i,
               s.trajectories_recorded, s.trajectories_processed, s.trajectories_queued);
        CHECK(s.trajectories_recorded == s.trajectories_processed + s.trajectories_queued,
              "file %u: recorded %" PRIu64 " != processed %" PRIu64 " + queued %" PRIu64, i,
              s.trajectories_recorded, s.trajectories_processed, s.trajectories_queued);
        CHECK(s.trajectories_recorded + s.trajectories_dropped <= ended, "file %u counts more than ended", i);
        CHECK(s.trajectories_processed <= live.trajectories_processed, "file %u: processed from the future", i);
        CHECK(sona_force_learn(f) == SONA_OK, "file %u: %s", i, sona_engine_last_error(f));
        sona_engine_destroy(f);
    }

    /* The quiet save holds exactly the live queue and counters. */
    sona_engine *f = engine_for_saves(0);
    REQUIRE(sona_load(f, sv.paths[SAVES - 1]) == SONA_OK, "%s", sona_engine_last_error(f));
    sona_stats s;
    sona_get_stats(f, &s);
    CHECK(s.trajectories_queued == live.trajectories_queued && s.trajectories_recorded == live.trajectories_recorded &&
              s.trajectories_processed == live.trajectories_processed &&
              s.trajectories_dropped == live.trajectories_dropped,
          "the loaded engine's counters differ from the saved one's");
    sona_engine_destroy(f);
    for (int i = 0; i < SAVES; i++)
        unlink(sv.paths[i]);
    sona_engine_destroy(e);
}

CONCURRENT_MAIN(concurrent_engine_apply_record_and_loop_b_together, concurrent_engine_save_while_recording_and_learning)
