/* SPDX-License-Identifier: MIT */
/* sona_sync (sona/comm.h): the engines of all ranks merged through the caller's collectives.
 *
 * Under cycle_mu (so no loop B or C cycle changes Base-LoRA between the gather and the commit):
 *   1. all-gather a header per rank: shape, trajectories learned since its last sync, counters;
 *      every rank checks the same gathered headers, so all refuse a shape mismatch alike;
 *   2. all-gather every rank's Base-LoRA (A and Bt, the op tables' layout);
 *   3. merge each layer (core/adapt/merge.h) into new buffers, in rank order, deterministic:
 *      every rank computes the same bits from the same bytes;
 *   4. all-gather each rank's status, so a rank that failed locally (memory) stops them all;
 *   5. commit: import the merged weights and publish them; a failure there puts the old
 *      weights back.
 * A failure in 1-4 returns before anything of the engine changed. */
#include "engine/base.h"

#include "core/adapt/lora_internal.h"
#include "core/adapt/merge.h"
#include "sona/comm.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define SYNC_MAGIC 0x534f4e4153594e43ull /* "SONASYNC": a rank running another protocol */

/* What the last sync left (SONA_SYNC_CHANGES' S), the same bits on every rank that took part:
 * Base-LoRA (A then Bt), and the tenants it merged (valid[i]) with their slot's generation. */
struct eng_sync {
    int have;         /* 0 before the first sync (and after a commit that failed half-way) */
    float *base;      /* 2 x layers x rank x hidden */
    float *tenants;   /* max_tenants x 2 x micro_rank x hidden */
    uint64_t *gen;
    unsigned char *valid;
};

void eng_sync_free(struct eng_sync *s)
{
    if (!s)
        return;
    free(s->base), free(s->tenants), free(s->gen), free(s->valid), free(s);
}

static struct eng_sync *sync_alloc(const sona_engine_config *c)
{
    struct eng_sync *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->base = malloc(2 * (size_t)c->base_layers * c->base_rank * c->hidden * sizeof *s->base);
    s->tenants = malloc(2 * (size_t)c->max_tenants * c->micro_rank * c->hidden * sizeof *s->tenants);
    s->gen = calloc(c->max_tenants, sizeof *s->gen);
    s->valid = calloc(c->max_tenants, 1);
    if (!s->base || !s->tenants || !s->gen || !s->valid) {
        eng_sync_free(s);
        return NULL;
    }
    return s;
}

/* The live byte a rank sends per tenant slot. */
enum { SLOT_FREE = 0, SLOT_LIVE = 1, SLOT_SYNCED = 2 /* live, and S holds it */ };

/* The counters of sona_stats, as they travel (uint64 each; the two floats as their bits). */
enum { SYNC_COUNTERS = 22 };
/* Every field of sona_stats travels: 21 counters, tenants, two floats, one counter more. A
 * field added there moves one of these and stops the build here until it is added below. */
_Static_assert(offsetof(sona_stats, tenants) == 21 * sizeof(uint64_t) &&
                   offsetof(sona_stats, inputs_out_of_range) <=
                       offsetof(sona_stats, last_phi) + sizeof(uint64_t) &&
                   sizeof(sona_stats) == offsetof(sona_stats, inputs_out_of_range) + sizeof(uint64_t),
               "sona_stats changed: update sync.c's counter list");
typedef struct sync_header {
    uint64_t magic, hidden, layers, rank, alpha_bits, tenants_max, micro_rank, micro_alpha_bits;
    uint64_t learned, has_last;
    uint64_t counters[SYNC_COUNTERS];
    uint64_t tenants, quality_bits, phi_bits;
} sync_header;

static uint64_t *counter(sona_stats *s, unsigned i)
{
    uint64_t *const f[SYNC_COUNTERS] = {
        &s->trajectories_recorded, &s->trajectories_processed, &s->trajectories_dropped,
        &s->trajectories_queued, &s->trajectories_in_cycle, &s->signals_accepted,
        &s->signals_rejected, &s->micro_updates, &s->base_updates, &s->patterns, &s->tasks,
        &s->task_boundaries, &s->loop_b_cycles, &s->loop_c_cycles, &s->dreams,
        &s->dreams_replayed, &s->patterns_merged, &s->last_loop_b_us, &s->last_loop_c_us,
        &s->device_batches, &s->device_fallbacks, &s->inputs_out_of_range};
    return f[i];
}

