/* SPDX-License-Identifier: MIT */
/* EWC++: online diagonal Fisher, task snapshots at detected boundaries, Fisher-weighted
 * consolidation of the oldest tasks, and the penalty kept pre-reduced (see include/sona/ewc.h
 * for the rules). */
#include "sona/ewc.h"

#include "common/error.h"
#include "core/adapt/ewc_internal.h"
#include "dispatch/vecmath.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct boundary_detector {
    uint64_t samples;   /* since the start or the last boundary */
    double short_mean, long_mean, long_var;
} boundary_detector;

struct sona_ewc {
    sona_ewc_config cfg;
    float *fisher;                  /* running Fisher of the current task */
    float **task_theta, **task_fisher; /* max_tasks + 1 slots: one spare before a merge */
    float *task_weight;             /* each snapshot's share of the penalty, in [0, 1] */
    uint32_t task_count;
    float *fisher_sum, *fisher_theta;
    float lambda;
    boundary_detector det;
    uint64_t boundaries;
    sona_errbuf err;
};

void sona_ewc_config_default(sona_ewc_config *cfg, uint32_t param_count)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof *cfg);
    cfg->param_count = param_count;
    cfg->max_tasks = 5;
    cfg->fisher_decay = 0.99f;
    cfg->lambda_base = 1.0f;
    cfg->lambda_max = 1e6f;
    cfg->boundary_z = 5.0f;
    cfg->min_samples = 100;
    cfg->short_rate = 0.2f;
    cfg->long_rate = 0.01f;
}

static sona_status check_config(const sona_ewc_config *c)
{
    static const char fn[] = "sona_ewc_create";
    if (c->param_count == 0 || c->max_tasks == 0 || c->max_tasks > SONA_EWC_MAX_TASKS || c->min_samples < 2)
        return sona_fail(NULL, SONA_E_INVALID,
                         "%s: param_count >= 1, max_tasks 1..%u and min_samples >= 2 are required", fn,
                         SONA_EWC_MAX_TASKS);
    if (!isfinite(c->fisher_decay) || !isfinite(c->lambda_base) || !isfinite(c->lambda_max) ||
        !isfinite(c->boundary_z) || !isfinite(c->short_rate) || !isfinite(c->long_rate))
        return sona_fail(NULL, SONA_E_NONFINITE, "%s: NaN or Inf in the config", fn);
    if (c->fisher_decay < 0.0f || c->fisher_decay >= 1.0f || c->lambda_base < 0.0f ||
        c->lambda_max < c->lambda_base || !(c->short_rate > 0.0f && c->short_rate <= 1.0f) ||
        !(c->long_rate > 0.0f && c->long_rate < c->short_rate) || c->boundary_z <= 0.0f)
        return sona_fail(NULL, SONA_E_INVALID,
                         "%s: need 0 <= fisher_decay < 1, 0 <= lambda_base <= lambda_max, "
                         "0 < long_rate < short_rate <= 1, boundary_z > 0", fn);
    return SONA_OK;
}

sona_status sona_ewc_create(const sona_ewc_config *cfg, sona_ewc **out)
{
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "%s: out is NULL", __func__);
    *out = NULL;
    if (!cfg)
        return sona_fail(NULL, SONA_E_NULL, "%s: cfg is NULL", __func__);
    sona_status st = check_config(cfg);
    if (st != SONA_OK)
        return st;
    sona_ewc *e = calloc(1, sizeof *e);
    if (!e)
        return sona_fail(NULL, SONA_E_NOMEM, "%s: out of memory", __func__);
    e->cfg = *cfg;
    const size_t n = cfg->param_count, slots = (size_t)cfg->max_tasks + 1;
    e->fisher = calloc(n, sizeof(float));
    e->fisher_sum = calloc(n, sizeof(float));
    e->fisher_theta = calloc(n, sizeof(float));
    e->task_theta = calloc(slots, sizeof(float *));
    e->task_fisher = calloc(slots, sizeof(float *));
    e->task_weight = malloc(slots * sizeof(float));
    int ok = e->fisher && e->fisher_sum && e->fisher_theta && e->task_theta && e->task_fisher && e->task_weight;
    for (size_t s = 0; ok && s < slots; s++) {
        e->task_theta[s] = malloc(n * sizeof(float));
        e->task_fisher[s] = malloc(n * sizeof(float));
        ok = e->task_theta[s] && e->task_fisher[s];
    }
    if (!ok) {
        sona_ewc_destroy(e);
        return sona_fail(NULL, SONA_E_NOMEM, "%s: out of memory for %zu parameters x %zu tasks", __func__, n, slots);
    }
    e->lambda = cfg->lambda_base;
    *out = e;
    return SONA_OK;
}

