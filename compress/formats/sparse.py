"""Sparse weight formats for the sparse linear ops (compress.ops.sparse).

2:4 (Sparse24): in every group of 4 consecutive inputs of a row at most 2 weights are nonzero.
  values [N, K/2]  the 2 kept weights of each group, in input order (zeros where a group has fewer)
  meta   [N, K/4]  uint8 per group: bits 0-1 the position (0..3) of the first kept weight, bits 2-3
                   of the second, first < second. Backends may re-lay this out for hardware
                   (sparse tensor cores want their own metadata order); this is the portable form.
BSR: blocks of (bn, bk); the weight is zero-padded up to whole blocks at the right/bottom edges.
  crow int32 [ceil(N/bn) + 1], col int32 [nnz_blocks] (block-column index), values [nnz_blocks, bn, bk]
  Block rows list their blocks in increasing column order; all-zero blocks are not stored.
CSR: crow int32 [N + 1], col int32 [nnz], values [nnz]; columns increasing within a row.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _check_weight(fn: str, w: Tensor) -> None:
    if not isinstance(w, Tensor) or w.dim() != 2:
        raise ValueError(f"{fn}: expected `weight` to be a 2-D tensor [N, K], got "
                         f"{tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{fn}: expected a floating-point `weight`, got {w.dtype}")


# ---------------------------------------------------------------------------------------------- 2:4

@dataclass
class Sparse24:
    values: Tensor  # [N, K/2]
    meta: Tensor    # uint8 [N, K/4]
    shape: tuple    # (N, K)


def pack_2_4(w: Tensor) -> Sparse24:
    """W [N, K] with at most 2 nonzeros in every group of 4 along K (K % 4 == 0) -> Sparse24.
    A weight that is not 2:4 is an error naming the first offending group."""
    _check_weight("pack_2_4", w)
    N, K = w.shape
    if K % 4:
        raise ValueError(f"pack_2_4: 2:4 needs K (in_features) divisible by 4, got K = {K}")
    g = w.reshape(N, K // 4, 4)
    nz = g != 0
    count = nz.sum(-1)
    if (count > 2).any():
        row, grp = (count > 2).nonzero()[0].tolist()
        raise ValueError(f"not 2:4 sparse: group {grp} of row {row} has {int(count[row, grp])} nonzeros "
                         f"(inputs {4 * grp}..{4 * grp + 3})")
    # the kept positions: nonzeros first (in order), then zero positions to make up two
    pos = torch.arange(4, device=w.device).expand_as(g)
    key = torch.where(nz, pos, pos + 4)  # nonzeros sort before zeros, each group in input order
    idx = key.argsort(dim=-1, stable=True)[..., :2].sort(dim=-1).values
    values = g.gather(-1, idx).reshape(N, K // 2)
    meta = (idx[..., 0] | (idx[..., 1] << 2)).to(torch.uint8)
    return Sparse24(values.contiguous(), meta.contiguous(), (N, K))


def unpack_2_4(values: Tensor, meta: Tensor) -> Tensor:
    """Sparse24 parts -> dense W [N, K]. A malformed meta byte naming one position twice puts the
    sum of its two values there (what every kernel computes)."""
    N, half = values.shape
    idx = torch.stack([meta & 3, (meta >> 2) & 3], dim=-1).long()  # [N, K/4, 2]
    dense = torch.zeros(N, half // 2, 4, dtype=values.dtype, device=values.device)
    dense.scatter_add_(-1, idx, values.reshape(N, half // 2, 2))
    return dense.reshape(N, half * 2)


# ---------------------------------------------------------------------------------------------- BSR

@dataclass
class BSR:
    crow: Tensor    # int32 [ceil(N/bn) + 1]
    col: Tensor     # int32 [nnz_blocks]
    values: Tensor  # [nnz_blocks, bn, bk]
    shape: tuple    # (N, K)

    @property
    def block(self) -> tuple:
        return tuple(self.values.shape[1:])

    @property
    def density(self) -> float:
        bn, bk = self.block
        rows, cols = -(-self.shape[0] // bn), -(-self.shape[1] // bk)
        return self.col.numel() / max(rows * cols, 1)


def to_bsr(w: Tensor, block=(32, 32)) -> BSR:
    """W [N, K] -> BSR with (bn, bk) blocks; all-zero blocks are dropped."""
    _check_weight("to_bsr", w)
    bn, bk = block
    if bn < 1 or bk < 1:
        raise ValueError(f"to_bsr: expected a positive `block`, got {block}")
    N, K = w.shape
    R, C = -(-N // bn), -(-K // bk)
    wp = torch.nn.functional.pad(w, (0, C * bk - K, 0, R * bn - N))
    blocks = wp.reshape(R, bn, C, bk).permute(0, 2, 1, 3)  # [R, C, bn, bk]
    keep = (blocks != 0).flatten(2).any(-1)                  # [R, C]
    crow = torch.zeros(R + 1, dtype=torch.int32, device=w.device)
    crow[1:] = keep.sum(1).cumsum(0)
    rows, cols = keep.nonzero(as_tuple=True)                 # row-major: columns increase per row
    return BSR(crow, cols.to(torch.int32), blocks[rows, cols].contiguous(), (N, K))


def from_bsr(b: BSR) -> Tensor:
    N, K = b.shape
    bn, bk = b.block
    R, C = -(-N // bn), -(-K // bk)
    dense = torch.zeros(R, C, bn, bk, dtype=b.values.dtype, device=b.values.device)
    rows = torch.repeat_interleave(torch.arange(R, device=b.crow.device), (b.crow[1:] - b.crow[:-1]).long())
    dense[rows, b.col.long()] = b.values
    return dense.permute(0, 2, 1, 3).reshape(R * bn, C * bk)[:N, :K].contiguous()


# ---------------------------------------------------------------------------------------------- CSR

@dataclass
class CSR:
    crow: Tensor    # int32 [N + 1]
    col: Tensor     # int32 [nnz]
    values: Tensor  # [nnz]
    shape: tuple    # (N, K)

    @property
    def density(self) -> float:
        return self.values.numel() / max(self.shape[0] * self.shape[1], 1)


def to_csr(w: Tensor) -> CSR:
    _check_weight("to_csr", w)
    N, K = w.shape
    nz = w != 0
    crow = torch.zeros(N + 1, dtype=torch.int32, device=w.device)
    crow[1:] = nz.sum(1).cumsum(0)
    rows, cols = nz.nonzero(as_tuple=True)
    return CSR(crow, cols.to(torch.int32), w[rows, cols].contiguous(), (N, K))


def from_csr(c: CSR) -> Tensor:
    N, K = c.shape
    rows = torch.repeat_interleave(torch.arange(N, device=c.crow.device), (c.crow[1:] - c.crow[:-1]).long())
    dense = torch.zeros(N, K, dtype=c.values.dtype, device=c.values.device)
    dense[rows, c.col.long()] = c.values
    return dense
