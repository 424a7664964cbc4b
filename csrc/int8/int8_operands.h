// Torch-side helpers shared by the int8 CUDA glue files (int8_mm_cuda.cpp, int8_linear_cuda.cpp):
// making [rows, K] operands kernel-ready (16-byte aligned rows, K % 16 == 0) and the tensor-core
// capability check. Header-only, inline; kernels (.cu files) never include this.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common.h"

namespace compress {
namespace int8_operands {

constexpr int64_t kAlign = 16;  // K, row strides and base pointers in units of 16 bytes

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline bool aligned16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % kAlign == 0;
}

// The row stride (elements) to hand a kernel if `t` ([rows, K] int8, K % 16 == 0) can be read in
// place with 16-byte vectors, else -1. A single row needs no real stride: K itself (a multiple of
// 16) stands in.
inline int64_t usable_row_stride(const at::Tensor& t) {
  const int64_t K = t.size(1);
  if (K % kAlign != 0 || !aligned16(t)) return -1;
  if (t.stride(1) != 1) return -1;
  if (t.size(0) == 1) return K;
  const int64_t ld = t.stride(0);
  return (ld % kAlign == 0 && ld >= 0) ? ld : -1;
}

// `t` ([rows, K], any dtype, any strides) as a fresh contiguous [rows, Kp] buffer, zero-padded in k.
inline at::Tensor padded_copy(const at::Tensor& t, int64_t Kp) {
  const int64_t K = t.size(1);
  at::Tensor out = (Kp == K) ? at::empty({t.size(0), Kp}, t.options())
                             : at::zeros({t.size(0), Kp}, t.options());
  out.narrow(1, 0, K).copy_(t);
  return out;
}

// Raises unless `device` can run the mma.sync int8 kernels (sm_80+).
inline void check_tensor_cores(const char* op, const at::Device& device) {
  const int dev = device.index();
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  COMPRESS_CHECK(op, major >= 8,
                 "the int8 tensor-core kernel needs compute capability 8.0+ (sm_80+: A100, H100, "
                 "...); ",
                 device, " is sm_", major, minor);
}

}  // namespace int8_operands
}  // namespace compress
