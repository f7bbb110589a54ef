/* SPDX-License-Identifier: MIT */
/* The OpenCL module beyond the op table (test_ops covers every op): the program cache makes a
 * second start skip compilation, host threads can be placed near the device, and a failing
 * device op falls back to the CPU without touching the adapter, and cache entries that are not
 * this user's own intact files are rebuilt, never run. Skipped where no OpenCL device
 * is available (ctest sets SONA_OPENCL_DEVICE=any so PoCL's CPU device counts). */
#define _GNU_SOURCE /* pthread_getaffinity_np, cpu_set_t */
#include <criterion/criterion.h>
#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/rng.h"
#include "dispatch/dispatch.h"
#include "support/fill.h"
#include <sona.h>

static const sona_backend *opencl_or_skip(void)
{
    const sona_backend *b;
    char why[256];
    if (sona_backend_get("opencl", &b, why, sizeof why) != SONA_OK) {
        printf("[opencl] skipped: %s\n", why);
        cr_skip_test("%s", why);
    }
    return b;
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

/* Starts the backend in a child process: exit status 0 when it compiled its program (and its
 * device text holds note, when not NULL), 1 when it loaded it from the cache, 2 when OpenCL is
 * unavailable, 3 otherwise. A start that hangs (on a FIFO in the cache) is killed by its alarm. */
static int start_in_child_noting(const char *note)
{
    fflush(stdout);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        alarm(120);
        const sona_backend *b;
        char why[256];
        if (sona_backend_get("opencl", &b, why, sizeof why) != SONA_OK)
            _exit(2);
        printf("[opencl] child start: %s\n", b->device);
        fflush(stdout);
        if (strstr(b->device, "kernels compiled"))
            _exit(!note || strstr(b->device, note) ? 0 : 3);
        _exit(strstr(b->device, "from cache") ? 1 : 3);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status), "the child start crashed (status %d)", status);
    return WEXITSTATUS(status);
}

static int start_in_child(void) { return start_in_child_noting(NULL); }

/* The path of the one cache entry in dir (the only file whose name does not start with '.'). */
static void entry_path(const char *dir, char *path, size_t len)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    path[0] = '\0';
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.')
            snprintf(path, len, "%s/%s", dir, e->d_name);
    closedir(d);
    cr_assert(path[0], "no cache entry in %s", dir);
}

