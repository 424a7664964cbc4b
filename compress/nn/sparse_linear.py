"""SparseLinear: nn.Linear whose weight is stored and multiplied in a sparse format.

Formats (compress.formats.sparse; ops in compress.ops.sparse):
  "2:4"      values + 2-bit positions; sparse tensor cores on the GPU
  "bsr"      blocks of `block` (rows, cols); all-zero blocks skipped
  "csr"      unstructured; fast at small batch and high sparsity
  "channel"  whole output rows pruned: a smaller dense GEMM over the kept rows, scattered back
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compress import formats, ops

FORMATS = ("2:4", "bsr", "csr", "channel")
_BUFFERS = {"2:4": ("values", "meta"), "bsr": ("crow", "col", "values"), "csr": ("crow", "col", "values"),
            "channel": ("rows", "values")}


class SparseLinear(nn.Module):
    """Same call as nn.Linear: input [..., in_features] -> [..., out_features], float32/bf16/fp16
    (the weight's dtype). Build with SparseLinear.from_dense(linear, format)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, format: str = "csr",
                 block=(32, 32), device=None, dtype=None):
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"SparseLinear: expected `format` in {FORMATS}, got {format!r}")
        self.in_features, self.out_features, self.format, self.block = in_features, out_features, format, tuple(block)
        dtype = dtype or torch.float32
        # Empty placeholders: from_dense or load_state_dict give them their real sizes.
        shapes = {"values": (0,), "meta": (out_features, 0), "crow": (0,), "col": (0,), "rows": (0,)}
        kinds = {"meta": torch.uint8, "crow": torch.int32, "col": torch.int32, "rows": torch.int64}
        for name in _BUFFERS[format]:
            self.register_buffer(name, torch.empty(shapes[name], dtype=kinds.get(name, dtype), device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_dense(cls, linear: nn.Linear, format: str = "csr", block=(32, 32)) -> "SparseLinear":
        """From an nn.Linear (pruned or not; a pruned layer's masked weight is used). A weight that
        does not fit the format (e.g. not 2:4) is an error naming the format and where."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseLinear.from_dense: expected an nn.Linear, got {type(linear).__name__}")
        if format == "auto":
            from compress.sparsify import choose_format
            format = choose_format(linear)[0]
            if format == "dense":
                raise ValueError("SparseLinear.from_dense(format='auto'): no sparse format is faster than dense "
                                 "for this layer; keep the nn.Linear (compress.sparsify reports why)")
        w = linear.weight.detach()
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, format, block,
                device=w.device, dtype=w.dtype)
        if format == "2:4":
            p = formats.pack_2_4(w)
            m.values, m.meta = p.values, p.meta
        elif format == "bsr":
            b = formats.to_bsr(w, block)
            m.crow, m.col, m.values = b.crow, b.col, b.values
        elif format == "csr":
            c = formats.to_csr(w)
            m.crow, m.col, m.values = c.crow, c.col, c.values
        else:
            rows = (w != 0).any(dim=1).nonzero().flatten()
            m.rows, m.values = rows, w[rows].contiguous()
        if linear.bias is not None:
            m.bias = linear.bias.detach().clone()
        return m

    def to_dense_weight(self) -> Tensor:
        """The dense weight [out_features, in_features] this module multiplies by."""
        shape = (self.out_features, self.in_features)
        if self.format == "2:4":
            return formats.unpack_2_4(self.values, self.meta)
        if self.format == "bsr":
            return formats.from_bsr(formats.BSR(self.crow, self.col, self.values, shape))
        if self.format == "csr":
            return formats.from_csr(formats.CSR(self.crow, self.col, self.values, shape))
        w = torch.zeros(shape, dtype=self.values.dtype, device=self.values.device)
        w[self.rows] = self.values
        return w

    @property
    def sparsity(self) -> float:
        return 1.0 - (self.to_dense_weight() != 0).float().mean().item()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the stored sizes depend on the weight's zeros: take them from the checkpoint
        for name in _BUFFERS[self.format]:
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear: expected input with last dimension in_features = {self.in_features}, "
                             f"got shape {tuple(x.shape)}")
        if x.dtype != self.values.dtype:
            raise TypeError(f"SparseLinear: expected input of the weight's dtype {self.values.dtype}, got {x.dtype}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.format == "2:4":
            out = ops.sparse24_linear(x2, self.values, self.meta, self.bias)
        elif self.format == "bsr":
            out = ops.bsr_linear(x2, self.crow, self.col, self.values, self.out_features, self.bias)
        elif self.format == "csr":
            out = ops.csr_linear(x2, self.crow, self.col, self.values, self.out_features, self.bias)
        else:
            out = self._channel_forward(x2)
        return out.reshape(*lead, self.out_features)

    def _channel_forward(self, x2: Tensor) -> Tensor:
        # pruned rows output their bias alone; the kept rows are one dense GEMM
        base = (self.bias.to(x2.dtype).expand(x2.shape[0], -1) if self.bias is not None else
                x2.new_zeros(()).expand(x2.shape[0], self.out_features))
        kept = F.linear(x2, self.values, None if self.bias is None else self.bias[self.rows].to(x2.dtype))
        return base.index_copy(1, self.rows, kept)

    def extra_repr(self) -> str:
        blk = f", block={self.block}" if self.format == "bsr" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"format={self.format}{blk}")
