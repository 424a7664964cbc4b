// Per-token int8 quantization and the weight-only int8 GEMV (w8a16). Contracts: int8_quant.h.
// Kernels only; no torch here (compile time). Instantiations: 3 (quantize, one per input dtype)
// + 6 (GEMV: 3 dtypes x 2 row-capacity buckets).
//
// ---------------------------------------------------------------------------------------------
// quantize_per_token_kernel<dtype>
//   256 threads = 8 warps; a row is owned by a group of `warps_per_row` (1, 2, 4 or 8) warps
//   chosen by the launcher from K (about 4 vectors per thread, at most 8 warps), so a block does
//   8 / warps_per_row rows: one warp per row for short rows, the whole block for long ones.
//   Row partition (per row: x rows need not be aligned, ldx is arbitrary):
//     [0, head)          scalar loads up to the first 16-byte boundary of the row
//     [head, tail)       nvec 16-byte vectors (4 float32 / 8 bf16 / 8 f16 elements)
//     [tail, K)          scalar loads
//   Thread gt of the group (0 <= gt < 32 * warps_per_row) takes head elements gt, gt + G, ...,
//   vectors gt, gt + G, ... and tail elements likewise (G = threads per row: coalesced).
//   Pass 1: absmax with a NaN-propagating max (like torch.amax), warp shuffle tree, then (if the
//   group has several warps) one smem slot per warp and a block barrier. Pass 2 reads the row
//   again (an L1 / L2 hit: the block's rows are at most 8 * 32 * 4 vectors = 32 KiB) and stores
//   q; 4- / 8-byte vector stores of q when q's row offset head is aligned, else byte stores.
//   Bit-exactness: max and |.| are exact; scale = __fdiv_rn(absmax, 127) and x / scale =
//   __fdiv_rn (IEEE, never the reciprocal-multiply of fast-math); rint = __float2int_rn
//   (round half to even, saturating), then the int clamp to [-127, 127] = clamp(rint(y)).
//
// ---------------------------------------------------------------------------------------------
// w8a16_gemv_kernel<dtype, MAXM>  (M <= MAXM <= 16; MAXM = 4 or 16 keeps registers small for
//   decode, M = 1..4)
//   128 threads = 4 warps; each warp owns kGCols = 4 output columns n, the CTA 16; grid.x = N/16.
//   The k axis is cut into spans of 512 = 32 lanes x 16 bytes: in span sp lane l holds qw[n,
//   512 sp + 16 l .. + 15] for its 4 columns (4 x 16-byte ld.global.nc.L1::no_allocate: the
//   weight streams through once, coalesced 512 B per column per warp). The next span's weights
//   are loaded before the current span is computed (register double buffer), also across chunk
//   barriers.
//   x (all M rows) is staged in shared memory as float32, a chunk of S spans at a time
//   (S * M * 2 KiB <= 48 KiB; for M = 1 and K <= 12288 the whole row: one staging, no barrier
//   inside the weight stream), in an interleaved layout so that the lane reads are conflict-free:
//     x[m][k] for k = k_chunk + 512 s + 16 l + 4 j + e  ->  xs[((m * S + s) * 4 + j) * 32 + l].e
//   i.e. for fixed (m, s, j) the 32 lanes read 32 consecutive float4 (512 B, no bank conflict),
//   and the float4 a lane reads holds exactly the k of its weight word j.
//   int8 -> float32: 0x4B000000 | (b ^ 0x80) is the float 2^23 + (b + 128); minus 2^23 + 128 it
//   is b, exactly (one PRMT + one FADD per weight, instead of the quarter-rate I2F).
//   Accumulation: per lane acc[m][c] += x * w (fmaf) along its k, then a reduce-scatter over the
//   warp (halving exchange: 32 + 16 + 8 + 4 + 2 shuffles for 64 values, not 5 x 64), after which
//   lane L owns values base(L) .. base(L) + V/32 - 1 of the flattened [MAXM][4] tile (V < 32:
//   lanes that differ only in the low bits hold the same value; the lowest stores).
//   Epilogue: (acc * w_scale[n]) + bias[n] as two IEEE ops, one RNE conversion to the out dtype.
//   Throughput limits (why M <= 16 only): per weight byte M FMAs + 2 conversion ops; at H100
//   bandwidth (~15 B/clk/SM) the FP32 pipe keeps up to M ~ 8; beyond that this kernel is
//   compute-bound and the glue's tensor-core fallback wins (see int8_linear_cuda.cpp).
// ---------------------------------------------------------------------------------------------
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "int8_quant.h"
#include "int8_quant_device.cuh"

