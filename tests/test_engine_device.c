/* SPDX-License-Identifier: MIT */
/* Batched apply on an accelerator through the engine: the device copy of the adapters gives the
 * CPU's results for interleaved tenants and -1 rows, follows learning (an adapter that learned is
 * uploaded again), refuses a removed tenant before writing any row, applies Base-LoRA layers, and
 * counts exactly the batches it ran. Runs on whatever accelerator the engine picks (PoCL's CPU
 * device in CI, through SONA_OPENCL_DEVICE=any); skips with one line when there is none. The
 * cost model (dispatch/cost.h) would keep these small batches on the CPU: the tests that need
 * them on the device give it a model that always wins (device_wins_every_batch), and one test
 * checks the measured model's choice. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "dispatch/cost.h"
#include "dispatch/dispatch.h"
#include "engine/inspect.h"
#include "support/fill.h"
#include <sona.h>

enum { H = 67, ROWS = 45, MIN_ROWS = 8, TENANTS = 4 };

/* Gives the accelerator (if any) a cost model under which every batch pays: no launch, no
 * transfer, endless peak and bandwidth. Loads the GPU modules. */
static void device_wins_every_batch(void)
{
    const sona_backend *dev = sona_device_backend();
    if (!dev)
        return;
    sona_cost_model m = {.launch_us = 0.0, .transfer_gbs = 0.0, .peak_gflops = 1e12, .memory_gbs = 1e12};
    for (int op = 0; op < SONA_OP_COUNT; op++)
        m.efficiency[op] = 1.0;
    sona_cost_model_set(dev, &m);
}

static sona_engine *make(int device)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, H);
    c.background_thread = 0;
    c.loop_b_threshold = 1u << 30;
    c.loop_b_min_batch = 8;
    c.clusters_per_cycle = 4;
    c.base_layers = 3;
    c.base_rank = 4;
    c.max_tenants = 40;
    c.device_apply = device;
    c.device_min_rows = MIN_ROWS;
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_OK, "%s", sona_last_error());
    return e;
}

/* The same requests on both engines (so the same learned weights): tenant t, 3 steps. */
static void learn(sona_engine *const e[2], int32_t tenant, sona_rng *r, int requests)
{
    float q[H], a[H];
    for (int k = 0; k < requests; k++) {
        fill_uniform(r, q, H, -1.0f, 1.0f);
        const float quality = sona_rng_uniform(r);
        sona_request *req[2];
        for (int i = 0; i < 2; i++)
            cr_assert_eq(sona_request_begin(e[i], tenant, q, &req[i]), SONA_OK);
        for (uint32_t l = 0; l < 3; l++) {
            fill_uniform(r, a, H, -1.0f, 1.0f);
            /* Rewards that vary between requests: a constant one says nothing to learn from. */
            const float reward = sona_rng_uniform(r);
            for (int i = 0; i < 2; i++)
                cr_assert_eq(sona_request_step(req[i], l, a, NULL, 0, reward), SONA_OK);
        }
        for (int i = 0; i < 2; i++)
            cr_assert_eq(sona_request_end(req[i], quality), SONA_OK, "%s", sona_engine_last_error(e[i]));
    }
}

/* y of both engines agree within f32 rounding; returns the largest |y - x| (0 means no adapter
 * moved anything, which would make the comparison empty). */
static double compare(const float *yd, const float *yc, const float *x, size_t n, const char *what)
{
    double moved = 0;
    for (size_t i = 0; i < n; i++) {
        cr_assert_float_eq(yd[i], yc[i], 1e-5 * (1.0 + fabs(yc[i])), "%s: element %zu device %g cpu %g",
                           what, i, yd[i], yc[i]);
        moved = fmax(moved, fabs((double)yc[i] - x[i]));
    }
    return moved;
}

static uint64_t device_batches(sona_engine *e)
{
    sona_stats s;
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.device_fallbacks, 0, "a device batch failed: %s", sona_engine_last_error(e));
    return s.device_batches;
}

