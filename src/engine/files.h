/* SPDX-License-Identifier: MIT */
/* The engine's files (files.c): written atomically, read whole, temporaries cleaned up. */
#ifndef SONA_ENGINE_FILES_H
#define SONA_ENGINE_FILES_H

#include "sona/engine.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* fsyncs the directory holding path (best effort), so that a rename into it is durable. */
void eng_sync_parent_dir(const char *path);
/* Writes len bytes to path atomically: a temporary file in the same directory (nameless where
 * O_TMPFILE works), fsync, rename, fsync of the directory (a crash leaves the old file or the new
 * one); then removes temporaries that killed writers of path left. The file gets `mode` (learned
 * state 0600: the owner's; exports 0644: read by a server). Failures are reported on e as
 * "caller: ...". */
sona_status eng_write_file_atomic(sona_engine *e, const char *caller, const char *path, const void *data,
                                  size_t len, mode_t mode);
/* The whole of the regular file at path in a malloc'd buffer (a FIFO, device or directory is
 * refused without blocking); failures reported on e as "caller: ...". */
sona_status eng_read_whole_file(sona_engine *e, const char *caller, const char *path, uint8_t **out,
                                size_t *out_len);
struct timespec;
/* A temporary name beside path, "DIR/.sona-HHHHHHHH-PID-XXXXXX" (for mkstemp/mkdtemp): short
 * whatever path's length, and recognised by eng_remove_stale_temps(path). NULL: out of memory. */
char *eng_temp_name(const char *path);
/* Removes the temporaries of path (files, or an export's directories of files) that a writer
 * which no longer runs left, owned by this user and older than since. */
void eng_remove_stale_temps(const char *path, const struct timespec *since);

#endif
