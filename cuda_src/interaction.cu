// Feature interaction (DESIGN.md kernel family 5): the jagged matmuls on tensor cores.
//
// jagged_dense_bmm:  out[t, :] = x[t, :] @ y[b] for every item t of row b: x values [T, K],
//                    y [B, K, N], out values [T, N].
// jagged_jagged_bmm: out[b] = x_b^T @ y_b = sum over the items t of row b of x[t]^T y[t]:
//                    x values [T, M], y values [T, N], out [B, M, N] (zeros for an empty row).
// 16-bit T, fp32 accumulation; inner sizes multiples of 8 with 16-byte aligned rows (the host
// checks). 128 threads = 4 warps; warp w computes rows 16 w .. 16 w + 15 of a 64-row output tile,
// all BN columns (mma.sync m16n8k16); the reduction runs in steps of 32 through a two-stage
// cp.async ring. Operands past the matrix edges are zero-filled and outputs there never stored.
#include "common.cuh"
#include "mma.cuh"
#include "jfa_tiles.cuh"

#define JB_BM 64  // output rows of a block
#define JB_BK 32  // reduction depth of a stage
#define JB_PAD 8  // elements (16 bytes) after each shared-memory row: ldmatrix without conflicts
// blocks per SM the register budget must allow: BN 128 keeps 64 fp32 accumulators per thread
#define JB_MINB(BN) ((BN) > 64 ? 3 : 6)

// One k-step of 32 from shared memory: acc (16 rows of warp w x BN columns) += A (16 x 32) * B
// (32 x BN). B is stored k-major (sB[k][n], row stride SB); A is m-major (sA[m][k], row stride
// SA, ldmatrix) or, with A_KMAJOR, k-major (sA[k][m], ldmatrix.trans).
template <typename T, int BN, bool A_KMAJOR, int SA, int SB>
__device__ __forceinline__ void mma_k32(float (&acc)[BN / 8][4], const T* sA, const T* sB,
                                        int warp, int lane) {
  const int lm = lane >> 3, lr = lane & 7;
#pragma unroll
  for (int kk = 0; kk < JB_BK / 16; ++kk) {
    uint32_t a[4];
    if (A_KMAJOR)  // matrix lm: rows (k) 8 (lm >> 1) + lr, columns (m) 16 warp + 8 (lm & 1)
      ldsm_x4_t(a[0], a[1], a[2], a[3],
                smem_addr(sA + (kk * 16 + (lm >> 1) * 8 + lr) * SA + warp * 16 + (lm & 1) * 8));
    else  // matrix lm: rows (m) 16 warp + 8 (lm & 1) + lr, columns (k) 8 (lm >> 1)
      ldsm_x4(a[0], a[1], a[2], a[3],
              smem_addr(sA + (warp * 16 + (lm & 1) * 8 + lr) * SA + kk * 16 + (lm >> 1) * 8));
#pragma unroll
    for (int nb = 0; nb < BN / 16; ++nb) {
      uint32_t b0, b1, b2, b3;  // k 0-7 / 8-15 of columns 16 nb + 0-7, then of + 8-15
      ldsm_x4_t(b0, b1, b2, b3,
                smem_addr(sB + (kk * 16 + (lm & 1) * 8 + lr) * SB + nb * 16 + (lm >> 1) * 8));
      mma_step<T>(acc[2 * nb], a, b0, b1);
      mma_step<T>(acc[2 * nb + 1], a, b2, b3);
    }
  }
}

