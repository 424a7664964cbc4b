// Shared pieces of the sparse linear CPU kernels (csr_linear, bsr_linear, sparse24_linear):
// input checks, crow / col validation, work splitting, scratch memory, dtype conversion, the
// output write-back and the ops' drivers (the transposed-x scheme of csr and 2:4 is in
// sparse_cpu_rows.h). Vector pieces have an AVX-512 form (compiled with a target attribute; the
// build has no -march) and a plain C++ form for other CPUs, chosen per call by use_avx512().
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"
#include "cpu_features.h"
#include "cpu_parallel.h"  // parallel_tasks: torch's threads; fn must not throw (bad input is flagged)

#if defined(__x86_64__)
#include <immintrin.h>
#define SPARSE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm256_undefined_si256()
// (GCC bug 105593) wherever the conversions below are inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#endif

namespace compress::sparse_cpu {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool use_avx512() {
#if defined(__x86_64__)
  return active_cpu_isa() == CpuIsa::Avx512Vnni;
#else
  return false;
#endif
}

// ------------------------------------------------------------------------------------ checks

using compress::py_shape;  // common.h's; rnn_cpu.cpp takes it from here

// Python's _check_tensor(op, name, t, _FLOAT_DTYPES, dim).
inline void check_float_tensor(const char* op, const char* name, const at::Tensor& t, int64_t dim) {
  check_float_dtype(op, name, t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": expected `", name, "` to be ", dim, "-D, got ", t.dim(),
                    "-D with shape ", t.sizes());
}

// crow [R + 1] must start at 0, end at nnz and never decrease: then every row's range
// [crow[r], crow[r + 1]) lies inside [0, nnz). O(R), done before any kernel runs.
inline void check_crow(const char* op, const int32_t* crow, int64_t R, int64_t nnz) {
  COMPRESS_CHECK(op, crow[0] == 0, "expected `crow[0]` to be 0, got ", crow[0]);
  for (int64_t r = 0; r < R; ++r)
    COMPRESS_CHECK(op, crow[r] <= crow[r + 1], "expected `crow` to be non-decreasing, got crow[", r,
                   "] = ", crow[r], " > crow[", r + 1, "] = ", crow[r + 1]);
  COMPRESS_CHECK(op, crow[R] == nnz, "expected `crow[-1]` to be col.size(0) = ", nnz, ", got ", crow[R]);
}

// Raises for the first col entry outside [0, limit); kernels check col as they read it and call
// this (serially, error path only) when they found one.
inline void check_col(const char* op, const int32_t* col, int64_t nnz, int64_t limit, const char* what) {
  for (int64_t i = 0; i < nnz; ++i)
    COMPRESS_CHECK(op, col[i] >= 0 && col[i] < limit, "expected `col` entries in [0, ", limit, ") (", what,
                   "), got col[", i, "] = ", col[i]);
}

// The checks csr_linear and bsr_linear share, in the order of compress/ops/sparse.py's
// _check_compressed: index dtypes and ranks, x, values (values_dim), bias, devices, out_features.
inline void check_compressed_args(const char* op, const at::Tensor& x, const at::Tensor& crow,
                                  const at::Tensor& col, const at::Tensor& values, int64_t values_dim,
                                  int64_t out_features, const c10::optional<at::Tensor>& bias_opt) {
  COMPRESS_CHECK_DTYPE(op, crow, at::kInt);
  COMPRESS_CHECK_DIM(op, crow, 1);
  COMPRESS_CHECK_DTYPE(op, col, at::kInt);
  COMPRESS_CHECK_DIM(op, col, 1);
  check_float_tensor(op, "x", x, 2);
  COMPRESS_CHECK_DTYPE(op, values, x.scalar_type());
  COMPRESS_CHECK_DIM(op, values, values_dim);
  if (bias_opt.has_value()) {
    const at::Tensor& bias = *bias_opt;
    check_float_tensor(op, "bias", bias, 1);
    COMPRESS_CHECK(op, bias.size(0) == out_features, "expected `bias` to have ", out_features,
                   " elements (out_features), got ", bias.size(0));
    COMPRESS_CHECK_DEVICE(op, bias, at::kCPU);
  }
  COMPRESS_CHECK_DEVICE(op, x, at::kCPU);
  COMPRESS_CHECK_DEVICE(op, crow, at::kCPU);
  COMPRESS_CHECK_DEVICE(op, col, at::kCPU);
  COMPRESS_CHECK_DEVICE(op, values, at::kCPU);
  COMPRESS_CHECK(op, out_features >= 0, "expected `out_features` >= 0, got ", out_features);
}

// --------------------------------------------------------------------------- threads, memory

// Number of tasks for `work` multiply-adds: one per thread, or one when the call is too small to
// pay for waking the pool.
inline int64_t task_count(int64_t work) {
  return work < (int64_t{1} << 16) ? 1 : std::max<int64_t>(1, at::get_num_threads());
}

// Splits rows [0, R) into `parts` contiguous ranges of about equal cost, a row costing
// (crow[r + 1] - crow[r]) + row_cost. crow must already be validated (non-decreasing).
inline std::vector<int64_t> split_rows(const int32_t* crow, int64_t R, int64_t parts, int64_t row_cost) {
  std::vector<int64_t> b(parts + 1, R);
  b[0] = 0;
  const int64_t total = crow[R] + row_cost * R;
  for (int64_t t = 1; t < parts; ++t) {
    const int64_t target = total * t / parts;
    int64_t lo = b[t - 1], hi = R;  // first r with crow[r] + row_cost * r >= target
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (crow[mid] + row_cost * mid < target) lo = mid + 1;
      else hi = mid;
    }
    b[t] = lo;
  }
  return b;
}

