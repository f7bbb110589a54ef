/* SPDX-License-Identifier: MIT */
/* The CPU's work split (cpu/parallel.c): every part of every split runs exactly once, with the
 * split's part count, whether the splits follow each other at once (workers still spinning),
 * after a pause (workers asleep), or come from several threads at a time (one uses the pool,
 * the others threads of their own); every chunk of a chunked split runs exactly once. Run under ThreadSanitizer by scripts/test.sh (label
 * "concurrent"). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cpu/cpu.h"
#include "support/concurrent_test.h"

#include <stdint.h>

enum { MAX_PARTS = 8, SPLITS = 400, CALLERS = 4 };

/* One split's record: each part writes its own slot (parts write disjoint memory). */
typedef struct split {
    uint32_t parts;
    uint32_t runs[MAX_PARTS];  /* times each part ran */
    uint32_t seen[MAX_PARTS];  /* the part count each run was given */
} split;

static void part_fn(void *arg, uint32_t part, uint32_t parts)
{
    split *s = arg;
    if (part < MAX_PARTS) {
        s->runs[part]++;
        s->seen[part] = parts;
    }
}

/* Runs `count` splits of 2 .. MAX_PARTS parts; returns how many went wrong. */
static uint32_t run_splits(uint32_t count, uint32_t first, int pause_every)
{
    uint32_t wrong = 0;
    for (uint32_t i = 0; i < count; i++) {
        split s;
        memset(&s, 0, sizeof s);
        s.parts = 2 + (first + i) % (MAX_PARTS - 1);
        sona_cpu_parallel(part_fn, &s, s.parts);
        for (uint32_t p = 0; p < MAX_PARTS; p++) {
            const uint32_t want = p < s.parts ? 1 : 0;
            if (s.runs[p] != want || (want && s.seen[p] != s.parts)) {
                if (wrong++ < 3)
                    fprintf(stderr, "[parallel] split of %u: part %u ran %u times with parts = %u\n", s.parts, p,
                            s.runs[p], s.seen[p]);
            }
        }
        if (pause_every && i % pause_every == 0) {
            const struct timespec pause = {0, 2000000}; /* 2 ms: past the workers' spin */
            nanosleep(&pause, NULL);
        }
    }
    return wrong;
}

CONCURRENT_TEST(concurrent_parallel, every_part_runs_once_back_to_back_and_after_sleeps)
{
    const uint32_t wrong = run_splits(SPLITS, 0, 0) + run_splits(40, 3, 1);
    CHECK(wrong == 0, "%u parts ran other than once", wrong);
}

static void *caller(void *p)
{
    atomic_uint *wrong = p;
    atomic_fetch_add(wrong, run_splits(SPLITS / 4, 0, 0));
    return NULL;
}

CONCURRENT_TEST(concurrent_parallel, every_part_runs_once_with_callers_at_once)
{
    atomic_uint wrong = 0;
    pthread_t t[CALLERS];
    int started[CALLERS];
    for (int i = 0; i < CALLERS; i++)
        started[i] = pthread_create(&t[i], NULL, caller, &wrong) == 0;
    for (int i = 0; i < CALLERS; i++) {
        REQUIRE(started[i], "caller %d did not start", i);
        pthread_join(t[i], NULL);
    }
    CHECK(atomic_load(&wrong) == 0, "%u parts ran other than once", atomic_load(&wrong));
}

/* sona_cpu_parallel_chunks: every chunk runs once, whatever the chunk and part counts. */
enum { MAX_CHUNKS = 97 };
typedef struct chunks {
    uint32_t runs[MAX_CHUNKS];
} chunks;

static void chunk_fn(void *arg, uint32_t chunk)
{
    ((chunks *)arg)->runs[chunk]++;
}

CONCURRENT_TEST(concurrent_parallel, every_chunk_runs_once)
{
    static const uint32_t counts[] = {1, 2, 3, 8, 33, MAX_CHUNKS};
    uint32_t wrong = 0;
    for (int rep = 0; rep < 50; rep++)
        for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++)
            for (uint32_t parts = 1; parts <= MAX_PARTS; parts++) {
                chunks ch;
                memset(&ch, 0, sizeof ch);
                sona_cpu_parallel_chunks(chunk_fn, &ch, counts[c], parts);
                for (uint32_t i = 0; i < MAX_CHUNKS; i++)
                    if (ch.runs[i] != (i < counts[c] ? 1u : 0u) && wrong++ < 3)
                        fprintf(stderr, "[parallel] %u chunks over %u parts: chunk %u ran %u times\n", counts[c],
                                parts, i, ch.runs[i]);
            }
    CHECK(wrong == 0, "%u chunks ran other than once", wrong);
}

#ifndef SONA_TEST_STANDALONE /* ThreadSanitizer does not follow a fork of a threaded process */
#include <sys/wait.h>
#include <unistd.h>

/* A child of fork has none of its parent's workers; its splits still run every part. */
CONCURRENT_TEST(concurrent_parallel, splits_work_in_a_child_of_fork)
{
    CHECK(run_splits(10, 0, 0) == 0, "before the fork");
    const pid_t child = fork();
    REQUIRE(child >= 0, "fork failed");
    if (child == 0)
        _exit(run_splits(50, 1, 0) == 0 ? 0 : 1);
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child, "waitpid failed");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child's splits went wrong (status %d)", status);
    CHECK(run_splits(10, 2, 0) == 0, "after the fork");
}
#endif

CONCURRENT_MAIN(concurrent_parallel_every_part_runs_once_back_to_back_and_after_sleeps,
                concurrent_parallel_every_part_runs_once_with_callers_at_once,
                concurrent_parallel_every_chunk_runs_once)
