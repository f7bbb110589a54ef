/* SPDX-License-Identifier: MIT */
/* Writes a valid state file of the fuzzed engine's shape to argv[1], the fuzz target's seed
 * corpus: learned tenants, Base-LoRA, EWC++ tasks and detectors, patterns with the bank's
 * counters, dream visits, query critics, and queued trajectories in every storage format. An F32 engine learns and queues some, an F16 engine loads its file and queues
 * more, then the fuzzed engine's (Q8) loads that and queues more: restored trajectories keep
 * their format. */
#include "fuzz_engine.h"

#include "../../src/common/rng.h"

#include <stdio.h>

/* n requests of 3 steps, alternating tenants 0 and `tenant`. */
static int requests(sona_engine *e, int32_t tenant, sona_rng *r, int n)
{
    float x[16], a[16];
    for (int i = 0; i < n; i++) {
        for (int h = 0; h < 16; h++)
            x[h] = sona_rng_normal(r);
        sona_request *req;
        if (sona_request_begin(e, i % 2 ? tenant : 0, x, &req) != SONA_OK)
            return 0;
        const float quality = sona_rng_uniform(r);
        for (uint32_t s = 0; s < 3; s++) {
            for (int h = 0; h < 16; h++)
                a[h] = sona_rng_normal(r);
            /* Every third request quality-only (steps rewarded alike): the tenants get critics. */
            sona_request_step(req, s, a, NULL, 0, i % 3 == 2 ? quality : sona_rng_uniform(r));
        }
        sona_request_end(req, quality);
    }
    return 1;
}

static int fail(sona_engine *e)
{
    fprintf(stderr, "fuzz_make_seed: %s\n", e ? sona_engine_last_error(e) : sona_last_error());
    sona_engine_destroy(e);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_make_seed FILE\n");
        return 2;
    }
    sona_rng r;
    sona_rng_seed(&r, 1, 0);
    sona_engine *e = fuzz_engine_create(SONA_STORAGE_F32);
    int32_t tenant;
    if (!e || sona_tenant_create(e, &tenant) != SONA_OK || !requests(e, tenant, &r, 40) ||
        sona_force_learn(e) != SONA_OK || sona_deep_cycle(e) != SONA_OK || !requests(e, tenant, &r, 3) ||
        sona_save(e, argv[1]) != SONA_OK)
        return fail(e);
    sona_engine_destroy(e);
    const sona_storage then[] = {SONA_STORAGE_F16, SONA_STORAGE_Q8};
    for (int i = 0; i < 2; i++) {
        if (!(e = fuzz_engine_create(then[i])) || sona_load(e, argv[1]) != SONA_OK ||
            !requests(e, tenant, &r, 3) || sona_save(e, argv[1]) != SONA_OK)
            return fail(e);
        sona_engine_destroy(e);
    }
    return 0;
}
