// CUDA implementations of (schemas defined from Python by the package, compress/ops/sparse.py):
//   compress::sparse24_linear(x, values, meta, bias?) -> y [M, N]
//   compress::bsr_linear(x, crow, col, values, out_features, bias?) -> y [M, N]
//   compress::csr_linear(x, crow, col, values, out_features, bias?) -> y [M, N]
// y = x @ W^T + bias in x's dtype, float32 accumulation. Torch glue only; kernels: sparse24_linear.cu,
// bsr_linear.cu, csr_linear.cu (contracts in sparse_linear_cuda.h).
//
// Checks: in the order and wording of compress/ops/sparse.py (check_sparse24_linear,
// _check_compressed): dtype problems raise TypeError, shape / device problems ValueError, shapes
// printed as Python tuples. Then CUDAGuard + the current stream, operands made kernel-ready
// (contiguous / aligned / zero-padded copies only where the kernel cannot read the caller's
// tensor), empty sizes handled here (M == 0 or N == 0: empty; K == 0 or nothing stored: bias).
//
// NOT validated (a check would copy crow / col to the host, i.e. synchronize every call): that
// crow starts at 0, ends at col.size(0) and never decreases, and that col entries are in range
// (and increasing). The kernels clamp every row range into [0, nnz] and skip out-of-range col
// entries, so malformed index arrays give an unspecified result but never an out-of-bounds
// access. Nor is meta checked for first < second (see sparse_linear_cuda.h for what each path
// does with such a group).
//
// Paths: bfloat16 / float16 on sm_80+ use the tensor-core kernels (2:4: mma.sp; BSR with bn, bk
// in {16, 32, 64}: mma.sync); 2:4 with M >= 128 on a cc 9.0 device uses wgmma.sp + TMA
// (sparse24_sm90.cu; COMPRESS_SPARSE24_SM90=0 switches it off, =1 forces it for every M: see
// want_sm90); float32 x, other block shapes and older devices use the simple float32-FMA kernels. c10/cuda only (see int8_mm_cuda.cpp: ATen/cuda/CUDAContext.h pulls headers a
// toolkit without cuBLAS / cuSPARSE lacks).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>

#include "common.h"
#include "sparse/sparse_linear_cuda.h"

namespace compress {
namespace {

// Kernels index rows / columns in int with some headroom.
constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max() - 1024;

SparseDtype sparse_dtype(c10::ScalarType t) {
  return t == at::kBFloat16 ? SparseDtype::kBFloat16
                            : (t == at::kHalf ? SparseDtype::kFloat16 : SparseDtype::kFloat32);
}

// compress/ops/int8.py _check_tensor(op, name, t, dtypes, dim) with dtypes = _FLOAT_DTYPES ...
void check_float_tensor(const char* op, const char* name, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK_TYPE(is_float(t.scalar_type()), op, ": expected `", name,
                   "` to be torch.float32 or torch.bfloat16 or torch.float16, got ",
                   dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": expected `", name, "` to be ", dim, "-D, got ", t.dim(),
                    "-D with shape ", py_shape(t));
}

// ... and with a single dtype.
void check_tensor(const char* op, const char* name, const at::Tensor& t, c10::ScalarType want,
                  int64_t dim) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, op, ": expected `", name, "` to be ", dtype_name(want),
                   ", got ", dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": expected `", name, "` to be ", dim, "-D, got ", t.dim(),
                    "-D with shape ", py_shape(t));
}

// _check_same_device(op, "x", x, name=t)
void check_same_device(const char* op, const at::Tensor& x, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": expected `", name, "` on the device of `x` (",
                    x.device(), "), got ", t.device());
}

// _check_x_values_bias's bias part.
void check_bias(const char* op, const at::Tensor& bias, int64_t n_out) {
  check_float_tensor(op, "bias", bias, 1);
  TORCH_CHECK_VALUE(bias.size(0) == n_out, op, ": expected `bias` to have ", n_out,
                    " elements (out_features), got ", bias.size(0));
}

void check_sizes(const char* op, const at::Tensor& x, int64_t N) {
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": expected `x` on a CUDA device, got ", x.device());
  TORCH_CHECK_VALUE(x.size(0) <= kIntMax && x.size(1) <= kIntMax && N <= kIntMax, op,
                    ": sizes must stay below 2^31 - 1024, got x ", py_shape(x),
                    " and out_features ", N);
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

