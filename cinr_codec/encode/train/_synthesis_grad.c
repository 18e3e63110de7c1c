/* Training-time forward and backward of the compressive CINR synthesis (core/synthesis.py,
 * Synthesis.forward), on the CPU.
 *
 * Plain C, no Python headers: built on first use like core/_native.c and called through ctypes
 * (encode/train/synthesis_grad.py). The forward computes what Synthesis.forward computes, in
 * float32 with another summation order (values differ from torch's by rounding):
 *   - the 3x3 convolutional flow (zero or one layer) over the replicate-padded features, then
 *     the activation;
 *   - per pixel, the MLP flow (1x1 layers, each then the activation) and the head, a 1x1 layer
 *     over [MLP output, conv flow output, features (with the stabiliser)] to RGB;
 *   - the residual 3x3 convolutions on RGB: x += conv(x) for the first, x += conv(act(x)) after.
 * It keeps what the backward needs (the conv flow's pre-activations, the residual states) in a
 * work buffer; the backward, given the gradient of the output, returns the gradient of the
 * features and adds every weight's gradient, recomputing the MLP per pixel instead of storing
 * its activations. The activation is leaky ReLU of slope `slope` (0: ReLU); its gradient uses
 * the pre-activation's sign (1 above 0, `slope` at or below), as torch's does.
 * Torch ran the same step as about forty operations over whole (channels, pixels) tensors,
 * memory-bound; here the per-pixel network runs over tiles of 64 pixels (8 per vector, every
 * layer's rows of the tile in L1), its weight gradients accumulate in vectors of partial sums,
 * and the convolutions run along rows.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_IN 16
#define MAX_MLP 4
#define MAX_WIDTH 64
#define MAX_CONV_WIDTH 16
#define MAX_RES 4

#include "_tiles.h"

static inline float dact(float pre, float slope) { return pre > 0.0f ? 1.0f : slope; }

/* out (O, H, W) = b + conv of the padded planes P (C, H + 2, W + 2) with w (O, C, 3, 3): for
 * blocks of up to 8 outputs, each input vector is loaded once for all of them, the accumulators
 * in registers (a pass per output, input and row of taps, rewriting the output row each time,
 * made the presets' whole forward 5.6 ms instead of 5.2 on a 256^2 block; the weights'
 * broadcasts now bound it). */
AI static void conv_fwd(const float *P, int64_t C, int64_t H, int64_t W, const float *w, const float *b, int64_t O,
                        float *out) {
    const int64_t W2 = W + 2;
    float wl[8 * MAX_IN * 9];
    for (int64_t o0 = 0; o0 < O; o0 += 8) {
        const int64_t ob = O - o0 < 8 ? O - o0 : 8;
        /* this block's weights, tap-major (c, tap, k), zero for missing outputs */
        for (int64_t c = 0; c < C; c++)
            for (int t = 0; t < 9; t++)
                for (int k = 0; k < 8; k++) wl[(c * 9 + t) * 8 + k] = k < ob ? w[((o0 + k) * C + c) * 9 + t] : 0.0f;
        float bl[8];
        for (int k = 0; k < 8; k++) bl[k] = k < ob ? b[o0 + k] : 0.0f;
        for (int64_t y = 0; y < H; y++) {
            int64_t x = 0;
            for (; x + VW <= W; x += VW) {
                v8 acc[8];
                for (int k = 0; k < 8; k++) acc[k] = splat(bl[k]);
                for (int64_t c = 0; c < C; c++) {
                    for (int dy = 0; dy < 3; dy++) {
                        const float *row = P + (c * (H + 2) + y + dy) * W2 + x;
                        for (int dx = 0; dx < 3; dx++) {
                            v8 v;
                            memcpy(&v, row + dx, sizeof v);
                            const float *wk = wl + (c * 9 + dy * 3 + dx) * 8;
                            for (int k = 0; k < 8; k++) acc[k] += splat(wk[k]) * v;
                        }
                    }
                }
                for (int64_t k = 0; k < ob; k++) memcpy(out + ((o0 + k) * H + y) * W + x, &acc[k], sizeof(v8));
            }
            for (; x < W; x++) {
                for (int64_t k = 0; k < ob; k++) {
                    float s = bl[k];
                    for (int64_t c = 0; c < C; c++)
                        for (int dy = 0; dy < 3; dy++)
                            for (int dx = 0; dx < 3; dx++)
                                s += wl[(c * 9 + dy * 3 + dx) * 8 + k] * P[(c * (H + 2) + y + dy) * W2 + x + dx];
                    out[((o0 + k) * H + y) * W + x] = s;
                }
            }
        }
    }
}

