/* SPDX-License-Identifier: MIT */
/* The module's errors: the thread's last message and OpenCL status names (the bottom layer,
 * used by every other file of the module). */
#include "opencl/ocl.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_error[512];

const char *ocl_last_error(void *ctx)
{
    (void)ctx;
    return last_error;
}

const char *ocl_status_name(cl_int err)
{
    switch (err) {
#define NAME(x) case x: return #x
        NAME(CL_SUCCESS);
        NAME(CL_DEVICE_NOT_FOUND);
        NAME(CL_DEVICE_NOT_AVAILABLE);
        NAME(CL_COMPILER_NOT_AVAILABLE);
        NAME(CL_MEM_OBJECT_ALLOCATION_FAILURE);
        NAME(CL_OUT_OF_RESOURCES);
        NAME(CL_OUT_OF_HOST_MEMORY);
        NAME(CL_BUILD_PROGRAM_FAILURE);
        NAME(CL_INVALID_VALUE);
        NAME(CL_INVALID_DEVICE);
        NAME(CL_INVALID_BINARY);
        NAME(CL_INVALID_BUFFER_SIZE);
        NAME(CL_INVALID_MEM_OBJECT);
        NAME(CL_INVALID_PROGRAM_EXECUTABLE);
        NAME(CL_INVALID_KERNEL_ARGS);
        NAME(CL_INVALID_ARG_INDEX);
        NAME(CL_INVALID_ARG_VALUE);
        NAME(CL_INVALID_ARG_SIZE);
        NAME(CL_INVALID_WORK_GROUP_SIZE);
        NAME(CL_INVALID_WORK_ITEM_SIZE);
        NAME(CL_INVALID_GLOBAL_WORK_SIZE);
        NAME(CL_INVALID_COMMAND_QUEUE);
        NAME(CL_INVALID_CONTEXT);
        NAME(CL_INVALID_OPERATION);
        NAME(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST);
#undef NAME
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR";
    default: return "unknown OpenCL status";
    }
}

sona_status ocl_fail(sona_status st, const char *call, cl_int err, const char *detail)
{
    snprintf(last_error, sizeof last_error, "%s: %s (%d)%s%s", call, ocl_status_name(err), (int)err,
             detail && *detail ? ": " : "", detail ? detail : "");
    return st;
}

sona_status ocl_failf(sona_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return st;
}
