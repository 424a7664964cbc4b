"""Per-row symmetric int8 quantization in Triton (compress.ops.quantize_per_token).

Bit-identical to the reference: the same float32 operations (absmax, IEEE division by 127, IEEE
division of x by the scale, round half to even, clamp to [-127, 127]).
"""
import torch
import triton
import triton.language as tl

from compress.ops._backend import triton_interpreted
from compress.triton_kernels._launch import on_device

# Adding then subtracting 1.5 * 2^23 rounds a float32 |v| < 2^22 to the nearest integer, ties to
# even (the FPU's rounding mode), exactly like torch.round; portable to the interpreter, unlike libdevice.
_RINT_MAGIC = 12582912.0


@triton.jit
def _absmax_step(amax, nan, x):
    """Pass 1 of the per-row quantization, one tile: the running per-lane max |x| and NaN flag."""
    return tl.maximum(amax, tl.abs(x)), tl.maximum(nan, (x != x).to(tl.int32))


@triton.jit
def _row_scale(amax, nan, AXIS: tl.constexpr):
    """The rows' scales from per-lane |x| maxima `amax` and NaN flags `nan` (int32, 1 where a lane
    saw a NaN), reduced over AXIS: absmax / 127 (IEEE division), 1.0 for a zero or NaN absmax."""
    absmax = tl.max(amax, axis=AXIS)
    return tl.where((absmax > 0) & (tl.max(nan, axis=AXIS) == 0), tl.div_rn(absmax, 127.0), 1.0)


@triton.jit
def _quantize(x, scale):
    """clamp(round_half_to_even(x / scale), -127, 127) as float32 (IEEE division; NaN -> 0)."""
    v = tl.div_rn(x, scale)
    v = (v + _RINT_MAGIC) - _RINT_MAGIC
    v = tl.where(v != v, 0.0, v)  # NaN -> 0, as the reference
    return tl.minimum(tl.maximum(v, -127.0), 127.0)


@triton.jit
def _quantize_per_token_kernel(x_ptr, q_ptr, scale_ptr, K, stride_xr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xr
    q_row = q_ptr + row * K
    offs = tl.arange(0, BLOCK_K)
    # Pass 1: absmax over the row, and whether it holds a NaN (then the reference's scale is 1.0).
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    nan = tl.zeros((BLOCK_K,), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        amax, nan = _absmax_step(amax, nan, x)
    scale = _row_scale(amax, nan, 0)
    tl.store(scale_ptr + row, scale)
    # Pass 2: quantize (the row is back from L1/L2).
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        tl.store(q_row + k0 + offs, _quantize(x, scale).to(tl.int8), mask=k0 + offs < K)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x float [..., K] -> (q int8 [..., K] contiguous, scale float32 [...]). Checked by the caller."""
    K = x.shape[-1]
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scale = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    if scale.numel() == 0:
        return q, scale
    if K == 0:
        return q, scale.fill_(1.0)
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    R = x2.shape[0]
    block = min(triton.next_power_of_2(K), 16 if triton_interpreted() else 4096)
    with on_device(x):
        _quantize_per_token_kernel[(R,)](x2, q, scale, K, x2.stride(0), BLOCK_K=block,
                                         num_warps=4 if block >= 1024 else 1)
    return q, scale
