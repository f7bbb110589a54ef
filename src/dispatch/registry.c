/* SPDX-License-Identifier: MIT */
/* Backend registry: CPU variants chosen by cpuid, GPU backends loaded as modules with dlopen. */
#define _GNU_SOURCE /* dladdr, secure_getenv */
#include "backend/module.h"
#include "common/error.h"
#include "cpu/cpu.h"
#include "dispatch/dispatch.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- CPU variants ---------------------------------------------------------------------- */

#define X86_AVX2_NEEDS (SONA_CPU_AVX2 | SONA_CPU_FMA)
static const sona_cpu_variant cpu_variant_table[] = {
    {&sona_cpu_scalar, 0, 0},
#if defined(__x86_64__) || defined(__i386__)
    {&sona_cpu_avx2, X86_AVX2_NEEDS, SONA_CPU_F16C},
    /* AVX-512F has the F16 conversions itself. */
    {&sona_cpu_avx512,
     X86_AVX2_NEEDS | SONA_CPU_AVX512F | SONA_CPU_AVX512BW | SONA_CPU_AVX512VL, 0},
#endif
#if defined(__aarch64__)
    {&sona_cpu_neon, SONA_CPU_NEON, 0},
#endif
};
#define CPU_VARIANT_COUNT (sizeof cpu_variant_table / sizeof cpu_variant_table[0])

uint32_t sona_cpu_variants(const sona_cpu_variant **out)
{
    *out = cpu_variant_table;
    return (uint32_t)CPU_VARIANT_COUNT;
}

/* Each variant's table with its NULL ops and host kernels taken from scalar. */
static sona_backend cpu_filled[CPU_VARIANT_COUNT];
static pthread_once_t cpu_filled_once = PTHREAD_ONCE_INIT;

static void cpu_fill(void)
{
    const uint32_t have = sona_probe()->features;
    for (size_t i = 0; i < CPU_VARIANT_COUNT; i++) {
        sona_backend *m = &cpu_filled[i];
        *m = *cpu_variant_table[i].ops;
        const uint32_t f16_needs = cpu_variant_table[i].f16_needs;
        if ((have & f16_needs) != f16_needs) {
            m->host.dot_f16 = NULL;
            m->host.widen_f16 = NULL;
        }
#define SONA_OP(id, field, args) \
        if (!m->field)           \
            m->field = sona_cpu_scalar.field;
#include "backend/ops.def"
#undef SONA_OP
#define FILL_HOST_KERNEL(field) \
        if (!m->host.field)     \
            m->host.field = sona_cpu_scalar.host.field;
        SONA_HOST_KERNEL_LIST(FILL_HOST_KERNEL)
#undef FILL_HOST_KERNEL
    }
}

const sona_backend *sona_cpu_variant_get(const char *name, char *why, size_t why_len)
{
    pthread_once(&cpu_filled_once, cpu_fill);
    const uint32_t have = sona_probe()->features;
    for (size_t i = 0; i < CPU_VARIANT_COUNT; i++) {
        if (strcmp(cpu_variant_table[i].ops->name, name) != 0)
            continue;
        if ((have & cpu_variant_table[i].needs) != cpu_variant_table[i].needs) {
            snprintf(why, why_len, "this CPU or OS lacks the %s instructions", name);
            return NULL;
        }
        return &cpu_filled[i];
    }
    if (!strcmp(name, "scalar") || !strcmp(name, "avx2") || !strcmp(name, "avx512") ||
        !strcmp(name, "neon"))
        snprintf(why, why_len, "the %s variant is not built for this architecture", name);
    else
        snprintf(why, why_len, "unknown CPU variant '%s' (scalar, avx2, avx512, neon)", name);
    return NULL;
}

/* The variant in use and why it was chosen. */
static const sona_backend *cpu_chosen;
static char cpu_reason[160];
static char cpu_forced_error[200];
static pthread_once_t cpu_chosen_once = PTHREAD_ONCE_INIT;

static void cpu_choose(void)
{
    const uint32_t have = sona_probe()->features;
    size_t best = 0;
    for (size_t i = 0; i < CPU_VARIANT_COUNT; i++)
        if ((have & cpu_variant_table[i].needs) == cpu_variant_table[i].needs)
            best = i;
    char why[160];
    cpu_chosen = sona_cpu_variant_get(cpu_variant_table[best].ops->name, why, sizeof why);
    snprintf(cpu_reason, sizeof cpu_reason, "%s: the widest variant this CPU and OS support",
             cpu_chosen->name);

    const char *forced = sona_env_cpu_variant();
    if (forced) {
        const sona_backend *f = sona_cpu_variant_get(forced, why, sizeof why);
        if (f) {
            cpu_chosen = f;
            snprintf(cpu_reason, sizeof cpu_reason, "%s: forced by SONA_CPU_VARIANT", f->name);
        } else {
            snprintf(cpu_forced_error, sizeof cpu_forced_error, "SONA_CPU_VARIANT=%s refused: %s",
                     forced, why);
        }
    }
}

