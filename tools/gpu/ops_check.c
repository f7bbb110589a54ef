/* SPDX-License-Identifier: MIT */
/* sona_gpu_ops_check: the cross-backend op check of tests/test_ops.c without Criterion, for GPU
 * machines that lack it. Every case of the shared table on every target (CPU variants the host
 * runs, available GPU backends), plus large cases on GPU targets that cross the tile boundaries
 * of the GPU kernels (several pattern/row tiles, many adapters, long segments).
 *
 *   sona_gpu_ops_check [--require NAME] [--only LABEL] [--op OP] [--seeds N] [--no-large|--large-all]
 *
 * --require cuda: fail (exit 2) when that backend is not available. --only: one target label
 * ("cuda", "cpu:avx512"). --op: the cases of one op ("lora_apply"). --seeds N: run the table
 * with N consecutive seeds. Exit 1 on any wrong or failed case. The seed is printed;
 * SONA_TEST_SEED reproduces it. */
#include "dispatch/dispatch.h"
#include "sona/system.h"
#include "support/op_cases.h"
#include "support/targets.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Shapes past the GPU kernels' tile sizes (32768 pattern columns, 8M-float GEMM tiles, the
 * 2048 x 8192 tiles of the TF32 knn pass). */
static const op_case large_cases[] = {
    {.op = SONA_OP_KNN_EXACT, .m = 37, .n = 70001, .d = 19, .k = 10},
    {.op = SONA_OP_KNN_EXACT, .m = 300, .n = 33000, .d = 33, .k = 64},
    {.op = SONA_OP_KNN_EXACT, .m = 9, .n = 40000, .d = 8, .k = 1},
    /* TF32 pass: query and pattern tiles crossed (2048 x 8192) with 64 candidates, and d = 2,
     * where near-ties send every query through the FP32 fallback. */
    {.op = SONA_OP_KNN_EXACT, .m = 2100, .n = 9000, .d = 40, .k = 20},
    {.op = SONA_OP_KNN_EXACT, .m = 50, .n = 40000, .d = 2, .k = 10},
    {.op = SONA_OP_SQDIST_ARGMIN, .n = 20011, .k = 1000, .d = 16},
    {.op = SONA_OP_SQDIST_ARGMIN, .n = 3, .k = 9000001, .d = 1},
    {.op = SONA_OP_CLUSTER_SUMS, .n = 200003, .k = 1000, .d = 33},
    {.op = SONA_OP_LORA_APPLY, .n = 513, .hidden = 4096, .rank = 16, .adapters = 64},
    {.op = SONA_OP_LORA_APPLY, .n = 300, .hidden = 1023, .rank = 64, .adapters = 7},
    {.op = SONA_OP_LORA_APPLY, .n = 64, .hidden = 4096, .rank = 33, .adapters = 64, .in_place = 1},
    /* Past the id chunks of the grouped kernels (256, and 1024 for the one-pass kernel): many
     * rows per adapter in a chunk, more adapters than resident slots (blocks take several), and
     * the rank-32 bucket on an odd hidden size; then several slices with several chunks. */
    {.op = SONA_OP_LORA_APPLY, .n = 2500, .hidden = 96, .rank = 4, .adapters = 3},
    {.op = SONA_OP_LORA_APPLY, .n = 1500, .hidden = 64, .rank = 2, .adapters = 2000, .in_place = 1},
    {.op = SONA_OP_LORA_APPLY, .n = 41, .hidden = 515, .rank = 20, .adapters = 3},
    {.op = SONA_OP_LORA_APPLY, .n = 3000, .hidden = 2048, .rank = 8, .adapters = 5},
    {.op = SONA_OP_LORA_APPLY, .n = 2049, .hidden = 4100, .rank = 16, .adapters = 300, .in_place = 1},
    {.op = SONA_OP_LORA_GRAD, .n = 1000, .hidden = 512, .rank = 8, .adapters = 37},
    {.op = SONA_OP_LORA_GRAD, .n = 97, .hidden = 4096, .rank = 64, .adapters = 3},
    {.op = SONA_OP_PARAM_UPDATE, .segments = 3, .len = 1000003, .with_ewc = 1, .with_fisher = 1, .with_clip = 1},
    {.op = SONA_OP_PARAM_UPDATE, .segments = 70000, .len = 3, .with_clip = 1},
    {.op = SONA_OP_GEMM, .m = 1000, .n = 999, .k = 1001, .trans_b = 1},
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Runs one case on one target; returns 1 when it failed (wrong or an error). */
static int run_case(const op_case *c, uint64_t seed, const op_target *t, int *unsupported)
{
    char desc[128], msg[512];
    op_case_describe(c, desc, sizeof desc);
    op_instance in;
    if (op_instance_prepare(&in, c, seed) != 0) {
        printf("[ops] %-10s %-52s could not prepare\n", t->label, desc);
        return 1;
    }
    const double t0 = now_s();
    const sona_status st = op_instance_run(&in, t->b, msg, sizeof msg);
    const double dt = now_s() - t0;
    int failed = 0;
    if (st == SONA_E_UNSUPPORTED) {
        printf("[ops] %-10s %-52s unsupported\n", t->label, desc);
        (*unsupported)++;
    } else if (st != SONA_OK) {
        printf("[ops] %-10s %-52s FAILED to run: %s\n", t->label, desc, msg);
        failed = 1;
    } else if (!op_instance_check(&in, msg, sizeof msg)) {
        printf("[ops] %-10s %-52s WRONG: %s\n", t->label, desc, msg);
        failed = 1;
    } else if (dt > 0.5) {
        printf("[ops] %-10s %-52s ok (%.2f s with transfers)\n", t->label, desc, dt);
    }
    op_instance_free(&in);
    return failed;
}

int main(int argc, char **argv)
{
    const char *require = NULL, *only = NULL, *op = NULL;
    int seeds = 1, large = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--require") && i + 1 < argc)
            require = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--op") && i + 1 < argc)
            op = argv[++i];
        else if (!strcmp(argv[i], "--seeds") && i + 1 < argc)
            seeds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-large"))
            large = 0;
        else if (!strcmp(argv[i], "--large-all")) /* CPU targets too (slow; checks the checker) */
            large = 2;
        else {
            fprintf(stderr,
                    "usage: %s [--require NAME] [--only LABEL] [--op OP] [--seeds N] [--no-large|--large-all]\n",
                    argv[0]);
            return 2;
        }
    }
    if (seeds < 1)
        seeds = 1;
    int op_known = !op;
    for (int o = 0; o < SONA_OP_COUNT && !op_known; o++)
        op_known = !strcmp(op, sona_op_name((sona_op)o));
    if (!op_known) {
        fprintf(stderr, "%s: --op %s: not an op name (lora_apply, lora_grad, ...)\n", argv[0], op);
        return 2;
    }
    const uint64_t seed = op_test_seed();
    printf("[ops] seed %" PRIu64 " (SONA_TEST_SEED=%" PRIu64 " reproduces)\n", seed, seed);
    for (uint32_t i = 0; i < sona_backend_count(); i++) {
        sona_backend_info bi;
        if (sona_backend_info_get(i, &bi) == SONA_OK)
            printf("[ops] backend %-7s %s: %s\n", bi.name, bi.available ? "available" : "not available",
                   bi.detail);
    }
    if (require) {
        const sona_backend *b;
        char why[256];
        if (sona_backend_get(require, &b, why, sizeof why) != SONA_OK) {
            printf("[ops] FAILED: backend %s is required but not available: %s\n", require, why);
            return 2;
        }
    }
    op_target targets[MAX_TARGETS];
    const int nt = op_targets(targets, 1);
    int failed = 0, ran = 0, unsupported = 0;
    for (int t = 0; t < nt; t++) {
        if (only && strcmp(only, targets[t].label) != 0)
            continue;
        const double t0 = now_s();
        int tf = 0, tr = 0;
        if (!targets[t].b->host_memory && targets[t].b->bind_host_thread) {
            /* Host-thread placement near the device: a failure counts like a wrong case. */
            const sona_status st = targets[t].b->bind_host_thread(targets[t].b->ctx);
            printf("[ops] %-10s bind_host_thread: %s%s\n", targets[t].label,
                   st == SONA_OK ? "ok" : "FAILED: ",
                   st == SONA_OK ? "" : targets[t].b->last_error(targets[t].b->ctx));
            tf += st != SONA_OK;
            tr++;
        }
        for (int s = 0; s < seeds; s++)
            for (size_t i = 0; i < op_case_count; i++)
                if (!op || !strcmp(op, sona_op_name(op_cases[i].op))) {
                    tf += run_case(&op_cases[i], seed + (uint64_t)s * 1000003u + i, &targets[t], &unsupported);
                    tr++;
                }
        if (large == 2 || (large && !targets[t].b->host_memory)) /* the large cases: GPU targets only (slow on a CPU) */
            for (size_t i = 0; i < sizeof large_cases / sizeof large_cases[0]; i++)
                if (!op || !strcmp(op, sona_op_name(large_cases[i].op))) {
                    tf += run_case(&large_cases[i], seed + 77 + i, &targets[t], &unsupported);
                    tr++;
                }
        printf("[ops] %-10s %d cases, %d failed (%.1f s)\n", targets[t].label, tr, tf, now_s() - t0);
        failed += tf;
        ran += tr;
    }
    printf("[ops] %s: %d cases run, %d failed, %d unsupported (seed %" PRIu64 ")\n",
           failed ? "FAILED" : "OK", ran, failed, unsupported, seed);
    return failed ? 1 : 0;
}