bool aligned(const at::Tensor& t, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % bytes == 0;
}

// Elements of a row are contiguous (a size-1 dim has no meaningful stride).
bool row_contig(const at::Tensor& t) { return t.size(1) <= 1 || t.stride(1) == 1; }

// The row stride to hand a kernel that reads `t` ([rows, cols], row-contiguous) with 16-byte
// vectors (`vec` elements): -1 if it cannot (misaligned base or stride, or cols != cols_needed).
int64_t vec_row_stride(const at::Tensor& t, int64_t vec, int64_t cols_needed) {
  if (t.size(1) != cols_needed || !row_contig(t) || !aligned(t, 16)) return -1;
  if (t.size(0) <= 1) return cols_needed;
  const int64_t ld = t.stride(0);
  return (ld >= 0 && ld % vec == 0) ? ld : -1;
}

// The row stride for scalar reads (row-contiguous only), with a contiguous copy in `holder` when
// needed.
int64_t scalar_row_stride(const at::Tensor& t, at::Tensor& holder) {
  holder = row_contig(t) && (t.size(0) <= 1 || t.stride(0) >= 0) ? t : t.contiguous();
  return holder.size(0) <= 1 ? holder.size(1) : holder.stride(0);
}

// `t` ([rows, cols], any strides) as a fresh contiguous [rows, cols_p] buffer, zero-padded.
at::Tensor padded_copy(const at::Tensor& t, int64_t cols_p) {
  const int64_t cols = t.size(1);
  at::Tensor out = cols_p == cols ? at::empty({t.size(0), cols_p}, t.options())
                                  : at::zeros({t.size(0), cols_p}, t.options());
  out.narrow(1, 0, cols).copy_(t);
  return out;
}

// `t` itself when contiguous and 16-byte aligned, else a fresh contiguous copy (.contiguous()
// alone would keep a contiguous but misaligned view).
at::Tensor aligned_contiguous(const at::Tensor& t) {
  if (t.is_contiguous() && aligned(t, 16)) return t;
  at::Tensor c = at::empty(t.sizes(), t.options());
  c.copy_(t);
  return c;
}

// y [M, N] = bias (or zeros), computed as the reference does: float32 zeros + bias, then rounded.
at::Tensor bias_only(const at::Tensor& x, int64_t N, const at::Tensor& bias_f) {
  at::Tensor out = at::zeros({x.size(0), N}, x.options().dtype(at::kFloat));
  if (bias_f.defined()) out.add_(bias_f);
  return out.to(x.scalar_type());
}

bool has_tensor_cores(const at::Device& device) {
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device.index()));
  return major >= 8;
}

bool is_sm90(const at::Device& device) {
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device.index()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device.index()));
  return major == 9 && minor == 0;  // sm_90a code runs on 9.0 only (not on later majors)
}

// The Hopper 2:4 kernel (sparse24_sm90.cu: wgmma.sp + TMA) takes M >= kSparse24Sm90MinM on a
// compute capability 9.0 device. Why 128 -- an argument, not a measurement (the kernel has not
// run on a GPU; the first H100 benchmark should move this constant): its tile is 128 rows of x,
// so below 128 rows it pads the tensor work as much as the sm_80 Big config (also 128 rows wide)
// and both are bound by the one read of the weight (1.25 bytes per weight element: 16-bit values
// for half the inputs + 2 meta bits per input; N = K = 4096: 21 MB, ~7 us at 3 TB/s, against
// ~1 us of sparse tensor work at M = 64), so there is nothing to win there. From one full tile
// on, nothing is padded and the math grows with M until it dominates (M of a few hundred at
// N = K = 4096), where wgmma.sp -- asynchronous, operands straight from TMA-filled shared memory,
// no ldmatrix / register staging -- has the higher ceiling than the legacy mma.sp on Hopper's
// tensor cores. M <= 32 keeps the sm_80 Small config (split-K warps, 16-row tiles), 33..127
// its Big config.
constexpr int64_t kSparse24Sm90MinM = 128;

