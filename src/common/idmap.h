/* SPDX-License-Identifier: MIT */
/* A hash map from 64-bit ids to 32-bit slots (open addressing, linear probing, backward-shift
 * deletion: no tombstones, so lookups stay short however many ids come and go). */
#ifndef SONA_COMMON_IDMAP_H
#define SONA_COMMON_IDMAP_H

#include "sona/common.h"

typedef struct sona_idmap {
    uint64_t *keys;
    uint32_t *vals; /* SONA_IDMAP_EMPTY marks a free cell */
    uint32_t mask;  /* capacity - 1 (capacity is a power of two, 0 before the first put) */
    uint32_t count;
} sona_idmap;

#define SONA_IDMAP_EMPTY UINT32_MAX

/* The hash of an id (a 64-bit finaliser: sequential ids spread over the table). */
static inline uint32_t sona_id_hash(uint64_t key)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    key *= 0xc4ceb9fe1a85ec53ull;
    key ^= key >> 33;
    return (uint32_t)key;
}

/* Backward-shift deletion in a linear-probing table: may the entry at cell j, whose home cell
 * is home, move into the hole? Yes unless home lies in the cyclic range (hole, j]. */
static inline int sona_probe_may_fill(uint32_t hole, uint32_t j, uint32_t home)
{
    return hole <= j ? !(home > hole && home <= j) : !(home > hole || home <= j);
}

void sona_idmap_free(sona_idmap *m);
/* The slot of key, or SONA_IDMAP_EMPTY when absent. */
uint32_t sona_idmap_get(const sona_idmap *m, uint64_t key);
/* Inserts or replaces; val must not be SONA_IDMAP_EMPTY. Replacing an existing key never
 * allocates or fails; SONA_E_NOMEM (new key only) leaves m unchanged. */
sona_status sona_idmap_put(sona_idmap *m, uint64_t key, uint32_t val);
/* Removes key; returns whether it was there. */
int sona_idmap_del(sona_idmap *m, uint64_t key);

#endif
