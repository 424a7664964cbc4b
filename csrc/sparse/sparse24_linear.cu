// 2:4-sparse linear: y [M, N] = x [M, K] @ W^T + bias, W as (values [N, K/2], meta uint8 [N, K/4]).
// Contracts: sparse_linear_cuda.h. Kernels only; no torch here (compile time).
// Instantiations: 4 tensor-core kernels (2 tile configs x bf16 / f16) + 3 simple ones (dtypes).
//
// ---------------------------------------------------------------------------------------------
// Tensor-core kernel (sparse24_mma_kernel)
//   The sparse operand of mma.sp is A, so the kernel computes the transposed product
//     D [n][m] = sum_k W[n][k] * x[m][k]        (A = W, rows n;  B = x^T, columns m)
//   with mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.{bf16,f16}: each instruction
//   is 16 weight rows x 8 rows of x x 32 inputs; the weight is read in its compressed form (half
//   the bytes) plus the 2-bit metadata. At small M, M is the mma's N dimension: M = 1 uses one of
//   the 8 columns (7/8 of the math wasted) but the weight -- the traffic -- is read once.
//
//   CTA tile: BN weight rows x BM rows of x, K in BK-wide slices (logical inputs). Per slice,
//   global -> shared with 16-byte cp.async.cg (zero-fill outside M / N / K), STAGES slices in
//   flight (commit per slice, wait_group STAGES-2 before use), three tiles per stage:
//     values [BN][BK/2] 16-bit  (row = BK bytes)        chunk c of row r at r*BK + 16*(c ^ swzV(r))
//     meta   [BN][BK/4] bytes   (row = BK/4 bytes)      chunk c of row r at r*BK/4 + 16*(c ^ swzM(r))
//     x      [BM][BK]   16-bit  (row = 2*BK bytes)      chunk c of row r at r*2BK + 16*(c ^ (r & 7))
//   swzV(r) = (r >> 1) & 3 for 64-byte rows, r & 7 for 128-byte rows; swzM(r) = (r >> 2) & 1 for
//   32-byte meta rows, 0 for 16-byte ones. Any 8 consecutive rows (aligned to 8) at one logical
//   chunk then cover all 32 banks (ldmatrix phases conflict-free), and the 32-bit metadata loads
//   below hit 16 distinct banks (the model checks both).
//   Warps: WN x WM x WK. A warp owns kWarpN = BN/WN weight rows (kMT m16 tiles) x kWarpM = BM/WM
//   rows of x (kNT n8 tiles) and the k32 steps ks = wk, wk + WK, ... of each slice (WK > 1 splits
//   a slice's k32 steps between warps: at small M that gives every warp work without a wider N
//   tile; the WK partial sums are added in the epilogue).
//   Two configs (nothing else is templated):
//     Small (M <= 32): BN=32  BM=16  BK=128, 4 warps as 1 x 1 x 4, 6 stages, 54 KiB smem
//                      (per stage 4 KiB values + 1 KiB meta + 4 KiB x); grid N/32 x ceil(M/16).
//     Big   (M > 32):  BN=128 BM=128 BK=64,  8 warps as 2 x 4 x 1, 3 stages, 78 KiB smem,
//                      warp tile 64 x 32 (4 x 4 mma.sp per k32 step).
//   n8 tiles of x past M are skipped (warp-uniform), so M = 1..8 costs one mma.sp per m16 tile.
//
// Fragments (PTX ISA 9.7.14.6, "Matrix Fragments for sparse mma.m16n8k32 with .f16 and .bf16
// types"; groupID g = lane >> 2, threadID_in_group t = lane & 3):
//   A (compressed 16 x 16, i.e. logical 16 x 32): four .b32 regs, two 16-bit values each:
//       r0 = {a0, a1}: row g,     the 2 kept values of logical columns 4t .. 4t+3
//       r1 = {a2, a3}: row g + 8, logical columns 4t .. 4t+3
//       r2 = {a4, a5}: row g,     logical columns 16+4t .. 16+4t+3
//       r3 = {a6, a7}: row g + 8, logical columns 16+4t .. 16+4t+3
//     In the compressed tile (2 values per group of 4) these are compressed columns 2t, 2t+1
//     (r0, r1) and 8+2t, 9+2t (r2, r3): exactly the dense m16n8k16 A fragment of the compressed
//     16 x 16 tile, so one ldmatrix.x4 loads it: matrices q0 = rows 0-7 / chunk c, q1 = rows 8-15
//     / chunk c, q2 = rows 0-7 / chunk c+1, q3 = rows 8-15 / chunk c+1 (c = 2*ks: compressed
//     columns 16ks .. 16ks+15 are bytes 32ks .. 32ks+31 of the values row); lane L gives the
//     address of row (L & 15), chunk c + (L >> 4).
//   B (32 x 8, .col): four .b32 regs r_j = B[8j + 2t .. 8j + 2t + 1][g] = x[g][8j + 2t .. +1]:
//     one ldmatrix.x4 over 8 rows of the x tile, matrix j = 16-byte chunk 4ks + j; lane L gives
//     row (L & 7), chunk 4ks + (L >> 3).
//   C/D (16 x 8 f32): c0 = D[g][2t], c1 = D[g][2t+1], c2 = D[g+8][2t], c3 = D[g+8][2t+1].
//   Metadata (one .b32; sparsity selector 0 = threads t = 0 and 1 of each quad contribute):
//       lane (g, t = 0): bits 4j .. 4j+3   = group j     (logical cols 4j .. 4j+3)  of row g
//                        bits 16+4j ..     = group j                                of row g + 8
//       lane (g, t = 1): the same for groups 4 + j (logical columns 16 + 4j ..), j = 0..3
//     each 4-bit group = (index of the first kept value) | (index of the second) << 2 -- the
//     portable meta byte's low nibble. The metadata figure of the ISA (Figure 122) is an image;
//     this layout is the one the PTX text implies (a thread pair, two 2-bit indices per 4-wide
//     chunk) and the one of CuTe's MMA_Traits<SM80_SPARSE_16x8x32_F16F16F16F16_TN>::ELayout
//     ((T16, V32) -> (M16, K32): thread stride 256 = k + 16 for lane bit 0, 0 for bit 1, 1 = row
//     for lane >> 2; value stride 8 = row + 8 for the upper uint16), MLIR's nvgpu mma.sp 16x8x32
//     integration test (lower 16 bits <- meta[g][lane & 1], upper <- meta[g + 8][lane & 1]) and
//     OpenXLA's Triton sparse-dot lowering. Lanes t = 2, 3 load the same words as t = 0, 1
//     (ignored by the hardware with selector 0).
//     In-kernel conversion: lane (g, t) reads the 4 portable meta bytes of groups 4(t&1) ..
//     4(t&1)+3 of rows g and g + 8 (one 32-bit shared load each) and packs the low nibbles:
//       w &= 0x0F0F0F0F; w = (w | w >> 4) & 0x00FF00FF; w = (w | w >> 8) & 0xFFFF
//     then e = pack(row g) | pack(row g + 8) << 16. With ::ordered_metadata the two indices must
//     be increasing (PTX: other values undefined); a nibble with first >= second -- never written
//     by pack_2_4 -- is replaced by 0b0100 (positions 0, 1) so that no input reaches undefined
//     behaviour (its group's result is then unspecified; the dense reference would differ).
//   (plain `.sp` gives the same SASS on sm_80 / sm_90a, but ptxas advises ::ordered_metadata.)
//   benchmarks/dev/sparse_24_model.py replays the fragments, the metadata and this index
//   arithmetic in numpy.
//
// Epilogue: the accumulators go through shared memory (sparse_common_cuda.cuh store_tile): the
// WK partial tiles are added, bias added, one RNE rounding, 16-byte row-contiguous stores.
//
// Simple kernel (sparse24_simple_kernel, float32 x and any fallback): a warp per (row n of W,
// 8 rows of x); lanes stride over the row's groups (coalesced meta / values), gather the two x
// values per group and row of x through L1, float32 FMA; reduce-scatter at the end.
// ---------------------------------------------------------------------------------------------
#include "sparse/sparse_common_cuda.cuh"

