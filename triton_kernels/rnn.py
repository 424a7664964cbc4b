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

The backward (lstm_layer_backward / gru_layer_backward, dense weights) follows the C++ CPU one
(csrc/rnn/rnn_backward_cpu.cpp): 1. the forward again, its step kernels with SAVE keeping every
state and the activated gates in float32; 2. one fused backward step kernel per step, in the
opposite order (the recurrent product dG_{t+1} @ w_hh for the program's units, their gate
derivatives, dc); 3. the weight gradients as one torch GEMM over all steps.
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


# Helpers shared by the step kernels (inlined by Triton: they cost nothing at run time).

@triton.jit
def _tile(B, U, BLOCK_B: tl.constexpr, ROWS: tl.constexpr, BLOCK_U: tl.constexpr):
    """The program's tile of a [B, U] state, grid (cdiv(B, BLOCK_B), cdiv(U, ROWS)): batch rows
    offs_b (mask_b) and units offs_u = u0 + [0, BLOCK_U), of which the first ROWS are its own
    (mask_u). Returns (offs_b, mask_b, u0, offs_u, mask_u, mask), mask [BLOCK_B, BLOCK_U]."""
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    u0 = tl.program_id(1) * ROWS
    offs_u = u0 + tl.arange(0, BLOCK_U)
    mask_u = offs_u < U
    if ROWS < BLOCK_U:  # "bsr" with bn not a power of 2: the tile's last columns are the next program's
        mask_u = (tl.arange(0, BLOCK_U) < ROWS) & mask_u
    return offs_b, mask_b, u0, offs_u, mask_u, mask_b[:, None] & mask_u[None, :]


@triton.jit
def _at(ptr, t, B, W, offs_b, offs_u, GATES: tl.constexpr = 1):
    """Pointers to the tile's elements in step t of a row-major [T, B, GATES * W] tensor: with
    GATES > 1, those of gate 0 (gate k's are k * W further)."""
    return ptr + (t * B + offs_b[:, None]) * GATES * W + offs_u[None, :]


@triton.jit
def _load_gates(p, H, mask, GATES: tl.constexpr):
    """The blocks of GATES (3 or 4) gates at p, p + H, ... (0 where masked)."""
    g0 = tl.load(p, mask=mask, other=0.0)
    g1 = tl.load(p + H, mask=mask, other=0.0)
    g2 = tl.load(p + 2 * H, mask=mask, other=0.0)
    if GATES == 4:
        return g0, g1, g2, tl.load(p + 3 * H, mask=mask, other=0.0)
    else:
        return g0, g1, g2


@triton.jit
def _store_gates(p, H, mask, g0, g1, g2, g3=None):
    """Stores 3 gate blocks (4 with g3) at p, p + H, ..."""
    tl.store(p, g0, mask=mask)
    tl.store(p + H, g1, mask=mask)
    tl.store(p + 2 * H, g2, mask=mask)
    if g3 is not None:
        tl.store(p + 3 * H, g3, mask=mask)


