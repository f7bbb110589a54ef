/* SPDX-License-Identifier: MIT */
#include "core/adapt/snapshot.h"

#include "core/adapt/lora_internal.h"

#include <stdlib.h>

sona_snapshot *sona_snapshot_acquire(sona_snapshot_slot *s)
{
    for (;;) {
        sona_snapshot *snap = atomic_load(&s->current);
        if (!snap)
            return NULL;
        atomic_fetch_add(&snap->readers, 1);
        if (atomic_load(&s->current) == snap)
            return snap;
        atomic_fetch_sub(&snap->readers, 1); /* swapped meanwhile: pin the new one */
    }
}

void sona_snapshot_release(sona_snapshot *snap)
{
    if (snap)
        atomic_fetch_sub(&snap->readers, 1);
}

static sona_snapshot *free_snapshot(sona_snapshot_slot *s, const sona_lora_config *c)
{
    sona_snapshot *cur = atomic_load(&s->current);
    for (uint32_t i = 0; i < s->pool_len; i++) {
        sona_snapshot *p = s->pool[i];
        if (p != cur && atomic_load(&p->readers) == 0)
            return p;
    }
    if (s->pool_len == s->pool_cap) {
        uint32_t cap = s->pool_cap ? 2 * s->pool_cap : 4;
        sona_snapshot **pool = realloc(s->pool, cap * sizeof *pool);
        if (!pool)
            return NULL;
        s->pool = pool;
        s->pool_cap = cap;
    }
    const size_t floats = (size_t)c->rank * c->hidden * c->count;
    sona_snapshot *p = calloc(1, sizeof *p);
    if (!p || !(p->data = malloc((2 * floats + c->count) * sizeof(float)))) {
        free(p);
        return NULL;
    }
    p->w = (sona_lora_weights){.hidden = c->hidden, .rank = c->rank, .num_adapters = c->count,
                               .A = p->data, .Bt = p->data + floats, .scale = p->data + 2 * floats};
    s->pool[s->pool_len++] = p;
    return p;
}

sona_status sona_snapshot_publish(sona_snapshot_slot *s, const sona_lora *lora)
{
    sona_snapshot *p = free_snapshot(s, sona_lora_get_config(lora));
    if (!p)
        return SONA_E_NOMEM;
    sona_status st = sona_lora_export(lora, (float *)p->w.A, (float *)p->w.Bt, (float *)p->w.scale);
    if (st != SONA_OK)
        return st;
    p->version = ++s->version;
    atomic_store(&s->current, p);
    return SONA_OK;
}

void sona_snapshot_retract(sona_snapshot_slot *s) { atomic_store(&s->current, NULL); }

void sona_snapshot_slot_free(sona_snapshot_slot *s)
{
    for (uint32_t i = 0; i < s->pool_len; i++) {
        free(s->pool[i]->data);
        free(s->pool[i]);
    }
    free(s->pool);
    s->pool = NULL;
    s->pool_len = s->pool_cap = 0;
    atomic_store(&s->current, NULL);
}
