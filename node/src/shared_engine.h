/* SPDX-License-Identifier: MIT */
/* The Node addon's engine: one sona_engine with the table of trajectories JavaScript has begun
 * (by integer id, as @ruvector/sona hands them out), shared by reference count between the
 * SonaEngine objects of every thread (main and workers) that holds it. Free of Node-API: the
 * bookkeeping below is plain C and pthreads. */
#ifndef SONA_NODE_SHARED_ENGINE_H
#define SONA_NODE_SHARED_ENGINE_H

#include <pthread.h>
#include <stdint.h>

#include "sona/engine.h"

typedef struct node_trajectory {
    uint32_t id;
    int busy;                 /* a thread is inside a call on it: others are refused */
    uint32_t steps;           /* steps added so far (the default layer of the next one) */
    int32_t tenant;
    sona_request *request;
    struct node_trajectory *next;
} node_trajectory;

typedef struct shared_engine {
    sona_engine *engine;
    uint32_t hidden;
    uint32_t base_layers;
    uint32_t max_patterns;

    pthread_mutex_t lock;     /* guards everything below */
    uint32_t refs;
    uint64_t token;           /* share() token, 0 until shared */
    node_trajectory **slots;  /* hash table by id, chained; nslots a power of two */
    uint32_t nslots;
    uint32_t open;            /* trajectories in the table */
    uint32_t next_id;
    int loading;              /* a load runs: no trajectory may begin */
    node_trajectory *spare;   /* ended records kept for reuse (no malloc per request) */
    struct shared_engine *next_shared;

} shared_engine;

/* Creates the engine from cfg; NULL with sona_last_error() set (or "out of memory"). */
shared_engine *shared_engine_create(const sona_engine_config *cfg, sona_status *status);
/* Drops one reference; the last abandons the open trajectories and destroys the engine. */
void shared_engine_release(shared_engine *se);
/* The token another thread passes to shared_engine_attach (registers the engine once). */
uint64_t shared_engine_share(shared_engine *se);
/* A new reference to the shared engine with this token, or NULL when it is gone. */
shared_engine *shared_engine_attach(uint64_t token);
/* One more reference (an async job in flight). */
void shared_engine_retain(shared_engine *se);

/* Trajectory table. Each returns 0 on success, else fills why[why_len] and returns a
 * sona_status. */
int traj_begin(shared_engine *se, int32_t tenant, const float *query, uint32_t *id,
               char *why, size_t why_len);
/* Marks trajectory id busy and returns it (the caller then owns its request until traj_put). */
int traj_take(shared_engine *se, uint32_t id, node_trajectory **out, char *why, size_t why_len);
void traj_put(shared_engine *se, node_trajectory *t);
/* Removes trajectory id from the table; its request is the caller's to end or abandon, the
 * record goes back with traj_recycle. */
int traj_remove(shared_engine *se, uint32_t id, node_trajectory **out, char *why, size_t why_len);
void traj_recycle(shared_engine *se, node_trajectory *t);

/* Refuses (nonzero, why filled) while trajectories are open; else marks a load in progress. */
int load_start(shared_engine *se, char *why, size_t why_len);
void load_finish(shared_engine *se);

#endif
