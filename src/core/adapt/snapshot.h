/* SPDX-License-Identifier: MIT */
/* Published adapter weights for readers that never block: the writer fills a free snapshot and
 * swaps the slot's pointer; a reader pins the current snapshot with a counter and re-checks the
 * pointer. Snapshots are recycled, never freed, until the slot is destroyed, so a reader that
 * loaded a pointer just before a swap touches valid memory; a snapshot is rewritten only when it
 * is not current and no reader pins it (seq_cst on both sides: Dekker's pattern). */
#ifndef SONA_CORE_ADAPT_SNAPSHOT_H
#define SONA_CORE_ADAPT_SNAPSHOT_H

#include "backend/ops.h"
#include "sona/lora.h"

#include <stdatomic.h>

typedef struct sona_snapshot {
    atomic_uint readers;
    uint64_t version;
    sona_lora_weights w; /* host arrays owned by the snapshot */
    float *data;
} sona_snapshot;

typedef struct sona_snapshot_slot {
    _Atomic(sona_snapshot *) current;
    sona_snapshot **pool;
    uint32_t pool_len, pool_cap;
    uint64_t version;
} sona_snapshot_slot;

/* Reader side: the current snapshot pinned, or NULL when nothing is published. */
sona_snapshot *sona_snapshot_acquire(sona_snapshot_slot *s);
void sona_snapshot_release(sona_snapshot *snap);

/* Writer side (one writer at a time per slot): copies lora's weights into a free snapshot and
 * publishes it. */
sona_status sona_snapshot_publish(sona_snapshot_slot *s, const sona_lora *lora);
/* Unpublishes (readers then get NULL); memory stays for reuse. */
void sona_snapshot_retract(sona_snapshot_slot *s);
/* Frees every snapshot; no reader may be active. */
void sona_snapshot_slot_free(sona_snapshot_slot *s);

#endif
