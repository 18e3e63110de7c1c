/* Compiled decoding of compressive-CINR latent grids (coding/entropy.py, spec section 5.4).
 *
 * Plain C, no Python headers: built on first use like core/_native.c and called through
 * ctypes. It decodes exactly what entropy.decode_grids decodes, in the same order:
 *   - the context model in int64 fixed point with wrapping (two's-complement) arithmetic,
 *     as numpy's int64 arrays compute it;
 *   - the range decoder of constriction's queue coder (32-bit words, 64-bit state,
 *     24-bit probabilities), with the categorical rows quantized as constriction's
 *     "fast" quantization does (the integer CDF table is computed once in Python);
 *   - anti-diagonal wavefronts t = a * row + col, rows ascending inside one, the escapes'
 *     excesses (uniform) after each wavefront's symbols.
 * Every latent of a wavefront has its context decoded already, so the context model runs on the
 * wavefront first, GROUP latents at a time in double precision (exact: integers below 2**52;
 * a latent whose values leave that bound takes the int64 path), then the range decoder reads
 * its symbols. Everything is exact integer arithmetic, so the decoded grids are the same bits
 * everywhere.
 * Every index is bounded by the grid's own size; a stream that runs out reads zero words
 * (as constriction does) and an impossible quantile is an error: no input can make it
 * read or write outside its buffers or loop longer than the grid's size.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PRECISION 24
#define MAX_WIDTH 64
#define MAX_LAYERS 8
#define MAX_CTX 64
#define CHUNK 16
#define SMALL 4
#define GROUP 8

/* Columns a layer of dout outputs is padded to: SMALL for the output layer, else CHUNKs. */
static inline int64_t padded(int64_t dout) { return dout <= SMALL ? SMALL : (dout + CHUNK - 1) / CHUNK * CHUNK; }

/* CLONES: the target clones of the float kernels (x86-64-v3 where GCC knows it; its FMA changes
 * nothing here, every product and sum being an exact integer). */
#include "../core/_kernels.h"

/* The grouped context model's vectors: GCC/Clang vectors of 4 doubles (the compiler's own
 * vectorization of the plain loops chose shuffles, kept no accumulator in a register and left
 * the layers' rounding scalar). Macros, not functions, so that each target clone inlines them. */
typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));
#define load4(p)                                                                                                       \
    __extension__({                                                                                                    \
        v4d v_;                                                                                                        \
        memcpy(&v_, (p), sizeof(v_));                                                                                  \
        v_;                                                                                                            \
    })
#define store4(p, v)                                                                                                   \
    do {                                                                                                               \
        v4d s_ = (v);                                                                                                  \
        memcpy((p), &s_, sizeof(s_));                                                                                  \
    } while (0)
/* 1.5 * 2**52: a double of magnitude below 2**51 plus MAGIC, minus MAGIC, is rounded to the
 * nearest integer (ties to even), exactly. */
#define MAGIC 6755399441055744.0

/* acc[0..CHUNK) = sum_k x[k] * w[k * stride + j]: independent accumulators the compiler keeps
 * in vector registers (exact: every product and partial sum is an integer below 2**52). */
CLONES static void dense_chunk(const double *w, int64_t stride, const int64_t *x, int64_t din, double *acc) {
    double a[CHUNK] = {0};
    for (int64_t k = 0; k < din; k++) {
        const double xk = (double)x[k];
        const double *col = w + k * stride;
        for (int j = 0; j < CHUNK; j++) a[j] += xk * col[j];
    }
    for (int j = 0; j < CHUNK; j++) acc[j] = a[j];
}

CLONES static void dense_small(const double *w, const int64_t *x, int64_t din, double *acc) {
    double a[SMALL] = {0};
    for (int64_t k = 0; k < din; k++) {
        const double xk = (double)x[k];
        for (int j = 0; j < SMALL; j++) a[j] += xk * w[k * SMALL + j];
    }
    for (int j = 0; j < SMALL; j++) acc[j] = a[j];
}

/* The same products for GROUP latents at once (rows of MAX_WIDTH in x and acc), in register
 * tiles of 4 latents x 8 outputs (8 vector accumulators): each weight loaded serves 4 latents. */
