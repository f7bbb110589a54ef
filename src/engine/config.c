/* SPDX-License-Identifier: MIT */
/* sona_engine_config by name: the field table (config.h) and the public get/set. */
#include "engine/config.h"

#include "common/error.h"
#include "common/serial.h"
#include "core/adapt/critic.h"
#include "core/adapt/lora_internal.h"
#include "engine/base.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#define FIELD(name, type) {#name, offsetof(sona_engine_config, name), sizeof(((sona_engine_config *)0)->name), type}

/* Append only (config.h): the state file's order is this table's. */
const eng_config_field eng_config_fields[] = {
    FIELD(seed, ENG_CF_U64),
    /* the state file's integers, hidden first */
    FIELD(hidden, ENG_CF_U32),
    FIELD(micro_rank, ENG_CF_U32),
    FIELD(base_rank, ENG_CF_U32),
    FIELD(base_layers, ENG_CF_U32),
    FIELD(max_tenants, ENG_CF_U32),
    FIELD(micro_apply_every, ENG_CF_U32),
    FIELD(max_steps, ENG_CF_U32),
    FIELD(buffer_capacity, ENG_CF_U32),
    FIELD(background_thread, ENG_CF_INT),
    FIELD(loop_b_threshold, ENG_CF_U32),
    FIELD(loop_b_interval_ms, ENG_CF_U32),
    FIELD(loop_b_min_batch, ENG_CF_U32),
    FIELD(clusters_per_cycle, ENG_CF_U32),
    FIELD(max_patterns, ENG_CF_U32),
    FIELD(ewc_enabled, ENG_CF_INT),
    FIELD(max_tasks, ENG_CF_U32),
    FIELD(dreams_per_cycle, ENG_CF_U32),
    FIELD(dream_length, ENG_CF_U32),
    FIELD(loop_c_interval_ms, ENG_CF_U32),
    FIELD(device_apply, ENG_CF_INT),
    FIELD(device_min_rows, ENG_CF_U32),
    FIELD(step_storage, ENG_CF_STORAGE),
    /* the state file's floats */
    FIELD(micro_alpha, ENG_CF_F32),
    FIELD(micro_learning_rate, ENG_CF_F32),
    FIELD(base_alpha, ENG_CF_F32),
    FIELD(base_learning_rate, ENG_CF_F32),
    FIELD(max_signal_weight, ENG_CF_F32),
    FIELD(baseline_decay, ENG_CF_F32),
    FIELD(ewc_lambda, ENG_CF_F32),
    FIELD(fisher_decay, ENG_CF_F32),
    FIELD(task_shift_threshold, ENG_CF_F32),
    FIELD(dream_temperature, ENG_CF_F32),
    FIELD(dream_jump_prob, ENG_CF_F32),
    FIELD(dream_novelty_bonus, ENG_CF_F32),
    FIELD(dream_replay_min_score, ENG_CF_F32),
    FIELD(merge_cosine, ENG_CF_F32),
    FIELD(importance_decay, ENG_CF_F32),
    FIELD(max_output_change, ENG_CF_F32),
    /* not in the file's CONF */
    FIELD(state_path, ENG_CF_STR),
};
#undef FIELD

const size_t eng_config_field_count = sizeof eng_config_fields / sizeof eng_config_fields[0];

uint32_t eng_config_u32_get(const sona_engine_config *c, const eng_config_field *f)
{
    const char *at = (const char *)c + f->offset;
    switch (f->type) {
    case ENG_CF_INT: {
        int v;
        memcpy(&v, at, sizeof v);
        return (uint32_t)v;
    }
    case ENG_CF_STORAGE: {
        sona_storage v;
        memcpy(&v, at, sizeof v);
        return (uint32_t)v;
    }
    default: {
        uint32_t v;
        memcpy(&v, at, sizeof v);
        return v;
    }
    }
}

void eng_config_u32_set(sona_engine_config *c, const eng_config_field *f, uint32_t v)
{
    char *at = (char *)c + f->offset;
    switch (f->type) {
    case ENG_CF_INT: {
        const int i = (int)v;
        memcpy(at, &i, sizeof i);
        break;
    }
    case ENG_CF_STORAGE: {
        const sona_storage s = (sona_storage)v;
        memcpy(at, &s, sizeof s);
        break;
    }
    default:
        memcpy(at, &v, sizeof v);
    }
}

