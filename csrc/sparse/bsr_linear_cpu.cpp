// compress::bsr_linear on the CPU: y [M, N] = x [M, K] @ W^T + bias, W [N, K] in BSR
// (crow int32 [ceil(N / bn) + 1], col int32 [nnzb] block columns, values [nnzb, bn, bk] of x's
// dtype, edge blocks zero-padded), float32 accumulation.
//
// Blocks are read in place, row-major as stored: the micro-kernel keeps 4 rows of W x 4 rows of x
// = 16 accumulators whose lanes run along k (16 k at a time, masked for bk % 16 and for the last
// block column where c * bk + bk > K, so nothing past K is ever read), walks every block of a
// block row, then reduces the 16 accumulators to 16 dot products in one horizontal-add tree.
// x is used in place when it is float32 with unit k-stride, else converted once to float rows.
// Block rows are split across torch's threads by stored blocks. Block rows past N (bottom edge)
// are skipped; the 4-row / 4-column tails of a tile repeat the last valid row of W / x and are
// discarded. Block columns are checked against ceil(K / bk) as each block row starts (O(nnzb)).
// Two costs measured and removed: the next block's lines are prefetched (~10%), and every loop
// over the accumulator array is unrolled (GCC otherwise spilled them on every k step: 2x).
#include <torch/library.h>

#include "sparse/sparse_cpu.h"

namespace compress {
namespace {
using namespace sparse_cpu;

constexpr const char* kOp = "bsr_linear";

template <typename T>
struct BsrArgs {
  const int32_t* crow;
  const int32_t* col;
  const T* val;  // [nnzb, bn, bk]
  int64_t bn, bk, K;
};

// The blocks e0 .. e1 - 1 of one block row, rows r0 .. r0 + 3 of it (valid: < rn) against rows
// m0 .. m0 + 3 of x (valid: < M): dot products into tmp[m][r] (row stride ldt).
#if defined(__x86_64__)
template <typename T>
SPARSE_AVX512 void bsr_tile_avx512(const BsrArgs<T>& a, int64_t e0, int64_t e1, int64_t r0, int64_t rn,
                                   int64_t m0, int64_t M, const float* xf, int64_t ldx, float* tmp, int64_t ldt) {
  int64_t wo[4];
  const float* xr[4];
  for (int i = 0; i < 4; ++i) {
    wo[i] = std::min<int64_t>(r0 + i, rn - 1) * a.bk;
    xr[i] = xf + std::min<int64_t>(m0 + i, M - 1) * ldx;
  }
  __m512 s[16];  // s[4 * j + i]: x row m0 + j . W row r0 + i
  // Every loop over s is unrolled: GCC keeps an array in registers only when all its indices are
  // constants early enough.
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) s[i] = _mm512_setzero_ps();
  for (int64_t e = e0; e < e1; ++e) {
    const int64_t kb = (int64_t)a.col[e] * a.bk, kn = std::min(a.bk, a.K - kb);
    const T* w = a.val + e * a.bn * a.bk;
    if (e + 1 < e1) {  // the next block's rows of W and x: each block starts new cache lines
      const T* wn = w + a.bn * a.bk;
      const int64_t kbn = (int64_t)a.col[e + 1] * a.bk, last = std::min(a.bk, a.K - kbn) - 1;
      for (int i = 0; i < 4; ++i) {
        _mm_prefetch((const char*)(wn + wo[i]), _MM_HINT_T0);
        _mm_prefetch((const char*)(wn + wo[i] + last), _MM_HINT_T0);
        _mm_prefetch((const char*)(xr[i] + kbn), _MM_HINT_T0);
        _mm_prefetch((const char*)(xr[i] + kbn + last), _MM_HINT_T0);
      }
    }
    for (int64_t k = 0; k < kn; k += 16) {
      const __mmask16 m = lanes(kn - k);
      __m512 wv[4], xv[4];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) wv[i] = load16<T>(w + wo[i] + k, m);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) xv[j] = _mm512_maskz_loadu_ps(m, xr[j] + kb + k);
#pragma GCC unroll 16
      for (int ji = 0; ji < 16; ++ji) s[ji] = _mm512_fmadd_ps(wv[ji % 4], xv[ji / 4], s[ji]);
    }
  }
  // Horizontal sums: lane a of the result = sum of s[a]'s 16 lanes.
  __m512 t1[8], t2[4], t3[2];
#pragma GCC unroll 8
  for (int p = 0; p < 8; ++p)
    t1[p] = _mm512_add_ps(_mm512_unpacklo_ps(s[2 * p], s[2 * p + 1]), _mm512_unpackhi_ps(s[2 * p], s[2 * p + 1]));
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q)
    t2[q] = _mm512_add_ps(_mm512_shuffle_ps(t1[2 * q], t1[2 * q + 1], 0x44),
                          _mm512_shuffle_ps(t1[2 * q], t1[2 * q + 1], 0xEE));
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h)
    t3[h] = _mm512_add_ps(_mm512_shuffle_f32x4(t2[2 * h], t2[2 * h + 1], 0x88),
                          _mm512_shuffle_f32x4(t2[2 * h], t2[2 * h + 1], 0xDD));
  alignas(64) float out[16];
  _mm512_store_ps(out, _mm512_add_ps(_mm512_shuffle_f32x4(t3[0], t3[1], 0x88),
                                     _mm512_shuffle_f32x4(t3[0], t3[1], 0xDD)));
  const int64_t mj = std::min<int64_t>(4, M - m0), ri = std::min<int64_t>(4, rn - r0);
  for (int j = 0; j < mj; ++j)
    for (int i = 0; i < ri; ++i) tmp[(m0 + j) * ldt + r0 + i] = out[4 * j + i];
}
#endif

