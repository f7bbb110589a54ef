/* SPDX-License-Identifier: MIT */
/* The HTML report: one self-contained page (inline CSS and script, no network). A summary first
 * (per group: the spec's verdicts, the best backend, its speed-up over scalar and over the spec's
 * expected figure), then per group its charts and its rows. The charts are drawn as SVG by the
 * page's own script from a JSON description written here beside each; the rows and the summary
 * are plain HTML, readable without the script. The script records its errors and, at the end,
 * how many charts it drew and how many came out empty (#report-check), which the test
 * tests/report/check_report_html.sh reads from the page as headless Chromium renders it. */
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void html_text(bench_buf *b, const char *s)
{
    for (; *s; s++)
        switch (*s) {
        case '<': bench_buf_printf(b, "&lt;"); break;
        case '>': bench_buf_printf(b, "&gt;"); break;
        case '&': bench_buf_printf(b, "&amp;"); break;
        case '"': bench_buf_printf(b, "&quot;"); break;
        default: bench_buf_printf(b, "%c", *s);
        }
}

/* A JSON string inside a <script> element: '<', '>' and '&' as \u escapes, so no text can end
 * the element or read as markup. */
static void js_str(bench_buf *b, const char *s)
{
    bench_buf_printf(b, "\"");
    for (; *s; s++) {
        const unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            bench_buf_printf(b, "\\%c", c);
        else if (c < 0x20 || c == '<' || c == '>' || c == '&')
            bench_buf_printf(b, "\\u%04x", c);
        else
            bench_buf_printf(b, "%c", c);
    }
    bench_buf_printf(b, "\"");
}

static void js_num(bench_buf *b, double v)
{
    if (isfinite(v))
        bench_buf_printf(b, "%.6g", v);
    else
        bench_buf_printf(b, "null");
}

static const char *backend_color(const char *name)
{
    static const struct {
        const char *name, *color;
    } colors[] = {{"scalar", "#8c8c8c"}, {"avx2", "#1f77b4"}, {"avx512", "#2ca02c"}, {"neon", "#9467bd"},
                  {"opencl", "#ff7f0e"}, {"cuda", "#76b900"},  {"cpu", "#17becf"},    {"device", "#e377c2"}};
    for (size_t i = 0; i < sizeof colors / sizeof colors[0]; i++)
        if (!strcmp(colors[i].name, name))
            return colors[i].color;
    return "#bcbd22";
}

static const char *const palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"};
#define PALETTE_N (sizeof palette / sizeof palette[0])
#define SPEC_COLOR "#d62728"

/* The spec's figures that are not a row's fields (docs/benchmark-spec.md): the memory target and
 * stretch goal (for the total), pattern search's recall@10 per pattern count, and the end-to-end
 * server's queries per second per mode. */
#define SPEC_MEMORY_TARGET_MB 100.0
#define SPEC_MEMORY_STRETCH_MB 50.0
/* The learning group's goal (LIFT_GOAL of group_learning.c). */
#define LEARNING_GOAL 0.1

static double spec_recall(const char *name)
{
    static const struct {
        const char *n;
        double recall;
    } spec[] = {{"1000", 0.98}, {"10000", 0.96}, {"100000", 0.94}, {"1000000", 0.92}};
    if (strstr(name, "clustered"))
        return NAN; /* the spec measured uniform data only */
    const char *last = strrchr(name, '/');
    last = last ? last + 1 : name;
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++)
        if (!strcmp(spec[i].n, last))
            return spec[i].recall;
    return NAN;
}

static double spec_qps(const char *name)
{
    if (!strcmp(name, "baseline"))
        return 850;
    if (!strcmp(name, "micro_lora"))
        return 780;
    if (!strcmp(name, "full_sona"))
        return 720;
    return NAN;
}

/* ---- bar charts ---------------------------------------------------------------------------- */

/* One bar: its category (a band of the chart, e.g. the case), its series (a colour, e.g. the
 * backend) and its value. */
typedef struct chart_pt {
    char cat[96], series[48];
    double v;
} chart_pt;

/* A per-category mark (a tick across the band: the spec's value for that case). */
typedef struct chart_mark {
    const char *name;
    double (*at)(const bench_result *rows, size_t first, size_t last, const char *cat);
} chart_mark;

/* A reference value drawn across the whole chart (the spec's target). */
typedef struct chart_ref {
    char name[48];
    double v;
} chart_ref;

typedef struct bar_chart {
    const char *title, *axis, *unit, *better;
    int time;                 /* values are microseconds, shown as ns/us/ms/s */
    const char *scale;        /* "auto" (log when the values span 30x or more), "linear", "log" */
    int unit_domain;          /* linear from 0 to 1 (recall) */
    int (*pick)(const bench_result *r, chart_pt *p);
    int backend_colors;       /* series are backends */
    chart_mark marks[2];
    chart_ref refs[2];
    const char *note;         /* the caption, plain text */
} bar_chart;

static int is_curve(const bench_result *r)
{
    size_t t, s;
    double x;
    return bench_curve_point(r, &t, &s, &x);
}

static void pt_set(chart_pt *p, const char *cat, const char *series, double v)
{
    snprintf(p->cat, sizeof p->cat, "%s", cat);
    snprintf(p->series, sizeof p->series, "%s", series);
    p->v = v;
}

static int pick_time(const bench_result *r, chart_pt *p)
{
    if (r->kind != BENCH_TIMED || !(r->median_us > 0))
        return 0;
    pt_set(p, r->name, r->backend, r->median_us);
    return 1;
}

static int pick_gflops(const bench_result *r, chart_pt *p)
{
    if (!(bench_gflops(r) > 0))
        return 0;
    pt_set(p, r->name, r->backend, bench_gflops(r));
    return 1;
}

static int pick_gbps(const bench_result *r, chart_pt *p)
{
    if (!(bench_gbps(r) > 0))
        return 0;
    pt_set(p, r->name, r->backend, bench_gbps(r));
    return 1;
}

static int value_of(const bench_result *r, const char *metric)
{
    return r->kind == BENCH_VALUE && !is_curve(r) && !strcmp(r->metric, metric) && isfinite(r->value);
}

static int pick_qps(const bench_result *r, chart_pt *p)
{
    if (!value_of(r, "qps"))
        return 0;
    pt_set(p, r->name, r->backend, r->value);
    return 1;
}

static int pick_memory(const bench_result *r, chart_pt *p)
{
    if (strcmp(r->group, "memory") || !value_of(r, "measured"))
        return 0;
    pt_set(p, r->name, r->backend, r->value);
    return 1;
}

static int pick_bytes_per_pattern(const bench_result *r, chart_pt *p)
{
    if (!value_of(r, "bytes/pattern"))
        return 0;
    pt_set(p, r->name, r->backend, r->value);
    return 1;
}

static int pick_recall(const bench_result *r, chart_pt *p)
{
    if (r->kind != BENCH_VALUE || strncmp(r->metric, "recall@", 7) || !isfinite(r->value))
        return 0;
    pt_set(p, r->name, r->metric, r->value);
    return 1;
}

