/* SPDX-License-Identifier: MIT */
/* The public API's contract for bad input, one table row per refused call: the status it must
 * return, where its message must be (the handle's last error, or the thread's for creates, NULL
 * handles and the calls the headers say report there) and a word the message must contain, and
 * that the call changed nothing: every object of a populated world (weights, counters, patterns,
 * queued trajectories, output buffers) reads back byte for byte the same through the public API.
 * Each row runs in a fresh world, in its own process (a crash fails that row alone). */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/rng.h"
#include "support/fill.h"
#include "support/synth_task.h"
#include <sona.h>

enum {
    H = 16,       /* every width: adapters, embeddings, trajectories, the engine */
    ROWS = 4,     /* rows of the batch inputs */
    ADAPTERS = 3, /* adapters in the lora set */
    P = 8,        /* EWC++ parameters */
    INDEXED = 12, /* ids 1..INDEXED in the index */
    LAYERS = 2    /* the engine's Base-LoRA layers */
};

typedef struct world {
    /* inputs: ROWS finite rows, and copies with a NaN / an Inf in row 1, and a zero row */
    float x[ROWS * H], nan_x[ROWS * H], inf_x[ROWS * H], zero[ROWS * H], huge[H];
    int32_t ids[ROWS], bad_ids[ROWS];
    float theta[P], g[P], nan_p[P], neg_p[P];
    /* outputs: must be left as they are by a refused call */
    float y[ROWS * H], out[ROWS * H], wout;
    uint64_t id_out[ROWS];
    sona_lora *lora;
    sona_ewc *ewc;
    sona_index *index;
    sona_bank *bank;
    uint64_t pattern;  /* a live pattern of the bank */
    sona_id_source *idsrc;
    sona_trajectory *traj;  /* open: 2 steps, a route, a context */
    sona_trajectory *ended; /* ended, one step */
    sona_trajectory_buffer *buffer; /* capacity 1, full */
    sona_signal_builder *signals;
    sona_engine *engine;       /* learned: tenants 0 and 1 (all slots), patterns, a pool */
    sona_engine *fresh_engine; /* just created */
    sona_request *req;         /* open, one step */
    sona_request *full_req;    /* open, max_steps steps */
    char path[64];             /* a temporary file for the persistence rows */
} world;

/* ---- the world ------------------------------------------------------------------------------- */

static sona_engine_config engine_config(void)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, H);
    c.background_thread = 0;
    c.max_tenants = 2;
    c.base_layers = LAYERS;
    c.buffer_capacity = 64;
    c.loop_b_threshold = 64;
    c.loop_b_min_batch = 4;
    c.clusters_per_cycle = 4;
    c.max_patterns = 100;
    c.max_steps = 4;
    c.device_apply = 0;
    return c;
}

static sona_lora_config lora_config(void)
{
    sona_lora_config c;
    sona_lora_config_default(&c, SONA_LORA_MICRO, H);
    c.count = ADAPTERS;
    return c;
}

static sona_ewc_config ewc_config(void)
{
    sona_ewc_config c;
    sona_ewc_config_default(&c, P);
    return c;
}

static sona_index_config index_config(void)
{
    sona_index_config c;
    sona_index_config_default(&c, H);
    return c;
}

static sona_bank_config bank_config(void)
{
    sona_bank_config c;
    sona_bank_config_default(&c, H);
    c.k_clusters = 3;
    c.max_pending = 8;
    return c;
}

static sona_trajectory_buffer_config trajectory_buffer_config(void)
{
    sona_trajectory_buffer_config c;
    sona_trajectory_buffer_config_default(&c);
    c.capacity = 1;
    return c;
}

static sona_signal_config signal_config(void)
{
    sona_signal_config c;
    sona_signal_config_default(&c);
    return c;
}

#define OK(call) cr_assert_eq((call), SONA_OK, "world setup: %s: %s", #call, sona_last_error())

static void build_lora(world *w)
{
    const sona_lora_config c = lora_config();
    OK(sona_lora_create(&c, &w->lora));
    float B[H * 2];
    for (int32_t a = 0; a < ADAPTERS; a++) {
        for (uint32_t i = 0; i < H * 2; i++)
            B[i] = 0.01f * (float)(i + 1) * (float)(a + 1);
        OK(sona_lora_set_weights(w->lora, a, NULL, B));
    }
    OK(sona_lora_accumulate(w->lora, 1, w->x, w->x + H, 0.5f)); /* one pending signal */
}

static void build_ewc(world *w)
{
    const sona_ewc_config c = ewc_config();
    OK(sona_ewc_create(&c, &w->ewc));
    OK(sona_ewc_update_fisher(w->ewc, w->g, P));
    OK(sona_ewc_end_task(w->ewc, w->theta, P));
    OK(sona_ewc_update_fisher(w->ewc, w->g, P));
}

static void build_index(world *w, sona_rng *r)
{
    const sona_index_config c = index_config();
    OK(sona_index_create(&c, &w->index));
    float v[H];
    for (uint64_t id = 1; id <= INDEXED; id++) {
        fill_uniform(r, v, H, -1.0f, 1.0f);
        OK(sona_index_insert(w->index, id, v));
    }
    uint32_t found;
    OK(sona_index_search(w->index, w->x, 3, w->id_out, NULL, &found)); /* some access counts */
}

static void build_bank(world *w, sona_rng *r)
{
    const sona_bank_config c = bank_config();
    OK(sona_bank_create(&c, &w->bank));
    float e[6 * H], q[6];
    fill_uniform(r, e, 6 * H, -1.0f, 1.0f);
    fill_uniform(r, q, 6, -1.0f, 1.0f);
    const char *routes[6] = {"a", "b", NULL, "a", "c", NULL};
    OK(sona_bank_add_batch(w->bank, 6, e, H, q, NULL, routes));
    OK(sona_bank_extract(w->bank, NULL));
    fill_uniform(r, e, 2 * H, -1.0f, 1.0f);
    OK(sona_bank_add_batch(w->bank, 2, e, H, q, NULL, NULL)); /* two pending */
    sona_pattern p;
    OK(sona_bank_pattern_at(w->bank, 0, &p, NULL));
    w->pattern = p.id;
}

static void build_trajectories(world *w)
{
    OK(sona_id_source_create(100, &w->idsrc));
    OK(sona_trajectory_begin(w->idsrc, SONA_STORAGE_F32, w->x, H, &w->traj));
    OK(sona_trajectory_add_step(w->traj, w->x + H, H, w->x, 3, 0.5f, 1));
    OK(sona_trajectory_add_step(w->traj, w->x + 2 * H, H, NULL, 0, -0.5f, SONA_LAYER_NONE));
    OK(sona_trajectory_set_route(w->traj, "route"));
    OK(sona_trajectory_add_context(w->traj, "context"));
    OK(sona_trajectory_begin(w->idsrc, SONA_STORAGE_Q8, w->x + H, H, &w->ended));
    OK(sona_trajectory_add_step(w->ended, w->x, H, NULL, 0, 1.0f, 0));
    OK(sona_trajectory_end(w->ended, 0.75f));

    const sona_trajectory_buffer_config bc = trajectory_buffer_config();
    OK(sona_trajectory_buffer_create(&bc, &w->buffer));
    sona_trajectory *queued;
    OK(sona_trajectory_begin(w->idsrc, SONA_STORAGE_F16, w->x + 3 * H, H, &queued));
    OK(sona_trajectory_end(queued, 0.25f));
    OK(sona_trajectory_buffer_record(w->buffer, queued)); /* full now */

    const sona_signal_config sc = signal_config();
    OK(sona_signal_builder_create(&sc, &w->signals));
    float x[H], d[H], wt;
    OK(sona_signal_from_trajectory(w->signals, w->ended, x, d, &wt));
}

static void build_engines(world *w)
{
    const sona_engine_config c = engine_config();
    OK(sona_engine_create(&c, &w->engine));
    OK(sona_engine_create(&c, &w->fresh_engine));
    int32_t t1;
    OK(sona_tenant_create(w->engine, &t1));
    synth_task task;
    cr_assert_eq(synth_task_init(&task, H, 3, 7, 0), 0);
    sona_rng r;
    sona_rng_seed(&r, 7, 1);
    synth_task_run(&task, w->engine, 0, 12, &r, 1);
    synth_task_run(&task, w->engine, t1, 12, &r, 1);
    synth_task_free(&task);
    OK(sona_force_learn(w->engine)); /* patterns, Base-LoRA steps, and trajectories in the pool */
    OK(sona_request_begin(w->engine, 1, w->x, &w->req));
    OK(sona_request_step(w->req, 0, w->x + H, NULL, 0, 0.5f));
    OK(sona_request_begin(w->engine, 0, w->x + H, &w->full_req));
    for (uint32_t s = 0; s < c.max_steps; s++)
        OK(sona_request_step(w->full_req, s % LAYERS, w->x + (s % ROWS) * H, NULL, 0, 0.1f * (float)s));
}

static void build(world *w)
{
    memset(w, 0, sizeof *w);
    sona_rng r;
    sona_rng_seed(&r, 2024, 0);
    fill_uniform(&r, w->x, ROWS * H, -1.0f, 1.0f);
    memcpy(w->nan_x, w->x, sizeof w->x);
    memcpy(w->inf_x, w->x, sizeof w->x);
    w->nan_x[H + 3] = NAN;
    w->inf_x[H + 5] = -INFINITY;
    for (uint32_t i = 0; i < H; i++)
        w->huge[i] = 1e30f;
    for (int32_t i = 0; i < ROWS; i++) {
        w->ids[i] = i % 2;
        w->bad_ids[i] = i == 1 ? 7 : 0;
    }
    fill_uniform(&r, w->theta, P, -1.0f, 1.0f);
    fill_uniform(&r, w->g, P, -1.0f, 1.0f);
    memcpy(w->nan_p, w->g, sizeof w->g);
    memcpy(w->neg_p, w->g, sizeof w->g);
    w->nan_p[2] = NAN;
    for (uint32_t i = 0; i < P; i++)
        w->neg_p[i] = fabsf(w->neg_p[i]);
    w->neg_p[4] = -1.0f;
    for (uint32_t i = 0; i < ROWS * H; i++)
        w->y[i] = w->out[i] = -7.0f;
    w->wout = -7.0f;
    for (uint32_t i = 0; i < ROWS; i++)
        w->id_out[i] = 77;
    snprintf(w->path, sizeof w->path, "/tmp/sona_api_contract_%ld.state", (long)getpid());

    build_lora(w);
    build_ewc(w);
    build_index(w, &r);
    build_bank(w, &r);
    build_trajectories(w);
    build_engines(w);
}

static void teardown(world *w)
{
    sona_request_abandon(w->req);
    sona_request_abandon(w->full_req);
    sona_engine_destroy(w->engine);
    sona_engine_destroy(w->fresh_engine);
    sona_signal_builder_destroy(w->signals);
    sona_trajectory_buffer_destroy(w->buffer);
    sona_trajectory_destroy(w->traj);
    sona_trajectory_destroy(w->ended);
    sona_id_source_destroy(w->idsrc);
    sona_bank_destroy(w->bank);
    sona_index_destroy(w->index);
    sona_ewc_destroy(w->ewc);
    sona_lora_destroy(w->lora);
    unlink(w->path);
}

/* ---- snapshots: everything the public API shows of the world, as bytes ----------------------- */

typedef struct bytes {
    unsigned char *p;
    size_t n, cap;
} bytes;

static void put(bytes *b, const void *v, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = 2 * (b->n + n);
        b->p = realloc(b->p, b->cap);
        cr_assert_not_null(b->p);
    }
    memcpy(b->p + b->n, v, n);
    b->n += n;
}

#define PUT(b, v) put((b), &(v), sizeof(v))

static void put_str(bytes *b, const char *s)
{
    put(b, s ? s : "(null)", strlen(s ? s : "(null)") + 1);
}

/* The snapshot calls must succeed (a failure would set a message the row then checks). */
#define SNAP(call) cr_assert_eq((call), SONA_OK, "snapshot: %s", #call)

static void snap_lora(bytes *b, const sona_lora *l)
{
    float A[2 * H], B[2 * H];
    for (int32_t a = 0; a < ADAPTERS; a++) {
        SNAP(sona_lora_get_weights(l, a, A, B));
        PUT(b, A);
        PUT(b, B);
    }
    const uint64_t pending = sona_lora_pending(l);
    PUT(b, pending);
}

