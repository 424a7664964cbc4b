// 2:4-sparse linear on Hopper (sm_90a): y [M, N] = x [M, K] @ W^T + bias, W as (values [N, K/2],
// meta uint8 [N, K/4]); the large-M path of sparse24_linear. Contract: sparse_linear_cuda.h
// (sparse24_linear_sm90). Kernels only; no torch here (compile time). 2 instantiations (bf16, f16).
//
// NOT RUN ON A GPU YET: written and checked on a machine without one (nvcc for sm_80 + sm_90a,
// SASS shows the sparse GMMA instruction, no spills; benchmarks/dev/sparse_24_sm90_model.py
// replays the TMA swizzle, the descriptors, the metadata registers and the accumulator mapping
// against numpy). The first H100 run decides; tests/test_sparse_ops.py has the cases
// (test_sparse24_sm90_*), and COMPRESS_SPARSE24_SM90=0 switches the path off (glue).
//
// ---------------------------------------------------------------------------------------------
// As in sparse24_linear.cu the sparse operand is A = W, so the kernel computes the transpose
//   D [n][m] = sum_k W[n][k] * x[m][k]
// with wgmma.mma_async.sp.sync.aligned.m64n128k32.f32.{bf16,f16} (PTX ISA 9.7.15.6, "Asynchronous
// Warpgroup Level Multiply-and-Accumulate Operation using wgmma.mma_async.sp"): A = 64 weight
// rows x 32 logical inputs, stored compressed (64 x 16 elements) in shared memory and read
// through a matrix descriptor; B = 128 rows of x x 32 inputs, K-major in shared memory (a
// descriptor); the 2-bit metadata in one register per thread; D = 64 x 128 f32 in registers.
//
// CTA tile: BN = 128 weight rows x BM = 128 rows of x, K in BK = 128 logical inputs per slice.
// 384 threads = 3 warpgroups: WG0 is the producer (one thread issues the TMA loads; the other
// 127 only join the epilogue), WG1 / WG2 the consumers, each owning 64 weight rows x all 128 rows
// of x (64 f32 accumulators per thread). Nothing is warp-specialized beyond that: at 64
// accumulators the consumers fit the 168 registers that 384 threads leave (no setmaxnreg).
//
// Loads: TMA (cp.async.bulk.tensor.2d + mbarrier complete_tx), three 2-D tensor maps made per
// call on the host (cuTensorMapEncodeTiled through cudaGetDriverEntryPointByVersion, passed as
// __grid_constant__ parameters). TMA works for all three operands because the metadata never
// goes to the tensor core from shared memory: each consumer thread reads its metadata words with
// ld.shared and builds the register (the same conversion as the sm_80 kernel, meta_fragment in
// sparse_common_cuda.cuh), so the meta tile can stay in the stored byte layout (no prepacked
// copy of the weight, nothing cached). Stage layout (1024-byte aligned; 52 KiB; 4 stages):
//   x0     [128 rows m][64 k]   16-bit, 128-byte rows, SWIZZLE_128B   (inputs k0 .. k0+63)
//   x1     [128 rows m][64 k]   16-bit, 128-byte rows, SWIZZLE_128B   (inputs k0+64 .. k0+127)
//   values [128 rows n][64]     16-bit, 128-byte rows, SWIZZLE_128B   (compressed cols k0/2 ..)
//   meta   [128 rows n][32]     bytes, 32-byte rows, no swizzle       (meta bytes k0/4 ..)
// SWIZZLE_128B: 16-byte chunk c of row r lands at chunk c ^ (r & 7) of its 128-byte row, the
// layout the descriptors' 128-byte swizzle mode reads (both are Swizzle<3,4,3> on the byte
// address inside 1024-byte aligned 8-row atoms). Boxes past N / M / K are zero-filled by TMA
// (OOB fill NONE = zeros), so no tail handling in the main loop: zero values and zero x add
// nothing, and zero meta nibbles (invalid for the hardware) are turned into 0b0100 by
// meta_fragment. The transaction count is always the full box (TMA writes the zero fill).
//
// Descriptors (PTX ISA "Matrix Descriptor Format": start address >> 4 in bits 0-13, leading
// byte offset >> 4 in 16-29, stride byte offset >> 4 in 32-45, base offset 49-51 = 0 since
// every tile is 1024-byte aligned, layout type in 62-63 = 1 for the 128-byte swizzle), K-major,
// SBO = 1024 bytes (the next 8-row group), LBO unused for swizzled K-major layouts (set to 1):
//   A of consumer c, k32 step ks (0..3): values + 64c * 128 + 32 ks   (16 compressed elements =
//     32 bytes of each row: the compressed 64 x 16 tile is an ordinary K-major 16-bit matrix, the
//     same bytes a dense m64nNk16 A operand would have)
//   B, k32 step ks: x(ks >> 1) + 64 (ks & 1)   (32 inputs = 64 bytes of each 128-byte row)
//   Start offsets of 32 / 64 bytes inside a swizzle atom are how K advances in a 128-byte
//   swizzled K-major tile (the hardware applies the XOR to the computed address).
//
// Metadata register (PTX ISA, sparse wgmma metadata for .f16/.bf16, sparsity selector 0; the
// same per warp as mma.sp m16n8k32, cf. CuTe SM90::GMMA::ELayout_64x32: lane bit 0 -> k + 16,
// lane bit 1 -> unused (selector 0: threads T0, T1 of each quad), lane >> 2 -> row, warp -> row
// + 16; value bits 0-15 -> 4 groups of row g, 16-31 -> row g + 8): warp w of consumer c, lane
// (g = lane >> 2, t = lane & 3) holds, for k32 step ks,
//   bits 4j .. 4j+3      = meta nibble of group 8ks + 4(t & 1) + j of weight row 64c + 16w + g
//   bits 16+4j .. 16+4j+3 = the same for row 64c + 16w + g + 8
// i.e. meta_fragment(ld.shared.u32 [meta + r*32 + 8ks + 4(t&1)], same at row r + 8). Rows are
// 32 bytes apart, so lanes g and g + 4 of one load share a bank (2-way conflict; 8 loads per
// thread per slice against 4 wgmma of 64 x 128 x 32: not worth a swizzle).
//
// Accumulators (wgmma D fragment, f32, m64nN): d[i] of warp w, lane (g, t) is
//   D[16w + g + 8((i >> 1) & 1)][8(i >> 2) + 2t + (i & 1)]
// so d[4j .. 4j+3] is exactly the m16n8 fragment {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}
// of weight rows 64c + 16w .. +15 and x rows 8j .. 8j+7: the epilogue reuses acc_to_smem /
// store_tile of the sm_80 kernel (smem staging, bias, one RNE rounding, bounds-checked 16-byte
// row stores), with all 384 threads storing.
//
// Pipeline (mbarriers full[s] / empty[s] per stage): the producer waits empty[s] (from the
// second round on), arms full[s] with the stage's byte count and issues the four TMA loads.
// A consumer waits full[s], reads its metadata, issues the slice's 4 wgmma (one commit group),
// then waits until at most one group is pending: the previous slice's wgmma have finished
// reading, and lane 0 of each of the 8 consumer warps arrives on that slice's empty barrier.
//
// Threshold (glue): M >= 128 (see kSparse24Sm90MinM in sparse_linear_cuda.cpp).
// ---------------------------------------------------------------------------------------------
#include <cuda.h>  // CUtensorMap and its enums (types only: the driver call goes through the runtime)

