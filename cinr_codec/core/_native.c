/* Optional CPU kernels for the hash grid (see cinr_codec/native.py).
 *
 * Plain C, no Python or torch headers: built on first use with the system C compiler into a
 * per-user cache and called through ctypes with tensor data pointers. The pure-PyTorch code
 * in hashgrid.py defines the semantics; these kernels compute the same values in one pass
 * (no intermediate index/weight tensors). They run on one thread, level by level so that a
 * level's table stays in cache, and add in a fixed order, so results are deterministic.
 * (Threads were measured: a second thread competes with torch's spinning OpenMP workers and
 * made the backward slower on 2 cores.)
 *
 * Return value: 0 on success, 1 when an index falls outside the table (the caller raises).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define PRIME_Y 2654435761ULL

typedef struct {
    const float *pts;      /* (P, 2) x, y in [0, 1] */
    const float *res;      /* (L,) N_l as float */
    const int64_t *res_i;  /* (L,) N_l */
    const int64_t *off;    /* (L,) offset of each level's table */
    const int64_t *size;   /* (L,) entries of each level's table */
    int64_t n_dense;       /* dense levels form a prefix */
    uint64_t mask;         /* 2**T - 1 */
    int64_t P, L, F;
    float *table;          /* (rows, F) */
    float *out;            /* forward: (P, L*F); backward: incoming gradient (P, L*F) */
    float *grad;           /* backward: (rows, F) accumulated */
    int64_t lo, hi;        /* point range (forward) or level range (backward) */
    int err;
} hg_job;

/* Corner indices (relative to the level's table) and bilinear weights of one point. */
static inline void hg_corners(const hg_job *j, int64_t l, float x, float y, int64_t idx[4], float w[4]) {
    float r = j->res[l];
    int64_t n = j->res_i[l];
    float px = x * r, py = y * r;
    if (!(px >= 0.0f)) px = 0.0f; /* also maps NaN to the border */
    if (!(py >= 0.0f)) py = 0.0f;
    if (px > r) px = r;
    if (py > r) py = r;
    float cmax = (float)(n > 1 ? n - 1 : 0);
    /* px, py >= 0 here, so truncation is floor (and needs no libm call). */
    float cx = (float)(int64_t)px, cy = (float)(int64_t)py;
    if (cx > cmax) cx = cmax;
    if (cy > cmax) cy = cmax;
    float fx = px - cx, fy = py - cy;
    int64_t ix = (int64_t)cx, iy = (int64_t)cy;
    if (l < j->n_dense) {
        int64_t s = n + 1;
        int64_t i00 = iy * s + ix;
        idx[0] = i00;
        idx[1] = i00 + 1;
        idx[2] = i00 + s;
        idx[3] = i00 + s + 1;
    } else {
        uint64_t h0 = (uint64_t)iy * PRIME_Y, h1 = (uint64_t)(iy + 1) * PRIME_Y;
        uint64_t ux = (uint64_t)ix, ux1 = (uint64_t)(ix + 1);
        idx[0] = (int64_t)((ux ^ h0) & j->mask);
        idx[1] = (int64_t)((ux1 ^ h0) & j->mask);
        idx[2] = (int64_t)((ux ^ h1) & j->mask);
        idx[3] = (int64_t)((ux1 ^ h1) & j->mask);
    }
    float gx = 1.0f - fx, gy = 1.0f - fy;
    w[0] = gx * gy;
    w[1] = fx * gy;
    w[2] = gx * fy;
    w[3] = fx * fy;
}

