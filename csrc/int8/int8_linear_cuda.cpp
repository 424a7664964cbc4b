// CUDA implementations of (schemas defined from Python by the package, compress/ops/int8.py):
//   compress::int8_linear(qx, x_scale, qw, w_scale, bias?, out_dtype) -> out [M, N]
//   compress::quantize_per_token(x) -> (q int8 [..., K], scale float32 [...])
//   compress::w8a16_linear(x, qw, w_scale, bias?) -> out [M, N] in x.dtype
//   compress::w8a8_linear(x, qw, w_scale, bias?) -> out [M, N] in x.dtype
// Torch glue only; kernels: int8_gemm.cu (int8_gemm_tn_dequant), int8_quant.cu (quantize, GEMV).
// Same conventions as int8_mm_cuda.cpp: checks first (device, dtype, dim, sizes; the messages
// name the arguments as compress/ops/int8.py's checks do), then CUDAGuard + current stream,
// operands made kernel-ready (int8_operands.h), empty sizes handled here.
// c10/cuda only: ATen/cuda/CUDAContext.h would pull cublas headers (see int8_mm_cuda.cpp).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/accumulate.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "common.h"
#include "int8/int8_gemm.h"
#include "int8/int8_operands.h"
#include "int8/int8_quant.h"
#include "int8/int8_w8a8.h"

