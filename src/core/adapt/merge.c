/* SPDX-License-Identifier: MIT */
/* Factored rank-r merge of LoRA adapters (merge.h). With L = [w_1 B_1 ... w_k B_k] (H x n,
 * n = k r) and R = [A_1; ...; A_k] (n x H), the average is M = L R. Householder QR gives
 * L = Q1 R1 and R^T = Q2 R2, so M = Q1 (R1 R2^T) Q2^T: the singular values of M are those of the
 * small core C = R1 R2^T (p x p, p = min(H, n)), whose SVD C V = W (W's columns U_j sigma_j)
 * comes from one-sided Jacobi. The top r triplets give B = Q1 W_r / a and A = a V_r^T Q2^T. */
#include "core/adapt/merge.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Householder QR of X (H x n, column-major, column c at X + c H), in place: afterwards R is
 * the upper triangle of X's first p rows, and reflector j is I - tau_j v_j v_j^T with v_j at
 * V + j H (entries j..H-1). */
static void householder_qr(double *X, size_t H, size_t n, size_t p, double *V, double *tau)
{
    for (size_t j = 0; j < p; j++) {
        double *x = X + j * H, *v = V + j * H;
        double norm2 = 0.0;
        for (size_t i = j; i < H; i++)
            norm2 += x[i] * x[i];
        memset(v, 0, H * sizeof *v);
        tau[j] = 0.0;
        if (norm2 == 0.0)
            continue; /* a zero column: nothing to reflect, R's diagonal entry is 0 */
        const double norm = sqrt(norm2), alpha = x[j] >= 0.0 ? -norm : norm;
        double vnorm2 = 0.0;
        for (size_t i = j; i < H; i++)
            v[i] = x[i];
        v[j] -= alpha; /* no cancellation: alpha has x[j]'s opposite sign */
        for (size_t i = j; i < H; i++)
            vnorm2 += v[i] * v[i];
        tau[j] = 2.0 / vnorm2;
        for (size_t c = j; c < n; c++) {
            double *y = X + c * H, d = 0.0;
            for (size_t i = j; i < H; i++)
                d += v[i] * y[i];
            d *= tau[j];
            for (size_t i = j; i < H; i++)
                y[i] -= d * v[i];
        }
        for (size_t i = j + 1; i < H; i++)
            x[i] = 0.0; /* exactly the zeros the reflection makes, up to rounding */
    }
}

/* y (H) = Q y with Q = H_0 H_1 ... H_{p-1}. */
static void apply_q(const double *V, const double *tau, size_t H, size_t p, double *y)
{
    for (size_t j = p; j-- > 0;) {
        if (tau[j] == 0.0)
            continue;
        const double *v = V + j * H;
        double d = 0.0;
        for (size_t i = j; i < H; i++)
            d += v[i] * y[i];
        d *= tau[j];
        for (size_t i = j; i < H; i++)
            y[i] -= d * v[i];
    }
}

/* One-sided Jacobi on W (p x p, column-major): rotates column pairs until they are orthogonal,
 * applying the same rotations to V (starting from I), so that C V = W with W's columns
 * orthogonal. A fixed pair order and a fixed stopping rule keep it deterministic. */
static void jacobi_svd(double *W, double *Vm, size_t p)
{
    memset(Vm, 0, p * p * sizeof *Vm);
    for (size_t i = 0; i < p; i++)
        Vm[i * p + i] = 1.0;
    for (int sweep = 0; sweep < 60; sweep++) {
        int rotated = 0;
        for (size_t a = 0; a + 1 < p; a++)
            for (size_t b = a + 1; b < p; b++) {
                double *wa = W + a * p, *wb = W + b * p;
                double alpha = 0.0, beta = 0.0, gamma = 0.0;
                for (size_t i = 0; i < p; i++) {
                    alpha += wa[i] * wa[i];
                    beta += wb[i] * wb[i];
                    gamma += wa[i] * wb[i];
                }
                if (gamma == 0.0 || fabs(gamma) <= 1e-15 * sqrt(alpha * beta))
                    continue;
                rotated = 1;
                const double zeta = (beta - alpha) / (2.0 * gamma);
                const double t = (zeta >= 0.0 ? 1.0 : -1.0) / (fabs(zeta) + sqrt(1.0 + zeta * zeta));
                const double c = 1.0 / sqrt(1.0 + t * t), s = c * t;
                for (size_t i = 0; i < p; i++) {
                    const double x = wa[i], y = wb[i];
                    wa[i] = c * x - s * y;
                    wb[i] = s * x + c * y;
                }
                double *va = Vm + a * p, *vb = Vm + b * p;
                for (size_t i = 0; i < p; i++) {
                    const double x = va[i], y = vb[i];
                    va[i] = c * x - s * y;
                    vb[i] = s * x + c * y;
                }
            }
        if (!rotated)
            break;
    }
}

static int all_same(uint32_t k, size_t af, const float *const *A, const float *const *Bt)
{
    for (uint32_t i = 1; i < k; i++)
        if (memcmp(A[i], A[0], af * sizeof(float)) || memcmp(Bt[i], Bt[0], af * sizeof(float)))
            return 0;
    return 1;
}

