/* SPDX-License-Identifier: MIT */
/* The trajectory buffer: Dmitry Vyukov's bounded MPMC queue. Each cell carries a sequence
 * number that says whose turn it is: seq == 2 pos means free for the producer at position pos,
 * seq == 2 pos + 1 means filled for the consumer at pos, and the consumer hands it on to the
 * producer of the next lap with seq = 2 (pos + capacity). Doubling keeps "filled at pos" apart
 * from "free at pos + 1" when the capacity is 1 (with seq = pos + 1 for both, a second record
 * would overwrite the first). Positions are 64-bit and never wrap in practice, so any capacity
 * works (index = pos % capacity). */
#include "sona/trajectory_buffer.h"

#include "common/error.h"
#include "core/memory/trajectory_internal.h"

#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_LINE 64

typedef struct cell {
    _Atomic uint64_t seq;
    sona_trajectory *item; /* published by the release store of seq */
} cell;

struct sona_trajectory_buffer {
    sona_trajectory_buffer_config cfg;
    cell *cells;
    uint64_t capacity;
    /* Producers and consumers each own a cache line; the counters a third. */
    alignas(CACHE_LINE) _Atomic uint64_t head; /* next position to fill */
    alignas(CACHE_LINE) _Atomic uint64_t tail; /* next position to take */
    alignas(CACHE_LINE) _Atomic uint64_t recorded;
    _Atomic uint64_t drained, dropped;
    _Atomic uint64_t retries; /* claims lost to another thread (touched only then) */
};

void sona_trajectory_buffer_config_default(sona_trajectory_buffer_config *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof *cfg);
    cfg->capacity = 10000;
    cfg->policy = SONA_FULL_DROP_NEWEST;
}

sona_status sona_trajectory_buffer_create(const sona_trajectory_buffer_config *cfg,
                                          sona_trajectory_buffer **out)
{
    static const char fn[] = "sona_trajectory_buffer_create";
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "%s: out is NULL", fn);
    *out = NULL;
    if (!cfg)
        return sona_fail(NULL, SONA_E_NULL, "%s: cfg is NULL", fn);
    if (cfg->capacity == 0)
        return sona_fail(NULL, SONA_E_INVALID, "%s: capacity is 0", fn);
    if (cfg->policy != SONA_FULL_DROP_NEWEST && cfg->policy != SONA_FULL_OVERWRITE_OLDEST)
        return sona_fail(NULL, SONA_E_INVALID, "%s: unknown full-buffer policy %d", fn, (int)cfg->policy);
    const size_t bytes = (sizeof(sona_trajectory_buffer) + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
    sona_trajectory_buffer *b = aligned_alloc(CACHE_LINE, bytes);
    cell *cells = malloc((size_t)cfg->capacity * sizeof *cells);
    if (!b || !cells) {
        free(b);
        free(cells);
        return sona_fail(NULL, SONA_E_NOMEM, "%s: out of memory for %u cells", fn, cfg->capacity);
    }
    memset(b, 0, bytes);
    b->cfg = *cfg;
    b->cells = cells;
    b->capacity = cfg->capacity;
    for (uint64_t i = 0; i < b->capacity; i++) {
        atomic_init(&cells[i].seq, 2 * i);
        cells[i].item = NULL;
    }
    atomic_init(&b->head, 0);
    atomic_init(&b->tail, 0);
    atomic_init(&b->recorded, 0);
    atomic_init(&b->drained, 0);
    atomic_init(&b->dropped, 0);
    atomic_init(&b->retries, 0);
    *out = b;
    return SONA_OK;
}

/* Takes the oldest item, or NULL when the ring is (or looks) empty. */
static sona_trajectory *try_pop(sona_trajectory_buffer *b)
{
    uint64_t pos = atomic_load_explicit(&b->tail, memory_order_relaxed);
    for (;;) {
        cell *c = &b->cells[pos % b->capacity];
        const uint64_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        const int64_t diff = (int64_t)(seq - (2 * pos + 1));
        if (diff == 0) {
            if (atomic_compare_exchange_weak_explicit(&b->tail, &pos, pos + 1,
                                                      memory_order_relaxed, memory_order_relaxed)) {
                sona_trajectory *t = c->item;
                atomic_store_explicit(&c->seq, 2 * (pos + b->capacity), memory_order_release);
                return t;
            }
            /* another consumer took pos; the failed CAS reloaded pos */
            atomic_fetch_add_explicit(&b->retries, 1, memory_order_relaxed);
        } else if (diff < 0) {
            return NULL;
        } else {
            atomic_fetch_add_explicit(&b->retries, 1, memory_order_relaxed);
            pos = atomic_load_explicit(&b->tail, memory_order_relaxed);
        }
    }
}

/* Appends t; 0 when the ring is (or looks) full. counted (may be NULL) gets 1 added once the
 * position is claimed, before t is published. */
static int try_push(sona_trajectory_buffer *b, sona_trajectory *t, atomic_uint_fast64_t *counted)
{
    uint64_t pos = atomic_load_explicit(&b->head, memory_order_relaxed);
    for (;;) {
        cell *c = &b->cells[pos % b->capacity];
        const uint64_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        const int64_t diff = (int64_t)(seq - 2 * pos);
        if (diff == 0) {
            if (atomic_compare_exchange_weak_explicit(&b->head, &pos, pos + 1,
                                                      memory_order_relaxed, memory_order_relaxed)) {
                if (counted) /* ordered before the publish by its release store */
                    atomic_fetch_add_explicit(counted, 1, memory_order_relaxed);
                c->item = t;
                atomic_store_explicit(&c->seq, 2 * pos + 1, memory_order_release);
                return 1;
            }
            atomic_fetch_add_explicit(&b->retries, 1, memory_order_relaxed);
        } else if (diff < 0) {
            return 0;
        } else {
            atomic_fetch_add_explicit(&b->retries, 1, memory_order_relaxed);
            pos = atomic_load_explicit(&b->head, memory_order_relaxed);
        }
    }
}

