/* SPDX-License-Identifier: MIT */
/* Consolidation of a bank (loop C's, and any owner's): near-duplicate patterns merged along the
 * HNSW graph, importance decayed, then pruned, into a new bank, so that readers of the old one
 * are never disturbed and a failure changes nothing. */
#include "common/error.h"
#include "common/idmap.h"
#include "dispatch/vecmath.h"
#include "sona/bank.h"

#include <math.h>
#include <stdlib.h>

/* A merged group of near-duplicate patterns: the leader's id, summed statistics. */
typedef struct merged {
    sona_pattern p;
    double quality_sum; /* size-weighted */
    float *sum;         /* size-weighted centroid sum */
} merged;

sona_status sona_bank_consolidate(const sona_bank *old, float merge_cosine, float importance_decay,
                                  sona_bank **out, uint32_t *merged_away)
{
    if (!old || !out || !merged_away)
        return sona_fail(NULL, SONA_E_NULL, "%s: NULL argument", __func__);
    *out = NULL;
    *merged_away = 0;
    if (!isfinite(merge_cosine) || !isfinite(importance_decay) || importance_decay < 0 || importance_decay > 1)
        return sona_fail(NULL, SONA_E_INVALID, "%s: merge_cosine must be finite and importance_decay in [0, 1]",
                         __func__);
    const uint32_t n = sona_bank_pattern_count(old), H = sona_bank_get_config(old)->dim;
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
        float best = merge_cosine;
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
        st = sona_bank_create(sona_bank_get_config(old), &fresh);
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        merged *g = &groups[i];
        if (leader[i] != i)
            continue;
        const double w = g->p.size ? (double)g->p.size : 1.0;
        for (uint32_t h = 0; h < H; h++)
            g->sum[h] = (float)(g->sum[h] / w);
        g->p.avg_quality = (float)(g->quality_sum / w);
        g->p.access_count = (uint64_t)floor((double)g->p.access_count * importance_decay);
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
        *out = fresh;
        fresh = NULL;
    }
    sona_bank_destroy(fresh);
    for (uint32_t i = 0; i < n && groups; i++)
        free(groups[i].sum);
    free(groups);
    free(leader);
    free(u);
    sona_idmap_free(&slot);
    if (st != SONA_OK)
        *merged_away = 0;
    return st == SONA_OK || st == SONA_E_NOMEM ? st : sona_fail(NULL, st, "%s: %s", __func__, sona_last_error());
}
