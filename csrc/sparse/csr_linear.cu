// CSR (unstructured-sparse) linear: y [M, N] = x [M, K] @ W^T + bias, W as (crow, col, values).
// Contracts: sparse_linear_cuda.h. Kernels only; no torch here (compile time).
// Instantiations: 15 row kernels (3 dtypes x MV in {1, 2, 4, 8, 16}) + 2 transposes (2 / 4 bytes).
//
// ---------------------------------------------------------------------------------------------
// Target: small M (decode, 1..16) at 70-95% sparsity, where the stored entries (6 bytes each for
// 16-bit values: int32 col + value) are the traffic and x is small.
//
// 1. csr_transpose_kernel (M >= 2 only): x [M, K] -> xt [chunks][K][MV] (zero rows past M),
//    MV = min(M, 16) rounded up to a power of two, chunks = ceil(M / MV). Then one stored entry
//    (k = col) needs x[m0 .. m0 + MV - 1][k] = MV contiguous elements = one vector load of
//    MV * 2 (or 4) bytes <= 64 B (a single 32-byte sector for 16-bit MV <= 16), instead of MV
//    scattered loads. For M == 1 x itself is that layout (no copy).
// 2. csr_rows_kernel<DT, MV>: a warp per (output feature n, chunk); 8 warps per 256-thread block,
//    grid (ceil(N / 8), chunks). Lanes stride over the row's entries j = crow[n] + lane, + 32,
//    ... (clamped range, see sparse_linear_cuda.h), four entries per lane in flight: col / value
//    loads are ld.global.cs (streamed once, evict-first: they must not push x out of L1), the
//    x vectors ld.global.nc (read-only path, L1-cached: xt is re-read by every row). A col
//    outside [0, K) adds nothing. float32 FMA into acc[MV]; then the warp reduce-scatter
//    (MV - 1 + 5 - log2 MV shuffles) leaves one sum per lane group; bias, RNE, one store each.
//    Why x is not staged in shared memory: the only reuse of x is the gather, and an L1 hit
//    costs the same shared-memory-array bandwidth as an LDS, without the per-block staging pass
//    (M*K*es bytes per block, which would exceed the entries' own traffic at M = 16) and without
//    a size limit; the kernel uses no shared memory, so the carve-out is set to all-L1. When
//    xt does not fit in L1 (MV * K * es > ~200 KiB, e.g. M = 16, K > 6K in bf16) the gathers
//    hit L2 -- still correct, slower.
// ---------------------------------------------------------------------------------------------
#include "sparse/sparse_common_cuda.cuh"

