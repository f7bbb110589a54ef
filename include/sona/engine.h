/* SPDX-License-Identifier: MIT */
/* libsona: the SONA engine — per-tenant Micro-LoRA, per-layer Base-LoRA, trajectory recording,
 * and the three learning loops (A instant, B background, C deep), with persistence. */
#ifndef SONA_ENGINE_H
#define SONA_ENGINE_H

#include "sona/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Thread safety: every sona_engine function may be called from any number of threads at once
 * (apply, request and stats calls never wait for a learning cycle, stats only for loop A's
 * queue; a reader of adapter weights always sees one complete published version), except sona_engine_destroy, which must be the
 * last call on the handle, and sona_load, which must not race with requests in flight. */
typedef struct sona_engine sona_engine;
/* One request's trajectory in construction; owned by the caller from begin to end. */
typedef struct sona_request sona_request;

typedef enum sona_preset {
    SONA_PRESET_DEFAULT = 0,     /* rank 4 Micro / rank 8 Base, N=1, loop B every 250 trajectories
                                    or 2 s */
    SONA_PRESET_MAX_THROUGHPUT,  /* rank 1 Micro, apply every 16 signals, loop B every 1000 or 5 s */
    SONA_PRESET_MAX_QUALITY,     /* rank 4 Micro at a smaller rate, rank 16 Base, loop B every 50
                                    or 1 s, more dreams */
    SONA_PRESET_EDGE             /* rank 1, 4 layers of rank 4, small buffers, no background thread */
} sona_preset;

typedef struct sona_engine_config {
    uint32_t hidden;            /* embedding / activation width (>= 1; 2 x base_layers x base_rank
                                   x hidden below 2^32) */
    uint64_t seed;              /* seeds adapters, k-means++ and dreams */
    /* Micro-LoRA (one adapter per tenant; tenant 0 exists from creation) */
    uint32_t micro_rank;        /* 1..8 typical; 4 at the default (more clusters of queries kept
                                   apart, see docs/learning.md), 1 for the lean presets */
    float micro_alpha;
    float micro_learning_rate;  /* the fraction of the way a signal of weight 1 moves y(x) toward
                                   where it points (sona/signal.h), whatever the width, rank or
                                   scale of x: see "Learning" below */
    uint32_t micro_apply_every; /* loop A applies a tenant's gradients every N signals (>= 1) */
    uint32_t max_tenants;       /* adapter slots, tenant ids 0..max_tenants-1; a tenant that
                                   sends quality-only signals also keeps a query critic of
                                   2 x 16 x hidden floats (512 KB at hidden 4096) */
    /* Base-LoRA (one adapter per layer) */
    uint32_t base_rank;
    uint32_t base_layers;
    float base_alpha;
    float base_learning_rate;   /* the same for Base-LoRA, per loop B signal */
    float max_signal_weight;    /* a quality-only signal's weight, (Q - baseline) / spread, is
                                   clipped to +-this (> 0) */
    float max_output_change;    /* every adapter's |y(x) - x| is kept <= this * |x| for every x
                                   (its s B A scaled down after an update that passes it);
                                   0 = unbounded */
    /* trajectories */
    uint32_t max_steps;         /* steps kept per trajectory (later ones are counted, not kept) */
    uint32_t buffer_capacity;   /* trajectories queued for loop B; full: the new one is dropped
                                   and counted in trajectories_dropped */
    sona_storage step_storage;  /* how recorded trajectories keep their query and activations
                                   (encoded at each step; loops A and B learn from the decoded
                                   values): Q8 about 1.1 bytes a value, F16 2, F32 4 (exact) */
    float baseline_decay;       /* running quality baselines (per tenant and query region, per
                                   layer and region): b = d b + (1-d) q, and their spreads; also
                                   the rate of the query critics' running means */
    /* loop B */
    int background_thread;      /* 1: the engine's threads run loop A's learning step (a request's
                                   end hands its trajectory over and returns) and loop B (low
                                   priority: SCHED_BATCH, nice 10); 0: loop A in the thread that
                                   ends the request, loop B only by sona_tick/force_learn, and
                                   everything deterministic */
    uint32_t loop_b_threshold;  /* queued trajectories that trigger a cycle */
    uint32_t loop_b_interval_ms;/* a cycle also runs this often when anything is queued; 0 = off */
    uint32_t loop_b_min_batch;  /* a cycle started by loop B (sona_tick, the thread) needs at
                                   least this many (fewer stay queued); sona_force_learn does not */
    uint32_t clusters_per_cycle;/* k of the cycle's k-means++ */
    uint32_t max_patterns;      /* bank capacity (prune lowest value beyond it) */
    /* EWC++ */
    int ewc_enabled;
    float ewc_lambda;           /* stiffness per stored task (lambda_base of sona/ewc.h), capped
                                   so that lr * lambda * F stays below 1; 0..1e6 */
    float fisher_decay;         /* Fisher EMA: F = d F + (1-d) g^2 */
    uint32_t max_tasks;         /* task snapshots kept (up to SONA_EWC_MAX_TASKS) */
    float task_shift_threshold; /* a task boundary (EWC++ snapshot) when the qualities learned
                                   from fall, on a short running average, more than this many
                                   spreads below their baselines (> 0; src/engine/ewc.c) */
    /* loop C / dreams */
    uint32_t dreams_per_cycle;
    uint32_t dream_length;      /* steps per random walk */
    float dream_temperature;    /* softmax temperature over neighbour similarity */
    float dream_jump_prob;      /* probability of a creative jump to a distant pattern */
    float dream_novelty_bonus;  /* logit bonus / (1 + visits) */
    float dream_replay_min_score; /* dreams scoring at least this are replayed into Base-LoRA */
    float merge_cosine;         /* consolidation merges patterns at least this similar */
    float importance_decay;     /* per loop C cycle */
    uint32_t loop_c_interval_ms;/* background loop C period; 0 = only sona_deep_cycle */
    char state_path[256];       /* loop C checkpoints here when non-empty */
    /* batched apply on an accelerator */
    int device_apply;           /* 1: sona_apply_batch and sona_apply_layer_batch run batches of
                                   at least device_min_rows rows as one lora_apply on an
                                   accelerator when one is available (SONA_BACKEND when it names
                                   one, else CUDA, else OpenCL) and the dispatch layer's cost
                                   model says it finishes them first (always, when SONA_BACKEND
                                   names it), with a device copy of the adapters refreshed when
                                   they learn; 0: always the CPU */
    uint32_t device_min_rows;   /* smaller batches stay on the CPU (a device round trip costs more) */
} sona_engine_config;

