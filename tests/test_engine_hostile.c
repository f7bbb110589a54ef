/* SPDX-License-Identifier: MIT */
/* Hostile values (issue #20): finite extremes in live traffic and in state files.
 * Live: a stream of each kind of out-of-range value on one tenant is refused call by call and
 * counted (inputs_out_of_range), and leaves learning as it was: afterwards ordinary traffic
 * (tests/support/synth_task.h) still raises both tenants' scores, loop B still steps the
 * Base-LoRA, the engine-wide baseline is still the ordinary qualities', and save/load still
 * round-trips. Streams at the very edge of the ranges (accepted) must not stop learning either.
 * Files: a good file with one value made hostile (weights, Fisher, baselines, pattern fields,
 * ids) is refused and changes nothing; a file whose shape names far more adapter bytes than it
 * holds is refused by sona_state_config before anything of that size exists. Every random test
 * prints its seed (SONA_TEST_SEED replays it). */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/serial.h"
#include "engine/inspect.h"
#include "support/fill.h"
#include "support/synth_task.h"

enum { HIDDEN = 64, CLUSTERS = 3, EVAL_STREAM = 100, HOSTILE_REQUESTS = 5, HOSTILE_STEPS = 12 };

/* The reproduction: the default preset at hidden 64, background thread off. */
static sona_engine *make_engine(uint64_t seed)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, HIDDEN);
    c.seed = seed;
    c.background_thread = 0;
    c.device_apply = 0;
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_OK, "%s", sona_last_error());
    return e;
}

static double evaluate(const synth_task *t, sona_engine *e, int32_t tenant, uint64_t seed)
{
    return synth_task_score(t, e, tenant, seed, EVAL_STREAM);
}

typedef enum hostile_kind {
    ACTS_1E30,     /* activations +-1e30: refused */
    ACTS_1E9,      /* every activation 1e9: refused */
    REWARD_3E38,   /* step rewards +-3e38: refused */
    QUALITY_3E38,  /* final qualities +-3e38: refused */
    QUERY_1E30,    /* the query +-1e30: refused at begin */
    AT_THE_BOUNDS, /* activations, rewards and qualities at +-the bounds: accepted */
    TINY_QUERY,    /* a query of 1e-30 values, ordinary activations: accepted */
    KINDS
} hostile_kind;

static const char *const kind_name[KINDS] = {"activations 1e30", "activations 1e9", "rewards 3e38",
                                             "qualities 3e38",  "queries 1e30",    "at the bounds",
                                             "tiny queries"};

/* One hostile request of tenant; returns the out-of-range refusals it caused (each checked);
 * an accepted request whose update was refused anyway counts in *updates_refused. */
