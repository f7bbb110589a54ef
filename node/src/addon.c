/* SPDX-License-Identifier: MIT */
/* sona.node: libsona for Node.js through Node-API, with the surface of @ruvector/sona 0.1.8
 * (SonaEngine, beginTrajectory, applyMicroLora, ...) and more (tenants, save/load, PEFT export,
 * async variants, sharing an engine with worker threads). node/README.md documents it. */
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sona/bank.h"
#include "sona/engine.h"
#include "shared_engine.h"

/* ---- errors ------------------------------------------------------------------------------------
 * Every failure throws: a TypeError for a value of the wrong type, a RangeError for a wrong
 * length or an out-of-range number, an Error otherwise; err.code is the sona_status name
 * ("SONA_E_SIZE", ...) and the message is libsona's (or ours, in its style). */

static const char *status_name(int st)
{
    static const char *const names[] = {
        "SONA_OK", "SONA_E_NULL", "SONA_E_INVALID", "SONA_E_SIZE", "SONA_E_NONFINITE",
        "SONA_E_NOMEM", "SONA_E_UNSUPPORTED", "SONA_E_UNAVAILABLE", "SONA_E_BACKEND", "SONA_E_IO",
        "SONA_E_CORRUPT", "SONA_E_VERSION", "SONA_E_FULL", "SONA_E_EMPTY", "SONA_E_NOT_FOUND",
        "SONA_E_STATE"};
    return st >= 0 && st < (int)(sizeof names / sizeof *names) ? names[st] : "SONA_E_UNKNOWN";
}

typedef enum { ERR_PLAIN, ERR_TYPE, ERR_RANGE } err_kind;

static napi_value make_error(napi_env env, err_kind kind, const char *code, const char *msg)
{
    napi_value c, m, err = NULL;
    napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c);
    napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
    if (kind == ERR_TYPE)
        napi_create_type_error(env, c, m, &err);
    else if (kind == ERR_RANGE)
        napi_create_range_error(env, c, m, &err);
    else
        napi_create_error(env, c, m, &err);
    return err;
}

static err_kind kind_of_status(int st)
{
    if (st == SONA_E_SIZE || st == SONA_E_INVALID || st == SONA_E_NONFINITE)
        return ERR_RANGE;
    if (st == SONA_E_NULL)
        return ERR_TYPE;
    return ERR_PLAIN;
}

/* Throws for status st with message msg; returns NULL for the callback to return. */
static napi_value throw_status(napi_env env, int st, const char *msg)
{
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending)
        napi_throw(env, make_error(env, kind_of_status(st), status_name(st), msg));
    return NULL;
}

/* printf-style, with the code chosen by kind. */
static napi_value throw_fmt(napi_env env, err_kind kind, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static napi_value throw_fmt(napi_env env, err_kind kind, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending)
        napi_throw(env, make_error(env, kind, code, msg));
    return NULL;
}

#define TYPE_ERROR(env, ...) throw_fmt(env, ERR_TYPE, "ERR_INVALID_ARG_TYPE", __VA_ARGS__)
#define RANGE_ERROR(env, code, ...) throw_fmt(env, ERR_RANGE, code, __VA_ARGS__)

/* A failed Node-API call (a bug or an exhausted heap): throw rather than crash. */
#define NAPI_OK(env, call)                                                                    \
    do {                                                                                       \
        if ((call) != napi_ok) {                                                               \
            throw_fmt(env, ERR_PLAIN, "ERR_SONA_NAPI", "Node-API call failed: %s", #call);     \
            return NULL;                                                                       \
        }                                                                                      \
    } while (0)

/* ---- per-environment data (main thread and each worker) -------------------------------------- */

typedef struct addon_data {
    napi_ref engine_class;
} addon_data;

/* The JavaScript object's native part. */
typedef struct js_engine {
    shared_engine *se; /* NULL once closed */
} js_engine;

static void js_engine_finalize(napi_env env, void *data, void *hint)
{
    (void)env;
    (void)hint;
    js_engine *je = data;
    shared_engine_release(je->se);
    free(je);
}

typedef struct call_args {
    napi_value self;
    size_t argc;
    napi_value argv[6];
    js_engine *je;
    shared_engine *se;
} call_args;

/* Reads this and up to 6 arguments; NULL (thrown) when this is not an open SonaEngine. */
static shared_engine *engine_call(napi_env env, napi_callback_info info, call_args *a,
                                  const char *method)
{
    a->argc = 6;
    if (napi_get_cb_info(env, info, &a->argc, a->argv, &a->self, NULL) != napi_ok)
        return NULL;
    for (size_t i = a->argc; i < 6; i++)
        napi_get_undefined(env, &a->argv[i]);
    void *p = NULL;
    if (napi_unwrap(env, a->self, &p) != napi_ok || !p) {
        TYPE_ERROR(env, "%s: called on something that is not a SonaEngine", method);
        return NULL;
    }
    a->je = p;
    a->se = a->je->se;
    if (!a->se)
        throw_fmt(env, ERR_PLAIN, "SONA_E_STATE", "%s: the engine is closed", method);
    return a->se;
}

static napi_value undefined(napi_env env)
{
    napi_value u;
    napi_get_undefined(env, &u);
    return u;
}

static int is_nullish(napi_env env, napi_value v)
{
    napi_valuetype t;
    return napi_typeof(env, v, &t) != napi_ok || t == napi_undefined || t == napi_null;
}

/* ---- numbers ------------------------------------------------------------------------------------ */

static int get_number(napi_env env, napi_value v, const char *what, double *out)
{
    napi_valuetype t;
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) {
        TYPE_ERROR(env, "%s must be a number", what);
        return -1;
    }
    napi_get_value_double(env, v, out);
    return 0;
}

static int get_finite(napi_env env, napi_value v, const char *what, float *out)
{
    double d;
    if (get_number(env, v, what, &d))
        return -1;
    if (!isfinite(d) || fabs(d) > 3.4028234663852886e38) {
        RANGE_ERROR(env, "SONA_E_NONFINITE", "%s is %g: NaN, Inf or beyond float range", what, d);
        return -1;
    }
    *out = (float)d;
    return 0;
}

/* An integer in [lo, hi]. */
static int get_integer(napi_env env, napi_value v, const char *what, double lo, double hi,
                       int64_t *out)
{
    double d;
    if (get_number(env, v, what, &d))
        return -1;
    if (d != floor(d) || d < lo || d > hi) {
        RANGE_ERROR(env, "SONA_E_INVALID", "%s must be an integer in %.0f..%.0f, not %g", what, lo,
                    hi, d);
        return -1;
    }
    *out = (int64_t)d;
    return 0;
}

static int get_trajectory_id(napi_env env, napi_value v, const char *method, uint32_t *id)
{
    char what[96];
    snprintf(what, sizeof what, "%s: the trajectory id", method);
    int64_t i;
    if (get_integer(env, v, what, 0, 4294967295.0, &i))
        return -1;
    *id = (uint32_t)i;
    return 0;
}

static int get_tenant(napi_env env, napi_value v, const char *method, int32_t *tenant)
{
    if (is_nullish(env, v)) {
        *tenant = 0;
        return 0;
    }
    char what[96];
    snprintf(what, sizeof what, "%s: the tenant", method);
    int64_t i;
    if (get_integer(env, v, what, -1, 2147483647.0, &i))
        return -1;
    *tenant = (int32_t)i;
    return 0;
}

static int get_bool(napi_env env, napi_value v, const char *what, int *out)
{
    napi_valuetype t;
    bool b;
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_boolean) {
        TYPE_ERROR(env, "%s must be a boolean", what);
        return -1;
    }
    napi_get_value_bool(env, v, &b);
    *out = b;
    return 0;
}

