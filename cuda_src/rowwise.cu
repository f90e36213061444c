// Row-wise jagged ops: reductions over the jagged axis, softmax / log-softmax (fwd + bwd),
// row-broadcast elementwise ops (jagged (+) per-row, jagged (+) padded dense, backward helpers),
// and per-row cumsum.
//
// Data layout: values [T, C] (C = prod(inner), contiguous); row r is the [L_r, C] slab starting at
// offsets[r]. Work is scheduled over a *chunk list* built on the host side without a sync:
// chunk_off[r] .. chunk_off[r+1] are the chunks of row r (at least one per row, so empty rows are
// written), each covering `chunk` consecutive items. A grid of gridDim.x >= chunk_off[B] blocks
// binary-searches its row (extra blocks exit). blockIdx.y tiles the columns.
//
// Inside a block (256 threads): CT column threads (each owning V consecutive columns, 16-byte
// vector loads when V > 1) times R = 256 / CT row lanes walking the chunk's items.
// Accumulation is fp32 for every dtype. Multi-chunk rows are combined by a second, deterministic
// pass (reduce_combine) over per-chunk partial states, in chunk order.
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
__device__ __forceinline__ void loadv(const T* __restrict__ p, float (&f)[V]) {
  const VecT<T, V> w = *reinterpret_cast<const VecT<T, V>*>(p);
#pragma unroll
  for (int j = 0; j < V; ++j) f[j] = to_float(w.v[j]);
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
                                       int64_t n, int64_t trunc, int64_t ix) {
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

template <typename T, int V>
__device__ __forceinline__ void load_or_zero(const T* __restrict__ base, int64_t i, int64_t C,
                                             int64_t col, float (&f)[V]) {
  if (base) {
    loadv<T, V>(base + i * C + col, f);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) f[j] = 0.f;
  }
}

struct Chunk { int64_t row, start, end, rbeg, len; };

// The chunk of this block (row, [start, end) within the row), or row < 0 for a spare block.
__device__ __forceinline__ Chunk my_chunk(const int64_t* __restrict__ offsets,
                                          const int64_t* __restrict__ chunk_off, int64_t nrows,
                                          int64_t chunk, int64_t limit) {
  Chunk c;
  const int64_t g = blockIdx.x;
  c.row = -1;
  if (nrows == 0 || g >= chunk_off[nrows]) return c;
  c.row = find_row(chunk_off, nrows, g);
  c.rbeg = offsets[c.row];
  c.len = offsets[c.row + 1] - c.rbeg;
  const int64_t le = c.len < limit ? c.len : limit;
  c.start = (g - chunk_off[c.row]) * chunk;
  c.end = c.start + chunk < le ? c.start + chunk : le;
  return c;
}

