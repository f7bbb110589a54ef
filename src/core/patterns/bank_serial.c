/* SPDX-License-Identifier: MIT */
#include "core/patterns/bank_serial.h"

#include "common/error.h"
#include "sona/engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BANK_COUNTERS 13

/* The counters BANK holds, in file order. */
static void counter_table(sona_bank_stats *s, uint64_t *out[BANK_COUNTERS])
{
    uint64_t *const t[BANK_COUNTERS] = {
        &s->trajectories_added, &s->trajectories_rejected, &s->trajectories_refused_full,
        &s->trajectories_lost, &s->extractions, &s->clusters_found, &s->clusters_dropped_small,
        &s->patterns_created, &s->patterns_merged, &s->patterns_pruned_quality,
        &s->patterns_pruned_stale, &s->patterns_evicted, &s->searches};
    memcpy(out, t, sizeof t);
}

void sona_bank_write_patterns(const sona_bank *bank, sona_wbuf *w)
{
    const uint32_t H = sona_bank_get_config(bank)->dim, n = sona_bank_pattern_count(bank);
    sona_wbuf_u32(w, n);
    float *centroid = malloc(H * sizeof *centroid);
    if (!centroid)
        w->oom = 1;
    for (uint32_t i = 0; i < n && !w->oom; i++) {
        sona_pattern p;
        if (sona_bank_pattern_at(bank, i, &p, centroid) != SONA_OK) {
            w->oom = 1;
            break;
        }
        sona_wbuf_u64(w, p.id);
        sona_wbuf_u64(w, p.size);
        sona_wbuf_f64(w, p.total_weight);
        sona_wbuf_f32(w, p.avg_quality);
        sona_wbuf_u64(w, p.access_count);
        sona_wbuf_u64(w, p.created_ms);
        sona_wbuf_u64(w, p.last_access_ms);
        sona_wbuf_floats(w, centroid, H);
    }
    free(centroid);
}

/* A pattern as live learning makes them (include/sona/engine.h's ranges): an id below the ids
 * to come, a mean of qualities, a weight a sum of finite ones, a centroid a mean of queries. */
static int pattern_in_range(const sona_pattern *p, const float *centroid, uint32_t H)
{
    if (p->id >= SONA_MAX_NEXT_ID || !(fabsf(p->avg_quality) <= SONA_MAX_QUALITY) || !(p->total_weight >= 0.0) ||
        !(p->total_weight <= 1e30)) /* 2^64 trajectories of weight SONA_MAX_QUALITY stay below */
        return 0;
    for (uint32_t h = 0; h < H; h++)
        if (!(fabsf(centroid[h]) <= SONA_MAX_ACTIVATION))
            return 0;
    return 1;
}

sona_status sona_bank_read_patterns(sona_bank *bank, sona_rbuf *r)
{
    const uint32_t H = sona_bank_get_config(bank)->dim, n = sona_rbuf_u32(r);
    const size_t record = 8 * 6 + 4 + (size_t)H * 4;
    if (!sona_rbuf_has(r, n, record))
        return sona_fail(NULL, SONA_E_CORRUPT, "pattern section is truncated");
    float *centroid = malloc(H * sizeof *centroid);
    if (!centroid)
        return sona_fail(NULL, SONA_E_NOMEM, "out of memory");
    sona_status st = SONA_OK;
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        sona_pattern p = {0};
        p.id = sona_rbuf_u64(r);
        p.size = sona_rbuf_u64(r);
        p.total_weight = sona_rbuf_f64(r);
        p.avg_quality = sona_rbuf_f32(r);
        p.access_count = sona_rbuf_u64(r);
        p.created_ms = sona_rbuf_u64(r);
        p.last_access_ms = sona_rbuf_u64(r);
        sona_rbuf_floats(r, centroid, H);
        if (!pattern_in_range(&p, centroid, H))
            st = sona_fail(NULL, SONA_E_CORRUPT, "a pattern is beyond the engine's ranges (id, quality, weight or "
                                                 "centroid)");
        else if (sona_bank_pattern_restore(bank, &p, centroid) != SONA_OK)
            st = sona_fail(NULL, SONA_E_CORRUPT, "a pattern is invalid (duplicate id, zero or non-finite centroid)");
    }
    free(centroid);
    return st;
}

void sona_bank_write_counters(const sona_bank *bank, sona_wbuf *w)
{
    sona_bank_stats bs;
    uint64_t *counters[BANK_COUNTERS];
    sona_bank_stats_get(bank, &bs);
    counter_table(&bs, counters);
    sona_wbuf_u32(w, BANK_COUNTERS);
    for (int i = 0; i < BANK_COUNTERS; i++)
        sona_wbuf_u64(w, *counters[i]);
    sona_wbuf_u64(w, sona_bank_next_id(bank));
}

sona_status sona_bank_read_counters(sona_bank *bank, sona_rbuf *r)
{
    sona_bank_stats bs = {0};
    uint64_t *counters[BANK_COUNTERS];
    counter_table(&bs, counters);
    if (sona_rbuf_u32(r) != BANK_COUNTERS)
        return sona_fail(NULL, SONA_E_CORRUPT, "bad bank counter section");
    for (int i = 0; i < BANK_COUNTERS; i++)
        *counters[i] = sona_rbuf_u64(r);
    const uint64_t next_id = sona_rbuf_u64(r);
    if (r->bad)
        return sona_fail(NULL, SONA_E_CORRUPT, "bad bank counter section");
    if (next_id > SONA_MAX_NEXT_ID) /* ids to come must not run out (nor wrap past 2^64 - 1) */
        return sona_fail(NULL, SONA_E_CORRUPT, "the bank's next pattern id is beyond SONA_MAX_NEXT_ID");
    if (sona_bank_restore_counters(bank, &bs, next_id) != SONA_OK)
        return sona_fail(NULL, SONA_E_CORRUPT, "the bank's next pattern id is not above its patterns' ids");
    return SONA_OK;
}