namespace compress {
namespace {

using namespace sparse_detail;

template <int BN_, int BM_, int BK_, int WN_, int WM_, int WK_, int STAGES_, int MIN_BLOCKS_>
struct Sp24Config {
  static constexpr int BN = BN_, BM = BM_, BK = BK_, WN = WN_, WM = WM_, WK = WK_;
  static constexpr int STAGES = STAGES_, kMinBlocks = MIN_BLOCKS_;
  static constexpr int kWarps = WN * WM * WK;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kWarpN = BN / WN;  // weight rows per warp
  static constexpr int kWarpM = BM / WM;  // rows of x per warp
  static constexpr int kMT = kWarpN / 16;
  static constexpr int kNT = kWarpM / 8;
  static constexpr int kKSteps = BK / 32;          // k32 steps per slice
  static constexpr int kKStepsPerWarp = kKSteps / WK;
  static constexpr int kValRow = BK;               // bytes of a values-tile row (BK/2 16-bit)
  static constexpr int kMetaRow = BK / 4;          // bytes of a meta-tile row
  static constexpr int kXRow = 2 * BK;             // bytes of an x-tile row
  static constexpr int kValChunks = kValRow / 16;
  static constexpr int kMetaChunks = kMetaRow / 16;
  static constexpr int kXChunks = kXRow / 16;
  static constexpr int kValBytes = BN * kValRow;
  static constexpr int kMetaBytes = BN * kMetaRow;
  static constexpr int kXBytes = BM * kXRow;
  static constexpr int kStageBytes = kValBytes + kMetaBytes + kXBytes;
  static constexpr int kPipeBytes = STAGES * kStageBytes;
  static constexpr int kRedLd = BN + 4;
  static constexpr int kRedBytes = WK * BM * kRedLd * 4;
  static constexpr int kSmemBytes = kPipeBytes > kRedBytes ? kPipeBytes : kRedBytes;
  // 16-byte copies per thread per slice (the last one predicated when not a whole number)
  static constexpr int kValLoads = (BN * kValChunks + kThreads - 1) / kThreads;
  static constexpr int kMetaLoads = (BN * kMetaChunks + kThreads - 1) / kThreads;
  static constexpr int kXLoads = (BM * kXChunks + kThreads - 1) / kThreads;

