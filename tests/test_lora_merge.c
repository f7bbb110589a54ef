/* SPDX-License-Identifier: MIT */
/* The factored rank-r merge of LoRA adapters (core/adapt/merge.h) against a dense double
 * reference: the merged s B A is the best rank-r approximation of the weighted average of the
 * inputs' B_i A_i, its error is the tail of the average's singular values (found here by
 * another route: the eigenvalues of M^T M by two-sided Jacobi on the dense matrix), exactly 0
 * for copies and for one adapter, and a direction with no singular value keeps a live A row. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "core/adapt/merge.h"
#include "support/fill.h"

typedef struct adapters {
    uint32_t k, H, r;
    float **A, **Bt;
} adapters;

static adapters make(uint32_t k, uint32_t H, uint32_t r, sona_rng *rng)
{
    adapters a = {k, H, r, calloc(k, sizeof(float *)), calloc(k, sizeof(float *))};
    cr_assert(a.A && a.Bt);
    for (uint32_t i = 0; i < k; i++) {
        a.A[i] = new_uniform(rng, (size_t)r * H, -1.0f, 1.0f);
        a.Bt[i] = new_uniform(rng, (size_t)r * H, -0.5f, 0.5f);
        cr_assert(a.A[i] && a.Bt[i]);
    }
    return a;
}

static void drop(adapters *a)
{
    for (uint32_t i = 0; i < a->k; i++)
        free(a->A[i]), free(a->Bt[i]);
    free(a->A), free(a->Bt);
}

/* M (H x H, row-major) = sum_i w_i B_i A_i in double; B_i[h][j] = Bt_i[j][h]. */
static double *dense_average(const adapters *a, const double *w)
{
    const size_t H = a->H;
    double *M = calloc(H * H, sizeof *M);
    cr_assert(M);
    for (uint32_t i = 0; i < a->k; i++)
        for (uint32_t j = 0; j < a->r; j++)
            for (size_t h = 0; h < H; h++) {
                const double b = (w ? w[i] : 1.0 / a->k) * a->Bt[i][j * H + h];
                for (size_t c = 0; c < H; c++)
                    M[h * H + c] += b * a->A[i][j * H + c];
            }
    return M;
}

/* |M - B A|_F for a merged adapter (A r x H, Bt r x H). */
static double dist_to(const double *M, const float *A, const float *Bt, size_t H, size_t r)
{
    double s = 0.0;
    for (size_t h = 0; h < H; h++)
        for (size_t c = 0; c < H; c++) {
            double v = 0.0;
            for (size_t j = 0; j < r; j++)
                v += (double)Bt[j * H + h] * A[j * H + c];
            const double d = M[h * H + c] - v;
            s += d * d;
        }
    return sqrt(s);
}

static int desc(const void *x, const void *y)
{
    const double a = *(const double *)x, b = *(const double *)y;
    return (a < b) - (a > b);
}

/* The squared singular values of M, descending: eigenvalues of G = M^T M by cyclic two-sided
 * Jacobi (a route independent of the merge's QR + one-sided Jacobi on the factors). */
