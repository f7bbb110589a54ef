/* SPDX-License-Identifier: MIT */
/* k-means for the ReasoningBank: randomised greedy k-means++ seeding (D^2 sampling) then Lloyd
 * iterations, with the heavy loops (nearest centre, centroid sums) run by an op table. */
#ifndef SONA_CORE_PATTERNS_KMEANS_H
#define SONA_CORE_PATTERNS_KMEANS_H

#include "backend/ops.h"
#include "common/scratch.h"

typedef struct sona_kmeans_params {
    uint32_t k;              /* clusters, 1..n */
    uint32_t max_iterations; /* Lloyd iterations at most (>= 1) */
    float tolerance;         /* stop when inertia improves by less than this fraction */
    uint64_t seed;           /* seeds the k-means++ sampling and empty-cluster re-seeding */
    uint32_t trials;         /* D^2 candidates tried per seeded centre; 0 = 2 + 2 ln k: fewer trials let about 1 run in 100 settle
                              * in a poor local minimum (seen in test_kmeans) */
} sona_kmeans_params;

/* The D^2 candidates per seeded centre p asks for: its trials, or 2 + 2 ln k when 0. */
uint32_t sona_kmeans_trials(const sona_kmeans_params *p);
/* The threads a seeding round on the CPU splits over, for n rows of d (the peers' benchmark
 * gives its k-means as many). */
uint32_t sona_kmeans_round_parts(uint32_t n, uint32_t d, const sona_kmeans_params *p);

typedef struct sona_kmeans_result {
    uint32_t iterations;     /* Lloyd iterations run */
    uint32_t reseeded;       /* empty clusters re-seeded on the way */
    int converged;           /* 1: stopped by tolerance or stable assignments */
    double inertia;          /* sum of squared distances to the assigned centroid */
} sona_kmeans_result;

/* Clusters X[n][d] (host memory) into k clusters with backend be, which must have the
 * sqdist_argmin, cluster_sums and gemm ops. On a device (not host memory) X goes up once into
 * buffers of its own, the seeding's products, the assignments and the sums run there (through
 * sona_op_run: a failing op is redone on the CPU), and the small results come back after each
 * step for the host's part (sampling, potentials, the centroid division). Outputs:
 * centroids[k][d] (each the mean of its members), assign[n], counts[k] (a cluster may end empty
 * only when X has fewer than k distinct rows). The same inputs, seed and backend give the same
 * result; another backend rounds its sums in its own order. SONA_E_NOMEM also when the device
 * has no room. */
sona_status sona_kmeans(const sona_backend *be, const float *X, uint32_t n, uint32_t d,
                        const sona_kmeans_params *p, float *centroids, int32_t *assign,
                        uint32_t *counts, sona_kmeans_result *res);
/* The same, with its scratch memory (about (n + 2 trials) x d floats) in *work, kept for the
 * next call by the rule of common/scratch.h: callers that cluster batch after batch (the bank's
 * extraction) do not page-fault it in each time. The result is the same as sona_kmeans's. */
sona_status sona_kmeans_reuse(const sona_backend *be, const float *X, uint32_t n, uint32_t d,
                              const sona_kmeans_params *p, float *centroids, int32_t *assign,
                              uint32_t *counts, sona_kmeans_result *res, sona_scratch *work);

#endif
