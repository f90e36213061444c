// The tile list of the Jagged Flash Attention kernels (attention*.cu).
//
// Work is a list of real tiles (row, query tile), built on the device from the offsets, rows of
// most work first. Tile t is one 32-byte record tile_info[t] (int32 x 8):
//   q_start (int64), k_start (int64), len_q, len_k (untruncated), query tile, row
// so that a block reads everything it needs about its tile in one round trip (two independent
// 16-byte loads, no dependent offsets lookup). Block x handles head x % H of tile x / H; blocks
// past tile_off[B] * H exit at once, so the grid only needs a host-side upper bound.
#pragma once
#include "common.cuh"
#include "mma.cuh"

struct TileInfo {
  int64_t q_start, k_start;
  int row, i0, Lq_full, Lq, Lk, h, hk;
  bool live;
};

template <int BM>
__device__ __forceinline__ TileInfo locate_tile(const int32_t* __restrict__ tile_info,
                                                const int32_t* __restrict__ tile_off, int64_t B,
                                                int H, int Hk, int64_t max_seq_len) {
  TileInfo ti;
  const int64_t lin = blockIdx.x;
  ti.h = (int)(lin % H);
  const int64_t tile = lin / H;
  // three independent loads (tile < the grid's bound: its record is readable even past the end)
  const longlong2 st = __ldg(reinterpret_cast<const longlong2*>(tile_info) + 2 * tile);
  const int4 info = __ldg(reinterpret_cast<const int4*>(tile_info) + 2 * tile + 1);
  ti.live = tile < (int64_t)__ldg(tile_off + B);
  if (!ti.live) return ti;
  ti.q_start = st.x;
  ti.k_start = st.y;
  ti.Lq_full = info.x;
  ti.Lq = (int)(info.x < max_seq_len ? info.x : max_seq_len);
  ti.Lk = (int)(info.y < max_seq_len ? info.y : max_seq_len);
  ti.i0 = info.z * BM;
  ti.row = info.w;
  ti.hk = ti.h / (H / Hk);
  return ti;
}

// The backward's view of a record of the key-major tile list (attention_bwd.cu,
// attention_bwd_sm90.cu: the list built over the keys, so the record's "query" fields are the
// keys): BK keys j0 .. of one key head hk, and the nq query tiles of BQ rows from qlo that see a
// key of them, for each of the G query heads of hk (steps s = 0 .. nq * G - 1: query tile
// qlo + (s % nq) * BQ of head hk * G + s / nq).
struct BwdTile {
  int64_t kstart, qstart;  // the row's first key and first query
  int row, Lk, Lq, Lk_full, hk, G, j0, qlo, nq, shift;  // shift: query i sees key j <= i + shift
  bool live;
};

template <int BK, int BQ>
__device__ __forceinline__ BwdTile locate_bwd_tile(const int32_t* __restrict__ tile_info,
                                                   const int32_t* __restrict__ tile_off,
                                                   int64_t B, int H, int Hk,
                                                   int64_t max_seq_len, int causal) {
  const TileInfo ti = locate_tile<BK>(tile_info, tile_off, B, Hk, Hk, max_seq_len);
  BwdTile t;
  t.live = ti.live;
  if (!ti.live) return t;
  t.kstart = ti.q_start;
  t.qstart = ti.k_start;
  t.row = ti.row;
  t.Lk = ti.Lq;
  t.Lq = ti.Lk;
  t.Lk_full = ti.Lq_full;
  t.hk = ti.h;
  t.G = H / Hk;
  // the record's tile index counts from the row's end (the forward's most causal work first);
  // here the first key tiles see the most queries: count from the start
  t.j0 = ((t.Lk_full + BK - 1) / BK - 1) * BK - ti.i0;
  t.shift = t.Lk - t.Lq;
  const int qhi = t.j0 < t.Lk ? t.Lq : 0;
  t.qlo = causal ? max(0, t.j0 - t.shift) / BQ * BQ : 0;
  t.nq = qhi > t.qlo ? (qhi - t.qlo + BQ - 1) / BQ : 0;
  return t;
}

