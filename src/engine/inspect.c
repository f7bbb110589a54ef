/* SPDX-License-Identifier: MIT */
#include "engine/inspect.h"

#include "engine/base.h"

#include "core/adapt/lora_internal.h"

#include <stdint.h>
#include <string.h>

sona_bank *eng_inspect_bank_begin(sona_engine *e)
{
    pthread_mutex_lock(&e->cycle_mu);
    eng_cut_invalidate(e); /* the caller may restore patterns */
    return e->bank;
}

void eng_inspect_bank_end(sona_engine *e) { pthread_mutex_unlock(&e->cycle_mu); }

void eng_inspect_replace_bank(sona_engine *e, sona_bank *bank)
{
    pthread_mutex_lock(&e->cycle_mu);
    eng_cut_invalidate(e);
    pthread_rwlock_wrlock(&e->bank_lock);
    sona_bank *old = e->bank;
    e->bank = bank;
    pthread_rwlock_unlock(&e->bank_lock);
    atomic_store(&e->n.patterns, sona_bank_pattern_count(bank));
    pthread_mutex_unlock(&e->cycle_mu);
    sona_bank_destroy(old);
}

uint32_t eng_inspect_ewc_tasks(sona_engine *e, int32_t tenant)
{
    uint32_t tasks = 0;
    if (tenant < 0) {
        pthread_mutex_lock(&e->cycle_mu);
        tasks = eng_ewc_tasks(e->base_ewc);
        pthread_mutex_unlock(&e->cycle_mu);
        return tasks;
    }
    if ((uint32_t)tenant >= e->cfg.max_tenants)
        return 0;
    eng_tenant *t = &e->tenants[tenant];
    pthread_mutex_lock(&t->mu);
    if (atomic_load(&t->live))
        tasks = eng_ewc_tasks(t->ewc);
    pthread_mutex_unlock(&t->mu);
    return tasks;
}

sona_status eng_inspect_base_detector(sona_engine *e, sona_ewc_detector *d)
{
    pthread_mutex_lock(&e->cycle_mu);
    const sona_status st = e->base_ewc ? sona_ewc_get_detector(eng_ewc_state(e->base_ewc), d) : SONA_E_STATE;
    pthread_mutex_unlock(&e->cycle_mu);
    return st;
}

sona_status eng_inspect_base_weights(sona_engine *e, float *A, float *Bt)
{
    pthread_mutex_lock(&e->cycle_mu);
    const sona_status st = sona_lora_export(e->base, A, Bt, NULL);
    pthread_mutex_unlock(&e->cycle_mu);
    return st;
}

const sona_backend *eng_inspect_base_backend(sona_engine *e)
{
    pthread_mutex_lock(&e->cycle_mu);
    const sona_backend *be = sona_lora_backend(e->base);
    pthread_mutex_unlock(&e->cycle_mu);
    return be;
}

/* An EWC++ state's n parameters read out (each output optional): the running Fisher, the tasks'
 * Fisher sum (zeros without tasks), the first task's anchor, and the task count. */
static sona_status ewc_read(const sona_ewc *cw, size_t n, float *running, float *fisher_sum, float *theta0,
                            uint32_t *tasks)
{
    sona_ewc *w = (sona_ewc *)(uintptr_t)cw; /* the penalty's cache only */
    const float *fsum = NULL, *ftheta = NULL;
    float lambda;
    sona_status st = sona_ewc_penalty(w, &fsum, &ftheta, &lambda);
    if (running)
        memcpy(running, sona_ewc_fisher(w), n * sizeof *running);
    if (fisher_sum) {
        if (fsum)
            memcpy(fisher_sum, fsum, n * sizeof *fisher_sum);
        else
            memset(fisher_sum, 0, n * sizeof *fisher_sum);
    }
    if (tasks)
        *tasks = sona_ewc_task_count(w);
    if (st == SONA_OK && theta0)
        st = sona_ewc_get_task(w, 0, theta0, NULL);
    return st;
}

sona_status eng_inspect_base_ewc(sona_engine *e, float *running, float *fisher_sum,
                                 float *theta0, uint32_t *tasks)
{
    if (!e->base_ewc)
        return SONA_E_STATE;
    const size_t n = 2 * (size_t)e->cfg.base_layers * e->cfg.base_rank * e->cfg.hidden;
    pthread_mutex_lock(&e->cycle_mu);
    const sona_status st = ewc_read(eng_ewc_state(e->base_ewc), n, running, fisher_sum, theta0, tasks);
    pthread_mutex_unlock(&e->cycle_mu);
    return st;
}