// The two-stage ring of every kernel here: load(s, stage) issues step s's cp.async copies (one
// commit group), step(stage) computes on a landed stage; nk steps (EMPTY_OK: nk may be 0, then
// nothing is issued; else nk >= 1).
template <bool EMPTY_OK, typename I, typename Load, typename Step>
__device__ __forceinline__ void run_stages(I nk, Load load, Step step) {
  if (!EMPTY_OK || nk > 0) load(I(0), 0);
  for (I s = 0; s < nk; ++s) {
    if (s + 1 < nk) {
      load(s + 1, (int)((s + 1) & 1));
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // stage s landed for every thread
    step((int)(s & 1));
    __syncthreads();  // stage s & 1 is rewritten by the load two steps on
  }
}

// acc (rows 16 warp + g and + 8 of the tile, columns 8 nb + 2 tq, + 1) into o (row stride ld,
// the tile's first row and column), rows < nrow and columns < ncol only: 4-byte stores
template <typename T, int BN>
__device__ __forceinline__ void store_tile(const float (&acc)[BN / 8][4], T* o, int64_t ld,
                                           int nrow, int ncol, int warp, int lane) {
  const int g = lane >> 2, tq = lane & 3, r0 = warp * 16 + g;
  T* p = o + r0 * ld + 2 * tq;
#pragma unroll
  for (int nb = 0; nb < BN / 8; ++nb) {
    if (nb * 8 + 2 * tq < ncol) {
      if (r0 < nrow) *reinterpret_cast<uint32_t*>(p + nb * 8) = pack2<T>(acc[nb][0], acc[nb][1]);
      if (r0 + 8 < nrow)
        *reinterpret_cast<uint32_t*>(p + 8 * ld + nb * 8) = pack2<T>(acc[nb][2], acc[nb][3]);
    }
  }
}

// Real tiles only: the tile list of jfa_tiles.cuh (one record per 64-item tile of a row, rows of
// most work first); block x computes column tile x % NT of item tile x / NT.
template <typename T, int BN>
__global__ void __launch_bounds__(128, JB_MINB(BN))
jagged_dense_bmm_mma(const T* __restrict__ x, const T* __restrict__ y, T* __restrict__ out,
                     const int32_t* __restrict__ tile_info, const int32_t* __restrict__ tile_off,
                     int64_t B, int NT, int K, int N) {
  constexpr int SA = JB_BK + JB_PAD, SB = BN + JB_PAD;
  __shared__ __align__(16) T sX[2][JB_BM * SA];  // [item][k]
  __shared__ __align__(16) T sY[2][JB_BK * SB];  // [k][n]
  // (the NT column tiles play attention's heads; no truncation)
  const TileInfo ti = locate_tile<JB_BM>(tile_info, tile_off, B, NT, NT, (int64_t)1 << 62);
  if (!ti.live) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int L = ti.Lq, i0 = ti.i0, n0 = ti.h * BN;
  const T* xb = x + (ti.q_start + i0) * (int64_t)K;
  const T* yb = y + (int64_t)ti.row * K * N;

  auto load = [&](int s, int st) {  // x: 64 items x 4 chunks; y: 32 rows x BN / 8 chunks
    const int k0 = s * JB_BK;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int c = tid + i * 128, r = c >> 2, kc = k0 + (c & 3) * 8;
      const bool ok = i0 + r < L && kc < K;
      cp_async16(smem_addr(&sX[st][r * SA + (c & 3) * 8]), ok ? xb + r * (int64_t)K + kc : x, ok);
    }
#pragma unroll
    for (int i = 0; i < BN / 32; ++i) {
      const int c = tid + i * 128, r = c / (BN / 8), nc = (c % (BN / 8)) * 8;
      const bool ok = k0 + r < K && n0 + nc < N;
      cp_async16(smem_addr(&sY[st][r * SB + nc]), ok ? yb + (int64_t)(k0 + r) * N + n0 + nc : y,
                 ok);
    }
    cp_async_commit();
  };

  float acc[BN / 8][4] = {};
  run_stages<false>((K + JB_BK - 1) / JB_BK, load, [&](int st) {  // K >= 8
    mma_k32<T, BN, false, SA, SB>(acc, sX[st], sY[st], warp, lane);
  });
  store_tile<T, BN>(acc, out + (ti.q_start + i0) * (int64_t)N + n0, N, L - i0, N - n0, warp,
                    lane);
}

// One block per (row, 64-row tile of M, BN-column tile of N), rows longest first (rows[]): the
// block runs over all the items of its row.
template <typename T, int BN>
__global__ void __launch_bounds__(128, JB_MINB(BN))
jagged_jagged_bmm_mma(const T* __restrict__ x, const T* __restrict__ y, T* __restrict__ out,
                      const int64_t* __restrict__ offsets, const int32_t* __restrict__ rows,
                      int MT, int NT, int M, int N) {
  constexpr int SA = JB_BM + JB_PAD, SB = BN + JB_PAD;
  __shared__ __align__(16) T sX[2][JB_BK * SA];  // [item][m]
  __shared__ __align__(16) T sY[2][JB_BK * SB];  // [item][n]
  const int64_t lin = blockIdx.x;
  const int row = __ldg(rows + lin / (MT * NT)), t = (int)(lin % (MT * NT));
  const int m0 = (t / NT) * JB_BM, n0 = (t % NT) * BN;
  const int64_t start = __ldg(offsets + row);
  const int64_t L = __ldg(offsets + row + 1) - start;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const T* xb = x + start * M + m0;
  const T* yb = y + start * N + n0;

  auto load = [&](int64_t s, int st) {  // x: 32 items x 8 chunks; y: 32 items x BN / 8 chunks
    const int64_t k0 = s * JB_BK;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int c = tid + i * 128, r = c >> 3, mc = (c & 7) * 8;
      const bool ok = k0 + r < L && m0 + mc < M;
      cp_async16(smem_addr(&sX[st][r * SA + mc]), ok ? xb + (k0 + r) * M + mc : x, ok);
    }
#pragma unroll
    for (int i = 0; i < BN / 32; ++i) {
      const int c = tid + i * 128, r = c / (BN / 8), nc = (c % (BN / 8)) * 8;
      const bool ok = k0 + r < L && n0 + nc < N;
      cp_async16(smem_addr(&sY[st][r * SB + nc]), ok ? yb + (k0 + r) * N + nc : y, ok);
    }
    cp_async_commit();
  };

  float acc[BN / 8][4] = {};
  run_stages<true>((L + JB_BK - 1) / JB_BK, load,  // an empty row: zeros
                   [&](int st) { mma_k32<T, BN, true, SA, SB>(acc, sX[st], sY[st], warp, lane); });
  store_tile<T, BN>(acc, out + ((int64_t)row * M + m0) * N + n0, N, M - m0, N - n0, warp, lane);
}
