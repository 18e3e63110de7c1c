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
 * One latent at a time, everything in registers or L1: torch's version of the same step ran
 * about twenty memory-bound passes over (width, latents) tensors.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CTX 64
#define MAX_W 64
#define MAX_LAYERS 8

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 11
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

/* Unaligned (aligned(4)): numpy buffers are not always 32-byte aligned. */
typedef float v8 __attribute__((vector_size(32), aligned(4)));
#define VW 8 /* floats per vector */
#define MAX_V (MAX_W / VW)

typedef int32_t vi8 __attribute__((vector_size(32), aligned(4)));

static inline v8 splat(float x) { return (v8){x, x, x, x, x, x, x, x}; }
/* x where a > 0, else 0 (ReLU's value for x = a, its gradient's mask otherwise). */
static inline v8 where_pos(v8 a, v8 x) { return (v8)((vi8)(a > splat(0.0f)) & (vi8)x); }

/* Parameters, float32, packed by rate.py with every width padded to a multiple of 8 (zeros),
 * Wp = padded width, Kp = padded context: per hidden layer l, its weight transposed WT (din, Wp)
 * (din = K for the first layer, else width), its bias (Wp), its weight W (Wp, dinp) (dinp = Kp
 * or Wp); then the output layer's weight (2, Wp) and bias (2, padded to 8). Gradients `gp` (may
 * be NULL) have the same layout and are added to (the WT blocks stay zero; W's receive the
 * weight gradients); `gy` (may be NULL) is (h, w), added to.
 */
/* The kernel's body for nv output vectors and kv context vectors; inlined with constants for the
 * presets' shape, so that its accumulators stay in registers (with runtime trip counts they went
 * through memory, a store-to-load chain per multiply-add: 3x slower). */
