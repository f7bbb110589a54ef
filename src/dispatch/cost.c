/* SPDX-License-Identifier: MIT */
/* Routing by cost: per-backend cost models (a table of defaults refined by microbenchmarks once
 * per process), the work of each op per shape, the cheapest backend for a call, the crossover
 * sizes `sona info` prints, and the per-op per-backend call counters (dispatch/cost.h). */
#include "dispatch/cost.h"

#include "common/clock.h"
#include "dispatch/dispatch.h"
#include "dispatch/op_buffers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- kinds and defaults ---------------------------------------------------------------- */

sona_backend_kind sona_backend_kind_of(const sona_backend *b)
{
    if (!b || b->host_memory)
        return SONA_KIND_CPU;
    if (!strcmp(b->name, "cuda"))
        return SONA_KIND_CUDA;
    if (!strcmp(b->name, "opencl"))
        return SONA_KIND_OPENCL;
    return SONA_KIND_CPU;
}

const char *sona_backend_kind_name(sona_backend_kind k)
{
    static const char *const names[SONA_KIND_COUNT] = {"cpu", "opencl", "cuda"};
    return (unsigned)k < SONA_KIND_COUNT ? names[k] : "unknown";
}

/* The share of peak each op reaches, per kind, in ops.def order. The CPU's are the batched
 * ops' GFLOP/s over gemm's on the AVX-512 variant (BENCHMARKS.md at git e6ed869, after the
 * by-adapter kernels: lora_apply 256 x 4096 x r16 x 64 at 39-48, lora_grad 1 024 x 4096 at
 * 82, gemm 1 024^3 at 197); the devices' are rough figures for kernels that are not GEMMs. */
static const double default_efficiency[SONA_KIND_COUNT][SONA_OP_COUNT] = {
    /*            apply grad  update sqdist knn  gemm  sums */
    [SONA_KIND_CPU] = {0.22, 0.40, 1.0, 0.50, 0.50, 1.0, 0.50},
    [SONA_KIND_OPENCL] = {0.30, 0.20, 1.0, 0.40, 0.40, 0.60, 0.30},
    [SONA_KIND_CUDA] = {0.20, 0.20, 1.0, 0.40, 0.40, 0.70, 0.30},
};
_Static_assert(SONA_OP_COUNT == 7, "give the new op its efficiencies in default_efficiency");

/* The CPU's last-level cache (Linux reports it through sysconf; 8 MiB where it does not), at
 * most 32 MiB: what one core reaches of it (some VMs report the whole socket's, 384 MiB here). */
static double host_cache_bytes(void)
{
    long llc = -1;
#ifdef _SC_LEVEL3_CACHE_SIZE
    llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
#ifdef _SC_LEVEL2_CACHE_SIZE
    if (llc <= 0)
        llc = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    const double cap = 32.0 * 1024 * 1024;
    return llc > 0 ? (llc < cap ? (double)llc : cap) : 8.0 * 1024 * 1024;
}

void sona_cost_model_default(sona_backend_kind k, sona_cost_model *out)
{
    memset(out, 0, sizeof *out);
    switch (k) {
    /* A device's launch is a whole round trip: rows in, the kernel, results out, the wait. */
    case SONA_KIND_OPENCL: /* a discrete GPU behind PCIe; a CPU device calibrates far lower */
        out->launch_us = 25.0;
        out->transfer_gbs = 6.0;
        out->peak_gflops = 2000.0;
        out->memory_gbs = 200.0;
        break;
    case SONA_KIND_CUDA: /* a data-centre GPU behind PCIe 4/5 */
        out->launch_us = 15.0;
        out->transfer_gbs = 12.0;
        out->peak_gflops = 30000.0;
        out->memory_gbs = 1500.0;
        break;
    default: /* one core of a recent x86 server, operands in its caches (the per-request ops'
              * are); calibration measures the variant in use */
        k = SONA_KIND_CPU;
        out->launch_us = 0.2;
        out->transfer_gbs = 0.0;
        out->peak_gflops = 100.0;
        out->memory_gbs = 40.0;
        out->cache_bytes = host_cache_bytes();
        out->cache_gbs = 150.0;
        break;
    }
    for (int op = 0; op < SONA_OP_COUNT; op++)
        out->efficiency[op] = default_efficiency[k][op];
}

