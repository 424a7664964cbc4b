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
//
// Threads: the GEMMs run on ATen's (torch.set_num_threads) threads; the pointwise loops are
// serial (they are O(B*H) per step against the GEMMs' O(B*H*P)).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "common.h"

namespace compress {
namespace {

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
// tanh from one expf (absolute error ~1e-7). With libm's tanhf (and scalar sigmoids for the LSTM
// gates) the backward took 385 ms at B = 64, H = 256, T = 64 on one thread, slower than the Python
// BPTT (332 ms); with this and one ATen sigmoid_ per step, 93 ms (reference 107 ms, loaded box).
inline float tanh_exp(float x) { return 2.0f * sigmoid(2.0f * x) - 1.0f; }

inline bool active(const int64_t* len, int64_t t, int64_t b) { return len == nullptr || t < len[b]; }

// The step order of the forward: s-th step runs t = step(s).
inline int64_t step(int64_t s, int64_t T, bool reverse) { return reverse ? T - 1 - s : s; }

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

  // 1. Forward: G = activated gates, Hp = h before the step, Cp = c before, TC = tanh(c after),
  // HH = o * tanh(c) (the projection's input), all indexed by t.
  at::Tensor G = at::empty({T, B, 4 * H}, opt), Hp = at::empty({T, B, P}, opt);
  at::Tensor Cp = at::empty({T, B, H}, opt), TC = at::empty({T, B, H}, opt);
  at::Tensor HH = proj ? at::empty({T, B, H}, opt) : at::Tensor();
  at::Tensor h = f32(h0).clone(), c = f32(c0).clone();
  at::Tensor hnew = proj ? at::empty({B, P}, opt) : at::Tensor();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = step(s, T, reverse);
    Hp[t].copy_(h);
    at::Tensor Gt = G[t];
    at::addmm_out(Gt, x[t], h, wt);
    Gt.sigmoid_();
    float* g = Gt.data_ptr<float>();
    float* cp = Cp[t].data_ptr<float>();
    float* tc = TC[t].data_ptr<float>();
    float* hh = proj ? HH[t].data_ptr<float>() : h.data_ptr<float>();
    float* cs = c.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      const bool on = active(L, t, b);
      float* gb = g + b * 4 * H;
      for (int64_t j = 0; j < H; ++j) {
        const float i = gb[j], f = gb[H + j], gg = 2.0f * gb[2 * H + j] - 1.0f, o = gb[3 * H + j];
        gb[2 * H + j] = gg;
        const float c_prev = cs[b * H + j], c_new = f * c_prev + i * gg, t_c = tanh_exp(c_new);
        cp[b * H + j] = c_prev;
        tc[b * H + j] = t_c;
        if (on) cs[b * H + j] = c_new;
        if (on || proj) hh[b * H + j] = o * t_c;  // without projection hh is h itself
      }
    }
    if (proj) {
      at::mm_out(hnew, HH[t], wrt);
      const float* hn = hnew.const_data_ptr<float>();
      float* hs = h.data_ptr<float>();
      for (int64_t b = 0; b < B; ++b)
        if (active(L, t, b))
          for (int64_t k = 0; k < P; ++k) hs[b * P + k] = hn[b * P + k];
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
    at::Tensor dhn_t = proj ? DHn[t] : dhn;
    {
      float* d = dhn_t.data_ptr<float>();
      float* dhs = dh.data_ptr<float>();
      const float* dyt = dyf[t].const_data_ptr<float>();
      for (int64_t b = 0; b < B; ++b) {
        const bool on = active(L, t, b);
        for (int64_t k = 0; k < P; ++k) {
          d[b * P + k] = on ? dhs[b * P + k] + dyt[b * P + k] : 0.0f;
          if (on) dhs[b * P + k] = 0.0f;
        }
      }
    }
    if (proj) at::mm_out(dhh, dhn_t, wr);
    // d/dpre of each gate: i, f, o through sigmoid' = s (1 - s), g through tanh' = 1 - g^2;
    // dc_s = dc + dh * o * (1 - tanh(c)^2) is the gradient at c_t, dc_{t-1} = dc_s * f.
    const float* gt = G[t].const_data_ptr<float>();
    const float* cp = Cp[t].const_data_ptr<float>();
    const float* tc = TC[t].const_data_ptr<float>();
    const float* dq = dhh.const_data_ptr<float>();
    float* dgt = dG[t].data_ptr<float>();
    float* dcs_ = dc.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      const float* gb = gt + b * 4 * H;
      float* db = dgt + b * 4 * H;
      if (!active(L, t, b)) {
        for (int64_t j = 0; j < 4 * H; ++j) db[j] = 0.0f;
        continue;
      }
      for (int64_t j = 0; j < H; ++j) {
        const float i = gb[j], f = gb[H + j], g = gb[2 * H + j], o = gb[3 * H + j];
        const float t_c = tc[b * H + j], d_h = dq[b * H + j];
        const float dcs = dcs_[b * H + j] + d_h * o * (1.0f - t_c * t_c);
        db[j] = dcs * g * i * (1.0f - i);
        db[H + j] = dcs * cp[b * H + j] * f * (1.0f - f);
        db[2 * H + j] = dcs * i * (1.0f - g * g);
        db[3 * H + j] = d_h * t_c * o * (1.0f - o);
        dcs_[b * H + j] = dcs * f;
      }
    }
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

