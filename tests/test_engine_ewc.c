/* SPDX-License-Identifier: MIT */
/* The engine's EWC++ glue (src/engine/ewc.c): the capped lambda of the penalty step,
 * cached between task changes, always equals its computation from the current tasks: after a
 * declared task end (loop C's consolidation) and after a boundary the quality-shift detector
 * finds. */
#include <criterion/criterion.h>
#include <math.h>

#include "common/rng.h"
#include "core/adapt/lora_internal.h"
#include "engine/config.h"
#include "engine/ewc.h"
#include "sona/ewc.h"

enum { HIDDEN = 37 };

/* The uncached rule: lambda capped at 1 / (lr * max F_sum) where lr * lambda * max F_sum > 1. */
static float lambda_from_tasks(const eng_ewc *w, const sona_lora *lora, int *capped)
{
    const float *fsum = NULL, *ftheta = NULL;
    float lambda = 0;
    cr_assert_eq(sona_ewc_penalty(eng_ewc_state(w), &fsum, &ftheta, &lambda), SONA_OK);
    cr_assert_not_null(fsum, "a task is stored");
    const uint32_t n = sona_ewc_get_config(eng_ewc_state(w))->param_count;
    float fmax = 0;
    for (uint32_t i = 0; i < n; i++)
        fmax = fsum[i] > fmax ? fsum[i] : fmax;
    const float lr = sona_lora_get_config(lora)->learning_rate;
    *capped = fmax * lr * lambda > 1.0f;
    return *capped ? 1.0f / (fmax * lr) : lambda;
}

/* n learning steps on random signals of weight +-amplitude, each after a quality that fell
 * `shortfall` spreads below its baseline; the boundaries they took. */
static int train_short(eng_ewc *w, sona_lora *lora, const sona_engine_config *cfg, sona_rng *r, int n,
                       float amplitude, float shortfall)
{
    float x[HIDDEN], d[HIDDEN];
    int boundaries = 0;
    for (int s = 0; s < n; s++) {
        for (int h = 0; h < HIDDEN; h++)
            x[h] = sona_rng_normal(r), d[h] = sona_rng_normal(r);
        const float wt = sona_rng_uniform(r) < 0.5f ? -amplitude : amplitude;
        cr_assert_eq(sona_lora_accumulate(lora, 0, x, d, wt), SONA_OK);
        eng_ewc_note_shortfall(w, shortfall);
        int boundary = 0;
        cr_assert_eq(eng_ewc_step(w, lora, cfg, &boundary), SONA_OK, "%s / %s", sona_lora_last_error(lora), sona_ewc_last_error(eng_ewc_state(w)));
        boundaries += boundary;
    }
    return boundaries;
}

/* Steps whose qualities are as good as usual (a shortfall of a third of a spread on average). */
static int train(eng_ewc *w, sona_lora *lora, const sona_engine_config *cfg, sona_rng *r, int n, float amplitude)
{
    return train_short(w, lora, cfg, r, n, amplitude, 0.3f);
}

/* A declared task end (what loop C's consolidation does), then one step that uses the lambda
 * (and caches it). */
static void declare_task_end(eng_ewc *w, sona_lora *lora, const sona_engine_config *cfg, sona_rng *r,
                             float amplitude)
{
    cr_assert_eq(eng_ewc_consolidate(w, lora), SONA_OK);
    train(w, lora, cfg, r, 1, amplitude);
}

/* The engine's lambda now, checked against the uncached rule; *capped_once notes a binding cap. */
static float checked_lambda(eng_ewc *w, const sona_lora *lora, int *capped_once)
{
    int capped;
    const float seen = eng_ewc_lambda(w, lora);
    cr_expect_eq(seen, lambda_from_tasks(w, lora, &capped));
    *capped_once |= capped;
    return seen;
}

Test(engine_ewc, capped_lambda_follows_every_task_change)
{
    sona_engine_config cfg;
    sona_engine_config_default(&cfg, SONA_PRESET_DEFAULT, HIDDEN);
    /* The default preset's learning rate; an EWC++ strength far above its default, so that
     * lr x lambda x max F_sum passes 1 and the cap binds (with clipped gradients F_sum stays
     * near 1 or below, and the default lambda never gets there). */
    cfg.ewc_lambda = 8.0f;
    sona_lora_config lc;
    eng_lora_config(&cfg, 0, &lc);
    lc.clip_norm = 1.0f; /* raw gradients here, not the engine's normalised signals: kept bounded */
    sona_lora *lora = NULL;
    cr_assert_eq(sona_lora_create(&lc, &lora), SONA_OK, "%s", sona_last_error());
    eng_ewc *w = eng_ewc_create(lora, &cfg, 0);
    cr_assert_not_null(w);
    sona_rng r;
    sona_rng_seed(&r, 2024, 0);

    cr_assert_eq(train(w, lora, &cfg, &r, 150, 0.01f), 0, "a steady gradient is no new task");
    float seen[3];
    int capped_once = 0;
    /* 1: a declared task end. */
    declare_task_end(w, lora, &cfg, &r, 0.01f);
    seen[0] = checked_lambda(w, lora, &capped_once);
    /* 2: a larger Fisher in the second task, declared. */
    cr_assert_eq(train(w, lora, &cfg, &r, 150, 0.3f), 0);
    declare_task_end(w, lora, &cfg, &r, 0.3f);
    seen[1] = checked_lambda(w, lora, &capped_once);
    /* 3: qualities falling 3 spreads below their baselines, which the detector takes for a new
     * task (its running mean passes task_shift_threshold, 1.2, after 8 of them), inside a step. */
    cr_assert_eq(train(w, lora, &cfg, &r, 150, 0.3f), 0);
    cr_assert_eq(train_short(w, lora, &cfg, &r, 20, 30.0f, 3.0f), 1, "the fall is one detected boundary");
    cr_assert_eq(eng_ewc_tasks(w), 3);
    seen[2] = checked_lambda(w, lora, &capped_once);

    cr_expect(capped_once, "the cap bound at least once (else this test checks nothing of it)");
    cr_expect_neq(seen[0], seen[1], "each task change moves lambda (else a stale value would pass)");
    cr_expect_neq(seen[1], seen[2]);
    eng_ewc_destroy(w);
    sona_lora_destroy(lora);
}
