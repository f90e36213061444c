// Feature interaction (DESIGN.md kernel family 5): the jagged matmuls on tensor cores.
//
// jagged_dense_bmm:  out[t, :] = x[t, :] @ y[b] for every item t of row b: x values [T, K],
//                    y [B, K, N], out values [T, N].
// jagged_jagged_bmm: out[b] = x_b^T @ y_b = sum over the items t of row b of x[t]^T y[t]:
//                    x values [T, M], y values [T, N], out [B, M, N] (zeros for an empty row).
// jagged2 outputs / operands (one L_b x L_b matrix a row, row-major at off2[b]; rows of L_b
// elements are not 16-byte aligned):
// jagged_jagged_bmm_jagged_out: m_b = x_b @ y_b^T (x, y values [T, D]).
// array_jagged_bmm_jagged_out:  out_b = m_b @ x_b, or m_b^T @ x_b (x values [T, N]).
// 16-bit T, fp32 accumulation; inner sizes multiples of 8 with 16-byte aligned rows (the host
// checks). 128 threads = 4 warps; warp w computes rows 16 w .. 16 w + 15 of a 64-row output tile,
// all BN columns (mma.sync m16n8k16); the reduction runs in steps of 32 through a ring of JB_ST
// cp.async stages. Operands past the matrix edges are zero-filled and outputs there never stored.
#include "common.cuh"
#include "mma.cuh"
#include "jfa_tiles.cuh"

#define JB_BM 64  // output rows of a block
#define JB_BK 32  // reduction depth of a stage
#define JB_PAD 8  // elements (16 bytes) after each shared-memory row: ldmatrix without conflicts
#ifndef JB_ST
#define JB_ST 3  // stages of the cp.async ring (JB_ST - 1 in flight during a step; static shared
                 // memory stays under 48 KB at BN 128)
#endif
// blocks per SM the register budget must allow: BN 128 keeps 64 fp32 accumulators per thread
#define JB_MINB(BN) ((BN) > 64 ? 3 : 6)

// One k-step of 32 from shared memory: acc (16 rows of warp w x BN columns) += A (16 x 32) * B
// (32 x BN). A is m-major (sA[m][k], row stride SA, ldmatrix) or, with A_KMAJOR, k-major
// (sA[k][m], ldmatrix.trans); B is k-major (sB[k][n], row stride SB, ldmatrix.trans) or, with
// B_NMAJOR, n-major (sB[n][k], ldmatrix).
template <typename T, int BN, bool A_KMAJOR, int SA, int SB, bool B_NMAJOR = false>
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
      if (B_NMAJOR)  // matrix lm: rows (n) 16 nb + 8 (lm >> 1) + lr, columns (k) 8 (lm & 1)
        ldsm_x4(b0, b1, b2, b3,
                smem_addr(sB + (nb * 16 + (lm >> 1) * 8 + lr) * SB + kk * 16 + (lm & 1) * 8));
      else  // matrix lm: rows (k) 8 (lm & 1) + lr, columns (n) 16 nb + 8 (lm >> 1)
        ldsm_x4_t(b0, b1, b2, b3,
                  smem_addr(sB + (kk * 16 + (lm & 1) * 8 + lr) * SB + nb * 16 + (lm >> 1) * 8));
      mma_step<T>(acc[2 * nb], a, b0, b1);
      mma_step<T>(acc[2 * nb + 1], a, b2, b3);
    }
  }
}

// The ring of JB_ST stages of every kernel here: load(s, slot) issues step s's cp.async copies
// into ring slot `slot`, step(slot) computes on a landed slot; nk >= 0 steps. One commit group a
// step (empty past the end), one barrier a step: the slot a load refills was last read by the
// step before, which every thread has finished at the barrier. The ring's shared memory may be
// reused only after another __syncthreads.
template <typename I, typename Load, typename Step>
__device__ __forceinline__ void run_stages(I nk, Load load, Step step) {
#pragma unroll
  for (int t = 0; t < JB_ST - 1; ++t) {
    if (t < nk) load(I(t), t);
    cp_async_commit();
  }
  int rd = 0, wr = JB_ST - 1;  // slots of steps s and s + JB_ST - 1
  for (I s = 0; s < nk; ++s) {
    cp_async_wait<JB_ST - 2>();
    __syncthreads();  // step s landed for every thread; every thread is done with step s - 1
    if (s + JB_ST - 1 < nk) load(s + JB_ST - 1, wr);
    cp_async_commit();
    step(rd);
    rd = rd + 1 == JB_ST ? 0 : rd + 1;
    wr = wr + 1 == JB_ST ? 0 : wr + 1;
  }
}

