/* SPDX-License-Identifier: MIT */
/* The contract between libsona and a GPU backend module (libsona-opencl.so, libsona-cuda.so).
 * A module exports one function, found with dlsym; it builds the backend or says why not. */
#ifndef SONA_BACKEND_MODULE_H
#define SONA_BACKEND_MODULE_H

#include "backend/ops.h"

#define SONA_MODULE_ABI 6 /* 2: timer_start/timer_stop; 3: bind_host_thread; 4: host kernels; 5: more host
                           * kernels (max_magnitude, mix_rows, axpy, scale); 6: host kernel lora_down */
#define SONA_MODULE_ENTRY "sona_module_open"

#if defined(__GNUC__)
#  define SONA_MODULE_EXPORT __attribute__((visibility("default")))
#else
#  define SONA_MODULE_EXPORT
#endif

/* Returns SONA_OK and the backend, or a status and a one-line reason ("no OpenCL platform"). */
typedef sona_status (*sona_module_open_fn)(uint32_t abi, const sona_backend **out, char *why,
                                           size_t why_len);

#endif /* SONA_BACKEND_MODULE_H */
