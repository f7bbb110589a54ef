/* Loop B (background) and the engine's loop thread. A cycle takes the queued trajectories
 * (fewer than the minimum stay queued), updates the pattern bank, trains Base-LoRA per layer with
 * the advantage against the matched pattern's average quality, applies EWC++ (Fisher, penalty,
 * boundary check) and publishes the new Base-LoRA for readers. */
#include "core/engine_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void eng_kick(sona_engine *e)
{
    pthread_mutex_lock(&e->wake_mu);
    e->kicked = 1;
    pthread_cond_signal(&e->wake_cv);
    pthread_mutex_unlock(&e->wake_mu);
}

/* Base-LoRA signals of one trajectory: step s of layer l learns x = the previous step's
 * activations (the query for the first step), delta = its own activation direction, weight w. */
static sona_status base_signals(sona_engine *e, const eng_traj *t, float w, float *delta)
{
    const size_t H = e->cfg.hidden;
    for (uint32_t s = 0; s < t->steps; s++) {
        const uint32_t layer = t->layers[s];
        if (layer >= e->cfg.base_layers)
            continue;
        const float *a = t->acts + s * H, *x = s ? t->acts + (s - 1) * H : t->query;
        double n2 = 0;
        for (size_t h = 0; h < H; h++)
            n2 += (double)a[h] * a[h];
        if (n2 <= 1e-30)
            continue;
        const float inv = (float)(1.0 / sqrt(n2));
        for (size_t h = 0; h < H; h++)
            delta[h] = a[h] * inv;
        sona_status st = sona_lora_accumulate(e->base, (int32_t)layer, x, delta, w);
        if (st != SONA_OK)
            return st;
    }
    return SONA_OK;
}

sona_status eng_base_train(sona_engine *e, eng_traj *const *trajs, uint32_t n, const float *reference)
{
    float *delta = malloc(e->cfg.hidden * sizeof *delta);
    if (!delta)
        return SONA_E_NOMEM;
    sona_status st = SONA_OK;
    for (uint32_t i = 0; i < n && st == SONA_OK; i++)
        st = base_signals(e, trajs[i], trajs[i]->quality - reference[i], delta);
    free(delta);
    if (st == SONA_OK && sona_lora_pending(e->base) > 0)
        st = eng_train_and_publish(e, e->base, e->base_ewc, &e->base_slot);
    return st;
}

sona_status eng_loop_b_cycle(sona_engine *e, uint32_t min_batch)
{
    pthread_mutex_lock(&e->cycle_mu);
    const uint64_t t0 = eng_now_us();
    uint32_t queued = eng_queue_len(&e->queue);
    if (queued == 0 || queued < min_batch) {
        pthread_mutex_unlock(&e->cycle_mu);
        return SONA_E_EMPTY;
    }
    eng_traj **batch = malloc(queued * sizeof *batch);
    float *reference = malloc(queued * sizeof *reference);
    if (!batch || !reference) {
        free(batch);
        free(reference);
        pthread_mutex_unlock(&e->cycle_mu);
        return eng_fail(e, SONA_E_NOMEM, "loop B: out of memory");
    }
    const uint32_t n = eng_queue_pop(&e->queue, batch, queued);
    /* From here the batch is the cycle's: it is learned from (and counted) whatever happens. */
    sona_status st = eng_bank_update(e, batch, n, reference);
    if (st == SONA_OK)
        st = eng_base_train(e, batch, n, reference);
    for (uint32_t i = 0; i < n; i++)
        eng_traj_free(batch[i]);
    free(batch);
    free(reference);
    atomic_fetch_add(&e->n.processed, n);
    atomic_fetch_add(&e->n.b_cycles, 1);
    atomic_store(&e->n.last_b_us, eng_now_us() - t0);
    atomic_store(&e->last_cycle_ms, eng_now_us() / 1000);
    pthread_mutex_unlock(&e->cycle_mu);
    return st == SONA_OK ? SONA_OK : eng_fail(e, st, "loop B cycle failed: %s", sona_last_error());
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
    const uint32_t queued = eng_queue_len(&e->queue);
    sona_status st = SONA_OK;
    if (queued >= e->cfg.loop_b_threshold || (queued && interval_due(e->last_cycle_ms, e->cfg.loop_b_interval_ms)))
        st = eng_loop_b_cycle(e, e->cfg.loop_b_min_batch);
    if (st == SONA_E_EMPTY)
        st = SONA_OK;
    if (st == SONA_OK && interval_due(e->last_deep_ms, e->cfg.loop_c_interval_ms))
        st = eng_loop_c_cycle(e);
    return st;
}

sona_status sona_force_learn(sona_engine *e)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "sona_force_learn: engine is NULL");
    sona_status st = eng_loop_b_cycle(e, e->cfg.loop_b_min_batch);
    if (st == SONA_E_EMPTY)
        return eng_fail(e, st, "sona_force_learn: %u trajectories queued, the minimum is %u; they stay queued",
                        eng_queue_len(&e->queue), e->cfg.loop_b_min_batch);
    return st;
}

sona_status sona_deep_cycle(sona_engine *e)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "sona_deep_cycle: engine is NULL");
    return eng_loop_c_cycle(e);
}

static void *loop_thread(void *arg)
{
    sona_engine *e = arg;
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
                eng_loop_b_cycle(e, e->cfg.loop_b_min_batch);
            sona_tick(e);
        }
        pthread_mutex_lock(&e->wake_mu);
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
