/* SPDX-License-Identifier: MIT */
/* CPU variant dispatch: SONA_CPU_VARIANT forces each variant the host runs (and the forced
 * variant then computes a real adapter forward correctly); an unsupported, foreign or unknown
 * name is refused with a status and a message, never a crash, and the library still works on
 * the best variant. Criterion runs each test in its own process, so each sees a fresh choice. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch/dispatch.h"
#include "sona/lora.h"
#include "sona/system.h"
#include "support/op_cases.h"

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
