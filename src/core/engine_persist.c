/* SPDX-License-Identifier: MIT */
/* sona_save / sona_load: the engine's learned state as one versioned, checksummed file.
 *
 * Layout (all integers and floats in the writer's byte order, recorded by the header):
 *   header:  magic "SONASTAT" (8 bytes), u32 format version, u32 byte-order mark 0x01020304,
 *            u32 section count, u32 CRC-32 of the 20 bytes before it
 *   section: u32 tag, u32 zero, u64 payload length, u32 CRC-32 of the payload, payload
 * Sections, in this order: CONF (shape and hyperparameters), STAT (counters, baseline), TENA
 * (u32 count, then per live tenant its id and adapter record), BASE (the Base-LoRA's adapter
 * record), PATT (patterns; the HNSW index is rebuilt on load), QUEU (version 2 on: the trajectories queued for loop B, oldest
 * first: u64 the engine's next trajectory id, u32 count, then each as core/trajectory_internal.h
 * writes it, its vectors' encoded bytes as held), BANK (version 3 on: u32 count 13, the bank's
 * counters as u64 in sona_bank_stats order from trajectories_added to searches, then u64 the
 * next pattern id, above every pattern's), DREA (version 3 on: loop C's dream visits, u32
 * count, then per pattern id in increasing order u64 id (below the next pattern id), u32 visits
 * (>= 1)), BASL (version 4 on: the quality baselines, each as f32 mean, f32 variance, u32
 * count: the engine-wide one; u32 regions (ENG_REGIONS), u32 layers, then layers x regions of
 * Base-LoRA's; u32 tenants, then per tenant id in increasing order u32 id (a tenant of TENA)
 * and its regions). An EWC++ record (engine_ewc.c): u32 present; when 1, u32 parameter count n, u32
 * tasks, n floats running Fisher, per task n floats theta* and n floats Fisher, then (version 3
 * on) the boundary detector: u64 samples, f64 short mean, long mean, long variance, u64
 * boundaries. An adapter record (TENA's after its u32 tenant id, BASE's): A and Bt as floats,
 * its EWC++ record, then (version 3 on) u32 signals since the last apply (loop A's
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
#define _GNU_SOURCE /* O_TMPFILE */
#include "core/engine_internal.h"

#include "core/dream.h"
#include "core/engine_config.h"
#include "core/lora_internal.h"
#include "core/serial.h"
#include "core/trajectory_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if SONA_HAVE_ZLIB
#include <zlib.h>
#endif

#define STATE_MAGIC "SONASTAT"
#define STATE_VERSION 4u /* 2: QUEU; 3: BANK, DREA, EWC++ detectors; 4: BASL. 1 on are read */
#define BYTE_ORDER_MARK 0x01020304u
#define HEADER_BYTES 24u
#define COUNTERS 13 /* STAT section: the engine's monotonic counters */
#define BANK_COUNTERS 13 /* BANK section: sona_bank_stats' counters */
#define SECTIONS 9
#define SECTION_HEADER_BYTES 20u
#define TAG(a, b, c, d) ((uint32_t)(a) | (uint32_t)(b) << 8 | (uint32_t)(c) << 16 | (uint32_t)(d) << 24)

enum {
    TAG_CONF = TAG('C', 'O', 'N', 'F'),
    TAG_STAT = TAG('S', 'T', 'A', 'T'),
    TAG_TENA = TAG('T', 'E', 'N', 'A'),
    TAG_BASE = TAG('B', 'A', 'S', 'E'),
    TAG_PATT = TAG('P', 'A', 'T', 'T'),
    TAG_QUEU = TAG('Q', 'U', 'E', 'U'),
    TAG_BANK = TAG('B', 'A', 'N', 'K'),
    TAG_DREA = TAG('D', 'R', 'E', 'A'),
    TAG_BASL = TAG('B', 'A', 'S', 'L'),
};

/* The sections in file order, and the format version that brought each. */
enum { SEC_CONF, SEC_STAT, SEC_TENA, SEC_BASE, SEC_PATT, SEC_QUEU, SEC_BANK, SEC_DREA, SEC_BASL };
static const struct {
    uint32_t tag, since;
} section_table[SECTIONS] = {{TAG_CONF, 1}, {TAG_STAT, 1}, {TAG_TENA, 1}, {TAG_BASE, 1},
                             {TAG_PATT, 1}, {TAG_QUEU, 2}, {TAG_BANK, 3}, {TAG_DREA, 3},
                             {TAG_BASL, 4}};

/* ---- CRC-32 -------------------------------------------------------------------------------- */

#if SONA_HAVE_ZLIB
/* zlib's crc32 is the same CRC-32 (ISO-HDLC: reflected 0xEDB88320, initial value and final xor
 * ~0), so files written by the byte-wise loop below verify unchanged; zlib's is table-sliced and
 * several times faster on large sections. crc32_z takes a size_t length (zlib >= 1.2.9). */
uint32_t sona_crc32(uint32_t crc, const void *data, size_t n)
{
    return (uint32_t)crc32_z(crc, data, n);
}
#else
/* Builds without zlib (SONA_ZLIB=OFF: the aarch64 cross check, which has no target zlib): the
 * same CRC a byte at a time. */
static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t sona_crc32(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}
#endif

/* The counters the STAT section holds, in file order; the first three by name. */
enum { COUNTER_RECORDED, COUNTER_PROCESSED, COUNTER_DROPPED };
static void counter_table(sona_engine *e, atomic_uint_fast64_t *out[COUNTERS])
{
    atomic_uint_fast64_t *const t[COUNTERS] = {
        &e->n.recorded, &e->n.processed, &e->n.dropped, &e->n.accepted, &e->n.rejected,
        &e->n.micro_updates, &e->n.base_updates, &e->n.boundaries, &e->n.b_cycles, &e->n.c_cycles,
        &e->n.dreams, &e->n.replayed, &e->n.merged};
    memcpy(out, t, sizeof t);
}

