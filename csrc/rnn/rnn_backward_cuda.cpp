// CUDA implementations of the RNN gradients (schemas defined from Python, compress/ops/rnn.py):
//   compress::lstm_layer_backward(dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr?, lengths?, reverse)
//     -> (dxg, dh0, dc0, dw_hh, dw_hr)
//   compress::gru_layer_backward(dy, dh_n, xg, h0, w_hh, b_hh?, lengths?, reverse) -> (dxg, dh0, dw_hh, db_hh)
// Torch glue only: checks (rnn_checks.h, as the forward's CUDA glue rnn_cuda.cpp), CUDAGuard + the
// current stream, the ATen GEMMs, and the pointwise kernels of rnn_backward.cu (declared in
// rnn_cuda.h) between them.
//
// rnn_backward_cpu.cpp's plan on the GPU, the same per-element math (rnn_backward_math.h, run by
// rnn_backward.cu's kernels), float32 inside:
//  1. Forward again over T: per step one ATen GEMM (cuBLAS) G_t = xg_t + h_{t-1} @ w_hh^T (GRU:
//     a = h_{t-1} @ w_hh^T + b_hh) and one kernel that activates the gates and stores what the
//     derivative needs; with a projection, h_t = hh @ w_hr^T (GEMM) and keep_inactive (lengths).
//  2. Backward over the steps in the opposite order: pointwise kernels for dG_t (= dxg_t) and the
//     next dc, then one GEMM dh += dG_t @ w_hh (with a projection, dh_new @ w_hr before the gates).
//  3. dW_hh (and dW_hr; GRU db_hh a column sum) as one GEMM over all T * B rows.
// All on the current stream of xg's device, no host synchronization (the kernels read lengths).
// Per step: LSTM 2 launches forward (3-4 with a projection) and 3 backward (4 with one); GRU 2 and 2.
// c10/cuda only (see int8_mm_cuda.cpp: ATen/cuda/CUDAContext.h pulls headers a toolkit without
// cuBLAS lacks).
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

#include "common.h"
#include "rnn/rnn_backward_math.h"
#include "rnn/rnn_checks.h"
#include "rnn/rnn_cuda.h"

namespace compress {
namespace {

using namespace rnn_checks;

using LstmGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using GruGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

float* ptr(const at::Tensor& t) { return t.defined() ? t.mutable_data_ptr<float>() : nullptr; }

// `t` on `dev`, of `dtype` and exactly `shape` (`what`: where that shape comes from).
void check_arg(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype, at::IntArrayRef shape,
               const std::string& what, const at::Device& dev) {
  check_tensor(op, name, t, dtype, static_cast<int64_t>(shape.size()), dev);
  check_shape(op, name, t, shape, what);
}

void check_launch(const char* op, cudaError_t err, const char* kernel, int64_t t) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed (", kernel, ", step t = ", t, "): ",
              cudaGetErrorString(err));
}