// The backward's P and dS of one (query, key) pair (attention_bwd*.cu). x: the pair's exponent
// without the bias, scale log2(e) s - lse log2(e); ok: the pair is visible (inside both lengths,
// not hidden by causality). With a bias (BIAS != 0: element bo of `bias`) the exponent adds
// bias log2(e), and a bias entry of -inf hides the pair too (-inf - lse2 could be -inf + inf =
// NaN where every key of the query is hidden). Hidden pairs get P = dS = 0 exactly, whatever dp
// holds. EXACT: exp2f, else ex2.approx. Returns whether the pair is visible.
template <int BIAS, bool EXACT, typename T>
__device__ __forceinline__ bool bwd_p_ds(bool ok, float x, float dp, float delta,
                                         const T* __restrict__ bias, int64_t bo, float& p,
                                         float& ds) {
  if constexpr (BIAS != 0) {
    const float bv = ok ? to_float(bias[bo]) : 0.f;
    ok = ok && bv > -CJ_INF;
    x = fmaf(bv, 1.4426950408889634f, x);
  }
  if constexpr (EXACT)
    p = ok ? exp2f(x) : 0.f;
  else
    p = fast_exp2(ok ? x : -CJ_INF);
  ds = ok ? p * (dp - delta) : 0.f;
  return ok;
}

// dS of a visible pair to dbias element bo: BIAS 1 adds it to float32 (several query heads share
// the bias head), 2 stores it as T and 3 as float32 (a bias per head: one writer an element)
template <int BIAS, typename T>
__device__ __forceinline__ void put_dbias(void* dbias, int64_t bo, float ds) {
  if constexpr (BIAS == 1)
    atomicAdd(static_cast<float*>(dbias) + bo, ds);
  else if constexpr (BIAS == 2)
    static_cast<T*>(dbias)[bo] = from_float<T>(ds);
  else if constexpr (BIAS == 3)
    static_cast<float*>(dbias)[bo] = ds;
}

// q_start of tile `tile` again (kernels near their register cap reload it for the epilogue) ...
__device__ __forceinline__ int64_t tile_q_start(const int32_t* __restrict__ tile_info,
                                                int64_t tile) {
  return __ldg(reinterpret_cast<const int64_t*>(tile_info) + 4 * tile);
}
// ... and its (untruncated) query length
__device__ __forceinline__ int tile_len_q(const int32_t* __restrict__ tile_info, int64_t tile) {
  return __ldg(tile_info + 8 * tile + 4);
}

// cp.async a ROWS x D tile (global row stride rs; rows >= nvalid are zero-filled, reading `safe`)
// into smem rows of SD elements, with NT threads. Strength-reduced: thread tid owns the 16-byte
// column tid % CPR of rows tid / CPR + i * RSTEP, so each copy costs one pointer add; the generic
// loop serves shapes where NT % CPR != 0 (D = 96).
template <int ROWS, int NT, int D, int SD, typename T>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t rs, int nvalid,
                                          const T* safe, int tid) {
  constexpr int EPV = 16 / (int)sizeof(T);  // elements per 16-byte copy
  constexpr int CPR = D / EPV;
  if constexpr (NT % CPR == 0 && ROWS % (NT / CPR) == 0) {
    constexpr int RSTEP = NT / CPR;
    const int r0 = tid / CPR, c0 = tid % CPR;
    const T* p = src + r0 * rs + c0 * EPV;
    const int64_t step = RSTEP * rs;
    const uint32_t d = smem_addr(dst + r0 * SD + c0 * EPV);
#pragma unroll
    for (int i = 0; i < ROWS / RSTEP; ++i) {
      const bool ok = r0 + i * RSTEP < nvalid;
      cp_async16(d + i * RSTEP * SD * (int)sizeof(T), ok ? p : safe, ok);
      p += step;
    }
  } else {
    for (int c = tid; c < ROWS * CPR; c += NT) {
      const int r = c / CPR, cc = c % CPR;
      const bool ok = r < nvalid;
      cp_async16(smem_addr(dst + r * SD + cc * EPV), ok ? src + r * rs + cc * EPV : safe, ok);
    }
  }
}