CLONES static void dense_group_chunk(const double *w, int64_t stride, const double *x, int64_t din, double *acc) {
    for (int b0 = 0; b0 < GROUP; b0 += 4)
        for (int j0 = 0; j0 < CHUNK; j0 += 8) {
            v4d a[4][2];
            memset(a, 0, sizeof(a));
            for (int64_t k = 0; k < din; k++) {
                const double *col = w + k * stride + j0;
                const v4d c0 = load4(col), c1 = load4(col + 4);
                for (int b = 0; b < 4; b++) {
                    const double xb = x[(b0 + b) * MAX_WIDTH + k];
                    a[b][0] += xb * c0;
                    a[b][1] += xb * c1;
                }
            }
            for (int b = 0; b < 4; b++) {
                store4(acc + (b0 + b) * MAX_WIDTH + j0, a[b][0]);
                store4(acc + (b0 + b) * MAX_WIDTH + j0 + 4, a[b][1]);
            }
        }
}

/* dense_group_chunk's products for the first layer, read straight from the scaled grid: latent b's
 * k-th input is xp[b][rel[k]] (no copy of the contexts first). */
CLONES static void dense_group_ctx(const double *w, int64_t stride, const double *const *xp, const int64_t *rel,
                                   int64_t din, double *acc) {
    for (int b0 = 0; b0 < GROUP; b0 += 4)
        for (int j0 = 0; j0 < CHUNK; j0 += 8) {
            const double *p0 = xp[b0], *p1 = xp[b0 + 1], *p2 = xp[b0 + 2], *p3 = xp[b0 + 3];
            v4d a[4][2];
            memset(a, 0, sizeof(a));
            for (int64_t k = 0; k < din; k++) {
                const double *col = w + k * stride + j0;
                const v4d c0 = load4(col), c1 = load4(col + 4);
                const int64_t r = rel[k];
                const double x0 = p0[r], x1 = p1[r], x2 = p2[r], x3 = p3[r];
                a[0][0] += x0 * c0;
                a[0][1] += x0 * c1;
                a[1][0] += x1 * c0;
                a[1][1] += x1 * c1;
                a[2][0] += x2 * c0;
                a[2][1] += x2 * c1;
                a[3][0] += x3 * c0;
                a[3][1] += x3 * c1;
            }
            for (int b = 0; b < 4; b++) {
                store4(acc + (b0 + b) * MAX_WIDTH + j0, a[b][0]);
                store4(acc + (b0 + b) * MAX_WIDTH + j0 + 4, a[b][1]);
            }
        }
}

CLONES static void dense_group_small(const double *w, const double *x, int64_t din, double *acc) {
    v4d a[GROUP];
    memset(a, 0, sizeof(a));
    for (int64_t k = 0; k < din; k++) {
        const v4d col = load4(w + k * SMALL);
        for (int b = 0; b < GROUP; b++) a[b] += x[b * MAX_WIDTH + k] * col;
    }
    for (int b = 0; b < GROUP; b++) store4(acc + b * MAX_WIDTH, a[b]);
}

typedef struct {
    uint64_t lower, range, point, pos;
} rc_state;

static inline uint32_t next_word(const uint32_t *words, int64_t n_words, rc_state *s) {
    if ((int64_t)s->pos < n_words) return words[s->pos++];
    return 0;
}

/* One symbol's quantile; -1 when the stream is not a valid one. */
static inline int64_t rc_quantile(const rc_state *s, uint64_t *scale) {
    *scale = s->range >> PRECISION;
    if (*scale == 0) return -1;
    uint64_t q = (s->point - s->lower) / *scale;
    if (q >= ((uint64_t)1 << PRECISION)) return -1;
    return (int64_t)q;
}

static inline void rc_update(rc_state *s, const uint32_t *words, int64_t n_words, uint64_t scale,
                             uint64_t left, uint64_t prob) {
    s->lower += scale * left;
    s->range = scale * prob;
    if (s->range < ((uint64_t)1 << 32)) {
        s->lower <<= 32;
        s->range <<= 32;
        s->point = (s->point << 32) | next_word(words, n_words, s);
    }
}

/* Arithmetic right shift and rounding shift of a wrapped int64, as numpy computes them. */
static inline int64_t sar(int64_t v, int s) { return v >= 0 ? v >> s : ~((~v) >> s); }
static inline int64_t wadd(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
static inline int64_t wmul(int64_t a, int64_t b) { return (int64_t)((uint64_t)a * (uint64_t)b); }
static inline int64_t wshl(int64_t a, int s) { return (int64_t)((uint64_t)a << s); }
static inline int64_t round_shift(int64_t v, int s) { return s > 0 ? sar(wadd(v, (int64_t)1 << (s - 1)), s) : v; }
static inline int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b, r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? q - 1 : q;
}

