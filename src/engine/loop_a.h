/* SPDX-License-Identifier: MIT */
/* Loop A's thread (request.c), started and stopped with the loop thread (thread.c). */
#ifndef SONA_ENGINE_LOOP_A_H
#define SONA_ENGINE_LOOP_A_H

#include "engine/base.h"

/* Sets up loop A's thread when background_thread is on (SONA_E_NOMEM when it cannot); the
 * thread itself starts with the first hand-over. */
sona_status eng_loop_a_start(sona_engine *e);
/* Learns from everything handed over, then ends the thread. No-op when there is none. */
void eng_loop_a_stop(sona_engine *e);

#endif
