/* SPDX-License-Identifier: MIT */
/* The module's program: built once per device and cached on disk, keyed by device name,
 * driver version, build options and a hash of the source, so a second start does not compile.
 * Cache directory: $SONA_CACHE_DIR, else $XDG_CACHE_HOME/sona/opencl, else ~/.cache/sona/opencl. */
#include "opencl/ocl.h"

#include "kernels_cl.h"

#include <errno.h>
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

static uint64_t fnv1a(uint64_t h, const char *s)
{
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h ^ 0xff; /* separator, so "ab"+"c" differs from "a"+"bc" */
}

/* mkdir -p; 0 on success. */
static int make_dirs(char *path)
{
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int bad = mkdir(path, 0755) != 0 && errno != EEXIST;
        *p = '/';
        if (bad)
            return -1;
    }
    return mkdir(path, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static int cache_dir(char *out, size_t len)
{
    const char *env = getenv("SONA_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (env && *env)
        snprintf(out, len, "%s", env);
    else if (xdg && *xdg)
        snprintf(out, len, "%s/sona/opencl", xdg);
    else if (home && *home)
        snprintf(out, len, "%s/.cache/sona/opencl", home);
    else
        return -1;
    return make_dirs(out);
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

static int load_cached(ocl_ctx *c, const char *options)
{
    FILE *f = fopen(c->cache_path, "rb");
    if (!f)
        return 0;
    unsigned char *bin = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (bin = malloc((size_t)size)) && fread(bin, 1, (size_t)size, f) != (size_t)size)
        size = -1;
    fclose(f);
    if (!bin || size <= 0) {
        free(bin);
        return 0;
    }
    const size_t len = (size_t)size;
    const unsigned char *bins[1] = {bin};
    cl_int err, bin_status;
    c->program = clCreateProgramWithBinary(c->context, 1, &c->device, &len, bins, &bin_status, &err);
    free(bin);
    if (err != CL_SUCCESS || bin_status != CL_SUCCESS ||
        clBuildProgram(c->program, 1, &c->device, options, NULL, NULL) != CL_SUCCESS ||
        create_kernels(c) != SONA_OK) {
        release_program(c); /* a stale or foreign binary: rebuild from source */
        return 0;
    }
    return 1;
}

/* Writes the built program's binary to the cache (temporary file, then rename). */
static void store_cached(ocl_ctx *c)
{
    size_t size = 0;
    if (clGetProgramInfo(c->program, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) != CL_SUCCESS ||
        size == 0)
        return;
    unsigned char *bin = malloc(size);
    unsigned char *bins[1] = {bin};
    if (!bin || clGetProgramInfo(c->program, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) != CL_SUCCESS) {
        free(bin);
        return;
    }
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", c->cache_path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    int ok = f && fwrite(bin, 1, size, f) == size;
    if (f && fclose(f) != 0)
        ok = 0;
    if (ok && rename(tmp, c->cache_path) == 0)
        ok = 2;
    if (ok != 2)
        remove(tmp);
    free(bin);
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
    uint64_t key = 1469598103934665603ull;
    const char *parts[] = {name, driver, version, options, sona_opencl_kernels_source};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        key = fnv1a(key, parts[i]);
    char dir[900];
    const int have_dir = cache_dir(dir, sizeof dir) == 0;
    if (have_dir) {
        snprintf(c->cache_path, sizeof c->cache_path, "%s/kernels-%016llx.bin", dir,
                 (unsigned long long)key);
        if (load_cached(c, options)) {
            c->from_cache = 1;
            return SONA_OK;
        }
    }
    sona_status st = build_from_source(c, options);
    if (st == SONA_OK && have_dir)
        store_cached(c);
    return st;
}
