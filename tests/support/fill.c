/* SPDX-License-Identifier: MIT */
#include "support/fill.h"

#include <stdlib.h>

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