/* ---- the public API ------------------------------------------------------------------------ */

size_t sona_engine_config_size(void) { return sizeof(sona_engine_config); }

static sona_config_kind kind_of(eng_config_type t)
{
    switch (t) {
    case ENG_CF_F32:
        return SONA_CONFIG_FLOAT;
    case ENG_CF_STR:
        return SONA_CONFIG_STRING;
    default:
        return SONA_CONFIG_INT;
    }
}

const char *sona_engine_config_field(uint32_t i, sona_config_kind *kind)
{
    if (i >= eng_config_field_count)
        return NULL;
    if (kind)
        *kind = kind_of(eng_config_fields[i].type);
    return eng_config_fields[i].name;
}

/* The field called name, or NULL with the thread's message set (SONA_E_NULL / NOT_FOUND in *st). */
static const eng_config_field *lookup(const char *fn, const void *cfg, const char *name, sona_status *st)
{
    if (!cfg || !name) {
        *st = sona_fail(NULL, SONA_E_NULL, "%s: %s is NULL", fn, !cfg ? "cfg" : "name");
        return NULL;
    }
    for (size_t i = 0; i < eng_config_field_count; i++)
        if (strcmp(eng_config_fields[i].name, name) == 0)
            return &eng_config_fields[i];
    *st = sona_fail(NULL, SONA_E_NOT_FOUND, "%s: sona_engine_config has no field named \"%.64s\"", fn, name);
    return NULL;
}

sona_status sona_engine_config_set(sona_engine_config *cfg, const char *name, double value)
{
    static const char fn[] = "sona_engine_config_set";
    sona_status st = SONA_OK;
    const eng_config_field *f = lookup(fn, cfg, name, &st);
    if (!f)
        return st;
    if (f->type == ENG_CF_STR)
        return sona_fail(NULL, SONA_E_INVALID, "%s: %s is a string: set it with sona_engine_config_set_string",
                         fn, f->name);
    if (!isfinite(value))
        return sona_fail(NULL, SONA_E_NONFINITE, "%s: %s cannot be %s", fn, f->name,
                         isnan(value) ? "NaN" : "infinite");
    char *at = (char *)cfg + f->offset;
    if (f->type == ENG_CF_F32) {
        if (fabs(value) > FLT_MAX)
            return sona_fail(NULL, SONA_E_INVALID, "%s: %s is a float: %g is out of its range", fn, f->name,
                             value);
        const float v = (float)value;
        memcpy(at, &v, sizeof v);
        return SONA_OK;
    }
    if (value != floor(value))
        return sona_fail(NULL, SONA_E_INVALID, "%s: %s is an integer, not %g", fn, f->name, value);
    double lo = 0.0, hi = (double)UINT32_MAX;
    const char *range = "0..4294967295 (uint32_t)";
    if (f->type == ENG_CF_INT) {
        lo = (double)INT_MIN;
        hi = (double)INT_MAX;
        range = "the range of an int";
    } else if (f->type == ENG_CF_STORAGE) {
        hi = (double)SONA_STORAGE_Q8;
        range = "a sona_storage: 0 (F32), 1 (F16) or 2 (Q8)";
    } else if (f->type == ENG_CF_U64) {
        hi = 18446744073709549568.0; /* the largest double below 2^64 */
        range = "0..2^64-1 (uint64_t)";
    }
    if (value < lo || value > hi)
        return sona_fail(NULL, SONA_E_INVALID, "%s: %s must be %s, not %.17g", fn, f->name, range, value);
    if (f->type == ENG_CF_U64) {
        const uint64_t v = (uint64_t)value;
        memcpy(at, &v, sizeof v);
    } else if (f->type == ENG_CF_INT) {
        const int v = (int)value;
        memcpy(at, &v, sizeof v);
    } else {
        eng_config_u32_set(cfg, f, (uint32_t)value);
    }
    return SONA_OK;
}

