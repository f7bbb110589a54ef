/* SPDX-License-Identifier: MIT */
/* The engine's files: saves and exports written atomically (a crash leaves the old file or the
 * new one, a killed writer leaves nothing that the next save does not remove), and state files
 * read whole, regular files only. */
#define _GNU_SOURCE /* O_TMPFILE */
#include "engine/files.h"

#include "engine/base.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static sona_status write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return SONA_E_IO;
        p += k;
        n -= (size_t)k;
    }
    return SONA_OK;
}

/* ---- temporary files of saves and exports ----------------------------------------------------
 * A save writes a nameless O_TMPFILE in the target's directory, so a save killed while writing
 * leaves nothing; the finished file is linked under a short hidden name and renamed over the
 * target. Where O_TMPFILE or /proc is missing, the data goes into that hidden name directly
 * (mkstemp). The name, ".sona-HHHHHHHH-PID-XXXXXX" (H: FNV-1a of the target's file name, PID: the
 * writer's), has a fixed length, so any name the filesystem takes can be saved, and says whose it
 * was: the next save of the same target removes those left by a writer that has died. */

#define TEMP_PREFIX ".sona-"

/* The length of path without trailing slashes ("dir/" names dir; "/" stays). */
static size_t trimmed_len(const char *path)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    return n;
}

/* Where the last part of path starts (trailing slashes aside). */
static size_t last_part(const char *path)
{
    size_t n = trimmed_len(path);
    while (n > 0 && path[n - 1] != '/')
        n--;
    return n;
}

static uint32_t temp_tag(const char *path)
{
    uint32_t h = 2166136261u;
    for (size_t i = last_part(path), n = trimmed_len(path); i < n; i++)
        h = (h ^ (unsigned char)path[i]) * 16777619u;
    return h;
}

/* The directory part of path ("." when none), malloc'd. */
static char *dir_of(const char *path)
{
    const size_t at = last_part(path);
    return at ? strndup(path, at > 1 ? at - 1 : 1) : strdup(".");
}

char *eng_temp_name(const char *path)
{
    char *dir = dir_of(path);
    if (!dir)
        return NULL;
    const size_t len = strlen(dir) + 64;
    char *tmp = malloc(len);
    if (tmp)
        snprintf(tmp, len, "%s/" TEMP_PREFIX "%08x-%ld-XXXXXX", dir, temp_tag(path), (long)getpid());
    free(dir);
    return tmp;
}

