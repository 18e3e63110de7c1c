/* Compiled re-quantization of one cell to a JPEG source's lattice (core/requant.py, _tile).
 *
 * Plain C, no Python headers: built on first use like _synthesis.c and called through ctypes.
 * It computes what the numpy path computes, in float32 with the same formulas (a pixel may
 * differ from numpy's by a rounding step where a sum's order differs): the source's colour
 * transform; chroma box means; per 8x8 block the DCT of the samples less 128 (the matrix d
 * handed in: C = d B d^T), each coefficient replaced by its expected lattice value under a
 * Gaussian of the spread (lattice values within +-2 steps of the nearest), the inverse DCT plus
 * 128, rounded half to even and clipped; libjpeg's fancy upsampling (vertical, then horizontal,
 * then rounded); the inverse colour transform, rounded and clipped.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_kernels.h"

static float clip255(float v) { return v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v); }

/* GCC/Clang vectors of 8 floats: the loop below in them (the compiler's own vectorization gave
 * up on it), as core/_synthesis.c does. */
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

/* Per lane: rintf(x) for |x| < 2^22 (to nearest, ties to even, in the default rounding mode):
 * x + 1.5 * 2^23 has no fraction bits left (IEEE arithmetic: not folded without -ffast-math). */
AI static v8 round_even(v8 x) { return (x + 12582912.0f) - 12582912.0f; }

/* Per lane: a where m (all bits set), else b. */
AI static v8 select8(v8i m, v8 a, v8 b) { return (v8)(((v8i)a & m) | ((v8i)b & ~m)); }

/* Per lane: e^x for x in [-40, 0.01] (larger x are not asked for), as 2^i 2^f with a polynomial
 * for 2^f on [0, 1) (relative error about 2e-7, a few float32 steps). */
AI static v8 exp_small(v8 x) {
    const v8 t = x * 1.44269504f;
    const v8 r = round_even(t);
    const v8 i = select8(r > t, r - 1.0f, r), f = t - i; /* i = floor(t) */
    v8 p = f * 1.535336188e-4f + 1.339887440e-3f;
    p = p * f + 9.618437357e-3f;
    p = p * f + 5.550332471e-2f;
    p = p * f + 2.402264791e-1f;
    p = p * f + 6.931472028e-1f;
    p = p * f + 1.0f;
    const v8i bits = (__builtin_convertvector(i, v8i) + 127) << 23;
    return p * (v8)bits;
}

/* The 64 coefficients c of a block (steps q, q2 = q^2; s2 = 2 spread^2; far = exp(-2 q^2 / s2))
 * replaced by their expected lattice values: n = round(c / q), r = c - n q, and over k in -2..2
 * the weights of n + k relative to n's, w_1 = exp((2 r q - q^2) / s2), w_-1 likewise with -r, and
 * w_+-2 = w_+-1^2 far. A weight below e^-40 is taken as 0 (the float32 sum 1 + w cannot hold it).
 * Eight lanes at a time. */
AI static void expected(float *c, const float *q, const float *q2, const float *far, const float *s2) {
    const v8 zero = {0};
    for (int k = 0; k < 64; k += 8) {
        v8 cv, qv, q2v, fv, s2v;
        memcpy(&s2v, s2 + k, sizeof(s2v));
        memcpy(&cv, c + k, sizeof(cv));
        memcpy(&qv, q + k, sizeof(qv));
        memcpy(&q2v, q2 + k, sizeof(q2v));
        memcpy(&fv, far + k, sizeof(fv));
        const v8 n = round_even(cv / qv);
        const v8 r = cv - n * qv;
        const v8 a = (2.0f * r * qv - q2v) / s2v, b = (-2.0f * r * qv - q2v) / s2v;
        const v8i ua = a > -40.0f, ub = b > -40.0f;
        const v8 up = select8(ua, exp_small(select8(ua, a, zero - 40.0f)), zero);
        const v8 down = select8(ub, exp_small(select8(ub, b, zero - 40.0f)), zero);
        const v8 up2 = up * up * fv, down2 = down * down * fv;
        const v8 shift = (up - down + 2.0f * (up2 - down2)) / (1.0f + up + down + up2 + down2);
        const v8 out = (n + shift) * qv;
        memcpy(c + k, &out, sizeof(out));
    }
}

