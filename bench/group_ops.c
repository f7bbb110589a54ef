/* SPDX-License-Identifier: MIT */
/* Op groups: each op of the dispatch table on every backend, with resident buffers (allocated
 * and uploaded once; a sample times only the op and the backend's sync, or the op between the
 * backend's device timers when it has them). The cases and their inputs come from the op case
 * table the tests use (tests/support/op_cases.c, op_bench_cases). */
#include "bench.h"

#include "cpu/cpu.h"
#include "dispatch/dispatch.h"
#include "dispatch/op_buffers.h"
#include "support/op_cases.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { FIXED_SEED = 20240601 };

#define MAX_BUFS 12
typedef struct op_fixture {
    const sona_backend *b;
    sona_op op;
    sona_op_args a;
    /* k-means Lloyd iteration: the assign and sums steps, then the host's centroid update */
    sona_cluster_sums_args sums;
    float *host_sums, *host_C;
    uint32_t *host_counts;
    void *bufs[MAX_BUFS];
    int nbufs;
    sona_status st;
} op_fixture;

/* A resident buffer holding a copy of host (or uninitialised, when host is NULL). */
static void *stage(op_fixture *f, const void *host, size_t bytes)
{
    void *buf = NULL;
    if (f->st != SONA_OK || f->nbufs == MAX_BUFS)
        return NULL;
    if ((f->st = f->b->alloc(f->b->ctx, bytes ? bytes : 4, &buf)) != SONA_OK)
        return NULL;
    f->bufs[f->nbufs++] = buf;
    if (host && bytes)
        f->st = f->b->upload(f->b->ctx, buf, 0, host, bytes);
    return buf;
}

static void fixture_free(op_fixture *f)
{
    for (int i = 0; i < f->nbufs; i++)
        f->b->free(f->b->ctx, f->bufs[i]);
    free(f->host_sums);
    free(f->host_C);
    free(f->host_counts);
}

/* Arguments with shapes only, for supports(). */
static void shape_args(op_fixture *f, const op_instance *in)
{
    const op_case *c = &in->c;
    const sona_lora_weights w = {.hidden = c->hidden, .rank = c->rank, .num_adapters = c->adapters};
    memset(&f->a, 0, sizeof f->a);
    switch (f->op) {
    case SONA_OP_LORA_APPLY: f->a.apply = (sona_lora_apply_args){.w = w, .n = c->n}; break;
    case SONA_OP_LORA_GRAD: f->a.grad = (sona_lora_grad_args){.w = w, .n = c->n}; break;
    case SONA_OP_PARAM_UPDATE:
        f->a.upd = (sona_param_update_args){.segments = c->segments, .len = c->len, .lr = in->lr,
                                            .lambda = in->lambda, .clip_norm = in->clip, .decay = in->decay};
        break;
    case SONA_OP_SQDIST_ARGMIN: f->a.sq = (sona_sqdist_argmin_args){.n = c->n, .k = c->k, .d = c->d}; break;
    case SONA_OP_KNN_EXACT: f->a.knn = (sona_knn_exact_args){.m = c->m, .n = c->n, .d = c->d, .k = c->k}; break;
    case SONA_OP_GEMM:
        f->a.gemm = (sona_gemm_args){.m = c->m, .n = c->n, .k = c->k, .trans_a = c->trans_a,
                                     .trans_b = c->trans_b, .alpha = in->alpha, .beta = in->beta};
        break;
    case SONA_OP_CLUSTER_SUMS: f->a.cs = (sona_cluster_sums_args){.n = c->n, .k = c->k, .d = c->d}; break;
    default: break;
    }
}

