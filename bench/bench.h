/* `sona bench`: benchmark groups of the spec, run on every backend. */
#ifndef SONA_BENCH_H
#define SONA_BENCH_H

/* Entry point of `sona bench ARGS...`; returns the process exit code. */
int sona_bench_main(int argc, char **argv);

#endif
