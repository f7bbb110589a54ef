/* SPDX-License-Identifier: MIT */
#include "core/patterns/dream.h"

#include "common/error.h"
#include "dispatch/vecmath.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_NEIGHBOURS = 64, JUMP_CANDIDATES = 8 };

sona_status sona_dream_init(sona_dream *d, uint32_t dim, uint32_t cap)
{
    memset(d, 0, sizeof *d);
    d->dim = dim;
    d->cap = cap;
    d->ids = malloc(cap * sizeof *d->ids);
    d->vecs = malloc((size_t)cap * dim * sizeof *d->vecs);
    d->quality = malloc(cap * sizeof *d->quality);
    d->visits = malloc(cap * sizeof *d->visits);
    if (!d->ids || !d->vecs || !d->quality || !d->visits) {
        sona_dream_free(d);
        return SONA_E_NOMEM;
    }
    return SONA_OK;
}

void sona_dream_free(sona_dream *d)
{
    free(d->ids);
    free(d->vecs);
    free(d->quality);
    free(d->visits);
    memset(d, 0, sizeof *d);
}

sona_dream_visits *sona_dream_visits_create(void) { return calloc(1, sizeof(sona_dream_visits)); }

void sona_dream_visits_free(sona_dream_visits *v)
{
    if (!v)
        return;
    sona_idmap_free(&v->visits);
    free(v);
}

