/* SPDX-License-Identifier: MIT */
/* The bottom of the engine: its state and the helpers every part shares (base.c, base_lora.c),
 * and the engine's glue to EWC++ (ewc.c), the pattern bank (patterns.c) and the batched device
 * apply (device.c). The parts above depend only on this: the request path and loop A
 * (request.c), loop B (loop_b.c), loop C (loop_c.c), persistence (persist.c), export (export.c).
 * The loop thread (thread.c) runs the loops through their headers, and the handle (engine.c)
 * starts the thread; scripts/layers.sh checks that no loop includes another's header.
 *
 * Lock order (a thread holding one takes only locks further down its line; docs/architecture.md
 * says which code nests which):
 *   cycle_mu -> tenants_mu -> eng_tenant.mu
 *   cycle_mu -> bank_lock (write)
 *   cycle_mu -> save_mu -> eng_tenant.mu (a save never waits for cycle_mu: it only tries it, holding
 *   nothing, see persist.c)
 *   quality_mu, err_mu and device.c's mu are leaves: nothing is taken while holding them
 *   wake_mu is taken alone (the loop thread drops it before running a cycle)
 * so a request (loop A: its tenant's mu only) never waits for a cycle. */
#ifndef SONA_ENGINE_BASE_H
#define SONA_ENGINE_BASE_H

#include "common/clock.h"
#include "common/error.h"
#include "common/float_bits.h"
#include "common/scratch.h"
#include "core/adapt/snapshot.h"
#include "core/patterns/dream.h"
#include "engine/config.h"
#include "engine/ewc.h"
#include "engine/files.h"
#include "sona/comm.h"
#include "sona/bank.h"
#include "sona/engine.h"
#include "sona/signal.h"
#include "sona/trajectory_buffer.h"

#include <pthread.h>
#include <sys/types.h>
#include <stdatomic.h>

/* The device copy of the adapters for batched apply (device.c). */
typedef struct eng_device eng_device;

/* Base-LoRA's runs waiting for their signals (base_lora.c): per run its input x, then its
 * output y (then delta), weight wt, the w it was queued with (NaN: by its reward), layer, first
 * step and step count in acts and rewards, and its query's region. */
typedef struct eng_base_queue {
    uint32_t rows, steps, row_cap, step_cap;
    float *x, *y, *acts, *rewards, *wt, *w;
    int32_t *ids;
    uint32_t *first, *n, *region;
} eng_base_queue;

/* Quality baselines are kept per query region: the sign pattern of ENG_REGION_BITS fixed random
 * projections of the query (a locality-sensitive hash: queries of one topic share a region).
 * A baseline per region measures a quality against what queries like it usually get, not
 * against which topic the query came from (which a single baseline mostly measures); it costs
 * ENG_REGION_BITS dot products a request, where a pattern-bank search would cost an HNSW walk. */
#define ENG_REGION_BITS 4
#define ENG_REGIONS (1u << ENG_REGION_BITS)
/* A query's region: the low ENG_REGION_BITS of its cell (engine/ewc.h's ENG_CELL_BITS planes). */
#define ENG_CELL_REGION(cell) ((cell) & (ENG_REGIONS - 1u))

typedef struct eng_tenant {
    sona_snapshot_slot slot;  /* what readers apply */
    pthread_mutex_t mu;       /* guards lora, since_apply, ewc, signal, baselines, critic */
    sona_signal_baseline baselines[ENG_REGIONS]; /* loop A's quality baselines per query region */
    struct sona_critic *critic; /* what a query predicts of its quality (core/adapt/critic.h):
                                   made at the tenant's first quality-only signal, NULL before */
    sona_lora *lora;          /* training copy, count 1 */
    uint32_t since_apply;
    eng_ewc *ewc;
    float *signal;            /* loop A's signal rows x, delta, y and the query centred for the
                                 critic (4 * hidden), reused (mu) */
    atomic_int live;
    atomic_uint tasks;        /* EWC++ task snapshots of ewc now, for sona_get_stats (set under mu) */
    _Atomic uint64_t generation; /* adapters this slot has had (a new one each reset, under mu):
                                 sync.c knows a tenant it merged from a new one in the same
                                 slot, loop A a request begun before a reset */
} eng_tenant;

struct sona_engine {
    sona_engine_config cfg;
    pthread_mutex_t err_mu;
    sona_errbuf err;
    atomic_int enabled;

    eng_tenant *tenants;
    pthread_mutex_t tenants_mu; /* create/remove */

