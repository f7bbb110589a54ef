/* SPDX-License-Identifier: MIT */
/* libsona: the ReasoningBank, reusable patterns learned from trajectories by k-means and found
 * again by similarity search. */
#ifndef SONA_BANK_H
#define SONA_BANK_H

#include "sona/common.h"
#include "sona/index.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Trajectories are added as plain vectors (an embedding of dim floats, a quality, a weight and
 * an optional route name) and wait until sona_bank_extract(). Extraction clusters them
 * (randomised seeded k-means++ seeding, then Lloyd to convergence) into at most k_clusters and
 * at most one cluster per rows_per_cluster trajectories (k-means with a row or two per cluster
 * only splits noise; on the CPU, or on the device SONA_BACKEND names when the bank is created,
 * where the device's sums round in their own order), then meets the bank in four steps:
 *   0. Clusters k-means made of parts of one cluster become one: two clusters whose rows
 *      together are no more spread than one cluster's noise (the test of step 3 below), when
 *      that test could tell apart two clusters whose means lie v apart (a pair of shares f and
 *      1 - f adds f (1 - f) v to the rows' mean squared distance, which must reach the test's
 *      margin: with few rows, or at low dim, nothing combines), the pair adding the least
 *      spread first, while any pair passes, in rounds with v measured again on the combined
 *      clusters (k-means' parts are tighter than the clusters they cut) until a round combines
 *      none (when v and s below are estimated; up to 2,048 clusters an extraction). A batch
 *      with no clusters in it (uniform noise) ends as one.
 *   1. A cluster merges whole into its most similar pattern in the bank as it was before the
 *      extraction (size-weighted centroid, summed sizes and weights, size-weighted quality)
 *      when their cosine is at least merge_threshold, or when it is as close to the pattern as
 *      noise puts two means of one cluster and each of its trajectories would join that
 *      pattern alone (so that a cluster k-means mixed from a known and a new one does not take
 *      the new one in).
 *   2. The trajectories of the other clusters are taken one by one: each joins its most similar
 *      pattern when as close to it as noise puts a trajectory of that pattern's cluster (the
 *      joiners of a pattern merge into it together).
 *   3. What remains of each cluster is split in two (2-means) while more spread than one
 *      cluster's noise (its squared distances to its mean, summed over size - 1, above v by
 *      more than merge_z s / sqrt(size - 1) v); each part then merges whole after all (into
 *      a pattern made by this step, or an older one), by the rules of step 1 without the check
 *      of each trajectory, or becomes a new pattern.
 * "As close as noise puts": the squared Euclidean distance between the cluster's (or the
 * trajectory's, size 1) centroid and the pattern's is at most E (1 + merge_z s), with E = v
 * (1/size + 1/pattern size) its expected value when both come from one cluster, v the
 * extraction's typical squared distance of a trajectory to the mean of its cluster and s the
 * relative standard deviation of such squared distances. v and s are estimated only when a
 * cluster does not merge by cosine, two ways, keeping the one with the smaller v: the median
 * over the rows of k-means clusters of two or more of their squared distances to their
 * centroid, times n/(n-1) for a cluster of n (too large when k-means mixed most rows); and the
 * median of the rows' squared distances to the pattern most similar to their cluster, over (1 +
 * 1/pattern size) (too large when most rows are of clusters the bank does not know yet); s from
 * the same values' median absolute deviation, at least sqrt(2 / dim). The second way needs
 * patterns; an extraction with neither (a single trajectory into an empty bank, or clusters of
 * one row each) merges by cosine only.
 *
 * The centroid of a handful of noisy trajectories rarely reaches a fixed cosine with its
 * pattern, but it is as close as its noise says it should be: so many small extractions from a
 * few clusters end with about that many patterns (tests/test_bank.c: 2,000 trajectories of 4
 * clusters, each with cosine ~0.7 to its centre, in extractions of 20 end with 4 to 11 patterns
 * where the cosine alone made one per trajectory), the same data extracted again grows sizes,
 * never the pattern count, and a later extraction adds patterns only for what no pattern
 * accounts for. Limits: where step 0 cannot combine them (small extractions, low dim), a large
 * first extraction makes up to k_clusters patterns, finer than the true clusters, which stay
 * (later trajectories join them); a trajectory in the far tail of its
 * cluster's noise can become a pattern of its own (at dim 37, about one per 1,000
 * trajectories); the noise is one level per extraction, so a cluster much more diffuse than
 * the rest of its batch splits toward a pattern per trajectory (as merging by cosine alone
 * did), and one much tighter than the rest can merge with a neighbour closer than the batch's
 * noise; clusters that overlap (centres closer than their noise), met a few trajectories per
 * extraction, can end in one pattern; extractions of about as many trajectories as there are
 * clusters, or fewer, let k-means mix clusters in a way no statistic of so few rows shows, and
 * such a pattern then takes rows of each cluster near it (with 10-row extractions of 12
 * clusters most rows end in mixed patterns; with 100-row ones a few per cent:
 * docs/notes/bank-small-extractions.md); a cluster first met in two parts can stay two
 * patterns, each taking the trajectories on its side. Afterwards low-quality and stale patterns
 * are pruned and the bank is cut to capacity by evicting the lowest value
 * (value = average quality * log2(2 + size + access count)). Patterns are searchable by cosine
 * similarity through an HNSW index (sona/index.h) that always holds exactly the live patterns.
 *
 * Centroids are kept once, in the index, in its storage (cfg.index.storage, Q8 by default:
 * 292 bytes per centroid of dim 256 instead of 1,024; see sona/index.h). A centroid read back
 * (sona_bank_pattern_get) is the mean of its trajectories within that storage's rounding: as
 * stored, each Q8 value within half a step of its block (a step is 1/127 to 1/64 of the block's
 * largest magnitude). Merges fold the size-weighted mean into the stored centroid with
 * stochastic rounding (sona_index_blend): unbiased, so a large pattern absorbing many small
 * clusters follows them instead of staying on its grid, at the price of noise whose standard
 * deviation is about sqrt(d * step / 2) per value, d the typical distance of the merged
 * clusters from the pattern (e.g. 2.5 steps for clusters 12 steps away; tests/test_bank.c and
 * tests/test_index.c check 600 and 3,000 merges). Search similarities are cosines with the
 * stored centroids, to f32 rounding (for Q8 within about 2e-3 of those with the exact means, so
 * near ties may come in either order). The same operations in the same order give the same
 * centroids and results. F32 storage keeps centroids exact to f32 rounding at 4 bytes a value.
 *
 * Thread safety: a sona_bank is internally locked (one mutex); every function may be called
 * from any thread at any time. Pointers it returns (route names) stay valid until destroy. */
