/* SPDX-License-Identifier: MIT */
/* The pattern index: HNSW searched by cosine similarity (include/sona/index.h).
 *
 * Layout: node slots are dense; each node's vector is one fixed-size record in one 64-byte
 * aligned array, padded with zeros to a whole number of kernel steps (16 values, 32 for Q8) so
 * the dot kernel never runs a tail:
 *   F32: the unit vector; its norm sits in scale[] (read only by get_vector and blend, so
 *        searches touch the record alone).
 *   F16: the vector times a power of two (its largest magnitude in [2^14, 2^15): the half range
 *        whatever the vector's), then the f32 inverse norm of those halves; scale[] holds the
 *        inverse power of two.
 *   Q8:  the vector itself in common/q8.h's layout with power-of-two block scales, then the f32
 *        inverse norm of the decoded values.
 * F16 and Q8 decode exactly (values times powers of two) and keep their grid while a vector moves
 * by little: encoding a decoded Q8 vector gives it back bit for bit (save / load round trips; F16
 * too unless a half must be halved below its subnormal range), and blends round on a fixed grid
 * (see sona_index_blend). Their similarity is one dot kernel call
 * times the stored inverse norm: the exact cosine with the stored vector.
 * Queries and the vector being linked stay f32. A link list is a 16-bit count and 24-bit slot
 * numbers (the index holds 2^24 nodes at most; a level-0 list of 2M = 32 links takes 98 bytes
 * where 32-bit ones took 132): level-0 lists are one flat array, upper levels are allocated
 * per node. Searches keep a
 * generation-stamped visited array (no clearing per query) and heaps sized by ef: the result
 * heap and result list hold ef + 1, the candidate heap grows when a search needs more (and, out
 * of memory, leaves the candidate unexplored rather than failing). */
#include "sona/index.h"

#include "common/error.h"
#include "common/half.h"
#include "common/rng.h"
#include "common/slotmap.h"
#include "common/q8.h"
#include "dispatch/vecmath.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NO_NODE UINT32_MAX
#define MAX_NODES (1u << 24) /* slot numbers in links have 24 bits */
#define MAX_LEVEL 24
/* An update that keeps the vector within this cosine of its old value is done in place. */
#define UPDATE_IN_PLACE_COS 0.99f

typedef struct cand {
    float s;    /* similarity to the query / base node */
    uint32_t n; /* node slot */
} cand;

/* Max-heap on s; the result set stores -s to act as a min-heap (worst result on top). */
typedef struct heap {
    cand *v;
    uint32_t len, cap;
} heap;

struct sona_index {
    sona_index_config cfg;
    uint32_t stride;     /* values per stored vector (dim padded with zeros) */
    uint32_t M0;         /* level-0 link capacity: 2M */
    uint32_t cap, used;  /* slots allocated, slots taken (live + deleted) */
    uint32_t live;
    void *vecs;          /* cap records of vec_bytes (see the layout above) */
    size_t vec_bytes;    /* bytes per record */
    float *scale;        /* F32: norm; F16: power of two; stored values times it give the
                          * vector as inserted (NULL for Q8, whose values are the vector) */
    uint64_t *ids;       /* external id per slot */
    uint64_t *access;    /* access count per slot; NULL until the first counting search */
    uint8_t *dead;       /* 1: removed or superseded; routes searches, never returned */
    uint8_t *levels;     /* top level per slot */
    uint8_t *links0;     /* cap lists of M0 links */
    uint8_t **upper;     /* per slot: levels[slot] lists of M links, NULL when level 0 only */
    uint32_t entry;      /* entry point slot, NO_NODE when empty */
    int top;             /* level of the entry point */
    uint16_t *visited;   /* cap stamps (cleared once every 65,535 searches) */
    uint16_t visit_gen;
    heap cand_heap, res_heap; /* candidates (grows), results (ef + 1) */
    cand *found;         /* res_heap.cap: a search's results, best first */
    cand *pick, *shrink; /* M0 + 1: neighbour selection scratch */
    uint32_t *todo;      /* M0: unvisited neighbours of the node being expanded */
    float *qbuf, *vbuf;  /* stride: normalised query / inserted vector */
    float *rbuf;         /* stride: a vector as given (Q8 stores it, blend averages it) */
    float *nbuf, *ebuf;  /* stride: decoded vectors (encode / link_back) */
    float *sel;          /* M0 * stride: decoded vectors of the neighbours select_neighbors keeps */
    const float **kept;  /* M0: those vectors */
    void *rec;           /* vec_bytes: a record being built */
    sona_slotmap map;    /* live id -> slot (keys: ids) */
    sona_rng rng;
    double level_mult;
    sona_dot_fn dot;
    sona_dot_f16_fn dot_h;
    sona_dot_q8_fn dot_q8;
    sona_widen_f16_fn widen;
    sona_errbuf err;
};

/* ---- heaps ------------------------------------------------------------------------------ */

static void heap_push(heap *h, float s, uint32_t n)
{
    uint32_t i = h->len++;
    while (i > 0) {
        const uint32_t p = (i - 1) / 2;
        if (h->v[p].s >= s)
            break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = (cand){s, n};
}

static cand heap_pop(heap *h)
{
    const cand top = h->v[0], last = h->v[--h->len];
    uint32_t i = 0;
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= h->len)
            break;
        if (c + 1 < h->len && h->v[c + 1].s > h->v[c].s)
            c++;
        if (h->v[c].s <= last.s)
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->len)
        h->v[i] = last;
    return top;
}

/* ---- storage ---------------------------------------------------------------------------- */

