// CPU implementations of compress::quantize_per_token and compress::w8a16_linear (schemas and
// exact semantics: compress/ops/int8.py).
//
// quantize_per_token: one pass for the absmax, one to quantize, per row; rows split across
//   threads (cpu_parallel.h). Bit-identical to the reference: IEEE float32 division (vdivps / operator/), round
//   half to even (roundscale / nearbyint in the default rounding mode), NaN handled as the
//   reference does (a NaN row gets scale 1; a NaN quotient becomes 0).
// w8a16_linear: out[m, n] = (sum_k x[m, k] * qw[n, k]) * w_scale[n] + bias[n], float32
//   accumulation; output columns n split across threads. With AVX-512: small M streams the
//   weight once, 4 rows widened to float32 at a time against every row of x (rows_tile); larger M
//   runs a float32 GEMM on the weight widened while packed (f32gemm). Otherwise (dot_rows) each
//   weight row is widened and multiplied into up to 8 rows of x at once.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>  // at::get_num_threads
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
#include "int8/int8_cpu.h"  // thread_scratch, transpose_16x16_dwords
#include "int8/int8_cpu_checks.h"

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
  COMPRESS_CHECK_FLOAT(op, x);
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
// w8a16 on AVX-512 CPUs takes one of two paths (one thread, 4096 x 4096 weight; the float32
// nn.Linear, MKL, in brackets): M = 1: 1.2 ms (4.3), 4: 2.0 (11), 16: 6.1 (13.6), 128: 44 (66).
#define W8A16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))

// Small M, rows_tile: the weight streamed once, 4 rows at a time. Otherwise f32gemm, whose packing
// of the weight (0.2 ns per element from memory) then pays: 16x1024x1024 0.38 vs 0.60 ms,
// 64x4096x4096 23 vs 24; while 32x4096x4096 13.4 vs 12.1 and 16x4096x4096 8.1 vs 6.1.
bool use_rows_tile(int64_t M, int64_t N, int64_t K) {
  return M < 8 || (M <= 32 && N * K >= (int64_t{1} << 22));
}

// out[0:MR, n : n + nr] for 4 weight rows at a time; each 16 k of them widened to float32 once and
// used for every row of x, so x (in L2) is read once per 4 multiply-adds (the loop of dot_rows,
// a weight row at a time, reads it once per multiply-add: 4x4096x4096 took 4.9 ms, this 2.0).
// x: MR rows of stride ldx, zero padded to a multiple of 16; W: rows of stride ldw.
template <int MR>
W8A16_TARGET void rows_tile(const float* x, int64_t ldx, const int8_t* W, int64_t ldw, int64_t K, float* sums,
                            int nr) {
  constexpr int NR = 4;
  static_assert(MR * NR <= 16, "one hsum16");
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  const int8_t* w[NR];
  for (int n = 0; n < NR; ++n) w[n] = W + std::min(n, nr - 1) * ldw;
  // The last partial 16 bytes of each weight row, copied so that every load is a plain one (as
  // dot::tile in int8_mm_cpu.cpp: x's zero padding makes the bytes past K irrelevant).
  const int64_t kfull = K / 16 * 16;
  alignas(16) int8_t wtail[NR][16];
  if (kfull < K)
    for (int n = 0; n < NR; ++n) std::memcpy(wtail[n], w[n] + kfull, K - kfull);
  for (int64_t k = 0; k < K; k += 16) {
    __m512 wv[NR];
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) {
      if (k % 64 == 0) _mm_prefetch((const char*)(w[n] + NR * ldw + k), _MM_HINT_T1);  // the next tile
      const int8_t* p = k < kfull ? w[n] + k : wtail[n];
      wv[n] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + m * ldx + k);
#pragma GCC unroll 4
      for (int n = 0; n < NR; ++n) acc[m * NR + n] = _mm512_fmadd_ps(xv, wv[n], acc[m * NR + n]);
    }
  }
  _mm512_storeu_ps(sums, int8_cpu::hsum16(acc));  // sums[m * 4 + n]
}

