/* SPDX-License-Identifier: MIT */
/* Element-wise host loops of the core (finite check, EWC++ Fisher EMA and penalty, sum of
 * squares, Q8 encoding and decoding, the cluster merge's double dots and axpys) written once in
 * plain C and compiled by each variant file with its own ISA flags (ops_scalar.c: baseline, ops_avx2.c, ops_avx512.c), so the compiler
 * vectorises them for that level. ISO C mode keeps floating-point contraction off: every level
 * gives bit-identical results. SONA_HOST_LOOPS(suffix) defines sona_<loop>_<suffix> for every
 * loop but the Q8 encoder, which the SIMD files write with intrinsics around
 * host_q8_encode_block (the compiler's build of the whole loop ran at half their speed) and
 * ops_scalar.c builds from host_q8_encode. */
#ifndef SONA_CPU_HOST_LOOPS_H
#define SONA_CPU_HOST_LOOPS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/float_bits.h"

/* NaN and Inf are the floats whose exponent bits are all ones; adding one to such an exponent
 * carries into the sign bit. Integer and/add/or vectorise without -ffast-math, unlike a float
 * reduction (4-5x faster on the per-step checks of trajectories). */
static inline int host_all_finite(const float *v, size_t n)
{
    uint32_t carry = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], sizeof bits);
        carry |= (bits & 0x7f800000u) + 0x00800000u;
    }
    return (carry & 0x80000000u) == 0;
}

/* f = d * f + (1 - d) * g^2 */
static inline void host_fisher_ema(float *restrict f, const float *restrict g, size_t n, float d)
{
    const float c = 1.0f - d;
    for (size_t i = 0; i < n; i++)
        f[i] = d * f[i] + c * g[i] * g[i];
}

/* out = g - lambda * (fs * theta - ft): the EWC++ penalised gradient in its pre-reduced form. */
static inline void host_penalise(float *out, const float *g, const float *restrict theta,
                                 const float *restrict fs, const float *restrict ft, size_t n,
                                 float lambda)
{
    for (size_t i = 0; i < n; i++)
        out[i] = g[i] - lambda * (fs[i] * theta[i] - ft[i]);
}

/* y += c x and v *= c, one rounding each per element (the plain loops' results). */
static inline void host_axpy(float *restrict y, const float *restrict x, size_t n, float c)
{
    for (size_t i = 0; i < n; i++)
        y[i] += c * x[i];
}

static inline void host_scale(float *v, size_t n, float c)
{
    for (size_t i = 0; i < n; i++)
        v[i] *= c;
}

/* rows <- p rows in place: r rows of n floats, stride floats apart, mixed by the r x r matrix p
 * (row-major): row j becomes p[j][0] row_0 + p[j][1] row_1 + ..., summed in that order (each
 * product and sum rounded, the order of a plain loop). A block of columns at a time: the sums
 * but their last term go to a scratch block, then the last term, read from row r-1, completes
 * each row in place (row r-1 itself last), so the rows are read once and copied nowhere.
 * r <= HOST_MIX_MAX_ROWS. */
#define HOST_MIX_MAX_ROWS 64
#define HOST_MIX_BLOCK 64
static inline void host_mix_rows(float *rows, size_t stride, const float *p, uint32_t r, size_t n)
{
    float part[HOST_MIX_MAX_ROWS * HOST_MIX_BLOCK];
    const float *last = rows + (size_t)(r - 1) * stride;
    for (size_t lo = 0; lo < n; lo += HOST_MIX_BLOCK) {
        const size_t m = n - lo < HOST_MIX_BLOCK ? n - lo : HOST_MIX_BLOCK;
        if (r == 1) {
            for (size_t h = 0; h < m; h++)
                rows[lo + h] = p[0] * rows[lo + h];
            continue;
        }
        for (uint32_t j = 0; j < r; j++) {
            float *restrict acc = part + (size_t)j * HOST_MIX_BLOCK;
            const float *restrict in0 = rows + lo;
            const float p0 = p[(size_t)j * r];
            for (size_t h = 0; h < m; h++)
                acc[h] = p0 * in0[h];
            for (uint32_t k = 1; k + 1 < r; k++) {
                const float pk = p[(size_t)j * r + k];
                const float *restrict ink = rows + k * stride + lo;
                for (size_t h = 0; h < m; h++)
                    acc[h] += pk * ink[h];
            }
        }
        for (uint32_t j = 0; j < r; j++) {
            const float *acc = part + (size_t)j * HOST_MIX_BLOCK, pl = p[(size_t)j * r + r - 1];
            float *out = rows + j * stride + lo;
            for (size_t h = 0; h < m; h++)
                out[h] = acc[h] + pl * last[lo + h];
        }
    }
}