__attribute__((always_inline)) static inline void rate_body(const float *y, int64_t h, int64_t w, int64_t pad, const int64_t *off,
                                                            int64_t K, int64_t layers, int64_t width, const float *p,
                                                            float lo, float hi, double *bits_out, float *gy, float *gp,
                                                            const int64_t nv, const int64_t kv) {
    const int grad = gy != NULL || gp != NULL;
    const float LN2 = 0.6931471805599453f;
    const float FLOOR = 1.0f / 65536.0f;
    const float LOG_FLOOR = -11.090354888959125f; /* log(2^-16) */
    const float LOG_HALF = -0.6931471805599453f;
    const int64_t Wp = nv * VW, Kp = kv * VW;
    int64_t wt_ofs[MAX_LAYERS], b_ofs[MAX_LAYERS], w_ofs[MAX_LAYERS], din_of[MAX_LAYERS], dinv[MAX_LAYERS];
    int64_t at = 0;
    for (int64_t l = 0; l < layers; l++) {
        din_of[l] = l == 0 ? K : width;
        dinv[l] = l == 0 ? kv : nv;
        wt_ofs[l] = at;
        b_ofs[l] = at + din_of[l] * Wp;
        w_ofs[l] = b_ofs[l] + Wp;
        at = w_ofs[l] + Wp * dinv[l] * VW;
    }
    const int64_t wo = at, bo = at + 2 * Wp;
    v8 cv[MAX_CTX / VW], a[MAX_LAYERS][MAX_V], hs[MAX_LAYERS][MAX_V], dh[MAX_V], dz[MAX_V], dc[MAX_CTX / VW];
    float *c = (float *)cv;
    for (int64_t k = 0; k < Kp; k++) c[k] = 0.0f;
    double total = 0.0;
    const int64_t ws = w + 2 * pad; /* the padded grid's stride */
    int64_t rel[MAX_CTX];
    for (int64_t k = 0; k < K; k++) rel[k] = off[2 * k] * ws + off[2 * k + 1];
    for (int64_t i = 0; i < h; i++) {
        for (int64_t j = 0; j < w; j++) {
            const int64_t at = (i + pad) * ws + j + pad;
            for (int64_t k = 0; k < K; k++) {
                c[k] = y[at + rel[k]];
            }
            /* forward: a = b + sum_k in[k] * WT[k] */
            for (int64_t l = 0; l < layers; l++) {
                const float *in = l == 0 ? c : (const float *)hs[l - 1];
                const v8 *wt = (const v8 *)(p + wt_ofs[l]), *b = (const v8 *)(p + b_ofs[l]);
                v8 *al = a[l];
                v8 odd[MAX_V];
                const int64_t din = din_of[l];
                for (int64_t o = 0; o < nv; o++) {
                    al[o] = b[o];
                    odd[o] = splat(0.0f);
                }
                int64_t k = 0;
                for (; k + 1 < din; k += 2) { /* two partial sums: half the dependency chain */
                    const v8 v0 = splat(in[k]), v1 = splat(in[k + 1]);
                    for (int64_t o = 0; o < nv; o++) {
                        al[o] += v0 * wt[k * nv + o];
                        odd[o] += v1 * wt[(k + 1) * nv + o];
                    }
                }
                for (; k < din; k++) {
                    const v8 v = splat(in[k]);
                    for (int64_t o = 0; o < nv; o++) al[o] += v * wt[k * nv + o];
                }
                for (int64_t o = 0; o < nv; o++) al[o] += odd[o];
                for (int64_t o = 0; o < nv; o++) {
                    const v8 r = where_pos(al[o], al[o]);
                    hs[l][o] = l == 0 ? r : hs[l - 1][o] + r;
                }
            }
            const v8 *hl = hs[layers - 1];
            const v8 *wm = (const v8 *)(p + wo), *wl = (const v8 *)(p + wo + Wp);
            v8 sm = splat(0.0f), sl = splat(0.0f);
            for (int64_t o = 0; o < nv; o++) {
                sm += wm[o] * hl[o];
                sl += wl[o] * hl[o];
            }
            float mean = p[bo], ls = p[bo + 1];
            for (int t = 0; t < VW; t++) {
                mean += sm[t];
                ls += sl[t];
            }
            const int ls_in = ls >= lo && ls <= hi;
            const float s = ls < lo ? lo : (ls > hi ? hi : ls);
            const float x = y[at];
            const float diff = x - mean;
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
            if (!grad) continue;
            /* backward: d bits = -d lp / ln 2 */
            const float sg = diff > 0.0f ? 1.0f : (diff < 0.0f ? -1.0f : 0.0f);
            const float gd = -dlp_dd / LN2;
            const float gmean = -gd * sg;
            const float gls = ls_in ? -dlp_ds / LN2 : 0.0f;
            if (gy) gy[at] += gd * sg;
            const v8 gm = splat(gmean), gl = splat(gls);
            if (gp) {
                gp[bo] += gmean;
                gp[bo + 1] += gls;
                v8 *gwm = (v8 *)(gp + wo), *gwl = (v8 *)(gp + wo + Wp);
                for (int64_t o = 0; o < nv; o++) {
                    gwm[o] += gm * hl[o];
                    gwl[o] += gl * hl[o];
                }
            }
            for (int64_t o = 0; o < nv; o++) dh[o] = gm * wm[o] + gl * wl[o];
            for (int64_t l = layers - 1; l >= 0; l--) {
                const int64_t iv = l == 0 ? kv : nv;
                const v8 *in = l == 0 ? cv : hs[l - 1];
                const v8 *wrow = (const v8 *)(p + w_ofs[l]);
                for (int64_t o = 0; o < nv; o++) dz[o] = where_pos(a[l][o], dh[o]);
                const float *dzf = (const float *)dz;
                if (gp) {
                    v8 *gb = (v8 *)(gp + b_ofs[l]);
                    v8 *gw = (v8 *)(gp + w_ofs[l]);
                    for (int64_t o = 0; o < nv; o++) gb[o] += dz[o];
                    for (int64_t o = 0; o < width; o++) {
                        const v8 v = splat(dzf[o]);
                        for (int64_t k = 0; k < iv; k++) gw[o * iv + k] += v * in[k];
                    }
                }
                /* input gradient: W^T dz, plus the residual's dh from the second layer on */
                v8 *dg = l == 0 ? dc : dh;
                v8 e[MAX_V], f[MAX_V];
                for (int64_t k = 0; k < iv; k++) {
                    e[k] = l == 0 ? splat(0.0f) : dg[k];
                    f[k] = splat(0.0f);
                }
                int64_t o = 0;
                for (; o + 1 < width; o += 2) {
                    const v8 v0 = splat(dzf[o]), v1 = splat(dzf[o + 1]);
                    for (int64_t k = 0; k < iv; k++) {
                        e[k] += v0 * wrow[o * iv + k];
                        f[k] += v1 * wrow[(o + 1) * iv + k];
                    }
                }
                for (; o < width; o++) {
                    const v8 v = splat(dzf[o]);
                    for (int64_t k = 0; k < iv; k++) e[k] += v * wrow[o * iv + k];
                }
                for (int64_t k = 0; k < iv; k++) dg[k] = e[k] + f[k];
            }
            if (gy) {
                const float *dcf = (const float *)dc;
                for (int64_t k = 0; k < K; k++) {
                    gy[at + rel[k]] += dcf[k];
                }
            }
        }
    }
    *bits_out = total;
}

/* Parameters and arguments: see above. Returns 0, or 1 for sizes beyond the limits. */
CLONES int cinr_rate(const float *y, int64_t h, int64_t w, int64_t pad, const int64_t *off, int64_t K, int64_t layers,
                     int64_t width, const float *p, float lo, float hi, double *bits_out, float *gy, float *gp) {
    if (K < 1 || K > MAX_CTX || width < 1 || width > MAX_W || layers < 1 || layers > MAX_LAYERS || h < 0 || w < 0 ||
        pad < 0)
        return 1;
    for (int64_t k = 0; k < K; k++)
        if (llabs(off[2 * k]) > pad || llabs(off[2 * k + 1]) > pad) return 1;
    const int64_t nv = (width + VW - 1) / VW, kv = (K + VW - 1) / VW;
    if (nv == 2 && kv == 2) /* the presets: 16 neighbours, 16 wide */
        rate_body(y, h, w, pad, off, K, layers, width, p, lo, hi, bits_out, gy, gp, 2, 2);
    else
        rate_body(y, h, w, pad, off, K, layers, width, p, lo, hi, bits_out, gy, gp, nv, kv);
    return 0;
}
