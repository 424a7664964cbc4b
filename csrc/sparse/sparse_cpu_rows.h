// The transposed-x scheme shared by csr_linear and sparse24_linear (CPU): x is packed once into
// float panels xT[k][lanes] so that x[:, k] is one to four vectors, every stored weight costs one
// broadcast + one FMA per 16 lanes, and results come back transposed (16 rows of W at a time).
#pragma once
#include "sparse/sparse_cpu.h"

namespace compress::sparse_cpu {

#if defined(__x86_64__)
// The 16 values of a step (converted to float once) as broadcasts, from registers: 4 chunk
// broadcasts per step, then one in-lane permute (immediate) per value. The broadcast kernels are
// bound by load ports; broadcasting from memory instead (vbroadcastss) was measured ~25% slower
// per stored value, float32 included, and storing the step to the stack to reload scalars
// slower still (the narrow loads wait for the wide store).
struct Bcast16 {
  __m512 c[4];
  SPARSE_AVX512 explicit Bcast16(__m512 vf) {
    c[0] = _mm512_shuffle_f32x4(vf, vf, 0x00);
    c[1] = _mm512_shuffle_f32x4(vf, vf, 0x55);
    c[2] = _mm512_shuffle_f32x4(vf, vf, 0xAA);
    c[3] = _mm512_shuffle_f32x4(vf, vf, 0xFF);
  }
  // i must fold to a constant (unrolled loops): the permute takes an immediate.
  SPARSE_AVX512 __m512 operator[](int i) const {
    switch (i & 3) {
      case 0: return _mm512_permute_ps(c[i >> 2], 0x00);
      case 1: return _mm512_permute_ps(c[i >> 2], 0x55);
      case 2: return _mm512_permute_ps(c[i >> 2], 0xAA);
      default: return _mm512_permute_ps(c[i >> 2], 0xFF);
    }
  }
};

// s[0 .. MV) += b * p[0 .. 16 MV): one stored weight against MV vectors of a panel row.
template <int MV>
SPARSE_AVX512 inline void bcast_fma(__m512* s, __m512 b, const float* p) {
  for (int j = 0; j < MV; ++j) s[j] = _mm512_fmadd_ps(b, _mm512_loadu_ps(p + 16 * j), s[j]);
}
#endif

// ------------------------------------------------------------------------------- the x panel

// Tiles of the transposed x for the broadcast kernels (csr, 2:4): M is cut into tiles of up to
// 64 rows; a tile of w rows (w in {16, 32, 64}: the fewest lanes that hold it) is stored as
// panel[k][w] float, lanes >= its row count zero, so x[m0:m0 + rows, k] is w / 16 vectors.
struct Tile {
  int64_t m0, rows, w;
  float* panel;  // [K][w]
};

inline std::vector<Tile> make_tiles(int64_t M, int64_t K, int64_t max_w, float* panel) {
  std::vector<Tile> tiles;
  for (int64_t m0 = 0; m0 < M; m0 += max_w) {
    const int64_t rows = std::min(max_w, M - m0);
    const int64_t w = rows <= 16 ? 16 : rows <= 32 ? 32 : 64;
    tiles.push_back({m0, rows, w, panel});
    panel += K * w;
  }
  return tiles;
}

inline int64_t panel_floats(const std::vector<Tile>& tiles, int64_t K) {
  int64_t n = 0;
  for (const Tile& t : tiles) n += K * t.w;
  return n;
}

#if defined(__x86_64__)
// panel[k][lane] = x[m0 + lane][k] for k in [k0, k1), 16 lanes from `lane0`; x rows unit-stride.
template <typename T>
SPARSE_AVX512 void pack_block_avx512(const T* x, int64_t s0, const Tile& t, int64_t lane0, int64_t k0, int64_t k1) {
  const int64_t valid = std::min<int64_t>(16, t.rows - lane0);
  for (int64_t k = k0; k < k1; k += 16) {
    const int64_t kn = std::min<int64_t>(16, k1 - k);
    __m512 r[16];
    for (int i = 0; i < 16; ++i)
      r[i] = i < valid ? load16<T>(x + (t.m0 + lane0 + i) * s0 + k, lanes(kn)) : _mm512_setzero_ps();
    transpose16(r);
    for (int c = 0; c < kn; ++c) _mm512_storeu_ps(t.panel + (k + c) * t.w + lane0, r[c]);
  }
}
#endif

// Fills every tile's panel from x [M, K] (strides s0, s1), in parallel over (tile, 256-k slab).
template <typename T>
void pack_panels(const T* x, int64_t s0, int64_t s1, int64_t K, const std::vector<Tile>& tiles, bool avx) {
  constexpr int64_t KS = 256;
  const int64_t slabs = ceil_div(K, KS);
  const int64_t n = slabs * (int64_t)tiles.size();
  int64_t work = 0;
  for (const Tile& t : tiles) work += K * t.w;
  auto task = [&](int64_t i) {
    const Tile& t = tiles[i / slabs];
    const int64_t k0 = (i % slabs) * KS, k1 = std::min(K, k0 + KS);
#if defined(__x86_64__)
    if (avx && s1 == 1) {
      for (int64_t l = 0; l < t.w; l += 16) pack_block_avx512<T>(x, s0, t, l, k0, k1);
      return;
    }
#endif
    for (int64_t k = k0; k < k1; ++k) {
      float* out = t.panel + k * t.w;
      for (int64_t l = 0; l < t.rows; ++l) out[l] = to_f(x[(t.m0 + l) * s0 + k * s1]);
      for (int64_t l = t.rows; l < t.w; ++l) out[l] = 0.f;
    }
  };
  // Packing 16 x 4096 takes ~20 us: below ~1 Mi floats one thread does it, sparing a second wake
  // of the thread pool per call.
  if (work < (int64_t{1} << 20) || task_count(work) == 1) {
    for (int64_t i = 0; i < n; ++i) task(i);
  } else {
    parallel_tasks(n, task);
  }
}

// ---------------------------------------------------------------------------------- write-back

// Broadcast kernels leave acc[r][lane] = y[t.m0 + lane][n0 + r] (r < nr <= 16, row stride t.w);
// this adds bias[n0 + r] (when given) and stores the tile's rows of y [M, ldy] as T.
template <typename T>
void store_tile_t(const float* acc, const Tile& t, int64_t n0, int nr, const float* bias, T* y, int64_t ldy,
                  bool avx);

#if defined(__x86_64__)
template <typename T>
SPARSE_AVX512 void store_tile_t_avx512(const float* acc, const Tile& t, int64_t n0, int nr, const float* bias,
                                       T* y, int64_t ldy) {
  const __mmask16 nm = lanes(nr);
  const __m512 b = bias ? _mm512_maskz_loadu_ps(nm, bias + n0) : _mm512_setzero_ps();
  for (int64_t l = 0; l < t.rows; l += 16) {
    __m512 r[16];
    for (int i = 0; i < 16; ++i) r[i] = i < nr ? _mm512_loadu_ps(acc + i * t.w + l) : _mm512_setzero_ps();
    transpose16(r);
    const int64_t mn = std::min<int64_t>(16, t.rows - l);
    for (int c = 0; c < mn; ++c) store16<T>(y + (t.m0 + l + c) * ldy + n0, _mm512_add_ps(r[c], b), nm);
  }
}
#endif

template <typename T>
void store_tile_t(const float* acc, const Tile& t, int64_t n0, int nr, const float* bias, T* y, int64_t ldy,
                  bool avx) {
#if defined(__x86_64__)
  if (avx) return store_tile_t_avx512<T>(acc, t, n0, nr, bias, y, ldy);
#endif
  for (int64_t l = 0; l < t.rows; ++l)
    for (int r = 0; r < nr; ++r)
      y[(t.m0 + l) * ldy + n0 + r] = from_f<T>(acc[r * t.w + l] + (bias ? bias[n0 + r] : 0.f));
}

// ------------------------------------------------------------------------- broadcast driver

// The shared loop of csr_linear and sparse24_linear: y = x W^T with W stored row by row.
// kern(n0, nr, tile, acc) accumulates rows n0 .. n0 + nr - 1 (nr <= 16) of W against the tile's
// panel into acc[16][tile.w] (see store_tile_t) and returns false on a malformed entry (it stops
// there; the caller raises). Rows are split into one range per thread by cost (stored entries +
// row_cost per row; crow null: uniform); within a range, tiles of M outer, 16-row chunks inner.
template <typename T, class Kern>
bool run_rows(const at::Tensor& x, int64_t N, const int32_t* crow, int64_t row_cost, int64_t work, int64_t max_w,
              const float* bias, at::Tensor& y, bool avx, const Kern& kern) {
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor holder;
  std::vector<Tile> tiles = make_tiles(M, K, max_w, nullptr);
  float* panel = scratch(0, panel_floats(tiles, K), holder);
  tiles = make_tiles(M, K, max_w, panel);
  pack_panels<T>(x.const_data_ptr<T>(), x.stride(0), x.stride(1), K, tiles, avx);

  const int64_t parts = task_count(work);
  std::vector<int64_t> bounds(parts + 1);
  if (crow) {
    bounds = split_rows(crow, N, parts, row_cost);
  } else {
    for (int64_t t = 0; t <= parts; ++t) bounds[t] = N * t / parts;
  }
  std::vector<char> ok(parts, 1);
  T* yp = y.data_ptr<T>();
  parallel_tasks(parts, [&](int64_t p) {
    alignas(64) float acc[16 * 64];
    for (const Tile& t : tiles)
      for (int64_t n0 = bounds[p]; n0 < bounds[p + 1]; n0 += 16) {
        const int nr = (int)std::min<int64_t>(16, bounds[p + 1] - n0);
        if (!kern(n0, nr, t, acc)) {
          ok[p] = 0;
          return;
        }
        store_tile_t<T>(acc, t, n0, nr, bias, yp, N, avx);
      }
  });
  return std::all_of(ok.begin(), ok.end(), [](char c) { return c != 0; });
}

}  // namespace compress::sparse_cpu
