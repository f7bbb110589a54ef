/* SPDX-License-Identifier: MIT */
/* The avx2 CPU variant (AVX2 + FMA, 8 floats a vector). Compiled with -mavx2 -mfma only; chosen
 * at run time only when the host has the features. The kernels are those of simd_kernels.h. */
#include "cpu/cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define SV_W 8
#define SV_GEMM_MR 6 /* 6 x 16 tile: 12 accumulators of the 16 ymm registers */
typedef __m256 sv_f;

/* Lane masks for partial vectors: the 8 entries starting at 8 - n are n ones then zeros. */
static const int32_t sv_mask_table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
static inline __m256i sv_mask(uint32_t n) { return _mm256_loadu_si256((const __m256i *)(sv_mask_table + 8 - n)); }

static inline sv_f sv_zero(void) { return _mm256_setzero_ps(); }
static inline sv_f sv_set1(float f) { return _mm256_set1_ps(f); }
static inline sv_f sv_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void sv_store(float *p, sv_f v) { _mm256_storeu_ps(p, v); }
static inline sv_f sv_loadn(const float *p, uint32_t n) { return _mm256_maskload_ps(p, sv_mask(n)); }
static inline void sv_storen(float *p, sv_f v, uint32_t n) { _mm256_maskstore_ps(p, sv_mask(n), v); }
static inline sv_f sv_fma(sv_f a, sv_f b, sv_f c) { return _mm256_fmadd_ps(a, b, c); }
static inline sv_f sv_add(sv_f a, sv_f b) { return _mm256_add_ps(a, b); }
static inline sv_f sv_sub(sv_f a, sv_f b) { return _mm256_sub_ps(a, b); }
static inline sv_f sv_mul(sv_f a, sv_f b) { return _mm256_mul_ps(a, b); }
static inline float sv_hsum(sv_f v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#include "cpu/simd_kernels.h"

const sona_backend sona_cpu_avx2 = {
    .name = "avx2",
    .device = "host CPU, AVX2 + FMA",
    SONA_CPU_HOST_FIELDS,
    SV_BACKEND_OPS,
};

#endif
