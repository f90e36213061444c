// Shared helpers of every cujagged kernel family. Header-free on purpose: NVRTC compiles these
// sources with no CUDA toolkit headers at all (fp16/bf16 are 16-bit payloads converted with PTX).
#pragma once

typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;

#define CJ_INF __int_as_float(0x7f800000)

// ---- 16-bit floating-point payloads ------------------------------------------------------------
struct __align__(2) bf16_t { uint16_t bits; };
struct __align__(2) f16_t { uint16_t bits; };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(double x) { return (float)x; }
__device__ __forceinline__ float to_float(bf16_t x) { return __uint_as_float((uint32_t)x.bits << 16); }
__device__ __forceinline__ float to_float(f16_t x) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
}

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_float<double>(float x) { return (double)x; }
template <> __device__ __forceinline__ bf16_t from_float<bf16_t>(float x) {
  bf16_t r;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
  return r;
}
template <> __device__ __forceinline__ f16_t from_float<f16_t>(float x) {
  f16_t r;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
  return r;
}

// Two floats packed into one 32-bit register of two 16-bit values (lo in the low half).
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<bf16_t>(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
template <> __device__ __forceinline__ uint32_t pack2<f16_t>(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// Elementwise max / min of two packed pairs of 16-bit floats (NaN if either is NaN), and the two
// halves of a pair as floats (lo = the element at the lower address).
template <typename T> __device__ __forceinline__ uint32_t max2_nan(uint32_t a, uint32_t b);
template <typename T> __device__ __forceinline__ uint32_t min2_nan(uint32_t a, uint32_t b);
#define CJ_PAIR_OP(NAME, TT, PTX)                                                                \
  template <> __device__ __forceinline__ uint32_t NAME<TT>(uint32_t a, uint32_t b) {           \
    uint32_t d;                                                                                 \
    asm(PTX " %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));                                         \
    return d;                                                                                   \
  }
CJ_PAIR_OP(max2_nan, bf16_t, "max.NaN.bf16x2")
CJ_PAIR_OP(min2_nan, bf16_t, "min.NaN.bf16x2")
CJ_PAIR_OP(max2_nan, f16_t, "max.NaN.f16x2")
CJ_PAIR_OP(min2_nan, f16_t, "min.NaN.f16x2")
#undef CJ_PAIR_OP
template <typename T> __device__ __forceinline__ float lo_float(uint32_t w) {
  T x;
  x.bits = (uint16_t)(w & 0xffffu);
  return to_float(x);
}
template <typename T> __device__ __forceinline__ float hi_float(uint32_t w) {
  T x;
  x.bits = (uint16_t)(w >> 16);
  return to_float(x);
}
template <> __device__ __forceinline__ float lo_float<bf16_t>(uint32_t w) {
  return __uint_as_float(w << 16);
}
template <> __device__ __forceinline__ float hi_float<bf16_t>(uint32_t w) {
  return __uint_as_float(w & 0xffff0000u);
}

// ---- shared memory and cp.async (sm_80+) -------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  uint32_t a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}

// 16 bytes at dst (shared) from the first n (0..16) bytes at src, zeros after them
__device__ __forceinline__ void cp_async16_n(uint32_t dst, const void* src, int n) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n)
               : "memory");
}
// 16-byte global -> shared copy; when !pred nothing is read and the 16 bytes are zero-filled.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  cp_async16_n(dst, src, pred ? 16 : 0);
}
// 4 bytes at dst (shared) from src, or zeros when !pred
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool pred) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
               "r"(pred ? 4 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// 16 bytes from shared memory (address from smem_addr) as a vector type of that size
template <typename W> __device__ __forceinline__ W lds16(uint32_t addr) {
  static_assert(sizeof(W) == 16, "16-byte vector");
  W w;
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(reinterpret_cast<uint32_t*>(&w)[0]), "=r"(reinterpret_cast<uint32_t*>(&w)[1]),
                 "=r"(reinterpret_cast<uint32_t*>(&w)[2]), "=r"(reinterpret_cast<uint32_t*>(&w)[3])
               : "r"(addr) : "memory");
  return w;
}
// one 16-byte global store (p 16-byte aligned): NVVM split a plain uint4 store of values that
// came from inline asm into four 4-byte stores (the sm90 attention epilogue: 4x the L2 sectors)
__device__ __forceinline__ void stg16(void* p, uint4 x) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(x.x), "r"(x.y),
               "r"(x.z), "r"(x.w) : "memory");
}

// ---- jagged indexing ---------------------------------------------------------------------------
// The last b in [lo, hi) with offsets[b] <= t, given offsets[lo] <= t < offsets[hi]: the row of
// item t (empty rows are skipped), searched in the rows [lo, hi) known to hold it.
template <typename Off>
__device__ __forceinline__ int64_t find_row_in(const Off* __restrict__ offsets, int64_t lo,
                                               int64_t hi, int64_t t) {
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) >> 1;
    if ((int64_t)__ldg(offsets + mid) <= t) lo = mid; else hi = mid;
  }
  return lo;
}

// The row b in [0, nrows) of item t; requires 0 <= t < offsets[nrows].
template <typename Off>
__device__ __forceinline__ int64_t find_row(const Off* __restrict__ offsets, int64_t nrows, int64_t t) {
  return find_row_in(offsets, 0, nrows, t);
}

// find_row by a whole warp (all 32 lanes, same t; every lane gets the row): a 32-way search,
// ceil(log32(nrows)) dependent loads instead of log2(nrows) (2 for 1024 rows, 3 for 32768).
template <typename Off>
__device__ __forceinline__ int64_t find_row_warp(const Off* __restrict__ offsets, int64_t nrows,
                                                 int64_t t) {
  const int lane = threadIdx.x & 31;
  int64_t lo = 0, hi = nrows;  // offsets[lo] <= t, the row is in [lo, hi)
  while (hi - lo > 1) {
    const int64_t step = (hi - lo + 31) >> 5;  // probes lo + k * step, k = 0..31
    const int64_t p = lo + lane * step;
    const bool le = p < hi && (int64_t)__ldg(offsets + p) <= t;  // true for lane 0
    const int k = 31 - __clz(__ballot_sync(0xffffffffu, le));
    lo += k * step;
    hi = min(hi, lo + step);
  }
  return lo;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