// ---- reduction (optionally fused with an elementwise write over the same row) -------------------
// pass 0: one chunk per row; lane 0 finalises and writes out[row, col] (kind out_kind), unless
//         fmode >= 0: then the block rewrites the whole row with apply(fmode, ..., q=result).
// pass 1: partial states of each chunk into part_a/b/i [chunk_id, C]; reduce_combine finishes.
template <typename T, int K, int V>
__global__ void __launch_bounds__(CJ_BLOCK, 1)
reduce_rows(const T* __restrict__ a, const T* __restrict__ b, const int64_t* __restrict__ offsets,
            const int64_t* __restrict__ chunk_off, int64_t nrows, int64_t C, int64_t chunk,
            int64_t trunc, int CT, int mode, int pass, float* __restrict__ part_a,
            float* __restrict__ part_b, int* __restrict__ part_i, void* __restrict__ out,
            int out_kind, int has_init, float init, int fmode, T* __restrict__ fout) {
  __shared__ float sa[CJ_BLOCK * V];
  __shared__ float sb[(K == K_LSE) ? CJ_BLOCK * V : 1];
  __shared__ int si[(K == K_MAX) ? CJ_BLOCK * V : 1];
  const Chunk ch = my_chunk(offsets, chunk_off, nrows, chunk, trunc);
  if (ch.row < 0) return;
  const int ct = threadIdx.x % CT, lane = threadIdx.x / CT, R = CJ_BLOCK / CT;
  const int64_t col = ((int64_t)blockIdx.y * CT + ct) * V;
  const bool active = col < C;
  const bool neg = (K == K_MAX) && (mode & 1);
  const int tmode = (K == K_SUM) ? (mode == 2 ? 1 : (mode == 3 ? 2 : 0)) : 0;
  const T* ar = a + ch.rbeg * C;
  const T* br = b ? b + ch.rbeg * C : b;

  St s[V];
#pragma unroll
  for (int j = 0; j < V; ++j) s[j] = st_init<K>();
  if (active) {
    int64_t i = ch.start + lane;
    for (; i + R < ch.end; i += 2 * R) {  // two loads in flight per lane
      float x0[V], x1[V], y0[V], y1[V];
      loadv<T, V>(ar + i * C + col, x0);
      loadv<T, V>(ar + (i + R) * C + col, x1);
      if (K == K_DOT) {
        loadv<T, V>(br + i * C + col, y0);
        loadv<T, V>(br + (i + R) * C + col, y1);
      }
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float u = x0[j], w = x1[j];
        if (neg) { u = -u; w = -w; }
        if (tmode == 1) { u = u != 0.f; w = w != 0.f; }
        if (tmode == 2) { u = u == 0.f; w = w == 0.f; }
        st_push<K>(s[j], u, K == K_DOT ? y0[j] : 0.f, (int)i);
        st_push<K>(s[j], w, K == K_DOT ? y1[j] : 0.f, (int)(i + R));
      }
    }
    if (i < ch.end) {
      float x0[V], y0[V];
      loadv<T, V>(ar + i * C + col, x0);
      if (K == K_DOT) loadv<T, V>(br + i * C + col, y0);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float u = x0[j];
        if (neg) u = -u;
        if (tmode == 1) u = u != 0.f;
        if (tmode == 2) u = u == 0.f;
        st_push<K>(s[j], u, K == K_DOT ? y0[j] : 0.f, (int)i);
      }
    }
  }
  // tree combine over the R lanes (lane l merges lane l + h: items of l + h are "after" l only
  // for ordered ops by index, which K_MAX handles through the index tie-break)
  for (int h = R >> 1; h > 0; h >>= 1) {
    if (lane >= h && lane < 2 * h) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int k = ((lane - h) * CT + ct) * V + j;
        sa[k] = s[j].a;
        if (K == K_LSE) sb[k] = s[j].b;
        if (K == K_MAX) si[k] = s[j].i;
      }
    }
    __syncthreads();
    if (lane < h) {
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
  const int64_t n = ch.len < trunc ? ch.len : trunc;
  if (pass == 1) {
    if (lane == 0 && active) {
      const int64_t g = blockIdx.x;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        part_a[g * C + col + j] = s[j].a;
        if (K == K_LSE) part_b[g * C + col + j] = s[j].b;
        if (K == K_MAX) part_i[g * C + col + j] = s[j].i;
      }
    }
    return;
  }
  if (fmode < 0) {
    if (lane == 0 && active) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float v = st_final<K>(s[j], mode, n, has_init, neg ? -init : init);
        if (neg && !(mode & 2)) v = -v;
        write_out<T>(out, out_kind, ch.row * C + col + j, v);
      }
    }
    return;
  }
  // fused elementwise rewrite of the whole row (pass 0 means the chunk is the whole row)
  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < V; ++j) sa[ct * V + j] = st_final<K>(s[j], mode, n, 0, 0.f);
  }
  __syncthreads();
  if (!active) return;
  float q[V];
#pragma unroll
  for (int j = 0; j < V; ++j) q[j] = sa[ct * V + j];
  T* orow = fout + ch.rbeg * C;
  for (int64_t i = lane; i < ch.len; i += R) {
    float x[V], y[V], o[V];
    if (i < trunc) {
      loadv<T, V>(ar + i * C + col, x);
      load_or_zero<T, V>(br, i, C, col, y);
#pragma unroll
      for (int j = 0; j < V; ++j) o[j] = apply(fmode, x[j], y[j], 0.f, q[j], i, ch.len, trunc, 0);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) o[j] = 0.f;
    }
    storev<T, V>(orow + i * C + col, o);
  }
}

// Second pass: thread per (row, col) folds the row's chunk states in order and finalises.
template <typename T, int K>
__global__ void __launch_bounds__(CJ_BLOCK, 1)
reduce_combine(const int64_t* __restrict__ offsets, const int64_t* __restrict__ chunk_off,
               int64_t nrows, int64_t C, int64_t trunc, int mode, const float* __restrict__ part_a,
               const float* __restrict__ part_b, const int* __restrict__ part_i,
               void* __restrict__ out, int out_kind, int has_init, float init) {
  const int64_t t = (int64_t)blockIdx.x * CJ_BLOCK + threadIdx.x;
  if (t >= nrows * C) return;
  const int64_t r = t / C, c = t % C;
  const bool neg = (K == K_MAX) && (mode & 1);
  St s = st_init<K>();
  for (int64_t g = chunk_off[r]; g < chunk_off[r + 1]; ++g) {
    St u;
    u.a = part_a[g * C + c];
    u.b = (K == K_LSE) ? part_b[g * C + c] : 0.f;
    u.i = (K == K_MAX) ? part_i[g * C + c] : CJ_NOIDX;
    st_merge<K>(s, u);
  }
  const int64_t len = offsets[r + 1] - offsets[r];
  const int64_t n = len < trunc ? len : trunc;
  float v = st_final<K>(s, mode, n, has_init, neg ? -init : init);
  if (neg && !(mode & 2)) v = -v;
  write_out<T>(out, out_kind, t, v);
}

