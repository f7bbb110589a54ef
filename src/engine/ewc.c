/* SPDX-License-Identifier: MIT */
/* EWC++ for one of the engine's adapter sets, on top of sona_ewc (sona/ewc.h): the parameter
 * vector is the set's A and Bt back to back. Each update: the pending gradient goes through the
 * boundary detector and the online Fisher (sona_ewc_observe), then one fused param_update step
 * applies it with the penalty lambda * sum_t F_t (theta - theta*_t). Loop A runs this on every
 * request, so what only changes with the tasks (the capped lambda) is computed once per change,
 * and host-memory weights are read in place. */
#include "engine/ewc.h"

#include "common/error.h"
#include "common/float_bits.h"
#include "common/serial.h"
#include "core/adapt/ewc_internal.h"
#include "core/adapt/lora_internal.h"
#include "dispatch/vecmath.h"
#include "sona/ewc.h"
#include "sona/signal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Task shifts are detected on the quality, not on gradient norms (which the scale-invariant
 * step normalises away). Each quality's shortfall below a running baseline, in its spreads (0
 * when above, at most SHORTFALL_MAX so that one odd query cannot pass for a shift), is averaged
 * over the qualities of an update; a short running mean of these averages passing
 * task_shift_threshold spreads, after min_updates updates of the current task, is a boundary.
 * A new task shows as qualities staying well below what the adapter had reached; learning, as
 * qualities at or above it, whether the new task brings new queries or new answers to old
 * ones. The baseline is a slow one (about 100 qualities) of all the qualities the adapter set
 * learned from. */
#define SHIFT_RATE 0.01f
#define SHORTFALL_MAX 3.0f

/* Anchors give way to the traffic they overlap. A snapshot protects what the adapter had
 * learned for the queries its task came from; while the traffic comes from those same queries
 * again, its qualities are the authority on them (the answers wanted changed: a hostile phase
 * ended, preferences moved), and an anchor there would only hold the adapter on an answer the
 * rewards now contradict. So each snapshot keeps the distribution of its task's query cells,
 * and its share of the penalty is the part of that distribution the traffic since the last
 * boundary has not covered: full for a task whose queries stopped coming, none for one whose
 * queries are all here again (a false boundary's snapshot included). The counts behind both
 * decay by CELL_DECAY a quality (a window of about 500) and restart at each boundary; a cell
 * counts as covered once seen COVERED_AT times, and a share under WEIGHT_FLOOR is taken for
 * the sampling noise of the cells (0). The new task's queries seen before its shift was
 * detected (a few dozen) are a small part of the old task's distribution. The weights are
 * looked at every weights_every updates of the current task (8 for a tenant, updated about once
 * a request, so a request's cost stays flat; every cycle for the Base-LoRA) and
 * re-applied when one moved by WEIGHT_STEP or more (a re-reduction costs O(tasks x
 * parameters)). */
#define CELL_DECAY 0.998f
#define COVERED_AT 1.0f
#define WEIGHT_FLOOR 0.1f
#define WEIGHT_STEP 0.05f

struct eng_ewc {
    sona_ewc *ewc;
    sona_signal_baseline slow; /* of the qualities this adapter set learned from (loop B) */
    double shortfall_sum;      /* since the last update */
    uint32_t shortfall_n;
    double shift;              /* running mean of the updates' mean shortfalls */
    uint32_t updates;          /* updates with qualities since the last boundary */
    float shift_rate;          /* of that mean: 0.05 a request (loop A), 0.3 a cycle (loop B) */
    uint32_t min_updates;      /* 100 requests, 5 cycles */
    uint32_t n;      /* 2 * count * rank * hidden */
    float *theta, *g; /* scratch, n floats each */
    float lambda;     /* the penalty's lambda, capped (penalty_lambda) */
    int lambda_valid; /* 0 once the tasks or their weights changed */
    float seen[ENG_CELLS]; /* decayed counts of the query cells since the last boundary */
    float *task_cells;  /* (max_tasks + 1) x ENG_CELLS: each snapshot's, normalised */
    float *weights;     /* (max_tasks + 1): the weights applied, by snapshot */
    uint32_t weights_every; /* updates between looks at the weights */
};

