// CPU implementation of compress::int8_linear (schema and semantics: compress/ops/int8.py):
//   out[m, n] = float32(sum_k qx[m, k] * qw[n, k]) * x_scale[m] * w_scale[n] + bias[n]
//
// The int32 products come from the CPU int8_mm kernel (int8_mm_cpu.cpp, reached through the
// dispatcher, with B = qw^T read through its strides), and the dequant runs right after over
// the int32 result, row by row on torch's threads. On the CPU this round trip is cheap: the int32
// result is 1/K of the GEMM's work (at M = 1024, N = K = 4096: 16 MiB against 34 G multiply-adds,
// about 1% of the time), and at small M it stays in L2. The GPU kernels fuse it in registers.
//
// compress::w8a8_linear(x, qw, w_scale, bias?) = quantize_per_token (int8_quant_cpu.cpp, through
// the dispatcher) then int8_linear_cpu below, back to back in C++. Not fused: on the CPU the round
// trip of q and the scales is a pass over M x K bytes against M x N x K multiply-adds (a fused
// dequant epilogue measured only 1.5% here), and reusing the two kernels keeps the result
// bit-identical to the two-op path by construction.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common.h"
#include "cpu_parallel.h"
#include "int8/int8_cpu_checks.h"

namespace compress {
namespace {

at::Tensor int8_mm(const at::Tensor& a, const at::Tensor& b) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("compress::int8_mm", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(a, b);
}

template <typename T>
void dequant_rows(const int32_t* acc, const float* xs, const float* ws, const float* bias, T* out,
                  int64_t M, int64_t N) {
  parallel_range(M, std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1)), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const int32_t* a = acc + m * N;
      T* o = out + m * N;
      const float s = xs[m];
      // the reference's order: (acc * x_scale) * w_scale + bias, in float32, then one rounding
      if (bias)
        for (int64_t n = 0; n < N; ++n) o[n] = static_cast<T>(static_cast<float>(a[n]) * s * ws[n] + bias[n]);
      else
        for (int64_t n = 0; n < N; ++n) o[n] = static_cast<T>(static_cast<float>(a[n]) * s * ws[n]);
    }
  });
}

at::Tensor int8_linear_cpu(const at::Tensor& qx, const at::Tensor& x_scale, const at::Tensor& qw,
                           const at::Tensor& w_scale, const std::optional<at::Tensor>& bias_opt,
                           at::ScalarType out_dtype) {
  constexpr const char* op = "int8_linear";
  const at::Tensor bias = bias_opt.value_or(at::Tensor());  // named so for the checks' messages
  COMPRESS_CHECK(op, qx.device().is_cpu(), "expected `qx` on the CPU, got ", qx.device());
  COMPRESS_CHECK_DTYPE(op, qx, at::kChar);
  COMPRESS_CHECK_DIM(op, qx, 2);
  int8_cpu::check_weight_dtypes(op, qw, x_scale, w_scale, bias);
  TORCH_CHECK_TYPE(is_float(out_dtype), op,
                   ": expected `out_dtype` in (torch.float32, torch.bfloat16, torch.float16), got ",
                   dtype_name(out_dtype));
  for (const at::Tensor* t : {&x_scale, &qw, &w_scale})
    COMPRESS_CHECK(op, t->device() == qx.device(), "expected every argument on the device of `qx` (",
                   qx.device(), "), got ", t->device());
  if (bias.defined()) COMPRESS_CHECK_DEVICE(op, bias, qx.device());
  int8_cpu::check_weight_sizes(op, "qx", qx, qw, x_scale, w_scale, bias);

  const int64_t M = qx.size(0), N = qw.size(0);
  at::Tensor out = at::empty({M, N}, qx.options().dtype(out_dtype));
  if (M == 0 || N == 0) return out;
  const at::Tensor acc = int8_mm(qx, qw.t());  // int32 [M, N] contiguous; zeros when K == 0
  const at::Tensor xs = x_scale.contiguous(), ws = w_scale.contiguous();
  const at::Tensor b = bias.defined() ? bias.to(at::kFloat).contiguous() : at::Tensor();
  const int32_t* ap = acc.const_data_ptr<int32_t>();
  const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
  dispatch_float(out_dtype, [&](auto t) {
    dequant_rows(ap, xs.const_data_ptr<float>(), ws.const_data_ptr<float>(), bp,
                 out.mutable_data_ptr<decltype(t)>(), M, N);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> quantize_per_token(const at::Tensor& x) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("compress::quantize_per_token", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>();
  return op.call(x);
}

at::Tensor w8a8_linear_cpu(const at::Tensor& x, const at::Tensor& qw, const at::Tensor& w_scale,
                           const std::optional<at::Tensor>& bias_opt) {
  constexpr const char* op = "w8a8_linear";
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const at::Tensor bias = has_bias ? *bias_opt : at::Tensor();  // named `bias` in the messages
  // The checks of compress/ops/int8.py's check_w8a8_linear, so that the messages name this op's
  // arguments (x, not the qx of the int8_linear called below).
  COMPRESS_CHECK(op, x.device().is_cpu(), "expected `x` on the CPU, got ", x.device());
  COMPRESS_CHECK_FLOAT(op, x);
  COMPRESS_CHECK_DIM(op, x, 2);
  int8_cpu::check_weight_dtypes(op, qw, /*x_scale=*/at::Tensor(), w_scale, bias);
  for (const at::Tensor* t : {&qw, &w_scale})
    COMPRESS_CHECK(op, t->device() == x.device(), "expected every argument on the device of `x` (", x.device(),
                   "), got ", t->device());
  if (has_bias) COMPRESS_CHECK_DEVICE(op, bias, x.device());
  int8_cpu::check_weight_sizes(op, "x", x, qw, /*x_scale=*/at::Tensor(), w_scale, bias);

  const auto [q, scale] = quantize_per_token(x);  // int8 [M, K] contiguous, float32 [M]
  return int8_linear_cpu(q, scale, qw, w_scale, has_bias ? std::optional<at::Tensor>(bias) : std::nullopt,
                         x.scalar_type());
}

}  // namespace
}  // namespace compress

COMPRESS_REGISTER_CPU(int8_linear, compress::int8_linear_cpu)
COMPRESS_REGISTER_CPU(w8a8_linear, compress::w8a8_linear_cpu)
