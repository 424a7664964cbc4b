"""Shared test helpers: odd shapes, strided layouts, poisoned outputs, exact comparison."""
from __future__ import annotations

import contextlib

import torch

# (M, N, K): 1, primes, and non-multiples of every tile size the kernels use (CPU 6-8 x 64,
# CUDA 128 x 128 x 64, Triton 16..256).
ODD_SHAPES = [(1, 1, 1), (1, 7, 5), (3, 17, 33), (13, 17, 67), (17, 33, 3), (33, 64, 17),
              (64, 128, 96), (100, 257, 300)]

LAYOUTS = ("contiguous", "transposed", "strided", "offset")


def make_int8(rows: int, cols: int, device, layout: str = "contiguous", low: int = -128, high: int = 128,
              generator=None) -> torch.Tensor:
    """A random int8 [rows, cols] tensor in the given memory layout:
    contiguous; transposed (column-major); strided (every other column of a wider tensor);
    offset (contiguous but starting one byte into its storage, so misaligned)."""
    def r(*shape):
        return torch.randint(low, high, shape, dtype=torch.int8, generator=generator).to(device)
    if layout == "contiguous":
        t = r(rows, cols)
    elif layout == "transposed":
        t = r(cols, rows).t()
    elif layout == "strided":
        t = r(rows, 2 * cols)[:, ::2]
    elif layout == "offset":
        t = r(rows * cols + 1)[1:].view(rows, cols)
    else:
        raise ValueError(layout)
    assert t.shape == (rows, cols)
    return t


@contextlib.contextmanager
def poisoned_outputs():
    """Inside the block every fresh torch.empty (Python or C++ at::empty, CPU or CUDA) is filled
    with NaN (floats) or the dtype's max (ints), so an output element a kernel never wrote shows."""
    import torch.utils.deterministic as det
    prev_alg, prev_fill = torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        det.fill_uninitialized_memory = prev_fill
        torch.use_deterministic_algorithms(prev_alg)


def assert_exact(out: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    """Integer results are exact: same shape, dtype and every element; says where they differ."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"{what}: dtype {out.dtype} != reference {ref.dtype}"
    if not torch.equal(out.cpu(), ref.cpu()):
        bad = (out.cpu() != ref.cpu()).nonzero()
        i = tuple(bad[0].tolist())
        raise AssertionError(f"{what}: {len(bad)} of {out.numel()} elements differ; first at {i}: "
                             f"got {out.cpu()[i].item()}, expected {ref.cpu()[i].item()}")


# Float outputs: (dtype, rtol) where rtol is the bar on |out - ref| / max|ref| per element: a couple
# of units in the last place of the output dtype (bf16 8 bits of mantissa, fp16 11), float32
# differs from the reference only by summation order and FMA contraction.
FLOAT_TOL = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}


def assert_close_scaled(out: torch.Tensor, ref: torch.Tensor, rtol: float, what: str = "") -> None:
    """|out - ref| <= rtol * max|ref| everywhere; NaN (e.g. a poisoned, unwritten element) fails."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"{what}: dtype {out.dtype} != reference {ref.dtype}"
    o, r = out.float().cpu(), ref.float().cpu()
    assert not o.isnan().any(), f"{what}: {int(o.isnan().sum())} NaN elements (unwritten output?)"
    if r.numel() == 0:
        return
    err = (o - r).abs()
    bound = rtol * r.abs().max().clamp_min(1e-30)
    if not (err <= bound).all():
        i = tuple((err == err.max()).nonzero()[0].tolist())
        raise AssertionError(f"{what}: max error {err.max().item():.3g} > {bound.item():.3g} at {i}: "
                             f"got {o[i].item()}, expected {r[i].item()}")


def make_float(rows: int, cols: int, device, dtype, layout: str = "contiguous") -> torch.Tensor:
    """Random float [rows, cols] in a layout of make_int8's list."""
    def r(*shape):
        return torch.randn(shape).to(dtype).to(device)
    if layout == "contiguous":
        return r(rows, cols)
    if layout == "transposed":
        return r(cols, rows).t()
    if layout == "strided":
        return r(rows, 2 * cols)[:, ::2]
    if layout == "offset":
        return r(rows * cols + 1)[1:].view(rows, cols)
    raise ValueError(layout)
