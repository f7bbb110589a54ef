/* SPDX-License-Identifier: MIT */
/* Running an op with CPU fallback: when an accelerator fails during an op (out of resources,
 * device lost), the op is redone on the CPU from the backend's buffers and counted. Backend
 * ops write their in/out buffers only when they succeed, so the redo starts from the same
 * state and an adapter is never half-updated. */
#include "dispatch/cost.h"
#include "dispatch/dispatch.h"
#include "dispatch/op_buffers.h"

#include <stdlib.h>
#include <string.h>

sona_status sona_op_call(const sona_backend *be, sona_op op, const void *a)
{
    switch (op) {
#define SONA_OP(id, field, args)                 \
    case SONA_OP_##id:                           \
        sona_dispatch_count_call(op, be);        \
        return be->field(be->ctx, a);
#include "backend/ops.def"
#undef SONA_OP
    default: return SONA_E_INVALID;
    }
}

/* Downloads the inputs of args from b, runs the CPU variant on host copies and uploads the
 * outputs. Returns failed (the accelerator's status) when any step of the redo fails: then
 * nothing was uploaded. */
static sona_status redo_on_cpu(const sona_backend *b, sona_op op, const void *args, sona_status failed)
{
    const sona_backend *cpu = sona_cpu_backend();
    sona_op_args a;
    sona_op_buffer bufs[SONA_OP_MAX_BUFFERS];
    const int nb = sona_op_describe(op, args, &a, bufs);
    if (nb < 0 || !sona_backend_supports(cpu, op, &a))
        return failed;
    const void *device[SONA_OP_MAX_BUFFERS] = {0};
    void *host[SONA_OP_MAX_BUFFERS] = {0}; /* one copy a buffer: NULL at its later listings */
    sona_status st = SONA_OK;
    for (int i = 0; i < nb && st == SONA_OK; i++) {
        const sona_op_buffer *buf = &bufs[i];
        device[i] = *buf->slot;
        if (buf->first != i) {
            *buf->slot = host[buf->first];
            continue;
        }
        if (!device[i])
            continue;
        if (!(host[i] = malloc(buf->bytes ? buf->bytes : 1))) {
            st = SONA_E_NOMEM;
            break;
        }
        *buf->slot = host[i];
        if ((buf->dir & SONA_BUF_IN) && buf->bytes)
            st = b->download(b->ctx, host[i], device[i], 0, buf->bytes);
    }
    if (st == SONA_OK)
        st = sona_op_call(cpu, op, &a);
    for (int i = 0; i < nb && st == SONA_OK; i++)
        if (host[i] && (bufs[i].dir & SONA_BUF_OUT) && bufs[i].bytes)
            st = b->upload(b->ctx, (void *)(uintptr_t)device[i], 0, host[i], bufs[i].bytes);
    for (int i = 0; i < nb; i++)
        free(host[i]);
    if (st != SONA_OK)
        return failed;
    sona_dispatch_count_fallback();
    return SONA_OK;
}

sona_status sona_op_run(const sona_backend *b, sona_op op, const void *args)
{
    const sona_status st = sona_op_call(b, op, args);
    if (st != SONA_E_BACKEND || b->host_memory)
        return st;
    return redo_on_cpu(b, op, args, st);
}
