"""Drop-in modules that run on compress's kernels."""
from compress.nn.int8_linear import Int8Linear, QATLinear
from compress.nn.sparse_linear import SparseLinear
from compress.nn.rnn import (FusedGRU, FusedGRUCell, FusedLSTM, FusedLSTMCell, Int8GRU, Int8GRUCell, Int8LSTM,
                             Int8LSTMCell, SparseGRU, SparseGRUCell, SparseLSTM, SparseLSTMCell)

__all__ = ["Int8Linear", "QATLinear", "SparseLinear", "FusedLSTM", "FusedGRU", "FusedLSTMCell", "FusedGRUCell",
           "Int8LSTM", "Int8GRU", "Int8LSTMCell", "Int8GRUCell", "SparseLSTM", "SparseGRU", "SparseLSTMCell",
           "SparseGRUCell"]
