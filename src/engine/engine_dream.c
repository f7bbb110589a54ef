/* SPDX-License-Identifier: MIT */
/* Loop C (deep): dreams over the pattern graph replayed into Base-LoRA, the integration score
 * Phi, consolidation of the bank (near-duplicates merged, importance decayed, pruned), EWC++
 * consolidation of every adapter set, and a checkpoint when a state path is configured. */
#include "common/serial.h"
#include "core/patterns/dream.h"
#include "dispatch/vecmath.h"
#include "engine/engine_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void eng_dream_state_free(eng_dream_state *d)
{
    if (!d)
        return;
    sona_idmap_free(&d->visits);
    free(d);
}

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
        if ((st = eng_base_accumulate(e, d.vecs, &steps, eng_quality_weight(e, d.utility))) == SONA_OK)
            (*replayed)++;
    }
    if (st == SONA_OK && sona_lora_pending(e->base) > 0)
        st = eng_train_and_publish(e, e->base, e->base_ewc, &e->base_slot);
    sona_dream_free(&d);
    free(layers);
    return st;
}

/* A merged group of near-duplicate patterns: the leader's id, summed statistics. */
typedef struct merged {
    sona_pattern p;
    double quality_sum; /* size-weighted */
    float *sum;         /* size-weighted centroid sum */
} merged;

/* Rebuilds the bank: patterns whose cosine with a graph neighbour reaches merge_cosine join
 * that neighbour's group (size-weighted centroid and quality, summed sizes and weights, oldest
 * creation, latest access), access counts decay by importance_decay, the counters and id
 * sequence carry over, then the bank prunes. The new bank replaces the old one only when
 * complete. */
static sona_status consolidate(sona_engine *e, uint32_t *merged_away)
{
    const sona_bank *old = e->bank;
    const uint32_t n = sona_bank_pattern_count(old), H = e->cfg.hidden;
    *merged_away = 0;
    if (n == 0)
        return SONA_OK;
    const sona_dot_fn dot = sona_dot_kernel();
    sona_idmap slot = {0};
    uint32_t *leader = malloc(n * sizeof *leader);
    float *u = malloc(2 * (size_t)H * sizeof *u);
    merged *groups = calloc(n, sizeof *groups);
    sona_status st = leader && u && groups ? SONA_OK : SONA_E_NOMEM;
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        sona_pattern p;
        if ((st = sona_bank_pattern_at(old, i, &p, NULL)) == SONA_OK)
            st = sona_idmap_put(&slot, p.id, i);
        leader[i] = i;
    }
    /* Pass 1: each pattern joins the group of its most similar earlier neighbour above the
     * threshold (earlier = lower slot, so groups form in one pass). */
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        sona_pattern p;
        uint64_t nb[64];
        uint32_t k = 0;
        if ((st = sona_bank_pattern_at(old, i, &p, u)) != SONA_OK)
            break;
        sona_normalize(u, H);
        sona_bank_neighbors(old, p.id, nb, 64, &k);
        float best = e->cfg.merge_cosine;
        for (uint32_t j = 0; j < k; j++) {
            const uint32_t o = sona_idmap_get(&slot, nb[j]);
            sona_pattern q;
            if (o == SONA_IDMAP_EMPTY || o >= i || sona_bank_pattern_get(old, nb[j], &q, u + H) != SONA_OK)
                continue;
            sona_normalize(u + H, H);
            const float s = dot(u, u + H, H);
            if (s >= best) {
                best = s;
                leader[i] = leader[o];
            }
        }
    }
    /* Pass 2: fold every pattern into its group. */
    float *c = u;
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        sona_pattern p;
        if ((st = sona_bank_pattern_at(old, i, &p, c)) != SONA_OK)
            break;
        merged *g = &groups[leader[i]];
        if (!g->sum && !(g->sum = calloc(H, sizeof *g->sum))) {
            st = SONA_E_NOMEM;
            break;
        }
        const double w = p.size ? (double)p.size : 1.0;
        for (uint32_t h = 0; h < H; h++)
            g->sum[h] += (float)(w * c[h]);
        if (leader[i] == i) {
            g->p = p;
            g->p.size = 0;
            g->p.total_weight = 0;
            g->p.access_count = 0;
        } else {
            (*merged_away)++;
        }
        g->p.size += p.size;
        g->p.total_weight += p.total_weight;
        g->p.access_count += p.access_count;
        g->quality_sum += w * p.avg_quality;
        if (p.created_ms < g->p.created_ms)
            g->p.created_ms = p.created_ms;
        if (p.last_access_ms > g->p.last_access_ms)
            g->p.last_access_ms = p.last_access_ms;
    }
    sona_bank *fresh = NULL;
    if (st == SONA_OK)
        st = eng_bank_create(&e->cfg, &fresh);
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        merged *g = &groups[i];
        if (leader[i] != i)
            continue;
        const double w = g->p.size ? (double)g->p.size : 1.0;
        for (uint32_t h = 0; h < H; h++)
            g->sum[h] = (float)(g->sum[h] / w);
        g->p.avg_quality = (float)(g->quality_sum / w);
        g->p.access_count = (uint64_t)floor((double)g->p.access_count * e->cfg.importance_decay);
        st = sona_bank_pattern_restore(fresh, &g->p, g->sum);
    }
    /* The rebuilt bank goes on counting where the old one was: its extractions seed k-means
     * (restarting them would repeat the seeds) and a merged-away id is never handed out again. */
    sona_bank_stats counters;
    if (st == SONA_OK && (st = sona_bank_stats_get(old, &counters)) == SONA_OK)
        st = sona_bank_restore_counters(fresh, &counters, sona_bank_next_id(old));
    if (st == SONA_OK)
        st = sona_bank_prune(fresh, NULL);
    if (st == SONA_OK) {
        pthread_rwlock_wrlock(&e->bank_lock);
        sona_bank *prev = e->bank;
        e->bank = fresh;
        pthread_rwlock_unlock(&e->bank_lock);
        fresh = prev;
    }
    sona_bank_destroy(fresh);
    for (uint32_t i = 0; i < n && groups; i++)
        free(groups[i].sum);
    free(groups);
    free(leader);
    free(u);
    sona_idmap_free(&slot);
    return st;
}