/* The context model's last layer (mean, log-scale; fixed point) for the latent at idx.
 *
 * Every value is an integer. While they stay below 2**52 in magnitude, double-precision
 * products and sums of them are exact, hence equal to the int64 results, and much faster
 * to compute; inputs too large for that bound take the int64 path with wrapping arithmetic
 * (what numpy computes), so both give the same bits for any input. */
static void context_mlp(const int64_t *grid, int64_t idx, const int64_t *rel, int64_t n_ctx, int64_t n_layers,
                        const int64_t *dims, const int64_t *shifts, const int64_t *const *wp,
                        const int64_t *const *bp, const double *const *wd, int frac, int64_t *zbuf) {
    int64_t x[MAX_WIDTH], hbuf[MAX_WIDTH];
    /* |h| < 2**31 and |weight| < 2**15 (checked by the caller) keep every sum of at most
     * MAX_WIDTH products below 2**52. */
    const int64_t bound = (int64_t)1 << 31;
    int fast = 1;
    for (int64_t k = 0; k < n_ctx; k++) {
        int64_t v = grid[idx + rel[k]];
        x[k] = wshl(v, frac);
        if (v >= (bound >> frac) || v <= -(bound >> frac)) fast = 0;
    }
    int64_t din = n_ctx;
    for (int64_t l = 0; l < n_layers; l++) {
        int64_t dout = dims[2 * l + 1];
        int ws = (int)shifts[2 * l], bs = (int)shifts[2 * l + 1];
        if (fast) {
            /* Input-major weights, outputs padded to CHUNK: CHUNK independent accumulators that
             * the compiler keeps in vector registers. */
            const int64_t dpad = padded(dout);
            double acc[MAX_WIDTH];
            if (dpad == SMALL)
                dense_small(wd[l], x, din, acc);
            else
                for (int64_t j0 = 0; j0 < dpad; j0 += CHUNK) dense_chunk(wd[l] + j0, dpad, x, din, acc + j0);
            for (int64_t j = 0; j < dout; j++)
                zbuf[j] = wadd(round_shift((int64_t)acc[j], ws), wshl(bp[l][j], frac - bs));
        } else {
            const int64_t *W = wp[l];
            for (int64_t j = 0; j < dout; j++) {
                int64_t acc = 0;
                const int64_t *row = W + j * din;
                for (int64_t k = 0; k < din; k++) acc = wadd(acc, wmul(x[k], row[k]));
                zbuf[j] = wadd(round_shift(acc, ws), wshl(bp[l][j], frac - bs));
            }
        }
        if (l == n_layers - 1) break;
        for (int64_t j = 0; j < dout; j++) {
            int64_t z = zbuf[j] > 0 ? zbuf[j] : 0;
            hbuf[j] = l > 0 ? wadd(x[j], z) : z;
            if (hbuf[j] >= bound || hbuf[j] <= -bound) fast = 0;
        }
        memcpy(x, hbuf, (size_t)dout * sizeof(int64_t));
        din = dout;
    }
}

/* The context model of GROUP latents at once, all in double precision: ``context_mlp``'s fast
 * path with the rounding shift, the bias and the activations on doubles too. Every value is an
 * integer below 2**52 while each layer's inputs stay below 2**31, so each operation is exact
 * (floor((v + 2**(s-1)) * 2**-s) is the arithmetic shift; for s > 52 both give 0 or -1 alike, as
 * |v| < 2**52). idx[b] < 0 marks an unused row. z receives the last layer's two outputs per
 * latent. Returns a mask of the latents whose inputs left the bound: the caller recomputes them
 * with context_mlp (the int64 path). gridd mirrors grid, each value times 2**frac, while big is 0
 * (no value decoded so far is out of the bound); then the contexts are read from it unchecked.
 * bd holds each layer's biases already shifted, as doubles, mbd 1.5 * 2**52 minus them (made once
 * per grid); halves and invs each layer's 2**(s-1) (0 for s = 0) and 2**-s. */
