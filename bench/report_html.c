/* SPDX-License-Identifier: MIT */
/* The HTML report: one self-contained page (inline CSS and SVG, no scripts, no network) with,
 * per group, a bar chart comparing backends and the spec's expected value, then the rows. */
#include "harness.h"

#include <math.h>
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

static const char *backend_color(const char *name)
{
    static const struct {
        const char *name, *color;
    } colors[] = {{"scalar", "#8c8c8c"}, {"avx2", "#1f77b4"}, {"avx512", "#2ca02c"}, {"neon", "#9467bd"},
                  {"opencl", "#ff7f0e"}, {"cuda", "#76b900"},  {"spec", "#d62728"}};
    for (size_t i = 0; i < sizeof colors / sizeof colors[0]; i++)
        if (!strcmp(colors[i].name, name))
            return colors[i].color;
    return "#17becf";
}

enum { CHART_W = 860, LABEL_W = 300, BAR_W = 420, BAR_H = 14, CASE_GAP = 10 };

static void bar(bench_buf *b, int *y, const char *label, const char *color, double us, double max_us)
{
    char t[32];
    bench_format_time(t, sizeof t, us);
    const double w = max_us > 0 ? (double)BAR_W * us / max_us : 0;
    bench_buf_printf(b, "<text x=\"%d\" y=\"%d\" class=\"bl\">", LABEL_W - 6, *y + BAR_H - 3);
    html_text(b, label);
    bench_buf_printf(b, "</text><rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\"/>"
                        "<text x=\"%.1f\" y=\"%d\" class=\"v\">%s</text>\n",
                     LABEL_W, *y, w < 1 ? 1 : w, BAR_H, color, LABEL_W + (w < 1 ? 1 : w) + 4,
                     *y + BAR_H - 3, t);
    *y += BAR_H + 2;
}

/* One chart for rows[first..last): per case, a bar per backend and one for the spec's value,
 * scaled to the case's largest (cases differ by orders of magnitude). */
static void group_chart(bench_buf *b, const bench_result *rows, size_t first, size_t last)
{
    bench_buf body = {0};
    int y = 4;
    for (size_t i = first; i < last; i++) {
        int seen = 0; /* the case was charted at an earlier row */
        for (size_t j = first; j < i && !seen; j++)
            seen = !strcmp(rows[j].name, rows[i].name);
        if (seen)
            continue;
        double max_us = 0, expected = 0;
        int bars = 0;
        for (size_t j = i; j < last; j++)
            if (!strcmp(rows[j].name, rows[i].name) && rows[j].kind == BENCH_TIMED) {
                max_us = rows[j].median_us > max_us ? rows[j].median_us : max_us;
                expected = rows[j].expected_us > expected ? rows[j].expected_us : expected;
                bars++;
            }
        if (!bars)
            continue;
        max_us = expected > max_us ? expected : max_us;
        bench_buf_printf(&body, "<text x=\"4\" y=\"%d\" class=\"c\">", y + 11);
        html_text(&body, rows[i].name);
        bench_buf_printf(&body, "</text>\n");
        y += 16;
        for (size_t j = i; j < last; j++)
            if (!strcmp(rows[j].name, rows[i].name) && rows[j].kind == BENCH_TIMED)
                bar(&body, &y, rows[j].backend, backend_color(rows[j].backend), rows[j].median_us, max_us);
        if (expected > 0)
            bar(&body, &y, "spec expected", backend_color("spec"), expected, max_us);
        y += CASE_GAP;
    }
    if (body.len)
        bench_buf_printf(b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
                            "role=\"img\">\n%s</svg>\n",
                         CHART_W, y, body.s);
    bench_buf_free(&body);
}

/* ---- learning curves ---- */

/* Chart lines are the rows TASK/SERIES@X (bench_curve_point): one chart per TASK, one line per
 * (SERIES, metric), thick for the metric "mean", thin and faint for the others (each seed's). */
