"""compress: fast kernels for compressed (int8, sparse, recurrent) PyTorch models.

Layers (see ARCHITECTURE in the repo): kernels (csrc/, triton_kernels/) -> compress.ops (custom
ops, references, backend choice) -> modules and conversion -> the `python -m compress` command.
"""
__version__ = "0.1.0"

from compress import ops  # noqa: E402,F401  (defines the torch.ops.compress.* schemas)

__all__ = ["ops", "__version__"]
