/* SPDX-License-Identifier: MIT */
/* Adapter behaviour: identity at creation, learning moves the output the right way, bad input
 * is refused with a status and leaves the adapter bit-for-bit unchanged. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "core/adapt/lora_internal.h"
#include "dispatch/dispatch.h"
#include "support/fill.h"
#include <sona.h>

static sona_lora *make(uint32_t hidden, uint32_t rank, uint32_t count)
{
    sona_lora_config cfg;
    sona_lora_config_default(&cfg, SONA_LORA_MICRO, hidden);
    cfg.rank = rank;
    cfg.count = count;
    sona_lora *l = NULL;
    cr_assert_eq(sona_lora_create(&cfg, &l), SONA_OK, "%s", sona_last_error());
    return l;
}

static double projection(sona_lora *l, int32_t a, const float *x, const float *delta, uint32_t H)
{
    float *y = malloc(H * sizeof *y);
    cr_assert_eq(sona_lora_forward(l, a, x, y), SONA_OK);
    double p = 0;
    for (uint32_t h = 0; h < H; h++)
        p += (double)(y[h] - x[h]) * delta[h];
    free(y);
    return p;
}

Test(lora, new_adapter_is_identity)
{
    const uint32_t H = 300;
    sona_lora *l = make(H, 2, 3);
    float x[300], y[300];
    sona_rng r;
    sona_rng_seed(&r, 1, 0);
    fill_uniform(&r, x, H, -1.0f, 1.0f);
    for (int32_t a = -1; a < 3; a++) {
        cr_assert_eq(sona_lora_forward(l, a, x, y), SONA_OK);
        cr_assert_eq(memcmp(x, y, sizeof x), 0, "adapter %d is not the identity", a);
    }
    sona_lora_destroy(l);
}

static void learning_direction(float w, uint32_t H, uint32_t rank)
{
    const uint64_t seed = test_seed();
    printf("[lora] learning direction w=%g H=%u r=%u seed %" PRIu64 "\n", w, H, rank, seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 0);
    sona_lora *l = make(H, rank, 2);
    float *x = malloc(H * sizeof *x), *delta = malloc(H * sizeof *delta);
    fill_uniform(&r, x, H, -1.0f, 1.0f);
    fill_uniform(&r, delta, H, -1.0f, 1.0f);
    double before = projection(l, 1, x, delta, H);
    double other_before = projection(l, 0, x, delta, H);
    for (int step = 0; step < 3; step++) {
        cr_assert_eq(sona_lora_accumulate(l, 1, x, delta, w), SONA_OK, "%s", sona_lora_last_error(l));
        cr_assert_eq(sona_lora_pending(l), 1);
        cr_assert_eq(sona_lora_apply_updates(l), SONA_OK);
        cr_assert_eq(sona_lora_pending(l), 0);
        double after = projection(l, 1, x, delta, H);
        if (w > 0)
            cr_assert_gt(after, before + 1e-6, "step %d: <y-x, delta> did not grow (%g -> %g)", step, before, after);
        else
            cr_assert_lt(after, before - 1e-6, "step %d: <y-x, delta> did not shrink (%g -> %g)", step, before, after);
        before = after;
    }
    /* Only the adapter that got the signal moved. */
    cr_assert_eq(projection(l, 0, x, delta, H), other_before);
    /* Both matrices were trained: A moved too, not B alone. */
    float *A0 = malloc((size_t)rank * H * sizeof *A0), *A1 = malloc((size_t)rank * H * sizeof *A1);
    cr_assert_eq(sona_lora_get_weights(l, 0, A0, NULL), SONA_OK);
    sona_lora_config cfg = *sona_lora_get_config(l);
    sona_lora *fresh = NULL;
    cr_assert_eq(sona_lora_create(&cfg, &fresh), SONA_OK);
    cr_assert_eq(sona_lora_get_weights(fresh, 1, A0, NULL), SONA_OK);
    cr_assert_eq(sona_lora_get_weights(l, 1, A1, NULL), SONA_OK);
    cr_assert_neq(memcmp(A0, A1, (size_t)rank * H * sizeof *A0), 0, "A was not trained");
    sona_lora_destroy(fresh);
    free(A0);
    free(A1);
    free(x);
    free(delta);
    sona_lora_destroy(l);
}