/* Learning (docs/learning.md; measured by `sona bench --group learning`).
 * Each ended request gives its tenant's Micro-LoRA one signal (sona/signal.h): when the step
 * rewards vary, toward the steps that scored better (their reward-weighted contrast, weight 1);
 * else from the adapter's output y(x) toward where the steps went, weighted by the final
 * quality's advantage over the tenant's running baseline for queries of the query's region, in
 * units of that baseline's spread, clipped to +-max_signal_weight. Loop B gives each Base-LoRA
 * layer one signal per run of steps of that layer the same way (input: the activations before
 * the run), against a baseline per layer and query region. Steps are scale-invariant: a signal
 * of weight w moves y(x) about learning_rate * w of the way along it (a normalised gradient
 * step over A and B), whatever the width, rank or size of x. After every update, an adapter
 * whose output change could pass max_output_change * |x| is scaled back to it, so no reward
 * stream, however hostile, moves an output further than that from its input:
 *     |y(x) - x| <= max_output_change * |x|  for every x and every adapter.
 * EWC++ takes a task snapshot when the qualities learned from fall task_shift_threshold spreads
 * below their running level (a new task, whether on new queries or old ones), or when loop C
 * runs; ewc_lambda trades what the old task keeps against how fast the new one is learned. A
 * snapshot protects the queries its task came from while they stay away: its pull falls with
 * the share of its task's query cells (an 8-bit hash of the query) that the traffic since the
 * last boundary has covered, to none once that share passes 0.9, so that rewards that changed
 * for the same queries (a hostile stream that ended, a changed preference) are learned at the
 * full rate instead of being held to what the old rewards taught. */

