"""Block-sparse (BSR) linear in Triton (compress.ops.bsr_linear): y = x @ W^T + bias.

One program per (block row of W, BLOCK_M rows of x): it walks only the stored blocks of its block
row (crow/col, compress.formats.sparse), so the work is proportional to the nonzero blocks.
Blocks of any shape: tiles are padded to powers of two >= 16 and masked.
"""
import torch
import triton
import triton.language as tl

from compress.ops._backend import triton_interpreted
from compress.triton_kernels._launch import dot_in_f32, linear_out, on_device


@triton.jit
def _bsr_linear_kernel(x_ptr, crow_ptr, col_ptr, v_ptr, bias_ptr, out_ptr, M, N, K, NNZ,
                       stride_xm, stride_xk, stride_om, BN: tl.constexpr, BK: tl.constexpr,
                       HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
                       BLOCK_M: tl.constexpr, TILE_N: tl.constexpr, TILE_K: tl.constexpr):
    r = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tn = tl.arange(0, TILE_N)
    tk = tl.arange(0, TILE_K)
    # 64-bit block offsets: nnz_blocks * BN * BK can pass 2^31. crow and col are not validated on this
    # path: clamp them so a malformed index gives a wrong result, never an out-of-bounds access.
    start = tl.minimum(tl.maximum(tl.load(crow_ptr + r).to(tl.int64), 0), NNZ)
    end = tl.minimum(tl.maximum(tl.load(crow_ptr + r + 1).to(tl.int64), start), NNZ)
    acc = tl.zeros((BLOCK_M, TILE_N), dtype=tl.float32)
    for j in range(start, end):
        c = tl.load(col_ptr + j).to(tl.int64)
        kk = c * BK + tk
        x = tl.load(x_ptr + rm[:, None].to(tl.int64) * stride_xm + kk[None, :] * stride_xk,
                    mask=(rm[:, None] < M) & (tk[None, :] < BK) & (kk[None, :] < K) & (kk[None, :] >= 0),
                    other=0.0)
        # block j is [BN, BK] row-major; load its transpose [TILE_K, TILE_N]
        v = tl.load(v_ptr + j * (BN * BK) + tn[None, :] * BK + tk[:, None],
                    mask=(tn[None, :] < BN) & (tk[:, None] < BK), other=0.0)
        if DOT_F32:
            acc += tl.dot(x.to(tl.float32), v.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(x, v)
    rn = r * BN + tn
    n_ok = (tn < BN) & (rn < N)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0)[None, :]
    tl.store(out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & n_ok[None, :])


def bsr_linear(x, crow, col, values, out_features, bias) -> torch.Tensor:
    """x [M, K] (any strides); crow/col/values as compress.formats.BSR; -> [M, out_features] in x.dtype."""
    M, K = x.shape
    N = out_features
    out, bias, done = linear_out(x, N, bias)
    if done:
        return out
    bn, bk = values.shape[1], values.shape[2]
    crow, col, values = crow.contiguous(), col.contiguous(), values.contiguous()
    block_m = 16 if M <= 16 or triton_interpreted() else 64
    grid = (crow.shape[0] - 1, triton.cdiv(M, block_m))
    flags = {"HAS_BIAS": bias is not None, "DOT_F32": dot_in_f32(x)}
    with on_device(x):
        _bsr_linear_kernel[grid](x, crow, col, values, bias if bias is not None else values, out, M, N, K,
                                 col.shape[0], x.stride(0), x.stride(1), out.stride(0), BN=bn, BK=bk, **flags, BLOCK_M=block_m,
                                 TILE_N=max(16, triton.next_power_of_2(bn)), TILE_K=max(16, triton.next_power_of_2(bk)))
    return out