/* ---- calibration ----------------------------------------------------------------------- */

#define CALIBRATION_BUDGET_US 50000.0

/* Nanosecond timings (sona_monotonic_us rounds a 10 us gemm to whole microseconds). */
static double elapsed_us(uint64_t t0) { return (double)(sona_monotonic_ns() - t0) / 1e3; }

/* The best of `reps` timings of gemm m = n = k = dim on b (buffers A, B, C of b), synced. */
static double time_gemm(const sona_backend *b, uint32_t dim, float *A, float *B, float *C, int reps)
{
    sona_gemm_args g = {.m = dim, .n = dim, .k = dim, .alpha = 1.0f, .beta = 0.0f, .A = A, .B = B, .C = C};
    double best = -1.0;
    for (int r = 0; r < reps; r++) {
        const uint64_t t0 = sona_monotonic_ns();
        if (b->gemm(b->ctx, &g) != SONA_OK || (b->sync && b->sync(b->ctx) != SONA_OK))
            return -1.0;
        const double t = elapsed_us(t0);
        best = best < 0 || t < best ? t : best;
    }
    return best;
}

/* The best of `reps` copies of `bytes` within src (2 x bytes long), in us. */
static double time_copy(char *src, size_t bytes, int reps)
{
    double best = -1.0;
    for (int r = 0; r < reps; r++) {
        const uint64_t t0 = sona_monotonic_ns();
        memcpy(src + bytes, src, bytes);
        __asm__ __volatile__("" : : "r"(src) : "memory");
        const double tc = elapsed_us(t0);
        best = best < 0 || tc < best ? tc : best;
    }
    return best;
}

/* The CPU: gemm 96^3 for the peak, a 4 MiB copy for the memory bandwidth (beyond the caches of
 * most cores), a 256 KiB one (warm) for the cache's. About 1 ms on a SIMD variant, a few on
 * scalar. */
static void calibrate_host(const sona_backend *b, sona_cost_model *m)
{
    enum { DIM = 96, COPY = 4 << 20, CACHED = 256 << 10 };
    float *buf = calloc(3 * DIM * DIM, sizeof *buf);
    char *src = malloc(2 * (size_t)COPY);
    if (buf && src) {
        memset(src, 1, 2 * (size_t)COPY); /* touched: untouched pages all read the zero page */
        (void)time_gemm(b, DIM, buf, buf + DIM * DIM, buf + 2 * DIM * DIM, 1); /* warm */
        const double t = time_gemm(b, DIM, buf, buf + DIM * DIM, buf + 2 * DIM * DIM, 3);
        if (t > 0)
            m->peak_gflops = 2.0 * DIM * DIM * DIM / (t * 1e3);
        /* The cached copy takes microseconds: more tries, so that one of them runs whole on a
         * core other processes share. With 3, one test run in 19 beside two busy loops costed
         * loop A's rank-8 lora_grad at 12.4 us on the CPU (about 5 otherwise), above the 11.6
         * of test_dispatch's best imaginable device. */
        const double best = time_copy(src, COPY, 3), cached = time_copy(src, CACHED, 16);
        if (best > 0)
            m->memory_gbs = 2.0 * COPY / (best * 1e3);
        if (cached > 0 && 2.0 * CACHED / (cached * 1e3) > m->memory_gbs)
            m->cache_gbs = 2.0 * CACHED / (cached * 1e3);
        m->calibrated = 1;
    }
    free(buf);
    free(src);
}

/* The best of `reps` timings of lora_apply on b over the buffers in a (n, hidden, rank set),
 * synced. */
static double time_apply(const sona_backend *b, const sona_lora_apply_args *a, int reps)
{
    double best = -1.0;
    for (int r = 0; r < reps; r++) {
        const uint64_t t0 = sona_monotonic_ns();
        if (b->lora_apply(b->ctx, a) != SONA_OK || (b->sync && b->sync(b->ctx) != SONA_OK))
            return -1.0;
        const double t = elapsed_us(t0);
        best = best < 0 || t < best ? t : best;
    }
    return best;
}

/* A device, with the library's own lora_apply kernel (gemm may compile kernels at its first
 * shape, CLBlast does): one 1-wide row for the launch cost, a 1 MiB upload and download for the
 * link, 256 rows of 1 024 at rank 1 (streaming) for the memory bandwidth and 32 rows at rank 32
 * for the peak. Each step only while the budget lasts; a failed step keeps the table's values
 * (about 30 ms on PoCL's CPU device, a few ms on a GPU). */