/* out = a b for 8 x 8 matrices (row-major): each output row the sum, in k order, of b's rows
 * times a's entries, a vector of 8 at a time. */
AI static void mul8(const float *a, const float *b, float *out) {
    v8 rows[8];
    memcpy(rows, b, sizeof(rows));
    for (int i = 0; i < 8; i++) {
        v8 acc = a[i * 8] * rows[0];
        for (int k = 1; k < 8; k++) acc += a[i * 8 + k] * rows[k];
        memcpy(out + i * 8, &acc, sizeof(acc));
    }
}

/* One component plane (h x w, multiples of 8, row-major) carried to its lattice in place, as a
 * decoder's samples (rounded, clipped); d and dt: the DCT matrix and its transpose; spread: the
 * coefficients' spreads. */
AI static void component(float *p, int64_t h, int64_t w, const float *d, const float *dt, const float *table,
                         const float *spread) {
    float far[64], q2[64], s2[64];
    for (int k = 0; k < 64; k++) {
        q2[k] = table[k] * table[k];
        s2[k] = 2.0f * spread[k] * spread[k];
        far[k] = expf(-2.0f * q2[k] / s2[k]);
    }
    float b[64], t[64], c[64];
    for (int64_t by = 0; by < h; by += 8) {
        for (int64_t bx = 0; bx < w; bx += 8) {
            for (int i = 0; i < 8; i++)
                for (int j = 0; j < 8; j++) b[i * 8 + j] = p[(by + i) * w + bx + j] - 128.0f;
            mul8(d, b, t);  /* d b */
            mul8(t, dt, c); /* (d b) d^T */
            expected(c, table, q2, far, s2);
            mul8(dt, c, t); /* d^T c */
            mul8(t, d, b);  /* (d^T c) d */
            for (int i = 0; i < 8; i++)
                for (int j = 0; j < 8; j++) p[(by + i) * w + bx + j] = clip255(rintf(b[i * 8 + j] + 128.0f));
        }
    }
}

/* libjpeg's fancy upsampling of plane s (h x w) by fy vertically and fx horizontally (each 1 or
 * 2) into o (h fy x w fx), rounded; tmp holds h fy x w floats. */
AI static void upsample(const float *s, int64_t h, int64_t w, int fx, int fy, float *tmp, float *o) {
    const int64_t H = h * fy, W = w * fx;
    for (int64_t y = 0; y < H; y++) {
        const float *row = s + (fy == 2 ? y / 2 : y) * w;
        if (fy == 2) {
            const int64_t i = y / 2, far = (y & 1) ? (i + 1 < h ? i + 1 : i) : (i > 0 ? i - 1 : 0);
            for (int64_t x = 0; x < w; x++) tmp[y * w + x] = 3.0f * row[x] + s[far * w + x];
        } else {
            for (int64_t x = 0; x < w; x++) tmp[y * w + x] = row[x];
        }
    }
    const float vs = fy == 2 ? 4.0f : 1.0f;
    for (int64_t y = 0; y < H; y++) {
        const float *row = tmp + y * w;
        for (int64_t x = 0; x < W; x++) {
            float v;
            if (fx == 2) {
                const int64_t j = x / 2, far = (x & 1) ? (j + 1 < w ? j + 1 : j) : (j > 0 ? j - 1 : 0);
                /* numpy divides each axis' sums by 4 in turn */
                v = (3.0f * (row[j] / vs) + row[far] / vs) / 4.0f;
            } else {
                v = row[x] / vs;
            }
            o[y * W + x] = rintf(v);
        }
    }
}

/* Cell src (h x w x 3 uint8, row stride sstride bytes; h, w multiples of the MCU) re-quantized
 * into dst (row stride dstride bytes). ycbcr: 1 for the JFIF transform, 0 for none; sampling:
 * (h, v) of each component, each 1 or 2; tables and spreads: 3 x 64 steps and spreads, row-major;
 * d: the 8x8 DCT matrix.
 * Returns 0, 2 for arguments out of range, 3 when out of memory. */
