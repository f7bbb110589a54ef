/* Library-internal LoRA entry points (benchmarks and tests): not part of the public API. */
#ifndef SONA_CORE_LORA_INTERNAL_H
#define SONA_CORE_LORA_INTERNAL_H

#include "dispatch/ops.h"
#include "sona/lora.h"

/* sona_lora_create on a given backend (e.g. one CPU variant's table, or a GPU backend) instead
 * of the default one; be must stay valid for the handle's lifetime. */
sona_status sona_lora_create_on(const sona_lora_config *cfg, const sona_backend *be, sona_lora **out);

#endif /* SONA_CORE_LORA_INTERNAL_H */
