/* SPDX-License-Identifier: MIT */
#include "support/thread_comm.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct rank_ctx {
    thread_world *w;
    uint32_t rank, calls;
} rank_ctx;

struct thread_world {
    uint32_t k, fail_at;
    pthread_barrier_t bar;
    const void **send;  /* each rank's buffer during a collective */
    rank_ctx *ctx;
    sona_comm **comms;
};

/* Counts the call; 1 when this is the one to fail. */
static int fails(rank_ctx *c) { return ++c->calls == c->w->fail_at; }

static sona_status t_rank(void *ctx, uint32_t *rank)
{
    rank_ctx *c = ctx;
    if (fails(c))
        return SONA_E_BACKEND;
    *rank = c->rank;
    return SONA_OK;
}

static sona_status t_size(void *ctx, uint32_t *size)
{
    rank_ctx *c = ctx;
    if (fails(c))
        return SONA_E_BACKEND;
    *size = c->w->k;
    return SONA_OK;
}

static sona_status t_allgather(void *ctx, const void *send, size_t bytes, void *recv)
{
    rank_ctx *c = ctx;
    if (fails(c))
        return SONA_E_BACKEND;
    thread_world *w = c->w;
    w->send[c->rank] = send;
    pthread_barrier_wait(&w->bar);
    for (uint32_t i = 0; i < w->k; i++)
        memcpy((char *)recv + (size_t)i * bytes, w->send[i], bytes);
    pthread_barrier_wait(&w->bar); /* nobody reuses its buffer before all have copied */
    return SONA_OK;
}

static sona_status t_allreduce(void *ctx, float *data, size_t n)
{
    rank_ctx *c = ctx;
    if (fails(c))
        return SONA_E_BACKEND;
    thread_world *w = c->w;
    float *copy = malloc(n * sizeof *copy);
    if (!copy)
        return SONA_E_NOMEM; /* the others would wait: a test's memory does not run out */
    memcpy(copy, data, n * sizeof *copy);
    w->send[c->rank] = copy;
    pthread_barrier_wait(&w->bar);
    for (size_t j = 0; j < n; j++) {
        float s = 0.0f;
        for (uint32_t i = 0; i < w->k; i++)
            s += ((const float *)w->send[i])[j];
        data[j] = s;
    }
    pthread_barrier_wait(&w->bar);
    free(copy);
    return SONA_OK;
}

thread_world *thread_world_create(uint32_t k, uint32_t fail_at)
{
    thread_world *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->k = k;
    w->fail_at = fail_at;
    w->send = calloc(k, sizeof *w->send);
    w->ctx = calloc(k, sizeof *w->ctx);
    w->comms = calloc(k, sizeof *w->comms);
    if (!w->send || !w->ctx || !w->comms || pthread_barrier_init(&w->bar, NULL, k)) {
        free(w->send), free(w->ctx), free(w->comms), free(w);
        return NULL;
    }
    for (uint32_t i = 0; i < k; i++) {
        w->ctx[i] = (rank_ctx){w, i, 0};
        sona_comm_ops ops = {&w->ctx[i], t_rank, t_size, t_allreduce, t_allgather, NULL};
        if (sona_comm_create(&ops, &w->comms[i]) != SONA_OK) {
            thread_world_destroy(w);
            return NULL;
        }
    }
    return w;
}

void thread_world_destroy(thread_world *w)
{
    if (!w)
        return;
    for (uint32_t i = 0; i < w->k; i++)
        sona_comm_destroy(w->comms[i]);
    pthread_barrier_destroy(&w->bar);
    free(w->send), free(w->ctx), free(w->comms), free(w);
}

sona_comm *thread_world_comm(thread_world *w, uint32_t i) { return w->comms[i]; }
uint32_t thread_world_calls(const thread_world *w, uint32_t i) { return w->ctx[i].calls; }

typedef struct run_arg {
    void (*fn)(uint32_t, void *);
    void *arg;
    uint32_t rank;
} run_arg;

static void *run_one(void *p)
{
    run_arg *a = p;
    a->fn(a->rank, a->arg);
    return NULL;
}

void thread_world_run(uint32_t k, void (*fn)(uint32_t rank, void *arg), void *arg)
{
    pthread_t th[64];
    run_arg a[64];
    for (uint32_t i = 0; i < k && i < 64; i++) {
        a[i] = (run_arg){fn, arg, i};
        if (pthread_create(&th[i], NULL, run_one, &a[i]))
            abort();
    }
    for (uint32_t i = 0; i < k && i < 64; i++)
        pthread_join(th[i], NULL);
}
