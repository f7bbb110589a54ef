/* SPDX-License-Identifier: MIT */
/* The request path and loop A: a request records its steps into a trajectory; its end learns
 * from it in the tenant's Micro-LoRA (loop A) and queues it for loop B. With background_thread
 * on, loop A's step runs in the engine's loop-A thread: the end hands the trajectory over and
 * returns (a caller's thread keeps only the recording); with it off, or when the hand-over
 * queue is full, the step runs in the caller's thread, as it always did. */
#include "engine/base.h"
#include "engine/inspect.h"
#include "engine/loop_a.h"

#include "core/adapt/critic.h"
#include "core/adapt/lora_internal.h"
#include "engine/config.h"
#include "core/memory/trajectory_internal.h"
#include "dispatch/vecmath.h"

#include <math.h>
#include <stdlib.h>

enum { POISON_NONE, POISON_NONFINITE, POISON_RANGE, POISON_OTHER };

struct sona_request {
    sona_engine *e;
    sona_trajectory *t;
    int32_t tenant;
    int poisoned; /* a step was refused: the request will not be learned (POISON_*) */
    uint64_t generation; /* the tenant's adapter when the request began (eng_tenant.generation) */
};

/* An ended trajectory waiting for loop A's step. */
typedef struct eng_ended {
    sona_trajectory *t;
    int32_t tenant;
    uint64_t generation;
} eng_ended;

/* Loop A's thread and its hand-over queue (a ring under mu). Tickets make sona_flush wait for
 * what was handed over before it was called, not for a queue that busy callers keep filling. */
enum { LOOP_A_QUEUE = 1024 };
struct eng_loop_a {
    pthread_mutex_t mu;
    pthread_cond_t wake, done_cv;
    eng_ended ring[LOOP_A_QUEUE];
    uint32_t head, count;
    uint64_t handed, done; /* tickets: trajectories handed over, and learned from */
    int stop, sleeping, waiters; /* waiters: drains waiting on done_cv */
    int running, failed;   /* the thread started (by the first hand-over); could not start */
    atomic_uint_fast64_t in_callers; /* steps run by their callers: the queue was full */
    void (*hook)(void *);  /* tests (inspect.h): called before each step this thread runs */
    void *hook_arg;
    pthread_t thread;
};

/* A request object no longer used: kept as the engine's spare unless one is kept already. */
static void request_release(sona_request *r)
{
    sona_request *none = NULL;
    if (!atomic_compare_exchange_strong(&r->e->spare_request, &none, r))
        free(r);
}

sona_status sona_request_begin(sona_engine *e, int32_t tenant, const float *query, sona_request **out)
{
    if (!e || !query || !out)
        return eng_fail(e, SONA_E_NULL, "%s: NULL argument", __func__);
    *out = NULL;
    if (!eng_live_tenant(e, tenant))
        return eng_fail(e, SONA_E_NOT_FOUND, "%s: no tenant %d", __func__, tenant);
    if (!sona_all_within_fast(query, e->cfg.hidden, SONA_MAX_ACTIVATION) && sona_all_finite(query, e->cfg.hidden)) {
        atomic_fetch_add(&e->out_of_range, 1);
        return eng_fail(e, SONA_E_INVALID, "%s: a query value is beyond +-%g (SONA_MAX_ACTIVATION)", __func__,
                        (double)SONA_MAX_ACTIVATION);
    }
    /* The spare object of an ended request when there is one: one thread serving requests
     * one after the other never allocates here. */
    sona_request *r = atomic_exchange(&e->spare_request, NULL);
    if (!r && !(r = malloc(sizeof *r)))
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", __func__);
    *r = (sona_request){.e = e, .tenant = tenant, .generation = atomic_load(&e->tenants[tenant].generation)};
    sona_status st = eng_traj_take(e, query, &r->t);
    if (st != SONA_OK) {
        request_release(r);
        return eng_fail(e, st, "%s: %s", __func__, sona_last_error());
    }
    *out = r;
    return SONA_OK;
}

