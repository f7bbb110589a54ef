/* SPDX-License-Identifier: MIT */
/* A growable buffer on a backend for staging a call's inputs and outputs: reallocated only when
 * a call needs more than it holds, so steady-state calls allocate nothing. */
#ifndef SONA_DISPATCH_STAGING_H
#define SONA_DISPATCH_STAGING_H

#include "backend/ops.h"

typedef struct sona_staging {
    void *buf;
    size_t cap;
} sona_staging;

/* Makes s hold at least `bytes` (its contents are lost when it grows) and uploads src[bytes] to
 * its start unless src is NULL; *out = the buffer. SONA_E_NOMEM when the allocation fails,
 * SONA_E_BACKEND when the upload does (be->last_error says why). */
sona_status sona_staging_put(const sona_backend *be, sona_staging *s, const void *src, size_t bytes,
                             void **out);
/* Frees the buffer; s is then empty. */
void sona_staging_free(const sona_backend *be, sona_staging *s);

#endif