    sona_snapshot_slot base_slot;
    sona_lora *base;
    eng_ewc *base_ewc;
    pthread_mutex_t cycle_mu;   /* one loop B / C cycle at a time; guards base, bank, rng; who
                                   changes what it guards outside a cycle: eng_cut_invalidate */
    /* A save while a cycle runs (persist.c): a cut of the state cycles own as it was when the
     * running cycle began, and that cycle's batch. Set by cycles under cycle_mu and save_mu, read
     * by saves under save_mu; save_cv tells waiting saves one is set. */
    struct eng_cut *cut;
    pthread_mutex_t save_mu;
    pthread_cond_t save_cv;
    void (*cycle_hook)(void *); /* tests (inspect.h): called by loop B mid-cycle, under cycle_mu */
    void *cycle_hook_arg;

    sona_id_source *ids;
    sona_trajectory_buffer *buffer; /* ended trajectories waiting for loop B */
    sona_trajectory_buffer *pool;   /* processed trajectories kept for reuse (their memory) */
    sona_signal_builder *signals;   /* loop A's signals (with the tenants' baselines) */
    float *region_planes;           /* ENG_CELL_BITS x hidden: the query-cell hash */
    pthread_mutex_t quality_mu;     /* guards quality */
    sona_signal_baseline quality;   /* every final quality: stats, dreams' reference */
    sona_signal_baseline *base_baselines; /* Base-LoRA's per layer and region (cycle_mu) */
    _Atomic(sona_request *) spare_request; /* an ended request's object, kept for the next one */

    /* loop threads */
    struct eng_loop_a *loop_a;  /* loop A's thread and queue (request.c); NULL: none */
    pthread_t thread;
    int thread_started;
    pthread_mutex_t wake_mu;
    pthread_cond_t wake_cv;
    int stop, kicked;
    _Atomic uint64_t last_cycle_ms, last_deep_ms;

    sona_bank *bank;            /* patterns; changed by cycles (cycle_mu), the pointer swapped
                                   by consolidation under bank_lock (readers: find_patterns) */
    pthread_rwlock_t bank_lock;
    sona_dream_visits *dream;   /* visit counts of patterns (loop C), guarded by cycle_mu */
    sona_scratch base_rows;     /* the block of base_q, reused (cycle_mu) */
    eng_base_queue base_q;      /* Base-LoRA's queued runs (base_lora.c; cycle_mu) */
    int base_stays_home;        /* a move to the device failed: not tried again (cycle_mu) */
    sona_scratch bank_rows;     /* loop B's eng_bank_batch, kept between cycles (cycle_mu) */

    struct {
        atomic_uint_fast64_t recorded, processed, dropped, accepted, rejected, micro_updates,
            base_updates, boundaries, b_cycles, c_cycles, dreams, replayed, last_b_us, last_c_us,
            patterns, tasks /* Base-LoRA's EWC++ tasks now (tenants': eng_tenant.tasks) */, merged;
        /* Trajectories drained from the buffer by loop B cycles: processed + those of the cycle
         * running now. recorded counts each before a cycle can take it (it is added as the
         * buffer claims the trajectory's place) and processed after the cycle that took it, so
         * processed <= taken <= recorded at every instant (sona_get_stats). Not saved: a load
         * sets it to processed (no cycle runs across one). */
        atomic_uint_fast64_t taken;
    } n;
    atomic_uint last_phi_bits;
    uint64_t synced_processed;  /* n.processed at the last sona_sync (sync.c; cycle_mu) */
    struct eng_sync *sync;      /* what the last sona_sync left, for CHANGES and PACED (cycle_mu) */
    /* sona_sync_attach: loop B's own syncs (attach_mu, taken before cycle_mu; held while such
     * a sync runs, so a detach waits for it) */
    pthread_mutex_t attach_mu;
    sona_comm *attach_comm;     /* NULL: none attached */
    sona_sync_config attach_cfg;
    uint32_t attach_every, attach_cycles; /* the period, and cycles since the last sync */
    sona_sync_periodic attach_stats;

    eng_device *device;         /* NULL: batches run on the CPU (see eng_device_ready) */
    atomic_uint_fast64_t device_batches, device_fallbacks; /* runtime only, not saved */
    atomic_uint_fast64_t out_of_range; /* inputs_out_of_range: runtime only, not saved */
};

/* After a loop B cycle that ran (cycle_mu released): counts it, and runs sona_sync when a comm
 * is attached and its period is due (sync.c). Returns that sync's status (SONA_OK when none
 * ran). */
