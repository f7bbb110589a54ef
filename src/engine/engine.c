/* SPDX-License-Identifier: MIT */
/* The SONA engine's handle: create and destroy, tenants, applying the published adapters (on
 * the CPU, or batched on an accelerator), statistics. The loops live in their own files. */
#include "engine/base.h"
#include "engine/device.h"
#include "engine/thread.h"

#include "core/adapt/critic.h"
#include "core/adapt/lora_internal.h"
#include "core/memory/storage.h"
#include "dispatch/dispatch.h"
#include "dispatch/vecmath.h"
#include "sona/ewc.h"
#include "sona/lora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float bits_float(unsigned b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
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

/* A fresh identity adapter for slot i, published. Caller holds the tenant's mutex. */
static sona_status tenant_reset(sona_engine *e, eng_tenant *t)
{
    sona_lora *l = NULL;
    sona_status st = eng_lora_create(&e->cfg, 0, &l);
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
    t->generation++;
    atomic_store(&t->tasks, 0);
    memset(t->baselines, 0, sizeof t->baselines);
    sona_critic_destroy(t->critic);
    t->critic = NULL;
    return SONA_OK;
}

sona_status sona_engine_create(const sona_engine_config *cfg, sona_engine **out)
{
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "%s: out is NULL", __func__);
    *out = NULL;
    if (!cfg)
        return sona_fail(NULL, SONA_E_NULL, "%s: cfg is NULL", __func__);
    sona_status st = check_config(cfg);
    if (st != SONA_OK)
        return st;
    sona_engine *e = calloc(1, sizeof *e);
    if (!e)
        return sona_fail(NULL, SONA_E_NOMEM, "%s: out of memory", __func__);
    e->cfg = *cfg;
    pthread_mutex_init(&e->err_mu, NULL);
    pthread_mutex_init(&e->tenants_mu, NULL);
    pthread_mutex_init(&e->cycle_mu, NULL);
    pthread_mutex_init(&e->attach_mu, NULL);
    pthread_mutex_init(&e->save_mu, NULL);
    pthread_cond_init(&e->save_cv, NULL);
    pthread_mutex_init(&e->wake_mu, NULL);
    pthread_cond_init(&e->wake_cv, NULL);
    pthread_rwlock_init(&e->bank_lock, NULL);
    pthread_mutex_init(&e->quality_mu, NULL);
    atomic_store(&e->enabled, 1);
    e->tenants = calloc(cfg->max_tenants, sizeof *e->tenants);
    e->region_planes = eng_region_planes_create(cfg);
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
    /* The pool keeps what a cycle gives back (up to eng_cycle_cap trajectories at once) for the
     * requests that refill the queue: with room for a threshold only, 3 of every 4 went back to
     * malloc and their pages were faulted in again by the next requests (about 5 pages a request
     * at hidden 4096, as much as the rest of its recording). */
    const uint32_t cycle = eng_cycle_cap(cfg);
    pc.capacity = cycle < cfg->buffer_capacity ? cycle : cfg->buffer_capacity;
    if (pc.capacity < 64)
        pc.capacity = 64;
    if (!e->tenants || !e->region_planes || !e->base_baselines || sona_id_source_create(1, &e->ids) != SONA_OK ||
        sona_trajectory_buffer_create(&tb, &e->buffer) != SONA_OK ||
        sona_trajectory_buffer_create(&pc, &e->pool) != SONA_OK ||
        sona_signal_builder_create(&sc, &e->signals) != SONA_OK) {
        free(e->tenants);
        e->tenants = NULL;
        sona_engine_destroy(e);
        return sona_fail(NULL, SONA_E_NOMEM, "%s: out of memory", __func__);
    }
    for (uint32_t i = 0; i < cfg->max_tenants; i++)
        pthread_mutex_init(&e->tenants[i].mu, NULL);
    if ((st = eng_lora_create(cfg, 1, &e->base)) != SONA_OK ||
        (st = sona_snapshot_publish(&e->base_slot, e->base)) != SONA_OK ||
        (cfg->ewc_enabled && !(e->base_ewc = eng_ewc_create(e->base, cfg, 1))) ||
        (st = tenant_reset(e, &e->tenants[0])) != SONA_OK ||
        (st = eng_bank_create(cfg, &e->bank)) != SONA_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", sona_last_error());
        sona_engine_destroy(e);
        return sona_fail(NULL, st == SONA_OK ? SONA_E_NOMEM : st, "%s: %s", __func__, why);
    }
    atomic_store(&e->tenants[0].live, 1);
    e->device = eng_device_create(cfg);
    if ((st = eng_threads_start(e)) != SONA_OK) {
        sona_engine_destroy(e);
        return sona_fail(NULL, st, "%s: could not start the loop thread", __func__);
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
    sona_dream_visits_free(e->dream);
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
            sona_critic_destroy(t->critic);
            pthread_mutex_destroy(&t->mu);
        }
        free(e->tenants);
    }
    sona_snapshot_slot_free(&e->base_slot);
    sona_lora_destroy(e->base);
    eng_ewc_destroy(e->base_ewc);
    eng_sync_free(e->sync);
    sona_trajectory_buffer_destroy(e->buffer);
    sona_trajectory_buffer_destroy(e->pool);
    sona_signal_builder_destroy(e->signals);
    sona_id_source_destroy(e->ids);
    free(atomic_load(&e->spare_request));
    pthread_mutex_destroy(&e->err_mu);
    pthread_mutex_destroy(&e->tenants_mu);
    pthread_mutex_destroy(&e->cycle_mu);
    pthread_mutex_destroy(&e->attach_mu);
    pthread_mutex_destroy(&e->save_mu);
    pthread_cond_destroy(&e->save_cv);
    eng_cut_free(e->cut);
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
        return eng_fail(e, SONA_E_NULL, "%s: NULL argument", __func__);
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
        return eng_fail(e, st, "%s: all %u tenant slots are in use", __func__, e->cfg.max_tenants);
    if (st != SONA_OK)
        return eng_fail(e, st, "%s: %s", __func__, sona_last_error());
    return SONA_OK;
}