static void calibrate_device(const sona_backend *b, sona_cost_model *m)
{
    enum { N = 256, N_PEAK = 32, H = 1024, R = 32, ROWS = N * H * 4, W = R * H * 4 };
    enum { X, Y, A, BT, SCALE, IDS, NBUF };
    void *buf[NBUF] = {0};
    const size_t bytes[NBUF] = {ROWS, ROWS, W, W, 4, N * 4};
    char *host = calloc(1, ROWS);
    int ok = host != NULL;
    for (int i = 0; i < NBUF && ok; i++)
        ok = b->alloc(b->ctx, bytes[i], &buf[i]) == SONA_OK &&
             b->upload(b->ctx, buf[i], 0, host, bytes[i]) == SONA_OK;
    if (ok && b->sync)
        ok = b->sync(b->ctx) == SONA_OK;
    sona_lora_apply_args a = {.w = {.hidden = 1, .rank = 1, .num_adapters = 1, .A = buf[A],
                                    .Bt = buf[BT], .scale = buf[SCALE]},
                              .n = 1, .ids = buf[IDS], .x = buf[X], .y = buf[Y]};
    double launch = -1.0;
    /* The budget starts after the first call: a runtime's one-time start (the first buffers, the
     * first launch) is paid once, by whichever call comes first. */
    uint64_t t0 = 0;
    if (ok) {
        (void)time_apply(b, &a, 1);
        t0 = sona_monotonic_ns();
        launch = time_apply(b, &a, 5);
    }
    if (launch > 0) {
        m->launch_us = launch;
        double best = -1.0;
        for (int r = 0; r < 2 && ok; r++) {
            const uint64_t t1 = sona_monotonic_ns();
            ok = b->upload(b->ctx, buf[X], 0, host, ROWS) == SONA_OK &&
                 b->download(b->ctx, host, buf[X], 0, ROWS) == SONA_OK &&
                 (!b->sync || b->sync(b->ctx) == SONA_OK);
            const double t = elapsed_us(t1) / 2; /* one way */
            best = best < 0 || t < best ? t : best;
        }
        /* The copies' own fixed cost stays in: the launch is a kernel's, and a subtraction of
         * two noisy figures of the same order gave anything from 20 to 600 GB/s on PoCL. */
        if (ok && best > 0)
            m->transfer_gbs = ROWS / (best * 1e3);
        /* A timing within twice the launch says little about the rest: the table stays. */
        a.w.hidden = H;
        a.n = N;
        sona_op_work w;
        if (ok && elapsed_us(t0) < CALIBRATION_BUDGET_US / 3) {
            const double t = time_apply(b, &a, 2);
            if (t > 2 * launch && sona_op_work_of(SONA_OP_LORA_APPLY, &a, &w))
                m->memory_gbs = w.bytes / ((t - launch) * 1e3);
        }
        a.w.rank = R;
        a.n = N_PEAK;
        if (ok && elapsed_us(t0) < CALIBRATION_BUDGET_US / 2) {
            const double t = time_apply(b, &a, 2);
            if (t > 2 * launch && sona_op_work_of(SONA_OP_LORA_APPLY, &a, &w))
                m->peak_gflops = w.flops / ((t - launch) * 1e3) / m->efficiency[SONA_OP_LORA_APPLY];
        }
        m->calibrated = 1;
    }
    for (int i = 0; i < NBUF; i++)
        if (buf[i])
            b->free(b->ctx, buf[i]);
    free(host);
}

/* ---- the models ------------------------------------------------------------------------ */

enum { MAX_MODELS = 8 };
static struct {
    const sona_backend *b;
    sona_cost_model m;
} models[MAX_MODELS];
static int model_count;
static pthread_mutex_t models_mu = PTHREAD_MUTEX_INITIALIZER;

static int model_find(const sona_backend *b)
{
    for (int i = 0; i < model_count; i++)
        if (models[i].b == b)
            return i;
    return -1;
}