/* A string argument into buf (NUL-terminated); refuses one that does not fit or holds a NUL. */
static int get_string(napi_env env, napi_value v, const char *what, char *buf, size_t cap)
{
    napi_valuetype t;
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_string) {
        TYPE_ERROR(env, "%s must be a string", what);
        return -1;
    }
    size_t len = 0;
    napi_get_value_string_utf8(env, v, NULL, 0, &len);
    if (len + 1 > cap) {
        RANGE_ERROR(env, "SONA_E_INVALID", "%s is too long (%zu bytes, at most %zu)", what, len,
                    cap - 1);
        return -1;
    }
    napi_get_value_string_utf8(env, v, buf, cap, &len);
    if (strlen(buf) != len) {
        RANGE_ERROR(env, "SONA_E_INVALID", "%s holds a NUL character", what);
        return -1;
    }
    return 0;
}

/* ---- vectors ------------------------------------------------------------------------------------
 * A Float32Array is read in place (no copy); a plain Array of numbers or a Float64Array is
 * converted once into an owned buffer. The length must be the engine's width. */

typedef enum { VEC_F32, VEC_ARRAY, VEC_F64 } vec_kind;

typedef struct vec_in {
    const float *data;
    float *owned;
    uint32_t len;
    vec_kind kind;
} vec_in;

static void vec_free(vec_in *v)
{
    free(v->owned);
    v->owned = NULL;
}

/* expect: the required length (UINT32_MAX: any). */
static int get_vector(napi_env env, napi_value value, const char *what, uint32_t expect, vec_in *out)
{
    memset(out, 0, sizeof *out);
    bool is = false;
    napi_is_typedarray(env, value, &is);
    if (is) {
        napi_typedarray_type type;
        size_t length;
        void *data;
        napi_get_typedarray_info(env, value, &type, &length, &data, NULL, NULL);
        if (type != napi_float32_array && type != napi_float64_array) {
            TYPE_ERROR(env, "%s must be a Float32Array, a Float64Array or an Array of numbers", what);
            return -1;
        }
        if (expect != UINT32_MAX && length != expect) {
            RANGE_ERROR(env, "SONA_E_SIZE", "%s has %zu values, the engine's width (hiddenDim) is %u",
                        what, length, expect);
            return -1;
        }
        if (length > UINT32_MAX) {
            RANGE_ERROR(env, "SONA_E_SIZE", "%s has %zu values, more than 2^32 - 1", what, length);
            return -1;
        }
        out->len = (uint32_t)length;
        if (type == napi_float32_array) {
            static const float empty[1];
            out->data = length ? data : empty;
            out->kind = VEC_F32;
            return 0;
        }
        out->kind = VEC_F64;
        out->owned = malloc((length ? length : 1) * sizeof(float));
        if (!out->owned) {
            throw_status(env, SONA_E_NOMEM, "out of memory");
            return -1;
        }
        const double *d = data;
        for (size_t i = 0; i < length; i++)
            out->owned[i] = (float)d[i];
        out->data = out->owned;
        return 0;
    }
    napi_is_array(env, value, &is);
    if (!is) {
        TYPE_ERROR(env, "%s must be a Float32Array, a Float64Array or an Array of numbers", what);
        return -1;
    }
    uint32_t length = 0;
    napi_get_array_length(env, value, &length);
    if (expect != UINT32_MAX && length != expect) {
        RANGE_ERROR(env, "SONA_E_SIZE", "%s has %u values, the engine's width (hiddenDim) is %u", what,
                    length, expect);
        return -1;
    }
    out->kind = VEC_ARRAY;
    out->len = length;
    out->owned = malloc((length ? length : 1) * sizeof(float));
    if (!out->owned) {
        throw_status(env, SONA_E_NOMEM, "out of memory");
        return -1;
    }
    for (uint32_t i = 0; i < length; i++) {
        napi_value e;
        napi_valuetype t;
        double d;
        if (napi_get_element(env, value, i, &e) != napi_ok || napi_typeof(env, e, &t) != napi_ok ||
            t != napi_number) {
            vec_free(out);
            TYPE_ERROR(env, "%s: element %u is not a number", what, i);
            return -1;
        }
        napi_get_value_double(env, e, &d);
        out->owned[i] = (float)d;
    }
    out->data = out->owned;
    return 0;
}

/* NaN and Inf by their exponent bits: branch-free, so the compiler vectorises it. */
static int all_finite(const float *x, uint32_t n)
{
    uint32_t bad = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], sizeof bits);
        bad |= (bits & 0x7f800000u) == 0x7f800000u;
    }
    return !bad;
}

static int check_finite(napi_env env, const vec_in *v, const char *what)
{
    if (all_finite(v->data, v->len))
        return 0;
    RANGE_ERROR(env, "SONA_E_NONFINITE", "%s: NaN or Inf in the values", what);
    return -1;
}

/* The result of an apply: a plain Array for plain-Array input (as @ruvector/sona returns), a
 * new Float32Array for typed input, or the caller's `out` Float32Array. */
typedef struct vec_out {
    float *data;
    napi_value value;   /* the Float32Array to return (NULL: build an Array from data) */
    float *owned;
} vec_out;

static int make_output(napi_env env, napi_value out_arg, const vec_in *in, const char *what,
                       vec_out *out)
{
    memset(out, 0, sizeof *out);
    if (!is_nullish(env, out_arg)) {
        bool is = false;
        napi_typedarray_type type;
        size_t length = 0;
        void *data = NULL;
        napi_is_typedarray(env, out_arg, &is);
        if (is)
            napi_get_typedarray_info(env, out_arg, &type, &length, &data, NULL, NULL);
        if (!is || type != napi_float32_array) {
            TYPE_ERROR(env, "%s: out must be a Float32Array", what);
            return -1;
        }
        if (length != in->len) {
            RANGE_ERROR(env, "SONA_E_SIZE", "%s: out has %zu values, the engine's width is %u", what,
                        length, in->len);
            return -1;
        }
        /* out may be the input itself (in place), but not a view overlapping it elsewhere:
         * the apply would read values it has already overwritten. */
        const float *y = data, *x = in->data;
        if (y != x && y < x + in->len && x < y + in->len) {
            RANGE_ERROR(env, "SONA_E_INVALID", "%s: out overlaps the input without being it", what);
            return -1;
        }
        out->data = data;
        out->value = out_arg;
        return 0;
    }
    if (in->kind == VEC_ARRAY) {
        out->owned = malloc((in->len ? in->len : 1) * sizeof(float));
        if (!out->owned) {
            throw_status(env, SONA_E_NOMEM, "out of memory");
            return -1;
        }
        out->data = out->owned;
        return 0;
    }
    napi_value ab;
    void *data;
    if (napi_create_arraybuffer(env, (size_t)in->len * sizeof(float), &data, &ab) != napi_ok ||
        napi_create_typedarray(env, napi_float32_array, in->len, ab, 0, &out->value) != napi_ok) {
        throw_status(env, SONA_E_NOMEM, "out of memory for the result");
        return -1;
    }
    out->data = data;
    return 0;
}

static napi_value numbers_array(napi_env env, const float *x, uint32_t n)
{
    napi_value arr;
    if (napi_create_array_with_length(env, n, &arr) != napi_ok)
        return NULL;
    for (uint32_t i = 0; i < n; i++) {
        napi_value d;
        napi_create_double(env, x[i], &d);
        napi_set_element(env, arr, i, d);
    }
    return arr;
}

static napi_value finish_output(napi_env env, vec_out *out, uint32_t n)
{
    if (out->value)
        return out->value;
    napi_value arr = numbers_array(env, out->data, n);
    free(out->owned);
    out->owned = NULL;
    return arr;
}

/* ---- object helpers ----------------------------------------------------------------------------- */

static void set_number(napi_env env, napi_value obj, const char *key, double v)
{
    napi_value n;
    napi_create_double(env, v, &n);
    napi_set_named_property(env, obj, key, n);
}

