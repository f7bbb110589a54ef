/* SPDX-License-Identifier: MIT */
#include "common/slotmap.h"

#include "common/idmap.h"

#include <stdlib.h>
#include <string.h>

static inline uint64_t key_of(const void *keys, size_t stride, uint32_t slot)
{
    uint64_t k;
    memcpy(&k, (const char *)keys + (size_t)slot * stride, sizeof k);
    return k;
}

void sona_slotmap_free(sona_slotmap *m)
{
    free(m->cells);
    *m = (sona_slotmap){0};
}

/* The cell holding id, or the free cell ending its probe run. */
static uint32_t find(const sona_slotmap *m, uint64_t id, const void *keys, size_t stride)
{
    uint32_t i = sona_id_hash(id) & m->mask;
    while (m->cells[i] != SONA_SLOTMAP_EMPTY && key_of(keys, stride, m->cells[i]) != id)
        i = (i + 1) & m->mask;
    return i;
}

uint32_t sona_slotmap_get(const sona_slotmap *m, uint64_t id, const void *keys, size_t stride)
{
    return m->cells ? m->cells[find(m, id, keys, stride)] : SONA_SLOTMAP_EMPTY;
}

static sona_status grow(sona_slotmap *m, const void *keys, size_t stride)
{
    const uint32_t old_cap = m->cells ? m->mask + 1 : 0;
    const uint32_t cap = old_cap ? old_cap * 2 : 64;
    uint32_t *cells = cap > old_cap ? malloc((size_t)cap * sizeof *cells) : NULL;
    if (!cells)
        return SONA_E_NOMEM;
    memset(cells, 0xff, (size_t)cap * sizeof *cells); /* SONA_SLOTMAP_EMPTY */
    sona_slotmap old = *m;
    *m = (sona_slotmap){.cells = cells, .mask = cap - 1, .count = old.count};
    for (uint32_t i = 0; i < old_cap; i++)
        if (old.cells[i] != SONA_SLOTMAP_EMPTY)
            m->cells[find(m, key_of(keys, stride, old.cells[i]), keys, stride)] = old.cells[i];
    free(old.cells);
    return SONA_OK;
}

sona_status sona_slotmap_put(sona_slotmap *m, uint64_t id, uint32_t slot, const void *keys,
                             size_t stride)
{
    if (m->cells) {
        const uint32_t i = find(m, id, keys, stride);
        if (m->cells[i] != SONA_SLOTMAP_EMPTY) {
            m->cells[i] = slot; /* replace: never allocates */
            return SONA_OK;
        }
    }
    if (!m->cells || (uint64_t)(m->count + 1) * 2 > (uint64_t)m->mask + 1) {
        sona_status st = grow(m, keys, stride);
        if (st != SONA_OK)
            return st;
    }
    m->cells[find(m, id, keys, stride)] = slot;
    m->count++;
    return SONA_OK;
}

int sona_slotmap_del(sona_slotmap *m, uint64_t id, const void *keys, size_t stride)
{
    if (!m->cells)
        return 0;
    const uint32_t i = find(m, id, keys, stride);
    if (m->cells[i] == SONA_SLOTMAP_EMPTY)
        return 0;
    /* Backward shift: move later cells of the probe run into the hole when their home allows. */
    uint32_t hole = i;
    for (uint32_t j = (i + 1) & m->mask; m->cells[j] != SONA_SLOTMAP_EMPTY; j = (j + 1) & m->mask) {
        if (sona_probe_may_fill(hole, j, sona_id_hash(key_of(keys, stride, m->cells[j])) & m->mask)) {
            m->cells[hole] = m->cells[j];
            hole = j;
        }
    }
    m->cells[hole] = SONA_SLOTMAP_EMPTY;
    m->count--;
    return 1;
}