sona_status sona_engine_config_get(const sona_engine_config *cfg, const char *name, double *value)
{
    static const char fn[] = "sona_engine_config_get";
    sona_status st = SONA_OK;
    const eng_config_field *f = lookup(fn, cfg, name, &st);
    if (!f)
        return st;
    if (!value)
        return sona_fail(NULL, SONA_E_NULL, "%s: value is NULL", fn);
    const char *at = (const char *)cfg + f->offset;
    switch (f->type) {
    case ENG_CF_STR:
        return sona_fail(NULL, SONA_E_INVALID, "%s: %s is a string: read it with sona_engine_config_get_string",
                         fn, f->name);
    case ENG_CF_F32: {
        float v;
        memcpy(&v, at, sizeof v);
        *value = (double)v;
        break;
    }
    case ENG_CF_U64: {
        uint64_t v;
        memcpy(&v, at, sizeof v);
        *value = (double)v;
        break;
    }
    case ENG_CF_INT: {
        int v;
        memcpy(&v, at, sizeof v);
        *value = (double)v;
        break;
    }
    default:
        *value = (double)eng_config_u32_get(cfg, f);
    }
    return SONA_OK;
}

sona_status sona_engine_config_set_string(sona_engine_config *cfg, const char *name, const char *value)
{
    static const char fn[] = "sona_engine_config_set_string";
    sona_status st = SONA_OK;
    const eng_config_field *f = lookup(fn, cfg, name, &st);
    if (!f)
        return st;
    if (f->type != ENG_CF_STR)
        return sona_fail(NULL, SONA_E_INVALID, "%s: %s is a number: set it with sona_engine_config_set", fn,
                         f->name);
    if (!value)
        return sona_fail(NULL, SONA_E_NULL, "%s: value is NULL", fn);
    const size_t len = strlen(value);
    if (len >= f->size)
        return sona_fail(NULL, SONA_E_INVALID, "%s: %s is %zu bytes long, at most %zu fit", fn, f->name, len,
                         f->size - 1);
    char *at = (char *)cfg + f->offset;
    memset(at, 0, f->size);
    memcpy(at, value, len);
    return SONA_OK;
}

sona_status sona_engine_config_get_string(const sona_engine_config *cfg, const char *name, const char **value)
{
    static const char fn[] = "sona_engine_config_get_string";
    sona_status st = SONA_OK;
    const eng_config_field *f = lookup(fn, cfg, name, &st);
    if (!f)
        return st;
    if (f->type != ENG_CF_STR)
        return sona_fail(NULL, SONA_E_INVALID, "%s: %s is a number: read it with sona_engine_config_get", fn,
                         f->name);
    if (!value)
        return sona_fail(NULL, SONA_E_NULL, "%s: value is NULL", fn);
    const char *at = (const char *)cfg + f->offset;
    if (!memchr(at, '\0', f->size))
        return sona_fail(NULL, SONA_E_INVALID, "%s: %s is not terminated", fn, f->name);
    *value = at;
    return SONA_OK;
}

/* ---- the state file's CONF section ---- */

/* CONF's fields after the seed, in file order: first the integers (each as a u32), then the
 * floats, both in the order of the one table of the config's fields (engine/config.h),
 * which also serves the name-based get/set; fields are only ever appended (a file's counts say
 * how many it has). */
static uint32_t config_count(int ints)
{
    uint32_t n = 0;
    for (size_t i = 0; i < eng_config_field_count; i++)
        if (ints ? eng_config_is_file_int(&eng_config_fields[i]) : eng_config_fields[i].type == ENG_CF_F32)
            n++;
    return n;
}

void eng_config_write(sona_wbuf *w, const sona_engine_config *c)
{
    sona_wbuf_u64(w, c->seed);
    sona_wbuf_u32(w, config_count(1));
    for (size_t i = 0; i < eng_config_field_count; i++)
        if (eng_config_is_file_int(&eng_config_fields[i]))
            sona_wbuf_u32(w, eng_config_u32_get(c, &eng_config_fields[i]));
    sona_wbuf_u32(w, config_count(0));
    for (size_t i = 0; i < eng_config_field_count; i++)
        if (eng_config_fields[i].type == ENG_CF_F32) {
            float v;
            memcpy(&v, (const char *)c + eng_config_fields[i].offset, sizeof v);
            sona_wbuf_f32(w, v);
        }
}

/* The table's next field of the kind (file integers or floats) from *at on, NULL past the end. */
static const eng_config_field *next_config_field(size_t *at, int ints)
{
    for (; *at < eng_config_field_count; (*at)++) {
        const eng_config_field *f = &eng_config_fields[*at];
        if (ints ? eng_config_is_file_int(f) : f->type == ENG_CF_F32) {
            (*at)++;
            return f;
        }
    }
    return NULL;
}

