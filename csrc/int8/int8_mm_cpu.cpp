// compress::int8_mm on the CPU: exact int8 [M, K] x int8 [K, N] -> int32 [M, N].
//
// Three paths, chosen per call by active_cpu_isa():
//   avx512_vnni  vpdpbusd (u8 x s8, 4 products summed per int32 lane). B is made unsigned with a
//                +128 offset (xor 0x80) as it is packed, and 128 * rowsum(A) is subtracted at the
//                end (flipping A instead cost one xor per broadcast in the microkernel: measured
//                3.5% slower at 1024^3). All int32 arithmetic wraps, so the result is exact
//                whenever the true product fits int32.
//   avx2         vpmaddwd on sign-extended int16 pairs (exact; vpmaddubsw would saturate).
//   scalar       plain C++, any CPU.
// The vector paths are compiled with per-function target attributes: the build has no -march.
//
// Blocking (GotoBLAS style; the vector paths share the driver gemm<P>):
//   - One work item per thread: a range of N columns (of M rows only when N has fewer panels
//     than there are threads), so each item packs only its own B and B is read once per call.
//   - B is packed KC x NC at a time into column panels of NR: [KC / KG][NR][KG], KG = k per
//     int32 lane (4 for VNNI, 2 for AVX2), zero padded (VNNI: + 128, padding included).
//   - A is walked in blocks of MC rows x KC. The VNNI kernel reads A in place when its rows are
//     contiguous and K % 4 == 0; otherwise the block is first copied (to int16 for AVX2) into a per-thread buffer.
//   - The microkernel keeps MR x NR int32 sums in registers over one KC-deep panel of B. VNNI
//     uses KC = 4096 (a 256 KiB panel, still in L2), so for K <= 4096 C is written once.
// Small M with k contiguous in B (b = W^T: the nn.Linear weight, as int8_linear passes it) skips
// the packing on VNNI: dot products of rows of A and W, W streamed once (namespace dot below).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>  // at::get_num_threads
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"
#include "cpu_features.h"
#include "int8/int8_cpu.h"  // thread_scratch, transposes
#include "cpu_parallel.h"  // parallel_tasks: torch's own thread pool (why: see the header)

#if defined(__x86_64__)
#include <immintrin.h>
#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define AVX2_TARGET __attribute__((target("avx2,fma")))
#endif

namespace compress {
namespace {

// A strided int8 matrix: element (i, j) at p[i * s0 + j * s1].
struct View {
  const int8_t* p;
  int64_t s0, s1;
};

#if defined(__x86_64__)

int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }
int64_t round_up(int64_t x, int64_t m) { return ceil_div(x, m) * m; }

// Copies A[0:rows, 0:kc] into out[rows][kcp] (kcp >= kc) as T, padding k >= kc with `pad`. The
// generic (strided) case: 16 k at a time, so a transposed A's 16 lines stay in L1 (even at a
// power-of-2 stride) while the rows walk along them.
template <typename T>
void pack_a_strided(View a, int64_t rows, int64_t kc, int64_t kcp, T pad, T* out) {
  for (int64_t k0 = 0; k0 < kc; k0 += 16)
    for (int64_t r = 0; r < rows; ++r) {
      const int8_t* src = a.p + r * a.s0;
      for (int64_t k = k0; k < std::min(k0 + 16, kc); ++k) out[r * kcp + k] = T(src[k * a.s1]);
    }
  for (int64_t r = 0; r < rows; ++r) std::fill(out + r * kcp + kc, out + (r + 1) * kcp, pad);
}

// ---------------------------------------------------------------------------------------------
// AVX-512 VNNI: MR x NR = 6 x 64 int32 sums = 24 zmm, + 4 for B + 1 broadcast of A. Per 4 k:
// 4 B loads and 6 4-byte broadcasts feed 24 vpdpbusd (measured 97% of the 1-per-cycle peak).
struct Vnni {
  static constexpr int MR = 6, NR = 64, KG = 4;
  static constexpr int64_t KC = 4096, NC = 512, MC = 192;
  using TA = int8_t;
  using TB = int8_t;  // B + 128 (u8), stored as int8_t
  static constexpr bool kOffsetB = true;  // the kernel subtracts 128 * rowsum(A)

