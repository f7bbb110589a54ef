/* SPDX-License-Identifier: MIT */
/* sona_sync (sona/comm.h): the engines of all ranks merged through the caller's collectives.
 *
 * Under cycle_mu (so no loop B or C cycle changes Base-LoRA between the gather and the commit):
 *   1. all-gather a header per rank: shape, trajectories learned since its last sync, counters;
 *      every rank checks the same gathered headers, so all refuse a shape mismatch alike;
 *   2. Base-LoRA into new buffers: SONA_SYNC_SKETCH all-reduces each rank's share of two
 *      sketches a layer (sums exact as integers in floats: the same bits on every rank);
 *      SONA_SYNC_EXACT all-gathers every rank's factors and merges each layer in rank order
 *      (core/adapt/merge.h, deterministic: the same bits from the same bytes); both turned
 *      back to the last sync's coordinates where every rank has it;
 *   3. the tenants live on two ranks or more (all-gathered, merged exactly), Base-LoRA's
 *      EWC++ (Fisher all-reduced, into a fresh sona_ewc), the pattern bank (records
 *      all-gathered, a fresh bank built alike on every rank);
 *   4. all-gather each rank's status, so a rank that failed locally (memory) stops them all;
 *   5. commit: import the merged weights and publish them (a failure there puts the old
 *      weights back), swap in the EWC++ state and the bank, keep S (what this sync left).
 * A failure in 1-4 returns before anything of the engine changed. */
#include "engine/base.h"

#include "common/scratch.h"

#include "core/adapt/lora_internal.h"
#include "core/adapt/merge.h"
#include "dispatch/vecmath.h"
#include "sona/comm.h"

#include <math.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define SYNC_MAGIC 0x534f4e4153594e43ull /* "SONASYNC": a rank running another protocol */

/* What the last sync left (SONA_SYNC_CHANGES' S), the same bits on every rank that took part:
 * Base-LoRA (A then Bt), and the tenants it merged (valid[i]) with their slot's generation. */
struct eng_sync {
    int have;         /* 0 before the first sync (and after a commit that failed half-way) */
    float *base;      /* 2 x layers x rank x hidden */
    float *base_prev; /* SONA_SYNC_PACED: the S before (P), where base_prev_have */
    int base_prev_have;
    double base_gain; /* the gain of the merge that left S (from P) */
    double merge_s;   /* this sync's merge arithmetic, this thread's CPU seconds (merge_us) */
    float *tenants;   /* max_tenants x 2 x micro_rank x hidden */
    float *tenants_prev; /* SONA_SYNC_PACED: each slot's S before (P), where prev[i] */
    unsigned char *prev;
    double *gain;        /* the gain of the merge that left the slot's S (from P) */
    float *tenant_tf;    /* EWC++: each merged tenant's task Fisher sum the last sync left */
    unsigned char *tenant_tf_have; /* 1: it holds tasks (else none were) */
    uint64_t *gen;
    unsigned char *valid;
    float *fisher_tasks; /* EWC++: Base-LoRA's task Fisher sum the last sync left */
    int fisher_have;     /* 1: it holds tasks (else none were) */
    unsigned char *bank; /* the pattern bank's records the last sync left, sorted by id */
    size_t bank_bytes;
    uint64_t bank_next;  /* the id its next new pattern takes */
    int bank_have;
    sona_scratch sketch_mem; /* the sketched merge's working memory, kept between syncs */
};

void eng_sync_free(struct eng_sync *s)
{
    if (!s)
        return;
    free(s->tenants_prev), free(s->prev), free(s->gain), free(s->base_prev), free(s->tenant_tf),
        free(s->tenant_tf_have);
    free(s->base), free(s->tenants), free(s->gen), free(s->valid), free(s->fisher_tasks), free(s->bank);
    sona_scratch_free(&s->sketch_mem);
    free(s);
}

static struct eng_sync *sync_alloc(const sona_engine_config *c)
{
    struct eng_sync *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->base = malloc(2 * (size_t)c->base_layers * c->base_rank * c->hidden * sizeof *s->base);
    s->tenants = malloc(2 * (size_t)c->max_tenants * c->micro_rank * c->hidden * sizeof *s->tenants);
    s->gen = calloc(c->max_tenants, sizeof *s->gen);
    s->tenants_prev = malloc(2 * (size_t)c->max_tenants * c->micro_rank * c->hidden *
                             sizeof *s->tenants);
    s->prev = calloc(c->max_tenants, 1);
    s->tenant_tf = malloc(2 * (size_t)c->max_tenants * c->micro_rank * c->hidden * sizeof *s->tenants);
    s->tenant_tf_have = calloc(c->max_tenants, 1);
    s->base_prev = malloc(2 * (size_t)c->base_layers * c->base_rank * c->hidden * sizeof *s->base);
    s->gain = calloc(c->max_tenants, sizeof *s->gain);
    s->valid = calloc(c->max_tenants, 1);
    s->fisher_tasks = malloc(2 * (size_t)c->base_layers * c->base_rank * c->hidden *
                             sizeof *s->fisher_tasks);
    if (!s->tenants_prev || !s->prev || !s->gain || !s->base_prev || !s->tenant_tf ||
        !s->tenant_tf_have || !s->base || !s->tenants ||
        !s->gen || !s->valid || !s->fisher_tasks) {
        eng_sync_free(s);
        return NULL;
    }
    return s;
}

/* The live byte a rank sends per tenant slot. */
enum { SLOT_FREE = 0, SLOT_LIVE = 1, SLOT_SYNCED = 2 /* live, and S holds it */,
       SLOT_STATE = 3, /* the bits above */
       SLOT_TASKS = 4 /* or'ed in: its EWC++ holds task snapshots */ };

/* The merge's own arithmetic (the rank-r re-factorisation: the sketch's basis, products,
 * orthonormalisation, finish and turn back, or the exact merges) in the syncing thread's CPU
 * seconds, summed in eng_sync.merge_s for sona_sync_result.merge_us. */
static double thread_cpu_s(void) { return sona_clock_s(CLOCK_THREAD_CPUTIME_ID); }
/* merge_clock(&t0) at the start of a stretch of merge arithmetic, merge_clock_end(t0) at its
 * end (no collective in between). */
static void merge_clock(double *t0) { *t0 = thread_cpu_s(); }
static void merge_clock_end(sona_engine *e, double t0) { e->sync->merge_s += thread_cpu_s() - t0; }

/* The counters of sona_stats, as they travel (uint64 each; the two floats as their bits). */
enum { SYNC_COUNTERS = 22 };
/* Every field of sona_stats travels: 21 counters, tenants, two floats, one counter more. A
 * field added there moves one of these and stops the build here until it is added below. */
_Static_assert(offsetof(sona_stats, tenants) == 21 * sizeof(uint64_t) &&
                   offsetof(sona_stats, inputs_out_of_range) <=
                       offsetof(sona_stats, last_phi) + sizeof(uint64_t) &&
                   sizeof(sona_stats) == offsetof(sona_stats, inputs_out_of_range) + sizeof(uint64_t),
               "sona_stats changed: update sync.c's counter list");
/* What every rank gathers first. Its size never changes (fields to come take the padding), so
 * ranks of different libsona versions still meet in a well-formed all-gather and can refuse
 * each other; SYNC_PROTOCOL says what the fields after it mean and grows with any change to
 * the header or to the collectives that follow it. */
#define SYNC_PROTOCOL 2u
#define SYNC_HEADER_BYTES 512u
typedef union sync_header {
    struct {
        uint64_t magic, protocol;
        uint64_t hidden, layers, rank, alpha_bits, tenants_max, micro_rank, micro_alpha_bits;
        uint64_t learned, has_last;
        uint64_t merge, has_prev; /* the sync's merge mode; S's P (SONA_SYNC_PACED's last move) */
        uint64_t counters[SYNC_COUNTERS];
        uint64_t tenants, quality_bits, phi_bits;
        uint64_t ewc, ewc_tasks; /* EWC++ on; Base-LoRA's task snapshots */
    };
    unsigned char bytes[SYNC_HEADER_BYTES];
} sync_header;
_Static_assert(sizeof(sync_header) == SYNC_HEADER_BYTES, "the sync header outgrew its fixed size");

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
        cfg->merge = SONA_SYNC_PACED;
        cfg->method = SONA_SYNC_SKETCH;
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
                              const float *last, const float *basis, const float *mine,
                              float *A_new, float *Bt_new, double *err, sona_status *local)
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
    double total = 0.0, tail = 0.0, t0;
    sona_status merged = SONA_OK;
    merge_clock(&t0);
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
        if (merged == SONA_OK && basis && !info.copied) /* S's coordinates kept */
            merged = sona_lora_align((uint32_t)H, (uint32_t)r, basis + l * r * H,
                                     A_new + l * r * H, Bt_new + l * r * H);
        total += info.total;
        tail += info.tail;
    }
    merge_clock_end(e, t0);
    free(all), free(pa);
    *err = total > 0.0 ? sqrt(tail / total) : 0.0;
    if (merged != SONA_OK && *local == SONA_OK)
        *local = eng_fail(e, merged, "%s: merging Base-LoRA failed", __func__);
    return SONA_OK;
}