static double *squared_singular_values(const double *M, size_t H)
{
    double *G = calloc(H * H, sizeof *G), *ev = malloc(H * sizeof *ev);
    cr_assert(G && ev);
    for (size_t a = 0; a < H; a++)
        for (size_t b = 0; b < H; b++)
            for (size_t h = 0; h < H; h++)
                G[a * H + b] += M[h * H + a] * M[h * H + b];
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0.0, diag = 0.0;
        for (size_t a = 0; a < H; a++)
            for (size_t b = 0; b < H; b++) {
                if (a == b)
                    diag += G[a * H + b] * G[a * H + b];
                else
                    off += G[a * H + b] * G[a * H + b];
            }
        if (off <= 1e-30 * diag)
            break;
        for (size_t p = 0; p + 1 < H; p++)
            for (size_t q = p + 1; q < H; q++) {
                const double gpq = G[p * H + q];
                if (gpq == 0.0)
                    continue;
                const double theta = (G[q * H + q] - G[p * H + p]) / (2.0 * gpq);
                const double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                const double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
                for (size_t i = 0; i < H; i++) { /* G = J^T G J: columns, then rows */
                    const double gp = G[i * H + p], gq = G[i * H + q];
                    G[i * H + p] = c * gp - s * gq;
                    G[i * H + q] = s * gp + c * gq;
                }
                for (size_t i = 0; i < H; i++) {
                    const double gp = G[p * H + i], gq = G[q * H + i];
                    G[p * H + i] = c * gp - s * gq;
                    G[q * H + i] = s * gp + c * gq;
                }
            }
    }
    for (size_t a = 0; a < H; a++)
        ev[a] = G[a * H + a] > 0 ? G[a * H + a] : 0.0;
    qsort(ev, H, sizeof *ev, desc);
    free(G);
    return ev;
}

/* Merges a (weights w) and checks the result against the dense reference: the error is the
 * optimal rank-r error within float tolerance, and merge_info's tail and total agree. Returns
 * the relative error. */
static double check_optimal(const adapters *a, const double *w, const char *what)
{
    const size_t H = a->H, r = a->r;
    float *A = malloc(r * H * sizeof *A), *Bt = malloc(r * H * sizeof *Bt);
    cr_assert(A && Bt);
    sona_merge_info info;
    cr_assert_eq(sona_lora_merge(a->H, a->r, a->k, (const float *const *)a->A,
                                 (const float *const *)a->Bt, w, A, Bt, &info), SONA_OK);
    double *M = dense_average(a, w), *s2 = squared_singular_values(M, H);
    double total = 0.0, tail = 0.0;
    for (size_t j = 0; j < H; j++) {
        total += s2[j];
        if (j >= r)
            tail += s2[j];
    }
    const double err = dist_to(M, A, Bt, H, r), opt = sqrt(tail), norm = sqrt(total);
    /* The naive merge (A and B averaged apart) for comparison. */
    float *nA = calloc(r * H, sizeof *nA), *nBt = calloc(r * H, sizeof *nBt);
    cr_assert(nA && nBt);
    for (uint32_t i = 0; i < a->k; i++)
        for (size_t j = 0; j < r * H; j++) {
            const double wi = w ? w[i] : 1.0 / a->k;
            nA[j] += (float)(wi * a->A[i][j]);
            nBt[j] += (float)(wi * a->Bt[i][j]);
        }
    /* With weights summing to 1, averaging A and B apart is still a rank-r adapter. */
    const double naive = dist_to(M, nA, nBt, H, r);
    printf("%s: k %u H %zu r %zu: relative error %.6g (optimal %.6g, merge_info %.6g), "
           "A and B averaged apart %.6g\n", what, a->k, H, r, err / norm, opt / norm,
           sqrt(info.tail / info.total), naive / norm);
    cr_assert_eq(info.copied, 0);
    cr_assert(fabs(err - opt) <= 1e-5 * norm, "%s: error %.9g, optimal %.9g (|M| %.6g)", what,
              err, opt, norm);
    cr_assert(fabs(info.total - total) <= 1e-9 * total, "%s: total %.12g vs %.12g", what,
              info.total, total);
    cr_assert(fabs(sqrt(info.tail) - opt) <= 1e-6 * norm, "%s: tail %.12g vs %.12g", what,
              sqrt(info.tail), opt);
    cr_assert(naive >= err, "%s: averaging apart (%.9g) beat the optimal merge (%.9g)", what,
              naive, err);
    free(nA), free(nBt), free(M), free(s2), free(A), free(Bt);
    return err / norm;
}

