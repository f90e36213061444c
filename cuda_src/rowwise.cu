// Row-wise jagged ops: reductions over the jagged axis, softmax / log-softmax (fwd + bwd),
// row-broadcast elementwise ops (jagged (+) per-row, jagged (+) padded dense, backward helpers),
// and per-row cumsum.
//
// Data layout: values [T, C] (C = prod(inner), contiguous); row r is the [L_r, C] slab starting at
// offsets[r]. Work is a list of *units* built on the host without a sync (cached per structure):
// each row is cut into units of `chunk` consecutive items (at least one unit per row, so empty
// rows are written), a row's units consecutive, described by a unit table (get_unit). Rows come
// longest first (chunked scans: in row order), so that long rows start in the first wave
// instead of trailing the kernel.
//
// Inside a block (256 threads): CT column threads (each owning V consecutive columns, 16-byte
// vector loads when V > 1) times R = 256 / CT lanes. Lanes form groups of LPR lanes, one unit per
// group: short rows put several rows in a block, long rows give a whole block (LPR = R) to a
// chunk. Every lane keeps U independent 16-byte loads in flight. Accumulation is fp32.
// Rows split over several blocks are combined deterministically by the last block of the row to
// finish (per-row counters, reset by that block): it folds the chunk states in a fixed order.
#include "common.cuh"

#define CJ_BLOCK 256
#ifndef CJ_MINB
#define CJ_MINB 2  // blocks per SM of the fused / elementwise / scan kernels (register cap 128)
#endif
#ifndef CJ_MINB_F
#define CJ_MINB_F 3  // the same for the fused reductions on the cp.async ring (see Pipe)
#endif
#ifndef CJ_MINB_S
#define CJ_MINB_S CJ_MINB  // the same for cumsum of 32-bit values
#endif
#ifndef CJ_MINB_S16  // and of whole rows of 16-bit values on sm_90 (H100: bf16 62.3 -> 60.6 us
#if __CUDA_ARCH__ >= 900  // at 3, fp32 97 -> 104; sm_80's code spills 44 bytes at 3; rows split
                          // in chunks: H200, one row of 10^6 bf16 items 310 -> 397 us at 3)
#define CJ_MINB_S16 3
#else
#define CJ_MINB_S16 CJ_MINB_S
#endif
#endif
#ifndef CJ_MINB_R
#define CJ_MINB_R 3  // blocks per SM of the plain reductions (register cap 80)
#endif
#ifndef CJ_MINB_RH
#define CJ_MINB_RH 3  // the same for the reductions with a larger state (argmax, logsumexp, dot)
#endif
#ifndef CJ_U
#define CJ_U 8  // independent 16-byte loads in flight per lane
#endif
#ifndef CJ_PACKED_MAX
#define CJ_PACKED_MAX 1  // argmax / argmin of 16-bit values: the batch max on packed pairs
#endif
#ifndef CJ_PIPE
#define CJ_PIPE 1  // argmax / logsumexp / dot / fused reductions stream through a cp.async ring
#endif
#ifndef CJ_PIPE_MAX
#define CJ_PIPE_MAX 1  // argmax / argmin stream through the ring
#endif
#ifndef CJ_PIPE_FUSED
#define CJ_PIPE_FUSED 1  // the fused 16-bit softmax forward's first pass streams through the ring
#endif
#ifndef CJ_PIPE_ST
#define CJ_PIPE_ST 2  // ring stages
#endif
#ifndef CJ_PIPE_U
#define CJ_PIPE_U 4  // 16-byte loads per stage and thread (over both inputs of K_DOT)
#endif
#ifndef CJ_SCAN_PIPE
#define CJ_SCAN_PIPE 1  // cumsum of long rows streams through a two-stage cp.async ring
#endif
#ifndef CJ_SCAN_U  // its items per lane and step (16-byte loads per stage): set by the host
#error "CJ_SCAN_U comes from cujagged/rowwise.py (_SCAN_U), which sizes the scan's ring"
#endif
#ifndef CJ_REV2
#define CJ_REV2 1  // the fused rewrite pass walks its row from the end
#endif
#ifndef CJ_UW
#define CJ_UW 6  // 16-byte loads in flight per lane in the fused rewrite (half each of two inputs;
                 // H100: 4 -> 6 made bf16 softmax fwd / bwd 1.7 / 1.1% faster, 8 spilled)
#endif
#ifndef CJ_UH
#define CJ_UH 4  // the same for reductions with a larger state (index, exp sum) or a second input
#endif
#define CJ_NOIDX 0x7fffffff
#define CJ_LOG2E 1.4426950408889634f

enum { K_SUM = 0, K_PROD = 1, K_MAX = 2, K_LSE = 3, K_DOT = 4 };
// K_MAXV: value-only max (K_MAX keeps the index too); K_IMIN: the least index (group_merge)
enum { K_MAXV = 5, K_IMIN = 6 };
// Reduction item transforms (K_SUM): 0 identity, 1 (x != 0), 2 (x == 0). K_MAX: 1 negate (min).
// Finalisation modes: K_SUM 0 sum, 1 mean, 2 any (count of non-zeros > 0), 3 all (count of
// zeros == 0); K_MAX 0 value, 1 index.
// Elementwise modes (apply()).
enum {
  E_ADD = 0, E_SUB = 1, E_RSUB = 2, E_MUL = 3, E_DIV = 4, E_RDIV = 5, E_MAXIMUM = 6,
  E_MINIMUM = 7, E_BCAST = 10, E_BCAST_MEAN = 11, E_SELECT = 12, E_LSE_BWD = 13,
  E_SOFTMAX = 14, E_LOGSOFTMAX = 15, E_SOFTMAX_BWD = 16, E_LOGSOFTMAX_BWD = 17
};
enum { OUT_T = 0, OUT_BOOL = 1, OUT_I64 = 2, OUT_F32 = 3 };
#define CJ_DEAD_BITS 0x7fc0de9eu  // q of a dead log-softmax row (lsm_dead_rows)

// ---- vector loads / stores ---------------------------------------------------------------------
template <typename T, int V> struct __align__(sizeof(T) * V) VecT { T v[V]; };

template <typename T, int V>
__device__ __forceinline__ VecT<T, V> ldv(const T* __restrict__ p) {
  return *reinterpret_cast<const VecT<T, V>*>(p);
}
// Element j of a vector as a float: 16-bit types read from their 32-bit pair (bf16: one shift or
// one AND, where extracting the 16-bit element first costs a PRMT more for every odd element).
template <typename T, int V>
__device__ __forceinline__ float vf(const VecT<T, V>& w, int j) {
  if constexpr (sizeof(T) == 2 && V % 2 == 0) {
    const uint32_t x2 = reinterpret_cast<const uint32_t*>(&w)[j >> 1];
    return (j & 1) ? hi_float<T>(x2) : lo_float<T>(x2);
  } else {
    return to_float(w.v[j]);
  }
}
// V floats rounded to T: 16-bit types two at a time (one cvt.rn.bf16x2 / f16x2 per pair)
template <typename T, int V>
__device__ __forceinline__ VecT<T, V> to_vec(const float (&f)[V]) {
  VecT<T, V> w;
  if constexpr (sizeof(T) == 2 && V % 2 == 0) {
#pragma unroll
    for (int k = 0; k < V / 2; ++k)
      reinterpret_cast<uint32_t*>(&w)[k] = pack2<T>(f[2 * k], f[2 * k + 1]);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) w.v[j] = from_float<T>(f[j]);
  }
  return w;
}
template <typename T, int V>
__device__ __forceinline__ void storev(T* __restrict__ p, const float (&f)[V]) {
  *reinterpret_cast<VecT<T, V>*>(p) = to_vec<T, V>(f);
}
// The same with the evict-first ("streaming", .cs) cache hint: data used once more at most. The
// fused softmax reads a row, then reads it again to write the result: streaming the second read
// and the output keeps the rows still waiting for their second read in L2 (without the hints
// ncu measured 355 MB of DRAM traffic for a 268 MB fp32 softmax on the H200).
#ifndef CJ_STREAM
#define CJ_STREAM 1
#endif
template <typename T, int V>
__device__ __forceinline__ VecT<T, V> ldv_last(const T* __restrict__ p) {
  if constexpr (CJ_STREAM && sizeof(VecT<T, V>) == 16) {
    VecT<T, V> w;
    *reinterpret_cast<int4*>(&w) = __ldcs(reinterpret_cast<const int4*>(p));
    return w;
  } else {
    return ldv<T, V>(p);
  }
}
template <typename T, int V>
__device__ __forceinline__ void storev_stream(T* __restrict__ p, const float (&f)[V]) {
  if constexpr (CJ_STREAM && sizeof(VecT<T, V>) == 16) {
    const VecT<T, V> w = to_vec<T, V>(f);
    __stcs(reinterpret_cast<int4*>(p), *reinterpret_cast<const int4*>(&w));
  } else {
    storev<T, V>(p, f);
  }
}