static void stage_all(op_fixture *f, const op_instance *in, int lloyd)
{
    const op_case *c = &in->c;
    const size_t F = sizeof(float), I = sizeof(int32_t);
    switch (f->op) {
    case SONA_OP_LORA_APPLY:
    case SONA_OP_LORA_GRAD: {
        const size_t wb = (size_t)c->adapters * c->rank * c->hidden * F, xb = (size_t)c->n * c->hidden * F;
        sona_lora_weights *w = f->op == SONA_OP_LORA_APPLY ? &f->a.apply.w : &f->a.grad.w;
        w->A = stage(f, in->A, wb);
        w->Bt = stage(f, in->Bt, wb);
        w->scale = stage(f, in->scale, c->adapters * F);
        if (f->op == SONA_OP_LORA_APPLY) {
            f->a.apply.ids = stage(f, in->ids, c->n * I);
            f->a.apply.x = stage(f, in->x, xb);
            f->a.apply.y = stage(f, NULL, xb);
        } else {
            f->a.grad.ids = stage(f, in->ids, c->n * I);
            f->a.grad.x = stage(f, in->x, xb);
            f->a.grad.d = stage(f, in->d, xb);
            f->a.grad.wt = stage(f, in->wt, c->n * F);
            f->a.grad.gA = stage(f, in->gA0, wb);
            f->a.grad.gBt = stage(f, in->gBt0, wb);
        }
        break;
    }
    case SONA_OP_PARAM_UPDATE: {
        const size_t nb = (size_t)c->segments * c->len * F;
        f->a.upd.theta = stage(f, in->theta0, nb);
        f->a.upd.g = stage(f, in->g, nb);
        f->a.upd.fisher_sum = in->fsum ? stage(f, in->fsum, nb) : NULL;
        f->a.upd.fisher_theta = in->ftheta ? stage(f, in->ftheta, nb) : NULL;
        f->a.upd.fisher = in->fisher0 ? stage(f, in->fisher0, nb) : NULL;
        break;
    }
    case SONA_OP_SQDIST_ARGMIN:
        f->a.sq.X = stage(f, in->X, (size_t)c->n * c->d * F);
        f->a.sq.C = stage(f, in->C, (size_t)c->k * c->d * F);
        f->a.sq.idx = stage(f, NULL, c->n * I);
        f->a.sq.dist = stage(f, NULL, c->n * F);
        if (lloyd) {
            f->sums = (sona_cluster_sums_args){.n = c->n, .k = c->k, .d = c->d, .X = f->a.sq.X,
                                               .idx = f->a.sq.idx};
            f->sums.sums = stage(f, NULL, (size_t)c->k * c->d * F);
            f->sums.counts = stage(f, NULL, c->k * sizeof(uint32_t));
            f->host_sums = malloc((size_t)c->k * c->d * F);
            f->host_C = malloc((size_t)c->k * c->d * F);
            f->host_counts = malloc(c->k * sizeof(uint32_t));
            if (!f->host_sums || !f->host_C || !f->host_counts)
                f->st = SONA_E_NOMEM;
            else
                memcpy(f->host_C, in->C, (size_t)c->k * c->d * F);
        }
        break;
    case SONA_OP_KNN_EXACT:
        f->a.knn.Q = stage(f, in->Q, (size_t)c->m * c->d * F);
        f->a.knn.P = stage(f, in->P, (size_t)c->n * c->d * F);
        f->a.knn.idx = stage(f, NULL, (size_t)c->m * c->k * I);
        f->a.knn.sim = stage(f, NULL, (size_t)c->m * c->k * F);
        break;
    case SONA_OP_GEMM:
        f->a.gemm.A = stage(f, in->gemmA, (size_t)c->m * c->k * F);
        f->a.gemm.B = stage(f, in->gemmB, (size_t)c->k * c->n * F);
        f->a.gemm.C = stage(f, in->gemmC0, (size_t)c->m * c->n * F);
        break;
    case SONA_OP_CLUSTER_SUMS:
        f->a.cs.X = stage(f, in->X, (size_t)c->n * c->d * F);
        f->a.cs.idx = stage(f, in->iin, c->n * I);
        f->a.cs.sums = stage(f, NULL, (size_t)c->k * c->d * F);
        f->a.cs.counts = stage(f, NULL, c->k * sizeof(uint32_t));
        break;
    default: f->st = SONA_E_INVALID;
    }
}

