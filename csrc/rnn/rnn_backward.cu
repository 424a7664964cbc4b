// CUDA kernels of compress::lstm_layer_backward / gru_layer_backward: the pointwise part of each
// step, one element (b, j) per thread, the math of rnn_backward_math.h (shared with the CPU kernel,
// whose tests therefore run it too). The plan and the GEMMs between these launches: rnn_backward_cuda.cpp
// (the same as rnn_backward_cpu.cpp's). Launchers declared in rnn_cuda.h.
// CUDA headers only (no torch: keeps this file's nvcc time short). float32 only: the glue converts
// xg and dy once, so there is one instantiation of each kernel.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "rnn/rnn_backward_math.h"
#include "rnn/rnn_cuda.h"

namespace compress {
namespace {

using namespace rnn_bwd;

constexpr int kThreads = 256;
// A step touches B * H elements (e.g. 64 x 1024 = 256 blocks); past this many blocks the threads
// loop (grid-stride) instead of the grid growing.
constexpr int64_t kMaxBlocks = 1 << 16;

// Calls f(b, j) for every element of a [rows, cols] step, each once, e = b * cols + j.
template <class F>
__device__ __forceinline__ void for_each_element(int64_t rows, int64_t cols, F f) {
  const int64_t n = rows * cols, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride)
    f(e / cols, e % cols);
}

// The gates of p.gates hold the pre-activations xg_t + h_{t-1} @ w_hh^T; lstm_recompute writes
// the activations back (each thread reads and writes its own four).
__global__ void __launch_bounds__(kThreads) lstm_recompute_kernel(LstmRecompute p) {
  for_each_element(p.B, p.H, [&](int64_t b, int64_t j) {
    const float* g = p.gates + b * 4 * p.H + j;
    lstm_recompute(p, b, j, sigmoid(g[0]), sigmoid(g[p.H]), tanh_exp(g[2 * p.H]), sigmoid(g[3 * p.H]));
  });
}

__global__ void __launch_bounds__(kThreads) keep_inactive_kernel(KeepInactive p) {
  for_each_element(p.B, p.P, [&](int64_t b, int64_t q) { keep_inactive(p, b, q); });
}

__global__ void __launch_bounds__(kThreads) lstm_output_grad_kernel(LstmOutputGrad p) {
  for_each_element(p.B, p.P, [&](int64_t b, int64_t q) { lstm_output_grad(p, b, q); });
}

__global__ void __launch_bounds__(kThreads) lstm_grad_kernel(LstmGrad p) {
  for_each_element(p.B, p.H, [&](int64_t b, int64_t j) { lstm_grad(p, b, j); });
}

__global__ void __launch_bounds__(kThreads) gru_recompute_kernel(GruRecompute p) {
  for_each_element(p.B, p.H, [&](int64_t b, int64_t j) { gru_recompute(p, b, j); });
}

__global__ void __launch_bounds__(kThreads) gru_grad_kernel(GruGrad p) {
  for_each_element(p.B, p.H, [&](int64_t b, int64_t j) { gru_grad(p, b, j); });
}

// Launches kernel(p) over rows x cols elements on `stream`: nothing when there are none,
// cudaErrorInvalidValue (nothing launched) when `ok` is false (a buffer the step needs is null).
template <class Args>
cudaError_t launch(void (*kernel)(Args), const Args& p, int64_t rows, int64_t cols, bool ok, cudaStream_t stream) {
  if (rows < 0 || cols < 0) return cudaErrorInvalidValue;
  const int64_t n = rows * cols;
  if (n == 0) return cudaSuccess;
  if (!ok) return cudaErrorInvalidValue;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks);
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t rnn_bwd_lstm_recompute(const LstmRecompute& p, cudaStream_t stream) {
  const bool ok = p.gates && p.c && p.c_prev && p.tanh_c && (p.hh || !p.h_next || p.h_prev);
  return launch(lstm_recompute_kernel, p, p.B, p.H, ok, stream);
}

cudaError_t rnn_bwd_keep_inactive(const KeepInactive& p, cudaStream_t stream) {
  if (p.lengths == nullptr) return cudaSuccess;  // every row is active
  return launch(keep_inactive_kernel, p, p.B, p.P, p.h_prev && p.h_next, stream);
}

cudaError_t rnn_bwd_lstm_output_grad(const LstmOutputGrad& p, cudaStream_t stream) {
  return launch(lstm_output_grad_kernel, p, p.B, p.P, p.dh && p.dy && p.dh_new, stream);
}

cudaError_t rnn_bwd_lstm_grad(const LstmGrad& p, cudaStream_t stream) {
  const bool ok = p.gates && p.c_prev && p.tanh_c && p.d_h && p.dc && p.dgates;
  return launch(lstm_grad_kernel, p, p.B, p.H, ok, stream);
}

cudaError_t rnn_bwd_gru_recompute(const GruRecompute& p, cudaStream_t stream) {
  const bool ok = p.x && p.a && p.gates && p.an && (!p.h_next || p.h_prev);
  return launch(gru_recompute_kernel, p, p.B, p.H, ok, stream);
}

cudaError_t rnn_bwd_gru_grad(const GruGrad& p, cudaStream_t stream) {
  const bool ok = p.gates && p.an && p.h_prev && p.dy && p.dh && p.dgates && p.da;
  return launch(gru_grad_kernel, p, p.B, p.H, ok, stream);
}

}  // namespace compress
