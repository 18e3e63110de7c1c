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
AI static v8 where_pos(v8 a, v8 x) { return keep((vi8)(a > splat(0.0f)), x); }

/* |x| on 8 lanes (the sign bit cleared). */
AI static v8 vabs(v8 x) { return (v8)((vi8)x & 0x7fffffff); }

/* e^x on 8 lanes (x clamped to [-87, 88]): x = n ln 2 + r, |r| <= ln 2 / 2, e^r by Cephes'
 * degree-6 polynomial, 2^n into the exponent; within 2 ulp of expf over the range. The scalar
 * libm calls (expf, expm1f, logf per latent) were a third of this kernel's time. */
AI static v8 vexp(v8 x) {
    x = blend((vi8)(x < splat(-87.0f)), splat(-87.0f), x);
    x = blend((vi8)(x > splat(88.0f)), splat(88.0f), x);
    const v8 magic = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    const v8 n = (x * splat(1.44269504088896341f) + magic) - magic;
    const v8 r = x - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
    v8 q = splat(1.9875691500E-4f);
    q = q * r + splat(1.3981999507E-3f);
    q = q * r + splat(8.3334519073E-3f);
    q = q * r + splat(4.1665795894E-2f);
    q = q * r + splat(1.6666665459E-1f);
    q = q * r + splat(5.0000001201E-1f);
    q = q * r * r + r + splat(1.0f);
    const vi8 e = (__builtin_convertvector(n, vi8) + 127) << 23;
    return q * (v8)e;
}

/* 1 - e^-u for u >= 0 on 8 lanes, accurate for small u too (expm1's job): a series below 1/2. */
AI static v8 vone_minus_exp_neg(v8 u) {
    /* u - u^2/2 + u^3/6 - ... to u^9 / 9!: below 1/2 the next term is under 2e-9 of u */
    v8 q = splat(-1.0f / 362880.0f);
    q = q * u + splat(1.0f / 40320.0f);
    q = q * u + splat(-1.0f / 5040.0f);
    q = q * u + splat(1.0f / 720.0f);
    q = q * u + splat(-1.0f / 120.0f);
    q = q * u + splat(1.0f / 24.0f);
    q = q * u + splat(-1.0f / 6.0f);
    q = q * u + splat(0.5f);
    const v8 series = u - q * u * u;
    return blend((vi8)(u < splat(0.5f)), series, splat(1.0f) - vexp(-u));
}

/* log(x) for x > 0 on 8 lanes: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log(m) by Cephes'
 * polynomial in m - 1; within 2 ulp of logf for normal x (every caller's x is at least 2^-16). */
AI static v8 vlog(v8 x) {
    const vi8 bits = (vi8)x;
    vi8 e = ((bits >> 23) & 0xff) - 126;
    v8 m = (v8)((bits & 0x007fffff) | 0x3f000000); /* in [1/2, 1) */
    const vi8 small = (vi8)(m < splat(0.707106781186547524f));
    e = e + small; /* small lanes: e - 1 (the mask is -1) */
    m = blend(small, m + m, m) - splat(1.0f);
    const v8 z = m * m;
    v8 y = splat(7.0376836292E-2f);
    y = y * m + splat(-1.1514610310E-1f);
    y = y * m + splat(1.1676998740E-1f);
    y = y * m + splat(-1.2420140846E-1f);
    y = y * m + splat(1.4249322787E-1f);
    y = y * m + splat(-1.6668057665E-1f);
    y = y * m + splat(2.0000714765E-1f);
    y = y * m + splat(-2.4999993993E-1f);
    y = y * m + splat(3.3333331174E-1f);
    const v8 ef = __builtin_convertvector(e, v8);
    y = y * m * z + ef * splat(-2.12194440e-4f) - splat(0.5f) * z;
    return m + y + ef * splat(0.693359375f);
}

/* One tile's rows: contexts C, pre-activations A and activations Hs of every hidden layer,
 * and the backward's gradients. */
typedef struct {
    v8 C[MAX_CTX][TV], A[MAX_LAYERS][MAX_W][TV], Hs[MAX_LAYERS][MAX_W][TV];
    v8 dH[MAX_W][TV], dZ[MAX_W][TV], dC[MAX_CTX][TV];
    float mean[T], ls[T], gmean[T], gls[T];
} tile;

