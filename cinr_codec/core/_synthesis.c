/* Compiled CPU inference of the compressive CINR synthesis (core/synthesis.py, Synthesis.forward).
 *
 * Plain C, no Python headers: built on first use like _native.c and called through ctypes.
 * Input: the upsampled latent features of a window, planar float32 (L, H, W) as torch makes
 * them. It computes what Synthesis.forward computes, in float32 with another summation order
 * (so a pixel may differ from torch's by a rounding step, as between any two machines):
 *   - the 3x3 convolutional flow over the features (replicate padding at the window's edge),
 *     each layer then the activation;
 *   - per pixel, the MLP flow (1x1 layers, each then the activation) and the head, a 1x1 layer
 *     over [MLP output, conv flow output, features (with the stabiliser)] to RGB;
 *   - the residual 3x3 convolutions on RGB: x += conv(x) for the first, x += conv(act(x)) after;
 *   - clamp to [0, 1], times 255, rounded half to even, as uint8 (H, W, 3).
 * Planes are row-major; every inner loop runs along a row, which the compiler vectorizes. The
 * work buffers are a few planes, allocated once per call: a window costs no allocation per
 * layer, unlike torch's fresh tensors (docs/architecture.md, "Decoding without the allocator
 * setting").
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_IN 16
#define MAX_MLP 4
#define MAX_WIDTH 128
#define MAX_CONV 4
#define MAX_CONV_WIDTH 64
#define MAX_RES 4
#define HEAD_MAX_IN (MAX_WIDTH + MAX_CONV_WIDTH + MAX_IN)
#define MAX_CONV_IN (MAX_CONV_WIDTH > MAX_IN ? MAX_CONV_WIDTH : MAX_IN)
#define TAIL 24 /* a tail row: up to XB - 1 pixels and the 2 of the 3x3 reach, read 8 at a time */

#include "_kernels.h"

/* Register blocks: JB outputs x XB pixels of accumulators (JB * XB / 8 vector registers with AVX2),
 * so that each input value loaded serves JB outputs and each weight XB pixels. The accumulators
 * are GCC/Clang vectors of 8 floats (the compiler's own auto-vectorization chose poorly here). */
#define JB 4
#define XB 16
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
/* Macros rather than functions: a plain function could not be inlined into the target clones,
 * and calling it there (a 32-byte vector passed through memory) was 25x slower. */
#define load8(p)                                                                                                       \
    __extension__({                                                                                                    \
        v8 v_;                                                                                                         \
        memcpy(&v_, (p), sizeof(v_));                                                                                  \
        v_;                                                                                                            \
    })
#define store8(p, v)                                                                                                   \
    do {                                                                                                               \
        v8 s_ = (v);                                                                                                   \
        memcpy((p), &s_, sizeof(s_));                                                                                  \
    } while (0)
/* act() on 8 lanes: v where v > 0, else v * slope. */
#define act8(v, slope)                                                                                                 \
    __extension__({                                                                                                    \
        const v8 a_ = (v), z_ = {0};                                                                                   \
        const v8i m_ = a_ > z_;                                                                                        \
        (v8)(((v8i)a_ & m_) | ((v8i)(a_ * (slope)) & ~m_));                                                            \
    })

/* x in all 8 lanes (not 0 + x, which turns -0 into +0). */
#define splat8(x)                                                                                                      \
    __extension__({                                                                                                    \
        const float s_ = (x);                                                                                          \
        (v8){s_, s_, s_, s_, s_, s_, s_, s_};                                                                          \
    })

/* The sums of outputs [j0, j0 + nb) of a 3x3 layer over XB pixels: acc[jb] = the sum over inputs
 * k and tap rows dy, in that order, of the row at rows + k * ks + dy * rs (its pixels and the 2
 * after them) times the taps (nb a constant where it is inlined). */
AI static void conv_block(const float *rows, int64_t ks, int64_t rs, const float *w, int64_t din, int64_t j0,
                          const int nb, v8 acc[JB][2]) {
    for (int jb = 0; jb < nb; jb++) acc[jb][0] = acc[jb][1] = (v8){0};
    for (int64_t k = 0; k < din; k++)
        for (int64_t dy = 0; dy < 3; dy++) {
            const float *row = rows + k * ks + dy * rs;
            const v8 a0 = load8(row), a1 = load8(row + 8), b0 = load8(row + 1), b1 = load8(row + 9);
            const v8 c0 = load8(row + 2), c1 = load8(row + 10);
            for (int jb = 0; jb < nb; jb++) {
                const float *wk = w + ((j0 + jb) * din + k) * 9 + dy * 3;
                const float w0 = wk[0], w1 = wk[1], w2 = wk[2];
                acc[jb][0] += w0 * a0 + w1 * b0 + w2 * c0;
                acc[jb][1] += w0 * a1 + w1 * b1 + w2 * c1;
            }
        }
}

