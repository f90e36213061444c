// Jagged Flash Attention, backward (FlashAttention-2's algorithm on the jagged tile list).
//
// Semantics as attention.cu (row b: queries q[q_off[b] + i], keys / values k, v[k_off[b] + j],
// Lq, Lk truncated to max_seq_len, causal aligned to the end of the row, GQA, the padded bias
// bias[b * sb + h * sh + i * si + j]). With P = softmax(scale * Q K^T + bias) and the forward's
// log-sum-exp, for each row and head:
//   dV = P^T dO,   dP = dO V^T,   dS = P * (dP - delta),   delta_i = sum_d dO_i O_i,
//   dQ = scale * dS K,   dK = scale * dS^T Q,   dbias = dS.
// BIAS (0: none): dbias is zeroed by the caller and indexed like bias (sh = 0 for a bias shared
// by the heads). BIAS = 1: dS is added to a float32 dbias by atomics (several heads add to one
// bias head); with one writer an element (a bias per head) it is stored, as T (BIAS = 2, a bias
// in q's dtype; attention_bwd_sm90.cu stores it from the dS tile in shared memory, this kernel
// from registers) or as float32 (BIAS = 3).
// Only pairs of real queries and keys are written; a key whose bias is -inf gets P = dS = 0 (so
// does a query that sees only such keys, whose log-sum-exp is -inf).
// Work: a block per (key tile of 64 keys, key head) of the tile list of jfa_tiles.cuh built
// over the keys (its "query" fields are the keys, its "key" fields the queries). The block keeps
// K and V of its tile in shared memory and dK, dV in registers (warp w: keys 16 w .. 16 w + 15,
// all D columns), and walks the query tiles of 32 rows that see its keys, for every query head
// of its key head (GQA: their contributions add up in the same accumulators). Per query tile:
//   S^T = K_w Q^T and dP^T = V_w dO^T (mma.sync m16n8k16, fp32), P^T and dS^T in registers;
//   dV_w += P^T dO, dK_w += dS^T Q (P and dS rounded to 16 bits as the A operand);
//   dS^T to shared memory, then dQ (32 x D) += dS K split over the warps and added to an fp32
//   buffer with atomics (so dQ's last bits depend on the order of the blocks).
// Q, dO of the next query tile load (cp.async) while the current one computes. Keys past Lk get
// dK = dV = 0; queries past Lq (or seeing no key) get dQ = 0 (the fp32 buffer starts at zero).
#include "common.cuh"
#include "mma.cuh"
#include "jfa_tiles.cuh"

#define JFB_LOG2E 1.4426950408889634f
#define JFB_BK 64  // keys a block
#define JFB_BQ 32  // queries a step

// delta[r] = sum_d o[r, d] * dout[r, d] and lse2[r] = lse[r] * log2(e), r over the T * H rows.
// TPR threads a row (a power of two <= 32 dividing its NV 16-byte vectors), each reading VPT
// vectors of each input, the partial dots added by shuffles: a warp's loads are whole lines
// (one thread a row read 256 bytes of each in 16 steps: latency-bound, H200 33 us for the 67 MB
// of the 256/0.5 shape). The loop runs over the block's rows (block-uniform: every lane of a
// warp reaches the shuffles).
template <typename T, int D>
__global__ void __launch_bounds__(256)
jfa_bwd_prep(const T* __restrict__ o, const T* __restrict__ dout, const float* __restrict__ lse,
             float* __restrict__ delta, float* __restrict__ lse2, int64_t n) {
  constexpr int EPV = 16 / (int)sizeof(T), NV = D / EPV;  // elements a vector, vectors a row
  constexpr int TPR = (NV & -NV) < 32 ? (NV & -NV) : 32, VPT = NV / TPR, RPB = 256 / TPR;
  static_assert(NV * EPV == D && NV % TPR == 0, "rows of whole 16-byte vectors");
  const int p = threadIdx.x % TPR;
  for (int64_t r0 = blockIdx.x * (int64_t)RPB; r0 < n; r0 += (int64_t)gridDim.x * RPB) {
    const int64_t r = r0 + threadIdx.x / TPR;
    float acc = 0.f;
    if (r < n) {
      const uint4* po = reinterpret_cast<const uint4*>(o + r * D) + p;
      const uint4* pd = reinterpret_cast<const uint4*>(dout + r * D) + p;
      uint4 a[VPT], b[VPT];
#pragma unroll
      for (int c = 0; c < VPT; ++c) {
        a[c] = __ldg(po + c * TPR);
        b[c] = __ldg(pd + c * TPR);
      }
#pragma unroll
      for (int c = 0; c < VPT; ++c) {
        const T* ea = reinterpret_cast<const T*>(&a[c]);
        const T* eb = reinterpret_cast<const T*>(&b[c]);
#pragma unroll
        for (int e = 0; e < EPV; ++e) acc = fmaf(to_float(ea[e]), to_float(eb[e]), acc);
      }
    }
    // (the shuffle as PTX: with __shfl_xor_sync here, CUDA 12's NVVM changed the code of the
    // jfa_bwd_mma kernels below and ptxas spilled 20 bytes in its D 128 bias instantiations on
    // sm_90; with this form every jfa_bwd_mma is SASS-identical to before and this kernel to
    // the intrinsic's)
#pragma unroll
    for (int m = TPR / 2; m > 0; m >>= 1) {
      float t;
      asm("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=f"(t) : "f"(acc), "r"(m));
      acc += t;
    }
    if (p == 0 && r < n) {
      delta[r] = acc;
      lse2[r] = lse[r] * JFB_LOG2E;
    }
  }
}

