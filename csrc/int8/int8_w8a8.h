// Fused dynamic W8A8 linear for small M (decode), CUDA sm_80+. Plain C++ header: no torch.
// Kernel: csrc/int8/int8_w8a8.cu. Torch glue: csrc/int8/int8_linear_cuda.cpp (w8a8_linear_cuda).
//
//   (q, s)    = quantize_per_token(x)     bit-identical to int8_quant.h's quantize_per_token
//   out[m, n] = round_to_out(((float(sum_k q[m, k] * qw[n, k]) * s[m]) * w_scale[n]) + bias[n])
//               the epilogue of int8_gemm_tn_dequant (int8_gemm.h), every step one IEEE op
// so the result is bit-identical to quantize_per_token + int8_gemm_tn_dequant (and to
// compress/ops/int8.py's w8a8_linear_reference), in one launch, q and s never leaving the SM.
//
//   x        [M, K] of `dtype` (FloatDtype, int8_quant.h), row m at x + m * ldx (elements), the
//            elements of a row contiguous; any alignment of the element type; ldx >= 0 (0: one
//            row repeated, as an expanded tensor).
//   qw       int8 [N, Kw], row stride ldw (bytes), 16-byte aligned, ldw % 16 == 0; Kw = K rounded
//            up to a multiple of 16, the columns K..Kw-1 zero (a zero-padded copy for odd K).
//   w_scale  float32 [N] contiguous;  bias float32 [N] contiguous or nullptr (nothing added).
//   out      [M, N] of `dtype`, row stride ldo (elements).
// Preconditions (else cudaErrorInvalidValue, nothing launched): 1 <= M <= kW8A8MaxM, K >= 1,
// N >= 0, w8a8_gemv_fits(M, K), N, K <= 2^31 - 1024, ldo >= N when M > 1, pointers
// non-null and aligned to their element size. N == 0 launches nothing.
// Asynchronous on `stream`; returns the launch error (cudaGetLastError).
#pragma once

#include <cstdint>

#include <driver_types.h>  // cudaError_t, cudaStream_t

#include "int8_quant.h"  // FloatDtype

namespace compress {

constexpr int kW8A8MaxM = 16;

// Whether all M quantized rows of x fit the kernel's shared memory (M * K rounded up to 512 bytes,
// at most 96 KiB: below every sm_80+ part's opt-in limit, 99 KiB on sm_86 / sm_89).
bool w8a8_gemv_fits(int64_t M, int64_t K);

cudaError_t w8a8_gemv(const void* x, FloatDtype dtype, int64_t ldx, const int8_t* qw, int64_t ldw,
                      const float* w_scale, const float* bias, void* out, int64_t ldo, int M,
                      int N, int K, cudaStream_t stream);

}  // namespace compress
