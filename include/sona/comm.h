/* SPDX-License-Identifier: MIT */
/* libsona: communication between the nodes of a cluster, and the merge of what they learned.
 * libsona never opens a socket: the application gives it a table of collectives (MPI through
 * libsona-mpi's sona_comm_mpi, NCCL, Gloo, torch.distributed, ...) and sona_sync merges the
 * engines of all ranks through it (README.md, "Cluster"). */
#ifndef SONA_COMM_H
#define SONA_COMM_H

#include "sona/common.h"
#include "sona/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Thread safety: a sona_comm is used by one thread at a time (collectives are called in the
 * same order on every rank, which only the caller can guarantee); distinct handles are
 * independent. */
typedef struct sona_comm sona_comm;

/* The collectives an engine fills. Every callback gets ctx, returns SONA_OK or an error
 * (SONA_E_BACKEND for a failed transfer), and is called by libsona on every rank in the same
 * order with the same sizes, like an MPI collective. */
typedef struct sona_comm_ops {
    void *ctx;
    /* This process's rank, 0..size-1. */
    sona_status (*rank)(void *ctx, uint32_t *rank);
    /* The number of ranks (>= 1). */
    sona_status (*size)(void *ctx, uint32_t *size);
    /* In place: data[0..n) becomes the element-wise sum over the ranks (MPI_Allreduce, MPI_SUM,
     * MPI_FLOAT). libsona does not need the sum to be bit-identical across ranks. */
    sona_status (*allreduce_sum_f32)(void *ctx, float *data, size_t n);
    /* Every rank sends `bytes` bytes; recv[size * bytes] receives rank i's block at i * bytes
     * on every rank (MPI_Allgather of MPI_BYTE). send and recv do not overlap. */
    sona_status (*allgather)(void *ctx, const void *send, size_t bytes, void *recv);
    /* Called once by sona_comm_destroy (NULL: nothing to free). */
    void (*destroy)(void *ctx);
} sona_comm_ops;

/* Fills *ops with a world of one process (rank 0 of 1; the collectives copy), ctx NULL:
 * replace every callback an engine provides. */
SONA_API void sona_comm_ops_default(sona_comm_ops *ops);
/* A handle over the callbacks (copied). Every callback must be set (SONA_E_NULL otherwise). */
SONA_API sona_status sona_comm_create(const sona_comm_ops *ops, sona_comm **out);
/* Calls ops.destroy(ctx) and frees the handle; NULL is a no-op. */
SONA_API void sona_comm_destroy(sona_comm *c);
/* The message of the last failed call on this handle ("" when none). */
SONA_API const char *sona_comm_last_error(const sona_comm *c);
/* The callbacks, with the arguments checked (a rank outside 0..size-1 or a size of 0 is
 * SONA_E_BACKEND). */
SONA_API sona_status sona_comm_rank(sona_comm *c, uint32_t *rank);
SONA_API sona_status sona_comm_size(sona_comm *c, uint32_t *size);
SONA_API sona_status sona_comm_allreduce_sum(sona_comm *c, float *data, size_t n);
SONA_API sona_status sona_comm_allgather(sona_comm *c, const void *send, size_t bytes, void *recv);

/* ---- merging engines across ranks ---------------------------------------------------------- */
typedef enum sona_sync_weighting {
    SONA_SYNC_EQUAL = 0,        /* every rank weighs the same */
    SONA_SYNC_TRAJECTORIES = 1  /* each rank by the trajectories its loop B learned from since
                                   its last sync (equal when no rank learned any) */
} sona_sync_weighting;