Test(lora, positive_signal_increases_projection) { learning_direction(0.8f, 257, 2); }
Test(lora, negative_signal_decreases_projection) { learning_direction(-0.6f, 257, 2); }
Test(lora, learning_direction_rank1_and_rank16)
{
    learning_direction(1.0f, 64, 1);
    learning_direction(-1.0f, 1031, 16);
}

/* Snapshot of every adapter's weights, for bit-for-bit comparisons. */
static float *snapshot(sona_lora *l)
{
    const sona_lora_config *c = sona_lora_get_config(l);
    const size_t af = (size_t)c->rank * c->hidden;
    float *s = malloc(2 * af * c->count * sizeof *s);
    for (uint32_t a = 0; a < c->count; a++)
        cr_assert_eq(sona_lora_get_weights(l, (int32_t)a, s + 2 * a * af, s + (2 * a + 1) * af), SONA_OK);
    return s;
}

Test(lora, bad_input_is_refused_and_changes_nothing)
{
    const uint32_t H = 33;
    sona_lora *l = make(H, 2, 2);
    float x[33], d[33], A[66], B[66];
    sona_rng r;
    sona_rng_seed(&r, 7, 0);
    fill_uniform(&r, x, H, -1.0f, 1.0f);
    fill_uniform(&r, d, H, -1.0f, 1.0f);
    /* Give the adapter non-trivial weights first. */
    cr_assert_eq(sona_lora_accumulate(l, 0, x, d, 1.0f), SONA_OK);
    cr_assert_eq(sona_lora_apply_updates(l), SONA_OK);
    float *before = snapshot(l);
    const size_t bytes = 2 * 2 * 66 * sizeof(float);

    cr_expect_eq(sona_lora_accumulate(l, 0, NULL, d, 1.0f), SONA_E_NULL);
    cr_expect_eq(sona_lora_accumulate(l, 0, x, NULL, 1.0f), SONA_E_NULL);
    cr_expect_eq(sona_lora_accumulate(l, 2, x, d, 1.0f), SONA_E_INVALID);
    cr_expect_eq(sona_lora_accumulate(l, -2, x, d, 1.0f), SONA_E_INVALID);
    cr_expect_eq(sona_lora_accumulate(l, 0, x, d, NAN), SONA_E_NONFINITE);
    cr_expect_eq(sona_lora_accumulate(l, 0, x, d, INFINITY), SONA_E_NONFINITE);
    float saved = x[5];
    x[5] = NAN;
    cr_expect_eq(sona_lora_accumulate(l, 0, x, d, 1.0f), SONA_E_NONFINITE);
    x[5] = saved;
    saved = d[32];
    d[32] = -INFINITY;
    cr_expect_eq(sona_lora_accumulate(l, 0, x, d, 1.0f), SONA_E_NONFINITE);
    cr_expect(strlen(sona_lora_last_error(l)) > 0, "a refused call leaves a message");
    d[32] = saved;
    /* A batch with one bad row is refused whole. */
    float xb[66], db[66], wb[2] = {1.0f, NAN};
    int32_t ids[2] = {0, 1};
    memcpy(xb, x, sizeof x);
    memcpy(xb + 33, x, sizeof x);
    memcpy(db, d, sizeof d);
    memcpy(db + 33, d, sizeof d);
    cr_expect_eq(sona_lora_accumulate_batch(l, 2, ids, xb, db, wb), SONA_E_NONFINITE);
    cr_expect_eq(sona_lora_accumulate_batch(l, 0, ids, xb, db, wb), SONA_E_INVALID);
    cr_expect_eq(sona_lora_pending(l), 0, "nothing was accumulated");
    cr_expect_eq(sona_lora_apply_updates(l), SONA_OK);
    /* Non-finite weights are refused. */
    memset(A, 0, sizeof A);
    memset(B, 0, sizeof B);
    B[7] = NAN;
    cr_expect_eq(sona_lora_set_weights(l, 0, A, B), SONA_E_NONFINITE);
    cr_expect_eq(sona_lora_set_weights(l, 5, A, NULL), SONA_E_INVALID);
    cr_expect_eq(sona_lora_forward(l, 3, x, x), SONA_E_INVALID);
    cr_expect_eq(sona_lora_forward(NULL, 0, x, x), SONA_E_NULL);

    float *after = snapshot(l);
    cr_assert_eq(memcmp(before, after, bytes), 0, "a refused call changed the adapter");
    free(before);
    free(after);
    sona_lora_destroy(l);
    sona_lora_destroy(NULL); /* a no-op */
}

