// Layout kernels: jagged -> padded, generic row gather (padded -> jagged, index_select, per-row
// slice), row ids / positions.
//
// Data movement is dtype-agnostic: one item (a row of `values`, prod(inner) * itemsize bytes) is
// `row_vecs` vectors of type Vec (uint4 / uint2 / unsigned / unsigned short / unsigned char), the
// widest that divides the item bytes and the base alignments (chosen on the host). Global indices
// are 64-bit; indices inside one tile are 32-bit.
#include "common.cuh"

#define CJ_LAYOUT_THREADS 256
#define CJ_GATHER_MAX_ITEMS 1024

// A Vec holding the first sizeof(Vec) bytes of the 16-byte padding pattern (lo, hi).
template <typename Vec>
__device__ __forceinline__ Vec make_pad(uint64_t lo, uint64_t hi) {
  union {
    uint64_t u[2];
    Vec v;
  } p;
  p.u[0] = lo;
  p.u[1] = hi;
  return p.v;
}

// ---- jagged -> padded ---------------------------------------------------------------------------
// out[b, j] = src[offsets[b] + j] for j < min(len_b, max_len), else the padding pattern.
// A padded batch row b is max_len * row_vecs vectors; the grid walks tiles (b, chunk) of
// `chunk_vecs` vectors of it: the valid prefix is copied, the rest filled.
template <typename Vec, typename Off>
__global__ void __launch_bounds__(CJ_LAYOUT_THREADS)
to_padded(const Vec* __restrict__ src, const Off* __restrict__ offsets, Vec* __restrict__ out,
          int64_t nrows, int64_t max_len, int64_t row_vecs, int chunk_vecs, int64_t chunks_per_row,
          uint64_t pad_lo, uint64_t pad_hi) {
  const Vec pad = make_pad<Vec>(pad_lo, pad_hi);
  const int64_t row_total = max_len * row_vecs;
  const int64_t ntiles = nrows * chunks_per_row;
  const int nt = blockDim.x;
  for (int64_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
    const int64_t b = tile / chunks_per_row;
    const int64_t e0 = (tile - b * chunks_per_row) * chunk_vecs;
    const int64_t start = (int64_t)__ldg(offsets + b);
    const int64_t len = min((int64_t)__ldg(offsets + b + 1) - start, max_len);
    const int n = (int)min((int64_t)chunk_vecs, row_total - e0);
    const int nv = (int)max((int64_t)0, min(len * row_vecs - e0, (int64_t)n));
    const Vec* __restrict__ s = src + start * row_vecs + e0;
    Vec* __restrict__ o = out + b * row_total + e0;
    int i = threadIdx.x;
    for (; i + 3 * nt < nv; i += 4 * nt) {  // 4 loads in flight per thread
      const Vec v0 = s[i], v1 = s[i + nt], v2 = s[i + 2 * nt], v3 = s[i + 3 * nt];
      o[i] = v0;
      o[i + nt] = v1;
      o[i + 2 * nt] = v2;
      o[i + 3 * nt] = v3;
    }
    for (; i < nv; i += nt) o[i] = s[i];
    for (i = nv + threadIdx.x; i < n; i += nt) o[i] = pad;
  }
}

// The rows [lo, hi) that items [t0, t0 + m) span (m >= 1): the first warp finds the rows of the
// first and last item (32-way searches), the block reads them from s_rows after one barrier.
template <typename Off>
__device__ __forceinline__ void tile_rows(const Off* __restrict__ offsets, int64_t nrows,
                                          int64_t t0, int m, int64_t* s_rows, int64_t& lo,
                                          int64_t& hi) {
  if (threadIdx.x < 32) {
    const int64_t r0 = find_row_warp(offsets, nrows, t0);
    const int64_t r1 = find_row_warp(offsets, nrows, t0 + m - 1);
    if (threadIdx.x == 0) s_rows[0] = r0, s_rows[1] = r1;
  }
  __syncthreads();
  lo = s_rows[0];
  hi = s_rows[1] + 1;
}