void sona_ewc_destroy(sona_ewc *e)
{
    if (!e)
        return;
    for (size_t s = 0; s <= (size_t)e->cfg.max_tasks; s++) {
        if (e->task_theta)
            free(e->task_theta[s]);
        if (e->task_fisher)
            free(e->task_fisher[s]);
    }
    free(e->task_theta);
    free(e->task_fisher);
    free(e->task_weight);
    free(e->fisher);
    free(e->fisher_sum);
    free(e->fisher_theta);
    free(e);
}

const char *sona_ewc_last_error(const sona_ewc *e) { return e ? e->err.msg : sona_last_error(); }
const sona_ewc_config *sona_ewc_get_config(const sona_ewc *e) { return e ? &e->cfg : NULL; }
float *sona_ewc_fisher(sona_ewc *e) { return e ? e->fisher : NULL; }
float sona_ewc_lambda(const sona_ewc *e) { return e ? e->lambda : 0.0f; }
uint32_t sona_ewc_task_count(const sona_ewc *e) { return e ? e->task_count : 0; }
uint64_t sona_ewc_boundaries(const sona_ewc *e) { return e ? e->boundaries : 0; }

sona_status sona_ewc_get_detector(const sona_ewc *e, sona_ewc_detector *out)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "%s: ewc is NULL", __func__);
    if (!out)
        return sona_fail((sona_errbuf *)&e->err, SONA_E_NULL, "%s: out is NULL", __func__);
    *out = (sona_ewc_detector){.samples = e->det.samples,
                               .short_mean = e->det.short_mean,
                               .long_mean = e->det.long_mean,
                               .long_var = e->det.long_var,
                               .boundaries = e->boundaries};
    return SONA_OK;
}

sona_status sona_ewc_set_detector(sona_ewc *e, const sona_ewc_detector *d)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "%s: ewc is NULL", __func__);
    if (!d)
        return sona_fail(&e->err, SONA_E_NULL, "%s: detector is NULL", __func__);
    /* Norms and their squared deviations: finite and not negative. */
    if (!isfinite(d->short_mean) || !isfinite(d->long_mean) || !isfinite(d->long_var))
        return sona_fail(&e->err, SONA_E_NONFINITE, "%s: NaN or Inf in the means or variance", __func__);
    if (!(d->short_mean >= 0.0 && d->long_mean >= 0.0 && d->long_var >= 0.0))
        return sona_fail(&e->err, SONA_E_INVALID, "%s: means and variance must be >= 0", __func__);
    e->det = (boundary_detector){.samples = d->samples,
                                 .short_mean = d->short_mean,
                                 .long_mean = d->long_mean,
                                 .long_var = d->long_var};
    e->boundaries = d->boundaries;
    return SONA_OK;
}

/* Common argument checks: handle, pointers, size, finiteness of each vector given. */
/* The vectors a and b (may be the same) are given and n is the state's parameter count. */
static sona_status check_shape(const sona_ewc *ce, const char *fn, uint32_t n, const float *a,
                               const float *b)
{
    sona_ewc *e = (sona_ewc *)ce; /* only the error buffer is written */
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "%s: ewc is NULL", fn);
    if (!a || !b)
        return sona_fail(&e->err, SONA_E_NULL, "%s: a required vector is NULL", fn);
    if (n != e->cfg.param_count)
        return sona_fail(&e->err, SONA_E_SIZE, "%s: %u parameters given, the EWC state has %u", fn, n,
                         e->cfg.param_count);
    return SONA_OK;
}

