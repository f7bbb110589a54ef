/* SPDX-License-Identifier: MIT */
/* EWC++: retention on a two-task toy, the boundary detector (fires on an abrupt change, not on
 * stationary noise; restored from its state, goes on as the original), consolidation that keeps the penalty exact, the pre-reduced penalty equal
 * to the op table's param_update, the Fisher EMA, and refusals. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "cpu/cpu.h"
#include "support/fill.h"
#include <sona.h>

static sona_ewc *make(const sona_ewc_config *cfg)
{
    sona_ewc *e = NULL;
    cr_assert_eq(sona_ewc_create(cfg, &e), SONA_OK, "%s", sona_last_error());
    return e;
}

static double dist(const float *a, const float *b, uint32_t n)
{
    double s = 0;
    for (uint32_t i = 0; i < n; i++)
        s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return sqrt(s);
}

enum { TOY_N = 37, TOY_STEPS = 600 };

typedef struct toy {
    float a[TOY_N], b[TOY_N];   /* the two tasks' optima */
    float wa[TOY_N], wb[TOY_N]; /* per-parameter weights of each task's loss */
} toy;

/* Trains theta on task A then task B: loss = sum_i w_i (theta_i - target_i - noise)^2, ascent
 * gradient g = -2 w (theta - target - noise), plain gradient steps. With ewc, every gradient
 * goes through sona_ewc_observe and sona_ewc_apply_constraints. */
static void train(const toy *t, sona_ewc *ewc, uint64_t seed, float *theta)
{
    sona_rng r;
    sona_rng_seed(&r, seed, 2);
    const float lr = 0.05f, noise = 0.1f;
    float g[TOY_N];
    memset(theta, 0, TOY_N * sizeof *theta);
    for (int task = 0; task < 2; task++) {
        const float *target = task ? t->b : t->a, *w = task ? t->wb : t->wa;
        for (int s = 0; s < TOY_STEPS; s++) {
            for (int i = 0; i < TOY_N; i++)
                g[i] = -2.0f * w[i] * (theta[i] - target[i] - noise * sona_rng_normal(&r));
            if (ewc) {
                int boundary = 0;
                cr_assert_eq(sona_ewc_observe(ewc, theta, g, TOY_N, &boundary), SONA_OK, "%s", sona_ewc_last_error(ewc));
                if (boundary)
                    cr_expect(task == 1 && s < 3, "boundary at task %d step %d", task, s);
                cr_assert_eq(sona_ewc_apply_constraints(ewc, theta, g, g, TOY_N), SONA_OK);
            }
            for (int i = 0; i < TOY_N; i++)
                theta[i] += lr * g[i];
        }
    }
}

