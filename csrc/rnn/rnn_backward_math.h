// The pointwise part of compress::lstm_layer_backward / gru_layer_backward, one (batch row b,
// unit j) of one step per call, lengths mask included: the CPU kernel (rnn_backward_cpu.cpp) calls
// these in loops over b and j, the CUDA kernels (rnn_backward.cu) one element per thread, so the
// CPU tests run the index arithmetic and the derivative formulas the GPU runs. The GEMMs between
// them stay with the callers (ATen). Plain C++ (no torch, no CUDA headers): COMPRESS_HD makes each
// function __host__ __device__ under nvcc and a plain inline function for the C++ compiler.
//
// Shapes as compress/ops/rnn.py: B batch rows, H hidden units, P the LSTM state width (proj_size,
// else H). Every buffer is float32, contiguous, row-major; a gate row [B, G*H] holds gate g of unit
// j at g*H + j (LSTM i, f, g, o; GRU r, z, n). `t` is the step's time index: row b is active iff
// lengths == nullptr or t < lengths[b]. An inactive step keeps the state and passes its gradient
// through: its gate gradients are 0, so it adds nothing to dW. Buffers named *_prev / *_next may be
// the same buffer (each element is read before the same call writes it).
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define COMPRESS_HD __host__ __device__ __forceinline__
#else
#define COMPRESS_HD inline
#endif

