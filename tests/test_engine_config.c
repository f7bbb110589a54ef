/* SPDX-License-Identifier: MIT */
/* sona_engine_config by name (sona_engine_config_set / _get / _field): the one field table
 * covers the whole struct, every field round-trips to its own member, refusals leave the config
 * as it was, and the state file (which reads the same table) keeps every value. */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/config.h"
#include "engine/presets.h"
#include <sona.h>

/* Every numeric field with a value that differs from the default preset's and that an engine
 * accepts (hidden 8): X(member, value). */
#define NUMERIC_FIELDS(X)                                                                           \
    X(seed, 123456789.0)                                                                            \
    X(hidden, 8)                                                                                    \
    X(micro_rank, 3)                                                                                \
    X(base_rank, 5)                                                                                 \
    X(base_layers, 3)                                                                               \
    X(max_tenants, 9)                                                                               \
    X(micro_apply_every, 2)                                                                         \
    X(max_steps, 7)                                                                                 \
    X(buffer_capacity, 33)                                                                          \
    X(background_thread, 0)                                                                         \
    X(loop_b_threshold, 17)                                                                         \
    X(loop_b_interval_ms, 1234)                                                                     \
    X(loop_b_min_batch, 3)                                                                          \
    X(clusters_per_cycle, 5)                                                                        \
    X(max_patterns, 77)                                                                             \
    X(ewc_enabled, 1)                                                                               \
    X(max_tasks, 4)                                                                                 \
    X(dreams_per_cycle, 6)                                                                          \
    X(dream_length, 11)                                                                             \
    X(loop_c_interval_ms, 0)                                                                        \
    X(device_apply, 0)                                                                              \
    X(device_min_rows, 40)                                                                          \
    X(step_storage, 1)                                                                              \
    X(micro_alpha, 5.5)                                                                             \
    X(micro_learning_rate, 0.15)                                                                    \
    X(base_alpha, 9.25)                                                                             \
    X(base_learning_rate, 0.05)                                                                     \
    X(max_signal_weight, 2.5)                                                                       \
    X(baseline_decay, 0.9)                                                                          \
    X(ewc_lambda, 0.02)                                                                             \
    X(fisher_decay, 0.98)                                                                           \
    X(task_shift_threshold, 1.5)                                                                    \
    X(dream_temperature, 0.75)                                                                      \
    X(dream_jump_prob, 0.2)                                                                         \
    X(dream_novelty_bonus, 0.25)                                                                    \
    X(dream_replay_min_score, 0.4)                                                                  \
    X(merge_cosine, 0.97)                                                                           \
    X(importance_decay, 0.9)                                                                        \
    X(max_output_change, 4.0)

#define COUNT_ONE(member, value) +1
enum { NUMERIC = 0 NUMERIC_FIELDS(COUNT_ONE) };

/* The value as the member's type holds it. */
#define AS_MEMBER(c, member, value) ((__typeof__((c).member))(value))

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

static int by_offset(const void *a, const void *b)
{
    const eng_config_field *x = a, *y = b;
    return (x->offset > y->offset) - (x->offset < y->offset);
}

/* A field left out of the table (a new member nobody added) leaves a hole no padding explains. */
Test(engine_config, table_tiles_the_struct)
{
    cr_assert_eq(eng_config_field_count, NUMERIC + 1, "the table has %zu fields, the test knows %d + state_path",
                 eng_config_field_count, NUMERIC);
    eng_config_field *f = malloc(eng_config_field_count * sizeof *f);
    cr_assert_not_null(f);
    memcpy(f, eng_config_fields, eng_config_field_count * sizeof *f);
    qsort(f, eng_config_field_count, sizeof *f, by_offset);
    size_t end = 0;
    for (size_t i = 0; i < eng_config_field_count; i++) {
        const size_t align = f[i].type == ENG_CF_STR ? 1 : f[i].size;
        cr_expect_eq(f[i].offset, align_up(end, align), "%s at %zu: a field is missing before it (end %zu)",
                     f[i].name, f[i].offset, end);
        end = f[i].offset + f[i].size;
    }
    cr_expect_eq(sizeof(sona_engine_config), align_up(end, _Alignof(sona_engine_config)),
                 "a field is missing after the last (%zu of %zu bytes)", end, sizeof(sona_engine_config));
    cr_expect_eq(sona_engine_config_size(), sizeof(sona_engine_config));
    free(f);
}

/* The state file's CONF order is the table's: it must never change (older files would load
 * into the wrong fields). */
