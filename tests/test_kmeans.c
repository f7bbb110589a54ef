/* SPDX-License-Identifier: MIT */
/* k-means for the ReasoningBank: recovers well-separated clusters, is deterministic for a seed,
 * reaches an inertia close to the best of many restarts, re-seeds empty clusters. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "core/patterns/kmeans.h"
#include "dispatch/cost.h"
#include "dispatch/dispatch.h"
#include "support/device_skip.h"
#include "support/fill.h"

/* n points around k centres: centres N(0, spread^2), points centre + N(0, noise^2). */
static float *gaussian_blobs(uint64_t seed, uint32_t n, uint32_t d, uint32_t k, float spread,
                             float noise, int32_t *label)
{
    sona_rng r;
    sona_rng_seed(&r, seed, 1);
    float *centres = malloc((size_t)k * d * sizeof *centres);
    float *X = malloc((size_t)n * d * sizeof *X);
    for (size_t i = 0; i < (size_t)k * d; i++)
        centres[i] = spread * sona_rng_normal(&r);
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t c = i % k; /* every cluster gets members */
        label[i] = (int32_t)c;
        for (uint32_t t = 0; t < d; t++)
            X[(size_t)i * d + t] = centres[(size_t)c * d + t] + noise * sona_rng_normal(&r);
    }
    free(centres);
    return X;
}

typedef struct run {
    float *C;
    int32_t *assign;
    uint32_t *counts;
    sona_kmeans_result res;
} run;

static run kmeans_run(const float *X, uint32_t n, uint32_t d, uint32_t k, uint64_t seed)
{
    run out = {malloc((size_t)k * d * sizeof(float)), malloc(n * sizeof(int32_t)),
               malloc(k * sizeof(uint32_t)), {0}};
    const sona_kmeans_params p = {.k = k, .max_iterations = 100, .tolerance = 1e-5f, .seed = seed};
    cr_assert_eq(sona_kmeans(sona_cpu_backend(), X, n, d, &p, out.C, out.assign, out.counts,
                             &out.res),
                 SONA_OK);
    return out;
}

static void run_free(run *r)
{
    free(r->C);
    free(r->assign);
    free(r->counts);
}

/* A bijection: all members of a true cluster share one found cluster, and no two true
 * clusters share one. */
static void assert_recovered(const int32_t *label, const int32_t *assign, uint32_t n, uint32_t k,
                             uint64_t seed)
{
    int32_t map[16];
    cr_assert_leq(k, 16);
    for (uint32_t c = 0; c < k; c++)
        map[c] = -1;
    for (uint32_t i = 0; i < n; i++) {
        const int32_t c = label[i];
        if (map[c] < 0)
            map[c] = assign[i];
        cr_assert_eq(assign[i], map[c], "point %u of true cluster %d split (seed %" PRIu64 ")",
                     i, c, seed);
    }
    for (uint32_t a = 0; a < k; a++)
        for (uint32_t b = a + 1; b < k; b++)
            cr_assert_neq(map[a], map[b], "true clusters %u and %u merged", a, b);
}

Test(kmeans, recovers_well_separated_clusters)
{
    const uint64_t seed = test_seed();
    const uint32_t n = 301, d = 17, k = 7;
    printf("[kmeans] recovery n=%u d=%u k=%u seed %" PRIu64 "\n", n, d, k, seed);
    int32_t *label = malloc(n * sizeof *label);
    float *X = gaussian_blobs(seed, n, d, k, 100.0f, 0.5f, label);
    run r = kmeans_run(X, n, d, k, seed);
    assert_recovered(label, r.assign, n, k, seed);
    uint32_t total = 0;
    for (uint32_t j = 0; j < k; j++)
        total += r.counts[j];
    cr_assert_eq(total, n);
    cr_assert(r.res.converged);
    run_free(&r);
    free(X);
    free(label);
}

Test(kmeans, recovers_clusters_far_from_the_origin)
{
    /* The seeding's |x|^2 + |c|^2 - 2 x.c distances would drown in rounding at this offset
     * without centring; more rows than one seeding block, the last block partial. */
    const uint64_t seed = test_seed();
    const uint32_t n = 601, d = 16, k = 6;
    printf("[kmeans] offset recovery n=%u d=%u k=%u seed %" PRIu64 "\n", n, d, k, seed);
    int32_t *label = malloc(n * sizeof *label);
    float *X = gaussian_blobs(seed, n, d, k, 20.0f, 0.5f, label);
    for (size_t i = 0; i < (size_t)n * d; i++)
        X[i] += 100000.0f;
    run r = kmeans_run(X, n, d, k, seed);
    assert_recovered(label, r.assign, n, k, seed);
    for (uint32_t i = 0; i < n; i++) /* centroids come back in X's frame */
        cr_assert_gt(r.C[(size_t)r.assign[i] * d], 90000.0f);
    run_free(&r);
    free(X);
    free(label);
}

