/* SPDX-License-Identifier: MIT */
#include "core/memory/storage.h"

#include "common/error.h"
#include "common/float_bits.h"
#include "common/half.h"
#include "common/q8.h"
#include "dispatch/vecmath.h"

#include <string.h>

/* Magnitude bits of 65520: floats from there on round to Inf as halves. */
#define F16_OVERFLOW_BITS 0x477ff000u

int sona_storage_valid(sona_storage s)
{
    return s == SONA_STORAGE_F32 || s == SONA_STORAGE_F16 || s == SONA_STORAGE_Q8;
}

size_t sona_storage_bytes(sona_storage s, size_t n)
{
    switch (s) {
    case SONA_STORAGE_F16:
        return n * sizeof(uint16_t);
    case SONA_STORAGE_Q8:
        return sona_q8_bytes(n);
    case SONA_STORAGE_F32:
    default:
        return n * sizeof(float);
    }
}

int sona_storage_fits(sona_storage s, const float *x, size_t n)
{
    if (s == SONA_STORAGE_F16)
        return sona_max_magnitude_bits(x, n) < F16_OVERFLOW_BITS;
    return sona_all_finite(x, n);
}

int sona_storage_encode(sona_storage s, const float *x, size_t n, void *out)
{
    switch (s) {
    case SONA_STORAGE_Q8:
        return sona_q8_encode(x, n, out);
    case SONA_STORAGE_F16: {
        if (!sona_storage_fits(s, x, n))
            return 0;
        uint16_t *h = out;
        for (size_t i = 0; i < n; i++)
            h[i] = sona_f32_to_f16(x[i]);
        return 1;
    }
    case SONA_STORAGE_F32:
    default:
        memcpy(out, x, n * sizeof *x);
        return sona_all_finite(out, n);
    }
}

void sona_storage_decode(sona_storage s, const void *in, size_t n, float *out)
{
    switch (s) {
    case SONA_STORAGE_Q8:
        sona_q8_decode(in, n, out);
        break;
    case SONA_STORAGE_F16:
        sona_widen_f16_kernel()(in, out, n);
        break;
    case SONA_STORAGE_F32:
    default:
        memcpy(out, in, n * sizeof *out);
        break;
    }
}
