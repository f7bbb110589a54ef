/* SPDX-License-Identifier: MIT */
/* Small vector kernels for host-side core code that works one vector at a time (graph search),
 * where an op-table call per pair would cost more than the arithmetic. The kernel follows the
 * CPU variant the dispatch layer chose (SONA_CPU_VARIANT included). */
#ifndef SONA_DISPATCH_VECMATH_H
#define SONA_DISPATCH_VECMATH_H

#include <stddef.h>
#include <stdint.h>

typedef float (*sona_dot_fn)(const float *a, const float *b, size_t n);
/* a (f32) . b (IEEE half, see common/half.h), accumulated in f32. */
typedef float (*sona_dot_f16_fn)(const float *a, const uint16_t *b, size_t n);

/* The dot product kernel of the CPU variant in use (chosen once; thread-safe). */
sona_dot_fn sona_dot_kernel(void);

/* Widens n halves to f32 (F16C where the dot kernel uses it). */
typedef void (*sona_widen_f16_fn)(const uint16_t *h, float *out, size_t n);
sona_widen_f16_fn sona_widen_f16_kernel(void);
void sona_widen_f16_scalar(const uint16_t *h, float *out, size_t n);

/* The f32 x half dot kernel: F16C when the chosen variant is AVX2 (and the host has F16C) or
 * AVX-512, else the scalar one. */
sona_dot_f16_fn sona_dot_f16_kernel(void);

/* a (f32) . q (Q8 blocks, see common/q8.h), accumulated in f32. */
typedef float (*sona_dot_q8_fn)(const float *a, const void *q, size_t n);
/* The f32 x Q8 dot kernel of the CPU variant in use (AVX2 or AVX-512, else common/q8.c's). */
sona_dot_q8_fn sona_dot_q8_kernel(void);

/* Plain C f32 x half dot product (the reference of the variants). */
float sona_dot_f16_scalar(const float *a, const uint16_t *b, size_t n);

/* Plain C dot product with independent partial sums (the reference of the variants). */
float sona_dot_scalar(const float *a, const float *b, size_t n);

/* Element-wise host loops (cpu/host_loops.h) at the chosen variant's ISA level. */
typedef struct sona_host_loops {
    int (*all_finite)(const float *v, size_t n);
    /* f = d * f + (1 - d) * g^2 */
    void (*fisher_ema)(float *restrict f, const float *restrict g, size_t n, float d);
    /* out = g - lambda * (fs * theta - ft) */
    void (*penalise)(float *out, const float *g, const float *restrict theta,
                     const float *restrict fs, const float *restrict ft, size_t n, float lambda);
    double (*sum_squares)(const float *v, size_t n);
    /* Q8 (common/q8.h); encode returns 0 on NaN or Inf */
    int (*q8_encode)(const float *x, size_t n, void *out);
    void (*q8_decode)(const void *q, size_t n, float *out);
} sona_host_loops;
const sona_host_loops *sona_host_loops_get(void);

/* Encodes x[n] into out[sona_q8_bytes(n)] (common/q8.h); 0 when a value is NaN or Inf (out is
 * then undefined). */
int sona_q8_encode(const float *x, size_t n, void *out);
/* Decodes n Q8 values. */
void sona_q8_decode(const void *q, size_t n, float *out);

/* Whether all n floats are finite (the chosen variant's loop). */
int sona_all_finite(const float *v, size_t n);

/* Scales v (n floats) to unit L2 norm; returns the norm before scaling (0: v left unchanged). */
float sona_normalize(float *v, size_t n);

#endif
