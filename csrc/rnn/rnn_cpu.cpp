// compress::lstm_layer / gru_layer and their compressed-weight variants (lstm_layer_w8,
// gru_layer_w8, lstm_layer_bsr, gru_layer_bsr) on the CPU: input checks, weight packing (cached
// between calls, rnn_cpu_pack.h) and the whole recurrence in one call (rnn_cpu_kernel.h).
//
// Shapes (compress/ops/rnn.py): T steps, B batch rows, H hidden units, P state width (LSTM
// proj_size, else H), G gates (4 LSTM, 3 GRU). xg [T, B, G*H] holds the input projection (any
// strides, float32 / bfloat16 / float16); states and gate math are float32, outputs are rounded to
// xg's dtype at the end.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "common.h"
#include "rnn/rnn_cpu_kernel.h"
#include "rnn/rnn_cpu_pack.h"
#include "sparse/sparse_cpu.h"  // check_crow, check_col, check_float_tensor, py_shape

namespace compress::rnn_cpu {
namespace {

using sparse_cpu::py_shape;

// ---------------------------------------------------------------------------------------- checks
// In the order of compress/ops/rnn.py's checks, with its messages (the ops can be called directly
// through torch.ops.compress.*, so the kernel checks everything it relies on).

void check_tensor(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype, int64_t dim) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": expected `", name, "` on cpu, got ", t.device());
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

// xg [T, B, G*H] on the CPU; returns H.
int64_t check_xg(const char* op, const at::Tensor& xg, int64_t G) {
  TORCH_CHECK_VALUE(xg.device().is_cpu(), op, ": expected `xg` on cpu, got ", xg.device());
  sparse_cpu::check_float_tensor(op, "xg", xg, 3);
  COMPRESS_CHECK(op, xg.size(2) % G == 0, "expected `xg` to be [T, B, ", G, "H] (", G, " gates), got last dim ",
                 xg.size(2), ", not divisible by ", G);
  return xg.size(2) / G;
}

void check_lengths(const char* op, const c10::optional<at::Tensor>& lengths, int64_t B) {
  if (!lengths.has_value()) return;
  check_tensor(op, "lengths", *lengths, at::kLong, 1);
  check_shape(op, "lengths", *lengths, {B}, "one length per batch row");
}

void check_lstm_states(const char* op, const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& c0, int64_t H,
                       int64_t P, const c10::optional<at::Tensor>& lengths) {
  const int64_t B = xg.size(1);
  check_tensor(op, "h0", h0, xg.scalar_type(), 2);
  check_tensor(op, "c0", c0, xg.scalar_type(), 2);
  check_shape(op, "h0", h0, {B, P}, "[B, P] with B = xg.shape[1] = " + std::to_string(B));
  check_shape(op, "c0", c0, {B, H}, "[B, H] with B = " + std::to_string(B) + ", H = " + std::to_string(H));
  check_lengths(op, lengths, B);
}

void check_gru_states(const char* op, const at::Tensor& xg, const at::Tensor& h0,
                      const c10::optional<at::Tensor>& b_hh, int64_t H, const c10::optional<at::Tensor>& lengths) {
  const int64_t B = xg.size(1);
  check_tensor(op, "h0", h0, xg.scalar_type(), 2);
  if (b_hh.has_value()) {
    check_tensor(op, "b_hh", *b_hh, xg.scalar_type(), 1);
    check_shape(op, "b_hh", *b_hh, {3 * H}, "[3H] with H = " + std::to_string(H));
  }
  check_shape(op, "h0", h0, {B, H}, "[B, H] with B = xg.shape[1] = " + std::to_string(B));
  check_lengths(op, lengths, B);
}

void check_w8(const char* op, const char* qname, const at::Tensor& q, const char* sname, const at::Tensor& s,
              int64_t rows, int64_t cols) {
  check_tensor(op, qname, q, at::kChar, 2);
  check_tensor(op, sname, s, at::kFloat, 1);
  check_shape(op, qname, q, {rows, cols}, "the float weight's shape");
  check_shape(op, sname, s, {rows}, std::string("one scale per row of `") + qname + "`");
}

// BSR of a [rows, K] weight (rows = G*H) whose block rows must not straddle the H-row gates; also
// the index contents the kernel relies on: crow non-decreasing from 0 to nnz, col in range.
void check_bsr(const char* op, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
               at::ScalarType dtype, int64_t rows, int64_t H, int64_t K) {
  check_tensor(op, "crow", crow, at::kInt, 1);
  check_tensor(op, "col", col, at::kInt, 1);
  check_tensor(op, "values", values, dtype, 3);
  const int64_t bn = values.size(1), bk = values.size(2);
  COMPRESS_CHECK(op, bn >= 1 && bk >= 1 && H % bn == 0, "expected `values` blocks [nnz, bn, bk] with bn dividing H = ",
                 H, " (a block row must lie within one gate), got ", py_shape(values.sizes()));
  check_shape(op, "crow", crow, {rows / bn + 1},
              "one entry per block row of the [" + std::to_string(rows) + ", " + std::to_string(K) +
                  "] weight, plus 1");
  check_shape(op, "col", col, {values.size(0)}, "one block column per stored block");
  const at::Tensor crow_c = crow.contiguous(), col_c = col.contiguous();
  sparse_cpu::check_crow(op, crow_c.const_data_ptr<int32_t>(), rows / bn, col.size(0));
  sparse_cpu::check_col(op, col_c.const_data_ptr<int32_t>(), col.size(0), (K + bk - 1) / bk,
                        "block columns: ceil(P / bk)");
}

// ------------------------------------------------------------------------------------ weights

template <class GateW, class ProjW>
struct Weights {
  GateW w;
  ProjW wr;
  std::vector<std::shared_ptr<const Packed>> keep;  // owns what w and wr point into
};

std::shared_ptr<const Packed> dense_packed(const at::Tensor& w, int64_t G, int64_t H) {
  return packed_weight({0, G, H}, {w}, [&] { return Packed{pack_dense(w, G, H)}; });
}
DenseChunks dense_chunks(const Packed& p) { return {p[0].const_data_ptr<float>(), p[0].size(1)}; }

// The VNNI layout on AVX-512 (rnn_cpu_kernel.h Int8Chunks), part of the cache key.
std::shared_ptr<const Packed> int8_packed(const at::Tensor& q, const at::Tensor& scale, int64_t G, int64_t H,
                                          CpuIsa isa) {
  const bool vnni = isa == CpuIsa::Avx512Vnni;
  return packed_weight({1, G, H, vnni}, {q, scale}, [&] { return pack_int8(q, scale, G, H, vnni); });
}
Int8Chunks int8_chunks(const Packed& p, int64_t K) {
  const bool vnni = p[0].scalar_type() == at::kByte;
  return {vnni ? nullptr : p[0].const_data_ptr<int8_t>(), vnni ? p[0].const_data_ptr<uint8_t>() : nullptr,
          p[1].const_data_ptr<float>(), K};
}

std::shared_ptr<const Packed> bsr_packed(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                                         int64_t G, int64_t H, int64_t K) {
  return packed_weight({2, G, H, K}, {crow, col, values}, [&] {
    const at::Tensor crow_c = crow.contiguous(), col_c = col.contiguous();
    return pack_bsr(crow_c.const_data_ptr<int32_t>(), col_c.const_data_ptr<int32_t>(), values, G, H, K);
  });
}
BsrChunks bsr_chunks(const Packed& p) {
  return {p[0].const_data_ptr<float>(), p[1].const_data_ptr<int32_t>(), p[2].const_data_ptr<int64_t>(),
          p[1].size(0)};
}

// ---------------------------------------------------------------------------------- sequences

const int64_t* lengths_ptr(const c10::optional<at::Tensor>& lengths, at::Tensor& holder) {
  if (!lengths.has_value()) return nullptr;
  holder = lengths->contiguous();
  return holder.const_data_ptr<int64_t>();
}

// States for `workers` workers: [depth, B, width] with slot 0 = the initial state (rnn_cpu_kernel.h
// States): one slot per step when several workers may recompute a late one's chunks, else two.
int64_t state_depth(int64_t T, int64_t workers) { return workers > 1 ? T + 1 : 2; }

at::Tensor initial_states(const at::Tensor& s0, int64_t depth) {
  at::Tensor s = at::empty({depth, s0.size(0), s0.size(1)}, s0.options().dtype(at::kFloat));
  s[0].copy_(s0);
  return s;
}

// make_weights(isa) -> Weights<GateW, ProjW>, called only when there is a step to run; isa: the level
// the kernels will run at (read once: the int8 layout depends on it).
template <class GateW, class ProjW, class MakeWeights>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_lstm(const at::Tensor& xg, const at::Tensor& h0,
                                                        const at::Tensor& c0, int64_t H, int64_t P, bool proj,
                                                        const c10::optional<at::Tensor>& lengths, bool reverse,
                                                        const MakeWeights& make_weights) {
  const int64_t T = xg.size(0), B = xg.size(1);
  if (T > 0 && B > 0 && H == 0) {
    // No hidden units, only a projection's P outputs: every active step gives h = (empty) @ w_hr^T
    // = 0, so y = 0, and h_n = 0 for a row with at least one active step, else its h0.
    at::Tensor h_n = at::zeros_like(h0, at::MemoryFormat::Contiguous);
    if (lengths.has_value()) h_n = at::where(lengths->gt(0).unsqueeze(1), h_n, h0);
    return {at::zeros({T, B, P}, xg.options()), h_n, c0.clone(at::MemoryFormat::Contiguous)};
  }
  const bool run = T > 0 && B > 0 && H > 0;
  const CpuIsa isa = active_cpu_isa();
  Weights<GateW, ProjW> wts{};
  int64_t workers = 1;
  if (run) {
    wts = make_weights(isa);
    const int64_t work = B * (wts.w.work(4 * chunks_of(H) * V) + (proj ? wts.wr.work(chunks_of(P) * V) : 0));
    workers = pick_workers(work, std::min(chunks_of(H), chunks_of(P)));
  }
  const int64_t depth = state_depth(T, workers);
  at::Tensor y = at::empty({T, B, P}, xg.options().dtype(at::kFloat));
  at::Tensor hs = initial_states(h0, depth), cs = initial_states(c0, depth);
  if (run) {
    const at::Tensor x = xg.to(at::kFloat).contiguous();
    at::Tensor hh = proj ? at::empty({workers > 1 ? T : 1, B, H}, y.options()) : at::Tensor(), len;
    const States st{hs.data_ptr<float>(), cs.data_ptr<float>(), proj ? hh.data_ptr<float>() : nullptr, depth, depth,
                    proj ? hh.size(0) : 1};
    Problem<GateW, ProjW> p{false, T, B, H, P, reverse, x.const_data_ptr<float>(), wts.w, wts.wr, proj, nullptr,
                            lengths_ptr(lengths, len), st, y.data_ptr<float>(), proj ? 2 : 1, workers,
                            new_call_id()};
    run_sequence(p, isa);
  }
  const auto dt = xg.scalar_type();
  return {y.to(dt), hs[T % depth].to(dt, false, true), cs[T % depth].to(dt, false, true)};
}

template <class GateW, class MakeWeights>
std::tuple<at::Tensor, at::Tensor> run_gru(const at::Tensor& xg, const at::Tensor& h0, int64_t H,
                                           const c10::optional<at::Tensor>& b_hh,
                                           const c10::optional<at::Tensor>& lengths, bool reverse,
                                           const MakeWeights& make_weights) {
  const int64_t T = xg.size(0), B = xg.size(1);
  const bool run = T > 0 && B > 0 && H > 0;
  const CpuIsa isa = active_cpu_isa();
  Weights<GateW, DenseChunks> wts{};
  int64_t workers = 1;
  if (run) {
    wts = make_weights(isa);
    workers = pick_workers(B * wts.w.work(3 * chunks_of(H) * V), chunks_of(H));
  }
  const int64_t depth = state_depth(T, workers);
  at::Tensor y = at::empty({T, B, H}, xg.options().dtype(at::kFloat));
  at::Tensor hs = initial_states(h0, depth);
  if (run) {
    const at::Tensor x = xg.to(at::kFloat).contiguous();
    const at::Tensor bias = b_hh.has_value() ? b_hh->to(at::kFloat).contiguous() : at::Tensor();
    at::Tensor len;
    const States st{hs.data_ptr<float>(), nullptr, nullptr, depth, 1, 1};
    Problem<GateW, DenseChunks> p{true, T, B, H, H, reverse, x.const_data_ptr<float>(), wts.w, wts.wr, false,
                                  bias.defined() ? bias.const_data_ptr<float>() : nullptr, lengths_ptr(lengths, len),
                                  st, y.data_ptr<float>(), 1, workers, new_call_id()};
    run_sequence(p, isa);
  }
  const auto dt = xg.scalar_type();
  return {y.to(dt), hs[T % depth].to(dt, false, true)};
}

// ---------------------------------------------------------------------------------------- ops

using LstmOut = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using GruOut = std::tuple<at::Tensor, at::Tensor>;
using OptTensor = c10::optional<at::Tensor>;

LstmOut lstm_layer_cpu(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
                       const OptTensor& w_hr, const OptTensor& lengths, bool reverse) {
  const char* op = "lstm_layer";
  const int64_t H = check_xg(op, xg, 4);
  if (w_hr.has_value()) check_tensor(op, "w_hr", *w_hr, xg.scalar_type(), 2);
  const int64_t P = w_hr.has_value() ? w_hr->size(0) : H;
  if (w_hr.has_value()) check_shape(op, "w_hr", *w_hr, {P, H}, "[P, H] with H = xg.shape[2] / 4 = " + std::to_string(H));
  check_tensor(op, "w_hh", w_hh, xg.scalar_type(), 2);
  check_shape(op, "w_hh", w_hh, {4 * H, P}, "[4H, P] with H = " + std::to_string(H) + ", P = " + std::to_string(P));
  check_lstm_states(op, xg, h0, c0, H, P, lengths);
  return run_lstm<DenseChunks, DenseChunks>(xg, h0, c0, H, P, w_hr.has_value(), lengths, reverse, [&](CpuIsa) {
    Weights<DenseChunks, DenseChunks> wts{};
    wts.keep.push_back(dense_packed(w_hh, 4, H));
    wts.w = dense_chunks(*wts.keep.back());
    if (w_hr.has_value()) {
      wts.keep.push_back(dense_packed(*w_hr, 1, P));
      wts.wr = dense_chunks(*wts.keep.back());
    }
    return wts;
  });
}

GruOut gru_layer_cpu(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& w_hh, const OptTensor& b_hh,
                     const OptTensor& lengths, bool reverse) {
  const char* op = "gru_layer";
  const int64_t H = check_xg(op, xg, 3);
  check_tensor(op, "w_hh", w_hh, xg.scalar_type(), 2);
  check_shape(op, "w_hh", w_hh, {3 * H, H}, "[3H, H] with H = xg.shape[2] / 3 = " + std::to_string(H));
  check_gru_states(op, xg, h0, b_hh, H, lengths);
  return run_gru<DenseChunks>(xg, h0, H, b_hh, lengths, reverse, [&](CpuIsa) {
    Weights<DenseChunks, DenseChunks> wts{};
    wts.keep.push_back(dense_packed(w_hh, 3, H));
    wts.w = dense_chunks(*wts.keep.back());
    return wts;
  });
}

LstmOut lstm_layer_w8_cpu(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& qw_hh,
                          const at::Tensor& w_hh_scale, const OptTensor& qw_hr, const OptTensor& w_hr_scale,
                          const OptTensor& lengths, bool reverse) {
  const char* op = "lstm_layer_w8";
  COMPRESS_CHECK(op, qw_hr.has_value() == w_hr_scale.has_value(),
                 "expected `qw_hr` and `w_hr_scale` both given or both None");
  const int64_t H = check_xg(op, xg, 4);
  if (qw_hr.has_value()) check_tensor(op, "qw_hr", *qw_hr, at::kChar, 2);
  const int64_t P = qw_hr.has_value() ? qw_hr->size(0) : H;
  check_w8(op, "qw_hh", qw_hh, "w_hh_scale", w_hh_scale, 4 * H, P);
  if (qw_hr.has_value()) check_w8(op, "qw_hr", *qw_hr, "w_hr_scale", *w_hr_scale, P, H);
  check_lstm_states(op, xg, h0, c0, H, P, lengths);
  return run_lstm<Int8Chunks, Int8Chunks>(xg, h0, c0, H, P, qw_hr.has_value(), lengths, reverse, [&](CpuIsa isa) {
    Weights<Int8Chunks, Int8Chunks> wts{};
    wts.keep.push_back(int8_packed(qw_hh, w_hh_scale, 4, H, isa));
    wts.w = int8_chunks(*wts.keep.back(), P);
    if (qw_hr.has_value()) {
      wts.keep.push_back(int8_packed(*qw_hr, *w_hr_scale, 1, P, isa));
      wts.wr = int8_chunks(*wts.keep.back(), H);
    }
    return wts;
  });
}

GruOut gru_layer_w8_cpu(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& qw_hh,
                        const at::Tensor& w_hh_scale, const OptTensor& b_hh, const OptTensor& lengths, bool reverse) {
  const char* op = "gru_layer_w8";
  const int64_t H = check_xg(op, xg, 3);
  check_gru_states(op, xg, h0, b_hh, H, lengths);
  check_w8(op, "qw_hh", qw_hh, "w_hh_scale", w_hh_scale, 3 * H, H);
  return run_gru<Int8Chunks>(xg, h0, H, b_hh, lengths, reverse, [&](CpuIsa isa) {
    Weights<Int8Chunks, DenseChunks> wts{};
    wts.keep.push_back(int8_packed(qw_hh, w_hh_scale, 3, H, isa));
    wts.w = int8_chunks(*wts.keep.back(), H);
    return wts;
  });
}

LstmOut lstm_layer_bsr_cpu(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& crow,
                           const at::Tensor& col, const at::Tensor& values, const OptTensor& w_hr,
                           const OptTensor& lengths, bool reverse) {
  const char* op = "lstm_layer_bsr";
  const int64_t H = check_xg(op, xg, 4);
  if (w_hr.has_value()) check_tensor(op, "w_hr", *w_hr, xg.scalar_type(), 2);
  const int64_t P = w_hr.has_value() ? w_hr->size(0) : H;
  if (w_hr.has_value()) check_shape(op, "w_hr", *w_hr, {P, H}, "[P, H] with H = xg.shape[2] / 4 = " + std::to_string(H));
  check_bsr(op, crow, col, values, xg.scalar_type(), 4 * H, H, P);
  check_lstm_states(op, xg, h0, c0, H, P, lengths);
  return run_lstm<BsrChunks, DenseChunks>(xg, h0, c0, H, P, w_hr.has_value(), lengths, reverse, [&](CpuIsa) {
    Weights<BsrChunks, DenseChunks> wts{};
    wts.keep.push_back(bsr_packed(crow, col, values, 4, H, P));
    wts.w = bsr_chunks(*wts.keep.back());
    if (w_hr.has_value()) {
      wts.keep.push_back(dense_packed(*w_hr, 1, P));
      wts.wr = dense_chunks(*wts.keep.back());
    }
    return wts;
  });
}

GruOut gru_layer_bsr_cpu(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& crow, const at::Tensor& col,
                         const at::Tensor& values, const OptTensor& b_hh, const OptTensor& lengths, bool reverse) {
  const char* op = "gru_layer_bsr";
  const int64_t H = check_xg(op, xg, 3);
  check_gru_states(op, xg, h0, b_hh, H, lengths);
  check_bsr(op, crow, col, values, xg.scalar_type(), 3 * H, H, H);
  return run_gru<BsrChunks>(xg, h0, H, b_hh, lengths, reverse, [&](CpuIsa) {
    Weights<BsrChunks, DenseChunks> wts{};
    wts.keep.push_back(bsr_packed(crow, col, values, 3, H, H));
    wts.w = bsr_chunks(*wts.keep.back());
    return wts;
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(compress, CPU, m) {
  m.impl("lstm_layer", &lstm_layer_cpu);
  m.impl("gru_layer", &gru_layer_cpu);
  m.impl("lstm_layer_w8", &lstm_layer_w8_cpu);
  m.impl("gru_layer_w8", &gru_layer_w8_cpu);
  m.impl("lstm_layer_bsr", &lstm_layer_bsr_cpu);
  m.impl("gru_layer_bsr", &gru_layer_bsr_cpu);
}
TORCH_LIBRARY_IMPL(compress, BackendSelect, m) {
  check_tensors_defined<&lstm_layer_cpu>(m, "lstm_layer");
  check_tensors_defined<&gru_layer_cpu>(m, "gru_layer");
  check_tensors_defined<&lstm_layer_w8_cpu>(m, "lstm_layer_w8");
  check_tensors_defined<&gru_layer_w8_cpu>(m, "gru_layer_w8");
  check_tensors_defined<&lstm_layer_bsr_cpu>(m, "lstm_layer_bsr");
  check_tensors_defined<&gru_layer_bsr_cpu>(m, "gru_layer_bsr");
}

}  // namespace compress::rnn_cpu