/* gw (O, C, 3, 3) += correlation of g (O, H, W) with the padded planes P; gb (O) += sums of g. */
AI static void conv_wgrad(const float *g, const float *P, int64_t C, int64_t H, int64_t W, int64_t O, float *gw,
                       float *gb) {
    const int64_t W2 = W + 2;
    for (int64_t o = 0; o < O; o++) {
        v8 sb = splat(0.0f);
        float tb = 0.0f;
        for (int64_t c = 0; c < C; c++) {
            v8 s[9];
            float t[9];
            for (int k = 0; k < 9; k++) {
                s[k] = splat(0.0f);
                t[k] = 0.0f;
            }
            for (int64_t y = 0; y < H; y++) {
                const float *gr = g + (o * H + y) * W;
                const float *p0 = P + (c * (H + 2) + y) * W2;
                int64_t x = 0;
                for (; x + VW <= W; x += VW) {
                    v8 gv;
                    memcpy(&gv, gr + x, sizeof gv);
                    for (int dy = 0; dy < 3; dy++) {
                        const float *pr = p0 + dy * W2 + x;
                        v8 a, bb, cc;
                        memcpy(&a, pr, sizeof a);
                        memcpy(&bb, pr + 1, sizeof bb);
                        memcpy(&cc, pr + 2, sizeof cc);
                        s[dy * 3] += gv * a;
                        s[dy * 3 + 1] += gv * bb;
                        s[dy * 3 + 2] += gv * cc;
                    }
                }
                for (; x < W; x++) {
                    const float gv = gr[x];
                    for (int dy = 0; dy < 3; dy++) {
                        const float *pr = p0 + dy * W2 + x;
                        t[dy * 3] += gv * pr[0];
                        t[dy * 3 + 1] += gv * pr[1];
                        t[dy * 3 + 2] += gv * pr[2];
                    }
                }
            }
            for (int k = 0; k < 9; k++) gw[(o * C + c) * 9 + k] += hsum(s[k]) + t[k];
        }
        for (int64_t y = 0; y < H; y++) {
            const float *gr = g + (o * H + y) * W;
            int64_t x = 0;
            for (; x + VW <= W; x += VW) {
                v8 gv;
                memcpy(&gv, gr + x, sizeof gv);
                sb += gv;
            }
            for (; x < W; x++) tb += gr[x];
        }
        gb[o] += hsum(sb) + tb;
    }
}

/* gin (C, H, W) = the gradient of the convolution's input from g (O, H, W): the transposed
 * convolution into padded planes (work, C x (H + 2) x (W + 2)), whose border is then folded onto
 * the edges it replicated. */
AI static void conv_dgrad(const float *g, const float *w, int64_t C, int64_t H, int64_t W, int64_t O, float *work,
                       float *gin) {
    const int64_t W2 = W + 2;
    memset(work, 0, (size_t)(C * (H + 2) * W2) * sizeof(float));
    for (int64_t c = 0; c < C; c++) {
        for (int64_t o = 0; o < O; o++) {
            for (int64_t dy = 0; dy < 3; dy++) {
                const float *k = w + ((o * C + c) * 3 + dy) * 3;
                const float k0 = k[0], k1 = k[1], k2 = k[2];
                for (int64_t y = 0; y < H; y++) {
                    const float *gr = g + (o * H + y) * W;
                    float *pr = work + (c * (H + 2) + y + dy) * W2;
                    /* pr[x + j] += k_j * gr[x], j = 0..2, as one pass per output position */
                    pr[0] += k0 * gr[0];
                    if (W > 1) pr[1] += k0 * gr[1] + k1 * gr[0];
                    for (int64_t x = 2; x < W; x++) pr[x] += k0 * gr[x] + k1 * gr[x - 1] + k2 * gr[x - 2];
                    if (W > 1) pr[W] += k1 * gr[W - 1] + k2 * gr[W - 2];
                    else pr[W] += k1 * gr[0];
                    pr[W + 1] += k2 * gr[W - 1];
                }
            }
        }
        float *pc = work + c * (H + 2) * W2;
        for (int64_t x = 0; x < W2; x++) {
            pc[W2 + x] += pc[x];
            pc[H * W2 + x] += pc[(H + 1) * W2 + x];
        }
        for (int64_t y = 1; y <= H; y++) {
            float *pr = pc + y * W2;
            pr[1] += pr[0];
            pr[W] += pr[W + 1];
            memcpy(gin + (c * H + y - 1) * W, pr + 1, (size_t)W * sizeof(float));
        }
    }
}