static inline const void *stored_at(const sona_index *x, uint32_t n)
{
    return (const char *)x->vecs + (size_t)n * x->vec_bytes;
}

static inline size_t q8_bytes(const sona_index *x) { return sona_q8_bytes(x->stride); }

/* The f32 after the values of an F16 or Q8 record: the inverse norm of the stored vector. */
static inline float inv_norm_of(const sona_index *x, const void *rec)
{
    float inv;
    memcpy(&inv, (const char *)rec + x->vec_bytes - sizeof inv, sizeof inv);
    return inv;
}

/* Similarity of q (stride floats, unit norm) to node n. */
static inline float sim_to(const sona_index *x, const float *q, uint32_t n)
{
    const void *r = stored_at(x, n);
    switch (x->cfg.storage) {
    case SONA_STORAGE_F16:
        return x->dot_h(q, r, x->stride) * inv_norm_of(x, r);
    case SONA_STORAGE_Q8:
        return x->dot_q8(q, r, x->stride) * inv_norm_of(x, r);
    default:
        return x->dot(q, r, x->stride);
    }
}

/* The first count values of node n's vector as f32 into out: unit when unit, else as inserted.
 * (Q8 decodes count values from the same record: dim and stride have the same blocks.) */
static void load_vec(const sona_index *x, uint32_t n, float *out, uint32_t count, int unit)
{
    const void *r = stored_at(x, n);
    float scale = 1.0f;
    switch (x->cfg.storage) {
    case SONA_STORAGE_F16:
        x->widen(r, out, count);
        scale = unit ? inv_norm_of(x, r) : x->scale[n];
        break;
    case SONA_STORAGE_Q8:
        sona_q8_decode(r, count, out);
        scale = unit ? inv_norm_of(x, r) : 1.0f;
        break;
    default:
        memcpy(out, r, count * sizeof *out);
        scale = unit ? 1.0f : x->scale[n];
        break;
    }
    if (scale != 1.0f)
        for (uint32_t i = 0; i < count; i++)
            out[i] *= scale;
}

/* Node n's unit vector as f32 (stride floats): in place for F32, else decoded into buf. */
static const float *node_vec(const sona_index *x, uint32_t n, float *buf)
{
    if (x->cfg.storage == SONA_STORAGE_F32)
        return stored_at(x, n);
    load_vec(x, n, buf, x->stride, 1);
    return buf;
}

/* f to half, rounded stochastically with u in [0, 1): the neighbour above or below f is taken
 * with the probability that makes the expected value f. */
static uint16_t f16_dithered(float f, double u)
{
    const uint16_t h = sona_f32_to_f16(f);
    const float hf = sona_f16_to_f32(h);
    if (hf == f || !isfinite(hf))
        return h;
    /* The other neighbour, on f's side of hf (halves are sign and magnitude). */
    uint16_t o;
    if (f > hf)
        o = (h & 0x8000u) ? (h == 0x8000u ? 0x0001u : (uint16_t)(h - 1)) : (uint16_t)(h + 1);
    else
        o = (h & 0x8000u) ? (uint16_t)(h + 1) : (h == 0 ? 0x8001u : (uint16_t)(h - 1));
    const float of = sona_f16_to_f32(o);
    const double p = ((double)f - hf) / ((double)of - hf); /* in (0, 1/2] */
    return u < p ? o : h;
}

/* Appends to x->rec the inverse norm of its n decoded values (in out). */
static void put_inv_norm(sona_index *x, const float *decoded)
{
    double ss = 0.0;
    for (uint32_t i = 0; i < x->stride; i++)
        ss += (double)decoded[i] * decoded[i];
    const float inv = (float)(1.0 / sqrt(ss)); /* ss > 0: the largest value survives rounding */
    memcpy((char *)x->rec + x->vec_bytes - sizeof inv, &inv, sizeof inv);
}

/* Builds x->rec from raw (the vector as given, stride floats, zero padded), its unit vector and
 * norm; dither NULL rounds to nearest. Returns the slot's scale[] value. */
static float encode(sona_index *x, const float *raw, const float *unit, float norm, sona_rng *dither)
{
    switch (x->cfg.storage) {
    case SONA_STORAGE_F16: {
        float amax = 0.0f;
        for (uint32_t i = 0; i < x->stride; i++)
            amax = fmaxf(amax, fabsf(raw[i]));
        int k;
        frexpf(amax, &k); /* 2^(k-1) <= amax < 2^k: times 2^(15-k) it is in [2^14, 2^15) */
        uint16_t *h = x->rec;
        for (uint32_t i = 0; i < x->stride; i++) {
            const float v = ldexpf(raw[i], 15 - k);
            h[i] = dither ? f16_dithered(v, sona_rng_uniform_d(dither)) : sona_f32_to_f16(v);
        }
        x->widen(h, x->nbuf, x->stride);
        put_inv_norm(x, x->nbuf);
        return ldexpf(1.0f, k - 15);
    }
    case SONA_STORAGE_Q8:
        sona_q8_encode_pow2(raw, x->stride, x->rec, dither);
        sona_q8_decode(x->rec, x->stride, x->nbuf);
        put_inv_norm(x, x->nbuf);
        return 1.0f;
    default:
        memcpy(x->rec, unit, x->stride * sizeof *unit);
        return norm;
    }
}

/* Writes x->rec (and its scale) into slot n. */
static void store_rec(sona_index *x, uint32_t n, float scale)
{
    memcpy((char *)x->vecs + (size_t)n * x->vec_bytes, x->rec, x->vec_bytes);
    if (x->scale)
        x->scale[n] = scale;
}