namespace compress {
namespace {

using namespace int8_device;  // Elem, quant1, pack4, ReduceScatter, ...; elem_size, misaligned

// ================================ quantize_per_token ==========================================

constexpr int kQThreads = 256;
constexpr int kQWarps = kQThreads / 32;

template <int DT>
__global__ void __launch_bounds__(kQThreads)
    quantize_per_token_kernel(const typename Elem<DT>::Raw* __restrict__ x, int64_t ldx,
                              int8_t* __restrict__ q, float* __restrict__ scale, int64_t R, int K,
                              int warps_per_row) {
  using E = Elem<DT>;
  using Raw = typename E::Raw;
  constexpr int V = E::kVec;
  __shared__ float red[kQWarps];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int grp = warp / warps_per_row;                     // row slot in this block
  const int gt = (warp - grp * warps_per_row) * 32 + lane;  // thread index within the row group
  const int G = warps_per_row * 32;                         // threads per row
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kQWarps / warps_per_row) + grp;
  const bool active = row < R;
  const Raw* xr = x + (active ? row : 0) * ldx;

  // Row partition: scalar head up to the first 16-byte boundary, vectors, scalar tail.
  const int mis = static_cast<int>((reinterpret_cast<uintptr_t>(xr) & 15) / sizeof(Raw));
  const int head = min(K, (V - mis) & (V - 1));
  const int nvec = (K - head) / V;
  const int tail = head + nvec * V;

