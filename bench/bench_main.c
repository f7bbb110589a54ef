/* SPDX-License-Identifier: MIT */
/* `sona bench`: option parsing, group selection, running, reports, regression check. */
#include "bench.h"
#include "cli_args.h"
#include "compare.h"
#include "harness.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern const bench_group *const bench_group_table[];
extern const char *const bench_group_symbols[];
extern const size_t bench_group_count;

typedef struct options {
    int quick, list;
    const char *groups, *backends, *json, *html, *compare, *dump_data, *peers;
    double threshold_pct;
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: sona bench [--quick] [--group NAME[,NAME...]] [--backend NAME[,NAME...]]\n"
            "                  [--json FILE] [--html FILE] [--compare BASELINE.json [--threshold PCT]]\n"
            "                  [--peers PEERS.json] [--dump-data DIR] [--list] [--help]\n"
            "  --quick       fewer repetitions; the largest CPU cases are skipped\n"
            "  --group       groups to run (see --list); 'ops' selects every op_* group\n"
            "  --backend     scalar, avx2, avx512, neon, opencl, cuda, or cpu (every CPU variant)\n"
            "  --json        write every row (and the header) as JSON\n"
            "  --html        write a self-contained HTML report: a summary, then charts per group\n"
            "  --compare     exit 1 when a row's median is more than PCT%% slower than the same\n"
            "                group/case/backend in the baseline JSON\n"
            "  --threshold   PCT for --compare (default 10)\n"
            "  --peers       add the rows of bench/peers/peers.py (same inputs run by PyTorch,\n"
            "                FAISS, scikit-learn, hnswlib) and our time over theirs per row\n"
            "  --dump-data   write the inputs the peers need into DIR (.npy and peers_data.json),\n"
            "                then exit\n"
            "  --list        list the groups (those not in this build marked so) and the backends\n"
            "                this host runs, then exit\n"
            "  -h, --help    this text\n"
            "an option's value may also follow '=': --group=loop_a\n");
}

/* The group's name: its own, or for a group missing from this build, its symbol less "bench_". */
static const char *group_name(size_t i)
{
    if (bench_group_table[i])
        return bench_group_table[i]->name;
    const char *sym = bench_group_symbols[i];
    return strncmp(sym, "bench_", 6) ? sym : sym + 6;
}

/* Whether item is in the comma-separated list. */
static int in_list(const char *list, const char *item)
{
    const size_t n = strlen(item);
    for (const char *p = list; *p;) {
        const char *comma = strchr(p, ',');
        const size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == n && !strncmp(p, item, n))
            return 1;
        if (!comma)
            break;
        p = comma + 1;
    }
    return 0;
}

static int group_selected(const options *o, size_t i)
{
    if (!o->groups)
        return 1;
    const char *name = group_name(i);
    return in_list(o->groups, name) || (in_list(o->groups, "ops") && !strncmp(name, "op_", 3));
}

