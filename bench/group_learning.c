/* SPDX-License-Identifier: MIT */
/* Group learning: does the engine LEARN at the default preset? Synthetic tasks with hidden
 * targets, traffic and scoring through the public API only (sona.h), each run scored on a fixed
 * evaluation set drawn once per task and seed. The library is a black box here.
 *
 * The task. `clusters` query clusters, each a random unit center c_k; a query is
 * x = c_k + spread * N(0, I) / sqrt(H), not normalised (|x| is about sqrt(1 + spread^2)). Each
 * cluster has a hidden random unit target t_k (per tenant when there are several tenants, per
 * layer in the Base-LoRA task). The evaluation set is EVAL queries, query i in cluster
 * i % clusters, drawn once per (task, seed) and never shown to the engine. Rows with the same
 * seed, width, clusters and spread share their task (h256_c4_s1, _s4, _s16, _finalq, switch's
 * task 1 and the hostile row's benign task are one task), so their differences are paired.
 *
 * One request (Micro-LoRA tasks): x from a random cluster k (and a random tenant); y =
 * sona_apply(e, tenant, x); S exploration steps a_s = normalize(y + EXPLORE g_s) |y|, g_s ~
 * N(0, I) / sqrt(H); reward r_s = (1 + cos(a_s, t_k)) / 2 (+ N(0, noise^2) in the noise rows);
 * recorded as sona_request_begin(e, tenant, x), sona_request_step(r, 0, a_s, NULL, 0, r_s) per
 * step, sona_request_end(r, Q), Q = the mean of the r_s. The "finalq" rows give every step the
 * reward Q (no per-step information). The recorded activation is the explored output a_s itself.
 *
 * Score = mean over the evaluation set of (1 + cos(sona_apply(e, tenant, x), t_k)) / 2 (with
 * several tenants: over every tenant and the whole set, each tenant on its own targets).
 * Lift(N) = score after N trajectories - score before any (a fresh engine's adapters are the
 * identity: about 0.5). Scores are taken every CHECK_EVERY trajectories.
 *
 * The engine: sona_engine_config_default(&c, SONA_PRESET_DEFAULT, hidden) and c.seed = the
 * run's seed (the engine's random adapter init is part of what a seed varies; not a learning
 * setting). The one other change is c.ewc_enabled = 0 in the _noewc rows. The background thread
 * is on (the default); how the bench waits for loop B is at settle() below.
 *
 * Seeds: 3 (--quick: 1), BASE_SEED, BASE_SEED + 1, ... or from SONA_BENCH_SEED; printed, and in
 * the rows seeds/first and seeds/count. A run is deterministic given its seed, except the rows
 * that wait on the clock (base_l4_h256_c4's loop_b_wait, every row's wall).
 *
 * Trying a change: SONA_BENCH_ROWS=a,b runs only the rows whose name contains a or b, and
 * SONA_BENCH_CONFIG=field=value,... measures a candidate default (see config_overrides below;
 * such a run reports row config/overrides and is not a measurement of the default preset).
 *
 * Rows: value rows of group "learning" named TASK/QUANTITY, the metric naming the statistic over
 * seeds ("mean"; "min": the lowest seed; "seed_mean"/"worst_seed" below):
 *   score@0               the score before any trajectory
 *   lift@N                lift after N = 100, 250, 500, 1000 trajectories
 *   to_lift0.1            trajectories until the lift reaches LIFT_GOAL, at checks every
 *                         CHECK_EVERY: seed_mean = the first check where the mean over seeds
 *                         does, worst_seed = the largest of the seeds' own; -1 = not within
 *                         the 1000 (worst_seed: some seed never did)
 *   ceiling_score/_lift   (rows with a ceiling) the best rank-r adapter's score / lift on the
 *                         evaluation set (ceiling_score() below)
 *   ceiling_share@1000    mean lift@1000 / mean ceiling_lift
 *   wall                  seconds the row took, all seeds (not a result: a budget check)
 *   curve@N, curve_*@N    curve points every CURVE_EVERY (metric mean, and seed1.. per seed):
 *                         charted by --html, left out of the terminal table, all in --json
 * and the task switch's, Base-LoRA's and the hostile stream's own, described at their runs.
 *
 * Micro-LoRA rows (one tenant unless _t16; 4 clusters, spread 0.3, 4 steps, per-step rewards,
 * unless the name says otherwise): h256/h1024/h4096_c4_s4 (widths), h256_c4_s1/_s16 (steps;
 * s1 is also the 1-step final-quality-only row: its one step's reward is Q), h256_c4_s4_finalq,
 * h256_c4_s4_noise0.1 (reward noise sd 0.1), h256_c4_s4_t16 (16 tenants made with
 * sona_tenant_create, each request's tenant at random), h256_c2_s4 / h256_c8_s4 (clusters, with
 * the ceiling, as h256_c4_s4), h256_c4_s4_spread0.1 / _spread0.6. Then switch* (task switch),
 * base_l4_h256_c4 (Base-LoRA) and hostile*_h256. */
#include "bench.h"

#include "common/clock.h"

#include <sona.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    EVAL = 256,          /* evaluation queries per task */
    TRAJ = 1000,         /* trajectories of a learning run */
    CHECK_EVERY = 25,    /* score checked this often (trajectories to reach LIFT_GOAL) */
    CURVE_EVERY = 50,    /* curve points */
    MAX_SEEDS = 3,
    MAX_CHECKS = 2 * TRAJ / CHECK_EVERY + 1, /* a task switch runs 2 x TRAJ */
    BASE_LAYERS = 4,     /* layers 0..3 in the Base-LoRA task */
    BASE_MAX_PER_LAYER = 4, /* variations explored per layer in the Base-LoRA task */
    WAIT_LIMIT_MS = 10000,
    POLL_MS = 5
};
#define LIFT_GOAL 0.1
#define EXPLORE 0.5f
#define SPREAD 0.3f
/* Without SONA_BENCH_SEED: seeds BASE_SEED, BASE_SEED + 1, ... */
#define BASE_SEED 101ull
#define LB_PI 3.14159265358979323846

/* ---- random numbers (the bench's own: the task must not move when the library's does) ---- */

typedef struct lb_rng {
    uint64_t s[4];
    int has_spare;
    double spare;
} lb_rng;

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(lb_rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * 0xd1342543de82ef95ull + 0x2545f4914f6cdd1dull);
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix(&x);
    r->has_spare = 0;
    r->spare = 0;
}

static uint64_t rotl(uint64_t v, int k) { return (v << k) | (v >> (64 - k)); }