static unsigned char *read_bytes(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    cr_assert_eq(fseek(f, 0, SEEK_END), 0);
    const long n = ftell(f);
    cr_assert_gt(n, 0);
    rewind(f);
    unsigned char *p = malloc((size_t)n);
    cr_assert_not_null(p);
    cr_assert_eq(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return p;
}

/* Writes bytes to path as a fresh file of the given mode (whatever was at path removed). */
static void write_bytes(const char *path, const unsigned char *p, size_t len, mode_t mode)
{
    unlink(path);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    cr_assert_eq(fwrite(p, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
    cr_assert_eq(chmod(path, mode), 0);
}

/* A cache entry that is not this user's own, intact, regular file is never run: a binary whose
 * bytes were changed, a symlink to a valid entry, a FIFO (which must not hang the start) and a
 * group-writable entry are each refused with their reason and rebuilt from source; a killed
 * writer's temporary is removed; a cache directory others can write to is not used at all. A
 * good entry still loads. */
Test(opencl, untrusted_cache_entries_are_rebuilt_not_run)
{
    char base[] = "/tmp/sona-clcache-XXXXXX", dir[64];
    cr_assert_not_null(mkdtemp(base));
    snprintf(dir, sizeof dir, "%s/cache", base); /* made by the start */
    setenv("SONA_CACHE_DIR", dir, 1);
    const int first = start_in_child();
    if (first == 2) {
        rmdir(base);
        opencl_or_skip();
    }
    cr_assert_eq(first, 0, "first start did not compile into an empty cache");
    char path[512], aside[600];
    entry_path(dir, path, sizeof path);
    size_t len;
    unsigned char *good = read_bytes(path, &len);
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    cr_expect_eq(sb.st_mode & 077, 0, "the entry is readable by others (mode %o)", (unsigned)sb.st_mode);
    cr_assert_eq(stat(dir, &sb), 0);
    cr_expect_eq(sb.st_mode & 0777, 0700, "the cache directory was made %o, not 0700", (unsigned)sb.st_mode & 0777);

    /* One byte of the binary changed, the header left as it was. */
    unsigned char *bad = malloc(len);
    cr_assert_not_null(bad);
    memcpy(bad, good, len);
    bad[len - 1] ^= 0x5a;
    write_bytes(path, bad, len, 0600);
    cr_expect_eq(start_in_child_noting("does not match its digest"), 0, "a tampered binary was not rebuilt");
    cr_expect_eq(start_in_child(), 1, "the rebuilt entry was not stored and loaded");

    /* A symlink to a valid entry kept elsewhere. */
    snprintf(aside, sizeof aside, "%s/aside", base);
    write_bytes(aside, good, len, 0600);
    cr_assert_eq(unlink(path), 0);
    cr_assert_eq(symlink(aside, path), 0);
    cr_expect_eq(start_in_child_noting("symbolic link"), 0, "an entry reached through a symlink was run");
    cr_assert_eq(lstat(path, &sb), 0);
    cr_expect(S_ISREG(sb.st_mode), "the symlink was not replaced by a fresh entry");

    /* A FIFO: opened without blocking, refused as not a regular file. */
    cr_assert_eq(unlink(path), 0);
    cr_assert_eq(mkfifo(path, 0600), 0);
    cr_expect_eq(start_in_child_noting("not a regular file"), 0, "a FIFO entry was not skipped");

    /* Group-writable: anyone in the group could have put it there. */
    write_bytes(path, good, len, 0620);
    cr_expect_eq(start_in_child_noting("writable by group or others"), 0, "a group-writable entry was run");
    cr_assert_eq(stat(path, &sb), 0);
    cr_expect_eq(sb.st_mode & 077, 0, "the refused entry was not replaced");

    /* The temporary of a writer killed before its rename: removed by the next store. */
    fflush(stdout);
    const pid_t dead = fork();
    cr_assert_geq(dead, 0);
    if (dead == 0)
        _exit(0);
    cr_assert_eq(waitpid(dead, NULL, 0), dead);
    char stale[600];
    snprintf(stale, sizeof stale, "%s/.kernels-%ld-AbC123", dir, (long)dead);
    write_bytes(stale, good, len / 2, 0600);
    cr_assert_eq(unlink(path), 0);
    cr_expect_eq(start_in_child(), 0);
    cr_expect_neq(access(stale, F_OK), 0, "a killed writer's temporary %s is still there", stale);

    /* A directory others may write to: no cache at all. */
    write_bytes(path, good, len, 0600);
    cr_assert_eq(chmod(dir, 0777), 0);
    cr_expect_eq(start_in_child_noting("not used: writable by group or others"), 0,
                 "a world-writable cache directory was used");
    cr_assert_eq(chmod(dir, 0700), 0);
    cr_expect_eq(start_in_child(), 1, "the good entry no longer loads");

    free(good);
    free(bad);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", base);
    cr_expect_eq(system(cmd), 0);
}

/* The first start (a child process) compiles and stores the program; a corrupt cache file is
 * replaced by a fresh compile; this process, started last, must load it from the cache. */
Test(opencl, second_start_loads_the_program_from_the_cache)
{
    char dir[] = "/tmp/sona-clcache-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    setenv("SONA_CACHE_DIR", dir, 1);
    const int first = start_in_child();
    if (first == 2) {
        rmdir(dir);
        opencl_or_skip();
    }
    cr_assert_eq(first, 0, "first start did not compile into an empty cache");
    cr_assert_eq(count_files(dir), 1, "the first start left no program binary in %s", dir);
    DIR *d = opendir(dir);
    char path[512] = "";
    for (struct dirent *e; d && (e = readdir(d));)
        if (e->d_name[0] != '.')
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    closedir(d);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    fputs("not a program binary", f);
    fclose(f);
    cr_assert_eq(start_in_child(), 0, "a corrupt cache file was not replaced by a compile");
    cr_assert_eq(count_files(dir), 1);
    const sona_backend *b = opencl_or_skip();
    printf("[opencl] %s\n", b->device);
    cr_expect(strstr(b->device, "kernels loaded from cache") != NULL, "second start: %s", b->device);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}

/* Every device op fails (SONA_OPENCL_FAULT=all): adapters on OpenCL still learn, through the
 * CPU, exactly like adapters on the CPU, and every redone op is counted. */
Test(opencl, failing_device_ops_fall_back_to_the_cpu)
{
    setenv("SONA_OPENCL_FAULT", "all", 1);
    opencl_or_skip();
    const uint64_t seed = test_seed();
    printf("[opencl] fallback seed %" PRIu64 "\n", seed);
    const uint32_t H = 97, R = 3, N = 5;
    sona_lora_config cfg;
    sona_lora_config_default(&cfg, SONA_LORA_MICRO, H);
    cfg.rank = R;
    cfg.count = 2;
    sona_lora *on[2];
    const char *backends[2] = {"cpu", "opencl"};
    for (int k = 0; k < 2; k++) {
        setenv("SONA_BACKEND", backends[k], 1);
        cr_assert_eq(sona_lora_create(&cfg, &on[k]), SONA_OK, "%s", sona_last_error());
    }
    float x[5 * 97], d[5 * 97], w[5], y[2][5 * 97];
    int32_t ids[5] = {0, 1, -1, 1, 0};
    sona_rng r;
    sona_rng_seed(&r, seed, 0);
    for (uint32_t i = 0; i < N * H; i++) {
        x[i] = 2.0f * sona_rng_uniform(&r) - 1.0f;
        d[i] = 2.0f * sona_rng_uniform(&r) - 1.0f;
    }
    for (uint32_t i = 0; i < N; i++)
        w[i] = sona_rng_uniform(&r) - 0.3f;
    const uint64_t before = sona_dispatch_fallbacks();
    for (int k = 0; k < 2; k++) {
        for (int step = 0; step < 2; step++) {
            cr_assert_eq(sona_lora_accumulate_batch(on[k], N, ids, x, d, w), SONA_OK, "%s", sona_lora_last_error(on[k]));
            cr_assert_eq(sona_lora_apply_updates(on[k]), SONA_OK, "%s", sona_lora_last_error(on[k]));
        }
        cr_assert_eq(sona_lora_forward_batch(on[k], N, ids, x, y[k]), SONA_OK);
    }
    /* Per step: lora_grad + two param_updates; then one lora_apply. */
    cr_expect_eq(sona_dispatch_fallbacks() - before, 2 * 3 + 1);
    for (uint32_t i = 0; i < N * H; i++)
        cr_assert_float_eq(y[1][i], y[0][i], 1e-5f * (1.0f + fabsf(y[0][i])), "element %u", i);
    float A[2][291], B[2][291];
    for (int k = 0; k < 2; k++)
        cr_assert_eq(sona_lora_get_weights(on[k], 1, A[k], B[k]), SONA_OK);
    cr_expect_eq(memcmp(A[0], A[1], sizeof A[0]), 0, "A differs after CPU fallback");
    cr_expect_eq(memcmp(B[0], B[1], sizeof B[0]), 0, "B differs after CPU fallback");
    for (int k = 0; k < 2; k++)
        sona_lora_destroy(on[k]);
}

/* Loads the module in a child with the given SONA_OPENCL_DEVICE / SONA_BACKEND (NULL: unset).
 * Exit status 0: available on a GPU, 1: available on a CPU device, 2: unavailable and why
 * contains `why_has`, 3: anything else. */
static int choice_in_child(const char *device, const char *backend, const char *why_has)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (device)
            setenv("SONA_OPENCL_DEVICE", device, 1);
        else
            unsetenv("SONA_OPENCL_DEVICE");
        if (backend)
            setenv("SONA_BACKEND", backend, 1);
        else
            unsetenv("SONA_BACKEND");
        const sona_backend *b;
        char why[256] = "";
        if (sona_backend_get("opencl", &b, why, sizeof why) != SONA_OK) {
            printf("[opencl] SONA_OPENCL_DEVICE=%s SONA_BACKEND=%s: %s\n", device ? device : "(unset)",
                   backend ? backend : "(unset)", why);
            fflush(stdout);
            if (strstr(why, "not built") || strstr(why, "disabled at build time"))
                _exit(4);
            _exit(why_has && strstr(why, why_has) ? 2 : 3);
        }
        _exit(strstr(b->device, "GPU") ? 0 : strstr(b->device, "CPU device") ? 1 : 3);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status), "the child start crashed (status %d)", status);
    return WEXITSTATUS(status);
}

