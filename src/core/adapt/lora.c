/* SPDX-License-Identifier: MIT */
/* LoRA adapter sets: Micro-LoRA (tenants) and Base-LoRA (layers) are the same object. Weights
 * live in the buffers of the handle's home backend; ops go through the dispatch layer. */
#include "sona/lora.h"

#include "common/error.h"
#include "common/matmul.h"
#include "common/rng.h"
#include "core/adapt/lora_internal.h"
#include "dispatch/dispatch.h"
#include "dispatch/staging.h"
#include "dispatch/vecmath.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A growable device buffer for per-call inputs when weights live off the host. */

enum { ST_X, ST_Y, ST_D, ST_W, ST_IDS, ST_EWC0, ST_COUNT = ST_EWC0 + 6 };

struct sona_lora {
    sona_lora_config cfg;
    const sona_backend *be;
    size_t adapter_floats;   /* rank * hidden */
    float *A, *Bt, *scale;   /* backend buffers: count * adapter_floats, count */
    float *gA, *gBt;         /* gradient accumulators, same shape as A and Bt */
    int paired;              /* host memory: Bt follows A and gBt follows gA in one block */
    uint32_t *pending;       /* host: signals accumulated per adapter */
    uint64_t pending_total;
    float code_rate;         /* preconditioning of B's steps by the code covariance: 0 = off */
    double *code_cov;        /* count x rank x rank: running mean of (A x)(A x)^T over signals */
    double *code_weight;     /* count: the weight that running mean has gathered (bias correction) */
    sona_staging stage[ST_COUNT];
    sona_errbuf err;
};

void sona_lora_config_default(sona_lora_config *cfg, sona_lora_kind kind, uint32_t hidden)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof *cfg);
    cfg->hidden = hidden;
    cfg->seed = 42;
    /* alpha = 2 x rank for both kinds (scale s = 2), the rule of the engine's presets
     * (sona_engine_config_default), so a standalone adapter learns like the engine's. */
    if (kind == SONA_LORA_BASE) {
        cfg->rank = 8;
        cfg->count = 12;
        cfg->alpha = 16.0f;
        cfg->learning_rate = 0.001f;
        cfg->clip_norm = 1.0f;
    } else {
        cfg->rank = 2;
        cfg->count = 1;
        cfg->alpha = 4.0f;
        cfg->learning_rate = 0.01f;
        cfg->clip_norm = 1.0f;
    }
}

const char *sona_lora_last_error(const sona_lora *lora)
{
    return lora ? lora->err.msg : sona_last_error();
}

const sona_lora_config *sona_lora_get_config(const sona_lora *lora)
{
    return lora ? &lora->cfg : NULL;
}

static sona_status backend_failed(sona_lora *l, const char *call, sona_status st)
{
    const char *detail = l->be->last_error ? l->be->last_error(l->be->ctx) : "";
    return sona_fail(&l->err, st, "%s on backend %s failed: %s", call, l->be->name, detail);
}

static sona_status stage_input(sona_lora *l, int slot, const void *src, size_t bytes, void **out)
{
    if (l->be->host_memory) {
        *out = (void *)src;
        return SONA_OK;
    }
    const sona_status st = sona_staging_put(l->be, &l->stage[slot], src, bytes, out);
    if (st == SONA_E_NOMEM)
        return sona_fail(&l->err, st, "device allocation of %zu bytes failed", bytes);
    return st == SONA_OK ? st : backend_failed(l, "upload", st);
}

static sona_status alloc_zero(sona_lora *l, size_t floats, float **out)
{
    void *buf = NULL;
    if (l->be->alloc(l->be->ctx, floats * sizeof(float), &buf) != SONA_OK)
        return SONA_E_NOMEM;
    *out = buf;
    if (l->be->host_memory) /* the CPU's buffers come zeroed (cpu/cpu.h) */
        return SONA_OK;
    float *zero = calloc(floats, sizeof(float));
    if (!zero)
        return SONA_E_NOMEM;
    sona_status st = l->be->upload(l->be->ctx, buf, 0, zero, floats * sizeof(float));
    free(zero);
    return st;
}

/* Two zeroed buffers of `floats` each: on host memory one block, the second half following the
 * first (so the engine's EWC++ reads A|Bt and gA|gBt in place, sona_lora_host_params); on a
 * device two buffers (an OpenCL buffer is a handle, not an address to offset). */
static sona_status alloc_pair(sona_lora *l, size_t floats, float **first, float **second)
{
    l->paired = l->be->host_memory;
    if (!l->paired)
        return alloc_zero(l, floats, first) == SONA_OK ? alloc_zero(l, floats, second) : SONA_E_NOMEM;
    if (alloc_zero(l, 2 * floats, first) != SONA_OK)
        return SONA_E_NOMEM;
    *second = *first + floats;
    return SONA_OK;
}

sona_status sona_lora_create(const sona_lora_config *cfg, sona_lora **out)
{
    const sona_backend *be;
    char why[256];
    sona_status st = sona_backend_default(&be, why, sizeof why);
    if (st != SONA_OK) {
        if (out)
            *out = NULL;
        return sona_fail(NULL, st, "%s: %s", __func__, why);
    }
    return sona_lora_create_on(cfg, be, out);
}

