/* SPDX-License-Identifier: MIT */
/* The ReasoningBank (include/sona/bank.h): a queue of trajectory embeddings, k-means extraction
 * into patterns, merge / prune / capacity, and an HNSW index kept in step with the patterns. */
#include "sona/bank.h"

#include "common/error.h"
#include "common/scratch.h"
#include "common/slotmap.h"
#include "core/patterns/bank_device.h"
#include "core/patterns/kmeans.h"
#include "dispatch/cost.h"
#include "dispatch/dispatch.h"
#include "dispatch/vecmath.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ROUTE_MAX 64 /* bytes kept of a route name, terminator included */
#define NO_ROUTE (-1)

typedef struct route_stat {
    uint32_t route; /* index into the bank's route names */
    uint64_t count;
    double quality_sum;
} route_stat;

/* A live pattern: sona_pattern's fields in 56 bytes (the public struct takes 64 with padding),
 * its route statistics apart (the engine's patterns have none). */
typedef struct pattern_rec {
    uint64_t id, size, access_count, created_ms, last_access_ms;
    double total_weight;
    float avg_quality;
    uint32_t routes; /* 1 + its list in the bank's route_lists, 0 when none */
} pattern_rec;

typedef struct route_list {
    route_stat *v;
    uint32_t n, cap;
} route_list;

/* Trajectories waiting for extraction: rows of dim floats and their scalars. */
typedef struct traj_queue {
    float *emb, *q, *w;
    int32_t *route; /* route name index or NO_ROUTE */
    uint32_t n, cap;
} traj_queue;

struct sona_bank {
    sona_bank_config cfg;
    pthread_mutex_t lock;         /* guards everything below */
    pthread_mutex_t extract_lock; /* one extraction at a time; k-means runs outside `lock` */
    const sona_backend *be;     /* the CPU backend */
    const sona_backend *device; /* an accelerator k-means may run on, or NULL (bank_device.h) */
    sona_index *index;
    traj_queue pend;
    /* Kept between extractions (common/scratch.h's rule): the queue memory of the last
     * extraction when rows came meanwhile (empty; the next one's pending queue; touched under
     * both locks), its arrays and its k-means scratch (under extract_lock). */
    traj_queue spare;
    sona_scratch extract_mem, kmeans_mem;
    sona_scratch search_mem; /* a batched exact search's patterns and queries (under lock) */
    /* live patterns, dense; their centroids live in the index only (one copy) */
    pattern_rec *pats;
    uint32_t npat, pat_cap;
    sona_slotmap by_id; /* pattern id -> position (keys: pats[].id) */
    route_list *rlists; /* per pattern with routes; freed ones are listed in rl_free */
    uint32_t nrlists, rlists_cap, *rl_free, nfree;
    uint64_t next_id;
    char **route_names;
    uint32_t nroutes, routes_cap;
    sona_bank_stats stats;
    sona_errbuf err;
};

static sona_status search_locked(sona_bank *b, const float *query, uint32_t k, uint64_t *ids,
                                 float *sims, uint32_t *found);

/* ---- the trajectory queue ---------------------------------------------------------------- */

static void queue_free(traj_queue *tq)
{
    free(tq->emb);
    free(tq->q);
    free(tq->w);
    free(tq->route);
    *tq = (traj_queue){0};
}

#define QUEUE_MIN_ROWS 256 /* a queue's first capacity */

/* Room for need rows (capacity grows by common/scratch.h's step, up to limit). A failure leaves the
 * rows in place. */
static sona_status queue_reserve(traj_queue *tq, uint32_t dim, uint32_t need, uint32_t limit)
{
    if (need <= tq->cap)
        return SONA_OK;
    const size_t grown = tq->cap ? sona_scratch_grown(tq->cap, need)
                                 : need > QUEUE_MIN_ROWS ? need : QUEUE_MIN_ROWS;
    uint32_t cap = grown > limit ? limit : (uint32_t)grown;
    float *e = realloc(tq->emb, (size_t)cap * dim * sizeof *e);
    if (!e)
        return SONA_E_NOMEM;
    tq->emb = e;
    float *q = realloc(tq->q, cap * sizeof *q);
    if (!q)
        return SONA_E_NOMEM;
    tq->q = q;
    float *w = realloc(tq->w, cap * sizeof *w);
    if (!w)
        return SONA_E_NOMEM;
    tq->w = w;
    int32_t *r = realloc(tq->route, cap * sizeof *r);
    if (!r)
        return SONA_E_NOMEM;
    tq->route = r;
    tq->cap = cap;
    return SONA_OK;
}

/* Keeps the memory of an extracted queue of used rows for the next extraction, by the rule of
 * common/scratch.h (always at the first capacity, and after an empty extraction): emptied, as the
 * pending queue when that has none (no rows came meanwhile: one queue, not two), else as the
 * spare the next extraction swaps in. Returns what is not kept, for the caller to free outside
 * the lock. Caller holds both locks. */
static traj_queue queue_recycle(sona_bank *b, traj_queue *taken, uint32_t used)
{
    traj_queue unkept = {0};
    if (used && !sona_scratch_keeps(taken->cap, used > QUEUE_MIN_ROWS ? used : QUEUE_MIN_ROWS)) {
        unkept = *taken;
    } else {
        taken->n = 0;
        *(b->pend.cap ? &b->spare : &b->pend) = *taken;
    }
    *taken = (traj_queue){0};
    return unkept;
}

/* Appends src's rows to dst. */
static sona_status queue_append(traj_queue *dst, const traj_queue *src, uint32_t dim)
{
    sona_status st = queue_reserve(dst, dim, dst->n + src->n, UINT32_MAX);
    if (st != SONA_OK)
        return st;
    memcpy(dst->emb + (size_t)dst->n * dim, src->emb, (size_t)src->n * dim * sizeof *src->emb);
    memcpy(dst->q + dst->n, src->q, src->n * sizeof *src->q);
    memcpy(dst->w + dst->n, src->w, src->n * sizeof *src->w);
    memcpy(dst->route + dst->n, src->route, src->n * sizeof *src->route);
    dst->n += src->n;
    return SONA_OK;
}

/* ---- lifetime ---------------------------------------------------------------------------- */

static uint64_t realtime_ms(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t now_ms(const sona_bank *b) { return b->cfg.clock_ms(b->cfg.clock_ctx); }

void sona_bank_config_default(sona_bank_config *cfg, uint32_t dim)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof *cfg);
    cfg->dim = dim;
    cfg->k_clusters = 50;
    cfg->max_iterations = 100;
    cfg->tolerance = 1e-4f;
    cfg->merge_threshold = 0.95f;
    cfg->merge_z = 4.0f;
    cfg->rows_per_cluster = 3;
    cfg->min_cluster_size = 1;
    cfg->min_quality = 0.0f;
    cfg->stale_after_ms = 0;
    cfg->capacity = 10000;
    cfg->max_pending = 100000;
    cfg->seed = 42;
    sona_index_config_default(&cfg->index, dim);
    cfg->index.track_access = 0;
    /* The index holds the only copy of each centroid: Q8 keeps 100,000 patterns of dim 256 in
     * about 29 MB instead of 102 MB of f32. */
    cfg->index.storage = SONA_STORAGE_Q8;
}

sona_status sona_bank_create(const sona_bank_config *cfg, sona_bank **out)
{
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "%s: out is NULL", __func__);
    *out = NULL;
    if (!cfg)
        return sona_fail(NULL, SONA_E_NULL, "%s: cfg is NULL", __func__);
    if (cfg->dim == 0 || cfg->k_clusters == 0 || cfg->max_iterations == 0 || cfg->capacity == 0 ||
        cfg->max_pending == 0)
        return sona_fail(NULL, SONA_E_INVALID,
                         "%s: dim, k_clusters, max_iterations, capacity and "
                         "max_pending must be >= 1", __func__);
    if (cfg->capacity > (1u << 24))
        return sona_fail(NULL, SONA_E_INVALID,
                         "%s: capacity %u is over 2^24 (the index's node limit)", __func__,
                         cfg->capacity);
    if (!isfinite(cfg->tolerance) || !isfinite(cfg->merge_threshold) || !isfinite(cfg->min_quality) ||
        !isfinite(cfg->merge_z))
        return sona_fail(NULL, SONA_E_NONFINITE, "%s: NaN or Inf in tolerance, merge_threshold, "
                                                 "merge_z or min_quality", __func__);
    if (cfg->tolerance < 0.0f || cfg->merge_threshold < -1.0f || cfg->merge_threshold > 1.0f ||
        cfg->merge_z < 0.0f)
        return sona_fail(NULL, SONA_E_INVALID, "%s: tolerance must be >= 0, merge_threshold in "
                                               "-1..1, merge_z >= 0", __func__);
    sona_bank *b = calloc(1, sizeof *b);
    if (!b)
        return sona_fail(NULL, SONA_E_NOMEM, "%s: out of memory", __func__);
    b->cfg = *cfg;
    b->cfg.index.dim = cfg->dim;
    b->cfg.index.track_access = 0; /* the bank counts accesses itself */
    if (!b->cfg.clock_ms)
        b->cfg.clock_ms = realtime_ms;
    b->be = sona_cpu_backend();
    if (sona_env_backend()) /* SONA_BACKEND naming a device: extractions go there */
        b->device = sona_device_backend();
    b->next_id = 1;
    sona_status st = sona_index_create(&b->cfg.index, &b->index);
    if (st != SONA_OK) {
        free(b);
        return st; /* the index set the thread's message */
    }
    pthread_mutex_init(&b->lock, NULL);
    pthread_mutex_init(&b->extract_lock, NULL);
    *out = b;
    return SONA_OK;
}

void sona_bank_destroy(sona_bank *b)
{
    if (!b)
        return;
    sona_index_destroy(b->index);
    queue_free(&b->pend);
    queue_free(&b->spare);
    sona_scratch_free(&b->extract_mem);
    sona_scratch_free(&b->kmeans_mem);
    sona_scratch_free(&b->search_mem);
    for (uint32_t i = 0; i < b->nrlists; i++)
        free(b->rlists[i].v);
    free(b->rlists);
    free(b->rl_free);
    free(b->pats);
    sona_slotmap_free(&b->by_id);
    for (uint32_t i = 0; i < b->nroutes; i++)
        free(b->route_names[i]);
    free(b->route_names);
    pthread_mutex_destroy(&b->lock);
    pthread_mutex_destroy(&b->extract_lock);
    free(b);
}