/* ---- link lists: a u16 count, then 3-byte slot numbers -------------------------------------- */

static inline size_t list_bytes(uint32_t links) { return 2 + (size_t)links * 3; }

static inline uint32_t nlinks(const uint8_t *l)
{
    uint16_t c;
    memcpy(&c, l, sizeof c);
    return c;
}

static inline void set_nlinks(uint8_t *l, uint32_t c)
{
    const uint16_t v = (uint16_t)c;
    memcpy(l, &v, sizeof v);
}

static inline uint32_t link_at(const uint8_t *l, uint32_t i)
{
    const uint8_t *p = l + 2 + (size_t)i * 3;
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
}

static inline void set_link(uint8_t *l, uint32_t i, uint32_t slot)
{
    uint8_t *p = l + 2 + (size_t)i * 3;
    p[0] = (uint8_t)slot;
    p[1] = (uint8_t)(slot >> 8);
    p[2] = (uint8_t)(slot >> 16);
}

static inline uint8_t *links_at(const sona_index *x, uint32_t n, int level)
{
    return level == 0 ? x->links0 + (size_t)n * list_bytes(x->M0)
                      : x->upper[n] + (size_t)(level - 1) * list_bytes(x->cfg.M);
}

#define GROW_ARRAY(ptr, count)                                          \
    do {                                                                \
        void *p_ = realloc((ptr), (size_t)(count) * sizeof *(ptr));     \
        if (!p_)                                                        \
            return SONA_E_NOMEM;                                        \
        (ptr) = p_;                                                     \
    } while (0)

/* Grows every per-slot array to cap slots. A failure leaves the index valid at its old cap. */
static sona_status grow(sona_index *x, uint32_t cap)
{
    void *vecs = aligned_alloc(64, ((size_t)cap * x->vec_bytes + 63) & ~(size_t)63);
    if (!vecs)
        return SONA_E_NOMEM;
    if (x->used)
        memcpy(vecs, x->vecs, (size_t)x->used * x->vec_bytes);
    free(x->vecs);
    x->vecs = vecs;
    if (x->cfg.storage != SONA_STORAGE_Q8)
        GROW_ARRAY(x->scale, cap);
    GROW_ARRAY(x->ids, cap);
    if (x->access)
        GROW_ARRAY(x->access, cap);
    GROW_ARRAY(x->dead, cap);
    GROW_ARRAY(x->levels, cap);
    GROW_ARRAY(x->links0, (size_t)cap * list_bytes(x->M0));
    GROW_ARRAY(x->upper, cap);
    GROW_ARRAY(x->visited, cap);
    memset(x->visited + x->cap, 0, (size_t)(cap - x->cap) * sizeof *x->visited);
    x->cap = cap;
    return SONA_OK;
}

/* Room for searches with ef (result heap and list of ef + 1, candidates from ef + 1 on). */
static sona_status reserve_search(sona_index *x, uint32_t ef)
{
    const uint32_t need = ef + 1;
    if (need > x->res_heap.cap) {
        GROW_ARRAY(x->res_heap.v, need);
        x->res_heap.cap = need;
        GROW_ARRAY(x->found, need);
    }
    if (need > x->cand_heap.cap) {
        GROW_ARRAY(x->cand_heap.v, need);
        x->cand_heap.cap = need;
    }
    return SONA_OK;
}

/* Pushes a candidate, doubling the heap when full; out of memory, the candidate is dropped (the
 * search stays correct, only less thorough). */
static void cand_push(heap *h, float s, uint32_t n)
{
    if (h->len == h->cap) {
        const uint32_t cap = h->cap > UINT32_MAX / 2 ? UINT32_MAX : h->cap * 2;
        cand *v = cap > h->cap ? realloc(h->v, (size_t)cap * sizeof *v) : NULL;
        if (!v)
            return;
        h->v = v;
        h->cap = cap;
    }
    heap_push(h, s, n);
}

static void free_parts(sona_index *x)
{
    for (uint32_t i = 0; i < x->used; i++)
        free(x->upper[i]);
    free(x->vecs);
    free(x->scale);
    free(x->ids);
    free(x->access);
    free(x->dead);
    free(x->levels);
    free(x->links0);
    free(x->upper);
    free(x->visited);
    free(x->cand_heap.v);
    free(x->res_heap.v);
    free(x->found);
    free(x->pick);
    free(x->shrink);
    free(x->todo);
    free(x->qbuf);
    free(x->vbuf);
    free(x->rbuf);
    free(x->nbuf);
    free(x->ebuf);
    free(x->rec);
    free(x->sel);
    free(x->kept);
    sona_slotmap_free(&x->map);
}

/* ---- graph search ----------------------------------------------------------------------- */

static void next_visit_generation(sona_index *x)
{
    if (++x->visit_gen == 0) {
        memset(x->visited, 0, (size_t)x->cap * sizeof *x->visited);
        x->visit_gen = 1;
    }
}

/* Asks for every cache line of node n's vector. */
static inline void prefetch_vec(const sona_index *x, uint32_t n)
{
    const char *p = stored_at(x, n);
    for (size_t off = 0; off < x->vec_bytes; off += 64)
        __builtin_prefetch(p + off);
}

/* Greedy walk on one upper level: moves to the best neighbour until none is better. */
static uint32_t greedy(sona_index *x, const float *q, uint32_t ep, float *ep_s, int level)
{
    for (int changed = 1; changed;) {
        changed = 0;
        const uint8_t *l = links_at(x, ep, level);
        for (uint32_t i = 0, nl = nlinks(l); i < nl; i++) {
            const uint32_t nb = link_at(l, i);
            const float s = sim_to(x, q, nb);
            if (s > *ep_s) {
                *ep_s = s;
                ep = nb;
                changed = 1;
            }
        }
    }
    return ep;
}

