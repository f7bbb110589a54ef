/* SPDX-License-Identifier: MIT */
/* Loop B (background) and the engine's loop thread. A cycle takes the queued trajectories (one
 * loop B starts by itself leaves fewer than loop_b_min_batch queued and takes at most
 * eng_cycle_cap; a forced one takes all), decodes each once, updates the pattern bank, trains
 * Base-LoRA per layer (a signal per run of one layer's steps, against the layer's baseline for
 * the query's region), applies EWC++ (Fisher, penalty, task-shift check), bounds the output
 * change and publishes the new Base-LoRA for readers. */
#define _GNU_SOURCE /* SCHED_BATCH */
#include "core/adapt/lora_internal.h"
#include "dispatch/dispatch.h"
#include "engine/engine_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <sched.h>
#include <sys/resource.h>
#endif

void eng_kick(sona_engine *e)
{
    pthread_mutex_lock(&e->wake_mu);
    e->kicked = 1;
    pthread_cond_signal(&e->wake_cv);
    pthread_mutex_unlock(&e->wake_mu);
}

/* Base-LoRA signals of one trajectory. Its steps are taken in runs of one layer: a run's steps
 * are alternatives explored from one input, the activations before the run (the query for the
 * first), and make one signal of the run's layer, by the rule of sona/signal.h: the reward
 * contrast between them, or (equal rewards, one step) their displacement from what the layer's
 * adapter makes of the input now, weighted by the run's reward against its layer's baseline for
 * the query's region (or by w, when w is not NaN). Each signal is normalised so that
 * base_learning_rate is the fraction of the way it moves the layer's output. One forward, one
 * normalisation and one accumulate call for the whole trajectory. Caller holds cycle_mu (the
 * rows are the engine's scratch). */
sona_status eng_base_accumulate(sona_engine *e, const float *query, const eng_steps *s, float w)
{
    const size_t H = e->cfg.hidden;
    if (s->steps == 0)
        return SONA_OK;
    /* Rows x, y (then delta), weights, adapter ids and each run's first step, in one block the
     * engine keeps between calls. */
    const size_t bytes = (2 * H + 1) * s->steps * sizeof(float) + 2 * s->steps * sizeof(int32_t);
    float *x = sona_scratch_get(&e->base_rows, bytes);
    if (!x)
        return SONA_E_NOMEM;
    float *y = x + H * s->steps, *wt = y + H * s->steps;
    int32_t *ids = (int32_t *)(void *)(wt + s->steps), *first = ids + s->steps;
    uint32_t rows = 0;
    for (uint32_t i = 0; i < s->steps;) {
        uint32_t j = i + 1;
        while (j < s->steps && s->layers[j] == s->layers[i])
            j++;
        const int32_t layer = s->layers[i];
        if (layer >= 0 && (uint32_t)layer < e->cfg.base_layers) {
            memcpy(x + rows * H, i ? s->acts + (i - 1) * H : query, H * sizeof *x);
            first[rows] = (int32_t)i;
            ids[rows++] = layer;
        }
        i = j;
    }
    if (rows == 0)
        return SONA_OK;
    sona_status st = sona_lora_forward_batch(e->base, rows, ids, x, y);
    const uint32_t region = eng_region(e, query);
    sona_signal_options opt;
    sona_signal_options_default(&opt);
    for (uint32_t r = 0; r < rows && st == SONA_OK; r++) {
        const uint32_t i = (uint32_t)first[r];
        uint32_t n = 1;
        double mean = s->rewards[i];
        while (i + n < s->steps && s->layers[i + n] == ids[r])
            mean += s->rewards[i + n++];
        opt.output = y + r * H;
        opt.baseline = &e->base_baselines[(size_t)ids[r] * ENG_REGIONS + region];
        /* x stays where it is; delta replaces y (the builder reads the output before writing). */
        st = sona_signal_compute_opts(e->signals, x + r * H, (uint32_t)H, s->acts + (size_t)i * H, s->rewards + i, n,
                                      (float)(mean / n), &opt, x + r * H, y + r * H, &wt[r]);
        if (st == SONA_E_INVALID) { /* no direction: nothing to learn from this run */
            wt[r] = 0.0f;
            st = SONA_OK;
        } else if (st == SONA_OK && !isnan(w)) {
            wt[r] = w;
        }
    }
    if (st == SONA_OK)
        st = sona_lora_normalize_signals(e->base, rows, ids, x, y, wt);
    return st == SONA_OK ? sona_lora_accumulate_batch(e->base, rows, ids, x, y, wt) : st;
}