static void set_string(napi_env env, napi_value obj, const char *key, const char *s)
{
    napi_value v;
    napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
    napi_set_named_property(env, obj, key, v);
}

static void set_bool(napi_env env, napi_value obj, const char *key, int b)
{
    napi_value v;
    napi_get_boolean(env, b != 0, &v);
    napi_set_named_property(env, obj, key, v);
}

static napi_value engine_error(napi_env env, shared_engine *se, int st)
{
    return throw_status(env, st, sona_engine_last_error(se->engine));
}

/* ---- configuration -------------------------------------------------------------------------------
 * withConfig takes @ruvector/sona's JsSonaConfig fields (mapped below) and, besides, any
 * sona_engine_config field by its C name (micro_apply_every, background_thread, seed, ...) and
 * `preset` ("default", "max_throughput", "max_quality", "edge"). An unknown key throws. */

typedef struct compat_field {
    const char *js;
    const char *c; /* NULL: accepted, checked, no meaning in libsona (README: "Configuration") */
} compat_field;

static const compat_field compat_fields[] = {
    {"microLoraRank", "micro_rank"},
    {"baseLoraRank", "base_rank"},
    {"microLoraLr", "micro_learning_rate"},
    {"baseLoraLr", "base_learning_rate"},
    {"ewcLambda", "ewc_lambda"},
    {"patternClusters", "clusters_per_cycle"},
    {"trajectoryCapacity", "buffer_capacity"},
    {"backgroundIntervalMs", "loop_b_interval_ms"},
    {"qualityThreshold", NULL},
    {"enableSimd", NULL},
};

static int preset_of(const char *name, sona_preset *p)
{
    static const char *const names[] = {"default", "max_throughput", "max_quality", "edge"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, names[i]) == 0) {
            *p = (sona_preset)i;
            return 0;
        }
    }
    return -1;
}

/* The value of key in obj, or NULL when absent or undefined. */
static napi_value property(napi_env env, napi_value obj, const char *key)
{
    bool has = false;
    napi_value v;
    if (napi_has_named_property(env, obj, key, &has) != napi_ok || !has)
        return NULL;
    if (napi_get_named_property(env, obj, key, &v) != napi_ok || is_nullish(env, v))
        return NULL;
    return v;
}

static int set_config_field(napi_env env, sona_engine_config *cfg, const char *key, const char *field,
                            napi_value v)
{
    napi_valuetype t;
    napi_typeof(env, v, &t);
    sona_status st;
    if (t == napi_string) {
        char s[1024];
        char what[160];
        snprintf(what, sizeof what, "withConfig: %s", key);
        if (get_string(env, v, what, s, sizeof s))
            return -1;
        st = sona_engine_config_set_string(cfg, field, s);
    } else if (t == napi_boolean) {
        bool b;
        napi_get_value_bool(env, v, &b);
        st = sona_engine_config_set(cfg, field, b ? 1 : 0);
    } else if (t == napi_number) {
        double d;
        napi_get_value_double(env, v, &d);
        st = sona_engine_config_set(cfg, field, d);
    } else {
        TYPE_ERROR(env, "withConfig: %s must be a number or a boolean", key);
        return -1;
    }
    if (st != SONA_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "withConfig: %s: %s", key, sona_last_error());
        throw_status(env, st, msg);
        return -1;
    }
    return 0;
}

static int is_config_field(const char *name)
{
    const char *f;
    for (uint32_t i = 0; (f = sona_engine_config_field(i, NULL)) != NULL; i++)
        if (strcmp(f, name) == 0)
            return 1;
    return 0;
}

/* Fills cfg from a withConfig object; -1 with an exception pending. */
static int config_from_object(napi_env env, napi_value obj, sona_engine_config *cfg)
{
    napi_valuetype t;
    if (napi_typeof(env, obj, &t) != napi_ok || t != napi_object) {
        TYPE_ERROR(env, "withConfig: the configuration must be an object");
        return -1;
    }
    napi_value hv = property(env, obj, "hiddenDim");
    if (!hv) {
        TYPE_ERROR(env, "withConfig: hiddenDim is required");
        return -1;
    }
    int64_t hidden;
    if (get_integer(env, hv, "withConfig: hiddenDim", 1, 4294967295.0, &hidden))
        return -1;
    sona_preset preset = SONA_PRESET_DEFAULT;
    napi_value pv = property(env, obj, "preset");
    if (pv) {
        char name[32];
        if (get_string(env, pv, "withConfig: preset", name, sizeof name))
            return -1;
        if (preset_of(name, &preset)) {
            RANGE_ERROR(env, "SONA_E_INVALID", "withConfig: unknown preset \"%s\": default, "
                        "max_throughput, max_quality or edge", name);
            return -1;
        }
    }
    sona_engine_config_default(cfg, preset, (uint32_t)hidden);

    napi_value ev = property(env, obj, "embeddingDim");
    if (ev) {
        int64_t emb;
        if (get_integer(env, ev, "withConfig: embeddingDim", 1, 4294967295.0, &emb))
            return -1;
        if (emb != hidden) {
            RANGE_ERROR(env, "SONA_E_SIZE", "withConfig: embeddingDim %" PRId64 " differs from "
                        "hiddenDim %" PRId64 ": libsona's query embeddings are hiddenDim wide",
                        emb, hidden);
            return -1;
        }
    }

    napi_value keys;
    uint32_t nkeys = 0;
    if (napi_get_property_names(env, obj, &keys) != napi_ok)
        return -1;
    napi_get_array_length(env, keys, &nkeys);
    int micro_rank_set = 0, base_rank_set = 0, micro_alpha_set = 0, base_alpha_set = 0;
    for (uint32_t i = 0; i < nkeys; i++) {
        napi_value kv;
        char key[128];
        napi_get_element(env, keys, i, &kv);
        if (get_string(env, kv, "withConfig: a key", key, sizeof key))
            return -1;
        if (!strcmp(key, "hiddenDim") || !strcmp(key, "embeddingDim") || !strcmp(key, "preset"))
            continue;
        napi_value v = property(env, obj, key);
        if (!v)
            continue; /* undefined: not given, as an absent Option in @ruvector/sona */
        const char *field = key;
        int compat = 0;
        for (size_t f = 0; f < sizeof compat_fields / sizeof *compat_fields; f++) {
            if (strcmp(key, compat_fields[f].js) == 0) {
                compat = 1;
                field = compat_fields[f].c;
                break;
            }
        }
        if (compat && !field) {
            /* Accepted for compatibility, checked for type, without effect. */
            if (!strcmp(key, "enableSimd")) {
                int b;
                if (get_bool(env, v, "withConfig: enableSimd", &b))
                    return -1;
            } else {
                float q;
                if (get_finite(env, v, "withConfig: qualityThreshold", &q))
                    return -1;
            }
            continue;
        }
        if (!compat && (!strcmp(key, "hidden"))) {
            RANGE_ERROR(env, "SONA_E_INVALID", "withConfig: give the width as hiddenDim");
            return -1;
        }
        if (!compat && !is_config_field(key)) {
            RANGE_ERROR(env, "SONA_E_NOT_FOUND", "withConfig: unknown option \"%s\" (neither an "
                        "@ruvector/sona field nor a libsona sona_engine_config field)", key);
            return -1;
        }
        if (set_config_field(env, cfg, key, field, v))
            return -1;
        micro_rank_set |= !strcmp(field, "micro_rank");
        base_rank_set |= !strcmp(field, "base_rank");
        micro_alpha_set |= !strcmp(field, "micro_alpha");
        base_alpha_set |= !strcmp(field, "base_alpha");
    }
    /* The presets keep alpha = 2 x rank; a rank given alone keeps that relation. */
    if (micro_rank_set && !micro_alpha_set)
        cfg->micro_alpha = 2.0f * (float)cfg->micro_rank;
    if (base_rank_set && !base_alpha_set)
        cfg->base_alpha = 2.0f * (float)cfg->base_rank;
    return 0;
}

