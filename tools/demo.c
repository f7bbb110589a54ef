/* `sona demo [trajectories] [seed]`: queries from 3 clusters, each with a hidden target
 * direction; the response quality is the cosine of the adapted output with its cluster's
 * target, and that quality is the feedback. Prints the learning curve against the no-learning
 * baseline, then a task switch with and without EWC++. */
#include "demo.h"

#include "support/synth_task.h"

#include <stdio.h>
#include <stdlib.h>

enum { DEMO_HIDDEN = 64, DEMO_CLUSTERS = 3 };

static sona_engine *demo_engine(int ewc)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, DEMO_HIDDEN);
    c.background_thread = 0;
    c.micro_learning_rate = 0.4f;
    c.ewc_enabled = ewc;
    c.task_shift_threshold = 1e6f;
    sona_engine *e = NULL;
    if (sona_engine_create(&c, &e) != SONA_OK)
        fprintf(stderr, "sona demo: %s\n", sona_last_error());
    return e;
}

static void bar(double q)
{
    int n = (int)((q + 1.0) * 20.0 + 0.5);
    for (int i = 0; i < n && i < 40; i++)
        putchar('#');
    putchar('\n');
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
    if (synth_task_init(&t1, DEMO_HIDDEN, DEMO_CLUSTERS, seed, 0) || synth_task_retarget(&t2, &t1, seed, 7))
        return 1;
    for (uint32_t i = 0; i < DEMO_HIDDEN * DEMO_CLUSTERS; i++)
        t2.targets[i] = -t1.targets[i];
    sona_engine *e = demo_engine(1);
    if (!e)
        return 1;
    sona_rng r;
    sona_rng_seed(&r, seed, 1);
    const double base = synth_task_run(&t1, e, 0, 300, &r, 0);
    printf("synthetic task: hidden %u, %u clusters, quality = cos(adapted output, hidden target)\n",
           DEMO_HIDDEN, DEMO_CLUSTERS);
    printf("no learning    mean quality %+.3f  ", base);
    bar(base);
    for (uint32_t done = 0; done < total; done += 100) {
        const double q = synth_task_run(&t1, e, 0, 100, &r, 1);
        printf("after %5u    mean quality %+.3f  ", done + 100, q);
        bar(q);
    }
    const double learned = synth_task_run(&t1, e, 0, 300, &r, 0);
    printf("task 1 learned: %+.3f (no-learning baseline %+.3f)\n", learned, base);
    sona_deep_cycle(e); /* consolidates task 1 (EWC++) */
    synth_task_run(&t2, e, 0, total, &r, 1);
    const double kept_on = synth_task_run(&t1, e, 0, 300, &r, 0);
    sona_engine_destroy(e);
    if (!(e = demo_engine(0)))
        return 1;
    sona_rng_seed(&r, seed, 1);
    synth_task_run(&t1, e, 0, total, &r, 1);
    sona_deep_cycle(e);
    synth_task_run(&t2, e, 0, total, &r, 1);
    const double kept_off = synth_task_run(&t1, e, 0, 300, &r, 0);
    sona_engine_destroy(e);
    printf("after %u trajectories of an opposite task 2, task 1 quality: EWC++ on %+.3f, off %+.3f\n",
           total, kept_on, kept_off);
    synth_task_free(&t1);
    synth_task_free(&t2);
    return learned > base ? 0 : 1;
}
