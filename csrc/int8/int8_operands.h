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
#include <cstdlib>
#include <cstring>

#include "common.h"
#include "int8/int8_gemm.h"

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

// Whether int8_mm / int8_linear take the Hopper kernel (int8_gemm_sm90.cu: wgmma + TMA, NOT YET
// RUN ON A GPU) instead of the mma.sync one, for kernel-ready operands a_op [M, Kp] (row stride
// lda) and bt_op [N, Kp] (ldb) on the current device. All of:
//   - COMPRESS_INT8_SM90 is not "0" (read on every call: the run-time off switch, e.g. to compare
//     the two paths or to step around a fault in the new one);
//   - M > 64: below that the sm90 tile (BM = 128, two m64 warpgroups) is mostly padding, while
//     int8_gemm.cu's small config (BM = 16, finer N split) keeps more CTAs busy;
//   - TMA's requirements: 16-byte aligned base pointers, row strides a positive multiple of 16
//     bytes, Kp % 16 == 0 (true of every kernel-ready operand; checked again here so a future
//     change there falls back instead of failing);
//   - the device is compute capability 9.0 and the build holds the sm_90a kernel
//     (int8_gemm_sm90_supported).
inline bool use_int8_gemm_sm90(const at::Tensor& a_op, int64_t lda, const at::Tensor& bt_op,
                               int64_t ldb, int64_t M, int64_t Kp) {
  const char* env = std::getenv("COMPRESS_INT8_SM90");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  if (M <= 64) return false;
  if (Kp % kAlign != 0 || lda <= 0 || ldb <= 0 || lda % kAlign != 0 || ldb % kAlign != 0 ||
      !aligned16(a_op) || !aligned16(bt_op))
    return false;
  return int8_gemm_sm90_supported(a_op.device().index());
}

}  // namespace int8_operands
}  // namespace compress
