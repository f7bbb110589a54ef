/* SPDX-License-Identifier: MIT */
/* libsona: the pattern index, an HNSW graph (Malkov & Yashunin) searched by cosine similarity. */
#ifndef SONA_INDEX_H
#define SONA_INDEX_H

#include "sona/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* An approximate nearest-neighbour index of (id, vector) pairs, searched by cosine similarity.
 *
 * Storage (cfg.storage), bytes per vector at dim 256 in brackets:
 *   F32 (1,024): the unit vector and the norm (to f32 rounding);
 *   F16 (516):   IEEE halves of the vector scaled by a power of two (11 significant bits);
 *   Q8 (292):    8-bit codes in blocks of 32, each block's scale the smallest power of two that
 *                fits its largest magnitude in 127 steps (so a step is 1/127 to 1/64 of it).
 * get_vector returns the vector as inserted, magnitude included: F32 to f32 rounding, F16 and Q8
 * each value within half a step (their rounding); reading a Q8 vector back and inserting it
 * again stores the same values bit for bit (F16 too, but for values below 2^-27 of the largest). Similarities are the cosines between the query and
 * the stored vectors, to f32 rounding; against the inserted vectors they are off by the
 * storage's rounding (clustered data, dim 99: F16 within 1e-4, Q8 within 2e-3), so Q8 may order
 * near ties either way. A stored vector's norm must lie in 1e-30..1e30.
 *
 * Removal is lazy: a removed id is marked deleted and never appears in results or neighbour
 * lists again, but its node keeps routing searches until more than half the nodes are deleted;
 * then the graph is rebuilt from the live vectors (amortised O(1) rebuilds per removal, but
 * that one call pays for a rebuild). An update that moves a vector by little (cosine >= 0.99 to
 * its old value) rewrites it in place and keeps its links; a larger move retires the old node
 * like a removal and inserts a new one, so the old vector is never returned either way.
 * Level assignment comes from a seeded generator: the same inserts in the same order with the
 * same seed give the same graph.
 *
 * Memory: the node arrays grow by half when full (sona_index_reserve sizes them for a known
 * count); search scratch is sized by the largest ef used, not by the node count.
 *
 * Thread safety: a sona_index is not internally locked. Searches write scratch state (visited
 * marks, access counts), so every call except the const accessors (size, config, access_count,
 * neighbors, get_vector, last_error) needs exclusive access to the handle; the const accessors
 * may run concurrently with each other. */
typedef struct sona_index sona_index;

typedef struct sona_index_config {
    uint32_t dim;              /* vector length, >= 1 */
    uint32_t M;                /* links per node on upper levels (2M on level 0), 2..255 */
    uint32_t ef_construction;  /* candidate list size while inserting, >= 1 */
    uint32_t ef_search;        /* candidate list size of sona_index_search, >= 1 */
    uint32_t initial_capacity; /* nodes allocated up front (then grows by half when full) */
    uint64_t seed;             /* seeds the level generator and sona_index_blend's rounding */
    int track_access;          /* 1: sona_index_search counts an access for each returned id */
    sona_storage storage;      /* how vectors are kept (see above) */
} sona_index_config;

/* Defaults for vectors of length dim: M 16, ef_construction 100 (on 100,000 clustered vectors of
 * dim 256, recall@10 within 0.002 of ef_construction 200 at about half the build time),
 * ef_search 50, capacity 1024, seed 42, access tracking on, SONA_STORAGE_F32. */
SONA_API void sona_index_config_default(sona_index_config *cfg, uint32_t dim);

SONA_API sona_status sona_index_create(const sona_index_config *cfg, sona_index **out);
/* Frees everything; NULL is a no-op. */
SONA_API void sona_index_destroy(sona_index *index);
/* The message of the last failed call that changed or would have changed this index ("" when
 * none); the const accessors (access_count, neighbors, get_vector) report on sona_last_error()
 * (per thread), as they may run concurrently. */
SONA_API const char *sona_index_last_error(const sona_index *index);
SONA_API const sona_index_config *sona_index_get_config(const sona_index *index);
/* Live (searchable) ids. */
SONA_API uint64_t sona_index_size(const sona_index *index);

/* Adds id with vector vec (dim floats). SONA_E_STATE when id is present already (use update),
 * SONA_E_NONFINITE / SONA_E_INVALID (a norm of 0 or outside 1e-30..1e30, which every storage
 * keeps exactly in range) leave the index unchanged. */
SONA_API sona_status sona_index_insert(sona_index *index, uint64_t id, const float *vec);
/* Replaces id's vector (its access count is kept); SONA_E_NOT_FOUND when absent. */
SONA_API sona_status sona_index_update(sona_index *index, uint64_t id, const float *vec);
/* Moves id's vector v (as get_vector returns it) to the weighted mean
 * (w_old v + w_new vec) / (w_old + w_new): a centroid absorbing another (weights >= 0, sum > 0,
 * else SONA_E_INVALID; NaN or Inf in the weights or vec: SONA_E_NONFINITE). F16 and Q8 storage round that mean stochastically, with random numbers seeded by the
 * index seed, id and the weights: the stored value is the exact mean on average, so many small
 * moves are neither swallowed by rounding nor biased, and the same calls give the same vectors.
 * SONA_E_INVALID when the mean is the zero vector (nothing changes). */
SONA_API sona_status sona_index_blend(sona_index *index, uint64_t id, const float *vec,
                                      double w_old, double w_new);
/* Removes id; SONA_E_NOT_FOUND when absent. */
SONA_API sona_status sona_index_remove(sona_index *index, uint64_t id);

/* The k live ids most similar to query (dim floats, any non-zero norm), best first: ids[k] and
 * sims[k] (cosine similarities; sims may be NULL); *found = how many were filled (< k only when
 * the index holds fewer). Uses ef = max(ef_search, k); counts accesses when track_access. */
SONA_API sona_status sona_index_search(sona_index *index, const float *query, uint32_t k,
                                       uint64_t *ids, float *sims, uint32_t *found);
/* The same with an explicit ef and access counting choice (count_access 0 or 1). */
SONA_API sona_status sona_index_search_ef(sona_index *index, const float *query, uint32_t k,
                                          uint32_t ef, int count_access, uint64_t *ids,
                                          float *sims, uint32_t *found);
/* Makes room for n nodes (live and deleted) at once, so that an index of known size does not
 * grow past it; never shrinks. */
SONA_API sona_status sona_index_reserve(sona_index *index, uint32_t n);
/* Sets the ef used by sona_index_search (>= 1). */
SONA_API sona_status sona_index_set_ef_search(sona_index *index, uint32_t ef);

/* How many times id was returned by a counting search (kept across update). */
SONA_API sona_status sona_index_access_count(const sona_index *index, uint64_t id,
                                             uint64_t *count);
/* id's level-0 neighbours in the graph (live ones only, in link order), for walks over the
 * pattern graph: up to max ids into out, *n = how many. At most 2*M exist. */
SONA_API sona_status sona_index_neighbors(const sona_index *index, uint64_t id, uint64_t *out,
                                          uint32_t max, uint32_t *n);
/* Copies id's vector into out (dim floats): as inserted (or blended), within the storage's
 * rounding, magnitude included. */
SONA_API sona_status sona_index_get_vector(const sona_index *index, uint64_t id, float *out);

#ifdef __cplusplus
}
#endif
#endif /* SONA_INDEX_H */