eng_ewc *eng_ewc_create(const sona_lora *lora, const sona_engine_config *cfg, int base)
{
    const sona_lora_config *c = sona_lora_get_config(lora);
    eng_ewc *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->n = 2 * c->count * c->rank * c->hidden;
    sona_ewc_config ec;
    sona_ewc_config_default(&ec, w->n);
    ec.max_tasks = cfg->max_tasks ? cfg->max_tasks : 1;
    ec.fisher_decay = cfg->fisher_decay;
    ec.lambda_base = cfg->ewc_lambda;
    ec.boundary_z = cfg->task_shift_threshold;
    /* Base-LoRA updates once a loop B cycle, on a batch's qualities: a few cycles of a task are
     * evidence enough. A tenant's, about once a request: a mean over about 20 of them. */
    w->shift_rate = base ? 0.3f : 0.05f;
    w->weights_every = base ? 1 : 8;
    w->min_updates = base ? 5 : 100;
    w->theta = malloc(w->n * sizeof(float));
    w->g = malloc(w->n * sizeof(float));
    w->task_cells = calloc(((size_t)ec.max_tasks + 1) * ENG_CELLS, sizeof(float));
    w->weights = calloc((size_t)ec.max_tasks + 1, sizeof(float));
    if (!w->theta || !w->g || !w->task_cells || !w->weights || sona_ewc_create(&ec, &w->ewc) != SONA_OK) {
        eng_ewc_destroy(w);
        return NULL;
    }
    return w;
}

void eng_ewc_destroy(eng_ewc *w)
{
    if (!w)
        return;
    sona_ewc_destroy(w->ewc);
    free(w->theta);
    free(w->g);
    free(w->task_cells);
    free(w->weights);
    free(w);
}

uint32_t eng_ewc_tasks(const eng_ewc *w) { return w ? sona_ewc_task_count(w->ewc) : 0; }
const sona_ewc *eng_ewc_state(const eng_ewc *w) { return w->ewc; }

/* The cell distribution of the snapshot sona_ewc just took (the slow one, normalised), merged
 * as sona_ewc merged the Fisher when the snapshot made one too many: the merged snapshot covers
 * both tasks' queries. Its weight starts at 1, as sona_ewc's. */
static void note_snapshot(eng_ewc *w, uint32_t tasks_before)
{
    const uint32_t tasks = sona_ewc_task_count(w->ewc);
    double sum = 0.0;
    for (uint32_t c = 0; c < ENG_CELLS; c++)
        sum += w->seen[c];
    if (tasks == tasks_before) { /* the two oldest merged into slot 0; the rest moved down */
        float *first = w->task_cells, *second = first + ENG_CELLS;
        for (uint32_t c = 0; c < ENG_CELLS; c++)
            first[c] = 0.5f * (first[c] + second[c]);
        memmove(second, second + ENG_CELLS, (size_t)(tasks - 1) * ENG_CELLS * sizeof(float));
        memmove(w->weights + 1, w->weights + 2, (size_t)(tasks - 1) * sizeof(float));
        w->weights[0] = sona_ewc_task_weight(w->ewc, 0);
    }
    float *cells = w->task_cells + (size_t)(tasks - 1) * ENG_CELLS;
    for (uint32_t c = 0; c < ENG_CELLS; c++)
        cells[c] = sum > 0.0 ? (float)(w->seen[c] / sum) : 0.0f;
    memset(w->seen, 0, sizeof w->seen);
    w->weights[tasks - 1] = 1.0f;
    w->lambda_valid = 0;
}

/* Each snapshot's weight: the share of its cells the traffic since the last boundary has not
 * covered; re-applied when one moved by WEIGHT_STEP or more. */
