/* SPDX-License-Identifier: MIT */
/* The terminal report: the header lines and the results table. */
#include "harness.h"

#include <string.h>

void bench_format_time(char *buf, size_t len, double us)
{
    if (us <= 0)
        snprintf(buf, len, "-");
    else if (us < 100)
        snprintf(buf, len, "%.2f us", us);
    else if (us < 1000)
        snprintf(buf, len, "%.1f us", us);
    else if (us < 1e6)
        snprintf(buf, len, "%.2f ms", us / 1e3);
    else
        snprintf(buf, len, "%.2f s", us / 1e6);
}

void bench_format_ratio(char *buf, size_t len, double ratio)
{
    if (ratio > 0)
        snprintf(buf, len, "%.2fx", ratio);
    else
        snprintf(buf, len, "-");
}

void bench_print_header(FILE *f, const bench_header *h)
{
    fprintf(f, "sona bench%s  (%s, git %s, %s build, %s)\n", h->quick ? " --quick" : "", h->date,
            h->git, h->build_type, h->compiler);
    fprintf(f, "cpu:      %s  (%u cores, %u threads)\n", h->cpu, h->cores, h->threads);
    fprintf(f, "features: %s\n", h->features);
    fprintf(f, "variant:  %s\n", h->variant);
    for (int i = 0; i < h->ndevices; i++)
        fprintf(f, "device:   %-7s %-14s %s\n", h->devices[i].name,
                h->devices[i].available ? "available" : "not available", h->devices[i].detail);
    fprintf(f, "backends: %s\n", h->backends);
    if (h->missing_groups[0])
        fprintf(f, "not in this build: %s\n", h->missing_groups);
}

static void rate_str(char *buf, size_t len, const bench_result *r)
{
    const double gf = bench_gflops(r), gb = bench_gbps(r);
    if (gf > 0)
        snprintf(buf, len, "%.2f GFLOP/s", gf);
    else if (gb > 0)
        snprintf(buf, len, "%.2f GB/s", gb);
    else
        snprintf(buf, len, "-");
}

static const char row_fmt[] = "%-21s %-42s %-7s %10s %10s %9s %10s %-13s %8s %9s %s\n";

void bench_print_table_heading(FILE *f)
{
    fprintf(f, row_fmt, "group", "case", "backend", "median", "p99", "target", "expected", "verdict",
            "vs spec", "vs scalar", "rate");
}

/* Prints row i of rows[0..n) (none for a curve point, counted in *points instead), then, after
 * the last row of a group with curve points, a line saying where they are. */
static void print_row(FILE *f, const bench_result *rows, size_t n, size_t i, size_t *points)
{
    const bench_result *r = &rows[i];
    size_t task_len, series_len;
    double x;
    if (bench_curve_point(r, &task_len, &series_len, &x)) {
        ++*points; /* charted by --html, listed by --json */
    } else if (r->kind == BENCH_SKIPPED || r->kind == BENCH_FAILED) {
        fprintf(f, "%-21s %-42s %-7s %s: %s\n", r->group, r->name, r->backend,
                r->kind == BENCH_SKIPPED ? "skipped" : "FAILED", r->note);
    } else if (r->kind == BENCH_VALUE) {
        fprintf(f, "%-21s %-42s %-7s %s = %.6g %s\n", r->group, r->name, r->backend, r->metric, r->value,
                r->unit);
    } else {
        char med[24], p99[24], tgt[24], exp[24], vs[24], vs_scalar[24], rate[32];
        bench_format_time(med, sizeof med, r->median_us);
        bench_format_time(p99, sizeof p99, r->p99_us);
        bench_format_time(tgt, sizeof tgt, r->target_us);
        bench_format_time(exp, sizeof exp, r->expected_us);
        bench_format_ratio(vs, sizeof vs, bench_speedup(r));
        bench_format_ratio(vs_scalar, sizeof vs_scalar, r->vs_scalar);
        rate_str(rate, sizeof rate, r);
        fprintf(f, row_fmt, r->group, r->name, r->backend, med, p99, tgt, exp, bench_verdict(r), vs, vs_scalar,
                rate);
    }
    if (*points && (i + 1 == n || strcmp(rows[i + 1].group, r->group))) {
        fprintf(f, "%-21s (%zu curve points not shown: in --json, charted by --html)\n", r->group, *points);
        *points = 0;
    }
}

void bench_print_table(FILE *f, const bench_result *rows, size_t n)
{
    size_t points = 0;
    for (size_t i = 0; i < n; i++)
        print_row(f, rows, n, i, &points);
}
