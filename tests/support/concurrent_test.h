/* SPDX-License-Identifier: MIT */
/* Concurrent tests build two ways: as Criterion programs (like every test), and standalone for
 * ThreadSanitizer, which Criterion cannot run under (its inheritable arena fails to map:
 * Snaipe/Criterion#274). A concurrent test file writes its checks with CHECK / REQUIRE and its
 * cases with CONCURRENT_TEST, and ends with CONCURRENT_MAIN(case, case, ...). */
#ifndef SONA_TEST_CONCURRENT_H
#define SONA_TEST_CONCURRENT_H

#ifdef SONA_TEST_STANDALONE
#include <stdio.h>
#include <stdlib.h>

static int concurrent_failures;
#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
            concurrent_failures++;                                           \
        }                                                                    \
    } while (0)
#define REQUIRE(cond, ...)                                                   \
    do {                                                                     \
        const int required_ok_ = (cond); /* evaluated once: it may have effects */ \
        CHECK(required_ok_, __VA_ARGS__);                                    \
        if (!required_ok_)                                                   \
            exit(1);                                                         \
    } while (0)
#define CONCURRENT_TEST(suite, name) static void suite##_##name(void)
typedef void (*concurrent_case)(void);
#define CONCURRENT_MAIN(...)                                                 \
    int main(void)                                                           \
    {                                                                        \
        const concurrent_case cases[] = {__VA_ARGS__};                       \
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)          \
            cases[i]();                                                      \
        printf("%s\n", concurrent_failures ? "FAILED" : "passed");           \
        return concurrent_failures ? 1 : 0;                                  \
    }
#else
#include <criterion/criterion.h>
#define CHECK(cond, ...) cr_expect(cond, __VA_ARGS__)
#define REQUIRE(cond, ...) cr_assert(cond, __VA_ARGS__)
#define CONCURRENT_TEST(suite, name) Test(suite, name, .timeout = 600)
#define CONCURRENT_MAIN(...)
#endif

#endif /* SONA_TEST_CONCURRENT_H */
