/* SPDX-License-Identifier: MIT */
/* Vectors kept in a sona_storage format (include/sona/common.h): how many bytes n values take,
 * and encoding / decoding, so a store picks its format with one value and no code of its own.
 * Encoded vectors need 4-byte alignment (F32 and the Q8 scales are read as floats, F16 as
 * 16-bit words). */
#ifndef SONA_CORE_MEMORY_STORAGE_H
#define SONA_CORE_MEMORY_STORAGE_H

#include "sona/common.h"

#include <stddef.h>

/* Whether s is one of the formats. */
int sona_storage_valid(sona_storage s);
/* Bytes of n values stored as s. */
size_t sona_storage_bytes(sona_storage s, size_t n);
/* Whether every value of x[n] is finite and within s's range (F16: magnitude below 65520, which
 * rounds to the largest half, 65504), i.e. whether sona_storage_encode would accept it. */
int sona_storage_fits(sona_storage s, const float *x, size_t n);
/* Encodes x[n] into out[sona_storage_bytes(s, n)]; 0 when sona_storage_fits would say no (out
 * is then undefined). The check rides along with the encoding (Q8: the block maxima; F32: the
 * copy, read while it is in cache). */
int sona_storage_encode(sona_storage s, const float *x, size_t n, void *out);
/* Decodes n values: exact for F32 and F16 (every half is a float), q * scale for Q8. */
void sona_storage_decode(sona_storage s, const void *in, size_t n, float *out);

#endif /* SONA_CORE_MEMORY_STORAGE_H */