/* Best-first search of one level from ep with a result set of ef (the paper's SEARCH-LAYER).
 * Deleted nodes are walked through; they are kept as results only when keep_dead (insertion:
 * a new node may link to routing nodes, else it could be cut off from the graph when the nodes
 * around it are deleted). Leaves the results in x->found, best first, and returns how many. */
static uint32_t search_layer(sona_index *x, const float *q, uint32_t ep, float ep_s, uint32_t ef,
                             int level, int keep_dead)
{
    const uint8_t *skip = keep_dead ? NULL : x->dead;
    heap *C = &x->cand_heap, *R = &x->res_heap;
    C->len = R->len = 0;
    next_visit_generation(x);
    const uint16_t gen = x->visit_gen;
    x->visited[ep] = gen;
    heap_push(C, ep_s, ep);
    if (!skip || !skip[ep])
        heap_push(R, -ep_s, ep);
    while (C->len) {
        const cand c = heap_pop(C);
        if (R->len >= ef && c.s < -R->v[0].s)
            break;
        /* Unvisited neighbours first, so only vectors that will be compared are fetched; the
         * next one streams in while the current one is compared. */
        const uint8_t *l = links_at(x, c.n, level);
        uint32_t *todo = x->todo, nt = 0;
        for (uint32_t i = 0, nl = nlinks(l); i < nl; i++) {
            const uint32_t nb = link_at(l, i);
            if (x->visited[nb] != gen) {
                x->visited[nb] = gen;
                todo[nt++] = nb;
            }
        }
        if (nt)
            prefetch_vec(x, todo[0]);
        for (uint32_t t = 0; t < nt; t++) {
            const uint32_t nb = todo[t];
            if (t + 1 < nt)
                prefetch_vec(x, todo[t + 1]);
            const float s = sim_to(x, q, nb);
            if (R->len < ef || s > -R->v[0].s) {
                cand_push(C, s, nb);
                if (!skip || !skip[nb]) {
                    heap_push(R, -s, nb);
                    if (R->len > ef)
                        heap_pop(R);
                }
            }
        }
    }
    const uint32_t n = R->len;
    for (uint32_t i = n; i-- > 0;) {
        const cand r = heap_pop(R);
        x->found[i] = (cand){-r.s, r.n};
    }
    return n;
}

/* The paper's neighbour heuristic: from candidates sorted best first, keep one only when it is
 * more similar to the base than to every one kept so far. Links then spread over directions
 * instead of piling into the nearest cluster, which keeps clustered data navigable. */
static uint32_t select_neighbors(const sona_index *x, const cand *c, uint32_t nc, uint32_t m,
                                 cand *out)
{
    /* The kept ones' unit vectors are decoded into sel (F32: used in place), so a candidate is
     * compared with them straight from its record and only kept ones are ever decoded. */
    const float **kept = x->kept;
    uint32_t n = 0;
    for (uint32_t i = 0; i < nc && n < m; i++) {
        int keep = 1;
        for (uint32_t j = 0; j < n && keep; j++)
            keep = sim_to(x, kept[j], c[i].n) < c[i].s;
        if (keep) {
            kept[n] = node_vec(x, c[i].n, x->sel + (size_t)n * x->stride);
            out[n++] = c[i];
        }
    }
    return n;
}

static void sort_desc(cand *c, uint32_t n)
{
    for (uint32_t i = 1; i < n; i++) {
        const cand t = c[i];
        uint32_t j = i;
        for (; j > 0 && c[j - 1].s < t.s; j--)
            c[j] = c[j - 1];
        c[j] = t;
    }
}

/* Adds the link e -> nn (similarity s) on level; a full list drops deleted nodes first, then
 * is re-selected with the heuristic. */
static void link_back(sona_index *x, uint32_t e, uint32_t nn, float s, int level)
{
    uint8_t *l = links_at(x, e, level);
    const uint32_t mmax = level ? x->cfg.M : x->M0, have = nlinks(l);
    if (have < mmax) {
        set_link(l, have, nn);
        set_nlinks(l, have + 1);
        return;
    }
    const float *ve = node_vec(x, e, x->ebuf);
    uint32_t nc = 0;
    for (uint32_t i = 0; i < have; i++) {
        const uint32_t nb = link_at(l, i);
        if (!x->dead[nb])
            x->shrink[nc++] = (cand){sim_to(x, ve, nb), nb};
    }
    x->shrink[nc++] = (cand){s, nn};
    const cand *keep = x->shrink;
    uint32_t n = nc;
    if (nc > mmax) {
        sort_desc(x->shrink, nc);
        n = select_neighbors(x, x->shrink, nc, mmax, x->pick);
        keep = x->pick;
    }
    set_nlinks(l, n);
    for (uint32_t i = 0; i < n; i++)
        set_link(l, i, keep[i].n);
}

/* Links the new node slot (its vector stored; q is its f32 value, stride floats) on levels
 * min(level, top)..0, entering at the entry point: the paper's INSERT minus the slot
 * allocation. */
