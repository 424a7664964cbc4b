"""int8 GEMM ops: schemas, fake implementations, references, backend registration.

Shapes: M rows of activations, K the reduction, N output features.
"""
from __future__ import annotations

from typing import Optional

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
    from compress.triton_kernels.int8_gemm import int8_mm as launch
    return launch(a, b)


int8_mm_triton.register_fake(_int8_mm_fake)

_backend.register_standard("int8_mm", torch.ops.compress.int8_mm_triton.default, int8_mm_reference)


def int8_mm(a: Tensor, b: Tensor) -> Tensor:
    """Exact int8 matrix product: `a` int8 [M, K] @ `b` int8 [K, N] -> int32 [M, N].

    Any strides are accepted. Runs on the backend `compress.ops.backend` selects (auto by default).
    """
    check_int8_mm(a, b)
    return _backend.dispatch("int8_mm", a.device)(a, b)


# ---------------------------------------------------------------------------------------------
# quantize_per_token(x) -> (q int8, scale float32): symmetric per-row quantization over the last dim.
#   absmax = max |x| over the last dim, in float32
#   scale  = absmax / 127 (IEEE float32 division), or 1.0 for a row of zeros (q = 0 there)
#   q      = clamp(round_half_to_even(x_f32 / scale), -127, 127)   (IEEE division again)
# Non-finite input: a NaN in a row makes its absmax NaN, so its scale 1.0; a NaN quotient gives q = 0
# (an inf in a row makes its scale inf, so its finite entries 0 and the inf itself NaN -> 0).
# Every backend computes exactly these float32 operations, so q and scale are bit-identical.
# x: float32 / bfloat16 / float16, shape [..., K]; q: int8 [..., K] contiguous; scale: float32 [...].

lib.define("quantize_per_token(Tensor x) -> (Tensor, Tensor)")

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_tensor(op: str, name: str, t, dtypes, dim=None):
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: expected `{name}` to be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        want = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{op}: expected `{name}` to be {want}, got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{op}: expected `{name}` to be {dim}-D, got {t.dim()}-D with shape {tuple(t.shape)}")


def _check_same_device(op: str, ref_name: str, ref: Tensor, **others):
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{op}: expected `{name}` on the device of `{ref_name}` ({ref.device}), got {t.device}")


def _check_linear_args(op: str, x, bias, *parts):
    """The type checks of a linear op with a float input: x float [M, K]; each (name, tensor, dtypes,
    dim) of the weight's `parts` (dtypes None: x's dtype); bias float [N] or None; all on x's device."""
    _check_tensor(op, "x", x, _FLOAT_DTYPES, 2)
    for name, t, dtypes, dim in parts:
        _check_tensor(op, name, t, (x.dtype,) if dtypes is None else dtypes, dim)
    if bias is not None:
        _check_tensor(op, "bias", bias, _FLOAT_DTYPES, 1)
    _check_same_device(op, "x", x, **{name: t for name, t, _, _ in parts}, bias=bias)


def _check_per_row(op: str, name: str, t: Tensor, rows: str, n: int):
    """t [n]: one element per row of the tensor `rows` names (e.g. "qw.shape[0]")."""
    if t.shape[0] != n:
        raise ValueError(f"{op}: expected `{name}` to have {rows} = {n} elements, got {t.shape[0]}")


def _check_weight_shapes(op: str, x_name: str, x: Tensor, qw: Tensor, w_scale: Tensor, bias, x_scale=None):
    """The sizes of an int8 linear: qw [N, K] with K = x.shape[1], x_scale (int8_linear) [M], w_scale
    [N], bias [N] or None; x is the activation, named x_name."""
    M, K = x.shape
    N = qw.shape[0]
    if qw.shape[1] != K:
        raise ValueError(f"{op}: expected `qw` to be [N, K] with K = {x_name}.shape[1] = {K}, "
                         f"got shape {tuple(qw.shape)}")
    if x_scale is not None:
        _check_per_row(op, "x_scale", x_scale, f"{x_name}.shape[0]", M)
    _check_per_row(op, "w_scale", w_scale, "qw.shape[0]", N)
    if bias is not None:
        _check_per_row(op, "bias", bias, "qw.shape[0]", N)


