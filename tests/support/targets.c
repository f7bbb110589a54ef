/* SPDX-License-Identifier: MIT */
#include "support/targets.h"

#include "dispatch/dispatch.h"

#include <stdio.h>

int op_targets(op_target *out, int print_skips)
{
    static char labels[MAX_TARGETS][32];
    int n = 0;
    const sona_cpu_variant *vars;
    const uint32_t nv = sona_cpu_variants(&vars);
    const uint32_t have = sona_probe()->features;
    for (uint32_t i = 0; i < nv && n < MAX_TARGETS; i++) {
        if ((have & vars[i].needs) != vars[i].needs) {
            if (print_skips)
                printf("[targets] cpu:%s skipped: this CPU lacks its instructions\n", vars[i].ops->name);
            continue;
        }
        snprintf(labels[n], sizeof labels[n], "cpu:%s", vars[i].ops->name);
        out[n].b = vars[i].ops;
        out[n].label = labels[n];
        n++;
    }
    static const char *const gpus[] = {"opencl", "cuda"};
    for (size_t g = 0; g < sizeof gpus / sizeof gpus[0] && n < MAX_TARGETS; g++) {
        const sona_backend *b;
        char why[256];
        if (sona_backend_get(gpus[g], &b, why, sizeof why) != SONA_OK) {
            if (print_skips)
                printf("[targets] %s skipped: %s\n", gpus[g], why);
            continue;
        }
        out[n].b = b;
        out[n].label = gpus[g];
        n++;
    }
    return n;
}