/* The learning group's TASK/[PREFIX_]lift@N rows: a band per TASK (and PREFIX), a bar per N. */
static int pick_lift(const bench_result *r, chart_pt *p)
{
    const char *at = strstr(r->name, "lift@");
    if (r->kind != BENCH_VALUE || strcmp(r->metric, "mean") || !at || !isfinite(r->value))
        return 0;
    char *end;
    const double n = strtod(at + 5, &end);
    if (end == at + 5 || *end || !(n > 0))
        return 0;
    size_t len = (size_t)(at - r->name);
    while (len && (r->name[len - 1] == '/' || r->name[len - 1] == '_'))
        len--;
    char cat[96], series[48];
    snprintf(cat, sizeof cat, "%.*s", (int)len, r->name);
    for (char *c = cat; *c; c++)
        if (*c == '/')
            *c = ' ';
    snprintf(series, sizeof series, "after %.0f", n);
    pt_set(p, cat, series, r->value);
    return 1;
}

/* The spec's figure for a case: the largest among its timed rows (0 when none: NaN). */
static double case_field(const bench_result *rows, size_t first, size_t last, const char *cat, int field)
{
    double v = 0;
    for (size_t i = first; i < last; i++)
        if (rows[i].kind == BENCH_TIMED && !strcmp(rows[i].name, cat)) {
            const double f = field == 0 ? rows[i].expected_us : rows[i].target_us;
            v = f > v ? f : v;
        }
    return v > 0 ? v : NAN;
}

static double mark_expected(const bench_result *rows, size_t first, size_t last, const char *cat)
{
    return case_field(rows, first, last, cat, 0);
}

static double mark_target(const bench_result *rows, size_t first, size_t last, const char *cat)
{
    return case_field(rows, first, last, cat, 1);
}

static double mark_memory_spec(const bench_result *rows, size_t first, size_t last, const char *cat)
{
    for (size_t i = first; i < last; i++)
        if (value_of(&rows[i], "spec") && !strcmp(rows[i].name, cat))
            return rows[i].value;
    return NAN;
}

static double mark_recall(const bench_result *rows, size_t first, size_t last, const char *cat)
{
    (void)rows, (void)first, (void)last;
    return spec_recall(cat);
}

static double mark_qps(const bench_result *rows, size_t first, size_t last, const char *cat)
{
    (void)rows, (void)first, (void)last;
    return spec_qps(cat);
}

/* Writes the chart of rows[first..last) that c describes; returns 0 when it has no bar. */
static int bar_chart_write(bench_buf *b, const bar_chart *c, const bench_result *rows, size_t first, size_t last)
{
    chart_pt *pts = malloc((last - first + 1) * sizeof *pts);
    size_t n = 0;
    for (size_t i = first; pts && i < last; i++)
        n += (size_t)c->pick(&rows[i], &pts[n]);
    if (!n) {
        free(pts);
        return 0;
    }
    /* Categories and series in the order they first appear: index of their first point. */
    size_t *cats = malloc(n * sizeof *cats), *sers = malloc(n * sizeof *sers), ncats = 0, nsers = 0;
    if (!cats || !sers) {
        free(cats);
        free(sers);
        free(pts);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        int seen_cat = 0, seen_ser = 0;
        for (size_t k = 0; k < ncats && !seen_cat; k++)
            seen_cat = !strcmp(pts[cats[k]].cat, pts[i].cat);
        for (size_t k = 0; k < nsers && !seen_ser; k++)
            seen_ser = !strcmp(pts[sers[k]].series, pts[i].series);
        if (!seen_cat)
            cats[ncats++] = i;
        if (!seen_ser)
            sers[nsers++] = i;
    }
    bench_buf_printf(b, "<figure class=\"chart\"><script type=\"application/json\">{\"kind\": \"bars\", \"title\": ");
    js_str(b, c->title);
    bench_buf_printf(b, ", \"axis\": ");
    js_str(b, c->axis ? c->axis : "");
    bench_buf_printf(b, ", \"unit\": ");
    js_str(b, c->unit ? c->unit : "");
    if (c->better) {
        bench_buf_printf(b, ", \"better\": ");
        js_str(b, c->better);
    }
    bench_buf_printf(b, ", \"fmt\": \"%s\", \"scale\": \"%s\"%s,\n \"cats\": [", c->time ? "time" : "num",
                     c->scale ? c->scale : "auto", c->unit_domain ? ", \"domain\": [0, 1]" : "");
    for (size_t k = 0; k < ncats; k++) {
        bench_buf_printf(b, "%s", k ? ", " : "");
        js_str(b, pts[cats[k]].cat);
    }
    bench_buf_printf(b, "],\n \"series\": [");
    for (size_t s = 0; s < nsers; s++) {
        const char *name = pts[sers[s]].series;
        bench_buf_printf(b, "%s{\"name\": ", s ? ",\n  " : "");
        js_str(b, name);
        bench_buf_printf(b, ", \"color\": \"%s\", \"v\": [",
                         c->backend_colors ? backend_color(name) : palette[s % PALETTE_N]);
        for (size_t k = 0; k < ncats; k++) {
            double v = NAN;
            for (size_t i = 0; i < n && isnan(v); i++)
                if (!strcmp(pts[i].cat, pts[cats[k]].cat) && !strcmp(pts[i].series, name))
                    v = pts[i].v;
            bench_buf_printf(b, "%s", k ? ", " : "");
            js_num(b, v);
        }
        bench_buf_printf(b, "]}");
    }
    bench_buf_printf(b, "],\n \"marks\": [");
    int nmarks = 0;
    for (int m = 0; m < 2; m++) {
        if (!c->marks[m].name)
            continue;
        bench_buf_printf(b, "%s{\"name\": ", nmarks++ ? ", " : "");
        js_str(b, c->marks[m].name);
        bench_buf_printf(b, ", \"color\": \"%s\", \"v\": [", m ? "#7f0000" : SPEC_COLOR);
        for (size_t k = 0; k < ncats; k++) {
            bench_buf_printf(b, "%s", k ? ", " : "");
            js_num(b, c->marks[m].at(rows, first, last, pts[cats[k]].cat));
        }
        bench_buf_printf(b, "]}");
    }
    bench_buf_printf(b, "],\n \"refs\": [");
    int nrefs = 0;
    for (int r = 0; r < 2; r++) {
        if (!c->refs[r].name[0])
            continue;
        bench_buf_printf(b, "%s{\"name\": ", nrefs++ ? ", " : "");
        js_str(b, c->refs[r].name);
        bench_buf_printf(b, ", \"color\": \"%s\", \"v\": ", r ? "#7f0000" : SPEC_COLOR);
        js_num(b, c->refs[r].v);
        bench_buf_printf(b, "}");
    }
    bench_buf_printf(b, "]}</script>");
    if (c->note) {
        bench_buf_printf(b, "<figcaption>");
        html_text(b, c->note);
        bench_buf_printf(b, "</figcaption>");
    }
    bench_buf_printf(b, "</figure>\n");
    free(cats);
    free(sers);
    free(pts);
    return 1;
}

