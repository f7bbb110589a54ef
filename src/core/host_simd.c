#include "core/host_simd.h"

#include "dispatch/dispatch.h"

#include <stdatomic.h>
#include <string.h>

sona_host_isa sona_host_isa_level(void)
{
    static _Atomic int level = -1;
    int l = atomic_load_explicit(&level, memory_order_relaxed);
    if (l < 0) {
        const char *v = sona_cpu_backend()->name;
        l = strcmp(v, "avx512") == 0 ? SONA_HOST_AVX512
            : strcmp(v, "avx2") == 0 ? SONA_HOST_AVX2
                                     : SONA_HOST_BASELINE;
        atomic_store_explicit(&level, l, memory_order_relaxed);
    }
    return (sona_host_isa)l;
}
