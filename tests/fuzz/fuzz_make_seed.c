/* Writes a valid state file of the fuzzed engine's shape (learned tenants, Base-LoRA, EWC++
 * tasks, patterns) to argv[1]: the fuzz target's seed corpus. */
#include "fuzz_engine.h"

#include "../../src/core/rng.h"

#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_make_seed FILE\n");
        return 2;
    }
    sona_engine *e = fuzz_engine_create();
    int32_t tenant;
    if (!e || sona_tenant_create(e, &tenant) != SONA_OK)
        return 1;
    sona_rng r;
    sona_rng_seed(&r, 1, 0);
    float x[16], a[16];
    for (int i = 0; i < 40; i++) {
        for (int h = 0; h < 16; h++)
            x[h] = sona_rng_normal(&r);
        sona_request *req;
        if (sona_request_begin(e, i % 2 ? tenant : 0, x, &req) != SONA_OK)
            return 1;
        for (uint32_t s = 0; s < 3; s++) {
            for (int h = 0; h < 16; h++)
                a[h] = sona_rng_normal(&r);
            sona_request_step(req, s, a, NULL, 0, sona_rng_uniform(&r));
        }
        sona_request_end(req, sona_rng_uniform(&r));
    }
    if (sona_force_learn(e) != SONA_OK || sona_deep_cycle(e) != SONA_OK || sona_save(e, argv[1]) != SONA_OK) {
        fprintf(stderr, "fuzz_make_seed: %s\n", sona_engine_last_error(e));
        return 1;
    }
    sona_engine_destroy(e);
    return 0;
}
