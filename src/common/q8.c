/* SPDX-License-Identifier: MIT */
#include "common/q8.h"

#include "common/float_bits.h"

#include <math.h>
#include <string.h>

/* The largest magnitude of x[lo..hi) (finite values). */
static float amax_of(const float *x, size_t lo, size_t hi)
{
    const uint32_t bits = sona_max_magnitude_bits(x + lo, hi - lo);
    float amax;
    memcpy(&amax, &bits, sizeof amax);
    return amax;
}

float sona_dot_q8_scalar(const float *a, const void *in, size_t n)
{
    const unsigned char *scales = in;
    const int8_t *q = (const int8_t *)(scales + sona_q8_blocks(n) * sizeof(float));
    float s = 0.0f;
    for (size_t b = 0; b * SONA_Q8_BLOCK < n; b++) {
        float scale;
        memcpy(&scale, scales + b * sizeof scale, sizeof scale);
        const size_t lo = b * SONA_Q8_BLOCK, hi = lo + SONA_Q8_BLOCK < n ? lo + SONA_Q8_BLOCK : n;
        float acc[4] = {0};
        size_t i = lo;
        for (; i + 4 <= hi; i += 4)
            for (int j = 0; j < 4; j++)
                acc[j] += a[i + j] * (float)q[i + j];
        float blk = (acc[0] + acc[2]) + (acc[1] + acc[3]);
        for (; i < hi; i++)
            blk += a[i] * (float)q[i];
        s += blk * scale;
    }
    return s;
}

void sona_q8_encode_pow2(const float *x, size_t n, void *out, sona_rng *dither)
{
    unsigned char *scales = out;
    int8_t *q = (int8_t *)(scales + sona_q8_blocks(n) * sizeof(float));
    for (size_t b = 0; b * SONA_Q8_BLOCK < n; b++) {
        const size_t lo = b * SONA_Q8_BLOCK, hi = lo + SONA_Q8_BLOCK < n ? lo + SONA_Q8_BLOCK : n;
        const float amax = amax_of(x, lo, hi);
        int e = 0;
        if (amax > 0.0f) {
            int k;
            frexpf(amax, &k); /* 2^(k-1) <= amax < 2^k, so 127 2^(k-8) < amax <= 127 2^(k-6) */
            e = ldexpf(127.0f, k - 7) >= amax ? k - 7 : k - 6;
            if (e < -149)
                e = -149; /* the smallest subnormal step */
        }
        const float scale = amax > 0.0f ? ldexpf(1.0f, e) : 0.0f;
        memcpy(scales + b * sizeof scale, &scale, sizeof scale);
        for (size_t i = lo; i < hi; i++) {
            const double v = amax > 0.0f ? (double)x[i] / scale : 0.0; /* exact: a power of two */
            double c = dither ? floor(v + sona_rng_uniform_d(dither)) : nearbyint(v);
            c = c > 127.0 ? 127.0 : c < -127.0 ? -127.0 : c;
            q[i] = (int8_t)c;
        }
    }
}
