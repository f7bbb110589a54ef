/* SPDX-License-Identifier: MIT */
/* libsona: EWC++ (elastic weight consolidation, online), protection against forgetting. */
#ifndef SONA_EWC_H
#define SONA_EWC_H

#include "sona/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* EWC++ over one parameter vector theta[param_count] (e.g. an adapter's A and B back to back).
 *
 * Gradients follow the library's ascent convention (theta += lr * g, as sona_lora does).
 *  - Fisher: an online diagonal estimate F <- decay * F + (1 - decay) * g^2.
 *  - Tasks: at a task boundary the pair (theta*, F) is stored as a task snapshot and the
 *    running Fisher starts over for the new task. At most max_tasks snapshots are kept: beyond
 *    that the two oldest merge into one, Fisher-weighted: F = F1 + F2,
 *    theta* = (F1 theta1 + F2 theta2) / F (the plain mean where F is 0), which keeps the
 *    penalty gradient exactly what the two gave separately.
 *  - Penalty: the constrained gradient is g - lambda * sum_t F_t (theta - theta*_t), kept in
 *    the pre-reduced form fisher_sum = sum_t F_t, fisher_theta = sum_t F_t theta*_t (updated
 *    whenever the tasks change), so applying it costs O(param_count) for any number of tasks.
 *    These are exactly the fisher_sum / fisher_theta of the op table's param_update.
 *  - Boundary detector (one-sided, on gradient norms): a short EMA (rate short_rate) and a long
 *    EMA (rate long_rate) of |g|, and the long EMA of its squared deviation, var. A boundary is
 *    detected when
 *        z = (short - long) / (sqrt(var * short_rate / (2 - short_rate)) + 0.01 * long) > boundary_z
 *    (the short mean's standard error under stationary noise, floored at 1% of the mean) and
 *    at least min_samples gradients were seen since the start or the last boundary. Only rises
 *    count: a gradient norm falling while a task converges is not a new task. The statistics
 *    restart after a boundary.
 *  - Lambda adaptation: after each snapshot,
 *        lambda = clamp(lambda_base * tasks / mean_i(fisher_sum_i), 0, lambda_max),
 *    i.e. every stored task contributes an average stiffness lambda * mean(F_t) of
 *    lambda_base, whatever the scale of the gradients. With no tasks, or an all-zero Fisher,
 *    lambda is lambda_base. Stability of a step needs lr * lambda * max(fisher_sum) < 2.
 * Sizes that differ from param_count are SONA_E_SIZE; NaN/Inf in inputs SONA_E_NONFINITE; a
 * refused call changes nothing.
 *
 * Thread safety: not internally locked; read-only accessors may run in parallel with each
 * other, every other call needs exclusive access (the learning loop owns it). */
typedef struct sona_ewc sona_ewc;

/* The most task snapshots a sona_ewc keeps (each holds theta* and a Fisher vector). */
#define SONA_EWC_MAX_TASKS 1024u

typedef struct sona_ewc_config {
    uint32_t param_count;   /* >= 1 */
    uint32_t max_tasks;     /* snapshots kept, 1..SONA_EWC_MAX_TASKS; default 5 */
    float fisher_decay;     /* in [0, 1); default 0.99 */
    float lambda_base;      /* default 1.0 */
    float lambda_max;       /* default 1e6 */
    float boundary_z;       /* default 5.0 */
    uint32_t min_samples;   /* gradients between boundaries, >= 2; default 100 */
    float short_rate;       /* in (0, 1]; default 0.2 */
    float long_rate;        /* in (0, short_rate); default 0.01 */
} sona_ewc_config;

SONA_API void sona_ewc_config_default(sona_ewc_config *cfg, uint32_t param_count);
SONA_API sona_status sona_ewc_create(const sona_ewc_config *cfg, sona_ewc **out);
/* NULL is a no-op. */
SONA_API void sona_ewc_destroy(sona_ewc *ewc);
SONA_API const char *sona_ewc_last_error(const sona_ewc *ewc);
SONA_API const sona_ewc_config *sona_ewc_get_config(const sona_ewc *ewc);

/* Folds one gradient g[n] into the running Fisher (n == param_count). No boundary check. */
SONA_API sona_status sona_ewc_update_fisher(sona_ewc *ewc, const float *g, uint32_t n);
/* The per-step call: runs the boundary detector on |g|; when it fires, snapshots the task
 * that just ended (theta as theta*, the running Fisher before g) and restarts the Fisher; then
 * folds g in. *boundary (may be NULL) is 1 when a boundary was taken. */
SONA_API sona_status sona_ewc_observe(sona_ewc *ewc, const float *theta, const float *g, uint32_t n,
                                      int *boundary);
/* For callers that fold the Fisher themselves (param_update's fused Fisher EMA on
 * sona_ewc_fisher()): the detector alone, on a gradient norm; snapshots theta on a boundary. */
SONA_API sona_status sona_ewc_observe_norm(sona_ewc *ewc, const float *theta, uint32_t n,
                                           float grad_norm, int *boundary);
/* Declares a task boundary now: snapshots (theta, running Fisher) and restarts the Fisher. */
SONA_API sona_status sona_ewc_end_task(sona_ewc *ewc, const float *theta, uint32_t n);

/* out[i] = g[i] - lambda * (fisher_sum[i] * theta[i] - fisher_theta[i]); out may equal g but
 * must not overlap theta. With no task stored, out = g. */
SONA_API sona_status sona_ewc_apply_constraints(const sona_ewc *ewc, const float *theta,
                                                const float *g, float *out, uint32_t n);

/* Each snapshot's share of the penalty, weights[count] in [0, 1] (count == the tasks stored;
 * a new snapshot starts at 1, a merged one keeps the larger of its two): the penalty becomes
 * lambda * sum_t w_t F_t (theta - theta*_t), re-reduced at once (O(tasks x param_count)). The
 * lambda rule stays on the unweighted Fisher. Out of range: SONA_E_INVALID, nothing changed. */
SONA_API sona_status sona_ewc_set_task_weights(sona_ewc *ewc, const float *weights, uint32_t count);
/* Snapshot i's weight (0 when there is no snapshot i). */
SONA_API float sona_ewc_task_weight(const sona_ewc *ewc, uint32_t i);

/* The pre-reduced penalty for param_update: pointers to param_count floats each (NULL for
 * both while no task is stored) and the current lambda. Valid until the tasks change. */
SONA_API sona_status sona_ewc_penalty(const sona_ewc *ewc, const float **fisher_sum,
                                      const float **fisher_theta, float *lambda);
/* The running Fisher (param_count floats), writable for a fused Fisher EMA. */
SONA_API float *sona_ewc_fisher(sona_ewc *ewc);
SONA_API float sona_ewc_lambda(const sona_ewc *ewc);
/* Task snapshots stored now (<= max_tasks), and boundaries taken since creation. */
SONA_API uint32_t sona_ewc_task_count(const sona_ewc *ewc);
SONA_API uint64_t sona_ewc_boundaries(const sona_ewc *ewc);
/* Copies snapshot i (0 = oldest) out; either pointer may be NULL. */
SONA_API sona_status sona_ewc_get_task(const sona_ewc *ewc, uint32_t i, float *theta_star,
                                       float *fisher);
/* Appends a snapshot (restoring saved state), consolidating if over max_tasks. */
SONA_API sona_status sona_ewc_add_task(sona_ewc *ewc, const float *theta_star, const float *fisher,
                                       uint32_t n);

/* The boundary detector's state and the boundaries taken, for checkpoints: restored with the
 * tasks and the running Fisher, the detector goes on as if there had been no restart. */
typedef struct sona_ewc_detector {
    uint64_t samples;                       /* gradient norms since the start or the last boundary */
    double short_mean, long_mean, long_var; /* the EMAs above */
    uint64_t boundaries;                    /* taken since creation */
} sona_ewc_detector;
SONA_API sona_status sona_ewc_get_detector(const sona_ewc *ewc, sona_ewc_detector *out);
/* Means and variance must be finite (SONA_E_NONFINITE) and >= 0 (SONA_E_INVALID); a refused
 * detector changes nothing. */
SONA_API sona_status sona_ewc_set_detector(sona_ewc *ewc, const sona_ewc_detector *d);

#ifdef __cplusplus
}
#endif
#endif /* SONA_EWC_H */