const char *sona_bank_last_error(const sona_bank *b) { return b ? b->err.msg : sona_last_error(); }

/* The refusal of a call made without a bank (reported on the thread). */
static sona_status no_bank(const char *call)
{
    return sona_fail(NULL, SONA_E_NULL, "%s: bank is NULL", call);
}

/* The handle's message buffer, which const queries write too (under the lock). */
static sona_errbuf *err_of(const sona_bank *b) { return (sona_errbuf *)&b->err; }
const sona_bank_config *sona_bank_get_config(const sona_bank *b) { return b ? &b->cfg : NULL; }

/* ---- trajectories ------------------------------------------------------------------------ */

sona_status sona_bank_trajectory_embedding(uint32_t dim, const float *query, uint32_t steps,
                                           const float *activations, const float *rewards,
                                           float *out)
{
    const char *call = "sona_bank_trajectory_embedding";
    if (!out || (steps && (!activations || !rewards)))
        return sona_fail(NULL, SONA_E_NULL, "%s: out, or activations / rewards with steps, is NULL", call);
    if (dim == 0 || (!query && steps == 0))
        return sona_fail(NULL, SONA_E_INVALID, "%s: needs dim >= 1 and a query or steps", call);
    if ((query && !sona_all_finite(query, dim)) ||
        (steps && (!sona_all_finite(activations, (size_t)steps * dim) ||
                   !sona_all_finite(rewards, steps))))
        return sona_fail(NULL, SONA_E_NONFINITE, "%s: NaN or Inf in input", call);
    float *act = calloc(dim, sizeof *act);
    if (!act)
        return sona_fail(NULL, SONA_E_NOMEM, "%s: out of memory", call);
    int any_reward = 0;
    for (uint32_t t = 0; t < steps; t++)
        any_reward |= rewards[t] != 0.0f;
    for (uint32_t t = 0; t < steps; t++) {
        const float r = any_reward ? rewards[t] : 1.0f;
        const float *a = activations + (size_t)t * dim;
        for (uint32_t h = 0; h < dim; h++)
            act[h] += r * a[h];
    }
    sona_normalize(act, dim);
    if (query) {
        double qq = 0.0;
        for (uint32_t h = 0; h < dim; h++)
            qq += (double)query[h] * query[h];
        const double inv = qq > 0.0 ? 1.0 / sqrt(qq) : 0.0;
        for (uint32_t h = 0; h < dim; h++)
            act[h] += (float)(query[h] * inv);
    }
    /* out is written only when the embedding is accepted. */
    const int zero = sona_normalize(act, dim) == 0.0f;
    if (!zero)
        memcpy(out, act, (size_t)dim * sizeof *out);
    free(act);
    return zero ? sona_fail(NULL, SONA_E_INVALID, "%s: the embedding is the zero vector", call) : SONA_OK;
}

/* The index of route name r, interned on first use; NO_ROUTE for NULL; -2 when out of memory. */
static int32_t intern_route(sona_bank *b, const char *r)
{
    if (!r)
        return NO_ROUTE;
    char name[ROUTE_MAX];
    snprintf(name, sizeof name, "%s", r);
    for (uint32_t i = 0; i < b->nroutes; i++)
        if (!strcmp(b->route_names[i], name))
            return (int32_t)i;
    if (b->nroutes == b->routes_cap) {
        const uint32_t cap = b->routes_cap ? b->routes_cap * 2 : 16;
        char **names = realloc(b->route_names, cap * sizeof *names);
        if (!names)
            return -2;
        b->route_names = names;
        b->routes_cap = cap;
    }
    char *copy = strdup(name);
    if (!copy)
        return -2;
    b->route_names[b->nroutes] = copy;
    return (int32_t)b->nroutes++;
}

static sona_status check_row(sona_bank *b, const char *call, uint32_t row, const float *emb,
                             float quality, float weight)
{
    if (!sona_all_finite(emb, b->cfg.dim) || !isfinite(quality) || !isfinite(weight))
        return sona_fail(&b->err, SONA_E_NONFINITE, "%s: row %u has NaN or Inf", call, row);
    if (weight < 0.0f)
        return sona_fail(&b->err, SONA_E_INVALID, "%s: row %u has a negative weight", call, row);
    float ss = 0.0f;
    for (uint32_t t = 0; t < b->cfg.dim; t++)
        ss += emb[t] * emb[t];
    if (ss == 0.0f)
        return sona_fail(&b->err, SONA_E_INVALID, "%s: row %u is the zero vector", call, row);
    return SONA_OK;
}

sona_status sona_bank_add_batch(sona_bank *b, uint32_t n, const float *emb, uint32_t emb_dim,
                                const float *qualities, const float *weights,
                                const char *const *routes)
{
    const char *call = "sona_bank_add";
    if (!b)
        return no_bank(call);
    pthread_mutex_lock(&b->lock);
    sona_status st = SONA_OK;
    const uint32_t dim = b->cfg.dim;
    if (!emb || !qualities) {
        st = sona_fail(&b->err, SONA_E_NULL, "%s: embeddings or qualities is NULL", call);
        goto rejected;
    }
    if (emb_dim != dim) {
        st = sona_fail(&b->err, SONA_E_SIZE, "%s: embedding dim %u, the bank's is %u", call,
                       emb_dim, dim);
        goto rejected;
    }
    for (uint32_t i = 0; i < n && st == SONA_OK; i++)
        st = check_row(b, call, i, emb + (size_t)i * dim, qualities[i], weights ? weights[i] : 1.0f);
    if (st != SONA_OK)
        goto rejected;
    traj_queue *tq = &b->pend;
    if (tq->n > b->cfg.max_pending || n > b->cfg.max_pending - tq->n) {
        b->stats.trajectories_refused_full += n;
        st = sona_fail(&b->err, SONA_E_FULL, "%s: %u pending of at most %u, no room for %u more",
                       call, tq->n, b->cfg.max_pending, n);
        goto out;
    }
    if ((st = queue_reserve(tq, dim, tq->n + n, b->cfg.max_pending)) != SONA_OK) {
        st = sona_fail(&b->err, st, "%s: out of memory", call);
        goto out;
    }
    /* Intern every route first so that a failure adds nothing. */
    int32_t *rid = tq->route + tq->n;
    for (uint32_t i = 0; i < n; i++) {
        rid[i] = intern_route(b, routes ? routes[i] : NULL);
        if (rid[i] == -2) {
            st = sona_fail(&b->err, SONA_E_NOMEM, "%s: out of memory", call);
            goto out;
        }
    }
    memcpy(tq->emb + (size_t)tq->n * dim, emb, (size_t)n * dim * sizeof *emb);
    memcpy(tq->q + tq->n, qualities, n * sizeof *qualities);
    for (uint32_t i = 0; i < n; i++)
        tq->w[tq->n + i] = weights ? weights[i] : 1.0f;
    tq->n += n;
    b->stats.trajectories_added += n;
    goto out;
rejected:
    b->stats.trajectories_rejected += n ? n : 1;
out:
    pthread_mutex_unlock(&b->lock);
    return st;
}

sona_status sona_bank_add(sona_bank *b, const float *embedding, uint32_t dim, float quality,
                          float weight, const char *route)
{
    return sona_bank_add_batch(b, 1, embedding, dim, &quality, &weight, &route);
}

uint32_t sona_bank_pending(const sona_bank *b)
{
    if (!b)
        return 0;
    pthread_mutex_lock((pthread_mutex_t *)&b->lock);
    const uint32_t n = b->pend.n;
    pthread_mutex_unlock((pthread_mutex_t *)&b->lock);
    return n;
}

/* ---- patterns ---------------------------------------------------------------------------- */

static sona_status reserve_patterns(sona_bank *b, uint32_t need)
{
    if (need <= b->pat_cap)
        return SONA_OK;
    uint32_t cap = b->pat_cap ? b->pat_cap : 64;
    while (cap < need)
        cap *= 2;
    /* Never double past the capacity while the patterns fit in it: at the spec's 100k patterns,
     * doubling would leave 31 % of the records (and index nodes) unused. */
    if (need <= b->cfg.capacity && cap > b->cfg.capacity)
        cap = b->cfg.capacity;
    pattern_rec *p = realloc(b->pats, cap * sizeof *p);
    if (!p)
        return SONA_E_NOMEM;
    b->pats = p;
    b->pat_cap = cap;
    /* The index's nodes follow (deleted nodes of moved patterns grow it beyond, by half). */
    return sona_index_reserve(b->index, cap);
}

/* The position of pattern id, or SONA_SLOTMAP_EMPTY. */
static uint32_t pos_of(const sona_bank *b, uint64_t id)
{
    return sona_slotmap_get(&b->by_id, id, b->pats ? &b->pats->id : NULL, sizeof *b->pats);
}

static void to_info(const sona_bank *b, const pattern_rec *r, sona_pattern *p)
{
    *p = (sona_pattern){.id = r->id,
                        .size = r->size,
                        .total_weight = r->total_weight,
                        .avg_quality = r->avg_quality,
                        .access_count = r->access_count,
                        .created_ms = r->created_ms,
                        .last_access_ms = r->last_access_ms,
                        .route_count = r->routes ? b->rlists[r->routes - 1].n : 0};
}

/* Appends a pattern (room reserved by the caller) and indexes it. */
static sona_status add_pattern(sona_bank *b, const sona_pattern *info, const float *centroid,
                               uint32_t *pos)
{
    sona_status st = sona_index_insert(b->index, info->id, centroid);
    if (st != SONA_OK)
        return sona_fail(&b->err, st, "indexing pattern %llu: %s", (unsigned long long)info->id,
                         sona_index_last_error(b->index));
    b->pats[b->npat] = (pattern_rec){.id = info->id,
                                     .size = info->size,
                                     .access_count = info->access_count,
                                     .created_ms = info->created_ms,
                                     .last_access_ms = info->last_access_ms,
                                     .total_weight = info->total_weight,
                                     .avg_quality = info->avg_quality};
    if ((st = sona_slotmap_put(&b->by_id, info->id, b->npat, &b->pats->id, sizeof *b->pats)) != SONA_OK) {
        sona_index_remove(b->index, info->id);
        return sona_fail(&b->err, st, "out of memory");
    }
    *pos = b->npat++;
    return SONA_OK;
}