/* ---- SONA_SYNC_SKETCH: Base-LoRA through two all-reduces a layer ---------------------------- */

/* FNV-1a over a layer's bytes: equal layers on every rank (nothing learned since) are copied. */
static uint64_t layer_hash(const float *A, const float *Bt, size_t n)
{
    uint64_t x = 0xcbf29ce484222325ull;
    for (int f = 0; f < 2; f++) {
        const float *p = f ? Bt : A;
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &p[i], sizeof u);
            x = (x ^ u) * 0x100000001b3ull;
        }
    }
    return x;
}

/* data (rows x H doubles) summed over the ranks, the same bits on every rank whatever order
 * the all-reduce adds in: each row travels as integers in floats, scaled by a power of two
 * that keeps every partial sum below 2^24 (so every addition is exact): the ranks' maxima are
 * gathered first, and the bound is their sum. The rounding to integers costs at most
 * 2^-24 x (sum of the ranks' maxima) an entry. tmp: rows x H floats. */
static sona_status exact_allreduce(sona_engine *e, sona_comm *comm, uint32_t k, double *data,
                                   size_t rows, size_t H, float *tmp)
{
    float *mx = malloc(((size_t)k + 1) * rows * sizeof *mx);
    if (!mx)
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
    float *mine = mx + (size_t)k * rows;
    for (size_t j = 0; j < rows; j++) {
        double m = 0.0;
        for (size_t h = 0; h < H; h++) {
            const double a = fabs(data[j * H + h]);
            m = a > m ? a : m;
        }
        mine[j] = (float)m * (1.0f + 0x1p-20f); /* rounded up: a bound still */
    }
    sona_status st = sona_comm_allgather(comm, mine, rows * sizeof *mine, mx);
    if (st != SONA_OK) {
        free(mx);
        return eng_fail(e, st, "%s: gathering maxima: %s", __func__, sona_comm_last_error(comm));
    }
    double *scale = malloc(rows * sizeof *scale);
    if (!scale) {
        free(mx);
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
    }
    for (size_t j = 0; j < rows; j++) {
        double bound = 0.0;
        for (uint32_t i = 0; i < k; i++)
            bound += mx[i * rows + j];
        int ex = 0;
        frexp(bound, &ex); /* bound < 2^ex */
        scale[j] = bound > 0.0 ? ldexp(1.0, 23 - ex) : 0.0; /* sum of |ints| < 2^23 + k/2 */
        /* Rounded to the nearest integer by the 1.5 x 2^52 trick (|x| < 2^24 here), which
         * vectorises where rint() is a call. */
        const double magic = 0x1.8p52;
        for (size_t h = 0; h < H; h++)
            tmp[j * H + h] = (float)((data[j * H + h] * scale[j] + magic) - magic);
    }
    free(mx);
    st = sona_comm_allreduce_sum(comm, tmp, rows * H);
    if (st != SONA_OK) {
        free(scale);
        return eng_fail(e, st, "%s: all-reduce: %s", __func__, sona_comm_last_error(comm));
    }
    for (size_t j = 0; j < rows; j++) {
        const double inv = scale[j] > 0.0 ? 1.0 / scale[j] : 0.0; /* a power of two: exact */
        for (size_t h = 0; h < H; h++)
            data[j * H + h] = (double)tmp[j * H + h] * inv;
    }
    free(scale);
    return SONA_OK;
}

/* The sketch's width for a rank: a few directions beyond it, for what the ranks' changes add. */
static size_t sketch_width(size_t r, size_t H)
{
    const size_t l = r + (r / 4 > 2 ? r / 4 : 2);
    return l < H ? l : H;
}

/* A layer's factors in a sketch product: this rank's (mine: A then Bt, of L layers of rh
 * floats), and S's (last, when there is one) where with_s: the terms' count. */
static uint32_t product_terms(const float *mine, const float *last, size_t L, size_t rh, size_t layer,
                              int with_s, const float *pa[2], const float *pb[2])
{
    pa[0] = mine + layer * rh, pb[0] = mine + L * rh + layer * rh;
    pa[1] = last ? last + layer * rh : NULL, pb[1] = last ? last + L * rh + layer * rh : NULL;
    return last && with_s ? 2 : 1;
}

/* Steps 2-3 for SONA_SYNC_SKETCH: the merge of every layer into A_new and Bt_new from this
 * rank's weights (mine: A then Bt) of weight w[rank], and S (last: A then Bt, or NULL) of
 * weight w_last added by every rank alike. basis: S's A when every rank has it (Omega starts
 * from it, the merge is turned back to its coordinates), else NULL: rank 0's A then. */
