// Row-wise jagged ops: reductions over the jagged axis, softmax / log-softmax (fwd + bwd),
// row-broadcast elementwise ops (jagged (+) per-row, jagged (+) padded dense, backward helpers),
// and per-row cumsum.
//
// Data layout: values [T, C] (C = prod(inner), contiguous); row r is the [L_r, C] slab starting at
// offsets[r]. Work is a list of *units* built on the host without a sync (cached per structure):
// chunk_off[r] .. chunk_off[r+1] are the units of row r (at least one per row, so empty rows are
// written), each covering `chunk` consecutive items; chunk_row[u] is the row of unit u (>= nrows
// for the spare units of a grid sized by an upper bound).
//
// Inside a block (256 threads): CT column threads (each owning V consecutive columns, 16-byte
// vector loads when V > 1) times R = 256 / CT lanes. Lanes form groups of LPR lanes, one unit per
// group: short rows put several rows in a block, long rows give a whole block (LPR = R) to a
// chunk. Every lane keeps U independent 16-byte loads in flight. Accumulation is fp32.
// Rows split over several blocks are combined deterministically by the last block of the row to
// finish (per-row counters, reset by that block): it folds the chunk states in a fixed order.
#include "common.cuh"

#define CJ_BLOCK 256
#define CJ_NOIDX 0x7fffffff
#define CJ_LOG2E 1.4426950408889634f

enum { K_SUM = 0, K_PROD = 1, K_MAX = 2, K_LSE = 3, K_DOT = 4 };
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

// ---- vector loads / stores ---------------------------------------------------------------------
template <typename T, int V> struct __align__(sizeof(T) * V) VecT { T v[V]; };

template <typename T, int V>
__device__ __forceinline__ VecT<T, V> ldv(const T* __restrict__ p) {
  return *reinterpret_cast<const VecT<T, V>*>(p);
}
template <typename T, int V>
__device__ __forceinline__ void storev(T* __restrict__ p, const float (&f)[V]) {
  VecT<T, V> w;
#pragma unroll
  for (int j = 0; j < V; ++j) w.v[j] = from_float<T>(f[j]);
  *reinterpret_cast<VecT<T, V>*>(p) = w;
}

__device__ __forceinline__ bool isnanf_(float x) { return x != x; }
__device__ __forceinline__ float nanf_() { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ float fast_exp(float x) { return exp2f(x * CJ_LOG2E); }

// ---- reduction states --------------------------------------------------------------------------
struct St { float a; float b; int i; };

template <int K> __device__ __forceinline__ St st_init() {
  St s;
  s.a = (K == K_PROD) ? 1.f : ((K == K_MAX || K == K_LSE) ? -CJ_INF : 0.f);
  s.b = 0.f;
  s.i = CJ_NOIDX;
  return s;
}

// fold one item x (already transformed) at position idx into s
template <int K> __device__ __forceinline__ void st_push(St& s, float x, float y, int idx) {
  if (K == K_SUM) {
    s.a += x;
  } else if (K == K_DOT) {
    s.a += x * y;
  } else if (K == K_PROD) {
    s.a *= x;
  } else if (K == K_MAX) {
    if (s.i == CJ_NOIDX || x > s.a || (isnanf_(x) && !isnanf_(s.a))) { s.a = x; s.i = idx; }
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
    if (mode == 1) return n ? s.a / (float)n : nanf_();
    if (mode == 2) return s.a > 0.f ? 1.f : 0.f;
    if (mode == 3) return s.a == 0.f ? 1.f : 0.f;
    return s.a;
  } else if (K == K_MAX) {  // values were negated for min (mode bit 1 set by caller)
    if (mode & 2) return (n && s.i != CJ_NOIDX) ? (float)s.i : -1.f;
    float v = (n && s.i != CJ_NOIDX) ? s.a : -CJ_INF;
    if (has_init && !isnanf_(v)) v = fmaxf(v, init);
    return v;
  } else if (K == K_LSE) {
    if (isnanf_(s.a)) return s.a;
    if (s.a == -CJ_INF || s.a == CJ_INF) return s.a;
    return s.a + logf(s.b);
  }
  return s.a;  // K_PROD, K_DOT
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
    case E_LOGSOFTMAX_BWD: return a - fast_exp(b) * q;
  }
  return 0.f;
}