enum { LC_W = 430, LC_H = 220, LC_L = 56, LC_R = 10, LC_T = 36, LC_B = 30 };
/* The y range always shows 0 and this lift, the learning group's goal (LIFT_GOAL of
 * group_learning.c), drawn dashed: a flat line at 0 then reads as "far from the goal". */
#define LC_GOAL 0.1

static const char *const lc_colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};

/* Whether rows[j] is a curve point of the task named by the first tlen characters of `task`;
 * its series' start and length in *series, *slen. */
static int lc_point_of(const bench_result *r, const char *task, size_t tlen, const char **series, size_t *slen,
                       double *x)
{
    size_t t;
    if (!bench_curve_point(r, &t, slen, x) || t != tlen || strncmp(r->name, task, tlen))
        return 0;
    *series = r->name + tlen + 1;
    return 1;
}

static void lc_number(char *buf, size_t len, double v)
{
    snprintf(buf, len, "%.3g", v);
}

static void curve_chart(bench_buf *b, const bench_result *rows, size_t i0, size_t last, size_t tlen)
{
    const char *task = rows[i0].name, *series, *s2;
    size_t slen, slen2;
    double x, xmax = 0, ymin = 0, ymax = LC_GOAL;
    for (size_t j = i0; j < last; j++)
        if (lc_point_of(&rows[j], task, tlen, &series, &slen, &x) && isfinite(rows[j].value)) {
            xmax = x > xmax ? x : xmax;
            ymin = rows[j].value < ymin ? rows[j].value : ymin;
            ymax = rows[j].value > ymax ? rows[j].value : ymax;
        }
    if (xmax <= 0)
        xmax = 1;
    const double pad = 0.05 * (ymax - ymin);
    ymin -= pad;
    ymax += pad;
    const double pw = LC_W - LC_L - LC_R, ph = LC_H - LC_T - LC_B;
#define LC_PX(v) (LC_L + pw * (v) / xmax)
#define LC_PY(v) (LC_T + ph * (ymax - (v)) / (ymax - ymin))
    bench_buf_printf(b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" role=\"img\" "
                        "class=\"lc\">\n<text x=\"%d\" y=\"14\" class=\"c\">",
                     LC_W, LC_H, LC_L);
    char title[96];
    snprintf(title, sizeof title, "%.*s", (int)tlen, task);
    html_text(b, title);
    bench_buf_printf(b, "</text>\n<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
                        "stroke=\"#bbb\"/>\n",
                     LC_L, LC_T, pw, ph);
    /* y: the range's ends, 0 and the goal; x: 0, the middle, the end. */
    const double yt[4] = {ymin, 0, LC_GOAL, ymax};
    char num[32];
    for (int k = 0; k < 4; k++) {
        if (k == 3 && ymax - LC_GOAL < 0.08 * (ymax - ymin))
            continue; /* would overwrite the goal's label */
        if (k == 0 && 0 - ymin < 0.08 * (ymax - ymin))
            continue; /* would overwrite 0's */
        lc_number(num, sizeof num, yt[k]);
        bench_buf_printf(b, "<text x=\"%d\" y=\"%.1f\" class=\"bl\">%s</text>", LC_L - 4, LC_PY(yt[k]) + 4, num);
        if (k == 1 || k == 2)
            bench_buf_printf(b, "<line x1=\"%d\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#999\"%s/>", LC_L,
                             LC_L + pw, LC_PY(yt[k]), LC_PY(yt[k]), k == 2 ? " stroke-dasharray=\"4 3\"" : "");
        bench_buf_printf(b, "\n");
    }
    for (int k = 0; k <= 2; k++) /* the last one ends at the frame's edge */
        bench_buf_printf(b, "<text x=\"%.1f\" y=\"%d\" class=\"%s\">%.0f</text>\n", LC_PX(xmax * k / 2),
                         LC_H - LC_B + 14, k == 2 ? "bl" : "m", xmax * k / 2);
    bench_buf_printf(b, "<text x=\"%.1f\" y=\"%d\" class=\"m\">trajectories</text>"
                        "<text x=\"12\" y=\"%.1f\" class=\"m\" transform=\"rotate(-90 12 %.1f)\">lift</text>\n",
                     LC_L + pw / 2, LC_H - 2, LC_T + ph / 2, LC_T + ph / 2);
    /* One polyline per (series, metric), in the order they first appear; a colour per series. */
    struct {
        const char *name;
        size_t len;
    } seen[8];
    int nseen = 0;
    double legend_x = LC_L;
    char text[96];
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
        const char *stroke = lc_colors[(color < 0 ? nseen : color) % (int)(sizeof lc_colors / sizeof lc_colors[0])];
        if (color < 0) { /* a new series: its legend entry, in its colour */
            if (nseen < (int)(sizeof seen / sizeof seen[0])) {
                seen[nseen].name = series;
                seen[nseen++].len = slen;
            }
            snprintf(text, sizeof text, "%.*s", (int)slen, series);
            bench_buf_printf(b, "<text x=\"%.1f\" y=\"30\" fill=\"%s\">", legend_x, stroke);
            html_text(b, text);
            bench_buf_printf(b, "</text>\n");
            legend_x += 7.0 * (double)slen + 14;
        }
        const int mean = !strcmp(rows[j].metric, "mean");
        bench_buf_printf(b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%s\"%s points=\"", stroke,
                         mean ? "2" : "1", mean ? "" : " stroke-opacity=\"0.35\"");
        for (size_t k = j; k < last; k++)
            if (lc_point_of(&rows[k], task, tlen, &s2, &slen2, &x) && slen2 == slen && !strncmp(s2, series, slen) &&
                !strcmp(rows[k].metric, rows[j].metric) && isfinite(rows[k].value))
                bench_buf_printf(b, "%.1f,%.1f ", LC_PX(x), LC_PY(rows[k].value));
        bench_buf_printf(b, "\"/>\n");
    }
