/* SPDX-License-Identifier: MIT */
/* Engine API: presets, tenants, apply forms, request recording and counters, loop B keeping
 * short batches queued, persistence (round trip to identical bytes, refusal of bad files with
 * the engine untouched; queued trajectories saved and learned from after a load, in every
 * storage format; a queue larger than the loading engine's; version 1 and 2 files; a loaded
 * engine learning bit for bit as the saved one goes on to). */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/rng.h"
#include "common/serial.h"
#include "core/memory/trajectory_internal.h"
#include "engine/ewc.h"
#include "engine/inspect.h"
#include "fuzz/fuzz_engine.h"
#include "support/files.h"
#include "support/fill.h"
#include "support/synth_task.h"
#include <sona.h>

enum { H = 37 };

static sona_engine_config config(uint32_t hidden, int ewc)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, hidden);
    c.background_thread = 0;
    c.loop_b_threshold = 1u << 30;
    c.loop_b_min_batch = 8;
    c.clusters_per_cycle = 4;
    c.base_layers = 3;
    c.ewc_enabled = ewc;
    return c;
}

static sona_engine *create(const sona_engine_config *c)
{
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(c, &e), SONA_OK, "%s", sona_last_error());
    return e;
}

/* The bank's counters, read under the engine's cycle lock. */
static void bank_stats(sona_engine *e, sona_bank_stats *bs)
{
    memset(bs, 0, sizeof *bs);
    const sona_bank *bank = eng_inspect_bank_begin(e);
    sona_bank_stats_get(bank, bs);
    eng_inspect_bank_end(e);
}

static sona_engine *make(uint32_t hidden, int ewc)
{
    const sona_engine_config c = config(hidden, ewc);
    return create(&c);
}

/* One request for query x with `steps` steps (layers 0..), rewards varying, quality q. */
static sona_status request_for(sona_engine *e, int32_t tenant, sona_rng *r, const float *x, uint32_t steps, float q)
{
    float a[H];
    sona_request *req;
    sona_status st = sona_request_begin(e, tenant, x, &req);
    if (st != SONA_OK)
        return st;
    for (uint32_t s = 0; s < steps; s++) {
        fill_uniform(r, a, H, -1.0f, 1.0f);
        cr_assert_eq(sona_request_step(req, s % 4, a, NULL, 0, 0.1f * (float)s), SONA_OK);
    }
    return sona_request_end(req, q);
}

/* request_for with a query uniform in [-1, 1) per value. */
static sona_status request(sona_engine *e, int32_t tenant, sona_rng *r, uint32_t steps, float q)
{
    float x[H];
    fill_uniform(r, x, H, -1.0f, 1.0f);
    return request_for(e, tenant, r, x, steps, q);
}

/* request() with the query about one of four centres (x = centre + noise in [-0.3, 0.3) per
 * value; the centres uniform in [-1, 1) from seed): traffic with patterns to find, where
 * uniform queries are one diffuse cloud the bank rightly keeps as few. */
static sona_status request_about(sona_engine *e, int32_t tenant, sona_rng *r, uint64_t seed, uint32_t steps, float q)
{
    float c[H], x[H];
    sona_rng cr;
    sona_rng_seed(&cr, seed, 100 + sona_rng_below(r, 4));
    fill_uniform(&cr, c, H, -1.0f, 1.0f);
    fill_uniform(r, x, H, -0.3f, 0.3f);
    for (uint32_t h = 0; h < H; h++)
        x[h] += c[h];
    return request_for(e, tenant, r, x, steps, q);
}

Test(engine, presets_are_valid_and_distinct)
{
    const sona_preset presets[] = {SONA_PRESET_DEFAULT, SONA_PRESET_MAX_THROUGHPUT, SONA_PRESET_MAX_QUALITY,
                                   SONA_PRESET_EDGE};
    uint32_t ranks = 0;
    for (int i = 0; i < 4; i++) {
        sona_engine_config c;
        sona_engine_config_default(&c, presets[i], 64);
        c.background_thread = 0;
        ranks = ranks * 100 + c.base_rank;
        sona_engine *e = NULL;
        cr_assert_eq(sona_engine_create(&c, &e), SONA_OK, "preset %d: %s", i, sona_last_error());
        cr_assert_eq(sona_engine_get_config(e)->hidden, 64);
        cr_assert_eq(sona_engine_get_config(e)->step_storage, SONA_STORAGE_Q8, "preset %d", i);
        sona_engine_destroy(e);
    }
    cr_assert_eq(ranks, 8041604, "base ranks per preset: %u", ranks);
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, 0);
    sona_engine *e = (sona_engine *)1;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_E_INVALID);
    cr_assert_null(e);
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, 8);
    c.dream_temperature = NAN;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_E_NONFINITE);
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, 8);
    c.step_storage = (sona_storage)3;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_E_INVALID);
    cr_assert_eq(sona_engine_create(NULL, &e), SONA_E_NULL);
    sona_engine_destroy(NULL);
}

Test(engine, new_tenants_are_identity_and_apply_forms_agree)
{
    const uint64_t seed = test_seed();
    printf("[engine] seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 0);
    sona_engine *e = make(H, 1);
    int32_t t1, t2;
    cr_assert_eq(sona_tenant_create(e, &t1), SONA_OK);
    cr_assert_eq(sona_tenant_create(e, &t2), SONA_OK);
    cr_assert_neq(t1, t2);
    float x[3 * H], y[3 * H], z[H];
    fill_uniform(&r, x, 3 * H, -1.0f, 1.0f);
    cr_assert_eq(sona_apply(e, t1, x, y), SONA_OK);
    cr_assert_eq(memcmp(x, y, sizeof z), 0, "a new tenant is not the identity");
    /* Teach tenant 1 a few signals; tenant 2 stays the identity. */
    for (int i = 0; i < 20; i++)
        cr_assert_eq(request(e, t1, &r, 3, (float)(i % 3)), SONA_OK, "%s", sona_engine_last_error(e));
    cr_assert_eq(sona_apply(e, t1, x, y), SONA_OK);
    cr_assert_neq(memcmp(x, y, sizeof z), 0, "tenant %d did not change", t1);
    cr_assert_eq(sona_apply(e, t2, x, y), SONA_OK);
    cr_assert_eq(memcmp(x, y, sizeof z), 0, "tenant %d changed without signals", t2);
    /* Batch with mixed ids == row by row; in place == out of place. */
    const int32_t ids[3] = {t1, -1, t2};
    cr_assert_eq(sona_apply_batch(e, 3, ids, x, y), SONA_OK);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(sona_apply(e, ids[i], x + i * H, z), SONA_OK);
        cr_assert_eq(memcmp(z, y + i * H, sizeof z), 0, "row %d differs", i);
    }
    memcpy(z, x, sizeof z);
    cr_assert_eq(sona_apply_inplace(e, t1, z), SONA_OK);
    cr_assert_eq(memcmp(z, y, sizeof z), 0);
    /* Removal: the tenant is gone, its slot comes back as the identity. */
    cr_assert_eq(sona_tenant_remove(e, t1), SONA_OK);
    cr_assert_eq(sona_apply(e, t1, x, y), SONA_E_NOT_FOUND);
    cr_assert_eq(sona_tenant_remove(e, t1), SONA_E_NOT_FOUND);
    cr_assert_eq(sona_tenant_remove(e, 0), SONA_E_INVALID);
    int32_t t3;
    cr_assert_eq(sona_tenant_create(e, &t3), SONA_OK);
    cr_assert_eq(t3, t1, "the freed slot is reused");
    cr_assert_eq(sona_apply(e, t3, x, y), SONA_OK);
    cr_assert_eq(memcmp(x, y, sizeof z), 0, "a reused slot is not the identity");
    cr_assert_eq(sona_apply(e, 9999, x, y), SONA_E_NOT_FOUND);
    cr_assert_eq(sona_apply_layer(e, 3, x, y), SONA_E_INVALID);
    cr_assert_eq(sona_apply_layer(e, 2, x, y), SONA_OK);
    cr_assert_eq(memcmp(x, y, sizeof z), 0, "a new Base-LoRA layer is not the identity");
    cr_assert_str_neq(sona_engine_last_error(e), "");
    sona_stats s;
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.tenants, 3);
    sona_engine_destroy(e);
}