/* Value ranges (docs/learning.md, "Value ranges"). Every float that enters learning is checked
 * against a finite range, not only for NaN and Inf: a value far beyond what a model produces
 * cannot be learned from anyway, and squared (gradients, Fisher, variances) it would overflow a
 * float and stop learning for good. The ranges leave room for any real model and keep every
 * square and product the engine forms finite (hidden up to 2^20 included):
 *   SONA_MAX_ACTIVATION: |v| of every query and activation value (real models: O(1..100));
 *   SONA_MAX_QUALITY: |r| of every step reward and final quality (documented scales are
 *     [0, 1] or [-1, 1]; a server may use any unit up to this);
 * Live input beyond them is refused (SONA_E_INVALID, counted in inputs_out_of_range; the request
 * is not learned). A state file is held to the same ranges and to these, which the engine's
 * own learning cannot pass (sona_load refuses beyond: SONA_E_CORRUPT):
 *   SONA_MAX_WEIGHT: |w| of every adapter weight (and EWC++ anchor); each adapter's output
 *     change must also keep within the file's max_output_change (the bound every update of
 *     the saving engine kept; the loading engine's when the file's is 0);
 *   SONA_MAX_FISHER: 0 <= F of every Fisher value (F x weight x tasks stays finite);
 *   baselines: |mean| <= SONA_MAX_QUALITY, 0 <= variance <= (2 SONA_MAX_QUALITY)^2;
 *   query critics: means as activations, model values |v| <= SONA_MAX_WEIGHT;
 *   patterns: centroid values as activations, average quality as qualities;
 *   ids to come (patterns, trajectories): at most SONA_MAX_NEXT_ID (2^62 ids left to give). */
#define SONA_MAX_ACTIVATION 1e6f
#define SONA_MAX_QUALITY 1e6f
#define SONA_MAX_WEIGHT 1e15f
#define SONA_MAX_FISHER 1e20f
#define SONA_MAX_NEXT_ID (UINT64_C(1) << 62)

/* Fills *cfg with the preset's values for width `hidden`. Values (DEFAULT / MAX_THROUGHPUT /
 * MAX_QUALITY / EDGE):
 *   micro_rank 4/1/4/1, micro_alpha = 2*rank, micro_learning_rate 0.25/0.25/0.1/0.25,
 *   micro_apply_every 1/16/1/4, max_tenants 64/256/64/8,
 *   base_rank 8/4/16/4, base_layers 12/12/12/4, base_alpha = 2*rank, base_learning_rate 0.1,
 *   max_signal_weight 3, max_output_change 5, max_steps 16/8/32/8, buffer_capacity
 *   10000/20000/10000/1000, step_storage SONA_STORAGE_Q8 (10,000 queued trajectories of 10 steps
 *   at hidden 256: ~35 MB, F32 ~130 MB), baseline_decay 0.9, background_thread 1/1/1/0,
 *   loop_b_threshold 250/1000/50/200, loop_b_interval_ms 2000/5000/1000/0, loop_b_min_batch
 *   16/64/8/8, clusters_per_cycle 32/32/64/8, max_patterns 100000/100000/100000/5000,
 *   ewc_enabled 1 (EDGE 0), ewc_lambda 0.01, fisher_decay 0.99, max_tasks 5/3/10/2,
 *   task_shift_threshold 1.2, dreams_per_cycle 50/10/100/5, dream_length 15, dream_temperature
 *   0.5, dream_jump_prob 0.1, dream_novelty_bonus 0.5, dream_replay_min_score 0.5,
 *   merge_cosine 0.98, importance_decay 0.95, loop_c_interval_ms 0, state_path "",
 *   device_apply 1, device_min_rows 32. */
SONA_API void sona_engine_config_default(sona_engine_config *cfg, sona_preset preset,
                                         uint32_t hidden);

/* ---- the configuration by name (for bindings) ----------------------------------------------
 * A binding that reads and writes sona_engine_config through these never depends on the
 * struct's layout: allocate sona_engine_config_size() bytes, fill them with
 * sona_engine_config_default, set fields by name, pass the bytes to sona_engine_create. A newer
 * library with more fields (or fields moved) then still reads what the binding meant, and a
 * name it does not know is refused instead of silently misread. Every field is covered, named as
 * in the struct; these functions touch only the cfg given (no engine, thread-safe on distinct
 * configs). Their messages are sona_last_error()'s. A refused call leaves *cfg untouched. */
typedef enum sona_config_kind {
    SONA_CONFIG_INT = 0,    /* an integer field (uint32_t, uint64_t seed, int switches,
                               sona_storage step_storage): get/set as a double holding an integer */
    SONA_CONFIG_FLOAT = 1,  /* a float field: get/set as a double (rounded to float) */
    SONA_CONFIG_STRING = 2  /* state_path: sona_engine_config_get_string / _set_string */
} sona_config_kind;
/* sizeof(sona_engine_config) in this library. */
SONA_API size_t sona_engine_config_size(void);
/* Field i's name (0, 1, ... in a fixed order), and its kind into *kind (may be NULL); NULL past
 * the last field. */
