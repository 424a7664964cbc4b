// Fused LSTM / GRU recurrence on CUDA: contracts in rnn_cuda.h; torch glue in rnn_cuda.cpp.
// CUDA headers only (no torch: keeps this file's nvcc time short). A numpy transcription of the
// index arithmetic and the barrier phases: benchmarks/dev/rnn_persistent_model.py (keep in sync).
//
// The input projection (and the LSTM biases) are already in xg; this file does the recurrence:
//   stage 1 (every step): a[b, g*H + u] = sum_k w_hh[g*H + u, k] * h[b, k], then the cell update
//     (LSTM: c = f*c + i*g, h = o*tanh(c); GRU: n = tanh(xn + r*(an + b_hn)), h = (1-z)*n + z*h)
//   stage 2 (LSTM with projection): h[b, q] = sum_u w_hr[q, u] * hh[b, u], hh = o*tanh(c)
//
// Weight formats (RnnWeights, template parameter WF): kDense and kInt8 run the same code and differ
// in the weight element WT (the activations' element type, or kI8) that load_w4 reads, and in the
// int8 row scale applied once to a row's reduced sum. kBsr replaces stage 1's matvec by bsr_rows
// over the stored blocks only (its projection is dense). Instantiations: dtype (3) x WF (3) of the
// persistent and the stepwise cell kernel, dtype x {dense, int8} of the stepwise projection kernel;
// LSTM vs GRU is a runtime switch in the epilogue (a uniform branch once per output; a template
// parameter would double the nvcc time).
//
// Building blocks shared by both paths:
//   matvec_rows: a warp per weight row; lanes take 4 consecutive k at a time (one 16-, 8- or 4-byte
//     load of the row, one float4 of h), float32 FMA for up to kNB = 4 batch rows at once, then a
//     butterfly reduction. load_w4 is the one place dense / int8 weights are read.
//   bsr_rows: a warp per weight row, over the row's stored blocks: lanes in groups of gsz (the
//     power of two >= bk, at most 32); a group takes one block at a time, its lanes the block's
//     columns (scalar loads: bk has any size and alignment). Columns past P (the zero padding of the
//     last block column) are not read.
//   cell_update / proj_update: the gate math and the state update of one (b, u) / (b, q), with
//     the lengths mask; y is written in the element type here (rounding y_t now or after the
//     last step is the same single rounding).
//
// Persistent path (rnn_persistent_kernel, one cooperative launch): block j owns hidden units
// [j*U, j*U + ucnt) with all G gates of each, and projection rows [j*U2, j*U2 + qcnt). It copies
// those weight rows to shared memory once (dense / int8: [G][U][Kp]; BSR: the stored blocks of its
// rows, compacted, with their block columns; then w_hr's [U2][Hp]), then per step:
//   stage h_{t-1} (all B x Kp, float32, from global buffer step % 2) into shared memory
//   -> matvec -> cell update of its units (c in global, always the same owner thread; h_t into
//   buffer (step + 1) % 2, or hh) -> [proj: grid.sync, stage hh, matvec, h_t and y] -> grid.sync.
// Two h buffers: a block may write h_t while a slower one still stages h_{t-1}; h_t is only
// written again (as h_{t+2}) after the next barrier, when every block is done reading it. hh has
// one buffer: written in stage 1, read in stage 2, the barriers separate them. Global state written
// by other blocks is read with ld.global.cg (L2; L1 is not coherent across SMs); cooperative
// groups' grid.sync orders the memory (fence + barrier). Weights, scales and BSR indices are never
// written during a launch: plain (or __ldg) loads.
//
// Stepwise path (any shape): per step rnn_step_cell_kernel (a block per 8 units x 16 batch rows,
// weights read from global / L2) and, with a projection, rnn_step_proj_kernel (32 outputs x 16
// rows); kernel boundaries are the barriers.
//
// Path choice (rnn_cuda_forward, want = kAuto): persistent when the device supports cooperative
// launch, 1 <= H, B <= kRnnPersistentMaxBatch (16), and with U = max(ceil(H / SMs), ceil(8 / G))
// units per block (blocks = ceil(H / U) <= SMs; U2 = ceil(P / blocks) projection rows, 0 without
// one) the shared memory of persistent_layout
//   4 * (B * max(Kp, Hp) + round_up(B * max(G*U, U2), 4)) + wes * U2 * Hp       (h, sums, w_hr)
//   + dense / int8: wes * G*U*Kp                                                (w_hh slice)
//   + BSR: 4 * (G*U + 1) + (4 + wes * bk) * E     (row offsets, and per stored block of a row its
//          column and bk values; E = the most such (row, block) entries of any block, from crow)
// (wes = the weight element size: 4 / 2 for float32 / 16-bit, 1 for int8; Hp = 0 without
// projection), plus the kernel's static shared memory, is within the device's per-block opt-in
// limit, and the occupancy calculator confirms all blocks can be resident at once. Else stepwise.
// E.g. H100 (227 KB, 132 SMs), LSTM with H = P: bf16, B = 16, H = 1024: U = 8, 128 blocks, 64 KB of
// weights + 64 KB of staged h + 2 KB -> persistent; bf16 H = 2048: 256 KB of weights alone ->
// stepwise, int8 at B = 1: 128 KB of weights + 8 KB -> persistent (at B = 1 int8 stays persistent
// up to H = 2640, bf16 up to about 1860); int8 H = 2048 at B = 16: 128 KB of staged h too ->
// stepwise. BSR bf16 H = 2048, 16 x 16 blocks at density 0.25, B = 1: E = 64 rows x 32 blocks, 72 KB
// of entries + 8 KB -> persistent. (benchmarks/dev/rnn_persistent_model.py checks these numbers.)
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
constexpr int kNB = 4;              // batch rows per accumulator set (matvec_rows, bsr_rows)
constexpr int kMaxGates = 4;
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
constexpr int kI8 = 3;  // a weight element only: int8 with a float32 scale per row

