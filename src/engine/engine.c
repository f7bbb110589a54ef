/* SPDX-License-Identifier: MIT */
/* The SONA engine: configuration presets, tenants with lock-free published Micro-LoRA weights,
 * Base-LoRA apply, request recording and loop A, statistics. */
#include "engine/engine_internal.h"

#include "common/rng.h"
#include "core/adapt/lora_internal.h"
#include "core/memory/storage.h"
#include "core/memory/trajectory_internal.h"
#include "dispatch/dispatch.h"
#include "dispatch/vecmath.h"
#include "sona/ewc.h"
#include "sona/lora.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct sona_request {
    sona_engine *e;
    sona_trajectory *t;
    int32_t tenant;
    int poisoned; /* a step was refused (non-finite): the request will not be learned */
};

sona_status eng_fail(sona_engine *e, sona_status st, const char *fmt, ...)
{
    char msg[sizeof e->err.msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sona_fail(NULL, st, "%s", msg);
    if (e) {
        pthread_mutex_lock(&e->err_mu);
        memcpy(e->err.msg, msg, sizeof msg);
        pthread_mutex_unlock(&e->err_mu);
    }
    return st;
}

uint64_t eng_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static float bits_float(unsigned b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

float eng_baseline(sona_engine *e)
{
    pthread_mutex_lock(&e->quality_mu);
    const float b = e->quality.count ? e->quality.mean : 0.0f;
    pthread_mutex_unlock(&e->quality_mu);
    return b;
}

void eng_quality_observe(sona_engine *e, float quality)
{
    float ignored;
    pthread_mutex_lock(&e->quality_mu);
    sona_signal_baseline_weigh(&e->quality, 1.0f - e->cfg.baseline_decay, e->cfg.max_signal_weight, quality, 1,
                               &ignored);
    pthread_mutex_unlock(&e->quality_mu);
}

float eng_quality_weight(sona_engine *e, float quality)
{
    float w = 0.0f;
    pthread_mutex_lock(&e->quality_mu);
    const sona_signal_baseline b = e->quality;
    pthread_mutex_unlock(&e->quality_mu);
    if (b.count < 2) { /* no spread yet: the quality against the mean (0 before any) */
        const float m = e->cfg.max_signal_weight, d = quality - (b.count ? b.mean : 0.0f);
        return isfinite(d) ? (d > m ? m : d < -m ? -m : d) : 0.0f;
    }
    sona_signal_baseline copy = b;
    if (sona_signal_baseline_weigh(&copy, 1.0f - e->cfg.baseline_decay, e->cfg.max_signal_weight, quality, 0, &w) !=
        SONA_OK)
        w = 0.0f;
    return w;
}

uint32_t eng_region(const sona_engine *e, const float *x)
{
    const uint32_t H = e->cfg.hidden;
    const sona_dot_fn dot = sona_dot_kernel();
    uint32_t region = 0;
    for (uint32_t b = 0; b < ENG_REGION_BITS; b++)
        region |= (uint32_t)(dot(e->region_planes + (size_t)b * H, x, H) > 0.0f) << b;
    return region;
}

/* The region hash's planes: seeded, so a saved engine's regions are a loaded one's. */
static float *region_planes_create(const sona_engine_config *c)
{
    float *p = malloc((size_t)ENG_REGION_BITS * c->hidden * sizeof *p);
    if (!p)
        return NULL;
    for (uint32_t b = 0; b < ENG_REGION_BITS; b++) {
        sona_rng rng;
        sona_rng_seed(&rng, c->seed ^ 0x4e610ull, b);
        for (uint32_t h = 0; h < c->hidden; h++)
            p[(size_t)b * c->hidden + h] = sona_rng_normal(&rng);
    }
    return p;
}

sona_status eng_traj_take(sona_engine *e, const float *query, sona_trajectory **out)
{
    uint32_t taken = 0;
    if (sona_trajectory_buffer_drain(e->pool, out, 1, &taken) == SONA_OK && taken == 1) {
        sona_status st = sona_trajectory_reset(*out, e->ids, query, e->cfg.hidden);
        if (st != SONA_OK) {
            sona_fail(NULL, st, "%s", sona_trajectory_last_error(*out)); /* begin's reports here */
            sona_trajectory_destroy(*out);
            *out = NULL;
        }
        return st;
    }
    sona_status st = sona_trajectory_begin(e->ids, e->cfg.step_storage, query, e->cfg.hidden, out);
    /* Room for a full request at once, not a doubling series of reallocs; end() gives back what
     * the request did not use. Best effort: without it the steps still grow the arena. */
    if (st == SONA_OK)
        (void)sona_trajectory_reserve(*out, e->cfg.max_steps, e->cfg.hidden, 0);
    return st;
}

void eng_traj_recycle(sona_engine *e, sona_trajectory *t)
{
    if (!t)
        return;
    if (!sona_trajectory_ended(t))
        sona_trajectory_end(t, 0.0f);
    /* A trajectory restored by sona_load may keep another format than step_storage: a reused
     * one would record new requests in it. */
    if (sona_trajectory_storage(t) != e->cfg.step_storage || sona_trajectory_buffer_record(e->pool, t) != SONA_OK)
        sona_trajectory_destroy(t);
}

sona_status eng_steps_gather(eng_steps *s, const sona_trajectory *t, uint32_t hidden)
{
    const uint32_t n = sona_trajectory_step_count(t);
    if (!s->query && !(s->query = malloc(hidden * sizeof *s->query)))
        return SONA_E_NOMEM;
    if (n > s->cap) {
        float *a = realloc(s->acts, (size_t)n * hidden * sizeof *a), *r;
        if (a)
            s->acts = a;
        r = realloc(s->rewards, n * sizeof *r);
        if (r)
            s->rewards = r;
        int32_t *l = realloc(s->layers, n * sizeof *l);
        if (l)
            s->layers = l;
        if (!a || !r || !l)
            return SONA_E_NOMEM;
        s->cap = n;
    }
    sona_status st = sona_trajectory_query(t, s->query, hidden);
    s->steps = 0;
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        sona_trajectory_step step;
        sona_trajectory_get_step(t, i, &step);
        if (step.activations_len != hidden)
            continue; /* the engine only records rows of its width */
        st = sona_trajectory_step_activations(t, i, s->acts + (size_t)s->steps * hidden, hidden);
        s->rewards[s->steps] = step.reward;
        s->layers[s->steps] = step.layer;
        s->steps++;
    }
    return st;
}

void eng_steps_free(eng_steps *s)
{
    free(s->query);
    free(s->acts);
    free(s->rewards);
    free(s->layers);
    memset(s, 0, sizeof *s);
}

/* ---- configuration ------------------------------------------------------------------------ */

void sona_engine_config_default(sona_engine_config *cfg, sona_preset preset, uint32_t hidden)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof *cfg);
    cfg->hidden = hidden;
    cfg->seed = 42;
    cfg->micro_rank = 2;
    cfg->micro_learning_rate = 0.2f;
    cfg->micro_apply_every = 1;
    cfg->max_tenants = 64;
    cfg->base_rank = 8;
    cfg->base_layers = 12;
    cfg->base_learning_rate = 0.1f;
    cfg->max_signal_weight = 3.0f;
    cfg->max_output_change = 5.0f;
    cfg->max_steps = 16;
    cfg->buffer_capacity = 10000;
    cfg->step_storage = SONA_STORAGE_Q8;
    cfg->baseline_decay = 0.95f;
    cfg->background_thread = 1;
    cfg->loop_b_threshold = 250;
    cfg->loop_b_interval_ms = 2000u;
    cfg->loop_b_min_batch = 16;
    cfg->clusters_per_cycle = 32;
    cfg->max_patterns = 100000;
    cfg->ewc_enabled = 1;
    cfg->ewc_lambda = 0.01f;
    cfg->fisher_decay = 0.99f;
    cfg->max_tasks = 5;
    cfg->task_shift_threshold = 1.2f;
    cfg->dreams_per_cycle = 50;
    cfg->dream_length = 15;
    cfg->dream_temperature = 0.5f;
    cfg->dream_jump_prob = 0.1f;
    cfg->dream_novelty_bonus = 0.5f;
    cfg->dream_replay_min_score = 0.5f;
    cfg->device_apply = 1;
    cfg->device_min_rows = 32;
    cfg->merge_cosine = 0.98f;
    cfg->importance_decay = 0.95f;
    switch (preset) {
    case SONA_PRESET_MAX_THROUGHPUT:
        cfg->micro_rank = 1;
        cfg->micro_apply_every = 16;
        cfg->max_tenants = 256;
        cfg->base_rank = 4;
        cfg->max_steps = 8;
        cfg->buffer_capacity = 20000;
        cfg->loop_b_threshold = 1000;
        cfg->loop_b_interval_ms = 5000u;
        cfg->loop_b_min_batch = 64;
        cfg->max_tasks = 3;
        cfg->dreams_per_cycle = 10;
        break;
    case SONA_PRESET_MAX_QUALITY:
        cfg->micro_learning_rate = 0.1f;
        cfg->base_rank = 16;
        cfg->max_steps = 32;
        cfg->loop_b_threshold = 50;
        cfg->loop_b_interval_ms = 1000u;
        cfg->loop_b_min_batch = 8;
        cfg->clusters_per_cycle = 64;
        cfg->max_tasks = 10;
        cfg->dreams_per_cycle = 100;
        break;
    case SONA_PRESET_EDGE:
        cfg->micro_rank = 1;
        cfg->micro_apply_every = 4;
        cfg->max_tenants = 8;
        cfg->base_rank = 4;
        cfg->base_layers = 4;
        cfg->max_steps = 8;
        cfg->buffer_capacity = 1000;
        cfg->background_thread = 0;
        cfg->loop_b_threshold = 200;
        cfg->loop_b_interval_ms = 0;
        cfg->loop_b_min_batch = 8;
        cfg->clusters_per_cycle = 8;
        cfg->max_patterns = 5000;
        cfg->ewc_enabled = 0;
        cfg->max_tasks = 2;
        cfg->dreams_per_cycle = 5;
        break;
    case SONA_PRESET_DEFAULT:
    default:
        break;
    }
    cfg->micro_alpha = 2.0f * (float)cfg->micro_rank;
    cfg->base_alpha = 2.0f * (float)cfg->base_rank;
}