__device__ __forceinline__ bool isnanf_(float x) { return x != x; }
__device__ __forceinline__ float nanf_() { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ float ex2_(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// exp(x); callers pass x - m rounded once.
__device__ __forceinline__ float fast_exp(float x) { return ex2_(x * CJ_LOG2E); }
// exp(x - m) as ex2(x * log2(e) - c) with c = m * log2(e): one FFMA where the exact form takes an
// FADD and an FMUL. c's rounding puts the exponent off by up to ulp(c) / 2, ~|m| * 2^-25: callers
// take it only where |m| <= CJ_FFMA_MAX (relative error <= 2.6e-6, ex2.approx's own is 2^-22;
// at m = x = 1e30 the exponent would be off by ~1e22: exp(0) gave 0 when this was unguarded).
#ifndef CJ_FFMA_EXP
#define CJ_FFMA_EXP 1
#endif
#define CJ_FFMA_MAX 64.f
#define CJ_FLT_MAX 3.4028234663852886e38f
__device__ __forceinline__ float exp_ffma(float x, float c) { return ex2_(fmaf(x, CJ_LOG2E, -c)); }
__device__ __forceinline__ bool ffma_ok(float m) { return CJ_FFMA_EXP && fabsf(m) <= CJ_FFMA_MAX; }
// max that propagates NaN (sm_80+)
__device__ __forceinline__ float fmax_nan(float a, float b) {
  float d;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
}

// ---- reduction states --------------------------------------------------------------------------
// K_PROD keeps the product of its finite nonzero items in a (a zero or an infinity enters as its
// sign) and in i the flags 1: a zero seen, 2: an infinity seen, so that 0 * inf is NaN and an
// infinity stays infinite whatever the order of the partial products (one that underflowed to 0
// or overflowed to inf would otherwise decide it); see st_final. While a thread accumulates, the
// flags of all its V columns sit in s[0].i (bits 2j, 2j + 1: one register, not V) and
// reduce_body spreads them before the merges.
struct St { float a; float b; int i; };
// the kinds whose state uses i (exchanged, stored and loaded with a and b)
template <int K> __host__ __device__ constexpr bool st_uses_i() { return K == K_MAX || K == K_IMIN || K == K_PROD; }

template <int K> __device__ __forceinline__ St st_init() {
  St s;
  s.a = (K == K_PROD) ? 1.f : ((K == K_MAX || K == K_MAXV || K == K_LSE) ? -CJ_INF : 0.f);
  s.b = 0.f;
  s.i = (K == K_PROD) ? 0 : CJ_NOIDX;
  return s;
}

// fold one item x (already transformed) at position idx into s
template <int K> __device__ __forceinline__ void st_push(St& s, float x, float y, int idx) {
  if (K == K_SUM) {
    s.a += x;
  } else if (K == K_DOT) {
    s.a += x * y;
  } else if (K == K_MAXV) {
    s.a = fmax_nan(s.a, x);
  } else if (K == K_MAX) {  // compare-select: the first maximum, else the first NaN
    const bool take = (x > s.a) | ((x != x) & (s.a == s.a)) | (s.i == CJ_NOIDX);
    s.a = take ? x : s.a;
    s.i = take ? idx : s.i;
  } else {  // K_LSE, online (max, sum of exp(x - max))
    if (isnanf_(x) || isnanf_(s.a)) {
      s.a = nanf_();
    } else if (x > s.a) {
      s.b = s.b * fast_exp(s.a - x) + 1.f;
      s.a = x;
    } else if (x == s.a) {
      s.b += (x == -CJ_INF) ? 0.f : 1.f;
    } else {
      s.b += fast_exp(x - s.a);
    }
  }
}

// combine s with t, where t covers items after (or interleaved with larger idx than) s
template <int K> __device__ __forceinline__ void st_merge(St& s, const St& t) {
  if (K == K_SUM || K == K_DOT) {
    s.a += t.a;
  } else if (K == K_PROD) {
    s.a *= t.a;
    s.i |= t.i;
  } else if (K == K_MAXV) {
    s.a = fmax_nan(s.a, t.a);
  } else if (K == K_IMIN) {
    s.i = min(s.i, t.i);
  } else if (K == K_MAX) {
    if (t.i == CJ_NOIDX) return;
    const bool sn = isnanf_(s.a), tn = isnanf_(t.a);
    const bool take = s.i == CJ_NOIDX || (tn && !sn) || (!sn && t.a > s.a) ||
                      ((t.a == s.a || (sn && tn)) && t.i < s.i);
    if (take) s = t;
  } else {  // K_LSE
    if (isnanf_(s.a) || isnanf_(t.a)) { s.a = nanf_(); return; }
    const float m = fmaxf(s.a, t.a);
    if (m == -CJ_INF) return;
    const float bs = (s.a == m) ? s.b : s.b * fast_exp(s.a - m);
    const float bt = (t.a == m) ? t.b : t.b * fast_exp(t.a - m);
    s.a = m;
    s.b = bs + bt;
  }
}

// the reduced value of a row of n (truncated) items
template <int K>
__device__ __forceinline__ float st_final(const St& s, int mode, int64_t n, int has_init, float init) {
  if (K == K_SUM) {
    if (mode == 1) return n ? s.a * (1.f / (float)n) : nanf_();  // one division per thread (CSE)
    if (mode == 2) return s.a > 0.f ? 1.f : 0.f;
    if (mode == 3) return s.a == 0.f ? 1.f : 0.f;
    return s.a;
  } else if (K == K_MAX) {  // values were negated for min (mode bit 1 set by caller); the
                            // index of argmax / argmin is written by write_final
    float v = (n && s.i != CJ_NOIDX) ? s.a : -CJ_INF;
    if (has_init && !isnanf_(v)) v = fmaxf(v, init);
    return v;
  } else if (K == K_MAXV) {  // -inf for an empty row is the state's initial value
    float v = s.a;
    if (has_init && !isnanf_(v)) v = fmaxf(v, init);
    return v;
  } else if (K == K_LSE) {
    if (isnanf_(s.a)) return s.a;
    if (s.a == -CJ_INF || s.a == CJ_INF) return s.a;
    return s.a + logf(s.b);
  } else if (K == K_PROD) {  // NaN: an item was NaN, or a zero met an infinity
    if (isnanf_(s.a) || s.i == 3) return nanf_();
    if (s.i == 2) return copysignf(CJ_INF, s.a);
    if (s.i == 1) return copysignf(0.f, s.a);
  }
  return s.a;  // K_DOT; K_PROD with finite nonzero items only
}

template <typename T>
__device__ __forceinline__ void write_out(void* out, int kind, int64_t i, float v) {
  if (kind == OUT_T) reinterpret_cast<T*>(out)[i] = from_float<T>(v);
  else if (kind == OUT_BOOL) reinterpret_cast<uint8_t*>(out)[i] = v != 0.f;
  else if (kind == OUT_I64) reinterpret_cast<int64_t*>(out)[i] = (int64_t)v;
  else reinterpret_cast<float*>(out)[i] = v;
}

// ---- elementwise body --------------------------------------------------------------------------
// a, b: jagged operands at (item, col); p: per-row/padded operand; q: per-row fp32 (lse, dot...);
// pos: position in the row; n: row length (untruncated), trunc: truncation length; ix: index
__device__ __forceinline__ float apply(int mode, float a, float b, float p, float q, int64_t pos,
                                       int64_t n, int64_t trunc, int ix) {
  if (mode >= E_BCAST && pos >= trunc) return 0.f;
  switch (mode) {
    case E_ADD: return a + p;
    case E_SUB: return a - p;
    case E_RSUB: return p - a;
    case E_MUL: return a * p;
    case E_DIV: return a / p;
    case E_RDIV: return p / a;
    case E_MAXIMUM: return (isnanf_(a) || a >= p) ? a : p;
    case E_MINIMUM: return (isnanf_(a) || a <= p) ? a : p;
    case E_BCAST: return p;
    case E_BCAST_MEAN: return p / (float)(n < trunc ? n : trunc);
    case E_SELECT: return pos == ix ? p : 0.f;
    case E_LSE_BWD: return (q == -CJ_INF) ? 0.f : p * fast_exp(a - q);
    case E_SOFTMAX: return (q == -CJ_INF) ? 0.f : fast_exp(a - q);
    case E_LOGSOFTMAX: return (q == -CJ_INF) ? 0.f : a - q;
    case E_SOFTMAX_BWD: return b * (a - q);
    case E_LOGSOFTMAX_BWD:
      return __float_as_uint(q) == CJ_DEAD_BITS ? 0.f : a - fast_exp(b) * q;
  }
  return 0.f;
}

// Log-softmax backward of a row that was all -inf: its output is 0 whatever the input, so its
// gradient is 0. Such a row (of n >= 2 items) starts with two outputs of 0, which no log-softmax
// row holds (its exps sum to 1: one 0 leaves the others -inf), so the two first items of y (the
// row's first two output items y0, y1 at columns col .. col + V - 1) tell it: q of such a
// column becomes CJ_DEAD_BITS, a quiet NaN whose payload no arithmetic writes (NVIDIA GPUs write
// the canonical 0x7fffffff; a NaN gradient still gives NaN), and apply() writes 0.
template <typename T, int V>
__device__ __forceinline__ void lsm_dead_rows(const VecT<T, V>& y0, const VecT<T, V>& y1,
                                              float (&q)[V]) {
#pragma unroll
  for (int j = 0; j < V; ++j)
    if (vf(y0, j) == 0.f && vf(y1, j) == 0.f) q[j] = __uint_as_float(CJ_DEAD_BITS);
}


struct Unit { int64_t row, start, end, rbeg, len; int k, nu; };

// Unit `id` from the unit table units[id] = (row, row begin, untruncated row length, k | nu << 32)
// where the unit is the k-th of the row's nu units (items from k * chunk): one 32-byte record, two
// independent loads (the row's offsets are folded in on the host, so a block waits for one load
// before streaming its data). end is limited by `limit`; row < 0 for a spare unit (a grid sized
// by an upper bound).
__device__ __forceinline__ Unit get_unit(const int64_t* __restrict__ units, int64_t nunits,
                                         int64_t chunk, int64_t limit, int64_t id) {
  Unit u;
  u.row = -1;
  u.start = u.end = u.rbeg = u.len = 0;
  u.k = 0;
  u.nu = 1;
  if (id >= nunits) return u;
  const longlong2 a = __ldg(reinterpret_cast<const longlong2*>(units) + 2 * id);
  const longlong2 b = __ldg(reinterpret_cast<const longlong2*>(units) + 2 * id + 1);
  if (a.x < 0) return u;
  u.row = a.x;
  u.rbeg = a.y;
  u.len = b.x;
  u.k = (int)(b.y & 0xffffffff);
  u.nu = (int)(b.y >> 32);
  u.start = (int64_t)u.k * chunk;
  const int64_t le = u.len < limit ? u.len : limit;
  u.end = u.start + chunk < le ? u.start + chunk : le;
  return u;
}

// A thread's place in its block: column thread ct of CT, lane of R = CJ_BLOCK / CT, lane l of
// its group of LPR lanes, group sub (CT and LPR are powers of two: shifts, where a division by a
// launch argument costs ~20 instructions each).
struct Place {
  int ct, lane, R, l, sub, groups;  // groups = R / LPR per block
  __device__ __forceinline__ Place(int CT, int LPR) {
    const int sc = __ffs(CT) - 1, sl = __ffs(LPR) - 1;
    ct = threadIdx.x & (CT - 1);
    lane = threadIdx.x >> sc;
    R = CJ_BLOCK >> sc;
    l = lane & (LPR - 1);
    sub = lane >> sl;
    groups = R >> sl;
  }
};
// lanes per warp of a block of CT column threads
__device__ __forceinline__ int lanes_per_warp(int CT) { return CT < 32 ? 32 >> (__ffs(CT) - 1) : 1; }

template <int K> __device__ __forceinline__ St st_shfl_xor(const St& s, int o) {
  St t;
  t.a = (K != K_IMIN) ? __shfl_xor_sync(0xffffffffu, s.a, o) : 0.f;
  t.b = (K == K_LSE) ? __shfl_xor_sync(0xffffffffu, s.b, o) : 0.f;
  t.i = st_uses_i<K>() ? __shfl_xor_sync(0xffffffffu, s.i, o) : CJ_NOIDX;
  return t;
}

// Merge the states of the LPR lanes of each group (lane = thread / CT, l = lane % LPR; a lane's
// slot in sa/sb/si is thread * V) into lane 0 of the group (l == 0): a butterfly over the lanes
// that share a warp (CT < 32), then through shared memory over the group's warps: the first lane
// of each warp writes its state and lane 0 folds them in order (two barriers; a tree, lanes
// l < h taking lane l + h, two barriers a level, measured the same: H100, 85f877f). Deterministic
// (fixed order); every thread of the block must call it; sa/sb/si are free again on return.
// a state to / from slot k of sa / sb / si (the fields kind K uses)
template <int K>
__device__ __forceinline__ void st_store(const St& s, float* sa, float* sb, int* si, int k) {
  if (K != K_IMIN) sa[k] = s.a;
  if (K == K_LSE) sb[k] = s.b;
  if (st_uses_i<K>()) si[k] = s.i;
}
template <int K>
__device__ __forceinline__ St st_load(const float* sa, const float* sb, const int* si, int k) {
  St t;
  t.a = (K != K_IMIN) ? sa[k] : 0.f;
  t.b = (K == K_LSE) ? sb[k] : 0.f;
  t.i = st_uses_i<K>() ? si[k] : CJ_NOIDX;
  return t;
}
template <int K, int V>
__device__ __forceinline__ void merge_tree(St (&s)[V], float* sa, float* sb, int* si, int l,
                                           int CT, int LPR) {
  const int lpw = lanes_per_warp(CT);
  for (int o = CT; o < 32 && o < LPR * CT; o <<= 1) {
#pragma unroll
    for (int j = 0; j < V; ++j) st_merge<K>(s[j], st_shfl_xor<K>(s[j], o));
  }
  if (LPR <= lpw) return;
  const int me = (int)threadIdx.x * V;  // this lane's slot: (lane * CT + ct) * V
  if (l >= lpw && (l & (lpw - 1)) == 0) {
#pragma unroll
    for (int j = 0; j < V; ++j) st_store<K>(s[j], sa, sb, si, me + j);
  }
  __syncthreads();
  if (l == 0) {
    const int wl = lpw * CT * V;  // slots between the first lanes of consecutive warps
#pragma unroll 1
    for (int w = 1; w < LPR / lpw; ++w) {  // the group's lane w * lpw
#pragma unroll
      for (int j = 0; j < V; ++j) st_merge<K>(s[j], st_load<K>(sa, sb, si, me + w * wl + j));
    }
  }
  __syncthreads();
}

#ifndef CJ_MERGE2
#define CJ_MERGE2 1
#endif
// merge_tree, but the states of K_LSE and K_MAX merge in two cheap steps: the group's max M
// (given to every lane), then K_LSE: the sum of each lane's sum rescaled to M (one exp per lane
// and column, where each online (max, sum) merge takes two, on a chain of log2(LPR) merges);
// K_MAX: the least index of the lanes that hold M (NaN: of the lanes that hold a NaN), where
// each (value, index) merge is a chain of compares.
template <int K, int V>
__device__ __forceinline__ void group_merge(St (&s)[V], float* sa, float* sb, int* si, int l,
                                            int CT, int LPR) {
  if constexpr ((K == K_LSE || K == K_MAX) && CJ_MERGE2) {
    St t[V];
#pragma unroll
    for (int j = 0; j < V; ++j) t[j].a = s[j].a;
    merge_tree<K_MAXV, V>(t, sa, sb, si, l, CT, LPR);
    if (LPR > lanes_per_warp(CT)) {  // the tree left M in lane 0 of the group only
      const int k0 = ((int)threadIdx.x - l * CT) * V;  // the slot of the group's lane 0
      if (l == 0) {
#pragma unroll
        for (int j = 0; j < V; ++j) sb[k0 + j] = t[j].a;
      }
      __syncthreads();  // (the second merge_tree uses sa or si, not sb, and has a barrier
                        // before its return whenever this branch runs: sb is free on return)
#pragma unroll
      for (int j = 0; j < V; ++j) t[j].a = sb[k0 + j];
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float m = t[j].a, a = s[j].a;
      if (K == K_LSE)  // NaN if a lane is; a lane of +inf makes its term NaN (see st_final)
        t[j].a = (m == -CJ_INF) ? 0.f : s[j].b * fast_exp(a - m);
      else
        t[j].i = (a == m || (m != m && a != a)) ? s[j].i : CJ_NOIDX;
      s[j].a = m;
    }
    merge_tree<K == K_LSE ? K_SUM : K_IMIN, V>(t, sa, sb, si, l, CT, LPR);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if (K == K_LSE) s[j].b = t[j].a;
      else s[j].i = t[j].i;
    }
  } else {
    merge_tree<K, V>(s, sa, sb, si, l, CT, LPR);
  }
}

template <typename T, int K, int V>
__device__ __forceinline__ void write_final(const St (&s)[V], int mode, int64_t n, int has_init,
                                            float init, void* out, int out_kind, int64_t base) {
  if (K == K_MAX && (mode & 2)) {  // argmax / argmin: the index as an integer (not via a float,
                                   // exact past 2^24), V of them in 16-byte stores when aligned
    int64_t ix[V];
#pragma unroll
    for (int j = 0; j < V; ++j) ix[j] = (n && s[j].i != CJ_NOIDX) ? s[j].i : -1;
    int64_t* o = reinterpret_cast<int64_t*>(out) + base;
    if (V % 2 == 0 && (reinterpret_cast<size_t>(o) & 15) == 0) {
#pragma unroll
      for (int j = 0; j < V; j += 2)
        *reinterpret_cast<longlong2*>(o + j) = make_longlong2(ix[j], ix[j + 1]);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) o[j] = ix[j];
    }
    return;
  }
  const bool neg = (K == K_MAX || K == K_MAXV) && (mode & 1);
#pragma unroll
  for (int j = 0; j < V; ++j) {
    float v = st_final<K>(s[j], mode, n, has_init, neg ? -init : init);
    if (neg && !(mode & 2)) v = -v;
    write_out<T>(out, out_kind, base + j, v);
  }
}

