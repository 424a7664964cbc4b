"""int8 GEMM ops: schemas, fake implementations, references, backend registration.

Shapes: M rows of activations, K the reduction, N output features.
"""
from __future__ import annotations

import torch
from torch import Tensor

from compress.ops import _backend
from compress.ops._lib import lib

# ---------------------------------------------------------------------------------------------
# int8_mm(a, b) -> int32: a int8 [M, K], b int8 [K, N], exact (int32 accumulation; exact while the
# true result fits int32, i.e. always for K <= 131072).

lib.define("int8_mm(Tensor a, Tensor b) -> Tensor")
# The C++ CPU and CUDA kernels register themselves for this schema: csrc/int8/.


def check_int8_mm(a: Tensor, b: Tensor) -> None:
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"int8_mm: expected `{name}` to be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.int8:
            raise TypeError(f"int8_mm: expected `{name}` to be torch.int8, got {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"int8_mm: expected `{name}` to be 2-D, got {t.dim()}-D with shape {tuple(t.shape)}")
    if a.device != b.device:
        raise ValueError(f"int8_mm: expected `b` on the device of `a` ({a.device}), got {b.device}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"int8_mm: expected `b` to have a.shape[1] = {a.shape[1]} rows (K), got {b.shape[0]}")


def int8_mm_reference(a: Tensor, b: Tensor) -> Tensor:
    """Plain PyTorch: float64 holds every int8 product sum exactly (|sum| < 2^53), on any device."""
    check_int8_mm(a, b)
    return (a.double() @ b.double()).to(torch.int32)


def _int8_mm_fake(a: Tensor, b: Tensor) -> Tensor:
    check_int8_mm(a, b)
    return a.new_empty((a.shape[0], b.shape[1]), dtype=torch.int32)


torch.library.register_fake("compress::int8_mm", _int8_mm_fake, lib=lib)


# custom_op rather than triton_op: triton_op traces into the launcher, and under TRITON_INTERPRET=1
# (how CI runs Triton) the interpreted kernel then runs on fake tensors and fails; an opaque op
# works the same on the GPU and under the interpreter.
@torch.library.custom_op("compress::int8_mm_triton", mutates_args=())
def int8_mm_triton(a: Tensor, b: Tensor) -> Tensor:
    check_int8_mm(a, b)
    from compress.triton_kernels.int8_mm import int8_mm as launch
    return launch(a, b)


int8_mm_triton.register_fake(_int8_mm_fake)

_backend.register("int8_mm", "cpu", torch.ops.compress.int8_mm.default, _backend.native_cpu("compress::int8_mm"))
_backend.register("int8_mm", "cuda", torch.ops.compress.int8_mm.default, _backend.native_cuda("compress::int8_mm"))
_backend.register("int8_mm", "triton", torch.ops.compress.int8_mm_triton.default, _backend.triton_unavailable)
_backend.register("int8_mm", "reference", int8_mm_reference, _backend.always)


def int8_mm(a: Tensor, b: Tensor) -> Tensor:
    """Exact int8 matrix product: `a` int8 [M, K] @ `b` int8 [K, N] -> int32 [M, N].

    Any strides are accepted. Runs on the backend `compress.ops.backend` selects (auto by default).
    """
    check_int8_mm(a, b)
    return _backend.dispatch("int8_mm", a.device)(a, b)