template <typename T>
void bsr_tile_scalar(const BsrArgs<T>& a, int64_t e0, int64_t e1, int64_t r0, int64_t rn, int64_t m0, int64_t M,
                     const float* xf, int64_t ldx, float* tmp, int64_t ldt) {
  const int64_t mj = std::min<int64_t>(4, M - m0), ri = std::min<int64_t>(4, rn - r0);
  float s[4][4] = {};
  for (int64_t e = e0; e < e1; ++e) {
    const int64_t kb = (int64_t)a.col[e] * a.bk, kn = std::min(a.bk, a.K - kb);
    for (int j = 0; j < mj; ++j)
      for (int i = 0; i < ri; ++i) {
        const T* w = a.val + e * a.bn * a.bk + (r0 + i) * a.bk;
        const float* xp = xf + (m0 + j) * ldx + kb;
        float acc = 0.f;
        for (int64_t k = 0; k < kn; ++k) acc += to_f(w[k]) * xp[k];
        s[j][i] += acc;
      }
  }
  for (int j = 0; j < mj; ++j)
    for (int i = 0; i < ri; ++i) tmp[(m0 + j) * ldt + r0 + i] = s[j][i];
}

template <typename T>
bool bsr_run(const at::Tensor& x, const int32_t* crow, const int32_t* col, const T* val, int64_t bn, int64_t bk,
             int64_t N, const float* bias, at::Tensor& y) {
  const BsrArgs<T> a{crow, col, val, bn, bk, x.size(1)};
  const bool avx = use_avx512();
  const int64_t M = x.size(0), K = a.K, R = ceil_div(N, a.bn), Kb = ceil_div(K, a.bk);
  // x as float rows with unit k-stride.
  at::Tensor holder;
  const float* xf;
  int64_t ldx;
  if (std::is_same_v<T, float> && x.stride(1) == 1) {
    xf = reinterpret_cast<const float*>(x.const_data_ptr<T>());
    ldx = x.stride(0);
  } else {
    float* buf = scratch(0, M * K, holder);
    convert_rows<T>(x.const_data_ptr<T>(), x.stride(0), x.stride(1), M, K, buf, avx);
    xf = buf;
    ldx = K;
  }
  const int64_t parts = task_count(a.crow[R] * a.bn * a.bk * M);
  const std::vector<int64_t> bounds = split_rows(a.crow, R, parts, /*row_cost=*/1);
  std::vector<char> ok(parts, 1);
  T* yp = y.data_ptr<T>();
  at::Tensor tmp_holder;
  float* tmp_all = scratch(1, parts * M * a.bn, tmp_holder);  // one [M][bn] result per task
  parallel_tasks(parts, [&](int64_t p) {
    float* tmp = tmp_all + p * M * a.bn;
    for (int64_t br = bounds[p]; br < bounds[p + 1]; ++br) {
      const int64_t n0 = br * a.bn, rn = std::min(a.bn, N - n0), e0 = a.crow[br], e1 = a.crow[br + 1];
      for (int64_t e = e0; e < e1; ++e)
        if (a.col[e] < 0 || a.col[e] >= Kb) {
          ok[p] = 0;
          return;
        }
      for (int64_t r0 = 0; r0 < rn; r0 += 4)
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
#if defined(__x86_64__)
          if (avx) {
            bsr_tile_avx512<T>(a, e0, e1, r0, rn, m0, M, xf, ldx, tmp, a.bn);
            continue;
          }
#endif
          bsr_tile_scalar<T>(a, e0, e1, r0, rn, m0, M, xf, ldx, tmp, a.bn);
        }
      store_rows<T>(tmp, a.bn, M, rn, bias, n0, yp, N, avx);
    }
  });
  return std::all_of(ok.begin(), ok.end(), [](char c) { return c != 0; });
}

at::Tensor bsr_linear_cpu(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                          const at::Tensor& values, int64_t out_features, const c10::optional<at::Tensor>& bias_opt) {
  // The checks and their order are check_bsr_linear's (compress/ops/sparse.py).
  check_compressed_args(kOp, x, crow, col, values, 3, out_features, bias_opt);
  const int64_t bn = values.size(1), bk = values.size(2), N = out_features;
  const int64_t R = ceil_div(N, std::max<int64_t>(bn, 1));
  COMPRESS_CHECK(kOp, crow.size(0) == R + 1, "expected `crow` to have ", R + 1, " entries for out_features = ", N,
                 ", got ", crow.size(0));
  COMPRESS_CHECK(kOp, col.size(0) == values.size(0), "expected `col` to have one entry per stored value/block (",
                 values.size(0), "), got ", col.size(0));
  COMPRESS_CHECK(kOp, bn >= 1 && bk >= 1, "expected `values` to be [nnz_blocks, bn, bk] with bn, bk >= 1, got ",
                 py_shape(values));

  const int64_t Kb = ceil_div(x.size(1), bk);
  return compressed_linear(kOp, x, crow, col, values, N, R, /*col_limit=*/Kb, "block columns: ceil(in_features / bk)",
                           bias_opt, [&](const int32_t* crow_p, const int32_t* col_p, const auto* val,
                                         const float* bias, at::Tensor& y) {
                             return bsr_run(x, crow_p, col_p, val, bn, bk, N, bias, y);
                           });
}

}  // namespace

COMPRESS_REGISTER_CPU(bsr_linear, bsr_linear_cpu)

}  // namespace compress
