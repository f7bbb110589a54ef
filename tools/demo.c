/* `sona demo [trajectories] [seed]`: the engine at its DEFAULT preset learning a synthetic task
 * (tests/support/synth_task.h): queries from 4 clusters, each with a hidden target direction;
 * each response explores 4 variations of the adapted output, each scored (1 + cos(variation,
 * target)) / 2. Prints the learning curve of the adapted output's score against no learning,
 * then a second task on new queries, with and without EWC++. Nothing is tuned for the demo. */
#include "demo.h"

#include "support/synth_task.h"

#include <stdio.h>
#include <stdlib.h>

enum { DEMO_HIDDEN = 256, DEMO_CLUSTERS = 4, DEMO_EVAL = 300 };

static sona_engine *demo_engine(int ewc)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, DEMO_HIDDEN);
    c.ewc_enabled = ewc; /* the default is on; off only for the comparison */
    sona_engine *e = NULL;
    if (sona_engine_create(&c, &e) != SONA_OK)
        fprintf(stderr, "sona demo: %s\n", sona_last_error());
    return e;
}

/* The score on the same evaluation queries every time. */
static double score(const synth_task *t, sona_engine *e, uint64_t seed)
{
    sona_rng r;
    sona_rng_seed(&r, seed, 99);
    return synth_task_run(t, e, 0, DEMO_EVAL, &r, 0);
}

static void bar(double q)
{
    int n = (int)(q * 60.0 + 0.5);
    for (int i = 0; i < n && i < 60; i++)
        putchar('#');
    putchar('\n');
}

/* Task 1 for `total` trajectories then task 2 for as many; *kept1 and *gain2 as measured. */
static int switch_tasks(int ewc, const synth_task *t1, const synth_task *t2, uint32_t total, uint64_t seed,
                        double *kept1, double *gain2)
{
    sona_engine *e = demo_engine(ewc);
    if (!e)
        return 1;
    sona_rng r;
    sona_rng_seed(&r, seed, 1);
    const double b1 = score(t1, e, seed), b2 = score(t2, e, seed + 1);
    synth_task_run(t1, e, 0, total, &r, 1);
    const double l1 = score(t1, e, seed);
    synth_task_run(t2, e, 0, total, &r, 1);
    *kept1 = (score(t1, e, seed) - b1) / (l1 - b1);
    *gain2 = score(t2, e, seed + 1) - b2;
    sona_engine_destroy(e);
    return 0;
}

int sona_demo_main(int argc, char **argv)
{
    const uint32_t total = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 1000;
    const uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
    if (total < 100) {
        fprintf(stderr, "usage: sona demo [trajectories >= 100] [seed]\n");
        return 2;
    }
    synth_task t1, t2;
    if (synth_task_init(&t1, DEMO_HIDDEN, DEMO_CLUSTERS, seed, 0) ||
        synth_task_init(&t2, DEMO_HIDDEN, DEMO_CLUSTERS, seed, 7))
        return 1;
    sona_engine *e = demo_engine(1);
    if (!e)
        return 1;
    sona_rng r;
    sona_rng_seed(&r, seed, 1);
    const double base = score(&t1, e, seed);
    printf("synthetic task: hidden %u, %u query clusters, 4 explored variations a response;\n"
           "score = (1 + cos(adapted output, hidden target)) / 2, default preset\n",
           DEMO_HIDDEN, DEMO_CLUSTERS);
    printf("no learning      score %.3f  ", base);
    bar(base);
    double q = base;
    for (uint32_t done = 0; done < total; done += 100) {
        synth_task_run(&t1, e, 0, 100, &r, 1);
        q = score(&t1, e, seed);
        printf("after %5u      score %.3f  ", done + 100, q);
        bar(q);
    }
    sona_engine_destroy(e);
    printf("lift over no learning: %+.3f\n", q - base);
    double kept_on, gain_on, kept_off, gain_off;
    if (switch_tasks(1, &t1, &t2, total, seed, &kept_on, &gain_on) ||
        switch_tasks(0, &t1, &t2, total, seed, &kept_off, &gain_off))
        return 1;
    printf("then %u trajectories of a task 2 on new queries:\n"
           "  EWC++ on:  task 1 keeps %3.0f %% of its lift, task 2 lifts %+.3f\n"
           "  EWC++ off: task 1 keeps %3.0f %% of its lift, task 2 lifts %+.3f\n",
           total, 100 * kept_on, gain_on, 100 * kept_off, gain_off);
    synth_task_free(&t1);
    synth_task_free(&t2);
    return q > base ? 0 : 1;
}
