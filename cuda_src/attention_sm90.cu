// Jagged Flash Attention, forward, for Hopper (sm_90a): asynchronous warpgroup MMA (wgmma).
//
// Same launch contract as jfa_fwd_mma in attention.cu (arguments, device-built tile list, semantics:
// offsets, cross-attention, causal aligned bottom-right, max_seq_len truncation, GQA, LSE, zero
// rows); no bias (the bias arguments are accepted and ignored: the caller dispatches bias to the
// mma.sync kernel) and scale > 0 (the softmax folds the scale into its exps).
//
// One block = NWG consumer warpgroups of 64 query rows each (wgmma M = 64), BM = 64 * NWG rows,
// BN keys per step, a ring of ST K tiles and ST + 1 V tiles loaded with cp.async (tile j + ST - 1
// in flight during step j). Per key step and warpgroup:
//   S = Q K^T   wgmma m64nBNk16, A = Q (registers, loaded once per tile by ldmatrix, for D = 128;
//               shared, K-major, for D = 64: see JFA90_QREG), B = K tile (shared, K-major)
//   online softmax on the fp32 accumulator fragments (exp2, scale * log2 e folded)
//   O += P V    wgmma m64nDk16, A = P (registers: the accumulator layout of S packed to 16 bits
//               is the A-fragment layout), B = V tile (shared, MN-major: transposed)
// Shared tiles in wgmma.cuh's 128-byte-swizzled panel layout (K, Q K-major; V MN-major).
#include "common.cuh"
#include "mma.cuh"
#include "jfa_tiles.cuh"
#include "wgmma.cuh"

#define JFA_LOG2E 1.4426950408889634f
#define JFA_LN2 0.6931471805599453f

// Blocks per SM to plan registers for: four 1-warpgroup blocks (<= 128 registers) for D = 64 and
// for D = 128 with 32 keys per step in 2 stages (56 KiB of shared memory: four fit in 228 KiB
// only when the dynamic shared memory starts 1024-byte aligned, see jfa_sm90_smem_offset).
#ifndef JFA90_MINB
#define JFA90_MINB(D, NWG, BN, ST) \
  ((NWG) == 1 && (((D) == 64 && (BN) <= 64) || ((D) == 128 && (BN) == 32 && (ST) == 2)) ? 4 : 1)
#endif

// Q as the register A operand of S = Q K^T: read from shared memory once per tile instead of by
// every key step's wgmma (D / 2 more registers a thread: D = 128 stays at 3 blocks/SM with 166;
// D = 64 would spill at its 128-register cap). H200: 1-2.5% faster (bench/NOTES.md).
#ifndef JFA90_QREG
#define JFA90_QREG(D) ((D) == 128)
#endif

// The offset of the dynamic shared memory from a 1024-byte boundary (a kernel without static
// shared memory): 0 lets the host skip the 1 KiB of alignment slack.
__global__ void jfa_sm90_smem_offset(unsigned int* out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  if (threadIdx.x == 0) *out = smem_addr(smem_raw) & 1023u;
}

