/* SPDX-License-Identifier: MIT */
/* Loop C as the loop thread runs it (thread.c). */
#ifndef SONA_ENGINE_LOOP_C_H
#define SONA_ENGINE_LOOP_C_H

#include "engine/base.h"

/* Dreams replayed into Base-LoRA, Phi, the bank consolidated, EWC++ tasks consolidated. */
sona_status eng_loop_c_cycle(sona_engine *e);

#endif
