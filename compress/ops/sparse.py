"""Sparse linear ops: y = x @ W^T + bias with W stored in a sparse format (compress.formats.sparse).

x float32 / bfloat16 / float16 [M, K] (any strides); the format's values have x's dtype; bias [N]
any float dtype or None; y [M, N] in x's dtype, accumulated in float32.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from compress.formats.sparse import BSR, CSR, from_bsr, from_csr, unpack_2_4
from compress.ops import _backend
from compress.ops._lib import lib
from compress.ops.int8 import _FLOAT_DTYPES, _check_linear_args, _check_same_device, _check_tensor

lib.define("sparse24_linear(Tensor x, Tensor values, Tensor meta, Tensor? bias) -> Tensor")
lib.define("bsr_linear(Tensor x, Tensor crow, Tensor col, Tensor values, int out_features, Tensor? bias) -> Tensor")
lib.define("csr_linear(Tensor x, Tensor crow, Tensor col, Tensor values, int out_features, Tensor? bias) -> Tensor")


def _check_bias_size(op, bias, n_out):
    if bias is not None and bias.shape[0] != n_out:
        raise ValueError(f"{op}: expected `bias` to have {n_out} elements (out_features), got {bias.shape[0]}")


def _check_x_values_bias(op, x, values, bias, n_out, values_dim):
    _check_tensor(op, "x", x, _FLOAT_DTYPES, 2)
    _check_tensor(op, "values", values, (x.dtype,), values_dim)
    if bias is not None:
        _check_tensor(op, "bias", bias, _FLOAT_DTYPES, 1)
    _check_bias_size(op, bias, n_out)


def check_sparse24_linear(x, values, meta, bias) -> None:
    op = "sparse24_linear"
    _check_linear_args(op, x, bias, ("values", values, None, 2), ("meta", meta, (torch.uint8,), 2))
    K = x.shape[1]
    if K % 4:
        raise ValueError(f"{op}: 2:4 needs K = x.shape[1] divisible by 4, got {K}")
    N = values.shape[0]
    if values.shape[1] * 2 != K:
        raise ValueError(f"{op}: expected `values` to be [N, K/2] = [{N}, {K // 2}], got {tuple(values.shape)}")
    if tuple(meta.shape) != (N, K // 4):
        raise ValueError(f"{op}: expected `meta` to be [N, K/4] = [{N}, {K // 4}], got {tuple(meta.shape)}")
    _check_bias_size(op, bias, N)


def _check_out_features(op, out_features):
    if not isinstance(out_features, (int, torch.SymInt)) or isinstance(out_features, bool):
        raise TypeError(f"{op}: expected `out_features` to be an int, got {type(out_features).__name__}")


def _check_compressed(op, x, crow, col, values, out_features, bias, values_dim, rows):
    _check_tensor(op, "crow", crow, (torch.int32,), 1)
    _check_tensor(op, "col", col, (torch.int32,), 1)
    _check_x_values_bias(op, x, values, bias, out_features, values_dim)
    _check_same_device(op, "x", x, crow=crow, col=col, values=values, bias=bias)
    if out_features < 0:
        raise ValueError(f"{op}: expected `out_features` >= 0, got {out_features}")
    if crow.shape[0] != rows + 1:
        raise ValueError(f"{op}: expected `crow` to have {rows + 1} entries for out_features = {out_features}, "
                         f"got {crow.shape[0]}")
    if col.shape[0] != values.shape[0]:
        raise ValueError(f"{op}: expected `col` to have one entry per stored value/block ({values.shape[0]}), "
                         f"got {col.shape[0]}")


def check_bsr_linear(x, crow, col, values, out_features, bias) -> None:
    op = "bsr_linear"
    _check_out_features(op, out_features)
    if isinstance(values, Tensor) and values.dim() == 3:
        rows = -(-out_features // max(values.shape[1], 1))
    else:
        rows = 0
    _check_compressed(op, x, crow, col, values, out_features, bias, 3, rows)
    if min(values.shape[1:]) < 1:
        raise ValueError(f"{op}: expected `values` to be [nnz_blocks, bn, bk] with bn, bk >= 1, "
                         f"got {tuple(values.shape)}")


def check_csr_linear(x, crow, col, values, out_features, bias) -> None:
    _check_out_features("csr_linear", out_features)
    _check_compressed("csr_linear", x, crow, col, values, out_features, bias, 1, out_features)


def _linear(x, w, bias):
    out = x.float() @ w.float().t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def sparse24_linear_reference(x, values, meta, bias) -> Tensor:
    check_sparse24_linear(x, values, meta, bias)
    return _linear(x, unpack_2_4(values, meta), bias)


def bsr_linear_reference(x, crow, col, values, out_features, bias) -> Tensor:
    check_bsr_linear(x, crow, col, values, out_features, bias)
    return _linear(x, from_bsr(BSR(crow, col, values, (out_features, x.shape[1]))), bias)


def csr_linear_reference(x, crow, col, values, out_features, bias) -> Tensor:
    check_csr_linear(x, crow, col, values, out_features, bias)
    return _linear(x, from_csr(CSR(crow, col, values, (out_features, x.shape[1]))), bias)


def _sparse24_fake(x, values, meta, bias):
    check_sparse24_linear(x, values, meta, bias)
    return x.new_empty((x.shape[0], values.shape[0]))


def _bsr_fake(x, crow, col, values, out_features, bias):
    check_bsr_linear(x, crow, col, values, out_features, bias)
    return x.new_empty((x.shape[0], out_features))


def _csr_fake(x, crow, col, values, out_features, bias):
    check_csr_linear(x, crow, col, values, out_features, bias)
    return x.new_empty((x.shape[0], out_features))


torch.library.register_fake("compress::sparse24_linear", _sparse24_fake, lib=lib)
torch.library.register_fake("compress::bsr_linear", _bsr_fake, lib=lib)
torch.library.register_fake("compress::csr_linear", _csr_fake, lib=lib)


@torch.library.custom_op("compress::sparse24_linear_triton", mutates_args=())
def sparse24_linear_triton(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor]) -> Tensor:
    check_sparse24_linear(x, values, meta, bias)
    from compress.triton_kernels.sparse24 import sparse24_linear as launch
    return launch(x, values, meta, bias)


@torch.library.custom_op("compress::bsr_linear_triton", mutates_args=())
def bsr_linear_triton(x: Tensor, crow: Tensor, col: Tensor, values: Tensor, out_features: int,
                      bias: Optional[Tensor]) -> Tensor:
    check_bsr_linear(x, crow, col, values, out_features, bias)
    from compress.triton_kernels.bsr import bsr_linear as launch
    return launch(x, crow, col, values, out_features, bias)


@torch.library.custom_op("compress::csr_linear_triton", mutates_args=())
def csr_linear_triton(x: Tensor, crow: Tensor, col: Tensor, values: Tensor, out_features: int,
                      bias: Optional[Tensor]) -> Tensor:
    check_csr_linear(x, crow, col, values, out_features, bias)
    from compress.triton_kernels.csr import csr_linear as launch
    return launch(x, crow, col, values, out_features, bias)


sparse24_linear_triton.register_fake(_sparse24_fake)
bsr_linear_triton.register_fake(_bsr_fake)
csr_linear_triton.register_fake(_csr_fake)

_backend.register_standard("sparse24_linear", torch.ops.compress.sparse24_linear_triton.default,
                           sparse24_linear_reference)
_backend.register_standard("bsr_linear", torch.ops.compress.bsr_linear_triton.default, bsr_linear_reference)
_backend.register_standard("csr_linear", torch.ops.compress.csr_linear_triton.default, csr_linear_reference)


def sparse24_linear(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """y = x @ W^T + bias, W 2:4-sparse as (values [N, K/2], meta uint8 [N, K/4]) from pack_2_4."""
    check_sparse24_linear(x, values, meta, bias)
    return _backend.dispatch("sparse24_linear", x.device)(x, values, meta, bias)


def bsr_linear(x: Tensor, crow: Tensor, col: Tensor, values: Tensor, out_features: int,
               bias: Optional[Tensor] = None) -> Tensor:
    """y = x @ W^T + bias, W [out_features, K] block-sparse (to_bsr)."""
    check_bsr_linear(x, crow, col, values, out_features, bias)
    return _backend.dispatch("bsr_linear", x.device)(x, crow, col, values, out_features, bias)


def csr_linear(x: Tensor, crow: Tensor, col: Tensor, values: Tensor, out_features: int,
               bias: Optional[Tensor] = None) -> Tensor:
    """y = x @ W^T + bias, W [out_features, K] unstructured-sparse in CSR (to_csr)."""
    check_csr_linear(x, crow, col, values, out_features, bias)
    return _backend.dispatch("csr_linear", x.device)(x, crow, col, values, out_features, bias)
