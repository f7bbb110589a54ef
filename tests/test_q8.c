/* SPDX-License-Identifier: MIT */
/* The Q8 block format (common/q8.h): encoding error within half a block scale (subnormal and huge
 * blocks included), NaN/Inf refused, exact decoding, outliers confined to their block, every x86
 * variant's encoder and decoder identical to the baseline build, and the f32 x Q8 dot kernels of
 * every variant the host runs against a double reference, odd lengths (partial last blocks)
 * included; and the host loops beside them (mix_rows, max_magnitude, axpy, scale) likewise. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/rng.h"
#include "common/q8.h"
#include "cpu/vec.h"
#include "dispatch/dispatch.h"
#include "dispatch/vecmath.h"
#include "support/fill.h"

enum { MAXN = 300 };
static const uint32_t sizes[] = {1, 7, 31, 32, 33, 100, 256, 259, 300};

/* Random values of mixed magnitude, with an occasional outlier channel. */
static float block_scale(const void *q, uint32_t b)
{
    float s;
    memcpy(&s, (const unsigned char *)q + b * sizeof s, sizeof s);
    return s;
}

Test(q8, encode_decode_error_bound)
{
    const uint64_t seed = test_seed();
    printf("[q8] encode seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 1);
    unsigned char q[MAXN * 2 + 64];
    float x[MAXN], y[MAXN + 1];
    for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
        const uint32_t n = sizes[c];
        fill_spread(&r, x, n);
        memset(q, 0xA5, sizeof q);
        sona_q8_encode(x, n, q);
        cr_assert_eq(q[sona_q8_bytes(n)], 0xA5, "n=%u: encode wrote past %zu bytes", n, sona_q8_bytes(n));
        y[n] = 42.0f;
        sona_q8_decode(q, n, y);
        cr_assert_eq(y[n], 42.0f, "n=%u: decode wrote past n", n);
        for (uint32_t i = 0; i < n; i++) {
            const uint32_t b = i / SONA_Q8_BLOCK;
            double amax = 0;
            for (uint32_t j = b * SONA_Q8_BLOCK; j < n && j < (b + 1) * SONA_Q8_BLOCK; j++)
                amax = fmax(amax, fabs((double)x[j]));
            const double step = amax / 127.0;
            cr_assert_float_eq(block_scale(q, b), step, step * 1e-6 + 1e-30, "n=%u block %u scale", n, b);
            /* Half a step, plus the rounding of the scale and of x * (127 / amax). */
            cr_assert_leq(fabs((double)y[i] - x[i]), 0.5 * step + 2e-6 * amax + 1e-30,
                          "n=%u i=%u: %g decodes to %g (block max %g)", n, i, x[i], y[i], amax);
            const int8_t qi = (int8_t)q[sona_q8_blocks(n) * sizeof(float) + i];
            cr_assert_eq(y[i], (float)qi * block_scale(q, b), "n=%u i=%u: decode is q * scale", n, i);
        }
    }
}

/* A zero block encodes to zeros and a scale of 0; one outlier costs precision only in its block. */
Test(q8, zero_block_and_outlier_locality)
{
    float x[96] = {0}, y[96];
    unsigned char q[sizeof x];
    for (int i = 32; i < 96; i++)
        x[i] = 0.001f * (float)(i - 60);
    x[40] = 1000.0f;
    sona_q8_encode(x, 96, q);
    sona_q8_decode(q, 96, y);
    cr_assert_eq(block_scale(q, 0), 0.0f);
    for (int i = 0; i < 32; i++)
        cr_assert_eq(y[i], 0.0f);
    for (int i = 64; i < 96; i++) /* the third block has no outlier: fine steps */
        cr_assert_float_eq(y[i], x[i], 0.036 / 127 * 0.5 + 1e-7, "i=%d", i);
    cr_assert_float_eq(y[40], 1000.0f, 1000.0f / 127 * 0.5, "the outlier itself");
}

typedef int (*q8_encode_fn)(const float *x, size_t n, void *out);
typedef void (*q8_decode_fn)(const void *q, size_t n, float *out);

