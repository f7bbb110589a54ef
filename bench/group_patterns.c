/* SPDX-License-Identifier: MIT */
/* Pattern groups of the spec: pattern_extraction (ReasoningBank k-means++ extraction) and
 * pattern_search (HNSW find_similar), both on the CPU backend the library chose. Search rows
 * report recall@10 against the exact knn op and the index build time beside the latency, on the
 * spec's uniform random data and on clustered data (100 centres, N(0,1) coordinates, points with
 * N(0, 0.5^2) noise), which is what real pattern centroids look like. */
#include "bench.h"

#include "common/rng.h"
#include "core/patterns/kmeans.h"
#include "dispatch/dispatch.h"
#include "sona/bank.h"
#include "sona/index.h"

#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { DIM = 256, QUERY_SETS = 64, RECALL_QUERIES = 100, K = 10 };

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* n rows of DIM: uniform [0, 1) like the spec's rand::random(), or clustered. */
static float *make_rows(sona_rng *r, uint32_t n, int clustered)
{
    float *X = malloc((size_t)n * DIM * sizeof *X);
    float *centres = clustered ? malloc((size_t)100 * DIM * sizeof *centres) : NULL;
    if (!X || (clustered && !centres)) {
        free(X);
        free(centres);
        return NULL;
    }
    for (size_t i = 0; clustered && i < (size_t)100 * DIM; i++)
        centres[i] = sona_rng_normal(r);
    for (uint32_t i = 0; i < n; i++) {
        float *x = X + (size_t)i * DIM;
        const float *c = clustered ? centres + (size_t)sona_rng_below(r, 100) * DIM : NULL;
        for (uint32_t t = 0; t < DIM; t++)
            x[t] = c ? c[t] + 0.5f * sona_rng_normal(r) : sona_rng_uniform(r);
    }
    free(centres);
    return X;
}

/* ---- pattern_extraction ------------------------------------------------------------------ */

typedef struct extraction_fixture {
    sona_bank *bank;
    uint32_t n;
    float *X, *quality;
    sona_bank_extract_result last;
    double inertia_sum; /* over every call: each call's k-means seeds from its own stream */
    long calls;
} extraction_fixture;

/* One extraction of n fresh trajectories: queueing them (a copy) is part of the call, as the
 * bank consumes what it extracts. */
static int call_extract(void *arg)
{
    extraction_fixture *f = arg;
    if (sona_bank_add_batch(f->bank, f->n, f->X, DIM, f->quality, NULL, NULL) != SONA_OK)
        return -1;
    if (sona_bank_extract(f->bank, &f->last) != SONA_OK)
        return -1;
    f->inertia_sum += f->last.inertia;
    f->calls++;
    return 0;
}

static void run_pattern_extraction(bench_ctx *ctx)
{
    static const struct {
        uint32_t n, k;
        double expected_ms;
        const char *name;
    } cases[] = {{100, 10, 12, "100/10"},
                 {500, 25, 95, "500/25"},
                 {1000, 50, 380, "1000/50"},
                 {5000, 100, 2450, "5000/100"}};
    const char *backend = sona_cpu_backend()->name;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const bench_row row = {.group = "pattern_extraction",
                               .name = cases[c].name,
                               .backend = backend,
                               .target_us = 1000.0 * cases[c].n,  /* < 1 s per 1000 */
                               .stretch_us = 500.0 * cases[c].n,  /* < 500 ms per 1000 */
                               .expected_us = 1000.0 * cases[c].expected_ms};
        extraction_fixture f = {.n = cases[c].n};
        sona_bank_config cfg;
        sona_bank_config_default(&cfg, DIM);
        cfg.k_clusters = cases[c].k;
        sona_rng r;
        sona_rng_seed(&r, 0x5eed, cases[c].n);
        f.X = make_rows(&r, f.n, 0);
        f.quality = malloc(f.n * sizeof *f.quality);
        if (!f.X || !f.quality || sona_bank_create(&cfg, &f.bank) != SONA_OK) {
            bench_skip(ctx, &row, "setup failed (out of memory)");
        } else {
            for (uint32_t i = 0; i < f.n; i++)
                f.quality[i] = sona_rng_uniform(&r);
            if (bench_measure(ctx, &row, call_extract, &f) == 0) {
                bench_report(ctx, &row, "iterations", f.last.iterations, "");
                /* Beside the peers' k-means inertia on the same rows (bench/peers); the mean, as
                 * the seed, and so the inertia, changes from call to call. */
                bench_report(ctx, &row, "inertia", f.inertia_sum / (double)f.calls, "");
            }
        }
        sona_bank_destroy(f.bank);
        free(f.X);
        free(f.quality);
    }
}

