/* SPDX-License-Identifier: MIT */
/* sona_export_peft: the Base-LoRA as a PEFT adapter. The safetensors file is read back with its
 * format's rules (header length, JSON header, contiguous byte ranges covering the data), and each
 * exported layer, applied as PEFT applies it (x + alpha/r * B (A x), in double), reproduces the
 * engine's sona_apply_layer on fresh random inputs. Bad arguments are refused and write nothing. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/rng.h"
#include "json_read.h"
#include "support/files.h"
#include "support/fill.h"
#include "support/op_cases.h"
#include <sona.h>

enum { HIDDEN = 37, RANK = 4, LAYERS = 3 };

static sona_engine *learned_engine(uint64_t seed)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, HIDDEN);
    c.base_rank = RANK;
    c.base_layers = LAYERS;
    c.base_alpha = 3.0f; /* s = 0.75: not 1, so a wrong scale shows */
    c.background_thread = 0;
    c.seed = seed;
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_OK, "%s", sona_last_error());
    /* Requests with a step at every layer and varied feedback, so every layer's B learns. */
    sona_rng r;
    sona_rng_seed(&r, seed, 1);
    float query[HIDDEN], act[HIDDEN];
    for (int i = 0; i < 300; i++) {
        fill_uniform(&r, query, HIDDEN, -1.0f, 1.0f);
        sona_request *req;
        cr_assert_eq(sona_request_begin(e, 0, query, &req), SONA_OK);
        for (uint32_t l = 0; l < LAYERS; l++) {
            for (int h = 0; h < HIDDEN; h++)
                act[h] = query[h] + 0.5f * (2.0f * sona_rng_uniform(&r) - 1.0f);
            cr_assert_eq(sona_request_step(req, l, act, NULL, 0, sona_rng_uniform(&r)), SONA_OK);
        }
        cr_assert_eq(sona_request_end(req, sona_rng_uniform(&r)), SONA_OK);
    }
    cr_assert_eq(sona_force_learn(e), SONA_OK, "%s", sona_engine_last_error(e));
    sona_stats s;
    cr_assert_eq(sona_get_stats(e, &s), SONA_OK);
    cr_assert_gt(s.base_updates, 0, "the Base-LoRA never learned: B is still zero, nothing to check");
    return e;
}

/* The file's bytes, asserted readable. */
static char *read_file(const char *path, size_t *len)
{
    char *p = test_read_file(path, len);
    cr_assert_not_null(p, "cannot read %s", path);
    return p;
}

static char *path_in(const char *dir, const char *file)
{
    static char path[2][700];
    static int next;
    char *p = path[next++ % 2];
    snprintf(p, sizeof path[0], "%s/%s", dir, file);
    return p;
}

/* One tensor of the file: its header entry checked, its values copied out. */
static void tensor(const json_value *header, const char *data, size_t data_len, const char *name,
                   uint32_t rows, uint32_t cols, float *out)
{
    const json_value *t = json_get(header, name);
    cr_assert_not_null(t, "no tensor %s", name);
    cr_expect_str_eq(json_get_str(t, "dtype", ""), "F32");
    const json_value *shape = json_get(t, "shape"), *off = json_get(t, "data_offsets");
    cr_assert(shape && shape->type == JSON_ARRAY && shape->count == 2, "%s: shape", name);
    cr_expect_eq(shape->items[0].number, rows, "%s rows", name);
    cr_expect_eq(shape->items[1].number, cols, "%s cols", name);
    cr_assert(off && off->type == JSON_ARRAY && off->count == 2, "%s: data_offsets", name);
    const size_t begin = (size_t)off->items[0].number, end = (size_t)off->items[1].number;
    cr_assert(begin <= end && end <= data_len && end - begin == (size_t)rows * cols * sizeof(float),
              "%s: range [%zu, %zu) of %zu bytes", name, begin, end, data_len);
    memcpy(out, data + begin, end - begin);
}

