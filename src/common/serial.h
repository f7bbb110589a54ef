/* SPDX-License-Identifier: MIT */
/* Byte buffers for the state file: a growable writer and a bounds-checked reader. Values are
 * stored in the machine's byte order; the file header records which (see persist.c). */
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
static inline void sona_wbuf_u32(sona_wbuf *w, uint32_t v) { sona_wbuf_put(w, &v, sizeof v); }
static inline void sona_wbuf_u64(sona_wbuf *w, uint64_t v) { sona_wbuf_put(w, &v, sizeof v); }
static inline void sona_wbuf_f32(sona_wbuf *w, float v) { sona_wbuf_put(w, &v, sizeof v); }
static inline void sona_wbuf_f64(sona_wbuf *w, double v) { sona_wbuf_put(w, &v, sizeof v); }
static inline void sona_wbuf_floats(sona_wbuf *w, const float *v, size_t n) { sona_wbuf_put(w, v, n * sizeof *v); }

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
static inline uint32_t sona_rbuf_u32(sona_rbuf *r) { uint32_t v; sona_rbuf_get(r, &v, sizeof v); return v; }
static inline uint64_t sona_rbuf_u64(sona_rbuf *r) { uint64_t v; sona_rbuf_get(r, &v, sizeof v); return v; }
static inline float sona_rbuf_f32(sona_rbuf *r) { float v; sona_rbuf_get(r, &v, sizeof v); return v; }
static inline double sona_rbuf_f64(sona_rbuf *r) { double v; sona_rbuf_get(r, &v, sizeof v); return v; }
static inline int sona_rbuf_floats(sona_rbuf *r, float *v, size_t n) { return sona_rbuf_get(r, v, n * sizeof *v); }
/* Whether n more items of `size` bytes can still be read (guards allocations by counts). */
static inline int sona_rbuf_has(const sona_rbuf *r, uint64_t n, size_t size)
{
    return !r->bad && (size == 0 || n <= (r->len - r->pos) / size);
}

/* CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) of n bytes, continuing from crc
 * (0 to start): zlib's crc32, which libsona links privately (crc32.c). */
uint32_t sona_crc32(uint32_t crc, const void *data, size_t n);

#endif