Test(lora, bad_config_is_refused)
{
    sona_lora_config cfg;
    sona_lora_config_default(&cfg, SONA_LORA_BASE, 128);
    sona_lora *l = (sona_lora *)0x1;
    cfg.rank = 0;
    cr_expect_eq(sona_lora_create(&cfg, &l), SONA_E_INVALID);
    cr_expect_null(l);
    cr_expect(strlen(sona_last_error()) > 0);
    cfg.rank = 65;
    cr_expect_eq(sona_lora_create(&cfg, &l), SONA_E_INVALID);
    cfg.rank = 8;
    cfg.hidden = 0;
    cr_expect_eq(sona_lora_create(&cfg, &l), SONA_E_INVALID);
    cfg.hidden = 128;
    cfg.alpha = NAN;
    cr_expect_eq(sona_lora_create(&cfg, &l), SONA_E_NONFINITE);
    cr_expect_eq(sona_lora_create(NULL, &l), SONA_E_NULL);
}

Test(lora, weights_round_trip_and_seed_is_deterministic)
{
    const uint32_t H = 45, R = 3;
    sona_lora *a = make(H, R, 2), *b = make(H, R, 2);
    float A1[135], A2[135], B1[135], B2[135];
    cr_assert_eq(sona_lora_get_weights(a, 1, A1, B1), SONA_OK);
    cr_assert_eq(sona_lora_get_weights(b, 1, A2, NULL), SONA_OK);
    cr_assert_eq(memcmp(A1, A2, sizeof A1), 0, "same seed, different A");
    sona_rng r;
    sona_rng_seed(&r, 99, 0);
    fill_uniform(&r, A1, 135, -1.0f, 1.0f);
    fill_uniform(&r, B1, 135, -1.0f, 1.0f);
    cr_assert_eq(sona_lora_set_weights(a, 1, A1, B1), SONA_OK);
    cr_assert_eq(sona_lora_get_weights(a, 1, A2, B2), SONA_OK);
    cr_assert_eq(memcmp(A1, A2, sizeof A1), 0);
    cr_assert_eq(memcmp(B1, B2, sizeof B1), 0);
    /* forward matches y = x + s B (A x) computed here in double */
    float x[45], y[45];
    fill_uniform(&r, x, H, -1.0f, 1.0f);
    cr_assert_eq(sona_lora_forward(a, 1, x, y), SONA_OK);
    const double s = sona_lora_get_config(a)->alpha / R;
    for (uint32_t h = 0; h < H; h++) {
        double acc = x[h];
        for (uint32_t j = 0; j < R; j++) {
            double t = 0;
            for (uint32_t k = 0; k < H; k++)
                t += (double)A1[j * H + k] * x[k];
            acc += s * B1[h * R + j] * t;
        }
        cr_assert_float_eq(y[h], acc, 1e-4, "h=%u", h);
    }
    sona_lora_destroy(a);
    sona_lora_destroy(b);
}