/* The counters the BANK section holds, in file order. */
static void bank_counter_table(sona_bank_stats *s, uint64_t *out[BANK_COUNTERS])
{
    uint64_t *const t[BANK_COUNTERS] = {
        &s->trajectories_added, &s->trajectories_rejected, &s->trajectories_refused_full,
        &s->trajectories_lost, &s->extractions, &s->clusters_found, &s->clusters_dropped_small,
        &s->patterns_created, &s->patterns_merged, &s->patterns_pruned_quality,
        &s->patterns_pruned_stale, &s->patterns_evicted, &s->searches};
    memcpy(out, t, sizeof t);
}

/* ---- writing ------------------------------------------------------------------------------- */

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
    memcpy(w->p + at + 8, &len, sizeof len);
    memcpy(w->p + at + 16, &crc, sizeof crc);
}

/* CONF's fields after the seed, in file order: first the integers (each as a u32), then the
 * floats, both in the order of the one table of the config's fields (core/engine_config.h),
 * which also serves the name-based get/set; fields are only ever appended (a file's counts say
 * how many it has). */
static uint32_t config_count(int ints)
{
    uint32_t n = 0;
    for (size_t i = 0; i < eng_config_field_count; i++)
        if (ints ? eng_config_is_file_int(&eng_config_fields[i]) : eng_config_fields[i].type == ENG_CF_F32)
            n++;
    return n;
}

static void write_config(sona_wbuf *w, const sona_engine_config *c)
{
    sona_wbuf_u64(w, c->seed);
    sona_wbuf_u32(w, config_count(1));
    for (size_t i = 0; i < eng_config_field_count; i++)
        if (eng_config_is_file_int(&eng_config_fields[i]))
            sona_wbuf_u32(w, eng_config_u32_get(c, &eng_config_fields[i]));
    sona_wbuf_u32(w, config_count(0));
    for (size_t i = 0; i < eng_config_field_count; i++)
        if (eng_config_fields[i].type == ENG_CF_F32) {
            float v;
            memcpy(&v, (const char *)c + eng_config_fields[i].offset, sizeof v);
            sona_wbuf_f32(w, v);
        }
}

/* The table's next field of the kind (file integers or floats) from *at on, NULL past the end. */
static const eng_config_field *next_config_field(size_t *at, int ints)
{
    for (; *at < eng_config_field_count; (*at)++) {
        const eng_config_field *f = &eng_config_fields[*at];
        if (ints ? eng_config_is_file_int(f) : f->type == ENG_CF_F32) {
            (*at)++;
            return f;
        }
    }
    return NULL;
}

/* An adapter set: weights, EWC++, then (version 3 on) loop A's state between applies: the
 * signals since the last apply, and the gradients they accumulated with each adapter's count. */
/* CONF's payload into *c: the default preset's values for what the file does not hold (fields
 * newer than it; state_path ""), its values for the rest, fields it has and this library does not
 * know skipped. 0, or -1 when the payload is malformed (fewer than the 5 shape fields, or short). */
static int decode_config(sona_rbuf *r, sona_engine_config *c)
{
    const uint64_t seed = sona_rbuf_u64(r);
    const uint32_t n_ints = sona_rbuf_u32(r);
    if (r->bad || n_ints < 5 || !sona_rbuf_has(r, n_ints, sizeof(uint32_t)))
        return -1;
    const uint32_t hidden = sona_rbuf_u32(r);
    sona_engine_config_default(c, SONA_PRESET_DEFAULT, hidden);
    c->seed = seed;
    size_t at = 0;
    (void)next_config_field(&at, 1); /* hidden, read above */
    for (uint32_t i = 1; i < n_ints; i++) {
        const uint32_t v = sona_rbuf_u32(r);
        const eng_config_field *f = next_config_field(&at, 1);
        if (f)
            eng_config_u32_set(c, f, v);
    }
    const uint32_t n_floats = sona_rbuf_u32(r);
    at = 0;
    for (uint32_t i = 0; !r->bad && i < n_floats; i++) {
        const float v = sona_rbuf_f32(r);
        const eng_config_field *f = next_config_field(&at, 0);
        if (f)
            memcpy((char *)c + f->offset, &v, sizeof v);
    }
    return r->bad ? -1 : 0;
}

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
    sona_wbuf_put(w, counts, c->count * sizeof *counts);
    sona_wbuf_floats(w, scratch, 2 * n);
    free(counts);
}

static void write_bank_counters(sona_wbuf *w, const sona_bank *bank)
{
    sona_bank_stats bs;
    uint64_t *counters[BANK_COUNTERS];
    sona_bank_stats_get(bank, &bs);
    bank_counter_table(&bs, counters);
    sona_wbuf_u32(w, BANK_COUNTERS);
    for (int i = 0; i < BANK_COUNTERS; i++)
        sona_wbuf_u64(w, *counters[i]);
    sona_wbuf_u64(w, sona_bank_next_id(bank));
}