sona_status eng_inspect_base_end_task(sona_engine *e)
{
    if (!e->base_ewc)
        return SONA_E_STATE;
    pthread_mutex_lock(&e->cycle_mu);
    const sona_status st = eng_ewc_consolidate(e->base_ewc, e->base);
    atomic_store(&e->n.tasks, eng_ewc_tasks(e->base_ewc));
    pthread_mutex_unlock(&e->cycle_mu);
    return st;
}

sona_status eng_inspect_set_base_weights(sona_engine *e, const float *A, const float *Bt)
{
    pthread_mutex_lock(&e->cycle_mu);
    sona_status st = sona_lora_import(e->base, A, Bt);
    if (st == SONA_OK)
        st = sona_snapshot_publish(&e->base_slot, e->base);
    pthread_mutex_unlock(&e->cycle_mu);
    return st;
}

sona_status eng_inspect_tenant_weights(sona_engine *e, int32_t tenant, float *A, float *Bt)
{
    if (tenant < 0 || (uint32_t)tenant >= e->cfg.max_tenants)
        return SONA_E_NOT_FOUND;
    eng_tenant *t = &e->tenants[tenant];
    pthread_mutex_lock(&t->mu);
    const sona_status st = atomic_load(&t->live) ? sona_lora_export(t->lora, A, Bt, NULL)
                                                 : SONA_E_NOT_FOUND;
    pthread_mutex_unlock(&t->mu);
    return st;
}

sona_status eng_inspect_tenant_ewc(sona_engine *e, int32_t tenant, float *running,
                                   float *fisher_sum, float *theta0, uint32_t *tasks)
{
    if (tenant < 0 || (uint32_t)tenant >= e->cfg.max_tenants)
        return SONA_E_NOT_FOUND;
    const size_t n = 2 * (size_t)e->cfg.micro_rank * e->cfg.hidden;
    eng_tenant *t = &e->tenants[tenant];
    pthread_mutex_lock(&t->mu);
    sona_status st = !atomic_load(&t->live) ? SONA_E_NOT_FOUND : !t->ewc ? SONA_E_STATE : SONA_OK;
    if (st == SONA_OK)
        st = ewc_read(eng_ewc_state(t->ewc), n, running, fisher_sum, theta0, tasks);
    pthread_mutex_unlock(&t->mu);
    return st;
}

sona_status eng_inspect_tenant_end_task(sona_engine *e, int32_t tenant)
{
    if (tenant < 0 || (uint32_t)tenant >= e->cfg.max_tenants)
        return SONA_E_NOT_FOUND;
    eng_tenant *t = &e->tenants[tenant];
    pthread_mutex_lock(&t->mu);
    sona_status st = !atomic_load(&t->live) ? SONA_E_NOT_FOUND : !t->ewc ? SONA_E_STATE : SONA_OK;
    if (st == SONA_OK) {
        st = eng_ewc_consolidate(t->ewc, t->lora);
        atomic_store(&t->tasks, eng_ewc_tasks(t->ewc));
    }
    pthread_mutex_unlock(&t->mu);
    return st;
}

sona_status eng_inspect_train(sona_engine *e, int32_t tenant, const float *x, const float *delta, float w,
                              uint64_t *pending)
{
    eng_tenant *t = eng_live_tenant(e, tenant);
    if (!t)
        return eng_fail(e, SONA_E_NOT_FOUND, "%s: no tenant %d", __func__, tenant);
    pthread_mutex_lock(&t->mu);
    sona_status st = sona_lora_accumulate(t->lora, 0, x, delta, w);
    if (st == SONA_OK)
        st = eng_train_and_publish(e, t->lora, t->ewc, &t->slot);
    *pending = sona_lora_pending(t->lora);
    pthread_mutex_unlock(&t->mu);
    return st;
}

void eng_inspect_cycle_hook(sona_engine *e, void (*hook)(void *), void *arg)
{
    pthread_mutex_lock(&e->cycle_mu);
    e->cycle_hook = hook;
    e->cycle_hook_arg = arg;
    pthread_mutex_unlock(&e->cycle_mu);
}