// ---- gather rows (jagged output) ----------------------------------------------------------------
// Output item t of row b (out_offsets[b] <= t < out_offsets[b+1]) is source item
//   (row_base ? row_base[b] : 0) + b * row_stride + (t - out_offsets[b]) * item_step.
// padded -> jagged: row_stride = max_len; index_select: row_base = in_offsets[idx];
// per-row slice: row_base = in_offsets[b] + start_b, item_step = the slice step.
// Each tile of `items` output items first resolves the source item of each output item (one
// binary search per item, narrowed to the rows the tile spans) into shared memory, then all
// threads copy vectors.
template <typename Vec, typename Off>
__global__ void __launch_bounds__(CJ_LAYOUT_THREADS)
gather_rows(const Vec* __restrict__ src, Vec* __restrict__ out, const Off* __restrict__ out_offsets,
            int64_t nrows, int64_t total_items, const int64_t* __restrict__ row_base,
            int64_t row_stride, int64_t item_step, int64_t row_vecs, int items) {
  __shared__ int64_t s_src[CJ_GATHER_MAX_ITEMS];
  __shared__ int64_t s_rows[2];
  const int nt = blockDim.x;
  const int rv = (int)row_vecs;
  const int64_t ntiles = (total_items + items - 1) / items;
  for (int64_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
    const int64_t t0 = tile * items;
    const int m = (int)min((int64_t)items, total_items - t0);
    int64_t lo, hi;
    tile_rows(out_offsets, nrows, t0, m, s_rows, lo, hi);
    for (int i = threadIdx.x; i < m; i += nt) {
      const int64_t t = t0 + i;
      const int64_t b = find_row_in(out_offsets, lo, hi, t);
      const int64_t base = (row_base != nullptr ? __ldg(row_base + b) : 0) + b * row_stride;
      s_src[i] = (base + (t - (int64_t)__ldg(out_offsets + b)) * item_step) * row_vecs;
    }
    __syncthreads();
    Vec* __restrict__ o = out + t0 * row_vecs;
    const int n = m * rv;
    int e = threadIdx.x;
    for (; e + 3 * nt < n; e += 4 * nt) {
      Vec v[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int ek = e + k * nt;
        const int i = ek / rv;
        v[k] = src[s_src[i] + (ek - i * rv)];
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) o[e + k * nt] = v[k];
    }
    for (; e < n; e += nt) {
      const int i = e / rv;
      o[e] = src[s_src[i] + (e - i * rv)];
    }
    __syncthreads();  // s_src and s_rows are rewritten by the next tile
  }
}

// ---- gather rows, contiguous segments ------------------------------------------------------------
// The same mapping as gather_rows with item_step = 1, so each output row is ONE contiguous copy.
// Tile k is the flat output vectors [k * chunk_vecs, (k + 1) * chunk_vecs): every warp finds the
// row of the tile's first vector (a 32-way search: 2 dependent loads for 1024 rows, no barrier),
// then the block copies the tile's part of that row and of each following row in turn.
// Only real tiles are launched: the grid covers the output, not nrows x the longest row.
template <typename Vec, typename Off>
__global__ void __launch_bounds__(CJ_LAYOUT_THREADS)
gather_segments(const Vec* __restrict__ src, Vec* __restrict__ out,
                const Off* __restrict__ out_offsets, int64_t nrows, int64_t total_items,
                const int64_t* __restrict__ row_base, int64_t row_stride, int64_t row_vecs,
                int chunk_vecs) {
  const int64_t total_vecs = total_items * row_vecs;
  const int64_t ntiles = (total_vecs + chunk_vecs - 1) / chunk_vecs;
  const int nt = blockDim.x;
  for (int64_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
    int64_t e = tile * chunk_vecs;  // flat output vector
    const int64_t e_end = min(e + chunk_vecs, total_vecs);
    int64_t b = find_row_warp(out_offsets, nrows, e / row_vecs);
    int64_t row_beg = (int64_t)__ldg(out_offsets + b) * row_vecs;
    while (true) {
      const int64_t row_end = (int64_t)__ldg(out_offsets + b + 1) * row_vecs;
      const int64_t seg_end = min(row_end, e_end);
      const int n = (int)(seg_end - e);  // 0 for an empty row
      const int64_t base = (row_base != nullptr ? __ldg(row_base + b) : 0) + b * row_stride;
      const Vec* __restrict__ s = src + base * row_vecs + (e - row_beg);
      Vec* __restrict__ o = out + e;
      for (int i = threadIdx.x; i < n; i += 4 * nt) {  // up to 4 loads in flight per thread
        Vec v[4];
#pragma unroll
        for (int k = 0; k < 4; ++k)
          if (i + k * nt < n) v[k] = s[i + k * nt];
#pragma unroll
        for (int k = 0; k < 4; ++k)
          if (i + k * nt < n) o[i + k * nt] = v[k];
      }
      e = seg_end;
      if (e >= e_end) break;
      ++b;
      row_beg = row_end;
    }
  }
}

// ---- row ids and positions ----------------------------------------------------------------------
// ids[t] = the row b of item t; pos[t] = t - offsets[b]. Either output may be null.
template <typename Off>
__global__ void __launch_bounds__(CJ_LAYOUT_THREADS)
row_ids(const Off* __restrict__ offsets, int64_t nrows, int64_t total_items, Off* __restrict__ ids,
        Off* __restrict__ pos, int items) {
  __shared__ int64_t s_rows[2];
  const int nt = blockDim.x;
  const int64_t ntiles = (total_items + items - 1) / items;
  for (int64_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
    const int64_t t0 = tile * items;
    const int m = (int)min((int64_t)items, total_items - t0);
    int64_t lo, hi;
    tile_rows(offsets, nrows, t0, m, s_rows, lo, hi);
    for (int i = threadIdx.x; i < m; i += nt) {
      const int64_t t = t0 + i;
      const int64_t b = find_row_in(offsets, lo, hi, t);
      if (ids != nullptr) ids[t] = (Off)b;
      if (pos != nullptr) pos[t] = (Off)(t - (int64_t)__ldg(offsets + b));
    }
    __syncthreads();
  }
}
