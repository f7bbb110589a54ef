/* SPDX-License-Identifier: MIT */
/* The engine shared by the addon's SonaEngine objects, and its trajectory table. */
#include "shared_engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Shared engines by token. Lock order: registry_lock before an engine's lock. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static shared_engine *registry;
static uint64_t next_token = 1;

enum { INITIAL_SLOTS = 64 };

shared_engine *shared_engine_create(const sona_engine_config *cfg, sona_status *status)
{
    shared_engine *se = calloc(1, sizeof *se);
    if (!se || !(se->slots = calloc(INITIAL_SLOTS, sizeof *se->slots))) {
        free(se);
        *status = SONA_E_NOMEM;
        return NULL;
    }
    *status = sona_engine_create(cfg, &se->engine);
    if (*status != SONA_OK) {
        free(se->slots);
        free(se);
        return NULL;
    }
    const sona_engine_config *c = sona_engine_get_config(se->engine);
    se->hidden = c->hidden;
    se->base_layers = c->base_layers;
    se->max_patterns = c->max_patterns;
    se->nslots = INITIAL_SLOTS;
    se->refs = 1;
    pthread_mutex_init(&se->lock, NULL);
    return se;
}

static void destroy(shared_engine *se)
{
    for (uint32_t i = 0; i < se->nslots; i++) {
        for (node_trajectory *t = se->slots[i], *next; t; t = next) {
            next = t->next;
            sona_request_abandon(t->request);
            free(t);
        }
    }
    for (node_trajectory *t = se->spare, *next; t; t = next) {
        next = t->next;
        free(t);
    }
    sona_engine_destroy(se->engine);
    pthread_mutex_destroy(&se->lock);
    free(se->slots);
    free(se);
}

void shared_engine_retain(shared_engine *se)
{
    pthread_mutex_lock(&se->lock);
    se->refs++;
    pthread_mutex_unlock(&se->lock);
}

void shared_engine_release(shared_engine *se)
{
    if (!se)
        return;
    /* Under the registry lock: an attach cannot revive an engine whose last reference goes. */
    pthread_mutex_lock(&registry_lock);
    pthread_mutex_lock(&se->lock);
    const uint32_t left = --se->refs;
    pthread_mutex_unlock(&se->lock);
    if (left == 0 && se->token) {
        shared_engine **p = &registry;
        while (*p && *p != se)
            p = &(*p)->next_shared;
        if (*p)
            *p = se->next_shared;
    }
    pthread_mutex_unlock(&registry_lock);
    if (left == 0)
        destroy(se);
}

uint64_t shared_engine_share(shared_engine *se)
{
    pthread_mutex_lock(&registry_lock);
    if (!se->token) {
        se->token = next_token++;
        se->next_shared = registry;
        registry = se;
    }
    const uint64_t token = se->token;
    pthread_mutex_unlock(&registry_lock);
    return token;
}

shared_engine *shared_engine_attach(uint64_t token)
{
    pthread_mutex_lock(&registry_lock);
    shared_engine *se = registry;
    while (se && se->token != token)
        se = se->next_shared;
    if (se)
        shared_engine_retain(se);
    pthread_mutex_unlock(&registry_lock);
    return se;
}

/* ---- trajectory table (callers hold se->lock) ------------------------------------------------ */

static node_trajectory **slot_of(const shared_engine *se, uint32_t id)
{
    return &se->slots[id & (se->nslots - 1)];
}

static node_trajectory *find(const shared_engine *se, uint32_t id)
{
    node_trajectory *t = *slot_of(se, id);
    while (t && t->id != id)
        t = t->next;
    return t;
}

/* Doubles the table when it is twice as full as it is wide; a failed allocation keeps the
 * longer chains. */
static void maybe_grow(shared_engine *se)
{
    if (se->open < 2 * se->nslots || se->nslots >= (1u << 24))
        return;
    const uint32_t n = se->nslots * 2;
    node_trajectory **slots = calloc(n, sizeof *slots);
    if (!slots)
        return;
    for (uint32_t i = 0; i < se->nslots; i++) {
        for (node_trajectory *t = se->slots[i], *next; t; t = next) {
            next = t->next;
            t->next = slots[t->id & (n - 1)];
            slots[t->id & (n - 1)] = t;
        }
    }
    free(se->slots);
    se->slots = slots;
    se->nslots = n;
}

