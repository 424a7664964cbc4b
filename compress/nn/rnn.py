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
directions, proj_size; the cells theirs) and differ only in how weights are stored (`_new_weight`)
and in the ops one layer and direction runs on them (`_linear`, `_input_bias`, `_recurrence`).
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
    """Weight storage of the Fused modules: nn.Parameters, as torch's modules have, and the ops one
    layer and direction runs on them (`_linear`, `_input_bias`, `_recurrence`; see _Recurrent)."""
    _any_float_input = False  # the input must have the parameters' dtype

    def _new_weight(self, name, shape, kw):
        self.register_parameter(name, nn.Parameter(torch.empty(shape, **kw)))

    def _new_bias(self, name, shape, kw):
        self.register_parameter(name, None if shape is None else nn.Parameter(torch.empty(shape, **kw)))

    def _input_bias(self, sfx):
        """The bias folded into the input projection: the LSTM's b_ih + b_hh, the GRU's b_ih (b_hh
        stays apart because r multiplies its n part)."""
        b_ih = getattr(self, "bias_ih" + sfx)
        return b_ih + getattr(self, "bias_hh" + sfx) if self._mode == "LSTM" else b_ih

    def _linear(self, x, name, b):
        return F.linear(x, getattr(self, name), b)

    def _recurrence(self, xg, state, sfx, lengths, reverse):
        # getattr(..., None): weight_hr exists with proj_size only, bias_hh with bias only
        w_hh = getattr(self, "weight_hh" + sfx)
        if self._mode == "LSTM":
            return ops.lstm_layer(xg, *state, w_hh, getattr(self, "weight_hr" + sfx, None), lengths, reverse)
        return ops.gru_layer(xg, *state, w_hh, getattr(self, "bias_hh" + sfx, None), lengths, reverse)


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


class _Recurrent(_DenseWeights, nn.Module):
    """What the multi-layer modules and the cells share: initialisation, from_torch, and one layer
    and direction (`_layer`) on the ops of their weight storage (_DenseWeights, _Int8Weights or
    _BSRRecurrentWeights, which come before it in the MRO)."""
    _mode = ""  # "LSTM" or "GRU"
    _gates = 0

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            nn.init.uniform_(w, -stdv, stdv)

    @classmethod
    def from_torch(cls, m: nn.Module):
        """A fused copy of the nn.LSTM / nn.GRU / nn.LSTMCell / nn.GRUCell cls stands in for, with
        the same weights, device and dtype (a pruned module's masked weights)."""
        w0 = m.weight_ih_l0 if hasattr(m, "weight_ih_l0") else m.weight_ih
        return _copy_weights(cls(**cls.init_args(m), **_where(w0)), m)

    def _states(self, hx, x, shapes, unbatched, dim):
        """The initial states [h_0] (GRU) or [h_0, c_0] (LSTM, hx a tuple): zeros of `shapes` without
        hx, else its tensors, each checked against its shape; with unbatched input they are dim-D
        and get the batch dim (of 1) at dim - 1."""
        name = type(self).__name__
        if hx is None:
            return [x.new_zeros(s) for s in shapes]
        if self._mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{name}: expected `hx` to be a tuple (h_0, c_0), got {type(hx).__name__}")
            hx = list(hx)
        else:
            hx = [hx]
        out = []
        for arg, s, shape in zip(["hx[0]", "hx[1]"] if self._mode == "LSTM" else ["hx"], hx, shapes):
            if unbatched and isinstance(s, Tensor):
                if s.dim() != dim:
                    raise ValueError(f"{name}: for unbatched {dim}-D `input`, expected `{arg}` to be {dim}-D, "
                                     f"got {s.dim()}-D")
                s = s.unsqueeze(dim - 1)
            _check_state(name, arg, s, shape, x)
            out.append(s)
        return out

    def _layer(self, x, state, sfx, lengths=None, reverse=False):
        """One layer and direction over x [T, B, I] from state [h_0] (GRU) or [h_0, c_0] (LSTM): the
        op's (y, h_n[, c_n]). The weights are `<name><sfx>`: sfx "" in the cells, "_l<layer>" or
        "_l<layer>_reverse" in the multi-layer modules."""
        return self._recurrence(self._input_gates(x, sfx), state, sfx, lengths, reverse)

    def _input_gates(self, x, sfx):
        """xg [T, B, G]: x @ W_ih^T + bias for all T timesteps as one GEMM ([T*B, I] rows)."""
        T, B = x.shape[:2]
        b = self._input_bias(sfx) if self.bias else None
        return self._linear(x.reshape(T * B, x.shape[2]), "weight_ih" + sfx, b).unflatten(0, (T, B))


