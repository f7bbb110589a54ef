/* SPDX-License-Identifier: MIT */
/* Learning signals from trajectories (sona/signal.h): the reward-weighted step contrast when
 * the step rewards vary (weighed by how far apart they lie against their usual spread), else
 * the displacement from the adapter's output weighted by the quality's advantage over a running
 * baseline, in units of its spread. */
#include "sona/signal.h"

#include "common/error.h"
#include "dispatch/vecmath.h"
#include "sona/engine.h" /* SONA_MAX_QUALITY */

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Widths up to this use a stack scratch (the direction and a decoded step); wider ones allocate. */
#define STACK_DIM 2048

struct sona_signal_builder {
    sona_signal_config cfg;
    pthread_mutex_t mu; /* guards own */
    sona_signal_baseline own;
    _Atomic uint64_t accepted, rejected;
};

void sona_signal_config_default(sona_signal_config *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof *cfg);
    cfg->baseline_rate = 0.05f;
    cfg->max_weight = 3.0f;
    cfg->outcome_share = 0.25f;
}

sona_status sona_signal_builder_create(const sona_signal_config *cfg, sona_signal_builder **out)
{
    static const char fn[] = "sona_signal_builder_create";
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "%s: out is NULL", fn);
    *out = NULL;
    if (!cfg)
        return sona_fail(NULL, SONA_E_NULL, "%s: cfg is NULL", fn);
    if (!isfinite(cfg->baseline_rate) || !isfinite(cfg->max_weight) || !isfinite(cfg->outcome_share))
        return sona_fail(NULL, SONA_E_NONFINITE, "%s: baseline_rate is %g, max_weight %g, outcome_share %g", fn,
                         (double)cfg->baseline_rate, (double)cfg->max_weight, (double)cfg->outcome_share);
    if (!(cfg->baseline_rate > 0.0f && cfg->baseline_rate <= 1.0f))
        return sona_fail(NULL, SONA_E_INVALID, "%s: baseline_rate %g is outside (0, 1]", fn,
                         (double)cfg->baseline_rate);
    if (!(cfg->max_weight > 0.0f))
        return sona_fail(NULL, SONA_E_INVALID, "%s: max_weight %g is not > 0", fn, (double)cfg->max_weight);
    if (!(cfg->outcome_share > 0.0f && cfg->outcome_share <= 1.0f))
        return sona_fail(NULL, SONA_E_INVALID, "%s: outcome_share %g is outside (0, 1]", fn,
                         (double)cfg->outcome_share);
    sona_signal_builder *sb = calloc(1, sizeof *sb);
    if (!sb)
        return sona_fail(NULL, SONA_E_NOMEM, "%s: out of memory", fn);
    sb->cfg = *cfg;
    pthread_mutex_init(&sb->mu, NULL);
    atomic_init(&sb->accepted, 0);
    atomic_init(&sb->rejected, 0);
    *out = sb;
    return SONA_OK;
}

void sona_signal_builder_destroy(sona_signal_builder *sb)
{
    if (!sb)
        return;
    pthread_mutex_destroy(&sb->mu);
    free(sb);
}

const char *sona_signal_builder_last_error(const sona_signal_builder *sb)
{
    (void)sb;
    return sona_last_error();
}

sona_status sona_signal_baseline_weigh(sona_signal_baseline *b, float rate, float max_weight, float q, int advance,
                                       float *w)
{
    if (!b || !w)
        return sona_fail(NULL, SONA_E_NULL, "%s: baseline and w are required", __func__);
    if (!isfinite(q) || !isfinite(rate) || !isfinite(max_weight))
        return sona_fail(NULL, SONA_E_NONFINITE, "signal: quality %g (rate %g, max weight %g) is not finite",
                         (double)q, (double)rate, (double)max_weight);
    sona_signal_baseline next = *b;
    double weight = 0.0;
    if (b->count == 0) {
        next.mean = q;
        next.var = 0.0f;
    } else {
        const double dev = (double)q - b->mean;
        /* The second quality sets the spread to its own deviation, so its weight is +-1. */
        const double var = b->count == 1 ? dev * dev : (double)b->var;
        if (var > 0.0)
            weight = dev / sqrt(var);
        weight = weight > max_weight ? max_weight : weight < -max_weight ? -max_weight : weight;
        next.mean = (float)(b->mean + rate * dev);
        next.var = (float)(b->count == 1 ? var : var + rate * (dev * dev - var));
        if (!isfinite(dev) || !isfinite(next.mean) || !isfinite(next.var))
            return sona_fail(NULL, SONA_E_NONFINITE, "signal: quality %g against baseline %g overflows", (double)q,
                             (double)b->mean);
    }
    next.count = b->count == UINT32_MAX ? b->count : b->count + 1;
    if (advance)
        *b = next;
    *w = (float)weight;
    return SONA_OK;
}

