/* ISA-specific versions of the core's small vector kernels (src/core/vecmath.h), one file per
 * variant compiled with that variant's flags; only called when the host has the features. */
#ifndef SONA_CPU_VEC_H
#define SONA_CPU_VEC_H

#include <stddef.h>
#include <stdint.h>

#include "cpu/host_loops.h"

/* The baseline build of the host loops (vecmath.c), used on every architecture. */
SONA_HOST_LOOPS_DECLARE(scalar)

#if defined(__x86_64__) || defined(__i386__)
float sona_dot_avx2(const float *a, const float *b, size_t n);
float sona_dot_avx512(const float *a, const float *b, size_t n);
/* a (f32) . b (IEEE half); the AVX2 one needs F16C too. */
float sona_dot_f16_avx2(const float *a, const uint16_t *b, size_t n);
float sona_dot_f16_avx512(const float *a, const uint16_t *b, size_t n);
void sona_widen_f16_avx2(const uint16_t *h, float *out, size_t n);
void sona_widen_f16_avx512(const uint16_t *h, float *out, size_t n);
/* a (f32) . q (Q8 blocks, see core/q8.h). */
float sona_dot_q8_avx2(const float *a, const void *q, size_t n);
float sona_dot_q8_avx512(const float *a, const void *q, size_t n);
SONA_HOST_LOOPS_DECLARE(avx2)
SONA_HOST_LOOPS_DECLARE(avx512)
#endif

#endif
