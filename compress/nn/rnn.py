"""FusedLSTM, FusedGRU, FusedLSTMCell, FusedGRUCell: drop-ins for nn.LSTM, nn.GRU, nn.LSTMCell,
nn.GRUCell (same constructor arguments, forward signature, outputs, parameter names) that run on
compress.ops.lstm_layer / gru_layer.

Per layer and direction: one GEMM for the input projection of all timesteps (F.linear over
[T*B, I]), then one op call for the whole recurrence. They are plain nn.Modules, not subclasses of
nn.LSTM: torch.compile refuses to trace nn.LSTM/GRU instances (Dynamo graph-breaks on them).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from compress import ops


def _check_input(name: str, x: Tensor, input_size: int, ref: Tensor, dims: tuple):
    if x.dim() not in dims:
        raise ValueError(f"{name}: expected `input` to be {' or '.join(f'{d}-D' for d in dims)}, got {x.dim()}-D "
                         f"with shape {tuple(x.shape)}")
    if x.shape[-1] != input_size:
        raise ValueError(f"{name}: expected `input` with last dimension input_size = {input_size}, "
                         f"got shape {tuple(x.shape)}")
    if x.dtype != ref.dtype:
        raise TypeError(f"{name}: expected `input` to be {ref.dtype} (the dtype of the parameters), got {x.dtype}")
    if x.device != ref.device:
        raise ValueError(f"{name}: expected `input` on {ref.device} (the device of the parameters), got {x.device}")


def _check_state(name: str, arg: str, s: Tensor, shape: tuple, x: Tensor):
    if not isinstance(s, Tensor):
        raise TypeError(f"{name}: expected `{arg}` to be a Tensor, got {type(s).__name__}")
    if tuple(s.shape) != tuple(shape):
        raise ValueError(f"{name}: expected `{arg}` of shape {tuple(shape)}, got {tuple(s.shape)}")
    if s.dtype != x.dtype:
        raise TypeError(f"{name}: expected `{arg}` to be {x.dtype} (the dtype of `input`), got {s.dtype}")
    if s.device != x.device:
        raise ValueError(f"{name}: expected `{arg}` on {x.device} (the device of `input`), got {s.device}")


class _FusedRNNBase(nn.Module):
    _mode = ""  # "LSTM" or "GRU"
    _gates = 0

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"{name}: expected `dropout` in [0, 1], got {dropout!r}")
        for arg, v, lo in (("input_size", input_size, 0), ("hidden_size", hidden_size, 1),
                           ("num_layers", num_layers, 1), ("proj_size", proj_size, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name}: expected `{arg}` to be an int >= {lo}, got {v!r}")
        if proj_size and proj_size >= hidden_size:
            raise ValueError(f"{name}: expected `proj_size` < hidden_size = {hidden_size}, got {proj_size}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{name}: dropout={dropout} has no effect with num_layers=1 (it applies between layers)")
        self.mode = self._mode
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        D = 2 if bidirectional else 1
        P = proj_size or hidden_size
        kw = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else P * D
            for sfx in ("", "_reverse")[:D]:
                g = self._gates * hidden_size
                self.register_parameter(f"weight_ih_l{layer}{sfx}", nn.Parameter(torch.empty(g, layer_in, **kw)))
                self.register_parameter(f"weight_hh_l{layer}{sfx}", nn.Parameter(torch.empty(g, P, **kw)))
                if bias:
                    self.register_parameter(f"bias_ih_l{layer}{sfx}", nn.Parameter(torch.empty(g, **kw)))
                    self.register_parameter(f"bias_hh_l{layer}{sfx}", nn.Parameter(torch.empty(g, **kw)))
                if proj_size:
                    self.register_parameter(f"weight_hr_l{layer}{sfx}",
                                            nn.Parameter(torch.empty(proj_size, hidden_size, **kw)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            nn.init.uniform_(w, -stdv, stdv)

    @classmethod
    def from_torch(cls, m: nn.Module):
        """A fused copy of an nn.LSTM / nn.GRU with the same weights, device and dtype."""
        w = m.weight_ih_l0
        kw = {"proj_size": m.proj_size} if cls._mode == "LSTM" else {}
        new = cls(m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first, m.dropout, m.bidirectional,
                  device=w.device, dtype=w.dtype, **kw)
        new.load_state_dict(m.state_dict())
        new.train(m.training)
        return new

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for k, default in (("proj_size", 0), ("num_layers", 1), ("bias", True), ("batch_first", False),
                           ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, k) != default:
                s += f", {k}={getattr(self, k)}"
        return s

    def _layer(self, x, state, layer, direction, lengths):
        raise NotImplementedError

    def forward(self, input, hx=None):
        name = type(self).__name__
        w0 = self.weight_ih_l0
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            x, lengths = pad_packed_sequence(input)  # [T, B, I] in the caller's batch order
            lengths = lengths.to(x.device)
            unbatched = False
            _check_input(name, x, self.input_size, w0, (3,))
        else:
            _check_input(name, input, self.input_size, w0, (2, 3))
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        B = x.shape[1]
        D = 2 if self.bidirectional else 1
        P = self.proj_size if self._mode == "LSTM" and self.proj_size else self.hidden_size
        states = self._initial_states(hx, x, B, D, P, unbatched)
        finals = [[] for _ in states]
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                idx = layer * D + d
                y, *fin = self._layer(x, [s[idx] for s in states], layer, d, lengths)
                outs.append(y)
                for f, v in zip(finals, fin):
                    f.append(v)
            x = outs[0] if D == 1 else torch.cat(outs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        h_n = [torch.stack(f) for f in finals]
        if unbatched:
            h_n = [h.squeeze(1) for h in h_n]
        if packed:
            sorted_idx = input.sorted_indices
            y_sorted = x if sorted_idx is None else x.index_select(1, sorted_idx)
            len_sorted = lengths.cpu() if sorted_idx is None else lengths.cpu()[sorted_idx.cpu()]
            p = pack_padded_sequence(y_sorted, len_sorted, enforce_sorted=True)
            out = PackedSequence(p.data, p.batch_sizes, input.sorted_indices, input.unsorted_indices)
        elif unbatched:
            out = x.squeeze(1)
        else:
            out = x.transpose(0, 1) if self.batch_first else x
        return out, (tuple(h_n) if self._mode == "LSTM" else h_n[0])

    def _initial_states(self, hx, x, B, D, P, unbatched):
        name = type(self).__name__
        L = self.num_layers * D
        shapes = [(L, B, P), (L, B, self.hidden_size)] if self._mode == "LSTM" else [(L, B, P)]
        args = ["hx[0]", "hx[1]"] if self._mode == "LSTM" else ["hx"]
        if hx is None:
            return [x.new_zeros(s) for s in shapes]
        if self._mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{name}: expected `hx` to be a tuple (h_0, c_0), got {type(hx).__name__}")
            hx = list(hx)
        else:
            hx = [hx]
        out = []
        for arg, s, shape in zip(args, hx, shapes):
            if unbatched:
                if isinstance(s, Tensor) and s.dim() != 2:
                    raise ValueError(f"{name}: for unbatched 2-D `input`, expected `{arg}` to be 2-D, got {s.dim()}-D")
                s = s.unsqueeze(1) if isinstance(s, Tensor) else s
            _check_state(name, arg, s, shape, x)
            out.append(s)
        return out


class FusedLSTM(_FusedRNNBase):
    """nn.LSTM on compress's fused recurrence (compress.ops.lstm_layer). Same arguments and outputs:
    forward(input, (h_0, c_0) = zeros) -> (output, (h_n, c_n)); input [T, B, I] ([B, T, I] with
    batch_first, [T, I] unbatched) or a PackedSequence."""
    _mode, _gates = "LSTM", 4

    def _layer(self, x, state, layer, d, lengths):
        sfx = "_reverse" if d else ""
        T, B = x.shape[:2]
        b = (getattr(self, f"bias_ih_l{layer}{sfx}") + getattr(self, f"bias_hh_l{layer}{sfx}")) if self.bias else None
        xg = F.linear(x.reshape(T * B, x.shape[2]), getattr(self, f"weight_ih_l{layer}{sfx}"), b).view(T, B, -1)
        w_hr = getattr(self, f"weight_hr_l{layer}{sfx}") if self.proj_size else None
        return ops.lstm_layer(xg, state[0], state[1], getattr(self, f"weight_hh_l{layer}{sfx}"), w_hr, lengths,
                              bool(d))


class FusedGRU(_FusedRNNBase):
    """nn.GRU on compress's fused recurrence (compress.ops.gru_layer). Same arguments and outputs:
    forward(input, h_0 = zeros) -> (output, h_n)."""
    _mode, _gates = "GRU", 3

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype)

    def _layer(self, x, state, layer, d, lengths):
        sfx = "_reverse" if d else ""
        T, B = x.shape[:2]
        b_ih = getattr(self, f"bias_ih_l{layer}{sfx}") if self.bias else None
        b_hh = getattr(self, f"bias_hh_l{layer}{sfx}") if self.bias else None
        xg = F.linear(x.reshape(T * B, x.shape[2]), getattr(self, f"weight_ih_l{layer}{sfx}"), b_ih).view(T, B, -1)
        return ops.gru_layer(xg, state[0], getattr(self, f"weight_hh_l{layer}{sfx}"), b_hh, lengths, bool(d))


class _FusedCellBase(nn.Module):
    _mode, _gates = "", 0

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        g = self._gates * hidden_size
        kw = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(g, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(g, hidden_size, **kw))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(g, **kw))
            self.bias_hh = nn.Parameter(torch.empty(g, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            nn.init.uniform_(w, -stdv, stdv)

    @classmethod
    def from_torch(cls, m: nn.Module):
        """A fused copy of an nn.LSTMCell / nn.GRUCell with the same weights, device and dtype."""
        new = cls(m.input_size, m.hidden_size, m.bias, device=m.weight_ih.device, dtype=m.weight_ih.dtype)
        new.load_state_dict(m.state_dict())
        new.train(m.training)
        return new

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def _prepare(self, input, hx):
        name = type(self).__name__
        _check_input(name, input, self.input_size, self.weight_ih, (1, 2))
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        B = x.shape[0]
        args = ("hx[0]", "hx[1]") if self._mode == "LSTM" else ("hx",)
        if hx is None:
            states = [x.new_zeros(B, self.hidden_size) for _ in args]
        else:
            if self._mode == "LSTM":
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError(f"{name}: expected `hx` to be a tuple (h_0, c_0), got {type(hx).__name__}")
                states = list(hx)
            else:
                states = [hx]
            for k, (arg, s) in enumerate(zip(args, states)):
                if unbatched and isinstance(s, Tensor):
                    if s.dim() != 1:
                        raise ValueError(f"{name}: for unbatched 1-D `input`, expected `{arg}` to be 1-D, got {s.dim()}-D")
                    s = s.unsqueeze(0)
                _check_state(name, arg, s, (B, self.hidden_size), x)
                states[k] = s
        return x, states, unbatched


class FusedLSTMCell(_FusedCellBase):
    """nn.LSTMCell on compress.ops.lstm_layer (T = 1): forward(input [B, I] or [I], (h, c) = zeros) -> (h', c')."""
    _mode, _gates = "LSTM", 4

    def forward(self, input, hx=None):
        x, (h, c), unbatched = self._prepare(input, hx)
        b = self.bias_ih + self.bias_hh if self.bias else None
        xg = F.linear(x, self.weight_ih, b).unsqueeze(0)
        _, h1, c1 = ops.lstm_layer(xg, h, c, self.weight_hh)
        return (h1.squeeze(0), c1.squeeze(0)) if unbatched else (h1, c1)


class FusedGRUCell(_FusedCellBase):
    """nn.GRUCell on compress.ops.gru_layer (T = 1): forward(input [B, I] or [I], h = zeros) -> h'."""
    _mode, _gates = "GRU", 3

    def forward(self, input, hx=None):
        x, (h,), unbatched = self._prepare(input, hx)
        xg = F.linear(x, self.weight_ih, self.bias_ih).unsqueeze(0)
        _, h1 = ops.gru_layer(xg, h, self.weight_hh, self.bias_hh)
        return h1.squeeze(0) if unbatched else h1


FUSED = {nn.LSTM: FusedLSTM, nn.GRU: FusedGRU, nn.LSTMCell: FusedLSTMCell, nn.GRUCell: FusedGRUCell}
