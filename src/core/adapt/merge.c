/* SPDX-License-Identifier: MIT */
/* Factored rank-r merge of LoRA adapters (merge.h). With L = [w_1 B_1 ... w_k B_k] (H x n,
 * n = k r) and R = [A_1; ...; A_k] (n x H), the average is M = L R. Householder QR gives
 * L = Q1 R1 and R^T = Q2 R2, so M = Q1 (R1 R2^T) Q2^T: the singular values of M are those of the
 * small core C = R1 R2^T (p x p, p = min(H, n)), whose SVD C V = W (W's columns U_j sigma_j)
 * comes from one-sided Jacobi. The top r triplets give B = Q1 W_r / a and A = a V_r^T Q2^T. */
#include "core/adapt/merge.h"

#include "common/matmul.h"
#include "common/rng.h"
#include "dispatch/vecmath.h"

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

double sona_lora_product_dot(size_t H, uint32_t r, const float *Aj, const float *Btj, const float *Al,
                             const float *Btl)
{
    /* The Gram products of the rows (cpu/host_loops.h's double dots of floats: their bits are
     * every variant's), four rows of j's against all of l's at a time: a paced sync makes
     * 5 r^2 dots of hidden a layer (its scalar form took 40 % of a sync's CPU). */
    enum { P = 4 };
    double ga[P * SONA_LORA_MAX_RANK], gb[P * SONA_LORA_MAX_RANK];
    double sum = 0.0;
    for (uint32_t p0 = 0; p0 < r; p0 += P) {
        const uint32_t m = r - p0 < P ? r - p0 : P;
        sona_gram_f32_f64(Aj + p0 * H, H, m, Al, H, r, H, ga);
        sona_gram_f32_f64(Btj + p0 * H, H, m, Btl, H, r, H, gb);
        for (uint32_t i = 0; i < m * r; i++)
            sum += ga[i] * gb[i];
    }
    return sum;
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
        info->total = sona_lora_product_dot(H, rank, A[0], Bt[0], A[0], Bt[0]);
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

/* The orthogonal R = U V^T (r x r, row-major, into R) nearest the cross products C = U S V^T
 * (column-major, r x r, overwritten): orthogonal Procrustes. V: r x r + r doubles of scratch.
 * 0 (R unset) when C is singular (a singular value below 1e-9 of the top): no turn is unique. */
static int procrustes_turn(double *C, size_t r, double *V, double *R)
{
    double *sig = V + r * r, top = 0.0;
    jacobi_svd(C, V, r); /* C V = W (in C), W_j = U_j sigma_j */
    for (size_t j = 0; j < r; j++) {
        double s2 = 0.0;
        for (size_t i = 0; i < r; i++)
            s2 += C[j * r + i] * C[j * r + i];
        sig[j] = sqrt(s2);
        top = sig[j] > top ? sig[j] : top;
    }
    for (size_t j = 0; j < r; j++)
        if (!(sig[j] > 1e-9 * top))
            return 0;
    /* R[i][c] = sum_j U[i][j] V[c][j], U[i][j] = C[j * r + i] / sigma_j. */
    for (size_t i = 0; i < r; i++)
        for (size_t c = 0; c < r; c++) {
            double s = 0.0;
            for (size_t j = 0; j < r; j++)
                s += C[j * r + i] / sig[j] * V[j * r + c];
            R[i * r + c] = s;
        }
    return 1;
}

/* ---- the sketched merge (merge.h) ---------------------------------------------------------- */

/* The hot loops are the chosen CPU variant's double host kernels, through dispatch/vecmath.h's
 * Gram products and axpys (cpu/host_loops.h's lanes and order), written so that every variant
 * gives the same bits: every rank of a cluster, whatever its CPU, must round alike. (Per-ISA
 * clones of this file through ifuncs were tried once: their resolver ran before
 * ThreadSanitizer's runtime was up.) */
static const sona_host_kernels *kernels(void) { return sona_host_kernels_get(); }

/* Gram-Schmidt of row j of Y against rows 0..j-1, classical (a pass takes the dots with a block
 * of up to ORTH_BLOCK rows, then their axpys, block after block), then normalised; 0 when
 * dependent. A second pass only where the first took more than half of the row's square norm
 * (Daniel, Gragg, Kaufman and Stewart's test with 1/sqrt 2): a row that kept more is
 * orthogonal to working precision after one, and the rows of a sketch mostly do. */
enum { ORTH_BLOCK = 32 };
static void orth_row(const sona_host_kernels *k, double *Y, size_t H, size_t j, double ref2)
{
    double *y = Y + j * H, d[ORTH_BLOCK];
    double n2 = ref2;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i0 = 0; i0 < j; i0 += ORTH_BLOCK) {
            const size_t m = j - i0 < ORTH_BLOCK ? j - i0 : ORTH_BLOCK;
            sona_dots_f64(y, Y + i0 * H, H, m, H, d);
            for (size_t i = 0; i < m; i++)
                d[i] = -d[i]; /* y - d q exactly: negation is exact */
            sona_axpys_f64(y, Y + i0 * H, H, d, m, H);
        }
        const double before = n2;
        n2 = k->dot_f64(y, y, H);
        if (!(n2 < 0.5 * before))
            break;
    }
    /* What is left of a row in the span of the ones before is rounding: relative 1e-24 of
     * its square norm (a few ulps of double times the 2 x 2 passes) counts as nothing. */
    if (!(n2 > 1e-24 * ref2) || n2 == 0.0) {
        memset(y, 0, H * sizeof *y);
        return;
    }
    const double inv = 1.0 / sqrt(n2);
    for (size_t h = 0; h < H; h++)
        y[h] *= inv;
}