const bench_group bench_pattern_extraction = {
    .name = "pattern_extraction",
    .description = "ReasoningBank extraction: k-means++ seeding, Lloyd, merge into the bank (dim 256)",
    .run = run_pattern_extraction,
};

/* ---- pattern_search ---------------------------------------------------------------------- */

typedef struct search_fixture {
    sona_index *index;
    float *Q; /* QUERY_SETS queries, rotated */
    unsigned next;
} search_fixture;

static int call_search(void *arg)
{
    search_fixture *f = arg;
    uint64_t ids[K];
    float sims[K];
    uint32_t found;
    const float *q = f->Q + (size_t)(f->next++ % QUERY_SETS) * DIM;
    return sona_index_search(f->index, q, K, ids, sims, &found) == SONA_OK && found == K ? 0 : -1;
}

/* recall@10 of the index over queries Q[m] against the exact top 10 of P[n]. With tie > 0, a
 * returned id whose exact cosine is within tie of the exact 10th best counts as a hit too (a
 * near tie that a storage's rounding may order either way). */
static double measure_recall_tie(sona_index *index, const float *P, uint32_t n, const float *Q,
                                 uint32_t m, double tie)
{
    int32_t *idx = malloc((size_t)m * K * sizeof *idx);
    float *sim = malloc((size_t)m * K * sizeof *sim);
    const sona_backend *cpu = sona_cpu_backend();
    sona_knn_exact_args a = {.m = m, .n = n, .d = DIM, .k = K, .Q = Q, .P = P, .idx = idx, .sim = sim};
    double recall = -1.0;
    if (idx && sim && cpu->knn_exact(cpu->ctx, &a) == SONA_OK) {
        uint64_t hits = 0;
        for (uint32_t q = 0; q < m; q++) {
            uint64_t ids[K];
            uint32_t found = 0;
            const float *qv = Q + (size_t)q * DIM;
            sona_index_search_ef(index, qv, K, sona_index_get_config(index)->ef_search, 0, ids, NULL, &found);
            for (uint32_t i = 0; i < found; i++) {
                int hit = 0;
                for (uint32_t j = 0; j < K; j++)
                    hit |= (int64_t)ids[i] == idx[(size_t)q * K + j];
                if (!hit && tie > 0) {
                    const float *p = P + (size_t)ids[i] * DIM;
                    double qp = 0, qq = 0, pp = 0;
                    for (uint32_t t = 0; t < DIM; t++) {
                        qp += (double)qv[t] * p[t];
                        qq += (double)qv[t] * qv[t];
                        pp += (double)p[t] * p[t];
                    }
                    hit = qp / sqrt(qq * pp) >= sim[(size_t)q * K + K - 1] - tie;
                }
                hits += hit;
            }
        }
        recall = (double)hits / ((double)m * K);
    }
    free(idx);
    free(sim);
    return recall;
}

static double measure_recall(sona_index *index, const float *P, uint32_t n, const float *Q, uint32_t m)
{
    return measure_recall_tie(index, P, n, Q, m, 0.0);
}

static size_t heap_used(void)
{
    const struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;
}

/* One search row: n patterns (uniform or clustered) in an index of the given storage, k = 10 at
 * the default ef_search: latency, recall@10 against the exact knn op, build time; with
 * report_bytes, recall counting near ties (within 2e-3) and the index's heap bytes per pattern
 * too. */
