/* SPDX-License-Identifier: MIT */
/* The configuration presets as tables: the default preset's values once, then what each other
 * preset changes, by field name (the names of sona_engine_config_set, so a wrong name is an
 * error a test sees, not a silent typo). */
#include "engine/presets.h"

#include <string.h>

static const sona_engine_config defaults = {
    .seed = 42,
    .micro_rank = 4,
    .micro_learning_rate = 0.25f,
    .micro_apply_every = 1,
    .max_tenants = 64,
    .base_rank = 8,
    .base_layers = 12,
    .base_learning_rate = 0.1f,
    .max_signal_weight = 3.0f,
    .max_output_change = 5.0f,
    .max_steps = 16,
    .buffer_capacity = 10000,
    .step_storage = SONA_STORAGE_Q8,
    .baseline_decay = 0.9f,
    .background_thread = 1,
    .loop_b_threshold = 250,
    .loop_b_interval_ms = 2000u,
    .loop_b_min_batch = 16,
    .clusters_per_cycle = 32,
    .max_patterns = 100000,
    .ewc_enabled = 1,
    .ewc_lambda = 0.01f,
    .fisher_decay = 0.99f,
    .max_tasks = 5,
    .task_shift_threshold = 1.2f,
    .dreams_per_cycle = 50,
    .dream_length = 15,
    .dream_temperature = 0.5f,
    .dream_jump_prob = 0.1f,
    .dream_novelty_bonus = 0.5f,
    .dream_replay_min_score = 0.5f,
    .device_apply = 1,
    .device_min_rows = 32,
    .merge_cosine = 0.98f,
    .importance_decay = 0.95f,
};

const eng_preset_override eng_preset_overrides[] = {
    {SONA_PRESET_MAX_THROUGHPUT, "micro_rank", 1},
    {SONA_PRESET_MAX_THROUGHPUT, "micro_apply_every", 16},
    {SONA_PRESET_MAX_THROUGHPUT, "max_tenants", 256},
    {SONA_PRESET_MAX_THROUGHPUT, "base_rank", 4},
    {SONA_PRESET_MAX_THROUGHPUT, "max_steps", 8},
    {SONA_PRESET_MAX_THROUGHPUT, "buffer_capacity", 20000},
    {SONA_PRESET_MAX_THROUGHPUT, "loop_b_threshold", 1000},
    {SONA_PRESET_MAX_THROUGHPUT, "loop_b_interval_ms", 5000},
    {SONA_PRESET_MAX_THROUGHPUT, "loop_b_min_batch", 64},
    {SONA_PRESET_MAX_THROUGHPUT, "max_tasks", 3},
    {SONA_PRESET_MAX_THROUGHPUT, "dreams_per_cycle", 10},

    {SONA_PRESET_MAX_QUALITY, "micro_learning_rate", 0.1},
    {SONA_PRESET_MAX_QUALITY, "base_rank", 16},
    {SONA_PRESET_MAX_QUALITY, "max_steps", 32},
    {SONA_PRESET_MAX_QUALITY, "loop_b_threshold", 50},
    {SONA_PRESET_MAX_QUALITY, "loop_b_interval_ms", 1000},
    {SONA_PRESET_MAX_QUALITY, "loop_b_min_batch", 8},
    {SONA_PRESET_MAX_QUALITY, "clusters_per_cycle", 64},
    {SONA_PRESET_MAX_QUALITY, "max_tasks", 10},
    {SONA_PRESET_MAX_QUALITY, "dreams_per_cycle", 100},

    {SONA_PRESET_EDGE, "micro_rank", 1},
    {SONA_PRESET_EDGE, "micro_apply_every", 4},
    {SONA_PRESET_EDGE, "max_tenants", 8},
    {SONA_PRESET_EDGE, "base_rank", 4},
    {SONA_PRESET_EDGE, "base_layers", 4},
    {SONA_PRESET_EDGE, "max_steps", 8},
    {SONA_PRESET_EDGE, "buffer_capacity", 1000},
    {SONA_PRESET_EDGE, "background_thread", 0},
    {SONA_PRESET_EDGE, "loop_b_threshold", 200},
    {SONA_PRESET_EDGE, "loop_b_interval_ms", 0},
    {SONA_PRESET_EDGE, "loop_b_min_batch", 8},
    {SONA_PRESET_EDGE, "clusters_per_cycle", 8},
    {SONA_PRESET_EDGE, "max_patterns", 5000},
    {SONA_PRESET_EDGE, "ewc_enabled", 0},
    {SONA_PRESET_EDGE, "max_tasks", 2},
    {SONA_PRESET_EDGE, "dreams_per_cycle", 5},
};
const size_t eng_preset_override_count = sizeof eng_preset_overrides / sizeof eng_preset_overrides[0];

void sona_engine_config_default(sona_engine_config *cfg, sona_preset preset, uint32_t hidden)
{
    if (!cfg)
        return;
    memcpy(cfg, &defaults, sizeof *cfg); /* padding included: configs are compared bytewise */
    cfg->hidden = hidden;
    for (size_t i = 0; i < eng_preset_override_count; i++)
        if (eng_preset_overrides[i].preset == preset)
            (void)sona_engine_config_set(cfg, eng_preset_overrides[i].field, eng_preset_overrides[i].value);
    /* Scale alpha / rank = 2 at every rank, so a rank change keeps the adapter's output scale. */
    cfg->micro_alpha = 2.0f * (float)cfg->micro_rank;
    cfg->base_alpha = 2.0f * (float)cfg->base_rank;
}
