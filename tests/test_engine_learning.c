/* SPDX-License-Identifier: MIT */
/* The engine learns at its DEFAULT preset (only the width is chosen, and the background thread
 * is off so that loop A alone is measured; learning rates, baselines and bounds are the
 * defaults), on synthetic tasks (tests/support/synth_task.h) it was not tuned for: an odd width,
 * 3 clusters, per-step rewards or the final quality only. The statistical margins below were
 * measured over many seeds (the numbers are in each test's comment); every run prints its seed
 * (SONA_TEST_SEED replays it). Also: the sign of a single signal (whatever the baseline), EWC++
 * keeping a first task while a second one is learned, and a hostile reward stream that neither
 * blows the adapter up nor stops it from learning afterwards. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "support/fill.h"
#include "support/synth_task.h"

enum { HIDDEN = 67, CLUSTERS = 3, REPLICATES = 3, EVAL_STREAM = 100 };
#define RELEARN_SHARE 0.85

/* The default preset at HIDDEN; background_thread 0 (loop B would learn Base-LoRA from the same
 * traffic, which these tasks do not score) and the given storage and EWC++ switch. */
static sona_engine *make_engine(int ewc, sona_storage storage, uint64_t seed)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, HIDDEN);
    c.seed = seed;
    c.step_storage = storage;
    c.background_thread = 0;
    c.ewc_enabled = ewc;
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_OK, "%s", sona_last_error());
    return e;
}

/* Tenant 0's score on the evaluation queries of seed (synth_task_score). */
static double evaluate(const synth_task *t, sona_engine *e, uint64_t seed)
{
    return synth_task_score(t, e, 0, seed, EVAL_STREAM);
}

/* One learner on its own task (replicate r draws task and requests from streams of seed): the
 * score gained over no learning after n trajectories. */
static double score_gain(sona_storage storage, uint32_t steps, int final_only, uint32_t n, uint64_t seed,
                         uint64_t replicate)
{
    synth_task t;
    cr_assert_eq(synth_task_init(&t, HIDDEN, CLUSTERS, seed, 2 * replicate), 0);
    t.steps = steps;
    t.final_only = final_only;
    sona_engine *e = make_engine(1, storage, seed + replicate);
    sona_rng r;
    sona_rng_seed(&r, seed, 2 * replicate + 1);
    const double before = evaluate(&t, e, seed);
    synth_task_run(&t, e, 0, n, &r, 1);
    const double after = evaluate(&t, e, seed);
    sona_stats s;
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.signals_accepted + s.signals_rejected, n);
    cr_assert_eq(s.micro_updates, s.signals_accepted);
    cr_assert_eq(s.trajectories_recorded + s.trajectories_dropped, n);
    sona_engine_destroy(e);
    synth_task_free(&t);
    return after - before;
}

static double mean_gain(sona_storage storage, uint32_t steps, int final_only, uint32_t n, uint64_t seed,
                        const char *name)
{
    double gain = 0;
    for (uint64_t replicate = 0; replicate < REPLICATES; replicate++) {
        const double g = score_gain(storage, steps, final_only, n, seed, replicate);
        printf("[engine_learning] %s #%" PRIu64 ": gain %.5f\n", name, replicate, g);
        gain += g / REPLICATES;
    }
    printf("[engine_learning] %s: mean gain over %d learners %.3f\n", name, REPLICATES, gain);
    return gain;
}

/* Per-step rewards, 4 steps, 600 trajectories: over 40 seeds the mean gain of 3 learners was
 * 0.431 to 0.506 (mean 0.479, sd 0.017) with Q8 trajectories and the same with F32. The bar,
 * 0.2, is 16 sd below the mean. */
Test(engine_learning, per_step_rewards_raise_the_score_at_the_defaults, .timeout = 600)
{
    const uint64_t seed = test_seed();
    printf("[engine_learning] seed %" PRIu64 "\n", seed);
    const double q8 = mean_gain(SONA_STORAGE_Q8, 4, 0, 600, seed, "per-step q8");
    cr_assert_gt(q8, 0.2, "Q8 trajectories: the score rose by %.3f, not clearly above no learning", q8);
    /* F32 (a non-default storage, to show the learning does not hang on Q8's rounding). */
    const double f32 = mean_gain(SONA_STORAGE_F32, 4, 0, 600, seed, "per-step f32");
    cr_assert_gt(f32, 0.2, "F32 trajectories: the score rose by %.3f", f32);
}

/* One step, its reward the final quality (one scalar a request, measured against the tenant's
 * baseline for the query's region and its query critic): over 40 seeds the mean gain of 3
 * learners after 1,000 trajectories was 0.284 to 0.357 (mean 0.319, sd 0.020; at the earlier
 * defaults, 0.267 with the critic and 0.243 without). The bar, 0.05, is 13 sd below the mean: the test says the scalar alone is learned
 * from, in the right direction. */
