// int8 x int8 -> int32 GEMM, "TN": C[M, N] = A[M, K] * Bt[N, K]^T, on sm_80+ tensor cores.
// Contract and preconditions: int8_gemm.h. Kernels only; no torch here (compile time).
//
// ---------------------------------------------------------------------------------------------
// Design
//   One CTA computes a BM x BN tile of C, marching over K in BK-wide slices. Each slice of A
//   ([BM][BK] bytes) and Bt ([BN][BK] bytes) is copied global -> shared with 16-byte
//   cp.async.cg (no register staging), STAGES slices in flight (multistage pipeline:
//   commit_group per slice, wait_group STAGES-2 before use). Warps own a kWarpM x kWarpN
//   sub-tile; per k32 step they pull fragments with ldmatrix.x4 and issue
//   mma.sync.m16n8k32.row.col.s32.s8.s8.s32 (exact int32 accumulation). The epilogue stores
//   the accumulators straight from registers, bounds-checked.
//
//   Epilogues (int8_gemm_common.cuh, shared with int8_gemm_sm90.cu): the kernel's second template
//   argument, a small struct passed as a kernel parameter; the main loop is shared:
//     Int32Store    C = acc as int32, or C += acc with atomicAdd (split-K)   (int8_gemm_tn)
//     DequantStore  out = ((float(acc) * x_scale[m]) * w_scale[n]) + bias[n] (int8_gemm_tn_dequant)
//                   output dtype (f32 / bf16 / f16) and bias-present are RUNTIME switches inside
//                   it (one warp-uniform branch per tile), so each config has just 2 kernels.
//
//   Two tile configs (compile time matters; nothing else is templated), x 2 epilogues = 4 kernels
//   (+ int8_dequant_kernel, the split-K epilogue of int8_gemm_tn_dequant):
//     Big   BM=128 BN=128 BK=64,  8 warps as 2 (M) x 4 (N), warp tile 64x32, 4 stages, 64 KiB smem
//     Small BM=16  BN=32  BK=128, 2 warps as 1 x 2,          warp tile 16x16, 6 stages, 36 KiB smem
//   The small one serves M <= 32 (decode-like): it cuts N finely (4096 columns -> 128 CTAs)
//   and keeps ~20 KiB of Bt in flight per CTA.
//
//   Split-K (Small only): a small-M grid of few CTAs leaves most SMs idle while the weight
//   streams through a handful of them. splitk_plan() then cuts K into S splits (grid.z = S, each
//   k_split bytes of K, a multiple of BK, the last one shorter; none empty), so that the grid
//   fills about two waves of resident CTAs; S = 1 (no split) when the M x N tiles alone fill
//   more than one wave, when K has fewer than 2 * kMinSplitTiles BK-slices, or when
//   COMPRESS_INT8_SPLITK=0. Each CTA runs the unchanged main loop over its split (its start and
//   length are runtime kernel arguments: no extra instantiation) and adds its partial int32
//   tile into a buffer zeroed first (cudaMemsetAsync) with atomicAdd (Int32Store::atomic_add).
//   Why atomics and not a [S, M, N] workspace + reduction kernel: integer addition is associative
//   and commutative (also modulo 2^32, as the mma accumulation wraps), so the sum is bit-exact and
//   the same on every run whatever the order the splits land in; it needs only [M, N] int32
//   (int8_gemm_tn: C itself) and no reduction kernel. The atomics per CTA (BM x BN) are small
//   next to its loads (>= kMinSplitTiles x BN x BK bytes of Bt). int8_gemm_tn_dequant sums into a
//   caller-provided [M, N] int32 workspace, then int8_dequant_kernel applies the DequantStore
//   epilogue (same dequant() / OutTraits code, hence bit-identical to the unsplit path).
//   NOT RUN ON A GPU YET: written and checked offline only (compiled for sm_80 / sm_90a, ptxas -v,
//   benchmarks/dev/int8_gemm_model.py replays the split ranges and tails); tests in
//   tests/test_int8_mm.py / test_int8_linear.py (test_cuda_splitk*) run it on a GPU.
//
// ---------------------------------------------------------------------------------------------
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k32", .s8; lane = 4*g + t with
// groupID g = lane >> 2, threadID_in_group t = lane & 3; "bytes x..y" below are listed low byte
// of the .b32 register first):
//   A (16x32, .row):  a[0] = A[g    ][ 4t ..  4t+3]     a[1] = A[g + 8][ 4t ..  4t+3]
//                     a[2] = A[g    ][16+4t..16+4t+3]   a[3] = A[g + 8][16+4t..16+4t+3]
//   B (32x8,  .col):  b[0] = B[4t ..  4t+3][g]     = Bt[g][ 4t ..  4t+3]
//                     b[1] = B[16+4t..16+4t+3][g]  = Bt[g][16+4t..16+4t+3]
//   C/D (16x8 s32):   c[0] = C[g][2t]  c[1] = C[g][2t+1]  c[2] = C[g+8][2t]  c[3] = C[g+8][2t+1]
// ldmatrix.sync.aligned.m8n8.x4.shared.b16 (PTX ISA, "ldmatrix"): lanes 8q..8q+7 give the row
// addresses of matrix q (row i = lane 8q+i), each row 8 b16 = 16 contiguous bytes; register q of
// lane L receives row L/4 of matrix q, b16 elements 2(L%4), 2(L%4)+1 = bytes 4(L%4)..4(L%4)+3,
// lowest address in the low byte (little-endian). Viewed as int8 that is exactly
// "row g, bytes 4t..4t+3", i.e. the A and B fragments above, when the matrices are chosen as:
//   A tile rows r0..r0+15, k-chunks (16 bytes) c, c+1:
//     q=0: rows r0+0..7, chunk c     -> a[0]      lane L: row r0 + (L & 15),
//     q=1: rows r0+8..15, chunk c    -> a[1]              chunk c + (L >> 4)
//     q=2: rows r0+0..7, chunk c+1   -> a[2]
//     q=3: rows r0+8..15, chunk c+1  -> a[3]
//   Bt tile rows (n) n0..n0+15 = two n8 tiles, k-chunks c, c+1:
//     q=0: n0+0..7, chunk c    -> b[0] of n-tile 0     lane L: row n0 + (L & 7) + 8 (L >> 4),
//     q=1: n0+0..7, chunk c+1  -> b[1] of n-tile 0             chunk c + ((L >> 3) & 1)
//     q=2: n0+8..15, chunk c   -> b[0] of n-tile 1
//     q=3: n0+8..15, chunk c+1 -> b[1] of n-tile 1
//   (benchmarks/dev/int8_gemm_model.py replays this in numpy; int8_linear_model.py the dequant
//   epilogue's fragment -> (m, n) mapping, vector-store alignment and float32 op order.)
//
// Shared-memory tile layout (A and Bt alike): row r of a [rows][BK] int8 tile starts at byte
// r*BK; its logical 16-byte chunk c (k = 16c..16c+15) sits at physical chunk c ^ swz(r), with
// swz(r) = (r >> 1) & 3 for BK = 64 and r & 7 for BK = 128. Any 8 consecutive rows (aligned to
// 8) at one logical chunk then cover all 32 banks once (ldmatrix phases conflict-free), and the
// cp.async stores of 8 consecutive threads fill one 128-byte line (conflict-free too).
// swz(r + 16) == swz(r), so a lane's swizzle is fixed across its m16 / n16 tiles.
// ---------------------------------------------------------------------------------------------
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cuda_common.cuh"
#include "int8_gemm.h"
#include "int8_gemm_common.cuh"

