/* SPDX-License-Identifier: MIT */
/* The measuring half of `sona bench`: backends, timing, statistics, result rows. */
#include "harness.h"

#include "common/clock.h"
#include "cpu/cpu.h"
#include "dispatch/dispatch.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef SONA_BENCH_HAVE_GIT_REV_H
#include "sona_bench_git_rev.h" /* SONA_BENCH_GIT_REV, generated at build time */
#endif
#ifndef SONA_BENCH_BUILD_TYPE
#define SONA_BENCH_BUILD_TYPE "unknown"
#endif
#ifndef SONA_BENCH_GIT_REV
#define SONA_BENCH_GIT_REV "unknown"
#endif

static double now_s(void) { return sona_clock_s(CLOCK_MONOTONIC); }

/* The shortest sample worth timing: far above the clock's resolution and its own cost. */
static double min_sample_seconds(void)
{
    struct timespec res;
    double resolution = 1e-9;
    if (clock_getres(CLOCK_MONOTONIC, &res) == 0)
        resolution = (double)res.tv_sec + (double)res.tv_nsec * 1e-9;
    const int reads = 1000;
    const double t0 = now_s();
    for (int i = 0; i < reads - 1; i++)
        (void)now_s();
    const double read_cost = (now_s() - t0) / reads;
    return fmax(20e-6, fmax(1000.0 * resolution, 500.0 * read_cost));
}

static void add_backend(bench_ctx *ctx, const sona_backend *b, const char *label)
{
    if (ctx->nbackends < BENCH_MAX_BACKENDS) {
        ctx->backends[ctx->nbackends] = b;
        ctx->labels[ctx->nbackends] = label;
        ctx->nbackends++;
    }
}

void bench_ctx_init(bench_ctx *ctx, int quick)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->quick = quick;
    ctx->tty = isatty(STDERR_FILENO);
    ctx->policy = (bench_policy){.warmup_s = quick ? 0.02 : 0.05,
                                 .row_budget_s = quick ? 0.1 : 0.5,
                                 .min_sample_s = min_sample_seconds(),
                                 .min_samples = quick ? 5 : 10,
                                 .max_samples = quick ? 300 : 2000};
    /* Every CPU variant this host runs (their merged tables, so sona_lora handles work on
     * them), then every GPU backend that is available. */
    (void)sona_cpu_backend(); /* builds the merged variant tables */
    const sona_cpu_variant *vars;
    const uint32_t nv = sona_cpu_variants(&vars);
    for (uint32_t i = 0; i < nv; i++) {
        char why[160];
        const sona_backend *b = sona_cpu_variant_get(vars[i].ops->name, why, sizeof why);
        if (b)
            add_backend(ctx, b, b->name);
    }
    static const char *const gpus[] = {"opencl", "cuda"};
    for (size_t g = 0; g < sizeof gpus / sizeof gpus[0]; g++) {
        const sona_backend *b;
        char why[256];
        if (sona_backend_get(gpus[g], &b, why, sizeof why) == SONA_OK)
            add_backend(ctx, b, gpus[g]);
    }
}

void bench_ctx_free(bench_ctx *ctx)
{
    free(ctx->rows);
    memset(ctx, 0, sizeof *ctx);
}

int bench_quick(const bench_ctx *ctx) { return ctx->quick; }

int bench_backends(const bench_ctx *ctx, const sona_backend **out, const char **labels, int max)
{
    int n = 0;
    for (; n < ctx->nbackends && n < max; n++) {
        out[n] = ctx->backends[n];
        if (labels)
            labels[n] = ctx->labels[n];
    }
    return n;
}

