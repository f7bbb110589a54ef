/* SPDX-License-Identifier: MIT */
/* CPU fallback of the dispatch layer: an accelerator op that fails with SONA_E_BACKEND is redone
 * on the CPU from the backend's buffers, counted, and its result equals the reference. Driven
 * by a fake accelerator (device buffers in host memory, every op failing), so it runs on every
 * host; test_opencl checks the same path on the real OpenCL module. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"
#include "dispatch/dispatch.h"
#include "support/fill.h"
#include "support/op_cases.h"

static int fake_calls;

/* Device memory that is not the host's: a header before the data, so a host pointer passed by
 * mistake would not be found by the fallback's download. */
typedef struct fake_buf {
    uint64_t magic;
    size_t bytes;
    unsigned char data[];
} fake_buf;
#define FAKE_MAGIC 0x5e7ab1e5u

static sona_status fake_alloc(void *ctx, size_t bytes, void **buf)
{
    (void)ctx;
    fake_buf *b = malloc(sizeof *b + (bytes ? bytes : 1));
    if (!b)
        return SONA_E_NOMEM;
    b->magic = FAKE_MAGIC;
    b->bytes = bytes;
    *buf = b;
    return SONA_OK;
}
static void fake_free(void *ctx, void *buf)
{
    (void)ctx;
    free(buf);
}
static sona_status fake_upload(void *ctx, void *buf, size_t off, const void *src, size_t bytes)
{
    (void)ctx;
    fake_buf *b = buf;
    cr_assert_eq(b->magic, FAKE_MAGIC, "upload to something that is not a device buffer");
    cr_assert_leq(off + bytes, b->bytes, "upload past the end of a device buffer");
    memcpy(b->data + off, src, bytes);
    return SONA_OK;
}
static sona_status fake_download(void *ctx, void *dst, const void *buf, size_t off, size_t bytes)
{
    (void)ctx;
    const fake_buf *b = buf;
    cr_assert_eq(b->magic, FAKE_MAGIC, "download from something that is not a device buffer");
    cr_assert_leq(off + bytes, b->bytes, "download past the end of a device buffer");
    memcpy(dst, b->data + off, bytes);
    return SONA_OK;
}
static sona_status fake_sync(void *ctx)
{
    (void)ctx;
    return SONA_OK;
}

#define FAILING(op, type)                                          \
    static sona_status fail_##op(void *ctx, const type *a)         \
    {                                                              \
        (void)ctx;                                                 \
        (void)a;                                                   \
        fake_calls++;                                              \
        return SONA_E_BACKEND;                                     \
    }
FAILING(lora_apply, sona_lora_apply_args)
FAILING(lora_grad, sona_lora_grad_args)
FAILING(param_update, sona_param_update_args)
FAILING(sqdist_argmin, sona_sqdist_argmin_args)
FAILING(knn_exact, sona_knn_exact_args)
FAILING(gemm, sona_gemm_args)
FAILING(cluster_sums, sona_cluster_sums_args)

static const sona_backend failing = {
    .name = "failing", .device = "fake accelerator whose ops all fail", .host_memory = 0,
    .alloc = fake_alloc, .free = fake_free, .upload = fake_upload, .download = fake_download,
    .sync = fake_sync, .lora_apply = fail_lora_apply, .lora_grad = fail_lora_grad,
    .param_update = fail_param_update, .sqdist_argmin = fail_sqdist_argmin,
    .knn_exact = fail_knn_exact, .gemm = fail_gemm, .cluster_sums = fail_cluster_sums,
};

/* The same fake device, but every op goes through sona_op_run (what core code calls). */
#define ROUTED(op, type, id) \
    static sona_status routed_##op(void *ctx, const type *a) { (void)ctx; return sona_op_run(&failing, id, a); }
ROUTED(lora_apply, sona_lora_apply_args, SONA_OP_LORA_APPLY)
ROUTED(lora_grad, sona_lora_grad_args, SONA_OP_LORA_GRAD)
ROUTED(param_update, sona_param_update_args, SONA_OP_PARAM_UPDATE)
ROUTED(sqdist_argmin, sona_sqdist_argmin_args, SONA_OP_SQDIST_ARGMIN)
ROUTED(knn_exact, sona_knn_exact_args, SONA_OP_KNN_EXACT)
ROUTED(gemm, sona_gemm_args, SONA_OP_GEMM)
ROUTED(cluster_sums, sona_cluster_sums_args, SONA_OP_CLUSTER_SUMS)

static const sona_backend routed = {
    .name = "routed", .device = "fake accelerator behind sona_op_run", .host_memory = 0,
    .alloc = fake_alloc, .free = fake_free, .upload = fake_upload, .download = fake_download,
    .sync = fake_sync, .lora_apply = routed_lora_apply, .lora_grad = routed_lora_grad,
    .param_update = routed_param_update, .sqdist_argmin = routed_sqdist_argmin,
    .knn_exact = routed_knn_exact, .gemm = routed_gemm, .cluster_sums = routed_cluster_sums,
};

Test(fallback, every_op_is_redone_on_the_cpu_and_counted)
{
    const uint64_t seed = test_seed();
    printf("[fallback] seed %" PRIu64 "\n", seed);
    for (size_t i = 0; i < op_case_count; i++) {
        char desc[128], msg[512];
        op_case_describe(&op_cases[i], desc, sizeof desc);
        op_instance in;
        cr_assert_eq(op_instance_prepare(&in, &op_cases[i], seed + i), 0);
        const int calls = fake_calls;
        const uint64_t before = sona_dispatch_fallbacks();
        cr_assert_eq(op_instance_run(&in, &routed, msg, sizeof msg), SONA_OK, "%s: %s", desc, msg);
        cr_expect_eq(fake_calls, calls + 1, "%s: the accelerator was not tried first", desc);
        cr_expect_eq(sona_dispatch_fallbacks(), before + 1, "%s: fallback not counted", desc);
        cr_expect(op_instance_check(&in, msg, sizeof msg), "%s: %s", desc, msg);
        op_instance_free(&in);
    }
}

static sona_status fail_unsupported(void *ctx, const sona_gemm_args *a)
{
    (void)ctx;
    (void)a;
    return SONA_E_UNSUPPORTED;
}

Test(fallback, other_statuses_and_host_backends_are_not_redone)
{
    sona_backend b = failing;
    b.gemm = fail_unsupported;
    sona_gemm_args g = {.m = 1, .n = 1, .k = 1};
    const uint64_t before = sona_dispatch_fallbacks();
    cr_expect_eq(sona_op_run(&b, SONA_OP_GEMM, &g), SONA_E_UNSUPPORTED);
    /* A host backend that fails has nothing to fall back to. */
    b = failing;
    b.host_memory = 1;
    cr_expect_eq(sona_op_run(&b, SONA_OP_GEMM, &g), SONA_E_BACKEND);
    cr_expect_eq(sona_dispatch_fallbacks(), before);
}
