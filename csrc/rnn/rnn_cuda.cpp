// CUDA implementations of (schemas defined from Python, compress/ops/rnn.py):
//   compress::lstm_layer(xg, h0, c0, w_hh, w_hr?, lengths?, reverse) -> (y, h_n, c_n)
//   compress::gru_layer(xg, h0, w_hh, b_hh?, lengths?, reverse) -> (y, h_n)
// Torch glue only: checks (in the CPU kernel's order and wording, csrc/rnn/rnn_cpu.cpp), CUDAGuard
// + the current stream, kernel-ready operands, one launcher call. Kernels: rnn_cuda.cu (contract
// and the path rule in rnn_cuda.h / rnn_cuda.cu).
//
// Operands: xg any strides (a contiguous copy when needed); w_hh [G*H, P] and w_hr [P, H] are read
// in place when contiguous, 16-byte aligned and P (resp. H) % 4 == 0, else copied once per call
// into zero-padded [G*H, Kp] / [P, Hp] buffers. State buffers are fresh float32: h [2, B, Kp]
// (zero padding), c [B, H], hh [B, Hp]; h_n / c_n are rounded to the input dtype at the end.
//
// COMPRESS_RNN_CUDA_PATH=auto|persistent|stepwise (environment, read per call) forces a path, for
// tests and benchmarks; `persistent` raises when that kernel cannot run the shape. c10/cuda only
// (see int8_mm_cuda.cpp: ATen/cuda/CUDAContext.h pulls headers a toolkit without cuBLAS lacks).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>

#include "common.h"
#include "rnn/rnn_cuda.h"