static int by_id(const void *a, const void *b)
{
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The visit counts by increasing id: one file for one state, whatever the hash table's order. */
static void write_dream_visits(sona_wbuf *w, const eng_dream_state *d)
{
    const uint32_t n = d ? d->visits.count : 0;
    if (n == 0) {
        sona_wbuf_u32(w, 0);
        return;
    }
    uint64_t *ids = malloc(n * sizeof *ids);
    if (!ids) {
        w->oom = 1;
        return;
    }
    uint32_t k = 0;
    for (uint64_t cell = 0; cell <= d->visits.mask; cell++)
        if (d->visits.vals[cell] != SONA_IDMAP_EMPTY)
            ids[k++] = d->visits.keys[cell];
    qsort(ids, k, sizeof *ids, by_id);
    sona_wbuf_u32(w, k);
    for (uint32_t i = 0; i < k; i++) {
        sona_wbuf_u64(w, ids[i]);
        sona_wbuf_u32(w, sona_idmap_get(&d->visits, ids[i]));
    }
    free(ids);
}

static void write_baseline(sona_wbuf *w, const sona_signal_baseline *b)
{
    sona_wbuf_f32(w, b->mean);
    sona_wbuf_f32(w, b->var);
    sona_wbuf_u32(w, b->count);
}

/* BASL: the engine-wide quality baseline, Base-LoRA's per layer and region, each live tenant's
 * per region (caller holds cycle_mu: Base-LoRA's are loop B's). */
static void write_baselines(sona_wbuf *w, sona_engine *e, const sona_signal_baseline *quality)
{
    write_baseline(w, quality);
    sona_wbuf_u32(w, ENG_REGIONS);
    sona_wbuf_u32(w, e->cfg.base_layers);
    for (size_t i = 0; i < (size_t)e->cfg.base_layers * ENG_REGIONS; i++)
        write_baseline(w, &e->base_baselines[i]);
    const size_t count_at = w->len;
    uint32_t live = 0;
    sona_wbuf_u32(w, live);
    for (uint32_t i = 0; i < e->cfg.max_tenants; i++) {
        eng_tenant *t = &e->tenants[i];
        pthread_mutex_lock(&t->mu);
        if (atomic_load(&t->live)) {
            sona_wbuf_u32(w, i);
            for (uint32_t r = 0; r < ENG_REGIONS; r++)
                write_baseline(w, &t->baselines[r]);
            live++;
        }
        pthread_mutex_unlock(&t->mu);
    }
    if (!w->oom)
        memcpy(w->p + count_at, &live, sizeof live);
}


/* Serialises the whole state into w. The caller holds the cycle lock, which keeps loop B, the
 * queue's only consumer, out: the queued trajectories are looked at in place, never taken, while
 * requests may go on recording. Takes each tenant's lock in turn. */
static sona_status serialise(sona_engine *e, sona_wbuf *w)
{
    const sona_engine_config *c = &e->cfg;
    const size_t micro_n = (size_t)c->micro_rank * c->hidden, base_n = micro_n / c->micro_rank *
                                                                        c->base_rank * c->base_layers;
    float *scratch = malloc(2 * (micro_n > base_n ? micro_n : base_n) * sizeof(float));
    const sona_trajectory **queue = malloc(c->buffer_capacity * sizeof *queue);
    if (!scratch || !queue) {
        free(scratch);
        free(queue);
        return SONA_E_NOMEM;
    }
    /* First, so that the counters below can say what this snapshot holds. The id source is read
     * after it: every trajectory seen took its id before it was queued, so all are below. */
    const uint32_t queued = sona_trajectory_buffer_peek(e->buffer, queue, c->buffer_capacity);
    const uint64_t next_id = sona_id_source_peek(e->ids);
    sona_wbuf_put(w, STATE_MAGIC, 8);
    sona_wbuf_u32(w, STATE_VERSION);
    sona_wbuf_u32(w, BYTE_ORDER_MARK);
    sona_wbuf_u32(w, SECTIONS);
    sona_wbuf_u32(w, w->oom ? 0 : sona_crc32(0, w->p, 20));

    size_t s = section_begin(w, TAG_CONF);
    write_config(w, c);
    section_end(w, s);

    s = section_begin(w, TAG_STAT);
    atomic_uint_fast64_t *counters[COUNTERS];
    counter_table(e, counters);
    sona_wbuf_u32(w, COUNTERS);
    for (int i = 0; i < COUNTERS; i++)
        sona_wbuf_u64(w, i == COUNTER_RECORDED ? atomic_load(&e->n.processed) + queued : atomic_load(counters[i]));
    pthread_mutex_lock(&e->quality_mu);
    const sona_signal_baseline quality = e->quality;
    pthread_mutex_unlock(&e->quality_mu);
    sona_wbuf_f32(w, quality.count ? quality.mean : NAN); /* NaN before the first trajectory */
    sona_wbuf_u32(w, atomic_load(&e->last_phi_bits));
    section_end(w, s);

    s = section_begin(w, TAG_TENA);
    uint32_t live = 0;
    for (uint32_t i = 0; i < c->max_tenants; i++)
        live += atomic_load(&e->tenants[i].live) != 0;
    const size_t count_at = w->len;
    sona_wbuf_u32(w, live);
    live = 0;
    for (uint32_t i = 0; i < c->max_tenants; i++) {
        eng_tenant *t = &e->tenants[i];
        pthread_mutex_lock(&t->mu);
        if (atomic_load(&t->live)) {
            sona_wbuf_u32(w, i);
            write_adapter(w, t->lora, t->ewc, t->since_apply, scratch);
            live++;
        }
        pthread_mutex_unlock(&t->mu);
    }
    if (!w->oom) /* a tenant may have come or gone meanwhile: the count is what was written */
        memcpy(w->p + count_at, &live, sizeof live);
    section_end(w, s);

    s = section_begin(w, TAG_BASE);
    write_adapter(w, e->base, e->base_ewc, 0, scratch);
    section_end(w, s);
    free(scratch);

    s = section_begin(w, TAG_PATT);
    const uint32_t np = sona_bank_pattern_count(e->bank);
    sona_wbuf_u32(w, np);
    float *centroid = malloc(c->hidden * sizeof *centroid);
    if (!centroid)
        w->oom = 1;
    for (uint32_t i = 0; i < np && !w->oom; i++) {
        sona_pattern p;
        if (sona_bank_pattern_at(e->bank, i, &p, centroid) != SONA_OK) {
            w->oom = 1;
            break;
        }
        sona_wbuf_u64(w, p.id);
        sona_wbuf_u64(w, p.size);
        sona_wbuf_f64(w, p.total_weight);
        sona_wbuf_f32(w, p.avg_quality);
        sona_wbuf_u64(w, p.access_count);
        sona_wbuf_u64(w, p.created_ms);
        sona_wbuf_u64(w, p.last_access_ms);
        sona_wbuf_floats(w, centroid, c->hidden);
    }
    free(centroid);
    section_end(w, s);

    s = section_begin(w, TAG_QUEU);
    sona_wbuf_u64(w, next_id);
    sona_wbuf_u32(w, queued);
    for (uint32_t i = 0; i < queued; i++)
        sona_trajectory_write(queue[i], w);
    section_end(w, s);
    free(queue);

    s = section_begin(w, TAG_BANK);
    write_bank_counters(w, e->bank);
    section_end(w, s);

    s = section_begin(w, TAG_DREA);
    write_dream_visits(w, e->dream);
    section_end(w, s);

    s = section_begin(w, TAG_BASL);
    write_baselines(w, e, &quality);
    section_end(w, s);
    return w->oom ? SONA_E_NOMEM : SONA_OK;
}

static sona_status write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return SONA_E_IO;
        p += k;
        n -= (size_t)k;
    }
    return SONA_OK;
}