// acc (rows 16 warp + g and + 8 of the tile, columns 8 nb + 2 tq, + 1) into o (row stride ld,
// the tile's first row and column; even ld and ncol, o 4-byte aligned), rows < nrow and columns
// < ncol only
template <typename T, int BN>
__device__ __forceinline__ void store_tile(const float (&acc)[BN / 8][4], T* o, int64_t ld,
                                           int nrow, int ncol, int warp, int lane) {
  const int g = lane >> 2, tq = lane & 3, r0 = warp * 16 + g;
  T* p = o + r0 * ld + 2 * tq;
#pragma unroll
  for (int nb = 0; nb < BN / 8; ++nb) {
    const int c = nb * 8 + 2 * tq;
#pragma unroll
    for (int h = 0; h < 2; ++h)  // rows r0, r0 + 8
      if (r0 + 8 * h < nrow && c < ncol)
        *reinterpret_cast<uint32_t*>(p + 8 * h * ld + nb * 8) =
            pack2<T>(acc[nb][2 * h], acc[nb][2 * h + 1]);
  }
}

// The same for rows of any alignment (the L x L matrices of jagged2 values; nrow, ncol: what is
// left of the matrix from the tile's corner, clipped to the tile here), through `stage`
// (64 x (BN + JB_PAD) elements of free shared memory): warp w stages its 16 rows, then writes
// each row's ncol elements as coalesced 4-byte pairs (a row starting at an odd element writes
// its first element alone, and an unpaired last element alone).
template <typename T, int BN>
__device__ __forceinline__ void store_tile_rows(const float (&acc)[BN / 8][4], T* stage, T* o,
                                                int64_t ld, int nrow, int ncol, int warp,
                                                int lane) {
  constexpr int SO = BN + JB_PAD;
  const int g = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int nb = 0; nb < BN / 8; ++nb)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      *reinterpret_cast<uint32_t*>(stage + (warp * 16 + g + 8 * h) * SO + nb * 8 + 2 * tq) =
          pack2<T>(acc[nb][2 * h], acc[nb][2 * h + 1]);
  __syncwarp();
  ncol = min(ncol, BN);
  const int rend = min(nrow, warp * 16 + 16);
  for (int r = warp * 16; r < rend; ++r) {
    const uint16_t* src = reinterpret_cast<const uint16_t*>(stage + r * SO);
    uint16_t* dst = reinterpret_cast<uint16_t*>(o + r * ld);
    const int h = (int)((reinterpret_cast<unsigned long long>(dst) >> 1) & 1);  // odd first element
    if (lane == 0) {
      if (h) dst[0] = src[0];
      if ((ncol - h) & 1) dst[ncol - 1] = src[ncol - 1];
    }
    for (int c = h + 2 * lane; c + 1 < ncol; c += 64)
      *reinterpret_cast<uint32_t*>(dst + c) = (uint32_t)src[c] | ((uint32_t)src[c + 1] << 16);
  }
}

// The (row, tile) of block x over per-row tile counts: tile_off [B+1] cumulative over the rows
// in the order rows[] (longest first); rows without tiles are skipped.
struct RowTile {
  int64_t row, t;
};
__device__ __forceinline__ RowTile row_tile(const int64_t* __restrict__ tile_off,
                                            const int32_t* __restrict__ rows, int64_t B) {
  const int64_t blk = blockIdx.x;
  const int64_t s = find_row_in(tile_off, (int64_t)0, B, blk);
  return {(int64_t)__ldg(rows + s), blk - __ldg(tile_off + s)};
}