Test(lora_merge, optimal_rank_r_error_against_the_dense_average)
{
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    sona_rng rng;
    sona_rng_seed(&rng, seed, 1);
    /* k r < H (the factors' QR is thin), k r > H (p = H), and k = 2. */
    const uint32_t shapes[][3] = {{3, 40, 4}, {5, 24, 8}, {2, 33, 3}, {4, 16, 2}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        adapters a = make(shapes[s][0], shapes[s][1], shapes[s][2], &rng);
        const double rel = check_optimal(&a, NULL, "equal weights");
        cr_assert(rel > 1e-3, "random distinct adapters have a tail: %.9g", rel);
        double w[8] = {0};
        double sum = 0.0;
        for (uint32_t i = 0; i < a.k; i++)
            sum += (w[i] = 0.1 + sona_rng_uniform_d(&rng));
        for (uint32_t i = 0; i < a.k; i++)
            w[i] /= sum;
        check_optimal(&a, w, "weighted");
        drop(&a);
    }
}

Test(lora_merge, an_average_of_rank_r_is_reproduced)
{
    /* Same A everywhere, B apart: the average B_avg A has rank r, so the tail is 0 and the merge
     * reproduces it within float rounding. */
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    sona_rng rng;
    sona_rng_seed(&rng, seed, 2);
    adapters a = make(3, 20, 4, &rng);
    for (uint32_t i = 1; i < a.k; i++)
        memcpy(a.A[i], a.A[0], (size_t)a.r * a.H * sizeof(float));
    float A[80], Bt[80];
    sona_merge_info info;
    cr_assert_eq(sona_lora_merge(a.H, a.r, a.k, (const float *const *)a.A,
                                 (const float *const *)a.Bt, NULL, A, Bt, &info), SONA_OK);
    double *M = dense_average(&a, NULL);
    double norm = 0.0;
    for (size_t i = 0; i < (size_t)a.H * a.H; i++)
        norm += M[i] * M[i];
    norm = sqrt(norm);
    const double err = dist_to(M, A, Bt, a.H, a.r);
    printf("rank-r average: relative error %.3g, tail %.3g\n", err / norm, sqrt(info.tail / info.total));
    cr_assert(err <= 1e-6 * norm, "%.9g of %.9g", err, norm);
    cr_assert(info.tail <= 1e-20 * info.total);
    free(M);
    drop(&a);
}

Test(lora_merge, copies_and_one_adapter_are_exact)
{
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    sona_rng rng;
    sona_rng_seed(&rng, seed, 3);
    adapters a = make(4, 24, 5, &rng);
    const size_t af = (size_t)a.r * a.H;
    for (uint32_t i = 1; i < a.k; i++) {
        memcpy(a.A[i], a.A[0], af * sizeof(float));
        memcpy(a.Bt[i], a.Bt[0], af * sizeof(float));
    }
    float A[120], Bt[120];
    sona_merge_info info;
    for (uint32_t k = 1; k <= a.k; k += a.k - 1) { /* k = 1, then 4 copies */
        memset(A, 0xff, sizeof A), memset(Bt, 0xff, sizeof Bt);
        cr_assert_eq(sona_lora_merge(a.H, a.r, k, (const float *const *)a.A,
                                     (const float *const *)a.Bt, NULL, A, Bt, &info), SONA_OK);
        cr_assert_eq(info.copied, 1);
        cr_assert_eq(info.tail, 0.0);
        cr_assert_eq(memcmp(A, a.A[0], sizeof A), 0);
        cr_assert_eq(memcmp(Bt, a.Bt[0], sizeof Bt), 0);
        double *M = dense_average(&a, NULL);
        const double err = dist_to(M, A, Bt, a.H, a.r);
        double n2 = 0.0;
        for (size_t i = 0; i < (size_t)a.H * a.H; i++)
            n2 += M[i] * M[i];
        cr_assert(fabs(info.total - n2) <= 1e-9 * n2, "%.12g vs %.12g", info.total, n2);
        cr_assert(err <= 1e-12 * sqrt(n2), "k %u: %.3g", k, err); /* only M's own rounding */
        free(M);
    }
    drop(&a);
}