SONA_API const char *sona_engine_config_field(uint32_t i, sona_config_kind *kind);
/* Sets the field called name to value. Refused: NULL cfg or name (SONA_E_NULL); no such field
 * (SONA_E_NOT_FOUND, the message names it); state_path (a string: SONA_E_INVALID); NaN or Inf
 * (SONA_E_NONFINITE); for an integer field a value that is not an integer or is outside its
 * type's range (SONA_E_INVALID): 0..2^32-1 for uint32_t fields, 0..2^64-1 for seed (a double
 * holds every integer up to 2^53 exactly; beyond, only those it can represent), an int's range
 * for background_thread, ewc_enabled and device_apply, 0..2 (a sona_storage) for step_storage;
 * for a float field a magnitude beyond FLT_MAX (SONA_E_INVALID). Only the type's range is
 * checked here: the values an engine accepts together are sona_engine_create's to judge. */
SONA_API sona_status sona_engine_config_set(sona_engine_config *cfg, const char *name, double value);
/* The field called name into *value (exact for every field but a seed above 2^53). Refused as
 * sona_engine_config_set (value NULL: SONA_E_NULL; state_path: SONA_E_INVALID). */
SONA_API sona_status sona_engine_config_get(const sona_engine_config *cfg, const char *name,
                                            double *value);
/* Sets a string field (state_path) to a copy of value: at most sizeof(state_path) - 1 = 255
 * bytes (longer: SONA_E_INVALID); a number field's name is SONA_E_INVALID. */
SONA_API sona_status sona_engine_config_set_string(sona_engine_config *cfg, const char *name,
                                                   const char *value);
/* *value points at the string field inside cfg (valid while cfg is and the field unchanged). */
SONA_API sona_status sona_engine_config_get_string(const sona_engine_config *cfg, const char *name,
                                                   const char **value);

SONA_API sona_status sona_engine_create(const sona_engine_config *cfg, sona_engine **out);
/* Stops the engine's threads (a running cycle finishes first; queued trajectories are freed
 * with the engine: sona_save keeps them) and frees everything; NULL is a no-op. */
SONA_API void sona_engine_destroy(sona_engine *e);
/* The message of the last failed call on this handle, by any thread ("" when none). */
SONA_API const char *sona_engine_last_error(const sona_engine *e);
SONA_API const sona_engine_config *sona_engine_get_config(const sona_engine *e);
/* The backend batched applies go to when they pay there ("cuda", "opencl"), or NULL when they
 * all run on the CPU. The
 * accelerator is looked for on the first call of this or the first batch of device_min_rows
 * rows or more (at creation only when SONA_BACKEND names one), which can take a while. */
SONA_API const char *sona_engine_device(const sona_engine *e);

/* Learning on (1) or off (0). Off: requests are still applied but not recorded (counted as
 * neither recorded nor dropped) and no loop runs. */
SONA_API void sona_engine_set_enabled(sona_engine *e, int enabled);
SONA_API int sona_engine_enabled(const sona_engine *e);

/* ---- tenants (Micro-LoRA adapters) ---------------------------------------------------------- */
/* A new identity adapter; *tenant receives its id. SONA_E_FULL when all slots are in use. */
SONA_API sona_status sona_tenant_create(sona_engine *e, int32_t *tenant);
/* Removes a tenant: its adapter and pending gradients are gone; readers in flight finish with
 * the weights they hold. Tenant 0 cannot be removed (SONA_E_INVALID). */
SONA_API sona_status sona_tenant_remove(sona_engine *e, int32_t tenant);

/* ---- apply ---------------------------------------------------------------------------------- */
/* Apply runs on the CPU from the published weights (never blocked by learning).
 * y = x + delta_tenant(x) through the tenant's Micro-LoRA (-1 = none, y = x). An id that is
 * neither -1 nor a live tenant is SONA_E_NOT_FOUND (no row written). x is not checked for NaN
 * or Inf (the serving path): such a row comes out non-finite, and nothing else changes. */
