/* SPDX-License-Identifier: MIT */
/* Base-LoRA's learning signals from a trajectory's steps: shared by loop B (recorded
 * trajectories) and loop C (replayed dreams). */
#include "engine/base.h"

#include "core/adapt/lora_internal.h"
#include "dispatch/cost.h"
#include "dispatch/dispatch.h"

#include <math.h>
#include <string.h>

/* Base-LoRA's signals, many trajectories at a time. A trajectory's steps are taken in runs of
 * one layer: a run's steps are alternatives explored from one input, the activations before the
 * run (the query for the first), and make one signal of the run's layer, by the rule of
 * sona/signal.h: the reward contrast between them, or (equal rewards, one step) their
 * displacement from what the layer's adapter makes of the input now, weighted by the run's
 * reward against its layer's baseline for the query's region (or by w, when w is not NaN).
 * Each signal is normalised so that base_learning_rate is the fraction of the way it moves the
 * layer's output.
 *
 * eng_base_queue_trajectory takes a trajectory's runs (their inputs, and what their signals
 * need: the steps' activations and rewards) into e->base_q; eng_base_flush makes the signals of everything
 * queued with one forward, the signals in queue order (the baselines and the signal builder see
 * the runs in the order they came, as when each trajectory was done at once: the weights do not
 * change until the cycle trains), one normalisation and one accumulate call. Once a trajectory,
 * those calls read every layer's weights and wrote its gradients: at hidden 4 096 ten runs
 * moved 15 MB a trajectory. The queue's block holds about QUEUE_FLOATS floats; a full queue
 * flushes itself. Caller holds cycle_mu (the block is the engine's scratch). */
#define QUEUE_FLOATS ((size_t)1 << 20)

/* The runs a flush takes at hidden H (queue_room's default). */
static uint32_t flush_rows(size_t H)
{
    return QUEUE_FLOATS / (4 * H) > 16 ? (uint32_t)(QUEUE_FLOATS / (4 * H)) : 16;
}

/* Room for `rows` more runs of `steps` more steps: flushes first when they do not fit, and
 * lays the block out afresh (sized for at least them) when the empty queue does not either. */
static sona_status queue_room(sona_engine *e, uint32_t rows, uint32_t steps)
{
    eng_base_queue *q = &e->base_q;
    if (q->rows + rows <= q->row_cap && q->steps + steps <= q->step_cap)
        return SONA_OK;
    sona_status st = eng_base_flush(e);
    if (st != SONA_OK || (rows <= q->row_cap && steps <= q->step_cap))
        return st;
    const size_t H = e->cfg.hidden, fit = flush_rows(H);
    const uint32_t row_cap = rows > fit ? rows : (uint32_t)fit;
    const uint32_t step_cap = steps > 2 * fit ? steps : (uint32_t)(2 * fit);
    size_t bytes = 0;
    const size_t at_x = sona_scratch_push(&bytes, (size_t)row_cap * H * sizeof(float));
    const size_t at_y = sona_scratch_push(&bytes, (size_t)row_cap * H * sizeof(float));
    const size_t at_acts = sona_scratch_push(&bytes, (size_t)step_cap * H * sizeof(float));
    const size_t at_rewards = sona_scratch_push(&bytes, step_cap * sizeof(float));
    const size_t at_small = sona_scratch_push(&bytes, (size_t)row_cap * 6 * sizeof(float));
    char *mem = sona_scratch_get(&e->base_rows, bytes);
    if (!mem) {
        q->row_cap = q->step_cap = 0;
        return SONA_E_NOMEM;
    }
    float *small = (float *)(void *)(mem + at_small);
    *q = (eng_base_queue){.row_cap = row_cap, .step_cap = step_cap,
                          .x = (float *)(void *)(mem + at_x), .y = (float *)(void *)(mem + at_y),
                          .acts = (float *)(void *)(mem + at_acts),
                          .rewards = (float *)(void *)(mem + at_rewards), .wt = small,
                          .w = small + row_cap,
                          .ids = (int32_t *)(void *)(small + 2 * (size_t)row_cap),
                          .first = (uint32_t *)(void *)(small + 3 * (size_t)row_cap),
                          .n = (uint32_t *)(void *)(small + 4 * (size_t)row_cap),
                          .region = (uint32_t *)(void *)(small + 5 * (size_t)row_cap)};
    return SONA_OK;
}

