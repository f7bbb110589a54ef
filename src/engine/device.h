/* SPDX-License-Identifier: MIT */
/* What engine.c asks the batched-apply device (device.c) beyond base.h's eng_device_*: whether a
 * batch pays on it, by the dispatch layer's cost model (dispatch/cost.h). */
#ifndef SONA_ENGINE_DEVICE_H
#define SONA_ENGINE_DEVICE_H

#include "engine/base.h"

/* Whether a lora_apply of n rows (hidden, rank, `adapters` distinct adapters at most) costs less
 * on d's accelerator than on the CPU, by the cost model; SONA_BACKEND, when set, decides instead.
 * d must be ready (eng_device_ready). */
int eng_device_pays(eng_device *d, uint32_t n, uint32_t hidden, uint32_t rank, uint32_t adapters);

#endif /* SONA_ENGINE_DEVICE_H */