const sona_backend *sona_cpu_backend(void)
{
    pthread_once(&cpu_chosen_once, cpu_choose);
    return cpu_chosen;
}

/* ---- GPU modules ----------------------------------------------------------------------- */

typedef struct module_slot {
    const char *name;  /* "opencl", "cuda" */
    const char *file;  /* "libsona-opencl.so" */
    int built;         /* compiled in this build */
    const char *not_built_why; /* why not, when the build system knows ("" otherwise) */
    pthread_once_t once;
    const sona_backend *backend;
    char why[256];
} module_slot;

#ifndef SONA_BUILT_OPENCL
#define SONA_BUILT_OPENCL 0
#endif
#ifndef SONA_BUILT_CUDA
#define SONA_BUILT_CUDA 0
#endif
#ifndef SONA_OPENCL_MISSING
#define SONA_OPENCL_MISSING ""
#endif
#ifndef SONA_MODULE_INSTALL_DIR
#define SONA_MODULE_INSTALL_DIR ""
#endif

static module_slot modules[] = {
    {"opencl", "libsona-opencl.so", SONA_BUILT_OPENCL, SONA_OPENCL_MISSING, PTHREAD_ONCE_INIT, NULL, ""},
    {"cuda", "libsona-cuda.so", SONA_BUILT_CUDA, "", PTHREAD_ONCE_INIT, NULL, ""},
};
#define MODULE_COUNT (sizeof modules / sizeof modules[0])

/* SONA_MODULE_DIR names code this process runs: ignored in a set-user-ID or file-capability
 * program (secure_getenv), and refused unless absolute, since a relative one would load
 * whatever the current directory holds. */
static const char *module_dir_env(void)
{
#ifdef __GLIBC__
    return secure_getenv("SONA_MODULE_DIR");
#else
    return getuid() == geteuid() && getgid() == getegid() ? getenv("SONA_MODULE_DIR") : NULL;
#endif
}

static void *open_module_file(const char *file, char *tried, size_t tried_len)
{
    char dirs[4][1024];
    int nd = 0;
    const char *env = module_dir_env();
    if (env && *env && env[0] != '/') {
        snprintf(tried, tried_len, "SONA_MODULE_DIR=%s refused: not an absolute path", env);
        return NULL;
    }
    if (env && *env)
        snprintf(dirs[nd++], sizeof dirs[0], "%s", env);
    Dl_info info;
    char self[1024];
    const char *where = NULL;
    if (dladdr((void *)&sona_cpu_backend, &info) && info.dli_fname)
        where = info.dli_fname;
    /* Linked statically into a program, dladdr may give its bare argv[0]: ask the kernel. */
    if (!where || !strchr(where, '/')) {
        ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
        if (len > 0) {
            self[len] = '\0';
            where = self;
        }
    }
    if (where) {
        /* Beside the library (or the program it is linked into), and in ../lib of it. */
        const char *slash = strrchr(where, '/');
        int len = slash ? (int)(slash - where) : 1;
        const char *base = slash ? where : ".";
        snprintf(dirs[nd++], sizeof dirs[0], "%.*s", len, base);
        snprintf(dirs[nd++], sizeof dirs[0], "%.*s/../lib", len, base);
    }
    if (SONA_MODULE_INSTALL_DIR[0])
        snprintf(dirs[nd++], sizeof dirs[0], "%s", SONA_MODULE_INSTALL_DIR);
    tried[0] = '\0';
    char path[4096 + 1100];
    for (int i = 0; i < nd; i++) {
        snprintf(path, sizeof path, "%s/%s", dirs[i], file);
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (h)
            return h;
        const char *err = dlerror();
        /* Keep the first error that is not "no such file": it says why a present module fails. */
        if (err && !strstr(err, "No such file") && !tried[0])
            snprintf(tried, tried_len, "%s", err);
    }
    void *h = dlopen(file, RTLD_NOW | RTLD_LOCAL);
    if (!h && !tried[0])
        snprintf(tried, tried_len, "%s not found beside libsona or on the library path", file);
    return h;
}

static void module_load(module_slot *m)
{
    if (!m->built) {
        snprintf(m->why, sizeof m->why, "%s",
                 m->not_built_why[0] ? m->not_built_why
                                     : "not built: its SDK was missing when libsona was built");
        return;
    }
    /* hwloc's topology (and the plugins it dlopens) first, the order libsona had when it probed
     * everything at start; the modules and their runtimes use hwloc too. Loaded the other way
     * round, LeakSanitizer crashed at exit walking a bogus dynamic TLS range (sona_ops_check
     * under ASan with PoCL installed). */
    (void)sona_probe_topology();
    char tried[200];
    void *h = open_module_file(m->file, tried, sizeof tried);
    if (!h) {
        snprintf(m->why, sizeof m->why, "module not loaded: %s", tried);
        return;
    }
    sona_module_open_fn open_fn;
    *(void **)&open_fn = dlsym(h, SONA_MODULE_ENTRY);
    if (!open_fn) {
        snprintf(m->why, sizeof m->why, "%s has no %s entry point", m->file, SONA_MODULE_ENTRY);
        dlclose(h);
        return;
    }
    char why[200] = "";
    const sona_backend *b = NULL;
    if (open_fn(SONA_MODULE_ABI, &b, why, sizeof why) != SONA_OK || !b) {
        snprintf(m->why, sizeof m->why, "%s", why[0] ? why : "module refused to start");
        /* The module stays loaded: driver libraries often cannot be unloaded cleanly. */
        return;
    }
    m->backend = b;
}