/* out[j] (+)= b[j] + sum_k sum_{dy,dx} w[((j * din + k) * 3 + dy) * 3 + dx] * P[k][y + dy][x + dx]
 * for padded planes P (din, H + 2, W + 2); with add, out keeps its values and gets the sum added;
 * with activate, the activation follows. Full nb x XB blocks in registers (nb a constant where
 * it is inlined), then the edges. */
AI static void conv3x3_blocks(const float *P, int64_t din, int64_t H, int64_t W, const float *w, const float *b,
                              int64_t dout, float *out, int add, int activate, float slope, const int nb) {
    const int64_t W2 = W + 2, jfull = dout / nb * nb, xfull = W / XB * XB;
    for (int64_t y = 0; y < H; y++) {
        for (int64_t j0 = 0; j0 < jfull; j0 += nb)
            for (int64_t x0 = 0; x0 < xfull; x0 += XB) {
                v8 acc[JB][2];
                conv_block(P + y * W2 + x0, (H + 2) * W2, W2, w, din, j0, nb, acc);
                for (int jb = 0; jb < nb; jb++) {
                    float *o = out + ((j0 + jb) * H + y) * W + x0;
                    for (int h = 0; h < 2; h++) {
                        v8 t = acc[jb][h] + b[j0 + jb];
                        if (add) t += load8(o + 8 * h);
                        store8(o + 8 * h, activate ? act8(t, slope) : t);
                    }
                }
            }
        /* The pixels past the last full XB, for the outputs of full blocks: the edge's own order
         * of operations (below) on a zero-padded copy of their inputs, in vectors (one value at a
         * time, the 6 pixels past 128 of a decoder's 134-px window took longer than the 128). */
        if (xfull < W && jfull > 0) {
            const int64_t m = W - xfull;
            float tail[MAX_CONV_IN * 3 * TAIL];
            memset(tail, 0, (size_t)(din * 3 * TAIL) * sizeof(float));
            for (int64_t k = 0; k < din; k++)
                for (int64_t dy = 0; dy < 3; dy++)
                    memcpy(tail + (k * 3 + dy) * TAIL, P + (k * (H + 2) + y + dy) * W2 + xfull,
                           (size_t)(m + 2) * sizeof(float));
            for (int64_t j0 = 0; j0 < jfull; j0 += nb) {
                v8 acc[JB][2];
                conv_block(tail, 3 * TAIL, TAIL, w, din, j0, nb, acc);
                for (int jb = 0; jb < nb; jb++) {
                    float *o = out + ((j0 + jb) * H + y) * W + xfull;
                    float lanes[XB] = {0};
                    if (add) memcpy(lanes, o, (size_t)m * sizeof(float));
                    for (int h = 0; h < 2; h++) {
                        v8 t = acc[jb][h] + (splat8(b[j0 + jb]) + load8(lanes + 8 * h));
                        store8(lanes + 8 * h, activate ? act8(t, slope) : t);
                    }
                    memcpy(o, lanes, (size_t)m * sizeof(float));
                }
            }
        }
        /* The edges: outputs past the last full block of nb (every pixel). */
        for (int64_t j = jfull; j < dout; j++) {
            for (int64_t x = 0; x < W; x++) {
                float v = 0.0f;
                for (int64_t k = 0; k < din; k++)
                    for (int64_t dy = 0; dy < 3; dy++) {
                        const float *row = P + (k * (H + 2) + y + dy) * W2 + x;
                        const float *wk = w + (j * din + k) * 9 + dy * 3;
                        v += wk[0] * row[0] + wk[1] * row[1] + wk[2] * row[2];
                    }
                float *o = out + (j * H + y) * W + x;
                v += b[j] + (add ? *o : 0.0f);
                *o = activate ? act(v, slope) : v;
            }
        }
    }
}

