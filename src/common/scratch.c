/* SPDX-License-Identifier: MIT */
#include "common/scratch.h"

#include <stdlib.h>

void *sona_scratch_get(sona_scratch *s, size_t bytes)
{
    if (bytes <= s->cap && s->mem)
        return s->mem;
    const size_t cap = (sona_scratch_grown(s->cap, bytes) + 63) & ~(size_t)63;
    void *mem = aligned_alloc(64, cap);
    if (!mem)
        return NULL;
    free(s->mem); /* contents are not kept: no copy */
    s->mem = mem;
    s->cap = cap;
    return mem;
}

void sona_scratch_done(sona_scratch *s, size_t used)
{
    if (!sona_scratch_keeps(s->cap, used))
        sona_scratch_free(s);
}

void sona_scratch_free(sona_scratch *s)
{
    free(s->mem);
    *s = (sona_scratch){0};
}
