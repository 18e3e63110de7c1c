/* What the compiled float kernels share (core/_synthesis.c, core/_requant.c, encode/train/_rate.c,
 * encode/train/_synthesis_grad.c, encode/train/_upsample_grad.c): the target clones, forced
 * inlining, the activation, the replicate padding of planes and the learned doubling's column
 * pass. A header of the package, included by relative path; the build
 * (core/native.py) hashes it into each kernel's cache key. */
#ifndef CINR_KERNELS_H
#define CINR_KERNELS_H

#include <stdint.h>
#include <string.h>

/* x86-64-v3 (AVX2 and FMA) where GCC knows the level (GCC 11 on), else AVX2 alone. An
 * "arch=<cpu>" clone would be chosen only on that very CPU model. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 11
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

/* Inlined into the cloned entry points, so that each clone compiles them for its target. */
#define AI __attribute__((always_inline)) inline

/* Leaky ReLU of slope `slope` (0: ReLU). */
static inline float act(float v, float slope) { return v > 0.0f ? v : v * slope; }

/* act() on a row, 8 lanes at a time through memory (any alignment): GCC does not vectorize the
 * scalar one's branch (its other side multiplies), and padding a 512^2 block's three RGB planes
 * with the activation took 3.3 ms that way, against 0.24 ms for the same padding without it. */
typedef float kv8_ __attribute__((vector_size(32)));
typedef int32_t kvi8_ __attribute__((vector_size(32)));
AI static void act_row(const float *s, int64_t n, float slope, float *d) {
    int64_t x = 0;
    for (; x + 8 <= n; x += 8) {
        kv8_ v;
        memcpy(&v, s + x, sizeof v);
        const kv8_ m = v * slope;
        const kvi8_ pos = v > (kv8_){0};
        v = (kv8_)(((kvi8_)v & pos) | ((kvi8_)m & ~pos));
        memcpy(d + x, &v, sizeof v);
    }
    for (; x < n; x++) d[x] = act(s[x], slope);
}

/* Planes (c, H, W) -> (c, H + 2, W + 2), edges replicated; the activation applied when asked. */
AI static void pad_planes(const float *in, int64_t c, int64_t H, int64_t W, float *out, int activate, float slope) {
    const int64_t W2 = W + 2;
    for (int64_t k = 0; k < c; k++) {
        const float *src = in + k * H * W;
        float *dst = out + k * (H + 2) * W2;
        for (int64_t y = 0; y < H + 2; y++) {
            const int64_t sy = y == 0 ? 0 : (y > H ? H - 1 : y - 1);
            const float *s = src + sy * W;
            float *d = dst + y * W2;
            if (activate) {
                act_row(s, W, slope, d + 1);
            } else {
                memcpy(d + 1, s, (size_t)W * sizeof(float));
            }
            d[0] = d[1];
            d[W + 1] = d[W];
        }
    }
}

/* An index clamped to [0, n): the learned doubling's edge replication. */
static inline int64_t clamp_index(int64_t i, int64_t n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

/* The learned doubling (core/synthesis.py ``double``) along columns, a row of w values at a time:
 * output rows [lo, lo + h) of 2 hc from T (hc rows of w; lo + h <= 2 hc), into out (h rows of w).
 * Row 2a + e reads rows a, a - s, a + s, a - 2s (s = 1 for even, -1 for odd; clamped) with the
 * taps f0..f3. The decoder's windows (core/_synthesis.c) and training (encode/train/_upsample_grad.c)
 * share it. */
AI static void double_cols(const float *T, int64_t hc, int64_t w, const float *f, int64_t lo, int64_t h, float *out) {
    for (int64_t i = lo; i < lo + h; i++) { /* whole rows at a time (vectorized) */
        const int64_t a = i >> 1, s = (i & 1) ? -1 : 1;
        const float *x0 = T + a * w, *x1 = T + clamp_index(a - s, hc) * w;
        const float *x2 = T + clamp_index(a + s, hc) * w, *x3 = T + clamp_index(a - 2 * s, hc) * w;
        float *o = out + (i - lo) * w;
        for (int64_t x = 0; x < w; x++) o[x] = f[0] * x0[x] + f[1] * x1[x] + f[2] * x2[x] + f[3] * x3[x];
    }
}

#endif