  static_assert(BK == 64 || BK == 128, "swizzles are defined for BK = 64 and 128");
  static_assert(kWarpN % 16 == 0 && kWarpM % 8 == 0, "warp tile: m16 x n8 multiples");
  static_assert(kKSteps % WK == 0, "every warp takes the same number of k32 steps");
  static_assert(STAGES >= 2, "pipeline needs at least two stages");
  static_assert(kThreads % kValChunks == 0 && kThreads % kMetaChunks == 0 &&
                    kThreads % kXChunks == 0,
                "a thread's chunk column is the same for all its copies of a tile");
};

using SmallConfig = Sp24Config<32, 16, 128, 1, 1, 4, 6, 1>;
using BigConfig = Sp24Config<128, 128, 64, 2, 4, 1, 3, 2>;
constexpr int kSmallMaxM = 32;

// Byte offsets inside a stage (see the header comment).
template <int BK>
__device__ __forceinline__ uint32_t val_offset(int r, int c) {
  const int s = BK == 64 ? ((r >> 1) & 3) : (r & 7);
  return static_cast<uint32_t>(r * BK + ((c ^ s) << 4));
}
template <int BK>
__device__ __forceinline__ uint32_t meta_offset(int r, int c) {
  const int s = BK == 128 ? ((r >> 2) & 1) : 0;
  return static_cast<uint32_t>(r * (BK / 4) + ((c ^ s) << 4));
}
template <int BK>
__device__ __forceinline__ uint32_t x_offset(int r, int c) {
  return static_cast<uint32_t>(r * (2 * BK) + ((c ^ (r & 7)) << 4));
}

template <int DT>
__device__ __forceinline__ void mma_sp_16832(float (&c)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[4], uint32_t e) {
  if constexpr (DT == kBF16) {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
          "r"(e));
  } else {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
          "r"(e));
  }
}

