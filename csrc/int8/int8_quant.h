// Activation quantization and weight-only int8 GEMV (CUDA, sm_80+). Plain C++ header: no torch.
// Kernels: csrc/int8/int8_quant.cu. Torch glue: csrc/int8/int8_linear_cuda.cpp.
//
// All launchers are asynchronous on `stream` and return the launch error (cudaGetLastError), or
// cudaErrorInvalidValue without launching anything when a precondition below is violated.
#pragma once

#include <cstdint>

#include <driver_types.h>  // cudaError_t, cudaStream_t

namespace compress {

// Element type of a floating-point activation / output (runtime switch between instantiations).
enum class FloatDtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// ---- quantize_per_token -------------------------------------------------------------------------
// Symmetric per-row int8 quantization, bit-identical to compress/ops/int8.py's reference on the
// CPU (every step one IEEE float32 operation):
//   absmax[r] = max_k |x[r, k]|                   (NaN anywhere in the row -> NaN)
//   scale[r]  = absmax > 0 ? absmax / 127 : 1.0   (IEEE division; a NaN absmax gives 1.0)
//   q[r, k]   = clamp(rint(x[r, k] / scale[r]), -127, 127)   (rint: half to even; NaN -> 0)
//
//   x      [R, K] of `dtype`, row r at x + r * ldx (elements), elements of a row contiguous.
//          Any alignment of the element type (rows need not be 16-byte aligned: each row is
//          split into a scalar head, 16-byte vectors and a scalar tail). ldx >= 0 (0: one row
//          repeated, as an expanded tensor).
//   q      int8 [R, K] contiguous (row stride K); 4- / 8-byte vector stores where aligned.
//   scale  float32 [R], contiguous.
// Preconditions: R >= 0, 0 <= K <= 2^31 - 1024, ldx >= 0, x aligned to its element size and
// non-null when R > 0 and K > 0, q non-null when R > 0 and K > 0, scale non-null and 4-byte
// aligned when R > 0. R == 0 launches nothing; K == 0 writes scale = 1.0 only.
cudaError_t quantize_per_token(const void* x, FloatDtype dtype, int64_t R, int64_t K, int64_t ldx,
                               int8_t* q, float* scale, cudaStream_t stream);

// ---- w8a16 GEMV (weight-only int8) --------------------------------------------------------------
// out[m, n] = (sum_k float(x[m, k]) * float(qw[n, k])) * w_scale[n] + bias[n]
// float32 accumulation (per lane in k order, then a warp tree), float32 epilogue (multiply, then
// add; no FMA), one round-to-nearest-even conversion to `dtype`. For the memory-bound small-M
// case: every weight byte is read from memory exactly once per call.
//
//   x        [M, K] of `dtype`, row stride ldx (elements), rows contiguous
//   qw       int8 [N, K], row stride ldw (bytes): the nn.Linear weight layout
//   w_scale  float32 [N] contiguous;  bias float32 [N] contiguous or nullptr (nothing added)
//   out      [M, N] of `dtype`, row stride ldo (elements)
// Preconditions: 0 <= M <= kW8A16MaxM, N >= 0, K >= 0, K % 16 == 0, ldw % 16 == 0, qw 16-byte
// aligned, ldx >= K and ldo >= N (when M > 1), x and out aligned to their element size,
// w_scale non-null, float pointers 4-byte aligned, N, K <= 2^31 - 1024. Pointers may be null
// only where nothing is read (K == 0: x, qw). M == 0 or N == 0 launches nothing; K == 0 writes
// 0 * w_scale + bias.
constexpr int kW8A16MaxM = 16;
cudaError_t w8a16_gemv(const void* x, FloatDtype dtype, int64_t ldx, const int8_t* qw, int64_t ldw,
                       const float* w_scale, const float* bias, void* out, int64_t ldo, int M,
                       int N, int K, cudaStream_t stream);

}  // namespace compress