static uint64_t hostile_request(sona_engine *e, int32_t tenant, hostile_kind k, sona_rng *r, uint64_t *updates_refused)
{
    float q[HIDDEN], a[HIDDEN];
    for (int h = 0; h < HIDDEN; h++) {
        const float sign = sona_rng_uniform(r) < 0.5f ? -1.0f : 1.0f;
        q[h] = k == QUERY_1E30      ? sign * 1e30f
               : k == AT_THE_BOUNDS ? sign * SONA_MAX_ACTIVATION
               : k == TINY_QUERY    ? sign * 1e-30f
                                    : sona_rng_normal(r);
    }
    sona_request *req = NULL;
    sona_status st = sona_request_begin(e, tenant, q, &req);
    if (k == QUERY_1E30) {
        cr_assert_eq(st, SONA_E_INVALID, "a query of 1e30 was not refused: %s", sona_status_str(st));
        cr_assert(strstr(sona_engine_last_error(e), "SONA_MAX_ACTIVATION"), "%s", sona_engine_last_error(e));
        cr_assert_null(req);
        return 1;
    }
    cr_assert_eq(st, SONA_OK, "%s", sona_engine_last_error(e));
    uint64_t refused = 0;
    for (uint32_t s = 0; s < HOSTILE_STEPS; s++) {
        float reward = sona_rng_uniform(r);
        for (int h = 0; h < HIDDEN; h++) {
            const float sign = sona_rng_uniform(r) < 0.5f ? -1.0f : 1.0f;
            a[h] = k == ACTS_1E30 ? sign * 1e30f : k == ACTS_1E9 ? 1e9f
                   : k == AT_THE_BOUNDS ? sign * SONA_MAX_ACTIVATION : sona_rng_normal(r);
        }
        if (k == REWARD_3E38)
            reward = s % 2 ? 3e38f : -3e38f;
        else if (k == AT_THE_BOUNDS)
            reward = s % 2 ? SONA_MAX_QUALITY : -SONA_MAX_QUALITY;
        st = sona_request_step(req, s % 4, a, NULL, 0, reward);
        if (k == ACTS_1E30 || k == ACTS_1E9 || k == REWARD_3E38) {
            cr_assert_eq(st, SONA_E_INVALID, "%s: step %u not refused", kind_name[k], s);
            refused++;
        } else {
            cr_assert_eq(st, SONA_OK, "%s: %s", kind_name[k], sona_engine_last_error(e));
        }
    }
    const float quality = k == QUALITY_3E38    ? (sona_rng_uniform(r) < 0.5f ? 3e38f : -3e38f)
                          : k == AT_THE_BOUNDS ? (sona_rng_uniform(r) < 0.5f ? SONA_MAX_QUALITY : -SONA_MAX_QUALITY)
                                               : sona_rng_uniform(r);
    st = sona_request_end(req, quality);
    if (k == QUALITY_3E38) {
        cr_assert_eq(st, SONA_E_INVALID, "a quality of 3e38 was not refused");
        refused++;
    } else if (refused) {
        cr_assert_eq(st, SONA_E_INVALID, "%s: the end of a refused request was not refused", kind_name[k]);
    }
    /* Accepted kinds: learned from, or their update refused (and dropped); either way no crash,
     * and what follows must learn. */
    if (!refused && st != SONA_OK)
        *updates_refused += 1;
    return refused;
}

/* Outputs of both tenants and every Base-LoRA layer on a fixed probe. */
static void outputs(sona_engine *e, float *out /* (2 + layers) x HIDDEN */)
{
    float probe[HIDDEN];
    for (int h = 0; h < HIDDEN; h++)
        probe[h] = (float)((h * 7) % 11) / 11.0f - 0.5f;
    const uint32_t L = sona_engine_get_config(e)->base_layers;
    cr_assert_eq(sona_apply(e, 0, probe, out), SONA_OK);
    cr_assert_eq(sona_apply(e, 1, probe, out + HIDDEN), SONA_OK);
    for (uint32_t l = 0; l < L; l++)
        cr_assert_eq(sona_apply_layer(e, l, probe, out + (2 + l) * HIDDEN), SONA_OK);
    for (size_t i = 0; i < (2 + L) * (size_t)HIDDEN; i++)
        cr_assert(isfinite(out[i]), "a non-finite output");
}

