/* SPDX-License-Identifier: MIT */
/* sona_sync over k ranks in one process (support/thread_comm.h): after a sync every rank holds
 * the same Base-LoRA bit for bit, the best rank-r approximation of the trajectory-weighted
 * average of what the ranks had (checked against a dense double reference), published to
 * apply; a tenant live on several ranks ends there as the merge of its adapters (and one live
 * on a single rank untouched); the global counters are the sums; a sync with nothing new changes no bit; a callback
 * that fails at any of its calls leaves every engine exactly as it was; mismatched shapes are
 * refused on every rank; SONA_SYNC_PACED steps by the gain its last move implies; loop B's
 * attached syncs (sona_sync_attach) run every n cycles and end the ranks bit-identical, and a
 * failed one leaves each engine where its cycle left it. */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/rng.h"
#include "core/adapt/merge.h"
#include "engine/inspect.h"
#include "support/fill.h"
#include "support/synth_task.h"
#include "support/thread_comm.h"
#include <sona.h>

enum { K = 3, H = 24, LAYERS = 3, RANK = 4, AF = LAYERS * RANK * H, MICRO = 2, MF = MICRO * H };

/* The default preset at the tests' small shape, on the CPU, with loop B only when a test
 * forces it. */
static void engine_config(uint32_t hidden, sona_engine_config *cfg)
{
    sona_engine_config_default(cfg, SONA_PRESET_DEFAULT, hidden);
    cfg->base_layers = LAYERS;
    cfg->base_rank = RANK;
    cfg->base_alpha = 2.0f * RANK;
    cfg->micro_rank = MICRO;
    cfg->micro_alpha = 2.0f * MICRO;
    cfg->background_thread = 0;
    cfg->device_apply = 0;
    cfg->loop_b_threshold = 1u << 30;
    cfg->loop_b_interval_ms = 0;
}

static sona_engine *make_engine(uint32_t hidden)
{
    sona_engine_config cfg;
    engine_config(hidden, &cfg);
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(&cfg, &e), SONA_OK, "%s", sona_last_error());
    return e;
}

/* n requests of tenant's synthetic task on e (its own stream), a loop B cycle every 10 (so
 * that A moves too, from the second cycle on: the ranks' B A then differ in both factors). */
static void train_tenant(sona_engine *e, int32_t tenant, uint64_t seed, uint64_t stream, uint32_t n)
{
    synth_task t;
    cr_assert_eq(synth_task_init(&t, H, 4, seed, 0), 0);
    sona_rng rng;
    sona_rng_seed(&rng, seed, stream);
    for (uint32_t done = 0; done < n; done += 10) {
        synth_task_run(&t, e, tenant, n - done < 10 ? n - done : 10, &rng, 1);
        cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
    }
    synth_task_free(&t);
}

static void train(sona_engine *e, uint64_t seed, uint64_t stream, uint32_t n)
{
    train_tenant(e, 0, seed, stream, n);
}

/* Base-LoRA's weights and tenant 0's. */
typedef struct weights {
    float A[AF], Bt[AF];
    float mA[MF], mBt[MF];
} weights;

static void read_weights(sona_engine *e, weights *w)
{
    cr_assert_eq(eng_inspect_base_weights(e, w->A, w->Bt), SONA_OK);
    cr_assert_eq(eng_inspect_tenant_weights(e, 0, w->mA, w->mBt), SONA_OK);
}

/* The merge of tenant slot `tenant` over the engines in `which` (before-weights from the
 * caller's reads) computed here: what every rank holding it must end with, bit for bit. */
static void expected_micro(const float *const *A, const float *const *Bt, uint32_t n, float *eA,
                           float *eBt)
{
    cr_assert_eq(sona_lora_merge(H, MICRO, n, A, Bt, NULL, eA, eBt, NULL), SONA_OK);
}

typedef struct sync_run {
    sona_engine *e[K];
    thread_world *world;
    sona_status st[K];
    sona_sync_result res[K];
    const sona_sync_config *cfg;
    const sona_sync_config *cfgs[K]; /* a rank's own, where set */
} sync_run;

static void sync_rank(uint32_t rank, void *arg)
{
    sync_run *s = arg;
    s->st[rank] = sona_sync(s->e[rank], thread_world_comm(s->world, rank),
                            s->cfgs[rank] ? s->cfgs[rank] : s->cfg, &s->res[rank]);
}

/* Runs rank(i, s) for every rank at once over a world failing at call fail_at (0: none). */
static void sync_all_by(sync_run *s, uint32_t fail_at, void (*rank)(uint32_t, void *))
{
    s->world = thread_world_create(K, fail_at);
    cr_assert(s->world);
    memset(s->res, 0, sizeof s->res);
    thread_world_run(K, rank, s);
    thread_world_destroy(s->world);
    s->world = NULL;
}

/* Syncs every engine at once over a world failing at call fail_at (0: none). */
static void sync_all(sync_run *s, uint32_t fail_at) { sync_all_by(s, fail_at, sync_rank); }

/* |M - B A|_F and |M|_F of layer l, M = sum_i w_i B_i A_i in double. */
static void layer_errors(const weights *in, const double *w, const weights *out, uint32_t l,
                         double *err2, double *norm2)
{
    for (uint32_t h = 0; h < H; h++)
        for (uint32_t c = 0; c < H; c++) {
            double m = 0.0, v = 0.0;
            for (uint32_t i = 0; i < K; i++)
                for (uint32_t j = 0; j < RANK; j++) {
                    const size_t o = ((size_t)l * RANK + j) * H;
                    m += w[i] * in[i].Bt[o + h] * in[i].A[o + c];
                }
            for (uint32_t j = 0; j < RANK; j++) {
                const size_t o = ((size_t)l * RANK + j) * H;
                v += (double)out->Bt[o + h] * out->A[o + c];
            }
            *err2 += (m - v) * (m - v);
            *norm2 += m * m;
        }
}

/* The optimal rank-r error of sum_i w_i B_i A_i over the layers (n adapters: the K engines'
 * and S), by the exact merge of core/adapt/merge.h. */
static double optimal_error(const weights *const *in, const double *w, uint32_t n)
{
    double total = 0.0, tail = 0.0;
    for (uint32_t l = 0; l < LAYERS; l++) {
        const float *pa[K + 1], *pb[K + 1];
        for (uint32_t i = 0; i < n; i++) {
            pa[i] = in[i]->A + (size_t)l * RANK * H;
            pb[i] = in[i]->Bt + (size_t)l * RANK * H;
        }
        float oA[RANK * H], oB[RANK * H];
        sona_merge_info info;
        cr_assert_eq(sona_lora_merge(H, RANK, n, pa, pb, w, oA, oB, &info), SONA_OK);
        total += info.total;
        tail += info.tail;
    }
    return sqrt(tail / total);
}

/* SONA_SYNC_EXACT: merge_error is the optimal error, and it is what the dense matrix shows.
 * SONA_SYNC_SKETCH: within twice the optimal on these adapters (which differ in A and B well
 * beyond rank r), and merge_error (the part of it in the sketched range) no more than it. */
static void check_error(sona_sync_method method, double measured, double reported, double opt)
{
    if (method == SONA_SYNC_EXACT) {
        cr_assert(fabs(measured - reported) <= 1e-4, "measured %.9g, reported %.9g", measured,
                  reported);
        cr_assert(fabs(opt - reported) <= 1e-6, "optimal %.9g, reported %.9g", opt, reported);
    } else {
        cr_assert(measured <= 2.0 * opt + 1e-6, "sketch %.9g, optimal %.9g", measured, opt);
        cr_assert(reported <= measured + 1e-6, "reported %.9g, measured %.9g", reported, measured);
    }
}