static void search_case(bench_ctx *ctx, const char *group, const char *name, uint32_t n,
                        int clustered, sona_storage storage, double expected_us, int report_bytes)
{
    const bench_row row = {.group = group,
                           .name = name,
                           .backend = sona_cpu_backend()->name,
                           .target_us = 1000.0,
                           .stretch_us = 100.0,
                           .expected_us = expected_us};
    if (n > 10000 && bench_quick(ctx)) {
        bench_skip(ctx, &row, "--quick: the 100,000-pattern build takes tens of seconds");
        return;
    }
    sona_rng r;
    sona_rng_seed(&r, 0x5eed, n * 2u + (uint32_t)clustered);
    /* Patterns and queries from one distribution; queries are not indexed. */
    float *P = make_rows(&r, n + QUERY_SETS + RECALL_QUERIES, clustered);
    search_fixture f = {0};
    sona_index_config cfg;
    sona_index_config_default(&cfg, DIM);
    cfg.initial_capacity = n;
    cfg.track_access = 0;
    cfg.storage = storage;
    const size_t h0 = heap_used();
    if (!P || sona_index_create(&cfg, &f.index) != SONA_OK) {
        bench_skip(ctx, &row, "setup failed (out of memory)");
        free(P);
        return;
    }
    const double t0 = seconds_now();
    int ok = 1;
    for (uint32_t i = 0; ok && i < n; i++)
        ok = sona_index_insert(f.index, i, P + (size_t)i * DIM) == SONA_OK;
    const double build_s = seconds_now() - t0;
    const size_t bytes = heap_used() - h0;
    f.Q = P + (size_t)n * DIM;
    if (!ok) {
        bench_skip(ctx, &row, "index build failed");
    } else if (bench_measure(ctx, &row, call_search, &f) == 0) {
        bench_report(ctx, &row, "recall@10",
                     measure_recall(f.index, P, n, f.Q + (size_t)QUERY_SETS * DIM, RECALL_QUERIES), "");
        bench_report(ctx, &row, "build", build_s, "s");
        if (report_bytes) {
            bench_report(ctx, &row, "recall@10 ties 2e-3",
                         measure_recall_tie(f.index, P, n, f.Q + (size_t)QUERY_SETS * DIM, RECALL_QUERIES, 2e-3), "");
            bench_report(ctx, &row, "bytes/pattern", (double)bytes / n, "B");
        }
    }
    sona_index_destroy(f.index);
    free(P);
}

static void run_pattern_search(bench_ctx *ctx)
{
    static const uint32_t sizes[] = {1000, 10000, 100000};
    static const double expected_us[] = {45, 120, 350};
    for (int clustered = 0; clustered <= 1; clustered++) {
        for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
            char name[48];
            snprintf(name, sizeof name, "%s%u", clustered ? "clustered/" : "", sizes[c]);
            search_case(ctx, "pattern_search", name, sizes[c], clustered, SONA_STORAGE_F32,
                        clustered ? 0.0 : expected_us[c], 0);
        }
    }
}

const bench_group bench_pattern_search = {
    .name = "pattern_search",
    .description = "HNSW find_similar, k=10, ef_search 50, dim 256: latency, recall@10, build time",
    .run = run_pattern_search,
};

/* ---- pattern_storage --------------------------------------------------------------------- */

/* pattern_search's clustered rows for each way the index can keep vectors: the bank keeps its
 * one copy of each centroid in Q8 (the engine's pattern memory), F16 and F32 beside it for the
 * ratios, with the index's own heap bytes per pattern. */
static void run_pattern_storage(bench_ctx *ctx)
{
    static const uint32_t sizes[] = {1000, 10000, 100000};
    static const sona_storage storages[] = {SONA_STORAGE_F32, SONA_STORAGE_F16, SONA_STORAGE_Q8};
    static const char *const names[] = {"f32", "f16", "q8"};
    for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
        for (size_t s = 0; s < sizeof storages / sizeof storages[0]; s++) {
            char name[48];
            snprintf(name, sizeof name, "%s/clustered/%u", names[s], sizes[c]);
            search_case(ctx, "pattern_storage", name, sizes[c], 1, storages[s], 0.0, 1);
        }
    }
}

const bench_group bench_pattern_storage = {
    .name = "pattern_storage",
    .description = "pattern_search's clustered rows per index storage (f32, f16, q8): latency, recall@10, build, bytes per pattern",
    .run = run_pattern_storage,
};

/* ---- inputs for the peers (bench/peers/peers.py) ----------------------------------------- */

