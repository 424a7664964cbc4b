// The Python module compress._C. Kernels register themselves with the dispatcher
// (TORCH_LIBRARY_IMPL in their own files); this file only exposes build and CPU facts.
#include <pybind11/pybind11.h>

#include "cpu_features.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "compress native kernels (ops are reached through torch.ops.compress)";
  m.def("cpu_isa", [] { return std::string(compress::cpu_isa_name(compress::active_cpu_isa())); },
        "Vector ISA the CPU kernels use now.");
  m.def("detected_cpu_isa",
        [] { return std::string(compress::cpu_isa_name(compress::detected_cpu_isa())); },
        "Best vector ISA this CPU supports.");
  m.def("set_cpu_isa", &compress::set_cpu_isa, pybind11::arg("name"),
        "Force the CPU kernels' ISA: auto, scalar, avx2 or avx512_vnni (for tests and benchmarks).");
}
