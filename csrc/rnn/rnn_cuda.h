// Fused LSTM / GRU recurrence on CUDA (compress::lstm_layer, compress::gru_layer): the launcher.
// Plain C++ header: no torch. Kernels: rnn_cuda.cu; torch glue: rnn_cuda.cpp.
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

// Element type of xg, w_hh, w_hr and y (one runtime switch between instantiations).
enum class RnnDtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };
enum class RnnCell : int { kLstm = 0, kGru = 1 };

// kPersistent: one cooperative launch for the whole sequence (B <= kRnnPersistentMaxBatch and each
// block's weight slice fits in shared memory). kStepwise: one or two plain launches per step, any
// shape. kAuto: persistent when it can run, else stepwise (the rule: rnn_cuda.cu, "Path choice").
enum class RnnPath : int { kAuto = 0, kPersistent = 1, kStepwise = 2, kNone = 3 };

constexpr int64_t kRnnPad = 4;
constexpr int64_t kRnnPersistentMaxBatch = 16;
// Sizes B, H, P above this are refused (cudaErrorInvalidValue): int indices with headroom.
constexpr int64_t kRnnMaxDim = int64_t{1} << 30;

struct RnnCudaProblem {
  RnnCell cell = RnnCell::kLstm;
  RnnDtype dtype = RnnDtype::kFloat32;
  int64_t T = 0, B = 0, H = 0, P = 0;  // GRU: P == H
  bool reverse = false;
  bool proj = false;                 // LSTM with a projection w_hr (also when it is empty: P or H 0)
  const void* xg = nullptr;          // [T, B, G*H] contiguous, dtype
  const void* w_hh = nullptr;        // [G*H, Kp] contiguous, dtype, zero padding, 16-byte aligned
  const void* w_hr = nullptr;        // proj: [P, Hp] likewise (may be null when empty); else nullptr
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

}  // namespace compress