static int by_id(const void *a, const void *b)
{
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void sona_dream_visits_write(const sona_dream_visits *v, sona_wbuf *w)
{
    const uint32_t n = v ? v->visits.count : 0;
    if (n == 0) {
        sona_wbuf_u32(w, 0);
        return;
    }
    uint64_t *ids = malloc(n * sizeof *ids);
    if (!ids) {
        w->oom = 1;
        return;
    }
    uint32_t k = 0;
    for (uint64_t cell = 0; cell <= v->visits.mask; cell++)
        if (v->visits.vals[cell] != SONA_IDMAP_EMPTY)
            ids[k++] = v->visits.keys[cell];
    qsort(ids, k, sizeof *ids, by_id);
    sona_wbuf_u32(w, k);
    for (uint32_t i = 0; i < k; i++) {
        sona_wbuf_u64(w, ids[i]);
        sona_wbuf_u32(w, sona_idmap_get(&v->visits, ids[i]));
    }
    free(ids);
}

sona_status sona_dream_visits_read(sona_rbuf *r, uint64_t next_id, sona_dream_visits **out)
{
    *out = NULL;
    const uint32_t n = sona_rbuf_u32(r);
    if (!sona_rbuf_has(r, n, 12))
        return sona_fail(NULL, SONA_E_CORRUPT, "dream visit section is truncated");
    if (n == 0)
        return SONA_OK;
    sona_dream_visits *v = sona_dream_visits_create();
    if (!v)
        return sona_fail(NULL, SONA_E_NOMEM, "out of memory");
    for (uint32_t i = 0; i < n; i++) {
        const uint64_t id = sona_rbuf_u64(r);
        const uint32_t visits = sona_rbuf_u32(r);
        sona_status st = SONA_OK;
        if (id == 0 || id >= next_id || visits == 0 || visits == SONA_IDMAP_EMPTY ||
            sona_idmap_get(&v->visits, id) != SONA_IDMAP_EMPTY)
            st = sona_fail(NULL, SONA_E_CORRUPT, "a dream visit count is invalid (pattern id 0, not yet given out "
                                                 "or repeated, or no visit)");
        else if (sona_idmap_put(&v->visits, id, visits) != SONA_OK)
            st = sona_fail(NULL, SONA_E_NOMEM, "out of memory");
        if (st != SONA_OK) {
            sona_dream_visits_free(v);
            return st;
        }
    }
    *out = v;
    return SONA_OK;
}

static uint32_t visits_of(const sona_dream_visits *st, uint64_t id)
{
    const uint32_t v = sona_idmap_get(&st->visits, id);
    return v == SONA_IDMAP_EMPTY ? 0 : v;
}

/* Appends pattern (p, unit centroid v) to the path. */
static void push(sona_dream *d, const sona_dream_visits *st, const sona_pattern *p, const float *v)
{
    const uint32_t i = d->len++;
    d->ids[i] = p->id;
    memcpy(d->vecs + (size_t)i * d->dim, v, d->dim * sizeof *v);
    d->quality[i] = p->avg_quality;
    d->visits[i] = visits_of(st, p->id);
}

/* The least similar to cur of a few uniformly drawn patterns (a creative jump). */
static sona_status jump(const sona_bank *bank, const float *cur, sona_rng *rng, float *v, sona_pattern *p)
{
    const uint32_t n = sona_bank_pattern_count(bank), dim = sona_bank_get_config(bank)->dim;
    const sona_dot_fn dot = sona_dot_kernel();
    float best = INFINITY, *cand = v + dim;
    for (int k = 0; k < JUMP_CANDIDATES; k++) {
        sona_pattern q;
        if (sona_bank_pattern_at(bank, sona_rng_below(rng, n), &q, cand) != SONA_OK)
            return SONA_E_STATE;
        sona_normalize(cand, dim);
        const float s = cur ? dot(cur, cand, dim) : 0.0f;
        if (s < best) {
            best = s;
            *p = q;
            memcpy(v, cand, dim * sizeof *v);
        }
        if (!cur)
            break;
    }
    return SONA_OK;
}

sona_status sona_dream_generate(const sona_bank *bank, sona_dream_visits *st, const sona_dream_params *prm,
                                sona_rng *rng, sona_dream *d)
{
    const uint32_t dim = d->dim, n = sona_bank_pattern_count(bank);
    if (n == 0)
        return SONA_E_EMPTY;
    const sona_dot_fn dot = sona_dot_kernel();
    const uint32_t len = prm->length < d->cap ? prm->length : d->cap;
    /* scratch: two vectors for jumps, then the neighbours' unit centroids */
    float *scratch = malloc((size_t)(2 + MAX_NEIGHBOURS) * dim * sizeof *scratch);
    if (!scratch)
        return SONA_E_NOMEM;
    float *v = scratch, *nv = scratch + 2 * (size_t)dim;
    d->len = d->jumps = 0;
    sona_pattern p;
    sona_status s = jump(bank, NULL, rng, v, &p);
    if (s == SONA_OK)
        push(d, st, &p, v);
    uint64_t nb[MAX_NEIGHBOURS];
    float logit[MAX_NEIGHBOURS];
    sona_pattern np[MAX_NEIGHBOURS];
    while (s == SONA_OK && d->len < len) {
        const float *cur = d->vecs + (size_t)(d->len - 1) * dim;
        uint32_t k = 0;
        if (sona_rng_uniform(rng) >= prm->jump_prob)
            sona_bank_neighbors(bank, d->ids[d->len - 1], nb, MAX_NEIGHBOURS, &k);
        uint32_t m = 0;
        float top = -INFINITY;
        for (uint32_t j = 0; j < k; j++) {
            float *u = nv + (size_t)m * dim;
            if (sona_bank_pattern_get(bank, nb[j], &np[m], u) != SONA_OK)
                continue;
            sona_normalize(u, dim);
            logit[m] = dot(cur, u, dim) / prm->temperature + prm->novelty_bonus / (1.0f + (float)visits_of(st, nb[j]));
            top = fmaxf(top, logit[m]);
            m++;
        }
        if (m == 0) { /* a creative jump (by chance, or nowhere to go) */
            if ((s = jump(bank, cur, rng, v, &p)) == SONA_OK) {
                push(d, st, &p, v);
                d->jumps++;
            }
            continue;
        }
        double total = 0;
        for (uint32_t j = 0; j < m; j++)
            total += exp((double)(logit[j] - top));
        double pick = sona_rng_uniform_d(rng) * total;
        uint32_t j = 0;
        for (; j + 1 < m; j++) {
            pick -= exp((double)(logit[j] - top));
            if (pick < 0)
                break;
        }
        push(d, st, &np[j], nv + (size_t)j * dim);
    }
    free(scratch);
    for (uint32_t i = 0; i < d->len && s == SONA_OK; i++) {
        const uint32_t v0 = visits_of(st, d->ids[i]);
        if (v0 < UINT32_MAX - 1)
            s = sona_idmap_put(&st->visits, d->ids[i], v0 + 1);
    }
    if (s == SONA_OK)
        sona_dream_evaluate(d);
    return s;
}

static float clamp01(double v) { return (float)(v < 0 ? 0 : v > 1 ? 1 : v); }

void sona_dream_evaluate(sona_dream *d)
{
    const sona_dot_fn dot = sona_dot_kernel();
    const uint32_t n = d->len, dim = d->dim;
    double nov = 0, util = 0, coh = 0, div = 0;
    for (uint32_t i = 0; i < n; i++) {
        nov += 1.0 / (1.0 + d->visits[i]);
        util += clamp01(d->quality[i]);
        if (i)
            coh += (1.0 + dot(d->vecs + (size_t)(i - 1) * dim, d->vecs + (size_t)i * dim, dim)) / 2.0;
    }
    uint32_t pairs = 0;
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = i + 1; j < n; j++) {
            if (d->ids[i] == d->ids[j])
                continue;
            div += dot(d->vecs + (size_t)i * dim, d->vecs + (size_t)j * dim, dim);
            pairs++;
        }
    d->novelty = n ? clamp01(nov / n) : 0;
    d->utility = n ? clamp01(util / n) : 0;
    d->coherence = n > 1 ? clamp01(coh / (n - 1)) : 0;
    d->diversity = pairs ? clamp01(1.0 - div / pairs) : 0;
    d->score = 0.35f * d->utility + 0.25f * d->coherence + 0.20f * d->novelty + 0.20f * d->diversity;
}