// Float scratch owned by the calling thread and kept between calls (a fresh allocation costs a
// page fault per 4 KiB on every call); above 16 MiB a temporary tensor in `holder` instead.
inline float* scratch(int slot, int64_t n, at::Tensor& holder) {
  if (n > (int64_t{4} << 20)) {
    holder = at::empty({n}, at::TensorOptions().dtype(at::kFloat));
    return holder.data_ptr<float>();
  }
  thread_local std::vector<float> buf[2];
  std::vector<float>& v = buf[slot];
  if ((int64_t)v.size() < n + 16) v.resize(n + 16);
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(v.data()) + 63) & ~uintptr_t{63});
}

// ---------------------------------------------------------------------------- dtype conversion

template <typename T>
inline float to_f(T v) { return static_cast<float>(v); }
template <typename T>
inline T from_f(float v) { return static_cast<T>(v); }  // c10 rounds to nearest even

#if defined(__x86_64__)
// 16 elements of T (lanes outside `m` read as 0) -> 16 floats.
template <typename T>
SPARSE_AVX512 inline __m512 load16(const T* p, __mmask16 m);
template <>
SPARSE_AVX512 inline __m512 load16<float>(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
template <>
SPARSE_AVX512 inline __m512 load16<c10::BFloat16>(const c10::BFloat16* p, __mmask16 m) {
  const __m512i u = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}
template <>
SPARSE_AVX512 inline __m512 load16<c10::Half>(const c10::Half* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

// 16 floats -> T at p, lanes in `m` only; rounding to nearest even as c10 does (NaN -> quiet NaN).
template <typename T>
SPARSE_AVX512 inline void store16(T* p, __m512 v, __mmask16 m);
template <>
SPARSE_AVX512 inline void store16<float>(float* p, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }
template <>
SPARSE_AVX512 inline void store16<c10::BFloat16>(c10::BFloat16* p, __m512 v, __mmask16 m) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(r));
}
template <>
SPARSE_AVX512 inline void store16<c10::Half>(c10::Half* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

SPARSE_AVX512 inline __mmask16 lanes(int64_t n) { return n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1); }

// In-place transpose of a 16 x 16 float block held in 16 registers.
SPARSE_AVX512 inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + j], 128-bit chunk L: column 4L + j of rows 4i .. 4i + 3
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  __m512 o[16];
  for (int j = 0; j < 4; ++j) {
    const __m512 a = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88), b = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
    const __m512 c = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
    const __m512 d = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
    o[j] = _mm512_shuffle_f32x4(a, c, 0x88);
    o[8 + j] = _mm512_shuffle_f32x4(a, c, 0xDD);
    o[4 + j] = _mm512_shuffle_f32x4(b, d, 0x88);
    o[12 + j] = _mm512_shuffle_f32x4(b, d, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = o[i];
}
#endif

// out[m][k] = float(x[m * s0 + k * s1]): x as float rows with unit stride (the BSR kernel's input).
template <typename T>
void convert_rows(const T* x, int64_t s0, int64_t s1, int64_t M, int64_t K, float* out, bool avx);

#if defined(__x86_64__)
template <typename T>
SPARSE_AVX512 void convert_rows_avx512(const T* x, int64_t s0, int64_t M, int64_t K, float* out) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; k += 16)
      _mm512_mask_storeu_ps(out + m * K + k, lanes(K - k), load16<T>(x + m * s0 + k, lanes(K - k)));
}
#endif

