/*
 * train: one federated-learning training step, bit-reproducible everywhere.
 *
 * Softmax regression (multinomial logistic regression) on 8x8 digit images:
 * F = 64 features (pixel values 0..16), C = 10 classes, weights W[C][F] and
 * biases b[C], all Q16.16 fixed point (int32, value = raw / 65536).
 *
 * stdin (little-endian, see README.md):
 *   task:  "AGTT" u32 version=1 u32 F u32 C i32 lr(Q16.16) u32 steps
 *          u32 batch u64 seed  i32 weights[C*(F+1)]  shard
 *   shard: "AGTD" u32 version=1 u32 F u32 C u32 n  then n * (F bytes, 1 label)
 * stdout:
 *   "AGTU" u32 version=1 u32 F u32 C i32 weights[C*(F+1)]
 *   i32 loss(Q16.16, mean cross-entropy on the shard after training)
 *   u32 correct  u32 n
 *
 * weights are row-major: for class j, F weights then its bias.
 * Minibatch SGD: each of `steps` steps draws `batch` sample indices with
 * splitmix64(seed) modulo n (with replacement). Only integer arithmetic is
 * used (exp and log are integer approximations defined here), so the output
 * is the same on every CPU, natively or in the sandbox. Invalid input exits
 * with code 2 and a message on stderr.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define F_MAX 1024
#define C_MAX 64
#define N_MAX 100000
#define STEPS_MAX 100000
#define BATCH_MAX 4096
#define ONE 65536LL

static uint8_t *buf;
static size_t len, pos;

static void fail(const char *msg) {
    fprintf(stderr, "train: %s\n", msg);
    exit(2);
}

static uint32_t rd_u32(void) {
    if (len - pos < 4) fail("input truncated");
    uint32_t v = (uint32_t)buf[pos] | (uint32_t)buf[pos + 1] << 8 |
                 (uint32_t)buf[pos + 2] << 16 | (uint32_t)buf[pos + 3] << 24;
    pos += 4;
    return v;
}

static void wr_u32(uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    fwrite(b, 1, 4, stdout);
}

static void expect_magic(const char *m) {
    if (len - pos < 4 || memcmp(buf + pos, m, 4) != 0) fail("bad magic");
    pos += 4;
    if (rd_u32() != 1) fail("unsupported version");
}

/* Arithmetic shift right of a signed value (floor division by 2^s). */
static int64_t asr(int64_t v, int s) {
    return v >= 0 ? v >> s : -((-v - 1) >> s) - 1;
}

static int32_t sat32(int64_t v) {
    if (v > INT32_MAX) return INT32_MAX;
    if (v < INT32_MIN) return INT32_MIN;
    return (int32_t)v;
}

/* exp(x) for x <= 0 in Q16.16: 2^(x*log2 e), 2^frac by a cubic polynomial. */
static int64_t fx_exp(int64_t x) {
    if (x > 0) x = 0;
    if (x < -(24 * ONE)) return 0;
    int64_t y = asr(x * 94548, 16); /* log2(e) = 1.442695 */
    int64_t k = asr(y, 16);         /* <= 0 */
    int64_t f = y - k * ONE;        /* [0, ONE) */
    int64_t p = 630;                /* 2^f ~ 1 + .6931f + .2402f^2 + .0555f^3 + .0096f^4 */
    p = 3638 + asr(p * f, 16);
    p = 15743 + asr(p * f, 16);
    p = 45426 + asr(p * f, 16);
    p = ONE + asr(p * f, 16);
    return p >> (int)(-k);
}

/* -ln(p / 65536) in Q16.16 for p in [1, ONE]: log2 by repeated squaring. */
static int64_t fx_neg_ln(int64_t p) {
    if (p < 1) p = 1;
    if (p > ONE) p = ONE;
    int e = 0;
    int64_t m = p;
    while (m < ONE) { m <<= 1; e--; } /* m in [ONE, 2*ONE) */
    int64_t frac = 0;
    for (int i = 0; i < 16; i++) {
        m = (m * m) >> 16;
        frac <<= 1;
        if (m >= 2 * ONE) { m >>= 1; frac |= 1; }
    }
    int64_t log2 = (int64_t)e * ONE + frac; /* <= 0 */
    return -asr(log2 * 45426, 16);          /* ln 2 = 0.693147 */
}

static uint32_t F, C, n;
static int32_t *W;
static const uint8_t *X;

