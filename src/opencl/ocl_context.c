/* SPDX-License-Identifier: MIT */
/* The OpenCL module's entry point: device choice, context and queue, buffers, errors. */
#include "opencl/ocl.h"
#include "opencl/ocl_locality.h"
#include "opencl/ocl_ops.h"
#include "opencl/ocl_program.h"

#include "backend/module.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- device choice ---------------------------------------------------------------------- */

#define MAX_DEVICES 32
typedef struct candidate {
    cl_platform_id platform;
    cl_device_id device;
    cl_device_type type;
    char name[256];
} candidate;

static int is_number(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return 0;
    return 1;
}

static int contains_nocase(const char *hay, const char *needle)
{
    const size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return 1;
    return 0;
}

static int list_devices(candidate *out, char *why, size_t why_len)
{
    cl_platform_id plats[8];
    cl_uint np = 0;
    cl_int err = clGetPlatformIDs(8, plats, &np);
    if (err != CL_SUCCESS || np == 0) {
        snprintf(why, why_len, "no OpenCL platform (clGetPlatformIDs: %s)", ocl_status_name(err));
        return 0;
    }
    int n = 0;
    for (cl_uint p = 0; p < np && p < 8; p++) {
        cl_device_id devs[MAX_DEVICES];
        cl_uint nd = 0;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, MAX_DEVICES, devs, &nd) != CL_SUCCESS)
            continue;
        for (cl_uint d = 0; d < nd && n < MAX_DEVICES; d++) {
            candidate *c = &out[n];
            c->platform = plats[p];
            c->device = devs[d];
            if (clGetDeviceInfo(devs[d], CL_DEVICE_TYPE, sizeof c->type, &c->type, NULL) != CL_SUCCESS ||
                clGetDeviceInfo(devs[d], CL_DEVICE_NAME, sizeof c->name, c->name, NULL) != CL_SUCCESS)
                continue;
            n++;
        }
    }
    if (n == 0)
        snprintf(why, why_len, "no OpenCL device on %u platform(s)", np);
    return n;
}

static void names_of(const candidate *cs, int n, char *buf, size_t len)
{
    buf[0] = '\0';
    for (int i = 0; i < n; i++) {
        size_t used = strlen(buf);
        snprintf(buf + used, len - used, "%s#%d %s", i ? ", " : "", i, cs[i].name);
    }
}

/* GPUs (and accelerators) first; a CPU device only when asked for: SONA_OPENCL_DEVICE (an
 * index, a substring of the device name, or "any") or SONA_BACKEND=opencl. */
static const candidate *choose_device(const candidate *cs, int n, char *why, size_t why_len)
{
    char names[400];
    names_of(cs, n, names, sizeof names);
    const char *want = getenv("SONA_OPENCL_DEVICE");
    const char *backend = getenv("SONA_BACKEND");
    const int cpu_ok = (want && !strcmp(want, "any")) || (backend && !strcmp(backend, "opencl"));
    if (want && *want && strcmp(want, "any") != 0) {
        if (is_number(want)) {
            const long i = strtol(want, NULL, 10);
            if (i < n)
                return &cs[i];
        } else {
            for (int i = 0; i < n; i++)
                if (contains_nocase(cs[i].name, want))
                    return &cs[i];
        }
        snprintf(why, why_len, "SONA_OPENCL_DEVICE=%s matches no device (%s)", want, names);
        return NULL;
    }
    for (int i = 0; i < n; i++)
        if (cs[i].type & (CL_DEVICE_TYPE_GPU | CL_DEVICE_TYPE_ACCELERATOR))
            return &cs[i];
    if (cpu_ok)
        return &cs[0];
    snprintf(why, why_len,
             "no OpenCL GPU; CPU devices (%s) are used only with SONA_BACKEND=opencl or "
             "SONA_OPENCL_DEVICE", names);
    return NULL;
}

/* ---- buffers ----------------------------------------------------------------------------- */

static cl_mem mem_of(const void *p) { return (cl_mem)(uintptr_t)p; }

static sona_status ocl_alloc(void *ctx, size_t bytes, void **buf)
{
    ocl_ctx *c = ctx;
    *buf = NULL;
    if (bytes > c->max_alloc)
        return ocl_failf(SONA_E_NOMEM, "clCreateBuffer: %zu bytes exceed the device's largest "
                         "allocation (%zu)", bytes, c->max_alloc);
    cl_int err;
    cl_mem m = clCreateBuffer(c->context, CL_MEM_READ_WRITE, bytes ? bytes : 4, NULL, &err);
    if (err != CL_SUCCESS)
        return ocl_fail(SONA_E_NOMEM, "clCreateBuffer", err, NULL);
    *buf = (void *)m;
    return SONA_OK;
}

static void ocl_free(void *ctx, void *buf)
{
    (void)ctx;
    if (buf)
        clReleaseMemObject(mem_of(buf));
}

static sona_status ocl_upload(void *ctx, void *buf, size_t offset, const void *src, size_t bytes)
{
    ocl_ctx *c = ctx;
    if (!bytes)
        return SONA_OK;
    cl_int err = clEnqueueWriteBuffer(c->queue, mem_of(buf), CL_TRUE, offset, bytes, src, 0, NULL, NULL);
    return err == CL_SUCCESS ? SONA_OK : ocl_fail(SONA_E_BACKEND, "clEnqueueWriteBuffer", err, NULL);
}

