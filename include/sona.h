/* SPDX-License-Identifier: MIT */
/* libsona: SONA (Self-Optimizing Neural Architecture) for LLM inference servers.
 * One include for the whole public API. See docs/architecture.md for the architecture. */
#ifndef SONA_H
#define SONA_H

#include "sona/common.h"
#include "sona/system.h"
#include "sona/lora.h"
#include "sona/trajectory.h"
#include "sona/trajectory_buffer.h"
#include "sona/signal.h"
#include "sona/ewc.h"
#include "sona/index.h"
#include "sona/bank.h"
#include "sona/engine.h"
#include "sona/comm.h"

#endif /* SONA_H */