/* The timed rows' target (which = 0) or stretch goal (1) when every timed row of the group has
 * the same one (a line across the chart), else 0. */
static double common_goal(const bench_result *rows, size_t first, size_t last, int which)
{
    double v = -1;
    for (size_t i = first; i < last; i++) {
        if (rows[i].kind != BENCH_TIMED)
            continue;
        const double g = which ? rows[i].stretch_us : rows[i].target_us;
        if (v < 0)
            v = g;
        else if (v != g)
            return 0;
    }
    return v > 0 ? v : 0;
}

static void goal_name(char *buf, size_t len, const char *what, double us)
{
    char t[32];
    bench_format_time(t, sizeof t, us);
    snprintf(buf, len, "%s < %s", what, t);
}

/* Every bar chart of a group: time, work rate, end-to-end throughput, memory, recall, lift. */
static int group_bar_charts(bench_buf *b, const bench_result *rows, size_t first, size_t last)
{
    int charts = 0;
    /* Time: median per call per case and backend, the spec's expected time as ticks, its target
     * and stretch goal as lines (ticks where they differ between cases). */
    bar_chart t = {.title = "Median time per call", .axis = "time per call", .better = "lower", .time = 1,
                   .pick = pick_time, .backend_colors = 1};
    int has_expected = 0, has_target = 0;
    for (size_t i = first; i < last; i++) {
        has_expected |= rows[i].kind == BENCH_TIMED && rows[i].expected_us > 0;
        has_target |= rows[i].kind == BENCH_TIMED && rows[i].target_us > 0;
    }
    t.note = has_expected && has_target ? "Bars: each backend's median per case. Red ticks: the spec's expected time "
                                          "for the case; dashed lines: the spec's target and stretch goal."
             : has_expected             ? "Bars: each backend's median per case. Red ticks: the spec's expected time."
             : has_target               ? "Bars: each backend's median per case. Dashed lines or dark ticks: the "
                                          "spec's target and stretch goal."
                                        : "Bars: each backend's median per case.";
    if (has_expected)
        t.marks[0] = (chart_mark){"spec expected", mark_expected};
    const double target = common_goal(rows, first, last, 0), stretch = common_goal(rows, first, last, 1);
    if (target > 0) {
        goal_name(t.refs[0].name, sizeof t.refs[0].name, "target", target);
        t.refs[0].v = target;
    } else if (has_target) {
        t.marks[1] = (chart_mark){"spec target", mark_target};
    }
    if (stretch > 0) {
        goal_name(t.refs[1].name, sizeof t.refs[1].name, "stretch", stretch);
        t.refs[1].v = stretch;
    }
    charts += bar_chart_write(b, &t, rows, first, last);

    /* Work rate of the timed rows that give their work: GFLOP/s, else GB/s. */
    bar_chart rate = {.title = "Throughput", .axis = "GFLOP/s", .unit = "GFLOP/s", .better = "higher",
                      .pick = pick_gflops, .backend_colors = 1,
                      .note = "Floating-point work per second of each timed case (from its median)."};
    if (!bar_chart_write(b, &rate, rows, first, last)) {
        rate.axis = rate.unit = "GB/s";
        rate.pick = pick_gbps;
        rate.note = "Bytes moved per second of each timed case (from its median).";
        charts += bar_chart_write(b, &rate, rows, first, last);
    } else {
        charts++;
    }

    const bar_chart values[] = {
        {.title = "End-to-end throughput", .axis = "queries/s", .unit = "queries/s", .better = "higher",
         .scale = "linear", .pick = pick_qps, .backend_colors = 1, .marks = {{"spec", mark_qps}},
         .note = "Queries per second of the synthetic server, without SONA, with Micro-LoRA and with full SONA; "
                 "red ticks: the spec's server (850, 780, 720 queries/s)."},
        {.title = "Memory", .axis = "MB", .unit = "MB", .better = "lower", .pick = pick_memory, .backend_colors = 1,
         .marks = {{"spec expected", mark_memory_spec}},
         .refs = {{"target (total) < 100 MB", SPEC_MEMORY_TARGET_MB}, {"stretch < 50 MB", SPEC_MEMORY_STRETCH_MB}},
         .note = "Heap bytes of each component at the spec's sizes. Red ticks: the spec's expected size; the target "
                 "and stretch goal (dashed) are for the total."},
        {.title = "Index memory per pattern", .axis = "bytes per pattern", .unit = "B", .better = "lower",
         .scale = "linear", .pick = pick_bytes_per_pattern, .backend_colors = 1,
         .note = "Heap bytes of the index per pattern (256 dimensions: 1 024 bytes of f32 vector alone)."},
        {.title = "Recall@10", .axis = "recall@10", .better = "higher", .scale = "linear", .unit_domain = 1,
         .pick = pick_recall, .marks = {{"spec (uniform data)", mark_recall}},
         .note = "Recall@10 of the index against exact search. Cases without \"clustered\" use the spec's uniform "
                 "random data: in 256 dimensions its points are nearly equidistant, so the true 10 nearest are "
                 "barely nearer than the rest and an approximate index loses recall there; the clustered cases "
                 "look like real embeddings. Red ticks: the spec's recall (on uniform data)."},
        {.title = "Lift after N trajectories", .axis = "lift (score after N - score before any)", .better = "higher",
         .scale = "linear", .pick = pick_lift, .refs = {{"goal: lift 0.1", LEARNING_GOAL}},
         .note = "Mean over seeds of each task's lift after 100, 250, 500 and 1 000 trajectories; dashed: the "
                 "learning group's goal. The curves below show every checkpoint."},
    };
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
        charts += bar_chart_write(b, &values[i], rows, first, last);
    return charts;
}

/* ---- learning curves ---------------------------------------------------------------------- */

/* Chart lines are the rows TASK/SERIES@X (bench_curve_point): one chart per TASK, one line per
 * (SERIES, metric), thick for the metric "mean", thin and faint for the others (each seed's). */

/* Whether r is a curve point of the task named by the first tlen characters of `task`; its
 * series' start and length in *series, *slen. */
static int lc_point_of(const bench_result *r, const char *task, size_t tlen, const char **series, size_t *slen,
                       double *x)
{
    size_t t;
    if (!bench_curve_point(r, &t, slen, x) || t != tlen || strncmp(r->name, task, tlen))
        return 0;
    *series = r->name + tlen + 1;
    return 1;
}

