/* SPDX-License-Identifier: MIT */
/* sona_save / sona_load: the engine's learned state as one versioned, checksummed file.
 *
 * Layout (all integers and floats little-endian; the byte-order mark says so to older readers):
 *   header:  magic "SONASTAT" (8 bytes), u32 format version, u32 byte-order mark 0x01020304,
 *            u32 section count, u32 CRC-32 of the 20 bytes before it
 *   section: u32 tag, u32 zero, u64 payload length, u32 CRC-32 of the payload, payload
 * Sections, in this order: CONF (shape and hyperparameters), STAT (counters, baseline), TENA
 * (u32 count, then per live tenant its id and adapter record), BASE (the Base-LoRA's adapter
 * record), PATT (patterns; the HNSW index is rebuilt on load), QUEU (version 2 on: the trajectories queued for loop B, oldest
 * first: u64 the engine's next trajectory id, u32 count, then each as core/memory/trajectory_internal.h
 * writes it, its vectors' encoded bytes as held), BANK (version 3 on: u32 count 13, the bank's
 * counters as u64 in sona_bank_stats order from trajectories_added to searches, then u64 the
 * next pattern id, above every pattern's), DREA (version 3 on: loop C's dream visits, u32
 * count, then per pattern id in increasing order u64 id (below the next pattern id), u32 visits
 * (>= 1)), BASL (version 4 on: the quality baselines, each as f32 mean, f32 variance, u32
 * count, then (version 6 on) f32 reward spread: the engine-wide one; u32 regions (ENG_REGIONS), u32 layers, then layers x regions of
 * Base-LoRA's; u32 tenants, then per tenant id in increasing order u32 id (a tenant of TENA)
 * and its regions), CRIT (version 6 on: the tenants' query critics, u32 count, then per tenant
 * with one, in increasing id order, u32 id (a tenant of TENA) and its record: per region u32
 * queries seen, hidden floats of their running mean, hidden floats of the model). An EWC++ record (ewc.c): u32 present; when 1, u32 parameter count n, u32
 * tasks, n floats running Fisher, per task n floats theta* and n floats Fisher, then (version 3
 * on) the boundary detector: u64 samples, f64 short mean, long mean, long variance, u64
 * boundaries, then (version 4 on) the task-shift detector: f32 baseline mean, variance, u32
 * count, f64 shortfall sum, u32 shortfalls, f64 shift, u32 updates, then (version 5 on) the
 * anchors' cells: u32 cells (ENG_CELLS), cells floats of counts since the last boundary, per
 * task cells floats of its distribution, then per task f32 weight. An adapter record (TENA's after its u32 tenant id, BASE's): A and Bt as floats,
 * its EWC++ record, then (version 5 on) the code covariance of B's preconditioner (u32 1, per
 * adapter f64 weight, per adapter rank x rank f64; or u32 0), then (version 3 on) u32 signals
 * since the last apply (loop A's
 * micro_apply_every; 0 for BASE), u32 1 when gradients are pending (else 0 and the record
 * ends), u32 signal count per adapter (not all 0), then the gradients of A and Bt as floats. Unknown tags are skipped (checksummed all the same). Older files still load:
 * version 1 had lost its queue; versions 1 and 2 lost the bank's counters (the extraction
 * count that seeds k-means; the next pattern id became the largest live id + 1), the dream
 * visits, the EWC++ detectors and the tenants' pending gradients, which start afresh.
 * STAT's trajectories_recorded is written as processed + the QUEU count: the queue is a snapshot
 * taken while producers may still be recording, and the file says recorded == processed + queued
 * of that snapshot (a trajectory recorded after it is neither queued nor counted in the file).
 * A save goes to a temporary file in the target's directory, is fsynced and renamed over the
 * target, then the directory is fsynced: a crash leaves the old file or the new one. */

#include "engine/persist.h"

#include "common/serial.h"
#include "core/adapt/critic.h"
#include "core/adapt/lora_internal.h"
#include "core/memory/trajectory_internal.h"
#include "core/patterns/bank_serial.h"
#include "core/patterns/dream.h"
#include "engine/config.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STATE_MAGIC "SONASTAT"
#define BYTE_ORDER_MARK 0x01020304u
#define HEADER_BYTES 24u
#define SECTION_HEADER_BYTES 20u
#define COUNTERS 13 /* STAT section: the engine's monotonic counters */

/* The counters the STAT section holds, in file order (counter_table's), those used by name. */
enum {
    COUNTER_RECORDED,
    COUNTER_PROCESSED,
    COUNTER_DROPPED,
    COUNTER_BASE_UPDATES = 6,
    COUNTER_B_CYCLES = 8,
    COUNTER_C_CYCLES,
    COUNTER_DREAMS,
    COUNTER_REPLAYED,
    COUNTER_MERGED
};

static void counter_table(sona_engine *e, atomic_uint_fast64_t *out[COUNTERS])
{
    atomic_uint_fast64_t *const t[COUNTERS] = {
        &e->n.recorded, &e->n.processed, &e->n.dropped, &e->n.accepted, &e->n.rejected,
        &e->n.micro_updates, &e->n.base_updates, &e->n.boundaries, &e->n.b_cycles, &e->n.c_cycles,
        &e->n.dreams, &e->n.replayed, &e->n.merged};
    memcpy(out, t, sizeof t);
}

/* ---- the state in memory ------------------------------------------------------------------------------- */

/* Everything a file holds, built into fresh objects before anything of the engine changes. */
typedef struct loaded {
    uint32_t version;           /* the file's format version */
    float max_output_change;    /* CONF's: the bound the saving engine's adapters kept */
    uint64_t counters[COUNTERS];
    float baseline;
    uint32_t phi_bits;
    uint32_t tenants;
    uint32_t *ids;
    sona_lora **loras;
    eng_ewc **ewcs;
    uint32_t *since_apply;      /* per tenant: signals since its last apply (version 3 on) */
    sona_lora *base;
    eng_ewc *base_ewc;
    sona_bank *bank;
    int has_queue;              /* version 2 on */
    uint64_t next_id;           /* the engine's next trajectory id */
    uint32_t queued;            /* trajectories in queue: those that fit buffer_capacity */
    sona_trajectory **queue;
    uint32_t queue_in_file;     /* the file's queue, also what did not fit */
    sona_dream_visits *dream;     /* version 3 on; NULL when no pattern was visited */
    sona_signal_baseline quality; /* version 4 on; before, the STAT mean alone */
    sona_signal_baseline *base_baselines; /* layers x regions (version 4 on; else all empty) */
    uint32_t *region_tenants;   /* a region record per tenant of ids (version 4 on; else NULL) */
    sona_signal_baseline *tenant_baselines; /* tenants x regions, by TENA's order */
    sona_critic **critics;      /* per tenant by TENA's order (version 6 on; NULL: none) */
} loaded;

static void loaded_free(loaded *s)
{
    for (uint32_t i = 0; i < s->tenants; i++) {
        if (s->loras)
            sona_lora_destroy(s->loras[i]);
        if (s->ewcs)
            eng_ewc_destroy(s->ewcs[i]);
        if (s->critics)
            sona_critic_destroy(s->critics[i]);
    }
    free(s->critics);
    free(s->ids);
    free(s->loras);
    free(s->ewcs);
    free(s->since_apply);
    free(s->base_baselines);
    free(s->region_tenants);
    free(s->tenant_baselines);
    sona_lora_destroy(s->base);
    eng_ewc_destroy(s->base_ewc);
    sona_bank_destroy(s->bank);
    for (uint32_t i = 0; i < s->queued; i++)
        sona_trajectory_destroy(s->queue[i]);
    free(s->queue);
    sona_dream_visits_free(s->dream);
}

static sona_status corrupt(sona_engine *e, const char *what)
{
    return eng_fail(e, SONA_E_CORRUPT, "sona_load: %s", what);
}

/* ---- records shared by sections ------------------------------------------------------------ */

/* Sections are written into w: begin reserves the section header, end fills length and CRC. */
static size_t section_begin(sona_wbuf *w, uint32_t tag)
{
    const size_t at = w->len;
    sona_wbuf_u32(w, tag);
    sona_wbuf_u32(w, 0);
    sona_wbuf_u64(w, 0);
    sona_wbuf_u32(w, 0);
    return at;
}

