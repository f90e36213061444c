// Jagged Flash Attention, forward.
//
// Work is a list of real tiles, one 32-byte record each (jfa_tiles.cuh), rows of most work first.
//
// Row b: queries q[q_off[b] + i], keys/values k,v[k_off[b] + j], with Lq = min(len_q, max_seq_len),
// Lk = min(len_k, max_seq_len); query rows i >= Lq are written as zeros (lse = -inf). Causal: key j
// is seen by query i when j <= i + Lk - Lq (aligned to the end of the row, as FlashAttention-2).
// Bias (optional): bias[b*sb + h*sh + i*si + j] is added to the scaled score (same dtype as q).
#include "common.cuh"
#include "mma.cuh"
#include "jfa_tiles.cuh"

#define JFA_LOG2E 1.4426950408889634f
#define JFA_LN2 0.6931471805599453f
// Tile knobs (overridable with -D for tuning sweeps; cujagged/attention.py mirrors them):
// JFA_BN keys per step, JFA_MT 16-row MMA tiles per warp, JFA_MINB blocks per SM to plan for.
// Defaults from bench/attention_sweep.py on an H200 (bench/NOTES.md): D = 32 runs best with one
// 16-row tile per warp, 32 keys per step and two blocks per SM.
#ifndef JFA_BN
#define JFA_BN(D) ((D) == 64 || (D) == 96 ? 64 : 32)
#endif
#ifndef JFA_MT
#define JFA_MT(D) ((D) >= 64 && (D) <= 128 ? 2 : 1)
#endif
#ifndef JFA_MINB
#define JFA_MINB(D) ((D) == 32 ? 2 : 1)
#endif
#ifndef JFA_STAGES
#define JFA_STAGES(D) 2
#endif

// two adjacent output elements (p is 4- or 8-byte aligned)
template <typename T> __device__ __forceinline__ void store2(T* p, float lo, float hi) {
  if constexpr (sizeof(T) == 4) *reinterpret_cast<float2*>(p) = make_float2(lo, hi);
  else *reinterpret_cast<uint32_t*>(p) = pack2<T>(lo, hi);
}

// ------------------------------------------------------------------------------------------------
// Tensor cores: bf16 / fp16 (m16n8k16), or float through TF32 (m16n8k8, operands rounded to
// nearest; opt-in). Each warp owns MT x 16 query rows (MT = 2 for D <= 128: every K/V fragment
// read from shared memory feeds two MMAs); BM query rows per block, BN keys per step. Shared rows
// are padded by 16 bytes, so the 8 rows of an ldmatrix (and TF32's scalar V reads) hit distinct
// banks; a k-step covers 32 bytes of a row (16 half-precision or 8 TF32 elements).
template <typename T, int D, int BM> struct JfaCfg {
  static constexpr bool TF32 = sizeof(T) == 4;
  static constexpr int EPV = 16 / (int)sizeof(T);  // elements per 16 bytes
  static constexpr int MT = JFA_MT(D);
  static constexpr int NW = BM / (16 * MT);
  static constexpr int NT = NW * 32;
  static constexpr int BN = TF32 && D == 256 ? 16 : JFA_BN(D);  // TF32 D=256: fits sm_80's smem
  static constexpr bool Q_REG = D * sizeof(T) <= 128;
  static constexpr int STAGES = JFA_STAGES(D);  // K/V tiles in flight: ring of STAGES slots
};