constexpr int kDense = static_cast<int>(RnnWeights::kDense);
constexpr int kInt8 = static_cast<int>(RnnWeights::kInt8);
constexpr int kBsr = static_cast<int>(RnnWeights::kBsr);

// The element of w_hh's rows and of w_hr under weight format WF with activations DT.
template <int DT, int WF>
constexpr int kWElem = WF == kInt8 ? kI8 : DT;

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
// int8 to float32, exact, in two full-rate instructions per element (PRMT, FADD) where a cast
// compiles to I2F.S8, a quarter-rate conversion on sm_80 / sm_90 (checked in the sm_90a SASS):
// with b = q + 128 (q's sign bit flipped, one LOP3 per 4), the bits 0x4B0000bb are the float
// 2^23 + b, and 2^23 + b - (2^23 + 128) = q exactly. (A 16-bit weight widens in one integer op, so
// per weight int8 saves bytes, not instructions: it gains where bytes bind, i.e. the stepwise path's
// L2 / HBM reads and the shapes whose 16-bit slice does not fit shared memory. Not yet measured.)
__device__ __forceinline__ float biased_byte_to_f(uint32_t b4, uint32_t sel) {
  return __uint_as_float(__byte_perm(b4, 0x4B000000u, sel)) - 8388736.0f;
}
template <>
struct Elem<kI8> {
  using Raw = int8_t;
  using Vec4 = uint32_t;  // 4 elements, 4 bytes, element 0 in the low byte
  static __device__ __forceinline__ float4 widen4(Vec4 v) {
    const uint32_t b = v ^ 0x80808080u;
    return make_float4(biased_byte_to_f(b, 0x7440), biased_byte_to_f(b, 0x7441), biased_byte_to_f(b, 0x7442),
                       biased_byte_to_f(b, 0x7443));
  }
};

// Weights 4k .. 4k+3 of one row (row aligned to 4 elements) as float32. The only dense / int8
// weight read (an int8 row's scale is applied by the caller, once per row).
template <int WT>
__device__ __forceinline__ float4 load_w4(const typename Elem<WT>::Raw* row, int k4) {
  using E = Elem<WT>;
  return E::widen4(reinterpret_cast<const typename E::Vec4*>(row)[k4]);
}

