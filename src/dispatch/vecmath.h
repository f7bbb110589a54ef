/* SPDX-License-Identifier: MIT */
/* Host kernels for core code that works one vector at a time (graph search), where an op-table
 * call per pair would cost more than the arithmetic: the entries of backend/ops.h's
 * sona_host_kernels of the CPU variant the dispatch layer chose (SONA_CPU_VARIANT included).
 * Each variant defines its own in its file (src/cpu/ops_*.c). Hot loops fetch a kernel once
 * and keep the pointer. */
#ifndef SONA_DISPATCH_VECMATH_H
#define SONA_DISPATCH_VECMATH_H

#include "backend/ops.h"

#include <stddef.h>
#include <stdint.h>

/* The chosen variant's host kernels (chosen once; thread-safe). */
const sona_host_kernels *sona_host_kernels_get(void);

/* Its dot product kernels: f32 x f32, f32 x half (F16C when the variant is AVX2 on a host with
 * F16C, or AVX-512), f32 x Q8; and the half widening. */
sona_dot_fn sona_dot_kernel(void);
sona_dot_f16_fn sona_dot_f16_kernel(void);
sona_dot_q8_fn sona_dot_q8_kernel(void);
sona_widen_f16_fn sona_widen_f16_kernel(void);

/* Encodes x[n] into out[sona_q8_bytes(n)] (common/q8.h); 0 when a value is NaN or Inf (out is
 * then undefined). */
int sona_q8_encode(const float *x, size_t n, void *out);
/* Decodes n Q8 values. */
void sona_q8_decode(const void *q, size_t n, float *out);

/* Whether all n floats are finite (the chosen variant's loop). */
int sona_all_finite(const float *v, size_t n);
/* Whether all n floats are finite and within +-bound (bound >= 0): one pass of the chosen
 * variant's integer max over the magnitude bits (exact; its lanes are independent, where a
 * sum of squares waits on one chain of adds). The per-step check of live traffic. */
int sona_all_within_fast(const float *v, size_t n, float bound);

/* The cluster merge's double arithmetic on rows of n values (row i of X at X + i xs, and so on),
 * through the variant's four-at-once kernels: each result has the bits of the one-at-a-time
 * kernel (cpu/host_loops.h), so it is the same on every variant.
 *
 * Gram products out[a * l + b] = X_a . R_b (a < m, b < l), each the bits of dot_f64 (of the
 * values widened to double: sona_gram_f32_f64 takes two float matrices, sona_gram_widen_f64
 * float rows against double ones). They walk n in chunks, so that what a chunk reads of R stays
 * in the L1 cache for several rows of X: rows of thousands streamed from L2 or beyond once a dot
 * were the merge's time. */
void sona_gram_f64(const double *X, size_t xs, size_t m, const double *R, size_t rs, size_t l,
                   size_t n, double *out);
void sona_gram_f32_f64(const float *X, size_t xs, size_t m, const float *R, size_t rs, size_t l,
                       size_t n, double *out);
void sona_gram_widen_f64(const float *X, size_t xs, size_t m, const double *R, size_t rs, size_t l,
                         size_t n, double *out);
/* out[j] = x . row_j (j < m): sona_gram_f64 of one row. */
void sona_dots_f64(const double *x, const double *rows, size_t stride, size_t m, size_t n, double *out);
/* y += c[j] row_j for j = 0, 1, ... m - 1 in that order, skipping the j with c[j] == 0 (a zero
 * coefficient adds nothing, and keeps a non-finite row out): the bits of one axpy_f64 (or
 * axpy_f32_f64) after the other. y must not overlap the rows. Callers with several y over the
 * same rows call it chunk by chunk of n, for the same reason as the Gram products. */
void sona_axpys_f64(double *y, const double *rows, size_t stride, const double *c, size_t m, size_t n);
void sona_axpys_f32_f64(double *y, const float *rows, size_t stride, const double *c, size_t m, size_t n);

/* Scales v (n floats) to unit L2 norm; returns the norm before scaling (0: v left unchanged). */
float sona_normalize(float *v, size_t n);

#endif
