// int8 x int8 -> int32 GEMM "TN" on Hopper (sm_90a): wgmma.mma_async + TMA. Same contract as
// int8_gemm.cu's int8_gemm_tn / int8_gemm_tn_dequant (int8_gemm.h), same two epilogues
// (int8_gemm_common.cuh); kernels only, no torch here.
//
// NOT YET RUN ON A GPU: written and checked offline only (compiles for sm_80 + sm_90a, the sm_90a
// SASS holds the int8 GMMA and UTMALDG instructions, ptxas reports no spills, and
// benchmarks/dev/int8_gemm_sm90_model.py replays the swizzle / descriptor / fragment arithmetic
// in numpy against matmuls). The glue (int8_operands.h: use_int8_gemm_sm90) only calls it on a
// device of compute capability 9.0 whose kernel image holds this sm_90a code, and
// COMPRESS_INT8_SM90=0 switches it off at run time.
//
// ---------------------------------------------------------------------------------------------
// Design
//   One CTA (288 threads) computes a BM x BN = 128 x 128 tile of C:
//     warps 0-3  consumer warpgroup 0: rows  0..63 of the tile, one wgmma m64n128k32 per k32 step
//     warps 4-7  consumer warpgroup 1: rows 64..127
//     warp 8     producer: lane 0 issues the TMA loads, the other lanes exit at once.
//   K is walked in BK = 128-byte slices, kStages slices in flight. Per stage s two mbarriers:
//     full[s]   count 1: the producer's arrive.expect_tx(stage bytes); the two TMA loads
//               (A box 128 rows x 128 B, Bt box 128 rows x 128 B) complete_tx on it.
//     empty[s]  count 8: lane 0 of each consumer warp arrives once the wgmmas that read stage s
//               are complete (wgmma.wait_group 1 after committing the next slice).
//   Use u of stage s (slice kt = u * kStages + s) completes phase u of both barriers, so a
//   consumer waits full[s] with parity u & 1 and the producer, before refilling s for use u >= 1,
//   waits empty[s] with parity (u - 1) & 1.
//   Accumulators: 64 int32 registers per thread (m64n128 s32 / 128 threads), zeroed up front;
//   every wgmma accumulates (scale-d = 1). Exact: int32 sums, no .satfinite (wraps like int32).
//   Why 128 x 128 and no setmaxnreg: the dequant epilogue keeps 2 x 32 per-column floats next to
//   the 64 accumulators; with 288 threads ptxas may use up to 224 registers per thread, so no
//   register reallocation between producer and consumers is needed. A 128 x 256 tile (128
//   accumulators) would need setmaxnreg and a column-chunked epilogue: later work, once this
//   one has been measured.
//
// Tails. TMA zero-fills every box element outside the tensor (rows >= M or N, bytes >= K), and
// still counts the whole box toward complete_tx, so the expected byte count is constant. The
// tensor maps are [rows, K] with row stride lda / ldb bytes: bytes K..ld-1 of a row are never
// read, as int8_gemm.h promises. The epilogue stores are bounds-checked.
//
// Shared memory (dynamic; base rounded up to 1024 B, the 128B-swizzle pattern period):
//   stage s: A tile [128][128 B] at s * 32 KiB, Bt tile [128][128 B] at s * 32 KiB + 16 KiB.
//   TMA with CU_TENSOR_MAP_SWIZZLE_128B writes box row r (128 bytes) to bytes r*128..r*128+127
//   with its 16-byte chunk c at chunk position c ^ (r & 7) (address bits [4:6] ^= bits [7:9]).
//   The mbarriers are static __shared__ (see int8_gemm_sm90_supported for why).
//
// wgmma operands (PTX ISA "Shared Memory Matrix Layout" / "Matrix Descriptor Format"): both K-major
// (required for 8-bit types), 128B swizzle, one swizzle atom = 8 rows x 128 B = 1024 B.
//   descriptor = start addr >> 4 (bits 0-13) | LBO 1 (bits 16-29: unused for swizzled K-major,
//                "assumed 1") | SBO 1024 >> 4 (bits 32-45: 8-row group to 8-row group) |
//                base offset 0 (bits 49-51: atoms start 1024-aligned) | swizzle 1 = 128B (62-63)
//   k32 step j of a slice: start = tile base + 32 j (+ 64 rows * 128 B = 8 KiB for warpgroup 1's
//   A rows). The hardware forms the unswizzled address start + (row / 8) * SBO + (row % 8) * 128
//   + k and applies the same XOR as TMA, so it reads exactly what TMA wrote.
//
// Accumulator fragment (PTX ISA, wgmma "Register Fragments", D of m64nNk32 .s32): warp w of the
// warpgroup owns rows 16w..16w+15; lane 4g+t holds d[4i+0], d[4i+1] = D[16w+g][8i+2t, 8i+2t+1]
// and d[4i+2], d[4i+3] = D[16w+g+8][same columns], i = 0..N/8-1. That is, per warp, exactly the
// mma.sync m16n8k32 C layout of int8_gemm.cu for one m16 tile and N/8 n8 tiles, so the shared
// epilogue store_tile<1, N/8> stores it unchanged (acc[0][i][e] = d[4i+e]).
// ---------------------------------------------------------------------------------------------
#include <cuda.h>  // CUtensorMap and its enums (types only: nothing links libcuda)
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "cuda_common.cuh"  // smem_u32
#include "int8_gemm.h"
#include "int8_gemm_common.cuh"
#include "sm90_common.cuh"

