// Jagged Flash Attention, backward, for Hopper (sm_90a): attention_bwd.cu's algorithm and launch
// contract (read it first, the bias modes BIAS too) on asynchronous warpgroup MMA (wgmma),
// D = 64 and 128.
//
// A block is NWG warpgroups of 64 keys each, of one key head (the key-major tile list, BwdTile;
// NWG = 2 for long rows at D = 128: dQ summed over 128 keys, half the atomics). K and V sit in
// shared memory for the whole block, dK and dV in registers (m64nD accumulators: a warpgroup's
// 64 rows are its keys). Per step, a tile of 32 queries of one query head:
//   S^T  = K Q^T      wgmma m64n32k16, A = K, B = Q (shared, both K-major)
//   dP^T = V dO^T     the same with V, dO
//   P^T = exp2((S^T scale + bias^T) log2 e - lse log2 e), dS^T = P^T (dP^T - delta) on the
//                     accumulators (and dS to dbias)
//   dV  += P^T dO     wgmma m64nDk16, A = P^T (registers: the accumulator layout packed to 16
//   dK  += dS^T Q                      bits is the A-fragment layout), B = dO / Q (MN-major)
//   dS^T to shared memory as dS, [query][key] (stmatrix.trans)
//   dQ^T = K^T dS^T   wgmma m64n32k16 per 64 head-dim rows (split over the warpgroups), over
//                     the block's keys, A = K (shared, MN-major: transposed), B = dS (K-major);
//                     added to the fp32 dQ buffer by atomics
// Q, dO, lse, delta of the next step load (cp.async, double-buffered) during the current one.
// Shared tiles in wgmma.cuh's 128-byte-swizzled panel layout.
#include "common.cuh"
#include "mma.cuh"
#include "jfa_tiles.cuh"
#include "wgmma.cuh"

#ifndef JFB90_BQ
#define JFB90_BQ 32  // queries a step (the host's _BWD90_BQ)
#endif

// 1: no dQ atomics (timing only: dq stays 0; the dQ^T products still run)
#ifndef JFB90_NO_DQ
#define JFB90_NO_DQ 0
#endif

// Dynamic shared memory (bytes, from a 1024-byte boundary): K, V (BK = 64 NWG keys), 2 x (Q, dO),
// dS (BK / 64 panels of BQ rows), 2 x (lse2, delta)
template <int D, int NWG> struct Jfb90Smem {
  static constexpr uint32_t KV = 64 * NWG * D * 2, QT = JFB90_BQ * D * 2;
  static constexpr uint32_t K = 0, V = KV, Q = 2 * KV, O = Q + 2 * QT, S = O + 2 * QT;
  static constexpr uint32_t L = S + NWG * JFB90_BQ * 128, DL = L + 2 * JFB90_BQ * 4;
  static constexpr uint32_t BYTES = DL + 2 * JFB90_BQ * 4;
};

