// The input checks of the int8 CPU ops that take an int8 weight qw [N, K] (nn.Linear layout):
// int8_linear and w8a8_linear (int8_linear_cpu.cpp), w8a16_linear (int8_quant_cpu.cpp). The
// messages and their order are compress/ops/int8.py's check_int8_linear / _check_weight_only_args;
// each op checks its x and the devices itself, between the two calls:
//   check_weight_dtypes -> out_dtype (int8_linear) -> devices -> check_weight_sizes
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "common.h"

namespace compress::int8_cpu {

// Dtypes and ranks: qw int8 [N, K]; x_scale float32 [M], int8_linear's (the other ops pass an
// undefined tensor); w_scale float32 [N]; bias any float dtype [N], or undefined (None).
inline void check_weight_dtypes(const char* op, const at::Tensor& qw, const at::Tensor& x_scale,
                                const at::Tensor& w_scale, const at::Tensor& bias) {
  COMPRESS_CHECK_DTYPE(op, qw, at::kChar);
  COMPRESS_CHECK_DIM(op, qw, 2);
  if (x_scale.defined()) {
    COMPRESS_CHECK_DTYPE(op, x_scale, at::kFloat);
    COMPRESS_CHECK_DIM(op, x_scale, 1);
  }
  COMPRESS_CHECK_DTYPE(op, w_scale, at::kFloat);
  COMPRESS_CHECK_DIM(op, w_scale, 1);
  if (bias.defined()) {
    COMPRESS_CHECK_FLOAT(op, bias);
    COMPRESS_CHECK_DIM(op, bias, 1);
  }
}

// Sizes against x [M, K] (2-D, checked), named `x_name` in the messages (qx or x); the tensors as
// for check_weight_dtypes.
inline void check_weight_sizes(const char* op, const char* x_name, const at::Tensor& x, const at::Tensor& qw,
                               const at::Tensor& x_scale, const at::Tensor& w_scale, const at::Tensor& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = qw.size(0);
  COMPRESS_CHECK(op, qw.size(1) == K, "expected `qw` to be [N, K] with K = ", x_name, ".shape[1] = ", K,
                 ", got shape ", qw.sizes());
  if (x_scale.defined())
    COMPRESS_CHECK(op, x_scale.size(0) == M, "expected `x_scale` to have ", x_name, ".shape[0] = ", M,
                   " elements, got ", x_scale.size(0));
  COMPRESS_CHECK(op, w_scale.size(0) == N, "expected `w_scale` to have qw.shape[0] = ", N, " elements, got ",
                 w_scale.size(0));
  if (bias.defined())
    COMPRESS_CHECK(op, bias.size(0) == N, "expected `bias` to have qw.shape[0] = ", N, " elements, got ",
                   bias.size(0));
}

}  // namespace compress::int8_cpu