sona_status sona_lora_create_on(const sona_lora_config *cfg, const sona_backend *be, sona_lora **out)
{
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "sona_lora_create: out is NULL");
    *out = NULL;
    if (!cfg)
        return sona_fail(NULL, SONA_E_NULL, "sona_lora_create: cfg is NULL");
    if (cfg->hidden == 0 || cfg->count == 0)
        return sona_fail(NULL, SONA_E_INVALID, "sona_lora_create: hidden (%u) and count (%u) must be >= 1",
                         cfg->hidden, cfg->count);
    if (cfg->rank == 0 || cfg->rank > SONA_LORA_MAX_RANK)
        return sona_fail(NULL, SONA_E_INVALID, "sona_lora_create: rank %u is outside 1..%d", cfg->rank,
                         SONA_LORA_MAX_RANK);
    if (cfg->count > INT32_MAX) /* adapter ids are int32_t */
        return sona_fail(NULL, SONA_E_INVALID, "sona_lora_create: count %u is over 2^31 - 1", cfg->count);
    /* Each set of weights or gradients (A and B together) must have a byte size that fits. */
    if (cfg->count > SIZE_MAX / (2 * sizeof(float) * cfg->rank) / cfg->hidden)
        return sona_fail(NULL, SONA_E_NOMEM, "sona_lora_create: %u adapters of %u x %u are too large",
                         cfg->count, cfg->hidden, cfg->rank);
    if (!isfinite(cfg->alpha) || !isfinite(cfg->learning_rate) || !isfinite(cfg->clip_norm))
        return sona_fail(NULL, SONA_E_NONFINITE, "sona_lora_create: alpha, learning_rate and clip_norm must be finite");
    if (cfg->clip_norm < 0.0f)
        return sona_fail(NULL, SONA_E_INVALID, "sona_lora_create: clip_norm %g is negative", (double)cfg->clip_norm);

    if (!be)
        return sona_fail(NULL, SONA_E_NULL, "sona_lora_create: backend is NULL");

    sona_lora *l = calloc(1, sizeof *l);
    if (!l)
        return sona_fail(NULL, SONA_E_NOMEM, "sona_lora_create: out of memory");
    l->cfg = *cfg;
    l->be = be;
    l->adapter_floats = (size_t)cfg->rank * cfg->hidden;
    const size_t total = l->adapter_floats * cfg->count;
    l->pending = calloc(cfg->count, sizeof *l->pending);
    sona_status st;
    if (!l->pending || alloc_pair(l, total, &l->A, &l->Bt) != SONA_OK ||
        alloc_pair(l, total, &l->gA, &l->gBt) != SONA_OK || alloc_zero(l, cfg->count, &l->scale) != SONA_OK) {
        sona_lora_destroy(l);
        return sona_fail(NULL, SONA_E_NOMEM, "sona_lora_create: out of memory for %zu weights", total);
    }
    /* A ~ U(-sqrt(3/H), sqrt(3/H)): variance 1/H, so |A x| is about |x| at any width. Written in
     * place on host memory; staged and uploaded to a device. */
    float *hostA = l->be->host_memory ? l->A : malloc(total * sizeof(float));
    float *hostS = l->be->host_memory ? l->scale : malloc(cfg->count * sizeof(float));
    if (!hostA || !hostS) {
        if (!l->be->host_memory) {
            free(hostA);
            free(hostS);
        }
        sona_lora_destroy(l);
        return sona_fail(NULL, SONA_E_NOMEM, "sona_lora_create: out of memory for %zu weights", total);
    }
    const float bound = sqrtf(3.0f / (float)cfg->hidden);
    for (uint32_t a = 0; a < cfg->count; a++) {
        sona_rng rng;
        sona_rng_seed(&rng, cfg->seed, a);
        float *dst = hostA + (size_t)a * l->adapter_floats;
        for (size_t i = 0; i < l->adapter_floats; i++)
            dst[i] = (2.0f * sona_rng_uniform(&rng) - 1.0f) * bound;
        hostS[a] = cfg->alpha / (float)cfg->rank;
    }
    st = SONA_OK;
    if (!be->host_memory) {
        st = be->upload(be->ctx, l->A, 0, hostA, total * sizeof(float));
        if (st == SONA_OK)
            st = be->upload(be->ctx, l->scale, 0, hostS, cfg->count * sizeof(float));
        free(hostA);
        free(hostS);
    }
    if (st != SONA_OK) {
        sona_lora_destroy(l);
        return sona_fail(NULL, SONA_E_BACKEND, "sona_lora_create: upload to %s failed", be->name);
    }
    *out = l;
    return SONA_OK;
}

/* The backend buffers of l (weights, scale, gradients) freed on l's backend, and its staging. */
static void free_buffers(sona_lora *l)
{
    float *bufs[] = {l->A, l->paired ? NULL : l->Bt, l->scale, l->gA, l->paired ? NULL : l->gBt};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            l->be->free(l->be->ctx, bufs[i]);
    for (int i = 0; i < ST_COUNT; i++)
        sona_staging_free(l->be, &l->stage[i]);
    l->A = l->Bt = l->scale = l->gA = l->gBt = NULL;
}

void sona_lora_destroy(sona_lora *l)
{
    if (!l)
        return;
    free_buffers(l);
    free(l->pending);
    free(l->code_cov);
    free(l->code_weight);
    free(l);
}

sona_status sona_lora_move(sona_lora *l, const sona_backend *be)
{
    if (!l || !be)
        return sona_fail(l ? &l->err : NULL, SONA_E_NULL, "%s: NULL argument", __func__);
    if (be == l->be)
        return SONA_OK;
    const size_t total = l->adapter_floats * l->cfg.count, bytes = total * sizeof(float);
    float *host = malloc((4 * total + l->cfg.count) * sizeof *host);
    if (!host)
        return sona_fail(&l->err, SONA_E_NOMEM, "%s: out of memory", __func__);
    float *A = host, *Bt = A + total, *gA = Bt + total, *gBt = gA + total, *scale = gBt + total;
    sona_status st = sona_lora_export(l, A, Bt, scale);
    if (st == SONA_OK)
        st = sona_lora_export_grad(l, gA, gBt);
    if (st != SONA_OK) {
        free(host);
        return st;
    }
    /* The new home's buffers in a copy of the handle: l changes only once they all hold. */
    sona_lora to = *l;
    to.be = be;
    to.A = to.Bt = to.scale = to.gA = to.gBt = NULL;
    memset(to.stage, 0, sizeof to.stage);
    if (alloc_pair(&to, total, &to.A, &to.Bt) != SONA_OK || alloc_pair(&to, total, &to.gA, &to.gBt) != SONA_OK ||
        alloc_zero(&to, l->cfg.count, &to.scale) != SONA_OK)
        st = SONA_E_NOMEM;
    const void *src[5] = {A, Bt, gA, gBt, scale};
    float *dst[5] = {to.A, to.Bt, to.gA, to.gBt, to.scale};
    for (int i = 0; i < 5 && st == SONA_OK; i++)
        if (be->upload(be->ctx, dst[i], 0, src[i], i < 4 ? bytes : l->cfg.count * sizeof(float)) != SONA_OK)
            st = SONA_E_BACKEND;
    free(host);
    if (st != SONA_OK) {
        free_buffers(&to);
        return sona_fail(&l->err, st, "%s: to %s: %s", __func__, be->name, sona_status_str(st));
    }
    free_buffers(l);
    l->be = be;
    l->paired = to.paired;
    l->A = to.A, l->Bt = to.Bt, l->scale = to.scale, l->gA = to.gA, l->gBt = to.gBt;
    return SONA_OK;
}