void sona_trajectory_buffer_destroy(sona_trajectory_buffer *b)
{
    if (!b)
        return;
    sona_trajectory *t;
    while ((t = try_pop(b)))
        sona_trajectory_destroy(t);
    free(b->cells);
    free(b);
}

const sona_trajectory_buffer_config *sona_trajectory_buffer_get_config(const sona_trajectory_buffer *b)
{
    return b ? &b->cfg : NULL;
}

static sona_status record(sona_trajectory_buffer *b, sona_trajectory *t, atomic_uint_fast64_t *counted)
{
    static const char fn[] = "sona_trajectory_buffer_record";
    if (!b || !t)
        return sona_fail(NULL, SONA_E_NULL, "%s: buffer and trajectory are required", fn);
    if (!sona_trajectory_ended(t))
        return sona_fail(NULL, SONA_E_STATE, "%s: trajectory %llu has not ended", fn,
                         (unsigned long long)sona_trajectory_id(t));
    for (unsigned spins = 0;; spins++) {
        if (try_push(b, t, counted)) {
            atomic_fetch_add_explicit(&b->recorded, 1, memory_order_relaxed);
            return SONA_OK;
        }
        if (b->cfg.policy == SONA_FULL_DROP_NEWEST) {
            atomic_fetch_add_explicit(&b->dropped, 1, memory_order_relaxed);
            /* A fixed message: no formatting on this routine path. */
            return sona_fail(NULL, SONA_E_FULL, "%s", "sona_trajectory_buffer_record: the buffer is full");
        }
        sona_trajectory *oldest = try_pop(b);
        if (oldest) {
            sona_trajectory_destroy(oldest);
            atomic_fetch_add_explicit(&b->dropped, 1, memory_order_relaxed);
        } else if (spins > 64) {
            /* Full to producers and empty to consumers at once: another thread is between
             * its claim and its publish. Let it run. */
            sched_yield();
        }
    }
}

sona_status sona_trajectory_buffer_record(sona_trajectory_buffer *b, sona_trajectory *t)
{
    return record(b, t, NULL);
}

sona_status sona_trajectory_buffer_record_counted(sona_trajectory_buffer *b, sona_trajectory *t,
                                                  atomic_uint_fast64_t *counted)
{
    return record(b, t, counted);
}

sona_status sona_trajectory_buffer_drain(sona_trajectory_buffer *b, sona_trajectory **out,
                                         uint32_t max, uint32_t *taken)
{
    if (taken)
        *taken = 0;
    if (!b || !taken || (!out && max > 0))
        return sona_fail(NULL, SONA_E_NULL, "%s: buffer, out and taken are required", __func__);
    uint32_t n = 0;
    while (n < max) {
        sona_trajectory *t = try_pop(b);
        if (!t)
            break;
        out[n++] = t;
    }
    if (n)
        atomic_fetch_add_explicit(&b->drained, n, memory_order_relaxed);
    *taken = n;
    return SONA_OK;
}

uint32_t sona_trajectory_buffer_len(const sona_trajectory_buffer *cb)
{
    if (!cb)
        return 0;
    sona_trajectory_buffer *b = (sona_trajectory_buffer *)cb; /* atomics are read only */
    const uint64_t tail = atomic_load_explicit(&b->tail, memory_order_acquire);
    const uint64_t head = atomic_load_explicit(&b->head, memory_order_acquire);
    if (head <= tail)
        return 0;
    return head - tail > b->capacity ? (uint32_t)b->capacity : (uint32_t)(head - tail);
}

uint32_t sona_trajectory_buffer_peek(const sona_trajectory_buffer *cb, const sona_trajectory **out, uint32_t max)
{
    sona_trajectory_buffer *b = (sona_trajectory_buffer *)cb; /* atomics are read only */
    /* No consumer runs (the caller's promise): tail stays, and every filled cell from it on
     * stays filled, with its item, until the caller is done. */
    const uint64_t tail = atomic_load_explicit(&b->tail, memory_order_acquire);
    uint32_t n = 0;
    while (n < max && n < b->capacity) {
        const uint64_t pos = tail + n;
        cell *c = &b->cells[pos % b->capacity];
        if (atomic_load_explicit(&c->seq, memory_order_acquire) != 2 * pos + 1)
            break; /* not filled yet: the prefix ends here */
        out[n++] = c->item;
    }
    return n;
}

void sona_trajectory_buffer_get_stats(const sona_trajectory_buffer *cb, sona_trajectory_buffer_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    if (!cb)
        return;
    sona_trajectory_buffer *b = (sona_trajectory_buffer *)cb;
    out->recorded = atomic_load_explicit(&b->recorded, memory_order_relaxed);
    out->drained = atomic_load_explicit(&b->drained, memory_order_relaxed);
    out->dropped = atomic_load_explicit(&b->dropped, memory_order_relaxed);
    out->retries = atomic_load_explicit(&b->retries, memory_order_relaxed);
    out->len = sona_trajectory_buffer_len(b);
    out->capacity = (uint32_t)b->capacity;
}