  // 1. Forward: G = activated r, z, n; AN = the n part of h @ w_hh^T + b_hh; Hp = h before the step.
  at::Tensor G = at::empty({T, B, 3 * H}, opt), AN = at::empty({T, B, H}, opt), Hp = at::empty({T, B, H}, opt);
  at::Tensor h = f32(h0).clone(), a = at::empty({B, 3 * H}, opt);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = step(s, T, reverse);
    Hp[t].copy_(h);
    if (bias.defined()) at::addmm_out(a, bias, h, wt);
    else at::mm_out(a, h, wt);
    const float* xt = x[t].const_data_ptr<float>();
    const float* at_ = a.const_data_ptr<float>();
    float* g = G[t].data_ptr<float>();
    float* an = AN[t].data_ptr<float>();
    float* hs = h.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      const bool on = active(L, t, b);
      const float* xb = xt + b * 3 * H;
      const float* ab = at_ + b * 3 * H;
      float* gb = g + b * 3 * H;
      for (int64_t j = 0; j < H; ++j) {
        const float r = sigmoid(xb[j] + ab[j]), z = sigmoid(xb[H + j] + ab[H + j]);
        const float n = tanh_exp(xb[2 * H + j] + r * ab[2 * H + j]);
        gb[j] = r, gb[H + j] = z, gb[2 * H + j] = n;
        an[b * H + j] = ab[2 * H + j];
        if (on) hs[b * H + j] = (1.0f - z) * n + z * hs[b * H + j];
      }
    }
  }

  // 2. Backward: dG is dxg = (dpr, dpz, dpn), DA = d(h @ w_hh^T + b_hh) = (dpr, dpz, dpn * r).
  const at::Tensor dyf = f32(dy);
  at::Tensor dG = at::empty({T, B, 3 * H}, opt), DA = at::empty({T, B, 3 * H}, opt);
  at::Tensor dh = f32(dh_n).clone();
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = step(s, T, reverse);
    // dpn = dh' (1 - z)(1 - n^2), dpr = dpn * an * r (1 - r), dpz = dh' (h_prev - n) z (1 - z) with
    // dh' = dh + dy_t; then dh_{t-1} = dh' z + DA_t @ w_hh (the GEMM below). Inactive rows: DA_t = 0
    // and dh passes through.
    const float* gt = G[t].const_data_ptr<float>();
    const float* an = AN[t].const_data_ptr<float>();
    const float* hp = Hp[t].const_data_ptr<float>();
    const float* dyt = dyf[t].const_data_ptr<float>();
    float* dgt = dG[t].data_ptr<float>();
    float* dat = DA[t].data_ptr<float>();
    float* dhs = dh.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      float* dgb = dgt + b * 3 * H;
      float* dab = dat + b * 3 * H;
      if (!active(L, t, b)) {
        for (int64_t j = 0; j < 3 * H; ++j) dgb[j] = dab[j] = 0.0f;
        continue;
      }
      const float* gb = gt + b * 3 * H;
      for (int64_t j = 0; j < H; ++j) {
        const float r = gb[j], z = gb[H + j], n = gb[2 * H + j];
        const float d = dhs[b * H + j] + dyt[b * H + j];
        const float dpn = d * (1.0f - z) * (1.0f - n * n);
        const float dpr = dpn * an[b * H + j] * r * (1.0f - r);
        const float dpz = d * (hp[b * H + j] - n) * z * (1.0f - z);
        dgb[j] = dab[j] = dpr;
        dgb[H + j] = dab[H + j] = dpz;
        dgb[2 * H + j] = dpn;
        dab[2 * H + j] = dpn * r;
        dhs[b * H + j] = d * z;
      }
    }
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

}  // namespace compress