namespace compress {
namespace {

template <int BM_, int BN_, int BK_, int WARPS_M_, int WARPS_N_, int STAGES_, int MIN_BLOCKS_>
struct Int8GemmConfig {
  static constexpr int BM = BM_, BN = BN_, BK = BK_;
  static constexpr int WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, STAGES = STAGES_;
  static constexpr int kMinBlocks = MIN_BLOCKS_;
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  static constexpr int kWarpM = BM / WARPS_M;  // warp tile rows
  static constexpr int kWarpN = BN / WARPS_N;  // warp tile cols
  static constexpr int kMTiles = kWarpM / 16;  // m16 tiles per warp
  static constexpr int kNTiles = kWarpN / 8;   // n8 tiles per warp (even: one ldmatrix.x4 per pair)
  static constexpr int kKSteps = BK / 32;      // k32 mma steps per slice
  static constexpr int kChunks = BK / 16;      // 16-byte chunks per smem row
  static constexpr int kStageBytesA = BM * BK;
  static constexpr int kStageBytesB = BN * BK;
  static constexpr int kStageBytes = kStageBytesA + kStageBytesB;
  static constexpr int kSmemBytes = STAGES * kStageBytes;
  static constexpr int kLoadsA = BM * kChunks / kThreads;  // 16-byte copies per thread per slice
  static constexpr int kLoadsB = BN * kChunks / kThreads;