Test(engine, counters_are_exact_and_bad_input_is_not_learned)
{
    sona_rng r;
    sona_rng_seed(&r, 11, 0);
    sona_engine_config c = config(H, 0);
    c.loop_b_interval_ms = 1; /* sona_tick finds a cycle due below (no other tick here) */
    sona_engine *e = create(&c);
    for (int i = 0; i < 30; i++)
        cr_assert_eq(request(e, 0, &r, 1 + i % 3, 0.5f + 0.01f * (float)i), SONA_OK);
    cr_assert_eq(request(e, 0, &r, 0, 0.5f), SONA_OK); /* no step: recorded, no signal */
    float x[H], y[H];
    fill_uniform(&r, x, H, -1.0f, 1.0f);
    cr_assert_eq(sona_apply(e, 0, x, y), SONA_OK);
    /* Non-finite anything: refused, counted, adapter unchanged. */
    sona_request *req;
    cr_assert_eq(sona_request_begin(e, 0, x, &req), SONA_OK);
    cr_assert_eq(sona_request_end(req, NAN), SONA_E_NONFINITE);
    cr_assert_eq(sona_request_begin(e, 0, x, &req), SONA_OK);
    float bad[H];
    memcpy(bad, x, sizeof bad);
    bad[5] = INFINITY;
    cr_assert_eq(sona_request_step(req, 0, bad, NULL, 0, 1.0f), SONA_E_NONFINITE);
    cr_assert_eq(sona_request_end(req, 1.0f), SONA_E_NONFINITE);
    cr_assert_eq(sona_request_begin(e, 0, x, &req), SONA_OK);
    cr_assert_eq(sona_request_step(req, 0, x, bad, H, 1.0f), SONA_E_NONFINITE);
    cr_assert_eq(sona_request_end(req, 1.0f), SONA_E_NONFINITE);
    cr_assert_eq(sona_request_begin(e, 0, bad, &req), SONA_E_NONFINITE);
    float z[H];
    cr_assert_eq(sona_apply(e, 0, x, z), SONA_OK);
    cr_assert_eq(memcmp(y, z, sizeof z), 0, "refused input changed the adapter");
    sona_stats s;
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.trajectories_recorded, 31);
    cr_assert_eq(s.trajectories_queued, 31);
    cr_assert_eq(s.signals_accepted, 30);
    cr_assert_eq(s.signals_rejected, 4); /* the step-less one and three non-finite ones */
    cr_assert_eq(s.micro_updates, 30);
    /* A forced cycle takes everything queued. */
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.trajectories_processed, 31);
    cr_assert_eq(s.trajectories_queued, 0);
    cr_assert_eq(s.loop_b_cycles, 1);
    cr_assert_eq(s.base_updates, 1);
    cr_assert_gt(s.patterns, 0);
    /* A short queue (below loop_b_min_batch) stays queued for the cycles loop B starts itself,
     * even when one is due; a forced cycle takes it; nothing queued is nothing to do. */
    for (int i = 0; i < 5; i++)
        cr_assert_eq(request(e, 0, &r, 2, 0.3f), SONA_OK);
    cr_assert_lt(5, sona_engine_get_config(e)->loop_b_min_batch);
    nanosleep(&(struct timespec){.tv_nsec = 2000000}, NULL); /* due by loop_b_interval_ms */
    cr_assert_eq(sona_tick(e), SONA_OK);
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.trajectories_queued, 5, "short batches stay queued");
    cr_assert_eq(s.trajectories_processed, 31);
    cr_assert_eq(s.loop_b_cycles, 1);
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.trajectories_queued, 0, "a forced cycle takes a short queue");
    cr_assert_eq(s.trajectories_processed, 36);
    cr_assert_eq(s.loop_b_cycles, 2);
    cr_assert_eq(sona_force_learn(e), SONA_OK, "nothing queued is not an error: %s", sona_engine_last_error(e));
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.loop_b_cycles, 2, "nothing queued: no cycle");
    cr_assert_eq(s.trajectories_processed, 36);
    /* Patterns are found again. */
    sona_pattern_hit hits[4];
    uint32_t found = 0;
    cr_assert_eq(sona_find_patterns(e, x, 4, hits, &found), SONA_OK);
    cr_assert_gt(found, 0);
    for (uint32_t i = 1; i < found; i++)
        cr_assert_geq(hits[i - 1].similarity, hits[i].similarity);
    /* A hit read whole (sona_engine_pattern, for bindings) agrees with the hit, and its
     * centroid is the one the similarity was measured against. */
    sona_pattern p;
    float *centroid = malloc(H * sizeof *centroid);
    cr_assert_eq(sona_engine_pattern(e, hits[0].id, &p, centroid), SONA_OK, "%s", sona_engine_last_error(e));
    cr_assert_eq(p.id, hits[0].id);
    cr_assert_eq(p.size, hits[0].size);
    cr_assert_float_eq(p.avg_quality, hits[0].avg_quality, 1e-6f);
    double cx = 0, cc = 0, xx = 0;
    for (uint32_t h = 0; h < H; h++) {
        cx += (double)centroid[h] * x[h];
        cc += (double)centroid[h] * centroid[h];
        xx += (double)x[h] * x[h];
    }
    cr_assert_float_eq(cx / sqrt(cc * xx), hits[0].similarity, 1e-3);
    free(centroid);
    cr_assert_eq(sona_engine_pattern(e, UINT64_MAX, &p, NULL), SONA_E_NOT_FOUND);
    /* Disabled: applied, not recorded. */
    sona_engine_set_enabled(e, 0);
    cr_assert_eq(request(e, 0, &r, 2, 0.3f), SONA_OK);
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.trajectories_recorded, 36);
    sona_engine_destroy(e); /* frees the queued trajectories (ASan checks) */
}

/* ---- persistence ---------------------------------------------------------------------------- */

static char *temp_path(const char *name)
{
    char *p = malloc(256);
    snprintf(p, 256, "/tmp/sona_test_%ld_%s", (long)getpid(), name);
    return p;
}

static uint8_t *read_all(const char *path, size_t *len)
{
    uint8_t *b = (uint8_t *)test_read_file(path, len);
    cr_assert_not_null(b, "cannot read %s", path);
    return b;
}

/* An engine with learned state everywhere: tenants, Base-LoRA, EWC tasks, patterns. */
static sona_engine *trained(uint64_t seed)
{
    sona_engine *e = make(H, 1);
    int32_t t;
    cr_assert_eq(sona_tenant_create(e, &t), SONA_OK);
    cr_assert_eq(sona_tenant_create(e, &t), SONA_OK);
    cr_assert_eq(sona_tenant_remove(e, 1), SONA_OK); /* a gap in the ids */
    sona_rng r;
    sona_rng_seed(&r, seed, 3);
    for (int i = 0; i < 60; i++)
        cr_assert_eq(request_about(e, i % 2 ? t : 0, &r, seed, 3, (float)(i % 5) * 0.2f), SONA_OK);
    for (int i = 0; i < 12; i++) /* one step: quality-only signals, so tenant t has a critic */
        cr_assert_eq(request_about(e, t, &r, seed, 1, 0.3f + 0.05f * (float)(i % 4)), SONA_OK);
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
    cr_assert_eq(sona_deep_cycle(e), SONA_OK, "%s", sona_engine_last_error(e));
    for (int i = 0; i < 20; i++)
        cr_assert_eq(request(e, 0, &r, 2, 0.7f), SONA_OK);
    return e;
}

Test(engine, save_load_save_gives_identical_bytes)
{
    const uint64_t seed = test_seed();
    printf("[engine] seed %" PRIu64 "\n", seed);
    char *p1 = temp_path("a.state"), *p2 = temp_path("b.state");
    sona_engine *e = trained(seed);
    cr_assert_eq(sona_save(e, p1), SONA_OK, "%s", sona_engine_last_error(e));
    sona_stats before;
    sona_get_stats(e, &before);
    cr_assert_gt(before.patterns, 0, "the round trip should carry patterns (Q8 centroids)");
    sona_engine *f = make(H, 1);
    cr_assert_eq(sona_load(f, p1), SONA_OK, "%s", sona_engine_last_error(f));
    cr_assert_eq(sona_save(f, p2), SONA_OK);
    size_t n1, n2;
    uint8_t *b1 = read_all(p1, &n1), *b2 = read_all(p2, &n2);
    cr_assert_eq(n1, n2, "sizes %zu vs %zu", n1, n2);
    cr_assert_eq(memcmp(b1, b2, n1), 0, "save -> load -> save changed bytes");
    /* The loaded engine answers like the saved one. */
    sona_rng r;
    sona_rng_seed(&r, seed, 9);
    float x[H], y1[H], y2[H];
    fill_uniform(&r, x, H, -1.0f, 1.0f);
    for (int32_t t = 0; t < 3; t++) {
        sona_status s1 = sona_apply(e, t, x, y1), s2 = sona_apply(f, t, x, y2);
        cr_assert_eq(s1, s2, "tenant %d", t);
        if (s1 == SONA_OK)
            cr_assert_eq(memcmp(y1, y2, sizeof y1), 0, "tenant %d differs after load", t);
    }
    cr_assert_eq(sona_apply_layer(e, 1, x, y1), SONA_OK);
    cr_assert_eq(sona_apply_layer(f, 1, x, y2), SONA_OK);
    cr_assert_eq(memcmp(y1, y2, sizeof y1), 0, "Base-LoRA differs after load");
    sona_stats after;
    sona_get_stats(f, &after);
    cr_assert_eq(before.trajectories_queued, 20, "the round trip should carry queued trajectories");
    cr_assert_eq(after.trajectories_queued, before.trajectories_queued);
    cr_assert_eq(after.trajectories_recorded, before.trajectories_recorded);
    cr_assert_eq(after.trajectories_processed, before.trajectories_processed);
    cr_assert_eq(after.trajectories_dropped, before.trajectories_dropped);
    cr_assert_eq(after.patterns, before.patterns);
    cr_assert_eq(after.tasks, before.tasks);
    cr_assert_eq(after.signals_accepted, before.signals_accepted);
    cr_assert_eq(after.tenants, 2);
    cr_assert_eq(after.quality_baseline, before.quality_baseline);
    /* And learns like it: a quality-only signal is weighed against the baselines and the
     * critic, which must have come back exactly. */
    sona_rng r1, r2;
    sona_rng_seed(&r1, seed, 10);
    sona_rng_seed(&r2, seed, 10);
    cr_assert_eq(request(e, 2, &r1, 1, 0.9f), SONA_OK);
    cr_assert_eq(request(f, 2, &r2, 1, 0.9f), SONA_OK);
    cr_assert_eq(sona_flush(e), SONA_OK);
    cr_assert_eq(sona_flush(f), SONA_OK);
    cr_assert_eq(sona_apply(e, 2, x, y1), SONA_OK);
    cr_assert_eq(sona_apply(f, 2, x, y2), SONA_OK);
    cr_assert_eq(memcmp(y1, y2, sizeof y1), 0, "a quality-only signal learned differently after load");
    free(b1);
    free(b2);
    unlink(p1);
    unlink(p2);
    free(p1);
    free(p2);
    sona_engine_destroy(e);
    sona_engine_destroy(f);
}

/* Loads data into a trained engine and checks the status and that nothing changed. */
static void refused(sona_engine *e, const uint8_t *data, size_t len, sona_status want, const char *what)
{
    char *p = temp_path("probe.state"), *q = temp_path("probe2.state");
    cr_assert_eq(sona_save(e, p), SONA_OK);
    sona_status st = sona_load_buffer(e, data, len);
    cr_assert_eq(st, want, "%s: got %s (%s)", what, sona_status_str(st), sona_engine_last_error(e));
    cr_assert_eq(sona_save(e, q), SONA_OK);
    size_t n1, n2;
    uint8_t *b1 = read_all(p, &n1), *b2 = read_all(q, &n2);
    cr_assert(n1 == n2 && memcmp(b1, b2, n1) == 0, "%s: the engine changed", what);
    free(b1);
    free(b2);
    unlink(p);
    unlink(q);
    free(p);
    free(q);
}

/* The file is little-endian whatever the host: the header's version, byte-order mark and section
 * count read as bytes, and the first section's length field as a little-endian u64 lands on the
 * second section's tag. */
