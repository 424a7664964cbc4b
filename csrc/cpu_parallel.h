// Threads for the CPU kernels: torch's intra-op pool, sized by torch.set_num_threads.
//
// Why not at::parallel_for: it is a header template whose OpenMP body compiles only under
// -fopenmp, which this build does not pass (an OpenMP runtime of our own would not see
// torch.set_num_threads either); called from an extension it runs serially (measured: 2 threads
// took as long as 1). torch_parallel_for (torch's stable C API, torch >= 2.10) is at::parallel_for
// compiled inside libtorch, so it runs on torch's own pool.
#pragma once

#include <cstdint>

#include <c10/util/Exception.h>
#include <torch/csrc/stable/c/shim.h>

namespace compress {

// Runs fn(begin, end) over [0, n) split into ranges of at least `grain` on torch's threads.
// fn must not throw (report bad input through flags checked after the loop).
template <class F>
void parallel_range(int64_t n, int64_t grain, const F& fn) {
  if (n <= 0) return;
  if (n <= grain) {
    fn(int64_t{0}, n);
    return;
  }
  auto run = [](int64_t begin, int64_t end, void* ctx) { (*static_cast<const F*>(ctx))(begin, end); };
  const AOTITorchError err = torch_parallel_for(0, n, grain, run, const_cast<F*>(&fn));
  TORCH_CHECK(err == AOTI_TORCH_SUCCESS, "compress: a CPU worker thread failed");
}

// Runs fn(0) .. fn(n - 1), one task each, spread over torch's threads.
template <class F>
void parallel_tasks(int64_t n, const F& fn) {
  parallel_range(n, 1, [&fn](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) fn(t);
  });
}

}  // namespace compress