// A float32 GEMM: C[M, N] = x[M, K] . W[N, K]^T, W widened to float32 while it is packed (GotoBLAS
// blocking, as int8_mm_cpu.cpp). A 6 x 64 tile of sums stays in registers over a KC-deep panel of
// W: 95-98 GFLOPS on one core (MKL's float32 GEMM here: 67).
namespace f32gemm {

constexpr int MR = 6, NR = 64;               // 24 zmm of sums + 4 of W + 1 broadcast of x
constexpr int64_t KC = 512, NC = 256;        // a packed block of 512 KiB: in L2

// W[n0 : n0 + nc, k0 : k0 + kc] (int8, row n at w + n * ldw) -> panels of 64 columns, panel j at
// out + j * kc * 64 as [kc][64] float32, zero past nc.
W8A16_TARGET void pack_w(const int8_t* w, int64_t ldw, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* out) {
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t j = 0; j * 64 < nc; ++j)
    for (int q = 0; q < 4; ++q) {
      const int64_t n = n0 + 64 * j + 16 * q, cols = std::min<int64_t>(16, nc - 64 * j - 16 * q);
      float* o = out + j * kc * 64 + 16 * q;
      for (int64_t k = 0; k < kc; k += 64) {
        const __mmask64 mask = kc - k >= 64 ? ~0ULL : (1ULL << (kc - k)) - 1;
        __m512i r[16], v[16];
        for (int c = 0; c < 16; ++c)
          r[c] = c < cols ? _mm512_maskz_loadu_epi8(mask, w + (n + c) * ldw + k0 + k) : zero;
        int8_cpu::transpose_16x16_dwords(r, v);  // v[g]: k = 4g .. 4g + 3 of the 16 columns
        for (int g = 0; g < 16 && k + 4 * g < kc; ++g)
          for (int b = 0; b < 4 && k + 4 * g + b < kc; ++b)  // byte b of each dword, sign extended
            _mm512_storeu_ps(o + (k + 4 * g + b) * 64,
                             _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v[g], 24 - 8 * b), 24)));
      }
    }
}

// C[0:mr, 0:nr] (row stride ldc) = (accumulate ? C : 0) + x[0:mr, 0:kc] . B; x rows at stride ldx,
// B one panel [kc][64]. kFull: mr == MR (as in int8_mm_cpu.cpp's kernels).
template <bool kFull>
W8A16_TARGET void kernel(const float* x, int64_t ldx, const float* B, int64_t kc, float* C, int64_t ldc, int mr,
                         int nr, bool accumulate) {
  const float* a[MR];  // rows past mr repeat the last one; their results are dropped
  for (int i = 0; i < MR; ++i) a[i] = x + std::min(i, mr - 1) * ldx;
  __m512 acc[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int q = 0; q < 4; ++q) acc[i][q] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k, B += 64) {
    const __m512 b0 = _mm512_loadu_ps(B), b1 = _mm512_loadu_ps(B + 16);
    const __m512 b2 = _mm512_loadu_ps(B + 32), b3 = _mm512_loadu_ps(B + 48);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      if (!kFull && i >= mr) break;
      const __m512 av = _mm512_set1_ps(a[i][k]);
      acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
      acc[i][2] = _mm512_fmadd_ps(av, b2, acc[i][2]);
      acc[i][3] = _mm512_fmadd_ps(av, b3, acc[i][3]);
    }
  }
  alignas(64) float tile[MR][64];  // acc indexed by constants only (see int8_mm_cpu.cpp)
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) _mm512_store_ps(tile[i] + 16 * q, acc[i][q]);
  for (int q = 0; q < 4 && 16 * q < nr; ++q) {
    const __mmask16 m = nr - 16 * q >= 16 ? 0xFFFF : (__mmask16)((1u << (nr - 16 * q)) - 1);
    for (int i = 0; i < mr; ++i) {
      float* c = C + i * ldc + 16 * q;
      __m512 v = _mm512_load_ps(tile[i] + 16 * q);
      if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, c));
      _mm512_mask_storeu_ps(c, m, v);
    }
  }
}