static void connect_node(sona_index *x, uint32_t slot, const float *q, int level)
{
    uint32_t ep = x->entry;
    float ep_s = sim_to(x, q, ep);
    for (int l = x->top; l > level; l--)
        ep = greedy(x, q, ep, &ep_s, l);
    for (int l = level < x->top ? level : x->top; l >= 0; l--) {
        const uint32_t nw = search_layer(x, q, ep, ep_s, x->cfg.ef_construction, l, 1);
        const uint32_t n = select_neighbors(x, x->found, nw, x->cfg.M, x->pick);
        uint8_t *own = links_at(x, slot, l);
        set_nlinks(own, n);
        for (uint32_t i = 0; i < n; i++)
            set_link(own, i, x->pick[i].n);
        /* link_back reuses pick: iterate over the copy in own. */
        for (uint32_t i = 0; i < n; i++) {
            const uint32_t e = link_at(own, i);
            link_back(x, e, slot, sim_to(x, q, e), l);
        }
        if (nw) {
            ep = x->found[0].n;
            ep_s = x->found[0].s;
        }
    }
}

/* ---- insertion -------------------------------------------------------------------------- */

static int random_level(sona_index *x)
{
    const double u = 1.0 - sona_rng_uniform_d(&x->rng); /* (0, 1] */
    const double l = -log(u) * x->level_mult;
    return l >= MAX_LEVEL ? MAX_LEVEL : (int)l;
}

/* Inserts x->rec (with its scale) as a new slot for id, linked by its unit vector v (stride
 * floats, zero padded). On failure nothing changed. The id map entry is written (or replaced)
 * last. */
static sona_status insert_node(sona_index *x, uint64_t id, const float *v, float scale, uint64_t access)
{
    if (x->used == x->cap) {
        if (x->cap >= MAX_NODES)
            return SONA_E_FULL;
        const uint32_t cap = x->cap + x->cap / 2 + 16;
        sona_status st = grow(x, cap < MAX_NODES ? cap : MAX_NODES);
        if (st != SONA_OK)
            return st;
    }
    if (reserve_search(x, x->cfg.ef_construction) != SONA_OK)
        return SONA_E_NOMEM;
    const sona_rng rng_before = x->rng;
    const int level = random_level(x);
    const uint32_t slot = x->used;
    uint8_t *up = NULL;
    if (level > 0) {
        up = calloc(level, list_bytes(x->cfg.M));
        if (!up) {
            x->rng = rng_before;
            return SONA_E_NOMEM;
        }
    }
    x->ids[slot] = id; /* the map reads it */
    if (sona_slotmap_put(&x->map, id, slot, x->ids, sizeof *x->ids) != SONA_OK) {
        free(up);
        x->rng = rng_before;
        return SONA_E_NOMEM;
    }
    x->used++;
    x->live++;
    store_rec(x, slot, scale);
    if (x->access)
        x->access[slot] = access;
    x->dead[slot] = 0;
    x->levels[slot] = (uint8_t)level;
    x->upper[slot] = up;
    set_nlinks(links_at(x, slot, 0), 0);
    if (x->entry == NO_NODE) {
        x->entry = slot;
        x->top = level;
        return SONA_OK;
    }
    connect_node(x, slot, v, level);
    if (level > x->top) {
        x->entry = slot;
        x->top = level;
    }
    return SONA_OK;
}

/* ---- public API ------------------------------------------------------------------------- */

void sona_index_config_default(sona_index_config *cfg, uint32_t dim)
{
    if (!cfg)
        return;
    *cfg = (sona_index_config){.dim = dim,
                               .M = 16,
                               .ef_construction = 100,
                               .ef_search = 50,
                               .initial_capacity = 1024,
                               .seed = 42,
                               .track_access = 1,
                               .storage = SONA_STORAGE_F32};
}

static sona_status check_config(const sona_index_config *cfg)
{
    if (cfg->dim == 0 || cfg->dim > (1u << 24))
        return sona_fail(NULL, SONA_E_INVALID, "sona_index_create: dim %u is outside 1..2^24",
                         cfg->dim);
    if (cfg->M < 2 || cfg->M > 255)
        return sona_fail(NULL, SONA_E_INVALID, "sona_index_create: M %u is outside 2..255", cfg->M);
    if (cfg->ef_construction == 0 || cfg->ef_search == 0)
        return sona_fail(NULL, SONA_E_INVALID, "sona_index_create: ef_construction and ef_search must be >= 1");
    if (cfg->initial_capacity > MAX_NODES)
        return sona_fail(NULL, SONA_E_INVALID, "sona_index_create: initial_capacity %u is over 2^24",
                         cfg->initial_capacity);
    if (cfg->storage != SONA_STORAGE_F32 && cfg->storage != SONA_STORAGE_F16 &&
        cfg->storage != SONA_STORAGE_Q8)
        return sona_fail(NULL, SONA_E_INVALID, "sona_index_create: unknown storage %d", (int)cfg->storage);
    return SONA_OK;
}

