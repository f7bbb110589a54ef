/* SPDX-License-Identifier: MIT */
/* The request path and loop A: a request records its steps into a trajectory; its end learns
 * from it at once in the tenant's Micro-LoRA (loop A) and queues it for loop B. */
#include "engine/base.h"

#include "core/adapt/critic.h"
#include "core/adapt/lora_internal.h"
#include "engine/config.h"
#include "core/memory/trajectory_internal.h"
#include "dispatch/vecmath.h"

#include <math.h>
#include <stdlib.h>

enum { POISON_NONE, POISON_NONFINITE, POISON_RANGE, POISON_OTHER };

struct sona_request {
    sona_engine *e;
    sona_trajectory *t;
    int32_t tenant;
    int poisoned; /* a step was refused: the request will not be learned (POISON_*) */
};

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
        return eng_fail(e, SONA_E_NULL, "%s: NULL argument", __func__);
    *out = NULL;
    if (!eng_live_tenant(e, tenant))
        return eng_fail(e, SONA_E_NOT_FOUND, "%s: no tenant %d", __func__, tenant);
    if (!sona_all_within_fast(query, e->cfg.hidden, SONA_MAX_ACTIVATION) && sona_all_finite(query, e->cfg.hidden)) {
        atomic_fetch_add(&e->out_of_range, 1);
        return eng_fail(e, SONA_E_INVALID, "%s: a query value is beyond +-%g (SONA_MAX_ACTIVATION)", __func__,
                        (double)SONA_MAX_ACTIVATION);
    }
    /* The spare object of an ended request when there is one: one thread serving requests
     * one after the other never allocates here. */
    sona_request *r = atomic_exchange(&e->spare_request, NULL);
    if (!r && !(r = malloc(sizeof *r)))
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
    *r = (sona_request){.e = e, .tenant = tenant};
    sona_status st = eng_traj_take(e, query, &r->t);
    if (st != SONA_OK) {
        request_release(r);
        return eng_fail(e, st, "%s: %s", __func__, sona_last_error());
    }
    *out = r;
    return SONA_OK;
}

