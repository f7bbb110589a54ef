/* SPDX-License-Identifier: MIT */
/* sona_gpu_bench: the CUDA backend's benchmark cases, through the op table as libsona uses it.
 *
 *   sona_gpu_bench [--out DIR] [--quick]
 *
 * Time per call is wall time around R back-to-back calls closed by one backend sync, divided by
 * R (R chosen so a sample lasts about 20 ms); median and p99 are over the samples. The copy
 * baseline is cudaMemcpy device to device, timed the same way, and counts bytes read plus bytes
 * written. Prints a table last and writes DIR/gpu_bench.json and DIR/gpu_bench.txt. */
#define _GNU_SOURCE /* dladdr */
#include "common/rng.h"
#include "dispatch/dispatch.h"
#include "support/fill.h"

#include <cuda_runtime.h>
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


#define MAX_ROWS 64
#define MAX_SAMPLES 200

typedef struct result {
    char name[64];
    double median_us, p99_us;
    double gbps;       /* effective bandwidth (0: not reported) */
    double gflops;     /* (0: not reported) */
    double target_us;  /* (0: none) */
    char note[96];
    int failed;
} result;

static result rows[MAX_ROWS];
static int nrows;
static const sona_backend *cu;

/* The CUDA module's kernel switch (sona_cuda_force_kernels in src/cuda/cuda_backend.cu): the
 * module reads SONA_CUDA_LORA / SONA_CUDA_KNN once, when it opens, so rows that force a kernel
 * within this one process set it through the module itself. NULL when the module is not loaded
 * or lacks it: those rows are skipped, never run with the default kernel under a forced name. */
typedef void (*force_kernels_fn)(const char *lora, int knn_fp32);
static force_kernels_fn force_kernels(void)
{
    /* The module's file, from one of its op entries (it has no soname to look it up by). */
    Dl_info info;
    void *module = cu && dladdr((void *)(uintptr_t)cu->lora_apply, &info) && info.dli_fname
                       ? dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD)
                       : NULL;
    force_kernels_fn f = module ? (force_kernels_fn)(uintptr_t)dlsym(module, "sona_cuda_force_kernels") : NULL;
    if (module)
        dlclose(module); /* NOLOAD took a reference: give it back (libsona keeps its own) */
    if (!f)
        fprintf(stderr, "[gpu-bench] the CUDA module's kernel switch is missing: forced-kernel rows skipped\n");
    return f;
}

static int quick;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef sona_status (*op_fn)(void *arg);

static result *add_row(const char *name)
{
    if (nrows >= MAX_ROWS) {
        fprintf(stderr, "too many rows\n");
        exit(1);
    }
    result *r = &rows[nrows++];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    return r;
}

/* Times fn: warm-up, then samples of R calls each. Fills median/p99 in microseconds. */
static int measure(result *r, op_fn fn, void *arg, sona_status (*sync)(void *), int max_samples)
{
    sona_status st = SONA_OK;
    for (int i = 0; i < 2 && st == SONA_OK; i++)
        st = fn(arg);
    if (st == SONA_OK)
        st = sync(arg);
    const double t0 = now_s();
    if (st == SONA_OK)
        st = fn(arg);
    if (st == SONA_OK)
        st = sync(arg);
    const double one = now_s() - t0;
    if (st != SONA_OK) {
        r->failed = 1;
        snprintf(r->note, sizeof r->note, "FAILED: %s: %.60s", sona_status_str(st),
                 cu->last_error ? cu->last_error(cu->ctx) : "");
        return -1;
    }
    int reps = one > 0 ? (int)(0.02 / one) : 1000;
    if (reps < 1)
        reps = 1;
    if (reps > 2000)
        reps = 2000;
    int samples = one > 1.0 ? 3 : one * reps > 0.05 ? 7 : max_samples;
    if (quick && samples > 10)
        samples = 10;
    if (samples > MAX_SAMPLES)
        samples = MAX_SAMPLES;
    double t[MAX_SAMPLES];
    for (int s = 0; s < samples; s++) {
        const double a = now_s();
        for (int i = 0; i < reps && st == SONA_OK; i++)
            st = fn(arg);
        if (st == SONA_OK)
            st = sync(arg);
        t[s] = (now_s() - a) / reps * 1e6;
        if (st != SONA_OK) {
            r->failed = 1;
            snprintf(r->note, sizeof r->note, "FAILED: %s", sona_status_str(st));
            return -1;
        }
    }
    qsort(t, (size_t)samples, sizeof t[0], cmp_double);
    r->median_us = t[samples / 2];
    int p = (int)ceil(0.99 * samples) - 1;
    r->p99_us = t[p < 0 ? 0 : p];
    return 0;
}

