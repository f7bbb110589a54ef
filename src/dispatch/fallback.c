/* Running an op with CPU fallback: when an accelerator fails during an op (out of resources,
 * device lost), the op is redone on the CPU from the backend's buffers and counted. Backend
 * ops write their in/out buffers only when they succeed, so the redo starts from the same
 * state and an adapter is never half-updated. */
#include "dispatch/dispatch.h"

#include <stdlib.h>
#include <string.h>

enum { IN = 1, OUT = 2, INOUT = 3 };

/* One buffer argument of an op: where its pointer sits in the (copied) args, and its size. */
typedef struct op_buffer {
    const void **slot;
    size_t bytes;
    int dir;
} op_buffer;

typedef union op_args {
    sona_lora_apply_args apply;
    sona_lora_grad_args grad;
    sona_param_update_args upd;
    sona_sqdist_argmin_args sq;
    sona_knn_exact_args knn;
    sona_gemm_args gemm;
    sona_cluster_sums_args cs;
} op_args;

#define BUF(field, n, elem, d) \
    (op_buffer) { (const void **)(void *)&(field), (size_t)(n) * (elem), (d) }

/* b[0..2]: the three buffers of an adapter set (lora_apply and lora_grad share them). */
static void weight_buffers(sona_lora_weights *w, op_buffer *b)
{
    const size_t floats = (size_t)w->num_adapters * w->rank * w->hidden;
    b[0] = BUF(w->A, floats, sizeof(float), IN);
    b[1] = BUF(w->Bt, floats, sizeof(float), IN);
    b[2] = BUF(w->scale, w->num_adapters, sizeof(float), IN);
}

/* Copies args into *a and lists its buffers; returns how many. */
static int describe(sona_op op, const void *args, op_args *a, op_buffer *b)
{
    const size_t F = sizeof(float), I = sizeof(int32_t);
    switch (op) {
    case SONA_OP_LORA_APPLY: {
        a->apply = *(const sona_lora_apply_args *)args;
        sona_lora_apply_args *p = &a->apply;
        const size_t x = (size_t)p->n * p->w.hidden;
        weight_buffers(&p->w, b);
        b[3] = BUF(p->ids, p->n, I, IN);
        b[4] = BUF(p->x, x, F, IN);
        b[5] = BUF(p->y, x, F, OUT);
        return 6;
    }
    case SONA_OP_LORA_GRAD: {
        a->grad = *(const sona_lora_grad_args *)args;
        sona_lora_grad_args *p = &a->grad;
        const size_t w = (size_t)p->w.num_adapters * p->w.rank * p->w.hidden, x = (size_t)p->n * p->w.hidden;
        weight_buffers(&p->w, b);
        b[3] = BUF(p->ids, p->n, I, IN);
        b[4] = BUF(p->x, x, F, IN);
        b[5] = BUF(p->d, x, F, IN);
        b[6] = BUF(p->wt, p->n, F, IN);
        b[7] = BUF(p->gA, w, F, INOUT);
        b[8] = BUF(p->gBt, w, F, INOUT);
        return 9;
    }
    case SONA_OP_PARAM_UPDATE: {
        a->upd = *(const sona_param_update_args *)args;
        sona_param_update_args *p = &a->upd;
        const size_t n = (size_t)p->segments * p->len;
        b[0] = BUF(p->theta, n, F, INOUT);
        b[1] = BUF(p->g, n, F, IN);
        b[2] = BUF(p->fisher_sum, n, F, IN);
        b[3] = BUF(p->fisher_theta, n, F, IN);
        b[4] = BUF(p->fisher, n, F, INOUT);
        return 5;
    }
    case SONA_OP_SQDIST_ARGMIN: {
        a->sq = *(const sona_sqdist_argmin_args *)args;
        sona_sqdist_argmin_args *p = &a->sq;
        b[0] = BUF(p->X, (size_t)p->n * p->d, F, IN);
        b[1] = BUF(p->C, (size_t)p->k * p->d, F, IN);
        b[2] = BUF(p->idx, p->n, I, OUT);
        b[3] = BUF(p->dist, p->n, F, OUT);
        return 4;
    }
    case SONA_OP_KNN_EXACT: {
        a->knn = *(const sona_knn_exact_args *)args;
        sona_knn_exact_args *p = &a->knn;
        b[0] = BUF(p->Q, (size_t)p->m * p->d, F, IN);
        b[1] = BUF(p->P, (size_t)p->n * p->d, F, IN);
        b[2] = BUF(p->idx, (size_t)p->m * p->k, I, OUT);
        b[3] = BUF(p->sim, (size_t)p->m * p->k, F, OUT);
        return 4;
    }
    case SONA_OP_GEMM: {
        a->gemm = *(const sona_gemm_args *)args;
        sona_gemm_args *p = &a->gemm;
        b[0] = BUF(p->A, (size_t)p->m * p->k, F, IN);
        b[1] = BUF(p->B, (size_t)p->k * p->n, F, IN);
        b[2] = BUF(p->C, (size_t)p->m * p->n, F, p->beta == 0.0f ? OUT : INOUT);
        return 3;
    }
    case SONA_OP_CLUSTER_SUMS: {
        a->cs = *(const sona_cluster_sums_args *)args;
        sona_cluster_sums_args *p = &a->cs;
        b[0] = BUF(p->X, (size_t)p->n * p->d, F, IN);
        b[1] = BUF(p->idx, p->n, I, IN);
        b[2] = BUF(p->sums, (size_t)p->k * p->d, F, OUT);
        b[3] = BUF(p->counts, p->k, I, OUT);
        return 4;
    }
    default: return -1;
    }
}