/* Softmax probabilities (Q16.16) of sample i; returns the argmax class. */
static uint32_t forward(uint32_t i, int64_t *prob) {
    const uint8_t *x = X + (size_t)i * (F + 1);
    int64_t zmax = 0;
    uint32_t arg = 0;
    for (uint32_t j = 0; j < C; j++) {
        const int32_t *w = W + (size_t)j * (F + 1);
        int64_t acc = 0;
        for (uint32_t k = 0; k < F; k++) acc += (int64_t)w[k] * ((int64_t)x[k] * 4096);
        int64_t z = asr(acc, 16) + w[F];
        prob[j] = z;
        if (j == 0 || z > zmax) { zmax = z; arg = j; }
    }
    int64_t sum = 0;
    for (uint32_t j = 0; j < C; j++) { prob[j] = fx_exp(prob[j] - zmax); sum += prob[j]; }
    for (uint32_t j = 0; j < C; j++) prob[j] = (prob[j] << 16) / sum;
    return arg;
}

static uint64_t rng;
static uint64_t splitmix64(void) {
    uint64_t z = (rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

int main(void) {
    size_t cap = 1 << 20;
    buf = malloc(cap);
    if (!buf) fail("out of memory");
    for (;;) {
        size_t got = fread(buf + len, 1, cap - len, stdin);
        len += got;
        if (got == 0) break;
        if (len == cap) {
            if (cap > (256u << 20)) fail("input too large");
            cap *= 2;
            buf = realloc(buf, cap);
            if (!buf) fail("out of memory");
        }
    }
    expect_magic("AGTT");
    F = rd_u32();
    C = rd_u32();
    if (F == 0 || F > F_MAX || C < 2 || C > C_MAX) fail("bad model shape");
    int64_t lr = (int32_t)rd_u32();
    uint32_t steps = rd_u32(), batch = rd_u32();
    uint64_t lo = rd_u32();
    rng = lo | (uint64_t)rd_u32() << 32;
    if (steps > STEPS_MAX || batch == 0 || batch > BATCH_MAX) fail("bad hyper-parameters");
    size_t nw = (size_t)C * (F + 1);
    W = malloc(nw * 4);
    int64_t *g = malloc(nw * 8);
    if (!W || !g) fail("out of memory");
    for (size_t i = 0; i < nw; i++) W[i] = (int32_t)rd_u32();
    expect_magic("AGTD");
    if (rd_u32() != F || rd_u32() != C) fail("shard shape differs from the model's");
    n = rd_u32();
    if (n == 0 || n > N_MAX) fail("bad sample count");
    if ((len - pos) != (size_t)n * (F + 1)) fail("shard size does not match its sample count");
    X = buf + pos;
    for (uint32_t i = 0; i < n; i++)
        if (X[(size_t)i * (F + 1) + F] >= C) fail("label out of range");

    int64_t prob[C_MAX];
    for (uint32_t s = 0; s < steps; s++) {
        memset(g, 0, nw * 8);
        for (uint32_t b = 0; b < batch; b++) {
            uint32_t i = (uint32_t)(splitmix64() % n);
            forward(i, prob);
            const uint8_t *x = X + (size_t)i * (F + 1);
            for (uint32_t j = 0; j < C; j++) {
                int64_t dz = prob[j] - (x[F] == j ? ONE : 0);
                int64_t *gj = g + (size_t)j * (F + 1);
                for (uint32_t k = 0; k < F; k++) gj[k] += dz * ((int64_t)x[k] * 4096);
                gj[F] += dz * ONE;
            }
        }
        for (size_t q = 0; q < nw; q++) {
            int64_t avg = asr(g[q] / (int64_t)batch, 16);
            W[q] = sat32((int64_t)W[q] - asr(avg * lr, 16));
        }
    }

    int64_t loss = 0;
    uint32_t correct = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t arg = forward(i, prob);
        uint8_t y = X[(size_t)i * (F + 1) + F];
        loss += fx_neg_ln(prob[y]);
        correct += arg == y;
    }
    fwrite("AGTU", 1, 4, stdout);
    wr_u32(1);
    wr_u32(F);
    wr_u32(C);
    for (size_t i = 0; i < nw; i++) wr_u32((uint32_t)W[i]);
    wr_u32((uint32_t)sat32(loss / (int64_t)n));
    wr_u32(correct);
    wr_u32(n);
    return 0;
}