// dst[i] = src[i] rounded to the 16-bit T: 8 elements a thread (two 16-byte loads, streaming:
// src is dead after; one 16-byte store), the n % 8 last ones one at a time (src, dst 16-byte
// aligned)
template <typename T>
__global__ void __launch_bounds__(256)
jfa_bwd_cast(const float* __restrict__ src, T* __restrict__ dst, int64_t n) {
  static_assert(sizeof(T) == 2, "16-bit outputs");
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t gid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  for (int64_t i = gid; i < n / 8; i += stride) {
    const float4 a = __ldcs(reinterpret_cast<const float4*>(src) + 2 * i);
    const float4 b = __ldcs(reinterpret_cast<const float4*>(src) + 2 * i + 1);
    const uint4 w = make_uint4(pack2<T>(a.x, a.y), pack2<T>(a.z, a.w), pack2<T>(b.x, b.y),
                               pack2<T>(b.z, b.w));
    *(reinterpret_cast<uint4*>(dst) + i) = w;
  }
  const int64_t t = n / 8 * 8 + gid;
  if (t < n) dst[t] = from_float<T>(src[t]);
}

#ifndef JFB_DQ_RED
// dQ's atomics: 0 scalar atomicAdd, 2 red.global.add.v2.f32 (sm_90), -1 none (timing only)
#if __CUDA_ARCH__ >= 900
#define JFB_DQ_RED 2
#else
#define JFB_DQ_RED 0
#endif
#endif

// dst[0] += a, dst[1] += b (dst 8-byte aligned)
__device__ __forceinline__ void red_add2(float* dst, float a, float b) {
#if JFB_DQ_RED == 2
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(dst), "f"(a), "f"(b) : "memory");
#elif JFB_DQ_RED == 0
  atomicAdd(dst, a);
  atomicAdd(dst + 1, b);
#endif
}

template <typename T, int D> struct JfbSmem {
  static constexpr int SD = D + 8, SS = JFB_BQ + 8;  // row strides (16 bytes of padding)
  static constexpr int K = 0, V = K + JFB_BK * SD, Q = V + JFB_BK * SD;  // elements of T
  static constexpr int O = Q + 2 * JFB_BQ * SD, S = O + 2 * JFB_BQ * SD;
  static constexpr int END = S + JFB_BK * SS;
  static constexpr int BYTES = END * 2 + 4 * JFB_BQ * 4;  // + lse2, delta: 2 slots each
};

