/* Learning signals from trajectories: reward-weighted activation contrast and a running
 * quality baseline shared (atomically) by every thread that computes signals. */
#include "sona/signal.h"

#include "core/error.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* The baseline lives in one 64-bit atomic: the float's bits, plus a flag once initialised, so
 * a compare-and-swap moves both together. */
#define BASELINE_SET (1ull << 32)

/* Widths up to this use a stack scratch (the direction and a decoded step); wider ones allocate. */
#define STACK_DIM 2048

struct sona_signal_builder {
    sona_signal_config cfg;
    _Atomic uint64_t baseline;
    _Atomic uint64_t accepted, rejected;
};

void sona_signal_config_default(sona_signal_config *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof *cfg);
    cfg->baseline_rate = 0.05f;
}

sona_status sona_signal_builder_create(const sona_signal_config *cfg, sona_signal_builder **out)
{
    static const char fn[] = "sona_signal_builder_create";
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "%s: out is NULL", fn);
    *out = NULL;
    if (!cfg)
        return sona_fail(NULL, SONA_E_NULL, "%s: cfg is NULL", fn);
    if (!isfinite(cfg->baseline_rate))
        return sona_fail(NULL, SONA_E_NONFINITE, "%s: baseline_rate is %g", fn, (double)cfg->baseline_rate);
    if (!(cfg->baseline_rate > 0.0f && cfg->baseline_rate <= 1.0f))
        return sona_fail(NULL, SONA_E_INVALID, "%s: baseline_rate %g is outside (0, 1]", fn,
                         (double)cfg->baseline_rate);
    sona_signal_builder *sb = malloc(sizeof *sb);
    if (!sb)
        return sona_fail(NULL, SONA_E_NOMEM, "%s: out of memory", fn);
    sb->cfg = *cfg;
    atomic_init(&sb->baseline, 0);
    atomic_init(&sb->accepted, 0);
    atomic_init(&sb->rejected, 0);
    *out = sb;
    return SONA_OK;
}

void sona_signal_builder_destroy(sona_signal_builder *sb) { free(sb); }

const char *sona_signal_builder_last_error(const sona_signal_builder *sb)
{
    (void)sb;
    return sona_last_error();
}

