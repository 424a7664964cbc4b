// Block-sparse (BSR) linear: y [M, N] = x [M, K] @ W^T + bias, W as (crow, col, values [nnzb, bn, bk]).
// Contracts: sparse_linear_cuda.h. Kernels only; no torch here (compile time).
// Instantiations: 6 tensor-core kernels (bn in {16, 32, 64} x bf16 / f16; bk is a runtime value
// in {16, 32, 64}) + 3 simple ones (dtypes).
//
// ---------------------------------------------------------------------------------------------
// Tensor-core kernel (bsr_mma_kernel<DT, BN>)
//   One CTA per (block row R, 64 rows of x): it walks only block row R's stored blocks
//   j = crow[R] .. crow[R+1]-1 (clamped into [0, nnzb]) and accumulates
//     D [n][m] = sum_j sum_kk Wblock_j[n][kk] * x[m0 + m][col[j] * bk + kk]
//   with dense mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{..}.f32 (A = the weight block,
//   rows n; B = x^T, columns m), float32 accumulators.
//   Pipeline over blocks: a stage holds one block ([BN][bk] values, contiguous in global memory)
//   and the matching x tile ([64][bk] at columns col[j]*bk ..), 16-byte cp.async.cg, 4 stages
//   (commit per block, wait_group 2 before use: cuda_common.cuh cp_async_pipeline, one block
//   per tile). x rows >= M and columns >= K (edge blocks, or a col entry outside the matrix)
//   are zero-filled, so they add nothing (the format zero-pads edge blocks).
//   Shared layout: both tiles use 128-byte rows (the widest bk = 64) whatever bk is; 16-byte
//   chunk c of row r sits at r*128 + 16*(c ^ (r & 7)) -- 8 consecutive rows at one logical chunk
//   cover all 32 banks (ldmatrix phases conflict-free).
//   Warps: 4. WR = BN/16 warps along the block's rows (one m16 tile each) x 4/WR warps along x,
//   each owning 64/(4/WR) rows of x = BN/8 n8 tiles: BN=16 -> 1 x 4 warps, 2 n8 tiles each;
//   BN=32 -> 2 x 2, 4 tiles; BN=64 -> 4 x 1, 8 tiles. Pairs of n8 tiles wholly past M are
//   skipped (warp-uniform), so small M costs little compute (the weight traffic is the cost).
//   Per k16 step (bk/16 of them): one ldmatrix.x4 for the m16 x k16 A fragment (matrices rows
//   0-7 / 8-15 x chunks 2kk, 2kk+1; lane L: row L & 15, chunk 2kk + (L >> 4)) and one per pair
//   of n8 tiles for B (lane L: row (L & 7) + 8 (L >> 4), chunk 2kk + ((L >> 3) & 1); registers
//   = b0, b1 of tile 0, b0, b1 of tile 1), as PTX ISA "Matrix Fragments for mma.m16n8k16 with
//   floating point type": a0,a1 (g, 2t..) a2,a3 (g+8, 2t..) a4,a5 (g, 8+2t..) a6,a7 (g+8, 8+2t..);
//   b0,b1 (k 2t.., n g) b2,b3 (k 8+2t.., n g); c as in sparse_common_cuda.cuh.
//   Epilogue: accumulators -> smem tile [64][BN + 4] -> + bias -> RNE -> 16-byte row stores
//   (store_tile). Empty block rows write bias (or zeros).
//
// Simple kernel (bsr_simple_kernel): any dtype, any bn, bk. A warp per (output feature n,
// 8 rows of x): it walks block row n / bn, lanes striding over the bk columns of each block's
// row n % bn, float32 FMA against x (through L1), reduce-scatter at the end.
// ---------------------------------------------------------------------------------------------
#include "sparse/sparse_common_cuda.cuh"