/* ---- temporary files of saves and exports ----------------------------------------------------
 * A save writes a nameless O_TMPFILE in the target's directory, so a save killed while writing
 * leaves nothing; the finished file is linked under a short hidden name and renamed over the
 * target. Where O_TMPFILE or /proc is missing, the data goes into that hidden name directly
 * (mkstemp). The name, ".sona-HHHHHHHH-PID-XXXXXX" (H: FNV-1a of the target's file name, PID: the
 * writer's), has a fixed length, so any name the filesystem takes can be saved, and says whose it
 * was: the next save of the same target removes those left by a writer that has died. */

#define TEMP_PREFIX ".sona-"

/* The length of path without trailing slashes ("dir/" names dir; "/" stays). */
static size_t trimmed_len(const char *path)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    return n;
}

/* Where the last part of path starts (trailing slashes aside). */
static size_t last_part(const char *path)
{
    size_t n = trimmed_len(path);
    while (n > 0 && path[n - 1] != '/')
        n--;
    return n;
}

static uint32_t temp_tag(const char *path)
{
    uint32_t h = 2166136261u;
    for (size_t i = last_part(path), n = trimmed_len(path); i < n; i++)
        h = (h ^ (unsigned char)path[i]) * 16777619u;
    return h;
}

/* The directory part of path ("." when none), malloc'd. */
static char *dir_of(const char *path)
{
    const size_t at = last_part(path);
    return at ? strndup(path, at > 1 ? at - 1 : 1) : strdup(".");
}

char *eng_temp_name(const char *path)
{
    char *dir = dir_of(path);
    if (!dir)
        return NULL;
    const size_t len = strlen(dir) + 64;
    char *tmp = malloc(len);
    if (tmp)
        snprintf(tmp, len, "%s/" TEMP_PREFIX "%08x-%ld-XXXXXX", dir, temp_tag(path), (long)getpid());
    free(dir);
    return tmp;
}

