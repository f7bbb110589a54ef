/* The HTML report: one self-contained page (inline CSS and SVG, no scripts, no network) with,
 * per group, a bar chart comparing backends and the spec's expected value, then the rows. */
#include "harness.h"

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

static void cell(bench_buf *b, const char *s)
{
    bench_buf_printf(b, "<td>");
    html_text(b, s);
    bench_buf_printf(b, "</td>");
}

static void group_table(bench_buf *b, const bench_result *rows, size_t first, size_t last)
{
    bench_buf_printf(b, "<table><tr><th>case</th><th>backend</th><th>median</th><th>p99</th>"
                        "<th>target</th><th>expected</th><th>verdict</th><th>vs spec</th><th>rate</th></tr>\n");
    for (size_t i = first; i < last; i++) {
        const bench_result *r = &rows[i];
        bench_buf_printf(b, "<tr>");
        cell(b, r->name);
        cell(b, r->backend);
        char t[64];
        if (r->kind == BENCH_SKIPPED || r->kind == BENCH_FAILED) {
            bench_buf_printf(b, "<td colspan=\"7\" class=\"skip\">%s: ", r->kind == BENCH_SKIPPED ? "skipped" : "FAILED");
            html_text(b, r->note);
            bench_buf_printf(b, "</td></tr>\n");
            continue;
        }
        if (r->kind == BENCH_VALUE) {
            snprintf(t, sizeof t, "%s = %.6g %s", r->metric, r->value, r->unit);
            bench_buf_printf(b, "<td colspan=\"7\">");
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
        if (bench_speedup(r) > 0)
            snprintf(t, sizeof t, "%.2fx", bench_speedup(r));
        else
            snprintf(t, sizeof t, "-");
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
}

void bench_html_write(bench_buf *out, const bench_header *h, const bench_result *rows, size_t n)
{
    bench_buf_printf(out,
                     "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>sona bench</title>\n"
                     "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse;margin:.5em 0 2em}"
                     "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,td:nth-child(2)"
                     "{text-align:left}.skip{text-align:left;color:#777}svg text{font:12px sans-serif}"
                     ".bl{text-anchor:end}.c{font-weight:bold}.v{fill:#333}</style></head><body>\n"
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
        group_table(out, rows, first, last);
        first = last;
    }
    bench_buf_printf(out, "</body></html>\n");
}
