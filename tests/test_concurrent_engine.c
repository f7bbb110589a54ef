/* SPDX-License-Identifier: MIT */
/* Many inference threads apply and record while loop B runs in the engine's thread and tenants
 * come and go: every apply succeeds with finite output, and the counters add up exactly. The same
 * while another thread saves the state again and again: saving leaves the queue alone, and each
 * file is a consistent snapshot (recorded == processed + queued in it). And while requests end
 * and cycles run, every sona_get_stats adds up (recorded == processed + in cycle + queued), a
 * running cycle's batch counted in cycle. And a save does not wait for a running cycle: it takes
 * the state from before the cycle with the cycle's batch still queued. And loop A's thread
 * learns what the callers' threads would, its full queue loses nothing, and a request outlived
 * by its tenant teaches the tenant's successor nothing. */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/rng.h"
#include "engine/inspect.h"
#include "support/files.h"
#include "support/concurrent_test.h"
#include "support/fill.h"
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
    const uint64_t seed = test_seed();
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
    const uint64_t seed = test_seed();
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
    /* Learning off, then a save between two equal looks at the counters, none mid-cycle: no
     * cycle ran meanwhile (one the loop thread had begun before may still be running, and a save
     * does not wait for it: it would save the state from before that cycle). */
    sona_engine_set_enabled(e, 0);
    sona_stats live, check;
    do {
        sona_get_stats(e, &live);
        REQUIRE(sona_save(e, sv.paths[SAVES - 1]) == SONA_OK, "%s", sona_engine_last_error(e));
        sona_get_stats(e, &check);
    } while (check.loop_b_cycles != live.loop_b_cycles || live.trajectories_in_cycle || check.trajectories_in_cycle);
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

/* ---- the trajectory counts add up in every sona_get_stats, mid-cycle included -------------- */

typedef struct poller {
    sona_engine *e;
    atomic_int *stop;
    uint64_t polls, broken, backwards, mid_cycle, max_in_cycle;
    sona_stats first_broken;
} poller;

/* Reads the stats until told to stop: every result must add up (recorded == processed + in
 * cycle + queued) and no counter may go back. */
static void *polling(void *arg)
{
    poller *p = arg;
    sona_stats prev;
    memset(&prev, 0, sizeof prev);
    do {
        sona_stats s;
        if (sona_get_stats(p->e, &s) != SONA_OK) {
            p->broken++;
            continue;
        }
        p->polls++;
        if (s.trajectories_recorded != s.trajectories_processed + s.trajectories_in_cycle + s.trajectories_queued) {
            if (!p->broken)
                p->first_broken = s;
            p->broken++;
        }
        if (s.trajectories_recorded < prev.trajectories_recorded ||
            s.trajectories_processed < prev.trajectories_processed ||
            s.trajectories_processed + s.trajectories_in_cycle < prev.trajectories_processed + prev.trajectories_in_cycle ||
            s.loop_b_cycles < prev.loop_b_cycles)
            p->backwards++;
        if (s.trajectories_in_cycle) {
            p->mid_cycle++;
            if (s.trajectories_in_cycle > p->max_in_cycle)
                p->max_in_cycle = s.trajectories_in_cycle;
        }
        prev = s;
    } while (!atomic_load(p->stop));
    return NULL;
}

static void check_poller(const poller *p, const char *what)
{
    printf("[concurrent_engine] %s: %" PRIu64 " polls, %" PRIu64 " mid-cycle (at most %" PRIu64 " in cycle)\n", what,
           p->polls, p->mid_cycle, p->max_in_cycle);
    CHECK(p->broken == 0,
          "%s: %" PRIu64 " of %" PRIu64 " stats did not add up, the first: recorded %" PRIu64 " processed %" PRIu64
          " in cycle %" PRIu64 " queued %" PRIu64,
          what, p->broken, p->polls, p->first_broken.trajectories_recorded, p->first_broken.trajectories_processed,
          p->first_broken.trajectories_in_cycle, p->first_broken.trajectories_queued);
    CHECK(p->backwards == 0, "%s: %" PRIu64 " polls saw a counter go back", what, p->backwards);
}

/* Producers record while loop B's thread runs small cycles and another thread reads the stats
 * without pause. */