static void hostile_then_ordinary(hostile_kind k)
{
    const uint64_t seed = test_seed();
    printf("[engine_hostile] %s: seed %" PRIu64 "\n", kind_name[k], seed);
    synth_task t0, t1;
    cr_assert_eq(synth_task_init(&t0, HIDDEN, CLUSTERS, seed, 0), 0);
    cr_assert_eq(synth_task_init(&t1, HIDDEN, CLUSTERS, seed, 1), 0);
    sona_engine *e = make_engine(seed);
    int32_t tenant;
    cr_assert_eq(sona_tenant_create(e, &tenant), SONA_OK);
    cr_assert_eq(tenant, 1);
    sona_rng r;
    sona_rng_seed(&r, seed, 1);
    /* Some ordinary traffic first, so that baselines and Base-LoRA have a history. */
    synth_task_run(&t0, e, 0, 100, &r, 1);
    synth_task_run(&t1, e, 1, 100, &r, 1);
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
    sona_stats before;
    cr_assert_eq(sona_get_stats(e, &before), SONA_OK);

    /* The hostile stream, on tenant 1 only; then whatever it queued goes through loop B. */
    uint64_t refused = 0, updates_refused = 0;
    for (int i = 0; i < HOSTILE_REQUESTS; i++)
        refused += hostile_request(e, 1, k, &r, &updates_refused);
    /* At the bounds loop B's update may be refused: dropped, not kept (printed below). */
    const sona_status cycle = sona_force_learn(e);
    (void)sona_flush(e);
    sona_stats mid;
    cr_assert_eq(sona_get_stats(e, &mid), SONA_OK);
    cr_assert_eq(mid.inputs_out_of_range - before.inputs_out_of_range, refused, "%s: %" PRIu64 " refusals counted, %" PRIu64 " made",
                 kind_name[k], mid.inputs_out_of_range - before.inputs_out_of_range, refused);
    if (k != QUERY_1E30 && k != AT_THE_BOUNDS && k != TINY_QUERY) {
        cr_assert_eq(mid.signals_rejected - before.signals_rejected, HOSTILE_REQUESTS);
        cr_assert_eq(mid.trajectories_recorded, before.trajectories_recorded, "a refused request was queued");
    }

    /* Ordinary traffic learns again, on both tenants and in Base-LoRA. */
    const double b0 = evaluate(&t0, e, 0, seed), b1 = evaluate(&t1, e, 1, seed + 1);
    float out_before[14 * HIDDEN], out_after[14 * HIDDEN];
    outputs(e, out_before);
    synth_task_run(&t0, e, 0, 600, &r, 1);
    synth_task_run(&t1, e, 1, 600, &r, 1);
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s: loop B after the stream: %s", kind_name[k],
                 sona_engine_last_error(e));
    const double g0 = evaluate(&t0, e, 0, seed) - b0, g1 = evaluate(&t1, e, 1, seed + 1) - b1;
    sona_stats after;
    cr_assert_eq(sona_get_stats(e, &after), SONA_OK);
    printf("[engine_hostile] %s: %" PRIu64 " refused, %" PRIu64 " updates refused, loop B on it: %s; then tenant 0 gained %.3f, tenant 1 %.3f, base updates %" PRIu64
           " -> %" PRIu64 ", baseline %.3f\n",
           kind_name[k], refused, updates_refused, sona_status_str(cycle), g0, g1, mid.base_updates, after.base_updates, (double)after.quality_baseline);
    cr_assert_gt(g0, 0.05, "%s: tenant 0 gained only %.3f", kind_name[k], g0);
    cr_assert_gt(g1, 0.05, "%s: tenant 1 (the hostile one) gained only %.3f", kind_name[k], g1);
    cr_assert_gt(after.base_updates, mid.base_updates, "%s: Base-LoRA did not step again", kind_name[k]);
    outputs(e, out_after);
    const uint32_t L = sona_engine_get_config(e)->base_layers;
    cr_assert_neq(memcmp(out_before + 2 * HIDDEN, out_after + 2 * HIDDEN, L * HIDDEN * sizeof(float)), 0,
                  "%s: Base-LoRA's outputs did not change", kind_name[k]);
    /* The engine-wide baseline is the ordinary qualities' (in [0, 1]); 1200 of them at decay
     * 0.95 have long washed out the accepted edge values too. */
    cr_assert(after.quality_baseline >= 0.0f && after.quality_baseline <= 1.0f, "%s: baseline %g", kind_name[k],
              (double)after.quality_baseline);

    /* Save/load round-trips: a fresh engine loads the file and answers the same. */
    char path[64];
    snprintf(path, sizeof path, "/tmp/sona_hostile_%ld_%d.state", (long)getpid(), (int)k);
    cr_assert_eq(sona_save(e, path), SONA_OK, "%s", sona_engine_last_error(e));
    sona_engine *f = make_engine(seed);
    cr_assert_eq(sona_tenant_create(f, &tenant), SONA_OK);
    cr_assert_eq(sona_load(f, path), SONA_OK, "%s: the saved file does not load: %s", kind_name[k],
                 sona_engine_last_error(f));
    float out_loaded[14 * HIDDEN];
    outputs(f, out_loaded);
    cr_assert_eq(memcmp(out_after, out_loaded, (2 + L) * HIDDEN * sizeof(float)), 0, "%s: the loaded engine differs",
                 kind_name[k]);
    /* ...and keeps working. */
    synth_task_run(&t0, f, 0, 50, &r, 1);
    cr_assert_eq(sona_force_learn(f), SONA_OK, "%s", sona_engine_last_error(f));
    unlink(path);
    sona_engine_destroy(f);
    sona_engine_destroy(e);
    synth_task_free(&t0);
    synth_task_free(&t1);
}

