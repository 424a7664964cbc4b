// CUDA implementation of compress::int8_mm(Tensor a, Tensor b) -> Tensor (schema defined from
// Python by the package): a int8 [M, K] @ b int8 [K, N] -> int32 [M, N], exact, contiguous.
// Torch glue only; the kernel is csrc/int8/int8_gemm.cu (no torch there).
//
// Includes: c10/cuda (stream, guard) instead of ATen/cuda/CUDAContext.h, which pulls in
// cublas_v2.h and cusparse.h; those are not under CUDA_HOME/include on every build machine
// (a toolkit with only nvcc + the runtime headers, as on the GPU-less dev box, lacks them).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "common.h"
#include "int8/int8_gemm.h"
#include "int8/int8_operands.h"  // kAlign, round_up, usable_row_stride, padded_copy, check_tensor_cores

namespace compress {
namespace {

using namespace int8_operands;

at::Tensor int8_mm_cuda(const at::Tensor& a, const at::Tensor& b) {
  constexpr const char* op = "int8_mm";
  COMPRESS_CHECK(op, a.is_cuda(), "expected `a` on a CUDA device, got ", a.device());
  COMPRESS_CHECK_DEVICE(op, b, a.device());
  COMPRESS_CHECK_DTYPE(op, a, at::kChar);
  COMPRESS_CHECK_DTYPE(op, b, at::kChar);
  COMPRESS_CHECK_DIM(op, a, 2);
  COMPRESS_CHECK_DIM(op, b, 2);
  COMPRESS_CHECK(op, b.size(0) == a.size(1), "expected `b` to have a.size(1) = ", a.size(1),
                 " rows (K), got ", b.size(0));
  check_tensor_cores(op, a.device());

  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max() - 256;
  COMPRESS_CHECK(op, M <= kIntMax && N <= kIntMax && K <= kIntMax,
                 "sizes must stay below 2^31 - 256, got a ", a.sizes(), " and b ", b.sizes());
  COMPRESS_CHECK(op, N <= int64_t{65535} * 32, "expected `b` to have at most 2097120 columns (N), got ",
                 N);

  c10::cuda::CUDAGuard guard(a.device());
  const auto out_opts = a.options().dtype(at::kInt);
  if (M == 0 || N == 0) return at::empty({M, N}, out_opts);
  if (K == 0) return at::zeros({M, N}, out_opts);

  const int64_t Kp = round_up(K, kAlign);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(a.device().index()).stream();

  // A: in place when the kernel can read it, else a zero-padded contiguous [M, Kp] copy.
  at::Tensor a_op = a;
  int64_t lda = usable_row_stride(a);
  if (lda < 0) {
    a_op = padded_copy(a, Kp);
    lda = Kp;
  }
  // Bt = b^T ([N, K]); in place when b is already the transpose of a usable [N, K] buffer (the
  // nn.Linear weight passed as w.t()), else a zero-padded contiguous [N, Kp] copy.
  at::Tensor bt_op = b.t();
  int64_t ldb = usable_row_stride(bt_op);
  if (ldb < 0) {
    bt_op = padded_copy(bt_op, Kp);
    ldb = Kp;
  }

  at::Tensor c = at::empty({M, N}, out_opts);
  // Kernel choice (Hopper wgmma + TMA or mma.sync; COMPRESS_INT8_SM90=0 forces mma.sync):
  // int8_operands.h use_int8_gemm_sm90.
  const auto gemm = use_int8_gemm_sm90(a_op, lda, bt_op, ldb, M, Kp) ? &int8_gemm_tn_sm90
                                                                      : &int8_gemm_tn;
  const cudaError_t err = gemm(
      a_op.const_data_ptr<int8_t>(), bt_op.const_data_ptr<int8_t>(), c.mutable_data_ptr<int32_t>(),
      static_cast<int>(M), static_cast<int>(N), static_cast<int>(Kp), lda, ldb, /*ldc=*/N, stream);
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err),
              " (M=", M, ", N=", N, ", K=", K, ")");
  return c;
}

}  // namespace
}  // namespace compress

TORCH_LIBRARY_IMPL(compress, CUDA, m) { m.impl("int8_mm", &compress::int8_mm_cuda); }
