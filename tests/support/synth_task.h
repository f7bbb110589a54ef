/* A synthetic learning task for the engine (tests, `sona demo`, benchmarks): queries come from
 * a few clusters, each with a hidden target direction. The "model" answers with the adapted query
 * plus exploration noise; the response's quality is its cosine with the cluster's target, and
 * that quality is the feedback. Learning must raise the quality of the adapted output. */
#ifndef SONA_TEST_SYNTH_TASK_H
#define SONA_TEST_SYNTH_TASK_H

#include "core/rng.h"
#include <sona.h>

typedef struct synth_task {
    uint32_t hidden, clusters;
    float *centers;  /* clusters x hidden, unit */
    float *targets;  /* clusters x hidden, unit */
    float spread;    /* query noise around a center */
    float explore;   /* response noise */
} synth_task;

/* Clusters and targets from (seed, stream). */
int synth_task_init(synth_task *t, uint32_t hidden, uint32_t clusters, uint64_t seed, uint64_t stream);
/* Same centers as `from`, new targets (a second task on the same queries). */
int synth_task_retarget(synth_task *t, const synth_task *from, uint64_t seed, uint64_t stream);
void synth_task_free(synth_task *t);

/* Runs n requests of tenant through e (apply, one recorded step, end with feedback); returns the
 * mean quality of the adapted outputs (without exploration noise). learn = 0: apply only. */
double synth_task_run(const synth_task *t, sona_engine *e, int32_t tenant, uint32_t n, sona_rng *rng,
                      int learn);

#endif