namespace compress {
namespace {

RnnDtype rnn_dtype(c10::ScalarType t) {
  return t == at::kBFloat16 ? RnnDtype::kBFloat16 : (t == at::kHalf ? RnnDtype::kFloat16 : RnnDtype::kFloat32);
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0; }

// `w` [rows, cols] as the kernels read it: contiguous [rows, cols_p], 16-byte aligned, zero columns
// past cols. `w` itself when it already is, else a zero-padded copy.
at::Tensor padded_rows(const at::Tensor& w, int64_t cols_p) {
  if (w.is_contiguous() && w.size(1) == cols_p && aligned16(w)) return w;
  at::Tensor out = at::zeros({w.size(0), cols_p}, w.options());
  out.narrow(1, 0, w.size(1)).copy_(w);
  return out;
}

RnnPath requested_path(const char* op) {
  const char* env = std::getenv("COMPRESS_RNN_CUDA_PATH");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return RnnPath::kAuto;
  if (std::strcmp(env, "persistent") == 0) return RnnPath::kPersistent;
  if (std::strcmp(env, "stepwise") == 0) return RnnPath::kStepwise;
  TORCH_CHECK_VALUE(false, op, ": expected COMPRESS_RNN_CUDA_PATH to be auto, persistent or stepwise, got '", env,
                    "'");
  return RnnPath::kAuto;
}

// Optional arguments are unpacked into locals named as the argument: the macros print the name.
void check_common(const char* op, const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& w_hh,
                  const std::optional<at::Tensor>& lengths_opt) {
  COMPRESS_CHECK(op, xg.is_cuda(), "expected `xg` on a CUDA device, got ", xg.device());
  COMPRESS_CHECK_DEVICE(op, h0, xg.device());
  COMPRESS_CHECK_DEVICE(op, w_hh, xg.device());
  TORCH_CHECK_TYPE(xg.scalar_type() == at::kFloat || xg.scalar_type() == at::kBFloat16 ||
                       xg.scalar_type() == at::kHalf,
                   op, ": expected `xg` to be torch.float32, torch.bfloat16 or torch.float16, got ",
                   dtype_name(xg.scalar_type()));
  COMPRESS_CHECK_DTYPE(op, h0, xg.scalar_type());
  COMPRESS_CHECK_DTYPE(op, w_hh, xg.scalar_type());
  COMPRESS_CHECK_DIM(op, xg, 3);
  COMPRESS_CHECK_DIM(op, h0, 2);
  COMPRESS_CHECK_DIM(op, w_hh, 2);
  if (lengths_opt.has_value()) {
    const at::Tensor& lengths = *lengths_opt;
    COMPRESS_CHECK_DEVICE(op, lengths, xg.device());
    COMPRESS_CHECK_DTYPE(op, lengths, at::kLong);
    COMPRESS_CHECK_DIM(op, lengths, 1);
    COMPRESS_CHECK(op, lengths.size(0) == xg.size(1), "expected `lengths` to have B = xg.size(1) = ", xg.size(1),
                   " entries, got ", lengths.size(0));
  }
}

void check_sizes(const char* op, int64_t B, int64_t H, int64_t P) {
  COMPRESS_CHECK(op, B <= kRnnMaxDim && H <= kRnnMaxDim && P <= kRnnMaxDim,
                 "B, H and P must stay below 2^30, got B = ", B, ", H = ", H, ", P = ", P);
}

// Runs the launcher; raises with the op and sizes on a launch error.
void launch(const char* op, const RnnCudaProblem& p, const at::Device& device) {
  const RnnPath want = requested_path(op);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  RnnPath ran = RnnPath::kNone;
  const char* why = nullptr;
  const cudaError_t err = rnn_cuda_forward(p, want, stream, &ran, &why);
  TORCH_CHECK(!(err == cudaErrorNotSupported && want == RnnPath::kPersistent), op,
              ": COMPRESS_RNN_CUDA_PATH=persistent, but the persistent kernel cannot run T = ", p.T, ", B = ",
              p.B, ", H = ", p.H, ", P = ", p.P, " here: ", why ? why : "?");
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err), " (T=", p.T,
              ", B=", p.B, ", H=", p.H, ", P=", p.P, ")");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer_cuda(const at::Tensor& xg, const at::Tensor& h0,
                                                               const at::Tensor& c0, const at::Tensor& w_hh,
                                                               const std::optional<at::Tensor>& w_hr_opt,
                                                               const std::optional<at::Tensor>& lengths_opt,
                                                               bool reverse) {
  const char* op = "lstm_layer";
  check_common(op, xg, h0, w_hh, lengths_opt);
  COMPRESS_CHECK_DEVICE(op, c0, xg.device());
  COMPRESS_CHECK_DTYPE(op, c0, xg.scalar_type());
  COMPRESS_CHECK_DIM(op, c0, 2);
  COMPRESS_CHECK(op, xg.size(2) % 4 == 0, "expected `xg` to be [T, B, 4H], got last dim ", xg.size(2));
  const int64_t T = xg.size(0), B = xg.size(1), H = xg.size(2) / 4;
  const int64_t P = w_hr_opt.has_value() ? w_hr_opt->size(0) : H;
  if (w_hr_opt.has_value()) {
    const at::Tensor& w_hr = *w_hr_opt;
    COMPRESS_CHECK_DEVICE(op, w_hr, xg.device());
    COMPRESS_CHECK_DTYPE(op, w_hr, xg.scalar_type());
    COMPRESS_CHECK(op, w_hr.dim() == 2 && w_hr.size(1) == H, "expected `w_hr` to be [P, H] with H = ", H,
                   ", got shape ", w_hr.sizes());
  }
  COMPRESS_CHECK(op, w_hh.size(0) == 4 * H && w_hh.size(1) == P, "expected `w_hh` of shape [", 4 * H, ", ", P,
                 "], got ", w_hh.sizes());
  COMPRESS_CHECK(op, h0.size(0) == B && h0.size(1) == P, "expected `h0` of shape [", B, ", ", P, "], got ",
                 h0.sizes());
  COMPRESS_CHECK(op, c0.size(0) == B && c0.size(1) == H, "expected `c0` of shape [", B, ", ", H, "], got ",
                 c0.sizes());
  check_sizes(op, B, H, P);

  c10::cuda::CUDAGuard guard(xg.device());
  const auto dt = xg.scalar_type();
  const auto f32 = xg.options().dtype(at::kFloat);
  const int64_t Kp = round_up(P, kRnnPad), Hp = round_up(H, kRnnPad);
  at::Tensor y = at::empty({T, B, P}, xg.options());
  at::Tensor hbuf = at::zeros({2, B, Kp}, f32);
  hbuf[0].narrow(1, 0, P).copy_(h0);
  at::Tensor c = at::empty({B, H}, f32);
  c.copy_(c0);
  if (T > 0 && B > 0) {
    const at::Tensor x = xg.contiguous();
    const at::Tensor w = padded_rows(w_hh, Kp);
    const at::Tensor wr = w_hr_opt.has_value() ? padded_rows(*w_hr_opt, Hp) : at::Tensor();
    at::Tensor hh = w_hr_opt.has_value() ? at::zeros({B, Hp}, f32) : at::Tensor();
    const at::Tensor len = lengths_opt.has_value() ? lengths_opt->contiguous() : at::Tensor();
    RnnCudaProblem p;
    p.cell = RnnCell::kLstm;
    p.dtype = rnn_dtype(dt);
    p.T = T;
    p.B = B;
    p.H = H;
    p.P = P;
    p.reverse = reverse;
    p.proj = w_hr_opt.has_value();
    p.xg = x.const_data_ptr();
    p.w_hh = w.const_data_ptr();
    p.w_hr = wr.defined() ? wr.const_data_ptr() : nullptr;
    p.lengths = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    p.h = hbuf.mutable_data_ptr<float>();
    p.c = c.mutable_data_ptr<float>();
    p.hh = hh.defined() ? hh.mutable_data_ptr<float>() : nullptr;
    p.y = y.mutable_data_ptr();
    launch(op, p, xg.device());
  }
  at::Tensor h_n = at::empty({B, P}, xg.options());
  h_n.copy_(hbuf[T % 2].narrow(1, 0, P));
  return {y, h_n, c.to(dt)};
}

std::tuple<at::Tensor, at::Tensor> gru_layer_cuda(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& w_hh,
                                                  const std::optional<at::Tensor>& b_hh_opt,
                                                  const std::optional<at::Tensor>& lengths_opt, bool reverse) {
  const char* op = "gru_layer";
  check_common(op, xg, h0, w_hh, lengths_opt);
  COMPRESS_CHECK(op, xg.size(2) % 3 == 0, "expected `xg` to be [T, B, 3H], got last dim ", xg.size(2));
  const int64_t T = xg.size(0), B = xg.size(1), H = xg.size(2) / 3;
  COMPRESS_CHECK(op, w_hh.size(0) == 3 * H && w_hh.size(1) == H, "expected `w_hh` of shape [", 3 * H, ", ", H,
                 "], got ", w_hh.sizes());
  COMPRESS_CHECK(op, h0.size(0) == B && h0.size(1) == H, "expected `h0` of shape [", B, ", ", H, "], got ",
                 h0.sizes());
  if (b_hh_opt.has_value()) {
    const at::Tensor& b_hh = *b_hh_opt;
    COMPRESS_CHECK_DEVICE(op, b_hh, xg.device());
    COMPRESS_CHECK_DTYPE(op, b_hh, xg.scalar_type());
    COMPRESS_CHECK(op, b_hh.dim() == 1 && b_hh.size(0) == 3 * H, "expected `b_hh` of shape [", 3 * H, "], got ",
                   b_hh.sizes());
  }
  check_sizes(op, B, H, H);

  c10::cuda::CUDAGuard guard(xg.device());
  const auto f32 = xg.options().dtype(at::kFloat);
  const int64_t Kp = round_up(H, kRnnPad);
  at::Tensor y = at::empty({T, B, H}, xg.options());
  at::Tensor hbuf = at::zeros({2, B, Kp}, f32);
  hbuf[0].narrow(1, 0, H).copy_(h0);
  if (T > 0 && B > 0) {
    const at::Tensor x = xg.contiguous();
    const at::Tensor w = padded_rows(w_hh, Kp);
    const at::Tensor bias = b_hh_opt.has_value() ? b_hh_opt->to(at::kFloat).contiguous() : at::Tensor();
    const at::Tensor len = lengths_opt.has_value() ? lengths_opt->contiguous() : at::Tensor();
    RnnCudaProblem p;
    p.cell = RnnCell::kGru;
    p.dtype = rnn_dtype(xg.scalar_type());
    p.T = T;
    p.B = B;
    p.H = H;
    p.P = H;
    p.reverse = reverse;
    p.xg = x.const_data_ptr();
    p.w_hh = w.const_data_ptr();
    p.b_hh = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
    p.lengths = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    p.h = hbuf.mutable_data_ptr<float>();
    p.y = y.mutable_data_ptr();
    launch(op, p, xg.device());
  }
  at::Tensor h_n = at::empty({B, H}, xg.options());
  h_n.copy_(hbuf[T % 2].narrow(1, 0, H));
  return {y, h_n};
}

}  // namespace

TORCH_LIBRARY_IMPL(compress, CUDA, m) {
  m.impl("lstm_layer", &lstm_layer_cuda);
  m.impl("gru_layer", &gru_layer_cuda);
}

}  // namespace compress
