/* SPDX-License-Identifier: MIT */
/* The host kernels of the CPU variant in use (the variants define them: src/cpu/ops_*.c), and
 * the small vector helpers the core builds on them. */
#include "dispatch/vecmath.h"

#include "common/float_bits.h"

#include "dispatch/dispatch.h"
#include "cpu/host_loops.h"

#include <math.h>

const sona_host_kernels *sona_host_kernels_get(void) { return &sona_cpu_backend()->host; }

sona_dot_fn sona_dot_kernel(void) { return sona_host_kernels_get()->dot; }

sona_dot_f16_fn sona_dot_f16_kernel(void) { return sona_host_kernels_get()->dot_f16; }

sona_widen_f16_fn sona_widen_f16_kernel(void) { return sona_host_kernels_get()->widen_f16; }

sona_dot_q8_fn sona_dot_q8_kernel(void) { return sona_host_kernels_get()->dot_q8; }

float sona_normalize(float *v, size_t n)
{
    double ss = 0.0;
    for (size_t i = 0; i < n; i++)
        ss += (double)v[i] * v[i];
    const double norm = sqrt(ss);
    if (norm > 0.0 && isfinite(norm)) {
        const float inv = (float)(1.0 / norm);
        for (size_t i = 0; i < n; i++)
            v[i] *= inv;
    }
    return (float)norm;
}

int sona_all_finite(const float *v, size_t n) { return sona_host_kernels_get()->all_finite(v, n); }

int sona_q8_encode(const float *x, size_t n, void *out) { return sona_host_kernels_get()->q8_encode(x, n, out); }

void sona_q8_decode(const void *q, size_t n, float *out) { sona_host_kernels_get()->q8_decode(q, n, out); }

int sona_all_within_fast(const float *v, size_t n, float bound)
{
    uint32_t b;
    memcpy(&b, &bound, sizeof b);
    return sona_host_kernels_get()->max_magnitude(v, n) <= (b & 0x7fffffffu); /* NaN's bits exceed any bound's */
}

/* ---- the cluster merge's double arithmetic (vecmath.h) ---------------------------------- */

/* Lanes of the dots of x with m rows over n8 elements (a multiple of 8), four rows a kernel
 * call; the last rows padded with copies of the first whose sums are dropped. */
#define DEFINE_DOTS_LANES(name, TX, TR, dot4_lanes)                                             \
    static void name(const sona_host_kernels *k, const TX *x, const TR *rows, size_t stride,    \
                     size_t m, size_t n8, double *acc)                                          \
    {                                                                                           \
        size_t j = 0;                                                                           \
        for (; j + 4 <= m; j += 4) {                                                            \
            const TR *y[4] = {rows + j * stride, rows + (j + 1) * stride,                       \
                              rows + (j + 2) * stride, rows + (j + 3) * stride};                \
            k->dot4_lanes(x, y, n8, acc + 8 * j);                                               \
        }                                                                                       \
        if (j < m) {                                                                            \
            const TR *y[4];                                                                     \
            double part[32] = {0};                                                              \
            for (size_t t = 0; t < 4; t++)                                                      \
                y[t] = rows + (j + t < m ? j + t : j) * stride;                                 \
            memcpy(part, acc + 8 * j, 8 * (m - j) * sizeof *part);                              \
            k->dot4_lanes(x, y, n8, part);                                                      \
            memcpy(acc + 8 * j, part, 8 * (m - j) * sizeof *part);                              \
        }                                                                                       \
    }

DEFINE_DOTS_LANES(dots_lanes_f64, double, double, dot4_lanes_f64)
DEFINE_DOTS_LANES(dots_lanes_f32_f64, float, float, dot4_lanes_f32_f64)

/* What the Gram products read of X's rows: the chunk itself, or (floats against rows of
 * doubles) widened into buf; each value exact, so the products are those of the widened rows. */
static const double *stage_f64(const double *x, double *buf, size_t n)
{
    (void)buf, (void)n;
    return x;
}
static const float *stage_f32(const float *x, float *buf, size_t n)
{
    (void)buf, (void)n;
    return x;
}
static const double *stage_widen(const float *x, double *buf, size_t n)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = x[i];
    return buf;
}
static double end_widen(double *acc, const float *x, const double *y, size_t m)
{
    double xb[8];
    for (size_t q = 0; q < m; q++)
        xb[q] = x[q];
    return host_dot_tail_f64(acc, xb, y, m);
}

