/* SPDX-License-Identifier: MIT */
/* The engine configuration shared by the loader fuzz target and its seed maker: a seed file
 * only reaches deep into the loader when its shape matches the fuzzed engine's. The step storage
 * is not part of the shape (a restored trajectory keeps its own): the seed maker varies it. */
#ifndef SONA_FUZZ_ENGINE_H
#define SONA_FUZZ_ENGINE_H

#include <sona.h>

static inline sona_engine *fuzz_engine_create(sona_storage step_storage)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_EDGE, 16);
    c.max_tasks = 2;
    c.ewc_enabled = 1;
    c.clusters_per_cycle = 3;
    c.step_storage = step_storage;
    sona_engine *e = NULL;
    return sona_engine_create(&c, &e) == SONA_OK ? e : NULL;
}

#endif