/* The parameters, float32, concatenated in torch's order (synthesis_grad.py, _params): each MLP
 * layer's weight (out, in) and bias, the conv flow's weight (cw, L, 3, 3) and bias, the head's
 * weight (3, D) over [MLP output, conv flow output, features with the stabiliser] and bias, each
 * residual convolution's weight (3, 3, 3, 3) and bias. */
typedef struct {
    int64_t L, H, W, n_mlp, widths[MAX_MLP], cw, stab, n_res;
    int64_t mw[MAX_MLP], mb[MAX_MLP], din[MAX_MLP];
    int64_t conv_w, conv_b, head_w, head_b, D, res[MAX_RES];
    int64_t size;
    /* vector accumulators of the per-pixel weights' gradients (MLP and head), in the same order */
    int64_t aw[MAX_MLP], ab[MAX_MLP], ahw, ahb, nacc;
} layout;

static int make_layout(const int64_t *shape, layout *g) {
    g->L = shape[0];
    g->H = shape[1];
    g->W = shape[2];
    g->n_mlp = shape[3];
    for (int l = 0; l < MAX_MLP; l++) g->widths[l] = shape[4 + l];
    g->cw = shape[8];
    g->stab = shape[9];
    g->n_res = shape[10];
    if (g->L < 1 || g->L > MAX_IN || g->H < 1 || g->W < 1 || g->H > (1 << 15) || g->W > (1 << 15) ||
        g->n_mlp < 1 || g->n_mlp > MAX_MLP || g->cw < 0 || g->cw > MAX_CONV_WIDTH || g->n_res < 0 ||
        g->n_res > MAX_RES || (g->stab != 0 && g->stab != 1))
        return 1;
    int64_t at = 0, acc = 0, d = g->L;
    for (int64_t l = 0; l < g->n_mlp; l++) {
        const int64_t w = g->widths[l];
        if (w < 1 || w > MAX_WIDTH) return 1;
        g->din[l] = d;
        g->mw[l] = at;
        g->mb[l] = at + w * d;
        at = g->mb[l] + w;
        g->aw[l] = acc;
        g->ab[l] = acc + w * d;
        acc = g->ab[l] + w;
        d = w;
    }
    if (g->cw) {
        g->conv_w = at;
        g->conv_b = at + g->cw * g->L * 9;
        at = g->conv_b + g->cw;
    }
    g->D = d + g->cw + (g->stab ? g->L : 0);
    g->head_w = at;
    g->head_b = at + 3 * g->D;
    at = g->head_b + 3;
    g->ahw = acc;
    g->ahb = acc + 3 * g->D;
    g->nacc = g->ahb + 3;
    for (int64_t r = 0; r < g->n_res; r++) {
        g->res[r] = at;
        at += 81 + 3;
    }
    g->size = at;
    return 0;
}

AI static v8 vact(v8 a, float slope) { return blend((vi8)(a > splat(0.0f)), a, a * splat(slope)); }

/* x times the activation's gradient at pre-activation a (1 above 0, slope at or below). */
AI static v8 vdact(v8 a, v8 x, float slope) { return blend((vi8)(a > splat(0.0f)), x, x * splat(slope)); }

/* A tile row of n values from src, zeros after; whole tiles (all but a block's last) by a copy of
 * constant size, which the compiler makes vector moves (a copy of n values was a loop of 8-byte
 * moves: a tenth of the training synthesis' time). */
AI static void load_tile(v8 *dst, const float *src, int64_t n) {
    float *d = (float *)dst;
    if (n == T) {
        memcpy(d, src, T * sizeof(float));
        return;
    }
    memcpy(d, src, (size_t)n * sizeof(float));
    for (int64_t t = n; t < T; t++) d[t] = 0.0f;
}

/* The first n values of a tile row to dst (whole tiles as load_tile copies them). */
AI static void store_tile(float *dst, const v8 *src, int64_t n) {
    if (n == T)
        memcpy(dst, src, T * sizeof(float));
    else
        memcpy(dst, src, (size_t)n * sizeof(float));
}