SONA_API sona_status sona_apply(sona_engine *e, int32_t tenant, const float *x, float *y);
/* In place: x = x + delta_tenant(x). */
SONA_API sona_status sona_apply_inplace(sona_engine *e, int32_t tenant, float *x);
/* n rows, row i through tenant ids[i] (-1 = none); y may equal x. */
SONA_API sona_status sona_apply_batch(sona_engine *e, uint32_t n, const int32_t *ids,
                                      const float *x, float *y);
/* y = x through Base-LoRA layer `layer` (0..base_layers-1); y may equal x. */
SONA_API sona_status sona_apply_layer(sona_engine *e, uint32_t layer, const float *x, float *y);
/* n rows through layer `layer`. */
SONA_API sona_status sona_apply_layer_batch(sona_engine *e, uint32_t layer, uint32_t n,
                                            const float *x, float *y);

/* ---- trajectories (loop A) ------------------------------------------------------------------ */
/* Starts recording one request of `tenant` whose query embedding is query[hidden]. */
SONA_API sona_status sona_request_begin(sona_engine *e, int32_t tenant, const float *query,
                                        sona_request **out);
/* One step: the activations[hidden] after layer `layer`, optional attention weights
 * (n_attention floats), and the step's reward. Steps beyond max_steps are accepted and not kept
 * (but checked: NaN or Inf is SONA_E_NONFINITE there too).
 *
 * layer names the Base-LoRA adapter (sona_apply_layer's) that loop B trains with this step:
 * 0..base_layers-1. A layer at or above base_layers (up to INT32_MAX; above it:
 * SONA_E_INVALID) is accepted, since a model may have more layers than Base-LoRA adapts, and
 * the step is kept and used like any other by loop A (the tenant's Micro-LoRA signal) and by
 * the pattern bank (the trajectory's embedding); Base-LoRA has no adapter for that layer and
 * learns nothing for it. Such steps are not counted apart: which layers exceed base_layers is
 * the caller's own configuration.
 *
 * Attention weights are checked for NaN and Inf (which refuses the step, like bad activations,
 * and the request with it) and then forgotten: they are not kept in the trajectory, not saved,
 * and no loop learns from them. A request learns the same with them or without. */
SONA_API sona_status sona_request_step(sona_request *r, uint32_t layer, const float *activations,
                                       const float *attention, uint32_t n_attention, float reward);
/* Ends the request with its final quality (feedback) and runs loop A: its learning signal is
 * derived and accumulated into the tenant's Micro-LoRA (applied every micro_apply_every
 * signals), then the trajectory is queued for loop B. Frees r in every case. Non-finite data
 * anywhere is refused with SONA_E_NONFINITE and counted in signals_rejected, never learned.
 *
 * With background_thread on, the step runs in the engine's loop-A thread: the end checks the
 * request, hands the trajectory over and returns (when that thread's queue of 1024 is full, the
 * step runs here, as with background_thread 0). The step then follows within about a
 * millisecond; sona_flush, sona_get_stats, sona_tick, sona_save, sona_sync, sona_export_peft and the forced
 * cycles first wait for every request ended before they were called, so what they see or write
 * includes them. A failure of a step run there (out of memory, a signal that overflowed) is
 * counted in signals_rejected and left as the engine's last error instead of returned. A request
 * whose tenant is removed before its step runs (even if a new tenant took the id) is counted in
 * signals_rejected and teaches nothing. */
SONA_API sona_status sona_request_end(sona_request *r, float quality);
/* Drops a request without learning from it; frees r. */
SONA_API void sona_request_abandon(sona_request *r);
/* Waits until loop A has learned from every request ended before the call (background_thread
 * on), then applies every tenant's pending Micro-LoRA gradients now. */
SONA_API sona_status sona_flush(sona_engine *e);

/* ---- loops B and C -------------------------------------------------------------------------- */
/* Runs a loop B cycle in the calling thread if one is due (threshold or interval). */
SONA_API sona_status sona_tick(sona_engine *e);
/* Runs a loop B cycle now on whatever is queued, however few (loop_b_min_batch holds back only
 * the cycles loop B starts by itself: sona_tick, the background thread); waits for a cycle
 * already running, then takes what is queued at that point. Nothing queued: SONA_OK, and
 * nothing is done (no cycle is counted). */
SONA_API sona_status sona_force_learn(sona_engine *e);
/* Runs a loop C cycle now: dreams, evaluation, replay, consolidation, EWC++ consolidation,
 * checkpoint (when state_path is set). */
