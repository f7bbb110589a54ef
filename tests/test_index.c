/* SPDX-License-Identifier: MIT */
/* The HNSW pattern index: recall against the exact knn op, deletions and updates, neighbour
 * lists, determinism for a seed, and bad input refused without change. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/half.h"
#include "common/rng.h"
#include "cpu/vec.h"
#include "dispatch/dispatch.h"
#include "dispatch/vecmath.h"
#include "support/fill.h"
#include <sona.h>

/* n points around 100 centres drawn from N(0,1) per coordinate, noise N(0, 0.5^2). */
static float *clustered(sona_rng *r, uint32_t n, uint32_t d)
{
    float *centres = malloc((size_t)100 * d * sizeof *centres);
    float *X = malloc((size_t)n * d * sizeof *X);
    for (size_t i = 0; i < (size_t)100 * d; i++)
        centres[i] = sona_rng_normal(r);
    for (uint32_t i = 0; i < n; i++) {
        const float *c = centres + (size_t)sona_rng_below(r, 100) * d;
        for (uint32_t t = 0; t < d; t++)
            X[(size_t)i * d + t] = c[t] + 0.5f * sona_rng_normal(r);
    }
    free(centres);
    return X;
}

static sona_index *make(uint32_t d, uint32_t efc, uint64_t seed)
{
    sona_index_config cfg;
    sona_index_config_default(&cfg, d);
    cfg.ef_construction = efc;
    cfg.seed = seed;
    sona_index *x = NULL;
    cr_assert_eq(sona_index_create(&cfg, &x), SONA_OK, "%s", sona_last_error());
    return x;
}

Test(index, recall_at_10_against_exact_knn, .timeout = 300)
{
    const uint64_t seed = test_seed();
    const uint32_t n = 10000, d = 256, nq = 100, k = 10;
    printf("[index] recall n=%u d=%u seed %" PRIu64 "\n", n, d, seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 0);
    float *P = clustered(&r, n + nq, d);
    const float *Q = P + (size_t)n * d; /* queries from the same distribution, not indexed */
    /* ef_construction 64 (default 200) keeps the build near half a second in Release and
     * about 15 s under ASan; recall at ef_search 50 is the property under test. */
    sona_index *x = make(d, 64, seed);
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(sona_index_insert(x, i, P + (size_t)i * d), SONA_OK);
    cr_assert_eq(sona_index_size(x), n);
    int32_t *eidx = malloc((size_t)nq * k * sizeof *eidx);
    float *esim = malloc((size_t)nq * k * sizeof *esim);
    sona_knn_exact_args a = {.m = nq, .n = n, .d = d, .k = k, .Q = Q, .P = P, .idx = eidx, .sim = esim};
    const sona_backend *cpu = sona_cpu_backend();
    cr_assert_eq(cpu->knn_exact(cpu->ctx, &a), SONA_OK);
    uint32_t hits = 0;
    for (uint32_t q = 0; q < nq; q++) {
        uint64_t ids[10];
        float sims[10];
        uint32_t found;
        cr_assert_eq(sona_index_search(x, Q + (size_t)q * d, k, ids, sims, &found), SONA_OK);
        cr_assert_eq(found, k);
        for (uint32_t i = 0; i < k; i++) {
            if (i)
                cr_assert_geq(sims[i - 1], sims[i], "results not best first");
            for (uint32_t j = 0; j < k; j++)
                hits += (int64_t)ids[i] == eidx[q * k + j];
        }
        /* The best similarity agrees with the exact one when the best id does. */
        if ((int64_t)ids[0] == eidx[q * k])
            cr_assert_float_eq(sims[0], esim[q * k], 1e-4f);
    }
    const double recall = (double)hits / (nq * k);
    printf("[index] recall@10 %.4f at ef_search 50\n", recall);
    cr_assert_geq(recall, 0.95, "recall@10 %.4f < 0.95 (seed %" PRIu64 ")", recall, seed);
    free(eidx);
    free(esim);
    free(P);
    sona_index_destroy(x);
}