/* Whether a variant's encoder and decoder give the baseline's bytes and floats. */
static void check_codec(const char *name, q8_encode_fn enc, q8_decode_fn dec, uint64_t seed)
{
    sona_rng r;
    sona_rng_seed(&r, seed, 3);
    float x[MAXN], y[MAXN], ry[MAXN];
    unsigned char q[MAXN * 2 + 64], rq[MAXN * 2 + 64];
    for (int scale_case = 0; scale_case < 3; scale_case++)
        for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
            const uint32_t n = sizes[c];
            fill_spread(&r, x, n);
            /* normal values, subnormal blocks (scale below 2^-126), values near FLT_MAX */
            const float mul = scale_case == 0 ? 1.0f : scale_case == 1 ? 1e-39f : 1e35f;
            for (uint32_t i = 0; i < n; i++)
                x[i] *= mul;
            x[n / 2] = scale_case == 1 ? -0.0f : x[n / 2];
            cr_assert_eq(sona_q8_encode_scalar(x, n, rq), 1);
            cr_assert_eq(enc(x, n, q), 1, "%s n=%u", name, n);
            cr_assert_eq(memcmp(q, rq, sona_q8_bytes(n)), 0, "%s n=%u case %d: encodings differ", name, n,
                         scale_case);
            sona_q8_decode_scalar(rq, n, ry);
            dec(rq, n, y);
            cr_assert_eq(memcmp(y, ry, n * sizeof *y), 0, "%s n=%u: decodings differ", name, n);
            x[n - 1] = scale_case == 2 ? INFINITY : NAN;
            cr_assert_eq(enc(x, n, q), 0, "%s n=%u: a non-finite value was encoded", name, n);
        }
}

Test(q8, variants_encode_and_decode_like_the_baseline)
{
    const uint64_t seed = test_seed();
    printf("[q8] codec seed %" PRIu64 "\n", seed);
    check_codec("chosen", sona_q8_encode, sona_q8_decode, seed);
#if defined(__x86_64__) || defined(__i386__)
    const uint32_t f = sona_probe()->features;
    if ((f & SONA_CPU_AVX2) && (f & SONA_CPU_FMA))
        check_codec("avx2", sona_q8_encode_avx2, sona_q8_decode_avx2, seed);
    const uint32_t avx512 = SONA_CPU_AVX512F | SONA_CPU_AVX512BW | SONA_CPU_AVX512VL;
    if ((f & avx512) == avx512)
        check_codec("avx512", sona_q8_encode_avx512, sona_q8_decode_avx512, seed);
#endif
}

/* Blocks whose scale is subnormal (the reciprocal 127 / amax would overflow a float) and blocks
 * near FLT_MAX keep the half-step bound; +-0 decodes to 0. */
Test(q8, tiny_and_huge_blocks_keep_the_bound)
{
    float x[70], y[70];
    unsigned char q[sizeof x];
    for (int i = 0; i < 70; i++)
        x[i] = (float)(i % 23 - 11) * (i < 32 ? 1e-42f : i < 64 ? 3e37f : 1e-45f);
    x[5] = -0.0f;
    cr_assert_eq(sona_q8_encode(x, 70, q), 1);
    sona_q8_decode(q, 70, y);
    for (int i = 0; i < 70; i++) {
        double amax = 0;
        for (int j = i / 32 * 32; j < 70 && j < i / 32 * 32 + 32; j++)
            amax = fmax(amax, fabs((double)x[j]));
        /* half a step, the rounding of x * (127 / amax), and 127 units of a subnormal scale */
        const double bound = 0.5 * amax / 127.0 + 2e-6 * amax + 0x1p-142;
        cr_assert_leq(fabs((double)y[i] - x[i]), bound, "x[%d] = %a decodes to %a", i, x[i], y[i]);
    }
    cr_expect_eq(y[5], 0.0f);
}

static void check_dot(const char *name, sona_dot_q8_fn dot, uint64_t seed)
{
    sona_rng r;
    sona_rng_seed(&r, seed, 2);
    float a[MAXN], x[MAXN], d[MAXN];
    unsigned char q[MAXN * 2 + 64];
    for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
        const uint32_t n = sizes[c];
        fill_spread(&r, a, n);
        fill_spread(&r, x, n);
        sona_q8_encode(x, n, q);
        sona_q8_decode(q, n, d);
        double ref = 0, mag = 0;
        for (uint32_t i = 0; i < n; i++) {
            ref += (double)a[i] * d[i];
            mag += fabs((double)a[i] * d[i]);
        }
        const double tol = 1e-5 * mag + 1e-30;
        cr_assert_float_eq(dot(a, q, n), ref, tol, "%s n=%u", name, n);
    }
}

Test(q8, dot_kernels_match_reference)
{
    const uint64_t seed = test_seed();
    printf("[q8] dot seed %" PRIu64 " (variant in use: %s)\n", seed, sona_cpu_backend()->name);
    check_dot("scalar", sona_dot_q8_scalar, seed);
    check_dot("chosen", sona_dot_q8_kernel(), seed);
#if defined(__x86_64__) || defined(__i386__)
    const uint32_t f = sona_probe()->features;
    if ((f & SONA_CPU_AVX2) && (f & SONA_CPU_FMA))
        check_dot("avx2", sona_dot_q8_avx2, seed);
    const uint32_t avx512 = SONA_CPU_AVX512F | SONA_CPU_AVX512BW | SONA_CPU_AVX512VL;
    if ((f & avx512) == avx512)
        check_dot("avx512", sona_dot_q8_avx512, seed);
#endif
}