def check_quantize_per_token(x: Tensor) -> None:
    _check_tensor("quantize_per_token", "x", x, _FLOAT_DTYPES)
    if x.dim() < 1:
        raise ValueError("quantize_per_token: expected `x` to have at least 1 dim, got a 0-D tensor")


def quantize_per_token_reference(x: Tensor) -> tuple[Tensor, Tensor]:
    check_quantize_per_token(x)
    xf = x.float()
    absmax = xf.abs().amax(dim=-1) if x.shape[-1] > 0 else xf.new_zeros(x.shape[:-1])
    # divide by a tensor, not the number 127: on CUDA, ATen turns division by a Python scalar into
    # multiplication by its reciprocal, which is not the IEEE quotient the kernels compute
    scale = torch.where(absmax > 0, absmax / torch.full_like(absmax, 127.0), torch.ones_like(absmax))
    q = torch.round(xf / scale.unsqueeze(-1)).nan_to_num(0.0).clamp(-127, 127).to(torch.int8)
    return q, scale


def _quantize_per_token_fake(x: Tensor) -> tuple[Tensor, Tensor]:
    check_quantize_per_token(x)
    return (torch.empty(x.shape, dtype=torch.int8, device=x.device),
            torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device))


torch.library.register_fake("compress::quantize_per_token", _quantize_per_token_fake, lib=lib)


# ---------------------------------------------------------------------------------------------
# int8_linear(qx, x_scale, qw, w_scale, bias, out_dtype) -> out [M, N] in out_dtype:
#   out[m, n] = float32(sum_k qx[m, k] * qw[n, k]) * x_scale[m] * w_scale[n] + bias[n]
# computed in float32 (left to right as written; a kernel may fuse the last multiply-add into an
# FMA), then rounded to out_dtype. qx int8 [M, K]; qw int8 [N, K] (nn.Linear layout); x_scale
# float32 [M]; w_scale float32 [N]; bias [N] of any float dtype or None; out_dtype float32,
# bfloat16 or float16. The dequant and bias are fused into the GEMM epilogue.

lib.define("int8_linear(Tensor qx, Tensor x_scale, Tensor qw, Tensor w_scale, Tensor? bias, "
           "ScalarType out_dtype) -> Tensor")


def check_int8_linear(qx, x_scale, qw, w_scale, bias, out_dtype) -> None:
    op = "int8_linear"
    _check_tensor(op, "qx", qx, (torch.int8,), 2)
    _check_tensor(op, "qw", qw, (torch.int8,), 2)
    _check_tensor(op, "x_scale", x_scale, (torch.float32,), 1)
    _check_tensor(op, "w_scale", w_scale, (torch.float32,), 1)
    if bias is not None:
        _check_tensor(op, "bias", bias, _FLOAT_DTYPES, 1)
    if out_dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: expected `out_dtype` in {_FLOAT_DTYPES}, got {out_dtype}")
    _check_same_device(op, "qx", qx, x_scale=x_scale, qw=qw, w_scale=w_scale, bias=bias)
    _check_weight_shapes(op, "qx", qx, qw, w_scale, bias, x_scale)


def int8_linear_reference(qx, x_scale, qw, w_scale, bias, out_dtype) -> Tensor:
    check_int8_linear(qx, x_scale, qw, w_scale, bias, out_dtype)
    acc = (qx.double() @ qw.double().t()).float()  # exact int32 sum, then float32 like the kernels
    out = acc * x_scale[:, None] * w_scale[None, :]
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def _int8_linear_fake(qx, x_scale, qw, w_scale, bias, out_dtype) -> Tensor:
    check_int8_linear(qx, x_scale, qw, w_scale, bias, out_dtype)
    return qx.new_empty((qx.shape[0], qw.shape[0]), dtype=out_dtype)


torch.library.register_fake("compress::int8_linear", _int8_linear_fake, lib=lib)