static sona_status backend_sync(void *arg)
{
    (void)arg;
    return cu->sync(cu->ctx);
}

/* ---- device buffers -------------------------------------------------------------------- */

static void *dev_alloc(size_t bytes)
{
    void *p = NULL;
    if (cu->alloc(cu->ctx, bytes, &p) != SONA_OK) {
        fprintf(stderr, "alloc of %zu bytes failed: %s\n", bytes, cu->last_error(cu->ctx));
        exit(1);
    }
    return p;
}

static void upload(void *buf, size_t offset, const void *src, size_t bytes)
{
    if (cu->upload(cu->ctx, buf, offset, src, bytes) != SONA_OK) {
        fprintf(stderr, "upload failed: %s\n", cu->last_error(cu->ctx));
        exit(1);
    }
}

/* A device buffer of n floats uniform in [lo, hi): a random block repeated (timing does not
 * depend on the values, and this keeps host generation short for 1 GB inputs). */
static float *dev_random(sona_rng *rng, size_t n, float lo, float hi)
{
    const size_t block = n < ((size_t)1 << 22) ? n : ((size_t)1 << 22) + 13; /* odd period */
    float *h = new_uniform(rng, block, lo, hi);
    float *d = dev_alloc(n * sizeof(float));
    for (size_t at = 0; at < n; at += block)
        upload(d, at * sizeof(float), h, (n - at < block ? n - at : block) * sizeof(float));
    free(h);
    return d;
}

static int32_t *dev_ids(uint32_t n, uint32_t adapters)
{
    int32_t *h = malloc(n * sizeof *h);
    for (uint32_t i = 0; i < n; i++)
        h[i] = (int32_t)(i % adapters);
    int32_t *d = dev_alloc(n * sizeof *h);
    upload(d, 0, h, n * sizeof *h);
    free(h);
    return d;
}

/* ---- cases ----------------------------------------------------------------------------- */

static double copy_gbps; /* measured device-to-device copy bandwidth (read + write) */

static void bench_copy(void)
{
    result *r = add_row("d2d copy 256 MiB (cudaMemcpy)");
    const size_t bytes = (size_t)256 << 20;
    void *a = NULL, *b = NULL;
    cudaEvent_t e0, e1;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess ||
        cudaMemset(a, 1, bytes) != cudaSuccess || cudaEventCreate(&e0) != cudaSuccess ||
        cudaEventCreate(&e1) != cudaSuccess) {
        r->failed = 1;
        snprintf(r->note, sizeof r->note, "FAILED: %s", cudaGetErrorString(cudaGetLastError()));
        return;
    }
    double t[20];
    const int samples = 20, reps = 10;
    for (int s = -2; s < samples; s++) {
        cudaEventRecord(e0, 0);
        for (int i = 0; i < reps; i++)
            cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        if (s >= 0)
            t[s] = ms * 1e3 / reps;
    }
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        r->failed = 1;
        snprintf(r->note, sizeof r->note, "FAILED: %s", cudaGetErrorString(e));
    } else {
        qsort(t, samples, sizeof t[0], cmp_double);
        r->median_us = t[samples / 2];
        r->p99_us = t[samples - 1];
        r->gbps = 2.0 * (double)bytes / (r->median_us * 1e-6) / 1e9;
        copy_gbps = r->gbps;
        snprintf(r->note, sizeof r->note, "bytes read + written (device events)");
    }
    cudaFree(a);
    cudaFree(b);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
}