sona_status eng_sync_periodic(sona_engine *e);

/* Formats the engine's last error (thread-safe) and returns st. */
sona_status eng_fail(sona_engine *e, sona_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The running quality baseline (0 before the first trajectory). */
float eng_baseline(sona_engine *e);
/* Folds a final quality into the engine-wide baseline. */
void eng_quality_observe(sona_engine *e, float quality);
/* A quality's weight against the engine-wide baseline, (q - mean) / spread clipped to
 * max_signal_weight (before two qualities, q - mean, the mean 0 before any); the baseline is left
 * as it is. */
float eng_quality_weight(sona_engine *e, float quality);
/* The query cell of x (0..ENG_CELLS-1); its region is ENG_CELL_REGION(cell). */
uint32_t eng_query_cell(const sona_engine *e, const float *x);

/* A finished trajectory's query and steps decoded into rows: query[hidden], acts[steps][hidden],
 * rewards, layers. Grows as needed; reused across trajectories. */
typedef struct eng_steps {
    uint32_t steps, cap;
    float *query, *acts, *rewards;
    int32_t *layers;
} eng_steps;
/* The live tenant with this id, or NULL. */
eng_tenant *eng_live_tenant(sona_engine *e, int32_t id);
/* The cell hash's planes (ENG_CELL_BITS x hidden), seeded: a saved engine's regions are a
 * loaded one's. NULL: out of memory. */
float *eng_region_planes_create(const sona_engine_config *c);
/* Waits until loop A's thread has learned from every trajectory handed to it before this call
 * (request.c; returns at once when there is no such thread). Called by what must see every
 * ended request (flush, save, load, sync, export, the forced cycles) before it takes any lock. */
void eng_loop_a_drain(sona_engine *e);
/* The most a timed or triggered loop B cycle takes: 4 x loop_b_threshold (at least
 * loop_b_min_batch), so a cycle stays bounded when the thread fell behind; what is left is taken
 * by the next one, right after. sona_force_learn takes everything. */
uint32_t eng_cycle_cap(const sona_engine_config *c);
/* Wakes the loop thread for a loop B cycle (a request filled the threshold). */
void eng_kick(sona_engine *e);
/* The engine's own threads stay off the serving threads' CPU: the calling thread becomes a batch
 * thread (its wake-ups never preempt the thread that woke it) and, when nice > 0, at that nice
 * level (0 keeps the nice it inherited). Best effort: failures leave the defaults; Linux only. */
void eng_thread_lower_priority(int nice);

/* A trajectory for a new request (reused from the pool when one is there). */
sona_status eng_traj_take(sona_engine *e, const float *query, sona_trajectory **out);
/* Gives a finished or abandoned trajectory back (to the pool, or freed when it is full). */
void eng_traj_recycle(sona_engine *e, sona_trajectory *t);

sona_status eng_steps_gather(eng_steps *s, const sona_trajectory *t, uint32_t hidden);
void eng_steps_free(eng_steps *s);

/* Applies a training copy's pending gradients (with EWC++ when on), bounds its output change
 * (max_output_change) and publishes a snapshot. slot is Base-LoRA's or a tenant's (whose task
 * count for the stats it refreshes). */
sona_status eng_train_and_publish(sona_engine *e, sona_lora *lora, eng_ewc *ewc,
                                  sona_snapshot_slot *slot);


/* Pattern bank glue (patterns.c): ReasoningBank + HNSW index. */
sona_status eng_bank_create(const sona_engine_config *cfg, sona_bank **out);
/* Loop B's rows for the bank: each trajectory's embedding and final quality, in the engine's
 * bank_rows (caller holds cycle_mu from init to done). */
typedef struct eng_bank_batch {
    float *emb, *qual;
    uint32_t rows;
    size_t bytes; /* of bank_rows used */
} eng_bank_batch;
sona_status eng_bank_batch_init(sona_engine *e, eng_bank_batch *b, uint32_t n);
/* Ends the batch's use of bank_rows (kept for the next cycle by common/scratch.h's rule). */
void eng_bank_batch_done(sona_engine *e, eng_bank_batch *b);
/* Adds a gathered trajectory's embedding and quality to the batch (a zero embedding has no
 * pattern and is left out). Caller holds cycle_mu. */
void eng_bank_add_row(sona_engine *e, eng_bank_batch *b, const eng_steps *s, float quality);
/* Adds the batch to the bank and extracts patterns. Caller holds cycle_mu. */
sona_status eng_bank_commit(sona_engine *e, eng_bank_batch *b);
/* Base-LoRA follows the engine's accelerator: once batches made the engine pick one, and the
 * cost model says a flush's accumulate (eng_base_flush's rows over every layer) finishes first
 * there, its weights, scales and pending gradients move there for good (sona_lora_move; the
 * EWC++ glue and the saves read a device's weights by export). Loop B asks at each cycle; a
 * failed move leaves it on the CPU for good (base_stays_home). Caller holds cycle_mu. */
void eng_base_follow_device(sona_engine *e);
/* Queues the Base-LoRA signals of one gathered trajectory (or dream), base_lora.c; query[hidden]
 * is the first step's input, each later step's is the activation before it. Each step of a
 * Base-LoRA layer asks that layer's output for its input to move toward the step's activation,
 * weighted by the step reward's advantage over its layer's baseline for the region of the
 * query's cell (NaN w), or by w. The signals are made by eng_base_flush (which a full queue
 * runs itself). Caller holds cycle_mu. */
sona_status eng_base_queue_trajectory(sona_engine *e, const float *query, uint32_t cell,
                                      const eng_steps *s, float w);
/* The signals of everything queued, into Base-LoRA's gradients; the queue is empty after it,
 * whatever the status. Caller holds cycle_mu. */
sona_status eng_base_flush(sona_engine *e);

/* Batched apply on an accelerator: NULL when cfg->device_apply is 0; the accelerator itself is
 * looked for when first needed (eng_device_ready). */
eng_device *eng_device_create(const sona_engine_config *cfg);
void eng_device_destroy(eng_device *d);
/* Whether batches can go to a device; picks the backend on the first call (device.c). */
int eng_device_ready(eng_device *d);
const char *eng_device_name(eng_device *d);
/* The accelerator when one was picked already, else NULL (never picks one: loop B's k-means
 * follows the batches there, it does not load the GPU modules itself). */
const sona_backend *eng_device_picked(eng_device *d);
/* n rows with a tenant id (or -1) each, every id live (the caller checked). A failure leaves
 * the CPU to redo the batch. */
sona_status eng_device_apply(sona_engine *e, uint32_t n, const int32_t *ids, const float *x, float *y);
sona_status eng_device_apply_layer(sona_engine *e, uint32_t layer, uint32_t n, const float *x, float *y);

/* Cuts of the state cycles own (persist.c), so that a save need not wait for a cycle. Under
 * cycle_mu, a cycle calls eng_cycle_begin before it changes anything: it makes the cut when the
 * last one is not the state now (the first cycle, or after eng_cut_invalidate), then, under
 * save_mu, drains up to `want` queued trajectories into batch (*n of them; loop C: batch NULL,
 * want 0) and makes the cut and the batch what saves use. eng_cycle_end, once the cycle has
 * changed what it changes and before it lets its batch go, makes the cut of the state it leaves
 * and publishes the cycle's counts with it.
 * A cut that cannot be made (memory) leaves saves waiting for cycle_mu, as before.
 * eng_cycle_begin returns the drain's status (on failure no batch is in use). */
sona_status eng_cycle_begin(sona_engine *e, sona_trajectory **batch, uint32_t want, uint32_t *n);
/* What a cycle adds to the counters a save takes from a cut: eng_cycle_end adds them to the
 * engine's counters when the cut of the state the cycle leaves takes over (under save_mu), so a
 * sona_get_stats that shows the cycle done is never followed by a save from before it. */
typedef struct eng_cycle_counts {
    uint64_t processed, b_cycles, c_cycles, dreams, replayed, merged;
} eng_cycle_counts;
void eng_cycle_end(sona_engine *e, const eng_cycle_counts *add);
/* Whoever changes the state cycles own outside a cycle (holding cycle_mu: a load, sona_sync, a
 * test's bank set-up) calls this first: saves then wait for cycle_mu, and the next cycle makes
 * its cut afresh. */
void eng_cut_invalidate(sona_engine *e);
void eng_cut_free(struct eng_cut *cut);

/* Frees what sona_sync kept (sync.c); NULL is a no-op. */
void eng_sync_free(struct eng_sync *s);

/* Stores the EWC++ task count of the adapter set that publishes to slot (Base-LoRA's or a
 * tenant's) for sona_get_stats. Caller holds what guards that set's EWC++ state. */
void eng_note_tasks(sona_engine *e, const sona_snapshot_slot *slot, const eng_ewc *ewc);

#endif