struct Unit { int64_t row, start, end, rbeg, len, id; };

// Unit `id`: row, item range [start, end) within the row (end limited by `limit`), row begin and
// (untruncated) length; row < 0 for a spare unit.
__device__ __forceinline__ Unit get_unit(const int64_t* __restrict__ offsets,
                                         const int64_t* __restrict__ chunk_off,
                                         const int64_t* __restrict__ chunk_row, int64_t nunits,
                                         int64_t nrows, int64_t chunk, int64_t limit, int64_t id) {
  Unit u;
  u.row = -1;
  u.id = id;
  u.start = u.end = u.rbeg = u.len = 0;
  if (id >= nunits) return u;
  const int64_t r = chunk_row[id];
  if (r < 0 || r >= nrows) return u;
  u.row = r;
  u.rbeg = offsets[r];
  u.len = offsets[r + 1] - u.rbeg;
  const int64_t le = u.len < limit ? u.len : limit;
  u.start = (id - chunk_off[r]) * chunk;
  u.end = u.start + chunk < le ? u.start + chunk : le;
  return u;
}

// Merge the states of the LPR lanes of each group through shared memory (tree, fixed order).
template <int K, int V>
__device__ __forceinline__ void group_merge(St (&s)[V], float* sa, float* sb, int* si, int lane,
                                            int l, int ct, int CT, int LPR) {
  for (int h = LPR >> 1; h > 0; h >>= 1) {
    if (l >= h && l < 2 * h) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int k = ((lane - h) * CT + ct) * V + j;
        sa[k] = s[j].a;
        if (K == K_LSE) sb[k] = s[j].b;
        if (K == K_MAX) si[k] = s[j].i;
      }
    }
    __syncthreads();
    if (l < h) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int k = (lane * CT + ct) * V + j;
        St t;
        t.a = sa[k];
        t.b = (K == K_LSE) ? sb[k] : 0.f;
        t.i = (K == K_MAX) ? si[k] : CJ_NOIDX;
        st_merge<K>(s[j], t);
      }
    }
    __syncthreads();
  }
}

template <typename T, int K, int V>
__device__ __forceinline__ void write_final(const St (&s)[V], int mode, int64_t n, int has_init,
                                            float init, void* out, int out_kind, int64_t base) {
  const bool neg = (K == K_MAX) && (mode & 1);
#pragma unroll
  for (int j = 0; j < V; ++j) {
    float v = st_final<K>(s[j], mode, n, has_init, neg ? -init : init);
    if (neg && !(mode & 2)) v = -v;
    write_out<T>(out, out_kind, base + j, v);
  }
}

// The rewrite of a whole row after its reduction q (softmax forward / backward), mode FM.
template <typename T, int V, int FM>
__device__ __forceinline__ void fused_write(const T* __restrict__ ar, const T* __restrict__ br,
                                            const float (&q)[V], const Unit& un, int64_t C,
                                            int64_t trunc, int l, int LPR, T* __restrict__ fout,
                                            int64_t col) {
  T* orow = fout + un.rbeg * C + col;
  constexpr int UW = 4;
  for (int64_t i0 = l; i0 < un.len; i0 += (int64_t)UW * LPR) {
    VecT<T, V> x[UW], y[UW];
#pragma unroll
    for (int u = 0; u < UW; ++u) {
      const int64_t i = i0 + (int64_t)u * LPR;
      if (i < un.len && i < trunc) {
        x[u] = ldv<T, V>(ar + i * C);
        if (br) y[u] = ldv<T, V>(br + i * C);
      }
    }
#pragma unroll
    for (int u = 0; u < UW; ++u) {
      const int64_t i = i0 + (int64_t)u * LPR;
      if (i < un.len) {
        float o[V];
#pragma unroll
        for (int j = 0; j < V; ++j)
          o[j] = (i < trunc) ? apply(FM, to_float(x[u].v[j]), br ? to_float(y[u].v[j]) : 0.f,
                                     0.f, q[j], i, un.len, trunc, 0)
                             : 0.f;
        storev<T, V>(orow + i * C, o);
      }
    }
  }
}

