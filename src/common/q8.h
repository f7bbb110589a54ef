/* SPDX-License-Identifier: MIT */
/* Q8: vectors stored as signed 8-bit integers in blocks of 32 values, each block with its own f32
 * scale (its largest magnitude / 127), so one large value costs precision only in its block
 * (activations often have a few outlier channels). About 1.125 bytes per value against 4 for
 * f32: the store for queued trajectory steps and for pattern vectors in the index.
 *
 * Layout of a vector of n values: float scale[ceil(n / 32)], then int8 q[n]; value i decodes to
 * q[i] * scale[i / 32], within scale / 2 of the encoded value. Unaligned storage is fine. */
#ifndef SONA_COMMON_Q8_H
#define SONA_COMMON_Q8_H

#include <stddef.h>
#include <stdint.h>

#include "common/rng.h"

#define SONA_Q8_BLOCK 32u

static inline size_t sona_q8_blocks(size_t n) { return (n + SONA_Q8_BLOCK - 1) / SONA_Q8_BLOCK; }
/* Bytes of an encoded vector of n values. */
static inline size_t sona_q8_bytes(size_t n) { return sona_q8_blocks(n) * sizeof(float) + n; }

/* The encoder and decoder every CPU variant builds (cpu/host_loops.h, the same bytes at every
 * level) are reached through dispatch/vecmath.h: sona_q8_encode, sona_q8_decode. */
/* Plain C a (f32) . q (Q8), accumulated in f32 per block (the reference of the SIMD variants). */
float sona_dot_q8_scalar(const float *a, const void *q, size_t n);

/* Encodes x[n] (finite) in the same layout, but each block's scale is the smallest power of two
 * with the block's largest magnitude at most 127 scales (its largest code is 64..127: up to one
 * bit coarser than sona_q8_encode). Decoding is exact (code times a power of two), the grids of
 * neighbouring scales nest, so encoding decoded values gives the same values bit for bit, and a
 * vector that moves by little keeps its grid: the form for vectors that are decoded, updated and
 * stored again (pattern centroids absorbing clusters). dither NULL rounds to nearest; otherwise
 * each code is floor(x / scale + u) with u uniform in [0, 1) from dither (stochastic rounding:
 * the decoded value is x on average, so repeated small updates are neither lost nor biased). */
void sona_q8_encode_pow2(const float *x, size_t n, void *out, sona_rng *dither);

#endif
