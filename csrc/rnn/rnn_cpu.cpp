// compress::lstm_layer and compress::gru_layer on the CPU: the whole recurrence in one call.
//
// Shapes (compress/ops/rnn.py): T steps, B batch rows, H hidden units, P state width (LSTM
// proj_size, else H). xg [T, B, G*H] holds the input projection (G = 4 LSTM, 3 GRU).
//
// Layout: the recurrent weight is packed once per call into float32 chunks of V = 16 hidden units,
// [H/V][K][G][V] (K = P), so a step computes V units of all G gates with vector FMAs on a
// broadcast h[k] and no horizontal sums; the gate epilogue (sigmoid / tanh from one vector exp,
// state update, lengths mask) runs on the same registers. h and c stay float32 between steps.
//
// Threads: one parallel_tasks (cpu_parallel.h) over W workers for the whole sequence (not one per step: the
// fork/join of a per-step parallel_for costs several microseconds, a step at B = 1, H = 256 about
// two). Each step is a stage of chunks split into W parts; a worker claims the chunks of its own
// part one by one (so each keeps its slice of the weight in its cache), then steals unclaimed
// chunks of the others, and waits until the stage is done. Claiming makes it deadlock-free when the
// workers do not run concurrently (nested parallelism runs them one after another: the first then
// does every chunk itself) and keeps a descheduled worker from stalling a step on a loaded
// machine. An LSTM with projection has two stages per step.
//
// ISA: the code is written once with GCC vector extensions (16 floats) and compiled three times
// with per-function target attributes (AVX-512, AVX2+FMA, baseline), chosen by active_cpu_isa().
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "common.h"
#include "cpu_features.h"
#include "cpu_parallel.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define AVX2_TARGET __attribute__((target("avx2,fma")))
#endif
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vectors only cross always_inline boundaries
#endif
#define RNN_INLINE inline __attribute__((always_inline))

namespace compress {
namespace {

constexpr int64_t V = 16;
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));

RNN_INLINE vf splat(float x) { return vf{} + x; }
RNN_INLINE vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
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

// acc[b][g] = sum_k w[k][g][:] * h[b][k] for NB batch rows; w is one packed chunk [K][G][V].
// With one row, two interleaved accumulator sets hide the FMA latency (4 chains are too few).
template <int G, int NB>
RNN_INLINE void chunk_matvec(const float* w, const float* h, int64_t ldh, int64_t K, vf (&acc)[NB][G]) {
  constexpr int S = NB == 1 ? 2 : 1;
  vf a[S][NB][G];
  for (int s = 0; s < S; ++s)
    for (int b = 0; b < NB; ++b)
      for (int g = 0; g < G; ++g) a[s][b][g] = vf{};
  int64_t k = 0;
  for (; k + S <= K; k += S)
    for (int s = 0; s < S; ++s) {
      const float* wk = w + (k + s) * G * V;
      vf wv[G];
      for (int g = 0; g < G; ++g) wv[g] = load(wk + g * V);
      for (int b = 0; b < NB; ++b) {
        const vf hb = splat(h[b * ldh + k + s]);
        for (int g = 0; g < G; ++g) a[s][b][g] += wv[g] * hb;
      }
    }
  for (; k < K; ++k) {
    const float* wk = w + k * G * V;
    for (int b = 0; b < NB; ++b)
      for (int g = 0; g < G; ++g) a[0][b][g] += load(wk + g * V) * splat(h[b * ldh + k]);
  }
  for (int b = 0; b < NB; ++b)
    for (int g = 0; g < G; ++g) acc[b][g] = S == 2 ? a[0][b][g] + a[S - 1][b][g] : a[0][b][g];
}

// Packs rows [g*H + u] (u < H) of a [G*H, K] weight into [ceil(H/V)][K][G][V] float32, zero padded.
at::Tensor pack_chunks(const at::Tensor& w, int64_t G, int64_t H) {
  const int64_t K = w.size(1), NC = (H + V - 1) / V;
  const at::Tensor wf = w.to(at::kFloat).contiguous();
  at::Tensor out = at::zeros({NC, K, G, V}, wf.options());
  const float* src = wf.const_data_ptr<float>();
  float* dst = out.data_ptr<float>();
  // Written in order; read as G*V row streams (a scatter by row measured ~4x slower at 1024 x 256).
  for (int64_t c = 0; c < NC; ++c)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t g = 0; g < G; ++g) {
        float* d = dst + ((c * K + k) * G + g) * V;
        for (int64_t l = 0; l < std::min(V, H - c * V); ++l) d[l] = src[(g * H + c * V + l) * K + k];
      }
  return out;
}

