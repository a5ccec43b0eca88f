/* Graphformer's CPU kernels: the fused attention over an edge set of
 * graphformer/nn/fused_cpu.py (its docstring has the equations) and the
 * hashed dropout (alone, and fused with GELU) of graphformer/nn/functional.py,
 * and the counting sort that groups an edge set by source (csr.py).
 *
 * Compiled on first use by the system C compiler (cpu_kernels.py),
 * loaded with ctypes, and run on OpenMP threads: the process's libgomp is
 * PyTorch's own (same soname), so the thread count is torch's.
 *
 * Layout: every array is C-contiguous; q[i, h, c] is q[(i * H + h) * C + c],
 * per-edge arrays [H, E] are head-major, tables [H, N, R], type values
 * [R, H, C]. Optional arrays are NULL when absent. Indices are int64. With
 * attention dropout the forward writes the decision of every edge and head
 * to keep [H, E] (uint8), which backward reads instead of hashing again.
 *
 * This file includes itself twice to define every function for float
 * ("_f32") and double ("_f64"); the kernels are the part after #else.
 */
#ifndef KERNEL_T
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the dropout kernel reads 16-bit slices of 64-bit hashes as little-endian"
#endif

#define INLINE static inline __attribute__((always_inline))
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(name) CAT(name, SUFFIX)

