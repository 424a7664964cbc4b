// Fused dynamic W8A8 GEMV for small M (decode): quantize_per_token(x) + int8 GEMM + dequant
// epilogue in one kernel. Contract: int8_w8a8.h. Kernels only; no torch here (compile time).
// Instantiations: 6 (3 input dtypes x 2 row-capacity buckets, MAXM = 4 or 16, as the w8a16 GEMV).
// NOT YET RUN ON A GPU (written and compiled without one): tests/test_w8a8_linear.py's CUDA tests
// force this path (COMPRESS_W8A8_CUDA_PATH=fused) and compare it bit for bit with the two-kernel
// path and the reference.
//
// ---------------------------------------------------------------------------------------------
// w8a8_gemv_kernel<dtype, MAXM>   128 threads = 4 warps; dynamic smem = M * Kp + 64 bytes.
//   Phase 1 (quantize): warp w quantizes rows w, w + 4, ... of x into shared memory, xq int8
//   [M][Kp] row-major with Kp = K rounded up to 512 (zeros past K), and their scales xs[M]. The
//   arithmetic is int8_quant.cu's quantize kernel's, through the same device functions
//   (int8_quant_device.cuh): absmax with the NaN-propagating nan_max (exact, so the order of the
//   warp's partial maxima does not matter), scale = absmax > 0 ? __fdiv_rn(absmax, 127) : 1, and
//   quant1 (IEEE __fdiv_rn, round half to even, NaN -> 0, clamp to [-127, 127]): q and the scales
//   are bit-identical to quantize_per_token's. x is read with coalesced scalar loads (any
//   alignment, any ldx), twice per row like the quantize kernel (the second pass hits L1 / L2).
//   The CTA's first weight span is loaded before this phase, so its latency overlaps it.
//   Phase 2 (GEMV): output columns come in groups of 16 (4 per warp); CTA b takes groups b,
//   b + gridDim.x, ... (the grid is at most one wave, so a CTA that owns several groups
//   quantizes x once for all of them). For a group, the k axis is cut into spans of 512 = 32
//   lanes x 16 bytes, as in the w8a16 GEMV: in span sp lane l holds qw[n, 512 sp + 16 l .. + 15]
//   of its warp's 4 columns (16-byte ld.global.nc.L1::no_allocate, register double buffer: the
//   next span's, or the next group's first span's, loads are in flight while the current one is
//   computed), and reads xq[m][512 sp + 16 l .. + 15] as one 16-byte shared load per row (the 32
//   lanes read 512 consecutive bytes: conflict-free). acc[m][c] += __dp4a(x word, w word) over the
//   4 words: exact int32 sums (wrapping like the tensor-core kernel's only past K = 131072 of
//   worst-case values). Per group a reduce-scatter over the warp (ReduceScatter, int32: exact in
//   any order), then the epilogue of int8_gemm_tn_dequant in its order:
//   ((float(acc) * xs[m]) * w_scale[n]) + bias[n], each one IEEE _rn op, one RNE conversion.
//   Cost model (why only small M): every CTA redoes the quantization of all M x K elements (about
//   20 instructions each, __fdiv_rn being most of it), against 16 columns x M x K / 4 dp4a of
//   GEMV work per group; at M = 1 that is noise next to streaming the weight, at M = 16 and
//   N = 4096 (one group per CTA) an estimated ~0.75 us x M per SM: measure before trusting the
//   M <= 16 threshold of the glue.
// ---------------------------------------------------------------------------------------------
#include <cuda_runtime.h>

#include <cstdint>

#include "int8_quant_device.cuh"
#include "int8_w8a8.h"