template <typename T, int D, int BM, bool HAS_BIAS>
__global__ void __launch_bounds__(JfaCfg<T, D, BM>::NT, JFA_MINB(D))
jfa_fwd_mma(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
            T* __restrict__ o, float* __restrict__ lse, const int32_t* __restrict__ tile_info,
            const int32_t* __restrict__ tile_off, int64_t B, int H, int Hk, int64_t max_seq_len,
            float scale_log2, int causal, const T* __restrict__ bias, int64_t bias_sb,
            int64_t bias_sh, int64_t bias_si, int write_lse) {
  using C = JfaCfg<T, D, BM>;
  constexpr int MT = C::MT, NT = C::NT, BN = C::BN, EPV = C::EPV;
  constexpr bool Q_REG = C::Q_REG, TF32 = C::TF32;
  constexpr int SD = D + EPV;  // padded smem row (elements)
  constexpr int KC = D / (2 * EPV), NB = BN / 8, DB = D / 8, CPR = D / EPV;
  constexpr int ES = (int)sizeof(T);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  constexpr int ST = C::STAGES;
  T* sK = sQ + BM * SD;     // ST slots of BN x SD keys
  T* sV = sK + ST * BN * SD;  // ST slots of BN x SD values

  const TileInfo ti = locate_tile<BM>(tile_info, tile_off, B, H, Hk, max_seq_len);
  if (!ti.live) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, tq = lane & 3;
  const int Lq = ti.Lq, Lk = ti.Lk;
  const int i0 = (int)ti.i0;
  const int shift = Lk - Lq;
  int kmax = i0 < Lq ? Lk : 0;
  if (causal) kmax = min(kmax, min(i0 + BM, Lq) + shift);
  const int n_kv = kmax > 0 ? (kmax + BN - 1) / BN : 0;

  const int64_t q_rs = (int64_t)H * D, k_rs = (int64_t)Hk * D;
  const T* qbase = q + (ti.q_start + i0) * q_rs + (int64_t)ti.h * D;
  const T* kbase = k + ti.k_start * k_rs + (int64_t)ti.hk * D;
  const T* vbase = v + ti.k_start * k_rs + (int64_t)ti.hk * D;

  float oacc[MT][DB][4];
  float mrow[MT][2], lrow[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < DB; ++i) oacc[mt][i][0] = oacc[mt][i][1] = oacc[mt][i][2] = oacc[mt][i][3] = 0.f;
    mrow[mt][0] = mrow[mt][1] = -CJ_INF;
    lrow[mt][0] = lrow[mt][1] = 0.f;
  }
  const int wr0 = warp * 16 * MT;  // first row of this warp inside the tile
  const int lm = lane >> 3, lr = lane & 7;

  if (n_kv > 0) {
    // Key tile t (keys and values) is one cp.async group, in ring slot t % ST; tiles
    // 0 .. ST-2 are issued now (Q joins tile 0's group), tile j + ST - 1 at the top of step j,
    // into the slot that step j - 1 read (free once every warp passed step j's barrier).
    auto load_kv = [&](int t) {
      if (t < n_kv) {
        const int slot = t % ST;
        load_tile<BN, NT, D, SD>(sK + slot * BN * SD, kbase + (int64_t)t * BN * k_rs, k_rs,
                                 Lk - t * BN, k, tid);
        load_tile<BN, NT, D, SD>(sV + slot * BN * SD, vbase + (int64_t)t * BN * k_rs, k_rs,
                                 Lk - t * BN, v, tid);
      }
      cp_async_commit();  // always: group t is tile t, empty past the end
    };
    load_tile<BM, NT, D, SD>(sQ, qbase, q_rs, Lq - i0, q, tid);
#pragma unroll
    for (int t = 0; t < ST - 1; ++t) load_kv(t);
    uint32_t qf[MT][Q_REG ? KC : 1][4];
    const uint32_t sQw = smem_addr(sQ + (wr0 + (lm & 1) * 8 + lr) * SD + (lm >> 1) * EPV);
    for (int j = 0; j < n_kv; ++j) {
      const int n0 = j * BN;
      const int slot = j % ST;
      cp_async_wait<ST - 2>();  // tile j has landed (for this thread) ...
      __syncthreads();          // ... for every thread; slot (j - 1) % ST is free
      load_kv(j + ST - 1);
      if constexpr (Q_REG) {
        if (j == 0) {
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int kk = 0; kk < KC; ++kk) {
              ldsm_x4(qf[mt][kk][0], qf[mt][kk][1], qf[mt][kk][2], qf[mt][kk][3],
                      sQw + (mt * 16 * SD + kk * 2 * EPV) * ES);
              if constexpr (TF32) {
#pragma unroll
                for (int r = 0; r < 4; ++r) qf[mt][kk][r] = to_tf32(qf[mt][kk][r]);
              }
            }
        }
      }

      // S = Q K^T for this warp's MT x 16 rows x BN keys
      float s[MT][NB][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < NB; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
      const uint32_t sKl =
          smem_addr(sK + slot * BN * SD + ((lm >> 1) * 8 + lr) * SD + (lm & 1) * EPV);
#pragma unroll
      for (int kk = 0; kk < KC; ++kk) {
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          if constexpr (Q_REG) {
            a[mt][0] = qf[mt][kk][0]; a[mt][1] = qf[mt][kk][1];
            a[mt][2] = qf[mt][kk][2]; a[mt][3] = qf[mt][kk][3];
          } else {
            ldsm_x4(a[mt][0], a[mt][1], a[mt][2], a[mt][3],
                    sQw + (mt * 16 * SD + kk * 2 * EPV) * ES);
            if constexpr (TF32) {
#pragma unroll
              for (int r = 0; r < 4; ++r) a[mt][r] = to_tf32(a[mt][r]);
            }
          }
        }
#pragma unroll
        for (int nb = 0; nb < NB / 2; ++nb) {
          uint32_t b0, b1, b2, b3;
          ldsm_x4(b0, b1, b2, b3, sKl + (nb * 16 * SD + kk * 2 * EPV) * ES);
          if constexpr (TF32) {
            b0 = to_tf32(b0); b1 = to_tf32(b1); b2 = to_tf32(b2); b3 = to_tf32(b3);
          }
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma_step<T>(s[mt][2 * nb], a[mt], b0, b1);
            mma_step<T>(s[mt][2 * nb + 1], a[mt], b2, b3);
          }
        }
      }

      // online softmax (log2 domain, scale folded); masks only on boundary tiles
      const bool edge = HAS_BIAS || n0 + BN > Lk || (causal && n0 + BN - 1 > i0 + shift);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int row_g = i0 + wr0 + mt * 16 + g;
        if (edge) {
#pragma unroll
          for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int jj = n0 + nb * 8 + 2 * tq + (e & 1);
              const int ii = row_g + (e >> 1) * 8;
              bool ok = jj < Lk && (!causal || jj <= ii + shift);
              float x = s[mt][nb][e] * scale_log2;
              if constexpr (HAS_BIAS) {
                ok = ok && ii < Lq;
                if (ok)
                  x += to_float(bias[ti.row * bias_sb + ti.h * bias_sh + (int64_t)ii * bias_si +
                                     jj]) * JFA_LOG2E;
              }
              s[mt][nb][e] = ok ? x : -CJ_INF;
            }
        } else {
#pragma unroll
          for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[mt][nb][e] *= scale_log2;
        }
        float mx0 = -CJ_INF, mx1 = -CJ_INF;
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) {
          mx0 = fmaxf(mx0, fmaxf(s[mt][nb][0], s[mt][nb][1]));
          mx1 = fmaxf(mx1, fmaxf(s[mt][nb][2], s[mt][nb][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        // lazy rescaling: the running max only moves when it grows by more than 8 (log2 units),
        // so most steps skip rescaling O; P = 2^(x - m) <= 2^8 stays well inside fp32 / bf16
        const float mn0 = fmaxf(mrow[mt][0], mx0), mn1 = fmaxf(mrow[mt][1], mx1);
        const bool up0 = mn0 > mrow[mt][0] + 8.f, up1 = mn1 > mrow[mt][1] + 8.f;
        const float mnew0 = up0 ? mn0 : mrow[mt][0], mnew1 = up1 ? mn1 : mrow[mt][1];
        const float mu0 = mnew0 == -CJ_INF ? 0.f : mnew0, mu1 = mnew1 == -CJ_INF ? 0.f : mnew1;
        const float al0 = up0 ? fast_exp2(mrow[mt][0] - mu0) : 1.f;
        const float al1 = up1 ? fast_exp2(mrow[mt][1] - mu1) : 1.f;
        mrow[mt][0] = mnew0;
        mrow[mt][1] = mnew1;
        float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) {
          s[mt][nb][0] = fast_exp2(s[mt][nb][0] - mu0);
          s[mt][nb][1] = fast_exp2(s[mt][nb][1] - mu0);
          s[mt][nb][2] = fast_exp2(s[mt][nb][2] - mu1);
          s[mt][nb][3] = fast_exp2(s[mt][nb][3] - mu1);
          rs0 += s[mt][nb][0] + s[mt][nb][1];
          rs1 += s[mt][nb][2] + s[mt][nb][3];
        }
        lrow[mt][0] = lrow[mt][0] * al0 + rs0;
        lrow[mt][1] = lrow[mt][1] * al1 + rs1;
        if (__any_sync(0xffffffffu, up0 || up1)) {
#pragma unroll
          for (int i = 0; i < DB; ++i) {
            oacc[mt][i][0] *= al0; oacc[mt][i][1] *= al0;
            oacc[mt][i][2] *= al1; oacc[mt][i][3] *= al1;
          }
        }
      }


      // O += P V (P from the S registers, rounded to T / TF32)
      if constexpr (TF32) {
        // a k-step of 8 keys takes this thread's P accumulators as they lie, (row g, keys 2tq and
        // 2tq + 1) as k = tq and tq + 4, so V's fragment pairs the same keys: plain 32-bit reads
        const T* sVt = sV + slot * BN * SD + 2 * tq * SD + g;
#pragma unroll
        for (int kc = 0; kc < BN / 8; ++kc) {
          uint32_t a[MT][4];
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            a[mt][0] = to_tf32(s[mt][kc][0]);
            a[mt][1] = to_tf32(s[mt][kc][2]);
            a[mt][2] = to_tf32(s[mt][kc][1]);
            a[mt][3] = to_tf32(s[mt][kc][3]);
          }
#pragma unroll
          for (int db = 0; db < DB; ++db) {
            const uint32_t b0 = to_tf32(to_float(sVt[kc * 8 * SD + db * 8]));
            const uint32_t b1 = to_tf32(to_float(sVt[(kc * 8 + 1) * SD + db * 8]));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) mma_step<T>(oacc[mt][db], a[mt], b0, b1);
          }
        }
      } else {
        const uint32_t sVl =
            smem_addr(sV + slot * BN * SD + ((lm & 1) * 8 + lr) * SD + (lm >> 1) * 8);
#pragma unroll
        for (int kc = 0; kc < BN / 16; ++kc) {
          uint32_t a[MT][4];
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            acc_to_a<T>(s[mt][2 * kc], s[mt][2 * kc + 1], a[mt]);
          }
#pragma unroll
          for (int db = 0; db < DB / 2; ++db) {
            uint32_t b0, b1, b2, b3;
            ldsm_x4_t(b0, b1, b2, b3, sVl + (kc * 16 * SD + db * 16) * 2);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              mma_step<T>(oacc[mt][2 * db], a[mt], b0, b1);
              mma_step<T>(oacc[mt][2 * db + 1], a[mt], b2, b3);
            }
          }
        }
      }
    }
    cp_async_wait<0>();
  }

  // finish: normalise, stage this warp's rows in its own rows of sQ, store coalesced
  if (n_kv > 0) __syncwarp();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int row_g = i0 + wr0 + mt * 16 + g;
    float l0 = lrow[mt][0], l1 = lrow[mt][1];
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const bool v0 = row_g < Lq && l0 > 0.f, v1 = row_g + 8 < Lq && l1 > 0.f;
    const float inv0 = v0 ? 1.f / l0 : 0.f, inv1 = v1 ? 1.f / l1 : 0.f;
    T* sO = sQ + (wr0 + mt * 16) * SD;
