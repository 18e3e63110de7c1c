/* Training-time forward and backward of the learned upsampling (core/synthesis.py,
 * upsample_learned), on the CPU.
 *
 * Plain C, no Python headers: built on first use like the other kernels and called through
 * ctypes (encode/train/upsampling_grad.py). The upsampling builds stacks
 * S_k = [scale * grid k, crop(double(S_{k+1}, f_k))] from the coarsest grid up, S_0 being the
 * features. double() is separable: a pass along each row, then along each column; output
 * position 2a + e reads x[a], x[a - s], x[a + s], x[a - 2s] (s = 1 for even positions, -1 for odd
 * ones) with the taps f0..f3, indices clamped to the input. Clamping equals reading the input
 * padded by two replicated values at each end, so the row pass reads a padded copy of the row
 * and its transpose gathers (each input's gradient a sum of eight output gradients, read from
 * a zero-padded copy) instead of scattering; the column pass works on whole rows.
 * The forward keeps S_1 ... S_{n-1} in a work buffer; the backward walks the stacks down: grid
 * k's gradient is scale times channel 0 of S_k's, the rest goes back through the column and
 * row passes, and each pass adds to the taps' gradient its output gradient times the input read.
 * Sums of products run in 8 lanes (vectorized; the order of float sums differs from torch's).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/_kernels.h"

#define MAX_GRIDS 16
#define LANES 8

/* xp (n + 4) = x (n) with two copies of each end value either side. */
AI static void pad_row(const float *x, int64_t n, float *xp) {
    xp[0] = xp[1] = x[0];
    memcpy(xp + 2, x, (size_t)n * sizeof(float));
    xp[n + 2] = xp[n + 3] = x[n - 1];
}

/* n_out outputs of double() along a row from its padded input xp. */
AI static void fwd_row(const float *xp, const float *f, int64_t n_out, float *out) {
    const int64_t half = n_out / 2;
    for (int64_t a = 0; a < half; a++) {
        const float *p = xp + a; /* p[2] = x[a] */
        out[2 * a] = f[0] * p[2] + f[1] * p[1] + f[2] * p[3] + f[3] * p[0];
        out[2 * a + 1] = f[0] * p[2] + f[1] * p[3] + f[2] * p[1] + f[3] * p[4];
    }
    if (n_out & 1) {
        const float *p = xp + half;
        out[n_out - 1] = f[0] * p[2] + f[1] * p[1] + f[2] * p[3] + f[3] * p[0];
    }
}

/* The row pass's transpose: gx (n_in, added to) += what the outputs' gradients g (n_out) send
 * back through the reads of the padded input xp; gf += g times the values read. gz: scratch of
 * n_out + 2 * n_in + 24 floats. */
AI static void bwd_row(const float *xp, int64_t n_in, const float *f, const float *g, int64_t n_out, float *gz,
                       float *gx, float *gf) {
    /* gz[8 + i] = g[i] for 0 <= i < n_out, zero around: every read below stays inside. */
    const int64_t len = 2 * n_in + 16;
    memset(gz, 0, (size_t)(len + 8) * sizeof(float));
    memcpy(gz + 8, g, (size_t)n_out * sizeof(float));
    const float *G = gz + 8;
    /* Padded input m (from -2 to n_in + 1) is read by even outputs 2m, 2m + 2, 2m - 2, 2m + 4 and
     * odd ones 2m + 1, 2m - 1, 2m + 3, 2m - 3 (taps f0, f1, f2, f3 in that order). */
    float edge[4];
    for (int64_t m = -2; m < n_in + 2; m++) {
        const float *q = G + 2 * m;
        const float v = f[0] * (q[0] + q[1]) + f[1] * (q[2] + q[-1]) + f[2] * (q[-2] + q[3]) + f[3] * (q[4] + q[-3]);
        if (m < 0)
            edge[m + 2] = v;
        else if (m >= n_in)
            edge[m - n_in + 2] = v;
        else
            gx[m] += v;
        if (m == -1) gx[0] += edge[0] + edge[1];
    }
    gx[n_in - 1] += edge[2] + edge[3];
    /* Taps: even output 2a reads x[a], x[a-1], x[a+1], x[a-2]; odd 2a+1 reads x[a], x[a+1],
     * x[a-1], x[a+2] (xp[a + 2] = x[a]); outputs past n_out are zero in G. */
    const int64_t na = (n_out + 1) / 2;
    float acc[4][LANES] = {{0}};
    int64_t a = 0;
    for (; a + LANES <= na; a += LANES)
        for (int l = 0; l < LANES; l++) {
            const float *p = xp + a + l;
            const float ge = G[2 * (a + l)], go = G[2 * (a + l) + 1];
            acc[0][l] += (ge + go) * p[2];
            acc[1][l] += ge * p[1] + go * p[3];
            acc[2][l] += ge * p[3] + go * p[1];
            acc[3][l] += ge * p[0] + go * p[4];
        }
    for (; a < na; a++) {
        const float *p = xp + a;
        const float ge = G[2 * a], go = G[2 * a + 1];
        acc[0][0] += (ge + go) * p[2];
        acc[1][0] += ge * p[1] + go * p[3];
        acc[2][0] += ge * p[3] + go * p[1];
        acc[3][0] += ge * p[0] + go * p[4];
    }
    for (int t = 0; t < 4; t++)
        for (int l = 0; l < LANES; l++) gf[t] += acc[t][l];
}

