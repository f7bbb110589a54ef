/* SPDX-License-Identifier: MIT */
/* The safetensors writer (see safetensors.h). */
#include "common/safetensors.h"

#include <stdio.h>

void sona_wbuf_json_string(sona_wbuf *w, const char *s)
{
    sona_wbuf_put(w, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        if (*c == '"' || *c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*c;
            sona_wbuf_put(w, esc, 2);
        } else if (*c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *c);
            sona_wbuf_put(w, esc, 6);
        } else {
            sona_wbuf_put(w, c, 1);
        }
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