static sona_status run_lora_apply(void *arg)
{
    return cu->lora_apply(cu->ctx, (const sona_lora_apply_args *)arg);
}

/* One lora_apply case: n rows, hidden H, rank r, adapters, ids i % adapters. */
static void bench_lora(sona_rng *rng, const char *label, uint32_t n, uint32_t H, uint32_t r,
                       uint32_t adapters, double target_pct)
{
    char name[64];
    snprintf(name, sizeof name, "%s n=%u h=%u r=%u a=%u", label, n, H, r, adapters);
    result *row = add_row(name);
    const size_t wn = (size_t)adapters * r * H;
    float *A = dev_random(rng, wn, -0.05f, 0.05f), *Bt = dev_random(rng, wn, -0.05f, 0.05f);
    float *scale = dev_random(rng, adapters, 0.5f, 1.0f);
    float *x = dev_random(rng, (size_t)n * H, -1, 1), *y = dev_alloc((size_t)n * H * sizeof(float));
    int32_t *ids = dev_ids(n, adapters);
    sona_lora_apply_args a = {.w = {.hidden = H, .rank = r, .num_adapters = adapters, .A = A, .Bt = Bt,
                                    .scale = scale},
                              .n = n, .ids = ids, .x = x, .y = y};
    if (measure(row, run_lora_apply, &a, backend_sync, 100) == 0) {
        const uint32_t touched = n < adapters ? n : adapters;
        const double bytes = 2.0 * n * H * 4.0 + 2.0 * touched * (double)r * H * 4.0;
        row->gbps = bytes / (row->median_us * 1e-6) / 1e9;
        row->gflops = 4.0 * n * (double)r * H / (row->median_us * 1e-6) / 1e9;
        if (target_pct > 0 && copy_gbps > 0) {
            const double pct = 100.0 * row->gbps / copy_gbps;
            snprintf(row->note, sizeof row->note, "%.0f%% of d2d copy (target >= %.0f%%): %s", pct,
                     target_pct, pct >= target_pct ? "MET" : "MISSED");
        } else {
            snprintf(row->note, sizeof row->note, "bytes = x + y + adapters touched");
        }
    }
    cu->free(cu->ctx, A);
    cu->free(cu->ctx, Bt);
    cu->free(cu->ctx, scale);
    cu->free(cu->ctx, x);
    cu->free(cu->ctx, y);
    cu->free(cu->ctx, ids);
}

typedef struct lloyd_arg {
    sona_sqdist_argmin_args sq;
    sona_cluster_sums_args cs;
} lloyd_arg;

static sona_status run_lloyd(void *arg)
{
    const lloyd_arg *l = arg;
    sona_status st = cu->sqdist_argmin(cu->ctx, &l->sq);
    return st == SONA_OK ? cu->cluster_sums(cu->ctx, &l->cs) : st;
}

static sona_status run_sqdist(void *arg)
{
    return cu->sqdist_argmin(cu->ctx, (const sona_sqdist_argmin_args *)arg);
}

static sona_status run_knn(void *arg)
{
    return cu->knn_exact(cu->ctx, (const sona_knn_exact_args *)arg);
}

static void set_target_note(result *r, double target_us)
{
    r->target_us = target_us;
    if (!r->failed && target_us > 0)
        snprintf(r->note, sizeof r->note, "target <= %.0f ms: %s", target_us / 1e3,
                 r->median_us <= target_us ? "MET" : "MISSED");
}