/* xoshiro256** */
static uint64_t rng_next(lb_rng *r)
{
    uint64_t *s = r->s;
    const uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* [0, 1) */
static double rng_uniform(lb_rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

static uint32_t rng_below(lb_rng *r, uint32_t n) { return (uint32_t)(rng_uniform(r) * n); }

/* Box-Muller, both values used. */
static double rng_normal(lb_rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u = rng_uniform(r);
    while (u <= 0)
        u = rng_uniform(r);
    const double v = rng_uniform(r), m = sqrt(-2.0 * log(u));
    r->spare = m * sin(2.0 * LB_PI * v);
    r->has_spare = 1;
    return m * cos(2.0 * LB_PI * v);
}

/* Streams: what each draw is for, so that rows with the same seed share their task. */
enum { STREAM_TASK = 1, STREAM_EVAL, STREAM_TRAFFIC, STREAM_CEILING, STREAM_TASK2, STREAM_EVAL2,
       STREAM_TRAFFIC2 };

/* ---- vectors --------------------------------------------------------------------------- */

static double dot(const float *a, const float *b, uint32_t n)
{
    double s = 0;
    for (uint32_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

static double cosine(const float *a, const float *b, uint32_t n)
{
    const double aa = dot(a, a, n), bb = dot(b, b, n);
    return aa > 0 && bb > 0 ? dot(a, b, n) / sqrt(aa * bb) : 0;
}

static void random_unit(lb_rng *r, float *v, uint32_t n)
{
    double n2 = 0;
    for (uint32_t i = 0; i < n; i++) {
        v[i] = (float)rng_normal(r);
        n2 += (double)v[i] * v[i];
    }
    const double inv = 1.0 / sqrt(n2);
    for (uint32_t i = 0; i < n; i++)
        v[i] = (float)(v[i] * inv);
}

static int all_finite(const float *v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return 0;
    return 1;
}

static double now_s(void) { return sona_clock_s(CLOCK_MONOTONIC); }

static void sleep_ms(long ms)
{
    const struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- tasks ----------------------------------------------------------------------------- */

typedef struct lb_task {
    uint32_t H, clusters, sets; /* sets: targets per cluster (tenants, or layers) */
    float spread;
    float *centers;             /* clusters x H, unit */
    float *targets;             /* sets x clusters x H, unit */
    float *eval;                /* EVAL x H; query i is in cluster i % clusters */
} lb_task;

static void task_free(lb_task *t)
{
    free(t->centers);
    free(t->targets);
    free(t->eval);
    memset(t, 0, sizeof *t);
}

static void task_query(const lb_task *t, uint32_t k, lb_rng *r, float *x)
{
    const float *c = t->centers + (size_t)k * t->H;
    const double sd = t->spread / sqrt((double)t->H);
    for (uint32_t h = 0; h < t->H; h++)
        x[h] = (float)(c[h] + sd * rng_normal(r));
}

static const float *task_target(const lb_task *t, uint32_t set, uint32_t k)
{
    return t->targets + ((size_t)set * t->clusters + k) * t->H;
}

/* Centers and targets from (seed, stream_task), the evaluation set from (seed, stream_eval). */
static int task_init(lb_task *t, uint32_t H, uint32_t clusters, uint32_t sets, float spread, uint64_t seed,
                     uint64_t stream_task, uint64_t stream_eval)
{
    memset(t, 0, sizeof *t);
    t->H = H;
    t->clusters = clusters;
    t->sets = sets;
    t->spread = spread;
    t->centers = malloc((size_t)clusters * H * sizeof(float));
    t->targets = malloc((size_t)sets * clusters * H * sizeof(float));
    t->eval = malloc((size_t)EVAL * H * sizeof(float));
    if (!t->centers || !t->targets || !t->eval) {
        task_free(t);
        return -1;
    }
    lb_rng r;
    rng_seed(&r, seed, stream_task);
    for (uint32_t k = 0; k < clusters; k++)
        random_unit(&r, t->centers + (size_t)k * H, H);
    for (uint32_t s = 0; s < sets; s++)
        for (uint32_t k = 0; k < clusters; k++)
            random_unit(&r, t->targets + ((size_t)s * clusters + k) * H, H);
    rng_seed(&r, seed, stream_eval);
    for (uint32_t i = 0; i < EVAL; i++)
        task_query(t, i % clusters, &r, t->eval + (size_t)i * H);
    return 0;
}

/* ---- loop B: waiting for it ------------------------------------------------------------ */

/* Loop B runs in the engine's thread; the bench waits for it (polling sona_get_stats every
 * POLL_MS, at most WAIT_LIMIT_MS a wait) after every request and at every checkpoint, while a
 * cycle is running (recorded > processed + queued) or is due by its threshold (queued >=
 * loop_b_threshold, which wakes the thread at once). Learning then does not depend on the
 * machine's speed: a run is deterministic given its seed as long as no cycle comes from
 * loop_b_interval_ms (2 s at the defaults), which the bench does not wait for (it would make the
 * run wall-clock bound) and which fires only when a run is slower than that between thresholds.
 * How: SETTLE_DUE after a request, SETTLE_CHECK at a checkpoint (the same wait; a checkpoint
 * scored with loop_b_min_batch or more still queued, not learned by Base-LoRA yet, counts in
 * left_queued). */
typedef enum lb_settle { SETTLE_DUE, SETTLE_CHECK } lb_settle;

typedef struct lb_wait {
    const sona_engine_config *c;
    double waited_s;      /* total time spent waiting */
    uint32_t timeouts;    /* waits that reached WAIT_LIMIT_MS */
    uint32_t left_queued; /* checkpoints scored with >= loop_b_min_batch trajectories queued */
} lb_wait;

static void wait_init(lb_wait *w, const sona_engine_config *c)
{
    memset(w, 0, sizeof *w);
    w->c = c;
}

static void settle(sona_engine *e, lb_wait *w, lb_settle how)
{
    const sona_engine_config *c = w->c;
    sona_stats s;
    if (!c->background_thread) {
        sona_tick(e); /* what a server without the thread calls */
        if (how != SETTLE_DUE && sona_get_stats(e, &s) == SONA_OK && s.trajectories_queued >= c->loop_b_min_batch)
            w->left_queued++;
        return;
    }
    const double t0 = now_s(), limit = WAIT_LIMIT_MS / 1000.0;
    int ok = 0;
    for (;;) {
        if (sona_get_stats(e, &s) != SONA_OK)
            break;
        ok = 1;
        const int running = s.trajectories_processed + s.trajectories_queued < s.trajectories_recorded;
        const int due = s.trajectories_queued >= c->loop_b_threshold && s.trajectories_queued >= c->loop_b_min_batch;
        if (!running && !due)
            break;
        if (now_s() - t0 >= limit) {
            w->timeouts++;
            break;
        }
        sleep_ms(POLL_MS);
    }
    w->waited_s += now_s() - t0;
    if (how != SETTLE_DUE && ok && s.trajectories_queued >= c->loop_b_min_batch)
        w->left_queued++;
}

/* ---- traffic --------------------------------------------------------------------------- */

typedef enum lb_reward {
    REWARD_TRUE,     /* (1 + cos(a, target)) / 2, plus the row's noise */
    REWARD_RANDOM,   /* uniform [0, 1) per step, and an independent uniform final quality */
    REWARD_INVERTED, /* 1 - the true reward */
    REWARD_AWAY      /* |a - x| / (|a - x| + |x|): more for outputs further from the query */
} lb_reward;

typedef struct lb_traffic {
    const lb_task *task;
    const int32_t *tenants;
    uint32_t ntenants, steps;
    float noise;
    int final_only;
    lb_reward reward;
    lb_rng rng;
    float *x, *y, *acts, *rewards; /* H, H, steps x H, steps */
    uint64_t refused;              /* requests where a call did not return SONA_OK */
    uint64_t nonfinite;            /* sona_apply outputs with NaN or Inf */
} lb_traffic;

static void traffic_free(lb_traffic *tr)
{
    free(tr->x);
    free(tr->acts);
    free(tr->rewards);
    tr->x = tr->acts = tr->rewards = NULL;
}

static int traffic_init(lb_traffic *tr, const lb_task *t, const int32_t *tenants, uint32_t ntenants,
                        uint32_t steps, uint64_t seed)
{
    memset(tr, 0, sizeof *tr);
    tr->task = t;
    tr->tenants = tenants;
    tr->ntenants = ntenants;
    tr->steps = steps;
    tr->reward = REWARD_TRUE;
    rng_seed(&tr->rng, seed, STREAM_TRAFFIC);
    tr->x = malloc(2 * (size_t)t->H * sizeof(float));
    tr->acts = malloc((size_t)steps * t->H * sizeof(float));
    tr->rewards = malloc((size_t)steps * sizeof(float));
    if (!tr->x || !tr->acts || !tr->rewards) {
        traffic_free(tr);
        return -1;
    }
    tr->y = tr->x + t->H;
    return 0;
}

/* a = normalize(y + EXPLORE * g) * |y|, g ~ N(0, I) / sqrt(H) (y + EXPLORE * g when either
 * norm is not a positive finite number). */
static void explore(lb_rng *r, const float *y, double ny, float *a, uint32_t H)
{
    const double sd = EXPLORE / sqrt((double)H);
    for (uint32_t h = 0; h < H; h++)
        a[h] = (float)(y[h] + sd * rng_normal(r));
    const double na = sqrt(dot(a, a, H));
    if (na > 0 && isfinite(na) && ny > 0 && isfinite(ny))
        for (uint32_t h = 0; h < H; h++)
            a[h] = (float)(a[h] * (ny / na));
}

static double true_reward(const float *a, const float *target, uint32_t H)
{
    return (1.0 + cosine(a, target, H)) / 2.0;
}

static double step_reward(lb_traffic *tr, const float *x, const float *a, const float *target)
{
    const uint32_t H = tr->task->H;
    switch (tr->reward) {
    case REWARD_RANDOM: return rng_uniform(&tr->rng);
    case REWARD_INVERTED: return 1.0 - true_reward(a, target, H);
    case REWARD_AWAY: {
        double d2 = 0;
        for (uint32_t h = 0; h < H; h++)
            d2 += ((double)a[h] - x[h]) * ((double)a[h] - x[h]);
        const double d = sqrt(d2), nx = sqrt(dot(x, x, H));
        return d + nx > 0 && isfinite(d) ? d / (d + nx) : 1.0;
    }
    default:
        return true_reward(a, target, H) + (tr->noise > 0 ? tr->noise * rng_normal(&tr->rng) : 0.0);
    }
}

/* Records the steps acts[0..n) with rewards[] and final quality q, then waits for a due loop B. */
static void record(sona_engine *e, lb_traffic *tr, lb_wait *w, int32_t tenant, const float *x, uint32_t n,
                   const uint32_t *layers, float q)
{
    const uint32_t H = tr->task->H;
    sona_request *r = NULL;
    if (sona_request_begin(e, tenant, x, &r) != SONA_OK) {
        tr->refused++;
        return;
    }
    int bad = 0;
    for (uint32_t s = 0; s < n; s++)
        bad |= sona_request_step(r, layers ? layers[s] : 0, tr->acts + (size_t)s * H, NULL, 0,
                                 tr->final_only ? q : tr->rewards[s]) != SONA_OK;
    bad |= sona_request_end(r, q) != SONA_OK;
    tr->refused += (uint64_t)bad;
    settle(e, w, SETTLE_DUE);
}

/* One Micro-LoRA request (see the top of the file). */
static void micro_request(sona_engine *e, lb_traffic *tr, lb_wait *w)
{
    const lb_task *t = tr->task;
    const uint32_t H = t->H, k = rng_below(&tr->rng, t->clusters);
    const uint32_t ti = tr->ntenants > 1 ? rng_below(&tr->rng, tr->ntenants) : 0;
    const float *target = task_target(t, ti, k);
    task_query(t, k, &tr->rng, tr->x);
    if (sona_apply(e, tr->tenants[ti], tr->x, tr->y) != SONA_OK) {
        tr->refused++;
        return;
    }
    tr->nonfinite += !all_finite(tr->y, H);
    const double ny = sqrt(dot(tr->y, tr->y, H));
    double q = 0;
    for (uint32_t s = 0; s < tr->steps; s++) {
        float *a = tr->acts + (size_t)s * H;
        explore(&tr->rng, tr->y, ny, a, H);
        tr->rewards[s] = (float)step_reward(tr, tr->x, a, target);
        q += tr->rewards[s];
    }
    q /= tr->steps;
    if (tr->reward == REWARD_RANDOM)
        q = rng_uniform(&tr->rng);
    record(e, tr, w, tr->tenants[ti], tr->x, tr->steps, NULL, (float)q);
}

/* One Base-LoRA request: for each layer l < BASE_LAYERS, y_l = sona_apply_layer(l, h_l) and
 * `per_layer` variations a_l explored around it, each a step of layer l rewarded against the
 * layer's target; h_{l+1} = the last of them. */
static void base_request(sona_engine *e, lb_traffic *tr, lb_wait *w, uint32_t per_layer)
{
    const lb_task *t = tr->task;
    const uint32_t H = t->H, k = rng_below(&tr->rng, t->clusters);
    uint32_t layers[BASE_LAYERS * BASE_MAX_PER_LAYER];
    task_query(t, k, &tr->rng, tr->x);
    const float *h = tr->x;
    double q = 0;
    uint32_t n = 0;
    for (uint32_t l = 0; l < BASE_LAYERS; l++) {
        if (sona_apply_layer(e, l, h, tr->y) != SONA_OK) {
            tr->refused++;
            return;
        }
        tr->nonfinite += !all_finite(tr->y, H);
        const double ny = sqrt(dot(tr->y, tr->y, H));
        for (uint32_t v = 0; v < per_layer; v++, n++) {
            float *a = tr->acts + (size_t)n * H;
            explore(&tr->rng, tr->y, ny, a, H);
            tr->rewards[n] = (float)step_reward(tr, tr->x, a, task_target(t, l, k));
            q += tr->rewards[n];
            layers[n] = l;
            h = a;
        }
    }
    record(e, tr, w, 0, tr->x, n, layers, (float)(q / n));
}

/* ---- scores ---------------------------------------------------------------------------- */

typedef struct lb_check {
    int finite;      /* every output was finite */
    double max_rel;  /* max |y(x) - x| / |x| */
} lb_check;

/* Mean over tenants and evaluation queries of (1 + cos(sona_apply(x), target)) / 2. */
static double score_micro(sona_engine *e, const lb_task *t, const int32_t *tenants, uint32_t ntenants, float *y,
                          lb_check *chk)
{
    const uint32_t H = t->H;
    double sum = 0;
    if (chk)
        *chk = (lb_check){.finite = 1};
    for (uint32_t ti = 0; ti < ntenants; ti++)
        for (uint32_t i = 0; i < EVAL; i++) {
            const float *x = t->eval + (size_t)i * H;
            if (sona_apply(e, tenants[ti], x, y) != SONA_OK)
                return NAN;
            sum += true_reward(y, task_target(t, ti, i % t->clusters), H);
            if (chk) {
                double d2 = 0;
                for (uint32_t h = 0; h < H; h++)
                    d2 += ((double)y[h] - x[h]) * ((double)y[h] - x[h]);
                const double rel = sqrt(d2 / dot(x, x, H));
                chk->finite &= all_finite(y, H) && isfinite(rel);
                if (!(rel <= chk->max_rel)) /* NaN included */
                    chk->max_rel = rel;
            }
        }
    return sum / ((double)ntenants * EVAL);
}

/* Mean over evaluation queries and layers of (1 + cos(y_l, t_{l,k})) / 2 along the noise-free
 * chain h_0 = x, y_l = sona_apply_layer(l, h_l), h_{l+1} = y_l. */
static double score_base(sona_engine *e, const lb_task *t, float *buf)
{
    const uint32_t H = t->H;
    float *h = buf, *y = buf + H;
    double sum = 0;
    for (uint32_t i = 0; i < EVAL; i++) {
        memcpy(h, t->eval + (size_t)i * H, H * sizeof *h);
        for (uint32_t l = 0; l < BASE_LAYERS; l++) {
            if (sona_apply_layer(e, l, h, y) != SONA_OK)
                return NAN;
            sum += true_reward(y, task_target(t, l, i % t->clusters), H);
            memcpy(h, y, H * sizeof *h);
        }
    }
    return sum / ((double)EVAL * BASE_LAYERS);
}

/* ---- the ceiling: the best rank-r adapter on the evaluation set -------------------------- */

/* The best score a rank-r adapter reaches on the evaluation set (tenant 0's targets): maximises
 * the score of y = x + s B (A x) over A (r x H) and B (H x r), s = alpha / r (the engine's
 * Micro-LoRA shape: r = micro_rank, alpha = micro_alpha), by full-batch Adam ascent on the mean
 * cosine from CEIL_RESTARTS random starts of CEIL_ITERS steps each (learning rate CEIL_LR,
 * cosine-decayed to 0), keeping the best score seen. A lower bound of the true ceiling, close to
 * it: on 15 (clusters, spread, seed) pairs at H 256, 4 starts of 3000 steps or 16 of 1500 added
 * at most 0.0008. About 1.3 s at H 256. */
enum { CEIL_RESTARTS = 4, CEIL_ITERS = 600 };
#define CEIL_LR 0.05

static double ceiling_score(const lb_task *t, uint32_t rank, float alpha, uint64_t seed, int restarts, int iters)
{
    const uint32_t H = t->H, R = rank;
    const size_t np = 2 * (size_t)R * H;
    const double s = alpha / (double)R;
    double *p = malloc(4 * np * sizeof *p + (2 * (size_t)H + 2 * R) * sizeof *p);
    if (!p)
        return NAN;
    double *g = p + np, *m = g + np, *v = m + np, *y = v + np, *gy = y + H, *u = gy + H, *bg = u + R;
    double *A = p, *B = p + (size_t)R * H; /* A[j*H + h], B[h*R + j] */
    double *gA = g, *gB = g + (size_t)R * H;
    lb_rng r;
    rng_seed(&r, seed, STREAM_CEILING);
    double best = 0;
    for (int restart = 0; restart < restarts; restart++) {
        for (size_t i = 0; i < (size_t)R * H; i++)
            A[i] = rng_normal(&r) / sqrt((double)H);
        for (size_t i = 0; i < (size_t)R * H; i++)
            B[i] = 0.1 * rng_normal(&r) / sqrt((double)H);
        memset(m, 0, 2 * np * sizeof *m);
        double b1t = 1, b2t = 1;
        for (int it = 0; it <= iters; it++) {
            memset(g, 0, np * sizeof *g);
            double score = 0;
            for (uint32_t i = 0; i < EVAL; i++) {
                const float *x = t->eval + (size_t)i * H, *tg = task_target(t, 0, i % t->clusters);
                for (uint32_t j = 0; j < R; j++) {
                    double a = 0;
                    for (uint32_t h = 0; h < H; h++)
                        a += A[(size_t)j * H + h] * x[h];
                    u[j] = a;
                }
                double yy = 0, yt = 0;
                for (uint32_t h = 0; h < H; h++) {
                    double d = 0;
                    for (uint32_t j = 0; j < R; j++)
                        d += B[(size_t)h * R + j] * u[j];
                    y[h] = x[h] + s * d;
                    yy += y[h] * y[h];
                    yt += y[h] * tg[h];
                }
                const double ny = sqrt(yy), c = yt / ny;
                score += (1 + c) / 2;
                /* d cos / d y = t / |y| - cos y / |y|^2 (t unit) */
                for (uint32_t h = 0; h < H; h++)
                    gy[h] = tg[h] / ny - c * y[h] / yy;
                for (uint32_t j = 0; j < R; j++)
                    bg[j] = 0;
                for (uint32_t h = 0; h < H; h++)
                    for (uint32_t j = 0; j < R; j++) {
                        gB[(size_t)h * R + j] += s * gy[h] * u[j];
                        bg[j] += B[(size_t)h * R + j] * gy[h];
                    }
                for (uint32_t j = 0; j < R; j++)
                    for (uint32_t h = 0; h < H; h++)
                        gA[(size_t)j * H + h] += s * bg[j] * x[h];
            }
            score /= EVAL;
            best = score > best ? score : best;
            if (it == iters)
                break;
            const double lr = CEIL_LR * 0.5 * (1 + cos(LB_PI * it / iters));
            b1t *= 0.9;
            b2t *= 0.999;
            for (size_t i = 0; i < np; i++) {
                const double gi = g[i] / EVAL; /* ascent on the mean cosine */
                m[i] = 0.9 * m[i] + 0.1 * gi;
                v[i] = 0.999 * v[i] + 0.001 * gi * gi;
                p[i] += lr * (m[i] / (1 - b1t)) / (sqrt(v[i] / (1 - b2t)) + 1e-8);
            }
        }
    }
    free(p);
    return best;
}

/* ---- results --------------------------------------------------------------------------- */

/* Scores of every seed's run at checkpoints 0, CHECK_EVERY, 2 CHECK_EVERY, ... */
typedef struct lb_runs {
    int nseeds;
    uint32_t nchecks;
    double score[MAX_SEEDS][MAX_CHECKS];
} lb_runs;

static void report(bench_ctx *ctx, const char *task, const char *what, const char *metric, double v,
                   const char *unit)
{
    char name[96];
    snprintf(name, sizeof name, "%s/%s", task, what);
    const bench_row row = {.group = "learning", .name = name, .backend = "cpu"};
    bench_report(ctx, &row, metric, v, unit);
}

static double lift_of(const lb_runs *r, int s, uint32_t at, uint32_t from)
{
    return r->score[s][at] - r->score[s][from];
}

static double mean_lift(const lb_runs *r, uint32_t at, uint32_t from)
{
    double sum = 0;
    for (int s = 0; s < r->nseeds; s++)
        sum += lift_of(r, s, at, from);
    return sum / r->nseeds;
}

/* Rows PREFIXlift@N (mean, min over seeds) for N = 100, 250, 500, 1000 trajectories after
 * checkpoint `from`, and PREFIXto_lift0.1: the trajectories after `from` at the first checkpoint
 * (every CHECK_EVERY) whose seed-mean lift reaches LIFT_GOAL (metric seed_mean), and the largest
 * of each seed's own first (metric worst_seed); -1 = not within the run. */
static void report_lifts(bench_ctx *ctx, const char *task, const char *prefix, const lb_runs *r, uint32_t from)
{
    static const uint32_t at[] = {100, 250, 500, 1000};
    char what[48];
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        const uint32_t c = from + at[i] / CHECK_EVERY;
        if (c >= r->nchecks)
            continue;
        double lo = INFINITY;
        for (int s = 0; s < r->nseeds; s++)
            lo = fmin(lo, lift_of(r, s, c, from));
        snprintf(what, sizeof what, "%slift@%u", prefix, at[i]);
        report(ctx, task, what, "mean", mean_lift(r, c, from), "score");
        if (r->nseeds > 1)
            report(ctx, task, what, "min", lo, "score");
    }
    const uint32_t end = from + TRAJ / CHECK_EVERY < r->nchecks ? from + TRAJ / CHECK_EVERY : r->nchecks - 1;
    double first_mean = -1, worst = 0;
    for (uint32_t c = from + 1; c <= end && first_mean < 0; c++)
        if (mean_lift(r, c, from) >= LIFT_GOAL)
            first_mean = (double)(c - from) * CHECK_EVERY;
    for (int s = 0; s < r->nseeds && worst >= 0; s++) {
        double first = -1;
        for (uint32_t c = from + 1; c <= end && first < 0; c++)
            if (lift_of(r, s, c, from) >= LIFT_GOAL)
                first = (double)(c - from) * CHECK_EVERY;
        worst = first < 0 ? -1 : fmax(worst, first);
    }
    snprintf(what, sizeof what, "%sto_lift0.1", prefix);
    report(ctx, task, what, "seed_mean", first_mean, "traj");
    if (r->nseeds > 1)
        report(ctx, task, what, "worst_seed", worst, "traj");
}

/* Curve points SERIES@N (lift against checkpoint `from`, every CURVE_EVERY trajectories from 0):
 * metric mean, and seed1, seed2, ... for each seed's own. */
static void report_curve(bench_ctx *ctx, const char *task, const char *series, const lb_runs *r, uint32_t from)
{
    char what[48], metric[16];
    for (uint32_t c = 0; c < r->nchecks; c += CURVE_EVERY / CHECK_EVERY) {
        snprintf(what, sizeof what, "%s@%u", series, c * CHECK_EVERY);
        report(ctx, task, what, "mean", mean_lift(r, c, from), "score");
        for (int s = 0; s < r->nseeds && r->nseeds > 1; s++) {
            snprintf(metric, sizeof metric, "seed%d", s + 1);
            report(ctx, task, what, metric, lift_of(r, s, c, from), "score");
        }
    }
}

static void report_score0(bench_ctx *ctx, const char *task, const lb_runs *r)
{
    double sum = 0;
    for (int s = 0; s < r->nseeds; s++)
        sum += r->score[s][0];
    report(ctx, task, "score@0", "mean", sum / r->nseeds, "score");
}

/* ---- the runs -------------------------------------------------------------------------- */

typedef struct lb_seeds {
    uint64_t seed[MAX_SEEDS];
    int n;
} lb_seeds;

/* SONA_BENCH_CONFIG: "field=value,..." set with sona_engine_config_set after the preset (e.g.
 * micro_rank=4,micro_alpha=8): a candidate default is measured before it is made one. Not the
 * default preset any more: the group prints the overrides and reports them as row
 * config/overrides (1), so such a run is not mistaken for the defaults'. 0, or -1 (a message
 * printed when loud) on a malformed entry or a field sona_engine_config_set refuses. */
static int config_overrides(sona_engine_config *c, int loud)
{
    const char *env = getenv("SONA_BENCH_CONFIG");
    char item[128];
    for (const char *p = env ? env : ""; *p;) {
        const char *end = strchr(p, ',');
        const size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        char *num_end = NULL;
        if (n >= sizeof item || !eq) {
            if (loud)
                fprintf(stderr, "sona bench: learning: SONA_BENCH_CONFIG entry '%.*s' is not field=value\n", (int)n,
                        p);
            return -1;
        }
        memcpy(item, p, n);
        item[n] = 0;
        item[eq - p] = 0;
        const double v = strtod(item + (eq - p) + 1, &num_end);
        if (*num_end || sona_engine_config_set(c, item, v) != SONA_OK) {
            if (loud)
                fprintf(stderr, "sona bench: learning: SONA_BENCH_CONFIG: cannot set %s to '%s'\n", item,
                        item + (eq - p) + 1);
            return -1;
        }
        if (loud)
            printf("learning: config override %s = %g (not the default preset)\n", item, v);
        p += n + (end ? 1 : 0);
    }
    return 0;
}

/* The default preset at width H; c->seed = the run's seed (see the top of the file). ewc 0:
 * c->ewc_enabled = 0, the one non-default of this group (named _noewc in its rows). */
static sona_engine *engine_make(uint32_t H, uint64_t seed, int ewc, sona_engine_config *c)
{
    sona_engine_config_default(c, SONA_PRESET_DEFAULT, H);
    if (config_overrides(c, 0) != 0)
        return NULL;
    c->seed = seed;
    if (!ewc)
        c->ewc_enabled = 0;
    sona_engine *e = NULL;
    return sona_engine_create(c, &e) == SONA_OK ? e : NULL;
}

/* A Micro-LoRA task row. */
typedef struct lb_spec {
    const char *name;
    uint32_t hidden, clusters, steps, tenants;
    float spread, noise;
    int final_only; /* every step rewarded with the final quality */
    int ceiling;    /* also the best rank-r adapter's score */
    int quick;      /* run in --quick */
} lb_spec;

/* With one step the step's reward is the final quality: h256_c4_s1 is also the 1-step
 * final-quality-only row. */
static const lb_spec micro_specs[] = {
    {"h256_c4_s4", 256, 4, 4, 1, SPREAD, 0, 0, 1, 1},
    {"h1024_c4_s4", 1024, 4, 4, 1, SPREAD, 0, 0, 0, 0},
    {"h4096_c4_s4", 4096, 4, 4, 1, SPREAD, 0, 0, 0, 1},
    {"h256_c4_s1", 256, 4, 1, 1, SPREAD, 0, 0, 0, 1},
    {"h256_c4_s16", 256, 4, 16, 1, SPREAD, 0, 0, 0, 0},
    {"h256_c4_s4_finalq", 256, 4, 4, 1, SPREAD, 0, 1, 0, 1},
    {"h256_c4_s4_noise0.1", 256, 4, 4, 1, SPREAD, 0.1f, 0, 0, 1},
    {"h256_c4_s4_t16", 256, 4, 4, 16, SPREAD, 0, 0, 0, 1},
    {"h256_c2_s4", 256, 2, 4, 1, SPREAD, 0, 0, 1, 0},
    {"h256_c8_s4", 256, 8, 4, 1, SPREAD, 0, 0, 1, 1},
    {"h256_c4_s4_spread0.1", 256, 4, 4, 1, 0.1f, 0, 0, 0, 0},
    {"h256_c4_s4_spread0.6", 256, 4, 4, 1, 0.6f, 0, 0, 0, 0},
};

/* One seed of a Micro-LoRA row: scores at every checkpoint into score[], the ceiling's score
 * into *ceiling when the row has one. */
static int micro_seed(const lb_spec *sp, uint64_t seed, double *score, double *ceiling)
{
    sona_engine_config c;
    sona_engine *e = engine_make(sp->hidden, seed, 1, &c);
    int32_t tenants[16] = {0};
    lb_task t = {0};
    lb_traffic tr = {0};
    int rc = -1;
    if (!e || sp->tenants > 16)
        goto out;
    /* Several tenants: created ones (tenant 0 unused); one: tenant 0. */
    for (uint32_t i = 0; i < sp->tenants && sp->tenants > 1; i++)
        if (sona_tenant_create(e, &tenants[i]) != SONA_OK)
            goto out;
    if (task_init(&t, sp->hidden, sp->clusters, sp->tenants, sp->spread, seed, STREAM_TASK, STREAM_EVAL) ||
        traffic_init(&tr, &t, tenants, sp->tenants, sp->steps, seed))
        goto out;
    tr.noise = sp->noise;
    tr.final_only = sp->final_only;
    lb_wait w;
    wait_init(&w, &c);
    score[0] = score_micro(e, &t, tenants, sp->tenants, tr.y, NULL);
    for (uint32_t n = 1; n <= TRAJ; n++) {
        micro_request(e, &tr, &w);
        if (n % CHECK_EVERY == 0) {
            settle(e, &w, SETTLE_CHECK);
            score[n / CHECK_EVERY] = score_micro(e, &t, tenants, sp->tenants, tr.y, NULL);
        }
    }
    if (sp->ceiling)
        *ceiling = ceiling_score(&t, c.micro_rank, c.micro_alpha, seed, CEIL_RESTARTS, CEIL_ITERS);
    rc = tr.refused || tr.nonfinite ? -1 : 0;
out:
    traffic_free(&tr);
    task_free(&t);
    sona_engine_destroy(e);
    return rc;
}

static void run_micro(bench_ctx *ctx, const lb_spec *sp, const lb_seeds *seeds)
{
    const bench_row fail = {.group = "learning", .name = sp->name, .backend = "cpu"};
    lb_runs r = {.nseeds = seeds->n, .nchecks = TRAJ / CHECK_EVERY + 1};
    double ceiling[MAX_SEEDS] = {0};
    const double t0 = now_s();
    for (int s = 0; s < seeds->n; s++)
        if (micro_seed(sp, seeds->seed[s], r.score[s], &ceiling[s]) != 0) {
            bench_skip(ctx, &fail, "set-up failed, or a request was refused or gave a non-finite output");
            return;
        }
    report_score0(ctx, sp->name, &r);
    report_lifts(ctx, sp->name, "", &r, 0);
    if (sp->ceiling) {
        double cs = 0, cl = 0;
        for (int s = 0; s < seeds->n; s++) {
            cs += ceiling[s];
            cl += ceiling[s] - r.score[s][0];
        }
        cs /= seeds->n;
        cl /= seeds->n;
        report(ctx, sp->name, "ceiling_score", "mean", cs, "score");
        report(ctx, sp->name, "ceiling_lift", "mean", cl, "score");
        /* The seed-mean lift after TRAJ over the seed-mean ceiling lift. */
        report(ctx, sp->name, "ceiling_share@1000", "mean", cl > 0 ? mean_lift(&r, TRAJ / CHECK_EVERY, 0) / cl : NAN,
               "");
    }
    report(ctx, sp->name, "wall", "seconds", now_s() - t0, "s");
    report_curve(ctx, sp->name, "curve", &r, 0);
}

/* ---- task switch ----------------------------------------------------------------------- */

/* Task 1 (the h256_c4_s4 task) for TRAJ trajectories, then task 2 (new query clusters with
 * their own targets) for TRAJ; both scored on their own evaluation sets at every checkpoint.
 * The engine is told nothing at the switch (it must detect it), except in the _deepcycle rows:
 * sona_deep_cycle(e) at the switch, an operator's hint. EWC++ on (the default), or off in the
 * _noewc rows (c.ewc_enabled = 0: what EWC++ is judged against). Rows, besides score@0 (task 1):
 *   task1_gain            task 1's score after task 1 - before (mean, min)
 *   task1_after_task2     task 1's score after task 2 - before any (mean)
 *   task1_kept            task1_after_task2 / task1_gain of the seed means; NaN (null in JSON)
 *                         when task 1 gained less than 0.01: nothing to keep
 *   task2_lift@N, task2_to_lift0.1   task 2's score N trajectories into task 2 - at the switch
 *   boundaries_task1/_task2          task boundaries sona_get_stats counted during each task
 *   curve_task1@N, curve_task2@N     each task's score - its score before any, N = 0..2000 */
typedef struct lb_switch {
    const char *name;
    int ewc;   /* 0: c.ewc_enabled = 0, to compare EWC++ against */
    int deep;  /* sona_deep_cycle at the switch */
    int quick;
} lb_switch;

static const lb_switch switch_specs[] = {
    {"switch", 1, 0, 1},
    {"switch_noewc", 0, 0, 1},
    {"switch_deepcycle", 1, 1, 0},
    {"switch_noewc_deepcycle", 0, 1, 0},
};

static int switch_seed(const lb_switch *sp, uint64_t seed, double *s1, double *s2, double *boundaries)
{
    sona_engine_config c;
    sona_engine *e = engine_make(256, seed, sp->ewc, &c);
    const int32_t tenant = 0;
    lb_task t1 = {0}, t2 = {0};
    lb_traffic tr1 = {0}, tr2 = {0};
    int rc = -1;
    if (!e || task_init(&t1, 256, 4, 1, SPREAD, seed, STREAM_TASK, STREAM_EVAL) ||
        task_init(&t2, 256, 4, 1, SPREAD, seed, STREAM_TASK2, STREAM_EVAL2) ||
        traffic_init(&tr1, &t1, &tenant, 1, 4, seed) || traffic_init(&tr2, &t2, &tenant, 1, 4, seed))
        goto out;
    rng_seed(&tr2.rng, seed, STREAM_TRAFFIC2);
    lb_wait w;
    wait_init(&w, &c);
    s1[0] = score_micro(e, &t1, &tenant, 1, tr1.y, NULL);
    s2[0] = score_micro(e, &t2, &tenant, 1, tr1.y, NULL);
    sona_stats st;
    for (uint32_t n = 1; n <= 2 * TRAJ; n++) {
        if (n == TRAJ + 1) {
            if (sona_get_stats(e, &st) != SONA_OK)
                goto out;
            boundaries[0] = (double)st.task_boundaries;
            if (sp->deep && sona_deep_cycle(e) != SONA_OK)
                goto out;
        }
        micro_request(e, n <= TRAJ ? &tr1 : &tr2, &w);
        if (n % CHECK_EVERY == 0) {
            settle(e, &w, SETTLE_CHECK);
            s1[n / CHECK_EVERY] = score_micro(e, &t1, &tenant, 1, tr1.y, NULL);
            s2[n / CHECK_EVERY] = score_micro(e, &t2, &tenant, 1, tr1.y, NULL);
        }
    }
    if (sona_get_stats(e, &st) != SONA_OK)
        goto out;
    boundaries[1] = (double)st.task_boundaries - boundaries[0];
    rc = tr1.refused || tr2.refused || tr1.nonfinite || tr2.nonfinite ? -1 : 0;
out:
    traffic_free(&tr1);
    traffic_free(&tr2);
    task_free(&t1);
    task_free(&t2);
    sona_engine_destroy(e);
    return rc;
}

static void run_switch(bench_ctx *ctx, const lb_switch *sp, const lb_seeds *seeds)
{
    const bench_row fail = {.group = "learning", .name = sp->name, .backend = "cpu"};
    lb_runs r1 = {.nseeds = seeds->n, .nchecks = 2 * TRAJ / CHECK_EVERY + 1}, r2 = r1;
    double b[MAX_SEEDS][2];
    const double t0 = now_s();
    for (int s = 0; s < seeds->n; s++)
        if (switch_seed(sp, seeds->seed[s], r1.score[s], r2.score[s], b[s]) != 0) {
            bench_skip(ctx, &fail, "set-up failed, or a request was refused or gave a non-finite output");
            return;
        }
    const uint32_t sw = TRAJ / CHECK_EVERY, end = 2 * sw;
    double lo = INFINITY, b1 = 0, b2 = 0;
    for (int s = 0; s < seeds->n; s++) {
        lo = fmin(lo, lift_of(&r1, s, sw, 0));
        b1 += b[s][0] / seeds->n;
        b2 += b[s][1] / seeds->n;
    }
    const double gain = mean_lift(&r1, sw, 0), after = mean_lift(&r1, end, 0);
    report_score0(ctx, sp->name, &r1);
    report(ctx, sp->name, "task1_gain", "mean", gain, "score");
    if (seeds->n > 1)
        report(ctx, sp->name, "task1_gain", "min", lo, "score");
    report(ctx, sp->name, "task1_after_task2", "mean", after, "score");
    /* The share of task 1's seed-mean gain still there after task 2: undefined (NaN) when task 1
     * gained less than 0.01. */
    report(ctx, sp->name, "task1_kept", "mean", gain >= 0.01 ? after / gain : NAN, "");
    report_lifts(ctx, sp->name, "task2_", &r2, sw);
    report(ctx, sp->name, "boundaries_task1", "mean", b1, "");
    report(ctx, sp->name, "boundaries_task2", "mean", b2, "");
    report(ctx, sp->name, "wall", "seconds", now_s() - t0, "s");
    report_curve(ctx, sp->name, "curve_task1", &r1, 0);
    report_curve(ctx, sp->name, "curve_task2", &r2, 0);
}

/* ---- Base-LoRA ------------------------------------------------------------------------- */

/* Base-LoRA through sona_apply_layer, background thread on (the default), layers 0..3 of the
 * default 12, a hidden unit target per (layer, cluster). A request: h_0 = x; for each layer l,
 * y_l = sona_apply_layer(e, l, h_l), then S variations a_l = normalize(y_l + EXPLORE g) |y_l|,
 * each r_l = (1 + cos(a_l, t_{l,k})) / 2 and a step(layer l, a_l, r_l); h_{l+1} = the last a_l;
 * Q = the mean r. Rows base_l4_s4_* (S = 4: the layer's variations contrast with each other)
 * and base_l4_s1_* (S = 1: one scalar per layer, measured against the layer's baseline). Score: the mean over
 * evaluation queries and layers of (1 + cos(y_l, t_{l,k})) / 2 along the noise-free chain
 * h_{l+1} = y_l. sona_force_learn is never called: Base-LoRA learns what loop B's thread
 * learns, by its threshold (checkpoints between two cycles score the last cycle's). Rows
 * besides score@0, lift@N, to_lift0.1 and curve@N (means over seeds):
 *   loop_b_cycles         loop B cycles the run saw
 *   loop_b_wait           seconds the bench waited for loop B, all waits of the run
 *   loop_b_wait_timeouts  waits that reached WAIT_LIMIT_MS
 *   checks_left_queued    of the 40 checkpoints, those scored with loop_b_min_batch or more
 *                         trajectories still queued (not learned by Base-LoRA yet) */
typedef struct lb_base_out {
    double waited_s, timeouts, left_queued, cycles;
} lb_base_out;

static int base_seed(uint64_t seed, uint32_t per_layer, double *score, lb_base_out *o)
{
    sona_engine_config c;
    sona_engine *e = engine_make(256, seed, 1, &c);
    const int32_t tenant = 0;
    lb_task t = {0};
    lb_traffic tr = {0};
    int rc = -1;
    if (!e || task_init(&t, 256, 4, BASE_LAYERS, SPREAD, seed, STREAM_TASK, STREAM_EVAL) ||
        traffic_init(&tr, &t, &tenant, 1, BASE_LAYERS * per_layer, seed))
        goto out;
    lb_wait w;
    wait_init(&w, &c);
    score[0] = score_base(e, &t, tr.x); /* x and y: 2 H floats */
    for (uint32_t n = 1; n <= TRAJ; n++) {
        base_request(e, &tr, &w, per_layer);
        if (n % CHECK_EVERY == 0) {
            settle(e, &w, SETTLE_CHECK);
            score[n / CHECK_EVERY] = score_base(e, &t, tr.x);
        }
    }
    sona_stats st;
    if (sona_get_stats(e, &st) != SONA_OK)
        goto out;
    *o = (lb_base_out){w.waited_s, w.timeouts, w.left_queued, (double)st.loop_b_cycles};
    rc = tr.refused || tr.nonfinite ? -1 : 0;
out:
    traffic_free(&tr);
    task_free(&t);
    sona_engine_destroy(e);
    return rc;
}

static void run_base(bench_ctx *ctx, const lb_seeds *seeds, uint32_t per_layer)
{
    char name[48];
    snprintf(name, sizeof name, "base_l4_s%u_h256_c4", per_layer);
    const bench_row fail = {.group = "learning", .name = name, .backend = "cpu"};
    lb_runs r = {.nseeds = seeds->n, .nchecks = TRAJ / CHECK_EVERY + 1};
    lb_base_out sum = {0};
    const double t0 = now_s();
    for (int s = 0; s < seeds->n; s++) {
        lb_base_out o;
        if (base_seed(seeds->seed[s], per_layer, r.score[s], &o) != 0) {
            bench_skip(ctx, &fail, "set-up failed, or a request was refused or gave a non-finite output");
            return;
        }
        sum.waited_s += o.waited_s / seeds->n;
        sum.timeouts += o.timeouts / seeds->n;
        sum.left_queued += o.left_queued / seeds->n;
        sum.cycles += o.cycles / seeds->n;
    }
    report_score0(ctx, name, &r);
    report_lifts(ctx, name, "", &r, 0);
    report(ctx, name, "loop_b_cycles", "mean", sum.cycles, "cycles");
    report(ctx, name, "loop_b_wait", "mean", sum.waited_s, "s");
    report(ctx, name, "loop_b_wait_timeouts", "mean", sum.timeouts, "waits");
    report(ctx, name, "checks_left_queued", "mean", sum.left_queued, "checks");
    report(ctx, name, "wall", "seconds", now_s() - t0, "s");
    report_curve(ctx, name, "curve", &r, 0);
}

/* ---- hostile stream -------------------------------------------------------------------- */

/* The h256_c4_s4 task's traffic (hidden 256, 4 steps) with hostile rewards: n/2 trajectories of
 * uniform random rewards (each step's and the final quality, independent), n/4 rewarded 1 - the
 * true reward, n/4 rewarded for outputs far from the query (REWARD_AWAY); n = 100 000 (--quick:
 * 10 000). Then TRAJ benign trajectories from that state. Rows hostileNk_h256/:
 *   all_finite            1 when every output of every seed (each request's y, the evaluation
 *                         set after each phase and at each benign checkpoint) was finite
 *   max_rel_change_random/_inverted/_away   max over seeds and the evaluation set of
 *                         |y(x) - x| / |x| after each phase
 *   score_change          score after the hostile stream - the fresh engine's (mean)
 *   refused               requests where a call did not return SONA_OK (total over seeds)
 *   benign_lift@N, benign_to_lift0.1, curve_benign@N   lift from the score the stream left */
typedef struct lb_hostile_out {
    double max_rel[3];  /* after the random, inverted and away phases */
    double score_change; /* score after the hostile stream - the fresh engine's */
    int finite;         /* every output (traffic and evaluation) finite */
    double refused;
} lb_hostile_out;

static int hostile_seed(uint64_t seed, uint32_t n, double *score, lb_hostile_out *o)
{
    sona_engine_config c;
    sona_engine *e = engine_make(256, seed, 1, &c);
    const int32_t tenant = 0;
    lb_task t = {0};
    lb_traffic tr = {0};
    int rc = -1;
    if (!e || task_init(&t, 256, 4, 1, SPREAD, seed, STREAM_TASK, STREAM_EVAL) ||
        traffic_init(&tr, &t, &tenant, 1, 4, seed))
        goto out;
    lb_wait w;
    wait_init(&w, &c);
    lb_check chk;
    const double fresh = score_micro(e, &t, &tenant, 1, tr.y, NULL);
    static const lb_reward phases[3] = {REWARD_RANDOM, REWARD_INVERTED, REWARD_AWAY};
    const uint32_t len[3] = {n / 2, n / 4, n - n / 2 - n / 4};
    o->finite = 1;
    for (int p = 0; p < 3; p++) {
        tr.reward = phases[p];
        for (uint32_t i = 0; i < len[p]; i++)
            micro_request(e, &tr, &w);
        settle(e, &w, SETTLE_CHECK);
        score[0] = score_micro(e, &t, &tenant, 1, tr.y, &chk);
        o->max_rel[p] = chk.max_rel;
        o->finite &= chk.finite;
    }
    o->score_change = score[0] - fresh;
    tr.reward = REWARD_TRUE;
    for (uint32_t i = 1; i <= TRAJ; i++) {
        micro_request(e, &tr, &w);
        if (i % CHECK_EVERY == 0) {
            settle(e, &w, SETTLE_CHECK);
            score[i / CHECK_EVERY] = score_micro(e, &t, &tenant, 1, tr.y, &chk);
            o->finite &= chk.finite;
        }
    }
    o->finite &= tr.nonfinite == 0;
    o->refused = (double)tr.refused;
    rc = 0;
out:
    traffic_free(&tr);
    task_free(&t);
    sona_engine_destroy(e);
    return rc;
}

static void run_hostile(bench_ctx *ctx, const lb_seeds *seeds, uint32_t n)
{
    char name[32];
    snprintf(name, sizeof name, "hostile%uk_h256", n / 1000);
    const bench_row fail = {.group = "learning", .name = name, .backend = "cpu"};
    lb_runs r = {.nseeds = seeds->n, .nchecks = TRAJ / CHECK_EVERY + 1};
    lb_hostile_out o[MAX_SEEDS];
    const double t0 = now_s();
    for (int s = 0; s < seeds->n; s++)
        if (hostile_seed(seeds->seed[s], n, r.score[s], &o[s]) != 0) {
            bench_skip(ctx, &fail, "set-up failed");
            return;
        }
    static const char *const phase[3] = {"max_rel_change_random", "max_rel_change_inverted", "max_rel_change_away"};
    double finite = 1, change = 0, refused = 0;
    for (int s = 0; s < seeds->n; s++) {
        finite = fmin(finite, o[s].finite);
        change += o[s].score_change / seeds->n;
        refused += o[s].refused;
    }
    report(ctx, name, "all_finite", "all_seeds", finite, "");
    for (int p = 0; p < 3; p++) {
        double mx = 0;
        for (int s = 0; s < seeds->n; s++)
            mx = o[s].max_rel[p] > mx || isnan(o[s].max_rel[p]) ? o[s].max_rel[p] : mx;
        report(ctx, name, phase[p], "max", mx, "");
    }
    report(ctx, name, "score_change", "mean", change, "score");
    report(ctx, name, "refused", "total", refused, "requests");
    report_lifts(ctx, name, "benign_", &r, 0);
    report(ctx, name, "wall", "seconds", now_s() - t0, "s");
    report_curve(ctx, name, "curve_benign", &r, 0);
}

/* ---- the group ------------------------------------------------------------------------- */

/* SONA_BENCH_ROWS: a comma-separated list of substrings; only the rows whose name contains one
 * run (a change to the rule is tried on the rows it concerns first: the whole group takes
 * minutes on a shared machine). Unset or empty: every row. */
static int row_wanted(const char *name)
{
    const char *env = getenv("SONA_BENCH_ROWS");
    if (!env || !*env)
        return 1;
    for (const char *p = env; *p;) {
        const char *end = strchr(p, ',');
        const size_t n = end ? (size_t)(end - p) : strlen(p);
        for (const char *h = name; n && *h; h++)
            if (strncmp(h, p, n) == 0)
                return 1;
        p += n + (end ? 1 : 0);
    }
    return 0;
}

static void run_learning(bench_ctx *ctx)
{
    const int quick = bench_quick(ctx);
    lb_seeds seeds = {.n = quick ? 1 : MAX_SEEDS};
    uint64_t first = BASE_SEED;
    const char *env = getenv("SONA_BENCH_SEED");
    if (env && *env) {
        char *end;
        const unsigned long long v = strtoull(env, &end, 0);
        if (*end)
            fprintf(stderr, "sona bench: learning: SONA_BENCH_SEED=%s is not a number; seed %llu used\n", env,
                    (unsigned long long)first);
        else
            first = v;
    }
    printf("learning: seeds");
    for (int s = 0; s < seeds.n; s++) {
        seeds.seed[s] = first + (uint64_t)s;
        printf(" %llu", (unsigned long long)seeds.seed[s]);
    }
    printf(" (SONA_BENCH_SEED sets the first)\n");
    fflush(stdout);
    report(ctx, "seeds", "first", "seed", (double)first, "");
    report(ctx, "seeds", "count", "seeds", seeds.n, "");
    const char *overrides = getenv("SONA_BENCH_CONFIG");
    if (overrides && *overrides) {
        sona_engine_config probe;
        sona_engine_config_default(&probe, SONA_PRESET_DEFAULT, 256);
        if (config_overrides(&probe, 1) != 0)
            return;
        report(ctx, "config", "overrides", "set", 1, "");
    }
    for (size_t i = 0; i < sizeof micro_specs / sizeof micro_specs[0]; i++)
        if ((!quick || micro_specs[i].quick) && row_wanted(micro_specs[i].name))
            run_micro(ctx, &micro_specs[i], &seeds);
    for (size_t i = 0; i < sizeof switch_specs / sizeof switch_specs[0]; i++)
        if ((!quick || switch_specs[i].quick) && row_wanted(switch_specs[i].name))
            run_switch(ctx, &switch_specs[i], &seeds);
    if (row_wanted("base_l4_s4_h256_c4"))
        run_base(ctx, &seeds, BASE_MAX_PER_LAYER);
    if (row_wanted("base_l4_s1_h256_c4"))
        run_base(ctx, &seeds, 1);
    if (row_wanted(quick ? "hostile10k_h256" : "hostile100k_h256"))
        run_hostile(ctx, &seeds, quick ? 10000 : 100000);
}

const bench_group bench_learning = {"learning",
                                    "does the engine learn at the default preset: lift on synthetic tasks "
                                    "(Micro-LoRA, task switch, Base-LoRA, hostile rewards)",
                                    run_learning};