/* out[o] = b[o] + sum_k w[o][k] in[k], over a tile (rows of TV vectors). */
AI static void dense_tile(const v8 (*in)[TV], int64_t din, const float *w, const float *b, int64_t dout,
                          v8 (*out)[TV]) {
    for (int64_t o = 0; o < dout; o++) {
        v8 acc[TV];
        for (int v = 0; v < TV; v++) acc[v] = splat(b[o]);
        const float *wr = w + o * din;
        for (int64_t k = 0; k < din; k++) {
            const v8 wk = splat(wr[k]);
            for (int v = 0; v < TV; v++) acc[v] += wk * in[k][v];
        }
        for (int v = 0; v < TV; v++) out[o][v] = acc[v];
    }
}

/* One tile's MLP flow and head inputs: X (L rows), the layers' pre-activations A and
 * activations Hs, the conv flow's activations C (from the stored pre-activations). */
typedef struct {
    v8 X[MAX_IN][TV], A[MAX_MLP][MAX_WIDTH][TV], Hs[MAX_MLP][MAX_WIDTH][TV], C[MAX_CONV_WIDTH][TV];
    /* the backward's: the output's gradient, a layer's output and pre-activation gradients, the
     * features' gradient */
    v8 G[3][TV], dH[MAX_WIDTH][TV], dZ[MAX_WIDTH][TV], dX[MAX_IN][TV];
} tile;

AI static void tile_forward(const layout *g, const float *f, const float *pre, const float *p, float slope,
                            int64_t i0, int64_t n, tile *tl) {
    const int64_t HW = g->H * g->W;
    for (int64_t c = 0; c < g->L; c++) load_tile(tl->X[c], f + c * HW + i0, n);
    for (int64_t l = 0; l < g->n_mlp; l++) {
        const v8(*in)[TV] = l == 0 ? (const v8(*)[TV])tl->X : (const v8(*)[TV])tl->Hs[l - 1];
        dense_tile(in, g->din[l], p + g->mw[l], p + g->mb[l], g->widths[l], tl->A[l]);
        for (int64_t o = 0; o < g->widths[l]; o++)
            for (int v = 0; v < TV; v++) tl->Hs[l][o][v] = vact(tl->A[l][o][v], slope);
    }
    for (int64_t k = 0; k < g->cw; k++) {
        load_tile(tl->C[k], pre + k * HW + i0, n);
        for (int v = 0; v < TV; v++) tl->C[k][v] = vact(tl->C[k][v], slope);
    }
}

/* The head's input j of a tile: the MLP output, then the conv flow, then the features. */
AI static const v8 *head_input(const layout *g, const tile *tl, int64_t j) {
    const int64_t d = g->widths[g->n_mlp - 1];
    if (j < d) return tl->Hs[g->n_mlp - 1][j];
    if (j < d + g->cw) return tl->C[j - d];
    return tl->X[j - d - g->cw];
}

/* The forward (see the top). work: cw planes (conv pre-activations), n_res * 3 planes (residual
 * states), then scratch of max(L, 3) padded planes. */
AI static void forward_body(const layout *g, const float *f, const float *p, float slope, float *out, float *work,
                            tile *tl) {
    const int64_t H = g->H, W = g->W, HW = H * W, L = g->L, cw = g->cw;
    float *pre = work, *states = work + cw * HW, *scratch = states + g->n_res * 3 * HW;
    if (cw) {
        pad_planes(f, L, H, W, scratch, 0, slope);
        conv_fwd(scratch, L, H, W, p + g->conv_w, p + g->conv_b, cw, pre);
    }
    float *x0 = g->n_res ? states : out;
    const float *hw = p + g->head_w, *hb = p + g->head_b;
    for (int64_t i0 = 0; i0 < HW; i0 += T) {
        const int64_t n = HW - i0 < T ? HW - i0 : T;
        tile_forward(g, f, pre, p, slope, i0, n, tl);
        for (int o = 0; o < 3; o++) {
            v8 acc[TV];
            for (int v = 0; v < TV; v++) acc[v] = splat(hb[o]);
            for (int64_t j = 0; j < g->D; j++) {
                const v8 wj = splat(hw[o * g->D + j]);
                const v8 *in = head_input(g, tl, j);
                for (int v = 0; v < TV; v++) acc[v] += wj * in[v];
            }
            store_tile(x0 + o * HW + i0, acc, n);
        }
    }
    for (int64_t r = 0; r < g->n_res; r++) {
        const float *xr = states + r * 3 * HW;
        float *next = r + 1 < g->n_res ? states + (r + 1) * 3 * HW : out;
        pad_planes(xr, 3, H, W, scratch, r > 0, slope);
        conv_fwd(scratch, 3, H, W, p + g->res[r], p + g->res[r] + 81, 3, next);
        for (int64_t i = 0; i < 3 * HW; i++) next[i] += xr[i];
    }
}

