/* SPDX-License-Identifier: MIT */
/* Running an op where its buffers are not: with CPU fallback, when an accelerator fails during an
 * op (out of resources, device lost), the op is redone on the CPU from copies of the backend's
 * buffers and counted (backend ops write their in/out buffers only when they succeed, so the
 * redo starts from the same state and an adapter is never half-updated); and an op whose
 * arguments are host arrays run once on an accelerator (a bank's batched search). Both copy
 * each buffer to the other side, run, and copy back what the op writes. */
#include "dispatch/cost.h"
#include "dispatch/dispatch.h"
#include "dispatch/op_buffers.h"

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

/* bytes from buffer src of backend s to buffer dst of backend d, one of which is host memory. */
static sona_status copy_across(const sona_backend *s, const void *src, const sona_backend *d, void *dst,
                               size_t bytes)
{
    return s->host_memory ? d->upload(d->ctx, dst, 0, src, bytes) : s->download(s->ctx, dst, src, 0, bytes);
}

/* Runs op through call on backend `to` with args whose buffers live on backend `from` (one of the
 * two host memory): each buffer copied into one of `to`'s for the call, the ones the op writes
 * copied back when it succeeded (a failed copy back may leave them partly written). */
static sona_status run_on_copies(const sona_backend *from, const sona_backend *to, sona_op op, const void *args,
                                 sona_op_caller call)
{
    sona_op_args a;
    sona_op_buffer bufs[SONA_OP_MAX_BUFFERS];
    const int nb = sona_op_describe(op, args, &a, bufs);
    if (nb < 0)
        return SONA_E_INVALID;
    const void *orig[SONA_OP_MAX_BUFFERS];
    void *copy[SONA_OP_MAX_BUFFERS] = {0}; /* one a buffer: NULL at its later listings */
    sona_status st = SONA_OK;
    for (int i = 0; i < nb; i++) {
        const sona_op_buffer *buf = &bufs[i];
        orig[i] = *buf->slot;
        if (buf->first != i || !orig[i] || st != SONA_OK)
            continue;
        st = to->alloc(to->ctx, buf->bytes ? buf->bytes : 4, &copy[i]);
        if (st != SONA_OK)
            copy[i] = NULL;
        else if ((buf->dir & SONA_BUF_IN) && buf->bytes)
            st = copy_across(from, orig[i], to, copy[i], buf->bytes);
    }
    for (int i = 0; i < nb; i++) /* a later listing of a buffer shares its first's copy */
        *bufs[i].slot = copy[bufs[i].first];
    if (st == SONA_OK)
        st = call(to, op, &a);
    for (int i = 0; i < nb && st == SONA_OK; i++)
        if (copy[i] && (bufs[i].dir & SONA_BUF_OUT) && bufs[i].bytes)
            st = copy_across(to, copy[i], from, (void *)(uintptr_t)orig[i], bufs[i].bytes);
    const sona_backend *device = from->host_memory ? to : from;
    if (st == SONA_OK && device->sync)
        st = device->sync(device->ctx);
    for (int i = 0; i < nb; i++)
        if (copy[i])
            to->free(to->ctx, copy[i]);
    return st;
}

sona_status sona_op_run(const sona_backend *b, sona_op op, const void *args)
{
    const sona_status st = sona_op_call(b, op, args);
    if (st != SONA_E_BACKEND || b->host_memory)
        return st;
    /* The redo on the CPU: the accelerator's status when it cannot be done. */
    const sona_backend *cpu = sona_cpu_backend();
    if (!sona_backend_supports(cpu, op, args) || run_on_copies(b, cpu, op, args, sona_op_call) != SONA_OK)
        return st;
    sona_dispatch_count_fallback();
    return SONA_OK;
}

sona_status sona_op_run_host(const sona_backend *b, sona_op op, const void *args, sona_op_caller call)
{
    return b->host_memory ? call(b, op, args) : run_on_copies(sona_cpu_backend(), b, op, args, call);
}
