/* libsona: learning signals (x, delta, w) from trajectories (DESIGN.md, "Learning semantics"). */
#ifndef SONA_SIGNAL_H
#define SONA_SIGNAL_H

#include "sona/common.h"
#include "sona/trajectory.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Turns a trajectory into the signal a sona_lora learns from (sona_lora_accumulate):
 *   x     = the query embedding;
 *   delta = when the step rewards vary: sum_i (r_i - mean r) a_i, normalised to unit length
 *           (the direction of activations that scored above average);
 *           otherwise (constant rewards, one step, or a contrast that cancels out): the last
 *           step's activations, normalised;
 *   w     = final quality - baseline, where the baseline is an exponential moving average of
 *           the final qualities of the trajectories accepted so far:
 *               baseline <- baseline + rate * (quality - baseline),
 *           the first accepted trajectory initialising it (so its own w is 0). w is computed
 *           against the baseline before this trajectory's update. A one-step trajectory better
 *           than usual therefore learns (w > 0), and a worse one pushes away (w < 0).
 * Every step's activations must have the query's width (else SONA_E_SIZE); a trajectory must
 * have ended and have at least one step (else SONA_E_STATE / SONA_E_EMPTY), and a zero
 * activation direction is SONA_E_INVALID. Values that are or become NaN/Inf give
 * SONA_E_NONFINITE. A refused trajectory writes no output, leaves the baseline alone and
 * counts once in `rejected`; an accepted one counts in `accepted`.
 *
 * Thread safety: compute functions may be called from any number of threads at once (the
 * baseline and the counters are atomics); create, destroy and set_baseline need exclusive
 * access. */
typedef struct sona_signal_builder sona_signal_builder;

typedef struct sona_signal_config {
    float baseline_rate; /* EMA rate in (0, 1]; default 0.05 (about the last 20 trajectories) */
} sona_signal_config;

typedef struct sona_signal_stats {
    uint64_t accepted, rejected;
    float baseline;      /* NaN until the first accepted trajectory */
} sona_signal_stats;

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

/* Variations for the background loop, which sees each trajectory again after the per-request
 * path has already folded its quality into the baseline. */
typedef struct sona_signal_options {
    int32_t layer;         /* only the steps of this layer (Base-LoRA); SONA_LAYER_NONE: all */
    int advance_baseline;  /* 1: fold the quality into the baseline; 0: w against it, as is */
} sona_signal_options;

/* layer = SONA_LAYER_NONE, advance_baseline = 1 (what sona_signal_from_trajectory does). */
SONA_API void sona_signal_options_default(sona_signal_options *opt);
/* As sona_signal_from_trajectory with options; a trajectory without a step of the requested
 * layer is SONA_E_EMPTY. Without advance_baseline, w is quality - baseline (0 before the
 * first accepted trajectory). */
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

SONA_API void sona_signal_builder_get_stats(const sona_signal_builder *sb, sona_signal_stats *out);
/* Restores a saved baseline (NaN: start over, the next trajectory initialises it). */
SONA_API sona_status sona_signal_builder_set_baseline(sona_signal_builder *sb, float baseline);

#ifdef __cplusplus
}
#endif
#endif /* SONA_SIGNAL_H */