template <typename T, int D, int BIAS>
__global__ void __launch_bounds__(128, 2)
jfa_bwd_mma(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
            const T* __restrict__ dout, const float* __restrict__ lse2,
            const float* __restrict__ delta, float* __restrict__ dq32, T* __restrict__ dk,
            T* __restrict__ dv, const int32_t* __restrict__ tile_info,
            const int32_t* __restrict__ tile_off, int64_t B, int H, int Hk, int64_t max_seq_len,
            float scale_log2, float scale, int causal, const T* __restrict__ bias, int64_t sb,
            int64_t sh, int64_t si, void* __restrict__ dbias) {
  using S = JfbSmem<T, D>;
  constexpr int SD = S::SD, SS = S::SS, NB = D / 8, KC = D / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sm = reinterpret_cast<T*>(smem_raw);
  T *sK = sm + S::K, *sV = sm + S::V, *sQ = sm + S::Q, *sO = sm + S::O, *sS = sm + S::S;
  float* sL = reinterpret_cast<float*>(sm + S::END);  // [2][BQ] lse2, then [2][BQ] delta
  float* sDl = sL + 2 * JFB_BQ;

  const BwdTile bt = locate_bwd_tile<JFB_BK, JFB_BQ>(tile_info, tile_off, B, H, Hk, max_seq_len,
                                                      causal);
  if (!bt.live) return;
  const int64_t kstart = bt.kstart, qstart = bt.qstart;
  const int Lk = bt.Lk, Lq = bt.Lq, hk = bt.hk, G = bt.G, j0 = bt.j0, shift = bt.shift;
  const int qlo = bt.qlo, nq = bt.nq, nsteps = nq * G;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  const int lm = lane >> 3, lr = lane & 7;
  const int64_t q_rs = (int64_t)H * D, k_rs = (int64_t)Hk * D;

  float dka[NB][4] = {}, dva[NB][4] = {};
  if (nsteps > 0) {
    load_tile<JFB_BK, 128, D, SD>(sK, k + (kstart + j0) * k_rs + (int64_t)hk * D, k_rs, Lk - j0,
                                   k, tid);
    load_tile<JFB_BK, 128, D, SD>(sV, v + (kstart + j0) * k_rs + (int64_t)hk * D, k_rs, Lk - j0,
                                   v, tid);
    auto load_q = [&](int s) {  // Q, dO, lse2, delta of step s into slot s & 1 (one group)
      const int i0 = qlo + (s % nq) * JFB_BQ, h = hk * G + s / nq, slot = s & 1;
      const int64_t base = (qstart + i0) * q_rs + (int64_t)h * D;
      load_tile<JFB_BQ, 128, D, SD>(sQ + slot * JFB_BQ * SD, q + base, q_rs, Lq - i0, q, tid);
      load_tile<JFB_BQ, 128, D, SD>(sO + slot * JFB_BQ * SD, dout + base, q_rs, Lq - i0, dout,
                                    tid);
      if (tid < 2 * JFB_BQ) {
        const int r = tid & (JFB_BQ - 1);
        const bool ok = i0 + r < Lq;
        const float* src = tid < JFB_BQ ? lse2 : delta;
        cp_async4(smem_addr((tid < JFB_BQ ? sL : sDl) + slot * JFB_BQ + r),
                  ok ? src + (qstart + i0 + r) * H + h : src, ok);
      }
      cp_async_commit();
    };
    load_q(0);
    for (int s = 0; s < nsteps; ++s) {
      const int slot = s & 1, i0 = qlo + (s % nq) * JFB_BQ, h = hk * G + s / nq;
      cp_async_wait<0>();
      __syncthreads();  // step s landed; every warp is done with step s - 1 (its slot, sS)
      if (s + 1 < nsteps) load_q(s + 1);
      const T* cQ = sQ + slot * JFB_BQ * SD;
      const T* cO = sO + slot * JFB_BQ * SD;

      // S^T = K_w Q^T, dP^T = V_w dO^T: 16 keys x 32 queries; [n][e] is (key 16 warp + g +
      // 8 (e >> 1), query 8 n + 2 tq + (e & 1))
      float st[4][4] = {}, dpt[4][4] = {};
#pragma unroll
      for (int kc = 0; kc < KC; ++kc) {
        uint32_t ka[4], va[4];
        const int ar = (warp * 16 + (lm & 1) * 8 + lr) * SD + kc * 16 + (lm >> 1) * 8;
        ldsm_x4(ka[0], ka[1], ka[2], ka[3], smem_addr(sK + ar));
        ldsm_x4(va[0], va[1], va[2], va[3], smem_addr(sV + ar));
#pragma unroll
        for (int nb = 0; nb < 2; ++nb) {  // B n-major: rows (queries) 16 nb + ..., k = d
          const int br = (nb * 16 + (lm >> 1) * 8 + lr) * SD + kc * 16 + (lm & 1) * 8;
          uint32_t b0, b1, b2, b3;
          ldsm_x4(b0, b1, b2, b3, smem_addr(cQ + br));
          mma_step<T>(st[2 * nb], ka, b0, b1);
          mma_step<T>(st[2 * nb + 1], ka, b2, b3);
          ldsm_x4(b0, b1, b2, b3, smem_addr(cO + br));
          mma_step<T>(dpt[2 * nb], va, b0, b1);
          mma_step<T>(dpt[2 * nb + 1], va, b2, b3);
        }
      }
      // P^T and dS^T (in st and dpt)
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qc = n * 8 + 2 * tq + (e & 1), qi = i0 + qc;
          const int kj = j0 + warp * 16 + g + 8 * (e >> 1);
          const int64_t bo = BIAS ? bt.row * sb + h * sh + (int64_t)qi * si + kj : 0;
          if (bwd_p_ds<BIAS, false>(kj < Lk && qi < Lq && (!causal || kj <= qi + shift),
                                    st[n][e] * scale_log2 - sL[slot * JFB_BQ + qc], dpt[n][e],
                                    sDl[slot * JFB_BQ + qc], bias, bo, st[n][e], dpt[n][e]))
            put_dbias<BIAS, T>(dbias, bo, dpt[n][e]);
        }
      // dV_w += P^T dO, dK_w += dS^T Q: A = P^T / dS^T (16 keys x 16 queries a chunk), B =
      // dO / Q k-major (k = query)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        uint32_t pa[4], sa[4];
        acc_to_a<T>(st[2 * c], st[2 * c + 1], pa);
        acc_to_a<T>(dpt[2 * c], dpt[2 * c + 1], sa);
#pragma unroll
        for (int nb = 0; nb < D / 16; ++nb) {
          const int br = (c * 16 + (lm & 1) * 8 + lr) * SD + nb * 16 + (lm >> 1) * 8;
          uint32_t b0, b1, b2, b3;
          ldsm_x4_t(b0, b1, b2, b3, smem_addr(cO + br));
          mma_step<T>(dva[2 * nb], pa, b0, b1);
          mma_step<T>(dva[2 * nb + 1], pa, b2, b3);
          ldsm_x4_t(b0, b1, b2, b3, smem_addr(cQ + br));
          mma_step<T>(dka[2 * nb], sa, b0, b1);
          mma_step<T>(dka[2 * nb + 1], sa, b2, b3);
        }
      }
      // dS^T to shared memory [key][query]
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh)
          *reinterpret_cast<uint32_t*>(sS + (warp * 16 + g + 8 * hh) * SS + n * 8 + 2 * tq) =
              pack2<T>(dpt[n][2 * hh], dpt[n][2 * hh + 1]);
      __syncthreads();  // every warp's dS^T stored
      // dQ (32 queries x D) += dS K: warp w takes query rows 16 (w & 1) .. + 15 and columns
      // (w >> 1) D / 2 .. + D / 2 - 1; A = dS (stored k-major: ldmatrix.trans), B = K k-major
      constexpr int NP = D / 32;  // 16-column pairs of n-tiles a warp
      const int mt = warp & 1, c0 = (warp >> 1) * (D / 2);
      float dqa[2 * NP][4] = {};