static void section_end(sona_wbuf *w, size_t at)
{
    if (w->oom)
        return;
    const uint64_t len = w->len - at - SECTION_HEADER_BYTES;
    const uint32_t crc = sona_crc32(0, w->p + at + SECTION_HEADER_BYTES, len);
    sona_wbuf_patch_u64(w, at + 8, len);
    sona_wbuf_patch_u32(w, at + 16, crc);
}

/* The preconditioner of B's steps (version 5 on): u32 1 and per adapter f64 weight, then per
 * adapter rank x rank f64 code covariance; u32 0 when it is off. */
static void write_code_state(sona_wbuf *w, const sona_lora *l)
{
    const sona_lora_config *c = sona_lora_get_config(l);
    const size_t rr = (size_t)c->rank * c->rank;
    double *weights = malloc(c->count * sizeof *weights), *cov = malloc(rr * c->count * sizeof *cov);
    const int on = weights && cov && sona_lora_code_state(l, weights, cov);
    sona_wbuf_u32(w, (uint32_t)on);
    for (uint32_t a = 0; on && a < c->count; a++)
        sona_wbuf_f64(w, weights[a]);
    for (size_t i = 0; on && i < rr * c->count; i++)
        sona_wbuf_f64(w, cov[i]);
    if (!weights || !cov)
        w->oom = 1;
    free(weights);
    free(cov);
}

static sona_status read_code_state(sona_engine *e, sona_rbuf *r, sona_lora *l)
{
    const sona_lora_config *c = sona_lora_get_config(l);
    const size_t rr = (size_t)c->rank * c->rank;
    const uint32_t on = sona_rbuf_u32(r);
    if (r->bad || on > 1 || (on && !sona_rbuf_has(r, (rr + 1) * c->count, sizeof(double))))
        return corrupt(e, "bad code covariance record");
    if (!on)
        return SONA_OK;
    double *weights = malloc(c->count * sizeof *weights), *cov = malloc(rr * c->count * sizeof *cov);
    sona_status st = weights && cov ? SONA_OK : eng_fail(e, SONA_E_NOMEM, "sona_load: out of memory");
    for (uint32_t a = 0; st == SONA_OK && a < c->count; a++)
        weights[a] = sona_rbuf_f64(r);
    for (size_t i = 0; st == SONA_OK && i < rr * c->count; i++)
        cov[i] = sona_rbuf_f64(r);
    if (st == SONA_OK && sona_lora_set_code_state(l, weights, cov) != SONA_OK)
        st = corrupt(e, "a code covariance that no learning makes");
    free(weights);
    free(cov);
    return st;
}

/* An adapter set: weights, EWC++, (version 5 on) the code covariance, then (version 3 on) loop
 * A's state between applies: the signals since the last apply, and the gradients they
 * accumulated with each adapter's count. */
static void write_adapter(sona_wbuf *w, const sona_lora *l, const eng_ewc *ewc, uint32_t since_apply,
                          float *scratch)
{
    const sona_lora_config *c = sona_lora_get_config(l);
    const size_t n = (size_t)c->count * c->rank * c->hidden;
    if (sona_lora_export(l, scratch, scratch + n, NULL) != SONA_OK) {
        w->oom = 1;
        return;
    }
    sona_wbuf_floats(w, scratch, 2 * n);
    eng_ewc_save(ewc, w);
    write_code_state(w, l);
    sona_wbuf_u32(w, since_apply);
    const int pending = sona_lora_pending(l) != 0;
    sona_wbuf_u32(w, (uint32_t)pending);
    if (!pending)
        return;
    uint32_t *counts = malloc(c->count * sizeof *counts);
    if (!counts || sona_lora_export_grad(l, scratch, scratch + n) != SONA_OK) {
        free(counts);
        w->oom = 1;
        return;
    }
    sona_lora_pending_counts(l, counts);
    sona_wbuf_u32s(w, counts, c->count);
    sona_wbuf_floats(w, scratch, 2 * n);
    free(counts);
}

/* Loop A's state between applies (version 3 on; see write_adapter) into a fresh lora. */
static sona_status read_pending(sona_engine *e, sona_rbuf *r, sona_lora *l, uint32_t *since_apply)
{
    const sona_lora_config *c = sona_lora_get_config(l);
    const size_t n = (size_t)c->count * c->rank * c->hidden;
    *since_apply = sona_rbuf_u32(r);
    const uint32_t pending = sona_rbuf_u32(r);
    if (r->bad || pending > 1)
        return corrupt(e, "bad pending gradient record");
    if (!pending)
        return SONA_OK;
    if (!sona_rbuf_has(r, c->count + 2 * n, sizeof(float))) /* u32 counts, then float gradients */
        return corrupt(e, "pending gradients are truncated");
    uint32_t *counts = malloc(c->count * sizeof *counts);
    float *g = malloc(2 * n * sizeof *g);
    sona_status st = counts && g ? SONA_OK : eng_fail(e, SONA_E_NOMEM, "sona_load: out of memory");
    uint64_t total = 0;
    if (st == SONA_OK) {
        sona_rbuf_u32s(r, counts, c->count);
        sona_rbuf_floats(r, g, 2 * n);
        for (uint32_t i = 0; i < c->count; i++)
            total += counts[i];
        if (total == 0)
            st = corrupt(e, "a pending gradient record without signals");
        else if (!sona_all_within(g, 2 * n, ENG_MAX_GRADIENT)) /* the next apply would refuse them */
            st = corrupt(e, "pending gradients are not finite or beyond their range");
        else if (sona_lora_import_grad(l, g, g + n, counts) != SONA_OK)
            st = corrupt(e, "pending gradients are not finite");
    }
    free(counts);
    free(g);
    return st;
}

/* Reads one adapter set of the engine's shape into a fresh lora (+ EWC++, whose record has the
 * boundary detector from version 3 on, and from then on loop A's pending state). */
static sona_status read_adapter(sona_engine *e, sona_rbuf *r, const loaded *s, int base, sona_lora **lora,
                                eng_ewc **ewc, uint32_t *since_apply)
{
    sona_lora_config lc;
    eng_lora_config(&e->cfg, base, &lc);
    const size_t n = (size_t)lc.count * lc.rank * lc.hidden;
    if (!sona_rbuf_has(r, 2 * n, sizeof(float)))
        return corrupt(e, "adapter weights are truncated");
    float *wts = malloc(2 * n * sizeof *wts);
    if (!wts)
        return eng_fail(e, SONA_E_NOMEM, "sona_load: out of memory");
    sona_rbuf_floats(r, wts, 2 * n);
    sona_status st = SONA_OK;
    if (!sona_all_within(wts, 2 * n, SONA_MAX_WEIGHT))
        st = corrupt(e, "adapter weights are not finite or beyond SONA_MAX_WEIGHT");
    else if ((st = eng_lora_create(&e->cfg, base, lora)) == SONA_OK && (st = sona_lora_import(*lora, wts, wts + n)) != SONA_OK)
        st = corrupt(e, "adapter weights are not finite");
    free(wts);
    /* The bound every update of the saving engine kept (its max_output_change, from CONF; this
     * engine's when the file claims none): an adapter beyond it was not made by learning, and
     * would send outputs wherever it points. The margin is the rounding of the scaling. */
    const float bound = s->max_output_change > 0.0f && isfinite(s->max_output_change) ? s->max_output_change
                                                                                       : e->cfg.max_output_change;
    for (uint32_t a = 0; st == SONA_OK && bound > 0.0f && a < lc.count; a++) {
        double gain = 0.0;
        if (sona_lora_gain(*lora, (int32_t)a, &gain) != SONA_OK || !(gain <= 1.01 * bound))
            st = corrupt(e, "an adapter's output change is beyond the file's max_output_change");
    }
    if (st != SONA_OK)
        return st;
    st = eng_ewc_load(r, *lora, &e->cfg, s->version, base, ewc);
    if (st != SONA_OK)
        return eng_fail(e, st, "sona_load: EWC++ state: %s", sona_status_str(st));
    if (s->version >= 5 && (st = read_code_state(e, r, *lora)) != SONA_OK)
        return st;
    *since_apply = 0;
    return s->version >= 3 ? read_pending(e, r, *lora, since_apply) : SONA_OK;
}

