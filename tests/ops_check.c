/* SPDX-License-Identifier: MIT */
/* sona_ops_check: every op case on every CPU variant this host runs (and every available GPU
 * backend) against the double-precision reference, without Criterion, so that cross-built
 * variants (NEON under qemu-aarch64) are checked with the same case table as tests/test_ops.c.
 * Usage: sona_ops_check [seed]   (else SONA_TEST_SEED, else the clock). Exit 0 when all pass. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "support/op_cases.h"
#include "support/targets.h"

int main(int argc, char **argv)
{
    const uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : op_test_seed();
    printf("[ops_check] seed %" PRIu64 " (SONA_TEST_SEED=%" PRIu64 " reproduces)\n", seed, seed);
    op_target targets[MAX_TARGETS];
    const int nt = op_targets(targets, 1);
    int passed = 0, failed = 0, unsupported = 0;
    for (int t = 0; t < nt; t++) {
        for (size_t i = 0; i < op_case_count; i++) {
            char desc[128], msg[512];
            op_case_describe(&op_cases[i], desc, sizeof desc);
            op_instance in;
            if (op_instance_prepare(&in, &op_cases[i], seed + i) != 0) {
                printf("[ops_check] %-10s %-48s could not prepare\n", targets[t].label, desc);
                failed++;
                continue;
            }
            const sona_status st = op_instance_run(&in, targets[t].b, msg, sizeof msg);
            if (st == SONA_E_UNSUPPORTED) {
                unsupported++;
            } else if (st != SONA_OK) {
                printf("[ops_check] %-10s %-48s FAILED to run: %s\n", targets[t].label, desc, msg);
                failed++;
            } else if (!op_instance_check(&in, msg, sizeof msg)) {
                printf("[ops_check] %-10s %-48s WRONG: %s\n", targets[t].label, desc, msg);
                failed++;
            } else {
                passed++;
            }
            op_instance_free(&in);
        }
        printf("[ops_check] %s done\n", targets[t].label);
    }
    printf("[ops_check] %d targets: %d passed, %d failed, %d unsupported\n", nt, passed, failed,
           unsupported);
    return failed == 0 && passed > 0 ? 0 : 1;
}