void eng_base_follow_device(sona_engine *e)
{
    const sona_backend *dev = eng_device_picked(e->device);
    if (!dev || e->base_stays_home || sona_lora_backend(e->base) != sona_cpu_backend())
        return;
    const sona_lora_grad_args flush = {
        .w = {.hidden = e->cfg.hidden, .rank = e->cfg.base_rank, .num_adapters = e->cfg.base_layers},
        .n = flush_rows(e->cfg.hidden)};
    /* A failed move (the device's memory) leaves it home as it was, and home it stays: each
     * try would copy the set out again. */
    if (sona_route(SONA_OP_LORA_GRAD, &flush, dev) == dev && sona_lora_move(e->base, dev) != SONA_OK)
        e->base_stays_home = 1;
}

sona_status eng_base_queue_trajectory(sona_engine *e, const float *query, uint32_t cell,
                                      const eng_steps *s, float w)
{
    const size_t H = e->cfg.hidden;
    uint32_t rows = 0, steps = 0; /* what it adds: the runs of a layer Base-LoRA has */
    for (uint32_t i = 0; i < s->steps;) {
        uint32_t j = i + 1;
        while (j < s->steps && s->layers[j] == s->layers[i])
            j++;
        if (s->layers[i] >= 0 && (uint32_t)s->layers[i] < e->cfg.base_layers)
            rows++, steps += j - i;
        i = j;
    }
    if (rows == 0)
        return SONA_OK;
    const sona_status st = queue_room(e, rows, steps);
    if (st != SONA_OK)
        return st;
    eng_base_queue *q = &e->base_q;
    for (uint32_t i = 0; i < s->steps;) {
        uint32_t j = i + 1;
        while (j < s->steps && s->layers[j] == s->layers[i])
            j++;
        const int32_t layer = s->layers[i];
        if (layer >= 0 && (uint32_t)layer < e->cfg.base_layers) {
            const uint32_t r = q->rows++, n = j - i;
            memcpy(q->x + r * H, i ? s->acts + (i - 1) * H : query, H * sizeof *q->x);
            memcpy(q->acts + (size_t)q->steps * H, s->acts + (size_t)i * H, n * H * sizeof *q->acts);
            memcpy(q->rewards + q->steps, s->rewards + i, n * sizeof *q->rewards);
            q->ids[r] = layer;
            q->first[r] = q->steps;
            q->n[r] = n;
            q->region[r] = ENG_CELL_REGION(cell);
            q->w[r] = w;
            q->steps += n;
        }
        i = j;
    }
    return SONA_OK;
}

sona_status eng_base_flush(sona_engine *e)
{
    eng_base_queue *q = &e->base_q;
    const uint32_t rows = q->rows;
    if (rows == 0)
        return SONA_OK;
    q->rows = q->steps = 0; /* done with, whatever happens */
    const size_t H = e->cfg.hidden;
    sona_status st = sona_lora_forward_batch(e->base, rows, q->ids, q->x, q->y);
    sona_signal_options opt;
    sona_signal_options_default(&opt);
    for (uint32_t r = 0; r < rows && st == SONA_OK; r++) {
        float *x = q->x + r * H, *y = q->y + r * H;
        const float *rewards = q->rewards + q->first[r];
        double sum = rewards[0]; /* the run's mean reward */
        for (uint32_t i = 1; i < q->n[r]; i++)
            sum += rewards[i];
        opt.output = y;
        opt.baseline = &e->base_baselines[(size_t)q->ids[r] * ENG_REGIONS + q->region[r]];
        /* x stays where it is; delta replaces y (the builder reads the output before writing). */
        st = sona_signal_compute_opts(e->signals, x, (uint32_t)H, q->acts + (size_t)q->first[r] * H,
                                      rewards, q->n[r], (float)(sum / q->n[r]), &opt, x, y, &q->wt[r]);
        if (st == SONA_E_INVALID) { /* no direction: nothing to learn from this run */
            q->wt[r] = 0.0f;
            st = SONA_OK;
        } else if (st == SONA_OK && !isnan(q->w[r])) {
            q->wt[r] = q->w[r];
        }
    }
    if (st == SONA_OK)
        st = sona_lora_normalize_signals(e->base, rows, q->ids, q->x, q->y, q->wt);
    return st == SONA_OK ? sona_lora_accumulate_batch(e->base, rows, q->ids, q->x, q->y, q->wt) : st;
}
