/* SPDX-License-Identifier: MIT */
/* Reading a whole file back in tests (saved states, exported adapters). */
#ifndef SONA_TEST_FILES_H
#define SONA_TEST_FILES_H

#include <stddef.h>

/* The file's bytes in a malloc'd buffer with a '\0' after them (so text parses as a string), and
 * their count in *len; NULL when it cannot be read. */
char *test_read_file(const char *path, size_t *len);

#endif