/* Fills the trailing XXXXXX of name with letters no other writer can guess in time. */
static void fill_random(char *name)
{
    static const char abc[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    static _Atomic uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec ^ (uint64_t)getpid() << 32 ^
                 (uint64_t)(uintptr_t)name ^ counter++ * 0xbf58476d1ce4e5b9ull;
    char *x6 = name + strlen(name) - 6;
    for (int i = 0; i < 6; i++) {
        x ^= x >> 31;
        x *= 0x94d049bb133111ebull;
        x ^= x >> 29;
        x6[i] = abc[x % (sizeof abc - 1)];
    }
}

/* Removes what earlier, dead writers of path's temporaries left beside it: entries named like
 * eng_temp_name(path) for another process that no longer exists, owned by this user and last
 * changed before `since` (a directory of an export: the files in it, then itself). */
void eng_remove_stale_temps(const char *path, const struct timespec *since)
{
    char *dir = dir_of(path);
    const int dfd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    free(dir);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        if (dfd >= 0)
            close(dfd);
        return;
    }
    char prefix[32];
    snprintf(prefix, sizeof prefix, TEMP_PREFIX "%08x-", temp_tag(path));
    const size_t plen = strlen(prefix);
    for (const struct dirent *ent; (ent = readdir(d));) {
        if (strncmp(ent->d_name, prefix, plen) != 0)
            continue;
        char *end;
        errno = 0;
        const long pid = strtol(ent->d_name + plen, &end, 10);
        struct stat sb;
        if (errno || pid <= 0 || end[0] != '-' || strlen(end) != 7 || pid == (long)getpid() ||
            (kill((pid_t)pid, 0) == 0 || errno != ESRCH) ||
            fstatat(dfd, ent->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || sb.st_uid != geteuid() ||
            sb.st_mtim.tv_sec > since->tv_sec ||
            (sb.st_mtim.tv_sec == since->tv_sec && sb.st_mtim.tv_nsec >= since->tv_nsec))
            continue;
        if (S_ISREG(sb.st_mode)) {
            unlinkat(dfd, ent->d_name, 0);
        } else if (S_ISDIR(sb.st_mode)) {
            const int sub = openat(dfd, ent->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            DIR *sd = sub >= 0 ? fdopendir(sub) : NULL;
            for (const struct dirent *f; sd && (f = readdir(sd));) {
                struct stat fb;
                if (fstatat(sub, f->d_name, &fb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(fb.st_mode))
                    unlinkat(sub, f->d_name, 0);
            }
            if (sd)
                closedir(sd);
            else if (sub >= 0)
                close(sub);
            unlinkat(dfd, ent->d_name, AT_REMOVEDIR);
        }
    }
    closedir(d);
}

/* The data in a nameless file of path's directory, linked as tmp (its XXXXXX filled in); the
 * open descriptor in *fd. 1 when done, 0 when O_TMPFILE or /proc is not there (fall back), -1 on
 * a failure (errno set). */
static int write_nameless(const char *path, char *tmp, const void *data, size_t len, mode_t mode, int *fd)
{
    *fd = -1;
#ifdef O_TMPFILE
    char *dir = dir_of(path);
    if (!dir)
        return -1;
    const int t = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, mode);
    free(dir);
    if (t < 0)
        return errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL ? 0 : -1;
    *fd = t;
    if (fchmod(t, mode) != 0 || write_all(t, data, len) != SONA_OK || fsync(t) != 0)
        return -1;
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", t);
    for (int tries = 0; tries < 100; tries++) {
        fill_random(tmp);
        if (linkat(AT_FDCWD, proc, AT_FDCWD, tmp, AT_SYMLINK_FOLLOW) == 0)
            return 1;
        if (errno != EEXIST)
            return errno == ENOENT && access("/proc/self/fd", F_OK) != 0 ? 0 : -1;
        memcpy(tmp + strlen(tmp) - 6, "XXXXXX", 6);
    }
    errno = EEXIST;
    return -1;
#else
    (void)path, (void)tmp, (void)data, (void)len, (void)mode;
    return 0;
#endif
}

sona_status eng_write_file_atomic(sona_engine *e, const char *caller, const char *path, const void *data,
                                  size_t len, mode_t mode)
{
    struct timespec start;
    clock_gettime(CLOCK_REALTIME, &start);
    char *tmp = eng_temp_name(path);
    if (!tmp)
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", caller);
    sona_status st = SONA_OK;
    int fd;
    const int nameless = write_nameless(path, tmp, data, len, mode, &fd);
    if (nameless < 0) {
        st = eng_fail(e, SONA_E_IO, "%s: cannot write a temporary file beside %s: %s", caller, path, strerror(errno));
        if (fd >= 0)
            close(fd);
        free(tmp);
        return st;
    }
    if (nameless == 0) {
        if (fd >= 0)
            close(fd);
        memcpy(tmp + strlen(tmp) - 6, "XXXXXX", 6);
        fd = mkstemp(tmp);
        if (fd < 0) {
            st = eng_fail(e, SONA_E_IO, "%s: cannot create a temporary file beside %s: %s", caller, path,
                          strerror(errno));
            free(tmp);
            return st;
        }
        if (fchmod(fd, mode) != 0 || write_all(fd, data, len) != SONA_OK || fsync(fd) != 0)
            st = eng_fail(e, SONA_E_IO, "%s: writing %s failed: %s", caller, tmp, strerror(errno));
    }
    if (close(fd) != 0 && st == SONA_OK)
        st = eng_fail(e, SONA_E_IO, "%s: closing %s failed: %s", caller, tmp, strerror(errno));
    if (st == SONA_OK && rename(tmp, path) != 0)
        st = eng_fail(e, SONA_E_IO, "%s: renaming %s to %s failed: %s", caller, tmp, path, strerror(errno));
    if (st != SONA_OK)
        unlink(tmp);
    else
        eng_sync_parent_dir(path);
    eng_remove_stale_temps(path, &start);
    free(tmp);
    return st;
}

void eng_sync_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *parent = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
    const int fd = parent ? open(parent, O_RDONLY | O_DIRECTORY) : -1;
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(parent);
}


sona_status eng_state_snapshot(sona_engine *e, sona_wbuf *w)
{
    *w = (sona_wbuf){0};
    const sona_status st = serialise(e, w);
    if (st != SONA_OK) {
        free(w->p);
        *w = (sona_wbuf){0};
        return eng_fail(e, st, "sona_save: out of memory serialising the state");
    }
    return SONA_OK;
}

sona_status eng_state_write(sona_engine *e, const char *path, sona_wbuf *w)
{
    const sona_status st = eng_write_file_atomic(e, "sona_save", path, w->p, w->len, 0600);
    free(w->p);
    *w = (sona_wbuf){0};
    return st;
}

sona_status sona_save(sona_engine *e, const char *path)
{
    if (!e || !path)
        return eng_fail(e, SONA_E_NULL, "sona_save: NULL argument");
    sona_wbuf w;
    pthread_mutex_lock(&e->cycle_mu);
    sona_status st = eng_state_snapshot(e, &w);
    pthread_mutex_unlock(&e->cycle_mu);
    return st == SONA_OK ? eng_state_write(e, path, &w) : st;
}

/* ---- loading ------------------------------------------------------------------------------- */

/* Everything a file holds, built into fresh objects before anything of the engine changes. */
typedef struct loaded {
    uint32_t version;           /* the file's format version */
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
    eng_dream_state *dream;     /* version 3 on; NULL when no pattern was visited */
    sona_signal_baseline quality; /* version 4 on; before, the STAT mean alone */
    sona_signal_baseline *base_baselines; /* layers x regions (version 4 on; else all empty) */
    uint32_t *region_tenants;   /* a region record per tenant of ids (version 4 on; else NULL) */
    sona_signal_baseline *tenant_baselines; /* tenants x regions, by TENA's order */
} loaded;

static void loaded_free(loaded *s)
{
    for (uint32_t i = 0; i < s->tenants; i++) {
        if (s->loras)
            sona_lora_destroy(s->loras[i]);
        if (s->ewcs)
            eng_ewc_destroy(s->ewcs[i]);
    }
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
    eng_dream_state_free(s->dream);
}

static sona_status corrupt(sona_engine *e, const char *what)
{
    return eng_fail(e, SONA_E_CORRUPT, "sona_load: %s", what);
}

static sona_status read_config(sona_engine *e, sona_rbuf *r)
{
    const sona_engine_config *c = &e->cfg;
    sona_engine_config file;
    if (decode_config(r, &file) != 0)
        return corrupt(e, "bad configuration section");
    if (file.hidden != c->hidden || file.micro_rank != c->micro_rank || file.base_rank != c->base_rank ||
        file.base_layers != c->base_layers)
        return eng_fail(e, SONA_E_SIZE,
                        "sona_load: the file is for hidden %u, micro rank %u, base rank %u x %u "
                        "layers; this engine has %u, %u, %u x %u",
                        file.hidden, file.micro_rank, file.base_rank, file.base_layers, c->hidden, c->micro_rank,
                        c->base_rank, c->base_layers);
    return SONA_OK;
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
        sona_rbuf_get(r, counts, c->count * sizeof *counts);
        sona_rbuf_floats(r, g, 2 * n);
        for (uint32_t i = 0; i < c->count; i++)
            total += counts[i];
        if (total == 0)
            st = corrupt(e, "a pending gradient record without signals");
        else if (sona_lora_import_grad(l, g, g + n, counts) != SONA_OK)
            st = corrupt(e, "pending gradients are not finite");
    }
    free(counts);
    free(g);
    return st;
}

