/* SPDX-License-Identifier: MIT */
/* Base-LoRA's learning signals from a trajectory's steps: shared by loop B (recorded
 * trajectories) and loop C (replayed dreams). */
#include "engine/base.h"

#include "core/adapt/lora_internal.h"

#include <math.h>
#include <string.h>

/* Base-LoRA signals of one trajectory. Its steps are taken in runs of one layer: a run's steps
 * are alternatives explored from one input, the activations before the run (the query for the
 * first), and make one signal of the run's layer, by the rule of sona/signal.h: the reward
 * contrast between them, or (equal rewards, one step) their displacement from what the layer's
 * adapter makes of the input now, weighted by the run's reward against its layer's baseline for
 * the query's region (or by w, when w is not NaN). Each signal is normalised so that
 * base_learning_rate is the fraction of the way it moves the layer's output. One forward, one
 * normalisation and one accumulate call for the whole trajectory. Caller holds cycle_mu (the
 * rows are the engine's scratch). */
sona_status eng_base_accumulate(sona_engine *e, const float *query, uint32_t cell, const eng_steps *s, float w)
{
    const size_t H = e->cfg.hidden;
    if (s->steps == 0)
        return SONA_OK;
    /* Rows x, y (then delta), weights, adapter ids and each run's first step, in one block the
     * engine keeps between calls. */
    const size_t bytes = (2 * H + 1) * s->steps * sizeof(float) + 2 * s->steps * sizeof(int32_t);
    float *x = sona_scratch_get(&e->base_rows, bytes);
    if (!x)
        return SONA_E_NOMEM;
    float *y = x + H * s->steps, *wt = y + H * s->steps;
    int32_t *ids = (int32_t *)(void *)(wt + s->steps), *first = ids + s->steps;
    uint32_t rows = 0;
    for (uint32_t i = 0; i < s->steps;) {
        uint32_t j = i + 1;
        while (j < s->steps && s->layers[j] == s->layers[i])
            j++;
        const int32_t layer = s->layers[i];
        if (layer >= 0 && (uint32_t)layer < e->cfg.base_layers) {
            memcpy(x + rows * H, i ? s->acts + (i - 1) * H : query, H * sizeof *x);
            first[rows] = (int32_t)i;
            ids[rows++] = layer;
        }
        i = j;
    }
    if (rows == 0)
        return SONA_OK;
    sona_status st = sona_lora_forward_batch(e->base, rows, ids, x, y);
    const uint32_t region = ENG_CELL_REGION(cell);
    sona_signal_options opt;
    sona_signal_options_default(&opt);
    for (uint32_t r = 0; r < rows && st == SONA_OK; r++) {
        const uint32_t i = (uint32_t)first[r];
        uint32_t n = 1;
        double mean = s->rewards[i];
        while (i + n < s->steps && s->layers[i + n] == ids[r])
            mean += s->rewards[i + n++];
        opt.output = y + r * H;
        opt.baseline = &e->base_baselines[(size_t)ids[r] * ENG_REGIONS + region];
        /* x stays where it is; delta replaces y (the builder reads the output before writing). */
        st = sona_signal_compute_opts(e->signals, x + r * H, (uint32_t)H, s->acts + (size_t)i * H, s->rewards + i, n,
                                      (float)(mean / n), &opt, x + r * H, y + r * H, &wt[r]);
        if (st == SONA_E_INVALID) { /* no direction: nothing to learn from this run */
            wt[r] = 0.0f;
            st = SONA_OK;
        } else if (st == SONA_OK && !isnan(w)) {
            wt[r] = w;
        }
    }
    if (st == SONA_OK)
        st = sona_lora_normalize_signals(e->base, rows, ids, x, y, wt);
    return st == SONA_OK ? sona_lora_accumulate_batch(e->base, rows, ids, x, y, wt) : st;
}
