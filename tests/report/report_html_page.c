/* SPDX-License-Identifier: MIT */
/* Writes `sona bench`'s HTML report (bench/report_html.c) for the rows of a JSON report:
 *   report_html_page REPORT.json PAGE.html
 * The test check_report_html.sh renders the page in headless Chromium; its input is a small
 * fixed report (tests/data/bench_report_small.json) with a row of every kind the page charts. */
#include "compare.h" /* bench_read_file */
#include "harness.h"
#include "json_read.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void copy(char *dst, size_t len, const json_value *o, const char *key)
{
    snprintf(dst, len, "%s", json_get_str(o, key, ""));
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: report_html_page REPORT.json PAGE.html\n");
        return 2;
    }
    char *text = bench_read_file(argv[1]), err[200];
    json_value doc;
    if (!text || json_parse(text, &doc, err, sizeof err) != 0) {
        fprintf(stderr, "report_html_page: cannot read %s: %s\n", argv[1], text ? err : "no such file");
        free(text);
        return 1;
    }
    const json_value *hv = json_get(&doc, "header"), *rv = json_get(&doc, "rows");
    if (!rv || rv->type != JSON_ARRAY) {
        fprintf(stderr, "report_html_page: %s has no rows\n", argv[1]);
        json_free(&doc);
        free(text);
        return 1;
    }
    bench_header h;
    memset(&h, 0, sizeof h);
    copy(h.date, sizeof h.date, hv, "date");
    copy(h.git, sizeof h.git, hv, "git");
    copy(h.build_type, sizeof h.build_type, hv, "build_type");
    copy(h.compiler, sizeof h.compiler, hv, "compiler");
    copy(h.cpu, sizeof h.cpu, hv, "cpu");
    copy(h.features, sizeof h.features, hv, "features");
    copy(h.variant, sizeof h.variant, hv, "cpu_variant");
    copy(h.backends, sizeof h.backends, hv, "backends");
    copy(h.missing_groups, sizeof h.missing_groups, hv, "missing_groups");
    const json_value *q = json_get(hv, "quick");
    h.quick = q && q->type == JSON_BOOL && q->boolean;

    bench_result *rows = calloc(rv->count ? rv->count : 1, sizeof *rows);
    for (size_t i = 0; rows && i < rv->count; i++) {
        const json_value *o = &rv->items[i];
        bench_result *r = &rows[i];
        r->kind = bench_kind_parse(json_get_str(o, "kind", ""));
        copy(r->group, sizeof r->group, o, "group");
        copy(r->name, sizeof r->name, o, "case");
        copy(r->backend, sizeof r->backend, o, "backend");
        r->median_us = json_get_num(o, "median_us", 0);
        r->p99_us = json_get_num(o, "p99_us", 0);
        r->samples = (long)json_get_num(o, "samples", 0);
        r->batch = (long)json_get_num(o, "calls_per_sample", 0);
        r->target_us = json_get_num(o, "target_us", 0);
        r->stretch_us = json_get_num(o, "stretch_us", 0);
        r->expected_us = json_get_num(o, "expected_us", 0);
        r->flops = json_get_num(o, "flops", 0);
        r->bytes = json_get_num(o, "bytes", 0);
        copy(r->metric, sizeof r->metric, o, "metric");
        copy(r->unit, sizeof r->unit, o, "unit");
        const json_value *v = json_get(o, "value");
        r->value = v && v->type == JSON_NUMBER ? v->number : NAN;
        copy(r->note, sizeof r->note, o, "reason");
    }
    int rc = 1;
    if (rows) {
        for (size_t first = 0; first < rv->count;) { /* as the harness does at each group's end */
            size_t last = first;
            while (last < rv->count && !strcmp(rows[last].group, rows[first].group))
                last++;
            bench_fill_vs_scalar(rows + first, last - first);
            first = last;
        }
        bench_buf page = {0};
        bench_html_write(&page, &h, rows, rv->count);
        rc = bench_buf_write(&page, argv[2]) == 0 ? 0 : 1;
        if (rc)
            fprintf(stderr, "report_html_page: cannot write %s\n", argv[2]);
        bench_buf_free(&page);
    }
    free(rows);
    json_free(&doc);
    free(text);
    return rc;
}
