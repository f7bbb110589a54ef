/* SPDX-License-Identifier: MIT */
#include "core/patterns/kmeans.h"

#include "common/rng.h"
#include "common/scratch.h"
#include "cpu/cpu.h"
#include "dispatch/dispatch.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* m indices, each drawn with probability proportional to w[i] (w >= 0; uniform when all are
 * zero): from one sum and one walk over w that meets the draws' targets in increasing order
 * (each the first index whose running sum of the positive w passes it, or the last positive
 * one when rounding left it at the sum). targets[m] and order[m] are the caller's scratch. */
static void sample_weighted_many(sona_rng *rng, const float *w, uint32_t n, uint32_t m, uint32_t *out,
                                 double *targets, uint32_t *order)
{
    double total = 0.0;
    for (uint32_t i = 0; i < n; i++)
        total += w[i];
    if (!(total > 0.0)) {
        for (uint32_t t = 0; t < m; t++)
            out[t] = sona_rng_below(rng, n);
        return;
    }
    for (uint32_t t = 0; t < m; t++) {
        targets[t] = sona_rng_uniform_d(rng) * total;
        order[t] = t;
        /* insertion sort by target: m is a dozen */
        for (uint32_t u = t; u > 0 && targets[order[u - 1]] > targets[order[u]]; u--) {
            const uint32_t swap = order[u];
            order[u] = order[u - 1];
            order[u - 1] = swap;
        }
    }
    double acc = 0.0;
    uint32_t last = 0, next = 0;
    for (uint32_t i = 0; i < n && next < m; i++) {
        if (w[i] <= 0.0f)
            continue;
        acc += w[i];
        last = i;
        while (next < m && acc > targets[order[next]])
            out[order[next++]] = i;
    }
    for (; next < m; next++)
        out[order[next]] = last;
}

/* One such index. */
static uint32_t sample_weighted(sona_rng *rng, const float *w, uint32_t n)
{
    uint32_t out, order;
    double target;
    sample_weighted_many(rng, w, n, 1, &out, &target, &order);
    return out;
}

typedef struct scratch {
    float *dist, *sums;
    float *Xt;        /* X minus its mean, transposed in blocks of bw rows: [block][d][bw] */
    float *xnorm;     /* [n]: |X_i - mean|^2 */
    float *cand_rows; /* [trials][d]: this round's candidates, centred */
    float *dots;      /* [block][trials][bw]: -2 cand . x */
    double *pot, *targets; /* [trials]: each candidate's potential; its draw's target */
    double *block_pot;     /* [block][trials]: each block's share of the potentials */
    uint32_t *cand, *order; /* [trials]: the candidates' rows; their draws sorted by target */
    int32_t *prev;
    uint32_t bw;      /* block width: SEED_BLOCK, or n when smaller */
} scratch;

/* Where the ops' buffers live. On a host-memory backend, the host arrays themselves. On a
 * device, buffers of its own: X and its centred transpose uploaded once, the centres and each
 * round's candidates uploaded as they change, the small results (distances, assignments, sums,
 * a round's products) downloaded after each op; the host keeps the sampling, the potentials and
 * the centroid division, which read every result once. */
typedef struct op_bufs {
    const sona_backend *be;
    int device; /* 0: the pointers below are the host arrays */
    const float *X, *Xt;
    float *C, *cand, *dots, *dist, *sums;
    int32_t *idx;
    uint32_t *counts;
} op_bufs;

/* Host bytes into a device buffer (nothing on the host, where they are the same array). */
static sona_status put(const op_bufs *o, const void *dev, const void *host, size_t bytes)
{
    return o->device ? o->be->upload(o->be->ctx, (void *)(uintptr_t)dev, 0, host, bytes) : SONA_OK;
}

/* A device buffer's bytes into the host array (nothing on the host). */
static sona_status get(const op_bufs *o, void *host, const void *dev, size_t bytes)
{
    return o->device ? o->be->download(o->be->ctx, host, dev, 0, bytes) : SONA_OK;
}

/* Rows per block of the transposed copy, at most: a block (d x bw floats) is what one GEMM
 * call packs, and short rows keep that packing a walk through a small, cached region. */
#define SEED_BLOCK 256u