sona_status eng_loop_c_cycle(sona_engine *e)
{
    pthread_mutex_lock(&e->cycle_mu);
    const uint64_t t0 = eng_now_us();
    sona_status st = SONA_OK;
    uint64_t dreams = 0, replayed = 0;
    uint32_t merged_away = 0;
    if (!e->dream && !(e->dream = calloc(1, sizeof *e->dream)))
        st = SONA_E_NOMEM;
    if (st == SONA_OK && sona_bank_pattern_count(e->bank) > 0)
        st = dream_and_replay(e, &dreams, &replayed);
    float phi = 0;
    if (st == SONA_OK)
        st = sona_pattern_phi(e->bank, &phi);
    if (st == SONA_OK)
        st = consolidate(e, &merged_away);
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
    atomic_fetch_add(&e->n.dreams, dreams);
    atomic_fetch_add(&e->n.replayed, replayed);
    atomic_fetch_add(&e->n.merged, merged_away);
    uint32_t phi_bits;
    memcpy(&phi_bits, &phi, sizeof phi_bits);
    atomic_store(&e->last_phi_bits, phi_bits);
    atomic_store(&e->n.patterns, sona_bank_pattern_count(e->bank));
    atomic_store(&e->n.tasks, eng_ewc_tasks(e->base_ewc));
    atomic_fetch_add(&e->n.c_cycles, 1);
    sona_wbuf checkpoint = {0};
    const int checkpointing = st == SONA_OK && e->cfg.state_path[0];
    if (checkpointing)
        st = eng_state_snapshot(e, &checkpoint);
    pthread_mutex_unlock(&e->cycle_mu);
    if (checkpointing && st == SONA_OK) /* the disk, without holding loop B off */
        st = eng_state_write(e, e->cfg.state_path, &checkpoint);
    atomic_store(&e->n.last_c_us, eng_now_us() - t0);
    atomic_store(&e->last_deep_ms, eng_now_us() / 1000);
    return st == SONA_OK ? SONA_OK : eng_fail(e, st, "loop C cycle failed: %s", sona_status_str(st));
}