/* What a sync makes of the ranks' adapters W_i. */
typedef enum sona_sync_merge {
    SONA_SYNC_AVERAGE = 0,  /* their (weighted) average: a rank's progress since the last sync
                               counts 1/k, so k ranks learn about as fast as one */
    SONA_SYNC_CHANGES = 1,  /* what the last sync left, S, plus every rank's change since:
                               S + sum_i (W_i - S). As fast as one engine seeing all the traffic
                               while far from what the traffic teaches, but k steps summed
                               overshoot near it, and the overshoots grow from sync to sync: 4
                               ranks syncing every 100 trajectories of the synthetic task at the
                               default learning rate lost their whole gain by the third sync
                               (docs/notes/sync.md). For ranks that learn little between syncs */
    SONA_SYNC_PACED = 2     /* the default: S + g m, m the ranks' (weighted) mean change since S
                               and g in [1, k] the share of k intervals' progress one engine
                               seeing all the traffic would have made, estimated from how m
                               bears on the last merge's move (it goes on: g near k, the sum of
                               the changes; it turns back, the last move overshot: g near 1, the
                               average). One g for Base-LoRA, one per tenant; the first sync
                               from S takes g = k. 4 ranks on a quarter each reach 93-96 % of
                               one engine's gain on the synthetic task at the default rate,
                               where AVERAGE reaches 63-66 % (tests/test_sync_learning.c).
                               CHANGES and PACED fall back to AVERAGE where a rank has no S
                               (its first sync, a tenant new since) and for a world of one:
                               sync once before serving, so that every rank starts alike and
                               has S. S is each rank's memory of the last sync: after a
                               sona_load, sync once with AVERAGE, or the load counts as a
                               change. Every rank must pass the same merge (SONA_E_SIZE
                               otherwise) */
} sona_sync_merge;

/* How Base-LoRA's merge target M (a sum of the ranks' s B A) is reduced to rank r. */
typedef enum sona_sync_method {
    SONA_SYNC_SKETCH = 0, /* M seen through two all-reduces of width x hidden per layer (width =
                             rank + max(2, rank / 4)): Y = M Omega, Omega's rows the last sync's
                             A and seeded random signs, then Z = M^T Q, Q Y's orthonormal rows;
                             the merge is the best rank-r approximation of Q Q^T M. Exact where
                             M's rank is at most width or the ranks changed B only since the
                             last sync; else close (the randomised range finder's bound).
                             At a first sync (no S on some rank) rank 0's A takes S's place,
                             sent to all by one more all-reduce of A. Each rank moves about
                             1.25x what a ring all-reduce of Base-LoRA moves (1.75x at a first
                             sync), whatever the number of ranks, and computes only its own
                             share. The sums travel as integers in floats, so any all-reduce
                             (any order of additions) gives every rank the same bits */
    SONA_SYNC_EXACT = 1   /* every rank's factors all-gathered and the best rank-r
                             approximation of M computed from all of them (QR of the stacked
                             factors, SVD of the core): exact, but each rank receives (k - 1)
                             times Base-LoRA and computes O(hidden (k rank)^2) a layer */
} sona_sync_method;

typedef struct sona_sync_config {
    sona_sync_weighting weighting; /* the average's and SONA_SYNC_PACED's mean change's */
    sona_sync_merge merge;
    sona_sync_method method;       /* Base-LoRA's; tenants are merged exactly */
} sona_sync_config;
/* weighting SONA_SYNC_TRAJECTORIES, merge SONA_SYNC_PACED, method SONA_SYNC_SKETCH. */
SONA_API void sona_sync_config_default(sona_sync_config *cfg);

typedef struct sona_sync_result {
    uint32_t ranks;          /* size of the communicator */
    uint32_t rank;           /* this process's rank */
    double weight;           /* this rank's share of the average (AVERAGE) or of the mean
                                change (PACED; CHANGES sums the changes), weights summing to 1 */
    double merge_error;      /* over the layers: |merged - M|_F / |M|_F of s B A, M the merge's
                                target (the average, or S + the changes), the rank-r
                                truncation's error (0 when M has rank <= r). SONA_SYNC_SKETCH:
                                of M's part in the sketched range (what lies outside it is not
                                seen: docs/notes/sync.md measures the whole) */
    uint32_t tenants_merged; /* tenant ids live on two ranks or more, merged there */
    sona_stats global;       /* every counter of sona_get_stats summed over the ranks, read
                                just before the merge (tenants too: tenant ids are per rank);
                                quality_baseline and last_phi are the mean over the ranks */
    double merge_us;         /* this rank's CPU time in the merge's own arithmetic (the rank-r
                                re-factorisation of Base-LoRA and the tenants: the sketch's
                                products, orthonormalisation, finish and turn back, or the exact
                                merges), microseconds */
} sona_sync_result;