// COMPRESS_SPARSE24_SM90 (read on every call): "0" never uses the Hopper kernel, "1" uses it for
// every M (tests force the path with it), unset or anything else: M >= kSparse24Sm90MinM. In all
// cases only on a cc 9.0 device, and only when TMA can describe the operands (else the sm_80
// kernel runs).
bool want_sm90(const at::Device& device, int64_t M) {
  const char* env = std::getenv("COMPRESS_SPARSE24_SM90");
  const std::string mode = env != nullptr ? env : "";
  if (mode == "0") return false;
  if (mode != "1" && M < kSparse24Sm90MinM) return false;
  return is_sm90(device);
}

#define CHECK_LAUNCH(op, err, ...)                                                              \
  TORCH_CHECK((err) == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err), \
              " (", __VA_ARGS__, ")")

// ---- sparse24_linear ---------------------------------------------------------------------------

at::Tensor sparse24_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                const std::optional<at::Tensor>& bias_opt) {
  constexpr const char* op = "sparse24_linear";
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const at::Tensor bias = has_bias ? *bias_opt : at::Tensor();
  // check_sparse24_linear, in its order
  check_float_tensor(op, "x", x, 2);
  check_tensor(op, "values", values, x.scalar_type(), 2);
  check_tensor(op, "meta", meta, at::kByte, 2);
  check_same_device(op, x, "values", values);
  check_same_device(op, x, "meta", meta);
  if (has_bias) check_same_device(op, x, "bias", bias);
  const int64_t K = x.size(1);
  TORCH_CHECK_VALUE(K % 4 == 0, op, ": 2:4 needs K = x.shape[1] divisible by 4, got ", K);
  const int64_t N = values.size(0);
  TORCH_CHECK_VALUE(values.size(1) * 2 == K, op, ": expected `values` to be [N, K/2] = [", N, ", ",
                    K / 2, "], got ", py_shape(values));
  TORCH_CHECK_VALUE(meta.size(0) == N && meta.size(1) == K / 4, op,
                    ": expected `meta` to be [N, K/4] = [", N, ", ", K / 4, "], got ",
                    py_shape(meta));
  if (has_bias) check_bias(op, bias, N);
  check_sizes(op, x, N);

  c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0);
  if (M == 0 || N == 0) return at::empty({M, N}, x.options());
  const at::Tensor bias_f = has_bias ? bias.to(at::kFloat).contiguous() : at::Tensor();
  if (K == 0) return bias_only(x, N, bias_f);

  at::Tensor out = at::empty({M, N}, x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const SparseDtype dt = sparse_dtype(x.scalar_type());
  const float* bp = has_bias ? bias_f.const_data_ptr<float>() : nullptr;
  cudaError_t err;
  if (x.scalar_type() != at::kFloat && has_tensor_cores(x.device())) {
    // Tensor-core path: K padded to a multiple of 64, 16-byte aligned rows. Operands are read in
    // place when they already are; otherwise zero-padded copies (the weight copy costs a full
    // pass over it per call: only odd K or unaligned views get there). Zero padding adds nothing:
    // padded values are 0 and padded x is 0 (padded meta 0 reads as positions (0, 1)).
    const int64_t Kp = round_up(K, kSparse24KAlign);
    at::Tensor x_op = x, v_op = values, m_op = meta;
    int64_t ldx = vec_row_stride(x, 8, Kp);
    if (ldx < 0) {
      x_op = padded_copy(x, Kp);
      ldx = Kp;
    }
    int64_t ldv = vec_row_stride(values, 8, Kp / 2);
    if (ldv < 0) {
      v_op = padded_copy(values, Kp / 2);
      ldv = Kp / 2;
    }
    int64_t ldm = vec_row_stride(meta, 16, Kp / 4);
    if (ldm < 0) {
      m_op = padded_copy(meta, Kp / 4);
      ldm = Kp / 4;
    }
    // The Hopper kernel reads the same operands (its TMA needs exactly these 16-byte alignments);
    // cudaErrorNotSupported = it could not describe them and launched nothing: sm_80 kernel.
    err = cudaErrorNotSupported;
    if (want_sm90(x.device(), M))
      err = sparse24_linear_sm90(x_op.const_data_ptr(), ldx, v_op.const_data_ptr(), ldv,
                                 m_op.const_data_ptr<uint8_t>(), ldm, bp, out.mutable_data_ptr(), N,
                                 dt, static_cast<int>(M), static_cast<int>(N),
                                 static_cast<int>(Kp), stream);
    if (err == cudaErrorNotSupported)
      err = sparse24_linear_mma(x_op.const_data_ptr(), ldx, v_op.const_data_ptr(), ldv,
                                m_op.const_data_ptr<uint8_t>(), ldm, bp, out.mutable_data_ptr(), N,
                                dt, static_cast<int>(M), static_cast<int>(N), static_cast<int>(Kp),
                                stream);
  } else {
    at::Tensor x_op, v_op, m_op;
    const int64_t ldx = scalar_row_stride(x, x_op);
    const int64_t ldv = scalar_row_stride(values, v_op);
    const int64_t ldm = scalar_row_stride(meta, m_op);
    err = sparse24_linear_simple(x_op.const_data_ptr(), ldx, v_op.const_data_ptr(), ldv,
                                 m_op.const_data_ptr<uint8_t>(), ldm, bp, out.mutable_data_ptr(), N,
                                 dt, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
                                 stream);
  }
  CHECK_LAUNCH(op, err, "M=", M, ", N=", N, ", K=", K);
  return out;
}