// c[M, N] (contiguous) = x[M, K] (contiguous) . w[N, K]^T (contiguous); K > 0.
void gemm(const float* x, const int8_t* w, int64_t M, int64_t N, int64_t K, float* c) {
  // Threads split N (each packs only its own columns of W), M only when N has too few panels.
  const int64_t mpanels = (M + MR - 1) / MR, npanels = (N + NR - 1) / NR;
  const int64_t nt = M * N * K < (1 << 20) ? 1 : at::get_num_threads();
  const int64_t items_n = std::min(nt, npanels), items_m = std::min((nt + items_n - 1) / items_n, mpanels);
  parallel_tasks(items_n * items_m, [&](int64_t item) {
    float* bpack = reinterpret_cast<float*>(int8_cpu::thread_scratch(0, KC * NC * sizeof(float)));
    const int64_t im = item / items_n, in = item % items_n;
    const int64_t m0 = im * mpanels / items_m * MR, m1 = std::min(M, (im + 1) * mpanels / items_m * MR);
    const int64_t n0 = in * npanels / items_n * NR, n1 = std::min(N, (in + 1) * npanels / items_n * NR);
    for (int64_t jc = n0; jc < n1; jc += NC) {
      const int64_t nc = std::min(NC, n1 - jc);
      for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = std::min(KC, K - pc);
        pack_w(w, K, pc, kc, jc, nc, bpack);
        for (int64_t j = 0; j * NR < nc; ++j)
          for (int64_t i = m0; i < m1; i += MR) {
            const int mr = (int)std::min<int64_t>(MR, m1 - i), nr = (int)std::min<int64_t>(NR, nc - j * NR);
            auto kern = mr == MR ? &kernel<true> : &kernel<false>;
            kern(x + i * K + pc, K, bpack + j * kc * NR, kc, c + i * N + jc + j * NR, N, mr, nr, pc > 0);
          }
      }
    }
  });
}

}  // namespace f32gemm
#endif  // __x86_64__

void store(at::Tensor& out, int64_t m, int64_t n, float v) {
  const int64_t i = m * out.stride(0) + n;
  switch (out.scalar_type()) {
    case at::kFloat: out.mutable_data_ptr<float>()[i] = v; break;
    case at::kBFloat16: out.mutable_data_ptr<c10::BFloat16>()[i] = c10::BFloat16(v); break;
    default: out.mutable_data_ptr<c10::Half>()[i] = c10::Half(v); break;
  }
}

// out[m, n] = T(acc[m, n] * w_scale[n] + bias[n]) (out may be acc itself); rows split across threads.
template <typename T>
void scale_rows(const float* acc, const float* ws, const float* bias, T* out, int64_t M, int64_t N) {
  parallel_range(M, std::max<int64_t>(1, 16384 / N), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n)
        out[m * N + n] = static_cast<T>(acc[m * N + n] * ws[n] + (bias ? bias[n] : 0.f));
  });
}