// Everything a kernel needs, by value (kernel parameter space).
struct Args {
  const void* xg;
  const void* w_hh;   // dense / int8: rows [G*H][Kp]; BSR: values [nnz][bn][bk]
  const void* w_hr;   // [P][Hp] (dense, or int8 with WF == kInt8)
  const float* s_hh;  // int8: row scales [G*H] and [P]; else nullptr
  const float* s_hr;
  const int32_t* crow;  // BSR: [G*H/bn + 1], [nnz]
  const int32_t* col;
  const float* b_hh;
  const int64_t* len;
  float* h;
  float* c;
  float* hh;
  void* y;
  int64_t T;
  int G, B, H, P, Kp, Hp;
  int nnz, bn, bk, bcols, gsz;  // BSR: blocks, block shape, ceil(P / bk), lanes per block group
  bool reverse, proj;
};

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ bool row_active(const Args& a, int64_t t, int b) {
  return a.len == nullptr || t < a.len[b];
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

// out[j * ldo + g * uo + ul] = s(g, ul) * sum_{k < 4*K4} w_row(g, ul)[k] * h[j * ldh + k] for j < nb
// (<= kNB), g < G, ul < ucnt, where w_row(g, ul) = w + g * w_gs + ul * w_us and s(g, ul) =
// scale[g * s_gs + ul] for int8 rows (WT == kI8), else 1. Rows 4-element aligned (w) and 16-byte
// aligned (h, ldh % 4 == 0). w and h are generic pointers (shared or global memory).
// Called by every thread of the block (a warp per row; warps take rows r = warp, warp + 8, ...).
template <int WT>
__device__ __forceinline__ void matvec_rows(const typename Elem<WT>::Raw* w, int64_t w_gs, int64_t w_us, int G,
                                            int ucnt, const float* h, int64_t ldh, int nb, int K4, float* out,
                                            int ldo, int uo, const float* scale, int64_t s_gs) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < G * ucnt; r += kWarps) {
    const int g = r / ucnt, ul = r - g * ucnt;
    const typename Elem<WT>::Raw* wr = w + g * w_gs + ul * w_us;
    float s = 1.0f;
    if constexpr (WT == kI8) s = __ldg(scale + g * s_gs + ul);  // issued before the loop, used after
    float acc[kNB];
#pragma unroll
    for (int j = 0; j < kNB; ++j) acc[j] = 0.0f;
    for (int k4 = lane; k4 < K4; k4 += 32) {
      const float4 wv = load_w4<WT>(wr, k4);
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
    for (int j = 0; j < kNB; ++j) acc[j] = warp_sum(acc[j]);
    if (lane == 0) {
#pragma unroll
      for (int j = 0; j < kNB; ++j) {
        if (j < nb) {
          if constexpr (WT == kI8)
            out[j * ldo + g * uo + ul] = acc[j] * s;
          else
            out[j * ldo + g * uo + ul] = acc[j];
        }
      }
    }
  }
}

// Stored blocks [e0, e1) of block row br = row / bn, clamped into [0, nnz] (crow is validated by
// the glue; the clamp keeps a contract breach in bounds).
__device__ __forceinline__ void bsr_row_range(const Args& a, int row, int& e0, int& e1) {
  const int br = row / a.bn;
  e0 = min(max(a.crow[br], 0), a.nnz);
  e1 = min(max(a.crow[br + 1], e0), a.nnz);
}

// One weight row for bsr_rows: its entries e in [e0, e1), entry e's block column col[e] and the
// row's bk values of that block at v + e * vs.
template <int DT>
struct BsrRow {
  const int32_t* col;
  const typename Elem<DT>::Raw* v;
  int64_t vs;
  int e0, e1;
};