CONCURRENT_TEST(concurrent_engine, stats_add_up_while_requests_and_cycles_run)
{
    const uint64_t seed = test_seed();
    printf("[concurrent_engine] seed %" PRIu64 "\n", seed);
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, H);
    c.background_thread = 1;
    c.loop_b_threshold = 32;
    c.loop_b_min_batch = 4;
    c.loop_b_interval_ms = 2;
    c.clusters_per_cycle = 4;
    c.base_layers = 2;
    c.buffer_capacity = 200; /* some requests are dropped */
    sona_engine *e = NULL;
    REQUIRE(sona_engine_create(&c, &e) == SONA_OK, "%s", sona_last_error());
    atomic_int stop;
    atomic_store(&stop, 0);
    poller p = {.e = e, .stop = &stop};
    pthread_t th[THREADS], poll_thread;
    worker w[THREADS];
    REQUIRE(pthread_create(&poll_thread, NULL, polling, &p) == 0, "pthread_create");
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.e = e, .seed = seed, .id = i};
        REQUIRE(pthread_create(&th[i], NULL, inference, &w[i]) == 0, "pthread_create");
    }
    uint64_t ended = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        ended += w[i].ended_ok;
    }
    REQUIRE(sona_force_learn(e) == SONA_OK, "%s", sona_engine_last_error(e));
    atomic_store(&stop, 1);
    pthread_join(poll_thread, NULL);
    check_poller(&p, "requests and cycles");
    sona_stats s;
    REQUIRE(sona_get_stats(e, &s) == SONA_OK, "stats");
    printf("[concurrent_engine] recorded %" PRIu64 " dropped %" PRIu64 " cycles %" PRIu64 "\n", s.trajectories_recorded,
           s.trajectories_dropped, s.loop_b_cycles);
    CHECK(s.trajectories_recorded + s.trajectories_dropped == ended, "recorded + dropped != ended");
    CHECK(s.trajectories_in_cycle == 0 && s.trajectories_processed + s.trajectories_queued == s.trajectories_recorded,
          "after the last cycle: in cycle %" PRIu64 ", processed %" PRIu64 " + queued %" PRIu64 " != recorded %" PRIu64,
          s.trajectories_in_cycle, s.trajectories_processed, s.trajectories_queued, s.trajectories_recorded);
    sona_engine_destroy(e);
}

typedef struct forcer {
    sona_engine *e;
    atomic_int *done;
    sona_status st;
} forcer;

static void *forcing(void *arg)
{
    forcer *f = arg;
    f->st = sona_force_learn(f->e);
    atomic_store(f->done, 1);
    return NULL;
}

/* A large forced cycle while another thread reads the stats: mid-cycle the batch is counted in
 * cycle (all of it: nothing else is queued), neither queued nor processed; afterwards processed.
 * A reader needs to catch the cycle once: up to 5 rounds, each cycle some milliseconds long. */
CONCURRENT_TEST(concurrent_engine, a_running_cycle_counts_its_batch_in_cycle)
{
    enum { BATCH = 1500, ROUNDS = 5 };
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, H);
    c.background_thread = 0;
    c.loop_b_threshold = 1u << 30;
    c.loop_b_interval_ms = 0;
    c.clusters_per_cycle = 16;
    c.base_layers = 2;
    c.buffer_capacity = BATCH;
    sona_engine *e = NULL;
    REQUIRE(sona_engine_create(&c, &e) == SONA_OK, "%s", sona_last_error());
    uint64_t processed = 0;
    poller p = {0};
    for (int round = 0; round < ROUNDS && p.max_in_cycle == 0; round++) {
        worker w = {.e = e, .seed = 77, .id = round, .requests = BATCH};
        inference(&w);
        REQUIRE(w.ended_ok == BATCH, "round %d: %" PRIu64 " requests ended", round, w.ended_ok);
        atomic_int done;
        atomic_store(&done, 0);
        p = (poller){.e = e, .stop = &done};
        forcer f = {.e = e, .done = &done};
        pthread_t ft;
        REQUIRE(pthread_create(&ft, NULL, forcing, &f) == 0, "pthread_create");
        polling(&p); /* until the cycle is done */
        pthread_join(ft, NULL);
        REQUIRE(f.st == SONA_OK, "%s", sona_engine_last_error(e));
        processed += BATCH;
        check_poller(&p, "a forced cycle");
        CHECK(p.max_in_cycle == 0 || p.max_in_cycle == BATCH, "in cycle %" PRIu64 ", not the batch of %d",
              p.max_in_cycle, BATCH);
        sona_stats s;
        REQUIRE(sona_get_stats(e, &s) == SONA_OK, "stats");
        CHECK(s.trajectories_processed == processed && s.trajectories_in_cycle == 0 && s.trajectories_queued == 0,
              "after the cycle: processed %" PRIu64 " in cycle %" PRIu64 " queued %" PRIu64, s.trajectories_processed,
              s.trajectories_in_cycle, s.trajectories_queued);
    }
    CHECK(p.max_in_cycle == BATCH, "no read of the stats caught the cycle in %d rounds", ROUNDS);
    sona_engine_destroy(e);
}