/* The backward: gout (3, H, W) -> gf (L, H, W) (overwritten); gp (torch's order) added to.
 * work as the forward left it; gwork: 3 + cw planes, max(L, 3) padded planes and max(L, 3)
 * planes of scratch, then the vector accumulators. */
AI static void backward_body(const layout *g, const float *f, const float *p, float slope, const float *work,
                             const float *gout, float *gf, float *gp, float *gwork, tile *tl) {
    const int64_t H = g->H, W = g->W, HW = H * W, L = g->L, cw = g->cw, m = L > 3 ? L : 3;
    const float *pre = work, *states = work + cw * HW;
    float *gx = gwork, *gc = gwork + 3 * HW, *scratch = gc + cw * HW;
    float *gtmp = scratch + m * (H + 2) * (W + 2);
    v8 *acc = (v8 *)(gtmp + m * HW);
    for (int64_t a = 0; a < g->nacc; a++) acc[a] = splat(0.0f);
    memcpy(gx, gout, (size_t)(3 * HW) * sizeof(float));
    for (int64_t r = g->n_res - 1; r >= 0; r--) {
        const float *xr = states + r * 3 * HW;
        pad_planes(xr, 3, H, W, scratch, r > 0, slope);
        conv_wgrad(gx, scratch, 3, H, W, 3, gp + g->res[r], gp + g->res[r] + 81);
        conv_dgrad(gx, p + g->res[r], 3, H, W, 3, scratch, gtmp);
        if (r > 0) {
            int64_t i = 0;
            for (; i + VW <= 3 * HW; i += VW) { /* in vectors: the scalar loop's branch was not vectorized */
                v8 a, t, x;
                memcpy(&a, xr + i, sizeof a);
                memcpy(&t, gtmp + i, sizeof t);
                memcpy(&x, gx + i, sizeof x);
                x += t * blend((vi8)(a > splat(0.0f)), splat(1.0f), splat(slope)); /* as dact */
                memcpy(gx + i, &x, sizeof x);
            }
            for (; i < 3 * HW; i++) gx[i] += gtmp[i] * dact(xr[i], slope);
        } else {
            for (int64_t i = 0; i < 3 * HW; i++) gx[i] += gtmp[i];
        }
    }
    const float *hw = p + g->head_w;
    const int64_t last = g->n_mlp - 1, d = g->widths[last];
    v8(*G)[TV] = tl->G, (*dH)[TV] = tl->dH, (*dZ)[TV] = tl->dZ, (*dX)[TV] = tl->dX;
    for (int64_t i0 = 0; i0 < HW; i0 += T) {
        const int64_t n = HW - i0 < T ? HW - i0 : T;
        tile_forward(g, f, pre, p, slope, i0, n, tl);
        for (int o = 0; o < 3; o++) load_tile(G[o], gx + o * HW + i0, n);
        /* head: bias and weight gradients, then its inputs' gradients */
        for (int o = 0; o < 3; o++) {
            sum_acc(&acc[g->ahb + o], G[o]);
            for (int64_t j = 0; j < g->D; j++) dot_acc(&acc[g->ahw + o * g->D + j], G[o], head_input(g, tl, j));
        }
        for (int64_t j = 0; j < g->D; j++) {
            const v8 w0 = splat(hw[j]), w1 = splat(hw[g->D + j]), w2 = splat(hw[2 * g->D + j]);
            v8 s[TV];
            for (int v = 0; v < TV; v++) s[v] = w0 * G[0][v] + w1 * G[1][v] + w2 * G[2][v];
            if (j < d) {
                for (int v = 0; v < TV; v++) dH[j][v] = s[v];
            } else if (j < d + cw) {
                const int64_t k = j - d;
                v8 pk[TV];
                load_tile(pk, pre + k * HW + i0, n);
                for (int v = 0; v < TV; v++) s[v] = vdact(pk[v], s[v], slope);
                store_tile(gc + k * HW + i0, s, n);
            } else {
                for (int v = 0; v < TV; v++) dX[j - d - cw][v] = s[v];
            }
        }
        if (!g->stab)
            for (int64_t c = 0; c < L; c++)
                for (int v = 0; v < TV; v++) dX[c][v] = splat(0.0f);
        /* MLP, last layer first */
        for (int64_t l = last; l >= 0; l--) {
            const int64_t w = g->widths[l], din = g->din[l];
            const v8(*in)[TV] = l == 0 ? (const v8(*)[TV])tl->X : (const v8(*)[TV])tl->Hs[l - 1];
            for (int64_t o = 0; o < w; o++) {
                for (int v = 0; v < TV; v++) dZ[o][v] = vdact(tl->A[l][o][v], dH[o][v], slope);
                sum_acc(&acc[g->ab[l] + o], dZ[o]);
                for (int64_t k = 0; k < din; k++) dot_acc(&acc[g->aw[l] + o * din + k], dZ[o], in[k]);
            }
            const float *wl = p + g->mw[l];
            for (int64_t k = 0; k < din; k++) {
                v8 s[TV];
                for (int v = 0; v < TV; v++) s[v] = splat(0.0f);
                for (int64_t o = 0; o < w; o++) {
                    const v8 wk = splat(wl[o * din + k]);
                    for (int v = 0; v < TV; v++) s[v] += wk * dZ[o][v];
                }
                if (l > 0) {
                    for (int v = 0; v < TV; v++) dH[k][v] = s[v];
                } else {
                    for (int v = 0; v < TV; v++) dX[k][v] += s[v];
                }
            }
        }
        for (int64_t c = 0; c < L; c++) store_tile(gf + c * HW + i0, dX[c], n);
    }
    /* the accumulators into gp (torch's order: MLP weights and biases, then the head's) */
    for (int64_t l = 0; l < g->n_mlp; l++) {
        for (int64_t k = 0; k < g->widths[l] * g->din[l]; k++) gp[g->mw[l] + k] += hsum(acc[g->aw[l] + k]);
        for (int64_t o = 0; o < g->widths[l]; o++) gp[g->mb[l] + o] += hsum(acc[g->ab[l] + o]);
    }
    for (int64_t k = 0; k < 3 * g->D; k++) gp[g->head_w + k] += hsum(acc[g->ahw + k]);
    for (int o = 0; o < 3; o++) gp[g->head_b + o] += hsum(acc[g->ahb + o]);
    if (cw) {
        pad_planes(f, L, H, W, scratch, 0, slope);
        conv_wgrad(gc, scratch, L, H, W, cw, gp + g->conv_w, gp + g->conv_b);
        conv_dgrad(gc, p + g->conv_w, L, H, W, cw, scratch, gtmp);
        for (int64_t i = 0; i < L * HW; i++) gf[i] += gtmp[i];
    }
}

