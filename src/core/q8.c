#include "core/q8.h"

#include "core/vecmath.h"

#include <string.h>

int sona_q8_encode(const float *x, size_t n, void *out)
{
    return sona_host_loops_get()->q8_encode(x, n, out);
}

void sona_q8_decode(const void *in, size_t n, float *out) { sona_host_loops_get()->q8_decode(in, n, out); }

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