static sona_status check_config(const sona_engine_config *c)
{
    if (c->hidden == 0 || c->micro_rank == 0 || c->micro_rank > 64 || c->base_rank == 0 ||
        c->base_rank > 64 || c->base_layers == 0 || c->max_tenants == 0 || c->max_tenants > 65536 ||
        c->micro_apply_every == 0 || c->buffer_capacity == 0 || c->max_steps == 0 ||
        c->clusters_per_cycle == 0 || c->max_patterns == 0 || c->dream_length == 0)
        return sona_fail(NULL, SONA_E_INVALID,
                         "sona_engine_create: hidden, ranks (1..64), layers, tenants (1..65536), "
                         "micro_apply_every, buffer_capacity, max_steps, clusters, max_patterns and "
                         "dream_length must be >= 1");
    const float f[] = {c->micro_alpha, c->micro_learning_rate, c->base_alpha, c->base_learning_rate,
                       c->max_signal_weight, c->max_output_change, c->baseline_decay, c->ewc_lambda, c->fisher_decay,
                       c->task_shift_threshold, c->dream_temperature, c->dream_jump_prob,
                       c->dream_novelty_bonus, c->dream_replay_min_score, c->merge_cosine,
                       c->importance_decay};
    if (!sona_all_finite(f, sizeof f / sizeof f[0]))
        return sona_fail(NULL, SONA_E_NONFINITE, "sona_engine_create: non-finite value in config");
    if (c->baseline_decay < 0 || c->baseline_decay >= 1 || c->fisher_decay < 0 ||
        c->fisher_decay >= 1 || c->dream_jump_prob < 0 || c->dream_jump_prob > 1 ||
        c->dream_temperature <= 0 || !(c->max_signal_weight > 0) || c->max_output_change < 0)
        return sona_fail(NULL, SONA_E_INVALID, "sona_engine_create: decays must be in [0,1), "
                                               "jump probability in [0,1], temperature > 0, "
                                               "max_signal_weight > 0, max_output_change >= 0");
    /* What the EWC++ glue gives sona_ewc_create (lambda_base, boundary_z; lambda_max 1e6). */
    if (c->ewc_enabled && !(c->ewc_lambda >= 0 && c->ewc_lambda <= 1e6f && c->task_shift_threshold > 0 &&
                            c->max_tasks <= SONA_EWC_MAX_TASKS))
        return sona_fail(NULL, SONA_E_INVALID, "sona_engine_create: with EWC++ on, ewc_lambda must be in "
                                               "0..1e6, task_shift_threshold > 0 and max_tasks at most %u",
                         SONA_EWC_MAX_TASKS);
    /* An adapter set's parameters (A and B of every adapter) are counted in 32 bits (EWC++, the
     * op shapes): refused here, before anything is allocated. */
    if ((uint64_t)2 * c->base_layers * c->base_rank * c->hidden > UINT32_MAX ||
        (uint64_t)2 * c->micro_rank * c->hidden > UINT32_MAX)
        return sona_fail(NULL, SONA_E_INVALID, "sona_engine_create: too large: 2 x base_layers x base_rank x "
                                               "hidden must be below 2^32");
    if (!sona_storage_valid(c->step_storage))
        return sona_fail(NULL, SONA_E_INVALID, "sona_engine_create: step_storage %d is not a sona_storage",
                         (int)c->step_storage);
    if (memchr(c->state_path, '\0', sizeof c->state_path) == NULL)
        return sona_fail(NULL, SONA_E_INVALID, "sona_engine_create: state_path is not terminated");
    return SONA_OK;
}