/* Fills Xt and xnorm. Centring first keeps the norm-trick distances of the seeding accurate
 * when the rows share a large offset; s->sums (k x d, unused until Lloyd) holds the mean. */
static void centre_transpose(const float *X, uint32_t n, uint32_t d, scratch *s)
{
    float *mean = s->sums;
    memset(mean, 0, d * sizeof *mean);
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t t = 0; t < d; t++)
            mean[t] += X[(size_t)i * d + t];
    for (uint32_t t = 0; t < d; t++)
        mean[t] /= (float)n;
    /* In tiles of TILE columns: a row at a time, every store would go to its own cache line,
     * d of them apart by bw floats (this pass was 8 % of a 5 000 x 256 k-means). */
    enum { TILE = 16 };
    memset(s->xnorm, 0, n * sizeof *s->xnorm);
    for (uint32_t b0 = 0; b0 < n; b0 += s->bw) {
        const uint32_t rows = n - b0 < s->bw ? n - b0 : s->bw;
        float *blk = s->Xt + (size_t)b0 * d;
        for (uint32_t t0 = 0; t0 < d; t0 += TILE) {
            const uint32_t cols = d - t0 < TILE ? d - t0 : TILE;
            for (uint32_t i = 0; i < rows; i++) {
                const float *x = X + (size_t)(b0 + i) * d + t0;
                float nn = 0.0f;
                for (uint32_t t = 0; t < cols; t++) {
                    const float v = x[t] - mean[t0 + t];
                    blk[(size_t)(t0 + t) * s->bw + i] = v;
                    nn += v * v;
                }
                s->xnorm[b0 + i] += nn;
            }
        }
    }
}

/* A candidate's potential is the sum over rows of min(D^2, |x - c_t|^2) (the norm-trick form
 * clamped at 0: it can round just below), from this round's products: block by block, in
 * lanes of 8 float sums so that the loop vectorises. */
enum { LANES = 8 };
/* A row's D^2 once a candidate of squared norm cn joins, from its squared norm xn, the
 * candidate's -2 dot with it and its D^2 so far. */
static inline float joined_d2(float xn, float cn, float dot, float dist)
{
    const float d2 = xn + cn + dot, c = d2 > 0.0f ? d2 : 0.0f;
    return c < dist ? c : dist;
}

/* Each candidate's share of the potential from block b, into s->block_pot[b][t]. */
static void block_potentials(scratch *s, uint32_t n, uint32_t trials, uint32_t b)
{
    const uint32_t first = b * s->bw, rows = n - first < s->bw ? n - first : s->bw;
    const float *xn = s->xnorm + first, *dist = s->dist + first;
    for (uint32_t t = 0; t < trials; t++) {
        const float *dots = s->dots + ((size_t)b * trials + t) * s->bw;
        const float cn = s->xnorm[s->cand[t]];
        float lane[LANES] = {0};
        uint32_t i = 0;
        for (; i + LANES <= rows; i += LANES)
            for (uint32_t l = 0; l < LANES; l++)
                lane[l] += joined_d2(xn[i + l], cn, dots[i + l], dist[i + l]);
        double sum = 0.0;
        for (; i < rows; i++)
            sum += joined_d2(xn[i], cn, dots[i], dist[i]);
        for (uint32_t l = 0; l < LANES; l++)
            sum += lane[l];
        s->block_pot[(size_t)b * trials + t] = sum;
    }
}

/* A round's products (-2 cand . x) of block b: one GEMM. A device has one block (bw = n): its
 * buffers take no offsets. A partial last block is passed at full width: its columns past n are
 * zeros (scratch_carve) whose products nobody reads. */
static sona_status block_products(const op_bufs *o, uint32_t trials, uint32_t d, uint32_t bw, uint32_t b)
{
    const sona_gemm_args g = {.m = trials, .n = bw, .k = d, .alpha = -2.0f, .A = o->cand,
                              .B = o->Xt + (size_t)b * d * bw, .C = o->dots + (size_t)b * trials * bw};
    return sona_op_run(o->be, SONA_OP_GEMM, &g);
}

/* A round on the host: each block's products and potentials, the blocks claimed by the parts as
 * they go; the shares are summed in block order, so the bits do not depend on the number of
 * parts. A failure is kept (the first one). */
