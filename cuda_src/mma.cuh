// Tensor-core building blocks (sm_80+): ldmatrix loads and mma.sync (m16n8k16 bf16/fp16, m16n8k8
// TF32) with fp32 accumulation, as thin PTX wrappers (cp.async: common.cuh). Header-free like
// common.cuh.
#pragma once

__device__ __forceinline__ void ldsm_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                        uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                          uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

// One k-step of 32 bytes per row: c (16x8) += a (16 x k, row) * b (k x 8, col), fp32 accumulators.
// 16-bit T: m16n8k16; float: m16n8k8 on TF32 (operands already rounded with to_tf32). The
// fragments have the same byte layout in both cases, so ldmatrix loads A and B for either.
template <typename T> __device__ __forceinline__ void mma_step(float* c, const uint32_t* a,
                                                             uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma_step<bf16_t>(float* c, const uint32_t* a,
                                                            uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma_step<f16_t>(float* c, const uint32_t* a,
                                                           uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma_step<float>(float* c, const uint32_t* a,
                                                           uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two fp32 accumulator tiles of m16n8 (n-tiles 2 c and 2 c + 1) rounded to 16 bits as the A
// fragment of m16n8k16 for k = 16 c .. 16 c + 15 (the C and A layouts line up row for row)
template <typename T>
__device__ __forceinline__ void acc_to_a(const float* c0, const float* c1, uint32_t* a) {
  a[0] = pack2<T>(c0[0], c0[1]);
  a[1] = pack2<T>(c0[2], c0[3]);
  a[2] = pack2<T>(c1[0], c1[1]);
  a[3] = pack2<T>(c1[2], c1[3]);
}

// fp32 bits -> TF32 (round to nearest, ties away from zero; the low 13 bits cleared)
__device__ __forceinline__ uint32_t to_tf32(uint32_t x) {
  uint32_t y;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(y) : "f"(__uint_as_float(x)));
  return y;
}
__device__ __forceinline__ uint32_t to_tf32(float x) { return to_tf32(__float_as_uint(x)); }

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
