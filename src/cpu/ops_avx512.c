/* SPDX-License-Identifier: MIT */
/* The avx512 CPU variant (AVX-512 F/BW/VL, 16 floats a vector, masked tails). Compiled with its
 * own ISA flags; chosen at run time only when the host has the features. The kernels are those
 * of simd_kernels.h. */
#include "cpu/cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define SV_W 16
#define SV_GEMM_MR 12 /* 12 x 32 tile: 24 accumulators of the 32 zmm registers */
typedef __m512 sv_f;

static inline __mmask16 sv_mask(uint32_t n) { return (__mmask16)((1u << n) - 1u); }
static inline sv_f sv_zero(void) { return _mm512_setzero_ps(); }
static inline sv_f sv_set1(float f) { return _mm512_set1_ps(f); }
static inline sv_f sv_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void sv_store(float *p, sv_f v) { _mm512_storeu_ps(p, v); }
static inline sv_f sv_loadn(const float *p, uint32_t n) { return _mm512_maskz_loadu_ps(sv_mask(n), p); }
static inline void sv_storen(float *p, sv_f v, uint32_t n) { _mm512_mask_storeu_ps(p, sv_mask(n), v); }
static inline sv_f sv_fma(sv_f a, sv_f b, sv_f c) { return _mm512_fmadd_ps(a, b, c); }
static inline sv_f sv_add(sv_f a, sv_f b) { return _mm512_add_ps(a, b); }
static inline sv_f sv_sub(sv_f a, sv_f b) { return _mm512_sub_ps(a, b); }
static inline sv_f sv_mul(sv_f a, sv_f b) { return _mm512_mul_ps(a, b); }
static inline float sv_hsum(sv_f v) { return _mm512_reduce_add_ps(v); }

#include "cpu/simd_kernels.h"

const sona_backend sona_cpu_avx512 = {
    .name = "avx512",
    .device = "host CPU, AVX-512 F/BW/VL",
    SONA_CPU_HOST_FIELDS,
    SV_BACKEND_OPS,
};

#endif
