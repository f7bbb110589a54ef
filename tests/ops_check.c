/* SPDX-License-Identifier: MIT */
/* sona_ops_check: the cross-backend op check of tests/test_ops.c without Criterion, for the
 * builds that lack it: cross-built CPU variants (NEON under qemu-aarch64, scripts/test.sh) and GPU
 * machines (tools/gpu-check.sh). Every case of the shared table on every target (CPU variants
 * the host runs, available GPU backends), plus large cases on GPU targets that cross the tile
 * boundaries of the GPU kernels (several pattern/row tiles, many adapters, long segments).
 *
 *   sona_ops_check [SEED] [--require NAME] [--only LABEL] [--op OP] [--seeds N] [--no-large|--large-all]
 *
 * SEED: instead of SONA_TEST_SEED (else the clock); printed either way. --require cuda: fail
 * (exit 2) when that backend is not available. --only: one target label ("cuda", "cpu:avx512").
 * --op: the cases of one op ("lora_apply"). --seeds N: run the table with N consecutive seeds.
 * Exit 1 on any wrong or failed case, or when no case passed at all. */
#include "dispatch/dispatch.h"
#include "sona/system.h"
#include "support/fill.h"
#include "support/op_cases.h"
#include "support/targets.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    uint64_t seed = test_seed();
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] >= '0' && argv[i][0] <= '9')
            seed = strtoull(argv[i], NULL, 0);
        else if (!strcmp(argv[i], "--require") && i + 1 < argc)
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
                    "usage: %s [SEED] [--require NAME] [--only LABEL] [--op OP] [--seeds N] "
                    "[--no-large|--large-all]\n",
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
            for (size_t i = 0; i < op_large_case_count; i++)
                if (!op || !strcmp(op, sona_op_name(op_large_cases[i].op))) {
                    tf += run_case(&op_large_cases[i], seed + 77 + i, &targets[t], &unsupported);
                    tr++;
                }
        printf("[ops] %-10s %d cases, %d failed (%.1f s)\n", targets[t].label, tr, tf, now_s() - t0);
        failed += tf;
        ran += tr;
    }
    const int passed = ran - failed - unsupported;
    printf("[ops] %s: %d cases run, %d failed, %d unsupported (seed %" PRIu64 ")\n",
           failed || passed <= 0 ? "FAILED" : "OK", ran, failed, unsupported, seed);
    return failed || passed <= 0 ? 1 : 0;
}
