/* SPDX-License-Identifier: MIT */
/* sona_sync_bench: sona_sync's time and bytes over MPI against the parameter count and the
 * ranks (issue #16's benchmark). Run under mpirun, e.g.
 *   mpirun --oversubscribe --allow-run-as-root -np 4 build/bin/sona_sync_bench
 * Every rank holds an engine of base_layers x hidden x rank; before each timed sync every rank
 * moves its Base-LoRA away from what the last sync left (A by --drift-a, B by --drift-b of
 * their RMS, seeded per rank: "what each learned since"), so every sync merges real work.
 * The collectives are MPI's, wrapped here to count the bytes each rank must receive (a ring
 * all-reduce of n floats: 2 (k-1)/k 4n; an all-gather: (k-1) blocks) and the time spent in
 * them. Printed per shape: the sync's wall time (the slowest rank's) as median and p99, bytes
 * per rank and their ratio to a ring all-reduce of Base-LoRA's parameters and their EWC++
 * Fisher (--no-ewc: the parameters alone), the CPU time a rank
 * spends outside the collectives (median of the slowest rank's: the merge's computation with
 * the export and the publish; robust to a loaded machine), the share of the wall time outside
 * the collectives (the merge's computation, with the export and the publish), and
 * for one sync the relative error against the dense average |M - merged|_F / |M|_F, computed
 * exactly from the factors (Gram matrices, no hidden x hidden matrix), beside the optimal
 * rank-r error (the exact merge's). */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "core/adapt/merge.h"
#include "engine/inspect.h"
#include "sona.h"
#include "sona/comm.h"

typedef struct counted {
    MPI_Comm comm;
    int rank, size;
    double bytes, seconds, cpu; /* this sync's: bytes, wall and CPU seconds in collectives */
} counted;

static double cpu_now(void) { return sona_clock_s(CLOCK_PROCESS_CPUTIME_ID); }

static sona_status c_rank(void *ctx, uint32_t *r)
{
    *r = (uint32_t)((counted *)ctx)->rank;
    return SONA_OK;
}

static sona_status c_size(void *ctx, uint32_t *s)
{
    *s = (uint32_t)((counted *)ctx)->size;
    return SONA_OK;
}

static sona_status c_allreduce(void *ctx, float *data, size_t n)
{
    counted *c = ctx;
    const double t0 = MPI_Wtime(), c0 = cpu_now();
    const int rc = MPI_Allreduce(MPI_IN_PLACE, data, (int)n, MPI_FLOAT, MPI_SUM, c->comm);
    c->seconds += MPI_Wtime() - t0;
    c->cpu += cpu_now() - c0;
    c->bytes += 2.0 * (c->size - 1) / c->size * 4.0 * (double)n;
    return rc == MPI_SUCCESS ? SONA_OK : SONA_E_BACKEND;
}

static sona_status c_allgather(void *ctx, const void *send, size_t bytes, void *recv)
{
    counted *c = ctx;
    const double t0 = MPI_Wtime(), c0 = cpu_now();
    const int rc = MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, c->comm);
    c->seconds += MPI_Wtime() - t0;
    c->cpu += cpu_now() - c0;
    c->bytes += (double)(c->size - 1) * (double)bytes;
    return rc == MPI_SUCCESS ? SONA_OK : SONA_E_BACKEND;
}

