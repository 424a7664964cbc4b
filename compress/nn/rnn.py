"""Fused recurrent modules: drop-ins for nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell (same constructor
arguments, forward signature and outputs) that run on compress.ops.

  FusedLSTM, FusedGRU, FusedLSTMCell, FusedGRUCell    dense float weights (ops.lstm_layer / gru_layer);
      same parameter names as torch's modules
  Int8LSTM, Int8GRU, Int8LSTMCell, Int8GRUCell        int8 weights, float32 per-row scales, float
      activations (ops.w8a16_linear for the input projection, ops.lstm_layer_w8 / gru_layer_w8);
      build with from_float(m)
  SparseLSTM, SparseGRU, SparseLSTMCell, SparseGRUCell  recurrent weights block-sparse (BSR;
      ops.lstm_layer_bsr / gru_layer_bsr); build with from_dense(m, block)

Per layer and direction: one GEMM for the input projection of all timesteps ([T*B, I] rows), then
one op call for the whole recurrence. They are plain nn.Modules, not subclasses of nn.LSTM:
torch.compile refuses to trace nn.LSTM/GRU instances (Dynamo graph-breaks on them). The three
families share the forward (states, batch_first, unbatched input, PackedSequence, layers,
directions, proj_size) and differ only in how weights are stored (`_new_weight`) and in `_layer`
(cells: `forward`).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from compress import formats, ops
from compress.ops.int8 import _FLOAT_DTYPES


def _check_input(name: str, x: Tensor, input_size: int, ref: Tensor, dims: tuple, any_float: bool = False):
    """`ref` gives the device and, unless any_float (int8 weights take any float input), the dtype."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected `input` to be a Tensor or PackedSequence, got {type(x).__name__}")
    if x.dim() not in dims:
        raise ValueError(f"{name}: expected `input` to be {' or '.join(f'{d}-D' for d in dims)}, got {x.dim()}-D "
                         f"with shape {tuple(x.shape)}")
    if x.shape[-1] != input_size:
        raise ValueError(f"{name}: expected `input` with last dimension input_size = {input_size}, "
                         f"got shape {tuple(x.shape)}")
    if any_float:
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name}: expected `input` to be float32, bfloat16 or float16, got {x.dtype}")
    elif x.dtype != ref.dtype:
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


class _DenseWeights:
    """Weight storage of the Fused modules: nn.Parameters, as torch's modules have."""
    _any_float_input = False  # the input must have the parameters' dtype

    def _new_weight(self, name, shape, kw):
        self.register_parameter(name, nn.Parameter(torch.empty(shape, **kw)))

    def _new_bias(self, name, shape, kw):
        self.register_parameter(name, None if shape is None else nn.Parameter(torch.empty(shape, **kw)))


def _where(w: Tensor) -> dict:
    return {"device": w.device, "dtype": w.dtype}


def _copy_weights(new: nn.Module, m: nn.Module) -> nn.Module:
    """Copy m's weights into new's parameters of the same names; getattr, not m.state_dict(), so
    a pruned (parametrized) module gives its masked weights."""
    with torch.no_grad():
        for name, p in new.named_parameters(recurse=False):
            p.copy_(getattr(m, name))
    new.train(m.training)
    return new


class _FusedRNNBase(_DenseWeights, nn.Module):
    """The multi-layer LSTM / GRU modules. Beyond torch's: an empty sequence (T = 0, which torch
    rejects) gives an empty output and h_n = h_0."""
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
                self._new_weight(f"weight_ih_l{layer}{sfx}", (g, layer_in), kw)
                self._new_weight(f"weight_hh_l{layer}{sfx}", (g, P), kw)
                if bias:
                    self._new_bias(f"bias_ih_l{layer}{sfx}", (g,), kw)
                    self._new_bias(f"bias_hh_l{layer}{sfx}", (g,), kw)
                if proj_size:
                    self._new_weight(f"weight_hr_l{layer}{sfx}", (proj_size, hidden_size), kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            nn.init.uniform_(w, -stdv, stdv)

    @classmethod
    def from_torch(cls, m: nn.Module):
        """A fused copy of an nn.LSTM / nn.GRU with the same weights, device and dtype (a pruned
        module's masked weights)."""
        return _copy_weights(cls(**cls.init_args(m), **_where(m.weight_ih_l0)), m)

    @classmethod
    def init_args(cls, m: nn.Module) -> dict:
        """The constructor arguments of `m` (a torch or compress LSTM / GRU; no device, dtype)."""
        args = {k: getattr(m, k) for k in ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
                                           "dropout", "bidirectional")}
        if cls._mode == "LSTM":
            args["proj_size"] = m.proj_size
        return args

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
            _check_input(name, x, self.input_size, w0, (3,), self._any_float_input)
        else:
            _check_input(name, input, self.input_size, w0, (2, 3), self._any_float_input)
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
        xg = F.linear(x.reshape(T * B, x.shape[2]), getattr(self, f"weight_ih_l{layer}{sfx}"), b).unflatten(0, (T, B))
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
        xg = F.linear(x.reshape(T * B, x.shape[2]), getattr(self, f"weight_ih_l{layer}{sfx}"), b_ih).unflatten(0, (T, B))
        return ops.gru_layer(xg, state[0], getattr(self, f"weight_hh_l{layer}{sfx}"), b_hh, lengths, bool(d))