// The row cache of a fused block (dynamic shared memory): the lane's first nc items of each of
// its ni inputs (16-byte vectors), item u of input x of this thread at
// cache + ((u * ni + x) * CJ_BLOCK) * 16 (cache: the thread's own first slot; a warp's 16-byte
// accesses are conflict-free; a thread reads only the slots it filled: no barrier).
__device__ __forceinline__ uint32_t cache_slot(uint32_t cache, int u, int x, int ni) {
  return cache + (uint32_t)((u * ni + x) * CJ_BLOCK) * 16u;
}

// The rewrite of a whole row after its reduction q (softmax forward / backward), mode FM.
// Lane l of LPR writes items l, l + LPR, ...: 0 past trunc, else apply(FM, a, b, q), or with
// FFMA (softmax) exp_ffma(a, c). The lane's first nc items come from the row cache.
template <typename T, int V, int FM, bool FFMA>
__device__ __forceinline__ void rewrite_row(const T* __restrict__ ar, const T* __restrict__ br,
                                            const float (&q)[V], const float (&c)[V],
                                            const Unit& un, int64_t C, int64_t trunc, int l,
                                            int LPR, T* __restrict__ fout, int64_t col,
                                            uint32_t cache, int nc) {
  constexpr int UW = (FM == E_SOFTMAX || FM == E_LOGSOFTMAX) ? CJ_UW : CJ_UW / 2;  // 1 or 2 inputs
  const int64_t step = (int64_t)LPR * C;
  const int lg = __ffs(LPR) - 1;  // LPR is a power of two
  const int64_t nt = un.len < trunc ? un.len : trunc;  // items that are read
  const int64_t G = (int64_t)UW * LPR, ng = (un.len + G - 1) / G;  // groups of UW items per lane
  for (int64_t gi = 0; gi < ng; ++gi) {
    // CJ_REV2: last group first, so the items read last by the reduction (most likely still in
    // L2) are read again first
    const int64_t i0 = (CJ_REV2 ? ng - 1 - gi : gi) * G + l;
    if (i0 >= un.len) continue;
    const T* pa = ar + i0 * C;
    const T* pb = br ? br + i0 * C : br;
    T* po = fout + (un.rbeg + i0) * C + col;
    // counts of this lane's next UW items below nt (read) and below len (written)
    const int64_t rr = nt - i0, rw = un.len - i0;
    const int nr = rr <= 0 ? 0 : ((rr < (int64_t)UW * LPR ? (int)rr : UW * LPR) + LPR - 1) >> lg;
    const int nw = ((rw < (int64_t)UW * LPR ? (int)rw : UW * LPR) + LPR - 1) >> lg;
    VecT<T, V> x[UW], y[UW];
    const int uc = (int)((CJ_REV2 ? ng - 1 - gi : gi) * UW);  // the lane's item index of x[0]
    if (uc + UW <= nc) {  // a group wholly in the row cache (its first nr items were read)
      if constexpr (sizeof(VecT<T, V>) == 16) {
        const int ni = br ? 2 : 1;
#pragma unroll
        for (int u = 0; u < UW; ++u) {
          if (u < nr) {
            x[u] = lds16<VecT<T, V>>(cache_slot(cache, uc + u, 0, ni));
            if (br) y[u] = lds16<VecT<T, V>>(cache_slot(cache, uc + u, 1, ni));
          }
        }
      }
    } else {
#pragma unroll
      for (int u = 0; u < UW; ++u) {
        if (u < nr) {
          x[u] = ldv_last<T, V>(pa + u * step);
          if (br) y[u] = ldv_last<T, V>(pb + u * step);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < UW; ++u) {
      if (u < nw) {
        float o[V];
#pragma unroll
        for (int j = 0; j < V; ++j)
          o[j] = (u >= nr) ? 0.f
                 : FFMA    ? exp_ffma(vf(x[u], j), c[j])
                           : apply(FM, vf(x[u], j), br ? vf(y[u], j) : 0.f, 0.f, q[j], 0, un.len,
                                   trunc, 0);
        storev_stream<T, V>(po + u * step, o);
      }
    }
  }
}
template <typename T, int V, int FM>
__device__ __forceinline__ void fused_write(const T* __restrict__ ar, const T* __restrict__ br,
                                            const float (&q)[V], const Unit& un, int64_t C,
                                            int64_t trunc, int l, int LPR, T* __restrict__ fout,
                                            int64_t col, uint32_t cache, int nc) {
  // softmax: exp(a - q) by exp_ffma where every |q| <= CJ_FFMA_MAX or q = -inf (a row of -inf:
  // fma(-inf, .) = -inf, exp 0)
  float c[V];
  bool fast = FM == E_SOFTMAX;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    c[j] = (q[j] == -CJ_INF) ? 0.f : q[j] * CJ_LOG2E;
    fast &= q[j] == -CJ_INF || ffma_ok(q[j]);
  }
  if (FM == E_SOFTMAX && fast)
    rewrite_row<T, V, FM, true>(ar, br, q, c, un, C, trunc, l, LPR, fout, col, cache, nc);
  else
    rewrite_row<T, V, FM, false>(ar, br, q, c, un, C, trunc, l, LPR, fout, col, cache, nc);
}

// The first u < nv where each half of pair k of w[u] equals that half of m2 (float equality: -0
// == +0), or is NaN when has_nan (m2 is then NaN in a half): ul, uh. Without NaN on sm_90 one
// packed compare per pair and item (setp.eq.and.bf16x2 / f16x2, the item's u < nv folded in) and
// two predicated moves: no branch (a branch per item and a NaN test per item, as the compiler
// laid out the guarded form, cost ~2x the instructions).
template <typename T> __device__ __forceinline__ void eq2_set(uint32_t x2, uint32_t m2, int u,
                                                              bool ok, int& ul, int& uh) {
  if (ok && lo_float<T>(x2) == lo_float<T>(m2)) ul = u;
  if (ok && hi_float<T>(x2) == hi_float<T>(m2)) uh = u;
}
#if __CUDA_ARCH__ >= 900
#define CJ_EQ2_SET(TT, PTX)                                                                       \
  template <> __device__ __forceinline__ void eq2_set<TT>(uint32_t x2, uint32_t m2, int u,     \
                                                          bool ok, int& ul, int& uh) {          \
    asm("{\n .reg .pred v, p, q;\n setp.ne.b32 v, %5, 0;\n"                                    \
        " setp.eq.and." PTX " p|q, %2, %3, v;\n @p mov.b32 %0, %4;\n @q mov.b32 %1, %4;\n}"      \
        : "+r"(ul), "+r"(uh)                                                                    \
        : "r"(x2), "r"(m2), "r"(u), "r"((int)ok));                                             \
  }
CJ_EQ2_SET(bf16_t, "bf16x2")
CJ_EQ2_SET(f16_t, "f16x2")
#undef CJ_EQ2_SET
#endif
template <typename T, int V, int U>
__device__ __forceinline__ void first_pos2(const VecT<T, V> (&w)[U], int k, uint32_t m2, int nv,
                                           bool has_nan, int& ul, int& uh) {
  if (!has_nan) {
#pragma unroll
    for (int u = U - 1; u >= 0; --u)
      eq2_set<T>(reinterpret_cast<const uint32_t*>(&w[u])[k], m2, u, u < nv, ul, uh);
    return;
  }
  const float ml = lo_float<T>(m2), mh = hi_float<T>(m2);
#pragma unroll
  for (int u = U - 1; u >= 0; --u) {
    if (u < nv) {
      const uint32_t x2 = reinterpret_cast<const uint32_t*>(&w[u])[k];
      const float xl = lo_float<T>(x2), xh = hi_float<T>(x2);
      if (xl == ml || (ml != ml && xl != xl)) ul = u;
      if (xh == mh || (mh != mh && xh != xh)) uh = u;
    }
  }
}

// The max (min when neg) of each pair of 16-bit columns over items u < nv (1 <= nv <= U) of a
// batch, two columns per instruction on the raw pairs (max.NaN.bf16x2 / f16x2: NaN if one is).
template <typename T, int V, int U>
__device__ __forceinline__ void batch_max2(const VecT<T, V> (&w)[U], int nv, bool neg,
                                           uint32_t (&m2)[V / 2]) {
#pragma unroll
  for (int k = 0; k < V / 2; ++k) m2[k] = reinterpret_cast<const uint32_t*>(&w[0])[k];
#pragma unroll
  for (int u = 1; u < U; ++u) {
    if (u < nv) {
#pragma unroll
      for (int k = 0; k < V / 2; ++k) {
        const uint32_t x2 = reinterpret_cast<const uint32_t*>(&w[u])[k];
        m2[k] = neg ? min2_nan<T>(m2[k], x2) : max2_nan<T>(m2[k], x2);
      }
    }
  }
}

// m[j] = the max of column j over items u < nv (1 <= nv <= U) of a batch, NaN if one is NaN.
template <typename T, int V, int U>
__device__ __forceinline__ void batch_max(const VecT<T, V> (&w)[U], int nv, float (&m)[V]) {
  if constexpr (CJ_PACKED_MAX && sizeof(T) == 2 && V % 2 == 0) {
    uint32_t m2[V / 2];
    batch_max2<T, V, U>(w, nv, false, m2);
#pragma unroll
    for (int k = 0; k < V / 2; ++k) {
      m[2 * k] = lo_float<T>(m2[k]);
      m[2 * k + 1] = hi_float<T>(m2[k]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) m[j] = vf(w[0], j);
#pragma unroll
    for (int u = 1; u < U; ++u) {
      if (u < nv) {
#pragma unroll
        for (int j = 0; j < V; ++j) m[j] = fmax_nan(m[j], vf(w[u], j));
      }
    }
  }
}

// ---- reduction (optionally fused with an elementwise rewrite of the same row) -------------------
// Fold one batch into s: items i0 + u * LPR (u < nv, 1 <= nv <= U) of this lane, w[u] (and z[u],
// the second input of K_DOT). K_LSE: the batch max; only where it beats the running max (rarely,
// past the first batches of a row) a rescale of the thread's sums and of `ffma` (whether every
// |s[j].a| <= CJ_FFMA_MAX, for exp_ffma); then one exp per item;
// K_MAX: the batch max, and only where it beats the state its first position.
template <typename T, int K, int V, int U>
__device__ __forceinline__ void fold_batch(St (&s)[V], bool& ffma, const VecT<T, V> (&w)[U],
                                           const VecT<T, V> (&z)[U], int nv, int64_t i0, int LPR,
                                           bool neg, int tmode) {
  if (K == K_LSE) {
    float m[V];
    batch_max<T, V, U>(w, nv, m);
    bool up = false;  // the max of some column rose (or is NaN): rescale every sum of the thread
#pragma unroll
    for (int j = 0; j < V; ++j) up |= !(m[j] <= s[j].a);
    if (up) {
      bool ok = true;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float mj = fmax_nan(m[j], s[j].a);
        const float ms = (mj == -CJ_INF) ? 0.f : mj;  // all -inf so far: every term is 0
        s[j].b *= fast_exp(s[j].a - ms);
        s[j].a = mj;
        ok &= ffma_ok(ms);
      }
      ffma = ok;
    }
    if (ffma) {  // each s[j].a is -inf (so are its items: exp 0) or |a| <= 64: c = a * log2(e)
      float c[V];
#pragma unroll
      for (int j = 0; j < V; ++j) c[j] = fmaxf(s[j].a * CJ_LOG2E, -CJ_FLT_MAX);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u < nv) {
#pragma unroll
          for (int j = 0; j < V; ++j) s[j].b += exp_ffma(vf(w[u], j), c[j]);
        }
      }
    } else {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u < nv) {
#pragma unroll
          for (int j = 0; j < V; ++j) {
            const float ms = (s[j].a == -CJ_INF) ? 0.f : s[j].a;
            s[j].b += fast_exp(vf(w[u], j) - ms);
          }
        }
      }
    }
    return;
  }
  if (K == K_MAX) {  // batch max; only when it beats the state, the first position holding it
    float m[V];
    if constexpr (CJ_PACKED_MAX && sizeof(T) == 2 && V % 2 == 0) {
      uint32_t m2[V / 2];  // 16-bit values: the batch max (min) on packed pairs
      batch_max2<T, V, U>(w, nv, neg, m2);
#pragma unroll
      for (int k = 0; k < V / 2; ++k) {  // the state keeps -x for argmin (see st_final)
        const float ml = neg ? -lo_float<T>(m2[k]) : lo_float<T>(m2[k]);
        const float mh = neg ? -hi_float<T>(m2[k]) : hi_float<T>(m2[k]);
        St& sl = s[2 * k];
        St& sh = s[2 * k + 1];
        const bool nl = ml != ml, nh = mh != mh;
        const bool tl = (ml > sl.a) | (nl & (sl.a == sl.a)) | (sl.i == CJ_NOIDX);
        const bool th = (mh > sh.a) | (nh & (sh.a == sh.a)) | (sh.i == CJ_NOIDX);
        if (tl | th) {
          int ul = 0, uh = 0;
          first_pos2<T, V, U>(w, k, m2[k], nv, nl | nh, ul, uh);
          if (tl) {
            sl.a = ml;
            sl.i = (int)i0 + ul * LPR;
          }
          if (th) {
            sh.a = mh;
            sh.i = (int)i0 + uh * LPR;
          }
        }
      }
      return;
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) m[j] = -CJ_INF;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u < nv) {
#pragma unroll
          for (int j = 0; j < V; ++j) {
            const float x = vf(w[u], j);
            m[j] = fmax_nan(m[j], neg ? -x : x);
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const bool mn = m[j] != m[j];
      if ((m[j] > s[j].a) | (mn & (s[j].a == s[j].a)) | (s[j].i == CJ_NOIDX)) {
        int uf = 0;
#pragma unroll
        for (int u = U - 1; u >= 0; --u) {
          const float x0 = vf(w[u], j);
          const float x = neg ? -x0 : x0;
          if (u < nv && (x == m[j] || (mn && x != x))) uf = u;
        }
        s[j].a = m[j];
        s[j].i = (int)i0 + uf * LPR;
      }
    }
    return;
  }
  if (K == K_PROD) {  // the batch's product; only where it is 0, inf or NaN (a zero, an infinity
                      // or a NaN among the items, or an under- / overflow: rare) item by item
#pragma unroll
    for (int j = 0; j < V; ++j) {
      float p = 1.f;
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (u < nv) p *= vf(w[u], j);
      const bool ok = fabsf(p) > 0.f && fabsf(p) < CJ_INF;
      if (ok) {
        s[j].a *= p;
      } else {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (u < nv) {
            const float x = vf(w[u], j);
            const bool z = x == 0.f, inf = fabsf(x) == CJ_INF;
            s[0].i |= ((z ? 1 : 0) | (inf ? 2 : 0)) << (2 * j);
            s[j].a *= (z | inf) ? copysignf(1.f, x) : x;
          }
        }
      }
    }
    return;
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (u < nv) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float x = vf(w[u], j);
        if (neg) x = -x;
        if (tmode == 1) x = x != 0.f;
        if (tmode == 2) x = x == 0.f;
        st_push<K>(s[j], x, K == K_DOT ? vf(z[u], j) : 0.f, (int)i0 + u * LPR);
      }
    }
  }
}

