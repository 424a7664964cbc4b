// Shared by the int8 GEMM kernels (int8_gemm.cu: mma.sync, sm_80+; int8_gemm_sm90.cu: wgmma + TMA,
// sm_90a): the two epilogues and the argument checks of the int8_gemm.h entry points. CUDA headers
// only (kernels-only translation units include it; no torch).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "int8_gemm.h"

namespace compress {
namespace int8_common {

// ---- epilogues -------------------------------------------------------------------------------
// Accumulator fragment -> output (PTX ISA, C/D of m16n8k32): lane (g, t) holds, per m16 x n8 tile,
// c[0], c[1] = C[g][2t], C[g][2t+1] and c[2], c[3] = C[g+8][2t], C[g+8][2t+1]. So every store is a
// pair of adjacent columns (col even): one 2-element vector store when the row start and the
// pointer allow it (ld even and the base aligned to two elements), else two scalar stores.
// row0 / col0: the warp tile's first output row / column in the whole matrix.

struct Int32Store {  // int8_gemm_tn; with atomic_add the split-K partial sums (C zeroed first)
  int32_t* C;
  int64_t ldc;
  bool atomic_add;  // C += acc (atomicAdd per element) instead of C = acc
};

struct DequantStore {  // int8_gemm_tn_dequant; see int8_gemm.h for the contract
  void* out;
  const float* x_scale;  // [M]
  const float* w_scale;  // [N]
  const float* bias;     // [N] or nullptr
  int64_t ldo;
  int out_dtype;  // Int8OutDtype
};

// One adjacent pair (col even) of an output row: one Tr::put2 vector store when `vec2` (the row
// stride and base allow it) and both columns are inside N, else the columns inside N one by one.
template <class Tr>
__device__ __forceinline__ void store_pair(typename Tr::T* row, int col, typename Tr::T v0,
                                           typename Tr::T v1, bool vec2, int N) {
  if (vec2 && col + 1 < N) {
    Tr::put2(row + col, v0, v1);
  } else {
    if (col < N) row[col] = v0;
    if (col + 1 < N) row[col + 1] = v1;
  }
}

struct Int32Traits {  // store_pair of the int32 epilogue
  using T = int32_t;
  static __device__ __forceinline__ void put2(T* p, T a, T b) {
    *reinterpret_cast<int2*>(p) = make_int2(a, b);
  }
};

template <int MT, int NT>
__device__ __forceinline__ void store_tile(const Int32Store& p, const int32_t (&acc)[MT][NT][4],
                                           int row0, int col0, int lane, int M, int N) {
  const int g = lane >> 2;
  const int t = lane & 3;
  const bool vec2 = ((p.ldc & 1) == 0) && ((reinterpret_cast<uintptr_t>(p.C) & 7) == 0);
#pragma unroll
  for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + mi * 16 + g + 8 * h;
      if (row >= M) continue;
      int32_t* crow = p.C + static_cast<int64_t>(row) * p.ldc;
#pragma unroll
      for (int ni = 0; ni < NT; ++ni) {
        const int col = col0 + ni * 8 + 2 * t;  // even
        const int32_t v0 = acc[mi][ni][2 * h];
        const int32_t v1 = acc[mi][ni][2 * h + 1];
        if (p.atomic_add) {  // uniform over the grid; result unused (ptxas may emit RED)
          if (col < N) atomicAdd(crow + col, v0);
          if (col + 1 < N) atomicAdd(crow + col + 1, v1);
        } else {
          store_pair<Int32Traits>(crow, col, v0, v1, vec2, N);
        }
      }
    }
  }
}