static sona_status sketch_base(sona_engine *e, sona_comm *comm, uint32_t k, uint32_t rank,
                               const double *w, const float *last, double w_last,
                               const float *basis, const float *mine, float *A_new,
                               float *Bt_new, double *err, sona_status *local)
{
    const size_t H = e->cfg.hidden, r = e->cfg.base_rank, L = e->cfg.base_layers;
    const size_t l = sketch_width(r, H), rh = r * H, lh = l * H;
    /* Per layer and rank: the layer's hash and |A|_F^2 (for a0), gathered. */
    uint64_t *hd = malloc(2 * L * ((size_t)k + 1) * sizeof *hd);
    size_t *todo = malloc(L * sizeof *todo);
    if (!hd || !todo) {
        free(hd), free(todo);
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
    }
    uint64_t *me = hd + 2 * L * k;
    for (size_t l2 = 0; l2 < L; l2++) {
        const float *A = mine + l2 * rh;
        double a2 = 0.0;
        for (size_t i = 0; i < rh; i++)
            a2 += (double)A[i] * A[i];
        me[2 * l2] = layer_hash(A, mine + L * rh + l2 * rh, rh);
        memcpy(&me[2 * l2 + 1], &a2, sizeof a2);
    }
    sona_status st = sona_comm_allgather(comm, me, 2 * L * sizeof *me, hd);
    if (st != SONA_OK) {
        free(hd), free(todo);
        return eng_fail(e, st, "%s: gathering layer digests: %s", __func__,
                        sona_comm_last_error(comm));
    }
    /* Layers equal on every rank (and to S, when S counts) are copies; the rest are merged. */
    size_t n = 0;
    double total = 0.0, tail = 0.0;
    for (size_t l2 = 0; l2 < L; l2++) {
        int same = 1;
        for (uint32_t i = 1; i < k; i++)
            same &= hd[2 * (i * L + l2)] == hd[2 * l2];
        if (last && same)
            same = layer_hash(last + l2 * rh, last + L * rh + l2 * rh, rh) == hd[2 * l2];
        if (same) {
            const float *pa[1] = {mine + l2 * rh}, *pb[1] = {mine + L * rh + l2 * rh};
            sona_merge_info info;
            sona_lora_merge((uint32_t)H, (uint32_t)r, 1, pa, pb, NULL, A_new + l2 * rh,
                            Bt_new + l2 * rh, &info);
            total += info.total;
        } else
            todo[n++] = l2;
    }
    /* Omega, Y, Z and the all-reduce's integers: kept between syncs (common/scratch.h), or each
     * sync faulted some 7 000 fresh pages in (at 12 x 4096 x 16), inside the merge's time. */
    const size_t sketch_bytes = n * lh * (3 * sizeof(double) + sizeof(float));
    double *om = n ? sona_scratch_get(&e->sync->sketch_mem, sketch_bytes) : NULL;
    if (n && !om) {
        free(hd), free(todo);
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
    }
    double *Y = om + n * lh, *Z = Y + n * lh;
    float *tmp = (float *)(void *)(Z + n * lh);
    sona_status fail = SONA_OK; /* a local failure: goes on through the collectives */
    /* No S on some rank (a first sync): rank 0's A, the same bits everywhere (an all-reduce
     * where the others add zeros: exact in any order), takes S's place in Omega and as the
     * coordinates to turn back to. Half of Base-LoRA's all-reduce more, once. */
    float *bcast = NULL;
    if (!basis && n && k > 1) {
        bcast = calloc(L * rh, sizeof *bcast);
        if (!bcast) {
            free(hd), free(todo);
            sona_scratch_done(&e->sync->sketch_mem, sketch_bytes);
            return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
        }
        if (rank == 0)
            memcpy(bcast, mine, L * rh * sizeof *bcast);
        st = sona_comm_allreduce_sum(comm, bcast, L * rh);
        if (st != SONA_OK) {
            free(hd), free(todo), free(bcast);
            sona_scratch_done(&e->sync->sketch_mem, sketch_bytes);
            return eng_fail(e, st, "%s: rank 0's A: %s", __func__, sona_comm_last_error(comm));
        }
        basis = bcast;
    }
    /* S's share of a layer's products (the same on every rank) is computed by one rank, layer
     * t's by rank t mod k, and added to that rank's own before the sums: each rank makes 1 / k
     * of S's products. (Added after the sums by every rank, it was half of each rank's
     * products; inside the sums it counts in their integer scale, 2^-24 of the sum of the
     * ranks' largest entries, as the ranks' own shares always did.) */
    const double wS[2] = {w[rank], w_last};
    double t0;
    merge_clock(&t0);
    for (size_t t = 0; t < n && fail == SONA_OK; t++) {
        const size_t l2 = todo[t];
        fail = sona_sketch_basis((uint32_t)H, (uint32_t)l, (uint32_t)r,
                                 basis ? basis + l2 * rh : NULL, 0x5359u + l2, om + t * lh);
        memset(Y + t * lh, 0, lh * sizeof *Y);
        const float *pa[2], *pb[2];
        const uint32_t terms = product_terms(mine, last, L, rh, l2, t % k == rank, pa, pb);
        if (fail == SONA_OK)
            fail = sona_sketch_product((uint32_t)H, (uint32_t)r, terms, pa, pb, wS, (uint32_t)l,
                                       om + t * lh, 0, Y + t * lh);
    }
    merge_clock_end(e, t0);
    if (n)
        st = exact_allreduce(e, comm, k, Y, n * l, H, tmp);
    merge_clock(&t0);
    for (size_t t = 0; t < n && st == SONA_OK && fail == SONA_OK; t++) {
        const size_t l2 = todo[t];
        sona_sketch_orthonormalize((uint32_t)H, (uint32_t)l, Y + t * lh); /* Y becomes Q */
        memset(Z + t * lh, 0, lh * sizeof *Z);
        const float *pa[2], *pb[2];
        const uint32_t terms = product_terms(mine, last, L, rh, l2, t % k == rank, pa, pb);
        if (fail == SONA_OK)
            fail = sona_sketch_product((uint32_t)H, (uint32_t)r, terms, pa, pb, wS, (uint32_t)l,
                                       Y + t * lh, 1, Z + t * lh);
    }
    merge_clock_end(e, t0);
    if (n && st == SONA_OK)
        st = exact_allreduce(e, comm, k, Z, n * l, H, tmp);
    merge_clock(&t0);
    for (size_t t = 0; t < n && st == SONA_OK && fail == SONA_OK; t++) {
        const size_t l2 = todo[t];
        /* a0: the RMS row norm of A over every rank's (and S's) rows, summed in rank order. */
        double a2 = 0.0, rows = (double)k * r;
        for (uint32_t i = 0; i < k; i++) {
            double v;
            memcpy(&v, &hd[2 * (i * L + l2) + 1], sizeof v);
            a2 += v;
        }
        if (last) {
            for (size_t i = 0; i < rh; i++)
                a2 += (double)last[l2 * rh + i] * last[l2 * rh + i];
            rows += (double)r;
        }
        /* Turned to S's coordinates where every rank has S (EWC++ is per coordinate). */
        sona_merge_info info = {0};
        if (fail == SONA_OK)
            fail = sona_sketch_finish((uint32_t)H, (uint32_t)r, (uint32_t)l, Y + t * lh,
                                      Z + t * lh, om + t * lh, sqrt(a2 / rows),
                                      basis ? basis + l2 * rh : NULL, A_new + l2 * rh,
                                      Bt_new + l2 * rh, &info);
        total += info.total;
        tail += info.tail;
    }
    merge_clock_end(e, t0);
    free(hd), free(todo), free(bcast);
    sona_scratch_done(&e->sync->sketch_mem, sketch_bytes);
    if (st != SONA_OK)
        return st;
    *err = total > 0.0 ? sqrt(tail / total) : 0.0;
    if (fail != SONA_OK && *local == SONA_OK)
        *local = eng_fail(e, fail, "%s: merging Base-LoRA failed", __func__);
    return SONA_OK;
}

/* EWC++ of Base-LoRA, so that every rank protects what any rank learned, the same bits on
 * every rank: the running Fisher becomes the ranks' average (the Fisher of all their traffic),
 * and the task snapshots one task anchored at the merged weights theta (A then Bt) whose
 * Fisher is what the last sync left, F_S, plus every rank's tasks' change since:
 * sum_i F_i - (k - 1) F_S (F_i: rank i's sum over its tasks; no F_S: sum_i F_i), at least 0.
 * Built into *fresh (a new sona_ewc, the detector kept, it is this rank's traffic's) and
 * tasks_out (the new task Fisher, for S), committed by the caller. */
static sona_status sync_ewc(sona_engine *e, sona_comm *comm, uint32_t k, const sync_header *h,
                            int all_have, const float *theta, sona_ewc **fresh, float *tasks_out,
                            int *has_tasks, sona_status *local)
{
    *fresh = NULL;
    *has_tasks = 0;
    if (!e->base_ewc)
        return SONA_OK;
    const size_t H = e->cfg.hidden, n = 2 * (size_t)e->cfg.base_layers * e->cfg.base_rank * H;
    const size_t rows = n / H;
    const sona_ewc *old = eng_ewc_state(e->base_ewc);
    const struct eng_sync *S = e->sync;
    const int from_last = S->have && S->fisher_have && all_have;
    int any = 0; /* the same on every rank: S->fisher_have is, where every rank has S */
    for (uint32_t i = 0; i < k; i++)
        any |= h[i].ewc_tasks > 0;
    any |= from_last;
    double *d = malloc(n * sizeof *d);
    float *tmp = malloc(n * sizeof *tmp);
    if (!d || !tmp) {
        free(d), free(tmp);
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
    }
    const float *f = sona_ewc_fisher((sona_ewc *)(uintptr_t)old);
    for (size_t i = 0; i < n; i++)
        d[i] = f[i];
    sona_status st = exact_allreduce(e, comm, k, d, rows, H, tmp);
    /* After a local failure (the merge's) theta may be unset: go on through the collectives
     * only. */
    sona_status fail = *local != SONA_OK ? *local : sona_ewc_create(sona_ewc_get_config(old), fresh);
    if (st == SONA_OK && fail == SONA_OK) {
        float *fr = sona_ewc_fisher(*fresh);
        for (size_t i = 0; i < n; i++)
            fr[i] = (float)(d[i] / k);
    }
    if (st == SONA_OK && any) {
        const float *fsum = NULL, *ftheta = NULL;
        float lambda;
        sona_ewc_penalty(old, &fsum, &ftheta, &lambda);
        for (size_t i = 0; i < n; i++)
            d[i] = fsum ? fsum[i] : 0.0;
        st = exact_allreduce(e, comm, k, d, rows, H, tmp);
        if (st == SONA_OK && tasks_out) {
            for (size_t i = 0; i < n; i++) {
                const double v = d[i] - (from_last ? (double)(k - 1) * S->fisher_tasks[i] : 0.0);
                tasks_out[i] = v > 0.0 ? (float)v : 0.0f;
            }
            *has_tasks = 1;
            if (fail == SONA_OK)
                fail = sona_ewc_add_task(*fresh, theta, tasks_out, (uint32_t)n);
        }
    }
    sona_ewc_detector det;
    if (st == SONA_OK && fail == SONA_OK && (fail = sona_ewc_get_detector(old, &det)) == SONA_OK)
        fail = sona_ewc_set_detector(*fresh, &det);
    free(d), free(tmp);
    if (st != SONA_OK || fail != SONA_OK) {
        sona_ewc_destroy(*fresh);
        *fresh = NULL;
    }
    if (st != SONA_OK)
        return st;
    if (fail != SONA_OK && *local == SONA_OK)
        *local = eng_fail(e, fail, "%s: building the merged EWC++ state failed", __func__);
    return SONA_OK;
}

/* ---- the pattern bank -------------------------------------------------------------------------
 * Every rank sends, per live pattern, a record: whole (centroid and route statistics) when it
 * is new since the last sync or learned since (size, weight or quality moved), else its head
 * only (its access statistics). Every rank then builds the same bank from the gathered records:
 * a pattern the last sync left (S) becomes S plus every rank's change since (size, weight,
 * accesses and route counts summed as changes, centroid and qualities as size-weighted means
 * of them), one no rank holds any more is gone, and the new ones follow in rank order, then id
 * order, numbered from the next id the last sync left, so ids stay unique across ranks. The
 * bank is then consolidated as loop C does (neighbours with cosine >= merge_cosine merge, no
 * decay): what several ranks found apart becomes one pattern. */
#define ROUTE_NAME 64 /* the bank's route names, terminator included */

typedef struct bank_head {
    uint64_t id, size, access, created, last_access;
    double weight;
    float quality;
    uint32_t routes;
    uint32_t whole, pad;
} bank_head;