  static bool direct_a(View a, int64_t K) { return a.s1 == 1 && K % 4 == 0; }

  // A[0:rows, 0:kc] -> out[rows][kcp], zero padded.
  VNNI_TARGET static void pack_a(View a, int64_t rows, int64_t kc, int64_t kcp, TA* out) {
    if (a.s1 != 1) return pack_a_strided<TA>(a, rows, kc, kcp, 0, out);
    const __m512i pad = _mm512_setzero_si512();
    for (int64_t i = 0; i < rows; ++i, out += kcp)
      for (int64_t k = 0; k < kcp; k += 64) {  // kc > k throughout
        const __mmask64 in = kc - k >= 64 ? ~0ULL : (1ULL << (kc - k)) - 1;
        const __mmask64 st = kcp - k >= 64 ? ~0ULL : (1ULL << (kcp - k)) - 1;
        _mm512_mask_storeu_epi8(out + k, st, _mm512_mask_loadu_epi8(pad, in, a.p + i * a.s0 + k));
      }
  }

  // out[i] = 128 * sum_k A[i, k] for rows [0, rows) (modulo 2^32, as the sums it corrects).
  VNNI_TARGET static void row_corr(View a, int64_t rows, int64_t K, int32_t* out) {
    for (int64_t i = 0; i < rows; ++i) {
      const int8_t* row = a.p + i * a.s0;
      uint32_t s = 0;
      if (a.s1 == 1) {
        __m512i acc = _mm512_setzero_si512();
        const __m512i ones = _mm512_set1_epi8(1);
        for (int64_t k = 0; k < K; k += 64) {
          const __mmask64 in = K - k >= 64 ? ~0ULL : (1ULL << (K - k)) - 1;
          acc = _mm512_dpbusd_epi32(acc, ones, _mm512_maskz_loadu_epi8(in, row + k));
        }
        s = uint32_t(_mm512_reduce_add_epi32(acc));
      } else {
        for (int64_t k = 0; k < K; ++k) s += uint32_t(int32_t(row[k * a.s1]));
      }
      out[i] = int32_t(s * 128u);
    }
  }