Test(lora, batched_forward_matches_single_rows)
{
    const uint32_t H = 129, n = 7;
    sona_lora *l = make(H, 4, 3);
    sona_rng r;
    sona_rng_seed(&r, 5, 0);
    float A[516], B[516];
    for (int32_t a = 0; a < 3; a++) {
        fill_uniform(&r, A, 516, -1.0f, 1.0f);
        fill_uniform(&r, B, 516, -1.0f, 1.0f);
        cr_assert_eq(sona_lora_set_weights(l, a, A, B), SONA_OK);
    }
    float x[7 * 129], yb[7 * 129], ys[129];
    int32_t ids[7] = {0, 2, -1, 1, 1, 0, -1};
    fill_uniform(&r, x, n * H, -1.0f, 1.0f);
    cr_assert_eq(sona_lora_forward_batch(l, n, ids, x, yb), SONA_OK);
    for (uint32_t i = 0; i < n; i++) {
        cr_assert_eq(sona_lora_forward(l, ids[i], x + i * H, ys), SONA_OK);
        cr_assert_eq(memcmp(ys, yb + i * H, sizeof ys), 0, "row %u differs", i);
    }
    /* in place */
    cr_assert_eq(sona_lora_forward_batch(l, n, ids, x, x), SONA_OK);
    cr_assert_eq(memcmp(x, yb, sizeof yb), 0);
    sona_lora_destroy(l);
}

Test(api, status_strings_and_version)
{
    for (int s = 0; s < SONA_STATUS_COUNT; s++)
        cr_expect(strlen(sona_status_str((sona_status)s)) > 0);
    cr_expect_str_eq(sona_status_str((sona_status)999), "unknown status");
    cr_expect_str_eq(sona_version(), SONA_VERSION_STRING);
    cr_expect_eq(sona_version_number(), SONA_VERSION_NUMBER);
}

/* A standalone adapter's defaults scale as the engine's of the same kind: alpha = 2 x rank for
 * Micro and Base alike, the rule of the engine's presets, so s = alpha / rank is the same. */
Test(lora, defaults_scale_as_the_engine)
{
    sona_lora_config micro, base;
    sona_lora_config_default(&micro, SONA_LORA_MICRO, 64);
    sona_lora_config_default(&base, SONA_LORA_BASE, 64);
    cr_expect_eq(micro.alpha, 2.0f * (float)micro.rank, "micro alpha %g at rank %u", micro.alpha, micro.rank);
    cr_expect_eq(base.alpha, 2.0f * (float)base.rank, "base alpha %g at rank %u", base.alpha, base.rank);
    for (int p = SONA_PRESET_DEFAULT; p <= SONA_PRESET_EDGE; p++) {
        sona_engine_config e;
        sona_engine_config_default(&e, (sona_preset)p, 64);
        cr_expect_eq(e.micro_alpha / (float)e.micro_rank, micro.alpha / (float)micro.rank, "preset %d: micro scale", p);
        cr_expect_eq(e.base_alpha / (float)e.base_rank, base.alpha / (float)base.rank, "preset %d: base scale", p);
    }
}

/* The spectral norm of s B A (adapter 0 of l) in double, by power iteration on (BA)^T (BA) run
 * long enough to converge to 1e-9 on these sizes. */