namespace compress {
namespace rnn_bwd {

COMPRESS_HD float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
// tanh from one expf (absolute error ~1e-7): on the CPU much faster than libm's tanhf (see
// rnn_backward_cpu.cpp); the GPU uses it too so that both run the same formula.
COMPRESS_HD float tanh_exp(float x) { return 2.0f * sigmoid(2.0f * x) - 1.0f; }

COMPRESS_HD bool active(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths == nullptr || t < lengths[b];
}

// The forward's step order: its s-th step runs time index t = step(s, T, reverse).
COMPRESS_HD int64_t step(int64_t s, int64_t T, bool reverse) { return reverse ? T - 1 - s : s; }

// ---- LSTM, forward again. Per element: the activated gates i, f, g, o (the caller activates them
// from xg_t + h_{t-1} @ w_hh^T), c_t = f c_{t-1} + i g, tanh(c_t), o tanh(c_t).
struct LstmRecompute {
  float* gates;          // [B, 4H] out: the activations i, f, g, o
  float* c;              // [B, H] c_{t-1} in, c_t out (inactive rows keep c_{t-1})
  float* c_prev;         // [B, H] out: c_{t-1}
  float* tanh_c;         // [B, H] out: tanh(f c_{t-1} + i g), every row
  float* hh;             // projection: [B, H] out: o tanh_c, every row (the projection's input). Else nullptr
  const float* h_prev;   // no projection: [B, H] h_{t-1}. Else unused
  float* h_next;         // no projection: [B, H] out: h_t = o tanh_c (inactive rows h_{t-1}); nullptr skips
  const int64_t* lengths;
  int64_t t, B, H;
};

COMPRESS_HD void lstm_recompute(const LstmRecompute& p, int64_t b, int64_t j, float i, float f, float g, float o) {
  const bool on = active(p.lengths, p.t, b);
  const int64_t H = p.H, k = b * H + j;
  float* gates = p.gates + b * 4 * H + j;  // gate q of unit j at gates[q * H]
  gates[0] = i;
  gates[H] = f;
  gates[2 * H] = g;
  gates[3 * H] = o;
  const float c_prev = p.c[k], c_new = f * c_prev + i * g, tc = tanh_exp(c_new);
  p.c_prev[k] = c_prev;
  p.tanh_c[k] = tc;
  if (on) p.c[k] = c_new;
  if (p.hh != nullptr) p.hh[k] = o * tc;
  else if (p.h_next != nullptr) p.h_next[k] = on ? o * tc : p.h_prev[k];
}

// The projection's step: h_t = hh @ w_hr^T on active rows (the caller's GEMM wrote every row of
// h_next); inactive rows get h_{t-1} back. Element (b, q), q < P.
struct KeepInactive {
  const float* h_prev;  // [B, P] h_{t-1}
  float* h_next;        // [B, P] h_t
  const int64_t* lengths;
  int64_t t, B, P;
};

COMPRESS_HD void keep_inactive(const KeepInactive& p, int64_t b, int64_t q) {
  const bool on = active(p.lengths, p.t, b);
  if (!on) p.h_next[b * p.P + q] = p.h_prev[b * p.P + q];
}

// ---- LSTM, backward. First the gradient reaching step t's output, element (b, q), q < P:
// dh_new = dh + dy_t on active rows (then dh of that row restarts at 0: the caller adds
// dG_t @ w_hh), 0 on inactive rows (whose dh passes through unchanged).
struct LstmOutputGrad {
  float* dh;             // [B, P] gradient of h_t in; out: 0 on active rows, unchanged on inactive ones
  const float* dy;       // [B, P] dy_t
  float* dh_new;         // [B, P] out
  const int64_t* lengths;
  int64_t t, B, P;
};

COMPRESS_HD void lstm_output_grad(const LstmOutputGrad& p, int64_t b, int64_t q) {
  const bool on = active(p.lengths, p.t, b);
  const int64_t k = b * p.P + q;
  if (on) {
    p.dh_new[k] = p.dh[k] + p.dy[k];
    p.dh[k] = 0.0f;
  } else {
    p.dh_new[k] = 0.0f;
  }
}

// Then the gates, element (b, j), j < H. With d_h the gradient at o tanh(c_t) (dh_new, or
// dh_new @ w_hr with a projection) and dc that of c_t:
//   dcs = dc + d_h o (1 - tanh(c_t)^2)                        the total gradient at c_t
//   di = dcs g i (1 - i), df = dcs c_{t-1} f (1 - f), dg = dcs i (1 - g^2), do = d_h tanh(c_t) o (1 - o)
//   dc_{t-1} = dcs f
// (sigmoid' = s (1 - s), tanh' = 1 - tanh^2). The gate gradients are dxg_t; dh_{t-1} = dG_t @ w_hh.
struct LstmGrad {
  const float* gates;    // [B, 4H] activations of step t
  const float* c_prev;   // [B, H] c_{t-1}
  const float* tanh_c;   // [B, H] tanh(c_t)
  const float* d_h;      // [B, H] gradient at o tanh(c_t)
  float* dc;             // [B, H] gradient of c_t in, of c_{t-1} out (inactive rows unchanged)
  float* dgates;         // [B, 4H] out: di, df, dg, do (0 on inactive rows)
  const int64_t* lengths;
  int64_t t, B, H;
};

COMPRESS_HD void lstm_grad(const LstmGrad& p, int64_t b, int64_t j) {
  const bool on = active(p.lengths, p.t, b);
  const int64_t H = p.H, k = b * H + j;
  float* dgates = p.dgates + b * 4 * H + j;  // gate q of unit j at [q * H]
  if (!on) {
    dgates[0] = dgates[H] = dgates[2 * H] = dgates[3 * H] = 0.0f;
    return;
  }
  const float* gates = p.gates + b * 4 * H + j;
  const float i = gates[0], f = gates[H], g = gates[2 * H], o = gates[3 * H];
  const float tc = p.tanh_c[k], dh = p.d_h[k];
  const float dcs = p.dc[k] + dh * o * (1.0f - tc * tc);
  dgates[0] = dcs * g * i * (1.0f - i);
  dgates[H] = dcs * p.c_prev[k] * f * (1.0f - f);
  dgates[2 * H] = dcs * i * (1.0f - g * g);
  dgates[3 * H] = dh * tc * o * (1.0f - o);
  p.dc[k] = dcs * f;
}

// ---- GRU, forward again, element (b, j): with a = h_{t-1} @ w_hh^T + b_hh,
//   r = sigmoid(xr + ar), z = sigmoid(xz + az), n = tanh(xn + r an), h_t = (1 - z) n + z h_{t-1}.
struct GruRecompute {
  const float* x;        // [B, 3H] xg_t
  const float* a;        // [B, 3H] h_{t-1} @ w_hh^T + b_hh
  const float* h_prev;   // [B, H] h_{t-1}
  float* h_next;         // [B, H] out: h_t (inactive rows h_{t-1}); nullptr skips
  float* gates;          // [B, 3H] out: r, z, n
  float* an;             // [B, H] out: an (the n part of a; r multiplies it)
  const int64_t* lengths;
  int64_t t, B, H;
};

COMPRESS_HD void gru_recompute(const GruRecompute& p, int64_t b, int64_t j) {
  const bool on = active(p.lengths, p.t, b);
  const int64_t H = p.H, k = b * H + j;
  const float* x = p.x + b * 3 * H + j;  // gate q of unit j at [q * H], as in a and gates
  const float* a = p.a + b * 3 * H + j;
  float* gates = p.gates + b * 3 * H + j;
  const float r = sigmoid(x[0] + a[0]), z = sigmoid(x[H] + a[H]);
  const float an = a[2 * H], n = tanh_exp(x[2 * H] + r * an);
  gates[0] = r;
  gates[H] = z;
  gates[2 * H] = n;
  p.an[k] = an;
  if (p.h_next != nullptr) {
    const float h = p.h_prev[k];
    p.h_next[k] = on ? (1.0f - z) * n + z * h : h;
  }
}

// ---- GRU, backward, element (b, j). With d = dh + dy_t (the gradient at h_t):
//   dpn = d (1 - z)(1 - n^2), dpr = dpn an r (1 - r), dpz = d (h_{t-1} - n) z (1 - z)
// (gradients at the pre-activations: dxg_t = (dpr, dpz, dpn)); da = (dpr, dpz, dpn r) is that of
// a = h_{t-1} @ w_hh^T + b_hh, and dh_{t-1} = d z + da @ w_hh (the caller's GEMM).
struct GruGrad {
  const float* gates;    // [B, 3H] r, z, n of step t
  const float* an;       // [B, H]
  const float* h_prev;   // [B, H] h_{t-1}
  const float* dy;       // [B, H] dy_t
  float* dh;             // [B, H] gradient of h_t in, d z out (inactive rows unchanged)
  float* dgates;         // [B, 3H] out: dxg_t (0 on inactive rows)
  float* da;             // [B, 3H] out (0 on inactive rows)
  const int64_t* lengths;
  int64_t t, B, H;
};

COMPRESS_HD void gru_grad(const GruGrad& p, int64_t b, int64_t j) {
  const bool on = active(p.lengths, p.t, b);
  const int64_t H = p.H, k = b * H + j;
  float* dgates = p.dgates + b * 3 * H + j;  // gate q of unit j at [q * H], as in da and gates
  float* da = p.da + b * 3 * H + j;
  if (!on) {
    dgates[0] = dgates[H] = dgates[2 * H] = 0.0f;
    da[0] = da[H] = da[2 * H] = 0.0f;
    return;
  }
  const float* gates = p.gates + b * 3 * H + j;
  const float r = gates[0], z = gates[H], n = gates[2 * H];
  const float d = p.dh[k] + p.dy[k];
  const float dpn = d * (1.0f - z) * (1.0f - n * n);
  const float dpr = dpn * p.an[k] * r * (1.0f - r);
  const float dpz = d * (p.h_prev[k] - n) * z * (1.0f - z);
  dgates[0] = da[0] = dpr;
  dgates[H] = da[H] = dpz;
  dgates[2 * H] = dpn;
  da[2 * H] = dpn * r;
  p.dh[k] = d * z;
}

}  // namespace rnn_bwd
}  // namespace compress
