/* SPDX-License-Identifier: MIT */
/* The `sona` command line: info, bench, demo, export-peft. */
#include "bench.h"
#include "cli_args.h"
#include "demo.h"
#include "dispatch/cost.h"
#include "dispatch/dispatch.h"

#include <sona.h>
#include <stdio.h>
#include <string.h>

static const cli_option help_only[] = {{"help", 'h', 0, 0}, {NULL, 0, 0, 0}};

static void info_usage(FILE *f)
{
    fprintf(f, "usage: sona info [--help]\n"
               "  the library's version, the CPU, its ISA features, the chosen CPU variant,\n"
               "  the topology, the caches, every backend with whether it runs here, and the\n"
               "  routing by cost: each backend's model and, per op, the size from which each\n"
               "  available device takes over from the CPU\n");
}

static int cmd_info(int argc, char **argv)
{
    cli_parser p;
    cli_parser_init(&p, "sona info", argc, argv);
    for (int id; (id = cli_next(&p, help_only)) != CLI_END;) {
        if (id == 0) {
            info_usage(stdout);
            return 0;
        }
        if (id == CLI_OPERAND)
            cli_unexpected(&p, p.value);
        fprintf(stderr, "try 'sona info --help'\n");
        return 2;
    }
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
    sona_cost_report(stdout);
    return st == SONA_OK ? 0 : 1;
}

static void export_peft_usage(FILE *f, const char *module_format)
{
    fprintf(f, "usage: sona export-peft STATE DIR [--module FORMAT] [--base-model NAME] [--tenant T]\n"
               "                [--micro-layer L] [--model-hidden N]\n"
               "  writes DIR/adapter_model.safetensors and DIR/adapter_config.json from the\n"
               "  Base-LoRA (or a tenant's Micro-LoRA) of the engine saved in STATE (the file gives\n"
               "  its configuration); DIR is replaced whole, never half written\n"
               "  --module        layer l's module path with %%u for l (default %s)\n"
               "  --base-model    base_model_name_or_path in adapter_config.json\n"
               "  --tenant        export this tenant's Micro-LoRA instead, as one module\n"
               "  --micro-layer   the layer whose module the tenant's adapter goes to (default 0)\n"
               "  --model-hidden  the target modules' width in the model: refused when not the adapters'\n"
               "  -h, --help      this text\n"
               "an option's value may also follow '=': --base-model=org/model\n",
               module_format);
}

/* sona export-peft STATE DIR [options]: a saved engine's Base-LoRA (or a tenant's Micro-LoRA) as a
 * PEFT adapter, without knowing the engine's configuration (the file has it). */
static int cmd_export_peft(int argc, char **argv)
{
    enum { OPT_HELP, OPT_MODULE, OPT_BASE_MODEL, OPT_TENANT, OPT_MICRO_LAYER, OPT_MODEL_HIDDEN };
    static const cli_option opts[] = {
        {"help", 'h', 0, OPT_HELP},
        {"module", 0, 1, OPT_MODULE},
        {"base-model", 0, 1, OPT_BASE_MODEL},
        {"tenant", 0, 1, OPT_TENANT},
        {"micro-layer", 0, 1, OPT_MICRO_LAYER},
        {"model-hidden", 0, 1, OPT_MODEL_HIDDEN},
        {NULL, 0, 0, 0},
    };
    unsigned long long v;
    sona_peft_config pc;
    sona_peft_config_default(&pc);
    const char *state = NULL, *dir = NULL;
    cli_parser p;
    cli_parser_init(&p, "sona export-peft", argc, argv);
    for (int id; (id = cli_next(&p, opts)) != CLI_END;) {
        switch (id) {
        case OPT_HELP: export_peft_usage(stdout, pc.module_format); return 0;
        case OPT_MODULE: pc.module_format = p.value; break;
        case OPT_BASE_MODEL: pc.base_model = p.value; break;
        case OPT_TENANT:
        case OPT_MICRO_LAYER:
        case OPT_MODEL_HIDDEN:
            if (cli_parse_u64(p.value, &v) || v > (id == OPT_TENANT ? INT32_MAX : UINT32_MAX)) {
                fprintf(stderr, "sona export-peft: --%s must be a whole number, not '%s'\n",
                        id == OPT_TENANT ? "tenant" : id == OPT_MICRO_LAYER ? "micro-layer" : "model-hidden", p.value);
                return 2;
            }
            if (id == OPT_TENANT)
                pc.tenant = (int32_t)v;
            else if (id == OPT_MICRO_LAYER)
                pc.micro_layer = (uint32_t)v;
            else
                pc.model_hidden = (uint32_t)v;
            break;
        case CLI_OPERAND:
            if (!state)
                state = p.value;
            else if (!dir)
                dir = p.value;
            else {
                cli_unexpected(&p, p.value);
                fprintf(stderr, "try 'sona export-peft --help'\n");
                return 2;
            }
            break;
        default: fprintf(stderr, "try 'sona export-peft --help'\n"); return 2;
        }
    }
    if (!state || !dir) {
        fprintf(stderr, "sona export-peft: %s\n", state ? "missing DIR" : "missing STATE and DIR");
        export_peft_usage(stderr, pc.module_format);
        return 2;
    }
    sona_engine_config cfg;
    sona_engine *e = NULL;
    sona_status st = sona_state_config(state, &cfg);
    if (st == SONA_OK) {
        cfg.background_thread = 0; /* nothing learns here: no loop B thread, no device copies */
        cfg.device_apply = 0;
        /* Nor is anything queued: a file's buffer_capacity (up to 2^32 - 1 cells of 16 bytes,
         * allocated and touched at creation) is not this tool's to pay for. */
        cfg.buffer_capacity = 1;
        st = sona_engine_create(&cfg, &e);
    }
    if (st != SONA_OK) {
        fprintf(stderr, "sona export-peft: %s\n", sona_last_error());
        return 1;
    }
    if ((st = sona_load(e, state)) == SONA_OK && (st = sona_export_peft(e, dir, &pc)) == SONA_OK)
        printf("%s/adapter_model.safetensors and %s/adapter_config.json: %u module(s), rank %u, hidden %u\n",
               dir, dir, pc.tenant >= 0 ? 1u : cfg.base_layers, pc.tenant >= 0 ? cfg.micro_rank : cfg.base_rank,
               cfg.hidden);
    else
        fprintf(stderr, "sona export-peft: %s\n", sona_engine_last_error(e));
    sona_engine_destroy(e);
    return st == SONA_OK ? 0 : 1;
}