Test(export_peft, layers_apply_as_the_engine_does)
{
    const uint64_t seed = test_seed();
    printf("[export_peft] seed %" PRIu64 "\n", seed);
    sona_engine *e = learned_engine(seed);
    char dir[] = "/tmp/sona_peft_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char out[256];
    snprintf(out, sizeof out, "%s/adapter", dir); /* created by the export */
    sona_peft_config pc;
    sona_peft_config_default(&pc);
    pc.base_model = "org/model \"v2\"";
    cr_assert_eq(sona_export_peft(e, out, &pc), SONA_OK, "%s", sona_engine_last_error(e));

    size_t len;
    char *file = read_file(path_in(out, "adapter_model.safetensors"), &len);
    uint64_t header_len;
    cr_assert_geq(len, 8);
    memcpy(&header_len, file, 8);
    cr_assert_leq(header_len, len - 8);
    cr_expect_eq(header_len % 8, 0, "the tensors' bytes start 8-aligned");
    cr_expect_eq(file[8], '{');
    char *header_text = strndup(file + 8, header_len), err[128];
    json_value header;
    cr_assert_eq(json_parse(header_text, &header, err, sizeof err), 0, "header: %s", err);
    cr_expect_str_eq(json_get_str(json_get(&header, "__metadata__"), "format", ""), "pt");
    cr_expect_eq(header.count, 1 + 2 * LAYERS, "the metadata and two tensors per layer");
    const char *data = file + 8 + header_len;
    const size_t data_len = len - 8 - header_len;
    size_t covered = 0;
    for (size_t i = 0; i < header.count; i++)
        if (strcmp(header.keys[i], "__metadata__") != 0)
            covered += (size_t)(json_get(&header.items[i], "data_offsets")->items[1].number -
                                json_get(&header.items[i], "data_offsets")->items[0].number);
    cr_expect_eq(covered, data_len, "the byte ranges cover the data exactly");

    const double s = 3.0 / RANK;
    sona_rng r;
    sona_rng_seed(&r, seed, 2);
    float A[RANK * HIDDEN], B[HIDDEN * RANK], x[HIDDEN], y[HIDDEN];
    for (uint32_t l = 0; l < LAYERS; l++) {
        char name[128];
        snprintf(name, sizeof name, "base_model.model.model.layers.%u.self_attn.o_proj.lora_A.weight", l);
        tensor(&header, data, data_len, name, RANK, HIDDEN, A);
        snprintf(name, sizeof name, "base_model.model.model.layers.%u.self_attn.o_proj.lora_B.weight", l);
        tensor(&header, data, data_len, name, HIDDEN, RANK, B);
        double b_norm = 0;
        for (int i = 0; i < HIDDEN * RANK; i++)
            b_norm += (double)B[i] * B[i];
        cr_expect_gt(b_norm, 0.0, "layer %u: B is zero, the learned weights were not exported", l);
        for (int trial = 0; trial < 4; trial++) {
            fill_uniform(&r, x, HIDDEN, -1.0f, 1.0f);
            cr_assert_eq(sona_apply_layer(e, l, x, y), SONA_OK);
            float Bt[RANK * HIDDEN]; /* PEFT's B is hidden x rank, the reference takes its transpose */
            for (int h = 0; h < HIDDEN; h++)
                for (int j = 0; j < RANK; j++)
                    Bt[j * HIDDEN + h] = B[h * RANK + j];
            double ref[HIDDEN], mag[HIDDEN];
            op_ref_lora_row(x, HIDDEN, RANK, A, Bt, s, ref, mag);
            for (int h = 0; h < HIDDEN; h++)
                cr_assert(fabs(y[h] - ref[h]) <= 1e-5 * mag[h], "layer %u h %d: engine %.8g, PEFT %.8g", l, h,
                          y[h], ref[h]);
        }
    }
    json_free(&header);
    free(header_text);
    free(file);

    char *config_text = read_file(path_in(out, "adapter_config.json"), &len);
    json_value config;
    cr_assert_eq(json_parse(config_text, &config, err, sizeof err), 0, "adapter_config.json: %s", err);
    cr_expect_str_eq(json_get_str(&config, "peft_type", ""), "LORA");
    cr_expect_eq(json_get_num(&config, "r", 0), RANK);
    cr_expect_eq(json_get_num(&config, "lora_alpha", 0), 3.0);
    cr_expect_str_eq(json_get_str(&config, "base_model_name_or_path", ""), "org/model \"v2\"");
    const json_value *targets = json_get(&config, "target_modules");
    cr_assert(targets && targets->type == JSON_ARRAY && targets->count == 1);
    cr_expect_str_eq(targets->items[0].string, "o_proj");
    json_free(&config);
    free(config_text);

    unlink(path_in(out, "adapter_model.safetensors"));
    unlink(path_in(out, "adapter_config.json"));
    rmdir(out);
    rmdir(dir);
    sona_engine_destroy(e);
}

