/* Trajectories and their id source. A trajectory keeps every vector and string in one growable
 * byte arena (doubling), plus a small index of steps and of context strings, so recording a
 * step is two copies into memory that is usually already there. The arena starts inside the
 * trajectory's own allocation, sized for the query: a trajectory without steps is one malloc.
 * end() trims the arena and the step index to their exact size, since ended trajectories wait
 * in the buffer by the thousand and doubling would leave up to half of each unused. */
#include "sona/trajectory.h"

#include "core/clock.h"
#include "core/error.h"

#include <math.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- id source ------------------------------------------------------------------------- */

struct sona_id_source {
    _Atomic uint64_t next;
};

sona_status sona_id_source_create(uint64_t first, sona_id_source **out)
{
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "sona_id_source_create: out is NULL");
    sona_id_source *s = malloc(sizeof *s);
    if (!s) {
        *out = NULL;
        return sona_fail(NULL, SONA_E_NOMEM, "sona_id_source_create: out of memory");
    }
    atomic_init(&s->next, first);
    *out = s;
    return SONA_OK;
}

void sona_id_source_destroy(sona_id_source *ids) { free(ids); }

uint64_t sona_id_source_next(sona_id_source *ids)
{
    return atomic_fetch_add_explicit(&ids->next, 1, memory_order_relaxed);
}

uint64_t sona_id_source_peek(const sona_id_source *ids)
{
    return atomic_load_explicit(&((sona_id_source *)ids)->next, memory_order_relaxed);
}

void sona_id_source_set(sona_id_source *ids, uint64_t next)
{
    atomic_store_explicit(&ids->next, next, memory_order_relaxed);
}

/* ---- trajectory ------------------------------------------------------------------------ */

/* Arena offsets of vectors are 16-byte aligned (the arena itself comes from malloc). */
#define ARENA_ALIGN 16u

typedef struct step_rec {
    size_t act_off, attn_off; /* byte offsets into the arena */
    uint32_t act_len, attn_len;
    float reward;
    int32_t layer;
} step_rec;

struct sona_trajectory {
    uint64_t id;
    uint64_t start_us, latency_us;
    float quality;
    int ended;
    uint32_t dim;           /* the query sits at arena offset 0 */
    unsigned char *arena;   /* the inline tail below, or a heap block once grown */
    size_t arena_len, arena_cap;
    int arena_on_heap;
    step_rec *steps;
    uint32_t step_count, step_cap;
    size_t *contexts;       /* arena offsets of the context strings */
    uint32_t context_count, context_cap;
    size_t route_off;       /* SIZE_MAX: no route */
    sona_errbuf err;
    alignas(ARENA_ALIGN) unsigned char inline_arena[]; /* sized at begin() for the query */
};

static size_t align_up(size_t n) { return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1); }

/* Makes room for `bytes` more at the aligned end of the arena; returns that offset or SIZE_MAX.
 * Nothing is committed: the caller advances arena_len once the data is accepted. */
static size_t arena_reserve(sona_trajectory *t, size_t bytes)
{
    const size_t off = align_up(t->arena_len);
    if (bytes > SIZE_MAX / 2 - off)
        return SIZE_MAX;
    const size_t need = off + bytes;
    if (need > t->arena_cap) {
        size_t cap = t->arena_cap > 128 ? t->arena_cap : 128;
        while (cap < need)
            cap *= 2;
        unsigned char *p = t->arena_on_heap ? realloc(t->arena, cap) : malloc(cap);
        if (!p)
            return SIZE_MAX;
        if (!t->arena_on_heap)
            memcpy(p, t->arena, t->arena_len);
        t->arena = p;
        t->arena_cap = cap;
        t->arena_on_heap = 1;
    }
    return off;
}

/* Grows a small index array (steps, contexts) by doubling. */
static int grow_index(void **arr, uint32_t *cap, uint32_t count, size_t elem)
{
    if (count < *cap)
        return 1;
    const uint32_t ncap = *cap ? *cap * 2 : 8;
    if (ncap <= *cap)
        return 0;
    void *p = realloc(*arr, (size_t)ncap * elem);
    if (!p)
        return 0;
    *arr = p;
    *cap = ncap;
    return 1;
}

static const float *arena_floats(const sona_trajectory *t, size_t off)
{
    return (const float *)(const void *)(t->arena + off);
}