/* out[a][b] = X_a . R_b: blocks of GRAM_ROWS x GRAM_COLS outputs whose lanes stay on the stack,
 * each walking n in chunks of GRAM_CHUNK, so that a chunk of the R rows is read from the L1
 * cache by every X row of the block. */
enum { GRAM_ROWS = 4, GRAM_COLS = 64, GRAM_CHUNK = 256 };
#define DEFINE_GRAM(name, TX, TR, KX, stage, lanes, end)                                        \
    void name(const TX *X, size_t xs, size_t m, const TR *R, size_t rs, size_t l, size_t n,     \
              double *out)                                                                      \
    {                                                                                           \
        const sona_host_kernels *k = sona_host_kernels_get();                                   \
        const size_t n8 = n & ~(size_t)7;                                                       \
        double acc[GRAM_ROWS * GRAM_COLS * 8];                                                  \
        KX buf[GRAM_CHUNK];                                                                     \
        for (size_t a0 = 0; a0 < m; a0 += GRAM_ROWS) {                                          \
            const size_t ma = m - a0 < GRAM_ROWS ? m - a0 : GRAM_ROWS;                          \
            for (size_t b0 = 0; b0 < l; b0 += GRAM_COLS) {                                      \
                const size_t lb = l - b0 < GRAM_COLS ? l - b0 : GRAM_COLS;                      \
                memset(acc, 0, ma * lb * 8 * sizeof *acc);                                      \
                for (size_t h0 = 0; h0 < n8; h0 += GRAM_CHUNK) {                                \
                    const size_t c = n8 - h0 < GRAM_CHUNK ? n8 - h0 : GRAM_CHUNK;               \
                    for (size_t a = 0; a < ma; a++)                                             \
                        lanes(k, stage(X + (a0 + a) * xs + h0, buf, c), R + b0 * rs + h0, rs,   \
                              lb, c, acc + a * lb * 8);                                         \
                }                                                                               \
                for (size_t a = 0; a < ma; a++)                                                 \
                    for (size_t b = 0; b < lb; b++)                                             \
                        out[(a0 + a) * l + b0 + b] =                                            \
                            end(acc + (a * lb + b) * 8, X + (a0 + a) * xs + n8,                 \
                                R + (b0 + b) * rs + n8, n - n8);                                \
            }                                                                                   \
        }                                                                                       \
    }

DEFINE_GRAM(sona_gram_f64, double, double, double, stage_f64, dots_lanes_f64, host_dot_tail_f64)
DEFINE_GRAM(sona_gram_f32_f64, float, float, float, stage_f32, dots_lanes_f32_f64, host_dot_tail_f32_f64)
DEFINE_GRAM(sona_gram_widen_f64, float, double, double, stage_widen, dots_lanes_f64, end_widen)

void sona_dots_f64(const double *x, const double *rows, size_t stride, size_t m, size_t n, double *out)
{
    sona_gram_f64(x, 0, 1, rows, stride, m, n, out);
}

#define DEFINE_AXPYS(name, T, axpy4, axpy)                                                      \
    void name(double *y, const T *rows, size_t stride, const double *c, size_t m, size_t n)     \
    {                                                                                           \
        const sona_host_kernels *k = sona_host_kernels_get();                                   \
        const T *x[4];                                                                          \
        double cx[4];                                                                           \
        size_t have = 0;                                                                        \
        for (size_t j = 0; j < m; j++) {                                                        \
            if (c[j] == 0.0)                                                                    \
                continue;                                                                       \
            x[have] = rows + j * stride;                                                        \
            cx[have] = c[j];                                                                    \
            if (++have == 4) {                                                                  \
                k->axpy4(y, x, cx, n);                                                          \
                have = 0;                                                                       \
            }                                                                                   \
        }                                                                                       \
        for (size_t t = 0; t < have; t++)                                                       \
            k->axpy(y, x[t], n, cx[t]);                                                         \
    }

DEFINE_AXPYS(sona_axpys_f64, double, axpy4_f64, axpy_f64)
DEFINE_AXPYS(sona_axpys_f32_f64, float, axpy4_f32_f64, axpy_f32_f64)