Test(lora_merge, a_zero_average_keeps_live_a_rows)
{
    /* Every B zero (nothing learned) but A apart: the average is 0; the merge must not leave
     * A zero too, or B's gradient (A x) would vanish and the adapter never learn again. */
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    sona_rng rng;
    sona_rng_seed(&rng, seed, 4);
    adapters a = make(3, 16, 2, &rng);
    for (uint32_t i = 0; i < a.k; i++)
        memset(a.Bt[i], 0, (size_t)a.r * a.H * sizeof(float));
    float A[32], Bt[32];
    sona_merge_info info;
    cr_assert_eq(sona_lora_merge(a.H, a.r, a.k, (const float *const *)a.A,
                                 (const float *const *)a.Bt, NULL, A, Bt, &info), SONA_OK);
    cr_assert_eq(info.total, 0.0);
    for (uint32_t j = 0; j < a.r; j++) {
        double an = 0.0, bn = 0.0;
        for (uint32_t h = 0; h < a.H; h++)
            an += (double)A[j * a.H + h] * A[j * a.H + h], bn += (double)Bt[j * a.H + h] * Bt[j * a.H + h];
        cr_assert(an > 1.0, "A row %u has norm^2 %.3g", j, an); /* inputs' rows: ~H/3 */
        cr_assert_eq(bn, 0.0);
    }
    cr_assert_eq(sona_lora_merge(0, 2, 3, (const float *const *)a.A, (const float *const *)a.Bt,
                                 NULL, A, Bt, NULL), SONA_E_INVALID);
    drop(&a);
}

Test(lora_merge, align_turns_the_factors_back_to_the_reference_coordinates)
{
    /* A merged adapter is its reference turned by an orthogonal R (rows permuted, signs flipped,
     * mixed): sona_lora_align finds R^T, so each coordinate means again what it meant, and B A
     * never changes. */
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    sona_rng rng;
    sona_rng_seed(&rng, seed, 5);
    enum { HH = 40, RR = 3 };
    adapters a = make(1, HH, RR, &rng);
    const double c = cos(0.7), s = sin(0.7);
    const double R[RR][RR] = {{0, -c, s}, {0, s, c}, {-1, 0, 0}}; /* orthogonal */
    float A[RR * HH], Bt[RR * HH];
    for (uint32_t i = 0; i < RR; i++)
        for (uint32_t h = 0; h < HH; h++) {
            double sa = 0.0, sb = 0.0;
            for (uint32_t j = 0; j < RR; j++)
                sa += R[i][j] * a.A[0][j * HH + h], sb += R[i][j] * a.Bt[0][j * HH + h];
            A[i * HH + h] = (float)sa, Bt[i * HH + h] = (float)sb;
        }
    cr_assert_eq(sona_lora_align(HH, RR, a.A[0], A, Bt), SONA_OK);
    for (uint32_t i = 0; i < RR * HH; i++) {
        cr_assert(fabsf(A[i] - a.A[0][i]) < 1e-5f, "A[%u] %g vs %g", i, A[i], a.A[0][i]);
        cr_assert(fabsf(Bt[i] - a.Bt[0][i]) < 1e-5f, "Bt[%u] %g vs %g", i, Bt[i], a.Bt[0][i]);
    }
    /* A singular reference (a zero row): no unique turn, nothing changes. */
    float Z[RR * HH];
    memcpy(Z, a.A[0], sizeof Z);
    memset(Z, 0, HH * sizeof(float));
    float A2[RR * HH], B2[RR * HH];
    memcpy(A2, A, sizeof A2), memcpy(B2, Bt, sizeof B2);
    cr_assert_eq(sona_lora_align(HH, RR, Z, A2, B2), SONA_OK);
    cr_assert_eq(memcmp(A2, A, sizeof A2), 0);
    cr_assert_eq(memcmp(B2, Bt, sizeof B2), 0);
    drop(&a);
}

