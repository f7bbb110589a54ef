/* SPDX-License-Identifier: MIT */
/* CPU variant dispatch: SONA_CPU_VARIANT forces each variant the host runs (and the forced
 * variant then computes a real adapter forward correctly); an unsupported, foreign or unknown
 * name is refused with a status and a message, never a crash, and the library still works on
 * the best variant. Criterion runs each test in its own process, so each sees a fresh choice.
 * Routing by cost (dispatch/cost.h): loop-A-sized ops stay on the CPU against any device model,
 * large ones go to the cheaper backend, SONA_BACKEND overrides, the call counters are exact.
 * The double host kernels of the cluster merge give every variant's bits. */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "dispatch/cost.h"
#include "dispatch/dispatch.h"
#include "dispatch/vecmath.h"
#include "cpu/host_loops.h"
#include "sona.h"
#include "sona/lora.h"
#include "sona/system.h"
#include "support/op_cases.h"

#include "support/fill.h"

/* Whether this build has the variant and the host can run it. */
static int host_runs(const char *name)
{
    const sona_cpu_variant *vars;
    const uint32_t nv = sona_cpu_variants(&vars);
    const uint32_t have = sona_probe()->features;
    for (uint32_t i = 0; i < nv; i++)
        if (!strcmp(vars[i].ops->name, name))
            return (have & vars[i].needs) == vars[i].needs;
    return 0;
}

/* y = x + s B (A x) through the public API on the chosen variant, against a double reference;
 * odd hidden size so vector tails are exercised. */
static void check_forward_works(void)
{
    const uint32_t H = 67, r = 3;
    sona_lora_config cfg;
    sona_lora_config_default(&cfg, SONA_LORA_BASE, H);
    cfg.rank = r;
    cfg.count = 2;
    sona_lora *l = NULL;
    cr_assert_eq(sona_lora_create(&cfg, &l), SONA_OK, "%s", sona_last_error());
    float A[3 * 67], B[67 * 3], x[67], y[67];
    for (uint32_t i = 0; i < r * H; i++) {
        A[i] = (float)((int)(i % 13) - 6) / 16.0f;
        B[i] = (float)((int)(i % 7) - 3) / 8.0f;
    }
    for (uint32_t h = 0; h < H; h++)
        x[h] = (float)((int)(h % 5) - 2) / 4.0f;
    cr_assert_eq(sona_lora_set_weights(l, 1, A, B), SONA_OK);
    cr_assert_eq(sona_lora_forward(l, 1, x, y), SONA_OK, "%s", sona_lora_last_error(l));
    float Bt[3 * 67];
    for (uint32_t h = 0; h < H; h++)
        for (uint32_t j = 0; j < r; j++)
            Bt[j * H + h] = B[h * r + j];
    double want[67], mag[67];
    op_ref_lora_row(x, H, r, A, Bt, cfg.alpha / (double)r, want, mag);
    for (uint32_t h = 0; h < H; h++)
        cr_expect(fabs(y[h] - want[h]) <= 1e-5 * mag[h], "y[%u] = %.7g, want %.7g", h, y[h], want[h]);
    sona_lora_destroy(l);
}

/* Forces `name`; checks it is honoured when the host runs it, refused cleanly otherwise. */
static void force(const char *name)
{
    cr_assert_eq(setenv("SONA_CPU_VARIANT", name, 1), 0);
    const sona_backend *cpu = sona_cpu_backend();
    cr_assert_not_null(cpu, "the CPU backend is never NULL");
    sona_cpu_info info;
    cr_assert_eq(sona_cpu_info_get(&info), SONA_OK);
    const sona_backend *be;
    char why[256] = "";
    const sona_status st = sona_backend_default(&be, why, sizeof why);
    if (host_runs(name)) {
        cr_expect_str_eq(cpu->name, name);
        cr_expect_str_eq(info.variant, name);
        cr_expect(strstr(info.variant_reason, "forced") != NULL, "reason: %s", info.variant_reason);
        cr_expect_eq(st, SONA_OK, "%s", why);
        check_forward_works();
        return;
    }
    /* Refused: a status and a message naming the choice; the best variant keeps running. */
    cr_expect_neq(strcmp(cpu->name, name), 0);
    cr_expect_eq(st, SONA_E_UNSUPPORTED);
    cr_expect(strstr(why, name) != NULL, "message should name '%s': %s", name, why);
    cr_expect(strstr(info.variant_reason, "refused") != NULL, "reason: %s", info.variant_reason);
    sona_lora_config cfg;
    sona_lora_config_default(&cfg, SONA_LORA_MICRO, 16);
    sona_lora *l = (sona_lora *)1;
    cr_expect_eq(sona_lora_create(&cfg, &l), SONA_E_UNSUPPORTED);
    cr_expect_null(l);
    cr_expect(strstr(sona_last_error(), name) != NULL, "last error: %s", sona_last_error());
    /* The table itself still works: ops never run on a variant the CPU lacks. */
    cr_expect(host_runs(cpu->name), "fell back to %s, which this host cannot run", cpu->name);
}

Test(dispatch, force_scalar) { force("scalar"); }
Test(dispatch, force_avx2) { force("avx2"); }
Test(dispatch, force_avx512) { force("avx512"); }
Test(dispatch, force_neon) { force("neon"); }
Test(dispatch, force_unknown_name) { force("sse9"); }
Test(dispatch, force_wrong_case) { force("AVX2"); }

Test(dispatch, unset_picks_the_widest_supported)
{
    cr_assert_eq(unsetenv("SONA_CPU_VARIANT"), 0);
    const sona_backend *cpu = sona_cpu_backend();
    const sona_cpu_variant *vars;
    const uint32_t nv = sona_cpu_variants(&vars);
    const uint32_t have = sona_probe()->features;
    const char *widest = "scalar";
    for (uint32_t i = 0; i < nv; i++)
        if ((have & vars[i].needs) == vars[i].needs)
            widest = vars[i].ops->name;
    cr_expect_str_eq(cpu->name, widest);
    check_forward_works();
}

