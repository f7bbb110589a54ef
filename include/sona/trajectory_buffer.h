/* SPDX-License-Identifier: MIT */
/* libsona: the trajectory buffer, a bounded lock-free MPMC ring between inference threads
 * (record) and the learning loops (drain). */
#ifndef SONA_TRAJECTORY_BUFFER_H
#define SONA_TRAJECTORY_BUFFER_H

#include "sona/common.h"
#include "sona/trajectory.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What record() does when the ring is full. Either way the event is counted in `dropped`. */
typedef enum sona_full_policy {
    /* The new trajectory is refused with SONA_E_FULL and stays the caller's (keep it, retry,
     * or destroy it). Each refusal counts once in `dropped`. */
    SONA_FULL_DROP_NEWEST = 0,
    /* The oldest trajectory in the ring is taken out, destroyed and counted in `dropped`; the
     * new one goes in. */
    SONA_FULL_OVERWRITE_OLDEST = 1
} sona_full_policy;

typedef struct sona_trajectory_buffer_config {
    uint32_t capacity;        /* trajectories held at most; >= 1, default 10000 */
    sona_full_policy policy;  /* default SONA_FULL_DROP_NEWEST */
} sona_trajectory_buffer_config;

/* Counters are exact: each is one atomic, updated once per event. When no call is in flight:
 *   drop newest:       recorded == drained + len          (refused ones never entered)
 *   overwrite oldest:  recorded == drained + len + dropped (evicted ones had entered) */
typedef struct sona_trajectory_buffer_stats {
    uint64_t recorded;  /* trajectories accepted by record() */
    uint64_t drained;   /* trajectories handed out by drain() */
    uint64_t dropped;   /* refused (drop newest) or evicted (overwrite oldest) */
    uint64_t retries;   /* claims lost to another thread and retried: contention, as a
                           fraction of recorded + drained */
    uint32_t len;       /* held now */
    uint32_t capacity;
} sona_trajectory_buffer_stats;

/* A bounded ring of trajectory pointers (Vyukov's sequence-numbered MPMC queue): record and
 * drain never take a lock and never allocate.
 *
 * Thread safety: record, drain, len and stats may be called from any number of threads at once;
 * create and destroy need exclusive access. */
typedef struct sona_trajectory_buffer sona_trajectory_buffer;

SONA_API void sona_trajectory_buffer_config_default(sona_trajectory_buffer_config *cfg);
SONA_API sona_status sona_trajectory_buffer_create(const sona_trajectory_buffer_config *cfg,
                                                   sona_trajectory_buffer **out);
/* Destroys every trajectory still held, then the buffer. NULL is a no-op. */
SONA_API void sona_trajectory_buffer_destroy(sona_trajectory_buffer *b);
SONA_API const sona_trajectory_buffer_config *sona_trajectory_buffer_get_config(
    const sona_trajectory_buffer *b);

/* Moves an ended trajectory into the buffer: on SONA_OK the buffer owns it. On any other status
 * (SONA_E_FULL under drop newest, SONA_E_STATE when t has not ended, SONA_E_NULL) the caller
 * still owns t. The buffer has no message of its own: refusals report on sona_last_error(). */
SONA_API sona_status sona_trajectory_buffer_record(sona_trajectory_buffer *b, sona_trajectory *t);

/* Moves up to max trajectories, oldest first, into out[0..*taken-1]; the caller owns them
 * (destroy each). Pass max = capacity to take everything held. Taking none is SONA_OK with
 * *taken == 0. */
SONA_API sona_status sona_trajectory_buffer_drain(sona_trajectory_buffer *b, sona_trajectory **out,
                                                  uint32_t max, uint32_t *taken);

/* Trajectories held now (a snapshot while other threads record or drain). */
SONA_API uint32_t sona_trajectory_buffer_len(const sona_trajectory_buffer *b);
SONA_API void sona_trajectory_buffer_get_stats(const sona_trajectory_buffer *b,
                                               sona_trajectory_buffer_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* SONA_TRAJECTORY_BUFFER_H */