Test(engine_learning, the_final_quality_alone_raises_the_score, .timeout = 600)
{
    const uint64_t seed = test_seed();
    printf("[engine_learning] seed %" PRIu64 "\n", seed);
    const double gain = mean_gain(SONA_STORAGE_Q8, 1, 1, 1000, seed, "final quality only");
    cr_assert_gt(gain, 0.05, "the score rose by %.3f", gain);
}

/* Four steps, each rewarded with the final quality (one scalar a request for four explored
 * outputs; a query's own offset in its cluster moves that quality about as much as the
 * exploration does, which the tenant's query critic learns to discount): over 40 seeds the
 * mean gain of 3 learners after 1,000 trajectories was 0.127 to 0.185 (mean 0.150, sd 0.012; at
 * the earlier defaults, 0.125 with the critic and 0.095 without). The bar, 0.06, is 7 sd below
 * the mean. */
Test(engine_learning, the_final_quality_of_several_steps_raises_the_score, .timeout = 600)
{
    const uint64_t seed = test_seed();
    printf("[engine_learning] seed %" PRIu64 "\n", seed);
    const double gain = mean_gain(SONA_STORAGE_Q8, 4, 1, 1000, seed, "final quality of 4 steps");
    cr_assert_gt(gain, 0.06, "the score rose by %.3f", gain);
}

/* The smallest case through the public API: steps e1 (reward 0.2) and e2 (reward 0.8),
 * qualities 0.9 then 0.5. The adapter must move toward e2, the step that scored better,
 * whatever the qualities say about the baseline (weighting the contrast by Q - baseline would
 * move it toward e1: -8.2e-3 after request 2, -0.38 after 50 more). */
Test(engine_learning, the_adapter_moves_toward_the_better_step)
{
    enum { H = 8 };
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, H);
    c.background_thread = 0;
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_OK, "%s", sona_last_error());
    const float x[H] = {0.3f, -0.2f, 0.5f, 0.1f, -0.4f, 0.2f, 0.1f, -0.3f};
    float e1[H] = {0}, e2[H] = {0}, y[H];
    e1[0] = 1.0f;
    e2[1] = 1.0f;
    double last = 0;
    for (int i = 0; i < 52; i++) {
        sona_request *r;
        cr_assert_eq(sona_request_begin(e, 0, x, &r), SONA_OK);
        cr_assert_eq(sona_request_step(r, 0, e1, NULL, 0, 0.2f), SONA_OK);
        cr_assert_eq(sona_request_step(r, 0, e2, NULL, 0, 0.8f), SONA_OK);
        cr_assert_eq(sona_request_end(r, i == 0 ? 0.9f : 0.5f), SONA_OK, "%s", sona_engine_last_error(e));
        cr_assert_eq(sona_apply(e, 0, x, y), SONA_OK);
        double p = 0;
        for (int h = 0; h < H; h++)
            p += (double)(y[h] - x[h]) * (e2[h] - e1[h]);
        if (i == 1 || i == 51)
            printf("[engine_learning] after request %d: <y(x) - x, e2 - e1> = %.4f\n", i + 1, p);
        cr_assert_gt(p, last, "request %d: <y(x) - x, e2 - e1> = %g did not grow from %g", i + 1, p, last);
        last = p;
    }
    sona_engine_destroy(e);
}

/* Task 1 on its queries, then task 2 on new queries (no hint: the engine must see the shift),
 * for one learner with EWC++ on or off: the share of task 1's gain kept, and task 2's gain. */
static double switch_tasks(int ewc, uint64_t seed, uint64_t replicate, double *gain2)
{
    synth_task t1, t2;
    cr_assert_eq(synth_task_init(&t1, HIDDEN, CLUSTERS, seed, 10 * replicate), 0);
    cr_assert_eq(synth_task_init(&t2, HIDDEN, CLUSTERS, seed, 10 * replicate + 7), 0);
    sona_engine *e = make_engine(ewc, SONA_STORAGE_Q8, seed + replicate);
    sona_rng r;
    sona_rng_seed(&r, seed, 10 * replicate + 2);
    const double before1 = evaluate(&t1, e, seed), before2 = evaluate(&t2, e, seed + 1);
    synth_task_run(&t1, e, 0, 800, &r, 1);
    const double learned = evaluate(&t1, e, seed);
    synth_task_run(&t2, e, 0, 800, &r, 1);
    const double kept = evaluate(&t1, e, seed);
    *gain2 = evaluate(&t2, e, seed + 1) - before2;
    sona_stats s;
    sona_get_stats(e, &s);
    printf("[engine_learning] #%" PRIu64 " EWC++ %s: task 1 gained %.3f, kept %.3f (%.0f %%); task 2 gained %.3f; "
           "boundaries %" PRIu64 "\n",
           replicate, ewc ? "on" : "off", learned - before1, kept - before1,
           100 * (kept - before1) / (learned - before1), *gain2, s.task_boundaries);
    cr_assert_gt(learned, before1 + 0.08, "task 1 was not learned: %.3f from %.3f", learned, before1);
    if (ewc)
        cr_assert_geq(s.task_boundaries, 1, "the switch to task 2 was not detected");
    sona_engine_destroy(e);
    synth_task_free(&t1);
    synth_task_free(&t2);
    return (kept - before1) / (learned - before1);
}

