/* Many inference threads apply and record while loop B runs in the engine's thread and tenants
 * come and go: every apply succeeds with finite output, and the counters add up exactly. */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "core/rng.h"
#include "support/concurrent_test.h"
#include "support/op_cases.h"
#include <sona.h>

enum { H = 33, THREADS = 4, REQUESTS = 300 };

typedef struct worker {
    sona_engine *e;
    uint64_t seed;
    int id;
    uint64_t ended_ok, apply_failures, nonfinite_outputs;
} worker;

static atomic_int stop_churn;

static void *inference(void *arg)
{
    worker *w = arg;
    sona_rng r;
    sona_rng_seed(&r, w->seed, (uint64_t)w->id);
    float x[H], y[H], a[H];
    for (int i = 0; i < REQUESTS; i++) {
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
    const sona_status fl = sona_force_learn(e);
    REQUIRE(fl == SONA_OK || fl == SONA_E_EMPTY, "%s", sona_engine_last_error(e));
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

CONCURRENT_MAIN(concurrent_engine_apply_record_and_loop_b_together)