static void weighted_average(sona_sync_method method)
{
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    sona_sync_config cfg;
    sona_sync_config_default(&cfg);
    cfg.method = method;
    sync_run s = {.cfg = &cfg};
    static weights before[K], after[K];
    sona_stats local[K];
    const uint32_t traffic[K] = {60, 90, 150}; /* count weights 0.2, 0.3, 0.5 */
    for (uint32_t i = 0; i < K; i++) {
        s.e[i] = make_engine(H);
        train(s.e[i], seed, 10 + i, traffic[i]);
        /* i refused queries (out of range): inputs_out_of_range differs per rank. */
        float far[H];
        for (uint32_t h = 0; h < H; h++)
            far[h] = 2.0f * SONA_MAX_ACTIVATION;
        for (uint32_t j = 0; j < i; j++) {
            sona_request *rq = NULL;
            cr_assert_eq(sona_request_begin(s.e[i], 0, far, &rq), SONA_E_INVALID);
        }
        read_weights(s.e[i], &before[i]);
        cr_assert_eq(sona_get_stats(s.e[i], &local[i]), SONA_OK);
    }
    cr_assert_neq(memcmp(before[0].Bt, before[1].Bt, sizeof before[0].Bt), 0);
    sync_all(&s, 0);
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_OK, "rank %u: %s", i, sona_engine_last_error(s.e[i]));
        read_weights(s.e[i], &after[i]);
        cr_assert_eq(s.res[i].ranks, K);
        cr_assert_eq(s.res[i].rank, i);
        cr_assert_float_eq(s.res[i].weight, (double)traffic[i] / 300.0, 1e-12);
        cr_assert_eq(s.res[i].merge_error, s.res[0].merge_error);
        cr_assert_gt(s.res[i].merge_us, 0.0, "rank %u merged in no time", i);
        cr_assert_eq(s.res[i].global.trajectories_processed, 300);
        cr_assert_eq(s.res[i].global.trajectories_recorded,
                     local[0].trajectories_recorded + local[1].trajectories_recorded +
                         local[2].trajectories_recorded);
        cr_assert_eq(s.res[i].global.base_updates,
                     local[0].base_updates + local[1].base_updates + local[2].base_updates);
        cr_assert_eq(s.res[i].global.tenants, K);
        cr_assert_eq(s.res[i].global.signals_accepted, local[0].signals_accepted +
                     local[1].signals_accepted + local[2].signals_accepted);
        cr_assert_eq(s.res[i].global.inputs_out_of_range, 3); /* 0 + 1 + 2 */
    }
    for (uint32_t i = 1; i < K; i++) {
        cr_assert_eq(memcmp(after[i].A, after[0].A, sizeof after[0].A), 0, "rank %u's A", i);
        cr_assert_eq(memcmp(after[i].Bt, after[0].Bt, sizeof after[0].Bt), 0, "rank %u's B", i);
    }
    /* Tenant 0 is live on every rank: merged with equal weights, the same bits everywhere. */
    const float *mA[K] = {before[0].mA, before[1].mA, before[2].mA};
    const float *mB[K] = {before[0].mBt, before[1].mBt, before[2].mBt};
    float eA[MF], eBt[MF];
    expected_micro(mA, mB, K, eA, eBt);
    cr_assert_neq(memcmp(before[0].mBt, before[1].mBt, sizeof eBt), 0);
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.res[i].tenants_merged, 1);
        cr_assert_eq(memcmp(after[i].mA, eA, sizeof eA), 0, "rank %u's tenant 0 A", i);
        cr_assert_eq(memcmp(after[i].mBt, eBt, sizeof eBt), 0, "rank %u's tenant 0 B", i);
    }
    float ym[K][H], xm[H];
    for (uint32_t i = 0; i < H; i++)
        xm[i] = (float)i / H - 0.5f;
    for (uint32_t i = 0; i < K; i++)
        cr_assert_eq(sona_apply(s.e[i], 0, xm, ym[i]), SONA_OK);
    cr_assert_eq(memcmp(ym[0], ym[1], sizeof ym[0]), 0, "tenant 0 not published alike");
    cr_assert_eq(memcmp(ym[0], ym[2], sizeof ym[0]), 0, "tenant 0 not published alike");
    /* The optimal rank-r error of the weighted average, as merge_error says. */
    const double w[K] = {0.2, 0.3, 0.5};
    double err2 = 0.0, norm2 = 0.0;
    for (uint32_t l = 0; l < LAYERS; l++)
        layer_errors(before, w, &after[0], l, &err2, &norm2);
    const weights *in[K] = {&before[0], &before[1], &before[2]};
    const double opt = optimal_error(in, w, K);
    printf("merged Base-LoRA (%s): relative error %.6g against the dense average (optimal %.6g, "
           "merge_error %.6g)\n", method == SONA_SYNC_EXACT ? "exact" : "sketch",
           sqrt(err2 / norm2), opt, s.res[0].merge_error);
    cr_assert(norm2 > 0.0);
    cr_assert(opt > 1e-4, "the ranks' adapters should differ beyond rank r");
    check_error(method, sqrt(err2 / norm2), s.res[0].merge_error, opt);
    /* Published: apply through a layer agrees on every rank. */
    float x[H], y[K][H];
    sona_rng rng;
    sona_rng_seed(&rng, seed, 99);
    fill_uniform(&rng, x, H, -1.0f, 1.0f);
    for (uint32_t i = 0; i < K; i++)
        cr_assert_eq(sona_apply_layer(s.e[i], 1, x, y[i]), SONA_OK);
    cr_assert_eq(memcmp(y[0], y[1], sizeof y[0]), 0);
    cr_assert_eq(memcmp(y[0], y[2], sizeof y[0]), 0);
    /* Nothing learned since: a second sync changes no bit and reports no error. */
    sync_all(&s, 0);
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_OK);
        cr_assert_eq(s.res[i].merge_error, 0.0);
        cr_assert_float_eq(s.res[i].weight, 1.0 / K, 1e-15); /* nobody learned: equal */
        weights again;
        read_weights(s.e[i], &again);
        cr_assert_eq(memcmp(&again, &after[0], sizeof again), 0);
    }
    for (uint32_t i = 0; i < K; i++)
        sona_engine_destroy(s.e[i]);
}

Test(sync, ranks_end_bit_identical_on_the_weighted_rank_r_average)
{
    weighted_average(SONA_SYNC_EXACT);
}

Test(sync, the_sketch_ends_bit_identical_close_to_the_average)
{
    weighted_average(SONA_SYNC_SKETCH);
}

/* The bank in id order, as a digest (ids, sizes, weights, qualities, accesses, centroids,
 * routes), with its pattern count and summed size. */
typedef struct bank_view {
    uint32_t count;
    uint64_t size, digest, next_id;
} bank_view;

static uint64_t mix(uint64_t x, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        x = (x ^ b[i]) * 0x100000001b3ull;
    return x;
}

