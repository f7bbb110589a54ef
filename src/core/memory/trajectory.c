/* SPDX-License-Identifier: MIT */
/* Trajectories and their id source. A trajectory keeps every vector and string in one growable
 * byte arena (doubling), vectors encoded in the trajectory's storage format as they arrive, plus
 * a small index of steps and of context strings, so recording a step is an encoding into memory
 * that is usually already there. end() trims the arena and the step index to their exact size,
 * since ended trajectories wait in the buffer by the thousand and doubling would leave up to half
 * of each unused; a step reserves exactly what it takes, so a trajectory reset and refilled with
 * steps of the same shape fits its trimmed arena again without a realloc. */
#include "sona/trajectory.h"

#include "common/clock.h"
#include "common/error.h"
#include "core/memory/storage.h"
#include "core/memory/trajectory_internal.h"
#include "dispatch/vecmath.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- id source ------------------------------------------------------------------------- */

struct sona_id_source {
    _Atomic uint64_t next;
};

sona_status sona_id_source_create(uint64_t first, sona_id_source **out)
{
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "%s: out is NULL", __func__);
    sona_id_source *s = malloc(sizeof *s);
    if (!s) {
        *out = NULL;
        return sona_fail(NULL, SONA_E_NOMEM, "%s: out of memory", __func__);
    }
    atomic_init(&s->next, first);
    *out = s;
    return SONA_OK;
}

void sona_id_source_destroy(sona_id_source *ids) { free(ids); }

/* A NULL source hands out 0 and ignores set, like the other accessors of a NULL handle. */
uint64_t sona_id_source_next(sona_id_source *ids)
{
    return ids ? atomic_fetch_add_explicit(&ids->next, 1, memory_order_relaxed) : 0;
}

uint64_t sona_id_source_peek(const sona_id_source *ids)
{
    return ids ? atomic_load_explicit(&((sona_id_source *)ids)->next, memory_order_relaxed) : 0;
}

void sona_id_source_set(sona_id_source *ids, uint64_t next)
{
    if (ids)
        atomic_store_explicit(&ids->next, next, memory_order_relaxed);
}

/* ---- trajectory ------------------------------------------------------------------------ */

/* Arena offsets are multiples of 4 (what encoded vectors need, core/memory/storage.h); they are 32-bit,
 * which keeps the step index small. */
#define ARENA_ALIGN 4u
#define ARENA_MAX UINT32_MAX
#define NO_ROUTE UINT32_MAX

typedef struct step_rec {
    uint32_t off; /* arena offset of the activations; the attention follows, aligned */
    uint32_t act_len, attn_len;
    float reward;
    int32_t layer;
} step_rec;

struct sona_trajectory {
    uint64_t id;
    uint64_t start_us, latency_us;
    float quality;
    uint32_t dim;           /* the query sits at arena offset 0 */
    sona_storage storage;
    int ended;
    unsigned char *arena;
    uint32_t arena_len, arena_cap;
    step_rec *steps;
    uint32_t step_count, step_cap;
    uint32_t *contexts;     /* arena offsets of the context strings */
    uint32_t context_count, context_cap;
    uint32_t route_off;     /* NO_ROUTE: none */
    sona_errbuf *err;       /* allocated at the first failure: queued trajectories rarely have one */
};

static size_t align_up(size_t n) { return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1); }

/* Formats the message onto t (onto the thread when t is NULL or its message buffer cannot be
 * allocated) and returns st. */