typedef struct round_job {
    const op_bufs *o;
    scratch *s;
    uint32_t n, d, trials;
    atomic_int failed; /* a sona_status; SONA_OK while none */
} round_job;

static void round_block(void *arg, uint32_t b)
{
    round_job *r = arg;
    const sona_status st = block_products(r->o, r->trials, r->d, r->s->bw, b);
    int ok = SONA_OK;
    if (st != SONA_OK)
        atomic_compare_exchange_strong(&r->failed, &ok, (int)st);
    else
        block_potentials(r->s, r->n, r->trials, b);
}

/* The parts a host round splits over: its products' arithmetic decides. */
static uint32_t round_parts(uint32_t n, uint32_t d, uint32_t trials)
{
    return sona_cpu_parallel_parts(2.0 * trials * n * d);
}

uint32_t sona_kmeans_trials(const sona_kmeans_params *p)
{
    return p->trials ? p->trials : 2 + (uint32_t)(2.0 * log((double)p->k));
}

uint32_t sona_kmeans_round_parts(uint32_t n, uint32_t d, const sona_kmeans_params *p)
{
    return round_parts(n, d, sona_kmeans_trials(p));
}

/* Each candidate's potential, the sum over rows of min(D^2, |x - c_t|^2), into s->pot: on a
 * device (one block) the products there and the sums here; on the host both, split over the
 * cores when the round is large enough to pay for a thread. */
static sona_status round_potentials(const op_bufs *o, scratch *s, uint32_t n, uint32_t d, uint32_t trials)
{
    const uint32_t blocks = (n + s->bw - 1) / s->bw;
    if (o->device) {
        sona_status st;
        if ((st = block_products(o, trials, d, s->bw, 0)) != SONA_OK ||
            (st = get(o, s->dots, o->dots, (size_t)trials * n * sizeof(float))) != SONA_OK)
            return st;
        block_potentials(s, n, trials, 0);
    } else {
        round_job r = {.o = o, .s = s, .n = n, .d = d, .trials = trials, .failed = SONA_OK};
        sona_cpu_parallel_chunks(round_block, &r, blocks, round_parts(n, d, trials));
        const sona_status st = (sona_status)atomic_load(&r.failed);
        if (st != SONA_OK)
            return st;
    }
    for (uint32_t t = 0; t < trials; t++) {
        double pot = 0.0;
        for (uint32_t b = 0; b < blocks; b++)
            pot += s->block_pot[(size_t)b * trials + t];
        s->pot[t] = pot;
    }
    return SONA_OK;
}

/* D^2 once candidate t joined the centres. */
static void take_candidate(scratch *s, uint32_t n, uint32_t trials, uint32_t t)
{
    const float cn = s->xnorm[s->cand[t]];
    for (uint32_t b0 = 0, b = 0; b0 < n; b0 += s->bw, b++) {
        const uint32_t rows = n - b0 < s->bw ? n - b0 : s->bw;
        const float *xn = s->xnorm + b0, *dots = s->dots + ((size_t)b * trials + t) * s->bw;
        float *dist = s->dist + b0;
        for (uint32_t i = 0; i < rows; i++)
            dist[i] = joined_d2(xn[i], cn, dots[i], dist[i]);
    }
}

/* Greedy k-means++ (Arthur & Vassilvitskii's D^2 sampling, with a few sampled candidates per
 * centre keeping the one that lowers the potential most): plain D^2 sampling often puts two
 * seeds in one well-separated cluster, a local minimum Lloyd cannot leave. s->dist holds each
 * row's D^2 to the centres so far, so a round only needs the distances to its candidates: one
 * GEMM (candidates x X^T) gives them all, |x - c|^2 = |x|^2 + |c|^2 - 2 x.c, in one pass
 * over X. */