void sona_sketch_orthonormalize(uint32_t hidden, uint32_t width, double *Y)
{
    const sona_host_kernels *k = kernels();
    for (size_t j = 0; j < width; j++)
        orth_row(k, Y, hidden, j, k->dot_f64(Y + j * hidden, Y + j * hidden, hidden));
}

sona_status sona_sketch_basis(uint32_t hidden, uint32_t width, uint32_t rank, const float *A0,
                              uint64_t seed, double *omega)
{
    if (!width || !hidden || width > hidden)
        return SONA_E_INVALID;
    const size_t H = hidden;
    size_t j = 0; /* rows filled so far */
    for (size_t c = 0; A0 && c < rank && j < width; c++) {
        double *y = omega + j * H;
        for (size_t h = 0; h < H; h++)
            y[h] = A0[c * H + h];
        const double n2 = kernels()->dot_f64(y, y, H);
        if (n2 > 0.0) { /* a zero row of A0 leaves its place to a random one */
            const double inv = 1.0 / sqrt(n2);
            for (size_t h = 0; h < H; h++)
                y[h] *= inv;
            j++;
        }
    }
    /* The signs: the 64 bits of each draw in turn, from the top (a draw for each sign was 8 %
     * of the merge's time). */
    uint64_t state = seed ^ 0x9e3779b97f4a7c15ull, bits = 0;
    const double unit = 1.0 / sqrt((double)H);
    for (size_t i = 0, left = 0; i < (width - j) * H; i++, left--, bits <<= 1) {
        if (!left) {
            bits = sona_splitmix64(&state);
            left = 64;
        }
        omega[j * H + i] = (bits >> 63) ? unit : -unit;
    }
    return SONA_OK;
}

/* Columns of hidden a pass of the combinations below takes: that chunk of every row they
 * combine stays in the L1 cache for all of their outputs (sona_gram_f64 does the same for the
 * dots). */
enum { CHUNK = 512 };

sona_status sona_sketch_product(uint32_t hidden, uint32_t rank, uint32_t k, const float *const *A,
                         const float *const *Bt, const double *w, uint32_t width, const double *X,
                         int transpose, double *Y)
{
    const size_t H = hidden, r = rank, l = width;
    /* the factor rows' products with X's rows, t[c * l + j], and by Y's row, tt[j * r + c] */
    double *t = malloc(2 * r * l * sizeof *t);
    if (!t)
        return SONA_E_NOMEM;
    double *tt = t + r * l;
    for (uint32_t i = 0; i < k; i++) {
        const double wi = w ? w[i] : 1.0 / k;
        /* M X_j = sum_c B_c (A_c . X_j); M^T X_j = sum_c A_c (B_c . X_j). */
        const float *in = transpose ? Bt[i] : A[i], *out = transpose ? A[i] : Bt[i];
        sona_gram_widen_f64(in, H, r, X, H, l, H, t);
        for (size_t c = 0; c < r; c++)
            for (size_t j = 0; j < l; j++)
                tt[j * r + c] = t[c * l + j] * wi;
        for (size_t h0 = 0; h0 < H; h0 += CHUNK) {
            const size_t n = H - h0 < CHUNK ? H - h0 : CHUNK;
            for (size_t j = 0; j < l; j++)
                sona_axpys_f32_f64(Y + j * H + h0, out + h0, H, tt + j * r, r, n);
        }
    }
    free(t);
    return SONA_OK;
}