/* Lloyd, sqdist_argmin and knn cases share one 1M x 256 data set on the device. */
static void bench_clusters_and_search(sona_rng *rng)
{
    const uint32_t N = 1000000, d = 256, K = 1000;
    float *X = dev_random(rng, (size_t)N * d, -1, 1);
    float *C = dev_random(rng, (size_t)K * d, -1, 1);
    int32_t *idx = dev_alloc((size_t)N * sizeof(int32_t));
    float *dist = dev_alloc((size_t)N * sizeof(float));
    float *sums = dev_alloc((size_t)K * d * sizeof(float));
    uint32_t *counts = dev_alloc((size_t)K * sizeof(uint32_t));

    lloyd_arg l = {.sq = {.n = N, .k = K, .d = d, .X = X, .C = C, .idx = idx, .dist = dist},
                   .cs = {.n = N, .k = K, .d = d, .X = X, .idx = idx, .sums = sums, .counts = counts}};
    result *r = add_row("kmeans lloyd iter 1M x 256, k=1000");
    if (measure(r, run_lloyd, &l, backend_sync, 15) == 0) {
        r->gflops = 2.0 * N * (double)K * d / (r->median_us * 1e-6) / 1e9;
        set_target_note(r, 20000);
    }
    r = add_row("  of which sqdist_argmin 1M x 1000");
    if (measure(r, run_sqdist, &l.sq, backend_sync, 15) == 0)
        r->gflops = 2.0 * N * (double)K * d / (r->median_us * 1e-6) / 1e9;

    sona_sqdist_argmin_args sq = {.n = 100000, .k = K, .d = d, .X = X, .C = C, .idx = idx, .dist = dist};
    r = add_row("sqdist_argmin 100k x 256 vs 1000");
    if (measure(r, run_sqdist, &sq, backend_sync, 30) == 0)
        r->gflops = 2.0 * sq.n * (double)K * d / (r->median_us * 1e-6) / 1e9;

    const uint32_t kk = 10;
    int32_t *kidx = dev_alloc((size_t)10000 * kk * sizeof(int32_t));
    float *ksim = dev_alloc((size_t)10000 * kk * sizeof(float));
    float *Q = dev_random(rng, (size_t)10000 * d, -1, 1);
    sona_knn_exact_args kn = {.m = 1000, .n = 100000, .d = d, .k = kk, .Q = Q, .P = X, .idx = kidx, .sim = ksim};
    r = add_row("knn_exact 1k x 100k x 256, k=10");
    if (measure(r, run_knn, &kn, backend_sync, 20) == 0)
        r->gflops = 2.0 * kn.m * (double)kn.n * d / (r->median_us * 1e-6) / 1e9;
    if (!quick) {
        kn.m = 10000;
        kn.n = N;
        r = add_row("knn_exact 10k x 1M x 256, k=10");
        if (measure(r, run_knn, &kn, backend_sync, 5) == 0) {
            r->gflops = 2.0 * kn.m * (double)kn.n * d / (r->median_us * 1e-6) / 1e9;
            set_target_note(r, 100000);
        }
        /* The plain FP32 path, for comparison with the TF32 candidates + exact re-rank. */
        const force_kernels_fn force = force_kernels();
        if (force) {
            force(NULL, 1);
            r = add_row("knn_exact 10k x 1M x 256, k=10 [fp32]");
            if (measure(r, run_knn, &kn, backend_sync, 3) == 0)
                r->gflops = 2.0 * kn.m * (double)kn.n * d / (r->median_us * 1e-6) / 1e9;
            force(NULL, 0);
        }
    }
    void *bufs[] = {X, C, idx, dist, sums, counts, kidx, ksim, Q};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        cu->free(cu->ctx, bufs[i]);
}

/* ---- output ---------------------------------------------------------------------------- */

static void print_table(FILE *f)
{
    fprintf(f, "%-44s %12s %12s %10s %10s  %s\n", "case (cuda)", "median us", "p99 us", "GB/s",
            "GFLOP/s", "note");
    for (int i = 0; i < nrows; i++) {
        const result *r = &rows[i];
        if (r->failed) {
            fprintf(f, "%-44s %12s %12s %10s %10s  %s\n", r->name, "-", "-", "-", "-", r->note);
            continue;
        }
        fprintf(f, "%-44s %12.2f %12.2f ", r->name, r->median_us, r->p99_us);
        if (r->gbps > 0)
            fprintf(f, "%10.1f ", r->gbps);
        else
            fprintf(f, "%10s ", "");
        if (r->gflops > 0)
            fprintf(f, "%10.1f ", r->gflops);
        else
            fprintf(f, "%10s ", "");
        fprintf(f, " %s\n", r->note);
    }
}