static napi_value config_object(napi_env env, const sona_engine_config *cfg)
{
    napi_value obj;
    NAPI_OK(env, napi_create_object(env, &obj));
    sona_config_kind kind;
    const char *name;
    for (uint32_t i = 0; (name = sona_engine_config_field(i, &kind)) != NULL; i++) {
        if (kind == SONA_CONFIG_STRING) {
            const char *s = "";
            sona_engine_config_get_string(cfg, name, &s);
            set_string(env, obj, name, s);
        } else {
            double d = 0;
            sona_engine_config_get(cfg, name, &d);
            set_number(env, obj, name, d);
        }
    }
    return obj;
}

/* ---- construction --------------------------------------------------------------------------------- */

/* Marks the external that carries a shared_engine into the constructor, so that no other
 * external is ever taken for one. */
static const napi_type_tag shared_engine_tag = {0x736f6e612e6e6f64ull, 0x652d656e67696e65ull};

static napi_value wrap_new(napi_env env, shared_engine *se)
{
    addon_data *ad = NULL;
    napi_value cls, arg, obj;
    napi_get_instance_data(env, (void **)&ad);
    if (!ad || napi_get_reference_value(env, ad->engine_class, &cls) != napi_ok ||
        napi_create_external(env, se, NULL, NULL, &arg) != napi_ok ||
        napi_type_tag_object(env, arg, &shared_engine_tag) != napi_ok ||
        napi_new_instance(env, cls, 1, &arg, &obj) != napi_ok) {
        shared_engine_release(se);
        return throw_status(env, SONA_E_STATE, "SonaEngine: could not construct the object");
    }
    return obj;
}

static shared_engine *create_shared(napi_env env, const sona_engine_config *cfg)
{
    sona_status st;
    shared_engine *se = shared_engine_create(cfg, &st);
    if (!se) {
        char msg[512];
        snprintf(msg, sizeof msg, "SonaEngine: %s",
                 st == SONA_E_NOMEM && !*sona_last_error() ? "out of memory" : sona_last_error());
        throw_status(env, st, msg);
    }
    return se;
}

/* new SonaEngine(hiddenDim): the default preset at that width. (Internally also
 * new SonaEngine(<external shared_engine>) from withConfig and attach.) */
static napi_value engine_construct(napi_env env, napi_callback_info info)
{
    napi_value target, self, argv[1];
    size_t argc = 1;
    NAPI_OK(env, napi_get_new_target(env, info, &target));
    if (!target)
        return TYPE_ERROR(env, "SonaEngine: use new SonaEngine(hiddenDim)");
    NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, &self, NULL));
    shared_engine *se = NULL;
    napi_valuetype t = napi_undefined;
    if (argc >= 1)
        napi_typeof(env, argv[0], &t);
    bool tagged = false;
    if (t == napi_external)
        napi_check_object_type_tag(env, argv[0], &shared_engine_tag, &tagged);
    if (tagged) {
        napi_get_value_external(env, argv[0], (void **)&se);
    } else {
        if (argc < 1)
            return TYPE_ERROR(env, "SonaEngine: hiddenDim must be a number");
        int64_t hidden;
        if (get_integer(env, argv[0], "SonaEngine: hiddenDim", 1, 4294967295.0, &hidden))
            return NULL;
        sona_engine_config cfg;
        sona_engine_config_default(&cfg, SONA_PRESET_DEFAULT, (uint32_t)hidden);
        if (!(se = create_shared(env, &cfg)))
            return NULL;
    }
    js_engine *je = malloc(sizeof *je);
    if (!je) {
        shared_engine_release(se);
        return throw_status(env, SONA_E_NOMEM, "SonaEngine: out of memory");
    }
    je->se = se;
    if (napi_wrap(env, self, je, js_engine_finalize, NULL, NULL) != napi_ok) {
        shared_engine_release(se);
        free(je);
        return throw_status(env, SONA_E_STATE, "SonaEngine: could not wrap the object");
    }
    return self;
}

static napi_value engine_with_config(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    size_t argc = 1;
    NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 1)
        return TYPE_ERROR(env, "withConfig: the configuration must be an object");
    sona_engine_config cfg;
    if (config_from_object(env, argv[0], &cfg))
        return NULL;
    shared_engine *se = create_shared(env, &cfg);
    return se ? wrap_new(env, se) : NULL;
}

/* SonaEngine.attach(token): another reference to a shared engine (from share(), possibly in
 * another thread). */
static napi_value engine_attach(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    size_t argc = 1;
    NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    int64_t token;
    if (argc < 1 || get_integer(env, argv[0], "attach: the token", 1, 9007199254740991.0, &token))
        return argc < 1 ? TYPE_ERROR(env, "attach: the token must be a number") : NULL;
    shared_engine *se = shared_engine_attach((uint64_t)token);
    if (!se)
        return throw_fmt(env, ERR_PLAIN, "SONA_E_NOT_FOUND", "attach: no shared engine %" PRId64
                         " (never shared, or every SonaEngine holding it was closed or collected)",
                         token);
    return wrap_new(env, se);
}

static napi_value engine_share(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "share"))
        return NULL;
    napi_value v;
    NAPI_OK(env, napi_create_double(env, (double)shared_engine_share(a.se), &v));
    return v;
}

static napi_value engine_close(napi_env env, napi_callback_info info)
{
    call_args a;
    a.argc = 0;
    NAPI_OK(env, napi_get_cb_info(env, info, &a.argc, NULL, &a.self, NULL));
    void *p = NULL;
    if (napi_unwrap(env, a.self, &p) != napi_ok || !p)
        return TYPE_ERROR(env, "close: called on something that is not a SonaEngine");
    js_engine *je = p;
    shared_engine *se = je->se;
    je->se = NULL;
    shared_engine_release(se);
    return undefined(env);
}

/* ---- trajectories ----------------------------------------------------------------------------------- */

/* beginTrajectory(queryEmbedding, tenant = 0) -> id */
static napi_value engine_begin(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "beginTrajectory"))
        return NULL;
    int32_t tenant;
    if (get_tenant(env, a.argv[1], "beginTrajectory", &tenant))
        return NULL;
    vec_in q;
    if (get_vector(env, a.argv[0], "beginTrajectory: queryEmbedding", a.se->hidden, &q))
        return NULL;
    uint32_t id;
    char why[512];
    const int st = traj_begin(a.se, tenant, q.data, &id, why, sizeof why);
    vec_free(&q);
    if (st)
        return throw_status(env, st, why);
    napi_value v;
    NAPI_OK(env, napi_create_uint32(env, id, &v));
    return v;
}

/* addTrajectoryStep(id, activations, attentionWeights, reward, layer = the step's index).
 * Everything is checked before the step reaches libsona, so a refused step leaves the trajectory
 * as it was (libsona would drop the whole trajectory on NaN). */
static napi_value engine_step(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "addTrajectoryStep"))
        return NULL;
    uint32_t id;
    float reward;
    if (get_trajectory_id(env, a.argv[0], "addTrajectoryStep", &id) ||
        get_finite(env, a.argv[3], "addTrajectoryStep: reward", &reward))
        return NULL;
    int64_t layer = -1;
    if (!is_nullish(env, a.argv[4]) &&
        get_integer(env, a.argv[4], "addTrajectoryStep: layer", 0, 2147483647.0, &layer))
        return NULL;
    vec_in act, att = {0};
    if (get_vector(env, a.argv[1], "addTrajectoryStep: activations", a.se->hidden, &act))
        return NULL;
    if (check_finite(env, &act, "addTrajectoryStep: activations") ||
        (!is_nullish(env, a.argv[2]) &&
         (get_vector(env, a.argv[2], "addTrajectoryStep: attentionWeights", UINT32_MAX, &att) ||
          check_finite(env, &att, "addTrajectoryStep: attentionWeights")))) {
        vec_free(&act);
        vec_free(&att);
        return NULL;
    }
    node_trajectory *t;
    char why[512];
    int st = traj_take(a.se, id, &t, why, sizeof why);
    if (st) {
        vec_free(&act);
        vec_free(&att);
        char msg[600];
        snprintf(msg, sizeof msg, "addTrajectoryStep: %s", why);
        return throw_status(env, st, msg);
    }
    /* The layer defaults to the step's index: @ruvector/sona's steps are a forward pass's
     * layers in order. Attention weights are checked above and not kept by libsona. */
    const uint32_t l = layer >= 0 ? (uint32_t)layer : t->steps;
    st = sona_request_step(t->request, l, act.data, NULL, 0, reward);
    if (st == SONA_OK)
        t->steps++;
    traj_put(a.se, t);
    vec_free(&act);
    vec_free(&att);
    if (st)
        return engine_error(env, a.se, st);
    return undefined(env);
}

