"""compress.sparsify(model): run pruned nn.Linear layers in a sparse format, chosen per layer."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from compress import formats, ops
from compress.benchmark import time_ms
from compress.nn.sparse_linear import FORMATS, SparseLinear
from compress.report import Report

_OP = {"2:4": "sparse24_linear", "bsr": "bsr_linear", "csr": "csr_linear", "channel": None}
# (device name, N, K, dtype, batch, format, block, nonzero pattern summary) -> ms; measured once per process
_TIMINGS: dict = {}


def _fits(w: torch.Tensor, fmt: str, block) -> Optional[str]:
    """None if the weight suits the format (and the format would skip work), else why not."""
    nz = w != 0
    if fmt == "2:4":
        if w.shape[1] % 4:
            return f"K = {w.shape[1]} is not divisible by 4"
        if (nz.reshape(w.shape[0], -1, 4).sum(-1) > 2).any():
            return "not 2:4 sparse"
        return None
    if fmt == "channel":
        dead = int((~nz.any(dim=1)).sum())
        return None if dead else "no output row is entirely zero"
    if fmt == "bsr":
        return None if formats.to_bsr(w, block).density < 1 else f"no {block[0]}x{block[1]} block is entirely zero"
    return None if not nz.all() else "no zero weights"


def _backend_reason(fmt: str, device: torch.device) -> Optional[str]:
    op = _OP[fmt]
    if op is None:
        return None
    name, _ = ops.resolve(op, device)
    return f"only the slow reference backend runs {op} on {device}" if name == "reference" else None


def choose_format(linear: nn.Linear, batch: int = 16, block=(32, 32)) -> tuple[str, str, dict]:
    """(format or "dense", reason, {candidate: ms}) for `linear` on its device, by timing each
    suitable format and the dense nn.Linear on a [batch, in_features] input (cached per process)."""
    w = linear.weight.detach()
    dev = w.device
    x = torch.randn(batch, linear.in_features, device=dev, dtype=w.dtype)
    dense = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None, device=dev, dtype=w.dtype)
    with torch.no_grad():
        dense.weight.copy_(w)
    skipped, times = [], {}
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    pattern = (round((w != 0).float().mean().item(), 3),)
    for fmt in ("dense",) + FORMATS:
        why = None if fmt == "dense" else (_fits(w, fmt, block) or _backend_reason(fmt, dev))
        if why:
            skipped.append(f"{fmt}: {why}")
            continue
        key = (dev_name, tuple(w.shape), w.dtype, batch, fmt, tuple(block), pattern)
        if key not in _TIMINGS:
            mod = dense if fmt == "dense" else SparseLinear.from_dense(linear, fmt, block)
            with torch.no_grad():
                _TIMINGS[key] = time_ms(lambda: mod(x), dev, warmup=2, min_reps=5, min_seconds=0.05)["ms"]
        times[fmt] = _TIMINGS[key]
    best = min(times, key=times.get)
    measured = ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(times.items(), key=lambda kv: kv[1]))
    reason = f"fastest at batch {batch} on {dev_name}: {measured}" + (f" (not tried: {'; '.join(skipped)})" if skipped else "")
    return best, reason, times


def sparsify(model: nn.Module, format: str = "auto", block=(32, 32), batch: int = 16,
             filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> Report:
    """Replace pruned nn.Linear layers of `model` (in place) with SparseLinear; return a Report.

    format: "2:4", "bsr", "csr", "channel", or "auto": per layer, the fastest of the formats its
        weight suits and the dense layer itself, timed on the layer's device at `batch` rows
        (measured once per shape and cached); dense layers stay nn.Linear when nothing beats them.
    block: BSR block (rows, cols). Layers without zero weights are left alone."""
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"sparsify: expected `format` in {('auto',) + FORMATS}, got {format!r}")
    from compress.pruning import _kind  # the pre-parametrization class name
    from compress.quantize import _parent
    report = Report("sparsify")
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear):
            continue
        kind = _kind(mod)
        w = mod.weight.detach()
        sparsity = round(1.0 - (w != 0).float().mean().item(), 4)
        if name == "":
            report.add(name, kind, reason="the model itself is an nn.Linear; use SparseLinear.from_dense")
            continue
        if filter_fn is not None and not filter_fn(mod, name):
            report.add(name, kind, reason="excluded by filter_fn")
            continue
        if sparsity == 0:
            report.add(name, kind, reason="no zero weights (prune it first)")
            continue
        if format == "auto":
            fmt, why, _ = choose_format(mod, batch, block)
            if fmt == "dense":
                report.add(name, kind, reason=f"kept dense: {why}", sparsity=sparsity)
                continue
        else:
            fmt, why = format, "chosen by the caller"
            misfit = _fits(w, fmt, block)
            if misfit:
                report.add(name, kind, reason=f"does not fit {fmt}: {misfit}", sparsity=sparsity)
                continue
        new = SparseLinear.from_dense(mod, fmt, block)
        parent, attr = _parent(model, name)
        setattr(parent, attr, new)
        details = {"format": fmt, "sparsity": sparsity}
        if fmt == "bsr":
            details["block"] = tuple(block)
        details["backend"] = ops.resolve(_OP[fmt], w.device)[0] if _OP[fmt] else "torch (dense GEMM on kept rows)"
        details["why"] = why
        report.add(name, kind, "SparseLinear", **details)
    return report