/* Removes the pattern at pos (the last one moves into its place). */
static void remove_pattern(sona_bank *b, uint32_t pos)
{
    const uint64_t id = b->pats[pos].id;
    sona_index_remove(b->index, id);
    sona_slotmap_del(&b->by_id, id, &b->pats->id, sizeof *b->pats);
    const uint32_t rl = b->pats[pos].routes;
    if (rl) { /* its list goes back to the pool (rl_free has room for every list) */
        free(b->rlists[rl - 1].v);
        b->rlists[rl - 1] = (route_list){0};
        b->rl_free[b->nfree++] = rl - 1;
    }
    const uint32_t last = --b->npat;
    if (pos != last) {
        b->pats[pos] = b->pats[last];
        /* replaces: never allocates */
        sona_slotmap_put(&b->by_id, b->pats[pos].id, pos, &b->pats->id, sizeof *b->pats);
    }
}

/* Adds count trajectories of summed quality quality_sum on route to pattern p; -1 when out of
 * memory (nothing changed). */
static int add_route_stat(sona_bank *b, pattern_rec *p, uint32_t route, uint64_t count, double quality_sum)
{
    if (!p->routes) {
        if (b->nfree == 0 && b->nrlists == b->rlists_cap) {
            const uint32_t cap = b->rlists_cap ? b->rlists_cap * 2 : 16;
            route_list *l = realloc(b->rlists, cap * sizeof *l);
            if (!l)
                return -1;
            b->rlists = l;
            uint32_t *f = realloc(b->rl_free, cap * sizeof *f);
            if (!f)
                return -1;
            b->rl_free = f;
            b->rlists_cap = cap;
        }
        const uint32_t i = b->nfree ? b->rl_free[--b->nfree] : b->nrlists++;
        b->rlists[i] = (route_list){0};
        p->routes = i + 1;
    }
    route_list *l = &b->rlists[p->routes - 1];
    for (uint32_t i = 0; i < l->n; i++) {
        if (l->v[i].route == route) {
            l->v[i].count += count;
            l->v[i].quality_sum += quality_sum;
            return 0;
        }
    }
    if (l->n == l->cap) {
        const uint32_t cap = l->cap ? l->cap * 2 : 4;
        route_stat *r = realloc(l->v, cap * sizeof *r);
        if (!r)
            return -1;
        l->v = r;
        l->cap = cap;
    }
    l->v[l->n++] = (route_stat){route, count, quality_sum};
    return 0;
}

static double pattern_value(const pattern_rec *p)
{
    return (double)p->avg_quality * log2(2.0 + (double)p->size + (double)p->access_count);
}

typedef struct ranked {
    double value;
    uint64_t id;
} ranked;

static int by_value(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    if (x->value != y->value)
        return x->value < y->value ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id; /* older (smaller id) goes first on ties */
}

/* Prunes low-quality and stale patterns, then evicts the lowest value above capacity. */
static sona_status prune_locked(sona_bank *b, uint32_t *pruned, uint32_t *evicted)
{
    const uint64_t now = now_ms(b);
    *pruned = *evicted = 0;
    for (uint32_t i = b->npat; i-- > 0;) {
        const pattern_rec *p = &b->pats[i];
        if (p->avg_quality < b->cfg.min_quality) {
            b->stats.patterns_pruned_quality++;
            remove_pattern(b, i);
            ++*pruned;
        } else if (b->cfg.stale_after_ms && now > p->last_access_ms &&
                   now - p->last_access_ms > b->cfg.stale_after_ms) {
            b->stats.patterns_pruned_stale++;
            remove_pattern(b, i);
            ++*pruned;
        }
    }
    if (b->npat <= b->cfg.capacity)
        return SONA_OK;
    ranked *r = malloc(b->npat * sizeof *r);
    if (!r)
        return sona_fail(&b->err, SONA_E_NOMEM, "capacity eviction: out of memory");
    const uint32_t n = b->npat, excess = b->npat - b->cfg.capacity;
    for (uint32_t i = 0; i < n; i++)
        r[i] = (ranked){pattern_value(&b->pats[i]), b->pats[i].id};
    qsort(r, n, sizeof *r, by_value);
    for (uint32_t i = 0; i < excess; i++)
        remove_pattern(b, pos_of(b, r[i].id));
    b->stats.patterns_evicted += excess;
    *evicted = excess;
    free(r);
    return SONA_OK;
}

sona_status sona_bank_prune(sona_bank *b, uint32_t *removed)
{
    if (!b)
        return no_bank("sona_bank_prune");
    pthread_mutex_lock(&b->lock);
    uint32_t pruned, evicted;
    sona_status st = prune_locked(b, &pruned, &evicted);
    b->stats.patterns = b->npat;
    pthread_mutex_unlock(&b->lock);
    if (removed)
        *removed = pruned + evicted;
    return st;
}

/* ---- extraction -------------------------------------------------------------------------- */

/* A cluster's summary before it meets the bank. */
typedef struct cluster_sum {
    uint64_t size;
    double weight, weighted_quality, quality_sum;
    double quality; /* weighted mean (the plain mean when all weights are 0) */
} cluster_sum;

/* Counts row i of tq into s (its quality left for settle_quality). */
static void add_row(cluster_sum *s, const traj_queue *tq, uint32_t i)
{
    s->size++;
    s->weight += tq->w[i];
    s->weighted_quality += (double)tq->w[i] * tq->q[i];
    s->quality_sum += tq->q[i];
}

/* s's quality from its sums (s->size > 0). */
static void settle_quality(cluster_sum *s)
{
    s->quality = s->weight > 0.0 ? s->weighted_quality / s->weight : s->quality_sum / (double)s->size;
}

static double sqdist(const float *a, const float *b, uint32_t dim)
{
    double s = 0.0;
    for (uint32_t t = 0; t < dim; t++) {
        const double d = (double)a[t] - b[t];
        s += d * d;
    }
    return s;
}

/* Fills cs[0..k-1] from the rows' assignment. */
static void summarise(const traj_queue *tq, uint32_t k, const int32_t *assign, cluster_sum *cs)
{
    memset(cs, 0, k * sizeof *cs);
    for (uint32_t i = 0; i < tq->n; i++)
        add_row(&cs[assign[i]], tq, i);
    for (uint32_t j = 0; j < k; j++)
        if (cs[j].size)
            settle_quality(&cs[j]);
}

/* An extraction's noise: how far a trajectory lies from the mean of its cluster. v is the
 * typical squared distance (the median over rows, so that a cluster k-means mixed from two
 * does not inflate it), spread the relative standard deviation of such squared distances
 * (sqrt(2 / d) for noise spread evenly over d dimensions, from the median absolute deviation).
 * v < 0: not known (no cluster of two or more rows). */
typedef struct noise_model {
    double v, spread;
} noise_model;

/* The value that would sit at position `at` of r[0..m-1] sorted (at < m), by selection (Hoare's
 * partition around the median of three, into the side holding `at`): linear on average where
 * sorting the rows took 3.6 % of a 5 000-row extraction. Reorders r. */
static double select_at(double *r, uint32_t m, uint32_t at)
{
    int64_t lo = 0, hi = (int64_t)m - 1;
    const int64_t want = at;
    while (lo < hi) {
        const double a = r[lo], b = r[lo + (hi - lo) / 2], c = r[hi];
        const double pivot = a < b ? (b < c ? b : a < c ? c : a) : (a < c ? a : b < c ? c : b);
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (r[i] < pivot)
                i++;
            while (r[j] > pivot)
                j--;
            if (i <= j) {
                const double t = r[i];
                r[i++] = r[j];
                r[j--] = t;
            }
        }
        /* r[lo..j] <= pivot <= r[i..hi]; anything between equals the pivot */
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            return r[want];
    }
    return r[want];
}

/* The lower median: what spoils these distances (rows of a mixed cluster, rows of a cluster
 * the bank does not know) only makes them larger, so with an even count the lower middle value
 * still holds when exactly half the rows are spoiled, where the mean of the two middle ones
 * does not (a batch of 10 rows of 4 groups, k = 3: k-means mixing 3 + 2 of them). */
static double lower_median_of(double *r, uint32_t m)
{
    return select_at(r, m, (m - 1) / 2);
}

/* The lower median and the relative spread (from the lower median absolute deviation) of
 * r[0..m-1], which it reorders; v < 0 when m is 0. */
static noise_model model_of(double *r, uint32_t m, uint32_t dim)
{
    noise_model nm = {-1.0, 0.0};
    if (m == 0)
        return nm;
    nm.v = lower_median_of(r, m);
    for (uint32_t i = 0; i < m; i++)
        r[i] = fabs(r[i] - nm.v);
    const double sd = 1.4826 * lower_median_of(r, m); /* the MAD's normal-consistent scale */
    nm.spread = nm.v > 0.0 ? sd / nm.v : 0.0;
    if (nm.spread < sqrt(2.0 / dim)) /* noise cannot be spread over more than dim dimensions */
        nm.spread = sqrt(2.0 / dim);
    return nm;
}

/* The extraction's noise, two ways, the smaller kept (a lower median is robust to up to half
 * the rows far, not to more, and each way has its own majority to fear):
 *  - against the clusters: each row's squared distance to its centroid, times n / (n - 1) for a
 *    cluster of n (its centroid is the mean of the rows it is measured against), clusters of one
 *    left out; too large when k-means had fewer clusters than the batch and mixed most rows;
 *  - against the patterns (when there are some): each row's squared distance to the pattern most
 *    similar to its cluster's centroid, over (1 + 1 / pattern size); too large when most rows
 *    are of clusters the bank does not know yet.
 * d2[i]: row i's squared distance to its centroid; near[j]: the position of the pattern most
 * similar to cluster j's centroid, or -1; r: n doubles of scratch, pv: dim floats. Caller holds
 * the lock. */
