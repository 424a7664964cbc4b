#include "cpu_features.h"

#include <atomic>

#include <stdexcept>

namespace compress {

namespace {
std::atomic<int> g_override{-1};  // -1: use the detected level
}

CpuIsa detected_cpu_isa() {
#if defined(__x86_64__) || defined(__i386__)
  static const CpuIsa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vnni"))
      return CpuIsa::Avx512Vnni;
    if (__builtin_cpu_supports("avx2")) return CpuIsa::Avx2;
    return CpuIsa::Scalar;
  }();
  return isa;
#else
  return CpuIsa::Scalar;
#endif
}

CpuIsa active_cpu_isa() {
  int o = g_override.load(std::memory_order_relaxed);
  return o < 0 ? detected_cpu_isa() : static_cast<CpuIsa>(o);
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Avx512Vnni: return "avx512_vnni";
    case CpuIsa::Avx2: return "avx2";
    default: return "scalar";
  }
}

void set_cpu_isa(const std::string& name) {
  if (name == "auto") {
    g_override.store(-1);
    return;
  }
  CpuIsa want;
  if (name == "scalar") want = CpuIsa::Scalar;
  else if (name == "avx2") want = CpuIsa::Avx2;
  else if (name == "avx512_vnni") want = CpuIsa::Avx512Vnni;
  else
    throw std::invalid_argument("set_cpu_isa: expected `name` in {auto, scalar, avx2, avx512_vnni}, got '" +
                                name + "'");
  // std::invalid_argument reaches Python as ValueError through pybind11.
  if (static_cast<int>(want) > static_cast<int>(detected_cpu_isa()))
    throw std::invalid_argument("set_cpu_isa: this CPU does not support " + name + " (best: " +
                                cpu_isa_name(detected_cpu_isa()) + ")");
  g_override.store(static_cast<int>(want));
}

}  // namespace compress
