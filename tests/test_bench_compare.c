/* SPDX-License-Identifier: MIT */
/* The regression check of `sona bench --compare` (bench/compare.c), the JSON it reads
 * (bench/json_read.c, bench/report_json.c) and the peers merge of --peers (bench/peers_merge.c),
 * on synthetic reports. */
#include "compare.h"
#include "harness.h"
#include "json_read.h"

#include "dispatch/dispatch.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A report with one timed row per (case, median) pair, all in group g on backend avx2. */
static char *report(const char *g, int n, const char *const *cases, const double *medians)
{
    bench_buf b = {0};
    bench_buf_printf(&b, "{\"format\": \"sona-bench-1\", \"header\": {\"git\": \"x\"}, \"rows\": [");
    for (int i = 0; i < n; i++)
        bench_buf_printf(&b, "%s{\"group\": \"%s\", \"case\": \"%s\", \"backend\": \"avx2\", \"kind\": \"timed\", "
                             "\"median_us\": %.9g, \"p99_us\": %.9g}",
                         i ? ", " : "", g, cases[i], medians[i], 2 * medians[i]);
    bench_buf_printf(&b, "]}");
    return b.s;
}

static const bench_cmp_entry *entry(const bench_comparison *c, const char *name)
{
    for (size_t i = 0; i < c->count; i++)
        if (!strcmp(c->entries[i].name, name))
            return &c->entries[i];
    return NULL;
}

static void compare(const char *base, const char *cur, double threshold, bench_comparison *out)
{
    char err[200];
    const int rc = bench_compare_json(base, cur, threshold, out, err, sizeof err);
    cr_assert_eq(rc, 0, "compare failed: %s", err);
}

static const char *const three[] = {"a", "b", "c"};

Test(bench_compare, faster_rows_are_not_regressions)
{
    const double base_us[] = {100, 10, 1}, cur_us[] = {50, 5, 0.5};
    char *base = report("g", 3, three, base_us), *cur = report("g", 3, three, cur_us);
    bench_comparison c;
    compare(base, cur, 10, &c);
    cr_expect_eq(c.compared, 3);
    cr_expect_eq(c.regressions, 0);
    cr_expect_eq(c.improvements, 3);
    cr_expect_eq(entry(&c, "a")->status, BENCH_CMP_FASTER);
    cr_expect_float_eq(entry(&c, "a")->change_pct, -50.0, 1e-9);
    bench_comparison_free(&c);
    free(base);
    free(cur);
}

Test(bench_compare, slower_beyond_threshold_is_a_regression)
{
    const double base_us[] = {100, 10, 1}, cur_us[] = {100, 11.5, 1};
    char *base = report("g", 3, three, base_us), *cur = report("g", 3, three, cur_us);
    bench_comparison c;
    compare(base, cur, 10, &c);
    cr_expect_eq(c.compared, 3);
    cr_expect_eq(c.regressions, 1);
    const bench_cmp_entry *e = entry(&c, "b");
    cr_assert_not_null(e);
    cr_expect_eq(e->status, BENCH_CMP_SLOWER);
    cr_expect_float_eq(e->change_pct, 15.0, 1e-6);
    cr_expect_float_eq(e->base_us, 10.0, 1e-12);
    cr_expect_float_eq(e->cur_us, 11.5, 1e-12);
    cr_expect_eq(entry(&c, "a")->status, BENCH_CMP_SAME);
    bench_comparison_free(&c);
    free(base);
    free(cur);
}

Test(bench_compare, within_threshold_passes)
{
    const double base_us[] = {100, 10, 1}, cur_us[] = {109.9, 9.1, 1.05};
    char *base = report("g", 3, three, base_us), *cur = report("g", 3, three, cur_us);
    bench_comparison c;
    compare(base, cur, 10, &c);
    cr_expect_eq(c.compared, 3);
    cr_expect_eq(c.regressions, 0);
    cr_expect_eq(c.improvements, 0);
    for (size_t i = 0; i < c.count; i++)
        cr_expect_eq(c.entries[i].status, BENCH_CMP_SAME, "row %s", c.entries[i].name);
    bench_comparison_free(&c);
    free(base);
    free(cur);
}

