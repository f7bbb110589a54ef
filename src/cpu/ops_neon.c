/* SPDX-License-Identifier: MIT */
/* The neon CPU variant (aarch64 Advanced SIMD, 4 floats a vector). NEON is part of every aarch64
 * CPU, so no extra flags are needed. The kernels are those of simd_kernels.h; partial vectors go
 * through a small stack buffer, as NEON has no masked loads. */
#include "cpu/cpu.h"

#if defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>

#define SV_W 4
#define SV_GEMM_MR 8 /* 8 x 8 tile: 16 accumulators of the 32 q registers */
typedef float32x4_t sv_f;

static inline sv_f sv_zero(void) { return vdupq_n_f32(0.0f); }
static inline sv_f sv_set1(float f) { return vdupq_n_f32(f); }
static inline sv_f sv_load(const float *p) { return vld1q_f32(p); }
static inline void sv_store(float *p, sv_f v) { vst1q_f32(p, v); }
static inline sv_f sv_loadn(const float *p, uint32_t n)
{
    float tmp[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    memcpy(tmp, p, n * sizeof(float));
    return vld1q_f32(tmp);
}
static inline void sv_storen(float *p, sv_f v, uint32_t n)
{
    float tmp[4];
    vst1q_f32(tmp, v);
    memcpy(p, tmp, n * sizeof(float));
}
static inline sv_f sv_fma(sv_f a, sv_f b, sv_f c) { return vfmaq_f32(c, a, b); }
static inline sv_f sv_add(sv_f a, sv_f b) { return vaddq_f32(a, b); }
static inline sv_f sv_sub(sv_f a, sv_f b) { return vsubq_f32(a, b); }
static inline sv_f sv_mul(sv_f a, sv_f b) { return vmulq_f32(a, b); }
static inline float sv_hsum(sv_f v) { return vaddvq_f32(v); }

#include "cpu/simd_kernels.h"

const sona_backend sona_cpu_neon = {
    .name = "neon",
    .device = "host CPU, NEON (aarch64 Advanced SIMD)",
    SONA_CPU_HOST_FIELDS,
    SV_BACKEND_OPS,
    .host = {SV_HOST_KERNELS}, /* the rest from scalar (the registry fills them) */
};

#endif