static sona_status nonfinite_input(sona_ewc *e, const char *fn)
{
    return sona_fail(&e->err, SONA_E_NONFINITE, "%s: NaN or Inf in the input", fn);
}

/* check_shape, and no NaN or Inf in a or b. */
static sona_status check_vectors(const sona_ewc *ce, const char *fn, uint32_t n, const float *a,
                                 const float *b)
{
    const sona_status st = check_shape(ce, fn, n, a, b);
    if (st != SONA_OK)
        return st;
    if (!sona_all_finite(a, n) || (b != a && !sona_all_finite(b, n)))
        return nonfinite_input((sona_ewc *)ce, fn);
    return SONA_OK;
}

static void fold_fisher(sona_ewc *e, const float *g)
{
    sona_host_kernels_get()->fisher_ema(e->fisher, g, e->cfg.param_count, e->cfg.fisher_decay);
}

void sona_ewc_fold_fisher(sona_ewc *e, const float *g) { fold_fisher(e, g); }

sona_status sona_ewc_update_fisher(sona_ewc *e, const float *g, uint32_t n)
{
    sona_status st = check_vectors(e, "sona_ewc_update_fisher", n, g, g);
    if (st != SONA_OK)
        return st;
    fold_fisher(e, g);
    return SONA_OK;
}

/* sum_t w_t F_t and sum_t w_t F_t theta*_t from the snapshots, then the lambda rule (on the
 * unweighted Fisher: a task's weight scales its pull, not the stiffness every task is given). */
static void reduce_tasks(sona_ewc *e)
{
    const size_t n = e->cfg.param_count;
    float *fs = e->fisher_sum, *ft = e->fisher_theta;
    memset(fs, 0, n * sizeof *fs);
    memset(ft, 0, n * sizeof *ft);
    double mean = 0.0;
    for (uint32_t t = 0; t < e->task_count; t++) {
        const float *F = e->task_fisher[t], *th = e->task_theta[t], w = e->task_weight[t];
        for (size_t i = 0; i < n; i++) {
            mean += F[i];
            fs[i] += w * F[i];
            ft[i] += w * F[i] * th[i];
        }
    }
    mean /= (double)n;
    double lambda = e->cfg.lambda_base;
    if (e->task_count > 0 && mean > 0.0)
        lambda = e->cfg.lambda_base * e->task_count / mean;
    e->lambda = (float)fmin(lambda, e->cfg.lambda_max);
}

/* Merges the two oldest snapshots into slot 0 (Fisher-weighted) and closes the gap. */
static void consolidate_oldest(sona_ewc *e)
{
    const size_t n = e->cfg.param_count;
    float *F1 = e->task_fisher[0], *t1 = e->task_theta[0];
    const float *F2 = e->task_fisher[1], *t2 = e->task_theta[1];
    for (size_t i = 0; i < n; i++) {
        const float F = F1[i] + F2[i];
        t1[i] = F > 0.0f ? (F1[i] * t1[i] + F2[i] * t2[i]) / F : 0.5f * (t1[i] + t2[i]);
        F1[i] = F;
    }
    e->task_weight[0] = fmaxf(e->task_weight[0], e->task_weight[1]);
    /* Slot 1's buffers become the spare at the end. */
    float *spare_t = e->task_theta[1], *spare_f = e->task_fisher[1];
    for (uint32_t s = 1; s + 1 < e->task_count; s++) {
        e->task_theta[s] = e->task_theta[s + 1];
        e->task_fisher[s] = e->task_fisher[s + 1];
        e->task_weight[s] = e->task_weight[s + 1];
    }
    e->task_count--;
    e->task_theta[e->task_count] = spare_t;
    e->task_fisher[e->task_count] = spare_f;
}

static void push_task(sona_ewc *e, const float *theta, const float *fisher)
{
    const size_t bytes = (size_t)e->cfg.param_count * sizeof(float);
    memcpy(e->task_theta[e->task_count], theta, bytes);
    memcpy(e->task_fisher[e->task_count], fisher, bytes);
    e->task_weight[e->task_count] = 1.0f;
    e->task_count++;
    if (e->task_count > e->cfg.max_tasks)
        consolidate_oldest(e);
    reduce_tasks(e);
}