Test(kmeans, same_seed_same_result)
{
    const uint64_t seed = test_seed();
    const uint32_t n = 203, d = 13, k = 9;
    printf("[kmeans] determinism seed %" PRIu64 "\n", seed);
    int32_t *label = malloc(n * sizeof *label);
    float *X = gaussian_blobs(seed, n, d, 5, 2.0f, 1.0f, label);
    run a = kmeans_run(X, n, d, k, seed + 1), b = kmeans_run(X, n, d, k, seed + 1);
    cr_assert_eq(memcmp(a.C, b.C, (size_t)k * d * sizeof(float)), 0);
    cr_assert_eq(memcmp(a.assign, b.assign, n * sizeof(int32_t)), 0);
    cr_assert_eq(a.res.iterations, b.res.iterations);
    run_free(&a);
    run_free(&b);
    free(X);
    free(label);
}

Test(kmeans, inertia_close_to_best_of_restarts)
{
    const uint64_t seed = test_seed();
    const uint32_t n = 500, d = 16, k = 10;
    printf("[kmeans] inertia vs restarts seed %" PRIu64 "\n", seed);
    int32_t *label = malloc(n * sizeof *label);
    float *X = gaussian_blobs(seed, n, d, k, 8.0f, 1.0f, label);
    run first = kmeans_run(X, n, d, k, seed);
    double best = first.res.inertia;
    for (uint64_t s = 1; s <= 10; s++) {
        run other = kmeans_run(X, n, d, k, seed + 1000 * s);
        if (other.res.inertia < best)
            best = other.res.inertia;
        run_free(&other);
    }
    cr_assert_leq(first.res.inertia, 1.1 * best, "inertia %g vs best of 10 restarts %g",
                  first.res.inertia, best);
    run_free(&first);
    free(X);
    free(label);
}

Test(kmeans, reseeds_empty_clusters)
{
    /* 6 distinct points, duplicated, into 6 clusters: seeding may pick duplicates and leave a
     * cluster empty; re-seeding must end with every distinct point its own cluster. */
    const uint32_t n = 24, d = 3, k = 6;
    float X[24 * 3];
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t t = 0; t < d; t++)
            X[i * d + t] = (float)((i % 6) * 10 + (t == 0));
    for (uint64_t seed = 1; seed <= 20; seed++) {
        run r = kmeans_run(X, n, d, k, seed);
        for (uint32_t j = 0; j < k; j++)
            cr_assert_eq(r.counts[j], 4, "seed %" PRIu64 " cluster %u has %u", seed, j, r.counts[j]);
        cr_assert_lt(r.res.inertia, 1e-6);
        run_free(&r);
    }
}

/* sona_kmeans_reuse's scratch holds the last call's data (poisoned here with NaN bytes); every
 * result must still equal a fresh call's, through growing and shrinking sizes (partial seeding
 * blocks of 232, 44 and 88 rows). */
Test(kmeans, reused_scratch_gives_the_same_result)
{
    const uint64_t seed = test_seed();
    const uint32_t d = 12, k = 7, most = 1000, sizes[] = {1000, 300, 600, 40, 1000};
    printf("[kmeans] reused scratch seed %" PRIu64 "\n", seed);
    int32_t *label = malloc(most * sizeof *label);
    float *X = gaussian_blobs(seed, most, d, k, 4.0f, 1.0f, label);
    sona_scratch work = {0};
    for (uint32_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        const uint32_t n = sizes[i];
        run fresh = kmeans_run(X, n, d, k, seed + i);
        if (work.mem)
            memset(work.mem, 0xff, work.cap);
        run kept = {malloc((size_t)k * d * sizeof(float)), malloc(n * sizeof(int32_t)),
                    malloc(k * sizeof(uint32_t)), {0}};
        const sona_kmeans_params p = {.k = k, .max_iterations = 100, .tolerance = 1e-5f, .seed = seed + i};
        cr_assert_eq(sona_kmeans_reuse(sona_cpu_backend(), X, n, d, &p, kept.C, kept.assign,
                                       kept.counts, &kept.res, &work),
                     SONA_OK);
        cr_assert_eq(memcmp(fresh.C, kept.C, (size_t)k * d * sizeof(float)), 0, "n %u", n);
        cr_assert_eq(memcmp(fresh.assign, kept.assign, n * sizeof(int32_t)), 0, "n %u", n);
        cr_assert_eq(memcmp(fresh.counts, kept.counts, k * sizeof(uint32_t)), 0, "n %u", n);
        cr_assert_eq(fresh.res.iterations, kept.res.iterations, "n %u", n);
        cr_assert_eq(fresh.res.inertia, kept.res.inertia, "n %u", n);
        run_free(&fresh);
        run_free(&kept);
    }
    sona_scratch_free(&work);
    free(X);
    free(label);
}

