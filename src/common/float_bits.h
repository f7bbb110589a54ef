/* SPDX-License-Identifier: MIT */
/* Float facts read from the bits, so that the loops using them vectorise without -ffast-math. */
#ifndef SONA_COMMON_FLOAT_BITS_H
#define SONA_COMMON_FLOAT_BITS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The largest |v[i]| as its IEEE bits (sign cleared): >= 0x7f800000 means NaN or Inf among them,
 * and bit patterns of non-negative floats order like the floats. */
static inline uint32_t sona_max_magnitude_bits(const float *v, size_t n)
{
    uint32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], sizeof bits);
        bits &= 0x7fffffffu;
        m = bits > m ? bits : m;
    }
    return m;
}

/* Whether every |v[i]| <= bound (bound >= 0; NaN is not within any bound): one integer max over
 * the magnitude bits, which vectorises. */
static inline int sona_all_within(const float *v, size_t n, float bound)
{
    uint32_t b;
    memcpy(&b, &bound, sizeof b);
    return sona_max_magnitude_bits(v, n) <= (b & 0x7fffffffu);
}

#endif