/* Every SIMD variant fills every op itself (no silent scalar fallback in its own table). */
Test(dispatch, simd_variants_fill_every_op)
{
    const sona_cpu_variant *vars;
    const uint32_t nv = sona_cpu_variants(&vars);
    cr_assert(nv >= 1);
    cr_expect_str_eq(vars[0].ops->name, "scalar");
    for (uint32_t i = 1; i < nv; i++) {
        const sona_backend *b = vars[i].ops;
        cr_expect(b->lora_apply && b->lora_grad && b->param_update && b->sqdist_argmin &&
                      b->knn_exact && b->gemm && b->cluster_sums,
                  "%s leaves an op to the scalar code", b->name);
    }
}

Test(dispatch, every_feature_bit_has_one_name)
{
    const uint32_t bits[] = {SONA_CPU_SSE42,    SONA_CPU_AVX2,     SONA_CPU_FMA,  SONA_CPU_AVX512F,
                             SONA_CPU_AVX512BW, SONA_CPU_AVX512VL, SONA_CPU_NEON, SONA_CPU_F16C};
    uint32_t walked = 0;
    for (uint32_t bit = 1; sona_cpu_feature_name(bit); bit <<= 1)
        walked |= bit;
    uint32_t all = 0;
    for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++) {
        all |= bits[i];
        const char *name = sona_cpu_feature_name(bits[i]);
        cr_assert_not_null(name, "bit %#x has no name", bits[i]);
        for (size_t j = 0; j < i; j++)
            cr_expect_str_neq(name, sona_cpu_feature_name(bits[j]));
    }
    cr_expect_eq(walked, all, "walking the bits up to the first NULL names %#x, not %#x", walked, all);
    cr_expect_str_eq(sona_cpu_feature_name(SONA_CPU_AVX512BW), "avx512bw");
    cr_expect_null(sona_cpu_feature_name(0));
    cr_expect_null(sona_cpu_feature_name(SONA_CPU_AVX2 | SONA_CPU_FMA), "two bits are not one name");
    cr_expect_null(sona_cpu_feature_name(1u << 31));
}

/* SONA_MODULE_DIR names code to load: a relative one would load whatever the current directory
 * holds, so it is refused (the module unavailable, saying why) rather than searched. */
Test(dispatch, relative_module_dir_is_refused)
{
    setenv("SONA_MODULE_DIR", "lib", 1); /* this process's modules are loaded once: not yet */
    int checked = 0;
    const char *names[] = {"opencl", "cuda"};
    for (int i = 0; i < 2; i++) {
        const sona_backend *b = NULL;
        char why[256] = "";
        const sona_status st = sona_backend_get(names[i], &b, why, sizeof why);
        printf("[dispatch] %s with SONA_MODULE_DIR=lib: %s\n", names[i], st == SONA_OK ? b->device : why);
        if (strstr(why, "not built") || strstr(why, "disabled at build time"))
            continue;
        cr_expect_eq(st, SONA_E_UNAVAILABLE, "%s loaded through a relative SONA_MODULE_DIR", names[i]);
        cr_expect(strstr(why, "SONA_MODULE_DIR=lib refused: not an absolute path") != NULL, "%s: %s", names[i], why);
        checked++;
    }
    if (!checked)
        cr_skip_test("no GPU module in this build");
}

/* ---- routing by cost (dispatch/cost.h) ------------------------------------------------------ */

/* A device backend that does nothing: its ops succeed without touching their buffers. It has no
 * alloc, so the cost model never calibrates it: it keeps its kind's table or the one set. */
#define SONA_OP(id, field, args) \
    static sona_status fake_##field(void *ctx, const args *a) { (void)ctx; (void)a; return SONA_OK; }
#include "backend/ops.def"
#undef SONA_OP

static sona_backend fake_device(const char *name)
{
    sona_backend b = {.name = name, .device = "fake device", .host_memory = 0};
#define SONA_OP(id, field, args) b.field = fake_##field;
#include "backend/ops.def"
#undef SONA_OP
    return b;
}

static sona_cost_model table(double launch_us, double link_gbs, double peak, double memory, double eff)
{
    sona_cost_model m = {.launch_us = launch_us, .transfer_gbs = link_gbs, .peak_gflops = peak,
                         .memory_gbs = memory};
    for (int op = 0; op < SONA_OP_COUNT; op++)
        m.efficiency[op] = eff;
    return m;
}

/* The ops of a request: loop A's single-row apply, gradient and update of a rank-R Micro-LoRA
 * at hidden 4096, and the small dot products of a search (one query against a few rows, a 1 x 1
 * gemm over 4096). */
