/* SPDX-License-Identifier: MIT */
#include "dispatch/vecmath.h"

#include "common/half.h"
#include "common/q8.h"

#include "cpu/vec.h"
#include "dispatch/dispatch.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

float sona_dot_scalar(const float *a, const float *b, size_t n)
{
    float acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

float sona_dot_f16_scalar(const float *a, const uint16_t *b, size_t n)
{
    float acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * sona_f16_to_f32(b[i + j]);
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        s += a[i] * sona_f16_to_f32(b[i]);
    return s;
}

void sona_widen_f16_scalar(const uint16_t *h, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = sona_f16_to_f32(h[i]);
}

SONA_HOST_LOOPS(scalar)

int sona_q8_encode_scalar(const float *x, size_t n, void *out) { return host_q8_encode(x, n, out); }

/* The host loops of one variant file, in sona_host_loops order. */
#define HOST_LOOPS_TABLE(sfx)                                                                     \
    ((sona_host_loops){sona_all_finite_##sfx, sona_fisher_ema_##sfx, sona_penalise_##sfx,        \
                       sona_sum_squares_##sfx, sona_q8_encode_##sfx, sona_q8_decode_##sfx})

static sona_host_loops loops_chosen;
static sona_dot_fn dot_chosen = sona_dot_scalar;
static sona_widen_f16_fn widen_chosen = sona_widen_f16_scalar;
static sona_dot_f16_fn dot_f16_chosen = sona_dot_f16_scalar;
static sona_dot_q8_fn dot_q8_chosen = sona_dot_q8_scalar;
static pthread_once_t dot_once = PTHREAD_ONCE_INIT;

static void dot_init(void)
{
    const char *variant = sona_cpu_backend()->name;
    (void)variant;
    loops_chosen = HOST_LOOPS_TABLE(scalar);
#if defined(__x86_64__) || defined(__i386__)
    /* AVX-512F includes the F16C conversions; on an AVX2 host the probe says whether F16C is
     * there. */
    if (!strcmp(variant, "avx512")) {
        dot_chosen = sona_dot_avx512;
        dot_f16_chosen = sona_dot_f16_avx512;
        widen_chosen = sona_widen_f16_avx512;
        dot_q8_chosen = sona_dot_q8_avx512;
        loops_chosen = HOST_LOOPS_TABLE(avx512);
    } else if (!strcmp(variant, "avx2")) {
        dot_chosen = sona_dot_avx2;
        dot_q8_chosen = sona_dot_q8_avx2;
        loops_chosen = HOST_LOOPS_TABLE(avx2);
        if (sona_probe()->features & SONA_CPU_F16C) {
            dot_f16_chosen = sona_dot_f16_avx2;
            widen_chosen = sona_widen_f16_avx2;
        }
    }
#endif
}

sona_dot_fn sona_dot_kernel(void)
{
    pthread_once(&dot_once, dot_init);
    return dot_chosen;
}

sona_dot_f16_fn sona_dot_f16_kernel(void)
{
    pthread_once(&dot_once, dot_init);
    return dot_f16_chosen;
}

const sona_host_loops *sona_host_loops_get(void)
{
    pthread_once(&dot_once, dot_init);
    return &loops_chosen;
}

sona_dot_q8_fn sona_dot_q8_kernel(void)
{
    pthread_once(&dot_once, dot_init);
    return dot_q8_chosen;
}

sona_widen_f16_fn sona_widen_f16_kernel(void)
{
    pthread_once(&dot_once, dot_init);
    return widen_chosen;
}

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

int sona_all_finite(const float *v, size_t n) { return sona_host_loops_get()->all_finite(v, n); }

int sona_q8_encode(const float *x, size_t n, void *out) { return sona_host_loops_get()->q8_encode(x, n, out); }

void sona_q8_decode(const void *in, size_t n, float *out) { sona_host_loops_get()->q8_decode(in, n, out); }