static sona_status update_weights(eng_ewc *w)
{
    const uint32_t tasks = sona_ewc_task_count(w->ewc);
    if (!tasks || w->updates % w->weights_every != 0)
        return SONA_OK;
    float covered[ENG_CELLS];
    for (uint32_t c = 0; c < ENG_CELLS; c++)
        covered[c] = fminf(w->seen[c] * (1.0f / COVERED_AT), 1.0f);
    float next[SONA_EWC_MAX_TASKS];
    int moved = 0;
    for (uint32_t t = 0; t < tasks; t++) {
        const float *cells = w->task_cells + (size_t)t * ENG_CELLS;
        float overlap = 0.0f;
        for (uint32_t c = 0; c < ENG_CELLS; c++)
            overlap += cells[c] * covered[c];
        next[t] = fminf(fmaxf(1.0f - overlap, 0.0f), 1.0f);
        if (next[t] < WEIGHT_FLOOR)
            next[t] = 0.0f;
        moved |= fabsf(next[t] - w->weights[t]) >= WEIGHT_STEP;
    }
    if (!moved)
        return SONA_OK;
    const sona_status st = sona_ewc_set_task_weights(w->ewc, next, tasks);
    if (st == SONA_OK) {
        memcpy(w->weights, next, tasks * sizeof *next);
        w->lambda_valid = 0;
    }
    return st;
}

/* The snapshots sona_sync merged (the ranks' tasks as one, anchored at the merged weights)
 * cover the queries this rank's old snapshots came from (their cells, averaged), not the
 * traffic since the last boundary: that is the task being learned now, which no snapshot
 * covers until it ends. Cells are this rank's, like the detectors. Each starts at weight 1, as
 * sona_ewc's do. */
sona_ewc *eng_ewc_swap(eng_ewc *w, sona_ewc *fresh)
{
    sona_ewc *old = w->ewc;
    const uint32_t before = sona_ewc_task_count(old), after = sona_ewc_task_count(fresh);
    float merged[ENG_CELLS] = {0};
    double sum = 0.0;
    for (uint32_t t = 0; t < before; t++)
        for (uint32_t c = 0; c < ENG_CELLS; c++) {
            merged[c] += w->task_cells[(size_t)t * ENG_CELLS + c];
            sum += w->task_cells[(size_t)t * ENG_CELLS + c];
        }
    for (uint32_t c = 0; c < ENG_CELLS; c++) /* a distribution again (or none: snapshots of no cells) */
        merged[c] = sum > 0.0 ? (float)(merged[c] / sum) : 0.0f;
    for (uint32_t t = 0; t < after; t++) {
        memcpy(w->task_cells + (size_t)t * ENG_CELLS, merged, sizeof merged);
        w->weights[t] = 1.0f;
    }
    w->ewc = fresh;
    w->lambda_valid = 0; /* new tasks: the capped lambda is found again */
    return old;
}

sona_status eng_ewc_consolidate(eng_ewc *w, const sona_lora *lora)
{
    const uint32_t half = w->n / 2, before = sona_ewc_task_count(w->ewc);
    sona_status st = sona_lora_export(lora, w->theta, w->theta + half, NULL);
    if (st == SONA_OK)
        st = sona_ewc_end_task(w->ewc, w->theta, w->n);
    if (st == SONA_OK)
        note_snapshot(w, before);
    w->lambda_valid = 0;
    return st;
}

/* lambda for lora's penalty steps: the penalty step lr * lambda * F must stay below 1 to pull
 * toward the anchors without overshooting (above 2 it diverges), so lambda is capped where the
 * Fisher is large. Depends only on the tasks (and lora's fixed learning rate): cached until
 * they change. */
static float penalty_lambda(eng_ewc *w, const sona_lora *lora, const float *fsum, float lambda)
{
    if (w->lambda_valid)
        return w->lambda;
    float fmax = 0;
    for (uint32_t i = 0; fsum && i < w->n; i++)
        fmax = fmaxf(fmax, fsum[i]);
    const float lr = sona_lora_get_config(lora)->learning_rate;
    w->lambda = fmax * lr * lambda > 1.0f ? 1.0f / (fmax * lr) : lambda;
    w->lambda_valid = 1;
    return w->lambda;
}

