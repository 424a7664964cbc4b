// Shared input checks for the torch glue (.cpp files). Kernels (.cu files) never include this.
//
// A failed check raises in Python with the op, the argument, what was expected and what arrived:
//   int8_mm: expected `a` to be torch.int8, got torch.float32
// dtype problems raise TypeError, shape/layout/device problems ValueError.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace compress {
// The dtype as Python spells it (torch.int8), not c10's name (Char).
inline const char* dtype_name(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Char: return "torch.int8";
    case c10::ScalarType::Byte: return "torch.uint8";
    case c10::ScalarType::Short: return "torch.int16";
    case c10::ScalarType::Int: return "torch.int32";
    case c10::ScalarType::Long: return "torch.int64";
    case c10::ScalarType::Half: return "torch.float16";
    case c10::ScalarType::BFloat16: return "torch.bfloat16";
    case c10::ScalarType::Float: return "torch.float32";
    case c10::ScalarType::Double: return "torch.float64";
    case c10::ScalarType::Bool: return "torch.bool";
    default: return c10::toString(t);
  }
}
}  // namespace compress

#define COMPRESS_CHECK_DTYPE(op, t, dtype)                                                   \
  TORCH_CHECK_TYPE((t).scalar_type() == (dtype), op, ": expected `" #t "` to be ", \
                   compress::dtype_name(dtype), ", got ", compress::dtype_name((t).scalar_type()))

#define COMPRESS_CHECK_DIM(op, t, n)                                                          \
  TORCH_CHECK_VALUE((t).dim() == (n), op, ": expected `" #t "` to be ", n, "-D, got ", \
                    (t).dim(), "-D with shape ", (t).sizes())

#define COMPRESS_CHECK_DEVICE(op, t, dev)                                                    \
  TORCH_CHECK_VALUE((t).device() == (dev), op, ": expected `" #t "` on ", (dev), ", got ", \
                    (t).device())

#define COMPRESS_CHECK(op, cond, ...) TORCH_CHECK_VALUE(cond, op, ": ", __VA_ARGS__)
