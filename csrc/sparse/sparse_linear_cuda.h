// Sparse-weight linear layers on CUDA: y [M, N] = x [M, K] @ W^T + bias, W stored 2:4 / BSR / CSR
// (formats: compress/formats/sparse.py; op semantics: compress/ops/sparse.py). Plain C++ header:
// no torch. Kernels: sparse24_linear.cu, bsr_linear.cu, csr_linear.cu (this folder); torch glue:
// sparse_linear_cuda.cpp.
//
// Common to every launcher below:
//   x      [M, K] of `dtype`, row m at x + m * ldx (elements), elements of a row contiguous.
//   out    [M, N] of `dtype`, row m at out + m * ldo (elements); every element written once.
//   bias   float32 [N] contiguous, or nullptr (nothing added).
//   y[m, n] = round_to_dtype(acc[m, n] + bias[n]), acc a float32 sum of products (the order of the
//   additions is the kernel's: tensor-core k-steps, or per-lane partial sums and a warp tree).
//   M, N, K >= 0 and <= 2^31 - 1024; M == 0 or N == 0 launches nothing; K == 0 (or nothing
//   stored) writes bias (or zeros). Asynchronous on `stream`; returns the launch error
//   (cudaGetLastError), or cudaErrorInvalidValue without launching when a precondition fails.
//
// Index arrays are read on the device and NOT validated (that would need a device -> host copy,
// i.e. a synchronization on every call). The kernels are memory-safe for any contents: a row /
// block-row range [crow[r], crow[r + 1]) is clamped into [0, nnz] (an end below its start reads
// as empty), and a col entry outside the matrix contributes nothing. Malformed index arrays give
// an unspecified result, never an out-of-bounds access.
#pragma once

#include <cstdint>

#include <driver_types.h>  // cudaError_t, cudaStream_t