/* SplitMix64 (Steele, Lea & Flood 2014) of the seed and a position. */
INLINE uint64_t splitmix64(uint64_t seed, uint64_t index) {
    uint64_t z = seed + (index + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* The attention-dropout decision of position h * E + e: its hash's top 32
 * bits reach the threshold (p * 2^32). */
INLINE int keep_edge(uint64_t seed, uint64_t index, uint64_t threshold) {
    return (splitmix64(seed, index) >> 32) >= threshold;
}

/* exp for float in a form that vectorises (Cephes' expf: reduction by ln 2
 * and a degree-6 polynomial, within 2 ulp of expf); 0 below -87.3 and for
 * -inf. */
INLINE float exp_f32(float x) {
    const float lo = -87.33654f, hi = 88.72283f;
    const float xc = x < lo ? lo : (x > hi ? hi : x);
    const float n = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { float f; int32_t i; } two_n;
    two_n.i = ((int32_t)n + 127) << 23;
    return x <= lo ? 0.0f : p * two_n.f;
}

INLINE double exp_f64(double x) { return exp(x); }

/* The normal distribution's CDF Phi(x) = (1 + erf(x / sqrt 2)) / 2, and
 * g = exp(-x^2 / 2) beside it (the density's shape, which GELU's gradient
 * needs too). For float in a form that vectorises: erf by Abramowitz &
 * Stegun 7.1.26 (absolute error below 1.5e-7), the formula of PyTorch's
 * vectorised float erf, whose exp(-a^2) is g; for double, libm's erf. */
INLINE float phi_f32(float x, float* g) {
    const float a = fabsf(x) * 0.70710678118654752440f;
    const float t = 1.0f / (0.3275911f * a + 1.0f);
    float r = 1.061405429f;
    r = r * t - 1.453152027f;
    r = r * t + 1.421413741f;
    r = r * t - 0.284496736f;
    r = r * t + 0.254829592f;
    *g = exp_f32(-a * a);
    const float erfc_a = r * t * *g;     /* 1 - erf(a) */
    return x < 0 ? 0.5f * erfc_a : 1.0f - 0.5f * erfc_a;
}

INLINE double phi_f64(double x, double* g) {
    *g = exp(-0.5 * x * x);
    return 0.5 * (1.0 + erf(x * 0.70710678118654752440));
}

/* Groups an edge set by source with a stable counting sort: writes the
 * transpose's row pointer ptr [S + 1] and perm [E], where position p of the
 * transpose is edge perm[p] (edges of one source keep their order, as a
 * stable sort would). Two serial passes over the edges, no comparisons.
 * Returns 0; 1 when its scratch could not be allocated; 2 when a source is
 * outside 0..S-1 (then nothing is written). */
int group_by_source(int64_t E, int64_t S, const int64_t* col, int64_t* ptr, int64_t* perm) {
    for (int64_t e = 0; e < E; e++)
        if (col[e] < 0 || col[e] >= S) return 2;
    int64_t* next = malloc((size_t)(S > 0 ? S : 1) * sizeof(int64_t));
    if (!next) return 1;
    memset(ptr, 0, (size_t)(S + 1) * sizeof(int64_t));
    for (int64_t e = 0; e < E; e++) ptr[col[e] + 1]++;
    for (int64_t s = 0; s < S; s++) ptr[s + 1] += ptr[s];
    memcpy(next, ptr, (size_t)S * sizeof(int64_t));
    for (int64_t e = 0; e < E; e++) perm[next[col[e]]++] = e;
    free(next);
    return 0;
}

/* Per-thread scratch, 64-byte aligned: vectorised loops then take the same
 * path whatever the allocator returns, so results do not depend on it. */
static void* scratch(size_t bytes) { return aligned_alloc(64, (bytes + 63) / 64 * 64); }

/* The channel count C is a compile-time constant in the common cases (the
 * row functions are inlined into each case), so that the channel loops
 * unroll and vectorise; other values take the generic path. */
#define DISPATCH_C(ROW)                                                       \
    switch (C) {                                                              \
        case 8: ROW(8); break;                                                \
        case 16: ROW(16); break;                                              \
        case 32: ROW(32); break;                                              \
        case 64: ROW(64); break;                                              \
        default: ROW(C); break;                                               \
    }

/* double (tests, exactness checks) takes the generic channel loops only. */
#define GENERIC_C(ROW) ROW(C);

/* The body of a kernel that runs a row function for rows 0..ROWS-1 on OpenMP
 * threads (dynamic chunks of 8): each thread gets per-thread heap scratch of
 * LEN elements of T, named `work`, and runs CALL for row `i` (a DISPATCH of
 * a ROW macro reading i and work). Returns nonzero when a thread's scratch
 * could not be allocated (its rows are then skipped). */
#define FOR_ROWS_WITH_SCRATCH(ROWS, LEN, CALL)                                \
    int failed = 0;                                                           \
    _Pragma("omp parallel")                                                   \
    {                                                                         \
        T* work = (T*)scratch(sizeof(T) * (size_t)(LEN));                     \
        if (!work) failed = 1;                                                \
        _Pragma("omp for schedule(dynamic, 8)")                               \
        for (int64_t i = 0; i < (ROWS); i++) {                                \
            if (!work) continue;                                              \
            CALL                                                              \
        }                                                                     \
        free(work);                                                           \
    }                                                                         \
    return failed;

#define KERNEL_T float
#define SUFFIX f32
#define EXP exp_f32
#define PHI phi_f32
#define DISPATCH DISPATCH_C
#include __FILE__
#undef KERNEL_T
#undef SUFFIX
#undef EXP
#undef PHI
#undef DISPATCH

#define KERNEL_T double
#define SUFFIX f64
#define EXP exp_f64
#define PHI phi_f64
#define DISPATCH GENERIC_C
#include __FILE__

#else  /* the kernels, for T = KERNEL_T */
#define T KERNEL_T

/* Target i: scores, softmax (alpha, before dropout), output. */
INLINE void NAME(forward_row)(
        int64_t i, int64_t N, int64_t H, const int64_t C, int64_t E, int64_t R, int64_t Ns,
        const T* q, const T* k, const T* v, const int64_t* ptr, const int64_t* col,
        const T* bias, const int64_t* etype, const T* tq, const T* tk, const T* vt,
        T scale, uint64_t seed, uint64_t threshold, T keep_mult, uint8_t* keep,
        T* out, T* alpha, T* restrict acc, T* restrict wsum) {
    const int64_t start = ptr[i], end = ptr[i + 1];
    for (int64_t h = 0; h < H; h++) {
        const T* qi = q + (i * H + h) * C;
        T* al = alpha + h * E;
        T m = -INFINITY;
        int nan_score = 0;
        for (int64_t e = start; e < end; e++) {
            const int64_t j = col[e];
            const T* kj = k + (j * H + h) * C;
            T s = 0;
            for (int64_t c = 0; c < C; c++) s += qi[c] * kj[c];
            if (bias) s += bias[h * E + e];
            if (tq) s += tq[(h * N + i) * R + etype[e]];
            if (tk) s += tk[(h * Ns + j) * R + etype[e]];
            s *= scale;
            al[e] = s;
            if (s > m) m = s;
            else if (isnan(s)) nan_score = 1;
        }
        /* a NaN score makes the row NaN (as the softmax of NaN is), never an
         * "every score masked" row of zeros */
        if (nan_score) m = NAN;
        T* o = out + (i * H + h) * C;
        if (m == -INFINITY) {                 /* empty row, or every score masked */
            for (int64_t e = start; e < end; e++) al[e] = 0;
            if (keep)
                for (int64_t e = start; e < end; e++)
                    keep[h * E + e] = (uint8_t)keep_edge(seed, (uint64_t)(h * E + e), threshold);
            for (int64_t c = 0; c < C; c++) o[c] = 0;
            continue;
        }
        T total = 0;
        for (int64_t e = start; e < end; e++) {
            const T a = EXP(al[e] - m);
            al[e] = a;
            total += a;
        }
        const T inv = (T)1 / total;
        for (int64_t c = 0; c < C; c++) acc[c] = 0;
        for (int64_t r = 0; r < R; r++) wsum[r] = 0;
        for (int64_t e = start; e < end; e++) {
            const T a = al[e] * inv;
            al[e] = a;
            T w = a;
            if (keep) {
                const int kept = keep_edge(seed, (uint64_t)(h * E + e), threshold);
                keep[h * E + e] = (uint8_t)kept;
                if (!kept) continue;
                w = a * keep_mult;
            }
            const T* vj = v + (col[e] * H + h) * C;
            for (int64_t c = 0; c < C; c++) acc[c] += w * vj[c];
            if (vt) wsum[etype[e]] += w;
        }
        if (vt)                               /* sum_t (kept weight of type t) V_t */
            for (int64_t r = 0; r < R; r++) {
                /* a type no kept edge of i has adds nothing: not even the NaN
                 * of 0 * V_t for a non-finite V_t (masks stay exact) */
                if (wsum[r] == 0) continue;
                const T* vr = vt + (r * H + h) * C;
                for (int64_t c = 0; c < C; c++) acc[c] += wsum[r] * vr[c];
            }
        for (int64_t c = 0; c < C; c++) o[c] = acc[c];
    }
}

int NAME(forward)(
        int64_t N, int64_t H, int64_t C, int64_t E, int64_t R,
        const T* q, const T* k, const T* v, const int64_t* ptr, const int64_t* col,
        const T* bias, const int64_t* etype, const T* tq, const T* tk, const T* vt,
        int64_t Ns, double scale, uint64_t seed, uint64_t threshold, double keep_mult,
        uint8_t* keep, T* out, T* alpha) {
    /* scratch: acc [C], then wsum [R] (on the heap: R, the edge types, may be large) */
#define ROW(CC) NAME(forward_row)(i, N, H, CC, E, R, Ns, q, k, v, ptr, col, bias, etype, \
                                  tq, tk, vt, (T)scale, seed, threshold, (T)keep_mult, keep, \
                                  out, alpha, work, work + C)
    FOR_ROWS_WITH_SCRATCH(N, C + R + 1, DISPATCH(ROW))
#undef ROW
}

/* Target i: ds (scaled score gradients, [H, E]), dq, dtq (+=), the kept
 * weight per (target, head, type) in wsum_rows [N, H, R], and g_edge [E, 2, H]
 * (ds and the kept weight alpha * multiplier, edge-major, so that the pass by
 * source reads one cache line per edge). */
INLINE void NAME(backward_target_row)(
        int64_t i, int64_t N, int64_t H, const int64_t C, int64_t E, int64_t R,
        const T* k, const T* v, const int64_t* ptr, const int64_t* col, const int64_t* etype,
        const T* vt, const T* alpha, const T* dout, const T* dalpha, T scale,
        const uint8_t* keep, T keep_mult, T* dq, T* ds, T* dtq, T* wsum_rows, T* g_edge,
        T* restrict acc, T* restrict vdot) {
    const int64_t start = ptr[i], end = ptr[i + 1];
    for (int64_t h = 0; h < H; h++) {
        const T* doi = dout + (i * H + h) * C;
        const T* al = alpha + h * E;
        T* dsh = ds + h * E;
        T* ws = vt ? wsum_rows + (i * H + h) * R : 0;
        if (vt)
            for (int64_t r = 0; r < R; r++) {
                const T* vr = vt + (r * H + h) * C;
                T d = 0;
                for (int64_t c = 0; c < C; c++) d += doi[c] * vr[c];
                vdot[r] = d;
                ws[r] = 0;
            }
        T dot = 0;
        for (int64_t e = start; e < end; e++) {
            const T a = al[e];
            T g = dalpha ? dalpha[h * E + e] : (T)0;
            const T mult = (keep && !keep[h * E + e]) ? (T)0 : keep_mult;
            if (mult != 0) {
                const T* vj = v + (col[e] * H + h) * C;
                T gv = 0;
                for (int64_t c = 0; c < C; c++) gv += doi[c] * vj[c];
                if (vt) {
                    gv += vdot[etype[e]];
                    ws[etype[e]] += a * mult;
                }
                g += mult * gv;
            }
            dsh[e] = g;
            dot += a * g;
        }
        for (int64_t c = 0; c < C; c++) acc[c] = 0;
        for (int64_t e = start; e < end; e++) {
            const T d = al[e] * (dsh[e] - dot) * scale;
            dsh[e] = d;
            const T* kj = k + (col[e] * H + h) * C;
            for (int64_t c = 0; c < C; c++) acc[c] += d * kj[c];
            if (dtq) dtq[(h * N + i) * R + etype[e]] += d;
            /* edge-major copies of ds and of the kept weight for the pass by source */
            g_edge[e * 2 * H + h] = d;
            g_edge[e * 2 * H + H + h] = (keep && !keep[h * E + e]) ? (T)0 : al[e] * keep_mult;
        }
        T* dqi = dq + (i * H + h) * C;
        for (int64_t c = 0; c < C; c++) dqi[c] = acc[c];
    }
}

int NAME(backward_targets)(
        int64_t N, int64_t H, int64_t C, int64_t E, int64_t R,
        const T* k, const T* v, const int64_t* ptr, const int64_t* col, const int64_t* etype,
        const T* vt, const T* alpha, const T* dout, const T* dalpha, double scale,
        const uint8_t* keep, double keep_mult, T* dq, T* ds, T* dtq, T* wsum_rows,
        T* g_edge) {
    /* scratch: acc [C], then vdot [R] */
#define ROW(CC) NAME(backward_target_row)(i, N, H, CC, E, R, k, v, ptr, col, etype, vt, \
                                          alpha, dout, dalpha, (T)scale, keep, (T)keep_mult, \
                                          dq, ds, dtq, wsum_rows, g_edge, work, work + C)
    FOR_ROWS_WITH_SCRATCH(N, C + R + 1, DISPATCH(ROW))
#undef ROW
}

