// Hopper (sm_90a) building blocks: asynchronous warpgroup MMA (wgmma) wrappers, their fences, the
// 128-byte-swizzle shared-memory descriptor and the cp.async loader of that layout, and stmatrix.
// Header-free like common.cuh (include common.cuh first).
//
// Swizzled tiles: a tile of R rows x D columns (16-bit) is stored as D / 64 column panels of
// R rows x 128 bytes; the 16-byte chunk c of row r sits at chunk c ^ (r % 8); panels start
// 1024-byte aligned. K-major descriptors: sw128_desc(panel, 16, 1024), k16 steps +32 bytes inside
// a panel, the next 64 columns one panel (R * 128 bytes) further. MN-major descriptors:
// sw128_desc(tile, R * 128, 1024) (LBO: the panel stride along M / N), 16 rows along K +2048 bytes.
#pragma once

// ---- wgmma wrappers: d = the accumulator fragment of m64nN (N / 2 floats a thread) ------------
// Asm operands 0 .. H - 1 (H = N / 2) are d: JFA_D<H> as C operands, JFA_R<H> in the PTX; each
// wrapper names the PTX of its other operands (OPS: A, B) and of its predicate (P: 1 keeps the
// accumulator, 0 overwrites it).
#define JFA_R0_15 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15"
#define JFA_R16_31 "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
#define JFA_R32_47 "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47"
#define JFA_R48_63 "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
#define JFA_R16 "{" JFA_R0_15 "}"
#define JFA_R32 "{" JFA_R0_15 "," JFA_R16_31 "}"
#define JFA_R64 "{" JFA_R0_15 "," JFA_R16_31 "," JFA_R32_47 "," JFA_R48_63 "}"
#define JFA_D16(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),         \
  "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),           \
  "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define JFA_D32(d) JFA_D16(d), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),    \
  "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),       \
  "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define JFA_D64(d) JFA_D32(d), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),    \
  "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),       \
  "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]),       \
  "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]),       \
  "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define JFA_WGMMA_PTX(PT, N, H, OPS, P, MODE)                                                      \
  "{\n.reg .pred p;\nsetp.ne.b32 p, " P ", 0;\n"                                                   \
  "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PT "." PT " " JFA_R##H ", " OPS ", p, "        \
  MODE ";\n}\n"

