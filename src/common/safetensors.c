/* SPDX-License-Identifier: MIT */
/* The safetensors writer (see safetensors.h). */
#include "common/safetensors.h"

#include <stdio.h>

size_t sona_utf8_char_len(const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned lo = 0x80, hi = 0xbf; /* the second byte's range: narrower after E0, ED, F0, F4 */
    size_t n;
    if (u[0] < 0x80)
        return 1;
    if (u[0] >= 0xc2 && u[0] <= 0xdf)
        n = 2;
    else if (u[0] >= 0xe0 && u[0] <= 0xef) {
        n = 3;
        lo = u[0] == 0xe0 ? 0xa0 : 0x80; /* no overlong forms */
        hi = u[0] == 0xed ? 0x9f : 0xbf; /* no UTF-16 surrogates */
    } else if (u[0] >= 0xf0 && u[0] <= 0xf4) {
        n = 4;
        lo = u[0] == 0xf0 ? 0x90 : 0x80;
        hi = u[0] == 0xf4 ? 0x8f : 0xbf; /* nothing above U+10FFFF */
    } else
        return 0;
    if (u[1] < lo || u[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (u[i] < 0x80 || u[i] > 0xbf)
            return 0;
    return n;
}

int sona_utf8_valid(const char *s)
{
    for (size_t n; *s; s += n)
        if (!(n = sona_utf8_char_len(s)))
            return 0;
    return 1;
}

void sona_wbuf_json_string(sona_wbuf *w, const char *s)
{
    sona_wbuf_put(w, "\"", 1);
    for (const char *c = s; *c;) {
        const unsigned char u = (unsigned char)*c;
        const size_t n = sona_utf8_char_len(c);
        char esc[8];
        if (u == '"' || u == '\\') {
            esc[0] = '\\';
            esc[1] = (char)u;
            sona_wbuf_put(w, esc, 2);
        } else if (u < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", u);
            sona_wbuf_put(w, esc, 6);
        } else if (n == 0) { /* not UTF-8: JSON must be, so the replacement character */
            sona_wbuf_put(w, "\\ufffd", 6);
            c++;
            continue;
        } else {
            sona_wbuf_put(w, c, n);
            c += n;
            continue;
        }
        c++;
    }
    sona_wbuf_put(w, "\"", 1);
}

void sona_safetensors_encode(sona_wbuf *w, const sona_tensor_f32 *t, uint32_t n, const char *metadata)
{
    const size_t length_at = w->len;
    sona_wbuf_u64(w, 0); /* the header's length, filled in below */
    const size_t header_at = w->len;
    sona_wbuf_text(w, "{");
    if (metadata) {
        sona_wbuf_text(w, "\"__metadata__\":{\"format\":");
        sona_wbuf_json_string(w, metadata);
        sona_wbuf_text(w, "}");
    }
    uint64_t offset = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint64_t bytes = (uint64_t)t[i].rows * t[i].cols * sizeof(float);
        char shape[128];
        snprintf(shape, sizeof shape, ":{\"dtype\":\"F32\",\"shape\":[%u,%u],\"data_offsets\":[%llu,%llu]}",
                 t[i].rows, t[i].cols, (unsigned long long)offset, (unsigned long long)(offset + bytes));
        sona_wbuf_text(w, metadata || i ? "," : "");
        sona_wbuf_json_string(w, t[i].name);
        sona_wbuf_text(w, shape);
        offset += bytes;
    }
    sona_wbuf_text(w, "}");
    while ((w->len - header_at) % 8)
        sona_wbuf_text(w, " ");
    if (w->oom)
        return;
    const uint64_t header_len = w->len - header_at;
    sona_wbuf_patch_u64(w, length_at, header_len);
    for (uint32_t i = 0; i < n; i++)
        sona_wbuf_floats(w, t[i].data, (size_t)t[i].rows * t[i].cols);
}