void eng_lora_config(const sona_engine_config *c, int base, sona_lora_config *lc)
{
    sona_lora_config_default(lc, base ? SONA_LORA_BASE : SONA_LORA_MICRO, c->hidden);
    lc->rank = base ? c->base_rank : c->micro_rank;
    lc->count = base ? c->base_layers : 1;
    lc->alpha = base ? c->base_alpha : c->micro_alpha;
    lc->learning_rate = base ? c->base_learning_rate : c->micro_learning_rate;
    lc->clip_norm = 0.0f; /* the engine bounds each signal's weight and the output change instead */
    lc->seed = base ? c->seed ^ 0xba5eull : c->seed;
}

/* A fresh identity adapter for slot i, published. Caller holds the tenant's mutex. */
static sona_status tenant_reset(sona_engine *e, eng_tenant *t)
{
    sona_lora_config lc;
    eng_lora_config(&e->cfg, 0, &lc);
    sona_lora *l = NULL;
    sona_status st = sona_lora_create(&lc, &l);
    if (st != SONA_OK)
        return st;
    eng_ewc *w = NULL;
    if (e->cfg.ewc_enabled && !(w = eng_ewc_create(l, &e->cfg, 0))) {
        sona_lora_destroy(l);
        return SONA_E_NOMEM;
    }
    if ((st = sona_snapshot_publish(&t->slot, l)) != SONA_OK) {
        eng_ewc_destroy(w);
        sona_lora_destroy(l);
        return st;
    }
    sona_lora_destroy(t->lora);
    eng_ewc_destroy(t->ewc);
    t->lora = l;
    t->ewc = w;
    t->since_apply = 0;
    atomic_store(&t->tasks, 0);
    memset(t->baselines, 0, sizeof t->baselines);
    return SONA_OK;
}