/* Snapshot of the task that just ended, and a fresh start for the next one. */
static void take_boundary(sona_ewc *e, const float *theta)
{
    push_task(e, theta, e->fisher);
    memset(e->fisher, 0, (size_t)e->cfg.param_count * sizeof *e->fisher);
    e->det.samples = 0;
    e->boundaries++;
}

sona_status sona_ewc_add_task(sona_ewc *e, const float *theta_star, const float *fisher, uint32_t n)
{
    sona_status st = check_vectors(e, "sona_ewc_add_task", n, theta_star, fisher);
    if (st != SONA_OK)
        return st;
    for (uint32_t i = 0; i < n; i++)
        if (fisher[i] < 0.0f)
            return sona_fail(&e->err, SONA_E_INVALID, "%s: Fisher value %u is negative", __func__, i);
    push_task(e, theta_star, fisher);
    return SONA_OK;
}

sona_status sona_ewc_end_task(sona_ewc *e, const float *theta, uint32_t n)
{
    sona_status st = check_vectors(e, "sona_ewc_end_task", n, theta, theta);
    if (st != SONA_OK)
        return st;
    take_boundary(e, theta);
    return SONA_OK;
}

/* Feeds one gradient norm to the detector; 1 when it says a new task began. */
static int detect(sona_ewc *e, double norm)
{
    boundary_detector *d = &e->det;
    if (d->samples == 0) {
        *d = (boundary_detector){.samples = 1, .short_mean = norm, .long_mean = norm};
        return 0;
    }
    const double sr = e->cfg.short_rate, lr = e->cfg.long_rate;
    d->short_mean += sr * (norm - d->short_mean);
    /* z against the long statistics before this sample, so a jump does not hide itself. */
    /* The long variance starts at 0 and reaches its level over about 1 / lr samples: divided by
     * the weight its EMA has gathered so far (1 - (1 - lr)^(samples - 1), as Adam corrects its
     * moments), a young detector does not mistake its first fluctuations for a shift. */
    const double gathered = 1.0 - pow(1.0 - lr, (double)(d->samples - 1));
    const double var = gathered > 0.0 ? d->long_var / gathered : 0.0;
    const double se = sqrt(var * sr / (2.0 - sr)) + 0.01 * d->long_mean + 1e-30;
    const double z = (d->short_mean - d->long_mean) / se;
    if (d->samples >= e->cfg.min_samples && z > e->cfg.boundary_z)
        return 1;
    const double dev = norm - d->long_mean;
    d->long_mean += lr * dev;
    d->long_var = (1.0 - lr) * (d->long_var + lr * dev * dev);
    d->samples++;
    return 0;
}

/* The detector on one (checked) norm; on a boundary, the snapshot of theta. */
static int observe_checked(sona_ewc *e, const float *theta, double norm)
{
    if (!detect(e, norm))
        return 0;
    take_boundary(e, theta);
    detect(e, norm); /* the first sample of the new task */
    return 1;
}

sona_status sona_ewc_observe_norm(sona_ewc *e, const float *theta, uint32_t n, float grad_norm,
                                  int *boundary)
{
    if (boundary)
        *boundary = 0;
    sona_status st = check_vectors(e, "sona_ewc_observe_norm", n, theta, theta);
    if (st != SONA_OK)
        return st;
    if (!isfinite(grad_norm))
        return sona_fail(&e->err, SONA_E_NONFINITE, "%s: gradient norm %g is not finite", __func__,
                         (double)grad_norm);
    if (grad_norm < 0.0f)
        return sona_fail(&e->err, SONA_E_INVALID, "%s: gradient norm %g is negative", __func__,
                         (double)grad_norm);
    const int b = observe_checked(e, theta, grad_norm);
    if (boundary)
        *boundary = b;
    return SONA_OK;
}