struct Sp24Args {
  const uint16_t* x;
  const uint16_t* values;
  const uint8_t* meta;
  const float* bias;
  void* out;
  int64_t ldx, ldv, ldm, ldo;
  int M, N, K;
  int m_tiles;  // ceil(M / BM): blockIdx.x = n_tile * m_tiles + m_tile
};

template <class Cfg, int DT>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    sparse24_mma_kernel(const Sp24Args p) {
  constexpr int BK = Cfg::BK, STAGES = Cfg::STAGES, MT = Cfg::kMT, NT = Cfg::kNT;
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = smem_u32(smem);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int m_tile = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.m_tiles));
  const int n_tile = static_cast<int>(blockIdx.x / static_cast<unsigned>(p.m_tiles));
  const int m0 = m_tile * Cfg::BM;
  const int n0 = n_tile * Cfg::BN;
  const int M = p.M, N = p.N, K = p.K;

  // ---- copy assignment. For each tile (CH 16-byte chunks per row), copy j of this thread moves
  // chunk c = tid % CH of row r = tid / CH + j * (kThreads / CH): the chunk column is fixed, so
  // one base pointer and one row step per tile stay live across the K loop (register budget of
  // Big). Rows outside N (M), rows past the tile and chunks at k >= K are zero-filled / skipped.
  constexpr int kVR = Cfg::kThreads / Cfg::kValChunks;   // rows per copy round
  constexpr int kMR = Cfg::kThreads / Cfg::kMetaChunks;
  constexpr int kXR = Cfg::kThreads / Cfg::kXChunks;
  const int v_r0 = tid / Cfg::kValChunks, v_c = tid % Cfg::kValChunks;
  const int e_r0 = tid / Cfg::kMetaChunks, e_c = tid % Cfg::kMetaChunks;
  const int x_r0 = tid / Cfg::kXChunks, x_c = tid % Cfg::kXChunks;
  const uint16_t* v_src = p.values + static_cast<int64_t>(n0 + v_r0) * p.ldv + 8 * v_c;
  const uint8_t* e_src = p.meta + static_cast<int64_t>(n0 + e_r0) * p.ldm + 16 * e_c;
  const uint16_t* x_src = p.x + static_cast<int64_t>(m0 + x_r0) * p.ldx + 8 * x_c;

  auto load_slice = [&](int stage, int kt) {
    const int k0 = kt * BK;
    const uint32_t s = smem_base + stage * Cfg::kStageBytes;
#pragma unroll
    for (int j = 0; j < Cfg::kValLoads; ++j) {
      const int r = v_r0 + j * kVR;
      if (r < Cfg::BN) {
        const bool ok = n0 + r < N && k0 + 16 * v_c < K;  // 8 values = 16 logical inputs
        const uint16_t* src = ok ? v_src + static_cast<int64_t>(j * kVR) * p.ldv + k0 / 2 : p.values;
        cp_async_16(s + val_offset<BK>(r, v_c), src, !ok);
      }
    }
#pragma unroll
    for (int j = 0; j < Cfg::kMetaLoads; ++j) {
      const int r = e_r0 + j * kMR;
      if (r < Cfg::BN) {
        const bool ok = n0 + r < N && k0 + 64 * e_c < K;  // 16 meta bytes = 64 logical inputs
        const uint8_t* src = ok ? e_src + static_cast<int64_t>(j * kMR) * p.ldm + k0 / 4 : p.meta;
        cp_async_16(s + Cfg::kValBytes + meta_offset<BK>(r, e_c), src, !ok);
      }
    }
#pragma unroll
    for (int j = 0; j < Cfg::kXLoads; ++j) {
      const int r = x_r0 + j * kXR;
      if (r < Cfg::BM) {
        const bool ok = m0 + r < M && k0 + 8 * x_c < K;
        const uint16_t* src = ok ? x_src + static_cast<int64_t>(j * kXR) * p.ldx + k0 : p.x;
        cp_async_16(s + Cfg::kValBytes + Cfg::kMetaBytes + x_offset<BK>(r, x_c), src, !ok);
      }
    }
  };

  // ---- this warp's tile and lane addressing (header comment)
  const int wk = warp % Cfg::WK;
  const int wn = (warp / Cfg::WK) % Cfg::WN;
  const int wm = warp / (Cfg::WK * Cfg::WN);
  const int a_row = wn * Cfg::kWarpN + (lane & 15);        // + 16 * mi
  const int a_csel = lane >> 4;                            // chunk 2*ks + a_csel
  const int a_swz = BK == 64 ? ((a_row >> 1) & 3) : (a_row & 7);
  const int x_row = wm * Cfg::kWarpM + (lane & 7);         // + 8 * ni
  const int x_csel = lane >> 3;                            // chunk 4*ks + x_csel
  const int x_swz = x_row & 7;
  const int e_row = wn * Cfg::kWarpN + (lane >> 2);        // meta rows e_row (+ 8) + 16 * mi
  const int e_byte = 4 * (lane & 1);                       // + 8 * ks
  const int e_swz = BK == 128 ? ((e_row >> 2) & 1) : 0;
  const uint32_t a_base = static_cast<uint32_t>(a_row * BK);
  const uint32_t x_base = static_cast<uint32_t>(Cfg::kValBytes + Cfg::kMetaBytes + x_row * 2 * BK);
  const uint32_t e_base = static_cast<uint32_t>(Cfg::kValBytes + e_row * (BK / 4));
  // n8 tiles of x holding at least one row < M (warp-uniform; 0 for a warp entirely past M)
  const int m_left = M - m0 - wm * Cfg::kWarpM;
  const int nt_active = m_left <= 0 ? 0 : (m_left >= Cfg::kWarpM ? NT : (m_left + 7) / 8);

  float acc[MT][NT][4];