static uint32_t find_root(uint32_t *parent, uint32_t i)
{
    while (parent[i] != i) {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    return i;
}

sona_status sona_pattern_phi(const sona_bank *bank, float *phi)
{
    *phi = 0;
    const uint32_t n = sona_bank_pattern_count(bank), dim = sona_bank_get_config(bank)->dim;
    if (n == 0)
        return SONA_OK;
    const sona_dot_fn dot = sona_dot_kernel();
    uint32_t *parent = malloc(n * sizeof *parent), *size = calloc(n, sizeof *size);
    float *u = malloc(2 * (size_t)dim * sizeof *u);
    sona_idmap slot = {0};
    sona_status st = parent && size && u ? SONA_OK : SONA_E_NOMEM;
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        sona_pattern p;
        parent[i] = i;
        if ((st = sona_bank_pattern_at(bank, i, &p, NULL)) == SONA_OK)
            st = sona_idmap_put(&slot, p.id, i);
    }
    double sim = 0;
    uint64_t edges = 0;
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        sona_pattern p;
        uint64_t nb[MAX_NEIGHBOURS];
        uint32_t k = 0;
        if ((st = sona_bank_pattern_at(bank, i, &p, u)) != SONA_OK)
            break;
        sona_normalize(u, dim);
        sona_bank_neighbors(bank, p.id, nb, MAX_NEIGHBOURS, &k);
        for (uint32_t j = 0; j < k; j++) {
            const uint32_t other = sona_idmap_get(&slot, nb[j]);
            sona_pattern q;
            if (other == SONA_IDMAP_EMPTY || sona_bank_pattern_get(bank, nb[j], &q, u + dim) != SONA_OK)
                continue;
            sona_normalize(u + dim, dim);
            sim += (1.0 + dot(u, u + dim, dim)) / 2.0;
            edges++;
            const uint32_t a = find_root(parent, i), b = find_root(parent, other);
            if (a != b)
                parent[a] = b;
        }
    }
    if (st == SONA_OK && edges) {
        uint32_t largest = 0;
        for (uint32_t i = 0; i < n; i++) {
            const uint32_t r = find_root(parent, i);
            if (++size[r] > largest)
                largest = size[r];
        }
        *phi = (float)((double)largest / n * (sim / (double)edges));
    }
    free(parent);
    free(size);
    free(u);
    sona_idmap_free(&slot);
    return st;
}
