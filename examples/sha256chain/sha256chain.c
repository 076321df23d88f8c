/*
 * sha256chain: apply SHA-256 repeatedly, a small proof-of-work style load.
 *
 * Input (stdin, plain text): the first line is ROUNDS (decimal, >= 1), the
 * second line is the SEED (raw bytes up to the end of the line; a trailing
 * "\r" is dropped). Empty input means ROUNDS = 100000 and SEED = "agora"; a
 * missing second line means SEED = "agora".
 *
 * digest_1 = SHA-256(SEED), digest_k = SHA-256(digest_{k-1}) (the 32 raw
 * bytes). Output (stdout): digest_ROUNDS in lowercase hex and "\n". So
 * "1\nabc" prints the well-known SHA-256 of "abc":
 * ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
 *
 * The SHA-256 implementation (FIPS 180-4) is self-contained below.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define DEFAULT_ROUNDS 100000ULL
#define DEFAULT_SEED "agora"
#define MAX_INPUT 65536

typedef struct {
    uint32_t h[8];
    uint8_t block[64];
    size_t used;     /* bytes in block */
    uint64_t length; /* total bytes hashed */
} sha256_ctx;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_compress(uint32_t h[8], const uint8_t block[64]) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) {
        w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 |
               (uint32_t)block[4 * i + 2] << 8 | (uint32_t)block[4 * i + 3];
    }
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d;
    h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

static void sha256_init(sha256_ctx *ctx) {
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(ctx->h, iv, sizeof iv);
    ctx->used = 0;
    ctx->length = 0;
}

static void sha256_update(sha256_ctx *ctx, const uint8_t *data, size_t len) {
    ctx->length += len;
    while (len > 0) {
        size_t take = 64 - ctx->used < len ? 64 - ctx->used : len;
        memcpy(ctx->block + ctx->used, data, take);
        ctx->used += take;
        data += take;
        len -= take;
        if (ctx->used == 64) {
            sha256_compress(ctx->h, ctx->block);
            ctx->used = 0;
        }
    }
}

static void sha256_final(sha256_ctx *ctx, uint8_t out[32]) {
    uint64_t bits = ctx->length * 8;
    uint8_t pad = 0x80;
    sha256_update(ctx, &pad, 1);
    pad = 0;
    while (ctx->used != 56) sha256_update(ctx, &pad, 1);
    uint8_t len_be[8];
    for (int i = 0; i < 8; i++) len_be[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(ctx, len_be, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(ctx->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(ctx->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(ctx->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)ctx->h[i];
    }
}

static void sha256(const uint8_t *data, size_t len, uint8_t out[32]) {
    sha256_ctx ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, data, len);
    sha256_final(&ctx, out);
}

static char input[MAX_INPUT + 1];

int main(void) {
    size_t len = fread(input, 1, MAX_INPUT, stdin);
    input[len] = '\0';

    /* First line: rounds. */
    char *nl = memchr(input, '\n', len);
    size_t line1 = nl ? (size_t)(nl - input) : len;
    unsigned long long rounds = DEFAULT_ROUNDS;
    size_t i = 0;
    while (i < line1 && (input[i] == ' ' || input[i] == '\t' || input[i] == '\r')) i++;
    if (i < line1) {
        rounds = 0;
        while (i < line1 && input[i] >= '0' && input[i] <= '9') {
            if (rounds > 1000000000000ULL) break;
            rounds = rounds * 10 + (unsigned long long)(input[i] - '0');
            i++;
        }
        while (i < line1 && (input[i] == ' ' || input[i] == '\t' || input[i] == '\r')) i++;
        if (i != line1 || rounds == 0) {
            fprintf(stderr, "sha256chain: first line must be ROUNDS >= 1\n");
            return 2;
        }
    }

    /* Second line: seed (raw bytes). */
    const uint8_t *seed = (const uint8_t *)DEFAULT_SEED;
    size_t seed_len = strlen(DEFAULT_SEED);
    if (nl != NULL) {
        char *start = nl + 1;
        char *end = memchr(start, '\n', len - (size_t)(start - input));
        if (end == NULL) end = input + len;
        if (end > start && end[-1] == '\r') end--;
        if (end > start || (nl + 1 < input + len)) {
            seed = (const uint8_t *)start;
            seed_len = (size_t)(end - start);
        }
    }

    uint8_t digest[32];
    sha256(seed, seed_len, digest);
    for (unsigned long long r = 1; r < rounds; r++) sha256(digest, 32, digest);

    static const char hex[] = "0123456789abcdef";
    char out[65];
    for (int k = 0; k < 32; k++) {
        out[2 * k] = hex[digest[k] >> 4];
        out[2 * k + 1] = hex[digest[k] & 15];
    }
    out[64] = '\0';
    printf("%s\n", out);
    return 0;
}