static void expect_loop_a_rank_on_cpu(const sona_backend *dev, const char *what, uint32_t R)
{
    const sona_backend *cpu = sona_cpu_backend();
    const uint32_t H = 4096;
    for (uint32_t adapters = 1; adapters <= 1000; adapters *= 10) {
        sona_lora_apply_args ap = {.w = {.hidden = H, .rank = R, .num_adapters = adapters}, .n = 1};
        cr_expect_eq(sona_route(SONA_OP_LORA_APPLY, &ap, dev), cpu,
                     "%s: single-row lora_apply (%u adapters) left the CPU: %.2f us there, %.2f here",
                     what, adapters, sona_cost_us(dev, SONA_OP_LORA_APPLY, &ap),
                     sona_cost_us(cpu, SONA_OP_LORA_APPLY, &ap));
    }
    sona_lora_grad_args g = {.w = {.hidden = H, .rank = R, .num_adapters = 1}, .n = 1};
    cr_expect_eq(sona_route(SONA_OP_LORA_GRAD, &g, dev), cpu, "%s: loop A's lora_grad (one step), rank %u: %.2f us there, %.2f here", what, R,
                 sona_cost_us(dev, SONA_OP_LORA_GRAD, &g), sona_cost_us(cpu, SONA_OP_LORA_GRAD, &g));
    float dummy = 0; /* only whether the Fisher pointers are set matters */
    sona_param_update_args u = {.segments = 2, .len = R * H, .fisher_sum = &dummy, .fisher_theta = &dummy,
                                .fisher = &dummy};
    cr_expect_eq(sona_route(SONA_OP_PARAM_UPDATE, &u, dev), cpu, "%s: loop A's param_update, rank %u: %.2f us there, %.2f here", what, R,
                 sona_cost_us(dev, SONA_OP_PARAM_UPDATE, &u), sona_cost_us(cpu, SONA_OP_PARAM_UPDATE, &u));
    sona_knn_exact_args k = {.m = 1, .n = 16, .d = H, .k = 4};
    cr_expect_eq(sona_route(SONA_OP_KNN_EXACT, &k, dev), cpu, "%s: one query against 16 rows", what);
    sona_gemm_args dot = {.m = 1, .n = 1, .k = H, .alpha = 1.0f};
    cr_expect_eq(sona_route(SONA_OP_GEMM, &dot, dev), cpu, "%s: one dot product", what);
    sona_sqdist_argmin_args sq = {.n = 1, .k = 32, .d = 256};
    cr_expect_eq(sona_route(SONA_OP_SQDIST_ARGMIN, &sq, dev), cpu, "%s: one row against 32 centroids", what);
}

/* At the default preset's Micro-LoRA rank, and at ranks 2 and 8 around it. */
static void expect_loop_a_on_cpu(const sona_backend *dev, const char *what)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, 4096);
    const uint32_t ranks[] = {2, c.micro_rank, 8};
    for (size_t k = 0; k < sizeof ranks / sizeof ranks[0]; k++)
        expect_loop_a_rank_on_cpu(dev, what, ranks[k]);
}

/* No small per-request op leaves the CPU, whatever device is there: the default tables of
 * OpenCL and CUDA, and a device at least as good as any today (a 10 us round trip, PCIe 5 at
 * 25 GB/s, 60 TFLOP/s, 3 TB/s), against the CPU's measured model and its table. */
Test(dispatch, loop_a_sized_ops_stay_on_the_cpu)
{
    unsetenv("SONA_BACKEND");
    sona_backend ocl = fake_device("opencl"), cuda = fake_device("cuda"), best = fake_device("cuda");
    sona_cost_model m;
    sona_cost_model_default(SONA_KIND_OPENCL, &m);
    sona_cost_model_set(&ocl, &m);
    sona_cost_model_default(SONA_KIND_CUDA, &m);
    sona_cost_model_set(&cuda, &m);
    m = table(10.0, 25.0, 60000.0, 3000.0, 1.0);
    sona_cost_model_set(&best, &m);
    for (int pass = 0; pass < 2; pass++) {
        const char *cpu_model = pass ? "CPU table" : "CPU measured";
        if (pass) {
            sona_cost_model_default(SONA_KIND_CPU, &m);
            sona_cost_model_set(sona_cpu_backend(), &m);
        }
        sona_cost_model_get(sona_cpu_backend(), &m);
        printf("[dispatch] %s: %.1f GFLOP/s, %.1f GB/s, %.1f GB/s to %.0f MiB cached\n", cpu_model, m.peak_gflops,
               m.memory_gbs, m.cache_gbs, m.cache_bytes / 1048576.0);
        /* A sanitizer build (or the scalar variant) measures a CPU many times slower than a SIMD
         * variant: the model is right to send more to a device then, so only the table is held
         * to the claim. */
        if (!pass && m.peak_gflops < 10.0) {
            printf("[dispatch] the measured CPU is slow (a sanitizer build, or scalar): checked on the table only\n");
            continue;
        }
        expect_loop_a_on_cpu(&ocl, pass ? "opencl table, CPU table" : "opencl table, CPU measured");
        expect_loop_a_on_cpu(&cuda, pass ? "cuda table, CPU table" : "cuda table, CPU measured");
        expect_loop_a_on_cpu(&best, pass ? "best device, CPU table" : "best device, CPU measured");
    }
    /* The same with the OpenCL device this machine has, if any (PoCL under ctest), measured. */
    const sona_backend *real = NULL;
    char why[256];
    if (sona_backend_get("opencl", &real, why, sizeof why) == SONA_OK && !real->host_memory) {
        const uint64_t t0 = sona_monotonic_us();
        sona_cost_model_get(real, &m);
        printf("[dispatch] %s measured in %.1f ms: launch %.1f us, link %.1f GB/s, %.1f GFLOP/s, %.1f GB/s\n",
               real->device, (double)(sona_monotonic_us() - t0) / 1e3, m.launch_us, m.transfer_gbs,
               m.peak_gflops, m.memory_gbs);
        cr_expect(m.calibrated);
        expect_loop_a_on_cpu(real, "the OpenCL device here");
    }
}

/* The model's arithmetic, on fake tables: a large batched apply goes to the device that is
 * cheaper, and stays on the CPU when the device is the slower one; the crossover is where the
 * choice flips. */