/* The sketch's finish with a reference (the turn folded in) against the finish without one
 * followed by sona_lora_align: the same factors to float rounding, at odd sizes, with all
 * directions live and with some dead (M of rank below r: their A rows come from Omega). */
static void sketch_finish_turned(uint32_t k, uint32_t zero_rows, uint64_t seed)
{
    sona_rng rng;
    sona_rng_seed(&rng, seed, 6 + zero_rows);
    enum { HH = 203, RR = 5, LL = 7 };
    adapters a = make(k, HH, RR, &rng);
    for (uint32_t i = 0; i < k; i++) /* B's last columns zero: M of rank k (RR - zero_rows) */
        memset(a.Bt[i] + (size_t)(RR - zero_rows) * HH, 0, (size_t)zero_rows * HH * sizeof(float));
    float *ref = new_uniform(&rng, (size_t)RR * HH, -1.0f, 1.0f);
    double *om = malloc((size_t)LL * HH * sizeof *om), *Y = calloc((size_t)LL * HH, sizeof *Y);
    double *Z = calloc((size_t)LL * HH, sizeof *Z);
    cr_assert(ref && om && Y && Z);
    cr_assert_eq(sona_sketch_basis(HH, LL, RR, ref, 99, om), SONA_OK);
    const float *const *pa = (const float *const *)a.A, *const *pb = (const float *const *)a.Bt;
    cr_assert_eq(sona_sketch_product(HH, RR, k, pa, pb, NULL, LL, om, 0, Y), SONA_OK);
    sona_sketch_orthonormalize(HH, LL, Y);
    cr_assert_eq(sona_sketch_product(HH, RR, k, pa, pb, NULL, LL, Y, 1, Z), SONA_OK);
    float A1[RR * HH], B1[RR * HH], A2[RR * HH], B2[RR * HH];
    sona_merge_info i1, i2;
    cr_assert_eq(sona_sketch_finish(HH, RR, LL, Y, Z, om, 0.3, NULL, A1, B1, &i1), SONA_OK);
    uint32_t dead = 0; /* directions with B 0, before the turn mixes them */
    for (uint32_t j = 0; j < RR; j++) {
        int zero = 1;
        for (uint32_t h = 0; h < HH; h++)
            zero &= B1[j * HH + h] == 0.0f;
        dead += (uint32_t)zero;
    }
    cr_assert_eq(dead, zero_rows);
    cr_assert_eq(sona_lora_align(HH, RR, ref, A1, B1), SONA_OK);
    cr_assert_eq(sona_sketch_finish(HH, RR, LL, Y, Z, om, 0.3, ref, A2, B2, &i2), SONA_OK);
    cr_assert_eq(i1.total, i2.total);
    cr_assert_eq(i1.tail, i2.tail);
    double worst = 0.0, scale = 0.0;
    for (uint32_t i = 0; i < RR * HH; i++) {
        worst = fmax(worst, fmax(fabs((double)A1[i] - A2[i]), fabs((double)B1[i] - B2[i])));
        scale = fmax(scale, fmax(fabs((double)A1[i]), fabs((double)B1[i])));
    }
    printf("[lora_merge] finish turned (k %u, %u zero rows of B, %u dead directions): largest "
           "difference %.3g of %.3g\n", k, zero_rows, dead, worst, scale);
    cr_assert(worst <= 1e-5 * scale, "turned in the finish vs aligned after: %g (of %g)", worst, scale);
    free(ref), free(om), free(Y), free(Z);
    drop(&a);
}

Test(lora_merge, the_sketch_finish_turns_as_align_does)
{
    const uint64_t seed = test_seed();
    printf("seed %" PRIu64 "\n", seed);
    sketch_finish_turned(3, 0, seed);
    sketch_finish_turned(1, 2, seed);
}
