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
