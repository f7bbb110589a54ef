/* SPDX-License-Identifier: MIT */
/* One signal builder shared by 4 threads: counters stay exact and the baseline, an EMA updated
 * by compare-and-swap, converges to the common quality. Run under ThreadSanitizer by
 * scripts/test.sh. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>

#include "support/concurrent_test.h"
#include <sona.h>

enum { THREADS = 4, PER_THREAD = 20000, DIM = 16 };

typedef struct worker {
    sona_signal_builder *sb;
    int index;
    unsigned failures;
} worker;

static void *work(void *p)
{
    worker *wk = p;
    float q[DIM], a[2 * DIM], x[DIM], d[DIM], w;
    for (int j = 0; j < DIM; j++) {
        q[j] = (float)(j + wk->index);
        a[j] = 1.0f;
        a[DIM + j] = (float)(j % 3);
    }
    const float rewards[2] = {0.25f, 0.75f};
    for (int i = 0; i < PER_THREAD; i++) {
        /* Every 10th call is refused (NaN quality): counted, never learned. */
        const float quality = i % 10 == 9 ? NAN : 0.6f;
        const sona_status st = sona_signal_compute(wk->sb, q, DIM, a, rewards, 2, quality, x, d, &w);
        if (st != (i % 10 == 9 ? SONA_E_NONFINITE : SONA_OK))
            wk->failures++;
    }
    return NULL;
}

CONCURRENT_TEST(concurrent_signal, shared_builder_counts_exactly)
{
    sona_signal_config cfg;
    sona_signal_config_default(&cfg);
    sona_signal_builder *sb = NULL;
    REQUIRE(sona_signal_builder_create(&cfg, &sb) == SONA_OK, "create: %s", sona_last_error());
    pthread_t th[THREADS];
    worker wk[THREADS];
    for (int i = 0; i < THREADS; i++) {
        wk[i] = (worker){sb, i, 0};
        REQUIRE(pthread_create(&th[i], NULL, work, &wk[i]) == 0, "pthread_create failed");
    }
    unsigned failures = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        failures += wk[i].failures;
    }
    sona_signal_stats st;
    sona_signal_builder_get_stats(sb, &st);
    printf("[concurrent] signals: accepted %llu rejected %llu baseline %g\n", (unsigned long long)st.accepted,
           (unsigned long long)st.rejected, (double)st.baseline);
    CHECK(failures == 0, "%u calls returned an unexpected status", failures);
    CHECK(st.accepted == THREADS * PER_THREAD / 10 * 9, "accepted %llu", (unsigned long long)st.accepted);
    CHECK(st.rejected == THREADS * PER_THREAD / 10, "rejected %llu", (unsigned long long)st.rejected);
    CHECK(fabsf(st.baseline - 0.6f) < 1e-6f, "baseline %g, every quality was 0.6", (double)st.baseline);
    sona_signal_builder_destroy(sb);
}

CONCURRENT_MAIN(concurrent_signal_shared_builder_counts_exactly)
