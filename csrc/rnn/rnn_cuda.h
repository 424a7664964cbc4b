// Fused LSTM / GRU recurrence on CUDA (compress::lstm_layer, gru_layer and their compressed-weight
// variants lstm_layer_w8, gru_layer_w8, lstm_layer_bsr, gru_layer_bsr): the launcher; and the
// pointwise step kernels of their gradients (lstm_layer_backward, gru_layer_backward), at the end.
// Plain C++ header: no torch. Kernels: rnn_recurrence.cu, rnn_backward.cu; torch glue: rnn_cuda.cpp,
// rnn_backward_cuda.cpp.
//
// Shapes as compress/ops/rnn.py: T steps, B batch rows, H hidden units, P the state width (LSTM
// proj_size, else P = H), G gates (LSTM 4: i, f, g, o; GRU 3: r, z, n). Kp = round_up(P, 4) and
// Hp = round_up(H, 4) are the padded reduction lengths of the two matvecs (kRnnPad: the kernels read
// 4 elements at a time); padding columns of weights and states are zero and never written.
//
// Semantics (per step t, in order T-1 .. 0 when reverse): gate pre-activations in float32 from
// xg_t + h @ w_hh^T (GRU: + b_hh on the recurrent part), state kept in float32, y_t rounded to the
// element type (round to nearest even); a row with t >= lengths[b] keeps its state and gets y = 0.
#pragma once

#include <cstdint>

#include <driver_types.h>  // cudaError_t, cudaStream_t

namespace compress {

// Element type of xg, y and of dense / block-sparse weight values (one runtime switch between
// instantiations).
enum class RnnDtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };
enum class RnnCell : int { kLstm = 0, kGru = 1 };
// How w_hh (and w_hr) are stored:
//   kDense  w_hh [G*H, Kp], w_hr [P, Hp] in the element type.
//   kInt8   w_hh [G*H, Kp] int8 + w_hh_scale float32 [G*H]; w_hr [P, Hp] int8 + w_hr_scale [P]:
//           w = q * scale[row] (the matvec sums q * h in float32, then scales the row's sum once).
//   kBsr    w_hh block-sparse [G*H, P]: crow int32 [G*H/bn + 1], col int32 [nnz], values [nnz, bn,
//           bk] contiguous in the element type; bn divides H. w_hr dense as kDense.
enum class RnnWeights : int { kDense = 0, kInt8 = 1, kBsr = 2 };

// kPersistent: one cooperative launch for the whole sequence (B <= kRnnPersistentMaxBatch and each
// block's weight slice fits in shared memory). kStepwise: one or two plain launches per step, any
// shape. kAuto: persistent when it can run, else stepwise (the rule: rnn_recurrence.cu, "Path choice").
enum class RnnPath : int { kAuto = 0, kPersistent = 1, kStepwise = 2, kNone = 3 };

constexpr int64_t kRnnPad = 4;
constexpr int64_t kRnnPersistentMaxBatch = 16;
// Sizes B, H, P above this are refused (cudaErrorInvalidValue): int indices with headroom.
constexpr int64_t kRnnMaxDim = int64_t{1} << 30;

