/* SPDX-License-Identifier: MIT */
/* libsona: shared definitions (visibility, version, status codes). */
#ifndef SONA_COMMON_H
#define SONA_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The one visibility macro: every public symbol carries it, everything else is hidden. */
#if defined(_WIN32)
#  if defined(SONA_BUILDING_LIBRARY)
#    define SONA_API __declspec(dllexport)
#  else
#    define SONA_API
#  endif
#elif defined(__GNUC__)
#  define SONA_API __attribute__((visibility("default")))
#else
#  define SONA_API
#endif

/* The one definition of the version: CMakeLists.txt reads these lines (and checks the string). */
#define SONA_VERSION_MAJOR 0
#define SONA_VERSION_MINOR 1
#define SONA_VERSION_PATCH 0
#define SONA_VERSION_NUMBER \
    (SONA_VERSION_MAJOR * 10000 + SONA_VERSION_MINOR * 100 + SONA_VERSION_PATCH)
#define SONA_VERSION_STRING "0.1.0"

/* Run-time version of the loaded library, e.g. "0.1.0"; compare with SONA_VERSION_STRING. */
SONA_API const char *sona_version(void);
/* Run-time SONA_VERSION_NUMBER of the loaded library. */
SONA_API unsigned sona_version_number(void);

typedef enum sona_status {
    SONA_OK = 0,
    SONA_E_NULL,         /* a required pointer argument was NULL */
    SONA_E_INVALID,      /* an argument is out of range (zero size, rank 0, bad index, ...) */
    SONA_E_SIZE,         /* sizes do not match each other or the handle's shape */
    SONA_E_NONFINITE,    /* NaN or Inf in an input */
    SONA_E_NOMEM,        /* an allocation failed */
    SONA_E_UNSUPPORTED,  /* the chosen backend or CPU variant cannot do this on this host */
    SONA_E_UNAVAILABLE,  /* the backend, module, driver or device is not present */
    SONA_E_BACKEND,      /* the backend failed while running (driver error, device lost) */
    SONA_E_IO,           /* reading or writing a file failed */
    SONA_E_CORRUPT,      /* a file or buffer failed its checks (checksum, truncation, format) */
    SONA_E_VERSION,      /* a file was written by an incompatible format version */
    SONA_E_FULL,         /* a bounded container is full and its policy refuses the item */
    SONA_E_EMPTY,        /* nothing to take */
    SONA_E_NOT_FOUND,    /* no such id */
    SONA_E_STATE,        /* the call is not valid in the object's current state */
    SONA_STATUS_COUNT
} sona_status;

/* How a store keeps vectors it holds for later (queued trajectory steps, pattern vectors).
 * F32 is exact; F16 is IEEE half (relative error about 5e-4); Q8 is 8-bit integers in blocks of
 * 32 values with one f32 scale per block (error at most half a step of the block's largest
 * magnitude / 127, outliers costing precision only in their block), about 1.125 bytes a value. */
typedef enum sona_storage {
    SONA_STORAGE_F32 = 0,
    SONA_STORAGE_F16 = 1,
    SONA_STORAGE_Q8 = 2
} sona_storage;

/* A short, static, human-readable description of a status code ("invalid argument", ...). */
SONA_API const char *sona_status_str(sona_status status);

/* The message of the last failed call made by this thread that had no handle to report it on
 * (a failed create, for example). Empty string when none. Thread-local. */
SONA_API const char *sona_last_error(void);

#ifdef __cplusplus
}
#endif
#endif /* SONA_COMMON_H */
