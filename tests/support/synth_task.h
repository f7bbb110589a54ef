/* SPDX-License-Identifier: MIT */
/* A synthetic learning task for the engine (tests, `sona demo`): queries come from a few
 * clusters, each with a hidden target direction. The "model" answers with the adapter's output
 * y = sona_apply(x) and explores around it: step s's activation is a_s = normalize(y +
 * explore g_s) |y| (g_s Gaussian of norm about 1), its reward (1 + cos(a_s, target)) / 2 (plus
 * optional noise), the final quality the mean of the step rewards. The score of an adapter is
 * the mean of (1 + cos(y, target)) / 2 on a set of queries: learning must raise it. */
#ifndef SONA_TEST_SYNTH_TASK_H
#define SONA_TEST_SYNTH_TASK_H

#include "common/rng.h"
#include <sona.h>

typedef struct synth_task {
    uint32_t hidden, clusters;
    float *centers;     /* clusters x hidden, unit */
    float *targets;     /* clusters x hidden, unit */
    float spread;       /* query noise around a center (0.3 of its norm) */
    float explore;      /* exploration noise around the output (0.5 of its norm) */
    uint32_t steps;     /* exploration steps per request (4) */
    int final_only;     /* 1: every step's reward is the final quality (no per-step information) */
    float reward_noise; /* standard deviation of Gaussian noise added to each reward (0) */
} synth_task;

/* Clusters and targets from (seed, stream), with the defaults above. */
int synth_task_init(synth_task *t, uint32_t hidden, uint32_t clusters, uint64_t seed, uint64_t stream);
void synth_task_free(synth_task *t);

/* Runs n requests of tenant through e (apply; with learn, the exploration steps recorded and
 * the request ended with its quality); returns the mean score of the adapted outputs (before
 * exploration). learn = 0: apply only. */
double synth_task_run(const synth_task *t, sona_engine *e, int32_t tenant, uint32_t n, sona_rng *rng,
                      int learn);

/* The score of tenant's adapted outputs (apply only) on the same 300 queries at every call, drawn
 * from (seed, stream): two evaluations differ by what the adapter learned, not by the queries. */
double synth_task_score(const synth_task *t, sona_engine *e, int32_t tenant, uint64_t seed, uint64_t stream);

#endif
