/* SPDX-License-Identifier: MIT */
#include "common/error.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local sona_errbuf thread_error;

static const char *const status_text[SONA_STATUS_COUNT] = {
    [SONA_OK] = "ok",
    [SONA_E_NULL] = "required argument is NULL",
    [SONA_E_INVALID] = "invalid argument",
    [SONA_E_SIZE] = "size mismatch",
    [SONA_E_NONFINITE] = "non-finite value (NaN or Inf) in input",
    [SONA_E_NOMEM] = "out of memory",
    [SONA_E_UNSUPPORTED] = "not supported by the chosen backend or CPU variant",
    [SONA_E_UNAVAILABLE] = "backend not available",
    [SONA_E_BACKEND] = "backend failure",
    [SONA_E_IO] = "I/O error",
    [SONA_E_CORRUPT] = "corrupt or truncated data",
    [SONA_E_VERSION] = "incompatible format version",
    [SONA_E_FULL] = "container full",
    [SONA_E_EMPTY] = "nothing to take",
    [SONA_E_NOT_FOUND] = "not found",
    [SONA_E_STATE] = "invalid in the current state",
};

const char *sona_status_str(sona_status status)
{
    if ((unsigned)status >= SONA_STATUS_COUNT)
        return "unknown status";
    return status_text[status];
}

const char *sona_last_error(void) { return thread_error.msg; }

const char *sona_version(void) { return SONA_VERSION_STRING; }
unsigned sona_version_number(void) { return SONA_VERSION_NUMBER; }

sona_status sona_fail(sona_errbuf *e, sona_status st, const char *fmt, ...)
{
    if (!e)
        e = &thread_error;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return st;
}
