/* SPDX-License-Identifier: MIT */
#include "support/fill.h"

#include <stdlib.h>
#include <time.h>

uint64_t test_seed(void)
{
    const char *env = getenv("SONA_TEST_SEED");
    if (env && *env)
        return strtoull(env, NULL, 0);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000003u ^ (uint64_t)ts.tv_nsec;
}

void fill_uniform(sona_rng *r, float *v, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        v[i] = lo + (hi - lo) * sona_rng_uniform(r);
}

void fill_spread(sona_rng *r, float *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        v[i] = sona_rng_normal(r) * (sona_rng_uniform(r) < 0.5f ? 1.0f : 0.01f);
        if (sona_rng_uniform(r) < 0.02f)
            v[i] *= 300.0f;
    }
}

float *new_uniform(sona_rng *r, size_t n, float lo, float hi)
{
    float *v = malloc((n ? n : 1) * sizeof *v);
    if (v)
        fill_uniform(r, v, n, lo, hi);
    return v;
}
