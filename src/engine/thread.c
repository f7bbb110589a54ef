/* SPDX-License-Identifier: MIT */
/* When the loops run: sona_tick's schedule (loop B at loop_b_threshold queued trajectories or
 * every loop_b_interval_ms, loop C every loop_c_interval_ms, then a checkpoint), the forced
 * cycles, and the engine's loop thread that runs that schedule by itself, woken early by a
 * request that fills the threshold. */
#include "engine/thread.h"
#include "engine/loop_a.h"
#include "engine/loop_b.h"
#include "engine/loop_c.h"
#include "engine/persist.h"

#include "dispatch/dispatch.h"

#include <time.h>

static int interval_due(uint64_t last_ms, uint32_t interval_ms)
{
    return interval_ms && sona_monotonic_us() / 1000 >= last_ms + interval_ms;
}

/* Loop C, then the checkpoint when a state path is set. */
static sona_status deep_cycle(sona_engine *e)
{
    eng_loop_a_drain(e); /* the checkpoint holds every request ended before it */
    const uint64_t t0 = sona_monotonic_us();
    sona_status st = eng_loop_c_cycle(e);
    if (st == SONA_OK && e->cfg.state_path[0])
        st = eng_checkpoint(e);
    atomic_store(&e->n.last_c_us, sona_monotonic_us() - t0);
    atomic_store(&e->last_deep_ms, sona_monotonic_us() / 1000);
    return st;
}

sona_status sona_tick(sona_engine *e)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "%s: engine is NULL", __func__);
    if (!atomic_load(&e->enabled))
        return SONA_OK;
    eng_loop_a_drain(e); /* requests ended before the call count toward the threshold */
    const uint32_t queued = sona_trajectory_buffer_len(e->buffer);
    sona_status st = SONA_OK;
    if (queued >= e->cfg.loop_b_threshold || (queued && interval_due(e->last_cycle_ms, e->cfg.loop_b_interval_ms)))
        st = eng_loop_b_cycle(e, e->cfg.loop_b_min_batch, eng_cycle_cap(&e->cfg));
    if (st == SONA_E_EMPTY)
        st = SONA_OK;
    if (st == SONA_OK && interval_due(e->last_deep_ms, e->cfg.loop_c_interval_ms))
        st = deep_cycle(e);
    return st;
}

/* Forced: one queued trajectory is enough (loop_b_min_batch is for the cycles loop B starts by
 * itself); none is nothing to do, not an error. */
sona_status sona_force_learn(sona_engine *e)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "%s: engine is NULL", __func__);
    eng_loop_a_drain(e); /* every request ended before this call reaches the queue */
    const sona_status st = eng_loop_b_cycle(e, 1, 0);
    return st == SONA_E_EMPTY ? SONA_OK : st;
}

sona_status sona_deep_cycle(sona_engine *e)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "%s: engine is NULL", __func__);
    return deep_cycle(e);
}

/* Loop B must not take the serving threads' CPU: a batch thread at nice 10, so it runs on a core
 * the queries leave idle and, when it shares one, takes ~10 % of it. Not nice 19: at ~1.5 % it
 * fell behind (1 cycle instead of 3 in query_throughput on a busy machine), the trajectory pool
 * ran dry and every request paid for fresh memory. */
enum { LOOP_B_NICE = 10 };

/* Loop B's learning ops run on the adapters' home backend (the one sona_lora_create picks, the
 * device SONA_BACKEND names): keep this thread on the host CPUs nearest that device, where hwloc
 * can tell. (A Base-LoRA that later follows the engine's accelerator, eng_base_follow_device,
 * leaves the thread where it is.) */
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
    eng_thread_lower_priority(LOOP_B_NICE);
    place_near_learning_device();
    pthread_mutex_lock(&e->wake_mu);
    while (!e->stop) {
        uint32_t wait_ms = e->cfg.loop_b_interval_ms ? e->cfg.loop_b_interval_ms : 1000;
        if (e->cfg.loop_c_interval_ms && e->cfg.loop_c_interval_ms < wait_ms)
            wait_ms = e->cfg.loop_c_interval_ms;
        if (!e->kicked) {
            const struct timespec until = sona_deadline_after_us(CLOCK_REALTIME, 1000u * (uint64_t)wait_ms);
            pthread_cond_timedwait(&e->wake_cv, &e->wake_mu, &until);
        }
        if (e->stop)
            break;
        const int kicked = e->kicked;
        e->kicked = 0;
        pthread_mutex_unlock(&e->wake_mu);
        if (atomic_load(&e->enabled)) {
            if (kicked)
                eng_loop_b_cycle(e, e->cfg.loop_b_min_batch, eng_cycle_cap(&e->cfg));
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
    atomic_store(&e->last_cycle_ms, sona_monotonic_us() / 1000);
    atomic_store(&e->last_deep_ms, sona_monotonic_us() / 1000);
    if (!e->cfg.background_thread)
        return SONA_OK;
    /* Loop A's thread first: the loop thread's ticks wait on its queue. */
    const sona_status st = eng_loop_a_create(e);
    if (st != SONA_OK)
        return st;
    if (pthread_create(&e->thread, NULL, loop_thread, e) != 0)
        return SONA_E_NOMEM;
    e->thread_started = 1;
    return SONA_OK;
}

void eng_threads_stop(sona_engine *e)
{
    /* The loop thread first: its ticks and checkpoints wait on loop A's queue. Loop A's thread
     * then learns what it was handed (its kicks of the stopped loop thread are harmless). */
    if (e->thread_started) {
        pthread_mutex_lock(&e->wake_mu);
        e->stop = 1;
        pthread_cond_signal(&e->wake_cv);
        pthread_mutex_unlock(&e->wake_mu);
        pthread_join(e->thread, NULL);
        e->thread_started = 0;
    }
    eng_loop_a_destroy(e);
}
