/* SPDX-License-Identifier: MIT */
/* The monotonic clock in microseconds (latencies, timestamps). */
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

#endif /* SONA_COMMON_CLOCK_H */