static void snap_ewc(bytes *b, sona_ewc *e)
{
    put(b, sona_ewc_fisher(e), P * sizeof(float));
    const uint32_t tasks = sona_ewc_task_count(e);
    const uint64_t boundaries = sona_ewc_boundaries(e);
    const float lambda = sona_ewc_lambda(e);
    PUT(b, tasks);
    PUT(b, boundaries);
    PUT(b, lambda);
    float th[P], f[P];
    for (uint32_t t = 0; t < tasks; t++) {
        SNAP(sona_ewc_get_task(e, t, th, f));
        PUT(b, th);
        PUT(b, f);
    }
}

static void snap_index(bytes *b, const sona_index *x)
{
    const uint64_t size = sona_index_size(x);
    PUT(b, size);
    PUT(b, *sona_index_get_config(x));
    float v[H];
    uint64_t count, nb[64];
    uint32_t n;
    for (uint64_t id = 1; id <= INDEXED; id++) {
        SNAP(sona_index_get_vector(x, id, v));
        SNAP(sona_index_access_count(x, id, &count));
        SNAP(sona_index_neighbors(x, id, nb, 64, &n));
        PUT(b, v);
        PUT(b, count);
        put(b, nb, n * sizeof *nb);
    }
}

static void snap_bank(bytes *b, const sona_bank *k)
{
    sona_bank_stats s;
    SNAP(sona_bank_stats_get(k, &s));
    s.trajectories_rejected = s.trajectories_refused_full = 0; /* refusals are counted (bank.h) */
    PUT(b, s);
    sona_pattern p;
    memset(&p, 0, sizeof p); /* padding: compared as bytes */
    float c[H];
    for (uint32_t i = 0; i < sona_bank_pattern_count(k); i++) {
        SNAP(sona_bank_pattern_at(k, i, &p, c));
        PUT(b, p);
        PUT(b, c);
        for (uint32_t r = 0; r < p.route_count; r++) {
            const char *route;
            uint64_t count;
            float q;
            SNAP(sona_bank_pattern_route(k, p.id, r, &route, &count, &q));
            put_str(b, route);
            PUT(b, count);
            PUT(b, q);
        }
    }
}

static void snap_trajectory(bytes *b, const sona_trajectory *t)
{
    const uint64_t id = sona_trajectory_id(t), latency = sona_trajectory_latency_us(t),
                   start = sona_trajectory_start_us(t);
    const int ended = sona_trajectory_ended(t);
    const float quality = sona_trajectory_quality(t);
    const sona_storage storage = sona_trajectory_storage(t);
    const uint32_t dim = sona_trajectory_dim(t), steps = sona_trajectory_step_count(t);
    PUT(b, id);
    PUT(b, latency);
    PUT(b, start);
    PUT(b, ended);
    PUT(b, quality);
    PUT(b, storage);
    PUT(b, dim);
    PUT(b, steps);
    float v[H];
    SNAP(sona_trajectory_query(t, v, H));
    PUT(b, v);
    for (uint32_t i = 0; i < steps; i++) {
        sona_trajectory_step s;
        memset(&s, 0, sizeof s);
        SNAP(sona_trajectory_get_step(t, i, &s));
        PUT(b, s);
        SNAP(sona_trajectory_step_activations(t, i, v, H));
        put(b, v, s.activations_len * sizeof *v);
        SNAP(sona_trajectory_step_attention(t, i, v, H));
        put(b, v, s.attention_len * sizeof *v);
    }
    put_str(b, sona_trajectory_route(t));
    for (uint32_t i = 0; i < sona_trajectory_context_count(t); i++)
        put_str(b, sona_trajectory_context(t, i));
}

/* Tenants 0..tenants-1 are live. */
static void snap_engine(bytes *b, sona_engine *e, int32_t tenants)
{
    sona_stats s; /* zeroed by sona_get_stats, padding included */
    SNAP(sona_get_stats(e, &s));
    s.signals_rejected = s.trajectories_dropped = 0; /* refusals are counted (engine.h) */
    s.inputs_out_of_range = 0;
    PUT(b, s);
    const int enabled = sona_engine_enabled(e);
    PUT(b, enabled);
    static const float probe[H] = {1, -2, 3, -4, 5, -6, 7, -8, 1, 2, 3, 4, 5, 6, 7, 8};
    float y[H];
    for (int32_t t = 0; t < tenants; t++) {
        SNAP(sona_apply(e, t, probe, y));
        PUT(b, y);
    }
    for (uint32_t l = 0; l < LAYERS; l++) {
        SNAP(sona_apply_layer(e, l, probe, y));
        PUT(b, y);
    }
}

static bytes snapshot(world *w)
{
    bytes b = {0};
    put(&b, w->y, sizeof w->y);
    put(&b, w->out, sizeof w->out);
    PUT(&b, w->wout);
    put(&b, w->id_out, sizeof w->id_out);
    snap_lora(&b, w->lora);
    snap_ewc(&b, w->ewc);
    snap_index(&b, w->index);
    snap_bank(&b, w->bank);
    const uint64_t next_id = sona_id_source_peek(w->idsrc);
    PUT(&b, next_id);
    snap_trajectory(&b, w->traj);
    snap_trajectory(&b, w->ended);
    sona_trajectory_buffer_stats bs;
    sona_trajectory_buffer_get_stats(w->buffer, &bs);
    bs.dropped = 0; /* refusals are counted (trajectory_buffer.h) */
    PUT(&b, bs);
    sona_signal_stats ss;
    memset(&ss, 0, sizeof ss);
    sona_signal_builder_get_stats(w->signals, &ss);
    ss.rejected = 0; /* refusals are counted (signal.h) */
    PUT(&b, ss);
    snap_engine(&b, w->engine, 2);
    snap_engine(&b, w->fresh_engine, 1);
    return b;
}

/* ---- row helpers: calls that need more than one expression ----------------------------------- */

/* Sets one field of a kind's default config to a bad value and creates with it; a create that
 * wrongly succeeds is destroyed (the row then fails on its status), a failed one must leave *out
 * NULL. */
