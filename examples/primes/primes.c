/*
 * primes: count the prime numbers <= N.
 *
 * Input (stdin, plain text): N, a decimal integer; empty input means
 * N = 1000000. Output (stdout): "primes(N) = COUNT\n".
 *
 * Sieve of Eratosthenes over odd numbers only, one bit per odd number, so
 * N = 1e9 needs about 62 MiB of memory. Pure integer arithmetic: the output
 * is the same on every machine, natively or in the sandbox.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_N 1000000ULL
#define MAX_N 2000000000ULL

static int read_input(char *buf, size_t cap) {
    size_t len = fread(buf, 1, cap - 1, stdin);
    buf[len] = '\0';
    return (int)len;
}

/* Parses an unsigned decimal number surrounded by optional whitespace.
 * Returns 0 on success, 1 if the input is blank, -1 on a syntax error. */
static int parse_u64(const char *s, uint64_t *out) {
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
    if (*s == '\0') return 1;
    uint64_t v = 0;
    int digits = 0;
    while (*s >= '0' && *s <= '9') {
        if (v > (UINT64_MAX - 9) / 10) return -1;
        v = v * 10 + (uint64_t)(*s - '0');
        s++;
        digits++;
    }
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
    if (digits == 0 || *s != '\0') return -1;
    *out = v;
    return 0;
}

static uint64_t count_primes(uint64_t n) {
    if (n < 2) return 0;
    if (n < 3) return 1;
    /* Bit i stands for the odd number 2*i + 1; bit 0 (the number 1) is
     * marked composite below. */
    uint64_t odds = (n - 1) / 2 + 1; /* odd numbers 1, 3, ..., <= n */
    size_t words = (size_t)((odds + 63) / 64);
    uint64_t *composite = calloc(words, sizeof(uint64_t));
    if (composite == NULL) {
        fprintf(stderr, "primes: out of memory for N = %llu\n", (unsigned long long)n);
        exit(3);
    }
    composite[0] |= 1; /* 1 is not prime */
    for (uint64_t i = 1; (2 * i + 1) * (2 * i + 1) <= n; i++) {
        if (composite[i / 64] >> (i % 64) & 1) continue;
        uint64_t p = 2 * i + 1;
        /* Start at p*p, step 2p (odd multiples only): index step p. */
        for (uint64_t j = (p * p - 1) / 2; j < odds; j += p) {
            composite[j / 64] |= 1ULL << (j % 64);
        }
    }
    uint64_t count = 1; /* the prime 2 */
    for (uint64_t i = 0; i < odds; i++) {
        if (!(composite[i / 64] >> (i % 64) & 1)) count++;
    }
    free(composite);
    return count;
}

int main(void) {
    char buf[256];
    read_input(buf, sizeof buf);
    uint64_t n = DEFAULT_N;
    int r = parse_u64(buf, &n);
    if (r < 0) {
        fprintf(stderr, "primes: expected a decimal N on stdin\n");
        return 2;
    }
    if (n > MAX_N) {
        fprintf(stderr, "primes: N must be at most %llu\n", (unsigned long long)MAX_N);
        return 2;
    }
    printf("primes(%llu) = %llu\n", (unsigned long long)n, (unsigned long long)count_primes(n));
    return 0;
}
