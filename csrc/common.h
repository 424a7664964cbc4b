// Shared pieces of the torch glue (.cpp files): input checks, the float-dtype dispatch, CPU op
// registration. Kernels (.cu files) never include this.
//
// A failed check raises in Python with the op, the argument, what was expected and what arrived:
//   int8_mm: expected `a` to be torch.int8, got torch.float32
// dtype problems raise TypeError, shape/layout/device problems ValueError.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <string>
#include <utility>

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

inline bool is_float(c10::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

// The check for an argument that takes any float dtype (activations, biases: compress/ops'
// _FLOAT_DTYPES); COMPRESS_CHECK_FLOAT below names the argument.
inline void check_float_dtype(const char* op, const char* name, c10::ScalarType t) {
  TORCH_CHECK_TYPE(is_float(t), op, ": expected `", name,
                   "` to be torch.float32 or torch.bfloat16 or torch.float16, got ", dtype_name(t));
}

// fn(T{}) with T the C++ type of the float dtype t: float, c10::BFloat16 or c10::Half. Any other
// dtype runs as c10::Half: call it only after the dtype check.
template <class F>
decltype(auto) dispatch_float(c10::ScalarType t, F&& fn) {
  switch (t) {
    case at::kFloat: return fn(float{});
    case at::kBFloat16: return fn(c10::BFloat16{});
    default: return fn(c10::Half{});
  }
}

// Python's tuple(shape): "(3, 8)", "(3,)", "()".
inline std::string py_shape(at::IntArrayRef shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}
inline std::string py_shape(const at::Tensor& t) { return py_shape(t.sizes()); }

// ----------------------------------------------------------------- undefined (None) tensors
// torch.ops.compress.<op>(..., None, ...) passes None for a required `Tensor` argument as an
// undefined tensor (torch's argument parser allows it, before any code of ours), and the
// dispatcher picks the kernel by the other arguments: a kernel's first check would then fail naming
// nothing ("tensor does not have a device"), and with no tensor at all the dispatcher fails ("There
// were no tensor arguments"). So each op has a BackendSelect kernel, which the dispatcher runs before
// any backend's (CPU, CUDA, Meta) and even with no tensor argument: it checks every Tensor argument
// once, in one place, names an undefined one, and passes the call on unchanged. Registered beside
// the CPU kernel, whose signature it takes:
//   TORCH_LIBRARY_IMPL(compress, BackendSelect, m) {
//     check_tensors_defined<&int8_mm_cpu>(m, "int8_mm");
//   }
//   -> int8_mm: expected `b` to be a torch.Tensor, got None
namespace detail {

inline bool undefined(const at::Tensor& t) { return !t.defined(); }
template <class T>
bool undefined(const T&) { return false; }  // optional tensors (None is nullopt), scalars

inline void raise_undefined(const c10::FunctionSchema& schema, size_t index) {
  TORCH_CHECK_TYPE(false, schema.name().substr(schema.name().find("::") + 2), ": expected `",
                   schema.arguments()[index].name(), "` to be a torch.Tensor, got None");
}

template <auto kernel>
struct DefinedTensors;
template <class R, class... A, R (*kernel)(A...)>
struct DefinedTensors<kernel> {
  // Set by check_tensors_defined. A const char* is constant-initialized; a std::string member of a
  // class template would be initialized in no set order with the registration, maybe after it.
  static inline const char* op = nullptr;

  static R select(c10::DispatchKeySet ks, A... a) {
    // Looked up at the first call: compress.ops defines the schemas after loading compress._C.
    static const auto handle = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow((std::string("compress::") + op).c_str(), "")
                                   .typed<R(A...)>();
    size_t i = 0;
    ((undefined(a) ? raise_undefined(handle.schema(), i) : void(), ++i), ...);
    const auto below = c10::DispatchKeySet(c10::DispatchKeySet::FULL_AFTER, c10::DispatchKey::BackendSelect);
    return handle.redispatch(ks & below, std::forward<A>(a)...);
  }
};

}  // namespace detail

// Registers compress::<name>'s BackendSelect kernel (see above); `kernel` gives the signature.
template <auto kernel>
void check_tensors_defined(torch::Library& m, const char* name) {
  detail::DefinedTensors<kernel>::op = name;  // a string literal: lives as long as the process
  m.impl(name, &detail::DefinedTensors<kernel>::select);
}
}  // namespace compress

#define COMPRESS_CHECK_DTYPE(op, t, dtype)                                                   \
  TORCH_CHECK_TYPE((t).scalar_type() == (dtype), op, ": expected `" #t "` to be ", \
                   compress::dtype_name(dtype), ", got ", compress::dtype_name((t).scalar_type()))

#define COMPRESS_CHECK_FLOAT(op, t) compress::check_float_dtype(op, #t, (t).scalar_type())

#define COMPRESS_CHECK_DIM(op, t, n)                                                          \
  TORCH_CHECK_VALUE((t).dim() == (n), op, ": expected `" #t "` to be ", n, "-D, got ", \
                    (t).dim(), "-D with shape ", (t).sizes())

#define COMPRESS_CHECK_DEVICE(op, t, dev)                                                    \
  TORCH_CHECK_VALUE((t).device() == (dev), op, ": expected `" #t "` on ", (dev), ", got ", \
                    (t).device())

#define COMPRESS_CHECK(op, cond, ...) TORCH_CHECK_VALUE(cond, op, ": ", __VA_ARGS__)

// Registers `kernel` as compress::<name>'s CPU kernel together with its BackendSelect check
// (check_tensors_defined above), which every op with a CPU kernel needs: one line per op.
#define COMPRESS_REGISTER_CPU(name, kernel)                       \
  TORCH_LIBRARY_IMPL(compress, CPU, m) { m.impl(#name, &kernel); } \
  TORCH_LIBRARY_IMPL(compress, BackendSelect, m) { compress::check_tensors_defined<&kernel>(m, #name); }