  static_assert(BK == 64 || BK == 128, "swizzle is defined for 64- and 128-byte rows");
  static_assert(BM % (16 * WARPS_M) == 0, "warp tile rows: a multiple of 16");
  static_assert(BN % (16 * WARPS_N) == 0, "warp tile cols: a multiple of 16 (n8 pairs)");
  static_assert((BM * kChunks) % kThreads == 0 && (BN * kChunks) % kThreads == 0,
                "every thread issues the same number of copies");
  static_assert(kThreads % kChunks == 0, "a thread's chunk column is the same for all its copies");
  static_assert(STAGES >= 2, "pipeline needs at least two stages");
};

using BigConfig = Int8GemmConfig<128, 128, 64, 2, 4, 4, 2>;
using SmallConfig = Int8GemmConfig<16, 32, 128, 1, 2, 6, 1>;
constexpr int kSmallMaxM = 32;  // M <= this uses SmallConfig
// Split-K (SmallConfig only, see the header comment): a split holds at least this many BK-slices,
// so a CTA's BM x BN atomics stay small next to its loads and its pipeline gets some depth;
// at most kMaxSplits splits. Heuristic numbers, not tuned on a GPU.
constexpr int kMinSplitTiles = 4;
constexpr int kMaxSplits = 64;

// ---- PTX wrappers (smem_u32, cp_async_commit / wait, ldsm_x4: cuda_common.cuh) ----------------

// 16-byte async copy global -> shared (L2 only, .cg). With `zero_fill` the source is ignored and
// 16 zero bytes are written (the "ignore-src" predicate operand, PTX ISA 7.5, sm_80); `src` is
// then a valid dummy address all the same.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool zero_fill) {
  const size_t gsrc = __cvta_generic_to_global(src);
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  setp.ne.b32 p, %2, 0;\n"
      "  cp.async.cg.shared.global [%0], [%1], 16, p;\n"
      "}\n" ::"r"(dst),
      "l"(gsrc), "r"(static_cast<int>(zero_fill))
      : "memory");
}

