/* SPDX-License-Identifier: MIT */
/* The communication handle (sona/comm.h): the caller's collectives behind checked arguments.
 * Needs no engine state; it lives beside sync.c, its one user inside the library. */
#include "common/error.h"
#include "sona/comm.h"

#include <stdlib.h>
#include <string.h>

struct sona_comm {
    sona_comm_ops ops;
    sona_errbuf err;
};

static sona_status one_rank(void *ctx, uint32_t *rank)
{
    (void)ctx;
    *rank = 0;
    return SONA_OK;
}

static sona_status one_size(void *ctx, uint32_t *size)
{
    (void)ctx;
    *size = 1;
    return SONA_OK;
}

static sona_status one_allreduce(void *ctx, float *data, size_t n)
{
    (void)ctx, (void)data, (void)n; /* the sum over one rank is the data */
    return SONA_OK;
}

static sona_status one_allgather(void *ctx, const void *send, size_t bytes, void *recv)
{
    (void)ctx;
    if (bytes)
        memcpy(recv, send, bytes);
    return SONA_OK;
}

void sona_comm_ops_default(sona_comm_ops *ops)
{
    if (!ops)
        return;
    memset(ops, 0, sizeof *ops);
    ops->rank = one_rank;
    ops->size = one_size;
    ops->allreduce_sum_f32 = one_allreduce;
    ops->allgather = one_allgather;
}

sona_status sona_comm_create(const sona_comm_ops *ops, sona_comm **out)
{
    if (!ops || !out)
        return sona_fail(NULL, SONA_E_NULL, "%s: NULL argument", __func__);
    *out = NULL;
    if (!ops->rank || !ops->size || !ops->allreduce_sum_f32 || !ops->allgather)
        return sona_fail(NULL, SONA_E_NULL, "%s: rank, size, allreduce_sum_f32 and allgather "
                         "must all be set", __func__);
    sona_comm *c = calloc(1, sizeof *c);
    if (!c)
        return sona_fail(NULL, SONA_E_NOMEM, "%s: out of memory", __func__);
    c->ops = *ops;
    *out = c;
    return SONA_OK;
}

void sona_comm_destroy(sona_comm *c)
{
    if (!c)
        return;
    if (c->ops.destroy)
        c->ops.destroy(c->ops.ctx);
    free(c);
}

const char *sona_comm_last_error(const sona_comm *c) { return c ? c->err.msg : ""; }

/* A callback's failure keeps its status, named in the handle's message. */
static sona_status failed(sona_comm *c, const char *fn, sona_status st)
{
    return sona_fail(&c->err, st, "%s: the callback failed (%s)", fn, sona_status_str(st));
}

sona_status sona_comm_size(sona_comm *c, uint32_t *size)
{
    if (!c || !size)
        return sona_fail(c ? &c->err : NULL, SONA_E_NULL, "%s: NULL argument", __func__);
    uint32_t n = 0;
    const sona_status st = c->ops.size(c->ops.ctx, &n);
    if (st != SONA_OK)
        return failed(c, __func__, st);
    if (n == 0)
        return sona_fail(&c->err, SONA_E_BACKEND, "%s: the callback gave 0 ranks", __func__);
    *size = n;
    return SONA_OK;
}

sona_status sona_comm_rank(sona_comm *c, uint32_t *rank)
{
    if (!c || !rank)
        return sona_fail(c ? &c->err : NULL, SONA_E_NULL, "%s: NULL argument", __func__);
    uint32_t n = 0, r = 0;
    sona_status st = sona_comm_size(c, &n);
    if (st != SONA_OK)
        return st;
    st = c->ops.rank(c->ops.ctx, &r);
    if (st != SONA_OK)
        return failed(c, __func__, st);
    if (r >= n)
        return sona_fail(&c->err, SONA_E_BACKEND, "%s: the callback gave rank %u of %u", __func__,
                         r, n);
    *rank = r;
    return SONA_OK;
}

sona_status sona_comm_allreduce_sum(sona_comm *c, float *data, size_t n)
{
    if (!c || (!data && n))
        return sona_fail(c ? &c->err : NULL, SONA_E_NULL, "%s: NULL argument", __func__);
    const sona_status st = c->ops.allreduce_sum_f32(c->ops.ctx, data, n);
    return st == SONA_OK ? SONA_OK : failed(c, __func__, st);
}

sona_status sona_comm_allgather(sona_comm *c, const void *send, size_t bytes, void *recv)
{
    if (!c || ((!send || !recv) && bytes))
        return sona_fail(c ? &c->err : NULL, SONA_E_NULL, "%s: NULL argument", __func__);
    const sona_status st = c->ops.allgather(c->ops.ctx, send, bytes, recv);
    return st == SONA_OK ? SONA_OK : failed(c, __func__, st);
}