namespace compress {
namespace {

using namespace sparse_detail;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

int mv_for(int M) { return M <= 1 ? 1 : M <= 2 ? 2 : M <= 4 ? 4 : M <= 8 ? 8 : 16; }

// MV elements at p (aligned to min(16, MV * sizeof(Raw)) bytes) -> float32.
template <int DT, int MV>
__device__ __forceinline__ void load_xv(const typename Elem<DT>::Raw* p, float (&f)[MV]) {
  using E = Elem<DT>;
  using Raw = typename E::Raw;
  constexpr int kBytes = MV * static_cast<int>(sizeof(Raw));
  if constexpr (kBytes == 2) {
    f[0] = E::to_f(__ldg(reinterpret_cast<const unsigned short*>(p)));
  } else {
    constexpr int kWords = kBytes / 4;
    uint32_t w[kWords];
    if constexpr (kBytes == 4) {
      w[0] = __ldg(reinterpret_cast<const unsigned int*>(p));
    } else if constexpr (kBytes == 8) {
      const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
      w[0] = u.x;
      w[1] = u.y;
    } else {
#pragma unroll
      for (int q = 0; q < kBytes / 16; ++q) {
        const uint4 u = __ldg(reinterpret_cast<const uint4*>(p) + q);
        w[4 * q] = u.x;
        w[4 * q + 1] = u.y;
        w[4 * q + 2] = u.z;
        w[4 * q + 3] = u.w;
      }
    }
    if constexpr (sizeof(Raw) == 4) {
#pragma unroll
      for (int i = 0; i < MV; ++i) f[i] = __uint_as_float(w[i]);
    } else {
#pragma unroll
      for (int i = 0; i < MV / 2; ++i) {
        f[2 * i] = E::to_f(static_cast<Raw>(w[i] & 0xffffu));
        f[2 * i + 1] = E::to_f(static_cast<Raw>(w[i] >> 16));
      }
    }
  }
}

template <int DT>
__device__ __forceinline__ float load_value_cs(const typename Elem<DT>::Raw* p) {
  if constexpr (DT == kF32) {
    return __ldcs(p);
  } else {
    return Elem<DT>::to_f(__ldcs(reinterpret_cast<const unsigned short*>(p)));
  }
}

template <int DT, int MV>
__global__ void __launch_bounds__(kThreads)
    csr_rows_kernel(const void* xt_, int64_t xt_chunk, const int32_t* __restrict__ crow,
                    const int32_t* __restrict__ col, const void* values_, int64_t nnz,
                    const float* __restrict__ bias, void* out_, int64_t ldo, int M, int N, int K) {
  using E = Elem<DT>;
  using Raw = typename E::Raw;
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (n >= N) return;  // whole warps only
  const int m0 = blockIdx.y * MV;
  const int mc = M - m0 < MV ? M - m0 : MV;
  const Raw* __restrict__ xt = static_cast<const Raw*>(xt_) + blockIdx.y * xt_chunk;
  const Raw* __restrict__ values = static_cast<const Raw*>(values_);
  const unsigned uK = static_cast<unsigned>(K);

  int64_t jbeg, jend;
  row_range(crow, n, nnz, &jbeg, &jend);
  float acc[MV];
#pragma unroll
  for (int i = 0; i < MV; ++i) acc[i] = 0.f;

  auto fma_entry = [&](int32_t c, float v) {
    if (static_cast<unsigned>(c) < uK) {  // a col outside [0, K) adds nothing
      float xv[MV];
      load_xv<DT, MV>(xt + static_cast<int64_t>(c) * MV, xv);
#pragma unroll
      for (int i = 0; i < MV; ++i) acc[i] = fmaf(v, xv[i], acc[i]);
    }
  };

  int64_t j = jbeg + lane;
  for (; j + 96 < jend; j += 128) {  // 4 entries per lane in flight
    int32_t c[4];
    float v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      c[u] = __ldcs(col + j + 32 * u);
      v[u] = load_value_cs<DT>(values + j + 32 * u);
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) fma_entry(c[u], v[u]);
  }
  for (; j < jend; j += 32) fma_entry(__ldcs(col + j), load_value_cs<DT>(values + j));

  const int idx = ReduceScatter<MV>::run(acc, lane);
  if (ReduceScatter<MV>::store_lane(lane) && idx < mc) {
    const float b = bias != nullptr ? __ldg(bias + n) : 0.f;
    static_cast<Raw*>(out_)[static_cast<int64_t>(m0 + idx) * ldo + n] = E::from_f(acc[0] + b);
  }
}

// xt[chunk][k][mm] = x[chunk * MV + mm][k] (0 past M), raw copies; grid (k blocks, chunks).
template <typename Raw>
__global__ void __launch_bounds__(kThreads)
    csr_transpose_kernel(const Raw* __restrict__ x, int64_t ldx, Raw* __restrict__ xt, int M,
                         int K, int MV) {
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * MV;
  Raw* dst = xt + m0 * K;  // chunk blockIdx.y starts at blockIdx.y * K * MV
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < K;
       k += static_cast<int64_t>(gridDim.x) * kThreads) {
    for (int mm = 0; mm < MV; ++mm)
      dst[k * MV + mm] = m0 + mm < M ? x[(m0 + mm) * ldx + k] : Raw(0);
  }
}

template <int DT>
cudaError_t launch_rows(int MV, dim3 grid, const void* xt, int64_t xt_chunk, const int32_t* crow,
                        const int32_t* col, const void* values, int64_t nnz, const float* bias,
                        void* out, int64_t ldo, int M, int N, int K, cudaStream_t stream) {
  const void* fn = nullptr;
  switch (MV) {
    case 1: fn = reinterpret_cast<const void*>(&csr_rows_kernel<DT, 1>); break;
    case 2: fn = reinterpret_cast<const void*>(&csr_rows_kernel<DT, 2>); break;
    case 4: fn = reinterpret_cast<const void*>(&csr_rows_kernel<DT, 4>); break;
    case 8: fn = reinterpret_cast<const void*>(&csr_rows_kernel<DT, 8>); break;
    case 16: fn = reinterpret_cast<const void*>(&csr_rows_kernel<DT, 16>); break;
    default: return cudaErrorInvalidValue;
  }
  // No shared memory: prefer the largest L1 (x is gathered through it). A hint; per device.
  cudaError_t e = cudaFuncSetAttribute(fn, cudaFuncAttributePreferredSharedMemoryCarveout, 0);
  if (e != cudaSuccess) return e;
  void* args[] = {const_cast<void**>(&xt), &xt_chunk, const_cast<int32_t**>(&crow),
                  const_cast<int32_t**>(&col), const_cast<void**>(&values), &nnz,
                  const_cast<float**>(&bias), &out, &ldo, &M, &N, &K};
  e = cudaLaunchKernel(fn, grid, dim3(kThreads), args, 0, stream);
  if (e != cudaSuccess) return e;
  return cudaGetLastError();
}