/* Issues the op only: bench_measure_on() waits for it (or times it with device timers). */
static int call_op(void *arg)
{
    op_fixture *f = arg;
    return sona_op_call(f->b, f->op, &f->a) != SONA_OK;
}

/* One Lloyd iteration: assign, per-cluster sums on the backend, new centroids on the host
 * (empty clusters keep theirs), uploaded for the next iteration. */
static int call_lloyd(void *arg)
{
    op_fixture *f = arg;
    const sona_backend *b = f->b;
    const uint32_t k = f->sums.k, d = f->sums.d;
    const size_t cb = (size_t)k * d * sizeof(float);
    if (b->sqdist_argmin(b->ctx, &f->a.sq) != SONA_OK || b->cluster_sums(b->ctx, &f->sums) != SONA_OK ||
        b->download(b->ctx, f->host_sums, f->sums.sums, 0, cb) != SONA_OK ||
        b->download(b->ctx, f->host_counts, f->sums.counts, 0, k * sizeof(uint32_t)) != SONA_OK)
        return 1;
    for (uint32_t j = 0; j < k; j++)
        if (f->host_counts[j])
            for (uint32_t t = 0; t < d; t++)
                f->host_C[(size_t)j * d + t] = f->host_sums[(size_t)j * d + t] / (float)f->host_counts[j];
    return b->upload(b->ctx, (void *)f->a.sq.C, 0, f->host_C, cb) != SONA_OK ||
           (b->sync && b->sync(b->ctx) != SONA_OK);
}

/* Work per call: flops for compute-bound ops, bytes moved for the streaming ones. */
static void work_of(const op_instance *in, int lloyd, double *flops, double *bytes)
{
    const op_case *c = &in->c;
    const double F = 4.0;
    *flops = *bytes = 0;
    switch (c->op) {
    case SONA_OP_LORA_APPLY:
    case SONA_OP_LORA_GRAD: {
        double active = 0;
        for (uint32_t i = 0; i < c->n; i++)
            active += in->ids[i] >= 0;
        const double nh = (double)c->n * c->hidden, w = (double)c->adapters * c->rank * c->hidden;
        if (c->op == SONA_OP_LORA_APPLY) {
            *flops = 4.0 * active * c->hidden * c->rank;
            *bytes = F * (2 * nh + 2 * w);
        } else {
            *flops = 8.0 * active * c->hidden * c->rank;
            *bytes = F * (2 * nh + 4 * w);
        }
        break;
    }
    case SONA_OP_PARAM_UPDATE: {
        const double n = (double)c->segments * c->len;
        *bytes = F * n * (3 + (c->with_clip ? 1 : 0) + (c->with_ewc ? 2 : 0) + (c->with_fisher ? 2 : 0));
        break;
    }
    case SONA_OP_SQDIST_ARGMIN:
        *flops = 2.0 * c->n * c->k * c->d;
        if (lloyd)
            *flops += (double)c->n * c->d;
        break;
    case SONA_OP_KNN_EXACT: *flops = 2.0 * c->m * c->n * c->d; break;
    case SONA_OP_GEMM: *flops = 2.0 * c->m * c->n * c->k; break;
    case SONA_OP_CLUSTER_SUMS: *bytes = F * ((double)c->n * c->d + c->n + (double)c->k * c->d + c->k); break;
    default: break;
    }
}