static void curve_chart(bench_buf *b, const bench_result *rows, size_t i0, size_t last, size_t tlen)
{
    const char *task = rows[i0].name, *series, *s2;
    size_t slen, slen2;
    double x;
    char text[96];
    snprintf(text, sizeof text, "%.*s", (int)tlen, task);
    bench_buf_printf(b, "<figure class=\"chart curve\"><script type=\"application/json\">{\"kind\": \"lines\", "
                        "\"title\": ");
    js_str(b, text);
    bench_buf_printf(b, ", \"x\": \"trajectories\", \"y\": \"lift\", \"refs\": [{\"name\": \"goal %g\", \"v\": %g}],"
                        "\n \"series\": [",
                     LEARNING_GOAL, LEARNING_GOAL);
    /* One line per (series, metric), in the order they first appear; a colour per series. */
    struct {
        const char *name;
        size_t len;
    } seen[PALETTE_N];
    int nseen = 0, nlines = 0;
    for (size_t j = i0; j < last; j++) {
        if (!lc_point_of(&rows[j], task, tlen, &series, &slen, &x))
            continue;
        int drawn = 0;
        for (size_t k = i0; k < j && !drawn; k++)
            drawn = lc_point_of(&rows[k], task, tlen, &s2, &slen2, &x) && slen2 == slen &&
                    !strncmp(s2, series, slen) && !strcmp(rows[k].metric, rows[j].metric);
        if (drawn)
            continue;
        int color = -1;
        for (int q = 0; q < nseen && color < 0; q++)
            if (seen[q].len == slen && !strncmp(seen[q].name, series, slen))
                color = q;
        if (color < 0) {
            color = nseen;
            if (nseen < (int)PALETTE_N) {
                seen[nseen].name = series;
                seen[nseen++].len = slen;
            }
        }
        const int mean = !strcmp(rows[j].metric, "mean");
        snprintf(text, sizeof text, "%.*s%s%s", (int)slen, series, mean ? "" : " ", mean ? "" : rows[j].metric);
        bench_buf_printf(b, "%s{\"name\": ", nlines++ ? ",\n  " : "");
        js_str(b, text);
        bench_buf_printf(b, ", \"color\": \"%s\", \"w\": %d, \"o\": %s, \"legend\": %d, \"pts\": [",
                         palette[color % (int)PALETTE_N], mean ? 2 : 1, mean ? "1" : "0.35", mean);
        int np = 0;
        for (size_t k = j; k < last; k++)
            if (lc_point_of(&rows[k], task, tlen, &s2, &slen2, &x) && slen2 == slen && !strncmp(s2, series, slen) &&
                !strcmp(rows[k].metric, rows[j].metric)) {
                bench_buf_printf(b, "%s[", np++ ? ", " : "");
                js_num(b, x);
                bench_buf_printf(b, ", ");
                js_num(b, rows[k].value);
                bench_buf_printf(b, "]");
            }
        bench_buf_printf(b, "]}");
    }
    bench_buf_printf(b, "]}</script></figure>\n");
}

/* A chart per task of rows[first..last) that has curve points; returns how many. */
static int curve_charts(bench_buf *b, const bench_result *rows, size_t first, size_t last)
{
    int any = 0;
    for (size_t i = first; i < last; i++) {
        size_t tlen, slen;
        double x;
        if (!bench_curve_point(&rows[i], &tlen, &slen, &x))
            continue;
        int seen = 0;
        for (size_t j = first; j < i && !seen; j++) {
            size_t t2, s2;
            seen = bench_curve_point(&rows[j], &t2, &s2, &x) && t2 == tlen && !strncmp(rows[j].name, rows[i].name, tlen);
        }
        if (seen)
            continue;
        if (!any)
            bench_buf_printf(b, "<p class=\"note\">Learning curves: lift (score after N trajectories - score before "
                                "any) against trajectories; thick: the mean over seeds, thin: each seed; dashed: the "
                                "goal, lift %g.</p>\n<div class=\"curves\">\n",
                             LEARNING_GOAL);
        any++;
        curve_chart(b, rows, i, last, tlen);
    }
    if (any)
        bench_buf_printf(b, "</div>\n");
    return any;
}

/* ---- summary ------------------------------------------------------------------------------ */

enum { SUM_MAX_BACKENDS = 16 };

/* One group's line of the summary. */
typedef struct group_sum {
    int stretch, target, miss, skipped, failed;
    const char *best;            /* the backend fastest on the most cases (NULL: none timed) */
    double vs_scalar, vs_spec;   /* geometric means over the best backend's rows (0: none) */
    int n_scalar, n_spec;
} group_sum;

static void summarize(const bench_result *rows, size_t first, size_t last, group_sum *s)
{
    memset(s, 0, sizeof *s);
    const char *backs[SUM_MAX_BACKENDS];
    int wins[SUM_MAX_BACKENDS] = {0}, cnt[SUM_MAX_BACKENDS] = {0}, nb = 0;
    double lost[SUM_MAX_BACKENDS] = {0}; /* sum of log(median / the case's fastest) */
    for (size_t i = first; i < last; i++) {
        const bench_result *r = &rows[i];
        s->skipped += r->kind == BENCH_SKIPPED;
        s->failed += r->kind == BENCH_FAILED;
        if (r->kind != BENCH_TIMED || !(r->median_us > 0))
            continue;
        const char *v = bench_verdict(r);
        s->stretch += !strcmp(v, "meets stretch");
        s->target += !strcmp(v, "meets target");
        s->miss += !strcmp(v, "misses");
        int seen = 0;
        for (size_t j = first; j < i && !seen; j++)
            seen = rows[j].kind == BENCH_TIMED && rows[j].median_us > 0 && !strcmp(rows[j].name, r->name);
        if (seen)
            continue; /* the case's backends were ranked at its first row */
        double best = r->median_us;
        const char *winner = r->backend;
        for (size_t j = i; j < last; j++)
            if (rows[j].kind == BENCH_TIMED && rows[j].median_us > 0 && !strcmp(rows[j].name, r->name) &&
                rows[j].median_us < best) {
                best = rows[j].median_us;
                winner = rows[j].backend;
            }
        for (size_t j = i; j < last; j++) {
            if (rows[j].kind != BENCH_TIMED || !(rows[j].median_us > 0) || strcmp(rows[j].name, r->name))
                continue;
            int k = 0;
            while (k < nb && strcmp(backs[k], rows[j].backend))
                k++;
            if (k == nb) {
                if (nb == SUM_MAX_BACKENDS)
                    continue;
                backs[nb++] = rows[j].backend;
            }
            wins[k] += rows[j].backend == winner;
            lost[k] += log(rows[j].median_us / best);
            cnt[k]++;
        }
    }
    int b = -1;
    for (int k = 0; k < nb; k++)
        if (b < 0 || wins[k] > wins[b] || (wins[k] == wins[b] && lost[k] / cnt[k] < lost[b] / cnt[b]))
            b = k;
    if (b < 0)
        return;
    s->best = backs[b];
    double ls = 0, le = 0;
    for (size_t i = first; i < last; i++) {
        const bench_result *r = &rows[i];
        if (r->kind != BENCH_TIMED || strcmp(r->backend, s->best))
            continue;
        if (r->vs_scalar > 0) {
            ls += log(r->vs_scalar);
            s->n_scalar++;
        }
        if (bench_speedup(r) > 0) {
            le += log(bench_speedup(r));
            s->n_spec++;
        }
    }
    s->vs_scalar = s->n_scalar ? exp(ls / s->n_scalar) : 0;
    s->vs_spec = s->n_spec ? exp(le / s->n_spec) : 0;
}