static noise_model noise_by_clusters(const sona_bank *b, const traj_queue *tq, const int32_t *assign,
                                     const cluster_sum *cs, const double *d2, double *r)
{
    uint32_t m = 0;
    for (uint32_t i = 0; i < tq->n; i++) {
        const uint64_t nj = cs[assign[i]].size;
        if (nj >= 2)
            r[m++] = d2[i] * (double)nj / (double)(nj - 1);
    }
    return model_of(r, m, b->cfg.dim);
}

static noise_model noise_by_patterns(sona_bank *b, const traj_queue *tq, uint32_t k, const int32_t *assign,
                                     const int32_t *near, double *r, float *pv)
{
    const uint32_t dim = b->cfg.dim;
    uint32_t m = 0;
    for (uint32_t j = 0; j < k; j++) {
        if (near[j] < 0 || sona_index_get_vector(b->index, b->pats[near[j]].id, pv) != SONA_OK)
            continue;
        const double scale = 1.0 + 1.0 / (double)b->pats[near[j]].size;
        for (uint32_t i = 0; i < tq->n; i++)
            if (assign[i] == (int32_t)j)
                r[m++] = sqdist(tq->emb + (size_t)i * dim, pv, dim) / scale;
    }
    return model_of(r, m, dim);
}

static noise_model smaller_noise(noise_model by_clusters, noise_model by_patterns)
{
    return by_patterns.v >= 0.0 && (by_clusters.v < 0.0 || by_patterns.v < by_clusters.v) ? by_patterns : by_clusters;
}

/* The squared distance from the mean of `size` rows of a cluster to a pattern of `psize` rows
 * under which both are taken for one cluster: its expected value under that hypothesis,
 * v (1/size + 1/psize), plus merge_z standard deviations. */
static double noise_bound(const sona_bank *b, const noise_model *nm, uint64_t size, uint64_t psize)
{
    const double expected = nm->v * (1.0 / (double)size + 1.0 / (double)psize);
    return expected * (1.0 + (double)b->cfg.merge_z * nm->spread);
}

enum { NO_MERGE, BY_DIRECTION, BY_NOISE };

/* Whether a cluster (centroid c, `size` rows; a single trajectory has size 1) merges into the
 * pattern at pos, its most similar (cosine sim): by direction (sim >= merge_threshold), or by
 * noise (squared distance within noise_bound). After BY_NOISE, pv (dim floats of scratch) holds
 * the pattern's centroid. */
static int merges(sona_bank *b, uint32_t pos, float sim, const float *c, uint64_t size, const noise_model *nm,
                  float *pv)
{
    if (sim >= b->cfg.merge_threshold)
        return BY_DIRECTION;
    if (b->cfg.merge_z <= 0.0f || nm->v < 0.0 || sona_index_get_vector(b->index, b->pats[pos].id, pv) != SONA_OK)
        return NO_MERGE;
    return sqdist(c, pv, b->cfg.dim) <= noise_bound(b, nm, size, b->pats[pos].size) ? BY_NOISE : NO_MERGE;
}

/* Merges cluster (centroid c, summary s) into the pattern at pos: the centroid becomes the
 * size-weighted mean, rounded by the index without bias (sona_index_blend), so a large pattern
 * absorbing many small clusters follows them instead of staying stuck on its storage grid. */
static sona_status merge_into(sona_bank *b, uint32_t pos, const float *c, const cluster_sum *s,
                              uint64_t now)
{
    pattern_rec *p = &b->pats[pos];
    const double old_n = (double)p->size, add_n = (double)s->size, tot = old_n + add_n;
    /* A failure (out of memory, or members cancelling out) keeps the old centroid; the counts
     * still merge, so nothing is counted twice. */
    const sona_status st = sona_index_blend(b->index, p->id, c, old_n, add_n);
    p->avg_quality = (float)((old_n * p->avg_quality + add_n * s->quality) / tot);
    p->size += s->size;
    p->total_weight += s->weight;
    p->last_access_ms = now;
    return st == SONA_OK || st == SONA_E_INVALID
               ? SONA_OK
               : sona_fail(&b->err, st, "sona_bank_extract: merging into pattern %llu: %s",
                           (unsigned long long)p->id, sona_index_last_error(b->index));
}

/* Cluster j of an extraction's rows, for the check that each of them could join a pattern. */
typedef struct members {
    const traj_queue *tq;
    const int32_t *assign;
    int32_t j;
} members;

/* Merges cluster (centroid c, summary s) whole into the pattern at pos, its most similar (cosine
 * sim), when merges() says so and, for a merge by noise with m given, each of the cluster's rows
 * m lists would also join that pattern alone (so that a cluster k-means mixed from a known and a
 * new one does not take the new one's rows into the known pattern): *target gets the pattern's
 * position, *st a merge failure. Caller holds the lock. */
static int cluster_merge_at(sona_bank *b, uint32_t pos, float sim, const float *c, const cluster_sum *s,
                            const noise_model *nm, const members *m, uint64_t now, float *pv, int32_t *target,
                            sona_status *st)
{
    const int how = merges(b, pos, sim, c, s->size, nm, pv);
    if (how == NO_MERGE)
        return 0;
    if (how == BY_NOISE && m) {
        const double bound = noise_bound(b, nm, 1, b->pats[pos].size);
        for (uint32_t i = 0; i < m->tq->n; i++)
            if (m->assign[i] == m->j && sqdist(m->tq->emb + (size_t)i * b->cfg.dim, pv, b->cfg.dim) > bound)
                return 0;
    }
    const sona_status mst = merge_into(b, pos, c, s, now);
    if (mst != SONA_OK)
        *st = mst;
    *target = (int32_t)pos;
    return 1;
}

/* cluster_merge_at with the pattern most similar to c, when there is one. */
static int cluster_merges(sona_bank *b, const float *c, const cluster_sum *s, const noise_model *nm, uint64_t now,
                          float *pv, int32_t *target, sona_status *st)
{
    uint64_t best;
    float sim;
    uint32_t found = 0;
    if (b->npat)
        search_locked(b, c, 1, &best, &sim, &found);
    return found && cluster_merge_at(b, pos_of(b, best), sim, c, s, nm, NULL, now, pv, target, st);
}

/* ---- the nearest pattern of many queries ------------------------------------------------- */

/* An HNSW search costs about as much as an exact scan of this many rows. Fitted to searches of
 * 2 000 queries on this project's development machine (dim 256, Q8, ef 50, M 16, random
 * patterns): a search cost a scan of 740 rows among 50 patterns, 3 800 among 1 000, 5 600 among
 * 10 000; this gives 2 700, 4 800 and 6 400, so exact scans win on the CPU up to about
 * 5 000 patterns (measured: 4 000 to 5 000). */
static double graph_search_rows(const sona_bank *b)
{
    const double decades = log10((double)b->npat);
    return 2.0 * b->cfg.index.ef_search * b->cfg.index.M * (decades > 1.0 ? decades : 1.0);
}

/* Where m queries against the patterns run exactly (knn_exact): on the CPU or device, as
 * sona_route picks, when that costs less than m graph searches, else NULL (the index). On a
 * device the patterns go up for the call, which the op's model counts as resident. */
static const sona_backend *exact_search_on(const sona_bank *b, const sona_backend *device, uint32_t m)
{
    const uint32_t dim = b->cfg.dim;
    const sona_knn_exact_args exact = {.m = m, .n = b->npat, .d = dim, .k = 1};
    const sona_backend *on = sona_route(SONA_OP_KNN_EXACT, &exact, device);
    double us = sona_cost_us(on, SONA_OP_KNN_EXACT, &exact);
    sona_cost_model cm;
    sona_cost_model_get(on, &cm);
    if (cm.transfer_gbs > 0.0)
        us += (double)b->npat * dim * sizeof(float) / (cm.transfer_gbs * 1e3);
    const sona_knn_exact_args graph = {.m = m, .n = (uint32_t)graph_search_rows(b), .d = dim, .k = 1};
    return us < sona_cost_us(b->be, SONA_OP_KNN_EXACT, &graph) ? on : NULL;
}

/* The pattern most similar to each query, rows[0..m-1] of Q (dim floats each): its position in
 * pats (-1 when the bank has none) and the cosine, into pos[row] and sim[row]. An exact search of
 * all at once where it pays (exact_search_on; the cosines with the stored centroids, as the
 * index's, and the true nearest, which a graph search may miss), else a graph search each; also
 * when the exact search fails (memory, the device). The caller holds the lock. */
static void nearest_patterns(sona_bank *b, const sona_backend *device, const float *Q, const uint32_t *rows,
                             uint32_t m, int32_t *pos, float *sim)
{
    const uint32_t dim = b->cfg.dim, npat = b->npat;
    const sona_backend *on = npat && m ? exact_search_on(b, device, m) : NULL;
    if (on) {
        size_t bytes = 0;
        const size_t at_P = sona_scratch_push(&bytes, (size_t)npat * dim * sizeof(float));
        const size_t at_Q = sona_scratch_push(&bytes, (size_t)m * dim * sizeof(float));
        const size_t at_idx = sona_scratch_push(&bytes, m * sizeof(int32_t));
        const size_t at_sim = sona_scratch_push(&bytes, m * sizeof(float));
        char *mem = sona_scratch_get(&b->search_mem, bytes);
        sona_status st = mem ? SONA_OK : SONA_E_NOMEM;
        if (st == SONA_OK) {
            float *P = (float *)(void *)(mem + at_P), *Qm = (float *)(void *)(mem + at_Q);
            int32_t *idx = (int32_t *)(void *)(mem + at_idx);
            float *best = (float *)(void *)(mem + at_sim);
            for (uint32_t i = 0; i < npat && st == SONA_OK; i++)
                st = sona_index_get_vector(b->index, b->pats[i].id, P + (size_t)i * dim);
            for (uint32_t q = 0; q < m; q++)
                memcpy(Qm + (size_t)q * dim, Q + (size_t)rows[q] * dim, (size_t)dim * sizeof *Qm);
            const sona_knn_exact_args a = {.m = m, .n = npat, .d = dim, .k = 1, .Q = Qm, .P = P, .idx = idx, .sim = best};
            if (st == SONA_OK && (st = sona_op_run_host(on, SONA_OP_KNN_EXACT, &a, sona_op_run)) == SONA_OK)
                for (uint32_t q = 0; q < m; q++)
                    pos[rows[q]] = idx[q], sim[rows[q]] = best[q];
            sona_scratch_done(&b->search_mem, bytes);
        }
        if (st == SONA_OK)
            return;
    }
    for (uint32_t q = 0; q < m; q++) {
        const uint32_t row = rows[q];
        uint64_t best;
        uint32_t found = 0;
        pos[row] = -1;
        if (npat)
            search_locked(b, Q + (size_t)row * dim, 1, &best, &sim[row], &found);
        if (found)
            pos[row] = (int32_t)pos_of(b, best);
    }
}