sona_status sona_engine_create(const sona_engine_config *cfg, sona_engine **out)
{
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "sona_engine_create: out is NULL");
    *out = NULL;
    if (!cfg)
        return sona_fail(NULL, SONA_E_NULL, "sona_engine_create: cfg is NULL");
    sona_status st = check_config(cfg);
    if (st != SONA_OK)
        return st;
    sona_engine *e = calloc(1, sizeof *e);
    if (!e)
        return sona_fail(NULL, SONA_E_NOMEM, "sona_engine_create: out of memory");
    e->cfg = *cfg;
    pthread_mutex_init(&e->err_mu, NULL);
    pthread_mutex_init(&e->tenants_mu, NULL);
    pthread_mutex_init(&e->cycle_mu, NULL);
    pthread_mutex_init(&e->wake_mu, NULL);
    pthread_cond_init(&e->wake_cv, NULL);
    pthread_rwlock_init(&e->bank_lock, NULL);
    pthread_mutex_init(&e->quality_mu, NULL);
    atomic_store(&e->enabled, 1);
    e->tenants = calloc(cfg->max_tenants, sizeof *e->tenants);
    e->region_planes = region_planes_create(cfg);
    e->base_baselines = calloc((size_t)cfg->base_layers * ENG_REGIONS, sizeof *e->base_baselines);
    sona_trajectory_buffer_config tb;
    sona_trajectory_buffer_config_default(&tb);
    tb.capacity = cfg->buffer_capacity;
    tb.policy = SONA_FULL_DROP_NEWEST;
    sona_signal_config sc;
    sona_signal_config_default(&sc);
    sc.baseline_rate = 1.0f - cfg->baseline_decay;
    sc.max_weight = cfg->max_signal_weight;
    sona_trajectory_buffer_config pc = tb;
    pc.capacity = cfg->loop_b_threshold < cfg->buffer_capacity ? cfg->loop_b_threshold : cfg->buffer_capacity;
    if (pc.capacity < 64)
        pc.capacity = 64;
    if (!e->tenants || !e->region_planes || !e->base_baselines || sona_id_source_create(1, &e->ids) != SONA_OK ||
        sona_trajectory_buffer_create(&tb, &e->buffer) != SONA_OK ||
        sona_trajectory_buffer_create(&pc, &e->pool) != SONA_OK ||
        sona_signal_builder_create(&sc, &e->signals) != SONA_OK) {
        free(e->tenants);
        e->tenants = NULL;
        sona_engine_destroy(e);
        return sona_fail(NULL, SONA_E_NOMEM, "sona_engine_create: out of memory");
    }
    for (uint32_t i = 0; i < cfg->max_tenants; i++)
        pthread_mutex_init(&e->tenants[i].mu, NULL);
    sona_lora_config bc;
    eng_lora_config(cfg, 1, &bc);
    if ((st = sona_lora_create(&bc, &e->base)) != SONA_OK ||
        (st = sona_snapshot_publish(&e->base_slot, e->base)) != SONA_OK ||
        (cfg->ewc_enabled && !(e->base_ewc = eng_ewc_create(e->base, cfg, 1))) ||
        (st = tenant_reset(e, &e->tenants[0])) != SONA_OK ||
        (st = eng_bank_create(cfg, &e->bank)) != SONA_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", sona_last_error());
        sona_engine_destroy(e);
        return sona_fail(NULL, st == SONA_OK ? SONA_E_NOMEM : st, "sona_engine_create: %s", why);
    }
    atomic_store(&e->tenants[0].live, 1);
    e->device = eng_device_create(cfg);
    if ((st = eng_threads_start(e)) != SONA_OK) {
        sona_engine_destroy(e);
        return sona_fail(NULL, st, "sona_engine_create: could not start the loop thread");
    }
    *out = e;
    return SONA_OK;
}