/* Source j (edges grouped by source: tptr; their targets trow and positions
 * perm in target order): dk, dv, dtk (+=), from g_edge [E, 2, H]. acc_k,
 * acc_v [H C] are per-thread scratch. */
INLINE void NAME(backward_source_row)(
        int64_t j, int64_t Ns, int64_t H, const int64_t C, int64_t R, const T* q,
        const int64_t* tptr, const int64_t* trow, const int64_t* perm, const int64_t* etype,
        const T* dout, const T* g_edge, T* dk, T* dv, T* dtk, T* restrict acc_k,
        T* restrict acc_v) {
    const int64_t start = tptr[j], end = tptr[j + 1];
    for (int64_t x = 0; x < H * C; x++) { acc_k[x] = 0; acc_v[x] = 0; }
    for (int64_t p = start; p < end; p++) {
        const int64_t e = perm[p], i = trow[p];
        const T* ge = g_edge + e * 2 * H;
        const T* qi = q + i * H * C;
        const T* doi = dout + i * H * C;
        for (int64_t h = 0; h < H; h++) {
            const T d = ge[h], w = ge[H + h];
            for (int64_t c = 0; c < C; c++) {
                acc_k[h * C + c] += d * qi[h * C + c];
                acc_v[h * C + c] += w * doi[h * C + c];
            }
            if (dtk) dtk[(h * Ns + j) * R + etype[e]] += d;
        }
    }
    T* dkj = dk + j * H * C;
    T* dvj = dv + j * H * C;
    for (int64_t x = 0; x < H * C; x++) { dkj[x] = acc_k[x]; dvj[x] = acc_v[x]; }
}

