// CUDA implementations of (schemas defined from Python, compress/ops/rnn.py):
//   compress::lstm_layer(xg, h0, c0, w_hh, w_hr?, lengths?, reverse) -> (y, h_n, c_n)
//   compress::gru_layer(xg, h0, w_hh, b_hh?, lengths?, reverse) -> (y, h_n)
//   compress::lstm_layer_w8(xg, h0, c0, qw_hh, w_hh_scale, qw_hr?, w_hr_scale?, lengths?, reverse)
//   compress::gru_layer_w8(xg, h0, qw_hh, w_hh_scale, b_hh?, lengths?, reverse)
//   compress::lstm_layer_bsr(xg, h0, c0, crow, col, values, w_hr?, lengths?, reverse)
//   compress::gru_layer_bsr(xg, h0, crow, col, values, b_hh?, lengths?, reverse)
// (their gradients: rnn_backward_cuda.cpp.)
// Torch glue only: checks, CUDAGuard + the current stream, kernel-ready operands, one launcher
// call. Kernels: rnn_recurrence.cu (contract and the path rule in rnn_cuda.h / rnn_recurrence.cu). The
// compressed-weight ops check with the CPU kernel's checks (rnn_checks.h: its order and wording),
// the dense ones keep theirs.
//
// Operands: xg any strides (a contiguous copy when needed); w_hh [G*H, P] and w_hr [P, H] (dense or
// int8) are read in place when contiguous, 16-byte aligned and P (resp. H) % 4 == 0, else copied
// once per call into zero-padded [G*H, Kp] / [P, Hp] buffers; int8 scales and BSR values contiguous.
// State buffers are fresh float32: h [2, B, Kp] (zero padding), c [B, H], hh [B, Hp]; h_n / c_n are
// rounded to the input dtype at the end.
//
// BSR indices: the contents of crow and col are checked here, as the CPU kernel does (the Python
// checks skip them: they would cost a GPU sync). That copies both to pinned host memory and waits
// for the stream once per call (the persistent path also sizes its shared memory from crow); a
// cache keyed on the index tensors (as the CPU kernel's packed-weight cache) would spare the wait
// for unchanged weights. The kernels read the device tensors.
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
#include <functional>
#include <optional>
#include <tuple>
#include <vector>

#include "common.h"
#include "rnn/rnn_checks.h"
#include "rnn/rnn_cuda.h"