/* The vector functions on n values (n a multiple of 8), for the tests: e^x, 1 - e^-|x|, log|x|. */
CLONES void cinr_rate_vmath(const float *x, int64_t n, float *exp_out, float *om_out, float *log_out) {
    for (int64_t i = 0; i + VW <= n; i += VW) {
        v8 v;
        memcpy(&v, x + i, sizeof v);
        const v8 a = vabs(v), e = vexp(v), om = vone_minus_exp_neg(a), l = vlog(a);
        memcpy(exp_out + i, &e, sizeof e);
        memcpy(om_out + i, &om, sizeof om);
        memcpy(log_out + i, &l, sizeof l);
    }
}

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
            /* The bits of each latent's unit bin, 8 lanes at a time, both formulas computed and
             * the right one kept (lanes past n give zeros). */
            float gxc[T];
            v8 tsum = splat(0.0f);
            for (int v = 0; v < TV; v++) {
                const v8 ls = ((const v8 *)tl->ls)[v], mean = ((const v8 *)tl->mean)[v];
                v8 yv;
                memcpy(&yv, y + base + v * VW, sizeof yv);
                const vi8 live = (vi8)((v8){0, 1, 2, 3, 4, 5, 6, 7} + splat((float)(v * VW)) < splat((float)n));
                const vi8 ls_in = (vi8)(ls >= splat(lo)) & (vi8)(ls <= splat(hi));
                v8 sc = blend((vi8)(ls < splat(lo)), splat(lo), ls);
                sc = blend((vi8)(sc > splat(hi)), splat(hi), sc);
                const v8 diff = yv - mean;
                const v8 d = vabs(diff);
                const v8 u = vexp(-sc); /* 1 / b */
                /* beyond half a step from the mean: the tail formula */
                const v8 m = vone_minus_exp_neg(u);
                const v8 dh = d - splat(0.5f);
                const v8 lp_t = splat(LOG_HALF) - dh * u + vlog(m);
                const v8 ds_t = dh * u - u * (splat(1.0f) - m) / m; /* u / (e^u - 1) */
                /* inside it: the centre formula, floored */
                const v8 e1 = vexp(-(d + splat(0.5f)) * u), e2 = vexp(dh * u);
                const v8 qv = splat(1.0f) - splat(0.5f) * e1 - splat(0.5f) * e2;
                const vi8 q_ok = (vi8)(qv >= splat(FLOOR));
                const v8 qs = blend(q_ok, qv, splat(1.0f));
                const v8 lp_c = blend(q_ok, vlog(qs), splat(LOG_FLOOR));
                const v8 dd_c = keep(q_ok, (splat(0.5f) * u * e1 - splat(0.5f) * u * e2) / qs);
                const v8 ds_c =
                    keep(q_ok, (splat(-0.5f) * (d + splat(0.5f)) * u * e1 + splat(0.5f) * dh * u * e2) / qs);
                const vi8 tail = (vi8)(d >= splat(0.5f));
                v8 lp = blend(tail, lp_t, lp_c);
                v8 dd = blend(tail, -u, dd_c);
                v8 ds = blend(tail, ds_t, ds_c);
                const vi8 floored = (vi8)(lp < splat(LOG_FLOOR));
                lp = blend(floored, splat(LOG_FLOOR), lp);
                dd = keep(~floored, dd);
                ds = keep(~floored, ds);
                tsum += keep(live, -lp / splat(LN2));
                /* d bits = -d lp / ln 2 */
                const v8 sg = keep((vi8)(diff > splat(0.0f)), splat(1.0f)) + keep((vi8)(diff < splat(0.0f)), splat(-1.0f));
                const v8 gd = -dd / splat(LN2);
                ((v8 *)tl->gmean)[v] = keep(live, -gd * sg);
                ((v8 *)tl->gls)[v] = keep(live & ls_in, -ds / splat(LN2));
                const v8 gx = keep(live, gd * sg);
                memcpy(gxc + v * VW, &gx, sizeof gx);
            }
            total += (double)hsum(tsum);
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