int traj_begin(shared_engine *se, int32_t tenant, const float *query, uint32_t *id, char *why,
               size_t why_len)
{
    /* The record enters the table busy before the request begins (outside the lock: it encodes
     * the query), so a load that starts meanwhile sees it open and is refused. */
    pthread_mutex_lock(&se->lock);
    if (se->loading) {
        pthread_mutex_unlock(&se->lock);
        snprintf(why, why_len, "beginTrajectory: a load of this engine is in progress");
        return SONA_E_STATE;
    }
    node_trajectory *t = se->spare;
    if (t)
        se->spare = t->next;
    else if (!(t = malloc(sizeof *t))) {
        pthread_mutex_unlock(&se->lock);
        snprintf(why, why_len, "beginTrajectory: out of memory");
        return SONA_E_NOMEM;
    }
    uint32_t next = se->next_id;
    while (find(se, next)) /* after 2^32 ids: skip those still open */
        next++;
    se->next_id = next + 1;
    *t = (node_trajectory){.id = next, .busy = 1, .tenant = tenant};
    node_trajectory **slot = slot_of(se, next);
    t->next = *slot;
    *slot = t;
    se->open++;
    maybe_grow(se);
    pthread_mutex_unlock(&se->lock);

    const sona_status st = sona_request_begin(se->engine, tenant, query, &t->request);
    if (st != SONA_OK) {
        snprintf(why, why_len, "%s", sona_engine_last_error(se->engine));
        pthread_mutex_lock(&se->lock); /* still busy: no other thread has touched it */
        node_trajectory **p = slot_of(se, next);
        while (*p != t)
            p = &(*p)->next;
        *p = t->next;
        se->open--;
        t->next = se->spare;
        se->spare = t;
        pthread_mutex_unlock(&se->lock);
        return st;
    }
    *id = next;
    traj_put(se, t);
    return 0;
}

int traj_take(shared_engine *se, uint32_t id, node_trajectory **out, char *why, size_t why_len)
{
    pthread_mutex_lock(&se->lock);
    node_trajectory *t = find(se, id);
    int st = 0;
    if (!t) {
        snprintf(why, why_len, "no trajectory %u (never begun, or already ended)", id);
        st = SONA_E_NOT_FOUND;
    } else if (t->busy) {
        snprintf(why, why_len, "trajectory %u is in use by another thread", id);
        st = SONA_E_STATE;
    } else {
        t->busy = 1;
        *out = t;
    }
    pthread_mutex_unlock(&se->lock);
    return st;
}

void traj_put(shared_engine *se, node_trajectory *t)
{
    pthread_mutex_lock(&se->lock);
    t->busy = 0;
    pthread_mutex_unlock(&se->lock);
}

int traj_remove(shared_engine *se, uint32_t id, node_trajectory **out, char *why, size_t why_len)
{
    pthread_mutex_lock(&se->lock);
    node_trajectory **p = slot_of(se, id);
    while (*p && (*p)->id != id)
        p = &(*p)->next;
    int st = 0;
    if (!*p) {
        snprintf(why, why_len, "no trajectory %u (never begun, or already ended)", id);
        st = SONA_E_NOT_FOUND;
    } else if ((*p)->busy) {
        snprintf(why, why_len, "trajectory %u is in use by another thread", id);
        st = SONA_E_STATE;
    } else {
        *out = *p;
        *p = (*p)->next;
        se->open--;
    }
    pthread_mutex_unlock(&se->lock);
    return st;
}

void traj_recycle(shared_engine *se, node_trajectory *t)
{
    pthread_mutex_lock(&se->lock);
    t->request = NULL;
    t->next = se->spare;
    se->spare = t;
    pthread_mutex_unlock(&se->lock);
}

int load_start(shared_engine *se, char *why, size_t why_len)
{
    pthread_mutex_lock(&se->lock);
    int st = 0;
    if (se->loading) {
        snprintf(why, why_len, "load: another load of this engine is in progress");
        st = SONA_E_STATE;
    } else if (se->open) {
        snprintf(why, why_len, "load: %u trajectory(ies) open: end or abandon them first (a load "
                 "must not race with requests in flight)", se->open);
        st = SONA_E_STATE;
    } else {
        se->loading = 1;
    }
    pthread_mutex_unlock(&se->lock);
    return st;
}

void load_finish(shared_engine *se)
{
    pthread_mutex_lock(&se->lock);
    se->loading = 0;
    pthread_mutex_unlock(&se->lock);
}