/* Reads one adapter set of the engine's shape into a fresh lora (+ EWC++, whose record has the
 * boundary detector from version 3 on, and from then on loop A's pending state). */
static sona_status read_adapter(sona_engine *e, sona_rbuf *r, uint32_t version, int base, sona_lora **lora,
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
    sona_status st = sona_lora_create(&lc, lora);
    if (st == SONA_OK && (st = sona_lora_import(*lora, wts, wts + n)) != SONA_OK)
        st = corrupt(e, "adapter weights are not finite");
    free(wts);
    if (st != SONA_OK)
        return st;
    st = eng_ewc_load(r, *lora, &e->cfg, version, base, ewc);
    if (st != SONA_OK)
        return eng_fail(e, st, "sona_load: EWC++ state: %s", sona_status_str(st));
    *since_apply = 0;
    return version >= 3 ? read_pending(e, r, *lora, since_apply) : SONA_OK;
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
        sona_status st = read_adapter(e, r, s->version, 0, &s->loras[i], &s->ewcs[i], &s->since_apply[i]);
        if (st != SONA_OK)
            return st;
    }
    return SONA_OK;
}

static sona_status read_patterns(sona_engine *e, sona_rbuf *r, loaded *s)
{
    const uint32_t H = e->cfg.hidden, n = sona_rbuf_u32(r);
    const size_t rec = 8 * 6 + 4 + (size_t)H * 4;
    if (!sona_rbuf_has(r, n, rec))
        return corrupt(e, "pattern section is truncated");
    sona_status st = eng_bank_create(&e->cfg, &s->bank);
    if (st != SONA_OK)
        return eng_fail(e, st, "sona_load: creating the pattern bank failed");
    float *centroid = malloc(H * sizeof *centroid);
    if (!centroid)
        return eng_fail(e, SONA_E_NOMEM, "sona_load: out of memory");
    for (uint32_t i = 0; i < n && st == SONA_OK; i++) {
        sona_pattern p = {0};
        p.id = sona_rbuf_u64(r);
        p.size = sona_rbuf_u64(r);
        p.total_weight = sona_rbuf_f64(r);
        p.avg_quality = sona_rbuf_f32(r);
        p.access_count = sona_rbuf_u64(r);
        p.created_ms = sona_rbuf_u64(r);
        p.last_access_ms = sona_rbuf_u64(r);
        sona_rbuf_floats(r, centroid, H);
        if ((st = sona_bank_pattern_restore(s->bank, &p, centroid)) != SONA_OK)
            st = corrupt(e, "a pattern is invalid (duplicate id, zero or non-finite centroid)");
    }
    free(centroid);
    return st;
}

/* The bank's counters and next pattern id, onto the bank read from PATT. */
static sona_status read_bank_counters(sona_engine *e, sona_rbuf *r, loaded *s)
{
    sona_bank_stats bs = {0};
    uint64_t *counters[BANK_COUNTERS];
    bank_counter_table(&bs, counters);
    if (sona_rbuf_u32(r) != BANK_COUNTERS)
        return corrupt(e, "bad bank counter section");
    for (int i = 0; i < BANK_COUNTERS; i++)
        *counters[i] = sona_rbuf_u64(r);
    const uint64_t next_id = sona_rbuf_u64(r);
    if (r->bad)
        return corrupt(e, "bad bank counter section");
    if (sona_bank_restore_counters(s->bank, &bs, next_id) != SONA_OK)
        return corrupt(e, "the bank's next pattern id is not above its patterns' ids");
    return SONA_OK;
}

/* Loop C's dream visits, by pattern id: ids given out by the bank (below its next id), each
 * once, counts of at least one visit. */
