// The tile lists of the Jagged Flash Attention kernels (records: jfa_tiles.cuh), built on the
// device from the offsets without a host round trip: rows in order of work (query tiles x (keys
// + 1)), most first, then tile_off (cumulative tile counts in that order) and one record a tile.
//
// jfa_tile_plan: the whole list in one launch of one block (B <= JFA_PLAN_MAX_B rows): a
// counting sort of the rows by work class, stable (row order within a class). jfa_tile_info:
// the records alone for any B, given the order (perm) and tile_off from CuPy's argsort / cumsum.
#include "common.cuh"

#define JFA_PLAN_NT 1024  // threads of the plan block
#define JFA_PLAN_NC 256   // work classes (work_class)
#define JFA_PLAN_NW (JFA_PLAN_NT / 32)

// Row work class: 0 for no work, else 1 + 4 floor(log2 w) + the next two bits of w (< 253):
// rows in descending class order are in work order to within 19%, all a schedule needs.
__device__ __forceinline__ int work_class(int64_t w) {
  if (w <= 0) return 0;
  const int lg = 63 - __clzll(w);
  const int frac = lg >= 2 ? (int)(w >> (lg - 2)) & 3 : (int)(w << (2 - lg)) & 3;
  return 1 + 4 * lg + frac;
}

// Tile t's 32-byte record: row `row` (its query / key starts and untruncated lengths) and the
// row's query tile counted from its end (the last tile first: most causal work)
__device__ __forceinline__ void put_record(int32_t* __restrict__ tile_info, int64_t t,
                                           int64_t qs, int64_t ks, int32_t lq, int32_t lk,
                                           int32_t tile_from_end, int32_t row) {
  longlong2* rec = reinterpret_cast<longlong2*>(tile_info + 8 * t);
  rec[0] = make_longlong2(qs, ks);
  *reinterpret_cast<int4*>(rec + 1) = make_int4(lq, lk, tile_from_end, row);
}

// Exclusive scan of one int a thread over the block; *total gets the sum (shared scratch: warp
// sums). Every thread of the block must call it.
__device__ __forceinline__ int block_exclusive_scan(int v, int* __restrict__ warp_sums,
                                                    int* __restrict__ total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int u = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += u;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const int s = warp_sums[lane];
    int si = s;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int u = __shfl_up_sync(0xffffffffu, si, o);
      if (lane >= o) si += u;
    }
    warp_sums[lane] = si - s;
    if (lane == 31) *total = si;
  }
  __syncthreads();
  const int out = warp_sums[warp] + incl - v;
  __syncthreads();  // (warp_sums may be reused by the caller's next scan)
  return out;
}