/* The steps of a signal source: a trajectory (optionally only one layer's steps), whose vectors
 * are decoded into a scratch row as they are read, or plain arrays. */
typedef struct step_view {
    const sona_trajectory *t;
    int32_t layer;           /* SONA_LAYER_NONE: every step */
    const float *acts, *rewards;
    uint32_t steps, dim;     /* steps: all of the source's, used or not */
    float *row;              /* scratch of dim floats for a trajectory's step */
} step_view;

static int step_used(const step_view *v, uint32_t i)
{
    return v->layer == SONA_LAYER_NONE || sona_trajectory_step_layer(v->t, i) == v->layer;
}

/* Step i's activations (dim values, as checked before use). */
static const float *step_act(const step_view *v, uint32_t i)
{
    if (!v->t)
        return v->acts + (size_t)i * v->dim;
    sona_trajectory_step_activations(v->t, i, v->row, v->dim);
    return v->row;
}

static float step_reward(const step_view *v, uint32_t i)
{
    return v->t ? sona_trajectory_step_reward(v->t, i) : v->rewards[i];
}

static double norm2(const float *a, uint32_t n)
{
    return sqrt((double)sona_dot_kernel()(a, a, n));
}

/* Whether the used steps' rewards differ (beyond rounding), with their mean into *mean. */
static int rewards_differ(const step_view *v, double *mean_out)
{
    double mean = 0.0, lo = INFINITY, hi = -INFINITY;
    uint32_t used = 0;
    for (uint32_t i = 0; i < v->steps; i++) {
        if (!step_used(v, i))
            continue;
        const double r = step_reward(v, i);
        mean += r;
        lo = r < lo ? r : lo;
        hi = r > hi ? r : hi;
        used++;
    }
    mean = used ? mean / used : 0.0;
    *mean_out = mean;
    return used && hi - lo > 1e-6 * fmax(1.0, fabs(mean));
}

int sona_signal_rewards_vary(const sona_trajectory *t, int32_t layer)
{
    if (!t || !sona_trajectory_ended(t))
        return 0;
    const step_view v = {.t = t, .layer = layer, .steps = sona_trajectory_step_count(t),
                         .dim = sona_trajectory_dim(t)};
    double mean;
    return rewards_differ(&v, &mean);
}

/* The contrast sum_i (r_i - mean r) a_i / sum_i |r_i - mean r| into dir (mean a drops out: the
 * coefficients sum to zero), and the rewards' mean absolute deviation into *mad. 1 when written,
 * 0 when the rewards are equal or it cancels out (e.g. the same activations at every step: what
 * is left is rounding noise), -1 on overflow. */
static int contrast(const step_view *v, float *dir, double *mad)
{
    const uint32_t dim = v->dim;
    const sona_host_kernels *k = sona_host_kernels_get(); /* the variant's loops: same bits */
    double mean;
    if (!rewards_differ(v, &mean))
        return 0;
    double total = 0.0, scale = 0.0;
    memset(dir, 0, (size_t)dim * sizeof *dir);
    for (uint32_t i = 0; i < v->steps; i++) {
        if (!step_used(v, i))
            continue;
        const float *a = step_act(v, i);
        const float c = (float)(step_reward(v, i) - mean);
        k->axpy(dir, a, dim, c);
        total += fabs(c);
        scale += fabs(c) * norm2(a, dim);
    }
    const double nrm = norm2(dir, dim);
    if (!isfinite(nrm) || !isfinite(scale))
        return -1;
    if (!(nrm > 1e-5 * scale))
        return 0;
    k->scale(dir, dim, (float)(1.0 / total));
    uint32_t used = 0;
    for (uint32_t i = 0; i < v->steps; i++)
        used += (uint32_t)step_used(v, i);
    *mad = total / used;
    return 1;
}

