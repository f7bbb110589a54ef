/* SPDX-License-Identifier: MIT */
/* Internals of the `sona bench` harness shared by its files (not for groups: they use bench.h). */
#ifndef SONA_BENCH_HARNESS_H
#define SONA_BENCH_HARNESS_H

#include "bench.h"

#include <stdio.h>

#define BENCH_MAX_BACKENDS 8

typedef enum bench_kind { BENCH_TIMED, BENCH_VALUE, BENCH_SKIPPED, BENCH_FAILED } bench_kind;
/* A kind's name in the JSON report ("timed", "value", "skipped", "failed"), and back (an
 * unknown name reads as failed). */
const char *bench_kind_name(bench_kind k);
bench_kind bench_kind_parse(const char *name);

/* One row of results, as printed and written to JSON. */
typedef struct bench_result {
    bench_kind kind;
    char group[48], name[96], backend[24];
    double target_us, stretch_us, expected_us, flops, bytes;
    double median_us, p99_us;   /* BENCH_TIMED: per call */
    double vs_scalar;           /* BENCH_TIMED, not scalar: scalar median / this median (0 = none) */
    long samples, batch;        /* samples taken, calls per sample */
    char metric[32], unit[16];  /* BENCH_VALUE */
    double value;
    char note[200];             /* BENCH_SKIPPED / BENCH_FAILED: why */
} bench_result;

/* Timing policy (full run or --quick). */
typedef struct bench_policy {
    double warmup_s;       /* warm-up time per row (at least one call) */
    double row_budget_s;   /* sampling time per row once min_samples are in */
    double min_sample_s;   /* tiny calls are batched until one sample lasts this long */
    int min_samples, max_samples;
} bench_policy;

struct bench_ctx {
    int quick;
    int tty;               /* stderr is a terminal: live progress line */
    bench_policy policy;
    const sona_backend *backends[BENCH_MAX_BACKENDS];
    const char *labels[BENCH_MAX_BACKENDS];
    int nbackends;
    bench_result *rows;
    size_t nrows, cap;
    const char *group;     /* the running group, for the progress line */
    int group_index, group_total;
};

void bench_ctx_init(bench_ctx *ctx, int quick);
void bench_ctx_free(bench_ctx *ctx);

/* Appends a copy of r (a row read from another report) to the run's rows. */
void bench_add_row(bench_ctx *ctx, const bench_result *r);
/* `sona bench --peers FILE`: appends the rows of FILE (written by bench/peers/peers.py) and, for
 * each timed peer row naming our row (ours_group, ours_case), an "ours/theirs" row: our median
 * over theirs, ours on the CPU backend the library chose. 0, or -1 said on stderr. */
int bench_merge_peers(bench_ctx *ctx, const char *path);

/* "meets stretch", "meets target", "misses", or "-" when the spec gives no target. */
const char *bench_verdict(const bench_result *r);
/* The spec's expected time over the measured median (0 when there is none). */
double bench_speedup(const bench_result *r);
/* Fills vs_scalar for the timed non-scalar rows among rows[0..n) (one group's rows, at the
 * group's end) from the timed "scalar" row of the same group and case. */
void bench_fill_vs_scalar(bench_result *rows, size_t n);
/* Work rate of a timed row: GFLOP/s or GB/s (0 when the row gives neither). */
double bench_gflops(const bench_result *r);
double bench_gbps(const bench_result *r);

/* Whether r is a point of a chart line: a value row named TASK/SERIES@X, SERIES starting with
 * "curve" and X a number (the learning group's curves; the row's metric names the line: mean,
 * seed1, ...). Then *task_len and *series_len are the lengths of TASK and SERIES, *x is X. */
int bench_curve_point(const bench_result *r, size_t *task_len, size_t *series_len, double *x);

/* What the run was on: printed above the table and written to JSON/HTML. */
typedef struct bench_header {
    char cpu[64], features[96], variant[160], compiler[96], build_type[32], git[48], date[32];
    unsigned cores, threads;
    int quick;
    struct {
        char name[16], detail[200];
        int available;
    } devices[4];
    int ndevices;
    char backends[160];          /* the backends benchmarked, comma-separated */
    char missing_groups[640];    /* groups named in groups.def but not linked in */
} bench_header;
void bench_header_fill(bench_header *h, const bench_ctx *ctx);

/* A growable string (reports are built in memory, then written out). */
typedef struct bench_buf {
    char *s;
    size_t len, cap;
} bench_buf;
void bench_buf_printf(bench_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void bench_buf_free(bench_buf *b);
int bench_buf_write(const bench_buf *b, const char *path);

/* Reports. */
void bench_print_header(FILE *f, const bench_header *h);
void bench_print_table_heading(FILE *f);
void bench_print_table(FILE *f, const bench_result *rows, size_t n);
void bench_format_time(char *buf, size_t len, double us);
/* "2.35x", or "-" when ratio is 0 (none). */
void bench_format_ratio(char *buf, size_t len, double ratio);
void bench_json_write(bench_buf *out, const bench_header *h, const bench_result *rows, size_t n);
void bench_html_write(bench_buf *out, const bench_header *h, const bench_result *rows, size_t n);

#endif /* SONA_BENCH_HARNESS_H */