sona_status sona_request_step(sona_request *r, uint32_t layer, const float *activations,
                              const float *attention, uint32_t n_attention, float reward)
{
    if (!r || !activations || (n_attention && !attention))
        return eng_fail(r ? r->e : NULL, SONA_E_NULL, "%s: NULL argument", __func__);
    sona_engine *e = r->e;
    if (layer > INT32_MAX)
        return eng_fail(e, SONA_E_INVALID, "%s: layer %u is out of range", __func__, layer);
    if (n_attention && !sona_all_finite(attention, n_attention)) {
        r->poisoned = POISON_NONFINITE;
        return eng_fail(e, SONA_E_NONFINITE, "%s: NaN or Inf in attention weights", __func__);
    }
    /* Every step, kept or past max_steps, is checked: finite, then within its range (one vector
     * pass for ordinary values; the finite test only to name what failed). */
    const int within = fabsf(reward) <= SONA_MAX_QUALITY &&
                       sona_all_within_fast(activations, e->cfg.hidden, SONA_MAX_ACTIVATION);
    if (!within && (!isfinite(reward) || !sona_all_finite(activations, e->cfg.hidden))) {
        r->poisoned = POISON_NONFINITE;
        return eng_fail(e, SONA_E_NONFINITE, "%s: NaN or Inf in the activations or reward", __func__);
    }
    if (!within) {
        r->poisoned = POISON_RANGE;
        atomic_fetch_add(&e->out_of_range, 1);
        return eng_fail(e, SONA_E_INVALID,
                        "%s: reward %g or an activation beyond its range (+-%g, +-%g); the request "
                        "will not be learned", __func__,
                        (double)reward, (double)SONA_MAX_QUALITY, (double)SONA_MAX_ACTIVATION);
    }
    if (sona_trajectory_step_count(r->t) >= e->cfg.max_steps)
        return SONA_OK; /* only the first max_steps are kept */
    /* Attention weights are checked, not kept: loop B learns from activations and rewards. */
    sona_status st = sona_trajectory_add_step(r->t, activations, e->cfg.hidden, NULL, 0, reward, (int32_t)layer);
    if (st != SONA_OK) {
        r->poisoned = st == SONA_E_NONFINITE ? POISON_NONFINITE : POISON_OTHER;
        return eng_fail(e, st, "%s: %s", __func__, sona_trajectory_last_error(r->t));
    }
    return SONA_OK;
}

void sona_request_abandon(sona_request *r)
{
    if (!r)
        return;
    eng_traj_recycle(r->e, r->t);
    request_release(r);
}

/* The critic's prediction for query x of region `region`, bounded so that quality q less it
 * stays well within SONA_MAX_QUALITY, as every quality a baseline folds in (and a state file
 * holds) must, roundings included. */
static float critic_offset(sona_critic *c, uint32_t region, const float *x, float *centered, float q)
{
    const double p = sona_critic_predict(c, region, x, centered);
    const double lo = (double)q - 0.5 * SONA_MAX_QUALITY, hi = (double)q + 0.5 * SONA_MAX_QUALITY;
    return (float)(p < lo ? lo : p > hi ? hi : p);
}

/* Loop A's learning step for one ended trajectory of tenant `tenant`, whose adapter was
 * `generation` when the request began (a tenant removed or re-made since learns nothing from
 * it). The signal is built in the tenant's rows, under its mutex like the training step that
 * follows. */
