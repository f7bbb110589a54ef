/* SPDX-License-Identifier: MIT */
/* `sona bench`: the spec's benchmark groups on every available backend.
 *
 * A group is a function that, for each of its cases, calls bench_measure() (a timed function)
 * or bench_report() (a measured value such as recall or memory). The harness owns warm-up,
 * repetition, statistics, the progress line, the terminal table, JSON/HTML output and the
 * regression check. Groups reuse the test case tables where they exist. */
#ifndef SONA_BENCH_H
#define SONA_BENCH_H

#include "backend/ops.h"

#include <stddef.h>
#include <stdint.h>

typedef struct bench_ctx bench_ctx;

/* What one row measures and the spec's figures for it (0 = the spec gives none). */
typedef struct bench_row {
    const char *group;     /* the spec's group name, e.g. "micro_lora_forward" */
    const char *name;      /* the spec's case name, e.g. "rank1/256" */
    const char *backend;   /* "scalar", "avx2", "avx512", "neon", "opencl", "cuda", or "cpu" */
    double target_us;      /* spec target (the "<50us" column) */
    double stretch_us;     /* spec stretch goal */
    double expected_us;    /* spec "expected results" value for this case */
    double flops;          /* work per call, for GFLOP/s (0 = not reported) */
    double bytes;          /* bytes moved per call, for GB/s (0 = not reported) */
} bench_row;

/* Times fn(arg): warm-up, then enough calls for a stable median; reports median and p99 in
 * microseconds per call. fn must finish its work before returning (sync a GPU backend).
 * Returns 0 when measured, -1 when fn reported failure by returning non-zero. */
int bench_measure(bench_ctx *ctx, const bench_row *row, int (*fn)(void *arg), void *arg);
/* The same for fn that only issues work on backend b without waiting for it: with b's device
 * timers (timer_start/timer_stop), a sample is the device time of a batch of calls with no host
 * wait between them; without them, each call is followed by b's sync and timed on the host. */
int bench_measure_on(bench_ctx *ctx, const bench_row *row, const sona_backend *b,
                     int (*fn)(void *arg), void *arg);

/* Reports a measured value that is not a time (recall@10, MB, build seconds, QPS, ...). */
void bench_report(bench_ctx *ctx, const bench_row *row, const char *metric, double value,
                  const char *unit);

/* A row that could not run here, with the reason ("too large for this backend"). */
void bench_skip(bench_ctx *ctx, const bench_row *row, const char *why);

/* --quick: reduced repetitions (and the groups' own reduced sizes where marked). Groups must
 * keep the spec's sizes for every case they do run. */
int bench_quick(const bench_ctx *ctx);

/* Backends selected with --backend (default: every CPU variant the host runs, then every
 * available GPU backend). Each entry has a label ("avx2", "opencl", ...). */
int bench_backends(const bench_ctx *ctx, const sona_backend **out, const char **labels, int max);

/* The SONA_CPU_* bits in f as names separated by spaces ("avx2 fma f16c"), or "(none)". */
void bench_features_text(char *buf, size_t len, uint32_t f);

/* Whether b is a real accelerator (not a CPU variant, not an OpenCL CPU device such as PoCL):
 * GPU-only cases bench_skip() elsewhere. */
int bench_backend_is_gpu(const sona_backend *b);

/* Whether b runs op with a kernel of its own. A CPU variant's missing ops are filled with the
 * scalar ones; timing those under the variant's name would only repeat the scalar row. */
int bench_backend_own_op(const sona_backend *b, sona_op op);

/* A benchmark group. */
typedef struct bench_group {
    const char *name;        /* "micro_lora_forward", "pattern_search", "op_lora_apply", ... */
    const char *description;
    void (*run)(bench_ctx *ctx);
} bench_group;

/* Entry point of `sona bench ARGS...`; returns the process exit code. */
int sona_bench_main(int argc, char **argv);

/* The child side of the engine_create group: one engine create at that width, its time and
 * the resident memory it added on stdout. */
int bench_engine_create_probe(const char *width);

/* `sona bench --dump-data DIR`: the inputs of the rows the peers (bench/peers/peers.py) stand
 * beside, as float32 .npy files, and peers_data.json with their shapes and parameters. 0 or -1. */
int bench_dump_peer_data(const char *dir);

#endif
