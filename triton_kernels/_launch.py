"""Launch helpers shared by the Triton launchers."""
import contextlib

import torch

from compress.ops._backend import triton_interpreted


def on_device(t: torch.Tensor):
    """Launch on `t`'s GPU (Triton uses the current device), or nowhere in particular for the
    interpreter's CPU tensors."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def dot_in_f32(x: torch.Tensor) -> bool:
    """Whether a kernel should take its dots in IEEE float32: always for float32 x (no TF32), and
    for bf16 under the interpreter, whose bf16 dot is wrong in Triton 3.8 (garbage of order 1e10);
    the GPU keeps the bf16 tensor-core dot."""
    return x.dtype == torch.float32 or (triton_interpreted() and x.dtype == torch.bfloat16)


def linear_out(x: torch.Tensor, N: int, bias, dtype=None):
    """The output [M, N] of a linear-like kernel and the bias as contiguous float32. `done` is True
    when no kernel needs to run: M or N is 0, or K is 0 (then the output is the bias, or zeros)."""
    M, K = x.shape
    out = torch.empty((M, N), dtype=dtype or x.dtype, device=x.device)
    bias = None if bias is None else bias.float().contiguous()
    done = M == 0 or N == 0 or K == 0
    if done and out.numel():
        out.copy_(bias.expand(M, N) if bias is not None else torch.zeros((), device=x.device))
    return out, bias, done
