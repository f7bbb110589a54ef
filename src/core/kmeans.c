#include "core/kmeans.h"

#include "core/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* An index drawn with probability proportional to w[i] (w >= 0); uniform when all are zero. */
static uint32_t sample_weighted(sona_rng *rng, const float *w, uint32_t n)
{
    double total = 0.0;
    for (uint32_t i = 0; i < n; i++)
        total += w[i];
    if (!(total > 0.0))
        return sona_rng_below(rng, n);
    const double target = sona_rng_uniform_d(rng) * total;
    double acc = 0.0;
    uint32_t last = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (w[i] <= 0.0f)
            continue;
        acc += w[i];
        last = i;
        if (acc > target)
            return i;
    }
    return last; /* rounding left target just above the sum */
}

typedef struct scratch {
    float *dist, *tmp, *best, *sums;
    int32_t *tmp_idx, *prev;
} scratch;

/* tmp[i] = |X_i - c|^2 for one candidate centre c. */
static sona_status dist_to(const sona_backend *be, const float *X, uint32_t n, uint32_t d,
                           const float *c, scratch *s)
{
    sona_sqdist_argmin_args a = {.n = n, .k = 1, .d = d, .X = X, .C = c, .idx = s->tmp_idx,
                                 .dist = s->tmp};
    return be->sqdist_argmin(be->ctx, &a);
}

/* Greedy k-means++ (Arthur & Vassilvitskii's D^2 sampling, with a few sampled candidates per
 * centre keeping the one that lowers the potential most): plain D^2 sampling often puts two
 * seeds in one well-separated cluster, a local minimum Lloyd cannot leave. */
static sona_status seed_plus_plus(const sona_backend *be, const float *X, uint32_t n, uint32_t d,
                                  uint32_t k, uint32_t trials, sona_rng *rng, float *C, scratch *s)
{
    if (trials == 0)
        trials = 2 + (uint32_t)log((double)k);
    const uint32_t first = sona_rng_below(rng, n);
    memcpy(C, X + (size_t)first * d, d * sizeof *C);
    sona_status st = dist_to(be, X, n, d, C, s);
    if (st != SONA_OK)
        return st;
    memcpy(s->dist, s->tmp, (size_t)n * sizeof *s->dist);
    for (uint32_t j = 1; j < k; j++) {
        double best_pot = INFINITY;
        uint32_t best = 0;
        for (uint32_t t = 0; t < trials; t++) {
            const uint32_t cand = sample_weighted(rng, s->dist, n);
            if ((st = dist_to(be, X, n, d, X + (size_t)cand * d, s)) != SONA_OK)
                return st;
            double pot = 0.0;
            for (uint32_t i = 0; i < n; i++) {
                s->tmp[i] = s->tmp[i] < s->dist[i] ? s->tmp[i] : s->dist[i];
                pot += s->tmp[i];
            }
            if (pot < best_pot) {
                best_pot = pot;
                best = cand;
                memcpy(s->best, s->tmp, (size_t)n * sizeof *s->best);
            }
        }
        memcpy(C + (size_t)j * d, X + (size_t)best * d, d * sizeof *C);
        memcpy(s->dist, s->best, (size_t)n * sizeof *s->dist);
    }
    return SONA_OK;
}

sona_status sona_kmeans(const sona_backend *be, const float *X, uint32_t n, uint32_t d,
                        const sona_kmeans_params *p, float *C, int32_t *assign, uint32_t *counts,
                        sona_kmeans_result *res)
{
    if (!be || !X || !p || !C || !assign || !counts || !res)
        return SONA_E_NULL;
    if (n == 0 || d == 0 || p->k == 0 || p->k > n || p->max_iterations == 0)
        return SONA_E_INVALID;
    if (!be->host_memory || !be->sqdist_argmin || !be->cluster_sums)
        return SONA_E_UNSUPPORTED;
    const uint32_t k = p->k;
    memset(res, 0, sizeof *res);
    scratch s = {.dist = malloc((size_t)n * sizeof(float)),
                 .tmp = malloc((size_t)n * sizeof(float)),
                 .best = malloc((size_t)n * sizeof(float)),
                 .sums = malloc((size_t)k * d * sizeof(float)),
                 .tmp_idx = malloc((size_t)n * sizeof(int32_t)),
                 .prev = malloc((size_t)n * sizeof(int32_t))};
    sona_status st = SONA_E_NOMEM;
    if (!s.dist || !s.tmp || !s.best || !s.sums || !s.tmp_idx || !s.prev)
        goto done;
    sona_rng rng;
    sona_rng_seed(&rng, p->seed, 0x6b6d65616e73ull /* "kmeans" */);
    st = seed_plus_plus(be, X, n, d, k, p->trials, &rng, C, &s);
    if (st != SONA_OK)
        goto done;

    sona_sqdist_argmin_args assign_args = {.n = n, .k = k, .d = d, .X = X, .C = C, .idx = assign,
                                           .dist = s.dist};
    sona_cluster_sums_args sums_args = {.n = n, .k = k, .d = d, .X = X, .idx = assign,
                                        .sums = s.sums, .counts = counts};
    if ((st = be->sqdist_argmin(be->ctx, &assign_args)) != SONA_OK)
        goto done;
    double inertia = 0.0;
    for (uint32_t i = 0; i < n; i++)
        inertia += s.dist[i];
    for (uint32_t it = 0; it < p->max_iterations; it++) {
        if ((st = be->cluster_sums(be->ctx, &sums_args)) != SONA_OK)
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
        if ((st = be->sqdist_argmin(be->ctx, &assign_args)) != SONA_OK)
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
    if ((st = be->cluster_sums(be->ctx, &sums_args)) != SONA_OK)
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
    free(s.dist);
    free(s.tmp);
    free(s.best);
    free(s.sums);
    free(s.tmp_idx);
    free(s.prev);
    return st;
}