static sona_status ocl_download(void *ctx, void *dst, const void *buf, size_t offset, size_t bytes)
{
    ocl_ctx *c = ctx;
    if (!bytes)
        return SONA_OK;
    cl_int err = clEnqueueReadBuffer(c->queue, mem_of(buf), CL_TRUE, offset, bytes, dst, 0, NULL, NULL);
    return err == CL_SUCCESS ? SONA_OK : ocl_fail(SONA_E_BACKEND, "clEnqueueReadBuffer", err, NULL);
}

static sona_status ocl_sync(void *ctx)
{
    ocl_ctx *c = ctx;
    cl_int err = clFinish(c->queue);
    return err == CL_SUCCESS ? SONA_OK : ocl_fail(SONA_E_BACKEND, "clFinish", err, NULL);
}

static void ocl_shutdown(void *ctx)
{
    ocl_ctx *c = ctx;
    if (!c)
        return;
    for (int i = 0; i < S_COUNT; i++)
        if (c->scratch[i].buf)
            clReleaseMemObject(c->scratch[i].buf);
    for (int i = 0; i < K_COUNT; i++)
        if (c->kernels[i])
            clReleaseKernel(c->kernels[i]);
    if (c->program)
        clReleaseProgram(c->program);
    if (c->queue)
        clReleaseCommandQueue(c->queue);
    if (c->context)
        clReleaseContext(c->context);
    sona_host_locality_free(&c->near);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* ---- the module entry point -------------------------------------------------------------- */

static sona_backend backend_table = {
    .name = "opencl",
    .host_memory = 0,
    .supports = ocl_supports,
    .alloc = ocl_alloc,
    .free = ocl_free,
    .upload = ocl_upload,
    .download = ocl_download,
    .sync = ocl_sync,
    .lora_apply = ocl_lora_apply,
    .lora_grad = ocl_lora_grad,
    .param_update = ocl_param_update,
    .sqdist_argmin = ocl_sqdist_argmin,
    .knn_exact = ocl_knn_exact,
    .gemm = ocl_gemm,
    .cluster_sums = ocl_cluster_sums,
    .bind_host_thread = ocl_bind_host_thread,
    .last_error = ocl_last_error,
    .shutdown = ocl_shutdown,
};

static sona_status open_device(ocl_ctx *c, const candidate *d, char *why, size_t why_len)
{
    c->platform = d->platform;
    c->device = d->device;
    cl_int err;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)d->platform, 0};
    c->context = clCreateContext(props, 1, &d->device, NULL, NULL, &err);
    if (err != CL_SUCCESS) {
        snprintf(why, why_len, "clCreateContext on %s: %s", d->name, ocl_status_name(err));
        return SONA_E_UNAVAILABLE;
    }
    c->queue = clCreateCommandQueue(c->context, d->device, 0, &err);
    if (err != CL_SUCCESS) {
        snprintf(why, why_len, "clCreateCommandQueue on %s: %s", d->name, ocl_status_name(err));
        return SONA_E_UNAVAILABLE;
    }
    cl_ulong max_alloc = 0;
    size_t max_wg = 1;
    clGetDeviceInfo(d->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof max_alloc, &max_alloc, NULL);
    clGetDeviceInfo(d->device, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof max_wg, &max_wg, NULL);
    c->max_alloc = (size_t)max_alloc;
    c->wg = 1;
    while (c->wg * 2 <= max_wg && c->wg < 128)
        c->wg *= 2;
    sona_status st = ocl_program_load(c);
    if (st != SONA_OK) {
        snprintf(why, why_len, "%s", ocl_last_error(c));
        return SONA_E_UNAVAILABLE;
    }
    char platform[128] = "", version[128] = "";
    clGetPlatformInfo(d->platform, CL_PLATFORM_NAME, sizeof platform, platform, NULL);
    clGetDeviceInfo(d->device, CL_DRIVER_VERSION, sizeof version, version, NULL);
    ocl_locality_init(c);
    snprintf(c->device_text, sizeof c->device_text, "%s (%s, driver %s, %s), kernels %s%s%s%s, host %s",
             d->name, platform, version, (d->type & CL_DEVICE_TYPE_CPU) ? "CPU device" : "GPU",
             c->from_cache ? "loaded from cache" : "compiled", c->cache_note[0] ? " (" : "", c->cache_note,
             c->cache_note[0] ? ")" : "", c->near.text);
    return SONA_OK;
}

SONA_MODULE_EXPORT sona_status sona_module_open(uint32_t abi, const sona_backend **out, char *why,
                                                size_t why_len);

SONA_MODULE_EXPORT sona_status sona_module_open(uint32_t abi, const sona_backend **out, char *why,
                                                size_t why_len)
{
    *out = NULL;
    if (abi != SONA_MODULE_ABI) {
        snprintf(why, why_len, "module ABI %d, libsona wants %u", SONA_MODULE_ABI, abi);
        return SONA_E_VERSION;
    }
    candidate cs[MAX_DEVICES];
    const int n = list_devices(cs, why, why_len);
    if (n == 0)
        return SONA_E_UNAVAILABLE;
    const candidate *d = choose_device(cs, n, why, why_len);
    if (!d)
        return SONA_E_UNAVAILABLE;
    ocl_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(why, why_len, "out of memory");
        return SONA_E_NOMEM;
    }
    pthread_mutex_init(&c->lock, NULL);
    const char *fault = getenv("SONA_OPENCL_FAULT");
    c->fault_op = fault && *fault ? fault : NULL;
    sona_status st = open_device(c, d, why, why_len);
    if (st != SONA_OK) {
        ocl_shutdown(c);
        return st;
    }
    backend_table.ctx = c;
    backend_table.device = c->device_text;
    *out = &backend_table;
    return SONA_OK;
}