static sona_status read_tenants(sona_engine *e, sona_rbuf *r, loaded *s)
{
    const uint32_t n = sona_rbuf_u32(r);
    if (r->bad || n == 0 || n > e->cfg.max_tenants)
        return corrupt(e, "bad tenant count");
    s->ids = calloc(n, sizeof *s->ids);
    s->loras = calloc(n, sizeof *s->loras);
    s->ewcs = calloc(n, sizeof *s->ewcs);
    s->since_apply = calloc(n, sizeof *s->since_apply);
    if (!s->ids || !s->loras || !s->ewcs || !s->since_apply)
        return eng_fail(e, SONA_E_NOMEM, "sona_load: out of memory");
    s->tenants = n;
    for (uint32_t i = 0; i < n; i++) {
        s->ids[i] = sona_rbuf_u32(r);
        if (r->bad || s->ids[i] >= e->cfg.max_tenants || (i && s->ids[i] <= s->ids[i - 1]) ||
            (i == 0 && s->ids[0] != 0))
            return corrupt(e, "bad tenant id");
        sona_status st = read_adapter(e, r, s, 0, &s->loras[i], &s->ewcs[i], &s->since_apply[i]);
        if (st != SONA_OK)
            return st;
    }
    return SONA_OK;
}

/* 1 when t's query, activations, rewards and quality are within SONA_MAX_ACTIVATION and
 * SONA_MAX_QUALITY (*row: a scratch row of H floats, allocated on first use). */
static int queued_in_range(const sona_trajectory *t, uint32_t H, float **row)
{
    if (!*row && !(*row = malloc(H * sizeof **row)))
        return 0;
    if (!(fabsf(sona_trajectory_quality(t)) <= SONA_MAX_QUALITY) || sona_trajectory_query(t, *row, H) != SONA_OK ||
        !sona_all_within(*row, H, SONA_MAX_ACTIVATION))
        return 0;
    for (uint32_t k = 0; k < sona_trajectory_step_count(t); k++) {
        sona_trajectory_step step;
        if (sona_trajectory_get_step(t, k, &step) != SONA_OK || !(fabsf(step.reward) <= SONA_MAX_QUALITY) ||
            sona_trajectory_step_activations(t, k, *row, H) != SONA_OK || !sona_all_within(*row, H, SONA_MAX_ACTIVATION))
            return 0;
    }
    return 1;
}

/* Reads the queued trajectories (QUEU). Those beyond this engine's buffer_capacity are
 * checked like the others and let go: the oldest are kept, as a full queue refuses the newest. */
static sona_status read_queue(sona_engine *e, sona_rbuf *r, loaded *s)
{
    const uint32_t H = e->cfg.hidden;
    s->next_id = sona_rbuf_u64(r);
    const uint32_t n = sona_rbuf_u32(r);
    if (!sona_rbuf_has(r, n, SONA_TRAJECTORY_RECORD_MIN_BYTES))
        return corrupt(e, "queue section is truncated");
    if (s->next_id > SONA_MAX_NEXT_ID)
        return corrupt(e, "the next trajectory id is beyond SONA_MAX_NEXT_ID");
    const uint32_t keep = n < e->cfg.buffer_capacity ? n : e->cfg.buffer_capacity;
    float *row = NULL;
    if (keep && !(s->queue = calloc(keep, sizeof *s->queue)))
        return eng_fail(e, SONA_E_NOMEM, "sona_load: out of memory");
    s->queue_in_file = n;
    for (uint32_t i = 0; i < n; i++) {
        sona_trajectory *t;
        sona_status st = sona_trajectory_read(r, &t);
        if (st != SONA_OK) {
            free(row);
            return eng_fail(e, st, "sona_load: queued trajectory %u: %s", i, sona_last_error());
        }
        /* What loop B needs: rows of the engine's width (the file's CONF has it), and ids the
         * restored id source will not hand out again. */
        int ok = sona_trajectory_dim(t) == H && sona_trajectory_id(t) < s->next_id;
        for (uint32_t k = 0; ok && k < sona_trajectory_step_count(t); k++) {
            sona_trajectory_step step;
            ok = sona_trajectory_get_step(t, k, &step) == SONA_OK && step.activations_len == H;
        }
        /* Its values within the ranges a live request is held to (loop B learns from them). */
        if (ok)
            ok = queued_in_range(t, H, &row);
        if (!ok) {
            sona_trajectory_destroy(t);
            free(row);
            return corrupt(e, "a queued trajectory is not of the engine's width, its id is not below the next "
                              "id, or a value is beyond its range");
        }
        if (i < keep)
            s->queue[s->queued++] = t;
        else
            sona_trajectory_destroy(t);
    }
    free(row);
    return SONA_OK;
}

static void write_baseline(sona_wbuf *w, const sona_signal_baseline *b)
{
    sona_wbuf_f32(w, b->mean);
    sona_wbuf_f32(w, b->var);
    sona_wbuf_u32(w, b->count);
    sona_wbuf_f32(w, b->spread);
}

/* Where the record of tenant `id` goes among TENA's tenants (s->ids, increasing), or -1 when
 * TENA does not hold it (created while the file was saved: skipped). *at walks the ids, for
 * records that come in increasing id order. */
static int32_t tenant_index(const loaded *s, uint32_t *at, uint32_t id)
{
    while (*at < s->tenants && s->ids[*at] < id)
        (*at)++;
    return *at < s->tenants && s->ids[*at] == id ? (int32_t)(*at)++ : -1;
}

/* The head of BASL: the engine-wide quality baseline, Base-LoRA's per layer and region (base:
 * the live ones under cycle_mu, or a cut's); each live tenant's per region follow (see
 * tenant_records). */
static void write_baselines(sona_wbuf *w, sona_engine *e, const sona_signal_baseline *quality,
                            const sona_signal_baseline *base)
{
    write_baseline(w, quality);
    sona_wbuf_u32(w, ENG_REGIONS);
    sona_wbuf_u32(w, e->cfg.base_layers);
    for (size_t i = 0; i < (size_t)e->cfg.base_layers * ENG_REGIONS; i++)
        write_baseline(w, &base[i]);
}

/* A baseline of a version `version` file (the reward spread came with version 6). */
static int read_baseline(sona_rbuf *r, uint32_t version, sona_signal_baseline *b)
{
    b->mean = sona_rbuf_f32(r);
    b->var = sona_rbuf_f32(r);
    b->count = sona_rbuf_u32(r);
    b->spread = version >= 6 ? sona_rbuf_f32(r) : 0.0f;
    /* What qualities and rewards within SONA_MAX_QUALITY can make of a running mean, variance
     * and mean absolute deviation. */
    const float q = SONA_MAX_QUALITY;
    return !r->bad && fabsf(b->mean) <= q && b->var >= 0.0f && b->var <= 4.0f * q * q && b->spread >= 0.0f &&
           b->spread <= 2.0f * q;
}

/* BASL (version 4 on) into s; TENA was read before. A tenant of the file's BASL that TENA does
 * not hold (created while the file was saved) is skipped; one of TENA's without a record starts
 * empty. */
static sona_status read_baselines(sona_engine *e, sona_rbuf *r, loaded *s)
{
    const uint32_t L = e->cfg.base_layers;
    s->base_baselines = calloc((size_t)L * ENG_REGIONS, sizeof *s->base_baselines);
    s->region_tenants = calloc(s->tenants, sizeof *s->region_tenants);
    s->tenant_baselines = calloc((size_t)s->tenants * ENG_REGIONS, sizeof *s->tenant_baselines);
    if (!s->base_baselines || !s->region_tenants || !s->tenant_baselines)
        return eng_fail(e, SONA_E_NOMEM, "sona_load: out of memory");
    if (!read_baseline(r, s->version, &s->quality) || sona_rbuf_u32(r) != ENG_REGIONS || sona_rbuf_u32(r) != L)
        return corrupt(e, "bad baseline section");
    for (size_t i = 0; i < (size_t)L * ENG_REGIONS; i++)
        if (!read_baseline(r, s->version, &s->base_baselines[i]))
            return corrupt(e, "bad baseline section");
    const uint32_t n = sona_rbuf_u32(r);
    if (r->bad || n > e->cfg.max_tenants)
        return corrupt(e, "bad baseline section");
    uint32_t at = 0, prev = 0;
    for (uint32_t k = 0; k < n; k++) {
        const uint32_t id = sona_rbuf_u32(r);
        sona_signal_baseline b[ENG_REGIONS];
        for (uint32_t j = 0; j < ENG_REGIONS; j++)
            if (!read_baseline(r, s->version, &b[j]))
                return corrupt(e, "bad baseline section");
        if (r->bad || id >= e->cfg.max_tenants || (k && id <= prev))
            return corrupt(e, "bad baseline section (tenant ids)");
        prev = id;
        const int32_t i = tenant_index(s, &at, id);
        if (i >= 0) {
            memcpy(s->tenant_baselines + (size_t)i * ENG_REGIONS, b, sizeof b);
            s->region_tenants[i] = id;
        }
    }
    return SONA_OK;
}