#pragma unroll
      for (int kc = 0; kc < JFB_BK / 16; ++kc) {
        uint32_t a[4];
        ldsm_x4_t(a[0], a[1], a[2], a[3],
                  smem_addr(sS + (kc * 16 + (lm >> 1) * 8 + lr) * SS + mt * 16 + (lm & 1) * 8));
#pragma unroll
        for (int p = 0; p < NP; ++p) {
          uint32_t b0, b1, b2, b3;
          ldsm_x4_t(b0, b1, b2, b3,
                    smem_addr(sK + (kc * 16 + (lm & 1) * 8 + lr) * SD + c0 + p * 16 +
                              (lm >> 1) * 8));
          mma_step<T>(dqa[2 * p], a, b0, b1);
          mma_step<T>(dqa[2 * p + 1], a, b2, b3);
        }
      }
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int qi = i0 + mt * 16 + g + 8 * hh;
        if (qi >= Lq) continue;
        float* dst = dq32 + (qstart + qi) * q_rs + (int64_t)h * D + c0 + 2 * tq;
#pragma unroll
        for (int n = 0; n < 2 * NP; ++n)
          red_add2(dst + n * 8, scale * dqa[n][2 * hh], scale * dqa[n][2 * hh + 1]);
      }
    }
  }
  // dK = scale dS^T Q, dV: the tile's keys below the row's (untruncated) length
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int r = warp * 16 + g + 8 * hh;
    if (j0 + r >= bt.Lk_full) continue;
    const int64_t off = (kstart + j0 + r) * k_rs + (int64_t)hk * D + 2 * tq;
