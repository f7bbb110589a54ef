/* SPDX-License-Identifier: MIT */
/* sona_sync over MPI (libsona-mpi), run by ctest under mpirun -np 3 (label "mpi"): each rank
 * learns from its own traffic, then after sona_sync every rank's Base-LoRA, as sona_export_peft
 * writes it, is the same file byte for byte; the weights follow the trajectories each rank
 * learned from; the global counters are the MPI sum of the local ones; a second sync with
 * nothing learned changes no byte. Only the public API and MPI: a plain main (no Criterion,
 * whose forking does not mix with MPI). Exit 0 on success on every rank. */
#include <sona.h>
#include <sona/comm_mpi.h>

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { H = 32, LAYERS = 3, RANK = 4, STEPS = 3 };

static int failures;
#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "rank %d: %s:%d: check failed: %s: ", my_rank, __FILE__,       \
                    __LINE__, #cond);                                                      \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)
static int my_rank;

static uint64_t next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float uniform(uint64_t *s) { return (float)((next(s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

/* n requests with random queries, steps on layers 0..STEPS-1 and rewards that favour one
 * direction, a loop B cycle every 10. */
static void train(sona_engine *e, uint64_t *rng, uint32_t n)
{
    float q[H], a[H], target[H];
    uint64_t fixed = 7;
    for (int i = 0; i < H; i++)
        target[i] = uniform(&fixed);
    for (uint32_t r = 0; r < n; r++) {
        for (int i = 0; i < H; i++)
            q[i] = uniform(rng);
        sona_request *req = NULL;
        if (sona_request_begin(e, 0, q, &req) != SONA_OK)
            abort();
        double quality = 0.0;
        for (uint32_t s = 0; s < STEPS; s++) {
            double dot = 0.0;
            for (int i = 0; i < H; i++)
                dot += (a[i] = q[i] + uniform(rng)) * target[i];
            const float reward = dot > 0 ? 1.0f : 0.0f;
            quality += reward / STEPS;
            if (sona_request_step(req, s, a, NULL, 0, reward) != SONA_OK)
                abort();
        }
        if (sona_request_end(req, (float)quality) != SONA_OK)
            abort();
        if (r % 10 == 9 && sona_force_learn(e) != SONA_OK)
            abort();
    }
    if (sona_force_learn(e) != SONA_OK)
        abort();
}

/* The whole file dir/adapter_model.safetensors; *len its size. */
static unsigned char *read_export(sona_engine *e, const char *dir, long *len)
{
    if (sona_export_peft(e, dir, NULL) != SONA_OK) {
        fprintf(stderr, "rank %d: export: %s\n", my_rank, sona_engine_last_error(e));
        exit(2);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    FILE *f = fopen(path, "rb");
    if (!f || fseek(f, 0, SEEK_END) || (*len = ftell(f)) <= 0 || fseek(f, 0, SEEK_SET))
        exit(2);
    unsigned char *buf = malloc((size_t)*len);
    if (!buf || fread(buf, 1, (size_t)*len, f) != (size_t)*len)
        exit(2);
    fclose(f);
    return buf;
}

/* 1 on every rank when rank 0's bytes equal this rank's on every rank. */
static int same_everywhere(const unsigned char *mine, long len)
{
    long len0 = len;
    MPI_Bcast(&len0, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    unsigned char *root = malloc((size_t)len0);
    if (!root)
        exit(2);
    if (my_rank == 0)
        memcpy(root, mine, (size_t)len);
    MPI_Bcast(root, (int)len0, MPI_BYTE, 0, MPI_COMM_WORLD);
    int same = len0 == len && memcmp(root, mine, (size_t)len) == 0, all = 0;
    MPI_Allreduce(&same, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    free(root);
    return all;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &my_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    uint64_t seed = (uint64_t)time(NULL);
    const char *env = getenv("SONA_TEST_SEED");
    if (env)
        seed = strtoull(env, NULL, 10);
    MPI_Bcast(&seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    if (my_rank == 0)
        printf("seed %" PRIu64 ", %d ranks\n", seed, size);

    sona_engine_config cfg;
    sona_engine_config_default(&cfg, SONA_PRESET_DEFAULT, H);
    cfg.base_layers = LAYERS;
    cfg.base_rank = RANK;
    cfg.base_alpha = 2.0f * RANK;
    cfg.background_thread = 0;
    cfg.device_apply = 0;
    cfg.loop_b_threshold = 1u << 30;
    cfg.loop_b_interval_ms = 0;
    sona_engine *e = NULL;
    if (sona_engine_create(&cfg, &e) != SONA_OK)
        return 2;
    uint64_t rng = seed ^ (0x1234567ull * (uint64_t)(my_rank + 1));
    const uint32_t n = 40 + 30 * (uint32_t)my_rank; /* unequal traffic: unequal weights */
    train(e, &rng, n);
    sona_stats local;
    sona_get_stats(e, &local);

    sona_comm *comm = NULL;
    CHECK(sona_comm_mpi(MPI_COMM_WORLD, &comm) == SONA_OK, "sona_comm_mpi");
    uint32_t r = 0, k = 0;
    CHECK(sona_comm_rank(comm, &r) == SONA_OK && r == (uint32_t)my_rank, "rank %u", r);
    CHECK(sona_comm_size(comm, &k) == SONA_OK && k == (uint32_t)size, "size %u", k);
    float v[3] = {1.0f, (float)my_rank, 0.5f};
    CHECK(sona_comm_allreduce_sum(comm, v, 3) == SONA_OK, "allreduce");
    CHECK(v[0] == (float)size && v[1] == (float)(size * (size - 1) / 2), "sum %g %g", v[0], v[1]);

    char base[] = "/tmp/sona-sync-mpi-XXXXXX", d1[600], d2[600], d0[600];
    if (!mkdtemp(base))
        return 2;
    snprintf(d0, sizeof d0, "%s/before", base);
    snprintf(d1, sizeof d1, "%s/after", base);
    snprintf(d2, sizeof d2, "%s/again", base);
    long l0 = 0, l1 = 0, l2 = 0;
    unsigned char *b0 = read_export(e, d0, &l0);
    CHECK(!same_everywhere(b0, l0), "the ranks should differ before the sync");

    sona_sync_result res;
    CHECK(sona_sync(e, comm, NULL, &res) == SONA_OK, "%s", sona_engine_last_error(e));
    unsigned char *b1 = read_export(e, d1, &l1);
    CHECK(same_everywhere(b1, l1), "Base-LoRA differs between ranks after the sync");
    /* The pattern bank and EWC++'s task count: the same on every rank (a search, and each hit's
     * centroid and statistics, as bytes). */
    {
        sona_stats after;
        CHECK(sona_get_stats(e, &after) == SONA_OK, "stats");
        float q[H], c[H];
        for (int h = 0; h < H; h++)
            q[h] = (float)h / H - 0.25f;
        sona_pattern_hit hits[8];
        uint32_t found = 0;
        CHECK(sona_find_patterns(e, q, 8, hits, &found) == SONA_OK, "%s", sona_engine_last_error(e));
        CHECK(found > 0, "no pattern found after the sync");
        unsigned char buf[8 + 8 * (8 + 4 + 4 + 4 + sizeof c)], *o = buf;
        memcpy(o, &after.patterns, 4), o += 4;
        memcpy(o, &after.tasks, 4), o += 4;
        for (uint32_t i = 0; i < found; i++) {
            sona_pattern p;
            CHECK(sona_engine_pattern(e, hits[i].id, &p, c) == SONA_OK, "pattern");
            memcpy(o, &hits[i].id, 8), o += 8;
            memcpy(o, &hits[i].similarity, 4), o += 4;
            memcpy(o, &hits[i].avg_quality, 4), o += 4;
            memcpy(o, &hits[i].size, 4), o += 4;
            memcpy(o, c, sizeof c), o += sizeof c;
        }
        CHECK(same_everywhere(buf, (long)(o - buf)), "the pattern bank differs between ranks");
    }

    /* Weights by trajectories learned: this rank's processed over the sum. */
    uint64_t processed = local.trajectories_processed, total = 0, recorded = 0;
    MPI_Allreduce(&processed, &total, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(&local.trajectories_recorded, &recorded, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    CHECK(res.ranks == (uint32_t)size && res.rank == (uint32_t)my_rank, "%u %u", res.ranks, res.rank);
    CHECK(fabs(res.weight - (double)processed / (double)total) < 1e-12, "weight %.17g", res.weight);
    CHECK(res.global.trajectories_processed == total, "%" PRIu64, res.global.trajectories_processed);
    CHECK(res.global.trajectories_recorded == recorded, "%" PRIu64, res.global.trajectories_recorded);
    CHECK(res.merge_error > 0.0 && res.merge_error < 1.0, "merge_error %g", res.merge_error);
    double e0 = res.merge_error;
    MPI_Bcast(&e0, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    CHECK(e0 == res.merge_error, "merge_error differs between ranks");
    if (my_rank == 0)
        printf("synced %d ranks: %" PRIu64 " trajectories, merge relative error %.6g\n", size,
               total, res.merge_error);

    /* Nothing learned since: no byte changes. */
    CHECK(sona_sync(e, comm, NULL, &res) == SONA_OK, "%s", sona_engine_last_error(e));
    unsigned char *b2 = read_export(e, d2, &l2);
    CHECK(l2 == l1 && memcmp(b1, b2, (size_t)l1) == 0, "a sync with nothing new changed bytes");
    CHECK(res.merge_error == 0.0, "%g", res.merge_error);

    free(b0), free(b1), free(b2);
    sona_comm_destroy(comm);
    sona_engine_destroy(e);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    if (system(cmd) != 0)
        failures++;
    int all = 0;
    MPI_Allreduce(&failures, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    if (my_rank == 0)
        printf("%s\n", all ? "FAILED" : "passed");
    return all ? 1 : 0;
}
