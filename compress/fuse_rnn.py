"""compress.fuse_rnn(model): swap nn.LSTM / nn.GRU / nn.LSTMCell / nn.GRUCell for their fused
drop-ins (compress.nn.rnn), in place and keeping the weights; returns the project's Report."""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from compress import ops
from compress.nn.rnn import FUSED
from compress.quantize import _parent
from compress.report import Report


def fuse_rnn(model: nn.Module, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> Report:
    """Replace every nn.LSTM, nn.GRU, nn.LSTMCell and nn.GRUCell in `model` in place.

    filter_fn(module, name) -> bool: convert only where it returns True. Subclasses of those types
    are left alone (their forward may differ from torch's), as is the model itself when it is one
    (it cannot be replaced in place: use FusedLSTM.from_torch and friends)."""
    report = Report("fuse_rnn")
    for name, mod in list(model.named_modules()):
        base = next((t for t in FUSED if isinstance(mod, t)), None)
        if base is None:
            continue
        w = next(iter(mod.parameters()), None)
        reason = None
        if type(mod) is not base:
            reason = f"a subclass of nn.{base.__name__} ({type(mod).__name__}); its forward may differ from torch's"
        elif name == "":
            reason = f"the model itself is an nn.{base.__name__} and cannot be replaced in place; use " \
                     f"{FUSED[base].__name__}.from_torch"
        elif filter_fn is not None and not filter_fn(mod, name):
            reason = "excluded by filter_fn"
        elif w is None or w.device.type == "meta":
            reason = "weights on the meta device (not materialised)"
        if reason is not None:
            report.add(name, type(mod).__name__, reason=reason)
            continue
        new = FUSED[base].from_torch(mod)
        parent, attr = _parent(model, name)
        setattr(parent, attr, new)
        op = "lstm_layer" if base in (nn.LSTM, nn.LSTMCell) else "gru_layer"
        backend, why = ops.resolve(op, w.device)
        details = {"op": op, "backend": backend, "backend_reason": why}
        if base in (nn.LSTM, nn.GRU):
            details.update(layers=mod.num_layers, bidirectional=mod.bidirectional)
            if base is nn.LSTM and mod.proj_size:
                details["proj_size"] = mod.proj_size
        report.add(name, type(mod).__name__, type(new).__name__, **details)
    return report