/* Learns from a drained batch. Each trajectory is decoded once and serves both the pattern bank
 * (its embedding) and Base-LoRA (a signal per step); then the bank takes the batch and the new
 * Base-LoRA is published. Caller holds cycle_mu. */
static sona_status learn_batch(sona_engine *e, sona_trajectory *const *batch, uint32_t n)
{
    const uint32_t H = e->cfg.hidden;
    eng_steps steps = {0};
    eng_bank_batch rows;
    sona_status st = eng_bank_batch_init(e, &rows, n);
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        if ((st = eng_steps_gather(&steps, batch[i], H)) != SONA_OK)
            break;
        eng_bank_add_row(e, &rows, &steps, sona_trajectory_quality(batch[i]));
        eng_ewc_note_quality(e->base_ewc, sona_trajectory_quality(batch[i]));
        st = eng_base_accumulate(e, steps.query, &steps, NAN);
    }
    eng_steps_free(&steps);
    /* The bank and Base-LoRA are independent: a failure of one does not hold the other back. */
    const sona_status bank_st = st == SONA_OK ? eng_bank_commit(e, &rows) : SONA_OK;
    eng_bank_batch_done(e, &rows);
    if (st == SONA_OK && sona_lora_pending(e->base) > 0)
        st = eng_train_and_publish(e, e->base, e->base_ewc, &e->base_slot);
    return bank_st != SONA_OK ? bank_st : st;
}

sona_status eng_loop_b_cycle(sona_engine *e, uint32_t min_batch, uint32_t max_batch)
{
    pthread_mutex_lock(&e->cycle_mu);
    const uint64_t t0 = eng_now_us();
    uint32_t queued = sona_trajectory_buffer_len(e->buffer);
    if (queued == 0 || queued < min_batch) {
        pthread_mutex_unlock(&e->cycle_mu);
        return SONA_E_EMPTY;
    }
    if (max_batch && queued > max_batch)
        queued = max_batch; /* the oldest; the rest waits for the next cycle */
    sona_trajectory **batch = malloc(queued * sizeof *batch);
    uint32_t n = 0;
    if (!batch || sona_trajectory_buffer_drain(e->buffer, batch, queued, &n) != SONA_OK) {
        free(batch);
        pthread_mutex_unlock(&e->cycle_mu);
        return eng_fail(e, SONA_E_NOMEM, "loop B: out of memory");
    }
    /* From here the batch is the cycle's: it is learned from (and counted) whatever happens.
     * In the stats it moves from queued to in cycle now, and to processed at the end. */
    atomic_fetch_add(&e->n.taken, n);
    const sona_status st = learn_batch(e, batch, n);
    for (uint32_t i = 0; i < n; i++)
        eng_traj_recycle(e, batch[i]);
    free(batch);
    atomic_fetch_add(&e->n.processed, n);
    atomic_fetch_add(&e->n.b_cycles, 1);
    atomic_store(&e->n.tasks, eng_ewc_tasks(e->base_ewc));
    atomic_store(&e->n.last_b_us, eng_now_us() - t0);
    atomic_store(&e->last_cycle_ms, eng_now_us() / 1000);
    pthread_mutex_unlock(&e->cycle_mu);
    return st == SONA_OK ? SONA_OK : eng_fail(e, st, "loop B cycle failed: %s", sona_last_error());
}

uint32_t eng_cycle_cap(const sona_engine *e)
{
    const uint64_t cap = 4ull * e->cfg.loop_b_threshold;
    return cap < e->cfg.loop_b_min_batch ? e->cfg.loop_b_min_batch : cap > UINT32_MAX ? UINT32_MAX : (uint32_t)cap;
}

static int interval_due(uint64_t last_ms, uint32_t interval_ms)
{
    return interval_ms && eng_now_us() / 1000 >= last_ms + interval_ms;
}