// ---- reduction (optionally fused with an elementwise rewrite of the same row) -------------------
// pass 0: every unit is a whole row: lane 0 of each group finalises and writes out[row, col]
//         (kind out_kind), unless fmode >= 0: then the group rewrites its whole row with
//         apply(fmode, a, b, q = result) into fout (items past trunc get 0).
// pass 1: one unit per block (LPR == R); partial states go to part_* [unit, C]; the last block of
//         each row (counters [nrows, gridDim.y], zero between launches) combines and writes out.
// pass 2: as pass 1 but only the partial states (the carries of a chunked cumsum).
template <typename T, int K, int V>
__global__ void __launch_bounds__(CJ_BLOCK, 2)
reduce_rows(const T* __restrict__ a, const T* __restrict__ b, const int64_t* __restrict__ offsets,
            const int64_t* __restrict__ chunk_off, const int64_t* __restrict__ chunk_row,
            int64_t nunits, int64_t nrows, int64_t C, int64_t chunk, int64_t trunc, int CT,
            int LPR, int mode, int pass, float* __restrict__ part_a, float* __restrict__ part_b,
            int* __restrict__ part_i, int* __restrict__ counters, void* __restrict__ out,
            int out_kind, int has_init, float init, int fmode, T* __restrict__ fout) {
  constexpr int U = (K == K_DOT) ? 4 : 8;
  __shared__ float sa[CJ_BLOCK * V];
  __shared__ float sb[(K == K_LSE) ? CJ_BLOCK * V : 1];
  __shared__ int si[(K == K_MAX) ? CJ_BLOCK * V : 1];
  __shared__ int s_last;
  const int ct = threadIdx.x % CT, lane = threadIdx.x / CT, R = CJ_BLOCK / CT;
  const int l = lane % LPR, sub = lane / LPR;
  const Unit un = get_unit(offsets, chunk_off, chunk_row, nunits, nrows, chunk, trunc,
                           (int64_t)blockIdx.x * (R / LPR) + sub);
  const int64_t col = ((int64_t)blockIdx.y * CT + ct) * V;
  const bool active = col < C && un.row >= 0;
  const bool neg = (K == K_MAX) && (mode & 1);
  const int tmode = (K == K_SUM) ? (mode == 2 ? 1 : (mode == 3 ? 2 : 0)) : 0;
  const T* ar = a + un.rbeg * C + col;
  const T* br = b ? b + un.rbeg * C + col : b;

  St s[V];
#pragma unroll
  for (int j = 0; j < V; ++j) s[j] = st_init<K>();
  if (active) {
    for (int64_t i0 = un.start + l; i0 < un.end; i0 += (int64_t)U * LPR) {
      VecT<T, V> w[U], z[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t i = i0 + (int64_t)u * LPR;
        if (i < un.end) {
          w[u] = ldv<T, V>(ar + i * C);
          if (K == K_DOT) z[u] = ldv<T, V>(br + i * C);
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t i = i0 + (int64_t)u * LPR;
        if (i < un.end) {
#pragma unroll
          for (int j = 0; j < V; ++j) {
            float x = to_float(w[u].v[j]);
            if (neg) x = -x;
            if (tmode == 1) x = x != 0.f;
            if (tmode == 2) x = x == 0.f;
            st_push<K>(s[j], x, K == K_DOT ? to_float(z[u].v[j]) : 0.f, (int)i);
          }
        }
      }
    }
  }
  group_merge<K, V>(s, sa, sb, si, lane, l, ct, CT, LPR);
  const int64_t n = un.len < trunc ? un.len : trunc;

  if (pass != 0) {
    if (l == 0 && active) {
      const int64_t g = un.id;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        part_a[g * C + col + j] = s[j].a;
        if (K == K_LSE) part_b[g * C + col + j] = s[j].b;
        if (K == K_MAX) part_i[g * C + col + j] = s[j].i;
      }
    }
    if (pass == 2) return;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
      int last = 0;
      if (un.row >= 0) {
        const int cnt = (int)(chunk_off[un.row + 1] - chunk_off[un.row]);
        int* ctr = counters + un.row * gridDim.y + blockIdx.y;
        last = atomicAdd(ctr, 1) == cnt - 1;
        if (last) *ctr = 0;  // every block of the row has arrived: ready for the next launch
      }
      s_last = last;
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    // the last block folds the row's unit states: lane k takes units g0 + k, g0 + k + R, ...
    const int64_t g0 = chunk_off[un.row], g1 = chunk_off[un.row + 1];
    St t[V];
#pragma unroll
    for (int j = 0; j < V; ++j) t[j] = st_init<K>();
    if (col < C) {
      const volatile float* va = part_a;
      const volatile float* vb = part_b;
      const volatile int* vi = part_i;
      for (int64_t g = g0 + lane; g < g1; g += R) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          St u;
          u.a = va[g * C + col + j];
          u.b = (K == K_LSE) ? vb[g * C + col + j] : 0.f;
          u.i = (K == K_MAX) ? vi[g * C + col + j] : CJ_NOIDX;
          st_merge<K>(t[j], u);
        }
      }
    }
    group_merge<K, V>(t, sa, sb, si, lane, lane, ct, CT, R);
    if (lane == 0 && col < C) write_final<T, K, V>(t, mode, n, has_init, init, out, out_kind,
                                                   un.row * C + col);
    return;
  }
  if (fmode < 0) {
    if (l == 0 && active) write_final<T, K, V>(s, mode, n, has_init, init, out, out_kind,
                                               un.row * C + col);
    return;
  }
  // fused elementwise rewrite of the whole row
  if (l == 0 && active) {
#pragma unroll
    for (int j = 0; j < V; ++j) sa[(sub * CT + ct) * V + j] = st_final<K>(s[j], mode, n, 0, 0.f);
  }
  __syncthreads();
  if (!active) return;
  float q[V];