typedef struct bank_route {
    char name[ROUTE_NAME];
    uint64_t count;
    float quality;
    uint32_t pad;
} bank_route;

/* A centroid's bytes in a record, padded so that the next record's head stays aligned. */
static size_t cen_bytes(size_t dim)
{
    return (dim * sizeof(float) + 7) & ~(size_t)7;
}

static size_t rec_bytes(const bank_head *h, size_t dim)
{
    return sizeof *h + (h->whole ? cen_bytes(dim) + h->routes * sizeof(bank_route) : 0);
}

/* The records in blob (bytes long), as pointers: *n of them. NULL when out of memory. */
static const bank_head **parse_recs(const unsigned char *blob, size_t bytes, size_t dim, size_t *n)
{
    size_t c = 0;
    for (size_t o = 0; o + sizeof(bank_head) <= bytes; c++)
        o += rec_bytes((const bank_head *)(const void *)(blob + o), dim);
    const bank_head **v = malloc((c ? c : 1) * sizeof *v);
    if (!v)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < c; i++) {
        v[i] = (const bank_head *)(const void *)(blob + o);
        o += rec_bytes(v[i], dim);
    }
    *n = c;
    return v;
}

static const bank_head *find_rec(const bank_head *const *v, size_t n, uint64_t id)
{
    size_t lo = 0, hi = n; /* v sorted by id */
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (v[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && v[lo]->id == id ? v[lo] : NULL;
}

static int cmp_pattern(const void *a, const void *b)
{
    const sona_pattern *x = *(const sona_pattern *const *)a, *y = *(const sona_pattern *const *)b;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* A bank's live patterns as records, sorted by id: whole ones, or heads only where the pattern
 * is S's (last: S's records) and learned nothing since. */
static sona_status bank_records(const sona_bank *b, size_t dim, const bank_head *const *last,
                                size_t nlast, unsigned char **out, size_t *bytes)
{
    const uint32_t n = sona_bank_pattern_count(b);
    sona_pattern *p = malloc((n ? n : 1) * sizeof *p);
    size_t cap = (size_t)n * (sizeof(bank_head) + cen_bytes(dim)) + 64, used = 0;
    unsigned char *blob = malloc(cap);
    float *c = malloc(dim * sizeof *c);
    const sona_pattern **order = malloc((n ? n : 1) * sizeof *order);
    sona_status st = p && blob && c && order ? SONA_OK : SONA_E_NOMEM;
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        st = sona_bank_pattern_at(b, i, &p[i], NULL);
        order[i] = &p[i];
    }
    if (st == SONA_OK)
        qsort(order, n, sizeof *order, cmp_pattern);
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        const sona_pattern *q = order[i];
        const bank_head *s = last ? find_rec(last, nlast, q->id) : NULL;
        bank_head h = {q->id, q->size, q->access_count, q->created_ms, q->last_access_ms,
                       q->total_weight, q->avg_quality, q->route_count, 1, 0};
        if (s && s->size == q->size && s->weight == q->total_weight &&
            s->quality == q->avg_quality)
            h.whole = 0;
        const size_t need = rec_bytes(&h, dim);
        if (used + need > cap) {
            cap = 2 * (used + need);
            unsigned char *grown = realloc(blob, cap);
            if (!grown) {
                st = SONA_E_NOMEM;
                break;
            }
            blob = grown;
        }
        memset(blob + used, 0, need); /* padding included: the bytes travel */
        memcpy(blob + used, &h, sizeof h);
        if (h.whole) {
            st = sona_bank_pattern_get(b, q->id, NULL, c);
            memcpy(blob + used + sizeof h, c, dim * sizeof *c);
            bank_route *r = (bank_route *)(void *)(blob + used + sizeof h + cen_bytes(dim));
            for (uint32_t j = 0; j < h.routes && st == SONA_OK; j++) {
                const char *name = NULL;
                memset(&r[j], 0, sizeof r[j]);
                st = sona_bank_pattern_route(b, q->id, j, &name, &r[j].count, &r[j].quality);
                if (st == SONA_OK && name)
                    strncpy(r[j].name, name, ROUTE_NAME - 1);
            }
        }
        used += need;
    }
    free(p), free(c), free(order);
    if (st != SONA_OK) {
        free(blob);
        return st;
    }
    *out = blob;
    *bytes = used;
    return SONA_OK;
}

/* Adds to the route list (names, counts as double, count x quality sums) the change of one
 * version's routes from S's (s: S's record or NULL). */
typedef struct route_acc {
    char name[ROUTE_NAME];
    double count, qsum;
} route_acc;

static route_acc *route_add(route_acc *acc, size_t *n, size_t *cap, const char *name, double count,
                            double qsum)
{
    for (size_t i = 0; i < *n; i++)
        if (!strcmp(acc[i].name, name)) {
            acc[i].count += count;
            acc[i].qsum += qsum;
            return acc;
        }
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 8;
        route_acc *g = realloc(acc, *cap * sizeof *g);
        if (!g)
            return NULL;
        acc = g;
    }
    memset(&acc[*n], 0, sizeof acc[*n]);
    memcpy(acc[*n].name, name, ROUTE_NAME);
    acc[*n].name[ROUTE_NAME - 1] = 0;
    acc[*n].count = count;
    acc[*n].qsum = qsum;
    (*n)++;
    return acc;
}

static const bank_route *routes_of(const bank_head *h, size_t dim)
{
    return (const bank_route *)(const void *)((const unsigned char *)(h + 1) + cen_bytes(dim));
}

/* One pattern into fresh: S's record s (or NULL for a new pattern, then v[0] alone), the
 * versions v[0..nv) (NULL where a rank has none), as id. */
static sona_status restore_one(sona_bank *fresh, size_t dim, const bank_head *s,
                               const bank_head *const *v, uint32_t nv, uint64_t id, double *c,
                               float *cf)
{
    const bank_head *base = s ? s : NULL;
    double size = base ? (double)base->size : 0.0, weight = base ? base->weight : 0.0;
    double qsum = base ? (double)base->size * base->quality : 0.0, access = base ? (double)base->access : 0.0;
    uint64_t created = UINT64_MAX, last_access = 0;
    const float *c0 = base ? (const float *)(const void *)(base + 1) : NULL;
    for (size_t d = 0; d < dim; d++)
        c[d] = base ? (double)base->size * c0[d] : 0.0;
    size_t nr = 0, cap = 0;
    route_acc *acc = NULL;
    if (base) {
        const bank_route *r = routes_of(base, dim);
        for (uint32_t j = 0; j < base->routes; j++)
            if (!(acc = route_add(acc, &nr, &cap, r[j].name, (double)r[j].count,
                                  (double)r[j].count * r[j].quality)))
                return SONA_E_NOMEM;
    }
    for (uint32_t i = 0; i < nv; i++) {
        const bank_head *h = v[i];
        if (!h)
            continue;
        created = h->created < created ? h->created : created;
        last_access = h->last_access > last_access ? h->last_access : last_access;
        access += base ? ((double)h->access - (double)base->access) : (double)h->access;
        if (!h->whole)
            continue; /* S's, learned nothing since */
        const double bs = base ? (double)base->size : 0.0;
        size += (double)h->size - bs;
        weight += h->weight - (base ? base->weight : 0.0);
        qsum += (double)h->size * h->quality - (base ? bs * base->quality : 0.0);
        const float *ci = (const float *)(const void *)(h + 1);
        for (size_t d = 0; d < dim; d++)
            c[d] += (double)h->size * ci[d] - (base ? bs * c0[d] : 0.0);
        const bank_route *r = routes_of(h, dim);
        for (uint32_t j = 0; j < h->routes; j++)
            if (!(acc = route_add(acc, &nr, &cap, r[j].name, (double)r[j].count,
                                  (double)r[j].count * r[j].quality)))
                return SONA_E_NOMEM;
        if (base) { /* S's routes once: take them off each version that holds them */
            const bank_route *r0 = routes_of(base, dim);
            for (uint32_t j = 0; j < base->routes; j++)
                if (!(acc = route_add(acc, &nr, &cap, r0[j].name, -(double)r0[j].count,
                                      -(double)r0[j].count * r0[j].quality)))
                    return SONA_E_NOMEM;
        }
    }
    if (size < 1.0)
        size = 1.0;
    for (size_t d = 0; d < dim; d++)
        cf[d] = (float)(c[d] / size);
    const sona_pattern p = {id, (uint64_t)size, weight > 0.0 ? weight : 0.0,
                            (float)(qsum / size), access > 0.0 ? (uint64_t)access : 0,
                            created == UINT64_MAX ? 0 : created, last_access, 0};
    sona_status st = sona_bank_pattern_restore(fresh, &p, cf);
    for (size_t j = 0; j < nr && st == SONA_OK; j++)
        if (acc[j].count >= 1.0)
            st = sona_bank_pattern_restore_route(fresh, id, acc[j].name, (uint64_t)acc[j].count,
                                                 (float)(acc[j].qsum / acc[j].count));
    free(acc);
    return st;
}

