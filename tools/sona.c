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

/* sona export-peft STATE DIR [--module FORMAT] [--base-model NAME]: a saved engine's Base-LoRA
 * as a PEFT adapter, without knowing the engine's configuration (the file has it). */
static int cmd_export_peft(int argc, char **argv)
{
    sona_peft_config pc;
    sona_peft_config_default(&pc);
    const char *state = NULL, *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--module") && i + 1 < argc)
            pc.module_format = argv[++i];
        else if (!strcmp(argv[i], "--base-model") && i + 1 < argc)
            pc.base_model = argv[++i];
        else if (argv[i][0] != '-' && !state)
            state = argv[i];
        else if (argv[i][0] != '-' && !dir)
            dir = argv[i];
        else
            state = dir = NULL, i = argc;
    }
    if (!state || !dir) {
        fprintf(stderr, "usage: sona export-peft STATE DIR [--module FORMAT] [--base-model NAME]\n"
                        "  FORMAT: layer l's module path with %%u for l (default %s)\n",
                pc.module_format);
        return 2;
    }
    sona_engine_config cfg;
    sona_engine *e = NULL;
    sona_status st = sona_state_config(state, &cfg);
    if (st == SONA_OK) {
        cfg.background_thread = 0; /* nothing learns here: no loop B thread, no device copies */
        cfg.device_apply = 0;
        st = sona_engine_create(&cfg, &e);
    }
    if (st != SONA_OK) {
        fprintf(stderr, "sona export-peft: %s\n", sona_last_error());
        return 1;
    }
    if ((st = sona_load(e, state)) == SONA_OK && (st = sona_export_peft(e, dir, &pc)) == SONA_OK)
        printf("%s/adapter_model.safetensors and %s/adapter_config.json: %u layers, rank %u, hidden %u\n", dir,
               dir, cfg.base_layers, cfg.base_rank, cfg.hidden);
    else
        fprintf(stderr, "sona export-peft: %s\n", sona_engine_last_error(e));
    sona_engine_destroy(e);
    return st == SONA_OK ? 0 : 1;
}

static void usage(void)
{
    fprintf(stderr, "usage: sona <command> [options]\n"
                    "  info             CPU, ISA features, chosen variant, topology, backends\n"
                    "  bench [options]  benchmarks on every available backend (sona bench --help)\n"
                    "  demo [n] [seed]  the engine learning a synthetic task: learning curve, EWC++\n"
                    "  export-peft STATE DIR [--module FORMAT] [--base-model NAME]\n"
                    "                   a saved engine's Base-LoRA as a PEFT adapter (vLLM, LoRAX)\n");
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
    if (!strcmp(argv[1], "export-peft"))
        return cmd_export_peft(argc - 1, argv + 1);
    usage();
    return 2;
}
