/* The `sona` command line: info, bench. */
#include "bench.h"
#include "demo.h"
#include "dispatch/dispatch.h"

#include <sona.h>
#include <stdio.h>
#include <string.h>

static int cmd_info(void)
{
    sona_cpu_info ci;
    sona_cpu_info_get(&ci);
    printf("libsona %s\n", sona_version());
    printf("cpu:       %s\n", ci.brand);
    char features[128];
    bench_features_text(features, sizeof features, ci.features);
    printf("features:  %s\n", features);
    printf("variant:   %s\n", ci.variant_reason);
    printf("topology:  %u package(s), %u core(s), %u thread(s), %u NUMA node(s)\n", ci.packages,
           ci.cores, ci.threads, ci.numa_nodes);
    printf("caches:    L1d %llu KiB, L2 %llu KiB, L3 %llu KiB\n", (unsigned long long)ci.l1d_bytes >> 10,
           (unsigned long long)ci.l2_bytes >> 10, (unsigned long long)ci.l3_bytes >> 10);
    printf("workers:   %u thread(s)\n", ci.worker_threads);
    printf("cpu variants built:");
    const sona_cpu_variant *vars;
    uint32_t nv = sona_cpu_variants(&vars);
    for (uint32_t i = 0; i < nv; i++)
        printf(" %s%s", vars[i].ops->name,
               (ci.features & vars[i].needs) == vars[i].needs ? "" : "(not runnable here)");
    printf("\nbackends:\n");
    for (uint32_t i = 0; i < sona_backend_count(); i++) {
        sona_backend_info bi;
        sona_backend_info_get(i, &bi);
        printf("  %-7s %-14s %s\n", bi.name, bi.available ? "available" : "not available", bi.detail);
    }
    const char *sel;
    sona_status st = sona_backend_selected(&sel);
    printf("selected:  %s%s%s\n", sel, st == SONA_OK ? "" : " -- refused: ",
           st == SONA_OK ? "" : sona_status_str(st));
    return st == SONA_OK ? 0 : 1;
}

static void usage(void)
{
    fprintf(stderr, "usage: sona <command> [options]\n"
                    "  info             CPU, ISA features, chosen variant, topology, backends\n"
                    "  bench [options]  benchmarks on every available backend (sona bench --help)\n"
                    "  demo [n] [seed]  the engine learning a synthetic task: learning curve, EWC++\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return 2;
    }
    if (!strcmp(argv[1], "info"))
        return cmd_info();
    if (!strcmp(argv[1], "bench"))
        return sona_bench_main(argc - 1, argv + 1);
    if (!strcmp(argv[1], "demo"))
        return sona_demo_main(argc - 1, argv + 1);
    usage();
    return 2;
}
