/* Engine API: presets, tenants, apply forms, request recording and counters, loop B keeping
 * short batches queued, persistence (round trip to identical bytes, refusal of bad files with
 * the engine untouched). */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/rng.h"
#include "core/serial.h"
#include "support/op_cases.h"
#include "support/synth_task.h"
#include <sona.h>

enum { H = 37 };

static sona_engine *make(uint32_t hidden, int ewc)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, hidden);
    c.background_thread = 0;
    c.loop_b_threshold = 1u << 30;
    c.loop_b_min_batch = 8;
    c.clusters_per_cycle = 4;
    c.base_layers = 3;
    c.ewc_enabled = ewc;
    c.micro_learning_rate = 0.4f;
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_OK, "%s", sona_last_error());
    return e;
}

static void fill(sona_rng *r, float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        v[i] = 2.0f * sona_rng_uniform(r) - 1.0f;
}

/* One request with `steps` steps (layers 0..), rewards varying, quality q. */
static sona_status request(sona_engine *e, int32_t tenant, sona_rng *r, uint32_t steps, float q)
{
    float x[H], a[H];
    fill(r, x, H);
    sona_request *req;
    sona_status st = sona_request_begin(e, tenant, x, &req);
    if (st != SONA_OK)
        return st;
    for (uint32_t s = 0; s < steps; s++) {
        fill(r, a, H);
        cr_assert_eq(sona_request_step(req, s % 4, a, NULL, 0, 0.1f * (float)s), SONA_OK);
    }
    return sona_request_end(req, q);
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
    const uint64_t seed = op_test_seed();
    printf("[engine] seed %" PRIu64 "\n", seed);
    sona_rng r;
    sona_rng_seed(&r, seed, 0);
    sona_engine *e = make(H, 1);
    int32_t t1, t2;
    cr_assert_eq(sona_tenant_create(e, &t1), SONA_OK);
    cr_assert_eq(sona_tenant_create(e, &t2), SONA_OK);
    cr_assert_neq(t1, t2);
    float x[3 * H], y[3 * H], z[H];
    fill(&r, x, 3 * H);
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
    sona_engine *e = make(H, 0);
    for (int i = 0; i < 30; i++)
        cr_assert_eq(request(e, 0, &r, 1 + i % 3, 0.5f + 0.01f * (float)i), SONA_OK);
    cr_assert_eq(request(e, 0, &r, 0, 0.5f), SONA_OK); /* no step: recorded, no signal */
    float x[H], y[H];
    fill(&r, x, H);
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
    /* Loop B takes everything queued; a short queue stays queued. */
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.trajectories_processed, 31);
    cr_assert_eq(s.trajectories_queued, 0);
    cr_assert_eq(s.loop_b_cycles, 1);
    cr_assert_eq(s.base_updates, 1);
    cr_assert_gt(s.patterns, 0);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(request(e, 0, &r, 2, 0.3f), SONA_OK);
    cr_assert_eq(sona_force_learn(e), SONA_E_EMPTY);
    cr_assert_eq(sona_tick(e), SONA_OK);
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.trajectories_queued, 5, "short batches stay queued");
    cr_assert_eq(s.trajectories_processed, 31);
    /* Patterns are found again. */
    sona_pattern_hit hits[4];
    uint32_t found = 0;
    cr_assert_eq(sona_find_patterns(e, x, 4, hits, &found), SONA_OK);
    cr_assert_gt(found, 0);
    for (uint32_t i = 1; i < found; i++)
        cr_assert_geq(hits[i - 1].similarity, hits[i].similarity);
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
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*len ? *len : 1);
    cr_assert_eq(fread(b, 1, *len, f), *len);
    fclose(f);
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
        cr_assert_eq(request(e, i % 2 ? t : 0, &r, 3, (float)(i % 5) * 0.2f), SONA_OK);
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
    cr_assert_eq(sona_deep_cycle(e), SONA_OK, "%s", sona_engine_last_error(e));
    for (int i = 0; i < 20; i++)
        cr_assert_eq(request(e, 0, &r, 2, 0.7f), SONA_OK);
    return e;
}

Test(engine, save_load_save_gives_identical_bytes)
{
    const uint64_t seed = op_test_seed();
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
    fill(&r, x, H);
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
    cr_assert_eq(after.patterns, before.patterns);
    cr_assert_eq(after.tasks, before.tasks);
    cr_assert_eq(after.signals_accepted, before.signals_accepted);
    cr_assert_eq(after.tenants, 2);
    cr_assert_eq(after.quality_baseline, before.quality_baseline);
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

Test(engine, bad_files_are_refused_and_change_nothing)
{
    const uint64_t seed = op_test_seed();
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
    bad[8] = 2; /* format version 2, with the header CRC fixed so only the version is wrong */
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