/* The merged bank of every rank into *out (NULL: the bank is not synced, nothing to do), with
 * its records for S in *rec / *rec_bytes. */
static sona_status merge_bank(sona_engine *e, sona_comm *comm, uint32_t k, int all_have,
                              sona_bank **out, unsigned char **rec, size_t *rec_bytes,
                              sona_status *local)
{
    *out = NULL;
    *rec = NULL;
    const size_t dim = e->cfg.hidden;
    const struct eng_sync *S = e->sync;
    /* S's records only where every rank has S (then all have the same, bank_have included):
     * every rank must build from the same inputs. */
    const int have = all_have && S->have && S->bank_have;
    size_t nlast = 0;
    const bank_head **last = have ? parse_recs(S->bank, S->bank_bytes, dim, &nlast) : NULL;
    unsigned char *mine = NULL;
    size_t bytes = 0;
    sona_status fail = have && !last ? SONA_E_NOMEM
                                     : bank_records(e->bank, dim, last, nlast, &mine, &bytes);
    if (fail != SONA_OK)
        bytes = 0;
    /* Sizes, then the records padded to the largest. */
    uint64_t *sizes = malloc(((size_t)k + 1) * sizeof *sizes);
    if (!sizes) {
        free(last), free(mine);
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
    }
    sizes[k] = bytes;
    sona_status st = sona_comm_allgather(comm, &sizes[k], sizeof *sizes, sizes);
    uint64_t most = 0;
    for (uint32_t i = 0; i < k && st == SONA_OK; i++)
        most = sizes[i] > most ? sizes[i] : most;
    unsigned char *send = NULL, *all = NULL;
    if (st == SONA_OK && most) {
        send = calloc(most, 1);
        all = malloc(most * k);
        if (!send || !all) {
            free(last), free(mine), free(sizes), free(send), free(all);
            return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
        }
        if (bytes)
            memcpy(send, mine, bytes);
        st = sona_comm_allgather(comm, send, most, all);
    }
    free(send), free(mine);
    if (st != SONA_OK) {
        free(last), free(sizes), free(all);
        return eng_fail(e, st, "%s: gathering patterns: %s", __func__, sona_comm_last_error(comm));
    }
    /* Every rank builds the same bank from the same records. */
    const bank_head ***recs = calloc(k, sizeof *recs);
    size_t *nrec = calloc(k, sizeof *nrec), *at = calloc(k, sizeof *at);
    const bank_head **v = malloc(((size_t)k + 1) * sizeof *v);
    double *c = malloc(dim * sizeof *c);
    float *cf = malloc(dim * sizeof *cf);
    sona_bank *fresh = NULL;
    if (fail == SONA_OK && (!recs || !nrec || !at || !v || !c || !cf))
        fail = SONA_E_NOMEM;
    for (uint32_t i = 0; i < k && fail == SONA_OK; i++)
        if (!(recs[i] = parse_recs(all + most * i, sizes[i], dim, &nrec[i])))
            fail = SONA_E_NOMEM;
    if (fail == SONA_OK) {
        /* The index's seed (its graph levels, its rounding) the same on every rank, whatever
         * each engine's seed: the bank is to be the same bit for bit. */
        sona_bank_config bc = *sona_bank_get_config(e->bank);
        bc.index.seed = 0x53594e43u;
        fail = sona_bank_create(&bc, &fresh);
    }
    /* S's patterns, by id: each rank's version where it still holds it. */
    for (size_t j = 0; j < nlast && fail == SONA_OK; j++) {
        uint32_t held = 0;
        for (uint32_t i = 0; i < k; i++) {
            while (at[i] < nrec[i] && recs[i][at[i]]->id < last[j]->id)
                at[i]++;
            v[i] = at[i] < nrec[i] && recs[i][at[i]]->id == last[j]->id ? recs[i][at[i]] : NULL;
            held += v[i] != NULL;
        }
        if (held)
            fail = restore_one(fresh, dim, last[j], v, k, last[j]->id, c, cf);
    }
    /* The new ones (ids S does not have), in rank order then id order, numbered on. */
    uint64_t next = have ? S->bank_next : 1;
    for (uint32_t i = 0; i < k && fail == SONA_OK; i++)
        for (size_t j = 0; j < nrec[i] && fail == SONA_OK; j++)
            if (!(last && find_rec(last, nlast, recs[i][j]->id))) {
                v[0] = recs[i][j];
                fail = restore_one(fresh, dim, NULL, v, 1, next++, c, cf);
            }
    sona_bank *merged = NULL;
    if (fail == SONA_OK) {
        sona_bank_stats counters;
        fail = sona_bank_stats_get(e->bank, &counters); /* this rank's own */
        const uint64_t top = sona_bank_next_id(fresh);
        if (fail == SONA_OK)
            fail = sona_bank_restore_counters(fresh, &counters, next > top ? next : top);
        uint32_t away = 0;
        if (fail == SONA_OK)
            fail = sona_bank_consolidate(fresh, e->cfg.merge_cosine, 1.0f, &merged, &away);
    }
    if (fail == SONA_OK)
        fail = bank_records(merged, dim, NULL, 0, rec, rec_bytes);
    sona_bank_destroy(fresh);
    for (uint32_t i = 0; recs && i < k; i++)
        free(recs[i]);
    free(recs), free(nrec), free(at), free(v), free(c), free(cf), free(last), free(sizes), free(all);
    if (fail != SONA_OK) {
        sona_bank_destroy(merged);
        free(*rec);
        *rec = NULL;
        if (*local == SONA_OK)
            *local = eng_fail(e, fail, "%s: merging the pattern bank failed", __func__);
        return SONA_OK;
    }
    *out = merged;
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
 * only is left alone, and none is created). A byte per slot saying whether it is live is
 * gathered first; then every rank sends each slot live on two ranks or more (zeros where it is
 * not live itself), so blocks have one size and unshared tenants do not travel. The merged adapters
 * go to out (slots x 2 r H: A then Bt per slot), commit[i] = 1 for those this rank takes. */
typedef struct tenant_merge {
    float *mine, *out;      /* this rank's block; the merged adapters */
    unsigned char *commit;  /* [max_tenants] */
    uint64_t *gen;          /* [max_tenants]: each slot's generation when read */
    double *gain;           /* [max_tenants]: SONA_SYNC_PACED's, 0 where not from S */
    uint32_t merged;        /* ids merged (on any rank) */
    /* EWC++ on (else NULL): per slot, the running Fisher then the task Fisher sum (4 af: A
     * then Bt each) as read, its config and detector; the merged state until committed, and
     * the task Fisher sum it holds (for S). */
    float *ewc_mine, *tf;
    unsigned char *has_ewc, *tf_have;
    sona_ewc_config *ewc_cfg;
    sona_ewc_detector *det;
    sona_ewc **fresh;
} tenant_merge;

static void tenant_merge_free(tenant_merge *tm, size_t T)
{
    for (size_t i = 0; tm->fresh && i < T; i++)
        sona_ewc_destroy(tm->fresh[i]);
    free(tm->mine), free(tm->out), free(tm->commit), free(tm->gen), free(tm->gain);
    free(tm->ewc_mine), free(tm->tf), free(tm->has_ewc), free(tm->tf_have), free(tm->ewc_cfg);
    free(tm->det), free(tm->fresh);
}

/* SONA_SYNC_PACED's gain g on the ranks' mean change m since S (the merge is S + g m), for k
 * ranks. The model: in one sync interval a rank closes a fraction 1 - a of the gap G between S
 * and where its traffic leads, so m = (1 - a) G, and one engine seeing all k ranks' traffic would
 * have closed 1 - a^k of it: g = (1 - a^k) / (1 - a) = 1 + a + ... + a^(k-1), from 1 (every
 * rank reached the goal on its own: the average) to k (far from it: the sum of the changes).
 * a is read from the last merge's move D = S - P (P the sync before) made with gain g_last:
 * then the gap was G_last = m_last / (1 - a) with m_last = D / g_last, now G = G_last - D, so
 * <m, D> = (1 - a) <G, D> = |D|^2 / g_last - (1 - a) |D|^2, that is
 * 1 - a = 1 / g_last - <m, D> / |D|^2 (clamped to [0, 1]). A change that turned back against
 * the last move (it overshot) gives a small a, a change that goes on in D's direction a
 * large one. Without a last move (md_dd NAN): k, the sum. */
static double paced_gain(uint32_t k, double g_last, double md, double dd)
{
    if (!(g_last >= 1.0) || !(dd > 0.0) || !isfinite(md))
        return k;
    double q = 1.0 / g_last - md / dd; /* 1 - a */
    q = q < 0.0 ? 0.0 : q > 1.0 ? 1.0 : q;
    const double a = 1.0 - q;
    double g = 0.0, p = 1.0;
    for (uint32_t j = 0; j < k; j++, p *= a)
        g += p;
    return g;
}