static double true_gain(sona_lora *l, uint32_t H, uint32_t r)
{
    float *A = malloc((size_t)r * H * sizeof *A), *B = malloc((size_t)H * r * sizeof *B);
    cr_assert_eq(sona_lora_get_weights(l, 0, A, B), SONA_OK);
    double *v = malloc(H * sizeof *v), *u = malloc(H * sizeof *u), t[64], norm = 0;
    for (uint32_t h = 0; h < H; h++)
        v[h] = 1.0 + 0.001 * h;
    for (int it = 0; it < 3000; it++) {
        for (uint32_t j = 0; j < r; j++) { /* t = A v */
            t[j] = 0;
            for (uint32_t h = 0; h < H; h++)
                t[j] += (double)A[j * H + h] * v[h];
        }
        for (uint32_t h = 0; h < H; h++) { /* u = B t */
            u[h] = 0;
            for (uint32_t j = 0; j < r; j++)
                u[h] += (double)B[h * r + j] * t[j];
        }
        for (uint32_t j = 0; j < r; j++) { /* t = B^T u */
            t[j] = 0;
            for (uint32_t h = 0; h < H; h++)
                t[j] += (double)B[h * r + j] * u[h];
        }
        double n2 = 0;
        for (uint32_t h = 0; h < H; h++) { /* v = A^T t */
            v[h] = 0;
            for (uint32_t j = 0; j < r; j++)
                v[h] += (double)A[j * H + h] * t[j];
            n2 += v[h] * v[h];
        }
        norm = sqrt(sqrt(n2)); /* |(BA)^T (BA) v| -> sigma^2 |v| with |v| = 1 */
        for (uint32_t h = 0; h < H; h++)
            v[h] /= sqrt(n2);
    }
    const sona_lora_config *c = sona_lora_get_config(l);
    free(A);
    free(B);
    free(v);
    free(u);
    return c->alpha / c->rank * norm;
}

/* The engine's output bound (core/adapt/lora_internal.h): sona_lora_gain is an upper bound of the
 * spectral norm of s B A within 1.6 %, and sona_lora_bound_gain brings every adapter under the
 * cap (and leaves one already under it as it is), on fresh random weights of odd sizes. */
Test(lora, the_output_bound_holds)
{
    const uint64_t seed = test_seed();
    printf("[lora] output bound seed %" PRIu64 "\n", seed);
    sona_rng rng;
    sona_rng_seed(&rng, seed, 9);
    const uint32_t shapes[][2] = {{37, 1}, {53, 2}, {129, 5}, {67, 16}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const uint32_t H = shapes[k][0], r = shapes[k][1];
        sona_lora_config c;
        sona_lora_config_default(&c, SONA_LORA_MICRO, H);
        c.rank = r;
        c.alpha = 2.0f * r;
        c.seed = seed + k;
        sona_lora *l = NULL;
        cr_assert_eq(sona_lora_create(&c, &l), SONA_OK, "%s", sona_last_error());
        float *B = malloc((size_t)H * r * sizeof *B);
        for (size_t i = 0; i < (size_t)H * r; i++)
            B[i] = sona_rng_normal(&rng);
        cr_assert_eq(sona_lora_set_weights(l, 0, NULL, B), SONA_OK);
        double bound, exact = true_gain(l, H, r);
        cr_assert_eq(sona_lora_gain(l, 0, &bound), SONA_OK);
        printf("[lora] H %u r %u: spectral norm %.6g, bound %.6g\n", H, r, exact, bound);
        cr_assert_geq(bound, exact * (1 - 1e-6), "H %u r %u: the bound %g is under the norm %g", H, r, bound, exact);
        cr_assert_leq(bound, exact * 1.017, "H %u r %u: the bound %g is loose against %g", H, r, bound, exact);
        const float cap = (float)(0.5 * exact);
        uint32_t capped = 0;
        cr_assert_eq(sona_lora_bound_gain(l, cap, &capped), SONA_OK);
        cr_expect_eq(capped, 1);
        const double after = true_gain(l, H, r);
        cr_assert_leq(after, cap * (1 + 1e-5), "H %u r %u: %g after the cap %g", H, r, after, (double)cap);
        cr_assert_geq(after, cap * 0.98, "H %u r %u: capped far below the cap (%g < %g)", H, r, after, (double)cap);
        float *before = malloc((size_t)H * r * sizeof *before), *again = malloc((size_t)H * r * sizeof *again);
        cr_assert_eq(sona_lora_get_weights(l, 0, NULL, before), SONA_OK);
        cr_assert_eq(sona_lora_bound_gain(l, (float)(2 * exact), &capped), SONA_OK);
        cr_assert_eq(sona_lora_get_weights(l, 0, NULL, again), SONA_OK);
        cr_expect_eq(capped, 0);
        cr_expect_eq(memcmp(before, again, (size_t)H * r * sizeof *before), 0, "an adapter under the cap changed");
        free(before);
        free(again);
        free(B);
        sona_lora_destroy(l);
    }
}