Test(dispatch, large_ops_go_to_the_cheaper_backend)
{
    unsetenv("SONA_BACKEND");
    const sona_backend *cpu = sona_cpu_backend();
    sona_backend fast = fake_device("opencl"), slow = fake_device("cuda");
    sona_cost_model m = table(0.2, 0.0, 100.0, 20.0, 0.2);
    sona_cost_model_set(cpu, &m);
    m = table(10.0, 10.0, 10000.0, 500.0, 0.5);
    sona_cost_model_set(&fast, &m);
    m = table(10.0, 10.0, 10.0, 5.0, 0.5);
    sona_cost_model_set(&slow, &m);

    /* 256 x 4096 x r16 over 64 adapters: 69 206 016 flops, 8 389 632 bytes moved (x, y, ids),
     * 41 944 064 bytes touched (and the 64 adapters' A and Bt). */
    sona_lora_apply_args a = {.w = {.hidden = 4096, .rank = 16, .num_adapters = 64}, .n = 256};
    sona_op_work w;
    cr_assert(sona_op_work_of(SONA_OP_LORA_APPLY, &a, &w));
    cr_expect_eq(w.flops, 69206016.0);
    cr_expect_eq(w.transfer_bytes, 8389632.0);
    cr_expect_eq(w.bytes, 41944064.0);
    /* CPU: 0.2 + max(69.2 M / 20 GFLOP/s, 41.9 MB / 20 GB/s); device: 10 + 8.39 MB / 10 GB/s +
     * max(69.2 M / 5 TFLOP/s, 41.9 MB / 500 GB/s). */
    cr_expect_float_eq(sona_cost_us(cpu, SONA_OP_LORA_APPLY, &a), 0.2 + 69206016.0 / 20e3, 1e-6);
    cr_expect_float_eq(sona_cost_us(&fast, SONA_OP_LORA_APPLY, &a), 10.0 + 838.9632 + 41944064.0 / 500e3, 1e-6);
    cr_expect_eq(sona_route(SONA_OP_LORA_APPLY, &a, &fast), &fast);
    cr_expect_eq(sona_route(SONA_OP_LORA_APPLY, &a, &slow), cpu);
    cr_expect_eq(sona_route(SONA_OP_LORA_APPLY, &a, NULL), cpu);
    sona_gemm_args g = {.m = 1024, .n = 1024, .k = 1024, .alpha = 1.0f};
    cr_expect_eq(sona_route(SONA_OP_GEMM, &g, &fast), &fast);
    cr_expect_eq(sona_route(SONA_OP_GEMM, &g, &slow), cpu);

    /* An op the device refuses for this shape stays on the CPU however cheap the device. */
    a.w.rank = SONA_LORA_MAX_RANK + 1;
    fast.supports = NULL;
    cr_expect_eq(sona_route(SONA_OP_LORA_APPLY, &a, &fast), &fast, "no supports(): every shape");
    sona_backend picky = fake_device("opencl");
    picky.lora_apply = NULL;
    sona_cost_model_get(&fast, &m);
    sona_cost_model_set(&picky, &m);
    a.w.rank = 16;
    cr_expect_eq(sona_route(SONA_OP_LORA_APPLY, &a, &picky), cpu, "an op the device lacks");

    /* Crossovers, in each op's shape family: the device loses just below, wins from there. */
    for (int op = 0; op < SONA_OP_COUNT; op++) {
        const uint64_t at = sona_cost_crossover((sona_op)op, &fast);
        const char *axis;
        sona_op_args s;
        cr_assert(sona_cost_shape((sona_op)op, at, &s, &axis));
        printf("[dispatch] %-14s fake device from %llu (%s)\n", sona_op_name((sona_op)op),
               (unsigned long long)at, axis);
        if (!at)
            continue;
        cr_expect_eq(sona_route((sona_op)op, &s, &fast), &fast, "%s at %llu", sona_op_name((sona_op)op),
                     (unsigned long long)at);
        if (at > 1) {
            cr_assert(sona_cost_shape((sona_op)op, at - 1, &s, NULL));
            cr_expect_eq(sona_route((sona_op)op, &s, &fast), cpu, "%s at %llu", sona_op_name((sona_op)op),
                         (unsigned long long)at - 1);
        }
    }
    /* With the kinds' tables, one row of the family never pays CUDA's round trip. */
    sona_cost_model_default(SONA_KIND_CPU, &m);
    sona_cost_model_set(cpu, &m);
    sona_cost_model_default(SONA_KIND_CUDA, &m);
    sona_backend cuda = fake_device("cuda");
    sona_cost_model_set(&cuda, &m);
    const uint64_t cuda_at = sona_cost_crossover(SONA_OP_LORA_APPLY, &cuda);
    printf("[dispatch] lora_apply: the CUDA table takes over from %llu rows\n", (unsigned long long)cuda_at);
    cr_expect_gt(cuda_at, 1, "one row never pays a device round trip");
    cr_expect_eq(sona_cost_crossover(SONA_OP_LORA_APPLY, &slow), 0, "a slower device never takes over");
    cr_expect_eq(sona_cost_crossover(SONA_OP_LORA_APPLY, cpu), 0);
}

/* SONA_BACKEND decides instead of the model: a device it names takes even one row, "cpu" keeps
 * even the largest batch on the host, and a backend other than the device keeps the call on the
 * CPU. */