LstmGrads lstm_layer_backward_cuda(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
                                   const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& c0,
                                   const at::Tensor& w_hh, const OptTensor& w_hr, const OptTensor& lengths,
                                   bool reverse) {
  using namespace rnn_bwd;
  const char* op = "lstm_layer_backward";
  const int64_t H = check_xg(op, xg, 4, at::kCUDA);
  const at::Device dev = xg.device();
  const auto dt = xg.scalar_type();
  const int64_t T = xg.size(0), B = xg.size(1);
  check_lengths(op, lengths, B, dev);
  const bool proj = w_hr.has_value();
  const int64_t P = check_w_hr(op, w_hr, xg, H);
  const std::string grad = "the shape of the forward output it is the gradient of";
  check_arg(op, "dy", dy, dt, {T, B, P}, grad, dev);
  check_arg(op, "dh_n", dh_n, dt, {B, P}, grad, dev);
  check_arg(op, "dc_n", dc_n, dt, {B, H}, grad, dev);
  check_arg(op, "h0", h0, dt, {B, P}, "[B, P] with B = xg.shape[1] = " + std::to_string(B), dev);
  check_arg(op, "c0", c0, dt, {B, H}, "[B, H] with B = " + std::to_string(B) + ", H = " + std::to_string(H), dev);
  check_arg(op, "w_hh", w_hh, dt, {4 * H, P}, "[4H, P] with H = " + std::to_string(H) + ", P = " + std::to_string(P),
            dev);

  c10::cuda::CUDAGuard guard(dev);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev.index()).stream();
  const at::Tensor w = f32(w_hh), wt = w.t();
  const at::Tensor wr = proj ? f32(*w_hr) : at::Tensor(), wrt = proj ? wr.t() : at::Tensor();
  const at::Tensor len = lengths.has_value() ? lengths->contiguous() : at::Tensor();
  const int64_t* L = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
  const auto opt = xg.options().dtype(at::kFloat);

  // 1. Forward. G: xg_t, then + h_{t-1} @ w_hh^T, then (kernel) the activated gates; Hp = h before
  // the step (each step writes the next step's slot; the last h is not needed), Cp = c before, TC =
  // tanh(c after), HH = o * tanh(c) (the projection's input), all indexed by t.
  at::Tensor G = at::empty({T, B, 4 * H}, opt), Hp = at::empty({T, B, P}, opt);
  G.copy_(xg);
  at::Tensor Cp = at::empty({T, B, H}, opt), TC = at::empty({T, B, H}, opt);
  at::Tensor HH = proj ? at::empty({T, B, H}, opt) : at::Tensor();
  at::Tensor c = at::empty({B, H}, opt);
  c.copy_(c0);
  if (T > 0) Hp[step(0, T, reverse)].copy_(h0);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = step(s, T, reverse);
    at::Tensor Gt = G[t], h_next = s + 1 < T ? Hp[step(s + 1, T, reverse)] : at::Tensor();
    Gt.addmm_(Hp[t], wt);
    const LstmRecompute p{ptr(Gt), ptr(c), ptr(Cp[t]), ptr(TC[t]), proj ? ptr(HH[t]) : nullptr, ptr(Hp[t]),
                          proj ? nullptr : ptr(h_next), L, t, B, H};
    check_launch(op, rnn_bwd_lstm_recompute(p, stream), "lstm_recompute", t);
    if (proj && h_next.defined()) {
      at::mm_out(h_next, HH[t], wrt);
      const KeepInactive k{ptr(Hp[t]), ptr(h_next), L, t, B, P};
      check_launch(op, rnn_bwd_keep_inactive(k, stream), "keep_inactive", t);
    }
  }

  // 2. Backward. dG doubles as dxg; DHn holds each step's dh_new (the gradient at the projection's
  // output) for dW_hr.
  const at::Tensor dyf = f32(dy);
  at::Tensor dG = at::empty({T, B, 4 * H}, opt);
  at::Tensor DHn = proj ? at::empty({T, B, P}, opt) : at::Tensor();
  at::Tensor dh = at::empty({B, P}, opt), dc = at::empty({B, H}, opt);
  dh.copy_(dh_n);
  dc.copy_(dc_n);
  at::Tensor dhn = at::empty({B, P}, opt), dhh = proj ? at::empty({B, H}, opt) : dhn;
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = step(s, T, reverse);
    const at::Tensor dhn_t = proj ? DHn[t] : dhn;
    const LstmOutputGrad po{ptr(dh), ptr(dyf[t]), ptr(dhn_t), L, t, B, P};
    check_launch(op, rnn_bwd_lstm_output_grad(po, stream), "lstm_output_grad", t);
    if (proj) at::mm_out(dhh, dhn_t, wr);
    const LstmGrad pg{ptr(G[t]), ptr(Cp[t]), ptr(TC[t]), ptr(dhh), ptr(dc), ptr(dG[t]), L, t, B, H};
    check_launch(op, rnn_bwd_lstm_grad(pg, stream), "lstm_grad", t);
    dh.addmm_(dG[t], w);
  }

  // 3. Weight gradients, one GEMM each over all T * B rows.
  const at::Tensor dW = at::mm(dG.view({T * B, 4 * H}).t(), Hp.view({T * B, P}));
  const at::Tensor dWr = proj ? at::mm(DHn.view({T * B, P}).t(), HH.view({T * B, H})).to(dt)
                              : at::empty({0}, w_hh.options());
  return {dG.to(dt), dh.to(dt), dc.to(dt), dW.to(dt), dWr};
}

