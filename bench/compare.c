/* SPDX-License-Identifier: MIT */
/* Regression check between two `sona bench --json` reports. */
#include "compare.h"

#include "json_read.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The timed rows of a parsed report: its "rows" array, checked for shape. */
static const json_value *report_rows(const json_value *doc, const char *which, char *err, size_t err_len)
{
    const json_value *rows = json_get(doc, "rows");
    if (!rows || rows->type != JSON_ARRAY) {
        snprintf(err, err_len, "%s report has no \"rows\" array", which);
        return NULL;
    }
    for (size_t i = 0; i < rows->count; i++) {
        const json_value *r = &rows->items[i];
        if (r->type != JSON_OBJECT || !json_get_str(r, "group", NULL) || !json_get_str(r, "case", NULL) ||
            !json_get_str(r, "backend", NULL)) {
            snprintf(err, err_len, "%s report: row %zu lacks group, case or backend", which, i);
            return NULL;
        }
    }
    return rows;
}

static double median_of(const json_value *r)
{
    const double m = json_get_num(r, "median_us", 0);
    return m > 0 ? m : 0;
}

/* The timed rows of a report sorted by (group, case, backend), the first of each key only (the
 * one a linear search would find): lookups in O(log n), so large reports compare in n log n. */
typedef struct row_key {
    const char *group, *name, *backend;
    size_t index; /* in the report's rows */
} row_key;

typedef struct row_index {
    row_key *keys;
    size_t count;
} row_index;

static int key_cmp(const void *x, const void *y)
{
    const row_key *a = x, *b = y;
    int d = strcmp(a->group, b->group);
    if (!d)
        d = strcmp(a->name, b->name);
    if (!d)
        d = strcmp(a->backend, b->backend);
    return d;
}

static int key_index_cmp(const void *x, const void *y)
{
    const int d = key_cmp(x, y);
    if (d)
        return d;
    const size_t i = ((const row_key *)x)->index, j = ((const row_key *)y)->index;
    return (i > j) - (i < j);
}

static row_key key_of(const json_value *r, size_t index)
{
    return (row_key){json_get_str(r, "group", ""), json_get_str(r, "case", ""), json_get_str(r, "backend", ""),
                     index};
}

static int index_rows(const json_value *rows, row_index *ix)
{
    ix->count = 0;
    ix->keys = malloc((rows->count ? rows->count : 1) * sizeof *ix->keys);
    if (!ix->keys)
        return -1;
    for (size_t i = 0; i < rows->count; i++)
        if (median_of(&rows->items[i]) > 0)
            ix->keys[ix->count++] = key_of(&rows->items[i], i);
    qsort(ix->keys, ix->count, sizeof *ix->keys, key_index_cmp);
    size_t kept = 0;
    for (size_t i = 0; i < ix->count; i++)
        if (!kept || key_cmp(&ix->keys[kept - 1], &ix->keys[i]) != 0)
            ix->keys[kept++] = ix->keys[i];
    ix->count = kept;
    return 0;
}

/* The first timed row of ix's report with like's key, or NULL. */
static const json_value *find_row(const row_index *ix, const json_value *rows, const json_value *like)
{
    const row_key k = key_of(like, 0);
    const row_key *hit = ix->count ? bsearch(&k, ix->keys, ix->count, sizeof k, key_cmp) : NULL;
    return hit ? &rows->items[hit->index] : NULL;
}

static int add_entry(bench_comparison *out, size_t *cap, const json_value *row, double base, double cur,
                     bench_cmp_status st)
{
    if (out->count == *cap) {
        size_t cap2 = *cap ? 2 * *cap : 32;
        bench_cmp_entry *e = realloc(out->entries, cap2 * sizeof *e);
        if (!e)
            return -1;
        out->entries = e;
        *cap = cap2;
    }
    bench_cmp_entry *e = &out->entries[out->count++];
    memset(e, 0, sizeof *e);
    snprintf(e->group, sizeof e->group, "%s", json_get_str(row, "group", ""));
    snprintf(e->name, sizeof e->name, "%s", json_get_str(row, "case", ""));
    snprintf(e->backend, sizeof e->backend, "%s", json_get_str(row, "backend", ""));
    e->base_us = base;
    e->cur_us = cur;
    e->change_pct = base > 0 && cur > 0 ? (cur / base - 1.0) * 100.0 : 0;
    e->status = st;
    return 0;
}