/* setTrajectoryRoute / addTrajectoryContext: the id is checked; libsona's trajectories have no
 * route or context, so the value is not kept (node/README.md). */
static napi_value check_trajectory_and_string(napi_env env, napi_callback_info info, const char *method,
                                              const char *what)
{
    call_args a;
    if (!engine_call(env, info, &a, method))
        return NULL;
    uint32_t id;
    char name[96], buf[4096];
    snprintf(name, sizeof name, "%s: %s", method, what);
    if (get_trajectory_id(env, a.argv[0], method, &id) || get_string(env, a.argv[1], name, buf, sizeof buf))
        return NULL;
    node_trajectory *t;
    char why[512];
    const int st = traj_take(a.se, id, &t, why, sizeof why);
    if (st) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s: %s", method, why);
        return throw_status(env, st, msg);
    }
    traj_put(a.se, t);
    return undefined(env);
}

static napi_value engine_set_route(napi_env env, napi_callback_info info)
{
    return check_trajectory_and_string(env, info, "setTrajectoryRoute", "route");
}

static napi_value engine_add_context(napi_env env, napi_callback_info info)
{
    return check_trajectory_and_string(env, info, "addTrajectoryContext", "contextId");
}

/* endTrajectory(id, quality): loop A learns from it now (the tenant's Micro-LoRA), loop B later. */
static napi_value engine_end(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "endTrajectory"))
        return NULL;
    uint32_t id;
    float quality;
    if (get_trajectory_id(env, a.argv[0], "endTrajectory", &id) ||
        get_finite(env, a.argv[1], "endTrajectory: quality", &quality))
        return NULL;
    node_trajectory *t;
    char why[512];
    int st = traj_remove(a.se, id, &t, why, sizeof why);
    if (st) {
        char msg[600];
        snprintf(msg, sizeof msg, "endTrajectory: %s", why);
        return throw_status(env, st, msg);
    }
    /* With a background thread, libsona runs loop A in its own thread: the event loop does not
     * wait for the Micro-LoRA update. */
    sona_request *r = t->request;
    traj_recycle(a.se, t);
    st = sona_request_end(r, quality);
    if (st)
        return engine_error(env, a.se, st);
    return undefined(env);
}

/* abandonTrajectory(id): drops it without learning. */
static napi_value engine_abandon(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "abandonTrajectory"))
        return NULL;
    uint32_t id;
    if (get_trajectory_id(env, a.argv[0], "abandonTrajectory", &id))
        return NULL;
    node_trajectory *t;
    char why[512];
    const int st = traj_remove(a.se, id, &t, why, sizeof why);
    if (st) {
        char msg[600];
        snprintf(msg, sizeof msg, "abandonTrajectory: %s", why);
        return throw_status(env, st, msg);
    }
    sona_request_abandon(t->request);
    traj_recycle(a.se, t);
    return undefined(env);
}

/* ---- apply --------------------------------------------------------------------------------------------- */

/* applyMicroLora(input, tenant = 0, out) */
static napi_value engine_apply_micro(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "applyMicroLora"))
        return NULL;
    int32_t tenant;
    if (get_tenant(env, a.argv[1], "applyMicroLora", &tenant))
        return NULL;
    vec_in x;
    vec_out y;
    if (get_vector(env, a.argv[0], "applyMicroLora: input", a.se->hidden, &x))
        return NULL;
    if (check_finite(env, &x, "applyMicroLora: input") ||
        make_output(env, a.argv[2], &x, "applyMicroLora", &y)) {
        vec_free(&x);
        return NULL;
    }
    const sona_status st = y.data == x.data ? sona_apply_inplace(a.se->engine, tenant, y.data)
                                            : sona_apply(a.se->engine, tenant, x.data, y.data);
    vec_free(&x);
    if (st) {
        free(y.owned);
        return engine_error(env, a.se, st);
    }
    return finish_output(env, &y, a.se->hidden);
}

/* applyBaseLora(layerIdx, input, out) */
static napi_value engine_apply_base(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "applyBaseLora"))
        return NULL;
    int64_t layer;
    if (get_integer(env, a.argv[0], "applyBaseLora: layerIdx", 0, 4294967295.0, &layer))
        return NULL;
    if (layer >= a.se->base_layers)
        return RANGE_ERROR(env, "SONA_E_INVALID", "applyBaseLora: layerIdx %" PRId64 " is out of "
                           "range: the engine adapts layers 0..%u (base_layers %u)", layer,
                           a.se->base_layers - 1, a.se->base_layers);
    vec_in x;
    vec_out y;
    if (get_vector(env, a.argv[1], "applyBaseLora: input", a.se->hidden, &x))
        return NULL;
    if (check_finite(env, &x, "applyBaseLora: input") ||
        make_output(env, a.argv[2], &x, "applyBaseLora", &y)) {
        vec_free(&x);
        return NULL;
    }
    const sona_status st = sona_apply_layer(a.se->engine, (uint32_t)layer, x.data, y.data);
    vec_free(&x);
    if (st) {
        free(y.owned);
        return engine_error(env, a.se, st);
    }
    return finish_output(env, &y, a.se->hidden);
}

/* ---- learning loops ------------------------------------------------------------------------------------- */

static napi_value engine_flush(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "flush"))
        return NULL;
    const sona_status st = sona_flush(a.se->engine);
    return st ? engine_error(env, a.se, st) : undefined(env);
}

static void cycle_message(char *buf, size_t cap, const char *what, const sona_stats *before,
                          const sona_stats *after)
{
    snprintf(buf, cap, "%s: %" PRIu64 " trajectories -> %" PRIu64 " patterns, status: completed", what,
             after->trajectories_processed - before->trajectories_processed, after->patterns);
}

/* tick(): a loop B cycle in this thread if one is due; its summary, or null when none ran. */
static napi_value engine_tick(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "tick"))
        return NULL;
    sona_stats before, after;
    sona_get_stats(a.se->engine, &before);
    const sona_status st = sona_tick(a.se->engine);
    if (st)
        return engine_error(env, a.se, st);
    sona_get_stats(a.se->engine, &after);
    napi_value v;
    if (after.loop_b_cycles == before.loop_b_cycles) {
        napi_get_null(env, &v);
        return v;
    }
    char msg[256];
    cycle_message(msg, sizeof msg, "Learning cycle", &before, &after);
    NAPI_OK(env, napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &v));
    return v;
}

static napi_value engine_force_learn(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "forceLearn"))
        return NULL;
    sona_stats before, after;
    sona_get_stats(a.se->engine, &before);
    const sona_status st = sona_force_learn(a.se->engine);
    if (st)
        return engine_error(env, a.se, st);
    sona_get_stats(a.se->engine, &after);
    char msg[256];
    cycle_message(msg, sizeof msg, "Forced learning", &before, &after);
    napi_value v;
    NAPI_OK(env, napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &v));
    return v;
}

