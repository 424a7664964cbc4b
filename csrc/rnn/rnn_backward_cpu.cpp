// compress::lstm_layer_backward and compress::gru_layer_backward on the CPU: backpropagation
// through time for one layer and direction, the gradient of lstm_layer / gru_layer.
//
// Shapes (compress/ops/rnn.py): T steps, B batch rows, H hidden units, P state width (LSTM
// proj_size, else H). Gate order as torch: LSTM i, f, g, o; GRU r, z, n.
//
// Plan (nothing of the forward is saved, as in the Python reference):
//  1. Forward again over T, float32, storing per step what the derivative needs: the activated
//     gates, h before the step, and for the LSTM c before the step and tanh(c) after it. The
//     recurrent product is one ATen GEMM per step; the gate math one fused loop.
//  2. Backward over the steps in the opposite order: one fused loop per step computes the gate
//     derivatives dG_t (which are also dxg_t) and the next dc, then one GEMM dh = dG_t @ w_hh
//     (and dh @ w_hr before it with a projection).
//  3. The weight gradients as one GEMM over all steps, dW_hh = dG^T [G*H, T*B] @ Hprev [T*B, P]
//     (GRU db_hh a column sum of the same matrix), instead of T rank-B updates.
// Inactive steps (lengths) have dG_t = 0 and pass dh, dc through, so they add nothing to dW.
// The pointwise loops call the per-element functions of rnn_backward_math.h, which the CUDA
// kernels (rnn_backward.cu, the same plan in rnn_backward_cuda.cpp) run one element per thread.
//
// Threads: the GEMMs run on ATen's (torch.set_num_threads) threads; the pointwise loops are
// serial (they are O(B*H) per step against the GEMMs' O(B*H*P)).
//
// Speed: rnn_bwd::tanh_exp is tanh from one expf. With libm's tanhf (and scalar sigmoids for the
// LSTM gates) the backward took 385 ms at B = 64, H = 256, T = 64 on one thread, slower than the
// Python BPTT (332 ms); with tanh_exp and one ATen sigmoid_ per step, 93 ms (reference 107 ms,
// loaded box).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "common.h"
#include "rnn/rnn_backward_math.h"

