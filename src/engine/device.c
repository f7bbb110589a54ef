/* SPDX-License-Identifier: MIT */
/* Batched apply on an accelerator, the hot path of an inference cluster. The engine keeps a
 * device copy of its published adapters - every tenant's Micro-LoRA in one adapter set indexed
 * by tenant id, and the Base-LoRA's layers - and runs a whole batch as one lora_apply with an
 * adapter index per row. An adapter is uploaded again only when its snapshot version changed, so
 * a batch moves its rows plus the adapters that learned since the last batch. Device calls are
 * serialised by one lock (one queue per engine); batches below device_min_rows stay on the CPU,
 * and so do larger ones the dispatch layer's cost model says the CPU finishes first (a device
 * round trip costs more than a small batch's arithmetic). */
#include "dispatch/cost.h"
#include "dispatch/dispatch.h"
#include "dispatch/staging.h"
#include "engine/base.h"
#include "engine/device.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Device copy of a set of adapters of one shape (layout of sona_lora_weights). */
typedef struct dev_set {
    sona_staging A, Bt, scale;
    uint32_t count;      /* adapters the buffers hold */
    uint64_t *version;   /* [count]: snapshot version on the device, 0 = none */
} dev_set;

struct eng_device {
    const sona_backend *be; /* NULL: no accelerator (once picked) */
    atomic_int picked;      /* be is final; until then no backend was looked at */
    pthread_mutex_t mu;
    dev_set micro, base;
    sona_staging x, y, ids;
    int32_t *host_ids;   /* layer batches: the layer index per row */
    uint32_t host_ids_cap;
};

/* The backend is picked when first needed - the first batch of device_min_rows or more, or
 * sona_engine_device - not at engine creation: loading and starting the GPU modules costs
 * hundreds of milliseconds and over 200 MB on a machine with the CUDA toolkit or an OpenCL
 * runtime installed, which an engine that never sends a large batch should not pay. A backend
 * named by SONA_BACKEND is asked for, so it is picked at once. */
static const sona_backend *device_pick(eng_device *d)
{
    if (atomic_load_explicit(&d->picked, memory_order_acquire))
        return d->be;
    pthread_mutex_lock(&d->mu);
    if (!atomic_load_explicit(&d->picked, memory_order_relaxed)) {
        d->be = sona_device_backend();
        atomic_store_explicit(&d->picked, 1, memory_order_release);
    }
    pthread_mutex_unlock(&d->mu);
    return d->be;
}

eng_device *eng_device_create(const sona_engine_config *cfg)
{
    if (!cfg->device_apply)
        return NULL;
    eng_device *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    atomic_init(&d->picked, 0);
    pthread_mutex_init(&d->mu, NULL);
    if (sona_env_backend())
        device_pick(d);
    return d;
}

int eng_device_ready(eng_device *d) { return d && device_pick(d) != NULL; }

const sona_backend *eng_device_picked(eng_device *d)
{
    return d && atomic_load_explicit(&d->picked, memory_order_acquire) ? d->be : NULL;
}

static void set_free(const sona_backend *be, dev_set *s)
{
    sona_staging_free(be, &s->A);
    sona_staging_free(be, &s->Bt);
    sona_staging_free(be, &s->scale);
    free(s->version);
    memset(s, 0, sizeof *s);
}