static sona_status read_dream_visits(sona_engine *e, sona_rbuf *r, loaded *s)
{
    const uint32_t n = sona_rbuf_u32(r);
    if (!sona_rbuf_has(r, n, 12))
        return corrupt(e, "dream visit section is truncated");
    if (n == 0)
        return SONA_OK;
    if (!(s->dream = calloc(1, sizeof *s->dream)))
        return eng_fail(e, SONA_E_NOMEM, "sona_load: out of memory");
    const uint64_t next_id = sona_bank_next_id(s->bank);
    for (uint32_t i = 0; i < n; i++) {
        const uint64_t id = sona_rbuf_u64(r);
        const uint32_t visits = sona_rbuf_u32(r);
        if (id == 0 || id >= next_id || visits == 0 || visits == SONA_IDMAP_EMPTY ||
            sona_idmap_get(&s->dream->visits, id) != SONA_IDMAP_EMPTY)
            return corrupt(e, "a dream visit count is invalid (pattern id 0, not yet given out or repeated, "
                              "or no visit)");
        if (sona_idmap_put(&s->dream->visits, id, visits) != SONA_OK)
            return eng_fail(e, SONA_E_NOMEM, "sona_load: out of memory");
    }
    return SONA_OK;
}

/* Reads the queued trajectories, *in_file of them. Those beyond this engine's buffer_capacity are
 * checked like the others and let go: the oldest are kept, as a full queue refuses the newest. */
static sona_status read_queue(sona_engine *e, sona_rbuf *r, loaded *s, uint32_t *in_file)
{
    const uint32_t H = e->cfg.hidden;
    s->next_id = sona_rbuf_u64(r);
    const uint32_t n = sona_rbuf_u32(r);
    if (!sona_rbuf_has(r, n, SONA_TRAJECTORY_RECORD_MIN_BYTES))
        return corrupt(e, "queue section is truncated");
    const uint32_t keep = n < e->cfg.buffer_capacity ? n : e->cfg.buffer_capacity;
    if (keep && !(s->queue = calloc(keep, sizeof *s->queue)))
        return eng_fail(e, SONA_E_NOMEM, "sona_load: out of memory");
    *in_file = n;
    for (uint32_t i = 0; i < n; i++) {
        sona_trajectory *t;
        sona_status st = sona_trajectory_read(r, &t);
        if (st != SONA_OK)
            return eng_fail(e, st, "sona_load: queued trajectory %u: %s", i, sona_last_error());
        /* What loop B needs: rows of the engine's width (the file's CONF has it), and ids the
         * restored id source will not hand out again. */
        int ok = sona_trajectory_dim(t) == H && sona_trajectory_id(t) < s->next_id;
        for (uint32_t k = 0; ok && k < sona_trajectory_step_count(t); k++) {
            sona_trajectory_step step;
            ok = sona_trajectory_get_step(t, k, &step) == SONA_OK && step.activations_len == H;
        }
        if (!ok) {
            sona_trajectory_destroy(t);
            return corrupt(e, "a queued trajectory is not of the engine's width, or its id is not below "
                              "the next id");
        }
        if (i < keep)
            s->queue[s->queued++] = t;
        else
            sona_trajectory_destroy(t);
    }
    return SONA_OK;
}

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
        for (int t = 0; t < SECTIONS; t++)
            if (tag == section_table[t].tag && section_table[t].since <= version) {
                if (sec[t].p)
                    return DAMAGED("duplicate section");
                sec[t] = (sona_rbuf){.p = p + r.pos, .len = n};
            }
        r.pos += n;
    }
    if (r.pos != len)
        return DAMAGED("trailing bytes after the last section");
    for (int t = 0; t < SECTIONS; t++)
        if (section_table[t].since <= version && !sec[t].p)
            return DAMAGED("a required section is missing");
    *version_out = version;
    return SONA_OK;
#undef DAMAGED
}

static int read_baseline(sona_rbuf *r, sona_signal_baseline *b)
{
    b->mean = sona_rbuf_f32(r);
    b->var = sona_rbuf_f32(r);
    b->count = sona_rbuf_u32(r);
    return !r->bad && isfinite(b->mean) && isfinite(b->var) && b->var >= 0.0f;
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
    if (!read_baseline(r, &s->quality) || sona_rbuf_u32(r) != ENG_REGIONS || sona_rbuf_u32(r) != L)
        return corrupt(e, "bad baseline section");
    for (size_t i = 0; i < (size_t)L * ENG_REGIONS; i++)
        if (!read_baseline(r, &s->base_baselines[i]))
            return corrupt(e, "bad baseline section");
    const uint32_t n = sona_rbuf_u32(r);
    if (r->bad || n > e->cfg.max_tenants)
        return corrupt(e, "bad baseline section");
    uint32_t at = 0, prev = 0;
    for (uint32_t k = 0; k < n; k++) {
        const uint32_t id = sona_rbuf_u32(r);
        sona_signal_baseline b[ENG_REGIONS];
        for (uint32_t j = 0; j < ENG_REGIONS; j++)
            if (!read_baseline(r, &b[j]))
                return corrupt(e, "bad baseline section");
        if (r->bad || id >= e->cfg.max_tenants || (k && id <= prev))
            return corrupt(e, "bad baseline section (tenant ids)");
        prev = id;
        while (at < s->tenants && s->ids[at] < id)
            at++;
        if (at < s->tenants && s->ids[at] == id) {
            memcpy(s->tenant_baselines + (size_t)at * ENG_REGIONS, b, sizeof b);
            s->region_tenants[at++] = id;
        }
    }
    return SONA_OK;
}

