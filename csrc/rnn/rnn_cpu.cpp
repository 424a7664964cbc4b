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
#include "rnn/rnn_checks.h"
#include "rnn/rnn_cpu_kernel.h"
#include "rnn/rnn_cpu_pack.h"

namespace compress::rnn_cpu {
namespace {

using namespace rnn_checks;

// ---------------------------------------------------------------------------------------- checks
// rnn_checks.h (shared with the CUDA glue); here the BSR index contents, read in place.

void check_bsr(const char* op, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
               at::ScalarType dtype, int64_t rows, int64_t H, int64_t K) {
  check_bsr_shapes(op, crow, col, values, dtype, rows, H, K, at::Device(at::kCPU));
  const at::Tensor crow_c = crow.contiguous(), col_c = col.contiguous();
  check_bsr_indices(op, crow_c.const_data_ptr<int32_t>(), col_c.const_data_ptr<int32_t>(), rows / values.size(1),
                    col.size(0), K, values.size(2));
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
  const int64_t H = check_xg(op, xg, 4, at::kCPU);
  const int64_t P = check_w_hr(op, w_hr, xg, H);
  check_tensor(op, "w_hh", w_hh, xg.scalar_type(), 2, xg.device());
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
  const int64_t H = check_xg(op, xg, 3, at::kCPU);
  check_tensor(op, "w_hh", w_hh, xg.scalar_type(), 2, xg.device());
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
  const auto [H, P] = check_lstm_layer_w8(op, xg, h0, c0, qw_hh, w_hh_scale, qw_hr, w_hr_scale, lengths, at::kCPU);
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
  const int64_t H = check_xg(op, xg, 3, at::kCPU);
  check_gru_states(op, xg, h0, b_hh, H, lengths);
  check_w8(op, "qw_hh", qw_hh, "w_hh_scale", w_hh_scale, 3 * H, H, xg.device());
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
  const int64_t H = check_xg(op, xg, 4, at::kCPU);
  const int64_t P = check_w_hr(op, w_hr, xg, H);
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
  const int64_t H = check_xg(op, xg, 3, at::kCPU);
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