Test(kmeans, refuses_bad_arguments)
{
    float X[6] = {0}, C[6];
    int32_t assign[3];
    uint32_t counts[3];
    sona_kmeans_result res;
    sona_kmeans_params p = {.k = 4, .max_iterations = 10, .tolerance = 0, .seed = 1};
    cr_assert_eq(sona_kmeans(sona_cpu_backend(), X, 3, 2, &p, C, assign, counts, &res), SONA_E_INVALID);
    p.k = 2;
    cr_assert_eq(sona_kmeans(sona_cpu_backend(), NULL, 3, 2, &p, C, assign, counts, &res), SONA_E_NULL);
    cr_assert_eq(sona_kmeans(sona_cpu_backend(), X, 0, 2, &p, C, assign, counts, &res), SONA_E_INVALID);
}

/* On the accelerator (a CUDA device, or OpenCL with SONA_OPENCL_DEVICE=any: PoCL in CI), the
 * same clustering as on the CPU: X uploaded once, the seeding's products, the assignments and
 * the sums there, the host keeping the sampling and the division. Well-separated blobs at odd
 * sizes: the same clusters found, centroids and inertia equal to float rounding. */
Test(kmeans, runs_on_the_device_as_on_the_cpu, .timeout = 300)
{
    const sona_backend *dev = device_or_skip("kmeans: device");
    const uint64_t seed = test_seed();
    const uint32_t n = 1201, d = 33, k = 9;
    printf("[kmeans] device %s (%s): n=%u d=%u k=%u seed %" PRIu64 "\n", dev->name, dev->device,
           n, d, k, seed);
    int32_t *label = malloc(n * sizeof *label);
    float *X = gaussian_blobs(seed, n, d, k, 100.0f, 0.5f, label);
    run cpu = kmeans_run(X, n, d, k, seed);
    run gpu = {malloc((size_t)k * d * sizeof(float)), malloc(n * sizeof(int32_t)),
               malloc(k * sizeof(uint32_t)), {0}};
    const sona_kmeans_params p = {.k = k, .max_iterations = 100, .tolerance = 1e-5f, .seed = seed};
    const sona_backend_kind kind = sona_backend_kind_of(dev);
    const uint64_t gemms = sona_dispatch_calls(SONA_OP_GEMM, kind);
    const uint64_t sums = sona_dispatch_calls(SONA_OP_CLUSTER_SUMS, kind);
    cr_assert_eq(sona_kmeans(dev, X, n, d, &p, gpu.C, gpu.assign, gpu.counts, &gpu.res), SONA_OK);
    cr_assert_geq(sona_dispatch_calls(SONA_OP_GEMM, kind), gemms + k - 1, "the seeding ran there");
    cr_assert_gt(sona_dispatch_calls(SONA_OP_CLUSTER_SUMS, kind), sums, "Lloyd ran there");
    assert_recovered(label, gpu.assign, n, k, seed);
    uint32_t total = 0;
    for (uint32_t j = 0; j < k; j++)
        total += gpu.counts[j];
    cr_assert_eq(total, n);
    /* The same clusters: each CPU cluster's centroid is the device's of the same members. */
    double worst = 0.0;
    for (uint32_t i = 0; i < n; i++) {
        const float *a = cpu.C + (size_t)cpu.assign[i] * d, *b = gpu.C + (size_t)gpu.assign[i] * d;
        for (uint32_t t = 0; t < d; t++)
            worst = fmax(worst, fabs((double)a[t] - b[t]));
    }
    printf("[kmeans] device: inertia %.9g (CPU %.9g), %u iterations (CPU %u), largest centroid "
           "difference %.3g\n", gpu.res.inertia, cpu.res.inertia, gpu.res.iterations,
           cpu.res.iterations, worst);
    cr_assert(worst <= 1e-3, "centroids differ by %g", worst);
    cr_assert(fabs(gpu.res.inertia - cpu.res.inertia) <= 1e-4 * cpu.res.inertia);
    run_free(&cpu);
    run_free(&gpu);
    free(X);
    free(label);
}
