// Device helpers shared by the int8 activation kernels: int8_quant.cu (quantize_per_token, the
// w8a16 GEMV) and int8_w8a8.cu (the fused w8a8 GEMV), so that both quantize x with the very same
// float32 operations (bit-identical q and scales) and read weights the same way; plus the two host
// helpers of their argument checks. CUDA headers only (no torch); everything is inline /
// templated, in namespace compress::int8_device.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "int8_quant.h"  // FloatDtype

namespace compress {
namespace int8_device {

constexpr unsigned kFull = 0xffffffffu;

// ---- element types: raw storage, exact widening to float32, RNE narrowing from float32 ------
// 16-bit types are handled as raw bits (nothing depends on cuda_fp16 / cuda_bf16 operator macros).
template <int DT>
struct Elem;

template <>
struct Elem<static_cast<int>(FloatDtype::kFloat32)> {
  using Raw = float;
  static constexpr int kVec = 4;  // elements per 16-byte vector
  static __device__ __forceinline__ float to_f(Raw v) { return v; }
  static __device__ __forceinline__ Raw from_f(float v) { return v; }
  static __device__ __forceinline__ void load16(const Raw* p, float (&f)[4]) {  // p: 16 B aligned
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    f[0] = v.x;
    f[1] = v.y;
    f[2] = v.z;
    f[3] = v.w;
  }
  static __device__ __forceinline__ void load4(const Raw* p, float (&f)[4]) {  // p: 4 elem aligned
    load16(p, f);
  }
};

template <int DT>
struct Elem16 {  // shared by bfloat16 and float16: Raw = the 16 bits
  using Raw = uint16_t;
  static constexpr int kVec = 8;
  static __device__ __forceinline__ float to_f(Raw v);
  static __device__ __forceinline__ Raw from_f(float v);
  static __device__ __forceinline__ float lo(uint32_t w) { return to_f(static_cast<Raw>(w & 0xffffu)); }
  static __device__ __forceinline__ float hi(uint32_t w) { return to_f(static_cast<Raw>(w >> 16)); }
  static __device__ __forceinline__ void load16(const Raw* p, float (&f)[8]) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    f[0] = lo(v.x);
    f[1] = hi(v.x);
    f[2] = lo(v.y);
    f[3] = hi(v.y);
    f[4] = lo(v.z);
    f[5] = hi(v.z);
    f[6] = lo(v.w);
    f[7] = hi(v.w);
  }
  static __device__ __forceinline__ void load4(const Raw* p, float (&f)[4]) {  // 8 B aligned
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    f[0] = lo(v.x);
    f[1] = hi(v.x);
    f[2] = lo(v.y);
    f[3] = hi(v.y);
  }
};
template <>
__device__ __forceinline__ float Elem16<1>::to_f(uint16_t v) {
  return __uint_as_float(static_cast<uint32_t>(v) << 16);  // bfloat16: the high half of a float
}
template <>
__device__ __forceinline__ uint16_t Elem16<1>::from_f(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
template <>
__device__ __forceinline__ float Elem16<2>::to_f(uint16_t v) {
  return __half2float(__ushort_as_half(v));
}
template <>
__device__ __forceinline__ uint16_t Elem16<2>::from_f(float v) {
  return __half_as_ushort(__float2half_rn(v));
}
template <>
struct Elem<static_cast<int>(FloatDtype::kBFloat16)> : Elem16<1> {};
template <>
struct Elem<static_cast<int>(FloatDtype::kFloat16)> : Elem16<2> {};

static_assert(static_cast<int>(FloatDtype::kBFloat16) == 1 &&
                  static_cast<int>(FloatDtype::kFloat16) == 2,
              "Elem16<1> is bfloat16, Elem16<2> float16");

// max that propagates NaN (torch.amax does): NaN if either is NaN.
__device__ __forceinline__ float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }

// clamp(rint(v / s), -127, 127) with IEEE division; NaN -> 0 (what torch's float -> int8 gives).
__device__ __forceinline__ int quant1(float v, float s) {
  const float y = __fdiv_rn(v, s);
  const int r = __float2int_rn(y);  // round half to even; saturates to the int32 range
  return (y != y) ? 0 : min(max(r, -127), 127);
}

__device__ __forceinline__ uint32_t pack4(int a, int b, int c, int d) {
  return (static_cast<uint32_t>(a) & 0xffu) | ((static_cast<uint32_t>(b) & 0xffu) << 8) |
         ((static_cast<uint32_t>(c) & 0xffu) << 16) | (static_cast<uint32_t>(d) << 24);
}

// 16-byte load of weights that are read once per call: bypass L1 allocation (PTX ISA:
// ld.global.nc with .L1::no_allocate eviction priority, sm_70+).
__device__ __forceinline__ uint4 ld_stream16(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(__cvta_generic_to_global(p)));
  return v;
}

// Reduce-scatter of V values (float or int32: T) over the warp by recursive halving: at stride s the lane with
// (lane & s) keeps the upper half of its current values (and the partner's upper half summed
// in), the other the lower half. After strides 16..1 lane L holds the full warp sums of the
// flattened values base .. base + max(V / 32, 1) - 1, base accumulating the kept offsets. When V <
// 32 the last strides are plain xor-sums of one value (lanes differing in those bits agree).
template <int CUR, int STRIDE>
struct ReduceScatter {
  template <typename T, int V>
  static __device__ __forceinline__ void run(T (&v)[V], int lane, int& base) {
    if constexpr (STRIDE == 0) {
      return;
    } else if constexpr (CUR > 1) {
      constexpr int H = CUR / 2;
      const bool up = (lane & STRIDE) != 0;
#pragma unroll
      for (int i = 0; i < H; ++i) {
        const T send = up ? v[i] : v[i + H];
        const T keep = up ? v[i + H] : v[i];
        v[i] = keep + __shfl_xor_sync(kFull, send, STRIDE);
      }
      if (up) base += H;
      ReduceScatter<H, STRIDE / 2>::run(v, lane, base);
    } else {
      v[0] += __shfl_xor_sync(kFull, v[0], STRIDE);
      ReduceScatter<1, STRIDE / 2>::run(v, lane, base);
    }
  }
};

// ---- host: argument checks of the entry points ----------------------------------------------

// Bytes per element of x / out; 0 for a value outside FloatDtype.
inline size_t elem_size(FloatDtype d) {
  switch (d) {
    case FloatDtype::kFloat32: return 4;
    case FloatDtype::kBFloat16:
    case FloatDtype::kFloat16: return 2;
  }
  return 0;
}

inline bool misaligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a != 0; }

}  // namespace int8_device
}  // namespace compress
