/* The engine learns, measured on a synthetic task (tests/support/synth_task.h): over 1,000
 * trajectories the mean quality of the adapted output rises clearly above the no-learning
 * baseline, on average over 3 independent learners (trajectories kept in Q8, the default, and
 * in F32), and after a second task that wants the opposite, EWC++ keeps at least 80 % of what
 * the first task gained over no learning, and 30 points more than without EWC++ (on average over
 * 3 learners; over 150 seeds 86-101 % against -112 to +29 %). */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>

#include "support/op_cases.h"
#include "support/synth_task.h"

enum { HIDDEN = 67, CLUSTERS = 3, REPLICATES = 3, EVAL_STREAM = 100 };

static sona_engine *make_engine(int ewc, sona_storage storage)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, HIDDEN);
    c.step_storage = storage;
    c.background_thread = 0;
    c.loop_b_threshold = 1u << 30; /* loop A alone */
    c.micro_learning_rate = 0.4f;
    c.ewc_enabled = ewc;
    c.task_shift_threshold = 1e6f; /* tasks end where the test says (loop C), not by detection */
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_OK, "%s", sona_last_error());
    return e;
}

/* The mean quality of the adapted outputs on the same 300 queries at every call (from seed's
 * stream EVAL_STREAM): two evaluations differ by what the adapter learned, not by which queries
 * were drawn (a sampling noise of about 0.01, 5 % of a weakly learned task's gain). */
static double evaluate(const synth_task *t, sona_engine *e, uint64_t seed)
{
    sona_rng r;
    sona_rng_seed(&r, seed, EVAL_STREAM);
    return synth_task_run(t, e, 0, 300, &r, 0);
}

/* One learner on its own task (replicate r draws task and requests from streams of seed): the
 * quality gained over no learning after 1,000 trajectories. */
static double quality_gain(sona_storage storage, const char *name, uint64_t seed, uint64_t replicate)
{
    synth_task t;
    cr_assert_eq(synth_task_init(&t, HIDDEN, CLUSTERS, seed, 2 * replicate), 0);
    sona_engine *e = make_engine(0, storage);
    sona_rng r;
    sona_rng_seed(&r, seed, 2 * replicate + 1);
    const double before = evaluate(&t, e, seed);
    for (int block = 0; block < 10; block++) {
        const double last = synth_task_run(&t, e, 0, 100, &r, 1);
        printf("[engine_learning] %s #%" PRIu64 " trajectories %4d  mean quality %.3f\n", name, replicate,
               (block + 1) * 100, last);
    }
    const double after = evaluate(&t, e, seed);
    printf("[engine_learning] %s #%" PRIu64 ": no learning %.3f, after 1000 trajectories %.3f\n", name, replicate,
           before, after);
    sona_stats s;
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_eq(s.signals_accepted, 1000);
    cr_assert_eq(s.micro_updates, 1000);
    cr_assert_eq(s.trajectories_recorded + s.trajectories_dropped, 1000);
    sona_engine_destroy(e);
    synth_task_free(&t);
    return after - before;
}

/* One learner's gain is noisy (exploration noise drives its updates; some runs peak and fall
 * back): over 300 learners 0.17 to 0.78, median 0.48, sd 0.12, and seed 64301400697366's first
 * learner gained 0.114. The mean of 3 is judged instead: over 100 seeds 0.31 to 0.65, mean 0.48,
 * sd 0.07 (0.38 to 0.63, sd 0.06, over 80 since evaluate), so 0.15 is 4.7 sd below it; no
 * learning (rate 1e-4) gains 0.003, a rate 8x too low 0.02. */
static void quality_rises(sona_storage storage, const char *name, uint64_t seed)
{
    double gain = 0;
    for (uint64_t replicate = 0; replicate < REPLICATES; replicate++)
        gain += quality_gain(storage, name, seed, replicate) / REPLICATES;
    printf("[engine_learning] %s: mean gain over %d learners %.3f\n", name, REPLICATES, gain);
    cr_assert_gt(gain, 0.15, "%s: quality rose by %.3f on average, not clearly above no learning", name, gain);
}