/* The run-time version of the library the tool is running with; the one it was built against
 * too when they differ (a shared libsona replaced under the tool). */
static int print_version(void)
{
    printf("sona (libsona) %s\n", sona_version());
    if (strcmp(sona_version(), SONA_VERSION_STRING))
        printf("built against libsona %s\n", SONA_VERSION_STRING);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: sona [--help | --version] <command> [options]\n"
               "commands:\n"
               "  info             CPU, ISA features, chosen variant, topology, backends\n"
               "  bench [options]  benchmarks on every available backend (sona bench --help)\n"
               "  demo [n] [seed]  the engine learning a synthetic task: learning curve, EWC++\n"
               "  export-peft STATE DIR [--module FORMAT] [--base-model NAME]\n"
               "                   a saved engine's Base-LoRA as a PEFT adapter (vLLM, LoRAX)\n"
               "  version          the library's version (as --version)\n"
               "  help [command]   this text, or a command's (as sona <command> --help)\n"
               "options:\n"
               "  -h, --help       this text\n"
               "  -V, --version    the library's run-time version\n");
}

typedef struct command {
    const char *name;
    int (*main)(int argc, char **argv);
} command;

static int cmd_version(int argc, char **argv)
{
    cli_parser p;
    cli_parser_init(&p, "sona version", argc, argv);
    for (int id; (id = cli_next(&p, help_only)) != CLI_END;) {
        if (id == 0) {
            printf("usage: sona version\n  the library's run-time version (as sona --version)\n");
            return 0;
        }
        if (id == CLI_OPERAND)
            cli_unexpected(&p, p.value);
        return 2;
    }
    return print_version();
}

static int cmd_help(int argc, char **argv);

static const command commands[] = {
    {"info", cmd_info},
    {"bench", sona_bench_main},
    {"demo", sona_demo_main},
    {"export-peft", cmd_export_peft},
    {"version", cmd_version},
    {"help", cmd_help},
};

static const command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(commands[i].name, name))
            return &commands[i];
    return NULL;
}

/* sona help [command]: this usage, or the command's own (sona <command> --help). */
static int cmd_help(int argc, char **argv)
{
    if (argc < 2) {
        usage(stdout);
        return 0;
    }
    if (argc > 2) {
        fprintf(stderr, "sona help: unexpected argument '%s'\n", argv[2]);
        return 2;
    }
    const command *c = find_command(argv[1]);
    if (!c) {
        fprintf(stderr, "sona help: unknown command '%s'\ntry 'sona --help'\n", argv[1]);
        return 2;
    }
    char help[] = "--help";
    char *sub_argv[] = {argv[1], help, NULL};
    return c->main(2, sub_argv);
}

int main(int argc, char **argv)
{
    enum { OPT_HELP, OPT_VERSION };
    static const cli_option opts[] = {
        {"help", 'h', 0, OPT_HELP},
        {"version", 'V', 0, OPT_VERSION},
        {NULL, 0, 0, 0},
    };
    cli_parser p;
    cli_parser_init(&p, "sona", argc, argv);
    /* Options before the command are the tool's own; the command parses everything after it. */
    for (int id; (id = cli_next(&p, opts)) != CLI_END;) {
        switch (id) {
        case OPT_HELP: usage(stdout); return 0;
        case OPT_VERSION: return print_version();
        case CLI_OPERAND: {
            const command *c = find_command(p.value);
            if (!c) {
                fprintf(stderr, "sona: unknown command '%s'\ntry 'sona --help'\n", p.value);
                return 2;
            }
            const int at = p.next - 1; /* the command's argv[0] is its name */
            return c->main(argc - at, argv + at);
        }
        default: fprintf(stderr, "try 'sona --help'\n"); return 2;
        }
    }
    fprintf(stderr, "sona: no command given\n");
    usage(stderr);
    return 2;
}
