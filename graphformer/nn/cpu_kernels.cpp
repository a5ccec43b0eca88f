// Graphformer's CPU kernels: the fused attention over an edge set of
// graphformer/nn/fused_cpu.py (its docstring has the equations), the hashed
// dropout (alone, and fused with GELU) of graphformer/nn/functional.py, the
// counting sort that groups an edge set by source (csr.py), and the per-edge
// feature terms of graphformer/nn/edge_terms.py (the quadratic form, the cross
// terms and the value sums).
//
// One translation unit, built on first use by torch.utils.cpp_extension
// (cpu_kernels.py). It registers the CPU implementations of the custom ops
// torch.ops.graphformer.* (TORCH_LIBRARY_IMPL); their schemas, fake
// implementations and autograd formulas are defined in Python, beside their
// callers. Parallel loops run on PyTorch's intra-op thread pool
// (at::parallel_for), so torch.set_num_threads sets their number.
//
// Layout: every array is C-contiguous (checked: each op refuses, naming it, a
// tensor that is not); q[i, h, c] is q[(i * H + h) * C + c], per-edge arrays
// [H, E] are head-major, tables [H, N, R], type values [R, H, C]. Absent
// optional arrays are null pointers. Indices are int64. With attention
// dropout the forward writes the decision of every edge and head to keep
// [H, E] (uint8), which backward reads instead of hashing again. The kernels
// trust the index values (CSR structure, sources, edge types): the Python
// callers check them before any kernel runs.
//
// Every kernel is a template instantiated for float and double.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the dropout kernel reads 16-bit slices of 64-bit hashes as little-endian"
#endif

#define INLINE static inline __attribute__((always_inline))

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// ---------------------------------------------------------------- numerics

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
INLINE float exp_t(float x) {
    const float lo = -87.33654f, hi = 88.72283f;
    const float xc = x < lo ? lo : (x > hi ? hi : x);
    const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    std::memcpy(&two_n, &bits, sizeof two_n);
    return x <= lo ? 0.0f : p * two_n;
}

INLINE double exp_t(double x) { return std::exp(x); }

/* The normal distribution's CDF Phi(x) = (1 + erf(x / sqrt 2)) / 2, and
 * g = exp(-x^2 / 2) beside it (the density's shape, which GELU's gradient
 * needs too). For float in a form that vectorises: erf by Abramowitz &
 * Stegun 7.1.26 (absolute error below 1.5e-7), the formula of PyTorch's
 * vectorised float erf, whose exp(-a^2) is g; for double, libm's erf. */
INLINE float phi_t(float x, float* g) {
    const float a = std::fabs(x) * 0.70710678118654752440f;
    const float t = 1.0f / (0.3275911f * a + 1.0f);
    float r = 1.061405429f;
    r = r * t - 1.453152027f;
    r = r * t + 1.421413741f;
    r = r * t - 0.284496736f;
    r = r * t + 0.254829592f;
    *g = exp_t(-a * a);
    const float erfc_a = r * t * *g;     /* 1 - erf(a) */
    return x < 0 ? 0.5f * erfc_a : 1.0f - 0.5f * erfc_a;
}

INLINE double phi_t(double x, double* g) {
    *g = std::exp(-0.5 * x * x);
    return 0.5 * (1.0 + std::erf(x * 0.70710678118654752440));
}

/* (threshold, keep_mult) of drop probability p for decisions of `bits` bits,
 * as graphformer.nn.cpu_kernels.dropout_threshold: threshold = round(p 2^bits)
 * (ties to even, as Python's round), keep_mult = 2^bits / (2^bits - threshold);
 * (2^bits, 0) when every entry is dropped. */
std::pair<uint64_t, double> dropout_threshold(double p, int bits) {
    const double levels = std::ldexp(1.0, bits);
    const double threshold = std::min(std::nearbyint(p * levels), levels);
    if (threshold >= levels) return {(uint64_t)levels, 0.0};
    return {(uint64_t)threshold, levels / (levels - threshold)};
}

//: Resolution of the attention-dropout probability (fused_cpu.DROPOUT_BITS).
constexpr int ATTENTION_DROPOUT_BITS = 32;

// ------------------------------------------------------------ tensor checks

/* The data of `t` for a kernel, which reads it densely in row-major order:
 * refuses (naming `name`) a tensor that is not on the CPU, not of `dtype`,
 * not contiguous, or (numel >= 0) not of `numel` elements, instead of letting
 * a kernel read a strided view's memory as if it were dense. */
template <typename P>
P* data(const Tensor& t, const char* name, at::ScalarType dtype, int64_t numel = -1) {
    TORCH_CHECK_VALUE(t.device().is_cpu(), "the CPU kernels read '", name,
                      "' on the CPU, got a tensor on ", t.device());
    TORCH_CHECK_VALUE(t.scalar_type() == dtype, "the CPU kernels read '", name, "' as ", dtype,
                      ", got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.is_contiguous(), "the CPU kernels read '", name,
                      "' as a contiguous array, got one of shape ", t.sizes(), " and strides ",
                      t.strides(), "; pass '", name, "'.contiguous()");
    TORCH_CHECK_VALUE(numel < 0 || t.numel() == numel, "the CPU kernels read '", name, "' as ",
                      numel, " elements, got shape ", t.sizes());
    return static_cast<P*>(t.data_ptr());
}

/* data() of an optional tensor; a null pointer when it is absent. */
template <typename P>
P* data(const OptTensor& t, const char* name, at::ScalarType dtype, int64_t numel = -1) {
    return t.has_value() ? data<P>(*t, name, dtype, numel) : nullptr;
}

/* The data of an [n0, n1] tensor `t` that a kernel reads through its strides
 * (any layout, expanded ones too): refuses one of another shape, dtype or
 * device, naming `name`. */
template <typename P>
P* strided_data(const Tensor& t, const char* name, at::ScalarType dtype, int64_t n0,
                int64_t n1) {
    TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == dtype, "the CPU kernels read '",
                      name, "' as ", dtype, " on the CPU, got ", t.scalar_type(), " on ",
                      t.device());
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == n0 && t.size(1) == n1, "the CPU kernels read '",
                      name, "' as [", n0, ", ", n1, "], got shape ", t.sizes());
    return static_cast<P*>(t.data_ptr());
}

/* The seed of the hashed decisions: int64 [1], read back as unsigned. */
uint64_t read_seed(const Tensor& seed) {
    return (uint64_t)*data<const int64_t>(seed, "seed", at::kLong, 1);
}

/* Runs f<float> or f<double> by the dtype of `t` (named `name`). */
template <typename F>
decltype(auto) by_dtype(const Tensor& t, const char* name, const F& f) {
    if (t.scalar_type() == at::kFloat) return f(float{});
    TORCH_CHECK_VALUE(t.scalar_type() == at::kDouble, "the CPU kernels read '", name,
                      "' as float32 or float64, got ", t.scalar_type());
    return f(double{});
}

// ------------------------------------------------------------- parallelism

/* Per-thread scratch, 64-byte aligned: vectorised loops then take the same
 * path whatever the allocator returns, so results do not depend on it. */
template <typename T>
struct Scratch {
    T* ptr;
    explicit Scratch(int64_t len)
        : ptr(static_cast<T*>(std::aligned_alloc(64, (sizeof(T) * (size_t)len + 63) / 64 * 64))) {
        TORCH_CHECK_WITH(OutOfMemoryError, ptr, "graphformer's CPU kernels: out of memory for ",
                         len, " elements of per-thread scratch");
    }
    ~Scratch() { std::free(ptr); }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
};

/* Runs row(i, work) for rows 0..rows-1 on PyTorch's threads, in dynamic
 * chunks of 8 rows (degrees vary: a thread that finishes early takes the
 * next chunk), each thread with heap scratch `work` of len elements of T.
 * Every row is computed by one thread with the same code, so results do not
 * depend on the schedule. At most 8 rows: the calling thread alone. */
template <typename T, typename Row>
void for_rows_with_scratch(int64_t rows, int64_t len, const Row& row) {
    constexpr int64_t CHUNK = 8;
    const int64_t chunks = (rows + CHUNK - 1) / CHUNK;
    const int64_t workers = std::min<int64_t>(at::get_num_threads(), chunks);
    std::atomic<int64_t> next{0};
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
        Scratch<T> work(len);
        for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1))
            for (int64_t i = c * CHUNK, end = std::min(rows, i + CHUNK); i < end; i++)
                row(i, work.ptr);
    });
}

/* The channel count C is a compile-time constant in the common cases for
 * float (the row functions are inlined into each case), so that the channel
 * loops unroll and vectorise; other values, and double (tests, exactness
 * checks), take the generic path. f takes the channel count. */
template <typename T, typename F>
INLINE void dispatch_c(int64_t C, const F& f) {
    if constexpr (std::is_same_v<T, float>) {
        switch (C) {
            case 8: f(std::integral_constant<int64_t, 8>{}); return;
            case 16: f(std::integral_constant<int64_t, 16>{}); return;
            case 32: f(std::integral_constant<int64_t, 32>{}); return;
            case 64: f(std::integral_constant<int64_t, 64>{}); return;
            default: break;
        }
    }
    f(C);
}

// ----------------------------------------------------------------- kernels

/* Passes over the edges grouped by source read rows by target (or the
 * edges' own rows) in a random order: they ask for the rows of the edge
 * PREFETCH positions ahead to be brought to the cache. At 200,000 random
 * edges (10,000 nodes, 8 heads, 2 threads): the features' sums by source
 * (then a scatter kernel; now the cross terms' backward pass by source, 64
 * features) 14 ms against 23 ms without, the fused attention's backward
 * 33-34 ms against 36-37 ms. Asking the same in the passes by target (the
 * tables' rows by source in the dot and gather by target, the keys and
 * values in backward_target_row) was not faster, and slower for the tables:
 * not done. But where the edge features come in another order than the
 * CSR's (order given: PyG's coalesced order is by source), the passes by
 * target meet their rows in a random order too, and prefetch them: at
 * 200,000 edges in PyG's order, a layer step with 64 features 395-404 ms
 * against 444 without (by target, 367-378). */
constexpr int64_t PREFETCH = 8;

template <typename T>
INLINE void prefetch_row(const T* row, int64_t D) {
    const char* bytes = reinterpret_cast<const char*>(row);
    for (int64_t o = 0; o < D * (int64_t)sizeof(T); o += 64) __builtin_prefetch(bytes + o);
}

/* Groups an edge set by source with a stable counting sort: writes the
 * transpose's row pointer ptr [S + 1] and perm [E], where position p of the
 * transpose is edge perm[p] (edges of one source keep their order, as a
 * stable sort would). Two serial passes over the edges, no comparisons. */
