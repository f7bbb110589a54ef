/* SPDX-License-Identifier: MIT */
/* CPU kernel variants. Each variant lives in its own file compiled with its own ISA flags and
 * fills one sona_backend table, ops and host kernels; the dispatch layer picks one at run time
 * (cpuid + xgetbv) and fills what a variant leaves NULL from scalar. */
#ifndef SONA_CPU_CPU_H
#define SONA_CPU_CPU_H

#include "backend/ops.h"

extern const sona_backend sona_cpu_scalar;
#if defined(__x86_64__) || defined(__i386__)
extern const sona_backend sona_cpu_avx2;
extern const sona_backend sona_cpu_avx512;
#endif
#if defined(__aarch64__)
extern const sona_backend sona_cpu_neon;
#endif

/* Host memory functions shared by every CPU variant: buffers 64-byte aligned and zeroed (large
 * ones as fresh pages, untouched until used). */
sona_status sona_host_alloc(void *ctx, size_t bytes, void **buf);
void sona_host_free(void *ctx, void *buf);
sona_status sona_host_upload(void *ctx, void *buf, size_t offset, const void *src, size_t bytes);
sona_status sona_host_download(void *ctx, void *dst, const void *buf, size_t offset, size_t bytes);
sona_status sona_host_sync(void *ctx);

/* Shared by the variants: the scalar versions of each op, for the parts a variant does not
 * vectorise (tails, unusual shapes). */
#define SONA_OP(id, field, args) sona_status sona_scalar_##field(void *ctx, const args *a);
#include "backend/ops.def"
#undef SONA_OP

/* supports() of every CPU variant: ranks up to SONA_LORA_MAX_RANK. */
int sona_cpu_supports(void *ctx, sona_op op, const void *args);

/* The sona_backend fields every CPU variant shares: host memory and the CPU's shape limits. */
#define SONA_CPU_HOST_FIELDS                                                                          \
    .host_memory = 1, .supports = sona_cpu_supports, .alloc = sona_host_alloc,                  \
    .free = sona_host_free, .upload = sona_host_upload, .download = sona_host_download,         \
    .sync = sona_host_sync

/* How many parts a call of `flops` arithmetic splits into (parallel.c): 1 for small calls and
 * in SCHED_BATCH threads, else the CPUs the calling thread may run on (at most 8). */
uint32_t sona_cpu_parallel_parts(double flops);
/* Runs fn(arg, part, parts) for every part, part 0 on the caller and the others on the pool's
 * workers (kept between calls; on a machine of several packages, kept on the first caller's), or
 * on threads of their own while another caller has the pool, and returns when all are done (a
 * part with no thread runs on the caller). The parts must write disjoint memory. */
void sona_cpu_parallel(void (*fn)(void *arg, uint32_t part, uint32_t parts), void *arg, uint32_t parts);

/* Runs fn(arg, chunk) for every chunk < chunks over `parts` threads as sona_cpu_parallel does,
 * each part taking the next unclaimed chunk until none is left: a part slowed down (its core
 * busy with other work) takes fewer, where equal shares fixed up front would wait for it. The
 * chunks must write disjoint memory. */
void sona_cpu_parallel_chunks(void (*fn)(void *arg, uint32_t chunk), void *arg, uint32_t chunks, uint32_t parts);

/* The chunks to cut a call of `parts` parts into: 4 a part, few enough to stay cheap (1 for one
 * part). */
static inline uint32_t sona_cpu_chunks(uint32_t parts) { return parts > 1 ? 4 * parts : 1; }

/* Top-k keeper used by knn_exact on every variant: keeps the k best (highest score, lowest
 * index on ties) in descending order. */
void sona_topk_insert(int32_t *idx, float *score, uint32_t k, uint32_t *len, int32_t i, float s);

#endif /* SONA_CPU_CPU_H */
