/* SPDX-License-Identifier: MIT */
/* Working memory kept between the runs of a recurring job (loop B's cycle, the bank's extraction,
 * k-means): a block above glibc's mmap threshold is returned to the kernel when freed, so a job
 * that allocates it afresh each run page-faults every page of it in again (about 1 900 faults a
 * loop B cycle at hidden 768 before these blocks were kept).
 *
 * Bound: after each run the block is kept only while it is at most twice what that run needed,
 * so it never holds more than twice the last run's working set, and the memory of an occasional
 * large run is released by the next ordinary one. */
#ifndef SONA_COMMON_SCRATCH_H
#define SONA_COMMON_SCRATCH_H

#include <stddef.h>

typedef struct sona_scratch {
    void *mem;
    size_t cap; /* bytes */
} sona_scratch;

/* The keeping rule, for owners that size their buffers themselves: keep cap bytes after a run
 * that needed used. */
static inline int sona_scratch_keeps(size_t cap, size_t used)
{
    return cap <= used || cap - used <= used;
}

/* The capacity to grow cap to when need is more: half as much again at least, so that runs which
 * grow a little at a time (batches of 1 000, then 1 030, ...) reallocate once, not each time,
 * and a grown block stays within the keeping rule for runs a third smaller. */
static inline size_t sona_scratch_grown(size_t cap, size_t need)
{
    const size_t more = cap + cap / 2;
    return more > need ? more : need;
}

/* Appends an array of bytes to a layout of *total bytes and returns its offset: arrays start on
 * 64-byte boundaries (cache lines; the widest vector loads). */
static inline size_t sona_scratch_push(size_t *total, size_t bytes)
{
    const size_t at = *total;
    *total = at + ((bytes + 63) & ~(size_t)63);
    return at;
}

/* At least bytes of memory, 64-byte aligned, contents unspecified (those of an earlier run, or
 * none); NULL when out of memory (the block it had is kept). */
void *sona_scratch_get(sona_scratch *s, size_t bytes);
/* Ends a run that needed used bytes: frees the block unless sona_scratch_keeps it. */
void sona_scratch_done(sona_scratch *s, size_t used);
void sona_scratch_free(sona_scratch *s);

#endif