Test(engine, state_file_is_little_endian)
{
    const uint64_t seed = test_seed();
    printf("[engine] seed %" PRIu64 "\n", seed);
    char *path = temp_path("endian.state");
    sona_engine *e = trained(seed);
    cr_assert_eq(sona_save(e, path), SONA_OK);
    size_t n;
    uint8_t *b = read_all(path, &n);
    cr_assert(n > 64);
    const uint8_t version[4] = {6, 0, 0, 0}, mark[4] = {4, 3, 2, 1};
    cr_assert_eq(memcmp(b + 8, version, 4), 0, "format version 6, little-endian");
    cr_assert_eq(memcmp(b + 12, mark, 4), 0, "byte-order mark 0x01020304, little-endian");
    cr_assert_eq(memcmp(b + 24, "CONF", 4), 0);
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--)
        len = len << 8 | b[24 + 8 + i];
    cr_assert(24 + 20 + len + 4 <= n);
    cr_assert_eq(memcmp(b + 24 + 20 + len, "STAT", 4), 0, "CONF's length (%" PRIu64 ") is little-endian", len);
    free(b);
    unlink(path);
    free(path);
    sona_engine_destroy(e);
}

Test(engine, bad_files_are_refused_and_change_nothing)
{
    const uint64_t seed = test_seed();
    printf("[engine] seed %" PRIu64 "\n", seed);
    char *path = temp_path("good.state");
    sona_engine *src = trained(seed);
    cr_assert_eq(sona_save(src, path), SONA_OK);
    size_t n;
    uint8_t *good = read_all(path, &n);
    sona_engine *e = trained(seed + 1); /* different learned state */
    uint8_t *bad = malloc(n);

    for (size_t cut = 0; cut < n; cut += 1 + cut / 3)
        refused(e, good, cut, SONA_E_CORRUPT, "truncated");
    sona_rng r;
    sona_rng_seed(&r, seed, 5);
    for (int k = 0; k < 40; k++) { /* one flipped bit anywhere */
        memcpy(bad, good, n);
        const size_t at = sona_rng_below(&r, (uint32_t)n);
        bad[at] ^= (uint8_t)(1u << sona_rng_below(&r, 8));
        sona_status st = sona_load_buffer(e, bad, n);
        cr_assert(st == SONA_E_CORRUPT || st == SONA_E_VERSION, "flip at %zu: %s", at, sona_status_str(st));
    }
    /* Every byte of the file header and the first sections' headers, one bit each: the bytes
     * outside the payload checksums are where a damaged file could slip through. */
    for (size_t at = 0; at < n && at < 512; at++) {
        memcpy(bad, good, n);
        bad[at] ^= (uint8_t)(1u << (at % 8));
        sona_status st = sona_load_buffer(e, bad, n);
        cr_assert(st == SONA_E_CORRUPT || st == SONA_E_VERSION, "flip at %zu: %s", at, sona_status_str(st));
    }
    refused(e, bad, n, sona_load_buffer(e, bad, n), "the last flipped file");
    memcpy(bad, good, n);
    bad[8] = 7; /* a format version from the future, with the header CRC fixed so only it is wrong */
    const uint32_t crc = sona_crc32(0, bad, 20);
    memcpy(bad + 20, &crc, 4);
    refused(e, bad, n, SONA_E_VERSION, "version");
    refused(e, (const uint8_t *)"NOTSONA!", 8, SONA_E_CORRUPT, "magic");

    /* Another width: SONA_E_SIZE. */
    sona_engine *wide = make(H + 1, 1);
    char *wpath = temp_path("wide.state");
    cr_assert_eq(sona_save(wide, wpath), SONA_OK);
    size_t wn;
    uint8_t *wb = read_all(wpath, &wn);
    refused(e, wb, wn, SONA_E_SIZE, "width");
    cr_assert_eq(sona_load(e, "/nonexistent/dir/x.state"), SONA_E_IO);
    cr_assert_eq(sona_save(e, "/nonexistent/dir/x.state"), SONA_E_IO);
    free(wb);
    unlink(wpath);
    free(wpath);
    sona_engine_destroy(wide);
    free(bad);
    free(good);
    unlink(path);
    free(path);
    sona_engine_destroy(src);
    sona_engine_destroy(e);
}

/* ---- the queue in the state file -------------------------------------------------------------- */

static uint8_t *save_bytes(sona_engine *e, size_t *len)
{
    char *p = temp_path("bytes.state");
    cr_assert_eq(sona_save(e, p), SONA_OK, "%s", sona_engine_last_error(e));
    uint8_t *b = read_all(p, len);
    unlink(p);
    free(p);
    return b;
}

/* Where the section tagged `tag` starts in a state file (the layout of persist.c); n when
 * it has none. */
static size_t section_at(const uint8_t *file, size_t n, const char tag[4])
{
    for (size_t pos = 24; pos + 20 <= n;) {
        uint64_t len;
        memcpy(&len, file + pos + 8, 8);
        if (memcmp(file + pos, tag, 4) == 0)
            return pos;
        pos += 20 + len;
    }
    return n;
}

/* The payload of section `tag` (asserted present) and its length. */
static const uint8_t *section(const uint8_t *file, size_t n, const char tag[4], size_t *len)
{
    const size_t at = section_at(file, n, tag);
    cr_assert_lt(at, n, "no %.4s section", tag);
    uint64_t l;
    memcpy(&l, file + at + 8, 8);
    *len = l;
    return file + at + 20;
}

/* A copy of file with section `tag`'s payload replaced (NULL: the section removed), its length,
 * checksum and the header (section count, checksum) fixed: only the parser behind them sees the
 * change. */
static uint8_t *rewrite_section(const uint8_t *file, size_t n, const char tag[4], const uint8_t *payload,
                                size_t plen, size_t *out_len)
{
    const size_t at = section_at(file, n, tag);
    cr_assert_lt(at, n, "no %.4s section", tag);
    uint64_t old;
    memcpy(&old, file + at + 8, 8);
    const size_t tail = at + 20 + old, head = payload ? at + 20 : at;
    *out_len = head + (payload ? plen : 0) + (n - tail);
    uint8_t *out = malloc(*out_len);
    memcpy(out, file, head);
    if (payload) {
        memcpy(out + head, payload, plen);
        const uint64_t l = plen;
        const uint32_t crc = sona_crc32(0, payload, plen);
        memcpy(out + at + 8, &l, 8);
        memcpy(out + at + 16, &crc, 4);
    } else {
        uint32_t count;
        memcpy(&count, out + 16, 4);
        count--;
        memcpy(out + 16, &count, 4);
    }
    memcpy(out + head + (payload ? plen : 0), file + tail, n - tail);
    const uint32_t crc = sona_crc32(0, out, 20);
    memcpy(out + 20, &crc, 4);
    return out;
}

/* The queued trajectories of a state file, oldest first (*n of them). */
static sona_trajectory **queued_in(const uint8_t *file, size_t len, uint32_t *n)
{
    size_t plen;
    const uint8_t *p = section(file, len, "QUEU", &plen);
    sona_rbuf r = {.p = p, .len = plen};
    (void)sona_rbuf_u64(&r);
    *n = sona_rbuf_u32(&r);
    sona_trajectory **t = calloc(*n + 1, sizeof *t);
    for (uint32_t i = 0; i < *n; i++)
        cr_assert_eq(sona_trajectory_read(&r, &t[i]), SONA_OK, "%s", sona_last_error());
    return t;
}

static void free_queued(sona_trajectory **t, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        sona_trajectory_destroy(t[i]);
    free(t);
}

/* Base-LoRA (weights and EWC++ state) of two engines, compared through their saved BASE
 * sections and through every layer's output on x. */
static void expect_same_base(sona_engine *a, sona_engine *b, const float *x, const char *what)
{
    size_t na, nb, la, lb;
    uint8_t *fa = save_bytes(a, &na), *fb = save_bytes(b, &nb);
    const uint8_t *sa = section(fa, na, "BASE", &la), *sb = section(fb, nb, "BASE", &lb);
    cr_assert(la == lb && memcmp(sa, sb, la) == 0, "%s: Base-LoRA differs", what);
    float ya[H], yb[H];
    for (uint32_t l = 0; l < 3; l++) {
        cr_assert_eq(sona_apply_layer(a, l, x, ya), SONA_OK);
        cr_assert_eq(sona_apply_layer(b, l, x, yb), SONA_OK);
        cr_assert_eq(memcmp(ya, yb, sizeof ya), 0, "%s: layer %u answers differently", what, l);
    }
    free(fa);
    free(fb);
}

static const char *const storage_name[] = {"f32", "f16", "q8"};

/* An engine recording in `storage` learns, queues N more trajectories and saves: the file holds
 * them; a fresh engine loads them (trajectories_queued N, the same counters, the same bytes when
 * saved again), and its loop B learns from them exactly as the first engine's does. So does an
 * engine recording in another format (the restored trajectories keep theirs), and its own new
 * requests are recorded in its format. */