Test(dispatch, sona_backend_overrides_the_model)
{
    const sona_backend *cpu = sona_cpu_backend();
    sona_backend dev = fake_device("opencl");
    sona_cost_model m = table(10.0, 10.0, 10000.0, 500.0, 0.5);
    sona_cost_model_set(&dev, &m);
    sona_cost_model_default(SONA_KIND_CPU, &m); /* not measured: a sanitizer build is slow */
    sona_cost_model_set(cpu, &m);
    sona_lora_apply_args one = {.w = {.hidden = 4096, .rank = 2, .num_adapters = 1}, .n = 1};
    sona_lora_apply_args big = {.w = {.hidden = 4096, .rank = 16, .num_adapters = 64}, .n = 4096};
    unsetenv("SONA_BACKEND");
    cr_expect_eq(sona_route(SONA_OP_LORA_APPLY, &one, &dev), cpu);
    cr_expect_eq(sona_route(SONA_OP_LORA_APPLY, &big, &dev), &dev);
    setenv("SONA_BACKEND", "opencl", 1);
    cr_expect_eq(sona_route(SONA_OP_LORA_APPLY, &one, &dev), &dev);
    cr_expect_eq(sona_route(SONA_OP_LORA_APPLY, &big, &dev), &dev);
    setenv("SONA_BACKEND", "cpu", 1);
    cr_expect_eq(sona_route(SONA_OP_LORA_APPLY, &one, &dev), cpu);
    cr_expect_eq(sona_route(SONA_OP_LORA_APPLY, &big, &dev), cpu);
    setenv("SONA_BACKEND", "cuda", 1);
    cr_expect_eq(sona_route(SONA_OP_LORA_APPLY, &big, &dev), cpu);
    unsetenv("SONA_BACKEND");
}

static sona_lora_weights count_weights(float *A, float *Bt, float *scale)
{
    for (int i = 0; i < 2 * 8; i++)
        A[i] = Bt[i] = 0.125f * (float)(i % 5);
    scale[0] = 0.5f;
    return (sona_lora_weights){.hidden = 8, .rank = 2, .num_adapters = 1, .A = A, .Bt = Bt, .scale = scale};
}

enum { COUNT_THREADS = 4, COUNT_CALLS = 2500 };

static void *count_worker(void *arg)
{
    (void)arg;
    float A[16], Bt[16], scale[1], x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, y[8];
    int32_t id = 0;
    sona_lora_apply_args a = {.w = count_weights(A, Bt, scale), .n = 1, .ids = &id, .x = x, .y = y};
    for (int i = 0; i < COUNT_CALLS; i++)
        if (sona_op_run(sona_cpu_backend(), SONA_OP_LORA_APPLY, &a) != SONA_OK)
            return (void *)1;
    return NULL;
}

static uint64_t calls_now(sona_op op, sona_backend_kind k) { return sona_dispatch_calls(op, k); }

/* The counters count every call exactly, per op and per backend kind: direct calls, runs, calls
 * from several threads at once, a device's calls, and the engine's single-row applies. */
Test(dispatch, call_counters_count_exactly)
{
    const sona_backend *cpu = sona_cpu_backend();
    uint64_t before[SONA_OP_COUNT][SONA_KIND_COUNT];
    for (int op = 0; op < SONA_OP_COUNT; op++)
        for (int k = 0; k < SONA_KIND_COUNT; k++)
            before[op][k] = calls_now((sona_op)op, (sona_backend_kind)k);

    float A[16], Bt[16], scale[1], x[8] = {1}, y[8];
    int32_t id = 0;
    sona_lora_apply_args a = {.w = count_weights(A, Bt, scale), .n = 1, .ids = &id, .x = x, .y = y};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(sona_op_call(cpu, SONA_OP_LORA_APPLY, &a), SONA_OK);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(sona_op_run(cpu, SONA_OP_LORA_APPLY, &a), SONA_OK);
    float C[4];
    sona_gemm_args g = {.m = 2, .n = 2, .k = 2, .alpha = 1.0f, .A = A, .B = Bt, .C = C};
    cr_assert_eq(sona_op_run(cpu, SONA_OP_GEMM, &g), SONA_OK);
    cr_expect_eq(sona_op_call(cpu, SONA_OP_COUNT, &g), SONA_E_INVALID, "an unknown op: refused, not counted");

    pthread_t th[COUNT_THREADS];
    for (int t = 0; t < COUNT_THREADS; t++)
        cr_assert_eq(pthread_create(&th[t], NULL, count_worker, NULL), 0);
    for (int t = 0; t < COUNT_THREADS; t++) {
        void *ret;
        pthread_join(th[t], &ret);
        cr_assert_null(ret);
    }

    sona_backend dev = fake_device("opencl"), cu = fake_device("cuda");
    for (int i = 0; i < 7; i++)
        cr_assert_eq(sona_op_run(&dev, SONA_OP_KNN_EXACT, &(sona_knn_exact_args){0}), SONA_OK);
    cr_assert_eq(sona_op_call(&cu, SONA_OP_CLUSTER_SUMS, &(sona_cluster_sums_args){0}), SONA_OK);

    /* The engine's applies on the CPU, one call per single-row apply. */
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, 64);
    c.background_thread = 0;
    c.device_apply = 0;
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_OK, "%s", sona_last_error());
    const uint64_t engine_before = calls_now(SONA_OP_LORA_APPLY, SONA_KIND_CPU);
    float q[64] = {0}, r[64];
    for (int i = 0; i < 11; i++)
        cr_assert_eq(sona_apply(e, 0, q, r), SONA_OK, "%s", sona_engine_last_error(e));
    cr_expect_eq(calls_now(SONA_OP_LORA_APPLY, SONA_KIND_CPU) - engine_before, 11);
    sona_engine_destroy(e);

    const uint64_t want_apply = 3 + 2 + (uint64_t)COUNT_THREADS * COUNT_CALLS + 11;
    for (int op = 0; op < SONA_OP_COUNT; op++)
        for (int k = 0; k < SONA_KIND_COUNT; k++) {
            uint64_t want = 0;
            if (op == SONA_OP_LORA_APPLY && k == SONA_KIND_CPU)
                want = want_apply;
            else if (op == SONA_OP_GEMM && k == SONA_KIND_CPU)
                want = 1;
            else if (op == SONA_OP_KNN_EXACT && k == SONA_KIND_OPENCL)
                want = 7;
            else if (op == SONA_OP_CLUSTER_SUMS && k == SONA_KIND_CUDA)
                want = 1;
            cr_expect_eq(calls_now((sona_op)op, (sona_backend_kind)k) - before[op][k], want,
                         "%s on %s: %llu calls, want %llu", sona_op_name((sona_op)op),
                         sona_backend_kind_name((sona_backend_kind)k),
                         (unsigned long long)(calls_now((sona_op)op, (sona_backend_kind)k) - before[op][k]),
                         (unsigned long long)want);
        }
}