/* ---- the sections: each one's writer and reader ------------------------------------------- */

/* One cut of the state cycles own: the sections cycles own, serialised whole, and what STAT and
 * BASL take from that state. */
typedef struct cut_state {
    sona_wbuf w;                /* the sections, kept between cycles for their memory */
    size_t at[16], len[16];     /* per entry of sections[]: where in w (len 0: not a cycle's) */
    uint64_t counters[COUNTERS];
    uint32_t phi_bits;
    sona_signal_baseline *base_baselines; /* layers x regions */
} cut_state;

/* The cuts of an engine (eng_cycle_begin, see "saving" below). */
struct eng_cut {
    cut_state slot[2];
    cut_state *cur;             /* what saves use; cycles swap it under save_mu */
    int cur_ok;                 /* cur holds the state cycles own as it is, but for the running
                                   cycle's changes when active (set under cycle_mu and save_mu) */
    int active;                 /* a cycle runs from cur; batch is its (save_mu) */
    sona_trajectory **batch;    /* the running loop B cycle's: in cur's state still queued */
    uint32_t n;
    float *scratch;             /* room for Base-LoRA's A and Bt (cycle_mu) */
    _Atomic size_t hint;        /* the last save's bytes: the next one's first allocation */
};

/* What a save reads besides the engine, taken once before the first section so that all agree:
 * the queue as it was (looked at in place, never taken), the id source after it (every queued
 * trajectory took its id before it was queued: all are below), the quality baseline. */
typedef struct save_view {
    const sona_trajectory **queue;
    uint32_t queued;
    uint64_t next_id;
    sona_signal_baseline quality;
    float *scratch; /* room for an adapter set's A and Bt */
    const cut_state *cut; /* a cut of the state cycles own, or NULL: the live state (cycle_mu) */
    const struct tenant_records *tenants;
} save_view;

/* The counters only cycles change (under cycle_mu), which a save during a cycle takes from the
 * cut; the others (recorded, dropped, accepted, rejected, micro_updates and boundaries, which
 * loop A's Micro-LoRA updates add to as well) are the request path's, taken live. */
static int counter_of_cycles(int i)
{
    return i == COUNTER_PROCESSED || i == COUNTER_BASE_UPDATES || i >= COUNTER_B_CYCLES /* .. merged */;
}


static void conf_write(sona_engine *e, const save_view *v, sona_wbuf *w)
{
    (void)v;
    eng_config_write(w, &e->cfg);
}

static sona_status conf_read(sona_engine *e, sona_rbuf *r, loaded *s)
{
    const sona_engine_config *c = &e->cfg;
    sona_engine_config file;
    if (eng_config_read(r, &file) != 0)
        return corrupt(e, "bad configuration section");
    if (file.hidden != c->hidden || file.micro_rank != c->micro_rank || file.base_rank != c->base_rank ||
        file.base_layers != c->base_layers)
        return eng_fail(e, SONA_E_SIZE,
                        "sona_load: the file is for hidden %u, micro rank %u, base rank %u x %u "
                        "layers; this engine has %u, %u, %u x %u",
                        file.hidden, file.micro_rank, file.base_rank, file.base_layers, c->hidden, c->micro_rank,
                        c->base_rank, c->base_layers);
    s->max_output_change = file.max_output_change;
    return SONA_OK;
}

/* STAT: u32 counter count, the counters as u64, f32 the quality baseline's mean (NaN before the
 * first trajectory), u32 Phi's bits. trajectories_recorded is written as processed + the queue
 * saved, which is what the file holds. */
static void stat_write(sona_engine *e, const save_view *v, sona_wbuf *w)
{
    atomic_uint_fast64_t *counters[COUNTERS];
    counter_table(e, counters);
    uint64_t n[COUNTERS];
    for (int i = 0; i < COUNTERS; i++)
        n[i] = v->cut && counter_of_cycles(i) ? v->cut->counters[i] : atomic_load(counters[i]);
    n[COUNTER_RECORDED] = n[COUNTER_PROCESSED] + v->queued;
    sona_wbuf_u32(w, COUNTERS);
    for (int i = 0; i < COUNTERS; i++)
        sona_wbuf_u64(w, n[i]);
    sona_wbuf_f32(w, v->quality.count ? v->quality.mean : NAN);
    sona_wbuf_u32(w, v->cut ? v->cut->phi_bits : atomic_load(&e->last_phi_bits));
}

static sona_status stat_read(sona_engine *e, sona_rbuf *r, loaded *s)
{
    if (sona_rbuf_u32(r) != COUNTERS)
        return corrupt(e, "bad counter section");
    for (int i = 0; i < COUNTERS; i++)
        s->counters[i] = sona_rbuf_u64(r);
    s->baseline = sona_rbuf_f32(r);
    s->phi_bits = sona_rbuf_u32(r);
    if (r->bad || isinf(s->baseline) || fabsf(s->baseline) > SONA_MAX_QUALITY)
        return corrupt(e, "bad counter section");
    if (!isnan(s->baseline)) /* BASL (version 4 on) replaces it with the whole baseline */
        s->quality = (sona_signal_baseline){.mean = s->baseline, .count = 1};
    return SONA_OK;
}

/* Each live tenant's records in TENA, BASL and CRIT, all taken under one hold of its lock
 * before the first section: the request path holds that lock for each learning step, and under
 * load a save that waited for it once per section spent most of its time waiting (three
 * quarters of a 140 ms save, with 2 ms of CPU). The three records of a tenant are of one moment. */
enum { REC_TENA, REC_BASL, REC_CRIT, TENANT_RECORDS };
typedef struct tenant_records {
    sona_wbuf w;
    size_t (*at)[TENANT_RECORDS], (*len)[TENANT_RECORDS]; /* per tenant id; len 0: no record */
    uint32_t count[TENANT_RECORDS];
} tenant_records;

/* Tenant id's records (u32 id, then TENA's adapter record, BASL's baselines per region, CRIT's
 * critic when it has one) appended to tr->w, when it is live. Caller holds its lock. */
static void tenant_records_take(sona_engine *e, uint32_t id, float *scratch, tenant_records *tr)
{
    const eng_tenant *t = &e->tenants[id];
    if (!atomic_load(&t->live))
        return;
    for (int k = 0; k < TENANT_RECORDS; k++) {
        if (k == REC_CRIT && !t->critic)
            continue;
        const size_t at = tr->w.len;
        sona_wbuf_u32(&tr->w, id);
        if (k == REC_TENA) {
            write_adapter(&tr->w, t->lora, t->ewc, t->since_apply, scratch);
        } else if (k == REC_BASL) {
            for (uint32_t r = 0; r < ENG_REGIONS; r++)
                write_baseline(&tr->w, &t->baselines[r]);
        } else {
            sona_critic_write(t->critic, &tr->w);
        }
        tr->at[id][k] = at;
        tr->len[id][k] = tr->w.len - at;
        tr->count[k]++;
    }
}

/* Every live tenant's records into tr: first those whose lock is free, then the others,
 * waiting for each. 0: out of memory. */
static int tenant_records_build(sona_engine *e, float *scratch, tenant_records *tr)
{
    const uint32_t n = e->cfg.max_tenants;
    *tr = (tenant_records){0};
    tr->at = calloc(n ? n : 1, sizeof *tr->at);
    tr->len = calloc(n ? n : 1, sizeof *tr->len);
    uint8_t *taken = calloc(n ? n : 1, 1);
    if (!tr->at || !tr->len || !taken) {
        free(taken);
        return 0;
    }
    for (int wait = 0; wait < 2; wait++) {
        for (uint32_t i = 0; i < n; i++) {
            eng_tenant *t = &e->tenants[i];
            if (taken[i])
                continue;
            if (wait)
                pthread_mutex_lock(&t->mu);
            else if (pthread_mutex_trylock(&t->mu) != 0)
                continue;
            tenant_records_take(e, i, scratch, tr);
            pthread_mutex_unlock(&t->mu);
            taken[i] = 1;
        }
    }
    free(taken);
    return !tr->w.oom;
}