static sona_status call_op(const sona_backend *be, sona_op op, const void *a)
{
    switch (op) {
    case SONA_OP_LORA_APPLY: return be->lora_apply(be->ctx, a);
    case SONA_OP_LORA_GRAD: return be->lora_grad(be->ctx, a);
    case SONA_OP_PARAM_UPDATE: return be->param_update(be->ctx, a);
    case SONA_OP_SQDIST_ARGMIN: return be->sqdist_argmin(be->ctx, a);
    case SONA_OP_KNN_EXACT: return be->knn_exact(be->ctx, a);
    case SONA_OP_GEMM: return be->gemm(be->ctx, a);
    case SONA_OP_CLUSTER_SUMS: return be->cluster_sums(be->ctx, a);
    default: return SONA_E_INVALID;
    }
}

#define MAX_OP_BUFFERS 9

/* Downloads the inputs of args from b, runs the CPU variant on host copies and uploads the
 * outputs. Returns failed (the accelerator's status) when any step of the redo fails: then
 * nothing was uploaded. */
static sona_status redo_on_cpu(const sona_backend *b, sona_op op, const void *args, sona_status failed)
{
    const sona_backend *cpu = sona_cpu_backend();
    op_args a;
    op_buffer bufs[MAX_OP_BUFFERS];
    const int nb = describe(op, args, &a, bufs);
    if (nb < 0 || !sona_backend_supports(cpu, op, &a))
        return failed;
    const void *device[MAX_OP_BUFFERS] = {0};
    void *host[MAX_OP_BUFFERS] = {0};
    sona_status st = SONA_OK;
    for (int i = 0; i < nb && st == SONA_OK; i++) {
        device[i] = *bufs[i].slot;
        if (!device[i])
            continue;
        for (int j = 0; j < i; j++) /* aliases (in-place lora_apply) share one host copy */
            if (device[j] == device[i])
                host[i] = host[j];
        if (host[i]) {
            *bufs[i].slot = host[i];
            continue;
        }
        if (!(host[i] = malloc(bufs[i].bytes ? bufs[i].bytes : 1))) {
            st = SONA_E_NOMEM;
            break;
        }
        *bufs[i].slot = host[i];
        if ((bufs[i].dir & IN) && bufs[i].bytes)
            st = b->download(b->ctx, host[i], device[i], 0, bufs[i].bytes);
    }
    if (st == SONA_OK)
        st = call_op(cpu, op, &a);
    for (int i = 0; i < nb && st == SONA_OK; i++)
        if (device[i] && (bufs[i].dir & OUT) && bufs[i].bytes)
            st = b->upload(b->ctx, (void *)(uintptr_t)device[i], 0, host[i], bufs[i].bytes);
    for (int i = 0; i < nb; i++) {
        int shared = 0;
        for (int j = 0; j < i; j++)
            shared |= host[j] == host[i];
        if (!shared)
            free(host[i]);
    }
    if (st != SONA_OK)
        return failed;
    sona_dispatch_count_fallback();
    return SONA_OK;
}

sona_status sona_op_run(const sona_backend *b, sona_op op, const void *args)
{
    const sona_status st = call_op(b, op, args);
    if (st != SONA_E_BACKEND || b->host_memory)
        return st;
    return redo_on_cpu(b, op, args, st);
}
