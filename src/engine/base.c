/* SPDX-License-Identifier: MIT */
/* The helpers every part of the engine shares (base.h): errors, the quality baselines and query
 * regions, the trajectory pool, decoded steps, and training plus publishing an adapter set. */
#define _GNU_SOURCE /* SCHED_BATCH */
#include "engine/base.h"

#include "common/rng.h"
#include "core/adapt/lora_internal.h"
#include "core/memory/trajectory_internal.h"
#include "dispatch/vecmath.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <sched.h>
#include <sys/resource.h>
#endif

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

uint32_t eng_query_cell(const sona_engine *e, const float *x)
{
    const uint32_t H = e->cfg.hidden;
    const sona_dot_fn dot = sona_dot_kernel();
    uint32_t cell = 0;
    for (uint32_t b = 0; b < ENG_CELL_BITS; b++)
        cell |= (uint32_t)(dot(e->region_planes + (size_t)b * H, x, H) > 0.0f) << b;
    return cell;
}

/* The cell hash's planes: seeded, so a saved engine's cells are a loaded one's. Plane b is
 * drawn from its own stream: the region planes (the first ENG_REGION_BITS) are what they were
 * before there were cells. */
float *eng_region_planes_create(const sona_engine_config *c)
{
    float *p = malloc((size_t)ENG_CELL_BITS * c->hidden * sizeof *p);
    if (!p)
        return NULL;
    for (uint32_t b = 0; b < ENG_CELL_BITS; b++) {
        sona_rng rng;
        sona_rng_seed(&rng, c->seed ^ 0x4e610ull, b);
        for (uint32_t h = 0; h < c->hidden; h++)
            p[(size_t)b * c->hidden + h] = sona_rng_normal(&rng);
    }
    return p;
}

uint32_t eng_cycle_cap(const sona_engine_config *c)
{
    const uint64_t cap = 4ull * c->loop_b_threshold;
    return cap < c->loop_b_min_batch ? c->loop_b_min_batch : cap > UINT32_MAX ? UINT32_MAX : (uint32_t)cap;
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

eng_tenant *eng_live_tenant(sona_engine *e, int32_t id)
{
    if (id < 0 || (uint32_t)id >= e->cfg.max_tenants || !atomic_load(&e->tenants[id].live))
        return NULL;
    return &e->tenants[id];
}

/* The pending gradients within ENG_MAX_GRADIENT, where they are in host memory (EWC++ checks
 * them on a device too, on its host copy). */
static sona_status gradient_check(sona_lora *lora)
{
    const sona_lora_config *c = sona_lora_get_config(lora);
    const float *theta, *g;
    if (!sona_lora_pending(lora) || !sona_lora_host_params(lora, &theta, &g) ||
        sona_all_within_fast(g, 2 * (size_t)c->count * c->rank * c->hidden, ENG_MAX_GRADIENT))
        return SONA_OK;
    return sona_fail(NULL, SONA_E_INVALID, "a gradient value beyond %g", (double)ENG_MAX_GRADIENT);
}

sona_status eng_train_and_publish(sona_engine *e, sona_lora *lora, eng_ewc *ewc, sona_snapshot_slot *slot)
{
    int boundary = 0;
    /* With EWC++ its step checks the gradients (loop A's cost: one pass over them, not two). */
    sona_status st = ewc ? SONA_OK : gradient_check(lora);
    if (st == SONA_OK)
        st = ewc ? eng_ewc_step(ewc, lora, &e->cfg, &boundary) : sona_lora_apply_updates(lora);
    if (st != SONA_OK) {
        /* A refused step keeps nothing: gradients left pending would be refused at every later
         * apply (and saved into a file that does not load), so the set could never learn again. */
        (void)sona_lora_discard_pending(lora);
        return eng_fail(e, st, "adapter update refused, its gradients dropped: %s",
                        st == SONA_E_INVALID ? sona_last_error() : sona_lora_last_error(lora));
    }
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

void eng_thread_lower_priority(int nice)
{
#ifdef __linux__
    const struct sched_param p = {.sched_priority = 0};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &p);
    if (nice > 0)
        setpriority(PRIO_PROCESS, 0, nice); /* who 0: the calling thread (nice is per thread) */
#else
    (void)nice;
#endif
}

void eng_kick(sona_engine *e)
{
    pthread_mutex_lock(&e->wake_mu);
    e->kicked = 1;
    pthread_cond_signal(&e->wake_cv);
    pthread_mutex_unlock(&e->wake_mu);
}
