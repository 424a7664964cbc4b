"""Drop-in modules that run on compress's kernels."""
from compress.nn.int8_linear import Int8Linear, QATLinear

__all__ = ["Int8Linear", "QATLinear"]