const sona_backend *sona_lora_backend(const sona_lora *l) { return l ? l->be : NULL; }

static sona_lora_weights weights_of(const sona_lora *l)
{
    return (sona_lora_weights){.hidden = l->cfg.hidden,
                               .rank = l->cfg.rank,
                               .num_adapters = l->cfg.count,
                               .A = l->A,
                               .Bt = l->Bt,
                               .scale = l->scale};
}

static sona_status check_ids(sona_lora *l, const char *fn, uint32_t n, const int32_t *ids)
{
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] < -1 || ids[i] >= (int32_t)l->cfg.count)
            return sona_fail(&l->err, SONA_E_INVALID, "%s: row %u uses adapter %d, the set has %u",
                             fn, i, ids[i], l->cfg.count);
    return SONA_OK;
}

sona_status sona_lora_forward_batch(sona_lora *l, uint32_t n, const int32_t *ids, const float *x,
                                    float *y)
{
    if (!l)
        return sona_fail(NULL, SONA_E_NULL, "%s: lora is NULL", __func__);
    if (!ids || !x || !y)
        return sona_fail(&l->err, SONA_E_NULL, "%s: ids, x and y are required", __func__);
    if (n == 0)
        return sona_fail(&l->err, SONA_E_INVALID, "%s: n is 0", __func__);
    sona_status st = check_ids(l, "sona_lora_forward_batch", n, ids);
    if (st != SONA_OK)
        return st;
    const size_t bytes = (size_t)n * l->cfg.hidden * sizeof(float);
    sona_lora_apply_args a = {.w = weights_of(l), .n = n};
    void *dx, *dy = NULL, *dids;
    if ((st = stage_input(l, ST_X, x, bytes, &dx)) != SONA_OK ||
        (st = stage_input(l, ST_IDS, ids, n * sizeof *ids, &dids)) != SONA_OK)
        return st;
    if (l->be->host_memory)
        dy = y;
    else if ((st = stage_input(l, ST_Y, NULL, bytes, &dy)) != SONA_OK)
        return st;
    a.x = dx;
    a.y = dy;
    a.ids = dids;
    if ((st = sona_op_run(l->be, SONA_OP_LORA_APPLY, &a)) != SONA_OK)
        return backend_failed(l, "lora_apply", st);
    if (!l->be->host_memory && l->be->download(l->be->ctx, y, dy, 0, bytes) != SONA_OK)
        return backend_failed(l, "download", SONA_E_BACKEND);
    return SONA_OK;
}

sona_status sona_lora_forward(sona_lora *l, int32_t adapter, const float *x, float *y)
{
    return sona_lora_forward_batch(l, 1, &adapter, x, y);
}

sona_status sona_lora_accumulate_batch(sona_lora *l, uint32_t n, const int32_t *ids, const float *x,
                                       const float *delta, const float *w)
{
    static const char fn[] = "sona_lora_accumulate";
    if (!l)
        return sona_fail(NULL, SONA_E_NULL, "%s: lora is NULL", fn);
    if (!ids || !x || !delta || !w)
        return sona_fail(&l->err, SONA_E_NULL, "%s: ids, x, delta and w are required", fn);
    if (n == 0)
        return sona_fail(&l->err, SONA_E_INVALID, "%s: n is 0", fn);
    sona_status st = check_ids(l, fn, n, ids);
    if (st != SONA_OK)
        return st;
    const size_t H = l->cfg.hidden, bytes = (size_t)n * H * sizeof(float);
    if (!sona_all_finite(x, n * H) || !sona_all_finite(delta, n * H) || !sona_all_finite(w, n))
        return sona_fail(&l->err, SONA_E_NONFINITE, "%s: NaN or Inf in x, delta or w; nothing accumulated", fn);
    void *dx, *dd, *dw, *dids;
    if ((st = stage_input(l, ST_X, x, bytes, &dx)) != SONA_OK ||
        (st = stage_input(l, ST_D, delta, bytes, &dd)) != SONA_OK ||
        (st = stage_input(l, ST_W, w, n * sizeof *w, &dw)) != SONA_OK ||
        (st = stage_input(l, ST_IDS, ids, n * sizeof *ids, &dids)) != SONA_OK)
        return st;
    sona_lora_grad_args a = {.w = weights_of(l), .n = n, .ids = dids, .x = dx, .d = dd, .wt = dw,
                             .gA = l->gA, .gBt = l->gBt};
    if ((st = sona_op_run(l->be, SONA_OP_LORA_GRAD, &a)) != SONA_OK)
        return backend_failed(l, "lora_grad", st);
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] >= 0) {
            l->pending[ids[i]]++;
            l->pending_total++;
        }
    return SONA_OK;
}

sona_status sona_lora_accumulate(sona_lora *l, int32_t adapter, const float *x, const float *delta,
                                 float w)
{
    return sona_lora_accumulate_batch(l, 1, &adapter, x, delta, &w);
}

uint64_t sona_lora_pending(const sona_lora *l) { return l ? l->pending_total : 0; }