/* Why backend b does not run this case, or NULL when it does. */
static const char *skip_reason(const bench_ctx *ctx, const sona_backend *b, const op_bench_case *bc,
                               int lloyd, char *buf, size_t len)
{
    const int gpu = bench_backend_is_gpu(b);
    if (bc->gpu_only && !gpu)
        return "GPU-only size: minutes per call on a CPU";
    if (bc->large && bench_quick(ctx) && !gpu)
        return "large CPU case skipped by --quick";
    if (bc->slow_cpu && !strcmp(b->name, "scalar"))
        return "too slow on the scalar reference kernel (a minute or more per call)";
    if (bc->slow_cpu && !b->host_memory && !gpu)
        return "too slow on an OpenCL CPU device (a minute or more per call)";
    const sona_op ops[2] = {bc->c.op, SONA_OP_CLUSTER_SUMS};
    for (int i = 0; i < (lloyd ? 2 : 1); i++)
        if (!bench_backend_own_op(b, ops[i])) {
            snprintf(buf, len, "%s has no %s kernel of its own%s", b->name, sona_op_name(ops[i]),
                     b->host_memory ? " (it would time the scalar one)" : "");
            return buf;
        }
    return NULL;
}

/* The rows of op_bench_cases for one op, or for its Lloyd iterations. */
static void run_cases(bench_ctx *ctx, const char *group, sona_op op, int lloyd)
{
    const sona_backend *bs[16];
    const char *labels[16];
    const int nb = bench_backends(ctx, bs, labels, 16);
    for (size_t ci = 0; ci < op_bench_case_count; ci++) {
        const op_bench_case *bc = &op_bench_cases[ci];
        if (bc->c.op != op || bc->lloyd != lloyd)
            continue;
        char name[96], why[200];
        if (lloyd)
            snprintf(name, sizeof name, "lloyd n=%u k=%u d=%u", bc->c.n, bc->c.k, bc->c.d);
        else
            op_case_describe(&bc->c, name, sizeof name);
        bench_row row = {.group = group, .name = name};
        int runs = 0;
        for (int i = 0; i < nb; i++)
            runs += skip_reason(ctx, bs[i], bc, lloyd, why, sizeof why) == NULL;
        op_instance in;
        const int prepared = runs && op_instance_prepare_inputs(&in, &bc->c, FIXED_SEED) == 0;
        if (prepared)
            work_of(&in, lloyd, &row.flops, &row.bytes);
        for (int i = 0; i < nb; i++) {
            row.backend = labels[i];
            const char *skip = skip_reason(ctx, bs[i], bc, lloyd, why, sizeof why);
            if (!skip && !prepared)
                skip = "could not generate the inputs";
            if (skip) {
                bench_skip(ctx, &row, skip);
                continue;
            }
            op_fixture f = {.b = bs[i], .op = bc->c.op, .st = SONA_OK};
            shape_args(&f, &in);
            if (lloyd)
                f.sums = (sona_cluster_sums_args){.n = bc->c.n, .k = bc->c.k, .d = bc->c.d};
            if (!sona_backend_supports(bs[i], f.op, &f.a) ||
                (lloyd && !sona_backend_supports(bs[i], SONA_OP_CLUSTER_SUMS, &f.sums))) {
                bench_skip(ctx, &row, "the backend does not support this shape");
                continue;
            }
            stage_all(&f, &in, lloyd);
            if (f.st != SONA_OK) {
                snprintf(why, sizeof why, "could not place the inputs on %s: %s", labels[i], sona_status_str(f.st));
                bench_skip(ctx, &row, why);
            } else if (lloyd) {
                bench_measure(ctx, &row, call_lloyd, &f); /* its downloads wait on the host */
            } else {
                bench_measure_on(ctx, &row, bs[i], call_op, &f);
            }
            fixture_free(&f);
        }
        if (prepared)
            op_instance_free(&in);
    }
}

/* The host's streaming read bandwidth on the cores a large op splits over, timed beside the ops
 * it bounds: lora_apply and lora_grad over many adapters move more bytes than their flops hide,
 * and a shared host's bandwidth moves from one minute to the next (31 to 54 GB/s here within an
 * hour), so their rows are read against this one of the same run. 64 MiB: twice the L3. */
enum { READ_BYTES = 64 << 20 };
typedef struct memory_read {
    const uint64_t *words;
    size_t per_chunk;
    uint32_t chunks, parts;
    uint64_t sums[64];
} memory_read;

