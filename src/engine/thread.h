/* SPDX-License-Identifier: MIT */
/* The engine's loop thread, started and stopped by the handle (engine.c). */
#ifndef SONA_ENGINE_THREAD_H
#define SONA_ENGINE_THREAD_H

#include "engine/base.h"

/* Starts the loops' clocks, and the loop thread when background_thread is on. */
sona_status eng_threads_start(sona_engine *e);
void eng_threads_stop(sona_engine *e);

#endif