static sona_status seed_plus_plus(const op_bufs *o, const float *X, uint32_t n, uint32_t d,
                                  uint32_t k, uint32_t trials, sona_rng *rng, float *C, scratch *s)
{
    const sona_backend *be = o->be;
    centre_transpose(X, n, d, s);
    const uint32_t first = sona_rng_below(rng, n);
    memcpy(C, X + (size_t)first * d, d * sizeof *C);
    sona_status st = SONA_OK;
    if (o->device && ((st = put(o, o->Xt, s->Xt, (size_t)n * d * sizeof(float))) != SONA_OK ||
                      (st = put(o, o->C, C, d * sizeof *C)) != SONA_OK))
        return st;
    /* (its assignments, all 0, are overwritten by Lloyd's first) */
    sona_sqdist_argmin_args first_args = {.n = n, .k = 1, .d = d, .X = o->X, .C = o->C,
                                          .idx = o->idx, .dist = o->dist};
    if ((st = sona_op_run(be, SONA_OP_SQDIST_ARGMIN, &first_args)) != SONA_OK ||
        (st = get(o, s->dist, o->dist, n * sizeof *s->dist)) != SONA_OK)
        return st;
    for (uint32_t j = 1; j < k; j++) {
        /* The candidates all come from the same D^2 weights, so draw them up front. */
        sample_weighted_many(rng, s->dist, n, trials, s->cand, s->targets, s->order);
        /* Centred as in Xt (the same subtraction), from X's rows: Xt's columns are a cache
         * line apart each. s->sums holds the mean until Lloyd. */
        for (uint32_t t = 0; t < trials; t++) {
            const float *x = X + (size_t)s->cand[t] * d;
            for (uint32_t u = 0; u < d; u++)
                s->cand_rows[(size_t)t * d + u] = x[u] - s->sums[u];
        }
        if ((st = put(o, o->cand, s->cand_rows, (size_t)trials * d * sizeof(float))) != SONA_OK ||
            (st = round_potentials(o, s, n, d, trials)) != SONA_OK)
            return st;
        uint32_t best = 0;
        for (uint32_t t = 1; t < trials; t++)
            if (s->pot[t] < s->pot[best])
                best = t;
        take_candidate(s, n, trials, best);
        memcpy(C + (size_t)j * d, X + (size_t)s->cand[best] * d, d * sizeof *C);
    }
    return SONA_OK;
}

/* Lays the scratch out in one block of work (sized for n, k, d, trials) and points s into it.
 * one_block: Xt as one d x n block (a device's buffers take no offsets). */
static sona_status scratch_carve(sona_scratch *work, uint32_t n, uint32_t d, uint32_t k,
                                 uint32_t trials, int one_block, scratch *s, size_t *bytes)
{
    const uint32_t bw = n < SEED_BLOCK || one_block ? n : SEED_BLOCK;
    const size_t blocks = (n + bw - 1) / bw;
    size_t total = 0;
    const size_t dist = sona_scratch_push(&total, (size_t)n * sizeof(float));
    const size_t sums = sona_scratch_push(&total, (size_t)k * d * sizeof(float));
    const size_t Xt = sona_scratch_push(&total, blocks * bw * d * sizeof(float));
    const size_t xnorm = sona_scratch_push(&total, (size_t)n * sizeof(float));
    const size_t cand_rows = sona_scratch_push(&total, (size_t)trials * d * sizeof(float));
    const size_t dots = sona_scratch_push(&total, blocks * bw * trials * sizeof(float));
    const size_t pot = sona_scratch_push(&total, trials * sizeof(double));
    const size_t block_pot = sona_scratch_push(&total, blocks * trials * sizeof(double));
    const size_t targets = sona_scratch_push(&total, trials * sizeof(double));
    const size_t cand = sona_scratch_push(&total, trials * sizeof(uint32_t));
    const size_t order = sona_scratch_push(&total, trials * sizeof(uint32_t));
    const size_t prev = sona_scratch_push(&total, (size_t)n * sizeof(int32_t));
    char *mem = sona_scratch_get(work, total);
    if (!mem)
        return SONA_E_NOMEM;
    *s = (scratch){.dist = (float *)(void *)(mem + dist),
                   .sums = (float *)(void *)(mem + sums),
                   .Xt = (float *)(void *)(mem + Xt),
                   .xnorm = (float *)(void *)(mem + xnorm),
                   .cand_rows = (float *)(void *)(mem + cand_rows),
                   .dots = (float *)(void *)(mem + dots),
                   .pot = (double *)(void *)(mem + pot),
                   .block_pot = (double *)(void *)(mem + block_pot),
                   .targets = (double *)(void *)(mem + targets),
                   .cand = (uint32_t *)(void *)(mem + cand),
                   .order = (uint32_t *)(void *)(mem + order),
                   .prev = (int32_t *)(void *)(mem + prev),
                   .bw = bw};
    /* The columns of a partial last block past n: zeros, as in a fresh block (the GEMM reads
     * them; nobody reads their products). */
    const uint32_t used = n % bw;
    if (used) {
        float *last = s->Xt + (blocks - 1) * bw * d;
        for (uint32_t t = 0; t < d; t++)
            memset(last + (size_t)t * bw + used, 0, (bw - used) * sizeof *last);
    }
    *bytes = total;
    return SONA_OK;
}

