// The recurrence of compress::lstm_layer / gru_layer and their compressed-weight variants on the
// CPU, for every weight format: vector math, the packed-weight policies, one step's chunk work and
// the threaded sequence. Included by rnn_cpu.cpp only (the ops, checks and packing live there).
//
// Shapes: T steps, B batch rows, H hidden units, P state width (LSTM proj_size, else H), G gates
// (4 LSTM, 3 GRU), V = 16 hidden units per chunk, NC = ceil(H / V) chunks.
//
// A step computes, per chunk of V units, acc[b][g] = sum_k w[g*H + u][k] * h[b][k] for the V units
// u of all G gates with vector FMAs on a broadcast h[k] (no horizontal sums), then the gate
// epilogue (sigmoid / tanh from one vector exp, state update, lengths mask) on the same registers.
// h and c stay float32 between steps. How w is stored is a policy with one method,
// matvec<ISA, G, NB>(chunk, StageInput, acc):
//   DenseChunks  float32 [NC][K][G][V]                                   (lstm_layer, gru_layer)
//   Int8Chunks   int8 w = q * scale (per row), the scale applied once after the K loop; AVX2 and
//                baseline convert q to float in registers, AVX-512 multiplies it with h split into
//                bytes by VNNI (exact integer sums, see "int8 weights with AVX-512 VNNI") (*_w8)
//   BsrChunks    per (chunk, gate) only the k a stored block covers: a k list and float32 [nk][V]
//                values; a zero block is never read                               (*_layer_bsr)
// Padding units (u >= H in the last chunk) have zero weights, so they compute harmless values
// that are never stored.
//
// Threads: one parallel_tasks (cpu_parallel.h) over W workers for the whole sequence (not one per
// step: the fork/join of a per-step parallel_for costs several microseconds, a step at B = 1,
// H = 256 about two). Each step is a stage of chunks split into W parts; a worker computes the
// chunks of its own part (so each keeps its slice of the weight in its cache), then unclaimed
// chunks of the others, then waits for the stage, computing itself any chunk whose worker is late
// (run_sequence). An LSTM with projection has two stages per step.
//
// ISA: the code is written once with GCC vector extensions (16 floats) and compiled three times
// per weight format with per-function target attributes (AVX-512, AVX2+FMA, baseline), chosen by
// active_cpu_isa().
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "cpu_features.h"
#include "cpu_parallel.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define RNN_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))
#define RNN_AVX2_TARGET __attribute__((target("avx2,fma")))
#endif
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vectors only cross always_inline boundaries
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm256_undefined_si256()
// (GCC bug 105593) wherever _mm512_cvtepi8_epi32 is inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#define RNN_INLINE inline __attribute__((always_inline))

namespace compress::rnn_cpu {

constexpr int64_t V = 16;
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));

RNN_INLINE vf splat(float x) { return vf{} + x; }
RNN_INLINE vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
// ISA: 0 baseline, 1 AVX2, 2 AVX-512 (the kernels' template parameter). GCC 12 turns the generic
// int8 -> float vector conversion into 16 scalar conversions, hence the intrinsics. These are
// not always_inline (GCC refuses to inline an AVX-512 function into the default-target templates
// on the way); `flatten` on run_chunk_avx512 / _avx2 inlines them there.
enum : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
template <int ISA>
RNN_INLINE vf load(const float* p) {
  return load(p);
}
template <int ISA>
RNN_INLINE vf load(const int8_t* p) {  // 16 int8 -> 16 float (exact)
  float tmp[V];
  for (int64_t l = 0; l < V; ++l) tmp[l] = p[l];
  return load(tmp);
}
#if defined(__x86_64__)
template <>
RNN_AVX512_TARGET inline vf load<kAvx512>(const int8_t* p) {
  return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
template <>
RNN_AVX2_TARGET inline vf load<kAvx2>(const int8_t* p) {
  const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8))));
  vf v;
  std::memcpy(&v, &lo, 32);
  std::memcpy(reinterpret_cast<char*>(&v) + 32, &hi, 32);
  return v;
}
#endif
RNN_INLINE vf load_n(const float* p, int64_t n) {
  if (n == V) return load(p);
  float tmp[V] = {};
  for (int64_t l = 0; l < n; ++l) tmp[l] = p[l];
  return load(tmp);
}
RNN_INLINE void store_n(float* p, const vf& v, int64_t n) {
  if (n == V) {
    std::memcpy(p, &v, sizeof(v));
    return;
  }
  float tmp[V];
  std::memcpy(tmp, &v, sizeof(v));
  for (int64_t l = 0; l < n; ++l) p[l] = tmp[l];
}