namespace compress {

// Element type of x, the stored weight values and out (one runtime switch per launcher).
enum class SparseDtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// ---- 2:4 ------------------------------------------------------------------------------------------
//   values [N, K/2] of `dtype`, row stride ldv (elements); meta uint8 [N, K/4], row stride ldm
//   (bytes), bits 0-1 / 2-3 of byte g = positions of the two kept weights of inputs 4g..4g+3.
//
// sparse24_linear_mma: bfloat16 / float16 on sparse tensor cores (mma.sp m16n8k32, sm_80+; the
// caller checks the device). Preconditions: dtype 16-bit; K % kSparse24KAlign == 0; ldx % 8 == 0,
// ldv % 8 == 0 (16-byte rows) and ldm % 16 == 0 (each only when that matrix has more than one
// row); x, values, meta 16-byte aligned; out 2-byte aligned; ldo >= N when M > 1. The portable meta
// is converted to the hardware metadata layout in the kernel (no prepack, nothing cached). A
// group whose first position is not below its second (never written by pack_2_4) is computed as
// if its meta were (0, 1): the hardware leaves unordered metadata undefined.
constexpr int kSparse24KAlign = 64;
cudaError_t sparse24_linear_mma(const void* x, int64_t ldx, const void* values, int64_t ldv,
                                const uint8_t* meta, int64_t ldm, const float* bias, void* out,
                                int64_t ldo, SparseDtype dtype, int M, int N, int K,
                                cudaStream_t stream);

// sparse24_linear_sm90: the same operation with wgmma.mma_async.sp + TMA (sparse24_sm90.cu), for
// large M on compute capability 9.0 only (the caller checks the device: the kernel traps on any
// other). Same preconditions as sparse24_linear_mma, plus M >= 1, K >= 1 and TMA's: x, values,
// meta 16-byte aligned with row strides in bytes multiples of 16 and below 2^40 (which the
// sparse24_linear_mma preconditions imply, bar the bound). Returns cudaErrorNotSupported WITHOUT
// launching when TMA cannot describe the operands or the driver lacks cuTensorMapEncodeTiled:
// the caller then runs sparse24_linear_mma. Not yet run on a GPU (see sparse24_sm90.cu).
cudaError_t sparse24_linear_sm90(const void* x, int64_t ldx, const void* values, int64_t ldv,
                                 const uint8_t* meta, int64_t ldm, const float* bias, void* out,
                                 int64_t ldo, SparseDtype dtype, int M, int N, int K,
                                 cudaStream_t stream);

// sparse24_linear_simple: any dtype, any device the build runs on; decodes the weight and uses
// float32 FMA (correctness over speed; the float32 path). Preconditions: K % 4 == 0; pointers
// aligned to their element size; ldx, ldv, ldm >= 0. Meta positions are used as given, as the
// reference does (a group with first == second adds both values at that position).
cudaError_t sparse24_linear_simple(const void* x, int64_t ldx, const void* values, int64_t ldv,
                                   const uint8_t* meta, int64_t ldm, const float* bias, void* out,
                                   int64_t ldo, SparseDtype dtype, int M, int N, int K,
                                   cudaStream_t stream);

// ---- BSR ------------------------------------------------------------------------------------------
//   crow int32 [ceil(N / bn) + 1], col int32 [nnzb] (block-column index), values [nnzb, bn, bk] of
//   `dtype`, contiguous. Block (r, c) covers W[r*bn : (r+1)*bn, c*bk : (c+1)*bk]; rows >= N and
//   columns >= K of an edge block are ignored (the format zero-pads them).
//
// bsr_linear_mma: bfloat16 / float16 on tensor cores (mma.sync m16n8k16, sm_80+), for
// bn, bk in {16, 32, 64} (bsr_mma_block_supported). One CTA per (block row, 64 rows of x) walks
// that block row's stored blocks. Preconditions: K % 8 == 0, ldx % 8 == 0 (when M > 1), x and
// values 16-byte aligned, out 2-byte aligned, ldo >= N when M > 1, nnzb <= 2^31 - 1.
bool bsr_mma_block_supported(int bn, int bk);
cudaError_t bsr_linear_mma(const void* x, int64_t ldx, const int32_t* crow, const int32_t* col,
                           const void* values, int64_t nnzb, int bn, int bk, const float* bias,
                           void* out, int64_t ldo, SparseDtype dtype, int M, int N, int K,
                           cudaStream_t stream);

// bsr_linear_simple: any dtype, any bn, bk >= 1; a warp per (output feature, 8 rows of x).
cudaError_t bsr_linear_simple(const void* x, int64_t ldx, const int32_t* crow, const int32_t* col,
                              const void* values, int64_t nnzb, int bn, int bk, const float* bias,
                              void* out, int64_t ldo, SparseDtype dtype, int M, int N, int K,
                              cudaStream_t stream);

// ---- CSR ------------------------------------------------------------------------------------------
//   crow int32 [N + 1], col int32 [nnz], values [nnz] of `dtype`, contiguous.
//
// A warp per output feature (row of W) and per chunk of up to 16 rows of x: lanes stride over the
// row's stored entries, gather x[chunk, col] and accumulate in float32; a warp reduce-scatter
// leaves one output per lane. x is first copied, transposed, into `scratch`
// ([chunks][K][MV], MV = the chunk width rounded up to a power of two), so that one stored entry
// reads its MV x values as one contiguous vector through L1; for M == 1 x is read in place and
// `scratch` may be null. scratch: csr_linear_scratch_elems(M, K) elements of `dtype`, 16-byte
// aligned. Preconditions: pointers aligned to their element size, ldx >= 0, ldo >= N when M > 1.
int64_t csr_linear_scratch_elems(int M, int K);
cudaError_t csr_linear(const void* x, int64_t ldx, void* scratch, const int32_t* crow,
                       const int32_t* col, const void* values, int64_t nnz, const float* bias,
                       void* out, int64_t ldo, SparseDtype dtype, int M, int N, int K,
                       cudaStream_t stream);

}  // namespace compress