void sona_engine_destroy(sona_engine *e)
{
    if (!e)
        return;
    eng_threads_stop(e);
    eng_device_destroy(e->device);
    sona_bank_destroy(e->bank);
    eng_dream_state_free(e->dream);
    sona_scratch_free(&e->base_rows);
    sona_scratch_free(&e->bank_rows);
    pthread_rwlock_destroy(&e->bank_lock);
    pthread_mutex_destroy(&e->quality_mu);
    free(e->region_planes);
    free(e->base_baselines);
    if (e->tenants) {
        for (uint32_t i = 0; i < e->cfg.max_tenants; i++) {
            eng_tenant *t = &e->tenants[i];
            sona_snapshot_slot_free(&t->slot);
            sona_lora_destroy(t->lora);
            eng_ewc_destroy(t->ewc);
            free(t->signal);
            pthread_mutex_destroy(&t->mu);
        }
        free(e->tenants);
    }
    sona_snapshot_slot_free(&e->base_slot);
    sona_lora_destroy(e->base);
    eng_ewc_destroy(e->base_ewc);
    sona_trajectory_buffer_destroy(e->buffer);
    sona_trajectory_buffer_destroy(e->pool);
    sona_signal_builder_destroy(e->signals);
    sona_id_source_destroy(e->ids);
    free(atomic_load(&e->spare_request));
    pthread_mutex_destroy(&e->err_mu);
    pthread_mutex_destroy(&e->tenants_mu);
    pthread_mutex_destroy(&e->cycle_mu);
    pthread_mutex_destroy(&e->wake_mu);
    pthread_cond_destroy(&e->wake_cv);
    free(e);
}

const char *sona_engine_last_error(const sona_engine *e) { return e ? e->err.msg : sona_last_error(); }
const char *sona_engine_device(const sona_engine *e) { return e ? eng_device_name(e->device) : NULL; }

const sona_engine_config *sona_engine_get_config(const sona_engine *e) { return e ? &e->cfg : NULL; }
void sona_engine_set_enabled(sona_engine *e, int enabled)
{
    if (e)
        atomic_store(&e->enabled, enabled != 0);
}
int sona_engine_enabled(const sona_engine *e) { return e ? atomic_load(&((sona_engine *)e)->enabled) : 0; }

/* ---- tenants ------------------------------------------------------------------------------- */

sona_status sona_tenant_create(sona_engine *e, int32_t *tenant)
{
    if (!e || !tenant)
        return eng_fail(e, SONA_E_NULL, "sona_tenant_create: NULL argument");
    pthread_mutex_lock(&e->tenants_mu);
    sona_status st = SONA_E_FULL;
    for (uint32_t i = 1; i < e->cfg.max_tenants; i++) {
        eng_tenant *t = &e->tenants[i];
        if (atomic_load(&t->live))
            continue;
        pthread_mutex_lock(&t->mu);
        st = tenant_reset(e, t);
        if (st == SONA_OK) {
            atomic_store(&t->live, 1);
            *tenant = (int32_t)i;
        }
        pthread_mutex_unlock(&t->mu);
        break;
    }
    pthread_mutex_unlock(&e->tenants_mu);
    if (st == SONA_E_FULL)
        return eng_fail(e, st, "sona_tenant_create: all %u tenant slots are in use", e->cfg.max_tenants);
    if (st != SONA_OK)
        return eng_fail(e, st, "sona_tenant_create: %s", sona_last_error());
    return SONA_OK;
}

static eng_tenant *live_tenant(sona_engine *e, int32_t id)
{
    if (id < 0 || (uint32_t)id >= e->cfg.max_tenants || !atomic_load(&e->tenants[id].live))
        return NULL;
    return &e->tenants[id];
}

sona_status sona_tenant_remove(sona_engine *e, int32_t tenant)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "sona_tenant_remove: engine is NULL");
    if (tenant == 0)
        return eng_fail(e, SONA_E_INVALID, "sona_tenant_remove: tenant 0 cannot be removed");
    pthread_mutex_lock(&e->tenants_mu);
    eng_tenant *t = live_tenant(e, tenant);
    if (t) {
        pthread_mutex_lock(&t->mu);
        atomic_store(&t->live, 0);
        sona_snapshot_retract(&t->slot);
        pthread_mutex_unlock(&t->mu);
    }
    pthread_mutex_unlock(&e->tenants_mu);
    return t ? SONA_OK : eng_fail(e, SONA_E_NOT_FOUND, "sona_tenant_remove: no tenant %d", tenant);
}

/* ---- apply --------------------------------------------------------------------------------- */

/* rows of x through one published adapter (index `adapter` of the snapshot). */
static sona_status apply_rows(const sona_snapshot *s, int32_t adapter, uint32_t n, const float *x, float *y)
{
    const sona_backend *cpu = sona_cpu_backend();
    if (n == 1) {
        sona_lora_apply_args a = {.w = s->w, .n = 1, .ids = &adapter, .x = x, .y = y};
        return cpu->lora_apply(cpu->ctx, &a);
    }
    int32_t ids[64];
    for (uint32_t i = 0; i < 64; i++)
        ids[i] = adapter;
    const size_t H = s->w.hidden;
    for (uint32_t done = 0; done < n; done += 64) {
        uint32_t m = n - done < 64 ? n - done : 64;
        sona_lora_apply_args a = {.w = s->w, .n = m, .ids = ids, .x = x + done * H, .y = y + done * H};
        sona_status st = cpu->lora_apply(cpu->ctx, &a);
        if (st != SONA_OK)
            return st;
    }
    return SONA_OK;
}

/* Every id is -1 or a live tenant (checked before any row is written). */
static sona_status check_tenants(sona_engine *e, uint32_t n, const int32_t *ids)
{
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] != -1 && !live_tenant(e, ids[i]))
            return eng_fail(e, SONA_E_NOT_FOUND, "sona_apply: row %u uses tenant %d, which does not exist", i, ids[i]);
    return SONA_OK;
}