struct RnnCudaProblem {
  RnnCell cell = RnnCell::kLstm;
  RnnDtype dtype = RnnDtype::kFloat32;
  RnnWeights weights = RnnWeights::kDense;
  int64_t T = 0, B = 0, H = 0, P = 0;  // GRU: P == H
  bool reverse = false;
  bool proj = false;                 // LSTM with a projection w_hr (also when it is empty: P or H 0)
  const void* xg = nullptr;          // [T, B, G*H] contiguous, dtype
  const void* w_hh = nullptr;        // kDense / kInt8: [G*H, Kp] contiguous, zero padding, 16-byte
                                     // aligned. kBsr: values [nnz, bn, bk] contiguous, dtype-aligned.
  const void* w_hr = nullptr;        // proj: [P, Hp] likewise (may be null when empty); else nullptr
  const float* w_hh_scale = nullptr;  // kInt8: [G*H] float32; else nullptr
  const float* w_hr_scale = nullptr;  // kInt8 with proj: [P] float32; else nullptr
  // kBsr only. crow / col on the device (what the kernels read) and crow_host, a host copy of crow
  // (the persistent path sizes each block's shared memory from it). Contents validated by the
  // caller (crow from 0 to nnz non-decreasing, col in [0, ceil(P / bk))); the launcher re-checks
  // crow_host, and the kernels clamp entry ranges into [0, nnz] and skip a col out of range, so
  // contents that break the contract give wrong numbers, never an out-of-bounds access.
  const int32_t* crow = nullptr;
  const int32_t* col = nullptr;
  const int32_t* crow_host = nullptr;
  int64_t nnz = 0, bn = 0, bk = 0;
  const float* b_hh = nullptr;       // GRU: [3H] float32 or nullptr (adds nothing)
  const int64_t* lengths = nullptr;  // [B] or nullptr (every row runs all T steps); any values
  float* h = nullptr;   // [2, B, Kp] float32, 16-byte aligned: h[0] = h0 with zero padding
                        // columns; h[1] scratch. h_n ends in h[T % 2] (columns < P).
  float* c = nullptr;   // LSTM: [B, H] float32, c0 on entry, c_n on return. GRU: nullptr.
  float* hh = nullptr;  // LSTM with projection: [B, Hp] float32 scratch, zero-filled, 16-byte
                        // aligned (o * tanh(c) between the two stages). Else nullptr.
  void* y = nullptr;    // [T, B, P] contiguous, dtype; every element written
};

// Runs the recurrence asynchronously on `stream` (h, c, y as above). `want` picks the path;
// kPersistent returns cudaErrorNotSupported, launching nothing, when the persistent kernel cannot
// run this shape on the current device (`*why` then says why). `*ran` (if non-null) receives the
// path that ran (kNone when there was nothing to do: T == 0 or B == 0). Returns the first launch
// error, or cudaErrorInvalidValue without launching when a precondition above is violated.
cudaError_t rnn_cuda_forward(const RnnCudaProblem& p, RnnPath want, cudaStream_t stream,
                             RnnPath* ran, const char** why);

// ---- Backward: the pointwise part of one step, one element per thread (rnn_backward.cu), with the
// math and the buffers' contract of rnn_backward_math.h (the structs); the glue runs the GEMMs
// between the launches with ATen on the same stream (plan: rnn_backward_cuda.cpp). Each runs
// asynchronously on `stream`: it launches nothing when the step has no elements (B or the width is
// 0), returns cudaErrorInvalidValue without launching when a buffer the step needs is null, else
// the launch error. rnn_bwd_lstm_recompute: `gates` holds the pre-activations xg_t + h_{t-1} @
// w_hh^T on entry (the kernel activates them). rnn_bwd_keep_inactive launches nothing without
// lengths.
namespace rnn_bwd {
struct LstmRecompute;
struct KeepInactive;
struct LstmOutputGrad;
struct LstmGrad;
struct GruRecompute;
struct GruGrad;
}  // namespace rnn_bwd

cudaError_t rnn_bwd_lstm_recompute(const rnn_bwd::LstmRecompute& p, cudaStream_t stream);
cudaError_t rnn_bwd_keep_inactive(const rnn_bwd::KeepInactive& p, cudaStream_t stream);
cudaError_t rnn_bwd_lstm_output_grad(const rnn_bwd::LstmOutputGrad& p, cudaStream_t stream);
cudaError_t rnn_bwd_lstm_grad(const rnn_bwd::LstmGrad& p, cudaStream_t stream);
cudaError_t rnn_bwd_gru_recompute(const rnn_bwd::GruRecompute& p, cudaStream_t stream);
cudaError_t rnn_bwd_gru_grad(const rnn_bwd::GruGrad& p, cudaStream_t stream);

}  // namespace compress
