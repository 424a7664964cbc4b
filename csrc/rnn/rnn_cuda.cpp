// CUDA implementations of (schemas defined from Python, compress/ops/rnn.py):
//   compress::lstm_layer(xg, h0, c0, w_hh, w_hr?, lengths?, reverse) -> (y, h_n, c_n)
//   compress::gru_layer(xg, h0, w_hh, b_hh?, lengths?, reverse) -> (y, h_n)
//   compress::lstm_layer_w8(xg, h0, c0, qw_hh, w_hh_scale, qw_hr?, w_hr_scale?, lengths?, reverse)
//   compress::gru_layer_w8(xg, h0, qw_hh, w_hh_scale, b_hh?, lengths?, reverse)
//   compress::lstm_layer_bsr(xg, h0, c0, crow, col, values, w_hr?, lengths?, reverse)
//   compress::gru_layer_bsr(xg, h0, crow, col, values, b_hh?, lengths?, reverse)
//   compress::lstm_layer_backward(dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr?, lengths?, reverse)
//   compress::gru_layer_backward(dy, dh_n, xg, h0, w_hh, b_hh?, lengths?, reverse)
// (the backward ops: their own section at the end, with their plan.)
// Torch glue only: checks, CUDAGuard + the current stream, kernel-ready operands, one launcher
// call. Kernels: rnn_recurrence.cu (contract and the path rule in rnn_cuda.h / rnn_recurrence.cu). The
// compressed-weight ops check in the CPU kernel's order and wording (csrc/rnn/rnn_cpu.cpp), the
// dense ones keep theirs.
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
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
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
#include <string>
#include <tuple>
#include <vector>

#include "common.h"
#include "rnn/rnn_backward_math.h"
#include "rnn/rnn_cuda.h"

namespace compress {
namespace {

using OptTensor = std::optional<at::Tensor>;

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
// As rnn_cpu.cpp's (and compress/ops/rnn.py's), on xg's CUDA device.

std::string py_shape(at::IntArrayRef s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

void check_tensor(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype, int64_t dim,
                  const at::Device& dev) {
  TORCH_CHECK_VALUE(t.device() == dev, op, ": expected `", name, "` on ", dev, ", got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": expected `", name, "` to be ", dtype_name(dtype), ", got ",
                   dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": expected `", name, "` to be ", dim, "-D, got ", t.dim(),
                    "-D with shape ", py_shape(t.sizes()));
}

void check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape,
                 const std::string& what) {
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": expected `", name, "` of shape ", py_shape(shape), " (", what,
                    "), got ", py_shape(t.sizes()));
}

// xg [T, B, G*H] on a CUDA device; returns H.
int64_t check_xg(const char* op, const at::Tensor& xg, int64_t G) {
  TORCH_CHECK_VALUE(xg.is_cuda(), op, ": expected `xg` on a CUDA device, got ", xg.device());
  const auto t = xg.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf, op,
                   ": expected `xg` to be torch.float32 or torch.bfloat16 or torch.float16, got ", dtype_name(t));
  TORCH_CHECK_VALUE(xg.dim() == 3, op, ": expected `xg` to be 3-D, got ", xg.dim(), "-D with shape ",
                    py_shape(xg.sizes()));
  COMPRESS_CHECK(op, xg.size(2) % G == 0, "expected `xg` to be [T, B, ", G, "H] (", G, " gates), got last dim ",
                 xg.size(2), ", not divisible by ", G);
  return xg.size(2) / G;
}

void check_lengths(const char* op, const OptTensor& lengths, int64_t B, const at::Device& dev) {
  if (!lengths.has_value()) return;
  check_tensor(op, "lengths", *lengths, at::kLong, 1, dev);
  check_shape(op, "lengths", *lengths, {B}, "one length per batch row");
}

void check_lstm_states(const char* op, const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& c0, int64_t H,
                       int64_t P, const OptTensor& lengths) {
  const int64_t B = xg.size(1);
  check_tensor(op, "h0", h0, xg.scalar_type(), 2, xg.device());
  check_tensor(op, "c0", c0, xg.scalar_type(), 2, xg.device());
  check_shape(op, "h0", h0, {B, P}, "[B, P] with B = xg.shape[1] = " + std::to_string(B));
  check_shape(op, "c0", c0, {B, H}, "[B, H] with B = " + std::to_string(B) + ", H = " + std::to_string(H));
  check_lengths(op, lengths, B, xg.device());
  check_sizes(op, B, H, P);
}