/* The cluster merge's double kernels (dot_f64, dot_f32_f64, axpy_f64, axpy_f32_f64) must give
 * every rank the same bits whatever its CPU: every variant this host runs against scalar's,
 * bit for bit, on fresh random inputs of odd sizes; scalar's dots against a long double sum. */
Test(dispatch, double_host_kernels_give_every_variants_bits)
{
    const uint64_t seed = test_seed();
    printf("[dispatch] double host kernels: seed %llu\n", (unsigned long long)seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 3);
    enum { MAX = 4097 };
    static const size_t sizes[] = {0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, MAX};
    float *xf = new_uniform(&r, MAX, -1.0f, 1.0f), *yf = new_uniform(&r, MAX, -3.0f, 3.0f);
    double *x = malloc(MAX * sizeof *x), *y = malloc(MAX * sizeof *y);
    double *acc[3];
    for (int i = 0; i < 3; i++)
        acc[i] = malloc(MAX * sizeof(double));
    cr_assert(xf && yf && x && y && acc[0] && acc[1] && acc[2]);
    for (size_t i = 0; i < MAX; i++) {
        x[i] = (double)xf[i] * (1.0 + 1e-9 * (double)yf[i]); /* more than a float's bits */
        y[i] = (double)yf[i] / 3.0;
    }
    char why[256];
    const sona_backend *scalar = sona_cpu_variant_get("scalar", why, sizeof why);
    cr_assert_not_null(scalar, "%s", why);
    const sona_host_kernels *ref = &scalar->host;
    const sona_cpu_variant *vars;
    const uint32_t nv = sona_cpu_variants(&vars);
    uint32_t compared = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const size_t n = sizes[si];
        long double d = 0.0L, df = 0.0L;
        for (size_t i = 0; i < n; i++) {
            d += (long double)x[i] * y[i];
            df += (long double)xf[i] * yf[i];
        }
        const double dot = ref->dot_f64(x, y, n), dotf = ref->dot_f32_f64(xf, yf, n);
        cr_expect(fabsl((long double)dot - d) <= 1e-13L * (1.0L + (long double)n), "dot_f64 n=%zu: %.17g vs %.17Lg", n, dot, d);
        cr_expect(fabsl((long double)dotf - df) <= 1e-13L * (1.0L + (long double)n), "dot_f32_f64 n=%zu", n);
        for (uint32_t v = 1; v < nv; v++) {
            const sona_backend *b = sona_cpu_variant_get(vars[v].ops->name, why, sizeof why);
            if (!b)
                continue; /* not this host's */
            const sona_host_kernels *k = &b->host;
            const double got = k->dot_f64(x, y, n), gotf = k->dot_f32_f64(xf, yf, n);
            cr_expect(memcmp(&got, &dot, sizeof got) == 0, "%s dot_f64 n=%zu: %.17g, scalar %.17g", b->name, n, got, dot);
            cr_expect(memcmp(&gotf, &dotf, sizeof gotf) == 0, "%s dot_f32_f64 n=%zu", b->name, n);
            /* The reference, element by element: c x rounded, then the sum rounded. */
            for (size_t i = 0; i < n; i++) {
                acc[0][i] = acc[1][i] = y[i];
                const volatile double p = -0.3712 * x[i]; /* volatile: never fused */
                acc[2][i] = y[i] + p;
            }
            ref->axpy_f64(acc[0], x, n, -0.3712);
            k->axpy_f64(acc[1], x, n, -0.3712);
            cr_expect(n == 0 || memcmp(acc[0], acc[2], n * sizeof(double)) == 0, "scalar axpy_f64 n=%zu", n);
            cr_expect(n == 0 || memcmp(acc[0], acc[1], n * sizeof(double)) == 0, "%s axpy_f64 n=%zu", b->name, n);
            for (size_t i = 0; i < n; i++) {
                const volatile double p = (1.0 / 7.0) * (double)xf[i];
                acc[2][i] = acc[0][i] + p;
            }
            ref->axpy_f32_f64(acc[0], xf, n, 1.0 / 7.0);
            k->axpy_f32_f64(acc[1], xf, n, 1.0 / 7.0);
            cr_expect(n == 0 || memcmp(acc[0], acc[2], n * sizeof(double)) == 0, "scalar axpy_f32_f64 n=%zu", n);
            cr_expect(n == 0 || memcmp(acc[0], acc[1], n * sizeof(double)) == 0, "%s axpy_f32_f64 n=%zu", b->name, n);
            compared++;
        }
    }
    printf("[dispatch] double host kernels: %u variant-size pairs compared with scalar\n", compared);
    free(xf), free(yf), free(x), free(y);
    for (int i = 0; i < 3; i++)
        free(acc[i]);
}

/* The four-at-once double kernels (dot4_lanes_f64 ... axpy4_f32_f64) of every variant give the bits of
 * four calls of scalar's one-at-a-time kernels (lanes in two chunks, then the tail); and the
 * helpers built on them (the Gram products in chunks and blocks, the dots, the axpys with zero
 * coefficients skipped) those of plain loops of single calls. */
