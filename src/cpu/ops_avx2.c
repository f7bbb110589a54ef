/* SPDX-License-Identifier: MIT */
/* The avx2 CPU variant (AVX2 + FMA, 8 floats a vector). Compiled with -mavx2 -mfma only; chosen
 * at run time only when the host has the features. The ops are those of simd_kernels.h; the host
 * kernels (dot products, Q8 encoding, the loops of host_loops.h) follow them. */
#include "cpu/cpu.h"
#include "cpu/vec.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <string.h>

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

#define SV_D_W 4
typedef __m256d sv_d;
static inline sv_d sv_d_set1(double x) { return _mm256_set1_pd(x); }
static inline sv_d sv_d_load(const double *p) { return _mm256_loadu_pd(p); }
static inline sv_d sv_d_load_f32(const float *p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
static inline void sv_d_store(double *p, sv_d v) { _mm256_storeu_pd(p, v); }
static inline sv_d sv_d_add(sv_d a, sv_d b) { return _mm256_add_pd(a, b); }
static inline sv_d sv_d_mul(sv_d a, sv_d b) { return _mm256_mul_pd(a, b); }

#include "cpu/simd_kernels.h"

/* ---- host kernels (backend/ops.h sona_host_kernels) ---- */

float sona_dot_avx2(const float *a, const float *b, size_t n)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float s = sv_hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* F16C is not in the file's -mavx2 -mfma flags: enabled for this function only, which is called
 * only on hosts with F16C (the registry keeps the scalar ones elsewhere: see f16_needs). */
__attribute__((target("avx2,fma,f16c"))) float sona_dot_f16_avx2(const float *a, const uint16_t *b,
                                                                  size_t n)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    size_t i = 0;
#define HALF8(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p)))
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), HALF8(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), HALF8(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), HALF8(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), HALF8(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), HALF8(b + i), acc0);
#undef HALF8
    float s = sv_hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++)
        s += a[i] * _cvtsh_ss(b[i]);
    return s;
}

__attribute__((target("avx2,f16c"))) void sona_widen_f16_avx2(const uint16_t *h, float *out,
                                                              size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(h + i))));
    for (; i < n; i++)
        out[i] = _cvtsh_ss(h[i]);
}

/* a (f32) . q (Q8, see common/q8.h): full blocks of 32 in SIMD, the last partial block in C. */
#define Q8X8(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p))))
float sona_dot_q8_avx2(const float *a, const void *in, size_t n)
{
    const unsigned char *scales = in;
    const size_t nb = (n + 31) / 32;
    const int8_t *q = (const int8_t *)(scales + nb * sizeof(float));
    __m256 acc = _mm256_setzero_ps();
    size_t b = 0;
    for (; (b + 1) * 32 <= n; b++) {
        const float *ab = a + b * 32;
        const int8_t *qb = q + b * 32;
        __m256 s0 = _mm256_mul_ps(_mm256_loadu_ps(ab), Q8X8(qb));
        __m256 s1 = _mm256_mul_ps(_mm256_loadu_ps(ab + 8), Q8X8(qb + 8));
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(ab + 16), Q8X8(qb + 16), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(ab + 24), Q8X8(qb + 24), s1);
        float scale;
        memcpy(&scale, scales + b * sizeof scale, sizeof scale);
        acc = _mm256_fmadd_ps(_mm256_add_ps(s0, s1), _mm256_set1_ps(scale), acc);
    }
    float s = sv_hsum(acc);
    if (b < nb)
        s += sona_q8_tail_dot(a, scales, q, b, n);
    return s;
}
#undef Q8X8

/* Q8 encoding (common/q8.h): the operations of host_q8_encode_block on each full block with a
 * normal scale (host_q8_full_block), 8 lanes at a time; the rest through it. The baseline
 * build's bytes. */
int sona_q8_encode_avx2(const float *x, size_t n, void *out)
{
    unsigned char *scales = out;
    int8_t *q = (int8_t *)(scales + (n + 31) / 32 * sizeof(float));
    const __m256i magnitude = _mm256_set1_epi32(0x7fffffff);
    const __m256 round = _mm256_set1_ps(0x1.8p23f);
    /* the 32-bit groups of two in-lane packs back in order */
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    size_t lo = 0;
    for (; lo + 32 <= n; lo += 32) {
        __m256 v[4];
        __m256i m = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + lo + 8 * k);
            m = _mm256_max_epu32(m, _mm256_and_si256(_mm256_castps_si256(v[k]), magnitude));
        }
        __m128i h = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
        h = _mm_max_epu32(h, _mm_shuffle_epi32(h, 0x4e));
        h = _mm_max_epu32(h, _mm_shuffle_epi32(h, 0xb1));
        const uint32_t amax_bits = (uint32_t)_mm_cvtsi128_si32(h);
        const float recip = host_q8_full_block(x + lo, amax_bits, scales + lo / 32 * sizeof(float), q + lo);
        if (recip <= 0.0f) {
            if (recip < 0.0f)
                return 0;
            continue; /* encoded there */
        }
        const __m256 inv = _mm256_set1_ps(recip);
        __m256i r[4];
        for (int k = 0; k < 4; k++)
            r[k] = _mm256_cvttps_epi32(_mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v[k], inv), round), round));
        /* |q| <= 127: the saturating packs are exact */
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
        _mm256_storeu_si256((__m256i *)(void *)(q + lo), _mm256_permutevar8x32_epi32(p, order));
    }
    return lo < n ? host_q8_encode_block(x + lo, n - lo, scales + lo / 32 * sizeof(float), q + lo) : 1;
}

SONA_HOST_LOOPS(avx2)

const sona_backend sona_cpu_avx2 = {
    .name = "avx2",
    .device = "host CPU, AVX2 + FMA",
    SONA_CPU_HOST_FIELDS,
    SV_BACKEND_OPS,
    .host = {.dot = sona_dot_avx2, .dot_f16 = sona_dot_f16_avx2, .widen_f16 = sona_widen_f16_avx2,
             .dot_q8 = sona_dot_q8_avx2, SONA_HOST_LOOPS_FIELDS(avx2), SV_F64_HOST_KERNELS,
             SV_HOST_KERNELS},
};

#endif