Test(engine_config, state_file_order_is_fixed)
{
    static const char *const ints[] = {
        "hidden", "micro_rank", "base_rank", "base_layers", "max_tenants", "micro_apply_every", "max_steps",
        "buffer_capacity", "background_thread", "loop_b_threshold", "loop_b_interval_ms", "loop_b_min_batch",
        "clusters_per_cycle", "max_patterns", "ewc_enabled", "max_tasks", "dreams_per_cycle", "dream_length",
        "loop_c_interval_ms", "device_apply", "device_min_rows", "step_storage"};
    static const char *const floats[] = {
        "micro_alpha", "micro_learning_rate", "base_alpha", "base_learning_rate", "max_signal_weight",
        "baseline_decay", "ewc_lambda", "fisher_decay", "task_shift_threshold", "dream_temperature",
        "dream_jump_prob", "dream_novelty_bonus", "dream_replay_min_score", "merge_cosine", "importance_decay",
        "max_output_change"};
    size_t ni = 0, nf = 0;
    for (size_t i = 0; i < eng_config_field_count; i++) {
        const eng_config_field *f = &eng_config_fields[i];
        if (eng_config_is_file_int(f)) {
            if (ni < sizeof ints / sizeof ints[0])
                cr_expect_str_eq(f->name, ints[ni], "file integer %zu", ni);
            ni++;
        } else if (f->type == ENG_CF_F32) {
            if (nf < sizeof floats / sizeof floats[0])
                cr_expect_str_eq(f->name, floats[nf], "file float %zu", nf);
            nf++;
        }
    }
    /* Appended fields are fine; these must come first, in this order. */
    cr_expect_geq(ni, sizeof ints / sizeof ints[0]);
    cr_expect_geq(nf, sizeof floats / sizeof floats[0]);
}

Test(engine_config, enumerator)
{
    uint32_t n = 0;
    sona_config_kind kind;
    while (sona_engine_config_field(n, &kind)) {
        const char *name = sona_engine_config_field(n, NULL);
        cr_assert_not_null(name);
        for (uint32_t j = 0; j < n; j++)
            cr_expect_str_neq(name, sona_engine_config_field(j, NULL), "fields %u and %u", j, n);
        const eng_config_type t = eng_config_fields[n].type;
        cr_expect_str_eq(name, eng_config_fields[n].name);
        cr_expect_eq(kind, t == ENG_CF_F32 ? SONA_CONFIG_FLOAT : t == ENG_CF_STR ? SONA_CONFIG_STRING : SONA_CONFIG_INT,
                     "%s", name);
        cr_expect_eq(strcmp(name, "state_path") == 0, kind == SONA_CONFIG_STRING, "%s", name);
        n++;
    }
    cr_expect_eq(n, NUMERIC + 1);
    cr_expect_null(sona_engine_config_field(n, &kind));
    cr_expect_null(sona_engine_config_field(UINT32_MAX, NULL));
}