/* Phase 2 of an extraction: the rows of the clusters that did not merge whole (target[j] == -2),
 * each tested alone against its most similar pattern (merges() with size 1; all searched at
 * once, against the bank as phase 1 left it). row_to[i] receives the position of the pattern row
 * i joins, or -1. Then each pattern's joiners merge into it as one group (mean, summed counts),
 * in pattern order. order, near_pos, near_sim: n each, scratch (near_* indexed by row). Returns the rows that joined;
 * *st gets a merge failure. Caller holds the lock. */
static uint32_t join_rows(sona_bank *b, const sona_backend *device, const traj_queue *tq, const int32_t *assign,
                          const int32_t *target, const noise_model *nm, uint64_t now, int32_t *row_to,
                          uint32_t *order, int32_t *near_pos, float *near_sim, float *pv, double *mean, float *gv,
                          sona_status *st)
{
    const uint32_t n = tq->n, dim = b->cfg.dim;
    uint32_t asked = 0, m = 0;
    for (uint32_t i = 0; i < n; i++) {
        row_to[i] = -1;
        if (target[assign[i]] == -2 && b->npat)
            order[asked++] = i;
    }
    nearest_patterns(b, device, tq->emb, order, asked, near_pos, near_sim);
    for (uint32_t a = 0; a < asked; a++) { /* order[m] is rewritten only once read (m <= a) */
        const uint32_t i = order[a];
        const int32_t pos = near_pos[i];
        if (pos >= 0 && merges(b, (uint32_t)pos, near_sim[i], tq->emb + (size_t)i * dim, 1, nm, pv) != NO_MERGE) {
            row_to[i] = pos;
            order[m++] = i;
        }
    }
    /* Group by pattern (insertion sort by position, rows in order within a pattern: m is small
     * next to the batch once patterns exist, and it keeps the result independent of qsort). */
    for (uint32_t a = 1; a < m; a++) {
        const uint32_t v = order[a];
        uint32_t c = a;
        while (c > 0 && row_to[order[c - 1]] > row_to[v])
            order[c] = order[c - 1], c--;
        order[c] = v;
    }
    for (uint32_t a = 0; a < m;) {
        const int32_t pos = row_to[order[a]];
        uint32_t e = a;
        cluster_sum g = {0};
        memset(mean, 0, (size_t)dim * sizeof *mean);
        for (; e < m && row_to[order[e]] == pos; e++) {
            const uint32_t i = order[e];
            const float *x = tq->emb + (size_t)i * dim;
            for (uint32_t t = 0; t < dim; t++)
                mean[t] += x[t];
            add_row(&g, tq, i);
        }
        settle_quality(&g);
        for (uint32_t t = 0; t < dim; t++)
            gv[t] = (float)(mean[t] / (double)g.size);
        const sona_status mst = merge_into(b, (uint32_t)pos, gv, &g, now);
        if (mst != SONA_OK)
            *st = mst;
        a = e;
    }
    return m;
}

/* A range of phase 3's row list: rows order[at .. at + len - 1]; whole: the k-means cluster it
 * is all of (its centroid and summary known), or -1. */
typedef struct row_range {
    uint32_t at, len;
    int32_t whole;
} row_range;

/* Phase 3 of an extraction settles ranges of rows (row indices rows[0..len-1]): the mean of a
 * range and its summary. acc: dim doubles of scratch. */
static void range_mean(const traj_queue *tq, const uint32_t *rows, uint32_t len, uint32_t dim, double *acc,
                       float *c, cluster_sum *s)
{
    memset(acc, 0, (size_t)dim * sizeof *acc);
    memset(s, 0, sizeof *s);
    for (uint32_t a = 0; a < len; a++) {
        const uint32_t i = rows[a];
        const float *x = tq->emb + (size_t)i * dim;
        for (uint32_t t = 0; t < dim; t++)
            acc[t] += x[t];
        add_row(s, tq, i);
    }
    for (uint32_t t = 0; t < dim; t++)
        c[t] = (float)(acc[t] / (double)len);
    settle_quality(s);
}

/* merge_z standard deviations, relative to v, of the mean squared distance of `count` (>= 2)
 * rows of one cluster to their mean. */
static double noise_margin(const sona_bank *b, const noise_model *nm, double count)
{
    return (double)b->cfg.merge_z * nm->spread / sqrt(count - 1.0);
}

/* Whether `count` rows whose squared distances to their mean sum to `sum` are more spread than
 * one cluster's noise: that sum over count - 1 above v by more than noise_margin. Never with
 * fewer than two rows or no noise estimate. */
static int beyond_noise(const sona_bank *b, const noise_model *nm, double sum, double count)
{
    if (count < 2.0 || nm->v < 0.0 || b->cfg.merge_z <= 0.0f)
        return 0;
    return sum / (count - 1.0) > nm->v * (1.0 + noise_margin(b, nm, count));
}

/* Whether the rows of a range (centroid c) are more spread than one cluster's noise
 * (beyond_noise; so k-means, short of clusters, mixed two). d2: the rows' squared distances to
 * c when known (a whole k-means cluster), else NULL. */
static int too_spread(const sona_bank *b, const traj_queue *tq, const uint32_t *rows, uint32_t len, const float *c,
                      const double *d2, const noise_model *nm)
{
    double sum = 0.0;
    for (uint32_t a = 0; a < len; a++)
        sum += d2 ? d2[rows[a]] : sqdist(tq->emb + (size_t)rows[a] * b->cfg.dim, c, b->cfg.dim);
    return beyond_noise(b, nm, sum, (double)len);
}

/* Splits a range in two by 2-means (centres seeded at the row farthest from c and the row
 * farthest from that one; Lloyd until stable, 32 rounds at most), reordering rows so that the
 * first part comes first; returns its length (0: no split). ca, cb: dim floats, acc: dim
 * doubles of scratch. */
static uint32_t split_range(const traj_queue *tq, uint32_t *rows, uint32_t len, uint32_t dim, const float *c,
                            float *ca, float *cb, double *acc)
{
    uint32_t fa = 0, fb = 0;
    double far = -1.0;
    for (uint32_t a = 0; a < len; a++) {
        const double d = sqdist(tq->emb + (size_t)rows[a] * dim, c, dim);
        if (d > far)
            far = d, fa = a;
    }
    memcpy(ca, tq->emb + (size_t)rows[fa] * dim, (size_t)dim * sizeof *ca);
    far = -1.0;
    for (uint32_t a = 0; a < len; a++) {
        const double d = sqdist(tq->emb + (size_t)rows[a] * dim, ca, dim);
        if (d > far)
            far = d, fb = a;
    }
    memcpy(cb, tq->emb + (size_t)rows[fb] * dim, (size_t)dim * sizeof *cb);
    uint32_t first = 0;
    for (int round = 0; round < 32; round++) {
        /* Partition in place: rows nearer ca (ties to ca) first. */
        uint32_t lo = 0, hi = len;
        while (lo < hi) {
            const float *x = tq->emb + (size_t)rows[lo] * dim;
            if (sqdist(x, ca, dim) <= sqdist(x, cb, dim)) {
                lo++;
            } else {
                const uint32_t t = rows[lo];
                rows[lo] = rows[--hi];
                rows[hi] = t;
            }
        }
        if (lo == 0 || lo == len)
            return 0;
        const int stable = round > 0 && lo == first;
        first = lo;
        cluster_sum unused;
        range_mean(tq, rows, first, dim, acc, ca, &unused);
        range_mean(tq, rows + first, len - first, dim, acc, cb, &unused);
        if (stable)
            break;
    }
    return first;
}

enum { COMBINE_MAX_CLUSTERS = 2048 }; /* k x k distances, 16 MiB at most */

/* Step 0's state: the clusters' scatters (their rows' squared distances to their centroids,
 * summed), squared norms and squared distances between centroids (dist[a * k + c], both
 * halves), and each cluster's best partner (the passing pair that adds the least spread). */
typedef struct combining {
    const sona_bank *b;
    const noise_model *nm;
    const cluster_sum *cs;
    uint32_t k;
    double *scatter, *norm2, *best_added;
    float *dist;
    uint32_t *best, *into;
} combining;

/* The spread that joining clusters a and c adds (n_a n_c / (n_a + n_c) times their centroids'
 * squared distance), or INFINITY when they must not join (see combine_clusters). */
static double join_cost(const combining *m, uint32_t a, uint32_t c)
{
    const double na = (double)m->cs[a].size, nc = (double)m->cs[c].size, n = na + nc, f = na / n;
    const double added = na * nc / n * (double)m->dist[(size_t)a * m->k + c];
    return f * (1.0 - f) >= noise_margin(m->b, m->nm, n) &&
                   !beyond_noise(m->b, m->nm, m->scatter[a] + m->scatter[c] + added, n)
               ? added
               : INFINITY;
}

static void find_partner(combining *m, uint32_t a)
{
    m->best_added[a] = INFINITY;
    for (uint32_t c = 0; c < m->k; c++) {
        if (c == a || !m->cs[c].size)
            continue;
        const double cost = join_cost(m, a, c);
        if (cost < m->best_added[a])
            m->best_added[a] = cost, m->best[a] = c;
    }
}