/* The group's measured values the summary names: memory's total, recall's range, queries/s, the
 * learning goal's count, what did not run. */
static void summary_notes(bench_buf *b, const bench_result *rows, size_t first, size_t last, const group_sum *s)
{
    double rmin = INFINITY, rmax = -INFINITY, qmin = INFINITY, qmax = -INFINITY, total = NAN, total_spec = NAN;
    double omin = INFINITY, omax = -INFINITY; /* the peers' ours/theirs time */
    int tasks = 0, reached = 0;
    for (size_t i = first; i < last; i++) {
        const bench_result *r = &rows[i];
        if (value_of(r, "recall@10")) {
            rmin = fmin(rmin, r->value);
            rmax = fmax(rmax, r->value);
        }
        if (value_of(r, "ours/theirs time")) {
            omin = fmin(omin, r->value);
            omax = fmax(omax, r->value);
        }
        if (value_of(r, "qps")) {
            qmin = fmin(qmin, r->value);
            qmax = fmax(qmax, r->value);
        }
        if (!strcmp(r->group, "memory") && !strcmp(r->name, "total")) {
            if (value_of(r, "measured"))
                total = r->value;
            if (value_of(r, "spec"))
                total_spec = r->value;
        }
        const size_t len = strlen(r->name);
        if (value_of(r, "seed_mean") && len >= 10 && !strcmp(r->name + len - 10, "to_lift0.1")) {
            tasks++;
            reached += r->value >= 0;
        }
    }
    const char *sep = "";
    if (isfinite(total)) {
        bench_buf_printf(b, "total %.1f MB", total);
        if (isfinite(total_spec))
            bench_buf_printf(b, " (spec %.1f MB)", total_spec);
        bench_buf_printf(b, ": <span class=\"%s\">%s</span>", total < SPEC_MEMORY_TARGET_MB ? "ok" : "bad",
                         total < SPEC_MEMORY_STRETCH_MB  ? "meets stretch (&lt; 50 MB)"
                         : total < SPEC_MEMORY_TARGET_MB ? "meets target (&lt; 100 MB)"
                                                         : "misses the 100 MB target");
        sep = "; ";
    }
    if (omax >= omin) {
        bench_buf_printf(b, "%sour time over theirs %.2fx to %.2fx", sep, omin, omax);
        sep = "; ";
    }
    if (rmax >= rmin) {
        bench_buf_printf(b, "%srecall@10 %.3f to %.3f", sep, rmin, rmax);
        sep = "; ";
    }
    if (qmax >= qmin) {
        bench_buf_printf(b, "%s%.0f to %.0f queries/s", sep, qmin, qmax);
        sep = "; ";
    }
    if (tasks) {
        bench_buf_printf(b, "%slift %g reached in <span class=\"%s\">%d of %d</span> tasks", sep, LEARNING_GOAL,
                         reached == tasks ? "ok" : "bad", reached, tasks);
        sep = "; ";
    }
    if (s->skipped) {
        bench_buf_printf(b, "%s%d skipped", sep, s->skipped);
        sep = "; ";
    }
    if (s->failed)
        bench_buf_printf(b, "%s<span class=\"bad\">%d failed</span>", sep, s->failed);
}