/* Fills the trailing XXXXXX of name with letters no other writer can guess in time. */
static void fill_random(char *name)
{
    static const char abc[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    static _Atomic uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec ^ (uint64_t)getpid() << 32 ^
                 (uint64_t)(uintptr_t)name ^ counter++ * 0xbf58476d1ce4e5b9ull;
    char *x6 = name + strlen(name) - 6;
    for (int i = 0; i < 6; i++) {
        x ^= x >> 31;
        x *= 0x94d049bb133111ebull;
        x ^= x >> 29;
        x6[i] = abc[x % (sizeof abc - 1)];
    }
}

/* Removes what earlier, dead writers of path's temporaries left beside it: entries named like
 * eng_temp_name(path) for another process that no longer exists, owned by this user and last
 * changed before `since` (a directory of an export: the files in it, then itself). */
void eng_remove_stale_temps(const char *path, const struct timespec *since)
{
    char *dir = dir_of(path);
    const int dfd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    free(dir);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        if (dfd >= 0)
            close(dfd);
        return;
    }
    char prefix[32];
    snprintf(prefix, sizeof prefix, TEMP_PREFIX "%08x-", temp_tag(path));
    const size_t plen = strlen(prefix);
    for (const struct dirent *ent; (ent = readdir(d));) {
        if (strncmp(ent->d_name, prefix, plen) != 0)
            continue;
        char *end;
        errno = 0;
        const long pid = strtol(ent->d_name + plen, &end, 10);
        struct stat sb;
        if (errno || pid <= 0 || end[0] != '-' || strlen(end) != 7 || pid == (long)getpid() ||
            (kill((pid_t)pid, 0) == 0 || errno != ESRCH) ||
            fstatat(dfd, ent->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || sb.st_uid != geteuid() ||
            sb.st_mtim.tv_sec > since->tv_sec ||
            (sb.st_mtim.tv_sec == since->tv_sec && sb.st_mtim.tv_nsec >= since->tv_nsec))
            continue;
        if (S_ISREG(sb.st_mode)) {
            unlinkat(dfd, ent->d_name, 0);
        } else if (S_ISDIR(sb.st_mode)) {
            const int sub = openat(dfd, ent->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            DIR *sd = sub >= 0 ? fdopendir(sub) : NULL;
            for (const struct dirent *f; sd && (f = readdir(sd));) {
                struct stat fb;
                if (fstatat(sub, f->d_name, &fb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(fb.st_mode))
                    unlinkat(sub, f->d_name, 0);
            }
            if (sd)
                closedir(sd);
            else if (sub >= 0)
                close(sub);
            unlinkat(dfd, ent->d_name, AT_REMOVEDIR);
        }
    }
    closedir(d);
}

/* The data in a nameless file of path's directory, linked as tmp (its XXXXXX filled in); the
 * open descriptor in *fd. 1 when done, 0 when O_TMPFILE or /proc is not there (fall back), -1 on
 * a failure (errno set). */
static int write_nameless(const char *path, char *tmp, const void *data, size_t len, mode_t mode, int *fd)
{
    *fd = -1;
#ifdef O_TMPFILE
    char *dir = dir_of(path);
    if (!dir)
        return -1;
    const int t = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, mode);
    free(dir);
    if (t < 0)
        return errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL ? 0 : -1;
    *fd = t;
    if (fchmod(t, mode) != 0 || write_all(t, data, len) != SONA_OK || fsync(t) != 0)
        return -1;
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", t);
    for (int tries = 0; tries < 100; tries++) {
        fill_random(tmp);
        if (linkat(AT_FDCWD, proc, AT_FDCWD, tmp, AT_SYMLINK_FOLLOW) == 0)
            return 1;
        if (errno != EEXIST)
            return errno == ENOENT && access("/proc/self/fd", F_OK) != 0 ? 0 : -1;
        memcpy(tmp + strlen(tmp) - 6, "XXXXXX", 6);
    }
    errno = EEXIST;
    return -1;
#else
    (void)path, (void)tmp, (void)data, (void)len, (void)mode;
    return 0;
#endif
}

sona_status eng_write_file_atomic(sona_engine *e, const char *caller, const char *path, const void *data,
                                  size_t len, mode_t mode)
{
    struct timespec start;
    clock_gettime(CLOCK_REALTIME, &start);
    char *tmp = eng_temp_name(path);
    if (!tmp)
        return eng_fail(e, SONA_E_NOMEM, "%s: out of memory", caller);
    sona_status st = SONA_OK;
    int fd;
    const int nameless = write_nameless(path, tmp, data, len, mode, &fd);
    if (nameless < 0) {
        st = eng_fail(e, SONA_E_IO, "%s: cannot write a temporary file beside %s: %s", caller, path, strerror(errno));
        if (fd >= 0)
            close(fd);
        free(tmp);
        return st;
    }
    if (nameless == 0) {
        if (fd >= 0)
            close(fd);
        memcpy(tmp + strlen(tmp) - 6, "XXXXXX", 6);
        fd = mkstemp(tmp);
        if (fd < 0) {
            st = eng_fail(e, SONA_E_IO, "%s: cannot create a temporary file beside %s: %s", caller, path,
                          strerror(errno));
            free(tmp);
            return st;
        }
        if (fchmod(fd, mode) != 0 || write_all(fd, data, len) != SONA_OK || fsync(fd) != 0)
            st = eng_fail(e, SONA_E_IO, "%s: writing %s failed: %s", caller, tmp, strerror(errno));
    }
    if (close(fd) != 0 && st == SONA_OK)
        st = eng_fail(e, SONA_E_IO, "%s: closing %s failed: %s", caller, tmp, strerror(errno));
    if (st == SONA_OK && rename(tmp, path) != 0)
        st = eng_fail(e, SONA_E_IO, "%s: renaming %s to %s failed: %s", caller, tmp, path, strerror(errno));
    if (st != SONA_OK)
        unlink(tmp);
    else
        eng_sync_parent_dir(path);
    eng_remove_stale_temps(path, &start);
    free(tmp);
    return st;
}

void eng_sync_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *parent = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
    const int fd = parent ? open(parent, O_RDONLY | O_DIRECTORY) : -1;
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(parent);
}

sona_status eng_read_whole_file(sona_engine *e, const char *caller, const char *path, uint8_t **out,
                                   size_t *out_len)
{
    /* O_NONBLOCK: a FIFO must not block the open; only a regular file is read (a device such as
     * /dev/zero would fill the memory), and then with blocking reads again. */
    const int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return eng_fail(e, SONA_E_IO, "%s: cannot open %s: %s", caller, path, strerror(errno));
    struct stat sb;
    const int stated = fstat(fd, &sb) == 0;
    if (stated && !S_ISREG(sb.st_mode)) {
        close(fd);
        return eng_fail(e, SONA_E_IO, "%s: %s is not a regular file", caller, path);
    }
    int flags;
    if (!stated || (flags = fcntl(fd, F_GETFL)) == -1 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == -1) {
        const int err = errno;
        close(fd);
        return eng_fail(e, SONA_E_IO, "%s: cannot read %s: %s", caller, path, strerror(err));
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return eng_fail(e, SONA_E_IO, "%s: cannot open %s: %s", caller, path, strerror(errno));
    }
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    sona_status st = SONA_OK;
    for (;;) {
        if (len == cap) {
            cap = cap ? 2 * cap : 1 << 16;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) {
                st = eng_fail(e, SONA_E_NOMEM, "%s: out of memory reading %s", caller, path);
                break;
            }
            buf = nb;
        }
        const size_t k = fread(buf + len, 1, cap - len, f);
        len += k;
        if (k == 0) {
            if (ferror(f))
                st = eng_fail(e, SONA_E_IO, "%s: reading %s failed", caller, path);
            break;
        }
    }
    fclose(f);
    if (st != SONA_OK) {
        free(buf);
        return st;
    }
    *out = buf;
    *out_len = len;
    return SONA_OK;
}
