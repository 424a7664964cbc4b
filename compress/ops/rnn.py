"""Whole-sequence LSTM / GRU recurrence ops: schemas, checks, references, fakes, autograd, backends.

The module (compress.nn.rnn) does the input projection of all timesteps as one GEMM and hands its
result `xg` to one op call per layer and direction; the op runs all T steps (recurrent matmul,
gates, nonlinearities, state update) without returning to Python.

Shapes: T timesteps, B batch rows, H hidden units, P the recurrent state width (LSTM proj_size,
else P = H). Gate order as torch: LSTM i, f, g, o; GRU r, z, n.

Numerics: xg, states and weights share one float dtype (float32, bfloat16, float16); every backend
computes the gates and carries h and c in float32 across steps, and rounds y, h_n, c_n to that dtype
at the end (nn.LSTM in bf16 rounds the state every step instead).

Variable lengths (PackedSequence): with `lengths` (int64 [B]), step t is active for row b iff
t < lengths[b]. An inactive step leaves b's state unchanged and writes y[t, b] = 0, so with
reverse=True row b starts from its own last valid step, as nn.LSTM does for packed input.

Autograd: every backend's forward shares one backward, the ops `lstm_layer_backward` /
`gru_layer_backward` (backpropagation through time that first recomputes the forward's gate
activations in float32; nothing but the inputs is saved), dispatched to a backend like any op.
The reference forward needs no registration: autograd runs through its own loop.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from compress.ops import _backend
from compress.ops._lib import lib
from compress.ops.int8 import _FLOAT_DTYPES, _check_same_device, _check_tensor

# ---------------------------------------------------------------------------------------------
# lstm_layer(xg, h0, c0, w_hh, w_hr, lengths, reverse) -> (y, h_n, c_n)
#   xg   [T, B, 4H]  x_t @ W_ih^T + b_ih + b_hh for every t (any strides)
#   h0   [B, P], c0 [B, H]; w_hh [4H, P]; w_hr [P, H] (proj_size) or None (then P = H)
#   lengths int64 [B] or None (all rows run T steps); reverse: t runs T-1 .. 0
#   y    [T, B, P] (h_t of every step; 0 where inactive), h_n [B, P], c_n [B, H]
# Step: g = xg_t + h @ w_hh^T; i, f, o = sigmoid; g = tanh; c = f*c + i*g; h = o*tanh(c) [@ w_hr^T]

lib.define("lstm_layer(Tensor xg, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, Tensor? lengths, "
           "bool reverse) -> (Tensor, Tensor, Tensor)")

# gru_layer(xg, h0, w_hh, b_hh, lengths, reverse) -> (y, h_n)
#   xg   [T, B, 3H]  x_t @ W_ih^T + b_ih; h0 [B, H]; w_hh [3H, H]; b_hh [3H] or None
#   y    [T, B, H], h_n [B, H]
# Step: a = h @ w_hh^T + b_hh; r = sigmoid(xr + ar); z = sigmoid(xz + az); n = tanh(xn + r * an);
#       h = (1 - z) * n + z * h       (b_hh stays apart from xg because r multiplies b_hn)

lib.define("gru_layer(Tensor xg, Tensor h0, Tensor w_hh, Tensor? b_hh, Tensor? lengths, bool reverse) "
           "-> (Tensor, Tensor)")


def _check_shape(op, name, t, shape, what):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: expected `{name}` of shape {tuple(shape)} ({what}), got {tuple(t.shape)}")


def _check_lengths(op, lengths, B):
    if lengths is not None:
        _check_tensor(op, "lengths", lengths, (torch.int64,), 1)
        _check_shape(op, "lengths", lengths, (B,), "one length per batch row")


def check_lstm_layer(xg, h0, c0, w_hh, w_hr, lengths, reverse, op="lstm_layer") -> None:
    _check_tensor(op, "xg", xg, _FLOAT_DTYPES, 3)
    same = (xg.dtype,)
    _check_tensor(op, "h0", h0, same, 2)
    _check_tensor(op, "c0", c0, same, 2)
    _check_tensor(op, "w_hh", w_hh, same, 2)
    if w_hr is not None:
        _check_tensor(op, "w_hr", w_hr, same, 2)
    _check_lengths(op, lengths, xg.shape[1])  # a tensor before its device is compared
    _check_same_device(op, "xg", xg, h0=h0, c0=c0, w_hh=w_hh, w_hr=w_hr, lengths=lengths)
    T, B, G = xg.shape
    if G % 4:
        raise ValueError(f"{op}: expected `xg` to be [T, B, 4H] (4 gates), got last dim {G}, not divisible by 4")
    H = G // 4
    P = w_hr.shape[0] if w_hr is not None else H
    if w_hr is not None:
        _check_shape(op, "w_hr", w_hr, (P, H), f"[P, H] with H = xg.shape[2] / 4 = {H}")
    _check_shape(op, "w_hh", w_hh, (4 * H, P), f"[4H, P] with H = {H}, P = {P}")
    _check_shape(op, "h0", h0, (B, P), f"[B, P] with B = xg.shape[1] = {B}")
    _check_shape(op, "c0", c0, (B, H), f"[B, H] with B = {B}, H = {H}")
    if not isinstance(reverse, bool):
        raise TypeError(f"{op}: expected `reverse` to be a bool, got {type(reverse).__name__}")


def check_gru_layer(xg, h0, w_hh, b_hh, lengths, reverse, op="gru_layer") -> None:
    _check_tensor(op, "xg", xg, _FLOAT_DTYPES, 3)
    same = (xg.dtype,)
    _check_tensor(op, "h0", h0, same, 2)
    _check_tensor(op, "w_hh", w_hh, same, 2)
    if b_hh is not None:
        _check_tensor(op, "b_hh", b_hh, same, 1)
    _check_lengths(op, lengths, xg.shape[1])  # a tensor before its device is compared
    _check_same_device(op, "xg", xg, h0=h0, w_hh=w_hh, b_hh=b_hh, lengths=lengths)
    T, B, G = xg.shape
    if G % 3:
        raise ValueError(f"{op}: expected `xg` to be [T, B, 3H] (3 gates), got last dim {G}, not divisible by 3")
    H = G // 3
    _check_shape(op, "w_hh", w_hh, (3 * H, H), f"[3H, H] with H = xg.shape[2] / 3 = {H}")
    if b_hh is not None:
        _check_shape(op, "b_hh", b_hh, (3 * H,), f"[3H] with H = {H}")
    _check_shape(op, "h0", h0, (B, H), f"[B, H] with B = xg.shape[1] = {B}")
    if not isinstance(reverse, bool):
        raise TypeError(f"{op}: expected `reverse` to be a bool, got {type(reverse).__name__}")


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _active(lengths, t):
    return None if lengths is None else (t < lengths).unsqueeze(1)  # [B, 1]


def _lstm_step(xg_t, h, c, w, wr):
    """One step of the references, float32 weights: (h_new, c_new, (i, f, g, o, tanh(c_new), hh)) with
    the activated gates and hh = o * tanh(c_new), h_new = hh @ wr^T with a projection (else hh)."""
    gi, gf, gg, go = (xg_t.float() + h @ w.t()).chunk(4, 1)
    i, f, g, o = torch.sigmoid(gi), torch.sigmoid(gf), torch.tanh(gg), torch.sigmoid(go)
    c_new = f * c + i * g
    tc = torch.tanh(c_new)
    hh = o * tc
    return (hh @ wr.t() if wr is not None else hh), c_new, (i, f, g, o, tc, hh)


def _gru_step(xg_t, h, w, b):
    """One step of the references, float32 weights: (h_new, (r, z, n, an)), an the n part of
    h @ w^T + b."""
    xr, xz, xn = xg_t.float().chunk(3, 1)
    a = h @ w.t() if b is None else torch.addmm(b, h, w.t())
    ar, az, an = a.chunk(3, 1)
    r, z = torch.sigmoid(xr + ar), torch.sigmoid(xz + az)
    n = torch.tanh(xn + r * an)
    return (1 - z) * n + z * h, (r, z, n, an)


def lstm_layer_reference(xg, h0, c0, w_hh, w_hr=None, lengths=None, reverse=False):
    """Plain PyTorch, one step at a time, float32 gate math; differentiable (autograd runs through it)."""
    check_lstm_layer(xg, h0, c0, w_hh, w_hr, lengths, reverse)
    T, B = xg.shape[:2]
    h, c = h0.float(), c0.float()
    w, wr = w_hh.float(), (w_hr.float() if w_hr is not None else None)
    ys = [None] * T
    for t in _steps(T, reverse):
        h_new, c_new, _ = _lstm_step(xg[t], h, c, w, wr)
        m = _active(lengths, t)
        if m is None:
            c, h, ys[t] = c_new, h_new, h_new
        else:
            c, h, ys[t] = torch.where(m, c_new, c), torch.where(m, h_new, h), torch.where(m, h_new, 0.0)
    y = torch.stack(ys) if T else xg.new_empty((0, B, h0.shape[1]), dtype=torch.float32)
    return y.to(xg.dtype), h.to(xg.dtype, copy=True), c.to(xg.dtype, copy=True)


def gru_layer_reference(xg, h0, w_hh, b_hh=None, lengths=None, reverse=False):
    """Plain PyTorch, one step at a time, float32 gate math; differentiable (autograd runs through it)."""
    check_gru_layer(xg, h0, w_hh, b_hh, lengths, reverse)
    T, B = xg.shape[:2]
    h = h0.float()
    w = w_hh.float()
    b = b_hh.float() if b_hh is not None else None
    ys = [None] * T
    for t in _steps(T, reverse):
        h_new, _ = _gru_step(xg[t], h, w, b)
        m = _active(lengths, t)
        if m is None:
            h, ys[t] = h_new, h_new
        else:
            h, ys[t] = torch.where(m, h_new, h), torch.where(m, h_new, 0.0)
    y = torch.stack(ys) if T else xg.new_empty((0, B, h0.shape[1]), dtype=torch.float32)
    return y.to(xg.dtype), h.to(xg.dtype, copy=True)


def _lstm_layer_fake(xg, h0, c0, w_hh, w_hr, lengths, reverse):
    check_lstm_layer(xg, h0, c0, w_hh, w_hr, lengths, reverse)
    T, B = xg.shape[:2]
    return xg.new_empty((T, B, h0.shape[1])), h0.new_empty(h0.shape), c0.new_empty(c0.shape)


def _gru_layer_fake(xg, h0, w_hh, b_hh, lengths, reverse):
    check_gru_layer(xg, h0, w_hh, b_hh, lengths, reverse)
    T, B = xg.shape[:2]
    return xg.new_empty((T, B, h0.shape[1])), h0.new_empty(h0.shape)


torch.library.register_fake("compress::lstm_layer", _lstm_layer_fake, lib=lib)
torch.library.register_fake("compress::gru_layer", _gru_layer_fake, lib=lib)


# ---------------------------------------------------------------------------------------------
# Backward ops: backpropagation through time for one layer and direction, float32 inside, after
# recomputing the forward (nothing but the forward's inputs is saved). Every backend's forward
# shares them through register_autograd below.
#
# lstm_layer_backward(dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr, lengths, reverse)
#     -> (dxg, dh0, dc0, dw_hh, dw_hr)
#   dy [T, B, P], dh_n [B, P], dc_n [B, H]: gradients of y, h_n, c_n in xg's dtype (zeros where
#   the forward output was unused); the rest as lstm_layer. dxg, dh0, dc0, dw_hh shaped and typed
#   as xg, h0, c0, w_hh; dw_hr [P, H], or an empty [0] tensor when w_hr is None (a schema cannot
#   return an optional tensor to autograd's satisfaction: the caller maps it back to None).
# gru_layer_backward(dy, dh_n, xg, h0, w_hh, b_hh, lengths, reverse) -> (dxg, dh0, dw_hh, db_hh)
#   dy [T, B, H], dh_n [B, H]; db_hh [3H], or an empty [0] tensor when b_hh is None.

lib.define("lstm_layer_backward(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor xg, Tensor h0, Tensor c0, "
           "Tensor w_hh, Tensor? w_hr, Tensor? lengths, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
lib.define("gru_layer_backward(Tensor dy, Tensor dh_n, Tensor xg, Tensor h0, Tensor w_hh, Tensor? b_hh, "
           "Tensor? lengths, bool reverse) -> (Tensor, Tensor, Tensor, Tensor)")


def _check_grads(op, xg, **grads):
    for name, (g, shape) in grads.items():
        _check_tensor(op, name, g, (xg.dtype,), len(shape))
        _check_shape(op, name, g, shape, "the shape of the forward output it is the gradient of")
    _check_same_device(op, "xg", xg, **{name: g for name, (g, _) in grads.items()})


def check_lstm_layer_backward(dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr, lengths, reverse) -> None:
    check_lstm_layer(xg, h0, c0, w_hh, w_hr, lengths, reverse, op="lstm_layer_backward")
    T, B = xg.shape[:2]
    _check_grads("lstm_layer_backward", xg, dy=(dy, (T, B, h0.shape[1])), dh_n=(dh_n, tuple(h0.shape)),
                 dc_n=(dc_n, tuple(c0.shape)))


def check_gru_layer_backward(dy, dh_n, xg, h0, w_hh, b_hh, lengths, reverse) -> None:
    check_gru_layer(xg, h0, w_hh, b_hh, lengths, reverse, op="gru_layer_backward")
    T, B = xg.shape[:2]
    _check_grads("gru_layer_backward", xg, dy=(dy, (T, B, h0.shape[1])), dh_n=(dh_n, tuple(h0.shape)))


def lstm_layer_backward_reference(dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr=None, lengths=None, reverse=False):
    """Plain PyTorch BPTT, one step at a time in float32 (not itself differentiable)."""
    check_lstm_layer_backward(dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr, lengths, reverse)
    T, B = xg.shape[:2]
    w = w_hh.float()
    wr = w_hr.float() if w_hr is not None else None
    # Forward again, keeping what each step's derivative needs.
    h, c = h0.float(), c0.float()
    saved = [None] * T
    for t in _steps(T, reverse):
        h_new, c_new, acts = _lstm_step(xg[t], h, c, w, wr)
        m = _active(lengths, t)
        saved[t] = (h, c, *acts, m)
        c, h = (c_new, h_new) if m is None else (torch.where(m, c_new, c), torch.where(m, h_new, h))
    dy = dy.float()
    dh, dc = dh_n.float(), dc_n.float()
    dxg = torch.empty(xg.shape, dtype=torch.float32, device=xg.device)
    dw = torch.zeros_like(w)
    dwr = torch.zeros_like(wr) if wr is not None else None
    for t in _steps(T, not reverse):
        h_prev, c_prev, i, f, g, o, tc, hh, m = saved[t]
        dh_new, dc_new = dh + dy[t], dc
        if m is not None:  # an inactive step passes the state (and its gradient) through
            dh_new, dc_new = torch.where(m, dh_new, 0.0), torch.where(m, dc, 0.0)
            dh_keep, dc_keep = torch.where(m, 0.0, dh), torch.where(m, 0.0, dc)
        if wr is not None:
            dwr += dh_new.t() @ hh
            dh_new = dh_new @ wr
        do = dh_new * tc
        dcs = dc_new + dh_new * o * (1 - tc * tc)
        dgates = torch.cat([dcs * g * i * (1 - i), dcs * c_prev * f * (1 - f), dcs * i * (1 - g * g),
                            do * o * (1 - o)], 1)
        dxg[t] = dgates
        dw += dgates.t() @ h_prev
        dh, dc = dgates @ w, dcs * f
        if m is not None:
            dh, dc = dh + dh_keep, dc + dc_keep
    return (dxg.to(xg.dtype), dh.to(h0.dtype), dc.to(c0.dtype), dw.to(w_hh.dtype),
            dwr.to(w_hr.dtype) if w_hr is not None else w_hh.new_empty(0))


def gru_layer_backward_reference(dy, dh_n, xg, h0, w_hh, b_hh=None, lengths=None, reverse=False):
    """Plain PyTorch BPTT, one step at a time in float32 (not itself differentiable)."""
    check_gru_layer_backward(dy, dh_n, xg, h0, w_hh, b_hh, lengths, reverse)
    T, B = xg.shape[:2]
    w = w_hh.float()
    b = b_hh.float() if b_hh is not None else None
    h = h0.float()
    saved = [None] * T
    for t in _steps(T, reverse):
        h_new, acts = _gru_step(xg[t], h, w, b)
        m = _active(lengths, t)
        saved[t] = (h, *acts, m)
        h = h_new if m is None else torch.where(m, h_new, h)
    dy = dy.float()
    dh = dh_n.float()
    dxg = torch.empty(xg.shape, dtype=torch.float32, device=xg.device)
    dw = torch.zeros_like(w)
    db = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device)
    for t in _steps(T, not reverse):
        h_prev, r, z, n, an, m = saved[t]
        dh_new = dh + dy[t]
        if m is not None:
            dh_new, dh_keep = torch.where(m, dh_new, 0.0), torch.where(m, 0.0, dh)
        dpn = dh_new * (1 - z) * (1 - n * n)          # d pre-activation of n
        dpr = dpn * an * r * (1 - r)
        dpz = dh_new * (h_prev - n) * z * (1 - z)
        dxg[t] = torch.cat([dpr, dpz, dpn], 1)
        da = torch.cat([dpr, dpz, dpn * r], 1)       # d (h @ w_hh^T + b_hh)
        dw += da.t() @ h_prev
        db += da.sum(0)
        dh = da @ w + dh_new * z
        if m is not None:
            dh = dh + dh_keep
    return (dxg.to(xg.dtype), dh.to(h0.dtype), dw.to(w_hh.dtype),
            db.to(b_hh.dtype) if b_hh is not None else w_hh.new_empty(0))


def _lstm_layer_backward_fake(dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr, lengths, reverse):
    check_lstm_layer_backward(dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr, lengths, reverse)
    return (xg.new_empty(xg.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape), w_hh.new_empty(w_hh.shape),
            w_hr.new_empty(w_hr.shape) if w_hr is not None else w_hh.new_empty(0))


def _gru_layer_backward_fake(dy, dh_n, xg, h0, w_hh, b_hh, lengths, reverse):
    check_gru_layer_backward(dy, dh_n, xg, h0, w_hh, b_hh, lengths, reverse)
    return (xg.new_empty(xg.shape), h0.new_empty(h0.shape), w_hh.new_empty(w_hh.shape),
            b_hh.new_empty(b_hh.shape) if b_hh is not None else w_hh.new_empty(0))


torch.library.register_fake("compress::lstm_layer_backward", _lstm_layer_backward_fake, lib=lib)
torch.library.register_fake("compress::gru_layer_backward", _gru_layer_backward_fake, lib=lib)


def _zeros_if_none(g, shape, like):
    return torch.zeros(shape, dtype=like.dtype, device=like.device) if g is None else g


def _lstm_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6])
    ctx.reverse = inputs[6]


def _lstm_backward(ctx, dy, dh_n, dc_n):
    xg, h0, c0, w_hh, w_hr, lengths = ctx.saved_tensors
    dy = _zeros_if_none(dy, (*xg.shape[:2], h0.shape[1]), xg)
    dh_n, dc_n = _zeros_if_none(dh_n, h0.shape, xg), _zeros_if_none(dc_n, c0.shape, xg)
    dxg, dh0, dc0, dw, dwr = _backend.dispatch("lstm_layer_backward", xg.device)(
        dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr, lengths, ctx.reverse)
    return dxg, dh0, dc0, dw, (dwr if w_hr is not None else None), None, None


def _gru_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])
    ctx.reverse = inputs[5]


def _gru_backward(ctx, dy, dh_n):
    xg, h0, w_hh, b_hh, lengths = ctx.saved_tensors
    dy = _zeros_if_none(dy, (*xg.shape[:2], h0.shape[1]), xg)
    dh_n = _zeros_if_none(dh_n, h0.shape, xg)
    dxg, dh0, dw, db = _backend.dispatch("gru_layer_backward", xg.device)(
        dy, dh_n, xg, h0, w_hh, b_hh, lengths, ctx.reverse)
    return dxg, dh0, dw, (db if b_hh is not None else None), None, None


# ---------------------------------------------------------------------------------------------
# Compressed recurrent weights (inference only: no autograd). Same recurrence, gate math, lengths
# and reverse semantics as lstm_layer / gru_layer; only how w_hh (and w_hr) is stored differs.
#
# lstm_layer_w8(xg, h0, c0, qw_hh, w_hh_scale, qw_hr, w_hr_scale, lengths, reverse) -> (y, h_n, c_n)
#   qw_hh int8 [4H, P] with w_hh_scale float32 [4H]: w_hh = qw_hh * w_hh_scale[:, None] (symmetric
#   per-row int8, activations stay float); qw_hr int8 [P, H] + w_hr_scale float32 [P], or both None.
# gru_layer_w8(xg, h0, qw_hh, w_hh_scale, b_hh, lengths, reverse) -> (y, h_n)
# lstm_layer_bsr(xg, h0, c0, crow, col, values, w_hr, lengths, reverse) -> (y, h_n, c_n)
#   w_hh [4H, P] block-sparse as compress.formats.sparse.BSR: crow int32 [4H/bn + 1], col int32
#   [nnz], values [nnz, bn, bk] in xg's dtype; bn divides H (a block row lies in one gate), the
#   last block column is zero-padded past P. w_hr dense [P, H] or None.
# gru_layer_bsr(xg, h0, crow, col, values, b_hh, lengths, reverse) -> (y, h_n)

lib.define("lstm_layer_w8(Tensor xg, Tensor h0, Tensor c0, Tensor qw_hh, Tensor w_hh_scale, Tensor? qw_hr, "
           "Tensor? w_hr_scale, Tensor? lengths, bool reverse) -> (Tensor, Tensor, Tensor)")
lib.define("gru_layer_w8(Tensor xg, Tensor h0, Tensor qw_hh, Tensor w_hh_scale, Tensor? b_hh, Tensor? lengths, "
           "bool reverse) -> (Tensor, Tensor)")
lib.define("lstm_layer_bsr(Tensor xg, Tensor h0, Tensor c0, Tensor crow, Tensor col, Tensor values, Tensor? w_hr, "
           "Tensor? lengths, bool reverse) -> (Tensor, Tensor, Tensor)")
lib.define("gru_layer_bsr(Tensor xg, Tensor h0, Tensor crow, Tensor col, Tensor values, Tensor? b_hh, "
           "Tensor? lengths, bool reverse) -> (Tensor, Tensor)")


def _check_w8(op, qname, q, sname, s, shape):
    _check_tensor(op, qname, q, (torch.int8,), 2)
    _check_tensor(op, sname, s, (torch.float32,), 1)
    _check_shape(op, qname, q, shape, "the float weight's shape")
    _check_shape(op, sname, s, (shape[0],), f"one scale per row of `{qname}`")


def _lstm_dims(op, xg, h0, w_hr_rows):
    _check_tensor(op, "xg", xg, _FLOAT_DTYPES, 3)
    _check_tensor(op, "h0", h0, (xg.dtype,), 2)
    if xg.shape[2] % 4:
        raise ValueError(f"{op}: expected `xg` to be [T, B, 4H] (4 gates), got last dim {xg.shape[2]}, "
                         f"not divisible by 4")
    H = xg.shape[2] // 4
    return H, (w_hr_rows if w_hr_rows is not None else H)


def _check_lstm_states(op, xg, h0, c0, H, P, lengths, reverse):
    _check_tensor(op, "c0", c0, (xg.dtype,), 2)
    B = xg.shape[1]
    _check_shape(op, "h0", h0, (B, P), f"[B, P] with B = xg.shape[1] = {B}")
    _check_shape(op, "c0", c0, (B, H), f"[B, H] with B = {B}, H = {H}")
    _check_lengths(op, lengths, B)
    if not isinstance(reverse, bool):
        raise TypeError(f"{op}: expected `reverse` to be a bool, got {type(reverse).__name__}")


def _check_gru_common(op, xg, h0, b_hh, lengths, reverse):
    _check_tensor(op, "xg", xg, _FLOAT_DTYPES, 3)
    _check_tensor(op, "h0", h0, (xg.dtype,), 2)
    if xg.shape[2] % 3:
        raise ValueError(f"{op}: expected `xg` to be [T, B, 3H] (3 gates), got last dim {xg.shape[2]}, "
                         f"not divisible by 3")
    H, B = xg.shape[2] // 3, xg.shape[1]
    if b_hh is not None:
        _check_tensor(op, "b_hh", b_hh, (xg.dtype,), 1)
        _check_shape(op, "b_hh", b_hh, (3 * H,), f"[3H] with H = {H}")
    _check_shape(op, "h0", h0, (B, H), f"[B, H] with B = xg.shape[1] = {B}")
    _check_lengths(op, lengths, B)
    if not isinstance(reverse, bool):
        raise TypeError(f"{op}: expected `reverse` to be a bool, got {type(reverse).__name__}")
    return H


def _check_bsr_weight(op, crow, col, values, dtype, rows, H, K):
    """BSR of a [rows, K] weight whose block rows must not straddle the H-row gates."""
    _check_tensor(op, "crow", crow, (torch.int32,), 1)
    _check_tensor(op, "col", col, (torch.int32,), 1)
    _check_tensor(op, "values", values, (dtype,), 3)
    bn, bk = values.shape[1:]
    if bn < 1 or bk < 1 or H % bn:
        raise ValueError(f"{op}: expected `values` blocks [nnz, bn, bk] with bn dividing H = {H} (a block row "
                         f"must lie within one gate), got {tuple(values.shape)}")
    _check_shape(op, "crow", crow, (rows // bn + 1,), f"one entry per block row of the [{rows}, {K}] weight, plus 1")
    _check_shape(op, "col", col, (values.shape[0],), "one block column per stored block")


def check_lstm_layer_w8(xg, h0, c0, qw_hh, w_hh_scale, qw_hr, w_hr_scale, lengths, reverse) -> None:
    op = "lstm_layer_w8"
    if (qw_hr is None) != (w_hr_scale is None):
        raise ValueError(f"{op}: expected `qw_hr` and `w_hr_scale` both given or both None")
    H, P = _lstm_dims(op, xg, h0, qw_hr.shape[0] if isinstance(qw_hr, Tensor) and qw_hr.dim() == 2 else None)
    _check_w8(op, "qw_hh", qw_hh, "w_hh_scale", w_hh_scale, (4 * H, P))
    if qw_hr is not None:
        _check_w8(op, "qw_hr", qw_hr, "w_hr_scale", w_hr_scale, (P, H))
    _check_lstm_states(op, xg, h0, c0, H, P, lengths, reverse)
    _check_same_device(op, "xg", xg, h0=h0, c0=c0, qw_hh=qw_hh, w_hh_scale=w_hh_scale, qw_hr=qw_hr,
                       w_hr_scale=w_hr_scale, lengths=lengths)


def check_gru_layer_w8(xg, h0, qw_hh, w_hh_scale, b_hh, lengths, reverse) -> None:
    op = "gru_layer_w8"
    H = _check_gru_common(op, xg, h0, b_hh, lengths, reverse)
    _check_w8(op, "qw_hh", qw_hh, "w_hh_scale", w_hh_scale, (3 * H, H))
    _check_same_device(op, "xg", xg, h0=h0, qw_hh=qw_hh, w_hh_scale=w_hh_scale, b_hh=b_hh, lengths=lengths)


def check_lstm_layer_bsr(xg, h0, c0, crow, col, values, w_hr, lengths, reverse) -> None:
    op = "lstm_layer_bsr"
    H, P = _lstm_dims(op, xg, h0, w_hr.shape[0] if isinstance(w_hr, Tensor) and w_hr.dim() == 2 else None)
    if w_hr is not None:
        _check_tensor(op, "w_hr", w_hr, (xg.dtype,), 2)
        _check_shape(op, "w_hr", w_hr, (P, H), f"[P, H] with H = xg.shape[2] / 4 = {H}")
    _check_bsr_weight(op, crow, col, values, xg.dtype, 4 * H, H, P)
    _check_lstm_states(op, xg, h0, c0, H, P, lengths, reverse)
    _check_same_device(op, "xg", xg, h0=h0, c0=c0, crow=crow, col=col, values=values, w_hr=w_hr, lengths=lengths)


def check_gru_layer_bsr(xg, h0, crow, col, values, b_hh, lengths, reverse) -> None:
    op = "gru_layer_bsr"
    H = _check_gru_common(op, xg, h0, b_hh, lengths, reverse)
    _check_bsr_weight(op, crow, col, values, xg.dtype, 3 * H, H, H)
    _check_same_device(op, "xg", xg, h0=h0, crow=crow, col=col, values=values, b_hh=b_hh, lengths=lengths)


def _dequant(q, scale, dtype):
    return None if q is None else (q.float() * scale[:, None]).to(dtype)


def _bsr_dense(crow, col, values, shape):
    from compress.formats.sparse import BSR, from_bsr
    return from_bsr(BSR(crow, col, values, shape))


def lstm_layer_w8_reference(xg, h0, c0, qw_hh, w_hh_scale, qw_hr=None, w_hr_scale=None, lengths=None, reverse=False):
    """Dequantize (in float32, the gate math's precision), then lstm_layer_reference."""
    check_lstm_layer_w8(xg, h0, c0, qw_hh, w_hh_scale, qw_hr, w_hr_scale, lengths, reverse)
    return _lstm_f32_weights(xg, h0, c0, _dequant(qw_hh, w_hh_scale, torch.float32),
                             _dequant(qw_hr, w_hr_scale, torch.float32), lengths, reverse)


def gru_layer_w8_reference(xg, h0, qw_hh, w_hh_scale, b_hh=None, lengths=None, reverse=False):
    check_gru_layer_w8(xg, h0, qw_hh, w_hh_scale, b_hh, lengths, reverse)
    return _gru_f32_weights(xg, h0, _dequant(qw_hh, w_hh_scale, torch.float32), b_hh, lengths, reverse)


def lstm_layer_bsr_reference(xg, h0, c0, crow, col, values, w_hr=None, lengths=None, reverse=False):
    """Expand the BSR weight to dense, then lstm_layer_reference."""
    check_lstm_layer_bsr(xg, h0, c0, crow, col, values, w_hr, lengths, reverse)
    w_hh = _bsr_dense(crow, col, values, (xg.shape[2], h0.shape[1]))
    return lstm_layer_reference(xg, h0, c0, w_hh, w_hr, lengths, reverse)


def gru_layer_bsr_reference(xg, h0, crow, col, values, b_hh=None, lengths=None, reverse=False):
    check_gru_layer_bsr(xg, h0, crow, col, values, b_hh, lengths, reverse)
    w_hh = _bsr_dense(crow, col, values, (xg.shape[2], h0.shape[1]))
    return gru_layer_reference(xg, h0, w_hh, b_hh, lengths, reverse)


def _lstm_f32_weights(xg, h0, c0, w_hh, w_hr, lengths, reverse):
    """lstm_layer_reference with float32 weights under xg/h0/c0 of any float dtype."""
    y, h, c = lstm_layer_reference(xg.float(), h0.float(), c0.float(), w_hh, w_hr, lengths, reverse)
    return y.to(xg.dtype), h.to(xg.dtype), c.to(xg.dtype)


def _gru_f32_weights(xg, h0, w_hh, b_hh, lengths, reverse):
    y, h = gru_layer_reference(xg.float(), h0.float(), w_hh, None if b_hh is None else b_hh.float(), lengths,
                               reverse)
    return y.to(xg.dtype), h.to(xg.dtype)


def _lstm_layer_w8_fake(xg, h0, c0, qw_hh, w_hh_scale, qw_hr, w_hr_scale, lengths, reverse):
    check_lstm_layer_w8(xg, h0, c0, qw_hh, w_hh_scale, qw_hr, w_hr_scale, lengths, reverse)
    return xg.new_empty((xg.shape[0], xg.shape[1], h0.shape[1])), h0.new_empty(h0.shape), c0.new_empty(c0.shape)


def _gru_layer_w8_fake(xg, h0, qw_hh, w_hh_scale, b_hh, lengths, reverse):
    check_gru_layer_w8(xg, h0, qw_hh, w_hh_scale, b_hh, lengths, reverse)
    return xg.new_empty((xg.shape[0], xg.shape[1], h0.shape[1])), h0.new_empty(h0.shape)


def _lstm_layer_bsr_fake(xg, h0, c0, crow, col, values, w_hr, lengths, reverse):
    check_lstm_layer_bsr(xg, h0, c0, crow, col, values, w_hr, lengths, reverse)
    return xg.new_empty((xg.shape[0], xg.shape[1], h0.shape[1])), h0.new_empty(h0.shape), c0.new_empty(c0.shape)


def _gru_layer_bsr_fake(xg, h0, crow, col, values, b_hh, lengths, reverse):
    check_gru_layer_bsr(xg, h0, crow, col, values, b_hh, lengths, reverse)
    return xg.new_empty((xg.shape[0], xg.shape[1], h0.shape[1])), h0.new_empty(h0.shape)


for _name, _fake in (("lstm_layer_w8", _lstm_layer_w8_fake), ("gru_layer_w8", _gru_layer_w8_fake),
                     ("lstm_layer_bsr", _lstm_layer_bsr_fake), ("gru_layer_bsr", _gru_layer_bsr_fake)):
    torch.library.register_fake(f"compress::{_name}", _fake, lib=lib)


# ---------------------------------------------------------------------------------------------
# Triton (opaque custom ops, see int8_mm_triton) and backend registration. The C++ CPU kernels
# (csrc/rnn/) register themselves for compress::lstm_layer / compress::gru_layer.

@torch.library.custom_op("compress::lstm_layer_triton", mutates_args=())
def lstm_layer_triton(xg: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                      lengths: Optional[Tensor], reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    check_lstm_layer(xg, h0, c0, w_hh, w_hr, lengths, reverse)
    from compress.triton_kernels.rnn import lstm_layer as launch
    return launch(xg, h0, c0, w_hh, w_hr, lengths, reverse)


@torch.library.custom_op("compress::gru_layer_triton", mutates_args=())
def gru_layer_triton(xg: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], lengths: Optional[Tensor],
                     reverse: bool) -> tuple[Tensor, Tensor]:
    check_gru_layer(xg, h0, w_hh, b_hh, lengths, reverse)
    from compress.triton_kernels.rnn import gru_layer as launch
    return launch(xg, h0, w_hh, b_hh, lengths, reverse)


lstm_layer_triton.register_fake(_lstm_layer_fake)
gru_layer_triton.register_fake(_gru_layer_fake)
for _name in ("compress::lstm_layer", "compress::lstm_layer_triton"):
    torch.library.register_autograd(_name, _lstm_backward, setup_context=_lstm_setup_context,
                                    lib=lib if _name == "compress::lstm_layer" else None)
for _name in ("compress::gru_layer", "compress::gru_layer_triton"):
    torch.library.register_autograd(_name, _gru_backward, setup_context=_gru_setup_context,
                                    lib=lib if _name == "compress::gru_layer" else None)

_backend.register_standard("lstm_layer", torch.ops.compress.lstm_layer_triton.default, lstm_layer_reference)
_backend.register_standard("gru_layer", torch.ops.compress.gru_layer_triton.default, gru_layer_reference)

# The backward ops: C++ CPU kernel (csrc/rnn/rnn_backward_cpu.cpp), CUDA kernel (csrc/rnn/rnn_backward.cu
# + rnn_backward_cuda.cpp: auto picks it for CUDA tensors where compress._C was built with its CUDA part); Triton
# kernels (triton_kernels/rnn.py) as opaque custom ops like the forward's.

@torch.library.custom_op("compress::lstm_layer_backward_triton", mutates_args=())
def lstm_layer_backward_triton(dy: Tensor, dh_n: Tensor, dc_n: Tensor, xg: Tensor, h0: Tensor, c0: Tensor,
                               w_hh: Tensor, w_hr: Optional[Tensor], lengths: Optional[Tensor],
                               reverse: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    check_lstm_layer_backward(dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr, lengths, reverse)
    from compress.triton_kernels.rnn import lstm_layer_backward as launch
    return launch(dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr, lengths, reverse)


@torch.library.custom_op("compress::gru_layer_backward_triton", mutates_args=())
def gru_layer_backward_triton(dy: Tensor, dh_n: Tensor, xg: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor],
                              lengths: Optional[Tensor], reverse: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    check_gru_layer_backward(dy, dh_n, xg, h0, w_hh, b_hh, lengths, reverse)
    from compress.triton_kernels.rnn import gru_layer_backward as launch
    return launch(dy, dh_n, xg, h0, w_hh, b_hh, lengths, reverse)


lstm_layer_backward_triton.register_fake(_lstm_layer_backward_fake)
gru_layer_backward_triton.register_fake(_gru_layer_backward_fake)
_backend.register_standard("lstm_layer_backward", torch.ops.compress.lstm_layer_backward_triton.default,
                           lstm_layer_backward_reference)
_backend.register_standard("gru_layer_backward", torch.ops.compress.gru_layer_backward_triton.default,
                           gru_layer_backward_reference)


# Compressed-weight variants (no autograd: inference only). Their C++ CPU / CUDA kernels register
# themselves for the schemas compress::lstm_layer_w8 etc.

@torch.library.custom_op("compress::lstm_layer_w8_triton", mutates_args=())
def lstm_layer_w8_triton(xg: Tensor, h0: Tensor, c0: Tensor, qw_hh: Tensor, w_hh_scale: Tensor,
                         qw_hr: Optional[Tensor], w_hr_scale: Optional[Tensor], lengths: Optional[Tensor],
                         reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    check_lstm_layer_w8(xg, h0, c0, qw_hh, w_hh_scale, qw_hr, w_hr_scale, lengths, reverse)
    from compress.triton_kernels.rnn import lstm_layer_w8 as launch
    return launch(xg, h0, c0, qw_hh, w_hh_scale, qw_hr, w_hr_scale, lengths, reverse)


@torch.library.custom_op("compress::gru_layer_w8_triton", mutates_args=())
def gru_layer_w8_triton(xg: Tensor, h0: Tensor, qw_hh: Tensor, w_hh_scale: Tensor, b_hh: Optional[Tensor],
                        lengths: Optional[Tensor], reverse: bool) -> tuple[Tensor, Tensor]:
    check_gru_layer_w8(xg, h0, qw_hh, w_hh_scale, b_hh, lengths, reverse)
    from compress.triton_kernels.rnn import gru_layer_w8 as launch
    return launch(xg, h0, qw_hh, w_hh_scale, b_hh, lengths, reverse)


@torch.library.custom_op("compress::lstm_layer_bsr_triton", mutates_args=())
def lstm_layer_bsr_triton(xg: Tensor, h0: Tensor, c0: Tensor, crow: Tensor, col: Tensor, values: Tensor,
                          w_hr: Optional[Tensor], lengths: Optional[Tensor],
                          reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    check_lstm_layer_bsr(xg, h0, c0, crow, col, values, w_hr, lengths, reverse)
    from compress.triton_kernels.rnn import lstm_layer_bsr as launch
    return launch(xg, h0, c0, crow, col, values, w_hr, lengths, reverse)


@torch.library.custom_op("compress::gru_layer_bsr_triton", mutates_args=())
def gru_layer_bsr_triton(xg: Tensor, h0: Tensor, crow: Tensor, col: Tensor, values: Tensor, b_hh: Optional[Tensor],
                         lengths: Optional[Tensor], reverse: bool) -> tuple[Tensor, Tensor]:
    check_gru_layer_bsr(xg, h0, crow, col, values, b_hh, lengths, reverse)
    from compress.triton_kernels.rnn import gru_layer_bsr as launch
    return launch(xg, h0, crow, col, values, b_hh, lengths, reverse)


lstm_layer_w8_triton.register_fake(_lstm_layer_w8_fake)
gru_layer_w8_triton.register_fake(_gru_layer_w8_fake)
lstm_layer_bsr_triton.register_fake(_lstm_layer_bsr_fake)
gru_layer_bsr_triton.register_fake(_gru_layer_bsr_fake)
_backend.register_standard("lstm_layer_w8", torch.ops.compress.lstm_layer_w8_triton.default, lstm_layer_w8_reference)
_backend.register_standard("gru_layer_w8", torch.ops.compress.gru_layer_w8_triton.default, gru_layer_w8_reference)
_backend.register_standard("lstm_layer_bsr", torch.ops.compress.lstm_layer_bsr_triton.default,
                           lstm_layer_bsr_reference)
_backend.register_standard("gru_layer_bsr", torch.ops.compress.gru_layer_bsr_triton.default, gru_layer_bsr_reference)


def lstm_layer(xg: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor] = None,
               lengths: Optional[Tensor] = None, reverse: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer and direction over a whole sequence: (y [T, B, P], h_n [B, P], c_n [B, H]).

    xg [T, B, 4H] = x @ W_ih^T + b_ih + b_hh; h0 [B, P]; c0 [B, H]; w_hh [4H, P]; w_hr [P, H] or
    None; lengths int64 [B] or None; reverse runs t = T-1 .. 0. Differentiable on every backend."""
    check_lstm_layer(xg, h0, c0, w_hh, w_hr, lengths, reverse)
    return _backend.dispatch("lstm_layer", xg.device)(xg, h0, c0, w_hh, w_hr, lengths, reverse)


def gru_layer(xg: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
              reverse: bool = False) -> tuple[Tensor, Tensor]:
    """One GRU layer and direction over a whole sequence: (y [T, B, H], h_n [B, H]).

    xg [T, B, 3H] = x @ W_ih^T + b_ih; h0 [B, H]; w_hh [3H, H]; b_hh [3H] or None; lengths int64
    [B] or None; reverse runs t = T-1 .. 0. Differentiable on every backend."""
    check_gru_layer(xg, h0, w_hh, b_hh, lengths, reverse)
    return _backend.dispatch("gru_layer", xg.device)(xg, h0, w_hh, b_hh, lengths, reverse)


def lstm_layer_backward(dy: Tensor, dh_n: Tensor, dc_n: Tensor, xg: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor,
                        w_hr: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
                        reverse: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dxg, dh0, dc0, dw_hh, dw_hr) of lstm_layer given those of (y, h_n, c_n); dw_hr is
    an empty [0] tensor when w_hr is None. What lstm_layer's autograd calls."""
    check_lstm_layer_backward(dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr, lengths, reverse)
    return _backend.dispatch("lstm_layer_backward", xg.device)(dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr, lengths,
                                                               reverse)


def gru_layer_backward(dy: Tensor, dh_n: Tensor, xg: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor] = None,
                       lengths: Optional[Tensor] = None,
                       reverse: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dxg, dh0, dw_hh, db_hh) of gru_layer given those of (y, h_n); db_hh is an empty [0]
    tensor when b_hh is None. What gru_layer's autograd calls."""
    check_gru_layer_backward(dy, dh_n, xg, h0, w_hh, b_hh, lengths, reverse)
    return _backend.dispatch("gru_layer_backward", xg.device)(dy, dh_n, xg, h0, w_hh, b_hh, lengths, reverse)


def lstm_layer_w8(xg: Tensor, h0: Tensor, c0: Tensor, qw_hh: Tensor, w_hh_scale: Tensor,
                  qw_hr: Optional[Tensor] = None, w_hr_scale: Optional[Tensor] = None,
                  lengths: Optional[Tensor] = None, reverse: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """lstm_layer with int8 recurrent (and projection) weights and float32 per-row scales. Inference only."""
    check_lstm_layer_w8(xg, h0, c0, qw_hh, w_hh_scale, qw_hr, w_hr_scale, lengths, reverse)
    return _backend.dispatch("lstm_layer_w8", xg.device)(xg, h0, c0, qw_hh, w_hh_scale, qw_hr, w_hr_scale, lengths,
                                                         reverse)


def gru_layer_w8(xg: Tensor, h0: Tensor, qw_hh: Tensor, w_hh_scale: Tensor, b_hh: Optional[Tensor] = None,
                 lengths: Optional[Tensor] = None, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """gru_layer with an int8 recurrent weight and float32 per-row scales. Inference only."""
    check_gru_layer_w8(xg, h0, qw_hh, w_hh_scale, b_hh, lengths, reverse)
    return _backend.dispatch("gru_layer_w8", xg.device)(xg, h0, qw_hh, w_hh_scale, b_hh, lengths, reverse)


def lstm_layer_bsr(xg: Tensor, h0: Tensor, c0: Tensor, crow: Tensor, col: Tensor, values: Tensor,
                   w_hr: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
                   reverse: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """lstm_layer with a block-sparse (BSR) recurrent weight. Inference only."""
    check_lstm_layer_bsr(xg, h0, c0, crow, col, values, w_hr, lengths, reverse)
    return _backend.dispatch("lstm_layer_bsr", xg.device)(xg, h0, c0, crow, col, values, w_hr, lengths, reverse)


def gru_layer_bsr(xg: Tensor, h0: Tensor, crow: Tensor, col: Tensor, values: Tensor, b_hh: Optional[Tensor] = None,
                  lengths: Optional[Tensor] = None, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """gru_layer with a block-sparse (BSR) recurrent weight. Inference only."""
    check_gru_layer_bsr(xg, h0, crow, col, values, b_hh, lengths, reverse)
    return _backend.dispatch("gru_layer_bsr", xg.device)(xg, h0, crow, col, values, b_hh, lengths, reverse)