#undef LC_PX
#undef LC_PY
    bench_buf_printf(b, "</svg>\n");
}

/* A chart per task of rows[first..last) that has curve points. */
static void curve_charts(bench_buf *b, const bench_result *rows, size_t first, size_t last)
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
            bench_buf_printf(b, "<p>Lift (score after N trajectories - score before any) against trajectories; "
                                "thick: the mean over seeds, thin: each seed; dashed: lift %g.</p>\n<div>\n",
                             LC_GOAL);
        any = 1;
        curve_chart(b, rows, i, last, tlen);
    }
    if (any)
        bench_buf_printf(b, "</div>\n");
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

void bench_html_write(bench_buf *out, const bench_header *h, const bench_result *rows, size_t n)
{
    bench_buf_printf(out,
                     "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>sona bench</title>\n"
                     "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse;margin:.5em 0 2em}"
                     "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,td:nth-child(2)"
                     "{text-align:left}.skip{text-align:left;color:#777}svg text{font:12px sans-serif}"
                     ".bl{text-anchor:end}.c{font-weight:bold}.v{fill:#333}.m{text-anchor:middle}svg.lc{margin:0 8px 8px 0}"
                     "</style></head><body>\n"
                     "<h1>sona bench%s</h1>\n<ul>", h->quick ? " --quick" : "");
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
    bench_buf_printf(out, "</ul>\n<p>Bars: median time per call (shorter is better), scaled per case; "
                          "red: the spec's expected value.</p>\n");
    for (size_t first = 0; first < n;) {
        size_t last = first;
        while (last < n && !strcmp(rows[last].group, rows[first].group))
            last++;
        bench_buf_printf(out, "<h2>");
        html_text(out, rows[first].group);
        bench_buf_printf(out, "</h2>\n");
        group_chart(out, rows, first, last);
        curve_charts(out, rows, first, last);
        group_table(out, rows, first, last);
        first = last;
    }
    bench_buf_printf(out, "</body></html>\n");
}