void check_gru_states(const char* op, const at::Tensor& xg, const at::Tensor& h0, const OptTensor& b_hh, int64_t H,
                      const OptTensor& lengths) {
  const int64_t B = xg.size(1);
  check_tensor(op, "h0", h0, xg.scalar_type(), 2, xg.device());
  if (b_hh.has_value()) {
    check_tensor(op, "b_hh", *b_hh, xg.scalar_type(), 1, xg.device());
    check_shape(op, "b_hh", *b_hh, {3 * H}, "[3H] with H = " + std::to_string(H));
  }
  check_shape(op, "h0", h0, {B, H}, "[B, H] with B = xg.shape[1] = " + std::to_string(B));
  check_lengths(op, lengths, B, xg.device());
  check_sizes(op, B, H, H);
}

void check_w8(const char* op, const char* qname, const at::Tensor& q, const char* sname, const at::Tensor& s,
              int64_t rows, int64_t cols, const at::Device& dev) {
  check_tensor(op, qname, q, at::kChar, 2, dev);
  check_tensor(op, sname, s, at::kFloat, 1, dev);
  check_shape(op, qname, q, {rows, cols}, "the float weight's shape");
  check_shape(op, sname, s, {rows}, std::string("one scale per row of `") + qname + "`");
}

// BSR of a [rows, K] weight (rows = G*H) whose block rows must not straddle the H-row gates, and
// the index contents the kernels rely on: crow non-decreasing from 0 to nnz, col in
// [0, ceil(K / bk)). Returns the host copy of crow ++ col (pinned; crow first) the planner reads.
at::Tensor check_bsr(const char* op, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                     at::ScalarType dtype, int64_t rows, int64_t H, int64_t K, const at::Device& dev) {
  check_tensor(op, "crow", crow, at::kInt, 1, dev);
  check_tensor(op, "col", col, at::kInt, 1, dev);
  check_tensor(op, "values", values, dtype, 3, dev);
  const int64_t bn = values.size(1), bk = values.size(2), nnz = col.size(0);
  COMPRESS_CHECK(op, bn >= 1 && bk >= 1 && H % bn == 0, "expected `values` blocks [nnz, bn, bk] with bn dividing H = ",
                 H, " (a block row must lie within one gate), got ", py_shape(values.sizes()));
  check_shape(op, "crow", crow, {rows / bn + 1},
              "one entry per block row of the [" + std::to_string(rows) + ", " + std::to_string(K) +
                  "] weight, plus 1");
  check_shape(op, "col", col, {values.size(0)}, "one block column per stored block");
  COMPRESS_CHECK(op, bk <= kRnnMaxDim, "expected `values` blocks of at most 2^30 columns, got bk = ", bk);

  const int64_t R = rows / bn;
  at::Tensor host = at::empty({R + 1 + nnz}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
  host.narrow(0, 0, R + 1).copy_(crow, /*non_blocking=*/true);
  host.narrow(0, R + 1, nnz).copy_(col, /*non_blocking=*/true);
  c10::cuda::getCurrentCUDAStream(dev.index()).synchronize();
  const int32_t* c = host.const_data_ptr<int32_t>();
  COMPRESS_CHECK(op, c[0] == 0, "expected `crow[0]` to be 0, got ", c[0]);
  for (int64_t r = 0; r < R; ++r)
    COMPRESS_CHECK(op, c[r] <= c[r + 1], "expected `crow` to be non-decreasing, got crow[", r, "] = ", c[r],
                   " > crow[", r + 1, "] = ", c[r + 1]);
  COMPRESS_CHECK(op, c[R] == nnz, "expected `crow[-1]` to be col.size(0) = ", nnz, ", got ", c[R]);
  const int32_t* cl = c + R + 1;
  const int64_t limit = (K + bk - 1) / bk;
  for (int64_t i = 0; i < nnz; ++i)
    COMPRESS_CHECK(op, cl[i] >= 0 && cl[i] < limit, "expected `col` entries in [0, ", limit,
                   ") (block columns: ceil(P / bk)), got col[", i, "] = ", cl[i]);
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

// The weight operands of one call: `set(p)` points p's weight fields at kernel-ready tensors and
// returns them (they must outlive the launch call; the caching allocator orders their reuse after
// the kernels on this stream). Called only when there is a step to run. The setters below capture
// their tensors by value (reference-counted handles).
using SetWeights = std::function<std::vector<at::Tensor>(RnnCudaProblem&)>;

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_lstm(const char* op, const at::Tensor& xg, const at::Tensor& h0,
                                                        const at::Tensor& c0, int64_t H, int64_t P, bool proj,
                                                        const OptTensor& lengths_opt, bool reverse,
                                                        const SetWeights& set) {
  c10::cuda::CUDAGuard guard(xg.device());
  const int64_t T = xg.size(0), B = xg.size(1);
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
    at::Tensor hh = proj ? at::zeros({B, Hp}, f32) : at::Tensor();
    const at::Tensor len = lengths_opt.has_value() ? lengths_opt->contiguous() : at::Tensor();
    RnnCudaProblem p;
    p.cell = RnnCell::kLstm;
    p.dtype = rnn_dtype(dt);
    p.T = T;
    p.B = B;
    p.H = H;
    p.P = P;
    p.reverse = reverse;
    p.proj = proj;
    p.xg = x.const_data_ptr();
    p.lengths = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    p.h = hbuf.mutable_data_ptr<float>();
    p.c = c.mutable_data_ptr<float>();
    p.hh = hh.defined() ? hh.mutable_data_ptr<float>() : nullptr;
    p.y = y.mutable_data_ptr();
    const std::vector<at::Tensor> keep = set(p);
    launch(op, p, xg.device());
  }
  at::Tensor h_n = at::empty({B, P}, xg.options());
  h_n.copy_(hbuf[T % 2].narrow(1, 0, P));
  return {y, h_n, c.to(dt)};
}

std::tuple<at::Tensor, at::Tensor> run_gru(const char* op, const at::Tensor& xg, const at::Tensor& h0, int64_t H,
                                           const OptTensor& b_hh_opt, const OptTensor& lengths_opt, bool reverse,
                                           const SetWeights& set) {
  c10::cuda::CUDAGuard guard(xg.device());
  const int64_t T = xg.size(0), B = xg.size(1);
  const auto f32 = xg.options().dtype(at::kFloat);
  const int64_t Kp = round_up(H, kRnnPad);
  at::Tensor y = at::empty({T, B, H}, xg.options());
  at::Tensor hbuf = at::zeros({2, B, Kp}, f32);
  hbuf[0].narrow(1, 0, H).copy_(h0);
  if (T > 0 && B > 0) {
    const at::Tensor x = xg.contiguous();
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
    p.b_hh = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
    p.lengths = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    p.h = hbuf.mutable_data_ptr<float>();
    p.y = y.mutable_data_ptr();
    const std::vector<at::Tensor> keep = set(p);
    launch(op, p, xg.device());
  }
  at::Tensor h_n = at::empty({B, H}, xg.options());
  h_n.copy_(hbuf[T % 2].narrow(1, 0, H));
  return {y, h_n};
}

// Weight setters, one per storage. `w_hr` / `qw_hr` absent: no projection operand.

SetWeights dense_weights(const at::Tensor& w_hh, const OptTensor& w_hr) {
  return [=](RnnCudaProblem& p) -> std::vector<at::Tensor> {
    const at::Tensor w = padded_rows(w_hh, round_up(p.P, kRnnPad));
    const at::Tensor wr = w_hr.has_value() ? padded_rows(*w_hr, round_up(p.H, kRnnPad)) : at::Tensor();
    p.weights = RnnWeights::kDense;
    p.w_hh = w.const_data_ptr();
    p.w_hr = wr.defined() ? wr.const_data_ptr() : nullptr;
    return {w, wr};
  };
}

SetWeights int8_weights(const at::Tensor& qw_hh, const at::Tensor& w_hh_scale, const OptTensor& qw_hr,
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
SetWeights bsr_weights(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
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
  COMPRESS_CHECK(op, qw_hr.has_value() == w_hr_scale.has_value(),
                 "expected `qw_hr` and `w_hr_scale` both given or both None");
  const int64_t H = check_xg(op, xg, 4);
  const at::Device dev = xg.device();
  if (qw_hr.has_value()) check_tensor(op, "qw_hr", *qw_hr, at::kChar, 2, dev);
  const int64_t P = qw_hr.has_value() ? qw_hr->size(0) : H;
  check_w8(op, "qw_hh", qw_hh, "w_hh_scale", w_hh_scale, 4 * H, P, dev);
  if (qw_hr.has_value()) check_w8(op, "qw_hr", *qw_hr, "w_hr_scale", *w_hr_scale, P, H, dev);
  check_lstm_states(op, xg, h0, c0, H, P, lengths);
  return run_lstm(op, xg, h0, c0, H, P, qw_hr.has_value(), lengths, reverse,
                  int8_weights(qw_hh, w_hh_scale, qw_hr, w_hr_scale));
}

GruOut gru_layer_w8_cuda(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& qw_hh,
                         const at::Tensor& w_hh_scale, const OptTensor& b_hh, const OptTensor& lengths, bool reverse) {
  const char* op = "gru_layer_w8";
  const int64_t H = check_xg(op, xg, 3);
  check_gru_states(op, xg, h0, b_hh, H, lengths);
  check_w8(op, "qw_hh", qw_hh, "w_hh_scale", w_hh_scale, 3 * H, H, xg.device());
  return run_gru(op, xg, h0, H, b_hh, lengths, reverse, int8_weights(qw_hh, w_hh_scale, std::nullopt, std::nullopt));
}

LstmOut lstm_layer_bsr_cuda(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& crow,
                            const at::Tensor& col, const at::Tensor& values, const OptTensor& w_hr,
                            const OptTensor& lengths, bool reverse) {
  const char* op = "lstm_layer_bsr";
  const int64_t H = check_xg(op, xg, 4);
  const at::Device dev = xg.device();
  if (w_hr.has_value()) check_tensor(op, "w_hr", *w_hr, xg.scalar_type(), 2, dev);
  const int64_t P = w_hr.has_value() ? w_hr->size(0) : H;
  if (w_hr.has_value())
    check_shape(op, "w_hr", *w_hr, {P, H}, "[P, H] with H = xg.shape[2] / 4 = " + std::to_string(H));
  c10::cuda::CUDAGuard guard(dev);  // check_bsr waits for xg's device's current stream
  const at::Tensor host = check_bsr(op, crow, col, values, xg.scalar_type(), 4 * H, H, P, dev);
  check_lstm_states(op, xg, h0, c0, H, P, lengths);
  return run_lstm(op, xg, h0, c0, H, P, w_hr.has_value(), lengths, reverse, bsr_weights(crow, col, values, host, w_hr));
}

GruOut gru_layer_bsr_cuda(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& crow, const at::Tensor& col,
                          const at::Tensor& values, const OptTensor& b_hh, const OptTensor& lengths, bool reverse) {
  const char* op = "gru_layer_bsr";
  const int64_t H = check_xg(op, xg, 3);
  check_gru_states(op, xg, h0, b_hh, H, lengths);
  c10::cuda::CUDAGuard guard(xg.device());
  const at::Tensor host = check_bsr(op, crow, col, values, xg.scalar_type(), 3 * H, H, H, xg.device());
  return run_gru(op, xg, h0, H, b_hh, lengths, reverse, bsr_weights(crow, col, values, host, std::nullopt));
}

// ------------------------------------------------------------------------------- backward ops
// compress::lstm_layer_backward / gru_layer_backward: rnn_backward_cpu.cpp's plan on the GPU, the
// same per-element math (rnn_backward_math.h, run by rnn_backward.cu's kernels), float32 inside:
//  1. Forward again over T: per step one ATen GEMM (cuBLAS) G_t = xg_t + h_{t-1} @ w_hh^T (GRU:
//     a = h_{t-1} @ w_hh^T + b_hh) and one kernel that activates the gates and stores what the
//     derivative needs; with a projection, h_t = hh @ w_hr^T (GEMM) and keep_inactive (lengths).
//  2. Backward over the steps in the opposite order: pointwise kernels for dG_t (= dxg_t) and the
//     next dc, then one GEMM dh += dG_t @ w_hh (with a projection, dh_new @ w_hr before the gates).
//  3. dW_hh (and dW_hr; GRU db_hh a column sum) as one GEMM over all T * B rows.
// All on the current stream of xg's device, no host synchronization (the kernels read lengths).
// Per step: LSTM 2 launches forward (3-4 with a projection) and 3 backward (4 with one); GRU 2 and 2.

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
  const int64_t H = check_xg(op, xg, 4);
  const at::Device dev = xg.device();
  const auto dt = xg.scalar_type();
  const int64_t T = xg.size(0), B = xg.size(1);
  check_lengths(op, lengths, B, dev);
  const bool proj = w_hr.has_value();
  if (proj) check_tensor(op, "w_hr", *w_hr, dt, 2, dev);
  const int64_t P = proj ? w_hr->size(0) : H;
  if (proj) check_shape(op, "w_hr", *w_hr, {P, H}, "[P, H] with H = xg.shape[2] / 4 = " + std::to_string(H));
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
  const int64_t H = check_xg(op, xg, 3);
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
  m.impl("lstm_layer", &lstm_layer_cuda);
  m.impl("gru_layer", &gru_layer_cuda);
  m.impl("lstm_layer_w8", &lstm_layer_w8_cuda);
  m.impl("gru_layer_w8", &gru_layer_w8_cuda);
  m.impl("lstm_layer_bsr", &lstm_layer_bsr_cuda);
  m.impl("gru_layer_bsr", &gru_layer_bsr_cuda);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cuda);
  m.impl("gru_layer_backward", &gru_layer_backward_cuda);
}

}  // namespace compress