/* CONF's payload into *c: the default preset's values for what the file does not hold (fields
 * newer than it; state_path ""), its values for the rest, fields it has and this library does not
 * know skipped. 0, or -1 when the payload is malformed (fewer than the 5 shape fields, or short). */
int eng_config_read(sona_rbuf *r, sona_engine_config *c)
{
    const uint64_t seed = sona_rbuf_u64(r);
    const uint32_t n_ints = sona_rbuf_u32(r);
    if (r->bad || n_ints < 5 || !sona_rbuf_has(r, n_ints, sizeof(uint32_t)))
        return -1;
    const uint32_t hidden = sona_rbuf_u32(r);
    sona_engine_config_default(c, SONA_PRESET_DEFAULT, hidden);
    c->seed = seed;
    size_t at = 0;
    (void)next_config_field(&at, 1); /* hidden, read above */
    for (uint32_t i = 1; i < n_ints; i++) {
        const uint32_t v = sona_rbuf_u32(r);
        const eng_config_field *f = next_config_field(&at, 1);
        if (f)
            eng_config_u32_set(c, f, v);
    }
    const uint32_t n_floats = sona_rbuf_u32(r);
    at = 0;
    for (uint32_t i = 0; !r->bad && i < n_floats; i++) {
        const float v = sona_rbuf_f32(r);
        const eng_config_field *f = next_config_field(&at, 0);
        if (f)
            memcpy((char *)c + f->offset, &v, sizeof v);
    }
    return r->bad ? -1 : 0;
}

void eng_lora_config(const sona_engine_config *c, int base, sona_lora_config *lc)
{
    sona_lora_config_default(lc, base ? SONA_LORA_BASE : SONA_LORA_MICRO, c->hidden);
    lc->rank = base ? c->base_rank : c->micro_rank;
    lc->count = base ? c->base_layers : 1;
    lc->alpha = base ? c->base_alpha : c->micro_alpha;
    lc->learning_rate = base ? c->base_learning_rate : c->micro_learning_rate;
    lc->clip_norm = 0.0f; /* the engine bounds each signal's weight and the output change instead */
    lc->seed = base ? c->seed ^ 0xba5eull : c->seed;
}

/* The rate of the code covariance's running mean behind B's preconditioner (about the last
 * 100 signals: A moves slowly). Measured on the learning benchmark, 0.003 to 0.03 and a ridge of
 * 0.03 to 0.3 gave the same lifts (docs/notes/learning-at-the-defaults.md). */
#define ENG_CODE_RATE 0.01f

sona_status eng_lora_create(const sona_engine_config *c, int base, sona_lora **out)
{
    sona_lora_config lc;
    eng_lora_config(c, base, &lc);
    sona_status st = sona_lora_create(&lc, out);
    if (st == SONA_OK && (st = sona_lora_set_code_preconditioning(*out, ENG_CODE_RATE)) != SONA_OK) {
        sona_lora_destroy(*out);
        *out = NULL;
    }
    return st;
}

/* The critic's fit rate: normalised LMS moving a query's prediction by this share of its
 * residual. Measured on the learning benchmark's quality-only rows (docs/notes/
 * learning-at-the-defaults.md, "Fourth pass"): 0.1 / 0.3 / 1 gave final-quality-only 0.043 /
 * 0.051 / 0.053 but at a cluster spread of 0.1 0.153 / 0.140 / 0.114 (0.139 without a critic):
 * a larger rate fits noise where queries vary little. Its running mean of queries moves at the
 * baselines' rate. */
#define ENG_CRITIC_RATE 0.3f

sona_status eng_critic_create(const sona_engine_config *c, sona_critic **out)
{
    return sona_critic_create(c->hidden, ENG_REGIONS, 1.0f - c->baseline_decay, ENG_CRITIC_RATE, out);
}

int eng_critic_read(const sona_engine_config *c, sona_rbuf *r, sona_critic **out)
{
    return sona_critic_read(r, c->hidden, ENG_REGIONS, 1.0f - c->baseline_decay, ENG_CRITIC_RATE, out);
}
