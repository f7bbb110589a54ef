/* SPDX-License-Identifier: MIT */
/* Library-internal access to trajectories and their buffer for the engine: a trajectory as bytes
 * and a look at what a buffer holds without taking it (the state file, persist.c), and a
 * record that counts each trajectory before loop B can take it (the engine's counters). */
#ifndef SONA_CORE_MEMORY_TRAJECTORY_INTERNAL_H
#define SONA_CORE_MEMORY_TRAJECTORY_INTERNAL_H

#include "common/serial.h"
#include "sona/trajectory.h"
#include "sona/trajectory_buffer.h"

#include <stdatomic.h>

/* Appends ended trajectory t to w:
 *   u64 id, u32 storage, u32 dim, f32 final quality, u32 step count, u64 latency (us),
 *   u32 context count, u32 route length in bytes (UINT32_MAX: no route),
 *   per step: u32 activations length, u32 attention length, f32 reward, i32 layer,
 *   the query's encoded bytes, then per step its activations' and its attention's encoded bytes
 *   (sona_storage_bytes of each length: the bytes t holds, not re-encoded), the route's bytes,
 *   per context: u32 length, bytes (strings without their terminating zero).
 * The start time is left out: it is a reading of this process's monotonic clock. */
void sona_trajectory_write(const sona_trajectory *t, sona_wbuf *w);

/* The fixed part of a record (id to route length): no record is shorter. */
#define SONA_TRAJECTORY_RECORD_MIN_BYTES 40u

/* Reads a record written by sona_trajectory_write into a fresh ended trajectory holding the same
 * encoded bytes (writing it again gives the same record); its start time is 0 (unknown).
 * SONA_E_CORRUPT (message on the thread) for a truncated or inconsistent record: an unknown
 * storage format, a zero length, a vector that decodes to NaN or Inf, a non-finite reward or
 * quality, a layer below SONA_LAYER_NONE, a string holding a zero byte; SONA_E_NOMEM. */
sona_status sona_trajectory_read(sona_rbuf *r, sona_trajectory **out);

/* Copies pointers to up to max of the trajectories b holds into out, oldest first, without taking
 * them; returns how many. It stops at the first position a producer has claimed but not yet
 * filled, so the result is a prefix of the ring as it was during the call, while producers may go
 * on recording. The caller must keep every consumer out until it is done with the pointers (no
 * drain, no record under SONA_FULL_OVERWRITE_OLDEST): the trajectories stay the buffer's. */
uint32_t sona_trajectory_buffer_peek(const sona_trajectory_buffer *b, const sona_trajectory **out,
                                     uint32_t max);

/* sona_trajectory_buffer_record that also adds 1 to *counted when t goes in, at the moment its
 * position is claimed: before any consumer can take it (the publish that lets a consumer see t
 * is a release store after the increment). So a consumer that counts what it drains never
 * counts past *counted: the engine's recorded >= taken at every instant. */
sona_status sona_trajectory_buffer_record_counted(sona_trajectory_buffer *b, sona_trajectory *t,
                                                  atomic_uint_fast64_t *counted);

#endif /* SONA_CORE_MEMORY_TRAJECTORY_INTERNAL_H */