#pragma unroll
  for (int j = 0; j < V; ++j) q[j] = sa[(sub * CT + ct) * V + j];
  switch (fmode) {
    case E_SOFTMAX: fused_write<T, V, E_SOFTMAX>(ar, br, q, un, C, trunc, l, LPR, fout, col); break;
    case E_LOGSOFTMAX:
      fused_write<T, V, E_LOGSOFTMAX>(ar, br, q, un, C, trunc, l, LPR, fout, col);
      break;
    case E_SOFTMAX_BWD:
      fused_write<T, V, E_SOFTMAX_BWD>(ar, br, q, un, C, trunc, l, LPR, fout, col);
      break;
    case E_LOGSOFTMAX_BWD:
      fused_write<T, V, E_LOGSOFTMAX_BWD>(ar, br, q, un, C, trunc, l, LPR, fout, col);
      break;
    default: break;
  }
}

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
  const T* pp = p ? p + un.row * p_row + col : p;
  constexpr int UW = 4;
  for (int64_t i0 = un.start + l; i0 < un.end; i0 += (int64_t)UW * LPR) {
    VecT<T, V> xa[UW], xb[UW], xp[UW];
#pragma unroll
    for (int u = 0; u < UW; ++u) {
      const int64_t i = i0 + (int64_t)u * LPR;
      if (i < un.end) {
        if (a) xa[u] = ldv<T, V>(a + (un.rbeg + i) * C + col);
        if (b) xb[u] = ldv<T, V>(b + (un.rbeg + i) * C + col);
        if (p && p_pos != 0) xp[u] = ldv<T, V>(pp + i * p_pos);
      }
    }
#pragma unroll
    for (int u = 0; u < UW; ++u) {
      const int64_t i = i0 + (int64_t)u * LPR;
      if (i < un.end) {
        float o[V];
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float av = a ? to_float(xa[u].v[j]) : 0.f;
          const float bv = b ? to_float(xb[u].v[j]) : 0.f;
          const float pv = (p && p_pos != 0) ? to_float(xp[u].v[j]) : pr[j];
          o[j] = apply(MODE, av, bv, pv, qr[j], i, un.len, trunc, xr[j]);
        }
        storev<T, V>(out + (un.rbeg + i) * C + col, o);
      }
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(CJ_BLOCK, 2)
rowbcast(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ p,
         int64_t p_row, int64_t p_pos, const float* __restrict__ q,
         const int64_t* __restrict__ ix, const int64_t* __restrict__ offsets,
         const int64_t* __restrict__ chunk_off, const int64_t* __restrict__ chunk_row,
         int64_t nunits, int64_t nrows, int64_t C, int64_t chunk, int64_t trunc, int CT, int LPR,
         int mode, T* __restrict__ out) {
  const int ct = threadIdx.x % CT, lane = threadIdx.x / CT, R = CJ_BLOCK / CT;
  const int l = lane % LPR, sub = lane / LPR;
  const Unit un = get_unit(offsets, chunk_off, chunk_row, nunits, nrows, chunk, (int64_t)1 << 62,
                           (int64_t)blockIdx.x * (R / LPR) + sub);
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
// Inclusive (exclusive=0) or exclusive scan of each column along each row; reverse=1 scans from
// the row's end (the backward of the forward scan). One unit per block; part_a [unit, C] holds
// the carry-in of each unit (the sum of the row's earlier units in scan order), or is nullptr
// when every row is one unit.
template <typename T, int V>
__global__ void __launch_bounds__(CJ_BLOCK, 2)
cumsum_rows(const T* __restrict__ a, const int64_t* __restrict__ offsets,
            const int64_t* __restrict__ chunk_off, const int64_t* __restrict__ chunk_row,
            int64_t nunits, int64_t nrows, int64_t C, int64_t chunk, int CT, int exclusive,
            int reverse, const float* __restrict__ part_a, T* __restrict__ out) {
  __shared__ float sm[CJ_BLOCK * V];
  const Unit un = get_unit(offsets, chunk_off, chunk_row, nunits, nrows, chunk, (int64_t)1 << 62,
                           blockIdx.x);
  if (un.row < 0) return;
  const int ct = threadIdx.x % CT, lane = threadIdx.x / CT, R = CJ_BLOCK / CT;
  const int64_t col = ((int64_t)blockIdx.y * CT + ct) * V;
  const bool active = col < C;
  float carry[V];
#pragma unroll
  for (int j = 0; j < V; ++j) carry[j] = 0.f;
  if (part_a && active) {
#pragma unroll
    for (int j = 0; j < V; ++j) carry[j] = part_a[un.id * C + col + j];
  }
  const int64_t n = un.end - un.start;
  for (int64_t base = 0; base < n; base += R) {
    const int64_t k = base + lane;  // k-th item of the unit in scan order
    const int64_t i = reverse ? un.end - 1 - k : un.start + k;
    float x[V];
    if (active && k < n) {
      const VecT<T, V> w = ldv<T, V>(a + (un.rbeg + i) * C + col);
#pragma unroll
      for (int j = 0; j < V; ++j) x[j] = to_float(w.v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) x[j] = 0.f;
    }
    float v[V];
#pragma unroll
    for (int j = 0; j < V; ++j) { v[j] = x[j]; sm[(lane * CT + ct) * V + j] = v[j]; }
    for (int off = 1; off < R; off <<= 1) {
      __syncthreads();
      float u[V];
#pragma unroll
      for (int j = 0; j < V; ++j) u[j] = lane >= off ? sm[((lane - off) * CT + ct) * V + j] : 0.f;
      __syncthreads();
#pragma unroll
      for (int j = 0; j < V; ++j) { v[j] += u[j]; sm[(lane * CT + ct) * V + j] = v[j]; }
    }
    __syncthreads();
    float o[V], tot[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      o[j] = carry[j] + (exclusive ? v[j] - x[j] : v[j]);
      tot[j] = sm[((R - 1) * CT + ct) * V + j];
    }
    if (active && k < n) storev<T, V>(out + (un.rbeg + i) * C + col, o);
#pragma unroll
    for (int j = 0; j < V; ++j) carry[j] += tot[j];
    __syncthreads();
  }
}
