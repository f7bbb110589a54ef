/* SPDX-License-Identifier: MIT */
/* The engine's use of the ReasoningBank: loop B adds each batch and extracts patterns; the
 * patterns are what loop C dreams over and what sona_find_patterns returns. */
#include "core/patterns/bank_device.h"
#include "dispatch/vecmath.h"
#include "engine/base.h"

#include <stdlib.h>

sona_status eng_bank_create(const sona_engine_config *cfg, sona_bank **out)
{
    sona_bank_config bc;
    sona_bank_config_default(&bc, cfg->hidden);
    bc.k_clusters = cfg->clusters_per_cycle;
    bc.capacity = cfg->max_patterns;
    bc.max_pending = cfg->buffer_capacity > bc.max_pending ? cfg->buffer_capacity : bc.max_pending;
    bc.seed = cfg->seed;
    bc.index.seed = cfg->seed;
    /* Loop C rebuilds the graph at every consolidation: ef_construction 100 halves that time
     * against the default 200 at M 16, with search recall still set by ef_search. */
    bc.index.ef_construction = 100;
    /* One Q8 copy of each centroid: the spec's 100,000 patterns fit the memory budget. */
    bc.index.storage = SONA_STORAGE_Q8;
    return sona_bank_create(&bc, out);
}

sona_status eng_bank_batch_init(sona_engine *e, eng_bank_batch *b, uint32_t n)
{
    *b = (eng_bank_batch){0};
    const size_t at_emb = sona_scratch_push(&b->bytes, (size_t)n * e->cfg.hidden * sizeof *b->emb);
    const size_t at_qual = sona_scratch_push(&b->bytes, (size_t)n * sizeof *b->qual);
    char *mem = sona_scratch_get(&e->bank_rows, b->bytes);
    if (!mem)
        return SONA_E_NOMEM;
    b->emb = (float *)(void *)(mem + at_emb);
    b->qual = (float *)(void *)(mem + at_qual);
    return SONA_OK;
}

void eng_bank_batch_done(sona_engine *e, eng_bank_batch *b)
{
    if (b->emb)
        sona_scratch_done(&e->bank_rows, b->bytes);
    *b = (eng_bank_batch){0};
}

void eng_bank_add_row(sona_engine *e, eng_bank_batch *b, const eng_steps *s, float quality)
{
    const uint32_t H = e->cfg.hidden;
    float *row = b->emb + (size_t)b->rows * H;
    if (sona_bank_trajectory_embedding(H, s->query, s->steps, s->acts, s->rewards, row) == SONA_OK)
        b->qual[b->rows++] = quality;
}

sona_status eng_bank_commit(sona_engine *e, eng_bank_batch *b)
{
    sona_status st = b->rows ? sona_bank_add_batch(e->bank, b->rows, b->emb, e->cfg.hidden, b->qual, NULL, NULL)
                             : SONA_OK;
    if (st == SONA_OK) {
        /* k-means on the engine's accelerator where the cost model sends it, once batches
         * have made the engine pick one (bank_device.h) */
        const sona_backend *dev = eng_device_picked(e->device);
        if (dev)
            sona_bank_set_device(e->bank, dev);
        st = sona_bank_extract(e->bank, NULL);
    }
    if (st != SONA_OK)
        eng_fail(e, st, "loop B: pattern bank: %s", sona_bank_last_error(e->bank));
    atomic_store(&e->n.patterns, sona_bank_pattern_count(e->bank));
    return st;
}

sona_status sona_find_patterns(sona_engine *e, const float *query, uint32_t k, sona_pattern_hit *hits,
                               uint32_t *found)
{
    if (!e || !query || !hits || !found)
        return eng_fail(e, SONA_E_NULL, "%s: NULL argument", __func__);
    if (!sona_all_finite(query, e->cfg.hidden)) /* checked here too: an empty bank searches nothing */
        return eng_fail(e, SONA_E_NONFINITE, "%s: NaN or Inf in the query", __func__);
    *found = 0;
    if (k == 0)
        return SONA_OK;
    uint64_t *ids = malloc(k * sizeof *ids);
    float *sims = malloc(k * sizeof *sims);
    if (!ids || !sims) {
        free(ids);
        free(sims);
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
    }
    pthread_rwlock_rdlock(&e->bank_lock);
    uint32_t n = 0;
    sona_status st = sona_bank_pattern_count(e->bank) ? sona_bank_search(e->bank, query, e->cfg.hidden, k, ids, sims, &n) : SONA_OK;
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        sona_pattern p;
        if (sona_bank_pattern_get(e->bank, ids[i], &p, NULL) != SONA_OK)
            continue; /* consolidated away meanwhile */
        hits[*found] = (sona_pattern_hit){.id = ids[i], .similarity = sims[i], .avg_quality = p.avg_quality,
                                          .size = (uint32_t)p.size};
        (*found)++;
    }
    if (st != SONA_OK)
        eng_fail(e, st, "%s: %s", __func__, sona_bank_last_error(e->bank));
    pthread_rwlock_unlock(&e->bank_lock);
    free(ids);
    free(sims);
    return st;
}

sona_status sona_engine_pattern(sona_engine *e, uint64_t id, sona_pattern *p, float *centroid)
{
    if (!e || !p)
        return eng_fail(e, SONA_E_NULL, "%s: NULL argument", __func__);
    pthread_rwlock_rdlock(&e->bank_lock);
    const sona_status st = sona_bank_pattern_get(e->bank, id, p, centroid);
    pthread_rwlock_unlock(&e->bank_lock);
    if (st == SONA_E_NOT_FOUND)
        return eng_fail(e, st, "%s: no pattern %llu (merged away, pruned or evicted, "
                               "or never made)", __func__, (unsigned long long)id);
    if (st != SONA_OK)
        return eng_fail(e, st, "%s: %s", __func__, sona_bank_last_error(e->bank));
    return SONA_OK;
}