// ---- bsr_linear / csr_linear: _check_compressed ------------------------------------------------

void check_compressed(const char* op, const at::Tensor& x, const at::Tensor& crow,
                      const at::Tensor& col, const at::Tensor& values, int64_t out_features,
                      const std::optional<at::Tensor>& bias_opt, int64_t values_dim, int64_t rows) {
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  check_tensor(op, "crow", crow, at::kInt, 1);
  check_tensor(op, "col", col, at::kInt, 1);
  // _check_x_values_bias
  check_float_tensor(op, "x", x, 2);
  check_tensor(op, "values", values, x.scalar_type(), values_dim);
  if (has_bias) check_bias(op, *bias_opt, out_features);
  // _check_same_device
  check_same_device(op, x, "crow", crow);
  check_same_device(op, x, "col", col);
  check_same_device(op, x, "values", values);
  if (has_bias) check_same_device(op, x, "bias", *bias_opt);
  TORCH_CHECK_VALUE(out_features >= 0, op, ": expected `out_features` >= 0, got ", out_features);
  TORCH_CHECK_VALUE(crow.size(0) == rows + 1, op, ": expected `crow` to have ", rows + 1,
                    " entries for out_features = ", out_features, ", got ", crow.size(0));
  TORCH_CHECK_VALUE(col.size(0) == values.size(0), op,
                    ": expected `col` to have one entry per stored value/block (", values.size(0),
                    "), got ", col.size(0));
}

// Python's -(-a // b) for b >= 1 (floor division): the ceiling for a >= 0.
int64_t py_ceil_div(int64_t a, int64_t b) {
  const int64_t na = -a;
  int64_t q = na / b;
  if ((na % b != 0) && ((na < 0) != (b < 0))) --q;  // floor
  return -q;
}