namespace compress {
namespace {

using namespace rnn_checks;

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

// ------------------------------------------------------------------------------ dense op checks
// Optional arguments are unpacked into locals named as the argument: the macros print the name.

void check_common(const char* op, const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& w_hh,
                  const OptTensor& lengths_opt) {
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

// ------------------------------------------------------------------- compressed-weight op checks
// rnn_checks.h, shared with rnn_cpu.cpp (so in the CPU kernel's order and wording), on xg's CUDA
// device; the ops add check_sizes after the states.

// check_bsr_shapes, and the index contents the kernels rely on (check_bsr_indices). Returns the
// host copy of crow ++ col (pinned; crow first) the planner reads.
at::Tensor check_bsr(const char* op, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                     at::ScalarType dtype, int64_t rows, int64_t H, int64_t K, const at::Device& dev) {
  check_bsr_shapes(op, crow, col, values, dtype, rows, H, K, dev);
  const int64_t bn = values.size(1), bk = values.size(2), nnz = col.size(0);
  COMPRESS_CHECK(op, bk <= kRnnMaxDim, "expected `values` blocks of at most 2^30 columns, got bk = ", bk);

  const int64_t R = rows / bn;
  at::Tensor host = at::empty({R + 1 + nnz}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
  host.narrow(0, 0, R + 1).copy_(crow, /*non_blocking=*/true);
  host.narrow(0, R + 1, nnz).copy_(col, /*non_blocking=*/true);
  c10::cuda::getCurrentCUDAStream(dev.index()).synchronize();
  const int32_t* c = host.const_data_ptr<int32_t>();
  check_bsr_indices(op, c, c + R + 1, R, nnz, K, bk);
  return host;
}

// ------------------------------------------------------------------------------------- launch

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

// Operands of one call: `set(p)` points some of p's fields at kernel-ready tensors and returns
// them (they must outlive the launch call; the caching allocator orders their reuse after the
// kernels on this stream). Called only when there is a step to run. The weight setters below
// capture their tensors by value (reference-counted handles).
using SetOperands = std::function<std::vector<at::Tensor>(RnnCudaProblem&)>;

// What LSTM and GRU share: y [T, B, P] and the state buffer h [2, B, Kp] from h0, the problem's
// common fields, the cell's operands (`set_cell`) and the weights (`set_weights`), the launch.
// Returns y and h_n.
std::tuple<at::Tensor, at::Tensor> run(const char* op, RnnCell cell, const at::Tensor& xg, const at::Tensor& h0,
                                       int64_t H, int64_t P, const OptTensor& lengths_opt, bool reverse,
                                       const SetOperands& set_cell, const SetOperands& set_weights) {
  c10::cuda::CUDAGuard guard(xg.device());
  const int64_t T = xg.size(0), B = xg.size(1);
  at::Tensor y = at::empty({T, B, P}, xg.options());
  at::Tensor hbuf = at::zeros({2, B, round_up(P, kRnnPad)}, xg.options().dtype(at::kFloat));
  hbuf[0].narrow(1, 0, P).copy_(h0);
  if (T > 0 && B > 0) {
    const at::Tensor x = xg.contiguous();
    const at::Tensor len = lengths_opt.has_value() ? lengths_opt->contiguous() : at::Tensor();
    RnnCudaProblem p;
    p.cell = cell;
    p.dtype = rnn_dtype(xg.scalar_type());
    p.T = T;
    p.B = B;
    p.H = H;
    p.P = P;
    p.reverse = reverse;
    p.xg = x.const_data_ptr();
    p.lengths = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    p.h = hbuf.mutable_data_ptr<float>();
    p.y = y.mutable_data_ptr();
    const std::vector<at::Tensor> keep_cell = set_cell(p), keep_weights = set_weights(p);
    launch(op, p, xg.device());
  }
  at::Tensor h_n = at::empty({B, P}, xg.options());
  h_n.copy_(hbuf[T % 2].narrow(1, 0, P));
  return {y, h_n};
}

// The LSTM's own operands: c [B, H] from c0 (c_n), and with a projection the hh scratch [B, Hp].
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_lstm(const char* op, const at::Tensor& xg, const at::Tensor& h0,
                                                        const at::Tensor& c0, int64_t H, int64_t P, bool proj,
                                                        const OptTensor& lengths_opt, bool reverse,
                                                        const SetOperands& set_weights) {
  c10::cuda::CUDAGuard guard(xg.device());
  const auto f32 = xg.options().dtype(at::kFloat);
  at::Tensor c = at::empty({xg.size(1), H}, f32);
  c.copy_(c0);
  auto [y, h_n] = run(op, RnnCell::kLstm, xg, h0, H, P, lengths_opt, reverse, [&](RnnCudaProblem& p) {
    const at::Tensor hh = proj ? at::zeros({p.B, round_up(H, kRnnPad)}, f32) : at::Tensor();
    p.proj = proj;
    p.c = c.mutable_data_ptr<float>();
    p.hh = hh.defined() ? hh.mutable_data_ptr<float>() : nullptr;
    return std::vector<at::Tensor>{hh};
  }, set_weights);
  return {y, h_n, c.to(xg.scalar_type())};
}

// The GRU's own operand: b_hh in float32.
std::tuple<at::Tensor, at::Tensor> run_gru(const char* op, const at::Tensor& xg, const at::Tensor& h0, int64_t H,
                                           const OptTensor& b_hh_opt, const OptTensor& lengths_opt, bool reverse,
                                           const SetOperands& set_weights) {
  return run(op, RnnCell::kGru, xg, h0, H, H, lengths_opt, reverse, [&](RnnCudaProblem& p) {
    const at::Tensor bias = b_hh_opt.has_value() ? b_hh_opt->to(at::kFloat).contiguous() : at::Tensor();
    p.b_hh = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
    return std::vector<at::Tensor>{bias};
  }, set_weights);
}

// Weight setters, one per storage. `w_hr` / `qw_hr` absent: no projection operand.

SetOperands dense_weights(const at::Tensor& w_hh, const OptTensor& w_hr) {
  return [=](RnnCudaProblem& p) -> std::vector<at::Tensor> {
    const at::Tensor w = padded_rows(w_hh, round_up(p.P, kRnnPad));
    const at::Tensor wr = w_hr.has_value() ? padded_rows(*w_hr, round_up(p.H, kRnnPad)) : at::Tensor();
    p.weights = RnnWeights::kDense;
    p.w_hh = w.const_data_ptr();
    p.w_hr = wr.defined() ? wr.const_data_ptr() : nullptr;
    return {w, wr};
  };
}

SetOperands int8_weights(const at::Tensor& qw_hh, const at::Tensor& w_hh_scale, const OptTensor& qw_hr,
                        const OptTensor& w_hr_scale) {
  return [=](RnnCudaProblem& p) -> std::vector<at::Tensor> {
    const at::Tensor q = padded_rows(qw_hh, round_up(p.P, kRnnPad)), s = w_hh_scale.contiguous();
    at::Tensor qr, sr;
    if (qw_hr.has_value()) {
      qr = padded_rows(*qw_hr, round_up(p.H, kRnnPad));
      sr = w_hr_scale->contiguous();
    }
    p.weights = RnnWeights::kInt8;
    p.w_hh = q.const_data_ptr();
    p.w_hh_scale = s.const_data_ptr<float>();
    p.w_hr = qr.defined() ? qr.const_data_ptr() : nullptr;
    p.w_hr_scale = sr.defined() ? sr.const_data_ptr<float>() : nullptr;
    return {q, s, qr, sr};
  };
}

// `host`: check_bsr's pinned copy of crow (then col).
SetOperands bsr_weights(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                       const at::Tensor& host, const OptTensor& w_hr) {
  return [=](RnnCudaProblem& p) -> std::vector<at::Tensor> {
    const at::Tensor cr = crow.contiguous(), cl = col.contiguous(), v = values.contiguous();
    const at::Tensor wr = w_hr.has_value() ? padded_rows(*w_hr, round_up(p.H, kRnnPad)) : at::Tensor();
    p.weights = RnnWeights::kBsr;
    p.w_hh = v.const_data_ptr();
    p.crow = cr.const_data_ptr<int32_t>();
    p.col = cl.const_data_ptr<int32_t>();
    p.crow_host = host.const_data_ptr<int32_t>();
    p.nnz = cl.size(0);
    p.bn = v.size(1);
    p.bk = v.size(2);
    p.w_hr = wr.defined() ? wr.const_data_ptr() : nullptr;
    return {cr, cl, v, wr};
  };
}

// ------------------------------------------------------------------------------------------ ops

using LstmOut = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using GruOut = std::tuple<at::Tensor, at::Tensor>;

LstmOut lstm_layer_cuda(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
                        const OptTensor& w_hr_opt, const OptTensor& lengths_opt, bool reverse) {
  const char* op = "lstm_layer";
  check_common(op, xg, h0, w_hh, lengths_opt);
  COMPRESS_CHECK_DEVICE(op, c0, xg.device());
  COMPRESS_CHECK_DTYPE(op, c0, xg.scalar_type());
  COMPRESS_CHECK_DIM(op, c0, 2);
  COMPRESS_CHECK(op, xg.size(2) % 4 == 0, "expected `xg` to be [T, B, 4H], got last dim ", xg.size(2));
  const int64_t B = xg.size(1), H = xg.size(2) / 4;
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
  return run_lstm(op, xg, h0, c0, H, P, w_hr_opt.has_value(), lengths_opt, reverse, dense_weights(w_hh, w_hr_opt));
}

GruOut gru_layer_cuda(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& w_hh, const OptTensor& b_hh_opt,
                      const OptTensor& lengths_opt, bool reverse) {
  const char* op = "gru_layer";
  check_common(op, xg, h0, w_hh, lengths_opt);
  COMPRESS_CHECK(op, xg.size(2) % 3 == 0, "expected `xg` to be [T, B, 3H], got last dim ", xg.size(2));
  const int64_t B = xg.size(1), H = xg.size(2) / 3;
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
  return run_gru(op, xg, h0, H, b_hh_opt, lengths_opt, reverse, dense_weights(w_hh, std::nullopt));
}

LstmOut lstm_layer_w8_cuda(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& qw_hh,
                           const at::Tensor& w_hh_scale, const OptTensor& qw_hr, const OptTensor& w_hr_scale,
                           const OptTensor& lengths, bool reverse) {
  const char* op = "lstm_layer_w8";
  const auto [H, P] = check_lstm_layer_w8(op, xg, h0, c0, qw_hh, w_hh_scale, qw_hr, w_hr_scale, lengths, at::kCUDA);
  check_sizes(op, xg.size(1), H, P);
  return run_lstm(op, xg, h0, c0, H, P, qw_hr.has_value(), lengths, reverse,
                  int8_weights(qw_hh, w_hh_scale, qw_hr, w_hr_scale));
}

GruOut gru_layer_w8_cuda(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& qw_hh,
                         const at::Tensor& w_hh_scale, const OptTensor& b_hh, const OptTensor& lengths, bool reverse) {
  const char* op = "gru_layer_w8";
  const int64_t H = check_xg(op, xg, 3, at::kCUDA);
  check_gru_states(op, xg, h0, b_hh, H, lengths);
  check_sizes(op, xg.size(1), H, H);
  check_w8(op, "qw_hh", qw_hh, "w_hh_scale", w_hh_scale, 3 * H, H, xg.device());
  return run_gru(op, xg, h0, H, b_hh, lengths, reverse, int8_weights(qw_hh, w_hh_scale, std::nullopt, std::nullopt));
}

LstmOut lstm_layer_bsr_cuda(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& crow,
                            const at::Tensor& col, const at::Tensor& values, const OptTensor& w_hr,
                            const OptTensor& lengths, bool reverse) {
  const char* op = "lstm_layer_bsr";
  const int64_t H = check_xg(op, xg, 4, at::kCUDA);
  const int64_t P = check_w_hr(op, w_hr, xg, H);
  c10::cuda::CUDAGuard guard(xg.device());  // check_bsr waits for xg's device's current stream
  const at::Tensor host = check_bsr(op, crow, col, values, xg.scalar_type(), 4 * H, H, P, xg.device());
  check_lstm_states(op, xg, h0, c0, H, P, lengths);
  check_sizes(op, xg.size(1), H, P);
  return run_lstm(op, xg, h0, c0, H, P, w_hr.has_value(), lengths, reverse, bsr_weights(crow, col, values, host, w_hr));
}

GruOut gru_layer_bsr_cuda(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& crow, const at::Tensor& col,
                          const at::Tensor& values, const OptTensor& b_hh, const OptTensor& lengths, bool reverse) {
  const char* op = "gru_layer_bsr";
  const int64_t H = check_xg(op, xg, 3, at::kCUDA);
  check_gru_states(op, xg, h0, b_hh, H, lengths);
  check_sizes(op, xg.size(1), H, H);
  c10::cuda::CUDAGuard guard(xg.device());
  const at::Tensor host = check_bsr(op, crow, col, values, xg.scalar_type(), 3 * H, H, H, xg.device());
  return run_gru(op, xg, h0, H, b_hh, lengths, reverse, bsr_weights(crow, col, values, host, std::nullopt));
}

}  // namespace

TORCH_LIBRARY_IMPL(compress, CUDA, m) {
  m.impl("lstm_layer", &lstm_layer_cuda);
  m.impl("gru_layer", &gru_layer_cuda);
  m.impl("lstm_layer_w8", &lstm_layer_w8_cuda);
  m.impl("gru_layer_w8", &gru_layer_w8_cuda);
  m.impl("lstm_layer_bsr", &lstm_layer_bsr_cuda);
  m.impl("gru_layer_bsr", &gru_layer_bsr_cuda);
}

}  // namespace compress