namespace compress {
namespace {

using namespace sparse_detail;

template <int BN_>
struct BsrConfig {
  static constexpr int BN = BN_;             // block rows (bn)
  static constexpr int BM = 64;              // rows of x per CTA
  static constexpr int kThreads = 128;
  static constexpr int STAGES = 4;
  static constexpr int kWR = BN / 16;        // warps along the block's rows
  static constexpr int kWX = 4 / kWR;        // warps along x
  static constexpr int kWarpX = BM / kWX;    // rows of x per warp
  static constexpr int kNT = kWarpX / 8;     // n8 tiles per warp (even)
  static constexpr int kRow = 128;           // bytes per smem row (bk <= 64 16-bit values)
  static constexpr int kWBytes = BN * kRow;
  static constexpr int kXBytes = BM * kRow;
  static constexpr int kStageBytes = kWBytes + kXBytes;
  static constexpr int kPipeBytes = STAGES * kStageBytes;
  static constexpr int kRedLd = BN + 4;
  static constexpr int kRedBytes = BM * kRedLd * 4;
  static constexpr int kSmemBytes = kPipeBytes > kRedBytes ? kPipeBytes : kRedBytes;
  static_assert(BN == 16 || BN == 32 || BN == 64, "bn in {16, 32, 64}");
  static_assert(kNT % 2 == 0, "n8 tiles are loaded in pairs");
};

__device__ __forceinline__ uint32_t tile_offset(int r, int c) {
  return static_cast<uint32_t>(r * 128 + ((c ^ (r & 7)) << 4));
}

template <int DT>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  if constexpr (DT == kBF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

struct BsrArgs {
  const uint16_t* x;
  const int32_t* crow;
  const int32_t* col;
  const uint16_t* values;
  const float* bias;
  void* out;
  int64_t ldx, ldo, nnzb;
  int M, N, K, bk;
  int m_tiles;  // ceil(M / 64): blockIdx.x = R * m_tiles + m_tile
};

template <int DT, int BN>
__global__ void __launch_bounds__(128) bsr_mma_kernel(const BsrArgs p) {
  using Cfg = BsrConfig<BN>;
  constexpr int STAGES = Cfg::STAGES, NT = Cfg::kNT;
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = smem_u32(smem);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int m_tile = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.m_tiles));
  const int64_t R = blockIdx.x / static_cast<unsigned>(p.m_tiles);
  const int m0 = m_tile * Cfg::BM;
  const int M = p.M, K = p.K, bk = p.bk;
  const int cpr = bk / 8;                     // 16-byte chunks per row: 2, 4 or 8
  const int lg_cpr = cpr == 2 ? 1 : (cpr == 4 ? 2 : 3);
  const int ksteps = bk / 16;                 // 1, 2 or 4
  const int64_t kblocks = (static_cast<int64_t>(K) + bk - 1) / bk;

  int64_t jbeg, jend;
  row_range(p.crow, R, p.nnzb, &jbeg, &jend);
  const int nb = static_cast<int>(jend - jbeg);

  // Copies of block number i (of this row) into stage `stage`: BN x cpr weight chunks, 64 x cpr
  // x chunks, thread tid takes chunks tid, tid + 128, ...
  auto load_block = [&](int stage, int i) {
    const int64_t j = jbeg + i;
    const int64_t cb = __ldg(p.col + j);
    const bool c_ok = cb >= 0 && cb < kblocks;
    const int64_t kb = c_ok ? cb * bk : 0;
    const uint32_t s = smem_base + stage * Cfg::kStageBytes;
    const uint16_t* wsrc = p.values + j * (BN * bk);
    for (int q = tid; q < BN * cpr; q += Cfg::kThreads) {
      const int r = q >> lg_cpr, c = q & (cpr - 1);
      cp_async_16(s + tile_offset(r, c), wsrc + r * bk + 8 * c, false);
    }
    for (int q = tid; q < Cfg::BM * cpr; q += Cfg::kThreads) {
      const int r = q >> lg_cpr, c = q & (cpr - 1);
      const bool ok = c_ok && m0 + r < M && kb + 8 * c < K;
      const uint16_t* src = ok ? p.x + static_cast<int64_t>(m0 + r) * p.ldx + kb + 8 * c : p.x;
      cp_async_16(s + Cfg::kWBytes + tile_offset(r, c), src, !ok);
    }
  };

  // warp tile and lane addressing (header comment)
  const int wr = warp % Cfg::kWR;
  const int wx = warp / Cfg::kWR;
  const int a_row = wr * 16 + (lane & 15);
  const int a_csel = lane >> 4;
  const int b_row = wx * Cfg::kWarpX + (lane & 7) + ((lane >> 4) << 3);  // + 16 * pair
  const int b_csel = (lane >> 3) & 1;
  const int swz = lane & 7;  // a_row & 7 == b_row & 7 == lane & 7
  const int x_left = M - m0 - wx * Cfg::kWarpX;
  const int pairs_active =
      x_left <= 0 ? 0 : (x_left >= Cfg::kWarpX ? NT / 2 : (x_left + 15) / 16);

  float acc[NT][4];
#pragma unroll
  for (int ni = 0; ni < NT; ++ni)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[ni][e] = 0.f;

