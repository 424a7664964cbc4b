// CPU implementations of compress::quantize_per_token and compress::w8a16_linear (schemas and
// exact semantics: compress/ops/int8.py).
//
// quantize_per_token: one pass for the absmax, one to quantize, per row; rows split across
//   threads (cpu_parallel.h). Bit-identical to the reference: IEEE float32 division (vdivps / operator/), round
//   half to even (roundscale / nearbyint in the default rounding mode), NaN handled as the
//   reference does (a NaN row gets scale 1; a NaN quotient becomes 0).
// w8a16_linear: out[m, n] = (sum_k x[m, k] * qw[n, k]) * w_scale[n] + bias[n], float32
//   accumulation. Output rows n are split across threads; for each n, the int8 weight row is
//   widened to float32 16 at a time and multiplied into up to 8 rows of x at once, so each weight
//   byte is read once per 8 rows (the small-M case is weight-bandwidth bound).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common.h"
#include "cpu_features.h"
#include "cpu_parallel.h"

namespace compress {
namespace {

// ---- float32 rows from any supported dtype -----------------------------------------------------
// Rows are converted into a float32 scratch buffer first (exact for bf16 / fp16): the kernels
// below then see float32 only, one instantiation each.
void row_to_float(const at::Tensor& x2, int64_t r, float* dst) {
  const int64_t K = x2.size(1), sk = x2.stride(1);
  switch (x2.scalar_type()) {
    case at::kFloat: {
      const float* p = x2.const_data_ptr<float>() + r * x2.stride(0);
      if (sk == 1) std::copy(p, p + K, dst);
      else for (int64_t k = 0; k < K; ++k) dst[k] = p[k * sk];
      break;
    }
    case at::kBFloat16: {
      const c10::BFloat16* p = x2.const_data_ptr<c10::BFloat16>() + r * x2.stride(0);
      for (int64_t k = 0; k < K; ++k) dst[k] = static_cast<float>(p[k * sk]);
      break;
    }
    default: {
      const c10::Half* p = x2.const_data_ptr<c10::Half>() + r * x2.stride(0);
      for (int64_t k = 0; k < K; ++k) dst[k] = static_cast<float>(p[k * sk]);
      break;
    }
  }
}

void check_float(const char* op, const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, op, ": expected `", name,
                   "` to be torch.float32 or torch.bfloat16 or torch.float16, got ", dtype_name(s));
}

// ---- quantize one float32 row -------------------------------------------------------------------
float quantize_row_scalar(const float* x, int64_t K, int8_t* q) {
  float amax = 0.f;
  bool nan = false;
  for (int64_t k = 0; k < K; ++k) {
    nan |= std::isnan(x[k]);
    amax = std::max(amax, std::fabs(x[k]));
  }
  const float scale = (!nan && amax > 0.f) ? amax / 127.f : 1.f;
  for (int64_t k = 0; k < K; ++k) {
    float v = std::nearbyint(x[k] / scale);
    v = std::isnan(v) ? 0.f : std::min(std::max(v, -127.f), 127.f);
    q[k] = static_cast<int8_t>(v);
  }
  return scale;
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512vl")))
float quantize_row_avx512(const float* x, int64_t K, int8_t* q) {
  __m512 amax = _mm512_setzero_ps();
  __mmask16 nan = 0;
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m512 v = _mm512_loadu_ps(x + k);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
  }
  float a = _mm512_reduce_max_ps(amax);
  bool has_nan = nan != 0;
  for (; k < K; ++k) {
    has_nan |= std::isnan(x[k]);
    a = std::max(a, std::fabs(x[k]));
  }
  const float scale = (!has_nan && a > 0.f) ? a / 127.f : 1.f;
  const __m512 vs = _mm512_set1_ps(scale), lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
  for (k = 0; k + 16 <= K; k += 16) {
    __m512 v = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x + k), vs),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);  // NaN -> 0
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
  }
  for (; k < K; ++k) {
    float v = std::nearbyint(x[k] / scale);
    q[k] = static_cast<int8_t>(std::isnan(v) ? 0.f : std::min(std::max(v, -127.f), 127.f));
  }
  return scale;
}
#endif

std::tuple<at::Tensor, at::Tensor> quantize_per_token_cpu(const at::Tensor& x) {
  constexpr const char* op = "quantize_per_token";
  COMPRESS_CHECK(op, x.device().is_cpu(), "expected `x` on the CPU, got ", x.device());
  check_float(op, x, "x");
  COMPRESS_CHECK(op, x.dim() >= 1, "expected `x` to have at least 1 dim, got a 0-D tensor");
  const int64_t K = x.size(-1);
  auto lead = x.sizes().slice(0, x.dim() - 1);
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  at::Tensor scale = at::empty(lead, x.options().dtype(at::kFloat));
  const int64_t R = scale.numel();
  if (R == 0) return {q, scale};
  if (K == 0) return {q, scale.fill_(1.f)};
  const at::Tensor x2 = x.reshape({R, K});
  int8_t* qp = q.mutable_data_ptr<int8_t>();
  float* sp = scale.mutable_data_ptr<float>();
#if defined(__x86_64__)
  const bool vec = active_cpu_isa() == CpuIsa::Avx512Vnni;  // the AVX-512 level of cpu_features
#endif
  parallel_range(R, std::max<int64_t>(1, 16384 / K), [&](int64_t r0, int64_t r1) {
    std::vector<float> row(K);
    for (int64_t r = r0; r < r1; ++r) {
      row_to_float(x2, r, row.data());
#if defined(__x86_64__)
      sp[r] = vec ? quantize_row_avx512(row.data(), K, qp + r * K) : quantize_row_scalar(row.data(), K, qp + r * K);
#else
      sp[r] = quantize_row_scalar(row.data(), K, qp + r * K);
#endif
    }
  });
  return {q, scale};
}

