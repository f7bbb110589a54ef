/* SPDX-License-Identifier: MIT */
/* The engine's EWC++ for one adapter set (ewc.c): the set's A and Bt as one parameter vector over
 * sona_ewc, with the engine's task-shift detector. Needs no engine state: the engine's parts and
 * the module's own test use it alike. */
#ifndef SONA_ENGINE_EWC_H
#define SONA_ENGINE_EWC_H

#include "sona/engine.h"
#include "sona/ewc.h"
#include "sona/lora.h"

/* A pending gradient value beyond this is refused at apply (and dropped): its square, folded
 * into EWC++'s Fisher, would pass SONA_MAX_FISHER, and a step by it would carry the weights
 * toward SONA_MAX_WEIGHT at once; sona_load holds pending gradients to it too. */
#define ENG_MAX_GRADIENT 1e10f

/* A query's cell: the sign pattern of ENG_CELL_BITS fixed random projections of it (a
 * locality-sensitive hash, base.c's eng_query_cell). EWC++ keeps which cells each task's
 * traffic came from; the quality baselines use the cell's low bits (base.h's regions). */
#define ENG_CELL_BITS 8
#define ENG_CELLS (1u << ENG_CELL_BITS)

/* EWC++ state of one parameter set (a tenant's Micro-LoRA or the Base-LoRA). */
typedef struct eng_ewc eng_ewc;

/* base: the Base-LoRA's (updated once a cycle), else a tenant's (once a request or so). */
eng_ewc *eng_ewc_create(const sona_lora *lora, const sona_engine_config *cfg, int base);
void eng_ewc_destroy(eng_ewc *w);
sona_status eng_ewc_step(eng_ewc *w, sona_lora *lora, const sona_engine_config *cfg, int *boundary);
/* For the task-shift detector and the anchors' weights (w may be NULL): a quality the adapter
 * set learned from, of a query in `cell` (< ENG_CELLS), measured against the detector's own
 * slow baseline; or a shortfall the caller measured (>= 0, in spreads below a baseline). */
void eng_ewc_note_quality(eng_ewc *w, float quality, uint32_t cell);
void eng_ewc_note_shortfall(eng_ewc *w, float shortfall);
sona_status eng_ewc_consolidate(eng_ewc *w, const sona_lora *lora);
/* The lambda of lora's next penalty step: the tasks' lambda, capped where the Fisher is large
 * (cached until the tasks change). */
float eng_ewc_lambda(eng_ewc *w, const sona_lora *lora);
uint32_t eng_ewc_tasks(const eng_ewc *w);
/* The EWC++ state underneath (its tasks, Fisher sum and lambda), read-only. */
const struct sona_ewc *eng_ewc_state(const eng_ewc *w);
/* sona_sync: the EWC++ state underneath replaced by fresh (w takes it over, same param_count);
 * the old one is returned for the caller to destroy. */
struct sona_ewc *eng_ewc_swap(eng_ewc *w, struct sona_ewc *fresh);
struct sona_wbuf;
struct sona_rbuf;
/* Appends w's state (a NULL w writes "absent"): tasks, running Fisher, boundary detector, the
 * task-shift detector's quality baseline and pending shortfall, and the anchors' cell state
 * (the counts since the last boundary, each task's cells and weight). */
void eng_ewc_save(const eng_ewc *w, struct sona_wbuf *out);
/* Reads a state written by eng_ewc_save for lora's shape into a fresh *out (NULL when absent or
 * when cfg has EWC++ off), as state format `version` wrote it (1 and 2 had no detector, 1 to 3
 * no quality baseline, 1 to 4 no cell state: they start afresh, every snapshot at weight 1).
 * SONA_E_CORRUPT on a bad record. */
sona_status eng_ewc_load(struct sona_rbuf *in, const sona_lora *lora, const sona_engine_config *cfg,
                         uint32_t version, int base, eng_ewc **out);

#endif
