/* SPDX-License-Identifier: MIT */
/* libsona OpenCL kernels (OpenCL C 1.2). Embedded into libsona-opencl.so at build time.
 * SONA_WG (a power of two) is the work-group size of the kernels that reduce in local memory;
 * the host passes it with -D. Every op writes its outputs from one kernel only (the last one it
 * launches), so a launch that fails leaves the outputs untouched and the CPU can redo the op. */

/* Sum of v[0..SONA_WG) into v[0]; every work item of the group must call it. */
static void group_sum(__local float *v)
{
    const uint lid = get_local_id(0);
    for (uint stride = SONA_WG / 2; stride > 0; stride >>= 1) {
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid < stride)
            v[lid] += v[lid + stride];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
}

/* One work group per row: t = scale * A x (rank reductions), then y = x + Bt^T t.
 * x and y may be the same buffer: every x is read before the barrier that precedes writes. */
__kernel void lora_apply(uint H, uint r, __global const float *A, __global const float *Bt,
                         __global const float *scale, __global const int *ids,
                         __global const float *x, __global float *y)
{
    __local float part[SONA_WG];
    __local float t[64];
    const uint row = get_group_id(0), lid = get_local_id(0);
    const int id = ids[row];
    __global const float *xr = x + (size_t)row * H;
    __global float *yr = y + (size_t)row * H;
    /* Rows without an adapter run no loop iterations (r_used = 0) instead of returning early:
     * every work item must reach the same barriers. */
    const uint r_used = id < 0 ? 0 : r;
    const size_t off = id < 0 ? 0 : (size_t)id * r * H;
    for (uint j = 0; j < r_used; j++) {
        float acc = 0.0f;
        for (uint h = lid; h < H; h += SONA_WG)
            acc += A[off + (size_t)j * H + h] * xr[h];
        part[lid] = acc;
        group_sum(part);
        if (lid == 0)
            t[j] = scale[id] * part[0];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint h = lid; h < H; h += SONA_WG) {
        float acc = xr[h];
        for (uint j = 0; j < r_used; j++)
            acc += Bt[off + (size_t)j * H + h] * t[j];
        yr[h] = acc;
    }
}

/* lora_grad, first step: per row, u = c A x and v = c Bt d with c = wt * scale, into
 * uv[row][2r] (u then v). Rows without an adapter are skipped. */
__kernel void lora_grad_rows(uint H, uint r, __global const float *A, __global const float *Bt,
                             __global const float *scale, __global const int *ids,
                             __global const float *x, __global const float *d,
                             __global const float *wt, __global float *uv)
{
    __local float part[SONA_WG];
    const uint row = get_group_id(0), lid = get_local_id(0);
    const int id = ids[row];
    const uint r_used = id < 0 ? 0 : r; /* no early return: see lora_apply */
    const size_t off = id < 0 ? 0 : (size_t)id * r * H;
    const float c = id < 0 ? 0.0f : wt[row] * scale[id];
    __global const float *xr = x + (size_t)row * H, *dr = d + (size_t)row * H;
    for (uint j = 0; j < 2 * r_used; j++) {
        const uint jj = j < r ? j : j - r;
        __global const float *m = (j < r ? A : Bt) + off + (size_t)jj * H;
        __global const float *v = j < r ? xr : dr;
        float acc = 0.0f;
        for (uint h = lid; h < H; h += SONA_WG)
            acc += m[h] * v[h];
        part[lid] = acc;
        group_sum(part);
        if (lid == 0)
            uv[(size_t)row * 2 * r + j] = c * part[0];
    }
}

/* lora_grad, second step: one work item per (adapter, j, h) sums its rows' outer products
 * and adds them to both accumulators (the only writer of gA and gBt). */
__kernel void lora_grad_accumulate(uint H, uint r, uint n, uint adapters, __global const int *ids,
                                   __global const float *x, __global const float *d,
                                   __global const float *uv, __global float *gA,
                                   __global float *gBt)
{
    const size_t e = get_global_id(0);
    if (e >= (size_t)adapters * r * H)
        return;
    const uint h = (uint)(e % H), j = (uint)((e / H) % r);
    const int a = (int)(e / ((size_t)r * H));
    float sa = 0.0f, sb = 0.0f;
    for (uint i = 0; i < n; i++) {
        if (ids[i] != a)
            continue;
        __global const float *u = uv + (size_t)i * 2 * r;
        sa += u[r + j] * x[(size_t)i * H + h];
        sb += u[j] * d[(size_t)i * H + h];
    }
    gA[e] += sa;
    gBt[e] += sb;
}

/* param_update, first step: one work group per segment computes the clip factor. */
__kernel void segment_clip(uint len, float clip_norm, __global const float *g, __global float *c)
{
    __local float part[SONA_WG];
    const uint seg = get_group_id(0), lid = get_local_id(0);
    __global const float *gs = g + (size_t)seg * len;
    float acc = 0.0f;
    for (uint i = lid; i < len; i += SONA_WG)
        acc += gs[i] * gs[i];
    part[lid] = acc;
    group_sum(part);
    if (lid == 0) {
        const float norm = sqrt(part[0]);
        c[seg] = norm > clip_norm ? clip_norm / norm : 1.0f;
    }
}

