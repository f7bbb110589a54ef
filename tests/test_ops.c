/* SPDX-License-Identifier: MIT */
/* Every op of the op table, on every CPU variant this host runs and every available GPU
 * backend, against the double-precision reference on fresh random inputs (seed printed;
 * rerun with SONA_TEST_SEED=<seed>). Unsupported is reported apart from failed. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>

#include "support/fill.h"
#include "support/op_cases.h"
#include "support/targets.h"

Test(ops, every_case_on_every_target)
{
    const uint64_t seed = test_seed();
    printf("[ops] seed %" PRIu64 " (SONA_TEST_SEED=%" PRIu64 " reproduces)\n", seed, seed);
    op_target targets[MAX_TARGETS];
    const int nt = op_targets(targets, 1);
    cr_assert(nt >= 1, "no target at all: the scalar variant must always be there");
    int failed = 0, passed = 0, unsupported = 0;
    for (int t = 0; t < nt; t++) {
        for (size_t i = 0; i < op_case_count; i++) {
            char desc[128], msg[512];
            op_case_describe(&op_cases[i], desc, sizeof desc);
            op_instance in;
            cr_assert_eq(op_instance_prepare(&in, &op_cases[i], seed + i), 0);
            const sona_status st = op_instance_run(&in, targets[t].b, msg, sizeof msg);
            if (st == SONA_E_UNSUPPORTED) {
                printf("[ops] %-10s %-48s unsupported\n", targets[t].label, desc);
                unsupported++;
            } else if (st != SONA_OK) {
                printf("[ops] %-10s %-48s FAILED to run: %s\n", targets[t].label, desc, msg);
                failed++;
            } else if (!op_instance_check(&in, msg, sizeof msg)) {
                printf("[ops] %-10s %-48s WRONG: %s\n", targets[t].label, desc, msg);
                failed++;
            } else {
                passed++;
            }
            op_instance_free(&in);
        }
    }
    printf("[ops] %d targets: %d passed, %d failed, %d unsupported\n", nt, passed, failed, unsupported);
    cr_expect_eq(failed, 0, "%d op cases failed (seed %" PRIu64 ")", failed, seed);
}

/* The scalar variant is the fallback for everything: it must support every case. */
Test(ops, scalar_supports_every_case)
{
    const uint64_t seed = test_seed();
    op_target targets[MAX_TARGETS];
    op_targets(targets, 0);
    for (size_t i = 0; i < op_case_count; i++) {
        op_instance in;
        char msg[256];
        cr_assert_eq(op_instance_prepare(&in, &op_cases[i], seed), 0);
        cr_expect_eq(op_instance_run(&in, targets[0].b, msg, sizeof msg), SONA_OK, "%s", msg);
        op_instance_free(&in);
    }
}
