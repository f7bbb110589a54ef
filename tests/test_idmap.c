/* SPDX-License-Identifier: MIT */
/* The id -> slot hash map behind the index and the bank: random inserts, replacements and
 * deletions (backward-shift deletion included) against a plain array. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/idmap.h"
#include "common/rng.h"
#include "common/slotmap.h"
#include "support/fill.h"

Test(idmap, matches_a_reference_under_random_operations)
{
    const uint64_t seed = test_seed();
    printf("[idmap] random operations seed %" PRIu64 "\n", seed);
    enum { KEYS = 3001 };
    static uint32_t ref[KEYS];
    for (uint32_t i = 0; i < KEYS; i++)
        ref[i] = SONA_IDMAP_EMPTY;
    sona_rng r;
    sona_rng_seed(&r, seed, 0);
    sona_idmap m = {0};
    uint32_t live = 0;
    cr_assert_eq(sona_idmap_get(&m, 5), SONA_IDMAP_EMPTY);
    cr_assert_eq(sona_idmap_del(&m, 5), 0);
    for (uint32_t step = 0; step < 60000; step++) {
        /* Keys spread far apart in the 64-bit space, and biased towards growth then churn. */
        const uint32_t k = sona_rng_below(&r, KEYS);
        const uint64_t key = (uint64_t)k * 0x9e3779b97f4a7c15ull;
        if (sona_rng_below(&r, 3) != 0 || step < 2000) {
            const uint32_t val = sona_rng_below(&r, 1u << 30);
            cr_assert_eq(sona_idmap_put(&m, key, val), SONA_OK);
            live += ref[k] == SONA_IDMAP_EMPTY;
            ref[k] = val;
        } else {
            cr_assert_eq(sona_idmap_del(&m, key), ref[k] != SONA_IDMAP_EMPTY);
            live -= ref[k] != SONA_IDMAP_EMPTY;
            ref[k] = SONA_IDMAP_EMPTY;
        }
        cr_assert_eq(m.count, live);
        if (step % 1000 == 0)
            for (uint32_t i = 0; i < KEYS; i++)
                cr_assert_eq(sona_idmap_get(&m, (uint64_t)i * 0x9e3779b97f4a7c15ull), ref[i],
                             "step %u key %u", step, i);
    }
    sona_idmap_free(&m);
}

/* The slot map (keys kept by the owner): random puts of new ids into fresh slots, moves of ids
 * to other slots, and deletions, against a plain array, with the owner's id array as keys. */
Test(idmap, slotmap_matches_a_reference_under_random_operations)
{
    const uint64_t seed = test_seed();
    printf("[idmap] slot map seed %" PRIu64 "\n", seed);
    enum { IDS = 2001, SLOTS = 70000 };
    static uint32_t ref[IDS];       /* id index -> slot */
    static uint64_t owner[SLOTS];   /* slot -> id, as an owner keeps it */
    for (uint32_t i = 0; i < IDS; i++)
        ref[i] = SONA_SLOTMAP_EMPTY;
    sona_rng r;
    sona_rng_seed(&r, seed, 1);
    sona_slotmap m = {0};
    uint32_t live = 0, next_slot = 0;
    cr_assert_eq(sona_slotmap_get(&m, 5, owner, sizeof *owner), SONA_SLOTMAP_EMPTY);
    cr_assert_eq(sona_slotmap_del(&m, 5, owner, sizeof *owner), 0);
    for (uint32_t step = 0; step < 60000; step++) {
        const uint32_t k = sona_rng_below(&r, IDS);
        const uint64_t id = (uint64_t)k * 0x9e3779b97f4a7c15ull + 1;
        if (sona_rng_below(&r, 3) != 0 || step < 2000) {
            const uint32_t slot = next_slot++; /* a fresh slot: insert, or move the id there */
            owner[slot] = id;
            cr_assert_eq(sona_slotmap_put(&m, id, slot, owner, sizeof *owner), SONA_OK);
            live += ref[k] == SONA_SLOTMAP_EMPTY;
            ref[k] = slot;
        } else {
            cr_assert_eq(sona_slotmap_del(&m, id, owner, sizeof *owner), ref[k] != SONA_SLOTMAP_EMPTY);
            live -= ref[k] != SONA_SLOTMAP_EMPTY;
            ref[k] = SONA_SLOTMAP_EMPTY;
        }
        cr_assert_eq(m.count, live);
        if (step % 1000 == 0)
            for (uint32_t i = 0; i < IDS; i++)
                cr_assert_eq(sona_slotmap_get(&m, (uint64_t)i * 0x9e3779b97f4a7c15ull + 1, owner, sizeof *owner),
                             ref[i], "step %u id %u", step, i);
    }
    sona_slotmap_free(&m);
}