  cp_async_pipeline<STAGES>(nb, load_block, [&](int stage) {
    if (pairs_active == 0) return;
    const uint32_t s = smem_base + stage * Cfg::kStageBytes;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if (kk < ksteps) {
        uint32_t af[4];
        ldsm_x4(s + a_row * 128 + (((2 * kk + a_csel) ^ swz) << 4), af);
#pragma unroll
        for (int pr = 0; pr < NT / 2; ++pr) {
          if (pr < pairs_active) {
            uint32_t bf[4];
            ldsm_x4(s + Cfg::kWBytes + (b_row + 16 * pr) * 128 + (((2 * kk + b_csel) ^ swz) << 4),
                    bf);
            mma_16816<DT>(acc[2 * pr], af, bf[0], bf[1]);
            mma_16816<DT>(acc[2 * pr + 1], af, bf[2], bf[3]);
          }
        }
      }
    }
  });
  __syncthreads();

  float* red = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int ni = 0; ni < NT; ++ni)
    acc_to_smem<Cfg::kRedLd>(red, acc[ni], wr * 16, wx * Cfg::kWarpX + ni * 8, lane);
  __syncthreads();
  store_tile<DT, Cfg::BM, BN, 1, Cfg::kThreads>(red, p.bias, p.out, p.ldo, m0,
                                                static_cast<int>(R * BN), M, p.N, tid);
}

template <int DT, int BN>
cudaError_t launch_mma(const BsrArgs& a0, cudaStream_t stream) {
  using Cfg = BsrConfig<BN>;
  BsrArgs a = a0;
  a.m_tiles = (a.M + Cfg::BM - 1) / Cfg::BM;
  const int64_t rows = (static_cast<int64_t>(a.N) + BN - 1) / BN;
  const int64_t grid = rows * a.m_tiles;
  if (grid > 0x7fffffff) return cudaErrorInvalidValue;
  auto* kernel = &bsr_mma_kernel<DT, BN>;
  if (Cfg::kSmemBytes > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (e != cudaSuccess) return e;
  }
  kernel<<<dim3(static_cast<unsigned>(grid)), dim3(Cfg::kThreads), Cfg::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

template <int DT>
cudaError_t launch_mma_bn(const BsrArgs& a, int bn, cudaStream_t stream) {
  switch (bn) {
    case 16: return launch_mma<DT, 16>(a, stream);
    case 32: return launch_mma<DT, 32>(a, stream);
    case 64: return launch_mma<DT, 64>(a, stream);
  }
  return cudaErrorInvalidValue;
}

// ---- simple kernel ----------------------------------------------------------------------------

constexpr int kSimpleThreads = 256;
constexpr int kSimpleRows = 8;  // rows of x per warp

template <int DT>
__global__ void __launch_bounds__(kSimpleThreads)
    bsr_simple_kernel(const void* x_, int64_t ldx, const int32_t* __restrict__ crow,
                      const int32_t* __restrict__ col, const void* values_, int64_t nnzb, int bn,
                      int bk, const float* __restrict__ bias, void* out_, int64_t ldo, int M, int N,
                      int K, int64_t total_warps) {
  using E = Elem<DT>;
  using Raw = typename E::Raw;
  const Raw* __restrict__ x = static_cast<const Raw*>(x_);
  const Raw* __restrict__ values = static_cast<const Raw*>(values_);
  Raw* __restrict__ out = static_cast<Raw*>(out_);
  const int lane = threadIdx.x & 31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * (kSimpleThreads / 32);
  const int64_t kblocks = (static_cast<int64_t>(K) + bk - 1) / bk;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * (kSimpleThreads / 32) + (threadIdx.x >> 5);
       w < total_warps; w += stride) {
    const int64_t n = w % N;
    const int m0 = static_cast<int>(w / N) * kSimpleRows;
    const int mc = M - m0 < kSimpleRows ? M - m0 : kSimpleRows;
    const int64_t R = n / bn, r = n - R * bn;
    int64_t jbeg, jend;
    row_range(crow, R, nnzb, &jbeg, &jend);
    float acc[kSimpleRows];
#pragma unroll
    for (int q = 0; q < kSimpleRows; ++q) acc[q] = 0.f;
    for (int64_t j = jbeg; j < jend; ++j) {
      const int64_t cb = __ldg(col + j);
      if (cb < 0 || cb >= kblocks) continue;  // outside the matrix: contributes nothing
      const Raw* wrow = values + (j * bn + r) * bk;
      const int64_t kb = cb * bk;
      for (int kk = lane; kk < bk; kk += 32) {
        const int64_t k = kb + kk;
        if (k >= K) break;
        const float wv = E::to_f(wrow[kk]);
#pragma unroll
        for (int q = 0; q < kSimpleRows; ++q)
          if (q < mc) acc[q] = fmaf(wv, E::to_f(x[static_cast<int64_t>(m0 + q) * ldx + k]), acc[q]);
      }
    }
    const int idx = ReduceScatter<kSimpleRows>::run(acc, lane);
    if (ReduceScatter<kSimpleRows>::store_lane(lane) && idx < mc) {
      const float b = bias != nullptr ? __ldg(bias + n) : 0.f;
      out[static_cast<int64_t>(m0 + idx) * ldo + n] = E::from_f(acc[0] + b);
    }
  }
}