  // ---- pass 1: absmax
  float amax = 0.f;
  if (active) {
    for (int i = gt; i < head; i += G) amax = nan_max(amax, fabsf(E::to_f(xr[i])));
#pragma unroll 2
    for (int v = gt; v < nvec; v += G) {
      float f[V];
      E::load16(xr + head + v * V, f);
#pragma unroll
      for (int e = 0; e < V; ++e) amax = nan_max(amax, fabsf(f[e]));
    }
    for (int i = tail + gt; i < K; i += G) amax = nan_max(amax, fabsf(E::to_f(xr[i])));
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = nan_max(amax, __shfl_xor_sync(kFull, amax, o));
  if (warps_per_row > 1) {  // uniform over the block: every thread reaches the barrier
    if (lane == 0) red[warp] = amax;
    __syncthreads();
    const int w0 = grp * warps_per_row;
    amax = red[w0];
    for (int w = 1; w < warps_per_row; ++w) amax = nan_max(amax, red[w0 + w]);
  }
  if (!active) return;

  const float s = amax > 0.f ? __fdiv_rn(amax, 127.f) : 1.f;  // NaN > 0 is false: 1.0
  if (gt == 0) scale[row] = s;

  // ---- pass 2: q
  int8_t* qr = q + row * static_cast<int64_t>(K);
  for (int i = gt; i < head; i += G) qr[i] = static_cast<int8_t>(quant1(E::to_f(xr[i]), s));
  // q's vector i starts at byte row * K + head + V * i: V-aligned for every i iff for i = 0.
  const bool qvec = (reinterpret_cast<uintptr_t>(qr + head) & (V - 1)) == 0;
#pragma unroll 2
  for (int v = gt; v < nvec; v += G) {
    float f[V];
    E::load16(xr + head + v * V, f);
    int qi[V];
#pragma unroll
    for (int e = 0; e < V; ++e) qi[e] = quant1(f[e], s);
    int8_t* dst = qr + head + v * V;
    if (qvec) {
      if constexpr (V == 4) {
        *reinterpret_cast<uint32_t*>(dst) = pack4(qi[0], qi[1], qi[2], qi[3]);
      } else {
        *reinterpret_cast<uint2*>(dst) =
            make_uint2(pack4(qi[0], qi[1], qi[2], qi[3]), pack4(qi[4], qi[5], qi[6], qi[7]));
      }
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) dst[e] = static_cast<int8_t>(qi[e]);
    }
  }
  for (int i = tail + gt; i < K; i += G) qr[i] = static_cast<int8_t>(quant1(E::to_f(xr[i]), s));
}

// ===================================== w8a16 GEMV =============================================

constexpr int kGWarps = 4;
constexpr int kGThreads = 32 * kGWarps;
constexpr int kGCols = 4;                       // output columns per warp
constexpr int kGColsPerCta = kGWarps * kGCols;  // 16
constexpr int kSpanK = 32 * 16;                 // k per span: 32 lanes x 16 weight bytes
constexpr int kSpanSlots = kSpanK / 4;          // float4 slots of one x row per span (128)
constexpr int kSpanRowBytes = kSpanK * 4;       // one x row of one span as float32: 2 KiB
constexpr int kGSmemBudget = 48 * 1024;         // no opt-in attribute needed below this
static_assert(kW8A16MaxM * kSpanRowBytes <= kGSmemBudget, "one span of all rows must fit");


// Byte e (0..3) of w as float32, exactly: PRMT builds the bits 0x4B0000uu with uu = byte ^ 0x80
// (u = b + 128 in 0..255), i.e. the float 2^23 + u; subtracting 2^23 + 128 leaves b (all exact).
template <int e>
__device__ __forceinline__ float s8_to_f32(uint32_t w_xor80) {
  return __uint_as_float(__byte_perm(w_xor80, 0x4B000000u, 0x7540u + e)) - 8388736.f;
}


// (kGThreads, 4): <= 128 registers, 4 CTAs (16 warps) per SM. Without the min-blocks hint ptxas
// 13 picked 72 registers for MAXM = 4 on sm_90a and spilled.
template <int DT, int MAXM>
__global__ void __launch_bounds__(kGThreads, 4)
    w8a16_gemv_kernel(const typename Elem<DT>::Raw* __restrict__ x, int64_t ldx,
                      const int8_t* __restrict__ qw, int64_t ldw, const float* __restrict__ w_scale,
                      const float* __restrict__ bias, typename Elem<DT>::Raw* __restrict__ out,
                      int64_t ldo, int M, int N, int K, int S) {
  using E = Elem<DT>;
  using Raw = typename E::Raw;
  constexpr int C = kGCols;
  constexpr int V = MAXM * C;  // accumulators per lane, flattened [m][c]
  extern __shared__ float4 xs[];  // [M][S][4][32] float4, see the header comment

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int n0 = blockIdx.x * kGColsPerCta + warp * C;
  const int num_spans = (K + kSpanK - 1) / kSpanK;

  // ---- weight stream: lane's 16 bytes of column c in span sp at wp[c] + sp * kSpanK
  const int8_t* wp[C];
  bool wok[C];
#pragma unroll
  for (int c = 0; c < C; ++c) {
    wok[c] = n0 + c < N;
    wp[c] = qw + (wok[c] ? static_cast<int64_t>(n0 + c) * ldw : 0) + lane * 16;
  }
  auto load_w = [&](uint4 (&w)[C], int sp) {
    const bool k_ok = sp * kSpanK + lane * 16 < K;  // K % 16 == 0: a lane's 16 bytes all in or out
#pragma unroll
    for (int c = 0; c < C; ++c)
      w[c] = (wok[c] && k_ok) ? ld_stream16(wp[c] + static_cast<int64_t>(sp) * kSpanK)
                              : make_uint4(0u, 0u, 0u, 0u);  // int8 zeros
  };

  // ---- x staging: chunk of spans [sp0, sp0 + cs) -> xs (slots of spans >= cs are not read)
  const bool xvec = (reinterpret_cast<uintptr_t>(x) % (4 * sizeof(Raw)) == 0) &&
                    (M == 1 || ldx % 4 == 0);
  auto stage = [&](int sp0, int cs) {
    const int total = M * S * kSpanSlots;
    for (int f = threadIdx.x; f < total; f += kGThreads) {
      const int l = f & 31;
      const int j = (f >> 5) & 3;
      const int ms = f >> 7;  // m * S + s
      const int m = ms / S;
      const int s = ms - m * S;
      if (s >= cs) continue;
      const int k = (sp0 + s) * kSpanK + l * 16 + j * 4;
      float v[4] = {0.f, 0.f, 0.f, 0.f};
      if (k < K) {  // K % 16 == 0: the 4 elements are all in
        const Raw* p = x + static_cast<int64_t>(m) * ldx + k;
        if (xvec) {
          E::load4(p, v);
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e) v[e] = E::to_f(__ldg(p + e));
        }
      }
      xs[f] = make_float4(v[0], v[1], v[2], v[3]);
    }
  };