/* The conv flow's layers: blocks of JB outputs. */
CLONES static void conv3x3(const float *P, int64_t din, int64_t H, int64_t W, const float *w, const float *b,
                           int64_t dout, float *out, int add, int activate, float slope) {
    conv3x3_blocks(P, din, H, W, w, b, dout, out, add, activate, slope, JB);
}

/* The residual convolutions on RGB (3 outputs, added to out): one block of all three (a fourth
 * output of zero weights, to fill a block of JB, made a 512^2 synthesis 1.5 ms slower, 17.8
 * against 16.3 ms). */
CLONES static void conv3x3_rgb(const float *P, int64_t H, int64_t W, const float *w, const float *b, float *out,
                               float slope) {
    conv3x3_blocks(P, 3, H, W, w, b, 3, out, 1, 0, slope, 3);
}

/* Outputs [j0, j0 + nb) of dense_row over XB pixels from x0, nb accumulators of XB pixels in
 * registers (nb a constant where it is inlined: 6, 4 or 2). */
AI static void dense_block(const float *in, int64_t din, int64_t n, const float *w, const float *b, int64_t j0,
                           int nb, int64_t x0, float *out, int activate, float slope) {
    v8 acc[6][2];
    for (int jb = 0; jb < nb; jb++) acc[jb][0] = acc[jb][1] = (v8){0};
    for (int64_t k = 0; k < din; k++) {
        const v8 r0 = load8(in + k * n + x0), r1 = load8(in + k * n + x0 + 8);
        for (int jb = 0; jb < nb; jb++) {
            const float wk = w[(j0 + jb) * din + k];
            acc[jb][0] += wk * r0;
            acc[jb][1] += wk * r1;
        }
    }
    for (int jb = 0; jb < nb; jb++) {
        float *o = out + (j0 + jb) * n + x0;
        for (int h = 0; h < 2; h++) {
            const v8 t = acc[jb][h] + b[j0 + jb];
            store8(o + 8 * h, activate ? act8(t, slope) : t);
        }
    }
}

/* out[j][x] = act?(b[j] + sum_k w[j * din + k] * in[k][x]) for x < n (rows of stride n). The
 * outputs below the last multiple of 4 and the pixels below the last multiple of XB in register
 * blocks of 6 outputs (then one of 4 or 2) x XB pixels: each input vector loaded serves 6
 * outputs (blocks of 4 took 1.2 ms more of a 512^2 synthesis' 20); then the edges. Each output's
 * sum runs over k in order everywhere, as with blocks of 4. */
CLONES static void dense_row(const float *in, int64_t din, int64_t n, const float *w, const float *b, int64_t dout,
                             float *out, int activate, float slope) {
    const int64_t jfull = dout / 4 * 4, j6 = jfull / 6 * 6, xfull = n / XB * XB;
    for (int64_t x0 = 0; x0 < xfull; x0 += XB) {
        for (int64_t j0 = 0; j0 < j6; j0 += 6) dense_block(in, din, n, w, b, j0, 6, x0, out, activate, slope);
        if (jfull - j6 == 4)
            dense_block(in, din, n, w, b, j6, 4, x0, out, activate, slope);
        else if (jfull - j6 == 2)
            dense_block(in, din, n, w, b, j6, 2, x0, out, activate, slope);
    }
    /* The pixels past the last full XB, for the outputs below jfull: the edge's own order of
     * operations (the bias first) on a zero-padded copy of their inputs, in vectors. */
    if (xfull < n && jfull > 0) {
        const int64_t m = n - xfull;
        float tail[MAX_WIDTH * XB];
        memset(tail, 0, (size_t)(din * XB) * sizeof(float));
        for (int64_t k = 0; k < din; k++) memcpy(tail + k * XB, in + k * n + xfull, (size_t)m * sizeof(float));
        for (int64_t j = 0; j < jfull; j++) {
            v8 a0 = splat8(b[j]), a1 = a0;
            for (int64_t k = 0; k < din; k++) {
                const float wk = w[j * din + k];
                a0 += wk * load8(tail + k * XB);
                a1 += wk * load8(tail + k * XB + 8);
            }
            float lanes[XB];
            store8(lanes, activate ? act8(a0, slope) : a0);
            store8(lanes + 8, activate ? act8(a1, slope) : a1);
            memcpy(out + j * n + xfull, lanes, (size_t)m * sizeof(float));
        }
    }
    /* The outputs past jfull, one value at a time. */
    for (int64_t j = jfull; j < dout; j++)
        for (int64_t x = 0; x < n; x++) {
            float v = b[j];
            for (int64_t k = 0; k < din; k++) v += w[j * din + k] * in[k * n + x];
            out[j * n + x] = activate ? act(v, slope) : v;
        }
}

