/* SPDX-License-Identifier: MIT */
/* libsona: trajectories (one request's path through the model) and the id source they draw from. */
#ifndef SONA_TRAJECTORY_H
#define SONA_TRAJECTORY_H

#include "sona/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- id source ------------------------------------------------------------------------- */

/* Hands out trajectory ids: first, first + 1, ... Each engine owns one, so ids are unique per
 * engine (never a process-wide counter). Thread safety: every function may be called from any
 * number of threads at once (an atomic counter). */
typedef struct sona_id_source sona_id_source;

SONA_API sona_status sona_id_source_create(uint64_t first, sona_id_source **out);
/* NULL is a no-op. */
SONA_API void sona_id_source_destroy(sona_id_source *ids);
/* The next id (and advances the source); 0 for a NULL source (peek too; set ignores it). */
SONA_API uint64_t sona_id_source_next(sona_id_source *ids);
/* The id the next call to sona_id_source_next() will return, without taking it. */
SONA_API uint64_t sona_id_source_peek(const sona_id_source *ids);
/* Continues from `next` (restoring saved state); callers must not race it with next(). */
SONA_API void sona_id_source_set(sona_id_source *ids, uint64_t next);

/* ---- trajectory ------------------------------------------------------------------------ */

/* One request's trajectory: the query embedding, then steps (activations, attention weights,
 * reward, optional layer index), a route and context strings, and at the end a final quality
 * and the latency from begin to end (monotonic clock, microseconds).
 *
 * Vectors (the query, activations, attention) are kept in the trajectory's storage format,
 * chosen at begin and encoded as they arrive: SONA_STORAGE_F32 keeps them exactly (4 bytes a
 * value); SONA_STORAGE_F16 as IEEE halves (2 bytes, relative error about 5e-4; a magnitude of
 * 65520 or more is refused, it would become Inf); SONA_STORAGE_Q8 as 8-bit integers in blocks of
 * 32 with one scale per block (about 1.125 bytes; each value within half a step, step = the
 * block's largest magnitude / 127). Accessors copy the decoded values out.
 *
 * The same object is the builder (begin .. end) and the finished trajectory. All its vectors
 * and strings live in one growable arena, so a step costs no malloc once the arena is large
 * enough; end() gives back what the finished trajectory does not use (ended trajectories wait
 * in queues by the thousand), and reset() keeps the rest, so a pool of trajectories of one shape
 * allocates nothing in steady state. A trajectory holds at most 4 GiB of encoded data.
 * Every call that takes data checks it first: NaN or Inf gives SONA_E_NONFINITE (as does an F16
 * value beyond its range), a bad size or format SONA_E_INVALID, and the trajectory is left
 * exactly as it was.
 *
 * Thread safety: a sona_trajectory belongs to one thread at a time; read-only accessors may run
 * in parallel with each other, a call that changes it needs exclusive access. */
typedef struct sona_trajectory sona_trajectory;

/* Starts a trajectory with the query embedding query[dim] (dim >= 1), kept in `storage` like
 * every vector of the trajectory, and an id from `ids`. The latency clock starts now. */
SONA_API sona_status sona_trajectory_begin(sona_id_source *ids, sona_storage storage,
                                           const float *query, uint32_t dim,
                                           sona_trajectory **out);
/* Reuses t for a new trajectory (new id, new query, no steps, clock restarted), keeping its
 * storage format and its memory. */
SONA_API sona_status sona_trajectory_reset(sona_trajectory *t, sona_id_source *ids,
                                           const float *query, uint32_t dim);
/* Makes room for `steps` more steps of activations_len activations and attention_len attention
 * weights each, so adding them allocates nothing (until end() trims what is left unused). For a
 * new trajectory whose size is known: one allocation instead of a doubling series. */
SONA_API sona_status sona_trajectory_reserve(sona_trajectory *t, uint32_t steps,
                                             uint32_t activations_len, uint32_t attention_len);
/* Frees everything; NULL is a no-op. */
SONA_API void sona_trajectory_destroy(sona_trajectory *t);
/* The message of the last failed call that changed or would have changed this trajectory ("" when
 * none); the const accessors below report on sona_last_error() (per thread). */
SONA_API const char *sona_trajectory_last_error(const sona_trajectory *t);

