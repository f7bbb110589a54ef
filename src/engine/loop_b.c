/* SPDX-License-Identifier: MIT */
/* Loop B (background): a cycle takes the queued trajectories (one loop B starts by itself leaves
 * fewer than loop_b_min_batch queued and takes at most eng_cycle_cap; a forced one takes all),
 * decodes each once, updates the pattern bank, trains Base-LoRA per layer (base_lora.c), applies
 * EWC++ (Fisher, penalty, task-shift check), bounds the output change and publishes the new
 * Base-LoRA for readers. */

#include "engine/loop_b.h"
#include "core/adapt/lora_internal.h"

#include <math.h>
#include <stdlib.h>

/* Learns from a drained batch. Each trajectory is decoded once and serves both the pattern bank
 * (its embedding) and Base-LoRA (a signal per step); then the bank takes the batch and the new
 * Base-LoRA is published. Caller holds cycle_mu. */
static sona_status learn_batch(sona_engine *e, sona_trajectory *const *batch, uint32_t n)
{
    const uint32_t H = e->cfg.hidden;
    eng_steps steps = {0};
    eng_bank_batch rows;
    eng_base_follow_device(e);
    sona_status st = eng_bank_batch_init(e, &rows, n);
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        if ((st = eng_steps_gather(&steps, batch[i], H)) != SONA_OK)
            break;
        eng_bank_add_row(e, &rows, &steps, sona_trajectory_quality(batch[i]));
        const uint32_t cell = eng_query_cell(e, steps.query);
        eng_ewc_note_quality(e->base_ewc, sona_trajectory_quality(batch[i]), cell);
        st = eng_base_queue_trajectory(e, steps.query, cell, &steps, NAN);
    }
    eng_steps_free(&steps);
    const sona_status flushed = eng_base_flush(e); /* empty after it, whatever st */
    if (st == SONA_OK)
        st = flushed;
    /* The bank and Base-LoRA are independent: a failure of one does not hold the other back. */
    const sona_status bank_st = st == SONA_OK ? eng_bank_commit(e, &rows) : SONA_OK;
    eng_bank_batch_done(e, &rows);
    if (st == SONA_OK && sona_lora_pending(e->base) > 0)
        st = eng_train_and_publish(e, e->base, e->base_ewc, &e->base_slot);
    return bank_st != SONA_OK ? bank_st : st;
}

sona_status eng_loop_b_cycle(sona_engine *e, uint32_t min_batch, uint32_t max_batch)
{
    pthread_mutex_lock(&e->cycle_mu);
    const uint64_t t0 = sona_monotonic_us();
    uint32_t queued = sona_trajectory_buffer_len(e->buffer);
    if (queued == 0 || queued < min_batch) {
        pthread_mutex_unlock(&e->cycle_mu);
        return SONA_E_EMPTY;
    }
    if (max_batch && queued > max_batch)
        queued = max_batch; /* the oldest; the rest waits for the next cycle */
    sona_trajectory **batch = malloc(queued * sizeof *batch);
    uint32_t n = 0;
    /* The cut of the state before the cycle, for saves meanwhile, and the drain, together. */
    if (!batch || eng_cycle_begin(e, batch, queued, &n) != SONA_OK) {
        free(batch);
        pthread_mutex_unlock(&e->cycle_mu);
        return eng_fail(e, SONA_E_NOMEM, "loop B: out of memory");
    }
    /* From here the batch is the cycle's: it is learned from (and counted) whatever happens.
     * In the stats it moves from queued to in cycle now, and to processed at the end. */
    atomic_fetch_add(&e->n.taken, n);
    if (e->cycle_hook)
        e->cycle_hook(e->cycle_hook_arg);
    const sona_status st = learn_batch(e, batch, n);
    atomic_store(&e->n.tasks, eng_ewc_tasks(e->base_ewc));
    /* Saves take the state the cycle leaves from now on, and the stats show the cycle done. */
    eng_cycle_end(e, &(eng_cycle_counts){.processed = n, .b_cycles = 1});
    for (uint32_t i = 0; i < n; i++)
        eng_traj_recycle(e, batch[i]);
    free(batch);
    atomic_store(&e->n.last_b_us, sona_monotonic_us() - t0);
    atomic_store(&e->last_cycle_ms, sona_monotonic_us() / 1000);
    pthread_mutex_unlock(&e->cycle_mu);
    if (st != SONA_OK)
        eng_fail(e, st, "loop B cycle failed: %s", sona_last_error());
    /* Even after a failed cycle: every rank counts the same cycles, so that all of them reach
     * the attached sync's collectives (sona_sync_attach). */
    const sona_status synced = eng_sync_periodic(e);
    return st != SONA_OK ? st : synced;
}
