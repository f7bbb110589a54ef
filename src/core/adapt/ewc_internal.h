/* SPDX-License-Identifier: MIT */
/* What the engine's EWC++ glue (engine/ewc.c) calls beside the public sona/ewc.h. */
#ifndef SONA_CORE_ADAPT_EWC_INTERNAL_H
#define SONA_CORE_ADAPT_EWC_INTERNAL_H

#include "sona/ewc.h"

/* sona_ewc_update_fisher without its finiteness pass: for a caller that has checked g (all of
 * the state's parameter count, finite) already, as loop A's range check does. */
void sona_ewc_fold_fisher(sona_ewc *e, const float *g);

#endif
