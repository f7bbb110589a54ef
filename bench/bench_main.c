#include "bench.h"

#include <stdio.h>

int sona_bench_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "sona bench: no benchmark groups yet\n");
    return 1;
}