/* ---- a save does not wait for a running cycle ----------------------------------------------- */

/* Loop B's test hook: holds the cycle (drained, not yet learned) until released, at most 60 s. */
typedef struct held_cycle {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int in_cycle, release, timed_out;
} held_cycle;

static void hold_cycle(void *arg)
{
    held_cycle *h = arg;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 60;
    pthread_mutex_lock(&h->mu);
    h->in_cycle = 1;
    pthread_cond_broadcast(&h->cv);
    while (!h->release && !h->timed_out)
        h->timed_out = pthread_cond_timedwait(&h->cv, &h->mu, &until) != 0;
    pthread_mutex_unlock(&h->mu);
}

static sona_engine *engine_for_held_cycles(void)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, H);
    c.background_thread = 0;
    c.loop_b_threshold = 1u << 30;
    c.loop_b_interval_ms = 0;
    c.clusters_per_cycle = 4;
    c.base_layers = 2;
    c.buffer_capacity = 1000;
    sona_engine *e = NULL;
    REQUIRE(sona_engine_create(&c, &e) == SONA_OK, "%s", sona_last_error());
    return e;
}

/* A forced cycle on its own thread, held by the hook once it has drained its batch. */
typedef struct held {
    held_cycle h;
    atomic_int done;
    forcer f;
    pthread_t thread;
} held;

