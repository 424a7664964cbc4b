// Shared input checks for the torch glue (.cpp files). Kernels (.cu files) never include this.
//
// A failed check raises in Python with the op, the argument, what was expected and what arrived:
//   int8_mm: expected `a` to be int8, got Float
// dtype problems raise TypeError, shape/layout/device problems ValueError.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#define COMPRESS_CHECK_DTYPE(op, t, dtype)                                                   \
  TORCH_CHECK_TYPE((t).scalar_type() == (dtype), op, ": expected `" #t "` to be ", \
                   c10::toString(dtype), ", got ", (t).scalar_type())

#define COMPRESS_CHECK_DIM(op, t, n)                                                          \
  TORCH_CHECK_VALUE((t).dim() == (n), op, ": expected `" #t "` to be ", n, "-D, got ", \
                    (t).dim(), "-D with shape ", (t).sizes())

#define COMPRESS_CHECK_DEVICE(op, t, dev)                                                    \
  TORCH_CHECK_VALUE((t).device() == (dev), op, ": expected `" #t "` on ", (dev), ", got ", \
                    (t).device())

#define COMPRESS_CHECK(op, cond, ...) TORCH_CHECK_VALUE(cond, op, ": ", __VA_ARGS__)