namespace compress {
namespace {

using namespace cuda_common;
using namespace int8_common;
using namespace sm90;

constexpr int kBM = 128, kBN = 128, kBK = 128;  // BK in bytes = int8 elements
constexpr int kStages = 6;                       // 6 x 32 KiB in flight; 1 CTA per SM
constexpr int kConsumerWarpgroups = 2;           // kBM / 64
constexpr int kConsumerWarps = 4 * kConsumerWarpgroups;
constexpr int kThreads = 32 * kConsumerWarps + 32;  // + the producer warp
constexpr int kTileBytesA = kBM * kBK;
constexpr int kTileBytesB = kBN * kBK;
constexpr int kStageBytes = kTileBytesA + kTileBytesB;
constexpr int kSmemBytes = kStages * kStageBytes + 1024;  // + slack to align the base to 1024
static_assert(kBK == 128, "one 128-byte swizzle row per tile row");
static_assert(kBM == 64 * kConsumerWarpgroups, "one m64 wgmma row block per consumer warpgroup");
static_assert(kTileBytesA % 1024 == 0 && kStageBytes % 1024 == 0, "tiles on 1024-byte atoms");

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

constexpr int kNTiles = kBN / 8;  // n8 column groups per wgmma (accumulator fragment)

// Keeps the compiler from moving accesses to the accumulators across wgmma issue / wait (the
// registers are written asynchronously between the two).
__device__ __forceinline__ void fence_acc(int32_t (&acc)[1][kNTiles][4]) {
#pragma unroll
  for (int i = 0; i < kNTiles; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(acc[0][i][e])::"memory");
}

#define COMPRESS_ACC4(i) \
  "+r"(d[0][i][0]), "+r"(d[0][i][1]), "+r"(d[0][i][2]), "+r"(d[0][i][3])

// d (m64 x n128, s32) += A (m64 x k32, s8, smem desc_a) * B (k32 x n128, s8, smem desc_b).
// d[0][i][e] is the PTX fragment register d[4i + e].
__device__ __forceinline__ void wgmma_m64n128k32_s8(int32_t (&d)[1][kNTiles][4], uint64_t desc_a,
                                                    uint64_t desc_b) {
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  setp.ne.b32 p, 1, 0;\n"  // scale-d = true: D = A * B + D
      "  wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p;\n"
      "}\n"
      : COMPRESS_ACC4(0), COMPRESS_ACC4(1), COMPRESS_ACC4(2), COMPRESS_ACC4(3), COMPRESS_ACC4(4),
        COMPRESS_ACC4(5), COMPRESS_ACC4(6), COMPRESS_ACC4(7), COMPRESS_ACC4(8), COMPRESS_ACC4(9),
        COMPRESS_ACC4(10), COMPRESS_ACC4(11), COMPRESS_ACC4(12), COMPRESS_ACC4(13),
        COMPRESS_ACC4(14), COMPRESS_ACC4(15)
      : "l"(desc_a), "l"(desc_b)
      : "memory");
}
#undef COMPRESS_ACC4
static_assert(kNTiles == 16, "wgmma_m64n128k32_s8 lists 64 accumulator registers");

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// ---- the kernel -----------------------------------------------------------------------------
// grid.x walks M tiles (fastest: CTAs in flight together share Bt tiles in L2), grid.y N tiles.
// tmap_a: A as [M rows, K bytes], box 128 x 128; tmap_b: Bt as [N rows, K bytes], box 128 x 128.
template <class Epi>
__global__ void __launch_bounds__(kThreads, 1)
    int8_gemm_tn_sm90_kernel(const __grid_constant__ CUtensorMap tmap_a,
                             const __grid_constant__ CUtensorMap tmap_b, int M, int N, int K,
                             const Epi epi) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // full[s] = bars[s], empty[s] = bars[kStages + s]. Static, so that this (sm_90a) body is the
  // only one with static shared memory: the host tells it from the __trap() stub that way.
  __shared__ __align__(8) uint64_t bars[2 * kStages];
  extern __shared__ uint8_t smem_raw[];
  const uint32_t tiles = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t full0 = smem_u32(&bars[0]);
  const uint32_t empty0 = smem_u32(&bars[kStages]);

  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int m0 = blockIdx.x * kBM;
  const int n0 = blockIdx.y * kBN;
  const int num_kt = (K + kBK - 1) / kBK;

  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, kConsumerWarps);
    }
    // Make the initialized barriers visible to the async proxy (TMA complete_tx).
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();  // the last CTA-wide barrier: the producer warp leaves early below

  if (warp == kConsumerWarps) {
    // ---- producer: one thread issues every TMA load of this CTA.
    if (lane == 0) {
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&tmap_a))
                   : "memory");
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&tmap_b))
                   : "memory");
      for (int kt = 0; kt < num_kt; ++kt) {
        const int s = kt % kStages;
        const int use = kt / kStages;
        if (use > 0) mbar_wait(empty0 + 8 * s, (use - 1) & 1);  // consumers done with use - 1
        const uint32_t full = full0 + 8 * s;
        const uint32_t a_dst = tiles + s * kStageBytes;
        mbar_arrive_expect_tx(full, kStageBytes);  // whole boxes, zero-filled parts included
        tma_load_2d(a_dst, &tmap_a, kt * kBK, m0, full);
        tma_load_2d(a_dst + kTileBytesA, &tmap_b, kt * kBK, n0, full);
      }
    }
    return;
  }

  // ---- consumers: warpgroup wg computes tile rows 64 wg .. 64 wg + 63.
  const int wg = warp >> 2;
  int32_t acc[1][kNTiles][4];