/* Sum of squares in 16 float lanes (a fixed order, so the same sum at every ISA level). */
static inline double host_sum_squares(const float *v, size_t n)
{
    float lane[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            lane[j] += v[i + j] * v[i + j];
    double s = 0.0;
    for (; i < n; i++)
        s += (double)v[i] * v[i];
    for (int j = 0; j < 16; j++)
        s += lane[j];
    return s;
}

/* x . y in double, in 8 lanes summed in a fixed order: the same bits at every ISA level and
 * vector width (the cluster merge's arithmetic, core/adapt/merge.c, must give every rank the
 * same bits whatever its CPU). Each product is its own statement: no compiler contracts it into
 * a fused multiply-add. Lane q adds the products of elements q, q + 8, ... in order; then the
 * lanes are summed in the order below. */
static inline double host_lanes_f64(const double *acc)
{
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* The last m < 8 products go to lanes 0..m-1; then the lanes' sum. The SIMD variants end their
 * dots here too. */
static inline double host_dot_tail_f64(double *acc, const double *x, const double *y, size_t m)
{
    for (size_t q = 0; q < m; q++) {
        const double p = x[q] * y[q];
        acc[q] += p;
    }
    return host_lanes_f64(acc);
}

static inline double host_dot_tail_f32_f64(double *acc, const float *x, const float *y, size_t m)
{
    for (size_t q = 0; q < m; q++) {
        const double p = (double)x[q] * (double)y[q];
        acc[q] += p;
    }
    return host_lanes_f64(acc);
}

/* The products of the first n8 (a multiple of 8) elements added into the lanes acc[8]. */
static inline void host_dot_lanes_f64(const double *x, const double *y, size_t n8, double *acc)
{
    for (size_t i = 0; i < n8; i += 8)
        for (size_t q = 0; q < 8; q++) {
            const double p = x[i + q] * y[i + q];
            acc[q] += p;
        }
}

static inline void host_dot_lanes_f32_f64(const float *x, const float *y, size_t n8, double *acc)
{
    for (size_t i = 0; i < n8; i += 8)
        for (size_t q = 0; q < 8; q++) {
            const double p = (double)x[i + q] * (double)y[i + q];
            acc[q] += p;
        }
}

static inline double host_dot_f64(const double *x, const double *y, size_t n)
{
    double acc[8] = {0};
    const size_t n8 = n & ~(size_t)7;
    host_dot_lanes_f64(x, y, n8, acc);
    return host_dot_tail_f64(acc, x + n8, y + n8, n - n8);
}

/* x . y of floats, each product in double, the same 8 lanes and order as host_dot_f64. */
static inline double host_dot_f32_f64(const float *x, const float *y, size_t n)
{
    double acc[8] = {0};
    const size_t n8 = n & ~(size_t)7;
    host_dot_lanes_f32_f64(x, y, n8, acc);
    return host_dot_tail_f32_f64(acc, x + n8, y + n8, n - n8);
}

/* y += c x in double (x double, or float widened), element by element: the same bits at every
 * level. */
static inline void host_axpy_f64(double *restrict y, const double *restrict x, size_t n, double c)
{
    for (size_t i = 0; i < n; i++) {
        const double p = c * x[i];
        y[i] += p;
    }
}

static inline void host_axpy_f32_f64(double *restrict y, const float *restrict x, size_t n, double c)
{
    for (size_t i = 0; i < n; i++) {
        const double p = c * (double)x[i];
        y[i] += p;
    }
}

/* y += c[0] x[0] + c[1] x[1] + c[2] x[2] + c[3] x[3], added in that order, each product
 * rounded: the bits of four host_axpy_f64 calls, with y read and written once. */
static inline void host_axpy4_f64(double *restrict y, const double *const *x, const double *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double v = y[i];
        for (size_t j = 0; j < 4; j++) {
            const double p = c[j] * x[j][i];
            v += p;
        }
        y[i] = v;
    }
}

static inline void host_axpy4_f32_f64(double *restrict y, const float *const *x, const double *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double v = y[i];
        for (size_t j = 0; j < 4; j++) {
            const double p = c[j] * (double)x[j][i];
            v += p;
        }
        y[i] = v;
    }
}