sona_status sona_index_create(const sona_index_config *cfg, sona_index **out)
{
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "%s: out is NULL", __func__);
    *out = NULL;
    if (!cfg)
        return sona_fail(NULL, SONA_E_NULL, "%s: cfg is NULL", __func__);
    sona_status st = check_config(cfg);
    if (st != SONA_OK)
        return st;
    sona_index *x = calloc(1, sizeof *x);
    if (!x)
        return sona_fail(NULL, SONA_E_NOMEM, "%s: out of memory", __func__);
    x->cfg = *cfg;
    const uint32_t step = cfg->storage == SONA_STORAGE_Q8 ? SONA_Q8_BLOCK : 16;
    x->stride = (cfg->dim + step - 1) / step * step;
    x->M0 = 2 * cfg->M;
    x->entry = NO_NODE;
    x->top = -1;
    x->level_mult = 1.0 / log((double)cfg->M);
    x->vec_bytes = cfg->storage == SONA_STORAGE_Q8   ? q8_bytes(x) + sizeof(float)
                   : cfg->storage == SONA_STORAGE_F16 ? x->stride * sizeof(uint16_t) + sizeof(float)
                                                      : x->stride * sizeof(float);
    x->dot = sona_dot_kernel();
    x->dot_h = sona_dot_f16_kernel();
    x->dot_q8 = sona_dot_q8_kernel();
    x->widen = sona_widen_f16_kernel();
    sona_rng_seed(&x->rng, cfg->seed, 0x686e7377ull /* "hnsw" */);
    x->pick = malloc((x->M0 + 1) * sizeof *x->pick);
    x->shrink = malloc((x->M0 + 1) * sizeof *x->shrink);
    x->todo = malloc(x->M0 * sizeof *x->todo);
    const size_t fbytes = x->stride * sizeof(float);
    x->qbuf = aligned_alloc(64, fbytes);
    x->vbuf = aligned_alloc(64, fbytes);
    x->rbuf = aligned_alloc(64, fbytes);
    x->nbuf = aligned_alloc(64, fbytes);
    x->ebuf = aligned_alloc(64, fbytes);
    x->rec = aligned_alloc(64, (x->vec_bytes + 63) & ~(size_t)63);
    x->sel = aligned_alloc(64, (size_t)x->M0 * fbytes);
    x->kept = malloc(x->M0 * sizeof *x->kept);
    const uint32_t cap = cfg->initial_capacity < 16 ? 16 : cfg->initial_capacity;
    if (!x->pick || !x->shrink || !x->todo || !x->qbuf || !x->vbuf || !x->rbuf || !x->nbuf ||
        !x->ebuf || !x->rec || !x->sel || !x->kept || grow(x, cap) != SONA_OK ||
        reserve_search(x, cfg->ef_search > cfg->ef_construction ? cfg->ef_search : cfg->ef_construction) != SONA_OK) {
        free_parts(x);
        free(x);
        return sona_fail(NULL, SONA_E_NOMEM, "%s: out of memory", __func__);
    }
    *out = x;
    return SONA_OK;
}

void sona_index_destroy(sona_index *x)
{
    if (!x)
        return;
    free_parts(x);
    free(x);
}

const char *sona_index_last_error(const sona_index *x) { return x ? x->err.msg : sona_last_error(); }

/* The refusal of a call made without an index (reported on the thread). */
static sona_status no_index(const char *call)
{
    return sona_fail(NULL, SONA_E_NULL, "%s: index is NULL", call);
}
const sona_index_config *sona_index_get_config(const sona_index *x) { return x ? &x->cfg : NULL; }
uint64_t sona_index_size(const sona_index *x) { return x ? x->live : 0; }

/* Norms a stored vector may have: its norm and every stored value stay normal f32 numbers in
 * every storage (no overflow when decoding, no underflow of a power-of-two scale). */
#define MIN_NORM 1e-30f
#define MAX_NORM 1e30f

/* Copies vec into x->rbuf as given and into unit normalised (stride floats each, zero padded);
 * *norm = its norm. Refuses NaN/Inf and zero, and when stored, a norm outside the range above. */
static sona_status prepare(sona_index *x, const char *call, const float *vec, float *unit, float *norm,
                           int stored)
{
    if (!vec)
        return sona_fail(&x->err, SONA_E_NULL, "%s: vector is NULL", call);
    if (!sona_all_finite(vec, x->cfg.dim))
        return sona_fail(&x->err, SONA_E_NONFINITE, "%s: vector has NaN or Inf", call);
    memcpy(x->rbuf, vec, x->cfg.dim * sizeof(float));
    memset(x->rbuf + x->cfg.dim, 0, (x->stride - x->cfg.dim) * sizeof(float));
    memcpy(unit, x->rbuf, x->stride * sizeof(float));
    if ((*norm = sona_normalize(unit, x->cfg.dim)) == 0.0f)
        return sona_fail(&x->err, SONA_E_INVALID, "%s: zero vector has no direction", call);
    if (stored && !(*norm >= MIN_NORM && *norm <= MAX_NORM))
        return sona_fail(&x->err, SONA_E_INVALID, "%s: vector norm %g is outside 1e-30..1e30", call,
                         (double)*norm);
    return SONA_OK;
}

/* The reason an insertion failed. */
static const char *why(sona_status st)
{
    return st == SONA_E_FULL ? "the index holds 2^24 nodes at most" : "out of memory";
}

sona_status sona_index_insert(sona_index *x, uint64_t id, const float *vec)
{
    if (!x)
        return no_index("sona_index_insert");
    float norm = 0.0f;
    sona_status st = prepare(x, "sona_index_insert", vec, x->vbuf, &norm, 1);
    if (st != SONA_OK)
        return st;
    if (sona_slotmap_get(&x->map, id, x->ids, sizeof *x->ids) != SONA_SLOTMAP_EMPTY)
        return sona_fail(&x->err, SONA_E_STATE, "%s: id %llu is present (use update)", __func__,
                         (unsigned long long)id);
    st = insert_node(x, id, x->vbuf, encode(x, x->rbuf, x->vbuf, norm, NULL), 0);
    return st == SONA_OK ? st : sona_fail(&x->err, st, "%s: %s", __func__, why(st));
}

/* Rebuilds the graph from the live nodes when more than half the slots are deleted (or resets it
 * when none is live). A failed rebuild keeps the current graph, which stays correct. */
