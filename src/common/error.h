/* SPDX-License-Identifier: MIT */
/* Error reporting: a status plus a message kept on the handle (or per thread without one). */
#ifndef SONA_COMMON_ERROR_H
#define SONA_COMMON_ERROR_H

#include "sona/common.h"

typedef struct sona_errbuf {
    char msg[256];
} sona_errbuf;

/* Formats the message into e (into the thread's buffer when e is NULL) and returns st. */
sona_status sona_fail(sona_errbuf *e, sona_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clears the message (on success paths that want "" after a failure). */
static inline void sona_clear_error(sona_errbuf *e) { e->msg[0] = '\0'; }

#endif /* SONA_COMMON_ERROR_H */
