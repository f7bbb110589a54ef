/* SPDX-License-Identifier: MIT */
/* Work split over the host's cores for the ops large enough to pay for a thread start (the
 * batched learning ops at GEMM-like sizes are bound by memory bandwidth, which one core does
 * not saturate). Threads are started per call and joined before it returns: a start costs tens
 * of microseconds against the milliseconds of the calls that split. */
#define _GNU_SOURCE /* SCHED_BATCH */
#include "cpu/cpu.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

/* Below this much arithmetic a call stays on one core. */
#define PARALLEL_MIN_FLOPS 16e6
#define PARALLEL_MAX_PARTS 8

uint32_t sona_cpu_parallel_parts(double flops)
{
    if (flops < PARALLEL_MIN_FLOPS)
        return 1;
#ifdef SCHED_BATCH
    /* A thread that asked to run in the background (the engine's loop thread is SCHED_BATCH at
     * nice 10) keeps its ops to itself: more threads would take the serving threads' cores. */
    if (sched_getscheduler(0) == SCHED_BATCH)
        return 1;
#endif
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (online <= 1)
        return 1;
    return online < PARALLEL_MAX_PARTS ? (uint32_t)online : PARALLEL_MAX_PARTS;
}

typedef struct part_job {
    void (*fn)(void *arg, uint32_t part, uint32_t parts);
    void *arg;
    uint32_t part, parts;
} part_job;

static void *run_part(void *p)
{
    const part_job *j = p;
    j->fn(j->arg, j->part, j->parts);
    return NULL;
}

void sona_cpu_parallel(void (*fn)(void *arg, uint32_t part, uint32_t parts), void *arg, uint32_t parts)
{
    if (parts > PARALLEL_MAX_PARTS)
        parts = PARALLEL_MAX_PARTS;
    pthread_t threads[PARALLEL_MAX_PARTS];
    part_job jobs[PARALLEL_MAX_PARTS];
    int started[PARALLEL_MAX_PARTS] = {0};
    for (uint32_t p = 1; p < parts; p++) {
        jobs[p] = (part_job){fn, arg, p, parts};
        started[p] = pthread_create(&threads[p], NULL, run_part, &jobs[p]) == 0;
    }
    fn(arg, 0, parts);
    for (uint32_t p = 1; p < parts; p++) {
        if (started[p])
            pthread_join(threads[p], NULL);
        else
            fn(arg, p, parts); /* no thread: the caller does it */
    }
}