/* A low-rank code holds a few topics: a second task on new queries overwrites the first unless
 * EWC++ protects it. Over 40 seeds (seeds 1-40), the mean of 3 learners kept 45 to 70 % of task
 * 1's gain with EWC++ (its default lambda) and 1 to 21 % without (on - off at least 39 points),
 * while task 2 gained 0.390 to 0.474 with it (0.439 to 0.524 without); every switch was
 * detected. */
Test(engine_learning, ewc_keeps_the_first_task_while_the_second_is_learned, .timeout = 600)
{
    const uint64_t seed = test_seed();
    printf("[engine_learning] seed %" PRIu64 "\n", seed);
    double kept_on = 0, kept_off = 0, gain_on = 0, gain_off = 0;
    for (uint64_t replicate = 0; replicate < REPLICATES; replicate++) {
        double g;
        kept_on += switch_tasks(1, seed, replicate, &g) / REPLICATES;
        gain_on += g / REPLICATES;
        kept_off += switch_tasks(0, seed, replicate, &g) / REPLICATES;
        gain_off += g / REPLICATES;
    }
    printf("[engine_learning] mean of %d learners: task 1's gain kept, EWC++ on %.0f %%, off %.0f %%; task 2 gained "
           "%.3f on, %.3f off\n",
           REPLICATES, 100 * kept_on, 100 * kept_off, gain_on, gain_off);
    cr_assert_gt(kept_on, kept_off + 0.2, "EWC++ on kept %.0f %%, off %.0f %%", 100 * kept_on, 100 * kept_off);
    cr_assert_gt(gain_on, 0.15, "with EWC++ task 2 gained only %.3f", gain_on);
}

/* Task 1, then new rewards for the same queries (task 2: task 1's queries with the opposite
 * targets: a preference that turned around), for one learner with EWC++ on or off: task 2's
 * gain after 800 trajectories. */
static double relearn(int ewc, uint64_t seed, uint64_t replicate)
{
    synth_task t1, t2;
    cr_assert_eq(synth_task_init(&t1, HIDDEN, CLUSTERS, seed, 10 * replicate + 3), 0);
    cr_assert_eq(synth_task_init(&t2, HIDDEN, CLUSTERS, seed, 10 * replicate + 3), 0);
    for (uint32_t i = 0; i < CLUSTERS * HIDDEN; i++)
        t2.targets[i] = -t1.targets[i];
    sona_engine *e = make_engine(ewc, SONA_STORAGE_Q8, seed + replicate);
    sona_rng r;
    sona_rng_seed(&r, seed, 10 * replicate + 4);
    synth_task_run(&t1, e, 0, 800, &r, 1);
    const double before = evaluate(&t2, e, seed);
    synth_task_run(&t2, e, 0, 800, &r, 1);
    const double gain = evaluate(&t2, e, seed) - before;
    sona_stats s;
    sona_get_stats(e, &s);
    printf("[engine_learning] #%" PRIu64 " EWC++ %s: the changed rewards gained %.3f; boundaries %" PRIu64 "\n",
           replicate, ewc ? "on" : "off", gain, s.task_boundaries);
    sona_engine_destroy(e);
    synth_task_free(&t1);
    synth_task_free(&t2);
    return gain;
}

/* EWC++ protects what was learned for queries that stopped coming, not answers the current
 * rewards contradict: when the same queries come back with other rewards, the snapshot of the
 * old task gives way (docs/learning.md, "anchors give way") and the new answers are learned
 * about as fast as without EWC++. Over 40 seeds (1-40) the mean of 3 learners gained 0.943 to
 * 0.959 with EWC++, 100 % of what the same learners gained without; with every snapshot held
 * at full weight (the rule before anchors gave way; measured then, at lambda 0.005) 58 to 73 %
 * of it. RELEARN_SHARE (85 %)
 * lies between. */
