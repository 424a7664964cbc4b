"""LSTM / GRU recurrence in Triton (compress.ops.lstm_layer, gru_layer): one fused step kernel
(recurrent matmul, gates, nonlinearities, state update, lengths mask) launched once per timestep.

Shapes as compress.ops.rnn: T steps, B batch rows, H hidden units, P state width. The launcher
keeps h and c in float32 between steps (two h buffers, ping-pong: a program reads all of h_{t-1}
while others write h_t) and rounds y, h_n, c_n to the input dtype at the end.
"""
import torch
import triton
import triton.language as tl

from compress.ops._backend import triton_interpreted


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _matvec(w_ptr, h_row, offs_h, mask_h, K, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """sum_k w[offs_h, k] * h_row[k] for a [rows, K] row-major float32 w: [BLOCK_H] float32."""
    acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        hk = tl.load(h_row + offs_k, mask=mask_k, other=0.0)
        w = tl.load(w_ptr + offs_h[:, None] * K + offs_k[None, :], mask=mask_h[:, None] & mask_k[None, :], other=0.0)
        acc += tl.sum(w * hk[None, :], axis=1)
    return acc


@triton.jit
def _lstm_step_kernel(xg_ptr, w_ptr, len_ptr, h_ptr, c_ptr, h_out_ptr, hh_ptr, y_ptr, t, B, H, P,
                      HAS_LEN: tl.constexpr, HAS_PROJ: tl.constexpr, BLOCK_H: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    # grid (B, cdiv(H, BLOCK_H)); c is updated in place (each element has one owner program).
    b = tl.program_id(0).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    h_row = h_ptr + b * P
    x_row = xg_ptr + (t * B + b) * 4 * H
    gi = _matvec(w_ptr, h_row, offs_h, mask_h, P, BLOCK_H, BLOCK_K)
    gf = _matvec(w_ptr + H * P, h_row, offs_h, mask_h, P, BLOCK_H, BLOCK_K)
    gg = _matvec(w_ptr + 2 * H * P, h_row, offs_h, mask_h, P, BLOCK_H, BLOCK_K)
    go = _matvec(w_ptr + 3 * H * P, h_row, offs_h, mask_h, P, BLOCK_H, BLOCK_K)
    i = _sigmoid(gi + tl.load(x_row + offs_h, mask=mask_h, other=0.0))
    f = _sigmoid(gf + tl.load(x_row + H + offs_h, mask=mask_h, other=0.0))
    g = _tanh(gg + tl.load(x_row + 2 * H + offs_h, mask=mask_h, other=0.0))
    o = _sigmoid(go + tl.load(x_row + 3 * H + offs_h, mask=mask_h, other=0.0))
    c = tl.load(c_ptr + b * H + offs_h, mask=mask_h, other=0.0)
    c_new = f * c + i * g
    hh = o * _tanh(c_new)
    if HAS_LEN:
        active = t < tl.load(len_ptr + b)
    else:
        active = t >= 0
    tl.store(c_ptr + b * H + offs_h, tl.where(active, c_new, c), mask=mask_h)
    if HAS_PROJ:
        tl.store(hh_ptr + b * H + offs_h, hh, mask=mask_h)
    else:  # P == H
        h_old = tl.load(h_row + offs_h, mask=mask_h, other=0.0)
        tl.store(h_out_ptr + b * P + offs_h, tl.where(active, hh, h_old), mask=mask_h)
        tl.store(y_ptr + (t * B + b) * P + offs_h, tl.where(active, hh, 0.0), mask=mask_h)


@triton.jit
def _lstm_proj_kernel(hh_ptr, wr_ptr, len_ptr, h_ptr, h_out_ptr, y_ptr, t, B, H, P,
                      HAS_LEN: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    # grid (B, cdiv(P, BLOCK_P)): h_t = hh_t @ w_hr^T, masked like the step kernel.
    b = tl.program_id(0).to(tl.int64)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    h_new = _matvec(wr_ptr, hh_ptr + b * H, offs_p, mask_p, H, BLOCK_P, BLOCK_K)
    if HAS_LEN:
        active = t < tl.load(len_ptr + b)
    else:
        active = t >= 0
    h_old = tl.load(h_ptr + b * P + offs_p, mask=mask_p, other=0.0)
    tl.store(h_out_ptr + b * P + offs_p, tl.where(active, h_new, h_old), mask=mask_p)
    tl.store(y_ptr + (t * B + b) * P + offs_p, tl.where(active, h_new, 0.0), mask=mask_p)


@triton.jit
def _gru_step_kernel(xg_ptr, w_ptr, b_ptr, len_ptr, h_ptr, h_out_ptr, y_ptr, t, B, H,
                     HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, BLOCK_H: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    h_row = h_ptr + b * H
    x_row = xg_ptr + (t * B + b) * 3 * H
    ar = _matvec(w_ptr, h_row, offs_h, mask_h, H, BLOCK_H, BLOCK_K)
    az = _matvec(w_ptr + H * H, h_row, offs_h, mask_h, H, BLOCK_H, BLOCK_K)
    an = _matvec(w_ptr + 2 * H * H, h_row, offs_h, mask_h, H, BLOCK_H, BLOCK_K)
    if HAS_BIAS:
        ar += tl.load(b_ptr + offs_h, mask=mask_h, other=0.0)
        az += tl.load(b_ptr + H + offs_h, mask=mask_h, other=0.0)
        an += tl.load(b_ptr + 2 * H + offs_h, mask=mask_h, other=0.0)
    r = _sigmoid(tl.load(x_row + offs_h, mask=mask_h, other=0.0) + ar)
    z = _sigmoid(tl.load(x_row + H + offs_h, mask=mask_h, other=0.0) + az)
    n = _tanh(tl.load(x_row + 2 * H + offs_h, mask=mask_h, other=0.0) + r * an)
    h_old = tl.load(h_row + offs_h, mask=mask_h, other=0.0)
    h_new = (1.0 - z) * n + z * h_old
    if HAS_LEN:
        active = t < tl.load(len_ptr + b)
    else:
        active = t >= 0
    tl.store(h_out_ptr + b * H + offs_h, tl.where(active, h_new, h_old), mask=mask_h)
    tl.store(y_ptr + (t * B + b) * H + offs_h, tl.where(active, h_new, 0.0), mask=mask_h)


def _blocks(n):
    # Small tiles under the interpreter (numpy cost grows with the tile), wider on the GPU.
    cap = 16 if triton_interpreted() else 64
    return min(triton.next_power_of_2(max(n, 1)), cap)


def _f32(t):
    return None if t is None else t.float().contiguous()


def lstm_layer(xg, h0, c0, w_hh, w_hr, lengths, reverse):
    """Checked by the caller (compress.ops.lstm_layer_triton)."""
    T, B, G = xg.shape
    H, P = G // 4, h0.shape[1]
    dt = xg.dtype
    y = torch.empty((T, B, P), dtype=torch.float32, device=xg.device)
    h = [h0.float().clone(), torch.empty((B, P), dtype=torch.float32, device=xg.device)]
    c = c0.float().clone()
    if T == 0 or B == 0:
        return y.to(dt), h[0].to(dt), c.to(dt)
    x, w, wr, lens = _f32(xg), _f32(w_hh), _f32(w_hr), lengths
    hh = torch.empty((B, H), dtype=torch.float32, device=xg.device) if wr is not None else y
    len_arg = lens if lens is not None else y
    bh, bk, bp = _blocks(H), _blocks(P), _blocks(P)
    with torch.cuda.device(xg.device) if xg.is_cuda else _nullcontext():
        for i, t in enumerate(range(T - 1, -1, -1) if reverse else range(T)):
            src, dst = h[i % 2], h[(i + 1) % 2]
            _lstm_step_kernel[(B, triton.cdiv(H, bh))](x, w, len_arg, src, c, dst, hh, y, t, B, H, P,
                                                       HAS_LEN=lens is not None, HAS_PROJ=wr is not None,
                                                       BLOCK_H=bh, BLOCK_K=bk, num_warps=4)
            if wr is not None:
                _lstm_proj_kernel[(B, triton.cdiv(P, bp))](hh, wr, len_arg, src, dst, y, t, B, H, P,
                                                           HAS_LEN=lens is not None, BLOCK_P=bp,
                                                           BLOCK_K=_blocks(H), num_warps=4)
    return y.to(dt), h[T % 2].to(dt), c.to(dt)


def gru_layer(xg, h0, w_hh, b_hh, lengths, reverse):
    """Checked by the caller (compress.ops.gru_layer_triton)."""
    T, B, G = xg.shape
    H = G // 3
    dt = xg.dtype
    y = torch.empty((T, B, H), dtype=torch.float32, device=xg.device)
    h = [h0.float().clone(), torch.empty((B, H), dtype=torch.float32, device=xg.device)]
    if T == 0 or B == 0:
        return y.to(dt), h[0].to(dt)
    x, w, bias = _f32(xg), _f32(w_hh), _f32(b_hh)
    bh = _blocks(H)
    with torch.cuda.device(xg.device) if xg.is_cuda else _nullcontext():
        for i, t in enumerate(range(T - 1, -1, -1) if reverse else range(T)):
            _gru_step_kernel[(B, triton.cdiv(H, bh))](x, w, bias if bias is not None else y,
                                                      lengths if lengths is not None else y,
                                                      h[i % 2], h[(i + 1) % 2], y, t, B, H,
                                                      HAS_BIAS=bias is not None, HAS_LEN=lengths is not None,
                                                      BLOCK_H=bh, BLOCK_K=bh, num_warps=4)
    return y.to(dt), h[T % 2].to(dt)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