/* The column pass's transpose (``double_cols``, core/_kernels.h): gT (hc rows of w, added to)
 * += what gout (h rows of w) sends back; gf += gout times the rows of T read. */
AI static void bwd_cols(const float *T, int64_t hc, int64_t w, const float *f, int64_t h, const float *gout, float *gT,
                        float *gf) {
    for (int64_t i = 0; i < h; i++) {
        const int64_t a = i >> 1, s = (i & 1) ? -1 : 1;
        const int64_t r[4] = {clamp_index(a, hc), clamp_index(a - s, hc), clamp_index(a + s, hc),
                              clamp_index(a - 2 * s, hc)};
        const float *go = gout + i * w;
        for (int t = 0; t < 4; t++) {
            const float *x = T + r[t] * w;
            float *g = gT + r[t] * w;
            const float ft = f[t];
            float acc[LANES] = {0};
            int64_t c = 0;
            for (; c + LANES <= w; c += LANES)
                for (int l = 0; l < LANES; l++) {
                    g[c + l] += ft * go[c + l];
                    acc[l] += go[c + l] * x[c + l];
                }
            for (; c < w; c++) {
                g[c] += ft * go[c];
                acc[0] += go[c] * x[c];
            }
            for (int l = 0; l < LANES; l++) gf[t] += acc[l];
        }
    }
}

static int check(const int64_t *hs, const int64_t *ws, int64_t n) {
    if (n < 1 || n > MAX_GRIDS) return 2;
    for (int64_t k = 0; k < n; k++) {
        if (hs[k] < 1 || ws[k] < 1 || hs[k] > (1 << 16) || ws[k] > (1 << 16)) return 2;
        /* double() then a crop: each finer grid at most twice the coarser one */
        if (k > 0 && (hs[k - 1] > 2 * hs[k] || ws[k - 1] > 2 * ws[k])) return 2;
    }
    return 0;
}

/* Floats of the work buffer the forward fills and the backward reads: S_1 ... S_{n-1}. */
int64_t cinr_upsample_train_size(const int64_t *hs, const int64_t *ws, int64_t n) {
    if (check(hs, ws, n)) return -1;
    int64_t size = 0;
    for (int64_t k = 1; k < n; k++) size += (n - k) * hs[k] * ws[k];
    return size;
}

/* Stack k's planes inside the work buffer (k >= 1). */
static float *stack_at(float *work, const int64_t *hs, const int64_t *ws, int64_t n, int64_t k) {
    float *p = work;
    for (int64_t j = 1; j < k; j++) p += (n - j) * hs[j] * ws[j];
    return p;
}

/* One doubling: planes (c of hc x wc) -> (c of h x w) into out, through scratch rows. */
AI static void double_planes(const float *src, int64_t c, int64_t hc, int64_t wc, const float *f, int64_t h, int64_t w,
                             float *T, float *xp, float *out) {
    for (int64_t ch = 0; ch < c; ch++) {
        for (int64_t y = 0; y < hc; y++) {
            pad_row(src + (ch * hc + y) * wc, wc, xp);
            fwd_row(xp, f, w, T + y * w);
        }
        double_cols(T, hc, w, f, 0, h, out + ch * h * w);
    }
}