static napi_value engine_deep_cycle(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "deepCycle"))
        return NULL;
    const sona_status st = sona_deep_cycle(a.se->engine);
    return st ? engine_error(env, a.se, st) : undefined(env);
}

/* ---- patterns --------------------------------------------------------------------------------------------- */

/* findPatterns(queryEmbedding, k): @ruvector/sona's JsLearnedPattern objects (ids and times as
 * strings, as there), plus similarity. */
static napi_value engine_find_patterns(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "findPatterns"))
        return NULL;
    int64_t k;
    if (get_integer(env, a.argv[1], "findPatterns: k", 0, 4294967295.0, &k))
        return NULL;
    if ((uint64_t)k > a.se->max_patterns)
        k = a.se->max_patterns; /* never more than the bank holds: no huge allocation */
    vec_in q;
    if (get_vector(env, a.argv[0], "findPatterns: queryEmbedding", a.se->hidden, &q))
        return NULL;
    if (check_finite(env, &q, "findPatterns: queryEmbedding")) {
        vec_free(&q);
        return NULL;
    }
    sona_pattern_hit *hits = malloc((k ? (size_t)k : 1) * sizeof *hits);
    float *centroid = malloc((size_t)a.se->hidden * sizeof *centroid);
    uint32_t found = 0;
    sona_status st = hits && centroid ? SONA_OK : SONA_E_NOMEM;
    if (st == SONA_OK && k)
        st = sona_find_patterns(a.se->engine, q.data, (uint32_t)k, hits, &found);
    vec_free(&q);
    napi_value arr = NULL;
    if (st == SONA_OK && napi_create_array_with_length(env, found, &arr) == napi_ok) {
        uint32_t n = 0;
        for (uint32_t i = 0; i < found; i++) {
            sona_pattern p;
            if (sona_engine_pattern(a.se->engine, hits[i].id, &p, centroid) != SONA_OK)
                continue; /* merged away since the search */
            napi_value obj;
            char text[32];
            napi_create_object(env, &obj);
            snprintf(text, sizeof text, "%" PRIu64, p.id);
            set_string(env, obj, "id", text);
            napi_value c = numbers_array(env, centroid, a.se->hidden);
            if (c)
                napi_set_named_property(env, obj, "centroid", c);
            set_number(env, obj, "clusterSize", (double)p.size);
            set_number(env, obj, "totalWeight", p.total_weight);
            set_number(env, obj, "avgQuality", p.avg_quality);
            snprintf(text, sizeof text, "%" PRIu64, p.created_ms / 1000);
            set_string(env, obj, "createdAt", text);
            snprintf(text, sizeof text, "%" PRIu64, p.last_access_ms / 1000);
            set_string(env, obj, "lastAccessed", text);
            set_number(env, obj, "accessCount", (double)p.access_count);
            set_string(env, obj, "patternType", "General");
            set_number(env, obj, "similarity", hits[i].similarity);
            napi_set_element(env, arr, n++, obj);
        }
    }
    free(hits);
    free(centroid);
    if (st == SONA_E_NOMEM)
        return throw_status(env, st, "findPatterns: out of memory");
    if (st)
        return engine_error(env, a.se, st);
    return arr;
}

/* ---- statistics and state ---------------------------------------------------------------------------------- */

typedef struct stat_field {
    const char *js;  /* stats()'s camelCase name */
    const char *c;   /* getStats() JSON's name: sona_stats's */
    size_t offset;
    int is_float;
    int is_u32;
} stat_field;

#define U64(js, name) {js, #name, offsetof(sona_stats, name), 0, 0}
static const stat_field stat_fields[] = {
    U64("trajectoriesRecorded", trajectories_recorded),
    U64("trajectoriesProcessed", trajectories_processed),
    U64("trajectoriesDropped", trajectories_dropped),
    U64("trajectoriesQueued", trajectories_queued),
    U64("trajectoriesInCycle", trajectories_in_cycle),
    U64("signalsAccepted", signals_accepted),
    U64("signalsRejected", signals_rejected),
    U64("microUpdates", micro_updates),
    U64("baseUpdates", base_updates),
    U64("patterns", patterns),
    U64("tasks", tasks),
    U64("taskBoundaries", task_boundaries),
    U64("loopBCycles", loop_b_cycles),
    U64("loopCCycles", loop_c_cycles),
    U64("dreams", dreams),
    U64("dreamsReplayed", dreams_replayed),
    U64("patternsMerged", patterns_merged),
    U64("lastLoopBUs", last_loop_b_us),
    U64("lastLoopCUs", last_loop_c_us),
    U64("deviceBatches", device_batches),
    U64("deviceFallbacks", device_fallbacks),
    {"tenants", "tenants", offsetof(sona_stats, tenants), 0, 1},
    {"qualityBaseline", "quality_baseline", offsetof(sona_stats, quality_baseline), 1, 0},
    {"lastPhi", "last_phi", offsetof(sona_stats, last_phi), 1, 0},
};
#undef U64

static double stat_value(const sona_stats *s, const stat_field *f)
{
    const char *base = (const char *)s + f->offset;
    if (f->is_float) {
        float v;
        memcpy(&v, base, sizeof v);
        return v;
    }
    if (f->is_u32) {
        uint32_t v;
        memcpy(&v, base, sizeof v);
        return v;
    }
    uint64_t v;
    memcpy(&v, base, sizeof v);
    return (double)v;
}

/* stats(): every sona_stats counter, camelCase, plus openTrajectories and enabled. */
static napi_value engine_stats(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "stats"))
        return NULL;
    sona_stats s;
    const sona_status st = sona_get_stats(a.se->engine, &s);
    if (st)
        return engine_error(env, a.se, st);
    napi_value obj;
    NAPI_OK(env, napi_create_object(env, &obj));
    for (size_t i = 0; i < sizeof stat_fields / sizeof *stat_fields; i++)
        set_number(env, obj, stat_fields[i].js, stat_value(&s, &stat_fields[i]));
    pthread_mutex_lock(&a.se->lock);
    const uint32_t open = a.se->open;
    pthread_mutex_unlock(&a.se->lock);
    set_number(env, obj, "openTrajectories", open);
    set_bool(env, obj, "enabled", sona_engine_enabled(a.se->engine));
    return obj;
}

/* getStats(): a JSON string, as @ruvector/sona's: its keys first (same meanings where libsona
 * has them), then every sona_stats field by its C name. */
static napi_value engine_get_stats(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "getStats"))
        return NULL;
    sona_stats s;
    const sona_status st = sona_get_stats(a.se->engine, &s);
    if (st)
        return engine_error(env, a.se, st);
    const int enabled = sona_engine_enabled(a.se->engine);
    const uint64_t offered = s.trajectories_recorded + s.trajectories_dropped;
    char json[2048];
    int n = snprintf(json, sizeof json,
                     "{\"trajectories_buffered\":%" PRIu64 ",\"buffer_success_rate\":%.6g,"
                     "\"patterns_stored\":%" PRIu64 ",\"patterns_learned\":%" PRIu64
                     ",\"ewc_tasks\":%" PRIu64 ",\"instant_enabled\":%s,\"background_enabled\":%s",
                     s.trajectories_queued, offered ? (double)s.trajectories_recorded / (double)offered : 1.0,
                     s.patterns, s.patterns, s.tasks, enabled ? "true" : "false",
                     enabled && sona_engine_get_config(a.se->engine)->background_thread ? "true" : "false");
    for (size_t i = 0; i < sizeof stat_fields / sizeof *stat_fields && n > 0 && (size_t)n < sizeof json; i++) {
        const double v = stat_value(&s, &stat_fields[i]);
        n += snprintf(json + n, sizeof json - (size_t)n, stat_fields[i].is_float ? ",\"%s\":%.9g" : ",\"%s\":%.0f",
                      stat_fields[i].c, isfinite(v) ? v : 0.0);
    }
    if (n > 0 && (size_t)n + 2 < sizeof json) {
        json[n++] = '}';
        json[n] = 0;
    }
    napi_value v;
    NAPI_OK(env, napi_create_string_utf8(env, json, NAPI_AUTO_LENGTH, &v));
    return v;
}