static void load_opencl(void) { module_load(&modules[0]); }
static void load_cuda(void) { module_load(&modules[1]); }

/* ---- registry -------------------------------------------------------------------------- */

sona_status sona_backend_get(const char *name, const sona_backend **out, char *why, size_t why_len)
{
    *out = NULL;
    if (!strcmp(name, "cpu")) {
        *out = sona_cpu_backend();
        return SONA_OK;
    }
    for (size_t i = 0; i < MODULE_COUNT; i++) {
        module_slot *m = &modules[i];
        if (strcmp(name, m->name) != 0)
            continue;
        pthread_once(&m->once, i == 0 ? load_opencl : load_cuda);
        if (!m->backend) {
            snprintf(why, why_len, "%s: %s", m->name, m->why);
            return SONA_E_UNAVAILABLE;
        }
        *out = m->backend;
        return SONA_OK;
    }
    snprintf(why, why_len, "unknown backend '%s' (cpu, opencl, cuda)", name);
    return SONA_E_INVALID;
}

sona_status sona_backend_default(const sona_backend **out, char *why, size_t why_len)
{
    *out = sona_cpu_backend();
    if (cpu_forced_error[0]) {
        snprintf(why, why_len, "%s", cpu_forced_error);
        return SONA_E_UNSUPPORTED;
    }
    const char *forced = sona_env_backend();
    return forced ? sona_backend_get(forced, out, why, why_len) : SONA_OK;
}

const sona_backend *sona_device_backend(void)
{
    const sona_backend *b = NULL;
    char why[256];
    if (sona_env_backend())
        return sona_backend_default(&b, why, sizeof why) == SONA_OK && !b->host_memory ? b : NULL;
    static const char *const order[] = {"cuda", "opencl"};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (sona_backend_get(order[i], &b, why, sizeof why) == SONA_OK && !b->host_memory)
            return b;
    return NULL;
}

static atomic_uint_fast64_t fallback_count;
void sona_dispatch_count_fallback(void) { atomic_fetch_add(&fallback_count, 1); }
uint64_t sona_dispatch_fallbacks(void) { return atomic_load(&fallback_count); }

int sona_backend_supports(const sona_backend *b, sona_op op, const void *args)
{
    const void *fn = NULL;
    switch (op) {
#define SONA_OP(id, field, args) \
    case SONA_OP_##id: fn = (const void *)b->field; break;
#include "backend/ops.def"
#undef SONA_OP
    default: return 0;
    }
    return fn && (!b->supports || b->supports(b->ctx, op, args));
}

const char *sona_op_name(sona_op op)
{
    static const char *const names[SONA_OP_COUNT] = {
#define SONA_OP(id, field, args) #field,
#include "backend/ops.def"
#undef SONA_OP
    };
    return (unsigned)op < SONA_OP_COUNT ? names[op] : "unknown";
}

/* ---- public system info ---------------------------------------------------------------- */

sona_status sona_cpu_info_get(sona_cpu_info *out)
{
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "%s: out is NULL", __func__);
    const sona_backend *cpu = sona_cpu_backend();
    *out = *sona_probe_topology();
    out->variant = cpu->name;
    out->variant_reason = cpu_forced_error[0] ? cpu_forced_error : cpu_reason;
    return SONA_OK;
}

uint32_t sona_backend_count(void) { return 1 + (uint32_t)MODULE_COUNT; }

sona_status sona_backend_info_get(uint32_t index, sona_backend_info *out)
{
    if (!out)
        return sona_fail(NULL, SONA_E_NULL, "%s: out is NULL", __func__);
    if (index >= sona_backend_count())
        return sona_fail(NULL, SONA_E_INVALID, "%s: backend %u of %u", __func__, index,
                         sona_backend_count());
    static _Thread_local char why[256];
    const char *name = index == 0 ? "cpu" : modules[index - 1].name;
    const sona_backend *b;
    out->name = name;
    out->available = sona_backend_get(name, &b, why, sizeof why) == SONA_OK;
    out->detail = out->available ? b->device : (index == 0 ? "" : modules[index - 1].why);
    return SONA_OK;
}

sona_status sona_backend_selected(const char **name)
{
    if (!name)
        return sona_fail(NULL, SONA_E_NULL, "%s: name is NULL", __func__);
    const sona_backend *b;
    char why[256];
    sona_status st = sona_backend_default(&b, why, sizeof why);
    const char *forced = sona_env_backend();
    *name = forced ? forced : "cpu";
    return st == SONA_OK ? st : sona_fail(NULL, st, "%s: %s", __func__, why);
}
