/* SPDX-License-Identifier: MIT */
/* Byte buffers for the state file: a growable writer and a bounds-checked reader. Numbers are
 * stored little-endian whatever the host: scalars are composed byte by byte; arrays are copied
 * as they are on a little-endian host (every target libsona builds for: x86-64, aarch64) and
 * swapped element by element on a big-endian one. */
#ifndef SONA_COMMON_SERIAL_H
#define SONA_COMMON_SERIAL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct sona_wbuf {
    uint8_t *p;
    size_t len, cap;
    int oom; /* an allocation failed: the contents are incomplete */
} sona_wbuf;

static inline void sona_wbuf_put(sona_wbuf *w, const void *src, size_t n)
{
    if (w->oom)
        return;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->len + n)
            cap *= 2;
        uint8_t *p = realloc(w->p, cap);
        if (!p) {
            w->oom = 1;
            return;
        }
        w->p = p;
        w->cap = cap;
    }
    memcpy(w->p + w->len, src, n);
    w->len += n;
}
static inline void sona_wbuf_text(sona_wbuf *w, const char *s) { sona_wbuf_put(w, s, strlen(s)); }

#define SONA_HOST_LITTLE_ENDIAN (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)

static inline void sona_le_store(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint64_t sona_le_load(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}
/* Reverses each `size`-byte element of n in place (big-endian hosts only). */
static inline void sona_swap_elements(void *v, size_t n, size_t size)
{
    uint8_t *p = v;
    for (size_t i = 0; i < n; i++, p += size)
        for (size_t a = 0, b = size - 1; a < b; a++, b--) {
            const uint8_t t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

static inline void sona_wbuf_u32(sona_wbuf *w, uint32_t v)
{
    uint8_t b[4];
    sona_le_store(b, v, 4);
    sona_wbuf_put(w, b, 4);
}
static inline void sona_wbuf_u64(sona_wbuf *w, uint64_t v)
{
    uint8_t b[8];
    sona_le_store(b, v, 8);
    sona_wbuf_put(w, b, 8);
}
static inline void sona_wbuf_f32(sona_wbuf *w, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    sona_wbuf_u32(w, u);
}
static inline void sona_wbuf_f64(sona_wbuf *w, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    sona_wbuf_u64(w, u);
}
/* n elements of `size` bytes (2, 4 or 8), each little-endian. */
static inline void sona_wbuf_array(sona_wbuf *w, const void *v, size_t n, size_t size)
{
    const size_t at = w->len;
    sona_wbuf_put(w, v, n * size);
    if (!SONA_HOST_LITTLE_ENDIAN && !w->oom)
        sona_swap_elements(w->p + at, n, size);
}
/* Overwrites a value written earlier at byte offset at (a length or count known only later). */
static inline void sona_wbuf_patch_u32(sona_wbuf *w, size_t at, uint32_t v)
{
    if (!w->oom)
        sona_le_store(w->p + at, v, 4);
}
static inline void sona_wbuf_patch_u64(sona_wbuf *w, size_t at, uint64_t v)
{
    if (!w->oom)
        sona_le_store(w->p + at, v, 8);
}
static inline void sona_wbuf_floats(sona_wbuf *w, const float *v, size_t n) { sona_wbuf_array(w, v, n, sizeof *v); }
static inline void sona_wbuf_u32s(sona_wbuf *w, const uint32_t *v, size_t n) { sona_wbuf_array(w, v, n, sizeof *v); }

typedef struct sona_rbuf {
    const uint8_t *p;
    size_t len, pos;
    int bad; /* a read ran past the end: every later read yields zeros */
} sona_rbuf;

static inline int sona_rbuf_get(sona_rbuf *r, void *dst, size_t n)
{
    if (r->bad || n > r->len - r->pos) {
        r->bad = 1;
        memset(dst, 0, n);
        return 0;
    }
    memcpy(dst, r->p + r->pos, n);
    r->pos += n;
    return 1;
}
static inline uint32_t sona_rbuf_u32(sona_rbuf *r)
{
    uint8_t b[4];
    sona_rbuf_get(r, b, 4);
    return (uint32_t)sona_le_load(b, 4);
}
static inline uint64_t sona_rbuf_u64(sona_rbuf *r)
{
    uint8_t b[8];
    sona_rbuf_get(r, b, 8);
    return sona_le_load(b, 8);
}
static inline float sona_rbuf_f32(sona_rbuf *r)
{
    const uint32_t u = sona_rbuf_u32(r);
    float v;
    memcpy(&v, &u, 4);
    return v;
}
static inline double sona_rbuf_f64(sona_rbuf *r)
{
    const uint64_t u = sona_rbuf_u64(r);
    double v;
    memcpy(&v, &u, 8);
    return v;
}
/* n elements of `size` bytes, each little-endian in the buffer. */
static inline int sona_rbuf_array(sona_rbuf *r, void *v, size_t n, size_t size)
{
    const int ok = sona_rbuf_get(r, v, n * size);
    if (!SONA_HOST_LITTLE_ENDIAN)
        sona_swap_elements(v, n, size);
    return ok;
}
static inline int sona_rbuf_floats(sona_rbuf *r, float *v, size_t n) { return sona_rbuf_array(r, v, n, sizeof *v); }
static inline int sona_rbuf_u32s(sona_rbuf *r, uint32_t *v, size_t n) { return sona_rbuf_array(r, v, n, sizeof *v); }
/* Whether n more items of `size` bytes can still be read (guards allocations by counts). */
static inline int sona_rbuf_has(const sona_rbuf *r, uint64_t n, size_t size)
{
    return !r->bad && (size == 0 || n <= (r->len - r->pos) / size);
}

/* CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) of n bytes, continuing from crc
 * (0 to start): zlib's crc32, which libsona links privately (crc32.c). */
uint32_t sona_crc32(uint32_t crc, const void *data, size_t n);

#endif
