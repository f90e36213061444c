// What the two Jagged Flash Attention kernels share (attention.cu: mma.sync, sm_80+;
// attention_sm90.cu: wgmma, sm_90a): finding a block's tile in the device-built tile list, and the
// online softmax on an accumulator fragment.
//
// Fragment layout (the C layout of mma.sync m16n8, and of each warp's 16-row slab of a wgmma
// m64nN accumulator): a thread holds rows r and r + 8 of a 16-row slab, and s[4 * nb + e] is
// row r + 8 * (e >> 1), key nb * 8 + 2 * tq + (e & 1), with tq = lane % 4 and r = lane / 4 + slab.
#pragma once

#define JFA_LOG2E 1.4426950408889634f
#define JFA_LN2 0.6931471805599453f

// ---- the tile of this block -------------------------------------------------------------------
// Block x handles head x % H of tile x / H; tile_info[t] = (row, query tile) for t < tile_off[B].
// Row b: queries q_off[b] .., keys k_off[b] .., both truncated to max_seq_len.
struct TileInfo {
  int64_t row, q_start, k_start, i0;
  int Lq_full, Lq, Lk, h, hk;
  bool live;
};

template <int BM>
__device__ __forceinline__ TileInfo locate_tile(const int64_t* __restrict__ q_off,
                                                const int64_t* __restrict__ k_off,
                                                const int32_t* __restrict__ tile_info,
                                                const int32_t* __restrict__ tile_off, int64_t B,
                                                int H, int Hk, int64_t max_seq_len) {
  TileInfo ti;
  const int64_t lin = blockIdx.x;
  ti.h = (int)(lin % H);
  const int64_t tile = lin / H;
  // both loads at once: tile < the grid's host-side bound, so tile_info[tile] is readable even
  // past the real tile count (its value is then unused)
  const int2 info = __ldg(reinterpret_cast<const int2*>(tile_info) + tile);
  ti.live = tile < (int64_t)__ldg(tile_off + B);
  if (!ti.live) return ti;
  ti.row = info.x;
  ti.q_start = __ldg(q_off + ti.row);
  const int64_t lq = __ldg(q_off + ti.row + 1) - ti.q_start;
  ti.k_start = __ldg(k_off + ti.row);
  const int64_t lk = __ldg(k_off + ti.row + 1) - ti.k_start;
  ti.Lq_full = (int)lq;
  ti.Lq = (int)(lq < max_seq_len ? lq : max_seq_len);
  ti.Lk = (int)(lk < max_seq_len ? lk : max_seq_len);
  ti.i0 = (int64_t)info.y * BM;
  ti.hk = ti.h / (H / Hk);
  return ti;
}

// ---- online softmax (log2 domain, scale * log2(e) folded) --------------------------------------
struct SoftmaxRows {  // running max and sum of the two rows a thread holds
  float m[2] = {-CJ_INF, -CJ_INF};
  float l[2] = {0.f, 0.f};
};

struct NoBias {  // bias(ii, jj, x): add row ii / key jj's bias to x; false masks the score
  __device__ __forceinline__ bool operator()(int, int, float&) const { return true; }
};

// Scale the raw scores of one key step (keys n0 ..) into the log2 domain; on edge steps also mask
// keys past Lk, causal keys (jj > ii + shift) and what `bias` rejects, to -inf.
template <int NB, typename Bias>
__device__ __forceinline__ void scale_mask(float* s, float scale_log2, bool edge, int n0, int row,
                                           int tq, int Lk, bool causal, int shift,
                                           const Bias& bias) {
  if (edge) {
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int jj = n0 + nb * 8 + 2 * tq + (e & 1);
        const int ii = row + (e >> 1) * 8;
        float x = s[4 * nb + e] * scale_log2;
        const bool ok = jj < Lk && (!causal || jj <= ii + shift) && bias(ii, jj, x);
        s[4 * nb + e] = ok ? x : -CJ_INF;
      }
  } else {
#pragma unroll
    for (int i = 0; i < 4 * NB; ++i) s[i] *= scale_log2;
  }
}

// One key step: s becomes P = 2^(s - m), the sums and maxima advance. Lazy rescaling: the running
// max moves only when it grows by more than 8 (log2 units), so P <= 2^8 stays well inside fp32 and
// the 16-bit P; returns whether any thread of the warp must scale O's rows by (al[0], al[1]).
template <int NB>
__device__ __forceinline__ bool online_softmax(float* s, SoftmaxRows& st, float al[2]) {
  float mx[2] = {-CJ_INF, -CJ_INF};
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
    mx[0] = fmaxf(mx[0], fmaxf(s[4 * nb], s[4 * nb + 1]));
    mx[1] = fmaxf(mx[1], fmaxf(s[4 * nb + 2], s[4 * nb + 3]));
  }
  bool up_any = false;
  float mu[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    const float mn = fmaxf(st.m[r], mx[r]);
    const bool up = mn > st.m[r] + 8.f;
    const float mnew = up ? mn : st.m[r];
    mu[r] = mnew == -CJ_INF ? 0.f : mnew;
    al[r] = up ? fast_exp2(st.m[r] - mu[r]) : 1.f;
    st.m[r] = mnew;
    up_any |= up;
  }
  float rs[2] = {0.f, 0.f};
#pragma unroll
  for (int nb = 0; nb < NB; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[4 * nb + e] = fast_exp2(s[4 * nb + e] - mu[e >> 1]);
      rs[e >> 1] += s[4 * nb + e];
    }
#pragma unroll
  for (int r = 0; r < 2; ++r) st.l[r] = st.l[r] * al[r] + rs[r];
  return __any_sync(0xffffffffu, up_any);
}

// The end of the rows (row, row + 8): ok[i] for rows inside Lq that saw a key (the others' O is
// 0), inv[i] = 1 / their sum, lse[i] = their natural-log log-sum-exp (-inf for the others).
__device__ __forceinline__ void finish_rows(SoftmaxRows& st, int row, int Lq, bool ok[2],
                                            float inv[2], float lse[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = st.l[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    ok[r] = row + 8 * r < Lq && l > 0.f;
    inv[r] = ok[r] ? 1.f / l : 0.f;
    lse[r] = ok[r] ? (st.m[r] + __log2f(l)) * JFA_LN2 : -CJ_INF;
  }
}
