/* SPDX-License-Identifier: MIT */
/* The avx512 CPU variant (AVX-512 F/BW/VL, 16 floats a vector, masked tails). Compiled with its
 * own ISA flags; chosen at run time only when the host has the features. The ops are those of
 * simd_kernels.h; the host kernels (dot products, Q8 encoding, the loops of host_loops.h) follow
 * them. */
#include "cpu/cpu.h"
#include "cpu/vec.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <string.h>

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

#define SV_D_W 8
typedef __m512d sv_d;
static inline sv_d sv_d_set1(double x) { return _mm512_set1_pd(x); }
static inline sv_d sv_d_load(const double *p) { return _mm512_loadu_pd(p); }
static inline sv_d sv_d_load_f32(const float *p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
static inline void sv_d_store(double *p, sv_d v) { _mm512_storeu_pd(p, v); }
static inline sv_d sv_d_add(sv_d a, sv_d b) { return _mm512_add_pd(a, b); }
static inline sv_d sv_d_mul(sv_d a, sv_d b) { return _mm512_mul_pd(a, b); }

#include "cpu/simd_kernels.h"

/* ---- host kernels (backend/ops.h sona_host_kernels) ---- */

float sona_dot_avx512(const float *a, const float *b, size_t n)
{
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
        acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), acc2);
        acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), acc3);
    }
    for (; i + 16 <= n; i += 16)
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    if (i < n) {
        const __mmask16 tail = (__mmask16)((1u << (n - i)) - 1u);
        acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, a + i), _mm512_maskz_loadu_ps(tail, b + i),
                               acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

float sona_dot_f16_avx512(const float *a, const uint16_t *b, size_t n)
{
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    size_t i = 0;
#define HALF16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(p)))
    for (; i + 64 <= n; i += 64) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), HALF16(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), HALF16(b + i + 16), acc1);
        acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), HALF16(b + i + 32), acc2);
        acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), HALF16(b + i + 48), acc3);
    }
    for (; i + 16 <= n; i += 16)
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), HALF16(b + i), acc0);
#undef HALF16
    if (i < n) {
        const __mmask16 tail = (__mmask16)((1u << (n - i)) - 1u);
        acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, a + i),
                               _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, b + i)), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

void sona_widen_f16_avx512(const uint16_t *h, float *out, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(h + i))));
    if (i < n) {
        const __mmask16 tail = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(out + i, tail, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, h + i)));
    }
}

/* a (f32) . q (Q8, see common/q8.h): full blocks of 32 in SIMD (two accumulators for alternate
 * blocks), the last partial block in C. */
#define Q8X16(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p))))
float sona_dot_q8_avx512(const float *a, const void *in, size_t n)
{
    const unsigned char *scales = in;
    const size_t nb = (n + 31) / 32;
    const int8_t *q = (const int8_t *)(scales + nb * sizeof(float));
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    size_t b = 0;
    for (; (b + 1) * 32 <= n; b++) {
        const float *ab = a + b * 32;
        const int8_t *qb = q + b * 32;
        const __m512 s = _mm512_fmadd_ps(_mm512_loadu_ps(ab + 16), Q8X16(qb + 16),
                                         _mm512_mul_ps(_mm512_loadu_ps(ab), Q8X16(qb)));
        float scale;
        memcpy(&scale, scales + b * sizeof scale, sizeof scale);
        acc[b & 1] = _mm512_fmadd_ps(s, _mm512_set1_ps(scale), acc[b & 1]);
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    if (b < nb)
        s += sona_q8_tail_dot(a, scales, q, b, n);
    return s;
}
#undef Q8X16

/* Q8 encoding (common/q8.h): the operations of host_q8_encode_block on each full block with a
 * normal scale (host_q8_full_block), 16 lanes at a time; the rest through it. The baseline
 * build's bytes. */
int sona_q8_encode_avx512(const float *x, size_t n, void *out)
{
    unsigned char *scales = out;
    int8_t *q = (int8_t *)(scales + (n + 31) / 32 * sizeof(float));
    const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
    const __m512 round = _mm512_set1_ps(0x1.8p23f);
    size_t lo = 0;
    for (; lo + 32 <= n; lo += 32) {
        const __m512 a = _mm512_loadu_ps(x + lo), b = _mm512_loadu_ps(x + lo + 16);
        const uint32_t amax_bits = _mm512_reduce_max_epu32(
            _mm512_max_epu32(_mm512_and_si512(_mm512_castps_si512(a), magnitude),
                             _mm512_and_si512(_mm512_castps_si512(b), magnitude)));
        const float recip = host_q8_full_block(x + lo, amax_bits, scales + lo / 32 * sizeof(float), q + lo);
        if (recip <= 0.0f) {
            if (recip < 0.0f)
                return 0;
            continue; /* encoded there */
        }
        const __m512 inv = _mm512_set1_ps(recip);
        const __m512 qa = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(a, inv), round), round);
        const __m512 qb = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(b, inv), round), round);
        _mm_storeu_si128((__m128i *)(void *)(q + lo), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(qa)));
        _mm_storeu_si128((__m128i *)(void *)(q + lo + 16), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(qb)));
    }
    return lo < n ? host_q8_encode_block(x + lo, n - lo, scales + lo / 32 * sizeof(float), q + lo) : 1;
}

SONA_HOST_LOOPS(avx512)

const sona_backend sona_cpu_avx512 = {
    .name = "avx512",
    .device = "host CPU, AVX-512 F/BW/VL",
    SONA_CPU_HOST_FIELDS,
    SV_BACKEND_OPS,
    .host = {.dot = sona_dot_avx512, .dot_f16 = sona_dot_f16_avx512,
             .widen_f16 = sona_widen_f16_avx512, .dot_q8 = sona_dot_q8_avx512,
             SONA_HOST_LOOPS_FIELDS(avx512), SV_F64_HOST_KERNELS, SV_HOST_KERNELS},
};

#endif