static sona_status code_precondition_gradients(sona_lora *l);

/* Clears both gradient accumulators. */
static sona_status zero_gradients(sona_lora *l)
{
    const size_t bytes = l->adapter_floats * l->cfg.count * sizeof(float);
    if (l->be->host_memory) {
        memset(l->gA, 0, bytes);
        memset(l->gBt, 0, bytes);
        return SONA_OK;
    }
    float *zero = calloc(1, bytes);
    if (!zero)
        return sona_fail(&l->err, SONA_E_NOMEM, "out of memory clearing gradients");
    sona_status st = l->be->upload(l->be->ctx, l->gA, 0, zero, bytes);
    if (st == SONA_OK)
        st = l->be->upload(l->be->ctx, l->gBt, 0, zero, bytes);
    free(zero);
    return st == SONA_OK ? SONA_OK : backend_failed(l, "upload", st);
}

/* Stages one EWC++ host array of the shape of A for the backend (NULL stays NULL). */
static sona_status stage_ewc(sona_lora *l, int slot, const float *src, const float **out)
{
    *out = NULL;
    if (!src)
        return SONA_OK;
    void *buf;
    sona_status st = stage_input(l, ST_EWC0 + slot, src, l->adapter_floats * l->cfg.count * sizeof(float), &buf);
    *out = buf;
    return st;
}

/* One step over both matrices, optionally with EWC++ terms (t may be NULL). */
static sona_status apply_step(sona_lora *l, const sona_lora_ewc_terms *t)
{
    const int penalty = t && t->fisher_sum[0] && t->fisher_theta[0];
    if (l->pending_total == 0 && !penalty)
        return SONA_OK;
    if (l->code_rate > 0.0f && l->pending_total > 0) {
        const sona_status st = code_precondition_gradients(l);
        if (st != SONA_OK)
            return st;
    }
    /* One op per matrix over the whole set; each adapter is its own clipping segment, and an
     * adapter without signals has a zero gradient, which leaves it unchanged. A and B are
     * separate parameter vectors, clipped separately. */
    float *params[2] = {l->A, l->Bt}, *grads[2] = {l->gA, l->gBt};
    const size_t bytes = l->adapter_floats * l->cfg.count * sizeof(float);
    for (int m = 0; m < 2; m++) {
        sona_param_update_args u = {.segments = l->cfg.count,
                                    .len = (uint32_t)l->adapter_floats,
                                    .theta = params[m],
                                    .g = grads[m],
                                    .lr = l->cfg.learning_rate,
                                    .clip_norm = l->cfg.clip_norm};
        sona_status st;
        if (t) {
            const float *fisher;
            if ((st = stage_ewc(l, 3 * m, t->fisher_sum[m], &u.fisher_sum)) != SONA_OK ||
                (st = stage_ewc(l, 3 * m + 1, t->fisher_theta[m], &u.fisher_theta)) != SONA_OK ||
                (st = stage_ewc(l, 3 * m + 2, t->fisher[m], &fisher)) != SONA_OK)
                return st;
            u.fisher = (float *)fisher;
            u.lambda = penalty ? t->lambda : 0.0f;
            u.decay = t->decay;
        }
        st = sona_op_run(l->be, SONA_OP_PARAM_UPDATE, &u);
        if (st != SONA_OK)
            return backend_failed(l, "param_update", st);
        if (t && t->fisher[m] && !l->be->host_memory &&
            l->be->download(l->be->ctx, t->fisher[m], u.fisher, 0, bytes) != SONA_OK)
            return backend_failed(l, "download", SONA_E_BACKEND);
    }
    memset(l->pending, 0, l->cfg.count * sizeof *l->pending);
    l->pending_total = 0;
    return zero_gradients(l);
}

sona_status sona_lora_apply_updates(sona_lora *l)
{
    if (!l)
        return sona_fail(NULL, SONA_E_NULL, "%s: lora is NULL", __func__);
    return apply_step(l, NULL);
}

sona_status sona_lora_apply_updates_ewc(sona_lora *l, const sona_lora_ewc_terms *t)
{
    if (!l || !t)
        return sona_fail(l ? &l->err : NULL, SONA_E_NULL, "%s: NULL argument", __func__);
    return apply_step(l, t);
}

sona_status sona_lora_export(const sona_lora *cl, float *A, float *Bt, float *scale)
{
    sona_lora *l = (sona_lora *)cl; /* only the error buffer is written */
    const size_t bytes = l->adapter_floats * l->cfg.count * sizeof(float);
    if ((A && l->be->download(l->be->ctx, A, l->A, 0, bytes) != SONA_OK) ||
        (Bt && l->be->download(l->be->ctx, Bt, l->Bt, 0, bytes) != SONA_OK) ||
        (scale && l->be->download(l->be->ctx, scale, l->scale, 0, l->cfg.count * sizeof(float)) != SONA_OK))
        return backend_failed(l, "download", SONA_E_BACKEND);
    return SONA_OK;
}

sona_status sona_lora_export_grad(const sona_lora *cl, float *gA, float *gBt)
{
    sona_lora *l = (sona_lora *)cl; /* only the error buffer is written */
    const size_t bytes = l->adapter_floats * l->cfg.count * sizeof(float);
    if (l->be->download(l->be->ctx, gA, l->gA, 0, bytes) != SONA_OK ||
        l->be->download(l->be->ctx, gBt, l->gBt, 0, bytes) != SONA_OK)
        return backend_failed(l, "download", SONA_E_BACKEND);
    return SONA_OK;
}

void sona_lora_pending_counts(const sona_lora *l, uint32_t *out)
{
    memcpy(out, l->pending, l->cfg.count * sizeof *out);
}

/* Uploads a and bt (the whole set, layouts of A and Bt) to dst_a and dst_bt; refuses NaN/Inf
 * before anything is written. */