// NWG warpgroups, 64 keys each (BK = 64 NWG keys a block): the block shares the Q / dO tiles and,
// for NWG = 2, sums dQ over 128 keys before its atomics (warpgroup w computes head-dim columns
// D / 2 w .. of dQ^T): half the atomics of NWG = 1, one block an SM
template <typename T, int D, int NWG, int BIAS>
__global__ void __launch_bounds__(128 * NWG, NWG == 2 ? 1 : (D == 64 ? 3 : 2))
jfa_bwd_sm90(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
             const T* __restrict__ dout, const float* __restrict__ lse2,
             const float* __restrict__ delta, float* __restrict__ dq32, T* __restrict__ dk,
             T* __restrict__ dv, const int32_t* __restrict__ tile_info,
             const int32_t* __restrict__ tile_off, int64_t B, int H, int Hk,
             int64_t max_seq_len, float scale_log2, float scale, int causal,
             const T* __restrict__ bias, int64_t sb, int64_t sh, int64_t si,
             void* __restrict__ dbias) {
  using S = Jfb90Smem<D, NWG>;
  constexpr int BQ = JFB90_BQ, BK = 64 * NWG, NT = 128 * NWG, KC = D / 16, MB = D / 64 / NWG;
  static_assert(MB >= 1, "each warpgroup takes whole 64-column blocks of dQ^T");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = smem_addr(smem_raw), base = (raw + 1023u) & ~1023u;
  const uint32_t sK = base + S::K, sV = base + S::V, sQ = base + S::Q, sO = base + S::O;
  const uint32_t sS = base + S::S;
  const float* sL = reinterpret_cast<const float*>(smem_raw + (base - raw) + S::L);
  const float* sDl = reinterpret_cast<const float*>(smem_raw + (base - raw) + S::DL);

  const BwdTile bt = locate_bwd_tile<BK, BQ>(tile_info, tile_off, B, H, Hk, max_seq_len, causal);
  if (!bt.live) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  const int wg = NWG == 1 ? 0 : warp >> 2, wq = warp & 3;  // warpgroup, warp inside it
  const int64_t q_rs = (int64_t)H * D, k_rs = (int64_t)Hk * D;
  const int nsteps = bt.nq * bt.G;
  const int kr = bt.j0 + 64 * wg + 16 * wq + g;  // key of accumulator rows g (kr + 8: g + 8)

  float dka[D / 2], dva[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dka[i] = dva[i] = 0.f;
  if (nsteps > 0) {
    const int64_t koff = (bt.kstart + bt.j0) * k_rs + (int64_t)bt.hk * D;
    load_sw<BK, NT, D>(sK, k + koff, k_rs, bt.Lk - bt.j0, k, tid);
    load_sw<BK, NT, D>(sV, v + koff, k_rs, bt.Lk - bt.j0, v, tid);
    // Q, dO, lse2, delta of query tile i0 of head h into slot (one cp.async group)
    auto load_q = [&](const int i0, const int h, const int slot) {
      const int64_t off = (bt.qstart + i0) * q_rs + (int64_t)h * D;
      load_sw<BQ, NT, D>(sQ + slot * S::QT, q + off, q_rs, bt.Lq - i0, q, tid);
      load_sw<BQ, NT, D>(sO + slot * S::QT, dout + off, q_rs, bt.Lq - i0, dout, tid);
      if (tid < 2 * BQ) {
        const int r = tid & (BQ - 1);
        const bool ok = i0 + r < bt.Lq;
        const float* src = tid < BQ ? lse2 : delta;
        cp_async4(base + (tid < BQ ? S::L : S::DL) + (slot * BQ + r) * 4,
                  ok ? src + (bt.qstart + i0 + r) * H + h : src, ok);
      }
      cp_async_commit();
    };
    load_q(bt.qlo, bt.hk * bt.G, 0);
    // descriptors (wgmma.cuh): K-major K, V (A: this warpgroup's 64 rows) and Q, dO slots (B);
    // MN-major Q, dO slots (B of dK, dV: k = the step's queries) and K (A of dQ^T: m = 64
    // head-dim columns, k = keys); dS K-major (B of dQ^T: n = queries, k = keys)
    const uint64_t dKk = sw128_desc(sK + wg * 64 * 128, 16, 1024);
    const uint64_t dVk = sw128_desc(sV + wg * 64 * 128, 16, 1024);
    const uint64_t dQk = sw128_desc(sQ, 16, 1024), dOk = sw128_desc(sO, 16, 1024);
    const uint64_t dQm = sw128_desc(sQ, BQ * 128, 1024), dOm = sw128_desc(sO, BQ * 128, 1024);
    const uint64_t dKm = sw128_desc(sK, BK * 128, 1024), dSk = sw128_desc(sS, 16, 1024);
    // dQ^T: [mb][4 nb + e] is (head-dim column 64 (MB wg + mb) + 16 wq + g + 8 (e >> 1), query
    // i0 + 8 nb + 2 tq + (e & 1))
    float dqt[MB][BQ / 2];
    const int qhi = bt.qlo + bt.nq * BQ;
    const int kw = bt.j0 + 64 * wg + 16 * wq;  // this warp's first key
    int i0 = bt.qlo - BQ, h = bt.hk * bt.G;     // step s: query tile i0 of head h
    for (int s = 0; s < nsteps; ++s) {
      const int slot = s & 1;
      i0 += BQ;
      if (i0 == qhi) {
        i0 = bt.qlo;
        ++h;
      }
      cp_async_wait<0>();   // step s landed for this thread ...
      fence_proxy_async();  // ... visible to wgmma ...
      __syncthreads();      // ... for every thread; step s - 1's wgmma all done (slot, sS free)
      if (s + 1 < nsteps) {
        const bool wrap = i0 + BQ == qhi;
        load_q(wrap ? bt.qlo : i0 + BQ, h + wrap, slot ^ 1);
      }

      // S^T, dP^T: [4 nb + e] is (key kr + 8 (e >> 1), query i0 + 8 nb + 2 tq + (e & 1))
      float st[BQ / 2], dpt[BQ / 2];
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < KC; ++kk) {
        const uint32_t a = (kk >> 2) * (BK * 128) + (kk & 3) * 32;
        const uint32_t b = slot * S::QT + (kk >> 2) * (BQ * 128) + (kk & 3) * 32;
        wgmma_ss<T, BQ>(st, dKk + (a >> 4), dQk + (b >> 4), kk > 0);
      }
#pragma unroll
      for (int kk = 0; kk < KC; ++kk) {
        const uint32_t a = (kk >> 2) * (BK * 128) + (kk & 3) * 32;
        const uint32_t b = slot * S::QT + (kk >> 2) * (BQ * 128) + (kk & 3) * 32;
        wgmma_ss<T, BQ>(dpt, dVk + (a >> 4), dOk + (b >> 4), kk > 0);
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs<BQ / 2>(st);
      fence_regs<BQ / 2>(dpt);

      // P^T and dS^T (masked: exactly 0, whatever dP holds there); no masks where this warp's
      // 16 keys and the step's queries are all real and (causal) every key is seen
      auto p_ds = [&](auto mask_t) {
        constexpr bool MASK = decltype(mask_t)::value;
        // bias and dbias of (query i0 + 2 tq, key kr); (query + c, key + 8 r) at c si + 8 r
        const int64_t bbase = BIAS ? bt.row * sb + h * sh + (int64_t)(i0 + 2 * tq) * si + kr : 0;
#pragma unroll
        for (int nb = 0; nb < BQ / 8; ++nb) {
          const float2 l2 = *reinterpret_cast<const float2*>(sL + slot * BQ + 8 * nb + 2 * tq);
          const float2 dl = *reinterpret_cast<const float2*>(sDl + slot * BQ + 8 * nb + 2 * tq);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int qi = i0 + 8 * nb + 2 * tq + (e & 1), kj = kr + 8 * (e >> 1);
            const int64_t bo = bbase + (8 * nb + (e & 1)) * si + 8 * (e >> 1);
            const bool ok = bwd_p_ds<BIAS, false>(
                !MASK || ((kj < bt.Lk) & (qi < bt.Lq) & (!causal | (kj <= qi + bt.shift))),
                st[4 * nb + e] * scale_log2 - ((e & 1) ? l2.y : l2.x), dpt[4 * nb + e],
                (e & 1) ? dl.y : dl.x, bias, bo, st[4 * nb + e], dpt[4 * nb + e]);
            // (BIAS 3, float32 stores, is not instantiated: they spill here, so the host sends
            // it as BIAS 1, atomics on the zeroed buffer; BIAS 2: stored from sS below)
            if (BIAS == 1 && ok) put_dbias<BIAS, T>(dbias, bo, dpt[4 * nb + e]);
          }
        }
      };
      if (BIAS || kw + 16 > bt.Lk || i0 + BQ > bt.Lq || (causal && kw + 15 > i0 + bt.shift))
        p_ds(BoolC<true>());
      else
        p_ds(BoolC<false>());
      uint32_t pa[BQ / 16][4], da[BQ / 16][4];  // 16 queries a chunk
#pragma unroll
      for (int kc = 0; kc < BQ / 16; ++kc)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          pa[kc][r] = pack2<T>(st[8 * kc + 2 * r], st[8 * kc + 2 * r + 1]);
          da[kc][r] = pack2<T>(dpt[8 * kc + 2 * r], dpt[8 * kc + 2 * r + 1]);
        }
      // dS^T's 8 x 8 blocks to dS [query][key] (panel wg: this warpgroup's 64 keys), transposed:
      // da[kc][j] is the block of queries 8 (2 kc + (j >> 1)) .., keys kr - g + 8 (j & 1) ..;
      // lane 8 j + i names its row i
#pragma unroll
      for (int kc = 0; kc < BQ / 16; ++kc) {
        const int j = lane >> 3, qr = 8 * (2 * kc + (j >> 1)) + (lane & 7);
        const int chunk = 2 * wq + (j & 1);
        stsm_x4_t(sS + wg * (BQ * 128) + qr * 128 + ((chunk ^ (qr & 7)) << 4), da[kc][0],
                  da[kc][1], da[kc][2], da[kc][3]);
      }
      // dV += P^T dO, dK += dS^T Q
      wgmma_fence();
#pragma unroll
      for (int kc = 0; kc < BQ / 16; ++kc)
        wgmma_rs<T, D>(dva, pa[kc], dOm + ((slot * S::QT + kc * 2048) >> 4));
#pragma unroll
      for (int kc = 0; kc < BQ / 16; ++kc)
        wgmma_rs<T, D>(dka, da[kc], dQm + ((slot * S::QT + kc * 2048) >> 4));
      wgmma_commit();
      fence_proxy_async();
      __syncthreads();  // dS stored by every warp, visible to wgmma
      // dQ^T = K^T dS^T over the block's keys, this warpgroup's head-dim columns
      wgmma_fence();
#pragma unroll
      for (int mb = 0; mb < MB; ++mb)
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk)
          wgmma_ss_ta<T, BQ>(dqt[mb],
                             dKm + (((MB * wg + mb) * (BK * 128) + kk * 2048) >> 4),
                             dSk + (((kk >> 2) * (BQ * 128) + (kk & 3) * 32) >> 4), kk > 0);
      wgmma_commit();
      if constexpr (BIAS == 2) {  // dS (rounded, 0 where masked) to dbias, a row of keys a warp
        T* drow = static_cast<T*>(dbias) + bt.row * sb + h * sh + (int64_t)i0 * si + bt.j0;
#pragma unroll 4
        for (int it = 0; it < BQ * BK / NT; ++it) {
          const int e = tid + it * NT, r = e / BK, j = e % BK, jj = j & 63;
          if (i0 + r < bt.Lq && bt.j0 + j < bt.Lk) {
            uint16_t x;
            asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(x)
                         : "r"(sS + (j >> 6) * (BQ * 128) + r * 128 +
                               ((((jj >> 3) ^ (r & 7)) << 4) | ((jj & 7) << 1))));
            reinterpret_cast<uint16_t*>(drow)[r * si + j] = x;
          }
        }
      }
      wgmma_wait<0>();