/* Starts t over with a fresh id and query; the arena is kept. On failure t is unchanged. */
static sona_status start(sona_trajectory *t, sona_id_source *ids, const float *query, uint32_t dim,
                         const char *fn)
{
    if (!ids || !query)
        return sona_fail(&t->err, SONA_E_NULL, "%s: ids and query are required", fn);
    if (dim == 0)
        return sona_fail(&t->err, SONA_E_INVALID, "%s: dim is 0", fn);
    if (!sona_all_finite(query, dim))
        return sona_fail(&t->err, SONA_E_NONFINITE, "%s: NaN or Inf in the query embedding", fn);
    const size_t saved_len = t->arena_len;
    t->arena_len = 0;
    if (arena_reserve(t, (size_t)dim * sizeof(float)) == SIZE_MAX) {
        t->arena_len = saved_len;
        return sona_fail(&t->err, SONA_E_NOMEM, "%s: out of memory for a %u-wide query", fn, dim);
    }
    memcpy(t->arena, query, (size_t)dim * sizeof(float));
    t->arena_len = (size_t)dim * sizeof(float);
    t->dim = dim;
    t->id = sona_id_source_next(ids);
    t->step_count = 0;
    t->context_count = 0;
    t->route_off = SIZE_MAX;
    t->ended = 0;
    t->quality = NAN;
    t->latency_us = 0;
    t->start_us = sona_monotonic_us();
    sona_clear_error(&t->err);
    return SONA_OK;
}

sona_status sona_trajectory_begin(sona_id_source *ids, const float *query, uint32_t dim,
                                  sona_trajectory **out)
{
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "sona_trajectory_begin: out is NULL");
    *out = NULL;
    const size_t inline_cap = query && dim ? align_up((size_t)dim * sizeof(float)) : 0;
    if (inline_cap > SIZE_MAX / 2)
        return sona_fail(NULL, SONA_E_NOMEM, "sona_trajectory_begin: a %u-wide query is too large", dim);
    sona_trajectory *t = malloc(sizeof *t + inline_cap);
    if (!t)
        return sona_fail(NULL, SONA_E_NOMEM, "sona_trajectory_begin: out of memory");
    memset(t, 0, sizeof *t); /* the inline arena is written before it is read */
    t->arena = t->inline_arena;
    t->arena_cap = inline_cap;
    sona_status st = start(t, ids, query, dim, "sona_trajectory_begin");
    if (st != SONA_OK) {
        sona_fail(NULL, st, "%s", t->err.msg);
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
        return sona_fail(NULL, SONA_E_NULL, "sona_trajectory_reset: trajectory is NULL");
    return start(t, ids, query, dim, "sona_trajectory_reset");
}

void sona_trajectory_destroy(sona_trajectory *t)
{
    if (!t)
        return;
    if (t->arena_on_heap)
        free(t->arena);
    free(t->steps);
    free(t->contexts);
    free(t);
}

const char *sona_trajectory_last_error(const sona_trajectory *t)
{
    return t ? t->err.msg : sona_last_error();
}