void eng_device_destroy(eng_device *d)
{
    if (!d)
        return;
    if (!d->be) { /* never picked, or no accelerator: nothing on a device */
        pthread_mutex_destroy(&d->mu);
        free(d);
        return;
    }
    set_free(d->be, &d->micro);
    set_free(d->be, &d->base);
    sona_staging_free(d->be, &d->x);
    sona_staging_free(d->be, &d->y);
    sona_staging_free(d->be, &d->ids);
    free(d->host_ids);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

const char *eng_device_name(eng_device *d) { return eng_device_ready(d) ? d->be->name : NULL; }

int eng_device_pays(eng_device *d, uint32_t n, uint32_t hidden, uint32_t rank, uint32_t adapters)
{
    const sona_lora_apply_args a = {.w = {.hidden = hidden, .rank = rank, .num_adapters = adapters}, .n = n};
    return sona_route(SONA_OP_LORA_APPLY, &a, d->be) == d->be;
}

/* Makes s hold `count` adapters of rank x hidden. Growing loses the contents: every adapter is
 * uploaded again when next used. */
static sona_status set_reserve(const sona_backend *be, dev_set *s, uint32_t count, uint32_t rank,
                               uint32_t hidden)
{
    if (count <= s->count)
        return SONA_OK;
    const size_t floats = (size_t)count * rank * hidden;
    uint64_t *v = calloc(count, sizeof *v);
    void *buf;
    sona_status st = v ? SONA_OK : SONA_E_NOMEM;
    if (st == SONA_OK && (st = sona_staging_put(be, &s->A, NULL, floats * sizeof(float), &buf)) == SONA_OK &&
        (st = sona_staging_put(be, &s->Bt, NULL, floats * sizeof(float), &buf)) == SONA_OK)
        st = sona_staging_put(be, &s->scale, NULL, count * sizeof(float), &buf);
    if (st != SONA_OK) {
        free(v);
        set_free(be, s);
        return st;
    }
    free(s->version);
    s->version = v;
    s->count = count;
    return SONA_OK;
}

/* Uploads snapshot `snap` (adapters first..first+num-1 of the set) unless that version is there. */
static sona_status set_refresh(const sona_backend *be, dev_set *s, uint32_t first, const sona_snapshot *snap)
{
    if (s->version[first] == snap->version)
        return SONA_OK;
    const sona_lora_weights *w = &snap->w;
    const size_t floats = (size_t)w->num_adapters * w->rank * w->hidden,
                 at = (size_t)first * w->rank * w->hidden * sizeof(float);
    void *ctx = be->ctx;
    if (be->upload(ctx, s->A.buf, at, w->A, floats * sizeof(float)) != SONA_OK ||
        be->upload(ctx, s->Bt.buf, at, w->Bt, floats * sizeof(float)) != SONA_OK ||
        be->upload(ctx, s->scale.buf, first * sizeof(float), w->scale, w->num_adapters * sizeof(float)) != SONA_OK)
        return SONA_E_BACKEND;
    for (uint32_t i = 0; i < w->num_adapters; i++)
        s->version[first + i] = snap->version;
    return SONA_OK;
}

/* Rows in, one lora_apply over set s, rows out. Caller holds d->mu. */
static sona_status run_batch(eng_device *d, const dev_set *s, uint32_t rank, uint32_t hidden, uint32_t n,
                             const int32_t *ids, const float *x, float *y)
{
    const size_t bytes = (size_t)n * hidden * sizeof(float);
    void *dx, *dy, *dids;
    sona_status st;
    if ((st = sona_staging_put(d->be, &d->x, x, bytes, &dx)) != SONA_OK ||
        (st = sona_staging_put(d->be, &d->ids, ids, n * sizeof *ids, &dids)) != SONA_OK ||
        (st = sona_staging_put(d->be, &d->y, NULL, bytes, &dy)) != SONA_OK)
        return st;
    sona_lora_apply_args a = {
        .w = {.hidden = hidden, .rank = rank, .num_adapters = s->count, .A = s->A.buf, .Bt = s->Bt.buf,
              .scale = s->scale.buf},
        .n = n, .ids = dids, .x = dx, .y = dy};
    if ((st = sona_op_run(d->be, SONA_OP_LORA_APPLY, &a)) != SONA_OK)
        return st;
    return d->be->download(d->be->ctx, y, dy, 0, bytes) == SONA_OK ? SONA_OK : SONA_E_BACKEND;
}

sona_status eng_device_apply(sona_engine *e, uint32_t n, const int32_t *ids, const float *x, float *y)
{
    eng_device *d = e->device;
    const sona_engine_config *c = &e->cfg;
    uint32_t need = 1; /* adapters the set must hold: the highest tenant in use + 1 */
    for (uint32_t i = 0; i < n; i++)
        need = ids[i] >= 0 && (uint32_t)ids[i] >= need ? (uint32_t)ids[i] + 1 : need;
    /* Grown by doubling (a cluster rarely fills max_tenants); -1 rows are copied by the kernel. */
    uint32_t count = d->micro.count ? d->micro.count : 8;
    while (count < need)
        count *= 2;
    if (count > c->max_tenants)
        count = c->max_tenants;
    pthread_mutex_lock(&d->mu);
    sona_status st = set_reserve(d->be, &d->micro, count, c->micro_rank, c->hidden);
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        if (ids[i] < 0 || (i && ids[i] == ids[i - 1]))
            continue;
        sona_snapshot *s = sona_snapshot_acquire(&e->tenants[ids[i]].slot);
        st = s ? set_refresh(d->be, &d->micro, (uint32_t)ids[i], s) : SONA_E_NOT_FOUND;
        sona_snapshot_release(s);
    }
    if (st == SONA_OK)
        st = run_batch(d, &d->micro, c->micro_rank, c->hidden, n, ids, x, y);
    pthread_mutex_unlock(&d->mu);
    return st;
}

sona_status eng_device_apply_layer(sona_engine *e, uint32_t layer, uint32_t n, const float *x, float *y)
{
    eng_device *d = e->device;
    const sona_engine_config *c = &e->cfg;
    pthread_mutex_lock(&d->mu);
    sona_status st = set_reserve(d->be, &d->base, c->base_layers, c->base_rank, c->hidden);
    if (st == SONA_OK && n > d->host_ids_cap) {
        int32_t *h = realloc(d->host_ids, n * sizeof *h);
        if (h) {
            d->host_ids = h;
            d->host_ids_cap = n;
        } else {
            st = SONA_E_NOMEM;
        }
    }
    if (st == SONA_OK) {
        sona_snapshot *s = sona_snapshot_acquire(&e->base_slot);
        st = s ? set_refresh(d->be, &d->base, 0, s) : SONA_E_STATE;
        sona_snapshot_release(s);
    }
    if (st == SONA_OK) {
        for (uint32_t i = 0; i < n; i++)
            d->host_ids[i] = (int32_t)layer;
        st = run_batch(d, &d->base, c->base_rank, c->hidden, n, d->host_ids, x, y);
    }
    pthread_mutex_unlock(&d->mu);
    return st;
}