static void queue_round_trip(sona_storage storage, uint64_t seed)
{
    enum { N = 23 };
    printf("[engine] queue round trip, %s, seed %" PRIu64 "\n", storage_name[storage], seed);
    sona_engine_config c = config(H, 1);
    c.step_storage = storage;
    sona_engine *e = create(&c);
    sona_rng r;
    sona_rng_seed(&r, seed, 20 + storage);
    for (int i = 0; i < 40; i++)
        cr_assert_eq(request(e, 0, &r, 1 + i % 4, (float)(i % 5) * 0.2f), SONA_OK);
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
    for (int i = 0; i < N; i++)
        cr_assert_eq(request(e, 0, &r, 1 + i % 4, (float)(i % 7) * 0.15f), SONA_OK);
    sona_stats se, sf, sg;
    sona_get_stats(e, &se);
    cr_assert_eq(se.trajectories_queued, N);

    /* Saving looks at the queue and leaves it: twice the same bytes, the same counters. */
    char *path = temp_path("queue.state");
    cr_assert_eq(sona_save(e, path), SONA_OK, "%s", sona_engine_last_error(e));
    size_t n, n2;
    uint8_t *file = read_all(path, &n), *again = save_bytes(e, &n2);
    cr_assert(n == n2 && memcmp(file, again, n) == 0, "a second save differs: the first disturbed the queue");
    sona_get_stats(e, &sf);
    cr_assert(sf.trajectories_queued == N && sf.trajectories_recorded == se.trajectories_recorded &&
                  sf.trajectories_processed == se.trajectories_processed,
              "saving changed the queue or its counters");
    uint32_t in_file;
    sona_trajectory **q = queued_in(file, n, &in_file);
    cr_assert_eq(in_file, N);
    for (uint32_t i = 0; i < N; i++)
        cr_assert_eq(sona_trajectory_storage(q[i]), storage, "kept as recorded");
    free_queued(q, in_file);

    /* A fresh engine of the same configuration: the same queue and counters, the same bytes. */
    sona_engine *f = create(&c);
    cr_assert_eq(sona_load(f, path), SONA_OK, "%s", sona_engine_last_error(f));
    sona_get_stats(f, &sf);
    cr_assert_eq(sf.trajectories_queued, N);
    cr_assert_eq(sf.trajectories_recorded, se.trajectories_recorded);
    cr_assert_eq(sf.trajectories_processed, se.trajectories_processed);
    cr_assert_eq(sf.trajectories_dropped, se.trajectories_dropped);
    uint8_t *resaved = save_bytes(f, &n2);
    cr_assert(n == n2 && memcmp(file, resaved, n) == 0, "save -> load -> save changed bytes");

    /* One recording in another format. */
    sona_engine_config other = c;
    other.step_storage = (sona_storage)((storage + 1) % 3);
    sona_engine *g = create(&other);
    cr_assert_eq(sona_load(g, path), SONA_OK, "%s", sona_engine_last_error(g));

    /* Loop B on each: N more processed, and the same Base-LoRA. */
    sona_engine *all[3] = {e, f, g};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(sona_force_learn(all[i]), SONA_OK, "engine %d: %s", i, sona_engine_last_error(all[i]));
        sona_get_stats(all[i], &sg);
        cr_assert_eq(sg.trajectories_processed, se.trajectories_processed + N, "engine %d", i);
        cr_assert_eq(sg.trajectories_queued, 0, "engine %d", i);
        cr_assert_eq(sg.trajectories_recorded, se.trajectories_recorded, "engine %d", i);
    }
    float x[H];
    fill_uniform(&r, x, H, -1.0f, 1.0f);
    cr_assert_gt(se.base_updates, 0);
    expect_same_base(e, f, x, "loaded, same format");
    expect_same_base(e, g, x, "loaded, other format");

    /* New requests: the next id is where the first engine's is; g records in its own format. */
    sona_rng same;
    for (int i = 0; i < 3; i++) {
        sona_rng_seed(&same, seed, 99);
        cr_assert_eq(request(all[i], 0, &same, 2, 0.5f), SONA_OK);
    }
    size_t ne, nf, ng;
    uint8_t *fe = save_bytes(e, &ne), *ff = save_bytes(f, &nf), *fg = save_bytes(g, &ng);
    uint32_t ce, cf, cg;
    sona_trajectory **qe = queued_in(fe, ne, &ce), **qf = queued_in(ff, nf, &cf), **qg = queued_in(fg, ng, &cg);
    cr_assert(ce == 1 && cf == 1 && cg == 1);
    cr_assert_eq(sona_trajectory_id(qf[0]), sona_trajectory_id(qe[0]), "the id source was not restored");
    cr_assert_eq(sona_trajectory_id(qg[0]), sona_trajectory_id(qe[0]));
    cr_assert_eq(sona_trajectory_storage(qg[0]), other.step_storage,
                 "a new request was recorded in a restored trajectory's format");
    free_queued(qe, ce);
    free_queued(qf, cf);
    free_queued(qg, cg);
    free(fe);
    free(ff);
    free(fg);
    free(file);
    free(again);
    free(resaved);
    unlink(path);
    free(path);
    sona_engine_destroy(e);
    sona_engine_destroy(f);
    sona_engine_destroy(g);
}

Test(engine, queued_trajectories_are_saved_and_learned_after_load)
{
    const uint64_t seed = test_seed();
    for (int k = 0; k < 3; k++)
        queue_round_trip((sona_storage)k, seed);
}

/* The loading engine's buffer holds fewer than the file queued: the oldest are kept (a full queue
 * refuses the newest), the rest counted as dropped instead of recorded. */
Test(engine, a_queue_larger_than_the_buffer_keeps_the_oldest)
{
    enum { N = 30, CAP = 20 };
    sona_rng r;
    sona_rng_seed(&r, 4, 0);
    sona_engine *e = make(H, 1);
    for (int i = 0; i < N; i++)
        cr_assert_eq(request(e, 0, &r, 2, 0.1f * (float)(i % 9)), SONA_OK);
    size_t n, m;
    uint8_t *file = save_bytes(e, &n);
    sona_engine_config c = config(H, 1);
    c.buffer_capacity = CAP;
    sona_engine *f = create(&c);
    cr_assert_eq(sona_load_buffer(f, file, n), SONA_OK, "%s", sona_engine_last_error(f));
    sona_stats se, sf;
    sona_get_stats(e, &se);
    sona_get_stats(f, &sf);
    cr_assert_eq(sf.trajectories_queued, CAP);
    cr_assert_eq(sf.trajectories_recorded, sf.trajectories_processed + CAP);
    cr_assert_eq(sf.trajectories_dropped, se.trajectories_dropped + (N - CAP));
    cr_assert_eq(sf.trajectories_recorded + sf.trajectories_dropped,
                 se.trajectories_recorded + se.trajectories_dropped);
    uint8_t *kept = save_bytes(f, &m);
    uint32_t ne, nf;
    sona_trajectory **qe = queued_in(file, n, &ne), **qf = queued_in(kept, m, &nf);
    cr_assert(ne == N && nf == CAP);
    for (uint32_t i = 0; i < CAP; i++)
        cr_assert_eq(sona_trajectory_id(qf[i]), sona_trajectory_id(qe[i]), "position %u is not the file's", i);
    cr_assert_eq(sona_force_learn(f), SONA_OK, "%s", sona_engine_last_error(f));
    sona_get_stats(f, &sf);
    cr_assert_eq(sf.trajectories_processed, CAP);
    free_queued(qe, ne);
    free_queued(qf, nf);
    free(file);
    free(kept);
    sona_engine_destroy(e);
    sona_engine_destroy(f);
}

/* An old state file of tests/data, written by fuzz_make_seed (49 requests on 2 tenants, 40 of
 * them learned by loop B, then loop C), loaded into the fuzzed engine's shape after a request of
 * the engine's own (which the file's queue replaces): `queued` trajectories come back queued,
 * `dropped` are counted as such. Saved again it is of the current version, which round-trips to
 * the same bytes, and the sections in `same`, unchanged since the file's version, hold the same
 * payloads. What the file did not keep starts afresh: the bank's counters (no extraction yet,
 * the next pattern id right above the patterns') and the EWC++ boundary detectors. */
static sona_engine *old_file_loads(const char *name, uint8_t version, const char *const *same, int nsame,
                                   uint64_t queued, uint64_t dropped)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", SONA_TEST_DATA_DIR, name);
    size_t n, m, m2;
    uint8_t *file = read_all(path, &n);
    cr_assert_eq(file[8], version, "%s is not a version %u file", name, version);
    sona_engine *e = fuzz_engine_create(SONA_STORAGE_Q8);
    cr_assert_not_null(e);
    float x[16] = {1.0f, -0.5f, 0.25f}, y[16];
    sona_request *req;
    cr_assert_eq(sona_request_begin(e, 0, x, &req), SONA_OK);
    cr_assert_eq(sona_request_step(req, 0, x, NULL, 0, 0.5f), SONA_OK);
    cr_assert_eq(sona_request_end(req, 0.5f), SONA_OK);
    cr_assert_eq(sona_load_buffer(e, file, n), SONA_OK, "%s", sona_engine_last_error(e));
    cr_assert_eq(sona_apply_layer(e, 0, x, y), SONA_OK);
    cr_assert_neq(memcmp(x, y, sizeof x), 0, "the file's Base-LoRA was not loaded");
    sona_stats s;
    sona_get_stats(e, &s);
    cr_assert_eq(s.trajectories_queued, queued);
    cr_assert_eq(s.trajectories_processed, 40);
    cr_assert_eq(s.trajectories_recorded, 40 + queued);
    cr_assert_eq(s.trajectories_dropped, dropped);
    cr_assert_eq(s.signals_accepted, 49);
    cr_assert_eq(s.tenants, 2);
    cr_assert_gt(s.patterns, 0);
    cr_assert_eq(s.loop_c_cycles, 1);
    if (version < 3) { /* the bank's counters and the detectors came with version 3 */
        sona_bank_stats bs;
        const sona_bank *bank = eng_inspect_bank_begin(e);
        cr_assert_eq(sona_bank_stats_get(bank, &bs), SONA_OK);
        cr_assert_eq(bs.extractions + bs.patterns_created + bs.trajectories_added, 0);
        uint64_t max_id = 0;
        sona_pattern p;
        for (uint32_t i = 0; sona_bank_pattern_at(bank, i, &p, NULL) == SONA_OK; i++)
            max_id = p.id > max_id ? p.id : max_id;
        cr_assert_eq(sona_bank_next_id(bank), max_id + 1);
        eng_inspect_bank_end(e);
        sona_ewc_detector d;
        cr_assert_eq(eng_inspect_base_detector(e, &d), SONA_OK);
        cr_assert_eq(d.samples + d.boundaries, 0);
    }
    uint8_t *now = save_bytes(e, &m);
    cr_assert_eq(now[8], 6);
    sona_engine *f = fuzz_engine_create(SONA_STORAGE_Q8);
    cr_assert_eq(sona_load_buffer(f, now, m), SONA_OK, "%s", sona_engine_last_error(f));
    uint8_t *again = save_bytes(f, &m2);
    cr_assert(m == m2 && memcmp(now, again, m) == 0, "save -> load -> save changed bytes");
    for (int t = 0; t < nsame; t++) {
        size_t l1, l2;
        const uint8_t *a = section(file, n, same[t], &l1), *b = section(now, m, same[t], &l2);
        cr_assert(l1 == l2 && memcmp(a, b, l1) == 0, "%s differs", same[t]);
    }
    free(file);
    free(now);
    free(again);
    sona_engine_destroy(f);
    return e;
}

/* An engine old_file_loads returned, with the 9 trajectories its file queued: loop B learns
 * them (49 processed in all, after `cycles` cycles when not 0), then it is destroyed. */
