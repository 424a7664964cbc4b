// Which vector instruction set the CPU kernels use. Detected once from CPUID; tests and benchmarks
// may force a lower level to exercise every path on one machine (compress._C.set_cpu_isa).
#pragma once
#include <string>

namespace compress {

enum class CpuIsa { Scalar = 0, Avx2 = 1, Avx512Vnni = 2 };

// The best level this CPU supports.
CpuIsa detected_cpu_isa();
// The level the kernels use now: the detected one unless lowered by set_cpu_isa.
CpuIsa active_cpu_isa();
// name: "auto", "scalar", "avx2" or "avx512_vnni"; raises if the CPU lacks it.
void set_cpu_isa(const std::string& name);
const char* cpu_isa_name(CpuIsa isa);

}  // namespace compress
