/* SPDX-License-Identifier: MIT */
/* Small dense products in double: the r x r and r x width matrices of the adapters' merges and
 * preconditioners, where a call to an op would cost more than the arithmetic. */
#ifndef SONA_COMMON_MATMUL_H
#define SONA_COMMON_MATMUL_H

#include <stddef.h>

/* out (m x n) = a (m x k) b (k x n), row-major, each entry summed in k order; out must not
 * overlap a or b. */
static inline void sona_matmul_d(const double *a, const double *b, double *out, size_t m, size_t k,
                                 size_t n)
{
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0.0;
            for (size_t t = 0; t < k; t++)
                s += a[i * k + t] * b[t * n + j];
            out[i * n + j] = s;
        }
}

#endif
