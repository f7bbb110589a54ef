/* SPDX-License-Identifier: MIT */
/* The merge of k LoRA adapters of one shape into the best rank-r approximation of their
 * weighted average sum_i w_i B_i A_i (Eckart-Young), computed in factored form: QR of the
 * hidden x kr factors [w_1 B_1 ... w_k B_k] and [A_1; ...; A_k]^T, SVD of the kr x kr core.
 * Never forms a hidden x hidden matrix. Deterministic: plain double loops in a fixed order, no
 * threads, no dispatched kernels, so every node computing it from the same bytes gets the same
 * bits (sona_sync relies on it). */
#ifndef SONA_CORE_ADAPT_MERGE_H
#define SONA_CORE_ADAPT_MERGE_H

#include "sona/common.h"

/* What a merge learned about the average M (the Frobenius norms squared, in double). */
typedef struct sona_merge_info {
    double total; /* |M|_F^2 = sum of all its squared singular values */
    double tail;  /* |M - merged|_F^2 = the squared singular values beyond the rank r */
    int copied;   /* 1: every adapter was the same (or k = 1), the result is a copy */
} sona_merge_info;

/* Adapter i is A[i] (rank rows of hidden) and Bt[i] (B transposed: rank rows of hidden, the
 * op tables' layout), of weight w[i] (NULL: 1/k each; weights are used as given). Writes the
 * merged adapter to A_out and Bt_out (rank x hidden each, not overlapping the inputs). When all
 * k adapters are bit for bit the same, or k = 1, the result is adapter 0 copied exactly.
 * Otherwise the singular value sigma_j is split between the factors: A's row j has norm
 * max(sqrt(sigma_j), a0) and B's column sigma_j / that, a0 the inputs' RMS row norm of A, so a
 * direction with sigma_j = 0 keeps a live A row (the gradient of B is then not zero) and the
 * merged adapter keeps learning. SONA_E_NOMEM or SONA_E_INVALID (k, rank or hidden 0). */
sona_status sona_lora_merge(uint32_t hidden, uint32_t rank, uint32_t k, const float *const *A,
                            const float *const *Bt, const double *w, float *A_out, float *Bt_out,
                            sona_merge_info *info);

#endif