static sona_status upload_pair(sona_lora *l, const char *fn, void *dst_a, void *dst_bt, const float *a,
                               const float *bt)
{
    const size_t n = l->adapter_floats * l->cfg.count;
    if (!sona_all_finite(a, n) || !sona_all_finite(bt, n))
        return sona_fail(&l->err, SONA_E_NONFINITE, "%s: NaN or Inf in the values", fn);
    if (l->be->upload(l->be->ctx, dst_a, 0, a, n * sizeof(float)) != SONA_OK ||
        l->be->upload(l->be->ctx, dst_bt, 0, bt, n * sizeof(float)) != SONA_OK)
        return backend_failed(l, "upload", SONA_E_BACKEND);
    return SONA_OK;
}

sona_status sona_lora_import_grad(sona_lora *l, const float *gA, const float *gBt, const uint32_t *pending)
{
    const sona_status st = upload_pair(l, "sona_lora_import_grad", l->gA, l->gBt, gA, gBt);
    if (st != SONA_OK)
        return st;
    l->pending_total = 0;
    for (uint32_t i = 0; i < l->cfg.count; i++)
        l->pending_total += l->pending[i] = pending[i];
    return SONA_OK;
}

int sona_lora_host_params(const sona_lora *l, const float **theta, const float **g)
{
    if (!l->paired)
        return 0;
    *theta = l->A;
    *g = l->gA;
    return 1;
}

sona_status sona_lora_import(sona_lora *l, const float *A, const float *Bt)
{
    const sona_status st = upload_pair(l, "sona_lora_import", l->A, l->Bt, A, Bt);
    if (st != SONA_OK)
        return st;
    memset(l->pending, 0, l->cfg.count * sizeof *l->pending);
    l->pending_total = 0;
    return zero_gradients(l);
}

sona_status sona_lora_discard_pending(sona_lora *l)
{
    memset(l->pending, 0, l->cfg.count * sizeof *l->pending);
    l->pending_total = 0;
    return zero_gradients(l);
}

static sona_status check_adapter(sona_lora *l, const char *fn, int32_t adapter)
{
    if (adapter < 0 || adapter >= (int32_t)l->cfg.count)
        return sona_fail(&l->err, SONA_E_INVALID, "%s: adapter %d is outside 0..%u", fn, adapter,
                         l->cfg.count - 1);
    return SONA_OK;
}

sona_status sona_lora_get_weights(const sona_lora *cl, int32_t adapter, float *A, float *B)
{
    sona_lora *l = (sona_lora *)cl; /* only the error buffer is written */
    if (!l)
        return sona_fail(NULL, SONA_E_NULL, "%s: lora is NULL", __func__);
    sona_status st = check_adapter(l, "sona_lora_get_weights", adapter);
    if (st != SONA_OK)
        return st;
    const size_t af = l->adapter_floats, off = (size_t)adapter * af * sizeof(float);
    const uint32_t H = l->cfg.hidden, r = l->cfg.rank;
    if (A && l->be->download(l->be->ctx, A, l->A, off, af * sizeof(float)) != SONA_OK)
        return backend_failed(l, "download", SONA_E_BACKEND);
    if (B) {
        float *bt = malloc(af * sizeof(float));
        if (!bt)
            return sona_fail(&l->err, SONA_E_NOMEM, "%s: out of memory", __func__);
        if (l->be->download(l->be->ctx, bt, l->Bt, off, af * sizeof(float)) != SONA_OK) {
            free(bt);
            return backend_failed(l, "download", SONA_E_BACKEND);
        }
        for (uint32_t j = 0; j < r; j++)
            for (uint32_t h = 0; h < H; h++)
                B[(size_t)h * r + j] = bt[(size_t)j * H + h];
        free(bt);
    }
    return SONA_OK;
}

sona_status sona_lora_set_weights(sona_lora *l, int32_t adapter, const float *A, const float *B)
{
    if (!l)
        return sona_fail(NULL, SONA_E_NULL, "%s: lora is NULL", __func__);
    sona_status st = check_adapter(l, "sona_lora_set_weights", adapter);
    if (st != SONA_OK)
        return st;
    const size_t af = l->adapter_floats, off = (size_t)adapter * af * sizeof(float);
    const uint32_t H = l->cfg.hidden, r = l->cfg.rank;
    if ((A && !sona_all_finite(A, af)) || (B && !sona_all_finite(B, af)))
        return sona_fail(&l->err, SONA_E_NONFINITE, "%s: NaN or Inf in weights; adapter unchanged", __func__);
    float *bt = NULL;
    if (B) {
        if (!(bt = malloc(af * sizeof(float))))
            return sona_fail(&l->err, SONA_E_NOMEM, "%s: out of memory", __func__);
        for (uint32_t j = 0; j < r; j++)
            for (uint32_t h = 0; h < H; h++)
                bt[(size_t)j * H + h] = B[(size_t)h * r + j];
    }
    if ((A && l->be->upload(l->be->ctx, l->A, off, A, af * sizeof(float)) != SONA_OK) ||
        (bt && l->be->upload(l->be->ctx, l->Bt, off, bt, af * sizeof(float)) != SONA_OK)) {
        free(bt);
        return backend_failed(l, "upload", SONA_E_BACKEND);
    }
    free(bt);
    return SONA_OK;
}

/* ---- scale-invariant learning: signal normalisation and the output bound ------------------- */

/* The whole set's A and Bt on the host: in place on host memory, else downloaded into *copy
 * (the caller frees it). */
static sona_status host_weights(sona_lora *l, const float **A, float **Bt, float **copy)
{
    *copy = NULL;
    if (l->paired) {
        *A = l->A;
        *Bt = l->Bt;
        return SONA_OK;
    }
    const size_t n = l->adapter_floats * l->cfg.count;
    float *c = malloc(2 * n * sizeof *c);
    if (!c)
        return sona_fail(&l->err, SONA_E_NOMEM, "out of memory for a host copy of %zu weights", 2 * n);
    sona_status st = sona_lora_export(l, c, c + n, NULL);
    if (st != SONA_OK) {
        free(c);
        return st;
    }
    *A = c;
    *Bt = c + n;
    *copy = c;
    return SONA_OK;
}