static sona_status learn_instant(sona_engine *e, int32_t tenant, uint64_t generation, const sona_trajectory *t)
{
    const uint32_t H = e->cfg.hidden;
    eng_tenant *tn = &e->tenants[tenant];
    eng_quality_observe(e, sona_trajectory_quality(t));
    pthread_mutex_lock(&tn->mu);
    if (!atomic_load(&tn->live) || atomic_load(&tn->generation) != generation) {
        /* The tenant was removed (or re-made) meanwhile: its successor's baselines and critic
         * are not this request's to advance either. */
        pthread_mutex_unlock(&tn->mu);
        atomic_fetch_add(&e->n.rejected, 1);
        return SONA_OK;
    }
    if (!tn->signal && !(tn->signal = malloc(4 * (size_t)H * sizeof *tn->signal))) {
        pthread_mutex_unlock(&tn->mu);
        return eng_fail(e, SONA_E_NOMEM, "sona_request_end: out of memory");
    }
    float *x = tn->signal, *delta = x + H, *y = delta + H, *centered = y + H, w;
    uint32_t cell = 0;
    /* Out of memory for the critic only leaves quality-only signals without it. */
    if (!tn->critic && !sona_signal_rewards_vary(t, SONA_LAYER_NONE))
        (void)eng_critic_create(&e->cfg, &tn->critic);
    /* y(x), where the adapter sent the query: the training copy's weights are the published
     * ones (gradients wait in its accumulators until they are applied). */
    sona_status st = sona_trajectory_query(t, x, H);
    if (st == SONA_OK)
        st = sona_lora_forward(tn->lora, 0, x, y);
    if (st == SONA_OK) {
        cell = eng_query_cell(e, x);
        sona_signal_options opt;
        sona_signal_options_default(&opt);
        opt.output = y;
        const uint32_t region = ENG_CELL_REGION(cell);
        opt.baseline = &tn->baselines[region];
        const sona_signal_baseline before = *opt.baseline;
        const float q = sona_trajectory_quality(t);
        if (tn->critic)
            opt.quality_offset = critic_offset(tn->critic, region, x, centered, q);
        st = sona_signal_from_trajectory_opts(e->signals, t, &opt, x, delta, &w);
        if (st == SONA_OK && tn->critic)
            sona_critic_learn(tn->critic, region, x, centered, before.count > 0,
                              (double)q - opt.quality_offset - before.mean);
    }
    if (st != SONA_OK) {
        pthread_mutex_unlock(&tn->mu);
        atomic_fetch_add(&e->n.rejected, 1);
        /* No step or no direction: nothing to learn, not an error of the caller. */
        return st == SONA_E_NONFINITE ? eng_fail(e, st, "sona_request_end: non-finite signal; not learned") : SONA_OK;
    }
    const int32_t adapter = 0;
    eng_ewc_note_quality(tn->ewc, sona_trajectory_quality(t), cell);
    st = sona_lora_normalize_signals(tn->lora, 1, &adapter, x, delta, &w);
    if (st == SONA_OK)
        st = sona_lora_accumulate(tn->lora, 0, x, delta, w);
    if (st == SONA_OK) {
        atomic_fetch_add(&e->n.accepted, 1);
        if (++tn->since_apply >= e->cfg.micro_apply_every) {
            st = eng_train_and_publish(e, tn->lora, tn->ewc, &tn->slot);
            tn->since_apply = 0;
        }
    } else {
        atomic_fetch_add(&e->n.rejected, 1);
    }
    pthread_mutex_unlock(&tn->mu);
    return st;
}

/* Loop A for an ended trajectory: the learning step, then the trajectory queued for loop B. */
static sona_status learn_and_queue(sona_engine *e, const eng_ended *j)
{
    const sona_status st = learn_instant(e, j->tenant, j->generation, j->t);
    /* Counted as recorded before loop B can take it (see base.h's taken). */
    if (sona_trajectory_buffer_record_counted(e->buffer, j->t, &e->n.recorded) == SONA_OK) {
        if (sona_trajectory_buffer_len(e->buffer) >= e->cfg.loop_b_threshold)
            eng_kick(e);
    } else {
        atomic_fetch_add(&e->n.dropped, 1);
        eng_traj_recycle(e, j->t);
    }
    return st;
}

/* Hands j to loop A's thread; 0 when there is none or its queue is full. A caller wakes the
 * thread only from its long sleep: waking a thread on another core costs the waker about as
 * much as the step it hands over (8 us measured on a VM: an inter-processor interrupt), so
 * while requests keep coming the thread looks for them itself, every LOOP_A_POLL_US. */
static void *loop_a_main(void *arg);