/* A merged tenant's EWC++ (slot i, n holders), as Base-LoRA's (sync_ewc): the running Fisher
 * the holders' average, the task snapshots one task anchored at the merged weights whose
 * Fisher is the last sync's plus every holder's new tasks' (from_last: every holder has S for
 * the slot), the detector this rank's own. ewc0: holder blocks' EWC++ part (running Fisher,
 * task Fisher sum), the first rank's, each rank's `block` floats on; summed in rank order, the
 * same bits on every holder. */
static sona_status merge_tenant_ewc(sona_engine *e, tenant_merge *tm, size_t i, uint32_t n,
                                    int from_last, const unsigned char *flags, uint32_t k,
                                    const float *ewc0, size_t block)
{
    const size_t T = e->cfg.max_tenants, af2 = 2 * (size_t)e->cfg.micro_rank * e->cfg.hidden;
    const struct eng_sync *S = e->sync;
    const int tf_from = from_last && S->tenant_tf_have[i];
    sona_ewc *fresh = NULL;
    sona_status st = sona_ewc_create(&tm->ewc_cfg[i], &fresh);
    if (st != SONA_OK)
        return st;
    float *fr = sona_ewc_fisher(fresh), *tf = tm->tf + af2 * i;
    int any = tf_from;
    for (uint32_t r = 0; r < k; r++)
        any |= (flags[r * T + i] & SLOT_TASKS) != 0;
    for (size_t x = 0; x < af2; x++) {
        double f = 0.0, t = 0.0;
        for (uint32_t r = 0; r < k; r++)
            if (flags[r * T + i] != SLOT_FREE) {
                f += ewc0[r * block + x];
                t += ewc0[r * block + af2 + x];
            }
        if (tf_from)
            t -= (double)(n - 1) * S->tenant_tf[af2 * i + x];
        fr[x] = (float)(f / n);
        tf[x] = t > 0.0 ? (float)t : 0.0f;
    }
    tm->tf_have[i] = (unsigned char)any;
    if (any)
        st = sona_ewc_add_task(fresh, tm->out + af2 * i, tf, (uint32_t)af2);
    if (st == SONA_OK)
        st = sona_ewc_set_detector(fresh, &tm->det[i]);
    if (st != SONA_OK) {
        sona_ewc_destroy(fresh);
        return st;
    }
    tm->fresh[i] = fresh;
    return SONA_OK;
}

static sona_status merge_tenants(sona_engine *e, sona_comm *comm, uint32_t k, sona_sync_merge merge,
                                 tenant_merge *tm, sona_status *local)
{
    const size_t T = e->cfg.max_tenants, af = (size_t)e->cfg.micro_rank * e->cfg.hidden;
    const size_t floats = 2 * af * T, head = (T + 3) / 4; /* the live bytes, in floats */
    tm->mine = calloc(head + floats, sizeof *tm->mine);
    tm->out = malloc(floats * sizeof *tm->out);
    tm->commit = calloc(T, 1);
    tm->gen = calloc(T, sizeof *tm->gen);
    tm->gain = calloc(T, sizeof *tm->gain);
    const int ewc = e->base_ewc != NULL; /* EWC++ on: the same on every rank (the header's) */
    const size_t bs = (ewc ? 6 : 2) * af; /* floats a shared slot travels in */
    int ewc_ok = 1;
    if (ewc) {
        tm->ewc_mine = calloc(4 * af * T, sizeof *tm->ewc_mine);
        tm->tf = malloc(2 * af * T * sizeof *tm->tf);
        tm->has_ewc = calloc(T, 1);
        tm->tf_have = calloc(T, 1);
        tm->ewc_cfg = calloc(T, sizeof *tm->ewc_cfg);
        tm->det = calloc(T, sizeof *tm->det);
        tm->fresh = calloc(T, sizeof *tm->fresh);
        ewc_ok = tm->ewc_mine && tm->tf && tm->has_ewc && tm->tf_have && tm->ewc_cfg && tm->det &&
                 tm->fresh;
    }
    unsigned char *flags = malloc(T * (size_t)k);
    size_t *shared = malloc(T * sizeof *shared);
    const float **pa = malloc(2 * ((size_t)k + 1) * sizeof *pa);
    double *w = malloc(((size_t)k + 1) * sizeof *w);
    if (!tm->mine || !tm->out || !tm->commit || !tm->gen || !tm->gain || !ewc_ok || !flags ||
        !shared || !pa || !w) {
        free(w), free(flags), free(shared), free(pa);
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
            if (ewc && t->ewc && st == SONA_OK) { /* read with the weights it goes with */
                const sona_ewc *old = eng_ewc_state(t->ewc);
                float *f = tm->ewc_mine + 4 * af * i;
                memcpy(f, sona_ewc_fisher((sona_ewc *)(uintptr_t)old), 2 * af * sizeof *f);
                const float *fsum = NULL, *ftheta = NULL;
                float lambda;
                sona_ewc_penalty(old, &fsum, &ftheta, &lambda);
                if (fsum)
                    memcpy(f + 2 * af, fsum, 2 * af * sizeof *f);
                tm->ewc_cfg[i] = *sona_ewc_get_config(old);
                st = sona_ewc_get_detector(old, &tm->det[i]);
                tm->has_ewc[i] = st == SONA_OK;
                if (sona_ewc_task_count(old) > 0)
                    live[i] |= SLOT_TASKS; /* a task's Fisher may be all zeros */
            }
        }
        pthread_mutex_unlock(&t->mu);
    }
    if (st != SONA_OK && *local == SONA_OK)
        *local = eng_fail(e, st, "%s: reading a tenant's Micro-LoRA failed", __func__);
    /* The live bytes first: only the slots live on two ranks or more travel. */
    st = sona_comm_allgather(comm, live, T, flags);
    size_t ns = 0;
    for (size_t i = 0; i < T && st == SONA_OK; i++) {
        uint32_t holders = 0;
        for (uint32_t r = 0; r < k; r++)
            holders += flags[r * T + i] != SLOT_FREE;
        if (holders >= 2)
            shared[ns++] = i;
    }
    float *send = NULL, *all = NULL;
    if (st == SONA_OK && ns) {
        send = malloc(bs * ns * sizeof *send);
        all = malloc(bs * ns * (size_t)k * sizeof *all);
        if (!send || !all) {
            free(w), free(flags), free(shared), free(pa), free(send), free(all);
            return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
        }
        for (size_t s = 0; s < ns; s++) {
            memcpy(send + bs * s, tm->mine + head + 2 * af * shared[s], 2 * af * sizeof *send);
            if (ewc)
                memcpy(send + bs * s + 2 * af, tm->ewc_mine + 4 * af * shared[s],
                       4 * af * sizeof *send);
        }
        st = sona_comm_allgather(comm, send, bs * ns * sizeof *send, all);
    }
    if (st != SONA_OK) {
        free(w), free(flags), free(shared), free(pa), free(send), free(all);
        return eng_fail(e, st, "%s: gathering tenants: %s", __func__, sona_comm_last_error(comm));
    }
    const size_t block = bs * ns; /* floats a rank sent */
    sona_status merged = SONA_OK;
    for (size_t s = 0; s < ns && merged == SONA_OK; s++) {
        const size_t i = shared[s];
        uint32_t n = 0, synced = 0;
        for (uint32_t r = 0; r < k; r++) {
            const unsigned char flag = flags[r * T + i];
            if (flag != SLOT_FREE) {
                const float *b = all + r * block + bs * s;
                pa[n] = b;
                pa[k + 1 + n++] = b + af;
                synced += (flag & SLOT_STATE) == SLOT_SYNCED;
            }
        }
        tm->merged++;
        if (!live[i])
            continue;
        /* Changes from S when every holder has it (then each holder's S is the same), else the
         * equal-weight average. */
        const int from_last = merge != SONA_SYNC_AVERAGE && synced == n;
        double g = n; /* SONA_SYNC_CHANGES: S + the sum of the changes */
        if (from_last && merge == SONA_SYNC_PACED) {
            const float *S = e->sync->tenants + 2 * af * i, *P = e->sync->tenants_prev + 2 * af * i;
            double md = NAN, dd = 0.0;
            if (e->sync->prev[i]) { /* <m, D> and |D|^2, D = S - P */
                const uint32_t r = e->cfg.micro_rank;
                const size_t H = e->cfg.hidden;
                const double ss = sona_lora_product_dot(H, r, S, S + af, S, S + af),
                             sp = sona_lora_product_dot(H, r, S, S + af, P, P + af);
                dd = ss - 2.0 * sp + sona_lora_product_dot(H, r, P, P + af, P, P + af);
                md = 0.0;
                for (uint32_t j = 0; j < n; j++)
                    md += sona_lora_product_dot(H, r, pa[j], pa[k + 1 + j], S, S + af) -
                          sona_lora_product_dot(H, r, pa[j], pa[k + 1 + j], P, P + af);
                md = md / n - (ss - sp);
            }
            g = paced_gain(n, e->sync->gain[i], md, dd);
        }
        tm->gain[i] = from_last ? g : 0.0;
        const double c = g / n; /* each holder's weight: S + g (the mean change) */
        for (uint32_t j = 0; j < n; j++)
            w[j] = from_last ? c : 1.0 / n;
        if (from_last) {
            const float *S = e->sync->tenants + 2 * af * i;
            w[n] = 1.0 - g;
            pa[n] = S;
            pa[k + 1 + n] = S + af;
        }
        /* A pointers pa[0..n], B pointers from pa + k + 1: room for S's at index n of both. */
        const float **pb = pa + k + 1;
        sona_merge_info info;
        double t0;
        merge_clock(&t0);
        merged = sona_lora_merge(e->cfg.hidden, e->cfg.micro_rank, n + (uint32_t)from_last, pa,
                                 pb, w, tm->out + 2 * af * i, tm->out + 2 * af * i + af, &info);
        if (merged == SONA_OK && synced == n && !info.copied) /* S's coordinates kept */
            merged = sona_lora_align(e->cfg.hidden, e->cfg.micro_rank, e->sync->tenants + 2 * af * i,
                                     tm->out + 2 * af * i, tm->out + 2 * af * i + af);
        merge_clock_end(e, t0);
        if (merged == SONA_OK && ewc && tm->has_ewc[i])
            merged = merge_tenant_ewc(e, tm, i, n, synced == n, flags, k, all + bs * s + 2 * af,
                                      block);
        tm->commit[i] = 1;
    }
    free(w), free(flags), free(shared), free(pa), free(send), free(all);
    if (merged != SONA_OK && *local == SONA_OK)
        *local = eng_fail(e, merged, "%s: merging tenants failed", __func__);
    return SONA_OK;
}