#define CREATE_WITH(kind, field, value)                                                             \
    create_##kind##_with(offsetof(sona_##kind##_config, field),                                     \
                         &(__typeof__(((sona_##kind##_config *)0)->field)){value},                   \
                         sizeof(((sona_##kind##_config *)0)->field))

#define DEFINE_CREATE_WITH(kind, type, create, destroy)                                             \
    static sona_status create_##kind##_with(size_t offset, const void *value, size_t size)          \
    {                                                                                               \
        sona_##kind##_config c = kind##_config();                                                   \
        memcpy((unsigned char *)&c + offset, value, size);                                          \
        type *out = (type *)&c; /* not NULL: a failed create must clear it */                       \
        const sona_status st = create(&c, &out);                                                    \
        if (st == SONA_OK)                                                                          \
            destroy(out);                                                                           \
        else                                                                                        \
            cr_expect_null(out, "a failed create left *out set");                                   \
        return st;                                                                                  \
    }
DEFINE_CREATE_WITH(lora, sona_lora, sona_lora_create, sona_lora_destroy)
DEFINE_CREATE_WITH(ewc, sona_ewc, sona_ewc_create, sona_ewc_destroy)
DEFINE_CREATE_WITH(index, sona_index, sona_index_create, sona_index_destroy)
DEFINE_CREATE_WITH(bank, sona_bank, sona_bank_create, sona_bank_destroy)
DEFINE_CREATE_WITH(trajectory_buffer, sona_trajectory_buffer, sona_trajectory_buffer_create,
                   sona_trajectory_buffer_destroy)
DEFINE_CREATE_WITH(signal, sona_signal_builder, sona_signal_builder_create, sona_signal_builder_destroy)
DEFINE_CREATE_WITH(engine, sona_engine, sona_engine_create, sona_engine_destroy)

static sona_status lora_create_oversized(void)
{
    sona_lora_config c = lora_config();
    c.hidden = 1u << 30;
    c.rank = 64;
    c.count = 1u << 26; /* 2^62 weights: the byte count wraps to 0 in 64 bits */
    sona_lora *l = NULL;
    const sona_status st = sona_lora_create(&c, &l);
    sona_lora_destroy(l);
    return st;
}

static sona_status engine_create_unterminated_path(void)
{
    sona_engine_config c = engine_config();
    memset(c.state_path, 'a', sizeof c.state_path);
    sona_engine *e = NULL;
    const sona_status st = sona_engine_create(&c, &e);
    sona_engine_destroy(e);
    return st;
}

/* The engine's EWC++ settings are checked like sona_ewc_create's (with ewc_enabled). */
static sona_status engine_create_ewc(float lambda, float shift)
{
    sona_engine_config c = engine_config();
    c.ewc_enabled = 1;
    c.ewc_lambda = lambda;
    c.task_shift_threshold = shift;
    sona_engine *e = NULL;
    const sona_status st = sona_engine_create(&c, &e);
    sona_engine_destroy(e);
    return st;
}

static sona_status lora_batch_nan_row(world *w)
{
    const float wt[ROWS] = {1, 1, 1, 1};
    return sona_lora_accumulate_batch(w->lora, ROWS, w->ids, w->nan_x, w->x, wt);
}

static sona_status lora_batch_bad_id(world *w)
{
    const float wt[ROWS] = {1, 1, 1, 1};
    return sona_lora_accumulate_batch(w->lora, ROWS, w->bad_ids, w->x, w->x, wt);
}

static sona_status ewc_add_task_negative_fisher(world *w)
{
    return sona_ewc_add_task(w->ewc, w->theta, w->neg_p, P);
}

static sona_status ewc_penalty_out(world *w)
{
    const float *fs;
    float lambda;
    return sona_ewc_penalty(w->ewc, &fs, NULL, &lambda);
}

static sona_status bank_add_batch_nan_row(world *w)
{
    const float q[ROWS] = {0.1f, 0.2f, 0.3f, 0.4f};
    return sona_bank_add_batch(w->bank, 3, w->nan_x, H, q, NULL, NULL);
}

static sona_status bank_add_batch_over_pending(world *w)
{
    float q[ROWS * 2] = {0};
    float e[ROWS * 2 * H];
    memcpy(e, w->x, sizeof w->x);
    memcpy(e + ROWS * H, w->x, sizeof w->x);
    return sona_bank_add_batch(w->bank, 2 * ROWS, e, H, q, NULL, NULL); /* 2 + 8 > max_pending 8 */
}

static sona_status bank_restore(world *w, uint64_t id, const float *centroid)
{
    const sona_pattern p = {.id = id, .size = 1, .total_weight = 1.0, .avg_quality = 0.5f};
    return sona_bank_pattern_restore(w->bank, &p, centroid);
}

static sona_status bank_search(world *w, const float *query, uint32_t dim, uint32_t k)
{
    uint32_t found = 99;
    const sona_status st = sona_bank_search(w->bank, query, dim, k, w->id_out, NULL, &found);
    return found == 99 ? st : SONA_STATUS_COUNT; /* *found is an output too */
}

static sona_status bank_stats_null(world *w) { return sona_bank_stats_get(w->bank, NULL); }

static sona_status buffer_record_open(world *w)
{
    sona_trajectory_buffer_config c = trajectory_buffer_config();
    c.capacity = 2;
    sona_trajectory_buffer *b = NULL;
    OK(sona_trajectory_buffer_create(&c, &b));
    const sona_status st = sona_trajectory_buffer_record(b, w->traj); /* not ended */
    sona_trajectory_buffer_destroy(b);
    return st;
}

static sona_status trajectory_begin(world *w, sona_storage s, const float *query, uint32_t dim)
{
    sona_trajectory *t = (sona_trajectory *)w; /* not NULL: a failed begin must clear it */
    const sona_status st = sona_trajectory_begin(w->idsrc, s, query, dim, &t);
    if (st == SONA_OK)
        sona_trajectory_destroy(t);
    else
        cr_expect_null(t, "a failed begin left *out set");
    return st;
}

static sona_status signal_of(world *w, sona_signal_builder *sb, const sona_trajectory *t, int32_t layer)
{
    sona_signal_options o;
    sona_signal_options_default(&o);
    o.layer = layer;
    return sona_signal_from_trajectory_opts(sb, t, &o, w->out, w->out + H, &w->wout);
}

/* The ended trajectory's signal measured from `output` (the quality-only rule's y(x)). */
static sona_status signal_from_output(world *w, const float *output)
{
    sona_signal_options o;
    sona_signal_options_default(&o);
    o.output = output;
    return sona_signal_from_trajectory_opts(w->signals, w->ended, &o, w->out, w->out + H, &w->wout);
}

/* The ended trajectory's signal with a critic's offset of the quality. */
static sona_status signal_offset(world *w, float offset)
{
    sona_signal_options o;
    sona_signal_options_default(&o);
    o.quality_offset = offset;
    return sona_signal_from_trajectory_opts(w->signals, w->ended, &o, w->out, w->out + H, &w->wout);
}

/* A baseline weighed on a copy of the builder's (the world's stays as it is). */
static sona_status weigh_copy(world *w, float quality)
{
    sona_signal_baseline b;
    sona_signal_builder_get_baseline(w->signals, &b);
    return sona_signal_baseline_weigh(&b, 0.1f, 3.0f, quality, 1, &w->wout);
}

static sona_status signal_compute(world *w, const float *acts, uint32_t steps, float quality)
{
    const float rewards[ROWS] = {0.1f, 0.5f, 0.2f, 0.3f};
    return sona_signal_compute(w->signals, w->x, H, acts, rewards, steps, quality, w->out,
                               w->out + H, &w->wout);
}

static sona_status engine_end_request(world *w, float quality)
{
    sona_request *r = w->req;
    w->req = NULL; /* freed in every case */
    return sona_request_end(r, quality);
}

/* A request whose step was refused as out of range: its end is refused the same way. */
static sona_status engine_end_after_far_step(world *w)
{
    float far[H];
    for (uint32_t i = 0; i < H; i++)
        far[i] = i % 2 ? 2e6f : -3e9f;
    cr_expect_eq(sona_request_step(w->req, 1, far, NULL, 0, 0.5f), SONA_E_INVALID);
    return engine_end_request(w, 0.5f);
}

static sona_status engine_apply_batch_bad_tenant(world *w)
{
    return sona_apply_batch(w->engine, ROWS, w->bad_ids, w->x, w->y);
}

static sona_status engine_begin(world *w, sona_engine *e, int32_t tenant, const float *query)
{
    sona_request *r = (sona_request *)w; /* not NULL: a failed begin must clear it */
    const sona_status st = sona_request_begin(e, tenant, query, &r);
    if (st == SONA_OK)
        sona_request_abandon(r);
    else
        cr_expect_null(r, "a failed begin left *out set");
    return st;
}

static sona_status engine_find(sona_engine *e, const float *query)
{
    sona_pattern_hit hits[4];
    uint32_t found;
    return sona_find_patterns(e, query, 4, hits, &found);
}

static sona_status engine_tenant_create_full(world *w)
{
    int32_t t = -5;
    const sona_status st = sona_tenant_create(w->engine, &t);
    return t == -5 ? st : SONA_STATUS_COUNT;
}

static sona_status engine_stats_null(world *w) { return sona_get_stats(w->engine, NULL); }

/* The state file of another engine shape (hidden H + 1). */
static sona_status engine_load_other_shape(world *w)
{
    sona_engine_config c = engine_config();
    c.hidden = H + 1;
    sona_engine *other;
    OK(sona_engine_create(&c, &other));
    OK(sona_save(other, w->path));
    sona_engine_destroy(other);
    return sona_load(w->engine, w->path);
}

/* This engine's own state file, less its last byte. */
static sona_status engine_load_truncated(world *w)
{
    OK(sona_save(w->engine, w->path));
    FILE *f = fopen(w->path, "rb");
    cr_assert_not_null(f);
    static unsigned char buf[1 << 20];
    const size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    cr_assert(n > 0 && n < sizeof buf);
    return sona_load_buffer(w->engine, buf, n - 1);
}

static sona_status engine_load_garbage(world *w)
{
    static const char garbage[] = "not a state file, not even close to one: 0123456789";
    return sona_load_buffer(w->engine, garbage, sizeof garbage);
}

static sona_status state_config_of_garbage(world *w)
{
    FILE *f = fopen(w->path, "wb");
    cr_assert_not_null(f);
    fputs("not a state file, not even close to one: 0123456789", f);
    fclose(f);
    return sona_state_config(w->path, (sona_engine_config[1]){{0}});
}

/* sona_engine_config_set / _set_string on a default config, which a refusal must leave as it
 * was (else SONA_STATUS_COUNT, which no row wants). */
static sona_status config_set_with(const char *name, double value)
{
    sona_engine_config c, before;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, H);
    before = c;
    const sona_status st = sona_engine_config_set(&c, name, value);
    return memcmp(&c, &before, sizeof c) == 0 ? st : SONA_STATUS_COUNT;
}

static sona_status config_set_string_with(const char *name, const char *value)
{
    sona_engine_config c, before;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, H);
    before = c;
    const sona_status st = sona_engine_config_set_string(&c, name, value);
    return memcmp(&c, &before, sizeof c) == 0 ? st : SONA_STATUS_COUNT;
}

static sona_status config_set_string_too_long(void)
{
    char path[300];
    memset(path, 'p', sizeof path - 1);
    path[sizeof path - 1] = '\0';
    return config_set_string_with("state_path", path);
}

static sona_status config_get_with(const char *name)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, H);
    double v = -7.0;
    const sona_status st = sona_engine_config_get(&c, name, &v);
    return v == -7.0 ? st : SONA_STATUS_COUNT;
}

/* An export of tenant (-1: Base-LoRA) checked against a model width (0: none), to /tmp (a
 * directory with other files: refused before anything is written) or, with to_file, to a
 * path that is a file (/dev/null). */
static sona_status export_peft_with(world *w, int to_file, int32_t tenant, uint32_t model_hidden)
{
    sona_peft_config pc;
    sona_peft_config_default(&pc);
    pc.tenant = tenant;
    pc.model_hidden = model_hidden;
    return sona_export_peft(w->engine, to_file ? "/dev/null" : "/tmp", &pc);
}

static sona_status export_peft_format(world *w, const char *format)
{
    sona_peft_config pc;
    sona_peft_config_default(&pc);
    pc.module_format = format;
    return sona_export_peft(w->engine, "/tmp", &pc);
}

static sona_status ewc_detector_with(world *w, double short_mean, double long_var)
{
    const sona_ewc_detector d = {.samples = 5, .short_mean = short_mean, .long_mean = 1.0, .long_var = long_var};
    return sona_ewc_set_detector(w->ewc, &d);
}

/* ---- the table ------------------------------------------------------------------------------- */

/* Where a row's message must be. */
#define THREAD sona_last_error()
#define ON_LORA sona_lora_last_error(w->lora)
#define ON_EWC sona_ewc_last_error(w->ewc)
#define ON_INDEX sona_index_last_error(w->index)
#define ON_BANK sona_bank_last_error(w->bank)
#define ON_TRAJ sona_trajectory_last_error(w->traj)
#define ON_ENDED sona_trajectory_last_error(w->ended)
#define ON_ENGINE sona_engine_last_error(w->engine)
#define ON_FRESH sona_engine_last_error(w->fresh_engine)

/* X(id, the refused call, the status, where the message is, a word it contains) */
#define CASES(X)                                                                                    \
    /* system */                                                                                    \
    X(cpu_info_null, sona_cpu_info_get(NULL), SONA_E_NULL, THREAD, "NULL")                          \
    X(backend_info_null, sona_backend_info_get(0, NULL), SONA_E_NULL, THREAD, "NULL")               \
    X(backend_info_index, sona_backend_info_get(sona_backend_count(), (sona_backend_info[1]){0}),   \
      SONA_E_INVALID, THREAD, "backend")                                                            \
    X(backend_selected_null, sona_backend_selected(NULL), SONA_E_NULL, THREAD, "NULL")              \
    /* lora */                                                                                      \
    X(lora_create_out_null, sona_lora_create(&(sona_lora_config){0}, NULL), SONA_E_NULL, THREAD, "out") \
    X(lora_create_cfg_null, sona_lora_create(NULL, (sona_lora *[1]){0}), SONA_E_NULL, THREAD, "cfg")          \
    X(lora_create_hidden_0, CREATE_WITH(lora, hidden, 0), SONA_E_INVALID, THREAD, "hidden")         \
    X(lora_create_count_0, CREATE_WITH(lora, count, 0), SONA_E_INVALID, THREAD, "count")            \
    X(lora_create_rank_0, CREATE_WITH(lora, rank, 0), SONA_E_INVALID, THREAD, "rank")               \
    X(lora_create_rank_65, CREATE_WITH(lora, rank, 65), SONA_E_INVALID, THREAD, "rank")             \
    X(lora_create_count_over_int32, CREATE_WITH(lora, count, 1u << 31), SONA_E_INVALID, THREAD, "count") \
    X(lora_create_oversized, lora_create_oversized(), SONA_E_NOMEM, THREAD, "large")                \
    X(lora_create_alpha_nan, CREATE_WITH(lora, alpha, NAN), SONA_E_NONFINITE, THREAD, "alpha")      \
    X(lora_create_lr_inf, CREATE_WITH(lora, learning_rate, INFINITY), SONA_E_NONFINITE, THREAD, "learning_rate") \
    X(lora_create_clip_nan, CREATE_WITH(lora, clip_norm, NAN), SONA_E_NONFINITE, THREAD, "clip_norm") \
    X(lora_create_clip_negative, CREATE_WITH(lora, clip_norm, -1.0f), SONA_E_INVALID, THREAD, "clip_norm") \
    X(lora_forward_null_lora, sona_lora_forward(NULL, 0, w->x, w->y), SONA_E_NULL, THREAD, "lora")  \
    X(lora_forward_null_x, sona_lora_forward(w->lora, 0, NULL, w->y), SONA_E_NULL, ON_LORA, "x")    \
    X(lora_forward_null_y, sona_lora_forward(w->lora, 0, w->x, NULL), SONA_E_NULL, ON_LORA, "y")    \
    X(lora_forward_adapter_high, sona_lora_forward(w->lora, ADAPTERS, w->x, w->y), SONA_E_INVALID, ON_LORA, "adapter 3") \
    X(lora_forward_adapter_low, sona_lora_forward(w->lora, -2, w->x, w->y), SONA_E_INVALID, ON_LORA, "adapter -2") \
    X(lora_forward_batch_n_0, sona_lora_forward_batch(w->lora, 0, w->ids, w->x, w->y), SONA_E_INVALID, ON_LORA, "n is 0") \
    X(lora_forward_batch_bad_id, sona_lora_forward_batch(w->lora, ROWS, w->bad_ids, w->x, w->y),    \
      SONA_E_INVALID, ON_LORA, "row 1")                                                             \
    X(lora_accumulate_null_lora, sona_lora_accumulate(NULL, 0, w->x, w->x, 1), SONA_E_NULL, THREAD, "lora") \
    X(lora_accumulate_null_delta, sona_lora_accumulate(w->lora, 0, w->x, NULL, 1), SONA_E_NULL, ON_LORA, "delta") \
    X(lora_accumulate_nan_x, sona_lora_accumulate(w->lora, 0, w->nan_x + H, w->x, 1), SONA_E_NONFINITE, ON_LORA, "NaN") \
    X(lora_accumulate_inf_delta, sona_lora_accumulate(w->lora, 0, w->x, w->inf_x + H, 1), SONA_E_NONFINITE, ON_LORA, "NaN") \
    X(lora_accumulate_nan_w, sona_lora_accumulate(w->lora, 0, w->x, w->x, NAN), SONA_E_NONFINITE, ON_LORA, "NaN") \
    X(lora_accumulate_bad_adapter, sona_lora_accumulate(w->lora, ADAPTERS, w->x, w->x, 1), SONA_E_INVALID, ON_LORA, "adapter") \
    X(lora_accumulate_batch_n_0, sona_lora_accumulate_batch(w->lora, 0, w->ids, w->x, w->x, w->x), SONA_E_INVALID, ON_LORA, "n is 0") \
    X(lora_accumulate_batch_nan_row, lora_batch_nan_row(w), SONA_E_NONFINITE, ON_LORA, "NaN")       \
    X(lora_accumulate_batch_bad_id, lora_batch_bad_id(w), SONA_E_INVALID, ON_LORA, "row 1")         \
    X(lora_apply_updates_null, sona_lora_apply_updates(NULL), SONA_E_NULL, THREAD, "lora")          \
    X(lora_get_weights_null, sona_lora_get_weights(NULL, 0, w->y, w->out), SONA_E_NULL, THREAD, "lora") \
    X(lora_get_weights_adapter, sona_lora_get_weights(w->lora, -1, w->y, w->out), SONA_E_INVALID, ON_LORA, "adapter -1") \
    X(lora_set_weights_null, sona_lora_set_weights(NULL, 0, w->x, w->x), SONA_E_NULL, THREAD, "lora") \
    X(lora_set_weights_adapter, sona_lora_set_weights(w->lora, ADAPTERS, w->x, w->x), SONA_E_INVALID, ON_LORA, "adapter 3") \
    X(lora_set_weights_nan_a, sona_lora_set_weights(w->lora, 1, w->nan_x, w->x), SONA_E_NONFINITE, ON_LORA, "NaN") \
    X(lora_set_weights_inf_b, sona_lora_set_weights(w->lora, 1, w->x, w->inf_x), SONA_E_NONFINITE, ON_LORA, "NaN") \
    /* ewc */                                                                                       \
    X(ewc_create_out_null, sona_ewc_create(&(sona_ewc_config){0}, NULL), SONA_E_NULL, THREAD, "out") \
    X(ewc_create_cfg_null, sona_ewc_create(NULL, (sona_ewc *[1]){0}), SONA_E_NULL, THREAD, "cfg")             \
    X(ewc_create_params_0, CREATE_WITH(ewc, param_count, 0), SONA_E_INVALID, THREAD, "param_count") \
    X(ewc_create_tasks_0, CREATE_WITH(ewc, max_tasks, 0), SONA_E_INVALID, THREAD, "max_tasks")      \
    X(ewc_create_tasks_huge, CREATE_WITH(ewc, max_tasks, UINT32_MAX), SONA_E_INVALID, THREAD, "max_tasks") \
    X(ewc_create_min_samples_1, CREATE_WITH(ewc, min_samples, 1), SONA_E_INVALID, THREAD, "min_samples") \
    X(ewc_create_decay_nan, CREATE_WITH(ewc, fisher_decay, NAN), SONA_E_NONFINITE, THREAD, "NaN")   \
    X(ewc_create_lambda_inf, CREATE_WITH(ewc, lambda_base, INFINITY), SONA_E_NONFINITE, THREAD, "NaN") \
    X(ewc_create_decay_1, CREATE_WITH(ewc, fisher_decay, 1.0f), SONA_E_INVALID, THREAD, "fisher_decay") \
    X(ewc_create_long_rate, CREATE_WITH(ewc, long_rate, 0.5f), SONA_E_INVALID, THREAD, "long_rate")  \
    X(ewc_create_boundary_z_0, CREATE_WITH(ewc, boundary_z, 0.0f), SONA_E_INVALID, THREAD, "boundary_z") \
    X(ewc_update_fisher_null_ewc, sona_ewc_update_fisher(NULL, w->g, P), SONA_E_NULL, THREAD, "ewc") \
    X(ewc_update_fisher_null_g, sona_ewc_update_fisher(w->ewc, NULL, P), SONA_E_NULL, ON_EWC, "NULL") \
    X(ewc_update_fisher_size, sona_ewc_update_fisher(w->ewc, w->g, P - 1), SONA_E_SIZE, ON_EWC, "7 parameters") \
    X(ewc_update_fisher_nan, sona_ewc_update_fisher(w->ewc, w->nan_p, P), SONA_E_NONFINITE, ON_EWC, "NaN") \
    X(ewc_observe_nan_theta, sona_ewc_observe(w->ewc, w->nan_p, w->g, P, NULL), SONA_E_NONFINITE, ON_EWC, "NaN") \
    X(ewc_observe_nan_g, sona_ewc_observe(w->ewc, w->theta, w->nan_p, P, NULL), SONA_E_NONFINITE, ON_EWC, "NaN") \
    X(ewc_observe_size, sona_ewc_observe(w->ewc, w->theta, w->g, P + 1, NULL), SONA_E_SIZE, ON_EWC, "9 parameters") \
    X(ewc_observe_norm_nan, sona_ewc_observe_norm(w->ewc, w->theta, P, NAN, NULL), SONA_E_NONFINITE, ON_EWC, "norm") \
    X(ewc_observe_norm_negative, sona_ewc_observe_norm(w->ewc, w->theta, P, -1.0f, NULL), SONA_E_INVALID, ON_EWC, "norm") \
    X(ewc_end_task_nan, sona_ewc_end_task(w->ewc, w->nan_p, P), SONA_E_NONFINITE, ON_EWC, "NaN")    \
    X(ewc_end_task_null, sona_ewc_end_task(w->ewc, NULL, P), SONA_E_NULL, ON_EWC, "NULL")           \
    X(ewc_constraints_null_out, sona_ewc_apply_constraints(w->ewc, w->theta, w->g, NULL, P), SONA_E_NULL, ON_EWC, "out") \
    X(ewc_constraints_nan_g, sona_ewc_apply_constraints(w->ewc, w->theta, w->nan_p, w->out, P), SONA_E_NONFINITE, ON_EWC, "NaN") \
    X(ewc_constraints_size, sona_ewc_apply_constraints(w->ewc, w->theta, w->g, w->out, 0), SONA_E_SIZE, ON_EWC, "0 parameters") \
    X(ewc_penalty_null_ewc, sona_ewc_penalty(NULL, NULL, NULL, NULL), SONA_E_NULL, THREAD, "required")  \
    X(ewc_penalty_null_out, ewc_penalty_out(w), SONA_E_NULL, ON_EWC, "required")                    \
    X(ewc_get_task_index, sona_ewc_get_task(w->ewc, 1, w->out, w->out), SONA_E_INVALID, ON_EWC, "task 1 of 1") \
    X(ewc_get_task_null, sona_ewc_get_task(NULL, 0, w->out, w->out), SONA_E_NULL, THREAD, "ewc")    \
    X(ewc_add_task_negative, ewc_add_task_negative_fisher(w), SONA_E_INVALID, ON_EWC, "negative")   \
    X(ewc_add_task_nan, sona_ewc_add_task(w->ewc, w->nan_p, w->g, P), SONA_E_NONFINITE, ON_EWC, "NaN") \
    X(ewc_get_detector_null_ewc, sona_ewc_get_detector(NULL, (sona_ewc_detector[1]){{0}}), SONA_E_NULL, THREAD, "ewc") \
    X(ewc_get_detector_null_out, sona_ewc_get_detector(w->ewc, NULL), SONA_E_NULL, ON_EWC, "out")    \
    X(ewc_set_detector_null_ewc, sona_ewc_set_detector(NULL, NULL), SONA_E_NULL, THREAD, "ewc")      \
    X(ewc_set_detector_null, sona_ewc_set_detector(w->ewc, NULL), SONA_E_NULL, ON_EWC, "NULL")       \
    X(ewc_set_detector_nan, ewc_detector_with(w, NAN, 1.0), SONA_E_NONFINITE, ON_EWC, "NaN")        \
    X(ewc_set_detector_inf_var, ewc_detector_with(w, 1.0, INFINITY), SONA_E_NONFINITE, ON_EWC, "NaN") \
    X(ewc_set_detector_negative, ewc_detector_with(w, 1.0, -1.0), SONA_E_INVALID, ON_EWC, ">= 0")   \
    X(ewc_add_task_size, sona_ewc_add_task(w->ewc, w->theta, w->g, 2 * P), SONA_E_SIZE, ON_EWC, "16 parameters") \
    /* index */                                                                                     \
    X(index_create_out_null, sona_index_create(&(sona_index_config){0}, NULL), SONA_E_NULL, THREAD, "out") \
    X(index_create_cfg_null, sona_index_create(NULL, (sona_index *[1]){0}), SONA_E_NULL, THREAD, "cfg")       \
    X(index_create_dim_0, CREATE_WITH(index, dim, 0), SONA_E_INVALID, THREAD, "dim")                \
    X(index_create_m_1, CREATE_WITH(index, M, 1), SONA_E_INVALID, THREAD, "M 1")                    \
    X(index_create_m_256, CREATE_WITH(index, M, 256), SONA_E_INVALID, THREAD, "M 256")              \
    X(index_create_ef_0, CREATE_WITH(index, ef_search, 0), SONA_E_INVALID, THREAD, "ef_search")     \
    X(index_create_capacity, CREATE_WITH(index, initial_capacity, (1u << 24) + 1), SONA_E_INVALID, THREAD, "initial_capacity") \
    X(index_create_storage, CREATE_WITH(index, storage, (sona_storage)9), SONA_E_INVALID, THREAD, "storage") \
    X(index_insert_null_index, sona_index_insert(NULL, 99, w->x), SONA_E_NULL, THREAD, "index")     \
    X(index_insert_null_vec, sona_index_insert(w->index, 99, NULL), SONA_E_NULL, ON_INDEX, "NULL")  \
    X(index_insert_present, sona_index_insert(w->index, 3, w->x), SONA_E_STATE, ON_INDEX, "present") \
    X(index_insert_nan, sona_index_insert(w->index, 99, w->nan_x + H), SONA_E_NONFINITE, ON_INDEX, "NaN") \
    X(index_insert_zero, sona_index_insert(w->index, 99, w->zero), SONA_E_INVALID, ON_INDEX, "zero") \
    X(index_insert_huge_norm, sona_index_insert(w->index, 99, w->huge), SONA_E_INVALID, ON_INDEX, "norm") \
    X(index_update_null_index, sona_index_update(NULL, 3, w->x), SONA_E_NULL, THREAD, "index")      \
    X(index_update_missing, sona_index_update(w->index, 99, w->x), SONA_E_NOT_FOUND, ON_INDEX, "99") \
    X(index_update_nan, sona_index_update(w->index, 3, w->inf_x + H), SONA_E_NONFINITE, ON_INDEX, "NaN") \
    X(index_blend_null_index, sona_index_blend(NULL, 3, w->x, 1, 1), SONA_E_NULL, THREAD, "index")  \
    X(index_blend_missing, sona_index_blend(w->index, 99, w->x, 1, 1), SONA_E_NOT_FOUND, ON_INDEX, "99") \
    X(index_blend_nan_weight, sona_index_blend(w->index, 3, w->x, NAN, 1), SONA_E_NONFINITE, ON_INDEX, "weight") \
    X(index_blend_inf_weight, sona_index_blend(w->index, 3, w->x, 1, INFINITY), SONA_E_NONFINITE, ON_INDEX, "weight") \
    X(index_blend_negative_weight, sona_index_blend(w->index, 3, w->x, -1, 1), SONA_E_INVALID, ON_INDEX, "weight") \
    X(index_blend_zero_weights, sona_index_blend(w->index, 3, w->x, 0, 0), SONA_E_INVALID, ON_INDEX, "weight") \
    X(index_blend_nan_vec, sona_index_blend(w->index, 3, w->nan_x + H, 1, 1), SONA_E_NONFINITE, ON_INDEX, "NaN") \
    X(index_remove_null_index, sona_index_remove(NULL, 3), SONA_E_NULL, THREAD, "index")            \
    X(index_remove_missing, sona_index_remove(w->index, 0), SONA_E_NOT_FOUND, ON_INDEX, "no id 0")  \
    X(index_search_null_index, sona_index_search(NULL, w->x, 2, w->id_out, NULL, (uint32_t[1]){0}), SONA_E_NULL, THREAD, "index") \
    X(index_search_k_0, sona_index_search(w->index, w->x, 0, w->id_out, NULL, (uint32_t[1]){0}), SONA_E_INVALID, ON_INDEX, "k") \
    X(index_search_null_ids, sona_index_search(w->index, w->x, 2, NULL, NULL, (uint32_t[1]){0}), SONA_E_NULL, ON_INDEX, "ids") \
    X(index_search_nan, sona_index_search(w->index, w->nan_x + H, 2, w->id_out, w->out, (uint32_t[1]){0}), SONA_E_NONFINITE, ON_INDEX, "NaN") \
    X(index_search_zero, sona_index_search(w->index, w->zero, 2, w->id_out, w->out, (uint32_t[1]){0}), SONA_E_INVALID, ON_INDEX, "zero") \
    X(index_search_ef_0, sona_index_search_ef(w->index, w->x, 2, 0, 0, w->id_out, NULL, (uint32_t[1]){0}), SONA_E_INVALID, ON_INDEX, "ef") \
    X(index_reserve_null, sona_index_reserve(NULL, 10), SONA_E_NULL, THREAD, "index")               \
    X(index_reserve_over, sona_index_reserve(w->index, (1u << 24) + 1), SONA_E_FULL, ON_INDEX, "2^24") \
    X(index_set_ef_null, sona_index_set_ef_search(NULL, 10), SONA_E_NULL, THREAD, "index")          \
    X(index_set_ef_0, sona_index_set_ef_search(w->index, 0), SONA_E_INVALID, ON_INDEX, "ef")        \
    X(index_access_count_null_index, sona_index_access_count(NULL, 3, w->id_out), SONA_E_NULL, THREAD, "index") \
    X(index_access_count_null_out, sona_index_access_count(w->index, 3, NULL), SONA_E_NULL, THREAD, "count") \
    X(index_access_count_missing, sona_index_access_count(w->index, 99, w->id_out), SONA_E_NOT_FOUND, THREAD, "99") \
    X(index_neighbors_null_n, sona_index_neighbors(w->index, 3, w->id_out, ROWS, NULL), SONA_E_NULL, THREAD, "NULL") \
    X(index_neighbors_missing, sona_index_neighbors(w->index, 99, w->id_out, ROWS, (uint32_t[1]){0}), SONA_E_NOT_FOUND, THREAD, "99") \
    X(index_get_vector_null_out, sona_index_get_vector(w->index, 3, NULL), SONA_E_NULL, THREAD, "out") \
    X(index_get_vector_missing, sona_index_get_vector(w->index, 99, w->y), SONA_E_NOT_FOUND, THREAD, "99") \
    /* bank */                                                                                      \
    X(bank_create_out_null, sona_bank_create(&(sona_bank_config){0}, NULL), SONA_E_NULL, THREAD, "out") \
    X(bank_create_cfg_null, sona_bank_create(NULL, (sona_bank *[1]){0}), SONA_E_NULL, THREAD, "cfg")          \
    X(bank_create_dim_0, CREATE_WITH(bank, dim, 0), SONA_E_INVALID, THREAD, "dim")                  \
    X(bank_create_capacity, CREATE_WITH(bank, capacity, (1u << 24) + 1), SONA_E_INVALID, THREAD, "capacity") \
    X(bank_create_tolerance_nan, CREATE_WITH(bank, tolerance, NAN), SONA_E_NONFINITE, THREAD, "NaN") \
    X(bank_create_tolerance_inf, CREATE_WITH(bank, tolerance, INFINITY), SONA_E_NONFINITE, THREAD, "NaN") \
    X(bank_create_merge_nan, CREATE_WITH(bank, merge_threshold, NAN), SONA_E_NONFINITE, THREAD, "NaN") \
    X(bank_create_merge_2, CREATE_WITH(bank, merge_threshold, 2.0f), SONA_E_INVALID, THREAD, "merge_threshold") \
    X(bank_create_merge_z_nan, CREATE_WITH(bank, merge_z, NAN), SONA_E_NONFINITE, THREAD, "merge_z") \
    X(bank_create_merge_z_negative, CREATE_WITH(bank, merge_z, -1.0f), SONA_E_INVALID, THREAD, "merge_z") \
    X(bank_create_min_quality_inf, CREATE_WITH(bank, min_quality, -INFINITY), SONA_E_NONFINITE, THREAD, "NaN") \
    X(bank_create_index_m, CREATE_WITH(bank, index.M, 1), SONA_E_INVALID, THREAD, "M 1")            \
    X(bank_embedding_null_out, sona_bank_trajectory_embedding(H, w->x, 0, NULL, NULL, NULL), SONA_E_NULL, THREAD, "out") \
    X(bank_embedding_dim_0, sona_bank_trajectory_embedding(0, w->x, 0, NULL, NULL, w->y), SONA_E_INVALID, THREAD, "dim") \
    X(bank_embedding_nothing, sona_bank_trajectory_embedding(H, NULL, 0, NULL, NULL, w->y), SONA_E_INVALID, THREAD, "steps") \
    X(bank_embedding_nan, sona_bank_trajectory_embedding(H, w->x, 2, w->nan_x, w->x, w->y), SONA_E_NONFINITE, THREAD, "NaN") \
    X(bank_embedding_zero, sona_bank_trajectory_embedding(H, w->zero, 0, NULL, NULL, w->y), SONA_E_INVALID, THREAD, "zero") \
    X(bank_add_null_bank, sona_bank_add(NULL, w->x, H, 0.5f, 1, NULL), SONA_E_NULL, THREAD, "bank") \
    X(bank_add_null_embedding, sona_bank_add(w->bank, NULL, H, 0.5f, 1, NULL), SONA_E_NULL, ON_BANK, "NULL") \
    X(bank_add_dim, sona_bank_add(w->bank, w->x, H + 1, 0.5f, 1, NULL), SONA_E_SIZE, ON_BANK, "dim 17") \
    X(bank_add_nan, sona_bank_add(w->bank, w->nan_x + H, H, 0.5f, 1, NULL), SONA_E_NONFINITE, ON_BANK, "NaN") \
    X(bank_add_inf_quality, sona_bank_add(w->bank, w->x, H, INFINITY, 1, NULL), SONA_E_NONFINITE, ON_BANK, "NaN") \
    X(bank_add_nan_weight, sona_bank_add(w->bank, w->x, H, 0.5f, NAN, NULL), SONA_E_NONFINITE, ON_BANK, "NaN") \
    X(bank_add_negative_weight, sona_bank_add(w->bank, w->x, H, 0.5f, -1, NULL), SONA_E_INVALID, ON_BANK, "weight") \
    X(bank_add_zero, sona_bank_add(w->bank, w->zero, H, 0.5f, 1, NULL), SONA_E_INVALID, ON_BANK, "zero") \
    X(bank_add_batch_nan_row, bank_add_batch_nan_row(w), SONA_E_NONFINITE, ON_BANK, "row 1")        \
    X(bank_add_batch_full, bank_add_batch_over_pending(w), SONA_E_FULL, ON_BANK, "pending")         \
    X(bank_extract_null, sona_bank_extract(NULL, NULL), SONA_E_NULL, THREAD, "bank")                \
    X(bank_prune_null, sona_bank_prune(NULL, NULL), SONA_E_NULL, THREAD, "bank")                    \
    X(bank_search_null_bank, sona_bank_search(NULL, w->x, H, 2, w->id_out, NULL, (uint32_t[1]){0}), SONA_E_NULL, THREAD, "bank") \
    X(bank_search_dim, bank_search(w, w->x, H - 1, 2), SONA_E_SIZE, ON_BANK, "dim 15")              \
    X(bank_search_nan, bank_search(w, w->nan_x + H, H, 2), SONA_E_NONFINITE, ON_BANK, "NaN")        \
    X(bank_search_k_0, bank_search(w, w->x, H, 0), SONA_E_INVALID, ON_BANK, "k")                    \
    X(bank_search_null_query, bank_search(w, NULL, H, 2), SONA_E_NULL, ON_BANK, "NULL")             \
    X(bank_pattern_get_null, sona_bank_pattern_get(NULL, 1, NULL, NULL), SONA_E_NULL, THREAD, "bank") \
    X(bank_pattern_get_missing, sona_bank_pattern_get(w->bank, 999, NULL, w->y), SONA_E_NOT_FOUND, ON_BANK, "999") \
    X(bank_pattern_at_null, sona_bank_pattern_at(NULL, 0, NULL, NULL), SONA_E_NULL, THREAD, "bank") \
    X(bank_pattern_at_index, sona_bank_pattern_at(w->bank, 1000, NULL, w->y), SONA_E_INVALID, ON_BANK, "1000") \
    X(bank_route_null, sona_bank_pattern_route(NULL, 1, 0, NULL, NULL, NULL), SONA_E_NULL, THREAD, "bank") \
    X(bank_route_missing, sona_bank_pattern_route(w->bank, 999, 0, NULL, NULL, NULL), SONA_E_NOT_FOUND, ON_BANK, "999") \
    X(bank_route_index, sona_bank_pattern_route(w->bank, w->pattern, 100, NULL, NULL, NULL), SONA_E_INVALID, ON_BANK, "100") \
    X(bank_neighbors_null, sona_bank_neighbors(NULL, 1, w->id_out, ROWS, (uint32_t[1]){0}), SONA_E_NULL, THREAD, "bank") \
    X(bank_neighbors_missing, sona_bank_neighbors(w->bank, 999, w->id_out, ROWS, (uint32_t[1]){0}), SONA_E_NOT_FOUND, ON_BANK, "999") \
    X(bank_restore_null_bank, sona_bank_pattern_restore(NULL, NULL, NULL), SONA_E_NULL, THREAD, "bank") \
    X(bank_restore_null_pattern, sona_bank_pattern_restore(w->bank, NULL, w->x), SONA_E_NULL, ON_BANK, "NULL") \
    X(bank_restore_id_0, bank_restore(w, 0, w->x), SONA_E_STATE, ON_BANK, "id 0")                   \
    X(bank_restore_id_in_use, bank_restore(w, w->pattern, w->x), SONA_E_STATE, ON_BANK, "in use")   \
    X(bank_restore_nan, bank_restore(w, 500, w->nan_x + H), SONA_E_NONFINITE, ON_BANK, "NaN")      \
    X(bank_restore_route_null_bank, sona_bank_pattern_restore_route(NULL, 1, "r", 1, 0.5f), SONA_E_NULL, THREAD, "bank") \
    X(bank_restore_route_null, sona_bank_pattern_restore_route(w->bank, w->pattern, NULL, 1, 0.5f), SONA_E_NULL, ON_BANK, "route") \
    X(bank_restore_route_missing, sona_bank_pattern_restore_route(w->bank, 999, "r", 1, 0.5f), SONA_E_NOT_FOUND, ON_BANK, "999") \
    X(bank_restore_route_count_0, sona_bank_pattern_restore_route(w->bank, w->pattern, "r", 0, 0.5f), SONA_E_INVALID, ON_BANK, "count") \
    X(bank_restore_route_nan, sona_bank_pattern_restore_route(w->bank, w->pattern, "r", 1, NAN), SONA_E_NONFINITE, ON_BANK, "finite") \
    X(bank_stats_null_bank, sona_bank_stats_get(NULL, (sona_bank_stats[1]){{0}}), SONA_E_NULL, THREAD, "bank") \
    X(bank_stats_null_out, bank_stats_null(w), SONA_E_NULL, ON_BANK, "out")                         \
    X(bank_restore_counters_null_bank, sona_bank_restore_counters(NULL, (sona_bank_stats[1]){{0}}, 99), SONA_E_NULL, THREAD, "bank") \
    X(bank_restore_counters_null, sona_bank_restore_counters(w->bank, NULL, 99), SONA_E_NULL, ON_BANK, "counters") \
    X(bank_restore_counters_old_id, sona_bank_restore_counters(w->bank, (sona_bank_stats[1]){{0}}, w->pattern), SONA_E_INVALID, ON_BANK, "not above") \
    /* trajectories */                                                                              \
    X(id_source_out_null, sona_id_source_create(1, NULL), SONA_E_NULL, THREAD, "out")               \
    X(traj_begin_out_null, sona_trajectory_begin(w->idsrc, SONA_STORAGE_F32, w->x, H, NULL), SONA_E_NULL, THREAD, "out") \
    X(traj_begin_null_ids, sona_trajectory_begin(NULL, SONA_STORAGE_F32, w->x, H, (sona_trajectory *[1]){0}), SONA_E_NULL, THREAD, "ids") \
    X(traj_begin_null_query, trajectory_begin(w, SONA_STORAGE_F32, NULL, H), SONA_E_NULL, THREAD, "query") \
    X(traj_begin_dim_0, trajectory_begin(w, SONA_STORAGE_F32, w->x, 0), SONA_E_INVALID, THREAD, "dim") \
    X(traj_begin_storage, trajectory_begin(w, (sona_storage)9, w->x, H), SONA_E_INVALID, THREAD, "storage") \
    X(traj_begin_nan, trajectory_begin(w, SONA_STORAGE_Q8, w->nan_x + H, H), SONA_E_NONFINITE, THREAD, "NaN") \
    X(traj_begin_f16_range, trajectory_begin(w, SONA_STORAGE_F16, w->huge, H), SONA_E_NONFINITE, THREAD, "F16") \
    X(traj_reset_null, sona_trajectory_reset(NULL, w->idsrc, w->x, H), SONA_E_NULL, THREAD, "trajectory") \
    X(traj_reset_nan, sona_trajectory_reset(w->traj, w->idsrc, w->inf_x + H, H), SONA_E_NONFINITE, ON_TRAJ, "NaN") \
    X(traj_reset_dim_0, sona_trajectory_reset(w->traj, w->idsrc, w->x, 0), SONA_E_INVALID, ON_TRAJ, "dim") \
    X(traj_reset_null_ids, sona_trajectory_reset(w->traj, NULL, w->x, H), SONA_E_NULL, ON_TRAJ, "ids") \
    X(traj_reserve_null, sona_trajectory_reserve(NULL, 1, H, 0), SONA_E_NULL, THREAD, "trajectory") \
    X(traj_reserve_ended, sona_trajectory_reserve(w->ended, 1, H, 0), SONA_E_STATE, ON_ENDED, "ended") \
    X(traj_reserve_huge, sona_trajectory_reserve(w->traj, UINT32_MAX, UINT32_MAX, 0), SONA_E_NOMEM, ON_TRAJ, "more than") \
    X(traj_step_null, sona_trajectory_add_step(NULL, w->x, H, NULL, 0, 0, 0), SONA_E_NULL, THREAD, "trajectory") \
    X(traj_step_nan_acts, sona_trajectory_add_step(w->traj, w->nan_x + H, H, NULL, 0, 0, 0), SONA_E_NONFINITE, ON_TRAJ, "NaN") \
    X(traj_step_inf_attention, sona_trajectory_add_step(w->traj, w->x, H, w->inf_x + H, H, 0, 0), SONA_E_NONFINITE, ON_TRAJ, "NaN") \
    X(traj_step_null_attention, sona_trajectory_add_step(w->traj, w->x, H, NULL, 3, 0, 0), SONA_E_NULL, ON_TRAJ, "attention") \
    X(traj_step_null_acts, sona_trajectory_add_step(w->traj, NULL, H, NULL, 0, 0, 0), SONA_E_NULL, ON_TRAJ, "activations") \
    X(traj_step_len_0, sona_trajectory_add_step(w->traj, w->x, 0, NULL, 0, 0, 0), SONA_E_INVALID, ON_TRAJ, "activations_len") \
    X(traj_step_layer, sona_trajectory_add_step(w->traj, w->x, H, NULL, 0, 0, -2), SONA_E_INVALID, ON_TRAJ, "layer -2") \
    X(traj_step_nan_reward, sona_trajectory_add_step(w->traj, w->x, H, NULL, 0, NAN, 0), SONA_E_NONFINITE, ON_TRAJ, "reward") \
    X(traj_step_ended, sona_trajectory_add_step(w->ended, w->x, H, NULL, 0, 0, 0), SONA_E_STATE, ON_ENDED, "ended") \
    X(traj_route_null, sona_trajectory_set_route(w->traj, NULL), SONA_E_NULL, ON_TRAJ, "route")      \
    X(traj_route_ended, sona_trajectory_set_route(w->ended, "r"), SONA_E_STATE, ON_ENDED, "ended")   \
    X(traj_context_null, sona_trajectory_add_context(w->traj, NULL), SONA_E_NULL, ON_TRAJ, "context") \
    X(traj_context_ended, sona_trajectory_add_context(w->ended, "c"), SONA_E_STATE, ON_ENDED, "ended") \
    X(traj_end_nan, sona_trajectory_end(w->traj, NAN), SONA_E_NONFINITE, ON_TRAJ, "quality")         \
    X(traj_end_ended, sona_trajectory_end(w->ended, 0.5f), SONA_E_STATE, ON_ENDED, "ended")          \
    X(traj_query_null_out, sona_trajectory_query(w->traj, NULL, H), SONA_E_NULL, THREAD, "out")      \
    X(traj_query_cap, sona_trajectory_query(w->traj, w->y, H - 1), SONA_E_SIZE, THREAD, "room for 15") \
    X(traj_get_step_index, sona_trajectory_get_step(w->traj, 2, (sona_trajectory_step[1]){{0}}), SONA_E_INVALID, THREAD, "step 2 of 2") \
    X(traj_get_step_null, sona_trajectory_get_step(w->traj, 0, NULL), SONA_E_NULL, THREAD, "out")    \
    X(traj_activations_index, sona_trajectory_step_activations(w->traj, 5, w->y, H), SONA_E_INVALID, THREAD, "step 5") \
    X(traj_activations_cap, sona_trajectory_step_activations(w->traj, 0, w->y, 3), SONA_E_SIZE, THREAD, "room for 3") \
    X(traj_activations_null, sona_trajectory_step_activations(w->traj, 0, NULL, H), SONA_E_NULL, THREAD, "out") \
    X(traj_attention_cap, sona_trajectory_step_attention(w->traj, 0, w->y, 2), SONA_E_SIZE, THREAD, "room for 2") \
    X(traj_attention_null_t, sona_trajectory_step_attention(NULL, 0, w->y, H), SONA_E_NULL, THREAD, "trajectory") \
    /* trajectory buffer */                                                                         \
    X(buffer_create_out_null, sona_trajectory_buffer_create(&(sona_trajectory_buffer_config){1, 0}, NULL), SONA_E_NULL, THREAD, "out") \
    X(buffer_create_cfg_null, sona_trajectory_buffer_create(NULL, (sona_trajectory_buffer *[1]){0}), SONA_E_NULL, THREAD, "cfg") \
    X(buffer_create_capacity_0, CREATE_WITH(trajectory_buffer, capacity, 0), SONA_E_INVALID, THREAD, "capacity") \
    X(buffer_create_policy, CREATE_WITH(trajectory_buffer, policy, (sona_full_policy)5), SONA_E_INVALID, THREAD, "policy") \
    X(buffer_record_null_buffer, sona_trajectory_buffer_record(NULL, w->ended), SONA_E_NULL, THREAD, "buffer") \
    X(buffer_record_null_t, sona_trajectory_buffer_record(w->buffer, NULL), SONA_E_NULL, THREAD, "trajectory") \
    X(buffer_record_open, buffer_record_open(w), SONA_E_STATE, THREAD, "not ended")                 \
    X(buffer_record_full, sona_trajectory_buffer_record(w->buffer, w->ended), SONA_E_FULL, THREAD, "full") \
    X(buffer_drain_null, sona_trajectory_buffer_drain(NULL, NULL, 0, (uint32_t[1]){0}), SONA_E_NULL, THREAD, "buffer") \
    X(buffer_drain_null_out, sona_trajectory_buffer_drain(w->buffer, NULL, 1, (uint32_t[1]){0}), SONA_E_NULL, THREAD, "out") \
    X(buffer_drain_null_taken, sona_trajectory_buffer_drain(w->buffer, (sona_trajectory *[1]){0}, 1, NULL), SONA_E_NULL, THREAD, "taken") \
    /* signal */                                                                                    \
    X(signal_create_out_null, sona_signal_builder_create(&(sona_signal_config){0.5f, 3.0f, 0.25f}, NULL), SONA_E_NULL, THREAD, "out") \
    X(signal_create_cfg_null, sona_signal_builder_create(NULL, (sona_signal_builder *[1]){0}), SONA_E_NULL, THREAD, "cfg") \
    X(signal_create_rate_0, CREATE_WITH(signal, baseline_rate, 0.0f), SONA_E_INVALID, THREAD, "baseline_rate") \
    X(signal_create_rate_2, CREATE_WITH(signal, baseline_rate, 2.0f), SONA_E_INVALID, THREAD, "baseline_rate") \
    X(signal_create_rate_nan, CREATE_WITH(signal, baseline_rate, NAN), SONA_E_NONFINITE, THREAD, "baseline_rate") \
    X(signal_create_max_weight_0, CREATE_WITH(signal, max_weight, 0.0f), SONA_E_INVALID, THREAD, "max_weight") \
    X(signal_create_max_weight_inf, CREATE_WITH(signal, max_weight, INFINITY), SONA_E_NONFINITE, THREAD, "max_weight") \
    X(signal_create_share_0, CREATE_WITH(signal, outcome_share, 0.0f), SONA_E_INVALID, THREAD, "outcome_share") \
    X(signal_create_share_2, CREATE_WITH(signal, outcome_share, 2.0f), SONA_E_INVALID, THREAD, "outcome_share") \
    X(signal_create_share_nan, CREATE_WITH(signal, outcome_share, NAN), SONA_E_NONFINITE, THREAD, "outcome_share") \
    X(signal_output_nan, signal_from_output(w, w->nan_x + H), SONA_E_NONFINITE, THREAD, "output")          \
    X(signal_offset_nan, signal_offset(w, NAN), SONA_E_NONFINITE, THREAD, "offset")                    \
    X(signal_offset_overflow, signal_offset(w, -3e38f), SONA_E_NONFINITE, THREAD, "overflows")         \
    X(signal_null_builder, signal_of(w, NULL, w->ended, SONA_LAYER_NONE), SONA_E_NULL, THREAD, "builder") \
    X(signal_null_trajectory, signal_of(w, w->signals, NULL, SONA_LAYER_NONE), SONA_E_NULL, THREAD, "trajectory") \
    X(signal_open_trajectory, signal_of(w, w->signals, w->traj, SONA_LAYER_NONE), SONA_E_STATE, THREAD, "not ended") \
    X(signal_bad_layer, signal_of(w, w->signals, w->ended, -3), SONA_E_INVALID, THREAD, "layer -3")  \
    X(signal_layer_without_steps, signal_of(w, w->signals, w->ended, 5), SONA_E_EMPTY, THREAD, "no steps") \
    X(signal_compute_null, sona_signal_compute(w->signals, NULL, H, w->x, w->x, 1, 0.5f, w->out, w->out, &w->wout), SONA_E_NULL, THREAD, "pointer") \
    X(signal_compute_dim_0, sona_signal_compute(w->signals, w->x, 0, w->x, w->x, 1, 0.5f, w->out, w->out, &w->wout), SONA_E_INVALID, THREAD, "dim") \
    X(signal_compute_steps_0, signal_compute(w, w->x, 0, 0.5f), SONA_E_EMPTY, THREAD, "no steps")    \
    X(signal_compute_nan, signal_compute(w, w->nan_x, 2, 0.5f), SONA_E_NONFINITE, THREAD, "NaN")     \
    X(signal_compute_inf_quality, signal_compute(w, w->x, 2, INFINITY), SONA_E_NONFINITE, THREAD, "NaN") \
    X(signal_compute_no_direction, signal_compute(w, w->x, 1, 0.5f), SONA_E_INVALID, THREAD, "no direction") \
    X(signal_baseline_null, sona_signal_builder_set_baseline(NULL, NULL), SONA_E_NULL, THREAD, "builder") \
    X(signal_baseline_inf, sona_signal_builder_set_baseline(w->signals, &(sona_signal_baseline){INFINITY, 0.0f, 3, 0.0f}), SONA_E_NONFINITE, THREAD, "not finite") \
    X(signal_baseline_negative_var, sona_signal_builder_set_baseline(w->signals, &(sona_signal_baseline){0.5f, -1.0f, 3, 0.0f}), SONA_E_INVALID, THREAD, "negative") \
    X(signal_baseline_nan_spread, sona_signal_builder_set_baseline(w->signals, &(sona_signal_baseline){0.5f, 0.1f, 3, NAN}), SONA_E_NONFINITE, THREAD, "spread") \
    X(signal_baseline_negative_spread, sona_signal_builder_set_baseline(w->signals, &(sona_signal_baseline){0.5f, 0.1f, 3, -1.0f}), SONA_E_INVALID, THREAD, "spread") \
    X(signal_get_baseline_null, sona_signal_builder_get_baseline(w->signals, NULL), SONA_E_NULL, THREAD, "required") \
    X(signal_weigh_null, sona_signal_baseline_weigh(NULL, 0.1f, 3.0f, 0.5f, 1, &w->wout), SONA_E_NULL, THREAD, "required") \
    X(signal_weigh_nan, weigh_copy(w, NAN), SONA_E_NONFINITE, THREAD, "not finite")                    \
    /* engine */                                                                                    \
    X(engine_create_out_null, sona_engine_create(&(sona_engine_config){0}, NULL), SONA_E_NULL, THREAD, "out") \
    X(engine_create_cfg_null, sona_engine_create(NULL, (sona_engine *[1]){0}), SONA_E_NULL, THREAD, "cfg")    \
    X(engine_create_hidden_0, CREATE_WITH(engine, hidden, 0), SONA_E_INVALID, THREAD, "hidden")     \
    X(engine_create_too_large, CREATE_WITH(engine, hidden, 1u << 28), SONA_E_INVALID, THREAD, "too large") \
    X(engine_create_tasks_huge, CREATE_WITH(engine, max_tasks, SONA_EWC_MAX_TASKS + 1), SONA_E_INVALID, THREAD, "max_tasks") \
    X(engine_create_rank_65, CREATE_WITH(engine, micro_rank, 65), SONA_E_INVALID, THREAD, "ranks")  \
    X(engine_create_signal_weight_0, CREATE_WITH(engine, max_signal_weight, 0.0f), SONA_E_INVALID, THREAD, "max_signal_weight") \
    X(engine_create_output_change_negative, CREATE_WITH(engine, max_output_change, -1.0f), SONA_E_INVALID, THREAD, "max_output_change") \
    X(engine_create_output_change_nan, CREATE_WITH(engine, max_output_change, NAN), SONA_E_NONFINITE, THREAD, "non-finite") \
    X(engine_create_tenants_0, CREATE_WITH(engine, max_tenants, 0), SONA_E_INVALID, THREAD, "tenants") \
    X(engine_create_alpha_nan, CREATE_WITH(engine, micro_alpha, NAN), SONA_E_NONFINITE, THREAD, "non-finite") \
    X(engine_create_temperature_inf, CREATE_WITH(engine, dream_temperature, INFINITY), SONA_E_NONFINITE, THREAD, "non-finite") \
    X(engine_create_merge_nan, CREATE_WITH(engine, merge_cosine, NAN), SONA_E_NONFINITE, THREAD, "non-finite") \
    X(engine_create_decay_1, CREATE_WITH(engine, baseline_decay, 1.0f), SONA_E_INVALID, THREAD, "decay") \
    X(engine_create_storage, CREATE_WITH(engine, step_storage, (sona_storage)9), SONA_E_INVALID, THREAD, "step_storage") \
    X(engine_create_path, engine_create_unterminated_path(), SONA_E_INVALID, THREAD, "state_path")   \
    X(engine_create_ewc_lambda, engine_create_ewc(-1.0f, 5.0f), SONA_E_INVALID, THREAD, "ewc_lambda") \
    X(engine_create_ewc_shift, engine_create_ewc(1.0f, 0.0f), SONA_E_INVALID, THREAD, "task_shift_threshold") \
    X(engine_create_patterns, CREATE_WITH(engine, max_patterns, (1u << 24) + 1), SONA_E_INVALID, THREAD, "capacity") \
    X(tenant_create_null, sona_tenant_create(NULL, (int32_t[1]){0}), SONA_E_NULL, THREAD, "NULL")   \
    X(tenant_create_null_out, sona_tenant_create(w->engine, NULL), SONA_E_NULL, ON_ENGINE, "NULL")  \
    X(tenant_create_full, engine_tenant_create_full(w), SONA_E_FULL, ON_ENGINE, "slots")            \
    X(tenant_remove_null, sona_tenant_remove(NULL, 1), SONA_E_NULL, THREAD, "engine")               \
    X(tenant_remove_0, sona_tenant_remove(w->engine, 0), SONA_E_INVALID, ON_ENGINE, "tenant 0")     \
    X(tenant_remove_out_of_range, sona_tenant_remove(w->engine, 9), SONA_E_NOT_FOUND, ON_ENGINE, "tenant 9") \
    X(tenant_remove_negative, sona_tenant_remove(w->engine, -3), SONA_E_NOT_FOUND, ON_ENGINE, "tenant -3") \
    X(apply_null_engine, sona_apply(NULL, 0, w->x, w->y), SONA_E_NULL, THREAD, "engine")            \
    X(apply_null_x, sona_apply(w->engine, 0, NULL, w->y), SONA_E_NULL, ON_ENGINE, "x")              \
    X(apply_tenant_high, sona_apply(w->engine, 2, w->x, w->y), SONA_E_NOT_FOUND, ON_ENGINE, "tenant 2") \
    X(apply_tenant_low, sona_apply(w->engine, -2, w->x, w->y), SONA_E_NOT_FOUND, ON_ENGINE, "tenant -2") \
    X(apply_inplace_null, sona_apply_inplace(w->engine, 0, NULL), SONA_E_NULL, ON_ENGINE, "x")       \
    X(apply_batch_bad_tenant, engine_apply_batch_bad_tenant(w), SONA_E_NOT_FOUND, ON_ENGINE, "row 1") \
    X(apply_batch_null_ids, sona_apply_batch(w->engine, 2, NULL, w->x, w->y), SONA_E_NULL, ON_ENGINE, "ids") \
    X(apply_layer_null_engine, sona_apply_layer(NULL, 0, w->x, w->y), SONA_E_NULL, THREAD, "engine") \
    X(apply_layer_out_of_range, sona_apply_layer(w->engine, LAYERS, w->x, w->y), SONA_E_INVALID, ON_ENGINE, "layer 2") \
    X(apply_layer_batch_null_y, sona_apply_layer_batch(w->engine, 0, 2, w->x, NULL), SONA_E_NULL, ON_ENGINE, "y") \
    X(request_begin_null_engine, sona_request_begin(NULL, 0, w->x, (sona_request *[1]){0}), SONA_E_NULL, THREAD, "NULL") \
    X(request_begin_null_out, sona_request_begin(w->engine, 0, w->x, NULL), SONA_E_NULL, ON_ENGINE, "NULL") \
    X(request_begin_tenant, engine_begin(w, w->engine, 5, w->x), SONA_E_NOT_FOUND, ON_ENGINE, "tenant 5") \
    X(request_begin_nan, engine_begin(w, w->engine, 0, w->nan_x + H), SONA_E_NONFINITE, ON_ENGINE, "NaN") \
    X(request_begin_nan_fresh, engine_begin(w, w->fresh_engine, 0, w->inf_x + H), SONA_E_NONFINITE, ON_FRESH, "NaN") \
    X(request_step_null, sona_request_step(NULL, 0, w->x, NULL, 0, 0), SONA_E_NULL, THREAD, "NULL") \
    X(request_step_null_acts, sona_request_step(w->req, 0, NULL, NULL, 0, 0), SONA_E_NULL, ON_ENGINE, "NULL") \
    X(request_step_null_attention, sona_request_step(w->req, 0, w->x, NULL, 2, 0), SONA_E_NULL, ON_ENGINE, "NULL") \
    X(request_step_layer, sona_request_step(w->req, 1u << 31, w->x, NULL, 0, 0), SONA_E_INVALID, ON_ENGINE, "layer") \
    X(request_step_nan_acts, sona_request_step(w->req, 0, w->nan_x + H, NULL, 0, 0), SONA_E_NONFINITE, ON_ENGINE, "NaN") \
    X(request_step_inf_attention, sona_request_step(w->req, 0, w->x, w->inf_x + H, H, 0), SONA_E_NONFINITE, ON_ENGINE, "attention") \
    X(request_step_nan_reward, sona_request_step(w->req, 0, w->x, NULL, 0, NAN), SONA_E_NONFINITE, ON_ENGINE, "reward") \
    X(request_step_nan_acts_past_max, sona_request_step(w->full_req, 0, w->nan_x + H, NULL, 0, 0), SONA_E_NONFINITE, ON_ENGINE, "NaN") \
    X(request_step_nan_reward_past_max, sona_request_step(w->full_req, 0, w->x, NULL, 0, NAN), SONA_E_NONFINITE, ON_ENGINE, "reward") \
    X(request_end_null, sona_request_end(NULL, 0.5f), SONA_E_NULL, THREAD, "request")               \
    X(request_end_nan, engine_end_request(w, NAN), SONA_E_NONFINITE, ON_ENGINE, "NaN")              \
    X(request_begin_far, engine_begin(w, w->engine, 0, w->huge), SONA_E_INVALID, ON_ENGINE, "SONA_MAX_ACTIVATION") \
    X(request_begin_far_fresh, engine_begin(w, w->fresh_engine, 0, w->huge), SONA_E_INVALID, ON_FRESH, "SONA_MAX_ACTIVATION") \
    X(request_step_far_acts, sona_request_step(w->req, 0, w->huge, NULL, 0, 0), SONA_E_INVALID, ON_ENGINE, "range") \
    X(request_step_far_reward, sona_request_step(w->req, 0, w->x, NULL, 0, 3e38f), SONA_E_INVALID, ON_ENGINE, "range") \
    X(request_step_far_reward_neg, sona_request_step(w->req, 0, w->x, NULL, 0, -1.5e6f), SONA_E_INVALID, ON_ENGINE, "range") \
    X(request_step_far_acts_past_max, sona_request_step(w->full_req, 0, w->huge, NULL, 0, 0), SONA_E_INVALID, ON_ENGINE, "range") \
    X(request_end_far_quality, engine_end_request(w, 3e38f), SONA_E_INVALID, ON_ENGINE, "range")    \
    X(request_end_far_quality_neg, engine_end_request(w, -2e6f), SONA_E_INVALID, ON_ENGINE, "range") \
    X(request_end_after_far_step, engine_end_after_far_step(w), SONA_E_INVALID, ON_ENGINE, "range") \
    X(flush_null, sona_flush(NULL), SONA_E_NULL, THREAD, "engine")                                  \
    X(tick_null, sona_tick(NULL), SONA_E_NULL, THREAD, "engine")                                    \
    X(force_learn_null, sona_force_learn(NULL), SONA_E_NULL, THREAD, "engine")                      \
    X(deep_cycle_null, sona_deep_cycle(NULL), SONA_E_NULL, THREAD, "engine")                        \
    X(find_patterns_null_engine, sona_find_patterns(NULL, w->x, 2, (sona_pattern_hit[2]){{0}}, (uint32_t[1]){0}), SONA_E_NULL, THREAD, "NULL") \
    X(find_patterns_null_hits, sona_find_patterns(w->engine, w->x, 2, NULL, (uint32_t[1]){0}), SONA_E_NULL, ON_ENGINE, "NULL") \
    X(find_patterns_nan, engine_find(w->engine, w->nan_x + H), SONA_E_NONFINITE, ON_ENGINE, "NaN") \
    X(find_patterns_nan_no_patterns, engine_find(w->fresh_engine, w->nan_x + H), SONA_E_NONFINITE, ON_FRESH, "NaN") \
    X(engine_pattern_null_engine, sona_engine_pattern(NULL, 1, (sona_pattern[1]){{0}}, NULL), SONA_E_NULL, THREAD, "NULL") \
    X(engine_pattern_null_out, sona_engine_pattern(w->engine, 1, NULL, NULL), SONA_E_NULL, ON_ENGINE, "NULL") \
    X(engine_pattern_unknown_id, sona_engine_pattern(w->engine, UINT64_MAX, (sona_pattern[1]){{0}}, NULL), SONA_E_NOT_FOUND, ON_ENGINE, "no pattern") \
    X(get_stats_null_engine, sona_get_stats(NULL, (sona_stats[1]){{0}}), SONA_E_NULL, THREAD, "NULL") \
    X(get_stats_null_out, engine_stats_null(w), SONA_E_NULL, ON_ENGINE, "NULL")                     \
    X(save_null_path, sona_save(w->engine, NULL), SONA_E_NULL, ON_ENGINE, "NULL")                   \
    X(save_bad_directory, sona_save(w->engine, "/nonexistent-sona-dir/x.state"), SONA_E_IO, ON_ENGINE, "nonexistent") \
    X(load_null_path, sona_load(w->engine, NULL), SONA_E_NULL, ON_ENGINE, "NULL")                   \
    X(load_missing_file, sona_load(w->engine, "/nonexistent-sona-dir/x.state"), SONA_E_IO, ON_ENGINE, "cannot open") \
    X(load_buffer_null, sona_load_buffer(w->engine, NULL, 10), SONA_E_NULL, ON_ENGINE, "NULL")      \
    X(load_buffer_garbage, engine_load_garbage(w), SONA_E_CORRUPT, ON_ENGINE, "magic")              \
    X(load_truncated, engine_load_truncated(w), SONA_E_CORRUPT, ON_ENGINE, "truncated")             \
    X(load_other_shape, engine_load_other_shape(w), SONA_E_SIZE, ON_ENGINE, "hidden 17")           \
    X(state_config_null_path, sona_state_config(NULL, (sona_engine_config[1]){{0}}), SONA_E_NULL, THREAD, "NULL") \
    X(state_config_null_out, sona_state_config(w->path, NULL), SONA_E_NULL, THREAD, "NULL")         \
    X(state_config_missing, sona_state_config("/nonexistent-sona-dir/x.state", (sona_engine_config[1]){{0}}), SONA_E_IO, THREAD, "cannot open") \
    X(state_config_garbage, state_config_of_garbage(w), SONA_E_CORRUPT, THREAD, "magic")            \
    X(config_set_null_cfg, sona_engine_config_set(NULL, "hidden", 1), SONA_E_NULL, THREAD, "cfg")   \
    X(config_set_null_name, config_set_with(NULL, 1), SONA_E_NULL, THREAD, "name")                  \
    X(config_set_unknown, config_set_with("no_such_field", 1), SONA_E_NOT_FOUND, THREAD, "no_such_field") \
    X(config_set_negative, config_set_with("micro_rank", -1), SONA_E_INVALID, THREAD, "micro_rank") \
    X(config_set_fraction, config_set_with("max_steps", 2.5), SONA_E_INVALID, THREAD, "max_steps")  \
    X(config_set_over_u32, config_set_with("hidden", 4294967296.0), SONA_E_INVALID, THREAD, "hidden") \
    X(config_set_bad_storage, config_set_with("step_storage", 3), SONA_E_INVALID, THREAD, "step_storage") \
    X(config_set_nan, config_set_with("base_learning_rate", NAN), SONA_E_NONFINITE, THREAD, "base_learning_rate") \
    X(config_set_inf_int, config_set_with("max_tenants", INFINITY), SONA_E_NONFINITE, THREAD, "max_tenants") \
    X(config_set_over_float, config_set_with("ewc_lambda", 1e40), SONA_E_INVALID, THREAD, "ewc_lambda") \
    X(config_set_string_field, config_set_with("state_path", 0), SONA_E_INVALID, THREAD, "state_path") \
    X(config_set_string_too_long, config_set_string_too_long(), SONA_E_INVALID, THREAD, "state_path") \
    X(config_set_string_number, config_set_string_with("seed", "1"), SONA_E_INVALID, THREAD, "seed") \
    X(config_get_unknown, config_get_with("no_such_field"), SONA_E_NOT_FOUND, THREAD, "no_such_field") \
    X(config_get_string_field, config_get_with("state_path"), SONA_E_INVALID, THREAD, "state_path") \
    X(export_peft_null_engine, sona_export_peft(NULL, "/tmp", NULL), SONA_E_NULL, THREAD, "NULL")   \
    X(export_peft_null_dir, sona_export_peft(w->engine, NULL, NULL), SONA_E_NULL, ON_ENGINE, "NULL") \
    X(export_peft_no_layer, export_peft_format(w, "model.layers.o_proj"), SONA_E_INVALID, ON_ENGINE, "module_format") \
    X(export_peft_null_format, export_peft_format(w, NULL), SONA_E_NULL, ON_ENGINE, "module_format") \
    X(export_peft_wrong_width, export_peft_with(w, 0, -1, 7), SONA_E_SIZE, ON_ENGINE, "wide")         \
    X(export_peft_no_tenant, export_peft_with(w, 0, 60, 0), SONA_E_NOT_FOUND, ON_ENGINE, "tenant 60") \
    X(export_peft_bad_tenant, export_peft_with(w, 0, -2, 0), SONA_E_INVALID, ON_ENGINE, "tenant -2")  \
    X(export_peft_not_a_directory, export_peft_with(w, 1, -1, 0), SONA_E_INVALID, ON_ENGINE, "not a directory") \
    X(export_peft_missing_parent, sona_export_peft(w->engine, "/nonexistent-sona-dir/adapter", NULL), SONA_E_IO, ON_ENGINE, "cannot create")

typedef struct api_case {
    const char *id;
    sona_status (*call)(world *w);
    const char *(*message)(world *w);
    sona_status want;
    const char *mentions;
} api_case;

#define DEFINE_CASE(id, expr, want, where, mentions)                                                \
    static sona_status call_##id(world *w) { (void)w; return (expr); }                              \
    static const char *message_##id(world *w) { (void)w; return (where); }
CASES(DEFINE_CASE)

#define CASE_ROW(id, expr, want, where, mentions) {#id, call_##id, message_##id, want, mentions},
static const api_case cases[] = {CASES(CASE_ROW)};

/* A message that no row mentions, left on the thread before each row: a row whose call leaves
 * the thread's message alone fails on it. */
static void stale_thread_message(void)
{
    sona_index_config c = index_config();
    c.dim = 0;
    sona_index *x;
    cr_assert_neq(sona_index_create(&c, &x), SONA_OK);
}

#define CASE_COUNT (sizeof cases / sizeof cases[0])

/* Criterion hands parameters to a new process by value: the row's index, not pointers into
 * this one. */
ParameterizedTestParameters(api, refused)
{
    static size_t rows[CASE_COUNT];
    for (size_t i = 0; i < CASE_COUNT; i++)
        rows[i] = i;
    return cr_make_param_array(size_t, rows, CASE_COUNT);
}

ParameterizedTest(size_t *row, api, refused)
{
    const api_case *c = &cases[*row];
    world w;
    build(&w);
    bytes before = snapshot(&w);
    stale_thread_message();
    const sona_status st = c->call(&w);
    const char *msg = c->message(&w);
    cr_expect_eq(st, c->want, "%s: got %s, want %s (message: %s)", c->id, sona_status_str(st),
                 sona_status_str(c->want), msg);
    cr_expect(msg && strstr(msg, c->mentions), "%s: the message \"%s\" does not mention \"%s\"",
              c->id, msg ? msg : "(null)", c->mentions);
    bytes after = snapshot(&w);
    cr_expect(before.n == after.n && memcmp(before.p, after.p, before.n) == 0,
              "%s: the refused call changed the world", c->id);
    free(before.p);
    free(after.p);
    teardown(&w);
}

/* ---- outside the table ----------------------------------------------------------------------- */

/* Not a refusal: sona_force_learn with nothing queued has nothing to do. SONA_OK, no message,
 * and the world (counters, loop_b_cycles and the cycle time included) unchanged. */
Test(api, force_learn_with_nothing_queued)
{
    world w;
    build(&w);
    sona_stats s;
    cr_assert_eq(sona_get_stats(w.engine, &s), SONA_OK);
    cr_assert_eq(s.trajectories_queued, 0, "the world's engine should have nothing queued");
    bytes before = snapshot(&w);
    cr_expect_eq(sona_force_learn(w.engine), SONA_OK, "%s", sona_engine_last_error(w.engine));
    cr_expect_eq(sona_force_learn(w.fresh_engine), SONA_OK, "%s", sona_engine_last_error(w.fresh_engine));
    cr_expect_str_eq(sona_engine_last_error(w.engine), "");
    cr_expect_str_eq(sona_engine_last_error(w.fresh_engine), "");
    bytes after = snapshot(&w);
    cr_expect(before.n == after.n && memcmp(before.p, after.p, before.n) == 0,
              "sona_force_learn with nothing queued changed the world");
    free(before.p);
    free(after.p);
    teardown(&w);
}

Test(api, every_status_has_its_own_text)
{
    for (int s = 0; s < SONA_STATUS_COUNT; s++) {
        const char *text = sona_status_str((sona_status)s);
        cr_assert(text && text[0], "status %d has no text", s);
        cr_expect_str_neq(text, "unknown status", "status %d", s);
        for (int t = 0; t < s; t++)
            cr_expect_str_neq(text, sona_status_str((sona_status)t), "statuses %d and %d", t, s);
    }
    cr_expect_str_eq(sona_status_str(SONA_STATUS_COUNT), "unknown status");
    cr_expect_str_eq(sona_status_str((sona_status)-1), "unknown status");
}

/* Every function without a status, given NULL: harmless, with the value its header gives. */
Test(api, null_handles_are_harmless)
{
    sona_lora_destroy(NULL);
    sona_ewc_destroy(NULL);
    sona_index_destroy(NULL);
    sona_bank_destroy(NULL);
    sona_id_source_destroy(NULL);
    sona_trajectory_destroy(NULL);
    sona_trajectory_buffer_destroy(NULL);
    sona_signal_builder_destroy(NULL);
    sona_engine_destroy(NULL);
    sona_request_abandon(NULL);
    sona_lora_config_default(NULL, SONA_LORA_MICRO, H);
    sona_ewc_config_default(NULL, P);
    sona_index_config_default(NULL, H);
    sona_bank_config_default(NULL, H);
    sona_trajectory_buffer_config_default(NULL);
    sona_signal_config_default(NULL);
    sona_signal_options_default(NULL);
    sona_engine_config_default(NULL, SONA_PRESET_DEFAULT, H);
    sona_peft_config_default(NULL);
    sona_engine_set_enabled(NULL, 1);
    sona_id_source_set(NULL, 5);
    sona_trajectory_buffer_get_stats(NULL, NULL);
    sona_signal_builder_get_stats(NULL, NULL);

    cr_expect_null(sona_lora_get_config(NULL));
    cr_expect_null(sona_ewc_get_config(NULL));
    cr_expect_null(sona_index_get_config(NULL));
    cr_expect_null(sona_bank_get_config(NULL));
    cr_expect_null(sona_trajectory_buffer_get_config(NULL));
    cr_expect_null(sona_engine_get_config(NULL));
    cr_expect_null(sona_engine_device(NULL));
    cr_expect_null(sona_ewc_fisher(NULL));
    cr_expect_eq(sona_lora_pending(NULL), 0);
    cr_expect_eq(sona_ewc_lambda(NULL), 0.0f);
    cr_expect_eq(sona_ewc_task_count(NULL), 0);
    cr_expect_eq(sona_ewc_boundaries(NULL), 0);
    cr_expect_eq(sona_index_size(NULL), 0);
    cr_expect_eq(sona_bank_pending(NULL), 0);
    cr_expect_eq(sona_bank_pattern_count(NULL), 0);
    cr_expect_eq(sona_bank_next_id(NULL), 0);
    cr_expect_null(sona_cpu_feature_name(0));
    cr_expect_eq(sona_id_source_next(NULL), 0);
    cr_expect_eq(sona_id_source_peek(NULL), 0);
    cr_expect_eq(sona_trajectory_id(NULL), 0);
    cr_expect_eq(sona_trajectory_ended(NULL), 0);
    cr_expect_eq(sona_trajectory_dim(NULL), 0);
    cr_expect_eq(sona_trajectory_step_count(NULL), 0);
    cr_expect(isnan(sona_trajectory_quality(NULL)));
    cr_expect(isnan(sona_trajectory_step_reward(NULL, 0)));
    cr_expect_eq(sona_trajectory_step_layer(NULL, 0), SONA_LAYER_NONE);
    cr_expect_eq(sona_trajectory_latency_us(NULL), 0);
    cr_expect_eq(sona_trajectory_start_us(NULL), 0);
    cr_expect_null(sona_trajectory_route(NULL));
    cr_expect_eq(sona_trajectory_context_count(NULL), 0);
    cr_expect_null(sona_trajectory_context(NULL, 0));
    cr_expect_eq(sona_trajectory_buffer_len(NULL), 0);
    cr_expect_eq(sona_engine_enabled(NULL), 0);
    /* The last-error getters fall back on the thread's message. */
    cr_expect_not_null(sona_last_error());
    cr_expect_eq(sona_lora_last_error(NULL), sona_last_error());
    cr_expect_eq(sona_ewc_last_error(NULL), sona_last_error());
    cr_expect_eq(sona_index_last_error(NULL), sona_last_error());
    cr_expect_eq(sona_bank_last_error(NULL), sona_last_error());
    cr_expect_eq(sona_trajectory_last_error(NULL), sona_last_error());
    cr_expect_eq(sona_engine_last_error(NULL), sona_last_error());
    cr_expect_eq(sona_signal_builder_last_error(NULL), sona_last_error());
}