SONA_API sona_status sona_deep_cycle(sona_engine *e);

/* ---- patterns ------------------------------------------------------------------------------- */
typedef struct sona_pattern_hit {
    uint64_t id;
    float similarity;   /* cosine with the query */
    float avg_quality;
    uint32_t size;      /* trajectories merged into it */
} sona_pattern_hit;
/* The k patterns most similar to query[hidden], best first; *found receives how many. */
SONA_API sona_status sona_find_patterns(sona_engine *e, const float *query, uint32_t k,
                                        sona_pattern_hit *hits, uint32_t *found);
/* Pattern id's statistics (struct sona_pattern of sona/bank.h: size, total weight, quality,
 * access count, times) and, when centroid is not NULL, its centroid (hidden floats, the mean of
 * its trajectories within the bank's storage rounding). For bindings that show a pattern whole
 * (node/). SONA_E_NOT_FOUND once the pattern has been merged away, pruned or evicted. Does not
 * count an access. */
struct sona_pattern;
SONA_API sona_status sona_engine_pattern(sona_engine *e, uint64_t id, struct sona_pattern *p,
                                         float *centroid);

/* ---- statistics ----------------------------------------------------------------------------- */
/* The trajectory counts add up in every result, also while requests end and a loop B cycle
 * runs: trajectories_recorded == trajectories_processed + trajectories_in_cycle +
 * trajectories_queued. A trajectory counts as recorded from the moment it enters loop B's
 * queue, as in cycle from the moment a cycle takes it, and as processed once that cycle is
 * done. */
typedef struct sona_stats {
    uint64_t trajectories_recorded;  /* entered loop B's queue (ended requests, not refused) */
    uint64_t trajectories_processed; /* learned from by loop B cycles that have finished */
    uint64_t trajectories_dropped;   /* refused: buffer full (or, at sona_load, queued in the file
                                        but not restored: see there) */
    uint64_t trajectories_queued;    /* now waiting for loop B (recorded, not yet taken) */
    uint64_t trajectories_in_cycle;  /* now taken by the loop B cycle running (0 between cycles) */
    uint64_t signals_accepted;       /* accumulated into a Micro-LoRA */
    uint64_t signals_rejected;       /* ended requests without a signal: non-finite data, a
                                        value out of range, no step, a zero direction, or a
                                        tenant removed meanwhile */
    uint64_t micro_updates;          /* Micro-LoRA steps applied */
    uint64_t base_updates;           /* Base-LoRA steps applied */
    uint64_t patterns;               /* in the bank now */
    /* EWC++ (0 with ewc_enabled 0). Both cover the same adapter sets: Base-LoRA and every
     * tenant's Micro-LoRA. */
    uint64_t tasks;                  /* task snapshots held now, summed over Base-LoRA and the
                                        live tenants (each set holds at most max_tasks: beyond,
                                        its two oldest are merged into one) */
    uint64_t task_boundaries;        /* task boundaries detected since creation (a set's
                                        gradient-norm z-score above task_shift_threshold), over
                                        Base-LoRA and every tenant, removed ones included; each
                                        stored a snapshot. Loop C stores one per set without a
                                        boundary (consolidation), so tasks may exceed it */
    uint64_t loop_b_cycles, loop_c_cycles;
    uint64_t dreams, dreams_replayed; /* dream walks and their definition: src/core/patterns/dream.h */
    uint64_t patterns_merged;        /* near-duplicates merged away by loop C consolidation */
    uint64_t last_loop_b_us, last_loop_c_us;
    uint64_t device_batches;         /* apply batches sent to the accelerator */
    uint64_t device_fallbacks;       /* of those, batches the device failed and the CPU redid */
    uint32_t tenants;                /* live tenants */
    float quality_baseline;          /* running average of final quality */
    float last_phi;                  /* integration score of the pattern graph at the last loop C:
                                        Phi = (|C| / |V|) * mean over the HNSW level-0 edges (u, v)
                                        of (1 + cos(u, v)) / 2, C the largest connected component,
                                        V the live patterns; in [0, 1], 0 without edges */
    uint64_t inputs_out_of_range;    /* calls refused for a finite value beyond its range (see
                                        SONA_MAX_ACTIVATION): a query at sona_request_begin, a
                                        step, a final quality (that request's end counts in
                                        signals_rejected too). Since creation, not saved */
} sona_stats;
/* Counters are exact and monotonic (except the "now" fields). Each field is read on its own,
 * not all at one instant; the trajectory counts add up all the same (see sona_stats). Every
 * request ended before the call is counted: with background_thread on, the call first waits
 * for loop A's thread to learn from them (usually under a millisecond; when the traffic
 * outruns loop A, up to its queue of 1 024 steps). */
