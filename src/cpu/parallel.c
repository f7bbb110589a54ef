/* SPDX-License-Identifier: MIT */
/* Work split over the host's cores for the calls large enough to pay for it (the batched
 * learning ops at GEMM-like sizes are bound by memory bandwidth, which one core does not
 * saturate; k-means' rounds and assignments), on a pool of workers kept between calls. */
#define _GNU_SOURCE /* SCHED_BATCH */
#include "cpu/cpu.h"

#include "common/clock.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

#ifdef SONA_HAVE_HWLOC
#include <hwloc.h>
#endif

/* Below this much arithmetic a call stays on one core. */
#define PARALLEL_MIN_FLOPS 16e6
#define PARALLEL_MAX_PARTS 8

uint32_t sona_cpu_parallel_parts(double flops)
{
    if (flops < PARALLEL_MIN_FLOPS)
        return 1;
#ifdef SCHED_BATCH
    /* A thread that asked to run in the background (the engine's loop thread is SCHED_BATCH at
     * nice 10) keeps its ops to itself: more threads would take the serving threads' cores. */
    if (sched_getscheduler(0) == SCHED_BATCH)
        return 1;
#endif
    /* The CPUs this thread may run on (taskset, cgroup cpusets), else the online ones. */
    long usable = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0 && CPU_COUNT(&allowed) < usable)
        usable = CPU_COUNT(&allowed);
    if (usable <= 1)
        return 1;
    return usable < PARALLEL_MAX_PARTS ? (uint32_t)usable : PARALLEL_MAX_PARTS;
}

/* ---- the pool --------------------------------------------------------------------------- */

/* Workers started at the first split and kept: worker w runs part w + 1 of each job. After a
 * job that came within SPIN_NS of the one before, a worker spins for up to SPIN_NS before it
 * sleeps, so that back-to-back splits (k-means' seeding rounds, a few tens of microseconds of
 * serial work apart) find it awake: a thread started per call cost 40 us here, and a sleeping
 * one takes a wake-up. Splits further apart (a batched apply now and then) find it asleep and
 * cost no spinning on a core the serving threads may want. One job at a time: a caller that
 * finds the pool busy starts threads of its own, as before the pool. */
#define SPIN_NS 100000

typedef void (*part_fn)(void *arg, uint32_t part, uint32_t parts);

static struct {
    pthread_mutex_t lock; /* guards the sleeps and wake-ups below */
    pthread_cond_t wake, done;
    pthread_mutex_t busy;    /* held by the caller whose job the pool runs */
    pthread_once_t once;
    uint32_t workers;        /* started (under busy) */
    atomic_uint_fast64_t job; /* bumped for each job, after fn, arg and parts are set */
    atomic_uint_fast64_t pending; /* workers that have not yet answered the job */
    part_fn fn;
    void *arg;
    uint32_t parts, on_workers; /* the job's parts; parts 1 .. on_workers run on workers */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
          PTHREAD_MUTEX_INITIALIZER, PTHREAD_ONCE_INIT, 0, 0, 0, NULL, NULL, 0, 0};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Spins (pause) while (*v == value) == equal, for at most SPIN_NS; returns the last value read
 * (acquire). */
static uint_fast64_t spin_while(atomic_uint_fast64_t *v, uint_fast64_t value, int equal)
{
    const uint64_t until = sona_monotonic_ns() + SPIN_NS;
    uint_fast64_t cur;
    for (uint32_t i = 1; ((cur = atomic_load_explicit(v, memory_order_acquire)) == value) == equal; i++) {
        if (i % 64 == 0 && sona_monotonic_ns() >= until)
            break;
        cpu_relax();
    }
    return cur;
}

/* What a worker starts with: its part and the last job before it. */
static struct worker_start {
    uint32_t part;
    uint_fast64_t seen;
} starts[PARALLEL_MAX_PARTS];

static void *worker(void *p)
{
    const struct worker_start *start = p;
    const uint32_t part = start->part;
    uint_fast64_t seen = start->seen, job = seen;
    int spin = 1;      /* the last job came within SPIN_NS of the one before */
    uint64_t done = 0; /* when the last job ended */
    for (;;) {
        if (!spin || (job = spin_while(&pool.job, seen, 1)) == seen) {
            pthread_mutex_lock(&pool.lock);
            while ((job = atomic_load_explicit(&pool.job, memory_order_acquire)) == seen)
                pthread_cond_wait(&pool.wake, &pool.lock);
            pthread_mutex_unlock(&pool.lock);
        }
        seen = job;
        spin = sona_monotonic_ns() - done < SPIN_NS;
        if (part <= pool.on_workers)
            pool.fn(pool.arg, part, pool.parts);
        done = sona_monotonic_ns();
        /* Every worker answers every job, so none still reads this one's fields when the next
         * is set. */
        if (atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool.lock);
            pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.lock);
        }
    }
    return NULL;
}