/* Step 0 of an extraction (include/sona/bank.h), one round: k-means asked for more clusters than
 * the batch holds splits clusters into parts, and parts of one cluster lie too far apart for the
 * noise bound (their means are not those of random halves), so each stayed a pattern of its own.
 * Two clusters become one when their rows together are no more spread than one cluster's noise
 * (beyond_noise: the test by which step 3 splits a range, so a combined pair is not split
 * again), by a test that could tell them apart were they two clusters a trajectory's typical
 * distance apart (squared distance v: in shares f and 1 - f such a pair adds f (1 - f) v to the
 * mean squared distance, which must reach the test's margin; clusters closer than that overlap
 * and may end in one pattern anyway). The pair that adds the least spread first, until no pair
 * passes. C, assign, cs and d2 follow (a combined cluster's centroid is the mean of its rows).
 * In rounds: the noise against the clusters (*nm, the smaller of it and against_patterns, which
 * stays as measured) comes from k-means' clusters, tighter than the clusters they are parts of
 * (over 1 000 rows of 4 clusters into 32, one round left 13 to 16); measured again on the
 * combined ones it lets the next round go on (4 to 6). The centroids' distances carry over from
 * round to round. Returns how many clusters went; none without the memory or with more than
 * COMBINE_MAX_CLUSTERS. resid: n doubles, acc: dim doubles of scratch. */
static uint32_t combine_clusters(const sona_bank *b, const traj_queue *tq, uint32_t k, float *C, int32_t *assign,
                                 cluster_sum *cs, double *d2, noise_model *nm, noise_model against_patterns,
                                 double *resid, double *acc)
{
    const uint32_t dim = b->cfg.dim;
    if (k < 2 || k > COMBINE_MAX_CLUSTERS || b->cfg.merge_z <= 0.0f)
        return 0;
    const sona_dot_fn dot = sona_dot_kernel();
    combining m = {.b = b, .nm = nm, .cs = cs, .k = k};
    m.scatter = malloc((size_t)k * 3 * sizeof(double));
    m.dist = malloc((size_t)k * k * sizeof *m.dist);
    m.best = malloc((size_t)k * 2 * sizeof(uint32_t));
    uint8_t *grew = calloc(k, 1);
    uint32_t gone = 0;
    if (!m.scatter || !m.dist || !m.best || !grew)
        goto out;
    m.norm2 = m.scatter + k;
    m.best_added = m.norm2 + k;
    m.into = m.best + k;
    for (uint32_t j = 0; j < k; j++)
        m.norm2[j] = dot(C + (size_t)j * dim, C + (size_t)j * dim, dim);
    /* Distances from norms and a dot product (the variant's kernel): the centroids' squared
     * distances are far above the float rounding of their norms here, and k^2 / 2 of them in
     * double cost as much as the k-means. */
    for (uint32_t a = 0; a < k; a++)
        for (uint32_t c = a + 1; c < k; c++) {
            const double d = m.norm2[a] + m.norm2[c] - 2.0 * dot(C + (size_t)a * dim, C + (size_t)c * dim, dim);
            m.dist[(size_t)a * k + c] = m.dist[(size_t)c * k + a] = d > 0.0 ? (float)d : 0.0f;
        }
    for (uint32_t round_gone = 1; round_gone && nm->v >= 0.0;) {
        round_gone = 0;
        memset(grew, 0, k);
        for (uint32_t j = 0; j < k; j++)
            m.scatter[j] = 0.0, m.into[j] = j;
        for (uint32_t i = 0; i < tq->n; i++)
            m.scatter[assign[i]] += d2[i];
        for (uint32_t a = 0; a < k; a++)
            if (cs[a].size)
                find_partner(&m, a);
        for (;;) {
            uint32_t ba = 0;
            double least = INFINITY;
            for (uint32_t a = 0; a < k; a++)
                if (cs[a].size && m.best_added[a] < least)
                    least = m.best_added[a], ba = a;
            if (least == INFINITY)
                break;
            const uint32_t bc = m.best[ba];
            cluster_sum *x = &cs[ba];
            const cluster_sum *y = &cs[bc];
            const double na = (double)x->size, nc = (double)y->size;
            for (uint32_t t = 0; t < dim; t++)
                acc[t] = (na * C[(size_t)ba * dim + t] + nc * C[(size_t)bc * dim + t]) / (na + nc);
            for (uint32_t t = 0; t < dim; t++)
                C[(size_t)ba * dim + t] = (float)acc[t];
            m.scatter[ba] += m.scatter[bc] + least;
            x->size += y->size;
            x->weight += y->weight;
            x->weighted_quality += y->weighted_quality;
            x->quality_sum += y->quality_sum;
            settle_quality(x);
            cs[bc] = (cluster_sum){0};
            m.into[bc] = ba;
            grew[ba] = 1;
            round_gone++;
            m.norm2[ba] = dot(C + (size_t)ba * dim, C + (size_t)ba * dim, dim);
            for (uint32_t o = 0; o < k; o++)
                if (o != ba && cs[o].size) {
                    const double d =
                        m.norm2[ba] + m.norm2[o] - 2.0 * dot(C + (size_t)ba * dim, C + (size_t)o * dim, dim);
                    m.dist[(size_t)ba * k + o] = m.dist[(size_t)o * k + ba] = d > 0.0 ? (float)d : 0.0f;
                }
            /* Partners change only with ba: its own, those that had ba or bc, and any that ba now
             * suits better. */
            find_partner(&m, ba);
            for (uint32_t o = 0; o < k; o++) {
                if (o == ba || !cs[o].size)
                    continue;
                if (m.best_added[o] < INFINITY && (m.best[o] == ba || m.best[o] == bc)) {
                    find_partner(&m, o);
                } else {
                    const double cost = join_cost(&m, o, ba);
                    if (cost < m.best_added[o])
                        m.best_added[o] = cost, m.best[o] = ba;
                }
            }
        }
        for (uint32_t i = 0; i < tq->n && round_gone; i++) {
            uint32_t j = (uint32_t)assign[i];
            while (m.into[j] != j)
                j = m.into[j];
            assign[i] = (int32_t)j;
            if (grew[j]) {
                const float *x = tq->emb + (size_t)i * dim, *c = C + (size_t)j * dim;
                const double d = (double)dot(x, x, dim) + m.norm2[j] - 2.0 * (double)dot(x, c, dim);
                d2[i] = d > 0.0 ? d : 0.0;
            }
        }
        if (round_gone)
            *nm = smaller_noise(noise_by_clusters(b, tq, assign, cs, d2, resid), against_patterns);
        gone += round_gone;
    }
out:
    free(m.scatter), free(m.dist), free(m.best), free(grew);
    return gone;
}

/* The clusters (centroids C) that meet the bank, those of min_cluster_size rows or more, into
 * order[] with their most similar pattern (near[j], -1 for the others and when the bank has
 * none; nsim[j] the cosine); returns how many. Caller holds the lock. */
static uint32_t search_clusters(sona_bank *b, const sona_backend *device, const float *C, uint32_t k,
                                const cluster_sum *cs, uint32_t *order, int32_t *near, float *nsim)
{
    uint32_t asked = 0;
    for (uint32_t j = 0; j < k; j++) {
        near[j] = -1;
        if (cs[j].size && cs[j].size >= b->cfg.min_cluster_size)
            order[asked++] = j;
    }
    nearest_patterns(b, device, C, order, asked, near, nsim);
    return asked;
}

/* Puts the rows of a failed extraction back in the queue, ahead of the ones added meanwhile
 * (the queue may exceed max_pending for it: nothing is dropped). Called with the lock held. */
static void give_back(sona_bank *b, traj_queue *taken)
{
    if (queue_append(taken, &b->pend, b->cfg.dim) == SONA_OK) {
        queue_free(&b->pend);
        b->pend = *taken;
    } else if (queue_append(&b->pend, taken, b->cfg.dim) == SONA_OK) {
        queue_free(taken);
    } else {
        b->stats.trajectories_lost += taken->n; /* out of memory twice over: counted */
        queue_free(taken);
    }
    *taken = (traj_queue){0};
}

void sona_bank_set_device(sona_bank *b, const sona_backend *device)
{
    if (!b || (device && device->host_memory))
        return;
    pthread_mutex_lock(&b->lock);
    b->device = device;
    pthread_mutex_unlock(&b->lock);
}

/* Where an extraction's k-means runs: the CPU, or the device where the cost model says its
 * assignment step (the op it repeats most) finishes first there. */
static const sona_backend *kmeans_backend(const sona_bank *b, const sona_backend *device,
                                          uint32_t n, uint32_t k, uint32_t dim)
{
    if (!device)
        return b->be;
    const sona_sqdist_argmin_args shape = {.n = n, .k = k, .d = dim};
    return sona_route(SONA_OP_SQDIST_ARGMIN, &shape, device);
}

