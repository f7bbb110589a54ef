/* EWC++ for one adapter set: online diagonal Fisher (EMA of squared clipped gradients, updated
 * by the fused param_update op), task snapshots (theta*, F) taken at detected boundaries or at
 * consolidation, and the penalty lambda * sum_t F_t (theta - theta*_t) passed pre-reduced.
 * A boundary is a step whose parameter change is more than task_shift_threshold standard
 * deviations above its running mean (after a warm-up of 50 steps). */
#include "core/engine_internal.h"

#include "core/lora_internal.h"
#include "core/serial.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { EWC_WARMUP = 50 };

struct eng_ewc {
    size_t n;              /* floats per matrix (count * rank * hidden) */
    uint32_t max_tasks, tasks;
    float *fisher[2];      /* online Fisher of A and Bt */
    float *fsum[2], *ftheta[2];
    float *task_theta, *task_f; /* [max_tasks][2][n] */
    float *before;         /* [2][n] weights before a step */
    float max_fsum;        /* largest element of fsum */
    double mean, var;      /* running stats of the step size */
    uint64_t steps;
};

eng_ewc *eng_ewc_create(const sona_lora *lora, const sona_engine_config *cfg)
{
    const sona_lora_config *c = sona_lora_get_config(lora);
    eng_ewc *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->n = (size_t)c->count * c->rank * c->hidden;
    w->max_tasks = cfg->max_tasks ? cfg->max_tasks : 1;
    const size_t n = w->n;
    float *f = calloc(6 * n + 4 * (size_t)w->max_tasks * n, sizeof(float));
    if (!f) {
        free(w);
        return NULL;
    }
    for (int m = 0; m < 2; m++) {
        w->fisher[m] = f + m * n;
        w->fsum[m] = f + (2 + m) * n;
        w->ftheta[m] = f + (4 + m) * n;
    }
    w->task_theta = f + 6 * n;
    w->task_f = w->task_theta + 2 * (size_t)w->max_tasks * n;
    w->before = malloc(2 * n * sizeof(float));
    if (!w->before) {
        eng_ewc_destroy(w);
        return NULL;
    }
    return w;
}

void eng_ewc_destroy(eng_ewc *w)
{
    if (!w)
        return;
    free(w->fisher[0]);
    free(w->before);
    free(w);
}

uint32_t eng_ewc_tasks(const eng_ewc *w) { return w ? w->tasks : 0; }

static void reduce_tasks(eng_ewc *w)
{
    const size_t n = w->n;
    w->max_fsum = 0;
    for (int m = 0; m < 2; m++) {
        memset(w->fsum[m], 0, n * sizeof(float));
        memset(w->ftheta[m], 0, n * sizeof(float));
        for (uint32_t t = 0; t < w->tasks; t++) {
            const float *F = w->task_f + (2 * (size_t)t + m) * n, *th = w->task_theta + (2 * (size_t)t + m) * n;
            for (size_t i = 0; i < n; i++) {
                w->fsum[m][i] += F[i];
                w->ftheta[m][i] += F[i] * th[i];
            }
        }
        for (size_t i = 0; i < n; i++)
            w->max_fsum = fmaxf(w->max_fsum, w->fsum[m][i]);
    }
}

sona_status eng_ewc_consolidate(eng_ewc *w, const sona_lora *lora)
{
    const size_t n = w->n, task = 2 * n;
    if (w->tasks == w->max_tasks) { /* forget the oldest task */
        memmove(w->task_theta, w->task_theta + task, (w->tasks - 1) * task * sizeof(float));
        memmove(w->task_f, w->task_f + task, (w->tasks - 1) * task * sizeof(float));
        w->tasks--;
    }
    float *th = w->task_theta + w->tasks * task, *F = w->task_f + w->tasks * task;
    sona_status st = sona_lora_export(lora, th, th + n, NULL);
    if (st != SONA_OK)
        return st;
    memcpy(F, w->fisher[0], n * sizeof(float));
    memcpy(F + n, w->fisher[1], n * sizeof(float));
    w->tasks++;
    reduce_tasks(w);
    return SONA_OK;
}