/* Checks every name in a comma-separated list with known(); reports the first unknown one. */
static int check_names(const char *list, const char *what, int (*known)(const char *name, const void *arg),
                       const void *arg)
{
    char name[64];
    for (const char *p = list; *p;) {
        const char *comma = strchr(p, ',');
        const size_t len = comma ? (size_t)(comma - p) : strlen(p);
        snprintf(name, sizeof name, "%.*s", (int)len, p);
        if (!known(name, arg)) {
            fprintf(stderr, "sona bench: unknown %s '%s' (see sona bench --list)\n", what, name);
            return -1;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    return 0;
}

static int known_group(const char *name, const void *arg)
{
    (void)arg;
    if (!strcmp(name, "ops"))
        return 1;
    for (size_t i = 0; i < bench_group_count; i++)
        if (!strcmp(group_name(i), name))
            return 1;
    return 0;
}

static int known_backend(const char *name, const void *arg)
{
    static const char *const names[] = {"cpu", "scalar", "avx2", "avx512", "neon", "opencl", "cuda"};
    (void)arg;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(names[i], name))
            return 1;
    return 0;
}

/* Keeps the backends named in list ("cpu" = every CPU variant); names that exist but cannot
 * run here are reported. Returns how many remain. */
static int filter_backends(bench_ctx *ctx, const char *list)
{
    int kept = 0;
    for (int i = 0; i < ctx->nbackends; i++) {
        const int cpu = ctx->backends[i]->host_memory;
        if (in_list(list, ctx->labels[i]) || (cpu && in_list(list, "cpu"))) {
            ctx->backends[kept] = ctx->backends[i];
            ctx->labels[kept] = ctx->labels[i];
            kept++;
        }
    }
    ctx->nbackends = kept;
    for (const char *p = list; *p;) {
        const char *comma = strchr(p, ',');
        const size_t len = comma ? (size_t)(comma - p) : strlen(p);
        int found = len == 3 && !strncmp(p, "cpu", 3);
        for (int i = 0; i < kept && !found; i++)
            found = strlen(ctx->labels[i]) == len && !strncmp(ctx->labels[i], p, len);
        if (!found)
            fprintf(stderr, "sona bench: backend %.*s is not available here; skipped\n", (int)len, p);
        if (!comma)
            break;
        p = comma + 1;
    }
    return kept;
}

enum { OPT_QUICK, OPT_LIST, OPT_HELP, OPT_GROUP, OPT_BACKEND, OPT_JSON, OPT_HTML, OPT_COMPARE, OPT_THRESHOLD,
       OPT_DUMP_DATA, OPT_PEERS };

static const cli_option bench_options[] = {
    {"quick", 0, 0, OPT_QUICK},         {"list", 0, 0, OPT_LIST},       {"help", 'h', 0, OPT_HELP},
    {"group", 0, 1, OPT_GROUP},         {"backend", 0, 1, OPT_BACKEND}, {"json", 0, 1, OPT_JSON},
    {"html", 0, 1, OPT_HTML},           {"compare", 0, 1, OPT_COMPARE}, {"threshold", 0, 1, OPT_THRESHOLD},
    {"dump-data", 0, 1, OPT_DUMP_DATA}, {"peers", 0, 1, OPT_PEERS},
    {NULL, 0, 0, 0},
};

/* 0 when a report can be written at path: an existing writable file that is not a directory, or
 * a new name in an existing directory this user can write to; else -1, said on stderr. */
static int writable_path(const char *option, const char *path)
{
    struct stat sb;
    if (stat(path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode)) {
            fprintf(stderr, "sona bench: %s %s: is a directory\n", option, path);
            return -1;
        }
        if (access(path, W_OK) != 0) {
            fprintf(stderr, "sona bench: %s %s: %s\n", option, path, strerror(errno));
            return -1;
        }
        return 0;
    }
    if (errno != ENOENT) {
        fprintf(stderr, "sona bench: %s %s: %s\n", option, path, strerror(errno));
        return -1;
    }
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    int rc = -1;
    if (!dir)
        fprintf(stderr, "sona bench: out of memory\n");
    else if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        fprintf(stderr, "sona bench: %s %s: the folder %s does not exist\n", option, path, dir);
    else if (access(dir, W_OK | X_OK) != 0)
        fprintf(stderr, "sona bench: %s %s: cannot write in %s: %s\n", option, path, dir, strerror(errno));
    else
        rc = 0;
    free(dir);
    return rc;
}

/* 0: run; 1: --help was printed; -1: a bad argument (already reported). */
static int parse_args(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof *o);
    o->threshold_pct = 10.0;
    cli_parser p;
    cli_parser_init(&p, "sona bench", argc, argv);
    for (int id; (id = cli_next(&p, bench_options)) != CLI_END;) {
        switch (id) {
        case OPT_QUICK: o->quick = 1; break;
        case OPT_LIST: o->list = 1; break;
        case OPT_HELP: usage(stdout); return 1;
        case OPT_GROUP: o->groups = p.value; break;
        case OPT_BACKEND: o->backends = p.value; break;
        case OPT_JSON: o->json = p.value; break;
        case OPT_HTML: o->html = p.value; break;
        case OPT_COMPARE: o->compare = p.value; break;
        case OPT_DUMP_DATA: o->dump_data = p.value; break;
        case OPT_PEERS: o->peers = p.value; break;
        case OPT_THRESHOLD:
            if (cli_parse_finite(p.value, &o->threshold_pct) != 0 || o->threshold_pct < 0) {
                fprintf(stderr, "sona bench: --threshold needs a finite percentage >= 0, not '%s'\n", p.value);
                return -1;
            }
            break;
        case CLI_OPERAND: cli_unexpected(&p, p.value); return -1;
        default: fprintf(stderr, "try 'sona bench --help'\n"); return -1;
        }
    }
    if (o->groups && check_names(o->groups, "group", known_group, NULL) != 0)
        return -1;
    /* Before the benchmark runs, not after: a report that cannot be written, or a baseline that
     * cannot be read, would waste the whole run. */
    if ((o->json && writable_path("--json", o->json) != 0) || (o->html && writable_path("--html", o->html) != 0))
        return -1;
    if (o->compare) {
        struct stat sb;
        if (stat(o->compare, &sb) != 0 || access(o->compare, R_OK) != 0) {
            fprintf(stderr, "sona bench: --compare %s: %s\n", o->compare, strerror(errno));
            return -1;
        }
        if (!S_ISREG(sb.st_mode)) {
            fprintf(stderr, "sona bench: --compare %s: not a regular file\n", o->compare);
            return -1;
        }
    }
    if (o->peers && access(o->peers, R_OK) != 0) {
        fprintf(stderr, "sona bench: --peers %s: %s\n", o->peers, strerror(errno));
        return -1;
    }
    if (o->backends && check_names(o->backends, "backend", known_backend, NULL) != 0)
        return -1;
    return 0;
}

static void list_groups(const bench_ctx *ctx)
{
    printf("groups:\n");
    for (size_t i = 0; i < bench_group_count; i++)
        printf("  %-22s %s\n", group_name(i),
               bench_group_table[i] ? bench_group_table[i]->description : "(not in this build)");
    printf("  %-22s every op_* group\nbackends here:", "ops");
    for (int i = 0; i < ctx->nbackends; i++)
        printf(" %s", ctx->labels[i]);
    printf("\n");
}