#pragma unroll
  for (int i = 0; i < kNTiles; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[0][i][e] = 0;

  for (int kt = 0; kt < num_kt; ++kt) {
    const int s = kt % kStages;
    mbar_wait(full0 + 8 * s, (kt / kStages) & 1);
    const uint32_t a_tile = tiles + s * kStageBytes + wg * (64 * kBK);
    const uint32_t b_tile = tiles + s * kStageBytes + kTileBytesA;
    fence_acc(acc);
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < kBK / 32; ++j)
      wgmma_m64n128k32_s8(acc, sw128_desc(a_tile + 32 * j), sw128_desc(b_tile + 32 * j));
    wgmma_commit();
    // Slice kt may still run; slice kt - 1 has finished reading its stage: hand it back.
    wgmma_wait<1>();
    fence_acc(acc);
    if (kt > 0 && lane == 0) mbar_arrive(empty0 + 8 * ((kt - 1) % kStages));
  }
  wgmma_wait<0>();
  fence_acc(acc);

  // ---- epilogue: this warp's 16 rows x 128 columns, the mma.sync C layout (see the top).
  store_tile(epi, acc, m0 + 64 * wg + 16 * (warp & 3), n0, lane, M, N);
#else
  __trap();  // sm_80 / sm_90 (non-a) images: the host never launches this (int8_gemm_sm90_supported)
#endif
}

// ---- host side --------------------------------------------------------------------------------

// [rows, K] int8 with row stride ld bytes, boxes of box_rows x kBK, 128B swizzle, zero fill.
cudaError_t encode_operand(CUtensorMap* map, const int8_t* ptr, int rows, int K, int64_t ld,
                           int box_rows) {
  const auto encode = sm90::encode_tiled();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(K), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld)};  // bytes, of dim 1
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(kBK), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2,
                            const_cast<void*>(static_cast<const void*>(ptr)), dims, strides, box,
                            elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

// TMA's own requirements on top of check_gemm_args: row strides a positive multiple of 16 bytes
// below 2^40 (a single row still needs one: the glue passes K there). Base alignment (16 B) and
// K % 16 == 0 are already int8_gemm.h preconditions.
bool tma_strides_ok(int64_t lda, int64_t ldb) {
  constexpr int64_t kMaxStride = int64_t{1} << 40;
  return lda > 0 && ldb > 0 && lda < kMaxStride && ldb < kMaxStride;
}