/* Whether a batch of n rows goes to the accelerator; counts it when it does. */
static int on_device(sona_engine *e, uint32_t n)
{
    if (!e->device || n == 0 || n < e->cfg.device_min_rows || !eng_device_ready(e->device))
        return 0;
    atomic_fetch_add(&e->device_batches, 1);
    return 1;
}

sona_status sona_apply_batch(sona_engine *e, uint32_t n, const int32_t *ids, const float *x, float *y)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "sona_apply: engine is NULL");
    if (!ids || !x || !y)
        return eng_fail(e, SONA_E_NULL, "sona_apply: ids, x and y are required");
    sona_status st = check_tenants(e, n, ids);
    if (st != SONA_OK)
        return st;
    if (on_device(e, n)) {
        st = eng_device_apply(e, n, ids, x, y);
        if (st == SONA_OK || st == SONA_E_NOT_FOUND)
            return st == SONA_OK ? st : eng_fail(e, st, "sona_apply: a tenant was removed during the call");
        atomic_fetch_add(&e->device_fallbacks, 1); /* the rows are redone on the CPU below */
    }
    const size_t H = e->cfg.hidden;
    for (uint32_t i = 0; i < n;) {
        uint32_t j = i + 1; /* a run of rows with one tenant */
        while (j < n && ids[j] == ids[i])
            j++;
        if (ids[i] == -1) {
            if (y != x)
                memcpy(y + i * H, x + i * H, (j - i) * H * sizeof(float));
        } else {
            sona_snapshot *s = sona_snapshot_acquire(&e->tenants[ids[i]].slot);
            if (!s) /* removed since the check */
                return eng_fail(e, SONA_E_NOT_FOUND, "sona_apply: tenant %d was removed during the call", ids[i]);
            st = apply_rows(s, 0, j - i, x + i * H, y + i * H);
            sona_snapshot_release(s);
            if (st != SONA_OK)
                return eng_fail(e, st, "sona_apply: lora_apply failed");
        }
        i = j;
    }
    return SONA_OK;
}

sona_status sona_apply(sona_engine *e, int32_t tenant, const float *x, float *y)
{
    return sona_apply_batch(e, 1, &tenant, x, y);
}

sona_status sona_apply_inplace(sona_engine *e, int32_t tenant, float *x)
{
    return sona_apply_batch(e, 1, &tenant, x, x);
}

sona_status sona_apply_layer_batch(sona_engine *e, uint32_t layer, uint32_t n, const float *x, float *y)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "sona_apply_layer: engine is NULL");
    if (!x || !y)
        return eng_fail(e, SONA_E_NULL, "sona_apply_layer: x and y are required");
    if (layer >= e->cfg.base_layers)
        return eng_fail(e, SONA_E_INVALID, "sona_apply_layer: layer %u is outside 0..%u", layer,
                        e->cfg.base_layers - 1);
    if (on_device(e, n)) {
        if (eng_device_apply_layer(e, layer, n, x, y) == SONA_OK)
            return SONA_OK;
        atomic_fetch_add(&e->device_fallbacks, 1);
    }
    sona_snapshot *s = sona_snapshot_acquire(&e->base_slot);
    sona_status st = s ? apply_rows(s, (int32_t)layer, n, x, y) : SONA_E_STATE;
    sona_snapshot_release(s);
    return st == SONA_OK ? SONA_OK : eng_fail(e, st, "sona_apply_layer: lora_apply failed");
}

sona_status sona_apply_layer(sona_engine *e, uint32_t layer, const float *x, float *y)
{
    return sona_apply_layer_batch(e, layer, 1, x, y);
}

/* ---- requests and loop A ------------------------------------------------------------------- */

/* A request object no longer used: kept as the engine's spare unless one is kept already. */
static void request_release(sona_request *r)
{
    sona_request *none = NULL;
    if (!atomic_compare_exchange_strong(&r->e->spare_request, &none, r))
        free(r);
}

sona_status sona_request_begin(sona_engine *e, int32_t tenant, const float *query, sona_request **out)
{
    if (!e || !query || !out)
        return eng_fail(e, SONA_E_NULL, "sona_request_begin: NULL argument");
    *out = NULL;
    if (!live_tenant(e, tenant))
        return eng_fail(e, SONA_E_NOT_FOUND, "sona_request_begin: no tenant %d", tenant);
    /* The spare object of an ended request when there is one: one thread serving requests
     * one after the other never allocates here. */
    sona_request *r = atomic_exchange(&e->spare_request, NULL);
    if (!r && !(r = malloc(sizeof *r)))
        return eng_fail(e, SONA_E_NOMEM, "sona_request_begin: out of memory");
    *r = (sona_request){.e = e, .tenant = tenant};
    sona_status st = eng_traj_take(e, query, &r->t);
    if (st != SONA_OK) {
        request_release(r);
        return eng_fail(e, st, "sona_request_begin: %s", sona_last_error());
    }
    *out = r;
    return SONA_OK;
}