float eng_ewc_lambda(eng_ewc *w, const sona_lora *lora)
{
    const float *fsum = NULL, *ftheta = NULL;
    float lambda = 0;
    sona_ewc_penalty(w->ewc, &fsum, &ftheta, &lambda);
    return penalty_lambda(w, lora, fsum, lambda);
}

void eng_ewc_note_shortfall(eng_ewc *w, float shortfall)
{
    if (!w || !(shortfall >= 0.0f) || !isfinite(shortfall))
        return;
    w->shortfall_sum += shortfall < SHORTFALL_MAX ? shortfall : SHORTFALL_MAX;
    w->shortfall_n++;
}

/* The shift detector on this update's shortfalls: 1 when a new task began. */
static int shift_detected(eng_ewc *w, const sona_engine_config *cfg)
{
    if (!w->shortfall_n)
        return 0;
    const double mean = w->shortfall_sum / w->shortfall_n;
    w->shortfall_sum = 0.0;
    w->shortfall_n = 0;
    w->shift = w->updates ? w->shift + w->shift_rate * (mean - w->shift) : mean;
    w->updates++;
    if (w->updates < w->min_updates || !(w->shift > cfg->task_shift_threshold))
        return 0;
    w->shift = 0.0;
    w->updates = 0;
    return 1;
}

void eng_ewc_note_quality(eng_ewc *w, float quality, uint32_t cell)
{
    float z = 0.0f;
    if (!w)
        return;
    if (sona_signal_baseline_weigh(&w->slow, SHIFT_RATE, 1e6f, quality, 1, &z) == SONA_OK)
        eng_ewc_note_shortfall(w, z < 0.0f ? -z : 0.0f);
    if (cell >= ENG_CELLS)
        return;
    for (uint32_t c = 0; c < ENG_CELLS; c++)
        w->seen[c] *= CELL_DECAY;
    w->seen[cell] += 1.0f;
}

sona_status eng_ewc_step(eng_ewc *w, sona_lora *lora, const sona_engine_config *cfg, int *boundary)
{
    const uint32_t half = w->n / 2;
    *boundary = 0;
    const float *theta = w->theta, *g = w->g;
    sona_status st = SONA_OK;
    if (sona_lora_pending(lora) > 0) {
        if (!sona_lora_host_params(lora, &theta, &g)) {
            st = sona_lora_export(lora, w->theta, w->theta + half, NULL);
            if (st == SONA_OK)
                st = sona_lora_export_grad(lora, w->g, w->g + half);
        }
        if (st == SONA_OK && !sona_all_within_fast(g, w->n, ENG_MAX_GRADIENT))
            return sona_fail(NULL, SONA_E_INVALID, "a gradient value beyond %g (its Fisher would pass %g)",
                             (double)ENG_MAX_GRADIENT, (double)SONA_MAX_FISHER);
        /* A boundary snapshots the task that ended (theta, the Fisher before this gradient). */
        if (st == SONA_OK && shift_detected(w, cfg)) {
            const uint32_t before = sona_ewc_task_count(w->ewc);
            st = sona_ewc_end_task(w->ewc, theta, w->n);
            if (st == SONA_OK)
                note_snapshot(w, before);
            *boundary = 1;
        }
        if (st != SONA_OK)
            return st;
        sona_ewc_fold_fisher(w->ewc, g); /* finite: within ENG_MAX_GRADIENT above */
        if (*boundary)
            w->lambda_valid = 0;
    }
    const float *fsum = NULL, *ftheta = NULL;
    float lambda = 0;
    if ((st = update_weights(w)) != SONA_OK || (st = sona_ewc_penalty(w->ewc, &fsum, &ftheta, &lambda)) != SONA_OK)
        return st;
    sona_lora_ewc_terms t = {.lambda = lambda};
    if (fsum && ftheta) {
        t.lambda = penalty_lambda(w, lora, fsum, lambda);
        t.fisher_sum[0] = fsum;
        t.fisher_sum[1] = fsum + half;
        t.fisher_theta[0] = ftheta;
        t.fisher_theta[1] = ftheta + half;
    }
    return sona_lora_apply_updates_ewc(lora, &t);
}