#include "sparse/sparse_common_cuda.cuh"
#include "sm90_common.cuh"

namespace compress {
namespace {

using namespace sparse_detail;
using namespace sm90;

struct Sm90Config {
  static constexpr int BN = 128, BM = 128, BK = 128, STAGES = 4;
  static constexpr int kConsumers = 2;                     // warpgroups, 64 weight rows each
  static constexpr int kThreads = 128 * (1 + kConsumers);  // + the producer warpgroup
  static constexpr int kXBox = 64;                         // inputs per x box (128-byte rows)
  static constexpr int kXBoxBytes = BM * kXBox * 2;        // 16 KiB
  static constexpr int kValBytes = BN * (BK / 2) * 2;      // 16 KiB, 128-byte rows
  static constexpr int kMetaRow = BK / 4;                  // 32 bytes
  static constexpr int kMetaBytes = BN * kMetaRow;         // 4 KiB
  static constexpr int kXOff = 0;
  static constexpr int kValOff = 2 * kXBoxBytes;
  static constexpr int kMetaOff = kValOff + kValBytes;
  static constexpr int kStageBytes = kMetaOff + kMetaBytes;  // 52 KiB
  static constexpr int kBarOff = STAGES * kStageBytes;       // full[STAGES], empty[STAGES]
  static constexpr int kSmemBytes = 1024 + kBarOff + 16 * STAGES;  // + alignment slack
  static constexpr int kRedLd = BN + 4;
  static_assert(kStageBytes % 1024 == 0 && kXOff % 1024 == 0 && kValOff % 1024 == 0 &&
                    kXBoxBytes % 1024 == 0,
                "128-byte swizzled tiles must start on 1024-byte boundaries");
  static_assert(BM * kRedLd * 4 <= kBarOff, "the epilogue tile reuses the stages");
  static_assert(kSmemBytes <= 227 * 1024, "sm_90 allows 227 KiB of shared memory per block");
};

struct Sm90Args {
  const float* bias;
  void* out;
  int64_t ldo;
  int M, N, K;
  int m_tiles;  // ceil(M / BM): blockIdx.x = n_tile * m_tiles + m_tile
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)


// D (64 x 128 f32, 64 registers) += A (sparse, desc a, metadata e, selector 0) * B (desc b).
template <int DT>
__device__ __forceinline__ void wgmma_sp_m64n128k32(float (&d)[64], uint64_t a, uint64_t b,
                                                    uint32_t e) {
#define COMPRESS_WGMMA_SP_ASM(TYPE)                                                             \
  asm volatile(                                                                                 \
      "{\n .reg .pred p;\n setp.ne.b32 p, %67, 0;\n"                                          \
      "wgmma.mma_async.sp.sync.aligned.m64n128k32.f32." TYPE "." TYPE " "                       \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                 \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "        \
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "        \
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "       \
      "%64, %65, %66, 0, p, 1, 1, 0, 0;\n}\n"                                                  \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),    \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),             \
        "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),          \
        "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),          \
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),          \
        "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),          \
        "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),          \
        "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),          \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),          \
        "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]),          \
        "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                                                  \
      : "l"(a), "l"(b), "r"(e), "r"(1) /* scale-d: D = A*B + D */                               \
      : "memory")
  if constexpr (DT == kBF16) {
    COMPRESS_WGMMA_SP_ASM("bf16");
  } else {
    COMPRESS_WGMMA_SP_ASM("f16");
  }
