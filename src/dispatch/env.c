/* SPDX-License-Identifier: MIT */
/* The environment variables that steer dispatch, read here only (docs/environment.md lists
 * every variable the library reads, the GPU modules' own included). */
#include "dispatch/dispatch.h"

#include <pthread.h>
#include <stdlib.h>

static const char *set_or_null(const char *value) { return value && *value ? value : NULL; }

static const char *cpu_variant;
static pthread_once_t cpu_variant_once = PTHREAD_ONCE_INIT;

static void read_cpu_variant(void) { cpu_variant = set_or_null(getenv("SONA_CPU_VARIANT")); }

const char *sona_env_cpu_variant(void)
{
    pthread_once(&cpu_variant_once, read_cpu_variant);
    return cpu_variant;
}

const char *sona_env_backend(void) { return set_or_null(getenv("SONA_BACKEND")); }