static uint64_t next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float uni(uint64_t *s) { return (float)((next(s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

static int cmp_d(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* |sum_i w_i B_i A_i|_F^2 of n adapters (rank x hidden each, A then Bt) from the Gram
 * matrices of the stacked factors: sum_ab (L^T L)_ab (R R^T)_ab. */
static double norm2_factored(size_t H, size_t r, size_t n, const float *const *A,
                             const float *const *Bt, const double *w)
{
    const size_t m = n * r;
    double *gl = calloc(m * m, sizeof *gl), *gr = calloc(m * m, sizeof *gr), s = 0.0;
    for (size_t a = 0; a < m; a++)
        for (size_t b = 0; b <= a; b++) {
            const float *ba = Bt[a / r] + (a % r) * H, *bb = Bt[b / r] + (b % r) * H;
            const float *aa = A[a / r] + (a % r) * H, *ab = A[b / r] + (b % r) * H;
            double x = 0.0, y = 0.0;
            for (size_t h = 0; h < H; h++) {
                x += (double)ba[h] * bb[h];
                y += (double)aa[h] * ab[h];
            }
            gl[a * m + b] = gl[b * m + a] = x * w[a / r] * w[b / r];
            gr[a * m + b] = gr[b * m + a] = y;
        }
    for (size_t i = 0; i < m * m; i++)
        s += gl[i] * gr[i];
    free(gl), free(gr);
    return s;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    counted c = {MPI_COMM_WORLD, 0, 1, 0, 0, 0};
    MPI_Comm_rank(c.comm, &c.rank);
    MPI_Comm_size(c.comm, &c.size);
    int reps = 30, layers = 12, exact = 0, independent = 0, no_ewc = 0;
    sona_sync_config defaults;
    sona_sync_config_default(&defaults);
    sona_sync_merge merge = defaults.merge; /* the library's default (paced) */
    static const char *merge_names[] = {"average", "changes", "paced"};
    float drift_a = 0.05f, drift_b = 0.5f;
    const char *hiddens = "1024,4096", *ranks = "8,16";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--layers") && i + 1 < argc)
            layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--hidden") && i + 1 < argc)
            hiddens = argv[++i];
        else if (!strcmp(argv[i], "--rank") && i + 1 < argc)
            ranks = argv[++i];
        else if (!strcmp(argv[i], "--drift-a") && i + 1 < argc)
            drift_a = (float)atof(argv[++i]);
        else if (!strcmp(argv[i], "--drift-b") && i + 1 < argc)
            drift_b = (float)atof(argv[++i]);
        else if (!strcmp(argv[i], "--no-ewc"))
            no_ewc = 1;
        else if (!strcmp(argv[i], "--exact"))
            exact = 1;
        else if (!strcmp(argv[i], "--merge") && i + 1 < argc) {
            const char *m = argv[++i];
            merge = !strcmp(m, "average") ? SONA_SYNC_AVERAGE : !strcmp(m, "changes") ? SONA_SYNC_CHANGES
                    : SONA_SYNC_PACED;
        }
        else if (!strcmp(argv[i], "--independent"))
            independent = 1; /* every rank's adapter drawn afresh: no shared past, worst case */
        else {
            if (!c.rank)
                fprintf(stderr, "usage: sona_sync_bench [--reps N] [--layers L] [--hidden "
                        "1024,4096] [--rank 8,16] [--drift-a f] [--drift-b f] [--exact] "
                        "[--merge average|changes|paced] [--independent] [--no-ewc]\n");
            MPI_Finalize();
            return 2;
        }
    }
    sona_comm_ops ops = {&c, c_rank, c_size, c_allreduce, c_allgather, NULL};
    sona_comm *comm = NULL;
    if (sona_comm_create(&ops, &comm) != SONA_OK)
        MPI_Abort(c.comm, 1);
    if (!c.rank)
        printf("# sona_sync_bench: %d ranks, %d layers, method %s, merge %s, %s, %d syncs a shape; "
               "merge: the merge's own arithmetic, CPU ms (the largest rank's) and as a share of the "
               "median sync; x ring: bytes over a ring all-reduce of Base-LoRA and its EWC++ Fisher; "
               "error: the "
               "library's merge_error against its merge's target; vs average and optimal (merge "
               "average only): the merged Base-LoRA against the dense average, and the best rank-r "
               "error there\n"
               "%-7s %-5s %10s %10s %10s %10s %10s %8s %12s %8s %8s %10s %10s %10s\n", c.size, layers,
               exact ? "exact" : "sketch", merge_names[merge],
               independent ? "independent adapters" : "drift from the last sync", reps, "hidden",
               "rank", "params", "median ms", "p99 ms", "cpu ms", "merge ms", "merge %", "bytes/rank",
               "x ring", "compute",
               "error", "vs average", "optimal");
    for (const char *hp = hiddens; *hp;) {
        const uint32_t H = (uint32_t)strtoul(hp, (char **)&hp, 10);
        if (*hp == ',')
            hp++;
        for (const char *rp = ranks; *rp;) {
            const uint32_t r = (uint32_t)strtoul(rp, (char **)&rp, 10);
            if (*rp == ',')
                rp++;
            sona_engine_config cfg;
            sona_engine_config_default(&cfg, SONA_PRESET_DEFAULT, H);
            cfg.hidden = H;
            cfg.base_layers = (uint32_t)layers;
            cfg.base_rank = r;
            cfg.base_alpha = 2.0f * r;
            cfg.max_tenants = 1;
            cfg.ewc_enabled = !no_ewc;
            cfg.background_thread = 0;
            cfg.device_apply = 0;
            cfg.loop_b_threshold = 1u << 30;
            cfg.loop_b_interval_ms = 0;
            sona_engine *e = NULL;
            if (sona_engine_create(&cfg, &e) != SONA_OK) {
                fprintf(stderr, "rank %d: %s\n", c.rank, sona_last_error());
                MPI_Abort(c.comm, 1);
            }
            const size_t af = (size_t)layers * r * H;
            float *A = malloc(af * sizeof *A), *Bt = malloc(af * sizeof *Bt);
            uint64_t seed = 1234; /* the same start on every rank */
            for (size_t i = 0; i < af; i++) {
                A[i] = uni(&seed) / sqrtf((float)H);
                Bt[i] = 0.01f * uni(&seed);
            }
            sona_sync_config sc;
            sona_sync_config_default(&sc);
            sc.method = exact ? SONA_SYNC_EXACT : SONA_SYNC_SKETCH;
            sc.merge = merge;
            if (eng_inspect_set_base_weights(e, A, Bt) != SONA_OK ||
                sona_sync(e, comm, &sc, NULL) != SONA_OK) /* S: the shared start */
                MPI_Abort(c.comm, 1);
            double *t = malloc(3 * (size_t)reps * sizeof *t), bytes = 0.0, comm_s = 0.0;
            double total_s = 0.0, *cpu = t + reps, *merge_s = cpu + reps;
            double err = 0.0, opt = 0.0, lib_err = 0.0;
            uint64_t rs = 777 + 1000003ull * (uint64_t)c.rank;
            for (int rep = 0; rep < reps; rep++) {
                eng_inspect_base_weights(e, A, Bt);
                if (independent)
                    for (size_t i = 0; i < af; i++) {
                        A[i] = uni(&rs) / sqrtf((float)H);
                        Bt[i] = 0.01f * uni(&rs);
                    }
                else {
                    double sa = 0.0, sb = 0.0;
                    for (size_t i = 0; i < af; i++)
                        sa += (double)A[i] * A[i], sb += (double)Bt[i] * Bt[i];
                    const float ra = (float)sqrt(sa / af) * drift_a * 1.7320508f;
                    const float rb = (float)sqrt(sb / af) * drift_b * 1.7320508f; /* U(-1,1): RMS 1/sqrt3 */
                    for (size_t i = 0; i < af; i++) {
                        A[i] += ra * uni(&rs);
                        Bt[i] += rb * uni(&rs);
                    }
                }
                eng_inspect_set_base_weights(e, A, Bt);
                c.bytes = c.seconds = c.cpu = 0.0;
                MPI_Barrier(c.comm);
                const double t0 = MPI_Wtime(), c0 = cpu_now();
                sona_sync_result res;
                if (sona_sync(e, comm, &sc, &res) != SONA_OK)
                    MPI_Abort(c.comm, 1);
                const double dt = MPI_Wtime() - t0, dc = cpu_now() - c0 - c.cpu;
                MPI_Allreduce(&dt, &t[rep], 1, MPI_DOUBLE, MPI_MAX, c.comm);
                MPI_Allreduce(&dc, &cpu[rep], 1, MPI_DOUBLE, MPI_MAX, c.comm);
                const double dm = 1e-6 * res.merge_us;
                MPI_Allreduce(&dm, &merge_s[rep], 1, MPI_DOUBLE, MPI_MAX, c.comm);
                bytes = c.bytes;
                lib_err = res.merge_error;
                comm_s += c.seconds;
                total_s += dt;
                if (rep == reps - 1) { /* the error of this sync, against the dense average */
                    float *all = !c.rank ? malloc(2 * af * c.size * sizeof *all) : NULL;
                    float *mine = malloc(2 * af * sizeof *mine);
                    memcpy(mine, A, af * sizeof *A);
                    memcpy(mine + af, Bt, af * sizeof *Bt);
                    MPI_Gather(mine, (int)(2 * af), MPI_FLOAT, all, (int)(2 * af), MPI_FLOAT, 0,
                               c.comm);
                    if (!c.rank) {
                        float *mA = malloc(af * sizeof *mA), *mB = malloc(af * sizeof *mB);
                        float *oA = malloc(r * H * sizeof *oA), *oB = malloc(r * H * sizeof *oB);
                        eng_inspect_base_weights(e, mA, mB);
                        const float **pa = malloc((c.size + 1) * sizeof *pa);
                        const float **pb = malloc((c.size + 1) * sizeof *pb);
                        double *w = malloc((c.size + 1) * sizeof *w), e2 = 0.0, n2 = 0.0;
                        double tail = 0.0, tot = 0.0;
                        for (int l = 0; l < layers; l++) {
                            for (int i = 0; i < c.size; i++) {
                                pa[i] = all + 2 * af * i + (size_t)l * r * H;
                                pb[i] = all + 2 * af * i + af + (size_t)l * r * H;
                                w[i] = 1.0 / c.size;
                            }
                            n2 += norm2_factored(H, r, c.size, pa, pb, w);
                            pa[c.size] = mA + (size_t)l * r * H;
                            pb[c.size] = mB + (size_t)l * r * H;
                            w[c.size] = -1.0;
                            e2 += norm2_factored(H, r, c.size + 1, pa, pb, w);
                            sona_merge_info info;
                            sona_lora_merge(H, r, c.size, pa, pb, w, oA, oB, &info);
                            tail += info.tail;
                            tot += info.total;
                        }
                        err = n2 > 0.0 ? sqrt(fmax(e2, 0.0) / n2) : 0.0; /* e2: rounding */
                        opt = sqrt(tail / tot);
                        free(mA), free(mB), free(oA), free(oB), free(pa), free(pb), free(w);
                    }
                    free(all), free(mine);
                }
            }
            /* The compute share: time outside the collectives, the largest over the ranks. */
            double share = (total_s - comm_s) / total_s, share_max = 0.0;
            MPI_Reduce(&share, &share_max, 1, MPI_DOUBLE, MPI_MAX, 0, c.comm);
            if (!c.rank) {
                qsort(t, (size_t)reps, sizeof *t, cmp_d);
                qsort(cpu, (size_t)reps, sizeof *cpu, cmp_d);
                qsort(merge_s, (size_t)reps, sizeof *merge_s, cmp_d);
                /* Base-LoRA plus, with EWC++ on, its running Fisher (as many floats). */
                const double ring = 2.0 * (c.size - 1) / c.size * 4.0 * 2.0 * (double)af *
                                    (cfg.ewc_enabled ? 2.0 : 1.0);
                const int p99 = (int)ceil(0.99 * reps) - 1;
                char vs[32] = "-", op[32] = "-";
                if (merge == SONA_SYNC_AVERAGE) {
                    snprintf(vs, sizeof vs, "%.3g", err);
                    snprintf(op, sizeof op, "%.3g", opt);
                }
                printf("%-7u %-5u %10zu %10.2f %10.2f %10.2f %10.2f %7.1f%% %12.0f %8.3f %7.1f%% %10.3g %10s %10s\n",
                       H, r, 2 * af, 1e3 * t[reps / 2], 1e3 * t[p99 < 0 ? 0 : p99],
                       1e3 * cpu[reps / 2], 1e3 * merge_s[reps / 2],
                       100.0 * merge_s[reps / 2] / t[reps / 2], bytes,
                       c.size > 1 ? bytes / ring : 0.0, 100.0 * share_max, lib_err, vs, op);
                fflush(stdout);
            }
            free(t), free(A), free(Bt);
            sona_engine_destroy(e);
        }
    }
    sona_comm_destroy(comm);
    MPI_Finalize();
    return 0;
}
