/* sona_export_peft: the Base-LoRA as a PEFT LoRA adapter (adapter_model.safetensors and
 * adapter_config.json), the form vLLM, LoRAX and Hugging Face PEFT load. */
#include "core/engine_internal.h"

#include "core/safetensors.h"
#include "core/serial.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CALLER "sona_export_peft"

void sona_peft_config_default(sona_peft_config *cfg)
{
    if (!cfg)
        return;
    cfg->module_format = "base_model.model.model.layers.%u.self_attn.o_proj";
    cfg->base_model = "";
}

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

static void write_adapter_config(sona_wbuf *w, const sona_engine_config *c, const sona_peft_config *p,
                                 const char *leaf)
{
    char numbers[128];
    sona_wbuf_text(w, "{\n  \"peft_type\": \"LORA\",\n  \"task_type\": \"CAUSAL_LM\",\n");
    if (p->base_model[0]) {
        sona_wbuf_text(w, "  \"base_model_name_or_path\": ");
        sona_wbuf_json_string(w, p->base_model);
        sona_wbuf_text(w, ",\n");
    }
    snprintf(numbers, sizeof numbers, "  \"r\": %u,\n  \"lora_alpha\": %.9g,\n", c->base_rank, (double)c->base_alpha);
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

sona_status sona_export_peft(sona_engine *e, const char *dir, const sona_peft_config *cfg)
{
    if (!e || !dir)
        return eng_fail(e, SONA_E_NULL, CALLER ": NULL argument");
    sona_peft_config defaults;
    sona_peft_config_default(&defaults);
    const sona_peft_config *p = cfg ? cfg : &defaults;
    if (!p->module_format || !p->base_model)
        return eng_fail(e, SONA_E_NULL, CALLER ": NULL module_format or base_model");
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
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return eng_fail(e, SONA_E_IO, CALLER ": cannot create %s: %s", dir, strerror(errno));

    const sona_engine_config *c = &e->cfg;
    const uint32_t layers = c->base_layers;
    const size_t per = (size_t)c->base_rank * c->hidden;
    float *weights = malloc(2 * layers * per * sizeof *weights); /* per layer l: A_l, then B_l */
    sona_tensor_f32 *t = calloc(2 * (size_t)layers, sizeof *t);
    char *model_path = join_path(dir, "adapter_model.safetensors");
    char *config_path = join_path(dir, "adapter_config.json");
    sona_wbuf model = {0}, config = {0};
    sona_status st = weights && t && model_path && config_path ? SONA_OK : SONA_E_NOMEM;
    for (uint32_t l = 0; l < layers && st == SONA_OK; l++) {
        t[2 * l] = (sona_tensor_f32){module_name(p->module_format, l, ".lora_A.weight"), c->base_rank,
                                     c->hidden, weights + 2 * l * per};
        t[2 * l + 1] = (sona_tensor_f32){module_name(p->module_format, l, ".lora_B.weight"), c->hidden,
                                         c->base_rank, weights + (2 * l + 1) * per};
        if (!t[2 * l].name || !t[2 * l + 1].name)
            st = SONA_E_NOMEM;
    }
    if (st != SONA_OK) {
        st = eng_fail(e, st, CALLER ": out of memory");
        goto out;
    }
    /* Copied under the cycle lock: one snapshot, between loop B's whole steps. */
    pthread_mutex_lock(&e->cycle_mu);
    for (uint32_t l = 0; l < layers && st == SONA_OK; l++)
        st = sona_lora_get_weights(e->base, (int32_t)l, weights + 2 * l * per, weights + (2 * l + 1) * per);
    if (st != SONA_OK)
        st = eng_fail(e, st, CALLER ": reading the Base-LoRA: %s", sona_lora_last_error(e->base));
    pthread_mutex_unlock(&e->cycle_mu);
    if (st != SONA_OK)
        goto out;
    sona_safetensors_encode(&model, t, 2 * layers, "pt");
    write_adapter_config(&config, c, p, leaf);
    if (model.oom || config.oom) {
        st = eng_fail(e, SONA_E_NOMEM, CALLER ": out of memory");
        goto out;
    }
    st = eng_write_file_atomic(e, CALLER, model_path, model.p, model.len, 0644);
    if (st == SONA_OK)
        st = eng_write_file_atomic(e, CALLER, config_path, config.p, config.len, 0644);
out:
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