#pragma unroll
  for (int mi = 0; mi < MT; ++mi)
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

  // ---- pipeline over the K slices (cuda_common.cuh cp_async_pipeline: the group accounting)
  const int num_kt = (K + BK - 1) / BK;
  cp_async_pipeline<STAGES>(num_kt, load_slice, [&](int stage) {
    if (nt_active == 0) return;

    const uint32_t s = smem_base + stage * Cfg::kStageBytes;
#pragma unroll
    for (int kq = 0; kq < Cfg::kKStepsPerWarp; ++kq) {
      const int ks = kq * Cfg::WK + wk;
      uint32_t af[MT][4];
      uint32_t ef[MT];
      const uint32_t e_off = static_cast<uint32_t>(((((8 * ks + e_byte) >> 4) ^ e_swz) << 4) +
                                                   ((8 * ks + e_byte) & 15));
#pragma unroll
      for (int mi = 0; mi < MT; ++mi) {
        ldsm_x4(s + a_base + mi * 16 * BK + (((2 * ks + a_csel) ^ a_swz) << 4), af[mi]);
        const uint32_t er = s + e_base + mi * 16 * (BK / 4) + e_off;
        ef[mi] = meta_fragment(lds_u32(er), lds_u32(er + 8 * (BK / 4)));
      }
#pragma unroll
      for (int ni = 0; ni < NT; ++ni) {
        if (ni < nt_active) {  // one B fragment live at a time (register pressure of Big)
          uint32_t bf[4];
          ldsm_x4(s + x_base + ni * 8 * 2 * BK + (((4 * ks + x_csel) ^ x_swz) << 4), bf);
#pragma unroll
          for (int mi = 0; mi < MT; ++mi) mma_sp_16832<DT>(acc[mi][ni], af[mi], bf, ef[mi]);
        }
      }
    }
  });
  __syncthreads();  // every warp is done with the pipeline's smem before it becomes `red`

  // ---- epilogue: partial tiles -> smem -> (sum of the WK parts + bias) -> out
  float* red = reinterpret_cast<float*>(smem) + wk * Cfg::BM * Cfg::kRedLd;
#pragma unroll
  for (int mi = 0; mi < MT; ++mi)
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
      acc_to_smem<Cfg::kRedLd>(red, acc[mi][ni], wn * Cfg::kWarpN + mi * 16,
                               wm * Cfg::kWarpM + ni * 8, lane);
  __syncthreads();
  store_tile<DT, Cfg::BM, Cfg::BN, Cfg::WK, Cfg::kThreads>(reinterpret_cast<const float*>(smem),
                                                          p.bias, p.out, p.ldo, m0, n0, M, N, tid);
}