/* The head over XB pixels from x0 of its input rows (rows[k], in the head's input order): acc[c]
 * = hb[c] + the sum over k, in order, of weight times input. */
AI static void head_block(const float *const *rows, int64_t n_in, int64_t x0, const float *hw, const float *hb,
                          int64_t head_in, v8 acc[3][2]) {
    for (int c = 0; c < 3; c++) acc[c][0] = acc[c][1] = splat8(hb[c]);
    for (int64_t k = 0; k < n_in; k++) {
        const v8 r0 = load8(rows[k] + x0), r1 = load8(rows[k] + x0 + 8);
        for (int c = 0; c < 3; c++) {
            const float wk = hw[c * head_in + k];
            acc[c][0] += wk * r0;
            acc[c][1] += wk * r1;
        }
    }
}

/* The head for one row of W pixels into the three RGB planes' rows (o, stride plane). rows:
 * its n_in input rows (the MLP's last layer, the conv flow's outputs, with the stabiliser the
 * features). Each output's sum runs in the order of one input row at a time, in registers (3
 * outputs x XB pixels); the pixels past the last full block go through the same block on a
 * zero-padded copy, so that every pixel is computed alike. */
AI static void head_row(const float *const *rows, int64_t n_in, int64_t W, const float *hw, const float *hb,
                        int64_t head_in, int64_t plane, float *o) {
    const int64_t xfull = W / XB * XB;
    v8 acc[3][2];
    for (int64_t x0 = 0; x0 < xfull; x0 += XB) {
        head_block(rows, n_in, x0, hw, hb, head_in, acc);
        for (int c = 0; c < 3; c++) {
            store8(o + c * plane + x0, acc[c][0]);
            store8(o + c * plane + x0 + 8, acc[c][1]);
        }
    }
    if (xfull == W) return;
    float tail[HEAD_MAX_IN * XB];
    const float *tails[HEAD_MAX_IN];
    memset(tail, 0, (size_t)(n_in * XB) * sizeof(float));
    for (int64_t k = 0; k < n_in; k++) {
        memcpy(tail + k * XB, rows[k] + xfull, (size_t)(W - xfull) * sizeof(float));
        tails[k] = tail + k * XB;
    }
    head_block(tails, n_in, 0, hw, hb, head_in, acc);
    for (int c = 0; c < 3; c++) {
        float lanes[XB];
        store8(lanes, acc[c][0]);
        store8(lanes + 8, acc[c][1]);
        memcpy(o + c * plane + xfull, lanes, (size_t)(W - xfull) * sizeof(float));
    }
}

/* One row of the three RGB planes (stride plane) to W interleaved uint8 pixels: clamped to
 * [0, 255] after the product by 255 (the same values as clamping to [0, 1] first; NaN to 0),
 * rounded half to even by adding 2^23 (exact in float32 below 2^23; the clamp between the
 * product and the sum keeps them from fusing into one rounding). */
AI static void to_uint8_row(const float *rgb, int64_t plane, int64_t W, uint8_t *out) {
    const int64_t x8 = W / 8 * 8;
    const v8 zero = {0}, top = zero + 255.0f, magic = zero + 8388608.0f;
    for (int64_t x0 = 0; x0 < x8; x0 += 8) {
        v8i q[3];
        for (int c = 0; c < 3; c++) {
            const v8 v = load8(rgb + c * plane + x0) * 255.0f;
            const v8 lo = (v8)((v8i)v & (v > zero));           /* NaN and below 0: 0 */
            const v8 cl = (v8)(((v8i)lo & (lo < top)) | ((v8i)top & ~(lo < top)));
            q[c] = (v8i)(cl + magic) - (v8i)magic;
        }
        for (int i = 0; i < 8; i++)
            for (int c = 0; c < 3; c++) out[(x0 + i) * 3 + c] = (uint8_t)q[c][i];
    }
    for (int64_t x = x8; x < W; x++)
        for (int c = 0; c < 3; c++) {
            float v = rgb[c * plane + x];
            v = v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f;
            out[x * 3 + c] = (uint8_t)nearbyintf(v * 255.0f);
        }
}