@triton.jit
def _recurrent_gates(w_ptr, s_ptr, crow_ptr, col_ptr, u0, mask_u, h_ptr, offs_b, mask_b, H, K, GATES: tl.constexpr,
                     WEIGHT: tl.constexpr, ROWS: tl.constexpr, BK: tl.constexpr, NB: tl.constexpr,
                     BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    """h @ w^T (_rows_matvec, h [B, K]) for the program's units u0 + [0, BLOCK_U) of each of GATES
    (3 or 4) gates: weight rows k * H + u0 + [0, BLOCK_U) for gate k."""
    a0 = _rows_matvec(w_ptr, s_ptr, crow_ptr, col_ptr, u0, mask_u, h_ptr, offs_b, mask_b, K, WEIGHT, ROWS, BK,
                      NB, BLOCK_U, BLOCK_K)
    a1 = _rows_matvec(w_ptr, s_ptr, crow_ptr, col_ptr, H + u0, mask_u, h_ptr, offs_b, mask_b, K, WEIGHT, ROWS, BK,
                      NB, BLOCK_U, BLOCK_K)
    a2 = _rows_matvec(w_ptr, s_ptr, crow_ptr, col_ptr, 2 * H + u0, mask_u, h_ptr, offs_b, mask_b, K, WEIGHT, ROWS,
                      BK, NB, BLOCK_U, BLOCK_K)
    if GATES == 4:
        return a0, a1, a2, _rows_matvec(w_ptr, s_ptr, crow_ptr, col_ptr, 3 * H + u0, mask_u, h_ptr, offs_b, mask_b,
                                        K, WEIGHT, ROWS, BK, NB, BLOCK_U, BLOCK_K)
    else:
        return a0, a1, a2


@triton.jit
def _store_h(h_out, y, h_new, h_old, active, mask):
    """A step's new state at the pointers h_out and its output at y (those of y[t]): h_new on active
    rows; on the others h_old (the state before the step) and 0."""
    tl.store(h_out, tl.where(active, h_new, h_old), mask=mask)
    tl.store(y, tl.where(active, h_new, 0.0), mask=mask)


@triton.jit
def _lstm_step_kernel(xg_ptr, w_ptr, s_ptr, crow_ptr, col_ptr, len_ptr, h_ptr, c_ptr, h_out_ptr, c_out_ptr, hh_ptr,
                      y_ptr, act_ptr, t, B, H, P, WEIGHT: tl.constexpr, HAS_LEN: tl.constexpr,
                      HAS_PROJ: tl.constexpr, SAVE: tl.constexpr, BLOCK_B: tl.constexpr, ROWS: tl.constexpr,
                      BK: tl.constexpr, NB: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    # grid (cdiv(B, BLOCK_B), cdiv(H, ROWS)): BLOCK_B batch rows x ROWS hidden units, every gate.
    # c_out may be c (updated in place: each element has one owner program). SAVE (the backward's
    # recompute): also store the activated gates i, f, g, o at act[t] ([T, B, 4H] like xg).
    offs_b, mask_b, u0, offs_h, mask_h, mask = _tile(B, H, BLOCK_B, ROWS, BLOCK_H)
    gi, gf, gg, go = _recurrent_gates(w_ptr, s_ptr, crow_ptr, col_ptr, u0, mask_h, h_ptr, offs_b, mask_b, H, P, 4,
                                      WEIGHT, ROWS, BK, NB, BLOCK_H, BLOCK_K)
    xi, xf, xc, xo = _load_gates(_at(xg_ptr, t, B, H, offs_b, offs_h, 4), H, mask, 4)
    i = _sigmoid(gi + xi)
    f = _sigmoid(gf + xf)
    g = _tanh(gg + xc)
    o = _sigmoid(go + xo)
    bh = offs_b[:, None] * H + offs_h[None, :]
    c = tl.load(c_ptr + bh, mask=mask, other=0.0)
    c_new = f * c + i * g
    hh = o * _tanh(c_new)
    active = _active(len_ptr, t, offs_b, mask_b, HAS_LEN)
    tl.store(c_out_ptr + bh, tl.where(active, c_new, c), mask=mask)
    if SAVE:
        _store_gates(_at(act_ptr, t, B, H, offs_b, offs_h, 4), H, mask, i, f, g, o)
    if HAS_PROJ:
        tl.store(hh_ptr + bh, hh, mask=mask)
    else:  # P == H
        h_old = tl.load(h_ptr + bh, mask=mask, other=0.0)
        _store_h(h_out_ptr + bh, _at(y_ptr, t, B, P, offs_b, offs_h), hh, h_old, active, mask)


@triton.jit
def _lstm_proj_kernel(hh_ptr, wr_ptr, s_ptr, len_ptr, h_ptr, h_out_ptr, y_ptr, t, B, H, P, WEIGHT: tl.constexpr,
                      HAS_LEN: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    # grid (cdiv(B, BLOCK_B), cdiv(P, BLOCK_P)): h_t = hh_t @ w_hr^T (WEIGHT "dense" or "w8"), masked
    # like the step kernel.
    offs_b, mask_b, p0, offs_p, mask_p, mask = _tile(B, P, BLOCK_B, BLOCK_P, BLOCK_P)
    h_new = _rows_matvec(wr_ptr, s_ptr, wr_ptr, wr_ptr, p0, mask_p, hh_ptr, offs_b, mask_b, H, WEIGHT, BLOCK_P, 1,
                         1, BLOCK_P, BLOCK_K)
    active = _active(len_ptr, t, offs_b, mask_b, HAS_LEN)
    bp = offs_b[:, None] * P + offs_p[None, :]
    h_old = tl.load(h_ptr + bp, mask=mask, other=0.0)
    _store_h(h_out_ptr + bp, _at(y_ptr, t, B, P, offs_b, offs_p), h_new, h_old, active, mask)


@triton.jit
def _gru_step_kernel(xg_ptr, w_ptr, s_ptr, crow_ptr, col_ptr, b_ptr, len_ptr, h_ptr, h_out_ptr, y_ptr, act_ptr, t, B,
                     H, WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, SAVE: tl.constexpr,
                     BLOCK_B: tl.constexpr, ROWS: tl.constexpr, BK: tl.constexpr, NB: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    # grid (cdiv(B, BLOCK_B), cdiv(H, ROWS)). SAVE (the backward's recompute): also store r, z, n
    # and an (the n part of h @ w_hh^T + b_hh) at act[t] ([T, B, 4H]).
    offs_b, mask_b, u0, offs_h, mask_h, mask = _tile(B, H, BLOCK_B, ROWS, BLOCK_H)
    ar, az, an = _recurrent_gates(w_ptr, s_ptr, crow_ptr, col_ptr, u0, mask_h, h_ptr, offs_b, mask_b, H, H, 3,
                                  WEIGHT, ROWS, BK, NB, BLOCK_H, BLOCK_K)
    if HAS_BIAS:
        ar += tl.load(b_ptr + offs_h, mask=mask_h, other=0.0)[None, :]
        az += tl.load(b_ptr + H + offs_h, mask=mask_h, other=0.0)[None, :]
        an += tl.load(b_ptr + 2 * H + offs_h, mask=mask_h, other=0.0)[None, :]
    xr, xz, xn = _load_gates(_at(xg_ptr, t, B, H, offs_b, offs_h, 3), H, mask, 3)
    r = _sigmoid(xr + ar)
    z = _sigmoid(xz + az)
    n = _tanh(xn + r * an)
    bh = offs_b[:, None] * H + offs_h[None, :]
    h_old = tl.load(h_ptr + bh, mask=mask, other=0.0)
    h_new = (1.0 - z) * n + z * h_old
    active = _active(len_ptr, t, offs_b, mask_b, HAS_LEN)
    _store_h(h_out_ptr + bh, _at(y_ptr, t, B, H, offs_b, offs_h), h_new, h_old, active, mask)
    if SAVE:
        _store_gates(_at(act_ptr, t, B, H, offs_b, offs_h, 4), H, mask, r, z, n, an)


# Backward (compress.ops.lstm_layer_backward / gru_layer_backward): one step kernel per step, run
# over the steps in the opposite order of the forward's, after a recompute of the forward (the step
# kernels above with SAVE). A program owns BLOCK_B batch rows x BLOCK_H hidden units, every gate:
# the recurrent product dA_{t'} @ w_hh[:, units] (dA of the step handled just before, read by all
# programs), then its units' gate derivatives, written to dxg[t] (for the GRU also to da[t]). The
# carried gradients of h and c [B, U] are updated in place (each element has one owner program).
# An inactive step (lengths) has dG = 0 and passes the carried dh, dc through.

@triton.jit
def _dh_out(carry_ptr, dy_ptr, da_ptr, wt_ptr, len_ptr, t, offs_b, mask_b, u0, mask_u, B, U, K,
            HAS_PREV: tl.constexpr, HAS_LEN: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    """At step t, for batch rows offs_b and state units u0 + [0, BLOCK_U) of U: d, the gradient of
    the state after the step (the carry [B, U], plus with HAS_PREV dA_{t'} [B, K] @ w[:, units] with
    wt = w^T [U, K] row-major), and dh = d + dy[t] that of the step's output, 0 on inactive rows.
    Returns (d, dh, active), [BLOCK_B, BLOCK_U] float32 and [BLOCK_B, 1]."""
    offs_u = u0 + tl.arange(0, BLOCK_U)
    mask = mask_b[:, None] & mask_u[None, :]
    d = tl.load(carry_ptr + offs_b[:, None] * U + offs_u[None, :], mask=mask, other=0.0)
    if HAS_PREV:
        d += _rows_matvec(wt_ptr, wt_ptr, wt_ptr, wt_ptr, u0, mask_u, da_ptr, offs_b, mask_b, K, "dense", BLOCK_U, 1,
                          1, BLOCK_U, BLOCK_K)
    active = _active(len_ptr, t, offs_b, mask_b, HAS_LEN)
    dy = tl.load(_at(dy_ptr, t, B, U, offs_b, offs_u), mask=mask, other=0.0)
    return d, tl.where(active, d + dy, 0.0), active


@triton.jit
def _lstm_bwd_step_kernel(dy_ptr, wt_ptr, da_ptr, len_ptr, act_ptr, c_ptr, c_new_ptr, dhh_ptr, dh_ptr, dc_ptr,
                          dxg_ptr, t, B, H, HAS_PREV: tl.constexpr, HAS_LEN: tl.constexpr, HAS_PROJ: tl.constexpr,
                          BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    # grid (cdiv(B, BLOCK_B), cdiv(H, BLOCK_H)). act [T, B, 4H] the activated i, f, g, o; c / c_new
    # [B, H] the cell state before / after the step; da = dxg[t'] [B, 4H]. With dh the gradient of
    # o * tanh(c_t) and dcs = dc + dh * o * (1 - tanh(c_t)^2) that of c_t:
    #   dxg_t = [dcs * g * i(1-i), dcs * c_{t-1} * f(1-f), dcs * i * (1-g^2), dh * tanh(c_t) * o(1-o)]
    #   dc_{t-1} = dcs * f, dh_{t-1} = dxg_t @ w_hh (the next step's matvec)
    # HAS_PROJ: dh = dh_P @ w_hr is dhh [B, H], from _lstm_bwd_proj_kernel and a torch matmul.
    offs_b, mask_b, u0, offs_h, mask_h, mask = _tile(B, H, BLOCK_B, BLOCK_H, BLOCK_H)
    bh = offs_b[:, None] * H + offs_h[None, :]
    if HAS_PROJ:
        active = _active(len_ptr, t, offs_b, mask_b, HAS_LEN)
        dh = tl.load(dhh_ptr + bh, mask=mask, other=0.0)  # 0 on inactive rows
    else:
        d, dh, active = _dh_out(dh_ptr, dy_ptr, da_ptr, wt_ptr, len_ptr, t, offs_b, mask_b, u0, mask_h, B, H, 4 * H,
                                HAS_PREV, HAS_LEN, BLOCK_H, BLOCK_K)
        tl.store(dh_ptr + bh, tl.where(active, 0.0, d), mask=mask)
    i, f, g, o = _load_gates(_at(act_ptr, t, B, H, offs_b, offs_h, 4), H, mask, 4)
    tc = _tanh(tl.load(c_new_ptr + bh, mask=mask, other=0.0))
    dc = tl.load(dc_ptr + bh, mask=mask, other=0.0)
    dcs = tl.where(active, dc, 0.0) + dh * o * (1.0 - tc * tc)
    di = dcs * g * i * (1.0 - i)
    df = dcs * tl.load(c_ptr + bh, mask=mask, other=0.0) * f * (1.0 - f)
    dg = dcs * i * (1.0 - g * g)
    do = dh * tc * o * (1.0 - o)
    _store_gates(_at(dxg_ptr, t, B, H, offs_b, offs_h, 4), H, mask, di, df, dg, do)
    tl.store(dc_ptr + bh, tl.where(active, dcs * f, dc), mask=mask)


@triton.jit
def _lstm_bwd_proj_kernel(dy_ptr, wt_ptr, da_ptr, len_ptr, dh_ptr, dhp_ptr, t, B, P, K, HAS_PREV: tl.constexpr,
                          HAS_LEN: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    # grid (cdiv(B, BLOCK_B), cdiv(P, BLOCK_P)): with a projection the state is P wide; writes the
    # gradient of the step's output h_t = hh_t @ w_hr^T to dhp[t] ([T, B, P], 0 on inactive rows)
    # and carries dh [B, P] as _lstm_bwd_step_kernel does without one.
    offs_b, mask_b, p0, offs_p, mask_p, mask = _tile(B, P, BLOCK_B, BLOCK_P, BLOCK_P)
    d, dh, active = _dh_out(dh_ptr, dy_ptr, da_ptr, wt_ptr, len_ptr, t, offs_b, mask_b, p0, mask_p, B, P, K,
                            HAS_PREV, HAS_LEN, BLOCK_P, BLOCK_K)
    tl.store(dh_ptr + offs_b[:, None] * P + offs_p[None, :], tl.where(active, 0.0, d), mask=mask)
    tl.store(_at(dhp_ptr, t, B, P, offs_b, offs_p), dh, mask=mask)


@triton.jit
def _gru_bwd_step_kernel(dy_ptr, wt_ptr, da_ptr, len_ptr, act_ptr, h_ptr, dh_ptr, dxg_ptr, dag_ptr, t, B, H,
                         HAS_PREV: tl.constexpr, HAS_LEN: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    # grid (cdiv(B, BLOCK_B), cdiv(H, BLOCK_H)). act [T, B, 4H] r, z, n, an; h [B, H] the state
    # before the step; da = dag[t'] [B, 3H]. With a = h_{t-1} @ w_hh^T + b_hh and dh the gradient of h_t:
    #   dn = dh (1-z)(1-n^2), dr = dn * an * r(1-r), dz = dh (h_{t-1} - n) z(1-z)
    #   dxg_t = [dr, dz, dn], dag_t = da_t = [dr, dz, dn * r], dh_{t-1} = da_t @ w_hh + dh * z
    offs_b, mask_b, u0, offs_h, mask_h, mask = _tile(B, H, BLOCK_B, BLOCK_H, BLOCK_H)
    bh = offs_b[:, None] * H + offs_h[None, :]
    d, dh, active = _dh_out(dh_ptr, dy_ptr, da_ptr, wt_ptr, len_ptr, t, offs_b, mask_b, u0, mask_h, B, H, 3 * H,
                            HAS_PREV, HAS_LEN, BLOCK_H, BLOCK_K)
    r, z, n, an = _load_gates(_at(act_ptr, t, B, H, offs_b, offs_h, 4), H, mask, 4)
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dr = dn * an * r * (1.0 - r)
    dz = dh * (tl.load(h_ptr + bh, mask=mask, other=0.0) - n) * z * (1.0 - z)
    # the tile's offsets in dxg[t] and dag[t], computed once: two _at() calls give 8 more integer ops in PTX
    tbh = (t * B + offs_b[:, None]) * 3 * H + offs_h[None, :]
    _store_gates(dxg_ptr + tbh, H, mask, dr, dz, dn)
    _store_gates(dag_ptr + tbh, H, mask, dr, dz, dn * r)
    tl.store(dh_ptr + bh, tl.where(active, dh * z, d), mask=mask)


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


def _history(first, n):
    """n float32 states [n, *first.shape], the first a copy of `first`; the steps read slot s % n
    and write slot (s + 1) % n. The forward keeps two h (ping-pong) and one c (updated in place);
    the backward's recompute n = T + 1, so slot s holds the state before the s-th step."""
    hist = torch.empty((n, *first.shape), dtype=torch.float32, device=first.device)
    hist[0] = first
    return hist


def _lstm_run(xg, h0, c0, w: _Weight, wr: Optional[_Weight], lengths, reverse, save):
    """The T steps in float32: (y [T, B, P], hs, cs, act, hh). Without `save` hs is [2, B, P] and
    cs [1, B, H] (_history); with it hs [T + 1, B, P] and cs [T + 1, B, H] hold every state, act
    [T, B, 4H] the activated gates and hh [T, B, H] o * tanh(c) (with wr; else None)."""
    T, B, G = xg.shape
    H, P = G // 4, h0.shape[1]
    y = torch.empty((T, B, P), dtype=torch.float32, device=xg.device)
    hs, cs = _history(h0, T + 1 if save else 2), _history(c0, T + 1 if save else 1)
    act = torch.empty((T, B, G), dtype=torch.float32, device=xg.device) if save else y
    hh = torch.empty((T if save else 1, B, H), dtype=torch.float32, device=xg.device) if wr is not None else None
    if T == 0 or B == 0:
        return y, hs, cs, act, hh
    x = xg.float().contiguous()
    len_arg = lengths.contiguous() if lengths is not None else y
    tiles = w.tiles(B, H, P)
    grid = (triton.cdiv(B, tiles["BLOCK_B"]), triton.cdiv(H, tiles["ROWS"]))
    if wr is not None:
        pt = wr.tiles(B, P, H)
        proj_tiles = {"BLOCK_B": pt["BLOCK_B"], "BLOCK_P": pt["ROWS"], "BLOCK_K": pt["BLOCK_K"]}
        proj_grid = (triton.cdiv(B, pt["BLOCK_B"]), triton.cdiv(P, pt["ROWS"]))
    h, c = hs.unbind(0), cs.unbind(0)
    with on_device(xg):
        for s, t in enumerate(_steps(T, reverse)):
            src, dst = h[s % len(h)], h[(s + 1) % len(h)]
            hh_t = hh[t % len(hh)] if wr is not None else y
            _lstm_step_kernel[grid](x, *w.ptrs(), len_arg, src, c[s % len(c)], dst, c[(s + 1) % len(c)], hh_t, y, act,
                                    t, B, H, P, WEIGHT=w.kind, HAS_LEN=lengths is not None, HAS_PROJ=wr is not None,
                                    SAVE=save, **tiles, num_warps=4)
            if wr is not None:
                _lstm_proj_kernel[proj_grid](hh_t, *wr.ptrs()[:2], len_arg, src, dst, y, t, B, H, P, WEIGHT=wr.kind,
                                             HAS_LEN=lengths is not None, **proj_tiles, num_warps=4)
    return y, hs, cs, act, hh


def _lstm(xg, h0, c0, w: _Weight, wr: Optional[_Weight], lengths, reverse):
    y, hs, cs, _, _ = _lstm_run(xg, h0, c0, w, wr, lengths, reverse, save=False)
    dt = xg.dtype
    # A copy: hs[1] is a view into hs, and an op's output must start its own storage (as its fake).
    return y.to(dt), hs[xg.shape[0] % 2].to(dt, copy=True), cs[0].to(dt)


def _gru_run(xg, h0, w: _Weight, b_hh, lengths, reverse, save):
    """The T steps in float32: (y [T, B, H], hs, act) as _lstm_run; act [T, B, 4H] r, z, n, an."""
    T, B, G = xg.shape
    H = G // 3
    y = torch.empty((T, B, H), dtype=torch.float32, device=xg.device)
    hs = _history(h0, T + 1 if save else 2)
    act = torch.empty((T, B, 4 * H), dtype=torch.float32, device=xg.device) if save else y
    if T == 0 or B == 0:
        return y, hs, act
    x = xg.float().contiguous()
    bias = None if b_hh is None else b_hh.float().contiguous()
    lengths = None if lengths is None else lengths.contiguous()
    tiles = w.tiles(B, H, H)
    grid = (triton.cdiv(B, tiles["BLOCK_B"]), triton.cdiv(H, tiles["ROWS"]))
    h = hs.unbind(0)
    with on_device(xg):
        for s, t in enumerate(_steps(T, reverse)):
            _gru_step_kernel[grid](
                x, *w.ptrs(), bias if bias is not None else y, lengths if lengths is not None else y,
                h[s % len(h)], h[(s + 1) % len(h)], y, act, t, B, H, WEIGHT=w.kind, HAS_BIAS=bias is not None,
                HAS_LEN=lengths is not None, SAVE=save, **tiles, num_warps=4)
    return y, hs, act


def _gru(xg, h0, w: _Weight, b_hh, lengths, reverse):
    y, hs, _ = _gru_run(xg, h0, w, b_hh, lengths, reverse, save=False)
    dt = xg.dtype
    return y.to(dt), hs[xg.shape[0] % 2].to(dt, copy=True)  # a copy: see _lstm


def _by_time(hs, T, reverse):
    """The states before each step [T, B, P], by time t as xg (hs holds them in step order)."""
    return hs[:T].flip(0) if reverse else hs[:T]


def _bwd_tiles(w_t, B, U):
    """Tiles and grid of a backward kernel over [B, U] state units with w_t = w^T [U, K]."""
    tiles = _Weight("dense", w_t).tiles(B, U, w_t.shape[1])
    grid = (triton.cdiv(B, tiles["BLOCK_B"]), triton.cdiv(U, tiles["ROWS"]))
    return {"BLOCK_B": tiles["BLOCK_B"], "BLOCK_K": tiles["BLOCK_K"]}, tiles["ROWS"], grid


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


def lstm_layer_backward(dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr, lengths, reverse):
    T, B, G = xg.shape
    H, P = G // 4, h0.shape[1]
    wr = None if w_hr is None else _Weight.of("dense", w_hr)
    _, hs, cs, act, hh = _lstm_run(xg, h0, c0, _Weight.of("dense", w_hh), wr, lengths, reverse, save=True)
    dxg = torch.empty((T, B, G), dtype=torch.float32, device=xg.device)
    dh, dc = _state(dh_n), _state(dc_n)  # the carried gradients of h and c, updated in place
    dhp = torch.empty((T, B, P), dtype=torch.float32, device=xg.device) if wr is not None else None
    if T and B:
        dy = dy.to(torch.float32).contiguous()
        w_t = w_hh.t().contiguous()  # [P, 4H]: a program's units are rows, the matvec reads them whole
        len_arg = lengths.contiguous() if lengths is not None else dxg
        tiles, bh, grid = _bwd_tiles(w_t, B, H)
        if wr is not None:
            p_tiles, bp, p_grid = _bwd_tiles(w_t, B, P)
            dhh, wr32 = torch.empty((B, H), dtype=torch.float32, device=xg.device), w_hr.float()
        prev = None  # the time of the step handled last
        with on_device(xg):
            for s, t in reversed(list(enumerate(_steps(T, reverse)))):
                da = dxg if prev is None else dxg[prev]
                if wr is not None:
                    # The projection's product dh_P @ w_hr is a torch matmul per step (a kernel
                    # owning hidden units would need all P of dh_P: a second pass either way).
                    _lstm_bwd_proj_kernel[p_grid](dy, w_t, da, len_arg, dh, dhp, t, B, P, G, HAS_PREV=prev is not None,
                                                  HAS_LEN=lengths is not None, BLOCK_P=bp, **p_tiles, num_warps=4)
                    torch.mm(dhp[t], wr32, out=dhh)
                _lstm_bwd_step_kernel[grid](dy, w_t, da, len_arg, act, cs[s], cs[s + 1], dhh if wr is not None else dh,
                                            dh, dc, dxg, t, B, H, HAS_PREV=prev is not None,
                                            HAS_LEN=lengths is not None, HAS_PROJ=wr is not None, BLOCK_H=bh,
                                            **tiles, num_warps=4)
                prev = t
        dh = torch.addmm(dh, dxg[prev], w_hh.float())
    # The weight gradients as one GEMM over all steps: dW_hh = dG^T [4H, T*B] @ Hprev [T*B, P].
    dw = dxg.reshape(T * B, G).t() @ _by_time(hs, T, reverse).reshape(T * B, P)
    dt = xg.dtype
    dwr = dhp.reshape(T * B, P).t() @ hh.reshape(T * B, H) if wr is not None else None
    return (dxg.to(dt), dh.to(dt), dc.to(dt), dw.to(dt),
            dwr.to(dt) if dwr is not None else w_hh.new_empty(0))


def gru_layer_backward(dy, dh_n, xg, h0, w_hh, b_hh, lengths, reverse):
    T, B, G = xg.shape
    H = G // 3
    _, hs, act = _gru_run(xg, h0, _Weight.of("dense", w_hh), b_hh, lengths, reverse, save=True)
    dxg = torch.empty((T, B, G), dtype=torch.float32, device=xg.device)
    dag = torch.empty((T, B, G), dtype=torch.float32, device=xg.device)  # d (h @ w_hh^T + b_hh) per step
    dh = _state(dh_n)
    if T and B:
        dy = dy.to(torch.float32).contiguous()
        w_t = w_hh.t().contiguous()
        len_arg = lengths.contiguous() if lengths is not None else dxg
        tiles, bh, grid = _bwd_tiles(w_t, B, H)
        prev = None
        with on_device(xg):
            for s, t in reversed(list(enumerate(_steps(T, reverse)))):
                _gru_bwd_step_kernel[grid](dy, w_t, dag if prev is None else dag[prev], len_arg, act, hs[s], dh, dxg,
                                           dag, t, B, H, HAS_PREV=prev is not None, HAS_LEN=lengths is not None,
                                           BLOCK_H=bh, **tiles, num_warps=4)
                prev = t
        dh = torch.addmm(dh, dag[prev], w_hh.float())
    # dW_hh = dA^T [3H, T*B] @ Hprev [T*B, H] as one GEMM; db_hh its column sums.
    dag = dag.reshape(T * B, G)
    dw = dag.t() @ _by_time(hs, T, reverse).reshape(T * B, H)
    dt = xg.dtype
    return (dxg.to(dt), dh.to(dt), dw.to(dt),
            dag.sum(0).to(dt) if b_hh is not None else w_hh.new_empty(0))