static void cycle_hold(held *c, sona_engine *e)
{
    c->h = (held_cycle){.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    eng_inspect_cycle_hook(e, hold_cycle, &c->h);
    atomic_store(&c->done, 0);
    c->f = (forcer){.e = e, .done = &c->done};
    REQUIRE(pthread_create(&c->thread, NULL, forcing, &c->f) == 0, "pthread_create");
    pthread_mutex_lock(&c->h.mu);
    while (!c->h.in_cycle)
        pthread_cond_wait(&c->h.cv, &c->h.mu);
    pthread_mutex_unlock(&c->h.mu);
}

/* Lets the held cycle go and waits for it: 1 when it was still held (not timed out, not done). */
static int cycle_release(held *c)
{
    pthread_mutex_lock(&c->h.mu);
    const int still_held = !c->h.timed_out && !atomic_load(&c->done);
    c->h.release = 1;
    pthread_cond_broadcast(&c->h.cv);
    pthread_mutex_unlock(&c->h.mu);
    pthread_join(c->thread, NULL);
    eng_inspect_cycle_hook(c->f.e, NULL, NULL);
    return still_held;
}

static void record(sona_engine *e, int id, int n)
{
    worker w = {.e = e, .seed = 91, .id = id, .requests = n};
    inference(&w);
    REQUIRE(w.ended_ok == (uint64_t)n, "%" PRIu64 " of %d requests ended", w.ended_ok, n);
}

/* A cycle held mid-way (its batch drained, Base-LoRA and the bank not yet changed) while requests
 * go on and a save runs: the save returns without the cycle, and its file is the state before
 * the cycle with the batch still queued ahead of what came after (recorded == processed +
 * queued), the Base-LoRA of before the cycle. The file loads, saves again to the same bytes, and
 * learns the batch. A save after the cycle holds what the cycle learned. */
CONCURRENT_TEST(concurrent_engine, a_save_does_not_wait_for_a_running_cycle)
{
    enum { FIRST = 40, BATCH = 50, LATER = 10 };
    sona_engine *e = engine_for_held_cycles();
    const sona_engine_config *c = sona_engine_get_config(e);
    const size_t n = (size_t)c->base_layers * c->base_rank * H;
    float *before = malloc(2 * n * sizeof *before), *loaded = malloc(2 * n * sizeof *loaded);
    REQUIRE(before && loaded, "out of memory");
    record(e, 0, FIRST);
    REQUIRE(sona_force_learn(e) == SONA_OK, "%s", sona_engine_last_error(e));
    record(e, 1, BATCH);
    REQUIRE(eng_inspect_base_weights(e, before, before + n) == SONA_OK, "base weights");

    held cycle;
    cycle_hold(&cycle, e);

    record(e, 2, LATER); /* requests go on meanwhile */
    char path[3][96];
    for (int i = 0; i < 3; i++)
        snprintf(path[i], sizeof path[i], "/tmp/sona_held_cycle_%ld_%d.state", (long)getpid(), i);
    const sona_status saved = sona_save(e, path[0]);
    const int still_held = cycle_release(&cycle);
    REQUIRE(saved == SONA_OK, "save during the cycle: %s", sona_engine_last_error(e));
    CHECK(still_held, "the save waited for the cycle");
    REQUIRE(cycle.f.st == SONA_OK, "the held cycle: %s", sona_engine_last_error(e));
    REQUIRE(sona_save(e, path[2]) == SONA_OK, "save after the cycle: %s", sona_engine_last_error(e));

    /* The file of the held cycle: the state before it, the batch queued first. */
    sona_engine *g = engine_for_held_cycles();
    REQUIRE(sona_load(g, path[0]) == SONA_OK, "%s", sona_engine_last_error(g));
    sona_stats s;
    sona_get_stats(g, &s);
    CHECK(s.trajectories_processed == FIRST && s.trajectories_queued == BATCH + LATER &&
              s.trajectories_recorded == FIRST + BATCH + LATER && s.loop_b_cycles == 1,
          "file of the held cycle: processed %" PRIu64 " queued %" PRIu64 " recorded %" PRIu64 " cycles %" PRIu64,
          s.trajectories_processed, s.trajectories_queued, s.trajectories_recorded, s.loop_b_cycles);
    REQUIRE(eng_inspect_base_weights(g, loaded, loaded + n) == SONA_OK, "base weights");
    CHECK(memcmp(before, loaded, 2 * n * sizeof *loaded) == 0, "the file's Base-LoRA is not the one before the cycle");
    /* It round-trips: saved again, the same bytes. */
    REQUIRE(sona_save(g, path[1]) == SONA_OK, "%s", sona_engine_last_error(g));
    size_t len0 = 0, len1 = 0;
    char *b0 = test_read_file(path[0], &len0), *b1 = test_read_file(path[1], &len1);
    REQUIRE(b0 && b1, "reading the files back");
    CHECK(len0 == len1 && memcmp(b0, b1, len0) == 0, "load then save changed the file (%zu and %zu bytes)", len0,
          len1);
    free(b0);
    free(b1);
    /* And it learns the batch again, as the cycle did. */
    REQUIRE(sona_force_learn(g) == SONA_OK, "%s", sona_engine_last_error(g));
    sona_get_stats(g, &s);
    CHECK(s.trajectories_processed == FIRST + BATCH + LATER && s.trajectories_queued == 0, "after learning: processed %"
          PRIu64 " queued %" PRIu64, s.trajectories_processed, s.trajectories_queued);
    sona_engine_destroy(g);

    /* The file after the cycle: what it learned, processed. */
    g = engine_for_held_cycles();
    REQUIRE(sona_load(g, path[2]) == SONA_OK, "%s", sona_engine_last_error(g));
    sona_get_stats(g, &s);
    CHECK(s.trajectories_processed == FIRST + BATCH && s.trajectories_queued == LATER && s.loop_b_cycles == 2,
          "file after the cycle: processed %" PRIu64 " queued %" PRIu64, s.trajectories_processed,
          s.trajectories_queued);
    REQUIRE(eng_inspect_base_weights(g, loaded, loaded + n) == SONA_OK, "base weights");
    CHECK(memcmp(before, loaded, 2 * n * sizeof *loaded) != 0, "the cycle after the save learned nothing");
    sona_engine_destroy(g);
    for (int i = 0; i < 3; i++)
        unlink(path[i]);
    free(before);
    free(loaded);
    sona_engine_destroy(e);
}

/* After a load (which voids the cut the last cycle left), the first cycle makes its cut when it
 * begins: a save while it is held is the loaded state, byte for byte the file loaded. */
CONCURRENT_TEST(concurrent_engine, a_save_during_the_first_cycle_after_a_load)
{
    enum { FIRST = 30, BATCH = 40 };
    char path[2][96];
    for (int i = 0; i < 2; i++)
        snprintf(path[i], sizeof path[i], "/tmp/sona_held_load_%ld_%d.state", (long)getpid(), i);
    sona_engine *e = engine_for_held_cycles();
    record(e, 0, FIRST);
    REQUIRE(sona_force_learn(e) == SONA_OK, "%s", sona_engine_last_error(e));
    record(e, 1, BATCH);
    REQUIRE(sona_save(e, path[0]) == SONA_OK, "%s", sona_engine_last_error(e));
    sona_engine *g = engine_for_held_cycles();
    REQUIRE(sona_force_learn(g) == SONA_OK, "%s", sona_engine_last_error(g)); /* nothing queued */
    record(g, 2, 5);
    REQUIRE(sona_force_learn(g) == SONA_OK, "%s", sona_engine_last_error(g)); /* g's own cut */
    REQUIRE(sona_load(g, path[0]) == SONA_OK, "%s", sona_engine_last_error(g));

    held cycle;
    cycle_hold(&cycle, g);
    const sona_status saved = sona_save(g, path[1]);
    const int still_held = cycle_release(&cycle);
    REQUIRE(saved == SONA_OK, "save during the cycle: %s", sona_engine_last_error(g));
    CHECK(still_held, "the save waited for the cycle");
    REQUIRE(cycle.f.st == SONA_OK, "the held cycle: %s", sona_engine_last_error(g));
    size_t len0 = 0, len1 = 0;
    char *b0 = test_read_file(path[0], &len0), *b1 = test_read_file(path[1], &len1);
    REQUIRE(b0 && b1, "reading the files back");
    CHECK(len0 == len1 && memcmp(b0, b1, len0) == 0,
          "the save during the first cycle after the load is not the loaded file (%zu and %zu bytes)", len0, len1);
    free(b0);
    free(b1);
    sona_stats s;
    sona_get_stats(g, &s);
    CHECK(s.trajectories_processed == FIRST + BATCH && s.trajectories_queued == 0, "after the cycle: processed %"
          PRIu64 " queued %" PRIu64, s.trajectories_processed, s.trajectories_queued);
    for (int i = 0; i < 2; i++)
        unlink(path[i]);
    sona_engine_destroy(g);
    sona_engine_destroy(e);
}

/* ---- loop A's thread ----------------------------------------------------------------------- */

/* An engine whose loops B and C never run by themselves, with or without the engine's threads. */
static sona_engine *engine_for_loop_a(int background, uint32_t hidden)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, hidden);
    c.background_thread = background;
    c.buffer_capacity = 4096;
    c.loop_b_threshold = 4096;
    c.loop_b_interval_ms = 0;
    c.loop_c_interval_ms = 0;
    c.max_tenants = 4;
    sona_engine *e = NULL;
    REQUIRE(sona_engine_create(&c, &e) == SONA_OK, "%s", sona_last_error());
    return e;
}