sona_status sona_request_step(sona_request *r, uint32_t layer, const float *activations,
                              const float *attention, uint32_t n_attention, float reward)
{
    if (!r || !activations || (n_attention && !attention))
        return eng_fail(r ? r->e : NULL, SONA_E_NULL, "sona_request_step: NULL argument");
    sona_engine *e = r->e;
    if (layer > INT32_MAX)
        return eng_fail(e, SONA_E_INVALID, "sona_request_step: layer %u is out of range", layer);
    if (n_attention && !sona_all_finite(attention, n_attention)) {
        r->poisoned = 1;
        return eng_fail(e, SONA_E_NONFINITE, "sona_request_step: NaN or Inf in attention weights");
    }
    if (sona_trajectory_step_count(r->t) >= e->cfg.max_steps) {
        /* Only the first max_steps are kept; the others are checked all the same. */
        if (isfinite(reward) && sona_all_finite(activations, e->cfg.hidden))
            return SONA_OK;
        r->poisoned = 1;
        return eng_fail(e, SONA_E_NONFINITE, "sona_request_step: NaN or Inf in the activations or reward "
                                             "(of a step past max_steps)");
    }
    /* Attention weights are checked, not kept: loop B learns from activations and rewards. */
    sona_status st = sona_trajectory_add_step(r->t, activations, e->cfg.hidden, NULL, 0, reward, (int32_t)layer);
    if (st != SONA_OK) {
        r->poisoned = 1;
        return eng_fail(e, st, "sona_request_step: %s", sona_trajectory_last_error(r->t));
    }
    return SONA_OK;
}

void sona_request_abandon(sona_request *r)
{
    if (!r)
        return;
    eng_traj_recycle(r->e, r->t);
    request_release(r);
}

/* Loop A's learning step for one ended trajectory of tenant `tenant`. The signal is built in
 * the tenant's rows, under its mutex like the training step that follows. */
static sona_status learn_instant(sona_engine *e, int32_t tenant, const sona_trajectory *t)
{
    const uint32_t H = e->cfg.hidden;
    eng_tenant *tn = &e->tenants[tenant];
    eng_quality_observe(e, sona_trajectory_quality(t));
    pthread_mutex_lock(&tn->mu);
    if (!tn->signal && !(tn->signal = malloc(3 * (size_t)H * sizeof *tn->signal))) {
        pthread_mutex_unlock(&tn->mu);
        return eng_fail(e, SONA_E_NOMEM, "sona_request_end: out of memory");
    }
    float *x = tn->signal, *delta = x + H, *y = delta + H, w;
    /* y(x), where the adapter sent the query: the training copy's weights are the published
     * ones (gradients wait in its accumulators until they are applied). */
    sona_status st = sona_trajectory_query(t, x, H);
    if (st == SONA_OK)
        st = sona_lora_forward(tn->lora, 0, x, y);
    if (st == SONA_OK) {
        sona_signal_options opt;
        sona_signal_options_default(&opt);
        opt.output = y;
        opt.baseline = &tn->baselines[eng_region(e, x)];
        st = sona_signal_from_trajectory_opts(e->signals, t, &opt, x, delta, &w);
    }
    if (st != SONA_OK) {
        pthread_mutex_unlock(&tn->mu);
        atomic_fetch_add(&e->n.rejected, 1);
        /* No step or no direction: nothing to learn, not an error of the caller. */
        return st == SONA_E_NONFINITE ? eng_fail(e, st, "sona_request_end: non-finite signal; not learned") : SONA_OK;
    }
    if (atomic_load(&tn->live)) {
        const int32_t adapter = 0;
        eng_ewc_note_quality(tn->ewc, sona_trajectory_quality(t));
        st = sona_lora_normalize_signals(tn->lora, 1, &adapter, x, delta, &w);
        if (st == SONA_OK)
            st = sona_lora_accumulate(tn->lora, 0, x, delta, w);
        if (st == SONA_OK) {
            atomic_fetch_add(&e->n.accepted, 1);
            if (++tn->since_apply >= e->cfg.micro_apply_every) {
                st = eng_train_and_publish(e, tn->lora, tn->ewc, &tn->slot);
                tn->since_apply = 0;
            }
        } else {
            atomic_fetch_add(&e->n.rejected, 1);
        }
    } else {
        atomic_fetch_add(&e->n.rejected, 1); /* the tenant was removed during the request */
    }
    pthread_mutex_unlock(&tn->mu);
    return st;
}

sona_status sona_request_end(sona_request *r, float quality)
{
    if (!r)
        return sona_fail(NULL, SONA_E_NULL, "sona_request_end: request is NULL");
    sona_engine *e = r->e;
    sona_trajectory *t = r->t;
    const int32_t tenant = r->tenant;
    const int poisoned = r->poisoned;
    request_release(r);
    if (!atomic_load(&e->enabled)) {
        eng_traj_recycle(e, t);
        return SONA_OK;
    }
    if (poisoned || sona_trajectory_end(t, quality) != SONA_OK) {
        atomic_fetch_add(&e->n.rejected, 1);
        eng_traj_recycle(e, t);
        return eng_fail(e, SONA_E_NONFINITE, "sona_request_end: NaN or Inf in the trajectory; not learned");
    }
    sona_status st = learn_instant(e, tenant, t);
    /* Counted as recorded before loop B can take it (see engine_internal.h's taken). */
    if (sona_trajectory_buffer_record_counted(e->buffer, t, &e->n.recorded) == SONA_OK) {
        if (sona_trajectory_buffer_len(e->buffer) >= e->cfg.loop_b_threshold)
            eng_kick(e);
    } else {
        atomic_fetch_add(&e->n.dropped, 1);
        eng_traj_recycle(e, t);
    }
    return st;
}