class _FusedCellBase(_DenseWeights, nn.Module):
    _mode, _gates = "", 0

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        g = self._gates * hidden_size
        kw = {"device": device, "dtype": dtype}
        self._new_weight("weight_ih", (g, input_size), kw)
        self._new_weight("weight_hh", (g, hidden_size), kw)
        self._new_bias("bias_ih", (g,) if bias else None, kw)
        self._new_bias("bias_hh", (g,) if bias else None, kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            nn.init.uniform_(w, -stdv, stdv)

    @classmethod
    def from_torch(cls, m: nn.Module):
        """A fused copy of an nn.LSTMCell / nn.GRUCell with the same weights, device and dtype (a
        pruned module's masked weights)."""
        return _copy_weights(cls(**cls.init_args(m), **_where(m.weight_ih)), m)

    @classmethod
    def init_args(cls, m: nn.Module) -> dict:
        """The constructor arguments of `m` (a torch or compress cell; no device, dtype)."""
        return {"input_size": m.input_size, "hidden_size": m.hidden_size, "bias": m.bias}

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def _prepare(self, input, hx):
        name = type(self).__name__
        _check_input(name, input, self.input_size, self.weight_ih, (1, 2), self._any_float_input)
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


def _check_source(cls, m, fn: str):
    """m must be the torch module cls stands in for, or its Fused version (pruned ones too)."""
    if issubclass(cls, _FusedCellBase):
        torch_type = nn.LSTMCell if cls._mode == "LSTM" else nn.GRUCell
    else:
        torch_type = nn.LSTM if cls._mode == "LSTM" else nn.GRU
    if not isinstance(m, (torch_type, FUSED[torch_type])):
        raise TypeError(f"{cls.__name__}.{fn}: expected `m` to be an nn.{torch_type.__name__} or "
                        f"{FUSED[torch_type].__name__}, got {type(m).__name__}")
    w = m.weight_ih_l0 if hasattr(m, "weight_ih_l0") else m.weight_ih
    if w.device.type == "meta":
        raise ValueError(f"{cls.__name__}.{fn}: the weights of `m` are on the meta device (not materialised)")
    return w


# ---------------------------------------------------------------------------------------------
# int8 weights: Int8LSTM, Int8GRU, Int8LSTMCell, Int8GRUCell

class _Int8Weights:
    """Weight storage of the Int8 modules (inference only): every weight matrix `<name>` (weight_ih,
    weight_hh, weight_hr) an int8 buffer with a float32 buffer `<name>_scale` [rows], so that the
    float weight is <name> * <name>_scale[:, None] (symmetric per row, absmax / 127); biases are
    float buffers under torch's names. Activations stay float: the input may be float32, bfloat16
    or float16 (states of the same dtype), and outputs come in the input's dtype."""
    _any_float_input = True

    def _new_weight(self, name, shape, kw):
        self.register_buffer(name, torch.zeros(shape, dtype=torch.int8, device=kw["device"]))
        self.register_buffer(name + "_scale", torch.ones(shape[0], dtype=torch.float32, device=kw["device"]))

    def _new_bias(self, name, shape, kw):
        self.register_buffer(name, None if shape is None else
                             torch.zeros(shape, dtype=kw["dtype"] or torch.float32, device=kw["device"]))

    @classmethod
    def from_float(cls, m: nn.Module):
        """Quantize m (the torch module this class stands in for, or its Fused version; a pruned
        module's masked weights) per row; biases are kept in m's dtype."""
        w0 = _check_source(cls, m, "from_float")
        new = cls(**cls.init_args(m), **_where(w0))
        with torch.no_grad():
            for name, t in list(new.named_buffers(recurse=False)):
                if t.dtype == torch.int8:
                    q, scale = ops.quantize_per_token(getattr(m, name).detach().float())
                    t.copy_(q)
                    getattr(new, name + "_scale").copy_(scale)
                elif not name.endswith("_scale"):
                    t.copy_(getattr(m, name))
        new.train(m.training)
        return new

    def float_state_dict(self) -> dict:
        """The float32 weights this module computes with, under torch's names: load it into the
        nn.LSTM / nn.GRU / cell (or Fused module) it stands in for to get a float twin."""
        out = {}
        for name, t in self.named_buffers(recurse=False):
            if t.dtype == torch.int8:
                out[name] = t.float() * getattr(self, name + "_scale")[:, None]
            elif not name.endswith("_scale"):
                out[name] = t
        return out

    def _apply(self, fn, recurse=True):
        # .half() / .to(bfloat16) would cast the float32 scales too; the kernels need them float32.
        super()._apply(fn, recurse)
        for name, t in list(self.named_buffers(recurse=False)):
            if name.endswith("_scale"):
                setattr(self, name, t.float())
        return self

    def _bias(self, name, x):
        """A bias for the recurrence ops, which take it in the input's dtype (w8a16_linear takes any)."""
        b = getattr(self, name, None)
        return None if b is None else b.to(x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", int8 weights"


class Int8LSTM(_Int8Weights, _FusedRNNBase):
    """nn.LSTM with int8 weights (see _Int8Weights): Int8LSTM.from_float(lstm). Per layer and
    direction: the input projection of all timesteps is one ops.w8a16_linear (b_ih + b_hh folded
    in), the recurrence one ops.lstm_layer_w8 (int8 weight_hh and weight_hr)."""
    _mode, _gates = "LSTM", 4

    def _layer(self, x, state, layer, d, lengths):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        T, B = x.shape[:2]
        b = (getattr(self, "bias_ih" + sfx).float() + getattr(self, "bias_hh" + sfx).float()) if self.bias else None
        xg = ops.w8a16_linear(x.reshape(T * B, x.shape[2]), getattr(self, "weight_ih" + sfx),
                              getattr(self, f"weight_ih{sfx}_scale"), b).unflatten(0, (T, B))
        hr = ((getattr(self, "weight_hr" + sfx), getattr(self, f"weight_hr{sfx}_scale")) if self.proj_size
              else (None, None))
        return ops.lstm_layer_w8(xg, state[0], state[1], getattr(self, "weight_hh" + sfx),
                                 getattr(self, f"weight_hh{sfx}_scale"), *hr, lengths, bool(d))


class Int8GRU(_Int8Weights, _FusedRNNBase):
    """nn.GRU with int8 weights (see _Int8Weights): Int8GRU.from_float(gru). Input projection
    ops.w8a16_linear (b_ih folded in), recurrence ops.gru_layer_w8."""
    _mode, _gates = "GRU", 3

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype)

    def _layer(self, x, state, layer, d, lengths):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        T, B = x.shape[:2]
        b_ih = getattr(self, "bias_ih" + sfx) if self.bias else None
        xg = ops.w8a16_linear(x.reshape(T * B, x.shape[2]), getattr(self, "weight_ih" + sfx),
                              getattr(self, f"weight_ih{sfx}_scale"), b_ih).unflatten(0, (T, B))
        return ops.gru_layer_w8(xg, state[0], getattr(self, "weight_hh" + sfx), getattr(self, f"weight_hh{sfx}_scale"),
                                self._bias("bias_hh" + sfx, x), lengths, bool(d))


class Int8LSTMCell(_Int8Weights, _FusedCellBase):
    """nn.LSTMCell with int8 weights: forward(input [B, I] or [I], (h, c) = zeros) -> (h', c')."""
    _mode, _gates = "LSTM", 4

    def forward(self, input, hx=None):
        x, (h, c), unbatched = self._prepare(input, hx)
        b = self.bias_ih.float() + self.bias_hh.float() if self.bias else None
        xg = ops.w8a16_linear(x, self.weight_ih, self.weight_ih_scale, b).unsqueeze(0)
        _, h1, c1 = ops.lstm_layer_w8(xg, h, c, self.weight_hh, self.weight_hh_scale)
        return (h1.squeeze(0), c1.squeeze(0)) if unbatched else (h1, c1)


class Int8GRUCell(_Int8Weights, _FusedCellBase):
    """nn.GRUCell with int8 weights: forward(input [B, I] or [I], h = zeros) -> h'."""
    _mode, _gates = "GRU", 3

    def forward(self, input, hx=None):
        x, (h,), unbatched = self._prepare(input, hx)
        xg = ops.w8a16_linear(x, self.weight_ih, self.weight_ih_scale, self.bias_ih).unsqueeze(0)
        _, h1 = ops.gru_layer_w8(xg, h, self.weight_hh, self.weight_hh_scale, self._bias("bias_hh", x))
        return h1.squeeze(0) if unbatched else h1


INT8 = {nn.LSTM: Int8LSTM, nn.GRU: Int8GRU, nn.LSTMCell: Int8LSTMCell, nn.GRUCell: Int8GRUCell}


# ---------------------------------------------------------------------------------------------
# Block-sparse recurrent weights: SparseLSTM, SparseGRU, SparseLSTMCell, SparseGRUCell

_BSR_PARTS = ("_crow", "_col", "_values")


def _check_block(name: str, block, hidden_size: int) -> tuple:
    if (not isinstance(block, (tuple, list)) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)):
        raise ValueError(f"{name}: expected `block` as (rows, cols) of positive ints, got {block!r}")
    if hidden_size % block[0]:
        raise ValueError(f"{name}: expected `block` rows dividing hidden_size = {hidden_size} (a block row must "
                         f"lie within one gate), got block={tuple(block)}")
    return tuple(block)