// c += A(16x32, a[0..3]) * B(32x8, b0, b1), s8 x s8 -> s32, exact (no .satfinite: wraps).
__device__ __forceinline__ void mma_s8_16832(int32_t (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Byte offset of logical (row r, 16-byte chunk c) inside a [rows][BK] swizzled tile.
template <int BK>
__device__ __forceinline__ int swz(int r) {
  return BK == 64 ? ((r >> 1) & 3) : (r & 7);
}
template <int BK>
__device__ __forceinline__ uint32_t tile_offset(int r, int c) {
  return static_cast<uint32_t>(r * BK + ((c ^ swz<BK>(r)) << 4));
}

// Copy assignment of one operand tile ([rows][BK], LOADS 16-byte copies per thread per slice),
// fixed across K slices: copy j of this thread moves chunk tid % CH of tile row
// r = (tid + j * kThreads) / CH, i.e. row row0 + r of the operand (row stride ld), from byte k_begin
// of the CTA's K range on, to dst0 + tile_offset(r, chunk) of a stage. Rows at or past `rows` (M or
// N) are zero-filled (ok false; src then a valid dummy address).
template <class Cfg, int LOADS>
__device__ __forceinline__ void plan_copies(const int8_t* base, int row0, int rows, int64_t ld,
                                            int k_begin, int tid, uint32_t dst0,
                                            const int8_t* (&src)[LOADS], uint32_t (&dst)[LOADS],
                                            bool (&ok)[LOADS]) {
  constexpr int CH = Cfg::kChunks;
  const int chunk = tid % CH;
#pragma unroll
  for (int j = 0; j < LOADS; ++j) {
    const int r = (tid + j * Cfg::kThreads) / CH;
    ok[j] = row0 + r < rows;
    src[j] = ok[j] ? base + static_cast<int64_t>(row0 + r) * ld + k_begin + chunk * 16 : base;
    dst[j] = dst0 + tile_offset<Cfg::BK>(r, chunk);
  }
}

using namespace cuda_common;  // smem_u32, cp_async_commit / wait, ldsm_x4
using namespace int8_common;  // epilogues and argument checks: int8_gemm_common.cuh

// ---- the kernel -----------------------------------------------------------------------------
// grid.x walks M tiles (fastest, so CTAs in flight together share Bt tiles in L2), grid.y N tiles,
// grid.z K splits: CTA z sums k in [z * k_split, min(K, (z + 1) * k_split)). k_split is a multiple
// of BK, or >= K when gridDim.z == 1; the launcher never launches an empty split.
// Epi: Int32Store or DequantStore (the store_tile overload the epilogue calls).
template <class Cfg, class Epi>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    int8_gemm_tn_kernel(const int8_t* __restrict__ A, const int8_t* __restrict__ Bt, int M, int N,
                        int K, int64_t lda, int64_t ldb, int k_split, const Epi epi) {
  constexpr int BK = Cfg::BK, STAGES = Cfg::STAGES, CH = Cfg::kChunks;
  constexpr int MT = Cfg::kMTiles, NT = Cfg::kNTiles;

  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = smem_u32(smem);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int m0 = blockIdx.x * Cfg::BM;
  const int n0 = blockIdx.y * Cfg::BN;
  // This CTA's K range: from here on the split is a GEMM of its own, K = k_len bytes starting
  // k_begin bytes into every row (k_begin a multiple of BK, k_len a multiple of 16, 0 < k_len
  // unless K == 0).
  const int k_begin = static_cast<int>(blockIdx.z) * k_split;
  const int k_len = min(K - k_begin, k_split);

  // ---- copy assignment (plan_copies). Chunks at k >= k_len are zero-filled as well.
  const int ld_chunk = tid % CH;
  const int8_t* a_src[Cfg::kLoadsA];
  uint32_t a_dst[Cfg::kLoadsA];
  bool a_ok[Cfg::kLoadsA];
  plan_copies<Cfg>(A, m0, M, lda, k_begin, tid, 0u, a_src, a_dst, a_ok);
  const int8_t* b_src[Cfg::kLoadsB];
  uint32_t b_dst[Cfg::kLoadsB];
  bool b_ok[Cfg::kLoadsB];
  plan_copies<Cfg>(Bt, n0, N, ldb, k_begin, tid, Cfg::kStageBytesA, b_src, b_dst, b_ok);

  // Issue the copies of K slice kt (of this CTA's K range) into pipeline stage `stage`.
  auto load_slice = [&](int stage, int kt) {
    const int k0 = kt * BK;
    const bool k_ok = k0 + ld_chunk * 16 < k_len;  // k_len % 16 == 0: a chunk is all in or out
    const uint32_t s = smem_base + stage * Cfg::kStageBytes;
#pragma unroll
    for (int j = 0; j < Cfg::kLoadsA; ++j) {
      const bool ok = a_ok[j] && k_ok;
      cp_async_16(s + a_dst[j], ok ? a_src[j] + k0 : A, !ok);
    }
#pragma unroll
    for (int j = 0; j < Cfg::kLoadsB; ++j) {
      const bool ok = b_ok[j] && k_ok;
      cp_async_16(s + b_dst[j], ok ? b_src[j] + k0 : Bt, !ok);
    }
  };

  // ---- warp tile and ldmatrix lane addressing (see the header comment)
  const int warp_m = warp % Cfg::WARPS_M;
  const int warp_n = warp / Cfg::WARPS_M;
  const int wm0 = warp_m * Cfg::kWarpM;
  const int wn0 = warp_n * Cfg::kWarpN;
  const int a_row = wm0 + (lane & 15);                  // + 16 * mi
  const int a_csel = lane >> 4;                         // chunk 2*ks + a_csel
  const int b_row = wn0 + (lane & 7) + ((lane >> 4) << 3);  // + 16 * pair
  const int b_csel = (lane >> 3) & 1;                   // chunk 2*ks + b_csel
  const uint32_t a_row_off = static_cast<uint32_t>(a_row * BK);
  const uint32_t b_row_off = static_cast<uint32_t>(Cfg::kStageBytesA + b_row * BK);
  const int a_swz = swz<BK>(a_row);
  const int b_swz = swz<BK>(b_row);

  int32_t acc[MT][NT][4];
#pragma unroll
  for (int mi = 0; mi < MT; ++mi)
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0;

  // ---- pipeline over the K slices: cuda_common.cuh cp_async_pipeline's loop (and group
  // accounting), written out here because the lambda form let nvcc 12 reschedule the Big config's
  // main loop (same instructions and registers, another order): not worth it unmeasured.
  const int num_kt = (k_len + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < num_kt) load_slice(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < num_kt; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    {
      const int next = kt + STAGES - 1;
      if (next < num_kt) load_slice(next % STAGES, next);
      cp_async_commit();
    }

    const uint32_t s = smem_base + (kt % STAGES) * Cfg::kStageBytes;
#pragma unroll
    for (int ks = 0; ks < Cfg::kKSteps; ++ks) {
      uint32_t af[MT][4];
      uint32_t bf[NT][2];
#pragma unroll
      for (int mi = 0; mi < MT; ++mi) {
        const uint32_t addr =
            s + a_row_off + mi * 16 * BK + (((2 * ks + a_csel) ^ a_swz) << 4);
        ldsm_x4(addr, af[mi][0], af[mi][1], af[mi][2], af[mi][3]);
      }
#pragma unroll
      for (int p = 0; p < NT / 2; ++p) {
        const uint32_t addr = s + b_row_off + p * 16 * BK + (((2 * ks + b_csel) ^ b_swz) << 4);
        ldsm_x4(addr, bf[2 * p][0], bf[2 * p][1], bf[2 * p + 1][0], bf[2 * p + 1][1]);
      }
#pragma unroll
      for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int ni = 0; ni < NT; ++ni) mma_s8_16832(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
    }
  }
  cp_async_wait<0>();  // only empty groups can remain; drain them before the CTA may exit

  // ---- epilogue: c[0], c[1] -> row g, cols 2t, 2t+1; c[2], c[3] -> row g+8, same cols.
  store_tile(epi, acc, m0 + wm0, n0 + wn0, lane, M, N);
}

// Split-K epilogue of int8_gemm_tn_dequant: out[m, n] = dequant(acc[m, n]) over the summed int32
// accumulator acc [M, N] (row stride N), with dequant_tile's op order and rounding (the same
// dequant() / OutTraits code): bit-identical to the unsplit path. One thread per element, grid
// (ceil(N / kEpiThreads), M); M <= kSmallMaxM.
constexpr int kEpiThreads = 256;

template <int DT>
__device__ __forceinline__ void dequant_store(const DequantStore& p, int32_t acc, int m, int n) {
  using Tr = OutTraits<DT>;
  const bool has_bias = p.bias != nullptr;
  const float v = dequant(acc, __ldg(p.x_scale + m), __ldg(p.w_scale + n),
                          has_bias ? __ldg(p.bias + n) : 0.f, has_bias);
  static_cast<typename Tr::T*>(p.out)[static_cast<int64_t>(m) * p.ldo + n] = Tr::cvt(v);
}

__global__ void __launch_bounds__(kEpiThreads)
    int8_dequant_kernel(const int32_t* __restrict__ acc, int N, const DequantStore p) {
  const int m = blockIdx.y;
  const int n = blockIdx.x * kEpiThreads + threadIdx.x;
  if (n >= N) return;
  const int32_t a = acc[static_cast<int64_t>(m) * N + n];
  switch (p.out_dtype) {  // uniform over the grid
    case static_cast<int>(Int8OutDtype::kBFloat16):
      dequant_store<static_cast<int>(Int8OutDtype::kBFloat16)>(p, a, m, n);
      break;
    case static_cast<int>(Int8OutDtype::kFloat16):
      dequant_store<static_cast<int>(Int8OutDtype::kFloat16)>(p, a, m, n);
      break;
    default:
      dequant_store<static_cast<int>(Int8OutDtype::kFloat32)>(p, a, m, n);
      break;
  }
}

struct SplitK {
  int splits;   // grid.z
  int k_split;  // bytes of K per split: a multiple of BK, or K when splits == 1
};

template <class Cfg, class Epi>
cudaError_t launch(const int8_t* A, const int8_t* Bt, int M, int N, int K, int64_t lda,
                   int64_t ldb, const Epi& epi, SplitK split, cudaStream_t stream) {
  const unsigned grid_m = static_cast<unsigned>((M + Cfg::BM - 1) / Cfg::BM);
  const unsigned grid_n = static_cast<unsigned>((N + Cfg::BN - 1) / Cfg::BN);
  if (grid_n > 65535u || split.splits < 1 || split.splits > kMaxSplits) return cudaErrorInvalidValue;
  auto* kernel = &int8_gemm_tn_kernel<Cfg, Epi>;
  if (Cfg::kSmemBytes > 48 * 1024) {
    // Per device and cheap; set on every launch so a new device / context needs no bookkeeping.
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (e != cudaSuccess) return e;
  }
  kernel<<<dim3(grid_m, grid_n, static_cast<unsigned>(split.splits)), dim3(Cfg::kThreads, 1, 1),
           Cfg::kSmemBytes, stream>>>(A, Bt, M, N, K, lda, ldb, split.k_split, epi);
  return cudaGetLastError();
}

template <class Epi>
cudaError_t launch_for_m(const int8_t* A, const int8_t* Bt, int M, int N, int K, int64_t lda,
                         int64_t ldb, const Epi& epi, cudaStream_t stream) {
  const SplitK one{1, K};
  if (M <= kSmallMaxM) return launch<SmallConfig>(A, Bt, M, N, K, lda, ldb, epi, one, stream);
  return launch<BigConfig>(A, Bt, M, N, K, lda, ldb, epi, one, stream);
}

// The split-K choice, pure arithmetic (benchmarks/dev/int8_gemm_model.py replays it: splitk_plan).
// wave: SmallConfig CTAs resident at once on the whole GPU (SMs x CTAs per SM). As many splits as
// keep the grid within about two waves, at most num_kt / kMinSplitTiles and kMaxSplits; then the
// BK-slices per split are rounded up and the split count recomputed, so no split is empty
// ((splits - 1) * tiles < num_kt) and the last one takes the remainder (and K's 16-byte tail).
SplitK splitk_plan(int M, int N, int K, int wave) {
  const SplitK one{1, K};
  if (M > kSmallMaxM) return one;
  constexpr int BK = SmallConfig::BK;
  const int num_kt = (K + BK - 1) / BK;
  const int64_t ctas = static_cast<int64_t>((M + SmallConfig::BM - 1) / SmallConfig::BM) *
                       ((N + SmallConfig::BN - 1) / SmallConfig::BN);
  int64_t want = 2 * static_cast<int64_t>(wave) / ctas;
  if (want > num_kt / kMinSplitTiles) want = num_kt / kMinSplitTiles;
  if (want > kMaxSplits) want = kMaxSplits;
  if (want < 2) return one;
  const int tiles = static_cast<int>((num_kt + want - 1) / want);
  const int splits = (num_kt + tiles - 1) / tiles;
  return splits < 2 ? one : SplitK{splits, tiles * BK};
}

// The split-K dispatch for M <= kSmallMaxM. COMPRESS_INT8_SPLITK=0 (environment, read per call)
// switches split-K off, for tests and benchmarks (any other value, or unset: on). The device's
// wave (SMs x resident SmallConfig CTAs per SM) is queried once per device and cached.
cudaError_t choose_splitk(int M, int N, int K, SplitK* split) {
  *split = SplitK{1, K};
  if (M > kSmallMaxM || (K + SmallConfig::BK - 1) / SmallConfig::BK < 2 * kMinSplitTiles)
    return cudaSuccess;
  const char* env = std::getenv("COMPRESS_INT8_SPLITK");
  if (env != nullptr && std::strcmp(env, "0") == 0) return cudaSuccess;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached_wave[kMaxDevices];  // static storage: zero (= unknown) at start
  int wave = dev < kMaxDevices ? cached_wave[dev].load(std::memory_order_relaxed) : 0;
  if (wave <= 0) {
    int sms = 0, per_sm = 0;
    e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (e == cudaSuccess)
      e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &per_sm, int8_gemm_tn_kernel<SmallConfig, Int32Store>, SmallConfig::kThreads,
          SmallConfig::kSmemBytes);
    if (e != cudaSuccess) return e;
    wave = sms * per_sm > 0 ? sms * per_sm : 1;
    if (dev < kMaxDevices) cached_wave[dev].store(wave, std::memory_order_relaxed);
  }
  *split = splitk_plan(M, N, K, wave);
  return cudaSuccess;
}

// Zero the [M, N] int32 matrix C (row stride ldc) on `stream`, before the split-K atomics.
cudaError_t zero_int32(int32_t* C, int M, int N, int64_t ldc, cudaStream_t stream) {
  if (M == 1 || ldc == N)
    return cudaMemsetAsync(C, 0, static_cast<size_t>(M) * N * sizeof(int32_t), stream);
  return cudaMemset2DAsync(C, static_cast<size_t>(ldc) * sizeof(int32_t), 0,
                           static_cast<size_t>(N) * sizeof(int32_t), static_cast<size_t>(M),
                           stream);
}

}  // namespace