// ---- row-broadcast elementwise -----------------------------------------------------------------
// out[t, c] = apply(mode, a[t, c], b[t, c], p[row*p_row + pos*p_pos + c], q[row*C + c], ...,
//                   ix[row*C + c]) over every item of every row (chunks of the untruncated rows).
template <typename T, int V>
__global__ void __launch_bounds__(CJ_BLOCK, 1)
rowbcast(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ p,
         int64_t p_row, int64_t p_pos, const float* __restrict__ q,
         const int64_t* __restrict__ ix, const int64_t* __restrict__ offsets,
         const int64_t* __restrict__ chunk_off, int64_t nrows, int64_t C, int64_t chunk,
         int64_t trunc, int CT, int mode, T* __restrict__ out) {
  const Chunk ch = my_chunk(offsets, chunk_off, nrows, chunk, (int64_t)1 << 62);
  if (ch.row < 0) return;
  const int ct = threadIdx.x % CT, lane = threadIdx.x / CT, R = CJ_BLOCK / CT;
  const int64_t col = ((int64_t)blockIdx.y * CT + ct) * V;
  if (col >= C) return;
  float pr[V], qr[V];
  int64_t xr[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    pr[j] = (p && p_pos == 0) ? to_float(p[ch.row * p_row + col + j]) : 0.f;
    qr[j] = q ? q[ch.row * C + col + j] : 0.f;
    xr[j] = ix ? ix[ch.row * C + col + j] : -1;
  }
  for (int64_t i = ch.start + lane; i < ch.end; i += R) {
    const int64_t t = ch.rbeg + i;
    float x[V], y[V], o[V];
    load_or_zero<T, V>(a, t, C, col, x);
    load_or_zero<T, V>(b, t, C, col, y);
    if (p && p_pos != 0) loadv<T, V>(p + ch.row * p_row + i * p_pos + col, pr);
#pragma unroll
    for (int j = 0; j < V; ++j) o[j] = apply(mode, x[j], y[j], pr[j], qr[j], i, ch.len, trunc, xr[j]);
    storev<T, V>(out + t * C + col, o);
  }
}

// ---- cumsum ------------------------------------------------------------------------------------
// Inclusive (exclusive=0) or exclusive scan of each column along each row; reverse=1 scans from
// the row's end (the backward of the forward scan). Chunked: the carry-in of chunk k is the sum of
// the partial sums part_a of the row's earlier chunks (a reduce_rows<K_SUM> pass 1), or 0 when the
// row is one chunk (part_a == nullptr).
template <typename T, int V>
__global__ void __launch_bounds__(CJ_BLOCK, 1)
cumsum_rows(const T* __restrict__ a, const int64_t* __restrict__ offsets,
            const int64_t* __restrict__ chunk_off, int64_t nrows, int64_t C, int64_t chunk,
            int CT, int exclusive, int reverse, const float* __restrict__ part_a,
            T* __restrict__ out) {
  __shared__ float sm[CJ_BLOCK * V];
  const Chunk ch = my_chunk(offsets, chunk_off, nrows, chunk, (int64_t)1 << 62);
  if (ch.row < 0) return;
  const int ct = threadIdx.x % CT, lane = threadIdx.x / CT, R = CJ_BLOCK / CT;
  const int64_t col = ((int64_t)blockIdx.y * CT + ct) * V;
  const bool active = col < C;
  float carry[V];
#pragma unroll
  for (int j = 0; j < V; ++j) carry[j] = 0.f;
  if (part_a && active) {
    // chunk order along the scan direction: chunks before this one (forward) or after (reverse)
    const int64_t g0 = chunk_off[ch.row], g1 = chunk_off[ch.row + 1], g = blockIdx.x;
    for (int64_t h = reverse ? g + 1 : g0; h < (reverse ? g1 : g); ++h) {
#pragma unroll
      for (int j = 0; j < V; ++j) carry[j] += part_a[h * C + col + j];
    }
  }
  const int64_t n = ch.end - ch.start;
  for (int64_t base = 0; base < n; base += R) {
    const int64_t k = base + lane;  // k-th item of the chunk in scan order
    const int64_t i = reverse ? ch.end - 1 - k : ch.start + k;
    float x[V];
    if (active && k < n) loadv<T, V>(a + (ch.rbeg + i) * C + col, x);
    else {
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
    if (active && k < n) storev<T, V>(out + (ch.rbeg + i) * C + col, o);
#pragma unroll
    for (int j = 0; j < V; ++j) carry[j] += tot[j];
    __syncthreads();
  }
}
