/* Training-time rate of latent grids under the float context model, and its gradients.
 *
 * Plain C, no Python headers: built on first use like core/_native.c and called through ctypes
 * (encode/train/rate.py). It computes what core/synthesis.py's ContextModel.bits computes for one
 * grid, in float32 like torch (another summation order, so the sum differs by rounding):
 *   - each latent's causal neighbours at the given offsets, zero outside the grid;
 *   - the context model: hidden layers a = W h + b, ReLU, residual from the second layer on;
 *     an output layer to (mean, log-scale), the log-scale clamped to [lo, hi];
 *   - the bits of the unit bin around the latent under Laplace(mean, exp(log-scale)), as
 *     laplace_bits (a tail formula beyond half a step from the mean, a centre one inside it,
 *     probabilities floored at 2^-16);
 * and, when asked, the gradient of the total bits with respect to every latent (as the coded
 * value and as a neighbour in later contexts) and to every weight, with torch's conventions at
 * the kinks (ReLU's gradient is 0 at 0, a clamp passes it at its bounds, |x|'s is 0 at 0).
 * Latents run in tiles of up to 64 of one row, 8 per vector: a tile's neighbours at one offset
 * are 64 consecutive values of the zero-bordered grid, every layer's rows of the tile stay in
 * L1, and the weights' gradients accumulate in vectors of partial sums. Torch's version of the
 * same step ran about twenty memory-bound passes over (width, latents) tensors.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CTX 64
#define MAX_W 64
#define MAX_LAYERS 8

#include "_tiles.h"
/* x where a > 0, else 0 (ReLU's value for x = a, its gradient's mask otherwise). */
AI static v8 where_pos(v8 a, v8 x) { return (v8)((vi8)(a > splat(0.0f)) & (vi8)x); }

/* One tile's rows: contexts C, pre-activations A and activations Hs of every hidden layer,
 * and the backward's gradients. */
typedef struct {
    v8 C[MAX_CTX][TV], A[MAX_LAYERS][MAX_W][TV], Hs[MAX_LAYERS][MAX_W][TV];
    v8 dH[MAX_W][TV], dZ[MAX_W][TV], dC[MAX_CTX][TV];
    float mean[T], ls[T], gmean[T], gls[T];
} tile;

/* The parameters in torch's order: each hidden layer's weight (width, din) row-major and bias
 * (width), din = K for the first and width after; then the output layer's weight (2, width) and
 * bias (2). `gp` (may be NULL) has the same layout and is added to. The grid `y` is
 * (h + 2 pad, w + 2 pad + T), the (h, w) latents inside a border of `pad` zeros (pad at least
 * every offset's reach) and T more zeros at the end of the buffer; `gy` (may be NULL) has its
 * shape and is added to (its border collects gradients of the zeros, ignored).
 * Returns 0, 1 for sizes beyond the limits, 3 when out of memory. */