static void maybe_compact(sona_index *x)
{
    const uint32_t deleted = x->used - x->live;
    if (x->live == 0) {
        for (uint32_t i = 0; i < x->used; i++) {
            free(x->upper[i]);
            x->upper[i] = NULL;
        }
        x->used = 0;
        x->entry = NO_NODE;
        x->top = -1;
        return;
    }
    if (deleted <= x->live || x->used < 64)
        return;
    sona_index_config cfg = x->cfg;
    cfg.initial_capacity = x->live + x->live / 2;
    sona_index *fresh = NULL;
    if (sona_index_create(&cfg, &fresh) != SONA_OK)
        return;
    if (x->access && !(fresh->access = calloc(fresh->cap, sizeof *fresh->access))) {
        sona_index_destroy(fresh);
        return;
    }
    for (uint32_t i = 0; i < x->used; i++) {
        if (x->dead[i])
            continue;
        /* The records move as they are: the rebuild changes no stored bit. */
        memcpy(fresh->rec, stored_at(x, i), x->vec_bytes);
        if (insert_node(fresh, x->ids[i], node_vec(x, i, x->vbuf), x->scale ? x->scale[i] : 1.0f,
                        x->access ? x->access[i] : 0) != SONA_OK) {
            sona_index_destroy(fresh);
            return;
        }
    }
    const sona_errbuf err = x->err;
    free_parts(x);
    *x = *fresh;
    x->err = err;
    free(fresh);
}

/* Gives id (at slot old) the record in x->rec with its scale, linked by unit vector unit: in
 * place when the direction moves by little, else as a new node that retires the old one. */
static sona_status replace(sona_index *x, uint64_t id, uint32_t old, const float *unit, float scale)
{
    if (sim_to(x, unit, old) >= UPDATE_IN_PLACE_COS) {
        /* A small move (a pattern absorbing a similar cluster): the links stay valid enough,
         * and leaving them untouched cannot cut any node off the graph. */
        store_rec(x, old, scale);
        return SONA_OK;
    }
    /* A real move: the old node turns into a routing node and a new one is linked in (re-linking
     * in place could drop the only link into some other node). */
    x->dead[old] = 1;
    x->live--;
    sona_status st = insert_node(x, id, unit, scale, x->access ? x->access[old] : 0);
    if (st != SONA_OK) {
        x->dead[old] = 0;
        x->live++;
        return st;
    }
    maybe_compact(x);
    return SONA_OK;
}

sona_status sona_index_update(sona_index *x, uint64_t id, const float *vec)
{
    if (!x)
        return no_index("sona_index_update");
    const uint32_t old = sona_slotmap_get(&x->map, id, x->ids, sizeof *x->ids);
    if (old == SONA_SLOTMAP_EMPTY)
        return sona_fail(&x->err, SONA_E_NOT_FOUND, "%s: no id %llu", __func__,
                         (unsigned long long)id);
    float norm = 0.0f;
    sona_status st = prepare(x, "sona_index_update", vec, x->vbuf, &norm, 1);
    if (st != SONA_OK)
        return st;
    st = replace(x, id, old, x->vbuf, encode(x, x->rbuf, x->vbuf, norm, NULL));
    return st == SONA_OK ? st : sona_fail(&x->err, st, "%s: %s", __func__, why(st));
}