template <typename T, int D, int NWG, int BN, int ST>
__global__ void __launch_bounds__(NWG * 128, JFA90_MINB(D, NWG, BN, ST))
jfa_fwd_sm90(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
             T* __restrict__ o, float* __restrict__ lse, const int32_t* __restrict__ tile_info,
             const int32_t* __restrict__ tile_off, int64_t B, int H, int Hk, int64_t max_seq_len,
             float scale_log2, int causal, const T* __restrict__ bias, int64_t bias_sb,
             int64_t bias_sh, int64_t bias_si, int write_lse) {
  constexpr int BM = 64 * NWG, NT = 128 * NWG;
  constexpr int NB = BN / 8, DB = D / 8, KC = D / 16, CPR = D / 8;
  constexpr uint32_t Q_BYTES = BM * D * 2, KV_BYTES = BN * D * 2;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t sbase = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const uint32_t sQ = sbase;               // BM x D, panels of BM x 128 B
  const uint32_t sK = sQ + Q_BYTES;         // ST slots of BN x D
  const uint32_t sV = sK + ST * KV_BYTES;   // ST + 1 slots of BN x D

  const TileInfo ti = locate_tile<BM>(tile_info, tile_off, B, H, Hk, max_seq_len);
  if (!ti.live) return;
  const int h = ti.h, hk = ti.hk, Lq = ti.Lq, Lk = ti.Lk;
  const int i0 = (int)ti.i0;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wg = warp >> 2, wq = warp & 3;  // warpgroup, warp inside it
  const int g = lane >> 2, tq = lane & 3;
  const int shift = Lk - Lq;
  int kmax = i0 < Lq ? Lk : 0;
  if (causal) kmax = min(kmax, min(i0 + BM, Lq) + shift);
  const int n_kv = kmax > 0 ? (kmax + BN - 1) / BN : 0;
  const int i0w = i0 + 64 * wg;  // first row of this warpgroup
  int kmax_w = i0w < Lq ? Lk : 0;
  if (causal) kmax_w = min(kmax_w, min(i0w + 64, Lq) + shift);
  const int n_kv_w = kmax_w > 0 ? (kmax_w + BN - 1) / BN : 0;

  const int64_t q_rs = (int64_t)H * D, k_rs = (int64_t)Hk * D;
  const T* kbase = k + ti.k_start * k_rs + (int64_t)hk * D;
  const T* vbase = v + ti.k_start * k_rs + (int64_t)hk * D;

  float oacc[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) oacc[i] = 0.f;
  float m0 = -CJ_INF, m1 = -CJ_INF, l0 = 0.f, l1 = 0.f;

  if (n_kv > 0) {
    load_sw<BM, NT, D>(sQ, q + (ti.q_start + i0) * q_rs + (int64_t)h * D, q_rs, Lq - i0, q, tid);
    // key tile t (keys and values) is one cp.async group (Q joins tile 0's), in K slot t % ST and
    // V slot t % (ST + 1); tiles 0 .. ST - 2 now, tile j + ST - 1 at the top of step j
    auto load_kv = [&](const int t) {
      if (t < n_kv) {
        const int n1 = t * BN;
        load_sw<BN, NT, D>(sK + (t % ST) * KV_BYTES, kbase + (int64_t)n1 * k_rs, k_rs, Lk - n1,
                           k, tid);
        load_sw<BN, NT, D>(sV + (t % (ST + 1)) * KV_BYTES, vbase + (int64_t)n1 * k_rs, k_rs,
                           Lk - n1, v, tid);
      }
      cp_async_commit();  // always: group t is tile t, empty past the end
    };
#pragma unroll
    for (int t = 0; t < ST - 1; ++t) load_kv(t);
    // descriptors: Q rows of this warpgroup; K tiles K-major; V tiles MN-major (LBO = panel)
    const uint64_t dQ = sw128_desc(sQ + wg * 64 * 128, 16, 1024);
    const uint64_t dK = sw128_desc(sK, 16, 1024);
    const uint64_t dV = sw128_desc(sV, BN * 128, 1024);
    // Pipeline (FlashAttention-3's intra-warpgroup overlap): step j issues S_j = Q K_j^T and
    // then O += P_{j-1} V_{j-1}, waits for S_j only and runs the softmax of S_j while the tensor
    // cores work on P_{j-1} V_{j-1}. While step j loads tile j + ST - 1 (into the slots of
    // K_{j-1} and V_{j-2}), it reads K_j, V_{j-1} (and V_j at the last step).
    uint32_t pa[BN / 16][4];  // P_{j-1} (16-bit) as the A fragments of m64nDk16
    constexpr bool QREG = JFA90_QREG(D);
    uint32_t qa[QREG ? KC : 1][4];  // Q as A fragments (QREG)
    float al0 = 1.f, al1 = 1.f;
    // one key step; the first one (no P V yet) is a separate instantiation, so that no wgmma
    // sits behind a branch (ptxas serialises wgmma issued on paths it cannot prove uniform)
    auto step = [&](const int j, auto first_t) {
      constexpr bool FIRST = decltype(first_t)::value;
      cp_async_wait<ST - 2>();  // tile j (and Q) landed for this thread ...
      fence_proxy_async();      // ... visible to the async proxy (wgmma) ...
      __syncthreads();          // ... for every thread; the slots tile j + ST - 1 takes are free
      load_kv(j + ST - 1);
      if (j >= n_kv_w) return;  // (causal) this warpgroup's rows see no key of tile j
      const int n0 = j * BN;
      if constexpr (FIRST && QREG) {  // Q landed with tile 0: its fragments, once
        const int r = 64 * wg + 16 * wq + (lane & 15);
#pragma unroll
        for (int kk = 0; kk < KC; ++kk) {
          const int c = 2 * kk + (lane >> 4);
          ldsm_x4(qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3],
                  sQ + (c >> 3) * (BM * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4));
        }
      }

      // S_j = Q K_j^T, then O += P_{j-1} V_{j-1}
      float s[BN / 2];
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < KC; ++kk) {
        const uint64_t da = dQ + (((kk >> 2) * BM * 128 + (kk & 3) * 32) >> 4);
        const uint64_t db =
            dK + (((j % ST) * KV_BYTES + (kk >> 2) * BN * 128 + (kk & 3) * 32) >> 4);
        if constexpr (QREG)
          wgmma_rs_k<T, BN>(s, qa[kk], db, kk > 0);
        else
          wgmma_ss<T, BN>(s, da, db, kk > 0);
      }
      wgmma_commit();
      if constexpr (!FIRST) {
#pragma unroll
        for (int kc = 0; kc < BN / 16; ++kc)
          wgmma_rs<T, D>(oacc, pa[kc],
                         dV + ((((j - 1) % (ST + 1)) * KV_BYTES + kc * 2048) >> 4));
        wgmma_commit();
        wgmma_wait<1>();  // S_j done; P_{j-1} V_{j-1} may still run
      } else {
        wgmma_wait<0>();
      }
      fence_regs<BN / 2>(s);

      // online softmax: rows r0 = 16 wq + g and r0 + 8 of this warpgroup; s[4 nb + e] is
      // (row + 8 (e >> 1), key nb * 8 + 2 tq + (e & 1))
      const int row_g = i0w + 16 * wq + g;
      const bool edge = n0 + BN > Lk || (causal && n0 + BN - 1 > i0w + shift);
      if (edge) {
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int jj = n0 + nb * 8 + 2 * tq + (e & 1);
            const int ii = row_g + (e >> 1) * 8;
            const bool ok = jj < Lk && (!causal || jj <= ii + shift);
            s[4 * nb + e] = ok ? s[4 * nb + e] : -CJ_INF;
          }
      }
      float mx0 = -CJ_INF, mx1 = -CJ_INF;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
        mx0 = fmaxf(mx0, fmaxf(s[4 * nb], s[4 * nb + 1]));
        mx1 = fmaxf(mx1, fmaxf(s[4 * nb + 2], s[4 * nb + 3]));
      }
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
      // scores stay unscaled until the exp, which takes scale * log2 e by one FFMA; the row max
      // is scaled once (exact: rounding is monotone; needs scale_log2 > 0, a normal float, which
      // the host's dispatch guarantees)
      mx0 *= scale_log2;
      mx1 *= scale_log2;
      // lazy rescaling (as attention.cu): the running max moves only when it grows by > 8 (log2)
      const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
      const bool up0 = mn0 > m0 + 8.f, up1 = mn1 > m1 + 8.f;
      const float mnew0 = up0 ? mn0 : m0, mnew1 = up1 ? mn1 : m1;
      const float mu0 = mnew0 == -CJ_INF ? 0.f : mnew0, mu1 = mnew1 == -CJ_INF ? 0.f : mnew1;
      al0 = up0 ? fast_exp2(m0 - mu0) : 1.f;
      al1 = up1 ? fast_exp2(m1 - mu1) : 1.f;
      m0 = mnew0;
      m1 = mnew1;
      float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
        s[4 * nb] = fast_exp2(fmaf(s[4 * nb], scale_log2, -mu0));
        s[4 * nb + 1] = fast_exp2(fmaf(s[4 * nb + 1], scale_log2, -mu0));
        s[4 * nb + 2] = fast_exp2(fmaf(s[4 * nb + 2], scale_log2, -mu1));
        s[4 * nb + 3] = fast_exp2(fmaf(s[4 * nb + 3], scale_log2, -mu1));
        rs0 += s[4 * nb] + s[4 * nb + 1];
        rs1 += s[4 * nb + 2] + s[4 * nb + 3];
      }
      l0 = l0 * al0 + rs0;
      l1 = l1 * al1 + rs1;
      const bool resc = __any_sync(0xffffffffu, up0 || up1);
      if constexpr (!FIRST) {
        // (ptxas hoists this wait to the top of its basic block, above the softmax, so in SASS
        // the softmax does not overlap P_{j-1} V_{j-1}; keeping it below needs it in both arms
        // of a warpgroup-uniform branch, which measured within 1%: bench/NOTES.md, s14)
        fence_regs<BN / 2>(s);  // the softmax stays before the wait ...
        wgmma_wait<0>();        // P_{j-1} V_{j-1} done: O and pa are free
        fence_regs<D / 2>(oacc);
        fence_regs<BN / 2>(s);  // ... and packing P_j after it
      }
      if (resc) {
#pragma unroll
        for (int i = 0; i < DB; ++i) {
          oacc[4 * i] *= al0; oacc[4 * i + 1] *= al0;
          oacc[4 * i + 2] *= al1; oacc[4 * i + 3] *= al1;
        }
      }