CLONES static int context_group(const int64_t *grid, const double *gridd, int big, const int64_t *idx,
                                const int64_t *rel, int64_t n_ctx, int64_t n_layers, const int64_t *dims,
                                const double *const *wd, const double *const *bd, const double *const *mbd,
                                const double *halves, const double *invs, int frac, int64_t z[GROUP][2]) {
    double buf0[GROUP * MAX_WIDTH], buf1[GROUP * MAX_WIDTH];
    double *x = buf0, *acc = buf1;
    const int64_t lim = ((int64_t)1 << 31) >> frac;
    const double bound = (double)((int64_t)1 << 31);
    int bad = 0;
    /* While every value decoded so far is in bound (!big), gridd holds them scaled, and a first
     * layer of CHUNK-padded outputs reads them there (an unused row reads the first row's). */
    const int direct = !big && padded(dims[1]) != SMALL;
    const double *xp[GROUP];
    for (int b = 0; b < GROUP; b++) {
        double *xb = x + b * MAX_WIDTH;
        xp[b] = gridd + (idx[b] >= 0 ? idx[b] : idx[0]);
        if (direct) continue;
        if (idx[b] < 0) {
            for (int64_t k = 0; k < n_ctx; k++) xb[k] = 0.0;
            continue;
        }
        if (!big) {
            for (int64_t k = 0; k < n_ctx; k++) xb[k] = xp[b][rel[k]];
            continue;
        }
        const int64_t *g = grid + idx[b];
        int out = 0;
        for (int64_t k = 0; k < n_ctx; k++) {
            const int64_t v = g[rel[k]];
            out |= (v >= lim) | (v <= -lim);
            xb[k] = (double)v * (double)((int64_t)1 << frac); /* exact when in bound */
        }
        if (out) bad |= 1 << b;
    }
    int64_t din = n_ctx;
    for (int64_t l = 0; l < n_layers; l++) {
        const int64_t dout = dims[2 * l + 1], dpad = padded(dout);
        const double half = halves[l], inv = invs[l], *bias = bd[l], *mb = mbd[l];
        if (dpad == SMALL)
            dense_group_small(wd[l], x, din, acc);
        else if (l == 0 && direct)
            for (int64_t j0 = 0; j0 < dpad; j0 += CHUNK) dense_group_ctx(wd[l] + j0, dpad, xp, rel, din, acc + j0);
        else
            for (int64_t j0 = 0; j0 < dpad; j0 += CHUNK) dense_group_chunk(wd[l] + j0, dpad, x, din, acc + j0);
        if (l == n_layers - 1) {
            for (int b = 0; b < GROUP; b++) {
                const int ok = !((bad >> b) & 1); /* a bad row's doubles may be anything: not converted */
                for (int j = 0; j < 2; j++) {
                    const double v = floor((acc[b * MAX_WIDTH + j] + half) * inv) + bias[j];
                    z[b][j] = ok ? (int64_t)v : 0;
                }
            }
            break;
        }
        /* The rounding shift (for s = 0, half = 0 and inv = 1), bias, ReLU and the residual
         * after the first layer (layer 0 reads no x: it holds only din values), 4 outputs at a
         * time. floor((a + 2**(s-1)) * 2**-s) is a * 2**-s + 2**-(s+1) rounded to the nearest
         * integer: an exact double (53 significant bits for |a| < 2**52) whose distance to the
         * nearest integer is below 1/2 (no ties), rounded by adding and subtracting 1.5 * 2**52,
         * exact below 2**51; the bias goes in with the subtraction (M - bias: exact, bias below
         * 2**40). A larger sum (|a| < 2**52 here) ends either past the bound (positive: the row
         * is recomputed) or at 0 after the ReLU (negative, as the exact floor would), so every
         * value kept is exact. Every output is at least 0 (a ReLU, plus inputs that are the layer
         * before's outputs), so only the upper bound on the next inputs is checked, for the whole
         * group at once; rows are told apart only when one fails. */
        const int resid = l > 0;
        const int64_t d4 = dout / 4 * 4;
        const double eps = half > 0.0 ? 0.5 * inv : 0.0;
        const v4d zero = {0}, lim4 = {bound, bound, bound, bound}, inv4 = {inv, inv, inv, inv},
                  eps4 = {eps, eps, eps, eps}, magic4 = {MAGIC, MAGIC, MAGIC, MAGIC};
        v4l any = {0, 0, 0, 0};
        int over = 0;
        for (int b = 0; b < GROUP; b++) {
            double *restrict a = acc + b * MAX_WIDTH;
            const double *restrict xb = x + b * MAX_WIDTH;
            for (int64_t j = 0; j < d4; j += 4) {
                v4d v = (load4(a + j) * inv4 + eps4 + magic4) - load4(mb + j);
                v = (v4d)((v4l)v & (v4l)(v > zero));
                if (resid) v += load4(xb + j);
                store4(a + j, v);
                any |= (v4l)(v >= lim4);
            }
            for (int64_t j = d4; j < dout; j++) {
                const double v = floor((a[j] + half) * inv) + bias[j];
                const double r = (v > 0.0 ? v : 0.0) + (resid ? xb[j] : 0.0);
                a[j] = r;
                over |= !(r < bound && r > -bound);
            }
        }
        if (over | (any[0] != 0) | (any[1] != 0) | (any[2] != 0) | (any[3] != 0))
            for (int b = 0; b < GROUP; b++)
                for (int64_t j = 0; j < dout; j++) {
                    const double r = acc[b * MAX_WIDTH + j];
                    if (!(r < bound && r > -bound)) bad |= 1 << b;
                }
        double *t = x;
        x = acc;
        acc = t;
        din = dout;
    }
    return bad;
}