// Output element type of the dequant epilogue: T as stored (16-bit types as raw bits, so nothing
// depends on cuda_fp16 / cuda_bf16 operator macros), cvt = round-to-nearest-even from float32,
// put2 = one vector store of an adjacent pair (address aligned to 2 * sizeof(T)).
template <int DT>
struct OutTraits;
template <>
struct OutTraits<static_cast<int>(Int8OutDtype::kFloat32)> {
  using T = float;
  static __device__ __forceinline__ T cvt(float v) { return v; }
  static __device__ __forceinline__ void put2(T* p, T a, T b) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
  }
};
template <>
struct OutTraits<static_cast<int>(Int8OutDtype::kBFloat16)> {
  using T = uint16_t;
  static __device__ __forceinline__ T cvt(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
  static __device__ __forceinline__ void put2(T* p, T a, T b) {
    *reinterpret_cast<uint32_t*>(p) = static_cast<uint32_t>(a) | (static_cast<uint32_t>(b) << 16);
  }
};
template <>
struct OutTraits<static_cast<int>(Int8OutDtype::kFloat16)> {
  using T = uint16_t;
  static __device__ __forceinline__ T cvt(float v) { return __half_as_ushort(__float2half_rn(v)); }
  static __device__ __forceinline__ void put2(T* p, T a, T b) {
    *reinterpret_cast<uint32_t*>(p) = static_cast<uint32_t>(a) | (static_cast<uint32_t>(b) << 16);
  }
};

// ((float(acc) * xs) * ws) + b, each step one IEEE round-to-nearest op (the _rn intrinsics are
// never contracted into an FMA), as int8_linear_reference computes it.
__device__ __forceinline__ float dequant(int32_t acc, float xs, float ws, float b, bool has_bias) {
  const float f = __fmul_rn(__fmul_rn(__int2float_rn(acc), xs), ws);
  return has_bias ? __fadd_rn(f, b) : f;
}

template <int DT, int MT, int NT>
__device__ __forceinline__ void dequant_tile(const DequantStore& p,
                                             const int32_t (&acc)[MT][NT][4], int row0, int col0,
                                             int lane, int M, int N) {
  using Tr = OutTraits<DT>;
  using T = typename Tr::T;
  T* out = static_cast<T*>(p.out);
  const int g = lane >> 2;
  const int t = lane & 3;
  const bool vec2 =
      ((p.ldo & 1) == 0) && (reinterpret_cast<uintptr_t>(out) % (2 * sizeof(T)) == 0);
  const bool has_bias = p.bias != nullptr;
  // Per-column factors of this lane's 2 * NT columns, loaded once (columns past N: unused).
  float ws[NT][2], bs[NT][2];
#pragma unroll
  for (int ni = 0; ni < NT; ++ni)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int col = col0 + ni * 8 + 2 * t + e;
      ws[ni][e] = col < N ? __ldg(p.w_scale + col) : 0.f;
      bs[ni][e] = (has_bias && col < N) ? __ldg(p.bias + col) : 0.f;
    }
#pragma unroll
  for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + mi * 16 + g + 8 * h;
      if (row >= M) continue;
      const float xs = __ldg(p.x_scale + row);
      T* orow = out + static_cast<int64_t>(row) * p.ldo;
#pragma unroll
      for (int ni = 0; ni < NT; ++ni) {
        const int col = col0 + ni * 8 + 2 * t;  // even
        const T v0 = Tr::cvt(dequant(acc[mi][ni][2 * h], xs, ws[ni][0], bs[ni][0], has_bias));
        const T v1 = Tr::cvt(dequant(acc[mi][ni][2 * h + 1], xs, ws[ni][1], bs[ni][1], has_bias));
        store_pair<Tr>(orow, col, v0, v1, vec2, N);
      }
    }
  }
}

template <int MT, int NT>
__device__ __forceinline__ void store_tile(const DequantStore& p, const int32_t (&acc)[MT][NT][4],
                                           int row0, int col0, int lane, int M, int N) {
  switch (p.out_dtype) {  // uniform over the grid
    case static_cast<int>(Int8OutDtype::kBFloat16):
      dequant_tile<static_cast<int>(Int8OutDtype::kBFloat16)>(p, acc, row0, col0, lane, M, N);
      break;
    case static_cast<int>(Int8OutDtype::kFloat16):
      dequant_tile<static_cast<int>(Int8OutDtype::kFloat16)>(p, acc, row0, col0, lane, M, N);
      break;
    default:  // kFloat32 (the launcher rejects anything else)
      dequant_tile<static_cast<int>(Int8OutDtype::kFloat32)>(p, acc, row0, col0, lane, M, N);
      break;
  }
}

