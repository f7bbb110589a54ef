/* SPDX-License-Identifier: MIT */
/* Trajectory groups of the spec: trajectory_recording (one add_step of hidden activations and
 * hidden x heads attention weights) and trajectory_buffer (record, drain). Host-side work: one
 * row per group case, backend "cpu". */
#include "bench.h"

#include <sona.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- trajectory_recording ---------------------------------------------------------------- */

enum { STEPS_PER_TRAJECTORY = 1024 }; /* the builder restarts (keeping its memory) this often */

typedef struct recording_fixture {
    sona_id_source *ids;
    sona_trajectory *t;
    float *query, *acts, *attn;
    uint32_t hidden, heads;
} recording_fixture;

static int call_add_step(void *arg)
{
    recording_fixture *f = arg;
    if (sona_trajectory_step_count(f->t) >= STEPS_PER_TRAJECTORY &&
        sona_trajectory_reset(f->t, f->ids, f->query, f->hidden) != SONA_OK)
        return -1;
    return sona_trajectory_add_step(f->t, f->acts, f->hidden, f->attn, f->hidden * f->heads, 0.8f, 0) !=
           SONA_OK;
}

static float *filled(size_t n, float v)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; p && i < n; i++)
        p[i] = v;
    return p;
}

/* F32 rows keep the spec's names; other storage formats add a suffix (the engine's default, Q8,
 * encodes each step as it is recorded). */
static void recording_case(bench_ctx *ctx, uint32_t hidden, uint32_t heads, sona_storage storage,
                           double expected_us)
{
    char name[32];
    snprintf(name, sizeof name, "h%u_heads%u%s", hidden, heads, storage == SONA_STORAGE_Q8 ? "_q8" : "");
    const bench_row row = {.group = "trajectory_recording", .name = name, .backend = "cpu",
                           .target_us = 10, .stretch_us = 5, .expected_us = expected_us,
                           .bytes = (double)hidden * (1 + heads) * sizeof(float)};
    recording_fixture f = {.hidden = hidden, .heads = heads};
    f.query = filled(hidden, 0.1f);
    f.acts = filled(hidden, 0.5f);
    f.attn = filled((size_t)hidden * heads, 0.1f);
    int ok = f.query && f.acts && f.attn && sona_id_source_create(1, &f.ids) == SONA_OK &&
             sona_trajectory_begin(f.ids, storage, f.query, hidden, &f.t) == SONA_OK;
    /* Grow the arena once, as a pooled trajectory in a server would have: steady state. */
    for (int i = 0; ok && i < STEPS_PER_TRAJECTORY; i++)
        ok = call_add_step(&f) == 0;
    if (!ok)
        bench_skip(ctx, &row, "setup failed (out of memory)");
    else
        bench_measure(ctx, &row, call_add_step, &f);
    sona_trajectory_destroy(f.t);
    sona_id_source_destroy(f.ids);
    free(f.query);
    free(f.acts);
    free(f.attn);
}

static void run_recording(bench_ctx *ctx)
{
    static const sona_storage storages[] = {SONA_STORAGE_F32, SONA_STORAGE_Q8};
    for (int s = 0; s < 2; s++) {
        recording_case(ctx, 256, 4, storages[s], 2.1);
        recording_case(ctx, 256, 8, storages[s], 3.8);
        recording_case(ctx, 512, 4, storages[s], 3.7);
        recording_case(ctx, 512, 8, storages[s], 6.9);
    }
}

const bench_group bench_trajectory_recording = {
    "trajectory_recording", "Trajectory step recording: hidden activations + hidden x heads attention (spec)",
    run_recording};

/* ---- trajectory_buffer ------------------------------------------------------------------- */

enum { BUFFER_CAPACITY = 10000, DRAIN_BATCH = 1000, QUERY_DIM = 256 };

/* A pool of ended trajectories (256-wide query, no steps, as in the spec) that cycles through
 * the buffer: record takes from the pool, drain gives back. */
typedef struct buffer_fixture {
    sona_trajectory_buffer *buf;
    sona_trajectory *pool[BUFFER_CAPACITY];
    uint32_t pooled;
} buffer_fixture;

static int refill_pool(buffer_fixture *f)
{
    uint32_t taken;
    if (sona_trajectory_buffer_drain(f->buf, f->pool + f->pooled, BUFFER_CAPACITY - f->pooled, &taken) !=
        SONA_OK)
        return -1;
    f->pooled += taken;
    return 0;
}

/* One record; when the pool runs dry (once every 10,000 calls) the buffer is drained into it. */
static int call_record(void *arg)
{
    buffer_fixture *f = arg;
    if (f->pooled == 0 && refill_pool(f) != 0)
        return -1;
    return sona_trajectory_buffer_record(f->buf, f->pool[--f->pooled]) != SONA_OK;
}

/* One drain of 1,000; when the buffer runs dry (once every 10 calls) it is refilled first. */
static int call_drain(void *arg)
{
    buffer_fixture *f = arg;
    if (sona_trajectory_buffer_len(f->buf) < DRAIN_BATCH)
        while (f->pooled > 0)
            if (sona_trajectory_buffer_record(f->buf, f->pool[--f->pooled]) != SONA_OK)
                return -1;
    uint32_t taken;
    if (sona_trajectory_buffer_drain(f->buf, f->pool + f->pooled, DRAIN_BATCH, &taken) != SONA_OK ||
        taken != DRAIN_BATCH)
        return -1;
    f->pooled += taken;
    return 0;
}