__attribute__((format(printf, 3, 4))) static sona_status fail(sona_trajectory *t, sona_status st,
                                                               const char *fmt, ...)
{
    char msg[sizeof(sona_errbuf)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (t && !t->err)
        t->err = malloc(sizeof *t->err);
    return sona_fail(t ? t->err : NULL, st, "%s", msg);
}

/* Resizes the arena to exactly cap bytes (>= arena_len); 0 when out of memory (nothing changed). */
static int arena_resize(sona_trajectory *t, size_t cap)
{
    unsigned char *p = realloc(t->arena, cap ? cap : 1);
    if (!p)
        return 0;
    t->arena = p;
    t->arena_cap = (uint32_t)cap;
    return 1;
}

/* Makes room for `bytes` more at the aligned end of the arena, doubling its capacity as needed;
 * returns that offset, or SIZE_MAX when out of memory or past ARENA_MAX. Nothing is committed:
 * the caller advances arena_len once the data is accepted. */
static size_t arena_reserve(sona_trajectory *t, size_t bytes)
{
    const size_t off = align_up(t->arena_len);
    if (off > ARENA_MAX || bytes > ARENA_MAX - off)
        return SIZE_MAX;
    const size_t need = off + bytes;
    if (need > t->arena_cap) {
        size_t cap = t->arena_cap > 64 ? t->arena_cap : 64;
        while (cap < need)
            cap = cap > ARENA_MAX / 2 ? ARENA_MAX : cap * 2;
        if (!arena_resize(t, cap))
            return SIZE_MAX;
    }
    return off;
}

/* Makes room for `more` entries in a small index array (steps, contexts): doubling, or exactly
 * when `exact`. */
static int grow_index(void **arr, uint32_t *cap, uint32_t count, uint32_t more, size_t elem, int exact)
{
    if (more <= *cap - count)
        return 1;
    if (more > UINT32_MAX - count)
        return 0;
    uint64_t ncap = exact ? (uint64_t)count + more : (*cap ? 2ull * *cap : 8);
    if (ncap < (uint64_t)count + more)
        ncap = (uint64_t)count + more;
    if (ncap > UINT32_MAX)
        ncap = UINT32_MAX;
    if (ncap > SIZE_MAX / elem)
        return 0;
    void *p = realloc(*arr, (size_t)ncap * elem);
    if (!p)
        return 0;
    *arr = p;
    *cap = (uint32_t)ncap;
    return 1;
}

/* Starts t over with a fresh id and query; the arena is kept. On failure t is unchanged. */
static sona_status start(sona_trajectory *t, sona_id_source *ids, const float *query, uint32_t dim,
                         const char *fn)
{
    if (!ids || !query)
        return fail(t, SONA_E_NULL, "%s: ids and query are required", fn);
    if (dim == 0)
        return fail(t, SONA_E_INVALID, "%s: dim is 0", fn);
    /* Checked before anything is written: the old query is still the trajectory's. */
    if (!sona_storage_fits(t->storage, query, dim))
        return fail(t, SONA_E_NONFINITE, "%s: NaN or Inf in the query embedding%s", fn,
                    t->storage == SONA_STORAGE_F16 ? " (or a value beyond the F16 range)" : "");
    const size_t bytes = sona_storage_bytes(t->storage, dim);
    if (bytes > ARENA_MAX)
        return fail(t, SONA_E_NOMEM, "%s: a %u-wide query is too large", fn, dim);
    if (bytes > t->arena_cap && !arena_resize(t, bytes))
        return fail(t, SONA_E_NOMEM, "%s: out of memory for a %u-wide query", fn, dim);
    sona_storage_encode(t->storage, query, dim, t->arena);
    t->arena_len = (uint32_t)bytes;
    t->dim = dim;
    t->id = sona_id_source_next(ids);
    t->step_count = 0;
    t->context_count = 0;
    t->route_off = NO_ROUTE;
    t->ended = 0;
    t->quality = NAN;
    t->latency_us = 0;
    t->start_us = sona_monotonic_us();
    if (t->err)
        sona_clear_error(t->err);
    return SONA_OK;
}

sona_status sona_trajectory_begin(sona_id_source *ids, sona_storage storage, const float *query,
                                  uint32_t dim, sona_trajectory **out)
{
    static const char fn[] = "sona_trajectory_begin";
    if (!out)
        return fail(NULL, SONA_E_NULL, "%s: out is NULL", fn);
    *out = NULL;
    if (!sona_storage_valid(storage))
        return fail(NULL, SONA_E_INVALID, "%s: storage %d is not a sona_storage", fn, (int)storage);
    sona_trajectory *t = calloc(1, sizeof *t);
    if (!t)
        return fail(NULL, SONA_E_NOMEM, "%s: out of memory", fn);
    t->storage = storage;
    sona_status st = start(t, ids, query, dim, fn);
    if (st != SONA_OK) {
        if (t->err) /* else the message is on the thread already */
            fail(NULL, st, "%s", t->err->msg);
        sona_trajectory_destroy(t);
        return st;
    }
    *out = t;
    return SONA_OK;
}

sona_status sona_trajectory_reset(sona_trajectory *t, sona_id_source *ids, const float *query,
                                  uint32_t dim)
{
    if (!t)
        return fail(NULL, SONA_E_NULL, "%s: trajectory is NULL", __func__);
    return start(t, ids, query, dim, "sona_trajectory_reset");
}

void sona_trajectory_destroy(sona_trajectory *t)
{
    if (!t)
        return;
    free(t->arena);
    free(t->steps);
    free(t->contexts);
    free(t->err);
    free(t);
}

const char *sona_trajectory_last_error(const sona_trajectory *t)
{
    if (!t)
        return sona_last_error();
    return t->err ? t->err->msg : "";
}

static sona_status check_open(sona_trajectory *t, const char *fn)
{
    if (!t)
        return fail(NULL, SONA_E_NULL, "%s: trajectory is NULL", fn);
    if (t->ended)
        return fail(t, SONA_E_STATE, "%s: trajectory %llu has already ended", fn,
                    (unsigned long long)t->id);
    return SONA_OK;
}

/* The arena bytes of a step: activations, then the attention at the next aligned offset. */
static size_t step_bytes(const sona_trajectory *t, uint32_t act_len, uint32_t attn_len)
{
    return align_up(sona_storage_bytes(t->storage, act_len)) + sona_storage_bytes(t->storage, attn_len);
}

/* Where a step's attention starts, its activations starting at act_off. */
static size_t attn_offset(const sona_trajectory *t, size_t act_off, uint32_t act_len)
{
    return act_off + align_up(sona_storage_bytes(t->storage, act_len));
}

sona_status sona_trajectory_reserve(sona_trajectory *t, uint32_t steps, uint32_t activations_len,
                                    uint32_t attention_len)
{
    static const char fn[] = "sona_trajectory_reserve";
    sona_status st = check_open(t, fn);
    if (st != SONA_OK)
        return st;
    /* Each step starts aligned: steps * its aligned size is enough (by at most 3 bytes more). */
    const size_t one = align_up(step_bytes(t, activations_len, attention_len));
    const uint64_t need = align_up(t->arena_len) + (uint64_t)steps * one;
    if (one > ARENA_MAX || need > ARENA_MAX)
        return fail(t, SONA_E_NOMEM, "%s: %u steps of %u + %u values are more than a trajectory holds",
                    fn, steps, activations_len, attention_len);
    if (!grow_index((void **)&t->steps, &t->step_cap, t->step_count, steps, sizeof *t->steps, 1) ||
        (need > t->arena_cap && !arena_resize(t, need)))
        return fail(t, SONA_E_NOMEM, "%s: out of memory for %u steps", fn, steps);
    return SONA_OK;
}

sona_status sona_trajectory_add_step(sona_trajectory *t, const float *activations,
                                     uint32_t activations_len, const float *attention,
                                     uint32_t attention_len, float reward, int32_t layer)
{
    static const char fn[] = "sona_trajectory_add_step";
    sona_status st = check_open(t, fn);
    if (st != SONA_OK)
        return st;
    if (!activations || (attention_len > 0 && !attention))
        return fail(t, SONA_E_NULL, "%s: activations (and attention when its length is > 0) are required", fn);
    if (activations_len == 0)
        return fail(t, SONA_E_INVALID, "%s: activations_len is 0", fn);
    if (layer < SONA_LAYER_NONE)
        return fail(t, SONA_E_INVALID, "%s: layer %d is neither >= 0 nor SONA_LAYER_NONE", fn, layer);
    if (!isfinite(reward))
        return fail(t, SONA_E_NONFINITE, "%s: reward is NaN or Inf", fn);
    if (!grow_index((void **)&t->steps, &t->step_cap, t->step_count, 1, sizeof *t->steps, 0))
        return fail(t, SONA_E_NOMEM, "%s: out of memory", fn);

    /* Encode both vectors past the committed end (the encoding checks them as it goes) and
     * commit only when both are accepted: a refused step leaves nothing behind. Exactly what
     * the step takes is reserved, so a trimmed pooled trajectory refills without a realloc. */
    const size_t all_bytes = step_bytes(t, activations_len, attention_len);
    const size_t act_off = arena_reserve(t, all_bytes);
    if (act_off == SIZE_MAX)
        return fail(t, SONA_E_NOMEM, "%s: out of memory for a step of %zu bytes", fn, all_bytes);
    const size_t attn_off = attn_offset(t, act_off, activations_len);
    if (!sona_storage_encode(t->storage, activations, activations_len, t->arena + act_off) ||
        (attention_len && !sona_storage_encode(t->storage, attention, attention_len, t->arena + attn_off)))
        return fail(t, SONA_E_NONFINITE, "%s: NaN or Inf in activations or attention%s", fn,
                    t->storage == SONA_STORAGE_F16 ? " (or a value beyond the F16 range)" : "");

    t->arena_len = (uint32_t)(act_off + all_bytes);
    t->steps[t->step_count++] = (step_rec){.off = (uint32_t)act_off,
                                           .act_len = activations_len,
                                           .attn_len = attention_len,
                                           .reward = reward,
                                           .layer = layer};
    return SONA_OK;
}

/* Copies a string into the arena; returns its offset or SIZE_MAX when out of memory. */
static size_t store_string(sona_trajectory *t, const char *s)
{
    const size_t n = strlen(s) + 1;
    const size_t off = arena_reserve(t, n);
    if (off == SIZE_MAX)
        return SIZE_MAX;
    memcpy(t->arena + off, s, n);
    t->arena_len = (uint32_t)(off + n);
    return off;
}

sona_status sona_trajectory_set_route(sona_trajectory *t, const char *route)
{
    static const char fn[] = "sona_trajectory_set_route";
    sona_status st = check_open(t, fn);
    if (st != SONA_OK)
        return st;
    if (!route)
        return fail(t, SONA_E_NULL, "%s: route is NULL", fn);
    const size_t off = store_string(t, route);
    if (off == SIZE_MAX)
        return fail(t, SONA_E_NOMEM, "%s: out of memory", fn);
    t->route_off = (uint32_t)off;
    return SONA_OK;
}

sona_status sona_trajectory_add_context(sona_trajectory *t, const char *context)
{
    static const char fn[] = "sona_trajectory_add_context";
    sona_status st = check_open(t, fn);
    if (st != SONA_OK)
        return st;
    if (!context)
        return fail(t, SONA_E_NULL, "%s: context is NULL", fn);
    if (!grow_index((void **)&t->contexts, &t->context_cap, t->context_count, 1, sizeof *t->contexts, 0))
        return fail(t, SONA_E_NOMEM, "%s: out of memory", fn);
    const size_t off = store_string(t, context);
    if (off == SIZE_MAX)
        return fail(t, SONA_E_NOMEM, "%s: out of memory", fn);
    t->contexts[t->context_count++] = (uint32_t)off;
    return SONA_OK;
}

/* Gives back the unused tails of the arena and the step index. Best effort: a failed shrink
 * keeps the larger block, which is still valid. */
static void trim_to_fit(sona_trajectory *t)
{
    if (t->arena_len < t->arena_cap)
        arena_resize(t, t->arena_len);
    if (t->step_count > 0 && t->step_count < t->step_cap) {
        step_rec *p = realloc(t->steps, (size_t)t->step_count * sizeof *t->steps);
        if (p) {
            t->steps = p;
            t->step_cap = t->step_count;
        }
    }
}

sona_status sona_trajectory_end(sona_trajectory *t, float final_quality)
{
    static const char fn[] = "sona_trajectory_end";
    sona_status st = check_open(t, fn);
    if (st != SONA_OK)
        return st;
    if (!isfinite(final_quality))
        return fail(t, SONA_E_NONFINITE, "%s: final quality is NaN or Inf", fn);
    const uint64_t now = sona_monotonic_us();
    t->latency_us = now > t->start_us ? now - t->start_us : 0;
    t->quality = final_quality;
    t->ended = 1;
    trim_to_fit(t);
    return SONA_OK;
}

/* ---- accessors ------------------------------------------------------------------------- */

uint64_t sona_trajectory_id(const sona_trajectory *t) { return t ? t->id : 0; }
sona_storage sona_trajectory_storage(const sona_trajectory *t) { return t ? t->storage : SONA_STORAGE_F32; }
int sona_trajectory_ended(const sona_trajectory *t) { return t ? t->ended : 0; }
uint32_t sona_trajectory_dim(const sona_trajectory *t) { return t ? t->dim : 0; }
uint32_t sona_trajectory_step_count(const sona_trajectory *t) { return t ? t->step_count : 0; }
float sona_trajectory_quality(const sona_trajectory *t) { return t ? t->quality : NAN; }
uint64_t sona_trajectory_latency_us(const sona_trajectory *t) { return t ? t->latency_us : 0; }
uint64_t sona_trajectory_start_us(const sona_trajectory *t) { return t ? t->start_us : 0; }

/* Decodes len values stored at arena offset off into out[cap]. */
static sona_status copy_out(const sona_trajectory *t, size_t off, uint32_t len, float *out, uint32_t cap,
                            const char *fn, const char *what)
{
    if (cap < len)
        return fail(NULL, SONA_E_SIZE, "%s: %s has %u values, the buffer room for %u", fn, what, len, cap);
    if (len)
        sona_storage_decode(t->storage, t->arena + off, len, out);
    return SONA_OK;
}

sona_status sona_trajectory_query(const sona_trajectory *t, float *out, uint32_t cap)
{
    static const char fn[] = "sona_trajectory_query";
    if (!t || !out)
        return fail(NULL, SONA_E_NULL, "%s: trajectory and out are required", fn);
    return copy_out(t, 0, t->dim, out, cap, fn, "the query");
}

/* Step i, or NULL (message set) when t is NULL or i is out of range. */
static const step_rec *step_at(const sona_trajectory *t, uint32_t i, const char *fn)
{
    if (!t) {
        fail(NULL, SONA_E_NULL, "%s: trajectory is NULL", fn);
        return NULL;
    }
    if (i >= t->step_count) {
        fail(NULL, SONA_E_INVALID, "%s: step %u of %u", fn, i, t->step_count);
        return NULL;
    }
    return &t->steps[i];
}

sona_status sona_trajectory_get_step(const sona_trajectory *t, uint32_t i, sona_trajectory_step *out)
{
    static const char fn[] = "sona_trajectory_get_step";
    if (!out)
        return fail(NULL, SONA_E_NULL, "%s: out is NULL", fn);
    const step_rec *s = step_at(t, i, fn);
    if (!s)
        return t ? SONA_E_INVALID : SONA_E_NULL;
    *out = (sona_trajectory_step){.activations_len = s->act_len,
                                  .attention_len = s->attn_len,
                                  .reward = s->reward,
                                  .layer = s->layer};
    return SONA_OK;
}

sona_status sona_trajectory_step_activations(const sona_trajectory *t, uint32_t i, float *out, uint32_t cap)
{
    static const char fn[] = "sona_trajectory_step_activations";
    const step_rec *s = step_at(t, i, fn);
    if (!s)
        return t ? SONA_E_INVALID : SONA_E_NULL;
    if (!out)
        return fail(NULL, SONA_E_NULL, "%s: out is NULL", fn);
    return copy_out(t, s->off, s->act_len, out, cap, fn, "the step's activations");
}

sona_status sona_trajectory_step_attention(const sona_trajectory *t, uint32_t i, float *out, uint32_t cap)
{
    static const char fn[] = "sona_trajectory_step_attention";
    const step_rec *s = step_at(t, i, fn);
    if (!s)
        return t ? SONA_E_INVALID : SONA_E_NULL;
    if (!out && s->attn_len)
        return fail(NULL, SONA_E_NULL, "%s: out is NULL", fn);
    return copy_out(t, attn_offset(t, s->off, s->act_len), s->attn_len, out, cap, fn, "the step's attention");
}

float sona_trajectory_step_reward(const sona_trajectory *t, uint32_t i)
{
    return t && i < t->step_count ? t->steps[i].reward : NAN;
}

int32_t sona_trajectory_step_layer(const sona_trajectory *t, uint32_t i)
{
    return t && i < t->step_count ? t->steps[i].layer : SONA_LAYER_NONE;
}

const char *sona_trajectory_route(const sona_trajectory *t)
{
    return t && t->route_off != NO_ROUTE ? (const char *)t->arena + t->route_off : NULL;
}

uint32_t sona_trajectory_context_count(const sona_trajectory *t) { return t ? t->context_count : 0; }

const char *sona_trajectory_context(const sona_trajectory *t, uint32_t i)
{
    return t && i < t->context_count ? (const char *)t->arena + t->contexts[i] : NULL;
}

/* ---- as bytes (core/memory/trajectory_internal.h) ---------------------------------------------- */

#define NO_ROUTE_LEN UINT32_MAX
#define STEP_HEADER_BYTES 16u

_Static_assert(SONA_HOST_LITTLE_ENDIAN, "trajectory vectors are written as stored: a big-endian host would "
                                        "need to swap them per storage format");

void sona_trajectory_write(const sona_trajectory *t, sona_wbuf *w)
{
    const char *route = sona_trajectory_route(t);
    sona_wbuf_u64(w, t->id);
    sona_wbuf_u32(w, (uint32_t)t->storage);
    sona_wbuf_u32(w, t->dim);
    sona_wbuf_f32(w, t->quality);
    sona_wbuf_u32(w, t->step_count);
    sona_wbuf_u64(w, t->latency_us);
    sona_wbuf_u32(w, t->context_count);
    sona_wbuf_u32(w, route ? (uint32_t)strlen(route) : NO_ROUTE_LEN);
    for (uint32_t i = 0; i < t->step_count; i++) {
        const step_rec *s = &t->steps[i];
        sona_wbuf_u32(w, s->act_len);
        sona_wbuf_u32(w, s->attn_len);
        sona_wbuf_f32(w, s->reward);
        sona_wbuf_u32(w, (uint32_t)s->layer);
    }
    /* The encoded vectors go out as the arena holds them: little-endian, as the file wants, on
     * every host libsona builds for (see the assertion below). */
    sona_wbuf_put(w, t->arena, sona_storage_bytes(t->storage, t->dim));
    for (uint32_t i = 0; i < t->step_count; i++) {
        const step_rec *s = &t->steps[i];
        sona_wbuf_put(w, t->arena + s->off, sona_storage_bytes(t->storage, s->act_len));
        sona_wbuf_put(w, t->arena + attn_offset(t, s->off, s->act_len), sona_storage_bytes(t->storage, s->attn_len));
    }
    if (route)
        sona_wbuf_put(w, route, strlen(route));
    for (uint32_t i = 0; i < t->context_count; i++) {
        const char *c = sona_trajectory_context(t, i);
        sona_wbuf_u32(w, (uint32_t)strlen(c));
        sona_wbuf_put(w, c, strlen(c));
    }
}

/* Copies n encoded values from r to arena offset off (reserved) and checks that they decode to
 * finite values (into scratch, room for n). */
static sona_status read_vector(sona_trajectory *t, sona_rbuf *r, size_t off, uint32_t n, float *scratch)
{
    static const char fn[] = "sona_trajectory_read";
    if (!sona_rbuf_get(r, t->arena + off, sona_storage_bytes(t->storage, n)))
        return fail(NULL, SONA_E_CORRUPT, "%s: the vectors are truncated", fn);
    sona_storage_decode(t->storage, t->arena + off, n, scratch);
    if (!sona_all_finite(scratch, n))
        return fail(NULL, SONA_E_CORRUPT, "%s: a vector decodes to NaN or Inf", fn);
    return SONA_OK;
}

/* Copies a string of len bytes from r into the arena, at *off. */
static sona_status read_string(sona_trajectory *t, sona_rbuf *r, uint32_t len, uint32_t *off)
{
    static const char fn[] = "sona_trajectory_read";
    if (!sona_rbuf_has(r, len, 1))
        return fail(NULL, SONA_E_CORRUPT, "%s: a string is truncated", fn);
    const size_t at = arena_reserve(t, (size_t)len + 1);
    if (at == SIZE_MAX)
        return fail(NULL, SONA_E_NOMEM, "%s: out of memory for a string of %u bytes", fn, len);
    sona_rbuf_get(r, t->arena + at, len);
    t->arena[at + len] = '\0';
    if (memchr(t->arena + at, '\0', len))
        return fail(NULL, SONA_E_CORRUPT, "%s: a string holds a zero byte", fn);
    t->arena_len = (uint32_t)(at + len + 1);
    *off = (uint32_t)at;
    return SONA_OK;
}

/* The body of sona_trajectory_read, filling t (destroyed by the caller on failure). */
static sona_status read_into(sona_trajectory *t, sona_rbuf *r)
{
    static const char fn[] = "sona_trajectory_read";
    t->id = sona_rbuf_u64(r);
    t->storage = (sona_storage)sona_rbuf_u32(r);
    t->dim = sona_rbuf_u32(r);
    t->quality = sona_rbuf_f32(r);
    const uint32_t steps = sona_rbuf_u32(r);
    t->latency_us = sona_rbuf_u64(r);
    const uint32_t contexts = sona_rbuf_u32(r), route_len = sona_rbuf_u32(r);
    if (r->bad)
        return fail(NULL, SONA_E_CORRUPT, "%s: the record is truncated", fn);
    if (!sona_storage_valid(t->storage) || t->dim == 0 || !isfinite(t->quality))
        return fail(NULL, SONA_E_CORRUPT, "%s: bad storage format, width or final quality", fn);
    if (!sona_rbuf_has(r, steps, STEP_HEADER_BYTES))
        return fail(NULL, SONA_E_CORRUPT, "%s: the step table is truncated", fn);
    if (steps && !(t->steps = malloc((size_t)steps * sizeof *t->steps)))
        return fail(NULL, SONA_E_NOMEM, "%s: out of memory for %u steps", fn, steps);
    t->step_cap = steps;
    /* Every length is checked against the bytes left before anything of that size is allocated:
     * the query's, then each step's as the sum grows (so it cannot wrap). */
    uint64_t encoded = sona_storage_bytes(t->storage, t->dim);
    if (!sona_rbuf_has(r, encoded, 1))
        return fail(NULL, SONA_E_CORRUPT, "%s: the vectors are truncated", fn);
    uint32_t widest = t->dim;
    for (uint32_t i = 0; i < steps; i++) {
        step_rec *s = &t->steps[i];
        s->act_len = sona_rbuf_u32(r);
        s->attn_len = sona_rbuf_u32(r);
        s->reward = sona_rbuf_f32(r);
        s->layer = (int32_t)sona_rbuf_u32(r);
        if (s->act_len == 0 || !isfinite(s->reward) || s->layer < SONA_LAYER_NONE)
            return fail(NULL, SONA_E_CORRUPT, "%s: step %u: zero activations, non-finite reward or bad layer", fn, i);
        encoded += sona_storage_bytes(t->storage, s->act_len) + sona_storage_bytes(t->storage, s->attn_len);
        if (!sona_rbuf_has(r, encoded, 1))
            return fail(NULL, SONA_E_CORRUPT, "%s: the vectors are truncated", fn);
        widest = s->act_len > widest ? s->act_len : widest;
        widest = s->attn_len > widest ? s->attn_len : widest;
    }
    float *scratch = malloc((size_t)widest * sizeof *scratch);
    if (!scratch)
        return fail(NULL, SONA_E_NOMEM, "%s: out of memory", fn);
    sona_status st = SONA_OK;
    const size_t query_bytes = sona_storage_bytes(t->storage, t->dim);
    if (arena_reserve(t, query_bytes) == SIZE_MAX)
        st = fail(NULL, SONA_E_NOMEM, "%s: out of memory for a %u-wide query", fn, t->dim);
    else if ((st = read_vector(t, r, 0, t->dim, scratch)) == SONA_OK)
        t->arena_len = (uint32_t)query_bytes;
    for (uint32_t i = 0; i < steps && st == SONA_OK; i++) {
        step_rec *s = &t->steps[i];
        const size_t all_bytes = step_bytes(t, s->act_len, s->attn_len), off = arena_reserve(t, all_bytes);
        if (off == SIZE_MAX)
            st = fail(NULL, SONA_E_NOMEM, "%s: out of memory for a step of %zu bytes", fn, all_bytes);
        else if ((st = read_vector(t, r, off, s->act_len, scratch)) == SONA_OK &&
                 (st = read_vector(t, r, attn_offset(t, off, s->act_len), s->attn_len, scratch)) == SONA_OK) {
            s->off = (uint32_t)off;
            t->arena_len = (uint32_t)(off + all_bytes);
            t->step_count++;
        }
    }
    free(scratch);
    if (st != SONA_OK)
        return st;
    if (route_len != NO_ROUTE_LEN && (st = read_string(t, r, route_len, &t->route_off)) != SONA_OK)
        return st;
    if (!sona_rbuf_has(r, contexts, sizeof(uint32_t)))
        return fail(NULL, SONA_E_CORRUPT, "%s: the context strings are truncated", fn);
    if (contexts && !(t->contexts = malloc((size_t)contexts * sizeof *t->contexts)))
        return fail(NULL, SONA_E_NOMEM, "%s: out of memory for %u context strings", fn, contexts);
    t->context_cap = contexts;
    for (uint32_t i = 0; i < contexts; i++) {
        if ((st = read_string(t, r, sona_rbuf_u32(r), &t->contexts[i])) != SONA_OK)
            return st;
        t->context_count++;
    }
    t->ended = 1;
    trim_to_fit(t);
    return SONA_OK;
}

sona_status sona_trajectory_read(sona_rbuf *r, sona_trajectory **out)
{
    *out = NULL;
    sona_trajectory *t = calloc(1, sizeof *t);
    if (!t)
        return fail(NULL, SONA_E_NOMEM, "%s: out of memory", __func__);
    t->route_off = NO_ROUTE;
    const sona_status st = read_into(t, r);
    if (st != SONA_OK) {
        sona_trajectory_destroy(t);
        return st;
    }
    *out = t;
    return SONA_OK;
}