static napi_value engine_set_enabled(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "setEnabled"))
        return NULL;
    int on;
    if (get_bool(env, a.argv[0], "setEnabled: enabled", &on))
        return NULL;
    sona_engine_set_enabled(a.se->engine, on);
    return undefined(env);
}

static napi_value engine_is_enabled(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "isEnabled"))
        return NULL;
    napi_value v;
    NAPI_OK(env, napi_get_boolean(env, sona_engine_enabled(a.se->engine) != 0, &v));
    return v;
}

static napi_value engine_get_config(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "getConfig"))
        return NULL;
    return config_object(env, sona_engine_get_config(a.se->engine));
}

static napi_value engine_hidden_dim(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "hiddenDim"))
        return NULL;
    napi_value v;
    NAPI_OK(env, napi_create_uint32(env, a.se->hidden, &v));
    return v;
}

static napi_value engine_device(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "device"))
        return NULL;
    const char *d = sona_engine_device(a.se->engine);
    napi_value v;
    if (d)
        NAPI_OK(env, napi_create_string_utf8(env, d, NAPI_AUTO_LENGTH, &v));
    else
        napi_get_null(env, &v);
    return v;
}

/* ---- tenants ------------------------------------------------------------------------------------------------ */

static napi_value engine_create_tenant(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "createTenant"))
        return NULL;
    int32_t t;
    const sona_status st = sona_tenant_create(a.se->engine, &t);
    if (st)
        return engine_error(env, a.se, st);
    napi_value v;
    NAPI_OK(env, napi_create_int32(env, t, &v));
    return v;
}

static napi_value engine_remove_tenant(napi_env env, napi_callback_info info)
{
    call_args a;
    if (!engine_call(env, info, &a, "removeTenant"))
        return NULL;
    int32_t t;
    if (is_nullish(env, a.argv[0]))
        return TYPE_ERROR(env, "removeTenant: the tenant must be a number");
    if (get_tenant(env, a.argv[0], "removeTenant", &t))
        return NULL;
    const sona_status st = sona_tenant_remove(a.se->engine, t);
    return st ? engine_error(env, a.se, st) : undefined(env);
}

/* ---- save, load, export: synchronous and as Promises (run on libuv's thread pool) ------------------------------ */

typedef enum { JOB_SAVE, JOB_LOAD, JOB_EXPORT, JOB_FORCE_LEARN } job_kind;

typedef struct job {
    job_kind kind;
    shared_engine *se;
    char path[4096];
    char module_format[512];
    char base_model[512];
    sona_peft_config peft;
    sona_status status;
    char message[600];
    napi_deferred deferred;
    napi_async_work work;
} job;

static const char *job_name(job_kind k)
{
    return k == JOB_SAVE ? "save" : k == JOB_LOAD ? "load" : k == JOB_EXPORT ? "exportPeft" : "forceLearn";
}

/* Runs the job in the calling thread (the event loop's for the sync methods, a pool thread's
 * for the async ones). */
static void job_run(job *j)
{
    sona_engine *e = j->se->engine;
    sona_stats before, after;
    switch (j->kind) {
    case JOB_SAVE:
        j->status = sona_save(e, j->path);
        break;
    case JOB_LOAD:
        j->status = sona_load(e, j->path); /* load_finish: by the caller, in the JS thread */
        break;
    case JOB_EXPORT:
        j->status = sona_export_peft(e, j->path, &j->peft);
        break;
    case JOB_FORCE_LEARN:
        sona_get_stats(e, &before);
        j->status = sona_force_learn(e);
        sona_get_stats(e, &after);
        cycle_message(j->message, sizeof j->message, "Forced learning", &before, &after);
        break;
    }
    if (j->status != SONA_OK)
        snprintf(j->message, sizeof j->message, "%s", sona_engine_last_error(e));
}

/* Reads the arguments of save(path), load(path), exportPeft(dir, options). -1: thrown. */
static int job_prepare(napi_env env, call_args *a, job *j)
{
    const char *method = job_name(j->kind);
    char what[64];
    if (j->kind == JOB_FORCE_LEARN)
        return 0;
    snprintf(what, sizeof what, "%s: %s", method, j->kind == JOB_EXPORT ? "dir" : "path");
    if (get_string(env, a->argv[0], what, j->path, sizeof j->path))
        return -1;
    if (!j->path[0]) {
        RANGE_ERROR(env, "SONA_E_INVALID", "%s is empty", what);
        return -1;
    }
    if (j->kind == JOB_EXPORT) {
        sona_peft_config_default(&j->peft);
        napi_value opts = a->argv[1];
        if (!is_nullish(env, opts)) {
            napi_valuetype t;
            napi_typeof(env, opts, &t);
            if (t != napi_object) {
                TYPE_ERROR(env, "exportPeft: options must be an object");
                return -1;
            }
            napi_value v;
            int64_t i;
            if ((v = property(env, opts, "moduleFormat"))) {
                if (get_string(env, v, "exportPeft: moduleFormat", j->module_format, sizeof j->module_format))
                    return -1;
                j->peft.module_format = j->module_format;
            }
            if ((v = property(env, opts, "baseModel"))) {
                if (get_string(env, v, "exportPeft: baseModel", j->base_model, sizeof j->base_model))
                    return -1;
                j->peft.base_model = j->base_model;
            }
            if ((v = property(env, opts, "tenant"))) {
                if (get_integer(env, v, "exportPeft: tenant", -1, 2147483647.0, &i))
                    return -1;
                j->peft.tenant = (int32_t)i;
            }
            if ((v = property(env, opts, "microLayer"))) {
                if (get_integer(env, v, "exportPeft: microLayer", 0, 4294967295.0, &i))
                    return -1;
                j->peft.micro_layer = (uint32_t)i;
            }
            if ((v = property(env, opts, "modelHidden"))) {
                if (get_integer(env, v, "exportPeft: modelHidden", 0, 4294967295.0, &i))
                    return -1;
                j->peft.model_hidden = (uint32_t)i;
            }
        }
    }
    if (j->kind == JOB_LOAD) {
        char why[512];
        const int st = load_start(a->se, why, sizeof why);
        if (st) {
            throw_status(env, st, why);
            return -1;
        }
    }
    return 0;
}

static napi_value job_sync(napi_env env, napi_callback_info info, job_kind kind)
{
    call_args a;
    if (!engine_call(env, info, &a, job_name(kind)))
        return NULL;
    job *j = calloc(1, sizeof *j);
    if (!j)
        return throw_status(env, SONA_E_NOMEM, "out of memory");
    j->kind = kind;
    j->se = a.se;
    if (job_prepare(env, &a, j)) {
        free(j);
        return NULL;
    }
    job_run(j);
    if (kind == JOB_LOAD)
        load_finish(a.se);
    napi_value v = NULL;
    if (j->status != SONA_OK)
        throw_status(env, j->status, j->message);
    else if (kind == JOB_FORCE_LEARN)
        napi_create_string_utf8(env, j->message, NAPI_AUTO_LENGTH, &v);
    else
        v = undefined(env);
    free(j);
    return v;
}

static void job_execute(napi_env env, void *data)
{
    (void)env;
    job_run(data);
}