Test(engine_hostile, activations_1e30_then_ordinary_traffic_learns) { hostile_then_ordinary(ACTS_1E30); }
Test(engine_hostile, activations_1e9_then_ordinary_traffic_learns) { hostile_then_ordinary(ACTS_1E9); }
Test(engine_hostile, rewards_3e38_then_ordinary_traffic_learns) { hostile_then_ordinary(REWARD_3E38); }
Test(engine_hostile, qualities_3e38_then_ordinary_traffic_learns) { hostile_then_ordinary(QUALITY_3E38); }
Test(engine_hostile, queries_1e30_then_ordinary_traffic_learns) { hostile_then_ordinary(QUERY_1E30); }
Test(engine_hostile, values_at_the_bounds_then_ordinary_traffic_learns) { hostile_then_ordinary(AT_THE_BOUNDS); }
Test(engine_hostile, tiny_queries_then_ordinary_traffic_learns) { hostile_then_ordinary(TINY_QUERY); }

/* ---- state files --------------------------------------------------------------------------------- */

enum { FH = 16 }; /* the width of the file tests' engines: small files */

static sona_engine *file_engine(void)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, FH);
    c.background_thread = 0;
    c.device_apply = 0;
    c.base_layers = 2;
    c.max_tenants = 4;
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_OK, "%s", sona_last_error());
    return e;
}

/* A trained engine (adapters, EWC++ with a task, patterns, baselines, a critic) saved into *len
 * bytes. */
