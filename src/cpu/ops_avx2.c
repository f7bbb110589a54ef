/* The avx2 CPU variant (AVX2 + FMA). Compiled with its own ISA flags; chosen at run time only when
 * the host has the features. Ops left NULL here run the scalar code. */
#include "cpu/cpu.h"

#if defined(__x86_64__) || defined(__i386__)

const sona_backend sona_cpu_avx2 = {
    .name = "avx2",
    .device = "host CPU, AVX2 + FMA",
    .host_memory = 1,
    .supports = sona_cpu_supports,
    .alloc = sona_host_alloc,
    .free = sona_host_free,
    .upload = sona_host_upload,
    .download = sona_host_download,
    .sync = sona_host_sync,
};

#endif
