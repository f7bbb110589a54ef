/* SPDX-License-Identifier: MIT */
/* The monotonic clock in microseconds (latencies, timestamps) or nanoseconds, and deadlines for
 * timed waits. */
#ifndef SONA_COMMON_CLOCK_H
#define SONA_COMMON_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t sona_monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* The same in nanoseconds, for timings of microseconds (a calibration copy, a spin's limit). */
static inline uint64_t sona_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A clock's reading in seconds (CLOCK_MONOTONIC for wall time, CLOCK_PROCESS_CPUTIME_ID or
 * CLOCK_THREAD_CPUTIME_ID for CPU time). */
static inline double sona_clock_s(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The time `us` microseconds from now on `clock`, as the absolute deadline pthread_cond_timedwait
 * takes (CLOCK_REALTIME for a default condition variable). */
static inline struct timespec sona_deadline_after_us(clockid_t clock, uint64_t us)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    ts.tv_sec += (time_t)(us / 1000000u);
    ts.tv_nsec += (long)(us % 1000000u) * 1000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

#endif /* SONA_COMMON_CLOCK_H */
