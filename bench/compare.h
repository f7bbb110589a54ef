/* SPDX-License-Identifier: MIT */
/* The regression check of `sona bench --compare`: rows of two JSON reports matched by
 * (group, case, backend); a row whose median is more than threshold percent above the
 * baseline's is a regression (the spec's 10% rule). */
#ifndef SONA_BENCH_COMPARE_H
#define SONA_BENCH_COMPARE_H

#include <stddef.h>
#include <stdio.h>

typedef enum bench_cmp_status {
    BENCH_CMP_SAME,          /* within the threshold */
    BENCH_CMP_SLOWER,        /* slower beyond the threshold: a regression */
    BENCH_CMP_FASTER,        /* faster beyond the threshold */
    BENCH_CMP_NEW,           /* timed now, absent (or untimed) in the baseline */
    BENCH_CMP_GONE           /* timed in the baseline, absent (or untimed) now */
} bench_cmp_status;

typedef struct bench_cmp_entry {
    char group[48], name[96], backend[24];
    double base_us, cur_us;  /* medians (0 where absent) */
    double change_pct;       /* (cur / base - 1) * 100 where both exist */
    bench_cmp_status status;
} bench_cmp_entry;

typedef struct bench_comparison {
    double threshold_pct;
    bench_cmp_entry *entries;
    size_t count;
    size_t compared, regressions, improvements, only_current, only_baseline;
} bench_comparison;

/* Compares the report `current` against `baseline` (both JSON texts as written by --json).
 * Returns 0 (out filled; regressions counts the offenders), or -1 with a message in err when a
 * text is not a sona-bench report. */
int bench_compare_json(const char *baseline, const char *current, double threshold_pct,
                       bench_comparison *out, char *err, size_t err_len);

/* Lists regressions (and the other changes) on f; a one-line summary last. */
void bench_comparison_print(const bench_comparison *c, FILE *f);
void bench_comparison_free(bench_comparison *c);

/* Reads a whole regular file into a malloc'd, NUL-terminated string (NULL on failure, and for a
 * FIFO, device or directory, without blocking). */
char *bench_read_file(const char *path);

#endif /* SONA_BENCH_COMPARE_H */
