/* SPDX-License-Identifier: MIT */
/* The scalar CPU variant: plain C, the reference every other variant is checked against, and
 * always built. Accumulates in float like the vector variants (the tests' reference is double). */
#include "cpu/cpu.h"
#include "cpu/vec.h"

#include "common/half.h"
#include "common/q8.h"

#include <math.h>
#include <string.h>

sona_status sona_scalar_lora_apply(void *ctx, const sona_lora_apply_args *a)
{
    (void)ctx;
    const uint32_t H = a->w.hidden, r = a->w.rank;
    float t[SONA_LORA_MAX_RANK];
    for (uint32_t i = 0; i < a->n; i++) {
        const float *x = a->x + (size_t)i * H;
        float *y = a->y + (size_t)i * H;
        const int32_t id = a->ids ? a->ids[i] : 0;
        if (id < 0) {
            if (y != x)
                memcpy(y, x, H * sizeof *y);
            continue;
        }
        const float *A = a->w.A + (size_t)id * r * H;
        const float *Bt = a->w.Bt + (size_t)id * r * H;
        const float s = a->w.scale[id];
        for (uint32_t j = 0; j < r; j++) {
            float acc = 0.0f;
            for (uint32_t h = 0; h < H; h++)
                acc += A[(size_t)j * H + h] * x[h];
            t[j] = s * acc;
        }
        for (uint32_t h = 0; h < H; h++) {
            float acc = x[h];
            for (uint32_t j = 0; j < r; j++)
                acc += Bt[(size_t)j * H + h] * t[j];
            y[h] = acc;
        }
    }
    return SONA_OK;
}

sona_status sona_scalar_lora_grad(void *ctx, const sona_lora_grad_args *a)
{
    (void)ctx;
    const uint32_t H = a->w.hidden, r = a->w.rank;
    float u[SONA_LORA_MAX_RANK], v[SONA_LORA_MAX_RANK];
    for (uint32_t i = 0; i < a->n; i++) {
        const int32_t id = a->ids ? a->ids[i] : 0;
        if (id < 0)
            continue;
        const float *x = a->x + (size_t)i * H;
        const float *d = a->d + (size_t)i * H;
        const size_t off = (size_t)id * r * H;
        const float *A = a->w.A + off, *Bt = a->w.Bt + off;
        float *gA = a->gA + off, *gBt = a->gBt + off;
        const float c = a->wt[i] * a->w.scale[id];
        for (uint32_t j = 0; j < r; j++) {
            float ax = 0.0f, bd = 0.0f;
            for (uint32_t h = 0; h < H; h++) {
                ax += A[(size_t)j * H + h] * x[h];
                bd += Bt[(size_t)j * H + h] * d[h];
            }
            u[j] = c * ax;
            v[j] = c * bd;
        }
        for (uint32_t j = 0; j < r; j++) {
            for (uint32_t h = 0; h < H; h++) {
                gA[(size_t)j * H + h] += v[j] * x[h];
                gBt[(size_t)j * H + h] += u[j] * d[h];
            }
        }
    }
    return SONA_OK;
}

sona_status sona_scalar_param_update(void *ctx, const sona_param_update_args *a)
{
    (void)ctx;
    for (uint32_t seg = 0; seg < a->segments; seg++) {
        const size_t base = (size_t)seg * a->len;
        const float *gs = a->g + base;
        float c = 1.0f;
        if (a->clip_norm > 0.0f) {
            double ss = 0.0;
            for (uint32_t i = 0; i < a->len; i++)
                ss += (double)gs[i] * gs[i];
            const double norm = sqrt(ss);
            if (norm > a->clip_norm)
                c = (float)(a->clip_norm / norm);
        }
        for (size_t i = base; i < base + a->len; i++) {
            const float g = c * a->g[i];
            const float th = a->theta[i];
            float step = g;
            if (a->fisher_sum)
                step -= a->lambda * (a->fisher_sum[i] * th - a->fisher_theta[i]);
            a->theta[i] = th + a->lr * step;
            if (a->fisher)
                a->fisher[i] = a->decay * a->fisher[i] + (1.0f - a->decay) * g * g;
        }
    }
    return SONA_OK;
}

sona_status sona_scalar_sqdist_argmin(void *ctx, const sona_sqdist_argmin_args *a)
{
    (void)ctx;
    const uint32_t d = a->d;
    for (uint32_t i = 0; i < a->n; i++) {
        const float *x = a->X + (size_t)i * d;
        float best = INFINITY;
        int32_t best_j = 0;
        for (uint32_t j = 0; j < a->k; j++) {
            const float *c = a->C + (size_t)j * d;
            float acc = 0.0f;
            for (uint32_t t = 0; t < d; t++) {
                const float diff = x[t] - c[t];
                acc += diff * diff;
            }
            if (acc < best) {
                best = acc;
                best_j = (int32_t)j;
            }
        }
        a->idx[i] = best_j;
        a->dist[i] = best;
    }
    return SONA_OK;
}

static float dot(const float *a, const float *b, uint32_t n)
{
    float acc = 0.0f;
    for (uint32_t i = 0; i < n; i++)
        acc += a[i] * b[i];
    return acc;
}