Test(export_peft, bad_arguments_are_refused_and_write_nothing)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, HIDDEN);
    c.background_thread = 0;
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_OK, "%s", sona_last_error());
    char dir[] = "/tmp/sona_peft_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    cr_expect_eq(sona_export_peft(NULL, dir, NULL), SONA_E_NULL);
    cr_expect_eq(sona_export_peft(e, NULL, NULL), SONA_E_NULL);
    cr_expect_eq(sona_export_peft(e, "", NULL), SONA_E_INVALID);
    const char *bad_formats[] = {"model.layers.o_proj",          /* no layer */
                                 "model.layers.%d.o_proj",        /* not %u */
                                 "model.layers.%u.%u.o_proj",     /* two */
                                 "model.layers.%u.o_proj%%",      /* another % */
                                 "model.layers.o_proj_%u",        /* the layer in the module's name */
                                 "model.layers.%u."};             /* no module name */
    for (size_t i = 0; i < sizeof bad_formats / sizeof bad_formats[0]; i++) {
        sona_peft_config pc;
        sona_peft_config_default(&pc);
        pc.module_format = bad_formats[i];
        cr_expect_eq(sona_export_peft(e, dir, &pc), SONA_E_INVALID, "%s", bad_formats[i]);
        cr_expect(strstr(sona_engine_last_error(e), "module_format") != NULL, "%s: %s", bad_formats[i],
                  sona_engine_last_error(e));
    }
    /* JSON is UTF-8: names in another encoding are refused, not written as invalid JSON. */
    sona_peft_config latin1;
    sona_peft_config_default(&latin1);
    latin1.base_model = "org/mod\xe9le";
    cr_expect_eq(sona_export_peft(e, dir, &latin1), SONA_E_INVALID);
    cr_expect(strstr(sona_engine_last_error(e), "base_model is not valid UTF-8") != NULL, "%s", sona_engine_last_error(e));
    sona_peft_config_default(&latin1);
    latin1.module_format = "model.layers.%u.\xc0\xaf_proj"; /* an overlong '/' */
    cr_expect_eq(sona_export_peft(e, dir, &latin1), SONA_E_INVALID);
    cr_expect(strstr(sona_engine_last_error(e), "module_format is not valid UTF-8") != NULL, "%s",
              sona_engine_last_error(e));
    char missing_parent[256];
    snprintf(missing_parent, sizeof missing_parent, "%s/no/such", dir);
    cr_expect_eq(sona_export_peft(e, missing_parent, NULL), SONA_E_IO);
    cr_expect(strstr(sona_engine_last_error(e), missing_parent) != NULL, "%s", sona_engine_last_error(e));
    struct stat st;
    cr_expect_neq(stat(path_in(dir, "adapter_model.safetensors"), &st), 0, "a refused export wrote a file");
    cr_expect_eq(rmdir(dir), 0, "the directory is left empty");
    sona_engine_destroy(e);
}

/* The safetensors file of dir parsed: its header (caller frees with json_free and the two
 * buffers) and where the data starts. */
static const char *open_model(const char *dir, json_value *header, char **file, char **text, size_t *data_len)
{
    size_t len;
    *file = read_file(path_in(dir, "adapter_model.safetensors"), &len);
    uint64_t header_len;
    memcpy(&header_len, *file, 8);
    cr_assert_leq(header_len, len - 8);
    *text = strndup(*file + 8, header_len);
    char err[128];
    cr_assert_eq(json_parse(*text, header, err, sizeof err), 0, "header: %s", err);
    *data_len = len - 8 - header_len;
    return *file + 8 + header_len;
}

/* Entries of the parent directory that an export did not clean up: its temporary directories
 * (.sona-*, see eng_temp_name), or base's name and a '.' (what older versions used). */
static int leftovers(const char *parent, const char *base)
{
    char cmd[900];
    snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -c -e '^%s\\.' -e '^\\.sona-' > /dev/null", parent, base);
    return system(cmd) == 0;
}

/* A tenant's Micro-LoRA exported as one module applies as sona_apply does; a second export
 * replaces the directory whole (no leftovers beside it); a width other than the model's, a
 * directory holding other files, a path that is a file and unknown tenants are refused, the
 * directory as it was. */
