/* SPDX-License-Identifier: MIT */
/* sona_export_peft: the Base-LoRA (or a tenant's Micro-LoRA) as a PEFT LoRA adapter
 * (adapter_model.safetensors and adapter_config.json), the form vLLM, LoRAX and Hugging Face
 * PEFT load, published as a whole directory. */
#define _GNU_SOURCE /* renameat2 */
#include "engine/base.h"

#include "common/safetensors.h"
#include "common/serial.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CALLER "sona_export_peft"

void sona_peft_config_default(sona_peft_config *cfg)
{
    if (!cfg)
        return;
    cfg->module_format = "base_model.model.model.layers.%u.self_attn.o_proj";
    cfg->base_model = "";
    cfg->tenant = -1;
    cfg->micro_layer = 0;
    cfg->model_hidden = 0;
}

static const char *const EXPORT_FILES[2] = {"adapter_model.safetensors", "adapter_config.json"};

/* A format has exactly one '%', the "%u" of the layer, and a last dot-separated part without
 * it (PEFT's target_modules names a module by that part). Returns that part, or NULL. */
static const char *module_leaf(const char *format)
{
    const char *pct = strchr(format, '%');
    if (!pct || pct[1] != 'u' || strchr(pct + 1, '%'))
        return NULL;
    const char *dot = strrchr(format, '.');
    const char *leaf = dot ? dot + 1 : format;
    return leaf > pct + 1 && *leaf ? leaf : NULL;
}

/* format with its "%u" replaced by layer, in a malloc'd string (NULL when out of memory). */
static char *module_name(const char *format, uint32_t layer, const char *suffix)
{
    const char *pct = strchr(format, '%');
    const size_t len = strlen(format) + 10 + strlen(suffix) + 1;
    char *name = malloc(len);
    if (name)
        snprintf(name, len, "%.*s%u%s%s", (int)(pct - format), format, layer, pct + 2, suffix);
    return name;
}

static void write_adapter_config(sona_wbuf *w, uint32_t rank, float alpha, const sona_peft_config *p,
                                 const char *leaf)
{
    char numbers[128];
    sona_wbuf_text(w, "{\n  \"peft_type\": \"LORA\",\n  \"task_type\": \"CAUSAL_LM\",\n");
    if (p->base_model[0]) {
        sona_wbuf_text(w, "  \"base_model_name_or_path\": ");
        sona_wbuf_json_string(w, p->base_model);
        sona_wbuf_text(w, ",\n");
    }
    snprintf(numbers, sizeof numbers, "  \"r\": %u,\n  \"lora_alpha\": %.9g,\n", rank, (double)alpha);
    sona_wbuf_text(w, numbers);
    sona_wbuf_text(w, "  \"lora_dropout\": 0.0,\n  \"bias\": \"none\",\n  \"fan_in_fan_out\": false,\n"
                "  \"use_rslora\": false,\n  \"inference_mode\": true,\n  \"target_modules\": [");
    sona_wbuf_json_string(w, leaf);
    sona_wbuf_text(w, "]\n}\n");
}

static char *join_path(const char *dir, const char *file)
{
    const size_t len = strlen(dir) + 1 + strlen(file) + 1;
    char *path = malloc(len);
    if (path)
        snprintf(path, len, "%s/%s", dir, file);
    return path;
}

/* *absent = 1 when dir does not exist, 0 when it is a directory holding nothing but the
 * export's files (it may be replaced); a refusal (message set) otherwise. */
static sona_status replaceable(sona_engine *e, const char *dir, int *absent)
{
    struct stat sb;
    *absent = 0;
    if (stat(dir, &sb) != 0) {
        if (errno != ENOENT)
            return eng_fail(e, SONA_E_IO, CALLER ": cannot look at %s: %s", dir, strerror(errno));
        *absent = 1;
        return SONA_OK;
    }
    if (!S_ISDIR(sb.st_mode))
        return eng_fail(e, SONA_E_INVALID, CALLER ": %s exists and is not a directory", dir);
    DIR *d = opendir(dir);
    if (!d)
        return eng_fail(e, SONA_E_IO, CALLER ": cannot read %s: %s", dir, strerror(errno));
    sona_status st = SONA_OK;
    const struct dirent *ent;
    while (st == SONA_OK && (ent = readdir(d))) {
        const char *n = ent->d_name;
        if (strcmp(n, ".") && strcmp(n, "..") && strcmp(n, EXPORT_FILES[0]) && strcmp(n, EXPORT_FILES[1]))
            st = eng_fail(e, SONA_E_INVALID, CALLER ": %s holds %s, not only an adapter: not replaced", dir, n);
    }
    closedir(d);
    return st;
}