sona_status sona_kmeans(const sona_backend *be, const float *X, uint32_t n, uint32_t d,
                        const sona_kmeans_params *p, float *C, int32_t *assign, uint32_t *counts,
                        sona_kmeans_result *res)
{
    sona_scratch work = {0};
    const sona_status st = sona_kmeans_reuse(be, X, n, d, p, C, assign, counts, res, &work);
    sona_scratch_free(&work);
    return st;
}

/* The device's buffers for an n x d problem with k centres and `trials` candidates a round
 * (op_bufs above); on a host-memory backend, the host arrays. */
static sona_status bufs_open(const sona_backend *be, const float *X, uint32_t n, uint32_t d,
                             uint32_t k, uint32_t trials, float *C, int32_t *assign,
                             uint32_t *counts, const scratch *s, op_bufs *o)
{
    if (be->host_memory) {
        *o = (op_bufs){.be = be, .X = X, .Xt = s->Xt, .C = C, .cand = s->cand_rows,
                       .dots = s->dots, .dist = s->dist, .sums = s->sums, .idx = assign,
                       .counts = counts};
        return SONA_OK;
    }
    *o = (op_bufs){.be = be, .device = 1};
    const size_t nd = (size_t)n * d * sizeof(float);
    void *b[9] = {0};
    const size_t bytes[9] = {nd, nd, (size_t)k * d * sizeof(float),
                             (size_t)trials * d * sizeof(float), (size_t)trials * n * sizeof(float),
                             n * sizeof(float), (size_t)k * d * sizeof(float),
                             n * sizeof(int32_t), k * sizeof(uint32_t)};
    for (int i = 0; i < 9; i++)
        if (be->alloc(be->ctx, bytes[i], &b[i]) != SONA_OK) {
            while (i-- > 0)
                be->free(be->ctx, b[i]);
            return SONA_E_NOMEM;
        }
    o->X = b[0], o->Xt = b[1], o->C = b[2], o->cand = b[3], o->dots = b[4], o->dist = b[5];
    o->sums = b[6], o->idx = b[7], o->counts = b[8];
    return put(o, o->X, X, nd); /* on failure the caller closes o */
}

static void bufs_close(op_bufs *o)
{
    if (!o->device)
        return;
    void *b[9] = {(void *)(uintptr_t)o->X, (void *)(uintptr_t)o->Xt, o->C, o->cand, o->dots,
                  o->dist, o->sums, o->idx, o->counts};
    for (int i = 0; i < 9; i++)
        if (b[i])
            o->be->free(o->be->ctx, b[i]);
}

/* Lloyd's assignment: assign and s->dist on the host (C uploaded first on a device). */
static sona_status assign_step(const op_bufs *o, uint32_t n, uint32_t k, uint32_t d, const float *C,
                               int32_t *assign, scratch *s)
{
    const sona_sqdist_argmin_args a = {.n = n, .k = k, .d = d, .X = o->X, .C = o->C, .idx = o->idx,
                                       .dist = o->dist};
    sona_status st = put(o, o->C, C, (size_t)k * d * sizeof *C);
    if (st == SONA_OK)
        st = sona_op_run(o->be, SONA_OP_SQDIST_ARGMIN, &a);
    if (st == SONA_OK)
        st = get(o, assign, o->idx, n * sizeof *assign);
    if (st == SONA_OK)
        st = get(o, s->dist, o->dist, n * sizeof *s->dist);
    return st;
}

