/* SPDX-License-Identifier: MIT */
/* Library-internal LoRA entry points (engine, benchmarks and tests): not part of the public API.
 * The engine publishes immutable snapshots of the raw weights for lock-free readers, trains with
 * EWC++ terms, and saves/loads them. */
#ifndef SONA_CORE_ADAPT_LORA_INTERNAL_H
#define SONA_CORE_ADAPT_LORA_INTERNAL_H

#include "backend/ops.h"
#include "sona/lora.h"

/* sona_lora_create on a given backend (e.g. one CPU variant's table, or a GPU backend) instead
 * of the default one; be must stay valid for the handle's lifetime. */
sona_status sona_lora_create_on(const sona_lora_config *cfg, const sona_backend *be, sona_lora **out);
/* Moves the set's weights, scales and pending gradients to backend be (everything else stays):
 * a learning set follows the work to a device. On failure l is as it was. */
sona_status sona_lora_move(sona_lora *l, const sona_backend *be);
/* The backend the set lives on. */
const sona_backend *sona_lora_backend(const sona_lora *l);

/* Copies every adapter's weights to host memory in the op table's layout (ops.h): A and Bt are
 * count*rank*hidden floats, scale count floats. Any may be NULL. */
sona_status sona_lora_export(const sona_lora *l, float *A, float *Bt, float *scale);
/* Copies the pending (accumulated, unapplied) gradients, same layout as A and Bt. */
sona_status sona_lora_export_grad(const sona_lora *l, float *gA, float *gBt);
/* Where the weights live in host memory: 1 with theta = A and Bt back to back and g = gA and
 * gBt back to back (2 * count * rank * hidden floats each, valid while l lives), read in place
 * instead of exported; 0 (nothing set) on a device backend. */
int sona_lora_host_params(const sona_lora *l, const float **theta, const float **g);
/* Signals accumulated and not yet applied, per adapter (count entries). */
void sona_lora_pending_counts(const sona_lora *l, uint32_t *out);
/* Restores pending gradients (the layouts of A and Bt) with each adapter's signal count, as a
 * checkpoint took them (sona_lora_export_grad, sona_lora_pending_counts); NaN/Inf refused with
 * nothing changed. */
sona_status sona_lora_import_grad(sona_lora *l, const float *gA, const float *gBt, const uint32_t *pending);
/* Replaces every adapter's A and Bt (same layout) and clears pending gradients. */
sona_status sona_lora_import(sona_lora *l, const float *A, const float *Bt);
/* Drops the gradients accumulated since the last apply (and their signal counts); the weights
 * stay. What a refused apply leaves behind. */
sona_status sona_lora_discard_pending(sona_lora *l);

/* EWC++ terms for one update, host arrays of the shape of A (and of Bt), as param_update takes
 * them (ops.h): fisher_sum = sum_t F_t, fisher_theta = sum_t F_t theta*_t (both NULL: no
 * penalty), fisher (NULL: not tracked) is updated in place with decay. */
typedef struct sona_lora_ewc_terms {
    const float *fisher_sum[2];   /* [0] for A, [1] for Bt */
    const float *fisher_theta[2];
    float *fisher[2];
    float lambda, decay;
} sona_lora_ewc_terms;
/* sona_lora_apply_updates with EWC++ terms. Applies even with no pending signal when a penalty
 * is given (the penalty alone moves the weights back toward the anchors). */
sona_status sona_lora_apply_updates_ewc(sona_lora *l, const sona_lora_ewc_terms *t);

/* Scale-invariant learning (docs/learning.md): turns each signal's weight w_i
 * into the weight that makes one update of learning rate lr move y(x_i) by about lr * w_i *
 * delta_i (first order), whatever the width, rank, scale or input size: w_i is multiplied by
 * |delta_i|^2 / |g_i|^2, g_i the gradient of <y(x_i), delta_i> over A and B (a normalised LMS
 * step). Rows of adapter -1, or whose gradient is zero (x = 0, delta = 0), get weight 0. Reads
 * the weights in place on host memory (a copy from a device). */
sona_status sona_lora_normalize_signals(sona_lora *l, uint32_t n, const int32_t *ids, const float *x,
                                        const float *delta, float *w);
/* Preconditions each adapter's B steps by the inverse covariance of its codes A x (lora.c has
 * why): rate is that covariance's running-mean rate per signal seen by
 * sona_lora_normalize_signals, 0 turns it off (the default). On a device backend the
 * accumulated B gradients make a round trip through host memory at each apply. */
sona_status sona_lora_set_code_preconditioning(sona_lora *l, float rate);
/* The preconditioner's state for checkpoints: per adapter the weight its running mean has
 * gathered (count doubles) and that mean (count x rank x rank doubles); either may be NULL.
 * 0 (nothing copied) while preconditioning was never turned on. */
int sona_lora_code_state(const sona_lora *l, double *weights, double *cov);
/* Restores it (preconditioning on: else SONA_E_STATE). Weights in [0, 1], each mean symmetric
 * with a non-negative diagonal that bounds the rest (Cauchy-Schwarz), finite: else
 * SONA_E_INVALID and nothing changed. */
sona_status sona_lora_set_code_state(sona_lora *l, const double *weights, const double *cov);
/* Bounds every adapter's change of the output: when the spectral norm of s B A (the largest
 * |y(x) - x| / |x| over all x) exceeds max_gain, B is scaled down to make it max_gain. 0 = no
 * bound. *capped (may be NULL) receives how many adapters were scaled. */
sona_status sona_lora_bound_gain(sona_lora *l, float max_gain, uint32_t *capped);
/* The spectral norm of adapter i's s B A (its largest |y(x) - x| / |x|). */
sona_status sona_lora_gain(const sona_lora *l, int32_t adapter, double *gain);

#endif /* SONA_CORE_ADAPT_LORA_INTERNAL_H */