class _BSRRecurrentWeights:
    """Weight storage of the Sparse modules (inference only): each recurrent weight weight_hh
    [G*H, P] in BSR (compress.formats.sparse) as three buffers `<name>_crow`, `<name>_col`,
    `<name>_values` with blocks of `block` = (bn, bk), bn dividing H; every other weight and bias
    a dense float buffer under torch's name. The input projection stays dense (F.linear): it is
    one large GEMM over all timesteps, where a pruned weight saves little; the recurrence, a small
    matmul repeated T times, is what the sparse kernel speeds up. Input and states must have the
    weights' dtype."""

    def _new_weight(self, name, shape, kw):
        if not name.startswith("weight_hh"):
            self.register_buffer(name, torch.zeros(shape, **kw))
            return
        # An empty matrix (no stored block) until from_dense or load_state_dict sizes the parts.
        bn, bk = self.block
        self.register_buffer(name + "_crow", torch.zeros(shape[0] // bn + 1, dtype=torch.int32, device=kw["device"]))
        self.register_buffer(name + "_col", torch.zeros(0, dtype=torch.int32, device=kw["device"]))
        self.register_buffer(name + "_values", torch.zeros(0, bn, bk, **kw))

    def _new_bias(self, name, shape, kw):
        self.register_buffer(name, None if shape is None else torch.zeros(shape, **kw))

    @classmethod
    def from_dense(cls, m: nn.Module, block=(32, 32)):
        """From m (the torch module this class stands in for, or its Fused version; a pruned
        module's masked weights): weight_hh in BSR with (bn, bk) blocks, all-zero blocks dropped."""
        w0 = _check_source(cls, m, "from_dense")
        new = cls(**cls.init_args(m), block=block, **_where(w0))
        with torch.no_grad():
            for name, t in list(new.named_buffers(recurse=False)):
                if name.endswith("_crow"):
                    w = name[: -len("_crow")]
                    b = formats.to_bsr(getattr(m, w).detach(), new.block)
                    for part, v in zip(_BSR_PARTS, (b.crow, b.col, b.values)):
                        setattr(new, w + part, v)
                elif not name.endswith(_BSR_PARTS[1:]):
                    t.copy_(getattr(m, name))
        new.train(m.training)
        return new

    def float_state_dict(self) -> dict:
        """The dense weights this module computes with, under torch's names: load it into the
        nn.LSTM / nn.GRU / cell (or Fused module) it stands in for to get a dense twin."""
        out = {}
        for name, t in self.named_buffers(recurse=False):
            if name.endswith("_crow"):
                w = name[: -len("_crow")]
                out[w] = formats.from_bsr(formats.BSR(t, getattr(self, w + "_col"), getattr(self, w + "_values"),
                                                      self._hh_shape()))
            elif not name.endswith(_BSR_PARTS[1:]):
                out[name] = t
        return out

    def _hh_shape(self):
        P = getattr(self, "proj_size", 0) or self.hidden_size
        return (self._gates * self.hidden_size, P)

    def _bsr(self, name):
        return tuple(getattr(self, name + part) for part in _BSR_PARTS)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the parts' sizes depend on how many blocks are stored: take them from the checkpoint
        for name, t in list(self.named_buffers(recurse=False)):
            if name.endswith(_BSR_PARTS) and prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=t.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", block={self.block}"


class SparseLSTM(_BSRRecurrentWeights, _FusedRNNBase):
    """nn.LSTM with block-sparse recurrent weights (see _BSRRecurrentWeights):
    SparseLSTM.from_dense(lstm, block). Per layer and direction: F.linear for the input projection
    (b_ih + b_hh folded in), ops.lstm_layer_bsr for the recurrence (weight_hr dense)."""
    _mode, _gates = "LSTM", 4

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 block=(32, 32), device=None, dtype=None):
        self.block = _check_block(type(self).__name__, block, hidden_size)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
                         device, dtype)

    def _layer(self, x, state, layer, d, lengths):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        T, B = x.shape[:2]
        b = (getattr(self, "bias_ih" + sfx) + getattr(self, "bias_hh" + sfx)) if self.bias else None
        xg = F.linear(x.reshape(T * B, x.shape[2]), getattr(self, "weight_ih" + sfx), b).unflatten(0, (T, B))
        w_hr = getattr(self, "weight_hr" + sfx) if self.proj_size else None
        return ops.lstm_layer_bsr(xg, state[0], state[1], *self._bsr("weight_hh" + sfx), w_hr, lengths, bool(d))