# ---------------------------------------------------------------------------------------------
# w8a16_linear(x, qw, w_scale, bias) -> out [M, N] in x.dtype, weight-only int8:
#   out[m, n] = (sum_k float32(x[m, k]) * float32(qw[n, k])) * w_scale[n] + bias[n]
# accumulated in float32. x float32 / bfloat16 / float16 [M, K]; qw int8 [N, K]; w_scale float32
# [N]; bias [N] any float dtype or None. For the memory-bound small-M case (decode, batch-1 RNNs).

lib.define("w8a16_linear(Tensor x, Tensor qw, Tensor w_scale, Tensor? bias) -> Tensor")


def _check_weight_only_args(op, x, qw, w_scale, bias) -> None:
    """The checks w8a16_linear and w8a8_linear share: x float [M, K], qw int8 [N, K], w_scale
    float32 [N], bias float [N] or None, all on x's device."""
    _check_linear_args(op, x, bias, ("qw", qw, (torch.int8,), 2), ("w_scale", w_scale, (torch.float32,), 1))
    _check_weight_shapes(op, "x", x, qw, w_scale, bias)


def check_w8a16_linear(x, qw, w_scale, bias) -> None:
    _check_weight_only_args("w8a16_linear", x, qw, w_scale, bias)


def w8a16_linear_reference(x, qw, w_scale, bias) -> Tensor:
    check_w8a16_linear(x, qw, w_scale, bias)
    out = (x.double() @ qw.double().t()).float() * w_scale[None, :]
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def _w8a16_linear_fake(x, qw, w_scale, bias) -> Tensor:
    check_w8a16_linear(x, qw, w_scale, bias)
    return x.new_empty((x.shape[0], qw.shape[0]))


torch.library.register_fake("compress::w8a16_linear", _w8a16_linear_fake, lib=lib)


# ---------------------------------------------------------------------------------------------
# w8a8_linear(x, qw, w_scale, bias) -> out [M, N] in x.dtype: the whole dynamic W8A8 linear,
#   (q, s) = quantize_per_token(x);  out = int8_linear(q, s, qw, w_scale, bias, x.dtype)
# with exactly those two ops' float32 arithmetic, so every backend is bit-identical to the two-op
# path (quantization is deterministic, the int32 sums exact). x float32 / bfloat16 / float16 [M, K]
# (any strides); qw int8 [N, K]; w_scale float32 [N]; bias [N] any float dtype or None. Fused where
# it pays: the Triton kernel quantizes x tiles on the fly inside the GEMM, the CUDA kernel for
# M <= 16 (decode) quantizes x into shared memory and streams the weight; elsewhere the backends
# run the two kernels back to back without Python in between.

lib.define("w8a8_linear(Tensor x, Tensor qw, Tensor w_scale, Tensor? bias) -> Tensor")


def check_w8a8_linear(x, qw, w_scale, bias) -> None:
    _check_weight_only_args("w8a8_linear", x, qw, w_scale, bias)


def w8a8_linear_reference(x, qw, w_scale, bias) -> Tensor:
    check_w8a8_linear(x, qw, w_scale, bias)
    q, s = quantize_per_token_reference(x)
    return int8_linear_reference(q, s, qw, w_scale, bias, x.dtype)


def _w8a8_linear_fake(x, qw, w_scale, bias) -> Tensor:
    check_w8a8_linear(x, qw, w_scale, bias)
    return x.new_empty((x.shape[0], qw.shape[0]))


torch.library.register_fake("compress::w8a8_linear", _w8a8_linear_fake, lib=lib)


# ---------------------------------------------------------------------------------------------
# Triton implementations (opaque custom ops, see int8_mm_triton) and backend registration.

@torch.library.custom_op("compress::quantize_per_token_triton", mutates_args=())
def quantize_per_token_triton(x: Tensor) -> tuple[Tensor, Tensor]:
    check_quantize_per_token(x)
    from compress.triton_kernels.quantize import quantize_per_token as launch
    return launch(x)


