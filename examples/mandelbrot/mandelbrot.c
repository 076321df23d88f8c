/*
 * mandelbrot: render the Mandelbrot set as a binary greyscale PGM image.
 *
 * Input (stdin, plain text): "WIDTH HEIGHT MAX_ITER"; empty input means
 * "256 256 500". Output (stdout): a binary PGM, i.e. the header
 * "P5\nWIDTH HEIGHT\n255\n" followed by WIDTH*HEIGHT bytes, one per pixel,
 * row by row from the top.
 *
 * The picture covers re in [-2.25, 0.75], im in [-1.5, 1.5]. A pixel is 0
 * (black) inside the set and otherwise 1 + 254 * escape_iteration / MAX_ITER.
 * Only IEEE double additions, subtractions, multiplications and divisions
 * are used (no library calls, no NaNs, nothing contracted into FMAs when
 * compiled with -ffp-contract=off), so the bytes are identical natively and
 * in the sandbox.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_PIXELS 16000000ULL
#define MAX_ITER_LIMIT 1000000UL

static int parse_params(const char *s, unsigned long out[3]) {
    int n = 0;
    for (;;) {
        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
        if (*s == '\0') break;
        if (n == 3 || *s < '0' || *s > '9') return -1;
        unsigned long v = 0;
        while (*s >= '0' && *s <= '9') {
            if (v > 100000000UL) return -1;
            v = v * 10 + (unsigned long)(*s - '0');
            s++;
        }
        out[n++] = v;
    }
    return n == 0 || n == 3 ? 0 : -1;
}

int main(void) {
    char buf[256];
    size_t len = fread(buf, 1, sizeof buf - 1, stdin);
    buf[len] = '\0';
    unsigned long p[3] = {256, 256, 500};
    if (parse_params(buf, p) != 0) {
        fprintf(stderr, "mandelbrot: expected \"WIDTH HEIGHT MAX_ITER\" on stdin\n");
        return 2;
    }
    unsigned long width = p[0], height = p[1], max_iter = p[2];
    if (width == 0 || height == 0 || max_iter == 0 || max_iter > MAX_ITER_LIMIT ||
        (unsigned long long)width * height > MAX_PIXELS) {
        fprintf(stderr,
                "mandelbrot: need WIDTH, HEIGHT >= 1, WIDTH*HEIGHT <= %llu, "
                "1 <= MAX_ITER <= %lu\n",
                MAX_PIXELS, MAX_ITER_LIMIT);
        return 2;
    }
    unsigned char *row = malloc(width);
    if (row == NULL) {
        fprintf(stderr, "mandelbrot: out of memory\n");
        return 3;
    }
    printf("P5\n%lu %lu\n255\n", width, height);
    const double re_min = -2.25, re_span = 3.0, im_max = 1.5, im_span = 3.0;
    for (unsigned long y = 0; y < height; y++) {
        double ci = im_max - im_span * ((double)y + 0.5) / (double)height;
        for (unsigned long x = 0; x < width; x++) {
            double cr = re_min + re_span * ((double)x + 0.5) / (double)width;
            double zr = 0.0, zi = 0.0, zr2 = 0.0, zi2 = 0.0;
            unsigned long i = 0;
            while (i < max_iter && zr2 + zi2 <= 4.0) {
                zi = 2.0 * zr * zi + ci;
                zr = zr2 - zi2 + cr;
                zr2 = zr * zr;
                zi2 = zi * zi;
                i++;
            }
            row[x] = i == max_iter ? 0 : (unsigned char)(1 + (254ULL * i) / max_iter);
        }
        fwrite(row, 1, width, stdout);
    }
    free(row);
    return 0;
}
