/* Element-wise host loops (finite checks, the EWC++ Fisher and penalty) compiled once per x86
 * ISA level and run at the level of the CPU variant the dispatch layer chose, so
 * SONA_CPU_VARIANT=scalar forces the baseline build here too. Function attributes, not ifunc
 * (which crashes under ThreadSanitizer), and no -march flags. ISO C mode keeps floating-point
 * contraction off, so every level computes bit-identical results.
 *
 * Usage: write the loop as `SONA_HOST_BODY TYPE NAME_body(PARAMS)` (TYPE not void) and then
 *     SONA_HOST_VARIANTS(TYPE, NAME, (PARAMS), (ARGS))
 * which defines `static TYPE NAME(PARAMS)`. */
#ifndef SONA_CORE_HOST_SIMD_H
#define SONA_CORE_HOST_SIMD_H

typedef enum sona_host_isa {
    SONA_HOST_BASELINE = 0,
    SONA_HOST_AVX2 = 1,
    SONA_HOST_AVX512 = 2
} sona_host_isa;

/* The loop body: always inlined, so each variant compiles it with its own ISA. */
#define SONA_HOST_BODY static inline __attribute__((always_inline))

/* The ISA level of the chosen CPU variant (computed once). */
sona_host_isa sona_host_isa_level(void);

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define SONA_HOST_VARIANTS(type, name, params, args)                                               \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma"))) static type name##_avx512 params \
    {                                                                                        \
        return name##_body args;                                                             \
    }                                                                                        \
    __attribute__((target("avx2,fma"))) static type name##_avx2 params                        \
    {                                                                                        \
        return name##_body args;                                                             \
    }                                                                                        \
    static type name params                                                                  \
    {                                                                                        \
        switch (sona_host_isa_level()) {                                                     \
        case SONA_HOST_AVX512:                                                               \
            return name##_avx512 args;                                                       \
        case SONA_HOST_AVX2:                                                                 \
            return name##_avx2 args;                                                         \
        default:                                                                             \
            return name##_body args;                                                         \
        }                                                                                    \
    }
#else
#define SONA_HOST_VARIANTS(type, name, params, args) \
    static type name params { return name##_body args; }
#endif

#endif /* SONA_CORE_HOST_SIMD_H */