/* Removes the export's files from dir and dir itself (best effort: cleaning up). */
static void remove_export_dir(const char *dir)
{
    for (int i = 0; i < 2; i++) {
        char *f = join_path(dir, EXPORT_FILES[i]);
        if (f)
            unlink(f);
        free(f);
    }
    rmdir(dir);
}

/* Moves the filled directory tmp to dir: a rename when dir is absent, else an atomic exchange
 * (Linux) and the old contents removed, or where exchange is not supported the old directory
 * moved aside first (a moment without dir, never a mixed pair). */
static sona_status publish_dir(sona_engine *e, const char *tmp, const char *dir, int absent)
{
    if (absent) {
        if (rename(tmp, dir) != 0)
            return eng_fail(e, SONA_E_IO, CALLER ": cannot rename %s to %s: %s", tmp, dir, strerror(errno));
        eng_sync_parent_dir(dir);
        return SONA_OK;
    }
#ifdef RENAME_EXCHANGE
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dir, RENAME_EXCHANGE) == 0) {
        eng_sync_parent_dir(dir);
        remove_export_dir(tmp); /* now the old adapter */
        return SONA_OK;
    }
    if (errno != EINVAL && errno != ENOSYS)
        return eng_fail(e, SONA_E_IO, CALLER ": cannot exchange %s and %s: %s", tmp, dir, strerror(errno));
#endif
    char *old = eng_temp_name(dir); /* short, whatever dir's length; removed if we are killed */
    if (!old)
        return eng_fail(e, SONA_E_NOMEM, CALLER ": out of memory");
    sona_status st = SONA_OK;
    if (!mkdtemp(old) || rmdir(old) != 0) /* a fresh name, then free for the rename */
        st = eng_fail(e, SONA_E_IO, CALLER ": cannot make a name beside %s: %s", dir, strerror(errno));
    else if (rename(dir, old) != 0)
        st = eng_fail(e, SONA_E_IO, CALLER ": cannot move %s aside: %s", dir, strerror(errno));
    else if (rename(tmp, dir) != 0) {
        st = eng_fail(e, SONA_E_IO, CALLER ": cannot rename %s to %s: %s", tmp, dir, strerror(errno));
        rename(old, dir); /* put the old one back */
    } else {
        eng_sync_parent_dir(dir);
        remove_export_dir(old);
    }
    free(old);
    return st;
}