Test(engine_learning, quality_rises_above_the_no_learning_baseline)
{
    const uint64_t seed = op_test_seed();
    printf("[engine_learning] seed %" PRIu64 "\n", seed);
    quality_rises(SONA_STORAGE_Q8, "q8", seed);
    quality_rises(SONA_STORAGE_F32, "f32", seed);
}

/* Task 1, consolidate (loop C), task 2, back to task 1 (replicate r draws its tasks and
 * requests from streams of seed): the quality task 1 keeps, and before any learning and after
 * task 1 the quality it had. */
static double retention(int ewc, uint64_t seed, uint64_t replicate, double *before, double *learned)
{
    synth_task t1, t2;
    cr_assert_eq(synth_task_init(&t1, HIDDEN, CLUSTERS, seed, 10 * replicate), 0);
    cr_assert_eq(synth_task_retarget(&t2, &t1, seed, 10 * replicate + 7), 0);
    for (uint32_t i = 0; i < HIDDEN * CLUSTERS; i++) /* the second task wants the opposite */
        t2.targets[i] = -t1.targets[i];
    sona_engine *e = make_engine(ewc, SONA_STORAGE_Q8);
    sona_rng r;
    sona_rng_seed(&r, seed, 10 * replicate + 2);
    *before = evaluate(&t1, e, seed);
    synth_task_run(&t1, e, 0, 1000, &r, 1);
    *learned = evaluate(&t1, e, seed);
    cr_assert_eq(sona_deep_cycle(e), SONA_OK, "%s", sona_engine_last_error(e));
    synth_task_run(&t2, e, 0, 1000, &r, 1);
    const double kept = evaluate(&t1, e, seed);
    sona_engine_destroy(e);
    synth_task_free(&t1);
    synth_task_free(&t2);
    return kept;
}

/* The share of task 1's gain over no learning kept after task 2, by one learner with EWC++ on
 * or off. */
static double kept_share(int ewc, uint64_t seed, uint64_t replicate)
{
    double before, learned;
    const double kept = retention(ewc, seed, replicate, &before, &learned);
    printf("[engine_learning] #%" PRIu64 " EWC++ %s: no learning %.3f, task 1 learned %.3f, kept after task 2 %.3f "
           "(%.0f %% of the gain)\n",
           replicate, ewc ? "on" : "off", before, learned, kept, 100 * (kept - before) / (learned - before));
    /* A share, not a quality: a learner that learned task 1 weakly has little quality to lose. */
    cr_assert_gt(learned, before + 0.1, "task 1 was not learned: %.3f from %.3f", learned, before);
    return (kept - before) / (learned - before);
}

/* One learner's share is noisy: with EWC++ over 450 learners 95 % of them 94-106 %, but 66 %
 * and 69 % once each (seed 14640068698097 kept 78 %, query sampling noise included, since removed by
 * evaluate), without it -240 to +57 % (how far task 2 got), on - off 39 to 280 points over 270.
 * The mean of 3 learners is judged: over 150 seeds on 86-101 % (mean 98.3, sd 1.9), off -112 to
 * +29 % (so 80 % fails without EWC++), on - off 69 to 212 points (mean 132, sd 26). */
Test(engine_learning, ewc_retains_the_first_task)
{
    const uint64_t seed = op_test_seed();
    printf("[engine_learning] seed %" PRIu64 "\n", seed);
    double kept_on = 0, kept_off = 0;
    for (uint64_t replicate = 0; replicate < REPLICATES; replicate++) {
        kept_on += kept_share(1, seed, replicate) / REPLICATES;
        kept_off += kept_share(0, seed, replicate) / REPLICATES;
    }
    printf("[engine_learning] share of task 1's gain kept after task 2, mean of %d learners: EWC++ on %.0f %%, "
           "off %.0f %%\n",
           REPLICATES, 100 * kept_on, 100 * kept_off);
    cr_assert_geq(kept_on, 0.8, "EWC++ on kept %.0f %% of task 1's gain", 100 * kept_on);
    cr_assert_gt(kept_on, kept_off + 0.3, "EWC++ on kept %.0f %% of task 1's gain, off %.0f %%", 100 * kept_on,
                 100 * kept_off);
}