  float acc[V];
#pragma unroll
  for (int i = 0; i < V; ++i) acc[i] = 0.f;

  uint4 wn[C];
  if (num_spans > 0) load_w(wn, 0);
  for (int sp0 = 0; sp0 < num_spans; sp0 += S) {
    const int cs = min(S, num_spans - sp0);
    __syncthreads();  // every warp is done reading the previous chunk
    stage(sp0, cs);
    __syncthreads();
    for (int s = 0; s < cs; ++s) {
      uint4 w[C];
#pragma unroll
      for (int c = 0; c < C; ++c) w[c] = wn[c];
      if (sp0 + s + 1 < num_spans) load_w(wn, sp0 + s + 1);  // in flight during this span
      const float4* xrow = xs + s * kSpanSlots + lane;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float wf[C][4];
#pragma unroll
        for (int c = 0; c < C; ++c) {
          const uint32_t word = j == 0 ? w[c].x : j == 1 ? w[c].y : j == 2 ? w[c].z : w[c].w;
          const uint32_t u = word ^ 0x80808080u;
          wf[c][0] = s8_to_f32<0>(u);
          wf[c][1] = s8_to_f32<1>(u);
          wf[c][2] = s8_to_f32<2>(u);
          wf[c][3] = s8_to_f32<3>(u);
        }
#pragma unroll
        for (int m = 0; m < MAXM; ++m) {
          if (m >= M) break;
          const float4 xv = xrow[m * S * kSpanSlots + j * 32];
#pragma unroll
          for (int c = 0; c < C; ++c) {
            float a = acc[m * C + c];
            a = fmaf(xv.x, wf[c][0], a);
            a = fmaf(xv.y, wf[c][1], a);
            a = fmaf(xv.z, wf[c][2], a);
            a = fmaf(xv.w, wf[c][3], a);
            acc[m * C + c] = a;
          }
        }
      }
    }
  }

  // ---- warp reduction and epilogue
  int base = 0;
  ReduceScatter<V, 16>::run(acc, lane, base);
  constexpr int kOwn = V >= 32 ? V / 32 : 1;
  constexpr int kDupMask = V >= 32 ? 0 : 32 / V - 1;
  if ((lane & kDupMask) != 0) return;
#pragma unroll
  for (int i = 0; i < kOwn; ++i) {
    const int flat = base + i;
    const int m = flat / C;
    const int n = n0 + flat % C;
    if (m < M && n < N) {
      float r = __fmul_rn(acc[i], __ldg(w_scale + n));
      if (bias != nullptr) r = __fadd_rn(r, __ldg(bias + n));
      out[static_cast<int64_t>(m) * ldo + n] = E::from_f(r);
    }
  }
}

// ================================== launchers =================================================

template <int DT>
cudaError_t launch_quantize(const void* x, int64_t R, int K, int64_t ldx, int8_t* q, float* scale,
                            cudaStream_t stream) {
  using Raw = typename Elem<DT>::Raw;
  constexpr int V = Elem<DT>::kVec;
  // About 4 vectors per thread, at most the whole block per row.
  const int64_t nvec = (static_cast<int64_t>(K) + V - 1) / V;
  int wpr = 1;
  while (wpr < kQWarps && nvec > static_cast<int64_t>(wpr) * 32 * 4) wpr *= 2;
  const int64_t rows_per_block = kQWarps / wpr;
  const int64_t blocks = (R + rows_per_block - 1) / rows_per_block;
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  quantize_per_token_kernel<DT><<<static_cast<unsigned>(blocks), kQThreads, 0, stream>>>(
      static_cast<const Raw*>(x), ldx, q, scale, R, K, wpr);
  return cudaGetLastError();
}

