/* SPDX-License-Identifier: MIT */
/* A hash map from 64-bit ids to 32-bit slots for owners that already keep each slot's id in an
 * array (of ids, or of records with the id at the same offset): a cell holds only the slot, and
 * keys are read from the owner's array, so a cell is 4 bytes where sona_idmap's is 12. Open
 * addressing, linear probing, backward-shift deletion, load at most one half.
 *
 * Every call takes the owner's array as keys (the id of slot s is the uint64_t at
 * keys + s * stride); the map must only hold slots whose id there is current. */
#ifndef SONA_COMMON_SLOTMAP_H
#define SONA_COMMON_SLOTMAP_H

#include "sona/common.h"

typedef struct sona_slotmap {
    uint32_t *cells; /* SONA_SLOTMAP_EMPTY marks a free cell */
    uint32_t mask;   /* capacity - 1 (a power of two; 0 before the first put) */
    uint32_t count;
} sona_slotmap;

#define SONA_SLOTMAP_EMPTY UINT32_MAX

void sona_slotmap_free(sona_slotmap *m);
/* The slot of id, or SONA_SLOTMAP_EMPTY when absent. */
uint32_t sona_slotmap_get(const sona_slotmap *m, uint64_t id, const void *keys, size_t stride);
/* Maps id (the id of slot already, in keys) to slot, replacing the slot it had: replacing never
 * allocates or fails; SONA_E_NOMEM (new id only) leaves m unchanged. */
sona_status sona_slotmap_put(sona_slotmap *m, uint64_t id, uint32_t slot, const void *keys,
                             size_t stride);
/* Removes id (its slot's id still in keys); returns whether it was there. */
int sona_slotmap_del(sona_slotmap *m, uint64_t id, const void *keys, size_t stride);

#endif