void group_by_source_kernel(int64_t E, int64_t S, const int64_t* col, int64_t* ptr,
                            int64_t* perm) {
    std::vector<int64_t> next((size_t)(S > 0 ? S : 1));
    std::memset(ptr, 0, (size_t)(S + 1) * sizeof(int64_t));
    for (int64_t e = 0; e < E; e++) ptr[col[e] + 1]++;
    for (int64_t s = 0; s < S; s++) ptr[s + 1] += ptr[s];
    std::memcpy(next.data(), ptr, (size_t)S * sizeof(int64_t));
    for (int64_t e = 0; e < E; e++) perm[next[col[e]]++] = e;
}

/* The strides of an [H, E] array: entry (h, e) at h * Strides::h + e *
 * Strides::e (head-major: E, 1; edge-major, an [E, H] array's transpose:
 * 1, H). */
struct Strides {
    int64_t h, e;
};

/* Target i: scores, softmax (alpha, before dropout), output. */
template <typename T>
INLINE void forward_row(
        int64_t i, int64_t N, int64_t H, const int64_t C, int64_t E, int64_t R, int64_t Ns,
        const T* q, const T* k, const T* v, const int64_t* ptr, const int64_t* col,
        const T* bias, Strides bs, const int64_t* etype, const T* tq, const T* tk, const T* vt,
        T scale, uint64_t seed, uint64_t threshold, T keep_mult, uint8_t* keep,
        T* out, T* alpha, T* __restrict__ acc, T* __restrict__ wsum) {
    const int64_t start = ptr[i], end = ptr[i + 1];
    for (int64_t h = 0; h < H; h++) {
        const T* qrow = q + (i * H + h) * C;
        T* __restrict__ al = alpha + h * E;
        const T* bh = bias ? bias + h * bs.h : nullptr;
        const T* tqr = tq ? tq + (h * N + i) * R : nullptr;
        const T* tkh = tk ? tk + h * Ns * R : nullptr;
        const T* kh = k + h * C;
        const T* vh = v + h * C;
        const int64_t kstride = H * C;
        T m = -std::numeric_limits<T>::infinity();
        int nan_score = 0;
        for (int64_t e = start; e < end; e++) {
            const int64_t j = col[e];
            const T* kj = kh + j * kstride;
            T s = 0;
            for (int64_t c = 0; c < C; c++) s += qrow[c] * kj[c];
            if (bh) s += bh[e * bs.e];
            if (tqr) s += tqr[etype[e]];
            if (tkh) s += tkh[j * R + etype[e]];
            s *= scale;
            al[e] = s;
            m = s > m ? s : m;
            nan_score |= s != s;
        }
        /* a NaN score makes the row NaN (as the softmax of NaN is), never an
         * "every score masked" row of zeros */
        if (nan_score) m = std::numeric_limits<T>::quiet_NaN();
        T* o = out + (i * H + h) * C;
        if (m == -std::numeric_limits<T>::infinity()) {   /* empty row, or every score masked */
            for (int64_t e = start; e < end; e++) al[e] = 0;
            if (keep)
                for (int64_t e = start; e < end; e++)
                    keep[h * E + e] = (uint8_t)keep_edge(seed, (uint64_t)(h * E + e), threshold);
            for (int64_t c = 0; c < C; c++) o[c] = 0;
            continue;
        }
        T total = 0;
        for (int64_t e = start; e < end; e++) {
            const T a = exp_t(al[e] - m);
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
            const T* vj = vh + col[e] * kstride;
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

/* Target i: ds (scaled score gradients, [H, E]), dq, dtq (+=), the kept
 * weight per (target, head, type) in wsum_rows [N, H, R], and g_edge [E, 2, H]
 * (ds and the kept weight alpha * multiplier, edge-major, so that the pass by
 * source reads one cache line per edge). */
template <typename T>
INLINE void backward_target_row(
        int64_t i, int64_t N, int64_t H, const int64_t C, int64_t E, int64_t R,
        const T* k, const T* v, const int64_t* ptr, const int64_t* col, const int64_t* etype,
        const T* vt, const T* alpha, const T* dout, const T* dalpha, T scale,
        const uint8_t* keep, T keep_mult, T* dq, T* ds, Strides dss, T* dtq, T* wsum_rows,
        T* g_edge, T* __restrict__ acc, T* __restrict__ vdot) {
    const int64_t start = ptr[i], end = ptr[i + 1];
    const int64_t kstride = H * C;
    for (int64_t h = 0; h < H; h++) {
        const T* doi = dout + (i * H + h) * C;
        const T* kh = k + h * C;
        const T* vh = v + h * C;
        const T* al = alpha + h * E;
        T* __restrict__ dsh = ds + h * dss.h;
        T* ws = vt ? wsum_rows + (i * H + h) * R : nullptr;
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
                const T* vj = vh + col[e] * kstride;
                T gv = 0;
                for (int64_t c = 0; c < C; c++) gv += doi[c] * vj[c];
                if (vt) {
                    gv += vdot[etype[e]];
                    ws[etype[e]] += a * mult;
                }
                g += mult * gv;
            }
            dsh[e * dss.e] = g;
            dot += a * g;
        }
        for (int64_t c = 0; c < C; c++) acc[c] = 0;
        for (int64_t e = start; e < end; e++) {
            const T d = al[e] * (dsh[e * dss.e] - dot) * scale;
            dsh[e * dss.e] = d;
            const T* kj = kh + col[e] * kstride;
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

/* Source j (edges grouped by source: tptr; their targets trow and positions
 * perm in target order): dk, dv, dtk (+=), from g_edge [E, 2, H]. acc_k,
 * acc_v [H C] are per-thread scratch. */
template <typename T>
INLINE void backward_source_row(
        int64_t j, int64_t Ns, int64_t H, const int64_t C, int64_t R, const T* q,
        const int64_t* tptr, const int64_t* trow, const int64_t* perm, const int64_t* etype,
        const T* dout, const T* g_edge, T* dk, T* dv, T* dtk, T* __restrict__ acc_k,
        T* __restrict__ acc_v) {
    const int64_t start = tptr[j], end = tptr[j + 1], end_all = tptr[Ns];
    for (int64_t x = 0; x < H * C; x++) { acc_k[x] = 0; acc_v[x] = 0; }
    for (int64_t p = start; p < end; p++) {
        const int64_t e = perm[p], i = trow[p];
        if (p + PREFETCH < end_all) {
            const int64_t fi = trow[p + PREFETCH];
            prefetch_row(q + fi * H * C, H * C);
            prefetch_row(dout + fi * H * C, H * C);
            prefetch_row(g_edge + perm[p + PREFETCH] * 2 * H, 2 * H);
        }
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

/* Inverted dropout with hashed decisions: element x of n is kept when bits
 * 16 (x % 4) .. 16 (x % 4) + 15 of the hash of x / 4 reach the threshold
 * (p * 2^16), and then scaled; backward applies the same to the gradient.
 * Blocks of 256 elements: 64 hashes (a loop that vectorises), read as 256
 * 16-bit slices (little-endian), then one select per element. Parallel
 * (static blocks of chunks) above 256 chunks, i.e. above 65536 elements.
 *
 * op 0: out = dropout(in) (also its backward, on the gradient).
 * op 1: out = dropout(gelu(in)), GELU exact: gelu(x) = x Phi(x); in one pass
 *       instead of three (GELU, the hashes, the select); the decisions of op 0.
 * op 2: its backward, out = grad * keep * scale * gelu'(in), with
 *       gelu'(x) = Phi(x) + x exp(-x^2 / 2) / sqrt(2 pi) (as torch's GELU backward). */
template <typename T>
INLINE void dropout_chunks(int64_t first, int64_t last, int64_t n, int64_t op, const T* in,
                           const T* grad, T* out, uint64_t seed, uint16_t thr, T s) {
    const T beta = (T)0.39894228040143267794;   /* 1 / sqrt(2 pi) */
    for (int64_t chunk = first; chunk < last; chunk++) {
        uint64_t hashes[64];
        uint16_t slices[256];
        for (int64_t k = 0; k < 64; k++) hashes[k] = splitmix64(seed, (uint64_t)(chunk * 64 + k));
        std::memcpy(slices, hashes, sizeof slices);
        const int64_t x0 = chunk * 256, m = n - x0 < 256 ? n - x0 : 256;
        const T* xs = in + x0;
        T* o = out + x0;
        if (op == 0)
            for (int64_t r = 0; r < m; r++) o[r] = slices[r] >= thr ? xs[r] * s : (T)0;
        else if (op == 1)
            for (int64_t r = 0; r < m; r++) {
                T g;
                const T y = xs[r] * phi_t(xs[r], &g);
                o[r] = slices[r] >= thr ? y * s : (T)0;
            }
        else
            for (int64_t r = 0; r < m; r++) {
                T g;
                const T d = phi_t(xs[r], &g) + xs[r] * beta * g;
                o[r] = slices[r] >= thr ? grad[x0 + r] * s * d : (T)0;
            }
    }
}

/* The chunks run in a function of their own, which takes every value as a
 * parameter: read through a lambda's captures by reference, the scale could
 * alias the output (as far as the compiler knows), which stops the loops
 * vectorising. */
template <typename T>
void dropout_kernel(int64_t n, int64_t op, const T* in, const T* grad, T* out, uint64_t seed,
                    uint64_t threshold, double scale) {
    const T s = (T)scale;
    const uint16_t thr = (uint16_t)threshold;
    at::parallel_for(0, (n + 255) / 256, 256, [&](int64_t first, int64_t last) {
        dropout_chunks<T>(first, last, n, op, in, grad, out, seed, thr, s);
    });
}


/* GCC / Clang vector types of 64 bytes (one AVX-512 register, two AVX2
 * ones): the lanes of the edge-blocked kernels below, one edge per lane.
 * may_alias (as the compilers' own __m512): scratch written element by
 * element is read as vectors. */
template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
    typedef float V __attribute__((vector_size(64), __may_alias__));
    static constexpr int64_t L = 16;
};
template <>
struct Lanes<double> {
    typedef double V __attribute__((vector_size(64), __may_alias__));
    static constexpr int64_t L = 8;
};

/* Runs block(i0, n, xt, more) for the blocks of W L edges of x [E, D] (the
 * last n <= W L) on PyTorch's threads: xt [D][W] vectors hold the block's
 * features transposed (lane l of vector xt[a W + k] is edge i0 + k L + l,
 * zero past n); more, `extra` vectors of the thread's own scratch for the
 * block's use. */
template <typename T, int64_t W = 1, typename Block>
void for_edge_blocks(int64_t E, int64_t D, const T* x, int64_t extra, const Block& block) {
    using V = typename Lanes<T>::V;
    constexpr int64_t L = Lanes<T>::L, WL = W * L;
    const int64_t blocks = (E + WL - 1) / WL;
    at::parallel_for(0, blocks, 4, [&, E, D](int64_t b0, int64_t b1) {
        Scratch<T> scratch((std::max<int64_t>(D, 1) * W + extra) * L);
        T* xs = scratch.ptr;
        V* xt = reinterpret_cast<V*>(xs);
        for (int64_t blk = b0; blk < b1; blk++) {
            const int64_t i0 = blk * WL, n = std::min<int64_t>(WL, E - i0);
            /* row by row (contiguous reads), element stores into the lanes */
            if (n < WL) std::fill_n(xs, D * WL, T(0));
            for (int64_t e = 0; e < n; e++) {
                const T* row = x + (i0 + e) * D;
                T* lane = xs + (e / L) * L + e % L;
                for (int64_t a = 0; a < D; a++) lane[a * WL] = row[a];
            }
            block(i0, n, xt, xt + std::max<int64_t>(D, 1) * W);
        }
    });
}

/* The quadratic edge terms out[e, h] = sum over a <= b of x[e, a] x[e, b]
 * c[t(a, b), h], t the row-major index of the upper triangle (diagonal
 * included; T = D (D + 1) / 2 rows of c [T, Hp], Hp = heads rounded up to
 * HB, the padding zero). Blocks of L edges at once: lane l of a vector is
 * edge i0 + l (x transposed into xt [D][L]), so each product x_a x_b is one
 * vector multiply and each coefficient one broadcast FMA into HB
 * accumulators (registers) — half the multiply-adds of the two projections
 * W_qe e, W_ke e (the symmetric form has D (D + 1) / 2 terms, not D^2) and
 * nothing per edge written to memory. Every edge is computed by the same
 * code in the same order whatever the threads, so results do not depend on
 * them. */
template <typename T, int64_t HB>
void edge_quadratic_kernel(int64_t E, int64_t D, int64_t H, int64_t Hp, const T* x,
                           const T* c, T* out) {
    using V = typename Lanes<T>::V;
    constexpr int64_t L = Lanes<T>::L;
    /* two blocks of L edges at once: each coefficient's broadcast serves two
     * multiply-adds, and 2 HB chains hide their latency */
    for_edge_blocks<T, 2>(E, D, x, 0, [=](int64_t i0, int64_t n, const V* xt, V*) {
        for (int64_t h0 = 0; h0 < H; h0 += HB) {
            V acc[HB], acc2[HB];
            for (int64_t h = 0; h < HB; h++) acc[h] = acc2[h] = V{};
            const T* cr = c + h0;
            for (int64_t a = 0; a < D; a++) {
                const V xa = xt[2 * a], xa2 = xt[2 * a + 1];
                for (int64_t b = a; b < D; b++, cr += Hp) {
                    const V m = xa * xt[2 * b], m2 = xa2 * xt[2 * b + 1];
#pragma GCC unroll 8
                    for (int64_t h = 0; h < HB; h++) {
                        acc[h] += m * cr[h];
                        acc2[h] += m2 * cr[h];
                    }
                }
            }
            const int64_t hn = std::min<int64_t>(HB, H - h0);
            for (int64_t e = 0; e < n; e++)
                for (int64_t h = 0; h < hn; h++)
                    out[(i0 + e) * H + h0 + h] = e < L ? acc[h][e] : acc2[h][e - L];
        }
    });
}

/* The gradient in x of edge_quadratic_kernel's terms for grad [E, H] (rows
 * of x's order), written into dx [E, D] (added to it when `accumulate`):
 * for each pair a <= b the coefficient weighted by the edge's gradients, w =
 * sum over h of grad[e, h] c[t(a, b), h], then dx_a += w x_b and dx_b += w
 * x_a (the diagonal: dx_a += 2 w x_a). Blocks of L edges at once as in the
 * forward (lanes are edges; a head block's gradients in registers, the
 * block's dx in scratch): D (D + 1) / 2 (Hp + 2) multiply-adds per edge,
 * where the product with every head's symmetric matrix takes D^2 H. Each
 * edge is computed by the same code in the same order whatever the threads. */
template <typename T, int64_t HB>
void edge_quadratic_dx_kernel(int64_t E, int64_t D, int64_t H, int64_t Hp, const T* x,
                              const T* g, const T* c, T* dx, bool accumulate) {
    using V = typename Lanes<T>::V;
    for_edge_blocks<T>(E, D, x, D, [=](int64_t i0, int64_t n, const V* xt, V* dt) {
        for (int64_t a = 0; a < D; a++) dt[a] = V{};
        for (int64_t h0 = 0; h0 < Hp; h0 += HB) {
            V gt[HB];
            for (int64_t h = 0; h < HB; h++) {
                V t = {};
                if (h0 + h < H)
                    for (int64_t l = 0; l < n; l++) t[l] = g[(i0 + l) * H + h0 + h];
                gt[h] = t;
            }
            /* w of the pair at cr: two chains of multiply-adds */
            const auto weight = [&](const T* cr) {
                V w0 = gt[0] * cr[0], w1 = gt[1] * cr[1];
#pragma GCC unroll 4
                for (int64_t h = 2; h < HB; h += 2) {
                    w0 += gt[h] * cr[h];
                    w1 += gt[h + 1] * cr[h + 1];
                }
                return w0 + w1;
            };
            const T* cr = c + h0;
            for (int64_t a = 0; a < D; a++) {
                const V xa = xt[a];
                const V wd = weight(cr);
                cr += Hp;
                V acc = (wd + wd) * xa;
                for (int64_t b = a + 1; b < D; b++, cr += Hp) {
                    const V w = weight(cr);
                    acc += w * xt[b];
                    dt[b] += w * xa;
                }
                dt[a] += acc;
            }
        }
        for (int64_t l = 0; l < n; l++) {
            T* out = dx + (i0 + l) * D;
            if (accumulate)
                for (int64_t a = 0; a < D; a++) out[a] += dt[a][l];
            else
                for (int64_t a = 0; a < D; a++) out[a] = dt[a][l];
        }
    });
}

/* The gradient of edge_quadratic_kernel's coefficients for grad [E, H]:
 * dc[t(a, b), h] = sum over e of grad[e, h] x[e, a] x[e, b], a <= b, into dc
 * [D (D + 1) / 2, H]. Lanes are edges, as in the forward: chunks of QK
 * blocks of L edges are transposed into scratch (features xt, gradients gt
 * of Hp heads, zero past the edges and heads), and for three pairs (a, b..b
 * + 2) and HB heads at a time the sums over the chunk's blocks stay in
 * registers (each block: three products x_a x_b and 3 HB multiply-adds),
 * then are added to the group's per-lane sums acc [pairs, Hp] in scratch:
 * D (D + 1) / 2 (H + 1) multiply-adds per edge, the triangle exactly.
 *
 * The blocks are split into at most QG groups whatever the threads, each
 * summing its lanes in order into its own partial sums, then added in
 * order: results do not depend on the threads. */
constexpr int64_t QG = 16, QK = 64;

template <typename T, int64_t HB>
void edge_quadratic_dc_kernel(int64_t E, int64_t D, int64_t H, int64_t Hp, const T* x,
                              const T* g, T* dc) {
    using V = typename Lanes<T>::V;
    constexpr int64_t L = Lanes<T>::L;
    const int64_t pairs = D * (D + 1) / 2, blocks = (E + L - 1) / L;
    /* at least two chunks of blocks per group: each group zeroes and sums its
     * own acc (a molecule batch, 7,040 edges: 1.5-1.6 ms against 1.9 with one) */
    const int64_t groups = std::min((blocks + 2 * QK - 1) / (2 * QK), QG);
    std::vector<T> partial(groups * pairs * Hp, T(0));
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
        Scratch<T> xs(QK * D * L), gs(QK * Hp * L), as(pairs * Hp * L);
        T* xsp = xs.ptr;
        T* gsp = gs.ptr;
        const V* xt = reinterpret_cast<const V*>(xsp);
        const V* gt = reinterpret_cast<const V*>(gsp);
        V* acc = reinterpret_cast<V*>(as.ptr);
        /* P pairs (a, b..b + P - 1), pair index t, heads h0..h0 + HB, over the K blocks */
        const auto sums = [&](auto P_, int64_t K, int64_t a, int64_t b, int64_t t, int64_t h0) {
            constexpr int64_t P = decltype(P_)::value;
            V r[P][HB];
            for (int64_t p = 0; p < P; p++)
                for (int64_t h = 0; h < HB; h++) r[p][h] = V{};
            for (int64_t k = 0; k < K; k++) {
                const V* xk = xt + k * D;
                const V* gk = gt + k * Hp + h0;
                const V xa = xk[a];
#pragma GCC unroll 3
                for (int64_t p = 0; p < P; p++) {
                    const V m = xa * xk[b + p];
#pragma GCC unroll 8
                    for (int64_t h = 0; h < HB; h++) r[p][h] += m * gk[h];
                }
            }
            for (int64_t p = 0; p < P; p++)
                for (int64_t h = 0; h < HB; h++) acc[(t + p) * Hp + h0 + h] += r[p][h];
        };
        for (int64_t grp = g0; grp < g1; grp++) {
            std::fill_n(as.ptr, pairs * Hp * L, T(0));
            const int64_t first = blocks * grp / groups, last = blocks * (grp + 1) / groups;
            for (int64_t cb = first; cb < last; cb += QK) {
                const int64_t K = std::min(QK, last - cb);
                for (int64_t k = 0; k < K; k++) {
                    const int64_t i0 = (cb + k) * L, n = std::min<int64_t>(L, E - i0);
                    if (n < L || Hp > H) {   /* lanes past the edges, heads past H: zero */
                        std::fill_n(xsp + k * D * L, D * L, T(0));
                        std::fill_n(gsp + k * Hp * L, Hp * L, T(0));
                    }
                    for (int64_t l = 0; l < n; l++) {
                        const T* row = x + (i0 + l) * D;
                        for (int64_t a = 0; a < D; a++) xsp[(k * D + a) * L + l] = row[a];
                        const T* gr = g + (i0 + l) * H;
                        for (int64_t h = 0; h < H; h++) gsp[(k * Hp + h) * L + l] = gr[h];
                    }
                }
                for (int64_t h0 = 0; h0 < Hp; h0 += HB)
                    for (int64_t a = 0, t = 0; a < D; a++) {
                        int64_t b = a;
                        for (; b + 3 <= D; b += 3, t += 3)
                            sums(std::integral_constant<int64_t, 3>{}, K, a, b, t, h0);
                        for (; b < D; b++, t++)
                            sums(std::integral_constant<int64_t, 1>{}, K, a, b, t, h0);
                    }
            }
            T* part = partial.data() + grp * pairs * Hp;
            for (int64_t i = 0; i < pairs * Hp; i++) {
                T s = 0;
                for (int64_t l = 0; l < L; l++) s += acc[i][l];
                part[i] = s;
            }
        }
    });
    for (int64_t t = 0; t < pairs; t++)
        for (int64_t h = 0; h < H; h++) {
            T s = 0;
            for (int64_t grp = 0; grp < groups; grp++) s += partial[(grp * pairs + t) * Hp + h];
            dc[t * H + h] = s;
        }
}

/* The edge-feature terms read each edge's features x [E, D] in the caller's
 * order: edge e (CSR position) is row xrow(e) = order[e] of x (order null:
 * e), so features never need to be copied into CSR order. The cross terms
 * (q_i . W_ke e + W_qe e . k_j) and the value term (W_ve sum_j a_ij e_ij)
 * make their node tables' rows themselves (cross_dot_kernel,
 * cross_grad_kernel, below): a pass by target and, for the cross terms, one
 * by source over the grouping by source (sptr [Ns + 1], perm), so that a
 * source's row is made once for all its edges; those passes read and write
 * the edges' own rows in a random order instead, prefetched. Each output
 * row is written by one thread: no atomics. */

/* The cross terms from the node rows themselves. The table row of node n,
 * t[h] = W_h^T y[n, h] ([H, D], from y [G, H, C] and the weights w [H C, D],
 * W_h its rows h C..h C + C - 1), is computed into scratch where a pass meets
 * the node, once per pass, and never written out: no [H, N, D] table, nor
 * its gradient, goes through memory (the batched products that made them
 * were memory-bound, and their fresh outputs page faults). The passes take
 * NB consecutive nodes at a time, so that these small products with W_h
 * (the rows, their gradient W_h acc and the weights' share y acc^T) run in
 * register blocks of NB nodes by one vector V of L features or channels,
 * reading each row of W once for NB nodes; V is the vector type where D and
 * C are multiples of its lanes, else T itself (L = 1). */
constexpr int64_t NB = 8;

template <typename V, typename T>
INLINE V load_v(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
}

template <typename V, typename T>
INLINE void store_v(T* p, const V& v) {
    std::memcpy(p, &v, sizeof(V));
}

/* out[j, h, o0 .. o0 + NV L) = in[j, h] M_h there, for NB nodes: NV NB
 * accumulators, each broadcast input serving NV multiply-adds. */
template <int64_t NV, typename T, typename V, int64_t L>
INLINE void rows_times_vectors(int64_t h, int64_t H, int64_t K, int64_t O, int64_t o0,
                               const T* __restrict__ m, const T* __restrict__ in,
                               T* __restrict__ out) {
    V acc[NV][NB];
    for (int64_t u = 0; u < NV; u++)
        for (int64_t j = 0; j < NB; j++) acc[u][j] = V{};
    for (int64_t k = 0; k < K; k++) {
        const T* mr = m + (h * K + k) * O + o0;
        V mv[NV];
        for (int64_t u = 0; u < NV; u++) mv[u] = load_v<V>(mr + u * L);
        for (int64_t j = 0; j < NB; j++) {
            const T b = in[(j * H + h) * K + k];
            for (int64_t u = 0; u < NV; u++) acc[u][j] += b * mv[u];
        }
    }
    for (int64_t j = 0; j < NB; j++)
        for (int64_t u = 0; u < NV; u++) store_v(out + (j * H + h) * O + o0 + u * L, acc[u][j]);
}

/* Calls f(h, o0, NV) for every head h and every run of NV = 2 vectors of L
 * lanes from o0 in [0, O), then NV = 1 for the rest (O a multiple of L). */
template <int64_t L, typename F>
INLINE void by_vector_pairs(int64_t H, int64_t O, const F& f) {
    const int64_t O2 = L > 1 ? O / (2 * L) * (2 * L) : 0;   /* the part in pairs of vectors */
    for (int64_t h = 0; h < H; h++) {
        for (int64_t o0 = 0; o0 < O2; o0 += 2 * L) f(h, o0, std::integral_constant<int64_t, 2>{});
        for (int64_t o0 = O2; o0 < O; o0 += L) f(h, o0, std::integral_constant<int64_t, 1>{});
    }
}

/* out[j, h] = in[j, h] M_h for NB nodes (in [NB, H, K], M [H, K, O], out
 * [NB, H, O]; O a multiple of L): the table rows t[j, h] = W_h^T y[j, h]
 * (K = C, O = D, M = w) and their gradient dy[j, h] = W_h acc[j, h] (K = D,
 * O = C, M = wt, w transposed [H, D, C]); two vectors of M's row at a time
 * where O allows. */
template <typename T, typename V, int64_t L>
INLINE void rows_times_block(int64_t H, int64_t K, int64_t O, const T* __restrict__ m,
                             const T* __restrict__ in, T* __restrict__ out) {
    by_vector_pairs<L>(H, O, [&](int64_t h, int64_t o0, auto nv) {
        rows_times_vectors<decltype(nv)::value, T, V, L>(h, H, K, O, o0, m, in, out);
    });
}

/* part[h, c, d0 .. d0 + NV L) += sum over j of y[j, h, c] acc[j, h] there,
 * the nodes in order: each broadcast y serves NV multiply-adds. */
template <int64_t NV, typename T, typename V, int64_t L>
INLINE void weight_grads_vectors(int64_t h, int64_t H, int64_t C, int64_t DD, int64_t d0,
                                 const T* __restrict__ y, const T* __restrict__ acc,
                                 T* __restrict__ part) {
    V a[NV][NB];
    for (int64_t j = 0; j < NB; j++)
        for (int64_t u = 0; u < NV; u++) a[u][j] = load_v<V>(acc + (j * H + h) * DD + d0 + u * L);
    for (int64_t c = 0; c < C; c++) {
        T* pr = part + (h * C + c) * DD + d0;
        V p[NV];
        for (int64_t u = 0; u < NV; u++) p[u] = load_v<V>(pr + u * L);
        for (int64_t j = 0; j < NB; j++) {
            const T b = y[(j * H + h) * C + c];
            for (int64_t u = 0; u < NV; u++) p[u] += b * a[u][j];
        }
        for (int64_t u = 0; u < NV; u++) store_v(pr + u * L, p[u]);
    }
}

/* part[h, c] += sum over j of y[j, h, c] acc[j, h] (the NB nodes' share of
 * dw, part [H, C, DD]); two vectors of features at a time where DD allows. */
template <typename T, typename V, int64_t L>
INLINE void weight_grads_block(int64_t H, int64_t C, int64_t DD, const T* __restrict__ y,
                               const T* __restrict__ acc, T* __restrict__ part) {
    by_vector_pairs<L>(H, DD, [&](int64_t h, int64_t d0, auto nv) {
        weight_grads_vectors<decltype(nv)::value, T, V, L>(h, H, C, DD, d0, y, acc, part);
    });
}

/* Calls f(V, L) with the vector type where DD and C are multiples of its
 * lanes, else with T (L = 1). */
template <typename T, typename F>
INLINE void dispatch_lanes(int64_t DD, int64_t C, const F& f) {
    constexpr int64_t L = Lanes<T>::L;
    if (DD % L == 0 && C % L == 0)
        f(typename Lanes<T>::V{}, std::integral_constant<int64_t, L>{});
    else
        f(T{}, std::integral_constant<int64_t, 1>{});
}

/* The node rows y[n0 .. n0 + nb) [nb, H, C], or where nb < NB, a copy padded
 * with zero rows to NB in pad. */
template <typename T>
INLINE const T* node_block(const T* y, int64_t n0, int64_t nb, int64_t HC, T* pad) {
    if (nb == NB) return y + n0 * HC;
    std::copy_n(y + n0 * HC, nb * HC, pad);
    std::fill_n(pad + nb * HC, (NB - nb) * HC, T(0));
    return pad;
}

/* A grouping of the edges by node: node n's edges sit at positions gptr[n]
 * .. gptr[n + 1] - 1, the edge at position q is members[q] (null: q, the
 * CSR by target itself), and its row of x is order[e] (null: e). */
struct Grouped {
    int64_t G;
    const int64_t *gptr, *members, *order;
    inline __attribute__((always_inline)) int64_t edge(int64_t q) const {
        return members ? members[q] : q;
    }
    inline __attribute__((always_inline)) int64_t xrow(int64_t e) const {
        return order ? order[e] : e;
    }
    /* whether the rows of x are met in another order than their own */
    inline __attribute__((always_inline)) bool scattered() const {
        return members || order;
    }
};

/* out[h * oh] = t[h] . xe for the H rows of a node's table row t [H, DD]
 * (added to out when `add`): one edge's cross terms. */
template <typename T>
INLINE void edge_dots(int64_t H, int64_t DD, const T* __restrict__ t, const T* __restrict__ xe,
                      T* out, int64_t oh, bool add) {
    for (int64_t h = 0; h < H; h++) {
        const T* __restrict__ th = t + h * DD;
        T sum = 0;
        for (int64_t d = 0; d < DD; d++) sum += th[d] * xe[d];
        T& o = out[h * oh];
        o = add ? o + sum : sum;
    }
}

/* out[e, h] = t_n[h] . x[xrow(e)] for every edge e of node n, [E, H] (added
 * to out when `add`), t_n the node's table row from y and w, made for NB
 * nodes at a time (rows_times_block). */
template <typename T>
void cross_dot_kernel(Grouped g, int64_t H, int64_t C, int64_t D, const T* y, const T* w,
                      const T* x, T* out, bool add) {
    dispatch_c<T>(D, [&](auto D_) {
        const int64_t DD = D_;   /* a compile-time constant for float's common D */
        dispatch_lanes<T>(DD, C, [&](auto v_, auto L_) {
            using V = decltype(v_);
            constexpr int64_t L = decltype(L_)::value;
            const int64_t E = g.gptr[g.G], blocks = (g.G + NB - 1) / NB, HC = H * C;
            for_rows_with_scratch<T>(blocks, NB * (H * DD + HC), [&, H, C, add](
                                         int64_t blk, T* __restrict__ t) {
                const int64_t n0 = blk * NB, nb = std::min(NB, g.G - n0);
                if (g.gptr[n0] == g.gptr[n0 + nb]) return;
                const T* yb = node_block(y, n0, nb, HC, t + NB * H * DD);
                rows_times_block<T, V, L>(H, C, DD, w, yb, t);
                for (int64_t j = 0; j < nb; j++)
                    for (int64_t q = g.gptr[n0 + j]; q < g.gptr[n0 + j + 1]; q++) {
                        if (g.scattered() && q + PREFETCH < E)
                            prefetch_row(x + g.xrow(g.edge(q + PREFETCH)) * DD, DD);
                        const int64_t e = g.edge(q);
                        edge_dots(H, DD, t + j * H * DD, x + g.xrow(e) * DD, out + e * H, 1,
                                  add);
                    }
            });
        });
    });
}

/* What cross_grad_kernel writes, each skipped where null: the gather dx
 * [E, D] (rows of x's order; written, or added to when add_dx); the node
 * rows' gradient dy [G, H, C] (written, or added to when add_dy: into a
 * gradient the caller already holds, no fresh buffer); the weights'
 * gradient dw [H C, D]; the cross term itself, dot[e * de + h * dh] =
 * t_n[h] . x[e] (cross_dot_kernel's, from the rows the gather makes anyway:
 * the value term's gradient of its weights). */
template <typename T>
struct CrossGrads {
    T* dx = nullptr;
    bool add_dx = false;
    T* dy = nullptr;
    bool add_dy = false;
    T* dw = nullptr;
    T* dot = nullptr;
    int64_t de = 0, dh = 0;
};

/* The gradients of cross_dot_kernel's terms for grad (grad[e * ge + h * gh]:
 * [E, H] or [H, E]), one pass over a grouping: per node n, acc[h] = sum over
 * its edges of grad[e, h] x[e] ([H, D] in scratch), then dy[n, h] = W_h
 * acc[h] and dw_h += y[n, h] acc[h]^T; per edge, dx[e] = sum_h grad[e, h]
 * t_n[h] (t_n recomputed); the products with W for NB nodes at a time (wt
 * [H, D, C] is w transposed; y is read only for dx and dw). Each node's and
 * edge's rows are written by one thread. The nodes are split into at most
 * XG groups whatever the threads, each summing dw into its own partial
 * sums, then added in order: results do not depend on the threads.
 *
 * The value term is this pass's dy: W_ve sum_e a[e, h] x[e] by target, for
 * the weights a as grad (edge_values); its gradients are a cross term's,
 * with the output's gradient as the node rows y and W_ve as w. */
constexpr int64_t XG = 16;

template <typename T>
void cross_grad_kernel(Grouped g, int64_t H, int64_t C, int64_t D, const T* y, const T* w,
                       const T* wt, const T* x, const T* grad, int64_t ge, int64_t gh,
                       CrossGrads<T> o) {
    const int64_t HC = H * C, HCD = H * C * D;
    const int64_t groups = std::max<int64_t>(1, std::min(XG, (g.G + 15) / 16));
    /* each group zeroes its own partial sums, on its thread */
    std::unique_ptr<T[]> partial(o.dw ? new T[groups * HCD] : nullptr);
    dispatch_c<T>(D, [&](auto D_) {
        const int64_t DD = D_;   /* a compile-time constant for float's common D */
        dispatch_lanes<T>(DD, C, [&](auto v_, auto L_) {
            using V = decltype(v_);
            constexpr int64_t L = decltype(L_)::value;
            const int64_t E = g.gptr[g.G];
            const bool sums = o.dy || o.dw, rows = o.dx || o.dot;
            at::parallel_for(0, groups, 1, [&, H, C, ge, gh, sums, rows](int64_t g0,
                                                                         int64_t g1) {
                Scratch<T> scratch(2 * NB * H * DD + 2 * NB * HC + DD);
                T* __restrict__ t = scratch.ptr;             /* [NB, H, D] table rows */
                T* __restrict__ acc = t + NB * H * DD;       /* [NB, H, D] sums */
                T* __restrict__ pad = acc + NB * H * DD;     /* [NB, H, C] padded rows */
                T* __restrict__ dys = pad + NB * HC;         /* [NB, H, C] dy */
                T* __restrict__ gx = dys + NB * HC;          /* [D] an edge's gather */
                for (int64_t grp = g0; grp < g1; grp++) {
                    T* part = o.dw ? partial.get() + grp * HCD : nullptr;
                    if (part) std::fill_n(part, HCD, T(0));
                    const int64_t first = g.G * grp / groups, last = g.G * (grp + 1) / groups;
                    for (int64_t n0 = first; n0 < last; n0 += NB) {
                        const int64_t nb = std::min(NB, last - n0);
                        const T* yb = rows || part ? node_block(y, n0, nb, HC, pad) : nullptr;
                        if (rows) rows_times_block<T, V, L>(H, C, DD, w, yb, t);
                        if (sums) std::fill_n(acc, NB * H * DD, T(0));
                        for (int64_t j = 0; j < nb; j++) {
                            const int64_t n = n0 + j;
                            const T* tn = t + j * H * DD;
                            T* an = acc + j * H * DD;
                            for (int64_t q = g.gptr[n]; q < g.gptr[n + 1]; q++) {
                                if (g.scattered() && q + PREFETCH < E) {
                                    const int64_t rf = g.xrow(g.edge(q + PREFETCH));
                                    prefetch_row(x + rf * DD, DD);
                                    if (o.dx) prefetch_row(o.dx + rf * DD, DD);
                                }
                                const int64_t e = g.edge(q), xr = g.xrow(e);
                                const T* __restrict__ xe = x + xr * DD;
                                const T* __restrict__ gr = grad + e * ge;
                                if (sums)
                                    for (int64_t h = 0; h < H; h++) {
                                        const T w = gr[h * gh];
                                        T* __restrict__ a = an + h * DD;
                                        for (int64_t d = 0; d < DD; d++) a[d] += w * xe[d];
                                    }
                                if (o.dot) edge_dots(H, DD, tn, xe, o.dot + e * o.de, o.dh, false);
                                if (!o.dx) continue;
                                for (int64_t d = 0; d < DD; d++) gx[d] = 0;
                                for (int64_t h = 0; h < H; h++) {
                                    const T w = gr[h * gh];
                                    const T* __restrict__ th = tn + h * DD;
                                    for (int64_t d = 0; d < DD; d++) gx[d] += w * th[d];
                                }
                                T* __restrict__ dxe = o.dx + xr * DD;
                                if (o.add_dx)
                                    for (int64_t d = 0; d < DD; d++) dxe[d] += gx[d];
                                else
                                    for (int64_t d = 0; d < DD; d++) dxe[d] = gx[d];
                            }
                        }
                        if (o.dy) {
                            rows_times_block<T, V, L>(H, DD, C, wt, acc, dys);
                            T* dyb = o.dy + n0 * HC;
                            if (o.add_dy)
                                for (int64_t i = 0; i < nb * HC; i++) dyb[i] += dys[i];
                            else
                                std::copy_n(dys, nb * HC, dyb);
                        }
                        if (part) weight_grads_block<T, V, L>(H, C, DD, yb, acc, part);
                    }
                }
            });
        });
    });
    if (o.dw)   /* every entry summed over the groups in order */
        at::parallel_for(0, HCD, 4096, [&](int64_t i0, int64_t i1) {
            const T* p = partial.get();
            for (int64_t i = i0; i < i1; i++) {
                T sum = 0;
                for (int64_t grp = 0; grp < groups; grp++) sum += p[grp * HCD + i];
                o.dw[i] = sum;
            }
        });
}

// --------------------------------------------------------------------- ops

std::tuple<Tensor, Tensor> group_by_source(const Tensor& col_in, int64_t num_cols) {
    const Tensor col = col_in.contiguous();
    const int64_t* c = data<const int64_t>(col, "col", at::kLong);
    TORCH_CHECK_VALUE(num_cols >= 0, "group_by_source: num_cols must be >= 0, got ", num_cols);
    const int64_t E = col.numel();
    for (int64_t e = 0; e < E; e++)
        TORCH_CHECK_INDEX(c[e] >= 0 && c[e] < num_cols, "edge ", e, " has source ", c[e],
                          ", outside the ", num_cols, " source nodes (valid 0..", num_cols - 1,
                          ")");
    Tensor ptr = at::empty({num_cols + 1}, col.options());
    Tensor perm = at::empty({E}, col.options());
    group_by_source_kernel(E, num_cols, c, ptr.data_ptr<int64_t>(), perm.data_ptr<int64_t>());
    return {ptr, perm};
}

/* The dropout kernel's op on a contiguous copy of x (and grad). */
Tensor run_dropout(int64_t op, const Tensor& x_in, const OptTensor& grad_in, const Tensor& seed,
                   int64_t threshold, double scale) {
    const Tensor x = x_in.contiguous();
    const OptTensor grad = grad_in ? OptTensor(grad_in->contiguous()) : std::nullopt;
    const uint64_t s = read_seed(seed);
    return by_dtype(x, "x", [&](auto zero) {
        using T = decltype(zero);
        Tensor out = at::empty(x.sizes(), x.options());
        dropout_kernel<T>(x.numel(), op, data<const T>(x, "x", x.scalar_type()),
                          data<const T>(grad, "grad", x.scalar_type(), x.numel()),
                          out.data_ptr<T>(), s, (uint64_t)threshold, scale);
        return out;
    });
}

Tensor hashed_dropout(const Tensor& x, const Tensor& seed, int64_t threshold, double scale) {
    return run_dropout(0, x, std::nullopt, seed, threshold, scale);
}

Tensor gelu_dropout(const Tensor& x, const Tensor& seed, int64_t threshold, double scale) {
    return run_dropout(1, x, std::nullopt, seed, threshold, scale);
}

Tensor gelu_dropout_backward(const Tensor& grad, const Tensor& x, const Tensor& seed,
                             int64_t threshold, double scale) {
    return run_dropout(2, x, grad, seed, threshold, scale);
}

/* The dropout multipliers [H, E]: keep_mult where kept, 0 where dropped
 * (parallel above 16384 entries). */
Tensor dropout_multiplier(int64_t seed, int64_t heads, int64_t num_edges, double p,
                          at::ScalarType dtype) {
    const auto [threshold, keep_mult] = dropout_threshold(p, ATTENTION_DROPOUT_BITS);
    Tensor out = at::empty({heads, num_edges}, at::TensorOptions().dtype(dtype));
    by_dtype(out, "dtype", [&](auto zero) {
        using T = decltype(zero);
        T* o = out.data_ptr<T>();
        const T keep = (T)keep_mult;
        const uint64_t thr = threshold;
        /* by value: a store to o[x] could alias a captured reference */
        at::parallel_for(0, heads * num_edges, 16384, [=](int64_t first, int64_t last) {
            const T kept = keep;
            for (int64_t x = first; x < last; x++)
                o[x] = keep_edge((uint64_t)seed, (uint64_t)x, thr) ? kept : (T)0;
        });
        return 0;
    });
    return out;
}

/* R, the number of edge types of the tables (0 without any). */
int64_t num_types(const OptTensor& tq, const OptTensor& tk, const OptTensor& vt) {
    if (tq) return tq->dim() == 3 ? tq->size(2) : 0;
    if (tk) return tk->dim() == 3 ? tk->size(2) : 0;
    return vt ? vt->size(0) : 0;
}

/* The sizes both attention ops read off q [N_t, H, C], k [N_s, H, C], col [E]. */
struct Sizes {
    int64_t N, H, C, Ns, E;
};

Sizes attention_sizes(const char* op, const Tensor& q, const Tensor& k, const Tensor& col) {
    TORCH_CHECK_VALUE(q.dim() == 3 && k.dim() == 3, op, ": q [N_t, H, C] and k [N_s, H, C] "
                      "expected, got shapes ", q.sizes(), " and ", k.sizes());
    return {q.size(0), q.size(1), q.size(2), k.size(0), col.numel()};
}

/* The arrays both attention ops read: q, k, v and the edge set (ptr, col). */
template <typename T>
struct Inputs {
    const T *q, *k, *v;
    const int64_t *ptr, *col;
};

template <typename T>
Inputs<T> attention_inputs(const Sizes& n, const Tensor& q, const Tensor& k, const Tensor& v,
                           const Tensor& ptr, const Tensor& col) {
    const auto f = q.scalar_type();
    return {data<const T>(q, "q", f, n.N * n.H * n.C), data<const T>(k, "k", f, n.Ns * n.H * n.C),
            data<const T>(v, "v", f, n.Ns * n.H * n.C),
            data<const int64_t>(ptr, "ptr", at::kLong, n.N + 1),
            data<const int64_t>(col, "col", at::kLong)};
}

std::tuple<Tensor, Tensor, Tensor> fused_attention(
        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& ptr, const Tensor& col,
        const Tensor& ptr_t, const Tensor& row_t, const Tensor& perm, const OptTensor& bias,
        const OptTensor& edge_type, const OptTensor& target_table,
        const OptTensor& source_table, const OptTensor& type_values, const Tensor& seed,
        double scale, double dropout) {
    const Sizes n = attention_sizes("fused_attention", q, k, col);
    const int64_t N = n.N, H = n.H, C = n.C, Ns = n.Ns, E = n.E;
    const int64_t R = num_types(target_table, source_table, type_values);
    TORCH_CHECK_VALUE(!(target_table || source_table || type_values) || edge_type,
                      "fused_attention: the type tables need 'edge_type'");
    const bool drop = dropout > 0.0;
    const auto [threshold, keep_mult] = dropout_threshold(dropout, ATTENTION_DROPOUT_BITS);
    const uint64_t s = read_seed(seed);
    Tensor out = at::empty({N, H, C}, q.options());
    Tensor alpha = at::empty({H, E}, q.options());
    Tensor keep = at::empty(drop ? std::vector<int64_t>{H, E} : std::vector<int64_t>{0},
                            q.options().dtype(at::kByte));
    by_dtype(q, "q", [&](auto zero) {
        using T = decltype(zero);
        const auto f = q.scalar_type();
        const Inputs<T> in = attention_inputs<T>(n, q, k, v, ptr, col);
        /* the bias in any layout (edge_cross gives it edge-major) */
        const T* bp = bias ? strided_data<const T>(*bias, "bias", f, H, E) : nullptr;
        const Strides bs = bias ? Strides{bias->stride(0), bias->stride(1)} : Strides{0, 0};
        const int64_t* ep = data<const int64_t>(edge_type, "edge_type", at::kLong, E);
        const T* tq = data<const T>(target_table, "target_table", f, H * N * R);
        const T* tk = data<const T>(source_table, "source_table", f, H * Ns * R);
        const T* vt = data<const T>(type_values, "type_values", f, R * H * C);
        uint8_t* kp8 = drop ? data<uint8_t>(keep, "keep", at::kByte) : nullptr;
        T* op = out.data_ptr<T>();
        T* ap = alpha.data_ptr<T>();
        /* scratch: acc [C], then wsum [R] (on the heap: R, the edge types, may be large) */
        for_rows_with_scratch<T>(N, C + R + 1, [&](int64_t i, T* work) {
            dispatch_c<T>(C, [&](auto CC) {
                forward_row<T>(i, N, H, CC, E, R, Ns, in.q, in.k, in.v, in.ptr, in.col, bp, bs,
                               ep, tq, tk, vt, (T)scale, s, threshold, (T)keep_mult, kp8, op,
                               ap, work, work + C);
            });
        });
        return 0;
    });
    return {out, alpha, keep};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> fused_attention_backward(
        const Tensor& dout_in, const OptTensor& dalpha_in, const Tensor& q, const Tensor& k,
        const Tensor& v, const Tensor& ptr, const Tensor& col, const Tensor& ptr_t,
        const Tensor& row_t, const Tensor& perm, const OptTensor& edge_type,
        const OptTensor& type_values, const Tensor& alpha, const Tensor& keep, int64_t R,
        bool target_table_grad, bool source_table_grad, double scale, double dropout,
        bool ds_by_edge) {
    const Sizes n = attention_sizes("fused_attention_backward", q, k, col);
    const int64_t N = n.N, H = n.H, C = n.C, Ns = n.Ns, E = n.E;
    TORCH_CHECK_VALUE(!(target_table_grad || source_table_grad || type_values) || edge_type,
                      "fused_attention_backward: the type tables need 'edge_type'");
    const bool drop = dropout > 0.0, typed_values = type_values.has_value();
    const auto [threshold, keep_mult] = dropout_threshold(dropout, ATTENTION_DROPOUT_BITS);
    (void)threshold;
    const Tensor dout = dout_in.contiguous();
    const OptTensor dalpha = dalpha_in ? OptTensor(dalpha_in->contiguous()) : std::nullopt;
    const auto opts = q.options();
    Tensor dq = at::empty(q.sizes(), opts), dk = at::empty(k.sizes(), opts);
    Tensor dv = at::empty(k.sizes(), opts);
    Tensor ds = ds_by_edge ? at::empty({E, H}, opts) : at::empty({H, E}, opts);
    const Strides dss = ds_by_edge ? Strides{1, H} : Strides{E, 1};
    Tensor dtq = target_table_grad ? at::zeros({H, N, R}, opts) : at::zeros({0}, opts);
    Tensor dtk = source_table_grad ? at::zeros({H, Ns, R}, opts) : at::zeros({0}, opts);
    Tensor wsum_rows = at::empty(typed_values ? std::vector<int64_t>{N, H, R}
                                              : std::vector<int64_t>{0}, opts);
    Tensor g_edge = at::empty({E, 2, H}, opts);
    by_dtype(q, "q", [&](auto zero) {
        using T = decltype(zero);
        const auto f = q.scalar_type();
        const Inputs<T> in = attention_inputs<T>(n, q, k, v, ptr, col);
        const int64_t* ptp = data<const int64_t>(ptr_t, "ptr_t", at::kLong, Ns + 1);
        const int64_t* rtp = data<const int64_t>(row_t, "row_t", at::kLong, E);
        const int64_t* pmp = data<const int64_t>(perm, "perm", at::kLong, E);
        const int64_t* ep = data<const int64_t>(edge_type, "edge_type", at::kLong, E);
        const T* vt = data<const T>(type_values, "type_values", f, R * H * C);
        const T* ap = data<const T>(alpha, "alpha", f, H * E);
        const T* dop = data<const T>(dout, "dout", f, N * H * C);
        const T* dap = data<const T>(dalpha, "dalpha", f, H * E);
        const uint8_t* kp8 = drop ? data<const uint8_t>(keep, "keep", at::kByte, H * E) : nullptr;
        T *dqp = dq.data_ptr<T>(), *dsp = ds.data_ptr<T>(), *gp = g_edge.data_ptr<T>();
        T* dtqp = target_table_grad ? dtq.data_ptr<T>() : nullptr;
        T* dtkp = source_table_grad ? dtk.data_ptr<T>() : nullptr;
        T* wsp = typed_values ? wsum_rows.data_ptr<T>() : nullptr;
        T *dkp = dk.data_ptr<T>(), *dvp = dv.data_ptr<T>();
        /* by target; scratch: acc [C], then vdot [R] */
        for_rows_with_scratch<T>(N, C + R + 1, [&](int64_t i, T* work) {
            dispatch_c<T>(C, [&](auto CC) {
                backward_target_row<T>(i, N, H, CC, E, R, in.k, in.v, in.ptr, in.col, ep, vt,
                                       ap, dop, dap, (T)scale, kp8, (T)keep_mult, dqp, dsp, dss,
                                       dtqp, wsp, gp, work, work + C);
            });
        });
        /* by source; scratch: acc_k [H C], then acc_v [H C] */
        for_rows_with_scratch<T>(Ns, 2 * H * C + 1, [&](int64_t j, T* work) {
            dispatch_c<T>(C, [&](auto CC) {
                backward_source_row<T>(j, Ns, H, CC, R, in.q, ptp, rtp, pmp, ep, dop, gp, dkp,
                                       dvp, dtkp, work, work + H * C);
            });
        });
        return 0;
    });
    return {dq, dk, dv, ds, dtq, dtk, wsum_rows};
}


/* The quadratic edge terms (edge_quadratic_kernel) of x [E, D] and the
 * coefficients c [D (D + 1) / 2, H] of every pair a <= b of features. */
/* The heads the quadratic kernels compute at once (HB): 4 for up to 4 heads,
 * else 8; checks x [E, D] and c [D (D + 1) / 2, H] for the op `op`. */
int64_t quadratic_head_block(const char* op, const Tensor& x, const Tensor& c) {
    TORCH_CHECK_VALUE(x.dim() == 2 && c.dim() == 2, op, ": 'x' [E, D] and 'c' [D (D + 1) / 2, H]",
                      " must be 2-D, got shapes ", x.sizes(), " and ", c.sizes());
    const int64_t D = x.size(1);
    TORCH_CHECK_VALUE(c.size(0) == D * (D + 1) / 2, op, ": 'c' must have D (D + 1) / 2 = ",
                      D * (D + 1) / 2, " rows (one per pair a <= b of the ", D,
                      " edge features), got ", c.size(0));
    return c.size(1) <= 4 ? 4 : 8;
}

/* c [T, H], contiguous, with zero heads appended up to a multiple of HB: the
 * kernels then read whole vectors of heads. */
Tensor pad_heads(const Tensor& c, int64_t HB) {
    const int64_t H = c.size(1), Hp = (H + HB - 1) / HB * HB;
    if (Hp == H) return c.contiguous();
    Tensor padded = at::zeros({c.size(0), Hp}, c.options());
    padded.narrow(1, 0, H).copy_(c);
    return padded;
}

Tensor edge_quadratic(const Tensor& x_in, const Tensor& c_in) {
    const int64_t HB = quadratic_head_block("edge_quadratic", x_in, c_in);
    const int64_t E = x_in.size(0), D = x_in.size(1), H = c_in.size(1);
    const Tensor x = x_in.contiguous(), c = pad_heads(c_in, HB);
    const int64_t Hp = c.size(1);
    return by_dtype(x, "x", [&](auto zero) {
        using T = decltype(zero);
        const T* xp = data<const T>(x, "x", x.scalar_type(), E * D);
        const T* cp = data<const T>(c, "c", x.scalar_type());
        Tensor out = at::empty({E, H}, x.options());
        if (HB == 4)
            edge_quadratic_kernel<T, 4>(E, D, H, Hp, xp, cp, out.data_ptr<T>());
        else
            edge_quadratic_kernel<T, 8>(E, D, H, Hp, xp, cp, out.data_ptr<T>());
        return out;
    });
}

/* The gradients of the quadratic form for grad [E, H] (rows of x's order):
 * dx [E, D] by edge_quadratic_dx_kernel (added to it when `accumulate`, else
 * written) and dc [D (D + 1) / 2, H] by edge_quadratic_dc_kernel, each
 * skipped when null. `op` names the caller in the checks' messages. */
void quadratic_gradients(const char* op, const Tensor& grad_in, const Tensor& x_in,
                         const Tensor& c_in, Tensor* dx, bool accumulate, Tensor* dc) {
    const int64_t HB = quadratic_head_block(op, x_in, c_in);
    const int64_t E = x_in.size(0), D = x_in.size(1), H = c_in.size(1);
    const Tensor x = x_in.contiguous(), grad = grad_in.contiguous(), c = pad_heads(c_in, HB);
    const int64_t Hp = c.size(1);
    by_dtype(x, "x", [&](auto zero) {
        using T = decltype(zero);
        const auto f = x.scalar_type();
        const T* xp = data<const T>(x, "x", f, E * D);
        const T* gp = data<const T>(grad, "grad", f, E * H);
        const T* cp = data<const T>(c, "c", f);
        const auto run = [&](auto HB_) {
            constexpr int64_t B = decltype(HB_)::value;
            if (dx) edge_quadratic_dx_kernel<T, B>(E, D, H, Hp, xp, gp, cp, dx->data_ptr<T>(),
                                                   accumulate);
            if (dc) edge_quadratic_dc_kernel<T, B>(E, D, H, Hp, xp, gp, dc->data_ptr<T>());
        };
        if (HB == 4)
            run(std::integral_constant<int64_t, 4>{});
        else
            run(std::integral_constant<int64_t, 8>{});
        return 0;
    });
}

/* A gradient of `like`'s shape where needed, else an empty tensor (the ops
 * return one per input, empty where not asked for). */
Tensor grad_buffer(bool needed, const Tensor& like) {
    return at::empty(needed ? like.sizes() : at::IntArrayRef{0}, like.options());
}

/* Checks `into` (the op's argument `name`), a gradient the caller holds and
 * the op adds into: contiguous and of `like`'s shape. */
void check_into(const char* op, const OptTensor& into, const Tensor& like, const char* name) {
    TORCH_CHECK_VALUE(!into || (into->sizes() == like.sizes() && into->is_contiguous()), op,
                      ": '", name, "' must be contiguous and of shape ", like.sizes(), ", got ",
                      into->sizes());
}

/* Where a gradient goes: into `into` when the caller gave it, else into the
 * op's own buffer `own`; null when not needed. */
template <typename T>
T* grad_target(bool needed, const OptTensor& into, Tensor& own, const char* name) {
    if (!needed) return nullptr;
    return into ? data<T>(*into, name, own.scalar_type()) : own.data_ptr<T>();
}

/* The gradients of edge_quadratic for grad [E, H]: dx [E, D] and dc [D (D +
 * 1) / 2, H], each empty where not needed. */
std::tuple<Tensor, Tensor> edge_quadratic_backward(const Tensor& grad, const Tensor& x,
                                                   const Tensor& c, bool need_x, bool need_c) {
    const int64_t D = x.size(1), H = c.size(1);
    Tensor dx = grad_buffer(need_x, x);
    Tensor dc = at::empty({need_c ? D * (D + 1) / 2 : 0, H}, x.options());
    quadratic_gradients("edge_quadratic_backward", grad, x, c, need_x ? &dx : nullptr, false,
                        need_c ? &dc : nullptr);
    return std::make_tuple(dx, dc);
}

/* The sizes of the edge-feature ops' arrays: N targets, Ns sources, H heads,
 * D features, E edges. */
struct TableSizes {
    int64_t N, Ns, H, D, E;
};

/* Checks the grouping by source of edge_cross: sptr [Ns + 1], perm [E]. */
void check_source_grouping(const char* op, const TableSizes& n, const Tensor& sptr,
                           const Tensor& perm) {
    TORCH_CHECK_VALUE(sptr.numel() == n.Ns + 1 && perm.numel() == n.E, op, ": 'sptr' must have ",
                      "Ns + 1 = ", n.Ns + 1, " and 'perm' E = ", n.E, " entries, got ",
                      sptr.numel(), " and ", perm.numel());
}

/* Checks the quadratic coefficients c [D (D + 1) / 2, H] of edge_cross. */
void check_cross_quadratic(const char* op, const TableSizes& n, const Tensor& x,
                           const OptTensor& c) {
    if (!c) return;
    quadratic_head_block(op, x, *c);   /* 2-D, one row per pair of features */
    TORCH_CHECK_VALUE(c->size(1) == n.H && c->scalar_type() == x.scalar_type(), op,
                      ": 'c' must be [D (D + 1) / 2, H] = [", n.D * (n.D + 1) / 2, ", ", n.H,
                      "] of x's dtype, got ", c->sizes());
}

/* The shapes of edge_cross's node rows a [N, H, C], b [Ns, H, C], weights wa,
 * wb [H C, D], features x [E, D], ptr [N + 1], col [E], order [E] (absent:
 * x in CSR order), checked for the op `op`. */
TableSizes cross_sizes(const char* op, const Tensor& a, const Tensor& b, const Tensor& wa,
                       const Tensor& wb, const Tensor& x, const Tensor& ptr, const Tensor& col,
                       const OptTensor& order, int64_t* C) {
    TORCH_CHECK_VALUE(a.dim() == 3 && b.dim() == 3 && x.dim() == 2, op, ": 'a' [N, H, C], 'b' ",
                      "[Ns, H, C] and 'x' [E, D] expected, got shapes ", a.sizes(), ", ",
                      b.sizes(), " and ", x.sizes());
    const TableSizes n{a.size(0), b.size(0), a.size(1), x.size(1), x.size(0)};
    *C = a.size(2);
    TORCH_CHECK_VALUE(b.size(1) == n.H && b.size(2) == *C, op, ": 'a' ", a.sizes(), " and 'b' ",
                      b.sizes(), " disagree on H or C");
    for (const auto& [w, name] : {std::pair<const Tensor&, const char*>{wa, "wa"}, {wb, "wb"}})
        TORCH_CHECK_VALUE(w.dim() == 2 && w.size(0) == n.H * *C && w.size(1) == n.D, op, ": '",
                          name, "' must be [H C, D] = [", n.H * *C, ", ", n.D, "], got ",
                          w.sizes());
    TORCH_CHECK_VALUE(ptr.numel() == n.N + 1 && col.numel() == n.E, op, ": 'ptr' must have N + 1",
                      " = ", n.N + 1, " and 'col' E = ", n.E, " entries, got ", ptr.numel(),
                      " and ", col.numel());
    TORCH_CHECK_VALUE(!order || order->numel() == n.E, op, ": 'order' must have E = ", n.E,
                      " entries, got ", order ? order->numel() : 0);
    return n;
}

/* The cross terms out[e, h] = (wa_h^T a[i, h] + wb_h^T b[j, h]) . x[order[e]]
 * of the edges e = (j -> i), [E, H]: a pass by target (the CSR), then one by
 * source over sptr and perm (the grouping by source), each computing its
 * nodes' table rows as it meets them (cross_dot_kernel); with coefficients
 * c, plus the quadratic form of x[order[e]] (edge_quadratic, computed in x's
 * order and added through order). */
Tensor edge_cross(const Tensor& a_in, const Tensor& b_in, const Tensor& wa_in,
                  const Tensor& wb_in, const Tensor& x_in, const Tensor& ptr, const Tensor& col,
                  const Tensor& sptr, const Tensor& perm, const OptTensor& order,
                  const OptTensor& c) {
    const Tensor a = a_in.contiguous(), b = b_in.contiguous(), x = x_in.contiguous();
    const Tensor wa = wa_in.contiguous(), wb = wb_in.contiguous();
    int64_t C = 0;
    const TableSizes n = cross_sizes("edge_cross", a, b, wa, wb, x, ptr, col, order, &C);
    check_source_grouping("edge_cross", n, sptr, perm);
    check_cross_quadratic("edge_cross", n, x, c);
    return by_dtype(a, "a", [&](auto zero) {
        using T = decltype(zero);
        const auto f = a.scalar_type();
        Tensor out = at::empty({n.E, n.H}, a.options());
        const int64_t* ord = data<const int64_t>(order, "order", at::kLong);
        const T* xp = data<const T>(x, "x", f);
        T* op = out.data_ptr<T>();
        cross_dot_kernel<T>({n.N, data<const int64_t>(ptr, "ptr", at::kLong), nullptr, ord}, n.H,
                            C, n.D, data<const T>(a, "a", f), data<const T>(wa, "wa", f), xp, op,
                            false);
        cross_dot_kernel<T>({n.Ns, data<const int64_t>(sptr, "sptr", at::kLong),
                             data<const int64_t>(perm, "perm", at::kLong), ord},
                            n.H, C, n.D, data<const T>(b, "b", f), data<const T>(wb, "wb", f), xp,
                            op, true);
        if (c) {
            const Tensor quad = edge_quadratic(x, *c);                  /* [E, H], x's order */
            const T* qp = quad.data_ptr<T>();
            const int64_t H = n.H;
            at::parallel_for(0, n.E, 4096, [&](int64_t e0, int64_t e1) {
                for (int64_t e = e0; e < e1; e++) {
                    const int64_t xr = ord ? ord[e] : e;
                    for (int64_t h = 0; h < H; h++) op[e * H + h] += qp[xr * H + h];
                }
            });
        }
        return out;
    });
}

/* The gradients of edge_cross for grad [E, H]: da, dwa and dx's share by
 * target in one pass over the CSR, db, dwb and dx's share by source in one
 * over the grouping by source (cross_grad_kernel), and with coefficients c,
 * dc and the quadratic form's gradient of x added into dx
 * (quadratic_gradients); each empty where not needed. */
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> edge_cross_backward(
    const Tensor& grad_in, const Tensor& a_in, const Tensor& b_in, const Tensor& wa_in,
    const Tensor& wb_in, const Tensor& x_in, const Tensor& ptr, const Tensor& col,
    const Tensor& sptr, const Tensor& perm, const OptTensor& order, const OptTensor& c,
    bool need_a, bool need_b, bool need_wa, bool need_wb, bool need_x, bool need_c,
    const OptTensor& da_into, const OptTensor& db_into, const OptTensor& dx_into) {
    const Tensor a = a_in.contiguous(), b = b_in.contiguous(), x = x_in.contiguous();
    const Tensor wa = wa_in.contiguous(), wb = wb_in.contiguous(), grad = grad_in.contiguous();
    int64_t C = 0;
    const TableSizes n =
        cross_sizes("edge_cross_backward", a, b, wa, wb, x, ptr, col, order, &C);
    check_source_grouping("edge_cross_backward", n, sptr, perm);
    check_cross_quadratic("edge_cross_backward", n, x, c);
    need_c = need_c && c;
    check_into("edge_cross_backward", da_into, a, "da_into");
    check_into("edge_cross_backward", db_into, b, "db_into");
    check_into("edge_cross_backward", dx_into, x, "dx_into");
    return by_dtype(a, "a", [&](auto zero) {
        using T = decltype(zero);
        const auto f = a.scalar_type();
        const int64_t* ord = data<const int64_t>(order, "order", at::kLong);
        const T* xp = data<const T>(x, "x", f);
        const T* gp = data<const T>(grad, "grad", f, n.E * n.H);
        /* the node rows' and x's gradients: added into da_into / db_into / dx_into
         * where given */
        Tensor da = grad_buffer(need_a && !da_into, a), db = grad_buffer(need_b && !db_into, b);
        Tensor dx = grad_buffer(need_x && !dx_into, x);
        Tensor dwa = grad_buffer(need_wa, wa), dwb = grad_buffer(need_wb, wb);
        Tensor dc = at::empty({need_c ? n.D * (n.D + 1) / 2 : 0, n.H}, x.options());
        const auto out = [](bool needed, Tensor& t) { return needed ? t.data_ptr<T>() : nullptr; };
        /* the weights transposed, [H, D, C], for the rows' gradients (when asked) */
        const auto transposed = [&](bool needed, const Tensor& w) {
            return needed ? w.view({n.H, C, n.D}).transpose(1, 2).contiguous() : w;
        };
        const Tensor wta = transposed(need_a, wa), wtb = transposed(need_b, wb);
        T* dxp = grad_target<T>(need_x, dx_into, dx, "dx_into");
        CrossGrads<T> by_target{dxp, dx_into.has_value(),
                                grad_target<T>(need_a, da_into, da, "da_into"),
                                da_into.has_value(), out(need_wa, dwa)};
        if (need_x || need_a || need_wa)
            cross_grad_kernel<T>({n.N, data<const int64_t>(ptr, "ptr", at::kLong), nullptr, ord},
                                 n.H, C, n.D, data<const T>(a, "a", f),
                                 data<const T>(wa, "wa", f), wta.data_ptr<T>(), xp, gp, n.H,
                                 1, by_target);
        CrossGrads<T> by_source{dxp, true, grad_target<T>(need_b, db_into, db, "db_into"),
                                db_into.has_value(), out(need_wb, dwb)};
        if (need_x || need_b || need_wb)
            cross_grad_kernel<T>({n.Ns, data<const int64_t>(sptr, "sptr", at::kLong),
                                  data<const int64_t>(perm, "perm", at::kLong), ord},
                                 n.H, C, n.D, data<const T>(b, "b", f),
                                 data<const T>(wb, "wb", f), wtb.data_ptr<T>(), xp, gp, n.H,
                                 1, by_source);
        if (c && (need_x || need_c)) {
            /* the quadratic form's gradients, from grad in x's order (put
             * there when x is read through order); its gradient of x added
             * into the cross terms' (one [E, D] buffer) */
            Tensor gx = grad;
            if (ord) {
                gx = at::empty({n.E, n.H}, grad.options());
                T* gxp = gx.data_ptr<T>();
                const int64_t H = n.H;
                at::parallel_for(0, n.E, 4096, [&](int64_t e0, int64_t e1) {
                    for (int64_t e = e0; e < e1; e++)
                        for (int64_t h = 0; h < H; h++) gxp[ord[e] * H + h] = gp[e * H + h];
                });
            }
            Tensor dx_all = dx_into ? *dx_into : dx;   /* the buffer the passes wrote */
            quadratic_gradients("edge_cross_backward", gx, x, *c, need_x ? &dx_all : nullptr,
                                true, need_c ? &dc : nullptr);
        }
        return std::make_tuple(da, db, dwa, dwb, dx, dc);
    });
}

/* The shapes of the value term's weights w [H, E], projection wv [H C, D],
 * features x [E, D], ptr [N + 1] and order [E] (absent: x in CSR order),
 * checked for the op `op`; C in *C. */
TableSizes value_sizes(const char* op, const Tensor& w, const Tensor& wv, const Tensor& x,
                       const Tensor& ptr, const OptTensor& order, int64_t* C) {
    TORCH_CHECK_VALUE(w.dim() == 2 && wv.dim() == 2 && x.dim() == 2, op, ": 'w' [H, E], 'wv' ",
                      "[H C, D] and 'x' [E, D] expected, got shapes ", w.sizes(), ", ",
                      wv.sizes(), " and ", x.sizes());
    const TableSizes n{ptr.numel() - 1, 0, w.size(0), x.size(1), x.size(0)};
    TORCH_CHECK_VALUE(n.N >= 0 && w.size(1) == n.E && n.H > 0 && wv.size(0) % n.H == 0 &&
                          wv.size(1) == n.D,
                      op, ": 'w' ", w.sizes(), ", 'wv' ", wv.sizes(), " and 'x' ", x.sizes(),
                      " disagree on H, E or D (wv: H C rows, D columns)");
    TORCH_CHECK_VALUE(!order || order->numel() == n.E, op, ": 'order' must have E = ", n.E,
                      " entries, got ", order ? order->numel() : 0);
    *C = wv.size(0) / n.H;
    return n;
}

/* The value term out[i, h] = W_h sum over the edges e into i of w[h, e]
 * x[order[e]], [N, H, C] (W_h the rows h C..h C + C - 1 of wv), written into
 * out (added to it when `add`): one pass by target (cross_grad_kernel's
 * sums and dy), no [H, N, D] sums through memory. */
void edge_values_impl(const char* op, const Tensor& w_in, const Tensor& wv_in,
                      const Tensor& x_in, const Tensor& ptr, const OptTensor& order,
                      const Tensor& out, bool add) {
    const Tensor w = w_in.contiguous(), wv = wv_in.contiguous(), x = x_in.contiguous();
    int64_t C = 0;
    const TableSizes n = value_sizes(op, w, wv, x, ptr, order, &C);
    TORCH_CHECK_VALUE((out.sizes() == at::IntArrayRef({n.N, n.H, C})), op, ": 'out' must be ",
                      "[N, H, C] = [", n.N, ", ", n.H, ", ", C, "], got ", out.sizes());
    by_dtype(w, "w", [&](auto zero) {
        using T = decltype(zero);
        const auto f = w.scalar_type();
        const Tensor wt = wv.view({n.H, C, n.D}).transpose(1, 2).contiguous();
        CrossGrads<T> o{nullptr, false, data<T>(out, "out", f), add, nullptr};
        cross_grad_kernel<T>({n.N, data<const int64_t>(ptr, "ptr", at::kLong), nullptr,
                              data<const int64_t>(order, "order", at::kLong)},
                             n.H, C, n.D, nullptr, data<const T>(wv, "wv", f),
                             data<const T>(wt, "wv", f), data<const T>(x, "x", f),
                             data<const T>(w, "w", f), 1, n.E, o);
    });
}

Tensor edge_values(const Tensor& w, const Tensor& wv, const Tensor& x, const Tensor& ptr,
                   const OptTensor& order) {
    TORCH_CHECK_VALUE(w.dim() == 2 && wv.dim() == 2 && w.size(0) > 0, "edge_values: 'w' [H, E] ",
                      "and 'wv' [H C, D] expected, got shapes ", w.sizes(), " and ", wv.sizes());
    Tensor out = at::empty({ptr.numel() - 1, w.size(0), wv.size(0) / w.size(0)}, w.options());
    edge_values_impl("edge_values", w, wv, x, ptr, order, out, false);
    return out;
}

void edge_values_into(const Tensor& out, const Tensor& w, const Tensor& wv, const Tensor& x,
                      const Tensor& ptr, const OptTensor& order) {
    edge_values_impl("edge_values_into", w, wv, x, ptr, order, out, true);
}

/* The gradients of edge_values for dout [N, H, C], those of a cross term
 * whose node rows are dout and weights wv, in one pass by target
 * (cross_grad_kernel): dw [H, E], dw[h, e] = (W_h^T dout[i, h]) .
 * x[order[e]], dx (in x's order; added into dx_into when given, and then
 * returned empty) and dwv [H C, D]; each empty where not needed. */
std::tuple<Tensor, Tensor, Tensor> edge_values_backward(
    const Tensor& dout_in, const Tensor& w_in, const Tensor& wv_in, const Tensor& x_in,
    const Tensor& ptr, const OptTensor& order, bool need_w, bool need_x, bool need_wv,
    const OptTensor& dx_into) {
    const Tensor dout = dout_in.contiguous(), w = w_in.contiguous(), wv = wv_in.contiguous();
    const Tensor x = x_in.contiguous();
    int64_t C = 0;
    const TableSizes n = value_sizes("edge_values_backward", w, wv, x, ptr, order, &C);
    TORCH_CHECK_VALUE((dout.sizes() == at::IntArrayRef({n.N, n.H, C})),
                      "edge_values_backward: ",
                      "'dout' must be [N, H, C] = [", n.N, ", ", n.H, ", ", C, "], got ",
                      dout.sizes());
    check_into("edge_values_backward", dx_into, x, "dx_into");
    return by_dtype(w, "w", [&](auto zero) {
        using T = decltype(zero);
        const auto f = w.scalar_type();
        const Grouped by_target{n.N, data<const int64_t>(ptr, "ptr", at::kLong), nullptr,
                                data<const int64_t>(order, "order", at::kLong)};
        const T *dp = data<const T>(dout, "dout", f), *wvp = data<const T>(wv, "wv", f);
        const T* xp = data<const T>(x, "x", f);
        Tensor dw = grad_buffer(need_w, w), dx = grad_buffer(need_x && !dx_into, x);
        Tensor dwv = grad_buffer(need_wv, wv);
        CrossGrads<T> o{grad_target<T>(need_x, dx_into, dx, "dx_into"), dx_into.has_value(),
                        nullptr, false,
                        need_wv ? dwv.data_ptr<T>() : nullptr,
                        need_w ? dw.data_ptr<T>() : nullptr, 1, n.E};
        if (need_w || need_x || need_wv)
            cross_grad_kernel<T>(by_target, n.H, C, n.D, dp, wvp, nullptr, xp,
                                 data<const T>(w, "w", f), 1, n.E, o);
        return std::make_tuple(dw, dx, dwv);
    });
}

}  // namespace

// The schemas are defined in Python (graphformer/nn/fused_cpu.py,
// functional.py, csr.py, edge_terms.py), with the fake implementations and
// autograd formulas.
TORCH_LIBRARY_IMPL(graphformer, CPU, m) {
    m.impl("group_by_source", &group_by_source);
    m.impl("hashed_dropout", &hashed_dropout);
    m.impl("gelu_dropout", &gelu_dropout);
    m.impl("gelu_dropout_backward", &gelu_dropout_backward);
    m.impl("fused_attention", &fused_attention);
    m.impl("fused_attention_backward", &fused_attention_backward);
    m.impl("edge_quadratic", &edge_quadratic);
    m.impl("edge_quadratic_backward", &edge_quadratic_backward);
    m.impl("edge_cross", &edge_cross);
    m.impl("edge_cross_backward", &edge_cross_backward);
    m.impl("edge_values", &edge_values);
    m.impl("edge_values_into", &edge_values_into);
    m.impl("edge_values_backward", &edge_values_backward);
}

// No tensor argument: no backend key to dispatch on, so it is the op's
// implementation for every backend (it allocates on the CPU).
TORCH_LIBRARY_IMPL(graphformer, CompositeExplicitAutograd, m) {
    m.impl("dropout_multiplier", &dropout_multiplier);
}