sona_status sona_sketch_finish(uint32_t hidden, uint32_t rank, uint32_t width, const double *Q,
                               const double *Z, const double *omega, double a0,
                               const float *A_ref, float *A_out, float *Bt_out,
                               sona_merge_info *info)
{
    sona_merge_info local;
    if (!info)
        info = &local;
    memset(info, 0, sizeof *info);
    const size_t H = hidden, r = rank, l = width;
    /* Q^T Z = sum_a q_a z_a^T with orthonormal q_a: its singular values are those of Z's rows,
     * from the eigenvectors of the Gram G = Z Z^T (l x l) by one-sided Jacobi on G. */
    const size_t uw = CHUNK > 4 * l ? CHUNK : 4 * l; /* u: a chunk, or the Gram's rows */
    const size_t gw = l * l > 2 * r * l ? l * l : 2 * r * l; /* G, then A_ref's products */
    /* R, then C and the turn's scratch or a product of coefficients */
    const size_t tw = r * r + (2 * r * r + r > r * l ? 2 * r * r + r : r * l);
    double *buf = malloc((gw + l * l + uw + CHUNK + l + 3 * r * l + tw) * sizeof *buf);
    size_t *order = malloc(l * sizeof *order);
    if (!buf || !order) {
        free(buf), free(order);
        return SONA_E_NOMEM;
    }
    double *G = buf, *V = G + gw, *u = V + l * l, *v = u + uw, *lam = v + CHUNK;
    double *fa = lam + l, *fb = fa + r * l, *fo = fb + r * l, *turn = fo + r * l;
    const sona_host_kernels *hk = kernels();
    /* The lower triangle, four rows at a time, mirrored (the products commute: it is the
     * upper's bits). */
    for (size_t i0 = 0; i0 < l; i0 += 4) {
        const size_t m = l - i0 < 4 ? l - i0 : 4;
        sona_gram_f64(Z + i0 * H, H, m, Z, H, i0 + m, H, u); /* u: m x (i0 + m) of scratch */
        for (size_t a = 0; a < m; a++)
            for (size_t b = 0; b <= i0 + a; b++)
                G[(i0 + a) * l + b] = G[b * l + i0 + a] = u[a * (i0 + m) + b];
    }
    jacobi_svd(G, V, l); /* G V = W, |W_j| = lambda_j = sigma_j^2 */
    for (size_t j = 0; j < l; j++) {
        lam[j] = sqrt(hk->dot_f64(G + j * l, G + j * l, l));
        order[j] = j;
        info->total += lam[j];
    }
    for (size_t j = 1; j < l; j++)
        for (size_t i = j; i > 0 && lam[order[i]] > lam[order[i - 1]]; i--) {
            const size_t t = order[i];
            order[i] = order[i - 1];
            order[i - 1] = t;
        }
    for (size_t j = r; j < l; j++)
        info->tail += lam[order[j]];
    const double top = l ? lam[order[0]] : 0.0;
    /* Row j: B's column Q^T V_q (unit) times sigma / a, A's row Z^T V_q (norm sigma) times
     * a / sigma, for Q^T Z = sum sigma u (v / sigma)^T: in coefficients on Q's and Z's rows, fb
     * and fa. A direction of rounding noise (lambda below 1e-20 of the top: sigma below 1e-10
     * of the top, where the Gram's rounding hides it) carries nothing: B 0, A Omega's row j mod
     * width times a0 (fo: coefficients on Omega's rows). */
    memset(fa, 0, 3 * r * l * sizeof *fa); /* fa, fb, fo */
    int dead = 0;
    for (size_t j = 0; j < r; j++) {
        const size_t q = j < l ? order[j] : 0;
        const double sigma = j < l ? sqrt(lam[q]) : 0.0;
        if (!(j < l && lam[q] > 1e-20 * top && sigma != 0.0)) {
            fo[j * l + j % l] = a0;
            dead = 1;
            continue;
        }
        const double rs = sqrt(sigma), a = rs > a0 ? rs : a0;
        for (size_t i = 0; i < l; i++) {
            fb[j * l + i] = V[q * l + i] * (sigma / a);
            fa[j * l + i] = V[q * l + i] * (a / sigma);
        }
    }
    /* The turn to A_ref's coordinates folded in (sona_lora_align's, without writing the rows
     * twice): C = A_ref A^T from A_ref's products with Z's (and Omega's) rows, then the rows'
     * coefficients times R. */
    if (A_ref) {
        double *P = G; /* G is done with: r x l products, then r x l more with Omega's rows */
        sona_gram_widen_f64(A_ref, H, r, Z, H, l, H, P);
        if (dead)
            sona_gram_widen_f64(A_ref, H, r, omega, H, l, H, P + r * l);
        for (size_t i = 0; i < r; i++) /* C[j * r + i] = A_ref_i . A_j */
            for (size_t j = 0; j < r; j++) {
                double c = 0.0;
                for (size_t t = 0; t < l; t++) {
                    c += fa[j * l + t] * P[i * l + t];
                    if (dead)
                        c += fo[j * l + t] * P[r * l + i * l + t];
                }
                turn[r * r + j * r + i] = c;
            }
        const double *R = turn;
        if (procrustes_turn(turn + r * r, r, turn + 2 * r * r, turn)) {
            double *mixed = turn + r * r; /* C is done with */
            for (int f = 0; f < 3; f++) {
                double *F = fa + (size_t)f * r * l;
                sona_matmul_d(R, F, mixed, r, r, l);
                memcpy(F, mixed, r * l * sizeof *F);
            }
        }
    }
    for (size_t h0 = 0; h0 < H; h0 += CHUNK) {
        const size_t n = H - h0 < CHUNK ? H - h0 : CHUNK;
        for (size_t j = 0; j < r; j++) {
            float *bt = Bt_out + j * H + h0, *ar = A_out + j * H + h0;
            memset(u, 0, n * sizeof *u);
            memset(v, 0, n * sizeof *v);
            sona_axpys_f64(u, Q + h0, H, fb + j * l, l, n);
            sona_axpys_f64(v, Z + h0, H, fa + j * l, l, n);
            if (dead)
                sona_axpys_f64(v, omega + h0, H, fo + j * l, l, n);
            for (size_t h = 0; h < n; h++) {
                bt[h] = (float)u[h];
                ar[h] = (float)v[h];
            }
        }
    }
    free(buf), free(order);
    return SONA_OK;
}