#pragma unroll
      for (int kc = 0; kc < BN / 16; ++kc) {
        pa[kc][0] = pack2<T>(s[8 * kc], s[8 * kc + 1]);
        pa[kc][1] = pack2<T>(s[8 * kc + 2], s[8 * kc + 3]);
        pa[kc][2] = pack2<T>(s[8 * kc + 4], s[8 * kc + 5]);
        pa[kc][3] = pack2<T>(s[8 * kc + 6], s[8 * kc + 7]);
      }
      fence_regs<D / 2>(oacc);
      if (j == n_kv_w - 1) {  // this warpgroup's last tile: O += P_j V_j now (V_j's slot is
        wgmma_fence();        // reloaded later, for the other warpgroup's keys)
#pragma unroll
        for (int kc = 0; kc < BN / 16; ++kc)
          wgmma_rs<T, D>(oacc, pa[kc], dV + (((j % (ST + 1)) * KV_BYTES + kc * 2048) >> 4));
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs<D / 2>(oacc);
      }
    };
    step(0, BoolC<true>());
    for (int j = 1; j < n_kv; ++j) step(j, BoolC<false>());
    cp_async_wait<0>();
    __syncthreads();  // every warpgroup is done reading sQ
  }

  // the row's first query and length, read again here rather than held in registers through the
  // loop
  const int64_t q_start = tile_q_start(tile_info, blockIdx.x / H);
  const int Lq_full = tile_len_q(tile_info, blockIdx.x / H);
  // finish: normalise, stage this warpgroup's rows in its rows of sQ (swizzled), store coalesced
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const int rl = 16 * wq + g;  // row inside the warpgroup
  const int row_g = i0w + rl;
  const bool v0 = row_g < Lq && l0 > 0.f, v1 = row_g + 8 < Lq && l1 > 0.f;
  const float inv0 = v0 ? 1.f / l0 : 0.f, inv1 = v1 ? 1.f / l1 : 0.f;
  const uint32_t sO = sQ + wg * 64 * 128;