/* Q8 (common/q8.h), one block of m <= 32 values: scale = amax / 127 (to *scale_at, unaligned) and
 * q = x * (127 / amax) rounded to nearest even. |x * inv| is at most 127 (1 + 2^-24)^2 < 127.5, so
 * q needs no clamp, and the rounding adds and subtracts 1.5 * 2^23, where the float step is 1
 * (lrintf does not vectorise). amax is an integer max, which also finds NaN/Inf: 0 returned.
 * Blocks with amax < 2^-119 (a subnormal scale, where 127 / amax would overflow) take the
 * reciprocal in double. The SIMD encoders (ops_avx2.c, ops_avx512.c) do the same operations on
 * full blocks and call this for the rest, so every variant writes the same bytes. */
#define HOST_Q8_MIN_FAST 0x1p-119f
static inline int host_q8_encode_block(const float *restrict xb, size_t m, unsigned char *scale_at,
                                       int8_t *restrict qb)
{
    const uint32_t amax_bits = sona_max_magnitude_bits(xb, m);
    if (amax_bits >= 0x7f800000u)
        return 0;
    float amax;
    memcpy(&amax, &amax_bits, sizeof amax);
    const float scale = amax / 127.0f;
    memcpy(scale_at, &scale, sizeof scale);
    if (amax >= HOST_Q8_MIN_FAST) {
        const float inv = 127.0f / amax;
        for (size_t i = 0; i < m; i++)
            qb[i] = (int8_t)(int32_t)((xb[i] * inv + 0x1.8p23f) - 0x1.8p23f);
    } else {
        const double inv = amax > 0.0f ? 127.0 / (double)amax : 0.0;
        for (size_t i = 0; i < m; i++)
            qb[i] = (int8_t)(int32_t)(((float)((double)xb[i] * inv) + 0x1.8p23f) - 0x1.8p23f);
    }
    return 1;
}

/* The SIMD encoders' scalar step for a full block whose largest magnitude has bits amax_bits: on
 * the fast path it stores the scale and returns 127 / amax (> 0) for the lanes to quantise with;
 * else the block goes through host_q8_encode_block here: 0 when done, -1 on NaN/Inf. */
static inline float host_q8_full_block(const float *xb, uint32_t amax_bits, unsigned char *scale_at,
                                       int8_t *qb)
{
    float amax;
    memcpy(&amax, &amax_bits, sizeof amax);
    if (amax_bits >= 0x7f800000u || !(amax >= HOST_Q8_MIN_FAST))
        return host_q8_encode_block(xb, 32, scale_at, qb) ? 0.0f : -1.0f;
    const float scale = amax / 127.0f;
    memcpy(scale_at, &scale, sizeof scale);
    return 127.0f / amax;
}

/* Q8 encoding of x[n] into out (common/q8.h); 0 on NaN or Inf (out then undefined). */
static inline int host_q8_encode(const float *restrict x, size_t n, void *restrict out)
{
    unsigned char *scales = out;
    int8_t *q = (int8_t *)(scales + (n + 31) / 32 * sizeof(float));
    for (size_t lo = 0; lo < n; lo += 32)
        if (!host_q8_encode_block(x + lo, n - lo < 32 ? n - lo : 32, scales + lo / 32 * sizeof(float), q + lo))
            return 0;
    return 1;
}

static inline void host_q8_decode(const void *restrict in, size_t n, float *restrict out)
{
    const unsigned char *scales = in;
    const int8_t *restrict q = (const int8_t *)(scales + (n + 31) / 32 * sizeof(float));
    for (size_t lo = 0; lo < n; lo += 32) {
        const size_t m = n - lo < 32 ? n - lo : 32;
        float scale;
        memcpy(&scale, scales + lo / 32 * sizeof scale, sizeof scale);
        for (size_t i = 0; i < m; i++)
            out[lo + i] = (float)q[lo + i] * scale;
    }
}