namespace compress {
namespace {

using namespace int8_operands;

FloatDtype float_dtype(c10::ScalarType t) {
  return t == at::kBFloat16 ? FloatDtype::kBFloat16
                            : (t == at::kHalf ? FloatDtype::kFloat16 : FloatDtype::kFloat32);
}

Int8OutDtype out_dtype_enum(c10::ScalarType t) {
  return t == at::kBFloat16 ? Int8OutDtype::kBFloat16
                            : (t == at::kHalf ? Int8OutDtype::kFloat16 : Int8OutDtype::kFloat32);
}

#define CHECK_FLOAT_DTYPE(op, t)                                                           \
  TORCH_CHECK_TYPE(is_float((t).scalar_type()), op, ": expected `" #t                      \
                   "` to be torch.float32 or torch.bfloat16 or torch.float16, got ",       \
                   compress::dtype_name((t).scalar_type()))

#define CHECK_ON_DEVICE_OF(op, t, ref)                                                     \
  COMPRESS_CHECK(op, (t).device() == (ref).device(), "expected `" #t "` on the device of `" \
                 #ref "` (", (ref).device(), "), got ", (t).device())

// int8_gemm_tn_dequant and the GEMV index rows / columns in int with some headroom.
constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max() - 1024;

#define CHECK_LAUNCH(op, err, ...)                                                              \
  TORCH_CHECK((err) == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err), \
              " (", __VA_ARGS__, ")")

// ---- int8_linear ------------------------------------------------------------------------------

at::Tensor int8_linear_cuda(const at::Tensor& qx, const at::Tensor& x_scale, const at::Tensor& qw,
                            const at::Tensor& w_scale, const std::optional<at::Tensor>& bias_opt,
                            at::ScalarType out_dtype) {
  constexpr const char* op = "int8_linear";
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const at::Tensor bias = has_bias ? *bias_opt : at::Tensor();
  // device
  COMPRESS_CHECK(op, qx.is_cuda(), "expected `qx` on a CUDA device, got ", qx.device());
  CHECK_ON_DEVICE_OF(op, x_scale, qx);
  CHECK_ON_DEVICE_OF(op, qw, qx);
  CHECK_ON_DEVICE_OF(op, w_scale, qx);
  if (has_bias) CHECK_ON_DEVICE_OF(op, bias, qx);
  // dtype
  COMPRESS_CHECK_DTYPE(op, qx, at::kChar);
  COMPRESS_CHECK_DTYPE(op, qw, at::kChar);
  COMPRESS_CHECK_DTYPE(op, x_scale, at::kFloat);
  COMPRESS_CHECK_DTYPE(op, w_scale, at::kFloat);
  if (has_bias) CHECK_FLOAT_DTYPE(op, bias);
  TORCH_CHECK_TYPE(is_float(out_dtype), op,
                   ": expected `out_dtype` in (torch.float32, torch.bfloat16, torch.float16), got ",
                   compress::dtype_name(out_dtype));
  // dim
  COMPRESS_CHECK_DIM(op, qx, 2);
  COMPRESS_CHECK_DIM(op, qw, 2);
  COMPRESS_CHECK_DIM(op, x_scale, 1);
  COMPRESS_CHECK_DIM(op, w_scale, 1);
  if (has_bias) COMPRESS_CHECK_DIM(op, bias, 1);
  // sizes
  const int64_t M = qx.size(0), K = qx.size(1), N = qw.size(0);
  COMPRESS_CHECK(op, qw.size(1) == K, "expected `qw` to be [N, K] with K = qx.shape[1] = ", K,
                 ", got shape ", py_shape(qw));
  COMPRESS_CHECK(op, x_scale.size(0) == M, "expected `x_scale` to have qx.shape[0] = ", M,
                 " elements, got ", x_scale.size(0));
  COMPRESS_CHECK(op, w_scale.size(0) == N, "expected `w_scale` to have qw.shape[0] = ", N,
                 " elements, got ", w_scale.size(0));
  if (has_bias)
    COMPRESS_CHECK(op, bias.size(0) == N, "expected `bias` to have qw.shape[0] = ", N,
                   " elements, got ", bias.size(0));
  check_tensor_cores(op, qx.device());
  COMPRESS_CHECK(op, M <= kIntMax && N <= kIntMax && K <= kIntMax,
                 "sizes must stay below 2^31 - 1024, got qx ", qx.sizes(), " and qw ", qw.sizes());
  COMPRESS_CHECK(op, N <= int64_t{65535} * 32,
                 "expected `qw` to have at most 2097120 rows (N), got ", N);

  c10::cuda::CUDAGuard guard(qx.device());
  const auto out_opts = qx.options().dtype(out_dtype);
  if (M == 0 || N == 0) return at::empty({M, N}, out_opts);
  if (K == 0) {
    // The epilogue of a zero accumulator, as the reference computes it (0 * inf stays NaN).
    at::Tensor out = at::zeros({M, N}, qx.options().dtype(at::kFloat))
                         .mul(x_scale.unsqueeze(1))
                         .mul(w_scale.unsqueeze(0));
    if (has_bias) out = out.add(bias.to(at::kFloat));
    return out.to(out_dtype);
  }

  const int64_t Kp = round_up(K, kAlign);
  at::Tensor a_op = qx;
  int64_t lda = usable_row_stride(qx);
  if (lda < 0) {
    a_op = padded_copy(qx, Kp);
    lda = Kp;
  }
  at::Tensor bt_op = qw;  // qw is already the kernel's Bt [N, K]
  int64_t ldb = usable_row_stride(qw);
  if (ldb < 0) {
    bt_op = padded_copy(qw, Kp);
    ldb = Kp;
  }
  const at::Tensor xs = x_scale.contiguous();
  const at::Tensor ws = w_scale.contiguous();
  const at::Tensor bf = has_bias ? bias.to(at::kFloat).contiguous() : at::Tensor();

  at::Tensor out = at::empty({M, N}, out_opts);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(qx.device().index()).stream();
  const int8_t* A = a_op.const_data_ptr<int8_t>();
  const int8_t* Bt = bt_op.const_data_ptr<int8_t>();
  const float* bias_f = has_bias ? bf.const_data_ptr<float>() : nullptr;
  cudaError_t err;
  // Kernel choice (Hopper wgmma + TMA or mma.sync; COMPRESS_INT8_SM90=0 forces mma.sync):
  // int8_operands.h use_int8_gemm_sm90.
  if (use_int8_gemm_sm90(a_op, lda, bt_op, ldb, M, Kp)) {
    err = int8_gemm_tn_dequant_sm90(A, Bt, out.mutable_data_ptr(), out_dtype_enum(out_dtype),
                                    xs.const_data_ptr<float>(), ws.const_data_ptr<float>(), bias_f,
                                    static_cast<int>(M), static_cast<int>(N), static_cast<int>(Kp), lda, ldb,
                                    /*ldo=*/N, stream);
  } else {
    // Split-K (small M; COMPRESS_INT8_SPLITK=0 turns it off) sums into an int32 workspace first.
    const size_t splitk_bytes = int8_gemm_tn_dequant_workspace_bytes(
        static_cast<int>(M), static_cast<int>(N), static_cast<int>(Kp));
    at::Tensor splitk_ws;
    if (splitk_bytes > 0)
      splitk_ws = at::empty({static_cast<int64_t>(splitk_bytes)}, qx.options().dtype(at::kByte));
    err = int8_gemm_tn_dequant(A, Bt, out.mutable_data_ptr(), out_dtype_enum(out_dtype), xs.const_data_ptr<float>(),
                               ws.const_data_ptr<float>(), bias_f, static_cast<int>(M), static_cast<int>(N),
                               static_cast<int>(Kp), lda, ldb, /*ldo=*/N, stream,
                               splitk_bytes > 0 ? splitk_ws.mutable_data_ptr() : nullptr, splitk_bytes);
  }
  CHECK_LAUNCH(op, err, "M=", M, ", N=", N, ", K=", K);
  return out;
}

// ---- quantize_per_token -----------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> quantize_per_token_cuda(const at::Tensor& x) {
  constexpr const char* op = "quantize_per_token";
  COMPRESS_CHECK(op, x.is_cuda(), "expected `x` on a CUDA device, got ", x.device());
  CHECK_FLOAT_DTYPE(op, x);
  COMPRESS_CHECK(op, x.dim() >= 1, "expected `x` to have at least 1 dim, got a 0-D tensor");
  const int64_t K = x.size(-1);
  const std::vector<int64_t> lead(x.sizes().begin(), x.sizes().end() - 1);
  const int64_t R = c10::multiply_integers(lead);
  COMPRESS_CHECK(op, K <= kIntMax, "expected `x` to have at most 2^31 - 1024 columns, got ", K);

  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  at::Tensor scale = at::empty(lead, x.options().dtype(at::kFloat));
  if (R == 0) return {q, scale};
  if (K == 0) {  // absmax of an empty row is 0: scale 1.0
    scale.fill_(1.0);
    return {q, scale};
  }
  // [R, K] with contiguous rows: a view where the strides allow, else a copy (reshape decides).
  at::Tensor x2 = x.reshape({R, K});
  if (K > 1 && x2.stride(1) != 1) x2 = x2.contiguous();
  const int64_t ldx = R == 1 ? K : x2.stride(0);

  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const cudaError_t err =
      quantize_per_token(x2.const_data_ptr(), float_dtype(x.scalar_type()), R, K, ldx,
                         q.mutable_data_ptr<int8_t>(), scale.mutable_data_ptr<float>(), stream);
  CHECK_LAUNCH(op, err, "rows=", R, ", K=", K);
  return {q, scale};
}

// The checks w8a16_linear and w8a8_linear share: x float [M, K], qw int8 [N, K], w_scale float32 [N],
// bias float [N] or undefined, all on x's CUDA device, sizes within int range.
void check_weight_only_args(const char* op, const at::Tensor& x, const at::Tensor& qw, const at::Tensor& w_scale,
                            const at::Tensor& bias, bool has_bias) {
  // device
  COMPRESS_CHECK(op, x.is_cuda(), "expected `x` on a CUDA device, got ", x.device());
  CHECK_ON_DEVICE_OF(op, qw, x);
  CHECK_ON_DEVICE_OF(op, w_scale, x);
  if (has_bias) CHECK_ON_DEVICE_OF(op, bias, x);
  // dtype
  CHECK_FLOAT_DTYPE(op, x);
  COMPRESS_CHECK_DTYPE(op, qw, at::kChar);
  COMPRESS_CHECK_DTYPE(op, w_scale, at::kFloat);
  if (has_bias) CHECK_FLOAT_DTYPE(op, bias);
  // dim
  COMPRESS_CHECK_DIM(op, x, 2);
  COMPRESS_CHECK_DIM(op, qw, 2);
  COMPRESS_CHECK_DIM(op, w_scale, 1);
  if (has_bias) COMPRESS_CHECK_DIM(op, bias, 1);
  // sizes
  const int64_t M = x.size(0), K = x.size(1), N = qw.size(0);
  COMPRESS_CHECK(op, qw.size(1) == K, "expected `qw` to be [N, K] with K = x.shape[1] = ", K,
                 ", got shape ", py_shape(qw));
  COMPRESS_CHECK(op, w_scale.size(0) == N, "expected `w_scale` to have qw.shape[0] = ", N,
                 " elements, got ", w_scale.size(0));
  if (has_bias)
    COMPRESS_CHECK(op, bias.size(0) == N, "expected `bias` to have qw.shape[0] = ", N,
                   " elements, got ", bias.size(0));
  COMPRESS_CHECK(op, M <= kIntMax && N <= kIntMax && K <= kIntMax,
                 "sizes must stay below 2^31 - 1024, got x ", x.sizes(), " and qw ", qw.sizes());
}

// ---- w8a16_linear -----------------------------------------------------------------------------

at::Tensor w8a16_linear_cuda(const at::Tensor& x, const at::Tensor& qw, const at::Tensor& w_scale,
                             const std::optional<at::Tensor>& bias_opt) {
  constexpr const char* op = "w8a16_linear";
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const at::Tensor bias = has_bias ? *bias_opt : at::Tensor();
  check_weight_only_args(op, x, qw, w_scale, bias, has_bias);
  const int64_t M = x.size(0), K = x.size(1), N = qw.size(0);

  c10::cuda::CUDAGuard guard(x.device());
  const auto dt = x.scalar_type();
  if (M == 0 || N == 0) return at::empty({M, N}, x.options());
  const at::Tensor ws = w_scale.contiguous();
  const at::Tensor bf = has_bias ? bias.to(at::kFloat).contiguous() : at::Tensor();
  if (K == 0) {  // the epilogue of a zero sum, as the reference computes it
    at::Tensor out = at::zeros({M, N}, x.options().dtype(at::kFloat)).mul(ws.unsqueeze(0));
    if (has_bias) out = out.add(bf);
    return out.to(dt);
  }

  if (M > kW8A16MaxM) {
    // FALLBACK for M > 16 (not the GEMV; see int8_quant.cu for why it stops at 16): cuBLAS on
    // the weight converted to x.dtype (exact: every int8 value is representable in bf16 / f16),
    // float32 accumulation and a float32 result (at::mm(..., out_dtype=float32) for bf16 / f16
    // inputs; float32 x is a float32 GEMM, TF32 only where the user enabled
    // torch.backends.cuda.matmul.allow_tf32), then (acc * w_scale) + bias in float32 and one
    // rounding to x.dtype: the op's semantics, at the price of a temporary [N, K] x.dtype copy of
    // the weight on every call.
    const at::Tensor wt = qw.to(dt).t();
    at::Tensor acc = dt == at::kFloat ? at::mm(x, wt) : at::mm(x, wt, at::kFloat);
    acc.mul_(ws.unsqueeze(0));
    if (has_bias) acc.add_(bf);
    return acc.to(dt);
  }

  // GEMV path: x rows contiguous with K % 16 == 0 (else a zero-padded copy, cheap: M <= 16 rows);
  // qw read in place when its rows are 16-byte aligned, else a zero-padded copy (a full weight
  // copy per call: only for odd K or misaligned views).
  const int64_t Kp = round_up(K, kAlign);
  at::Tensor x_op = x;
  int64_t ldx = M == 1 ? K : x.stride(0);
  if (K % kAlign != 0 || x.stride(1) != 1 || (M > 1 && x.stride(0) < K)) {
    x_op = padded_copy(x, Kp);
    ldx = Kp;
  }
  at::Tensor w_op = qw;
  int64_t ldw = usable_row_stride(qw);
  if (ldw < 0) {
    w_op = padded_copy(qw, Kp);
    ldw = Kp;
  }
  at::Tensor out = at::empty({M, N}, x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const cudaError_t err = w8a16_gemv(
      x_op.const_data_ptr(), float_dtype(dt), ldx, w_op.const_data_ptr<int8_t>(), ldw,
      ws.const_data_ptr<float>(), has_bias ? bf.const_data_ptr<float>() : nullptr,
      out.mutable_data_ptr(), /*ldo=*/N, static_cast<int>(M), static_cast<int>(N),
      static_cast<int>(Kp), stream);
  CHECK_LAUNCH(op, err, "M=", M, ", N=", N, ", K=", K);
  return out;
}

// ---- w8a8_linear ------------------------------------------------------------------------------
// quantize_per_token + int8_linear in one op. M <= 16 (decode) with M * K small enough for shared
// memory (w8a8_gemv_fits): the fused kernel of int8_w8a8.cu (one launch, q and the scales stay on
// chip). Otherwise the two kernels above, back to back from C++. Both are bit-identical to the
// two-op path. COMPRESS_W8A8_CUDA_PATH=auto|fused|two_kernels (environment, read per call) forces
// a path for tests and benchmarks; `fused` raises where the fused kernel cannot run the shape.
// The fused kernel has NOT been run on a GPU yet, nor its M <= 16 threshold measured.

at::Tensor w8a8_linear_cuda(const at::Tensor& x, const at::Tensor& qw, const at::Tensor& w_scale,
                            const std::optional<at::Tensor>& bias_opt) {
  constexpr const char* op = "w8a8_linear";
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const at::Tensor bias = has_bias ? *bias_opt : at::Tensor();
  check_weight_only_args(op, x, qw, w_scale, bias, has_bias);
  const int64_t M = x.size(0), K = x.size(1), N = qw.size(0);

  const char* env = std::getenv("COMPRESS_W8A8_CUDA_PATH");
  const bool force_fused = env != nullptr && std::strcmp(env, "fused") == 0;
  const bool force_two = env != nullptr && std::strcmp(env, "two_kernels") == 0;
  TORCH_CHECK_VALUE(env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0 || force_fused || force_two,
                    op, ": expected COMPRESS_W8A8_CUDA_PATH to be auto, fused or two_kernels, got '", env, "'");
  const bool fits = w8a8_gemv_fits(M, K);
  COMPRESS_CHECK(op, !force_fused || fits || M == 0 || N == 0,
                 "COMPRESS_W8A8_CUDA_PATH=fused, but the fused kernel takes 1 <= M <= ", kW8A8MaxM,
                 " rows of at most 96 KiB of int8 together, got x ", x.sizes());
  if (force_two || !fits || N == 0) {
    // M = 0, K = 0 and the large-M case: the two kernels, exactly the two-op path.
    const auto [q, scale] = quantize_per_token_cuda(x);
    return int8_linear_cuda(q, scale, qw, w_scale, bias_opt, x.scalar_type());
  }
  check_tensor_cores(op, x.device());  // what int8_linear requires, so both paths run on the same GPUs

  c10::cuda::CUDAGuard guard(x.device());
  const auto dt = x.scalar_type();
  at::Tensor x_op = x;  // rows contiguous, any alignment of the element type
  if (K > 1 && x.stride(1) != 1) x_op = x.contiguous();
  const int64_t ldx = M == 1 ? K : x_op.stride(0);
  const int64_t Kw = round_up(K, kAlign);
  at::Tensor w_op = qw;  // read in place when its rows are 16-byte aligned, else a padded copy
  int64_t ldw = usable_row_stride(qw);
  if (ldw < 0) {
    w_op = padded_copy(qw, Kw);
    ldw = Kw;
  }
  const at::Tensor ws = w_scale.contiguous();
  const at::Tensor bf = has_bias ? bias.to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor out = at::empty({M, N}, x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const cudaError_t err = w8a8_gemv(
      x_op.const_data_ptr(), float_dtype(dt), ldx, w_op.const_data_ptr<int8_t>(), ldw,
      ws.const_data_ptr<float>(), has_bias ? bf.const_data_ptr<float>() : nullptr,
      out.mutable_data_ptr(), /*ldo=*/N, static_cast<int>(M), static_cast<int>(N),
      static_cast<int>(K), stream);
  CHECK_LAUNCH(op, err, "M=", M, ", N=", N, ", K=", K);
  return out;
}

}  // namespace
}  // namespace compress

TORCH_LIBRARY_IMPL(compress, CUDA, m) {
  m.impl("int8_linear", &compress::int8_linear_cuda);
  m.impl("quantize_per_token", &compress::quantize_per_token_cuda);
  m.impl("w8a16_linear", &compress::w8a16_linear_cuda);
  m.impl("w8a8_linear", &compress::w8a8_linear_cuda);
}