#pragma unroll
    for (int i = 0; i < DB; ++i) {
      const float a0 = v0 ? oacc[mt][i][0] * inv0 : 0.f, a1 = v0 ? oacc[mt][i][1] * inv0 : 0.f;
      const float a2 = v1 ? oacc[mt][i][2] * inv1 : 0.f, a3 = v1 ? oacc[mt][i][3] * inv1 : 0.f;
      store2<T>(sO + g * SD + i * 8 + 2 * tq, a0, a1);
      store2<T>(sO + (g + 8) * SD + i * 8 + 2 * tq, a2, a3);
    }
    if (write_lse && tq == 0) {
      if (row_g < ti.Lq_full)
        lse[(ti.q_start + row_g) * H + ti.h] = v0 ? (mrow[mt][0] + __log2f(l0)) * JFA_LN2 : -CJ_INF;
      if (row_g + 8 < ti.Lq_full)
        lse[(ti.q_start + row_g + 8) * H + ti.h] =
            v1 ? (mrow[mt][1] + __log2f(l1)) * JFA_LN2 : -CJ_INF;
    }
  }
  __syncwarp();
  T* obase = o + (ti.q_start + i0 + wr0) * q_rs + (int64_t)ti.h * D;
  const int nrows = min(16 * MT, ti.Lq_full - i0 - wr0);
  const T* sOw = sQ + wr0 * SD;
  for (int c = lane; c < 16 * MT * CPR; c += 32) {
    const int r = c / CPR, cc = c % CPR;
    if (r < nrows)
      *reinterpret_cast<uint4*>(obase + r * q_rs + cc * EPV) =
          *reinterpret_cast<const uint4*>(sOw + r * SD + cc * EPV);
  }
}