static sona_status check_open(sona_trajectory *t, const char *fn)
{
    if (!t)
        return sona_fail(NULL, SONA_E_NULL, "%s: trajectory is NULL", fn);
    if (t->ended)
        return sona_fail(&t->err, SONA_E_STATE, "%s: trajectory %llu has already ended", fn,
                         (unsigned long long)t->id);
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
        return sona_fail(&t->err, SONA_E_NULL, "%s: activations (and attention when its length is > 0) are required", fn);
    if (activations_len == 0)
        return sona_fail(&t->err, SONA_E_INVALID, "%s: activations_len is 0", fn);
    if (layer < SONA_LAYER_NONE)
        return sona_fail(&t->err, SONA_E_INVALID, "%s: layer %d is neither >= 0 nor SONA_LAYER_NONE", fn, layer);
    if (!isfinite(reward))
        return sona_fail(&t->err, SONA_E_NONFINITE, "%s: reward is NaN or Inf", fn);
    if (!grow_index((void **)&t->steps, &t->step_cap, t->step_count, sizeof *t->steps))
        return sona_fail(&t->err, SONA_E_NOMEM, "%s: out of memory", fn);

    /* Copy both vectors past the committed end, check the copies (already in cache), and
     * commit only when both are finite: a refused step leaves nothing behind. */
    const size_t act_bytes = (size_t)activations_len * sizeof(float);
    const size_t attn_bytes = (size_t)attention_len * sizeof(float);
    /* Exactly what the step takes (act_off is aligned, so attn_off = act_off + align_up(act_bytes)):
     * a pooled trajectory trimmed by its last end then refills without a realloc. */
    const size_t act_off = arena_reserve(t, align_up(act_bytes) + attn_bytes);
    if (act_off == SIZE_MAX)
        return sona_fail(&t->err, SONA_E_NOMEM, "%s: out of memory for a step of %zu bytes", fn,
                         act_bytes + attn_bytes);
    const size_t attn_off = align_up(act_off + act_bytes);
    memcpy(t->arena + act_off, activations, act_bytes);
    if (attn_bytes)
        memcpy(t->arena + attn_off, attention, attn_bytes);
    if (!sona_all_finite(arena_floats(t, act_off), activations_len) ||
        !sona_all_finite(arena_floats(t, attn_off), attention_len))
        return sona_fail(&t->err, SONA_E_NONFINITE, "%s: NaN or Inf in activations or attention", fn);

    t->arena_len = attn_off + attn_bytes;
    t->steps[t->step_count++] = (step_rec){.act_off = act_off,
                                           .attn_off = attn_off,
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
    t->arena_len = off + n;
    return off;
}

sona_status sona_trajectory_set_route(sona_trajectory *t, const char *route)
{
    static const char fn[] = "sona_trajectory_set_route";
    sona_status st = check_open(t, fn);
    if (st != SONA_OK)
        return st;
    if (!route)
        return sona_fail(&t->err, SONA_E_NULL, "%s: route is NULL", fn);
    const size_t off = store_string(t, route);
    if (off == SIZE_MAX)
        return sona_fail(&t->err, SONA_E_NOMEM, "%s: out of memory", fn);
    t->route_off = off;
    return SONA_OK;
}

sona_status sona_trajectory_add_context(sona_trajectory *t, const char *context)
{
    static const char fn[] = "sona_trajectory_add_context";
    sona_status st = check_open(t, fn);
    if (st != SONA_OK)
        return st;
    if (!context)
        return sona_fail(&t->err, SONA_E_NULL, "%s: context is NULL", fn);
    if (!grow_index((void **)&t->contexts, &t->context_cap, t->context_count, sizeof *t->contexts))
        return sona_fail(&t->err, SONA_E_NOMEM, "%s: out of memory", fn);
    const size_t off = store_string(t, context);
    if (off == SIZE_MAX)
        return sona_fail(&t->err, SONA_E_NOMEM, "%s: out of memory", fn);
    t->contexts[t->context_count++] = off;
    return SONA_OK;
}

/* Gives back the unused tails of the heap arena and the step index. Best effort: a failed
 * shrink keeps the larger block, which is still valid. */
static void trim_to_fit(sona_trajectory *t)
{
    if (t->arena_on_heap && t->arena_len > 0 && t->arena_len < t->arena_cap) {
        unsigned char *p = realloc(t->arena, t->arena_len);
        if (p) {
            t->arena = p;
            t->arena_cap = t->arena_len;
        }
    }
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
        return sona_fail(&t->err, SONA_E_NONFINITE, "%s: final quality is NaN or Inf", fn);
    const uint64_t now = sona_monotonic_us();
    t->latency_us = now > t->start_us ? now - t->start_us : 0;
    t->quality = final_quality;
    t->ended = 1;
    trim_to_fit(t);
    return SONA_OK;
}

/* ---- accessors ------------------------------------------------------------------------- */

uint64_t sona_trajectory_id(const sona_trajectory *t) { return t ? t->id : 0; }
int sona_trajectory_ended(const sona_trajectory *t) { return t ? t->ended : 0; }
uint32_t sona_trajectory_step_count(const sona_trajectory *t) { return t ? t->step_count : 0; }
float sona_trajectory_quality(const sona_trajectory *t) { return t ? t->quality : NAN; }
uint64_t sona_trajectory_latency_us(const sona_trajectory *t) { return t ? t->latency_us : 0; }
uint64_t sona_trajectory_start_us(const sona_trajectory *t) { return t ? t->start_us : 0; }

const float *sona_trajectory_query(const sona_trajectory *t, uint32_t *dim)
{
    if (dim)
        *dim = t ? t->dim : 0;
    return t ? arena_floats(t, 0) : NULL;
}

sona_status sona_trajectory_get_step(const sona_trajectory *t, uint32_t i, sona_trajectory_step *out)
{
    if (!t || !out)
        return sona_fail(NULL, SONA_E_NULL, "sona_trajectory_get_step: trajectory and out are required");
    if (i >= t->step_count)
        return sona_fail(NULL, SONA_E_INVALID, "sona_trajectory_get_step: step %u of %u", i, t->step_count);
    const step_rec *s = &t->steps[i];
    *out = (sona_trajectory_step){.activations = arena_floats(t, s->act_off),
                                  .activations_len = s->act_len,
                                  .attention = s->attn_len ? arena_floats(t, s->attn_off) : NULL,
                                  .attention_len = s->attn_len,
                                  .reward = s->reward,
                                  .layer = s->layer};
    return SONA_OK;
}

const float *sona_trajectory_step_activations(const sona_trajectory *t, uint32_t i, uint32_t *len)
{
    const int ok = t && i < t->step_count;
    if (len)
        *len = ok ? t->steps[i].act_len : 0;
    return ok ? arena_floats(t, t->steps[i].act_off) : NULL;
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
    return t && t->route_off != SIZE_MAX ? (const char *)t->arena + t->route_off : NULL;
}

uint32_t sona_trajectory_context_count(const sona_trajectory *t) { return t ? t->context_count : 0; }

const char *sona_trajectory_context(const sona_trajectory *t, uint32_t i)
{
    return t && i < t->context_count ? (const char *)t->arena + t->contexts[i] : NULL;
}