/* GPUs first; a CPU device only when SONA_OPENCL_DEVICE or SONA_BACKEND=opencl asks. */
Test(opencl, device_choice_follows_the_environment)
{
    const int by_index = choice_in_child("0", NULL, "no OpenCL");
    if (by_index == 4)
        cr_skip_test("the OpenCL module is not in this build");
    if (by_index == 2)
        opencl_or_skip();
    cr_assert(by_index == 0 || by_index == 1, "SONA_OPENCL_DEVICE=0 did not pick device 0");
    cr_expect_eq(choice_in_child("no-such-device-name", NULL, "matches no device"), 2);
    cr_expect_eq(choice_in_child("99", NULL, "matches no device"), 2);
    const int plain = choice_in_child(NULL, NULL, "SONA_OPENCL_DEVICE");
    cr_expect(plain == 0 || plain == 2, "without a GPU and unasked, a CPU device was used");
    const int forced = choice_in_child(NULL, "opencl", "no OpenCL");
    cr_expect(forced == 0 || forced == 1, "SONA_BACKEND=opencl did not get a device");
    if (plain == 2)
        cr_expect_eq(forced, 1, "SONA_BACKEND=opencl must accept the CPU device");
}

/* The device's host locality (hwloc) is reported, and binding a thread near it works: on a CPU
 * device (PoCL) there is no preference and the thread's CPU set is left unchanged. */
Test(opencl, host_threads_can_be_placed_near_the_device)
{
    const sona_backend *b = opencl_or_skip();
    cr_assert(strstr(b->device, "host CPUs") != NULL, "no locality in \"%s\"", b->device);
    cr_assert_not_null(b->bind_host_thread);
    cpu_set_t before, after;
    cr_assert_eq(pthread_getaffinity_np(pthread_self(), sizeof before, &before), 0);
    cr_assert_eq(b->bind_host_thread(b->ctx), SONA_OK, "%s", b->last_error(b->ctx));
    cr_assert_eq(pthread_getaffinity_np(pthread_self(), sizeof after, &after), 0);
    if (strstr(b->device, "no preference"))
        cr_assert(CPU_EQUAL(&before, &after), "a device without locality changed the CPU set");
    else
        cr_assert(CPU_COUNT(&after) >= 1);
}
