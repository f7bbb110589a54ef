/* The neon CPU variant (NEON (aarch64 Advanced SIMD)). Compiled with its own ISA flags; chosen at run time only when
 * the host has the features. Ops left NULL here run the scalar code. */
#include "cpu/cpu.h"

#if defined(__aarch64__)

const sona_backend sona_cpu_neon = {
    .name = "neon",
    .device = "host CPU, NEON (aarch64 Advanced SIMD)",
    .host_memory = 1,
    .supports = sona_cpu_supports,
    .alloc = sona_host_alloc,
    .free = sona_host_free,
    .upload = sona_host_upload,
    .download = sona_host_download,
    .sync = sona_host_sync,
};

#endif
