// The RNN ops' shared input checks (rnn_checks.h), in the order of compress/ops/rnn.py's.
#include "rnn/rnn_checks.h"

#include <c10/util/Exception.h>

#include "common.h"
#include "sparse/sparse_cpu.h"  // py_shape, check_crow, check_col

namespace compress::rnn_checks {

using sparse_cpu::py_shape;

void check_tensor(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype, int64_t dim,
                  const at::Device& dev) {
  TORCH_CHECK_VALUE(t.device() == dev, op, ": expected `", name, "` on ", dev, ", got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": expected `", name, "` to be ", dtype_name(dtype), ", got ",
                   dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": expected `", name, "` to be ", dim, "-D, got ", t.dim(),
                    "-D with shape ", py_shape(t.sizes()));
}

void check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape,
                 const std::string& what) {
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": expected `", name, "` of shape ", py_shape(shape), " (", what,
                    "), got ", py_shape(t.sizes()));
}

int64_t check_xg(const char* op, const at::Tensor& xg, int64_t G, at::DeviceType where) {
  const bool cpu = where == at::kCPU;
  TORCH_CHECK_VALUE(xg.device().type() == where, op, ": expected `xg` on ", cpu ? "cpu" : "a CUDA device", ", got ",
                    xg.device());
  const auto t = xg.scalar_type();
  TORCH_CHECK_TYPE(is_float(t), op, ": expected `xg` to be torch.float32 or torch.bfloat16 or torch.float16, got ",
                   dtype_name(t));
  // The CPU kernel prints this shape as c10 does ([2, 3]), the CUDA glue as Python ((2, 3)): kept,
  // so that no message changes.
  TORCH_CHECK_VALUE(xg.dim() == 3, op, ": expected `xg` to be 3-D, got ", xg.dim(), "-D with shape ",
                    cpu ? c10::str(xg.sizes()) : py_shape(xg.sizes()));
  COMPRESS_CHECK(op, xg.size(2) % G == 0, "expected `xg` to be [T, B, ", G, "H] (", G, " gates), got last dim ",
                 xg.size(2), ", not divisible by ", G);
  return xg.size(2) / G;
}

void check_lengths(const char* op, const OptTensor& lengths, int64_t B, const at::Device& dev) {
  if (!lengths.has_value()) return;
  check_tensor(op, "lengths", *lengths, at::kLong, 1, dev);
  check_shape(op, "lengths", *lengths, {B}, "one length per batch row");
}

int64_t check_w_hr(const char* op, const OptTensor& w_hr, const at::Tensor& xg, int64_t H) {
  if (!w_hr.has_value()) return H;
  check_tensor(op, "w_hr", *w_hr, xg.scalar_type(), 2, xg.device());
  const int64_t P = w_hr->size(0);
  check_shape(op, "w_hr", *w_hr, {P, H}, "[P, H] with H = xg.shape[2] / 4 = " + std::to_string(H));
  return P;
}

void check_lstm_states(const char* op, const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& c0, int64_t H,
                       int64_t P, const OptTensor& lengths) {
  const int64_t B = xg.size(1);
  check_tensor(op, "h0", h0, xg.scalar_type(), 2, xg.device());
  check_tensor(op, "c0", c0, xg.scalar_type(), 2, xg.device());
  check_shape(op, "h0", h0, {B, P}, "[B, P] with B = xg.shape[1] = " + std::to_string(B));
  check_shape(op, "c0", c0, {B, H}, "[B, H] with B = " + std::to_string(B) + ", H = " + std::to_string(H));
  check_lengths(op, lengths, B, xg.device());
}

void check_gru_states(const char* op, const at::Tensor& xg, const at::Tensor& h0, const OptTensor& b_hh, int64_t H,
                      const OptTensor& lengths) {
  const int64_t B = xg.size(1);
  check_tensor(op, "h0", h0, xg.scalar_type(), 2, xg.device());
  if (b_hh.has_value()) {
    check_tensor(op, "b_hh", *b_hh, xg.scalar_type(), 1, xg.device());
    check_shape(op, "b_hh", *b_hh, {3 * H}, "[3H] with H = " + std::to_string(H));
  }
  check_shape(op, "h0", h0, {B, H}, "[B, H] with B = xg.shape[1] = " + std::to_string(B));
  check_lengths(op, lengths, B, xg.device());
}

void check_w8(const char* op, const char* qname, const at::Tensor& q, const char* sname, const at::Tensor& s,
              int64_t rows, int64_t cols, const at::Device& dev) {
  check_tensor(op, qname, q, at::kChar, 2, dev);
  check_tensor(op, sname, s, at::kFloat, 1, dev);
  check_shape(op, qname, q, {rows, cols}, "the float weight's shape");
  check_shape(op, sname, s, {rows}, std::string("one scale per row of `") + qname + "`");
}

std::pair<int64_t, int64_t> check_lstm_layer_w8(const char* op, const at::Tensor& xg, const at::Tensor& h0,
                                                const at::Tensor& c0, const at::Tensor& qw_hh,
                                                const at::Tensor& w_hh_scale, const OptTensor& qw_hr,
                                                const OptTensor& w_hr_scale, const OptTensor& lengths,
                                                at::DeviceType where) {
  COMPRESS_CHECK(op, qw_hr.has_value() == w_hr_scale.has_value(),
                 "expected `qw_hr` and `w_hr_scale` both given or both None");
  const int64_t H = check_xg(op, xg, 4, where);
  const at::Device dev = xg.device();
  if (qw_hr.has_value()) check_tensor(op, "qw_hr", *qw_hr, at::kChar, 2, dev);
  const int64_t P = qw_hr.has_value() ? qw_hr->size(0) : H;
  check_w8(op, "qw_hh", qw_hh, "w_hh_scale", w_hh_scale, 4 * H, P, dev);
  if (qw_hr.has_value()) check_w8(op, "qw_hr", *qw_hr, "w_hr_scale", *w_hr_scale, P, H, dev);
  check_lstm_states(op, xg, h0, c0, H, P, lengths);
  return {H, P};
}

void check_bsr_shapes(const char* op, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                      at::ScalarType dtype, int64_t rows, int64_t H, int64_t K, const at::Device& dev) {
  check_tensor(op, "crow", crow, at::kInt, 1, dev);
  check_tensor(op, "col", col, at::kInt, 1, dev);
  check_tensor(op, "values", values, dtype, 3, dev);
  const int64_t bn = values.size(1), bk = values.size(2);
  COMPRESS_CHECK(op, bn >= 1 && bk >= 1 && H % bn == 0, "expected `values` blocks [nnz, bn, bk] with bn dividing H = ",
                 H, " (a block row must lie within one gate), got ", py_shape(values.sizes()));
  check_shape(op, "crow", crow, {rows / bn + 1},
              "one entry per block row of the [" + std::to_string(rows) + ", " + std::to_string(K) +
                  "] weight, plus 1");
  check_shape(op, "col", col, {values.size(0)}, "one block column per stored block");
}

void check_bsr_indices(const char* op, const int32_t* crow, const int32_t* col, int64_t R, int64_t nnz, int64_t K,
                       int64_t bk) {
  sparse_cpu::check_crow(op, crow, R, nnz);
  sparse_cpu::check_col(op, col, nnz, (K + bk - 1) / bk, "block columns: ceil(P / bk)");
}

}  // namespace compress::rnn_checks