static int by_id(const void *a, const void *b)
{
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static bank_view view_bank(sona_engine *e)
{
    bank_view v = {0, 0, 0xcbf29ce484222325ull, 0};
    sona_bank *b = eng_inspect_bank_begin(e);
    v.count = sona_bank_pattern_count(b);
    v.next_id = sona_bank_next_id(b);
    uint64_t *ids = malloc((v.count + 1) * sizeof *ids);
    cr_assert(ids);
    for (uint32_t i = 0; i < v.count; i++) {
        sona_pattern p;
        cr_assert_eq(sona_bank_pattern_at(b, i, &p, NULL), SONA_OK);
        ids[i] = p.id;
    }
    qsort(ids, v.count, sizeof *ids, by_id);
    for (uint32_t i = 0; i < v.count; i++) {
        sona_pattern p;
        float c[H];
        cr_assert_eq(sona_bank_pattern_get(b, ids[i], &p, c), SONA_OK);
        v.size += p.size;
        v.digest = mix(v.digest, &p.id, sizeof p.id);
        v.digest = mix(v.digest, &p.size, sizeof p.size);
        v.digest = mix(v.digest, &p.total_weight, sizeof p.total_weight);
        v.digest = mix(v.digest, &p.avg_quality, sizeof p.avg_quality);
        v.digest = mix(v.digest, &p.access_count, sizeof p.access_count);
        v.digest = mix(v.digest, c, sizeof c);
        for (uint32_t r = 0; r < p.route_count; r++) {
            const char *name;
            uint64_t n;
            float q;
            cr_assert_eq(sona_bank_pattern_route(b, p.id, r, &name, &n, &q), SONA_OK);
            v.digest = mix(v.digest, name, strlen(name));
            v.digest = mix(v.digest, &n, sizeof n);
            v.digest = mix(v.digest, &q, sizeof q);
        }
    }
    eng_inspect_bank_end(e);
    free(ids);
    return v;
}

/* Fail at every call in turn until a sync goes through: each failed one must change nothing,
 * weights, counters, EWC++ and the pattern bank alike. history: a first sync went through before (so the last
 * sync's state, the turn back to its coordinates and an EWC++ task are part of it). */
static void failing_callbacks(sona_sync_method method, int history)
{
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    sona_sync_config cfg;
    sona_sync_config_default(&cfg);
    cfg.method = method;
    cfg.merge = history == 2 ? SONA_SYNC_PACED : history ? SONA_SYNC_CHANGES : SONA_SYNC_AVERAGE;
    sync_run s = {.cfg = &cfg};
    enum { N = 2 * AF };
    static weights before[K], now;
    static float fisher_before[K][N], fisher_now[N];
    uint32_t tasks_before[K], tasks_now;
    bank_view bank_before[K];
    sona_stats st_before[K], st_now;
    for (uint32_t i = 0; i < K; i++) {
        s.e[i] = make_engine(H);
        train(s.e[i], seed, 20 + i, 50 + 20 * i);
    }
    for (int done = 0; done < history; done++) { /* 2: PACED's gain has a last move */
        sync_all(&s, 0);
        for (uint32_t i = 0; i < K; i++)
            cr_assert_eq(s.st[i], SONA_OK);
        if (done == 0)
            cr_assert_eq(eng_inspect_base_end_task(s.e[1]), SONA_OK);
        for (uint32_t i = 0; i < K; i++)
            train(s.e[i], seed, 30 + 10 * (uint64_t)done + i, 30);
    }
    for (uint32_t i = 0; i < K; i++) {
        read_weights(s.e[i], &before[i]);
        cr_assert_eq(sona_get_stats(s.e[i], &st_before[i]), SONA_OK);
        cr_assert_eq(eng_inspect_base_ewc(s.e[i], fisher_before[i], NULL, NULL, &tasks_before[i]),
                     SONA_OK);
        bank_before[i] = view_bank(s.e[i]);
    }
    uint32_t fail_at = 1, failures = 0;
    for (;; fail_at++) {
        cr_assert(fail_at < 100, "a sync never succeeded");
        sync_all(&s, fail_at);
        if (s.st[0] == SONA_OK)
            break;
        failures++;
        for (uint32_t i = 0; i < K; i++) {
            cr_assert_neq(s.st[i], SONA_OK, "fail_at %u: rank %u succeeded alone", fail_at, i);
            cr_assert_str_neq(sona_engine_last_error(s.e[i]), "");
            read_weights(s.e[i], &now);
            cr_assert_eq(memcmp(&now, &before[i], sizeof now), 0, "fail_at %u: rank %u changed",
                         fail_at, i);
            cr_assert_eq(sona_get_stats(s.e[i], &st_now), SONA_OK);
            cr_assert_eq(st_now.base_updates, st_before[i].base_updates);
            cr_assert_eq(st_now.trajectories_processed, st_before[i].trajectories_processed);
            cr_assert_eq(st_now.tasks, st_before[i].tasks);
            cr_assert_eq(eng_inspect_base_ewc(s.e[i], fisher_now, NULL, NULL, &tasks_now), SONA_OK);
            cr_assert_eq(tasks_now, tasks_before[i]);
            cr_assert_eq(memcmp(fisher_now, fisher_before[i], sizeof fisher_now), 0,
                         "fail_at %u: rank %u's Fisher changed", fail_at, i);
            const bank_view bv = view_bank(s.e[i]);
            cr_assert_eq(bv.digest, bank_before[i].digest, "fail_at %u: rank %u's bank changed",
                         fail_at, i);
            cr_assert_eq(bv.next_id, bank_before[i].next_id);
        }
    }
    printf("%s%s: %u failing calls tried, each left the engines unchanged\n",
           method == SONA_SYNC_EXACT ? "exact" : "sketch",
           history == 2 ? " after two paced syncs" : history ? " after a sync" : "", failures);
    cr_assert_geq(failures, 6); /* size, rank, header, Base-LoRA, tenants, status: each tried */
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_OK);
        read_weights(s.e[i], &now);
        cr_assert_neq(memcmp(&now, &before[i], sizeof now), 0, "rank %u did not merge", i);
        sona_engine_destroy(s.e[i]);
    }
}

Test(sync, a_failing_callback_leaves_every_engine_as_it_was)
{
    failing_callbacks(SONA_SYNC_SKETCH, 0);
    failing_callbacks(SONA_SYNC_EXACT, 0);
}

Test(sync, a_failing_callback_after_a_sync_leaves_every_engine_as_it_was)
{
    failing_callbacks(SONA_SYNC_SKETCH, 1);
    failing_callbacks(SONA_SYNC_EXACT, 1);
}

Test(sync, a_failing_callback_after_two_paced_syncs_leaves_every_engine_as_it_was)
{
    failing_callbacks(SONA_SYNC_SKETCH, 2); /* the gain's all-gather among the calls */
    failing_callbacks(SONA_SYNC_EXACT, 2);
}

/* A comm over a thread world's rank that, on its first all-gather (sona_sync's header), sends
 * another protocol number: a rank of another libsona. */
typedef struct tampered {
    sona_comm *inner;
    int done;
} tampered;
static sona_status tampered_rank(void *ctx, uint32_t *r) { return sona_comm_rank(((tampered *)ctx)->inner, r); }
static sona_status tampered_size(void *ctx, uint32_t *n) { return sona_comm_size(((tampered *)ctx)->inner, n); }
static sona_status tampered_allreduce(void *ctx, float *data, size_t n)
{
    return sona_comm_allreduce_sum(((tampered *)ctx)->inner, data, n);
}
static sona_status tampered_allgather(void *ctx, const void *send, size_t bytes, void *recv)
{
    tampered *t = ctx;
    if (t->done++ || bytes < 16)
        return sona_comm_allgather(t->inner, send, bytes, recv);
    unsigned char *copy = malloc(bytes);
    cr_assert(copy);
    memcpy(copy, send, bytes);
    uint64_t protocol;
    memcpy(&protocol, copy + 8, sizeof protocol); /* after the magic */
    protocol += 1;
    memcpy(copy + 8, &protocol, sizeof protocol);
    const sona_status st = sona_comm_allgather(t->inner, copy, bytes, recv);
    free(copy);
    return st;
}