/* The engine's preconditioning of B's steps (lora_internal.h): each adapter's accumulated B
 * gradient is multiplied by P = t (M + 0.3 t I)^-1 before the step, M the running mean of the
 * codes z = A x that sona_lora_normalize_signals saw (bias-corrected), t = trace(M) / rank; A's
 * step is untouched. Checked against a double-precision reference of P on random weights,
 * inputs and signals (odd width, rank 3, two adapters), with clipping off. */
Test(lora, code_preconditioning_matches_the_reference)
{
    const uint64_t seed = test_seed();
    printf("[lora] code preconditioning seed %" PRIu64 "\n", seed);
    enum { H = 37, R = 3, COUNT = 2, N = 25 };
    sona_lora_config cfg;
    sona_lora_config_default(&cfg, SONA_LORA_MICRO, H);
    cfg.rank = R;
    cfg.count = COUNT;
    cfg.clip_norm = 0.0f;
    cfg.seed = seed;
    sona_lora *l = NULL;
    cr_assert_eq(sona_lora_create(&cfg, &l), SONA_OK, "%s", sona_last_error());
    cr_assert_eq(sona_lora_set_code_preconditioning(l, 0.2f), SONA_OK);
    cr_expect_eq(sona_lora_set_code_preconditioning(l, 1.5f), SONA_E_INVALID);
    cr_expect_eq(sona_lora_set_code_preconditioning(l, NAN), SONA_E_NONFINITE);
    sona_rng r;
    sona_rng_seed(&r, seed, 1);
    enum { W = COUNT * R * H };
    float A[W], Bt[W], gA[W], gBt[W], A2[W], Bt2[W], x[N * H], d[N * H], w[N];
    int32_t ids[N];
    fill_uniform(&r, Bt, W, -0.3f, 0.3f);
    cr_assert_eq(sona_lora_export(l, A, NULL, NULL), SONA_OK);
    cr_assert_eq(sona_lora_import(l, A, Bt), SONA_OK);
    fill_uniform(&r, x, N * H, -1.0f, 1.0f);
    fill_uniform(&r, d, N * H, -1.0f, 1.0f);
    for (int i = 0; i < N; i++) {
        ids[i] = i % 5 == 4 ? 1 : 0; /* adapter 1 sees few signals: a young running mean */
        w[i] = 2.0f * sona_rng_uniform(&r) - 1.0f;
    }
    cr_assert_eq(sona_lora_normalize_signals(l, N, ids, x, d, w), SONA_OK);
    cr_assert_eq(sona_lora_accumulate_batch(l, N, ids, x, d, w), SONA_OK);
    cr_assert_eq(sona_lora_export_grad(l, gA, gBt), SONA_OK);
    double weight[COUNT], M[COUNT * R * R];
    cr_assert(sona_lora_code_state(l, weight, M));
    cr_assert_eq(sona_lora_apply_updates(l), SONA_OK);
    cr_assert_eq(sona_lora_export(l, A2, Bt2, NULL), SONA_OK);
    const double lr = cfg.learning_rate;
    for (int a = 0; a < COUNT; a++) {
        /* P by Gauss-Jordan in double, independent of lora.c's Cholesky. */
        double K[R][2 * R], t = 0;
        for (int j = 0; j < R; j++)
            t += M[a * R * R + j * R + j] / weight[a] / R;
        for (int j = 0; j < R; j++)
            for (int k = 0; k < 2 * R; k++)
                K[j][k] = k < R ? M[a * R * R + j * R + k] / weight[a] + (j == k ? 0.3 * t : 0.0) : (k - R == j ? t : 0.0);
        for (int c = 0; c < R; c++) {
            const double pivot = K[c][c];
            for (int k = 0; k < 2 * R; k++)
                K[c][k] /= pivot;
            for (int j = 0; j < R; j++)
                if (j != c) {
                    const double f = K[j][c];
                    for (int k = 0; k < 2 * R; k++)
                        K[j][k] -= f * K[c][k];
                }
        }
        for (int j = 0; j < R; j++)
            for (int h = 0; h < H; h++) {
                const size_t at = (size_t)a * R * H + (size_t)j * H + h;
                double pg = 0;
                for (int k = 0; k < R; k++)
                    pg += K[j][R + k] * gBt[(size_t)a * R * H + (size_t)k * H + h];
                const double want_b = Bt[at] + lr * pg, want_a = A[at] + lr * gA[at];
                cr_assert(fabs(Bt2[at] - want_b) <= 1e-5 * (1 + fabs(want_b)), "adapter %d B[%d][%d]: %g, expected %g", a,
                          h, j, Bt2[at], want_b);
                cr_assert(fabs(A2[at] - want_a) <= 1e-6 * (1 + fabs(want_a)), "adapter %d A[%d][%d] changed differently",
                          a, j, h);
            }
    }
    sona_lora_destroy(l);
}