static uint8_t *good_file(uint64_t seed, const char *path, size_t *len)
{
    sona_engine *e = file_engine();
    sona_rng r;
    sona_rng_seed(&r, seed, 2);
    float x[FH], a[FH];
    for (int i = 0; i < 120; i++) {
        for (int h = 0; h < FH; h++)
            x[h] = sona_rng_normal(&r);
        sona_request *q;
        cr_assert_eq(sona_request_begin(e, 0, x, &q), SONA_OK);
        const float quality = sona_rng_uniform(&r);
        for (uint32_t s = 0; s < 3; s++) {
            for (int h = 0; h < FH; h++)
                a[h] = x[h] + 0.3f * sona_rng_normal(&r);
            /* Every fourth request quality-only (its steps rewarded alike): tenant 0 has a critic. */
            const float reward = i % 4 == 3 ? quality : sona_rng_uniform(&r);
            cr_assert_eq(sona_request_step(q, s % 2, a, NULL, 0, reward), SONA_OK);
        }
        cr_assert_eq(sona_request_end(q, quality), SONA_OK, "%s", sona_engine_last_error(e));
        if (i == 59)
            cr_assert_eq(sona_deep_cycle(e), SONA_OK, "%s", sona_engine_last_error(e));
    }
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
    cr_assert_eq(sona_save(e, path), SONA_OK, "%s", sona_engine_last_error(e));
    sona_engine_destroy(e);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*len);
    cr_assert_eq(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

/* The payload offset of section tag (persist.c's layout: 24-byte header, 20-byte section heads). */
static size_t payload_at(const uint8_t *file, size_t n, const char tag[4], uint64_t *plen)
{
    for (size_t pos = 24; pos + 20 <= n;) {
        memcpy(plen, file + pos + 8, 8);
        if (memcmp(file + pos, tag, 4) == 0)
            return pos + 20;
        pos += 20 + *plen;
    }
    cr_assert_fail("no %.4s section", tag);
    return 0;
}

/* A copy of file with len bytes at offset `at` of section tag's payload replaced by v, the
 * section's checksum fixed (only the checks behind the checksum see it). */
static uint8_t *patched(const uint8_t *file, size_t n, const char tag[4], size_t at, const void *v, size_t len)
{
    uint64_t plen;
    const size_t p = payload_at(file, n, tag, &plen);
    cr_assert_leq(at + len, plen, "patch beyond %.4s", tag);
    uint8_t *out = malloc(n);
    memcpy(out, file, n);
    memcpy(out + p + at, v, len);
    const uint32_t crc = sona_crc32(0, out + p, plen);
    memcpy(out + p - 4, &crc, 4);
    return out;
}

static void probe_outputs(sona_engine *e, float out[3 * FH])
{
    float probe[FH];
    for (int h = 0; h < FH; h++)
        probe[h] = (float)(h % 5) - 2.0f;
    cr_assert_eq(sona_apply(e, 0, probe, out), SONA_OK);
    cr_assert_eq(sona_apply_layer(e, 0, probe, out + FH), SONA_OK);
    cr_assert_eq(sona_apply_layer(e, 1, probe, out + 2 * FH), SONA_OK);
}

/* bad is refused with SONA_E_CORRUPT, for `why`, and e answers as before. */
static void refused_for(sona_engine *e, const uint8_t *bad, size_t n, const char *why, const char *what)
{
    float before[3 * FH], after[3 * FH];
    probe_outputs(e, before);
    const sona_status st = sona_load_buffer(e, bad, n);
    cr_assert_eq(st, SONA_E_CORRUPT, "%s: %s (%s)", what, sona_status_str(st), sona_engine_last_error(e));
    cr_assert(strstr(sona_engine_last_error(e), why), "%s: refused for another reason: %s", what,
              sona_engine_last_error(e));
    probe_outputs(e, after);
    cr_assert_eq(memcmp(before, after, sizeof before), 0, "%s: the refused load changed the engine", what);
}

Test(engine_hostile, finite_but_hostile_file_values_are_refused)
{
    const uint64_t seed = test_seed();
    printf("[engine_hostile] files: seed %" PRIu64 "\n", seed);
    char path[64];
    snprintf(path, sizeof path, "/tmp/sona_hostile_file_%ld.state", (long)getpid());
    size_t n;
    uint8_t *good = good_file(seed, path, &n);
    unlink(path);
    sona_engine *e = file_engine();
    cr_assert_eq(sona_load_buffer(e, good, n), SONA_OK, "the good file: %s", sona_engine_last_error(e));
    const sona_engine_config *c = sona_engine_get_config(e);
    const size_t base_n = (size_t)c->base_layers * c->base_rank * FH; /* floats of A (and of Bt) */
    const float huge = 1e30f, big = 3e38f, neg = -1.0f;
    const uint64_t last_id = UINT64_MAX;
    /* BASE: A, Bt, then the EWC++ record: u32 present, u32 n, u32 tasks, n floats Fisher. */
    uint32_t present;
    uint64_t plen;
    memcpy(&present, good + payload_at(good, n, "BASE", &plen) + 8 * base_n, 4);
    cr_assert_eq(present, 1, "the file's Base-LoRA has no EWC++ record");
    const struct {
        const char *tag;
        size_t at;
        const void *v;
        size_t len;
        const char *why, *what;
    } cases[] = {
        {"BASE", 0, &huge, 4, "SONA_MAX_WEIGHT", "a weight of 1e30"},
        {"BASE", 4 * base_n + 8, &big, 4, "SONA_MAX_WEIGHT", "a weight of 3e38 in Bt"},
        {"BASE", 8 * base_n + 12, &big, 4, "EWC++", "a Fisher value of 3e38"},
        {"BASE", 8 * base_n + 16, &neg, 4, "EWC++", "a negative Fisher value"},
        {"STAT", 4 + 13 * 8, &big, 4, "counter section", "an engine-wide baseline of 3e38"},
        {"BASL", 0, &big, 4, "baseline", "a baseline mean of 3e38"},
        {"BASL", 4, &big, 4, "baseline", "a baseline variance of 3e38"},
        {"PATT", 4 + 24, &big, 4, "ranges", "a pattern quality of 3e38"},
        {"PATT", 4 + 52, &huge, 4, "ranges", "a pattern centroid of 1e30"},
        {"PATT", 4, &last_id, 8, "ranges", "a pattern id of 2^64 - 1"},
        {"BANK", 4 + 13 * 8, &last_id, 8, "SONA_MAX_NEXT_ID", "a next pattern id of 2^64 - 1"},
        {"QUEU", 0, &last_id, 8, "SONA_MAX_NEXT_ID", "a next trajectory id of 2^64 - 1"},
        /* CRIT: u32 count, u32 tenant id, then region 0: u32 seen, FH floats mean, FH floats model. */
        {"CRIT", 12, &huge, 4, "critic", "a critic's query mean of 1e30"},
        {"CRIT", 12 + 4 * FH, &big, 4, "critic", "a critic's model value of 3e38"},
    };
    uint32_t critics;
    memcpy(&critics, good + payload_at(good, n, "CRIT", &plen), 4);
    cr_assert_eq(critics, 1, "the good file's tenant has no critic");
    uint32_t patterns;
    memcpy(&patterns, good + payload_at(good, n, "PATT", &plen), 4);
    cr_assert_gt(patterns, 0, "the good file has no pattern");
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        uint8_t *bad = patched(good, n, cases[k].tag, cases[k].at, cases[k].v, cases[k].len);
        refused_for(e, bad, n, cases[k].why, cases[k].what);
        free(bad);
    }
    /* Bt scaled up a thousandfold: every weight in range, the output change far beyond the bound. */
    {
        const size_t p = payload_at(good, n, "BASE", &plen);
        uint8_t *bad = malloc(n);
        memcpy(bad, good, n);
        for (size_t i = 0; i < base_n; i++) {
            float v;
            memcpy(&v, bad + p + 4 * (base_n + i), 4);
            v *= 1000.0f;
            memcpy(bad + p + 4 * (base_n + i), &v, 4);
        }
        const uint32_t crc = sona_crc32(0, bad + p, plen);
        memcpy(bad + p - 4, &crc, 4);
        refused_for(e, bad, n, "max_output_change", "Base-LoRA scaled a thousandfold");
        free(bad);
    }
    /* The good file still loads into the engine that refused all of these. */
    cr_assert_eq(sona_load_buffer(e, good, n), SONA_OK, "%s", sona_engine_last_error(e));
    sona_engine_destroy(e);
    free(good);
}