/*
 * f: features (L, H, W). mlp: n_mlp widths; mlp_p: each layer's weight (out x in) then bias.
 * conv_p: n_conv layers of cw outputs, each weight (cw x in x 3 x 3) then bias. head_p: weight
 * (3 x (d + cw + L * stabiliser)) then bias. res_p: n_res layers, weight (3 x 3 x 3 x 3) then
 * bias. slope: the activation's negative slope (0 for ReLU). out: (H, W, 3) uint8.
 * Returns 0, 2 for arguments out of range, 3 when out of memory. Cloned like its helpers: its own
 * loops (the head over each row, the padding, the conversion to uint8) ran as baseline SSE2
 * otherwise, as did cinr_upsample_window's doublings (a 512^2 block's greedy search, rendering
 * many windows, took 11.3 s instead of 10.1).
 */
CLONES int cinr_synthesis(const float *f, int64_t L, int64_t H, int64_t W, int64_t n_mlp, const int64_t *mlp,
                   const float *mlp_p, int64_t n_conv, int64_t cw, const float *conv_p, int64_t stabiliser,
                   const float *head_p, int64_t n_res, const float *res_p, float slope, uint8_t *out) {
    if (L < 1 || L > MAX_IN || H < 1 || W < 1 || H > (1 << 15) || W > (1 << 15) || n_mlp < 1 || n_mlp > MAX_MLP ||
        n_conv < 0 || n_conv > MAX_CONV || n_res < 0 || n_res > MAX_RES || (n_conv > 0 && (cw < 1 || cw > MAX_CONV_WIDTH)))
        return 2;
    for (int64_t i = 0; i < n_mlp; i++)
        if (mlp[i] < 1 || mlp[i] > MAX_WIDTH) return 2;
    const int64_t d = mlp[n_mlp - 1], cwe = n_conv > 0 ? cw : 0;
    const int64_t plane = H * W, padded = (H + 2) * (W + 2);
    const int64_t cmax = L > cwe ? L : cwe;
    float *pad = malloc((size_t)(cmax > 3 ? cmax : 3) * (size_t)padded * sizeof(float));
    float *conv_a = cwe ? malloc((size_t)(cwe * plane) * sizeof(float)) : NULL;
    float *conv_b = cwe && n_conv > 1 ? malloc((size_t)(cwe * plane) * sizeof(float)) : NULL;
    float *rgb = malloc((size_t)(3 * plane) * sizeof(float));
    float *row_a = malloc((size_t)(MAX_WIDTH * W) * sizeof(float));
    float *row_b = malloc((size_t)(MAX_WIDTH * W) * sizeof(float));
    float *row_in = malloc((size_t)(L * W) * sizeof(float));
    int rc = 0;
    if (!pad || (cwe && !conv_a) || (cwe && n_conv > 1 && !conv_b) || !rgb || !row_a || !row_b || !row_in) {
        rc = 3;
        goto done;
    }
    /* The conv flow, whole planes (each layer reads its input's 3 x 3 neighbourhoods). */
    const float *conv_out = NULL;
    if (n_conv > 0) {
        const float *src = f;
        int64_t din = L;
        const float *p = conv_p;
        float *bufs[2] = {conv_a, conv_b};
        for (int64_t i = 0; i < n_conv; i++) {
            float *dst = bufs[i & 1];
            pad_planes(src, din, H, W, pad, 0, slope);
            conv3x3(pad, din, H, W, p, p + cw * din * 9, cw, dst, 0, 1, slope);
            p += cw * din * 9 + cw;
            src = dst;
            din = cw;
        }
        conv_out = src;
    }
    /* Per row: the MLP flow, then the head over [MLP, conv flow, features]. */
    const int64_t head_in = d + cwe + (stabiliser ? L : 0);
    const float *hw = head_p, *hb = head_p + 3 * head_in;
    for (int64_t y = 0; y < H; y++) {
        for (int64_t k = 0; k < L; k++) memcpy(row_in + k * W, f + k * plane + y * W, (size_t)W * sizeof(float));
        const float *in = row_in;
        int64_t din = L;
        const float *p = mlp_p;
        float *bufs[2] = {row_a, row_b};
        for (int64_t i = 0; i < n_mlp; i++) {
            float *dst = bufs[i & 1];
            dense_row(in, din, W, p, p + mlp[i] * din, mlp[i], dst, 1, slope);
            p += mlp[i] * din + mlp[i];
            in = dst;
            din = mlp[i];
        }
        const float *rows[HEAD_MAX_IN];
        for (int64_t k = 0; k < d; k++) rows[k] = in + k * W;
        for (int64_t k = 0; k < cwe; k++) rows[d + k] = conv_out + k * plane + y * W;
        for (int64_t k = 0; stabiliser && k < L; k++) rows[d + cwe + k] = f + k * plane + y * W;
        head_row(rows, head_in, W, hw, hb, head_in, plane, rgb + y * W);
    }
    /* Residual 3x3 convolutions on RGB. */
    for (int64_t i = 0; i < n_res; i++) {
        const float *p = res_p + i * (81 + 3);
        pad_planes(rgb, 3, H, W, pad, i > 0, slope);
        conv3x3_rgb(pad, H, W, p, p + 81, rgb, slope);
    }
    for (int64_t y = 0; y < H; y++) to_uint8_row(rgb + y * W, plane, W, out + y * W * 3);
done:
    free(pad);
    free(conv_a);
    free(conv_b);
    free(rgb);
    free(row_a);
    free(row_b);
    free(row_in);
    return rc;
}

