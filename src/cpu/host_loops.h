/* Element-wise host loops of the core (finite check, EWC++ Fisher EMA and penalty, sum of
 * squares) written once in plain C and compiled by each variant file with its own ISA flags
 * (vecmath.c: baseline, vec_avx2.c, vec_avx512.c), so the compiler vectorises them for that
 * level. ISO C mode keeps floating-point contraction off: every level gives bit-identical
 * results. SONA_HOST_LOOPS(suffix) defines sona_<loop>_<suffix> for the four loops. */
#ifndef SONA_CPU_HOST_LOOPS_H
#define SONA_CPU_HOST_LOOPS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

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
    double sona_sum_squares_##suffix(const float *v, size_t n) { return host_sum_squares(v, n); }

#define SONA_HOST_LOOPS_DECLARE(suffix)                                                          \
    int sona_all_finite_##suffix(const float *v, size_t n);                                     \
    void sona_fisher_ema_##suffix(float *restrict f, const float *restrict g, size_t n, float d); \
    void sona_penalise_##suffix(float *out, const float *g, const float *restrict theta,        \
                                const float *restrict fs, const float *restrict ft, size_t n,   \
                                float lambda);                                                  \
    double sona_sum_squares_##suffix(const float *v, size_t n);

#endif