static void sync_rank_tampered(uint32_t rank, void *arg)
{
    sync_run *s = arg;
    sona_comm *c = thread_world_comm(s->world, rank);
    tampered t = {.inner = c};
    sona_comm_ops ops;
    sona_comm_ops_default(&ops);
    ops.ctx = &t;
    ops.rank = tampered_rank;
    ops.size = tampered_size;
    ops.allreduce_sum_f32 = tampered_allreduce;
    ops.allgather = tampered_allgather;
    sona_comm *mine = NULL;
    if (rank == 1 && sona_comm_create(&ops, &mine) == SONA_OK)
        c = mine;
    s->st[rank] = sona_sync(s->e[rank], c, s->cfg, &s->res[rank]);
    sona_comm_destroy(mine);
}

/* A rank of another sync protocol is refused by every rank alike, which keep their state. */
Test(sync, another_sync_protocol_is_refused_on_every_rank)
{
    sync_run s = {.cfg = NULL};
    weights before[K], after;
    for (uint32_t i = 0; i < K; i++) {
        s.e[i] = make_engine(H);
        train(s.e[i], i + 1, 1, 40);
        read_weights(s.e[i], &before[i]);
    }
    sync_all_by(&s, 0, sync_rank_tampered);
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_E_VERSION, "rank %u: %d", i, s.st[i]);
        cr_assert(strstr(sona_engine_last_error(s.e[i]), "protocol"), "%s", sona_engine_last_error(s.e[i]));
        read_weights(s.e[i], &after);
        cr_assert_eq(memcmp(&after, &before[i], sizeof after), 0, "rank %u changed", i);
        sona_engine_destroy(s.e[i]);
    }
}

Test(sync, other_shapes_are_refused_on_every_rank)
{
    sync_run s = {.cfg = NULL};
    s.e[0] = make_engine(H);
    s.e[1] = make_engine(H);
    s.e[2] = make_engine(H + 8);
    sync_all(&s, 0);
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_E_SIZE, "rank %u: %d", i, s.st[i]);
        sona_engine_destroy(s.e[i]);
    }
    /* One shape, but a rank asking for another merge: refused on every rank alike. */
    sona_sync_config other;
    sona_sync_config_default(&other);
    other.merge = SONA_SYNC_AVERAGE;
    s.cfgs[1] = &other;
    for (uint32_t i = 0; i < K; i++)
        s.e[i] = make_engine(H);
    sync_all(&s, 0);
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_E_SIZE, "rank %u: %d", i, s.st[i]);
        sona_engine_destroy(s.e[i]);
    }
    sona_comm_ops ops;
    sona_comm_ops_default(&ops);
    ops.allgather = NULL;
    sona_comm *c = NULL;
    cr_assert_eq(sona_comm_create(&ops, &c), SONA_E_NULL);
    sona_comm_ops_default(&ops);
    cr_assert_eq(sona_comm_create(&ops, &c), SONA_OK);
    sona_engine *e = make_engine(H);
    train(e, 1, 1, 40);
    weights w0, w1;
    read_weights(e, &w0);
    sona_sync_config bad = {.weighting = (sona_sync_weighting)7};
    cr_assert_eq(sona_sync(e, c, &bad, NULL), SONA_E_INVALID);
    cr_assert_eq(sona_sync(NULL, c, NULL, NULL), SONA_E_NULL);
    cr_assert_eq(sona_sync(e, NULL, NULL, NULL), SONA_E_NULL);
    bad.weighting = SONA_SYNC_EQUAL;
    bad.merge = (sona_sync_merge)9;
    cr_assert_eq(sona_sync(e, c, &bad, NULL), SONA_E_INVALID);
    uint32_t v = 7;
    cr_assert_eq(sona_comm_rank(NULL, &v), SONA_E_NULL);
    cr_assert_eq(sona_comm_size(c, NULL), SONA_E_NULL);
    cr_assert_eq(sona_comm_allgather(c, NULL, 4, &v), SONA_E_NULL);
    cr_assert_eq(sona_comm_allreduce_sum(c, NULL, 3), SONA_E_NULL);
    cr_assert_str_eq(sona_comm_last_error(NULL), "");
    sona_comm_destroy(NULL);
    sona_comm_ops_default(NULL);
    sona_sync_config_default(NULL);
    cr_assert_eq(sona_comm_rank(c, &v), SONA_OK);
    cr_assert_eq(v, 0);
    cr_assert_eq(sona_comm_size(c, &v), SONA_OK);
    cr_assert_eq(v, 1);
    /* A world of one: the merge of one adapter is that adapter, bit for bit. */
    sona_sync_result r;
    cr_assert_eq(sona_sync(e, c, NULL, &r), SONA_OK);
    read_weights(e, &w1);
    cr_assert_eq(memcmp(&w0, &w1, sizeof w0), 0);
    cr_assert_eq(r.ranks, 1);
    cr_assert_eq(r.merge_error, 0.0);
    sona_engine_destroy(e);
    sona_comm_destroy(c);
}

Test(sync, a_tenant_is_merged_where_it_is_live_on_several_ranks)
{
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    sync_run s = {.cfg = NULL};
    float A1[2][MF], B1[2][MF], A2[MF], B2[MF], now_A[MF], now_B[MF];
    for (uint32_t i = 0; i < K; i++) {
        s.e[i] = make_engine(H);
        int32_t id = -1;
        cr_assert_eq(sona_tenant_create(s.e[i], &id), SONA_OK);
        cr_assert_eq(id, 1);
        if (i == 2) { /* tenant 1 lives on ranks 0 and 1 only; rank 2's holds tenant 2 instead */
            cr_assert_eq(sona_tenant_create(s.e[i], &id), SONA_OK);
            cr_assert_eq(sona_tenant_remove(s.e[i], 1), SONA_OK);
            cr_assert_eq(id, 2);
            train_tenant(s.e[i], id, seed, 40, 40);
            cr_assert_eq(eng_inspect_tenant_weights(s.e[i], id, A2, B2), SONA_OK);
        } else {
            train_tenant(s.e[i], 1, seed, 30 + i, 40 + 10 * i);
            cr_assert_eq(eng_inspect_tenant_weights(s.e[i], 1, A1[i], B1[i]), SONA_OK);
        }
    }
    cr_assert_neq(memcmp(B1[0], B1[1], sizeof B1[0]), 0);
    sync_all(&s, 0);
    const float *pa[2] = {A1[0], A1[1]}, *pb[2] = {B1[0], B1[1]};
    float eA[MF], eBt[MF];
    expected_micro(pa, pb, 2, eA, eBt);
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_OK, "rank %u: %s", i, sona_engine_last_error(s.e[i]));
        cr_assert_eq(s.res[i].tenants_merged, 2); /* 0 (everywhere) and 1 (ranks 0, 1) */
    }
    for (uint32_t i = 0; i < 2; i++) {
        cr_assert_eq(eng_inspect_tenant_weights(s.e[i], 1, now_A, now_B), SONA_OK);
        cr_assert_eq(memcmp(now_A, eA, sizeof eA), 0, "rank %u's tenant 1", i);
        cr_assert_eq(memcmp(now_B, eBt, sizeof eBt), 0, "rank %u's tenant 1", i);
    }
    /* Rank 2: tenant 1 still absent, its tenant 2 (on no other rank) untouched. */
    cr_assert_eq(eng_inspect_tenant_weights(s.e[2], 1, now_A, now_B), SONA_E_NOT_FOUND);
    cr_assert_eq(eng_inspect_tenant_weights(s.e[2], 2, now_A, now_B), SONA_OK);
    cr_assert_eq(memcmp(now_A, A2, sizeof A2), 0);
    cr_assert_eq(memcmp(now_B, B2, sizeof B2), 0);
    for (uint32_t i = 0; i < K; i++)
        sona_engine_destroy(s.e[i]);
}

