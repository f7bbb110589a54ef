/* SPDX-License-Identifier: MIT */
/* Group engine_apply: sona_apply_batch as an inference server calls it at decode - 256 rows of
 * hidden 4096, each row's tenant one of 64 Micro-LoRA adapters (the default preset's rank, in
 * the row's name), interleaved - on the
 * CPU and through the engine's device copy of the adapters (when an accelerator is there).
 * The device rows include moving x and y between host and device: what a caller pays. */
#include "bench.h"

#include "common/rng.h"
#include "sona/engine.h"
#include "support/fill.h"

#include <stdio.h>
#include <stdlib.h>

enum { ROWS = 256, HIDDEN = 4096, TENANTS = 64 };

typedef struct apply_case {
    sona_engine *e;
    int32_t ids[ROWS];
    float *x, *y;
} apply_case;

static int apply_batch(void *arg)
{
    apply_case *c = arg;
    return sona_apply_batch(c->e, ROWS, c->ids, c->x, c->y) == SONA_OK ? 0 : -1;
}

/* An engine whose 64 tenants have non-zero adapters (each learned from one request). */
static sona_engine *make_engine(int device, sona_rng *r, float *scratch)
{
    sona_engine_config cfg;
    sona_engine_config_default(&cfg, SONA_PRESET_DEFAULT, HIDDEN);
    cfg.background_thread = 0;
    cfg.loop_b_threshold = 1u << 30;
    cfg.device_apply = device;
    sona_engine *e = NULL;
    if (sona_engine_create(&cfg, &e) != SONA_OK)
        return NULL;
    for (int32_t t = 0; t < TENANTS; t++) {
        int32_t id = 0;
        if (t && sona_tenant_create(e, &id) != SONA_OK)
            break;
        fill_uniform(r, scratch, 2 * HIDDEN, -1.0f, 1.0f);
        sona_request *req;
        if (sona_request_begin(e, id, scratch, &req) == SONA_OK) {
            sona_request_step(req, 0, scratch + HIDDEN, NULL, 0, 1.0f);
            sona_request_end(req, 1.0f);
        }
    }
    return e;
}

static void run_engine_apply(bench_ctx *ctx)
{
    apply_case c = {0};
    c.x = malloc((size_t)ROWS * HIDDEN * sizeof *c.x);
    c.y = malloc((size_t)ROWS * HIDDEN * sizeof *c.y);
    sona_rng r;
    sona_rng_seed(&r, 11, 0);
    if (!c.x || !c.y)
        goto out;
    fill_uniform(&r, c.x, (size_t)ROWS * HIDDEN, -1.0f, 1.0f);
    for (int i = 0; i < ROWS; i++)
        c.ids[i] = (int32_t)(sona_rng_next(&r) % TENANTS);
    /* x and y once each, plus each adapter's A and B once. */
    sona_engine_config dc;
    sona_engine_config_default(&dc, SONA_PRESET_DEFAULT, HIDDEN);
    const double R = dc.micro_rank, bytes = 2.0 * ROWS * HIDDEN * 4 + TENANTS * 2.0 * R * HIDDEN * 4,
                 flops = ROWS * 4.0 * R * HIDDEN;
    char name[48];
    snprintf(name, sizeof name, "256x4096 r%u, 64 tenants", dc.micro_rank);
    for (int device = 0; device < 2; device++) {
        sona_engine *e = make_engine(device, &r, c.y);
        const char *where = e ? sona_engine_device(e) : NULL;
        const bench_row row = {.group = "engine_apply", .name = name,
                               .backend = device ? (where ? where : "device") : "cpu",
                               .flops = flops, .bytes = bytes};
        if (!e)
            bench_skip(ctx, &row, "engine creation failed");
        else if (device && !where)
            bench_skip(ctx, &row, "no accelerator");
        else {
            c.e = e;
            bench_measure(ctx, &row, apply_batch, &c);
        }
        sona_engine_destroy(e);
    }
out:
    free(c.x);
    free(c.y);
}

const bench_group bench_engine_apply = {"engine_apply", "batched multi-tenant apply through the engine, CPU and device",
                                        run_engine_apply};
