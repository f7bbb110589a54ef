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

/* <B_j A_j, B_l A_l>_F of two adapters from their factors (rank x hidden rows: A, and B
 * transposed) in double, without a hidden x hidden matrix: sum over p, q of (A_j,p . A_l,q)
 * (Bt_j,p . Bt_l,q), the dots by dispatch/vecmath.h's Gram products: the same bits on every
 * variant. rank <= SONA_LORA_MAX_RANK. */
double sona_lora_product_dot(size_t hidden, uint32_t rank, const float *Aj, const float *Btj,
                             const float *Al, const float *Btl);

/* ---- the sketched merge: what sona_sync all-reduces instead of gathering every factor ------
 * The average M = sum_i w_i B_i A_i is seen only through products with a shared basis, each a
 * sum over the ranks (an all-reduce): Y = M Omega^T for a shared Omega (width x hidden),
 * then Z = M^T Q for Q the orthonormal basis of Y's rows; Q^T Z is M projected on that range,
 * and its best rank-r approximation the merge (randomised range finder, Halko et al. 2011).
 * Exact when the rank of M is at most width, and when the rows of every A_i lie in Omega's span
 * (Omega starts from the last sync's A: ranks that changed only B merge exactly). Matrices of
 * width x hidden are rows of hidden doubles. Deterministic, plain loops in a fixed order. */

/* Omega: width unit rows, the first ones A0's rows (rank x hidden, NULL: none; a zero row
 * skipped), the rest seeded random signs. Not orthogonalised: only their span matters, Q is
 * orthonormalised from Y. SONA_E_INVALID (width > hidden, or 0). */
sona_status sona_sketch_basis(uint32_t hidden, uint32_t width, uint32_t rank, const float *A0,
                              uint64_t seed, double *omega);
/* Adds to Y (width x hidden) the products of sum_i w_i B_i A_i (k adapters as in
 * sona_lora_merge, weights as given) with X's rows: row j of Y += M X_j (transpose 0) or
 * M^T X_j (transpose 1). SONA_E_NOMEM. */
sona_status sona_sketch_product(uint32_t hidden, uint32_t rank, uint32_t k, const float *const *A,
                         const float *const *Bt, const double *w, uint32_t width, const double *X,
                         int transpose, double *Y);
/* Y's rows made orthonormal in place (classical Gram-Schmidt in row order, a second pass for a
 * row that lost more than half its square norm in the first); a row dependent on the ones
 * before becomes 0. */
void sona_sketch_orthonormalize(uint32_t hidden, uint32_t width, double *Y);
/* The merge from Q (the orthonormal rows of sona_sketch_orthonormalize) and Z (row j = M^T Q_j):
 * the best rank-r approximation of Q^T Z into A_out and Bt_out (rank x hidden), its singular
 * values split as in sona_lora_merge with a0 the inputs' RMS row norm of A (a direction with no
 * singular value takes Omega's row as its A row). info: total = |Q^T Z|_F^2 and tail = what the
 * truncation lost of it (M's part outside Q's range is not seen). A_ref (rank x hidden, or NULL):
 * the factors come turned to its coordinates as by sona_lora_align (folded into the same pass
 * over Q and Z). SONA_E_NOMEM. */
sona_status sona_sketch_finish(uint32_t hidden, uint32_t rank, uint32_t width, const double *Q,
                               const double *Z, const double *omega, double a0,
                               const float *A_ref, float *A_out, float *Bt_out,
                               sona_merge_info *info);

/* Turns a merged adapter's factors by the orthogonal R (rank x rank) that brings A closest to
 * A_ref (orthogonal Procrustes, R = U V^T from A_ref A^T = U S V^T): A <- R A, Bt <- R Bt, so
 * B A is unchanged and each coordinate of the factors keeps the meaning it had in A_ref (EWC++'s
 * Fisher and anchors are per coordinate; a merge's SVD basis would scramble them). Left as it
 * is when A_ref A^T is singular (no unique turn). SONA_E_NOMEM. */
sona_status sona_lora_align(uint32_t hidden, uint32_t rank, const float *A_ref, float *A,
                            float *Bt);

#endif