/* ---- preconditioning B's steps by the code covariance ----------------------------------------
 * B's gradient for a signal (x, delta) is s delta z^T, z = A x the input's code. A step along it
 * moves the output of every other input x' by the same delta times z^T z': inputs whose codes
 * correlate (at a low rank, most do) pull each other's outputs along. Preconditioned by P, the
 * code covariance's inverse (scaled to keep its trace), the step is s delta (P z)^T and the
 * spill onto x' is z^T P z': for codes the rank can tell apart it vanishes, as in a least-squares
 * fit of each code's own output, so one cluster of queries no longer drags the others' outputs
 * with it. P = t (M + CODE_RIDGE t I)^-1, M the running mean of z z^T over the signals (rate
 * code_rate, bias-corrected), t = trace(M) / rank. */
#define CODE_RIDGE 0.3

static void code_observe(sona_lora *l, uint32_t adapter, const double *z)
{
    const uint32_t r = l->cfg.rank;
    const double rate = l->code_rate;
    double *M = l->code_cov + (size_t)adapter * r * r;
    for (uint32_t j = 0; j < r; j++)
        for (uint32_t k = 0; k < r; k++)
            M[j * r + k] += rate * (z[j] * z[k] - M[j * r + k]);
    l->code_weight[adapter] += rate * (1.0 - l->code_weight[adapter]);
}

/* The Cholesky factor L (lower, in place in K, r x r row-major) of M / weight + CODE_RIDGE t I
 * and t = trace(M / weight) / rank: 0 before any signal or for a degenerate M. */
static int code_factor(const sona_lora *l, uint32_t adapter, double *K, double *t_out)
{
    const uint32_t r = l->cfg.rank;
    const double wgt = l->code_weight[adapter];
    const double *M = l->code_cov + (size_t)adapter * r * r;
    if (!(wgt > 0.0))
        return 0;
    double t = 0.0;
    for (uint32_t j = 0; j < r; j++)
        t += M[j * r + j] / wgt;
    t /= r;
    if (!(t > 0.0) || !isfinite(t))
        return 0;
    for (uint32_t j = 0; j < r * r; j++)
        K[j] = M[j] / wgt;
    for (uint32_t j = 0; j < r; j++)
        K[j * r + j] += CODE_RIDGE * t;
    /* K is symmetric positive definite: the ridge sees to it. */
    for (uint32_t j = 0; j < r; j++) {
        for (uint32_t k = 0; k <= j; k++) {
            double v = K[j * r + k];
            for (uint32_t m = 0; m < k; m++)
                v -= K[j * r + m] * K[k * r + m];
            if (k == j) {
                if (!(v > 0.0))
                    return 0;
                K[j * r + j] = sqrt(v);
            } else {
                K[j * r + k] = v / K[k * r + k];
            }
        }
    }
    *t_out = t;
    return 1;
}

/* y = L^-1 v (forward substitution over the factor in K). */
static void code_forward(const double *K, uint32_t r, const double *v, double *y)
{
    for (uint32_t j = 0; j < r; j++) {
        double acc = v[j];
        for (uint32_t m = 0; m < j; m++)
            acc -= K[j * r + m] * y[m];
        y[j] = acc / K[j * r + j];
    }
}

/* P for adapter (r x r, row-major): 0 (P not set) before any signal or for a degenerate M. */
static int code_preconditioner(const sona_lora *l, uint32_t adapter, double *P)
{
    const uint32_t r = l->cfg.rank;
    double K[SONA_LORA_MAX_RANK * SONA_LORA_MAX_RANK], t;
    if (!code_factor(l, adapter, K, &t))
        return 0;
    /* P = t K^-1, column by column: L y = t e_c, then L^T p = y. */
    for (uint32_t c = 0; c < r; c++) {
        double e[SONA_LORA_MAX_RANK] = {0}, y[SONA_LORA_MAX_RANK];
        e[c] = t;
        code_forward(K, r, e, y);
        for (uint32_t j = r; j-- > 0;) {
            double v = y[j];
            for (uint32_t m = j + 1; m < r; m++)
                v -= K[m * r + j] * P[m * r + c];
            P[j * r + c] = v / K[j * r + j];
        }
    }
    return 1;
}

/* z^T P z = t |L^-1 z|^2 (one forward substitution, no inverse): 0 (nothing set) as above. */
static int code_quadratic(const sona_lora *l, uint32_t adapter, const double *z, double *out)
{
    const uint32_t r = l->cfg.rank;
    double K[SONA_LORA_MAX_RANK * SONA_LORA_MAX_RANK], t, y[SONA_LORA_MAX_RANK];
    if (!code_factor(l, adapter, K, &t))
        return 0;
    code_forward(K, r, z, y);
    double q = 0.0;
    for (uint32_t j = 0; j < r; j++)
        q += y[j] * y[j];
    *out = t * q;
    return 1;
}

/* gBt of every adapter with pending signals <- P gBt (its rows are B's columns, one per code
 * dimension), in place by the CPU variant's mix_rows; on a device, through a host copy of the
 * accumulators. */
static sona_status code_precondition_gradients(sona_lora *l)
{
    const uint32_t r = l->cfg.rank, H = l->cfg.hidden;
    const size_t total = l->adapter_floats * l->cfg.count;
    const int host = l->be->host_memory;
    float *all = host ? l->gBt : malloc(total * sizeof *all);
    sona_status st = all ? SONA_OK : sona_fail(&l->err, SONA_E_NOMEM, "out of memory preconditioning gradients");
    if (st == SONA_OK && !host && l->be->download(l->be->ctx, all, l->gBt, 0, total * sizeof *all) != SONA_OK)
        st = backend_failed(l, "download", SONA_E_BACKEND);
    const sona_host_kernels *k = sona_host_kernels_get();
    for (uint32_t a = 0; st == SONA_OK && a < l->cfg.count; a++) {
        double P[SONA_LORA_MAX_RANK * SONA_LORA_MAX_RANK];
        float Pf[SONA_LORA_MAX_RANK * SONA_LORA_MAX_RANK];
        if (!l->pending[a] || !code_preconditioner(l, a, P))
            continue;
        for (uint32_t j = 0; j < r * r; j++)
            Pf[j] = (float)P[j];
        k->mix_rows(all + (size_t)a * l->adapter_floats, H, Pf, r, H);
    }
    if (st == SONA_OK && !host && l->be->upload(l->be->ctx, l->gBt, 0, all, total * sizeof *all) != SONA_OK)
        st = backend_failed(l, "upload", SONA_E_BACKEND);
    if (!host)
        free(all);
    return st;
}

