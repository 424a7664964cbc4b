"""compress.ops: every kernel of the library as a torch.library custom op (namespace `compress`).

Each op has a schema, a fake (shape-only) implementation, a plain-PyTorch reference
(`<op>_reference`) and up to three fast backends (C++ CPU, CUDA, Triton); see `_backend` for how
one is chosen. Everything above this layer calls these functions, never compress._C directly.
"""
from compress.ops import _backend
from compress.ops._backend import BACKENDS, Choice, backend, current_backend, last_choice

# The extension registers its kernels for the schemas defined above when it loads.
try:
    from compress import _C  # noqa: F401
except ImportError as e:  # keep the reference (and Triton) backends usable without the build
    _C = None
    _backend.native_import_error = str(e)

from compress.ops.int8 import (  # noqa: E402
    int8_linear, int8_linear_reference, int8_mm, int8_mm_reference, quantize_per_token,
    quantize_per_token_reference, w8a8_linear, w8a8_linear_reference, w8a16_linear, w8a16_linear_reference)
from compress.ops.sparse import (  # noqa: E402
    bsr_linear, bsr_linear_reference, csr_linear, csr_linear_reference, sparse24_linear,
    sparse24_linear_reference)
from compress.ops.rnn import (  # noqa: E402
    gru_layer, gru_layer_bsr, gru_layer_bsr_reference, gru_layer_reference, gru_layer_w8, gru_layer_w8_reference,
    lstm_layer, lstm_layer_bsr, lstm_layer_bsr_reference, lstm_layer_reference, lstm_layer_w8,
    lstm_layer_w8_reference)


def implemented(op: str):
    """Backends `op` has an implementation for (available or not on this machine)."""
    return _backend.implemented(op)


def why_unavailable(op: str, name: str, device) -> "str | None":
    """None if backend `name` can run `op` on `device`, else the reason."""
    import torch
    return _backend.why_unavailable(op, name, torch.device(device))


def resolve(op: str, device):
    """(backend, reason) that `op` would run on for inputs on `device`, under the current choice."""
    import torch
    name, _, reason = _backend.resolve(op, torch.device(device))
    return name, reason


OPS = ("int8_mm", "quantize_per_token", "int8_linear", "w8a8_linear", "w8a16_linear", "sparse24_linear",
       "bsr_linear", "csr_linear", "lstm_layer", "gru_layer", "lstm_layer_w8", "gru_layer_w8", "lstm_layer_bsr", "gru_layer_bsr")

__all__ = ["BACKENDS", "Choice", "OPS", "backend", "bsr_linear", "bsr_linear_reference", "csr_linear",
           "csr_linear_reference", "current_backend", "implemented", "int8_linear", "sparse24_linear",
           "sparse24_linear_reference",
           "int8_linear_reference", "int8_mm", "int8_mm_reference", "last_choice", "quantize_per_token",
           "quantize_per_token_reference", "resolve", "w8a8_linear", "w8a8_linear_reference", "w8a16_linear",
           "w8a16_linear_reference",
           "why_unavailable", "lstm_layer", "lstm_layer_reference", "gru_layer", "gru_layer_reference", "lstm_layer_w8",
           "lstm_layer_w8_reference", "gru_layer_w8", "gru_layer_w8_reference", "lstm_layer_bsr",
           "lstm_layer_bsr_reference", "gru_layer_bsr", "gru_layer_bsr_reference"]
