/* SPDX-License-Identifier: MIT */
#include "cpu/cpu.h"

#include <stdlib.h>
#include <string.h>

sona_status sona_host_alloc(void *ctx, size_t bytes, void **buf)
{
    (void)ctx;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    *buf = aligned_alloc(64, rounded ? rounded : 64);
    return *buf ? SONA_OK : SONA_E_NOMEM;
}

void sona_host_free(void *ctx, void *buf)
{
    (void)ctx;
    free(buf);
}

sona_status sona_host_upload(void *ctx, void *buf, size_t offset, const void *src, size_t bytes)
{
    (void)ctx;
    memcpy((char *)buf + offset, src, bytes);
    return SONA_OK;
}

sona_status sona_host_download(void *ctx, void *dst, const void *buf, size_t offset, size_t bytes)
{
    (void)ctx;
    memcpy(dst, (const char *)buf + offset, bytes);
    return SONA_OK;
}

sona_status sona_host_sync(void *ctx)
{
    (void)ctx;
    return SONA_OK;
}

void sona_topk_insert(int32_t *idx, float *score, uint32_t k, uint32_t *len, int32_t i, float s)
{
    uint32_t n = *len;
    if (n == k && !(s > score[k - 1]))
        return;
    uint32_t pos = n < k ? n : k - 1;
    /* Candidates arrive in index order, so an equal score stays behind the earlier one. */
    while (pos > 0 && s > score[pos - 1]) {
        score[pos] = score[pos - 1];
        idx[pos] = idx[pos - 1];
        pos--;
    }
    score[pos] = s;
    idx[pos] = i;
    if (n < k)
        *len = n + 1;
}
