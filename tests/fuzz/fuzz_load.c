/* SPDX-License-Identifier: MIT */
/* libFuzzer target: sona_load_buffer on arbitrary bytes must return a status (never crash,
 * leak or read out of bounds), and a refused file must leave the engine as it was. */
#include "fuzz_engine.h"

#include "../../src/common/serial.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Rewrites the header and section checksums of buf so that mutations reach the parser behind
 * them (the format is documented in src/engine/persist.c). */
static void fix_checksums(uint8_t *buf, size_t size)
{
    if (size < 24)
        return;
    uint32_t crc = sona_crc32(0, buf, 20);
    memcpy(buf + 20, &crc, 4);
    size_t pos = 24;
    while (size - pos >= 20) {
        uint64_t len;
        memcpy(&len, buf + pos + 8, 8);
        if (len > size - pos - 20)
            break;
        crc = sona_crc32(0, buf + pos + 20, len);
        memcpy(buf + pos + 16, &crc, 4);
        pos += 20 + len;
    }
}

static void load_once(sona_engine *e, const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static sona_engine *e;
    if (!e && !(e = fuzz_engine_create(SONA_STORAGE_Q8)))
        abort();
    load_once(e, data, size);
    uint8_t *fixed = malloc(size ? size : 1);
    if (!fixed)
        return 0;
    memcpy(fixed, data, size);
    fix_checksums(fixed, size);
    load_once(e, fixed, size);
    free(fixed);
    return 0;
}

static void load_once(sona_engine *e, const uint8_t *data, size_t size)
{
    sona_stats before, after;
    sona_get_stats(e, &before);
    const sona_status st = sona_load_buffer(e, data, size);
    sona_get_stats(e, &after);
    if (st != SONA_OK && (before.patterns != after.patterns || before.tenants != after.tenants ||
                          before.signals_accepted != after.signals_accepted ||
                          before.trajectories_queued != after.trajectories_queued ||
                          before.trajectories_recorded != after.trajectories_recorded ||
                          before.trajectories_dropped != after.trajectories_dropped))
        abort(); /* a refused file changed the engine */
    /* An accepted one keeps the counters exact (persist.c). */
    if (st == SONA_OK && after.trajectories_recorded != after.trajectories_processed + after.trajectories_queued)
        abort();
}