at::Tensor w8a16_linear_cpu(const at::Tensor& x, const at::Tensor& qw, const at::Tensor& w_scale,
                            const std::optional<at::Tensor>& bias_opt) {
  constexpr const char* op = "w8a16_linear";
  const at::Tensor bias = bias_opt.value_or(at::Tensor());  // named so for the checks' messages
  COMPRESS_CHECK(op, x.device().is_cpu(), "expected `x` on the CPU, got ", x.device());
  COMPRESS_CHECK_FLOAT(op, x);
  COMPRESS_CHECK_DIM(op, x, 2);
  int8_cpu::check_weight_dtypes(op, qw, /*x_scale=*/at::Tensor(), w_scale, bias);
  COMPRESS_CHECK_DEVICE(op, qw, x.device());
  COMPRESS_CHECK_DEVICE(op, w_scale, x.device());
  if (bias.defined()) COMPRESS_CHECK_DEVICE(op, bias, x.device());
  int8_cpu::check_weight_sizes(op, "x", x, qw, /*x_scale=*/at::Tensor(), w_scale, bias);

  const int64_t M = x.size(0), K = x.size(1), N = qw.size(0);
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  const at::Tensor w = qw.contiguous();
  const at::Tensor ws = w_scale.contiguous();
  const at::Tensor b = bias.defined() ? bias.to(at::kFloat).contiguous() : at::Tensor();
  // x as contiguous float32 rows (exact); the weight is the large operand and is read once.
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const float* xp = xf.const_data_ptr<float>();
  const int8_t* wp = w.const_data_ptr<int8_t>();
  const float* wsp = ws.const_data_ptr<float>();
  const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
#if defined(__x86_64__)
  const bool vec = active_cpu_isa() == CpuIsa::Avx512Vnni;
  if (vec && K > 0 && !use_rows_tile(M, N, K)) {
    // The float32 sums, then out = sums * w_scale + bias in out's dtype, in place when float32.
    at::Tensor acc = out.scalar_type() == at::kFloat ? out : at::empty({M, N}, out.options().dtype(at::kFloat));
    float* ap = acc.mutable_data_ptr<float>();
    f32gemm::gemm(xp, wp, M, N, K, ap);
    switch (out.scalar_type()) {
      case at::kFloat: scale_rows(ap, wsp, bp, ap, M, N); break;
      case at::kBFloat16: scale_rows(ap, wsp, bp, out.mutable_data_ptr<c10::BFloat16>(), M, N); break;
      default: scale_rows(ap, wsp, bp, out.mutable_data_ptr<c10::Half>(), M, N);
    }
    return out;
  }
  if (vec && K > 0) {
    // x zero padded to rows of a multiple of 16 (M * K floats, small here); threads split N.
    const int64_t ldx = (K + 15) / 16 * 16;
    std::vector<float> xpad(M * ldx, 0.f);
    for (int64_t m = 0; m < M; ++m) std::copy(xp + m * K, xp + (m + 1) * K, xpad.data() + m * ldx);
    const int64_t tiles = (N + 3) / 4;
    parallel_range(tiles, std::max<int64_t>(1, 16384 / (K * M)), [&](int64_t t0, int64_t t1) {
      alignas(64) float sums[16];
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = 4 * t;
        const int nr = static_cast<int>(std::min<int64_t>(4, N - n));
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
          const int rows = static_cast<int>(std::min<int64_t>(4, M - m0));
          const float* xm = xpad.data() + m0 * ldx;
          switch (rows) {
            case 1: rows_tile<1>(xm, ldx, wp + n * K, K, K, sums, nr); break;
            case 2: rows_tile<2>(xm, ldx, wp + n * K, K, K, sums, nr); break;
            case 3: rows_tile<3>(xm, ldx, wp + n * K, K, K, sums, nr); break;
            default: rows_tile<4>(xm, ldx, wp + n * K, K, K, sums, nr);
          }
          for (int i = 0; i < rows; ++i)
            for (int j = 0; j < nr; ++j) store(out, m0 + i, n + j, sums[i * 4 + j] * wsp[n + j] + (bp ? bp[n + j] : 0.f));
        }
      }
    });
    return out;
  }
#endif
  parallel_range(N, std::max<int64_t>(1, 65536 / std::max<int64_t>(K * M, 1)), [&](int64_t n0, int64_t n1) {
    float acc[kRows];
    const float* rows[kRows];
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t m0 = 0; m0 < M; m0 += kRows) {
        const int cnt = static_cast<int>(std::min<int64_t>(kRows, M - m0));
        for (int i = 0; i < cnt; ++i) rows[i] = xp + (m0 + i) * K;
        dot_rows_scalar(rows, cnt, wp + n * K, K, acc);
        for (int i = 0; i < cnt; ++i) store(out, m0 + i, n, acc[i] * wsp[n] + (bp ? bp[n] : 0.f));
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace compress

// Written out, not COMPRESS_REGISTER_CPU (common.h): with the macro GCC inlines differently in this
// file (at::TensorBase::stride is no longer inlined into quantize_per_token's row loop).
TORCH_LIBRARY_IMPL(compress, CPU, m) {
  m.impl("quantize_per_token", &compress::quantize_per_token_cpu);
  m.impl("w8a16_linear", &compress::w8a16_linear_cpu);
}
TORCH_LIBRARY_IMPL(compress, BackendSelect, m) {
  compress::check_tensors_defined<&compress::quantize_per_token_cpu>(m, "quantize_per_token");
  compress::check_tensors_defined<&compress::w8a16_linear_cpu>(m, "w8a16_linear");
}