static void tenant_records_free(tenant_records *tr)
{
    free(tr->w.p);
    free(tr->at);
    free(tr->len);
}

/* u32 count, then the tenants' records of kind k in increasing id order. */
static void tenant_records_write(sona_engine *e, const tenant_records *tr, int k, sona_wbuf *w)
{
    sona_wbuf_u32(w, tr->count[k]);
    if (!tr->len) /* out of memory: w->oom is set */
        return;
    for (uint32_t i = 0; i < e->cfg.max_tenants; i++)
        if (tr->len[i][k])
            sona_wbuf_put(w, tr->w.p + tr->at[i][k], tr->len[i][k]);
}

/* TENA: u32 count, then per live tenant u32 id and its adapter record. */
static void tena_write(sona_engine *e, const save_view *v, sona_wbuf *w)
{
    tenant_records_write(e, v->tenants, REC_TENA, w);
}

static void base_write(sona_engine *e, const save_view *v, sona_wbuf *w)
{
    write_adapter(w, e->base, e->base_ewc, 0, v->scratch);
}

static sona_status base_read(sona_engine *e, sona_rbuf *r, loaded *s)
{
    uint32_t since_apply; /* the Base-LoRA learns in whole cycles: nothing between applies */
    return read_adapter(e, r, s, 1, &s->base, &s->base_ewc, &since_apply);
}

static void patt_write(sona_engine *e, const save_view *v, sona_wbuf *w)
{
    (void)v;
    sona_bank_write_patterns(e->bank, w);
}

static sona_status patt_read(sona_engine *e, sona_rbuf *r, loaded *s)
{
    sona_status st = eng_bank_create(&e->cfg, &s->bank);
    if (st != SONA_OK)
        return eng_fail(e, st, "sona_load: creating the pattern bank failed");
    st = sona_bank_read_patterns(s->bank, r);
    return st == SONA_OK ? SONA_OK : eng_fail(e, st, "sona_load: %s", sona_last_error());
}

/* QUEU (version 2 on): u64 the engine's next trajectory id, u32 count, then each trajectory as
 * core/memory/trajectory_internal.h writes it, oldest first. */
static void queu_write(sona_engine *e, const save_view *v, sona_wbuf *w)
{
    (void)e;
    sona_wbuf_u64(w, v->next_id);
    sona_wbuf_u32(w, v->queued);
    for (uint32_t i = 0; i < v->queued; i++)
        sona_trajectory_write(v->queue[i], w);
}

static void bank_write(sona_engine *e, const save_view *v, sona_wbuf *w)
{
    (void)v;
    sona_bank_write_counters(e->bank, w);
}

static sona_status bank_read(sona_engine *e, sona_rbuf *r, loaded *s)
{
    const sona_status st = sona_bank_read_counters(s->bank, r);
    return st == SONA_OK ? SONA_OK : eng_fail(e, st, "sona_load: %s", sona_last_error());
}

static void drea_write(sona_engine *e, const save_view *v, sona_wbuf *w)
{
    (void)v;
    sona_dream_visits_write(e->dream, w);
}

static sona_status drea_read(sona_engine *e, sona_rbuf *r, loaded *s)
{
    const sona_status st = sona_dream_visits_read(r, sona_bank_next_id(s->bank), &s->dream);
    return st == SONA_OK ? SONA_OK : eng_fail(e, st, "sona_load: %s", sona_last_error());
}

static void basl_write(sona_engine *e, const save_view *v, sona_wbuf *w)
{
    write_baselines(w, e, &v->quality, v->cut ? v->cut->base_baselines : e->base_baselines);
    tenant_records_write(e, v->tenants, REC_BASL, w);
}

/* CRIT: per live tenant with a query critic its record (core/adapt/critic.h). */
static void crit_write(sona_engine *e, const save_view *v, sona_wbuf *w)
{
    tenant_records_write(e, v->tenants, REC_CRIT, w);
}

/* CRIT (version 6 on) into s; TENA was read before. As BASL: a record of a tenant TENA does not
 * hold is skipped; one of TENA's without a record has no critic. */
static sona_status crit_read(sona_engine *e, sona_rbuf *r, loaded *s)
{
    const uint32_t n = sona_rbuf_u32(r);
    const uint64_t record = 4u + sona_critic_record_bytes(e->cfg.hidden, ENG_REGIONS);
    if (r->bad || n > e->cfg.max_tenants || !sona_rbuf_has(r, n, record))
        return corrupt(e, "bad critic section");
    if (!(s->critics = calloc(s->tenants ? s->tenants : 1, sizeof *s->critics)))
        return eng_fail(e, SONA_E_NOMEM, "sona_load: out of memory");
    uint32_t at = 0, prev = 0;
    for (uint32_t k = 0; k < n; k++) {
        const uint32_t id = sona_rbuf_u32(r);
        if (r->bad || id >= e->cfg.max_tenants || (k && id <= prev))
            return corrupt(e, "bad critic section (tenant ids)");
        prev = id;
        sona_critic *c;
        if (!eng_critic_read(&e->cfg, r, &c))
            return corrupt(e, "bad critic record");
        const int32_t i = tenant_index(s, &at, id);
        if (i >= 0)
            s->critics[i] = c;
        else
            sona_critic_destroy(c);
    }
    return SONA_OK;
}

/* Every section, in file order, which is also the order the reader needs (BANK and DREA go onto
 * PATT's bank, BASL onto TENA's tenants): its tag, the format version that brought it, and its
 * writer and reader. A file of an older version has only the sections up to its version; what
 * it lacks starts afresh (loaded's zeros). Adding a section is one line here, its two functions,
 * what `loaded` keeps of it and what commit() does with that. */
#define TAG(a, b, c, d) ((uint32_t)(a) | (uint32_t)(b) << 8 | (uint32_t)(c) << 16 | (uint32_t)(d) << 24)
static const struct state_section {
    uint32_t tag, since;
    int may_grow; /* a newer library may append to it: bytes after what this one reads are fine */
    int cycles;   /* only cycles change what it holds (cycle_mu): a cut holds it whole */
    void (*write)(sona_engine *e, const save_view *v, sona_wbuf *w);
    sona_status (*read)(sona_engine *e, sona_rbuf *r, loaded *s);
} sections[] = {
    {TAG('C', 'O', 'N', 'F'), 1, 1, 0, conf_write, conf_read},
    {TAG('S', 'T', 'A', 'T'), 1, 0, 0, stat_write, stat_read},
    {TAG('T', 'E', 'N', 'A'), 1, 0, 0, tena_write, read_tenants},
    {TAG('B', 'A', 'S', 'E'), 1, 0, 1, base_write, base_read},
    {TAG('P', 'A', 'T', 'T'), 1, 0, 1, patt_write, patt_read},
    {TAG('Q', 'U', 'E', 'U'), 2, 0, 0, queu_write, read_queue},
    {TAG('B', 'A', 'N', 'K'), 3, 0, 1, bank_write, bank_read},
    {TAG('D', 'R', 'E', 'A'), 3, 0, 1, drea_write, drea_read},
    {TAG('B', 'A', 'S', 'L'), 4, 0, 0, basl_write, read_baselines},
    {TAG('C', 'R', 'I', 'T'), 6, 0, 0, crit_write, crit_read},
};

#define SECTIONS (sizeof sections / sizeof sections[0])
/* The highest `since` above, or higher when a record inside a section grew (5: EWC++ records
 * gained their cell state, adapter records the code covariance): files of versions 1 to it are
 * read. */
#define STATE_VERSION 6u

/* ---- saving -------------------------------------------------------------------------------- */