sona_status sona_bank_extract(sona_bank *b, sona_bank_extract_result *res)
{
    if (!b)
        return no_bank("sona_bank_extract");
    sona_bank_extract_result r = {0};
    /* Take the queue and cluster it without the lock, so searches and adds go on meanwhile. */
    pthread_mutex_lock(&b->extract_lock);
    pthread_mutex_lock(&b->lock);
    traj_queue taken = b->pend;
    b->pend = b->spare;
    b->spare = (traj_queue){0};
    const uint64_t sequence = b->stats.extractions;
    const sona_backend *device = b->device;
    pthread_mutex_unlock(&b->lock);

    sona_status st = SONA_OK;
    const uint32_t n = taken.n, dim = b->cfg.dim;
    /* At most k_clusters, and at most one per rows_per_cluster rows (at least one). */
    const uint32_t per = b->cfg.rows_per_cluster > 1 ? b->cfg.rows_per_cluster : 1;
    const uint32_t supported = n / per > 1 ? n / per : 1;
    const uint32_t k = supported < b->cfg.k_clusters ? supported : b->cfg.k_clusters;
    noise_model nm = {-1.0, 0.0};
    float *C = NULL, *pv = NULL, *gv = NULL;
    double *gm = NULL;
    int32_t *assign = NULL, *target = NULL, *row_to = NULL;
    uint32_t *counts = NULL, *order = NULL;
    row_range *stack = NULL;
    float *ca = NULL, *cb = NULL;
    double *resid = NULL, *d2 = NULL;
    int32_t *near = NULL, *near_pos = NULL;
    float *nsim = NULL, *near_sim = NULL;
    cluster_sum *cs = NULL;
    sona_kmeans_result kr = {0};
    const sona_backend *kmeans_on = b->be;
    size_t bytes = 0;
    if (n) {
        const size_t at_C = sona_scratch_push(&bytes, (size_t)k * dim * sizeof *C);
        const size_t at_assign = sona_scratch_push(&bytes, n * sizeof *assign);
        const size_t at_target = sona_scratch_push(&bytes, k * sizeof *target);
        const size_t at_counts = sona_scratch_push(&bytes, k * sizeof *counts);
        const size_t at_cs = sona_scratch_push(&bytes, k * sizeof *cs);
        const size_t at_pv = sona_scratch_push(&bytes, (size_t)dim * sizeof *pv);
        const size_t at_gv = sona_scratch_push(&bytes, (size_t)dim * sizeof *gv);
        const size_t at_gm = sona_scratch_push(&bytes, (size_t)dim * sizeof *gm);
        const size_t at_row_to = sona_scratch_push(&bytes, n * sizeof *row_to);
        const size_t at_order = sona_scratch_push(&bytes, n * sizeof *order);
        const size_t at_stack = sona_scratch_push(&bytes, n * sizeof *stack);
        const size_t at_ca = sona_scratch_push(&bytes, (size_t)dim * sizeof *ca);
        const size_t at_cb = sona_scratch_push(&bytes, (size_t)dim * sizeof *cb);
        const size_t at_resid = sona_scratch_push(&bytes, n * sizeof *resid);
        const size_t at_d2 = sona_scratch_push(&bytes, n * sizeof *d2);
        const size_t at_near = sona_scratch_push(&bytes, k * sizeof *near);
        const size_t at_nsim = sona_scratch_push(&bytes, k * sizeof *nsim);
        const size_t at_near_pos = sona_scratch_push(&bytes, n * sizeof *near_pos);
        const size_t at_near_sim = sona_scratch_push(&bytes, n * sizeof *near_sim);
        char *mem = sona_scratch_get(&b->extract_mem, bytes);
        if (mem) {
            C = (float *)(void *)(mem + at_C);
            pv = (float *)(void *)(mem + at_pv);
            gv = (float *)(void *)(mem + at_gv);
            gm = (double *)(void *)(mem + at_gm);
            row_to = (int32_t *)(void *)(mem + at_row_to);
            order = (uint32_t *)(void *)(mem + at_order);
            stack = (row_range *)(void *)(mem + at_stack);
            ca = (float *)(void *)(mem + at_ca);
            cb = (float *)(void *)(mem + at_cb);
            resid = (double *)(void *)(mem + at_resid);
            d2 = (double *)(void *)(mem + at_d2);
            near = (int32_t *)(void *)(mem + at_near);
            nsim = (float *)(void *)(mem + at_nsim);
            near_pos = (int32_t *)(void *)(mem + at_near_pos);
            near_sim = (float *)(void *)(mem + at_near_sim);
            assign = (int32_t *)(void *)(mem + at_assign);
            target = (int32_t *)(void *)(mem + at_target);
            counts = (uint32_t *)(void *)(mem + at_counts);
            cs = (cluster_sum *)(void *)(mem + at_cs);
        } else {
            st = SONA_E_NOMEM;
        }
    }
    if (n && st == SONA_OK) {
        const sona_kmeans_params kp = {.k = k,
                                       .max_iterations = b->cfg.max_iterations,
                                       .tolerance = b->cfg.tolerance,
                                       .trials = b->cfg.seeding_trials,
                                       .seed = b->cfg.seed ^ (sequence * 0x9e3779b97f4a7c15ull)};
        kmeans_on = kmeans_backend(b, device, n, k, dim);
        st = sona_kmeans_reuse(kmeans_on, taken.emb, n, dim, &kp, C, assign, counts, &kr,
                               &b->kmeans_mem);
        if (st != SONA_OK && kmeans_on != b->be) { /* the device's memory, or the device lost */
            kmeans_on = b->be;
            st = sona_kmeans_reuse(b->be, taken.emb, n, dim, &kp, C, assign, counts, &kr,
                                   &b->kmeans_mem);
        }
        if (st == SONA_OK)
            summarise(&taken, k, assign, cs);
    }

    pthread_mutex_lock(&b->lock);
    if (st == SONA_OK && n)
        st = reserve_patterns(b, b->npat + k);
    if (st != SONA_OK) {
        give_back(b, &taken);
        st = sona_fail(&b->err, st, "%s: k-means of %u trajectories on %s: %s", __func__, n,
                       kmeans_on->name, sona_status_str(st));
        goto out;
    }
    if (n == 0)
        goto out;

    /* Commit point: from here the trajectories are consumed. Phase 1: each cluster that merges
     * whole into its most similar pattern (in the bank as it was) does; the others (-2) go on.
     * The noise is estimated only when a cluster does not merge by direction. */
    const uint64_t now = now_ms(b);
    const uint32_t asked = search_clusters(b, device, C, k, cs, order, near, nsim);
    int need_noise = 0;
    for (uint32_t a = 0; a < asked; a++)
        need_noise |= near[order[a]] < 0 || nsim[order[a]] < b->cfg.merge_threshold;
    if (need_noise && b->cfg.merge_z > 0.0f) {
        for (uint32_t i = 0; i < n; i++)
            d2[i] = sqdist(taken.emb + (size_t)i * dim, C + (size_t)assign[i] * dim, dim);
        const noise_model against_patterns = noise_by_patterns(b, &taken, k, assign, near, resid, pv);
        nm = smaller_noise(noise_by_clusters(b, &taken, assign, cs, d2, resid), against_patterns);
        r.combined = combine_clusters(b, &taken, k, C, assign, cs, d2, &nm, against_patterns, resid, gm);
        if (r.combined)
            search_clusters(b, device, C, k, cs, order, near, nsim);
    }
    for (uint32_t j = 0; j < k; j++) {
        target[j] = -1;
        if (cs[j].size == 0)
            continue;
        if (cs[j].size < b->cfg.min_cluster_size) {
            r.dropped_small++;
            continue;
        }
        const members m = {&taken, assign, (int32_t)j};
        if (near[j] >= 0 && cluster_merge_at(b, (uint32_t)near[j], nsim[j], C + (size_t)j * dim, &cs[j], &nm, &m, now,
                                             pv, &target[j], &st))
            r.merged++;
        else
            target[j] = -2;
    }
    /* Phase 2: their rows, each alone, join the pattern they are close enough to. */
    r.joined = join_rows(b, device, &taken, assign, target, &nm, now, row_to, order, near_pos, near_sim, pv, gm, gv,
                         &st);
    /* Phase 3: what each keeps, as a range of rows; a range more spread than one cluster's
     * noise is split in two (and its parts looked at again); the others merge whole after all
     * (into a pattern made by this phase, or an older one) or become new patterns. */
    uint32_t len = 0, ranges = 0;
    for (uint32_t j = 0; j < k; j++) {
        if (target[j] != -2)
            continue;
        target[j] = -1;
        const uint32_t at = len;
        for (uint32_t i = 0; i < n; i++)
            if (assign[i] == (int32_t)j && row_to[i] < 0)
                order[len++] = i;
        if (len > at)
            stack[ranges++] = (row_range){at, len - at, len - at == cs[j].size ? (int32_t)j : -1};
    }
    while (ranges) {
        const row_range g = stack[--ranges];
        uint32_t *rows = order + g.at;
        cluster_sum sum;
        if (g.whole >= 0) {
            memcpy(gv, C + (size_t)g.whole * dim, (size_t)dim * sizeof *gv);
            sum = cs[g.whole];
        } else {
            range_mean(&taken, rows, g.len, dim, gm, gv, &sum);
        }
        if (too_spread(b, &taken, rows, g.len, gv, g.whole >= 0 ? d2 : NULL, &nm)) {
            const uint32_t first = split_range(&taken, rows, g.len, dim, gv, ca, cb, gm);
            if (first) {
                stack[ranges++] = (row_range){g.at, first, -1};
                stack[ranges++] = (row_range){g.at + first, g.len - first, -1};
                r.split++;
                continue;
            }
        }
        int32_t to = -1;
        if (sum.size < b->cfg.min_cluster_size) {
            r.dropped_small++;
        } else if (cluster_merges(b, gv, &sum, &nm, now, pv, &to, &st)) {
            r.merged++;
        } else {
            const sona_pattern info = {.id = b->next_id,
                                       .size = sum.size,
                                       .total_weight = sum.weight,
                                       .avg_quality = (float)sum.quality,
                                       .created_ms = now,
                                       .last_access_ms = now};
            uint32_t pos;
            sona_status ast = b->npat < b->pat_cap ? SONA_OK : reserve_patterns(b, b->npat + 1);
            if (ast == SONA_OK)
                ast = add_pattern(b, &info, gv, &pos);
            else
                ast = sona_fail(&b->err, ast, "%s: out of memory for a pattern", __func__);
            if (ast == SONA_OK) {
                b->next_id++;
                to = (int32_t)pos;
                r.created++;
            } else if (ast == SONA_E_INVALID) {
                r.dropped_small++; /* members cancel out: a zero centroid has no direction */
            } else {
                r.dropped_small++; /* counted: the rows are not in any pattern */
                st = ast;          /* message set above or by add_pattern */
            }
        }
        for (uint32_t a = 0; a < g.len; a++)
            row_to[rows[a]] = to;
    }
    for (uint32_t i = 0; i < n; i++) {
        const int32_t t = row_to[i] >= 0 ? row_to[i] : target[assign[i]];
        if (t >= 0 && taken.route[i] != NO_ROUTE &&
            add_route_stat(b, &b->pats[t], (uint32_t)taken.route[i], 1, taken.q[i]) != 0)
            st = sona_fail(&b->err, SONA_E_NOMEM, "%s: route statistics incomplete (out of memory)", __func__);
    }
    r.trajectories = n;
    r.clusters = k;
    r.iterations = kr.iterations;
    r.inertia = kr.inertia;
    b->stats.extractions++;
    b->stats.clusters_found += k;
    b->stats.clusters_dropped_small += r.dropped_small;
    b->stats.patterns_created += r.created;
    b->stats.patterns_merged += r.merged;
    sona_status pst = prune_locked(b, &r.pruned, &r.evicted);
    if (st == SONA_OK)
        st = pst;
out:
    b->stats.patterns = b->npat;
    traj_queue unkept = queue_recycle(b, &taken, n); /* taken is empty when given back */
    pthread_mutex_unlock(&b->lock);
    if (n)
        sona_scratch_done(&b->extract_mem, bytes);
    pthread_mutex_unlock(&b->extract_lock);
    queue_free(&unkept);
    if (res)
        *res = r;
    return st;
}

