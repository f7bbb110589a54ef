/* SPDX-License-Identifier: MIT */
#include "common/idmap.h"

#include <stdlib.h>

void sona_idmap_free(sona_idmap *m)
{
    free(m->keys);
    free(m->vals);
    *m = (sona_idmap){0};
}

uint32_t sona_idmap_get(const sona_idmap *m, uint64_t key)
{
    if (!m->vals)
        return SONA_IDMAP_EMPTY;
    for (uint32_t i = sona_id_hash(key) & m->mask;; i = (i + 1) & m->mask) {
        if (m->vals[i] == SONA_IDMAP_EMPTY)
            return SONA_IDMAP_EMPTY;
        if (m->keys[i] == key)
            return m->vals[i];
    }
}

static void place(sona_idmap *m, uint64_t key, uint32_t val)
{
    uint32_t i = sona_id_hash(key) & m->mask;
    while (m->vals[i] != SONA_IDMAP_EMPTY && m->keys[i] != key)
        i = (i + 1) & m->mask;
    if (m->vals[i] == SONA_IDMAP_EMPTY)
        m->count++;
    m->keys[i] = key;
    m->vals[i] = val;
}

static sona_status grow(sona_idmap *m)
{
    const uint32_t old_cap = m->vals ? m->mask + 1 : 0;
    const uint32_t cap = old_cap ? old_cap * 2 : 64;
    uint64_t *keys = malloc((size_t)cap * sizeof *keys);
    uint32_t *vals = malloc((size_t)cap * sizeof *vals);
    if (!keys || !vals || cap < old_cap) {
        free(keys);
        free(vals);
        return SONA_E_NOMEM;
    }
    for (uint32_t i = 0; i < cap; i++)
        vals[i] = SONA_IDMAP_EMPTY;
    sona_idmap old = *m;
    *m = (sona_idmap){.keys = keys, .vals = vals, .mask = cap - 1, .count = 0};
    for (uint32_t i = 0; i < old_cap; i++)
        if (old.vals[i] != SONA_IDMAP_EMPTY)
            place(m, old.keys[i], old.vals[i]);
    free(old.keys);
    free(old.vals);
    return SONA_OK;
}

sona_status sona_idmap_put(sona_idmap *m, uint64_t key, uint32_t val)
{
    /* Replacing never allocates (callers rely on it to move entries); a new key keeps the load
     * at most one half. */
    if (sona_idmap_get(m, key) == SONA_IDMAP_EMPTY &&
        (!m->vals || (uint64_t)(m->count + 1) * 2 > (uint64_t)m->mask + 1)) {
        sona_status st = grow(m);
        if (st != SONA_OK)
            return st;
    }
    place(m, key, val);
    return SONA_OK;
}

int sona_idmap_del(sona_idmap *m, uint64_t key)
{
    if (!m->vals)
        return 0;
    uint32_t i = sona_id_hash(key) & m->mask;
    while (m->vals[i] != SONA_IDMAP_EMPTY && m->keys[i] != key)
        i = (i + 1) & m->mask;
    if (m->vals[i] == SONA_IDMAP_EMPTY)
        return 0;
    /* Backward shift: move later cells of the probe run into the hole when their home allows. */
    uint32_t hole = i;
    for (uint32_t j = (i + 1) & m->mask; m->vals[j] != SONA_IDMAP_EMPTY; j = (j + 1) & m->mask) {
        if (sona_probe_may_fill(hole, j, sona_id_hash(m->keys[j]) & m->mask)) {
            m->keys[hole] = m->keys[j];
            m->vals[hole] = m->vals[j];
            hole = j;
        }
    }
    m->vals[hole] = SONA_IDMAP_EMPTY;
    m->count--;
    return 1;
}
