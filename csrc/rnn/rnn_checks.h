// Input checks of the RNN ops' torch glue, shared by the CPU kernels (rnn_cpu.cpp) and the CUDA
// glue (rnn_cuda.cpp, rnn_backward_cuda.cpp): the checks of compress/ops/rnn.py with its messages
// (the ops can be called directly through torch.ops.compress.*, so each kernel checks everything it
// relies on). `xg` fixes the device: check_xg takes the device type the kernel runs on, every
// other tensor must then be on xg's device.
//
// Shapes (compress/ops/rnn.py): T steps, B batch rows, H hidden units, P state width (LSTM
// proj_size, else H), G gates (4 LSTM, 3 GRU).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

namespace compress::rnn_checks {

using OptTensor = std::optional<at::Tensor>;

// `t` on `dev`, of `dtype` and `dim`-D.
void check_tensor(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype, int64_t dim,
                  const at::Device& dev);

// `t` of exactly `shape`; `what` says where that shape comes from.
void check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape,
                 const std::string& what);

// xg [T, B, G*H] on a `where` device (at::kCPU or at::kCUDA), float32 / bfloat16 / float16;
// returns H.
int64_t check_xg(const char* op, const at::Tensor& xg, int64_t G, at::DeviceType where);

// lengths [B] int64 on `dev`, if given.
void check_lengths(const char* op, const OptTensor& lengths, int64_t B, const at::Device& dev);

// The LSTM projection w_hr [P, H] of xg's dtype on xg's device, if given; returns P (H without one).
int64_t check_w_hr(const char* op, const OptTensor& w_hr, const at::Tensor& xg, int64_t H);

// h0 [B, P], c0 [B, H] of xg's dtype, and lengths.
void check_lstm_states(const char* op, const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& c0, int64_t H,
                       int64_t P, const OptTensor& lengths);

// h0 [B, H] and b_hh [3H] (if given) of xg's dtype, and lengths.
void check_gru_states(const char* op, const at::Tensor& xg, const at::Tensor& h0, const OptTensor& b_hh, int64_t H,
                      const OptTensor& lengths);

// An int8 weight q [rows, cols] and its float32 per-row scales s [rows].
void check_w8(const char* op, const char* qname, const at::Tensor& q, const char* sname, const at::Tensor& s,
              int64_t rows, int64_t cols, const at::Device& dev);

// All of lstm_layer_w8's arguments: qw_hr and w_hr_scale both given or both None, xg, qw_hh [4H, P]
// int8 with w_hh_scale [4H], the projection qw_hr [P, H] with w_hr_scale [P], the states. Returns
// {H, P} (P = H without a projection).
std::pair<int64_t, int64_t> check_lstm_layer_w8(const char* op, const at::Tensor& xg, const at::Tensor& h0,
                                                const at::Tensor& c0, const at::Tensor& qw_hh,
                                                const at::Tensor& w_hh_scale, const OptTensor& qw_hr,
                                                const OptTensor& w_hr_scale, const OptTensor& lengths,
                                                at::DeviceType where);

// The tensors of a BSR [rows, K] weight (rows = G*H) of `dtype`: crow [rows / bn + 1], col [nnz]
// int32, values [nnz, bn, bk] with bn dividing H (a block row must not straddle the H-row gates).
void check_bsr_shapes(const char* op, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                      at::ScalarType dtype, int64_t rows, int64_t H, int64_t K, const at::Device& dev);

// The index contents the kernels rely on, from host copies of crow [R + 1] and col [nnz]: crow
// non-decreasing from 0 to nnz, col in [0, ceil(K / bk)).
void check_bsr_indices(const char* op, const int32_t* crow, const int32_t* col, int64_t R, int64_t nnz, int64_t K,
                       int64_t bk);

}  // namespace compress::rnn_checks