/* The power-of-two form: each block's scale is the smallest power of two that fits the block's
 * largest magnitude in 127 steps, decoding is within half a step, encoding the decoded values
 * gives them back bit for bit, and dithered (stochastic) rounding is within one step and
 * unbiased: averaged over many draws it comes back to x. */
Test(q8, pow2_scales_round_trip_and_dither_is_unbiased)
{
    const uint64_t seed = test_seed();
    printf("[q8] pow2 seed %" PRIu64 "\n", seed);
    sona_rng r, dither;
    sona_rng_seed(&r, seed, 3);
    sona_rng_seed(&dither, seed, 4);
    unsigned char q[MAXN * 2 + 64], q2[MAXN * 2 + 64];
    float x[MAXN], y[MAXN], y2[MAXN];
    static double mean[MAXN];
    for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
        const uint32_t n = sizes[c];
        fill_spread(&r, x, n);
        memset(q, 0xA5, sizeof q);
        sona_q8_encode_pow2(x, n, q, NULL);
        cr_assert_eq(q[sona_q8_bytes(n)], 0xA5, "n=%u: wrote past the end", n);
        sona_q8_decode(q, n, y);
        for (uint32_t b = 0; b * SONA_Q8_BLOCK < n; b++) {
            double amax = 0;
            for (uint32_t j = b * SONA_Q8_BLOCK; j < n && j < (b + 1) * SONA_Q8_BLOCK; j++)
                amax = fmax(amax, fabs((double)x[j]));
            const double s = block_scale(q, b);
            cr_assert(amax == 0 ? s == 0 : (s >= amax / 127 && s / 2 < amax / 127 && exp2(round(log2(s))) == s),
                      "n=%u block %u: scale %g for largest magnitude %g", n, b, s, amax);
            for (uint32_t j = b * SONA_Q8_BLOCK; j < n && j < (b + 1) * SONA_Q8_BLOCK; j++)
                cr_assert_leq(fabs((double)y[j] - x[j]), s / 2, "n=%u i=%u", n, j);
        }
        sona_q8_encode_pow2(y, n, q2, NULL);
        sona_q8_decode(q2, n, y2);
        cr_assert_eq(memcmp(y, y2, n * sizeof *y), 0, "n=%u: decode, encode, decode changed values", n);
        /* Dithered: within a step each time, and the mean of 4000 draws within 6 standard
         * errors (a step / sqrt(4 * 4000) at most: about 1e-6 odds over the ~1000 values). */
        const int draws = 4000;
        for (uint32_t i = 0; i < n; i++)
            mean[i] = 0;
        for (int k = 0; k < draws; k++) {
            sona_q8_encode_pow2(x, n, q2, &dither);
            sona_q8_decode(q2, n, y2);
            for (uint32_t i = 0; i < n; i++) {
                const double s = block_scale(q, i / SONA_Q8_BLOCK);
                cr_assert_lt(fabs((double)y2[i] - x[i]), s == 0 ? 1e-30 : s, "n=%u i=%u: dither off by a step", n, i);
                mean[i] += y2[i] / draws;
            }
        }
        for (uint32_t i = 0; i < n; i++) {
            const double s = block_scale(q, i / SONA_Q8_BLOCK);
            cr_assert_leq(fabs(mean[i] - x[i]), 6 * s / sqrt(4.0 * draws) + 1e-30,
                          "n=%u i=%u: dithered mean %g for %g (step %g)", n, i, mean[i], x[i], s);
        }
    }
}

/* ---- host loops beside the codec: mix_rows and max_magnitude ---------------------------------
 * Every x86 variant's build of them gives the plain loop's bits: mix_rows the sums of
 * code_precondition_gradients as it was written before (p0 row0, then + pk rowk in order), odd
 * widths and a stride past the rows included; max_magnitude the largest magnitude's bits, NaN
 * and Inf above every finite bound; axpy and scale the plain loops' bits. */
typedef void (*mix_fn)(float *rows, size_t stride, const float *p, uint32_t r, size_t n);
typedef uint32_t (*maxmag_fn)(const float *v, size_t n);
typedef void (*axpy_fn)(float *y, const float *x, size_t n, float c);
typedef void (*scale_fn)(float *v, size_t n, float c);

