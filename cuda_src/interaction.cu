// Feature interaction (DESIGN.md kernel family 5): jagged_dense_bmm on tensor cores.
//
// out[t, :] = x[t, :] @ y[b] for every item t of row b: x values [T, K], y [B, K, N], out [T, N]
// (16-bit T, fp32 accumulation; K and N multiples of 8, 16-byte aligned rows). A grouped GEMM
// over real tiles only: the tile list of jfa_tiles.cuh (one record per 64-item tile of a row,
// rows of most work first), block x = tile x / NT, column tile x % NT of 64 columns.
// 128 threads = 4 warps, warp w computes items 16 w .. 16 w + 15 of the tile, all 64 columns
// (mma.sync m16n8k16, A = x by ldmatrix, B = y by ldmatrix.trans), K in steps of 32 through a
// two-stage cp.async ring; items past the row and columns past K / N are zero-filled, never
// stored.
#include "common.cuh"
#include "mma.cuh"
#include "jfa_tiles.cuh"

#define JDB_BM 64
#define JDB_BN 64
#define JDB_BK 32
#define JDB_SX (JDB_BK + 8)  // smem row of an x tile: 32 elements + 16 bytes (no ldmatrix conflict)
#define JDB_SY (JDB_BN + 8)  // smem row of a y tile: 64 elements + 16 bytes

template <typename T>
__global__ void __launch_bounds__(128)
jagged_dense_bmm_mma(const T* __restrict__ x, const T* __restrict__ y, T* __restrict__ out,
                     const int32_t* __restrict__ tile_info, const int32_t* __restrict__ tile_off,
                     int64_t B, int NT, int K, int N) {
  __shared__ __align__(16) T sX[2][JDB_BM * JDB_SX];
  __shared__ __align__(16) T sY[2][JDB_BK * JDB_SY];
  // (H = NT column tiles plays the role of attention's heads; no truncation, Hk = H)
  const TileInfo ti = locate_tile<JDB_BM>(tile_info, tile_off, B, NT, NT, (int64_t)1 << 62);
  if (!ti.live) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, tq = lane & 3, lm = lane >> 3, lr = lane & 7;
  const int L = ti.Lq, i0 = ti.i0, n0 = ti.h * JDB_BN;
  const T* xb = x + (ti.q_start + i0) * (int64_t)K;
  const T* yb = y + (int64_t)ti.row * K * N;

  // loads of k-step s into stage st: x 64 rows x 4 chunks, y 32 rows x 8 chunks, 2 + 2 a thread
  auto load = [&](int s, int st) {
    const int k0 = s * JDB_BK;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int c = tid + i * 128, r = c >> 2, kc = k0 + (c & 3) * 8;
      const bool ok = i0 + r < L && kc < K;
      cp_async16(smem_addr(&sX[st][r * JDB_SX + (c & 3) * 8]), ok ? xb + r * (int64_t)K + kc : x,
                 ok);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int c = tid + i * 128, r = c >> 3, nc = n0 + (c & 7) * 8;
      const bool ok = k0 + r < K && nc < N;
      cp_async16(smem_addr(&sY[st][r * JDB_SY + (c & 7) * 8]),
                 ok ? yb + (int64_t)(k0 + r) * N + nc : y, ok);
    }
    cp_async_commit();
  };

  float acc[JDB_BN / 8][4];
#pragma unroll
  for (int nb = 0; nb < JDB_BN / 8; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nb][e] = 0.f;

  const int nk = (K + JDB_BK - 1) / JDB_BK;
  load(0, 0);
  for (int s = 0; s < nk; ++s) {
    const int st = s & 1;
    if (s + 1 < nk) {
      load(s + 1, st ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // stage st landed for every thread
    const uint32_t aX = smem_addr(&sX[st][(warp * 16 + (lm & 1) * 8 + lr) * JDB_SX + (lm >> 1) * 8]);
    const uint32_t aY = smem_addr(&sY[st][((lm & 1) * 8 + lr) * JDB_SY + (lm >> 1) * 8]);
#pragma unroll
    for (int kk = 0; kk < JDB_BK / 16; ++kk) {
      uint32_t a[4];
      ldsm_x4(a[0], a[1], a[2], a[3], aX + kk * 16 * 2);
#pragma unroll
      for (int nb = 0; nb < JDB_BN / 16; ++nb) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4_t(b0, b1, b2, b3, aY + (kk * 16 * JDB_SY + nb * 16) * 2);
        mma_step<T>(acc[2 * nb], a, b0, b1);
        mma_step<T>(acc[2 * nb + 1], a, b2, b3);
      }
    }
    __syncthreads();  // stage st is rewritten by the load two steps on
  }

  // rows 16 warp + g and + 8 of the tile, columns n0 + 8 nb + 2 tq (+ 1): 4-byte stores
  const int r0 = i0 + warp * 16 + g;
  T* ob = out + (ti.q_start + r0) * (int64_t)N + n0 + 2 * tq;
#pragma unroll
  for (int nb = 0; nb < JDB_BN / 8; ++nb) {
    if (n0 + nb * 8 + 2 * tq < N) {
      if (r0 < L) *reinterpret_cast<uint32_t*>(ob + nb * 8) = pack2<T>(acc[nb][0], acc[nb][1]);
      if (r0 + 8 < L)
        *reinterpret_cast<uint32_t*>(ob + 8 * (int64_t)N + nb * 8) = pack2<T>(acc[nb][2], acc[nb][3]);
    }
  }
}
