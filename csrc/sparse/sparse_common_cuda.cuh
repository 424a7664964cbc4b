// Device helpers shared by the sparse linear kernels (sparse24_linear.cu, bsr_linear.cu,
// csr_linear.cu): element types, PTX wrappers (the src-size zero-filling cp.async, ld.shared; the
// generic cp.async / ldmatrix ones and the pipeline loop come from cuda_common.cuh), the warp
// reduce-scatter and the shared-memory epilogue of the tensor-core kernels. CUDA headers only (no
// torch).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"  // smem_u32, cp_async_commit / wait, ldsm_x4, cp_async_pipeline
#include "sparse/sparse_linear_cuda.h"

namespace compress {
namespace sparse_detail {

using namespace cuda_common;

constexpr unsigned kFull = 0xffffffffu;
constexpr int kF32 = static_cast<int>(SparseDtype::kFloat32);
constexpr int kBF16 = static_cast<int>(SparseDtype::kBFloat16);
constexpr int kF16 = static_cast<int>(SparseDtype::kFloat16);

// ---- element types: raw storage, exact widening to float32, RNE narrowing from float32 ----------
// 16-bit types are raw bits (nothing depends on the cuda_fp16 / cuda_bf16 operator macros).
template <int DT>
struct Elem;
template <>
struct Elem<kF32> {
  using Raw = float;
  static __device__ __forceinline__ float to_f(Raw v) { return v; }
  static __device__ __forceinline__ Raw from_f(float v) { return v; }
};
template <>
struct Elem<kBF16> {
  using Raw = uint16_t;
  static __device__ __forceinline__ float to_f(Raw v) {
    return __uint_as_float(static_cast<uint32_t>(v) << 16);  // exact
  }
  static __device__ __forceinline__ Raw from_f(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
};
template <>
struct Elem<kF16> {
  using Raw = uint16_t;
  static __device__ __forceinline__ float to_f(Raw v) { return __half2float(__ushort_as_half(v)); }
  static __device__ __forceinline__ Raw from_f(float v) { return __half_as_ushort(__float2half_rn(v)); }
};

// ---- PTX wrappers ---------------------------------------------------------------------------------

// 16-byte async copy global -> shared (.cg: L2 only). With `zero_fill` the source is not read
// (src-size 0, PTX ISA "cp.async": the remaining bytes of the 16 are zero-filled); `src` is then
// still a valid dummy address.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool zero_fill) {
  const size_t gsrc = __cvta_generic_to_global(src);
  const int src_bytes = zero_fill ? 0 : 16;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gsrc),
               "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ uint32_t lds_u32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}

// ---- 2:4 metadata: portable meta bytes -> the mma.sp / wgmma.sp metadata register ---------------
// Shared by sparse24_linear.cu (mma.sp m16n8k32) and sparse24_sm90.cu (wgmma.sp m64nNk32, whose
// per-warp metadata register is the same); the layout is described in sparse24_linear.cu.

// 4 portable meta bytes (low nibbles: groups j = 0..3) -> 16 bits, group j at bits 4j .. 4j+3.
__device__ __forceinline__ uint32_t pack_nibbles(uint32_t w) {
  w &= 0x0F0F0F0Fu;
  w = (w | (w >> 4)) & 0x00FF00FFu;
  return (w | (w >> 8)) & 0x0000FFFFu;
}

// The mma.sp metadata register of this lane from the portable bytes of rows g (lo) and g+8 (hi),
// every nibble forced to an increasing pair (see the header comment).
__device__ __forceinline__ uint32_t meta_fragment(uint32_t lo, uint32_t hi) {
  uint32_t e = pack_nibbles(lo) | (pack_nibbles(hi) << 16);
  const uint32_t i0 = e & 0x33333333u;          // first index, bits 0-1 of each nibble
  const uint32_t i1 = (e >> 2) & 0x33333333u;   // second index
  const uint32_t s = i1 + (i0 ^ 0x33333333u);   // i1 + 3 - i0 in [0, 6]: bit 2 set iff i1 > i0
  const uint32_t bad = ~s & 0x44444444u;        // bit 2 of each nibble with i1 <= i0
  return (e & ~((bad >> 2) * 0xFu)) | bad;      // those nibbles -> 0b0100
}

// ---- warp reduce-scatter --------------------------------------------------------------------------
// v[0..MV) per lane (MV a power of two <= 16) -> the sum over the warp of v[idx], in v[0] of this
// lane, idx returned. Halving exchange over lane bits 4, 3, ...: at the step with h = MV/2, MV/4,
// .., 1 a lane keeps the half selected by its lane bit and adds the partner's copy of that half
// (MV - 1 shuffles in all), then the lane bits below the last halving bit are summed plainly.
// Afterwards lanes equal in bits 4 .. (5 - log2 MV) hold the same idx; the lane whose lower bits
// are zero (store_lane) is the one to store it.
template <int MV>
struct ReduceScatter {
  static constexpr int kLog = MV == 1 ? 0 : MV == 2 ? 1 : MV == 4 ? 2 : MV == 8 ? 3 : 4;
  static_assert((1 << kLog) == MV && MV <= 16, "MV: a power of two <= 16");
  static constexpr int kLowBits = 5 - kLog;  // lane bits summed plainly at the end