typedef struct sona_bank sona_bank;

typedef struct sona_bank_config {
    uint32_t dim;              /* embedding length, >= 1 */
    uint32_t k_clusters;       /* clusters per extraction at most (see rows_per_cluster) */
    uint32_t rows_per_cluster; /* an extraction of n trajectories makes at most max(1, n / this)
                                  clusters; 0 or 1: up to one per trajectory (and, then, no
                                  noise estimate: merges by cosine only) */
    uint32_t max_iterations;   /* Lloyd iterations at most */
    float tolerance;           /* Lloyd stops when inertia improves by less than this fraction
                                  (finite, >= 0; float fields with NaN or Inf: SONA_E_NONFINITE) */
    uint32_t seeding_trials;   /* k-means++ candidates per centre (greedy k-means++; the best
                                  lowers the potential most); 0 = 2 + 2 ln k, 1 = plain k-means++
                                  (cheaper seeding, more bad local minima) */
    float merge_threshold;     /* cosine at or above which a cluster merges into a pattern */
    float merge_z;             /* clusters and trajectories also merge into their most similar
                                  pattern when as close as noise puts them, within merge_z
                                  standard deviations (see above); >= 0, 0 = by cosine only */
    uint32_t min_cluster_size; /* smaller clusters are dropped (counted), not stored */
    float min_quality;         /* patterns whose average quality falls below are pruned */
    uint64_t stale_after_ms;   /* patterns not accessed (or created) for this long are pruned;
                                  0 = never */
    uint32_t capacity;         /* patterns kept at most, 1..2^24 */
    uint32_t max_pending;      /* trajectories waiting for extraction at most (SONA_E_FULL) */
    uint64_t seed;             /* k-means seed; extraction c uses the stream (seed, c) */
    sona_index_config index;   /* the pattern index, which holds the centroids (its dim is set
                                * to dim; storage Q8 by default) */
    /* Clock in milliseconds for timestamps; NULL = CLOCK_REALTIME. */
    uint64_t (*clock_ms)(void *clock_ctx);
    void *clock_ctx;
} sona_bank_config;