sona_status sona_lora_align(uint32_t hidden, uint32_t rank, const float *A_ref, float *A,
                            float *Bt)
{
    const size_t H = hidden, r = rank;
    /* C then R, A_ref's products with A; then a chunk of the turned A and Bt */
    double *buf = malloc((4 * r * r + r + 2 * r * CHUNK) * sizeof *buf);
    if (!buf)
        return SONA_E_NOMEM;
    double *C = buf, *R = C + r * r, *G = R + r * r, *V = G + r * r, *a = V + r * r + r;
    double *b = a + r * CHUNK;
    /* C = A_ref A^T, column-major: C[j * r + i] = A_ref_i . A_j (products of the floats in
     * double). */
    sona_gram_f32_f64(A_ref, H, r, A, H, r, H, G);
    for (size_t i = 0; i < r; i++)
        for (size_t j = 0; j < r; j++)
            C[j * r + i] = G[i * r + j];
    if (!procrustes_turn(C, r, V, R)) {
        free(buf);
        return SONA_OK; /* singular: no unique turn, the factors stay */
    }
    /* A <- R A and Bt <- R Bt, a chunk of columns at a time (every output row reads the
     * chunk of every input row: all of them first, then written back). */
    for (size_t h0 = 0; h0 < H; h0 += CHUNK) {
        const size_t n = H - h0 < CHUNK ? H - h0 : CHUNK;
        memset(a, 0, 2 * r * CHUNK * sizeof *a); /* a and b */
        for (size_t i = 0; i < r; i++) {
            sona_axpys_f32_f64(a + i * CHUNK, A + h0, H, R + i * r, r, n);
            sona_axpys_f32_f64(b + i * CHUNK, Bt + h0, H, R + i * r, r, n);
        }
        for (size_t i = 0; i < r; i++)
            for (size_t h = 0; h < n; h++) {
                A[i * H + h0 + h] = (float)a[i * CHUNK + h];
                Bt[i * H + h0 + h] = (float)b[i * CHUNK + h];
            }
    }
    free(buf);
    return SONA_OK;
}