#define SONA_HOST_LOOPS(suffix)                                                                 \
    int sona_all_finite_##suffix(const float *v, size_t n) { return host_all_finite(v, n); }    \
    void sona_fisher_ema_##suffix(float *restrict f, const float *restrict g, size_t n, float d) \
    {                                                                                           \
        host_fisher_ema(f, g, n, d);                                                            \
    }                                                                                           \
    void sona_penalise_##suffix(float *out, const float *g, const float *restrict theta,        \
                                const float *restrict fs, const float *restrict ft, size_t n,   \
                                float lambda)                                                   \
    {                                                                                           \
        host_penalise(out, g, theta, fs, ft, n, lambda);                                        \
    }                                                                                           \
    double sona_sum_squares_##suffix(const float *v, size_t n) { return host_sum_squares(v, n); } \
    uint32_t sona_max_magnitude_##suffix(const float *v, size_t n) { return sona_max_magnitude_bits(v, n); } \
    void sona_axpy_##suffix(float *restrict y, const float *restrict x, size_t n, float c)      \
    {                                                                                           \
        host_axpy(y, x, n, c);                                                                  \
    }                                                                                           \
    void sona_scale_##suffix(float *v, size_t n, float c) { host_scale(v, n, c); }              \
    void sona_mix_rows_##suffix(float *rows, size_t stride, const float *p, uint32_t r, size_t n) \
    {                                                                                           \
        host_mix_rows(rows, stride, p, r, n);                                                   \
    }                                                                                           \
    void sona_q8_decode_##suffix(const void *in, size_t n, float *out) { host_q8_decode(in, n, out); } \
    double sona_dot_f64_##suffix(const double *x, const double *y, size_t n) { return host_dot_f64(x, y, n); } \
    double sona_dot_f32_f64_##suffix(const float *x, const float *y, size_t n)                  \
    {                                                                                           \
        return host_dot_f32_f64(x, y, n);                                                       \
    }                                                                                           \
    void sona_axpy_f64_##suffix(double *restrict y, const double *restrict x, size_t n, double c) \
    {                                                                                           \
        host_axpy_f64(y, x, n, c);                                                              \
    }                                                                                           \
    void sona_axpy_f32_f64_##suffix(double *restrict y, const float *restrict x, size_t n, double c) \
    {                                                                                           \
        host_axpy_f32_f64(y, x, n, c);                                                          \
    }

#define SONA_HOST_LOOPS_DECLARE(suffix)                                                          \
    int sona_all_finite_##suffix(const float *v, size_t n);                                     \
    void sona_fisher_ema_##suffix(float *restrict f, const float *restrict g, size_t n, float d); \
    void sona_penalise_##suffix(float *out, const float *g, const float *restrict theta,        \
                                const float *restrict fs, const float *restrict ft, size_t n,   \
                                float lambda);                                                  \
    double sona_sum_squares_##suffix(const float *v, size_t n);                                 \
    uint32_t sona_max_magnitude_##suffix(const float *v, size_t n);                             \
    void sona_axpy_##suffix(float *restrict y, const float *restrict x, size_t n, float c);     \
    void sona_scale_##suffix(float *v, size_t n, float c);                                      \
    void sona_mix_rows_##suffix(float *rows, size_t stride, const float *p, uint32_t r, size_t n); \
    int sona_q8_encode_##suffix(const float *x, size_t n, void *out);                           \
    void sona_q8_decode_##suffix(const void *in, size_t n, float *out);                         \
    double sona_dot_f64_##suffix(const double *x, const double *y, size_t n);                   \
    double sona_dot_f32_f64_##suffix(const float *x, const float *y, size_t n);                 \
    void sona_axpy_f64_##suffix(double *restrict y, const double *restrict x, size_t n, double c); \
    void sona_axpy_f32_f64_##suffix(double *restrict y, const float *restrict x, size_t n, double c);

/* The sona_host_kernels fields of the loops above, for a variant's table. */
#define SONA_HOST_LOOPS_FIELDS(suffix)                                                          \
    .all_finite = sona_all_finite_##suffix, .fisher_ema = sona_fisher_ema_##suffix,             \
    .penalise = sona_penalise_##suffix, .sum_squares = sona_sum_squares_##suffix,               \
    .max_magnitude = sona_max_magnitude_##suffix, .mix_rows = sona_mix_rows_##suffix,           \
    .axpy = sona_axpy_##suffix, .scale = sona_scale_##suffix,                                   \
    .q8_encode = sona_q8_encode_##suffix, .q8_decode = sona_q8_decode_##suffix,                 \
    .dot_f64 = sona_dot_f64_##suffix, .dot_f32_f64 = sona_dot_f32_f64_##suffix,                 \
    .axpy_f64 = sona_axpy_f64_##suffix,                                                         \
    .axpy_f32_f64 = sona_axpy_f32_f64_##suffix

#endif