namespace compress {
namespace {

using namespace int8_device;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kCols = 4;                         // output columns per warp per group
constexpr int kGroupCols = kWarps * kCols;       // 16 columns per group
constexpr int kSpanK = 32 * 16;                  // k per span: 32 lanes x 16 bytes
constexpr int kScaleBytes = 4 * kW8A8MaxM;       // xs after xq
constexpr int kSmemMax = 96 * 1024;              // see w8a8_gemv_fits (int8_w8a8.h)
constexpr int kSmemDefault = 48 * 1024;          // above this the kernel needs the opt-in attribute

template <int DT>
__device__ __forceinline__ void quantize_rows(const typename Elem<DT>::Raw* __restrict__ x,
                                              int64_t ldx, int M, int K, int Kp, int8_t* xq,
                                              float* xs, int warp, int lane) {
  using E = Elem<DT>;
  for (int m = warp; m < M; m += kWarps) {
    const typename E::Raw* xr = x + static_cast<int64_t>(m) * ldx;
    float amax = 0.f;
    for (int k = lane; k < K; k += 32) amax = nan_max(amax, fabsf(E::to_f(__ldg(xr + k))));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = nan_max(amax, __shfl_xor_sync(kFull, amax, o));
    const float s = amax > 0.f ? __fdiv_rn(amax, 127.f) : 1.f;  // NaN > 0 is false: 1.0
    if (lane == 0) xs[m] = s;
    uint32_t* qr = reinterpret_cast<uint32_t*>(xq + static_cast<int64_t>(m) * Kp);
    for (int k4 = 4 * lane; k4 < Kp; k4 += 4 * 32) {  // 4 consecutive k per lane: one 32-bit store
      int qi[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) qi[e] = k4 + e < K ? quant1(E::to_f(__ldg(xr + k4 + e)), s) : 0;
      qr[k4 / 4] = pack4(qi[0], qi[1], qi[2], qi[3]);
    }
  }
}

// (kThreads, 4): <= 128 registers, as the w8a16 GEMV.
template <int DT, int MAXM>
__global__ void __launch_bounds__(kThreads, 4)
    w8a8_gemv_kernel(const typename Elem<DT>::Raw* __restrict__ x, int64_t ldx,
                     const int8_t* __restrict__ qw, int64_t ldw, const float* __restrict__ w_scale,
                     const float* __restrict__ bias, typename Elem<DT>::Raw* __restrict__ out,
                     int64_t ldo, int M, int N, int K, int Kp) {
  using E = Elem<DT>;
  constexpr int C = kCols;
  constexpr int V = MAXM * C;  // accumulators per lane, flattened [m][c]
  extern __shared__ __align__(16) unsigned char smem[];
  int8_t* xq = reinterpret_cast<int8_t*>(smem);      // [M][Kp]
  float* xs = reinterpret_cast<float*>(smem + static_cast<int64_t>(M) * Kp);  // [M]: Kp % 512 == 0

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int Kw = (K + 15) / 16 * 16;  // the weight's k extent: a lane's 16 bytes all in or all out
  const int num_spans = Kp / kSpanK;
  const int num_groups = (N + kGroupCols - 1) / kGroupCols;

  auto load_w = [&](uint4 (&w)[C], int g, int sp) {
    const int n0 = g * kGroupCols + warp * C;
    const int k = sp * kSpanK + lane * 16;
#pragma unroll
    for (int c = 0; c < C; ++c)
      w[c] = (n0 + c < N && k < Kw) ? ld_stream16(qw + static_cast<int64_t>(n0 + c) * ldw + k)
                                    : make_uint4(0u, 0u, 0u, 0u);
  };

  uint4 wn[C];
  load_w(wn, blockIdx.x, 0);  // in flight during the quantization (gridDim.x <= num_groups)
  quantize_rows<DT>(x, ldx, M, K, Kp, xq, xs, warp, lane);
  __syncthreads();  // xq, xs complete; read-only from here on

  int acc[V];
#pragma unroll
  for (int i = 0; i < V; ++i) acc[i] = 0;

  for (int g = blockIdx.x; g < num_groups; g += gridDim.x) {
    for (int sp = 0; sp < num_spans; ++sp) {
      uint4 w[C];
#pragma unroll
      for (int c = 0; c < C; ++c) w[c] = wn[c];
      const bool same_group = sp + 1 < num_spans;  // next: (g, sp + 1) or (g + gridDim.x, 0)
      if (same_group || g + static_cast<int>(gridDim.x) < num_groups)
        load_w(wn, same_group ? g : g + gridDim.x, same_group ? sp + 1 : 0);
      const uint4* xv_row = reinterpret_cast<const uint4*>(xq + sp * kSpanK) + lane;
#pragma unroll
      for (int m = 0; m < MAXM; ++m) {
        if (m >= M) break;
        const uint4 xv = xv_row[static_cast<int64_t>(m) * (Kp / 16)];
#pragma unroll
        for (int c = 0; c < C; ++c) {
          int a = acc[m * C + c];
          a = __dp4a(static_cast<int>(xv.x), static_cast<int>(w[c].x), a);
          a = __dp4a(static_cast<int>(xv.y), static_cast<int>(w[c].y), a);
          a = __dp4a(static_cast<int>(xv.z), static_cast<int>(w[c].z), a);
          a = __dp4a(static_cast<int>(xv.w), static_cast<int>(w[c].w), a);
          acc[m * C + c] = a;
        }
      }
    }

    // ---- warp reduction and epilogue of group g
    int base = 0;
    ReduceScatter<V, 16>::run(acc, lane, base);
    constexpr int kOwn = V >= 32 ? V / 32 : 1;
    constexpr int kDupMask = V >= 32 ? 0 : 32 / V - 1;  // lanes holding a copy: the lowest stores
    if ((lane & kDupMask) == 0) {
#pragma unroll
      for (int i = 0; i < kOwn; ++i) {
        const int flat = base + i;
        const int m = flat / C;
        const int n = g * kGroupCols + warp * C + flat % C;
        if (m < M && n < N) {
          float r = __fmul_rn(__fmul_rn(__int2float_rn(acc[i]), xs[m]), __ldg(w_scale + n));
          if (bias != nullptr) r = __fadd_rn(r, __ldg(bias + n));
          out[static_cast<int64_t>(m) * ldo + n] = E::from_f(r);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] = 0;
  }
}

int64_t smem_bytes(int64_t M, int64_t K) {
  return M * ((K + kSpanK - 1) / kSpanK * kSpanK) + kScaleBytes;
}

template <int DT, int MAXM>
cudaError_t launch(const void* x, int64_t ldx, const int8_t* qw, int64_t ldw, const float* w_scale,
                   const float* bias, void* out, int64_t ldo, int M, int N, int K,
                   cudaStream_t stream) {
  using Raw = typename Elem<DT>::Raw;
  auto kernel = w8a8_gemv_kernel<DT, MAXM>;
  const int Kp = (K + kSpanK - 1) / kSpanK * kSpanK;
  const int smem = static_cast<int>(smem_bytes(M, K));
  cudaError_t err;
  if (smem > kSmemDefault) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
  }
  // At most one wave: every CTA resident at once, each quantizing x once for all its groups.
  int dev = 0, sms = 0, per_sm = 0;
  if ((err = cudaGetDevice(&dev)) != cudaSuccess) return err;
  if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess) return err;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
  if (err != cudaSuccess) return err;
  const int64_t groups = (static_cast<int64_t>(N) + kGroupCols - 1) / kGroupCols;
  int64_t grid = static_cast<int64_t>(per_sm > 0 ? per_sm : 1) * sms;
  if (grid > groups) grid = groups;
  kernel<<<static_cast<unsigned>(grid), kThreads, smem, stream>>>(
      static_cast<const Raw*>(x), ldx, qw, ldw, w_scale, bias, static_cast<Raw*>(out), ldo, M, N,
      K, Kp);
  return cudaGetLastError();
}

template <int DT>
cudaError_t launch_for_m(const void* x, int64_t ldx, const int8_t* qw, int64_t ldw,
                         const float* w_scale, const float* bias, void* out, int64_t ldo, int M,
                         int N, int K, cudaStream_t stream) {
  if (M <= 4) return launch<DT, 4>(x, ldx, qw, ldw, w_scale, bias, out, ldo, M, N, K, stream);
  return launch<DT, kW8A8MaxM>(x, ldx, qw, ldw, w_scale, bias, out, ldo, M, N, K, stream);
}

}  // namespace

bool w8a8_gemv_fits(int64_t M, int64_t K) {
  return M >= 1 && M <= kW8A8MaxM && K >= 1 && K <= INT32_MAX - 1024 && smem_bytes(M, K) <= kSmemMax;
}

cudaError_t w8a8_gemv(const void* x, FloatDtype dtype, int64_t ldx, const int8_t* qw, int64_t ldw,
                      const float* w_scale, const float* bias, void* out, int64_t ldo, int M,
                      int N, int K, cudaStream_t stream) {
  const size_t es = elem_size(dtype);
  if (es == 0) return cudaErrorInvalidValue;
  if (N < 0 || N > INT32_MAX - 1024 || !w8a8_gemv_fits(M, K)) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  if (ldw % 16 != 0 || ldw < (K + 15) / 16 * 16 || ldx < 0) return cudaErrorInvalidValue;
  if (M > 1 && ldo < N) return cudaErrorInvalidValue;
  if (x == nullptr || qw == nullptr || out == nullptr || w_scale == nullptr) return cudaErrorInvalidValue;
  if (misaligned(x, es) || misaligned(qw, 16) || misaligned(out, es) || misaligned(w_scale, 4) ||
      misaligned(bias, 4))
    return cudaErrorInvalidValue;
  switch (dtype) {
    case FloatDtype::kFloat32:
      return launch_for_m<0>(x, ldx, qw, ldw, w_scale, bias, out, ldo, M, N, K, stream);
    case FloatDtype::kBFloat16:
      return launch_for_m<1>(x, ldx, qw, ldw, w_scale, bias, out, ldo, M, N, K, stream);
    case FloatDtype::kFloat16:
      return launch_for_m<2>(x, ldx, qw, ldw, w_scale, bias, out, ldo, M, N, K, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace compress