#undef COMPRESS_WGMMA_SP_ASM
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <int DT>
__global__ void __launch_bounds__(Sm90Config::kThreads, 1)
    sparse24_sm90_kernel(const __grid_constant__ CUtensorMap tm_x,
                         const __grid_constant__ CUtensorMap tm_values,
                         const __grid_constant__ CUtensorMap tm_meta, const Sm90Args p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = Sm90Config;
  constexpr int STAGES = Cfg::STAGES;
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;  // 128-byte swizzle atoms: 1024-byte aligned
  float* red = reinterpret_cast<float*>(smem_raw + (base - raw));
  const uint32_t full0 = base + Cfg::kBarOff;
  const uint32_t empty0 = full0 + 8 * STAGES;

  const int tid = threadIdx.x;
  const int m_tile = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.m_tiles));
  const int n_tile = static_cast<int>(blockIdx.x / static_cast<unsigned>(p.m_tiles));
  const int m0 = m_tile * Cfg::BM;
  const int n0 = n_tile * Cfg::BN;
  const int num_kt = (p.K + Cfg::BK - 1) / Cfg::BK;

  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full0 + 8 * s, 1);                         // the producer's arrive (+ bytes)
      mbar_init(empty0 + 8 * s, 4 * Cfg::kConsumers);      // lane 0 of every consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  const int wg = tid / 128;
  if (wg == 0) {
    // ---- producer: one thread
    if (tid == 0) {
      for (int kt = 0; kt < num_kt; ++kt) {
        const int s = kt % STAGES;
        if (kt >= STAGES) mbar_wait(empty0 + 8 * s, ((kt / STAGES) + 1) & 1);
        const uint32_t st = base + s * Cfg::kStageBytes;
        const uint32_t full = full0 + 8 * s;
        const int k0 = kt * Cfg::BK;
        mbar_arrive_expect_tx(full, Cfg::kStageBytes);
        tma_load_2d(st + Cfg::kXOff, &tm_x, k0, m0, full);
        tma_load_2d(st + Cfg::kXOff + Cfg::kXBoxBytes, &tm_x, k0 + Cfg::kXBox, m0, full);
        tma_load_2d(st + Cfg::kValOff, &tm_values, k0 / 2, n0, full);
        tma_load_2d(st + Cfg::kMetaOff, &tm_meta, k0 / 4, n0, full);
      }
    }
  }

  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.f;
  const int c = wg - 1;  // consumer index (meaningful for wg >= 1)
  const int lane = tid & 31;
  const int w = (tid >> 5) & 3;  // warp inside the warpgroup
  if (wg >= 1) {
    // ---- consumers
    const int e_row = 64 * c + 16 * w + (lane >> 2);  // and e_row + 8
    const uint32_t e_lane = static_cast<uint32_t>(Cfg::kMetaOff + e_row * Cfg::kMetaRow + 4 * (lane & 1));
    const uint32_t a_lane = static_cast<uint32_t>(Cfg::kValOff + 64 * c * 128);
    for (int kt = 0; kt < num_kt; ++kt) {
      const int s = kt % STAGES;
      mbar_wait(full0 + 8 * s, (kt / STAGES) & 1);
      const uint32_t st = base + s * Cfg::kStageBytes;
      uint32_t e[Cfg::BK / 32];
#pragma unroll
      for (int ks = 0; ks < Cfg::BK / 32; ++ks) {
        const uint32_t er = st + e_lane + 8 * ks;
        e[ks] = meta_fragment(lds_u32(er), lds_u32(er + 8 * Cfg::kMetaRow));
      }
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < Cfg::BK / 32; ++ks) {
        const uint64_t da = sw128_desc(st + a_lane + 32 * ks);
        const uint64_t db = sw128_desc(st + Cfg::kXOff + (ks >> 1) * Cfg::kXBoxBytes + 64 * (ks & 1));
        wgmma_sp_m64n128k32<DT>(acc, da, db, e[ks]);
      }
      wgmma_commit();
      wgmma_wait<1>();  // slice kt - 1 finished: its stage can be refilled
      if (kt > 0 && lane == 0) mbar_arrive(empty0 + 8 * ((kt - 1) % STAGES));
    }
    wgmma_wait<0>();
  }
  __syncthreads();  // all slices consumed (and so all TMA writes landed): the stages are free

  if (wg >= 1) {
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const float frag[4] = {acc[4 * j], acc[4 * j + 1], acc[4 * j + 2], acc[4 * j + 3]};
      acc_to_smem<Cfg::kRedLd>(red, frag, 64 * c + 16 * w, 8 * j, lane);
    }
  }
  __syncthreads();
  store_tile<DT, Cfg::BM, Cfg::BN, 1, Cfg::kThreads>(red, p.bias, p.out, p.ldo, m0, n0, p.M, p.N,
                                                     tid);
