/* SPDX-License-Identifier: MIT */
/* libsona: what the library found on this machine (CPU features, topology, backends). */
#ifndef SONA_SYSTEM_H
#define SONA_SYSTEM_H

#include "sona/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ISA feature bits, as found by cpuid + xgetbv (x86) or HWCAP (aarch64), OS support included. */
enum {
    SONA_CPU_SSE42 = 1u << 0,
    SONA_CPU_AVX2 = 1u << 1,
    SONA_CPU_FMA = 1u << 2,
    SONA_CPU_AVX512F = 1u << 3,
    SONA_CPU_AVX512BW = 1u << 4,
    SONA_CPU_AVX512VL = 1u << 5,
    SONA_CPU_NEON = 1u << 6,
    SONA_CPU_F16C = 1u << 7 /* half-precision conversions (x86) */
};

/* The lower-case name of one SONA_CPU_* bit ("avx512bw"); NULL for anything else. Walking the
 * bits from 1u << 0 up to the first NULL names every feature, in the order above. */
SONA_API const char *sona_cpu_feature_name(uint32_t feature);

typedef struct sona_cpu_info {
    char brand[64];          /* CPU model name */
    uint32_t features;       /* SONA_CPU_* bits */
    uint32_t packages;       /* hwloc topology (1 each when hwloc could not tell) */
    uint32_t cores;
    uint32_t threads;        /* hardware threads (PUs) */
    uint32_t numa_nodes;
    uint64_t l1d_bytes, l2_bytes, l3_bytes; /* per-core L1d/L2, per-package L3; 0 = unknown */
    uint32_t worker_threads; /* threads the library sizes its pools to: one per physical core */
    const char *variant;     /* the CPU kernel variant in use: scalar, avx2, avx512, neon */
    const char *variant_reason; /* why that variant was chosen */
} sona_cpu_info;

/* Fills *out. Probing happens once; later calls are cheap. Thread-safe. */
SONA_API sona_status sona_cpu_info_get(sona_cpu_info *out);

/* The backends the library knows: "cpu", "opencl", "cuda" (in that order). */
typedef struct sona_backend_info {
    const char *name;
    int available;        /* 1 when it can run ops on this machine now */
    const char *detail;   /* device description when available, else the reason it is not */
} sona_backend_info;

SONA_API uint32_t sona_backend_count(void);
SONA_API sona_status sona_backend_info_get(uint32_t index, sona_backend_info *out);

/* The backend ops go to by default: SONA_BACKEND when set (an unavailable choice is an error
 * reported here and by every create), else "cpu". */
SONA_API sona_status sona_backend_selected(const char **name);

#ifdef __cplusplus
}
#endif
#endif /* SONA_SYSTEM_H */