bool bad_sizes(int M, int N, int K) {
  constexpr int kMax = 0x7fffffff - 1024;
  return M < 0 || N < 0 || K < 0 || M > kMax || N > kMax || K > kMax;
}

bool misaligned(const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a != 0; }

}  // namespace

bool bsr_mma_block_supported(int bn, int bk) {
  return (bn == 16 || bn == 32 || bn == 64) && (bk == 16 || bk == 32 || bk == 64);
}

cudaError_t bsr_linear_mma(const void* x, int64_t ldx, const int32_t* crow, const int32_t* col,
                           const void* values, int64_t nnzb, int bn, int bk, const float* bias,
                           void* out, int64_t ldo, SparseDtype dtype, int M, int N, int K,
                           cudaStream_t stream) {
  if (bad_sizes(M, N, K) || nnzb < 0 || nnzb > 0x7fffffff) return cudaErrorInvalidValue;
  if (dtype != SparseDtype::kBFloat16 && dtype != SparseDtype::kFloat16) return cudaErrorInvalidValue;
  if (!bsr_mma_block_supported(bn, bk)) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  if (crow == nullptr || misaligned(crow, 4) || misaligned(col, 4) || misaligned(bias, 4))
    return cudaErrorInvalidValue;
  if (out == nullptr || misaligned(out, 2) || ldo < 0 || (M > 1 && ldo < N)) return cudaErrorInvalidValue;
  if (K % 8 != 0 || (M > 1 && (ldx < 0 || ldx % 8 != 0))) return cudaErrorInvalidValue;
  if (nnzb > 0 && (x == nullptr || values == nullptr || col == nullptr || misaligned(x, 16) ||
                   misaligned(values, 16)))
    return cudaErrorInvalidValue;
  BsrArgs a{static_cast<const uint16_t*>(x), crow, col, static_cast<const uint16_t*>(values), bias,
            out, ldx, ldo, nnzb, M, N, K, bk, 1};
  if (dtype == SparseDtype::kBFloat16) return launch_mma_bn<kBF16>(a, bn, stream);
  return launch_mma_bn<kF16>(a, bn, stream);
}

cudaError_t bsr_linear_simple(const void* x, int64_t ldx, const int32_t* crow, const int32_t* col,
                              const void* values, int64_t nnzb, int bn, int bk, const float* bias,
                              void* out, int64_t ldo, SparseDtype dtype, int M, int N, int K,
                              cudaStream_t stream) {
  if (bad_sizes(M, N, K) || nnzb < 0 || bn < 1 || bk < 1) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  const uintptr_t es = dtype == SparseDtype::kFloat32 ? 4 : 2;
  if (crow == nullptr || misaligned(crow, 4) || misaligned(col, 4) || misaligned(bias, 4))
    return cudaErrorInvalidValue;
  if (out == nullptr || misaligned(out, es) || ldo < 0 || (M > 1 && ldo < N) || ldx < 0)
    return cudaErrorInvalidValue;
  if (nnzb > 0 && (x == nullptr || values == nullptr || col == nullptr || misaligned(x, es) ||
                   misaligned(values, es)))
    return cudaErrorInvalidValue;
  const int64_t total_warps = static_cast<int64_t>(N) * ((M + kSimpleRows - 1) / kSimpleRows);
  const int64_t need = (total_warps + kSimpleThreads / 32 - 1) / (kSimpleThreads / 32);
  const unsigned blocks = static_cast<unsigned>(need < 65535 * 8 ? need : 65535 * 8);
  switch (dtype) {
    case SparseDtype::kFloat32:
      bsr_simple_kernel<kF32><<<blocks, kSimpleThreads, 0, stream>>>(
          x, ldx, crow, col, values, nnzb, bn, bk, bias, out, ldo, M, N, K, total_warps);
      break;
    case SparseDtype::kBFloat16:
      bsr_simple_kernel<kBF16><<<blocks, kSimpleThreads, 0, stream>>>(
          x, ldx, crow, col, values, nnzb, bn, bk, bias, out, ldo, M, N, K, total_warps);
      break;
    case SparseDtype::kFloat16:
      bsr_simple_kernel<kF16><<<blocks, kSimpleThreads, 0, stream>>>(
          x, ldx, crow, col, values, nnzb, bn, bk, bias, out, ldo, M, N, K, total_warps);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace compress