// What fold_batch does with a value of reduction mode `mode`: negate it (argmin, min), or count
// it (any: x != 0, all: x == 0).
template <int K> __device__ __forceinline__ bool fold_neg(int mode) {
  return (K == K_MAX || K == K_MAXV) && (mode & 1);
}
template <int K> __device__ __forceinline__ int fold_tmode(int mode) {
  return (K == K_SUM) ? (mode == 2 ? 1 : (mode == 3 ? 2 : 0)) : 0;
}

// Fold the n items of this lane held in the row cache (items i0, i0 + LPR, ...; see cache_slot)
// into s, 4 per batch. s may already hold items: the FFMA exp is taken only where its max allows.
template <typename T, int K, int V>
__device__ __forceinline__ void fold_cached(St (&s)[V], uint32_t cache, int ni, int n, int64_t i0,
                                            int LPR, int mode) {
  if constexpr (sizeof(VecT<T, V>) == 16) {
    constexpr int U = 4;
    bool ffma = true;
#pragma unroll
    for (int j = 0; j < V; ++j) ffma &= ffma_ok(s[j].a == -CJ_INF ? 0.f : s[j].a);
    for (int u0 = 0; u0 < n; u0 += U) {
      VecT<T, V> w[U], z[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u0 + u < n) {
          w[u] = lds16<VecT<T, V>>(cache_slot(cache, u0 + u, 0, ni));
          if (K == K_DOT) z[u] = lds16<VecT<T, V>>(cache_slot(cache, u0 + u, 1, ni));
        }
      }
      fold_batch<T, K, V, U>(s, ffma, w, z, n - u0 < U ? n - u0 : U, i0 + (int64_t)u0 * LPR,
                             LPR, fold_neg<K>(mode), fold_tmode<K>(mode));
    }
  }
}

