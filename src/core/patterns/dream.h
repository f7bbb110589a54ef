/* SPDX-License-Identifier: MIT */
/* Dreams over the pattern graph (loop C): random walks on the HNSW neighbour graph of a bank's
 * patterns, their evaluation, and the graph's integration score Phi.
 *
 * Walk: start at a uniformly random pattern; at each step, with probability jump_prob make a
 * creative jump (to the least similar of 8 uniformly drawn patterns), otherwise move to a
 * level-0 neighbour j of the current pattern c drawn from the softmax of
 *     logit_j = cos(c, j) / temperature + novelty_bonus / (1 + visits_j),
 * where visits_j counts the dreams (across cycles) that passed through j. A node without
 * neighbours jumps. The walk has `length` nodes (fewer when the bank has fewer patterns).
 *
 * Evaluation, every term in [0, 1]:
 *   novelty   = mean over the path of 1 / (1 + visits before this dream)
 *   coherence = mean over consecutive nodes of (1 + cos) / 2
 *   utility   = mean over the path of the pattern's average quality, clamped to [0, 1]
 *   diversity = 1 - mean over distinct pairs of cos, clamped to [0, 1] (0 with < 2 nodes)
 *   score     = 0.35 utility + 0.25 coherence + 0.20 novelty + 0.20 diversity
 *
 * Phi, the integration score of the pattern graph G (live patterns, undirected level-0 links):
 *   Phi = (|C| / |V|) * mean over edges (u, v) of (1 + cos(u, v)) / 2,
 * with C the largest connected component: 1 for one tightly knit component, small for a
 * fragmented or incoherent graph, 0 for an empty graph or one without edges. */
#ifndef SONA_CORE_PATTERNS_DREAM_H
#define SONA_CORE_PATTERNS_DREAM_H

#include "common/idmap.h"
#include "common/serial.h"
#include "common/rng.h"
#include "sona/bank.h"

typedef struct sona_dream_params {
    uint32_t length;
    float temperature, jump_prob, novelty_bonus;
} sona_dream_params;

/* One dream: the path (ids and unit centroids) and its evaluation. */
typedef struct sona_dream {
    uint32_t dim, cap, len, jumps;
    uint64_t *ids;
    float *vecs;      /* len x dim, unit norm */
    float *quality;   /* the patterns' average quality */
    uint32_t *visits; /* visits before this dream */
    float novelty, coherence, utility, diversity, score;
} sona_dream;

/* Visit counts per pattern id, across dreams (loop C keeps one; the state file saves it). */
typedef struct sona_dream_visits {
    sona_idmap visits;
} sona_dream_visits;

/* A fresh, empty visit count (NULL: out of memory). */
sona_dream_visits *sona_dream_visits_create(void);
void sona_dream_visits_free(sona_dream_visits *v);
/* The state file's DREA section: u32 count, then per pattern id in increasing order (one file for
 * one state, whatever the hash table's order) u64 id, u32 visits (>= 1). v may be NULL (none). */
void sona_dream_visits_write(const sona_dream_visits *v, struct sona_wbuf *w);
/* Reads DREA into a fresh *out (NULL when it holds no visit): ids given out by the bank (1 to
 * below next_id), each once, with at least one visit; SONA_E_CORRUPT with the thread's message
 * otherwise. */
sona_status sona_dream_visits_read(struct sona_rbuf *r, uint64_t next_id, sona_dream_visits **out);

sona_status sona_dream_init(sona_dream *d, uint32_t dim, uint32_t cap);
void sona_dream_free(sona_dream *d);
/* Walks one dream over bank (>= 1 pattern) and counts its visits in st. */
sona_status sona_dream_generate(const sona_bank *bank, sona_dream_visits *st, const sona_dream_params *p,
                                sona_rng *rng, sona_dream *out);
/* Fills the evaluation fields of d from its path. */
void sona_dream_evaluate(sona_dream *d);
/* Phi of the bank's pattern graph (see above); SONA_E_NOMEM on allocation failure. */
sona_status sona_pattern_phi(const sona_bank *bank, float *phi);

#endif