template <typename T>
void convert_rows(const T* x, int64_t s0, int64_t s1, int64_t M, int64_t K, float* out, bool avx) {
#if defined(__x86_64__)
  if (avx && s1 == 1) return convert_rows_avx512<T>(x, s0, M, K, out);
#endif
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) out[m * K + k] = to_f(x[m * s0 + k * s1]);
}

// ---------------------------------------------------------------------------------- write-back

// y[m][n0 + j] = T(src[m * lds + j] + bias[n0 + j]) for m < M, j < nn.
template <typename T>
void store_rows(const float* src, int64_t lds, int64_t M, int64_t nn, const float* bias, int64_t n0, T* y,
                int64_t ldy, bool avx);

#if defined(__x86_64__)
template <typename T>
SPARSE_AVX512 void store_rows_avx512(const float* src, int64_t lds, int64_t M, int64_t nn, const float* bias,
                                     int64_t n0, T* y, int64_t ldy) {
  for (int64_t j = 0; j < nn; j += 16) {
    const __mmask16 m = lanes(nn - j);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + n0 + j) : _mm512_setzero_ps();
    for (int64_t i = 0; i < M; ++i)
      store16<T>(y + i * ldy + n0 + j, _mm512_add_ps(_mm512_maskz_loadu_ps(m, src + i * lds + j), b), m);
  }
}
#endif

template <typename T>
void store_rows(const float* src, int64_t lds, int64_t M, int64_t nn, const float* bias, int64_t n0, T* y,
                int64_t ldy, bool avx) {
#if defined(__x86_64__)
  if (avx) return store_rows_avx512<T>(src, lds, M, nn, bias, n0, y, ldy);
#endif
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < nn; ++j) y[i * ldy + n0 + j] = from_f<T>(src[i * lds + j] + (bias ? bias[n0 + j] : 0.f));
}

// y [M, N] = bias (or zeros): the result when K = 0 or nothing is stored.
inline at::Tensor bias_only(const at::Tensor& x, int64_t N, const c10::optional<at::Tensor>& bias) {
  at::Tensor y = at::empty({x.size(0), N}, x.options());  // never a view of bias
  if (bias.has_value()) return y.copy_(bias->unsqueeze(0).expand({x.size(0), N}));
  return y.zero_();
}

// -------------------------------------------------------------------------------- op drivers

// The operands of the three ops in the kernels' form: run(val, bias) with val the values
// (contiguous) as const T*, T the C++ type of x's dtype (float, c10::BFloat16 or c10::Half; the
// values share it), and bias float32 (contiguous) or nullptr. Returns what run returns.
template <class Run>
decltype(auto) with_operands(const at::Tensor& x, const at::Tensor& values, const c10::optional<at::Tensor>& bias_opt,
                             const Run& run) {
  const at::Tensor vals = values.contiguous();
  const at::Tensor bias = bias_opt.has_value() ? bias_opt->to(at::kFloat).contiguous() : at::Tensor();
  const float* bias_p = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  return dispatch_float(x.scalar_type(), [&](auto t) {
    using T = decltype(t);
    return run(vals.const_data_ptr<T>(), bias_p);
  });
}

// What csr_linear and bsr_linear do once their shapes are checked. crow [R + 1] is validated
// first; col entries must lie in [0, col_limit) (`what` names the limit in the message): the
// kernels check them as they read them, and only a failed call walks col for the message.
// run(crow, col, val, bias, y) fills y [M, N] (x's dtype; val and bias as with_operands gives
// them) and returns false on an entry out of range.
template <class Run>
at::Tensor compressed_linear(const char* op, const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                             const at::Tensor& values, int64_t N, int64_t R, int64_t col_limit, const char* what,
                             const c10::optional<at::Tensor>& bias_opt, const Run& run) {
  const int64_t M = x.size(0), K = x.size(1), nnz = col.size(0);
  const at::Tensor crow_c = crow.contiguous(), col_c = col.contiguous();
  const int32_t* crow_p = crow_c.const_data_ptr<int32_t>();
  const int32_t* col_p = col_c.const_data_ptr<int32_t>();
  check_crow(op, crow_p, R, nnz);
  if (M == 0 || N == 0 || K == 0 || nnz == 0) {
    check_col(op, col_p, nnz, col_limit, what);
    return bias_only(x, N, bias_opt);
  }
  at::Tensor y = at::empty({M, N}, x.options());
  const bool ok = with_operands(x, values, bias_opt, [&](const auto* val, const float* bias) {
    return run(crow_p, col_p, val, bias, y);
  });
  if (!ok) {
    check_col(op, col_p, nnz, col_limit, what);
    TORCH_CHECK(false, op, ": internal error: the kernel rejected a valid `col`");
  }
  return y;
}

}  // namespace compress::sparse_cpu