// Fold items [start, end) of a unit (lane l of LPR, items l, l + LPR, ...) into s, U vector loads
// of each input per batch. Without PIPE every lane issues its U loads before using any (the
// loads in flight stop while it computes); with PIPE (16-byte vectors) batches stream through a
// ring of CJ_PIPE_ST stages in shared memory by cp.async, batch b + ST - 1 in flight while batch b
// is folded: loads in flight without registers held for them. Each thread reads only the slots
// it filled itself (no barrier); ring = this thread's first slot (shared address), slot
// (stage, input, u) CJ_BLOCK * 16 bytes apart: a warp's 16-byte reads are conflict-free.
template <typename T, int K, int V, int U, bool PIPE>
__device__ __forceinline__ void accumulate(St (&s)[V], const T* __restrict__ ar,
                                           const T* __restrict__ br, int64_t start, int64_t end,
                                           int l, int LPR, int64_t C, int mode, uint32_t ring) {
  const bool neg = fold_neg<K>(mode);
  const int tmode = fold_tmode<K>(mode);
  bool ffma = CJ_FFMA_EXP;  // K_LSE (see fold_batch): s starts at -inf
  const int64_t step = (int64_t)LPR * C;  // elements between a lane's consecutive items
  const int lg = __ffs(LPR) - 1;            // LPR is a power of two
  const int64_t G = (int64_t)U * LPR;     // items of a batch (all lanes)
  // items i0 + u * LPR for u < nv_at(i0) of a batch from i0 (32-bit counts from here on)
  auto nv_at = [&](int64_t i0) {
    const int64_t rem = end - i0;
    return ((rem < G ? (int)rem : (int)G) + LPR - 1) >> lg;
  };
  if constexpr (PIPE) {
    static_assert(sizeof(VecT<T, V>) == 16, "cp.async moves 16-byte vectors");
    constexpr int ST = CJ_PIPE_ST, NI = (K == K_DOT) ? 2 : 1;
    constexpr uint32_t STAGE = NI * U * CJ_BLOCK * 16, INPUT = U * CJ_BLOCK * 16;
    // the next batch to issue: first item, pointers, stage
    int64_t in = start + l;
    const T* pa = ar + in * C;
    const T* pb = (K == K_DOT) ? br + in * C : br;
    uint32_t sn = ring;
    // a full batch (all U items of this lane below end) needs no bound per item; only the
    // last batch of a lane may be partial
    auto full = [&](int64_t i) { return i + (int64_t)(U - 1) * LPR < end; };
    auto issue = [&]() {  // one commit group per batch (empty past the end)
      if (full(in)) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          cp_async16(sn + u * CJ_BLOCK * 16, pa + u * step, true);
          if (K == K_DOT) cp_async16(sn + INPUT + u * CJ_BLOCK * 16, pb + u * step, true);
        }
      } else if (in < end) {
        const int nv = nv_at(in);
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (u < nv) {
            cp_async16(sn + u * CJ_BLOCK * 16, pa + u * step, true);
            if (K == K_DOT) cp_async16(sn + INPUT + u * CJ_BLOCK * 16, pb + u * step, true);
          }
        }
      }
      cp_async_commit();
      in += G;
      pa += U * step;
      if (K == K_DOT) pb += U * step;
      sn = (sn == ring + (ST - 1) * STAGE) ? ring : sn + STAGE;
    };