/* Defaults for embeddings of length dim: 50 clusters, 3 rows per cluster, 100 iterations,
 * tolerance 1e-4, seeding trials 0 (2 + 2 ln k), merge at cosine 0.95 or within merge_z 4
 * standard deviations of the noise, min cluster size 1, min quality 0 (patterns whose average
 * quality is negative are pruned), stale never, capacity 10000, pending 100000, seed 42, index
 * defaults but for storage Q8 and access tracking off. */
SONA_API void sona_bank_config_default(sona_bank_config *cfg, uint32_t dim);

SONA_API sona_status sona_bank_create(const sona_bank_config *cfg, sona_bank **out);
/* Frees everything; NULL is a no-op. */
SONA_API void sona_bank_destroy(sona_bank *bank);
/* The message of the last failed call on this handle by any thread, queries included ("" when
 * none). */
SONA_API const char *sona_bank_last_error(const sona_bank *bank);
SONA_API const sona_bank_config *sona_bank_get_config(const sona_bank *bank);

/* Forms a trajectory embedding (dim floats, unit norm) into out from the query embedding and the
 * steps' activations: out = normalise(unit(query) + unit(sum_t r_t a_t)), with r_t the step
 * rewards (the plain mean of the activations when every reward is 0). query may be NULL and
 * steps may be 0, not both. NaN/Inf -> SONA_E_NONFINITE, a zero result -> SONA_E_INVALID. */
SONA_API sona_status sona_bank_trajectory_embedding(uint32_t dim, const float *query,
                                                    uint32_t steps, const float *activations,
                                                    const float *rewards, float *out);

/* Queues one trajectory for the next extraction: embedding (dim floats; dim must equal the
 * bank's, else SONA_E_SIZE; not the zero vector), quality (finite), weight (finite, >= 0), route
 * (NULL = none; at most 63 bytes kept). Bad input -> a status, counted as rejected, nothing
 * queued. SONA_E_FULL (counted) when max_pending are waiting. */
SONA_API sona_status sona_bank_add(sona_bank *bank, const float *embedding, uint32_t dim,
                                   float quality, float weight, const char *route);
/* n trajectories at once (n rows of dim floats; weights and routes may be NULL for 1 / none).
 * All-or-nothing: one bad row or too little room refuses the whole batch. */
SONA_API sona_status sona_bank_add_batch(sona_bank *bank, uint32_t n, const float *embeddings,
                                         uint32_t dim, const float *qualities,
                                         const float *weights, const char *const *routes);
/* Trajectories waiting for extraction. */
SONA_API uint32_t sona_bank_pending(const sona_bank *bank);

typedef struct sona_bank_extract_result {
    uint32_t trajectories;   /* consumed */
    uint32_t clusters;       /* k used */
    uint32_t iterations;     /* Lloyd iterations */
    double inertia;
    uint32_t created, merged, dropped_small; /* clusters */
    uint32_t joined;         /* trajectories that joined a pattern alone (step 2 above) */
    uint32_t split;          /* clusters split in two for being too spread (step 3 above) */
    uint32_t pruned, evicted;
    uint32_t combined;       /* k-means clusters found to be parts of another (step 0 above) */
} sona_bank_extract_result;

/* Clusters every pending trajectory into patterns (see above) and empties the queue. Nothing
 * pending: SONA_OK with zero counts. res may be NULL. k-means runs outside the bank's lock
 * (searches and adds proceed meanwhile; trajectories added during it wait for the next call);
 * extractions run one at a time. If k-means fails, its trajectories go back to the queue. */
SONA_API sona_status sona_bank_extract(sona_bank *bank, sona_bank_extract_result *res);

/* Prunes low-quality and stale patterns and enforces capacity now (extract does it too);
 * *removed (may be NULL) = how many went. */
SONA_API sona_status sona_bank_prune(sona_bank *bank, uint32_t *removed);

typedef struct sona_pattern {
    uint64_t id;               /* unique, never reused */
    uint64_t size;             /* trajectories merged into it */
    double total_weight;
    float avg_quality;
    uint64_t access_count;     /* times returned by sona_bank_search */
    uint64_t created_ms, last_access_ms;
    uint32_t route_count;      /* distinct routes seen (see sona_bank_pattern_route) */
} sona_pattern;

