/* SPDX-License-Identifier: MIT */
/* The module's program: built once per device and cached on disk, keyed by a SHA-256 of the
 * device name, driver version, build options and source, so a second start does not compile.
 * Cache directory: $SONA_CACHE_DIR, else $XDG_CACHE_HOME/sona/opencl, else ~/.cache/sona/opencl.
 * The cache holds code this process runs, so it is trusted only as far as it is this user's
 * alone: the directory is created 0700 and used only when owned by this user and not writable by
 * group or others; an entry is read only when it is a regular file with the same owner and modes
 * (never through a symlink, never blocking on a FIFO) and its digests match; anything else is
 * rebuilt from source, and the reason is in the backend's device text. */
#include "opencl/ocl_program.h"

#include "kernels_cl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const kernel_names[K_COUNT] = {
    [K_LORA_APPLY] = "lora_apply",
    [K_LORA_GRAD_ROWS] = "lora_grad_rows",
    [K_LORA_GRAD_ACCUMULATE] = "lora_grad_accumulate",
    [K_SEGMENT_CLIP] = "segment_clip",
    [K_PARAM_STEP] = "param_step",
    [K_SQDIST_ARGMIN] = "sqdist_argmin",
    [K_ROW_NORMS] = "row_norms",
    [K_COSINE_BLOCK] = "cosine_block",
    [K_TOPK_ROWS] = "topk_rows",
    [K_CLUSTER_SUMS] = "cluster_sums",
    [K_ARGMIN_FROM_GEMM] = "argmin_from_gemm",
};

const char *ocl_kernel_name(int k) { return (unsigned)k < K_COUNT ? kernel_names[k] : "?"; }

/* ---- SHA-256 (FIPS 180-4): the cache entry's digests --------------------------------------- */

typedef struct sha256 {
    uint32_t h[8];
    uint64_t bytes;
    unsigned char block[64];
    size_t used;
} sha256;

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror32(uint32_t x, int n) { return x >> n | x << (32 - n); }

