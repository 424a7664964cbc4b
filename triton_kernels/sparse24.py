"""2:4-sparse linear in Triton (compress.ops.sparse24_linear): y = x @ W^T + bias.

The packed weight (values [N, K/2] + 2-bit positions, compress.formats.sparse) is expanded to a
dense W^T tile in registers and fed to tl.dot, so the weight crosses memory at 1.25 bytes per
bf16 element instead of 2. (Triton has no sparse tensor-core instruction; the CUDA backend uses mma.sp.)
"""
import torch
import triton
import triton.language as tl

from compress.ops._backend import triton_interpreted
from compress.triton_kernels._launch import dot_in_f32, linear_out, on_device


def _configs():
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_stages=s, num_warps=w)
            for bm, bn, bk, s, w in [(16, 64, 128, 4, 4), (16, 128, 64, 4, 4), (32, 64, 128, 4, 4),
                                     (64, 128, 64, 4, 4), (128, 128, 64, 3, 8), (128, 256, 64, 3, 8)]]


@triton.autotune(configs=_configs(), key=["M_BUCKET", "N", "K"])
@triton.jit
def _sparse24_linear_kernel(x_ptr, v_ptr, meta_ptr, bias_ptr, out_ptr, M, N, K, M_BUCKET,
                            stride_xm, stride_xk, stride_vn, stride_mn, stride_om,
                            HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    n_ok = rn[None, :] < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < K
        x = tl.load(x_ptr + rm[:, None].to(tl.int64) * stride_xm + kk[None, :] * stride_xk,
                    mask=(rm[:, None] < M) & k_ok[None, :], other=0.0)
        grp = kk // 4
        pos = (kk % 4)[:, None]
        wmask = k_ok[:, None] & n_ok
        meta = tl.load(meta_ptr + rn[None, :].to(tl.int64) * stride_mn + grp[:, None], mask=wmask, other=0).to(tl.int32)
        v_row = v_ptr + rn[None, :].to(tl.int64) * stride_vn + 2 * grp[:, None]
        v0 = tl.load(v_row, mask=wmask, other=0.0)
        v1 = tl.load(v_row + 1, mask=wmask, other=0.0)
        # [BLOCK_K, BLOCK_N] of W^T; a (malformed) byte naming one position twice adds both, as the reference
        # (in float32: one rounding, and Triton 3.8's interpreter adds bfloat16 wrongly)
        w = tl.where((meta & 3) == pos, v0.to(tl.float32), 0.0) + tl.where(((meta >> 2) & 3) == pos, v1.to(tl.float32), 0.0)
        if DOT_F32:
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(x, w.to(x.dtype))
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & n_ok)


def sparse24_linear(x, values, meta, bias) -> torch.Tensor:
    """x [M, K] (any strides), values [N, K/2], meta uint8 [N, K/4], bias [N] or None -> [M, N] in x.dtype."""
    M, K = x.shape
    N = values.shape[0]
    out, bias, done = linear_out(x, N, bias)
    if done:
        return out
    values, meta = values.contiguous(), meta.contiguous()
    args = (x, values, meta, bias if bias is not None else values, out, M, N, K, triton.next_power_of_2(M),
            x.stride(0), x.stride(1), values.stride(0), meta.stride(0), out.stride(0))
    flags = {"HAS_BIAS": bias is not None, "DOT_F32": dot_in_f32(x)}

    def grid(meta_):
        return (triton.cdiv(N, meta_["BLOCK_N"]), triton.cdiv(M, meta_["BLOCK_M"]))

    if triton_interpreted():
        _sparse24_linear_kernel.fn[grid](*args, **flags, BLOCK_M=16, BLOCK_N=16, BLOCK_K=32)
    else:
        with on_device(x):
            _sparse24_linear_kernel[grid](*args, **flags)
    return out