/*
 * Forward: the learned upsampling of n grids (finest first, grid k of hs[k] x ws[k] at grids[k],
 * float32 row-major, each times scale; the output the size of grid 0) into out (n planes), the
 * stacks S_1 ... S_{n-1} into work (cinr_upsample_train_size floats). Returns 0, 2 for arguments
 * out of range, 3 when out of memory.
 */
CLONES int cinr_upsample_train_fwd(const float *const *grids, const int64_t *hs, const int64_t *ws, int64_t n,
                                   const float *filters, float scale, float *out, float *work) {
    if (check(hs, ws, n)) return 2;
    const int64_t w0 = ws[0];
    float *T = malloc((size_t)(hs[0] * w0) * sizeof(float));
    float *xp = malloc((size_t)(w0 + 8) * sizeof(float));
    if (!T || !xp) {
        free(T);
        free(xp);
        return 3;
    }
    for (int64_t k = n - 1; k >= 0; k--) {
        const int64_t h = hs[k], w = ws[k], P = h * w;
        float *S = k == 0 ? out : stack_at(work, hs, ws, n, k);
        for (int64_t i = 0; i < P; i++) S[i] = grids[k][i] * scale;
        if (k < n - 1)
            double_planes(stack_at(work, hs, ws, n, k + 1), n - 1 - k, hs[k + 1], ws[k + 1], filters + 4 * k, h, w, T,
                          xp, S + P);
    }
    free(T);
    free(xp);
    return 0;
}

/*
 * Backward: given the forward's work buffer and the gradient gout of its output (n planes of
 * hs[0] x ws[0]), each grid's gradient into ggrids[k] (hs[k] x ws[k], overwritten) and the taps'
 * into gfilters ((n - 1) x 4, overwritten). Returns 0, 2 for arguments out of range, 3 when out
 * of memory.
 */
CLONES int cinr_upsample_train_bwd(const int64_t *hs, const int64_t *ws, int64_t n, const float *filters, float scale,
                                   float *work, const float *gout, float *const *ggrids, float *gfilters) {
    if (check(hs, ws, n)) return 2;
    const int64_t P0 = hs[0] * ws[0], w0 = ws[0];
    float *T = malloc((size_t)P0 * sizeof(float));
    float *gT = malloc((size_t)P0 * sizeof(float));
    float *G = malloc((size_t)(n * P0) * sizeof(float));
    float *Gn = malloc((size_t)(n * P0) * sizeof(float));
    float *xp = malloc((size_t)(w0 + 8) * sizeof(float));
    float *gz = malloc((size_t)(3 * w0 + 64) * sizeof(float));
    int rc = (!T || !gT || !G || !Gn || !xp || !gz) ? 3 : 0;
    if (rc == 0) {
        memcpy(G, gout, (size_t)(n * P0) * sizeof(float));
        for (int64_t t = 0; t < 4 * (n - 1); t++) gfilters[t] = 0.0f;
        for (int64_t k = 0; k < n; k++) {
            const int64_t h = hs[k], w = ws[k], P = h * w;
            for (int64_t i = 0; i < P; i++) ggrids[k][i] = G[i] * scale;
            if (k == n - 1) break;
            const int64_t hc = hs[k + 1], wc = ws[k + 1], Pc = hc * wc;
            const float *f = filters + 4 * k;
            const float *stack = stack_at(work, hs, ws, n, k + 1);
            float gf[4] = {0, 0, 0, 0};
            memset(Gn, 0, (size_t)((n - 1 - k) * Pc) * sizeof(float));
            for (int64_t ch = 0; ch < n - 1 - k; ch++) {
                const float *src = stack + ch * Pc;
                for (int64_t y = 0; y < hc; y++) {
                    pad_row(src + y * wc, wc, xp);
                    fwd_row(xp, f, w, T + y * w);
                }
                memset(gT, 0, (size_t)(hc * w) * sizeof(float));
                bwd_cols(T, hc, w, f, h, G + (ch + 1) * P, gT, gf);
                for (int64_t y = 0; y < hc; y++) {
                    pad_row(src + y * wc, wc, xp);
                    bwd_row(xp, wc, f, gT + y * w, w, gz, Gn + ch * Pc + y * wc, gf);
                }
            }
            for (int t = 0; t < 4; t++) gfilters[4 * k + t] = gf[t];
            float *swap = G;
            G = Gn;
            Gn = swap;
        }
    }
    free(T);
    free(gT);
    free(G);
    free(Gn);
    free(xp);
    free(gz);
    return rc;
}