#else
  __trap();  // built for another architecture: the host launches this only on cc 9.0
#endif
}

// ---- host: tensor maps ---------------------------------------------------------------------------

// A 2-D map over [rows, cols] elements of `elem_bytes` (row stride `ld` elements), box
// [box_rows, box_cols], zero fill outside. False when TMA cannot describe it.
bool make_map(sm90::EncodeTiled enc, CUtensorMap* map, const void* ptr, int elem_bytes, int64_t rows,
              int64_t cols, int64_t ld, int box_rows, int box_cols, bool swizzle128) {
  const int64_t stride = (rows > 1 ? ld : cols) * elem_bytes;  // one row: any multiple of 16
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0 || stride % 16 != 0 || stride <= 0 ||
      stride >= (int64_t{1} << 40))
    return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(stride)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(box_cols), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = enc(map, elem_bytes == 2 ? CU_TENSOR_MAP_DATA_TYPE_UINT16 : CU_TENSOR_MAP_DATA_TYPE_UINT8,
                         2, const_cast<void*>(ptr), dims, strides, box, elem_strides,
                         CU_TENSOR_MAP_INTERLEAVE_NONE,
                         swizzle128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
                         CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

template <int DT>
cudaError_t launch_sm90(const CUtensorMap& tx, const CUtensorMap& tv, const CUtensorMap& tm,
                        const Sm90Args& a, int64_t grid, cudaStream_t stream) {
  auto* kernel = &sparse24_sm90_kernel<DT>;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             Sm90Config::kSmemBytes);
  if (e != cudaSuccess) return e;
  kernel<<<dim3(static_cast<unsigned>(grid)), dim3(Sm90Config::kThreads), Sm90Config::kSmemBytes,
           stream>>>(tx, tv, tm, a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t sparse24_linear_sm90(const void* x, int64_t ldx, const void* values, int64_t ldv,
                                 const uint8_t* meta, int64_t ldm, const float* bias, void* out,
                                 int64_t ldo, SparseDtype dtype, int M, int N, int K,
                                 cudaStream_t stream) {
  using Cfg = Sm90Config;
  if (dtype != SparseDtype::kBFloat16 && dtype != SparseDtype::kFloat16) return cudaErrorInvalidValue;
  if (M <= 0 || N <= 0 || K <= 0 || K % kSparse24KAlign != 0) return cudaErrorInvalidValue;
  if (x == nullptr || values == nullptr || meta == nullptr || out == nullptr) return cudaErrorInvalidValue;
  if (reinterpret_cast<uintptr_t>(out) % 2 != 0 || reinterpret_cast<uintptr_t>(bias) % 4 != 0 ||
      (M > 1 && ldo < N) || ldo < 0)
    return cudaErrorInvalidValue;
  const int64_t m_tiles = (M + Cfg::BM - 1) / Cfg::BM;
  const int64_t grid = (N + Cfg::BN - 1) / Cfg::BN * m_tiles;
  if (grid > 0x7fffffff) return cudaErrorNotSupported;
  const sm90::EncodeTiled enc = sm90::encode_tiled();
  if (enc == nullptr) return cudaErrorNotSupported;
  // Tensor maps are 64-byte aligned host objects passed by value as kernel parameters.
  alignas(64) CUtensorMap tx, tv, tm;
  if (!make_map(enc, &tx, x, 2, M, K, ldx, Cfg::BM, Cfg::kXBox, true) ||
      !make_map(enc, &tv, values, 2, N, K / 2, ldv, Cfg::BN, Cfg::BK / 2, true) ||
      !make_map(enc, &tm, meta, 1, N, K / 4, ldm, Cfg::BN, Cfg::kMetaRow, false))
    return cudaErrorNotSupported;
  const Sm90Args a{bias, out, ldo, M, N, K, static_cast<int>(m_tiles)};
  return dtype == SparseDtype::kBFloat16 ? launch_sm90<kBF16>(tx, tv, tm, a, grid, stream)
                                         : launch_sm90<kF16>(tx, tv, tm, a, grid, stream);
}

}  // namespace compress