SONA_API sona_status sona_get_stats(sona_engine *e, sona_stats *out);

/* ---- persistence ---------------------------------------------------------------------------- */
/* Writes everything learned (config, adapters, Base-LoRA, EWC++ state: tasks, running Fisher,
 * boundary detector; patterns, the pattern bank's counters and next pattern id, loop C's dream
 * visit counts, baselines, counters) and the trajectories queued for loop B (each as recorded:
 * its storage format and encoded values, rewards, layers, quality) to path: temp file in the
 * same directory, fsync, rename, fsync dir. Nothing is lost on a restart, and there is no need
 * to run loop B before saving. The queue is looked at, not taken: requests may go on recording
 * meanwhile (those that come after the snapshot are not in the file), and the file's counters
 * agree with the queue it holds (recorded == processed + queued). A save does not wait for a
 * running loop B or C cycle: it writes the state from before that cycle (Base-LoRA, EWC++,
 * patterns, dream visits and the cycles' counters as the cycle found them; the bank's access
 * counts as the previous cycle left them) with the cycle's batch still queued, ahead of what was
 * queued since, and tenants and the request path's counters as they are; a load learns the
 * batch again. With no cycle running, a cycle that starts waits while the state is copied into
 * memory, not while it is written. Saves from several threads to one path leave one of their
 * states, whole (the last rename wins, which need not be the last state taken).
 *
 * After sona_load, identical to the saved engine: every counter (sona_get_stats' but the
 * timings last_loop_*_us, device_* and inputs_out_of_range, which describe the process; the bank's), the adapters
 * and their EWC++ state, each tenant's Micro-LoRA gradients accumulated since its last apply
 * (micro_apply_every > 1) with its signal count, the patterns (ids, statistics, times, stored centroids bit for bit),
 * the queue, the ids to come (trajectories, patterns) and the seeds of the next k-means (the
 * bank's extraction count) and dreams (loop C's cycle count). Not identical: the HNSW graph over
 * the patterns is not saved but rebuilt by inserting them in bank order, while the original's
 * grew with its history (nodes linked from centroids before storage rounding, moved by merges,
 * removed by pruning), so links, node levels and entry point may differ (saving the level RNG
 * would not help: the graph's history is gone). Searches that compare every pattern give the
 * same answers: those of a bank whose graph has had at most 2M + 1 = 33 nodes (M = 16; live and
 * retired) since it was last built (created, loaded, consolidated by loop C): no link list has
 * filled, so every node is linked both ways, and ef_search (50) exceeds the nodes, so a search
 * visits them all. Then loop B learns bit for bit what the saved engine learns
 * (tests/test_engine.c). On larger banks an approximate search may find another pattern, and
 * what walks the graph may differ: loop C's dreams, its consolidation (which merges graph
 * neighbours) and Phi. Not saved: rows a failed extraction left in the bank's queue, and runtime
 * state (timers, the device copy of the adapters, the trajectory pool). */
SONA_API sona_status sona_save(sona_engine *e, const char *path);
/* Replaces e's learned state with the file's, its queue included: e's own queued trajectories
 * are discarded, the file's are queued, oldest first and each in its own storage format, for the
 * next loop B cycle, and trajectory ids continue from the file's. Of a queue longer than e's
 * buffer_capacity the oldest are kept (as a full queue refuses the newest) and the rest counted
 * in trajectories_dropped instead of trajectories_recorded. Format version 1 files (written
 * before the queue was saved) load with an empty queue, the trajectories they had queued
 * counted as dropped the same way: recorded == processed + queued holds after every load.
 * Version 1 and 2 files had not kept the bank's counters (its next pattern id becomes the
 * largest pattern id + 1), the dream visits or the EWC++ detectors: they start afresh.
 * A truncated or corrupt file is refused with SONA_E_CORRUPT, and so is one holding a value
 * beyond the ranges above SONA_MAX_ACTIVATION (a file that loads keeps working: it holds nothing
 * the engine's own learning could not have reached). Memory: the file is read whole, then what
 * it holds is built before anything of e changes; every count in it is checked against the bytes
 * left before anything is allocated for it. A load needs at most the file's size, a second copy
 * of e's learned state (adapters with their gradient and EWC++ buffers: fixed by e's shape) and
 * the patterns and queue the file holds (in proportion to their bytes in it). another format version with
 * SONA_E_VERSION, another hidden width or shape with SONA_E_SIZE; e is untouched on every
 * failure. */