static void anchor(bench_buf *b, const char *group)
{
    bench_buf_printf(b, "g-");
    for (const char *c = group; *c; c++)
        bench_buf_printf(b, "%c", (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' ? *c : '-');
}

static void summary_table(bench_buf *b, const bench_result *rows, size_t n)
{
    bench_buf_printf(b, "<h2 id=\"summary\">Summary</h2>\n<table class=\"sum\"><tr><th>group</th><th>spec verdicts"
                        "</th><th>best backend</th><th>vs scalar</th><th>vs spec</th><th>notes</th></tr>\n");
    for (size_t first = 0; first < n;) {
        size_t last = first;
        while (last < n && !strcmp(rows[last].group, rows[first].group))
            last++;
        group_sum s;
        summarize(rows, first, last, &s);
        bench_buf_printf(b, "<tr><td><a href=\"#");
        anchor(b, rows[first].group);
        bench_buf_printf(b, "\">");
        html_text(b, rows[first].group);
        bench_buf_printf(b, "</a></td><td>");
        if (s.stretch + s.target + s.miss) {
            bench_buf_printf(b, "<span class=\"ok\">%d pass</span>", s.stretch + s.target);
            if (s.stretch)
                bench_buf_printf(b, " (%d stretch)", s.stretch);
            bench_buf_printf(b, ", <span class=\"%s\">%d miss</span>", s.miss ? "bad" : "ok", s.miss);
        } else {
            bench_buf_printf(b, "-");
        }
        bench_buf_printf(b, "</td><td>");
        /* The peers are other libraries on unlike cases: no one of them is "best". */
        html_text(b, s.best && strcmp(rows[first].group, "peers") ? s.best : "-");
        char t[32];
        bench_format_ratio(t, sizeof t, s.vs_scalar);
        bench_buf_printf(b, "</td><td title=\"geometric mean over %d cases\">%s</td>", s.n_scalar, t);
        bench_format_ratio(t, sizeof t, s.vs_spec);
        bench_buf_printf(b, "<td title=\"geometric mean over %d cases\" class=\"%s\">%s</td><td>", s.n_spec,
                         s.n_spec ? (s.vs_spec >= 1 ? "ok" : "bad") : "", t);
        summary_notes(b, rows, first, last, &s);
        bench_buf_printf(b, "</td></tr>\n");
        first = last;
    }
    bench_buf_printf(b, "</table>\n<p class=\"note\">Verdicts: the timed rows of every backend against the spec's "
                        "target (pass: under it; stretch: under the stretch goal too). Best backend: fastest on the "
                        "most cases. vs scalar, vs spec: its speed-up over the scalar CPU variant and over the spec's "
                        "expected time, geometric means over its cases (more than 1x: faster).</p>\n");
}

static void cell(bench_buf *b, const char *s)
{
    bench_buf_printf(b, "<td>");
    html_text(b, s);
    bench_buf_printf(b, "</td>");
}

static void group_table(bench_buf *b, const bench_result *rows, size_t first, size_t last)
{
    bench_buf_printf(b, "<table><tr><th>case</th><th>backend</th><th>median</th><th>p99</th>"
                        "<th>target</th><th>expected</th><th>verdict</th><th>vs spec</th><th>vs scalar</th><th>rate</th></tr>\n");
    size_t points = 0;
    for (size_t i = first; i < last; i++) {
        const bench_result *r = &rows[i];
        size_t tlen, slen;
        double x;
        if (bench_curve_point(r, &tlen, &slen, &x)) {
            points++; /* charted above */
            continue;
        }
        bench_buf_printf(b, "<tr>");
        cell(b, r->name);
        cell(b, r->backend);
        char t[64];
        if (r->kind == BENCH_SKIPPED || r->kind == BENCH_FAILED) {
            bench_buf_printf(b, "<td colspan=\"8\" class=\"skip\">%s: ", r->kind == BENCH_SKIPPED ? "skipped" : "FAILED");
            html_text(b, r->note);
            bench_buf_printf(b, "</td></tr>\n");
            continue;
        }
        if (r->kind == BENCH_VALUE) {
            snprintf(t, sizeof t, "%s = %.6g %s", r->metric, r->value, r->unit);
            bench_buf_printf(b, "<td colspan=\"8\">");
            html_text(b, t);
            bench_buf_printf(b, "</td></tr>\n");
            continue;
        }
        const double us[4] = {r->median_us, r->p99_us, r->target_us, r->expected_us};
        for (int k = 0; k < 4; k++) {
            bench_format_time(t, sizeof t, us[k]);
            cell(b, t);
        }
        cell(b, bench_verdict(r));
        bench_format_ratio(t, sizeof t, bench_speedup(r));
        cell(b, t);
        bench_format_ratio(t, sizeof t, r->vs_scalar);
        cell(b, t);
        if (bench_gflops(r) > 0)
            snprintf(t, sizeof t, "%.2f GFLOP/s", bench_gflops(r));
        else if (bench_gbps(r) > 0)
            snprintf(t, sizeof t, "%.2f GB/s", bench_gbps(r));
        else
            snprintf(t, sizeof t, "-");
        cell(b, t);
        bench_buf_printf(b, "</tr>\n");
    }
    bench_buf_printf(b, "</table>\n");
    if (points)
        bench_buf_printf(b, "<p>(%zu curve points charted above; every one in --json.)</p>\n", points);
}


/* ---- the page ----------------------------------------------------------------------------- */

static const char page_style[] =
    "body{font:14px sans-serif;margin:2em;color:#222}h2{margin-top:2em;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    "td:first-child,td:nth-child(2){text-align:left}"
    "table.sum td,table.sum th{white-space:nowrap;text-align:left}table.sum td:nth-child(n+4){text-align:right}"
    "table.sum td:last-child{text-align:left;white-space:normal}"
    ".skip{text-align:left;color:#777}.ok{color:#1a7f37}.bad{color:#c62828}.note,figcaption{color:#555;"
    "max-width:880px}figure{margin:0 0 1.5em}figcaption{font-size:13px}.curves{display:flex;flex-wrap:wrap}"
    ".curves figure{margin:0 8px 8px 0}svg{display:block}svg text{font:11px sans-serif;fill:#333}"
    "svg .ct{font-weight:bold;font-size:13px}svg .cb{font-weight:normal;fill:#777}svg .bl{text-anchor:end}"
    "svg .m{text-anchor:middle}svg .ax{fill:#666}"
    "svg .v{fill:#555;font-size:10px;paint-order:stroke;stroke:#fff;stroke-width:3px}"
    "figure.empty::before{content:'(nothing to chart)';color:#c62828}"
    ".report-error{color:#c62828;font-weight:bold}#report-check{color:#aaa;font-size:11px}";

/* Runs first: any script error leaves a .report-error line in the page. */
static const char page_onerror[] =
    "window.onerror = function (msg, src, line) {\n"
    "  var p = document.createElement('p');\n"
    "  p.className = 'report-error';\n"
    "  p.textContent = 'report-error: ' + msg + ' (line ' + line + ')';\n"
    "  (document.body || document.documentElement).appendChild(p);\n"
    "};\n";

/* Draws every figure.chart from its JSON, then writes #report-check: charts, empty, errors. */
static const char page_script[] =
    "(function () {\n"
    "'use strict';\n"
    "var NS = 'http://www.w3.org/2000/svg';\n"
    "function el(parent, name, attrs, text) {\n"
    "  var e = document.createElementNS(NS, name);\n"
    "  for (var k in attrs) if (attrs[k] !== undefined && attrs[k] !== null) e.setAttribute(k, attrs[k]);\n"
    "  if (text !== undefined) e.textContent = text;\n"
    "  if (parent) parent.appendChild(e);\n"
    "  return e;\n"
    "}\n"
    "function num(v) {\n"
    "  var a = Math.abs(v);\n"
    "  if (a === 0) return '0';\n"
    "  if (a >= 1e6 || a < 1e-3) return v.toExponential(2);\n"
    "  return v.toFixed(a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3);\n"
    "}\n"
    "function time(us) {\n"
    "  if (us < 1) return num(us * 1e3) + ' ns';\n"
    "  if (us < 1e3) return num(us) + ' us';\n"
    "  if (us < 1e6) return num(us / 1e3) + ' ms';\n"
    "  return num(us / 1e6) + ' s';\n"
    "}\n"
    "function fmtOf(s) {\n"
    "  if (s.fmt === 'time') return time;\n"
    "  return function (v) { return num(v) + (s.unit ? ' ' + s.unit : ''); };\n"
    "}\n"
    "/* Tick labels: '1.00 us' as '1 us', '0.200' as '0.2'. */\n"
    "function tick(t) { return t.replace(/\\.0+(?= |$)/, '').replace(/(\\.[0-9]*[1-9])0+(?= |$)/, '$1'); }\n"
    "function short(t, n) { return t.length > n ? t.slice(0, n - 1) + '\\u2026' : t; }\n"
    "function finite(v) { return typeof v === 'number' && isFinite(v); }\n"
    "function niceStep(x) {\n"
    "  var p = Math.pow(10, Math.floor(Math.log10(x))), m = x / p;\n"
    "  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;\n"
    "}\n"
    "/* A scale of the values onto [a, b]: log when asked, or (auto) when they are all positive and\n"
    " * span 30x or more; linear ones always show 0. */\n"
    "function scale(vals, mode, a, b, domain) {\n"
    "  vals = vals.filter(finite);\n"
    "  if (!vals.length) vals = [0, 1];\n"
    "  var min = Math.min.apply(null, vals), max = Math.max.apply(null, vals), sc = {ticks: []};\n"
    "  var pos = vals.filter(function (v) { return v > 0; });\n"
    "  sc.log = mode === 'log' || (mode === 'auto' && min > 0 && max / min >= 30);\n"
    "  if (sc.log && pos.length) {\n"
    "    var l0 = Math.floor(Math.log10(Math.min.apply(null, pos)));\n"
    "    var l1 = Math.ceil(Math.log10(Math.max.apply(null, pos)));\n"
    "    if (l1 <= l0) l1 = l0 + 1;\n"
    "    var step = l1 - l0 > 8 ? 2 : 1;\n"
    "    for (var k = l0; k <= l1; k += step) sc.ticks.push(Math.pow(10, k));\n"
    "    sc.f = function (v) { return a + (b - a) * (Math.log10(v) - l0) / (l1 - l0); };\n"
    "    sc.base = Math.pow(10, l0);\n"
    "    sc.ok = function (v) { return finite(v) && v > 0; };\n"
    "    return sc;\n"
    "  }\n"
    "  sc.log = false;\n"
    "  var lo = domain ? domain[0] : Math.min(0, min), hi = domain ? domain[1] : Math.max(0, max);\n"
    "  if (hi <= lo) hi = lo + 1;\n"
    "  var st = niceStep((hi - lo) / 6);\n"
    "  if (!domain) { lo = Math.floor(lo / st) * st; hi = Math.ceil(hi / st) * st; }\n"
    "  for (var t = lo; t <= hi + st / 1e6; t += st) sc.ticks.push(Math.abs(t) < st / 1e6 ? 0 : t);\n"
    "  sc.f = function (v) { return a + (b - a) * (v - lo) / (hi - lo); };\n"
    "  sc.base = lo < 0 && hi > 0 ? 0 : lo;\n"
    "  sc.ok = finite;\n"
    "  return sc;\n"
    "}\n"
    "function legend(svg, x, y, items) {\n"
    "  items.forEach(function (it) {\n"
    "    if (it.kind === 'bar') el(svg, 'rect', {x: x, y: y - 9, width: 10, height: 10, fill: it.color});\n"
    "    else el(svg, 'line', {x1: x, x2: x + 12, y1: y - 4, y2: y - 4, stroke: it.color,\n"
    "                          'stroke-width': it.kind === 'mark' ? 3 : 1.5, 'stroke-dasharray': it.dash || null});\n"
    "    el(svg, 'text', {x: x + 15, y: y}, it.name);\n"
    "    x += 24 + 6.5 * it.name.length;\n"
    "  });\n"
    "}\n"
    "function heading(svg, s, x) {\n"
    "  var t = el(svg, 'text', {x: x, y: 15, 'class': 'ct'}, s.title);\n"
    "  if (s.better) el(t, 'tspan', {'class': 'cb'}, '  (' + s.better + ' is better)');\n"
    "}\n"
    "/* Horizontal bars: a band per category, a bar per series in it; marks are per-category values\n"
    " * drawn as ticks across the band, refs are lines across the whole chart. */\n"
    "function bars(fig, s) {\n"
    "  var cats = s.cats, ser = s.series, marks = s.marks || [], refs = s.refs || [];\n"
    "  var fmt = fmtOf(s);\n"
    "  var W = 880, L = 250, R = 90, barH = 11, gap = 2, pad = 5, top = 58, bottom = 36;\n"
    "  var bandH = Math.max(ser.length * (barH + gap) - gap, 12) + 2 * pad;\n"
    "  var vals = [];\n"
    "  ser.forEach(function (x) { vals = vals.concat(x.v); });\n"
    "  marks.forEach(function (m) { vals = vals.concat(m.v); });\n"
    "  refs.forEach(function (r) { vals.push(r.v); });\n"
    "  var sc = scale(vals, s.scale || 'auto', L, W - R, s.domain);\n"
    "  var H = top + cats.length * bandH + bottom, yEnd = top + cats.length * bandH;\n"
    "  var svg = el(null, 'svg', {width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img',\n"
    "                             'class': 'bars'});\n"
    "  heading(svg, s, 4);\n"
    "  var items = ser.map(function (x) { return {kind: 'bar', name: x.name, color: x.color}; });\n"
    "  marks.forEach(function (m) { items.push({kind: 'mark', name: m.name, color: m.color}); });\n"
    "  refs.forEach(function (r) {\n"
    "    items.push({kind: 'ref', name: r.name, color: r.color || '#d62728', dash: '5 3'});\n"
    "  });\n"
    "  legend(svg, L, 34, items);\n"
    "  cats.forEach(function (c, i) {\n"
    "    if (i % 2) el(svg, 'rect', {x: 0, y: top + i * bandH, width: W, height: bandH, fill: '#f4f4f4'});\n"
    "  });\n"
    "  sc.ticks.forEach(function (t) {\n"
    "    var x = sc.f(t);\n"
    "    el(svg, 'line', {x1: x, x2: x, y1: top, y2: yEnd, stroke: t === 0 && !sc.log ? '#888' : '#e3e3e3'});\n"
    "    el(svg, 'text', {x: x, y: yEnd + 14, 'class': 'm'}, t === 0 ? '0' : tick(fmt(t)));\n"
    "  });\n"
    "  el(svg, 'text', {x: (L + W - R) / 2, y: yEnd + 30, 'class': 'm ax'},\n"
    "     (s.axis || s.unit || '') + (sc.log ? ' (log scale)' : ''));\n"
    "  /* The lowest ref's label left of its line, the others right of theirs: two never overlap. */\n"
    "  refs.filter(function (r) { return sc.ok(r.v); }).sort(function (a, b) { return a.v - b.v; })\n"
    "      .forEach(function (r, i, all) {\n"
    "    var x = sc.f(r.v), col = r.color || '#d62728', left = i === 0 && all.length > 1;\n"
    "    el(svg, 'line', {x1: x, x2: x, y1: top - 6, y2: yEnd, stroke: col, 'stroke-dasharray': '5 3',\n"
    "                     'stroke-width': 1.5});\n"
    "    el(svg, 'text', {x: left ? x - 3 : x + 3, y: top - 2, 'class': left ? 'bl' : '', fill: col}, r.name);\n"
    "  });\n"
    "  cats.forEach(function (c, i) {\n"
    "    var y0 = top + i * bandH;\n"
    "    var lt = el(svg, 'text', {x: L - 8, y: y0 + bandH / 2 + 4, 'class': 'bl'}, short(c, 40));\n"
    "    el(lt, 'title', {}, c);\n"
    "    var xb = sc.f(sc.base);\n"
    "    ser.forEach(function (x, j) {\n"
    "      var v = x.v[i];\n"
    "      if (!sc.ok(v)) return;\n"
    "      var xv = sc.f(v), x0 = Math.min(xb, xv), w = Math.max(Math.abs(xv - xb), 1.5);\n"
    "      var y = y0 + pad + j * (barH + gap);\n"
    "      var r = el(svg, 'rect', {x: x0, y: y, width: w, height: barH, fill: x.color, 'class': 'mark'});\n"
    "      el(r, 'title', {}, c + ' \\u2014 ' + x.name + ': ' + fmt(v));\n"
    "      el(svg, 'text', {x: Math.max(xv, xb) + 4, y: y + barH - 2, 'class': 'v'}, fmt(v));\n"
    "    });\n"
    "    marks.forEach(function (m) {\n"
    "      var v = m.v[i];\n"
    "      if (!sc.ok(v)) return;\n"
    "      var x = sc.f(v);\n"
    "      var l = el(svg, 'line', {x1: x, x2: x, y1: y0 + 1, y2: y0 + bandH - 1, stroke: m.color, 'stroke-width': 3});\n"
    "      el(l, 'title', {}, c + ' \\u2014 ' + m.name + ': ' + fmt(v));\n"
    "    });\n"
    "  });\n"
    "  fig.insertBefore(svg, fig.firstChild);\n"
    "}\n"
    "/* Lines: points (x, y) per series on linear axes; refs are horizontal lines. */\n"
    "function lines(fig, s) {\n"
    "  var W = 440, H = 250, L = 54, R = 12, T = 46, B = 36, refs = s.refs || [];\n"
    "  var xs = [0], ys = [0];\n"
    "  s.series.forEach(function (x) {\n"
    "    x.pts.forEach(function (p) { if (finite(p[1])) { xs.push(p[0]); ys.push(p[1]); } });\n"
    "  });\n"
    "  refs.forEach(function (r) { ys.push(r.v); });\n"
    "  var sx = scale(xs, 'linear', L, W - R), sy = scale(ys, 'linear', H - B, T);\n"
    "  var svg = el(null, 'svg', {width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img',\n"
    "                             'class': 'lines'});\n"
    "  heading(svg, s, 4);\n"
    "  legend(svg, L, 32, s.series.filter(function (x) { return x.legend; }).map(function (x) {\n"
    "    return {kind: 'line', name: x.name, color: x.color};\n"
    "  }));\n"
    "  sx.ticks.forEach(function (t) {\n"
    "    el(svg, 'line', {x1: sx.f(t), x2: sx.f(t), y1: T, y2: H - B, stroke: '#eee'});\n"
    "    el(svg, 'text', {x: sx.f(t), y: H - B + 14, 'class': 'm'}, tick(num(t)));\n"
    "  });\n"
    "  sy.ticks.forEach(function (t) {\n"
    "    el(svg, 'line', {x1: L, x2: W - R, y1: sy.f(t), y2: sy.f(t), stroke: t === 0 ? '#888' : '#eee'});\n"
    "    el(svg, 'text', {x: L - 4, y: sy.f(t) + 4, 'class': 'bl'}, tick(num(t)));\n"
    "  });\n"
    "  el(svg, 'text', {x: (L + W - R) / 2, y: H - 4, 'class': 'm ax'}, s.x || '');\n"
    "  var ym = (T + H - B) / 2;\n"
    "  el(svg, 'text', {x: 12, y: ym, 'class': 'm ax', transform: 'rotate(-90 12 ' + ym + ')'}, s.y || '');\n"
    "  refs.forEach(function (r) {\n"
    "    var col = r.color || '#d62728';\n"
    "    el(svg, 'line', {x1: L, x2: W - R, y1: sy.f(r.v), y2: sy.f(r.v), stroke: col,\n"
    "                     'stroke-dasharray': '5 3'});\n"
    "    el(svg, 'text', {x: W - R - 2, y: sy.f(r.v) - 3, 'class': 'bl', fill: col}, r.name);\n"
    "  });\n"
    "  s.series.forEach(function (x) {\n"
    "    var pts = x.pts.filter(function (p) { return finite(p[1]); });\n"
    "    if (!pts.length) return;\n"
    "    var xy = pts.map(function (p) { return sx.f(p[0]).toFixed(1) + ',' + sy.f(p[1]).toFixed(1); });\n"
    "    var e = pts.length === 1\n"
    "        ? el(svg, 'circle', {cx: sx.f(pts[0][0]), cy: sy.f(pts[0][1]), r: 2.5, fill: x.color, 'class': 'mark'})\n"
    "        : el(svg, 'polyline', {fill: 'none', stroke: x.color, 'stroke-width': x.w || 2, 'stroke-opacity': x.o || 1,\n"
    "                               'class': 'mark', points: xy.join(' ')});\n"
    "    el(e, 'title', {}, x.name);\n"
    "  });\n"
    "  fig.insertBefore(svg, fig.firstChild);\n"
    "}\n"
    "function fail(fig, msg) {\n"
    "  var p = document.createElement('p');\n"
    "  p.className = 'report-error';\n"
    "  p.textContent = 'report-error: ' + msg;\n"
    "  (fig || document.body).appendChild(p);\n"
    "}\n"
    "var figs = document.querySelectorAll('figure.chart'), empty = 0;\n"
    "figs.forEach(function (fig) {\n"
    "  try {\n"
    "    var s = JSON.parse(fig.querySelector('script').textContent);\n"
    "    (s.kind === 'lines' ? lines : bars)(fig, s);\n"
    "  } catch (e) {\n"
    "    fail(fig, 'chart: ' + e);\n"
    "  }\n"
    "  if (!fig.querySelector('svg .mark')) {\n"
    "    empty++;\n"
    "    fig.classList.add('empty');\n"
    "  }\n"
    "});\n"
    "var p = document.createElement('p');\n"
    "p.id = 'report-check';\n"
    "p.textContent = 'report-check: charts=' + figs.length + ' empty=' + empty + ' errors=' +\n"
    "    document.querySelectorAll('.report-error').length;\n"
    "document.body.appendChild(p);\n"
    "})();\n";

void bench_html_write(bench_buf *out, const bench_header *h, const bench_result *rows, size_t n)
{
    bench_buf_printf(out,
                     "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>sona bench</title>\n"
                     "<style>%s</style>\n<script>\n%s</script></head><body>\n<h1>sona bench%s</h1>\n<ul>",
                     page_style, page_onerror, h->quick ? " --quick" : "");
    const struct {
        const char *key, *value;
    } lines[] = {{"date", h->date},          {"git", h->git},         {"build", h->build_type},
                 {"compiler", h->compiler},  {"cpu", h->cpu},         {"features", h->features},
                 {"cpu variant", h->variant}, {"backends", h->backends},
                 {"not in this build", h->missing_groups}};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        if (!lines[i].value[0])
            continue;
        bench_buf_printf(out, "<li><b>%s:</b> ", lines[i].key);
        html_text(out, lines[i].value);
        bench_buf_printf(out, "</li>\n");
    }
    for (int i = 0; i < h->ndevices; i++) {
        bench_buf_printf(out, "<li><b>device %s:</b> %s ", h->devices[i].name,
                         h->devices[i].available ? "available," : "not available:");
        html_text(out, h->devices[i].detail);
        bench_buf_printf(out, "</li>\n");
    }
    bench_buf_printf(out, "</ul>\n<noscript><p class=\"note\">The charts are drawn by the page's script; the "
                          "tables below are complete without it.</p></noscript>\n");
    summary_table(out, rows, n);
    for (size_t first = 0; first < n;) {
        size_t last = first;
        while (last < n && !strcmp(rows[last].group, rows[first].group))
            last++;
        bench_buf_printf(out, "<h2 id=\"");
        anchor(out, rows[first].group);
        bench_buf_printf(out, "\">");
        html_text(out, rows[first].group);
        bench_buf_printf(out, "</h2>\n");
        if (!strcmp(rows[first].group, "peers"))
            bench_buf_printf(out, "<p class=\"note\">Other libraries on the inputs of our rows, at our thread count "
                                  "(bench/peers/peers.py; the rules: docs/peers.md). Each timed row is followed by "
                                  "our time over theirs (below 1x: ours is faster), and each inertia, recall and "
                                  "build row by ours over theirs.</p>\n");
        group_bar_charts(out, rows, first, last);
        curve_charts(out, rows, first, last);
        group_table(out, rows, first, last);
        first = last;
    }
    bench_buf_printf(out, "<script>\n%s</script>\n</body></html>\n", page_script);
}
