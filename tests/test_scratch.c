/* SPDX-License-Identifier: MIT */
/* Working memory kept between runs (common/scratch.h): reused while big enough, grown by half
 * again at least, released after a run that needed less than half of it. */
#include <criterion/criterion.h>
#include <stdint.h>

#include "common/scratch.h"

Test(scratch, kept_while_at_most_twice_the_last_need)
{
    sona_scratch s = {0};
    char *first = sona_scratch_get(&s, 1000);
    cr_assert_not_null(first);
    cr_assert_eq((uintptr_t)first % 64, 0);
    cr_assert_geq(s.cap, 1000);
    sona_scratch_done(&s, 1000);
    cr_assert_eq(sona_scratch_get(&s, 600), first, "a smaller run reuses the block");
    sona_scratch_done(&s, 600);
    cr_assert_eq(s.mem, first, "kept: %zu bytes after a run of 600", s.cap);

    /* A little more than the block: it grows by half at least, so the next bit more fits. */
    const size_t before = s.cap;
    cr_assert_not_null(sona_scratch_get(&s, before + 8));
    cr_assert_geq(s.cap, before + before / 2);
    sona_scratch_done(&s, before + 8);
    cr_assert_not_null(s.mem);

    /* An occasional large run, then an ordinary one: the large block goes. */
    cr_assert_not_null(sona_scratch_get(&s, 1u << 24));
    sona_scratch_done(&s, 1u << 24);
    cr_assert_not_null(s.mem, "kept after the run that needed it");
    cr_assert_not_null(sona_scratch_get(&s, 1000));
    sona_scratch_done(&s, 1000);
    cr_assert_null(s.mem, "released after a run that needed under half of it");
    cr_assert_eq(s.cap, 0);
    sona_scratch_free(&s);
}

Test(scratch, layout_offsets_on_cache_lines)
{
    size_t total = 0;
    cr_assert_eq(sona_scratch_push(&total, 3), 0);
    cr_assert_eq(sona_scratch_push(&total, 64), 64);
    cr_assert_eq(sona_scratch_push(&total, 65), 128);
    cr_assert_eq(sona_scratch_push(&total, 0), 256);
    cr_assert_eq(total, 256);
}