sona_status sona_tick(sona_engine *e)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "sona_tick: engine is NULL");
    if (!atomic_load(&e->enabled))
        return SONA_OK;
    const uint32_t queued = sona_trajectory_buffer_len(e->buffer);
    sona_status st = SONA_OK;
    if (queued >= e->cfg.loop_b_threshold || (queued && interval_due(e->last_cycle_ms, e->cfg.loop_b_interval_ms)))
        st = eng_loop_b_cycle(e, e->cfg.loop_b_min_batch, eng_cycle_cap(e));
    if (st == SONA_E_EMPTY)
        st = SONA_OK;
    if (st == SONA_OK && interval_due(e->last_deep_ms, e->cfg.loop_c_interval_ms))
        st = eng_loop_c_cycle(e);
    return st;
}

/* Forced: one queued trajectory is enough (loop_b_min_batch is for the cycles loop B starts by
 * itself); none is nothing to do, not an error. */
sona_status sona_force_learn(sona_engine *e)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "sona_force_learn: engine is NULL");
    const sona_status st = eng_loop_b_cycle(e, 1, 0);
    return st == SONA_E_EMPTY ? SONA_OK : st;
}

sona_status sona_deep_cycle(sona_engine *e)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "sona_deep_cycle: engine is NULL");
    return eng_loop_c_cycle(e);
}

/* Loop B must not take the serving threads' CPU: it is a batch thread (never preempts a query on
 * wake-up) at nice 10, so it runs on a core the queries leave idle and, when it shares one, takes
 * ~10 % of it. Not nice 19: at ~1.5 % it fell behind (1 cycle instead of 3 in query_throughput on
 * a busy machine), the trajectory pool ran dry and every request paid for fresh memory.
 * Best effort: failures leave the defaults. */
static void lower_own_priority(void)
{
#ifdef __linux__
    const struct sched_param p = {.sched_priority = 0};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &p);
    setpriority(PRIO_PROCESS, 0, 10); /* who 0: the calling thread (nice is per thread on Linux) */
#endif
}

/* Loop B's learning ops run on the adapters' home backend (the one sona_lora_create picks):
 * keep this thread on the host CPUs nearest that device, where hwloc can tell. */
static void place_near_learning_device(void)
{
    const sona_backend *be;
    char why[256];
    if (sona_backend_default(&be, why, sizeof why) == SONA_OK && be->bind_host_thread)
        be->bind_host_thread(be->ctx); /* best effort, like the priority */
}

static void *loop_thread(void *arg)
{
    sona_engine *e = arg;
    lower_own_priority();
    place_near_learning_device();
    pthread_mutex_lock(&e->wake_mu);
    while (!e->stop) {
        uint32_t wait_ms = e->cfg.loop_b_interval_ms ? e->cfg.loop_b_interval_ms : 1000;
        if (e->cfg.loop_c_interval_ms && e->cfg.loop_c_interval_ms < wait_ms)
            wait_ms = e->cfg.loop_c_interval_ms;
        if (!e->kicked) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += wait_ms / 1000;
            ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&e->wake_cv, &e->wake_mu, &ts);
        }
        if (e->stop)
            break;
        const int kicked = e->kicked;
        e->kicked = 0;
        pthread_mutex_unlock(&e->wake_mu);
        if (atomic_load(&e->enabled)) {
            if (kicked)
                eng_loop_b_cycle(e, e->cfg.loop_b_min_batch, eng_cycle_cap(e));
            sona_tick(e);
        }
        pthread_mutex_lock(&e->wake_mu);
        /* A capped cycle left a full threshold queued: the next one runs at once. */
        if (atomic_load(&e->enabled) && sona_trajectory_buffer_len(e->buffer) >= e->cfg.loop_b_threshold)
            e->kicked = 1;
    }
    pthread_mutex_unlock(&e->wake_mu);
    return NULL;
}

sona_status eng_threads_start(sona_engine *e)
{
    atomic_store(&e->last_cycle_ms, eng_now_us() / 1000);
    atomic_store(&e->last_deep_ms, eng_now_us() / 1000);
    if (!e->cfg.background_thread)
        return SONA_OK;
    if (pthread_create(&e->thread, NULL, loop_thread, e) != 0)
        return SONA_E_NOMEM;
    e->thread_started = 1;
    return SONA_OK;
}

void eng_threads_stop(sona_engine *e)
{
    if (!e->thread_started)
        return;
    pthread_mutex_lock(&e->wake_mu);
    e->stop = 1;
    pthread_cond_signal(&e->wake_cv);
    pthread_mutex_unlock(&e->wake_mu);
    pthread_join(e->thread, NULL);
    e->thread_started = 0;
}