static sona_status parse(sona_engine *e, const uint8_t *p, size_t len, loaded *s)
{
    sona_rbuf sec[SECTIONS];
    uint32_t in_file = 0, base_since; /* the Base-LoRA learns in whole cycles: nothing between applies */
    sona_status st = read_sections(e, "sona_load", p, len, sec, &s->version);
    if (st == SONA_OK)
        st = read_config(e, &sec[SEC_CONF]);
    if (st != SONA_OK)
        return st;
    sona_rbuf *stat = &sec[SEC_STAT];
    const uint32_t nc = sona_rbuf_u32(stat);
    if (nc != COUNTERS)
        return corrupt(e, "bad counter section");
    for (int i = 0; i < COUNTERS; i++)
        s->counters[i] = sona_rbuf_u64(stat);
    s->baseline = sona_rbuf_f32(stat);
    s->phi_bits = sona_rbuf_u32(stat);
    if (stat->bad || isinf(s->baseline))
        return corrupt(e, "bad counter section");
    if ((st = read_tenants(e, &sec[SEC_TENA], s)) != SONA_OK ||
        (st = read_adapter(e, &sec[SEC_BASE], s->version, 1, &s->base, &s->base_ewc, &base_since)) != SONA_OK ||
        (st = read_patterns(e, &sec[SEC_PATT], s)) != SONA_OK)
        return st;
    s->has_queue = s->version >= 2;
    if (s->has_queue && (st = read_queue(e, &sec[SEC_QUEU], s, &in_file)) != SONA_OK)
        return st;
    if (s->version >= 3 && ((st = read_bank_counters(e, &sec[SEC_BANK], s)) != SONA_OK ||
                            (st = read_dream_visits(e, &sec[SEC_DREA], s)) != SONA_OK))
        return st;
    if (s->version >= 4) {
        if ((st = read_baselines(e, &sec[SEC_BASL], s)) != SONA_OK)
            return st;
        if (isnan(s->baseline) != (s->quality.count == 0) || (s->quality.count && s->quality.mean != s->baseline))
            return corrupt(e, "the baseline section does not match the counter section");
    } else if (!isnan(s->baseline)) {
        s->quality = (sona_signal_baseline){.mean = s->baseline, .count = 1}; /* its spread is lost */
    }
    for (int t = 0; t < SECTIONS; t++)
        if (sec[t].bad || (t != SEC_CONF && sec[t].pos != sec[t].len))
            return corrupt(e, "a section's contents do not match its length");
    /* The loaded engine says recorded == processed + queued, as a file of version 2 says of its
     * own snapshot. What the file recorded but the engine will not hold (a version 1 file's whole
     * queue, which it did not keep; what exceeds this engine's buffer_capacity) is counted as
     * dropped instead, so recorded + dropped stays what it was. */
    uint64_t *n = s->counters;
    if (s->has_queue && n[COUNTER_RECORDED] != n[COUNTER_PROCESSED] + in_file)
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
    eng_dream_state_free(e->dream);
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
    loaded s = {0};
    sona_status st = parse(e, data, len, &s);
    if (st == SONA_OK)
        commit(e, &s);
    loaded_free(&s); /* after commit: the engine's previous objects */
    if (st == SONA_OK && sona_trajectory_buffer_len(e->buffer) >= e->cfg.loop_b_threshold)
        eng_kick(e); /* as a request would have: the restored queue is due a cycle */
    return st;
}

/* The whole file at path in a malloc'd buffer; failures reported on e as "caller: ...". */
static sona_status read_whole_file(sona_engine *e, const char *caller, const char *path, uint8_t **out,
                                   size_t *out_len)
{
    /* O_NONBLOCK: a FIFO must not block the open; only a regular file is read (a device such as
     * /dev/zero would fill the memory), and then with blocking reads again. */
    const int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return eng_fail(e, SONA_E_IO, "%s: cannot open %s: %s", caller, path, strerror(errno));
    struct stat sb;
    const int stated = fstat(fd, &sb) == 0;
    if (stated && !S_ISREG(sb.st_mode)) {
        close(fd);
        return eng_fail(e, SONA_E_IO, "%s: %s is not a regular file", caller, path);
    }
    int flags;
    if (!stated || (flags = fcntl(fd, F_GETFL)) == -1 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == -1) {
        const int err = errno;
        close(fd);
        return eng_fail(e, SONA_E_IO, "%s: cannot read %s: %s", caller, path, strerror(err));
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return eng_fail(e, SONA_E_IO, "%s: cannot open %s: %s", caller, path, strerror(errno));
    }
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    sona_status st = SONA_OK;
    for (;;) {
        if (len == cap) {
            cap = cap ? 2 * cap : 1 << 16;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) {
                st = eng_fail(e, SONA_E_NOMEM, "%s: out of memory reading %s", caller, path);
                break;
            }
            buf = nb;
        }
        const size_t k = fread(buf + len, 1, cap - len, f);
        len += k;
        if (k == 0) {
            if (ferror(f))
                st = eng_fail(e, SONA_E_IO, "%s: reading %s failed", caller, path);
            break;
        }
    }
    fclose(f);
    if (st != SONA_OK) {
        free(buf);
        return st;
    }
    *out = buf;
    *out_len = len;
    return SONA_OK;
}

sona_status sona_load(sona_engine *e, const char *path)
{
    if (!e || !path)
        return eng_fail(e, SONA_E_NULL, "sona_load: NULL argument");
    uint8_t *buf;
    size_t len;
    sona_status st = read_whole_file(e, "sona_load", path, &buf, &len);
    if (st == SONA_OK) {
        st = sona_load_buffer(e, buf, len);
        free(buf);
    }
    return st;
}

sona_status sona_state_config(const char *path, sona_engine_config *out)
{
    if (!path || !out)
        return eng_fail(NULL, SONA_E_NULL, "sona_state_config: NULL argument");
    uint8_t *buf;
    size_t len;
    sona_status st = read_whole_file(NULL, "sona_state_config", path, &buf, &len);
    if (st != SONA_OK)
        return st;
    sona_rbuf sec[SECTIONS];
    uint32_t version;
    st = read_sections(NULL, "sona_state_config", buf, len, sec, &version);
    sona_engine_config c;
    if (st == SONA_OK && decode_config(&sec[SEC_CONF], &c) != 0)
        st = eng_fail(NULL, SONA_E_CORRUPT, "sona_state_config: bad configuration section");
    if (st == SONA_OK)
        *out = c;
    free(buf);
    return st;
}