/* n requests of `tenant`, from the seeded stream r: 3 steps of varying rewards each. Returns how
 * many ended with SONA_OK. */
static uint32_t requests_from(sona_engine *e, int32_t tenant, sona_rng *r, uint32_t hidden, uint32_t n)
{
    float *x = malloc(2 * (size_t)hidden * sizeof *x), *a = x + hidden;
    REQUIRE(x != NULL, "out of memory");
    uint32_t ok = 0;
    for (uint32_t i = 0; i < n; i++) {
        fill_uniform(r, x, hidden, -1.0f, 1.0f);
        sona_request *req;
        REQUIRE(sona_request_begin(e, tenant, x, &req) == SONA_OK, "%s", sona_engine_last_error(e));
        for (uint32_t s = 0; s < 3; s++) {
            fill_uniform(r, a, hidden, -1.0f, 1.0f);
            REQUIRE(sona_request_step(req, s, a, NULL, 0, sona_rng_uniform(r)) == SONA_OK, "step");
        }
        ok += sona_request_end(req, sona_rng_uniform(r)) == SONA_OK;
    }
    free(x);
    return ok;
}

/* With background_thread on, request ends hand their trajectories to loop A's thread; once
 * sona_flush returns, the tenant's adapter is bit for bit the one the callers' thread would have
 * learned (the same steps in the same order), and the counters are the same. */
