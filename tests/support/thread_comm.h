/* SPDX-License-Identifier: MIT */
/* A world of k ranks inside one process, one thread per rank, for sona_sync's tests without
 * MPI: the collectives meet at a barrier and copy from each other's buffers in rank order. A
 * failure can be injected: every rank's n-th callback call (rank, size and collectives counted
 * alike) returns SONA_E_BACKEND, on all ranks at once as a failed MPI collective would. */
#ifndef SONA_TEST_THREAD_COMM_H
#define SONA_TEST_THREAD_COMM_H

#include <sona.h>

typedef struct thread_world thread_world;

/* k ranks; fail_at 0 = never fail. NULL when out of memory. */
thread_world *thread_world_create(uint32_t k, uint32_t fail_at);
void thread_world_destroy(thread_world *w);
/* Rank i's handle (owned by the world: do not destroy it). */
sona_comm *thread_world_comm(thread_world *w, uint32_t i);
/* Callback calls rank i made so far. */
uint32_t thread_world_calls(const thread_world *w, uint32_t i);

/* Runs fn(i, arg) in k threads at once, one per rank, and waits for them all. */
void thread_world_run(uint32_t k, void (*fn)(uint32_t rank, void *arg), void *arg);

#endif
