"""int8 x int8 GEMMs in Triton, exact int32 accumulation: C[M, N] = A[M, K] @ B[K, N].

One kernel, two epilogues: int8_mm stores the int32 sums; int8_linear (B = qw^T, the nn.Linear
weight [N, K] read through its strides) dequantizes in registers,
out = float32(acc) * x_scale[m] * w_scale[n] + bias[n], and stores out_dtype.
Any strides (the kernel indexes through them), masked M/N/K edges, grouped tile order for L2 reuse.
w8a8_linear is the same GEMM with its A operand made on the fly from float x (its own kernel below).
Autotuned on the GPU over the configs below, keyed on (M rounded up to a power of two, N, K); under
TRITON_INTERPRET=1 (CI, no GPU) one small fixed config runs, since the autotuner needs a GPU to time.
"""
import torch
import triton
import triton.language as tl

from compress.ops._backend import triton_interpreted
from compress.triton_kernels._launch import linear_out, on_device
from compress.triton_kernels.quantize import _absmax_step, _quantize, _row_scale


def _configs():
    out = []
    # (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps): int8 tensor-core shapes for A100/H100;
    # K blocks of 128 bytes feed the int8 MMA (k = 32) four deep per load.
    for bm, bn, bk, stages, warps in [
        (128, 256, 128, 3, 8), (256, 128, 128, 3, 8), (128, 128, 128, 4, 4), (128, 128, 64, 4, 4),
        (64, 128, 128, 4, 4), (128, 64, 128, 4, 4), (64, 64, 128, 5, 4),
        # small M (decode-like): narrow rows, wide N and K
        (16, 128, 256, 4, 4), (16, 64, 256, 5, 4), (32, 128, 128, 4, 4),
    ]:
        out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                                 num_stages=stages, num_warps=warps))
    return out


@triton.jit
def _grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of this program in grouped order: GROUP_M row tiles sweep the N tiles
    together, so the weight tiles are reused from L2."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pids_per_group = GROUP_M * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_M
    group_m = min(num_pid_m - first_pid_m, GROUP_M)
    return first_pid_m + (pid % pids_per_group) % group_m, (pid % pids_per_group) // group_m


@triton.autotune(configs=_configs(), key=["M_BUCKET", "N", "K"])
@triton.jit
def _int8_gemm_kernel(a_ptr, b_ptr, c_ptr, x_scale_ptr, w_scale_ptr, bias_ptr, M, N, K, M_BUCKET,
                      stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                      DEQUANT: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr):
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # 64-bit offsets: M * K alone can pass 2^31 bytes.
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * stride_am + rk[None, :].to(tl.int64) * stride_ak
    b_ptrs = b_ptr + rk[:, None].to(tl.int64) * stride_bk + rn[None, :].to(tl.int64) * stride_bn
    m_ok = rm[:, None] < M
    n_ok = rn[None, :] < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=m_ok & (rk[None, :] < k_left), other=0)
        b = tl.load(b_ptrs, mask=(rk[:, None] < k_left) & n_ok, other=0)
        acc += tl.dot(a, b, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    c_ptrs = c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :].to(tl.int64) * stride_cn
    if DEQUANT:
        xs = tl.load(x_scale_ptr + rm, mask=rm < M, other=0.0)
        ws = tl.load(w_scale_ptr + rn, mask=rn < N, other=0.0)
        out = acc.to(tl.float32) * xs[:, None] * ws[None, :]
        if HAS_BIAS:
            out += tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
        tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=m_ok & n_ok)
    else:
        tl.store(c_ptrs, acc, mask=m_ok & n_ok)


# Under the interpreter: small tiles keep numpy fast; still smaller than the odd test shapes' edges.
_INTERPRET_META = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2}


def _launch(a, b, c, x_scale=None, w_scale=None, bias=None):
    M, K = a.shape
    N = b.shape[1]

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    dequant = x_scale is not None
    args = (a, b, c, x_scale if dequant else c, w_scale if dequant else c, bias if bias is not None else c,
            M, N, K, triton.next_power_of_2(M), a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            c.stride(0), c.stride(1))
    flags = {"DEQUANT": dequant, "HAS_BIAS": bias is not None}
    if triton_interpreted():
        _int8_gemm_kernel.fn[grid](*args, **flags, **_INTERPRET_META)
    else:
        with on_device(a):
            _int8_gemm_kernel[grid](*args, **flags)
    return c