/* mean a - from into dir; SONA_OK or a refusal (message set). The variant's loops: each
 * element rounded as the plain loops round it (dir + a, dir x inv, then - from). */
static sona_status displacement(const step_view *v, const float *from, float *dir)
{
    const uint32_t dim = v->dim;
    const sona_host_kernels *k = sona_host_kernels_get();
    uint32_t used = 0;
    memset(dir, 0, (size_t)dim * sizeof *dir);
    for (uint32_t i = 0; i < v->steps; i++) {
        if (!step_used(v, i))
            continue;
        k->axpy(dir, step_act(v, i), dim, 1.0f);
        used++;
    }
    k->scale(dir, dim, 1.0f / (float)used);
    k->axpy(dir, from, dim, -1.0f);
    const uint32_t bits = k->max_magnitude(from, dim);
    float largest;
    memcpy(&largest, &bits, sizeof largest);
    const double scale = largest;
    const double nrm = norm2(dir, dim);
    if (!isfinite(nrm))
        return sona_fail(NULL, SONA_E_NONFINITE, "signal: the step activations' displacement overflowed");
    if (!(nrm > 1e-6 * scale * sqrt((double)dim)) || nrm == 0.0)
        return sona_fail(NULL, SONA_E_INVALID,
                         "signal: the step rewards are equal and the activations equal the output: no direction");
    return SONA_OK;
}

static sona_status reject(sona_signal_builder *sb, sona_status st)
{
    atomic_fetch_add_explicit(&sb->rejected, 1, memory_order_relaxed);
    return st;
}

/* The contrast's weight: the rewards' mean absolute deviation mad in units of the baseline's
 * running one (1 for the first), clipped to max_weight; with advance, mad is folded in. How far
 * apart a request's rewards lie says how much its exploration found: the contrast itself is
 * normalised to activation units, and this puts back, relative to the usual, what it dropped. */
static float spread_weight(sona_signal_baseline *b, float rate, float max_weight, double mad, int advance)
{
    double weight = 1.0;
    if (b->spread > 0.0f)
        weight = mad / b->spread;
    weight = weight > max_weight ? max_weight : weight;
    if (advance) {
        const double next = b->spread > 0.0f ? b->spread + rate * (mad - b->spread) : mad;
        if (next > 0.0 && next <= 2.0 * SONA_MAX_QUALITY) /* rewards within their range */
            b->spread = (float)next;
    }
    return (float)weight;
}

/* The weight of a signal of this kind (1: the contrast, with its rewards' mad; 0: quality-only)
 * against the options' baseline or the builder's own (under its lock, taken once), quality q
 * folded in (and the contrast's mad) when advance. */
static sona_status weigh(sona_signal_builder *sb, sona_signal_baseline *given, int kind, float q, double mad,
                         int advance, float *w)
{
    sona_signal_baseline *b = given ? given : &sb->own;
    if (!given)
        pthread_mutex_lock(&sb->mu);
    float advantage;
    const sona_status st = sona_signal_baseline_weigh(b, sb->cfg.baseline_rate, sb->cfg.max_weight, q, advance,
                                                      &advantage);
    if (st == SONA_OK)
        *w = kind == 1 ? spread_weight(b, sb->cfg.baseline_rate, sb->cfg.max_weight, mad, advance)
                       : advantage * sb->cfg.outcome_share;
    if (!given)
        pthread_mutex_unlock(&sb->mu);
    return st;
}

/* The signal of v into x, delta, w. The query comes decoded in x (a trajectory's) or as a
 * pointer (arrays); x is written only on success. */
