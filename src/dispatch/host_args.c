/* SPDX-License-Identifier: MIT */
/* Running an op whose arguments point at host arrays on any backend: on an accelerator each
 * buffer is copied to a buffer of its own there, the op runs, and what it writes comes back. For
 * one-off calls (a bank's batched search); code that calls an op again and again keeps its
 * operands resident instead. */
#include "dispatch/dispatch.h"
#include "dispatch/op_buffers.h"

sona_status sona_op_run_host(const sona_backend *b, sona_op op, const void *args, sona_op_caller call)
{
    if (b->host_memory)
        return call(b, op, args);
    sona_op_args a;
    sona_op_buffer bufs[SONA_OP_MAX_BUFFERS];
    const int nb = sona_op_describe(op, args, &a, bufs);
    if (nb < 0)
        return SONA_E_INVALID;
    const void *host[SONA_OP_MAX_BUFFERS];
    void *dev[SONA_OP_MAX_BUFFERS] = {0};
    sona_status st = SONA_OK;
    for (int i = 0; i < nb; i++) {
        const sona_op_buffer *buf = &bufs[i];
        host[i] = *buf->slot;
        if (buf->first != i || !host[i] || st != SONA_OK)
            continue;
        st = b->alloc(b->ctx, buf->bytes ? buf->bytes : 4, &dev[i]);
        if (st != SONA_OK)
            dev[i] = NULL;
        else if ((buf->dir & SONA_BUF_IN) && buf->bytes)
            st = b->upload(b->ctx, dev[i], 0, host[i], buf->bytes);
    }
    for (int i = 0; i < nb; i++) /* a later listing of a buffer shares its first's copy */
        *bufs[i].slot = dev[bufs[i].first];
    if (st == SONA_OK)
        st = call(b, op, &a);
    for (int i = 0; i < nb && st == SONA_OK; i++)
        if (dev[i] && (bufs[i].dir & SONA_BUF_OUT) && bufs[i].bytes)
            st = b->download(b->ctx, (void *)(uintptr_t)host[i], dev[i], 0, bufs[i].bytes);
    if (st == SONA_OK && b->sync)
        st = b->sync(b->ctx);
    for (int i = 0; i < nb; i++)
        if (dev[i])
            b->free(b->ctx, dev[i]);
    return st;
}