Test(dispatch, four_at_once_double_kernels_give_the_single_kernels_bits)
{
    const uint64_t seed = test_seed();
    printf("[dispatch] four-at-once double kernels: seed %llu\n", (unsigned long long)seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 4);
    enum { MAX = 1031, ROWS = 9 };
    static const size_t sizes[] = {0, 1, 3, 7, 8, 9, 16, 17, 31, 64, 65, 1000, MAX};
    float *xf = new_uniform(&r, (size_t)ROWS * MAX, -2.0f, 2.0f);
    double *x = malloc((size_t)ROWS * MAX * sizeof *x), *want = malloc(MAX * sizeof *want);
    double *got = malloc(MAX * sizeof *got), *y0 = malloc(MAX * sizeof *y0);
    cr_assert(xf && x && want && got && y0);
    for (size_t i = 0; i < (size_t)ROWS * MAX; i++)
        x[i] = (double)xf[i] * (1.0 + 1e-9 * (double)xf[(i * 7) % ((size_t)ROWS * MAX)]);
    for (size_t i = 0; i < MAX; i++)
        y0[i] = sona_rng_uniform_d(&r) - 0.5;
    char why[256];
    const sona_backend *scalar = sona_cpu_variant_get("scalar", why, sizeof why);
    cr_assert_not_null(scalar, "%s", why);
    const sona_host_kernels *ref = &scalar->host;
    const double c[ROWS] = {0.375, -1.25, 0.0, 3.0 / 7.0, -0.0, -2.5e-3, 1e3, 0.0, -0.8125};
    const sona_cpu_variant *vars;
    const uint32_t nv = sona_cpu_variants(&vars);
    uint32_t compared = 0;
    for (uint32_t v = 0; v < nv; v++) {
        const sona_backend *b = sona_cpu_variant_get(vars[v].ops->name, why, sizeof why);
        if (!b)
            continue; /* not this host's */
        const sona_host_kernels *k = &b->host;
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            const size_t n = sizes[si];
            const double *yd[4] = {x + MAX, x + 2 * MAX + 1, x + 3 * MAX, x + 5 * MAX + 3};
            const float *yf[4] = {xf + MAX, xf + 2 * MAX + 1, xf + 3 * MAX, xf + 5 * MAX + 3};
            /* the lanes over the first n8, then the tail (lanes in two chunks where n allows) */
            const size_t n8 = n & ~(size_t)7, cut = n8 >= 16 ? 8 : 0;
            double acc[32] = {0}, accf[32] = {0}, out[4], outf[4];
            k->dot4_lanes_f64(x, yd, cut, acc);
            const double *yd2[4] = {yd[0] + cut, yd[1] + cut, yd[2] + cut, yd[3] + cut};
            k->dot4_lanes_f64(x + cut, yd2, n8 - cut, acc);
            k->dot4_lanes_f32_f64(xf, yf, n8, accf);
            for (int j = 0; j < 4; j++) {
                out[j] = host_dot_tail_f64(acc + 8 * j, x + n8, yd[j] + n8, n - n8);
                outf[j] = host_dot_tail_f32_f64(accf + 8 * j, xf + n8, yf[j] + n8, n - n8);
            }
            for (int j = 0; j < 4; j++) {
                const double d = ref->dot_f64(x, yd[j], n), df = ref->dot_f32_f64(xf, yf[j], n);
                cr_expect(memcmp(&out[j], &d, sizeof d) == 0, "%s dot4_lanes_f64 n=%zu row %d: %.17g, scalar %.17g", b->name, n, j, out[j], d);
                cr_expect(memcmp(&outf[j], &df, sizeof df) == 0, "%s dot4_lanes_f32_f64 n=%zu row %d", b->name, n, j);
            }
            memcpy(want, y0, n * sizeof *want);
            memcpy(got, y0, n * sizeof *got);
            for (int j = 0; j < 4; j++)
                ref->axpy_f64(want, yd[j], n, c[j + 3]);
            k->axpy4_f64(got, yd, c + 3, n);
            cr_expect(n == 0 || memcmp(want, got, n * sizeof *got) == 0, "%s axpy4_f64 n=%zu", b->name, n);
            for (int j = 0; j < 4; j++)
                ref->axpy_f32_f64(want, yf[j], n, c[j]);
            k->axpy4_f32_f64(got, yf, c, n);
            cr_expect(n == 0 || memcmp(want, got, n * sizeof *got) == 0, "%s axpy4_f32_f64 n=%zu", b->name, n);
            compared++;
        }
    }
    /* The helpers, on the chosen variant, against scalar's single kernels: Gram products over
     * several chunks and column blocks (rows overlapping in memory: stride 13), odd shapes. */
    static const size_t shapes[][3] = {{1, 1, 7}, {1, 9, 65}, {3, 5, 64}, {5, 9, 600}, {6, 70, 300}, {4, 4, 257}};
    double *gram = malloc(6 * 70 * sizeof *gram), *gramf = malloc(6 * 70 * sizeof *gramf);
    double *gramw = malloc(6 * 70 * sizeof *gramw), *wide = malloc(MAX * sizeof *wide);
    cr_assert(gram && gramf && gramw && wide);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const size_t m = shapes[si][0], l = shapes[si][1], n = shapes[si][2], xs = 101, rs = 13;
        const double *R = x + 2 * MAX;
        const float *Rf = xf + 2 * MAX;
        sona_gram_f64(x, xs, m, R, rs, l, n, gram);
        sona_gram_f32_f64(xf, xs, m, Rf, rs, l, n, gramf);
        sona_gram_widen_f64(xf, xs, m, R, rs, l, n, gramw);
        for (size_t a = 0; a < m; a++) {
            for (size_t i = 0; i < n; i++)
                wide[i] = xf[a * xs + i];
            for (size_t b = 0; b < l; b++) {
                const double d = ref->dot_f64(x + a * xs, R + b * rs, n);
                const double df = ref->dot_f32_f64(xf + a * xs, Rf + b * rs, n);
                const double dw = ref->dot_f64(wide, R + b * rs, n);
                cr_expect(memcmp(&gram[a * l + b], &d, sizeof d) == 0, "sona_gram_f64 %zux%zux%zu (%zu, %zu)", m, l, n, a, b);
                cr_expect(memcmp(&gramf[a * l + b], &df, sizeof d) == 0, "sona_gram_f32_f64 %zux%zux%zu (%zu, %zu)", m, l, n, a, b);
                cr_expect(memcmp(&gramw[a * l + b], &dw, sizeof d) == 0, "sona_gram_widen_f64 %zux%zux%zu (%zu, %zu)", m, l, n, a, b);
            }
        }
    }
    for (size_t m = 0; m <= ROWS; m++) {
        const size_t n = 65 + m, stride = MAX;
        double out[ROWS];
        sona_dots_f64(x + 3, x, stride, m, n, out);
        for (size_t j = 0; j < m; j++) {
            const double d = ref->dot_f64(x + 3, x + j * stride, n);
            cr_expect(memcmp(&out[j], &d, sizeof d) == 0, "sona_dots_f64 m=%zu row %zu", m, j);
        }
        memcpy(want, y0, n * sizeof *want);
        memcpy(got, y0, n * sizeof *got);
        for (size_t j = 0; j < m; j++)
            if (c[j] != 0.0)
                ref->axpy_f64(want, x + j * stride, n, c[j]);
        sona_axpys_f64(got, x, stride, c, m, n);
        cr_expect(memcmp(want, got, n * sizeof *got) == 0, "sona_axpys_f64 m=%zu", m);
        for (size_t j = 0; j < m; j++)
            if (c[j] != 0.0)
                ref->axpy_f32_f64(want, xf + j * stride, n, c[j]);
        sona_axpys_f32_f64(got, xf, stride, c, m, n);
        cr_expect(memcmp(want, got, n * sizeof *got) == 0, "sona_axpys_f32_f64 m=%zu", m);
    }
    free(gram), free(gramf), free(gramw), free(wide);
    cr_expect(compared >= sizeof sizes / sizeof sizes[0], "scalar at least");
    printf("[dispatch] four-at-once double kernels: %u variant-size pairs compared with scalar\n", compared);
    free(xf), free(x), free(want), free(got), free(y0);
}