CONCURRENT_TEST(concurrent_engine, loop_a_thread_learns_what_the_callers_thread_would)
{
    enum { N = 300 };
    const uint32_t hidden = 61;
    const uint64_t seed = test_seed();
    printf("[concurrent_engine] loop A thread: seed %" PRIu64 "\n", seed);
    sona_engine *e[2];
    sona_stats s[2];
    float y[2][8][61];
    for (int bg = 0; bg < 2; bg++) {
        e[bg] = engine_for_loop_a(bg, hidden);
        sona_rng r;
        sona_rng_seed(&r, seed, 11);
        CHECK(requests_from(e[bg], 0, &r, hidden, N) == N, "background %d: a request end failed", bg);
        REQUIRE(sona_flush(e[bg]) == SONA_OK, "%s", sona_engine_last_error(e[bg]));
        REQUIRE(sona_get_stats(e[bg], &s[bg]) == SONA_OK, "stats");
        float x[61];
        for (int p = 0; p < 8; p++) {
            fill_uniform(&r, x, hidden, -1.0f, 1.0f);
            REQUIRE(sona_apply(e[bg], 0, x, y[bg][p]) == SONA_OK, "apply");
        }
    }
    uint64_t handed = 0, in_callers = 0;
    CHECK(!eng_inspect_loop_a(e[0], &handed, &in_callers), "background_thread 0 started loop A's thread");
    CHECK(eng_inspect_loop_a(e[1], &handed, &in_callers) && handed + in_callers == N,
          "loop A's thread was handed %" PRIu64 " and its callers ran %" PRIu64 " of %d", handed, in_callers, N);
    CHECK(s[1].signals_accepted == s[0].signals_accepted && s[1].signals_rejected == s[0].signals_rejected &&
              s[1].trajectories_recorded == N && s[0].trajectories_recorded == N &&
              s[1].micro_updates == s[0].micro_updates,
          "counters differ: accepted %" PRIu64 "/%" PRIu64 " recorded %" PRIu64 "/%" PRIu64,
          s[0].signals_accepted, s[1].signals_accepted, s[0].trajectories_recorded, s[1].trajectories_recorded);
    CHECK(s[0].signals_accepted > N / 2, "only %" PRIu64 " of %d signals accepted", s[0].signals_accepted, N);
    CHECK(memcmp(y[0], y[1], sizeof y[0]) == 0, "the adapters differ after the same requests");
    for (int bg = 0; bg < 2; bg++)
        sona_engine_destroy(e[bg]);
}

typedef struct held_loop_a {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int entered, released;
} held_loop_a;

static void hold_loop_a(void *arg)
{
    held_loop_a *h = arg;
    pthread_mutex_lock(&h->mu);
    h->entered++;
    pthread_cond_broadcast(&h->cv);
    while (!h->released)
        pthread_cond_wait(&h->cv, &h->mu);
    pthread_mutex_unlock(&h->mu);
}

/* Loop A's thread held (a test hook) while requests keep ending: its queue fills, and the ends
 * after that run their steps in their own threads. Nothing is lost, and once the thread is let
 * go every request is learned and counted. */