/* Seconds of a monotonic clock, for the decoder's optional timing. */
static inline double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/*
 * Decode one grid of h x w latents into out (h * w int64, raster order).
 *
 * state: [lower, range, point, pos] of the range decoder, read and updated.
 * ctx_off: n_ctx (di, dj) pairs; a: the wavefront slope; pad: the zero border's width.
 * layers: n_layers layers (the hidden ones, then the output layer of 2 units); dims holds
 *   (in, out) per layer, shifts (w_shift, b_shift) per layer, params each layer's weight
 *   (out x in, row-major) then bias (out), concatenated.
 * cdf: n_scales * mean_steps rows of alphabet + 1 entries; consts: frac_bits, mean_steps,
 *   n_scales, radius, log-scale lo, log-scale step, max_excess.
 * timing: NULL, or two doubles to which the seconds spent in the context model and in the range
 *   decoder (symbols, escapes and latents' values) are added (a clock read per wavefront and part).
 * Returns 0, 1 for a corrupt stream, 2 for arguments out of range, 3 when out of memory.
 */
int cinr_latent_decode_grid(const uint32_t *words, int64_t n_words, uint64_t *state, int64_t h, int64_t w,
                            const int64_t *ctx_off, int64_t n_ctx, int64_t a, int64_t pad, int64_t n_layers,
                            const int64_t *dims, const int64_t *shifts, const int64_t *params,
                            const uint32_t *cdf, const int64_t *consts, int64_t *out, double *timing) {
    const int frac = (int)consts[0];
    const int64_t mean_steps = consts[1], n_scales = consts[2], radius = consts[3];
    const int64_t ls_lo = consts[4], ls_step = consts[5], max_excess = consts[6];
    const int64_t alphabet = 2 * radius + 3;
    if (h <= 0 || w <= 0 || n_ctx <= 0 || n_ctx > MAX_CTX || n_layers < 1 || n_layers > MAX_LAYERS || a < 1 ||
        pad < 0 || frac < 1 || frac > 30 || mean_steps != 8 || ls_step <= 0 || max_excess < 2 ||
        max_excess > ((int64_t)1 << PRECISION))
        return 2;
    const int64_t *wp[MAX_LAYERS], *bp[MAX_LAYERS];
    const double *wd[MAX_LAYERS];
    int64_t off = 0, n_weights = 0;
    for (int64_t l = 0; l < n_layers; l++) {
        int64_t din = dims[2 * l], dout = dims[2 * l + 1];
        if (din < 1 || din > MAX_WIDTH || dout < 1 || dout > MAX_WIDTH) return 2;
        if (shifts[2 * l] < 0 || shifts[2 * l] > 62 || shifts[2 * l + 1] < 0 || shifts[2 * l + 1] > frac) return 2;
        if (l == 0 && din != n_ctx) return 2;
        if (l > 0 && din != dims[2 * l - 1]) return 2;
        if (l >= 1 && l < n_layers - 1 && dout != din) return 2; /* residual hidden layers */
        wp[l] = params + off;
        for (int64_t k = 0; k < din * dout; k++)
            if (wp[l][k] >= (1 << 15) || wp[l][k] <= -(1 << 15)) return 2;
        n_weights += din * padded(dout);
        off += din * dout;
        bp[l] = params + off;
        off += dout;
    }
    if (dims[2 * (n_layers - 1) + 1] != 2) return 2;
    for (int64_t k = 0; k < n_ctx; k++) {
        int64_t di = ctx_off[2 * k], dj = ctx_off[2 * k + 1];
        if (di > 0 || (di == 0 && dj >= 0) || -di > pad || dj > pad || -dj > pad) return 2;
        if (di < 0 && a * di + dj >= 0) return 2;
    }
    double *wbuf = calloc((size_t)n_weights, sizeof(double));
    if (!wbuf) return 3;
    for (int64_t l = 0, o = 0; l < n_layers; l++) {
        wd[l] = wbuf + o;
        const int64_t din = dims[2 * l], dout = dims[2 * l + 1];
        const int64_t dpad = padded(dout);
        for (int64_t j = 0; j < dout; j++) /* transposed (input-major), columns padded with zeros */
            for (int64_t k = 0; k < din; k++) wbuf[o + k * dpad + j] = (double)wp[l][j * din + k];
        o += din * dpad;
    }
    /* The grouped path's biases, shifted to the layer's fixed point, as doubles; it is used only
     * while each is below 2**40 (sums with them then stay exact; hand-made models may not). */
    double bbuf[MAX_LAYERS * MAX_WIDTH], mbuf[MAX_LAYERS * MAX_WIDTH], halves[MAX_LAYERS], invs[MAX_LAYERS];
    const double *bd[MAX_LAYERS], *mbd[MAX_LAYERS];
    int grouped = 1;
    for (int64_t l = 0; l < n_layers; l++) {
        const int64_t dout = dims[2 * l + 1];
        const int bs = (int)shifts[2 * l + 1], ws = (int)shifts[2 * l];
        halves[l] = ws > 0 ? ldexp(1.0, ws - 1) : 0.0;
        invs[l] = ldexp(1.0, -ws);
        for (int64_t j = 0; j < dout; j++) {
            const int64_t v = wshl(bp[l][j], frac - bs);
            if (v >= ((int64_t)1 << 40) || v <= -((int64_t)1 << 40)) grouped = 0;
            bbuf[l * MAX_WIDTH + j] = (double)v;
            mbuf[l * MAX_WIDTH + j] = MAGIC - (double)v; /* exact while |v| < 2**40 */
        }
        bd[l] = bbuf + l * MAX_WIDTH;
        mbd[l] = mbuf + l * MAX_WIDTH;
    }
    const int64_t w2 = w + 2 * pad;
    int64_t *grid = calloc((size_t)((h + pad) * w2), sizeof(int64_t));
    double *gridd = calloc((size_t)((h + pad) * w2), sizeof(double)); /* grid times 2**frac */
    const int64_t lim = ((int64_t)1 << 31) >> frac;
    const double scale = (double)((int64_t)1 << frac);
    int big = 0;
    int64_t *wf_mean = malloc((size_t)h * sizeof(int64_t));
    int64_t *wf_sym = malloc((size_t)h * sizeof(int64_t));
    int64_t *wf_idx = malloc((size_t)(h + GROUP) * sizeof(int64_t));
    int64_t(*wf_z)[2] = malloc((size_t)(h + GROUP) * sizeof(*wf_z));
    if (!grid || !gridd || !wf_mean || !wf_sym || !wf_idx || !wf_z) {
        free(wbuf);
        free(grid);
        free(gridd);
        free(wf_mean);
        free(wf_sym);
        free(wf_idx);
        free(wf_z);
        return 3;
    }
    int64_t rel[MAX_CTX];
    for (int64_t k = 0; k < n_ctx; k++) rel[k] = ctx_off[2 * k] * w2 + ctx_off[2 * k + 1];
    rc_state s = {state[0], state[1], state[2], state[3]};
    const uint64_t u_ppb = ((uint64_t)1 << PRECISION) / (uint64_t)max_excess;
    const uint64_t u_last = (uint64_t)max_excess - 1;
    int rc = 0;
    const int64_t t_end = a * (h - 1) + (w - 1);
    for (int64_t t = 0; t <= t_end && rc == 0; t++) {
        int64_t r_hi = t / a < h - 1 ? t / a : h - 1;
        int64_t r_lo = t - (w - 1) > 0 ? (t - (w - 1) + a - 1) / a : 0;
        /* The wavefront's contexts are all decoded already: its context model runs first, GROUP
         * latents at a time, then the range decoder reads its symbols in order. */
        int64_t n = 0;
        const double t0 = timing ? seconds_now() : 0.0;
        for (int64_t r = r_lo; r <= r_hi; r++) wf_idx[n++] = (r + pad) * w2 + (t - a * r) + pad;
        for (int64_t i0 = 0; i0 < n; i0 += GROUP) {
            int64_t zg[GROUP][2];
            for (int64_t i = n; i < i0 + GROUP; i++) wf_idx[i] = -1;
            int bad = grouped ? context_group(grid, gridd, big, wf_idx + i0, rel, n_ctx, n_layers, dims, wd, bd,
                                              mbd, halves, invs, frac, zg)
                              : (1 << GROUP) - 1;
            for (int b = 0; b < GROUP && i0 + b < n; b++) {
                if ((bad >> b) & 1) {
                    int64_t zbuf[MAX_WIDTH];
                    context_mlp(grid, wf_idx[i0 + b], rel, n_ctx, n_layers, dims, shifts, wp, bp, wd, frac, zbuf);
                    zg[b][0] = zbuf[0];
                    zg[b][1] = zbuf[1];
                }
                wf_z[i0 + b][0] = zg[b][0];
                wf_z[i0 + b][1] = zg[b][1];
            }
        }
        const double t1 = timing ? seconds_now() : 0.0;
        for (int64_t i = 0; i < n; i++) {
            const int64_t *zbuf = wf_z[i];
            int64_t mean_num = round_shift(wmul(zbuf[0], mean_steps), frac);
            int64_t si = floor_div(wadd(wadd(zbuf[1], -ls_lo), ls_step / 2), ls_step);
            si = si < 0 ? 0 : (si > n_scales - 1 ? n_scales - 1 : si);
            const uint32_t *row = cdf + (si * mean_steps + (mean_num & (mean_steps - 1))) * (alphabet + 1);
            uint64_t scale;
            int64_t q = rc_quantile(&s, &scale);
            if (q < 0) {
                rc = 1;
                break;
            }
            int64_t lo = 0, hi = alphabet - 1; /* largest sym with row[sym] <= q */
            while (lo < hi) {
                int64_t mid = (lo + hi + 1) / 2;
                if ((int64_t)row[mid] <= q)
                    lo = mid;
                else
                    hi = mid - 1;
            }
            rc_update(&s, words, n_words, scale, row[lo], (uint64_t)row[lo + 1] - row[lo]);
            wf_mean[i] = mean_num;
            wf_sym[i] = lo;
        }
        for (int64_t i = 0; i < n && rc == 0; i++) {
            int64_t sym = wf_sym[i], d;
            if (sym == 0 || sym == alphabet - 1) {
                uint64_t scale;
                int64_t q = rc_quantile(&s, &scale);
                if (q < 0) {
                    rc = 1;
                    break;
                }
                uint64_t e = (uint64_t)q / u_ppb, left, prob;
                if (e < u_last) {
                    left = e * u_ppb;
                    prob = u_ppb;
                } else {
                    e = u_last;
                    left = u_last * u_ppb;
                    prob = ((uint64_t)1 << PRECISION) - left;
                }
                rc_update(&s, words, n_words, scale, left, prob);
                d = sym == 0 ? -radius - 1 - (int64_t)e : radius + 1 + (int64_t)e;
            } else {
                d = sym - radius - 1;
            }
            const int64_t v = wadd(d, sar(wf_mean[i], 3));
            grid[wf_idx[i]] = v;
            if (v >= lim || v <= -lim)
                big = 1;
            else
                gridd[wf_idx[i]] = (double)v * scale;
        }
        if (timing) {
            timing[0] += t1 - t0;
            timing[1] += seconds_now() - t1;
        }
    }
    if (rc == 0) {
        for (int64_t r = 0; r < h; r++) memcpy(out + r * w, grid + (r + pad) * w2 + pad, (size_t)w * sizeof(int64_t));
        state[0] = s.lower;
        state[1] = s.range;
        state[2] = s.point;
        state[3] = s.pos;
    }
    free(wbuf);
    free(grid);
    free(gridd);
    free(wf_mean);
    free(wf_sym);
    free(wf_idx);
    free(wf_z);
    return rc;
}
