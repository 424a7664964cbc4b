// Packing the recurrent weights of the CPU RNN kernels into their chunk layouts
// (rnn_cpu_kernel.h), and a small cache that keeps a packed weight between calls.
//
// Why cache: packing w_hh of an H = 256 LSTM reads and rewrites 1 MiB in a scattered order, ~0.3 ms
// on the dev box (a B = 1, T = 1 call: 0.35 ms uncached, 0.03 ms cached; T = 100: ~1.3 ms), on
// every call of an unchanged weight.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/StorageImpl.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <vector>

#include "rnn/rnn_cpu_kernel.h"

namespace compress::rnn_cpu {

// Rows g*H + u (u < H) of a contiguous [G*H, K] matrix -> [NC][K][G][V], zero padded past H.
// Written in order; read as G*V row streams (a scatter by row measured ~4x slower at 1024 x 256).
template <class T>
void pack_rows(const T* src, int64_t G, int64_t H, int64_t K, T* dst) {
  for (int64_t c = 0; c < chunks_of(H); ++c) {
    const int64_t n = std::min(V, H - c * V);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t g = 0; g < G; ++g) {
        T* d = dst + ((c * K + k) * G + g) * V;
        const T* s = src + (g * H + c * V) * K + k;
        for (int64_t l = 0; l < n; ++l) d[l] = s[l * K];
        for (int64_t l = n; l < V; ++l) d[l] = T(0);
      }
  }
}

// Dense w [G*H, K] (float32 / bfloat16 / float16, any strides) -> float32 [NC][K][G][V].
inline at::Tensor pack_dense(const at::Tensor& w, int64_t G, int64_t H) {
  const int64_t K = w.size(1);
  const at::Tensor wf = w.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({chunks_of(H), K, G, V}, wf.options());
  pack_rows(wf.const_data_ptr<float>(), G, H, K, out.data_ptr<float>());
  return out;
}

// int8 q [G*H, K] + float32 scale [G*H] -> {q packed, float32 scales [NC][G][V] (0 past H)}, q as
// Int8Chunks reads it: int8 [NC][K][G][V], or with vnni q + 128 as uint8 [NC][G][K4][V][4]
// (K4 = ceil(K / 4); q = 0 past K and past H).
inline std::vector<at::Tensor> pack_int8(const at::Tensor& q, const at::Tensor& scale, int64_t G, int64_t H,
                                         bool vnni) {
  const int64_t K = q.size(1), NC = chunks_of(H), K4 = (K + 3) / 4;
  const at::Tensor qc = q.contiguous(), sc = scale.contiguous();
  const int8_t* src = qc.const_data_ptr<int8_t>();
  at::Tensor qp;
  if (vnni) {
    qp = at::empty({NC, G, K4, V, 4}, qc.options().dtype(at::kByte));
    uint8_t* d = qp.data_ptr<uint8_t>();
    for (int64_t c = 0; c < NC; ++c)
      for (int64_t g = 0; g < G; ++g)
        for (int64_t k4 = 0; k4 < K4; ++k4)
          for (int64_t l = 0; l < V; ++l)
            for (int64_t j = 0, k = 4 * k4; j < 4; ++j, ++k)
              *d++ = (uint8_t)((k < K && c * V + l < H ? src[(g * H + c * V + l) * K + k] : 0) + 128);
  } else {
    qp = at::empty({NC, K, G, V}, qc.options());
    pack_rows(src, G, H, K, qp.data_ptr<int8_t>());
  }
  at::Tensor sp = at::zeros({NC, G, V}, sc.options());
  const float* s = sc.const_data_ptr<float>();
  float* d = sp.data_ptr<float>();
  for (int64_t c = 0; c < NC; ++c)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t l = 0; l < std::min(V, H - c * V); ++l) d[(c * G + g) * V + l] = s[g * H + c * V + l];
  return {qp, sp};
}

// BSR w_hh [G*H, K] (crow [G*H/bn + 1] and col already validated: crow non-decreasing from 0 to
// nnz, col in [0, ceil(K / bk))) -> {float32 w [nk][V], int32 kidx [nk], int64 seg [NC*G + 1]}
// as BsrChunks reads them. Per (chunk, gate) the k list is the union of the columns that the
// stored blocks of its V rows cover (values past K, the padding of the last block column, are
// dropped); a block stored twice adds up, as in bsr_linear.
inline std::vector<at::Tensor> pack_bsr(const int32_t* crow, const int32_t* col, const at::Tensor& values,
                                        int64_t G, int64_t H, int64_t K) {
  const at::Tensor vals = values.to(at::kFloat).contiguous();
  const float* v = vals.const_data_ptr<float>();
  const int64_t bn = values.size(1), bk = values.size(2), NC = chunks_of(H);
  std::vector<float> dense(K * V, 0.0f);  // one (chunk, gate): [K][V]
  std::vector<char> used(K, 0);
  std::vector<float> w;
  std::vector<int32_t> kidx;
  at::Tensor seg = at::empty({NC * G + 1}, at::TensorOptions().dtype(at::kLong));
  int64_t* segp = seg.data_ptr<int64_t>();
  segp[0] = 0;
  for (int64_t c = 0; c < NC; ++c)
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t l = 0; l < std::min(V, H - c * V); ++l) {
        const int64_t row = g * H + c * V + l, br = row / bn, rr = row % bn;
        for (int64_t e = crow[br]; e < crow[br + 1]; ++e) {
          const float* blk = v + (e * bn + rr) * bk;
          for (int64_t j = 0, k = (int64_t)col[e] * bk; j < bk && k < K; ++j, ++k) {
            dense[k * V + l] += blk[j];
            used[k] = 1;
          }
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        if (!used[k]) continue;
        kidx.push_back((int32_t)k);
        w.insert(w.end(), dense.begin() + k * V, dense.begin() + (k + 1) * V);
        std::fill(dense.begin() + k * V, dense.begin() + (k + 1) * V, 0.0f);
        used[k] = 0;
      }
      segp[c * G + g + 1] = (int64_t)kidx.size();
    }
  const int64_t nk = (int64_t)kidx.size();
  at::Tensor wt = at::empty({nk, V}, at::TensorOptions().dtype(at::kFloat));
  at::Tensor kt = at::empty({nk}, at::TensorOptions().dtype(at::kInt));
  std::copy(w.begin(), w.end(), wt.data_ptr<float>());
  std::copy(kidx.begin(), kidx.end(), kt.data_ptr<int32_t>());
  return {wt, kt, seg};
}

