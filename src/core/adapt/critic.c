/* SPDX-License-Identifier: MIT */
#include "core/adapt/critic.h"

#include "common/error.h"
#include "dispatch/vecmath.h"
#include "sona/engine.h" /* the value ranges a state file is held to */

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct critic_region {
    uint32_t seen;   /* queries folded into the mean */
    double bound;    /* an upper bound of max |v|: the sum of the steps' sizes */
} critic_region;

struct sona_critic {
    uint32_t dim, regions;
    float mean_rate, fit_rate;
    critic_region *region;
    float *m, *v; /* regions x dim each */
};

sona_status sona_critic_create(uint32_t dim, uint32_t regions, float mean_rate, float fit_rate,
                               sona_critic **out)
{
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "%s: out is NULL", __func__);
    *out = NULL;
    if (dim == 0 || regions == 0 || !(mean_rate > 0.0f && mean_rate <= 1.0f) ||
        !(fit_rate > 0.0f && fit_rate <= 1.0f))
        return sona_fail(NULL, SONA_E_INVALID, "%s: dim %u, regions %u, rates %g and %g", __func__, dim,
                         regions, (double)mean_rate, (double)fit_rate);
    sona_critic *c = calloc(1, sizeof *c);
    if (c) {
        c->region = calloc(regions, sizeof *c->region);
        c->m = calloc(2 * (size_t)regions * dim, sizeof *c->m);
    }
    if (!c || !c->region || !c->m) {
        sona_critic_destroy(c);
        return sona_fail(NULL, SONA_E_NOMEM, "%s: out of memory for %u regions of %u", __func__, regions, dim);
    }
    c->v = c->m + (size_t)regions * dim;
    c->dim = dim;
    c->regions = regions;
    c->mean_rate = mean_rate;
    c->fit_rate = fit_rate;
    *out = c;
    return SONA_OK;
}

void sona_critic_destroy(sona_critic *c)
{
    if (!c)
        return;
    free(c->region);
    free(c->m);
    free(c);
}

double sona_critic_predict(sona_critic *c, uint32_t region, const float *x, float *centered)
{
    const uint32_t n = c->dim;
    const float *m = c->m + (size_t)region * n;
    float *v = c->v + (size_t)region * n;
    for (uint32_t j = 0; j < n; j++)
        centered[j] = x[j] - m[j];
    if (c->region[region].seen == 0)
        return 0.0;
    const double p = sona_dot_kernel()(v, centered, n);
    if (isfinite(p))
        return p;
    /* Only a model grown far past what qualities support gets here: it starts again. */
    memset(v, 0, (size_t)n * sizeof *v);
    c->region[region].bound = 0.0;
    return 0.0;
}

void sona_critic_learn(sona_critic *c, uint32_t region, const float *x, const float *centered,
                       int has_residual, double residual)
{
    const uint32_t n = c->dim;
    critic_region *g = &c->region[region];
    float *m = c->m + (size_t)region * n, *v = c->v + (size_t)region * n;
    const sona_host_kernels *k = sona_host_kernels_get();
    if (g->seen == 0) {
        memcpy(m, x, (size_t)n * sizeof *m);
        g->seen = 1;
        return;
    }
    const double n2 = k->sum_squares(centered, n);
    if (has_residual && n2 > 0.0 && isfinite(residual)) {
        /* A step that moves this query's prediction by fit_rate of its residual. */
        const double step = c->fit_rate * residual / n2;
        const double size = fabs(step) * sqrt(n2); /* >= the step's largest |element| */
        if (isfinite(step) && g->bound + size <= SONA_MAX_WEIGHT) {
            k->axpy(v, centered, n, (float)step);
            g->bound += size;
        } else {
            memset(v, 0, (size_t)n * sizeof *v);
            g->bound = 0.0;
        }
    }
    k->axpy(m, centered, n, c->mean_rate);
    g->seen = g->seen == UINT32_MAX ? g->seen : g->seen + 1;
}

uint64_t sona_critic_record_bytes(uint32_t dim, uint32_t regions)
{
    return (uint64_t)regions * (4u + 8u * (uint64_t)dim);
}

void sona_critic_write(const sona_critic *c, sona_wbuf *w)
{
    for (uint32_t r = 0; r < c->regions; r++) {
        sona_wbuf_u32(w, c->region[r].seen);
        sona_wbuf_floats(w, c->m + (size_t)r * c->dim, c->dim);
        sona_wbuf_floats(w, c->v + (size_t)r * c->dim, c->dim);
    }
}

int sona_critic_read(sona_rbuf *r, uint32_t dim, uint32_t regions, float mean_rate, float fit_rate,
                     sona_critic **out)
{
    *out = NULL;
    if (!sona_rbuf_has(r, sona_critic_record_bytes(dim, regions), 1))
        return 0;
    sona_critic *c;
    if (sona_critic_create(dim, regions, mean_rate, fit_rate, &c) != SONA_OK)
        return 0;
    for (uint32_t g = 0; g < regions; g++) {
        float *m = c->m + (size_t)g * dim, *v = c->v + (size_t)g * dim;
        c->region[g].seen = sona_rbuf_u32(r);
        if (!sona_rbuf_floats(r, m, dim) || !sona_rbuf_floats(r, v, dim))
            break;
        double bound = 0.0;
        int ok = 1;
        for (uint32_t j = 0; j < dim && ok; j++) {
            ok = fabsf(m[j]) <= SONA_MAX_ACTIVATION && fabsf(v[j]) <= SONA_MAX_WEIGHT;
            bound = fabs(v[j]) > bound ? fabs(v[j]) : bound;
        }
        if (!ok) {
            r->bad = 1;
            break;
        }
        c->region[g].bound = bound;
    }
    if (r->bad) {
        sona_critic_destroy(c);
        return 0;
    }
    *out = c;
    return 1;
}
