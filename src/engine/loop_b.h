/* SPDX-License-Identifier: MIT */
/* Loop B as the loop thread runs it (thread.c). */
#ifndef SONA_ENGINE_LOOP_B_H
#define SONA_ENGINE_LOOP_B_H

#include "engine/base.h"

/* A cycle on the queue's oldest trajectories: at least min_batch, at most max_batch (0: all).
 * SONA_E_EMPTY when fewer are queued. */
sona_status eng_loop_b_cycle(sona_engine *e, uint32_t min_batch, uint32_t max_batch);

#endif