static sona_status compute(sona_signal_builder *sb, step_view *v, const float *query, float quality,
                           const sona_signal_options *opt, float *x, float *delta, float *w)
{
    if (!isfinite(opt->quality_offset) || !isfinite(quality - opt->quality_offset))
        return reject(sb, sona_fail(NULL, SONA_E_NONFINITE, "signal: quality %g less the offset %g is not finite",
                                    (double)quality, (double)opt->quality_offset));
    /* Scratch: the direction, a trajectory's decoded step, and its decoded query. */
    float stack[3 * STACK_DIM];
    const size_t need = (size_t)v->dim * (v->t ? 3 : 1);
    float *dir = need <= 3 * STACK_DIM ? stack : malloc(need * sizeof *dir);
    if (!dir)
        return reject(sb, sona_fail(NULL, SONA_E_NOMEM, "signal: out of memory for a %u-wide direction", v->dim));
    v->row = dir + v->dim;
    const float *q = query;
    if (v->t) {
        float *qrow = dir + 2 * (size_t)v->dim;
        sona_trajectory_query(v->t, qrow, v->dim);
        q = qrow;
    }
    quality -= opt->quality_offset;
    float weight = 1.0f;
    double mad = 0.0;
    sona_status st = SONA_OK;
    const int kind = contrast(v, dir, &mad);
    if (kind < 0) {
        st = sona_fail(NULL, SONA_E_NONFINITE, "signal: the activation contrast overflowed");
    } else if (kind == 1 || (st = displacement(v, opt->output ? opt->output : q, dir)) == SONA_OK) {
        /* A contrast's quality still feeds the baseline, so a later quality-only signal measures
         * from it. */
        st = weigh(sb, opt->baseline, kind, quality, mad, opt->advance_baseline, &weight);
    }
    if (st == SONA_OK) {
        memmove(x, q, (size_t)v->dim * sizeof *x);
        memcpy(delta, dir, (size_t)v->dim * sizeof *delta);
        *w = weight;
        atomic_fetch_add_explicit(&sb->accepted, 1, memory_order_relaxed);
    } else {
        reject(sb, st);
    }
    if (dir != stack)
        free(dir);
    return st;
}

void sona_signal_options_default(sona_signal_options *opt)
{
    if (!opt)
        return;
    memset(opt, 0, sizeof *opt);
    opt->layer = SONA_LAYER_NONE;
    opt->advance_baseline = 1;
}

sona_status sona_signal_from_trajectory_opts(sona_signal_builder *sb, const sona_trajectory *t,
                                             const sona_signal_options *opt, float *x, float *delta,
                                             float *w)
{
    static const char fn[] = "sona_signal_from_trajectory";
    if (!sb || !t || !opt || !x || !delta || !w)
        return sona_fail(NULL, SONA_E_NULL, "%s: builder, trajectory, options, x, delta and w are required", fn);
    if (opt->layer < SONA_LAYER_NONE)
        return sona_fail(NULL, SONA_E_INVALID, "%s: layer %d is neither >= 0 nor SONA_LAYER_NONE", fn, opt->layer);
    const unsigned long long id = sona_trajectory_id(t);
    if (!sona_trajectory_ended(t))
        return reject(sb, sona_fail(NULL, SONA_E_STATE, "%s: trajectory %llu has not ended", fn, id));
    step_view v = {.t = t, .layer = opt->layer, .steps = sona_trajectory_step_count(t),
                   .dim = sona_trajectory_dim(t)};
    uint32_t used = 0;
    for (uint32_t i = 0; i < v.steps; i++) {
        if (!step_used(&v, i))
            continue;
        sona_trajectory_step s;
        sona_trajectory_get_step(t, i, &s);
        if (s.activations_len != v.dim)
            return reject(sb, sona_fail(NULL, SONA_E_SIZE, "%s: trajectory %llu step %u has %u activations, the query %u",
                                        fn, id, i, s.activations_len, v.dim));
        used++;
    }
    if (used == 0)
        return reject(sb, sona_fail(NULL, SONA_E_EMPTY, "%s: trajectory %llu has no steps (of layer %d)", fn,
                                    id, opt->layer));
    if (opt->output && !sona_all_finite(opt->output, v.dim))
        return reject(sb, sona_fail(NULL, SONA_E_NONFINITE, "%s: NaN or Inf in the output", fn));
    /* The trajectory refused non-finite data when it was built. */
    return compute(sb, &v, NULL, sona_trajectory_quality(t), opt, x, delta, w);
}