/* A child of fork has none of the parent's workers. */
static void pool_forget(void)
{
    pthread_mutex_init(&pool.lock, NULL);
    pthread_mutex_init(&pool.busy, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.workers = 0;
}

static void pool_init(void) { pthread_atfork(NULL, NULL, pool_forget); }

#ifdef SONA_HAVE_HWLOC
/* Keeps new workers on the caller's package (socket), near the memory its data is likely in,
 * when the machine has more than one; on one package the OS places them. Within the package
 * they may move: a worker pinned to one core would wait out that core's other work. */
static void place_workers(const pthread_t *threads, uint32_t n)
{
    hwloc_topology_t topo;
    if (n == 0 || hwloc_topology_init(&topo) != 0)
        return;
    hwloc_bitmap_t here = hwloc_bitmap_alloc();
    if (here && hwloc_topology_load(topo) == 0 && hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PACKAGE) > 1 &&
        hwloc_get_last_cpu_location(topo, here, HWLOC_CPUBIND_THREAD) == 0) {
        const hwloc_obj_t package = hwloc_get_next_obj_covering_cpuset_by_type(topo, here, HWLOC_OBJ_PACKAGE, NULL);
        for (uint32_t i = 0; package && i < n; i++)
            hwloc_set_thread_cpubind(topo, threads[i], package->cpuset, 0); /* best effort */
    }
    hwloc_bitmap_free(here);
    hwloc_topology_destroy(topo);
}
#endif

/* Makes `want` workers exist, at most PARALLEL_MAX_PARTS - 1 (the caller holds busy); returns
 * how many do. */
static uint32_t pool_grow(uint32_t want)
{
    pthread_once(&pool.once, pool_init);
    pthread_t made[PARALLEL_MAX_PARTS];
    uint32_t new_workers = 0;
    while (pool.workers < want) {
        pthread_attr_t attr;
        pthread_t t;
        int ok = pthread_attr_init(&attr) == 0;
        struct worker_start *start = &starts[pool.workers];
        *start = (struct worker_start){pool.workers + 1, atomic_load_explicit(&pool.job, memory_order_relaxed)};
        ok = ok && pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
             pthread_create(&t, &attr, worker, start) == 0;
        pthread_attr_destroy(&attr);
        if (!ok)
            break;
        made[new_workers++] = t;
        pool.workers++;
    }
#ifdef SONA_HAVE_HWLOC
    place_workers(made, new_workers);
#else
    (void)made;
#endif
    return pool.workers;
}

/* ---- per call threads, when the pool is busy -------------------------------------------- */

typedef struct part_job {
    part_fn fn;
    void *arg;
    uint32_t part, parts;
} part_job;

static void *run_part(void *p)
{
    const part_job *j = p;
    j->fn(j->arg, j->part, j->parts);
    return NULL;
}

static void parallel_own_threads(part_fn fn, void *arg, uint32_t parts)
{
    pthread_t threads[PARALLEL_MAX_PARTS];
    part_job jobs[PARALLEL_MAX_PARTS];
    int started[PARALLEL_MAX_PARTS] = {0};
    for (uint32_t p = 1; p < parts; p++) {
        jobs[p] = (part_job){fn, arg, p, parts};
        started[p] = pthread_create(&threads[p], NULL, run_part, &jobs[p]) == 0;
    }
    fn(arg, 0, parts);
    for (uint32_t p = 1; p < parts; p++) {
        if (started[p])
            pthread_join(threads[p], NULL);
        else
            fn(arg, p, parts); /* no thread: the caller does it */
    }
}

void sona_cpu_parallel(part_fn fn, void *arg, uint32_t parts)
{
    if (parts > PARALLEL_MAX_PARTS)
        parts = PARALLEL_MAX_PARTS;
    if (parts <= 1) {
        fn(arg, 0, 1);
        return;
    }
    if (pthread_mutex_trylock(&pool.busy) != 0) {
        parallel_own_threads(fn, arg, parts);
        return;
    }
    const uint32_t grown = pool_grow(parts - 1), on_workers = grown < parts - 1 ? grown : parts - 1;
    pool.fn = fn;
    pool.arg = arg;
    pool.parts = parts;
    pool.on_workers = on_workers;
    atomic_store_explicit(&pool.pending, grown, memory_order_relaxed);
    pthread_mutex_lock(&pool.lock);
    atomic_fetch_add_explicit(&pool.job, 1, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    fn(arg, 0, parts);
    for (uint32_t p = on_workers + 1; p < parts; p++) /* no worker for these: the caller does them */
        fn(arg, p, parts);
    spin_while(&pool.pending, 0, 0);
    pthread_mutex_lock(&pool.lock);
    while (atomic_load_explicit(&pool.pending, memory_order_acquire))
        pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.busy);
}

/* ---- chunks claimed as parts go ---------------------------------------------------------- */

typedef struct chunk_job {
    void (*fn)(void *arg, uint32_t chunk);
    void *arg;
    uint32_t chunks;
    atomic_uint next;
} chunk_job;

static void claim_chunks(void *p, uint32_t part, uint32_t parts)
{
    (void)part;
    (void)parts;
    chunk_job *j = p;
    for (uint32_t c; (c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->chunks;)
        j->fn(j->arg, c);
}

void sona_cpu_parallel_chunks(void (*fn)(void *arg, uint32_t chunk), void *arg, uint32_t chunks, uint32_t parts)
{
    chunk_job j = {fn, arg, chunks, 0};
    if (parts > chunks)
        parts = chunks;
    if (parts > 1)
        sona_cpu_parallel(claim_chunks, &j, parts);
    else
        claim_chunks(&j, 0, 1);
}

