/* SPDX-License-Identifier: MIT */
/* The buffer arguments of every op (op_buffers.h). */
#include "dispatch/op_buffers.h"

#define BUF(field, n, elem, d) \
    (sona_op_buffer) { (const void **)(void *)&(field), (size_t)(n) * (elem), (d), 0 }

/* b[0..2]: the three buffers of an adapter set (lora_apply and lora_grad share them). */
static void weight_buffers(sona_lora_weights *w, sona_op_buffer *b)
{
    const size_t floats = (size_t)w->num_adapters * w->rank * w->hidden;
    b[0] = BUF(w->A, floats, sizeof(float), SONA_BUF_IN);
    b[1] = BUF(w->Bt, floats, sizeof(float), SONA_BUF_IN);
    b[2] = BUF(w->scale, w->num_adapters, sizeof(float), SONA_BUF_IN);
}

/* The op's own buffers, as they appear in its args. */
static int list_buffers(sona_op op, const void *args, sona_op_args *a, sona_op_buffer *b)
{
    const size_t F = sizeof(float), I = sizeof(int32_t);
    switch (op) {
    case SONA_OP_LORA_APPLY: {
        a->apply = *(const sona_lora_apply_args *)args;
        sona_lora_apply_args *p = &a->apply;
        const size_t x = (size_t)p->n * p->w.hidden;
        weight_buffers(&p->w, b);
        b[3] = BUF(p->ids, p->n, I, SONA_BUF_IN);
        b[4] = BUF(p->x, x, F, SONA_BUF_IN);
        b[5] = BUF(p->y, x, F, SONA_BUF_OUT);
        return 6;
    }
    case SONA_OP_LORA_GRAD: {
        a->grad = *(const sona_lora_grad_args *)args;
        sona_lora_grad_args *p = &a->grad;
        const size_t w = (size_t)p->w.num_adapters * p->w.rank * p->w.hidden, x = (size_t)p->n * p->w.hidden;
        weight_buffers(&p->w, b);
        b[3] = BUF(p->ids, p->n, I, SONA_BUF_IN);
        b[4] = BUF(p->x, x, F, SONA_BUF_IN);
        b[5] = BUF(p->d, x, F, SONA_BUF_IN);
        b[6] = BUF(p->wt, p->n, F, SONA_BUF_IN);
        b[7] = BUF(p->gA, w, F, SONA_BUF_INOUT);
        b[8] = BUF(p->gBt, w, F, SONA_BUF_INOUT);
        return 9;
    }
    case SONA_OP_PARAM_UPDATE: {
        a->upd = *(const sona_param_update_args *)args;
        sona_param_update_args *p = &a->upd;
        const size_t n = (size_t)p->segments * p->len;
        b[0] = BUF(p->theta, n, F, SONA_BUF_INOUT);
        b[1] = BUF(p->g, n, F, SONA_BUF_IN);
        b[2] = BUF(p->fisher_sum, n, F, SONA_BUF_IN);
        b[3] = BUF(p->fisher_theta, n, F, SONA_BUF_IN);
        b[4] = BUF(p->fisher, n, F, SONA_BUF_INOUT);
        return 5;
    }
    case SONA_OP_SQDIST_ARGMIN: {
        a->sq = *(const sona_sqdist_argmin_args *)args;
        sona_sqdist_argmin_args *p = &a->sq;
        b[0] = BUF(p->X, (size_t)p->n * p->d, F, SONA_BUF_IN);
        b[1] = BUF(p->C, (size_t)p->k * p->d, F, SONA_BUF_IN);
        b[2] = BUF(p->idx, p->n, I, SONA_BUF_OUT);
        b[3] = BUF(p->dist, p->n, F, SONA_BUF_OUT);
        return 4;
    }
    case SONA_OP_KNN_EXACT: {
        a->knn = *(const sona_knn_exact_args *)args;
        sona_knn_exact_args *p = &a->knn;
        b[0] = BUF(p->Q, (size_t)p->m * p->d, F, SONA_BUF_IN);
        b[1] = BUF(p->P, (size_t)p->n * p->d, F, SONA_BUF_IN);
        b[2] = BUF(p->idx, (size_t)p->m * p->k, I, SONA_BUF_OUT);
        b[3] = BUF(p->sim, (size_t)p->m * p->k, F, SONA_BUF_OUT);
        return 4;
    }
    case SONA_OP_GEMM: {
        a->gemm = *(const sona_gemm_args *)args;
        sona_gemm_args *p = &a->gemm;
        b[0] = BUF(p->A, (size_t)p->m * p->k, F, SONA_BUF_IN);
        b[1] = BUF(p->B, (size_t)p->k * p->n, F, SONA_BUF_IN);
        b[2] = BUF(p->C, (size_t)p->m * p->n, F, p->beta == 0.0f ? SONA_BUF_OUT : SONA_BUF_INOUT);
        return 3;
    }
    case SONA_OP_CLUSTER_SUMS: {
        a->cs = *(const sona_cluster_sums_args *)args;
        sona_cluster_sums_args *p = &a->cs;
        b[0] = BUF(p->X, (size_t)p->n * p->d, F, SONA_BUF_IN);
        b[1] = BUF(p->idx, p->n, I, SONA_BUF_IN);
        b[2] = BUF(p->sums, (size_t)p->k * p->d, F, SONA_BUF_OUT);
        b[3] = BUF(p->counts, p->k, I, SONA_BUF_OUT);
        return 4;
    }
    default: return -1;
    }
}

/* Later listings of a pointer already listed point at the first, which takes their uses. */
static void join_shared(sona_op_buffer *b, int n)
{
    for (int i = 0; i < n; i++) {
        b[i].first = i;
        const void *p = *b[i].slot;
        for (int j = 0; j < i && p; j++)
            if (b[j].first == j && *b[j].slot == p) {
                b[i].first = j;
                b[j].dir |= b[i].dir;
                if (b[i].bytes > b[j].bytes)
                    b[j].bytes = b[i].bytes;
                break;
            }
    }
}

int sona_op_describe(sona_op op, const void *args, sona_op_args *a, sona_op_buffer *b)
{
    const int n = list_buffers(op, args, a, b);
    if (n > 0)
        join_shared(b, n);
    return n;
}