template <class Cfg, int DT>
cudaError_t launch_mma(const Sp24Args& a0, cudaStream_t stream) {
  Sp24Args a = a0;
  a.m_tiles = (a.M + Cfg::BM - 1) / Cfg::BM;
  const int64_t n_tiles = (a.N + Cfg::BN - 1) / Cfg::BN;
  const int64_t grid = n_tiles * a.m_tiles;
  if (grid > 0x7fffffff) return cudaErrorInvalidValue;
  auto* kernel = &sparse24_mma_kernel<Cfg, DT>;
  if (Cfg::kSmemBytes > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (e != cudaSuccess) return e;
  }
  kernel<<<dim3(static_cast<unsigned>(grid)), dim3(Cfg::kThreads), Cfg::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

// ---- simple kernel ----------------------------------------------------------------------------

constexpr int kSimpleThreads = 256;
constexpr int kSimpleRows = 8;  // rows of x per warp

template <int DT>
__global__ void __launch_bounds__(kSimpleThreads)
    sparse24_simple_kernel(const void* x_, int64_t ldx, const void* values_, int64_t ldv,
                           const uint8_t* __restrict__ meta, int64_t ldm,
                           const float* __restrict__ bias, void* out_, int64_t ldo, int M, int N,
                           int K, int64_t total_warps) {
  using E = Elem<DT>;
  using Raw = typename E::Raw;
  const Raw* __restrict__ x = static_cast<const Raw*>(x_);
  const Raw* __restrict__ values = static_cast<const Raw*>(values_);
  Raw* __restrict__ out = static_cast<Raw*>(out_);
  const int lane = threadIdx.x & 31;
  const int64_t G = K / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * (kSimpleThreads / 32);
  // warp item w -> (row n = w % N, chunk = w / N): consecutive warps take consecutive rows of W
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * (kSimpleThreads / 32) + (threadIdx.x >> 5);
       w < total_warps; w += stride) {
    const int64_t n = w % N;
    const int m0 = static_cast<int>(w / N) * kSimpleRows;
    const int mc = M - m0 < kSimpleRows ? M - m0 : kSimpleRows;
    float acc[kSimpleRows];
#pragma unroll
    for (int j = 0; j < kSimpleRows; ++j) acc[j] = 0.f;
    const uint8_t* mrow = meta + n * ldm;
    const Raw* vrow = values + n * ldv;
    for (int64_t grp = lane; grp < G; grp += 32) {
      const uint32_t mb = __ldg(mrow + grp);
      const int64_t k0 = 4 * grp;
      const int64_t k_a = k0 + (mb & 3), k_b = k0 + ((mb >> 2) & 3);
      const float v0 = E::to_f(vrow[2 * grp]), v1 = E::to_f(vrow[2 * grp + 1]);
#pragma unroll
      for (int j = 0; j < kSimpleRows; ++j) {
        if (j < mc) {
          const Raw* xr = x + static_cast<int64_t>(m0 + j) * ldx;
          acc[j] = fmaf(v1, E::to_f(xr[k_b]), fmaf(v0, E::to_f(xr[k_a]), acc[j]));
        }
      }
    }
    const int idx = ReduceScatter<kSimpleRows>::run(acc, lane);
    if (ReduceScatter<kSimpleRows>::store_lane(lane) && idx < mc) {
      const float b = bias != nullptr ? __ldg(bias + n) : 0.f;
      out[static_cast<int64_t>(m0 + idx) * ldo + n] = E::from_f(acc[0] + b);
    }
  }
}