class _FusedRNNBase(_Recurrent):
    """The multi-layer LSTM / GRU modules. Beyond torch's: an empty sequence (T = 0, which torch
    rejects) gives an empty output and h_n = h_0."""

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
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                y, *fin = self._layer(x, [s[idx] for s in states], sfx, lengths, bool(d))
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
        L = self.num_layers * D
        shapes = [(L, B, P), (L, B, self.hidden_size)] if self._mode == "LSTM" else [(L, B, P)]
        return self._states(hx, x, shapes, unbatched, 2)


class FusedLSTM(_FusedRNNBase):
    """nn.LSTM on compress's fused recurrence (compress.ops.lstm_layer). Same arguments and outputs:
    forward(input, (h_0, c_0) = zeros) -> (output, (h_n, c_n)); input [T, B, I] ([B, T, I] with
    batch_first, [T, I] unbatched) or a PackedSequence."""
    _mode, _gates = "LSTM", 4


class _GRUArgs:
    """The constructor of FusedGRU and Int8GRU: nn.GRU's arguments (nn.LSTM's but proj_size)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype)


class FusedGRU(_GRUArgs, _FusedRNNBase):
    """nn.GRU on compress's fused recurrence (compress.ops.gru_layer). Same arguments and outputs:
    forward(input, h_0 = zeros) -> (output, h_n)."""
    _mode, _gates = "GRU", 3


class _FusedCellBase(_Recurrent):
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

    @classmethod
    def init_args(cls, m: nn.Module) -> dict:
        """The constructor arguments of `m` (a torch or compress cell; no device, dtype)."""
        return {"input_size": m.input_size, "hidden_size": m.hidden_size, "bias": m.bias}

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def forward(self, input, hx=None):
        x, states, unbatched = self._prepare(input, hx)
        _, *out = self._layer(x.unsqueeze(0), states, "")  # one step: the ops' T = 1
        if unbatched:
            out = [s.squeeze(0) for s in out]
        return tuple(out) if self._mode == "LSTM" else out[0]

    def _prepare(self, input, hx):
        _check_input(type(self).__name__, input, self.input_size, self.weight_ih, (1, 2), self._any_float_input)
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        shapes = [(x.shape[0], self.hidden_size)] * (2 if self._mode == "LSTM" else 1)
        return x, self._states(hx, x, shapes, unbatched, 1), unbatched


class FusedLSTMCell(_FusedCellBase):
    """nn.LSTMCell on compress.ops.lstm_layer (T = 1): forward(input [B, I] or [I], (h, c) = zeros) -> (h', c')."""
    _mode, _gates = "LSTM", 4


class FusedGRUCell(_FusedCellBase):
    """nn.GRUCell on compress.ops.gru_layer (T = 1): forward(input [B, I] or [I], h = zeros) -> h'."""
    _mode, _gates = "GRU", 3


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


class _CompressedWeights:
    """What the Int8 and Sparse storages share: conversion from a float module (`_convert`) and back
    (float_state_dict). A storage says which buffer holds a compressed weight (`_compressed_of`, its
    first part; `_is_part` the others) and how to pack and unpack it (`_compress`, `_decompress`);
    every other tensor is copied as it is."""

    @classmethod
    def _convert(cls, m: nn.Module, fn: str, **kw):
        """A new cls with m's weights (m: the torch module cls stands in for, or its Fused version;
        a pruned module's masked weights); kw: further constructor arguments."""
        w0 = _check_source(cls, m, fn)
        new = cls(**cls.init_args(m), **kw, **_where(w0))
        with torch.no_grad():
            for name, t in list(new.named_buffers(recurse=False)):
                w = new._compressed_of(name, t)
                if w is not None:
                    new._compress(w, getattr(m, w).detach())
                elif not new._is_part(name):
                    t.copy_(getattr(m, name))
        new.train(m.training)
        return new

    def float_state_dict(self) -> dict:
        """The dense float weights this module computes with (int8 ones dequantized in float32),
        under torch's names: load it into the nn.LSTM / nn.GRU / cell (or Fused module) it stands in
        for to get a float twin."""
        out = {}
        for name, t in self.named_buffers(recurse=False):
            w = self._compressed_of(name, t)
            if w is not None:
                out[w] = self._decompress(w)
            elif not self._is_part(name):
                out[name] = t
        return out


# ---------------------------------------------------------------------------------------------
# int8 weights: Int8LSTM, Int8GRU, Int8LSTMCell, Int8GRUCell