quantize_per_token_triton.register_fake(_quantize_per_token_fake)


@torch.library.custom_op("compress::int8_linear_triton", mutates_args=())
def int8_linear_triton(qx: Tensor, x_scale: Tensor, qw: Tensor, w_scale: Tensor, bias: Optional[Tensor],
                       out_dtype: torch.dtype) -> Tensor:
    check_int8_linear(qx, x_scale, qw, w_scale, bias, out_dtype)
    from compress.triton_kernels.int8_gemm import int8_linear as launch
    return launch(qx, x_scale, qw, w_scale, bias, out_dtype)


int8_linear_triton.register_fake(_int8_linear_fake)


@torch.library.custom_op("compress::w8a16_linear_triton", mutates_args=())
def w8a16_linear_triton(x: Tensor, qw: Tensor, w_scale: Tensor, bias: Optional[Tensor]) -> Tensor:
    check_w8a16_linear(x, qw, w_scale, bias)
    from compress.triton_kernels.w8a16 import w8a16_linear as launch
    return launch(x, qw, w_scale, bias)


w8a16_linear_triton.register_fake(_w8a16_linear_fake)


@torch.library.custom_op("compress::w8a8_linear_triton", mutates_args=())
def w8a8_linear_triton(x: Tensor, qw: Tensor, w_scale: Tensor, bias: Optional[Tensor]) -> Tensor:
    check_w8a8_linear(x, qw, w_scale, bias)
    from compress.triton_kernels.int8_gemm import w8a8_linear as launch
    return launch(x, qw, w_scale, bias)


w8a8_linear_triton.register_fake(_w8a8_linear_fake)

_backend.register_standard("quantize_per_token", torch.ops.compress.quantize_per_token_triton.default,
                           quantize_per_token_reference)
_backend.register_standard("int8_linear", torch.ops.compress.int8_linear_triton.default, int8_linear_reference)
_backend.register_standard("w8a16_linear", torch.ops.compress.w8a16_linear_triton.default, w8a16_linear_reference)
_backend.register_standard("w8a8_linear", torch.ops.compress.w8a8_linear_triton.default, w8a8_linear_reference)


def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: x float [..., K] -> (q int8 [..., K], scale float32 [...]) with
    x ~= q * scale[..., None]; scale = absmax / 127 (1.0 for an all-zero row)."""
    check_quantize_per_token(x)
    return _backend.dispatch("quantize_per_token", x.device)(x)


def int8_linear(qx: Tensor, x_scale: Tensor, qw: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None,
                out_dtype: torch.dtype = torch.float32) -> Tensor:
    """W8A8 GEMM with the dequant fused: (qx @ qw^T) * x_scale[:, None] * w_scale[None, :] + bias.

    qx int8 [M, K], x_scale float32 [M], qw int8 [N, K], w_scale float32 [N], bias [N] or None;
    returns [M, N] in out_dtype (float32, bfloat16 or float16)."""
    check_int8_linear(qx, x_scale, qw, w_scale, bias, out_dtype)
    return _backend.dispatch("int8_linear", qx.device)(qx, x_scale, qw, w_scale, bias, out_dtype)


def w8a16_linear(x: Tensor, qw: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Weight-only int8 linear: (x @ qw^T) * w_scale + bias in x's dtype, float32 accumulation.

    x float [M, K], qw int8 [N, K], w_scale float32 [N], bias [N] or None."""
    check_w8a16_linear(x, qw, w_scale, bias)
    return _backend.dispatch("w8a16_linear", x.device)(x, qw, w_scale, bias)


def w8a8_linear(x: Tensor, qw: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """The whole dynamic W8A8 linear in one op: quantize x per row (quantize_per_token), int8 GEMM,
    fused dequant and bias (int8_linear), out in x's dtype; bit-identical to those two ops.

    x float [M, K] (any strides), qw int8 [N, K], w_scale float32 [N], bias [N] or None."""
    check_w8a8_linear(x, qw, w_scale, bias)
    return _backend.dispatch("w8a8_linear", x.device)(x, qw, w_scale, bias)