cudaError_t int8_gemm_tn(const int8_t* A, const int8_t* Bt, int32_t* C, int M, int N, int K,
                         int64_t lda, int64_t ldb, int64_t ldc, cudaStream_t stream) {
  bool nothing = false;
  const cudaError_t e = check_int32_gemm(A, Bt, C, M, N, K, lda, ldb, ldc, &nothing);
  if (e != cudaSuccess || nothing) return e;

  SplitK split;
  cudaError_t es = choose_splitk(M, N, K, &split);
  if (es != cudaSuccess) return es;
  if (split.splits > 1) {  // C = 0, then every split adds its partial sums
    es = zero_int32(C, M, N, ldc, stream);
    if (es != cudaSuccess) return es;
    return launch<SmallConfig>(A, Bt, M, N, K, lda, ldb, Int32Store{C, ldc, true}, split, stream);
  }
  return launch_for_m(A, Bt, M, N, K, lda, ldb, Int32Store{C, ldc, false}, stream);
}

size_t int8_gemm_tn_dequant_workspace_bytes(int M, int N, int K) {
  if (M <= 0 || N <= 0 || K <= 0) return 0;
  SplitK split;
  if (choose_splitk(M, N, K, &split) != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: the launch will then simply not split
    return 0;
  }
  return split.splits > 1 ? static_cast<size_t>(M) * N * sizeof(int32_t) : 0;
}