static int hand_over(sona_engine *e, const eng_ended *j)
{
    struct eng_loop_a *a = e->loop_a;
    if (!a)
        return 0;
    pthread_mutex_lock(&a->mu);
    /* The thread starts with the first hand-over: an engine that records nothing never has it
     * (and a create and destroy of one costs no thread). It cannot start: steps stay here. */
    if (!a->running && !a->failed && !a->stop) {
        a->running = pthread_create(&a->thread, NULL, loop_a_main, e) == 0;
        a->failed = !a->running;
    }
    const int room = a->running && a->count < LOOP_A_QUEUE && !a->stop;
    int wake = 0;
    if (room) {
        a->ring[(a->head + a->count) % LOOP_A_QUEUE] = *j;
        a->count++;
        a->handed++;
        wake = a->sleeping;
        a->sleeping = 0; /* one wake-up is enough */
    }
    pthread_mutex_unlock(&a->mu);
    if (wake)
        pthread_cond_signal(&a->wake);
    return room;
}

/* Loop A's step must not take the serving threads' CPU when they need it: a batch thread never
 * preempts the thread that woke it. At nice 0, unlike loop B's thread: when it falls behind,
 * the full queue sends the step back to the callers' threads. With the queue empty it polls
 * every LOOP_A_POLL_US (so callers need not wake it) for LOOP_A_IDLE_POLLS polls, then sleeps
 * until a caller wakes it: an idle engine costs nothing, a busy one a timer tick a poll. It
 * starts asleep. */