/* param_update, fused step. flags: 1 clip factors in c, 2 EWC penalty, 4 Fisher EMA. */
__kernel void param_step(uint len, ulong total, uint flags, float lr, float lambda, float decay,
                         __global float *theta, __global const float *g,
                         __global const float *c, __global const float *fisher_sum,
                         __global const float *fisher_theta, __global float *fisher)
{
    const size_t i = get_global_id(0);
    if (i >= total)
        return;
    const float gi = (flags & 1) ? c[i / len] * g[i] : g[i];
    const float th = theta[i];
    float step = gi;
    if (flags & 2)
        step -= lambda * (fisher_sum[i] * th - fisher_theta[i]);
    theta[i] = th + lr * step;
    if (flags & 4)
        fisher[i] = decay * fisher[i] + (1.0f - decay) * gi * gi;
}

/* One work item per row of X: nearest row of C (lowest index on ties). */
__kernel void sqdist_argmin(uint n, uint k, uint d, __global const float *X,
                            __global const float *C, __global int *idx, __global float *dist)
{
    const uint i = get_global_id(0);
    if (i >= n)
        return;
    __global const float *x = X + (size_t)i * d;
    float best = INFINITY;
    int best_j = 0;
    for (uint j = 0; j < k; j++) {
        __global const float *c = C + (size_t)j * d;
        float acc = 0.0f;
        for (uint t = 0; t < d; t++) {
            const float diff = x[t] - c[t];
            acc += diff * diff;
        }
        if (acc < best) {
            best = acc;
            best_j = (int)j;
        }
    }
    idx[i] = best_j;
    dist[i] = best;
}

/* Euclidean norm (squared when `squared`) of each row of V[rows][d]. */
__kernel void row_norms(uint rows, uint d, uint squared, __global const float *V,
                        __global float *norms)
{
    const uint i = get_global_id(0);
    if (i >= rows)
        return;
    __global const float *v = V + (size_t)i * d;
    float acc = 0.0f;
    for (uint t = 0; t < d; t++)
        acc += v[t] * v[t];
    norms[i] = squared ? acc : sqrt(acc);
}

/* sqdist_argmin for large shapes, after a GEMM: G[rows][k] = -2 X C^T for rows q0.., and the
 * squared norms; |x|^2 + |c|^2 - 2 x.c, clamped at 0, lowest index on ties. */
__kernel void argmin_from_gemm(uint q0, uint rows, uint k, __global const float *G,
                               __global const float *xsq, __global const float *csq,
                               __global int *idx, __global float *dist)
{
    const uint i = get_global_id(0);
    if (i >= rows)
        return;
    __global const float *g = G + (size_t)i * k;
    const float xs = xsq[q0 + i];
    float best = INFINITY;
    int best_j = 0;
    for (uint j = 0; j < k; j++) {
        const float v = xs + csq[j] + g[j];
        if (v < best) {
            best = v;
            best_j = (int)j;
        }
    }
    idx[q0 + i] = best_j;
    dist[q0 + i] = max(best, 0.0f);
}

/* Cosine similarity of queries q0..q0+rows against every P row, into S[rows][n]. */
__kernel void cosine_block(uint q0, uint rows, uint n, uint d, __global const float *Q,
                           __global const float *P, __global const float *qnorm,
                           __global const float *pnorm, __global float *S)
{
    const uint p = get_global_id(0), q = get_global_id(1);
    if (p >= n || q >= rows)
        return;
    __global const float *qv = Q + (size_t)(q0 + q) * d, *pv = P + (size_t)p * d;
    float acc = 0.0f;
    for (uint t = 0; t < d; t++)
        acc += qv[t] * pv[t];
    const float qn = qnorm[q0 + q], pn = pnorm[p];
    S[(size_t)q * n + p] = (qn > 0.0f && pn > 0.0f) ? acc / (qn * pn) : 0.0f;
}

/* Top-k of each query's row of S, best first, lower index first on ties; -1/-inf tail. */
__kernel void topk_rows(uint q0, uint rows, uint n, uint k, __global const float *S,
                        __global int *idx, __global float *sim)
{
    const uint q = get_global_id(0);
    if (q >= rows)
        return;
    __global const float *s = S + (size_t)q * n;
    __global int *oi = idx + (size_t)(q0 + q) * k;
    __global float *os = sim + (size_t)(q0 + q) * k;
    uint len = 0;
    for (uint i = 0; i < n; i++) {
        const float v = s[i];
        if (len == k && !(v > os[k - 1]))
            continue;
        uint pos = len < k ? len : k - 1;
        while (pos > 0 && v > os[pos - 1]) {
            os[pos] = os[pos - 1];
            oi[pos] = oi[pos - 1];
            pos--;
        }
        os[pos] = v;
        oi[pos] = (int)i;
        if (len < k)
            len++;
    }
    for (uint t = len; t < k; t++) {
        oi[t] = -1;
        os[t] = -INFINITY;
    }
}

/* One work item per column t: zeroes its column of sums, then adds the rows in row order
 * (as the CPU does); work item 0 also counts. The only writer of sums and counts. */
__kernel void cluster_sums(uint n, uint k, uint d, __global const float *X,
                           __global const int *idx, __global float *sums, __global uint *counts)
{
    const uint t = get_global_id(0);
    if (t >= max(d, 1u))
        return;
    for (uint j = 0; j < k; j++) {
        if (t < d)
            sums[(size_t)j * d + t] = 0.0f;
        if (t == 0)
            counts[j] = 0;
    }
    for (uint i = 0; i < n; i++) {
        const int j = idx[i];
        if (j < 0 || j >= (int)k)
            continue;
        if (t < d)
            sums[(size_t)j * d + t] += X[(size_t)i * d + t];
        if (t == 0)
            counts[j]++;
    }
}