struct Problem {
  bool gru;
  int64_t T, B, H, P;
  bool reverse;
  const float* xg;       // [T, B, G*H]
  const float* w;        // packed w_hh [NC][P][G][V]
  const float* wr;       // packed w_hr [NCP][H][1][V] or null
  const float* bias;     // GRU b_hh [3H] or null
  const int64_t* len;    // [B] or null
  float* h[2];           // ping-pong state [B, P]
  float* c;              // LSTM cell state [B, H]
  float* hh;             // LSTM with projection: o * tanh(c) [B, H]
  float* y;              // [T, B, P]
  int64_t stages_per_step, workers;
};

// One part of one stage: chunks [c0, c1) for every batch row.
template <int G, int NB>
RNN_INLINE void gate_block(const Problem& p, int64_t step, int64_t t, int64_t chunk, int64_t b0) {
  const float* hprev = p.h[step % 2];
  float* hnext = p.h[(step + 1) % 2];
  const int64_t u0 = chunk * V, n = std::min(V, p.H - u0);
  vf acc[NB][G];
  chunk_matvec<G, NB>(p.w + chunk * p.P * G * V, hprev + b0 * p.P, p.P, p.P, acc);
  for (int b = 0; b < NB; ++b) {
    const int64_t row = b0 + b;
    const bool active = p.len == nullptr || t < p.len[row];
    const float* x = p.xg + (t * p.B + row) * G * p.H + u0;
    if (G == 4) {
      const vf i = vsigmoid(acc[b][0] + load_n(x, n)), f = vsigmoid(acc[b][1] + load_n(x + p.H, n));
      const vf g = vtanh(acc[b][2] + load_n(x + 2 * p.H, n)), o = vsigmoid(acc[b][3] + load_n(x + 3 * p.H, n));
      float* c = p.c + row * p.H + u0;
      const vf c_new = f * load_n(c, n) + i * g;
      const vf h_new = o * vtanh(c_new);
      if (active) store_n(c, c_new, n);
      if (p.hh != nullptr) {  // the projection stage masks h and writes y
        store_n(p.hh + row * p.H + u0, h_new, n);
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

template <int NB>
RNN_INLINE void proj_block(const Problem& p, int64_t step, int64_t t, int64_t chunk, int64_t b0) {
  const float* hprev = p.h[step % 2];
  float* hnext = p.h[(step + 1) % 2];
  const int64_t q0 = chunk * V, n = std::min(V, p.P - q0);
  vf acc[NB][1];
  chunk_matvec<1, NB>(p.wr + chunk * p.H * V, p.hh + b0 * p.H, p.H, p.H, acc);
  for (int b = 0; b < NB; ++b) {
    const int64_t row = b0 + b;
    const bool active = p.len == nullptr || t < p.len[row];
    store_n(hnext + row * p.P + q0, active ? acc[b][0] : load_n(hprev + row * p.P + q0, n), n);
    store_n(p.y + (t * p.B + row) * p.P + q0, active ? acc[b][0] : vf{}, n);
  }
}

template <int NB>
RNN_INLINE void block(const Problem& p, int64_t stage_kind, int64_t step, int64_t t, int64_t chunk, int64_t b0) {
  if (stage_kind == 1) proj_block<NB>(p, step, t, chunk, b0);
  else if (p.gru) gate_block<3, NB>(p, step, t, chunk, b0);
  else gate_block<4, NB>(p, step, t, chunk, b0);
}

int64_t stage_chunks(const Problem& p, int64_t stage) {
  return ((stage % p.stages_per_step == 1 ? p.P : p.H) + V - 1) / V;
}
// First chunk of worker w's part of a stage (w = workers: the end).
int64_t part_begin(const Problem& p, int64_t stage, int64_t w) { return w * stage_chunks(p, stage) / p.workers; }

// One chunk of V hidden units (or projected outputs) of one stage, for every batch row.
RNN_INLINE void run_chunk_impl(const Problem& p, int64_t stage, int64_t chunk) {
  const int64_t step = stage / p.stages_per_step, kind = stage % p.stages_per_step;
  const int64_t t = p.reverse ? p.T - 1 - step : step;
  for (int64_t b0 = 0; b0 < p.B; b0 += 4) {
    switch (std::min<int64_t>(4, p.B - b0)) {
      case 4: block<4>(p, kind, step, t, chunk, b0); break;
      case 3: block<3>(p, kind, step, t, chunk, b0); break;
      case 2: block<2>(p, kind, step, t, chunk, b0); break;
      default: block<1>(p, kind, step, t, chunk, b0);
    }
  }
}

#if defined(__x86_64__)
AVX512_TARGET void run_chunk_avx512(const Problem& p, int64_t stage, int64_t chunk) { run_chunk_impl(p, stage, chunk); }
AVX2_TARGET void run_chunk_avx2(const Problem& p, int64_t stage, int64_t chunk) { run_chunk_impl(p, stage, chunk); }
#endif
void run_chunk_scalar(const Problem& p, int64_t stage, int64_t chunk) { run_chunk_impl(p, stage, chunk); }

void spin_pause() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

void run_sequence(const Problem& p) {
  using Fn = void (*)(const Problem&, int64_t, int64_t);
  Fn fn = run_chunk_scalar;
#if defined(__x86_64__)
  switch (active_cpu_isa()) {
    case CpuIsa::Avx512Vnni: fn = run_chunk_avx512; break;
    case CpuIsa::Avx2: fn = run_chunk_avx2; break;
    default: break;
  }
#endif
  const int64_t S = p.T * p.stages_per_step, W = p.workers;
  if (W == 1) {
    for (int64_t s = 0; s < S; ++s)
      for (int64_t chunk = 0; chunk < stage_chunks(p, s); ++chunk) fn(p, s, chunk);
    return;
  }
  // next[w * S + s]: the next unclaimed chunk of worker w's part of stage s (one worker's counters
  // are adjacent, so two workers never write one cache line); done[s]: chunks finished.
  std::unique_ptr<std::atomic<int64_t>[]> next(new std::atomic<int64_t>[W * S]);
  std::unique_ptr<std::atomic<int64_t>[]> done(new std::atomic<int64_t>[S]);
  for (int64_t s = 0; s < S; ++s) {
    done[s].store(0, std::memory_order_relaxed);
    for (int64_t w = 0; w < W; ++w) next[w * S + s].store(part_begin(p, s, w), std::memory_order_relaxed);
  }
  auto worker = [&](int64_t self) {
    for (int64_t s = 0; s < S; ++s) {
      int64_t mine = 0;
      for (int64_t k = 0; k < W; ++k) {  // own part first, then steal chunk by chunk from the others
        const int64_t w = (self + k) % W, end = part_begin(p, s, w + 1);
        std::atomic<int64_t>& nx = next[w * S + s];
        while (nx.load(std::memory_order_relaxed) < end) {
          const int64_t chunk = nx.fetch_add(1, std::memory_order_relaxed);
          if (chunk >= end) break;
          fn(p, s, chunk);
          ++mine;
        }
      }
      if (mine) done[s].fetch_add(mine, std::memory_order_acq_rel);
      // Spin briefly, then yield: on a loaded machine the other worker may be descheduled, and a
      // pure spin would burn the time slice it needs.
      for (int spins = 0; done[s].load(std::memory_order_acquire) < stage_chunks(p, s); ++spins) {
        if (spins < 512) spin_pause();
        else std::this_thread::yield();
      }
    }
  };
  parallel_tasks(W, worker);
}

// One worker per ~512K multiply-adds per step, at most one per thread and per chunk. A step's
// barrier is cheap on idle cores but not on a loaded machine, where the other worker may be
// descheduled mid-chunk: on the shared 2-core dev box, H = 256, B = 1, T = 100 (262K per step)
// took 3.3 ms on one worker and 2.9 to 62 ms (median 15) on two, so that size stays on one.
int64_t pick_workers(int64_t macs_per_step, int64_t chunks) {
  const int64_t by_work = std::max<int64_t>(1, macs_per_step / (1 << 19));
  return std::max<int64_t>(1, std::min<int64_t>({(int64_t)at::get_num_threads(), by_work, chunks}));
}

void check_common(const char* op, const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& w_hh,
                  const c10::optional<at::Tensor>& lengths) {
  COMPRESS_CHECK_DEVICE(op, xg, at::kCPU);
  COMPRESS_CHECK_DEVICE(op, h0, at::kCPU);
  COMPRESS_CHECK_DEVICE(op, w_hh, at::kCPU);
  TORCH_CHECK_TYPE(xg.scalar_type() == at::kFloat || xg.scalar_type() == at::kBFloat16 ||
                       xg.scalar_type() == at::kHalf,
                   op, ": expected `xg` to be torch.float32, torch.bfloat16 or torch.float16, got ",
                   dtype_name(xg.scalar_type()));
  COMPRESS_CHECK_DTYPE(op, h0, xg.scalar_type());
  COMPRESS_CHECK_DTYPE(op, w_hh, xg.scalar_type());
  COMPRESS_CHECK_DIM(op, xg, 3);
  COMPRESS_CHECK_DIM(op, h0, 2);
  COMPRESS_CHECK_DIM(op, w_hh, 2);
  if (lengths.has_value()) {
    const at::Tensor& len = *lengths;
    COMPRESS_CHECK_DEVICE(op, len, at::kCPU);
    COMPRESS_CHECK_DTYPE(op, len, at::kLong);
    COMPRESS_CHECK_DIM(op, len, 1);
    COMPRESS_CHECK(op, len.size(0) == xg.size(1), "expected `lengths` to have B = xg.size(1) = ", xg.size(1),
                   " entries, got ", len.size(0));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer_cpu(const at::Tensor& xg, const at::Tensor& h0,
                                                              const at::Tensor& c0, const at::Tensor& w_hh,
                                                              const c10::optional<at::Tensor>& w_hr,
                                                              const c10::optional<at::Tensor>& lengths,
                                                              bool reverse) {
  const char* op = "lstm_layer";
  check_common(op, xg, h0, w_hh, lengths);
  COMPRESS_CHECK_DEVICE(op, c0, at::kCPU);
  COMPRESS_CHECK_DTYPE(op, c0, xg.scalar_type());
  COMPRESS_CHECK_DIM(op, c0, 2);
  COMPRESS_CHECK(op, xg.size(2) % 4 == 0, "expected `xg` to be [T, B, 4H], got last dim ", xg.size(2));
  const int64_t T = xg.size(0), B = xg.size(1), H = xg.size(2) / 4;
  const int64_t P = w_hr.has_value() ? w_hr->size(0) : H;
  if (w_hr.has_value()) {
    const at::Tensor& w_hr_ = *w_hr;
    COMPRESS_CHECK_DEVICE(op, w_hr_, at::kCPU);
    COMPRESS_CHECK_DTYPE(op, w_hr_, xg.scalar_type());
    COMPRESS_CHECK(op, w_hr_.dim() == 2 && w_hr_.size(1) == H, "expected `w_hr` to be [P, H] with H = ", H,
                   ", got shape ", w_hr_.sizes());
  }
  COMPRESS_CHECK(op, w_hh.size(0) == 4 * H && w_hh.size(1) == P, "expected `w_hh` of shape [", 4 * H, ", ", P,
                 "], got ", w_hh.sizes());
  COMPRESS_CHECK(op, h0.size(0) == B && h0.size(1) == P, "expected `h0` of shape [", B, ", ", P, "], got ",
                 h0.sizes());
  COMPRESS_CHECK(op, c0.size(0) == B && c0.size(1) == H, "expected `c0` of shape [", B, ", ", H, "], got ",
                 c0.sizes());

  const auto f32 = xg.options().dtype(at::kFloat);
  at::Tensor y = at::empty({T, B, P}, f32);
  at::Tensor hbuf = at::empty({2, B, P}, f32);
  hbuf[0].copy_(h0);
  at::Tensor c = c0.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous();
  if (T > 0 && B > 0 && H > 0) {
    const at::Tensor x = xg.to(at::kFloat).contiguous();
    const at::Tensor w = pack_chunks(w_hh, 4, H);
    const at::Tensor wr = w_hr.has_value() ? pack_chunks(*w_hr, 1, P) : at::Tensor();
    at::Tensor hh = w_hr.has_value() ? at::empty({B, H}, f32) : at::Tensor();
    const at::Tensor len = lengths.has_value() ? lengths->contiguous() : at::Tensor();
    Problem p{false, T, B, H, P, reverse, x.const_data_ptr<float>(), w.const_data_ptr<float>(),
              wr.defined() ? wr.const_data_ptr<float>() : nullptr, nullptr,
              len.defined() ? len.const_data_ptr<int64_t>() : nullptr,
              {hbuf[0].data_ptr<float>(), hbuf[1].data_ptr<float>()}, c.data_ptr<float>(),
              hh.defined() ? hh.data_ptr<float>() : nullptr, y.data_ptr<float>(), wr.defined() ? 2 : 1, 1};
    p.workers = pick_workers(B * (4 * H * P + (wr.defined() ? P * H : 0)), std::min((H + V - 1) / V, (P + V - 1) / V));
    run_sequence(p);
  }
  const auto dt = xg.scalar_type();
  return {y.to(dt), hbuf[T % 2].to(dt, false, true), c.to(dt)};
}

std::tuple<at::Tensor, at::Tensor> gru_layer_cpu(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& w_hh,
                                                 const c10::optional<at::Tensor>& b_hh,
                                                 const c10::optional<at::Tensor>& lengths, bool reverse) {
  const char* op = "gru_layer";
  check_common(op, xg, h0, w_hh, lengths);
  COMPRESS_CHECK(op, xg.size(2) % 3 == 0, "expected `xg` to be [T, B, 3H], got last dim ", xg.size(2));
  const int64_t T = xg.size(0), B = xg.size(1), H = xg.size(2) / 3;
  COMPRESS_CHECK(op, w_hh.size(0) == 3 * H && w_hh.size(1) == H, "expected `w_hh` of shape [", 3 * H, ", ", H,
                 "], got ", w_hh.sizes());
  COMPRESS_CHECK(op, h0.size(0) == B && h0.size(1) == H, "expected `h0` of shape [", B, ", ", H, "], got ",
                 h0.sizes());
  if (b_hh.has_value()) {
    const at::Tensor& b_hh_ = *b_hh;
    COMPRESS_CHECK_DEVICE(op, b_hh_, at::kCPU);
    COMPRESS_CHECK_DTYPE(op, b_hh_, xg.scalar_type());
    COMPRESS_CHECK(op, b_hh_.dim() == 1 && b_hh_.size(0) == 3 * H, "expected `b_hh` of shape [", 3 * H, "], got ",
                   b_hh_.sizes());
  }
  const auto f32 = xg.options().dtype(at::kFloat);
  at::Tensor y = at::empty({T, B, H}, f32);
  at::Tensor hbuf = at::empty({2, B, H}, f32);
  hbuf[0].copy_(h0);
  if (T > 0 && B > 0 && H > 0) {
    const at::Tensor x = xg.to(at::kFloat).contiguous();
    const at::Tensor w = pack_chunks(w_hh, 3, H);
    const at::Tensor bias = b_hh.has_value() ? b_hh->to(at::kFloat).contiguous() : at::Tensor();
    const at::Tensor len = lengths.has_value() ? lengths->contiguous() : at::Tensor();
    Problem p{true, T, B, H, H, reverse, x.const_data_ptr<float>(), w.const_data_ptr<float>(), nullptr,
              bias.defined() ? bias.const_data_ptr<float>() : nullptr,
              len.defined() ? len.const_data_ptr<int64_t>() : nullptr,
              {hbuf[0].data_ptr<float>(), hbuf[1].data_ptr<float>()}, nullptr, nullptr, y.data_ptr<float>(), 1, 1};
    p.workers = pick_workers(B * 3 * H * H, (H + V - 1) / V);
    run_sequence(p);
  }
  const auto dt = xg.scalar_type();
  return {y.to(dt), hbuf[T % 2].to(dt, false, true)};
}

}  // namespace

TORCH_LIBRARY_IMPL(compress, CPU, m) {
  m.impl("lstm_layer", &lstm_layer_cpu);
  m.impl("gru_layer", &gru_layer_cpu);
}

}  // namespace compress
