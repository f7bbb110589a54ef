/* SPDX-License-Identifier: MIT */
/* `sona bench --peers FILE`: the peers' rows (bench/peers/peers.py: PyTorch, FAISS,
 * scikit-learn, hnswlib on our rows' inputs) merged into this run's report, with our time over
 * theirs beside each. */
#include "compare.h"
#include "harness.h"
#include "json_read.h"

#include "dispatch/dispatch.h"

#include <stdlib.h>
#include <string.h>

/* Our row of that group and case, timed or (metric not NULL) the value of that metric: on the
 * CPU backend the library chose when there is one (the pattern groups run only there), else the
 * first. */
static const bench_result *our_row(const bench_ctx *ctx, size_t nours, const char *group, const char *name,
                                   const char *metric)
{
    const char *chosen = sona_cpu_backend()->name;
    const bench_result *first = NULL;
    for (size_t i = 0; i < nours; i++) {
        const bench_result *r = &ctx->rows[i];
        if (r->kind != (metric ? BENCH_VALUE : BENCH_TIMED) || strcmp(r->group, group) ||
            strcmp(r->name, name) || (metric && strcmp(r->metric, metric)))
            continue;
        if (!strcmp(r->backend, chosen))
            return r;
        if (!first)
            first = r;
    }
    return first;
}

int bench_merge_peers(bench_ctx *ctx, const char *path)
{
    char *text = bench_read_file(path);
    if (!text) {
        fprintf(stderr, "sona bench: --peers %s: cannot read it\n", path);
        return -1;
    }
    json_value doc;
    char err[200];
    const int parsed = json_parse(text, &doc, err, sizeof err);
    free(text);
    if (parsed != 0) {
        fprintf(stderr, "sona bench: --peers %s: %s\n", path, err);
        return -1;
    }
    const json_value *rows = json_get(&doc, "rows");
    if (!rows || rows->type != JSON_ARRAY) {
        fprintf(stderr, "sona bench: --peers %s: no \"rows\" array\n", path);
        json_free(&doc);
        return -1;
    }
    const size_t nours = ctx->nrows;
    for (size_t i = 0; i < rows->count; i++) {
        const json_value *j = &rows->items[i];
        bench_result r = {.kind = bench_kind_parse(json_get_str(j, "kind", "failed"))};
        snprintf(r.group, sizeof r.group, "%s", json_get_str(j, "group", "peers"));
        snprintf(r.name, sizeof r.name, "%s", json_get_str(j, "case", "?"));
        snprintf(r.backend, sizeof r.backend, "%s", json_get_str(j, "backend", "-"));
        r.median_us = json_get_num(j, "median_us", 0);
        r.p99_us = json_get_num(j, "p99_us", 0);
        r.samples = (long)json_get_num(j, "samples", 0);
        r.batch = (long)json_get_num(j, "calls_per_sample", 1);
        r.flops = json_get_num(j, "flops", 0);
        snprintf(r.metric, sizeof r.metric, "%s", json_get_str(j, "metric", "value"));
        snprintf(r.unit, sizeof r.unit, "%s", json_get_str(j, "unit", ""));
        r.value = json_get_num(j, "value", 0);
        snprintf(r.note, sizeof r.note, "%s", json_get_str(j, "reason", ""));
        if (r.kind == BENCH_TIMED && r.median_us <= 0)
            r.kind = BENCH_FAILED;
        bench_add_row(ctx, &r);
        const char *og = json_get_str(j, "ours_group", NULL), *oc = json_get_str(j, "ours_case", NULL);
        const char *om = r.kind == BENCH_VALUE ? json_get_str(j, "ours_metric", NULL) : NULL;
        if (!og || !oc || (r.kind != BENCH_TIMED && !om))
            continue;
        const bench_result *ours = our_row(ctx, nours, og, oc, om);
        const double theirs = om ? r.value : r.median_us;
        bench_result ratio = r;
        ratio.kind = ours && theirs > 0 ? BENCH_VALUE : BENCH_SKIPPED;
        snprintf(ratio.metric, sizeof ratio.metric, "ours/theirs %s", om ? om : "time");
        snprintf(ratio.unit, sizeof ratio.unit, "x");
        ratio.value = ratio.kind == BENCH_VALUE ? (om ? ours->value : ours->median_us) / theirs : 0;
        snprintf(ratio.note, sizeof ratio.note, "our row %s %s%s%s was not run", og, oc, om ? " " : "",
                 om ? om : "");
        bench_add_row(ctx, &ratio);
    }
    json_free(&doc);
    return 0;
}
