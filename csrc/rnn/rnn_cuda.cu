// Fused LSTM / GRU recurrence on CUDA: contracts in rnn_cuda.h; torch glue in rnn_cuda.cpp.
// CUDA headers only (no torch: keeps this file's nvcc time short). A numpy transcription of the
// index arithmetic and the barrier phases: benchmarks/dev/rnn_persistent_model.py (keep in sync).
//
// The input projection (and the LSTM biases) are already in xg; this file does the recurrence:
//   stage 1 (every step): a[b, g*H + u] = sum_k w_hh[g*H + u, k] * h[b, k], then the cell update
//     (LSTM: c = f*c + i*g, h = o*tanh(c); GRU: n = tanh(xn + r*(an + b_hn)), h = (1-z)*n + z*h)
//   stage 2 (LSTM with projection): h[b, q] = sum_u w_hr[q, u] * hh[b, u], hh = o*tanh(c)
//
// Building blocks shared by both paths:
//   matvec_rows: a warp per weight row; lanes take 4 consecutive k at a time (one 16- or 8-byte
//     load of the row, one float4 of h), float32 FMA for up to kNB = 4 batch rows at once, then a
//     butterfly reduction. load_w4 is the one place weights are read: an int8-weight variant
//     swaps it (4 int8 -> float4) and multiplies the reduced sum by its float32 row scale.
//   cell_update / proj_update: the gate math and the state update of one (b, u) / (b, q), with
//     the lengths mask; y is written in the element type here (rounding y_t now or after the
//     last step is the same single rounding).
//
// Persistent path (rnn_persistent_kernel, one cooperative launch): block j owns hidden units
// [j*U, j*U + ucnt) with all G gates of each, and projection rows [j*U2, j*U2 + qcnt). It copies
// those weight rows to shared memory once ([G][U][Kp] then [U2][Hp], element type), then per step:
//   stage h_{t-1} (all B x Kp, float32, from global buffer step % 2) into shared memory
//   -> matvec -> cell update of its units (c in global, always the same owner thread; h_t into
//   buffer (step + 1) % 2, or hh) -> [proj: grid.sync, stage hh, matvec, h_t and y] -> grid.sync.
// Two h buffers: a block may write h_t while a slower one still stages h_{t-1}; h_t is only
// written again (as h_{t+2}) after the next barrier, when every block is done reading it. hh has
// one buffer: written in stage 1, read in stage 2, the barriers separate them. Global state written
// by other blocks is read with ld.global.cg (L2; L1 is not coherent across SMs); cooperative
// groups' grid.sync orders the memory (fence + barrier).
//
// Stepwise path (any shape): per step rnn_step_cell_kernel (a block per 8 units x 16 batch rows,
// weights read from global / L2) and, with a projection, rnn_step_proj_kernel (32 outputs x 16
// rows); kernel boundaries are the barriers.
//
// Path choice (rnn_cuda_forward, want = kAuto): persistent when the device supports cooperative
// launch, 1 <= H, B <= kRnnPersistentMaxBatch (16), and with U = max(ceil(H / SMs), ceil(8 / G))
// units per block (blocks = ceil(H / U) <= SMs; U2 = ceil(P / blocks) projection rows, 0 without
// one) the shared memory
//   4 * (B * max(Kp, Hp) + round_up(B * max(G*U, U2), 4)) + es * (G*U*Kp + U2*Hp)
// (staged h, reduced sums, w_hh slice, w_hr slice; es = element size; Hp = 0 without projection),
// plus the kernel's static shared memory, is within the device's per-block opt-in limit, and the
// occupancy calculator confirms all blocks can be resident at once.
// Else stepwise. E.g. H100 (227 KB, 132 SMs): bf16 LSTM, B = 16, H = P = 1024: U = 8, 128 blocks,
// 64 KB of weights + 64 KB of staged h + 2 KB -> persistent; H = P = 2048: 256 KB of weights
// alone -> stepwise; float32 on an A100 (163 KB) at that size also -> stepwise.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "rnn/rnn_cuda.h"