Test(bench_compare, missing_rows_are_listed_not_failed)
{
    static const char *const base_cases[] = {"a", "gone"}, *const cur_cases[] = {"a", "new"};
    const double base_us[] = {10, 10}, cur_us[] = {10, 1000};
    char *base = report("g", 2, base_cases, base_us), *cur = report("g", 2, cur_cases, cur_us);
    bench_comparison c;
    compare(base, cur, 10, &c);
    cr_expect_eq(c.compared, 1);
    cr_expect_eq(c.regressions, 0);
    cr_expect_eq(c.only_current, 1);
    cr_expect_eq(c.only_baseline, 1);
    cr_expect_eq(entry(&c, "new")->status, BENCH_CMP_NEW);
    cr_expect_eq(entry(&c, "gone")->status, BENCH_CMP_GONE);
    bench_comparison_free(&c);
    free(base);
    free(cur);
}

Test(bench_compare, rows_match_on_group_case_and_backend)
{
    const char *base = "{\"rows\": [{\"group\": \"g\", \"case\": \"a\", \"backend\": \"avx2\", \"median_us\": 1},"
                       " {\"group\": \"h\", \"case\": \"a\", \"backend\": \"scalar\", \"median_us\": 100}]}";
    const char *cur = "{\"rows\": [{\"group\": \"g\", \"case\": \"a\", \"backend\": \"scalar\", \"median_us\": 50},"
                      " {\"group\": \"h\", \"case\": \"a\", \"backend\": \"scalar\", \"median_us\": 100},"
                      " {\"group\": \"g\", \"case\": \"a\", \"backend\": \"avx2\", \"kind\": \"skipped\","
                      " \"reason\": \"no kernel\"}]}";
    bench_comparison c;
    compare(base, cur, 10, &c);
    /* g/a/scalar is new (the baseline's g/a is avx2), g/a/avx2 is untimed now, h/a matches. */
    cr_expect_eq(c.compared, 1);
    cr_expect_eq(c.regressions, 0);
    cr_expect_eq(c.only_current, 1);
    cr_expect_eq(c.only_baseline, 1);
    bench_comparison_free(&c);
}

Test(bench_compare, threshold_option)
{
    static const char *const one[] = {"a"};
    const double base_us[] = {100}, cur_us[] = {115};
    char *base = report("g", 1, one, base_us), *cur = report("g", 1, one, cur_us);
    const struct {
        double threshold;
        size_t regressions;
    } want[] = {{10, 1}, {14.9, 1}, {15.1, 0}, {20, 0}, {0, 1}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        bench_comparison c;
        compare(base, cur, want[i].threshold, &c);
        cr_expect_eq(c.regressions, want[i].regressions, "threshold %g", want[i].threshold);
        cr_expect_float_eq(c.threshold_pct, want[i].threshold, 1e-12);
        bench_comparison_free(&c);
    }
    /* Threshold 0: equal medians are not a regression. */
    bench_comparison c;
    compare(base, base, 0, &c);
    cr_expect_eq(c.regressions, 0);
    bench_comparison_free(&c);
    free(base);
    free(cur);
}

Test(bench_compare, rejects_malformed_reports)
{
    const char *good = "{\"rows\": []}";
    const char *bad[] = {"", "{", "{\"rows\": [}", "[1, 2]", "{\"rows\": 3}",
                         "{\"rows\": [{\"group\": \"g\", \"backend\": \"b\"}]}", "{\"rows\": []} x",
                         "{\"rows\": [\"unterminated]}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bench_comparison c;
        char err[200] = "";
        cr_expect_eq(bench_compare_json(good, bad[i], 10, &c, err, sizeof err), -1, "accepted: %s", bad[i]);
        cr_expect_neq(err[0], '\0', "no message for: %s", bad[i]);
        cr_expect_eq(bench_compare_json(bad[i], good, 10, &c, err, sizeof err), -1, "accepted: %s", bad[i]);
    }
}