def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a int8 [M, K], b int8 [K, N] (any strides, same device) -> int32 [M, N] contiguous.

    The caller (compress.ops) has checked dtypes, ranks, devices and K.
    """
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty((M, N), dtype=torch.int32, device=a.device)
    if M == 0 or N == 0:
        return c
    if K == 0:
        return c.zero_()
    return _launch(a, b, c)


def int8_linear(qx, x_scale, qw, w_scale, bias, out_dtype) -> torch.Tensor:
    """qx int8 [M, K], x_scale float32 [M], qw int8 [N, K], w_scale float32 [N], bias [N] or None
    -> out_dtype [M, N] contiguous. Checked by the caller (compress.ops)."""
    N = qw.shape[0]
    out, bias, _ = linear_out(qx, N, bias, out_dtype)
    if out.numel() == 0:
        return out
    # K == 0 runs too: the epilogue scales the zero accumulator, so an inf / NaN scale gives NaN
    # (0 * inf) as in the reference, where linear_out's shortcut would give the bias.
    return _launch(qx, qw.t(), out, x_scale.contiguous(), w_scale.contiguous(), bias)


@triton.autotune(configs=_configs(), key=["M_BUCKET", "N", "K"])
@triton.jit
def _w8a8_linear_kernel(x_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr, M, N, K, M_BUCKET,
                        stride_xm, stride_xk, stride_wn, stride_wk, stride_om,
                        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """quantize_per_token(x) then int8_linear in one program per output tile: the program first
    finds its BLOCK_M rows' scales (a pass over x[rows, :K]), then runs _int8_gemm_kernel's loop
    with each x tile quantized in registers (the quantize kernel's helpers: the same float32 ops,
    so q and the scales are bit-identical to the two-op path), and _int8_gemm_kernel's epilogue.
    Every program of a row block redoes its scales and quantization: cheap next to streaming the
    weight at small M, the case this is for; at large M it costs CUDA-core work per tile."""
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_base = x_ptr + rm[:, None].to(tl.int64) * stride_xm + rk[None, :].to(tl.int64) * stride_xk
    w_ptrs = w_ptr + rk[:, None].to(tl.int64) * stride_wk + rn[None, :].to(tl.int64) * stride_wn  # qw^T tile
    m_ok = rm[:, None] < M
    n_ok = rn[None, :] < N

    # Pass 1: the rows' scales (masked elements load as 0: no effect on absmax).
    amax = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    nan = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.int32)
    x_ptrs = x_base
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        x = tl.load(x_ptrs, mask=m_ok & (rk[None, :] < K - k * BLOCK_K), other=0.0).to(tl.float32)
        amax, nan = _absmax_step(amax, nan, x)
        x_ptrs += BLOCK_K * stride_xk
    scale = _row_scale(amax, nan, 1)  # [BLOCK_M]

    # Pass 2: the int8 GEMM on x tiles quantized in registers (masked elements quantize to 0).
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    x_ptrs = x_base
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        x = tl.load(x_ptrs, mask=m_ok & (rk[None, :] < k_left), other=0.0).to(tl.float32)
        a = _quantize(x, scale[:, None]).to(tl.int8)
        b = tl.load(w_ptrs, mask=(rk[:, None] < k_left) & n_ok, other=0)
        acc += tl.dot(a, b, out_dtype=tl.int32)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # int8_linear's epilogue, in its order.
    ws = tl.load(w_scale_ptr + rn, mask=rn < N, other=0.0)
    out = acc.to(tl.float32) * scale[:, None] * ws[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    o_ptrs = out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_ok & n_ok)


def w8a8_linear(x, qw, w_scale, bias) -> torch.Tensor:
    """x float [M, K] (any strides), qw int8 [N, K], w_scale float32 [N], bias [N] or None
    -> [M, N] in x.dtype, contiguous. Checked by the caller (compress.ops)."""
    M, K = x.shape
    N = qw.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out
    # K == 0 runs too: zero scale passes give scale 1.0 and the epilogue of a zero accumulator
    # (0 * w_scale + bias), as the two-op reference computes it.
    w_scale = w_scale.contiguous()
    bias = None if bias is None else bias.float().contiguous()

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    args = (x, qw, w_scale, bias if bias is not None else w_scale, out, M, N, K, triton.next_power_of_2(M),
            x.stride(0), x.stride(1), qw.stride(0), qw.stride(1), out.stride(0))
    if triton_interpreted():
        _w8a8_linear_kernel.fn[grid](*args, HAS_BIAS=bias is not None, **_INTERPRET_META)
    else:
        with on_device(x):
            _w8a8_linear_kernel[grid](*args, HAS_BIAS=bias is not None)
    return out