// ------------------------------------------------------------------------------------------------
// fp32, exact FFMA path (no tensor cores). 16 query rows per block, 4 warps x 4 rows; 32 keys per
// step in shared memory, one key per lane for Q K^T, one head-dim column per lane for P V.
template <int D, bool HAS_BIAS>
__global__ void __launch_bounds__(128, 1)
jfa_fwd_f32(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
            float* __restrict__ o, float* __restrict__ lse, const int32_t* __restrict__ tile_info,
            const int32_t* __restrict__ tile_off, int64_t B, int H, int Hk, int64_t max_seq_len,
            float scale, int causal, const float* __restrict__ bias, int64_t bias_sb,
            int64_t bias_sh, int64_t bias_si, int write_lse) {
  constexpr int BM = 16, BN = 32, RW = 4, DC = D / 32;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* sQ = reinterpret_cast<float*>(smem_raw);  // BM x D
  float* sK = sQ + BM * D;                          // BN x (D+1)
  float* sV = sK + BN * (D + 1);                    // BN x D

  const TileInfo ti = locate_tile<BM>(tile_info, tile_off, B, H, Hk, max_seq_len);
  if (!ti.live) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int Lq = ti.Lq, Lk = ti.Lk;
  const int i0 = (int)ti.i0;
  const int shift = Lk - Lq;
  int kmax = i0 < Lq ? Lk : 0;
  if (causal) kmax = min(kmax, min(i0 + BM, Lq) + shift);
  const int64_t q_rs = (int64_t)H * D, k_rs = (int64_t)Hk * D;
  const float* qbase = q + (ti.q_start + i0) * q_rs + (int64_t)ti.h * D;
  const float* kbase = k + ti.k_start * k_rs + (int64_t)ti.hk * D;
  const float* vbase = v + ti.k_start * k_rs + (int64_t)ti.hk * D;

  for (int c = tid; c < BM * D; c += 128) {
    const int r = c / D, d = c % D;
    sQ[c] = (i0 + r < Lq) ? qbase[r * q_rs + d] : 0.f;
  }
  float acc[RW][DC], m[RW], l[RW];
#pragma unroll
  for (int r = 0; r < RW; ++r) {
    m[r] = -CJ_INF;
    l[r] = 0.f;
#pragma unroll
    for (int c = 0; c < DC; ++c) acc[r][c] = 0.f;
  }
  for (int n0 = 0; n0 < kmax; n0 += BN) {
    __syncthreads();
    for (int c = tid; c < BN * D; c += 128) {
      const int r = c / D, d = c % D;
      const bool ok = n0 + r < Lk;
      sK[r * (D + 1) + d] = ok ? kbase[(int64_t)(n0 + r) * k_rs + d] : 0.f;
      sV[c] = ok ? vbase[(int64_t)(n0 + r) * k_rs + d] : 0.f;
    }
    __syncthreads();
    const int jj = n0 + lane;
    float p[RW];
    {
      float s[RW];
#pragma unroll
      for (int r = 0; r < RW; ++r) s[r] = 0.f;
      const float* qr = sQ + warp * RW * D;
      const float* kr = sK + lane * (D + 1);
#pragma unroll 4
      for (int d = 0; d < D; ++d) {
        const float kd = kr[d];
#pragma unroll
        for (int r = 0; r < RW; ++r) s[r] = fmaf(qr[r * D + d], kd, s[r]);
      }
#pragma unroll
      for (int r = 0; r < RW; ++r) {
        const int ii = i0 + warp * RW + r;
        bool ok = jj < Lk && ii < Lq && (!causal || jj <= ii + shift);
        float x = s[r] * scale;
        if constexpr (HAS_BIAS) {
          if (ok) x += bias[ti.row * bias_sb + ti.h * bias_sh + (int64_t)ii * bias_si + jj];
        }
        x = ok ? x : -CJ_INF;
        const float mn = fmaxf(m[r], warp_max(x));
        const float mu = mn == -CJ_INF ? 0.f : mn;
        const float al = expf(m[r] - mu);
        p[r] = expf(x - mu);
        m[r] = mn;
        l[r] = l[r] * al + warp_sum(p[r]);
#pragma unroll
        for (int c = 0; c < DC; ++c) acc[r][c] *= al;
      }
    }
#pragma unroll 2
    for (int t = 0; t < BN; ++t) {
      float vt[DC];
#pragma unroll
      for (int c = 0; c < DC; ++c) vt[c] = sV[t * D + c * 32 + lane];
#pragma unroll
      for (int r = 0; r < RW; ++r) {
        const float pt = __shfl_sync(0xffffffffu, p[r], t);
#pragma unroll
        for (int c = 0; c < DC; ++c) acc[r][c] = fmaf(pt, vt[c], acc[r][c]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < RW; ++r) {
    const int ii = i0 + warp * RW + r;
    if (ii >= ti.Lq_full) continue;
    const bool ok = ii < Lq && l[r] > 0.f;
    const float inv = ok ? 1.f / l[r] : 0.f;
    float* orow = o + (ti.q_start + ii) * q_rs + (int64_t)ti.h * D;
#pragma unroll
    for (int c = 0; c < DC; ++c) orow[c * 32 + lane] = ok ? acc[r][c] * inv : 0.f;
    if (write_lse && lane == 0)
      lse[(ti.q_start + ii) * H + ti.h] = ok ? m[r] + logf(l[r]) : -CJ_INF;
  }
}