static void read_chunk(void *arg, uint32_t chunk)
{
    memory_read *m = arg;
    const uint64_t *w = m->words + (size_t)chunk * m->per_chunk;
    uint64_t s = 0;
    for (size_t i = 0; i < m->per_chunk; i++)
        s ^= w[i];
    m->sums[chunk] = s; /* kept, so the loads are not optimised away */
}

static int call_memory_read(void *arg)
{
    memory_read *m = arg;
    sona_cpu_parallel_chunks(read_chunk, m, m->chunks, m->parts);
    return 0;
}

static void memory_read_row(bench_ctx *ctx, const char *group)
{
    memory_read m = {.parts = sona_cpu_parallel_parts(1e12)};
    m.chunks = sona_cpu_chunks(m.parts);
    char name[64];
    snprintf(name, sizeof name, "host memory read 64 MiB, %u thread%s", m.parts, m.parts > 1 ? "s" : "");
    const bench_row row = {.group = group, .name = name, .backend = "cpu", .bytes = READ_BYTES};
    uint64_t *words = malloc(READ_BYTES);
    if (!words || m.chunks > 64) {
        bench_skip(ctx, &row, "no memory for the buffer");
        free(words);
        return;
    }
    for (size_t i = 0; i < READ_BYTES / sizeof *words; i++)
        words[i] = i * 0x9e3779b97f4a7c15ull;
    m.words = words;
    m.per_chunk = READ_BYTES / sizeof *words / m.chunks;
    bench_measure(ctx, &row, call_memory_read, &m);
    free(words);
}

#define RUN_GROUP(fn, group, op, lloyd) \
    static void fn(bench_ctx *ctx) { run_cases(ctx, group, op, lloyd); }
#define RUN_GROUP_WITH_MEMORY(fn, group, op) \
    static void fn(bench_ctx *ctx)             \
    {                                          \
        memory_read_row(ctx, group);           \
        run_cases(ctx, group, op, 0);          \
    }


RUN_GROUP_WITH_MEMORY(run_lora_apply, "op_lora_apply", SONA_OP_LORA_APPLY)
RUN_GROUP_WITH_MEMORY(run_lora_grad, "op_lora_grad", SONA_OP_LORA_GRAD)
RUN_GROUP(run_param_update, "op_param_update", SONA_OP_PARAM_UPDATE, 0)
RUN_GROUP(run_sqdist_argmin, "op_sqdist_argmin", SONA_OP_SQDIST_ARGMIN, 0)
RUN_GROUP(run_cluster_sums, "op_cluster_sums", SONA_OP_CLUSTER_SUMS, 0)
RUN_GROUP(run_knn_exact, "op_knn_exact", SONA_OP_KNN_EXACT, 0)
RUN_GROUP(run_gemm, "op_gemm", SONA_OP_GEMM, 0)
RUN_GROUP(run_kmeans_lloyd, "op_kmeans_lloyd", SONA_OP_SQDIST_ARGMIN, 1)

const bench_group bench_op_lora_apply = {"op_lora_apply", "lora_apply op: decode batches and a prefill batch over 64 adapters", run_lora_apply};
const bench_group bench_op_lora_grad = {"op_lora_grad", "lora_grad op: batches of learning signals", run_lora_grad};
const bench_group bench_op_param_update = {"op_param_update", "param_update op: clip + EWC + step + Fisher EMA", run_param_update};
const bench_group bench_op_sqdist_argmin = {"op_sqdist_argmin", "sqdist_argmin op: k-means assignment", run_sqdist_argmin};
const bench_group bench_op_cluster_sums = {"op_cluster_sums", "cluster_sums op: k-means centroid sums", run_cluster_sums};
const bench_group bench_op_knn_exact = {"op_knn_exact", "knn_exact op: exact cosine top-10", run_knn_exact};
const bench_group bench_op_gemm = {"op_gemm", "gemm op: SGEMM", run_gemm};
const bench_group bench_op_kmeans_lloyd = {"op_kmeans_lloyd", "one k-means Lloyd iteration (assign, sums, centroid update)", run_kmeans_lloyd};