/* rows x cols float32 as a NumPy .npy file (format 1.0, little-endian, C order). */
static int write_npy(const char *dir, const char *file, const float *X, uint32_t rows, uint32_t cols)
{
    char path[1024], header[128];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int len = snprintf(header, sizeof header, "{'descr': '<f4', 'fortran_order': False, 'shape': (%u, %u), }",
                       rows, cols);
    /* The magic, version and length take 10 bytes; the header pads to 64 and ends in '\n'. */
    const int total = (10 + len + 1 + 63) / 64 * 64;
    while (10 + len + 1 < total)
        header[len++] = ' ';
    header[len++] = '\n';
    const unsigned char lead[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                    (unsigned char)(len & 0xff), (unsigned char)(len >> 8)};
    int ok = fwrite(lead, 1, 10, f) == 10 && fwrite(header, 1, (size_t)len, f) == (size_t)len &&
             fwrite(X, sizeof *X, (size_t)rows * cols, f) == (size_t)rows * cols;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

int bench_dump_peer_data(const char *dir)
{
    enum { EXTRACT_N = 5000, EXTRACT_K = 100 };
    static const uint32_t search_sizes[] = {10000, 100000};
    sona_bank_config bank;
    sona_bank_config_default(&bank, DIM);
    sona_index_config index;
    sona_index_config_default(&index, DIM);
    char path[1024];
    snprintf(path, sizeof path, "%s/peers_data.json", dir);
    FILE *meta = fopen(path, "w");
    if (!meta)
        return -1;
    char trials[32] = "2 + 2 ln k";
    if (bank.seeding_trials)
        snprintf(trials, sizeof trials, "%u", bank.seeding_trials);
    /* The same seeds and generator calls as the rows the peers stand beside. */
    sona_rng r;
    sona_rng_seed(&r, 0x5eed, EXTRACT_N);
    float *X = make_rows(&r, EXTRACT_N, 0);
    int rc = X ? write_npy(dir, "extraction_5000.npy", X, EXTRACT_N, DIM) : -1;
    free(X);
    /* Our k-means splits its seeding rounds and assignments over the cores, so its peers get
     * that many threads; the other rows run on one. */
    const sona_kmeans_params kp = {.k = EXTRACT_K, .trials = bank.seeding_trials};
    const uint32_t kmeans_threads = sona_kmeans_round_parts(EXTRACT_N, DIM, &kp);
    fprintf(meta,
            "{\n  \"threads\": 1,\n"
            "  \"extraction\": {\"file\": \"extraction_5000.npy\", \"group\": \"pattern_extraction\", "
            "\"case\": \"5000/100\", \"k\": %d, \"max_iterations\": %u, \"tolerance\": %.9g, "
            "\"init\": \"greedy k-means++, %s candidates per centre\", \"threads\": %u},\n"
            "  \"search\": [",
            EXTRACT_K, bank.max_iterations, (double)bank.tolerance, trials, kmeans_threads);
    for (size_t c = 0; rc == 0 && c < sizeof search_sizes / sizeof search_sizes[0]; c++) {
        const uint32_t n = search_sizes[c];
        char file[64];
        snprintf(file, sizeof file, "search_clustered_%u.npy", n);
        sona_rng_seed(&r, 0x5eed, n * 2u + 1u);
        float *P = make_rows(&r, n + QUERY_SETS + RECALL_QUERIES, 1);
        rc = P ? write_npy(dir, file, P, n + QUERY_SETS + RECALL_QUERIES, DIM) : -1;
        free(P);
        fprintf(meta,
                "%s\n    {\"file\": \"%s\", \"group\": \"pattern_search\", \"case\": \"clustered/%u\", "
                "\"n\": %u, \"timing_queries\": %d, \"recall_queries\": %d, \"k\": %d, "
                "\"metric\": \"cosine\", "
                "\"M\": %u, \"ef_construction\": %u, \"ef_search\": %u}",
                c ? "," : "", file, n, n, QUERY_SETS, RECALL_QUERIES, K, index.M, index.ef_construction,
                index.ef_search);
    }
    fprintf(meta, "\n  ]\n}\n");
    if (fclose(meta) != 0)
        rc = -1;
    return rc;
}