/* Contention: 4 threads build and record trajectories while this one drains them; the share
 * of ring claims that lost a race (the spec's "lock-free with <1% contention"). */
enum { CONTENTION_THREADS = 4, CONTENTION_PER_THREAD = 50000 };

typedef struct contention_arg {
    sona_trajectory_buffer *buf;
    sona_id_source *ids;
    _Atomic int *running;
    int failed;
} contention_arg;

static void *contention_producer(void *p)
{
    contention_arg *a = p;
    const float q = 1.0f;
    for (int i = 0; i < CONTENTION_PER_THREAD && !a->failed; i++) {
        sona_trajectory *t = NULL;
        a->failed = sona_trajectory_begin(a->ids, SONA_STORAGE_F32, &q, 1, &t) != SONA_OK ||
                    sona_trajectory_end(t, 0.5f) != SONA_OK;
        while (!a->failed && sona_trajectory_buffer_record(a->buf, t) != SONA_OK)
            sched_yield(); /* full: still ours, let the drainer run */
        if (a->failed)
            sona_trajectory_destroy(t);
    }
    atomic_fetch_sub(a->running, 1);
    return NULL;
}

static void report_contention(bench_ctx *ctx)
{
    const bench_row row = {.group = "trajectory_buffer", .name = "contention_4writers_1reader", .backend = "cpu"};
    sona_trajectory_buffer_config cfg;
    sona_trajectory_buffer_config_default(&cfg);
    sona_trajectory_buffer *buf = NULL;
    sona_id_source *ids = NULL;
    if (sona_trajectory_buffer_create(&cfg, &buf) != SONA_OK || sona_id_source_create(0, &ids) != SONA_OK) {
        bench_skip(ctx, &row, "setup failed");
        sona_trajectory_buffer_destroy(buf);
        return;
    }
    _Atomic int running = CONTENTION_THREADS;
    pthread_t th[CONTENTION_THREADS];
    contention_arg args[CONTENTION_THREADS];
    int started = 0, failed = 0;
    for (int i = 0; i < CONTENTION_THREADS; i++) {
        args[i] = (contention_arg){buf, ids, &running, 0};
        if (pthread_create(&th[started], NULL, contention_producer, &args[i]) == 0)
            started++;
        else
            atomic_fetch_sub(&running, 1);
    }
    sona_trajectory *out[256];
    uint32_t taken;
    for (;;) {
        const int done = atomic_load(&running) == 0;
        do {
            sona_trajectory_buffer_drain(buf, out, 256, &taken);
            for (uint32_t i = 0; i < taken; i++)
                sona_trajectory_destroy(out[i]);
        } while (taken == 256);
        if (done)
            break;
    }
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < CONTENTION_THREADS; i++)
        failed |= args[i].failed;
    sona_trajectory_buffer_stats st;
    sona_trajectory_buffer_get_stats(buf, &st);
    sona_trajectory_buffer_destroy(buf);
    sona_id_source_destroy(ids);
    if (failed || started == 0)
        bench_skip(ctx, &row, "a writer thread failed");
    else
        bench_report(ctx, &row, "contention", 100.0 * (double)st.retries / (double)(st.recorded + st.drained),
                     "%");
}

static void run_buffer(bench_ctx *ctx)
{
    const bench_row rec = {.group = "trajectory_buffer", .name = "record", .backend = "cpu"};
    const bench_row drain = {.group = "trajectory_buffer", .name = "drain_1000", .backend = "cpu"};
    buffer_fixture *f = calloc(1, sizeof *f);
    sona_id_source *ids = NULL;
    float *query = filled(QUERY_DIM, 0.1f);
    sona_trajectory_buffer_config cfg;
    sona_trajectory_buffer_config_default(&cfg);
    cfg.capacity = BUFFER_CAPACITY;
    int ok = f && query && sona_id_source_create(1, &ids) == SONA_OK &&
             sona_trajectory_buffer_create(&cfg, &f->buf) == SONA_OK;
    for (; ok && f->pooled < BUFFER_CAPACITY; f->pooled++) {
        sona_trajectory **t = &f->pool[f->pooled];
        ok = sona_trajectory_begin(ids, SONA_STORAGE_F32, query, QUERY_DIM, t) == SONA_OK &&
             sona_trajectory_end(*t, 0.8f) == SONA_OK;
    }
    if (ok) {
        bench_measure(ctx, &rec, call_record, f);
        bench_measure(ctx, &drain, call_drain, f);
        report_contention(ctx);
    } else {
        bench_skip(ctx, &rec, "setup failed (out of memory)");
        bench_skip(ctx, &drain, "setup failed (out of memory)");
    }
    if (f) {
        for (uint32_t i = 0; i < f->pooled; i++)
            sona_trajectory_destroy(f->pool[i]);
        sona_trajectory_buffer_destroy(f->buf); /* destroys what it still holds */
    }
    free(f);
    free(query);
    sona_id_source_destroy(ids);
}

const bench_group bench_trajectory_buffer = {
    "trajectory_buffer", "Lock-free trajectory buffer: one record, one drain of 1,000 (spec)", run_buffer};