at::Tensor bsr_linear_cuda(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                           const at::Tensor& values, int64_t out_features,
                           const std::optional<at::Tensor>& bias_opt) {
  constexpr const char* op = "bsr_linear";
  const int64_t rows =
      values.dim() == 3 ? py_ceil_div(out_features, std::max<int64_t>(values.size(1), 1)) : 0;
  check_compressed(op, x, crow, col, values, out_features, bias_opt, 3, rows);
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const int64_t N = out_features;
  check_sizes(op, x, N);
  TORCH_CHECK_VALUE(values.size(0) <= std::numeric_limits<int32_t>::max(), op,
                    ": expected at most 2^31 - 1 stored blocks, got ", values.size(0));

  c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0), K = x.size(1);
  const int64_t nnzb = values.size(0), bn = values.size(1), bk = values.size(2);
  if (M == 0 || N == 0) return at::empty({M, N}, x.options());
  const at::Tensor bias_f = has_bias ? bias_opt->to(at::kFloat).contiguous() : at::Tensor();
  if (K == 0 || nnzb == 0 || bn == 0 || bk == 0) return bias_only(x, N, bias_f);
  TORCH_CHECK_VALUE(bn <= kIntMax && bk <= kIntMax, op, ": block shape too large, got values ",
                    py_shape(values));

  const at::Tensor crow_c = crow.contiguous();
  const at::Tensor col_c = col.contiguous();
  at::Tensor out = at::empty({M, N}, x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const SparseDtype dt = sparse_dtype(x.scalar_type());
  const float* bp = has_bias ? bias_f.const_data_ptr<float>() : nullptr;
  cudaError_t err;
  if (x.scalar_type() != at::kFloat && bsr_mma_block_supported(static_cast<int>(bn), static_cast<int>(bk)) &&
      has_tensor_cores(x.device())) {
    // x: 16-byte rows with K % 8 == 0, else a zero-padded copy (x is small next to W; the padding
    // columns are zero, so K may be passed rounded up). values: contiguous and 16-byte aligned.
    const int64_t Kp = round_up(K, 8);
    at::Tensor x_op = x;
    int64_t ldx = vec_row_stride(x, 8, Kp);
    if (ldx < 0) {
      x_op = padded_copy(x, Kp);
      ldx = Kp;
    }
    const at::Tensor v_op = aligned_contiguous(values);
    err = bsr_linear_mma(x_op.const_data_ptr(), ldx, crow_c.const_data_ptr<int32_t>(),
                         col_c.const_data_ptr<int32_t>(), v_op.const_data_ptr(), nnzb,
                         static_cast<int>(bn), static_cast<int>(bk), bp, out.mutable_data_ptr(), N,
                         dt, static_cast<int>(M), static_cast<int>(N), static_cast<int>(Kp), stream);
  } else {
    at::Tensor x_op;
    const int64_t ldx = scalar_row_stride(x, x_op);
    const at::Tensor v_op = values.contiguous();
    err = bsr_linear_simple(x_op.const_data_ptr(), ldx, crow_c.const_data_ptr<int32_t>(),
                            col_c.const_data_ptr<int32_t>(), v_op.const_data_ptr(), nnzb,
                            static_cast<int>(bn), static_cast<int>(bk), bp, out.mutable_data_ptr(),
                            N, dt, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
                            stream);
  }
  CHECK_LAUNCH(op, err, "M=", M, ", N=", N, ", K=", K, ", block=(", bn, ", ", bk, ")");
  return out;
}

at::Tensor csr_linear_cuda(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                           const at::Tensor& values, int64_t out_features,
                           const std::optional<at::Tensor>& bias_opt) {
  constexpr const char* op = "csr_linear";
  check_compressed(op, x, crow, col, values, out_features, bias_opt, 1, out_features);
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const int64_t N = out_features;
  check_sizes(op, x, N);
  TORCH_CHECK_VALUE((x.size(0) + 15) / 16 <= 65535, op, ": expected at most 1048560 rows of x, got ",
                    x.size(0));

  c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0), K = x.size(1), nnz = values.size(0);
  if (M == 0 || N == 0) return at::empty({M, N}, x.options());
  const at::Tensor bias_f = has_bias ? bias_opt->to(at::kFloat).contiguous() : at::Tensor();
  if (K == 0 || nnz == 0) return bias_only(x, N, bias_f);

  at::Tensor x_op;
  const int64_t ldx = scalar_row_stride(x, x_op);
  const at::Tensor crow_c = crow.contiguous();
  const at::Tensor col_c = col.contiguous();
  const at::Tensor v_op = values.contiguous();
  const int64_t scratch_elems = csr_linear_scratch_elems(static_cast<int>(M), static_cast<int>(K));
  const at::Tensor scratch =
      scratch_elems > 0 ? at::empty({scratch_elems}, x.options()) : at::Tensor();
  at::Tensor out = at::empty({M, N}, x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const cudaError_t err = csr_linear(
      x_op.const_data_ptr(), ldx, scratch_elems > 0 ? scratch.mutable_data_ptr() : nullptr,
      crow_c.const_data_ptr<int32_t>(), col_c.const_data_ptr<int32_t>(), v_op.const_data_ptr(), nnz,
      has_bias ? bias_f.const_data_ptr<float>() : nullptr, out.mutable_data_ptr(), N,
      sparse_dtype(x.scalar_type()), static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
      stream);
  CHECK_LAUNCH(op, err, "M=", M, ", N=", N, ", K=", K, ", nnz=", nnz);
  return out;
}

}  // namespace
}  // namespace compress

TORCH_LIBRARY_IMPL(compress, CUDA, m) {
  m.impl("sparse24_linear", &compress::sparse24_linear_cuda);
  m.impl("bsr_linear", &compress::bsr_linear_cuda);
  m.impl("csr_linear", &compress::csr_linear_cuda);
}