/* ---- queries ----------------------------------------------------------------------------- */

/* The k patterns most similar to query (dim floats, any non-zero norm), best first; the caller
 * holds the lock. Similarities are the index's: cosines with the stored centroids (what
 * sona_bank_pattern_get returns), in the index's deterministic order. Failures come from the
 * index (its message). */
static sona_status search_locked(sona_bank *b, const float *query, uint32_t k, uint64_t *ids,
                                 float *sims, uint32_t *found)
{
    return sona_index_search_ef(b->index, query, k, b->cfg.index.ef_search, 0, ids, sims, found);
}

sona_status sona_bank_search(sona_bank *b, const float *query, uint32_t dim, uint32_t k,
                             uint64_t *ids, float *sims, uint32_t *found)
{
    if (!b)
        return no_bank("sona_bank_search");
    if (dim != b->cfg.dim)
        return sona_fail(&b->err, SONA_E_SIZE, "%s: query dim %u, the bank's is %u", __func__,
                         dim, b->cfg.dim);
    pthread_mutex_lock(&b->lock);
    sona_status st = search_locked(b, query, k, ids, sims, found);
    if (st != SONA_OK) {
        sona_fail(&b->err, st, "%s: %s", __func__, sona_index_last_error(b->index));
    } else {
        const uint64_t now = now_ms(b);
        for (uint32_t i = 0; i < *found; i++) {
            pattern_rec *p = &b->pats[pos_of(b, ids[i])];
            p->access_count++;
            p->last_access_ms = now;
        }
        b->stats.searches++;
    }
    pthread_mutex_unlock(&b->lock);
    return st;
}

uint32_t sona_bank_pattern_count(const sona_bank *b)
{
    if (!b)
        return 0;
    pthread_mutex_lock((pthread_mutex_t *)&b->lock);
    const uint32_t n = b->npat;
    pthread_mutex_unlock((pthread_mutex_t *)&b->lock);
    return n;
}

static void copy_pattern(const sona_bank *b, uint32_t pos, sona_pattern *p, float *centroid)
{
    if (p)
        to_info(b, &b->pats[pos], p);
    if (centroid) /* the index holds every live pattern: this cannot fail */
        sona_index_get_vector(b->index, b->pats[pos].id, centroid);
}

sona_status sona_bank_pattern_get(const sona_bank *b, uint64_t id, sona_pattern *p, float *centroid)
{
    if (!b)
        return no_bank("sona_bank_pattern_get");
    pthread_mutex_lock((pthread_mutex_t *)&b->lock);
    const uint32_t pos = pos_of(b, id);
    sona_status st = SONA_OK;
    if (pos != SONA_SLOTMAP_EMPTY)
        copy_pattern(b, pos, p, centroid);
    else
        st = sona_fail(err_of(b), SONA_E_NOT_FOUND, "%s: no pattern %llu", __func__,
                       (unsigned long long)id);
    pthread_mutex_unlock((pthread_mutex_t *)&b->lock);
    return st;
}

sona_status sona_bank_pattern_at(const sona_bank *b, uint32_t i, sona_pattern *p, float *centroid)
{
    if (!b)
        return no_bank("sona_bank_pattern_at");
    pthread_mutex_lock((pthread_mutex_t *)&b->lock);
    sona_status st = SONA_OK;
    if (i < b->npat)
        copy_pattern(b, i, p, centroid);
    else
        st = sona_fail(err_of(b), SONA_E_INVALID, "%s: pattern %u of %u", __func__, i, b->npat);
    pthread_mutex_unlock((pthread_mutex_t *)&b->lock);
    return st;
}

sona_status sona_bank_pattern_route(const sona_bank *b, uint64_t id, uint32_t r, const char **route,
                                    uint64_t *count, float *mean_quality)
{
    static const char call[] = "sona_bank_pattern_route";
    if (!b)
        return no_bank(call);
    pthread_mutex_lock((pthread_mutex_t *)&b->lock);
    const uint32_t pos = pos_of(b, id);
    sona_status st = SONA_OK;
    if (pos == SONA_SLOTMAP_EMPTY) {
        st = sona_fail(err_of(b), SONA_E_NOT_FOUND, "%s: no pattern %llu", call, (unsigned long long)id);
    } else if (!b->pats[pos].routes || r >= b->rlists[b->pats[pos].routes - 1].n) {
        st = sona_fail(err_of(b), SONA_E_INVALID, "%s: route %u of %u", call, r,
                       b->pats[pos].routes ? b->rlists[b->pats[pos].routes - 1].n : 0);
    } else {
        const route_stat *rs = &b->rlists[b->pats[pos].routes - 1].v[r];
        if (route)
            *route = b->route_names[rs->route];
        if (count)
            *count = rs->count;
        if (mean_quality)
            *mean_quality = (float)(rs->quality_sum / (double)rs->count);
    }
    pthread_mutex_unlock((pthread_mutex_t *)&b->lock);
    return st;
}

sona_status sona_bank_neighbors(const sona_bank *b, uint64_t id, uint64_t *out, uint32_t max,
                                uint32_t *n)
{
    if (!b)
        return no_bank("sona_bank_neighbors");
    pthread_mutex_lock((pthread_mutex_t *)&b->lock);
    sona_status st = sona_index_neighbors(b->index, id, out, max, n);
    if (st != SONA_OK) /* the index's const queries report on the thread */
        sona_fail(err_of(b), st, "%s: %s", __func__, sona_last_error());
    pthread_mutex_unlock((pthread_mutex_t *)&b->lock);
    return st;
}

sona_status sona_bank_pattern_restore(sona_bank *b, const sona_pattern *p, const float *centroid)
{
    const char *call = "sona_bank_pattern_restore";
    if (!b)
        return no_bank(call);
    pthread_mutex_lock(&b->lock);
    sona_status st = SONA_OK;
    if (!p || !centroid) {
        st = sona_fail(&b->err, SONA_E_NULL, "%s: pattern or centroid is NULL", call);
    } else if (p->id == 0 || pos_of(b, p->id) != SONA_SLOTMAP_EMPTY) {
        st = sona_fail(&b->err, SONA_E_STATE, "%s: id %llu is 0 or in use", call,
                       (unsigned long long)p->id);
    } else if (!sona_all_finite(centroid, b->cfg.dim) || !isfinite(p->avg_quality) ||
               !isfinite(p->total_weight)) {
        st = sona_fail(&b->err, SONA_E_NONFINITE, "%s: NaN or Inf in the pattern", call);
    } else if ((st = reserve_patterns(b, b->npat + 1)) != SONA_OK) {
        st = sona_fail(&b->err, st, "%s: out of memory", call);
    } else {
        uint32_t pos;
        st = add_pattern(b, p, centroid, &pos);
        if (st == SONA_OK && p->id >= b->next_id)
            b->next_id = p->id + 1;
    }
    b->stats.patterns = b->npat;
    pthread_mutex_unlock(&b->lock);
    return st;
}

sona_status sona_bank_pattern_restore_route(sona_bank *b, uint64_t id, const char *route,
                                            uint64_t count, float mean_quality)
{
    const char *call = "sona_bank_pattern_restore_route";
    if (!b)
        return no_bank(call);
    pthread_mutex_lock(&b->lock);
    sona_status st = SONA_OK;
    const uint32_t pos = pos_of(b, id);
    if (!route) {
        st = sona_fail(&b->err, SONA_E_NULL, "%s: route is NULL", call);
    } else if (pos == SONA_SLOTMAP_EMPTY) {
        st = sona_fail(&b->err, SONA_E_NOT_FOUND, "%s: no pattern %llu", call, (unsigned long long)id);
    } else if (count == 0 || !isfinite(mean_quality)) {
        st = sona_fail(&b->err, count ? SONA_E_NONFINITE : SONA_E_INVALID,
                       "%s: needs count >= 1 and a finite mean quality", call);
    } else {
        const int32_t r = intern_route(b, route);
        if (r < 0 || add_route_stat(b, &b->pats[pos], (uint32_t)r, count,
                                    (double)mean_quality * (double)count) != 0)
            st = sona_fail(&b->err, SONA_E_NOMEM, "%s: out of memory", call);
    }
    pthread_mutex_unlock(&b->lock);
    return st;
}

uint64_t sona_bank_next_id(const sona_bank *b)
{
    if (!b)
        return 0;
    pthread_mutex_lock((pthread_mutex_t *)&b->lock);
    const uint64_t id = b->next_id;
    pthread_mutex_unlock((pthread_mutex_t *)&b->lock);
    return id;
}

sona_status sona_bank_restore_counters(sona_bank *b, const sona_bank_stats *counters, uint64_t next_id)
{
    if (!b)
        return no_bank("sona_bank_restore_counters");
    if (!counters)
        return sona_fail(&b->err, SONA_E_NULL, "%s: counters is NULL", __func__);
    pthread_mutex_lock(&b->lock);
    uint64_t max_id = 0;
    for (uint32_t i = 0; i < b->npat; i++)
        max_id = b->pats[i].id > max_id ? b->pats[i].id : max_id;
    sona_status st = SONA_OK;
    if (next_id <= max_id) {
        st = sona_fail(&b->err, SONA_E_INVALID,
                       "%s: next id %llu is not above pattern %llu", __func__,
                       (unsigned long long)next_id, (unsigned long long)max_id);
    } else {
        b->stats = *counters;
        b->stats.pending = b->pend.n;
        b->stats.patterns = b->npat;
        b->next_id = next_id;
    }
    pthread_mutex_unlock(&b->lock);
    return st;
}

sona_status sona_bank_stats_get(const sona_bank *b, sona_bank_stats *out)
{
    if (!b)
        return no_bank("sona_bank_stats_get");
    if (!out)
        return sona_fail(err_of(b), SONA_E_NULL, "%s: out is NULL", __func__);
    pthread_mutex_lock((pthread_mutex_t *)&b->lock);
    *out = b->stats;
    out->pending = b->pend.n;
    out->patterns = b->npat;
    pthread_mutex_unlock((pthread_mutex_t *)&b->lock);
    return SONA_OK;
}