#pragma unroll
    for (int n = 0; n < NB; ++n) {
      *reinterpret_cast<uint32_t*>(dk + off + n * 8) =
          pack2<T>(scale * dka[n][2 * hh], scale * dka[n][2 * hh + 1]);
      *reinterpret_cast<uint32_t*>(dv + off + n * 8) =
          pack2<T>(dva[n][2 * hh], dva[n][2 * hh + 1]);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// The same backward on FFMA in fp32 (no tensor cores): float32 inputs (exact, like the forward's
// jfa_fwd_f32) and head dim 256 (any T; values converted to fp32 in shared memory). Same launch
// contract and BIAS modes as jfa_bwd_mma. A block per (key tile of BK keys, key head), 128
// threads; per step a tile of BQ = 16 queries of one query head:
//   phase 1: thread t takes key t / TPK and queries t % TPK + TPK i: S^T, dP^T (dot products
//            over D from shared memory), P^T and dS^T to shared memory
//   phase 2: dK, dV of key t / TPK, 16-byte column chunks t % TPK + TPK j, in registers
//   phase 3: dQ of query t / 8, chunks t % 8 + 8 j, over the block's keys; fp32 atomics
template <int D> struct JfbF32 {
  static constexpr int BK = D > 128 ? 16 : 32, BQ = 16, NT = 128, TPK = NT / BK;
  static constexpr int SD = D + 4;   // row stride (floats): 16-byte rows, banks shifted a row
  static constexpr int PS = BQ + 1;  // row stride of P^T, dS^T [key][query]
  static constexpr int K = 0, V = BK * SD, Q = 2 * BK * SD, O = Q + BQ * SD, P = O + BQ * SD;
  static constexpr int S = P + BK * PS, L = S + BK * PS, DL = L + BQ, END = DL + BQ;
  static constexpr int BYTES = END * 4;
};

// rows x D of T (global row stride rs; rows >= nvalid zero) to fp32 smem rows of SD floats
template <int ROWS, int D, int SD, typename T>
__device__ __forceinline__ void load_rows_f32(float* dst, const T* src, int64_t rs, int nvalid,
                                              int tid) {
  constexpr int C4 = D / 4;  // 4-element chunks a row
  for (int c = tid; c < ROWS * C4; c += 128) {
    const int r = c / C4, cc = c % C4;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r < nvalid) {
      const T* p = src + r * rs + 4 * cc;
      if constexpr (sizeof(T) == 4) {
        x = __ldg(reinterpret_cast<const float4*>(p));
      } else {
        const uint2 w = __ldg(reinterpret_cast<const uint2*>(p));
        const T* e = reinterpret_cast<const T*>(&w);
        x = make_float4(to_float(e[0]), to_float(e[1]), to_float(e[2]), to_float(e[3]));
      }
    }
    *reinterpret_cast<float4*>(dst + r * SD + 4 * cc) = x;
  }
}

__device__ __forceinline__ float dot4(float4 a, float4 b, float acc) {
  return fmaf(a.x, b.x, fmaf(a.y, b.y, fmaf(a.z, b.z, fmaf(a.w, b.w, acc))));
}