static void changes(sona_sync_method method)
{
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    sona_sync_config cfg;
    sona_sync_config_default(&cfg);
    cfg.merge = SONA_SYNC_CHANGES;
    cfg.method = method;
    sync_run s = {.cfg = &cfg};
    static weights S, before[K], after;
    for (uint32_t i = 0; i < K; i++) {
        s.e[i] = make_engine(H);
        train(s.e[i], seed, 50 + i, 30); /* apart before the first sync: it must average */
    }
    sync_all(&s, 0); /* no S yet anywhere: the average, which becomes S */
    for (uint32_t i = 0; i < K; i++)
        cr_assert_eq(s.st[i], SONA_OK, "rank %u: %s", i, sona_engine_last_error(s.e[i]));
    read_weights(s.e[0], &S);
    for (uint32_t i = 0; i < K; i++) {
        train(s.e[i], seed, 60 + i, 40);
        read_weights(s.e[i], &before[i]);
    }
    sync_all(&s, 0);
    /* Base-LoRA: the rank-r truncation of sum_i W_i - (K - 1) S, measured on the dense matrix. */
    double err2 = 0.0, norm2 = 0.0;
    const double w[K] = {1.0, 1.0, 1.0};
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_OK, "rank %u: %s", i, sona_engine_last_error(s.e[i]));
        read_weights(s.e[i], &after);
        if (i == 0) {
            for (uint32_t l = 0; l < LAYERS; l++) {
                for (uint32_t h = 0; h < H; h++)
                    for (uint32_t c = 0; c < H; c++) {
                        double m = 0.0, v = 0.0;
                        for (uint32_t j = 0; j < RANK; j++) {
                            const size_t o = ((size_t)l * RANK + j) * H;
                            for (uint32_t q = 0; q < K; q++)
                                m += w[q] * before[q].Bt[o + h] * before[q].A[o + c];
                            m -= (K - 1.0) * S.Bt[o + h] * S.A[o + c];
                            v += (double)after.Bt[o + h] * after.A[o + c];
                        }
                        err2 += (m - v) * (m - v);
                        norm2 += m * m;
                    }
            }
            const weights *in[K + 1] = {&before[0], &before[1], &before[2], &S};
            const double ws[K + 1] = {1.0, 1.0, 1.0, -(K - 1.0)};
            const double opt = optimal_error(in, ws, K + 1);
            printf("changes merged (%s): relative error %.6g (optimal %.6g, merge_error %.6g)\n",
                   method == SONA_SYNC_EXACT ? "exact" : "sketch", sqrt(err2 / norm2), opt,
                   s.res[0].merge_error);
            check_error(method, sqrt(err2 / norm2), s.res[0].merge_error, opt);
        }
        /* Tenant 0: the same merge of K + 1 adapters computed here, bit for bit. */
        const float *pa[K + 1] = {before[0].mA, before[1].mA, before[2].mA, S.mA};
        const float *pb[K + 1] = {before[0].mBt, before[1].mBt, before[2].mBt, S.mBt};
        const double wt[K + 1] = {1.0, 1.0, 1.0, -(K - 1.0)};
        float eA[MF], eBt[MF];
        cr_assert_eq(sona_lora_merge(H, MICRO, K + 1, pa, pb, wt, eA, eBt, NULL), SONA_OK);
        cr_assert_eq(sona_lora_align(H, MICRO, S.mA, eA, eBt), SONA_OK); /* S's coordinates */
        cr_assert_eq(memcmp(after.mA, eA, sizeof eA), 0, "rank %u's tenant 0", i);
        cr_assert_eq(memcmp(after.mBt, eBt, sizeof eBt), 0, "rank %u's tenant 0", i);
    }
    for (uint32_t i = 0; i < K; i++)
        sona_engine_destroy(s.e[i]);
}

Test(sync, changes_are_summed_onto_what_the_last_sync_left)
{
    changes(SONA_SYNC_EXACT);
}

Test(sync, the_sketch_sums_changes_close_to_the_exact_merge)
{
    changes(SONA_SYNC_SKETCH);
}

/* The dense product B A of tenant 0's factors (the scale s is the same for all, left out). */
static void micro_dense(const float *A, const float *Bt, double *M)
{
    for (uint32_t h = 0; h < H; h++)
        for (uint32_t c = 0; c < H; c++) {
            double v = 0.0;
            for (uint32_t j = 0; j < MICRO; j++)
                v += (double)Bt[j * H + h] * A[j * H + c];
            M[h * H + c] = v;
        }
}

static double dense_dot(const double *x, const double *y)
{
    double s = 0.0;
    for (uint32_t i = 0; i < H * H; i++)
        s += x[i] * y[i];
    return s;
}

