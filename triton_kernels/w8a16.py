"""Weight-only int8 linear in Triton (compress.ops.w8a16_linear):
out[M, N] = (x[M, K] @ float(qw[N, K])^T) * w_scale[N] + bias[N], float32 accumulation, in x.dtype.

The int8 weight tile is converted to x's dtype in registers (exact: |q| <= 128 fits bf16/fp16), so
the weight crosses memory once at 1 byte per element: the point for small M, where reading the
weight is the whole cost. float32 x uses IEEE float32 dots (no TF32) to match the reference.
"""
import torch
import triton
import triton.language as tl

from compress.ops._backend import triton_interpreted
from compress.triton_kernels._launch import dot_in_f32, linear_out, on_device


def _configs():
    out = []
    for bm, bn, bk, stages, warps in [
        (16, 64, 256, 4, 4), (16, 128, 128, 4, 4), (16, 32, 512, 3, 4), (32, 64, 256, 4, 4),
        (64, 128, 64, 4, 4), (128, 128, 64, 3, 8), (128, 256, 64, 3, 8),
    ]:
        out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_stages=stages, num_warps=warps))
    return out


@triton.autotune(configs=_configs(), key=["M_BUCKET", "N", "K"])
@triton.jit
def _w8a16_linear_kernel(x_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr, M, N, K, M_BUCKET,
                         stride_xm, stride_xk, stride_wn, stride_wk, stride_om,
                         HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)  # N tiles vary fastest: programs running together share x rows
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rm[:, None].to(tl.int64) * stride_xm + rk[None, :] * stride_xk
    w_ptrs = w_ptr + rn[None, :].to(tl.int64) * stride_wn + rk[:, None] * stride_wk  # [BLOCK_K, BLOCK_N] of qw^T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        x = tl.load(x_ptrs, mask=(rm[:, None] < M) & (rk[None, :] < k_left), other=0.0)
        w = tl.load(w_ptrs, mask=(rk[:, None] < k_left) & (rn[None, :] < N), other=0)
        if DOT_F32:
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(x, w.to(x.dtype))
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    out = acc * tl.load(w_scale_ptr + rn, mask=rn < N, other=0.0)[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    o_ptrs = out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


_INTERPRET_META = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}


def w8a16_linear(x, qw, w_scale, bias) -> torch.Tensor:
    """x float [M, K], qw int8 [N, K], w_scale float32 [N], bias [N] or None -> [M, N] in x.dtype.
    Any strides. Checked by the caller (compress.ops)."""
    M, K = x.shape
    N = qw.shape[0]
    out, bias, _ = linear_out(x, N, bias)
    if out.numel() == 0:
        return out
    # K == 0 runs too: the epilogue scales the zero accumulator (0 * inf = NaN, as the reference).
    w_scale = w_scale.contiguous()

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(M, meta["BLOCK_M"]))

    args = (x, qw, w_scale, bias if bias is not None else w_scale, out, M, N, K, triton.next_power_of_2(M),
            x.stride(0), x.stride(1), qw.stride(0), qw.stride(1), out.stride(0))
    flags = {"HAS_BIAS": bias is not None, "DOT_F32": dot_in_f32(x)}
    if triton_interpreted():
        _w8a16_linear_kernel.fn[grid](*args, **flags, **_INTERPRET_META)
    else:
        with on_device(x):
            _w8a16_linear_kernel[grid](*args, **flags)
    return out