/* No layer: the step is not tied to one layer of the model. */
#define SONA_LAYER_NONE (-1)

/* Appends a step: activations[activations_len] (>= 1 values) and attention[attention_len] (any
 * length, 0 allowed with attention NULL), both encoded in the trajectory's storage format, the
 * step's reward and its layer index (>= 0, or SONA_LAYER_NONE). SONA_E_STATE after end(). */
SONA_API sona_status sona_trajectory_add_step(sona_trajectory *t, const float *activations,
                                              uint32_t activations_len, const float *attention,
                                              uint32_t attention_len, float reward, int32_t layer);
/* Sets (replaces) the route taken, e.g. the model or expert name; copied. */
SONA_API sona_status sona_trajectory_set_route(sona_trajectory *t, const char *route);
/* Appends a context string (a retrieved document id, a tenant tag, ...); copied. */
SONA_API sona_status sona_trajectory_add_context(sona_trajectory *t, const char *context);
/* Finishes the trajectory with its final quality (finite; usually 0..1) and stops the latency
 * clock. After end() the trajectory is read-only: changes give SONA_E_STATE. */
SONA_API sona_status sona_trajectory_end(sona_trajectory *t, float final_quality);

/* ---- accessors ------------------------------------------------------------------------- */

/* One step's scalars and vector lengths. */
typedef struct sona_trajectory_step {
    uint32_t activations_len;
    uint32_t attention_len;
    float reward;
    int32_t layer;            /* SONA_LAYER_NONE when not tied to a layer */
} sona_trajectory_step;

SONA_API uint64_t sona_trajectory_id(const sona_trajectory *t);
SONA_API sona_storage sona_trajectory_storage(const sona_trajectory *t);
/* 1 once end() has succeeded. */
SONA_API int sona_trajectory_ended(const sona_trajectory *t);
/* The query embedding's length (0 for a NULL t). */
SONA_API uint32_t sona_trajectory_dim(const sona_trajectory *t);
/* Copies the decoded query embedding into out[cap]: SONA_E_SIZE when cap < dim (nothing
 * written). */
SONA_API sona_status sona_trajectory_query(const sona_trajectory *t, float *out, uint32_t cap);
SONA_API uint32_t sona_trajectory_step_count(const sona_trajectory *t);
/* Step i (0-based) into *out; SONA_E_INVALID when i >= step_count. */
SONA_API sona_status sona_trajectory_get_step(const sona_trajectory *t, uint32_t i,
                                              sona_trajectory_step *out);
/* Copies step i's decoded activations (attention weights) into out[cap]: SONA_E_INVALID when
 * i >= step_count, SONA_E_SIZE when cap is shorter than the vector (nothing written either way;
 * an empty attention vector writes nothing and out may be NULL). */
SONA_API sona_status sona_trajectory_step_activations(const sona_trajectory *t, uint32_t i,
                                                      float *out, uint32_t cap);
SONA_API sona_status sona_trajectory_step_attention(const sona_trajectory *t, uint32_t i,
                                                    float *out, uint32_t cap);
/* Shortcuts for inner loops (no checks beyond i < step_count: NaN / SONA_LAYER_NONE). */
SONA_API float sona_trajectory_step_reward(const sona_trajectory *t, uint32_t i);
SONA_API int32_t sona_trajectory_step_layer(const sona_trajectory *t, uint32_t i);
/* The final quality (NaN before end()). */
SONA_API float sona_trajectory_quality(const sona_trajectory *t);
/* Microseconds from begin to end (0 before end()). */
SONA_API uint64_t sona_trajectory_latency_us(const sona_trajectory *t);
/* When begin() ran, in microseconds of the monotonic clock (for pattern timestamps). */
SONA_API uint64_t sona_trajectory_start_us(const sona_trajectory *t);
/* The route, or NULL when none was set (valid until the trajectory changes or is destroyed). */
SONA_API const char *sona_trajectory_route(const sona_trajectory *t);
SONA_API uint32_t sona_trajectory_context_count(const sona_trajectory *t);
/* Context string i, or NULL when i >= context_count (valid as the route is). */
SONA_API const char *sona_trajectory_context(const sona_trajectory *t, uint32_t i);

#ifdef __cplusplus
}
#endif
#endif /* SONA_TRAJECTORY_H */