GruGrads gru_layer_backward_cuda(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& xg,
                                 const at::Tensor& h0, const at::Tensor& w_hh, const OptTensor& b_hh,
                                 const OptTensor& lengths, bool reverse) {
  using namespace rnn_bwd;
  const char* op = "gru_layer_backward";
  const int64_t H = check_xg(op, xg, 3, at::kCUDA);
  const at::Device dev = xg.device();
  const auto dt = xg.scalar_type();
  const int64_t T = xg.size(0), B = xg.size(1);
  check_lengths(op, lengths, B, dev);
  const std::string grad = "the shape of the forward output it is the gradient of";
  check_arg(op, "dy", dy, dt, {T, B, H}, grad, dev);
  check_arg(op, "dh_n", dh_n, dt, {B, H}, grad, dev);
  check_arg(op, "h0", h0, dt, {B, H}, "[B, H] with B = xg.shape[1] = " + std::to_string(B), dev);
  check_arg(op, "w_hh", w_hh, dt, {3 * H, H}, "[3H, H] with H = xg.shape[2] / 3 = " + std::to_string(H), dev);
  if (b_hh.has_value()) check_arg(op, "b_hh", *b_hh, dt, {3 * H}, "[3H] with H = " + std::to_string(H), dev);

  c10::cuda::CUDAGuard guard(dev);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev.index()).stream();
  const at::Tensor x = f32(xg), w = f32(w_hh), wt = w.t();
  const at::Tensor bias = b_hh.has_value() ? f32(*b_hh) : at::Tensor();
  const at::Tensor len = lengths.has_value() ? lengths->contiguous() : at::Tensor();
  const int64_t* L = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
  const auto opt = xg.options().dtype(at::kFloat);

  // 1. Forward: G = activated r, z, n; AN = the n part of h @ w_hh^T + b_hh; Hp = h before the
  // step (each step writes the next step's slot; the last h is not needed).
  at::Tensor G = at::empty({T, B, 3 * H}, opt), AN = at::empty({T, B, H}, opt), Hp = at::empty({T, B, H}, opt);
  at::Tensor a = at::empty({B, 3 * H}, opt);
  if (T > 0) Hp[step(0, T, reverse)].copy_(h0);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = step(s, T, reverse);
    const at::Tensor h = Hp[t], h_next = s + 1 < T ? Hp[step(s + 1, T, reverse)] : at::Tensor();
    if (bias.defined()) at::addmm_out(a, bias, h, wt);
    else at::mm_out(a, h, wt);
    const GruRecompute p{ptr(x[t]), ptr(a), ptr(h), ptr(h_next), ptr(G[t]), ptr(AN[t]), L, t, B, H};
    check_launch(op, rnn_bwd_gru_recompute(p, stream), "gru_recompute", t);
  }

  // 2. Backward: dG is dxg = (dpr, dpz, dpn), DA = d(h @ w_hh^T + b_hh) = (dpr, dpz, dpn * r).
  // gru_grad leaves dh = (dh + dy_t) z on active rows; + DA_t @ w_hh makes it dh_{t-1}.
  const at::Tensor dyf = f32(dy);
  at::Tensor dG = at::empty({T, B, 3 * H}, opt), DA = at::empty({T, B, 3 * H}, opt);
  at::Tensor dh = at::empty({B, H}, opt);
  dh.copy_(dh_n);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = step(s, T, reverse);
    const GruGrad p{ptr(G[t]), ptr(AN[t]), ptr(Hp[t]), ptr(dyf[t]), ptr(dh), ptr(dG[t]), ptr(DA[t]), L, t, B, H};
    check_launch(op, rnn_bwd_gru_grad(p, stream), "gru_grad", t);
    dh.addmm_(DA[t], w);
  }

  // 3. Weight gradients over all T * B rows at once.
  const at::Tensor DA2 = DA.view({T * B, 3 * H});
  const at::Tensor dW = at::mm(DA2.t(), Hp.view({T * B, H}));
  const at::Tensor db = b_hh.has_value() ? DA2.sum(0).to(dt) : at::empty({0}, w_hh.options());
  return {dG.to(dt), dh.to(dt), dW.to(dt), db};
}

}  // namespace

TORCH_LIBRARY_IMPL(compress, CUDA, m) {
  m.impl("lstm_layer_backward", &lstm_layer_backward_cuda);
  m.impl("gru_layer_backward", &gru_layer_backward_cuda);
}

}  // namespace compress