/* The lora_down host kernel of every variant here against a double sum, on fresh random inputs:
 * odd widths, ranks of every band, ids in any order with -1 among them (their rows of z
 * untouched), one row and many (the SIMD variants group many by adapter and split them over the
 * cores). Bound: an f32 sum of h products, whatever its order, is within h eps of the sum of
 * their magnitudes. */
Test(dispatch, lora_down_host_kernel_matches_the_double_sums)
{
    const uint64_t seed = test_seed();
    printf("[dispatch] lora_down: seed %llu\n", (unsigned long long)seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 11);
    static const struct {
        uint32_t n, h, r, adapters;
    } shapes[] = {{1, 7, 1, 1}, {1, 301, 13, 3}, {9, 33, 2, 2}, {37, 1000, 16, 5}, {200, 257, 5, 7}, {64, 96, 64, 3}};
    const sona_cpu_variant *vars;
    const uint32_t nv = sona_cpu_variants(&vars);
    char why[256];
    uint32_t checked = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const uint32_t n = shapes[si].n, h = shapes[si].h, rk = shapes[si].r, na = shapes[si].adapters;
        float *W = new_uniform(&r, (size_t)na * rk * h, -1.0f, 1.0f), *x = new_uniform(&r, (size_t)n * h, -1.0f, 1.0f);
        float *z = malloc((size_t)n * rk * sizeof *z);
        int32_t *ids = malloc(n * sizeof *ids);
        cr_assert(W && x && z && ids);
        for (uint32_t i = 0; i < n; i++)
            ids[i] = n > 1 && sona_rng_below(&r, 5) == 0 ? -1 : (int32_t)sona_rng_below(&r, na);
        for (uint32_t v = 0; v < nv; v++) {
            const sona_backend *b = sona_cpu_variant_get(vars[v].ops->name, why, sizeof why);
            if (!b)
                continue; /* not this host's */
            cr_assert_not_null(b->host.lora_down, "%s has no lora_down", b->name);
            for (size_t i = 0; i < (size_t)n * rk; i++)
                z[i] = 12345.0f;
            b->host.lora_down(W, rk, h, na, n, ids, x, z);
            for (uint32_t i = 0; i < n; i++)
                for (uint32_t j = 0; j < rk; j++) {
                    const float got = z[(size_t)i * rk + j];
                    if (ids[i] < 0) {
                        cr_expect_eq(got, 12345.0f, "%s: row %u has no adapter, yet z was written", b->name, i);
                        continue;
                    }
                    const float *w = W + ((size_t)ids[i] * rk + j) * h, *xi = x + (size_t)i * h;
                    double want = 0.0, mag = 0.0;
                    for (uint32_t t = 0; t < h; t++) {
                        want += (double)w[t] * xi[t];
                        mag += fabs((double)w[t] * xi[t]);
                    }
                    cr_expect(fabs(got - want) <= (double)h * FLT_EPSILON * mag + 1e-30,
                              "%s n=%u h=%u r=%u: z[%u][%u] = %.9g, double %.9g", b->name, n, h, rk, i, j, got, want);
                }
            checked++;
        }
        free(W);
        free(x);
        free(z);
        free(ids);
    }
    cr_assert_geq(checked, 6, "the scalar variant at least, for every shape");
}