static void check_host_loops(const char *name, mix_fn mix, maxmag_fn maxmag, axpy_fn axpy, scale_fn scale,
                             uint64_t seed)
{
    static const uint32_t ranks[] = {1, 2, 3, 4, 8};
    static const uint32_t widths[] = {1, 5, 63, 64, 65, 200};
    static float rows[8 * 203], want[8 * 203], p[64];
    sona_rng rng;
    sona_rng_seed(&rng, seed, 77);
    for (size_t ri = 0; ri < sizeof ranks / sizeof *ranks; ri++)
        for (size_t wi = 0; wi < sizeof widths / sizeof *widths; wi++) {
            const uint32_t r = ranks[ri], n = widths[wi], stride = n + 3;
            for (uint32_t i = 0; i < r * stride; i++)
                rows[i] = sona_rng_normal(&rng) * 1e-3f;
            for (uint32_t i = 0; i < r * r; i++)
                p[i] = sona_rng_normal(&rng);
            memcpy(want, rows, r * stride * sizeof *rows);
            for (uint32_t j = 0; j < r; j++)
                for (uint32_t h = 0; h < n; h++) {
                    float v = p[j * r] * rows[h];
                    for (uint32_t k = 1; k < r; k++)
                        v += p[j * r + k] * rows[k * stride + h];
                    want[j * stride + h] = v;
                }
            mix(rows, stride, p, r, n);
            cr_assert_eq(memcmp(rows, want, r * stride * sizeof *rows), 0, "%s mix_rows r=%u n=%u", name, r, n);
        }
    float v[MAXN];
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        const uint32_t n = sizes[si];
        for (uint32_t i = 0; i < n; i++)
            v[i] = sona_rng_normal(&rng);
        cr_assert_eq(maxmag(v, n), sona_max_magnitude_bits(v, n), "%s max_magnitude n=%u", name, n);
        v[n - 1] = -INFINITY;
        cr_assert_geq(maxmag(v, n), 0x7f800000u, "%s: Inf n=%u", name, n);
        v[n / 2] = NAN;
        cr_assert_gt(maxmag(v, n), 0x7f800000u, "%s: NaN n=%u", name, n);
        /* axpy and scale: one rounding an element, as the plain loops */
        float y[MAXN], w[MAXN];
        const float c = sona_rng_normal(&rng);
        for (uint32_t i = 0; i < n; i++) {
            v[i] = sona_rng_normal(&rng);
            y[i] = w[i] = sona_rng_normal(&rng);
        }
        for (uint32_t i = 0; i < n; i++)
            w[i] += c * v[i];
        axpy(y, v, n, c);
        cr_assert_eq(memcmp(y, w, n * sizeof *y), 0, "%s axpy n=%u", name, n);
        for (uint32_t i = 0; i < n; i++)
            w[i] *= c;
        scale(y, n, c);
        cr_assert_eq(memcmp(y, w, n * sizeof *y), 0, "%s scale n=%u", name, n);
    }
}

Test(host_loops, variants_match_the_plain_loops)
{
    const uint64_t seed = test_seed();
    printf("[host_loops] seed %" PRIu64 "\n", seed);
    check_host_loops("scalar", sona_mix_rows_scalar, sona_max_magnitude_scalar, sona_axpy_scalar, sona_scale_scalar,
                     seed);
    const sona_host_kernels *hk = sona_host_kernels_get();
    check_host_loops("chosen", hk->mix_rows, hk->max_magnitude, hk->axpy, hk->scale, seed);
#if defined(__x86_64__) || defined(__i386__)
    const uint32_t f = sona_probe()->features;
    if ((f & SONA_CPU_AVX2) && (f & SONA_CPU_FMA))
        check_host_loops("avx2", sona_mix_rows_avx2, sona_max_magnitude_avx2, sona_axpy_avx2, sona_scale_avx2, seed);
    const uint32_t avx512 = SONA_CPU_AVX512F | SONA_CPU_AVX512BW | SONA_CPU_AVX512VL;
    if ((f & avx512) == avx512)
        check_host_loops("avx512", sona_mix_rows_avx512, sona_max_magnitude_avx512, sona_axpy_avx512,
                         sona_scale_avx512, seed);
#endif
    /* The per-step range check is exact at its bound. */
    float b[3] = {0.5f, -2.0f, 1.0f};
    cr_assert(sona_all_within_fast(b, 3, 2.0f));
    b[1] = nextafterf(-2.0f, -3.0f);
    cr_assert_not(sona_all_within_fast(b, 3, 2.0f));
    b[1] = NAN;
    cr_assert_not(sona_all_within_fast(b, 3, 1e30f));
}
