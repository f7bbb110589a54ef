/* SPDX-License-Identifier: MIT */
#include "support/synth_task.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void random_unit(sona_rng *r, float *v, uint32_t n)
{
    double n2 = 0;
    for (uint32_t i = 0; i < n; i++) {
        v[i] = sona_rng_normal(r);
        n2 += (double)v[i] * v[i];
    }
    for (uint32_t i = 0; i < n; i++)
        v[i] = (float)(v[i] / sqrt(n2));
}

static double norm(const float *a, uint32_t n)
{
    double s = 0;
    for (uint32_t i = 0; i < n; i++)
        s += (double)a[i] * a[i];
    return sqrt(s);
}

static double cosine(const float *a, const float *b, uint32_t n)
{
    double ab = 0;
    for (uint32_t i = 0; i < n; i++)
        ab += (double)a[i] * b[i];
    const double d = norm(a, n) * norm(b, n);
    return d > 0 ? ab / d : 0;
}

int synth_task_init(synth_task *t, uint32_t hidden, uint32_t clusters, uint64_t seed, uint64_t stream)
{
    memset(t, 0, sizeof *t);
    t->hidden = hidden;
    t->clusters = clusters;
    t->spread = 0.3f;
    t->explore = 0.5f;
    t->steps = 4;
    t->centers = malloc((size_t)clusters * hidden * sizeof(float));
    t->targets = malloc((size_t)clusters * hidden * sizeof(float));
    if (!t->centers || !t->targets)
        return -1;
    sona_rng r;
    sona_rng_seed(&r, seed, stream);
    for (uint32_t c = 0; c < clusters; c++) {
        random_unit(&r, t->centers + (size_t)c * hidden, hidden);
        random_unit(&r, t->targets + (size_t)c * hidden, hidden);
    }
    return 0;
}

void synth_task_free(synth_task *t)
{
    free(t->centers);
    free(t->targets);
    memset(t, 0, sizeof *t);
}

double synth_task_run(const synth_task *t, sona_engine *e, int32_t tenant, uint32_t n, sona_rng *rng,
                      int learn)
{
    const uint32_t H = t->hidden, S = t->steps ? t->steps : 1;
    float *x = malloc(H * sizeof *x), *y = malloc(H * sizeof *y), *a = malloc((size_t)S * H * sizeof *a);
    float *rewards = malloc(S * sizeof *rewards);
    double sum = 0;
    uint32_t done = 0;
    for (; done < n; done++) {
        const uint32_t c = sona_rng_below(rng, t->clusters);
        const float *center = t->centers + (size_t)c * H, *target = t->targets + (size_t)c * H;
        for (uint32_t h = 0; h < H; h++)
            x[h] = center[h] + t->spread * sona_rng_normal(rng) / sqrtf((float)H);
        if (sona_apply(e, tenant, x, y) != SONA_OK)
            break;
        sum += (1.0 + cosine(y, target, H)) / 2.0;
        if (!learn)
            continue;
        const double ny = norm(y, H);
        double quality = 0;
        for (uint32_t s = 0; s < S; s++) {
            float *as = a + (size_t)s * H;
            for (uint32_t h = 0; h < H; h++)
                as[h] = y[h] + (float)(t->explore * ny) * sona_rng_normal(rng) / sqrtf((float)H);
            const double k = ny / norm(as, H);
            for (uint32_t h = 0; h < H; h++)
                as[h] = (float)(as[h] * k);
            rewards[s] = (float)((1.0 + cosine(as, target, H)) / 2.0 + t->reward_noise * sona_rng_normal(rng));
            quality += rewards[s] / S;
        }
        sona_request *r;
        if (sona_request_begin(e, tenant, x, &r) != SONA_OK)
            break;
        for (uint32_t s = 0; s < S; s++)
            sona_request_step(r, s, a + (size_t)s * H, NULL, 0, t->final_only ? (float)quality : rewards[s]);
        sona_request_end(r, (float)quality);
    }
    free(x);
    free(y);
    free(a);
    free(rewards);
    return done ? sum / done : 0;
}

double synth_task_score(const synth_task *t, sona_engine *e, int32_t tenant, uint64_t seed, uint64_t stream)
{
    sona_rng r;
    sona_rng_seed(&r, seed, stream);
    return synth_task_run(t, e, tenant, 300, &r, 0);
}