// Real tiles only: the tile list of jfa_tiles.cuh (one record per 64-item tile of a row, rows of
// most work first); block x computes column tile x % NT of item tile x / NT.
template <typename T, int BN>
__global__ void __launch_bounds__(128, JB_MINB(BN))
jagged_dense_bmm_mma(const T* __restrict__ x, const T* __restrict__ y, T* __restrict__ out,
                     const int32_t* __restrict__ tile_info, const int32_t* __restrict__ tile_off,
                     int64_t B, int NT, int K, int N) {
  constexpr int SA = JB_BK + JB_PAD, SB = BN + JB_PAD;
  __shared__ __align__(16) T sX[JB_ST][JB_BM * SA];  // [item][k]
  __shared__ __align__(16) T sY[JB_ST][JB_BK * SB];  // [k][n]
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
  };

  float acc[BN / 8][4] = {};
  run_stages((K + JB_BK - 1) / JB_BK, load, [&](int st) {
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
  __shared__ __align__(16) T sX[JB_ST][JB_BK * SA];  // [item][m]
  __shared__ __align__(16) T sY[JB_ST][JB_BK * SB];  // [item][n]
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
  };

  float acc[BN / 8][4] = {};
  run_stages((L + JB_BK - 1) / JB_BK, load,  // an empty row: zeros
                   [&](int st) { mma_k32<T, BN, true, SA, SB>(acc, sX[st], sY[st], warp, lane); });
  store_tile<T, BN>(acc, out + ((int64_t)row * M + m0) * N + n0, N, M - m0, N - n0, warp, lane);
}

// m_b = x_b @ y_b^T: block = (row, 64-row tile i, BN-column tile j) of its L x L matrix; the
// reduction runs over D in steps of 32 (A = x rows, B = y rows: both item-major, ldmatrix).
template <typename T, int BN>
__global__ void __launch_bounds__(128, JB_MINB(BN))
jagged_jagged_bmm_jagged_out_mma(const T* __restrict__ x, const T* __restrict__ y,
                                 T* __restrict__ out, const int64_t* __restrict__ offsets,
                                 const int64_t* __restrict__ off2,
                                 const int64_t* __restrict__ tile_off,
                                 const int32_t* __restrict__ rows, int64_t B, int D) {
  constexpr int SA = JB_BK + JB_PAD, SB = JB_BK + JB_PAD;
  __shared__ __align__(16) T sX[JB_ST][JB_BM * SA];  // [i][k]
  __shared__ __align__(16) T sY[JB_ST][BN * SB];   // [j][k]
  const RowTile rt = row_tile(tile_off, rows, B);
  const int64_t start = __ldg(offsets + rt.row);
  const int L = (int)(__ldg(offsets + rt.row + 1) - start);
  const int nj = (L + BN - 1) / BN;
  const int i0 = (int)(rt.t / nj) * JB_BM, j0 = (int)(rt.t % nj) * BN;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const T* xb = x + (start + i0) * D;
  const T* yb = y + (start + j0) * D;

  auto load = [&](int s, int st) {  // x: 64 items x 4 chunks; y: BN items x 4 chunks
    const int k0 = s * JB_BK;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int c = tid + i * 128, r = c >> 2, kc = k0 + (c & 3) * 8;
      const bool ok = i0 + r < L && kc < D;
      cp_async16(smem_addr(&sX[st][r * SA + (c & 3) * 8]), ok ? xb + (int64_t)r * D + kc : x, ok);
    }
#pragma unroll
    for (int i = 0; i < BN / 32; ++i) {
      const int c = tid + i * 128, r = c >> 2, kc = k0 + (c & 3) * 8;
      const bool ok = j0 + r < L && kc < D;
      cp_async16(smem_addr(&sY[st][r * SB + (c & 3) * 8]), ok ? yb + (int64_t)r * D + kc : y, ok);
    }
  };

  float acc[BN / 8][4] = {};
  run_stages((D + JB_BK - 1) / JB_BK, load, [&](int st) {
    mma_k32<T, BN, false, SA, SB, true>(acc, sX[st], sY[st], warp, lane);
  });
  static_assert(JB_ST * BN * SB >= JB_BM * (BN + JB_PAD), "the output tile is staged in sY");
  __syncthreads();  // every warp is done with the ring
  store_tile_rows<T, BN>(acc, sY[0], out + __ldg(off2 + rt.row) + (int64_t)i0 * L + j0, L,
                         L - i0, L - j0, warp, lane);
}