// (with no blocks-per-SM bound ptxas aimed <float, 64, 0> at 128 registers on sm_80 and
// <float, 32, 0> at 80 on sm_90, and spilled. On sm_90, per head dim, the faster of a bound of 1
// and none (H100, float32, 1024 rows of 512 at fill 0.25: none takes D 64 from 1.72 to 1.69 ms
// with 109 registers, not 163; it makes D 96 1.5% and D 256 5% slower)
#if __CUDA_ARCH__ >= 900
#define JFB_F32_BOUNDS __launch_bounds__(128, D == 32 ? 3 : (D == 64 ? 0 : 1))
#else
#define JFB_F32_BOUNDS __launch_bounds__(128, 2)
#endif

template <typename T, int D, int BIAS>
__global__ void JFB_F32_BOUNDS
jfa_bwd_f32(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
            const T* __restrict__ dout, const float* __restrict__ lse2,
            const float* __restrict__ delta, float* __restrict__ dq32, T* __restrict__ dk,
            T* __restrict__ dv, const int32_t* __restrict__ tile_info,
            const int32_t* __restrict__ tile_off, int64_t B, int H, int Hk, int64_t max_seq_len,
            float scale_log2, float scale, int causal, const T* __restrict__ bias, int64_t sb,
            int64_t sh, int64_t si, void* __restrict__ dbias) {
  using S = JfbF32<D>;
  constexpr int BK = S::BK, BQ = S::BQ, TPK = S::TPK, SD = S::SD, PS = S::PS;
  constexpr int QPT = BQ / TPK, CPT = D / 4 / TPK, QCH = D / 4 / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* sm = reinterpret_cast<float*>(smem_raw);
  float *sK = sm + S::K, *sV = sm + S::V, *sQ = sm + S::Q, *sO = sm + S::O;
  float *sP = sm + S::P, *sS = sm + S::S, *sL = sm + S::L, *sDl = sm + S::DL;

  const BwdTile bt = locate_bwd_tile<BK, BQ>(tile_info, tile_off, B, H, Hk, max_seq_len, causal);
  if (!bt.live) return;
  const int tid = threadIdx.x, kk = tid / TPK, sub = tid % TPK;
  const int64_t q_rs = (int64_t)H * D, k_rs = (int64_t)Hk * D;
  const int nsteps = bt.nq * bt.G;

  float4 dka[CPT], dva[CPT];
#pragma unroll
  for (int c = 0; c < CPT; ++c) dka[c] = dva[c] = make_float4(0.f, 0.f, 0.f, 0.f);
  if (nsteps > 0) {
    const int64_t koff = (bt.kstart + bt.j0) * k_rs + (int64_t)bt.hk * D;
    load_rows_f32<BK, D, SD>(sK, k + koff, k_rs, bt.Lk - bt.j0, tid);
    load_rows_f32<BK, D, SD>(sV, v + koff, k_rs, bt.Lk - bt.j0, tid);
  }
  for (int s = 0; s < nsteps; ++s) {
    const int i0 = bt.qlo + (s % bt.nq) * BQ, h = bt.hk * bt.G + s / bt.nq;
    __syncthreads();  // step s - 1 is done with sQ, sO, sP, sS
    const int64_t qoff = (bt.qstart + i0) * q_rs + (int64_t)h * D;
    load_rows_f32<BQ, D, SD>(sQ, q + qoff, q_rs, bt.Lq - i0, tid);
    load_rows_f32<BQ, D, SD>(sO, dout + qoff, q_rs, bt.Lq - i0, tid);
    if (tid < 2 * BQ) {
      const int r = tid % BQ;
      const float* src = tid < BQ ? lse2 : delta;
      (tid < BQ ? sL : sDl)[r] = i0 + r < bt.Lq ? src[(bt.qstart + i0 + r) * H + h] : 0.f;
    }
    __syncthreads();

    // phase 1: S^T, dP^T of key kk and queries sub + TPK i
    float st[QPT], dpt[QPT];
#pragma unroll
    for (int i = 0; i < QPT; ++i) st[i] = dpt[i] = 0.f;
    const float* kr = sK + kk * SD;
    const float* vr = sV + kk * SD;
#pragma unroll 4
    for (int c = 0; c < D / 4; ++c) {
      const float4 a = *reinterpret_cast<const float4*>(kr + 4 * c);
      const float4 b = *reinterpret_cast<const float4*>(vr + 4 * c);
#pragma unroll
      for (int i = 0; i < QPT; ++i) {
        const int qr = sub + TPK * i;
        st[i] = dot4(a, *reinterpret_cast<const float4*>(sQ + qr * SD + 4 * c), st[i]);
        dpt[i] = dot4(b, *reinterpret_cast<const float4*>(sO + qr * SD + 4 * c), dpt[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < QPT; ++i) {
      const int qr = sub + TPK * i, qi = i0 + qr, kj = bt.j0 + kk;
      const bool vis = kj < bt.Lk && qi < bt.Lq && (!causal || kj <= qi + bt.shift);
      const float x = st[i] * scale_log2 - sL[qr];
      const int64_t bo = BIAS ? bt.row * sb + h * sh + (int64_t)qi * si + kj : 0;
      float p, ds;
      const bool ok = bwd_p_ds<BIAS, true>(vis, x, dpt[i], sDl[qr], bias, bo, p, ds);
      sP[kk * PS + qr] = p;
      sS[kk * PS + qr] = ds;
      if (ok) put_dbias<BIAS, T>(dbias, bo, ds);
    }
    __syncthreads();

    // phase 2: dV += P^T dO, dK += dS^T Q for key kk, chunks sub + TPK c
#pragma unroll 2
    for (int qr = 0; qr < BQ; ++qr) {
      const float p = sP[kk * PS + qr], ds = sS[kk * PS + qr];
#pragma unroll
      for (int c = 0; c < CPT; ++c) {
        const float4 o4 = *reinterpret_cast<const float4*>(sO + qr * SD + 4 * (sub + TPK * c));
        const float4 q4 = *reinterpret_cast<const float4*>(sQ + qr * SD + 4 * (sub + TPK * c));
        dva[c].x = fmaf(p, o4.x, dva[c].x); dva[c].y = fmaf(p, o4.y, dva[c].y);
        dva[c].z = fmaf(p, o4.z, dva[c].z); dva[c].w = fmaf(p, o4.w, dva[c].w);
        dka[c].x = fmaf(ds, q4.x, dka[c].x); dka[c].y = fmaf(ds, q4.y, dka[c].y);
        dka[c].z = fmaf(ds, q4.z, dka[c].z); dka[c].w = fmaf(ds, q4.w, dka[c].w);
      }
    }

    // phase 3: dQ of query tid / 8 (chunks tid % 8 + 8 c) += dS K over the block's keys
    const int qr = tid / 8, qi = i0 + qr;
    float4 acc[QCH];
#pragma unroll
    for (int c = 0; c < QCH; ++c) acc[c] = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
    for (int j = 0; j < BK; ++j) {
      const float ds = sS[j * PS + qr];
#pragma unroll
      for (int c = 0; c < QCH; ++c) {
        const float4 k4 = *reinterpret_cast<const float4*>(sK + j * SD + 4 * (tid % 8 + 8 * c));
        acc[c].x = fmaf(ds, k4.x, acc[c].x); acc[c].y = fmaf(ds, k4.y, acc[c].y);
        acc[c].z = fmaf(ds, k4.z, acc[c].z); acc[c].w = fmaf(ds, k4.w, acc[c].w);
      }
    }
    if (qi < bt.Lq) {
      float* dst = dq32 + (bt.qstart + qi) * q_rs + (int64_t)h * D + 4 * (tid % 8);
#pragma unroll
      for (int c = 0; c < QCH; ++c) {
        red_add2(dst + 32 * c, scale * acc[c].x, scale * acc[c].y);
        red_add2(dst + 32 * c + 2, scale * acc[c].z, scale * acc[c].w);
      }
    }
  }
  // dK = scale dS^T Q, dV: the tile's keys below the row's (untruncated) length
  if (bt.j0 + kk < bt.Lk_full) {
    const int64_t off = (bt.kstart + bt.j0 + kk) * k_rs + (int64_t)bt.hk * D;
#pragma unroll
    for (int c = 0; c < CPT; ++c) {
      const int col = 4 * (sub + TPK * c);
      const float a[4] = {dka[c].x, dka[c].y, dka[c].z, dka[c].w};
      const float b[4] = {dva[c].x, dva[c].y, dva[c].z, dva[c].w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        dk[off + col + e] = from_float<T>(scale * a[e]);
        dv[off + col + e] = from_float<T>(b[e]);
      }
    }
  }
}