sona_status sona_scalar_knn_exact(void *ctx, const sona_knn_exact_args *a)
{
    (void)ctx;
    const uint32_t d = a->d, k = a->k;
    for (uint32_t q = 0; q < a->m; q++) {
        const float *qv = a->Q + (size_t)q * d;
        int32_t *idx = a->idx + (size_t)q * k;
        float *sim = a->sim + (size_t)q * k;
        const float qn = sqrtf(dot(qv, qv, d));
        uint32_t len = 0;
        for (uint32_t i = 0; i < a->n; i++) {
            const float *p = a->P + (size_t)i * d;
            const float pn = sqrtf(dot(p, p, d));
            const float s = (qn > 0.0f && pn > 0.0f) ? dot(qv, p, d) / (qn * pn) : 0.0f;
            sona_topk_insert(idx, sim, k, &len, (int32_t)i, s);
        }
        for (uint32_t t = len; t < k; t++) {
            idx[t] = -1;
            sim[t] = -INFINITY;
        }
    }
    return SONA_OK;
}

sona_status sona_scalar_gemm(void *ctx, const sona_gemm_args *a)
{
    (void)ctx;
    const uint32_t M = a->m, N = a->n, K = a->k;
    for (uint32_t i = 0; i < M; i++) {
        for (uint32_t j = 0; j < N; j++) {
            float acc = 0.0f;
            for (uint32_t p = 0; p < K; p++) {
                const float av = a->trans_a ? a->A[(size_t)p * M + i] : a->A[(size_t)i * K + p];
                const float bv = a->trans_b ? a->B[(size_t)j * K + p] : a->B[(size_t)p * N + j];
                acc += av * bv;
            }
            float *c = &a->C[(size_t)i * N + j];
            *c = a->beta == 0.0f ? a->alpha * acc : a->alpha * acc + a->beta * *c;
        }
    }
    return SONA_OK;
}

sona_status sona_scalar_cluster_sums(void *ctx, const sona_cluster_sums_args *a)
{
    (void)ctx;
    memset(a->sums, 0, (size_t)a->k * a->d * sizeof *a->sums);
    memset(a->counts, 0, a->k * sizeof *a->counts);
    for (uint32_t i = 0; i < a->n; i++) {
        const int32_t j = a->idx[i];
        if (j < 0 || j >= (int32_t)a->k)
            continue;
        const float *x = a->X + (size_t)i * a->d;
        float *s = a->sums + (size_t)j * a->d;
        for (uint32_t t = 0; t < a->d; t++)
            s[t] += x[t];
        a->counts[j]++;
    }
    return SONA_OK;
}

int sona_cpu_supports(void *ctx, sona_op op, const void *args)
{
    (void)ctx;
    if (op == SONA_OP_LORA_APPLY)
        return ((const sona_lora_apply_args *)args)->w.rank <= SONA_LORA_MAX_RANK;
    if (op == SONA_OP_LORA_GRAD)
        return ((const sona_lora_grad_args *)args)->w.rank <= SONA_LORA_MAX_RANK;
    return 1;
}

/* ---- host kernels (backend/ops.h sona_host_kernels) ---- */

float sona_dot_scalar(const float *a, const float *b, size_t n)
{
    float acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

float sona_dot_f16_scalar(const float *a, const uint16_t *b, size_t n)
{
    float acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * sona_f16_to_f32(b[i + j]);
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        s += a[i] * sona_f16_to_f32(b[i]);
    return s;
}

void sona_widen_f16_scalar(const uint16_t *h, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = sona_f16_to_f32(h[i]);
}

SONA_HOST_LOOPS(scalar)

/* The four-at-once double kernels as loops (the SIMD variants have their own; the rest take
 * these). */
static void dot4_lanes_f64_scalar(const double *x, const double *const *y, size_t n, double *acc)
{
    for (size_t j = 0; j < 4; j++)
        host_dot_lanes_f64(x, y[j], n, acc + 8 * j);
}

static void dot4_lanes_f32_f64_scalar(const float *x, const float *const *y, size_t n, double *acc)
{
    for (size_t j = 0; j < 4; j++)
        host_dot_lanes_f32_f64(x, y[j], n, acc + 8 * j);
}

static void axpy4_f64_scalar(double *y, const double *const *x, const double *c, size_t n)
{
    host_axpy4_f64(y, x, c, n);
}

static void axpy4_f32_f64_scalar(double *y, const float *const *x, const double *c, size_t n)
{
    host_axpy4_f32_f64(y, x, c, n);
}

int sona_q8_encode_scalar(const float *x, size_t n, void *out) { return host_q8_encode(x, n, out); }

/* Row by row, each product a dot (the SIMD variants group the rows by adapter). */
static void lora_down_scalar(const float *W, uint32_t r, uint32_t h, uint32_t adapters, uint32_t n, const int32_t *ids,
                             const float *x, float *z)
{
    (void)adapters;
    for (uint32_t i = 0; i < n; i++) {
        if (ids[i] < 0)
            continue;
        const float *w = W + (size_t)ids[i] * r * h;
        for (uint32_t j = 0; j < r; j++)
            z[(size_t)i * r + j] = sona_dot_scalar(w + (size_t)j * h, x + (size_t)i * h, h);
    }
}

const sona_backend sona_cpu_scalar = {
    .name = "scalar",
    .device = "host CPU, plain C",
    SONA_CPU_HOST_FIELDS,
#define SONA_OP(id, field, args) .field = sona_scalar_##field,
#include "backend/ops.def"
#undef SONA_OP
    .host = {.dot = sona_dot_scalar, .dot_f16 = sona_dot_f16_scalar,
             .widen_f16 = sona_widen_f16_scalar, .dot_q8 = sona_dot_q8_scalar,
             SONA_HOST_LOOPS_FIELDS(scalar), .dot4_lanes_f64 = dot4_lanes_f64_scalar,
             .dot4_lanes_f32_f64 = dot4_lanes_f32_f64_scalar, .axpy4_f64 = axpy4_f64_scalar,
             .axpy4_f32_f64 = axpy4_f32_f64_scalar, .lora_down = lora_down_scalar},
};
