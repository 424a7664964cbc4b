"""compress: fast kernels for compressed (int8, sparse, recurrent) PyTorch models.

Layers (see ARCHITECTURE in the repo): kernels (csrc/, triton_kernels/) -> compress.ops (custom
ops, references, backend choice) -> compress.nn modules -> conversions (quantize, ...) returning a
Report -> the `python -m compress` command.
"""
__version__ = "0.1.0"

from compress import ops  # noqa: E402,F401  (defines the torch.ops.compress.* schemas)
from compress import nn  # noqa: E402,F401
from compress.pruning import GradualPruner, distill_loss, prune, sparsity_of  # noqa: E402
from compress.quantize import quantize  # noqa: E402
from compress.report import Report  # noqa: E402
from compress.serialization import load, save  # noqa: E402
from compress.sparsify import sparsify  # noqa: E402
from compress.fuse_rnn import fuse_rnn  # noqa: E402

__all__ = ["GradualPruner", "Report", "distill_loss", "fuse_rnn", "load", "nn", "ops", "prune", "quantize", "save", "sparsify",
           "sparsity_of", "__version__"]