sona_status sona_signal_from_trajectory(sona_signal_builder *sb, const sona_trajectory *t, float *x,
                                        float *delta, float *w)
{
    sona_signal_options opt;
    sona_signal_options_default(&opt);
    return sona_signal_from_trajectory_opts(sb, t, &opt, x, delta, w);
}

sona_status sona_signal_compute(sona_signal_builder *sb, const float *query, uint32_t dim,
                                const float *activations, const float *rewards, uint32_t steps,
                                float final_quality, float *x, float *delta, float *w)
{
    sona_signal_options opt;
    sona_signal_options_default(&opt);
    return sona_signal_compute_opts(sb, query, dim, activations, rewards, steps, final_quality, &opt, x, delta, w);
}

sona_status sona_signal_compute_opts(sona_signal_builder *sb, const float *query, uint32_t dim,
                                     const float *activations, const float *rewards, uint32_t steps,
                                     float final_quality, const sona_signal_options *opt, float *x, float *delta,
                                     float *w)
{
    static const char fn[] = "sona_signal_compute";
    if (!sb || !query || !activations || !rewards || !x || !delta || !w || !opt)
        return sona_fail(NULL, SONA_E_NULL, "%s: every pointer argument is required", fn);
    if (dim == 0)
        return reject(sb, sona_fail(NULL, SONA_E_INVALID, "%s: dim is 0", fn));
    if (steps == 0)
        return reject(sb, sona_fail(NULL, SONA_E_EMPTY, "%s: no steps", fn));
    if (!sona_all_finite(query, dim) || !sona_all_finite(activations, (size_t)steps * dim) ||
        !sona_all_finite(rewards, steps) || !isfinite(final_quality) ||
        (opt->output && !sona_all_finite(opt->output, dim)))
        return reject(sb, sona_fail(NULL, SONA_E_NONFINITE,
                                    "%s: NaN or Inf in the query, activations, rewards, quality or output", fn));
    step_view v = {.layer = SONA_LAYER_NONE, .acts = activations, .rewards = rewards, .steps = steps,
                   .dim = dim};
    return compute(sb, &v, query, final_quality, opt, x, delta, w);
}

void sona_signal_builder_get_stats(const sona_signal_builder *csb, sona_signal_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    out->baseline = NAN;
    if (!csb)
        return;
    sona_signal_builder *sb = (sona_signal_builder *)csb; /* the lock and atomics only */
    out->accepted = atomic_load_explicit(&sb->accepted, memory_order_relaxed);
    out->rejected = atomic_load_explicit(&sb->rejected, memory_order_relaxed);
    pthread_mutex_lock(&sb->mu);
    if (sb->own.count)
        out->baseline = sb->own.mean;
    pthread_mutex_unlock(&sb->mu);
}

sona_status sona_signal_builder_get_baseline(const sona_signal_builder *csb, sona_signal_baseline *out)
{
    if (!csb || !out)
        return sona_fail(NULL, SONA_E_NULL, "%s: builder and out are required", __func__);
    sona_signal_builder *sb = (sona_signal_builder *)csb; /* the lock only */
    pthread_mutex_lock(&sb->mu);
    *out = sb->own;
    pthread_mutex_unlock(&sb->mu);
    return SONA_OK;
}

sona_status sona_signal_builder_set_baseline(sona_signal_builder *sb, const sona_signal_baseline *b)
{
    static const char fn[] = "sona_signal_builder_set_baseline";
    if (!sb)
        return sona_fail(NULL, SONA_E_NULL, "%s: builder is NULL", fn);
    if (b && (!isfinite(b->mean) || !isfinite(b->var) || !isfinite(b->spread)))
        return sona_fail(NULL, SONA_E_NONFINITE, "%s: mean %g, variance %g or spread %g is not finite", fn,
                         (double)b->mean, (double)b->var, (double)b->spread);
    if (b && (b->var < 0.0f || b->spread < 0.0f))
        return sona_fail(NULL, SONA_E_INVALID, "%s: variance %g or spread %g is negative", fn, (double)b->var,
                         (double)b->spread);
    pthread_mutex_lock(&sb->mu);
    if (b)
        sb->own = *b;
    else
        memset(&sb->own, 0, sizeof sb->own);
    pthread_mutex_unlock(&sb->mu);
    return SONA_OK;
}