sona_status sona_lora_set_code_preconditioning(sona_lora *l, float rate)
{
    if (!l)
        return sona_fail(NULL, SONA_E_NULL, "%s: lora is NULL", __func__);
    if (!(rate >= 0.0f && rate <= 1.0f))
        return sona_fail(&l->err, isfinite(rate) ? SONA_E_INVALID : SONA_E_NONFINITE,
                         "%s: rate %g is not in [0, 1]", __func__, (double)rate);
    if (rate > 0.0f && !l->code_cov) {
        const size_t rr = (size_t)l->cfg.rank * l->cfg.rank;
        l->code_cov = calloc(rr * l->cfg.count, sizeof *l->code_cov);
        l->code_weight = calloc(l->cfg.count, sizeof *l->code_weight);
        if (!l->code_cov || !l->code_weight) {
            free(l->code_cov);
            free(l->code_weight);
            l->code_cov = l->code_weight = NULL;
            return sona_fail(&l->err, SONA_E_NOMEM, "%s: out of memory", __func__);
        }
    }
    l->code_rate = rate;
    return SONA_OK;
}

int sona_lora_code_state(const sona_lora *l, double *weights, double *cov)
{
    if (!l || !l->code_cov)
        return 0;
    const size_t rr = (size_t)l->cfg.rank * l->cfg.rank;
    if (weights)
        memcpy(weights, l->code_weight, l->cfg.count * sizeof *weights);
    if (cov)
        memcpy(cov, l->code_cov, rr * l->cfg.count * sizeof *cov);
    return 1;
}

sona_status sona_lora_set_code_state(sona_lora *l, const double *weights, const double *cov)
{
    if (!l || !weights || !cov)
        return sona_fail(l ? &l->err : NULL, SONA_E_NULL, "%s: NULL argument", __func__);
    if (!l->code_cov)
        return sona_fail(&l->err, SONA_E_STATE, "%s: preconditioning is off", __func__);
    const uint32_t r = l->cfg.rank;
    for (uint32_t a = 0; a < l->cfg.count; a++) {
        const double *M = cov + (size_t)a * r * r;
        int ok = weights[a] >= 0.0 && weights[a] <= 1.0;
        /* A running mean of z z^T: symmetric, a non-negative diagonal bounding the rest, and
         * small enough that its trace and inverse stay finite. */
        for (uint32_t j = 0; ok && j < r; j++)
            for (uint32_t k = 0; ok && k < r; k++) {
                const double v = M[j * r + k];
                ok = isfinite(v) && fabs(v) <= 1e30 && v == M[k * r + j] &&
                     (j != k || v >= 0.0) && (j == k || v * v <= M[j * r + j] * M[k * r + k] * (1.0 + 1e-6));
            }
        if (!ok)
            return sona_fail(&l->err, SONA_E_INVALID, "%s: adapter %u: not a code covariance", __func__, a);
    }
    memcpy(l->code_weight, weights, l->cfg.count * sizeof *weights);
    memcpy(l->code_cov, cov, (size_t)r * r * l->cfg.count * sizeof *cov);
    return SONA_OK;
}

/* The CPU variant's dot kernel (f32 accumulation: these dots set a step size and a bound whose
 * estimate has 1.6 % of slack, not a result compared bit for bit). */
static double dot_d(const float *a, const float *b, uint32_t n)
{
    return (double)sona_dot_kernel()(a, b, n);
}

sona_status sona_lora_normalize_signals(sona_lora *l, uint32_t n, const int32_t *ids, const float *x,
                                        const float *delta, float *w)
{
    static const char fn[] = "sona_lora_normalize_signals";
    if (!l || !ids || !x || !delta || !w)
        return sona_fail(l ? &l->err : NULL, SONA_E_NULL, "%s: NULL argument", fn);
    sona_status st = check_ids(l, fn, n, ids);
    if (st != SONA_OK)
        return st;
    const float *A = NULL;
    float *Bt = NULL, *copy = NULL;
    if ((st = host_weights(l, &A, &Bt, &copy)) != SONA_OK)
        return st;
    const uint32_t H = l->cfg.hidden, r = l->cfg.rank;
    const double s = (double)l->cfg.alpha / r;
    /* A x and B^T delta of every row at once, by adapter: a dot per row and weight row read the
     * adapter's weights once per row (29 % of a loop B cycle at hidden 4 096). One row (loop
     * A's) needs no scratch. */
    float one[2 * SONA_LORA_MAX_RANK], *ax_all = one, *bd_all = one + SONA_LORA_MAX_RANK;
    float *zmem = NULL;
    if (n > 1) {
        if (!(zmem = malloc((size_t)2 * n * r * sizeof *zmem))) {
            free(copy);
            return sona_fail(&l->err, SONA_E_NOMEM, "%s: out of memory", fn);
        }
        ax_all = zmem;
        bd_all = zmem + (size_t)n * r;
    }
    const sona_host_kernels *hk = sona_host_kernels_get();
    hk->lora_down(A, r, H, l->cfg.count, n, ids, x, ax_all);
    hk->lora_down(Bt, r, H, l->cfg.count, n, ids, delta, bd_all);
    for (uint32_t i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * H, *di = delta + (size_t)i * H;
        if (ids[i] < 0) {
            w[i] = 0.0f;
            continue;
        }
        const double xx = dot_d(xi, xi, H), dd = dot_d(di, di, H);
        double ax2 = 0.0, bd2 = 0.0, z[SONA_LORA_MAX_RANK];
        for (uint32_t j = 0; j < r; j++) {
            const double ax = ax_all[(size_t)i * r + j], bd = bd_all[(size_t)i * r + j];
            z[j] = ax;
            ax2 += ax * ax;
            bd2 += bd * bd;
        }
        if (l->code_rate > 0.0f) {
            /* B's step will be preconditioned: its part of the output change is z^T P z. */
            double zpz;
            code_observe(l, (uint32_t)ids[i], z);
            if (code_quadratic(l, (uint32_t)ids[i], z, &zpz))
                ax2 = zpz;
        }
        /* |g|^2 = s^2 (|A x|^2 |delta|^2 + |B^T delta|^2 |x|^2); a step c g moves <y(x), delta>
         * by c |g|^2, which is |delta|^2 (that is, y(x) by delta) for c = |delta|^2 / |g|^2. */
        const double g2 = s * s * (ax2 * dd + bd2 * xx);
        w[i] = g2 > 1e-30 * dd && dd > 0.0 ? (float)(w[i] * dd / g2) : 0.0f;
        if (!isfinite(w[i]))
            w[i] = 0.0f;
    }
    free(zmem);
    free(copy);
    return SONA_OK;
}