static void learns_the_file_queue(sona_engine *e, uint64_t cycles)
{
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
    sona_stats s;
    sona_get_stats(e, &s);
    cr_assert_eq(s.trajectories_processed, 49);
    if (cycles)
        cr_assert_eq(s.loop_b_cycles, cycles);
    sona_engine_destroy(e);
}

/* tests/data/state_v1.sona: what tests/fuzz/fuzz_make_seed.c wrote when built against commit
 * 68b925d, the last writer of format version 1: 49 trajectories recorded, 40 processed, the 9
 * queued not saved. It loads; those 9 count as dropped (recorded == processed + queued); and
 * the engine's own queue gives way to the file's (empty) one. Its EWC++ records (TENA, BASE)
 * gain the detector when saved again, STAT the dropped ones. */
Test(engine, a_version_1_file_loads)
{
    const char *const same[] = {"PATT"}; /* CONF gained max_output_change in version 4 */
    sona_engine_destroy(old_file_loads("state_v1.sona", 1, same, 1, 0, 9));
}

/* tests/data/state_v2.sona: what tests/fuzz/fuzz_make_seed.c wrote when built against commit
 * 3872590, the last writer of format version 2: 49 trajectories recorded, 40 processed, 9
 * queued (3 each of F32, F16 and Q8). It loads with its queue, which loop B learns from. */
Test(engine, a_version_2_file_loads)
{
    const char *const same[] = {"STAT", "PATT", "QUEU"};
    learns_the_file_queue(old_file_loads("state_v2.sona", 2, same, 3, 9, 0), 2);
}

/* tests/data/state_v3.sona: what tests/fuzz/fuzz_make_seed.c wrote when built against commit
 * df4b161, the last writer of format version 3 (before the quality baselines of BASL and the
 * EWC++ task-shift state): the same traffic as the version 2 file. It loads with its queue, the
 * baselines start empty, and saved again every section but CONF (max_output_change), TENA and
 * BASE (the EWC++ records' task-shift state) and the new BASL is byte for byte the file's. */
Test(engine, a_version_3_file_loads)
{
    const char *const same[] = {"STAT", "PATT", "QUEU", "BANK", "DREA"};
    learns_the_file_queue(old_file_loads("state_v3.sona", 3, same, 5, 9, 0), 0);
}

/* tests/data/state_v4.sona: what tests/fuzz/fuzz_make_seed.c wrote when built against commit
 * dfba928, the last writer of format version 4 (before the EWC++ records' query cells): the
 * same traffic. It loads with every snapshot at full weight, and saved again every section but
 * CONF (the loading engine's defaults moved: ewc_lambda), TENA and BASE (the EWC++ records gain
 * their cells) and BASL (the baselines gain their reward spread) is byte for byte the file's. */
Test(engine, a_version_4_file_loads)
{
    const char *const same[] = {"STAT", "PATT", "QUEU", "BANK", "DREA"};
    learns_the_file_queue(old_file_loads("state_v4.sona", 4, same, 5, 9, 0), 0);
}

/* tests/data/state_v5.sona: what tests/fuzz/fuzz_make_seed.c wrote when built against commit
 * 573f380, the last writer of format version 5 (before the tenants' query critics and the
 * baselines' reward spread): the same traffic, every request with varied step rewards. It loads
 * with no critic and no spread, and saved again every section but CONF (the loading engine's
 * defaults moved: ewc_lambda), BASL (the spread) and the new CRIT (empty) is byte for byte the
 * file's. */
Test(engine, a_version_5_file_loads)
{
    const char *const same[] = {"STAT", "TENA", "BASE", "PATT", "QUEU", "BANK", "DREA"};
    learns_the_file_queue(old_file_loads("state_v5.sona", 5, same, 7, 9, 0), 0);
}

/* good with its QUEU payload replaced by one queued trajectory record, next id and the STAT
 * section's recorded made to agree (recorded = processed + 1): only the record can be wrong. */
static uint8_t *with_one_queued(const uint8_t *good, size_t n, const sona_trajectory *t, uint64_t next_id,
                                size_t *out_len)
{
    sona_wbuf w = {0};
    sona_wbuf_u64(&w, next_id);
    sona_wbuf_u32(&w, 1);
    sona_trajectory_write(t, &w);
    size_t l1, sl;
    uint8_t *q = rewrite_section(good, n, "QUEU", w.p, w.len, &l1);
    const uint8_t *stat = section(q, l1, "STAT", &sl);
    uint8_t *st = malloc(sl);
    memcpy(st, stat, sl);
    uint64_t processed;
    memcpy(&processed, st + 12, 8);
    processed += 1;
    memcpy(st + 4, &processed, 8); /* u32 count, then recorded, processed, ... */
    uint8_t *out = rewrite_section(q, l1, "STAT", st, sl, out_len);
    free(st);
    free(q);
    free(w.p);
    return out;
}

/* A trajectory of query width qdim and one step of width sdim, stored as Q8 with id `id`. */
static sona_trajectory *one(uint32_t qdim, uint32_t sdim, uint64_t id)
{
    sona_id_source *ids;
    cr_assert_eq(sona_id_source_create(id, &ids), SONA_OK);
    float v[H + 1];
    for (uint32_t i = 0; i < H + 1; i++)
        v[i] = 0.1f * (float)i - 1.0f;
    sona_trajectory *t;
    cr_assert_eq(sona_trajectory_begin(ids, SONA_STORAGE_Q8, v, qdim, &t), SONA_OK);
    cr_assert_eq(sona_trajectory_add_step(t, v, sdim, NULL, 0, 0.5f, 1), SONA_OK);
    cr_assert_eq(sona_trajectory_end(t, 0.75f), SONA_OK);
    sona_id_source_destroy(ids);
    return t;
}

/* A damaged QUEU (its checksum fixed, so the parser sees it) is refused with SONA_E_CORRUPT and
 * the engine is left as it was; the message says which check it failed. */
static void refused_because(sona_engine *e, const uint8_t *bad, size_t n, const char *why, const char *what)
{
    refused(e, bad, n, SONA_E_CORRUPT, what);
    sona_load_buffer(e, bad, n);
    cr_assert(strstr(sona_engine_last_error(e), why), "%s: refused for another reason: %s", what,
              sona_engine_last_error(e));
}

/* good with section tag's payload replaced (NULL: the section removed), its checksum fixed:
 * refused for `why` (refused_because). */
static void refused_with_section(sona_engine *e, const uint8_t *good, size_t n, const char tag[4],
                                 const uint8_t *payload, size_t plen, const char *why, const char *what)
{
    size_t bn;
    uint8_t *bad = rewrite_section(good, n, tag, payload, plen, &bn);
    refused_because(e, bad, bn, why, what);
    free(bad);
}

Test(engine, damaged_queue_sections_are_refused_and_change_nothing)
{
    const uint64_t seed = test_seed();
    printf("[engine] seed %" PRIu64 "\n", seed);
    sona_engine *src = trained(seed), *e = trained(seed + 1);
    size_t n, bn, ql;
    uint8_t *good = save_bytes(src, &n), *bad;
    const uint8_t *queue = section(good, n, "QUEU", &ql);
    uint8_t *patched = malloc(ql + 1);

    /* The crafted one-trajectory queue is sound: each case below changes one thing. */
    sona_trajectory *t = one(H, H, 7);
    bad = with_one_queued(good, n, t, 8, &bn);
    sona_engine *fresh = make(H, 1);
    cr_assert_eq(sona_load_buffer(fresh, bad, bn), SONA_OK, "%s", sona_engine_last_error(fresh));
    sona_engine_destroy(fresh);
    free(bad);
    bad = with_one_queued(good, n, t, 7, &bn);
    refused_because(e, bad, bn, "next id", "an id the restored source would hand out again");
    free(bad);
    sona_trajectory_destroy(t);
    t = one(H + 1, H, 7);
    bad = with_one_queued(good, n, t, 8, &bn);
    refused_because(e, bad, bn, "width", "a query of another width");
    free(bad);
    sona_trajectory_destroy(t);
    t = one(H, H - 1, 7);
    bad = with_one_queued(good, n, t, 8, &bn);
    refused_because(e, bad, bn, "width", "a step of another width");
    free(bad);
    sona_trajectory_destroy(t);

    /* The real queue (20 trajectories) with one thing changed. */
    uint32_t count;
    memcpy(&count, queue + 8, 4);
    cr_assert_eq(count, 20);
    const struct {
        size_t at;
        uint32_t value;
        const char *why, *what;
    } patches[] = {
        {8, 21, "truncated", "one trajectory more than the section holds"},
        {12 + 8, 3, "queued trajectory 0", "an unknown storage format"},
        {12 + 56, 0x7fc00000u, "queued trajectory 0", "a NaN Q8 scale in the first query"},
    };
    for (size_t k = 0; k < sizeof patches / sizeof patches[0]; k++) {
        memcpy(patched, queue, ql);
        memcpy(patched + patches[k].at, &patches[k].value, 4);
        refused_with_section(e, good, n, "QUEU", patched, ql, patches[k].why, patches[k].what);
    }
    size_t sl;
    const uint8_t *stat = section(good, n, "STAT", &sl);
    uint8_t *counters = malloc(sl);
    memcpy(counters, stat, sl);
    counters[4]++; /* recorded, the first counter */
    refused_with_section(e, good, n, "STAT", counters, sl, "counters do not match", "recorded != processed + queued");
    free(counters);
    memcpy(patched, queue, ql);
    patched[ql] = 0;
    refused_with_section(e, good, n, "QUEU", patched, ql + 1, "do not match its length",
                         "a byte after the last trajectory");
    refused_with_section(e, good, n, "QUEU", NULL, 0, "missing", "a file without its queue");
    free(patched);
    free(good);
    sona_engine_destroy(src);
    sona_engine_destroy(e);
}

/* ---- a restart changes nothing that loop B learns ---------------------------------------------- */

enum { TOPICS = 3 };

/* n requests near one of `topics` each (query and activation within 2 % of the topic's
 * direction): their trajectories cluster, and later cycles' clusters merge into the patterns of
 * earlier ones. */
