"""LSTM / GRU recurrence in Triton (compress.ops.lstm_layer, gru_layer and their _w8 / _bsr
variants): one fused step kernel (recurrent matmul, gates, nonlinearities, state update, lengths
mask) launched once per timestep.

Shapes as compress.ops.rnn: T steps, B batch rows, H hidden units, P state width. The launcher
keeps h and c in float32 between steps (two h buffers, ping-pong: a program reads all of h_{t-1}
while others write h_t) and rounds y, h_n, c_n to the input dtype at the end.

How the recurrent weight is stored is the kernels' WEIGHT constexpr; only the loads differ, the
step bodies are shared:
  "dense"  [G*H, K] row-major in the input's float dtype
  "w8"     int8 [G*H, K] row-major and float32 per-row scales: a weight tile is converted to float32
           in registers and the row sums are scaled, so the weight crosses memory at 1 byte per element
  "bsr"    blocks [nnz, bn, bk] (compress.formats.sparse.BSR): a program owns bn hidden units, i.e.
           one block row per gate (bn divides H), and walks only that block row's stored blocks
A program of the step kernels owns BLOCK_B batch rows x ROWS hidden units and computes every gate
of them (for "bsr", ROWS = bn): each weight tile it loads serves its BLOCK_B rows. The LSTM
projection (h = hh @ w_hr^T) is "dense" or "w8".
"""
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from compress.ops._backend import triton_interpreted
from compress.triton_kernels._launch import on_device


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _rows_matvec(w_ptr, s_ptr, crow_ptr, col_ptr, first, mask_r, h_ptr, offs_b, mask_b, K, WEIGHT: tl.constexpr,
                 ROWS: tl.constexpr, BK: tl.constexpr, NB: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """sum_k h[b, k] * w[first + r, k] for the batch rows offs_b (masked by mask_b) of a row-major
    float32 h [B, K] and r < BLOCK_R (masked by mask_r) of a [rows, K] weight stored as WEIGHT:
    [BLOCK_B, BLOCK_R] float32. s_ptr: the "w8" scales. "bsr": first is a multiple of ROWS = bn,
    block row first // bn of blocks [ROWS, BK] indexed by crow_ptr / col_ptr; a K tile holds NB
    blocks of BLOCK_K columns (NB > 1 for narrow blocks, else one block BLOCK_K columns at a time)."""
    tr = tl.arange(0, BLOCK_R)
    h_rows = h_ptr + offs_b[:, None] * K
    acc = tl.zeros((offs_b.shape[0], BLOCK_R), dtype=tl.float32)
    if WEIGHT == "bsr":
        r = first // ROWS
        start = tl.load(crow_ptr + r).to(tl.int64)  # 64-bit block offsets: nnz * bn * bk can pass 2^31
        end = tl.load(crow_ptr + r + 1).to(tl.int64)
        slot = tl.arange(0, NB * BLOCK_K) // BLOCK_K  # the tile's column -> which of its NB blocks
        kin = tl.arange(0, NB * BLOCK_K) % BLOCK_K    # -> column within that block (+ k0)
        w_tile = slot[None, :] * (ROWS * BK) + tr[:, None] * BK + kin[None, :]  # in NB consecutive blocks
        for j0 in range(start, end, NB):
            j = j0 + slot
            mask_j = j < end
            k_first = tl.load(col_ptr + j, mask=mask_j, other=0) * BK + kin
            for k0 in range(0, BK, BLOCK_K):
                kk = k_first + k0  # the tile's columns of h; past K: the block's padding
                mask_k = mask_j & (kin + k0 < BK)
                hk = tl.load(h_rows + kk[None, :], mask=mask_b[:, None] & (mask_k & (kk < K))[None, :], other=0.0)
                w = tl.load(w_ptr + (j0 * (ROWS * BK) + k0) + w_tile, mask=mask_r[:, None] & mask_k[None, :], other=0)
                acc += tl.sum(hk[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    else:
        rows = first + tr
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            hk = tl.load(h_rows + offs_k[None, :], mask=mask_b[:, None] & mask_k[None, :], other=0.0)
            w = tl.load(w_ptr + rows[:, None] * K + offs_k[None, :], mask=mask_r[:, None] & mask_k[None, :], other=0)
            acc += tl.sum(hk[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
        if WEIGHT == "w8":
            acc *= tl.load(s_ptr + rows, mask=mask_r, other=0.0)[None, :]
    return acc


@triton.jit
def _active(len_ptr, t, offs_b, mask_b, HAS_LEN: tl.constexpr):
    """Whether step t runs for each batch row: [BLOCK_B, 1] (all rows without lengths)."""
    if HAS_LEN:
        return t < tl.load(len_ptr + offs_b, mask=mask_b, other=0)[:, None]
    else:
        return (offs_b >= 0)[:, None]


@triton.jit
def _lstm_step_kernel(xg_ptr, w_ptr, s_ptr, crow_ptr, col_ptr, len_ptr, h_ptr, c_ptr, h_out_ptr, hh_ptr, y_ptr,
                      t, B, H, P, WEIGHT: tl.constexpr, HAS_LEN: tl.constexpr, HAS_PROJ: tl.constexpr,
                      BLOCK_B: tl.constexpr, ROWS: tl.constexpr, BK: tl.constexpr, NB: tl.constexpr,
                      BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    # grid (cdiv(B, BLOCK_B), cdiv(H, ROWS)): BLOCK_B batch rows x ROWS hidden units, every gate.
    # c is updated in place (each element has one owner program).
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    u0 = tl.program_id(1) * ROWS
    offs_h = u0 + tl.arange(0, BLOCK_H)
    mask_h = (tl.arange(0, BLOCK_H) < ROWS) & (offs_h < H)
    mask = mask_b[:, None] & mask_h[None, :]
    gi = _rows_matvec(w_ptr, s_ptr, crow_ptr, col_ptr, u0, mask_h, h_ptr, offs_b, mask_b, P, WEIGHT, ROWS, BK,
                      NB, BLOCK_H, BLOCK_K)
    gf = _rows_matvec(w_ptr, s_ptr, crow_ptr, col_ptr, H + u0, mask_h, h_ptr, offs_b, mask_b, P, WEIGHT, ROWS, BK,
                      NB, BLOCK_H, BLOCK_K)
    gg = _rows_matvec(w_ptr, s_ptr, crow_ptr, col_ptr, 2 * H + u0, mask_h, h_ptr, offs_b, mask_b, P, WEIGHT, ROWS,
                      BK, NB, BLOCK_H, BLOCK_K)
    go = _rows_matvec(w_ptr, s_ptr, crow_ptr, col_ptr, 3 * H + u0, mask_h, h_ptr, offs_b, mask_b, P, WEIGHT, ROWS,
                      BK, NB, BLOCK_H, BLOCK_K)
    x = xg_ptr + (t * B + offs_b[:, None]) * 4 * H + offs_h[None, :]
    i = _sigmoid(gi + tl.load(x, mask=mask, other=0.0))
    f = _sigmoid(gf + tl.load(x + H, mask=mask, other=0.0))
    g = _tanh(gg + tl.load(x + 2 * H, mask=mask, other=0.0))
    o = _sigmoid(go + tl.load(x + 3 * H, mask=mask, other=0.0))
    bh = offs_b[:, None] * H + offs_h[None, :]
    c = tl.load(c_ptr + bh, mask=mask, other=0.0)
    c_new = f * c + i * g
    hh = o * _tanh(c_new)
    active = _active(len_ptr, t, offs_b, mask_b, HAS_LEN)
    tl.store(c_ptr + bh, tl.where(active, c_new, c), mask=mask)
    if HAS_PROJ:
        tl.store(hh_ptr + bh, hh, mask=mask)
    else:  # P == H
        h_old = tl.load(h_ptr + bh, mask=mask, other=0.0)
        tl.store(h_out_ptr + bh, tl.where(active, hh, h_old), mask=mask)
        tl.store(y_ptr + (t * B + offs_b[:, None]) * P + offs_h[None, :], tl.where(active, hh, 0.0), mask=mask)


@triton.jit
def _lstm_proj_kernel(hh_ptr, wr_ptr, s_ptr, len_ptr, h_ptr, h_out_ptr, y_ptr, t, B, H, P, WEIGHT: tl.constexpr,
                      HAS_LEN: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    # grid (cdiv(B, BLOCK_B), cdiv(P, BLOCK_P)): h_t = hh_t @ w_hr^T (WEIGHT "dense" or "w8"), masked
    # like the step kernel.
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    p0 = tl.program_id(1) * BLOCK_P
    offs_p = p0 + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    mask = mask_b[:, None] & mask_p[None, :]
    h_new = _rows_matvec(wr_ptr, s_ptr, wr_ptr, wr_ptr, p0, mask_p, hh_ptr, offs_b, mask_b, H, WEIGHT, BLOCK_P, 1,
                         1, BLOCK_P, BLOCK_K)
    active = _active(len_ptr, t, offs_b, mask_b, HAS_LEN)
    bp = offs_b[:, None] * P + offs_p[None, :]
    h_old = tl.load(h_ptr + bp, mask=mask, other=0.0)
    tl.store(h_out_ptr + bp, tl.where(active, h_new, h_old), mask=mask)
    tl.store(y_ptr + (t * B + offs_b[:, None]) * P + offs_p[None, :], tl.where(active, h_new, 0.0), mask=mask)


@triton.jit
def _gru_step_kernel(xg_ptr, w_ptr, s_ptr, crow_ptr, col_ptr, b_ptr, len_ptr, h_ptr, h_out_ptr, y_ptr, t, B, H,
                     WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, BLOCK_B: tl.constexpr,
                     ROWS: tl.constexpr, BK: tl.constexpr, NB: tl.constexpr, BLOCK_H: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    # grid (cdiv(B, BLOCK_B), cdiv(H, ROWS))
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    u0 = tl.program_id(1) * ROWS
    offs_h = u0 + tl.arange(0, BLOCK_H)
    mask_h = (tl.arange(0, BLOCK_H) < ROWS) & (offs_h < H)
    mask = mask_b[:, None] & mask_h[None, :]
    ar = _rows_matvec(w_ptr, s_ptr, crow_ptr, col_ptr, u0, mask_h, h_ptr, offs_b, mask_b, H, WEIGHT, ROWS, BK,
                      NB, BLOCK_H, BLOCK_K)
    az = _rows_matvec(w_ptr, s_ptr, crow_ptr, col_ptr, H + u0, mask_h, h_ptr, offs_b, mask_b, H, WEIGHT, ROWS, BK,
                      NB, BLOCK_H, BLOCK_K)
    an = _rows_matvec(w_ptr, s_ptr, crow_ptr, col_ptr, 2 * H + u0, mask_h, h_ptr, offs_b, mask_b, H, WEIGHT, ROWS,
                      BK, NB, BLOCK_H, BLOCK_K)
    if HAS_BIAS:
        ar += tl.load(b_ptr + offs_h, mask=mask_h, other=0.0)[None, :]
        az += tl.load(b_ptr + H + offs_h, mask=mask_h, other=0.0)[None, :]
        an += tl.load(b_ptr + 2 * H + offs_h, mask=mask_h, other=0.0)[None, :]
    x = xg_ptr + (t * B + offs_b[:, None]) * 3 * H + offs_h[None, :]
    r = _sigmoid(tl.load(x, mask=mask, other=0.0) + ar)
    z = _sigmoid(tl.load(x + H, mask=mask, other=0.0) + az)
    n = _tanh(tl.load(x + 2 * H, mask=mask, other=0.0) + r * an)
    bh = offs_b[:, None] * H + offs_h[None, :]
    h_old = tl.load(h_ptr + bh, mask=mask, other=0.0)
    h_new = (1.0 - z) * n + z * h_old
    active = _active(len_ptr, t, offs_b, mask_b, HAS_LEN)
    tl.store(h_out_ptr + bh, tl.where(active, h_new, h_old), mask=mask)
    tl.store(y_ptr + (t * B + offs_b[:, None]) * H + offs_h[None, :], tl.where(active, h_new, 0.0), mask=mask)


# Tiles: at most 8 batch rows and 64 wide on the GPU; under the interpreter 16 and 16, so that the
# tests' small shapes (H = 17, 33, B = 17) cross tile boundaries. A program's [batch rows, weight
# rows, inputs] product is at most _TILE_ELEMS (on the GPU 32 floats a thread at 4 warps): batch
# rows narrow the K tile.
_TILE_ELEMS = 4096


def _caps():
    """(batch rows, tile width) at most."""
    return (16, 16) if triton_interpreted() else (8, 64)


def _pow2(n, cap):
    return max(1, min(triton.next_power_of_2(max(n, 1)), cap))


class _Weight(NamedTuple):
    """A recurrent (or projection) weight as the kernels take it."""
    kind: str                        # the kernels' WEIGHT: "dense", "w8" or "bsr"
    w: torch.Tensor                  # [rows, K] float or int8, or the BSR values [nnz, bn, bk]; contiguous
    scale: Optional[torch.Tensor] = None  # "w8": float32 [rows]
    crow: Optional[torch.Tensor] = None   # "bsr": int32 [rows / bn + 1]
    col: Optional[torch.Tensor] = None    # "bsr": int32 [nnz]

    @staticmethod
    def of(kind, w, scale=None, crow=None, col=None):
        return _Weight(kind, w.contiguous(), *(None if t is None else t.contiguous() for t in (scale, crow, col)))

    def ptrs(self):
        """The kernels' w, s, crow, col arguments; w stands in for the ones this kind does not use."""
        return (self.w, *(self.w if t is None else t for t in (self.scale, self.crow, self.col)))

    def tiles(self, B, H, K):
        """The tile constexprs of a step kernel over [B, H] with K inputs: BLOCK_B batch rows and
        ROWS hidden units (in a BLOCK_H tile) per program; a K tile BLOCK_K wide, or for "bsr" NB
        blocks of BLOCK_K columns (several blocks when they are narrower than the tile)."""
        cap_b, cap = _caps()
        if self.kind == "bsr":
            rows, bk = self.w.shape[1:]
            bh = triton.next_power_of_2(rows)
        else:
            rows = bh = _pow2(H, cap)
            bk = 1
        bb = _pow2(B, min(cap_b, _TILE_ELEMS // bh))
        width = max(1, min(cap, _TILE_ELEMS // (bb * bh)))
        if self.kind != "bsr":
            return {"BLOCK_B": bb, "ROWS": rows, "BK": 1, "NB": 1, "BLOCK_H": bh, "BLOCK_K": _pow2(K, width)}
        bkt = _pow2(bk, width)
        return {"BLOCK_B": bb, "ROWS": rows, "BK": bk, "NB": width // bkt, "BLOCK_H": bh, "BLOCK_K": bkt}


def _state(s):
    """A float32 row-major copy of a state (h0 / c0 may come transposed or strided)."""
    return s.to(torch.float32, memory_format=torch.contiguous_format, copy=True)


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _lstm(xg, h0, c0, w: _Weight, wr: Optional[_Weight], lengths, reverse):
    T, B, G = xg.shape
    H, P = G // 4, h0.shape[1]
    dt = xg.dtype
    y = torch.empty((T, B, P), dtype=torch.float32, device=xg.device)
    h = [_state(h0), torch.empty((B, P), dtype=torch.float32, device=xg.device)]
    c = _state(c0)
    if T == 0 or B == 0:
        return y.to(dt), h[0].to(dt), c.to(dt)
    x = xg.float().contiguous()
    hh = torch.empty((B, H), dtype=torch.float32, device=xg.device) if wr is not None else y
    len_arg = lengths.contiguous() if lengths is not None else y
    tiles = w.tiles(B, H, P)
    grid = (triton.cdiv(B, tiles["BLOCK_B"]), triton.cdiv(H, tiles["ROWS"]))
    if wr is not None:
        pt = wr.tiles(B, P, H)
        proj_tiles = {"BLOCK_B": pt["BLOCK_B"], "BLOCK_P": pt["ROWS"], "BLOCK_K": pt["BLOCK_K"]}
        proj_grid = (triton.cdiv(B, pt["BLOCK_B"]), triton.cdiv(P, pt["ROWS"]))
    with on_device(xg):
        for i, t in enumerate(_steps(T, reverse)):
            src, dst = h[i % 2], h[(i + 1) % 2]
            _lstm_step_kernel[grid](x, *w.ptrs(), len_arg, src, c, dst, hh, y, t, B, H, P, WEIGHT=w.kind,
                                    HAS_LEN=lengths is not None, HAS_PROJ=wr is not None, **tiles, num_warps=4)
            if wr is not None:
                _lstm_proj_kernel[proj_grid](hh, *wr.ptrs()[:2], len_arg, src, dst, y, t, B, H, P, WEIGHT=wr.kind,
                                             HAS_LEN=lengths is not None, **proj_tiles, num_warps=4)
    return y.to(dt), h[T % 2].to(dt), c.to(dt)


def _gru(xg, h0, w: _Weight, b_hh, lengths, reverse):
    T, B, G = xg.shape
    H = G // 3
    dt = xg.dtype
    y = torch.empty((T, B, H), dtype=torch.float32, device=xg.device)
    h = [_state(h0), torch.empty((B, H), dtype=torch.float32, device=xg.device)]
    if T == 0 or B == 0:
        return y.to(dt), h[0].to(dt)
    x = xg.float().contiguous()
    bias = None if b_hh is None else b_hh.float().contiguous()
    lengths = None if lengths is None else lengths.contiguous()
    tiles = w.tiles(B, H, H)
    grid = (triton.cdiv(B, tiles["BLOCK_B"]), triton.cdiv(H, tiles["ROWS"]))
    with on_device(xg):
        for i, t in enumerate(_steps(T, reverse)):
            _gru_step_kernel[grid](
                x, *w.ptrs(), bias if bias is not None else y, lengths if lengths is not None else y,
                h[i % 2], h[(i + 1) % 2], y, t, B, H, WEIGHT=w.kind, HAS_BIAS=bias is not None,
                HAS_LEN=lengths is not None, **tiles, num_warps=4)
    return y.to(dt), h[T % 2].to(dt)


# Launchers, each checked by its caller (the custom op compress.ops.<name>_triton).

def lstm_layer(xg, h0, c0, w_hh, w_hr, lengths, reverse):
    wr = None if w_hr is None else _Weight.of("dense", w_hr)
    return _lstm(xg, h0, c0, _Weight.of("dense", w_hh), wr, lengths, reverse)


def gru_layer(xg, h0, w_hh, b_hh, lengths, reverse):
    return _gru(xg, h0, _Weight.of("dense", w_hh), b_hh, lengths, reverse)


def lstm_layer_w8(xg, h0, c0, qw_hh, w_hh_scale, qw_hr, w_hr_scale, lengths, reverse):
    wr = None if qw_hr is None else _Weight.of("w8", qw_hr, w_hr_scale)
    return _lstm(xg, h0, c0, _Weight.of("w8", qw_hh, w_hh_scale), wr, lengths, reverse)


def gru_layer_w8(xg, h0, qw_hh, w_hh_scale, b_hh, lengths, reverse):
    return _gru(xg, h0, _Weight.of("w8", qw_hh, w_hh_scale), b_hh, lengths, reverse)


def lstm_layer_bsr(xg, h0, c0, crow, col, values, w_hr, lengths, reverse):
    wr = None if w_hr is None else _Weight.of("dense", w_hr)
    return _lstm(xg, h0, c0, _Weight.of("bsr", values, crow=crow, col=col), wr, lengths, reverse)


def gru_layer_bsr(xg, h0, crow, col, values, b_hh, lengths, reverse):
    return _gru(xg, h0, _Weight.of("bsr", values, crow=crow, col=col), b_hh, lengths, reverse)
