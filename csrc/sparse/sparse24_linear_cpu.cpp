// compress::sparse24_linear on the CPU: y [M, N] = x [M, K] @ W^T + bias, W 2:4-sparse as
// values [N, K/2] (x's dtype) and meta uint8 [N, K/4] (bits 0-1 / 2-3: positions of the group's
// two kept weights), float32 accumulation.
//
// The same scheme as csr_linear (sparse_cpu_rows.h run_rows): x transposed once into float panels,
// then per kept weight one broadcast + one FMA per 16 lanes of M. A group g contributes
// values[2g] * x[:, 4g + p0] + values[2g + 1] * x[:, 4g + p1]; 8 groups (16 values, 8 meta bytes)
// are read per step. Positions are 2-bit fields, so no input can index outside the row: there is
// nothing to validate beyond the shapes. (A group with p0 == p1, which pack_2_4 never writes,
// adds both values at that position.)
#include <torch/library.h>

#include "sparse/sparse_cpu_rows.h"

namespace compress {
namespace {
using namespace sparse_cpu;

constexpr const char* kOp = "sparse24_linear";

template <typename T>
struct S24Args {
  const T* val;         // [N, K/2]
  const uint8_t* meta;  // [N, K/4]
  int64_t G;            // groups per row: K / 4
};

#if defined(__x86_64__)
// meta byte -> the byte offsets of its two kept positions in a 16-lane panel (64 bytes a row):
// bits 0-15 for the first, 16-31 for the second. With W = 16 MV lanes the offset is this times
// MV, which the address arithmetic does for free; one table load replaces ~5 shifts and masks
// per group (the kernel is bound by instruction throughput once the weights are in cache).
struct MetaLut {
  uint32_t off[256];
  constexpr MetaLut() : off() {
    for (unsigned b = 0; b < 256; ++b) off[b] = ((b & 3) * 64) | (((b >> 2) & 3) * 64) << 16;
  }
};
constexpr MetaLut kMetaLut;

// Group q of a step (q a constant once unrolled): its two kept weights against panel rows
// 4q + p0 and 4q + p1.
template <int MV, int U>
SPARSE_AVX512 inline void s24_group(__m512 (&s)[U][MV], const Bcast16& vb, const char* p, int q, uint8_t meta) {
  const uint32_t o = kMetaLut.off[meta];
  const char* pq = p + 4 * q * 16 * MV * sizeof(float);
  bcast_fma<MV>(s[(2 * q) % U], vb[2 * q], reinterpret_cast<const float*>(pq + (o & 0xFFFF) * MV));
  bcast_fma<MV>(s[(2 * q + 1) % U], vb[2 * q + 1], reinterpret_cast<const float*>(pq + (o >> 16) * MV));
}

template <typename T, int MV>
SPARSE_AVX512 bool s24_rows_avx512(const S24Args<T>& a, int64_t n0, int nr, const float* panel, float* acc) {
  constexpr int W = 16 * MV, U = MV == 1 ? 4 : 2;
  for (int r = 0; r < nr; ++r) {
    const T* val = a.val + (n0 + r) * 2 * a.G;
    const uint8_t* meta = a.meta + (n0 + r) * a.G;
    __m512 s[U][MV];
    for (int u = 0; u < U; ++u)
      for (int j = 0; j < MV; ++j) s[u][j] = _mm512_setzero_ps();
    for (int64_t g = 0; g < a.G; g += 8) {
      const int cnt = (int)std::min<int64_t>(8, a.G - g);
      const T* v = val + 2 * g;
      _mm_prefetch((const char*)(v + 256), _MM_HINT_T0);  // as in csr_linear: the weights stream
      _mm_prefetch((const char*)(meta + g + 128), _MM_HINT_T0);
      const Bcast16 vb(load16<T>(v, lanes(2 * cnt)));
      const char* p = reinterpret_cast<const char*>(panel + 4 * g * W);  // row 4g of the panel
      if (cnt == 8) {
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q) s24_group<MV, U>(s, vb, p, q, meta[g + q]);
      } else {
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q)
          if (q < cnt) s24_group<MV, U>(s, vb, p, q, meta[g + q]);
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
bool s24_rows_scalar(const S24Args<T>& a, int64_t n0, int nr, const float* panel, int64_t w, float* acc) {
  for (int r = 0; r < nr; ++r) {
    const T* val = a.val + (n0 + r) * 2 * a.G;
    const uint8_t* meta = a.meta + (n0 + r) * a.G;
    float* out = acc + r * w;
    std::fill(out, out + w, 0.f);
    for (int64_t g = 0; g < a.G; ++g) {
      const float v0 = to_f(val[2 * g]), v1 = to_f(val[2 * g + 1]);
      const float* p0 = panel + (4 * g + (meta[g] & 3)) * w;
      const float* p1 = panel + (4 * g + ((meta[g] >> 2) & 3)) * w;
      for (int64_t l = 0; l < w; ++l) out[l] += v0 * p0[l] + v1 * p1[l];
    }
  }
  return true;
}

template <typename T>
void s24_run(const at::Tensor& x, const T* val, const uint8_t* meta, int64_t N, const float* bias, at::Tensor& y) {
  const S24Args<T> a{val, meta, x.size(1) / 4};
  const bool avx = use_avx512();
  run_rows<T>(x, N, nullptr, 0, N * a.G * 2 * x.size(0), /*max_w=*/64, bias, y, avx,
              [&](int64_t n0, int nr, const Tile& t, float* acc) {
#if defined(__x86_64__)
                if (avx) {
                  if (t.w == 16) return s24_rows_avx512<T, 1>(a, n0, nr, t.panel, acc);
                  if (t.w == 32) return s24_rows_avx512<T, 2>(a, n0, nr, t.panel, acc);
                  return s24_rows_avx512<T, 4>(a, n0, nr, t.panel, acc);
                }
#endif
                return s24_rows_scalar<T>(a, n0, nr, t.panel, t.w, acc);
              });
}

at::Tensor sparse24_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                               const c10::optional<at::Tensor>& bias_opt) {
  // The checks and their order are check_sparse24_linear's (compress/ops/sparse.py).
  check_float_tensor(kOp, "x", x, 2);
  COMPRESS_CHECK_DTYPE(kOp, values, x.scalar_type());
  COMPRESS_CHECK_DIM(kOp, values, 2);
  COMPRESS_CHECK_DTYPE(kOp, meta, at::kByte);
  COMPRESS_CHECK_DIM(kOp, meta, 2);
  COMPRESS_CHECK_DEVICE(kOp, x, at::kCPU);
  COMPRESS_CHECK_DEVICE(kOp, values, at::kCPU);
  COMPRESS_CHECK_DEVICE(kOp, meta, at::kCPU);
  if (bias_opt.has_value()) {
    const at::Tensor& bias = *bias_opt;
    COMPRESS_CHECK_DEVICE(kOp, bias, at::kCPU);
  }
  const int64_t M = x.size(0), K = x.size(1), N = values.size(0);
  COMPRESS_CHECK(kOp, K % 4 == 0, "2:4 needs K = x.shape[1] divisible by 4, got ", K);
  COMPRESS_CHECK(kOp, values.size(1) * 2 == K, "expected `values` to be [N, K/2] = [", N, ", ", K / 2, "], got ",
                 py_shape(values));
  COMPRESS_CHECK(kOp, meta.size(0) == N && meta.size(1) == K / 4, "expected `meta` to be [N, K/4] = [", N, ", ",
                 K / 4, "], got ", py_shape(meta));
  if (bias_opt.has_value()) {
    const at::Tensor& bias = *bias_opt;
    check_float_tensor(kOp, "bias", bias, 1);
    COMPRESS_CHECK(kOp, bias.size(0) == N, "expected `bias` to have ", N, " elements (out_features), got ",
                   bias.size(0));
  }
  if (M == 0 || N == 0 || K == 0) return bias_only(x, N, bias_opt);

  const at::Tensor meta_c = meta.contiguous();
  at::Tensor y = at::empty({M, N}, x.options());
  with_operands(x, values, bias_opt, [&](const auto* val, const float* bias) {
    s24_run(x, val, meta_c.const_data_ptr<uint8_t>(), N, bias, y);
  });
  return y;
}

}  // namespace

COMPRESS_REGISTER_CPU(sparse24_linear, sparse24_linear_cpu)

}  // namespace compress