sona_status sona_tenant_remove(sona_engine *e, int32_t tenant)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "%s: engine is NULL", __func__);
    if (tenant == 0)
        return eng_fail(e, SONA_E_INVALID, "%s: tenant 0 cannot be removed", __func__);
    pthread_mutex_lock(&e->tenants_mu);
    eng_tenant *t = eng_live_tenant(e, tenant);
    if (t) {
        pthread_mutex_lock(&t->mu);
        atomic_store(&t->live, 0);
        sona_snapshot_retract(&t->slot);
        pthread_mutex_unlock(&t->mu);
    }
    pthread_mutex_unlock(&e->tenants_mu);
    return t ? SONA_OK : eng_fail(e, SONA_E_NOT_FOUND, "%s: no tenant %d", __func__, tenant);
}

/* ---- apply --------------------------------------------------------------------------------- */

/* rows of x through one published adapter (index `adapter` of the snapshot), on the CPU;
 * through sona_op_call so that the dispatch layer counts the calls. */
static sona_status apply_rows(const sona_snapshot *s, int32_t adapter, uint32_t n, const float *x, float *y)
{
    const sona_backend *cpu = sona_cpu_backend();
    if (n == 1) {
        sona_lora_apply_args a = {.w = s->w, .n = 1, .ids = &adapter, .x = x, .y = y};
        return sona_op_call(cpu, SONA_OP_LORA_APPLY, &a);
    }
    int32_t ids[64];
    for (uint32_t i = 0; i < 64; i++)
        ids[i] = adapter;
    const size_t H = s->w.hidden;
    for (uint32_t done = 0; done < n; done += 64) {
        uint32_t m = n - done < 64 ? n - done : 64;
        sona_lora_apply_args a = {.w = s->w, .n = m, .ids = ids, .x = x + done * H, .y = y + done * H};
        sona_status st = sona_op_call(cpu, SONA_OP_LORA_APPLY, &a);
        if (st != SONA_OK)
            return st;
    }
    return SONA_OK;
}