static void sha256_block(sha256 *s, const unsigned char *p)
{
    uint32_t w[64], v[8];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        const uint32_t s0 = ror32(w[i - 15], 7) ^ ror32(w[i - 15], 18) ^ w[i - 15] >> 3;
        const uint32_t s1 = ror32(w[i - 2], 17) ^ ror32(w[i - 2], 19) ^ w[i - 2] >> 10;
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(v, s->h, sizeof v);
    for (int i = 0; i < 64; i++) {
        const uint32_t t1 = v[7] + (ror32(v[4], 6) ^ ror32(v[4], 11) ^ ror32(v[4], 25)) +
                            ((v[4] & v[5]) ^ (~v[4] & v[6])) + sha_k[i] + w[i];
        const uint32_t t2 = (ror32(v[0], 2) ^ ror32(v[0], 13) ^ ror32(v[0], 22)) +
                            ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
        memmove(v + 1, v, 7 * sizeof v[0]);
        v[4] += t1;
        v[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++)
        s->h[i] += v[i];
}

static void sha256_init(sha256 *s)
{
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->bytes = 0;
    s->used = 0;
}

static void sha256_add(sha256 *s, const void *data, size_t n)
{
    const unsigned char *p = data;
    s->bytes += n;
    while (n) {
        const size_t k = n < 64 - s->used ? n : 64 - s->used;
        memcpy(s->block + s->used, p, k);
        s->used += k;
        p += k;
        n -= k;
        if (s->used == 64) {
            sha256_block(s, s->block);
            s->used = 0;
        }
    }
}

static void sha256_end(sha256 *s, unsigned char out[32])
{
    const uint64_t bits = s->bytes * 8;
    unsigned char pad[72] = {0x80};
    const size_t padlen = (s->used < 56 ? 56 : 120) - s->used;
    for (int i = 0; i < 8; i++)
        pad[padlen + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_add(s, pad, padlen + 8);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++)
            out[4 * i + j] = (unsigned char)(s->h[i] >> (24 - 8 * j));
}

/* ---- the cache's trust checks --------------------------------------------------------------- */

/* A cache entry: this header, then the program binary. The key digest covers the device name,
 * driver and device versions, build options and the kernels' source; the binary digest covers
 * the key digest and the binary, so a truncated, corrupt, edited or misplaced binary is rebuilt
 * from source instead of run. (Integrity, not authentication: what keeps other users' binaries
 * out is that only entries this user owns and alone can write are read.) */
#define ENTRY_MAGIC "SONACLB1"
#define ENTRY_HEADER (8 + 32 + 8 + 32)
#define ENTRY_MAX ((size_t)256 << 20) /* a larger "binary" is not one of ours */

static void binary_digest(const unsigned char key[32], const unsigned char *bin, size_t len, unsigned char out[32])
{
    sha256 s;
    sha256_init(&s);
    sha256_add(&s, key, 32);
    sha256_add(&s, bin, len);
    sha256_end(&s, out);
}

/* Why a file (or directory) with this status must not be trusted, or NULL when it may be. */
static const char *distrust(const struct stat *sb, int want_dir)
{
    if (want_dir ? !S_ISDIR(sb->st_mode) : !S_ISREG(sb->st_mode))
        return want_dir ? "not a directory" : "not a regular file";
    if (sb->st_uid != geteuid())
        return "owned by another user";
    if (sb->st_mode & (S_IWGRP | S_IWOTH))
        return "writable by group or others";
    return NULL;
}

/* mkdir -p, creating what is missing 0700 (the binaries are code this process will run). */
static int make_dirs(char *path)
{
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int bad = mkdir(path, 0700) != 0 && errno != EEXIST;
        *p = '/';
        if (bad)
            return -1;
    }
    return mkdir(path, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

/* The cache directory in out, created when missing; -1 (with a note in c->cache_note when the
 * directory exists but cannot be trusted) when there is no usable cache. */
static int cache_dir(ocl_ctx *c, char *out, size_t len)
{
    const char *env = getenv("SONA_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n;
    if (env && *env)
        n = snprintf(out, len, "%s", env);
    else if (xdg && *xdg)
        n = snprintf(out, len, "%s/sona/opencl", xdg);
    else if (home && *home)
        n = snprintf(out, len, "%s/.cache/sona/opencl", home);
    else
        return -1;
    if (n < 0 || (size_t)n >= len || make_dirs(out) != 0)
        return -1;
    struct stat sb;
    const char *why = stat(out, &sb) != 0 ? "cannot be read" : distrust(&sb, 1);
    if (why) {
        snprintf(c->cache_note, sizeof c->cache_note, "cache directory not used: %s", why);
        return -1;
    }
    return 0;
}

static sona_status create_kernels(ocl_ctx *c)
{
    for (int k = 0; k < K_COUNT; k++) {
        cl_int err;
        c->kernels[k] = clCreateKernel(c->program, kernel_names[k], &err);
        if (err != CL_SUCCESS)
            return ocl_fail(SONA_E_BACKEND, "clCreateKernel", err, kernel_names[k]);
    }
    return SONA_OK;
}

static void release_program(ocl_ctx *c)
{
    for (int k = 0; k < K_COUNT; k++)
        if (c->kernels[k]) {
            clReleaseKernel(c->kernels[k]);
            c->kernels[k] = NULL;
        }
    if (c->program)
        clReleaseProgram(c->program);
    c->program = NULL;
}

/* The entry's binary in a malloc'd buffer, or NULL (and a note when the entry is there but
 * refused). Opened without following a symlink and without blocking on a FIFO or device. */
static unsigned char *read_entry(ocl_ctx *c, const unsigned char key[32], size_t *len)
{
    const int fd = open(c->cache_path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            snprintf(c->cache_note, sizeof c->cache_note, "cache entry refused: %s",
                     errno == ELOOP ? "a symbolic link" : strerror(errno));
        return NULL;
    }
    struct stat sb;
    const char *why = fstat(fd, &sb) != 0 ? "cannot be read" : distrust(&sb, 0);
    if (!why && (sb.st_size < ENTRY_HEADER || (uint64_t)sb.st_size > ENTRY_MAX))
        why = "not a program binary of this cache";
    unsigned char *buf = NULL;
    size_t got = 0;
    if (!why) {
        const int flags = fcntl(fd, F_GETFL);
        if (flags == -1 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == -1)
            why = "cannot be read";
    }
    if (!why && !(buf = malloc((size_t)sb.st_size)))
        why = "out of memory";
    while (!why && got < (size_t)sb.st_size) {
        const ssize_t k = read(fd, buf + got, (size_t)sb.st_size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            why = "cannot be read";
        else
            got += (size_t)k;
    }
    close(fd);
    uint64_t bin_len = 0;
    unsigned char digest[32];
    if (!why) {
        memcpy(&bin_len, buf + 40, 8);
        if (memcmp(buf, ENTRY_MAGIC, 8) != 0 || memcmp(buf + 8, key, 32) != 0 ||
            bin_len != got - ENTRY_HEADER || bin_len == 0)
            why = "not a program binary of this cache";
    }
    if (!why) {
        binary_digest(key, buf + ENTRY_HEADER, (size_t)bin_len, digest);
        if (memcmp(digest, buf + 48, 32) != 0)
            why = "its binary does not match its digest";
    }
    if (why) {
        snprintf(c->cache_note, sizeof c->cache_note, "cache entry refused: %s", why);
        free(buf);
        return NULL;
    }
    memmove(buf, buf + ENTRY_HEADER, (size_t)bin_len);
    *len = (size_t)bin_len;
    return buf;
}

static int load_cached(ocl_ctx *c, const unsigned char key[32], const char *options)
{
    size_t len = 0;
    unsigned char *bin = read_entry(c, key, &len);
    if (!bin)
        return 0;
    const unsigned char *bins[1] = {bin};
    cl_int err, bin_status;
    c->program = clCreateProgramWithBinary(c->context, 1, &c->device, &len, bins, &bin_status, &err);
    free(bin);
    if (err != CL_SUCCESS || bin_status != CL_SUCCESS ||
        clBuildProgram(c->program, 1, &c->device, options, NULL, NULL) != CL_SUCCESS ||
        create_kernels(c) != SONA_OK) {
        release_program(c); /* the driver changed under the same version: rebuild from source */
        snprintf(c->cache_note, sizeof c->cache_note, "cache entry refused by the driver");
        return 0;
    }
    return 1;
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        const ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Removes the temporaries (".kernels-PID-XXXXXX") that writers killed before their rename left
 * in the cache directory: this user's regular files of a process that no longer runs. */
static void remove_stale_temps(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    for (const struct dirent *ent; (ent = readdir(d));) {
        if (strncmp(ent->d_name, ".kernels-", 9) != 0)
            continue;
        char *end, path[1200];
        errno = 0;
        const long pid = strtol(ent->d_name + 9, &end, 10);
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        if (errno || pid <= 0 || pid == (long)getpid() || end[0] != '-' || strlen(end) != 7 ||
            kill((pid_t)pid, 0) == 0 || errno != ESRCH || lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode) ||
            sb.st_uid != geteuid())
            continue;
        unlink(path);
    }
    closedir(d);
}

/* Writes the built program's binary to the cache: header and binary into a new file of an
 * unpredictable name in the cache directory (mkstemp: O_CREAT|O_EXCL, so never through a
 * planted symlink), then renamed over the entry. Best effort: a failure only costs a compile. */
static void store_cached(ocl_ctx *c, const char *dir, const unsigned char key[32])
{
    size_t size = 0;
    if (clGetProgramInfo(c->program, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) != CL_SUCCESS ||
        size == 0 || size > ENTRY_MAX - ENTRY_HEADER)
        return;
    unsigned char *entry = malloc(ENTRY_HEADER + size);
    unsigned char *bins[1] = {entry + ENTRY_HEADER};
    if (!entry || clGetProgramInfo(c->program, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) != CL_SUCCESS) {
        free(entry);
        return;
    }
    const uint64_t len = size;
    memcpy(entry, ENTRY_MAGIC, 8);
    memcpy(entry + 8, key, 32);
    memcpy(entry + 40, &len, 8);
    binary_digest(key, entry + ENTRY_HEADER, size, entry + 48);
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s/.kernels-%ld-XXXXXX", dir, (long)getpid());
    const int fd = mkstemp(tmp); /* 0600 */
    if (fd >= 0) {
        int ok = write_all(fd, entry, ENTRY_HEADER + size) == 0;
        ok = close(fd) == 0 && ok;
        if (!ok || rename(tmp, c->cache_path) != 0)
            unlink(tmp);
    }
    free(entry);
    remove_stale_temps(dir);
}

static sona_status build_from_source(ocl_ctx *c, const char *options)
{
    const char *src = sona_opencl_kernels_source;
    cl_int err;
    c->program = clCreateProgramWithSource(c->context, 1, &src, NULL, &err);
    if (err != CL_SUCCESS)
        return ocl_fail(SONA_E_BACKEND, "clCreateProgramWithSource", err, NULL);
    err = clBuildProgram(c->program, 1, &c->device, options, NULL, NULL);
    if (err != CL_SUCCESS) {
        char log[300] = "";
        clGetProgramBuildInfo(c->program, c->device, CL_PROGRAM_BUILD_LOG, sizeof log - 1, log, NULL);
        return ocl_fail(SONA_E_BACKEND, "clBuildProgram", err, log);
    }
    return create_kernels(c);
}

sona_status ocl_program_load(ocl_ctx *c)
{
    char options[128], name[256] = "", driver[128] = "", version[128] = "";
    snprintf(options, sizeof options, "-cl-std=CL1.2 -DSONA_WG=%zu", c->wg);
    clGetDeviceInfo(c->device, CL_DEVICE_NAME, sizeof name, name, NULL);
    clGetDeviceInfo(c->device, CL_DRIVER_VERSION, sizeof driver, driver, NULL);
    clGetDeviceInfo(c->device, CL_DEVICE_VERSION, sizeof version, version, NULL);
    const char *parts[] = {name, driver, version, options, sona_opencl_kernels_source};
    sha256 s;
    sha256_init(&s);
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        sha256_add(&s, parts[i], strlen(parts[i]) + 1); /* with the NUL: "ab"+"c" is not "a"+"bc" */
    unsigned char key[32];
    sha256_end(&s, key);
    c->cache_note[0] = '\0';
    char dir[900];
    const int have_dir = cache_dir(c, dir, sizeof dir) == 0;
    if (have_dir) {
        snprintf(c->cache_path, sizeof c->cache_path, "%s/kernels-", dir);
        for (int i = 0; i < 8; i++) /* the first 8 bytes of the key name the entry */
            snprintf(c->cache_path + strlen(c->cache_path), 3, "%02x", key[i]);
        strcat(c->cache_path, ".bin");
        if (load_cached(c, key, options)) {
            c->from_cache = 1;
            return SONA_OK;
        }
    }
    sona_status st = build_from_source(c, options);
    if (st == SONA_OK && have_dir)
        store_cached(c, dir, key);
    return st;
}