#pragma unroll
  for (int i = 0; i < DB; ++i) {
    const float a0 = v0 ? oacc[4 * i] * inv0 : 0.f, a1 = v0 ? oacc[4 * i + 1] * inv0 : 0.f;
    const float a2 = v1 ? oacc[4 * i + 2] * inv1 : 0.f, a3 = v1 ? oacc[4 * i + 3] * inv1 : 0.f;
    const uint32_t pan = sO + (i >> 3) * (BM * 128) + tq * 4;
    const uint32_t x0 = pack2<T>(a0, a1), x1 = pack2<T>(a2, a3);
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(pan + rl * 128 + (((i & 7) ^ (rl & 7)) << 4)),
                 "r"(x0) : "memory");
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(pan + (rl + 8) * 128 +
                                                 (((i & 7) ^ ((rl + 8) & 7)) << 4)),
                 "r"(x1) : "memory");
  }
  if (write_lse && tq == 0) {
    if (row_g < Lq_full)
      lse[(q_start + row_g) * H + h] = v0 ? (m0 + __log2f(l0)) * JFA_LN2 : -CJ_INF;
    if (row_g + 8 < Lq_full)
      lse[(q_start + row_g + 8) * H + h] = v1 ? (m1 + __log2f(l1)) * JFA_LN2 : -CJ_INF;
  }
  asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");  // this warpgroup's rows staged
  T* obase = o + (q_start + i0w) * q_rs + (int64_t)h * D;
  const int nrows = min(64, Lq_full - i0w);
  const int t = tid & 127;
#pragma unroll
  for (int i = 0; i < 64 * CPR / 128; ++i) {
    const int c = t + i * 128, r = c / CPR, cc = c % CPR;
    if (r < nrows) {
      uint4 x;
      asm volatile("ld.shared.v4.b32 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(x.x), "=r"(x.y), "=r"(x.z), "=r"(x.w)
                   : "r"(sO + (cc >> 3) * (BM * 128) + r * 128 + (((cc & 7) ^ (r & 7)) << 4)));
      stg16(obase + r * q_rs + cc * 8, x);  // H200: 2-3% faster than 4-byte stores
    }
  }
}
