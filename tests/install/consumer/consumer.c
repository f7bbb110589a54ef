/* SPDX-License-Identifier: MIT */
/* A program that uses only the installed public API. */
#include <sona.h>
#include <stdio.h>

int main(void)
{
    sona_lora_config cfg;
    sona_lora_config_default(&cfg, SONA_LORA_MICRO, 64);
    sona_lora *lora = NULL;
    if (sona_lora_create(&cfg, &lora) != SONA_OK) {
        fprintf(stderr, "create failed: %s\n", sona_last_error());
        return 1;
    }
    float x[64], y[64];
    for (int i = 0; i < 64; i++)
        x[i] = (float)i / 64.0f;
    sona_status st = sona_lora_forward(lora, 0, x, y);
    sona_lora_destroy(lora);
    if (st != SONA_OK || y[10] != x[10]) /* a new adapter is the identity */
        return 1;
    printf("libsona %s (header %s)\n", sona_version(), SONA_VERSION_STRING);
    return 0;
}
