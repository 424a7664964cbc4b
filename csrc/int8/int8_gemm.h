// int8 x int8 -> int32 GEMM on tensor cores (mma.sync m16n8k32, sm_80+). Plain C++ header: no torch.
//
//   C[m, n] = sum_k A[m, k] * Bt[n, k]      exact int32 accumulation (wraps like int32 on overflow,
//                                            which needs K > 2^31 / 128^2 = 131072 of worst-case values)
//
//   A   int8, row-major [M, K], row stride lda (elements = bytes)
//   Bt  int8, row-major [N, K], row stride ldb: B stored "column-major", the nn.Linear weight layout
//   C   int32, row-major [M, N], row stride ldc (elements)
//
// Preconditions (violations return cudaErrorInvalidValue, nothing is launched):
//   K % 16 == 0, lda % 16 == 0, ldb % 16 == 0, lda >= 0, ldb >= 0,
//   A and Bt 16-byte aligned, C 4-byte aligned, ldc >= N (when M > 1), pointers non-null,
//   M, N, K >= 0 and ceil(N / 32) <= 65535 (grid limit; N <= 2,097,120).
// M and N are otherwise arbitrary: edge tiles are predicated (zero-filled loads, bounds-checked
// stores). M == 0 or N == 0 returns cudaSuccess without launching; K == 0 writes zeros.
// The caller's A / Bt may be read up to the end of each row's K bytes only (never lda/ldb padding).
//
// Asynchronous on `stream`; returns the launch error (cudaGetLastError) so the caller can raise.
// Execution errors surface at the next synchronizing call, as for any kernel.
//
// Split-K (M <= 32 on a grid too small to fill the GPU; int8_gemm.cu's header comment): C is then
// zeroed (cudaMemsetAsync) and each K split adds its partial sums with int32 atomicAdd: the same
// values bit for bit (integer addition is associative), deterministic. COMPRESS_INT8_SPLITK=0 in
// the environment (read per call) switches it off. Not yet run on a GPU.
#pragma once

#include <cstddef>
#include <cstdint>

#include <driver_types.h>  // cudaError_t, cudaStream_t

namespace compress {

cudaError_t int8_gemm_tn(const int8_t* A, const int8_t* Bt, int32_t* C, int M, int N, int K,
                         int64_t lda, int64_t ldb, int64_t ldc, cudaStream_t stream);

// Output element type of int8_gemm_tn_dequant (a runtime switch inside one kernel).
enum class Int8OutDtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// The same GEMM (same kernel main loop, same tile configs) with a dequantizing epilogue fused in:
// the int32 accumulator never goes through memory.
//
//   out[m, n] = round_to_out(((float(acc[m, n]) * x_scale[m]) * w_scale[n]) + bias[n])
//
//   acc      the exact int32 sum of int8_gemm_tn, converted to float32 round-to-nearest-even
//   x_scale  float32 [M], contiguous;  w_scale float32 [N], contiguous
//   bias     float32 [N], contiguous, or nullptr (then nothing is added: -0.0 stays -0.0)
//   out      row-major [M, N] of `out_dtype`, row stride ldo (elements)
// Every float32 step is one IEEE round-to-nearest operation in exactly this order (no FMA
// contraction), and the final conversion to bfloat16 / float16 is round-to-nearest-even: the
// result is bit-identical to compress/ops/int8.py's int8_linear_reference while acc fits int32.
//
// Preconditions (violations return cudaErrorInvalidValue, nothing is launched): those of
// int8_gemm_tn for A, Bt, M, N, K, lda, ldb; plus out aligned to its element size, ldo >= N
// (when M > 1), x_scale and w_scale non-null, all float pointers 4-byte aligned, out_dtype one of
// the enum values. Pairs of adjacent outputs are stored as one 8-byte (float32) or 4-byte (16-bit)
// vector where out and ldo allow it. K == 0 writes the epilogue of a zero accumulator.
// Asynchronous on `stream`; returns the launch error, like int8_gemm_tn.
//
// Split-K (as int8_gemm_tn) needs an int32 [M, N] workspace: the partial sums are added there, then
// a second kernel applies the epilogue above (same code, bit-identical results). Pass `workspace`
// (4-byte aligned, stream-ordered like the other buffers) of workspace_bytes >=
// int8_gemm_tn_dequant_workspace_bytes(M, N, K); with nullptr nothing is split. A non-null
// workspace smaller than a split launch needs returns cudaErrorInvalidValue.
cudaError_t int8_gemm_tn_dequant(const int8_t* A, const int8_t* Bt, void* out,
                                 Int8OutDtype out_dtype, const float* x_scale,
                                 const float* w_scale, const float* bias, int M, int N, int K,
                                 int64_t lda, int64_t ldb, int64_t ldo, cudaStream_t stream,
                                 void* workspace = nullptr, size_t workspace_bytes = 0);

// Bytes of workspace int8_gemm_tn_dequant would use for these sizes on the current device: M * N * 4
// when it splits K, else 0 (also when COMPRESS_INT8_SPLITK=0). Host only; queries the device once.
size_t int8_gemm_tn_dequant_workspace_bytes(int M, int N, int K);

// ---- Hopper path (int8_gemm_sm90.cu): wgmma.mma_async + TMA, sm_90a only ---------------------
// NOT YET RUN ON A GPU (checked offline only; see int8_gemm_sm90.cu).
//
// Whether the two entry points below can run on CUDA device `device`: compute capability 9.0,
// a driver exposing cuTensorMapEncodeTiled, and a kernel image built for sm_90a (TORCH_CUDA_ARCH_LIST
// with "9.0a"; "9.0" or PTX from compute_80 holds a __trap() stub). Cached per device.
bool int8_gemm_sm90_supported(int device);

// int8_gemm_tn / int8_gemm_tn_dequant on the current device with the sm_90a kernel: the same
// math, results bit-identical to them, same preconditions plus lda > 0 and ldb > 0 (TMA row
// strides; the glue passes K for a single row). Returns cudaErrorNotSupported, launching nothing,
// where int8_gemm_sm90_supported(current device) is false. K == 0 is handed to int8_gemm_tn /
// int8_gemm_tn_dequant (a TMA tensor cannot be empty).
cudaError_t int8_gemm_tn_sm90(const int8_t* A, const int8_t* Bt, int32_t* C, int M, int N, int K,
                              int64_t lda, int64_t ldb, int64_t ldc, cudaStream_t stream);
cudaError_t int8_gemm_tn_dequant_sm90(const int8_t* A, const int8_t* Bt, void* out,
                                      Int8OutDtype out_dtype, const float* x_scale,
                                      const float* w_scale, const float* bias, int M, int N,
                                      int K, int64_t lda, int64_t ldb, int64_t ldo,
                                      cudaStream_t stream);

}  // namespace compress