  static __device__ __forceinline__ int run(float (&v)[MV], int lane) {
    int idx = 0;
#pragma unroll
    for (int s = 0; s < kLog; ++s) {
      const int h = MV >> (s + 1);
      const int bit = 4 - s;
      const bool upper = (lane >> bit) & 1;
#pragma unroll
      for (int i = 0; i < h; ++i) {
        const float send = upper ? v[i] : v[i + h];
        const float keep = upper ? v[i + h] : v[i];
        v[i] = keep + __shfl_xor_sync(kFull, send, 1 << bit);
      }
      if (upper) idx += h;
    }
#pragma unroll
    for (int b = kLowBits - 1; b >= 0; --b) v[0] += __shfl_xor_sync(kFull, v[0], 1 << b);
    return idx;
  }
  static __device__ __forceinline__ bool store_lane(int lane) {
    return (lane & ((1 << kLowBits) - 1)) == 0;
  }
};

// ---- tensor-core epilogue through shared memory ---------------------------------------------------
// Both mma kernels compute D = W_tile (rows n) x x_tile^T (columns m), so an m16 x n8 accumulator
// fragment (PTX ISA, f32 C/D of m16n8k16 and sparse m16n8k32) holds, per lane (g = lane >> 2,
// t = lane & 3): c[0] = D[g][2t], c[1] = D[g][2t + 1], c[2] = D[g + 8][2t], c[3] = D[g + 8][2t + 1].
// The epilogue stages float tiles red[part][m][n] (row stride BN + 4 floats: the 32 lanes of one
// store hit banks 8t + g, all distinct) and then writes out[m][n] row-contiguously.

template <int LD>
__device__ __forceinline__ void acc_to_smem(float* red, const float (&c)[4], int n_local,
                                            int m_local, int lane) {
  const int g = lane >> 2, t = lane & 3;
  float* p = red + (m_local + 2 * t) * LD + n_local + g;
  p[0] = c[0];
  p[LD] = c[1];
  p[8] = c[2];
  p[LD + 8] = c[3];
}

// out[m0 + m][n0 + n] = from_f(sum_p red[p][m][n] + bias[n0 + n]) for the BM x BN tile, inside
// M x N. Thread i of THREADS takes 8-column segments i, i + THREADS, ...: a 16-byte store where the
// segment is whole and out allows it (vec8), else element stores.
template <int DT, int BM, int BN, int PARTS, int THREADS>
__device__ __forceinline__ void store_tile(const float* red, const float* __restrict__ bias,
                                           void* out_, int64_t ldo, int m0, int n0, int M, int N,
                                           int tid) {
  static_assert(DT != kF32, "the tensor-core kernels store 16-bit outputs");
  using E = Elem<DT>;
  using Raw = typename E::Raw;
  constexpr int LD = BN + 4;
  constexpr int SEGS = BN / 8;
  static_assert(BN % 8 == 0, "8-column segments");
  Raw* out = static_cast<Raw*>(out_);
  const bool vec8 = (ldo % 8 == 0) && (reinterpret_cast<uintptr_t>(out) % 16 == 0);
#pragma unroll 1
  for (int i = tid; i < BM * SEGS; i += THREADS) {
    const int m = i / SEGS;
    const int n = (i % SEGS) * 8;
    if (m0 + m >= M || n0 + n >= N) continue;
    float v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = 0.f;
#pragma unroll
    for (int p = 0; p < PARTS; ++p) {
      const float4* src = reinterpret_cast<const float4*>(red + (p * BM + m) * LD + n);
      const float4 a = src[0], b = src[1];
      v[0] += a.x; v[1] += a.y; v[2] += a.z; v[3] += a.w;
      v[4] += b.x; v[5] += b.y; v[6] += b.z; v[7] += b.w;
    }
    const int nn = N - (n0 + n);  // columns left in the matrix (> 0)
    if (bias != nullptr) {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] += j < nn ? __ldg(bias + n0 + n + j) : 0.f;
    }
    Raw* o = out + static_cast<int64_t>(m0 + m) * ldo + n0 + n;
    if (vec8 && nn >= 8) {
      uint4 w;
      w.x = static_cast<uint32_t>(E::from_f(v[0])) | (static_cast<uint32_t>(E::from_f(v[1])) << 16);
      w.y = static_cast<uint32_t>(E::from_f(v[2])) | (static_cast<uint32_t>(E::from_f(v[3])) << 16);
      w.z = static_cast<uint32_t>(E::from_f(v[4])) | (static_cast<uint32_t>(E::from_f(v[5])) << 16);
      w.w = static_cast<uint32_t>(E::from_f(v[6])) | (static_cast<uint32_t>(E::from_f(v[7])) << 16);
      *reinterpret_cast<uint4*>(o) = w;
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (j < nn) o[j] = E::from_f(v[j]);
    }
  }
}

// Clamped [start, end) of row r of a compressed index: memory-safe for any crow contents.
__device__ __forceinline__ void row_range(const int32_t* __restrict__ crow, int64_t r, int64_t nnz,
                                          int64_t* start, int64_t* end) {
  int64_t s = __ldg(crow + r), e = __ldg(crow + r + 1);
  s = s < 0 ? 0 : (s > nnz ? nnz : s);
  e = e < s ? s : (e > nnz ? nnz : e);
  *start = s;
  *end = e;
}

}  // namespace sparse_detail
}  // namespace compress
