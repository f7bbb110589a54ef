/* SPDX-License-Identifier: MIT */
/* `sona demo [trajectories] [seed]`: the engine at its DEFAULT preset learning a synthetic task
 * (tests/support/synth_task.h): queries from 4 clusters, each with a hidden target direction;
 * each response explores 4 variations of the adapted output, each scored (1 + cos(variation,
 * target)) / 2. Prints the learning curve of the adapted output's score against no learning,
 * then a second task on new queries, with and without EWC++. Nothing is tuned for the demo. */
#include "demo.h"

#include "cli_args.h"
#include "support/synth_task.h"

#include <stdint.h>
#include <stdio.h>

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

static void demo_usage(FILE *f)
{
    fprintf(f, "usage: sona demo [TRAJECTORIES] [SEED]\n"
               "  the engine at its default preset learning a synthetic task: the learning curve\n"
               "  every 100 trajectories, then a second task with and without EWC++\n"
               "  TRAJECTORIES  how many to learn from, 100 to 1000000 (default 1000)\n"
               "  SEED          the task's seed (default 1)\n"
               "  -h, --help    this text\n");
}

#define DEMO_MAX_TRAJECTORIES 1000000u

/* Parses [TRAJECTORIES] [SEED]; 0 to run, 1 after --help, -1 on a bad argument (reported). */
static int demo_args(int argc, char **argv, uint32_t *total, uint64_t *seed)
{
    static const cli_option opts[] = {{"help", 'h', 0, 0}, {NULL, 0, 0, 0}};
    cli_parser p;
    cli_parser_init(&p, "sona demo", argc, argv);
    int operands = 0;
    for (int id; (id = cli_next(&p, opts)) != CLI_END;) {
        if (id == 0) {
            demo_usage(stdout);
            return 1;
        }
        if (id != CLI_OPERAND)
            return -1;
        unsigned long long v;
        if (operands == 0) {
            /* At most DEMO_MAX_TRAJECTORIES: about a minute, and far from where the uint32_t
             * progress counter would wrap (4294967295 never ended). */
            if (cli_parse_u64(p.value, &v) || v < 100 || v > DEMO_MAX_TRAJECTORIES) {
                fprintf(stderr, "sona demo: TRAJECTORIES must be a whole number from 100 to %u, not '%s'\n",
                        DEMO_MAX_TRAJECTORIES, p.value);
                return -1;
            }
            *total = (uint32_t)v;
        } else if (operands == 1) {
            if (cli_parse_u64(p.value, &v)) {
                fprintf(stderr, "sona demo: SEED must be a whole number, not '%s'\n", p.value);
                return -1;
            }
            *seed = v;
        } else {
            cli_unexpected(&p, p.value);
            return -1;
        }
        operands++;
    }
    return 0;
}

int sona_demo_main(int argc, char **argv)
{
    uint32_t total = 1000;
    uint64_t seed = 1;
    const int parsed = demo_args(argc, argv, &total, &seed);
    if (parsed != 0) {
        if (parsed < 0)
            fprintf(stderr, "try 'sona demo --help'\n");
        return parsed > 0 ? 0 : 2;
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