CONCURRENT_TEST(concurrent_engine, a_full_loop_a_queue_sends_steps_back_to_their_callers)
{
    enum { N = 1200, QUEUE = 1024 };
    const uint32_t hidden = 40;
    const uint64_t seed = test_seed();
    sona_engine *e = engine_for_loop_a(1, hidden);
    held_loop_a h = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    eng_inspect_loop_a_hook(e, hold_loop_a, &h);
    sona_rng r;
    sona_rng_seed(&r, seed, 12);
    CHECK(requests_from(e, 0, &r, hidden, 1) == 1, "the first end failed");
    pthread_mutex_lock(&h.mu);
    while (!h.entered)
        pthread_cond_wait(&h.cv, &h.mu); /* the thread took it and is held */
    pthread_mutex_unlock(&h.mu);
    CHECK(requests_from(e, 0, &r, hidden, N - 1) == N - 1, "an end failed while the thread was held");
    uint64_t handed = 0, in_callers = 0;
    REQUIRE(eng_inspect_loop_a(e, &handed, &in_callers), "no loop A thread");
    CHECK(handed == 1 + QUEUE && in_callers == N - 1 - QUEUE,
          "handed %" PRIu64 ", run by callers %" PRIu64 " (queue %d, %d requests)", handed, in_callers, QUEUE, N);
    eng_inspect_loop_a_hook(e, NULL, NULL);
    pthread_mutex_lock(&h.mu);
    h.released = 1;
    pthread_cond_broadcast(&h.cv);
    pthread_mutex_unlock(&h.mu);
    sona_stats s;
    REQUIRE(sona_get_stats(e, &s) == SONA_OK, "stats");
    CHECK(s.trajectories_recorded == N && s.signals_accepted + s.signals_rejected == N,
          "recorded %" PRIu64 ", signals %" PRIu64 " + %" PRIu64 " of %d", s.trajectories_recorded,
          s.signals_accepted, s.signals_rejected, N);
    sona_engine_destroy(e);
}

/* A request begun before its tenant was removed and its slot given to a new tenant teaches the
 * new tenant nothing, whichever thread runs its step. */
CONCURRENT_TEST(concurrent_engine, a_request_of_a_removed_tenant_teaches_its_successor_nothing)
{
    const uint32_t hidden = 24;
    const uint64_t seed = test_seed();
    for (int bg = 0; bg < 2; bg++) {
        sona_engine *e = engine_for_loop_a(bg, hidden);
        int32_t t, again;
        REQUIRE(sona_tenant_create(e, &t) == SONA_OK, "%s", sona_engine_last_error(e));
        sona_rng r;
        sona_rng_seed(&r, seed, 13);
        float x[24], a[24], before[24], after[24];
        fill_uniform(&r, x, hidden, -1.0f, 1.0f);
        sona_request *req;
        REQUIRE(sona_request_begin(e, t, x, &req) == SONA_OK, "%s", sona_engine_last_error(e));
        for (uint32_t st = 0; st < 3; st++) {
            fill_uniform(&r, a, hidden, -1.0f, 1.0f);
            REQUIRE(sona_request_step(req, st, a, NULL, 0, 0.3f * (float)st) == SONA_OK, "step");
        }
        REQUIRE(sona_tenant_remove(e, t) == SONA_OK, "remove");
        REQUIRE(sona_tenant_create(e, &again) == SONA_OK && again == t, "the slot was not reused (%d, %d)", t, again);
        REQUIRE(sona_apply(e, t, x, before) == SONA_OK, "apply");
        sona_stats s0, s1;
        REQUIRE(sona_get_stats(e, &s0) == SONA_OK, "stats");
        sona_request_end(req, 0.9f);
        REQUIRE(sona_flush(e) == SONA_OK, "%s", sona_engine_last_error(e));
        REQUIRE(sona_get_stats(e, &s1) == SONA_OK, "stats");
        REQUIRE(sona_apply(e, t, x, after) == SONA_OK, "apply");
        CHECK(memcmp(before, after, sizeof before) == 0, "background %d: the new tenant learned from the old one's request", bg);
        CHECK(s1.signals_rejected == s0.signals_rejected + 1 && s1.signals_accepted == s0.signals_accepted,
              "background %d: the stale request was not counted as rejected", bg);
        sona_engine_destroy(e);
    }
}

CONCURRENT_MAIN(concurrent_engine_apply_record_and_loop_b_together, concurrent_engine_save_while_recording_and_learning,
                concurrent_engine_stats_add_up_while_requests_and_cycles_run,
                concurrent_engine_a_running_cycle_counts_its_batch_in_cycle,
                concurrent_engine_a_save_does_not_wait_for_a_running_cycle,
                concurrent_engine_a_save_during_the_first_cycle_after_a_load,
                concurrent_engine_loop_a_thread_learns_what_the_callers_thread_would,
                concurrent_engine_a_full_loop_a_queue_sends_steps_back_to_their_callers,
                concurrent_engine_a_request_of_a_removed_tenant_teaches_its_successor_nothing)