sona_status eng_ewc_step(eng_ewc *w, sona_lora *lora, const sona_engine_config *cfg, int *boundary)
{
    const size_t n = w->n;
    *boundary = 0;
    sona_status st = sona_lora_export(lora, w->before, w->before + n, NULL);
    if (st != SONA_OK)
        return st;
    sona_lora_ewc_terms t = {.fisher = {w->fisher[0], w->fisher[1]}, .lambda = cfg->ewc_lambda,
                             .decay = cfg->fisher_decay};
    /* The penalty step lr * lambda * F must stay below 1 to pull toward the anchor without
     * overshooting (above 2 it diverges): lambda is capped where the Fisher is large. */
    const float lr = sona_lora_get_config(lora)->learning_rate;
    if (w->tasks && w->max_fsum * lr * t.lambda > 1.0f)
        t.lambda = 1.0f / (w->max_fsum * lr);
    if (w->tasks) {
        t.fisher_sum[0] = w->fsum[0];
        t.fisher_sum[1] = w->fsum[1];
        t.fisher_theta[0] = w->ftheta[0];
        t.fisher_theta[1] = w->ftheta[1];
    }
    if ((st = sona_lora_apply_updates_ewc(lora, &t)) != SONA_OK)
        return st;
    /* Step size, for the boundary test: the new weights minus the old ones. */
    float *after = malloc(2 * n * sizeof(float));
    if (!after)
        return SONA_E_NOMEM;
    st = sona_lora_export(lora, after, after + n, NULL);
    double d2 = 0;
    for (size_t i = 0; i < 2 * n; i++)
        d2 += (double)(after[i] - w->before[i]) * (after[i] - w->before[i]);
    free(after);
    const double size = sqrt(d2);
    w->steps++;
    if (w->steps > EWC_WARMUP && w->var > 0 &&
        (size - w->mean) / sqrt(w->var) > cfg->task_shift_threshold) {
        *boundary = 1;
        if (st == SONA_OK)
            st = eng_ewc_consolidate(w, lora);
    }
    const double a = w->steps < 20 ? 1.0 / (double)w->steps : 0.05, dlt = size - w->mean;
    w->mean += a * dlt;
    w->var = (1 - a) * (w->var + a * dlt * dlt);
    return st;
}

void eng_ewc_save(const eng_ewc *w, sona_wbuf *out)
{
    sona_wbuf_u32(out, w != NULL);
    if (!w)
        return;
    sona_wbuf_u64(out, w->n);
    sona_wbuf_u32(out, w->tasks);
    sona_wbuf_floats(out, w->fisher[0], 2 * w->n); /* fisher[1] follows fisher[0] */
    sona_wbuf_floats(out, w->task_theta, 2 * (size_t)w->tasks * w->n);
    sona_wbuf_floats(out, w->task_f, 2 * (size_t)w->tasks * w->n);
    sona_wbuf_u64(out, w->steps);
    sona_wbuf_f64(out, w->mean);
    sona_wbuf_f64(out, w->var);
}

sona_status eng_ewc_load(sona_rbuf *in, const sona_lora *lora, const sona_engine_config *cfg, eng_ewc **out)
{
    *out = NULL;
    const uint32_t present = sona_rbuf_u32(in);
    if (in->bad || present > 1)
        return SONA_E_CORRUPT;
    if (!present)
        return SONA_OK;
    eng_ewc *w = eng_ewc_create(lora, cfg);
    if (!w)
        return SONA_E_NOMEM;
    const uint64_t n = sona_rbuf_u64(in);
    const uint32_t tasks = sona_rbuf_u32(in);
    const size_t all = 2 * w->n * (1 + 2 * (size_t)tasks);
    if (n != w->n || tasks > w->max_tasks || !sona_rbuf_has(in, all, sizeof(float))) {
        const sona_status st = in->bad || n == w->n ? SONA_E_CORRUPT : SONA_E_SIZE;
        eng_ewc_destroy(w);
        return st;
    }
    w->tasks = tasks;
    sona_rbuf_floats(in, w->fisher[0], 2 * w->n);
    sona_rbuf_floats(in, w->task_theta, 2 * (size_t)tasks * w->n);
    sona_rbuf_floats(in, w->task_f, 2 * (size_t)tasks * w->n);
    w->steps = sona_rbuf_u64(in);
    w->mean = sona_rbuf_f64(in);
    w->var = sona_rbuf_f64(in);
    const size_t task_floats = 2 * (size_t)tasks * w->n;
    if (in->bad || !sona_all_finite(w->fisher[0], 2 * w->n) || !sona_all_finite(w->task_theta, task_floats) ||
        !sona_all_finite(w->task_f, task_floats) || !isfinite(w->mean) || !isfinite(w->var)) {
        eng_ewc_destroy(w);
        return SONA_E_CORRUPT;
    }
    reduce_tasks(w);
    if (!cfg->ewc_enabled) {
        eng_ewc_destroy(w);
        return SONA_OK;
    }
    *out = w;
    return SONA_OK;
}