/* Every id is -1 or a live tenant (checked before any row is written). */
static sona_status check_tenants(sona_engine *e, uint32_t n, const int32_t *ids)
{
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] != -1 && !eng_live_tenant(e, ids[i]))
            return eng_fail(e, SONA_E_NOT_FOUND, "sona_apply_batch: row %u uses tenant %d, which does not exist", i, ids[i]);
    return SONA_OK;
}

/* Whether a batch of n rows through `adapters` adapters of `rank` goes to the accelerator:
 * device_min_rows or more, and the cost model (or SONA_BACKEND) sends it there. Counts it when
 * it does. */
static int on_device(sona_engine *e, uint32_t n, uint32_t rank, uint32_t adapters)
{
    if (!e->device || n == 0 || n < e->cfg.device_min_rows || !eng_device_ready(e->device) ||
        !eng_device_pays(e->device, n, e->cfg.hidden, rank, adapters))
        return 0;
    atomic_fetch_add(&e->device_batches, 1);
    return 1;
}

sona_status sona_apply_batch(sona_engine *e, uint32_t n, const int32_t *ids, const float *x, float *y)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "%s: engine is NULL", __func__);
    if (!ids || !x || !y)
        return eng_fail(e, SONA_E_NULL, "%s: ids, x and y are required", __func__);
    sona_status st = check_tenants(e, n, ids);
    if (st != SONA_OK)
        return st;
    /* Every row may have its own tenant: up to n adapters read. */
    if (on_device(e, n, e->cfg.micro_rank, e->cfg.max_tenants)) {
        st = eng_device_apply(e, n, ids, x, y);
        if (st == SONA_OK || st == SONA_E_NOT_FOUND)
            return st == SONA_OK ? st : eng_fail(e, st, "%s: a tenant was removed during the call", __func__);
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
                return eng_fail(e, SONA_E_NOT_FOUND, "%s: tenant %d was removed during the call", __func__, ids[i]);
            st = apply_rows(s, 0, j - i, x + i * H, y + i * H);
            sona_snapshot_release(s);
            if (st != SONA_OK)
                return eng_fail(e, st, "%s: lora_apply failed", __func__);
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
        return sona_fail(NULL, SONA_E_NULL, "%s: engine is NULL", __func__);
    if (!x || !y)
        return eng_fail(e, SONA_E_NULL, "%s: x and y are required", __func__);
    if (layer >= e->cfg.base_layers)
        return eng_fail(e, SONA_E_INVALID, "%s: layer %u is outside 0..%u", __func__, layer,
                        e->cfg.base_layers - 1);
    if (on_device(e, n, e->cfg.base_rank, 1)) {
        if (eng_device_apply_layer(e, layer, n, x, y) == SONA_OK)
            return SONA_OK;
        atomic_fetch_add(&e->device_fallbacks, 1);
    }
    sona_snapshot *s = sona_snapshot_acquire(&e->base_slot);
    sona_status st = s ? apply_rows(s, (int32_t)layer, n, x, y) : SONA_E_STATE;
    sona_snapshot_release(s);
    return st == SONA_OK ? SONA_OK : eng_fail(e, st, "%s: lora_apply failed", __func__);
}

sona_status sona_apply_layer(sona_engine *e, uint32_t layer, const float *x, float *y)
{
    return sona_apply_layer_batch(e, layer, 1, x, y);
}
/* ---- stats --------------------------------------------------------------------------------- */

sona_status sona_get_stats(sona_engine *e, sona_stats *s)
{
    if (!e || !s)
        return eng_fail(e, SONA_E_NULL, "%s: NULL argument", __func__);
    eng_loop_a_drain(e); /* the counters count every request ended before this call */
    memset(s, 0, sizeof *s);
    /* processed, then taken, then recorded: each read no earlier than the one before, and
     * processed <= taken <= recorded holds at every instant (base.h), so the values
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
    s->inputs_out_of_range = atomic_load(&e->out_of_range);
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