CLONES int cinr_requant(const uint8_t *src, int64_t h, int64_t w, int64_t sstride, uint8_t *dst, int64_t dstride,
                 int64_t ycbcr, const int64_t *sampling, const float *tables, const float *d, const float *spreads) {
    int hmax = 1, vmax = 1;
    for (int c = 0; c < 3; c++) {
        if (sampling[2 * c] < 1 || sampling[2 * c] > 2 || sampling[2 * c + 1] < 1 || sampling[2 * c + 1] > 2)
            return 2;
        if (sampling[2 * c] > hmax) hmax = (int)sampling[2 * c];
        if (sampling[2 * c + 1] > vmax) vmax = (int)sampling[2 * c + 1];
    }
    if (h <= 0 || w <= 0 || h % (8 * vmax) || w % (8 * hmax)) return 2;
    for (int k = 0; k < 192; k++)
        if (!(spreads[k] > 0.0f)) return 2;
    float dt[64];
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) dt[i * 8 + j] = d[j * 8 + i];
    const int64_t n = h * w;
    float *buf = malloc(sizeof(float) * (size_t)n * 6);
    if (!buf) return 3;
    float *plane[3] = {buf, buf + n, buf + 2 * n};
    float *sub = buf + 3 * n, *tmp = buf + 4 * n, *up = buf + 5 * n;
    for (int64_t y = 0; y < h; y++) {
        const uint8_t *row = src + y * sstride;
        for (int64_t x = 0; x < w; x++) {
            const float r = row[3 * x], g = row[3 * x + 1], b = row[3 * x + 2];
            if (ycbcr) {
                plane[0][y * w + x] = 0.299f * r + 0.587f * g + 0.114f * b;
                plane[1][y * w + x] = -0.168736f * r - 0.331264f * g + 0.5f * b + 128.0f;
                plane[2][y * w + x] = 0.5f * r - 0.418688f * g - 0.081312f * b + 128.0f;
            } else {
                plane[0][y * w + x] = r;
                plane[1][y * w + x] = g;
                plane[2][y * w + x] = b;
            }
        }
    }
    for (int c = 0; c < 3; c++) {
        const int fx = hmax / (int)sampling[2 * c], fy = vmax / (int)sampling[2 * c + 1];
        float *p = plane[c];
        if (fx == 1 && fy == 1) {
            component(p, h, w, d, dt, tables + 64 * c, spreads + 64 * c);
            continue;
        }
        const int64_t sh = h / fy, sw = w / fx;
        const float area = (float)(fx * fy);
        for (int64_t y = 0; y < sh; y++)
            for (int64_t x = 0; x < sw; x++) {
                float s = 0.0f;
                for (int i = 0; i < fy; i++)
                    for (int j = 0; j < fx; j++) s += p[(y * fy + i) * w + x * fx + j];
                sub[y * sw + x] = s / area;
            }
        component(sub, sh, sw, d, dt, tables + 64 * c, spreads + 64 * c);
        upsample(sub, sh, sw, fx, fy, tmp, up);
        memcpy(p, up, sizeof(float) * (size_t)n);
    }
    for (int64_t y = 0; y < h; y++) {
        uint8_t *row = dst + y * dstride;
        for (int64_t x = 0; x < w; x++) {
            const int64_t i = y * w + x;
            float v0 = plane[0][i], v1 = plane[1][i], v2 = plane[2][i];
            if (ycbcr) {
                const float yy = v0, cb = v1 - 128.0f, cr = v2 - 128.0f;
                v0 = yy + 1.402f * cr;
                v1 = yy - 0.344136f * cb - 0.714136f * cr;
                v2 = yy + 1.772f * cb;
            }
            row[3 * x] = (uint8_t)clip255(rintf(v0));
            row[3 * x + 1] = (uint8_t)clip255(rintf(v1));
            row[3 * x + 2] = (uint8_t)clip255(rintf(v2));
        }
    }
    free(buf);
    return 0;
}