void sona_cost_model_get(const sona_backend *b, sona_cost_model *out)
{
    pthread_mutex_lock(&models_mu);
    int i = model_find(b);
    if (i < 0) {
        sona_cost_model m;
        sona_cost_model_default(sona_backend_kind_of(b), &m);
        /* Only the backends the registry hands out are measured: others (a test's fake table)
         * keep the defaults of their kind, and so does any backend past the table's room
         * (it would be measured again at every call). */
        if (model_count >= MAX_MODELS)
            ;
        else if (b->host_memory && b->gemm)
            calibrate_host(b, &m);
        else if (!b->host_memory && b->lora_apply && b->alloc && b->upload && b->download && b->free)
            calibrate_device(b, &m);
        if (model_count < MAX_MODELS) {
            i = model_count++;
            models[i].b = b;
            models[i].m = m;
        }
        *out = m;
    } else {
        *out = models[i].m;
    }
    pthread_mutex_unlock(&models_mu);
}

void sona_cost_model_set(const sona_backend *b, const sona_cost_model *m)
{
    pthread_mutex_lock(&models_mu);
    int i = model_find(b);
    if (!m) {
        if (i >= 0)
            models[i] = models[--model_count];
    } else {
        if (i < 0 && model_count < MAX_MODELS)
            i = model_count++;
        if (i >= 0) {
            models[i].b = b;
            models[i].m = *m;
        }
    }
    pthread_mutex_unlock(&models_mu);
}

/* ---- the work of each op --------------------------------------------------------------- */

int sona_op_work_of(sona_op op, const void *args, sona_op_work *w)
{
    const double f = sizeof(float);
    memset(w, 0, sizeof *w);
    switch (op) {
    case SONA_OP_LORA_APPLY: {
        const sona_lora_apply_args *a = args;
        const double n = a->n, h = a->w.hidden, r = a->w.rank;
        const double used = a->n < a->w.num_adapters ? n : a->w.num_adapters; /* adapters read */
        w->flops = n * (4.0 * h * r + 2.0 * h);
        w->transfer_bytes = f * (2.0 * n * h) + 4.0 * n; /* x, y, ids; weights resident */
        w->bytes = w->transfer_bytes + f * used * 2.0 * r * h;
        return 1;
    }
    case SONA_OP_LORA_GRAD: {
        const sona_lora_grad_args *a = args;
        const double n = a->n, h = a->w.hidden, r = a->w.rank;
        const double used = a->n < a->w.num_adapters ? n : a->w.num_adapters;
        w->flops = n * 8.0 * h * r;
        w->transfer_bytes = f * (2.0 * n * h + n) + 4.0 * n; /* x, d, wt, ids; gradients resident */
        w->bytes = w->transfer_bytes + f * used * 6.0 * r * h; /* A, Bt read; gA, gBt updated */
        return 1;
    }
    case SONA_OP_PARAM_UPDATE: {
        const sona_param_update_args *a = args;
        const double len = (double)a->segments * a->len;
        const double streams = 3.0 + (a->fisher_sum ? 2.0 : 0.0) + (a->fisher ? 2.0 : 0.0);
        w->flops = len * (a->fisher ? 10.0 : 6.0);
        w->transfer_bytes = f * len; /* g; theta and the Fisher terms resident */
        w->bytes = f * len * streams;
        return 1;
    }
    case SONA_OP_SQDIST_ARGMIN: {
        const sona_sqdist_argmin_args *a = args;
        const double n = a->n, k = a->k, d = a->d;
        w->flops = 3.0 * n * k * d;
        w->transfer_bytes = f * (n * d + 2.0 * n); /* X in, idx and dist out; C resident */
        w->bytes = w->transfer_bytes + f * k * d;
        return 1;
    }
    case SONA_OP_KNN_EXACT: {
        const sona_knn_exact_args *a = args;
        const double m = a->m, n = a->n, d = a->d, k = a->k;
        w->flops = 2.0 * m * n * d + 2.0 * (m + n) * d;
        w->transfer_bytes = f * (m * d + 2.0 * m * k); /* Q in, idx and sim out; P resident */
        w->bytes = w->transfer_bytes + f * n * d;
        return 1;
    }
    case SONA_OP_GEMM: {
        const sona_gemm_args *a = args;
        const double m = a->m, n = a->n, k = a->k;
        w->flops = 2.0 * m * n * k;
        w->bytes = f * (m * k + k * n + m * n * (a->beta != 0.0f ? 2.0 : 1.0));
        w->transfer_bytes = w->bytes; /* every operand crosses */
        return 1;
    }
    case SONA_OP_CLUSTER_SUMS: {
        const sona_cluster_sums_args *a = args;
        const double n = a->n, k = a->k, d = a->d;
        w->flops = n * d;
        w->transfer_bytes = f * (n * d + n + k * d + k);
        w->bytes = w->transfer_bytes + f * k * d; /* sums read back as they accumulate */
        return 1;
    }
    default:
        return 0;
    }
}