sona_status sona_ewc_observe(sona_ewc *e, const float *theta, const float *g, uint32_t n, int *boundary)
{
    if (boundary)
        *boundary = 0;
    static const char fn[] = "sona_ewc_observe";
    /* g's own finiteness check is its norm's (loop A calls this on every request): a NaN or
     * Inf in g makes the sum of squares non-finite too. */
    sona_status st = check_shape(e, fn, n, theta, g);
    if (st != SONA_OK)
        return st;
    if (!sona_all_finite(theta, n))
        return nonfinite_input(e, fn);
    const double norm = sqrt(sona_host_kernels_get()->sum_squares(g, n));
    if (!isfinite(norm))
        return sona_all_finite(g, n) ? sona_fail(&e->err, SONA_E_NONFINITE, "%s: the gradient's norm overflows", fn)
                                     : nonfinite_input(e, fn);
    const int b = observe_checked(e, theta, norm);
    if (boundary)
        *boundary = b;
    fold_fisher(e, g);
    return SONA_OK;
}

sona_status sona_ewc_apply_constraints(const sona_ewc *ce, const float *theta, const float *g,
                                       float *out, uint32_t n)
{
    static const char fn[] = "sona_ewc_apply_constraints";
    sona_ewc *e = (sona_ewc *)ce; /* only the error buffer is written */
    sona_status st = check_vectors(e, fn, n, theta, g);
    if (st != SONA_OK)
        return st;
    if (!out)
        return sona_fail(&e->err, SONA_E_NULL, "%s: out is NULL", fn);
    if (e->task_count == 0) {
        if (out != g)
            memcpy(out, g, (size_t)n * sizeof *out);
        return SONA_OK;
    }
    sona_host_kernels_get()->penalise(out, g, theta, e->fisher_sum, e->fisher_theta, n, e->lambda);
    return SONA_OK;
}

sona_status sona_ewc_penalty(const sona_ewc *e, const float **fisher_sum, const float **fisher_theta,
                             float *lambda)
{
    if (!e || !fisher_sum || !fisher_theta || !lambda)
        return sona_fail(e ? (sona_errbuf *)&e->err : NULL, SONA_E_NULL,
                         "%s: every argument is required", __func__);
    const int any = e->task_count > 0;
    *fisher_sum = any ? e->fisher_sum : NULL;
    *fisher_theta = any ? e->fisher_theta : NULL;
    *lambda = e->lambda;
    return SONA_OK;
}

sona_status sona_ewc_set_task_weights(sona_ewc *e, const float *weights, uint32_t count)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "%s: ewc is NULL", __func__);
    if (!weights && count)
        return sona_fail(&e->err, SONA_E_NULL, "%s: weights is NULL", __func__);
    if (count != e->task_count)
        return sona_fail(&e->err, SONA_E_SIZE, "%s: %u weights given for %u tasks", __func__, count,
                         e->task_count);
    for (uint32_t t = 0; t < count; t++)
        if (!(weights[t] >= 0.0f && weights[t] <= 1.0f))
            return sona_fail(&e->err, isfinite(weights[t]) ? SONA_E_INVALID : SONA_E_NONFINITE,
                             "%s: weight %u is %g, not in [0, 1]", __func__, t, (double)weights[t]);
    memcpy(e->task_weight, weights, (size_t)count * sizeof *weights);
    reduce_tasks(e);
    return SONA_OK;
}

float sona_ewc_task_weight(const sona_ewc *e, uint32_t i)
{
    return e && i < e->task_count ? e->task_weight[i] : 0.0f;
}

sona_status sona_ewc_get_task(const sona_ewc *e, uint32_t i, float *theta_star, float *fisher)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "%s: ewc is NULL", __func__);
    if (i >= e->task_count)
        return sona_fail((sona_errbuf *)&e->err, SONA_E_INVALID, "%s: task %u of %u", __func__, i,
                         e->task_count);
    const size_t bytes = (size_t)e->cfg.param_count * sizeof(float);
    if (theta_star)
        memcpy(theta_star, e->task_theta[i], bytes);
    if (fisher)
        memcpy(fisher, e->task_fisher[i], bytes);
    return SONA_OK;
}