/* Step 5 for the tenants: each merged one imported and published under its mutex (a tenant
 * removed meanwhile is skipped). Signals it learned during the sync are replaced by the merge,
 * and its pending gradients dropped, as on every rank. */
static sona_status commit_tenants(sona_engine *e, tenant_merge *tm, struct eng_sync *S)
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
                if (tm->fresh && tm->fresh[i] && t->ewc) { /* EWC++ with the weights */
                    sona_ewc_destroy(eng_ewc_swap(t->ewc, tm->fresh[i]));
                    tm->fresh[i] = NULL;
                    atomic_store(&t->tasks, eng_ewc_tasks(t->ewc));
                    S->tenant_tf_have[i] = tm->tf_have[i];
                    if (tm->tf_have[i])
                        memcpy(S->tenant_tf + 2 * af * i, tm->tf + 2 * af * i,
                               2 * af * sizeof *m);
                } else {
                    S->tenant_tf_have[i] = 0;
                }
                S->prev[i] = tm->gain[i] > 0.0;
                S->gain[i] = tm->gain[i];
                if (S->prev[i])
                    memcpy(S->tenants_prev + 2 * af * i, S->tenants + 2 * af * i,
                           2 * af * sizeof *m);
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

/* SONA_SYNC_PACED's gain for Base-LoRA (every rank has S and P; w the ranks' weights, summing
 * to 1): <m, D> over all the layers needs each rank's <W_i, S> - <W_i, P>, all-gathered as
 * doubles and summed in rank order (the same bits on every rank); |D|^2 and <S, D> are each
 * rank's own, the same everywhere. xs: room for k doubles. mine NULL (this rank failed to
 * read its weights): it sends 0 and goes on through the collective. */