/* Merges the engines of all ranks; every rank calls it (a collective, in the same order as its
 * other collectives on comm). Base-LoRA: each layer becomes the best rank-r approximation of
 * the merge's target for s B A (the ranks' weighted average, or the last sync's state plus
 * their changes, as cfg->merge says; computed in factored form, never as a dense hidden x
 * hidden matrix), the same bit for bit on every rank given the same library. Micro-LoRA: a
 * tenant id live on several ranks becomes there the equal-weight merge of its adapters (by
 * cfg->merge, SONA_SYNC_PACED with a gain of its own), the same way (ids are each rank's own:
 * one live on a single rank is left alone, none is created); signals it learned while the
 * sync ran, and its pending gradients, give way to the merge. Where every rank has the last
 * sync's state, merged factors are turned back to its coordinates (B A unchanged). EWC++ of
 * Base-LoRA: the running Fisher becomes the ranks' average, the task snapshots one task
 * anchored at the merged weights whose Fisher is the last sync's plus every rank's new tasks'
 * (the boundary detector stays each rank's); of a merged tenant, the same over its holders
 * (gathered with its adapter: 3x its bytes). Pattern bank:
 * each pattern the last sync left becomes it plus every rank's change since, the new ones are
 * added with ids numbered on from the last sync's next id (unique across ranks), then the bank
 * is consolidated as loop C does; trajectories pending in the bank (none after a cycle) are
 * dropped. Engines must have one shape (hidden, base_layers, base_rank, base_alpha, max_tenants,
 * micro_rank, micro_alpha, EWC++ on or off: SONA_E_SIZE on every rank otherwise), and every
 * rank must run a libsona of the same sync protocol (its first all-gather is of a fixed size
 * and carries the protocol number: SONA_E_VERSION on every rank otherwise).
 * Loop B waits while the sync runs; requests and apply go on, and see the merged weights
 * published at once when it returns. A failed collective (a callback's error), or any other
 * failure, leaves the engine exactly as before the call: everything is computed into new
 * buffers and committed only when every step succeeded on every rank (out of memory while
 * publishing the merged weights, the one failure after that point, puts back the old weights
 * of what it failed on). A rank that runs out of memory before its buffers exist returns
 * without taking part, and the others wait in the collective, as in any MPI program. Queued trajectories are not merged:
 * call sona_force_learn first to fold them in. cfg NULL = the defaults; out may be NULL. */
SONA_API sona_status sona_sync(sona_engine *e, sona_comm *comm, const sona_sync_config *cfg,
                               sona_sync_result *out);

/* ---- periodic syncs from loop B ------------------------------------------------------------ */
/* What loop B's own syncs did since the comm was attached. */
typedef struct sona_sync_periodic {
    uint64_t syncs;       /* attempted */
    uint64_t failed;      /* of those, failed (each left the engine as it was, as sona_sync) */
    sona_status last;     /* the last one's status (SONA_OK before any) */
    char last_error[256]; /* the last failure's message ("" when none failed) */
} sona_sync_periodic;

/* Loop B syncs by itself: after every every_cycles loop B cycles of e (whoever ran them: the
 * engine's thread, sona_tick or sona_force_learn; a cycle that found nothing queued does not
 * count, a failed one does), it calls sona_sync(e, comm, cfg, NULL) in the thread that ran the
 * cycle, once the cycle is done. With background_thread 0 that is the caller of sona_tick or
 * sona_force_learn, which returns the sync's failure (the cycle's own comes first); the
 * thread's failures are seen in sona_sync_periodic_get (and the engine's last error).
 * The collective's order: every rank must attach the same every_cycles and cfg and run the
 * same number of cycles, so that all reach their n-th sync; a rank still short of it keeps the
 * others waiting in the collective (the engine's thread blocked there learns nothing
 * meanwhile; requests and apply go on). Loop B threads reach it at different times, which a
 * blocking collective simply waits out. comm is loop B's while attached: the application (or
 * another engine) must not use it concurrently, nor call sona_sync on it, nor destroy it
 * before detaching (an engine destroyed while its thread waits in the collective waits with
 * it). comm NULL detaches (waiting for a sync in flight); attaching again
 * restarts the count and the periodic stats. cfg NULL = the defaults (copied); every_cycles
 * >= 1 (SONA_E_INVALID otherwise, as an invalid cfg). */
SONA_API sona_status sona_sync_attach(sona_engine *e, sona_comm *comm, const sona_sync_config *cfg,
                                      uint32_t every_cycles);
/* The periodic syncs' counts since the last attach (zeros when none attached). */
SONA_API sona_status sona_sync_periodic_get(sona_engine *e, sona_sync_periodic *out);

#ifdef __cplusplus
}
#endif
#endif /* SONA_COMM_H */