Test(sync, paced_merges_step_by_the_gain_the_last_move_implies)
{
    /* Syncs 1 (no S: the average), 2 (S, no last move: g = K, the sum of the changes, bit for
     * bit) and 3 (g from the last move D = S - P: 1 - a = 1/K - <m, D> / |D|^2, clamped,
     * g = 1 + a + a^2), each after the ranks trained apart; tenant 0 checked against the
     * dense computation here, every rank bit-identical. */
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    sona_sync_config cfg;
    sona_sync_config_default(&cfg);
    cr_assert_eq(cfg.merge, SONA_SYNC_PACED);
    sync_run s = {.cfg = &cfg};
    static weights P, S, before[K], after[K];
    for (uint32_t i = 0; i < K; i++) {
        s.e[i] = make_engine(H);
        train(s.e[i], seed, 150 + i, 30);
    }
    sync_all(&s, 0);
    read_weights(s.e[0], &P);
    for (uint32_t i = 0; i < K; i++) {
        train(s.e[i], seed, 160 + i, 40);
        read_weights(s.e[i], &before[i]);
    }
    sync_all(&s, 0);
    float eA[MF], eBt[MF];
    const float *pa[K + 1] = {before[0].mA, before[1].mA, before[2].mA, P.mA};
    const float *pb[K + 1] = {before[0].mBt, before[1].mBt, before[2].mBt, P.mBt};
    const double wt[K + 1] = {1.0, 1.0, 1.0, -(K - 1.0)};
    cr_assert_eq(sona_lora_merge(H, MICRO, K + 1, pa, pb, wt, eA, eBt, NULL), SONA_OK);
    cr_assert_eq(sona_lora_align(H, MICRO, P.mA, eA, eBt), SONA_OK);
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_OK, "rank %u: %s", i, sona_engine_last_error(s.e[i]));
        read_weights(s.e[i], &after[i]);
        cr_assert_eq(memcmp(after[i].mA, eA, sizeof eA), 0, "rank %u's tenant 0", i);
        cr_assert_eq(memcmp(after[i].mBt, eBt, sizeof eBt), 0, "rank %u's tenant 0", i);
    }
    S = after[0];
    for (uint32_t i = 0; i < K; i++) {
        train(s.e[i], seed, 170 + i, 40);
        read_weights(s.e[i], &before[i]);
    }
    sync_all(&s, 0);
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_OK, "rank %u: %s", i, sona_engine_last_error(s.e[i]));
        read_weights(s.e[i], &after[i]);
        cr_assert_eq(memcmp(&after[i], &after[0], sizeof after[0]), 0, "rank %u", i);
    }
    static double dS[H * H], dP[H * H], dW[H * H], D[H * H], m[H * H], got[H * H], want[H * H];
    micro_dense(S.mA, S.mBt, dS);
    micro_dense(P.mA, P.mBt, dP);
    for (uint32_t j = 0; j < H * H; j++)
        D[j] = dS[j] - dP[j], m[j] = -dS[j];
    for (uint32_t i = 0; i < K; i++) {
        micro_dense(before[i].mA, before[i].mBt, dW);
        for (uint32_t j = 0; j < H * H; j++)
            m[j] += dW[j] / K;
    }
    double q = 1.0 / K - dense_dot(m, D) / dense_dot(D, D);
    q = q < 0.0 ? 0.0 : q > 1.0 ? 1.0 : q;
    const double a = 1.0 - q, g = 1.0 + a + a * a;
    const float *qa[K + 1] = {before[0].mA, before[1].mA, before[2].mA, S.mA};
    const float *qb[K + 1] = {before[0].mBt, before[1].mBt, before[2].mBt, S.mBt};
    const double wg[K + 1] = {g / K, g / K, g / K, 1.0 - g};
    cr_assert_eq(sona_lora_merge(H, MICRO, K + 1, qa, qb, wg, eA, eBt, NULL), SONA_OK);
    micro_dense(eA, eBt, want);
    micro_dense(after[0].mA, after[0].mBt, got);
    double err = 0.0;
    for (uint32_t j = 0; j < H * H; j++)
        err += (got[j] - want[j]) * (got[j] - want[j]);
    err = sqrt(err / dense_dot(want, want));
    /* How far the merge went along m: g, not the sum's K nor the average's 1 (unless clamped). */
    for (uint32_t j = 0; j < H * H; j++)
        got[j] -= dS[j];
    printf("paced: 1 - a = %.4f, gain %.4f (the merge's own step along m: %.4f), relative "
           "difference from the merge computed here %.3g\n", q, g,
           dense_dot(got, m) / dense_dot(m, m), err);
    cr_assert(g >= 1.0 && g <= K);
    cr_assert(err < 1e-5, "the paced merge is %.3g from S + g m's", err);
    for (uint32_t i = 0; i < K; i++)
        sona_engine_destroy(s.e[i]);
}

/* |x - y| within the all-reduce's integer grid (Fisher entries are >= 0, so no rank's row
 * maximum exceeds K times the result's, m): K ranks round by half a step each, a step at most
 * 2^-23 x 2 x (the sum of the ranks' row maxima, <= K m). */
static void near_rows(const float *x, const double *y, size_t n, const char *what)
{
    for (size_t row = 0; row < n / H; row++) {
        double m = 0.0;
        for (size_t h = 0; h < H; h++)
            m = fmax(m, fabs(y[row * H + h]));
        for (size_t h = 0; h < H; h++) {
            const size_t i = row * H + h;
            cr_assert(fabs(x[i] - y[i]) <= K * K * 0x1p-22 * m + 1e-30, "%s[%zu]: %.9g vs %.9g", what,
                      i, x[i], y[i]);
        }
    }
}

/* EWC++ state of Base-LoRA (tenant < 0) or of tenant 0, through engine/inspect.h. */
static sona_status read_ewc(sona_engine *e, int tenant, float *running, float *fisher_sum, float *theta0,
                            uint32_t *tasks)
{
    return tenant < 0 ? eng_inspect_base_ewc(e, running, fisher_sum, theta0, tasks)
                      : eng_inspect_tenant_ewc(e, tenant, running, fisher_sum, theta0, tasks);
}

/* K ranks learn apart, rank 1 ending a task of Base-LoRA (tenant < 0) or of tenant 0 (live on
 * every rank) and learning on; after a sync the running Fisher is the ranks' average and the
 * tasks one task anchored at the merged weights whose Fisher is the sum of the ranks' tasks',
 * bit for bit alike on every rank; a second sync with nothing learned does not count it again. */
static void ewc_merge_check(int tenant, uint64_t seed, uint64_t stream)
{
    enum { MOST = 2 * AF > 2 * MF ? 2 * AF : 2 * MF };
    const size_t N = tenant < 0 ? 2 * AF : 2 * MF;
    sync_run s = {.cfg = NULL};
    static float run[K][MOST], fsum[K][MOST], theta[MOST], after_run[K][MOST], after_sum[K][MOST];
    static weights w;
    for (uint32_t i = 0; i < K; i++) {
        s.e[i] = make_engine(H);
        train(s.e[i], seed, stream + i, 40);
    }
    cr_assert_eq(tenant < 0 ? eng_inspect_base_end_task(s.e[1]) : eng_inspect_tenant_end_task(s.e[1], tenant),
                 SONA_OK);
    train(s.e[1], seed, stream + 10, 30);
    uint32_t tasks[K];
    for (uint32_t i = 0; i < K; i++)
        cr_assert_eq(read_ewc(s.e[i], tenant, run[i], fsum[i], NULL, &tasks[i]), SONA_OK);
    cr_assert_geq(tasks[1], 1); /* the others may have crossed a boundary of their own too */
    sync_all(&s, 0);
    read_weights(s.e[0], &w);
    const float *A = tenant < 0 ? w.A : w.mA, *Bt = tenant < 0 ? w.Bt : w.mBt;
    memcpy(theta, A, N / 2 * sizeof *theta);
    memcpy(theta + N / 2, Bt, N / 2 * sizeof *theta);
    static double mean[MOST], sum[MOST], last[MOST];
    for (size_t j = 0; j < N; j++) {
        mean[j] = ((double)run[0][j] + run[1][j] + run[2][j]) / K;
        sum[j] = (double)fsum[0][j] + fsum[1][j] + fsum[2][j];
    }
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_OK, "rank %u: %s", i, sona_engine_last_error(s.e[i]));
        static float anchor[MOST];
        const sona_status got = read_ewc(s.e[i], tenant, after_run[i], after_sum[i], anchor, &tasks[i]);
        cr_assert_eq(got, SONA_OK, "rank %u: %s (%s)", i, sona_status_str(got), sona_engine_last_error(s.e[i]));
        cr_assert_eq(tasks[i], 1, "rank %u: %u tasks", i, tasks[i]);
        cr_assert_eq(memcmp(anchor, theta, N * sizeof *anchor), 0, "rank %u: anchor not the merge", i);
        cr_assert_eq(memcmp(after_run[i], after_run[0], N * sizeof *after_run[0]), 0);
        cr_assert_eq(memcmp(after_sum[i], after_sum[0], N * sizeof *after_sum[0]), 0);
        if (tenant < 0) {
            sona_stats st;
            cr_assert_eq(sona_get_stats(s.e[i], &st), SONA_OK);
            cr_assert_eq(st.tasks, 1);
        } else {
            cr_assert_eq(eng_inspect_ewc_tasks(s.e[i], tenant), 1);
        }
    }
    near_rows(after_run[0], mean, N, "running Fisher");
    near_rows(after_sum[0], sum, N, "task Fisher");
    for (size_t j = 0; j < N; j++)
        last[j] = after_sum[0][j];
    sync_all(&s, 0);
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_OK);
        cr_assert_eq(read_ewc(s.e[i], tenant, NULL, after_sum[i], NULL, &tasks[i]), SONA_OK);
        cr_assert_eq(tasks[i], 1);
    }
    near_rows(after_sum[0], last, N, "task Fisher again");
    for (uint32_t i = 0; i < K; i++)
        sona_engine_destroy(s.e[i]);
}