/* A file whose CONF names a shape far larger than its adapters: sona_state_config refuses it at
 * once (no engine of that shape is ever made), while the good file's configuration reads. */
Test(engine_hostile, state_config_refuses_a_shape_the_file_cannot_hold)
{
    const uint64_t seed = test_seed();
    printf("[engine_hostile] shape: seed %" PRIu64 "\n", seed);
    char path[64];
    snprintf(path, sizeof path, "/tmp/sona_hostile_shape_%ld.state", (long)getpid());
    size_t n;
    uint8_t *good = good_file(seed, path, &n);
    sona_engine_config cfg;
    cr_assert_eq(sona_state_config(path, &cfg), SONA_OK, "%s", sona_last_error());
    cr_assert_eq(cfg.hidden, FH);
    /* CONF: u64 seed, u32 count, then the integer fields in table order, hidden first. */
    uint64_t plen;
    uint32_t hidden;
    memcpy(&hidden, good + payload_at(good, n, "CONF", &plen) + 12, 4);
    cr_assert_eq(hidden, FH, "CONF's layout changed: hidden is not at 12");
    const uint32_t wide = 1u << 24;
    uint8_t *bad = patched(good, n, "CONF", 12, &wide, 4);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(bad, 1, n, f), n);
    fclose(f);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const sona_status st = sona_state_config(path, &cfg);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("[engine_hostile] a %zu-byte file naming hidden %u refused in %.2f ms: %s\n", n, wide, ms,
           sona_last_error());
    cr_assert_eq(st, SONA_E_CORRUPT, "%s", sona_status_str(st));
    cr_assert(strstr(sona_last_error(), "needs"), "%s", sona_last_error());
    cr_assert_eq(cfg.hidden, FH, "a refused call changed *cfg");
    unlink(path);
    free(bad);
    free(good);
}

