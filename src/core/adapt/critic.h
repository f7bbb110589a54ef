/* SPDX-License-Identifier: MIT */
/* A query critic: the part of a final quality the query alone explains, so that a quality-only
 * signal's baseline measures what the exploration did rather than which query came.
 *
 * Per query region r it keeps m_r, a running mean of the region's queries, and v_r, a linear
 * model fitted by normalised least mean squares: the critic expects a quality of
 * v_r . (x - m_r) above the region's baseline. A query's direction within its cluster moves a
 * quality as much as an exploration step does (at hidden 256 and a cluster spread of 0.3, more),
 * and a scalar baseline cannot tell the two apart; the critic removes what it has learned of the
 * first (docs/notes/learning-at-the-defaults.md, "Fourth pass"). It is a function of the query
 * only, so it leaves the expected update as it was and only lowers its variance.
 *
 * Not thread-safe: its owner serialises every call (the engine: the tenant's mutex). */
#ifndef SONA_CORE_ADAPT_CRITIC_H
#define SONA_CORE_ADAPT_CRITIC_H

#include "common/serial.h"
#include "sona/common.h"

#include <stdint.h>

typedef struct sona_critic sona_critic;

/* dim values per query, `regions` regions; the running mean moves by mean_rate of a query's
 * offset, the model by fit_rate of a residual (normalised least mean squares, in (0, 1]). */
sona_status sona_critic_create(uint32_t dim, uint32_t regions, float mean_rate, float fit_rate,
                               sona_critic **out);
void sona_critic_destroy(sona_critic *c);

/* The quality the critic expects of x (dim values) above region r's baseline: 0 before the region
 * has seen a query. centered (dim floats) receives x - m_r for sona_critic_learn. */
double sona_critic_predict(sona_critic *c, uint32_t region, const float *x, float *centered);

/* Region r learns from x (centered as sona_critic_predict left it): the model from residual, the
 * quality minus the baseline's mean minus the prediction, when has_residual (a baseline had a
 * mean); the running mean from x always. */
void sona_critic_learn(sona_critic *c, uint32_t region, const float *x, const float *centered,
                       int has_residual, double residual);

/* The record in a state file: per region u32 queries seen, dim floats m_r, dim floats v_r. */
void sona_critic_write(const sona_critic *c, sona_wbuf *w);
/* Reads a record written for the same dim and regions into a new critic; 0 (nothing allocated)
 * when r runs short or a value is out of range (|m| beyond SONA_MAX_ACTIVATION, |v| beyond
 * SONA_MAX_WEIGHT, or not finite). */
int sona_critic_read(sona_rbuf *r, uint32_t dim, uint32_t regions, float mean_rate, float fit_rate,
                     sona_critic **out);
/* The bytes of one record. */
uint64_t sona_critic_record_bytes(uint32_t dim, uint32_t regions);

#endif