static float bits_float(uint64_t state)
{
    const uint32_t bits = (uint32_t)state;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint64_t float_state(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return BASELINE_SET | bits;
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
    double s = 0.0;
    for (uint32_t j = 0; j < n; j++)
        s += (double)a[j] * a[j];
    return sqrt(s);
}

/* The unit direction of the signal into dir[dim]; SONA_OK or a refusal (message set). */
static sona_status direction(const step_view *v, float *dir)
{
    const uint32_t dim = v->dim;
    double mean = 0.0, lo = INFINITY, hi = -INFINITY;
    uint32_t used = 0, last_used = 0;
    for (uint32_t i = 0; i < v->steps; i++) {
        if (!step_used(v, i))
            continue;
        const double r = step_reward(v, i);
        mean += r;
        lo = r < lo ? r : lo;
        hi = r > hi ? r : hi;
        used++;
        last_used = i;
    }
    mean /= used;
    if (hi - lo > 1e-6 * fmax(1.0, fabs(mean))) {
        /* Contrast sum_i (r_i - mean) a_i. When it nearly cancels (e.g. the same activations
         * at every step) what is left is rounding noise, so fall back to the last step. */
        double scale = 0.0;
        memset(dir, 0, (size_t)dim * sizeof *dir);
        for (uint32_t i = 0; i < v->steps; i++) {
            if (!step_used(v, i))
                continue;
            const float *a = step_act(v, i);
            const float c = (float)(step_reward(v, i) - mean);
            for (uint32_t j = 0; j < dim; j++)
                dir[j] += c * a[j];
            scale += fabs(c) * norm2(a, dim);
        }
        const double nrm = norm2(dir, dim);
        if (!isfinite(nrm) || !isfinite(scale))
            return sona_fail(NULL, SONA_E_NONFINITE, "signal: the activation contrast overflowed");
        if (nrm > 1e-5 * scale) {
            const float inv = (float)(1.0 / nrm);
            for (uint32_t j = 0; j < dim; j++)
                dir[j] *= inv;
            return SONA_OK;
        }
    }
    const float *last = step_act(v, last_used);
    const double nrm = norm2(last, dim);
    if (!isfinite(nrm))
        return sona_fail(NULL, SONA_E_NONFINITE, "signal: the last step's norm overflowed");
    if (nrm == 0.0)
        return sona_fail(NULL, SONA_E_INVALID, "signal: the last step's activations are all zero, no direction to learn");
    const float inv = (float)(1.0 / nrm);
    for (uint32_t j = 0; j < dim; j++)
        dir[j] = last[j] * inv;
    return SONA_OK;
}

/* w = q - baseline (0 before the first), and with `advance` the baseline moves toward q. */
static sona_status advantage(sona_signal_builder *sb, float q, int advance, float *w)
{
    uint64_t old = atomic_load_explicit(&sb->baseline, memory_order_relaxed);
    for (;;) {
        float adv, next;
        if (old & BASELINE_SET) {
            const float b = bits_float(old);
            adv = q - b;
            next = b + sb->cfg.baseline_rate * adv;
        } else {
            adv = 0.0f;
            next = q;
        }
        if (!isfinite(adv) || !isfinite(next))
            return sona_fail(NULL, SONA_E_NONFINITE, "signal: quality %g against baseline %g overflows",
                             (double)q, (double)bits_float(old));
        if (!advance || atomic_compare_exchange_weak_explicit(&sb->baseline, &old, float_state(next),
                                                              memory_order_relaxed, memory_order_relaxed)) {
            *w = adv;
            return SONA_OK;
        }
    }
}

static sona_status reject(sona_signal_builder *sb, sona_status st)
{
    atomic_fetch_add_explicit(&sb->rejected, 1, memory_order_relaxed);
    return st;
}

/* The signal of v into x, delta, w. The query comes decoded in x (a trajectory's) or as a
 * pointer (arrays); x is written only on success. */
static sona_status compute(sona_signal_builder *sb, step_view *v, const float *query, float quality,
                           int advance, float *x, float *delta, float *w)
{
    /* Scratch: the direction, and a trajectory's decoded step. */
    float stack[2 * STACK_DIM];
    const size_t need = (size_t)v->dim * (v->t ? 2 : 1);
    float *dir = need <= 2 * STACK_DIM ? stack : malloc(need * sizeof *dir);
    if (!dir)
        return sona_fail(NULL, SONA_E_NOMEM, "signal: out of memory for a %u-wide direction", v->dim);
    v->row = dir + v->dim;
    sona_status st = direction(v, dir);
    float adv = 0.0f;
    if (st == SONA_OK)
        st = advantage(sb, quality, advance, &adv);
    if (st == SONA_OK) {
        if (v->t)
            sona_trajectory_query(v->t, x, v->dim);
        else
            memcpy(x, query, (size_t)v->dim * sizeof *x);
        memcpy(delta, dir, (size_t)v->dim * sizeof *delta);
        *w = adv;
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
    /* The trajectory refused non-finite data when it was built. */
    return compute(sb, &v, NULL, sona_trajectory_quality(t), opt->advance_baseline, x, delta, w);
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
    static const char fn[] = "sona_signal_compute";
    if (!sb || !query || !activations || !rewards || !x || !delta || !w)
        return sona_fail(NULL, SONA_E_NULL, "%s: every pointer argument is required", fn);
    if (dim == 0)
        return reject(sb, sona_fail(NULL, SONA_E_INVALID, "%s: dim is 0", fn));
    if (steps == 0)
        return reject(sb, sona_fail(NULL, SONA_E_EMPTY, "%s: no steps", fn));
    if (!sona_all_finite(query, dim) || !sona_all_finite(activations, (size_t)steps * dim) ||
        !sona_all_finite(rewards, steps) || !isfinite(final_quality))
        return reject(sb, sona_fail(NULL, SONA_E_NONFINITE,
                                    "%s: NaN or Inf in the query, activations, rewards or quality", fn));
    step_view v = {.layer = SONA_LAYER_NONE, .acts = activations, .rewards = rewards, .steps = steps,
                   .dim = dim};
    return compute(sb, &v, query, final_quality, 1, x, delta, w);
}

void sona_signal_builder_get_stats(const sona_signal_builder *csb, sona_signal_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    out->baseline = NAN;
    if (!csb)
        return;
    sona_signal_builder *sb = (sona_signal_builder *)csb; /* atomics are only read */
    out->accepted = atomic_load_explicit(&sb->accepted, memory_order_relaxed);
    out->rejected = atomic_load_explicit(&sb->rejected, memory_order_relaxed);
    const uint64_t b = atomic_load_explicit(&sb->baseline, memory_order_relaxed);
    if (b & BASELINE_SET)
        out->baseline = bits_float(b);
}

sona_status sona_signal_builder_set_baseline(sona_signal_builder *sb, float baseline)
{
    if (!sb)
        return sona_fail(NULL, SONA_E_NULL, "sona_signal_builder_set_baseline: builder is NULL");
    if (isinf(baseline))
        return sona_fail(NULL, SONA_E_NONFINITE, "sona_signal_builder_set_baseline: baseline is Inf");
    atomic_store_explicit(&sb->baseline, isnan(baseline) ? 0 : float_state(baseline),
                          memory_order_relaxed);
    return SONA_OK;
}
