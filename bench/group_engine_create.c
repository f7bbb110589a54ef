/* SPDX-License-Identifier: MIT */
/* Group engine_create: how fast an engine starts, at the default preset (issue: a laptop creates
 * an engine in 5 ms or less, and its resident memory grows by at most 20 MB above the engine's
 * own buffers). Two kinds of row per width:
 *   create+destroy   repeated in this process (memory reused from the allocator);
 *   first create     in a fresh process each time (this program re-run with
 *                    SONA_BENCH_CREATE_PROBE=width): the library's one-time set-up included, the
 *                    pages touched for the first time; median and worst of the runs, and the
 *                    resident memory the create added (VmRSS after minus before). */
#include "bench.h"

#include "common/clock.h"

#include <sona.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

/* The child's side: one create, then "ms kib" on stdout. */
int bench_engine_create_probe(const char *width)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, (uint32_t)strtoul(width, NULL, 10));
    const long before = rss_kib();
    const uint64_t t0 = sona_monotonic_us();
    sona_engine *e = NULL;
    const sona_status st = sona_engine_create(&c, &e);
    const double ms = (double)(sona_monotonic_us() - t0) / 1e3;
    const long after = rss_kib();
    if (st != SONA_OK) {
        fprintf(stderr, "engine_create probe: %s\n", sona_last_error());
        return 1;
    }
    printf("%.4f %ld\n", ms, after - before);
    sona_engine_destroy(e);
    return 0;
}

static int create_destroy(void *arg)
{
    sona_engine *e = NULL;
    if (sona_engine_create(arg, &e) != SONA_OK)
        return -1;
    sona_engine_destroy(e);
    return 0;
}

/* One fresh process's figures, or -1. */
static int probe_once(uint32_t width, double *ms, long *kib)
{
    int out[2];
    if (pipe(out) != 0)
        return -1;
    char value[16], env_entry[48];
    snprintf(value, sizeof value, "%u", width);
    snprintf(env_entry, sizeof env_entry, "SONA_BENCH_CREATE_PROBE=%s", value);
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = malloc((n + 2) * sizeof *env);
    if (!env) {
        close(out[0]);
        close(out[1]);
        return -1;
    }
    memcpy(env, environ, n * sizeof *env);
    env[n] = env_entry;
    env[n + 1] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    char *argv[] = {"sona", "bench", NULL};
    pid_t pid;
    const int spawned = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    free(env);
    close(out[1]);
    if (spawned != 0) {
        close(out[0]);
        return -1;
    }
    char buf[64] = {0};
    const ssize_t got = read(out[0], buf, sizeof buf - 1);
    close(out[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (got <= 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0 || sscanf(buf, "%lf %ld", ms, kib) != 2)
        return -1;
    return 0;
}

static int by_value(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void run_engine_create(bench_ctx *ctx)
{
    static const uint32_t widths[] = {256, 1024, 4096};
    static const char *const names[] = {"h256", "h1024", "h4096"};
    for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) {
        char name[48];
        snprintf(name, sizeof name, "%s create+destroy", names[w]);
        const bench_row row = {.group = "engine_create", .name = name, .backend = "cpu", .target_us = 5000};
        sona_engine_config c;
        sona_engine_config_default(&c, SONA_PRESET_DEFAULT, widths[w]);
        bench_measure(ctx, &row, create_destroy, &c);

        char first[48];
        snprintf(first, sizeof first, "%s first create", names[w]);
        const bench_row fresh = {.group = "engine_create", .name = first, .backend = "cpu", .target_us = 5000};
        enum { RUNS = 9 };
        const int runs = bench_quick(ctx) ? 3 : RUNS;
        double ms[RUNS], worst_mb = 0;
        int ok = 0;
        for (int i = 0; i < runs; i++) {
            long kib;
            if (probe_once(widths[w], &ms[ok], &kib) == 0) {
                ok++;
                worst_mb = (double)kib / 1024.0 > worst_mb ? (double)kib / 1024.0 : worst_mb;
            }
        }
        if (ok == 0) {
            bench_skip(ctx, &fresh, "could not run a fresh process (/proc/self/exe)");
            continue;
        }
        qsort(ms, (size_t)ok, sizeof ms[0], by_value);
        bench_report(ctx, &fresh, "median_ms", ms[ok / 2], "ms");
        bench_report(ctx, &fresh, "worst_ms", ms[ok - 1], "ms");
        bench_report(ctx, &fresh, "rss_added_worst", worst_mb, "MB");
    }
}

const bench_group bench_engine_create = {"engine_create", "engine create at the default preset: repeated, and first in a fresh process",
                                         run_engine_create};