/* An upper bound of the spectral norm of s B A for one adapter (A: r rows of H, Bt: r rows of
 * H). |BA|_2^2 is the largest eigenvalue of P = (B^T B)(A A^T), an r x r matrix with real
 * eigenvalues >= 0; for any k, lambda_max <= |P^k|_F^(1/k), which squaring P 8 times brings to
 * within a factor r^(1/256) (1.6 % at rank 64) above it. An upper bound, so the cap is kept. */
static double gain_bound(const float *A, const float *Bt, uint32_t r, uint32_t H, double s)
{
    double ga[SONA_LORA_MAX_RANK * SONA_LORA_MAX_RANK], gb[SONA_LORA_MAX_RANK * SONA_LORA_MAX_RANK];
    double p[SONA_LORA_MAX_RANK * SONA_LORA_MAX_RANK];
    for (uint32_t i = 0; i < r; i++)
        for (uint32_t j = i; j < r; j++) {
            ga[i * r + j] = ga[j * r + i] = dot_d(A + (size_t)i * H, A + (size_t)j * H, H);
            gb[i * r + j] = gb[j * r + i] = dot_d(Bt + (size_t)i * H, Bt + (size_t)j * H, H);
        }
    sona_matmul_d(gb, ga, p, r, r, r);
    /* Invariant: P^(2^m) = exp(log_scale) p, p renormalised each round against overflow. */
    double log_scale = 0.0;
    const int squarings = 8;
    for (int m = 0;; m++) {
        double f = 0.0;
        for (uint32_t i = 0; i < r * r; i++)
            f += p[i] * p[i];
        f = sqrt(f);
        if (!(f > 0.0))
            return 0.0;
        for (uint32_t i = 0; i < r * r; i++)
            p[i] /= f;
        log_scale += log(f); /* now |P^(2^m)|_F = exp(log_scale) */
        if (m == squarings) {
            log_scale /= (double)(1u << m);
            break;
        }
        double q[SONA_LORA_MAX_RANK * SONA_LORA_MAX_RANK];
        sona_matmul_d(p, p, q, r, r, r);
        memcpy(p, q, (size_t)r * r * sizeof *p);
        log_scale *= 2.0;
    }
    return s * sqrt(exp(log_scale));
}

sona_status sona_lora_gain(const sona_lora *cl, int32_t adapter, double *gain)
{
    sona_lora *l = (sona_lora *)cl; /* only the error buffer is written */
    if (!l || !gain)
        return sona_fail(l ? &l->err : NULL, SONA_E_NULL, "%s: NULL argument", __func__);
    sona_status st = check_adapter(l, "sona_lora_gain", adapter);
    if (st != SONA_OK)
        return st;
    const float *A = NULL;
    float *Bt = NULL, *copy = NULL;
    if ((st = host_weights(l, &A, &Bt, &copy)) != SONA_OK)
        return st;
    const size_t off = (size_t)adapter * l->adapter_floats;
    *gain = gain_bound(A + off, Bt + off, l->cfg.rank, l->cfg.hidden, (double)l->cfg.alpha / l->cfg.rank);
    free(copy);
    return SONA_OK;
}

sona_status sona_lora_bound_gain(sona_lora *l, float max_gain, uint32_t *capped)
{
    if (capped)
        *capped = 0;
    if (!l)
        return sona_fail(NULL, SONA_E_NULL, "%s: lora is NULL", __func__);
    if (!(max_gain > 0.0f))
        return SONA_OK;
    const float *A = NULL;
    float *Bt = NULL, *copy = NULL;
    sona_status st = host_weights(l, &A, &Bt, &copy);
    if (st != SONA_OK)
        return st;
    const uint32_t H = l->cfg.hidden, r = l->cfg.rank;
    const double s = (double)l->cfg.alpha / r;
    uint32_t n = 0;
    for (uint32_t a = 0; a < l->cfg.count; a++) {
        const size_t off = (size_t)a * l->adapter_floats;
        const double g = gain_bound(A + off, Bt + off, r, H, s);
        if (!(g > max_gain))
            continue;
        sona_host_kernels_get()->scale(Bt + off, l->adapter_floats, (float)(max_gain / g));
        n++;
    }
    if (n && copy) {
        const size_t total = l->adapter_floats * l->cfg.count;
        if (l->be->upload(l->be->ctx, l->Bt, 0, Bt, total * sizeof(float)) != SONA_OK)
            st = backend_failed(l, "upload", SONA_E_BACKEND);
    }
    free(copy);
    if (capped)
        *capped = n;
    return st;
}