// ---- argument checks (host) ---------------------------------------------------------------

// The A / Bt / size preconditions both entry points share. cudaSuccess with *nothing = true:
// valid and empty (M == 0 or N == 0), launch nothing.
inline cudaError_t check_gemm_args(const int8_t* A, const int8_t* Bt, int M, int N, int K, int64_t lda,
                                   int64_t ldb, bool* nothing) {
  *nothing = false;
  if (M < 0 || N < 0 || K < 0) return cudaErrorInvalidValue;
  // Row indices are formed as m0 + r in int; keep them clear of overflow.
  if (M > INT32_MAX - 256 || N > INT32_MAX - 256) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) {
    *nothing = true;
    return cudaSuccess;
  }
  if ((N + 31) / 32 > 65535) return cudaErrorInvalidValue;  // grid.y limit for the N = 32 tiles
  if (A == nullptr || Bt == nullptr) return cudaErrorInvalidValue;
  if (K % 16 != 0 || lda % 16 != 0 || ldb % 16 != 0 || lda < 0 || ldb < 0)
    return cudaErrorInvalidValue;
  if ((reinterpret_cast<uintptr_t>(A) & 15) != 0 || (reinterpret_cast<uintptr_t>(Bt) & 15) != 0)
    return cudaErrorInvalidValue;
  return cudaSuccess;
}

// All of int8_gemm_tn's (and _sm90's) preconditions: check_gemm_args, then C non-null, 4-byte
// aligned, rows not overlapping. *nothing as in check_gemm_args (C is then not looked at).
inline cudaError_t check_int32_gemm(const int8_t* A, const int8_t* Bt, const int32_t* C, int M,
                                    int N, int K, int64_t lda, int64_t ldb, int64_t ldc,
                                    bool* nothing) {
  const cudaError_t e = check_gemm_args(A, Bt, M, N, K, lda, ldb, nothing);
  if (e != cudaSuccess || *nothing) return e;
  if (C == nullptr || (reinterpret_cast<uintptr_t>(C) & 3) != 0) return cudaErrorInvalidValue;
  if (M > 1 && ldc < N) return cudaErrorInvalidValue;  // rows of C would overlap
  return cudaSuccess;
}

// All of int8_gemm_tn_dequant's (and _sm90's) preconditions: check_gemm_args, then out / scales /
// bias (see int8_gemm.h). *nothing as in check_gemm_args (out and the rest are then not looked at).
inline cudaError_t check_dequant_gemm(const int8_t* A, const int8_t* Bt, const void* out,
                                      Int8OutDtype out_dtype, const float* x_scale,
                                      const float* w_scale, const float* bias, int M, int N, int K,
                                      int64_t lda, int64_t ldb, int64_t ldo, bool* nothing) {
  const cudaError_t e = check_gemm_args(A, Bt, M, N, K, lda, ldb, nothing);
  if (e != cudaSuccess || *nothing) return e;
  size_t elem = 0;
  switch (out_dtype) {
    case Int8OutDtype::kFloat32: elem = 4; break;
    case Int8OutDtype::kBFloat16:
    case Int8OutDtype::kFloat16: elem = 2; break;
    default: return cudaErrorInvalidValue;
  }
  if (out == nullptr || reinterpret_cast<uintptr_t>(out) % elem != 0) return cudaErrorInvalidValue;
  if (x_scale == nullptr || w_scale == nullptr) return cudaErrorInvalidValue;
  if ((reinterpret_cast<uintptr_t>(x_scale) & 3) != 0 ||
      (reinterpret_cast<uintptr_t>(w_scale) & 3) != 0 ||
      (reinterpret_cast<uintptr_t>(bias) & 3) != 0)
    return cudaErrorInvalidValue;
  if (M > 1 && ldo < N) return cudaErrorInvalidValue;  // rows of out would overlap
  return cudaSuccess;
}

}  // namespace int8_common
}  // namespace compress