sona_status sona_lora_merge(uint32_t hidden, uint32_t rank, uint32_t k, const float *const *A,
                            const float *const *Bt, const double *w, float *A_out, float *Bt_out,
                            sona_merge_info *info)
{
    sona_merge_info local;
    if (!info)
        info = &local;
    memset(info, 0, sizeof *info);
    if (!hidden || !rank || !k)
        return SONA_E_INVALID;
    const size_t H = hidden, r = rank, n = (size_t)k * r, p = n < H ? n : H;
    const size_t af = r * H;
    if (k == 1 || all_same(k, af, A, Bt)) {
        /* The average of copies is the copy: no rounding, no change of basis. Its norm (for the
         * caller's error report; the tail is 0) from the Gram matrices: |B A|_F^2 =
         * sum_jl (B^T B)_jl (A A^T)_jl. */
        memcpy(A_out, A[0], af * sizeof *A_out);
        memcpy(Bt_out, Bt[0], af * sizeof *Bt_out);
        info->copied = 1;
        for (size_t j = 0; j < r; j++)
            for (size_t l = 0; l < r; l++) {
                double gb = 0.0, ga = 0.0;
                for (size_t h = 0; h < H; h++) {
                    gb += (double)Bt[0][j * H + h] * Bt[0][l * H + h];
                    ga += (double)A[0][j * H + h] * A[0][l * H + h];
                }
                info->total += gb * ga;
            }
        return SONA_OK;
    }
    /* L (H x n) and R^T (H x n) column-major, their reflectors, the core, V and one column. */
    const size_t big = 4 * H * n, small = 2 * p + 2 * p * p + H;
    double *buf = malloc((big + small) * sizeof *buf);
    if (!buf)
        return SONA_E_NOMEM;
    double *L = buf, *Rt = L + H * n, *V1 = Rt + H * n, *V2 = V1 + H * n;
    double *tau1 = V2 + H * n, *tau2 = tau1 + p, *C = tau2 + p, *Vm = C + p * p, *y = Vm + p * p;
    double a0 = 0.0;
    for (uint32_t i = 0; i < k; i++) {
        const double wi = w ? w[i] : 1.0 / k;
        for (size_t j = 0; j < r; j++)
            for (size_t h = 0; h < H; h++) {
                const size_t col = (i * r + j) * H;
                L[col + h] = wi * (double)Bt[i][j * H + h];
                Rt[col + h] = (double)A[i][j * H + h];
                a0 += Rt[col + h] * Rt[col + h];
            }
    }
    a0 = sqrt(a0 / (double)n); /* the inputs' RMS row norm of A */
    householder_qr(L, H, n, p, V1, tau1);
    householder_qr(Rt, H, n, p, V2, tau2);
    /* C = R1 R2^T, column-major: C[b * p + a] = sum_c R1[a][c] R2[b][c], c >= max(a, b). */
    for (size_t b = 0; b < p; b++)
        for (size_t a = 0; a < p; a++) {
            double s = 0.0;
            for (size_t c = a > b ? a : b; c < n; c++)
                s += L[c * H + a] * Rt[c * H + b];
            C[b * p + a] = s;
        }
    jacobi_svd(C, Vm, p);
    /* Singular values, sorted descending (ties by index: deterministic). */
    size_t *order = malloc(p * sizeof *order);
    double *sigma = malloc(p * sizeof *sigma);
    if (!order || !sigma) {
        free(order), free(sigma), free(buf);
        return SONA_E_NOMEM;
    }
    for (size_t j = 0; j < p; j++) {
        double s2 = 0.0;
        for (size_t i = 0; i < p; i++)
            s2 += C[j * p + i] * C[j * p + i];
        sigma[j] = sqrt(s2);
        order[j] = j;
        info->total += s2;
    }
    for (size_t j = 1; j < p; j++) /* insertion sort: p is small, and it is stable */
        for (size_t i = j; i > 0 && sigma[order[i]] > sigma[order[i - 1]]; i--) {
            const size_t t = order[i];
            order[i] = order[i - 1];
            order[i - 1] = t;
        }
    for (size_t j = r; j < p; j++)
        info->tail += sigma[order[j]] * sigma[order[j]];
    for (size_t j = 0; j < r; j++) {
        float *bt = Bt_out + j * H, *ar = A_out + j * H;
        if (j >= p) { /* hidden < rank: no direction left; B's column 0, A's row adapter 0's */
            memset(bt, 0, H * sizeof *bt);
            memcpy(ar, A[0] + j * H, H * sizeof *ar);
            continue;
        }
        const size_t q = order[j];
        const double rs = sqrt(sigma[q]), a = rs > a0 ? rs : a0;
        /* B's column j = Q1 W_q / a (W_q = U_q sigma_q). */
        memset(y, 0, H * sizeof *y);
        for (size_t i = 0; i < p; i++)
            y[i] = C[q * p + i] / a;
        apply_q(V1, tau1, H, p, y);
        for (size_t h = 0; h < H; h++)
            bt[h] = (float)y[h];
        /* A's row j = a (Q2 V_q)^T. */
        memset(y, 0, H * sizeof *y);
        for (size_t i = 0; i < p; i++)
            y[i] = a * Vm[q * p + i];
        apply_q(V2, tau2, H, p, y);
        for (size_t h = 0; h < H; h++)
            ar[h] = (float)y[h];
    }
    free(order), free(sigma), free(buf);
    return SONA_OK;
}