static uint64_t bits_of(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

sona_status sona_index_blend(sona_index *x, uint64_t id, const float *vec, double w_old, double w_new)
{
    if (!x)
        return no_index("sona_index_blend");
    const char *call = "sona_index_blend";
    const uint32_t old = sona_slotmap_get(&x->map, id, x->ids, sizeof *x->ids);
    if (old == SONA_SLOTMAP_EMPTY)
        return sona_fail(&x->err, SONA_E_NOT_FOUND, "%s: no id %llu", call, (unsigned long long)id);
    if (!vec)
        return sona_fail(&x->err, SONA_E_NULL, "%s: vector is NULL", call);
    if (!isfinite(w_old) || !isfinite(w_new))
        return sona_fail(&x->err, SONA_E_NONFINITE, "%s: NaN or Inf in the weights", call);
    if (w_old < 0.0 || w_new < 0.0 || !(w_old + w_new > 0.0))
        return sona_fail(&x->err, SONA_E_INVALID, "%s: weights must be >= 0, not both 0", call);
    if (!sona_all_finite(vec, x->cfg.dim))
        return sona_fail(&x->err, SONA_E_NONFINITE, "%s: vector has NaN or Inf", call);
    /* The mean in double, rounded once to f32; then it is stored like an update. */
    float *mean = x->ebuf;
    load_vec(x, old, mean, x->cfg.dim, 0);
    const double tot = w_old + w_new;
    for (uint32_t i = 0; i < x->cfg.dim; i++)
        mean[i] = (float)((w_old * mean[i] + w_new * vec[i]) / tot);
    float norm = 0.0f;
    sona_status st = prepare(x, call, mean, x->vbuf, &norm, 1);
    if (st != SONA_OK)
        return st;
    /* The rounding stream depends on nothing but the call: same calls, same vectors. */
    sona_rng dither;
    sona_rng_seed(&dither, x->cfg.seed ^ id * 0x9e3779b97f4a7c15ull, bits_of(w_old) ^ (bits_of(w_new) * 0xd6e8feb86659fd93ull));
    st = replace(x, id, old, x->vbuf, encode(x, x->rbuf, x->vbuf, norm, &dither));
    return st == SONA_OK ? st : sona_fail(&x->err, st, "%s: %s", call, why(st));
}

sona_status sona_index_remove(sona_index *x, uint64_t id)
{
    if (!x)
        return no_index("sona_index_remove");
    const uint32_t slot = sona_slotmap_get(&x->map, id, x->ids, sizeof *x->ids);
    if (slot == SONA_SLOTMAP_EMPTY)
        return sona_fail(&x->err, SONA_E_NOT_FOUND, "%s: no id %llu", __func__,
                         (unsigned long long)id);
    sona_slotmap_del(&x->map, id, x->ids, sizeof *x->ids);
    x->dead[slot] = 1;
    x->live--;
    maybe_compact(x);
    return SONA_OK;
}

sona_status sona_index_reserve(sona_index *x, uint32_t n)
{
    if (!x)
        return no_index("sona_index_reserve");
    if (n <= x->cap)
        return SONA_OK;
    if (n > MAX_NODES)
        return sona_fail(&x->err, SONA_E_FULL, "%s: %u nodes, the index holds 2^24 at most", __func__, n);
    return grow(x, n) == SONA_OK ? SONA_OK
                                 : sona_fail(&x->err, SONA_E_NOMEM, "%s: out of memory for %u nodes", __func__, n);
}

sona_status sona_index_set_ef_search(sona_index *x, uint32_t ef)
{
    if (!x)
        return no_index("sona_index_set_ef_search");
    if (ef == 0)
        return sona_fail(&x->err, SONA_E_INVALID, "%s: ef must be >= 1", __func__);
    x->cfg.ef_search = ef;
    return SONA_OK;
}

sona_status sona_index_search_ef(sona_index *x, const float *query, uint32_t k, uint32_t ef,
                                 int count_access, uint64_t *ids, float *sims, uint32_t *found)
{
    if (!x)
        return no_index("sona_index_search_ef");
    if (!ids || !found)
        return sona_fail(&x->err, SONA_E_NULL, "%s: ids or found is NULL", __func__);
    if (k == 0 || ef == 0)
        return sona_fail(&x->err, SONA_E_INVALID, "%s: k and ef must be >= 1", __func__);
    float norm = 0.0f;
    sona_status st = prepare(x, __func__, query, x->qbuf, &norm, 0);
    if (st != SONA_OK)
        return st;
    *found = 0;
    if (x->live == 0)
        return SONA_OK;
    const uint32_t width = ef > k ? ef : k;
    if (reserve_search(x, width) != SONA_OK ||
        (count_access && !x->access && !(x->access = calloc(x->cap, sizeof *x->access))))
        return sona_fail(&x->err, SONA_E_NOMEM, "%s: out of memory", __func__);
    const float *q = x->qbuf;
    uint32_t ep = x->entry;
    float ep_s = sim_to(x, q, ep);
    for (int l = x->top; l > 0; l--)
        ep = greedy(x, q, ep, &ep_s, l);
    const uint32_t n = search_layer(x, q, ep, ep_s, width, 0, 0);
    const uint32_t m = n < k ? n : k;
    for (uint32_t i = 0; i < m; i++) {
        const uint32_t slot = x->found[i].n;
        ids[i] = x->ids[slot];
        if (sims)
            sims[i] = x->found[i].s;
        if (count_access)
            x->access[slot]++;
    }
    *found = m;
    return SONA_OK;
}

sona_status sona_index_search(sona_index *x, const float *query, uint32_t k, uint64_t *ids,
                              float *sims, uint32_t *found)
{
    if (!x)
        return no_index("sona_index_search");
    return sona_index_search_ef(x, query, k, x->cfg.ef_search, x->cfg.track_access, ids, sims,
                                found);
}

static sona_status lookup(const sona_index *x, uint64_t id, const char *call, uint32_t *slot)
{
    *slot = sona_slotmap_get(&x->map, id, x->ids, sizeof *x->ids);
    if (*slot == SONA_SLOTMAP_EMPTY)
        return sona_fail(NULL, SONA_E_NOT_FOUND, "%s: no id %llu", call, (unsigned long long)id);
    return SONA_OK;
}

sona_status sona_index_access_count(const sona_index *x, uint64_t id, uint64_t *count)
{
    if (!x || !count)
        return sona_fail(NULL, SONA_E_NULL, "%s: index and count are required", __func__);
    uint32_t slot;
    sona_status st = lookup(x, id, "sona_index_access_count", &slot);
    if (st == SONA_OK)
        *count = x->access ? x->access[slot] : 0;
    return st;
}

sona_status sona_index_neighbors(const sona_index *x, uint64_t id, uint64_t *out, uint32_t max,
                                 uint32_t *n)
{
    if (!x || !n || (!out && max))
        return sona_fail(NULL, SONA_E_NULL, "%s: index, n (and out when max > 0) are required, one is NULL", __func__);
    uint32_t slot;
    sona_status st = lookup(x, id, "sona_index_neighbors", &slot);
    if (st != SONA_OK)
        return st;
    const uint8_t *l = links_at(x, slot, 0);
    uint32_t m = 0;
    for (uint32_t i = 0, nl = nlinks(l); i < nl && m < max; i++)
        if (!x->dead[link_at(l, i)])
            out[m++] = x->ids[link_at(l, i)];
    *n = m;
    return SONA_OK;
}

sona_status sona_index_get_vector(const sona_index *x, uint64_t id, float *out)
{
    if (!x || !out)
        return sona_fail(NULL, SONA_E_NULL, "%s: index and out are required", __func__);
    uint32_t slot;
    sona_status st = lookup(x, id, "sona_index_get_vector", &slot);
    if (st != SONA_OK)
        return st;
    load_vec(x, slot, out, x->cfg.dim, 0);
    return SONA_OK;
}
