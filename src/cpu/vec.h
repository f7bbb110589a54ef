/* SPDX-License-Identifier: MIT */
/* The host kernels of each CPU variant (backend/ops.h sona_host_kernels), defined in the
 * variant's file (ops_scalar.c, ops_avx2.c, ops_avx512.c) with its flags and reached through the
 * variant's table; declared here for the tests that check each variant against scalar. The SIMD
 * ones run only on hosts with the features. */
#ifndef SONA_CPU_VEC_H
#define SONA_CPU_VEC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cpu/host_loops.h"

/* a . q over the values lo..n-1 of a Q8 vector's last, partial block b, in plain C: the
 * SIMD dot kernels take the full blocks. */
static inline float sona_q8_tail_dot(const float *a, const unsigned char *scales, const int8_t *q,
                                     size_t b, size_t n)
{
    float scale, blk = 0.0f;
    memcpy(&scale, scales + b * sizeof scale, sizeof scale);
    for (size_t i = b * 32; i < n; i++)
        blk += a[i] * (float)q[i];
    return blk * scale;
}

/* Plain C, the reference of the variants: dot products with independent partial sums. */
float sona_dot_scalar(const float *a, const float *b, size_t n);
float sona_dot_f16_scalar(const float *a, const uint16_t *b, size_t n);
void sona_widen_f16_scalar(const uint16_t *h, float *out, size_t n);
/* The baseline build of the host loops (ops_scalar.c), used on every architecture. */
SONA_HOST_LOOPS_DECLARE(scalar)

#if defined(__x86_64__) || defined(__i386__)
float sona_dot_avx2(const float *a, const float *b, size_t n);
float sona_dot_avx512(const float *a, const float *b, size_t n);
/* a (f32) . b (IEEE half); the AVX2 one needs F16C too. */
float sona_dot_f16_avx2(const float *a, const uint16_t *b, size_t n);
float sona_dot_f16_avx512(const float *a, const uint16_t *b, size_t n);
void sona_widen_f16_avx2(const uint16_t *h, float *out, size_t n);
void sona_widen_f16_avx512(const uint16_t *h, float *out, size_t n);
/* a (f32) . q (Q8 blocks, see common/q8.h). */
float sona_dot_q8_avx2(const float *a, const void *q, size_t n);
float sona_dot_q8_avx512(const float *a, const void *q, size_t n);
SONA_HOST_LOOPS_DECLARE(avx2)
SONA_HOST_LOOPS_DECLARE(avx512)
#endif

#endif
