/* SPDX-License-Identifier: MIT */
/* The host kernels of the CPU variant in use (the variants define them: src/cpu/ops_*.c), and
 * the small vector helpers the core builds on them. */
#include "dispatch/vecmath.h"

#include "common/float_bits.h"

#include "dispatch/dispatch.h"

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
