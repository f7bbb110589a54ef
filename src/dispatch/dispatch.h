/* SPDX-License-Identifier: MIT */
/* The dispatch layer: CPU variant choice, backend registry, GPU module loading. */
#ifndef SONA_DISPATCH_DISPATCH_H
#define SONA_DISPATCH_DISPATCH_H

#include "backend/ops.h"
#include "sona/system.h"

/* Every CPU variant compiled into this build (scalar first), supported by this host or not. */
typedef struct sona_cpu_variant {
    const sona_backend *ops; /* the variant's own table: NULL entries are ones it does not have */
    uint32_t needs;          /* SONA_CPU_* bits the host must have */
    uint32_t f16_needs;      /* bits its F16 host kernels need too (else scalar's are used) */
} sona_cpu_variant;
uint32_t sona_cpu_variants(const sona_cpu_variant **out);

/* The variant's table if this host can run it, with its missing ops and host kernels filled
 * from scalar;
 * NULL and a reason in why otherwise (unknown name, not compiled in, or missing ISA). */
const sona_backend *sona_cpu_variant_get(const char *name, char *why, size_t why_len);

/* The CPU backend in use: SONA_CPU_VARIANT when set and valid, else the best the host runs.
 * Never NULL (scalar always works); an invalid SONA_CPU_VARIANT is reported by
 * sona_dispatch_check(). */
const sona_backend *sona_cpu_backend(void);

/* Backend by name: "cpu" (the chosen variant), "opencl", "cuda". SONA_E_UNAVAILABLE with the
 * reason in why when it cannot run here. */
sona_status sona_backend_get(const char *name, const sona_backend **out, char *why, size_t why_len);

/* The default backend for new handles: SONA_BACKEND when set, else the CPU. Reports forced
 * choices that cannot be honoured (unknown or unavailable backend, bad SONA_CPU_VARIANT). */
sona_status sona_backend_default(const sona_backend **out, char *why, size_t why_len);

/* The accelerator for batched work (the engine's batched apply): the device backend SONA_BACKEND
 * names (NULL when it names the CPU or cannot run here), else CUDA, else OpenCL (which offers CPU
 * devices such as PoCL only when SONA_OPENCL_DEVICE allows them), else NULL. Loads and starts the
 * GPU modules, which costs time and memory: call it when first needed. Whether a given call goes
 * there is sona_route's choice (dispatch/cost.h). */
const sona_backend *sona_device_backend(void);

/* The environment variables of dispatch (dispatch/env.c), NULL when unset or empty.
 * SONA_CPU_VARIANT is read once, as the variant is chosen once. SONA_BACKEND is read at each
 * call: a program may set it before creating each handle, to put that one on another backend. */
const char *sona_env_cpu_variant(void);
const char *sona_env_backend(void);

/* Host-side probe results, computed once: sona_probe the ISA features and brand (cheap; the
 * topology fields are sysconf's CPU count), sona_probe_topology also hwloc's topology. */
const sona_cpu_info *sona_probe(void);
const sona_cpu_info *sona_probe_topology(void);

/* Runs op (args: the op's sona_*_args) on backend b. When b is an accelerator and the op fails
 * there with SONA_E_BACKEND, the op is redone on the CPU (inputs downloaded, outputs uploaded
 * back to b's buffers) and counted; SONA_OK then. Other statuses are returned as they are. */
sona_status sona_op_run(const sona_backend *b, sona_op op, const void *args);

/* Runs op on b once, without the fallback: b's own status (SONA_E_INVALID for an unknown op).
 * For callers that check the backend itself, like the op tests. Every call (and so every
 * sona_op_run, its CPU redo included) is counted per op and backend kind: sona_dispatch_calls
 * in dispatch/cost.h, which also picks the backend for a call by cost (sona_route). */
sona_status sona_op_call(const sona_backend *b, sona_op op, const void *args);

/* How an op is called: sona_op_run (with the CPU fallback) or sona_op_call (the backend alone). */
typedef sona_status (*sona_op_caller)(const sona_backend *b, sona_op op, const void *args);

/* Runs op on b through call with args whose buffers are host arrays: on an accelerator each
 * buffer is copied into a buffer of b's allocated for the call, and the ones the op writes are
 * copied back when it succeeded (a failed copy back may leave them partly written). On a
 * host-memory backend, call(b, op, args). SONA_E_NOMEM or SONA_E_BACKEND when a copy fails
 * (b->last_error says why). */
sona_status sona_op_run_host(const sona_backend *b, sona_op op, const void *args, sona_op_caller call);

/* Counts ops that failed on an accelerator and were redone on the CPU. */
void sona_dispatch_count_fallback(void);
uint64_t sona_dispatch_fallbacks(void);

#endif /* SONA_DISPATCH_DISPATCH_H */
