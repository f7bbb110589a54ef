/* SPDX-License-Identifier: MIT */
/* The presets' table (presets.c), visible to the test that checks every entry names a field
 * and takes its value. */
#ifndef SONA_ENGINE_PRESETS_H
#define SONA_ENGINE_PRESETS_H

#include "sona/engine.h"

#include <stddef.h>

/* A preset's value of one field, where it differs from the default preset. */
typedef struct eng_preset_override {
    sona_preset preset;
    const char *field; /* a sona_engine_config_set name */
    double value;
} eng_preset_override;

extern const eng_preset_override eng_preset_overrides[];
extern const size_t eng_preset_override_count;

#endif
