/* SPDX-License-Identifier: MIT */
/* libsona: LoRA adapters (Micro-LoRA per tenant, Base-LoRA per layer). */
#ifndef SONA_LORA_H
#define SONA_LORA_H

#include "sona/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A set of `count` adapters of one shape (hidden, rank). Adapter i maps
 *     y = x + s * B_i (A_i x),   s = alpha / rank,
 * with A_i of rank x hidden (seeded random, the same on every node for the same seed) and B_i of
 * hidden x rank (zero at creation, so a new adapter is exactly the identity).
 * Micro-LoRA: one adapter per tenant, rank 1-2. Base-LoRA: one adapter per layer, rank 4-16.
 *
 * Learning: a signal (x, delta, w) asks that <y(x) - x, delta> grow when w > 0 and shrink when
 * w < 0. Its gradients  dB = w s delta (A x)^T,  dA = w s (B^T delta) x^T  are accumulated and
 * applied as one ascent step of `learning_rate`, after clipping their norm to `clip_norm`.
 * These are raw gradients: their step shrinks with rank / hidden. The engine (sona/engine.h)
 * scales each signal's weight so that its learning rates are fractions of output movement,
 * whatever the shape, and bounds each adapter's output change.
 *
 * Thread safety: a sona_lora is not internally locked; any number of threads may call the
 * read-only functions (forward, get, info) at once, but a call that changes it (accumulate,
 * apply_updates, set_weights) needs exclusive access to the handle. */
typedef struct sona_lora sona_lora;

typedef enum sona_lora_kind {
    SONA_LORA_MICRO = 0, /* per-request adapters: rank 2, alpha 4, learning rate 0.01 */
    SONA_LORA_BASE = 1   /* per-layer adapters: rank 8, alpha 16, 12 layers, learning rate 0.001 */
} sona_lora_kind;

/* The largest rank every backend takes (its kernels keep per-rank values in fixed arrays). */
#define SONA_LORA_MAX_RANK 64

typedef struct sona_lora_config {
    uint32_t hidden;       /* input = output width; any value >= 1 */
    uint32_t rank;         /* 1..SONA_LORA_MAX_RANK */
    uint32_t count;        /* adapters in the set: tenants (Micro) or layers (Base); 1..2^31-1 */
    float alpha;           /* scale s = alpha / rank */
    uint64_t seed;         /* seeds A; adapter i uses a stream derived from (seed, i) */
    float learning_rate;   /* step size of apply_updates */
    float clip_norm;       /* the accumulated gradient's L2 norm is clipped to this; 0 = off */
} sona_lora_config;

/* Fills *cfg with the defaults of the given kind for width `hidden`: count 1 (Micro) or 12
 * (Base), seed 42, clip_norm 1, and rank, alpha and learning rate as listed at sona_lora_kind.
 * alpha is 2 x rank for both kinds (scale s = 2), the same rule as the engine's presets
 * (sona_engine_config_default's micro_alpha and base_alpha), so a standalone adapter and the
 * engine's of the same rank scale alike. Changing rank does not change alpha: set both. */
SONA_API void sona_lora_config_default(sona_lora_config *cfg, sona_lora_kind kind, uint32_t hidden);

SONA_API sona_status sona_lora_create(const sona_lora_config *cfg, sona_lora **out);
/* Frees everything; NULL is a no-op. */
SONA_API void sona_lora_destroy(sona_lora *lora);
/* The message of the last failed call on this handle ("" when none). */
SONA_API const char *sona_lora_last_error(const sona_lora *lora);
SONA_API const sona_lora_config *sona_lora_get_config(const sona_lora *lora);

/* y = x + s B_a (A_a x) for adapter `adapter` (-1 = none: y = x). y may equal x (in place).
 * x is not checked for NaN or Inf: such a row comes out non-finite, the adapters unchanged. */
SONA_API sona_status sona_lora_forward(sona_lora *lora, int32_t adapter, const float *x, float *y);
/* n rows: row i of y = row i of x through adapter ids[i] (-1 = none). y may equal x. */
SONA_API sona_status sona_lora_forward_batch(sona_lora *lora, uint32_t n, const int32_t *ids,
                                             const float *x, float *y);

/* Accumulates the gradient of one learning signal into adapter `adapter`. Rejects non-finite
 * x, delta or w with SONA_E_NONFINITE and leaves the adapter unchanged. */
SONA_API sona_status sona_lora_accumulate(sona_lora *lora, int32_t adapter, const float *x,
                                          const float *delta, float w);
/* n signals at once; row i goes to adapter ids[i] (-1 = skipped). All-or-nothing: any bad row
 * rejects the whole batch before anything is accumulated. */
SONA_API sona_status sona_lora_accumulate_batch(sona_lora *lora, uint32_t n, const int32_t *ids,
                                                const float *x, const float *delta,
                                                const float *w);
/* Signals accumulated and not yet applied, over all adapters. */
SONA_API uint64_t sona_lora_pending(const sona_lora *lora);
/* Applies every adapter's accumulated gradient (one step each) and clears the accumulators. */
SONA_API sona_status sona_lora_apply_updates(sona_lora *lora);

/* Copies adapter `adapter`'s weights out: A as rank rows of hidden (A[j*hidden + h]) and B as
 * hidden rows of rank (B[h*rank + j], the usual hidden x rank matrix). Either may be NULL. */
SONA_API sona_status sona_lora_get_weights(const sona_lora *lora, int32_t adapter, float *A,
                                           float *B);
/* Replaces adapter `adapter`'s weights (same layouts as get); non-finite values are refused and
 * leave the adapter unchanged. Either may be NULL to keep that matrix. */
SONA_API sona_status sona_lora_set_weights(sona_lora *lora, int32_t adapter, const float *A,
                                           const float *B);

#ifdef __cplusplus
}
#endif
#endif /* SONA_LORA_H */