static double model_us(const sona_cost_model *m, sona_op op, const sona_op_work *w)
{
    double t = m->launch_us;
    if (m->transfer_gbs > 0)
        t += w->transfer_bytes / (m->transfer_gbs * 1e3);
    const double eff = (unsigned)op < SONA_OP_COUNT && m->efficiency[op] > 0 ? m->efficiency[op] : 1.0;
    const double compute = m->peak_gflops > 0 ? w->flops / (m->peak_gflops * eff * 1e3) : 0.0;
    const double gbs = w->bytes <= m->cache_bytes && m->cache_gbs > m->memory_gbs ? m->cache_gbs : m->memory_gbs;
    const double memory = gbs > 0 ? w->bytes / (gbs * 1e3) : 0.0;
    return t + (compute > memory ? compute : memory);
}

double sona_cost_us(const sona_backend *b, sona_op op, const void *args)
{
    sona_op_work w;
    if (!sona_op_work_of(op, args, &w))
        return 0.0;
    sona_cost_model m;
    sona_cost_model_get(b, &m);
    return model_us(&m, op, &w);
}

const sona_backend *sona_route(sona_op op, const void *args, const sona_backend *device)
{
    const sona_backend *cpu = sona_cpu_backend();
    const char *forced = sona_env_backend();
    if (!device || device->host_memory || !sona_backend_supports(device, op, args))
        return cpu;
    if (forced)
        return !strcmp(forced, device->name) ? device : cpu;
    return sona_cost_us(device, op, args) < sona_cost_us(cpu, op, args) ? device : cpu;
}

/* ---- shape families and crossovers ----------------------------------------------------- */

int sona_cost_shape(sona_op op, uint64_t size, sona_op_args *a, const char **axis)
{
    const uint32_t s = size > UINT32_MAX ? UINT32_MAX : (uint32_t)size;
    memset(a, 0, sizeof *a);
    const char *what = "";
    switch (op) {
    case SONA_OP_LORA_APPLY:
        a->apply.w = (sona_lora_weights){.hidden = 4096, .rank = 16, .num_adapters = 64};
        a->apply.n = s;
        what = "rows, hidden 4096, rank 16, 64 adapters";
        break;
    case SONA_OP_LORA_GRAD:
        a->grad.w = (sona_lora_weights){.hidden = 4096, .rank = 16, .num_adapters = 64};
        a->grad.n = s;
        what = "rows, hidden 4096, rank 16, 64 adapters";
        break;
    case SONA_OP_PARAM_UPDATE:
        a->upd.segments = 1;
        a->upd.len = s;
        what = "floats, no Fisher";
        break;
    case SONA_OP_SQDIST_ARGMIN:
        a->sq = (sona_sqdist_argmin_args){.n = s, .k = 100, .d = 256};
        what = "rows, k 100, d 256";
        break;
    case SONA_OP_KNN_EXACT:
        a->knn = (sona_knn_exact_args){.m = s, .n = 10000, .d = 256, .k = 10};
        what = "queries, 10 000 x 256, k 10";
        break;
    case SONA_OP_GEMM:
        a->gemm = (sona_gemm_args){.m = s, .n = s, .k = s, .alpha = 1.0f};
        what = "m = n = k";
        break;
    case SONA_OP_CLUSTER_SUMS:
        a->cs = (sona_cluster_sums_args){.n = s, .k = 100, .d = 256};
        what = "rows, k 100, d 256";
        break;
    default:
        return 0;
    }
    if (axis)
        *axis = what;
    return 1;
}

/* Whether device costs less than the CPU at size s of op's family (the models already got). */
static int device_wins(sona_op op, uint64_t s, const sona_cost_model *dev, const sona_cost_model *cpu)
{
    sona_op_args a;
    sona_op_work w;
    if (!sona_cost_shape(op, s, &a, NULL) || !sona_op_work_of(op, &a, &w))
        return 0;
    return model_us(dev, op, &w) < model_us(cpu, op, &w);
}