  // Stores one packed vector (16 columns x 4 k), + 128.
  VNNI_TARGET static inline void put(TB* out, __m512i v) {
    _mm512_storeu_si512(out, _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80)));
  }

  // Packs the block B[k0 : k0 + kc, n0 : n0 + nc] + 128 into panels of 64 columns, panel j at
  // out + j * kcp * 64 as [kcp / 4][64][4] (kcp = kc rounded up to 4; padding 0 + 128).
  VNNI_TARGET static void pack_b(View b, int64_t k0, int64_t kc, int64_t n0, int64_t nc, TB* out) {
    const int64_t kcp = round_up(kc, 4), panels = ceil_div(nc, 64);
    const __m512i zero = _mm512_setzero_si512();
    if (b.s1 == 1) {
      // Rows contiguous: 4 rows x 64 columns at a time, k outer so each row is read sequentially
      // across the panels; rows 8 ahead are prefetched (reading B from DRAM is latency bound
      // here: the prefetch measured up to 2.5x faster).
      for (int64_t k = 0; k < kcp; k += 4)
        for (int64_t j = 0; j < panels; ++j) {
          const int64_t n = n0 + 64 * j, nr = std::min<int64_t>(64, nc - 64 * j);
          for (int t = 8; t < 12 && k + t < kc; ++t)
            _mm_prefetch((const char*)(b.p + (k0 + k + t) * b.s0 + n), _MM_HINT_T0);
          const __mmask64 mask = nr >= 64 ? ~0ULL : (1ULL << nr) - 1;
          __m512i r[4], u[4], v[4];
          for (int t = 0; t < 4; ++t)
            r[t] = k + t < kc ? _mm512_maskz_loadu_epi8(mask, b.p + (k0 + k + t) * b.s0 + n) : zero;
          // Byte then word interleaves give u[i] lane L = columns 16L + 4i .. +3 (4 k each).
          const __m512i t0 = _mm512_unpacklo_epi8(r[0], r[1]);
          const __m512i t1 = _mm512_unpackhi_epi8(r[0], r[1]);
          const __m512i t2 = _mm512_unpacklo_epi8(r[2], r[3]);
          const __m512i t3 = _mm512_unpackhi_epi8(r[2], r[3]);
          u[0] = _mm512_unpacklo_epi16(t0, t2), u[1] = _mm512_unpackhi_epi16(t0, t2);
          u[2] = _mm512_unpacklo_epi16(t1, t3), u[3] = _mm512_unpackhi_epi16(t1, t3);
          int8_cpu::transpose_lanes(u, v);
          for (int q = 0; q < 4; ++q)
            put(out + j * kcp * 64 + k * 64 + 64 * q, v[q]);
        }
    } else if (b.s0 == 1) {
      // k contiguous (the transpose of an [N, K] weight): 16 columns x 64 k at a time, a 16 x 16
      // transpose of dwords; one column group walks all of K (measured 5x faster than loading
      // each column's 4 bytes, or gathering them).
      for (int64_t j = 0; j < panels; ++j)
        for (int q = 0; q < 4; ++q) {
          const int64_t n = n0 + 64 * j + 16 * q, cols = std::min<int64_t>(16, nc - (n - n0));
          for (int64_t k = 0; k < kcp; k += 64) {  // kc > k throughout
            const __mmask64 mask = kc - k >= 64 ? ~0ULL : (1ULL << (kc - k)) - 1;
            __m512i r[16], v[16];
            for (int c = 0; c < 16; ++c)
              r[c] = c < cols ? _mm512_maskz_loadu_epi8(mask, b.p + k0 + k + (n + c) * b.s1) : zero;
            int8_cpu::transpose_16x16_dwords(r, v);  // v[g]: k group g (4 k) of the 16 columns
            for (int g = 0; g < 16 && k + 4 * g < kcp; ++g)
              put(out + j * kcp * 64 + (k + 4 * g) * 64 + 64 * q, v[g]);
          }
        }
    } else {  // any other strides: byte by byte
      for (int64_t j = 0; j < panels; ++j)
        for (int64_t k = 0; k < kcp; k += 4) {
          alignas(64) int8_t tmp[256] = {};
          for (int c = 0; c < std::min<int64_t>(64, nc - 64 * j); ++c)
            for (int t = 0; t < 4 && k + t < kc; ++t)
              tmp[4 * c + t] = b.p[(k0 + k + t) * b.s0 + (n0 + 64 * j + c) * b.s1];
          for (int q = 0; q < 4; ++q)
            put(out + j * kcp * 64 + k * 64 + 64 * q, _mm512_load_si512(tmp + 64 * q));
        }
    }
  }

  // C[0:mr, 0:nr] (row stride ldc) = (accumulate ? C : 0) + A . (B + 128) - rowcorr[0:mr], the
  // last term only when rowcorr != nullptr (the last K block; rowcorr = 128 * rowsum(A)).
  // A: mr rows (s8, row stride lda), 4 * ksteps bytes of each used; B + 128: one panel
  // [ksteps][64][4] (u8).
  // kFull: mr == MR. Otherwise the k loop skips rows >= mr (measured 2.3x faster for mr = 1, the
  // matrix-vector case; the check costs 3.5% when every row is used, hence two instantiations).
  template <bool kFull>
  VNNI_TARGET static void kernel(const TA* A, int64_t lda, const TB* B, int64_t ksteps, int32_t* C,
                                 int64_t ldc, int mr, int nr, bool accumulate,
                                 const int32_t* rowcorr) {
    // The C tile was last touched long ago (or never): fetch it while the k loop runs.
    for (int i = 0; i < mr; ++i)
      for (int q = 0; q < 4 && 16 * q < nr; ++q)
        _mm_prefetch((const char*)(C + i * ldc + 16 * q), _MM_HINT_T0);
    const TA* a[MR];  // rows past mr repeat the last one; their results are dropped
    for (int i = 0; i < MR; ++i) a[i] = A + std::min(i, mr - 1) * lda;
    __m512i acc[MR][4];
    for (int i = 0; i < MR; ++i)
      for (int q = 0; q < 4; ++q) acc[i][q] = _mm512_setzero_si512();
    for (int64_t k = 0; k < 4 * ksteps; k += 4, B += 256) {
      const __m512i b0 = _mm512_loadu_si512(B), b1 = _mm512_loadu_si512(B + 64);
      const __m512i b2 = _mm512_loadu_si512(B + 128), b3 = _mm512_loadu_si512(B + 192);
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        if (!kFull && i >= mr) break;
        int32_t a4;
        std::memcpy(&a4, a[i] + k, 4);
        const __m512i av = _mm512_set1_epi32(a4);
        acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], b0, av);
        acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], b1, av);
        acc[i][2] = _mm512_dpbusd_epi32(acc[i][2], b2, av);
        acc[i][3] = _mm512_dpbusd_epi32(acc[i][3], b3, av);
      }
    }
    // acc is only ever indexed by constants (a runtime index makes GCC keep it in memory and
    // store every sum on each k step); the edge logic works on a copy in memory.
    alignas(64) int32_t tile[MR][64];
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) _mm512_store_si512(tile[i] + 16 * q, acc[i][q]);
    for (int q = 0; q < 4 && 16 * q < nr; ++q) {
      const __mmask16 m = nr - 16 * q >= 16 ? 0xFFFF : (__mmask16)((1u << (nr - 16 * q)) - 1);
      for (int i = 0; i < mr; ++i) {
        int32_t* c = C + i * ldc + 16 * q;
        __m512i v = _mm512_load_si512(tile[i] + 16 * q);
        if (rowcorr) v = _mm512_sub_epi32(v, _mm512_set1_epi32(rowcorr[i]));
        if (accumulate) v = _mm512_add_epi32(v, _mm512_maskz_loadu_epi32(m, c));
        _mm512_mask_storeu_epi32(c, m, v);
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// AVX2: vpmaddwd of int16 pairs (2 k per int32 lane). MR x NR = 6 x 16 = 12 ymm sums, + 2 for B
// + 1 broadcast of A (of 16 registers).
struct Avx2 {
  static constexpr int MR = 6, NR = 16, KG = 2;
  static constexpr int64_t KC = 1024, NC = 1024, MC = 192;
  using TA = int16_t;
  using TB = int16_t;
  static constexpr bool kOffsetB = false;

  static bool direct_a(View, int64_t) { return false; }

  // A[0:rows, 0:kc] -> out[rows][kcp] int16, zeros past kc.
  AVX2_TARGET static void pack_a(View a, int64_t rows, int64_t kc, int64_t kcp, TA* out) {
    if (a.s1 != 1) return pack_a_strided<TA>(a, rows, kc, kcp, 0, out);
    for (int64_t i = 0; i < rows; ++i, out += kcp) {
      const int8_t* row = a.p + i * a.s0;
      int64_t k = 0;
      for (; k + 16 <= kc; k += 16)
        _mm256_storeu_si256((__m256i*)(out + k),
                            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(row + k))));
      for (; k < kcp; ++k) out[k] = k < kc ? row[k] : 0;
    }
  }

  // As Vnni::pack_b, into panels of 16 columns [kcp / 2][16][2] of int16, no offset.
  AVX2_TARGET static void pack_b(View b, int64_t k0, int64_t kc, int64_t n0, int64_t nc, TB* out) {
    const int64_t kcp = round_up(kc, 4), panels = ceil_div(nc, 16);
    const bool k_outer = b.s1 == 1;  // rows contiguous: read them sequentially
    for (int64_t o = 0; o < (k_outer ? kcp / 2 : panels); ++o)
      for (int64_t i = 0; i < (k_outer ? panels : kcp / 2); ++i) {
        const int64_t k = 2 * (k_outer ? o : i), j = k_outer ? i : o;
        const int nr = (int)std::min<int64_t>(16, nc - 16 * j);
        const int8_t* src = b.p + (k0 + k) * b.s0 + (n0 + 16 * j) * b.s1;
        TB* dst = out + j * kcp * 16 + k * 16;
        if (b.s1 == 1 && nr == 16) {
          const __m128i row1 =
              k + 1 < kc ? _mm_loadu_si128((const __m128i*)(src + b.s0)) : __m128i{};
          const __m256i r0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)src));
          const __m256i r1 = _mm256_cvtepi8_epi16(row1);
          // unpack works within 128-bit lanes: lo = columns 0-3 | 8-11, hi = 4-7 | 12-15.
          const __m256i lo = _mm256_unpacklo_epi16(r0, r1), hi = _mm256_unpackhi_epi16(r0, r1);
          _mm256_storeu_si256((__m256i*)dst, _mm256_permute2x128_si256(lo, hi, 0x20));
          _mm256_storeu_si256((__m256i*)(dst + 16), _mm256_permute2x128_si256(lo, hi, 0x31));
        } else {
          for (int c = 0; c < 16; ++c)
            for (int t = 0; t < 2; ++t)
              dst[2 * c + t] = c < nr && k + t < kc ? src[t * b.s0 + c * b.s1] : 0;
        }
      }
  }

  // C[0:mr, 0:nr] = (accumulate ? C : 0) + A . B. A: mr rows of int16 (row stride lda), 2 * ksteps
  // of each used; B: one panel [ksteps][16][2] int16.
  template <bool kFull>  // as in Vnni::kernel
  AVX2_TARGET static void kernel(const TA* A, int64_t lda, const TB* B, int64_t ksteps, int32_t* C,
                                 int64_t ldc, int mr, int nr, bool accumulate, const int32_t*) {
    const TA* a[MR];  // rows past mr repeat the last one; their results are dropped
    for (int i = 0; i < MR; ++i) a[i] = A + std::min(i, mr - 1) * lda;
    __m256i acc[MR][2];
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
    for (int64_t k = 0; k < 2 * ksteps; k += 2, B += 32) {
      const __m256i b0 = _mm256_loadu_si256((const __m256i*)B);
      const __m256i b1 = _mm256_loadu_si256((const __m256i*)(B + 16));
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        if (!kFull && i >= mr) break;
        int32_t a2;
        std::memcpy(&a2, a[i] + k, 4);
        const __m256i av = _mm256_set1_epi32(a2);
        acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(av, b0));
        acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(av, b1));
      }
    }
    alignas(32) int32_t tile[MR][16];  // constant indices into acc only, as in Vnni::kernel
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      _mm256_store_si256((__m256i*)tile[i], acc[i][0]);
      _mm256_store_si256((__m256i*)(tile[i] + 8), acc[i][1]);
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int q = 0; q < 2 && 8 * q < nr; ++q) {
      const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8 * q), lane);
      for (int i = 0; i < mr; ++i) {
        int* c = C + i * ldc + 8 * q;
        __m256i v = _mm256_load_si256((const __m256i*)(tile[i] + 8 * q));
        if (accumulate) v = _mm256_add_epi32(v, _mm256_maskload_epi32(c, m));
        _mm256_maskstore_epi32(c, m, v);
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// The shared driver. c: int32 [M, N] contiguous, K > 0.
template <class P>
void gemm(View a, View b, int64_t M, int64_t N, int64_t K, int32_t* c) {
  using TA = typename P::TA;
  using TB = typename P::TB;
  constexpr int MR = P::MR, NR = P::NR;
  constexpr int64_t KC = P::KC, NC = P::NC, MC = P::MC;
  const int64_t mpanels = ceil_div(M, MR), npanels = ceil_div(N, NR);
  const bool direct = P::direct_a(a, K);

  // Items: N is split first (each item packs only its own columns of B); M only when there are
  // fewer NR panels than threads. Small products run on one thread.
  const int64_t nt = M * N * K < (1 << 20) ? 1 : at::get_num_threads();
  const int64_t items_n = std::min(nt, npanels), items_m = std::min(ceil_div(nt, items_n), mpanels);
  parallel_tasks(items_n * items_m, [&](int64_t item) {
    TB* bpack = reinterpret_cast<TB*>(int8_cpu::thread_scratch(0, KC * NC * sizeof(TB)));
    TA* apack = reinterpret_cast<TA*>(int8_cpu::thread_scratch(1, MC * KC * sizeof(TA)));
    const int64_t im = item / items_n, in = item % items_n;
    const int64_t m0 = im * mpanels / items_m * MR;
    const int64_t m1 = std::min(M, (im + 1) * mpanels / items_m * MR);
    const int64_t n0 = in * npanels / items_n * NR;
    const int64_t n1 = std::min(N, (in + 1) * npanels / items_n * NR);
    // The correction for B's + 128 offset (VNNI): 128 * the row sums of this item's rows of A.
    std::vector<int32_t> rowcorr;
    if constexpr (P::kOffsetB) {
      rowcorr.resize(m1 - m0);
      P::row_corr(View{a.p + m0 * a.s0, a.s0, a.s1}, m1 - m0, K, rowcorr.data());
    }
    for (int64_t jc = n0; jc < n1; jc += NC) {
      const int64_t nc = std::min(NC, n1 - jc);
      for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = std::min(KC, K - pc), kcp = round_up(kc, 4);
        // The whole block at once, not panel by panel as the kernels need it: a row-major B is
        // then read in runs of NC bytes per row, not 64 (panel by panel, even with the next panel
        // prefetched during the kernels, measured 2x slower at M = 1, where reading B is the work).
        P::pack_b(b, pc, kc, jc, nc, bpack);
        for (int64_t ic = m0; ic < m1; ic += MC) {
          const int64_t mc = std::min(MC, m1 - ic);
          const TA* ablk = reinterpret_cast<const TA*>(a.p + ic * a.s0 + pc);
          int64_t lda = a.s0;
          if (!direct) {
            P::pack_a(View{a.p + ic * a.s0 + pc * a.s1, a.s0, a.s1}, mc, kc, kcp, apack);
            ablk = apack;
            lda = kcp;
          }
          for (int64_t j = 0; j * NR < nc; ++j)
            for (int64_t i = 0; i < mc; i += MR) {
              const int mr = (int)std::min<int64_t>(MR, mc - i);
              const int nr = (int)std::min<int64_t>(NR, nc - j * NR);
              auto kernel = mr == MR ? &P::template kernel<true> : &P::template kernel<false>;
              kernel(ablk + i * lda, lda, bpack + j * kcp * NR, kcp / P::KG,
                     c + (ic + i) * N + jc + j * NR, N, mr, nr, /*accumulate=*/pc > 0,
                     pc + kc >= K && P::kOffsetB ? rowcorr.data() + (ic + i - m0) : nullptr);
            }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Small M with k contiguous in B (b = W^T, W [N, K] the nn.Linear weight; row n of W starts at
// b.p + n * b.s1): each C[m, n] is a dot product of two contiguous rows, so W is streamed once, in
// place, with no packing. Reading W is the work here (1 or 2 multiply-adds per byte), and the
// packed path's transpose of W cost more than the GEMM itself (1x4096x4096: 2.1 ms against 0.4-0.7
// this way, one thread). W is the u8 operand, w + 128 (one xor per 64 bytes of W, shared by the
// MR rows of A), A the s8 one; C = sum - 128 * rowsum(A), no column sums needed.
namespace dot {

constexpr int64_t kMaxM = 24;

// Whether to take this path. One thread, against the packed GEMM (b = W^T; min of 20-30 runs on
// a shared machine): 1x4096x4096 0.4-0.5 vs 1.6-1.8 ms, 8x4096x4096 1.2-1.4 vs 2.5-3.2,
// 24x4096x4096 2.8-3.1 vs 3.7-4.1, 32x4096x4096 3.4-5.5 vs 4.2-4.5, 24x4096x11008 6.7 vs 9.8-10.5,
// but 16x1024x1024 0.13-0.19 vs 0.12 ms: from M = 8 on, only when W is too large for the caches
// to hold its packed copy (the packed GEMM reuses that better).
bool use(View b, int64_t M, int64_t N, int64_t K) {
  return b.s0 == 1 && (M <= 8 || (M <= kMaxM && N * K >= (int64_t{1} << 22)));
}

// C[0:MR, 0:nr] (row stride ldc) = A[0:MR, 0:K] . W[0:nr, 0:K]^T - comp[0:MR] (comp = 128 * row
// sums of A). W: rows contiguous (stride ldw), rows past nr repeat the last one. A: row stride
// lda, zero padded to a multiple of 64 k, so that W's bytes past K may be anything.
template <int MR, int NR>
VNNI_TARGET void tile(const int8_t* A, int64_t lda, const int8_t* W, int64_t ldw, int64_t K, int32_t* C,
                      int64_t ldc, int nr, const int32_t* comp) {
  static_assert(MR * NR <= 16, "one hsum16");
  const __m512i x80 = _mm512_set1_epi8((char)0x80);
  __m512i acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_si512();
  const int8_t* w[NR];
  for (int n = 0; n < NR; ++n) w[n] = W + std::min(n, nr - 1) * ldw;
  // The last partial 64 bytes of each row of W, copied so that every load is a plain one (masked
  // loads in every step measured 1.35x slower; a separate masked last step made GCC keep acc in
  // memory).
  const int64_t kfull = K / 64 * 64;
  alignas(64) int8_t wtail[NR][64];
  if (kfull < K)
    for (int n = 0; n < NR; ++n) std::memcpy(wtail[n], w[n] + kfull, K - kfull);
  for (int64_t k = 0; k < K; k += 64) {
    __m512i wv[NR];
#pragma GCC unroll 8
    for (int n = 0; n < NR; ++n) {
      // The next tile's rows into L2: one thread then streams W at 20-24 GB/s, not 11-15.
      _mm_prefetch((const char*)(w[n] + NR * ldw + k), _MM_HINT_T1);
      wv[n] = _mm512_xor_si512(_mm512_loadu_si512(k < kfull ? w[n] + k : wtail[n]), x80);
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const __m512i av = _mm512_loadu_si512(A + m * lda + k);
#pragma GCC unroll 8
      for (int n = 0; n < NR; ++n) acc[m * NR + n] = _mm512_dpbusd_epi32(acc[m * NR + n], wv[n], av);
    }
  }
  alignas(64) int32_t sum[16];
  _mm512_store_si512(sum, int8_cpu::hsum16(acc));
  for (int m = 0; m < MR; ++m)  // wrapping, as the vector sums did
    for (int n = 0; n < nr; ++n) C[m * ldc + n] = int32_t(uint32_t(sum[m * NR + n]) - uint32_t(comp[m]));
}

// use(b, M, N, K); c: int32 [M, N] contiguous, K > 0.
void gemm(View a, View b, int64_t M, int64_t N, int64_t K, int32_t* c) {
  // A copied to rows of lda = K rounded up to 64, zero padded (M * K bytes, small here), and the
  // compensation for W's + 128: 128 * the row sums of A.
  const int64_t lda = round_up(K, 64);
  std::vector<int8_t> apad(M * lda, 0);
  int32_t comp[kMaxM];
  for (int64_t i = 0; i < M; ++i) {
    int64_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += apad[i * lda + k] = a.p[i * a.s0 + k * a.s1];
    comp[i] = int32_t(uint32_t(s) * 128u);  // modulo 2^32, as the sums it is subtracted from
  }
  const int8_t* ap = apad.data();
  // Tiles: 8 columns of W for 1-2 rows of A (more rows in flight to memory), else 4 columns x up to
  // 4 rows; one W tile (4 rows) stays in L1 while the row groups of A pass over it.
  using Tile = void (*)(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*, int64_t, int,
                       const int32_t*);
  const Tile tiles8[] = {nullptr, tile<1, 8>, tile<2, 8>};
  const Tile tiles4[] = {nullptr, tile<1, 4>, tile<2, 4>, tile<3, 4>, tile<4, 4>};
  const int NR = M <= 2 ? 8 : 4;
  const int64_t tiles = ceil_div(N, NR);
  const int64_t nt = std::min<int64_t>(tiles, M * N * K < (1 << 20) ? 1 : at::get_num_threads());
  parallel_tasks(nt, [&](int64_t t) {
    for (int64_t j = t * tiles / nt; j < (t + 1) * tiles / nt; ++j) {
      const int64_t n = j * NR;
      const int8_t* w = b.p + n * b.s1;
      const int nr = (int)std::min<int64_t>(NR, N - n);
      for (int64_t i = 0; i < M; i += 4) {
        const Tile fn = NR == 8 ? tiles8[M] : tiles4[std::min<int64_t>(4, M - i)];
        fn(ap + i * lda, lda, w, b.s1, K, c + i * N + n, N, nr, comp + i);
      }
    }
  });
}

}  // namespace dot

#endif  // __x86_64__

// Scalar path: row i of C accumulates a[i, k] * b[k, :] in uint32 (wrapping, no UB) so the
// compiler can vectorize the inner loop for the baseline ISA. b: unit column stride.
void gemm_scalar(View a, View b, int64_t M, int64_t N, int64_t K, int32_t* c) {
  const int64_t tasks = std::min<int64_t>(M, M * N * K < (1 << 20) ? 1 : at::get_num_threads());
  parallel_tasks(tasks, [&](int64_t t) {
    for (int64_t i = t * M / tasks; i < (t + 1) * M / tasks; ++i) {
      uint32_t* row = reinterpret_cast<uint32_t*>(c + i * N);
      std::fill(row, row + N, 0u);
      for (int64_t k = 0; k < K; ++k) {
        const int32_t av = a.p[i * a.s0 + k * a.s1];
        const int8_t* brow = b.p + k * b.s0;
        for (int64_t j = 0; j < N; ++j) row[j] += uint32_t(av * brow[j]);
      }
    }
  });
}

// a: int8 [M, K], b: int8 [K, N], any strides -> int32 [M, N] contiguous.
at::Tensor int8_mm_cpu(const at::Tensor& a, const at::Tensor& b) {
  COMPRESS_CHECK_DEVICE("int8_mm", a, at::kCPU);
  COMPRESS_CHECK_DEVICE("int8_mm", b, at::kCPU);
  COMPRESS_CHECK_DTYPE("int8_mm", a, at::kChar);
  COMPRESS_CHECK_DTYPE("int8_mm", b, at::kChar);
  COMPRESS_CHECK_DIM("int8_mm", a, 2);
  COMPRESS_CHECK_DIM("int8_mm", b, 2);
  COMPRESS_CHECK("int8_mm", a.size(1) == b.size(0), "expected `b` to have a.size(1) = ", a.size(1),
                 " rows (K), got ", b.size(0));
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  if (M == 0 || N == 0 || K == 0) return at::zeros({M, N}, a.options().dtype(at::kInt));
  at::Tensor c = at::empty({M, N}, a.options().dtype(at::kInt));
  const View av{a.const_data_ptr<int8_t>(), a.stride(0), a.stride(1)};
  [[maybe_unused]] const View bv{b.const_data_ptr<int8_t>(), b.stride(0), b.stride(1)};
  switch (active_cpu_isa()) {
#if defined(__x86_64__)
    case CpuIsa::Avx512Vnni:
      if (dot::use(bv, M, N, K)) dot::gemm(av, bv, M, N, K, c.data_ptr<int32_t>());
      else gemm<Vnni>(av, bv, M, N, K, c.data_ptr<int32_t>());
      break;
    case CpuIsa::Avx2: gemm<Avx2>(av, bv, M, N, K, c.data_ptr<int32_t>()); break;
#endif
    default: {
      const at::Tensor bc = b.stride(1) == 1 ? b : b.contiguous();  // the inner loop walks rows
      const View bcv{bc.const_data_ptr<int8_t>(), bc.stride(0), 1};
      gemm_scalar(av, bcv, M, N, K, c.data_ptr<int32_t>());
    }
  }
  return c;
}

}  // namespace

COMPRESS_REGISTER_CPU(int8_mm, int8_mm_cpu)

}  // namespace compress
