/* SPDX-License-Identifier: MIT */
/* Loop C (deep): dreams over the pattern graph replayed into Base-LoRA, the integration score
 * Phi, consolidation of the bank (near-duplicates merged, importance decayed, pruned), EWC++
 * consolidation of every adapter set (the checkpoint after it: thread.c). */
#include "engine/loop_c.h"

#include "core/adapt/lora_internal.h"
#include "core/patterns/dream.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Dreams, replaying the valuable ones as synthetic trajectories: query = the first node, steps =
 * the following nodes (layer = step index mod layers, reward = pattern quality), weight = the
 * dream's utility against the engine's quality baseline, in its spreads. */
static sona_status dream_and_replay(sona_engine *e, uint64_t *dreams, uint64_t *replayed)
{
    const uint32_t H = e->cfg.hidden, L = e->cfg.dream_length;
    sona_dream d;
    int32_t *layers = malloc(L * sizeof *layers);
    sona_status st = layers ? sona_dream_init(&d, H, L) : SONA_E_NOMEM;
    if (st != SONA_OK) {
        free(layers);
        return st;
    }
    for (uint32_t i = 0; i < L; i++)
        layers[i] = (int32_t)(i % e->cfg.base_layers);
    sona_rng rng;
    sona_rng_seed(&rng, e->cfg.seed ^ 0xd7ea3ull, atomic_load(&e->n.c_cycles));
    const sona_dream_params prm = {.length = L, .temperature = e->cfg.dream_temperature,
                                   .jump_prob = e->cfg.dream_jump_prob,
                                   .novelty_bonus = e->cfg.dream_novelty_bonus};
    for (uint32_t k = 0; k < e->cfg.dreams_per_cycle && st == SONA_OK; k++) {
        if ((st = sona_dream_generate(e->bank, e->dream, &prm, &rng, &d)) != SONA_OK)
            break;
        (*dreams)++;
        if (d.score < e->cfg.dream_replay_min_score || d.len < 2)
            continue;
        const eng_steps steps = {.steps = d.len - 1, .acts = d.vecs + H, .rewards = d.quality + 1,
                                 .layers = layers};
        if ((st = eng_base_queue_trajectory(e, d.vecs, eng_query_cell(e, d.vecs), &steps,
                                            eng_quality_weight(e, d.utility))) == SONA_OK)
            (*replayed)++;
    }
    const sona_status flushed = eng_base_flush(e);
    if (st == SONA_OK)
        st = flushed;
    if (st == SONA_OK && sona_lora_pending(e->base) > 0)
        st = eng_train_and_publish(e, e->base, e->base_ewc, &e->base_slot);
    sona_dream_free(&d);
    free(layers);
    return st;
}

/* The bank replaced by its consolidated copy (sona_bank_consolidate), swapped under bank_lock
 * so that sona_find_patterns never sees a half-built bank. Caller holds cycle_mu. */
static sona_status consolidate_bank(sona_engine *e, uint32_t *merged_away)
{
    sona_bank *fresh = NULL;
    const sona_status st =
        sona_bank_consolidate(e->bank, e->cfg.merge_cosine, e->cfg.importance_decay, &fresh, merged_away);
    if (st != SONA_OK)
        return st;
    pthread_rwlock_wrlock(&e->bank_lock);
    sona_bank *old = e->bank;
    e->bank = fresh;
    pthread_rwlock_unlock(&e->bank_lock);
    sona_bank_destroy(old);
    return SONA_OK;
}

sona_status eng_loop_c_cycle(sona_engine *e)
{
    pthread_mutex_lock(&e->cycle_mu);
    eng_cycle_begin(e, NULL, 0, NULL); /* saves take the state from before the cycle meanwhile */
    sona_status st = SONA_OK;
    uint64_t dreams = 0, replayed = 0;
    uint32_t merged_away = 0;
    if (!e->dream && !(e->dream = sona_dream_visits_create()))
        st = SONA_E_NOMEM;
    if (st == SONA_OK && sona_bank_pattern_count(e->bank) > 0)
        st = dream_and_replay(e, &dreams, &replayed);
    float phi = 0;
    if (st == SONA_OK)
        st = sona_pattern_phi(e->bank, &phi);
    if (st == SONA_OK)
        st = consolidate_bank(e, &merged_away);
    if (st == SONA_OK && e->base_ewc)
        st = eng_ewc_consolidate(e->base_ewc, e->base);
    /* Each tenant's Micro-LoRA keeps what it knows now as an EWC++ task. */
    for (uint32_t i = 0; i < e->cfg.max_tenants && st == SONA_OK; i++) {
        eng_tenant *t = &e->tenants[i];
        pthread_mutex_lock(&t->mu);
        if (atomic_load(&t->live) && t->ewc) {
            st = eng_ewc_consolidate(t->ewc, t->lora);
            eng_note_tasks(e, &t->slot, t->ewc);
        }
        pthread_mutex_unlock(&t->mu);
    }
    uint32_t phi_bits;
    memcpy(&phi_bits, &phi, sizeof phi_bits);
    atomic_store(&e->last_phi_bits, phi_bits);
    atomic_store(&e->n.patterns, sona_bank_pattern_count(e->bank));
    atomic_store(&e->n.tasks, eng_ewc_tasks(e->base_ewc));
    eng_cycle_end(e, &(eng_cycle_counts){.c_cycles = 1, .dreams = dreams, .replayed = replayed,
                                         .merged = merged_away});
    pthread_mutex_unlock(&e->cycle_mu);
    return st == SONA_OK ? SONA_OK : eng_fail(e, st, "loop C cycle failed: %s", sona_status_str(st));
}
