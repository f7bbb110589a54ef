/* SPDX-License-Identifier: MIT */
/* What each op reads and writes: its buffer arguments, listed once for every op, for the code
 * that moves an op's data between a backend and the host (the CPU fallback, the cross-backend
 * op tests). Adding an op means adding its buffers to sona_op_describe(). */
#ifndef SONA_DISPATCH_OP_BUFFERS_H
#define SONA_DISPATCH_OP_BUFFERS_H

#include "backend/ops.h"

#include <stddef.h>

/* Any op's arguments. */
typedef union sona_op_args {
    sona_lora_apply_args apply;
    sona_lora_grad_args grad;
    sona_param_update_args upd;
    sona_sqdist_argmin_args sq;
    sona_knn_exact_args knn;
    sona_gemm_args gemm;
    sona_cluster_sums_args cs;
} sona_op_args;

enum { SONA_BUF_IN = 1, SONA_BUF_OUT = 2, SONA_BUF_INOUT = 3 };

/* One buffer argument of an op: where its pointer sits in the described args (so a caller can
 * put another buffer there), its size, and whether the op reads it, writes it, or both.
 * A buffer passed more than once (y == x of an in-place lora_apply) is one buffer: its first
 * listing has the largest size and the directions of all its uses, and every later listing
 * has `first` set to that listing's index (first == its own index otherwise). NULL pointers
 * (optional buffers left out) are never shared. */
typedef struct sona_op_buffer {
    const void **slot;
    size_t bytes;
    int dir;
    int first;
} sona_op_buffer;

#define SONA_OP_MAX_BUFFERS 9

/* Copies args (op's sona_*_args) into *a and lists its buffers in b (room for
 * SONA_OP_MAX_BUFFERS), with slots pointing into *a. Returns how many, or -1 for an unknown op. */
int sona_op_describe(sona_op op, const void *args, sona_op_args *a, sona_op_buffer *b);

#endif /* SONA_DISPATCH_OP_BUFFERS_H */
