/* What the training kernels (_rate.c, _synthesis_grad.c) share: vectors of 8 floats over tiles
 * of 64 latents or pixels, the lane-wise select, and the lane-wise sums their weight gradients
 * accumulate in. */
#ifndef CINR_TILES_H
#define CINR_TILES_H

#include "../../core/_kernels.h"

/* Unaligned (aligned(4)): numpy buffers are not always 32-byte aligned. */
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef int32_t vi8 __attribute__((vector_size(32), aligned(4)));
#define VW 8
#define T 64        /* latents or pixels per tile */
#define TV (T / VW) /* vectors per tile row */

static inline v8 splat(float x) { return (v8){x, x, x, x, x, x, x, x}; }
static inline float hsum(v8 v) {
    float s = 0.0f;
    for (int t = 0; t < VW; t++) s += v[t];
    return s;
}

/* a where m (a comparison's lanes), else b. */
AI static v8 blend(vi8 m, v8 a, v8 b) { return (v8)((m & (vi8)a) | (~m & (vi8)b)); }

/* x where m, else 0. */
AI static v8 keep(vi8 m, v8 x) { return (v8)(m & (vi8)x); }

/* acc += the lane-wise sum over a tile row of a * b (one vector: 8 partial sums). */
AI static void dot_acc(v8 *acc, const v8 *a, const v8 *b) {
    v8 s0 = a[0] * b[0], s1 = a[1] * b[1];
    for (int v = 2; v < TV; v += 2) {
        s0 += a[v] * b[v];
        s1 += a[v + 1] * b[v + 1];
    }
    *acc += s0 + s1;
}

/* acc += the lane-wise sum over a tile row of a. */
AI static void sum_acc(v8 *acc, const v8 *a) {
    v8 s = a[0];
    for (int v = 1; v < TV; v++) s += a[v];
    *acc += s;
}

#endif