uint64_t sona_cost_crossover(sona_op op, const sona_backend *device)
{
    if (!device || device->host_memory)
        return 0;
    sona_cost_model dev, cpu;
    sona_cost_model_get(device, &dev);
    sona_cost_model_get(sona_cpu_backend(), &cpu);
    uint64_t hi = 1;
    while (hi <= (1u << 26) && !device_wins(op, hi, &dev, &cpu))
        hi *= 2;
    if (hi > (1u << 26))
        return 0;
    uint64_t lo = hi / 2; /* loses (or 0) */
    while (hi - lo > 1) {
        const uint64_t mid = lo + (hi - lo) / 2;
        if (device_wins(op, mid, &dev, &cpu))
            hi = mid;
        else
            lo = mid;
    }
    return hi;
}

/* ---- call counters --------------------------------------------------------------------- */

/* Each thread counts in a block of its own, with plain loads and stores on its own cache lines;
 * a reader sums every live block and what exited threads left. One shared counter took a locked
 * add per call: 11.9 ns alone and 15.4 ns with two threads on this machine's EPYC, against
 * 2.6 ns for the block, on ops as short as micro_lora_forward's 30 ns. Blocks are linked from
 * `blocks`, so one left by a thread that never exits (the main thread) stays reachable. */
typedef struct count_block {
    atomic_uint_fast64_t n[SONA_OP_COUNT][SONA_KIND_COUNT];
    struct count_block *prev, *next;
} count_block;

static _Thread_local count_block *my_block;
static count_block *blocks;
static atomic_uint_fast64_t retired[SONA_OP_COUNT][SONA_KIND_COUNT];
static pthread_mutex_t blocks_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t block_key;
static pthread_once_t block_key_once = PTHREAD_ONCE_INIT;
static int block_key_ok;

/* At a thread's exit: its counts into `retired`, its block unlinked and freed. */
static void block_retire(void *p)
{
    count_block *b = p;
    pthread_mutex_lock(&blocks_mu);
    for (int op = 0; op < SONA_OP_COUNT; op++)
        for (int k = 0; k < SONA_KIND_COUNT; k++)
            atomic_fetch_add_explicit(&retired[op][k], atomic_load_explicit(&b->n[op][k], memory_order_relaxed),
                                      memory_order_relaxed);
    if (b->prev)
        b->prev->next = b->next;
    else
        blocks = b->next;
    if (b->next)
        b->next->prev = b->prev;
    pthread_mutex_unlock(&blocks_mu);
    free(b);
}

static void block_key_make(void) { block_key_ok = pthread_key_create(&block_key, block_retire) == 0; }

static count_block *block_new(void)
{
    pthread_once(&block_key_once, block_key_make);
    count_block *b = calloc(1, sizeof *b);
    if (!b || !block_key_ok || pthread_setspecific(block_key, b) != 0) {
        free(b);
        return NULL;
    }
    pthread_mutex_lock(&blocks_mu);
    b->next = blocks;
    if (blocks)
        blocks->prev = b;
    blocks = b;
    pthread_mutex_unlock(&blocks_mu);
    return my_block = b;
}