sona_status eng_train_and_publish(sona_engine *e, sona_lora *lora, eng_ewc *ewc, sona_snapshot_slot *slot)
{
    int boundary = 0;
    sona_status st = ewc ? eng_ewc_step(ewc, lora, &e->cfg, &boundary) : sona_lora_apply_updates(lora);
    if (st == SONA_OK)
        st = sona_lora_bound_gain(lora, e->cfg.max_output_change, NULL);
    if (st == SONA_OK)
        st = sona_snapshot_publish(slot, lora);
    if (st != SONA_OK)
        return eng_fail(e, st, "adapter update failed: %s", sona_lora_last_error(lora));
    if (boundary) {
        atomic_fetch_add(&e->n.boundaries, 1);
        eng_note_tasks(e, slot, ewc);
    }
    atomic_fetch_add(slot == &e->base_slot ? &e->n.base_updates : &e->n.micro_updates, 1);
    return SONA_OK;
}

void eng_note_tasks(sona_engine *e, const sona_snapshot_slot *slot, const eng_ewc *ewc)
{
    const uint32_t tasks = eng_ewc_tasks(ewc);
    if (slot == &e->base_slot) {
        atomic_store(&e->n.tasks, tasks);
        return;
    }
    eng_tenant *t = (eng_tenant *)(void *)((char *)(uintptr_t)slot - offsetof(eng_tenant, slot));
    atomic_store(&t->tasks, tasks);
}

sona_status sona_flush(sona_engine *e)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "sona_flush: engine is NULL");
    sona_status first = SONA_OK;
    for (uint32_t i = 0; i < e->cfg.max_tenants; i++) {
        eng_tenant *t = &e->tenants[i];
        if (!atomic_load(&t->live))
            continue;
        pthread_mutex_lock(&t->mu);
        if (atomic_load(&t->live) && sona_lora_pending(t->lora) > 0) {
            sona_status st = eng_train_and_publish(e, t->lora, t->ewc, &t->slot);
            t->since_apply = 0;
            if (first == SONA_OK)
                first = st;
        }
        pthread_mutex_unlock(&t->mu);
    }
    return first;
}

/* ---- stats --------------------------------------------------------------------------------- */

sona_status sona_get_stats(sona_engine *e, sona_stats *s)
{
    if (!e || !s)
        return eng_fail(e, SONA_E_NULL, "sona_get_stats: NULL argument");
    memset(s, 0, sizeof *s);
    /* processed, then taken, then recorded: each read no earlier than the one before, and
     * processed <= taken <= recorded holds at every instant (engine_internal.h), so the values
     * read keep that order and recorded == processed + in cycle + queued in every result. */
    const uint64_t processed = atomic_load(&e->n.processed);
    const uint64_t taken = atomic_load(&e->n.taken);
    const uint64_t recorded = atomic_load(&e->n.recorded);
    s->trajectories_recorded = recorded;
    s->trajectories_processed = processed;
    s->trajectories_in_cycle = taken - processed;
    s->trajectories_queued = recorded - taken;
    s->trajectories_dropped = atomic_load(&e->n.dropped);
    s->signals_accepted = atomic_load(&e->n.accepted);
    s->signals_rejected = atomic_load(&e->n.rejected);
    s->micro_updates = atomic_load(&e->n.micro_updates);
    s->base_updates = atomic_load(&e->n.base_updates);
    s->task_boundaries = atomic_load(&e->n.boundaries);
    s->loop_b_cycles = atomic_load(&e->n.b_cycles);
    s->loop_c_cycles = atomic_load(&e->n.c_cycles);
    s->dreams = atomic_load(&e->n.dreams);
    s->dreams_replayed = atomic_load(&e->n.replayed);
    s->patterns_merged = atomic_load(&e->n.merged);
    s->last_loop_b_us = atomic_load(&e->n.last_b_us);
    s->last_loop_c_us = atomic_load(&e->n.last_c_us);
    s->device_batches = atomic_load(&e->device_batches);
    s->device_fallbacks = atomic_load(&e->device_fallbacks);
    s->quality_baseline = eng_baseline(e);
    s->last_phi = bits_float(atomic_load(&e->last_phi_bits));
    s->tasks = atomic_load(&e->n.tasks);
    for (uint32_t i = 0; i < e->cfg.max_tenants; i++)
        if (atomic_load(&e->tenants[i].live)) {
            s->tenants++;
            s->tasks += atomic_load(&e->tenants[i].tasks);
        }
    s->patterns = atomic_load(&e->n.patterns);
    return SONA_OK;
}
