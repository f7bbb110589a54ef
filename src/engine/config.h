/* SPDX-License-Identifier: MIT */
/* The one table of sona_engine_config's fields: the name-based get/set of the public API
 * (sona_engine_config_set and friends) and the state file's CONF section (persist.c)
 * both read it. */
#ifndef SONA_ENGINE_CONFIG_H
#define SONA_ENGINE_CONFIG_H

#include "sona/engine.h"
#include "sona/lora.h"

#include <stddef.h>

typedef enum {
    ENG_CF_U32,     /* uint32_t */
    ENG_CF_INT,     /* int (the on/off switches) */
    ENG_CF_STORAGE, /* sona_storage */
    ENG_CF_U64,     /* uint64_t (the seed) */
    ENG_CF_F32,     /* float */
    ENG_CF_STR      /* char[] (state_path) */
} eng_config_type;

typedef struct eng_config_field {
    const char *name;
    size_t offset;
    size_t size;
    eng_config_type type;
} eng_config_field;

/* Every field of sona_engine_config, once (tests/test_engine_config.c checks that the table
 * tiles the struct). The state file writes the U32, INT and STORAGE fields as u32 in table
 * order, hidden first, then the F32 fields in table order (the seed and state_path apart):
 * a field is only ever appended at the end, never inserted or moved, or older files would load
 * their values into the wrong fields. */
extern const eng_config_field eng_config_fields[];
extern const size_t eng_config_field_count;

/* Whether the field travels in the state file as one of its u32 integers. */
static inline int eng_config_is_file_int(const eng_config_field *f)
{
    return f->type == ENG_CF_U32 || f->type == ENG_CF_INT || f->type == ENG_CF_STORAGE;
}

/* The field's value as the u32 the state file holds (U32, INT, STORAGE fields). */
uint32_t eng_config_u32_get(const sona_engine_config *c, const eng_config_field *f);
void eng_config_u32_set(sona_engine_config *c, const eng_config_field *f, uint32_t v);

struct sona_wbuf;
struct sona_rbuf;
/* The state file's CONF section: the seed, then the file integers (count, values) and the floats
 * (count, values), each in table order. */
void eng_config_write(struct sona_wbuf *w, const sona_engine_config *c);
/* CONF's payload into *c: the default preset's values for what the file does not hold (fields
 * newer than it; state_path ""), its values for the rest, fields it has and this library does
 * not know skipped. 0, or -1 when the payload is malformed (fewer than the 5 shape fields, or
 * short). */
int eng_config_read(struct sona_rbuf *r, sona_engine_config *c);

/* The sona_lora configuration of the engine's Micro (base = 0) or Base-LoRA (base = 1). */
void eng_lora_config(const sona_engine_config *c, int base, sona_lora_config *lc);
/* A new adapter set of that configuration, learning as the engine does (its B steps
 * preconditioned by the code covariance). */
sona_status eng_lora_create(const sona_engine_config *c, int base, sona_lora **out);

/* A tenant's query critic (core/adapt/critic.h) for the engine's regions: made at the first
 * quality-only signal (create), or read from a state file's record (read; 0 when it is bad). */
struct sona_critic;
sona_status eng_critic_create(const sona_engine_config *c, struct sona_critic **out);
int eng_critic_read(const sona_engine_config *c, struct sona_rbuf *r, struct sona_critic **out);

#endif /* SONA_ENGINE_CONFIG_H */
