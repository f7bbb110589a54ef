/* SPDX-License-Identifier: MIT */
/* The table of benchmark groups, in the order `sona bench` runs them. Each group is defined in
 * the bench/ file of its component; a weak reference lets the table name groups whose file is
 * not in this build yet (they are listed as missing, never silently dropped). */
#include "bench.h"

#define GROUP(sym) extern const bench_group sym __attribute__((weak));
#include "groups.def"
#undef GROUP

const bench_group *const bench_group_table[] = {
#define GROUP(sym) &sym,
#include "groups.def"
#undef GROUP
};
const char *const bench_group_symbols[] = {
#define GROUP(sym) #sym,
#include "groups.def"
#undef GROUP
};
const size_t bench_group_count = sizeof bench_group_table / sizeof bench_group_table[0];
