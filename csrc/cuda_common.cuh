// Device helpers shared by the sm_80+ cp.async / ldmatrix kernels (int8/int8_gemm.cu and, through
// sparse/sparse_common_cuda.cuh, the sparse tensor-core kernels): the shared-window address, the
// cp.async group commit / wait, ldmatrix.x4 and the multistage cp.async main loop. The 16-byte
// cp.async itself stays with each family: int8_gemm.cu zero-fills through the ignore-src predicate,
// the sparse kernels through src-size 0. CUDA headers only (no torch).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace compress {
namespace cuda_common {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Wait until at most N of this thread's committed groups are still pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lanes 8q..8q+7 give the 8 row addresses (16 bytes
// each) of matrix q; register q of lane L receives row L/4 of matrix q, b16 elements 2(L%4) and
// 2(L%4)+1 (the lower address in the low half).
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                        uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t (&r)[4]) {
  ldsm_x4(addr, r[0], r[1], r[2], r[3]);
}

// The multistage main loop over tiles 0 .. num_tiles-1 (K slices, or blocks of a sparse row):
// load(stage, t) issues the cp.async copies of tile t into pipeline stage `stage` (no commit),
// compute(stage) consumes the tile that has landed in `stage`.
// Group accounting: the prologue commits STAGES-1 groups (tiles 0..STAGES-2, empty groups past the
// end), every iteration commits exactly one more (tile t+STAGES-1, or empty). At the top of
// iteration t, STAGES-1+t groups are committed; wait_group(STAGES-2) leaves at most STAGES-2
// pending, so groups 0..t, i.e. tile t, have landed for this thread; the barrier makes every
// thread's copies visible. The barrier also proves all warps finished computing tile t-1, whose
// stage (t-1) % STAGES == (t+STAGES-1) % STAGES is the one refilled right after it. At the end
// only empty groups can remain; they are drained before returning (the CTA may then exit; a
// caller that reuses the shared memory adds a barrier).
// The whole loop is here, not just its prologue / top-of-iteration steps: with the steps as helpers
// called from the kernel's own loop, nvcc 12 inlined load differently (sparse24_mma_kernel: 72
// instead of 74 registers, a reordered body); this form keeps the hand-written loop's instructions
// and register counts.
template <int STAGES, class Load, class Compute>
__device__ __forceinline__ void cp_async_pipeline(int num_tiles, Load load, Compute compute) {
  static_assert(STAGES >= 2, "pipeline needs at least two stages");
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < num_tiles) load(s, s);
    cp_async_commit();
  }
  for (int t = 0; t < num_tiles; ++t) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    {
      const int next = t + STAGES - 1;
      if (next < num_tiles) load(next % STAGES, next);
      cp_async_commit();
    }
    compute(t % STAGES);
  }
  cp_async_wait<0>();
}

}  // namespace cuda_common
}  // namespace compress
