/* SPDX-License-Identifier: MIT */
/* The JSON report: {"format", "header": {...}, "rows": [...]}, one record per result row. The
 * regression check (compare.c) reads it back. */
#include "harness.h"

#include "common/safetensors.h" /* sona_utf8_char_len */

#include <math.h>

/* A JSON string; a byte that is not part of a valid UTF-8 character (a device or CPU name, a
 * path, in some other encoding) becomes U+FFFD, so the report stays JSON. */
static void json_str(bench_buf *b, const char *s)
{
    bench_buf_printf(b, "\"");
    for (size_t n; *s; s += n ? n : 1) {
        const unsigned char c = (unsigned char)*s;
        n = sona_utf8_char_len(s);
        if (c == '"' || c == '\\')
            bench_buf_printf(b, "\\%c", c);
        else if (c == '\n')
            bench_buf_printf(b, "\\n");
        else if (c < 0x20)
            bench_buf_printf(b, "\\u%04x", c);
        else if (!n)
            bench_buf_printf(b, "\\ufffd");
        else
            bench_buf_printf(b, "%.*s", (int)n, s);
    }
    bench_buf_printf(b, "\"");
}

static void json_key_str(bench_buf *b, const char *key, const char *value, int comma)
{
    bench_buf_printf(b, "%s\"%s\": ", comma ? ", " : "", key);
    json_str(b, value);
}

static void json_key_num(bench_buf *b, const char *key, double value)
{
    if (isfinite(value))
        bench_buf_printf(b, ", \"%s\": %.9g", key, value);
    else
        bench_buf_printf(b, ", \"%s\": null", key);
}

void bench_json_write(bench_buf *out, const bench_header *h, const bench_result *rows, size_t n)
{
    bench_buf_printf(out, "{\n  \"format\": \"sona-bench-1\",\n  \"header\": {");
    json_key_str(out, "date", h->date, 0);
    json_key_str(out, "git", h->git, 1);
    json_key_str(out, "build_type", h->build_type, 1);
    json_key_str(out, "compiler", h->compiler, 1);
    json_key_str(out, "cpu", h->cpu, 1);
    json_key_str(out, "features", h->features, 1);
    json_key_num(out, "cores", h->cores);
    json_key_num(out, "threads", h->threads);
    json_key_str(out, "cpu_variant", h->variant, 1);
    json_key_str(out, "backends", h->backends, 1);
    bench_buf_printf(out, ", \"quick\": %s, \"devices\": [", h->quick ? "true" : "false");
    for (int i = 0; i < h->ndevices; i++) {
        bench_buf_printf(out, "%s{", i ? ", " : "");
        json_key_str(out, "name", h->devices[i].name, 0);
        bench_buf_printf(out, ", \"available\": %s", h->devices[i].available ? "true" : "false");
        json_key_str(out, "detail", h->devices[i].detail, 1);
        bench_buf_printf(out, "}");
    }
    bench_buf_printf(out, "]");
    json_key_str(out, "missing_groups", h->missing_groups, 1);
    bench_buf_printf(out, "},\n  \"rows\": [");
    for (size_t i = 0; i < n; i++) {
        const bench_result *r = &rows[i];
        bench_buf_printf(out, "%s\n    {", i ? "," : "");
        json_key_str(out, "group", r->group, 0);
        json_key_str(out, "case", r->name, 1);
        json_key_str(out, "backend", r->backend, 1);
        json_key_str(out, "kind", bench_kind_name(r->kind), 1);
        if (r->kind == BENCH_TIMED) {
            json_key_num(out, "median_us", r->median_us);
            json_key_num(out, "p99_us", r->p99_us);
            json_key_num(out, "samples", (double)r->samples);
            json_key_num(out, "calls_per_sample", (double)r->batch);
        }
        if (r->target_us > 0)
            json_key_num(out, "target_us", r->target_us);
        if (r->stretch_us > 0)
            json_key_num(out, "stretch_us", r->stretch_us);
        if (r->expected_us > 0)
            json_key_num(out, "expected_us", r->expected_us);
        if (r->kind == BENCH_TIMED) {
            json_key_str(out, "verdict", bench_verdict(r), 1);
            if (bench_speedup(r) > 0)
                json_key_num(out, "speedup_vs_expected", bench_speedup(r));
            if (r->vs_scalar > 0)
                json_key_num(out, "speedup_vs_scalar", r->vs_scalar);
            if (bench_gflops(r) > 0)
                json_key_num(out, "gflops", bench_gflops(r));
            if (bench_gbps(r) > 0)
                json_key_num(out, "gbps", bench_gbps(r));
        }
        if (r->flops > 0)
            json_key_num(out, "flops", r->flops);
        if (r->bytes > 0)
            json_key_num(out, "bytes", r->bytes);
        if (r->kind == BENCH_VALUE) {
            json_key_str(out, "metric", r->metric, 1);
            json_key_num(out, "value", r->value);
            json_key_str(out, "unit", r->unit, 1);
        }
        if (r->kind == BENCH_SKIPPED || r->kind == BENCH_FAILED)
            json_key_str(out, "reason", r->note, 1);
        bench_buf_printf(out, "}");
    }
    bench_buf_printf(out, "\n  ]\n}\n");
}
