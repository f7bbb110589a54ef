/* The engine's trajectory records, their FIFO to loop B, and the learning signal of one. */
#include "core/engine_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

eng_traj *eng_traj_alloc(uint32_t hidden, uint32_t max_steps)
{
    const size_t H = hidden, floats = H + (size_t)max_steps * H + max_steps;
    eng_traj *t = malloc(sizeof *t + floats * sizeof(float) + max_steps * sizeof(uint32_t));
    if (!t)
        return NULL;
    float *f = (float *)(t + 1);
    *t = (eng_traj){.tenant = 0, .query = f, .acts = f + H, .rewards = f + H + (size_t)max_steps * H};
    t->layers = (uint32_t *)(t->rewards + max_steps);
    return t;
}

void eng_traj_free(eng_traj *t) { free(t); }

sona_status eng_queue_init(eng_queue *q, uint32_t cap)
{
    memset(q, 0, sizeof *q);
    if (!(q->items = malloc(cap * sizeof *q->items)))
        return SONA_E_NOMEM;
    q->cap = cap;
    pthread_mutex_init(&q->mu, NULL);
    return SONA_OK;
}

void eng_queue_destroy(eng_queue *q)
{
    if (!q->items)
        return;
    for (uint32_t i = 0; i < q->len; i++)
        eng_traj_free(q->items[(q->head + i) % q->cap]);
    free(q->items);
    q->items = NULL;
    pthread_mutex_destroy(&q->mu);
}

int eng_queue_push(eng_queue *q, eng_traj *t)
{
    pthread_mutex_lock(&q->mu);
    int ok = q->len < q->cap;
    if (ok)
        q->items[(q->head + q->len++) % q->cap] = t;
    pthread_mutex_unlock(&q->mu);
    return ok;
}

uint32_t eng_queue_pop(eng_queue *q, eng_traj **out, uint32_t max)
{
    pthread_mutex_lock(&q->mu);
    uint32_t n = q->len < max ? q->len : max;
    for (uint32_t i = 0; i < n; i++)
        out[i] = q->items[(q->head + i) % q->cap];
    q->head = (q->head + n) % q->cap;
    q->len -= n;
    pthread_mutex_unlock(&q->mu);
    return n;
}

uint32_t eng_queue_len(eng_queue *q)
{
    pthread_mutex_lock(&q->mu);
    uint32_t n = q->len;
    pthread_mutex_unlock(&q->mu);
    return n;
}

int eng_signal(const eng_traj *t, uint32_t hidden, float baseline, float *delta, float *w)
{
    if (t->steps == 0)
        return 0;
    const size_t H = hidden;
    float rmin = t->rewards[0], rmax = t->rewards[0], rmean = 0;
    for (uint32_t s = 0; s < t->steps; s++) {
        rmin = fminf(rmin, t->rewards[s]);
        rmax = fmaxf(rmax, t->rewards[s]);
        rmean += t->rewards[s] / (float)t->steps;
    }
    memset(delta, 0, H * sizeof *delta);
    if (rmax - rmin > 1e-6f) { /* reward-weighted contrast of the steps */
        for (uint32_t s = 0; s < t->steps; s++) {
            const float c = t->rewards[s] - rmean, *a = t->acts + s * H;
            for (size_t h = 0; h < H; h++)
                delta[h] += c * a[h];
        }
    } else {
        memcpy(delta, t->acts + (t->steps - 1) * H, H * sizeof *delta);
    }
    double n2 = 0;
    for (size_t h = 0; h < H; h++)
        n2 += (double)delta[h] * delta[h];
    if (n2 <= 1e-30)
        return 0;
    const float inv = (float)(1.0 / sqrt(n2));
    for (size_t h = 0; h < H; h++)
        delta[h] *= inv;
    *w = t->quality - baseline;
    return 1;
}