int NAME(backward_sources)(
        int64_t Ns, int64_t H, int64_t C, int64_t R, const T* q, const int64_t* tptr,
        const int64_t* trow, const int64_t* perm, const int64_t* etype, const T* dout,
        const T* g_edge, T* dk, T* dv, T* dtk) {
    /* rows are sources here; scratch: acc_k [H C], then acc_v [H C] */
#define ROW(CC) NAME(backward_source_row)(i, Ns, H, CC, R, q, tptr, trow, perm, etype, dout, \
                                          g_edge, dk, dv, dtk, work, work + H * C)
    FOR_ROWS_WITH_SCRATCH(Ns, 2 * H * C + 1, DISPATCH(ROW))
#undef ROW
}

/* The dropout multipliers [H, E]: keep_mult where kept, 0 where dropped. */
void NAME(multiplier)(int64_t H, int64_t E, uint64_t seed, uint64_t threshold,
                      double keep_mult, T* out) {
    #pragma omp parallel for
    for (int64_t x = 0; x < H * E; x++)
        out[x] = keep_edge(seed, (uint64_t)x, threshold) ? (T)keep_mult : (T)0;
}

/* Inverted dropout with hashed decisions: element x of n is kept when bits
 * 16 (x % 4) .. 16 (x % 4) + 15 of the hash of x / 4 reach the threshold
 * (p * 2^16), and then scaled; backward applies the same to the gradient.
 * Blocks of 256 elements: 64 hashes (a loop that vectorises), read as 256
 * 16-bit slices (little-endian), then one select per element.
 *
 * op 0: out = dropout(in) (also its backward, on the gradient).
 * op 1: out = dropout(gelu(in)), GELU exact: gelu(x) = x Phi(x); in one pass
 *       instead of three (GELU, the hashes, the select); the decisions of op 0.
 * op 2: its backward, out = grad * keep * scale * gelu'(in), with
 *       gelu'(x) = Phi(x) + x exp(-x^2 / 2) / sqrt(2 pi) (as torch's GELU backward). */