// exp(x) for float32: x = n ln2 + r (Cody-Waite), degree-6 Taylor for e^r (|r| <= ln2/2, relative
// error < 2e-7), 2^n built in the exponent bits. x is clamped to [-87, 88], so 2^n stays normal.
RNN_INLINE vf vexp(const vf& x0) {
  vf x = x0 < -87.0f ? splat(-87.0f) : x0;
  x = x > 88.0f ? splat(88.0f) : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting rounds to an integer
  vf n = (x * 1.44269504088896341f + magic) - magic;
  vf r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  vf p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * (vf)e;
}
RNN_INLINE vf vsigmoid(const vf& x) { return 1.0f / (1.0f + vexp(-x)); }
RNN_INLINE vf vtanh(const vf& x) { return 1.0f - 2.0f / (1.0f + vexp(2.0f * x)); }

// acc[b][g] = sum_k w[k][g][:] * h[b][k] for NB batch rows; w is one chunk [K][G][V] of float or
// int8. With one row, two interleaved accumulator sets hide the FMA latency (4 chains are too few).
template <int ISA, int G, int NB, class T>
RNN_INLINE void chunk_dot(const T* w, const float* h, int64_t ldh, int64_t K, vf (&acc)[NB][G]) {
  constexpr int S = NB == 1 ? 2 : 1;
  vf a[S][NB][G];
  for (int s = 0; s < S; ++s)
    for (int b = 0; b < NB; ++b)
      for (int g = 0; g < G; ++g) a[s][b][g] = vf{};
  int64_t k = 0;
  for (; k + S <= K; k += S)
    for (int s = 0; s < S; ++s) {
      const T* wk = w + (k + s) * G * V;
      vf wv[G];
      for (int g = 0; g < G; ++g) wv[g] = load<ISA>(wk + g * V);
      for (int b = 0; b < NB; ++b) {
        const vf hb = splat(h[b * ldh + k + s]);
        for (int g = 0; g < G; ++g) a[s][b][g] += wv[g] * hb;
      }
    }
  for (; k < K; ++k) {
    const T* wk = w + k * G * V;
    for (int g = 0; g < G; ++g) {
      const vf wv = load<ISA>(wk + g * V);
      for (int b = 0; b < NB; ++b) a[0][b][g] += wv * splat(h[b * ldh + k]);
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int g = 0; g < G; ++g) acc[b][g] = S == 2 ? a[0][b][g] + a[S - 1][b][g] : a[0][b][g];
}

// What a stage multiplies its weight by: `rows` vectors of width K at h (row stride ldh), of which
// a matvec call takes rows b0 .. b0 + NB - 1; (call, stage) names them for per-stage preparation.
struct StageInput {
  const float* h;
  int64_t ldh, rows, b0;
  uint64_t call;
  int64_t stage;
};

// Float32 chunks [NC][K][G][V] (G of the stage that uses it: 4 or 3 gates, 1 for w_hr).
struct DenseChunks {
  const float* w;
  int64_t K;
  // Per-step cost of `rows` weight rows for one batch row, in float32 multiply-adds (pick_workers).
  int64_t work(int64_t rows) const { return rows * K; }
  template <int ISA, int G, int NB>
  RNN_INLINE void matvec(int64_t chunk, const StageInput& in, vf (&acc)[NB][G]) const {
    chunk_dot<ISA, G, NB>(w + chunk * K * G * V, in.h + in.b0 * in.ldh, in.ldh, K, acc);
  }
};

#if defined(__x86_64__)
// ------------------------------------------------------------- int8 weights with AVX-512 VNNI
// Converting int8 weights to float costs two instructions per 16 weights besides the FMA, so at
// B = 1 (each weight used once per step) the float path is bound by them: 10 us per step at
// H = 256 on Zen 4, no faster than float32 weights. vpdpbusd multiplies 64 bytes by 64 bytes and
// adds in int32 in one: with h as four signed bytes ("digits"), four of them per 64 products make
// the step 3.5-4.5 us.
//
// h as digits: per stage and batch row, with 2^e the power of two above max|h|, the integer
// x = trunc(h * 2^(30 - e)) (|x| < 2^30) is split into balanced base-256 digits d0..d3 (each in
// [-128, 127], x = d0 + 2^8 d1 + 2^16 d2 + 2^24 d3). Scaling by a power of two is exact, so every
// element within 2^6 of max|h| is represented exactly, smaller ones to 2^(e - 30) (below float32's
// rounding of the largest element). The weights are stored as q + 128 (vpdpbusd wants unsigned
// bytes there), corrected by 128 * sum_k d. Every digit's sum is exact in int32 for K <= 65536;
// the four are combined in float32. Rows with a non-finite h take the float path.
constexpr int64_t kVnniMaxK = 65536;

struct HDigits {
  uint64_t call = 0;
  int64_t stage = -1;
  const float* h = nullptr;
  std::vector<int32_t> d;     // [rows][4][K4]: digit i of h[k .. k + 3] as 4 bytes (0 past K)
  std::vector<int32_t> dsum;  // [rows][4]: sum over k of digit i
  std::vector<float> unit;    // [rows]: 2^(e - 30), the value of digit 0; NaN where h is not finite
};

// The digits of the stage's h, made once per thread and stage (noinline: `flatten` would copy it
// into every kernel).
RNN_AVX512_TARGET __attribute__((noinline)) inline const HDigits& h_digits(const StageInput& in, int64_t K) {
  thread_local HDigits hd;
  if (hd.call == in.call && hd.stage == in.stage && hd.h == in.h) return hd;
  const int64_t K4 = (K + 3) / 4;
  hd.d.assign(in.rows * 4 * K4, 0);
  hd.dsum.assign(in.rows * 4, 0);
  hd.unit.assign(in.rows, 0.0f);
  for (int64_t b = 0; b < in.rows; ++b) {
    const float* h = in.h + b * in.ldh;
    vf amax{}, nonfinite{};
    for (int64_t k = 0; k < K; k += V) {
      const vf v = load_n(h + k, std::min(V, K - k));
      const vf a = v < 0.0f ? -v : v;
      amax = a > amax ? a : amax;
      nonfinite += v * 0.0f;  // NaN where v is inf or NaN
    }
    float m = 0.0f;
    bool finite = true;
    for (int l = 0; l < V; ++l) {
      m = std::max(m, amax[l]);
      finite = finite && nonfinite[l] == 0.0f;
    }
    if (!finite) {
      hd.unit[b] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    if (m == 0.0f) continue;  // all digits 0
    int e;
    std::frexp(m, &e);  // m < 2^e
    e = std::max(e, -96);  // 2^(30 - e) stays a float
    const float up = std::ldexp(1.0f, 30 - (int)e);
    hd.unit[b] = std::ldexp(1.0f, e - 30);
    vi sums[4] = {};
    int32_t* dst = hd.d.data() + b * 4 * K4;
    for (int64_t k = 0; k < K; k += V) {
      vi x = __builtin_convertvector(load_n(h + k, std::min(V, K - k)) * up, vi);
      for (int i = 0; i < 4; ++i) {
        const vi di = i < 3 ? (x << 24) >> 24 : x;
        x = (x - di) >> 8;
        sums[i] += di;
        const __m128i bytes = _mm512_cvtepi32_epi8(reinterpret_cast<const __m512i&>(di));
        std::memcpy(reinterpret_cast<char*>(dst + i * K4) + k, &bytes, std::min<int64_t>(16, 4 * K4 - k));
      }
    }
    for (int i = 0; i < 4; ++i)
      for (int l = 0; l < V; ++l) hd.dsum[b * 4 + i] += sums[i][l];
  }
  hd.call = in.call;
  hd.stage = in.stage;
  hd.h = in.h;
  return hd;
}

// acc[b][g] = sum_k (q[g*H + u][k]) * h[b0 + b][k] for one chunk w = [G][K4][V][4] of q + 128.
// With one row, two gates at a time (8 accumulator chains).
template <int G, int NB>
RNN_AVX512_TARGET inline void quad_dot(const uint8_t* w, int64_t K4, const HDigits& hd, int64_t b0,
                                       vf (&acc)[NB][G]) {
  constexpr int GB = NB == 1 && G % 2 == 0 ? 2 : 1;
  const int32_t* dig[NB];
  for (int b = 0; b < NB; ++b) dig[b] = hd.d.data() + (b0 + b) * 4 * K4;
  for (int g0 = 0; g0 < G; g0 += GB) {
    __m512i a[GB][NB][4];
    for (int gg = 0; gg < GB; ++gg)
      for (int b = 0; b < NB; ++b)
        for (int i = 0; i < 4; ++i) a[gg][b][i] = _mm512_setzero_si512();
    for (int64_t k4 = 0; k4 < K4; ++k4)
      for (int gg = 0; gg < GB; ++gg) {
        const __m512i wv = _mm512_loadu_si512(w + ((g0 + gg) * K4 + k4) * V * 4);
        for (int b = 0; b < NB; ++b)
          for (int i = 0; i < 4; ++i)
            a[gg][b][i] = _mm512_dpbusd_epi32(a[gg][b][i], wv, _mm512_set1_epi32(dig[b][i * K4 + k4]));
      }
    for (int gg = 0; gg < GB; ++gg)
      for (int b = 0; b < NB; ++b) {
        __m512 r = _mm512_setzero_ps();
        for (int i = 3; i >= 0; --i) {
          const __m512i t = _mm512_sub_epi32(a[gg][b][i], _mm512_set1_epi32(128 * hd.dsum[(b0 + b) * 4 + i]));
          r = _mm512_fmadd_ps(r, _mm512_set1_ps(256.0f), _mm512_cvtepi32_ps(t));
        }
        r = _mm512_mul_ps(r, _mm512_set1_ps(hd.unit[b0 + b]));
        std::memcpy(&acc[b][g0 + gg], &r, sizeof(r));
      }
  }
}
#endif

// The float path on the VNNI layout (a row whose h is not finite, K > kVnniMaxK): acc[g] =
// sum_k q[g*H + u][k] * h[k] for one chunk w = [G][K4][V][4] of q + 128. Rare, so compiled once
// (baseline ISA) rather than into every kernel.
template <int G>
__attribute__((noinline)) void quad_dot_float(const uint8_t* w, int64_t K4, int64_t K, const float* h, vf (&acc)[G]) {
  for (int g = 0; g < G; ++g) {
    vf a{};
    for (int64_t k4 = 0; k4 < K4; ++k4) {
      vi x;
      std::memcpy(&x, w + (g * K4 + k4) * V * 4, sizeof(x));
      for (int j = 0; j < 4 && 4 * k4 + j < K; ++j)
        a += __builtin_convertvector(((x >> (8 * j)) & 255) - 128, vf) * splat(h[4 * k4 + j]);
    }
    acc[g] = a;
  }
}

// int8 weights w = q * scale (per row), float32 scales [NC][G][V] (0 in padding), applied after the
// sum over k. Two layouts, by the ISA the op runs on:
//   q   int8 [NC][K][G][V], converted to float in registers         (AVX2, baseline)
//   qq  q + 128 as uint8 [NC][G][K4][V][4] (K4 = ceil(K / 4), q = 0 past K), h as digits (above)
//                                                                    (AVX-512 VNNI)
struct Int8Chunks {
  const int8_t* q;
  const uint8_t* qq;
  const float* scale;
  int64_t K;
  // Counted as float32: the VNNI step is ~3x faster, but two workers still gain (pick_workers).
  int64_t work(int64_t rows) const { return rows * K; }
  template <int ISA, int G, int NB>
  RNN_INLINE void matvec(int64_t chunk, const StageInput& in, vf (&acc)[NB][G]) const {
    if constexpr (ISA == kAvx512) {
      const int64_t K4 = (K + 3) / 4;
      const uint8_t* w = qq + chunk * G * K4 * V * 4;
      bool vnni = K <= kVnniMaxK;
#if defined(__x86_64__)
      const HDigits& hd = h_digits(in, K);
      if (vnni) quad_dot<G, NB>(w, K4, hd, in.b0, acc);
#endif
      for (int b = 0; b < NB; ++b) {
#if defined(__x86_64__)
        vnni = K <= kVnniMaxK && hd.unit[in.b0 + b] == hd.unit[in.b0 + b];
#endif
        if (!vnni) quad_dot_float<G>(w, K4, K, in.h + (in.b0 + b) * in.ldh, acc[b]);
      }
    } else {
      chunk_dot<ISA, G, NB>(q + chunk * K * G * V, in.h + in.b0 * in.ldh, in.ldh, K, acc);
    }
    for (int g = 0; g < G; ++g) {
      const vf s = load(scale + (chunk * G + g) * V);
      for (int b = 0; b < NB; ++b) acc[b][g] *= s;
    }
  }
};

// Block-sparse: per (chunk, gate) i = c*G + g, entries seg[i] .. seg[i + 1] of kidx (the k of the
// weight columns that any stored block covers in those V rows, increasing) and of w [nk][V] (the V
// rows' values at that k, zero where a row's block is not stored). Rows of different gates have
// different k lists, so each gate is its own loop; NB = 1 takes four chains for the FMA latency.
struct BsrChunks {
  const float* w;
  const int32_t* kidx;
  const int64_t* seg;
  int64_t nk;  // entries of kidx in all
  int64_t work(int64_t) const { return nk * V; }
  template <int ISA, int G, int NB>
  RNN_INLINE void matvec(int64_t chunk, const StageInput& in, vf (&acc)[NB][G]) const {
    const float* h = in.h + in.b0 * in.ldh;
    const int64_t ldh = in.ldh;
    constexpr int S = NB == 1 ? 4 : NB == 2 ? 2 : 1;
    for (int g = 0; g < G; ++g) {
      const int64_t i0 = seg[chunk * G + g], i1 = seg[chunk * G + g + 1];
      vf a[S][NB];
      for (int s = 0; s < S; ++s)
        for (int b = 0; b < NB; ++b) a[s][b] = vf{};
      int64_t i = i0;
      for (; i + S <= i1; i += S)
        for (int s = 0; s < S; ++s) {
          const vf wv = load(w + (i + s) * V);
          const int64_t k = kidx[i + s];
          for (int b = 0; b < NB; ++b) a[s][b] += wv * splat(h[b * ldh + k]);
        }
      for (; i < i1; ++i) {
        const vf wv = load(w + i * V);
        for (int b = 0; b < NB; ++b) a[0][b] += wv * splat(h[b * ldh + kidx[i]]);
      }
      for (int b = 0; b < NB; ++b) {
        vf sum = a[0][b];
        for (int s = 1; s < S; ++s) sum += a[s][b];
        acc[b][g] = sum;
      }
    }
  }
};

// The states of a sequence: [depth][B][width] rings, step s reading slot s % depth and writing
// (s + 1) % depth. One worker: depth 2 (1 for hh). Several: one slot per step (see run_sequence).
struct States {
  float* h;   // [h_depth][B][P], slot 0 = h0
  float* c;   // LSTM: [c_depth][B][H], slot 0 = c0
  float* hh;  // LSTM with projection: o * tanh(c) of step s in slot s % hh_depth, [B][H]
  int64_t h_depth, c_depth, hh_depth;
};

// One layer and direction. GateW multiplies by w_hh, ProjW by w_hr (LSTM with projection only).
template <class GateW, class ProjW>
struct Problem {
  bool gru;
  int64_t T, B, H, P;
  bool reverse;
  const float* xg;       // [T, B, G*H] contiguous
  GateW w;               // w_hh [G*H, P]
  ProjW wr;              // w_hr [P, H] when proj
  bool proj;
  const float* bias;     // GRU b_hh [3H] or null
  const int64_t* len;    // [B] or null
  States st;
  float* y;              // [T, B, P]
  int64_t stages_per_step, workers;
  uint64_t call;         // distinct per op call (names the stages' inputs, StageInput)

  float* h_at(int64_t step) const { return st.h + (step % st.h_depth) * B * P; }
  float* c_at(int64_t step) const { return st.c + (step % st.c_depth) * B * H; }
  float* hh_at(int64_t step) const { return st.hh + (step % st.hh_depth) * B * H; }
};

// One chunk of the gate stage for batch rows b0 .. b0 + NB - 1.
template <int ISA, int G, int NB, class P_>
RNN_INLINE void gate_block(const P_& p, int64_t step, int64_t t, int64_t chunk, int64_t b0) {
  const float* hprev = p.h_at(step);
  float* hnext = p.h_at(step + 1);
  const int64_t u0 = chunk * V, n = std::min(V, p.H - u0);
  vf acc[NB][G];
  p.w.template matvec<ISA, G, NB>(chunk, StageInput{hprev, p.P, p.B, b0, p.call, 2 * step}, acc);
  for (int b = 0; b < NB; ++b) {
    const int64_t row = b0 + b;
    const bool active = p.len == nullptr || t < p.len[row];
    const float* x = p.xg + (t * p.B + row) * G * p.H + u0;
    if constexpr (G == 4) {
      const vf i = vsigmoid(acc[b][0] + load_n(x, n)), f = vsigmoid(acc[b][1] + load_n(x + p.H, n));
      const vf g = vtanh(acc[b][2] + load_n(x + 2 * p.H, n)), o = vsigmoid(acc[b][3] + load_n(x + 3 * p.H, n));
      const vf c_old = load_n(p.c_at(step) + row * p.H + u0, n);
      const vf c_new = f * c_old + i * g;
      const vf h_new = o * vtanh(c_new);
      store_n(p.c_at(step + 1) + row * p.H + u0, active ? c_new : c_old, n);
      if (p.proj) {  // the projection stage masks h and writes y
        store_n(p.hh_at(step) + row * p.H + u0, h_new, n);
        continue;
      }
      store_n(hnext + row * p.P + u0, active ? h_new : load_n(hprev + row * p.P + u0, n), n);
      store_n(p.y + (t * p.B + row) * p.P + u0, active ? h_new : vf{}, n);
    } else {
      vf ar = acc[b][0], az = acc[b][1], an = acc[b][2];
      if (p.bias != nullptr) {
        ar += load_n(p.bias + u0, n);
        az += load_n(p.bias + p.H + u0, n);
        an += load_n(p.bias + 2 * p.H + u0, n);
      }
      const vf r = vsigmoid(load_n(x, n) + ar), z = vsigmoid(load_n(x + p.H, n) + az);
      const vf nn = vtanh(load_n(x + 2 * p.H, n) + r * an);
      const vf h_old = load_n(hprev + row * p.H + u0, n);
      const vf h_new = (1.0f - z) * nn + z * h_old;
      store_n(hnext + row * p.H + u0, active ? h_new : h_old, n);
      store_n(p.y + (t * p.B + row) * p.H + u0, active ? h_new : vf{}, n);
    }
  }
}

// One chunk of V projected outputs (LSTM with w_hr): h = hh @ w_hr^T, masked.
template <int ISA, int NB, class P_>
RNN_INLINE void proj_block(const P_& p, int64_t step, int64_t t, int64_t chunk, int64_t b0) {
  const float* hprev = p.h_at(step);
  float* hnext = p.h_at(step + 1);
  const int64_t q0 = chunk * V, n = std::min(V, p.P - q0);
  vf acc[NB][1];
  p.wr.template matvec<ISA, 1, NB>(chunk, StageInput{p.hh_at(step), p.H, p.B, b0, p.call, 2 * step + 1}, acc);
  for (int b = 0; b < NB; ++b) {
    const int64_t row = b0 + b;
    const bool active = p.len == nullptr || t < p.len[row];
    store_n(hnext + row * p.P + q0, active ? acc[b][0] : load_n(hprev + row * p.P + q0, n), n);
    store_n(p.y + (t * p.B + row) * p.P + q0, active ? acc[b][0] : vf{}, n);
  }
}

template <int ISA, int NB, class P_>
RNN_INLINE void block(const P_& p, int64_t stage_kind, int64_t step, int64_t t, int64_t chunk, int64_t b0) {
  if (stage_kind == 1) proj_block<ISA, NB>(p, step, t, chunk, b0);
  else if (p.gru) gate_block<ISA, 3, NB>(p, step, t, chunk, b0);
  else gate_block<ISA, 4, NB>(p, step, t, chunk, b0);
}

inline int64_t chunks_of(int64_t n) { return (n + V - 1) / V; }

template <class P_>
int64_t stage_chunks(const P_& p, int64_t stage) {
  return chunks_of(stage % p.stages_per_step == 1 ? p.P : p.H);
}
// First chunk of worker w's part of a stage (w = workers: the end).
template <class P_>
int64_t part_begin(const P_& p, int64_t stage, int64_t w) {
  return w * stage_chunks(p, stage) / p.workers;
}

// One chunk of V hidden units (or projected outputs) of one stage, for every batch row: blocks of
// 4 rows, then 2, then 1 (a 3-row block would add a quarter to this file's compile time).
template <int ISA, class P_>
RNN_INLINE void run_chunk_impl(const P_& p, int64_t stage, int64_t chunk) {
  const int64_t step = stage / p.stages_per_step, kind = stage % p.stages_per_step;
  const int64_t t = p.reverse ? p.T - 1 - step : step;
  int64_t b0 = 0;
  for (; b0 + 4 <= p.B; b0 += 4) block<ISA, 4>(p, kind, step, t, chunk, b0);
  if (b0 + 2 <= p.B) {
    block<ISA, 2>(p, kind, step, t, chunk, b0);
    b0 += 2;
  }
  if (b0 < p.B) block<ISA, 1>(p, kind, step, t, chunk, b0);
}

#if defined(__x86_64__)
template <class P_>
RNN_AVX512_TARGET __attribute__((flatten)) void run_chunk_avx512(const P_& p, int64_t stage, int64_t chunk) {
  run_chunk_impl<kAvx512>(p, stage, chunk);
}
template <class P_>
RNN_AVX2_TARGET __attribute__((flatten)) void run_chunk_avx2(const P_& p, int64_t stage, int64_t chunk) {
  run_chunk_impl<kAvx2>(p, stage, chunk);
}
#endif
template <class P_>
void run_chunk_scalar(const P_& p, int64_t stage, int64_t chunk) {
  run_chunk_impl<kScalar>(p, stage, chunk);
}

inline void spin_pause() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

// Runs every stage of the sequence on p.workers workers (one: in order, no synchronisation).
//
// Several workers: stage s's chunk j is done when bit j of done[s] is set. A worker claims the
// chunks of its own part, then steals unclaimed ones, then waits for the stage; a chunk still
// unfinished after a few chunk-times (its worker was descheduled: the shared 2-core dev box
// stalled a blocking barrier for a time slice, 2.9 to 62 ms per call at B = 1, H = 256, T = 100)
// it computes itself. So no worker ever waits on another. This is safe because a chunk reads only
// earlier stages' outputs and writes only its own slice of this step's slots (the states keep one
// slot per step): a second run of it writes the same values, and a late first run can overwrite
// nothing that later stages use with anything else.
// Several workers end in a join (parallel_tasks), and on a busy machine that join waits for the
// other worker's thread to get a core: on the shared 2-core dev box at load 4-5, every two-worker
// call at B = 1, H = 256 took 12-28 ms (multiples of the 4 ms scheduler tick) against 1.3-1.6 ms
// on one worker. So a call whose join waited well past its own work makes the next calls run on
// one worker for a while, 10 ms doubling to 1 s while it goes on; a call that joins promptly resets.
class JoinBackoff {
 public:
  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  static bool active() { return now_ns() < until_ns().load(std::memory_order_relaxed); }
  // work_ns: the calling worker's time in the run, join_ns: its wait at the join.
  static void record(int64_t work_ns, int64_t join_ns) {
    if (join_ns <= std::max<int64_t>(200000, work_ns / 4)) {
      backoff_ns().store(0, std::memory_order_relaxed);
      return;
    }
    const int64_t b = std::clamp<int64_t>(2 * backoff_ns().load(std::memory_order_relaxed), 10000000, 1000000000);
    backoff_ns().store(b, std::memory_order_relaxed);
    until_ns().store(now_ns() + b, std::memory_order_relaxed);
  }

 private:
  static std::atomic<int64_t>& until_ns() {
    static std::atomic<int64_t> v{0};
    return v;
  }
  static std::atomic<int64_t>& backoff_ns() {
    static std::atomic<int64_t> v{0};
    return v;
  }
};

inline uint64_t new_call_id() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

// isa: the level the weights were packed for (Int8Chunks' layout depends on it).
template <class P_>
void run_sequence(const P_& p, CpuIsa isa) {
  using Fn = void (*)(const P_&, int64_t, int64_t);
  Fn fn = run_chunk_scalar<P_>;
#if defined(__x86_64__)
  switch (isa) {
    case CpuIsa::Avx512Vnni: fn = run_chunk_avx512<P_>; break;
    case CpuIsa::Avx2: fn = run_chunk_avx2<P_>; break;
    default: break;
  }
#endif
  const int64_t S = p.T * p.stages_per_step, W = p.workers;
  if (W == 1) {
    for (int64_t s = 0; s < S; ++s)
      for (int64_t chunk = 0; chunk < stage_chunks(p, s); ++chunk) fn(p, s, chunk);
    return;
  }
  const int64_t NW = (std::max(chunks_of(p.H), chunks_of(p.P)) + 63) / 64;  // done-bit words per stage
  // next[w * S + s]: the next unclaimed chunk of worker w's part of stage s (one worker's counters
  // are adjacent, so two workers never write one cache line); done[s * NW + i]: bits 64i.. of s.
  std::unique_ptr<std::atomic<int64_t>[]> next(new std::atomic<int64_t>[W * S]);
  std::unique_ptr<std::atomic<uint64_t>[]> done(new std::atomic<uint64_t>[S * NW]);
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t i = 0; i < NW; ++i) done[s * NW + i].store(0, std::memory_order_relaxed);
    for (int64_t w = 0; w < W; ++w) next[w * S + s].store(part_begin(p, s, w), std::memory_order_relaxed);
  }
  auto is_done = [&](int64_t s, int64_t j) {
    return (done[s * NW + j / 64].load(std::memory_order_acquire) >> (j % 64)) & 1;
  };
  auto stage_done = [&](int64_t s) {
    const int64_t n = stage_chunks(p, s);
    for (int64_t i = 0; i * 64 < n; ++i) {
      const int64_t bits = std::min<int64_t>(64, n - i * 64);
      const uint64_t full = bits == 64 ? ~uint64_t{0} : (uint64_t{1} << bits) - 1;
      if (done[s * NW + i].load(std::memory_order_acquire) != full) return false;
    }
    return true;
  };
  auto run = [&](int64_t s, int64_t j) {
    fn(p, s, j);
    done[s * NW + j / 64].fetch_or(uint64_t{1} << (j % 64), std::memory_order_release);
  };
  auto worker = [&](int64_t self) {
    using clock = std::chrono::steady_clock;
    for (int64_t s = 0; s < S; ++s) {
      if (stage_done(s)) continue;  // a worker that was descheduled catches up
      const auto t0 = clock::now();
      int64_t mine = 0;
      for (int64_t k = 0; k < W; ++k) {  // own part first, then steal chunk by chunk from the others
        const int64_t w = (self + k) % W, end = part_begin(p, s, w + 1);
        std::atomic<int64_t>& nx = next[w * S + s];
        while (nx.load(std::memory_order_relaxed) < end) {
          const int64_t j = nx.fetch_add(1, std::memory_order_relaxed);
          if (j >= end) break;
          if (!is_done(s, j)) run(s, j), ++mine;
        }
      }
      // Patience: three of this worker's chunk-times of this stage (at least 2 us).
      const auto patience = std::max<clock::duration>(std::chrono::microseconds(2), (clock::now() - t0) * 3 / std::max<int64_t>(mine, 1));
      const auto wait_from = clock::now();
      for (int spins = 0; !stage_done(s); ++spins) {
        spin_pause();
        if (spins % 16 != 15 || clock::now() - wait_from < patience) continue;
        for (int64_t j = 0; j < stage_chunks(p, s); ++j)
          if (!is_done(s, j)) run(s, j);
      }
    }
  };
  // Worker 0 runs on the calling thread (parallel_tasks' first range).
  const int64_t start_ns = JoinBackoff::now_ns();
  std::atomic<int64_t> done0_ns{0};
  parallel_tasks(W, [&](int64_t self) {
    worker(self);
    if (self == 0) done0_ns.store(JoinBackoff::now_ns(), std::memory_order_relaxed);
  });
  const int64_t d0 = done0_ns.load(std::memory_order_relaxed);
  JoinBackoff::record(d0 - start_ns, JoinBackoff::now_ns() - d0);
}

// One worker per ~16K float32 multiply-adds per step (the weights' work()), at most one per
// thread and per chunk. Measured at B = 1, T = 100 with 2 threads on the dev box (Zen 4, load
// 0.8; one and two workers interleaved, ms): H = 256 float32 1.57 / 0.73, int8 1.66 / 0.67, BSR
// with a quarter of the blocks 0.68 / 0.37; H = 128 float32 0.35 / 0.23, int8 0.30 / 0.23; H = 64
// float32 (16K per step) 0.109 / 0.098, BSR a quarter (4K) 0.064 / 0.082. Two workers keep half
// the weight each in their core's L2 (one streams all 1 MiB of an H = 256 w_hh from L3 every
// step), and the other thread is still spinning from the previous parallel region (the input
// projection's GEMM), so it starts at once.
inline int64_t pick_workers(int64_t macs_per_step, int64_t chunks) {
  if (JoinBackoff::active()) return 1;
  const int64_t by_work = std::max<int64_t>(1, macs_per_step / (1 << 14));
  return std::max<int64_t>(1, std::min<int64_t>({(int64_t)at::get_num_threads(), by_work, chunks}));
}

}  // namespace compress::rnn_cpu