// out[j * ldo + g * uo + ul] = sum over the entries of row_of(g, ul) of
// sum_{i < bk, c*bk + i < P} v[i] * h[j * ldh + c*bk + i] (c the entry's block column), for j < nb
// (<= kNB), g < G, ul < ucnt. A warp per row; lanes in groups of a.gsz: group lane / gsz takes
// entries e0 + lane / gsz, + 32 / gsz, ...; lane % gsz columns i, i + gsz, ... An entry whose
// block column is outside [0, ceil(P / bk)) is skipped. Called by every thread of the block.
template <int DT, class RowOf>
__device__ __forceinline__ void bsr_rows(const Args& a, int G, int ucnt, const float* h, int ldh, int nb,
                                         float* out, int ldo, int uo, RowOf row_of) {
  using E = Elem<DT>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gsz = a.gsz, grp = lane / gsz, gl = lane - grp * gsz, ngrp = 32 / gsz;
  for (int r = warp; r < G * ucnt; r += kWarps) {
    const int g = r / ucnt, ul = r - g * ucnt;
    const BsrRow<DT> row = row_of(g, ul);
    float acc[kNB];
#pragma unroll
    for (int j = 0; j < kNB; ++j) acc[j] = 0.0f;
    for (int e = row.e0 + grp; e < row.e1; e += ngrp) {
      const int c = row.col[e];
      if (c < 0 || c >= a.bcols) continue;
      const int k0 = c * a.bk, n = min(a.bk, a.P - k0);
      const typename E::Raw* v = row.v + e * row.vs;
      for (int i = gl; i < n; i += gsz) {
        const float wv = E::to_f(v[i]);
#pragma unroll
        for (int j = 0; j < kNB; ++j)
          if (j < nb) acc[j] = fmaf(wv, h[j * ldh + k0 + i], acc[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < kNB; ++j) acc[j] = warp_sum(acc[j]);
    if (lane == 0) {
#pragma unroll
      for (int j = 0; j < kNB; ++j)
        if (j < nb) out[j * ldo + g * uo + ul] = acc[j];
    }
  }
}

// Stage 1 epilogue for batch row b, hidden unit u: acc[g * gs] is the recurrent sum of gate g;
// hc_row the row b of h_{t-1} (shared or global; read only without a projection, where P == H).
template <int DT>
__device__ __forceinline__ void cell_update(const Args& a, int64_t t, int b, int u, const float* acc, int gs,
                                            const float* hc_row, float* hn) {
  using E = Elem<DT>;
  using Raw = typename E::Raw;
  const bool active = row_active(a, t, b);
  const int64_t row = t * a.B + b;
  const Raw* x = static_cast<const Raw*>(a.xg) + row * (a.G * static_cast<int64_t>(a.H)) + u;
  const int64_t hy = static_cast<int64_t>(b) * a.Kp + u, yi = row * a.P + u;  // only used where u < P
  if (a.G == 4) {
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

// Byte offsets into dynamic shared memory (int64: the planner sizes candidates before knowing they
// fit), each region aligned for its vector loads:
//   h_s [B][max(Kp, Hp)] f32 | acc_s [B][max(G*U, U2)] f32, rounded to 4 | wr_s [U2][Hp] weights |
//   dense / int8: w_s [G*U][Kp] weights
//   BSR: roff_s [G*U + 1] int | col_s [E] int | val_s [E][bk] values
// wes: the weight element size (int8 1; dense and BSR values the element type's).
struct PersistentLayout {
  int64_t h_s, acc_s, wr_s, w_s, roff_s, col_s, val_s, total;
};

__host__ __device__ inline PersistentLayout persistent_layout(bool bsr, int64_t G, int64_t wes, int64_t B,
                                                              int64_t Kp, int64_t Hp, int64_t U, int64_t U2,
                                                              int64_t E, int64_t bk) {
  const int64_t kmax = Kp > Hp ? Kp : Hp;
  const int64_t rows = G * U > U2 ? G * U : U2;
  PersistentLayout l;
  l.h_s = 0;
  l.acc_s = l.h_s + 4 * B * kmax;
  l.wr_s = l.acc_s + 4 * ((B * rows + 3) / 4 * 4);
  l.w_s = l.wr_s + wes * U2 * Hp;  // Hp % 4 == 0: aligned for 4-element vectors of wes bytes
  l.roff_s = l.w_s;
  l.col_s = l.roff_s + 4 * (G * U + 1);
  l.val_s = l.col_s + 4 * E;
  l.total = bsr ? l.val_s + wes * E * bk : l.w_s + wes * G * U * Kp;
  return l;
}

// The stored blocks of this block's rows g*H + u0 + ul (ul < ucnt), into shared memory once: row
// slot r = g*U + ul owns entries [roff_s[r], roff_s[r + 1]) (slots ul >= ucnt none); entry i holds
// its block column col_s[i] and the row's bk values val_s[i*bk ...]. At most E entries in all (the
// planned capacity: crow as planned fills at most that).
template <int DT>
__device__ void bsr_stage_rows(const Args& a, int u0, int ucnt, int U, int E, int* roff_s, int* col_s,
                               typename Elem<DT>::Raw* val_s) {
  using Raw = typename Elem<DT>::Raw;
  const int G = a.G;
  for (int r = threadIdx.x; r < G * U; r += kThreads) {
    const int g = r / U, ul = r - g * U;
    int e0 = 0, e1 = 0;
    if (ul < ucnt) bsr_row_range(a, g * a.H + u0 + ul, e0, e1);
    roff_s[r + 1] = e1 - e0;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // prefix sum over G*U <= a few hundred slots, once per launch
    int n = 0;
    roff_s[0] = 0;
    for (int r = 0; r < G * U; ++r) {
      n += min(roff_s[r + 1], E - n);
      roff_s[r + 1] = n;
    }
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const Raw* values = static_cast<const Raw*>(a.w_hh);
  for (int r = warp; r < G * U; r += kWarps) {
    const int o = roff_s[r], n = roff_s[r + 1] - o;
    if (n == 0) continue;
    const int g = r / U, ul = r - g * U, row = g * a.H + u0 + ul, rr = row % a.bn;
    int e0, e1;
    bsr_row_range(a, row, e0, e1);
    for (int i = lane; i < n * a.bk; i += 32) {
      const int el = i / a.bk, k = i - el * a.bk;
      const int64_t e = e0 + el;
      if (k == 0) col_s[o + el] = a.col[e];
      val_s[(o + el) * a.bk + k] = values[(e * a.bn + rr) * a.bk + k];
    }
  }
  // (the __syncthreads after the first staging of h orders these copies before any matvec)
}

template <int DT, int WF>
__global__ void __launch_bounds__(kThreads, 1) rnn_persistent_kernel(Args a, int U, int U2, int E) {
  constexpr int WT = kWElem<DT, WF>;
  using W = Elem<WT>;
  using WRaw = typename W::Raw;
  using V4 = typename W::Vec4;
  extern __shared__ __align__(16) unsigned char smem[];
  const int G = a.G, B = a.B, H = a.H, P = a.P, Kp = a.Kp, Hp = a.proj ? a.Hp : 0;
  const PersistentLayout l = persistent_layout(WF == kBsr, G, sizeof(WRaw), B, Kp, Hp, U, U2, E, a.bk);
  float* h_s = reinterpret_cast<float*>(smem + l.h_s);
  float* acc_s = reinterpret_cast<float*>(smem + l.acc_s);
  WRaw* wr_s = reinterpret_cast<WRaw*>(smem + l.wr_s);
  WRaw* w_s = reinterpret_cast<WRaw*>(smem + l.w_s);
  int* roff_s = reinterpret_cast<int*>(smem + l.roff_s);
  int* col_s = reinterpret_cast<int*>(smem + l.col_s);
  WRaw* val_s = reinterpret_cast<WRaw*>(smem + l.val_s);
  const int u0 = blockIdx.x * U, ucnt = max(0, min(U, H - u0));
  const int q0 = blockIdx.x * U2, qcnt = max(0, min(U2, P - q0));
  const int K4 = Kp / 4, H4 = Hp / 4;

  // This block's weight rows, once: w_s[g*U + ul] = w_hh[g*H + u0 + ul] (BSR: its stored blocks),
  // wr_s[ql] = w_hr[q0 + ql].
  if constexpr (WF == kBsr) {
    bsr_stage_rows<DT>(a, u0, ucnt, U, E, roff_s, col_s, val_s);
  } else {
    const WRaw* w = static_cast<const WRaw*>(a.w_hh);
    for (int i = threadIdx.x; i < G * ucnt * K4; i += kThreads) {
      const int r = i / K4, k4 = i - r * K4, g = r / ucnt, ul = r - g * ucnt;
      reinterpret_cast<V4*>(w_s + (g * U + ul) * Kp)[k4] =
          reinterpret_cast<const V4*>(w + (static_cast<int64_t>(g) * H + u0 + ul) * Kp)[k4];
    }
  }
  if (a.proj) {
    const WRaw* wr = static_cast<const WRaw*>(a.w_hr);
    for (int i = threadIdx.x; i < qcnt * H4; i += kThreads) {
      const int ql = i / H4, k4 = i - ql * H4;
      reinterpret_cast<V4*>(wr_s + ql * Hp)[k4] =
          reinterpret_cast<const V4*>(wr + static_cast<int64_t>(q0 + ql) * Hp)[k4];
    }
  }
  // (the __syncthreads after the first staging of h orders these copies before any matvec)
  const float* s_hh = WF == kInt8 ? a.s_hh + u0 : nullptr;
  const float* s_hr = WF == kInt8 && a.proj ? a.s_hr + q0 : nullptr;

  cg::grid_group grid = cg::this_grid();
  for (int64_t step = 0; step < a.T; ++step) {
    const int64_t t = a.reverse ? a.T - 1 - step : step;
    const float* hc = a.h + (step & 1) * static_cast<int64_t>(B) * Kp;
    float* hn = a.h + ((step + 1) & 1) * static_cast<int64_t>(B) * Kp;
    stage_cg(h_s, hc, B * K4);
    __syncthreads();
    for (int b0 = 0; b0 < B; b0 += kNB) {
      if constexpr (WF == kBsr) {
        bsr_rows<DT>(a, G, ucnt, h_s + b0 * Kp, Kp, min(kNB, B - b0), acc_s + b0 * G * U, G * U, U,
                     [&](int g, int ul) {
                       const int r = g * U + ul;
                       return BsrRow<DT>{col_s, val_s, a.bk, roff_s[r], roff_s[r + 1]};
                     });
      } else {
        matvec_rows<WT>(w_s, static_cast<int64_t>(U) * Kp, Kp, G, ucnt, h_s + b0 * Kp, Kp, min(kNB, B - b0), K4,
                        acc_s + b0 * G * U, G * U, U, s_hh, H);
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < B * ucnt; i += kThreads) {
      const int b = i / ucnt, ul = i - b * ucnt;
      cell_update<DT>(a, t, b, u0 + ul, acc_s + b * G * U + ul, U, h_s + b * Kp, hn);
    }
    if (a.proj) {  // the same branch in every block: grid.sync counts match
      grid.sync();
      stage_cg(h_s, a.hh, B * H4);
      __syncthreads();
      for (int b0 = 0; b0 < B; b0 += kNB)
        matvec_rows<WT>(wr_s, 0, Hp, 1, qcnt, h_s + b0 * Hp, Hp, min(kNB, B - b0), H4, acc_s + b0 * U2, U2, U2,
                        s_hr, 0);
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
template <int DT, int WF>
__global__ void __launch_bounds__(kThreads, kStepMinBlocks) rnn_step_cell_kernel(Args a, int64_t step) {
  constexpr int WT = kWElem<DT, WF>;
  using WRaw = typename Elem<WT>::Raw;
  __shared__ __align__(16) float acc_s[kStepBatch * kMaxGates * kStepUnits];
  const int G = a.G, u0 = blockIdx.x * kStepUnits, ucnt = min(kStepUnits, a.H - u0);
  const int64_t t = a.reverse ? a.T - 1 - step : step;
  const float* hc = a.h + (step & 1) * static_cast<int64_t>(a.B) * a.Kp;
  float* hn = a.h + ((step + 1) & 1) * static_cast<int64_t>(a.B) * a.Kp;
  const WRaw* w = static_cast<const WRaw*>(a.w_hh);
  const float* s_hh = WF == kInt8 ? a.s_hh + u0 : nullptr;
  for (int bb = blockIdx.y * kStepBatch; bb < a.B; bb += gridDim.y * kStepBatch) {
    const int nbb = min(kStepBatch, a.B - bb);
    for (int b0 = 0; b0 < nbb; b0 += kNB) {
      const float* hb = hc + static_cast<int64_t>(bb + b0) * a.Kp;
      float* out = acc_s + b0 * G * kStepUnits;
      if constexpr (WF == kBsr) {
        bsr_rows<DT>(a, G, ucnt, hb, a.Kp, min(kNB, nbb - b0), out, G * kStepUnits, kStepUnits,
                     [&](int g, int ul) {
                       const int row = g * a.H + u0 + ul;
                       const int64_t vs = static_cast<int64_t>(a.bn) * a.bk;  // one block
                       int e0, e1;
                       bsr_row_range(a, row, e0, e1);
                       return BsrRow<DT>{a.col, w + static_cast<int64_t>(row % a.bn) * a.bk, vs, e0, e1};
                     });
      } else {
        matvec_rows<WT>(w + static_cast<int64_t>(u0) * a.Kp, static_cast<int64_t>(a.H) * a.Kp, a.Kp, G, ucnt, hb,
                        a.Kp, min(kNB, nbb - b0), a.Kp / 4, out, G * kStepUnits, kStepUnits, s_hh, a.H);
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nbb * ucnt; i += kThreads) {
      const int bl = i / ucnt, ul = i - bl * ucnt, b = bb + bl;
      cell_update<DT>(a, t, b, u0 + ul, acc_s + bl * G * kStepUnits + ul, kStepUnits,
                      hc + static_cast<int64_t>(b) * a.Kp, hn);
    }
    __syncthreads();  // acc_s is reused by the next batch slice
  }
}

// grid (ceil(P / kStepProjRows), min(ceil(B / kStepBatch), 65535)). WF: kDense or kInt8.
template <int DT, int WF>
__global__ void __launch_bounds__(kThreads, kStepMinBlocks) rnn_step_proj_kernel(Args a, int64_t step) {
  constexpr int WT = kWElem<DT, WF>;
  using WRaw = typename Elem<WT>::Raw;
  __shared__ __align__(16) float acc_s[kStepBatch * kStepProjRows];
  const int q0 = blockIdx.x * kStepProjRows, qcnt = min(kStepProjRows, a.P - q0);
  const int64_t t = a.reverse ? a.T - 1 - step : step;
  const float* hc = a.h + (step & 1) * static_cast<int64_t>(a.B) * a.Kp;
  float* hn = a.h + ((step + 1) & 1) * static_cast<int64_t>(a.B) * a.Kp;
  const WRaw* w = static_cast<const WRaw*>(a.w_hr) + static_cast<int64_t>(q0) * a.Hp;
  const float* s_hr = WF == kInt8 ? a.s_hr + q0 : nullptr;
  for (int bb = blockIdx.y * kStepBatch; bb < a.B; bb += gridDim.y * kStepBatch) {
    const int nbb = min(kStepBatch, a.B - bb);
    for (int b0 = 0; b0 < nbb; b0 += kNB)
      matvec_rows<WT>(w, 0, a.Hp, 1, qcnt, a.hh + static_cast<int64_t>(bb + b0) * a.Hp, a.Hp, min(kNB, nbb - b0),
                      a.Hp / 4, acc_s + b0 * kStepProjRows, kStepProjRows, kStepProjRows, s_hr, 0);
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

// The most (row, stored block) entries among the blocks' rows g*H + u (u in [j*U, j*U + U) ∩ [0, H),
// g < G): row r has the crow[br + 1] - crow[br] blocks of its block row br = r / bn. crow validated.
int64_t bsr_max_entries(const int32_t* crow, int64_t G, int64_t H, int64_t bn, int64_t U, int64_t blocks) {
  int64_t most = 0;
  for (int64_t j = 0; j < blocks; ++j) {
    const int64_t u0 = j * U, u1 = std::min(H, u0 + U);
    int64_t n = 0;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t lo = g * H + u0, hi = g * H + u1;
      for (int64_t br = lo / bn; br * bn < hi; ++br)
        n += (std::min(hi, (br + 1) * bn) - std::max(lo, br * bn)) * (crow[br + 1] - crow[br]);
    }
    most = std::max(most, n);
  }
  return most;
}

struct PersistentPlan {
  const char* why = nullptr;  // nullptr: runnable
  int blocks = 0, U = 0, U2 = 0, E = 0;
  size_t smem = 0;
};

template <int DT, int WF>
PersistentPlan plan_persistent(const Args& a, const int32_t* crow_host) {
  constexpr const char* kTooBig = "the per-block weight slice and staged state exceed the shared memory per block";
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
  // Not even one weight row (or BSR block row slice) fits; this also bounds the products below.
  if (a.Kp > smem_optin || a.Hp > smem_optin || (WF == kBsr && a.bk > smem_optin)) {
    pl.why = kTooBig;
    return pl;
  }
  const int64_t U = std::max(cdiv(a.H, sms), cdiv(kWarps, a.G));
  const int64_t blocks = cdiv(a.H, U);
  const int64_t U2 = a.proj ? cdiv(a.P, blocks) : 0;
  const int64_t E = WF == kBsr ? bsr_max_entries(crow_host, a.G, a.H, a.bn, U, blocks) : 0;
  if (E > smem_optin) {  // each entry takes more than a byte
    pl.why = kTooBig;
    return pl;
  }
  const PersistentLayout l = persistent_layout(WF == kBsr, a.G, sizeof(typename Elem<kWElem<DT, WF>>::Raw), a.B,
                                               a.Kp, a.proj ? a.Hp : 0, U, U2, E, a.bk);
  const void* kernel = reinterpret_cast<const void*>(rnn_persistent_kernel<DT, WF>);
  cudaFuncAttributes attr;
  if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
    cudaGetLastError();
    pl.why = "kernel attribute query failed";
    return pl;
  }
  // Dynamic + static (sm_90 reports 1 KB of static shared memory for this kernel) within the
  // opt-in limit; this also keeps the kernel's int offsets into shared memory in range.
  if (l.total + static_cast<int64_t>(attr.sharedSizeBytes) > smem_optin) {
    pl.why = kTooBig;
    return pl;
  }
  int per_sm = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(l.total)) !=
          cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, static_cast<size_t>(l.total)) !=
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
  pl.E = static_cast<int>(E);
  pl.smem = static_cast<size_t>(l.total);
  return pl;
}

template <int DT, int WF>
cudaError_t run_persistent(Args a, const PersistentPlan& pl, cudaStream_t stream) {
  int U = pl.U, U2 = pl.U2, E = pl.E;
  void* params[] = {&a, &U, &U2, &E};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(rnn_persistent_kernel<DT, WF>), dim3(pl.blocks),
                                     dim3(kThreads), params, pl.smem, stream);
}

template <int DT, int WF>
cudaError_t run_stepwise(const Args& a, cudaStream_t stream) {
  constexpr int kProjWF = WF == kInt8 ? kInt8 : kDense;  // BSR's projection is dense
  const unsigned gy = static_cast<unsigned>(std::min<int64_t>(cdiv(a.B, kStepBatch), kMaxGridY));
  const dim3 cell_grid(static_cast<unsigned>(cdiv(a.H, kStepUnits)), gy);
  const dim3 proj_grid(static_cast<unsigned>(cdiv(a.P, kStepProjRows)), gy);
  for (int64_t step = 0; step < a.T; ++step) {
    if (a.H > 0) rnn_step_cell_kernel<DT, WF><<<cell_grid, kThreads, 0, stream>>>(a, step);
    if (a.proj && a.P > 0) rnn_step_proj_kernel<DT, kProjWF><<<proj_grid, kThreads, 0, stream>>>(a, step);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <int DT, int WF>
cudaError_t run(const Args& a, const int32_t* crow_host, RnnPath want, cudaStream_t stream, RnnPath* ran,
                const char** why) {
  if (want != RnnPath::kStepwise) {
    const PersistentPlan pl = plan_persistent<DT, WF>(a, crow_host);
    if (pl.why == nullptr) {
      const cudaError_t err = run_persistent<DT, WF>(a, pl, stream);
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
  return run_stepwise<DT, WF>(a, stream);
}

template <int WF>
cudaError_t run_dtype(const Args& a, const int32_t* crow_host, RnnDtype dt, RnnPath want, cudaStream_t stream,
                      RnnPath* ran, const char** why) {
  switch (dt) {
    case RnnDtype::kFloat32: return run<kF32, WF>(a, crow_host, want, stream, ran, why);
    case RnnDtype::kBFloat16: return run<kBF16, WF>(a, crow_host, want, stream, ran, why);
    case RnnDtype::kFloat16: return run<kF16, WF>(a, crow_host, want, stream, ran, why);
  }
  return cudaErrorInvalidValue;
}

bool misaligned(const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a != 0; }

// crow [R + 1] from 0 to nnz, non-decreasing (the glue's checks, again: the planner relies on it).
bool bad_crow(const int32_t* crow, int64_t R, int64_t nnz) {
  if (crow == nullptr || crow[0] != 0 || crow[R] != nnz) return true;
  for (int64_t r = 0; r < R; ++r)
    if (crow[r] > crow[r + 1]) return true;
  return false;
}

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
  const bool int8 = p.weights == RnnWeights::kInt8, bsr = p.weights == RnnWeights::kBsr;
  if (!lstm && p.cell != RnnCell::kGru) return cudaErrorInvalidValue;
  if (p.dtype != RnnDtype::kFloat32 && p.dtype != RnnDtype::kBFloat16 && p.dtype != RnnDtype::kFloat16)
    return cudaErrorInvalidValue;
  if (p.weights != RnnWeights::kDense && !int8 && !bsr) return cudaErrorInvalidValue;
  if (want != RnnPath::kAuto && want != RnnPath::kPersistent && want != RnnPath::kStepwise)
    return cudaErrorInvalidValue;
  if (p.T < 0 || p.B < 0 || p.H < 0 || p.P < 0 || p.B > kRnnMaxDim || p.H > kRnnMaxDim || p.P > kRnnMaxDim)
    return cudaErrorInvalidValue;
  if (!lstm && (proj || p.P != p.H || p.c != nullptr || p.hh != nullptr)) return cudaErrorInvalidValue;
  if (!proj && (p.P != p.H || p.w_hr != nullptr || p.hh != nullptr)) return cudaErrorInvalidValue;
  const int64_t G = lstm ? 4 : 3;
  if (bsr && (p.bn < 1 || p.bk < 1 || p.bn > kRnnMaxDim || p.bk > kRnnMaxDim || p.H % p.bn != 0 || p.nnz < 0 ||
              p.nnz > INT32_MAX || bad_crow(p.crow_host, G * p.H / p.bn, p.nnz)))
    return cudaErrorInvalidValue;
  if (p.T == 0 || p.B == 0) return cudaSuccess;
  const int64_t es = p.dtype == RnnDtype::kFloat32 ? 4 : 2;
  const int64_t Kp = cdiv(p.P, kRnnPad) * kRnnPad, Hp = cdiv(p.H, kRnnPad) * kRnnPad;
  // Pointers the sizes make the kernels touch: non-null and aligned.
  if (p.H > 0 && (p.xg == nullptr || misaligned(p.xg, es))) return cudaErrorInvalidValue;
  if (!bsr && p.H > 0 && Kp > 0 && (p.w_hh == nullptr || misaligned(p.w_hh, 16))) return cudaErrorInvalidValue;
  if (bsr && (p.crow == nullptr || (p.nnz > 0 && (p.col == nullptr || p.w_hh == nullptr || misaligned(p.w_hh, es)))))
    return cudaErrorInvalidValue;
  if (int8 && p.H > 0 && (p.w_hh_scale == nullptr || misaligned(p.w_hh_scale, 4))) return cudaErrorInvalidValue;
  if (int8 && proj && p.P > 0 && (p.w_hr_scale == nullptr || misaligned(p.w_hr_scale, 4)))
    return cudaErrorInvalidValue;
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
  a.s_hh = int8 ? p.w_hh_scale : nullptr;
  a.s_hr = int8 ? p.w_hr_scale : nullptr;
  a.crow = bsr ? p.crow : nullptr;
  a.col = bsr ? p.col : nullptr;
  a.b_hh = p.b_hh;
  a.len = p.lengths;
  a.h = p.h;
  a.c = p.c;
  a.hh = p.hh;
  a.y = p.y;
  a.T = p.T;
  a.G = static_cast<int>(G);
  a.B = static_cast<int>(p.B);
  a.H = static_cast<int>(p.H);
  a.P = static_cast<int>(p.P);
  a.Kp = static_cast<int>(Kp);
  a.Hp = static_cast<int>(Hp);
  a.nnz = bsr ? static_cast<int>(p.nnz) : 0;
  a.bn = bsr ? static_cast<int>(p.bn) : 1;
  a.bk = bsr ? static_cast<int>(p.bk) : 1;
  a.bcols = bsr ? static_cast<int>(cdiv(p.P, p.bk)) : 0;
  a.gsz = 1;
  while (a.gsz < a.bk && a.gsz < 32) a.gsz *= 2;
  a.reverse = p.reverse;
  a.proj = proj;
  const int32_t* crow_host = bsr ? p.crow_host : nullptr;
  switch (p.weights) {
    case RnnWeights::kDense: return run_dtype<kDense>(a, crow_host, p.dtype, want, stream, ran, why);
    case RnnWeights::kInt8: return run_dtype<kInt8>(a, crow_host, p.dtype, want, stream, ran, why);
    case RnnWeights::kBsr: return run_dtype<kBsr>(a, crow_host, p.dtype, want, stream, ran, why);
  }
  return cudaErrorInvalidValue;
}

}  // namespace compress