/* Exact check helper: searching with ef >= n on a small index returns the exact top k. */
Test(index, removed_ids_never_returned)
{
    const uint64_t seed = test_seed();
    const uint32_t n = 601, d = 19;
    printf("[index] removal seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 0);
    float *P = clustered(&r, n, d);
    sona_index *x = make(d, 64, seed);
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(sona_index_insert(x, i, P + (size_t)i * d), SONA_OK);
    /* Remove every third id, then more than half (forces a rebuild on the way). */
    uint32_t removed = 0;
    for (uint32_t i = 0; i < n; i += 3, removed++)
        cr_assert_eq(sona_index_remove(x, i), SONA_OK);
    cr_assert_eq(sona_index_remove(x, 0), SONA_E_NOT_FOUND);
    for (int round = 0; round < 2; round++) {
        for (uint32_t q = 0; q < n; q += 7) {
            uint64_t ids[20];
            uint32_t found;
            cr_assert_eq(sona_index_search(x, P + (size_t)q * d, 20, ids, NULL, &found), SONA_OK);
            cr_assert_eq(found, 20);
            for (uint32_t i = 0; i < found; i++) {
                cr_assert_neq(ids[i] % 3, 0, "removed id %" PRIu64 " returned", ids[i]);
                if (round)
                    cr_assert_lt(ids[i] % 3, 2, "removed id %" PRIu64 " returned", ids[i]);
            }
            uint64_t nb[64];
            uint32_t nn;
            if (q % 3 != 0 && (!round || q % 3 != 2)) {
                cr_assert_eq(sona_index_neighbors(x, q, nb, 64, &nn), SONA_OK);
                cr_assert_gt(nn, 0);
                for (uint32_t i = 0; i < nn; i++)
                    cr_assert(nb[i] % 3 == 1 || (!round && nb[i] % 3 == 2));
            }
        }
        if (!round) /* now remove the ids = 2 mod 3 too: more than half the nodes are dead */
            for (uint32_t i = 2; i < n; i += 3, removed++)
                cr_assert_eq(sona_index_remove(x, i), SONA_OK);
    }
    cr_assert_eq(sona_index_size(x), n - removed);
    /* Removing everything leaves an empty, working index. */
    for (uint32_t i = 1; i < n; i += 3)
        cr_assert_eq(sona_index_remove(x, i), SONA_OK);
    uint64_t id;
    uint32_t found = 9;
    cr_assert_eq(sona_index_search(x, P, 1, &id, NULL, &found), SONA_OK);
    cr_assert_eq(found, 0);
    cr_assert_eq(sona_index_insert(x, 5, P), SONA_OK);
    cr_assert_eq(sona_index_search(x, P, 1, &id, NULL, &found), SONA_OK);
    cr_assert(found == 1 && id == 5);
    free(P);
    sona_index_destroy(x);
}

Test(index, update_moves_a_vector)
{
    const uint64_t seed = test_seed();
    const uint32_t n = 300, d = 33;
    printf("[index] update seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 0);
    float *P = clustered(&r, n, d);
    sona_index *x = make(d, 64, seed);
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(sona_index_insert(x, 1000 + i, P + (size_t)i * d), SONA_OK);
    uint64_t ids[5];
    float sims[5];
    uint32_t found;
    /* Move id 1000 onto point 77's direction (scaled: cosine ignores the norm). */
    float *target = malloc(d * sizeof *target);
    for (uint32_t t = 0; t < d; t++)
        target[t] = 3.0f * P[77 * d + t];
    cr_assert_eq(sona_index_search(x, target, 1, ids, sims, &found), SONA_OK);
    cr_assert_eq(ids[0], 1077);
    uint64_t before;
    cr_assert_eq(sona_index_access_count(x, 1000, &before), SONA_OK);
    cr_assert_eq(sona_index_update(x, 1000, target), SONA_OK);
    cr_assert_eq(sona_index_size(x), n);
    cr_assert_eq(sona_index_search(x, target, 2, ids, sims, &found), SONA_OK);
    cr_assert(ids[0] == 1000 || ids[1] == 1000, "updated id not found at its new place");
    cr_assert_float_eq(sims[0], 1.0f, 1e-5f);
    /* Its old place no longer finds it as an exact match: wherever 1000 shows up, its
     * similarity is that of the new vector. */
    const double new_cos = sona_dot_scalar(P, target, d) /
                           sqrt((double)sona_dot_scalar(P, P, d) * sona_dot_scalar(target, target, d));
    cr_assert_eq(sona_index_search(x, P, 5, ids, sims, &found), SONA_OK);
    for (uint32_t i = 0; i < found; i++)
        if (ids[i] == 1000)
            cr_assert_float_eq(sims[i], new_cos, 1e-4, "old vector of 1000 still indexed");
    float *stored = malloc(d * sizeof *stored);
    cr_assert_eq(sona_index_get_vector(x, 1000, stored), SONA_OK);
    for (uint32_t t = 0; t < d; t++) /* the new vector, magnitude included */
        cr_assert_float_eq(stored[t], target[t], 1e-6 * fabs(target[t]) + 1e-7);
    uint64_t after;
    cr_assert_eq(sona_index_access_count(x, 1000, &after), SONA_OK);
    cr_assert_geq(after, before + 1, "access count lost or not counted");
    cr_assert_eq(sona_index_update(x, 5, target), SONA_E_NOT_FOUND);
    free(stored);
    free(target);
    free(P);
    sona_index_destroy(x);
}

Test(index, same_seed_same_graph)
{
    const uint32_t n = 400, d = 24;
    sona_rng r;
    sona_rng_seed(&r, 11, 0);
    float *P = clustered(&r, n, d);
    sona_index *a = make(d, 40, 9), *b = make(d, 40, 9);
    for (uint32_t i = 0; i < n; i++) {
        cr_assert_eq(sona_index_insert(a, i, P + (size_t)i * d), SONA_OK);
        cr_assert_eq(sona_index_insert(b, i, P + (size_t)i * d), SONA_OK);
    }
    for (uint32_t i = 0; i < n; i += 13) {
        uint64_t na[64], nb[64];
        uint32_t ca, cb;
        cr_assert_eq(sona_index_neighbors(a, i, na, 64, &ca), SONA_OK);
        cr_assert_eq(sona_index_neighbors(b, i, nb, 64, &cb), SONA_OK);
        cr_assert_eq(ca, cb);
        cr_assert_eq(memcmp(na, nb, ca * sizeof *na), 0);
        cr_assert_leq(ca, 2 * 16);
    }
    free(P);
    sona_index_destroy(a);
    sona_index_destroy(b);
}

Test(index, bad_input_changes_nothing)
{
    const uint32_t d = 5;
    sona_index *x = make(d, 16, 1);
    const float v[5] = {1, 2, 3, 4, 5}, zero[5] = {0};
    float nan_v[5] = {1, 2, NAN, 4, 5};
    cr_assert_eq(sona_index_insert(x, 1, v), SONA_OK);
    cr_assert_eq(sona_index_insert(x, 1, v), SONA_E_STATE);
    cr_assert_eq(sona_index_insert(x, 2, nan_v), SONA_E_NONFINITE);
    cr_assert_eq(sona_index_insert(x, 2, zero), SONA_E_INVALID);
    cr_assert_eq(sona_index_insert(x, 2, NULL), SONA_E_NULL);
    const float huge[5] = {3e38f, 0, 0, 0, 1}, tiny[5] = {1e-31f, 0, 0, 0, 0};
    cr_assert_eq(sona_index_insert(x, 2, huge), SONA_E_INVALID, "a norm past 1e30 is refused");
    cr_assert_eq(sona_index_insert(x, 2, tiny), SONA_E_INVALID, "a norm below 1e-30 is refused");
    cr_assert_eq(sona_index_update(x, 1, nan_v), SONA_E_NONFINITE);
    cr_assert_eq(sona_index_blend(x, 1, nan_v, 1.0, 1.0), SONA_E_NONFINITE);
    cr_assert_eq(sona_index_blend(x, 1, v, -1.0, 1.0), SONA_E_INVALID);
    cr_assert_eq(sona_index_blend(x, 1, v, 0.0, 0.0), SONA_E_INVALID);
    cr_assert_eq(sona_index_blend(x, 1, v, NAN, 1.0), SONA_E_NONFINITE);
    cr_assert_eq(sona_index_blend(x, 2, v, 1.0, 1.0), SONA_E_NOT_FOUND);
    cr_assert_eq(sona_index_size(x), 1);
    float got[5], minus[5], again[5];
    cr_assert_eq(sona_index_get_vector(x, 1, got), SONA_OK);
    for (int t = 0; t < 5; t++)
        minus[t] = -got[t];
    cr_assert_eq(sona_index_blend(x, 1, minus, 1.0, 1.0), SONA_E_INVALID, "a zero mean is refused");
    cr_assert_eq(sona_index_get_vector(x, 1, again), SONA_OK);
    cr_assert_eq(memcmp(got, again, sizeof got), 0, "a refused blend changed the vector");
    for (int t = 0; t < 5; t++) /* the vector as inserted, magnitude included */
        cr_assert_float_eq(got[t], v[t], 2e-6f * v[t]);
    uint64_t id;
    uint32_t found;
    cr_assert_eq(sona_index_search(x, nan_v, 1, &id, NULL, &found), SONA_E_NONFINITE);
    cr_assert_eq(sona_index_search(x, v, 0, &id, NULL, &found), SONA_E_INVALID);
    cr_assert_neq(sona_index_last_error(x)[0], '\0');
    sona_index_config cfg;
    sona_index_config_default(&cfg, 0);
    sona_index *bad = (sona_index *)1;
    cr_assert_eq(sona_index_create(&cfg, &bad), SONA_E_INVALID);
    cr_assert_null(bad);
    sona_index_destroy(NULL);
    sona_index_destroy(x);
}

Test(index, dot_kernels_agree_with_scalar)
{
    const uint64_t seed = test_seed();
    printf("[index] dot kernels seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 0);
    float a[301], b[301];
    for (int i = 0; i < 301; i++) {
        a[i] = sona_rng_normal(&r);
        b[i] = sona_rng_normal(&r);
    }
    const uint32_t have = sona_probe()->features;
    for (size_t n = 0; n <= 301; n += (n < 40 ? 1 : 37)) {
        double ref = 0, mag = 0;
        for (size_t i = 0; i < n; i++) {
            ref += (double)a[i] * b[i];
            mag += fabs((double)a[i] * b[i]);
        }
        const double tol = 1e-5 * (mag + 1);
        cr_assert_float_eq(sona_dot_scalar(a, b, n), ref, tol);
        cr_assert_float_eq(sona_dot_kernel()(a, b, n), ref, tol);
#if defined(__x86_64__) || defined(__i386__)
        if ((have & (SONA_CPU_AVX2 | SONA_CPU_FMA)) == (SONA_CPU_AVX2 | SONA_CPU_FMA))
            cr_assert_float_eq(sona_dot_avx2(a, b, n), ref, tol, "avx2 n=%zu", n);
        if (have & SONA_CPU_AVX512F)
            cr_assert_float_eq(sona_dot_avx512(a, b, n), ref, tol, "avx512 n=%zu", n);
#endif
    }
    (void)have;
}

/* Updates kill the old node; the new one must stay reachable even when every node around it is
 * dead (a single id updated over and over, and a small index rewritten several times). */
Test(index, updated_ids_stay_reachable)
{
    const uint64_t seed = test_seed();
    const uint32_t n = 57, d = 21;
    printf("[index] repeated updates seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 0);
    float *P = clustered(&r, 4 * n, d);
    sona_index *x = make(d, 32, seed);
    uint64_t id;
    float sim;
    uint32_t found;
    cr_assert_eq(sona_index_insert(x, 7, P), SONA_OK);
    for (uint32_t round = 1; round < 40; round++) {
        const float *v = P + (size_t)round * d;
        cr_assert_eq(sona_index_update(x, 7, v), SONA_OK);
        cr_assert_eq(sona_index_search(x, v, 1, &id, &sim, &found), SONA_OK);
        cr_assert(found == 1 && id == 7, "round %u: the updated id is unreachable", round);
        cr_assert_float_eq(sim, 1.0f, 1e-5f);
    }
    cr_assert_eq(sona_index_remove(x, 7), SONA_OK);
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(sona_index_insert(x, i, P + (size_t)i * d), SONA_OK);
    for (uint32_t round = 1; round < 4; round++) {
        for (uint32_t i = 0; i < n; i++)
            cr_assert_eq(sona_index_update(x, i, P + (size_t)(round * n + i) * d), SONA_OK);
        for (uint32_t i = 0; i < n; i++) {
            cr_assert_eq(sona_index_search(x, P + (size_t)(round * n + i) * d, 1, &id, &sim, &found),
                         SONA_OK);
            cr_assert(found == 1 && sim > 0.9999f, "round %u id %u lost", round, i);
        }
    }
    /* Small moves (done in place) keep every id findable at its new position. */
    for (uint32_t round = 0; round < 3; round++) {
        for (uint32_t i = 0; i < n; i++) {
            float *v = P + (size_t)(3 * n + i) * d;
            for (uint32_t t = 0; t < d; t++)
                v[t] += 0.01f * sona_rng_normal(&r);
            cr_assert_eq(sona_index_update(x, i, v), SONA_OK);
        }
        for (uint32_t i = 0; i < n; i++) {
            cr_assert_eq(sona_index_search(x, P + (size_t)(3 * n + i) * d, 1, &id, &sim, &found),
                         SONA_OK);
            cr_assert(found == 1 && id == i && sim > 0.9999f, "small move: id %u lost", i);
        }
    }
    cr_assert_eq(sona_index_size(x), n);
    free(P);
    sona_index_destroy(x);
}

/* Every half converts to f32 and back to itself (NaN stays NaN); a value halfway between two
 * neighbouring halves goes to the even one, anything off the middle to the nearer one. */
Test(index, half_conversion_round_trips_and_rounds_to_even)
{
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = sona_f16_to_f32((uint16_t)h);
        const uint16_t back = sona_f32_to_f16(f);
        if (isnan(f))
            cr_assert((back & 0x7c00) == 0x7c00 && (back & 0x3ff), "NaN %04x lost", h);
        else
            cr_assert_eq(back, h, "half %04x -> %a -> %04x", h, (double)f, back);
    }
    for (uint32_t h = 0; h < 0x7bff; h++) { /* positive finite, and its upper neighbour */
        const float lo = sona_f16_to_f32((uint16_t)h), hi = sona_f16_to_f32((uint16_t)(h + 1));
        const float mid = lo + (hi - lo) / 2; /* needs 12 significant bits: exact in f32 */
        const uint32_t even = (h & 1) ? h + 1 : h;
        cr_assert_eq(sona_f32_to_f16(mid), even, "tie above %04x", h);
        cr_assert_eq(sona_f32_to_f16(-mid), 0x8000 | even, "tie below -%04x", h);
        cr_assert_eq(sona_f32_to_f16(nextafterf(mid, 0.0f)), h);
        cr_assert_eq(sona_f32_to_f16(nextafterf(mid, INFINITY)), h + 1);
    }
    cr_assert_eq(sona_f32_to_f16(65519.0f), 0x7bff);
    cr_assert_eq(sona_f32_to_f16(65520.0f), 0x7c00); /* the tie past 65504 rounds to Inf */
    cr_assert_eq(sona_f32_to_f16(-INFINITY), 0xfc00);
    cr_assert_eq(sona_f32_to_f16(1e-8f), 0);
}

/* The f32 x half dot and widening kernels of the CPU variant in use (F16C on x86) against the
 * scalar ones and a double reference, odd lengths included (tails). */
Test(index, half_dot_kernel_matches_scalar)
{
    const uint64_t seed = test_seed();
    printf("[index] half dot seed %" PRIu64 " (%s)\n", seed, sona_cpu_backend()->name);
    sona_rng r;
    sona_rng_seed(&r, seed, 5);
    const sona_dot_f16_fn dot = sona_dot_f16_kernel();
    const uint32_t sizes[] = {1, 7, 16, 33, 100, 256, 259};
    float a[259];
    uint16_t b[259];
    for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
        const uint32_t n = sizes[c];
        double ref = 0, mag = 0;
        for (uint32_t i = 0; i < n; i++) {
            a[i] = sona_rng_normal(&r);
            b[i] = sona_f32_to_f16(sona_rng_normal(&r));
            ref += (double)a[i] * sona_f16_to_f32(b[i]);
            mag += fabs((double)a[i] * sona_f16_to_f32(b[i]));
        }
        const double tol = 1e-6 * mag + 1e-7;
        cr_assert_float_eq(sona_dot_f16_scalar(a, b, n), ref, tol, "scalar n=%u", n);
        cr_assert_float_eq(dot(a, b, n), ref, tol, "kernel n=%u", n);
        float w[260];
        w[n] = 42.0f; /* the widening kernel writes exactly n floats */
        sona_widen_f16_kernel()(b, w, n);
        for (uint32_t i = 0; i < n; i++)
            cr_assert_eq(w[i], sona_f16_to_f32(b[i]), "widen n=%u at %u", n, i);
        cr_assert_eq(w[n], 42.0f, "widen n=%u wrote past the end", n);
    }
}

static const char *storage_name(sona_storage s)
{
    return s == SONA_STORAGE_F32 ? "f32" : s == SONA_STORAGE_F16 ? "f16" : "q8";
}

static double cosine(const float *a, const float *b, uint32_t d)
{
    double ab = 0, aa = 0, bb = 0;
    for (uint32_t t = 0; t < d; t++) {
        ab += (double)a[t] * b[t];
        aa += (double)a[t] * a[t];
        bb += (double)b[t] * b[t];
    }
    return ab / sqrt(aa * bb);
}

/* How far a stored value x[t] of a vector x of dim d may be off, in `steps` storage steps: F32 a
 * few ulps (unit vector times norm; steps ignored), F16 ulps of the half it is stored as (the
 * vector scaled to a largest value in [2^14, 2^15)), Q8 power-of-two steps of its block (the
 * smallest power of two with the block's largest magnitude <= 127 of it). Rounding to nearest is
 * within half a step, stochastic rounding within one. */
static double store_tolerance(sona_storage s, const float *x, uint32_t d, uint32_t t, double steps)
{
    double nn = 0;
    for (uint32_t i = 0; i < d; i++)
        nn += (double)x[i] * x[i];
    const double norm = sqrt(nn);
    (void)norm;
    if (s == SONA_STORAGE_F32)
        return 4e-7 * fabs(x[t]) + 1e-30;
    if (s == SONA_STORAGE_F16) { /* 11 significant bits, the vector's largest value at 2^14..2^15 */
        double amax = 0;
        for (uint32_t i = 0; i < d; i++)
            amax = fmax(amax, fabs((double)x[i]));
        const double unit = exp2(floor(log2(amax)) + 1 - 15); /* a stored half of 1 */
        const double ulp = fabs(x[t]) >= unit * 0x1p-14 ? exp2(floor(log2(fabs(x[t]))) - 10) : unit * 0x1p-24;
        return steps * ulp * 1.0000001;
    }
    const uint32_t lo = t / 32 * 32, hi = lo + 32 < d ? lo + 32 : d;
    double amax = 0;
    for (uint32_t i = lo; i < hi; i++)
        amax = fmax(amax, fabs((double)x[i]));
    const double step = exp2(ceil(log2(amax / 127.0)));
    return steps * step * 1.0000001;
}

/* Every storage: recall, similarities that are cosines with the stored vectors, stored vectors
 * within the storage's rounding of those inserted (magnitude kept), removals with a rebuild and
 * a far update, at an odd dim (stride padding; a Q8 block partly padding). */
Test(index, each_storage_recall_vectors_removal_update, .timeout = 300)
{
    const uint64_t seed = test_seed();
    const uint32_t n = 3000, d = 99, nq = 100, k = 10;
    const sona_storage storages[] = {SONA_STORAGE_F32, SONA_STORAGE_F16, SONA_STORAGE_Q8};
    sona_rng r;
    sona_rng_seed(&r, seed, 7);
    float *P = clustered(&r, n + nq, d);
    for (size_t i = 0; i < (size_t)(n + nq) * d; i++)
        P[i] *= 3.0f; /* norms well away from 1: get_vector must restore them */
    const float *Q = P + (size_t)n * d;
    int32_t *eidx = malloc((size_t)nq * k * sizeof *eidx);
    float *esim = malloc((size_t)nq * k * sizeof *esim);
    sona_knn_exact_args a = {.m = nq, .n = n, .d = d, .k = k, .Q = Q, .P = P, .idx = eidx, .sim = esim};
    const sona_backend *cpu = sona_cpu_backend();
    cr_assert_eq(cpu->knn_exact(cpu->ctx, &a), SONA_OK);
    for (size_t si = 0; si < sizeof storages / sizeof storages[0]; si++) {
        const sona_storage sto = storages[si];
        printf("[index] %s storage n=%u d=%u seed %" PRIu64 "\n", storage_name(sto), n, d, seed);
        sona_index_config cfg;
        sona_index_config_default(&cfg, d);
        cfg.storage = sto;
        cfg.ef_construction = 64;
        cfg.seed = seed;
        sona_index *x = NULL;
        cr_assert_eq(sona_index_create(&cfg, &x), SONA_OK);
        for (uint32_t i = 0; i < n; i++)
            cr_assert_eq(sona_index_insert(x, i, P + (size_t)i * d), SONA_OK);
        float got[99];
        double worst_sim = 0;
        uint32_t hits = 0;
        for (uint32_t q = 0; q < nq; q++) {
            uint64_t ids[10];
            float sims[10];
            uint32_t found;
            const float *qv = Q + (size_t)q * d;
            cr_assert_eq(sona_index_search(x, qv, k, ids, sims, &found), SONA_OK);
            cr_assert_eq(found, k);
            for (uint32_t i = 0; i < k; i++) {
                cr_assert_eq(sona_index_get_vector(x, ids[i], got), SONA_OK);
                cr_assert_float_eq(sims[i], cosine(qv, got, d), 2e-6,
                                   "%s: similarity is not the cosine with the stored vector", storage_name(sto));
                worst_sim = fmax(worst_sim, fabs(sims[i] - cosine(qv, P + ids[i] * d, d)));
                if (i)
                    cr_assert_geq(sims[i - 1], sims[i], "not best first");
                for (uint32_t j = 0; j < k; j++)
                    hits += (int64_t)ids[i] == eidx[q * k + j];
            }
        }
        const double recall = (double)hits / (nq * k);
        printf("[index] %s recall@10 %.4f, similarities within %.2g of the inserted vectors'\n",
               storage_name(sto), recall, worst_sim);
        cr_assert_geq(recall, 0.95, "%s recall@10 %.4f < 0.95 (seed %" PRIu64 ")", storage_name(sto), recall, seed);
        for (uint32_t i = 0; i < n; i += 7) {
            const float *want = P + (size_t)i * d;
            cr_assert_eq(sona_index_get_vector(x, i, got), SONA_OK);
            for (uint32_t t = 0; t < d; t++)
                cr_assert_float_eq(got[t], want[t], store_tolerance(sto, want, d, t, 0.5),
                                   "%s: id %u value %u stored as %g for %g", storage_name(sto), i, t, got[t], want[t]);
        }
        /* Remove two thirds (a rebuild on the way: records move bit for bit), move id 1 far. */
        float before[99];
        cr_assert_eq(sona_index_get_vector(x, 4, before), SONA_OK);
        for (uint32_t i = 0; i < n; i++)
            if (i % 3 != 1)
                cr_assert_eq(sona_index_remove(x, i), SONA_OK);
        float want[99];
        for (uint32_t t = 0; t < d; t++)
            want[t] = -P[(size_t)1 * d + t];
        cr_assert_eq(sona_index_update(x, 1, want), SONA_OK);
        cr_assert_eq(sona_index_get_vector(x, 4, got), SONA_OK);
        cr_assert_eq(memcmp(got, before, sizeof got), 0, "%s: a rebuild changed a stored vector", storage_name(sto));
        for (uint32_t q = 0; q < n; q += 11) {
            uint64_t ids[10];
            uint32_t found;
            cr_assert_eq(sona_index_search(x, P + (size_t)q * d, k, ids, NULL, &found), SONA_OK);
            cr_assert_eq(found, k);
            for (uint32_t i = 0; i < found; i++)
                cr_assert_eq(ids[i] % 3, 1, "removed id %" PRIu64 " returned", ids[i]);
        }
        uint64_t id;
        float sim;
        uint32_t found;
        cr_assert_eq(sona_index_search(x, want, 1, &id, &sim, &found), SONA_OK);
        cr_assert_eq(id, 1);
        cr_assert_eq(sona_index_get_vector(x, 1, got), SONA_OK);
        for (uint32_t t = 0; t < d; t++)
            cr_assert_float_eq(got[t], want[t], store_tolerance(sto, want, d, t, 0.5));
        cr_assert_float_eq(sim, cosine(want, got, d), 2e-6);
        sona_index_destroy(x);
    }
    free(eidx);
    free(esim);
    free(P);
}

/* Q8 decodes exactly and re-encodes to the same values: a vector read back and inserted again
 * (a save and a load) is stored bit for bit as before. */
Test(index, q8_vectors_read_back_store_identically)
{
    const uint64_t seed = test_seed();
    const uint32_t n = 200, d = 45;
    printf("[index] q8 round trip seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 8);
    float *P = clustered(&r, n, d);
    sona_index_config cfg;
    sona_index_config_default(&cfg, d);
    cfg.storage = SONA_STORAGE_Q8;
    sona_index *a = NULL, *b = NULL;
    cr_assert_eq(sona_index_create(&cfg, &a), SONA_OK);
    cr_assert_eq(sona_index_create(&cfg, &b), SONA_OK);
    float v[45], w[45];
    for (uint32_t i = 0; i < n; i++) {
        cr_assert_eq(sona_index_insert(a, i, P + (size_t)i * d), SONA_OK);
        /* A few blends first: blended records keep their grid, read back they still round trip. */
        if (i % 3 == 0)
            cr_assert_eq(sona_index_blend(a, i, P + (size_t)((i + 1) % n) * d, 7.0, 1.0), SONA_OK);
        cr_assert_eq(sona_index_get_vector(a, i, v), SONA_OK);
        cr_assert_eq(sona_index_insert(b, i, v), SONA_OK);
        cr_assert_eq(sona_index_get_vector(b, i, w), SONA_OK);
        cr_assert_eq(memcmp(v, w, sizeof v), 0, "vector %u changed on its way through get and insert", i);
    }
    for (uint32_t i = 0; i < n; i += 5) {
        uint64_t ia[5], ib[5];
        float sa[5], sb[5];
        uint32_t fa, fb;
        cr_assert_eq(sona_index_search(a, P + (size_t)i * d, 5, ia, sa, &fa), SONA_OK);
        cr_assert_eq(sona_index_search(b, P + (size_t)i * d, 5, ib, sb, &fb), SONA_OK);
        for (uint32_t j = 0; j < fa && j < fb; j++)
            if (ia[j] == ib[j])
                cr_assert_eq(sa[j], sb[j], "same stored vector, different similarity");
    }
    free(P);
    sona_index_destroy(a);
    sona_index_destroy(b);
}

/* A vector absorbing many small clusters (a large pattern merging small ones) follows the exact
 * weighted mean. Re-storing the rounded mean after each merge would lose every move below half
 * a storage step, and here each one is about 1/20 of a Q8 step: the comparison index, updated
 * that way, stays stuck, which shows the test can tell. Every storage, odd dim. */
Test(index, blend_tracks_the_exact_weighted_mean, .timeout = 120)
{
    const uint64_t seed = test_seed();
    const uint32_t d = 37, merges = 3000;
    const sona_storage storages[] = {SONA_STORAGE_F32, SONA_STORAGE_F16, SONA_STORAGE_Q8};
    for (size_t si = 0; si < sizeof storages / sizeof storages[0]; si++) {
        const sona_storage sto = storages[si];
        printf("[index] %s blend seed %" PRIu64 "\n", storage_name(sto), seed);
        sona_rng r;
        sona_rng_seed(&r, seed, 9);
        float start[37], target[37], c[37], got[37], naive_v[37];
        double exact[37], wsum = 1000.0;
        for (uint32_t t = 0; t < d; t++) {
            start[t] = sona_rng_normal(&r);
            target[t] = start[t] + 0.35f * sona_rng_normal(&r); /* cosine about 0.94 */
            exact[t] = start[t];
        }
        sona_index_config cfg;
        sona_index_config_default(&cfg, d);
        cfg.storage = sto;
        cfg.seed = seed;
        sona_index *x = NULL, *naive = NULL;
        cr_assert_eq(sona_index_create(&cfg, &x), SONA_OK);
        cr_assert_eq(sona_index_create(&cfg, &naive), SONA_OK);
        cr_assert_eq(sona_index_insert(x, 5, start), SONA_OK);
        cr_assert_eq(sona_index_insert(naive, 5, start), SONA_OK);
        for (uint32_t m = 0; m < merges; m++) {
            const double w = 1 + sona_rng_below(&r, 3);
            for (uint32_t t = 0; t < d; t++) {
                c[t] = target[t] + 0.05f * sona_rng_normal(&r);
                exact[t] = (wsum * exact[t] + w * c[t]) / (wsum + w);
            }
            cr_assert_eq(sona_index_blend(x, 5, c, wsum, w), SONA_OK);
            cr_assert_eq(sona_index_get_vector(naive, 5, naive_v), SONA_OK);
            for (uint32_t t = 0; t < d; t++)
                naive_v[t] = (float)((wsum * naive_v[t] + w * c[t]) / (wsum + w));
            cr_assert_eq(sona_index_update(naive, 5, naive_v), SONA_OK);
            wsum += w;
        }
        float exact_f[37];
        for (uint32_t t = 0; t < d; t++)
            exact_f[t] = (float)exact[t];
        cr_assert_eq(sona_index_get_vector(x, 5, got), SONA_OK);
        cr_assert_eq(sona_index_get_vector(naive, 5, naive_v), SONA_OK);
        double err = 0, naive_err = 0, moved = 0, worst = 0, amax = 0;
        for (uint32_t t = 0; t < d; t++)
            amax = fmax(amax, fabs(exact[t]));
        const double f16_top_ulp = exp2(floor(log2(amax)) - 10);
        for (uint32_t t = 0; t < d; t++) {
            err += (got[t] - exact[t]) * (got[t] - exact[t]);
            naive_err += (naive_v[t] - exact[t]) * (naive_v[t] - exact[t]);
            moved += (exact[t] - start[t]) * (exact[t] - start[t]);
            /* In steps: Q8's of the value's block; F16's ulp of the vector's largest value. */
            if (sto == SONA_STORAGE_Q8)
                worst = fmax(worst, fabs(got[t] - exact[t]) / store_tolerance(sto, exact_f, d, t, 1.0));
            else if (sto == SONA_STORAGE_F16)
                worst = fmax(worst, fabs(got[t] - exact[t]) / f16_top_ulp);
        }
        printf("[index] %s after %u merges: error %.3g, re-stored mean %.3g, the mean moved %.3g; "
               "worst value %.2f steps off, cosine to the exact mean 1 - %.2g\n",
               storage_name(sto), merges, sqrt(err), sqrt(naive_err), sqrt(moved), worst,
               1 - cosine(got, exact_f, d));
        /* The bound. Stochastic rounding is unbiased, and each value's error has a standard
         * deviation of about sqrt(spread * step / 2), spread the distance of the merged clusters
         * from the mean (per value): here about 12 Q8 steps, so 2.4 steps (over 25 seeds at
         * worst 9.2), and at most about 150 F16 steps of the largest value (at worst 18 over 40
         * seeds). F32 rounds to nearest; its error is f32 rounding summed over the merges. */
        const double max_steps = sto == SONA_STORAGE_Q8 ? 16.0 : 64.0;
        const double max_cos_gap = sto == SONA_STORAGE_Q8 ? 3e-3 : sto == SONA_STORAGE_F16 ? 1e-4 : 1e-9;
        cr_assert_leq(worst, max_steps, "%s: a value is %.2f steps from the exact mean", storage_name(sto), worst);
        cr_assert_leq(1 - cosine(got, exact_f, d), max_cos_gap, "%s: direction off the exact mean", storage_name(sto));
        cr_assert_lt(sqrt(err), (sto == SONA_STORAGE_F32 ? 1e-4 : sto == SONA_STORAGE_F16 ? 0.05 : 0.35) * sqrt(moved),
                     "%s: blend did not follow the mean", storage_name(sto));
        if (sto == SONA_STORAGE_Q8)
            cr_assert_gt(sqrt(naive_err), 0.5 * sqrt(moved), "the re-stored comparison should be stuck");
        sona_index_destroy(x);
        sona_index_destroy(naive);
    }
}

/* Visited marks are 16-bit generation stamps, cleared when the generation wraps: searches keep
 * finding the exact best match past 65,535 of them. */
Test(index, searches_stay_exact_past_the_visited_stamp_wrap)
{
    const uint64_t seed = test_seed();
    const uint32_t n = 64, d = 9;
    printf("[index] stamp wrap seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 10);
    float *P = clustered(&r, n, d);
    sona_index *x = make(d, 32, seed);
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(sona_index_insert(x, i, P + (size_t)i * d), SONA_OK);
    for (uint32_t s = 0; s < 70000; s++) {
        const uint32_t q = s % n;
        uint64_t id;
        float sim;
        uint32_t found;
        cr_assert_eq(sona_index_search_ef(x, P + (size_t)q * d, 1, n, 0, &id, &sim, &found), SONA_OK);
        if (s % 997 == 0 || (s > 65530 && s < 65540))
            cr_assert(found == 1 && sim > 0.99999f, "search %u: best match of %u lost", s, q);
    }
    free(P);
    sona_index_destroy(x);
}
