/* Loop C (deep). */
#include "core/engine_internal.h"

sona_status eng_loop_c_cycle(sona_engine *e)
{
    pthread_mutex_lock(&e->cycle_mu);
    const uint64_t t0 = eng_now_us();
    sona_status st = SONA_OK;
    if (e->base_ewc)
        st = eng_ewc_consolidate(e->base_ewc, e->base);
    /* Each tenant's Micro-LoRA keeps what it knows now as an EWC++ task. */
    for (uint32_t i = 0; i < e->cfg.max_tenants && st == SONA_OK; i++) {
        eng_tenant *t = &e->tenants[i];
        pthread_mutex_lock(&t->mu);
        if (atomic_load(&t->live) && t->ewc)
            st = eng_ewc_consolidate(t->ewc, t->lora);
        pthread_mutex_unlock(&t->mu);
    }
    atomic_store(&e->n.tasks, eng_ewc_tasks(e->base_ewc));
    atomic_fetch_add(&e->n.c_cycles, 1);
    atomic_store(&e->n.last_c_us, eng_now_us() - t0);
    atomic_store(&e->last_deep_ms, eng_now_us() / 1000);
    pthread_mutex_unlock(&e->cycle_mu);
    return st;
}
void eng_dream_state_free(struct eng_dream_state *d) { (void)d; }
