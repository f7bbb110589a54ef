/* SPDX-License-Identifier: MIT */
#include "cpu/cpu.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Host buffers come zeroed and 64-byte aligned: calloc, with the block's start kept just below
 * the aligned buffer. A large calloc is fresh pages from the kernel, zero without being written,
 * so an adapter set's zero weights and gradients cost nothing until they are used (engine
 * create at hidden 4096 touched 6 MB of zeros before). */
sona_status sona_host_alloc(void *ctx, size_t bytes, void **buf)
{
    (void)ctx;
    *buf = NULL;
    const size_t pad = 64 + sizeof(void *);
    if (bytes > SIZE_MAX - pad)
        return SONA_E_NOMEM;
    char *block = calloc(1, bytes + pad);
    if (!block)
        return SONA_E_NOMEM;
    char *aligned = (char *)(((uintptr_t)block + pad) & ~(uintptr_t)63);
    memcpy(aligned - sizeof(void *), &block, sizeof block);
    *buf = aligned;
    return SONA_OK;
}

void sona_host_free(void *ctx, void *buf)
{
    (void)ctx;
    if (!buf)
        return;
    void *block;
    memcpy(&block, (char *)buf - sizeof(void *), sizeof block);
    free(block);
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