/* The centroid step's sums and counts, on the host (s->sums, counts). */
static sona_status sums_step(const op_bufs *o, uint32_t n, uint32_t k, uint32_t d, uint32_t *counts,
                             scratch *s)
{
    const sona_cluster_sums_args a = {.n = n, .k = k, .d = d, .X = o->X, .idx = o->idx,
                                      .sums = o->sums, .counts = o->counts};
    sona_status st = sona_op_run(o->be, SONA_OP_CLUSTER_SUMS, &a);
    if (st == SONA_OK)
        st = get(o, s->sums, o->sums, (size_t)k * d * sizeof *s->sums);
    if (st == SONA_OK)
        st = get(o, counts, o->counts, k * sizeof *counts);
    return st;
}

sona_status sona_kmeans_reuse(const sona_backend *be, const float *X, uint32_t n, uint32_t d,
                              const sona_kmeans_params *p, float *C, int32_t *assign,
                              uint32_t *counts, sona_kmeans_result *res, sona_scratch *work)
{
    if (!be || !X || !p || !C || !assign || !counts || !res || !work)
        return SONA_E_NULL;
    if (n == 0 || d == 0 || p->k == 0 || p->k > n || p->max_iterations == 0)
        return SONA_E_INVALID;
    if (!be->sqdist_argmin || !be->cluster_sums || !be->gemm)
        return SONA_E_UNSUPPORTED;
    const uint32_t k = p->k;
    const uint32_t trials = sona_kmeans_trials(p);
    memset(res, 0, sizeof *res);
    scratch s;
    size_t bytes = 0;
    sona_status st = scratch_carve(work, n, d, k, trials, !be->host_memory, &s, &bytes);
    if (st != SONA_OK)
        return st;
    op_bufs o;
    if ((st = bufs_open(be, X, n, d, k, trials, C, assign, counts, &s, &o)) != SONA_OK)
        goto done;
    sona_rng rng;
    sona_rng_seed(&rng, p->seed, 0x6b6d65616e73ull /* "kmeans" */);
    if ((st = seed_plus_plus(&o, X, n, d, k, trials, &rng, C, &s)) != SONA_OK ||
        (st = assign_step(&o, n, k, d, C, assign, &s)) != SONA_OK)
        goto done;
    double inertia = 0.0;
    for (uint32_t i = 0; i < n; i++)
        inertia += s.dist[i];
    for (uint32_t it = 0; it < p->max_iterations; it++) {
        if ((st = sums_step(&o, n, k, d, counts, &s)) != SONA_OK)
            goto done;
        for (uint32_t j = 0; j < k; j++) {
            float *c = C + (size_t)j * d;
            if (counts[j]) {
                const float inv = 1.0f / (float)counts[j];
                const float *sum = s.sums + (size_t)j * d;
                for (uint32_t t = 0; t < d; t++)
                    c[t] = sum[t] * inv;
            } else {
                /* Empty: re-seed at a point drawn by D^2, then zero its weight so two empty
                 * clusters do not take the same point. */
                const uint32_t pick = sample_weighted(&rng, s.dist, n);
                memcpy(c, X + (size_t)pick * d, d * sizeof *c);
                s.dist[pick] = 0.0f;
                res->reseeded++;
            }
        }
        memcpy(s.prev, assign, (size_t)n * sizeof *assign);
        if ((st = assign_step(&o, n, k, d, C, assign, &s)) != SONA_OK)
            goto done;
        double next = 0.0;
        uint32_t changed = 0;
        for (uint32_t i = 0; i < n; i++) {
            next += s.dist[i];
            changed += assign[i] != s.prev[i];
        }
        res->iterations = it + 1;
        const double gain = inertia - next;
        inertia = next;
        if (changed == 0 || gain <= (double)p->tolerance * next) {
            res->converged = 1;
            break;
        }
    }
    /* Final centroids: the means of the final assignment (never raises the inertia). */
    if ((st = sums_step(&o, n, k, d, counts, &s)) != SONA_OK)
        goto done;
    for (uint32_t j = 0; j < k; j++) {
        if (!counts[j])
            continue;
        const float inv = 1.0f / (float)counts[j];
        float *c = C + (size_t)j * d;
        const float *sum = s.sums + (size_t)j * d;
        for (uint32_t t = 0; t < d; t++)
            c[t] = sum[t] * inv;
    }
    res->inertia = inertia;
done:
    bufs_close(&o);
    sona_scratch_done(work, bytes);
    return st;
}