Test(engine_learning, changed_rewards_on_the_same_queries_are_learned_with_ewc_on, .timeout = 600)
{
    const uint64_t seed = test_seed();
    printf("[engine_learning] seed %" PRIu64 "\n", seed);
    double on = 0, off = 0;
    for (uint64_t replicate = 0; replicate < REPLICATES; replicate++) {
        on += relearn(1, seed, replicate) / REPLICATES;
        off += relearn(0, seed, replicate) / REPLICATES;
    }
    printf("[engine_learning] mean of %d learners: the changed rewards gained %.3f with EWC++, %.3f without "
           "(%.0f %%)\n", REPLICATES, on, off, 100 * on / off);
    cr_assert_gt(off, 0.1, "without EWC++ the changed rewards gained only %.3f", off);
    cr_assert_gt(on, RELEARN_SHARE * off, "with EWC++ the changed rewards gained %.3f, without %.3f", on, off);
}

/* |y(x) - x| / |x| over random x: at most max_output_change, whatever the rewards. */
static double largest_change(sona_engine *e, sona_rng *r, int *finite)
{
    float x[HIDDEN], y[HIDDEN];
    double worst = 0;
    for (int k = 0; k < 200; k++) {
        double xx = 0, dd = 0;
        for (int h = 0; h < HIDDEN; h++) {
            x[h] = sona_rng_normal(r);
            xx += (double)x[h] * x[h];
        }
        cr_assert_eq(sona_apply(e, 0, x, y), SONA_OK);
        for (int h = 0; h < HIDDEN; h++) {
            *finite &= isfinite(y[h]) != 0;
            dd += ((double)y[h] - x[h]) * ((double)y[h] - x[h]);
        }
        worst = fmax(worst, sqrt(dd / xx));
    }
    return worst;
}

/* 6,000 trajectories of random rewards, then 6,000 whose reward grows with the distance from
 * the query (pushing the output away as far as it goes), then 6,000 of inverted rewards: every
 * output stays finite and within max_output_change (5) of its input, and the task learned
 * afterwards still gains (over 40 seeds the largest change seen was 2.40, and the task gained
 * 0.951 to 0.976 after 600 trajectories). */
Test(engine_learning, hostile_rewards_stay_bounded_and_learning_recovers, .timeout = 600)
{
    const uint64_t seed = test_seed();
    printf("[engine_learning] seed %" PRIu64 "\n", seed);
    synth_task t;
    cr_assert_eq(synth_task_init(&t, HIDDEN, CLUSTERS, seed, 0), 0);
    sona_engine *e = make_engine(1, SONA_STORAGE_Q8, seed);
    const float bound = sona_engine_get_config(e)->max_output_change;
    sona_rng r;
    sona_rng_seed(&r, seed, 1);
    float x[HIDDEN], y[HIDDEN], a[HIDDEN];
    int finite = 1;
    for (int phase = 0; phase < 3; phase++) {
        for (int k = 0; k < 6000; k++) {
            const uint32_t c = sona_rng_below(&r, CLUSTERS);
            for (int h = 0; h < HIDDEN; h++)
                x[h] = t.centers[c * HIDDEN + h] + 0.3f * sona_rng_normal(&r) / sqrtf(HIDDEN);
            cr_assert_eq(sona_apply(e, 0, x, y), SONA_OK);
            sona_request *q;
            cr_assert_eq(sona_request_begin(e, 0, x, &q), SONA_OK);
            double quality = 0;
            for (int s = 0; s < 4; s++) {
                double far = 0, along = 0, aa = 0;
                for (int h = 0; h < HIDDEN; h++) {
                    a[h] = y[h] + 0.5f * sona_rng_normal(&r) / sqrtf(HIDDEN);
                    far += ((double)a[h] - x[h]) * ((double)a[h] - x[h]);
                    along += (double)a[h] * t.targets[c * HIDDEN + h];
                    aa += (double)a[h] * a[h];
                }
                const float reward = phase == 0   ? sona_rng_uniform(&r)
                                     : phase == 1 ? (float)sqrt(far)
                                                  : (float)(1.0 - (1.0 + along / sqrt(aa)) / 2.0);
                quality += reward / 4;
                cr_assert_eq(sona_request_step(q, (uint32_t)s, a, NULL, 0, reward), SONA_OK);
            }
            cr_assert_eq(sona_request_end(q, (float)quality), SONA_OK);
        }
        const double worst = largest_change(e, &r, &finite);
        printf("[engine_learning] hostile phase %d: largest |y(x) - x| / |x| %.3f\n", phase, worst);
        cr_assert(finite, "phase %d: a non-finite output", phase);
        cr_assert_leq(worst, bound * (1 + 1e-5), "phase %d: |y(x) - x| / |x| = %g passed the bound %g", phase,
                      worst, bound);
    }
    const double before = evaluate(&t, e, seed);
    synth_task_run(&t, e, 0, 600, &r, 1);
    const double gain = evaluate(&t, e, seed) - before;
    printf("[engine_learning] benign traffic after the hostile stream gained %.3f\n", gain);
    cr_assert_gt(gain, 0.05, "after the hostile stream the task gained only %.3f", gain);
    sona_engine_destroy(e);
    synth_task_free(&t);
}