static void write_json(FILE *f)
{
    fprintf(f, "{\n  \"backend\": \"cuda\",\n  \"device\": \"%s\",\n  \"rows\": [\n", cu->device);
    for (int i = 0; i < nrows; i++) {
        const result *r = &rows[i];
        fprintf(f,
                "    {\"name\": \"%s\", \"failed\": %d, \"median_us\": %.3f, \"p99_us\": %.3f, "
                "\"gbps\": %.2f, \"gflops\": %.2f, \"target_us\": %.1f, \"note\": \"%s\"}%s\n",
                r->name, r->failed, r->median_us, r->p99_us, r->gbps, r->gflops, r->target_us, r->note,
                i + 1 < nrows ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
}

int main(int argc, char **argv)
{
    const char *out_dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out_dir = argv[++i];
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else {
            fprintf(stderr, "usage: %s [--out DIR] [--quick]\n", argv[0]);
            return 2;
        }
    }
    char why[256];
    if (sona_backend_get("cuda", &cu, why, sizeof why) != SONA_OK) {
        printf("[gpu-bench] cuda backend not available: %s\n", why);
        return 2;
    }
    printf("[gpu-bench] %s\n", cu->device);
    sona_rng rng;
    sona_rng_seed(&rng, 42, 7);

    bench_copy();
    printf("[gpu-bench] d2d copy: %.1f GB/s\n", copy_gbps);
    /* Each lora_apply kernel, then the automatic choice (what libsona uses). */
    static const char *const modes[] = {"rows", "grouped", "sliced", "coop", ""};
    const force_kernels_fn force = force_kernels();
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        if (*modes[m] && !force)
            continue;
        char label[32];
        snprintf(label, sizeof label, "lora_apply%s%s%s", *modes[m] ? "[" : "", modes[m],
                 *modes[m] ? "]" : "");
        if (force)
            force(modes[m], 0);
        bench_lora(&rng, label, 256, 4096, 16, 64, 70.0);
        bench_lora(&rng, label, 4096, 4096, 16, 64, 0);
    }
    /* Decode batches with the automatic choice, then with one block per row and the one-pass
     * kernel forced (what the automatic choice weighs). */
    static const uint32_t batches[] = {1, 8, 64, 256};
    static const uint32_t ranks[] = {1, 2, 16};
    static const char *const decode_modes[] = {"", "rows", "coop"};
    for (size_t m = 0; m < sizeof decode_modes / sizeof decode_modes[0]; m++) {
        if (*decode_modes[m] && !force)
            continue;
        if (force)
            force(decode_modes[m], 0);
        for (size_t r = 0; r < sizeof ranks / sizeof ranks[0]; r++)
            for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++)
                bench_lora(&rng, !*decode_modes[m] ? "decode" : m == 1 ? "decode[rows]" : "decode[coop]",
                           batches[b], 4096, ranks[r], 64, 0);
    }
    if (force)
        force(NULL, 0);
    printf("[gpu-bench] lora done, now k-means and knn (1 GB data set)\n");
    fflush(stdout);
    bench_clusters_and_search(&rng);

    printf("\n");
    print_table(stdout);
    if (out_dir && *out_dir) {
        char path[1024];
        snprintf(path, sizeof path, "%s/gpu_bench.json", out_dir);
        FILE *f = fopen(path, "w");
        if (f) {
            write_json(f);
            fclose(f);
        }
        snprintf(path, sizeof path, "%s/gpu_bench.txt", out_dir);
        f = fopen(path, "w");
        if (f) {
            fprintf(f, "%s\n", cu->device);
            print_table(f);
            fclose(f);
        }
    }
    int failed = 0;
    for (int i = 0; i < nrows; i++)
        failed |= rows[i].failed;
    return failed ? 1 : 0;
}
