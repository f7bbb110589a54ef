/* SPDX-License-Identifier: MIT */
/* Writes float32 matrices in the safetensors format (Hugging Face): a little-endian u64 header
 * length, a JSON header naming each tensor's dtype, shape and byte range, then the tensors' bytes,
 * row-major and contiguous in header order. The format is defined little-endian; the library
 * only builds for little-endian hosts (export.c checks). */
#ifndef SONA_COMMON_SAFETENSORS_H
#define SONA_COMMON_SAFETENSORS_H

#include "common/serial.h"

#include <stddef.h>
#include <stdint.h>

typedef struct sona_tensor_f32 {
    const char *name;    /* any UTF-8; escaped for JSON here */
    uint32_t rows, cols; /* shape [rows, cols] */
    const float *data;   /* rows * cols values, row-major */
} sona_tensor_f32;

/* Appends the whole file for tensors t[0..n-1] to w (w->oom set when an allocation failed). The
 * header is padded with spaces to a multiple of 8 bytes, so the tensors' bytes start aligned;
 * `metadata` (NULL = none) is written as the "__metadata__" entry {"format": metadata}. */
void sona_safetensors_encode(sona_wbuf *w, const sona_tensor_f32 *t, uint32_t n, const char *metadata);

/* Appends s as a JSON string: quoted, with quotes, backslashes and control characters escaped,
 * and each byte that is not part of a valid UTF-8 character written as U+FFFD. */
void sona_wbuf_json_string(sona_wbuf *w, const char *s);

/* The length (1-4) of the valid UTF-8 character s starts with (an ASCII byte, NUL included: 1),
 * or 0 when it is not one (overlong forms, surrogates and code points above U+10FFFF are not). */
size_t sona_utf8_char_len(const char *s);
/* 1 when the NUL-terminated s is valid UTF-8, else 0. */
int sona_utf8_valid(const char *s);

#endif