namespace compress {
namespace {

using namespace rnn_bwd;

// f(b, j) for every element of a [rows, cols] step (the CUDA kernels: one element per thread).
template <class F>
void for_each_element(int64_t rows, int64_t cols, F f) {
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t j = 0; j < cols; ++j) f(b, j);
}

float* ptr(const at::Tensor& t) { return t.defined() ? t.mutable_data_ptr<float>() : nullptr; }

at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

void check_tensor(const char* op, const char* name, const at::Tensor& t, c10::ScalarType dtype, int64_t dim,
                  at::IntArrayRef shape) {
  COMPRESS_CHECK(op, t.device().is_cpu(), "expected `", name, "` on cpu, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": expected `", name, "` to be ", dtype_name(dtype), ", got ",
                   dtype_name(t.scalar_type()));
  COMPRESS_CHECK(op, t.dim() == dim, "expected `", name, "` to be ", dim, "-D, got ", t.dim(), "-D with shape ",
                 t.sizes());
  COMPRESS_CHECK(op, t.sizes() == shape, "expected `", name, "` of shape ", shape, ", got ", t.sizes());
}

// Checks xg (float dtype, 3-D, last dim divisible by `gates`) and lengths; returns xg's dtype.
c10::ScalarType check_xg_lengths(const char* op, const at::Tensor& xg, int64_t gates,
                                 const c10::optional<at::Tensor>& lengths) {
  COMPRESS_CHECK(op, xg.device().is_cpu(), "expected `xg` on cpu, got ", xg.device());
  const auto dt = xg.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
                   ": expected `xg` to be torch.float32, torch.bfloat16 or torch.float16, got ", dtype_name(dt));
  COMPRESS_CHECK(op, xg.dim() == 3, "expected `xg` to be 3-D [T, B, ", gates, "H], got shape ", xg.sizes());
  COMPRESS_CHECK(op, xg.size(2) % gates == 0, "expected `xg` to be [T, B, ", gates, "H], got last dim ",
                 xg.size(2));
  if (lengths.has_value()) check_tensor(op, "lengths", *lengths, at::kLong, 1, {xg.size(1)});
  return dt;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_backward_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& xg,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr,
    const c10::optional<at::Tensor>& lengths, bool reverse) {
  const char* op = "lstm_layer_backward";
  const auto dt = check_xg_lengths(op, xg, 4, lengths);
  const int64_t T = xg.size(0), B = xg.size(1), H = xg.size(2) / 4;
  const bool proj = w_hr.has_value();
  if (proj) {
    const at::Tensor& w_hr_ = *w_hr;
    COMPRESS_CHECK(op, w_hr_.dim() == 2, "expected `w_hr` to be 2-D [P, H], got shape ", w_hr_.sizes());
    check_tensor(op, "w_hr", w_hr_, dt, 2, {w_hr_.size(0), H});
  }
  const int64_t P = proj ? w_hr->size(0) : H;
  check_tensor(op, "dy", dy, dt, 3, {T, B, P});
  check_tensor(op, "dh_n", dh_n, dt, 2, {B, P});
  check_tensor(op, "dc_n", dc_n, dt, 2, {B, H});
  check_tensor(op, "h0", h0, dt, 2, {B, P});
  check_tensor(op, "c0", c0, dt, 2, {B, H});
  check_tensor(op, "w_hh", w_hh, dt, 2, {4 * H, P});

  const at::Tensor w = f32(w_hh), wr = proj ? f32(*w_hr) : at::Tensor(), wrt = proj ? wr.t() : at::Tensor();
  // The forward's gates go through one vectorized ATen sigmoid per step: the g gate's inputs (its
  // rows of w_hh and its columns of xg) are doubled once, since tanh(v) = 2 sigmoid(2v) - 1.
  at::Tensor x = xg.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous(), w2 = w.clone();
  x.narrow(2, 2 * H, H).mul_(2.0f);
  w2.narrow(0, 2 * H, H).mul_(2.0f);
  const at::Tensor wt = w2.t();
  const at::Tensor len = lengths.has_value() ? lengths->contiguous() : at::Tensor();
  const int64_t* L = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
  const auto opt = x.options();

  // 1. Forward: G = activated gates, Hp = h before the step (each step writes the next step's
  // slot; the last h is not needed), Cp = c before, TC = tanh(c after), HH = o * tanh(c) (the
  // projection's input), all indexed by t.
  at::Tensor G = at::empty({T, B, 4 * H}, opt), Hp = at::empty({T, B, P}, opt);
  at::Tensor Cp = at::empty({T, B, H}, opt), TC = at::empty({T, B, H}, opt);
  at::Tensor HH = proj ? at::empty({T, B, H}, opt) : at::Tensor();
  at::Tensor c = f32(c0).clone();
  if (T > 0) Hp[step(0, T, reverse)].copy_(h0);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = step(s, T, reverse);
    at::Tensor Gt = G[t], h_next = s + 1 < T ? Hp[step(s + 1, T, reverse)] : at::Tensor();
    at::addmm_out(Gt, x[t], Hp[t], wt);
    Gt.sigmoid_();
    const LstmRecompute p{ptr(Gt), ptr(c), ptr(Cp[t]), ptr(TC[t]), proj ? ptr(HH[t]) : nullptr, ptr(Hp[t]),
                          proj ? nullptr : ptr(h_next), L, t, B, H};
    const float* g = p.gates;
    for_each_element(B, H, [&](int64_t b, int64_t j) {
      const float* gb = g + b * 4 * H + j;
      lstm_recompute(p, b, j, gb[0], gb[H], 2.0f * gb[2 * H] - 1.0f, gb[3 * H]);
    });
    if (proj && h_next.defined()) {
      at::mm_out(h_next, HH[t], wrt);
      const KeepInactive k{ptr(Hp[t]), ptr(h_next), L, t, B, P};
      if (L != nullptr) for_each_element(B, P, [&](int64_t b, int64_t q) { keep_inactive(k, b, q); });
    }
  }

  // 2. Backward. dG doubles as dxg (float32); DHn holds each step's dh_new (the gradient at the
  // projection's output) for dW_hr.
  const at::Tensor dyf = f32(dy);
  at::Tensor dG = at::empty({T, B, 4 * H}, opt);
  at::Tensor DHn = proj ? at::empty({T, B, P}, opt) : at::Tensor();
  at::Tensor dh = f32(dh_n).clone(), dc = f32(dc_n).clone();
  at::Tensor dhn = at::empty({B, P}, opt), dhh = proj ? at::empty({B, H}, opt) : dhn;
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = step(s, T, reverse);
    // dh_new = dh + dy_t on active rows, 0 on inactive ones (whose dh passes through). Active rows'
    // dh is zeroed here and then becomes dG_t @ w_hh below (inactive rows add dG_t = 0 to theirs).
    const at::Tensor dhn_t = proj ? DHn[t] : dhn;
    const LstmOutputGrad po{ptr(dh), ptr(dyf[t]), ptr(dhn_t), L, t, B, P};
    for_each_element(B, P, [&](int64_t b, int64_t q) { lstm_output_grad(po, b, q); });
    if (proj) at::mm_out(dhh, dhn_t, wr);
    const LstmGrad pg{ptr(G[t]), ptr(Cp[t]), ptr(TC[t]), ptr(dhh), ptr(dc), ptr(dG[t]), L, t, B, H};
    for_each_element(B, H, [&](int64_t b, int64_t j) { lstm_grad(pg, b, j); });
    dh.addmm_(dG[t], w);
  }

  // 3. Weight gradients, one GEMM each over all T * B rows.
  const at::Tensor dW = at::mm(dG.view({T * B, 4 * H}).t(), Hp.view({T * B, P}));
  const at::Tensor dWr = proj ? at::mm(DHn.view({T * B, P}).t(), HH.view({T * B, H})).to(dt)
                              : at::empty({0}, w_hh.options());
  return {dG.to(dt), dh.to(dt), dc.to(dt), dW.to(dt), dWr};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_backward_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& xg, const at::Tensor& h0,
    const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths,
    bool reverse) {
  const char* op = "gru_layer_backward";
  const auto dt = check_xg_lengths(op, xg, 3, lengths);
  const int64_t T = xg.size(0), B = xg.size(1), H = xg.size(2) / 3;
  check_tensor(op, "dy", dy, dt, 3, {T, B, H});
  check_tensor(op, "dh_n", dh_n, dt, 2, {B, H});
  check_tensor(op, "h0", h0, dt, 2, {B, H});
  check_tensor(op, "w_hh", w_hh, dt, 2, {3 * H, H});
  if (b_hh.has_value()) check_tensor(op, "b_hh", *b_hh, dt, 1, {3 * H});

  const at::Tensor x = f32(xg), w = f32(w_hh), wt = w.t();
  const at::Tensor bias = b_hh.has_value() ? f32(*b_hh) : at::Tensor();
  const at::Tensor len = lengths.has_value() ? lengths->contiguous() : at::Tensor();
  const int64_t* L = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
  const auto opt = x.options();

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
    for_each_element(B, H, [&](int64_t b, int64_t j) { gru_recompute(p, b, j); });
  }

  // 2. Backward: dG is dxg = (dpr, dpz, dpn), DA = d(h @ w_hh^T + b_hh) = (dpr, dpz, dpn * r).
  const at::Tensor dyf = f32(dy);
  at::Tensor dG = at::empty({T, B, 3 * H}, opt), DA = at::empty({T, B, 3 * H}, opt);
  at::Tensor dh = f32(dh_n).clone();
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = step(s, T, reverse);
    // gru_grad leaves dh = (dh + dy_t) z on active rows; + DA_t @ w_hh makes it dh_{t-1}. Inactive
    // rows: DA_t = 0 and dh passes through.
    const GruGrad p{ptr(G[t]), ptr(AN[t]), ptr(Hp[t]), ptr(dyf[t]), ptr(dh), ptr(dG[t]), ptr(DA[t]), L, t, B, H};
    for_each_element(B, H, [&](int64_t b, int64_t j) { gru_grad(p, b, j); });
    dh.addmm_(DA[t], w);
  }

  // 3. Weight gradients over all T * B rows at once.
  const at::Tensor DA2 = DA.view({T * B, 3 * H});
  const at::Tensor dW = at::mm(DA2.t(), Hp.view({T * B, H}));
  const at::Tensor db = b_hh.has_value() ? DA2.sum(0).to(dt) : at::empty({0}, w_hh.options());
  return {dG.to(dt), dh.to(dt), dW.to(dt), db};
}

}  // namespace

TORCH_LIBRARY_IMPL(compress, CPU, m) {
  m.impl("lstm_layer_backward", &lstm_layer_backward_cpu);
  m.impl("gru_layer_backward", &gru_layer_backward_cpu);
}
TORCH_LIBRARY_IMPL(compress, BackendSelect, m) {
  check_tensors_defined<&lstm_layer_backward_cpu>(m, "lstm_layer_backward");
  check_tensors_defined<&gru_layer_backward_cpu>(m, "gru_layer_backward");
}

}  // namespace compress