Test(sync, ewc_is_merged_so_every_rank_protects_what_any_learned)
{
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    ewc_merge_check(-1, seed, 70);
}

Test(sync, tenants_ewc_is_merged_so_every_holder_protects_what_any_learned)
{
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    ewc_merge_check(0, seed, 300);
}

Test(sync, pattern_banks_are_merged_the_same_on_every_rank)
{
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    sync_run s = {.cfg = NULL};
    bank_view before[K], after[K];
    uint64_t size_sum = 0;
    for (uint32_t i = 0; i < K; i++) {
        s.e[i] = make_engine(H);
        /* Ranks 0 and 1 see one task (their patterns alike), rank 2 its own. */
        train(s.e[i], seed + (i == 2), 90 + i, 60);
        before[i] = view_bank(s.e[i]);
        size_sum += before[i].size;
        printf("rank %u: %u patterns of %" PRIu64 " trajectories\n", i, before[i].count,
               before[i].size);
    }
    cr_assert(before[0].count > 0 && before[1].count > 0);
    sync_all(&s, 0);
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_OK, "rank %u: %s", i, sona_engine_last_error(s.e[i]));
        after[i] = view_bank(s.e[i]);
        cr_assert_eq(after[i].digest, after[0].digest, "rank %u's bank differs", i);
        cr_assert_eq(after[i].count, after[0].count);
        cr_assert_eq(after[i].next_id, after[0].next_id);
        sona_stats st;
        cr_assert_eq(sona_get_stats(s.e[i], &st), SONA_OK);
        cr_assert_eq(st.patterns, after[0].count);
    }
    printf("merged: %u patterns of %" PRIu64 " trajectories\n", after[0].count, after[0].size);
    cr_assert_eq(after[0].size, size_sum, "every rank's trajectories are in the merged bank");
    cr_assert_leq(after[0].count, before[0].count + before[1].count + before[2].count);
    /* Nothing learned since: nothing changes. */
    sync_all(&s, 0);
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_OK);
        const bank_view v = view_bank(s.e[i]);
        cr_assert_eq(v.digest, after[0].digest, "rank %u's bank changed", i);
    }
    /* Rank 1 learns on: its new trajectories are added once, not once per rank. */
    train(s.e[1], seed + 1, 95, 40);
    const bank_view grown = view_bank(s.e[1]);
    sync_all(&s, 0);
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_OK);
        after[i] = view_bank(s.e[i]);
        cr_assert_eq(after[i].digest, after[0].digest, "rank %u's bank differs", i);
    }
    cr_assert_eq(after[0].size, grown.size, "%" PRIu64 " vs %" PRIu64, after[0].size, grown.size);
    for (uint32_t i = 0; i < K; i++)
        sona_engine_destroy(s.e[i]);
}

Test(sync, a_rank_without_the_last_sync_joins_alike)
{
    /* Rank 2 is replaced by a fresh engine after a sync: it has no S, so nothing may use S
     * (the changes, the sketch's basis, EWC++'s and the bank's records): every rank still
     * ends with the same bits. */
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    sona_sync_config cfg;
    sona_sync_config_default(&cfg);
    cfg.merge = SONA_SYNC_CHANGES;
    sync_run s = {.cfg = &cfg};
    for (uint32_t i = 0; i < K; i++) {
        s.e[i] = make_engine(H);
        train(s.e[i], seed + (i == 2), 110 + i, 40);
    }
    sync_all(&s, 0);
    for (uint32_t i = 0; i < K; i++)
        cr_assert_eq(s.st[i], SONA_OK);
    sona_engine_destroy(s.e[2]);
    s.e[2] = make_engine(H);
    for (uint32_t i = 0; i < K; i++)
        train(s.e[i], seed + 2, 120 + i, 30);
    sync_all(&s, 0);
    static weights w[K];
    enum { N = 2 * AF };
    static float fisher[K][N];
    bank_view bank[K];
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(s.st[i], SONA_OK, "rank %u: %s", i, sona_engine_last_error(s.e[i]));
        read_weights(s.e[i], &w[i]);
        cr_assert_eq(eng_inspect_base_ewc(s.e[i], fisher[i], NULL, NULL, NULL), SONA_OK);
        bank[i] = view_bank(s.e[i]);
    }
    for (uint32_t i = 1; i < K; i++) {
        cr_assert_eq(memcmp(w[i].A, w[0].A, sizeof w[0].A), 0, "rank %u's A", i);
        cr_assert_eq(memcmp(w[i].Bt, w[0].Bt, sizeof w[0].Bt), 0, "rank %u's B", i);
        cr_assert_eq(memcmp(fisher[i], fisher[0], sizeof fisher[0]), 0, "rank %u's Fisher", i);
        cr_assert_eq(bank[i].digest, bank[0].digest, "rank %u's bank", i);
    }
    for (uint32_t i = 0; i < K; i++)
        sona_engine_destroy(s.e[i]);
}

/* Loop B's own syncs (sona_sync_attach): each rank runs `cycles` forced cycles of 10 requests
 * of its own stream; the attached sync runs inside sona_force_learn. */
typedef struct periodic_run {
    sona_engine *e[K];
    thread_world *world;
    uint64_t seed;
    uint32_t cycles, every;
    sona_status attach[K], learn[K][4];
} periodic_run;

static void periodic_rank(uint32_t rank, void *arg)
{
    periodic_run *p = arg;
    if (p->world)
        p->attach[rank] = sona_sync_attach(p->e[rank], thread_world_comm(p->world, rank), NULL,
                                           p->every);
    synth_task t;
    synth_task_init(&t, H, 4, p->seed, 0);
    sona_rng rng;
    sona_rng_seed(&rng, p->seed, 200 + rank);
    for (uint32_t c = 0; c < p->cycles; c++) {
        synth_task_run(&t, p->e[rank], 0, 10, &rng, 1);
        p->learn[rank][c] = sona_force_learn(p->e[rank]);
    }
    synth_task_free(&t);
}