void NAME(dropout)(int64_t n, int64_t op, const T* in, const T* grad, T* out, uint64_t seed,
                   uint64_t threshold, double scale) {
    const T s = (T)scale, beta = (T)0.39894228040143267794;   /* 1 / sqrt(2 pi) */
    const uint16_t thr = (uint16_t)threshold;
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t chunk = 0; chunk < (n + 255) / 256; chunk++) {
        uint64_t hashes[64];
        uint16_t slices[256];
        for (int64_t k = 0; k < 64; k++) hashes[k] = splitmix64(seed, (uint64_t)(chunk * 64 + k));
        memcpy(slices, hashes, sizeof slices);
        const int64_t x0 = chunk * 256, m = n - x0 < 256 ? n - x0 : 256;
        const T* xs = in + x0;
        T* o = out + x0;
        if (op == 0)
            for (int64_t r = 0; r < m; r++) o[r] = slices[r] >= thr ? xs[r] * s : (T)0;
        else if (op == 1)
            for (int64_t r = 0; r < m; r++) {
                T g;
                const T y = xs[r] * PHI(xs[r], &g);
                o[r] = slices[r] >= thr ? y * s : (T)0;
            }
        else
            for (int64_t r = 0; r < m; r++) {
                T g;
                const T d = PHI(xs[r], &g) + xs[r] * beta * g;
                o[r] = slices[r] >= thr ? grad[x0 + r] * s * d : (T)0;
            }
    }
}

#undef T
#endif
