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
static_assert(JB_ST >= 2, "the ring needs a stage in flight beside the one computed on");
// blocks per SM the register budget must allow: BN 128 keeps 64 fp32 accumulators per thread
#define JB_MINB(BN) ((BN) > 64 ? 3 : 6)

// A fragments (m16n8k16, rows 16 warp .. + 15, k 16 kk .. + 15) by ldmatrix from a shared A
// that is m-major (sA[m][k], row stride SA) or, with A_KMAJOR, k-major (sA[k][m], .trans)
template <bool A_KMAJOR, int SA, typename T>
__device__ __forceinline__ auto ldsm_a(const T* sA, int warp, int lane) {
  return [=](int kk, uint32_t (&a)[4]) {
    const int lm = lane >> 3, lr = lane & 7;
    if (A_KMAJOR)  // matrix lm: rows (k) 8 (lm >> 1) + lr, columns (m) 16 warp + 8 (lm & 1)
      ldsm_x4_t(a[0], a[1], a[2], a[3],
                smem_addr(sA + (kk * 16 + (lm >> 1) * 8 + lr) * SA + warp * 16 + (lm & 1) * 8));
    else  // matrix lm: rows (m) 16 warp + 8 (lm & 1) + lr, columns (k) 8 (lm >> 1)
      ldsm_x4(a[0], a[1], a[2], a[3],
              smem_addr(sA + (warp * 16 + (lm & 1) * 8 + lr) * SA + kk * 16 + (lm >> 1) * 8));
  };
}

