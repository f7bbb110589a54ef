/* SPDX-License-Identifier: MIT */
/* What tests and benchmarks look at or set up inside an engine, each under the lock that guards
 * it, so that none of them touches struct sona_engine. Library-internal: not the public API. */
#ifndef SONA_ENGINE_INSPECT_H
#define SONA_ENGINE_INSPECT_H

#include "backend/ops.h"
#include "sona/bank.h"
#include "sona/engine.h"
#include "sona/ewc.h"

/* The engine's pattern bank, held still: no loop B or C cycle and no load changes or replaces
 * it until eng_inspect_bank_end. The caller may read it, or restore patterns into it (set-up). */
sona_bank *eng_inspect_bank_begin(sona_engine *e);
void eng_inspect_bank_end(sona_engine *e);
/* Replaces the engine's bank by `bank` (of the engine's width; the engine owns it from now on and
 * destroys the old one), under the cycle lock and the readers' lock, as a load does. */
void eng_inspect_replace_bank(sona_engine *e, sona_bank *bank);
/* EWC++ task snapshots that tenant's Micro-LoRA holds now (-1: the Base-LoRA's); 0 without
 * EWC++ or for a tenant that is not live. */
uint32_t eng_inspect_ewc_tasks(sona_engine *e, int32_t tenant);
/* The Base-LoRA's EWC++ boundary detector (SONA_E_STATE without EWC++). */
sona_status eng_inspect_base_detector(sona_engine *e, sona_ewc_detector *d);
/* Base-LoRA's training weights as the op tables hold them: A and Bt, base_layers x base_rank x
 * hidden floats each (either may be NULL), read under the cycle lock. */
sona_status eng_inspect_base_weights(sona_engine *e, float *A, float *Bt);
/* The backend Base-LoRA's training weights live on (eng_base_follow_device), under the cycle
 * lock. */
const sona_backend *eng_inspect_base_backend(sona_engine *e);
/* Base-LoRA's EWC++ state under the cycle lock: the running Fisher, the tasks' Fisher sum (0s
 * with no task), task 0's anchor, the task count (each pointer may be NULL; 2 x base_layers x
 * base_rank x hidden floats each). SONA_E_STATE without EWC++. */
sona_status eng_inspect_base_ewc(sona_engine *e, float *running, float *fisher_sum,
                                 float *theta0, uint32_t *tasks);
/* Ends Base-LoRA's EWC++ task now (as loop C's consolidation does): a task snapshot of the
 * weights and the running Fisher. SONA_E_STATE without EWC++. */
sona_status eng_inspect_base_end_task(sona_engine *e);
/* Benchmarks: Base-LoRA's weights replaced by A and Bt (the layout above) and published, under
 * the cycle lock; the import's status. */
sona_status eng_inspect_set_base_weights(sona_engine *e, const float *A, const float *Bt);
/* The same for a tenant's Micro-LoRA (micro_rank x hidden each), under its mutex;
 * SONA_E_NOT_FOUND when the tenant is not live. */
sona_status eng_inspect_tenant_weights(sona_engine *e, int32_t tenant, float *A, float *Bt);
/* A tenant's EWC++ state as eng_inspect_base_ewc's (2 x micro_rank x hidden floats each), and
 * its task ended now, under its mutex. SONA_E_NOT_FOUND when the tenant is not live,
 * SONA_E_STATE without EWC++. */
sona_status eng_inspect_tenant_ewc(sona_engine *e, int32_t tenant, float *running,
                                   float *fisher_sum, float *theta0, uint32_t *tasks);
sona_status eng_inspect_tenant_end_task(sona_engine *e, int32_t tenant);

/* Fault injection: accumulates the signal (x, delta, weight w) into tenant's training copy and
 * runs the update loop A would run (the training step, the output bound, the publish), under the
 * tenant's lock. Returns the accumulate's or the update's status; *pending gets the gradients
 * left pending after it. */
sona_status eng_inspect_train(sona_engine *e, int32_t tenant, const float *x, const float *delta, float w,
                              uint64_t *pending);

/* Test hook: loop B calls hook(arg) in every cycle after it drained its batch and before it
 * learns from it, holding the cycle lock (NULL: none). */
void eng_inspect_cycle_hook(sona_engine *e, void (*hook)(void *), void *arg);

/* Loop A's thread (background_thread on): the trajectories handed to it so far, and the steps
 * run in their callers' threads because its queue was full. Returns 0 (and sets nothing) when
 * the engine has no such thread. Defined with the thread, in request.c. */
int eng_inspect_loop_a(sona_engine *e, uint64_t *handed, uint64_t *in_callers);
/* Test hook: loop A's thread calls hook(arg) before each step it runs, holding no lock (NULL:
 * none); a hook that blocks holds the thread, so that its queue fills. */
void eng_inspect_loop_a_hook(sona_engine *e, void (*hook)(void *), void *arg);

#endif