cudaError_t int8_gemm_tn_dequant(const int8_t* A, const int8_t* Bt, void* out,
                                 Int8OutDtype out_dtype, const float* x_scale,
                                 const float* w_scale, const float* bias, int M, int N, int K,
                                 int64_t lda, int64_t ldb, int64_t ldo, cudaStream_t stream,
                                 void* workspace, size_t workspace_bytes) {
  bool nothing = false;
  const cudaError_t e = check_dequant_gemm(A, Bt, out, out_dtype, x_scale, w_scale, bias, M, N, K,
                                           lda, ldb, ldo, &nothing);
  if (e != cudaSuccess || nothing) return e;

  const DequantStore epi{out, x_scale, w_scale, bias, ldo, static_cast<int>(out_dtype)};
  SplitK split;
  cudaError_t es = choose_splitk(M, N, K, &split);
  if (es != cudaSuccess) return es;
  if (split.splits > 1 && workspace != nullptr) {
    const size_t need = static_cast<size_t>(M) * N * sizeof(int32_t);
    if (workspace_bytes < need || (reinterpret_cast<uintptr_t>(workspace) & 3) != 0)
      return cudaErrorInvalidValue;
    int32_t* acc = static_cast<int32_t*>(workspace);
    es = zero_int32(acc, M, N, N, stream);
    if (es != cudaSuccess) return es;
    es = launch<SmallConfig>(A, Bt, M, N, K, lda, ldb, Int32Store{acc, N, true}, split, stream);
    if (es != cudaSuccess) return es;
    const dim3 grid(static_cast<unsigned>((N + kEpiThreads - 1) / kEpiThreads),
                    static_cast<unsigned>(M), 1);
    int8_dequant_kernel<<<grid, dim3(kEpiThreads, 1, 1), 0, stream>>>(acc, N, epi);
    return cudaGetLastError();
  }
  return launch_for_m(A, Bt, M, N, K, lda, ldb, epi, stream);
}

}  // namespace compress