enum { LOOP_A_POLL_US = 500, LOOP_A_IDLE_POLLS = 200 };
static void *loop_a_main(void *arg)
{
    sona_engine *e = arg;
    struct eng_loop_a *a = e->loop_a;
    eng_thread_lower_priority(0);
    unsigned idle = LOOP_A_IDLE_POLLS; /* asleep until the first hand-over */
    pthread_mutex_lock(&a->mu);
    for (;;) {
        if (!a->count && !a->stop) {
            if (idle < LOOP_A_IDLE_POLLS) {
                /* A timed wait no caller signals (sleeping is 0), but a stop does: destroy
                 * need not wait out the poll. */
                idle++;
                const struct timespec until = sona_deadline_after_us(CLOCK_MONOTONIC, LOOP_A_POLL_US);
                pthread_cond_timedwait(&a->wake, &a->mu, &until);
            } else {
                a->sleeping = 1;
                while (a->sleeping && !a->stop)
                    pthread_cond_wait(&a->wake, &a->mu);
                a->sleeping = 0;
            }
            continue;
        }
        if (!a->count)
            break; /* stopping, and everything handed over is learned */
        idle = 0;
        const eng_ended j = a->ring[a->head];
        a->head = (a->head + 1) % LOOP_A_QUEUE;
        a->count--;
        void (*hook)(void *) = a->hook, *hook_arg = a->hook_arg;
        pthread_mutex_unlock(&a->mu);
        if (hook)
            hook(hook_arg);
        /* A failure is counted (signals_rejected) and left as the engine's last error: the
         * request that caused it has returned. */
        (void)learn_and_queue(e, &j);
        pthread_mutex_lock(&a->mu);
        a->done++;
        if (a->waiters)
            pthread_cond_broadcast(&a->done_cv);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

sona_status eng_loop_a_create(sona_engine *e)
{
    if (!e->cfg.background_thread)
        return SONA_OK;
    struct eng_loop_a *a = calloc(1, sizeof *a);
    if (!a)
        return SONA_E_NOMEM;
    pthread_mutex_init(&a->mu, NULL);
    pthread_condattr_t monotonic;
    pthread_condattr_init(&monotonic);
    pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC); /* the poll's timed waits */
    pthread_cond_init(&a->wake, &monotonic);
    pthread_condattr_destroy(&monotonic);
    pthread_cond_init(&a->done_cv, NULL);
    e->loop_a = a; /* its thread starts with the first hand-over */
    return SONA_OK;
}

void eng_loop_a_destroy(sona_engine *e)
{
    struct eng_loop_a *a = e->loop_a;
    if (!a)
        return;
    pthread_mutex_lock(&a->mu);
    a->stop = 1; /* the thread learns what was handed over, then ends */
    const int running = a->running;
    pthread_mutex_unlock(&a->mu);
    pthread_cond_signal(&a->wake);
    if (running)
        pthread_join(a->thread, NULL);
    e->loop_a = NULL;
    pthread_cond_destroy(&a->done_cv);
    pthread_cond_destroy(&a->wake);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

void eng_loop_a_drain(sona_engine *e)
{
    struct eng_loop_a *a = e->loop_a;
    if (!a)
        return;
    pthread_mutex_lock(&a->mu);
    const uint64_t ticket = a->handed;
    a->waiters++;
    while (a->done < ticket)
        pthread_cond_wait(&a->done_cv, &a->mu);
    a->waiters--;
    pthread_mutex_unlock(&a->mu);
}

sona_status sona_request_end(sona_request *r, float quality)
{
    if (!r)
        return sona_fail(NULL, SONA_E_NULL, "%s: request is NULL", __func__);
    sona_engine *e = r->e;
    const eng_ended j = {.t = r->t, .tenant = r->tenant, .generation = r->generation};
    sona_trajectory *t = r->t;
    const int poisoned = r->poisoned;
    request_release(r);
    if (!atomic_load(&e->enabled)) {
        eng_traj_recycle(e, t);
        return SONA_OK;
    }
    /* A quality out of range is refused before it reaches any baseline (the tenant's, and the
     * engine-wide one every tenant's dreams are weighed against). */
    const int far = isfinite(quality) && !(fabsf(quality) <= SONA_MAX_QUALITY);
    if (far)
        atomic_fetch_add(&e->out_of_range, 1);
    if (poisoned || far || sona_trajectory_end(t, quality) != SONA_OK) {
        atomic_fetch_add(&e->n.rejected, 1);
        eng_traj_recycle(e, t);
        if (far || poisoned == POISON_RANGE)
            return eng_fail(e, SONA_E_INVALID, "%s: a value beyond its range (quality %g; "
                                               "SONA_MAX_QUALITY, SONA_MAX_ACTIVATION); not learned", __func__,
                            (double)quality);
        return eng_fail(e, SONA_E_NONFINITE, "%s: NaN or Inf in the trajectory; not learned", __func__);
    }
    if (hand_over(e, &j))
        return SONA_OK;
    if (e->loop_a)
        atomic_fetch_add(&e->loop_a->in_callers, 1);
    return learn_and_queue(e, &j);
}

/* inspect.h's view of loop A's thread (its state is this file's). */
int eng_inspect_loop_a(sona_engine *e, uint64_t *handed, uint64_t *in_callers)
{
    struct eng_loop_a *a = e->loop_a;
    if (!a)
        return 0;
    pthread_mutex_lock(&a->mu);
    *handed = a->handed;
    pthread_mutex_unlock(&a->mu);
    *in_callers = atomic_load(&a->in_callers);
    return 1;
}

void eng_inspect_loop_a_hook(sona_engine *e, void (*hook)(void *), void *arg)
{
    struct eng_loop_a *a = e->loop_a;
    if (!a)
        return;
    pthread_mutex_lock(&a->mu);
    a->hook = hook;
    a->hook_arg = arg;
    pthread_mutex_unlock(&a->mu);
}

sona_status sona_flush(sona_engine *e)
{
    if (!e)
        return sona_fail(NULL, SONA_E_NULL, "%s: engine is NULL", __func__);
    eng_loop_a_drain(e);
    sona_status first = SONA_OK;
    for (uint32_t i = 0; i < e->cfg.max_tenants; i++) {
        eng_tenant *t = &e->tenants[i];
        if (!atomic_load(&t->live))
            continue;
        pthread_mutex_lock(&t->mu);
        if (atomic_load(&t->live) && sona_lora_pending(t->lora) > 0) {
            sona_status st = eng_train_and_publish(e, t->lora, t->ewc, &t->slot);
            t->since_apply = 0;
            if (first == SONA_OK)
                first = st;
        }
        pthread_mutex_unlock(&t->mu);
    }
    return first;
}
