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

static double cosine(const float *a, const float *b, uint32_t n)
{
    double ab = 0, aa = 0, bb = 0;
    for (uint32_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0;
}

int synth_task_init(synth_task *t, uint32_t hidden, uint32_t clusters, uint64_t seed, uint64_t stream)
{
    memset(t, 0, sizeof *t);
    t->hidden = hidden;
    t->clusters = clusters;
    t->spread = 0.3f;
    t->explore = 2.0f;
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

int synth_task_retarget(synth_task *t, const synth_task *from, uint64_t seed, uint64_t stream)
{
    if (synth_task_init(t, from->hidden, from->clusters, seed, stream))
        return -1;
    memcpy(t->centers, from->centers, (size_t)from->clusters * from->hidden * sizeof(float));
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
    const uint32_t H = t->hidden;
    float *x = malloc(H * sizeof *x), *y = malloc(H * sizeof *y), *a = malloc(H * sizeof *a);
    double sum = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t c = sona_rng_below(rng, t->clusters);
        const float *center = t->centers + (size_t)c * H, *target = t->targets + (size_t)c * H;
        for (uint32_t h = 0; h < H; h++)
            x[h] = center[h] + t->spread * sona_rng_normal(rng) / sqrtf((float)H);
        if (sona_apply(e, tenant, x, y) != SONA_OK)
            break;
        sum += cosine(y, target, H);
        if (!learn)
            continue;
        /* The response explores around the adapted output; its quality is the feedback. The
         * recorded activation is the exploration (what this response did differently). */
        for (uint32_t h = 0; h < H; h++)
            a[h] = t->explore * sona_rng_normal(rng) / sqrtf((float)H);
        for (uint32_t h = 0; h < H; h++)
            y[h] += a[h];
        const float q = (float)cosine(y, target, H);
        sona_request *r;
        if (sona_request_begin(e, tenant, x, &r) != SONA_OK)
            break;
        sona_request_step(r, 0, a, NULL, 0, q);
        sona_request_end(r, q);
    }
    free(x);
    free(y);
    free(a);
    return sum / n;
}
