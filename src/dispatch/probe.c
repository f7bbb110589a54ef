/* SPDX-License-Identifier: MIT */
/* Host probe: ISA features (cpuid + xgetbv on x86, HWCAP on aarch64) and topology (hwloc). */
#include "dispatch/dispatch.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__aarch64__)
#include <sys/auxv.h>
#endif
#ifdef SONA_HAVE_HWLOC
#include <hwloc.h>
#endif

const char *sona_cpu_feature_name(uint32_t feature)
{
    static const char *const names[] = {"sse4.2",   "avx2",     "fma",  "avx512f",
                                        "avx512bw", "avx512vl", "neon", "f16c"};
    for (uint32_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (feature == 1u << i)
            return names[i];
    return NULL;
}

/* Two stages: the ISA (cpuid, microseconds), which every op table needs, and the topology
 * (hwloc, milliseconds and its plugins' memory), which only sona_cpu_info_get reports. */
static sona_cpu_info probe_info, full_info;
static pthread_once_t probe_once = PTHREAD_ONCE_INIT, full_once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__) || defined(__i386__)
static uint64_t read_xcr0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static void probe_isa(sona_cpu_info *ci)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d))
        return;
    const unsigned max_leaf = a;
    __get_cpuid(1, &a, &b, &c, &d);
    const int osxsave = (c >> 27) & 1;
    if ((c >> 20) & 1)
        ci->features |= SONA_CPU_SSE42;
    const int fma = (c >> 12) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    /* The OS must save the YMM (bits 1-2) and ZMM/opmask (bits 5-7) state, or the
     * instructions fault even though cpuid lists them. */
    const uint64_t xcr0 = osxsave ? read_xcr0() : 0;
    const int os_ymm = (xcr0 & 0x6) == 0x6, os_zmm = (xcr0 & 0xe6) == 0xe6;
    if (max_leaf >= 7) {
        __get_cpuid_count(7, 0, &a, &b, &c, &d);
        if (avx && os_ymm && ((b >> 5) & 1))
            ci->features |= SONA_CPU_AVX2;
        if (fma && os_ymm)
            ci->features |= SONA_CPU_FMA;
        if (f16c && os_ymm)
            ci->features |= SONA_CPU_F16C;
        if (os_zmm) {
            if ((b >> 16) & 1)
                ci->features |= SONA_CPU_AVX512F;
            if ((b >> 30) & 1)
                ci->features |= SONA_CPU_AVX512BW;
            if ((b >> 31) & 1)
                ci->features |= SONA_CPU_AVX512VL;
        }
    }
    unsigned brand[12] = {0};
    if (__get_cpuid(0x80000000, &a, &b, &c, &d) && a >= 0x80000004) {
        for (unsigned i = 0; i < 3; i++)
            __get_cpuid(0x80000002 + i, &brand[4 * i], &brand[4 * i + 1], &brand[4 * i + 2],
                        &brand[4 * i + 3]);
        const char *s = (const char *)brand;
        while (*s == ' ')
            s++;
        snprintf(ci->brand, sizeof ci->brand, "%.47s", s);
        for (size_t n = strlen(ci->brand); n > 0 && ci->brand[n - 1] == ' '; n--)
            ci->brand[n - 1] = '\0';
    }
}
#elif defined(__aarch64__)
static void probe_isa(sona_cpu_info *ci)
{
    /* HWCAP_ASIMD is bit 1 on aarch64 Linux; Advanced SIMD is mandatory in ARMv8-A. */
    if (getauxval(AT_HWCAP) & (1ul << 1))
        ci->features |= SONA_CPU_NEON;
    snprintf(ci->brand, sizeof ci->brand, "aarch64");
}
#else
static void probe_isa(sona_cpu_info *ci) { snprintf(ci->brand, sizeof ci->brand, "unknown"); }
#endif

static void probe_topology(sona_cpu_info *ci)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    ci->packages = ci->numa_nodes = 1;
    ci->cores = ci->threads = n > 0 ? (uint32_t)n : 1;
#ifdef SONA_HAVE_HWLOC
    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo) == 0) {
        if (hwloc_topology_load(topo) == 0) {
            int v;
            if ((v = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PACKAGE)) > 0)
                ci->packages = (uint32_t)v;
            if ((v = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE)) > 0)
                ci->cores = (uint32_t)v;
            if ((v = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU)) > 0)
                ci->threads = (uint32_t)v;
            if ((v = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE)) > 0)
                ci->numa_nodes = (uint32_t)v;
            static const hwloc_obj_type_t caches[3] = {HWLOC_OBJ_L1CACHE, HWLOC_OBJ_L2CACHE,
                                                       HWLOC_OBJ_L3CACHE};
            uint64_t *sizes[3] = {&ci->l1d_bytes, &ci->l2_bytes, &ci->l3_bytes};
            for (int i = 0; i < 3; i++) {
                hwloc_obj_t o = hwloc_get_obj_by_type(topo, caches[i], 0);
                if (o && o->attr)
                    *sizes[i] = o->attr->cache.size;
            }
        }
        hwloc_topology_destroy(topo);
    }
#endif
    ci->worker_threads = ci->cores;
}

static void probe_run(void)
{
    probe_isa(&probe_info);
    /* Until the topology is asked for: one package, one core per online CPU. */
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    probe_info.packages = probe_info.numa_nodes = 1;
    probe_info.cores = probe_info.threads = probe_info.worker_threads = n > 0 ? (uint32_t)n : 1;
}

static void full_run(void)
{
    full_info = *sona_probe();
    probe_topology(&full_info);
}

const sona_cpu_info *sona_probe(void)
{
    pthread_once(&probe_once, probe_run);
    return &probe_info;
}

const sona_cpu_info *sona_probe_topology(void)
{
    pthread_once(&full_once, full_run);
    return &full_info;
}