static void *hg_fwd_worker(void *arg) {
    hg_job *j = (hg_job *)arg;
    int64_t L = j->L, F = j->F;
    /* Level-major: one level's table (<= 2**T entries) stays in cache while all points read it. */
    for (int64_t l = 0; l < L; l++) {
        for (int64_t p = j->lo; p < j->hi; p++) {
            float *o = j->out + p * L * F;
            int64_t idx[4];
            float w[4];
            hg_corners(j, l, j->pts[2 * p], j->pts[2 * p + 1], idx, w);
            for (int k = 0; k < 4; k++) {
                if (idx[k] < 0 || idx[k] >= j->size[l]) {
                    j->err = 1;
                    return NULL;
                }
            }
            const float *t = j->table + j->off[l] * F;
            for (int64_t f = 0; f < F; f++) {
                o[l * F + f] = w[0] * t[idx[0] * F + f] + w[1] * t[idx[1] * F + f] +
                               w[2] * t[idx[2] * F + f] + w[3] * t[idx[3] * F + f];
            }
        }
    }
    return NULL;
}

static void *hg_bwd_worker(void *arg) {
    hg_job *j = (hg_job *)arg;
    int64_t L = j->L, F = j->F;
    for (int64_t l = j->lo; l < j->hi; l++) {
        float *g = j->grad + j->off[l] * F;
        for (int64_t p = 0; p < j->P; p++) {
            int64_t idx[4];
            float w[4];
            hg_corners(j, l, j->pts[2 * p], j->pts[2 * p + 1], idx, w);
            const float *go = j->out + p * L * F + l * F;
            for (int k = 0; k < 4; k++) {
                if (idx[k] < 0 || idx[k] >= j->size[l]) {
                    j->err = 1;
                    return NULL;
                }
                for (int64_t f = 0; f < F; f++) g[idx[k] * F + f] += w[k] * go[f];
            }
        }
    }
    return NULL;
}

/* The per-level constants both entry points share. */
static hg_job hg_make(const float *pts, int64_t P, const float *res, const int64_t *res_i, const int64_t *off,
                      const int64_t *size, int64_t L, int64_t F, int64_t n_dense, int64_t log2_t) {
    hg_job j;
    memset(&j, 0, sizeof j);
    j.pts = pts;
    j.res = res;
    j.res_i = res_i;
    j.off = off;
    j.size = size;
    j.n_dense = n_dense;
    j.mask = (log2_t >= 64) ? ~0ULL : ((1ULL << log2_t) - 1ULL);
    j.P = P;
    j.L = L;
    j.F = F;
    return j;
}

int cinr_hg_points_fwd(const float *pts, int64_t P, const float *table, const float *res,
                       const int64_t *res_i, const int64_t *off, const int64_t *size, int64_t L,
                       int64_t F, int64_t n_dense, int64_t log2_t, float *out) {
    hg_job j = hg_make(pts, P, res, res_i, off, size, L, F, n_dense, log2_t);
    j.table = (float *)table;
    j.out = out;
    j.lo = 0;
    j.hi = P;
    hg_fwd_worker(&j);
    return j.err;
}

int cinr_hg_points_bwd(const float *pts, int64_t P, const float *grad_out, const float *res,
                       const int64_t *res_i, const int64_t *off, const int64_t *size, int64_t L,
                       int64_t F, int64_t n_dense, int64_t log2_t, float *grad_table) {
    hg_job j = hg_make(pts, P, res, res_i, off, size, L, F, n_dense, log2_t);
    j.out = (float *)grad_out;
    j.grad = grad_table;
    j.lo = 0;
    j.hi = L;
    hg_bwd_worker(&j);
    return j.err;
}

/* Backward of the weighted gather out[m, :] = sum_k w[m, k] * table[idx[m, k], :] (the forward is
 * torch's embedding_bag): in order, so the sums are deterministic. */
int cinr_wgather_bwd(const float *grad_out, int64_t rows, int64_t F, const int64_t *idx, const float *w,
                     int64_t M, int64_t K, float *grad_table) {
    for (int64_t m = 0; m < M; m++) {
        const float *g = grad_out + m * F;
        for (int64_t k = 0; k < K; k++) {
            int64_t r = idx[m * K + k];
            if (r < 0 || r >= rows) return 1;
            float wk = w[m * K + k];
            float *t = grad_table + r * F;
            for (int64_t f = 0; f < F; f++) t[f] += wk * g[f];
        }
    }
    return 0;
}
