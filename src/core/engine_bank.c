/* Pattern bank glue: until the ReasoningBank lands, no patterns; references are the baseline. */
#include "core/engine_internal.h"

void eng_bank_destroy(struct eng_bank *b) { (void)b; }

sona_status eng_bank_update(sona_engine *e, eng_traj *const *trajs, uint32_t n, float *reference)
{
    (void)trajs;
    const float b = eng_baseline(e);
    for (uint32_t i = 0; i < n; i++)
        reference[i] = b;
    return SONA_OK;
}

sona_status sona_find_patterns(sona_engine *e, const float *query, uint32_t k, sona_pattern_hit *hits,
                               uint32_t *found)
{
    if (!e || !query || !hits || !found)
        return eng_fail(e, SONA_E_NULL, "sona_find_patterns: NULL argument");
    (void)k;
    *found = 0;
    return SONA_OK;
}
