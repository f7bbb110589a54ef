/* SPDX-License-Identifier: MIT */
/* The checkpoint the loop thread writes after loop C (thread.c); sona_save and sona_load are
 * the public side of persist.c. */
#ifndef SONA_ENGINE_PERSIST_H
#define SONA_ENGINE_PERSIST_H

#include "engine/base.h"

/* The learned state written to state_path: serialised under cycle_mu, written without it, so
 * loop B does not wait on the disk. */
sona_status eng_checkpoint(sona_engine *e);

#endif
