/* The avx512 CPU variant (AVX-512 F/BW/VL). Compiled with its own ISA flags; chosen at run time only when
 * the host has the features. Ops left NULL here run the scalar code. */
#include "cpu/cpu.h"

#if defined(__x86_64__) || defined(__i386__)

const sona_backend sona_cpu_avx512 = {
    .name = "avx512",
    .device = "host CPU, AVX-512 F/BW/VL",
    .host_memory = 1,
    .supports = sona_cpu_supports,
    .alloc = sona_host_alloc,
    .free = sona_host_free,
    .upload = sona_host_upload,
    .download = sona_host_download,
    .sync = sona_host_sync,
};

#endif