#pragma unroll
      for (int mb = 0; mb < MB; ++mb) fence_regs<BQ / 2>(dqt[mb]);
#if JFB90_NO_DQ
      if (scale_log2 == 12345.f)  // never: keeps the products without their atomics
#endif
      {
        // one row pointer per query, the head-dim offsets as immediates; queries past Lq add
        // +0 to the row's last query instead of branching (x + 0 == x)
        float* dst = dq32 + (bt.qstart + i0) * q_rs + (int64_t)h * D + 64 * MB * wg + 16 * wq + g;
        const int qlast = bt.Lq - 1 - i0;
#pragma unroll
        for (int nb = 0; nb < BQ / 8; ++nb)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int qc = 8 * nb + 2 * tq + c;
            const bool okq = qc <= qlast;
            float* row = dst + (okq ? qc : qlast) * q_rs;
#pragma unroll
            for (int mb = 0; mb < MB; ++mb)
#pragma unroll
              for (int hh = 0; hh < 2; ++hh)
                atomicAdd(row + 64 * mb + 8 * hh,
                          okq ? scale * dqt[mb][4 * nb + 2 * hh + c] : 0.f);
          }
      }
    }
  }
  fence_regs<D / 2>(dka);
  fence_regs<D / 2>(dva);
  // dK = scale dS^T Q, dV: the tile's keys below the row's (untruncated) length
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    if (kr + 8 * hh >= bt.Lk_full) continue;
    const int64_t off = (bt.kstart + kr + 8 * hh) * k_rs + (int64_t)bt.hk * D + 2 * tq;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      *reinterpret_cast<uint32_t*>(dk + off + 8 * i) =
          pack2<T>(scale * dka[4 * i + 2 * hh], scale * dka[4 * i + 2 * hh + 1]);
      *reinterpret_cast<uint32_t*>(dv + off + 8 * i) =
          pack2<T>(dva[4 * i + 2 * hh], dva[4 * i + 2 * hh + 1]);
    }
  }
}