#pragma unroll
    for (int b = 0; b < ST - 1; ++b) issue();
    uint32_t sc = ring;  // the stage of batch i0
    int64_t i0 = start + l;
    for (; full(i0); i0 += G) {
      cp_async_wait<ST - 2>();  // this batch has landed (this thread's copies)
      VecT<T, V> w[U], z[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        w[u] = lds16<VecT<T, V>>(sc + u * CJ_BLOCK * 16);
        if (K == K_DOT) z[u] = lds16<VecT<T, V>>(sc + INPUT + u * CJ_BLOCK * 16);
      }
      // into the stage of the batch before, read and folded in the last iteration
      issue();
      sc = (sc == ring + (ST - 1) * STAGE) ? ring : sc + STAGE;
      fold_batch<T, K, V, U>(s, ffma, w, z, U, i0, LPR, neg, tmode);
    }
    if (i0 < end) {  // the partial last batch
      cp_async_wait<ST - 2>();
      const int nv = nv_at(i0);
      VecT<T, V> w[U], z[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u < nv) {
          w[u] = lds16<VecT<T, V>>(sc + u * CJ_BLOCK * 16);
          if (K == K_DOT) z[u] = lds16<VecT<T, V>>(sc + INPUT + u * CJ_BLOCK * 16);
        }
      }
      fold_batch<T, K, V, U>(s, ffma, w, z, nv, i0, LPR, neg, tmode);
    }
    cp_async_wait<0>();
  } else {
    (void)ring;
    const T* pa = ar + (start + l) * C;
    const T* pb = (K == K_DOT) ? br + (start + l) * C : br;
    for (int64_t i0 = start + l; i0 < end; i0 += G) {
      const int nv = nv_at(i0);
      VecT<T, V> w[U], z[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u < nv) {
          w[u] = ldv<T, V>(pa + u * step);
          if (K == K_DOT) z[u] = ldv<T, V>(pb + u * step);
        }
      }
      pa += U * step;
      if (K == K_DOT) pb += U * step;
      fold_batch<T, K, V, U>(s, ffma, w, z, nv, i0, LPR, neg, tmode);
    }
  }
}

// Whether a reduction streams its loads through the cp.async ring (16-byte vectors), the ring's
// loads per input and stage, and the block's shared bytes (ring and merge states share them).
// On where it measured faster (H100, ef73512's A/B): the reductions with work per item (argmax,
// logsumexp, dot: bf16 argmax 37.4 -> 36.8 us, fp32 56.5 -> 53.5) and the fused 16-bit softmax
// forward at 3 blocks per SM (bf16 72.8 -> 68.1 us); plain sums keep CJ_U loads in registers, and
// the other fused kernels were slower with it (fp32 softmax 120 -> 138 us, bf16 bwd 95 -> 109).
template <typename T, int K, int V, bool FUSED> struct Pipe {
  // 3 stages of 4 loads would need 48 KB + 4 bytes of static shared memory (over the limit)
  static_assert(CJ_PIPE_ST >= 2 && CJ_PIPE_U >= 2 && CJ_PIPE_ST * CJ_PIPE_U <= 8,
                "ring: at least 2 stages, 2 loads per stage, at most 8 loads (32 KB) in all");
  static constexpr bool on = CJ_PIPE && sizeof(VecT<T, V>) == 16 &&
                             (FUSED ? (CJ_PIPE_FUSED && K == K_LSE && sizeof(T) == 2)
                                    : (K == K_LSE || (CJ_PIPE_MAX && K == K_MAX) || K == K_DOT));
  static constexpr int u = CJ_PIPE_U / (K == K_DOT ? 2 : 1);
  static constexpr int ring = on ? CJ_PIPE_ST * CJ_PIPE_U * CJ_BLOCK * 16 : 0;
  static constexpr int merge = CJ_BLOCK * V * 4 * (1 + (K == K_LSE) + st_uses_i<K>());
  static constexpr int bytes = ring > merge ? ring : merge;
};

// pass 0: every unit is a whole row: lane 0 of each group finalises and writes out[row, col]
//         (kind out_kind), unless FUSED: then the group rewrites its whole row with
//         apply(fmode, a, b, q = result) into fout (items past trunc get 0).
// pass 1: one unit per block (LPR == R); a row of one unit is written at once, else partial states
//         go to part_* [unit, C] and the last block of the row (counters [nrows, gridDim.y], zero
//         between launches) combines them in order and writes out (a row's units are consecutive).
// pass 2: as pass 1 but only the partial states, every unit (the carries of a chunked cumsum).
template <typename T, int K, int V, bool FUSED>
__device__ __forceinline__ void
reduce_body(const T* __restrict__ a, const T* __restrict__ b, const int64_t* __restrict__ units,
            int64_t nunits, int64_t C, int64_t chunk, int64_t trunc, int CT, int LPR, int mode,
            int pass, float* __restrict__ part_a, float* __restrict__ part_b, int* __restrict__ part_i, int* __restrict__ counters, void* __restrict__ out,
            int out_kind, int has_init, float init, int fmode, T* __restrict__ fout, int nc,
            uint32_t cache, float* sa, float* sb, int* si, int& s_last) {
  const Place pl(CT, LPR);
  const int ct = pl.ct, lane = pl.lane, R = pl.R, l = pl.l;
  const int64_t uid = (int64_t)blockIdx.x * pl.groups + pl.sub;
  const Unit un = get_unit(units, nunits, chunk, trunc, uid);
  const int64_t col = ((int64_t)blockIdx.y * CT + ct) * V;
  const bool active = col < C && un.row >= 0;
  const T* ar = a + un.rbeg * C + col;
  const T* br = b ? b + un.rbeg * C + col : b;
  // log-softmax backward: the row's first two outputs (lsm_dead_rows), loaded before the
  // reduction so that their latency hides under it (measured: +6% at the bf16 reference shape
  // when loaded after it)
  const bool lsm2 = FUSED && K == K_SUM && fmode == E_LOGSOFTMAX_BWD && active &&
                    (un.len < trunc ? un.len : trunc) >= 2;
  VecT<T, V> y0, y1;
  if (lsm2) {
    y0 = ldv<T, V>(br);
    y1 = ldv<T, V>(br + C);
  }

  St s[V];
#pragma unroll
  for (int j = 0; j < V; ++j) s[j] = st_init<K>();
  // loads in flight per lane: half where a second array (state or input) takes registers; a
  // stage of the ring holds CJ_PIPE_U loads
  using P = Pipe<T, K, V, FUSED>;
  constexpr int UA = P::on ? P::u
                           : ((K == K_SUM || K == K_MAXV || K == K_PROD || (FUSED && K == K_LSE))
                                  ? CJ_U : CJ_UH);
  // FUSED with a row cache (nc > 0): the lane's first nc items (of every input the rewrite
  // reads) go to shared memory by cp.async, all issued before the rest of the unit streams
  // through accumulate, and are folded last; the rewrite takes them from there (read once).
  const int ni = br ? 2 : 1;
  int64_t cend = un.start;  // items [un.start, cend) are cached
  int ncl = 0;              // of which this lane's
  if (FUSED && sizeof(VecT<T, V>) == 16 && nc > 0 && active) {
    cend = un.start + (int64_t)nc * LPR < un.end ? un.start + (int64_t)nc * LPR : un.end;
    const int64_t r = cend - un.start - l;
    ncl = r <= 0 ? 0 : (int)((r + LPR - 1) >> (__ffs(LPR) - 1));
    const int64_t step = (int64_t)LPR * C;
    const T* pa = ar + (un.start + l) * C;
    const T* pb = br ? br + (un.start + l) * C : br;
    for (int u = 0; u < ncl; ++u) {
      cp_async16(cache_slot(cache, u, 0, ni), pa + u * step, true);
      if (br) cp_async16(cache_slot(cache, u, 1, ni), pb + u * step, true);
    }
    cp_async_commit();
  }
  if (active)
    accumulate<T, K, V, UA, P::on>(s, ar, br, cend, un.end, l, LPR, C, mode,
                                   smem_addr(sa) + threadIdx.x * 16);
  if (FUSED && ncl > 0) {
    cp_async_wait<0>();
    fold_cached<T, K, V>(s, cache, ni, ncl, un.start + l, LPR, mode);
  }
  if constexpr (P::on) __syncthreads();  // the ring's bytes hold sa / sb / si from here on
  if constexpr (K == K_PROD) {  // s[0].i holds every column's flags (see St)
#pragma unroll
    for (int j = V - 1; j >= 0; --j) s[j].i = (s[0].i >> (2 * j)) & 3;
  }
  group_merge<K, V>(s, sa, sb, si, l, CT, LPR);
  const int64_t n = un.len < trunc ? un.len : trunc;

  if (!FUSED && (pass == 2 || (pass == 1 && un.nu > 1))) {
    if (l == 0 && active) {
      const int64_t g = uid;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        part_a[g * C + col + j] = s[j].a;
        if (K == K_LSE) part_b[g * C + col + j] = s[j].b;
        if (st_uses_i<K>()) part_i[g * C + col + j] = s[j].i;
      }
    }
    if (pass == 2) return;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
      int last = 0;
      if (un.row >= 0) {
        int* ctr = counters + un.row * gridDim.y + blockIdx.y;
        last = atomicAdd(ctr, 1) == un.nu - 1;
        if (last) *ctr = 0;  // every block of the row has arrived: ready for the next launch
      }
      s_last = last;
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    // the last block folds the row's unit states: lane k takes units g0 + k, g0 + k + R, ...
    const int64_t g0 = uid - un.k, g1 = g0 + un.nu;
    St t[V];
#pragma unroll
    for (int j = 0; j < V; ++j) t[j] = st_init<K>();
    if (col < C) {
      // UF units' states loaded at once (L2, not L1: other blocks wrote them), then folded in
      // order: a row of hundreds of units is not a chain of dependent loads
      constexpr int UF = V >= 8 ? 2 : 4;
      for (int64_t g = g0 + lane; g < g1; g += (int64_t)UF * R) {
        St u[UF][V];
#pragma unroll
        for (int f = 0; f < UF; ++f) {
          const int64_t gf = g + (int64_t)f * R;
#pragma unroll
          for (int j = 0; j < V; ++j) {
            const int64_t k = (gf < g1 ? gf : g) * C + col + j;
            u[f][j].a = __ldcg(part_a + k);
            u[f][j].b = (K == K_LSE) ? __ldcg(part_b + k) : 0.f;
            u[f][j].i = st_uses_i<K>() ? __ldcg(part_i + k) : CJ_NOIDX;
          }
        }
#pragma unroll
        for (int f = 0; f < UF; ++f) {
          if (g + (int64_t)f * R < g1) {
#pragma unroll
            for (int j = 0; j < V; ++j) st_merge<K>(t[j], u[f][j]);
          }
        }
      }
    }
    group_merge<K, V>(t, sa, sb, si, lane, CT, R);
    if (lane == 0 && col < C) write_final<T, K, V>(t, mode, n, has_init, init, out, out_kind,
                                                    un.row * C + col);
    return;
  }
  if (!FUSED) {
    if (l == 0 && active) write_final<T, K, V>(s, mode, n, has_init, init, out, out_kind,
                                                un.row * C + col);
    return;
  }
  if (K != K_LSE && K != K_SUM && K != K_DOT) return;  // no fused rewrite after these
  (void)out; (void)out_kind; (void)has_init; (void)init;
  // fused elementwise rewrite of the whole row; q through the slot of the group's lane 0
  const int g0 = ((int)threadIdx.x - l * CT) * V;
  if (l == 0 && active) {
#pragma unroll
    for (int j = 0; j < V; ++j) sa[g0 + j] = st_final<K>(s[j], mode, n, 0, 0.f);
  }
  __syncthreads();
  if (!active) return;
  float q[V];