// A and B from shared memory, both K-major
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss(float* d, uint64_t da, uint64_t db, int acc);
#define JFA_WGMMA_SS(TT, PT, N, H, OPS, P)                                                         \
  template <>                                                                                      \
  __device__ __forceinline__ void wgmma_ss<TT, N>(float* d, uint64_t da, uint64_t db, int acc) {   \
    asm volatile(JFA_WGMMA_PTX(PT, N, H, OPS, P, "1, 1, 0, 0")                                     \
                 : JFA_D##H(d) : "l"(da), "l"(db), "r"(acc));                                      \
  }
// A (P) from registers, B (V) from shared memory MN-major (transposed); accumulates
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float* d, const uint32_t* a, uint64_t db);
#define JFA_WGMMA_RS(TT, PT, N, H, OPS, P)                                                         \
  template <>                                                                                      \
  __device__ __forceinline__ void wgmma_rs<TT, N>(float* d, const uint32_t* a, uint64_t db) {      \
    asm volatile(JFA_WGMMA_PTX(PT, N, H, OPS, P, "1, 1, 1")                                        \
                 : JFA_D##H(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));     \
  }
// S = Q K^T with Q as the register A operand (fragments as mma.sync's m16n8k16 A), K K-major
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs_k(float* d, const uint32_t* a, uint64_t db, int acc);
#define JFA_WGMMA_RS_K(TT, PT, N, H, OPS, P)                                                       \
  template <>                                                                                      \
  __device__ __forceinline__ void wgmma_rs_k<TT, N>(float* d, const uint32_t* a, uint64_t db,      \
                                                    int acc) {                                     \
    asm volatile(JFA_WGMMA_PTX(PT, N, H, OPS, P, "1, 1, 0")                                        \
                 : JFA_D##H(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db),              \
                   "r"(acc));                                                                      \
  }
// A from shared memory MN-major (transposed), B K-major: dQ^T = K^T dS^T in the backward
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss_ta(float* d, uint64_t da, uint64_t db, int acc);
#define JFA_WGMMA_SS_TA(TT, PT, N, H, OPS, P)                                                      \
  template <>                                                                                      \
  __device__ __forceinline__ void wgmma_ss_ta<TT, N>(float* d, uint64_t da, uint64_t db,           \
                                                     int acc) {                                    \
    asm volatile(JFA_WGMMA_PTX(PT, N, H, OPS, P, "1, 1, 1, 0")                                     \
                 : JFA_D##H(d) : "l"(da), "l"(db), "r"(acc));                                      \
  }
#define JFA_WGMMA_ALL(TT, PT)                                                                      \
  JFA_WGMMA_SS(TT, PT, 32, 16, "%16, %17", "%18")                                                  \
  JFA_WGMMA_SS_TA(TT, PT, 32, 16, "%16, %17", "%18")                                               \
  JFA_WGMMA_SS_TA(TT, PT, 64, 32, "%32, %33", "%34")                                               \
  JFA_WGMMA_SS(TT, PT, 64, 32, "%32, %33", "%34")                                                  \
  JFA_WGMMA_SS(TT, PT, 128, 64, "%64, %65", "%66")                                                 \
  JFA_WGMMA_RS(TT, PT, 64, 32, "{%32,%33,%34,%35}, %36", "%37")                                    \
  JFA_WGMMA_RS(TT, PT, 128, 64, "{%64,%65,%66,%67}, %68", "%69")                                   \
  JFA_WGMMA_RS_K(TT, PT, 32, 16, "{%16,%17,%18,%19}, %20", "%21")                                  \
  JFA_WGMMA_RS_K(TT, PT, 64, 32, "{%32,%33,%34,%35}, %36", "%37")
JFA_WGMMA_ALL(bf16_t, "bf16")
JFA_WGMMA_ALL(f16_t, "f16")

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
template <bool B> struct BoolC { static constexpr bool value = B; };

// Keeps the compiler from moving accumulator reads/writes across wgmma issue/wait.
template <int N> __device__ __forceinline__ void fence_regs(float* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// Shared-memory matrix descriptor, 128-byte swizzle (layout type 1 in bits 62-63).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) |
         ((uint64_t)((sbo >> 4) & 0x3FFF) << 32) | (1ull << 62);
}

// cp.async a ROWS x D tile (global row stride rs; rows >= nvalid zero-filled, reading `safe`) into
// the swizzled panel layout at shared address dst, with NT threads.
template <int ROWS, int NT, int D, typename T>
__device__ __forceinline__ void load_sw(uint32_t dst, const T* src, int64_t rs, int nvalid,
                                        const T* safe, int tid) {
  constexpr int CPR = D / 8, RSTEP = NT / CPR;
  static_assert(NT % CPR == 0 && ROWS % RSTEP == 0 && RSTEP % 8 == 0, "tile shape");
  const int r0 = tid / CPR, c = tid % CPR;
  const uint32_t d0 = dst + (c >> 3) * (ROWS * 128) + r0 * 128 + (((c & 7) ^ (r0 & 7)) << 4);
  const T* p = src + r0 * rs + c * 8;
  const int64_t step = RSTEP * rs;
#pragma unroll
  for (int i = 0; i < ROWS / RSTEP; ++i) {
    const bool ok = r0 + i * RSTEP < nvalid;
    cp_async16(d0 + i * RSTEP * 128, ok ? p : safe, ok);
    p += step;
  }
}

// Four 8x8 16-bit matrices from registers to shared memory, each stored transposed: register j
// of lane l holds (row l / 4, columns 2 (l % 4), + 1) of matrix j (the mma.sync / wgmma
// accumulator pair layout), which lands at (row 2 (l % 4) (+ 1), column l / 4) of the 8 x 8 block
// whose row i starts at the address given by lane 8 j + i.
__device__ __forceinline__ void stsm_x4_t(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2,
                                          uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n"
               ::"r"(addr), "r"(r0), "r"(r1), "r"(r2), "r"(r3) : "memory");
}