// One block of JFA_PLAN_NT threads. Warp w owns the rows of segment w (contiguous, in order):
// 1. each warp counts its rows per work class (cnt[w][c]);
// 2. an exclusive scan over (class descending, warp) gives each warp's first position per class;
// 3. each warp places its rows (stable: a class's rows of one 32-row step by lane order);
//    perm[p] = row, tile_off[p + 1] = its query tiles;
// 4. tile_off is scanned in place (a contiguous run of positions a thread);
// 5. every tile t finds its position by binary search in tile_off and writes its record.
// Outputs: perm [B], tile_off [B + 1], tile_info [>= tile_off[B]] x 8.
template <typename IQ, typename IK>
__global__ void __launch_bounds__(JFA_PLAN_NT, 1) jfa_tile_plan(
    const IQ* __restrict__ q_off, const IK* __restrict__ k_off, int64_t B, int32_t bm,
    int64_t max_seq_len, int32_t* __restrict__ perm, int32_t* __restrict__ tile_off,
    int32_t* __restrict__ tile_info) {
  __shared__ int cnt[JFA_PLAN_NW][JFA_PLAN_NC];
  __shared__ int warp_sums[32];
  __shared__ int total;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int i = tid; i < JFA_PLAN_NW * JFA_PLAN_NC; i += JFA_PLAN_NT) (&cnt[0][0])[i] = 0;
  const int nb = (int)B;
  const int seg = (nb + JFA_PLAN_NW - 1) / JFA_PLAN_NW;
  const int r0 = min(nb, warp * seg), r1 = min(nb, r0 + seg);
  // (class slot: 0 = most work; tiles: query tiles of the row)
  auto slot_of = [&](int r, int& tiles) {
    const int64_t lq = (int64_t)q_off[r + 1] - (int64_t)q_off[r];
    int64_t lk = (int64_t)k_off[r + 1] - (int64_t)k_off[r];
    lk = lk < max_seq_len ? lk : max_seq_len;
    const int64_t nt = (lq + bm - 1) / bm;
    tiles = (int)nt;
    return JFA_PLAN_NC - 1 - work_class(nt * (lk + 1));
  };
  __syncthreads();
  // 1
  for (int base = r0; base < r1; base += 32) {
    const int r = base + lane;
    int tiles, s = JFA_PLAN_NC;  // (lanes past the segment: no class)
    if (r < r1) s = slot_of(r, tiles);
    const unsigned peers = __match_any_sync(0xffffffffu, s);
    if (s < JFA_PLAN_NC && (peers & ((1u << lane) - 1)) == 0) cnt[warp][s] += __popc(peers);
    __syncwarp();
  }
  __syncthreads();
  // 2: entries (c, w) in order c * NW + w, JFA_PLAN_NC * NW / JFA_PLAN_NT = 8 a thread
  {
    constexpr int PER = JFA_PLAN_NC * JFA_PLAN_NW / JFA_PLAN_NT;
    int s = 0;
#pragma unroll
    for (int k = 0; k < PER; ++k) {
      const int e = tid * PER + k;
      s += cnt[e % JFA_PLAN_NW][e / JFA_PLAN_NW];
    }
    int run = block_exclusive_scan(s, warp_sums, &total);
#pragma unroll
    for (int k = 0; k < PER; ++k) {
      const int e = tid * PER + k;
      const int v = cnt[e % JFA_PLAN_NW][e / JFA_PLAN_NW];
      cnt[e % JFA_PLAN_NW][e / JFA_PLAN_NW] = run;
      run += v;
    }
  }
  __syncthreads();
  // 3
  for (int base = r0; base < r1; base += 32) {
    const int r = base + lane;
    int tiles = 0, s = JFA_PLAN_NC;
    if (r < r1) s = slot_of(r, tiles);
    const unsigned peers = __match_any_sync(0xffffffffu, s);
    const unsigned below = peers & ((1u << lane) - 1);
    if (s < JFA_PLAN_NC) {
      const int p = cnt[warp][s] + __popc(below);
      perm[p] = r;
      tile_off[p + 1] = tiles;
    }
    __syncwarp();
    if (s < JFA_PLAN_NC && below == 0) cnt[warp][s] += __popc(peers);
    __syncwarp();
  }
  __syncthreads();
  // 4: positions [a, b) of this thread
  {
    const int per = (nb + JFA_PLAN_NT - 1) / JFA_PLAN_NT;
    const int a = min(nb, tid * per), b = min(nb, a + per);
    int s = 0;
    for (int p = a; p < b; ++p) s += tile_off[p + 1];
    int run = block_exclusive_scan(s, warp_sums, &total);
    for (int p = a; p < b; ++p) {
      run += tile_off[p + 1];
      tile_off[p + 1] = run;
    }
    if (tid == 0) tile_off[0] = 0;
  }
  __syncthreads();
  // 5
  const int ntiles = total;
  for (int t = tid; t < ntiles; t += JFA_PLAN_NT) {
    int lo = 0, hi = nb;  // the last position p with tile_off[p] <= t (its row has tiles)
    while (hi - lo > 1) {
      const int mid = (lo + hi) >> 1;
      if (tile_off[mid] <= t) lo = mid; else hi = mid;
    }
    const int row = perm[lo];
    const int64_t qs = (int64_t)q_off[row], ks = (int64_t)k_off[row];
    put_record(tile_info, t, qs, ks, (int32_t)((int64_t)q_off[row + 1] - qs),
               (int32_t)((int64_t)k_off[row + 1] - ks), tile_off[lo + 1] - 1 - t, row);
  }
}

// tile_info[t] for the tiles t of every row: perm[p] is the p-th row in work order, tile_off[p]
// (cumulative, [B+1]) its first tile.
__global__ void jfa_tile_info(const int64_t* __restrict__ q_off, const int64_t* __restrict__ k_off,
                              const int32_t* __restrict__ perm, const int32_t* __restrict__ tile_off,
                              int64_t B, int32_t* __restrict__ tile_info) {
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < B;
       p += (int64_t)gridDim.x * blockDim.x) {
    const int32_t t0 = tile_off[p], t1 = tile_off[p + 1], row = perm[p];
    const int64_t qs = q_off[row], ks = k_off[row];
    const int32_t lq = (int32_t)(q_off[row + 1] - qs), lk = (int32_t)(k_off[row + 1] - ks);
    for (int32_t t = t0; t < t1; ++t) put_record(tile_info, t, qs, ks, lq, lk, t1 - 1 - t, row);
  }
}