static sona_status base_gain(sona_engine *e, sona_comm *comm, uint32_t k, const double *w,
                             const float *mine, double *xs, double *gain)
{
    const uint32_t r = e->cfg.base_rank;
    const size_t H = e->cfg.hidden, L = e->cfg.base_layers, af = L * r * H;
    const float *S = e->sync->base, *P = e->sync->base_prev;
    double x = 0.0, ss = 0.0, sp = 0.0, pp = 0.0;
    for (size_t l = 0; l < L; l++) {
        const float *sa = S + l * r * H, *sb = S + af + l * r * H;
        const float *qa = P + l * r * H, *qb = P + af + l * r * H;
        ss += sona_lora_product_dot(H, r, sa, sb, sa, sb);
        sp += sona_lora_product_dot(H, r, sa, sb, qa, qb);
        pp += sona_lora_product_dot(H, r, qa, qb, qa, qb);
        if (mine)
            x += sona_lora_product_dot(H, r, mine + l * r * H, mine + af + l * r * H, sa, sb) -
                 sona_lora_product_dot(H, r, mine + l * r * H, mine + af + l * r * H, qa, qb);
    }
    const sona_status st = sona_comm_allgather(comm, &x, sizeof x, xs);
    if (st != SONA_OK)
        return eng_fail(e, st, "%s: gathering the changes' projections: %s", __func__,
                        sona_comm_last_error(comm));
    double md = 0.0;
    for (uint32_t i = 0; i < k; i++)
        md += w[i] * xs[i];
    *gain = paced_gain(k, e->sync->base_gain, md - (ss - sp), ss - 2.0 * sp + pp);
    return SONA_OK;
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
    sync_header me = {.magic = SYNC_MAGIC, .protocol = SYNC_PROTOCOL, .hidden = e->cfg.hidden,
                      .layers = e->cfg.base_layers, .rank = e->cfg.base_rank,
                      .alpha_bits = f32_bits(e->cfg.base_alpha), .tenants_max = e->cfg.max_tenants,
                      .micro_rank = e->cfg.micro_rank, .micro_alpha_bits = f32_bits(e->cfg.micro_alpha),
                      .learned = processed - (e->synced_processed <= processed ? e->synced_processed : 0),
                      .has_last = e->sync && e->sync->have, .merge = (uint64_t)cfg->merge,
                      .has_prev = e->sync && e->sync->have && e->sync->base_prev_have,
                      .tenants = local.tenants, .quality_bits = f32_bits(local.quality_baseline),
                      .phi_bits = f32_bits(local.last_phi), .ewc = e->base_ewc != NULL,
                      .ewc_tasks = eng_ewc_tasks(e->base_ewc)};
    for (unsigned c = 0; c < SYNC_COUNTERS; c++)
        me.counters[c] = *counter(&local, c);
    sync_header *h = calloc(k, sizeof *h);
    double *w = malloc((2 * (size_t)k + 1) * sizeof *w); /* k + 1 weights, k for base_gain */
    const size_t af = (size_t)e->cfg.base_layers * e->cfg.base_rank * e->cfg.hidden;
    float *mine = malloc(4 * af * sizeof *mine); /* old A, old Bt, new A, new Bt */
    if (!e->sync)
        e->sync = sync_alloc(&e->cfg); /* kept from here on: the commit cannot run out */
    if (!h || !w || !mine || !e->sync) {
        free(h), free(w), free(mine);
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
    }
    e->sync->merge_s = 0.0;
    st = sona_comm_allgather(comm, &me, sizeof me, h);
    if (st != SONA_OK)
        eng_fail(e, st, "%s: gathering headers: %s", __func__, sona_comm_last_error(comm));
    for (uint32_t i = 0; i < k && st == SONA_OK; i++)
        if (h[i].magic != SYNC_MAGIC || h[i].protocol != SYNC_PROTOCOL)
            st = eng_fail(e, SONA_E_VERSION, "%s: rank %u runs another sync protocol (%s %llu, this "
                          "rank's %u): every rank needs a libsona of the same sync protocol", __func__, i,
                          h[i].magic == SYNC_MAGIC ? "protocol" : "no libsona header, first word",
                          (unsigned long long)(h[i].magic == SYNC_MAGIC ? h[i].protocol : h[i].magic),
                          SYNC_PROTOCOL);
    for (uint32_t i = 0; i < k && st == SONA_OK; i++)
        if (h[i].hidden != me.hidden || h[i].layers != me.layers ||
            h[i].rank != me.rank || h[i].alpha_bits != me.alpha_bits ||
            h[i].tenants_max != me.tenants_max || h[i].micro_rank != me.micro_rank ||
            h[i].micro_alpha_bits != me.micro_alpha_bits || h[i].ewc != me.ewc ||
            h[i].merge != me.merge)
            st = eng_fail(e, SONA_E_SIZE, "%s: rank %u's engine has another shape (hidden %llu, "
                          "base_layers %llu, base_rank %llu, max_tenants %llu, micro_rank %llu, "
                          "or the alphas, or EWC++ on or off, or the sync's merge mode) than rank "
                          "%u's", __func__, i,
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
    sona_status failed_here = SONA_OK;
    if (st == SONA_OK && sona_lora_export(e->base, mine, mine + af, NULL) != SONA_OK)
        failed_here = eng_fail(e, SONA_E_BACKEND, "%s: reading Base-LoRA: %s", __func__,
                         sona_lora_last_error(e->base));
    /* From S where every rank has it (then they all have the same): SONA_SYNC_CHANGES is
     * S + sum_i (W_i - S) = sum_i W_i - (k - 1) S, a merge of k + 1 adapters; SONA_SYNC_PACED
     * S + g sum_i w_i (W_i - S), g its gain (paced_gain, one for all the layers). */
    w[k] = 0.0;
    const double share = w[rank]; /* of the average, or of the mean change */
    int changes = cfg->merge != SONA_SYNC_AVERAGE && k > 1, paced_prev = changes;
    for (uint32_t i = 0; i < k; i++) {
        changes &= h[i].has_last == 1;
        paced_prev &= h[i].has_last == 1 && h[i].has_prev == 1;
    }
    double gain = k;
    if (st == SONA_OK && changes && cfg->merge == SONA_SYNC_PACED && paced_prev)
        st = base_gain(e, comm, k, w, failed_here == SONA_OK ? mine : NULL, w + k + 1, &gain);
    if (st == SONA_OK && changes) {
        const int paced = cfg->merge == SONA_SYNC_PACED;
        for (uint32_t i = 0; i < k; i++)
            w[i] = paced ? gain * w[i] : 1.0;
        w[k] = 1.0 - (paced ? gain : (double)k);
    }
    double err = 0.0;
    tenant_merge tm = {0};
    int all_have = 1; /* every rank has S: the sketch's basis starts from its A */
    for (uint32_t i = 0; i < k; i++)
        all_have &= h[i].has_last == 1;
    if (st == SONA_OK && cfg->method == SONA_SYNC_EXACT)
        st = merge_base(e, comm, k, w, changes ? e->sync->base : NULL,
                        all_have ? e->sync->base : NULL, mine, mine + 2 * af, mine + 3 * af, &err,
                        &failed_here);
    else if (st == SONA_OK)
        st = sketch_base(e, comm, k, rank, w, changes ? e->sync->base : NULL, w[k],
                         all_have ? e->sync->base : NULL, mine, mine + 2 * af, mine + 3 * af,
                         &err, &failed_here);
    if (st == SONA_OK)
        st = merge_tenants(e, comm, k, k > 1 ? cfg->merge : SONA_SYNC_AVERAGE, &tm,
                           &failed_here);
    sona_ewc *fresh = NULL; /* Base-LoRA's EWC++ state after the sync */
    float *ftasks = e->base_ewc ? malloc(2 * af * sizeof *ftasks) : NULL;
    int ftasks_have = 0;
    if (e->base_ewc && !ftasks && failed_here == SONA_OK)
        failed_here = eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
    if (st == SONA_OK) /* ftasks NULL (no room): through the collectives only */
        st = sync_ewc(e, comm, k, h, all_have, mine + 2 * af, &fresh, ftasks, &ftasks_have,
                      &failed_here);
    sona_bank *bank = NULL; /* the merged pattern bank, and its records for S */
    unsigned char *bank_rec = NULL;
    size_t bank_rec_bytes = 0;
    if (st == SONA_OK)
        st = merge_bank(e, comm, k, all_have, &bank, &bank_rec, &bank_rec_bytes, &failed_here);
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
    if (st == SONA_OK && fresh) { /* EWC++ goes with the weights it protects */
        sona_ewc_destroy(eng_ewc_swap(e->base_ewc, fresh));
        fresh = NULL;
        atomic_store(&e->n.tasks, eng_ewc_tasks(e->base_ewc));
        e->sync->fisher_have = ftasks_have;
        if (ftasks_have)
            memcpy(e->sync->fisher_tasks, ftasks, 2 * af * sizeof *ftasks);
    }
    if (st == SONA_OK && bank) { /* the bank: a pointer swap, as loop C's consolidation */
        pthread_rwlock_wrlock(&e->bank_lock);
        sona_bank *old = e->bank;
        e->bank = bank;
        pthread_rwlock_unlock(&e->bank_lock);
        sona_bank_destroy(old);
        bank = NULL;
        atomic_store(&e->n.patterns, sona_bank_pattern_count(e->bank));
        free(e->sync->bank);
        e->sync->bank = bank_rec;
        e->sync->bank_bytes = bank_rec_bytes;
        e->sync->bank_next = sona_bank_next_id(e->bank);
        e->sync->bank_have = 1;
        bank_rec = NULL;
    }
    if (st == SONA_OK) {
        /* P: the S before, where this merge was SONA_SYNC_PACED's step from it */
        e->sync->base_prev_have = changes && cfg->merge == SONA_SYNC_PACED;
        e->sync->base_gain = gain;
        if (e->sync->base_prev_have)
            memcpy(e->sync->base_prev, e->sync->base, 2 * af * sizeof *mine);
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
            res->weight = share;
            res->merge_error = err;
            res->merge_us = 1e6 * e->sync->merge_s;
            global_stats(h, k, &res->global);
        }
    }
    sona_ewc_destroy(fresh);
    sona_bank_destroy(bank);
    free(bank_rec);
    free(ftasks);
    free(h), free(w), free(mine);
    tenant_merge_free(&tm, e->cfg.max_tenants);
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
    if (cfg->merge != SONA_SYNC_AVERAGE && cfg->merge != SONA_SYNC_CHANGES &&
        cfg->merge != SONA_SYNC_PACED)
        return eng_fail(e, SONA_E_INVALID, "%s: merge %d is none of SONA_SYNC_AVERAGE, "
                        "SONA_SYNC_CHANGES and SONA_SYNC_PACED", __func__, (int)cfg->merge);
    if (cfg->method != SONA_SYNC_SKETCH && cfg->method != SONA_SYNC_EXACT)
        return eng_fail(e, SONA_E_INVALID, "%s: method %d is neither SONA_SYNC_SKETCH nor "
                        "SONA_SYNC_EXACT", __func__, (int)cfg->method);
    eng_loop_a_drain(e); /* every rank merges what its requests ended before the sync taught */
    pthread_mutex_lock(&e->cycle_mu);
    eng_cut_invalidate(e); /* it changes Base-LoRA outside a cycle */
    const sona_status st = sync_locked(e, comm, cfg, out);
    pthread_mutex_unlock(&e->cycle_mu);
    return st;
}

sona_status sona_sync_attach(sona_engine *e, sona_comm *comm, const sona_sync_config *cfg,
                             uint32_t every_cycles)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "%s: engine is NULL", __func__);
    sona_sync_config c;
    if (cfg)
        c = *cfg;
    else
        sona_sync_config_default(&c);
    if (comm && (every_cycles == 0 ||
                 (c.weighting != SONA_SYNC_EQUAL && c.weighting != SONA_SYNC_TRAJECTORIES) ||
                 (c.merge != SONA_SYNC_AVERAGE && c.merge != SONA_SYNC_CHANGES &&
                  c.merge != SONA_SYNC_PACED) ||
                 (c.method != SONA_SYNC_SKETCH && c.method != SONA_SYNC_EXACT)))
        return eng_fail(e, SONA_E_INVALID, "%s: every_cycles must be >= 1 and cfg's weighting, "
                        "merge and method known (every_cycles %u)", __func__, every_cycles);
    pthread_mutex_lock(&e->attach_mu); /* waits for a periodic sync in flight */
    e->attach_comm = comm;
    e->attach_cfg = c;
    e->attach_every = comm ? every_cycles : 0;
    e->attach_cycles = 0;
    memset(&e->attach_stats, 0, sizeof e->attach_stats);
    pthread_mutex_unlock(&e->attach_mu);
    return SONA_OK;
}

sona_status sona_sync_periodic_get(sona_engine *e, sona_sync_periodic *out)
{
    if (!e || !out)
        return eng_fail(e, SONA_E_NULL, "%s: NULL argument", __func__);
    pthread_mutex_lock(&e->attach_mu);
    *out = e->attach_stats;
    pthread_mutex_unlock(&e->attach_mu);
    return SONA_OK;
}

sona_status eng_sync_periodic(sona_engine *e)
{
    pthread_mutex_lock(&e->attach_mu);
    sona_status st = SONA_OK;
    if (e->attach_comm && ++e->attach_cycles >= e->attach_every) {
        e->attach_cycles = 0;
        st = sona_sync(e, e->attach_comm, &e->attach_cfg, NULL);
        sona_sync_periodic *p = &e->attach_stats;
        p->syncs++;
        p->last = st;
        if (st != SONA_OK) {
            p->failed++;
            snprintf(p->last_error, sizeof p->last_error, "%s", sona_engine_last_error(e));
        }
    }
    pthread_mutex_unlock(&e->attach_mu);
    return st;
}
