/* SPDX-License-Identifier: MIT */
/* The places an op can run in this process: every CPU variant the host supports (their own
 * tables, so a missing op shows as unsupported) and every available GPU backend. */
#ifndef SONA_TEST_TARGETS_H
#define SONA_TEST_TARGETS_H

#include "backend/ops.h"

#define MAX_TARGETS 8
typedef struct op_target {
    const sona_backend *b;
    const char *label; /* "cpu:avx2", "opencl", ... */
} op_target;

/* Fills targets, returns how many. Prints one line per backend that is skipped and why. */
int op_targets(op_target *out, int print_skips);

#endif
