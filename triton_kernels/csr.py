"""Unstructured-sparse (CSR) linear in Triton (compress.ops.csr_linear), for small M:
y[m, n] = sum_j values[j] * x[m, col[j]] over row n's stored weights, + bias[n].

One program per (weight row n, BLOCK_M rows of x): the row's nonzeros stream in BLOCK_NNZ at a time
and gather the matching x columns (x is small and stays in cache at small M). Work and weight
traffic scale with the nonzeros; at large M a dense or block format wins (sparsify chooses).
"""
import torch
import triton
import triton.language as tl

from compress.ops._backend import triton_interpreted
from compress.triton_kernels._launch import linear_out, on_device


@triton.jit
def _csr_linear_kernel(x_ptr, crow_ptr, col_ptr, v_ptr, bias_ptr, out_ptr, M, N, K, NNZ,
                       stride_xm, stride_xk, stride_om, HAS_BIAS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_NNZ: tl.constexpr):
    n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = rm < M
    # crow and col are not validated on this path: clamp them so a malformed index gives a wrong
    # result, never an out-of-bounds access
    start = tl.minimum(tl.maximum(tl.load(crow_ptr + n), 0), NNZ)
    end = tl.minimum(tl.maximum(tl.load(crow_ptr + n + 1), start), NNZ)
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for j0 in range(start, end, BLOCK_NNZ):
        jj = j0 + tl.arange(0, BLOCK_NNZ)
        c = tl.load(col_ptr + jj, mask=jj < end, other=0)
        ok = (jj < end) & (c >= 0) & (c < K)
        v = tl.load(v_ptr + jj, mask=ok, other=0.0).to(tl.float32)
        xg = tl.load(x_ptr + rm[:, None].to(tl.int64) * stride_xm + c[None, :].to(tl.int64) * stride_xk,
                     mask=m_ok[:, None] & ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(xg * v[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n)
    tl.store(out_ptr + rm.to(tl.int64) * stride_om + n, acc.to(out_ptr.dtype.element_ty), mask=m_ok)


def csr_linear(x, crow, col, values, out_features, bias) -> torch.Tensor:
    """x [M, K] (any strides); crow/col/values as compress.formats.CSR; -> [M, out_features] in x.dtype."""
    M, K = x.shape
    N = out_features
    out, bias, done = linear_out(x, N, bias)
    if done:
        return out
    crow, col, values = crow.contiguous(), col.contiguous(), values.contiguous()
    block_m = min(16, triton.next_power_of_2(M))
    grid = (N, triton.cdiv(M, block_m))
    with on_device(x):
        _csr_linear_kernel[grid](x, crow, col, values, bias if bias is not None else values, out, M, N, K,
                                 col.shape[0], x.stride(0), x.stride(1), out.stride(0), HAS_BIAS=bias is not None,
                                 BLOCK_M=block_m, BLOCK_NNZ=16 if triton_interpreted() else 128)
    return out