bool misaligned(const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a != 0; }

}  // namespace

int64_t csr_linear_scratch_elems(int M, int K) {
  if (M <= 1 || K <= 0) return 0;
  const int MV = mv_for(M);
  const int64_t chunks = (static_cast<int64_t>(M) + MV - 1) / MV;
  return chunks * K * MV;
}

cudaError_t csr_linear(const void* x, int64_t ldx, void* scratch, const int32_t* crow,
                       const int32_t* col, const void* values, int64_t nnz, const float* bias,
                       void* out, int64_t ldo, SparseDtype dtype, int M, int N, int K,
                       cudaStream_t stream) {
  constexpr int kMax = 0x7fffffff - 1024;
  if (M < 0 || N < 0 || K < 0 || M > kMax || N > kMax || K > kMax || nnz < 0)
    return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  const uintptr_t es = dtype == SparseDtype::kFloat32 ? 4 : 2;
  if (dtype != SparseDtype::kFloat32 && dtype != SparseDtype::kBFloat16 &&
      dtype != SparseDtype::kFloat16)
    return cudaErrorInvalidValue;
  if (crow == nullptr || misaligned(crow, 4) || misaligned(col, 4) || misaligned(bias, 4))
    return cudaErrorInvalidValue;
  if (out == nullptr || misaligned(out, es) || ldo < 0 || (M > 1 && ldo < N) || ldx < 0)
    return cudaErrorInvalidValue;
  const int MV = mv_for(M);
  const int64_t chunks = (static_cast<int64_t>(M) + MV - 1) / MV;
  if (chunks > 65535) return cudaErrorInvalidValue;  // grid.y
  const bool gather = nnz > 0 && K > 0;
  if (gather && (x == nullptr || values == nullptr || col == nullptr || misaligned(x, es) ||
                 misaligned(values, es)))
    return cudaErrorInvalidValue;

  const void* xt = x;
  int64_t xt_chunk = 0;
  if (gather && M > 1) {
    if (scratch == nullptr || misaligned(scratch, 16)) return cudaErrorInvalidValue;
    const int kb = (K + kThreads - 1) / kThreads;
    const dim3 tgrid(static_cast<unsigned>(kb < 4096 ? kb : 4096), static_cast<unsigned>(chunks));
    if (es == 4)
      csr_transpose_kernel<uint32_t><<<tgrid, kThreads, 0, stream>>>(
          static_cast<const uint32_t*>(x), ldx, static_cast<uint32_t*>(scratch), M, K, MV);
    else
      csr_transpose_kernel<uint16_t><<<tgrid, kThreads, 0, stream>>>(
          static_cast<const uint16_t*>(x), ldx, static_cast<uint16_t*>(scratch), M, K, MV);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    xt = scratch;
    xt_chunk = static_cast<int64_t>(K) * MV;
  }
  const dim3 grid(static_cast<unsigned>((static_cast<int64_t>(N) + kWarps - 1) / kWarps),
                  static_cast<unsigned>(chunks));
  switch (dtype) {
    case SparseDtype::kFloat32:
      return launch_rows<kF32>(MV, grid, xt, xt_chunk, crow, col, values, nnz, bias, out, ldo, M, N,
                               K, stream);
    case SparseDtype::kBFloat16:
      return launch_rows<kBF16>(MV, grid, xt, xt_chunk, crow, col, values, nnz, bias, out, ldo, M,
                                N, K, stream);
    case SparseDtype::kFloat16:
      return launch_rows<kF16>(MV, grid, xt, xt_chunk, crow, col, values, nnz, bias, out, ldo, M,
                               N, K, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace compress