#pragma unroll
  for (int j = 0; j < V; ++j) q[j] = sa[g0 + j];
  if (lsm2) lsm_dead_rows<T, V>(y0, y1, q);
  switch (fmode) {
    case E_SOFTMAX:
      fused_write<T, V, E_SOFTMAX>(ar, br, q, un, C, trunc, l, LPR, fout, col, cache, nc);
      break;
    case E_LOGSOFTMAX:
      fused_write<T, V, E_LOGSOFTMAX>(ar, br, q, un, C, trunc, l, LPR, fout, col, cache, nc);
      break;
    case E_SOFTMAX_BWD:
      fused_write<T, V, E_SOFTMAX_BWD>(ar, br, q, un, C, trunc, l, LPR, fout, col, cache, nc);
      break;
    case E_LOGSOFTMAX_BWD:
      fused_write<T, V, E_LOGSOFTMAX_BWD>(ar, br, q, un, C, trunc, l, LPR, fout, col, cache, nc);
      break;
    default: break;
  }
}

// The plain reductions (reduce_rows, few registers: more blocks per SM) and the reductions fused
// with a rewrite of their rows (fused_rows: K_LSE, K_SUM, K_DOT; pass 0 only). Same arguments.
#define CJ_REDUCE_ARGS                                                                            \
  const T *__restrict__ a, const T *__restrict__ b, const int64_t *__restrict__ units,          \
      int64_t nunits, int64_t C, int64_t chunk, int64_t trunc, int CT, int LPR, int mode,       \
      int pass, float *__restrict__ part_a, float *__restrict__ part_b,                         \
      int *__restrict__ part_i, int *__restrict__ counters, void *__restrict__ out,             \
      int out_kind, int has_init, float init, int fmode, T *__restrict__ fout, int nc
// Shared memory of a reduction block: the cp.async ring of accumulate (Pipe::on) and, after it,
// the merge states sa [, sb (K_LSE) | si (K_MAX, K_PROD)], each CJ_BLOCK * V, in the same bytes.
#define CJ_REDUCE_SHARED(F)                                                                       \
  __shared__ __align__(16) unsigned char smem[Pipe<T, K, V, F>::bytes];                          \
  float* sa = reinterpret_cast<float*>(smem);                                                     \
  float* sb = sa + CJ_BLOCK * V;                                                                  \
  int* si = reinterpret_cast<int*>(sa + CJ_BLOCK * V * (K == K_LSE ? 2 : 1));                     \
  __shared__ int s_last;
#define CJ_REDUCE(F)                                                                              \
  reduce_body<T, K, V, F>(a, b, units, nunits, C, chunk, trunc, CT, LPR, mode, pass,            \
                          part_a, part_b, part_i, counters, out, out_kind, has_init, init, fmode, \
                          fout, nc, cache, sa, sb, si, s_last)

template <typename T, int K, int V>
__global__ void __launch_bounds__(CJ_BLOCK, (K == K_MAX || K == K_LSE || K == K_DOT) ? CJ_MINB_RH
                                                                                     : CJ_MINB_R)
reduce_rows(CJ_REDUCE_ARGS) {
  CJ_REDUCE_SHARED(false)
  const uint32_t cache = 0;  // (no row cache: nc is 0)
  CJ_REDUCE(false);
}

template <typename T, int K, int V>
__global__ void __launch_bounds__(CJ_BLOCK, Pipe<T, K, V, true>::on ? CJ_MINB_F : CJ_MINB)
fused_rows(CJ_REDUCE_ARGS) {
  CJ_REDUCE_SHARED(true)
  extern __shared__ __align__(16) unsigned char cache_raw[];  // the row cache: nc > 0 only
  const uint32_t cache = smem_addr(cache_raw) + threadIdx.x * 16;
  CJ_REDUCE(true);
}
#undef CJ_REDUCE
#undef CJ_REDUCE_SHARED
#undef CJ_REDUCE_ARGS

// ---- row-broadcast elementwise -----------------------------------------------------------------
// out[t, c] = apply(mode, a[t, c], b[t, c], p[row*p_row + pos*p_pos + c], q[row*C + c], ...,
//                   ix[row*C + c]) over every item of every row (units of the untruncated rows).
// The mode is dispatched once per thread (bcast_body<MODE>), not per element.
template <typename T, int V, int MODE>
__device__ __forceinline__ void bcast_body(const T* __restrict__ a, const T* __restrict__ b,
                                           const T* __restrict__ p, int64_t p_row, int64_t p_pos,
                                           const float* __restrict__ q,
                                           const int64_t* __restrict__ ix, const Unit& un,
                                           int64_t C, int64_t col, int64_t trunc, int l, int LPR,
                                           T* __restrict__ out) {
  float pr[V], qr[V];
  int xr[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    pr[j] = (p && p_pos == 0) ? to_float(p[un.row * p_row + col + j]) : 0.f;
    qr[j] = q ? q[un.row * C + col + j] : 0.f;
    xr[j] = ix ? (int)ix[un.row * C + col + j] : -1;
  }
  if (MODE == E_LOGSOFTMAX_BWD && (un.len < trunc ? un.len : trunc) >= 2) {
    const T* y = b + un.rbeg * C + col;  // the row's first two outputs
    lsm_dead_rows<T, V>(ldv<T, V>(y), ldv<T, V>(y + C), qr);
  }
  constexpr int UW = 4;
  const bool pad = p && p_pos != 0;
  const int64_t step = (int64_t)LPR * C, pstep = (int64_t)LPR * p_pos;
  const int lg = __ffs(LPR) - 1;  // LPR is a power of two
  const int64_t off0 = (un.rbeg + un.start + l) * C + col;
  const T* pa = a ? a + off0 : a;
  const T* pb = b ? b + off0 : b;
  const T* pp = pad ? p + un.row * p_row + col + (un.start + l) * p_pos : p;
  T* po = out + off0;
  for (int64_t i0 = un.start + l; i0 < un.end; i0 += (int64_t)UW * LPR) {
    const int64_t rem = un.end - i0;
    const int nv = ((rem < (int64_t)UW * LPR ? (int)rem : UW * LPR) + LPR - 1) >> lg;
    VecT<T, V> xa[UW], xb[UW], xp[UW];
#pragma unroll
    for (int u = 0; u < UW; ++u) {
      if (u < nv) {
        if (a) xa[u] = ldv<T, V>(pa + u * step);
        if (b) xb[u] = ldv<T, V>(pb + u * step);
        if (pad) xp[u] = ldv<T, V>(pp + u * pstep);
      }
    }
#pragma unroll
    for (int u = 0; u < UW; ++u) {
      if (u < nv) {
        const int64_t i = i0 + (int64_t)u * LPR;
        float o[V];
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float av = a ? vf(xa[u], j) : 0.f;
          const float bv = b ? vf(xb[u], j) : 0.f;
          const float pv = pad ? vf(xp[u], j) : pr[j];
          o[j] = apply(MODE, av, bv, pv, qr[j], i, un.len, trunc, xr[j]);
        }
        storev<T, V>(po + u * step, o);
      }
    }
    if (a) pa += UW * step;
    if (b) pb += UW * step;
    if (pad) pp += UW * pstep;
    po += UW * step;
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(CJ_BLOCK, CJ_MINB)
rowbcast(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ p,
         int64_t p_row, int64_t p_pos, const float* __restrict__ q,
         const int64_t* __restrict__ ix, const int64_t* __restrict__ units, int64_t nunits,
         int64_t C, int64_t chunk, int64_t trunc, int CT, int LPR, int mode,
         T* __restrict__ out) {
  const Place pl(CT, LPR);
  const int ct = pl.ct, l = pl.l;
  const Unit un = get_unit(units, nunits, chunk, (int64_t)1 << 62,
                           (int64_t)blockIdx.x * pl.groups + pl.sub);
  const int64_t col = ((int64_t)blockIdx.y * CT + ct) * V;
  if (un.row < 0 || col >= C) return;
#define CJ_BCAST(M) \
  case M: bcast_body<T, V, M>(a, b, p, p_row, p_pos, q, ix, un, C, col, trunc, l, LPR, out); break;
  switch (mode) {
    CJ_BCAST(E_ADD) CJ_BCAST(E_SUB) CJ_BCAST(E_RSUB) CJ_BCAST(E_MUL) CJ_BCAST(E_DIV)
    CJ_BCAST(E_RDIV) CJ_BCAST(E_MAXIMUM) CJ_BCAST(E_MINIMUM) CJ_BCAST(E_BCAST)
    CJ_BCAST(E_BCAST_MEAN) CJ_BCAST(E_SELECT) CJ_BCAST(E_LSE_BWD) CJ_BCAST(E_SOFTMAX)
    CJ_BCAST(E_LOGSOFTMAX) CJ_BCAST(E_SOFTMAX_BWD) CJ_BCAST(E_LOGSOFTMAX_BWD)
    default: break;
  }
#undef CJ_BCAST
}

// ---- cumsum ------------------------------------------------------------------------------------
// Carry-in of every unit of a chunked scan: carry[u, c] = the sum of part[., c] over the earlier
// units of u's row (the later ones when reverse), accumulated in fp64 in a fixed order. One thread
// per (row, column); a row has at most a few hundred units (the host sizes the chunks).
__global__ void __launch_bounds__(CJ_BLOCK)
unit_carries(const float* __restrict__ part, const int64_t* __restrict__ chunk_off,
             int64_t nrows, int64_t C, int reverse, float* __restrict__ carry) {
  constexpr int UN = 8;  // partial sums loaded before they are used
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nrows * C;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / C, c = i - r * C;
    const int64_t g0 = chunk_off[r], n = chunk_off[r + 1] - g0;
    double run = 0.0;
    for (int64_t k0 = 0; k0 < n; k0 += UN) {
      float v[UN];
#pragma unroll
      for (int u = 0; u < UN; ++u) {
        const int64_t k = k0 + u, g = g0 + (reverse ? n - 1 - k : k);
        v[u] = k < n ? part[g * C + c] : 0.f;
      }
#pragma unroll
      for (int u = 0; u < UN; ++u) {
        const int64_t k = k0 + u, g = g0 + (reverse ? n - 1 - k : k);
        if (k < n) carry[g * C + c] = (float)run;
        run += v[u];
      }
    }
  }
}


