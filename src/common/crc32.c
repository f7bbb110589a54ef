/* SPDX-License-Identifier: MIT */
/* The state file's checksum (common/serial.h): CRC-32 as zlib computes it, by zlib where the
 * build has it. */
#include "common/serial.h"

#include <pthread.h>
#include <stdint.h>
#if SONA_HAVE_ZLIB
#include <zlib.h>
#endif

#if SONA_HAVE_ZLIB
/* zlib's crc32 is the same CRC-32 (ISO-HDLC: reflected 0xEDB88320, initial value and final xor
 * ~0), so files written by the byte-wise loop below verify unchanged; zlib's is table-sliced and
 * several times faster on large sections. crc32_z takes a size_t length (zlib >= 1.2.9). */
uint32_t sona_crc32(uint32_t crc, const void *data, size_t n)
{
    return (uint32_t)crc32_z(crc, data, n);
}
#else
/* Builds without zlib (SONA_ZLIB=OFF: the aarch64 cross check, which has no target zlib): the
 * same CRC a byte at a time. */
static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t sona_crc32(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}
#endif
