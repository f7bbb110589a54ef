/* SPDX-License-Identifier: MIT */
/* libsona: learning signals (x, delta, w) from trajectories (docs/learning.md). */
#ifndef SONA_SIGNAL_H
#define SONA_SIGNAL_H

#include "sona/common.h"
#include "sona/trajectory.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Turns a trajectory into the signal a sona_lora learns from (sona_lora_accumulate): the
 * signal asks that the adapter's output y(x) move along delta, by about learning_rate * w *
 * delta under the engine's scale-invariant step (docs/learning.md). Two cases,
 * both sign-correct (they move y(x) toward the activations that scored better):
 *   - the step rewards vary: a policy-gradient step with the trajectory's own mean reward as
 *     its baseline,  delta = sum_i (r_i - mean r)(a_i - mean a) / sum_i |r_i - mean r|  (a
 *     weighted displacement from the worse steps to the better ones, in activation units), and
 *     w = mad / spread clipped to max_weight (1 for the baseline's first contrast), mad the
 *     rewards' mean absolute deviation and spread the baseline's running mean of it: delta
 *     drops how far apart the rewards lay, which says how much the exploration found, and w
 *     puts it back relative to the usual (positive: the sign is the contrast's). The final
 *     quality is not used for the direction or the weight (multiplying the contrast by a sign
 *     unrelated to it would cancel it on average);
 *   - one step, equal rewards, or a contrast that cancels out: the only information is the
 *     final quality Q against a running baseline b with spread sd (the baseline's running mean
 *     and root-mean-square deviation of Q):  delta = mean a - y(x)  (where the model went,
 *     relative to where the adapter sent it; y(x) given by the options, the query when not)
 *     and w = outcome_share * (Q - b) / sd, (Q - b) / sd clipped to +-max_weight; 0 while the
 *     baseline has fewer than two qualities (the first initialises it, the second its spread).
 *     One scalar against a baseline that also varies with the query is a much noisier estimate
 *     than a contrast between steps explored from the same output, so it moves less:
 *     outcome_share 0.25 learned the benchmark's one-step and final-quality-only tasks best of
 *     0.1 / 0.25 / 1 (at 1, the noise it accumulates made the adapter's output wander).
 *   x = the query embedding.
 * A baseline: mean <- mean + rate (Q - mean), var <- var + rate ((Q - mean)^2 - var), both
 * with the deviation taken before the update (which is the one w uses); spread <- spread +
 * rate (mad - spread) at each contrast, after its w. By default the builder
 * keeps one baseline shared by every caller; the options can pass the caller's own (the engine
 * keeps one per tenant and query region, and per layer and query region for Base-LoRA).
 * Every step's activations must have the query's width (else SONA_E_SIZE); a trajectory must
 * have ended and have at least one step (else SONA_E_STATE / SONA_E_EMPTY), and a zero
 * direction (no contrast, and the activations equal the output) is SONA_E_INVALID. Values that
 * are or become NaN/Inf give SONA_E_NONFINITE. A refused trajectory writes no output, leaves
 * the baseline alone and counts once in `rejected`; an accepted one counts in `accepted`.
 *
 * Thread safety: compute functions may be called from any number of threads at once (the
 * builder's own baseline is locked, the counters are atomics; a baseline passed in the options
 * is the caller's to guard); create, destroy and set_baseline need exclusive access. */
typedef struct sona_signal_builder sona_signal_builder;

typedef struct sona_signal_config {
    float baseline_rate; /* EMA rate in (0, 1]; default 0.05 (about the last 20 trajectories) */
    float max_weight;    /* |w| of a quality-only signal is clipped to this (> 0); default 3 */
    float outcome_share; /* a quality-only signal's weight is this times (Q - b) / spread, in
                            (0, 1]; default 0.25 (see below) */
} sona_signal_config;

typedef struct sona_signal_stats {
    uint64_t accepted, rejected;
    float baseline;      /* the builder's own baseline; NaN until the first accepted trajectory */
} sona_signal_stats;

/* A running quality baseline (zero-initialised = empty). */
typedef struct sona_signal_baseline {
    float mean;      /* running mean of the final quality */
    float var;       /* running mean square of its deviation from the mean */
    uint32_t count;  /* qualities folded in (stops counting at 2^32 - 1) */
    float spread;    /* running mean of the step rewards' mean absolute deviation in the
                        contrast signals measured against it (0: none yet) */
} sona_signal_baseline;

SONA_API void sona_signal_config_default(sona_signal_config *cfg);
SONA_API sona_status sona_signal_builder_create(const sona_signal_config *cfg,
                                                sona_signal_builder **out);
/* NULL is a no-op. */
SONA_API void sona_signal_builder_destroy(sona_signal_builder *sb);
/* The message of this thread's last failed call (the builder is shared between threads). */
SONA_API const char *sona_signal_builder_last_error(const sona_signal_builder *sb);

/* The signal of an ended trajectory: x[dim] and delta[dim], dim = the query's width, and *w.
 * Uses every step and advances the baseline (the per-request path). */
SONA_API sona_status sona_signal_from_trajectory(sona_signal_builder *sb, const sona_trajectory *t,
                                                 float *x, float *delta, float *w);

/* Variations for the engine's loops. */
typedef struct sona_signal_options {
    int32_t layer;         /* only the steps of this layer (Base-LoRA); SONA_LAYER_NONE: all */
    int advance_baseline;  /* 1: fold the quality into the baseline; 0: w against it, as is */
    const float *output;   /* y(x), the adapter's output for the query (dim floats) that the
                              quality-only rule measures from; NULL: the query itself */
    sona_signal_baseline *baseline; /* the baseline to use and advance; NULL: the builder's */
    float quality_offset;  /* what a critic expects of this query above the baseline (the
                              engine's core/adapt/critic.h): the quality minus it is what is
                              weighed and folded into the baseline; 0: none */
} sona_signal_options;

/* Whether the step rewards of ended trajectory t (only layer's steps unless SONA_LAYER_NONE)
 * differ, so that its signal is the reward-weighted contrast; 0: they are equal and the signal
 * is quality-only, weighed against a baseline (or t has no such step). */
SONA_API int sona_signal_rewards_vary(const sona_trajectory *t, int32_t layer);

/* layer = SONA_LAYER_NONE, advance_baseline = 1, output NULL, baseline NULL, quality_offset 0 (what
 * sona_signal_from_trajectory does). */
SONA_API void sona_signal_options_default(sona_signal_options *opt);
/* As sona_signal_from_trajectory with options; a trajectory without a step of the requested
 * layer is SONA_E_EMPTY. */
SONA_API sona_status sona_signal_from_trajectory_opts(sona_signal_builder *sb,
                                                      const sona_trajectory *t,
                                                      const sona_signal_options *opt, float *x,
                                                      float *delta, float *w);
/* The same from plain arrays: query[dim], activations as steps rows of dim
 * (activations[i * dim + j]), rewards[steps] (steps >= 1), and the final quality. */
SONA_API sona_status sona_signal_compute(sona_signal_builder *sb, const float *query, uint32_t dim,
                                         const float *activations, const float *rewards,
                                         uint32_t steps, float final_quality, float *x,
                                         float *delta, float *w);

/* sona_signal_compute with options: output and baseline as for a trajectory (layer is not used:
 * every row is a step). */
SONA_API sona_status sona_signal_compute_opts(sona_signal_builder *sb, const float *query, uint32_t dim,
                                              const float *activations, const float *rewards,
                                              uint32_t steps, float final_quality,
                                              const sona_signal_options *opt, float *x, float *delta,
                                              float *w);

SONA_API void sona_signal_builder_get_stats(const sona_signal_builder *sb, sona_signal_stats *out);
/* The builder's own baseline, copied out / restored (NULL: start over, empty). A restored one
 * with a non-finite mean or variance, or a negative variance, is SONA_E_NONFINITE / INVALID. */
SONA_API sona_status sona_signal_builder_get_baseline(const sona_signal_builder *sb,
                                                      sona_signal_baseline *out);
SONA_API sona_status sona_signal_builder_set_baseline(sona_signal_builder *sb,
                                                      const sona_signal_baseline *baseline);

/* The quality-only weight of quality q against *b, clipped to +-max_weight (0 while b holds
 * fewer than two qualities), into *w; with advance, q is folded into *b at `rate`. A q whose
 * deviation or update is not finite is SONA_E_NONFINITE with *b untouched. */
SONA_API sona_status sona_signal_baseline_weigh(sona_signal_baseline *b, float rate, float max_weight,
                                                float q, int advance, float *w);

#ifdef __cplusplus
}
#endif
#endif /* SONA_SIGNAL_H */