// Inclusive (exclusive=0) or exclusive scan of each column along each row; reverse=1 scans from
// the row's end (the backward of the forward scan). One unit per block; part_a [unit, C] holds
// the carry-in of each unit (the sum of the row's earlier units in scan order), or is nullptr
// when every row is one unit. Each step covers R * UB items: lane k takes its UB consecutive
// items (in scan order; 16-byte vectors stream through a two-stage cp.async ring in dynamic
// shared memory, sized by the host), sums them, one Hillis-Steele scan of the R lane totals
// (shared memory) gives every lane its offset, and the lane writes its items' prefix sums.
template <typename T, int V, bool SPLIT>
__global__ void __launch_bounds__(CJ_BLOCK, sizeof(T) == 2 && !SPLIT ? CJ_MINB_S16 : CJ_MINB_S)
cumsum_rows(const T* __restrict__ a, const int64_t* __restrict__ units, int64_t nunits,
            int64_t C, int64_t chunk, int CT, int LPR, int exclusive, int reverse, const float* __restrict__ part_a, T* __restrict__ out) {
  constexpr int U = CJ_U;
  constexpr bool PIPE = CJ_SCAN_PIPE && sizeof(VecT<T, V>) == 16;
  constexpr int UB = PIPE ? CJ_SCAN_U : U;  // items per lane and step of a long row
  __shared__ float sm[CJ_BLOCK * V];
  // PIPE: two stages of UB 16-byte items per thread, 2 * UB * CJ_BLOCK * 16 bytes (the host's)
  extern __shared__ __align__(16) unsigned char ring[];
  const Place pl(CT, 1);
  const int ct = pl.ct, lane = pl.lane, R = pl.R;
  const int64_t col = ((int64_t)blockIdx.y * CT + ct) * V;
  const bool active = col < C;
  if (LPR == 1) {  // short whole rows: lane k of block b scans unit b * R + k alone, no barrier
    const Unit un = get_unit(units, nunits, chunk, (int64_t)1 << 62, (int64_t)blockIdx.x * R + lane);
    if (un.row < 0 || !active) return;
    const int64_t n = un.end - un.start;
    const T* src = a + un.rbeg * C + col;
    T* dst = out + un.rbeg * C + col;
    float run[V];
#pragma unroll
    for (int j = 0; j < V; ++j) run[j] = 0.f;
    for (int64_t k0 = 0; k0 < n; k0 += U) {
      VecT<T, V> w[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t k = k0 + u;
        if (k < n) w[u] = ldv<T, V>(src + (reverse ? un.end - 1 - k : un.start + k) * C);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t k = k0 + u;
        if (k < n) {
          float o[V];
#pragma unroll
          for (int j = 0; j < V; ++j) {
            const float x = vf(w[u], j);
            o[j] = exclusive ? run[j] : run[j] + x;
            run[j] += x;
          }
          storev<T, V>(dst + (reverse ? un.end - 1 - k : un.start + k) * C, o);
        }
      }
    }
    return;
  }
  const Unit un = get_unit(units, nunits, chunk, (int64_t)1 << 62, blockIdx.x);
  if (un.row < 0) return;
  float carry[V];
#pragma unroll
  for (int j = 0; j < V; ++j) carry[j] = 0.f;
  if (part_a && active) {
#pragma unroll
    for (int j = 0; j < V; ++j) carry[j] = part_a[blockIdx.x * C + col + j];
  }
  const int64_t n = un.end - un.start;
  const T* src = a + un.rbeg * C + col;
  T* dst = out + un.rbeg * C + col;
  float* me = sm + (lane * CT + ct) * V;
  // PIPE: the next step's items stream into the other half of a two-stage cp.async ring while
  // this step scans (zero-filled past the row), as accumulate's ring does for the reductions
  const uint32_t r0 = smem_addr(ring) + threadIdx.x * 16;
  auto issue = [&](int64_t base, int st) {
    if (base < n) {
      const int64_t k0 = base + (int64_t)lane * UB;
#pragma unroll
      for (int u = 0; u < UB; ++u) {
        const int64_t k = k0 + u;
        const bool ok = active && k < n;
        cp_async16(r0 + (st * UB + u) * CJ_BLOCK * 16,
                   ok ? src + (reverse ? un.end - 1 - k : un.start + k) * C : a, ok);
      }
    }
    cp_async_commit();
  };
  if constexpr (PIPE) issue(0, 0);
  int st = 0;
  for (int64_t base = 0; base < n; base += (int64_t)R * UB) {
    const int64_t k0 = base + (int64_t)lane * UB;  // this lane's first item in scan order
    // the step's items: PIPE, in the ring (read twice: no registers held over the scan, which
    // spilled at 3 blocks/SM); else loaded into registers
    VecT<T, V> w[PIPE ? 1 : UB];
    auto item = [&](int u) {
      if constexpr (PIPE) return lds16<VecT<T, V>>(r0 + (st * UB + u) * CJ_BLOCK * 16);
      else return w[u];
    };
    if constexpr (PIPE) {
      cp_async_wait<0>();
      issue(base + (int64_t)R * UB, st ^ 1);  // that stage was read in the last step
    } else {
#pragma unroll
      for (int u = 0; u < UB; ++u) {
        const int64_t k = k0 + u;
        const int64_t i = reverse ? un.end - 1 - k : un.start + k;
        if (active && k < n) {
          w[u] = ldv<T, V>(src + i * C);
        } else {
#pragma unroll
          for (int j = 0; j < V; ++j) w[u].v[j] = from_float<T>(0.f);
        }
      }
    }
    float tot[V], v[V];
#pragma unroll
    for (int j = 0; j < V; ++j) tot[j] = 0.f;
#pragma unroll
    for (int u = 0; u < UB; ++u) {
      const VecT<T, V> x = item(u);
#pragma unroll
      for (int j = 0; j < V; ++j) tot[j] += vf(x, j);
    }
#pragma unroll
    for (int j = 0; j < V; ++j) { v[j] = tot[j]; me[j] = v[j]; }
    for (int off = 1; off < R; off <<= 1) {
      __syncthreads();
      float t[V];
#pragma unroll
      for (int j = 0; j < V; ++j) t[j] = lane >= off ? me[j - off * CT * V] : 0.f;
      __syncthreads();
#pragma unroll
      for (int j = 0; j < V; ++j) { v[j] += t[j]; me[j] = v[j]; }
    }
    __syncthreads();
    float run[V], all[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      run[j] = carry[j] + (v[j] - tot[j]);  // carry + the totals of the earlier lanes
      all[j] = sm[((R - 1) * CT + ct) * V + j];
    }
#pragma unroll
    for (int u = 0; u < UB; ++u) {
      const int64_t k = k0 + u;
      const VecT<T, V> w_u = item(u);
      float o[V];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float x = vf(w_u, j);
        o[j] = exclusive ? run[j] : run[j] + x;
        run[j] += x;
      }
      if (active && k < n) storev<T, V>(dst + (reverse ? un.end - 1 - k : un.start + k) * C, o);
    }
#pragma unroll
    for (int j = 0; j < V; ++j) carry[j] += all[j];
    st ^= 1;
    __syncthreads();
  }
}
