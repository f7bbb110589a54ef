/* libsona quick start: one engine, one tenant, requests that teach its Micro-LoRA which way is
 * better, a batched apply, a save, and the cleanup. Built and run as the ctest entry
 * example_quickstart; exits 0 when every call succeeded and the adapter learned.
 *
 * The "model" here is a stand-in: a real server passes the hidden state it wants adapted (see
 * README.md, "Connecting it to a model"). Each request explores a few outputs around what the
 * adapter gives now and rewards each by how far it goes in the direction the "users" prefer for
 * that query (here a fixed direction scaled by a projection of the query, which a low-rank
 * adapter can represent); the engine learns to move its output that way. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include <sona.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HIDDEN 64    /* the width of the hidden state the adapter applies to */
#define STEPS 4      /* explored alternatives per request */
#define REQUESTS 2000

/* A small deterministic generator for the example's inputs (xorshift64*, uniform in [-1, 1)). */
static float uniform(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return (float)((*s * 2685821657736338717ull) >> 40) / (float)(1u << 23) - 1.0f;
}

static float dot(const float *a, const float *b)
{
    float s = 0.0f;
    for (int i = 0; i < HIDDEN; i++)
        s += a[i] * b[i];
    return s;
}

/* The change the users prefer for query x: target scaled by <u, x>. */
static void preferred(const float *x, const float *target, const float *u, float *d)
{
    const float p = dot(u, x);
    for (int i = 0; i < HIDDEN; i++)
        d[i] = p * target[i];
}

/* The cosine between the adapter's change of x, y - x, and the preferred change. */
static float alignment(const float *x, const float *y, const float *target, const float *u)
{
    float c[HIDDEN], d[HIDDEN];
    preferred(x, target, u, d);
    for (int i = 0; i < HIDDEN; i++)
        c[i] = y[i] - x[i];
    const float n = sqrtf(dot(c, c) * dot(d, d));
    return n > 0.0f ? dot(c, d) / n : 0.0f;
}

static int check(sona_engine *e, sona_status st, const char *what)
{
    if (st == SONA_OK)
        return 1;
    fprintf(stderr, "quickstart: %s: %s (%s)\n", what, sona_status_str(st), sona_engine_last_error(e));
    return 0;
}

int main(void)
{
    /* 1. An engine at the default preset for HIDDEN-wide hidden states. The background thread
     *    runs loop B; this example also forces a cycle at the end. */
    sona_engine_config cfg;
    sona_engine_config_default(&cfg, SONA_PRESET_DEFAULT, HIDDEN);
    cfg.seed = 7;
    sona_engine *e = NULL;
    const sona_status created = sona_engine_create(&cfg, &e);
    if (created != SONA_OK) {
        fprintf(stderr, "quickstart: sona_engine_create: %s (%s)\n", sona_status_str(created), sona_last_error());
        return 1;
    }

    int ok = 1;
    int32_t tenant = -1; /* tenant 0 exists from creation; this makes a second one */
    ok = check(e, sona_tenant_create(e, &tenant), "sona_tenant_create");

    uint64_t rng = 0x5eed;
    float target[HIDDEN], u[HIDDEN], query[HIDDEN], y[HIDDEN], act[HIDDEN], want[HIDDEN];
    for (int i = 0; i < HIDDEN; i++) {
        target[i] = uniform(&rng);
        u[i] = uniform(&rng);
    }

    /* 2. Requests: begin with the query embedding, one step per explored output (its
     *    activations, the layer they came out of, its reward), end with the final quality.
     *    All steps here are alternatives out of layer 0, so loop B trains Base-LoRA layer 0
     *    on their contrast too. */
    for (int r = 0; r < REQUESTS && ok; r++) {
        for (int i = 0; i < HIDDEN; i++)
            query[i] = uniform(&rng);
        ok = check(e, sona_apply(e, tenant, query, y), "sona_apply"); /* the adapter's output now */
        preferred(query, target, u, want);
        sona_request *req = NULL;
        if (ok)
            ok = check(e, sona_request_begin(e, tenant, query, &req), "sona_request_begin");
        float best = -INFINITY;
        for (int s = 0; s < STEPS && ok; s++) {
            for (int i = 0; i < HIDDEN; i++)
                act[i] = y[i] + 0.5f * uniform(&rng); /* an alternative near the output */
            const float reward = dot(act, want) - dot(y, want);
            best = reward > best ? reward : best;
            const sona_status st = sona_request_step(req, 0, act, NULL, 0, reward);
            if (!(ok = check(e, st, "sona_request_step")))
                sona_request_abandon(req); /* a failed step: drop the request, learn nothing */
        }
        if (ok) /* loop A learns from it (in the engine's thread); req is freed in every case */
            ok = check(e, sona_request_end(req, best), "sona_request_end");
    }

    /* 3. Loop B on what is queued (the background thread would do it within 2 s). */
    if (ok)
        ok = check(e, sona_force_learn(e), "sona_force_learn");

    /* 4. Apply: a batch of rows, each through its own tenant's adapter (-1 = none); tenant 0
     *    has learned nothing and is still the identity. */
    enum { ROWS = 8 };
    float xs[ROWS * HIDDEN], ys[ROWS * HIDDEN];
    int32_t ids[ROWS];
    for (int r = 0; r < ROWS; r++)
        ids[r] = r < ROWS - 2 ? tenant : r - (ROWS - 1); /* ..., tenant, 0, -1 */
    for (int i = 0; i < ROWS * HIDDEN; i++)
        xs[i] = uniform(&rng);
    if (ok)
        ok = check(e, sona_apply_batch(e, ROWS, ids, xs, ys), "sona_apply_batch");
    float learned = 0.0f; /* the mean alignment of the tenant's rows */
    for (int r = 0; ok && r < ROWS - 2; r++)
        learned += alignment(xs + r * HIDDEN, ys + r * HIDDEN, target, u) / (ROWS - 2);
    if (ok)
        printf("the tenant's adapter moves outputs along the preferred direction: cos %.2f\n", learned);

    sona_stats stats;
    if (ok && (ok = check(e, sona_get_stats(e, &stats), "sona_get_stats")))
        printf("%llu requests recorded, %llu learned from by loop B, %llu Micro-LoRA updates\n",
               (unsigned long long)stats.trajectories_recorded,
               (unsigned long long)stats.trajectories_processed, (unsigned long long)stats.micro_updates);

    /* 5. Save everything learned (atomically: a temporary file, fsync, rename). */
    char dir[] = "/tmp/sona-quickstart-XXXXXX", path[sizeof dir + 16];
    if (ok && !mkdtemp(dir)) {
        perror("quickstart: mkdtemp");
        ok = 0;
    }
    if (ok) {
        snprintf(path, sizeof path, "%s/state.sona", dir);
        ok = check(e, sona_save(e, path), "sona_save");
        if (ok)
            printf("saved to %s\n", path);
        remove(path);
        rmdir(dir);
    }

    /* 6. Destroy: stops the loop thread and frees everything. */
    sona_engine_destroy(e);
    if (ok && !(learned > 0.3f)) {
        fprintf(stderr, "quickstart: the adapter did not learn the preferred direction (cos %.2f)\n", learned);
        ok = 0;
    }
    return ok ? 0 : 1;
}