SONA_API sona_status sona_load(sona_engine *e, const char *path);
/* Fills *cfg with the configuration the state file at path was saved with: the default preset's
 * values for what the file does not hold (state_path "", fields newer than the file). With it a
 * process can create an engine that loads the file without knowing its shape (a tool, a fresh
 * node); change what differs on this machine (background_thread, device_apply) before creating.
 * The file's header and section checksums are checked, and the shape it names (hidden, ranks,
 * layers) against the bytes its TENA and BASE sections hold: a file too small for the adapters
 * its shape needs is refused (SONA_E_CORRUPT) before an engine of that shape is ever created, so
 * an engine created from *cfg needs adapter memory in proportion to the file. Its other
 * buffers are what the configuration names, whatever the file's size: buffer_capacity cells of
 * 16 bytes allocated at creation (up to 2^32 - 1), max_tenants slots (up to 65536): a process
 * that only reads the adapters (`sona export-peft`) sets buffer_capacity to 1. *cfg is untouched
 * on failure. The message
 * is sona_last_error()'s. */
SONA_API sona_status sona_state_config(const char *path, sona_engine_config *cfg);
/* Same as sona_load from a memory buffer (the fuzz target's entry point). */
SONA_API sona_status sona_load_buffer(sona_engine *e, const void *data, size_t len);

/* ---- export for other servers --------------------------------------------------------------- */
/* What sona_export_peft writes and where each adapter goes. */
typedef struct sona_peft_config {
    /* Layer l's module path: the text with its one "%u" replaced by l (no other '%'). Its last
     * dot-separated part becomes adapter_config.json's target_modules. */
    const char *module_format;
    const char *base_model; /* adapter_config.json's base_model_name_or_path; "" = left out */
    int32_t tenant;         /* -1: the Base-LoRA, a module per layer; >= 0: that tenant's
                               Micro-LoRA, as one module, module_format's %u = micro_layer */
    uint32_t micro_layer;   /* the layer whose module a tenant's Micro-LoRA is exported to */
    uint32_t model_hidden;  /* the target modules' input and output width in the model: an
                               export whose width is another is refused (SONA_E_SIZE); 0 = not
                               checked */
} sona_peft_config;
/* module_format "base_model.model.model.layers.%u.self_attn.o_proj", base_model "", tenant -1,
 * micro_layer 0, model_hidden 0. */
SONA_API void sona_peft_config_default(sona_peft_config *cfg);
/* Writes the Base-LoRA (or a tenant's Micro-LoRA) as a PEFT LoRA adapter that vLLM, LoRAX and
 * Hugging Face PEFT load: dir/adapter_model.safetensors (per layer l, "<module l>.lora_A.weight"
 * F32 [rank, hidden] and "<module l>.lora_B.weight" F32 [hidden, rank]) and
 * dir/adapter_config.json (peft_type LORA, r = the rank, lora_alpha = the adapter's alpha: the
 * same scale alpha / r). Layer l's delta s B (A x) is then added to that module's output, so
 * name the hidden x hidden projection whose input is what sona_apply_layer(l) (or sona_apply,
 * for a tenant) is given. Servers hot-load adapters by directory, so the directory is published
 * whole: both files are written to a new directory beside it, synced, and that directory is
 * renamed into place (atomically exchanged with an existing one on Linux, whose old contents
 * are then removed): a reader sees the old pair or the new pair, never one of each. An existing
 * dir must be a directory holding at most those two files (anything else: SONA_E_INVALID, dir
 * untouched). cfg NULL = the defaults. The weights are one snapshot between loop B cycles (a
 * tenant's: between its updates). */
SONA_API sona_status sona_export_peft(sona_engine *e, const char *dir, const sona_peft_config *cfg);

#ifdef __cplusplus
}
#endif
#endif /* SONA_ENGINE_H */