// ---- w8a16 ----------------------------------------------------------------------------------------
constexpr int kRows = 8;  // rows of x sharing one pass over a weight row

// acc[i] = sum_k x[i][k] * w[k] for i < rows (rows <= kRows), x rows float32 contiguous.
void dot_rows_scalar(const float* const* x, int rows, const int8_t* w, int64_t K, float* acc) {
  for (int i = 0; i < rows; ++i) acc[i] = 0.f;
  for (int64_t k = 0; k < K; ++k) {
    const float wk = static_cast<float>(w[k]);
    for (int i = 0; i < rows; ++i) acc[i] += x[i][k] * wk;
  }
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512vl")))
void dot_rows_avx512(const float* const* x, int rows, const int8_t* w, int64_t K, float* acc) {
  __m512 a[kRows];
  for (int i = 0; i < kRows; ++i) a[i] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m512 wk = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k))));
    for (int i = 0; i < kRows; ++i)
      if (i < rows) a[i] = _mm512_fmadd_ps(_mm512_loadu_ps(x[i] + k), wk, a[i]);
  }
  if (k < K) {
    const __mmask16 m = static_cast<__mmask16>((1u << (K - k)) - 1);
    const __m512 wk = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, w + k)));
    for (int i = 0; i < kRows; ++i)
      if (i < rows) a[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x[i] + k), wk, a[i]);
  }
  for (int i = 0; i < rows; ++i) acc[i] = _mm512_reduce_add_ps(a[i]);
}
#endif

void store(at::Tensor& out, int64_t m, int64_t n, float v) {
  const int64_t i = m * out.stride(0) + n;
  switch (out.scalar_type()) {
    case at::kFloat: out.mutable_data_ptr<float>()[i] = v; break;
    case at::kBFloat16: out.mutable_data_ptr<c10::BFloat16>()[i] = c10::BFloat16(v); break;
    default: out.mutable_data_ptr<c10::Half>()[i] = c10::Half(v); break;
  }
}

at::Tensor w8a16_linear_cpu(const at::Tensor& x, const at::Tensor& qw, const at::Tensor& w_scale,
                            const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "w8a16_linear";
  COMPRESS_CHECK(op, x.device().is_cpu(), "expected `x` on the CPU, got ", x.device());
  check_float(op, x, "x");
  COMPRESS_CHECK_DIM(op, x, 2);
  COMPRESS_CHECK_DTYPE(op, qw, at::kChar);
  COMPRESS_CHECK_DIM(op, qw, 2);
  COMPRESS_CHECK_DTYPE(op, w_scale, at::kFloat);
  COMPRESS_CHECK_DIM(op, w_scale, 1);
  if (bias) {
    check_float(op, *bias, "bias");
    COMPRESS_CHECK_DIM(op, (*bias), 1);
  }
  COMPRESS_CHECK_DEVICE(op, qw, x.device());
  COMPRESS_CHECK_DEVICE(op, w_scale, x.device());
  if (bias) COMPRESS_CHECK_DEVICE(op, (*bias), x.device());
  const int64_t M = x.size(0), K = x.size(1), N = qw.size(0);
  COMPRESS_CHECK(op, qw.size(1) == K, "expected `qw` to be [N, K] with K = x.shape[1] = ", K, ", got shape ",
                 qw.sizes());
  COMPRESS_CHECK(op, w_scale.size(0) == N, "expected `w_scale` to have qw.shape[0] = ", N, " elements, got ",
                 w_scale.size(0));
  if (bias)
    COMPRESS_CHECK(op, bias->size(0) == N, "expected `bias` to have qw.shape[0] = ", N, " elements, got ",
                   bias->size(0));

  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  const at::Tensor w = qw.contiguous();
  const at::Tensor ws = w_scale.contiguous();
  const at::Tensor b = bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
  // x as contiguous float32 rows (exact); the weight is the large operand and is read once.
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const float* xp = xf.const_data_ptr<float>();
  const int8_t* wp = w.const_data_ptr<int8_t>();
  const float* wsp = ws.const_data_ptr<float>();
  const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
#if defined(__x86_64__)
  const bool vec = active_cpu_isa() == CpuIsa::Avx512Vnni;
#endif
  parallel_range(N, std::max<int64_t>(1, 65536 / std::max<int64_t>(K * M, 1)), [&](int64_t n0, int64_t n1) {
    float acc[kRows];
    const float* rows[kRows];
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t m0 = 0; m0 < M; m0 += kRows) {
        const int cnt = static_cast<int>(std::min<int64_t>(kRows, M - m0));
        for (int i = 0; i < cnt; ++i) rows[i] = xp + (m0 + i) * K;
#if defined(__x86_64__)
        if (vec) dot_rows_avx512(rows, cnt, wp + n * K, K, acc);
        else dot_rows_scalar(rows, cnt, wp + n * K, K, acc);
#else
        dot_rows_scalar(rows, cnt, wp + n * K, K, acc);
#endif
        for (int i = 0; i < cnt; ++i) store(out, m0 + i, n, acc[i] * wsp[n] + (bp ? bp[n] : 0.f));
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace compress

TORCH_LIBRARY_IMPL(compress, CPU, m) {
  m.impl("quantize_per_token", &compress::quantize_per_token_cpu);
  m.impl("w8a16_linear", &compress::w8a16_linear_cpu);
}