/* One axis of the learned doubling (core/synthesis.py ``double``; formats/cinr-v1.md 5.4) for
 * outputs [lo, hi) of 2n: out[2a] = f0 x[a] + f1 x[a-1] + f2 x[a+1] + f3 x[a-2] and
 * out[2a+1] = f0 x[a] + f1 x[a+1] + f2 x[a-1] + f3 x[a+2], indices clamped to [0, n). x has
 * stride xs between taps, out stride os between outputs. */
static inline void double_axis(const float *x, int64_t n, int64_t xs, const float *f, int64_t lo, int64_t hi, float *out,
                               int64_t os) {
    for (int64_t i = lo; i < hi; i++) {
        const int64_t a = i >> 1, s = (i & 1) ? -1 : 1;
        const int64_t am = clamp_index(a - s, n), ap = clamp_index(a + s, n), am2 = clamp_index(a - 2 * s, n);
        /* even: f1 x[a-1], f2 x[a+1], f3 x[a-2]; odd: f1 x[a+1], f2 x[a-1], f3 x[a+2] */
        out[(i - lo) * os] = f[0] * x[a * xs] + f[1] * x[am * xs] + f[2] * x[ap * xs] + f[3] * x[am2 * xs];
    }
}

/* double_axis along a row (stride 1 both ways), the outputs whose taps need no clamping 8 at a
 * time: lane j of a block from the even output 2 a0 reads x[a0 + j / 2 + d] for its taps d, all
 * within x[a0 - 2 .. a0 + 5], shuffled out of one load; each output is the same sum of the same
 * four products as one at a time (which GCC left scalar: a decoder's window spent more time
 * doubling its rows than its columns). */
AI static void double_row(const float *x, int64_t n, const float *f, int64_t lo, int64_t hi, float *out) {
    int64_t i = lo;
    const int64_t vend = 2 * (n - 5); /* blocks from 2 a0 need a0 + 5 < n */
    if (hi - lo >= 16 && n >= 8) {
        int64_t first = lo + (lo & 1); /* an even output */
        if (first < 4) first = 4;       /* a0 >= 2 */
        const int64_t head = first < hi ? first : hi; /* the clamped outputs before the blocks */
        double_axis(x, n, 1, f, i, head, out, 1);
        i = head;
        const v8 f0 = splat8(f[0]), f1 = splat8(f[1]), f2 = splat8(f[2]), f3 = splat8(f[3]);
        for (; i + 8 <= hi && i < vend; i += 8) {
            const v8 v = load8(x + i / 2 - 2);
            const v8 xa = __builtin_shufflevector(v, v, 2, 2, 3, 3, 4, 4, 5, 5);
            const v8 t1 = __builtin_shufflevector(v, v, 1, 3, 2, 4, 3, 5, 4, 6);
            const v8 t2 = __builtin_shufflevector(v, v, 3, 1, 4, 2, 5, 3, 6, 4);
            const v8 t3 = __builtin_shufflevector(v, v, 0, 4, 1, 5, 2, 6, 3, 7);
            store8(out + (i - lo), f0 * xa + f1 * t1 + f2 * t2 + f3 * t3);
        }
    }
    if (i < hi) double_axis(x, n, 1, f, i, hi, out + (i - lo), 1);
}