Test(sync, loop_b_syncs_every_n_cycles_when_a_comm_is_attached)
{
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    for (uint32_t every = 1; every <= 2; every++) {
        periodic_run p = {.seed = seed, .cycles = 4, .every = every};
        for (uint32_t i = 0; i < K; i++)
            p.e[i] = make_engine(H);
        p.world = thread_world_create(K, 0);
        cr_assert(p.world);
        thread_world_run(K, periodic_rank, &p);
        static weights w[K];
        for (uint32_t i = 0; i < K; i++) {
            cr_assert_eq(p.attach[i], SONA_OK);
            for (uint32_t c = 0; c < p.cycles; c++)
                cr_assert_eq(p.learn[i][c], SONA_OK, "rank %u cycle %u: %s", i, c,
                             sona_engine_last_error(p.e[i]));
            sona_sync_periodic st;
            cr_assert_eq(sona_sync_periodic_get(p.e[i], &st), SONA_OK);
            cr_assert_eq(st.syncs, p.cycles / every, "rank %u: %" PRIu64 " syncs", i, st.syncs);
            cr_assert_eq(st.failed, 0);
            cr_assert_eq(st.last, SONA_OK);
            read_weights(p.e[i], &w[i]);
        }
        /* The last cycle was followed by a sync: every rank holds the same bits. */
        for (uint32_t i = 1; i < K; i++)
            cr_assert_eq(memcmp(&w[i], &w[0], sizeof w[0]), 0, "every %u: rank %u differs", every,
                         i);
        /* Detached: a cycle syncs no more (nor touches the world). */
        cr_assert_eq(sona_sync_attach(p.e[0], NULL, NULL, 0), SONA_OK);
        train(p.e[0], seed, 260, 10);
        sona_sync_periodic st;
        cr_assert_eq(sona_sync_periodic_get(p.e[0], &st), SONA_OK);
        cr_assert_eq(st.syncs, 0);
        thread_world_destroy(p.world);
        for (uint32_t i = 0; i < K; i++)
            sona_engine_destroy(p.e[i]);
    }
    sona_engine *e = make_engine(H);
    sona_comm_ops ops;
    sona_comm_ops_default(&ops);
    sona_comm *c = NULL;
    cr_assert_eq(sona_comm_create(&ops, &c), SONA_OK);
    cr_assert_eq(sona_sync_attach(e, c, NULL, 0), SONA_E_INVALID);
    sona_sync_config bad;
    sona_sync_config_default(&bad);
    bad.merge = (sona_sync_merge)9;
    cr_assert_eq(sona_sync_attach(e, c, &bad, 1), SONA_E_INVALID);
    cr_assert_eq(sona_sync_attach(NULL, c, NULL, 1), SONA_E_NULL);
    sona_comm_destroy(c);
    sona_engine_destroy(e);
}

Test(sync, a_failing_periodic_sync_leaves_the_engine_as_its_cycle_left_it)
{
    /* Twins: the same engines and traffic, one set attached to a world whose n-th callback
     * call fails on every rank, the other never attached. A failed sync must leave each
     * engine bit for bit where its cycle left it (the twin's weights), be returned by
     * sona_force_learn and counted in sona_sync_periodic_get. */
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    for (uint32_t fail_at = 1; fail_at <= 12; fail_at++) {
        periodic_run p = {.seed = seed, .cycles = 1, .every = 1};
        periodic_run twin = {.seed = seed, .cycles = 1};
        for (uint32_t i = 0; i < K; i++) {
            p.e[i] = make_engine(H);
            twin.e[i] = make_engine(H);
        }
        p.world = thread_world_create(K, fail_at);
        cr_assert(p.world);
        thread_world_run(K, periodic_rank, &p);
        thread_world_run(K, periodic_rank, &twin);
        for (uint32_t i = 0; i < K; i++) {
            cr_assert_eq(p.attach[i], SONA_OK);
            cr_assert_eq(twin.learn[i][0], SONA_OK);
            cr_assert_neq(p.learn[i][0], SONA_OK, "fail_at %u: rank %u's sync succeeded", fail_at,
                          i);
            sona_sync_periodic st;
            cr_assert_eq(sona_sync_periodic_get(p.e[i], &st), SONA_OK);
            cr_assert_eq(st.syncs, 1);
            cr_assert_eq(st.failed, 1);
            cr_assert_eq(st.last, p.learn[i][0]);
            cr_assert_str_neq(st.last_error, "");
            static weights got, want;
            read_weights(p.e[i], &got);
            read_weights(twin.e[i], &want);
            cr_assert_eq(memcmp(&got, &want, sizeof got), 0, "fail_at %u: rank %u changed",
                         fail_at, i);
            sona_stats a, b;
            cr_assert_eq(sona_get_stats(p.e[i], &a), SONA_OK);
            cr_assert_eq(sona_get_stats(twin.e[i], &b), SONA_OK);
            cr_assert_eq(a.trajectories_processed, b.trajectories_processed);
            cr_assert_eq(a.base_updates, b.base_updates);
            cr_assert_eq(a.patterns, b.patterns);
        }
        printf("fail_at %u: %s\n", fail_at, sona_engine_last_error(p.e[0]));
        thread_world_destroy(p.world);
        for (uint32_t i = 0; i < K; i++) {
            sona_engine_destroy(p.e[i]);
            sona_engine_destroy(twin.e[i]);
        }
    }
}

/* The engine's own thread runs the attached syncs: each rank queues loop_b_threshold
 * trajectories at a time and waits until its thread's cycle and sync are done (as the contract
 * asks, every rank runs the same cycles); the ranks end bit-identical. */
typedef struct thread_run {
    sona_engine *e[K];
    thread_world *world;
    uint64_t seed;
    sona_status attach[K];
    uint64_t syncs[K][3], failed[K];
} thread_run;

static void thread_rank(uint32_t rank, void *arg)
{
    thread_run *p = arg;
    p->attach[rank] = sona_sync_attach(p->e[rank], thread_world_comm(p->world, rank), NULL, 1);
    synth_task t;
    synth_task_init(&t, H, 4, p->seed, 0);
    sona_rng rng;
    sona_rng_seed(&rng, p->seed, 400 + rank);
    for (uint32_t round = 0; round < 3; round++) {
        synth_task_run(&t, p->e[rank], 0, 10, &rng, 1); /* the threshold: the thread cycles */
        sona_sync_periodic st = {0};
        for (int waited = 0; waited < 120000; waited++) { /* up to 2 minutes a round */
            sona_sync_periodic_get(p->e[rank], &st);
            if (st.syncs > round)
                break;
            nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
        }
        p->syncs[rank][round] = st.syncs;
        p->failed[rank] = st.failed;
    }
    synth_task_free(&t);
}

Test(sync, the_engine_thread_runs_the_attached_syncs)
{
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    thread_run p = {.seed = seed};
    for (uint32_t i = 0; i < K; i++) {
        sona_engine_config cfg;
        engine_config(H, &cfg);
        cfg.background_thread = 1;
        cfg.loop_b_threshold = 10; /* a cycle at every 10 queued, and at no other time */
        cfg.loop_b_min_batch = 1;
        cfg.loop_c_interval_ms = 0;
        cr_assert_eq(sona_engine_create(&cfg, &p.e[i]), SONA_OK, "%s", sona_last_error());
    }
    p.world = thread_world_create(K, 0);
    cr_assert(p.world);
    thread_world_run(K, thread_rank, &p);
    static weights w[K];
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(p.attach[i], SONA_OK);
        for (uint32_t round = 0; round < 3; round++)
            cr_assert_eq(p.syncs[i][round], round + 1, "rank %u round %u: %" PRIu64 " syncs", i,
                         round, p.syncs[i][round]);
        cr_assert_eq(p.failed[i], 0);
        read_weights(p.e[i], &w[i]);
    }
    for (uint32_t i = 1; i < K; i++) /* Base-LoRA; tenant 0 learns in loop A after a sync too */
        cr_assert_eq(memcmp(w[i].A, w[0].A, sizeof w[0].A) || memcmp(w[i].Bt, w[0].Bt,
                     sizeof w[0].Bt), 0, "rank %u's Base-LoRA differs", i);
    for (uint32_t i = 0; i < K; i++) {
        cr_assert_eq(sona_sync_attach(p.e[i], NULL, NULL, 0), SONA_OK);
        sona_engine_destroy(p.e[i]);
    }
    thread_world_destroy(p.world);
}