/* A save is one consistent cut of the engine, taken without waiting for a running cycle.
 *
 * The state cycles own (under cycle_mu: Base-LoRA with its EWC++, the bank with its counters, the
 * dream visits, Base-LoRA's baselines, Phi, the cycles' counters) is serialised by each cycle at
 * its end into a cut (cut_state), while saves still use the one before: a cycle makes the cut of
 * the state it leaves, and the next cycle begins from it without making another. Anyone else who
 * changes that state under cycle_mu (a load, sona_sync, inspect.h's bank set-up) calls
 * eng_cut_invalidate first, and the next cycle makes the cut again when it begins.
 *
 *   A cycle runs (the cut is active): the state cycles own from the cut, i.e. as it was when
 *   the cycle began; the trajectories the cycle drained (its batch, not yet learned in that
 *   state) as still queued, oldest first, ahead of those queued now; the rest (tenants with
 *   their Micro-LoRA, EWC++ and baselines, the engine-wide quality baseline, the request path's
 *   counters, the next trajectory id) as it is, each under its own lock as before.
 *   No cycle runs: the live state under cycle_mu, taken with a trylock. When that fails and no
 *   cycle has begun from the cut (a cycle deciding whether to run, or ending after its cut was
 *   made), the cut alone: what it holds is the state cycles own, unchanged; so a save never waits
 *   for a cycle's lock. It waits only while there is no valid cut: before the first cycle has
 *   made one, and while a load, a sync or a bank set-up holds cycle_mu.
 *
 * Invariant: the file's queue is exactly what its Base-LoRA and bank have not learned from, so
 * recorded == processed + queued in the file (processed the cut's), and a load learns the batch
 * again. The cut, the batch and the queue are read together under save_mu, which the drain and
 * the cycle's end (the swap to its new cut, the batch let go) also take: no trajectory is in
 * both the cut's state and the queue, or in neither. A save holds save_mu while it serialises: a
 * cycle may wait for it when it drains or ends, never the save for the cycle. Between cycles,
 * the bank's access counts and search count in a cut are those at the cycle's end: a save during
 * the next cycle has them as they were then (the next save after the cycle has them all). */

/* Serialises the whole state into w: from cut with the running cycle's batch (in_cycle of them;
 * caller holds save_mu, the cut valid), else the live state (caller holds cycle_mu, which keeps
 * loop B, the queue's only consumer, out). The drain is under both locks. The
 * queued trajectories are looked at in place, never taken, while requests may go on recording.
 * Takes each tenant's lock in turn. */
static sona_status serialise(sona_engine *e, sona_wbuf *w, const cut_state *cut, sona_trajectory *const *batch,
                             uint32_t in_cycle)
{
    const sona_engine_config *c = &e->cfg;
    const size_t micro_n = (size_t)c->micro_rank * c->hidden,
                 base_n = (size_t)c->hidden * c->base_rank * c->base_layers;
    save_view v = {.scratch = malloc(2 * (micro_n > base_n ? micro_n : base_n) * sizeof(float)),
                   .queue = malloc(((size_t)c->buffer_capacity + in_cycle) * sizeof *v.queue), .cut = cut};
    if (!v.scratch || !v.queue) {
        free(v.scratch);
        free(v.queue);
        return SONA_E_NOMEM;
    }
    for (uint32_t i = 0; i < in_cycle; i++)
        v.queue[i] = batch[i];
    v.queued = in_cycle + sona_trajectory_buffer_peek(e->buffer, v.queue + in_cycle, c->buffer_capacity);
    v.next_id = sona_id_source_peek(e->ids);
    pthread_mutex_lock(&e->quality_mu);
    v.quality = e->quality;
    pthread_mutex_unlock(&e->quality_mu);
    tenant_records tenants;
    if (!tenant_records_build(e, v.scratch, &tenants))
        w->oom = 1;
    v.tenants = &tenants;

    sona_wbuf_put(w, STATE_MAGIC, 8);
    sona_wbuf_u32(w, STATE_VERSION);
    sona_wbuf_u32(w, BYTE_ORDER_MARK);
    sona_wbuf_u32(w, (uint32_t)SECTIONS);
    sona_wbuf_u32(w, w->oom ? 0 : sona_crc32(0, w->p, 20));
    for (size_t i = 0; i < SECTIONS; i++) {
        if (cut && sections[i].cycles) {
            sona_wbuf_put(w, cut->w.p + cut->at[i], cut->len[i]);
            continue;
        }
        const size_t at = section_begin(w, sections[i].tag);
        sections[i].write(e, &v, w);
        section_end(w, at);
    }
    tenant_records_free(&tenants);
    free(v.scratch);
    free(v.queue);
    return w->oom ? SONA_E_NOMEM : SONA_OK;
}

static const struct {
    int counter;
    size_t field;
} cycle_counts[] = {{COUNTER_PROCESSED, offsetof(eng_cycle_counts, processed)},
                    {COUNTER_B_CYCLES, offsetof(eng_cycle_counts, b_cycles)},
                    {COUNTER_C_CYCLES, offsetof(eng_cycle_counts, c_cycles)},
                    {COUNTER_DREAMS, offsetof(eng_cycle_counts, dreams)},
                    {COUNTER_REPLAYED, offsetof(eng_cycle_counts, replayed)},
                    {COUNTER_MERGED, offsetof(eng_cycle_counts, merged)}};

static uint64_t count_of(const eng_cycle_counts *add, size_t i)
{
    uint64_t v;
    memcpy(&v, (const char *)add + cycle_counts[i].field, sizeof v);
    return v;
}

/* A cut of the state cycles own into c, its counters with add's (not yet in the engine's; NULL:
 * none). Caller holds cycle_mu. 0: out of memory. */
static int cut_build(sona_engine *e, struct eng_cut *cut, cut_state *c, const eng_cycle_counts *add)
{
    const sona_engine_config *cf = &e->cfg;
    const size_t base_n = (size_t)cf->hidden * cf->base_rank * cf->base_layers,
                 regions = (size_t)cf->base_layers * ENG_REGIONS;
    if (!cut->scratch && !(cut->scratch = malloc(2 * base_n * sizeof(float))))
        return 0;
    if (!c->base_baselines && !(c->base_baselines = malloc(regions * sizeof *c->base_baselines)))
        return 0;
    c->w.len = 0;
    c->w.oom = 0;
    const save_view v = {.scratch = cut->scratch};
    for (size_t i = 0; i < SECTIONS; i++) {
        c->len[i] = 0;
        if (!sections[i].cycles)
            continue;
        c->at[i] = section_begin(&c->w, sections[i].tag);
        sections[i].write(e, &v, &c->w);
        section_end(&c->w, c->at[i]);
        c->len[i] = c->w.len - c->at[i];
    }
    atomic_uint_fast64_t *counters[COUNTERS];
    counter_table(e, counters);
    for (int i = 0; i < COUNTERS; i++)
        c->counters[i] = atomic_load(counters[i]);
    for (size_t i = 0; add && i < sizeof cycle_counts / sizeof cycle_counts[0]; i++)
        c->counters[cycle_counts[i].counter] += count_of(add, i);
    c->phi_bits = atomic_load(&e->last_phi_bits);
    memcpy(c->base_baselines, e->base_baselines, regions * sizeof *c->base_baselines);
    return !c->w.oom;
}

/* Adds a cycle's counts to the engine's counters (NULL: none). */
static void counts_add(sona_engine *e, const eng_cycle_counts *add)
{
    atomic_uint_fast64_t *counters[COUNTERS];
    counter_table(e, counters);
    for (size_t i = 0; add && i < sizeof cycle_counts / sizeof cycle_counts[0]; i++)
        atomic_fetch_add(counters[cycle_counts[i].counter], count_of(add, i));
}

/* A fresh cut of the state cycles own becomes cur (with add's counts, which reach the engine's
 * counters at the same time): made in the slot saves do not read, swapped in
 * under save_mu. Caller holds cycle_mu. */
static void cut_refresh(sona_engine *e, struct eng_cut *cut, const eng_cycle_counts *add)
{
    cut_state *spare = cut->cur == &cut->slot[0] ? &cut->slot[1] : &cut->slot[0];
    const int ok = cut_build(e, cut, spare, add);
    pthread_mutex_lock(&e->save_mu);
    counts_add(e, add);
    if (ok)
        cut->cur = spare;
    cut->cur_ok = ok;
    cut->active = 0;
    cut->batch = NULL;
    cut->n = 0;
    pthread_mutex_unlock(&e->save_mu);
}

sona_status eng_cycle_begin(sona_engine *e, sona_trajectory **batch, uint32_t want, uint32_t *n)
{
    _Static_assert(SECTIONS <= 16, "cut_state's section table");
    struct eng_cut *cut = e->cut; /* only cycles (cycle_mu) set it */
    if (!cut && (cut = calloc(1, sizeof *cut)) != NULL) {
        cut->cur = &cut->slot[0];
        pthread_mutex_lock(&e->save_mu);
        e->cut = cut;
        pthread_mutex_unlock(&e->save_mu);
    }
    if (cut && !cut->cur_ok) /* the first cycle, or the state changed since the last one */
        cut_refresh(e, cut, NULL);
    pthread_mutex_lock(&e->save_mu);
    sona_status st = SONA_OK;
    uint32_t got = 0;
    if (want)
        st = sona_trajectory_buffer_drain(e->buffer, batch, want, &got);
    if (cut) {
        cut->active = cut->cur_ok && st == SONA_OK;
        cut->batch = st == SONA_OK ? batch : NULL;
        cut->n = st == SONA_OK ? got : 0;
    }
    pthread_cond_broadcast(&e->save_cv);
    pthread_mutex_unlock(&e->save_mu);
    if (n)
        *n = got;
    return st;
}