// One k-step of 32: acc (16 rows of warp w x BN columns) += A (16 x 32) * B (32 x BN). afrag(kk,
// a) gives A's fragments of k 16 kk .. + 15; B is shared, k-major (sB[k][n], row stride SB,
// ldmatrix.trans) or, with B_NMAJOR, n-major (sB[n][k], ldmatrix).
template <typename T, int BN, int SB, bool B_NMAJOR = false, typename AFrag>
__device__ __forceinline__ void mma_k32(float (&acc)[BN / 8][4], AFrag afrag, const T* sB,
                                        int lane) {
  const int lm = lane >> 3, lr = lane & 7;
#pragma unroll
  for (int kk = 0; kk < JB_BK / 16; ++kk) {
    uint32_t a[4];
    afrag(kk, a);
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
// into ring slot `slot`, step(s, slot) computes on a landed slot; nk >= 0 steps. One commit group a
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
    step(s, rd);
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
  run_stages((K + JB_BK - 1) / JB_BK, load, [&](int, int st) {
    mma_k32<T, BN, SB>(acc, ldsm_a<false, SA>(sX[st], warp, lane), sY[st], lane);
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
  run_stages((L + JB_BK - 1) / JB_BK, load, [&](int64_t, int st) {  // an empty row: zeros
    mma_k32<T, BN, SB>(acc, ldsm_a<true, SA>(sX[st], warp, lane), sY[st], lane);
  });
  store_tile<T, BN>(acc, out + ((int64_t)row * M + m0) * N + n0, N, M - m0, N - n0, warp, lane);
}

// m_b = x_b @ y_b^T: block = one 64 x BN tile of a row's L x L matrix, from its 32-byte record
// tiles[block] = {row start, off2[row], L, the tile's index t in the row (row-major over the
// tiles)}; the reduction runs over D in steps of 32 (A = x rows, B = y rows: both item-major,
// ldmatrix).
template <typename T, int BN>
__global__ void __launch_bounds__(128, JB_MINB(BN))
jagged_jagged_bmm_jagged_out_mma(const T* __restrict__ x, const T* __restrict__ y,
                                 T* __restrict__ out, const int64_t* __restrict__ tiles, int D) {
  constexpr int SA = JB_BK + JB_PAD, SB = JB_BK + JB_PAD;
  __shared__ __align__(16) T sX[JB_ST][JB_BM * SA];  // [i][k]
  __shared__ __align__(16) T sY[JB_ST][BN * SB];     // [j][k]
  const longlong2 r0 = __ldg(reinterpret_cast<const longlong2*>(tiles) + 2 * blockIdx.x);
  const longlong2 r1 = __ldg(reinterpret_cast<const longlong2*>(tiles) + 2 * blockIdx.x + 1);
  const int64_t start = r0.x, o2 = r0.y;
  const int L = (int)r1.x, t = (int)r1.y, nj = (L + BN - 1) / BN;
  const int i0 = (t / nj) * JB_BM, j0 = (t % nj) * BN;
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
  run_stages((D + JB_BK - 1) / JB_BK, load, [&](int, int st) {
    mma_k32<T, BN, SB, true>(acc, ldsm_a<false, SA>(sX[st], warp, lane), sY[st], lane);
  });
  static_assert(JB_ST * BN * SB >= JB_BM * (BN + JB_PAD), "the output tile is staged in sY");
  __syncthreads();  // every warp is done with the ring
  store_tile_rows<T, BN>(acc, sY[0], out + o2 + (int64_t)i0 * L + j0, L, L - i0, L - j0, warp,
                         lane);
}

// out_b = A_b @ x_b with A_b = m_b (or m_b^T with TRANS): block = (64-item tile, BN-column tile)
// of the attention tile list, as jagged_dense_bmm; the reduction runs over the row's L items in
// steps of 32. A step of A is NS segments of W contiguous elements of m_b (rows i0 .. i0 + 63 of
// m_b, k0 .. k0 + 31 each; with TRANS rows k0 .. k0 + 31, columns i0 .. i0 + 63) at any element
// alignment: each segment comes by 16-byte cp.async of the aligned chunks that cover it (sizes
// clipped to the segment's valid elements, the rest zero-filled; m's values are 16-byte
// aligned) into a staging row of W + 8 elements, where it starts at element e & 7 (e: its
// element offset in m). A's fragments are read from there two elements at a time.
template <typename T, int BN, bool TRANS>
__global__ void __launch_bounds__(128, BN > 64 ? 3 : 5)  // (at 6, BN 64 with TRANS spills)
array_jagged_bmm_jagged_out_mma(const T* __restrict__ m, const T* __restrict__ x,
                                T* __restrict__ out, const int64_t* __restrict__ off2,
                                const int32_t* __restrict__ tile_info,
                                const int32_t* __restrict__ tile_off, int64_t B, int NT, int N) {
  constexpr int NS = TRANS ? JB_BK : JB_BM, W = TRANS ? JB_BM : JB_BK;  // segments, length
  constexpr int SW = W + 8, NQ = W / 8 + 1, SB = BN + JB_PAD;  // staging stride, chunks a segment
  __shared__ __align__(16) uint16_t sA[JB_ST][NS * SW];
  __shared__ __align__(16) T sX[JB_ST][JB_BK * SB];  // [k][n]
  const TileInfo ti = locate_tile<JB_BM>(tile_info, tile_off, B, NT, NT, (int64_t)1 << 62);
  if (!ti.live) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, tq = lane & 3;
  const int L = ti.Lq, i0 = ti.i0, n0 = ti.h * BN;
  const int64_t o2 = __ldg(off2 + ti.row);
  const T* xb = x + ti.q_start * (int64_t)N;
  // element offset of m_b's (row, column) mod 8, in wrapping 32-bit arithmetic
  const uint32_t o2m = (uint32_t)o2, Lm = (uint32_t)L;
  auto shift = [&](int r, int c) { return (int)((o2m + (uint32_t)r * Lm + (uint32_t)c) & 7u); };

  auto load = [&](int s, int st) {
    const int k0 = s * JB_BK;
    for (int c = tid; c < NS * NQ; c += 128) {
      const int sg = c / NQ, q = c % NQ;
      const int r = TRANS ? k0 + sg : i0 + sg, c0 = TRANS ? i0 : k0;  // the segment in m_b
      const int v = r < L ? min(W, L - c0) : 0;                         // its valid elements
      const int64_t e = o2 + (int64_t)r * L + c0, a = (e & ~(int64_t)7) + 8 * q;
      const int n = v > 0 ? (int)max((int64_t)0, min((int64_t)16, 2 * (e + v - a))) : 0;
      cp_async16_n(smem_addr(&sA[st][sg * SW + 8 * q]), n > 0 ? m + a : m, n);
    }
#pragma unroll
    for (int i = 0; i < BN / 32; ++i) {  // x: 32 rows x BN / 8 chunks
      const int c = tid + i * 128, r = c / (BN / 8), nc = (c % (BN / 8)) * 8;
      const bool ok = k0 + r < L && n0 + nc < N;
      cp_async16(smem_addr(&sX[st][r * SB + nc]), ok ? xb + (int64_t)(k0 + r) * N + n0 + nc : x,
                 ok);
    }
  };

  const int ra = warp * 16 + g;  // A rows ra, ra + 8 of this thread
  // without TRANS the shifts of A's rows are the same at every step (k0: a multiple of 8)
  const int sh0 = TRANS ? 0 : shift(i0 + ra, 0), sh1 = TRANS ? 0 : shift(i0 + ra + 8, 0);
  float acc[BN / 8][4] = {};
  run_stages((L + JB_BK - 1) / JB_BK, load, [&](int s, int st) {
    const uint16_t* sa = sA[st];
    auto pair = [](const uint16_t* p0, const uint16_t* p1) {
      return (uint32_t)*p0 | ((uint32_t)*p1 << 16);
    };
    mma_k32<T, BN, SB>(acc, [&](int kk, uint32_t (&a)[4]) {
      const int k = kk * 16 + 2 * tq;  // A's columns k, k + 1 (a[0], a[1]) and k + 8, k + 9
      if (TRANS) {  // A[i][k] = staging row k, element shift_k + i
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint16_t* p0 = sa + (k + 8 * h) * SW + shift(s * JB_BK + k + 8 * h, i0);
          const uint16_t* p1 = sa + (k + 8 * h + 1) * SW + shift(s * JB_BK + k + 8 * h + 1, i0);
          a[2 * h] = pair(p0 + ra, p1 + ra);
          a[2 * h + 1] = pair(p0 + ra + 8, p1 + ra + 8);
        }
      } else {  // A[i][k] = staging row i, element shift_i + k
        const uint16_t* p0 = sa + ra * SW + sh0 + k;
        const uint16_t* p1 = sa + (ra + 8) * SW + sh1 + k;
        a[0] = pair(p0, p0 + 1);
        a[1] = pair(p1, p1 + 1);
        a[2] = pair(p0 + 8, p0 + 9);
        a[3] = pair(p1 + 8, p1 + 9);
      }
    }, sX[st], lane);
  });
  store_tile<T, BN>(acc, out + (ti.q_start + i0) * (int64_t)N + n0, N, L - i0, N - n0, warp,
                    lane);
}
