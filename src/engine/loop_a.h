/* SPDX-License-Identifier: MIT */
/* Loop A's queue and thread (request.c), made and ended with the loop thread (thread.c). */
#ifndef SONA_ENGINE_LOOP_A_H
#define SONA_ENGINE_LOOP_A_H

#include "engine/base.h"

/* Sets up loop A's queue when background_thread is on (SONA_E_NOMEM when it cannot); its
 * thread starts with the first hand-over. */
sona_status eng_loop_a_create(sona_engine *e);
/* Ends the thread once it has learned everything handed over, and frees the queue. No-op when
 * there is none. */
void eng_loop_a_destroy(sona_engine *e);

#endif