class SparseGRU(_BSRRecurrentWeights, _FusedRNNBase):
    """nn.GRU with block-sparse recurrent weights: SparseGRU.from_dense(gru, block). F.linear for
    the input projection (b_ih folded in), ops.gru_layer_bsr for the recurrence."""
    _mode, _gates = "GRU", 3

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, block=(32, 32),
                 device=None, dtype=None):
        self.block = _check_block(type(self).__name__, block, hidden_size)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype)

    def _layer(self, x, state, layer, d, lengths):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        T, B = x.shape[:2]
        b_ih = getattr(self, "bias_ih" + sfx) if self.bias else None
        b_hh = getattr(self, "bias_hh" + sfx) if self.bias else None
        xg = F.linear(x.reshape(T * B, x.shape[2]), getattr(self, "weight_ih" + sfx), b_ih).unflatten(0, (T, B))
        return ops.gru_layer_bsr(xg, state[0], *self._bsr("weight_hh" + sfx), b_hh, lengths, bool(d))


class _SparseCellBase(_BSRRecurrentWeights, _FusedCellBase):
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, block=(32, 32), device=None,
                 dtype=None):
        self.block = _check_block(type(self).__name__, block, hidden_size)
        super().__init__(input_size, hidden_size, bias, device, dtype)


