/* SPDX-License-Identifier: MIT */
/* The pattern bank in the state file (its PATT and BANK sections; docs/state-format.md): the
 * bank writes and reads its own records. The HNSW index is not stored: restoring the patterns
 * rebuilds it. */
#ifndef SONA_CORE_PATTERNS_BANK_SERIAL_H
#define SONA_CORE_PATTERNS_BANK_SERIAL_H

#include "common/serial.h"
#include "sona/bank.h"

/* PATT: u32 count, then per pattern u64 id, u64 size, f64 total weight, f32 average quality,
 * u64 access count, u64 created and last access (ms), dim floats centroid. */
void sona_bank_write_patterns(const sona_bank *bank, sona_wbuf *w);
/* Restores PATT's patterns into bank (fresh, of the file's dim). SONA_E_CORRUPT with the
 * thread's message on a truncated section or an invalid pattern. */
sona_status sona_bank_read_patterns(sona_bank *bank, sona_rbuf *r);

/* BANK: u32 counter count (13), the sona_bank_stats counters as u64 from trajectories_added to
 * searches, then u64 the next pattern id. */
void sona_bank_write_counters(const sona_bank *bank, sona_wbuf *w);
/* Restores BANK onto a bank that holds PATT's patterns already. */
sona_status sona_bank_read_counters(sona_bank *bank, sona_rbuf *r);

#endif
