/* SPDX-License-Identifier: MIT */
/* The accelerator a bank's extraction may cluster on. Each extraction runs its k-means on
 * whichever of the CPU and this device the dispatch layer's cost model says finishes first for
 * its shape (sona_route: SONA_BACKEND's choice first); X goes up once, the small results come
 * back each step (core/patterns/kmeans.c). A bank made while SONA_BACKEND names a device starts
 * with that one; the engine, which picks its accelerator lazily, hands over its own before each
 * extraction. */
#ifndef SONA_CORE_PATTERNS_BANK_DEVICE_H
#define SONA_CORE_PATTERNS_BANK_DEVICE_H

#include "backend/ops.h"
#include "sona/bank.h"

/* device: an accelerator (not host memory), or NULL for the CPU only. */
void sona_bank_set_device(sona_bank *bank, const sona_backend *device);

#endif