sona_status sona_request_step(sona_request *r, uint32_t layer, const float *activations,
                              const float *attention, uint32_t n_attention, float reward)
{
    if (!r || !activations || (n_attention && !attention))
        return eng_fail(r ? r->e : NULL, SONA_E_NULL, "%s: NULL argument", __func__);
    sona_engine *e = r->e;
    if (layer > INT32_MAX)
        return eng_fail(e, SONA_E_INVALID, "%s: layer %u is out of range", __func__, layer);
    if (n_attention && !sona_all_finite(attention, n_attention)) {
        r->poisoned = POISON_NONFINITE;
        return eng_fail(e, SONA_E_NONFINITE, "%s: NaN or Inf in attention weights", __func__);
    }
    /* Every step, kept or past max_steps, is checked: finite, then within its range (one vector
     * pass for ordinary values; the finite test only to name what failed). */
    const int within = fabsf(reward) <= SONA_MAX_QUALITY &&
                       sona_all_within_fast(activations, e->cfg.hidden, SONA_MAX_ACTIVATION);
    if (!within && (!isfinite(reward) || !sona_all_finite(activations, e->cfg.hidden))) {
        r->poisoned = POISON_NONFINITE;
        return eng_fail(e, SONA_E_NONFINITE, "%s: NaN or Inf in the activations or reward", __func__);
    }
    if (!within) {
        r->poisoned = POISON_RANGE;
        atomic_fetch_add(&e->out_of_range, 1);
        return eng_fail(e, SONA_E_INVALID,
                        "%s: reward %g or an activation beyond its range (+-%g, +-%g); the request "
                        "will not be learned", __func__,
                        (double)reward, (double)SONA_MAX_QUALITY, (double)SONA_MAX_ACTIVATION);
    }
    if (sona_trajectory_step_count(r->t) >= e->cfg.max_steps)
        return SONA_OK; /* only the first max_steps are kept */
    /* Attention weights are checked, not kept: loop B learns from activations and rewards. */
    sona_status st = sona_trajectory_add_step(r->t, activations, e->cfg.hidden, NULL, 0, reward, (int32_t)layer);
    if (st != SONA_OK) {
        r->poisoned = st == SONA_E_NONFINITE ? POISON_NONFINITE : POISON_OTHER;
        return eng_fail(e, st, "%s: %s", __func__, sona_trajectory_last_error(r->t));
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

/* The critic's prediction for query x of region `region`, bounded so that quality q less it
 * stays well within SONA_MAX_QUALITY, as every quality a baseline folds in (and a state file
 * holds) must, roundings included. */
static float critic_offset(sona_critic *c, uint32_t region, const float *x, float *centered, float q)
{
    const double p = sona_critic_predict(c, region, x, centered);
    const double lo = (double)q - 0.5 * SONA_MAX_QUALITY, hi = (double)q + 0.5 * SONA_MAX_QUALITY;
    return (float)(p < lo ? lo : p > hi ? hi : p);
}

/* Loop A's learning step for one ended trajectory of tenant `tenant`. The signal is built in
 * the tenant's rows, under its mutex like the training step that follows. */
static sona_status learn_instant(sona_engine *e, int32_t tenant, const sona_trajectory *t)
{
    const uint32_t H = e->cfg.hidden;
    eng_tenant *tn = &e->tenants[tenant];
    eng_quality_observe(e, sona_trajectory_quality(t));
    pthread_mutex_lock(&tn->mu);
    if (!tn->signal && !(tn->signal = malloc(4 * (size_t)H * sizeof *tn->signal))) {
        pthread_mutex_unlock(&tn->mu);
        return eng_fail(e, SONA_E_NOMEM, "sona_request_end: out of memory");
    }
    float *x = tn->signal, *delta = x + H, *y = delta + H, *centered = y + H, w;
    uint32_t cell = 0;
    /* Out of memory for the critic only leaves quality-only signals without it. */
    if (!tn->critic && !sona_signal_rewards_vary(t, SONA_LAYER_NONE))
        (void)eng_critic_create(&e->cfg, &tn->critic);
    /* y(x), where the adapter sent the query: the training copy's weights are the published
     * ones (gradients wait in its accumulators until they are applied). */
    sona_status st = sona_trajectory_query(t, x, H);
    if (st == SONA_OK)
        st = sona_lora_forward(tn->lora, 0, x, y);
    if (st == SONA_OK) {
        cell = eng_query_cell(e, x);
        sona_signal_options opt;
        sona_signal_options_default(&opt);
        opt.output = y;
        const uint32_t region = ENG_CELL_REGION(cell);
        opt.baseline = &tn->baselines[region];
        const sona_signal_baseline before = *opt.baseline;
        const float q = sona_trajectory_quality(t);
        if (tn->critic)
            opt.quality_offset = critic_offset(tn->critic, region, x, centered, q);
        st = sona_signal_from_trajectory_opts(e->signals, t, &opt, x, delta, &w);
        if (st == SONA_OK && tn->critic)
            sona_critic_learn(tn->critic, region, x, centered, before.count > 0,
                              (double)q - opt.quality_offset - before.mean);
    }
    if (st != SONA_OK) {
        pthread_mutex_unlock(&tn->mu);
        atomic_fetch_add(&e->n.rejected, 1);
        /* No step or no direction: nothing to learn, not an error of the caller. */
        return st == SONA_E_NONFINITE ? eng_fail(e, st, "sona_request_end: non-finite signal; not learned") : SONA_OK;
    }
    if (atomic_load(&tn->live)) {
        const int32_t adapter = 0;
        eng_ewc_note_quality(tn->ewc, sona_trajectory_quality(t), cell);
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
        return sona_fail(NULL, SONA_E_NULL, "%s: request is NULL", __func__);
    sona_engine *e = r->e;
    sona_trajectory *t = r->t;
    const int32_t tenant = r->tenant;
    const int poisoned = r->poisoned;
    request_release(r);
    if (!atomic_load(&e->enabled)) {
        eng_traj_recycle(e, t);
        return SONA_OK;
    }
    /* A quality out of range is refused before it reaches any baseline (the tenant's, and the
     * engine-wide one every tenant's dreams are weighed against). */
    const int far = isfinite(quality) && !(fabsf(quality) <= SONA_MAX_QUALITY);
    if (far)
        atomic_fetch_add(&e->out_of_range, 1);
    if (poisoned || far || sona_trajectory_end(t, quality) != SONA_OK) {
        atomic_fetch_add(&e->n.rejected, 1);
        eng_traj_recycle(e, t);
        if (far || poisoned == POISON_RANGE)
            return eng_fail(e, SONA_E_INVALID, "%s: a value beyond its range (quality %g; "
                                               "SONA_MAX_QUALITY, SONA_MAX_ACTIVATION); not learned", __func__,
                            (double)quality);
        return eng_fail(e, SONA_E_NONFINITE, "%s: NaN or Inf in the trajectory; not learned", __func__);
    }
    sona_status st = learn_instant(e, tenant, t);
    /* Counted as recorded before loop B can take it (see base.h's taken). */
    if (sona_trajectory_buffer_record_counted(e->buffer, t, &e->n.recorded) == SONA_OK) {
        if (sona_trajectory_buffer_len(e->buffer) >= e->cfg.loop_b_threshold)
            eng_kick(e);
    } else {
        atomic_fetch_add(&e->n.dropped, 1);
        eng_traj_recycle(e, t);
    }
    return st;
}

sona_status sona_flush(sona_engine *e)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "%s: engine is NULL", __func__);
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