CLONES int cinr_rate(const float *y, int64_t h, int64_t w, int64_t pad, const int64_t *off, int64_t K, int64_t layers,
                     int64_t width, const float *p, float lo, float hi, double *bits_out, float *gy, float *gp) {
    if (K < 1 || K > MAX_CTX || width < 1 || width > MAX_W || layers < 1 || layers > MAX_LAYERS || h < 0 || w < 0 ||
        pad < 0)
        return 1;
    for (int64_t k = 0; k < K; k++)
        if (llabs(off[2 * k]) > pad || llabs(off[2 * k + 1]) > pad) return 1;
    const int grad = gy != NULL || gp != NULL;
    const float LN2 = 0.6931471805599453f;
    const float FLOOR = 1.0f / 65536.0f;
    const float LOG_FLOOR = -11.090354888959125f; /* log(2^-16) */
    const float LOG_HALF = -0.6931471805599453f;
    int64_t wofs[MAX_LAYERS], bofs[MAX_LAYERS], din_of[MAX_LAYERS];
    int64_t at = 0;
    for (int64_t l = 0; l < layers; l++) {
        din_of[l] = l == 0 ? K : width;
        wofs[l] = at;
        bofs[l] = at + width * din_of[l];
        at = bofs[l] + width;
    }
    const int64_t wo = at, bo = at + 2 * width, np = bo + 2;
    tile *tl = malloc(sizeof(tile));
    v8 *acc = grad ? malloc((size_t)np * sizeof(v8)) : NULL;
    if (tl == NULL || (grad && acc == NULL)) {
        free(tl);
        free(acc);
        return 3;
    }
    if (acc)
        for (int64_t a = 0; a < np; a++) acc[a] = splat(0.0f);
    const int64_t ws = w + 2 * pad; /* the padded grid's stride */
    int64_t rel[MAX_CTX];
    for (int64_t k = 0; k < K; k++) rel[k] = off[2 * k] * ws + off[2 * k + 1];
    double total = 0.0;
    for (int64_t i = 0; i < h; i++) {
        for (int64_t j0 = 0; j0 < w; j0 += T) {
            const int64_t n = w - j0 < T ? w - j0 : T;
            const int64_t base = (i + pad) * ws + j0 + pad;
            /* contexts: one contiguous run of the padded grid per offset (the zeros past the
             * row's end are the border's or the buffer's tail; lanes past n are ignored) */
            for (int64_t k = 0; k < K; k++) memcpy(tl->C[k], y + base + rel[k], T * sizeof(float));
            for (int64_t l = 0; l < layers; l++) {
                const v8(*in)[TV] = l == 0 ? (const v8(*)[TV])tl->C : (const v8(*)[TV])tl->Hs[l - 1];
                const float *wl = p + wofs[l], *b = p + bofs[l];
                for (int64_t o = 0; o < width; o++) {
                    v8 s[TV];
                    for (int v = 0; v < TV; v++) s[v] = splat(b[o]);
                    const float *wr = wl + o * din_of[l];
                    for (int64_t k = 0; k < din_of[l]; k++) {
                        const v8 wk = splat(wr[k]);
                        for (int v = 0; v < TV; v++) s[v] += wk * in[k][v];
                    }
                    for (int v = 0; v < TV; v++) {
                        tl->A[l][o][v] = s[v];
                        const v8 r = where_pos(s[v], s[v]);
                        tl->Hs[l][o][v] = l == 0 ? r : in[o][v] + r;
                    }
                }
            }
            const v8(*hl)[TV] = (const v8(*)[TV])tl->Hs[layers - 1];
            {
                v8 sm[TV], sl[TV];
                for (int v = 0; v < TV; v++) {
                    sm[v] = splat(p[bo]);
                    sl[v] = splat(p[bo + 1]);
                }
                for (int64_t o = 0; o < width; o++) {
                    const v8 a0 = splat(p[wo + o]), a1 = splat(p[wo + width + o]);
                    for (int v = 0; v < TV; v++) {
                        sm[v] += a0 * hl[o][v];
                        sl[v] += a1 * hl[o][v];
                    }
                }
                memcpy(tl->mean, sm, sizeof sm);
                memcpy(tl->ls, sl, sizeof sl);
            }
            float gxc[T];
            for (int64_t t = 0; t < T; t++) {
                tl->gmean[t] = tl->gls[t] = gxc[t] = 0.0f;
                if (t >= n) continue;
                const float ls = tl->ls[t];
                const int ls_in = ls >= lo && ls <= hi;
                const float s = ls < lo ? lo : (ls > hi ? hi : ls);
                const float diff = y[base + t] - tl->mean[t];
                const float d = fabsf(diff);
                const float u = expf(-s); /* 1 / b */
                float lp, dlp_dd, dlp_ds;
                if (d >= 0.5f) {
                    const float m = -expm1f(-u); /* 1 - e^-u, exact for small u */
                    lp = LOG_HALF - (d - 0.5f) * u + logf(m);
                    dlp_dd = -u;
                    dlp_ds = (d - 0.5f) * u - u * (1.0f - m) / m; /* u / (e^u - 1) */
                } else {
                    const float e1 = expf(-(d + 0.5f) * u), e2 = expf((d - 0.5f) * u);
                    const float qv = 1.0f - 0.5f * e1 - 0.5f * e2;
                    if (qv >= FLOOR) {
                        lp = logf(qv);
                        dlp_dd = (0.5f * u * e1 - 0.5f * u * e2) / qv;
                        dlp_ds = (-0.5f * (d + 0.5f) * u * e1 + 0.5f * (d - 0.5f) * u * e2) / qv;
                    } else {
                        lp = logf(FLOOR);
                        dlp_dd = dlp_ds = 0.0f;
                    }
                }
                if (lp < LOG_FLOOR) {
                    lp = LOG_FLOOR;
                    dlp_dd = dlp_ds = 0.0f;
                }
                total += (double)(-lp / LN2);
                /* d bits = -d lp / ln 2 */
                const float sg = diff > 0.0f ? 1.0f : (diff < 0.0f ? -1.0f : 0.0f);
                const float gd = -dlp_dd / LN2;
                tl->gmean[t] = -gd * sg;
                tl->gls[t] = ls_in ? -dlp_ds / LN2 : 0.0f;
                gxc[t] = gd * sg;
            }
            if (!grad) continue;
            const v8 *gm = (const v8 *)tl->gmean, *gl = (const v8 *)tl->gls;
            if (acc) {
                sum_acc(&acc[bo], gm);
                sum_acc(&acc[bo + 1], gl);
                for (int64_t o = 0; o < width; o++) {
                    dot_acc(&acc[wo + o], gm, hl[o]);
                    dot_acc(&acc[wo + width + o], gl, hl[o]);
                }
            }
            for (int64_t o = 0; o < width; o++) {
                const v8 a0 = splat(p[wo + o]), a1 = splat(p[wo + width + o]);
                for (int v = 0; v < TV; v++) tl->dH[o][v] = a0 * gm[v] + a1 * gl[v];
            }
            for (int64_t l = layers - 1; l >= 0; l--) {
                const int64_t din = din_of[l];
                const v8(*in)[TV] = l == 0 ? (const v8(*)[TV])tl->C : (const v8(*)[TV])tl->Hs[l - 1];
                const float *wl = p + wofs[l];
                for (int64_t o = 0; o < width; o++) {
                    for (int v = 0; v < TV; v++) tl->dZ[o][v] = where_pos(tl->A[l][o][v], tl->dH[o][v]);
                    if (acc) {
                        sum_acc(&acc[bofs[l] + o], tl->dZ[o]);
                        for (int64_t k = 0; k < din; k++) dot_acc(&acc[wofs[l] + o * din + k], tl->dZ[o], in[k]);
                    }
                }
                /* the input's gradient: W^T dZ, plus the residual's dH from the second layer on */
                v8(*dst)[TV] = l == 0 ? tl->dC : tl->dH;
                for (int64_t k = 0; k < din; k++) {
                    v8 s[TV];
                    for (int v = 0; v < TV; v++) s[v] = l == 0 ? splat(0.0f) : dst[k][v];
                    for (int64_t o = 0; o < width; o++) {
                        const v8 wk = splat(wl[o * din + k]);
                        for (int v = 0; v < TV; v++) s[v] += wk * tl->dZ[o][v];
                    }
                    for (int v = 0; v < TV; v++) dst[k][v] = s[v];
                }
            }
            if (gy) {
                for (int64_t t = 0; t < n; t++) gy[base + t] += gxc[t];
                for (int64_t k = 0; k < K; k++) {
                    const float *dc = (const float *)tl->dC[k];
                    float *g = gy + base + rel[k];
                    for (int64_t t = 0; t < n; t++) g[t] += dc[t];
                }
            }
        }
    }
    if (acc && gp)
        for (int64_t a = 0; a < np; a++) gp[a] += hsum(acc[a]);
    free(acc);
    free(tl);
    *bits_out = total;
    return 0;
}