Test(ewc, two_task_toy_retains_the_first_task)
{
    const uint64_t seed = test_seed();
    printf("[ewc] two-task toy seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 1);
    toy t;
    for (int i = 0; i < TOY_N; i++) {
        t.a[i] = 2.0f * sona_rng_uniform(&r) - 1.0f;
        t.b[i] = t.a[i] + (sona_rng_uniform(&r) < 0.5f ? -1.0f : 1.0f) * (1.0f + sona_rng_uniform(&r));
        t.wa[i] = 0.5f + 1.5f * sona_rng_uniform(&r);
        t.wb[i] = 0.5f + 1.5f * sona_rng_uniform(&r);
    }
    float plain[TOY_N], kept[TOY_N];
    train(&t, NULL, seed, plain);
    sona_ewc_config cfg;
    sona_ewc_config_default(&cfg, TOY_N);
    cfg.lambda_base = 10.0f;
    sona_ewc *e = make(&cfg);
    train(&t, e, seed, kept);
    cr_expect_eq(sona_ewc_boundaries(e), 1, "the switch to task B is one boundary");
    cr_expect_eq(sona_ewc_task_count(e), 1);
    const double d_plain = dist(plain, t.a, TOY_N), d_kept = dist(kept, t.a, TOY_N);
    const double d_ab = dist(t.a, t.b, TOY_N), d_kept_b = dist(kept, t.b, TOY_N);
    printf("[ewc] distance to task A: without EWC %.4f, with EWC %.4f (ratio %.3f); to B with EWC %.4f of %.4f\n",
           d_plain, d_kept, d_kept / d_plain, d_kept_b, d_ab);
    cr_expect_lt(d_kept, 0.6 * d_plain, "EWC kept theta at %.4f from A, without it %.4f", d_kept, d_plain);
    cr_expect_lt(d_kept_b, 0.9 * d_ab, "with EWC task B was not learnt at all");
    sona_ewc_destroy(e);
}

/* Gradients of n values ~ N(0, scale^2). */
static void noise_gradient(sona_rng *r, float *g, uint32_t n, float scale)
{
    for (uint32_t i = 0; i < n; i++)
        g[i] = scale * sona_rng_normal(r);
}

enum { DETECTOR_N = 64 };

/* Observes up to `samples` noise gradients of `scale` at theta; stops at the first boundary and
 * returns its sample, -1 when none fired. */
static int first_boundary(sona_ewc *e, sona_rng *r, const float *theta, int samples, float scale)
{
    float g[DETECTOR_N];
    for (int s = 0; s < samples; s++) {
        noise_gradient(r, g, DETECTOR_N, scale);
        int boundary;
        cr_assert_eq(sona_ewc_observe(e, theta, g, DETECTOR_N, &boundary), SONA_OK);
        if (boundary)
            return s;
    }
    return -1;
}

Test(ewc, boundary_fires_on_abrupt_change_not_on_noise)
{
    const uint64_t seed = test_seed();
    printf("[ewc] boundary detector seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 3);
    enum { N = DETECTOR_N };
    float theta[N] = {0}, g[N];
    sona_ewc_config cfg;
    sona_ewc_config_default(&cfg, N);
    sona_ewc *e = make(&cfg);
    int boundary;
    const int on_noise = first_boundary(e, &r, theta, 5000, 1.0f);
    cr_assert_lt(on_noise, 0, "boundary on stationary noise at sample %d", on_noise);
    /* Gradients that fall (a task converging) are not a new task either. */
    for (int s = 0; s < 500; s++) {
        noise_gradient(&r, g, N, 1.0f / (1.0f + 0.02f * (float)s));
        cr_assert_eq(sona_ewc_observe(e, theta, g, N, &boundary), SONA_OK);
        cr_assert_not(boundary, "boundary on a falling gradient norm at sample %d", s);
    }
    theta[0] = 0.25f; /* the snapshot must hold this theta */
    const int fired_at = first_boundary(e, &r, theta, 50, 3.0f);
    cr_expect(fired_at >= 0 && fired_at < 5, "gradients 3x larger: boundary after %d samples", fired_at);
    cr_expect_eq(sona_ewc_task_count(e), 1);
    float star[N];
    cr_assert_eq(sona_ewc_get_task(e, 0, star, NULL), SONA_OK);
    cr_expect_eq(star[0], 0.25f);
    /* Not again before min_samples, even on another jump. */
    for (uint32_t s = 0; s + 2 < cfg.min_samples; s++) {
        noise_gradient(&r, g, N, s < 20 ? 3.0f : 30.0f);
        cr_assert_eq(sona_ewc_observe(e, theta, g, N, &boundary), SONA_OK);
        cr_assert_not(boundary, "a boundary %u samples after the last one", s + 1);
    }
    sona_ewc_destroy(e);
}

/* A detector restored from another's state goes on exactly as the original: on the same
 * gradients it fires at the same sample (a fresh one, still short of min_samples, does not), and
 * its statistics stay bit for bit the original's. Invalid states are refused and change nothing. */
Test(ewc, a_restored_detector_goes_on_as_the_original)
{
    const uint64_t seed = test_seed();
    printf("[ewc] detector restore seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 4);
    const float theta[DETECTOR_N] = {0};
    sona_ewc_config cfg;
    sona_ewc_config_default(&cfg, DETECTOR_N);
    sona_ewc *a = make(&cfg), *b = make(&cfg), *fresh = make(&cfg);
    cr_assert_lt(first_boundary(a, &r, theta, (int)cfg.min_samples + 50, 1.0f), 0);
    sona_ewc_detector da, db;
    cr_assert_eq(sona_ewc_get_detector(a, &da), SONA_OK);
    cr_assert_eq(da.samples, cfg.min_samples + 50);
    cr_assert_eq(sona_ewc_set_detector(b, &da), SONA_OK);
    const struct {
        sona_ewc_detector d;
        sona_status want;
    } bad[] = {
        {{.samples = 5, .short_mean = NAN, .long_mean = 1.0}, SONA_E_NONFINITE},
        {{.samples = 5, .short_mean = 1.0, .long_mean = -1.0}, SONA_E_INVALID},
        {{.samples = 5, .short_mean = 1.0, .long_mean = 1.0, .long_var = INFINITY}, SONA_E_NONFINITE},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        cr_assert_eq(sona_ewc_set_detector(b, &bad[k].d), bad[k].want, "state %zu", k);
        cr_assert_eq(sona_ewc_get_detector(b, &db), SONA_OK);
        cr_assert_eq(memcmp(&da, &db, sizeof da), 0, "a refused state %zu changed the detector", k);
    }
    cr_assert_eq(sona_ewc_set_detector(b, NULL), SONA_E_NULL);
    /* The same gradients 3x larger for each: a and b fire together; fresh has not seen
     * min_samples. */
    const sona_rng jump = r;
    sona_rng ra = jump, rb = jump, rf = jump;
    const int fired_a = first_boundary(a, &ra, theta, 50, 3.0f), fired_b = first_boundary(b, &rb, theta, 50, 3.0f);
    cr_assert_geq(fired_a, 0, "the original should fire on gradients 3x larger");
    cr_assert_eq(fired_b, fired_a, "the restored detector fired at %d, the original at %d", fired_b, fired_a);
    cr_assert_lt(first_boundary(fresh, &rf, theta, fired_a + 1, 3.0f), 0, "a fresh detector fired before min_samples");
    cr_assert_eq(sona_ewc_get_detector(a, &da), SONA_OK);
    cr_assert_eq(sona_ewc_get_detector(b, &db), SONA_OK);
    cr_assert_eq(memcmp(&da, &db, sizeof da), 0, "the restored detector's statistics differ");
    cr_assert_eq(da.boundaries, 1);
    sona_ewc_destroy(a);
    sona_ewc_destroy(b);
    sona_ewc_destroy(fresh);
}

/* lambda * sum_t F_t (theta - theta*_t) summed task by task, in double. */
static void brute_penalty(uint32_t n, uint32_t tasks, float *const *F, float *const *star,
                          const float *theta, double lambda, double *out)
{
    for (uint32_t i = 0; i < n; i++) {
        out[i] = 0;
        for (uint32_t t = 0; t < tasks; t++)
            out[i] += lambda * F[t][i] * ((double)theta[i] - star[t][i]);
    }
}

Test(ewc, consolidation_keeps_the_penalty_and_matches_param_update)
{
    const uint64_t seed = test_seed();
    printf("[ewc] consolidation seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 4);
    enum { N = 101, TASKS = 4 };
    sona_ewc_config cfg;
    sona_ewc_config_default(&cfg, N);
    cfg.max_tasks = 2;
    cfg.lambda_base = 3.0f;
    sona_ewc *e = make(&cfg);
    float *F[TASKS], *star[TASKS];
    double fsum_mean = 0;
    for (int t = 0; t < TASKS; t++) {
        F[t] = malloc(N * sizeof(float));
        star[t] = malloc(N * sizeof(float));
        for (int i = 0; i < N; i++) {
            F[t][i] = i % 13 == 0 ? 0.0f : sona_rng_uniform(&r); /* zero Fisher included */
            star[t][i] = 2.0f * sona_rng_uniform(&r) - 1.0f;
            fsum_mean += F[t][i] / (double)N;
        }
        cr_assert_eq(sona_ewc_add_task(e, star[t], F[t], N), SONA_OK);
        cr_expect_leq(sona_ewc_task_count(e), cfg.max_tasks);
    }
    cr_expect_eq(sona_ewc_task_count(e), 2, "four tasks consolidated into two");
    /* The lambda rule: lambda_base * tasks / mean(fisher_sum). */
    const double lambda = 3.0 * 2 / fsum_mean;
    cr_expect(fabs(sona_ewc_lambda(e) - lambda) < 1e-4 * lambda, "lambda %g, expected %g", sona_ewc_lambda(e), lambda);

    float theta[N], g[N], out[N];
    for (int i = 0; i < N; i++) {
        theta[i] = 2.0f * sona_rng_uniform(&r) - 1.0f;
        g[i] = sona_rng_normal(&r);
    }
    double ref[N];
    brute_penalty(N, TASKS, F, star, theta, sona_ewc_lambda(e), ref);
    cr_assert_eq(sona_ewc_apply_constraints(e, theta, g, out, N), SONA_OK);
    for (int i = 0; i < N; i++) {
        const double want = g[i] - ref[i];
        cr_assert(fabs(out[i] - want) < 1e-4 * (1 + fabs(want)), "param %d: %g, expected %g", i, out[i], want);
    }
    /* The exposed pre-reduced form through the op table's param_update gives the same step. */
    const float *fs, *ft;
    float lam;
    cr_assert_eq(sona_ewc_penalty(e, &fs, &ft, &lam), SONA_OK);
    cr_assert_not_null(fs);
    float th2[N];
    memcpy(th2, theta, sizeof theta);
    sona_param_update_args u = {.segments = 1, .len = N, .theta = th2, .g = g, .fisher_sum = fs,
                                .fisher_theta = ft, .lr = 0.01f, .lambda = lam};
    cr_assert_eq(sona_cpu_scalar.param_update(NULL, &u), SONA_OK);
    for (int i = 0; i < N; i++) {
        const double want = theta[i] + 0.01 * out[i];
        cr_assert(fabs(th2[i] - want) < 1e-5, "param_update param %d: %g, expected %g", i, th2[i], want);
    }
    for (int t = 0; t < TASKS; t++) {
        free(F[t]);
        free(star[t]);
    }
    sona_ewc_destroy(e);
}

/* Task weights scale each snapshot's pull exactly: the penalty is lambda * sum_t w_t F_t
 * (theta - theta*_t) against a double-precision sum; lambda (its rule is on the unweighted
 * Fisher) does not move; a weight out of [0, 1], a NaN or a count other than the tasks' is
 * refused and changes nothing; a new snapshot starts at 1 and a merged one keeps the larger. */
Test(ewc, task_weights_scale_each_snapshot_and_bad_ones_change_nothing)
{
    const uint64_t seed = test_seed();
    printf("[ewc] task weights seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 5);
    enum { N = 77, TASKS = 3 };
    sona_ewc_config cfg;
    sona_ewc_config_default(&cfg, N);
    cfg.max_tasks = TASKS;
    sona_ewc *e = make(&cfg);
    float *F[TASKS], *star[TASKS], wF[TASKS][N], *pw[TASKS];
    for (int t = 0; t < TASKS; t++) {
        F[t] = malloc(N * sizeof(float));
        star[t] = malloc(N * sizeof(float));
        for (int i = 0; i < N; i++) {
            F[t][i] = sona_rng_uniform(&r);
            star[t][i] = 2.0f * sona_rng_uniform(&r) - 1.0f;
        }
        cr_assert_eq(sona_ewc_add_task(e, star[t], F[t], N), SONA_OK);
        cr_assert_eq(sona_ewc_task_weight(e, (uint32_t)t), 1.0f, "a new snapshot starts at full weight");
    }
    const float lambda = sona_ewc_lambda(e);
    const float w[TASKS] = {0.25f, 0.0f, 0.8125f};
    cr_assert_eq(sona_ewc_set_task_weights(e, w, TASKS), SONA_OK, "%s", sona_ewc_last_error(e));
    cr_assert_eq(sona_ewc_lambda(e), lambda, "the weights moved lambda");
    for (int t = 0; t < TASKS; t++) {
        for (int i = 0; i < N; i++)
            wF[t][i] = w[t] * F[t][i];
        pw[t] = wF[t];
    }
    float theta[N], g[N], out[N];
    for (int i = 0; i < N; i++) {
        theta[i] = 2.0f * sona_rng_uniform(&r) - 1.0f;
        g[i] = sona_rng_normal(&r);
    }
    double ref[N];
    brute_penalty(N, TASKS, pw, star, theta, lambda, ref);
    cr_assert_eq(sona_ewc_apply_constraints(e, theta, g, out, N), SONA_OK);
    for (int i = 0; i < N; i++) {
        const double want = g[i] - ref[i];
        cr_assert(fabs(out[i] - want) < 1e-4 * (1 + fabs(want)), "param %d: %g, expected %g", i, out[i], want);
    }
    const float bad_high[TASKS] = {0.5f, 1.5f, 0.5f}, bad_nan[TASKS] = {0.5f, NAN, 0.5f};
    cr_expect_eq(sona_ewc_set_task_weights(e, bad_high, TASKS), SONA_E_INVALID);
    cr_expect_eq(sona_ewc_set_task_weights(e, bad_nan, TASKS), SONA_E_NONFINITE);
    cr_expect_eq(sona_ewc_set_task_weights(e, w, TASKS - 1), SONA_E_SIZE);
    cr_expect_eq(sona_ewc_set_task_weights(e, NULL, TASKS), SONA_E_NULL);
    float again[N];
    cr_assert_eq(sona_ewc_apply_constraints(e, theta, g, again, N), SONA_OK);
    cr_assert_eq(memcmp(out, again, sizeof out), 0, "a refused call changed the penalty");
    cr_expect_eq(sona_ewc_task_weight(e, 1), 0.0f);
    cr_expect_eq(sona_ewc_task_weight(e, TASKS), 0.0f, "no snapshot, no weight");
    /* A fourth snapshot merges the two oldest (weights 0.25 and 0): the merged one keeps 0.25. */
    cr_assert_eq(sona_ewc_add_task(e, star[0], F[0], N), SONA_OK);
    cr_expect_eq(sona_ewc_task_weight(e, 0), 0.25f);
    cr_expect_eq(sona_ewc_task_weight(e, 1), 0.8125f);
    cr_expect_eq(sona_ewc_task_weight(e, 2), 1.0f);
    for (int t = 0; t < TASKS; t++) {
        free(F[t]);
        free(star[t]);
    }
    sona_ewc_destroy(e);
}

Test(ewc, fisher_is_an_ema_of_squared_gradients)
{
    enum { N = 9 };
    sona_ewc_config cfg;
    sona_ewc_config_default(&cfg, N);
    cfg.fisher_decay = 0.9f;
    sona_ewc *e = make(&cfg);
    double ref[N] = {0};
    for (int s = 0; s < 20; s++) {
        float g[N];
        for (int i = 0; i < N; i++)
            g[i] = (float)((s * 7 + i * 3) % 5) - 2.0f;
        cr_assert_eq(sona_ewc_update_fisher(e, g, N), SONA_OK);
        for (int i = 0; i < N; i++)
            ref[i] = 0.9 * ref[i] + 0.1 * g[i] * g[i];
    }
    const float *f = sona_ewc_fisher(e);
    for (int i = 0; i < N; i++)
        cr_expect(fabs(f[i] - ref[i]) < 1e-5, "F[%d] = %g, expected %g", i, f[i], ref[i]);
    /* No task yet: the constraint is the identity, and there is no penalty to pass. */
    float theta[N] = {1}, g[N] = {0.5f, -1}, out[N];
    cr_assert_eq(sona_ewc_apply_constraints(e, theta, g, out, N), SONA_OK);
    cr_expect_eq(memcmp(out, g, sizeof g), 0);
    const float *fs = (const float *)0x1, *ft = (const float *)0x1;
    float lam;
    cr_assert_eq(sona_ewc_penalty(e, &fs, &ft, &lam), SONA_OK);
    cr_expect_null(fs);
    cr_expect_null(ft);
    /* end_task snapshots the running Fisher and starts a new one. */
    cr_assert_eq(sona_ewc_end_task(e, theta, N), SONA_OK);
    float snapF[N];
    cr_assert_eq(sona_ewc_get_task(e, 0, NULL, snapF), SONA_OK);
    for (int i = 0; i < N; i++) {
        cr_expect(fabs(snapF[i] - ref[i]) < 1e-5);
        cr_expect_eq(f[i], 0.0f, "the running Fisher restarts after a boundary");
    }
    sona_ewc_destroy(e);
}

Test(ewc, bad_input_is_refused_and_changes_nothing)
{
    enum { N = 11 };
    sona_ewc_config cfg;
    sona_ewc_config_default(&cfg, N);
    sona_ewc *e = make(&cfg);
    float theta[N + 1] = {0}, g[N + 1], out[N + 1];
    for (int i = 0; i <= N; i++)
        g[i] = 0.1f * (float)i;
    cr_assert_eq(sona_ewc_update_fisher(e, g, N), SONA_OK);
    cr_assert_eq(sona_ewc_end_task(e, theta, N), SONA_OK);
    cr_assert_eq(sona_ewc_update_fisher(e, g, N), SONA_OK);
    float before[N];
    memcpy(before, sona_ewc_fisher(e), sizeof before);

    cr_expect_eq(sona_ewc_update_fisher(e, g, N + 1), SONA_E_SIZE);
    cr_expect_eq(sona_ewc_update_fisher(e, g, N - 1), SONA_E_SIZE);
    cr_expect_eq(sona_ewc_apply_constraints(e, theta, g, out, N - 1), SONA_E_SIZE);
    cr_expect_eq(sona_ewc_observe(e, theta, g, N + 1, NULL), SONA_E_SIZE);
    cr_expect_eq(sona_ewc_end_task(e, theta, 3), SONA_E_SIZE);
    cr_expect_eq(sona_ewc_add_task(e, theta, g, 0), SONA_E_SIZE);
    cr_expect(strlen(sona_ewc_last_error(e)) > 0);
    g[3] = NAN;
    cr_expect_eq(sona_ewc_update_fisher(e, g, N), SONA_E_NONFINITE);
    cr_expect_eq(sona_ewc_observe(e, theta, g, N, NULL), SONA_E_NONFINITE);
    cr_expect_eq(sona_ewc_apply_constraints(e, theta, g, out, N), SONA_E_NONFINITE);
    g[3] = 0.3f;
    theta[2] = INFINITY;
    cr_expect_eq(sona_ewc_end_task(e, theta, N), SONA_E_NONFINITE);
    cr_expect_eq(sona_ewc_observe_norm(e, theta, N, 1.0f, NULL), SONA_E_NONFINITE);
    theta[2] = 0;
    cr_expect_eq(sona_ewc_observe_norm(e, theta, N, NAN, NULL), SONA_E_NONFINITE);
    g[0] = -1.0f;
    cr_expect_eq(sona_ewc_add_task(e, theta, g, N), SONA_E_INVALID, "a negative Fisher value");
    cr_expect_eq(sona_ewc_update_fisher(NULL, g, N), SONA_E_NULL);
    cr_expect_eq(sona_ewc_get_task(e, 1, NULL, NULL), SONA_E_INVALID);

    cr_expect_eq(memcmp(before, sona_ewc_fisher(e), sizeof before), 0, "a refused call changed the Fisher");
    cr_expect_eq(sona_ewc_task_count(e), 1);
    cr_expect_eq(sona_ewc_boundaries(e), 1);

    sona_ewc *bad = (sona_ewc *)0x1;
    cfg.param_count = 0;
    cr_expect_eq(sona_ewc_create(&cfg, &bad), SONA_E_INVALID);
    cr_expect_null(bad);
    sona_ewc_config_default(&cfg, N);
    cfg.fisher_decay = 1.0f;
    cr_expect_eq(sona_ewc_create(&cfg, &bad), SONA_E_INVALID);
    cfg.fisher_decay = NAN;
    cr_expect_eq(sona_ewc_create(&cfg, &bad), SONA_E_NONFINITE);
    sona_ewc_destroy(NULL);
    sona_ewc_destroy(e);
}