namespace compress {
namespace {

namespace cg = cooperative_groups;

constexpr unsigned kFull = 0xffffffffu;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kNB = 4;              // batch rows per accumulator set (matvec_rows)
constexpr int kStepUnits = 8;       // stepwise cell kernel: hidden units per block (G*8 rows)
constexpr int kStepProjRows = 32;   // stepwise projection kernel: outputs per block
constexpr int kStepBatch = 16;      // stepwise kernels: batch rows per block
constexpr int kMaxGridY = 65535;
// Stepwise kernels: 3 blocks per SM (<= 80 registers; they use 70-80 without spills). Without a
// hint ptxas gave the sm_90a projection kernel 48 registers and a 12-byte spill; with 4 (<= 64)
// three kernels spill 4-8 bytes.
constexpr int kStepMinBlocks = 3;

constexpr int kF32 = static_cast<int>(RnnDtype::kFloat32);
constexpr int kBF16 = static_cast<int>(RnnDtype::kBFloat16);
constexpr int kF16 = static_cast<int>(RnnDtype::kFloat16);

// ---- element types: raw storage, exact widening, RNE narrowing; 4-element vectors ---------------
// 16-bit types are raw bits (torch builds with the cuda_fp16 / cuda_bf16 operators disabled).
template <int DT>
struct Elem;
template <>
struct Elem<kF32> {
  using Raw = float;
  using Vec4 = float4;  // 4 elements, 16 bytes
  static __device__ __forceinline__ float to_f(Raw v) { return v; }
  static __device__ __forceinline__ Raw from_f(float v) { return v; }
  static __device__ __forceinline__ float4 widen4(Vec4 v) { return v; }
};
__device__ __forceinline__ float bf16_to_f(uint32_t bits16) { return __uint_as_float(bits16 << 16); }
template <>
struct Elem<kBF16> {
  using Raw = uint16_t;
  using Vec4 = uint2;  // 4 elements, 8 bytes, little-endian: element 0 in the low half of .x
  static __device__ __forceinline__ float to_f(Raw v) { return bf16_to_f(v); }
  static __device__ __forceinline__ Raw from_f(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
  static __device__ __forceinline__ float4 widen4(Vec4 v) {
    return make_float4(bf16_to_f(v.x & 0xffffu), bf16_to_f(v.x >> 16), bf16_to_f(v.y & 0xffffu),
                       bf16_to_f(v.y >> 16));
  }
};
__device__ __forceinline__ float f16_to_f(uint32_t bits16) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits16)));
}
template <>
struct Elem<kF16> {
  using Raw = uint16_t;
  using Vec4 = uint2;
  static __device__ __forceinline__ float to_f(Raw v) { return f16_to_f(v); }
  static __device__ __forceinline__ Raw from_f(float v) { return __half_as_ushort(__float2half_rn(v)); }
  static __device__ __forceinline__ float4 widen4(Vec4 v) {
    return make_float4(f16_to_f(v.x & 0xffffu), f16_to_f(v.x >> 16), f16_to_f(v.y & 0xffffu),
                       f16_to_f(v.y >> 16));
  }
};

// Weights 4k .. 4k+3 of one row (row aligned to 4 elements) as float32. The only weight read.
template <int DT>
__device__ __forceinline__ float4 load_w4(const typename Elem<DT>::Raw* row, int k4) {
  using E = Elem<DT>;
  return E::widen4(reinterpret_cast<const typename E::Vec4*>(row)[k4]);
}

// Everything a kernel needs, by value (kernel parameter space).
struct Args {
  const void* xg;
  const void* w_hh;
  const void* w_hr;
  const float* b_hh;
  const int64_t* len;
  float* h;
  float* c;
  float* hh;
  void* y;
  int64_t T;
  int B, H, P, Kp, Hp;
  bool reverse, proj;
};

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ bool row_active(const Args& a, int64_t t, int b) {
  return a.len == nullptr || t < a.len[b];
}