void eng_cycle_end(sona_engine *e, const eng_cycle_counts *add)
{
    if (e->cut) {
        cut_refresh(e, e->cut, add); /* the state the cycle leaves */
        return;
    }
    pthread_mutex_lock(&e->save_mu);
    counts_add(e, add);
    pthread_mutex_unlock(&e->save_mu);
}

void eng_cut_invalidate(sona_engine *e)
{
    struct eng_cut *cut = e->cut;
    if (!cut)
        return;
    pthread_mutex_lock(&e->save_mu);
    cut->active = 0;
    cut->cur_ok = 0;
    pthread_mutex_unlock(&e->save_mu);
}

void eng_cut_free(struct eng_cut *cut)
{
    if (!cut)
        return;
    for (int i = 0; i < 2; i++) {
        free(cut->slot[i].w.p);
        free(cut->slot[i].base_baselines);
    }
    free(cut->scratch);
    free(cut);
}

/* The state serialised into *w (see serialise), from the cut (with the running cycle's batch
 * when one runs) or the live state. Caller holds save_mu, or cycle_mu when cut is NULL. */
static sona_status take_from(sona_engine *e, sona_wbuf *w, struct eng_cut *box, const cut_state *cut,
                             sona_trajectory *const *batch, uint32_t n)
{
    const size_t hint = box ? atomic_load(&box->hint) : 0;
    if (hint && (w->p = malloc(hint + hint / 8)) != NULL) /* no growing copies of megabytes */
        w->cap = hint + hint / 8;
    const sona_status st = serialise(e, w, cut, batch, n);
    if (box)
        atomic_store(&box->hint, w->len);
    return st;
}

/* A running cycle's cut when there is one; else the live state under cycle_mu when it is free;
 * else the cut alone when it is valid (see "saving" above); else waits for one of these, looking
 * again each millisecond (save_cv: at once when a cycle begins). */
static sona_status take_state(sona_engine *e, sona_wbuf *w)
{
    for (int tried = 0;; tried = 1) {
        pthread_mutex_lock(&e->save_mu);
        struct eng_cut *cut = e->cut;
        if (cut && (cut->active || (tried && cut->cur_ok))) {
            const sona_status st = take_from(e, w, cut, cut->cur, cut->batch, cut->active ? cut->n : 0);
            pthread_mutex_unlock(&e->save_mu);
            return st;
        }
        pthread_mutex_unlock(&e->save_mu);
        if (pthread_mutex_trylock(&e->cycle_mu) == 0) {
            const sona_status st = take_from(e, w, e->cut, NULL, NULL, 0);
            pthread_mutex_unlock(&e->cycle_mu);
            return st;
        }
        pthread_mutex_lock(&e->save_mu);
        cut = e->cut;
        if (!(cut && (cut->active || cut->cur_ok))) {
            const struct timespec until = sona_deadline_after_us(CLOCK_REALTIME, 1000);
            pthread_cond_timedwait(&e->save_cv, &e->save_mu, &until);
        }
        pthread_mutex_unlock(&e->save_mu);
    }
}

/* sona_save in two steps, so that neither loop waits on the disk: the state serialised into *w,
 * then *w written to path and freed, holding no lock. */
static sona_status eng_state_snapshot(sona_engine *e, sona_wbuf *w)
{
    eng_loop_a_drain(e); /* a save holds every request ended before it */
    *w = (sona_wbuf){0};
    const sona_status st = take_state(e, w);
    if (st != SONA_OK) {
        free(w->p);
        *w = (sona_wbuf){0};
        return eng_fail(e, st, "sona_save: out of memory serialising the state");
    }
    return SONA_OK;
}

static sona_status eng_state_write(sona_engine *e, const char *path, sona_wbuf *w)
{
    const sona_status st = eng_write_file_atomic(e, "sona_save", path, w->p, w->len, 0600);
    free(w->p);
    *w = (sona_wbuf){0};
    return st;
}

sona_status sona_save(sona_engine *e, const char *path)
{
    if (!e || !path)
        return eng_fail(e, SONA_E_NULL, "%s: NULL argument", __func__);
    sona_wbuf w;
    const sona_status st = eng_state_snapshot(e, &w);
    return st == SONA_OK ? eng_state_write(e, path, &w) : st;
}

sona_status eng_checkpoint(sona_engine *e)
{
    sona_wbuf w;
    const sona_status st = eng_state_snapshot(e, &w);
    return st == SONA_OK ? eng_state_write(e, e->cfg.state_path, &w) : st;
}

/* ---- loading ------------------------------------------------------------------------------- */

/* Checks the header and every section's bounds and CRC; fills the section table (the sections
 * of later versions than the file's stay empty: their tags are unknown to it). */
static sona_status read_sections(sona_engine *e, const char *caller, const uint8_t *p, size_t len,
                                 sona_rbuf sec[SECTIONS], uint32_t *version_out)
{
#define DAMAGED(what) eng_fail(e, SONA_E_CORRUPT, "%s: %s", caller, what)
    if (len < HEADER_BYTES || memcmp(p, STATE_MAGIC, 8) != 0)
        return DAMAGED("not a libsona state file (bad magic or too short)");
    sona_rbuf r = {.p = p, .len = len, .pos = 8};
    const uint32_t version = sona_rbuf_u32(&r), bom = sona_rbuf_u32(&r), count = sona_rbuf_u32(&r),
                   crc = sona_rbuf_u32(&r);
    if (crc != sona_crc32(0, p, 20))
        return DAMAGED("header checksum mismatch");
    if (bom != BYTE_ORDER_MARK)
        return eng_fail(e, SONA_E_VERSION, "%s: the file was written with another byte order", caller);
    if (version < 1 || version > STATE_VERSION)
        return eng_fail(e, SONA_E_VERSION, "%s: format version %u, this library reads 1 to %u", caller, version,
                        STATE_VERSION);
    memset(sec, 0, SECTIONS * sizeof *sec);
    for (uint32_t i = 0; i < count; i++) {
        const uint32_t tag = sona_rbuf_u32(&r);
        /* The reserved word is outside every checksum: anything but zero is damage. */
        const uint32_t reserved = sona_rbuf_u32(&r);
        const uint64_t n = sona_rbuf_u64(&r);
        if (reserved != 0)
            return DAMAGED("section header damaged (reserved field not zero)");
        const uint32_t scrc = sona_rbuf_u32(&r);
        if (r.bad || n > r.len - r.pos)
            return DAMAGED("truncated section");
        if (sona_crc32(0, p + r.pos, n) != scrc)
            return DAMAGED("section checksum mismatch");
        for (size_t t = 0; t < SECTIONS; t++)
            if (tag == sections[t].tag && sections[t].since <= version) {
                if (sec[t].p)
                    return DAMAGED("duplicate section");
                sec[t] = (sona_rbuf){.p = p + r.pos, .len = n};
            }
        r.pos += n;
    }
    if (r.pos != len)
        return DAMAGED("trailing bytes after the last section");
    for (size_t t = 0; t < SECTIONS; t++)
        if (sections[t].since <= version && !sec[t].p)
            return DAMAGED("a required section is missing");
    *version_out = version;
    return SONA_OK;
#undef DAMAGED
}

