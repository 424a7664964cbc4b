// Helpers shared by the int8 CPU kernels (int8_mm_cpu.cpp, int8_quant_cpu.cpp). CPU only.
#pragma once

#include <cstdint>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
// GCC 12's avx512fintrin.h trips -W(maybe-)uninitialized on its own _mm512_undefined_epi32()
// (GCC bug 105593) wherever _mm512_shuffle_i32x4, the unpacks or _mm512_slli_epi32 are inlined:
// off for the files that include this one.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#endif

namespace compress {
namespace int8_cpu {

// Packing buffers, two per thread, kept between calls: allocating them afresh costs a page fault
// per 4 KiB on every call (measured: ~800 faults, ~0.3 ms, per 1024^3 int8_mm call). 64-byte
// aligned; their contents do not survive the next call with the same slot on the thread.
inline uint8_t* thread_scratch(int slot, int64_t bytes) {
  thread_local std::vector<uint8_t> buf[2];
  std::vector<uint8_t>& v = buf[slot];
  if ((int64_t)v.size() < bytes + 64) v.resize(bytes + 64);
  return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(v.data()) + 63) & ~uintptr_t{63});
}

#if defined(__x86_64__)
#define INT8_CPU_AVX512 __attribute__((target("avx512f"), always_inline)) inline

// 4 x 4 transpose of 128-bit lanes: lane L of out[i] = lane i of in[L].
INT8_CPU_AVX512 void transpose_lanes(const __m512i* in, __m512i* out) {
  const __m512i x0 = _mm512_shuffle_i32x4(in[0], in[1], 0x44);
  const __m512i x1 = _mm512_shuffle_i32x4(in[0], in[1], 0xEE);
  const __m512i x2 = _mm512_shuffle_i32x4(in[2], in[3], 0x44);
  const __m512i x3 = _mm512_shuffle_i32x4(in[2], in[3], 0xEE);
  out[0] = _mm512_shuffle_i32x4(x0, x2, 0x88);
  out[1] = _mm512_shuffle_i32x4(x0, x2, 0xDD);
  out[2] = _mm512_shuffle_i32x4(x1, x3, 0x88);
  out[3] = _mm512_shuffle_i32x4(x1, x3, 0xDD);
}

// 16 x 16 transpose of dwords: r[c] holds 64 bytes of row c (of 16); then dword c of v[g] holds
// bytes 4g .. 4g + 3 of row c. Packs a k-contiguous int8 matrix (an [N, K] weight) into
// k-groups of 16 columns.
INT8_CPU_AVX512 void transpose_16x16_dwords(const __m512i* r, __m512i* v) {
  __m512i t[16], u[16];
  for (int c = 0; c < 16; c += 2) {  // t[c + e] lane L: dwords 4L + 2e, +1 of c, c + 1
    t[c] = _mm512_unpacklo_epi32(r[c], r[c + 1]);
    t[c + 1] = _mm512_unpackhi_epi32(r[c], r[c + 1]);
  }
  for (int c = 0; c < 16; c += 4) {  // u[c + e] lane L: dword 4L + e of c .. c + 3
    u[c] = _mm512_unpacklo_epi64(t[c], t[c + 2]);
    u[c + 1] = _mm512_unpackhi_epi64(t[c], t[c + 2]);
    u[c + 2] = _mm512_unpacklo_epi64(t[c + 1], t[c + 3]);
    u[c + 3] = _mm512_unpackhi_epi64(t[c + 1], t[c + 3]);
  }
  for (int e = 0; e < 4; ++e) {  // v[4L + e]: dword 4L + e of all 16 rows
    const __m512i in[4] = {u[e], u[4 + e], u[8 + e], u[12 + e]};
    __m512i out[4];
    transpose_lanes(in, out);
    for (int L = 0; L < 4; ++L) v[4 * L + e] = out[L];
  }
}

// hsum16: lane i of the result = the sum of the 16 lanes of v[i], int32 or float32 lanes (the
// shuffles move bits; only the adds differ).
INT8_CPU_AVX512 __m512i bits(__m512i v) { return v; }
INT8_CPU_AVX512 __m512i bits(__m512 v) { return _mm512_castps_si512(v); }
INT8_CPU_AVX512 __m512i add_bits(__m512i a, __m512i b, __m512i) { return _mm512_add_epi32(a, b); }
INT8_CPU_AVX512 __m512i add_bits(__m512i a, __m512i b, __m512) {
  return _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b)));
}
INT8_CPU_AVX512 void cast_bits(__m512i v, __m512i* out) { *out = v; }
INT8_CPU_AVX512 void cast_bits(__m512i v, __m512* out) { *out = _mm512_castsi512_ps(v); }

template <class V>  // __m512i or __m512
INT8_CPU_AVX512 V hsum16(const V* v) {
  const V tag{};
  __m512i t[8], u[4];
  for (int j = 0; j < 8; ++j)  // t[j] 128-bit lane L: partial sums of v[2j], v[2j + 1] (2 each)
    t[j] = add_bits(_mm512_unpacklo_epi32(bits(v[2 * j]), bits(v[2 * j + 1])),
                    _mm512_unpackhi_epi32(bits(v[2 * j]), bits(v[2 * j + 1])), tag);
  for (int j = 0; j < 4; ++j)  // u[j] 128-bit lane L: partial sums of v[4j .. 4j + 3]
    u[j] = add_bits(_mm512_unpacklo_epi64(t[2 * j], t[2 * j + 1]), _mm512_unpackhi_epi64(t[2 * j], t[2 * j + 1]), tag);
  const __m512i s01 = add_bits(_mm512_shuffle_i32x4(u[0], u[1], 0x88), _mm512_shuffle_i32x4(u[0], u[1], 0xDD), tag);
  const __m512i s23 = add_bits(_mm512_shuffle_i32x4(u[2], u[3], 0x88), _mm512_shuffle_i32x4(u[2], u[3], 0xDD), tag);
  V r;
  cast_bits(add_bits(_mm512_shuffle_i32x4(s01, s23, 0x88), _mm512_shuffle_i32x4(s01, s23, 0xDD), tag), &r);
  return r;
}
#undef INT8_CPU_AVX512
#endif  // __x86_64__

}  // namespace int8_cpu
}  // namespace compress
