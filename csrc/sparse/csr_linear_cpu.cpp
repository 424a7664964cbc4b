// compress::csr_linear on the CPU: y [M, N] = x [M, K] @ W^T + bias, W [N, K] in CSR
// (crow int32 [N + 1], col int32 [nnz], values [nnz] of x's dtype), float32 accumulation.
//
// x is transposed once into float panels xT[k][lanes] (sparse_cpu_rows.h: tiles of up to 64 rows of
// M, 16 / 32 / 64 lanes), so every stored weight (k, v) of row n costs one broadcast of v and one
// FMA per 16 lanes into row n's accumulators. Values and columns are read 16 at a time: one vector
// converts the values to float, one vector compare validates the 16 columns against K, so the
// O(nnz) bounds check costs no extra pass over memory. Rows are split across torch's threads by
// nnz. At small M the call streams the weights once from memory (bandwidth-bound).
#include <torch/library.h>

#include "sparse/sparse_cpu_rows.h"

namespace compress {
namespace {
using namespace sparse_cpu;

constexpr const char* kOp = "csr_linear";

template <typename T>
struct CsrArgs {
  const int32_t* crow;
  const int32_t* col;
  const T* val;
  int64_t K;
};

#if defined(__x86_64__)
// Rows n0 .. n0 + nr - 1 into acc[r][16 * MV]. U independent accumulator sets per row hide the
// FMA latency (U * MV >= 4 chains).
template <typename T, int MV>
SPARSE_AVX512 bool csr_rows_avx512(const CsrArgs<T>& a, int64_t n0, int nr, const float* panel, float* acc) {
  constexpr int W = 16 * MV, U = MV == 1 ? 4 : 2;
  // col < kmax as unsigned: rejects negatives too (kmax <= 2^31 keeps them above it).
  const __m512i kmax = _mm512_set1_epi32((int32_t)(uint32_t)std::min<int64_t>(a.K, int64_t{1} << 31));
  for (int r = 0; r < nr; ++r) {
    const int64_t e1 = a.crow[n0 + r + 1];
    __m512 s[U][MV];
    for (int u = 0; u < U; ++u)
      for (int j = 0; j < MV; ++j) s[u][j] = _mm512_setzero_ps();
    for (int64_t e = a.crow[n0 + r]; e < e1; e += 16) {
      const int cnt = (int)std::min<int64_t>(16, e1 - e);
      const __mmask16 m = lanes(cnt);
      const int32_t* col = a.col + e;
      const T* val = a.val + e;
      // The weights stream from memory: prefetching 256 entries ahead was measured ~20% faster
      // (the hardware prefetchers alone leave the loop waiting on each new line).
      _mm_prefetch((const char*)(col + 256), _MM_HINT_T0);
      _mm_prefetch((const char*)(val + 256), _MM_HINT_T0);
      // Validates the 16 columns at once, then reads them again as scalars (from L1) for the
      // addresses.
      if (_mm512_mask_cmpge_epu32_mask(m, _mm512_maskz_loadu_epi32(m, col), kmax)) return false;
      const Bcast16 b(load16<T>(val, m));
      if (cnt == 16) {
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) bcast_fma<MV>(s[i % U], b[i], panel + (int64_t)col[i] * W);
      } else {  // the row's last step: the same chains, so that it is not latency-bound
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i)
          if (i < cnt) bcast_fma<MV>(s[i % U], b[i], panel + (int64_t)col[i] * W);
      }
    }
    for (int j = 0; j < MV; ++j) {
      __m512 t = s[0][j];
      for (int u = 1; u < U; ++u) t = _mm512_add_ps(t, s[u][j]);
      _mm512_storeu_ps(acc + r * W + 16 * j, t);
    }
  }
  return true;
}
#endif

template <typename T>
bool csr_rows_scalar(const CsrArgs<T>& a, int64_t n0, int nr, const float* panel, int64_t w, float* acc) {
  for (int r = 0; r < nr; ++r) {
    float* out = acc + r * w;
    std::fill(out, out + w, 0.f);
    for (int64_t e = a.crow[n0 + r]; e < a.crow[n0 + r + 1]; ++e) {
      const int64_t c = a.col[e];
      if (c < 0 || c >= a.K) return false;
      const float v = to_f(a.val[e]);
      const float* p = panel + c * w;
      for (int64_t l = 0; l < w; ++l) out[l] += v * p[l];
    }
  }
  return true;
}

template <typename T>
bool csr_run(const at::Tensor& x, const int32_t* crow, const int32_t* col, const T* val, int64_t N, const float* bias,
             at::Tensor& y) {
  const CsrArgs<T> a{crow, col, val, x.size(1)};
  const bool avx = use_avx512();
  const int64_t nnz = a.crow[N];
  return run_rows<T>(x, N, a.crow, /*row_cost=*/8, nnz * x.size(0) + N, /*max_w=*/64, bias, y, avx,
                     [&](int64_t n0, int nr, const Tile& t, float* acc) {
#if defined(__x86_64__)
                       if (avx) {
                         if (t.w == 16) return csr_rows_avx512<T, 1>(a, n0, nr, t.panel, acc);
                         if (t.w == 32) return csr_rows_avx512<T, 2>(a, n0, nr, t.panel, acc);
                         return csr_rows_avx512<T, 4>(a, n0, nr, t.panel, acc);
                       }
#endif
                       return csr_rows_scalar<T>(a, n0, nr, t.panel, t.w, acc);
                     });
}

at::Tensor csr_linear_cpu(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                          const at::Tensor& values, int64_t out_features, const c10::optional<at::Tensor>& bias_opt) {
  // The checks and their order are check_csr_linear's (compress/ops/sparse.py).
  check_compressed_args(kOp, x, crow, col, values, 1, out_features, bias_opt);
  COMPRESS_CHECK(kOp, crow.size(0) == out_features + 1, "expected `crow` to have ", out_features + 1,
                 " entries for out_features = ", out_features, ", got ", crow.size(0));
  COMPRESS_CHECK(kOp, col.size(0) == values.size(0), "expected `col` to have one entry per stored value/block (",
                 values.size(0), "), got ", col.size(0));

  const int64_t N = out_features;
  return compressed_linear(kOp, x, crow, col, values, N, /*R=*/N, /*col_limit=*/x.size(1), "in_features = x.shape[1]",
                           bias_opt, [&](const int32_t* crow_p, const int32_t* col_p, const auto* val,
                                         const float* bias, at::Tensor& y) {
                             return csr_run(x, crow_p, col_p, val, N, bias, y);
                           });
}

}  // namespace

COMPRESS_REGISTER_CPU(csr_linear, csr_linear_cpu)

}  // namespace compress