template <int DT, int MAXM>
cudaError_t launch_gemv(const void* x, int64_t ldx, const int8_t* qw, int64_t ldw,
                        const float* w_scale, const float* bias, void* out, int64_t ldo, int M,
                        int N, int K, cudaStream_t stream) {
  using Raw = typename Elem<DT>::Raw;
  const int num_spans = (K + kSpanK - 1) / kSpanK;
  int S = kGSmemBudget / (M * kSpanRowBytes);  // >= 1 (static_assert above)
  if (S > num_spans) S = num_spans > 0 ? num_spans : 1;
  const size_t smem = static_cast<size_t>(M) * S * kSpanRowBytes;
  const unsigned grid = static_cast<unsigned>((N + kGColsPerCta - 1) / kGColsPerCta);
  w8a16_gemv_kernel<DT, MAXM><<<grid, kGThreads, smem, stream>>>(
      static_cast<const Raw*>(x), ldx, qw, ldw, w_scale, bias, static_cast<Raw*>(out), ldo, M, N,
      K, S);
  return cudaGetLastError();
}

template <int DT>
cudaError_t launch_gemv_for_m(const void* x, int64_t ldx, const int8_t* qw, int64_t ldw,
                              const float* w_scale, const float* bias, void* out, int64_t ldo,
                              int M, int N, int K, cudaStream_t stream) {
  if (M <= 4) return launch_gemv<DT, 4>(x, ldx, qw, ldw, w_scale, bias, out, ldo, M, N, K, stream);
  return launch_gemv<DT, kW8A16MaxM>(x, ldx, qw, ldw, w_scale, bias, out, ldo, M, N, K, stream);
}

}  // namespace

cudaError_t quantize_per_token(const void* x, FloatDtype dtype, int64_t R, int64_t K, int64_t ldx,
                               int8_t* q, float* scale, cudaStream_t stream) {
  const size_t es = elem_size(dtype);
  if (es == 0) return cudaErrorInvalidValue;
  if (R < 0 || K < 0 || K > INT32_MAX - 1024 || ldx < 0) return cudaErrorInvalidValue;
  if (R == 0) return cudaSuccess;
  if (scale == nullptr || misaligned(scale, 4)) return cudaErrorInvalidValue;
  if (K > 0 && (x == nullptr || q == nullptr || misaligned(x, es))) return cudaErrorInvalidValue;
  if (K == 0) ldx = 0;  // x is never read; keep the row pointers at x
  const int k = static_cast<int>(K);
  switch (dtype) {
    case FloatDtype::kFloat32: return launch_quantize<0>(x, R, k, ldx, q, scale, stream);
    case FloatDtype::kBFloat16: return launch_quantize<1>(x, R, k, ldx, q, scale, stream);
    case FloatDtype::kFloat16: return launch_quantize<2>(x, R, k, ldx, q, scale, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t w8a16_gemv(const void* x, FloatDtype dtype, int64_t ldx, const int8_t* qw, int64_t ldw,
                       const float* w_scale, const float* bias, void* out, int64_t ldo, int M,
                       int N, int K, cudaStream_t stream) {
  const size_t es = elem_size(dtype);
  if (es == 0) return cudaErrorInvalidValue;
  if (M < 0 || M > kW8A16MaxM || N < 0 || K < 0) return cudaErrorInvalidValue;
  if (N > INT32_MAX - 1024 || K > INT32_MAX - 1024) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  if (K % 16 != 0 || ldw % 16 != 0 || ldw < 0 || ldx < 0) return cudaErrorInvalidValue;
  if (K > 0 && (x == nullptr || qw == nullptr || misaligned(qw, 16) || misaligned(x, es)))
    return cudaErrorInvalidValue;
  if (M > 1 && (ldx < K || ldo < N)) return cudaErrorInvalidValue;
  if (out == nullptr || misaligned(out, es)) return cudaErrorInvalidValue;
  if (w_scale == nullptr || misaligned(w_scale, 4) || misaligned(bias, 4))
    return cudaErrorInvalidValue;
  switch (dtype) {
    case FloatDtype::kFloat32:
      return launch_gemv_for_m<0>(x, ldx, qw, ldw, w_scale, bias, out, ldo, M, N, K, stream);
    case FloatDtype::kBFloat16:
      return launch_gemv_for_m<1>(x, ldx, qw, ldw, w_scale, bias, out, ldo, M, N, K, stream);
    case FloatDtype::kFloat16:
      return launch_gemv_for_m<2>(x, ldx, qw, ldw, w_scale, bias, out, ldo, M, N, K, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace compress