template <class Epi>
cudaError_t launch_sm90(const int8_t* A, const int8_t* Bt, int M, int N, int K, int64_t lda,
                        int64_t ldb, const Epi& epi, cudaStream_t stream) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  if (!int8_gemm_sm90_supported(dev)) return cudaErrorNotSupported;
  if (!tma_strides_ok(lda, ldb)) return cudaErrorInvalidValue;
  const unsigned grid_m = static_cast<unsigned>((M + kBM - 1) / kBM);
  const unsigned grid_n = static_cast<unsigned>((N + kBN - 1) / kBN);
  if (grid_n > 65535u) return cudaErrorInvalidValue;

  CUtensorMap tmap_a, tmap_b;
  if ((e = encode_operand(&tmap_a, A, M, K, lda, kBM)) != cudaSuccess) return e;
  if ((e = encode_operand(&tmap_b, Bt, N, K, ldb, kBN)) != cudaSuccess) return e;

  auto* kernel = &int8_gemm_tn_sm90_kernel<Epi>;
  // Per device and cheap; set on every launch as int8_gemm.cu does.
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (e != cudaSuccess) return e;
  kernel<<<dim3(grid_m, grid_n, 1), dim3(kThreads, 1, 1), kSmemBytes, stream>>>(tmap_a, tmap_b, M,
                                                                              N, K, epi);
  return cudaGetLastError();
}

}  // namespace

bool int8_gemm_sm90_supported(int device) {
  // Cached per device (compute capability and kernel image do not change within a process).
  constexpr int kMaxDevices = 64;
  static std::atomic<int8_t> cache[kMaxDevices];  // 0 unknown, 1 yes, 2 no
  if (device < 0 || device >= kMaxDevices) return false;
  const int8_t known = cache[device].load(std::memory_order_relaxed);
  if (known != 0) return known == 1;

  bool ok = false;
  int major = 0, minor = 0, prev = -1;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess &&
      major == 9 && minor == 0 && sm90::encode_tiled() != nullptr &&
      cudaGetDevice(&prev) == cudaSuccess && cudaSetDevice(device) == cudaSuccess) {
    // The image the runtime picked for this device must be the sm_90a one: an sm_90 (non-a)
    // cubin or PTX JIT-compiled from compute_80 / compute_90 holds the __trap() stub. Only the
    // sm_90a body declares static shared memory (its mbarriers), so sharedSizeBytes tells them
    // apart without running anything.
    cudaFuncAttributes a32{}, adq{};
    ok = cudaFuncGetAttributes(&a32, &int8_gemm_tn_sm90_kernel<Int32Store>) == cudaSuccess &&
         cudaFuncGetAttributes(&adq, &int8_gemm_tn_sm90_kernel<DequantStore>) == cudaSuccess &&
         a32.binaryVersion == 90 && adq.binaryVersion == 90 && a32.sharedSizeBytes > 0 &&
         adq.sharedSizeBytes > 0;
    cudaSetDevice(prev);
  }
  cudaGetLastError();  // clear any error left by a failed query: it only means "no"
  cache[device].store(ok ? 1 : 2, std::memory_order_relaxed);
  return ok;
}

cudaError_t int8_gemm_tn_sm90(const int8_t* A, const int8_t* Bt, int32_t* C, int M, int N, int K,
                              int64_t lda, int64_t ldb, int64_t ldc, cudaStream_t stream) {
  bool nothing = false;
  const cudaError_t e = check_int32_gemm(A, Bt, C, M, N, K, lda, ldb, ldc, &nothing);
  if (e != cudaSuccess || nothing) return e;
  if (K == 0) return int8_gemm_tn(A, Bt, C, M, N, K, lda, ldb, ldc, stream);
  return launch_sm90(A, Bt, M, N, K, lda, ldb, Int32Store{C, ldc, false}, stream);
}

cudaError_t int8_gemm_tn_dequant_sm90(const int8_t* A, const int8_t* Bt, void* out,
                                      Int8OutDtype out_dtype, const float* x_scale,
                                      const float* w_scale, const float* bias, int M, int N,
                                      int K, int64_t lda, int64_t ldb, int64_t ldo,
                                      cudaStream_t stream) {
  bool nothing = false;
  const cudaError_t e = check_dequant_gemm(A, Bt, out, out_dtype, x_scale, w_scale, bias, M, N, K,
                                           lda, ldb, ldo, &nothing);
  if (e != cudaSuccess || nothing) return e;
  if (K == 0)
    return int8_gemm_tn_dequant(A, Bt, out, out_dtype, x_scale, w_scale, bias, M, N, K, lda, ldb,
                                ldo, stream);
  const DequantStore epi{out, x_scale, w_scale, bias, ldo, static_cast<int>(out_dtype)};
  return launch_sm90(A, Bt, M, N, K, lda, ldb, epi, stream);
}

}  // namespace compress