static void topical_requests(sona_engine *e, int32_t tenant, sona_rng *r, const float *topics, int n)
{
    float x[H], a[H];
    for (int i = 0; i < n; i++) {
        const float *t = topics + (size_t)sona_rng_below(r, TOPICS) * H;
        for (int h = 0; h < H; h++) {
            x[h] = t[h] + 0.02f * (2.0f * sona_rng_uniform(r) - 1.0f);
            a[h] = t[(h + 1) % H] + 0.02f * (2.0f * sona_rng_uniform(r) - 1.0f);
        }
        sona_request *req;
        cr_assert_eq(sona_request_begin(e, tenant, x, &req), SONA_OK);
        cr_assert_eq(sona_request_step(req, 0, a, NULL, 0, 0.5f), SONA_OK);
        cr_assert_eq(sona_request_end(req, 0.3f + 0.5f * sona_rng_uniform(r)), SONA_OK);
    }
}

/* One loop B cycle's traffic: topical requests on tenant 0, a few random ones (whose clusters
 * depend on k-means' seeding) on `tenant`, then the cycle. */
static void learn_round(sona_engine *e, int32_t tenant, sona_rng *r, const float *topics)
{
    topical_requests(e, 0, r, topics, 24);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(request(e, tenant, r, 1 + i % 3, sona_rng_uniform(r)), SONA_OK);
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
}

/* Engines a and b have learned the same, bit for bit: the patterns in the same order (ids, sizes,
 * weights, qualities, access counts, centroids; their creation and access times are the clock's),
 * the bank's counters, the engines' counters, and the sections of their state files that hold
 * the rest (tenants and Base-LoRA with their EWC++ state, counters, queue, dream visits). */
static void expect_same_learning(sona_engine *a, sona_engine *b, const char *what)
{
    const sona_bank *bank_a = eng_inspect_bank_begin(a), *bank_b = eng_inspect_bank_begin(b);
    const uint32_t np = sona_bank_pattern_count(bank_a);
    cr_assert_eq(sona_bank_pattern_count(bank_b), np, "%s: pattern count", what);
    for (uint32_t i = 0; i < np; i++) {
        sona_pattern pa, pb;
        float ca[H], cb[H];
        cr_assert_eq(sona_bank_pattern_at(bank_a, i, &pa, ca), SONA_OK);
        cr_assert_eq(sona_bank_pattern_at(bank_b, i, &pb, cb), SONA_OK);
        cr_assert(pa.id == pb.id && pa.size == pb.size && pa.total_weight == pb.total_weight &&
                      pa.avg_quality == pb.avg_quality && pa.access_count == pb.access_count,
                  "%s: pattern %u differs (id %" PRIu64 " vs %" PRIu64 ", size %" PRIu64 " vs %" PRIu64 ")",
                  what, i, pa.id, pb.id, pa.size, pb.size);
        cr_assert_eq(memcmp(ca, cb, sizeof ca), 0, "%s: pattern %" PRIu64 "'s centroid differs", what, pa.id);
    }
    sona_bank_stats ba, bb;
    memset(&ba, 0, sizeof ba);
    memset(&bb, 0, sizeof bb);
    sona_bank_stats_get(bank_a, &ba);
    sona_bank_stats_get(bank_b, &bb);
    eng_inspect_bank_end(a);
    eng_inspect_bank_end(b);
    cr_assert_eq(memcmp(&ba, &bb, sizeof ba), 0, "%s: bank counters differ (extractions %" PRIu64 " vs %" PRIu64 ")",
                 what, ba.extractions, bb.extractions);
    sona_stats sa, sb;
    memset(&sa, 0, sizeof sa);
    memset(&sb, 0, sizeof sb);
    sona_get_stats(a, &sa);
    sona_get_stats(b, &sb);
    sa.last_loop_b_us = sb.last_loop_b_us = sa.last_loop_c_us = sb.last_loop_c_us = 0;
    cr_assert_eq(memcmp(&sa, &sb, sizeof sa), 0, "%s: engine counters differ", what);
    size_t na, nb;
    uint8_t *fa = save_bytes(a, &na), *fb = save_bytes(b, &nb);
    const char *const tags[] = {"STAT", "TENA", "BASE", "QUEU", "BANK", "DREA"};
    for (int t = 0; t < 6; t++) {
        size_t la, lb;
        const uint8_t *xa = section(fa, na, tags[t], &la), *xb = section(fb, nb, tags[t], &lb);
        cr_assert(la == lb && memcmp(xa, xb, la) == 0, "%s: %s differs", what, tags[t]);
    }
    free(fa);
    free(fb);
}

/* Engine a learns (loop B cycles around a loop C) and saves; b loads. Both then take the same
 * traffic and loop B cycles, and learn the same, bit for bit (expect_same_learning). k-means
 * is seeded with the bank's extraction count: a bank whose count restarted clusters otherwise.
 * Exact as long as every search here visits every node: b's HNSW graph is not a's (a load
 * re-inserts the patterns; a's grew by merges that moved centroids and was rebuilt by loop C),
 * so results must depend on the stored centroids alone, which a load restores bit for bit. That
 * holds while a graph has had at most 2M + 1 = 33 nodes since it was built (no level-0 link
 * list of 2M fills, so every node stays linked both ways and the graph connected; below
 * ef_search 50 the result set never fills, so the search explores the whole graph). A cycle
 * here adds a node per new pattern (a new topic, or a random trajectory no pattern accounts
 * for: four at most) and per merge that moves a centroid to a new node; the bank's noise rules
 * make that count depend on the data, so it is not bounded by construction: over 100 seeds the
 * engines ended with 11 to 21 patterns, far enough below. The second set of topics after the
 * load makes sure new patterns are created there too. */
Test(engine, a_loaded_engine_learns_exactly_as_the_saved_one)
{
    const uint64_t seed = test_seed();
    printf("[engine] restart, seed %" PRIu64 "\n", seed);
    sona_engine_config c = config(H, 1);
    c.clusters_per_cycle = 3;
    sona_engine *a = create(&c);
    int32_t t;
    cr_assert_eq(sona_tenant_create(a, &t), SONA_OK);
    sona_rng r;
    sona_rng_seed(&r, seed, 40);
    float topics[TOPICS * H];
    fill_uniform(&r, topics, TOPICS * H, -1.0f, 1.0f);
    learn_round(a, t, &r, topics);
    learn_round(a, t, &r, topics);
    cr_assert_eq(sona_deep_cycle(a), SONA_OK, "%s", sona_engine_last_error(a));
    learn_round(a, t, &r, topics);
    /* Loop C's rebuilt bank went on counting. */
    sona_bank_stats bs;
    bank_stats(a, &bs);
    cr_assert_eq(bs.extractions, 3, "the bank's extraction count restarted at loop C");
    const uint64_t created_before = bs.patterns_created;
    char *path = temp_path("restart.state");
    cr_assert_eq(sona_save(a, path), SONA_OK, "%s", sona_engine_last_error(a));
    sona_engine *b = create(&c);
    cr_assert_eq(sona_load(b, path), SONA_OK, "%s", sona_engine_last_error(b));
    expect_same_learning(a, b, "after the load");

    /* The same traffic to both: a round with new topics (new patterns), then the old ones. */
    sona_engine *both[2] = {a, b};
    float new_topics[TOPICS * H];
    fill_uniform(&r, new_topics, TOPICS * H, -1.0f, 1.0f);
    for (int i = 0; i < 2; i++) {
        sona_rng_seed(&r, seed, 41);
        learn_round(both[i], t, &r, new_topics);
        learn_round(both[i], t, &r, topics);
    }
    bank_stats(a, &bs);
    cr_assert_gt(bs.patterns_merged, 0, "the traffic should merge clusters into patterns");
    cr_assert_gt(bs.patterns_created, created_before, "the traffic should create patterns after the load");
    expect_same_learning(a, b, "after two more cycles");
    float x[H];
    fill_uniform(&r, x, H, -1.0f, 1.0f);
    expect_same_base(a, b, x, "after two more cycles");
    unlink(path);
    free(path);
    sona_engine_destroy(a);
    sona_engine_destroy(b);
}

/* The bank's counters, the dream visits and the EWC++ detectors, each with one value made
 * inconsistent (checksums fixed): refused with SONA_E_CORRUPT, saying why, the engine as it was. */