static uint64_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint64_t b)
{
    const uint32_t u = (uint32_t)b;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

void sona_sync_config_default(sona_sync_config *cfg)
{
    if (cfg) {
        cfg->weighting = SONA_SYNC_TRAJECTORIES;
        cfg->merge = SONA_SYNC_AVERAGE;
    }
}

/* The global counters from the gathered headers, summed in rank order (exact in uint64). */
static void global_stats(const sync_header *h, uint32_t k, sona_stats *g)
{
    memset(g, 0, sizeof *g);
    double quality = 0.0, phi = 0.0;
    for (uint32_t i = 0; i < k; i++) {
        for (unsigned c = 0; c < SYNC_COUNTERS; c++)
            *counter(g, c) += h[i].counters[c];
        g->tenants += (uint32_t)h[i].tenants;
        quality += bits_f32(h[i].quality_bits);
        phi += bits_f32(h[i].phi_bits);
    }
    g->quality_baseline = (float)(quality / k);
    g->last_phi = (float)(phi / k);
}

/* Collective failures (a callback's error) are taken to be the whole world's, as MPI's are,
 * and end the sync at once; a local failure after the buffers exist (a merge, a read) goes on
 * through every collective and is told to the others by agree(), so that every rank calls the
 * same collectives in the same order. */

/* Steps 2-3: the merged Base-LoRA of every rank into A_new and Bt_new (layers x rank x hidden
 * each), from this rank's weights in mine (A then Bt). A failed merge goes to *local. */
static sona_status merge_base(sona_engine *e, sona_comm *comm, uint32_t k, const double *w,
                              const float *last, const float *mine, float *A_new, float *Bt_new,
                              double *err, sona_status *local)
{
    const size_t H = e->cfg.hidden, r = e->cfg.base_rank, L = e->cfg.base_layers;
    const size_t block = 2 * L * r * H; /* floats a rank sends */
    const uint32_t n = k + (last ? 1 : 0); /* adapters merged: S last, when given */
    float *all = malloc(block * k * sizeof *all);
    const float **pa = malloc(2 * (size_t)n * sizeof *pa);
    sona_status st = all && pa ? SONA_OK : SONA_E_NOMEM;
    if (st == SONA_OK)
        st = sona_comm_allgather(comm, mine, block * sizeof *mine, all);
    if (st != SONA_OK) {
        free(all), free(pa);
        return eng_fail(e, st, "%s: gathering Base-LoRA: %s", __func__,
                        st == SONA_E_NOMEM ? "out of memory" : sona_comm_last_error(comm));
    }
    double total = 0.0, tail = 0.0;
    sona_status merged = SONA_OK;
    for (size_t l = 0; l < L && merged == SONA_OK; l++) {
        const float **pb = pa + n;
        for (uint32_t i = 0; i < k; i++) {
            pa[i] = all + i * block + l * r * H;
            pb[i] = all + i * block + L * r * H + l * r * H;
        }
        if (last) {
            pa[k] = last + l * r * H;
            pb[k] = last + L * r * H + l * r * H;
        }
        sona_merge_info info;
        merged = sona_lora_merge((uint32_t)H, (uint32_t)r, n, pa, pb, w, A_new + l * r * H,
                                Bt_new + l * r * H, &info);
        total += info.total;
        tail += info.tail;
    }
    free(all), free(pa);
    *err = total > 0.0 ? sqrt(tail / total) : 0.0;
    if (merged != SONA_OK && *local == SONA_OK)
        *local = eng_fail(e, merged, "%s: merging Base-LoRA failed", __func__);
    return SONA_OK;
}

/* Step 4: every rank's status gathered, so a rank that failed locally (memory) stops every
 * rank before any commits. */
static sona_status agree(sona_engine *e, sona_comm *comm, uint32_t k, sona_status local)
{
    uint32_t mine = (uint32_t)local, *sts = malloc((size_t)k * sizeof *sts);
    if (!sts)
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
    sona_status st = sona_comm_allgather(comm, &mine, sizeof mine, sts);
    if (st != SONA_OK)
        eng_fail(e, st, "%s: %s", __func__, sona_comm_last_error(comm));
    for (uint32_t i = 0; i < k && st == SONA_OK; i++)
        if (sts[i] != SONA_OK)
            st = eng_fail(e, sts[i] < SONA_STATUS_COUNT ? (sona_status)sts[i] : SONA_E_BACKEND,
                          "%s: rank %u failed to merge (%s)", __func__, i,
                          sona_status_str((sona_status)sts[i]));
    free(sts);
    return st;
}

/* Micro-LoRA tenants: each tenant id live on two ranks or more becomes, on those ranks, the
 * equal-weight rank-r merge of their adapters (ids are the ranks' own: an id live on one rank
 * only is left alone, and none is created). Every rank sends every slot (zeros where not live)
 * after a byte per slot saying whether it is live, so blocks have one size. The merged adapters
 * go to out (slots x 2 r H: A then Bt per slot), commit[i] = 1 for those this rank takes. */
typedef struct tenant_merge {
    float *mine, *out;      /* this rank's block; the merged adapters */
    unsigned char *commit;  /* [max_tenants] */
    uint64_t *gen;          /* [max_tenants]: each slot's generation when read */
    uint32_t merged;        /* ids merged (on any rank) */
} tenant_merge;

static sona_status merge_tenants(sona_engine *e, sona_comm *comm, uint32_t k, int changes,
                                 tenant_merge *tm, sona_status *local)
{
    const size_t T = e->cfg.max_tenants, af = (size_t)e->cfg.micro_rank * e->cfg.hidden;
    const size_t floats = 2 * af * T, head = (T + 3) / 4; /* the live bytes, in floats */
    const size_t block = head + floats;
    tm->mine = calloc(block, sizeof *tm->mine);
    tm->out = malloc(floats * sizeof *tm->out);
    tm->commit = calloc(T, 1);
    tm->gen = calloc(T, sizeof *tm->gen);
    float *all = malloc(block * k * sizeof *all);
    const float **pa = malloc(2 * ((size_t)k + 1) * sizeof *pa);
    double *w = malloc(((size_t)k + 1) * sizeof *w);
    if (!tm->mine || !tm->out || !tm->commit || !tm->gen || !all || !pa || !w) {
        free(w);
        free(all), free(pa);
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
    }
    unsigned char *live = (unsigned char *)tm->mine;
    sona_status st = SONA_OK;
    for (size_t i = 0; i < T && st == SONA_OK; i++) {
        eng_tenant *t = &e->tenants[i];
        pthread_mutex_lock(&t->mu); /* cycle_mu -> eng_tenant.mu: down the lock order */
        if (atomic_load(&t->live)) {
            const struct eng_sync *S = e->sync;
            live[i] = S && S->have && S->valid[i] && S->gen[i] == t->generation ? SLOT_SYNCED
                                                                              : SLOT_LIVE;
            float *a = tm->mine + head + 2 * af * i;
            tm->gen[i] = t->generation;
            st = sona_lora_export(t->lora, a, a + af, NULL);
        }
        pthread_mutex_unlock(&t->mu);
    }
    if (st != SONA_OK && *local == SONA_OK)
        *local = eng_fail(e, st, "%s: reading a tenant's Micro-LoRA failed", __func__);
    st = sona_comm_allgather(comm, tm->mine, block * sizeof *all, all);
    if (st != SONA_OK) {
        free(all), free(pa), free(w);
        return eng_fail(e, st, "%s: gathering tenants: %s", __func__, sona_comm_last_error(comm));
    }
    sona_status merged = SONA_OK;
    for (size_t i = 0; i < T && merged == SONA_OK; i++) {
        uint32_t n = 0, synced = 0;
        for (uint32_t r = 0; r < k; r++) {
            const float *b = all + r * block;
            const unsigned char flag = ((const unsigned char *)b)[i];
            if (flag != SLOT_FREE) {
                pa[n] = b + head + 2 * af * i;
                pa[k + 1 + n++] = b + head + 2 * af * i + af;
                synced += flag == SLOT_SYNCED;
            }
        }
        if (n < 2)
            continue;
        tm->merged++;
        if (!live[i])
            continue;
        /* Changes from S when every holder has it (then each holder's S is the same), else the
         * equal-weight average. */
        const int from_last = changes && synced == n;
        for (uint32_t j = 0; j < n; j++)
            w[j] = from_last ? 1.0 : 1.0 / n;
        if (from_last) {
            const float *S = e->sync->tenants + 2 * af * i;
            w[n] = -(double)(n - 1);
            pa[n] = S;
            pa[k + 1 + n] = S + af;
        }
        /* A pointers pa[0..n], B pointers from pa + k + 1: room for S's at index n of both. */
        const float **pb = pa + k + 1;
        merged = sona_lora_merge(e->cfg.hidden, e->cfg.micro_rank, n + (uint32_t)from_last, pa,
                                 pb, w, tm->out + 2 * af * i, tm->out + 2 * af * i + af, NULL);
        tm->commit[i] = 1;
    }
    free(all), free(pa), free(w);
    if (merged != SONA_OK && *local == SONA_OK)
        *local = eng_fail(e, merged, "%s: merging tenants failed", __func__);
    return SONA_OK;
}

/* Step 5 for the tenants: each merged one imported and published under its mutex (a tenant
 * removed meanwhile is skipped). Signals it learned during the sync are replaced by the merge,
 * and its pending gradients dropped, as on every rank. */
static sona_status commit_tenants(sona_engine *e, const tenant_merge *tm, struct eng_sync *S)
{
    const size_t af = (size_t)e->cfg.micro_rank * e->cfg.hidden;
    const size_t head = (e->cfg.max_tenants + 3) / 4;
    sona_status st = SONA_OK;
    for (size_t i = 0; i < e->cfg.max_tenants; i++) {
        S->valid[i] = 0;
        if (!tm->commit[i])
            continue;
        eng_tenant *t = &e->tenants[i];
        pthread_mutex_lock(&t->mu);
        /* Removed meanwhile, or removed and created anew in the slot: not the one merged. */
        if (atomic_load(&t->live) && t->generation == tm->gen[i]) {
            const float *m = tm->out + 2 * af * i;
            sona_status s = sona_lora_import(t->lora, m, m + af);
            if (s == SONA_OK)
                s = sona_snapshot_publish(&t->slot, t->lora);
            if (s != SONA_OK) { /* back to the weights read (finite, same shape) */
                const float *old = tm->mine + head + 2 * af * i;
                sona_lora_import(t->lora, old, old + af);
                st = eng_fail(e, s, "%s: committing tenant %zu: %s", __func__, i,
                              sona_lora_last_error(t->lora));
            } else { /* S for this slot: what every holder now has */
                memcpy(S->tenants + 2 * af * i, m, 2 * af * sizeof *m);
                S->gen[i] = t->generation;
                S->valid[i] = 1;
            }
            t->since_apply = 0;
        }
        pthread_mutex_unlock(&t->mu);
    }
    return st;
}

static sona_status sync_locked(sona_engine *e, sona_comm *comm, const sona_sync_config *cfg,
                               sona_sync_result *res)
{
    uint32_t k = 0, rank = 0;
    sona_status st = sona_comm_size(comm, &k);
    if (st == SONA_OK)
        st = sona_comm_rank(comm, &rank);
    if (st != SONA_OK)
        return eng_fail(e, st, "%s: %s", __func__, sona_comm_last_error(comm));
    /* Step 1: the header. */
    sona_stats local;
    sona_get_stats(e, &local);
    const uint64_t processed = local.trajectories_processed;
    sync_header me = {SYNC_MAGIC, e->cfg.hidden, e->cfg.base_layers, e->cfg.base_rank,
                      f32_bits(e->cfg.base_alpha), e->cfg.max_tenants, e->cfg.micro_rank,
                      f32_bits(e->cfg.micro_alpha),
                      processed - (e->synced_processed <= processed ? e->synced_processed : 0),
                      e->sync && e->sync->have, {0}, local.tenants, f32_bits(local.quality_baseline),
                      f32_bits(local.last_phi)};
    for (unsigned c = 0; c < SYNC_COUNTERS; c++)
        me.counters[c] = *counter(&local, c);
    sync_header *h = calloc(k, sizeof *h);
    double *w = malloc(((size_t)k + 1) * sizeof *w);
    const size_t af = (size_t)e->cfg.base_layers * e->cfg.base_rank * e->cfg.hidden;
    float *mine = malloc(4 * af * sizeof *mine); /* old A, old Bt, new A, new Bt */
    if (!e->sync)
        e->sync = sync_alloc(&e->cfg); /* kept from here on: the commit cannot run out */
    if (!h || !w || !mine || !e->sync) {
        free(h), free(w), free(mine);
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
    }
    st = sona_comm_allgather(comm, &me, sizeof me, h);
    if (st != SONA_OK)
        eng_fail(e, st, "%s: gathering headers: %s", __func__, sona_comm_last_error(comm));
    for (uint32_t i = 0; i < k && st == SONA_OK; i++)
        if (h[i].magic != SYNC_MAGIC || h[i].hidden != me.hidden || h[i].layers != me.layers ||
            h[i].rank != me.rank || h[i].alpha_bits != me.alpha_bits ||
            h[i].tenants_max != me.tenants_max || h[i].micro_rank != me.micro_rank ||
            h[i].micro_alpha_bits != me.micro_alpha_bits)
            st = eng_fail(e, SONA_E_SIZE, "%s: rank %u's engine has another shape (hidden %llu, "
                          "base_layers %llu, base_rank %llu, max_tenants %llu, micro_rank %llu, "
                          "or the alphas) than rank %u's", __func__, i,
                          (unsigned long long)h[i].hidden, (unsigned long long)h[i].layers,
                          (unsigned long long)h[i].rank, (unsigned long long)h[i].tenants_max,
                          (unsigned long long)h[i].micro_rank, rank);
    /* The weights, in rank order: the same doubles on every rank. */
    double learned = 0.0;
    for (uint32_t i = 0; i < k; i++)
        learned += (double)h[i].learned;
    for (uint32_t i = 0; i < k; i++)
        w[i] = cfg->weighting == SONA_SYNC_TRAJECTORIES && learned > 0.0
                   ? (double)h[i].learned / learned : 1.0 / k;
    /* SONA_SYNC_CHANGES where every rank has S (then they all have the same): S + sum_i
     * (W_i - S) = sum_i W_i - (k - 1) S, a merge of k + 1 adapters. */
    int changes = cfg->merge == SONA_SYNC_CHANGES && k > 1;
    for (uint32_t i = 0; i < k; i++)
        changes &= h[i].has_last == 1;
    if (changes) {
        for (uint32_t i = 0; i < k; i++)
            w[i] = 1.0;
        w[k] = -(double)(k - 1);
    }
    sona_status failed_here = SONA_OK;
    if (st == SONA_OK && sona_lora_export(e->base, mine, mine + af, NULL) != SONA_OK)
        failed_here = eng_fail(e, SONA_E_BACKEND, "%s: reading Base-LoRA: %s", __func__,
                         sona_lora_last_error(e->base));
    double err = 0.0;
    tenant_merge tm = {0};
    if (st == SONA_OK)
        st = merge_base(e, comm, k, w, changes ? e->sync->base : NULL, mine, mine + 2 * af,
                        mine + 3 * af, &err, &failed_here);
    if (st == SONA_OK)
        st = merge_tenants(e, comm, k, cfg->merge == SONA_SYNC_CHANGES && k > 1, &tm,
                           &failed_here);
    if (st == SONA_OK)
        st = agree(e, comm, k, failed_here);
    /* Step 5: commit, or put the old weights back. */
    if (st == SONA_OK) {
        st = sona_lora_import(e->base, mine + 2 * af, mine + 3 * af);
        if (st == SONA_OK)
            st = sona_snapshot_publish(&e->base_slot, e->base);
        if (st != SONA_OK) {
            sona_lora_import(e->base, mine, mine + af); /* the old ones: finite, same shape */
            eng_fail(e, st, "%s: committing the merged Base-LoRA: %s", __func__,
                     sona_lora_last_error(e->base));
        }
    }
    if (st == SONA_OK) {
        memcpy(e->sync->base, mine + 2 * af, 2 * af * sizeof *mine); /* S: new A, new Bt */
        st = commit_tenants(e, &tm, e->sync);
        e->sync->have = st == SONA_OK; /* a half-done commit: no S, AVERAGE next time */
    }
    if (st == SONA_OK) {
        e->synced_processed = processed;
        if (res) {
            res->tenants_merged = tm.merged;
            res->ranks = k;
            res->rank = rank;
            res->weight = w[rank];
            res->merge_error = err;
            global_stats(h, k, &res->global);
        }
    }
    free(h), free(w), free(mine), free(tm.mine), free(tm.out), free(tm.commit), free(tm.gen);
    return st;
}

sona_status sona_sync(sona_engine *e, sona_comm *comm, const sona_sync_config *cfg,
                      sona_sync_result *out)
{
    if (!e || !comm)
        return eng_fail(e, SONA_E_NULL, "%s: NULL argument", __func__);
    sona_sync_config def;
    if (!cfg) {
        sona_sync_config_default(&def);
        cfg = &def;
    }
    if (cfg->weighting != SONA_SYNC_EQUAL && cfg->weighting != SONA_SYNC_TRAJECTORIES)
        return eng_fail(e, SONA_E_INVALID, "%s: weighting %d is neither SONA_SYNC_EQUAL nor "
                        "SONA_SYNC_TRAJECTORIES", __func__, (int)cfg->weighting);
    if (cfg->merge != SONA_SYNC_AVERAGE && cfg->merge != SONA_SYNC_CHANGES)
        return eng_fail(e, SONA_E_INVALID, "%s: merge %d is neither SONA_SYNC_AVERAGE nor "
                        "SONA_SYNC_CHANGES", __func__, (int)cfg->merge);
    pthread_mutex_lock(&e->cycle_mu);
    eng_cut_invalidate(e); /* it changes Base-LoRA outside a cycle */
    const sona_status st = sync_locked(e, comm, cfg, out);
    pthread_mutex_unlock(&e->cycle_mu);
    return st;
}