static int contains_nocase(const char *hay, const char *needle)
{
    for (; *hay; hay++) {
        size_t i = 0;
        while (needle[i] && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (!needle[i])
            return 1;
    }
    return 0;
}

int bench_backend_is_gpu(const sona_backend *b)
{
    if (b->host_memory)
        return 0;
    /* PoCL names its CPU device "pthread-<cpu>" or "cpu-<cpu>". */
    static const char *const cpu_markers[] = {"pocl", "portable computing", "pthread", "cpu-",
                                              "cpu device"};
    const char *dev = b->device ? b->device : "";
    for (size_t i = 0; i < sizeof cpu_markers / sizeof cpu_markers[0]; i++)
        if (contains_nocase(dev, cpu_markers[i]))
            return 0;
    return 1;
}

static const void *op_fn(const sona_backend *b, sona_op op)
{
    switch (op) {
#define SONA_OP(id, field, args) \
    case SONA_OP_##id: return (const void *)b->field;
#include "backend/ops.def"
#undef SONA_OP
    default: return NULL;
    }
}

int bench_backend_own_op(const sona_backend *b, sona_op op)
{
    const void *fn = op_fn(b, op);
    if (!fn)
        return 0;
    if (!b->host_memory || !strcmp(b->name, "scalar"))
        return 1;
    return fn != op_fn(&sona_cpu_scalar, op);
}

/* ---- rows ------------------------------------------------------------------------------ */

static bench_result *new_row(bench_ctx *ctx, const bench_row *row, bench_kind kind)
{
    if (ctx->nrows == ctx->cap) {
        size_t cap = ctx->cap ? 2 * ctx->cap : 64;
        bench_result *rows = realloc(ctx->rows, cap * sizeof *rows);
        if (!rows) {
            fprintf(stderr, "sona bench: out of memory\n");
            exit(2);
        }
        ctx->rows = rows;
        ctx->cap = cap;
    }
    bench_result *r = &ctx->rows[ctx->nrows++];
    memset(r, 0, sizeof *r);
    r->kind = kind;
    snprintf(r->group, sizeof r->group, "%s", row->group ? row->group : "?");
    snprintf(r->name, sizeof r->name, "%s", row->name ? row->name : "?");
    snprintf(r->backend, sizeof r->backend, "%s", row->backend ? row->backend : "-");
    r->target_us = row->target_us;
    r->stretch_us = row->stretch_us;
    r->expected_us = row->expected_us;
    r->flops = row->flops;
    r->bytes = row->bytes;
    return r;
}

static void progress(const bench_ctx *ctx, const bench_row *row)
{
    if (!ctx->tty)
        return;
    fprintf(stderr, "\r\033[K[%d/%d] %s  %s  %s ...", ctx->group_index, ctx->group_total,
            row->group ? row->group : "", row->name ? row->name : "", row->backend ? row->backend : "");
    fflush(stderr);
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One call of fn; with a device backend b, also waits for it (sync) or, when b has device
 * timers, times it with them and gives its device time in *device_s. */
static int call_once(const sona_backend *b, int (*fn)(void *arg), void *arg, double *device_s)
{
    const int timed = b && b->timer_start && b->timer_stop;
    double us = 0;
    if (timed && b->timer_start(b->ctx) != SONA_OK)
        return 1;
    if (fn(arg) != 0)
        return 1;
    if (timed) {
        if (b->timer_stop(b->ctx, &us) != SONA_OK)
            return 1;
        *device_s = 1e-6 * us;
    } else if (b && b->sync && b->sync(b->ctx) != SONA_OK) {
        return 1;
    }
    return 0;
}

/* b: NULL when fn waits for its own work; else fn only issues work on b, and a sample is a
 * batch of calls between b's device timers when it has them (no host wait between calls),
 * or host-timed calls each followed by b's sync. */
static int measure(bench_ctx *ctx, const bench_row *row, const sona_backend *b,
                   int (*fn)(void *arg), void *arg)
{
    progress(ctx, row);
    const int device_timed = b && b->timer_start && b->timer_stop;
    const bench_policy *p = &ctx->policy;
    /* Warm-up: caches, page faults, lazy GPU compilation; also estimates the call's cost. */
    long calls = 0;
    double elapsed;
    const double w0 = now_s();
    double device_s = 0;
    do {
        if (call_once(b, fn, arg, &device_s) != 0)
            goto failed;
        calls++;
        elapsed = now_s() - w0;
    } while (elapsed < p->warmup_s);
    const double per_call = device_timed && device_s > 0 ? device_s : elapsed / (double)calls;
    const long batch = per_call >= p->min_sample_s ? 1 : (long)ceil(p->min_sample_s / per_call);
    /* Long calls: fewer samples, so one row never takes minutes. */
    int min_samples = p->min_samples;
    if (per_call > 1.0)
        min_samples = ctx->quick ? 1 : 3;
    else if (per_call > 0.05)
        min_samples = ctx->quick ? 3 : 5;

    double *samples = malloc((size_t)p->max_samples * sizeof *samples);
    if (!samples)
        goto failed;
    int n = 0;
    const double s0 = now_s();
    while (n < p->max_samples) {
        const double t0 = now_s();
        double us = 0;
        int bad = device_timed && b->timer_start(b->ctx) != SONA_OK;
        for (long i = 0; i < batch && !bad; i++)
            bad = device_timed ? fn(arg) != 0 : call_once(b, fn, arg, &device_s) != 0;
        if (!bad && device_timed)
            bad = b->timer_stop(b->ctx, &us) != SONA_OK;
        if (bad) {
            free(samples);
            goto failed;
        }
        const double t1 = now_s();
        samples[n++] = (device_timed ? 1e-6 * us : t1 - t0) / (double)batch;
        if (n >= min_samples && t1 - s0 >= p->row_budget_s)
            break;
    }
    qsort(samples, (size_t)n, sizeof *samples, cmp_double);
    bench_result *r = new_row(ctx, row, BENCH_TIMED);
    r->median_us = 1e6 * (n % 2 ? samples[n / 2] : 0.5 * (samples[n / 2 - 1] + samples[n / 2]));
    r->p99_us = 1e6 * samples[(int)ceil(0.99 * n) - 1];
    r->samples = n;
    r->batch = batch;
    free(samples);
    return 0;

failed:;
    bench_result *f = new_row(ctx, row, BENCH_FAILED);
    snprintf(f->note, sizeof f->note, "the benchmarked call failed");
    return -1;
}

int bench_measure(bench_ctx *ctx, const bench_row *row, int (*fn)(void *arg), void *arg)
{
    return measure(ctx, row, NULL, fn, arg);
}

int bench_measure_on(bench_ctx *ctx, const bench_row *row, const sona_backend *b,
                     int (*fn)(void *arg), void *arg)
{
    return measure(ctx, row, b, fn, arg);
}

void bench_report(bench_ctx *ctx, const bench_row *row, const char *metric, double value,
                  const char *unit)
{
    progress(ctx, row);
    bench_result *r = new_row(ctx, row, BENCH_VALUE);
    snprintf(r->metric, sizeof r->metric, "%s", metric ? metric : "value");
    snprintf(r->unit, sizeof r->unit, "%s", unit ? unit : "");
    r->value = value;
}

void bench_add_row(bench_ctx *ctx, const bench_result *r)
{
    const bench_row row = {.group = r->group, .name = r->name, .backend = r->backend};
    bench_result *copy = new_row(ctx, &row, r->kind);
    *copy = *r;
}

void bench_skip(bench_ctx *ctx, const bench_row *row, const char *why)
{
    bench_result *r = new_row(ctx, row, BENCH_SKIPPED);
    snprintf(r->note, sizeof r->note, "%s", why ? why : "skipped");
}

/* ---- derived figures ------------------------------------------------------------------- */

const char *bench_verdict(const bench_result *r)
{
    if (r->kind != BENCH_TIMED || (r->target_us <= 0 && r->stretch_us <= 0))
        return "-";
    if (r->stretch_us > 0 && r->median_us < r->stretch_us)
        return "meets stretch";
    if (r->target_us > 0 && r->median_us < r->target_us)
        return "meets target";
    return "misses";
}

double bench_speedup(const bench_result *r)
{
    return r->kind == BENCH_TIMED && r->expected_us > 0 && r->median_us > 0 ? r->expected_us / r->median_us : 0;
}

void bench_fill_vs_scalar(bench_result *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bench_result *r = &rows[i];
        r->vs_scalar = 0;
        if (r->kind != BENCH_TIMED || r->median_us <= 0 || !strcmp(r->backend, "scalar"))
            continue;
        for (size_t j = 0; j < n; j++) {
            const bench_result *s = &rows[j];
            if (s->kind == BENCH_TIMED && s->median_us > 0 && !strcmp(s->backend, "scalar") &&
                !strcmp(s->group, r->group) && !strcmp(s->name, r->name)) {
                r->vs_scalar = s->median_us / r->median_us;
                break;
            }
        }
    }
}

double bench_gflops(const bench_result *r)
{
    return r->kind == BENCH_TIMED && r->flops > 0 && r->median_us > 0 ? r->flops / (r->median_us * 1e3) : 0;
}

double bench_gbps(const bench_result *r)
{
    return r->kind == BENCH_TIMED && r->bytes > 0 && r->median_us > 0 ? r->bytes / (r->median_us * 1e3) : 0;
}

int bench_curve_point(const bench_result *r, size_t *task_len, size_t *series_len, double *x)
{
    if (r->kind != BENCH_VALUE)
        return 0;
    const char *at = strrchr(r->name, '@');
    if (!at)
        return 0;
    const char *slash = NULL;
    for (const char *p = r->name; p < at; p++)
        if (*p == '/')
            slash = p;
    if (!slash || strncmp(slash + 1, "curve", 5) != 0 || !at[1])
        return 0;
    char *end;
    const double v = strtod(at + 1, &end);
    if (*end || !isfinite(v))
        return 0;
    *task_len = (size_t)(slash - r->name);
    *series_len = (size_t)(at - slash - 1);
    *x = v;
    return 1;
}

/* ---- header ---------------------------------------------------------------------------- */

void bench_features_text(char *buf, size_t len, uint32_t f)
{
    size_t at = 0;
    buf[0] = '\0';
    for (uint32_t bit = 1; sona_cpu_feature_name(bit) && at < len; bit <<= 1)
        if (f & bit)
            at += (size_t)snprintf(buf + at, len - at, "%s%s", at ? " " : "", sona_cpu_feature_name(bit));
    if (!buf[0])
        snprintf(buf, len, "(none)");
}

void bench_header_fill(bench_header *h, const bench_ctx *ctx)
{
    memset(h, 0, sizeof *h);
    sona_cpu_info ci;
    sona_cpu_info_get(&ci);
    snprintf(h->cpu, sizeof h->cpu, "%s", ci.brand);
    bench_features_text(h->features, sizeof h->features, ci.features);
    snprintf(h->variant, sizeof h->variant, "%s", ci.variant_reason ? ci.variant_reason : ci.variant);
    h->cores = ci.cores;
    h->threads = ci.threads;
#if defined(__clang__)
    snprintf(h->compiler, sizeof h->compiler, "clang %s", __clang_version__);
#elif defined(__GNUC__)
    snprintf(h->compiler, sizeof h->compiler, "gcc %s", __VERSION__);
#else
    snprintf(h->compiler, sizeof h->compiler, "%s", __VERSION__);
#endif
    snprintf(h->build_type, sizeof h->build_type, "%s", SONA_BENCH_BUILD_TYPE);
    snprintf(h->git, sizeof h->git, "%s", SONA_BENCH_GIT_REV);
    const time_t t = time(NULL);
    struct tm utc;
    gmtime_r(&t, &utc);
    strftime(h->date, sizeof h->date, "%Y-%m-%dT%H:%M:%SZ", &utc);
    h->quick = ctx->quick;
    for (uint32_t i = 0; i < sona_backend_count() && h->ndevices < 4; i++) {
        sona_backend_info bi;
        if (sona_backend_info_get(i, &bi) != SONA_OK)
            continue;
        snprintf(h->devices[h->ndevices].name, sizeof h->devices[0].name, "%s", bi.name);
        snprintf(h->devices[h->ndevices].detail, sizeof h->devices[0].detail, "%s",
                 bi.detail ? bi.detail : "");
        h->devices[h->ndevices].available = bi.available;
        h->ndevices++;
    }
    size_t at = 0;
    for (int i = 0; i < ctx->nbackends && at < sizeof h->backends; i++)
        at += (size_t)snprintf(h->backends + at, sizeof h->backends - at, "%s%s", i ? "," : "",
                               ctx->labels[i]);
}

/* ---- string buffer --------------------------------------------------------------------- */

void bench_buf_printf(bench_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    const int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (need < 0) {
        va_end(ap2);
        return;
    }
    if (b->len + (size_t)need + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + (size_t)need + 1)
            cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            va_end(ap2);
            fprintf(stderr, "sona bench: out of memory\n");
            exit(2);
        }
        b->s = s;
        b->cap = cap;
    }
    vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap2);
    va_end(ap2);
    b->len += (size_t)need;
}

void bench_buf_free(bench_buf *b)
{
    free(b->s);
    memset(b, 0, sizeof *b);
}

int bench_buf_write(const bench_buf *b, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    const size_t wrote = b->len ? fwrite(b->s, 1, b->len, f) : 0;
    const int closed = fclose(f);
    return wrote == b->len && closed == 0 ? 0 : -1;
}

const char *bench_kind_name(bench_kind k)
{
    switch (k) {
    case BENCH_TIMED: return "timed";
    case BENCH_VALUE: return "value";
    case BENCH_SKIPPED: return "skipped";
    default: return "failed";
    }
}

bench_kind bench_kind_parse(const char *name)
{
    for (bench_kind k = BENCH_TIMED; k < BENCH_FAILED; k++)
        if (!strcmp(name, bench_kind_name(k)))
            return k;
    return BENCH_FAILED;
}
