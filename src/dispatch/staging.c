/* SPDX-License-Identifier: MIT */
#include "dispatch/staging.h"

sona_status sona_staging_put(const sona_backend *be, sona_staging *s, const void *src, size_t bytes,
                             void **out)
{
    if (s->cap < bytes) {
        sona_staging_free(be, s);
        if (be->alloc(be->ctx, bytes, &s->buf) != SONA_OK) {
            s->buf = NULL;
            return SONA_E_NOMEM;
        }
        s->cap = bytes;
    }
    *out = s->buf;
    if (src && bytes && be->upload(be->ctx, s->buf, 0, src, bytes) != SONA_OK)
        return SONA_E_BACKEND;
    return SONA_OK;
}

void sona_staging_free(const sona_backend *be, sona_staging *s)
{
    if (s->buf)
        be->free(be->ctx, s->buf);
    s->buf = NULL;
    s->cap = 0;
}