/* What the preconditioning is for: two inputs of cosine about 0.8 (so are their codes at rank
 * 2), a signal on the first. Plain, B's step drags the second input's output along by the
 * codes' correlation (here 1.36 times as far as the first's); preconditioned by the covariance
 * of both codes, about half as far (0.70: the ridge keeps P bounded), while the first still
 * moves the way the signal says. Fixed seed: the figures are this case's. */
Test(lora, preconditioning_keeps_one_input_from_dragging_another)
{
    enum { H = 64, R = 2 };
    float x1[H], x2[H], d[H];
    sona_rng r;
    sona_rng_seed(&r, 77, 2);
    fill_uniform(&r, x1, H, -1.0f, 1.0f);
    fill_uniform(&r, d, H, -1.0f, 1.0f);
    for (int h = 0; h < H; h++)
        x2[h] = x1[h] + 0.8f * (2.0f * sona_rng_uniform(&r) - 1.0f);
    double spill[2], moved[2];
    for (int pre = 0; pre < 2; pre++) {
        sona_lora *l = make(H, R, 1);
        if (pre)
            cr_assert_eq(sona_lora_set_code_preconditioning(l, 0.05f), SONA_OK);
        const int32_t id = 0;
        for (int k = 0; k < 200; k++) { /* traffic of both inputs (weight 0: only seen) */
            float zero = 0.0f;
            cr_assert_eq(sona_lora_normalize_signals(l, 1, &id, k % 2 ? x2 : x1, d, &zero), SONA_OK);
        }
        const double p1 = projection(l, 0, x1, d, H), p2 = projection(l, 0, x2, d, H);
        float w = 1.0f;
        cr_assert_eq(sona_lora_normalize_signals(l, 1, &id, x1, d, &w), SONA_OK);
        cr_assert_eq(sona_lora_accumulate(l, 0, x1, d, w), SONA_OK);
        cr_assert_eq(sona_lora_apply_updates(l), SONA_OK);
        moved[pre] = projection(l, 0, x1, d, H) - p1;
        spill[pre] = projection(l, 0, x2, d, H) - p2;
        sona_lora_destroy(l);
    }
    printf("[lora] moved along delta: plain %.4f, preconditioned %.4f; the other input's output along it %.4f / "
           "%.4f\n", moved[0], moved[1], spill[0], spill[1]);
    cr_assert_gt(moved[0], 0.0);
    cr_assert_gt(moved[1], 0.0);
    cr_assert_lt(fabs(spill[1]) / moved[1], 0.7 * fabs(spill[0]) / moved[0], "preconditioning did not reduce the drag");
}

/* sona_lora_move: a set with pending gradients moves to another backend and back with every
 * weight, scale and gradient as it was, bit for bit, and learns on where it went. Both ways
 * through the accelerator when there is one (PoCL in CI), else between two CPU variants. */