void sona_dispatch_count_call(sona_op op, const sona_backend *b)
{
    if ((unsigned)op >= SONA_OP_COUNT)
        return;
    const sona_backend_kind k = sona_backend_kind_of(b);
    count_block *blk = my_block ? my_block : block_new();
    if (!blk) { /* out of memory: the shared counter */
        atomic_fetch_add_explicit(&retired[op][k], 1, memory_order_relaxed);
        return;
    }
    /* Only this thread writes its block: load and store, no locked add. */
    atomic_store_explicit(&blk->n[op][k], atomic_load_explicit(&blk->n[op][k], memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

uint64_t sona_dispatch_calls(sona_op op, sona_backend_kind k)
{
    if ((unsigned)op >= SONA_OP_COUNT || (unsigned)k >= SONA_KIND_COUNT)
        return 0;
    pthread_mutex_lock(&blocks_mu);
    uint64_t sum = atomic_load_explicit(&retired[op][k], memory_order_relaxed);
    for (const count_block *b = blocks; b; b = b->next)
        sum += atomic_load_explicit(&b->n[op][k], memory_order_relaxed);
    pthread_mutex_unlock(&blocks_mu);
    return sum;
}

/* ---- the report ------------------------------------------------------------------------ */

void sona_cost_report(FILE *f)
{
    /* A backend that is not available here is reported from its kind's table, on a stand-in
     * with no ops (which is never measured). */
    static const sona_backend stand_in[SONA_KIND_COUNT] = {
        [SONA_KIND_OPENCL] = {.name = "opencl", .device = "table"},
        [SONA_KIND_CUDA] = {.name = "cuda", .device = "table"},
    };
    const sona_backend *be[SONA_KIND_COUNT] = {sona_cpu_backend()};
    int here[SONA_KIND_COUNT] = {1};
    char why[256];
    for (int k = 1; k < SONA_KIND_COUNT; k++) {
        here[k] = sona_backend_get(sona_backend_kind_name((sona_backend_kind)k), &be[k], why, sizeof why) == SONA_OK &&
                  !be[k]->host_memory;
        if (!here[k])
            be[k] = &stand_in[k];
    }
    const char *forced = sona_env_backend();
    fprintf(f, "routing:   by cost: launch + transfer / link + max(flops / peak, bytes / memory)%s%s%s\n",
            forced ? "; SONA_BACKEND=" : "", forced ? forced : "", forced ? " overrides it" : "");
    fprintf(f, "  %-8s %10s %12s %14s %12s %22s\n", "model", "launch", "link", "peak", "memory", "cache");
    for (int k = 0; k < SONA_KIND_COUNT; k++) {
        sona_cost_model m;
        sona_cost_model_get(be[k], &m);
        char link[32] = "-", cache[48] = "-";
        if (m.transfer_gbs > 0)
            snprintf(link, sizeof link, "%.1f GB/s", m.transfer_gbs);
        if (m.cache_bytes > 0)
            snprintf(cache, sizeof cache, "%.1f GB/s to %.0f MiB", m.cache_gbs, m.cache_bytes / 1048576.0);
        fprintf(f, "  %-8s %7.2f us %12s %9.1f GF/s %7.1f GB/s %22s  %s\n", sona_backend_kind_name((sona_backend_kind)k),
                m.launch_us, link, m.peak_gflops, m.memory_gbs, cache,
                !here[k] ? "table (not available here)" : m.calibrated ? "measured" : "table");
    }
    fprintf(f, "  %-14s", "op");
    for (int k = 1; k < SONA_KIND_COUNT; k++) {
        char head[32];
        snprintf(head, sizeof head, "%s from", sona_backend_kind_name((sona_backend_kind)k));
        fprintf(f, " %11s", head);
    }
    fprintf(f, "   %-21s   %s\n", "calls cpu/opencl/cuda", "size axis (a device takes over from this size)");
    for (int op = 0; op < SONA_OP_COUNT; op++) {
        fprintf(f, "  %-14s", sona_op_name((sona_op)op));
        for (int k = 1; k < SONA_KIND_COUNT; k++) {
            char at[32];
            const uint64_t c = sona_cost_crossover((sona_op)op, be[k]);
            if (c)
                snprintf(at, sizeof at, "%llu%s", (unsigned long long)c, here[k] ? "" : "*");
            else
                snprintf(at, sizeof at, "never%s", here[k] ? "" : "*");
            fprintf(f, " %11s", at);
        }
        char calls_text[64];
        snprintf(calls_text, sizeof calls_text, "%llu/%llu/%llu",
                 (unsigned long long)sona_dispatch_calls((sona_op)op, SONA_KIND_CPU),
                 (unsigned long long)sona_dispatch_calls((sona_op)op, SONA_KIND_OPENCL),
                 (unsigned long long)sona_dispatch_calls((sona_op)op, SONA_KIND_CUDA));
        const char *axis = "";
        sona_op_args a;
        (void)sona_cost_shape((sona_op)op, 1, &a, &axis);
        fprintf(f, "   %-21s   %s\n", calls_text, axis);
    }
    for (int k = 1; k < SONA_KIND_COUNT; k++)
        if (!here[k]) {
            fprintf(f, "  *: from the table of a backend not available here\n");
            break;
        }
}
