/* SPDX-License-Identifier: MIT */
/* The accelerator a device test runs on, for Criterion tests (header only: the support library
 * also serves the standalone concurrent tests, which have no Criterion). */
#ifndef SONA_TEST_DEVICE_SKIP_H
#define SONA_TEST_DEVICE_SKIP_H

#include "dispatch/dispatch.h"

#include <criterion/criterion.h>
#include <stdio.h>

/* sona_device_backend(), or the calling test skipped, saying why under `tag`, when there is none
 * (CI: PoCL through SONA_OPENCL_DEVICE=any). */
static inline const sona_backend *device_or_skip(const char *tag)
{
    const sona_backend *dev = sona_device_backend();
    if (!dev) {
        printf("[%s] skipped, no accelerator (CUDA device, or OpenCL with SONA_OPENCL_DEVICE=any for "
               "CPU devices)\n",
               tag);
        cr_skip_test("no accelerator");
    }
    return dev;
}

#endif