Test(lora, move_keeps_weights_gradients_and_learning)
{
    const uint64_t seed = test_seed();
    enum { HH = 67, RR = 3, COUNT = 4 };
    sona_lora *l = make(HH, RR, COUNT);
    const sona_backend *home = sona_lora_backend(l), *away = sona_device_backend();
    char why[256];
    if (!away)
        away = sona_cpu_variant_get("scalar", why, sizeof why);
    cr_assert_not_null(away, "%s", why);
    printf("[lora] move %s -> %s -> %s: seed %" PRIu64 "\n", home->name, away->name, home->name, seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 11);
    float x[HH], d[HH];
    for (int k = 0; k < 5; k++) {
        fill_uniform(&r, x, HH, -1.0f, 1.0f);
        fill_uniform(&r, d, HH, -0.1f, 0.1f);
        cr_assert_eq(sona_lora_accumulate(l, k % COUNT, x, d, 1.0f), SONA_OK);
    }
    static float A0[COUNT * RR * HH], B0[COUNT * RR * HH], gA0[COUNT * RR * HH], gB0[COUNT * RR * HH];
    static float A1[COUNT * RR * HH], B1[COUNT * RR * HH], gA1[COUNT * RR * HH], gB1[COUNT * RR * HH];
    float s0[COUNT], s1[COUNT];
    cr_assert_eq(sona_lora_export(l, A0, B0, s0), SONA_OK);
    cr_assert_eq(sona_lora_export_grad(l, gA0, gB0), SONA_OK);
    uint64_t pending = sona_lora_pending(l);
    cr_assert_gt(pending, 0);
    for (int leg = 0; leg < 2; leg++) {
        const sona_backend *to = leg ? home : away;
        cr_assert_eq(sona_lora_move(l, to), SONA_OK, "%s", sona_lora_last_error(l));
        cr_assert_eq(sona_lora_backend(l), to);
        cr_assert_eq(sona_lora_export(l, A1, B1, s1), SONA_OK);
        cr_assert_eq(sona_lora_export_grad(l, gA1, gB1), SONA_OK);
        cr_assert_eq(memcmp(A0, A1, sizeof A0), 0, "A on %s", to->name);
        cr_assert_eq(memcmp(B0, B1, sizeof B0), 0, "Bt on %s", to->name);
        cr_assert_eq(memcmp(s0, s1, sizeof s0), 0, "scale on %s", to->name);
        cr_assert_eq(memcmp(gA0, gA1, sizeof gA0), 0, "gA on %s", to->name);
        cr_assert_eq(memcmp(gB0, gB1, sizeof gB0), 0, "gBt on %s", to->name);
        cr_assert_eq(sona_lora_pending(l), pending);
        if (!leg) { /* learns where it went: the pending step, then one signal's step moves
                     * adapter 0's projection along its d */
            cr_assert_eq(sona_lora_apply_updates(l), SONA_OK, "%s", sona_lora_last_error(l));
            fill_uniform(&r, x, HH, -1.0f, 1.0f);
            fill_uniform(&r, d, HH, -0.1f, 0.1f);
            const double before = projection(l, 0, x, d, HH);
            cr_assert_eq(sona_lora_accumulate(l, 0, x, d, 1.0f), SONA_OK);
            cr_assert_eq(sona_lora_apply_updates(l), SONA_OK, "%s", sona_lora_last_error(l));
            cr_assert_gt(projection(l, 0, x, d, HH), before, "a step on %s", to->name);
            cr_assert_eq(sona_lora_accumulate(l, 1, x, d, 0.5f), SONA_OK); /* pending again */
            cr_assert_eq(sona_lora_export(l, A0, B0, s0), SONA_OK); /* what the way back keeps */
            cr_assert_eq(sona_lora_export_grad(l, gA0, gB0), SONA_OK);
            pending = sona_lora_pending(l);
        }
    }
    cr_assert_eq(sona_lora_move(l, NULL), SONA_E_NULL);
    sona_lora_destroy(l);
}