int bench_compare_json(const char *baseline, const char *current, double threshold_pct,
                       bench_comparison *out, char *err, size_t err_len)
{
    memset(out, 0, sizeof *out);
    out->threshold_pct = threshold_pct;
    json_value base, cur;
    char perr[160];
    if (json_parse(baseline, &base, perr, sizeof perr) != 0) {
        snprintf(err, err_len, "baseline: %s", perr);
        return -1;
    }
    if (json_parse(current, &cur, perr, sizeof perr) != 0) {
        snprintf(err, err_len, "current: %s", perr);
        json_free(&base);
        return -1;
    }
    int rc = -1;
    size_t cap = 0;
    row_index bix = {0}, cix = {0};
    const json_value *brows = report_rows(&base, "baseline", err, err_len);
    const json_value *crows = brows ? report_rows(&cur, "current", err, err_len) : NULL;
    if (!crows)
        goto done;
    if (index_rows(brows, &bix) != 0 || index_rows(crows, &cix) != 0)
        goto nomem;
    const double up = 1.0 + threshold_pct / 100.0, down = 1.0 - threshold_pct / 100.0;
    for (size_t i = 0; i < crows->count; i++) {
        const json_value *r = &crows->items[i];
        const double c = median_of(r);
        if (c <= 0 || find_row(&cix, crows, r) != r) /* untimed, or a duplicate of an earlier row */
            continue;
        const json_value *b = find_row(&bix, brows, r);
        bench_cmp_status st = BENCH_CMP_NEW;
        double bm = 0;
        if (b) {
            bm = median_of(b);
            st = c > bm * up ? BENCH_CMP_SLOWER : c < bm * down ? BENCH_CMP_FASTER : BENCH_CMP_SAME;
            out->compared++;
            out->regressions += st == BENCH_CMP_SLOWER;
            out->improvements += st == BENCH_CMP_FASTER;
        } else {
            out->only_current++;
        }
        if (add_entry(out, &cap, r, bm, c, st) != 0)
            goto nomem;
    }
    for (size_t i = 0; i < brows->count; i++) {
        const json_value *b = &brows->items[i];
        if (median_of(b) <= 0 || find_row(&bix, brows, b) != b || find_row(&cix, crows, b))
            continue;
        out->only_baseline++;
        if (add_entry(out, &cap, b, median_of(b), 0, BENCH_CMP_GONE) != 0)
            goto nomem;
    }
    rc = 0;
    goto done;
nomem:
    snprintf(err, err_len, "out of memory");
    bench_comparison_free(out);
done:
    free(bix.keys);
    free(cix.keys);
    json_free(&base);
    json_free(&cur);
    return rc;
}

void bench_comparison_print(const bench_comparison *c, FILE *f)
{
    static const char *const labels[] = {"same", "REGRESSION", "faster", "new", "not measured now"};
    enum { MAX_LISTED = 8 }; /* of the new and unmeasured rows (a --group run leaves out many) */
    size_t listed[5] = {0};
    for (int pass = 0; pass < 2; pass++) /* regressions first, then everything else that changed */
        for (size_t i = 0; i < c->count; i++) {
            const bench_cmp_entry *e = &c->entries[i];
            if ((pass == 0) != (e->status == BENCH_CMP_SLOWER) || e->status == BENCH_CMP_SAME)
                continue;
            if ((e->status == BENCH_CMP_NEW || e->status == BENCH_CMP_GONE) && listed[e->status]++ >= MAX_LISTED) {
                if (listed[e->status] == MAX_LISTED + 1)
                    fprintf(f, "  %-16s ... (see the counts below)\n", labels[e->status]);
                continue;
            }
            fprintf(f, "  %-16s %s / %s / %s", labels[e->status], e->group, e->name, e->backend);
            if (e->base_us > 0 && e->cur_us > 0)
                fprintf(f, ": %.3f us -> %.3f us (%+.1f%%)", e->base_us, e->cur_us, e->change_pct);
            fprintf(f, "\n");
        }
    fprintf(f, "compare: %zu rows compared, %zu regressions beyond %.1f%%, %zu faster, %zu new, %zu not measured now\n",
            c->compared, c->regressions, c->threshold_pct, c->improvements, c->only_current, c->only_baseline);
}

void bench_comparison_free(bench_comparison *c)
{
    free(c->entries);
    memset(c, 0, sizeof *c);
}

char *bench_read_file(const char *path)
{
    /* A regular file only: a FIFO would block (O_NONBLOCK keeps the open from waiting for a
     * writer), a device such as /dev/zero never end. */
    const int fd = open(path, O_RDONLY | O_NONBLOCK);
    struct stat sb;
    int flags;
    if (fd < 0)
        return NULL;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (flags = fcntl(fd, F_GETFL)) == -1 ||
        fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == -1) {
        close(fd);
        errno = EINVAL;
        return NULL;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    char *s = malloc(cap);
    while (s) {
        len += fread(s + len, 1, cap - len - 1, f);
        if (len < cap - 1)
            break;
        char *s2 = realloc(s, cap * 2);
        if (!s2) {
            free(s);
            s = NULL;
            break;
        }
        s = s2;
        cap *= 2;
    }
    const int bad = ferror(f);
    fclose(f);
    if (!s || bad) {
        free(s);
        return NULL;
    }
    s[len] = '\0';
    return s;
}
