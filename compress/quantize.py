"""compress.quantize(model): swap nn.Linear layers for int8 ones, and nn.LSTM / nn.GRU / their cells
(torch's or compress's Fused versions) for int8-weight fused modules, in place; report what happened."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from compress import ops
from compress.nn.int8_linear import MODES, Int8Linear, QATLinear
from compress.nn.rnn import FUSED, INT8
from compress.pruning import _kind
from compress.report import Report

# The recurrence op each converted RNN runs, by the torch type it stands in for.
_RNN_OP = {nn.LSTM: "lstm_layer", nn.LSTMCell: "lstm_layer", nn.GRU: "gru_layer", nn.GRUCell: "gru_layer"}


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, attr = name.split(".")
    parent = model
    for p in path:
        parent = getattr(parent, p)
    return parent, attr


def _rnn_type(mod: nn.Module):
    """nn.LSTM, nn.GRU, nn.LSTMCell or nn.GRUCell if `mod` is one, compress's Fused version of one,
    or a subclass of either; else None."""
    return next((t for t, fused in FUSED.items() if isinstance(mod, (t, fused))), None)


def _rnn_candidate(model: nn.Module, name: str, mod: nn.Module, filter_fn, table: dict, method: str):
    """(torch type, reason) for a module of _rnn_type: reason None if it can be converted with
    table[type].method, else why not. A pruned module counts as its own class (parametrize
    subclasses it behind the scenes). (None, None) for any other module."""
    kind = _rnn_type(mod)
    if kind is None:
        return None, None
    cls = type(mod).__bases__[0] if parametrize.is_parametrized(mod) else type(mod)
    if cls not in (kind, FUSED[kind]):
        base = f"nn.{kind.__name__}" if isinstance(mod, kind) else FUSED[kind].__name__
        return kind, f"a subclass of {base} ({cls.__name__}); its forward may differ from {base}'s"
    if name == "":
        return kind, (f"the model itself (an {cls.__name__}) cannot be replaced in place; use "
                      f"{table[kind].__name__}.{method}")
    if filter_fn is not None and not filter_fn(mod, name):
        return kind, "excluded by filter_fn"
    w = next(iter(mod.parameters()), None)
    if w is None or w.device.type == "meta":
        return kind, "weights on the meta device (not materialised)"
    return kind, None


def _candidates(model: nn.Module, filter_fn):
    """(name, module, reason) for every nn.Linear and RNN (see _rnn_type) in module order; reason is
    None where it can be replaced, else why it is left alone."""
    out = []
    for name, mod in model.named_modules():
        kind, reason = _rnn_candidate(model, name, mod, filter_fn, INT8, "from_float")
        if kind is not None:
            out.append((name, mod, reason))
            continue
        if not isinstance(mod, nn.Linear):
            continue
        reason = None
        if name == "":
            reason = "the model itself is an nn.Linear and cannot be replaced in place; use Int8Linear.from_float"
        elif isinstance(_parent(model, name)[0], nn.MultiheadAttention):
            reason = "nn.MultiheadAttention reads this layer's .weight directly in its fused functional path"
        elif filter_fn is not None and not filter_fn(mod, name):
            reason = "excluded by filter_fn"
        elif mod.weight.device.type == "meta":
            reason = "weight on the meta device (not materialised)"
        out.append((name, mod, reason))
    return out


def _run(model, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


@torch.no_grad()
def _calibrate(model: nn.Module, targets, calibration: Iterable) -> dict:
    """Per-input-channel absmax of each target's input over the calibration batches."""
    stats: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in targets:
        def hook(m, args, name=name):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            if x.numel():
                amax = x.abs().amax(dim=0)
                stats[name] = amax if name not in stats else torch.maximum(stats[name], amax)
        hooks.append(mod.register_forward_pre_hook(hook))
    try:
        for batch in calibration:
            _run(model, batch)
    finally:
        for h in hooks:
            h.remove()
    return stats