static int run_compare(const options *o, const char *current_json)
{
    char *base = bench_read_file(o->compare);
    if (!base) {
        fprintf(stderr, "sona bench: cannot read baseline %s\n", o->compare);
        return 2;
    }
    bench_comparison cmp;
    char err[200];
    const int rc = bench_compare_json(base, current_json, o->threshold_pct, &cmp, err, sizeof err);
    free(base);
    if (rc != 0) {
        fprintf(stderr, "sona bench: --compare %s: %s\n", o->compare, err);
        return 2;
    }
    printf("\nregression check against %s (threshold %.1f%%):\n", o->compare, o->threshold_pct);
    bench_comparison_print(&cmp, stdout);
    const int regressions = cmp.regressions > 0;
    bench_comparison_free(&cmp);
    return regressions ? 1 : 0;
}

int sona_bench_main(int argc, char **argv)
{
    /* A fresh process the engine_create group started (group_engine_create.c): one create. */
    const char *probe = getenv("SONA_BENCH_CREATE_PROBE");
    if (probe)
        return bench_engine_create_probe(probe);
    options o;
    const int parsed = parse_args(argc, argv, &o);
    if (parsed != 0)
        return parsed > 0 ? 0 : 2;
    if (o.dump_data) {
        if (bench_dump_peer_data(o.dump_data) != 0) {
            fprintf(stderr, "sona bench: --dump-data %s: cannot write the inputs there\n", o.dump_data);
            return 2;
        }
        return 0;
    }
    bench_ctx ctx;
    bench_ctx_init(&ctx, o.quick);
    if (o.backends && filter_backends(&ctx, o.backends) == 0) {
        fprintf(stderr, "sona bench: none of the backends '%s' can run here\n", o.backends);
        bench_ctx_free(&ctx);
        return 2;
    }
    if (o.list) {
        list_groups(&ctx);
        bench_ctx_free(&ctx);
        return 0;
    }

    bench_header h;
    bench_header_fill(&h, &ctx);
    size_t at = 0;
    for (size_t i = 0; i < bench_group_count; i++)
        if (!bench_group_table[i] && group_selected(&o, i) && at < sizeof h.missing_groups)
            at += (size_t)snprintf(h.missing_groups + at, sizeof h.missing_groups - at, "%s%s",
                                   at ? ", " : "", group_name(i));
    bench_print_header(stdout, &h);
    printf("\n");
    fflush(stdout);

    int total = 0;
    for (size_t i = 0; i < bench_group_count; i++)
        total += bench_group_table[i] && group_selected(&o, i);
    ctx.group_total = total;
    int printed_heading = 0;
    for (size_t i = 0; i < bench_group_count; i++) {
        const bench_group *g = bench_group_table[i];
        if (!g || !group_selected(&o, i))
            continue;
        ctx.group = g->name;
        ctx.group_index++;
        if (!ctx.tty)
            fprintf(stderr, "[%d/%d] %s\n", ctx.group_index, total, g->name);
        const size_t first = ctx.nrows;
        g->run(&ctx);
        if (ctx.tty)
            fprintf(stderr, "\r\033[K");
        bench_fill_vs_scalar(ctx.rows + first, ctx.nrows - first);
        /* Each group's rows as soon as it finishes; the column titles once. */
        if (!printed_heading) {
            bench_print_table_heading(stdout);
            printed_heading = 1;
        }
        bench_print_table(stdout, ctx.rows + first, ctx.nrows - first);
        fflush(stdout);
    }

    int rc = 0;
    if (o.peers) {
        const size_t first = ctx.nrows;
        if (bench_merge_peers(&ctx, o.peers) != 0)
            rc = 2;
        bench_print_table(stdout, ctx.rows + first, ctx.nrows - first);
    }
    bench_buf json = {0};
    bench_json_write(&json, &h, ctx.rows, ctx.nrows);
    if (o.json && bench_buf_write(&json, o.json) != 0) {
        fprintf(stderr, "sona bench: cannot write %s\n", o.json);
        rc = 2;
    }
    if (o.html) {
        bench_buf html = {0};
        bench_html_write(&html, &h, ctx.rows, ctx.nrows);
        if (bench_buf_write(&html, o.html) != 0) {
            fprintf(stderr, "sona bench: cannot write %s\n", o.html);
            rc = 2;
        }
        bench_buf_free(&html);
    }
    size_t failed = 0;
    for (size_t i = 0; i < ctx.nrows; i++)
        failed += ctx.rows[i].kind == BENCH_FAILED;
    if (failed) {
        fprintf(stderr, "sona bench: %zu row(s) FAILED\n", failed);
        rc = rc ? rc : 1;
    }
    if (o.compare) {
        const int crc = run_compare(&o, json.s ? json.s : "");
        rc = rc ? rc : crc;
    }
    bench_buf_free(&json);
    bench_ctx_free(&ctx);
    return rc;
}