/* Each value set by name lands in its own member, reads back by name, and nothing else moves. */
Test(engine_config, every_field_round_trips)
{
    sona_engine_config c, d;
#define ONE(member, value)                                                                          \
    do {                                                                                            \
        sona_engine_config_default(&c, SONA_PRESET_DEFAULT, 16);                                    \
        d = c;                                                                                      \
        cr_assert_eq(sona_engine_config_set(&c, #member, (value)), SONA_OK, "%s: %s", #member, sona_last_error()); \
        d.member = AS_MEMBER(d, member, value);                                                     \
        cr_expect_eq(memcmp(&c, &d, sizeof c), 0, "%s: set another member too, or not its own", #member); \
        double got = -1;                                                                            \
        cr_assert_eq(sona_engine_config_get(&c, #member, &got), SONA_OK, "%s", sona_last_error());  \
        cr_expect_eq(got, (double)AS_MEMBER(d, member, value), "%s: got %.17g", #member, got);      \
    } while (0);
    NUMERIC_FIELDS(ONE)
#undef ONE
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, 16);
    cr_assert_eq(sona_engine_config_set_string(&c, "state_path", "/tmp/x.state"), SONA_OK);
    cr_expect_str_eq(c.state_path, "/tmp/x.state");
    const char *s = NULL;
    cr_assert_eq(sona_engine_config_get_string(&c, "state_path", &s), SONA_OK);
    cr_expect_eq(s, c.state_path);
    cr_assert_eq(sona_engine_config_set_string(&c, "state_path", ""), SONA_OK);
    cr_expect_str_eq(c.state_path, "");
}

Test(engine_config, extremes_of_each_type)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, 16);
    cr_expect_eq(sona_engine_config_set(&c, "max_patterns", 4294967295.0), SONA_OK);
    cr_expect_eq(c.max_patterns, UINT32_MAX);
    cr_expect_eq(sona_engine_config_set(&c, "max_patterns", 0), SONA_OK);
    cr_expect_eq(c.max_patterns, 0u);
    cr_expect_eq(sona_engine_config_set(&c, "ewc_enabled", -2147483648.0), SONA_OK);
    cr_expect_eq(c.ewc_enabled, INT32_MIN);
    cr_expect_eq(sona_engine_config_set(&c, "seed", 9007199254740992.0), SONA_OK);
    cr_expect_eq(c.seed, UINT64_C(9007199254740992));
    cr_expect_eq(sona_engine_config_set(&c, "seed", 18446744073709549568.0), SONA_OK);
    cr_expect_eq(c.seed, UINT64_C(18446744073709549568));
    cr_expect_eq(sona_engine_config_set(&c, "merge_cosine", -0.5), SONA_OK);
    cr_expect_eq(c.merge_cosine, -0.5f);
    cr_expect_eq(sona_engine_config_set(&c, "ewc_lambda", (double)FLT_MAX), SONA_OK);
    cr_expect_eq(c.ewc_lambda, FLT_MAX);
    cr_expect_eq(sona_engine_config_set(&c, "step_storage", 2), SONA_OK);
    cr_expect_eq(c.step_storage, SONA_STORAGE_Q8);
}

/* A refused call: its status, a message naming the field (or the problem), *cfg unchanged. */
static void refused(sona_status st, const char *name, double value, sona_status want, const char *mentions)
{
    sona_engine_config c, before;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, 16);
    before = c;
    cr_expect_eq(st == SONA_OK ? sona_engine_config_set(&c, name, value) : st, want, "%s = %g: %s", name, value,
                 sona_last_error());
    cr_expect(strstr(sona_last_error(), mentions), "%s = %g: \"%s\" does not mention \"%s\"", name, value,
              sona_last_error(), mentions);
    cr_expect_eq(memcmp(&c, &before, sizeof c), 0, "%s = %g changed the config", name, value);
}

Test(engine_config, refusals)
{
    refused(SONA_OK, "no_such_field", 1, SONA_E_NOT_FOUND, "no_such_field");
    refused(SONA_OK, "Hidden", 1, SONA_E_NOT_FOUND, "Hidden");
    refused(SONA_OK, "", 1, SONA_E_NOT_FOUND, "no field");
    refused(SONA_OK, "micro_rank", -1, SONA_E_INVALID, "micro_rank");
    refused(SONA_OK, "micro_rank", 2.5, SONA_E_INVALID, "micro_rank");
    refused(SONA_OK, "max_patterns", 4294967296.0, SONA_E_INVALID, "max_patterns");
    refused(SONA_OK, "seed", -1, SONA_E_INVALID, "seed");
    refused(SONA_OK, "seed", 18446744073709551616.0, SONA_E_INVALID, "seed");
    refused(SONA_OK, "seed", 0.5, SONA_E_INVALID, "seed");
    refused(SONA_OK, "background_thread", 2147483648.0, SONA_E_INVALID, "background_thread");
    refused(SONA_OK, "step_storage", 3, SONA_E_INVALID, "step_storage");
    refused(SONA_OK, "step_storage", -1, SONA_E_INVALID, "step_storage");
    refused(SONA_OK, "micro_learning_rate", NAN, SONA_E_NONFINITE, "micro_learning_rate");
    refused(SONA_OK, "micro_learning_rate", INFINITY, SONA_E_NONFINITE, "micro_learning_rate");
    refused(SONA_OK, "hidden", NAN, SONA_E_NONFINITE, "hidden");
    refused(SONA_OK, "hidden", -INFINITY, SONA_E_NONFINITE, "hidden");
    refused(SONA_OK, "ewc_lambda", 1e39, SONA_E_INVALID, "ewc_lambda");
    refused(SONA_OK, "state_path", 1, SONA_E_INVALID, "state_path");

    sona_engine_config c, before;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, 16);
    before = c;
    double v = 7;
    const char *s = "unchanged";
    cr_expect_eq(sona_engine_config_set(NULL, "hidden", 1), SONA_E_NULL);
    cr_expect(strstr(sona_last_error(), "cfg"));
    cr_expect_eq(sona_engine_config_set(&c, NULL, 1), SONA_E_NULL);
    cr_expect(strstr(sona_last_error(), "name"));
    cr_expect_eq(sona_engine_config_get(NULL, "hidden", &v), SONA_E_NULL);
    cr_expect_eq(sona_engine_config_get(&c, "hidden", NULL), SONA_E_NULL);
    cr_expect_eq(sona_engine_config_get(&c, "nope", &v), SONA_E_NOT_FOUND);
    cr_expect(strstr(sona_last_error(), "nope"));
    cr_expect_eq(sona_engine_config_get(&c, "state_path", &v), SONA_E_INVALID);
    cr_expect(strstr(sona_last_error(), "state_path"));
    cr_expect_eq(v, 7);
    cr_expect_eq(sona_engine_config_set_string(&c, "hidden", "x"), SONA_E_INVALID);
    cr_expect(strstr(sona_last_error(), "hidden"));
    cr_expect_eq(sona_engine_config_set_string(&c, "state_path", NULL), SONA_E_NULL);
    cr_expect_eq(sona_engine_config_set_string(&c, "nope", "x"), SONA_E_NOT_FOUND);
    char long_path[300];
    memset(long_path, 'a', sizeof long_path - 1);
    long_path[sizeof long_path - 1] = '\0';
    cr_expect_eq(sona_engine_config_set_string(&c, "state_path", long_path), SONA_E_INVALID);
    cr_expect(strstr(sona_last_error(), "state_path"));
    long_path[sizeof c.state_path] = '\0'; /* 256 bytes: one too many */
    cr_expect_eq(sona_engine_config_set_string(&c, "state_path", long_path), SONA_E_INVALID);
    cr_expect_eq(sona_engine_config_get_string(&c, "hidden", &s), SONA_E_INVALID);
    cr_expect_eq(sona_engine_config_get_string(&c, "state_path", NULL), SONA_E_NULL);
    cr_expect_str_eq(s, "unchanged");
    cr_expect_eq(memcmp(&c, &before, sizeof c), 0, "a refused call changed the config");
    long_path[sizeof c.state_path - 1] = '\0'; /* 255 bytes fit */
    cr_expect_eq(sona_engine_config_set_string(&c, "state_path", long_path), SONA_OK, "%s", sona_last_error());
    cr_expect_eq(strlen(c.state_path), sizeof c.state_path - 1);
}

/* A config built by name only (as a binding would: opaque bytes of sona_engine_config_size())
 * creates an engine, and the state file keeps every numeric value (its CONF reads the table). */
Test(engine_config, by_name_creates_and_persists)
{
    unsigned char *bytes = calloc(1, sona_engine_config_size());
    cr_assert_not_null(bytes);
    sona_engine_config *c = (sona_engine_config *)(void *)bytes;
    sona_engine_config_default(c, SONA_PRESET_DEFAULT, 8);
#define SET(member, value) cr_assert_eq(sona_engine_config_set(c, #member, (value)), SONA_OK, "%s", sona_last_error());
    NUMERIC_FIELDS(SET)
#undef SET
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(c, &e), SONA_OK, "%s", sona_last_error());
    char path[64];
    snprintf(path, sizeof path, "/tmp/sona_engine_config_%ld.state", (long)getpid());
    cr_assert_eq(sona_save(e, path), SONA_OK, "%s", sona_engine_last_error(e));
    sona_engine_config back;
    cr_assert_eq(sona_state_config(path, &back), SONA_OK, "%s", sona_last_error());
    unlink(path);
    cr_expect_eq(memcmp(&back, sona_engine_get_config(e), sizeof back), 0,
                 "the state file did not keep the config");
#define CHECK(member, value)                                                                        \
    cr_expect_eq(back.member, AS_MEMBER(back, member, value), "%s", #member);
    NUMERIC_FIELDS(CHECK)
#undef CHECK
    sona_engine_destroy(e);
    free(bytes);
}

/* Every entry of the presets' table names a field and that preset's config carries its value
 * (a misspelt name would otherwise be skipped without a sound). */
Test(engine_config, preset_table_entries_take_effect)
{
    cr_assert(eng_preset_override_count > 0);
    for (size_t i = 0; i < eng_preset_override_count; i++) {
        const eng_preset_override *o = &eng_preset_overrides[i];
        sona_engine_config c, d;
        sona_engine_config_default(&c, o->preset, 256);
        sona_engine_config_default(&d, SONA_PRESET_DEFAULT, 256);
        double v = NAN, dv = NAN;
        cr_assert_eq(sona_engine_config_get(&c, o->field, &v), SONA_OK, "preset %d: %s: %s", (int)o->preset,
                     o->field, sona_last_error());
        cr_assert_eq(sona_engine_config_get(&d, o->field, &dv), SONA_OK);
        cr_assert_float_eq(v, o->value, 1e-6 * fabs(o->value) + 1e-9, "preset %d: %s is %g, the table says %g",
                           (int)o->preset, o->field, v, o->value);
        cr_assert(v != dv, "preset %d: %s repeats the default %g", (int)o->preset, o->field, dv);
    }
}