// ------------------------------------------------------------------------------ packed cache

// What a packed weight was made from: one stamp per source tensor. A stamp matches while the
// tensor is the same storage (held weakly, so the cache never keeps a weight alive and a freed
// storage's address cannot be reused by another while the stamp exists), at the same data pointer,
// sizes, strides and dtype, and its version counter has not moved: every in-place write through
// the tensor or a view of it (copy_, mul_, load_state_dict, optimizer steps) bumps it. Writes that
// bypass the counter (through `.data` or a numpy alias) go unseen, as they do for autograd.
// Inference tensors have no version counter and are never cached.
struct TensorStamp {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  const void* data;
  std::vector<int64_t> sizes, strides;
  c10::ScalarType dtype;
  uint32_t version;

  static bool stampable(const at::Tensor& t) { return t.has_storage() && !t.is_inference(); }
  explicit TensorStamp(const at::Tensor& t)
      : storage(t.storage().getWeakStorageImpl()),
        data(t.const_data_ptr()),
        sizes(t.sizes().vec()),
        strides(t.strides().vec()),
        dtype(t.scalar_type()),
        version(t.unsafeGetTensorImpl()->version_counter().current_version()) {}
  bool matches(const at::Tensor& t) const {
    return !storage.expired() && storage._unsafe_get_target() == t.storage().unsafeGetStorageImpl() &&
           data == t.const_data_ptr() && t.sizes().equals(sizes) && t.strides().equals(strides) &&
           dtype == t.scalar_type() && version == t.unsafeGetTensorImpl()->version_counter().current_version();
  }
};

using Packed = std::vector<at::Tensor>;

// The packed form of `sources` under layout `kind` (the op and its G, H, ...): from the cache when
// the same sources were packed before and are unchanged, else pack() (and keep the result when
// every source can be stamped). Bounded to kMaxEntries packed weights and kMaxBytes in all, least
// recently used first out; entries whose sources were freed or written go at the next lookup.
inline std::shared_ptr<const Packed> packed_weight(const std::vector<int64_t>& kind,
                                                   const std::vector<at::Tensor>& sources,
                                                   const std::function<Packed()>& pack) {
  constexpr size_t kMaxEntries = 32;
  constexpr int64_t kMaxBytes = int64_t{128} << 20;
  struct Entry {
    std::vector<int64_t> kind;
    std::vector<TensorStamp> stamps;
    std::shared_ptr<const Packed> packed;
    int64_t bytes;
  };
  static std::mutex mu;
  static std::list<Entry> entries;  // most recently used first
  static int64_t total_bytes = 0;

  for (const at::Tensor& t : sources)
    if (!TensorStamp::stampable(t)) return std::make_shared<const Packed>(pack());
  {
    std::lock_guard<std::mutex> lock(mu);
    for (auto it = entries.begin(); it != entries.end();) {
      // dead: a source was freed; stale: the same sources, since written in place.
      bool dead = false, hit = false, stale = false;
      for (const TensorStamp& st : it->stamps) dead = dead || st.storage.expired();
      if (!dead && it->kind == kind && it->stamps.size() == sources.size()) {
        hit = stale = true;
        for (size_t i = 0; i < sources.size(); ++i) {
          const TensorStamp& st = it->stamps[i];
          hit = hit && st.matches(sources[i]);
          stale = stale && st.storage._unsafe_get_target() == sources[i].storage().unsafeGetStorageImpl() &&
                  st.data == sources[i].const_data_ptr();
        }
      }
      if (hit) {
        entries.splice(entries.begin(), entries, it);
        return entries.front().packed;
      }
      if (dead || stale) {
        total_bytes -= it->bytes;
        it = entries.erase(it);
      } else {
        ++it;
      }
    }
  }
  // Pack outside the lock; two threads missing on one weight at once both pack it (harmless).
  auto result = std::make_shared<const Packed>(pack());
  int64_t bytes = 0;
  for (const at::Tensor& t : *result) bytes += t.nbytes();
  if (bytes > kMaxBytes) return result;
  Entry e{kind, {}, result, bytes};
  for (const at::Tensor& t : sources) e.stamps.emplace_back(t);
  std::lock_guard<std::mutex> lock(mu);
  entries.push_front(std::move(e));
  total_bytes += bytes;
  while (entries.size() > kMaxEntries || total_bytes > kMaxBytes) {
    total_bytes -= entries.back().bytes;
    entries.pop_back();
  }
  return result;
}

}  // namespace compress::rnn_cpu