Test(engine, damaged_bank_dream_and_detector_values_are_refused_and_change_nothing)
{
    const uint64_t seed = test_seed();
    printf("[engine] seed %" PRIu64 "\n", seed);
    sona_engine *src = trained(seed), *e = trained(seed + 1);
    size_t n, bl, dl, basel;
    uint8_t *good = save_bytes(src, &n);
    const uint8_t *bank = section(good, n, "BANK", &bl), *dreams = section(good, n, "DREA", &dl);
    section(good, n, "BASE", &basel);
    uint64_t next_id, first_id;
    uint32_t visited;
    memcpy(&next_id, bank + bl - 8, 8);
    memcpy(&visited, dreams, 4);
    memcpy(&first_id, dreams + 4, 8);
    cr_assert_gt(visited, 1, "the trained engine should have dreamt over several patterns");
    const uint32_t zero32 = 0, twelve = 12;
    const uint64_t one = 1, zero64 = 0;
    const double negative = -1.0, nan = NAN;
    const float negative_f = -1.0f, half = 0.5f, two_f = 2.0f, three_quarters = 0.75f;
    const uint32_t regions = 3;
    const size_t tasks = eng_inspect_ewc_tasks(src, -1),
                 cells = 4 + 4 * (size_t)ENG_CELLS + tasks * (4 * (size_t)ENG_CELLS + 4);
    const size_t layers = sona_engine_get_config(src)->base_layers, rank = sona_engine_get_config(src)->base_rank,
                 code = 4 + 8 * layers + 8 * layers * rank * rank,
                 base_weights = layers * rank * sona_engine_get_config(src)->hidden;
    const double two = 2.0, two_to_the_40 = 0x1p40;
    cr_assert_geq(tasks, 1, "the trained engine's Base-LoRA should hold a task snapshot");
    const struct {
        const char *tag;
        size_t at;
        const void *value;
        size_t len;
        const char *why, *what;
    } cases[] = {
        {"BANK", 0, &twelve, 4, "bank counter", "a counter count of another version"},
        {"BANK", bl - 8, &one, 8, "next pattern id", "a next pattern id below the patterns'"},
        {"DREA", 4, &zero64, 8, "dream visit", "visits of pattern id 0"},
        {"DREA", 4, &next_id, 8, "dream visit", "visits of a pattern id not given out yet"},
        {"DREA", 12, &zero32, 4, "dream visit", "a count of no visits"},
        {"DREA", 16, &first_id, 8, "dream visit", "visits of one pattern twice"},
        /* BASE ends with the Base-LoRA's detector (u64 samples, f64 means and variance, u64
         * boundaries), its task-shift state (f32 mean, f32 variance, u32 count, f64 shortfall
         * sum, u32 count, f64 shift, u32 updates), its cells (u32 ENG_CELLS, the counts since
         * the last boundary, per task its distribution, then per task its weight: `cells`
         * bytes), the code covariance (u32 1, per layer f64 weight, per layer rank x rank f64:
         * `code` bytes), then u32 signals since the last apply and u32 0: no pending gradients. */
        {"BASE", basel - 84 - cells - code + 8, &nan, 8, "EWC++", "a NaN short mean"},
        {"BASE", basel - 84 - cells - code + 24, &negative, 8, "EWC++", "a negative variance"},
        {"BASE", basel - 40 - cells - code, &negative_f, 4, "EWC++", "a negative quality variance"},
        {"BASE", basel - 20 - cells - code, &nan, 8, "EWC++", "a NaN shift mean"},
        {"BASE", basel - 8 - cells - code, &twelve, 4, "EWC++", "another number of query cells"},
        {"BASE", basel - 8 - cells - code + 4, &negative_f, 4, "EWC++", "a negative cell count"},
        {"BASE", basel - 8 - cells - code + 4 + 4 * ENG_CELLS, &two_f, 4, "EWC++", "a task's cell share above 1"},
        {"BASE", basel - 8 - cells - code + 4 + 4 * ENG_CELLS, &three_quarters, 4, "EWC++",
         "a task's cells not summing to 1"},
        {"BASE", basel - 8 - code - 4 * tasks, &two_f, 4, "EWC++", "a task weight above 1"},
        {"BASE", basel - 8 - code, &twelve, 4, "code covariance", "a code record flag other than 0 or 1"},
        {"BASE", basel - 8 - code + 4, &two, 8, "code covariance", "a running-mean weight above 1"},
        {"BASE", basel - 8 - code + 4 + 8 * layers, &negative, 8, "code covariance", "a negative variance"},
        {"BASE", basel - 8 - code + 4 + 8 * layers + 8, &two_to_the_40, 8, "code covariance",
         "a covariance beyond its variances"},
        /* BASL: the engine-wide baseline (f32 mean, f32 variance, u32 count, f32 reward spread),
         * u32 regions, ... */
        {"BASL", 0, &half, 4, "does not match", "a baseline other than STAT's"},
        {"BASL", 4, &negative_f, 4, "baseline", "a negative baseline variance"},
        {"BASL", 12, &negative_f, 4, "baseline", "a negative reward spread"},
        {"BASL", 16, &regions, 4, "baseline", "another number of query regions"},
        {"BASE", basel - 4, &twelve, 4, "pending gradient", "a pending flag that is not 0 or 1"},
        /* BASE begins with A and Bt (2 x base_weights floats), then the EWC++ record's u32
         * present, u32 parameter count, u32 tasks. */
        {"BASE", 8 * base_weights + 8, &twelve, 4, "EWC++", "more task snapshots than max_tasks"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        size_t pl;
        const uint8_t *payload = section(good, n, cases[k].tag, &pl);
        uint8_t *patched = malloc(pl);
        memcpy(patched, payload, pl);
        memcpy(patched + cases[k].at, cases[k].value, cases[k].len);
        refused_with_section(e, good, n, cases[k].tag, patched, pl, cases[k].why, cases[k].what);
        free(patched);
    }
    refused_with_section(e, good, n, "BANK", bank, bl - 1, "bank counter", "a truncated bank counter section");
    refused_with_section(e, good, n, "DREA", NULL, 0, "missing", "a file without its dream visits");
    free(good);
    sona_engine_destroy(src);
    sona_engine_destroy(e);
}

/* sona_state_config gives back every field a file was saved with (all but state_path, which is
 * not saved), and an engine created from it loads the file: a tool or a fresh node needs no
 * other knowledge of the shape. Version 1 and 2 files carry the same CONF. */
Test(engine, the_saved_configuration_is_read_back)
{
    const uint64_t seed = test_seed();
    printf("[engine] seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 11);
    sona_engine_config want;
    sona_engine_config_default(&want, SONA_PRESET_MAX_QUALITY, 29);
    /* Every kind of field away from the preset: u32, int flags, the storage enum, floats. */
    want.seed = 0x123456789abcull ^ seed;
    want.micro_rank = 1;
    want.base_layers = 3;
    want.max_steps = 5 + sona_rng_below(&r, 7);
    want.background_thread = 0;
    want.ewc_enabled = 0;
    want.device_apply = 0;
    want.step_storage = SONA_STORAGE_F16;
    want.device_min_rows = 77;
    want.dream_temperature = 0.5f + 0.25f * sona_rng_uniform(&r); /* a float of no fixed value */
    want.importance_decay = 0.9f;
    want.dream_jump_prob = 0.25f;
    snprintf(want.state_path, sizeof want.state_path, "/nonexistent/dir/ckpt");
    sona_engine *e = create(&want);
    char *path = temp_path("config.state");
    cr_assert_eq(sona_save(e, path), SONA_OK, "%s", sona_engine_last_error(e));

    sona_engine_config got;
    memset(&got, 0xa5, sizeof got);
    cr_assert_eq(sona_state_config(path, &got), SONA_OK, "%s", sona_last_error());
#define SAME(f) cr_expect(memcmp(&got.f, &want.f, sizeof want.f) == 0, "field " #f " differs")
    SAME(hidden); SAME(seed); SAME(micro_rank); SAME(micro_alpha); SAME(micro_learning_rate);
    SAME(micro_apply_every); SAME(max_tenants); SAME(base_rank); SAME(base_layers); SAME(base_alpha);
    SAME(base_learning_rate); SAME(max_signal_weight); SAME(max_output_change); SAME(max_steps); SAME(buffer_capacity); SAME(step_storage);
    SAME(baseline_decay); SAME(background_thread); SAME(loop_b_threshold); SAME(loop_b_interval_ms);
    SAME(loop_b_min_batch); SAME(clusters_per_cycle); SAME(max_patterns); SAME(ewc_enabled); SAME(ewc_lambda);
    SAME(fisher_decay); SAME(max_tasks); SAME(task_shift_threshold); SAME(dreams_per_cycle);
    SAME(dream_length); SAME(dream_temperature); SAME(dream_jump_prob); SAME(dream_novelty_bonus);
    SAME(dream_replay_min_score); SAME(merge_cosine); SAME(importance_decay); SAME(loop_c_interval_ms);
    SAME(device_apply); SAME(device_min_rows);
#undef SAME
    cr_expect_str_eq(got.state_path, "", "state_path is not saved");
    sona_engine *f = create(&got);
    cr_expect_eq(sona_load(f, path), SONA_OK, "%s", sona_engine_last_error(f));
    sona_engine_destroy(f);

    /* Refused, *cfg untouched: a damaged file, a missing one, NULL. */
    size_t n;
    uint8_t *file = read_all(path, &n);
    file[44 + 30] ^= 1; /* 24-byte file header, 20-byte section header: inside CONF's payload */
    char *bad = temp_path("config-bad.state");
    FILE *out = fopen(bad, "wb");
    cr_assert_not_null(out);
    cr_assert_eq(fwrite(file, 1, n, out), n);
    fclose(out);
    sona_engine_config untouched = got;
    cr_expect_eq(sona_state_config(bad, &got), SONA_E_CORRUPT);
    cr_expect(strstr(sona_last_error(), "sona_state_config") != NULL, "%s", sona_last_error());
    cr_expect_eq(sona_state_config("/nonexistent/state", &got), SONA_E_IO);
    cr_expect_eq(sona_state_config(NULL, &got), SONA_E_NULL);
    cr_expect_eq(sona_state_config(path, NULL), SONA_E_NULL);
    cr_expect_eq(memcmp(&got, &untouched, sizeof got), 0, "a refused call changed *cfg");
    unlink(bad);
    unlink(path);
    free(bad);
    free(path);
    free(file);
    sona_engine_destroy(e);

    /* The version fixtures were written by older code: their CONF reads too. */
    cr_expect_eq(sona_state_config(SONA_TEST_DATA_DIR "/state_v1.sona", &got), SONA_OK, "%s", sona_last_error());
    cr_expect_eq(sona_state_config(SONA_TEST_DATA_DIR "/state_v2.sona", &got), SONA_OK, "%s", sona_last_error());
}

/* Loop A's state between applies survives a load. With micro_apply_every 4, an engine saved two
 * signals after an apply, and the engine that loads it, take two more signals alike: both apply
 * at the fourth, to bit-identical weights (before, the loaded engine had lost the two pending
 * gradients and its count, so it applied later and without them). Damaged pending records are
 * refused. */
Test(engine, pending_micro_gradients_survive_a_load)
{
    const uint64_t seed = test_seed();
    printf("[engine] seed %" PRIu64 "\n", seed);
    sona_engine_config c = config(H, 1);
    c.micro_apply_every = 4;
    sona_engine *a = create(&c), *b = create(&c);
    sona_rng r;
    sona_rng_seed(&r, seed, 21);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(request(a, 0, &r, 2, (float)(i % 3) * 0.4f), SONA_OK);
    size_t n;
    uint8_t *file = save_bytes(a, &n);
    cr_assert_eq(sona_load_buffer(b, file, n), SONA_OK, "%s", sona_engine_last_error(b));
    sona_rng ra = r, rb = r;
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(request(a, 0, &ra, 2, 0.9f), SONA_OK);
        cr_assert_eq(request(b, 0, &rb, 2, 0.9f), SONA_OK);
    }
    sona_stats sa, sb;
    sona_get_stats(a, &sa);
    sona_get_stats(b, &sb);
    cr_expect_eq(sa.micro_updates, 2, "applies at signals 4 and 8");
    cr_expect_eq(sb.micro_updates, sa.micro_updates);
    float x[H], ya[H], yb[H];
    fill_uniform(&r, x, H, -1.0f, 1.0f);
    cr_assert_eq(sona_apply(a, 0, x, ya), SONA_OK);
    cr_assert_eq(sona_apply(b, 0, x, yb), SONA_OK);
    cr_expect_eq(memcmp(ya, yb, sizeof ya), 0, "the loaded engine's tenant learned otherwise");

    /* TENA of the saved file: u32 count, then tenant 0: u32 id, A and Bt, its EWC++ record,
     * u32 since_apply 2, u32 1, the pending count, gradients. Patched at the end, from there. */
    size_t tl;
    const uint8_t *tena = section(file, n, "TENA", &tl);
    const size_t g_floats = 2 * (size_t)c.micro_rank * H, pending_at = tl - g_floats * 4 - 4;
    uint32_t since, flag, count;
    memcpy(&since, tena + pending_at - 8, 4);
    memcpy(&flag, tena + pending_at - 4, 4);
    memcpy(&count, tena + pending_at, 4);
    cr_assert(since == 2 && flag == 1 && count == 2, "TENA ends with since_apply %u, flag %u, count %u", since,
              flag, count);
    const uint32_t zero = 0, two = 2;
    const float nan = NAN;
    const struct {
        size_t at;
        const void *value;
        const char *what;
    } cases[] = {{pending_at - 4, &two, "a pending flag of 2"},
                 {pending_at, &zero, "pending gradients without signals"},
                 {tl - 4, &nan, "a NaN pending gradient"}};
    uint8_t *patched = malloc(tl);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        memcpy(patched, tena, tl);
        memcpy(patched + cases[k].at, cases[k].value, 4);
        refused_with_section(b, file, n, "TENA", patched, tl, "pending", cases[k].what);
    }
    free(patched);
    free(file);
    sona_engine_destroy(a);
    sona_engine_destroy(b);
}