sona_status sona_export_peft(sona_engine *e, const char *dir, const sona_peft_config *cfg)
{
    if (!e || !dir)
        return eng_fail(e, SONA_E_NULL, CALLER ": NULL argument");
    sona_peft_config defaults;
    sona_peft_config_default(&defaults);
    const sona_peft_config *p = cfg ? cfg : &defaults;
    if (!p->module_format || !p->base_model)
        return eng_fail(e, SONA_E_NULL, CALLER ": NULL module_format or base_model");
    /* adapter_config.json and the safetensors header are JSON, which is UTF-8. */
    if (!sona_utf8_valid(p->module_format) || !sona_utf8_valid(p->base_model))
        return eng_fail(e, SONA_E_INVALID, CALLER ": %s is not valid UTF-8",
                        sona_utf8_valid(p->module_format) ? "base_model" : "module_format");
    const char *leaf = module_leaf(p->module_format);
    if (!leaf)
        return eng_fail(e, SONA_E_INVALID,
                        CALLER ": module_format \"%s\" needs exactly one %%u (the layer) and no other %%, "
                        "with a last dot-separated part that does not contain it",
                        p->module_format);
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    return eng_fail(e, SONA_E_UNSUPPORTED, CALLER ": safetensors is little-endian and this host is not");
#endif
    if (!dir[0])
        return eng_fail(e, SONA_E_INVALID, CALLER ": empty directory name");
    const sona_engine_config *c = &e->cfg;
    if (p->model_hidden && p->model_hidden != c->hidden)
        return eng_fail(e, SONA_E_SIZE,
                        CALLER ": the adapters map %u-wide hidden states, the model's target modules %u: "
                        "another model, or the wrong --module",
                        c->hidden, p->model_hidden);
    const int micro = p->tenant >= 0;
    if (p->tenant < -1)
        return eng_fail(e, SONA_E_INVALID, CALLER ": tenant %d is neither -1 (Base-LoRA) nor a tenant id", p->tenant);
    if (micro && ((uint32_t)p->tenant >= c->max_tenants || !atomic_load(&e->tenants[p->tenant].live)))
        return eng_fail(e, SONA_E_NOT_FOUND, CALLER ": no tenant %d", p->tenant);
    eng_loop_a_drain(e); /* the adapter as every request ended before the export left it */
    int absent;
    const sona_status gate = replaceable(e, dir, &absent);
    if (gate != SONA_OK)
        return gate;

    const uint32_t layers = micro ? 1 : c->base_layers, rank = micro ? c->micro_rank : c->base_rank;
    const float alpha = micro ? c->micro_alpha : c->base_alpha;
    const size_t per = (size_t)rank * c->hidden;
    float *weights = malloc(2 * layers * per * sizeof *weights); /* per module m: A_m, then B_m */
    sona_tensor_f32 *t = calloc(2 * (size_t)layers, sizeof *t);
    struct timespec start;
    clock_gettime(CLOCK_REALTIME, &start);
    char *tmp = eng_temp_name(dir), *model_path = NULL, *config_path = NULL;
    sona_wbuf model = {0}, config = {0};
    int made_tmp = 0;
    sona_status st = weights && t && tmp ? SONA_OK : SONA_E_NOMEM;
    for (uint32_t l = 0; l < layers && st == SONA_OK; l++) {
        const uint32_t module = micro ? p->micro_layer : l;
        t[2 * l] = (sona_tensor_f32){module_name(p->module_format, module, ".lora_A.weight"), rank, c->hidden,
                                     weights + 2 * l * per};
        t[2 * l + 1] = (sona_tensor_f32){module_name(p->module_format, module, ".lora_B.weight"), c->hidden, rank,
                                         weights + (2 * l + 1) * per};
        if (!t[2 * l].name || !t[2 * l + 1].name)
            st = SONA_E_NOMEM;
    }
    if (st != SONA_OK) {
        st = eng_fail(e, st, CALLER ": out of memory");
        goto out;
    }
    if (micro) { /* the training copy's weights are the published ones */
        eng_tenant *tn = &e->tenants[p->tenant];
        pthread_mutex_lock(&tn->mu);
        st = atomic_load(&tn->live) ? sona_lora_get_weights(tn->lora, 0, weights, weights + per) : SONA_E_NOT_FOUND;
        pthread_mutex_unlock(&tn->mu);
        if (st != SONA_OK)
            st = eng_fail(e, st, CALLER ": tenant %d was removed meanwhile, or its adapter unreadable", p->tenant);
    } else { /* under the cycle lock: one snapshot, between loop B's whole steps */
        pthread_mutex_lock(&e->cycle_mu);
        for (uint32_t l = 0; l < layers && st == SONA_OK; l++)
            st = sona_lora_get_weights(e->base, (int32_t)l, weights + 2 * l * per, weights + (2 * l + 1) * per);
        if (st != SONA_OK)
            st = eng_fail(e, st, CALLER ": reading the Base-LoRA: %s", sona_lora_last_error(e->base));
        pthread_mutex_unlock(&e->cycle_mu);
    }
    if (st != SONA_OK)
        goto out;
    sona_safetensors_encode(&model, t, 2 * layers, "pt");
    write_adapter_config(&config, rank, alpha, p, leaf);
    if (model.oom || config.oom) {
        st = eng_fail(e, SONA_E_NOMEM, CALLER ": out of memory");
        goto out;
    }
    /* The new adapter in a directory of its own beside dir, then moved into place whole. */
    if (!mkdtemp(tmp) || chmod(tmp, 0755) != 0) {
        st = eng_fail(e, SONA_E_IO, CALLER ": cannot create a directory beside %s: %s", dir, strerror(errno));
        goto out;
    }
    made_tmp = 1;
    model_path = join_path(tmp, EXPORT_FILES[0]);
    config_path = join_path(tmp, EXPORT_FILES[1]);
    st = model_path && config_path ? SONA_OK : eng_fail(e, SONA_E_NOMEM, CALLER ": out of memory");
    if (st == SONA_OK)
        st = eng_write_file_atomic(e, CALLER, model_path, model.p, model.len, 0644);
    if (st == SONA_OK)
        st = eng_write_file_atomic(e, CALLER, config_path, config.p, config.len, 0644);
    if (st == SONA_OK && (st = publish_dir(e, tmp, dir, absent)) == SONA_OK)
        made_tmp = 0;
out:
    if (made_tmp)
        remove_export_dir(tmp);
    if (tmp)
        eng_remove_stale_temps(dir, &start); /* of exports to dir that were killed */
    free(tmp);
    for (uint32_t l = 0; t && l < 2 * layers; l++)
        free((char *)t[l].name);
    free(t);
    free(weights);
    free(model_path);
    free(config_path);
    free(model.p);
    free(config.p);
    return st;
}