class SparseLSTMCell(_SparseCellBase):
    """nn.LSTMCell with a block-sparse recurrent weight: forward(input, (h, c) = zeros) -> (h', c')."""
    _mode, _gates = "LSTM", 4

    def forward(self, input, hx=None):
        x, (h, c), unbatched = self._prepare(input, hx)
        b = self.bias_ih + self.bias_hh if self.bias else None
        xg = F.linear(x, self.weight_ih, b).unsqueeze(0)
        _, h1, c1 = ops.lstm_layer_bsr(xg, h, c, *self._bsr("weight_hh"))
        return (h1.squeeze(0), c1.squeeze(0)) if unbatched else (h1, c1)


class SparseGRUCell(_SparseCellBase):
    """nn.GRUCell with a block-sparse recurrent weight: forward(input, h = zeros) -> h'."""
    _mode, _gates = "GRU", 3

    def forward(self, input, hx=None):
        x, (h,), unbatched = self._prepare(input, hx)
        xg = F.linear(x, self.weight_ih, self.bias_ih).unsqueeze(0)
        _, h1 = ops.gru_layer_bsr(xg, h, *self._bsr("weight_hh"), self.bias_hh)
        return h1.squeeze(0) if unbatched else h1


SPARSE = {nn.LSTM: SparseLSTM, nn.GRU: SparseGRU, nn.LSTMCell: SparseLSTMCell, nn.GRUCell: SparseGRUCell}
