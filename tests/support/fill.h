/* SPDX-License-Identifier: MIT */
/* Seeded random inputs for the tests and the benchmarks. Every value comes from the caller's
 * sona_rng (common/rng.h gives the same stream on every platform), so the seed a test prints
 * replays its inputs exactly. */
#ifndef SONA_TEST_FILL_H
#define SONA_TEST_FILL_H

#include "common/rng.h"

#include <stddef.h>
#include <stdint.h>

/* The seed of this run: SONA_TEST_SEED when set, else from the clock. Callers print it, so a
 * failing run can be replayed. */
uint64_t test_seed(void);

/* v[0..n) uniform in [lo, hi). */
void fill_uniform(sona_rng *r, float *v, size_t n, float lo, float hi);

/* v[0..n) of widely spread magnitudes: normal values, half of them 100 times smaller and 2% of
 * them 300 times larger, the range a quantised store must survive. */
void fill_spread(sona_rng *r, float *v, size_t n);

/* A new array of n values uniform in [lo, hi) (at least one element, so n = 0 still gives a
 * pointer to free); NULL when out of memory. */
float *new_uniform(sona_rng *r, size_t n, float lo, float hi);

#endif