/* One request of `steps` steps at layers layer, layer + 1, layer, ..., rewards varying across
 * steps; with_attention: 64 random attention weights on every step (drawn either way, so that
 * the same r gives the same activations with or without them). */
static void request_at_layer(sona_engine *e, sona_rng *r, uint32_t layer, uint32_t steps, int with_attention)
{
    float x[H], a[H], att[64];
    fill_uniform(r, x, H, -1.0f, 1.0f);
    sona_request *req;
    cr_assert_eq(sona_request_begin(e, 0, x, &req), SONA_OK, "%s", sona_engine_last_error(e));
    for (uint32_t s = 0; s < steps; s++) {
        fill_uniform(r, a, H, -1.0f, 1.0f);
        fill_uniform(r, att, 64, -1.0f, 1.0f);
        const uint32_t n_attention = with_attention ? 64 : 0;
        cr_assert_eq(sona_request_step(req, layer + s % 2, a, n_attention ? att : NULL, n_attention, 0.2f * (float)s),
                     SONA_OK, "%s", sona_engine_last_error(e));
    }
    cr_assert_eq(sona_request_end(req, 0.25f * (float)(steps % 4)), SONA_OK, "%s", sona_engine_last_error(e));
}

/* Steps of a layer Base-LoRA does not adapt (layer >= base_layers, engine.h) are accepted and
 * feed loop A and the pattern bank; Base-LoRA learns nothing from them (no update, every layer
 * still the identity), while the same traffic at its own layers trains it. */
Test(engine, steps_past_base_layers_feed_loop_a_and_the_bank_only)
{
    sona_rng r;
    sona_rng_seed(&r, 31, 0);
    sona_engine *e = make(H, 0);
    const uint32_t L = sona_engine_get_config(e)->base_layers;
    for (int i = 0; i < 20; i++)
        request_at_layer(e, &r, L + 4 * (uint32_t)(i % 3), 3, 0);
    sona_stats s;
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.trajectories_recorded, 20);
    cr_assert_eq(s.signals_accepted, 20, "loop A learns from every step, whatever its layer");
    cr_assert_eq(s.micro_updates, 20);
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.trajectories_processed, 20);
    cr_assert_gt(s.patterns, 0, "the pattern bank learns from them");
    cr_assert_eq(s.base_updates, 0, "Base-LoRA has no adapter for those layers");
    float x[H], y[H];
    fill_uniform(&r, x, H, -1.0f, 1.0f);
    for (uint32_t l = 0; l < L; l++) {
        cr_assert_eq(sona_apply_layer(e, l, x, y), SONA_OK);
        cr_assert_eq(memcmp(x, y, sizeof y), 0, "layer %u is no longer the identity", l);
    }
    /* The same traffic at the adapted layers does train Base-LoRA. */
    for (int i = 0; i < 20; i++)
        request_at_layer(e, &r, (uint32_t)i % (L - 1), 3, 0); /* layers i % (L - 1) and the next */
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.base_updates, 1);
    sona_engine_destroy(e);
}

/* Attention weights are checked and then forgotten: two engines given the same requests, one
 * with attention weights on every step and one without, learn exactly the same (Micro-LoRA,
 * Base-LoRA, patterns, counters). */
Test(engine, attention_weights_are_not_learned_from)
{
    sona_engine *with = make(H, 1), *without = make(H, 1);
    sona_rng rw, ro;
    sona_rng_seed(&rw, 41, 0);
    sona_rng_seed(&ro, 41, 0);
    for (int i = 0; i < 40; i++) {
        request_at_layer(with, &rw, (uint32_t)i % 2, 1 + (uint32_t)i % 4, 1);
        request_at_layer(without, &ro, (uint32_t)i % 2, 1 + (uint32_t)i % 4, 0);
    }
    cr_assert_eq(sona_force_learn(with), SONA_OK, "%s", sona_engine_last_error(with));
    cr_assert_eq(sona_force_learn(without), SONA_OK, "%s", sona_engine_last_error(without));
    sona_stats a, b;
    cr_assert_eq(sona_get_stats(with, &a), SONA_OK);
    cr_assert_eq(sona_get_stats(without, &b), SONA_OK);
    a.last_loop_b_us = b.last_loop_b_us = 0;
    cr_assert_eq(memcmp(&a, &b, sizeof a), 0, "the counters differ");
    cr_assert_gt(a.base_updates, 0);
    float x[H], ya[H], yb[H];
    sona_rng r;
    sona_rng_seed(&r, 42, 0);
    fill_uniform(&r, x, H, -1.0f, 1.0f);
    cr_assert_eq(sona_apply(with, 0, x, ya), SONA_OK);
    cr_assert_eq(sona_apply(without, 0, x, yb), SONA_OK);
    cr_assert_eq(memcmp(ya, yb, sizeof ya), 0, "Micro-LoRA learned from the attention weights");
    for (uint32_t l = 0; l < sona_engine_get_config(with)->base_layers; l++) {
        cr_assert_eq(sona_apply_layer(with, l, x, ya), SONA_OK);
        cr_assert_eq(sona_apply_layer(without, l, x, yb), SONA_OK);
        cr_assert_eq(memcmp(ya, yb, sizeof ya), 0, "Base-LoRA layer %u learned from the attention weights", l);
    }
    sona_pattern_hit ha[4], hb[4];
    uint32_t fa, fb;
    cr_assert_eq(sona_find_patterns(with, x, 4, ha, &fa), SONA_OK);
    cr_assert_eq(sona_find_patterns(without, x, 4, hb, &fb), SONA_OK);
    cr_assert(fa == fb && fa > 0, "found %u and %u patterns", fa, fb);
    for (uint32_t i = 0; i < fa; i++)
        cr_assert(ha[i].id == hb[i].id && ha[i].similarity == hb[i].similarity &&
                      ha[i].avg_quality == hb[i].avg_quality && ha[i].size == hb[i].size,
                  "pattern %u differs", i);
    sona_engine_destroy(with);
    sona_engine_destroy(without);
}

/* stats.tasks and task_boundaries cover the same adapter sets: Base-LoRA and every tenant.
 * Loop C stores a task for each set; tasks is their sum over the live ones, and a removed
 * tenant's go with it. */
Test(engine, tasks_cover_base_lora_and_every_tenant)
{
    sona_rng r;
    sona_rng_seed(&r, 51, 0);
    sona_engine *e = make(H, 1);
    int32_t t1;
    cr_assert_eq(sona_tenant_create(e, &t1), SONA_OK);
    for (int i = 0; i < 12; i++) {
        cr_assert_eq(request(e, 0, &r, 2, 0.1f * (float)(i % 7)), SONA_OK);
        cr_assert_eq(request(e, t1, &r, 2, 0.1f * (float)(i % 5)), SONA_OK);
    }
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
    sona_stats s;
    for (int cycle = 1; cycle <= 2; cycle++) {
        cr_assert_eq(sona_deep_cycle(e), SONA_OK, "%s", sona_engine_last_error(e));
        cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
        const uint32_t base = eng_inspect_ewc_tasks(e, -1), micro0 = eng_inspect_ewc_tasks(e, 0),
                       micro1 = eng_inspect_ewc_tasks(e, t1);
        cr_assert(base >= (uint32_t)cycle && micro0 >= (uint32_t)cycle && micro1 >= (uint32_t)cycle,
                  "loop C stores a task per set: %u %u %u", base, micro0, micro1);
        cr_assert_eq(s.tasks, (uint64_t)base + micro0 + micro1, "tasks %" PRIu64 " != %u + %u + %u", s.tasks,
                     base, micro0, micro1);
    }
    const uint32_t gone = eng_inspect_ewc_tasks(e, t1);
    const uint64_t before = s.tasks;
    cr_assert_eq(sona_tenant_remove(e, t1), SONA_OK);
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.tasks, before - gone, "a removed tenant's tasks still counted");
    int32_t t2;
    cr_assert_eq(sona_tenant_create(e, &t2), SONA_OK);
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.tasks, before - gone, "a new tenant holds no task");
    /* A save and load keeps the sum. */
    char path[64];
    snprintf(path, sizeof path, "/tmp/sona_tasks_%ld.state", (long)getpid());
    cr_assert_eq(sona_save(e, path), SONA_OK, "%s", sona_engine_last_error(e));
    sona_engine *f = make(H, 1);
    cr_assert_eq(sona_load(f, path), SONA_OK, "%s", sona_engine_last_error(f));
    sona_stats sf;
    cr_assert_eq(sona_get_stats(f, &sf), SONA_OK);
    cr_assert_eq(sf.tasks, s.tasks);
    cr_assert_eq(sf.task_boundaries, s.task_boundaries);
    unlink(path);
    sona_engine_destroy(f);
    sona_engine_destroy(e);
}