def _smoothquant_factors(act_max: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant (Xiao et al. 2023): s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) per input channel
    j; X / s and W * s move activation outliers into the weight. Channels never active keep s = 1."""
    w_max = weight.detach().float().abs().amax(dim=0).to(act_max.device)
    s = act_max.clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1 - alpha)
    return torch.where(act_max > 0, s, torch.ones_like(s))


def _quantize_rnn(model: nn.Module, name: str, mod: nn.Module, report: Report) -> None:
    kind = _rnn_type(mod)
    new = INT8[kind].from_float(mod)
    parent, attr = _parent(model, name)
    setattr(parent, attr, new)
    op = _RNN_OP[kind] + "_w8"
    backend, why = ops.resolve(op, next(new.buffers()).device)
    report.add(name, _kind(mod), type(new).__name__, mode="w8 (float activations)", bits=8, op=op, backend=backend,
               backend_reason=why)


def quantize(model: nn.Module, mode: str = "w8a8", filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
             calibration: Optional[Iterable] = None, alpha: Optional[float] = 0.5, qat: bool = False) -> Report:
    """Replace every nn.Linear in `model` in place, as torchao's quantize_ does, and every nn.LSTM,
    nn.GRU, nn.LSTMCell, nn.GRUCell (or compress's Fused version of one) by its int8-weight fused
    module (Int8LSTM, ...); return a Report.

    mode: "w8a8" (int8 weights and activations) or "w8a16" (int8 weights only) for nn.Linear.
        RNNs get int8 weights with float activations in either mode (their recurrence carries the
        state in float; report entries say mode="w8 (float activations)").
    filter_fn(module, name) -> bool: convert only where it returns True.
    calibration: optional iterable of model inputs (a tensor, a tuple of args or a dict of kwargs
        per batch). With it, w8a8 layers get static activation scales, and with `alpha` not None
        SmoothQuant outlier migration (alpha = migration strength, 0.5 by default).
    qat: swap in QATLinear (trainable, int8 numerics simulated with straight-through gradients)
        instead; a later quantize(model) turns those into Int8Linear with the learned weights.
        RNNs are left float (reported): the later quantize(model) converts them after training.
    """
    if mode not in MODES:
        raise ValueError(f"quantize: expected `mode` in {MODES}, got {mode!r}")
    report = Report("quantize (QAT)" if qat else "quantize")
    candidates = _candidates(model, filter_fn)
    targets = [(name, lin) for name, lin, reason in candidates if reason is None and isinstance(lin, nn.Linear)]
    if qat:
        for name, lin, reason in candidates:
            if reason is None and not isinstance(lin, nn.Linear):
                reason = ("QAT covers nn.Linear only (no fake-quantized recurrent module); quantize(model) "
                          "after training gives it int8 weights")
            if isinstance(lin, QATLinear):
                reason = "already a QATLinear"
            if reason is not None:
                report.add(name, _kind(lin), reason=reason)
                continue
            parent, attr = _parent(model, name)
            setattr(parent, attr, QATLinear.from_float(lin, mode))
            report.add(name, _kind(lin), "QATLinear", mode=mode, bits=8)
        return report

    stats = {}
    if calibration is not None and mode == "w8a8":
        stats = _calibrate(model, targets, calibration)
    for name, lin, reason in candidates:
        if reason is not None:
            report.add(name, _kind(lin), reason=reason)
            continue
        if not isinstance(lin, nn.Linear):
            _quantize_rnn(model, name, lin, report)
            continue
        layer_mode = lin.mode if isinstance(lin, QATLinear) else mode
        smooth, input_scale, details = None, None, {}
        if name in stats and layer_mode == "w8a8":
            act_max = stats[name]
            if alpha is not None:
                smooth = _smoothquant_factors(act_max, lin.weight, alpha)
                act_max = act_max / smooth
                details["smoothquant_alpha"] = alpha
            input_scale = max(float(act_max.max()), 1e-8) / 127
            details["activation"] = "static"
        elif layer_mode == "w8a8":
            details["activation"] = "dynamic per-row" + (" (no calibration data reached it)" if stats else "")
        new = Int8Linear.from_float(lin, layer_mode, smooth=smooth, input_scale=input_scale)
        parent, attr = _parent(model, name)
        setattr(parent, attr, new)
        op = "int8_linear" if layer_mode == "w8a8" else "w8a16_linear"
        backend, _ = ops.resolve(op, new.weight.device)
        report.add(name, _kind(lin), "Int8Linear", mode=layer_mode, bits=8, backend=backend, **details)
    return report
