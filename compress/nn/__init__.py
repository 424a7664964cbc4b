"""Drop-in modules that run on compress's kernels."""
from compress.nn.int8_linear import Int8Linear, QATLinear
from compress.nn.sparse_linear import SparseLinear
from compress.nn.rnn import FusedGRU, FusedGRUCell, FusedLSTM, FusedLSTMCell

__all__ = ["Int8Linear", "QATLinear", "SparseLinear", "FusedLSTM", "FusedGRU", "FusedLSTMCell", "FusedGRUCell"]