/* ---- a refused update leaves nothing pending ------------------------------------------------------ */

/* An update refused at apply (a gradient beyond ENG_MAX_GRADIENT, which no live input within
 * the ranges makes: put into the accumulator directly) drops its gradients with it: nothing
 * stays pending, the published weights are unchanged, and the next ordinary update applies.
 * Kept pending, it was refused at every later apply (the Base-LoRA that never learned
 * again). With EWC++ on and off (two paths: the Fisher's and the plain step). */
static void refused_update_is_dropped(int ewc)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, HIDDEN);
    c.background_thread = 0;
    c.device_apply = 0;
    c.ewc_enabled = ewc;
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_OK, "%s", sona_last_error());
    float x[HIDDEN], d[HIDDEN], probe[HIDDEN], before[HIDDEN], after[HIDDEN];
    for (int h = 0; h < HIDDEN; h++) {
        x[h] = (h % 2 ? 1e20f : -1e20f);
        d[h] = (float)(h % 3) - 1.0f;
        probe[h] = (float)(h % 5) - 2.0f;
    }
    cr_assert_eq(sona_apply(e, 0, probe, before), SONA_OK);
    uint64_t pending = 1;
    const sona_status st = eng_inspect_train(e, 0, x, d, 1.0f, &pending);
    printf("[engine_hostile] EWC++ %s: a gradient from x = 1e20: %s (%s)\n", ewc ? "on" : "off", sona_status_str(st),
           sona_engine_last_error(e));
    cr_assert_neq(st, SONA_OK, "an update of gradients beyond range was applied");
    cr_assert(strstr(sona_engine_last_error(e), "dropped"), "%s", sona_engine_last_error(e));
    cr_assert_eq(pending, 0, "the refused gradients stayed pending");
    cr_assert_eq(sona_apply(e, 0, probe, after), SONA_OK);
    cr_assert_eq(memcmp(before, after, sizeof before), 0, "a refused update changed the weights");
    /* The next ordinary update applies. */
    for (int h = 0; h < HIDDEN; h++)
        x[h] = (float)((h * 7) % 5) - 2.0f;
    const sona_status next = eng_inspect_train(e, 0, x, d, 1.0f, &pending);
    cr_assert_eq(next, SONA_OK, "the next update after a refused one: %s", sona_engine_last_error(e));
    cr_assert_eq(pending, 0);
    cr_assert_eq(sona_apply(e, 0, probe, after), SONA_OK);
    cr_assert_neq(memcmp(before, after, sizeof before), 0, "the next update changed nothing");
    /* And a save holds nothing its load refuses. */
    char path[64];
    snprintf(path, sizeof path, "/tmp/sona_hostile_drop_%ld_%d.state", (long)getpid(), ewc);
    cr_assert_eq(sona_save(e, path), SONA_OK, "%s", sona_engine_last_error(e));
    sona_engine *f = NULL;
    cr_assert_eq(sona_engine_create(&c, &f), SONA_OK);
    cr_assert_eq(sona_load(f, path), SONA_OK, "%s", sona_engine_last_error(f));
    unlink(path);
    sona_engine_destroy(f);
    sona_engine_destroy(e);
}

Test(engine_hostile, a_refused_update_leaves_nothing_pending_with_ewc) { refused_update_is_dropped(1); }
Test(engine_hostile, a_refused_update_leaves_nothing_pending_without_ewc) { refused_update_is_dropped(0); }