/* The k patterns most similar to query (dim floats, SONA_E_SIZE unless the bank's dim; cosine,
 * best first): ids[k], sims[k] (may be NULL), *found. sims are cosines with the stored centroids
 * (to f32 rounding; they differ from cosines with the exact means by the storage's rounding, for
 * Q8 at dim 256 typically 1e-3). Counts an access and refreshes last_access_ms of each returned
 * pattern. */
SONA_API sona_status sona_bank_search(sona_bank *bank, const float *query, uint32_t dim,
                                      uint32_t k, uint64_t *ids, float *sims, uint32_t *found);
/* Live patterns. */
SONA_API uint32_t sona_bank_pattern_count(const sona_bank *bank);
/* Pattern by id (SONA_E_NOT_FOUND once merged away, pruned or evicted); centroid (dim floats,
 * the mean of its trajectories, not normalised, within the storage's rounding) may be NULL. */
SONA_API sona_status sona_bank_pattern_get(const sona_bank *bank, uint64_t id, sona_pattern *p,
                                           float *centroid);
/* The i-th live pattern (0 <= i < count; order changes when patterns go), for iteration. */
SONA_API sona_status sona_bank_pattern_at(const sona_bank *bank, uint32_t i, sona_pattern *p,
                                          float *centroid);
/* Route statistics r (0 <= r < route_count) of pattern id: name, trajectories, mean quality. */
SONA_API sona_status sona_bank_pattern_route(const sona_bank *bank, uint64_t id, uint32_t r,
                                             const char **route, uint64_t *count,
                                             float *mean_quality);
/* Level-0 neighbours of pattern id in the HNSW graph (live patterns), for graph walks. */
SONA_API sona_status sona_bank_neighbors(const sona_bank *bank, uint64_t id, uint64_t *out,
                                         uint32_t max, uint32_t *n);
/* Puts a pattern back as it was (restore from a checkpoint): p->id must be unused (and not 0);
 * the bank's next ids continue above it. Route statistics start empty (p->route_count is
 * ignored): add them with sona_bank_pattern_restore_route. */
SONA_API sona_status sona_bank_pattern_restore(sona_bank *bank, const sona_pattern *p,
                                               const float *centroid);
/* Adds route statistics to pattern id (restore): count trajectories of mean quality mean_quality
 * on route (count >= 1); merges with the route's existing statistics. */
SONA_API sona_status sona_bank_pattern_restore_route(sona_bank *bank, uint64_t id,
                                                     const char *route, uint64_t count,
                                                     float mean_quality);

typedef struct sona_bank_stats {
    uint64_t trajectories_added, trajectories_rejected, trajectories_refused_full;
    uint64_t trajectories_lost; /* only when a failed extraction could not requeue (no memory) */
    uint64_t extractions, clusters_found, clusters_dropped_small;
    uint64_t patterns_created, patterns_merged, patterns_pruned_quality, patterns_pruned_stale,
        patterns_evicted;
    uint64_t searches;
    uint32_t pending, patterns;
} sona_bank_stats;

SONA_API sona_status sona_bank_stats_get(const sona_bank *bank, sona_bank_stats *out);

/* The id the next new pattern takes: above every id the bank ever gave out. */
SONA_API uint64_t sona_bank_next_id(const sona_bank *bank);
/* Carries counters over to a bank that takes another's place (a checkpoint restored, a bank
 * rebuilt from another's patterns): every counter of sona_bank_stats becomes counters' (pending
 * and patterns are the bank's own: ignored), and the next pattern id becomes next_id, which must
 * be above every pattern's id (SONA_E_INVALID otherwise, and nothing changes). The extraction
 * count seeds the next extraction's k-means, so a bank restored with its counters extracts as
 * the original would have. */
SONA_API sona_status sona_bank_restore_counters(sona_bank *bank, const sona_bank_stats *counters,
                                                uint64_t next_id);

/* A consolidated copy of bank in *out (same configuration, counters and id sequence): each pattern
 * whose cosine with an earlier graph neighbour reaches merge_cosine joins that neighbour's group
 * (size-weighted centroid and quality, summed sizes, weights and accesses, oldest creation,
 * latest access; the group keeps its first pattern's id), access counts decay by
 * importance_decay (0..1), then the copy prunes to capacity. *merged_away counts the patterns
 * folded into another. bank itself is left as it is: swap the two when readers allow. */
SONA_API sona_status sona_bank_consolidate(const sona_bank *bank, float merge_cosine, float importance_decay,
                                           sona_bank **out, uint32_t *merged_away);

#ifdef __cplusplus
}
#endif
#endif /* SONA_BANK_H */