// out_b = A_b @ x_b with A_b = m_b (or m_b^T with TRANS): block = (64-item tile, BN-column tile)
// of the attention tile list, as jagged_dense_bmm; the reduction runs over the row's L items in
// steps of 32. m's rows are not 16-byte aligned: A comes by 2-byte loads (the next step's issued
// before the current step's product), x by cp.async.
template <typename T, int BN, bool TRANS>
__global__ void __launch_bounds__(128, BN > 64 ? 2 : 3)  // (A's 16 staged loads, addresses)
array_jagged_bmm_jagged_out_mma(const T* __restrict__ m, const T* __restrict__ x,
                                T* __restrict__ out, const int64_t* __restrict__ off2,
                                const int32_t* __restrict__ tile_info,
                                const int32_t* __restrict__ tile_off, int64_t B, int NT, int N) {
  // A is stored as read: m-major sA[i][k] (rows of m_b), or with TRANS k-major sA[k][i] (rows
  // of m_b again, whose columns are A's rows): warps read rows of m_b either way (coalesced)
  constexpr int SA = TRANS ? JB_BM + JB_PAD : JB_BK + JB_PAD, SB = BN + JB_PAD;
  __shared__ __align__(16) T sA[2][JB_BM * (JB_BK + JB_PAD)];  // >= JB_BK * (JB_BM + JB_PAD)
  __shared__ __align__(16) T sX[2][JB_BK * SB];                 // [k][n]
  static_assert(JB_BK * (JB_BM + JB_PAD) <= JB_BM * (JB_BK + JB_PAD), "sA holds either layout");
  const TileInfo ti = locate_tile<JB_BM>(tile_info, tile_off, B, NT, NT, (int64_t)1 << 62);
  if (!ti.live) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int L = ti.Lq, i0 = ti.i0, n0 = ti.h * BN;
  const T* mb = m + __ldg(off2 + ti.row);
  const T* xb = x + ti.q_start * (int64_t)N;
  // A: 64 x 32 elements a step, 16 a thread, a warp reading consecutive elements of a row of
  // m_b: A[i][k] = m_b[i][k] (thread: k = tid & 31 of rows i = tid >> 5, + 4, ...) or, with
  // TRANS, m_b[k][i] (thread: i = tid & 63 of rows k = tid >> 6, + 2, ...)
  constexpr int CW = TRANS ? JB_BM : JB_BK, RS = 128 / CW;  // a row's threads, rows a pass
  T a_reg[16];
  auto load_a = [&](int s) {
#pragma unroll
    for (int u = 0; u < 16; ++u) {
      const int c = tid % CW, r = tid / CW + RS * u;  // column / row of the m_b block read
      const int i = i0 + (TRANS ? c : r), k = s * JB_BK + (TRANS ? r : c);
      const bool ok = i < L && k < L;
      a_reg[u] = ok ? mb[TRANS ? (int64_t)k * L + i : (int64_t)i * L + k] : from_float<T>(0.f);
    }
  };
  auto store_a = [&](int st) {  // sA[r][c] in the layout read (SA: its row stride)
#pragma unroll
    for (int u = 0; u < 16; ++u) sA[st][(tid / CW + RS * u) * SA + tid % CW] = a_reg[u];
  };
  auto load_x = [&](int s, int st) {  // 32 rows x BN / 8 chunks
    const int k0 = s * JB_BK;
#pragma unroll
    for (int i = 0; i < BN / 32; ++i) {
      const int c = tid + i * 128, r = c / (BN / 8), nc = (c % (BN / 8)) * 8;
      const bool ok = k0 + r < L && n0 + nc < N;
      cp_async16(smem_addr(&sX[st][r * SB + nc]), ok ? xb + (int64_t)(k0 + r) * N + n0 + nc : x,
                 ok);
    }
    cp_async_commit();
  };

  float acc[BN / 8][4] = {};
  const int nk = (L + JB_BK - 1) / JB_BK;
  load_a(0);
  store_a(0);
  load_x(0, 0);
  for (int s = 0; s < nk; ++s) {
    const bool more = s + 1 < nk;
    if (more) {
      load_x(s + 1, (s + 1) & 1);
      load_a(s + 1);  // in flight during this step's product
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // step s's A (stored last step) and x landed
    mma_k32<T, BN, TRANS, SA, SB>(acc, sA[s & 1], sX[s & 1], warp, lane);
    if (more) store_a((s + 1) & 1);  // its buffer was last read at step s - 1
    __syncthreads();
  }
  store_tile<T, BN>(acc, out + (ti.q_start + i0) * (int64_t)N + n0, N, L - i0, N - n0, warp,
                    lane);
}
