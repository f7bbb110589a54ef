/* SPDX-License-Identifier: MIT */
/* A small JSON reader, enough for `sona bench`'s own reports: parses a whole document into a
 * tree of values. Strings are UTF-8; \u escapes are decoded. */
#ifndef SONA_BENCH_JSON_READ_H
#define SONA_BENCH_JSON_READ_H

#include <stddef.h>

typedef enum json_type { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value {
    json_type type;
    int boolean;
    double number;
    char *string;              /* JSON_STRING */
    struct json_value *items;  /* JSON_ARRAY elements, JSON_OBJECT values */
    char **keys;               /* JSON_OBJECT keys, parallel to items */
    size_t count;
} json_value;

/* Parses text into *out. Returns 0, or -1 with the position and problem in err. */
int json_parse(const char *text, json_value *out, char *err, size_t err_len);
void json_free(json_value *v);

/* The member `key` of an object (NULL when absent or v is not an object). */
const json_value *json_get(const json_value *v, const char *key);
/* The member's string or number, or the fallback when absent or of another type. */
const char *json_get_str(const json_value *v, const char *key, const char *fallback);
double json_get_num(const json_value *v, const char *key, double fallback);

#endif /* SONA_BENCH_JSON_READ_H */