// out[j * ldo + g * uo + ul] = sum_{k < 4*K4} w_row(g, ul)[k] * h[(j) * ldh + k] for j < nb (<= kNB),
// g < G, ul < ucnt, where w_row(g, ul) = w + g * w_gs + ul * w_us. Rows 4-element aligned (w) and
// 16-byte aligned (h, ldh % 4 == 0). w and h are generic pointers (shared or global memory).
// Called by every thread of the block (a warp per row; warps take rows r = warp, warp + 8, ...).
template <int DT>
__device__ __forceinline__ void matvec_rows(const typename Elem<DT>::Raw* w, int64_t w_gs, int64_t w_us,
                                            int G, int ucnt, const float* h, int64_t ldh, int nb, int K4,
                                            float* out, int ldo, int uo) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < G * ucnt; r += kWarps) {
    const int g = r / ucnt, ul = r - g * ucnt;
    const typename Elem<DT>::Raw* wr = w + g * w_gs + ul * w_us;
    float acc[kNB];
#pragma unroll
    for (int j = 0; j < kNB; ++j) acc[j] = 0.0f;
    for (int k4 = lane; k4 < K4; k4 += 32) {
      const float4 wv = load_w4<DT>(wr, k4);
#pragma unroll
      for (int j = 0; j < kNB; ++j) {
        if (j < nb) {
          const float4 hv = reinterpret_cast<const float4*>(h + j * ldh)[k4];
          acc[j] = fmaf(wv.x, hv.x, acc[j]);
          acc[j] = fmaf(wv.y, hv.y, acc[j]);
          acc[j] = fmaf(wv.z, hv.z, acc[j]);
          acc[j] = fmaf(wv.w, hv.w, acc[j]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kNB; ++j)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[j] += __shfl_xor_sync(kFull, acc[j], off);
    if (lane == 0) {
#pragma unroll
      for (int j = 0; j < kNB; ++j)
        if (j < nb) out[j * ldo + g * uo + ul] = acc[j];
    }
  }
}

// Stage 1 epilogue for batch row b, hidden unit u: acc[g * gs] is the recurrent sum of gate g;
// hc_row the row b of h_{t-1} (shared or global; read only without a projection, where P == H).
template <int DT, int G>
__device__ __forceinline__ void cell_update(const Args& a, int64_t t, int b, int u, const float* acc, int gs,
                                            const float* hc_row, float* hn) {
  using E = Elem<DT>;
  using Raw = typename E::Raw;
  const bool active = row_active(a, t, b);
  const int64_t row = t * a.B + b;
  const Raw* x = static_cast<const Raw*>(a.xg) + row * (G * static_cast<int64_t>(a.H)) + u;
  const int64_t hy = static_cast<int64_t>(b) * a.Kp + u, yi = row * a.P + u;  // only used where u < P
  if constexpr (G == 4) {
    const float i = sigmoidf_(acc[0] + E::to_f(x[0]));
    const float f = sigmoidf_(acc[gs] + E::to_f(x[a.H]));
    const float g = tanhf(acc[2 * gs] + E::to_f(x[2 * a.H]));
    const float o = sigmoidf_(acc[3 * gs] + E::to_f(x[3 * a.H]));
    float* c = a.c + static_cast<int64_t>(b) * a.H + u;
    const float c_new = f * *c + i * g;
    const float h_new = o * tanhf(c_new);
    if (active) *c = c_new;
    if (a.proj) {  // stage 2 masks h and writes y
      a.hh[static_cast<int64_t>(b) * a.Hp + u] = h_new;
      return;
    }
    hn[hy] = active ? h_new : hc_row[u];
    static_cast<Raw*>(a.y)[yi] = E::from_f(active ? h_new : 0.0f);
  } else {
    float ar = acc[0], az = acc[gs], an = acc[2 * gs];
    if (a.b_hh != nullptr) {
      ar += a.b_hh[u];
      az += a.b_hh[a.H + u];
      an += a.b_hh[2 * a.H + u];
    }
    const float r = sigmoidf_(E::to_f(x[0]) + ar);
    const float z = sigmoidf_(E::to_f(x[a.H]) + az);
    const float n = tanhf(E::to_f(x[2 * a.H]) + r * an);
    const float h_old = hc_row[u];
    const float h_new = (1.0f - z) * n + z * h_old;
    hn[hy] = active ? h_new : h_old;
    static_cast<Raw*>(a.y)[yi] = E::from_f(active ? h_new : 0.0f);
  }
}

// Stage 2 epilogue for batch row b, projected output q: h_new = acc; hc = h_{t-1} buffer (global).
template <int DT>
__device__ __forceinline__ void proj_update(const Args& a, int64_t t, int b, int q, float acc, const float* hc,
                                            float* hn) {
  const bool active = row_active(a, t, b);
  const int64_t i = static_cast<int64_t>(b) * a.Kp + q;
  hn[i] = active ? acc : __ldcg(hc + i);
  static_cast<typename Elem<DT>::Raw*>(a.y)[(t * a.B + b) * a.P + q] = Elem<DT>::from_f(active ? acc : 0.0f);
}

// n4 float4 from global (through L2: written by other blocks of this launch) to shared memory.
__device__ __forceinline__ void stage_cg(float* dst, const float* src, int n4) {
  for (int i = threadIdx.x; i < n4; i += kThreads)
    reinterpret_cast<float4*>(dst)[i] = __ldcg(reinterpret_cast<const float4*>(src) + i);
}

// ---- persistent path --------------------------------------------------------------------------

struct PersistentLayout {  // offsets in bytes into dynamic shared memory; see persistent_layout()
  int h_s, acc_s, w_s, wr_s, total;
};

// h_s [B][max(Kp, Hp)] f32 | acc_s [B][max(G*U, U2)] f32 (rounded to 4) | w_s [G*U][Kp] | wr_s [U2][Hp]
__host__ __device__ inline PersistentLayout persistent_layout(int G, int es, int B, int Kp, int Hp, int U, int U2) {
  const int kmax = Kp > Hp ? Kp : Hp;
  const int rows = G * U > U2 ? G * U : U2;
  PersistentLayout l;
  l.h_s = 0;
  l.acc_s = l.h_s + 4 * B * kmax;
  l.w_s = l.acc_s + 4 * ((B * rows + 3) / 4 * 4);
  l.wr_s = l.w_s + es * G * U * Kp;
  l.total = l.wr_s + es * U2 * Hp;
  return l;
}

template <int DT, int G>
__global__ void __launch_bounds__(kThreads, 1) rnn_persistent_kernel(Args a, int U, int U2) {
  using E = Elem<DT>;
  using Raw = typename E::Raw;
  extern __shared__ __align__(16) unsigned char smem[];
  const int B = a.B, H = a.H, P = a.P, Kp = a.Kp, Hp = a.proj ? a.Hp : 0;
  const PersistentLayout l = persistent_layout(G, sizeof(Raw), B, Kp, Hp, U, U2);
  float* h_s = reinterpret_cast<float*>(smem + l.h_s);
  float* acc_s = reinterpret_cast<float*>(smem + l.acc_s);
  Raw* w_s = reinterpret_cast<Raw*>(smem + l.w_s);
  Raw* wr_s = reinterpret_cast<Raw*>(smem + l.wr_s);
  const int u0 = blockIdx.x * U, ucnt = max(0, min(U, H - u0));
  const int q0 = blockIdx.x * U2, qcnt = max(0, min(U2, P - q0));
  const int K4 = Kp / 4, H4 = Hp / 4;

  // This block's weight rows, once: w_s[g*U + ul] = w_hh[g*H + u0 + ul], wr_s[ql] = w_hr[q0 + ql].
  using V4 = typename E::Vec4;
  const Raw* w = static_cast<const Raw*>(a.w_hh);
  for (int i = threadIdx.x; i < G * ucnt * K4; i += kThreads) {
    const int r = i / K4, k4 = i - r * K4, g = r / ucnt, ul = r - g * ucnt;
    reinterpret_cast<V4*>(w_s + (g * U + ul) * Kp)[k4] =
        reinterpret_cast<const V4*>(w + (static_cast<int64_t>(g) * H + u0 + ul) * Kp)[k4];
  }
  if (a.proj) {
    const Raw* wr = static_cast<const Raw*>(a.w_hr);
    for (int i = threadIdx.x; i < qcnt * H4; i += kThreads) {
      const int ql = i / H4, k4 = i - ql * H4;
      reinterpret_cast<V4*>(wr_s + ql * Hp)[k4] =
          reinterpret_cast<const V4*>(wr + static_cast<int64_t>(q0 + ql) * Hp)[k4];
    }
  }
  // (the __syncthreads after the first staging of h orders these copies before any matvec)

  cg::grid_group grid = cg::this_grid();
  for (int64_t step = 0; step < a.T; ++step) {
    const int64_t t = a.reverse ? a.T - 1 - step : step;
    const float* hc = a.h + (step & 1) * static_cast<int64_t>(B) * Kp;
    float* hn = a.h + ((step + 1) & 1) * static_cast<int64_t>(B) * Kp;
    stage_cg(h_s, hc, B * K4);
    __syncthreads();
    for (int b0 = 0; b0 < B; b0 += kNB)
      matvec_rows<DT>(w_s, static_cast<int64_t>(U) * Kp, Kp, G, ucnt, h_s + b0 * Kp, Kp, min(kNB, B - b0), K4,
                      acc_s + b0 * G * U, G * U, U);
    __syncthreads();
    for (int i = threadIdx.x; i < B * ucnt; i += kThreads) {
      const int b = i / ucnt, ul = i - b * ucnt;
      cell_update<DT, G>(a, t, b, u0 + ul, acc_s + b * G * U + ul, U, h_s + b * Kp, hn);
    }
    if (a.proj) {  // the same branch in every block: grid.sync counts match
      grid.sync();
      stage_cg(h_s, a.hh, B * H4);
      __syncthreads();
      for (int b0 = 0; b0 < B; b0 += kNB)
        matvec_rows<DT>(wr_s, 0, Hp, 1, qcnt, h_s + b0 * Hp, Hp, min(kNB, B - b0), H4, acc_s + b0 * U2, U2, U2);
      __syncthreads();
      for (int i = threadIdx.x; i < B * qcnt; i += kThreads) {
        const int b = i / qcnt, ql = i - b * qcnt;
        proj_update<DT>(a, t, b, q0 + ql, acc_s[b * U2 + ql], hc, hn);
      }
    }
    grid.sync();  // h_t complete everywhere; h_s / acc_s free again
  }
}

// ---- stepwise path ----------------------------------------------------------------------------

// grid (ceil(H / kStepUnits), min(ceil(B / kStepBatch), 65535)); block rows bb, bb + gridDim.y*16 ...
template <int DT, int G>
__global__ void __launch_bounds__(kThreads, kStepMinBlocks) rnn_step_cell_kernel(Args a, int64_t step) {
  using Raw = typename Elem<DT>::Raw;
  __shared__ __align__(16) float acc_s[kStepBatch * G * kStepUnits];
  const int u0 = blockIdx.x * kStepUnits, ucnt = min(kStepUnits, a.H - u0);
  const int64_t t = a.reverse ? a.T - 1 - step : step;
  const float* hc = a.h + (step & 1) * static_cast<int64_t>(a.B) * a.Kp;
  float* hn = a.h + ((step + 1) & 1) * static_cast<int64_t>(a.B) * a.Kp;
  const Raw* w = static_cast<const Raw*>(a.w_hh) + static_cast<int64_t>(u0) * a.Kp;
  for (int bb = blockIdx.y * kStepBatch; bb < a.B; bb += gridDim.y * kStepBatch) {
    const int nbb = min(kStepBatch, a.B - bb);
    for (int b0 = 0; b0 < nbb; b0 += kNB)
      matvec_rows<DT>(w, static_cast<int64_t>(a.H) * a.Kp, a.Kp, G, ucnt, hc + static_cast<int64_t>(bb + b0) * a.Kp,
                      a.Kp, min(kNB, nbb - b0), a.Kp / 4, acc_s + b0 * G * kStepUnits, G * kStepUnits, kStepUnits);
    __syncthreads();
    for (int i = threadIdx.x; i < nbb * ucnt; i += kThreads) {
      const int bl = i / ucnt, ul = i - bl * ucnt, b = bb + bl;
      cell_update<DT, G>(a, t, b, u0 + ul, acc_s + bl * G * kStepUnits + ul, kStepUnits,
                         hc + static_cast<int64_t>(b) * a.Kp, hn);
    }
    __syncthreads();  // acc_s is reused by the next batch slice
  }
}

// grid (ceil(P / kStepProjRows), min(ceil(B / kStepBatch), 65535))
template <int DT>
__global__ void __launch_bounds__(kThreads, kStepMinBlocks) rnn_step_proj_kernel(Args a, int64_t step) {
  using Raw = typename Elem<DT>::Raw;
  __shared__ __align__(16) float acc_s[kStepBatch * kStepProjRows];
  const int q0 = blockIdx.x * kStepProjRows, qcnt = min(kStepProjRows, a.P - q0);
  const int64_t t = a.reverse ? a.T - 1 - step : step;
  const float* hc = a.h + (step & 1) * static_cast<int64_t>(a.B) * a.Kp;
  float* hn = a.h + ((step + 1) & 1) * static_cast<int64_t>(a.B) * a.Kp;
  const Raw* w = static_cast<const Raw*>(a.w_hr) + static_cast<int64_t>(q0) * a.Hp;
  for (int bb = blockIdx.y * kStepBatch; bb < a.B; bb += gridDim.y * kStepBatch) {
    const int nbb = min(kStepBatch, a.B - bb);
    for (int b0 = 0; b0 < nbb; b0 += kNB)
      matvec_rows<DT>(w, 0, a.Hp, 1, qcnt, a.hh + static_cast<int64_t>(bb + b0) * a.Hp, a.Hp,
                      min(kNB, nbb - b0), a.Hp / 4, acc_s + b0 * kStepProjRows, kStepProjRows, kStepProjRows);
    __syncthreads();
    for (int i = threadIdx.x; i < nbb * qcnt; i += kThreads) {
      const int bl = i / qcnt, ql = i - bl * qcnt;
      proj_update<DT>(a, t, bb + bl, q0 + ql, acc_s[bl * kStepProjRows + ql], hc, hn);
    }
    __syncthreads();
  }
}

// ---- launchers ----------------------------------------------------------------------------------

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct PersistentPlan {
  const char* why = nullptr;  // nullptr: runnable
  int blocks = 0, U = 0, U2 = 0;
  size_t smem = 0;
};

template <int DT, int G>
PersistentPlan plan_persistent(const Args& a) {
  PersistentPlan pl;
  if (a.B > kRnnPersistentMaxBatch) {
    pl.why = "batch larger than 16 (kRnnPersistentMaxBatch)";
    return pl;
  }
  if (a.H < 1) {
    pl.why = "no hidden units (H = 0)";
    return pl;
  }
  int dev = 0, sms = 0, coop = 0, smem_optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    cudaGetLastError();  // not sticky; do not leave it for the next launch check
    pl.why = "device attribute query failed";
    return pl;
  }
  if (!coop || sms < 1) {
    pl.why = "device does not support cooperative launch";
    return pl;
  }
  if (a.Kp > smem_optin || a.Hp > smem_optin) {  // not even one weight row fits (and no int64 overflow below)
    pl.why = "the per-block weight slice and staged state exceed the shared memory per block";
    return pl;
  }
  const int64_t U = std::max(cdiv(a.H, sms), cdiv(kWarps, G));
  const int64_t blocks = cdiv(a.H, U);
  const int64_t U2 = a.proj ? cdiv(a.P, blocks) : 0;
  const int64_t es = sizeof(typename Elem<DT>::Raw), Hp = a.proj ? a.Hp : 0;
  const int64_t kmax = std::max<int64_t>(a.Kp, Hp), rows = std::max(G * U, U2);
  const int64_t smem = 4 * (a.B * kmax + cdiv(a.B * rows, 4) * 4) + es * (G * U * a.Kp + U2 * Hp);
  const void* kernel = reinterpret_cast<const void*>(rnn_persistent_kernel<DT, G>);
  cudaFuncAttributes attr;
  if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
    cudaGetLastError();
    pl.why = "kernel attribute query failed";
    return pl;
  }
  // Dynamic + static (sm_90 reports 1 KB of static shared memory for this kernel) within the
  // opt-in limit; this also keeps persistent_layout's int offsets in range.
  if (smem + static_cast<int64_t>(attr.sharedSizeBytes) > smem_optin) {
    pl.why = "the per-block weight slice and staged state exceed the shared memory per block";
    return pl;
  }
  int per_sm = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) !=
          cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, static_cast<size_t>(smem)) !=
          cudaSuccess) {
    cudaGetLastError();
    pl.why = "occupancy query failed";
    return pl;
  }
  if (static_cast<int64_t>(per_sm) * sms < blocks) {
    pl.why = "not every block can be resident at once";
    return pl;
  }
  pl.blocks = static_cast<int>(blocks);
  pl.U = static_cast<int>(U);
  pl.U2 = static_cast<int>(U2);
  pl.smem = static_cast<size_t>(smem);
  return pl;
}