Test(engine_device, batches_match_cpu_and_follow_learning, .timeout = 300)
{
    device_wins_every_batch();
    sona_engine *e[2] = {make(1), make(0)}; /* [0] device, [1] CPU only */
    static float x[ROWS * H], yd[ROWS * H], yc[ROWS * H];
    int32_t ids[ROWS];
    cr_assert_eq(sona_apply_batch(e[0], MIN_ROWS, (int32_t[MIN_ROWS]){0}, x, yd), SONA_OK);
    if (device_batches(e[0]) == 0) {
        printf("[engine_device] skipped: no accelerator (CUDA device, or OpenCL with "
               "SONA_OPENCL_DEVICE=any for CPU devices)\n");
        sona_engine_destroy(e[0]);
        sona_engine_destroy(e[1]);
        cr_skip_test("no accelerator");
    }
    const uint64_t seed = test_seed();
    printf("[engine_device] seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 3);
    int32_t tenants[TENANTS] = {0};
    for (int t = 1; t < TENANTS; t++) {
        int32_t got[2];
        for (int i = 0; i < 2; i++)
            cr_assert_eq(sona_tenant_create(e[i], &got[i]), SONA_OK);
        cr_assert_eq(got[0], got[1]);
        tenants[t] = got[0];
    }
    for (int t = 0; t < TENANTS; t++)
        learn(e, tenants[t], &r, 6);

    /* Interleaved tenants and -1 rows, one batch. */
    fill_uniform(&r, x, ROWS * H, -1.0f, 1.0f);
    for (int i = 0; i < ROWS; i++)
        ids[i] = i % 5 == 4 ? -1 : tenants[(i * 7 + i / 3) % TENANTS];
    uint64_t before = device_batches(e[0]);
    cr_assert_eq(sona_apply_batch(e[0], ROWS, ids, x, yd), SONA_OK, "%s", sona_engine_last_error(e[0]));
    cr_assert_eq(sona_apply_batch(e[1], ROWS, ids, x, yc), SONA_OK);
    cr_assert_eq(device_batches(e[0]), before + 1, "the batch ran on the device, counted once");
    cr_assert_gt(compare(yd, yc, x, ROWS * H, "first batch"), 1e-4, "learning moved no adapter");
    for (int i = 4; i < ROWS; i += 5)
        cr_assert_eq(memcmp(yd + i * H, x + i * H, H * sizeof *x), 0, "row %d (-1) is x", i);

    /* One tenant learns more: the device must pick up its new weights, in place this time. */
    learn(e, tenants[2], &r, 4);
    memcpy(yd, x, sizeof x);
    cr_assert_eq(sona_apply_batch(e[0], ROWS, ids, yd, yd), SONA_OK);
    cr_assert_eq(sona_apply_batch(e[1], ROWS, ids, x, yc), SONA_OK);
    compare(yd, yc, x, ROWS * H, "after learning (in place)");

    /* A small batch stays on the CPU. */
    before = device_batches(e[0]);
    cr_assert_eq(sona_apply_batch(e[0], MIN_ROWS - 1, ids, x, yd), SONA_OK);
    cr_assert_eq(device_batches(e[0]), before, "a batch under device_min_rows went to the device");

    /* A removed tenant: refused before any row is written. */
    for (int i = 0; i < 2; i++)
        cr_assert_eq(sona_tenant_remove(e[i], tenants[3]), SONA_OK);
    for (size_t i = 0; i < ROWS * H; i++)
        yd[i] = 12345.0f;
    cr_assert_eq(sona_apply_batch(e[0], ROWS, ids, x, yd), SONA_E_NOT_FOUND);
    for (size_t i = 0; i < ROWS * H; i++)
        cr_assert_eq(yd[i], 12345.0f, "element %zu written by a refused batch", i);

    /* Base-LoRA layers after a loop B cycle trained them. */
    for (int i = 0; i < 2; i++)
        cr_assert_eq(sona_force_learn(e[i]), SONA_OK, "%s", sona_engine_last_error(e[i]));
    for (uint32_t layer = 0; layer < 3; layer++) {
        cr_assert_eq(sona_apply_layer_batch(e[0], layer, ROWS, x, yd), SONA_OK, "%s", sona_engine_last_error(e[0]));
        cr_assert_eq(sona_apply_layer_batch(e[1], layer, ROWS, x, yc), SONA_OK);
        cr_assert_gt(compare(yd, yc, x, ROWS * H, "layer"), 1e-6, "layer %u: Base-LoRA did not learn", layer);
    }
    device_batches(e[0]); /* no fallbacks */
    sona_engine_destroy(e[0]);
    sona_engine_destroy(e[1]);
}

/* Inference threads send batches while the adapters learn: every batch succeeds on the device
 * (one queue, the lock serialises them), outputs stay finite, and the count is exact. */
typedef struct batch_worker {
    sona_engine *e;
    int32_t tenants[2];
    int failures, nonfinite;
} batch_worker;

enum { WORKERS = 3, BATCHES = 40 };

static void *send_batches(void *arg)
{
    batch_worker *w = arg;
    static _Thread_local float x[ROWS * H], y[ROWS * H];
    int32_t ids[ROWS];
    for (int i = 0; i < ROWS * H; i++)
        x[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    for (int i = 0; i < ROWS; i++)
        ids[i] = i % 4 == 3 ? -1 : w->tenants[i % 2];
    for (int b = 0; b < BATCHES; b++) {
        if (sona_apply_batch(w->e, ROWS, ids, x, y) != SONA_OK)
            w->failures++;
        for (int i = 0; i < ROWS * H; i++)
            w->nonfinite += !isfinite(y[i]);
    }
    return NULL;
}

Test(engine_device, concurrent_batches_while_learning, .timeout = 300)
{
    device_wins_every_batch();
    sona_engine *e[2] = {make(1), make(0)};
    float x[MIN_ROWS * H] = {0}, y[MIN_ROWS * H];
    cr_assert_eq(sona_apply_batch(e[0], MIN_ROWS, (int32_t[MIN_ROWS]){0}, x, y), SONA_OK);
    const uint64_t start = device_batches(e[0]);
    if (start == 0) {
        sona_engine_destroy(e[0]);
        sona_engine_destroy(e[1]);
        cr_skip_test("no accelerator");
    }
    int32_t t1, t1c;
    cr_assert_eq(sona_tenant_create(e[0], &t1), SONA_OK);
    cr_assert_eq(sona_tenant_create(e[1], &t1c), SONA_OK);
    batch_worker w[WORKERS];
    pthread_t th[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        w[i] = (batch_worker){.e = e[0], .tenants = {0, t1}};
        cr_assert_eq(pthread_create(&th[i], NULL, send_batches, &w[i]), 0);
    }
    sona_rng r;
    sona_rng_seed(&r, test_seed(), 9);
    learn(e, 0, &r, 20); /* e[1] learns alike; only e[0] is under load */
    for (int i = 0; i < WORKERS; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(w[i].failures, 0, "worker %d: %d batches failed", i, w[i].failures);
        cr_assert_eq(w[i].nonfinite, 0, "worker %d: non-finite outputs", i);
    }
    cr_assert_eq(device_batches(e[0]), start + WORKERS * BATCHES);
    sona_engine_destroy(e[0]);
    sona_engine_destroy(e[1]);
}

/* Whether a GPU module (libsona-opencl.so, libsona-cuda.so) is mapped into this process. */
static int gpu_module_mapped(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    cr_assert_not_null(f);
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, "libsona-opencl.so") || strstr(line, "libsona-cuda.so");
    fclose(f);
    return found;
}

/* The accelerator is looked for when first needed, not at creation: an engine whose batches all
 * stay below device_min_rows never loads a GPU module (issue #18: 0.4-1.0 s and ~228 MB at
 * creation on a CPU-only machine with the CUDA toolkit and PoCL installed). */
Test(engine_device, gpu_modules_load_only_when_needed, .timeout = 300)
{
    const char *forced = getenv("SONA_BACKEND");
    if (forced && *forced)
        cr_skip_test("SONA_BACKEND names a backend, which is picked at creation");
    cr_assert_not(gpu_module_mapped(), "a GPU module was loaded before any engine");
    sona_engine *e = make(1);
    static float x[(MIN_ROWS - 1) * H], y[(MIN_ROWS - 1) * H];
    cr_assert_eq(sona_apply_batch(e, MIN_ROWS - 1, (int32_t[MIN_ROWS - 1]){0}, x, y), SONA_OK);
    cr_assert_not(gpu_module_mapped(), "creation or a small batch loaded a GPU module");
    /* Asking for the device picks it (or finds none); either way the engine goes on working. */
    const char *where = sona_engine_device(e);
    cr_assert_eq(sona_apply_batch(e, MIN_ROWS - 1, (int32_t[MIN_ROWS - 1]){0}, x, y), SONA_OK);
    cr_assert(where == NULL || !strcmp(where, "opencl") || !strcmp(where, "cuda"));
    sona_engine_destroy(e);
}

/* With the model measured on the device (no table installed), a batch goes where the model says
 * it finishes first: the count moves exactly when sona_route picks the device, the results are
 * the CPU's either way. PoCL's CPU device, a 50 us round trip, never beats the host on these. */
Test(engine_device, batches_follow_the_cost_model, .timeout = 300)
{
    if (getenv("SONA_BACKEND") && *getenv("SONA_BACKEND"))
        cr_skip_test("SONA_BACKEND overrides the model");
    sona_engine *e[2] = {make(1), make(0)};
    if (!sona_engine_device(e[0])) {
        sona_engine_destroy(e[0]);
        sona_engine_destroy(e[1]);
        cr_skip_test("no accelerator");
    }
    const sona_backend *dev = sona_device_backend();
    cr_assert_not_null(dev);
    static float x[ROWS * H], yd[ROWS * H], yc[ROWS * H];
    for (int i = 0; i < ROWS * H; i++)
        x[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    int32_t ids[ROWS] = {0};
    sona_lora_apply_args a = {.w = {.hidden = H, .rank = 0, .num_adapters = 40}, .n = ROWS};
    sona_engine_config c; /* make()'s rank */
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, H);
    a.w.rank = c.micro_rank;
    const int device_pays = sona_route(SONA_OP_LORA_APPLY, &a, dev) == dev;
    printf("[engine_device] %u rows at hidden %u: %.1f us on %s, %.1f us on the CPU: %s\n", ROWS, H,
           sona_cost_us(dev, SONA_OP_LORA_APPLY, &a), dev->name,
           sona_cost_us(sona_cpu_backend(), SONA_OP_LORA_APPLY, &a), device_pays ? "device" : "CPU");
    const uint64_t before = device_batches(e[0]);
    cr_assert_eq(sona_apply_batch(e[0], ROWS, ids, x, yd), SONA_OK, "%s", sona_engine_last_error(e[0]));
    cr_assert_eq(sona_apply_batch(e[1], ROWS, ids, x, yc), SONA_OK);
    cr_assert_eq(device_batches(e[0]), before + (uint64_t)device_pays);
    compare(yd, yc, x, ROWS * H, "routed batch");
    sona_engine_destroy(e[0]);
    sona_engine_destroy(e[1]);
}

/* Base-LoRA follows the accelerator (eng_base_follow_device): once a batch made the engine pick
 * its device and the cost model says loop B's accumulate pays there, the next cycle moves the
 * training weights and learns there; what it learns is the CPU engine's to f32 rounding, cycle
 * after cycle (EWC++ and the publish read the device's weights by export). */
Test(engine_device, base_lora_follows_the_device, .timeout = 300)
{
    if (getenv("SONA_BACKEND") && *getenv("SONA_BACKEND"))
        cr_skip_test("SONA_BACKEND puts Base-LoRA on its backend at creation");
    device_wins_every_batch();
    sona_engine *e[2] = {make(1), make(0)}; /* [0] device, [1] CPU only */
    static float x[ROWS * H], y[ROWS * H];
    cr_assert_eq(sona_apply_batch(e[0], MIN_ROWS, (int32_t[MIN_ROWS]){0}, x, y), SONA_OK);
    if (device_batches(e[0]) == 0) {
        sona_engine_destroy(e[0]);
        sona_engine_destroy(e[1]);
        cr_skip_test("no accelerator");
    }
    const sona_backend *dev = sona_device_backend();
    cr_assert_eq(eng_inspect_base_backend(e[0]), sona_cpu_backend(), "home until a cycle");
    const uint64_t seed = test_seed();
    printf("[engine_device] Base-LoRA on %s: seed %" PRIu64 "\n", dev->name, seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 7);
    enum { LAYERS = 3, RANK = 4 };
    static float A[2][LAYERS * RANK * H], Bt[2][LAYERS * RANK * H];
    for (int cycle = 0; cycle < 3; cycle++) {
        learn(e, 0, &r, 24);
        for (int i = 0; i < 2; i++)
            cr_assert_eq(sona_force_learn(e[i]), SONA_OK, "%s", sona_engine_last_error(e[i]));
        cr_assert_eq(eng_inspect_base_backend(e[0]), dev, "cycle %d: Base-LoRA on the device", cycle);
        cr_assert_eq(eng_inspect_base_backend(e[1]), sona_cpu_backend());
        double worst = 0.0, moved = 0.0;
        for (int i = 0; i < 2; i++)
            cr_assert_eq(eng_inspect_base_weights(e[i], A[i], Bt[i]), SONA_OK);
        for (size_t k = 0; k < (size_t)LAYERS * RANK * H; k++) {
            worst = fmax(worst, fmax(fabs((double)A[0][k] - A[1][k]), fabs((double)Bt[0][k] - Bt[1][k])));
            moved = fmax(moved, fabs((double)Bt[1][k]));
        }
        printf("[engine_device] cycle %d: largest weight difference %.3g (largest B %.3g)\n", cycle,
               worst, moved);
        cr_assert_gt(moved, 0.0, "Base-LoRA learned nothing");
        cr_assert(worst <= 1e-4 * (1.0 + moved), "cycle %d: device and CPU apart by %g", cycle, worst);
    }
    sona_engine_destroy(e[0]);
    sona_engine_destroy(e[1]);
    sona_cost_model_set(dev, NULL);
}
