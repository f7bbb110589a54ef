/* SPDX-License-Identifier: MIT */
/* Recursive-descent JSON parser (RFC 8259) with a nesting limit. */
#include "json_read.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { JSON_MAX_DEPTH = 64 };

typedef struct parser {
    const char *start, *p;
    char *err;
    size_t err_len;
    int failed;
} parser;

static int fail(parser *ps, const char *what)
{
    if (!ps->failed)
        snprintf(ps->err, ps->err_len, "JSON error at offset %ld: %s", (long)(ps->p - ps->start), what);
    ps->failed = 1;
    return -1;
}

static void skip_ws(parser *ps)
{
    while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')
        ps->p++;
}

static int hex4(const char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        const char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static size_t utf8_encode(unsigned cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Parses a string at ps->p (on the opening quote) into a new malloc'd buffer. */
static char *parse_string(parser *ps)
{
    ps->p++; /* opening quote */
    /* The decoded string is never longer than its source. */
    const char *end = ps->p;
    while (*end && *end != '"')
        end += (*end == '\\' && end[1]) ? 2 : 1;
    if (*end != '"') {
        fail(ps, "unterminated string");
        return NULL;
    }
    char *out = malloc((size_t)(end - ps->p) + 1), *o = out;
    if (!out) {
        fail(ps, "out of memory");
        return NULL;
    }
    while (*ps->p != '"') {
        const unsigned char c = (unsigned char)*ps->p;
        if (c < 0x20) {
            free(out);
            fail(ps, "control character in string");
            return NULL;
        }
        if (c != '\\') {
            *o++ = (char)c;
            ps->p++;
            continue;
        }
        const char e = ps->p[1];
        ps->p += 2;
        switch (e) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (hex4(ps->p, &cp) != 0)
                goto bad_escape;
            ps->p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && ps->p[0] == '\\' && ps->p[1] == 'u' &&
                hex4(ps->p + 2, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                ps->p += 6;
            }
            /* \uXXXX is 6 source bytes and at most 3 output bytes; a pair is 12 and 4. */
            o += utf8_encode(cp, o);
            break;
        }
        default:
            goto bad_escape;
        }
    }
    ps->p++; /* closing quote */
    *o = '\0';
    return out;

bad_escape:
    free(out);
    fail(ps, "bad escape in string");
    return NULL;
}

static int parse_value(parser *ps, json_value *v, int depth);

static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t cap2 = *cap ? 2 * *cap : 8;
    void *p = realloc(*arr, cap2 * elem);
    if (!p)
        return -1;
    *arr = p;
    *cap = cap2;
    return 0;
}

static int parse_container(parser *ps, json_value *v, int depth, int is_object)
{
    const char close = is_object ? '}' : ']';
    v->type = is_object ? JSON_OBJECT : JSON_ARRAY;
    ps->p++;
    skip_ws(ps);
    if (*ps->p == close) {
        ps->p++;
        return 0;
    }
    size_t cap_items = 0, cap_keys = 0;
    for (;;) {
        skip_ws(ps);
        char *key = NULL;
        if (is_object) {
            if (*ps->p != '"')
                return fail(ps, "expected a member name");
            if (!(key = parse_string(ps)))
                return -1;
            skip_ws(ps);
            if (*ps->p != ':') {
                free(key);
                return fail(ps, "expected ':'");
            }
            ps->p++;
            if (grow((void **)&v->keys, &cap_keys, v->count + 1, sizeof *v->keys) != 0) {
                free(key);
                return fail(ps, "out of memory");
            }
        }
        if (grow((void **)&v->items, &cap_items, v->count + 1, sizeof *v->items) != 0) {
            free(key);
            return fail(ps, "out of memory");
        }
        if (is_object)
            v->keys[v->count] = key;
        memset(&v->items[v->count], 0, sizeof *v->items);
        v->count++; /* counted before parsing, so json_free releases a half-parsed member */
        if (parse_value(ps, &v->items[v->count - 1], depth + 1) != 0)
            return -1;
        skip_ws(ps);
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == close) {
            ps->p++;
            return 0;
        }
        return fail(ps, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int parse_value(parser *ps, json_value *v, int depth)
{
    if (depth > JSON_MAX_DEPTH)
        return fail(ps, "nested too deeply");
    skip_ws(ps);
    const char c = *ps->p;
    if (c == '{' || c == '[')
        return parse_container(ps, v, depth, c == '{');
    if (c == '"') {
        v->type = JSON_STRING;
        return (v->string = parse_string(ps)) ? 0 : -1;
    }
    static const struct {
        const char *word;
        json_type type;
        int boolean;
    } words[] = {{"true", JSON_BOOL, 1}, {"false", JSON_BOOL, 0}, {"null", JSON_NULL, 0}};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        const size_t n = strlen(words[i].word);
        if (!strncmp(ps->p, words[i].word, n)) {
            v->type = words[i].type;
            v->boolean = words[i].boolean;
            ps->p += n;
            return 0;
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        char *end;
        v->type = JSON_NUMBER;
        v->number = strtod(ps->p, &end);
        if (end == ps->p)
            return fail(ps, "bad number");
        ps->p = end;
        return 0;
    }
    return fail(ps, c ? "unexpected character" : "unexpected end of input");
}

int json_parse(const char *text, json_value *out, char *err, size_t err_len)
{
    memset(out, 0, sizeof *out);
    parser ps = {.start = text, .p = text, .err = err, .err_len = err_len};
    if (err_len)
        err[0] = '\0';
    if (parse_value(&ps, out, 0) == 0) {
        skip_ws(&ps);
        if (*ps.p == '\0')
            return 0;
        fail(&ps, "trailing characters after the document");
    }
    json_free(out);
    return -1;
}

void json_free(json_value *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->count; i++) {
        json_free(&v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->string);
    memset(v, 0, sizeof *v);
}

const json_value *json_get(const json_value *v, const char *key)
{
    if (!v || v->type != JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < v->count; i++)
        if (!strcmp(v->keys[i], key))
            return &v->items[i];
    return NULL;
}

const char *json_get_str(const json_value *v, const char *key, const char *fallback)
{
    const json_value *m = json_get(v, key);
    return m && m->type == JSON_STRING ? m->string : fallback;
}

double json_get_num(const json_value *v, const char *key, double fallback)
{
    const json_value *m = json_get(v, key);
    return m && m->type == JSON_NUMBER ? m->number : fallback;
}