static void job_complete(napi_env env, napi_status status, void *data)
{
    job *j = data;
    napi_value v;
    /* A load is in progress until its Promise settles: beginTrajectory is refused until then,
     * on every thread. */
    if (j->kind == JOB_LOAD)
        load_finish(j->se);
    if (status == napi_cancelled) {
        napi_reject_deferred(env, j->deferred,
                             make_error(env, ERR_PLAIN, "SONA_E_STATE", "the job was cancelled"));
    } else if (j->status != SONA_OK) {
        char msg[700];
        snprintf(msg, sizeof msg, "%s", j->message);
        napi_reject_deferred(env, j->deferred,
                             make_error(env, kind_of_status(j->status), status_name(j->status), msg));
    } else {
        if (j->kind == JOB_FORCE_LEARN)
            napi_create_string_utf8(env, j->message, NAPI_AUTO_LENGTH, &v);
        else
            napi_get_undefined(env, &v);
        napi_resolve_deferred(env, j->deferred, v);
    }
    napi_delete_async_work(env, j->work);
    shared_engine_release(j->se);
    free(j);
}

/* The async variants: argument errors throw synchronously (a programming error), failures of
 * the work itself reject the Promise. The job holds a reference: close() meanwhile is safe. */
static napi_value job_async(napi_env env, napi_callback_info info, job_kind kind)
{
    call_args a;
    char method[32];
    snprintf(method, sizeof method, "%sAsync", job_name(kind));
    if (!engine_call(env, info, &a, method))
        return NULL;
    job *j = calloc(1, sizeof *j);
    if (!j)
        return throw_status(env, SONA_E_NOMEM, "out of memory");
    j->kind = kind;
    j->se = a.se;
    if (job_prepare(env, &a, j)) {
        free(j);
        return NULL;
    }
    napi_value promise, name;
    napi_create_string_utf8(env, method, NAPI_AUTO_LENGTH, &name);
    if (napi_create_promise(env, &j->deferred, &promise) != napi_ok ||
        napi_create_async_work(env, NULL, name, job_execute, job_complete, j, &j->work) != napi_ok) {
        if (kind == JOB_LOAD)
            load_finish(a.se);
        free(j);
        return throw_status(env, SONA_E_STATE, "could not start the async job");
    }
    shared_engine_retain(a.se);
    if (napi_queue_async_work(env, j->work) != napi_ok) {
        if (kind == JOB_LOAD)
            load_finish(a.se);
        napi_delete_async_work(env, j->work);
        shared_engine_release(a.se);
        free(j);
        return throw_status(env, SONA_E_STATE, "could not queue the async job");
    }
    return promise;
}

static napi_value engine_save(napi_env env, napi_callback_info info) { return job_sync(env, info, JOB_SAVE); }
static napi_value engine_load(napi_env env, napi_callback_info info) { return job_sync(env, info, JOB_LOAD); }
static napi_value engine_export(napi_env env, napi_callback_info info) { return job_sync(env, info, JOB_EXPORT); }
static napi_value engine_save_async(napi_env env, napi_callback_info info) { return job_async(env, info, JOB_SAVE); }
static napi_value engine_load_async(napi_env env, napi_callback_info info) { return job_async(env, info, JOB_LOAD); }
static napi_value engine_export_async(napi_env env, napi_callback_info info) { return job_async(env, info, JOB_EXPORT); }
static napi_value engine_force_learn_async(napi_env env, napi_callback_info info)
{
    return job_async(env, info, JOB_FORCE_LEARN);
}

/* ---- module-level functions ----------------------------------------------------------------------------------- */

/* stateConfig(path): the configuration a state file was saved with (C field names). */
static napi_value module_state_config(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    size_t argc = 1;
    NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    char path[4096];
    if (argc < 1)
        return TYPE_ERROR(env, "stateConfig: path must be a string");
    if (get_string(env, argv[0], "stateConfig: path", path, sizeof path))
        return NULL;
    sona_engine_config cfg;
    const sona_status st = sona_state_config(path, &cfg);
    if (st)
        return throw_status(env, st, sona_last_error());
    return config_object(env, &cfg);
}

/* defaultConfig(hiddenDim, preset = "default"). */
static napi_value module_default_config(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    size_t argc = 2;
    NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    int64_t hidden;
    if (argc < 1)
        return TYPE_ERROR(env, "defaultConfig: hiddenDim must be a number");
    if (get_integer(env, argv[0], "defaultConfig: hiddenDim", 1, 4294967295.0, &hidden))
        return NULL;
    sona_preset preset = SONA_PRESET_DEFAULT;
    if (argc >= 2 && !is_nullish(env, argv[1])) {
        char name[32];
        if (get_string(env, argv[1], "defaultConfig: preset", name, sizeof name))
            return NULL;
        if (preset_of(name, &preset))
            return RANGE_ERROR(env, "SONA_E_INVALID", "defaultConfig: unknown preset \"%s\"", name);
    }
    sona_engine_config cfg;
    sona_engine_config_default(&cfg, preset, (uint32_t)hidden);
    return config_object(env, &cfg);
}

static void addon_data_free(napi_env env, void *data, void *hint)
{
    (void)hint;
    addon_data *ad = data;
    napi_delete_reference(env, ad->engine_class);
    free(ad);
}

#define METHOD(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_default_method, NULL}
#define STATIC(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_static | napi_writable | napi_configurable, NULL}
#define GETTER(name, fn) {name, NULL, NULL, fn, NULL, NULL, napi_configurable, NULL}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */)
{
    static const napi_property_descriptor methods[] = {
        /* @ruvector/sona 0.1.8 */
        METHOD("beginTrajectory", engine_begin),
        METHOD("addTrajectoryStep", engine_step),
        METHOD("setTrajectoryRoute", engine_set_route),
        METHOD("addTrajectoryContext", engine_add_context),
        METHOD("endTrajectory", engine_end),
        METHOD("applyMicroLora", engine_apply_micro),
        METHOD("applyBaseLora", engine_apply_base),
        METHOD("tick", engine_tick),
        METHOD("forceLearn", engine_force_learn),
        METHOD("flush", engine_flush),
        METHOD("findPatterns", engine_find_patterns),
        METHOD("getStats", engine_get_stats),
        METHOD("setEnabled", engine_set_enabled),
        METHOD("isEnabled", engine_is_enabled),
        STATIC("withConfig", engine_with_config),
        /* libsona's own */
        METHOD("abandonTrajectory", engine_abandon),
        METHOD("stats", engine_stats),
        METHOD("getConfig", engine_get_config),
        METHOD("deepCycle", engine_deep_cycle),
        METHOD("createTenant", engine_create_tenant),
        METHOD("removeTenant", engine_remove_tenant),
        METHOD("save", engine_save),
        METHOD("load", engine_load),
        METHOD("exportPeft", engine_export),
        METHOD("saveAsync", engine_save_async),
        METHOD("loadAsync", engine_load_async),
        METHOD("exportPeftAsync", engine_export_async),
        METHOD("forceLearnAsync", engine_force_learn_async),
        METHOD("share", engine_share),
        METHOD("close", engine_close),
        GETTER("hiddenDim", engine_hidden_dim),
        GETTER("device", engine_device),
        STATIC("attach", engine_attach),
    };
    napi_value cls;
    if (napi_define_class(env, "SonaEngine", NAPI_AUTO_LENGTH, engine_construct, NULL,
                          sizeof methods / sizeof *methods, methods, &cls) != napi_ok)
        return NULL;
    addon_data *ad = calloc(1, sizeof *ad);
    if (!ad || napi_create_reference(env, cls, 1, &ad->engine_class) != napi_ok ||
        napi_set_instance_data(env, ad, addon_data_free, NULL) != napi_ok) {
        free(ad);
        return NULL;
    }
    napi_value fn, version;
    napi_set_named_property(env, exports, "SonaEngine", cls);
    napi_create_function(env, "stateConfig", NAPI_AUTO_LENGTH, module_state_config, NULL, &fn);
    napi_set_named_property(env, exports, "stateConfig", fn);
    napi_create_function(env, "defaultConfig", NAPI_AUTO_LENGTH, module_default_config, NULL, &fn);
    napi_set_named_property(env, exports, "defaultConfig", fn);
    napi_create_string_utf8(env, sona_version(), NAPI_AUTO_LENGTH, &version);
    napi_set_named_property(env, exports, "version", version);
    return exports;
}