Test(export_peft, tenants_republishing_and_shape_checks)
{
    const uint64_t seed = test_seed();
    printf("[export_peft] tenants seed %" PRIu64 "\n", seed);
    sona_engine *e = learned_engine(seed);
    char dir[] = "/tmp/sona_peft_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char out[256];
    snprintf(out, sizeof out, "%s/adapter", dir);
    sona_peft_config pc;
    sona_peft_config_default(&pc);
    pc.tenant = 0;
    pc.micro_layer = 5;
    pc.model_hidden = HIDDEN;
    cr_assert_eq(sona_export_peft(e, out, &pc), SONA_OK, "%s", sona_engine_last_error(e));
    const sona_engine_config *c = sona_engine_get_config(e);
    const uint32_t r = c->micro_rank;
    json_value header;
    char *file, *text;
    size_t data_len;
    const char *data = open_model(out, &header, &file, &text, &data_len);
    cr_expect_eq(header.count, 3, "the metadata and one module's two tensors");
    float A[64 * HIDDEN], B[HIDDEN * 64], Bt[64 * HIDDEN], x[HIDDEN], y[HIDDEN];
    tensor(&header, data, data_len, "base_model.model.model.layers.5.self_attn.o_proj.lora_A.weight", r, HIDDEN, A);
    tensor(&header, data, data_len, "base_model.model.model.layers.5.self_attn.o_proj.lora_B.weight", HIDDEN, r, B);
    for (int h = 0; h < HIDDEN; h++)
        for (uint32_t j = 0; j < r; j++)
            Bt[j * HIDDEN + h] = B[h * r + j];
    sona_rng rng;
    sona_rng_seed(&rng, seed, 5);
    double moved = 0;
    for (int trial = 0; trial < 4; trial++) {
        fill_uniform(&rng, x, HIDDEN, -1.0f, 1.0f);
        cr_assert_eq(sona_apply(e, 0, x, y), SONA_OK);
        double ref[HIDDEN], mag[HIDDEN];
        op_ref_lora_row(x, HIDDEN, r, A, Bt, c->micro_alpha / r, ref, mag);
        for (int h = 0; h < HIDDEN; h++) {
            cr_assert(fabs(y[h] - ref[h]) <= 1e-5 * mag[h], "h %d: engine %.8g, PEFT %.8g", h, y[h], ref[h]);
            moved = fmax(moved, fabs(y[h] - x[h]));
        }
    }
    cr_expect_gt(moved, 0.0, "the tenant's adapter is the identity: nothing was checked");
    json_free(&header);
    free(text);
    free(file);
    char *config_text = read_file(path_in(out, "adapter_config.json"), &data_len), err[128];
    json_value config;
    cr_assert_eq(json_parse(config_text, &config, err, sizeof err), 0, "%s", err);
    cr_expect_eq(json_get_num(&config, "r", 0), r);
    cr_expect_eq(json_get_num(&config, "lora_alpha", 0), c->micro_alpha);
    json_free(&config);
    free(config_text);

    /* The Base-LoRA over it: the directory is replaced whole. */
    sona_peft_config_default(&pc);
    cr_assert_eq(sona_export_peft(e, out, &pc), SONA_OK, "%s", sona_engine_last_error(e));
    data = open_model(out, &header, &file, &text, &data_len);
    cr_expect_eq(header.count, 1 + 2 * LAYERS, "the Base-LoRA replaced the tenant's adapter");
    json_free(&header);
    free(text);
    free(file);
    cr_expect(!leftovers(dir, "adapter"), "a temporary directory (.sona-*) was left in %s", dir);

    /* Refusals, the directory as it was. */
    size_t before_len, after_len;
    char *before = read_file(path_in(out, "adapter_model.safetensors"), &before_len);
    pc.model_hidden = HIDDEN + 1;
    cr_expect_eq(sona_export_peft(e, out, &pc), SONA_E_SIZE);
    cr_expect(strstr(sona_engine_last_error(e), "wide") != NULL, "%s", sona_engine_last_error(e));
    sona_peft_config_default(&pc);
    pc.tenant = 99;
    cr_expect_eq(sona_export_peft(e, out, &pc), SONA_E_NOT_FOUND);
    pc.tenant = -2;
    cr_expect_eq(sona_export_peft(e, out, &pc), SONA_E_INVALID);
    sona_peft_config_default(&pc);
    FILE *f = fopen(path_in(out, "notes.txt"), "w");
    cr_assert_not_null(f);
    fclose(f);
    cr_expect_eq(sona_export_peft(e, out, &pc), SONA_E_INVALID);
    cr_expect(strstr(sona_engine_last_error(e), "notes.txt") != NULL, "%s", sona_engine_last_error(e));
    unlink(path_in(out, "notes.txt"));
    char *after = read_file(path_in(out, "adapter_model.safetensors"), &after_len);
    cr_expect(before_len == after_len && memcmp(before, after, before_len) == 0, "a refused export changed the adapter");
    free(before);
    free(after);
    cr_expect(!leftovers(dir, "adapter"), "a refused export left a directory beside the adapter");
    cr_expect_eq(sona_export_peft(e, path_in(out, "adapter_config.json"), &pc), SONA_E_INVALID,
                 "a path that is a file");

    unlink(path_in(out, "adapter_model.safetensors"));
    unlink(path_in(out, "adapter_config.json"));
    cr_expect_eq(rmdir(out), 0);
    cr_expect_eq(rmdir(dir), 0);
    sona_engine_destroy(e);
}