class _Int8Weights(_CompressedWeights):
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
        return cls._convert(m, "from_float")

    def _compressed_of(self, name, t):
        return name if t.dtype == torch.int8 else None

    def _is_part(self, name):
        return name.endswith("_scale")

    def _compress(self, w, dense):
        q, scale = ops.quantize_per_token(dense.float())
        getattr(self, w).copy_(q)
        getattr(self, w + "_scale").copy_(scale)

    def _decompress(self, w):
        return getattr(self, w).float() * getattr(self, w + "_scale")[:, None]

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

    def _w8(self, name):
        """(int8 weight, its scales), or (None, None) where the module has no `name` (weight_hr)."""
        return getattr(self, name, None), getattr(self, name + "_scale", None)

    def _input_bias(self, sfx):
        # an LSTM's b_ih + b_hh summed in float32: w8a16_linear takes a bias of any float dtype
        b_ih = getattr(self, "bias_ih" + sfx)
        return b_ih.float() + getattr(self, "bias_hh" + sfx).float() if self._mode == "LSTM" else b_ih

    def _linear(self, x, name, b):
        return ops.w8a16_linear(x, *self._w8(name), b)

    def _recurrence(self, xg, state, sfx, lengths, reverse):
        w_hh = self._w8("weight_hh" + sfx)
        if self._mode == "LSTM":
            return ops.lstm_layer_w8(xg, *state, *w_hh, *self._w8("weight_hr" + sfx), lengths, reverse)
        return ops.gru_layer_w8(xg, *state, *w_hh, self._bias("bias_hh" + sfx, xg), lengths, reverse)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", int8 weights"


class Int8LSTM(_Int8Weights, _FusedRNNBase):
    """nn.LSTM with int8 weights (see _Int8Weights): Int8LSTM.from_float(lstm). Per layer and
    direction: the input projection of all timesteps is one ops.w8a16_linear (b_ih + b_hh folded
    in), the recurrence one ops.lstm_layer_w8 (int8 weight_hh and weight_hr)."""
    _mode, _gates = "LSTM", 4


class Int8GRU(_Int8Weights, _GRUArgs, _FusedRNNBase):
    """nn.GRU with int8 weights (see _Int8Weights): Int8GRU.from_float(gru). Input projection
    ops.w8a16_linear (b_ih folded in), recurrence ops.gru_layer_w8."""
    _mode, _gates = "GRU", 3


class Int8LSTMCell(_Int8Weights, _FusedCellBase):
    """nn.LSTMCell with int8 weights: forward(input [B, I] or [I], (h, c) = zeros) -> (h', c')."""
    _mode, _gates = "LSTM", 4


class Int8GRUCell(_Int8Weights, _FusedCellBase):
    """nn.GRUCell with int8 weights: forward(input [B, I] or [I], h = zeros) -> h'."""
    _mode, _gates = "GRU", 3


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


class _BSRRecurrentWeights(_CompressedWeights):
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
        return cls._convert(m, "from_dense", block=block)

    def _compressed_of(self, name, t):
        return name[: -len("_crow")] if name.endswith("_crow") else None

    def _is_part(self, name):
        return name.endswith(_BSR_PARTS[1:])

    def _compress(self, w, dense):
        b = formats.to_bsr(dense, self.block)
        for part, v in zip(_BSR_PARTS, (b.crow, b.col, b.values)):
            setattr(self, w + part, v)

    def _decompress(self, w):
        return formats.from_bsr(formats.BSR(*self._bsr(w), self._hh_shape()))

    def _hh_shape(self):
        P = getattr(self, "proj_size", 0) or self.hidden_size
        return (self._gates * self.hidden_size, P)

    def _bsr(self, name):
        return tuple(getattr(self, name + part) for part in _BSR_PARTS)

    def _recurrence(self, xg, state, sfx, lengths, reverse):
        # getattr(..., None) as _DenseWeights'; weight_hr (proj_size) stays dense
        w_hh = self._bsr("weight_hh" + sfx)
        if self._mode == "LSTM":
            return ops.lstm_layer_bsr(xg, *state, *w_hh, getattr(self, "weight_hr" + sfx, None), lengths, reverse)
        return ops.gru_layer_bsr(xg, *state, *w_hh, getattr(self, "bias_hh" + sfx, None), lengths, reverse)

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


class _SparseCellBase(_BSRRecurrentWeights, _FusedCellBase):
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, block=(32, 32), device=None,
                 dtype=None):
        self.block = _check_block(type(self).__name__, block, hidden_size)
        super().__init__(input_size, hidden_size, bias, device, dtype)


class SparseLSTMCell(_SparseCellBase):
    """nn.LSTMCell with a block-sparse recurrent weight: forward(input, (h, c) = zeros) -> (h', c')."""
    _mode, _gates = "LSTM", 4


class SparseGRUCell(_SparseCellBase):
    """nn.GRUCell with a block-sparse recurrent weight: forward(input, h = zeros) -> h'."""
    _mode, _gates = "GRU", 3


SPARSE = {nn.LSTM: SparseLSTM, nn.GRU: SparseGRU, nn.LSTMCell: SparseLSTMCell, nn.GRUCell: SparseGRUCell}