/* Sizes (floats) of the buffers: parameters, the forward's work, the backward's. */
int cinr_synth_grad_sizes(const int64_t *shape, int64_t *sizes) {
    layout g;
    if (make_layout(shape, &g)) return 1;
    const int64_t HW = g.H * g.W, PP = (g.H + 2) * (g.W + 2), m = g.L > 3 ? g.L : 3;
    sizes[0] = g.size;
    sizes[1] = g.cw * HW + g.n_res * 3 * HW + m * PP;
    sizes[2] = 3 * HW + g.cw * HW + m * PP + m * HW + g.nacc * VW;
    return 0;
}

/* gout NULL: the forward (out, work). Else the backward (gf, gp added to; gwork scratch).
 * Returns 0, 1 for sizes beyond the limits, 3 when out of memory. */
CLONES int cinr_synth_grad(const float *f, const int64_t *shape, const float *p, float slope, float *out, float *work,
                           const float *gout, float *gf, float *gp, float *gwork) {
    layout g;
    if (make_layout(shape, &g)) return 1;
    tile *tl = malloc(sizeof(tile));
    if (tl == NULL) return 3;
    if (gout == NULL)
        forward_body(&g, f, p, slope, out, work, tl);
    else
        backward_body(&g, f, p, slope, work, gout, gf, gp, gwork, tl);
    free(tl);
    return 0;
}