static sona_status parse(sona_engine *e, const uint8_t *p, size_t len, loaded *s)
{
    sona_rbuf sec[SECTIONS];
    sona_status st = read_sections(e, "sona_load", p, len, sec, &s->version);
    for (size_t i = 0; i < SECTIONS && st == SONA_OK; i++)
        if (sections[i].since <= s->version)
            st = sections[i].read(e, &sec[i], s);
    if (st != SONA_OK)
        return st;
    for (size_t t = 0; t < SECTIONS; t++)
        if (sec[t].bad || (!sections[t].may_grow && sec[t].pos != sec[t].len))
            return corrupt(e, "a section's contents do not match its length");
    if (s->version >= 4 &&
        (isnan(s->baseline) != (s->quality.count == 0) || (s->quality.count && s->quality.mean != s->baseline)))
        return corrupt(e, "the baseline section does not match the counter section");
    /* The loaded engine says recorded == processed + queued, as a file of version 2 says of its
     * own snapshot. What the file recorded but the engine will not hold (a version 1 file's whole
     * queue, which it did not keep; what exceeds this engine's buffer_capacity) is counted as
     * dropped instead, so recorded + dropped stays what it was. */
    s->has_queue = s->version >= 2;
    uint64_t *n = s->counters;
    if (s->has_queue && n[COUNTER_RECORDED] != n[COUNTER_PROCESSED] + s->queue_in_file)
        return corrupt(e, "the counters do not match the queue");
    const uint64_t held = n[COUNTER_PROCESSED] + s->queued;
    if (n[COUNTER_RECORDED] > held)
        n[COUNTER_DROPPED] += n[COUNTER_RECORDED] - held;
    n[COUNTER_RECORDED] = held;
    return SONA_OK;
}

/* Swaps the loaded state in. Cannot fail past the publish of fresh snapshots. */
static void commit(sona_engine *e, loaded *s)
{
    pthread_mutex_lock(&e->cycle_mu);
    eng_cut_invalidate(e); /* saves wait for the load; the next cycle cuts the loaded state */
    atomic_uint_fast64_t *counters[COUNTERS];
    counter_table(e, counters);
    for (int i = 0; i < COUNTERS; i++)
        atomic_store(counters[i], s->counters[i]);
    atomic_store(&e->n.taken, s->counters[COUNTER_PROCESSED]); /* no cycle in flight (cycle_mu) */
    pthread_mutex_lock(&e->quality_mu);
    e->quality = s->quality;
    pthread_mutex_unlock(&e->quality_mu);
    const size_t base_regions = (size_t)e->cfg.base_layers * ENG_REGIONS;
    for (size_t i = 0; i < base_regions; i++)
        e->base_baselines[i] = s->base_baselines ? s->base_baselines[i] : (sona_signal_baseline){0};
    atomic_store(&e->last_phi_bits, s->phi_bits);
    pthread_mutex_lock(&e->tenants_mu);
    uint32_t next = 0;
    for (uint32_t i = 0; i < e->cfg.max_tenants; i++) {
        eng_tenant *t = &e->tenants[i];
        pthread_mutex_lock(&t->mu);
        if (next < s->tenants && s->ids[next] == i) {
            sona_lora *l = t->lora;
            eng_ewc *w = t->ewc;
            t->lora = s->loras[next];
            t->ewc = s->ewcs[next];
            s->loras[next] = l;
            s->ewcs[next] = w;
            t->since_apply = s->since_apply[next];
            eng_note_tasks(e, &t->slot, t->ewc);
            memset(t->baselines, 0, sizeof t->baselines);
            if (s->region_tenants && s->region_tenants[next] == i)
                memcpy(t->baselines, s->tenant_baselines + (size_t)next * ENG_REGIONS, sizeof t->baselines);
            sona_critic *c = t->critic;
            t->critic = s->critics ? s->critics[next] : NULL;
            if (s->critics)
                s->critics[next] = c;
            else
                sona_critic_destroy(c);
            sona_snapshot_publish(&t->slot, t->lora);
            atomic_store(&t->live, 1);
            next++;
        } else if (atomic_load(&t->live)) {
            atomic_store(&t->live, 0);
            sona_snapshot_retract(&t->slot);
        }
        pthread_mutex_unlock(&t->mu);
    }
    pthread_mutex_unlock(&e->tenants_mu);
    sona_lora *bl = e->base;
    eng_ewc *bw = e->base_ewc;
    e->base = s->base;
    e->base_ewc = s->base_ewc;
    s->base = bl;
    s->base_ewc = bw;
    sona_snapshot_publish(&e->base_slot, e->base);
    pthread_rwlock_wrlock(&e->bank_lock);
    sona_bank *bank = e->bank;
    e->bank = s->bank;
    s->bank = bank;
    pthread_rwlock_unlock(&e->bank_lock);
    atomic_store(&e->n.patterns, sona_bank_pattern_count(e->bank));
    atomic_store(&e->n.tasks, eng_ewc_tasks(e->base_ewc));
    sona_dream_visits_free(e->dream);
    e->dream = s->dream; /* NULL for a file without visits: loop C starts one */
    s->dream = NULL;
    /* The file's queue replaces the engine's, whose trajectories go back to the pool. Loop B is
     * held off by cycle_mu and no request is in flight (sona_load's contract): the loaded ones
     * fit, cut to buffer_capacity. A request racing the load anyway costs a trajectory, counted. */
    sona_trajectory *old;
    uint32_t taken;
    while (sona_trajectory_buffer_drain(e->buffer, &old, 1, &taken) == SONA_OK && taken)
        eng_traj_recycle(e, old);
    for (uint32_t i = 0; i < s->queued; i++) {
        if (sona_trajectory_buffer_record(e->buffer, s->queue[i]) != SONA_OK) {
            sona_trajectory_destroy(s->queue[i]);
            atomic_fetch_sub(&e->n.recorded, 1);
            atomic_fetch_add(&e->n.dropped, 1);
        }
        s->queue[i] = NULL;
    }
    if (s->has_queue)
        sona_id_source_set(e->ids, s->next_id);
    pthread_mutex_unlock(&e->cycle_mu);
}

sona_status sona_load_buffer(sona_engine *e, const void *data, size_t len)
{
    if (!e || !data)
        return eng_fail(e, SONA_E_NULL, "sona_load: NULL argument");
    eng_loop_a_drain(e); /* requests ended before the load belong to the state it replaces */
    loaded s = {0};
    sona_status st = parse(e, data, len, &s);
    if (st == SONA_OK)
        commit(e, &s);
    loaded_free(&s); /* after commit: the engine's previous objects */
    if (st == SONA_OK && sona_trajectory_buffer_len(e->buffer) >= e->cfg.loop_b_threshold)
        eng_kick(e); /* as a request would have: the restored queue is due a cycle */
    return st;
}

sona_status sona_load(sona_engine *e, const char *path)
{
    if (!e || !path)
        return eng_fail(e, SONA_E_NULL, "%s: NULL argument", __func__);
    uint8_t *buf;
    size_t len;
    sona_status st = eng_read_whole_file(e, "sona_load", path, &buf, &len);
    if (st == SONA_OK) {
        st = sona_load_buffer(e, buf, len);
        free(buf);
    }
    return st;
}

/* The adapters CONF's shape needs against the bytes TENA and BASE hold: tenant 0's Micro-LoRA
 * (always live, so always saved) and the Base-LoRA, A and Bt as floats. An engine is created
 * from this shape before the file is loaded into it: a file too small for its shape would have
 * it allocate what the file cannot fill (a few hundred bytes naming gigabytes). */
static sona_status shape_fits(const sona_engine_config *c, const sona_rbuf sec[SECTIONS])
{
    const double micro = 8.0 * c->micro_rank * c->hidden, base = 8.0 * c->hidden * c->base_rank * c->base_layers;
    if ((double)sec[2].len < 8.0 + micro || (double)sec[3].len < base)
        return eng_fail(NULL, SONA_E_CORRUPT,
                        "sona_state_config: the shape (hidden %u, micro rank %u, base rank %u x %u layers) needs "
                        "%.0f + %.0f bytes of adapters; the file holds %zu + %zu",
                        c->hidden, c->micro_rank, c->base_rank, c->base_layers, micro, base, sec[2].len, sec[3].len);
    return SONA_OK;
}

sona_status sona_state_config(const char *path, sona_engine_config *out)
{
    if (!path || !out)
        return eng_fail(NULL, SONA_E_NULL, "%s: NULL argument", __func__);
    uint8_t *buf;
    size_t len;
    sona_status st = eng_read_whole_file(NULL, "sona_state_config", path, &buf, &len);
    if (st != SONA_OK)
        return st;
    sona_rbuf sec[SECTIONS];
    uint32_t version;
    st = read_sections(NULL, "sona_state_config", buf, len, sec, &version);
    sona_engine_config c;
    if (st == SONA_OK && eng_config_read(&sec[0], &c) != 0) /* CONF: the first section */
        st = eng_fail(NULL, SONA_E_CORRUPT, "%s: bad configuration section", __func__);
    if (st == SONA_OK)
        st = shape_fits(&c, sec);
    if (st == SONA_OK)
        *out = c;
    free(buf);
    return st;
}