void eng_ewc_save(const eng_ewc *w, sona_wbuf *out)
{
    sona_wbuf_u32(out, w != NULL);
    if (!w)
        return;
    const uint32_t tasks = sona_ewc_task_count(w->ewc);
    sona_wbuf_u32(out, w->n);
    sona_wbuf_u32(out, tasks);
    sona_wbuf_floats(out, sona_ewc_fisher(w->ewc), w->n);
    for (uint32_t i = 0; i < tasks; i++) {
        if (sona_ewc_get_task(w->ewc, i, w->theta, w->g) != SONA_OK) {
            out->oom = 1;
            return;
        }
        sona_wbuf_floats(out, w->theta, w->n);
        sona_wbuf_floats(out, w->g, w->n);
    }
    sona_ewc_detector d;
    sona_ewc_get_detector(w->ewc, &d);
    sona_wbuf_u64(out, d.samples);
    sona_wbuf_f64(out, d.short_mean);
    sona_wbuf_f64(out, d.long_mean);
    sona_wbuf_f64(out, d.long_var);
    sona_wbuf_u64(out, d.boundaries);
    sona_wbuf_f32(out, w->slow.mean);
    sona_wbuf_f32(out, w->slow.var);
    sona_wbuf_u32(out, w->slow.count);
    sona_wbuf_f64(out, w->shortfall_sum);
    sona_wbuf_u32(out, w->shortfall_n);
    sona_wbuf_f64(out, w->shift);
    sona_wbuf_u32(out, w->updates);
    sona_wbuf_u32(out, ENG_CELLS);
    sona_wbuf_floats(out, w->seen, ENG_CELLS);
    sona_wbuf_floats(out, w->task_cells, (size_t)tasks * ENG_CELLS);
    sona_wbuf_floats(out, w->weights, tasks);
}

/* The cell state of a version 5 record: seen counts within what CELL_DECAY lets them reach,
 * each task's distribution of cells (sums to 1, or 0 for a snapshot of no query) and its
 * weight in [0, 1]. */
static sona_status load_cells(sona_rbuf *in, eng_ewc *w, uint32_t tasks)
{
    const float seen_max = 1.0f / (1.0f - CELL_DECAY) + 1.0f;
    if (sona_rbuf_u32(in) != ENG_CELLS || in->bad ||
        !sona_rbuf_has(in, ENG_CELLS + (uint64_t)tasks * (ENG_CELLS + 1), sizeof(float)))
        return SONA_E_CORRUPT;
    sona_rbuf_floats(in, w->seen, ENG_CELLS);
    sona_rbuf_floats(in, w->task_cells, (size_t)tasks * ENG_CELLS);
    sona_rbuf_floats(in, w->weights, tasks);
    for (uint32_t c = 0; c < ENG_CELLS; c++)
        if (!(w->seen[c] >= 0.0f && w->seen[c] <= seen_max))
            return SONA_E_CORRUPT;
    for (uint32_t t = 0; t < tasks; t++) {
        double sum = 0.0;
        for (uint32_t c = 0; c < ENG_CELLS; c++) {
            const float v = w->task_cells[(size_t)t * ENG_CELLS + c];
            if (!(v >= 0.0f && v <= 1.0f))
                return SONA_E_CORRUPT;
            sum += v;
        }
        if (!(sum < 1e-3 || fabs(sum - 1.0) < 1e-3) || !(w->weights[t] >= 0.0f && w->weights[t] <= 1.0f))
            return SONA_E_CORRUPT;
    }
    return sona_ewc_set_task_weights(w->ewc, w->weights, tasks) == SONA_OK ? SONA_OK : SONA_E_CORRUPT;
}

