/* SPDX-License-Identifier: MIT */
/* IEEE 754 binary16 ("half") conversion, written out so it is exact and portable: rounding to
 * nearest, ties to even, like F16C's VCVTPS2PH with imm 0 (subnormals, Inf and NaN kept). */
#ifndef SONA_COMMON_HALF_H
#define SONA_COMMON_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint16_t sona_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t a = x & 0x7fffffffu;
    if (a >= 0x7f800000u) /* Inf, NaN (quietened) */
        return (uint16_t)(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (a >= 0x477ff000u) /* >= 65520 rounds past the largest half, 65504 */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) { /* below 2^-14: a half subnormal or zero */
        if (a < 0x33000000u) /* <= 2^-25 (the tie rounds to even: 0) */
            return sign;
        const uint32_t shift = 126u - (a >> 23); /* 14..24 */
        const uint32_t m = (a & 0x7fffffu) | 0x800000u;
        uint32_t q = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u), tie = 1u << (shift - 1u);
        if (rem > tie || (rem == tie && (q & 1u)))
            q++; /* may carry into the smallest normal, whose encoding is the next one */
        return (uint16_t)(sign | q);
    }
    uint32_t h = (a - 0x38000000u) >> 13; /* exponent rebiased 127 -> 15 */
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++; /* a mantissa carry moves into the exponent, as it should */
    return (uint16_t)(sign | h);
}

static inline float sona_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t x;
    if (e == 0x1f)
        x = sign | 0x7f800000u | (m << 13);
    else if (e)
        x = sign | ((e + 112u) << 23) | (m << 13);
    else if (m == 0)
        x = sign;
    else {
        const float f = (float)m * 0x1p-24f; /* subnormal: exact in float */
        return sign ? -f : f;
    }
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

#endif /* SONA_COMMON_HALF_H */