template <int DT>
cudaError_t launch_simple(const void* x, int64_t ldx, const void* values, int64_t ldv,
                          const uint8_t* meta, int64_t ldm, const float* bias, void* out,
                          int64_t ldo, int M, int N, int K, cudaStream_t stream) {
  const int64_t total_warps = static_cast<int64_t>(N) * ((M + kSimpleRows - 1) / kSimpleRows);
  const int64_t blocks_needed = (total_warps + kSimpleThreads / 32 - 1) / (kSimpleThreads / 32);
  const unsigned blocks = static_cast<unsigned>(blocks_needed < 65535 * 8 ? blocks_needed : 65535 * 8);
  sparse24_simple_kernel<DT><<<blocks, kSimpleThreads, 0, stream>>>(
      x, ldx, values, ldv, meta, ldm, bias, out, ldo, M, N, K, total_warps);
  return cudaGetLastError();
}

bool bad_sizes(int M, int N, int K) {
  constexpr int kMax = 0x7fffffff - 1024;
  return M < 0 || N < 0 || K < 0 || M > kMax || N > kMax || K > kMax;
}

bool misaligned(const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a != 0; }

}  // namespace

cudaError_t sparse24_linear_mma(const void* x, int64_t ldx, const void* values, int64_t ldv,
                                const uint8_t* meta, int64_t ldm, const float* bias, void* out,
                                int64_t ldo, SparseDtype dtype, int M, int N, int K,
                                cudaStream_t stream) {
  if (bad_sizes(M, N, K)) return cudaErrorInvalidValue;
  if (dtype != SparseDtype::kBFloat16 && dtype != SparseDtype::kFloat16) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  if (K % kSparse24KAlign != 0) return cudaErrorInvalidValue;
  if (out == nullptr || misaligned(out, 2) || (M > 1 && ldo < N) || ldo < 0) return cudaErrorInvalidValue;
  if (misaligned(bias, 4)) return cudaErrorInvalidValue;
  if (K > 0) {
    if (x == nullptr || values == nullptr || meta == nullptr) return cudaErrorInvalidValue;
    if (misaligned(x, 16) || misaligned(values, 16) || misaligned(meta, 16)) return cudaErrorInvalidValue;
    if ((M > 1 && (ldx % 8 != 0 || ldx < 0)) || (N > 1 && (ldv % 8 != 0 || ldv < 0 || ldm % 16 != 0 || ldm < 0)))
      return cudaErrorInvalidValue;
  }
  Sp24Args a{static_cast<const uint16_t*>(x), static_cast<const uint16_t*>(values), meta, bias, out,
             ldx, ldv, ldm, ldo, M, N, K, 1};
  const bool small = M <= kSmallMaxM;
  if (dtype == SparseDtype::kBFloat16)
    return small ? launch_mma<SmallConfig, kBF16>(a, stream) : launch_mma<BigConfig, kBF16>(a, stream);
  return small ? launch_mma<SmallConfig, kF16>(a, stream) : launch_mma<BigConfig, kF16>(a, stream);
}

cudaError_t sparse24_linear_simple(const void* x, int64_t ldx, const void* values, int64_t ldv,
                                   const uint8_t* meta, int64_t ldm, const float* bias, void* out,
                                   int64_t ldo, SparseDtype dtype, int M, int N, int K,
                                   cudaStream_t stream) {
  if (bad_sizes(M, N, K) || K % 4 != 0) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  const uintptr_t es = dtype == SparseDtype::kFloat32 ? 4 : 2;
  if (out == nullptr || misaligned(out, es) || (M > 1 && ldo < N) || ldo < 0) return cudaErrorInvalidValue;
  if (misaligned(bias, 4) || ldx < 0 || ldv < 0 || ldm < 0) return cudaErrorInvalidValue;
  if (K > 0 && (x == nullptr || values == nullptr || meta == nullptr || misaligned(x, es) ||
                misaligned(values, es)))
    return cudaErrorInvalidValue;
  switch (dtype) {
    case SparseDtype::kFloat32:
      return launch_simple<kF32>(x, ldx, values, ldv, meta, ldm, bias, out, ldo, M, N, K, stream);
    case SparseDtype::kBFloat16:
      return launch_simple<kBF16>(x, ldx, values, ldv, meta, ldm, bias, out, ldo, M, N, K, stream);
    case SparseDtype::kFloat16:
      return launch_simple<kF16>(x, ldx, values, ldv, meta, ldm, bias, out, ldo, M, N, K, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace compress