/* Fisher values are squares' running means: 0 <= F <= SONA_MAX_FISHER (NaN is not). */
static int fisher_in_range(const float *f, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (!(f[i] >= 0.0f && f[i] <= SONA_MAX_FISHER))
            return 0;
    return 1;
}

sona_status eng_ewc_load(sona_rbuf *in, const sona_lora *lora, const sona_engine_config *cfg, uint32_t version,
                         int base, eng_ewc **out)
{
    *out = NULL;
    const uint32_t present = sona_rbuf_u32(in);
    if (in->bad || present > 1)
        return SONA_E_CORRUPT;
    if (!present)
        return SONA_OK;
    eng_ewc *w = eng_ewc_create(lora, cfg, base);
    if (!w)
        return SONA_E_NOMEM;
    const uint32_t n = sona_rbuf_u32(in), tasks = sona_rbuf_u32(in);
    sona_status st = SONA_OK;
    if (in->bad || n != w->n || tasks > cfg->max_tasks ||
        !sona_rbuf_has(in, (1 + 2 * (uint64_t)tasks) * n, sizeof(float)))
        st = in->bad || n == w->n ? SONA_E_CORRUPT : SONA_E_SIZE;
    float *fisher = sona_ewc_fisher(w->ewc);
    if (st == SONA_OK) {
        sona_rbuf_floats(in, fisher, n);
        if (!fisher_in_range(fisher, n))
            st = SONA_E_CORRUPT;
    }
    for (uint32_t i = 0; i < tasks && st == SONA_OK; i++) {
        sona_rbuf_floats(in, w->theta, n);
        sona_rbuf_floats(in, w->g, n);
        /* The live ranges (include/sona/engine.h): F x theta summed over the tasks stays finite. */
        if (!sona_all_within(w->theta, n, SONA_MAX_WEIGHT) || !fisher_in_range(w->g, n) ||
            sona_ewc_add_task(w->ewc, w->theta, w->g, n) != SONA_OK)
            st = SONA_E_CORRUPT;
    }
    if (st == SONA_OK && version >= 3) {
        sona_ewc_detector d;
        d.samples = sona_rbuf_u64(in);
        d.short_mean = sona_rbuf_f64(in);
        d.long_mean = sona_rbuf_f64(in);
        d.long_var = sona_rbuf_f64(in);
        d.boundaries = sona_rbuf_u64(in);
        if (in->bad || sona_ewc_set_detector(w->ewc, &d) != SONA_OK)
            st = SONA_E_CORRUPT;
    }
    if (st == SONA_OK && version >= 4) {
        w->slow.mean = sona_rbuf_f32(in);
        w->slow.var = sona_rbuf_f32(in);
        w->slow.count = sona_rbuf_u32(in);
        w->shortfall_sum = sona_rbuf_f64(in);
        w->shortfall_n = sona_rbuf_u32(in);
        w->shift = sona_rbuf_f64(in);
        w->updates = sona_rbuf_u32(in);
        /* What live learning can reach: qualities within SONA_MAX_QUALITY, shortfalls capped. */
        const float qmax = SONA_MAX_QUALITY;
        if (in->bad || !(fabsf(w->slow.mean) <= qmax) || !(w->slow.var >= 0.0f) ||
            !(w->slow.var <= 4.0f * qmax * qmax) || !(w->shortfall_sum >= 0.0) ||
            !(w->shortfall_sum <= (double)SHORTFALL_MAX * w->shortfall_n) || !(w->shift >= 0.0) ||
            !(w->shift <= SHORTFALL_MAX))
            st = SONA_E_CORRUPT;
    }
    if (st == SONA_OK && version >= 5)
        st = load_cells(in, w, tasks);
    else if (st == SONA_OK) /* older files: every snapshot in full, its cells unknown */
        for (uint32_t t = 0; t < tasks; t++)
            w->weights[t] = 1.0f;
    if (st != SONA_OK || !cfg->ewc_enabled) {
        eng_ewc_destroy(w);
        return st;
    }
    *out = w;
    return SONA_OK;
}
