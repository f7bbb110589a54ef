/* SPDX-License-Identifier: MIT */
/* Seeded random numbers: the same seed gives the same stream on every platform. */
#ifndef SONA_COMMON_RNG_H
#define SONA_COMMON_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct sona_rng {
    uint64_t s[4]; /* xoshiro256** state */
} sona_rng;

static inline uint64_t sona_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Seeds from (seed, stream): independent streams for, e.g., each adapter of a set. */
static inline void sona_rng_seed(sona_rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * 0xd1b54a32d192ed03ull);
    for (int i = 0; i < 4; i++)
        r->s[i] = sona_splitmix64(&x);
}

static inline uint64_t sona_rng_next(sona_rng *r)
{
    uint64_t *s = r->s;
    const uint64_t result = ((s[1] * 5) << 7 | (s[1] * 5) >> 57) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return result;
}

/* Uniform in [0, 1) with 24 random bits (exact in float). */
static inline float sona_rng_uniform(sona_rng *r)
{
    return (float)(sona_rng_next(r) >> 40) * (1.0f / 16777216.0f);
}

/* Uniform in [0, 1) with 53 random bits. */
static inline double sona_rng_uniform_d(sona_rng *r)
{
    return (double)(sona_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform integer in [0, n), n > 0 (Lemire's multiply-shift; bias below 2^-32 for small n). */
static inline uint32_t sona_rng_below(sona_rng *r, uint32_t n)
{
    return (uint32_t)(((sona_rng_next(r) >> 32) * (uint64_t)n) >> 32);
}

/* Standard normal (Box-Muller, one value per call). */
static inline float sona_rng_normal(sona_rng *r)
{
    double u1 = sona_rng_uniform_d(r), u2 = sona_rng_uniform_d(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

#endif /* SONA_COMMON_RNG_H */