/*
 * Rows [r0, r1) and columns [c0, c1) of the learned upsampling of n grids (finest first, grid k
 * of hs[k] x ws[k] at grids[k], row-major float32), each times scale, into out (n planes of
 * (r1 - r0) x (c1 - c0)): core/synthesis.py ``upsample_learned_window``, which defines the
 * windows (each coarser one the finer halved and widened by 2, clamped to its grid).
 * filters: (n - 1) x 4 taps. Returns 0, 2 for arguments out of range, 3 when out of memory.
 */
CLONES int cinr_upsample_window(const float *const *grids, const int64_t *hs, const int64_t *ws, int64_t n,
                         const float *filters, int64_t r0, int64_t r1, int64_t c0, int64_t c1, float scale,
                         float *out) {
    if (n < 1 || n > MAX_IN || r0 < 0 || c0 < 0 || r1 <= r0 || c1 <= c0 || r1 > hs[0] || c1 > ws[0]) return 2;
    int64_t R0[MAX_IN], R1[MAX_IN], C0[MAX_IN], C1[MAX_IN];
    R0[0] = r0, R1[0] = r1, C0[0] = c0, C1[0] = c1;
    for (int64_t k = 1; k < n; k++) {
        if (hs[k] < 1 || ws[k] < 1) return 2;
        R0[k] = R0[k - 1] / 2 - 2 > 0 ? R0[k - 1] / 2 - 2 : 0;
        R1[k] = (R1[k - 1] + 1) / 2 + 2 < hs[k] ? (R1[k - 1] + 1) / 2 + 2 : hs[k];
        C0[k] = C0[k - 1] / 2 - 2 > 0 ? C0[k - 1] / 2 - 2 : 0;
        C1[k] = (C1[k - 1] + 1) / 2 + 2 < ws[k] ? (C1[k - 1] + 1) / 2 + 2 : ws[k];
        if (R1[k] <= R0[k] || C1[k] <= C0[k]) return 2;
    }
    /* Bottom-up: cur holds the planes of window k (channels k … n-1), then grows by one. */
    const int64_t hmax = r1 - r0 + 8, wmax = c1 - c0 + 8; /* every window is at most this */
    float *cur = malloc((size_t)(n * hmax * wmax) * sizeof(float));
    float *nxt = malloc((size_t)(n * hmax * wmax) * sizeof(float));
    float *tmp = malloc((size_t)(hmax * wmax) * sizeof(float));
    if (!cur || !nxt || !tmp) {
        free(cur);
        free(nxt);
        free(tmp);
        return 3;
    }
    int rc = 0;
    for (int64_t k = n - 1; k >= 0; k--) {
        const int64_t h = R1[k] - R0[k], w = C1[k] - C0[k];
        if (h > hmax || w > wmax) {
            rc = 2;
            break;
        }
        float *dst = k == 0 ? out : nxt;
        const float *g = grids[k];
        for (int64_t y = 0; y < h; y++)
            for (int64_t x = 0; x < w; x++) dst[y * w + x] = g[(R0[k] + y) * ws[k] + C0[k] + x] * scale;
        if (k < n - 1) {
            /* The coarser stack (channels k+1 … n-1, window k+1) doubled, cropped to window k. */
            const int64_t hc = R1[k + 1] - R0[k + 1], wc = C1[k + 1] - C0[k + 1];
            const int64_t rlo = R0[k] - 2 * R0[k + 1], clo = C0[k] - 2 * C0[k + 1];
            const float *f = filters + 4 * k;
            for (int64_t ch = 0; ch < n - 1 - k; ch++) {
                const float *src = cur + ch * hc * wc;
                for (int64_t y = 0; y < hc; y++) double_row(src + y * wc, wc, f, clo, clo + w, tmp + y * w);
                double_cols(tmp, hc, w, f, rlo, h, dst + (ch + 1) * h * w);
            }
        }
        if (k > 0) {
            float *t = cur;
            cur = nxt;
            nxt = t;
        }
    }
    free(cur);
    free(nxt);
    free(tmp);
    return rc;
}