Test(bench_compare, json_reader_decodes_strings_and_numbers)
{
    json_value v;
    char err[160];
    cr_assert_eq(json_parse("{\"s\": \"q\\\"b\\\\ \\u00e9\\ud83d\\ude00\\n\", \"n\": -1.5e3, \"t\": true,"
                            " \"z\": null, \"a\": [1, [2], {}]}",
                            &v, err, sizeof err),
                 0, "%s", err);
    cr_expect_str_eq(json_get_str(&v, "s", ""), "q\"b\\ \xc3\xa9\xf0\x9f\x98\x80\n");
    cr_expect_float_eq(json_get_num(&v, "n", 0), -1500.0, 1e-12);
    cr_expect_eq(json_get(&v, "t")->type, JSON_BOOL);
    cr_expect_eq(json_get(&v, "t")->boolean, 1);
    cr_expect_eq(json_get(&v, "z")->type, JSON_NULL);
    cr_expect_eq(json_get(&v, "a")->count, 3);
    cr_expect_null(json_get(&v, "missing"));
    json_free(&v);
}

/* What --json writes, --compare reads: rows whose names need escaping, skipped rows, and a
 * regression found through the round trip. */
Test(bench_compare, reads_what_the_report_writer_writes)
{
    bench_header h;
    memset(&h, 0, sizeof h);
    strcpy(h.git, "abc \"quoted\"");
    bench_result rows[3];
    memset(rows, 0, sizeof rows);
    for (int i = 0; i < 3; i++) {
        strcpy(rows[i].group, "op_gemm");
        strcpy(rows[i].backend, "avx2");
        rows[i].kind = BENCH_TIMED;
        rows[i].samples = 10;
        rows[i].batch = 1;
    }
    strcpy(rows[0].name, "m=\"1\" \\ tab\t");
    rows[0].median_us = 10;
    strcpy(rows[1].name, "b");
    rows[1].median_us = 20;
    rows[1].flops = 1e6;
    strcpy(rows[2].name, "c");
    rows[2].kind = BENCH_SKIPPED;
    strcpy(rows[2].note, "GPU-only");
    bench_buf base = {0}, cur = {0};
    bench_json_write(&base, &h, rows, 3);
    rows[0].median_us = 12; /* +20% */
    rows[1].median_us = 20.5;
    bench_json_write(&cur, &h, rows, 3);
    bench_comparison c;
    compare(base.s, cur.s, 10, &c);
    cr_expect_eq(c.compared, 2);
    cr_expect_eq(c.regressions, 1);
    const bench_cmp_entry *e = entry(&c, "m=\"1\" \\ tab\t");
    cr_assert_not_null(e);
    cr_expect_eq(e->status, BENCH_CMP_SLOWER);
    bench_comparison_free(&c);
    json_value v;
    char err[160];
    cr_assert_eq(json_parse(cur.s, &v, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(json_get_str(json_get(&v, "header"), "git", ""), "abc \"quoted\"");
    const json_value *r1 = &json_get(&v, "rows")->items[1];
    cr_expect_float_eq(json_get_num(r1, "gflops", 0), 1e6 / (20.5 * 1e3), 1e-6); /* %.9g */
    cr_expect_str_eq(json_get_str(&json_get(&v, "rows")->items[2], "reason", ""), "GPU-only");
    json_free(&v);
    bench_buf_free(&base);
    bench_buf_free(&cur);
}

/* The "vs scalar" column: scalar median over the row's median, matched on group and case, only
 * for timed non-scalar rows that have a timed scalar row; written to JSON as speedup_vs_scalar. */
Test(bench_compare, speedup_vs_scalar_matches_group_and_case)
{
    static const struct {
        const char *group, *name, *backend;
        bench_kind kind;
        double median_us;
    } spec[] = {
        {"g", "a", "scalar", BENCH_TIMED, 30},  {"g", "a", "avx2", BENCH_TIMED, 10},
        {"g", "a", "opencl", BENCH_TIMED, 60},  {"g", "b", "avx2", BENCH_TIMED, 5}, /* no scalar b */
        {"h", "a", "avx2", BENCH_TIMED, 3},     /* scalar a is in group g only */
        {"g", "c", "scalar", BENCH_SKIPPED, 0}, {"g", "c", "avx512", BENCH_TIMED, 7},
    };
    enum { N = sizeof spec / sizeof spec[0] };
    bench_result rows[N];
    memset(rows, 0, sizeof rows);
    for (size_t i = 0; i < N; i++) {
        strcpy(rows[i].group, spec[i].group);
        strcpy(rows[i].name, spec[i].name);
        strcpy(rows[i].backend, spec[i].backend);
        rows[i].kind = spec[i].kind;
        rows[i].median_us = rows[i].p99_us = spec[i].median_us;
        rows[i].vs_scalar = 99; /* stale values are overwritten */
    }
    bench_fill_vs_scalar(rows, N);
    const double want[N] = {0, 3.0, 0.5, 0, 0, 0, 0};
    for (size_t i = 0; i < N; i++)
        cr_expect_float_eq(rows[i].vs_scalar, want[i], 1e-12, "row %zu (%s/%s/%s)", i, spec[i].group,
                           spec[i].name, spec[i].backend);

    bench_header h;
    memset(&h, 0, sizeof h);
    bench_buf out = {0};
    bench_json_write(&out, &h, rows, N);
    json_value v;
    char err[160];
    cr_assert_eq(json_parse(out.s, &v, err, sizeof err), 0, "%s", err);
    const json_value *jrows = json_get(&v, "rows");
    cr_assert_eq(jrows->count, N);
    for (size_t i = 0; i < N; i++) {
        const json_value *field = json_get(&jrows->items[i], "speedup_vs_scalar");
        if (want[i] > 0) {
            cr_assert_not_null(field, "row %zu", i);
            cr_expect_float_eq(field->number, want[i], 1e-9, "row %zu", i);
        } else {
            cr_expect_null(field, "row %zu has speedup_vs_scalar", i);
        }
    }
    /* The field does not disturb the regression check. */
    bench_comparison c;
    compare(out.s, out.s, 10, &c);
    cr_expect_eq(c.compared, 6);
    cr_expect_eq(c.regressions, 0);
    bench_comparison_free(&c);
    json_free(&v);
    bench_buf_free(&out);
}

/* The learning group's curve points: value rows TASK/curve...@X, nothing else. */
Test(bench_compare, curve_points_are_told_from_other_rows)
{
    static const struct {
        bench_kind kind;
        const char *name;
        int point;
        size_t task_len, series_len;
        double x;
    } cases[] = {
        {BENCH_VALUE, "h256_c4_s4/curve@50", 1, 10, 5, 50},
        {BENCH_VALUE, "switch/curve_task2@2000", 1, 6, 11, 2000},
        {BENCH_VALUE, "a/b/curve@0", 1, 3, 5, 0},
        {BENCH_VALUE, "h256_c4_s4/lift@100", 0, 0, 0, 0},   /* not a curve series */
        {BENCH_VALUE, "curve@50", 0, 0, 0, 0},              /* no task */
        {BENCH_VALUE, "t/curve@", 0, 0, 0, 0},              /* no x */
        {BENCH_VALUE, "t/curve@5x", 0, 0, 0, 0},            /* x not a number */
        {BENCH_VALUE, "t/curve", 0, 0, 0, 0},
        {BENCH_TIMED, "t/curve@50", 0, 0, 0, 0},            /* a time, not a point */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bench_result r = {.kind = cases[i].kind};
        snprintf(r.name, sizeof r.name, "%s", cases[i].name);
        size_t task_len = 99, series_len = 99;
        double x = -1;
        const int point = bench_curve_point(&r, &task_len, &series_len, &x);
        cr_expect_eq(point, cases[i].point, "%s", cases[i].name);
        if (point && cases[i].point) {
            cr_expect_eq(task_len, cases[i].task_len, "%s", cases[i].name);
            cr_expect_eq(series_len, cases[i].series_len, "%s", cases[i].name);
            cr_expect_float_eq(x, cases[i].x, 1e-12, "%s", cases[i].name);
        }
    }
}

/* A duplicated key counts once, by its first timed row (an untimed one before it is passed). */
Test(bench_compare, duplicates_count_once_by_their_first_timed_row)
{
    const char *base = "{\"rows\": [{\"group\": \"g\", \"case\": \"a\", \"backend\": \"x\", \"kind\": \"skipped\"},"
                       " {\"group\": \"g\", \"case\": \"a\", \"backend\": \"x\", \"median_us\": 100},"
                       " {\"group\": \"g\", \"case\": \"a\", \"backend\": \"x\", \"median_us\": 1}]}";
    const char *cur = "{\"rows\": [{\"group\": \"g\", \"case\": \"a\", \"backend\": \"x\", \"median_us\": 150},"
                      " {\"group\": \"g\", \"case\": \"a\", \"backend\": \"x\", \"median_us\": 100}]}";
    bench_comparison c;
    compare(base, cur, 10, &c);
    cr_expect_eq(c.count, 1);
    cr_expect_eq(c.compared, 1);
    cr_expect_eq(c.regressions, 1, "150 us was not compared with the first timed baseline row (100 us)");
    cr_expect_eq(c.entries[0].base_us, 100);
    bench_comparison_free(&c);
}

/* 40 000 rows a side (the linear search per row took 24.5 s): every row is matched, in well
 * under the time the quadratic search needed. */
Test(bench_compare, large_reports_compare_in_n_log_n, .timeout = 60)
{
    enum { N = 40000 };
    bench_buf b = {0}, k = {0};
    for (int side = 0; side < 2; side++) {
        bench_buf *o = side ? &k : &b;
        bench_buf_printf(o, "{\"rows\": [");
        for (int i = 0; i < N; i++) {
            const int row = side ? N - 1 - i : i; /* the current report in the other order */
            bench_buf_printf(o, "%s{\"group\": \"g%d\", \"case\": \"case-%d\", \"backend\": \"avx2\", \"median_us\": %d}",
                             i ? ", " : "", row % 7, row, side && row % 1000 == 0 ? 200 : 100);
        }
        bench_buf_printf(o, "]}");
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    bench_comparison c;
    compare(b.s, k.s, 10, &c);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("[bench_compare] %d rows a side compared in %.3f s\n", N, s);
    cr_expect_eq(c.compared, N);
    cr_expect_eq(c.regressions, N / 1000);
    cr_expect_eq(c.only_current + c.only_baseline, 0);
    cr_expect_lt(s, 5.0, "comparing %d rows took %.1f s", N, s);
    bench_comparison_free(&c);
    free(b.s);
    free(k.s);
}

/* JSON is UTF-8: a header string in another encoding (a CPU or device name in Latin-1) is
 * written with U+FFFD for each stray byte, valid UTF-8 as it is, and the report still reads. */
Test(bench_compare, report_strings_that_are_not_utf8_stay_json)
{
    bench_header h;
    memset(&h, 0, sizeof h);
    strcpy(h.cpu, "Caf\xe9 CPU \xc3\xa9 \xed\xa0\x80 \xf4\x90\x80\x80 \xc0\xaf");
    bench_buf out = {0};
    bench_json_write(&out, &h, NULL, 0);
    for (size_t i = 0; i < out.len; i++)
        cr_assert((unsigned char)out.s[i] < 0x80 || out.s[i] == '\xc3' || out.s[i] == '\xa9',
                  "raw byte 0x%02x at %zu of the report", (unsigned char)out.s[i], i);
    cr_expect(strstr(out.s, "Caf\\ufffd CPU \xc3\xa9 \\ufffd\\ufffd\\ufffd \\ufffd\\ufffd\\ufffd\\ufffd "
                            "\\ufffd\\ufffd") != NULL,
              "%s", out.s);
    json_value v;
    char err[160];
    cr_assert_eq(json_parse(out.s, &v, err, sizeof err), 0, "%s", err);
    json_free(&v);
    bench_buf_free(&out);
}

/* `sona bench --peers`: the peers' rows are appended as they are, each timed row (and each value
 * row naming our metric) followed by our figure over theirs, skipped where our row did not run. */
Test(bench_compare, peers_rows_get_ours_over_theirs)
{
    bench_ctx ctx;
    bench_ctx_init(&ctx, 1);
    bench_result ours = {.kind = BENCH_TIMED, .group = "pattern_search", .name = "clustered/10000",
                         .median_us = 20, .samples = 5, .batch = 1};
    snprintf(ours.backend, sizeof ours.backend, "%s", sona_cpu_backend()->name);
    bench_add_row(&ctx, &ours);
    ours.kind = BENCH_VALUE;
    strcpy(ours.metric, "recall@10");
    ours.value = 0.99;
    bench_add_row(&ctx, &ours);
    char path[] = "/tmp/sona_peers_XXXXXX";
    const int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    FILE *f = fdopen(fd, "w");
    fputs("{\"format\": \"sona-bench-1\", \"rows\": ["
          "{\"group\": \"peers\", \"case\": \"hnsw ef=50\", \"backend\": \"hnswlib\", \"kind\": \"timed\", "
          "\"median_us\": 40, \"p99_us\": 50, \"samples\": 9, \"calls_per_sample\": 64, "
          "\"ours_group\": \"pattern_search\", \"ours_case\": \"clustered/10000\"}, "
          "{\"group\": \"peers\", \"case\": \"hnsw ef=50\", \"backend\": \"hnswlib\", \"kind\": \"value\", "
          "\"metric\": \"recall@10\", \"value\": 0.9, \"unit\": \"\", \"ours_group\": \"pattern_search\", "
          "\"ours_case\": \"clustered/10000\", \"ours_metric\": \"recall@10\"}, "
          "{\"group\": \"peers\", \"case\": \"torch\", \"backend\": \"torch\", \"kind\": \"timed\", "
          "\"median_us\": 5, \"ours_group\": \"base_lora_forward\", \"ours_case\": \"rank16/2048\"}, "
          "{\"group\": \"peers\", \"case\": \"faiss\", \"backend\": \"faiss\", \"kind\": \"skipped\", "
          "\"reason\": \"faiss does not import\"}]}",
          f);
    fclose(f);
    cr_assert_eq(bench_merge_peers(&ctx, path), 0);
    unlink(path);
    cr_assert_eq(ctx.nrows, 2 + 7);
    const bench_result *r = ctx.rows + 2;
    cr_expect_eq(r[0].kind, BENCH_TIMED);
    cr_expect_float_eq(r[0].median_us, 40, 1e-9);
    cr_expect_eq(r[0].batch, 64);
    cr_expect_eq(r[1].kind, BENCH_VALUE);
    cr_expect_str_eq(r[1].metric, "ours/theirs time");
    cr_expect_float_eq(r[1].value, 0.5, 1e-9);
    cr_expect_str_eq(r[3].metric, "ours/theirs recall@10");
    cr_expect_float_eq(r[3].value, 0.99 / 0.9, 1e-9);
    cr_expect_eq(r[5].kind, BENCH_SKIPPED); /* no base_lora_forward row of ours */
    cr_expect_str_eq(r[6].group, "peers");
    cr_expect_eq(r[6].kind, BENCH_SKIPPED);
    cr_expect_str_eq(r[6].note, "faiss does not import");
    cr_expect_eq(bench_merge_peers(&ctx, "/nonexistent/peers.json"), -1);
    bench_ctx_free(&ctx);
}