template <int DT, int G>
cudaError_t run_persistent(Args a, const PersistentPlan& pl, cudaStream_t stream) {
  int U = pl.U, U2 = pl.U2;
  void* params[] = {&a, &U, &U2};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(rnn_persistent_kernel<DT, G>), dim3(pl.blocks),
                                     dim3(kThreads), params, pl.smem, stream);
}

template <int DT, int G>
cudaError_t run_stepwise(const Args& a, cudaStream_t stream) {
  const unsigned gy = static_cast<unsigned>(std::min<int64_t>(cdiv(a.B, kStepBatch), kMaxGridY));
  const dim3 cell_grid(static_cast<unsigned>(cdiv(a.H, kStepUnits)), gy);
  const dim3 proj_grid(static_cast<unsigned>(cdiv(a.P, kStepProjRows)), gy);
  for (int64_t step = 0; step < a.T; ++step) {
    if (a.H > 0) rnn_step_cell_kernel<DT, G><<<cell_grid, kThreads, 0, stream>>>(a, step);
    if (a.proj && a.P > 0) rnn_step_proj_kernel<DT><<<proj_grid, kThreads, 0, stream>>>(a, step);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <int DT, int G>
cudaError_t run(const Args& a, RnnPath want, cudaStream_t stream, RnnPath* ran, const char** why) {
  if (want != RnnPath::kStepwise) {
    const PersistentPlan pl = plan_persistent<DT, G>(a);
    if (pl.why == nullptr) {
      const cudaError_t err = run_persistent<DT, G>(a, pl, stream);
      // Refused as too large (the occupancy query promised room, but e.g. MPS limits the SMs): under
      // kAuto the stepwise path runs instead; nothing was launched, the error is not sticky.
      if (!(err == cudaErrorCooperativeLaunchTooLarge && want == RnnPath::kAuto)) {
        *ran = RnnPath::kPersistent;
        return err;
      }
      cudaGetLastError();
      *why = "cooperative launch refused (cudaErrorCooperativeLaunchTooLarge)";
    } else {
      *why = pl.why;
      if (want == RnnPath::kPersistent) return cudaErrorNotSupported;
    }
  }
  *ran = RnnPath::kStepwise;
  return run_stepwise<DT, G>(a, stream);
}

template <int G>
cudaError_t run_dtype(const Args& a, RnnDtype dt, RnnPath want, cudaStream_t stream, RnnPath* ran,
                      const char** why) {
  switch (dt) {
    case RnnDtype::kFloat32: return run<kF32, G>(a, want, stream, ran, why);
    case RnnDtype::kBFloat16: return run<kBF16, G>(a, want, stream, ran, why);
    case RnnDtype::kFloat16: return run<kF16, G>(a, want, stream, ran, why);
  }
  return cudaErrorInvalidValue;
}

bool misaligned(const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a != 0; }

}  // namespace

cudaError_t rnn_cuda_forward(const RnnCudaProblem& p, RnnPath want, cudaStream_t stream, RnnPath* ran,
                             const char** why) {
  RnnPath ran_local = RnnPath::kNone;
  const char* why_local = nullptr;
  if (ran == nullptr) ran = &ran_local;
  if (why == nullptr) why = &why_local;
  *ran = RnnPath::kNone;
  *why = nullptr;
  const bool lstm = p.cell == RnnCell::kLstm, proj = p.proj;
  if (!lstm && p.cell != RnnCell::kGru) return cudaErrorInvalidValue;
  if (p.dtype != RnnDtype::kFloat32 && p.dtype != RnnDtype::kBFloat16 && p.dtype != RnnDtype::kFloat16)
    return cudaErrorInvalidValue;
  if (want != RnnPath::kAuto && want != RnnPath::kPersistent && want != RnnPath::kStepwise)
    return cudaErrorInvalidValue;
  if (p.T < 0 || p.B < 0 || p.H < 0 || p.P < 0 || p.B > kRnnMaxDim || p.H > kRnnMaxDim || p.P > kRnnMaxDim)
    return cudaErrorInvalidValue;
  if (!lstm && (proj || p.P != p.H || p.c != nullptr || p.hh != nullptr)) return cudaErrorInvalidValue;
  if (!proj && (p.P != p.H || p.w_hr != nullptr || p.hh != nullptr)) return cudaErrorInvalidValue;
  if (p.T == 0 || p.B == 0) return cudaSuccess;
  const int64_t es = p.dtype == RnnDtype::kFloat32 ? 4 : 2;
  const int64_t Kp = cdiv(p.P, kRnnPad) * kRnnPad, Hp = cdiv(p.H, kRnnPad) * kRnnPad;
  // Pointers the sizes make the kernels touch: non-null and aligned.
  if (p.H > 0 && (p.xg == nullptr || misaligned(p.xg, es))) return cudaErrorInvalidValue;
  if (p.H > 0 && Kp > 0 && (p.w_hh == nullptr || misaligned(p.w_hh, 16))) return cudaErrorInvalidValue;
  if (Kp > 0 && (p.h == nullptr || misaligned(p.h, 16))) return cudaErrorInvalidValue;
  if (p.P > 0 && (p.y == nullptr || misaligned(p.y, es))) return cudaErrorInvalidValue;
  if (lstm && p.H > 0 && (p.c == nullptr || misaligned(p.c, 4))) return cudaErrorInvalidValue;
  if (proj && (misaligned(p.w_hr, 16) || (p.P > 0 && Hp > 0 && p.w_hr == nullptr))) return cudaErrorInvalidValue;
  if (proj && Hp > 0 && (p.hh == nullptr || misaligned(p.hh, 16))) return cudaErrorInvalidValue;
  if (p.b_hh != nullptr && misaligned(p.b_hh, 4)) return cudaErrorInvalidValue;
  if (p.lengths != nullptr && misaligned(p.lengths, 8)) return cudaErrorInvalidValue;
  // H == P == 0: y, h and c are all empty. (H == 0 < P with a projection still runs: h = h @ empty
  // w_hr = 0 on active steps; P == 0 < H still updates c.)
  if (p.H == 0 && p.P == 0) return cudaSuccess;

  Args a;
  a.xg = p.xg;
  a.w_hh = p.w_hh;
  a.w_hr = p.w_hr;
  a.b_hh = p.b_hh;
  a.len = p.lengths;
  a.h = p.h;
  a.c = p.c;
  a.hh = p.hh;
  a.y = p.y;
  a.T = p.T;
  a.B = static_cast<int>(p.B);
  a.H = static_cast<int>(p.H);
  a.P = static_cast<int>(p.P);
  a.Kp = static_cast<int>(Kp);
  a.Hp = static_cast<int>(Hp);
  a.reverse = p.reverse;
  a.proj = proj;
  return lstm ? run_dtype<4>(a, p.dtype, want, stream, ran, why) : run_dtype<3>(a, p.dtype, want, stream, ran, why);
}

}  // namespace compress
