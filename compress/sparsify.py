"""compress.sparsify(model): run pruned nn.Linear layers in a sparse format, chosen per layer, and
pruned LSTM / GRU layers and cells with block-sparse (BSR) recurrent weights where that pays."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from compress import formats, ops
from compress.benchmark import time_ms
from compress.nn.rnn import FUSED, SPARSE
from compress.nn.sparse_linear import FORMATS, SparseLinear
from compress.pruning import _kind  # the pre-parametrization class name
from compress.quantize import _parent, _rnn_candidate
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
        mod = dense
        if why is None and fmt != "dense":
            mod = SparseLinear.from_dense(linear, fmt, block)
            why = _larger(mod, dense)
        if why:
            skipped.append(f"{fmt}: {why}")
            continue
        key = (dev_name, tuple(w.shape), w.dtype, batch, fmt, tuple(block), pattern)
        if key not in _TIMINGS:
            with torch.no_grad():
                _TIMINGS[key] = time_ms(lambda: mod(x), dev, warmup=2, min_reps=5, min_seconds=0.05)["ms"]
        times[fmt] = _TIMINGS[key]
    best = min(times, key=times.get)
    measured = ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(times.items(), key=lambda kv: kv[1]))
    reason = f"fastest at batch {batch} on {dev_name}: {measured}" + (f" (not tried: {'; '.join(skipped)})" if skipped else "")
    return best, reason, times


def nbytes(module: nn.Module) -> int:
    """Bytes held by `module`'s parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def _larger(sparse: nn.Module, dense: nn.Module) -> str | None:
    """Why "auto" refuses `sparse`: it would take more memory than the dense module (a compression
    method never grows the model, e.g. CSR with int32 indices at 50% sparsity). None if it is not larger."""
    a, b = nbytes(sparse), nbytes(dense)
    return f"larger than dense ({a} bytes vs {b})" if a > b else None


# RNNs: the recurrence of a [_RNN_STEPS, batch, input_size] input is what the timing compares.
_RNN_STEPS = 16
_RNN_OP = {nn.LSTM: "lstm_layer_bsr", nn.LSTMCell: "lstm_layer_bsr", nn.GRU: "gru_layer_bsr",
           nn.GRUCell: "gru_layer_bsr"}


def _recurrent_weights(mod: nn.Module) -> list[torch.Tensor]:
    """The weight_hh matrices of an LSTM / GRU (every layer and direction) or cell, masked if pruned."""
    if not hasattr(mod, "num_layers"):
        return [mod.weight_hh.detach()]
    sfxs = ("", "_reverse")[: 2 if mod.bidirectional else 1]
    return [getattr(mod, f"weight_hh_l{layer}{sfx}").detach() for layer in range(mod.num_layers) for sfx in sfxs]


def rnn_block(hidden_size: int, block) -> tuple:
    """The BSR block for an RNN's recurrent weight: block rows must divide hidden_size (a block row
    lies within one gate), so gcd(block[0], H) rows, which still tiles a weight that compress.prune
    pruned with `block` exactly; block[1] columns."""
    return math.gcd(block[0], hidden_size), block[1]


def _time_rnn(kind, mod: nn.Module, blk, batch: int) -> dict:
    """{"dense": ms, "bsr": ms}: the Fused module (dense recurrence) and the Sparse one on `mod`'s
    device, one forward of [_RNN_STEPS, batch, input_size] (cells: [batch, input_size])."""
    ws = _recurrent_weights(mod)
    dev, dtype = ws[0].device, ws[0].dtype
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    shape = (mod.input_size, mod.hidden_size, getattr(mod, "proj_size", 0), getattr(mod, "num_layers", 1),
             getattr(mod, "bidirectional", False))
    pattern = round(sum(float((w != 0).sum()) for w in ws) / sum(w.numel() for w in ws), 3)
    lead = (batch,) if kind in (nn.LSTMCell, nn.GRUCell) else (_RNN_STEPS, batch)
    x = torch.randn(*lead, mod.input_size, device=dev, dtype=dtype)
    times = {}
    for fmt in ("dense", "bsr"):
        key = (dev_name, kind.__name__, shape, dtype, batch, fmt, blk, pattern)
        if key not in _TIMINGS:
            m = FUSED[kind].from_torch(mod) if fmt == "dense" else SPARSE[kind].from_dense(mod, blk)
            m.eval()
            with torch.no_grad():
                _TIMINGS[key] = time_ms(lambda: m(x), dev, warmup=2, min_reps=5, min_seconds=0.05)["ms"]
        times[fmt] = _TIMINGS[key]
    return times


def _sparsify_rnn(model, name, mod, kind, reason, format, block, batch, report) -> None:
    if reason is not None:
        report.add(name, _kind(mod), reason=reason)
        return
    ws = _recurrent_weights(mod)
    sparsity = round(1.0 - sum(float((w != 0).sum()) for w in ws) / sum(w.numel() for w in ws), 4)
    if sparsity == 0:
        report.add(name, _kind(mod), reason="no zero recurrent weights (prune it first)")
        return
    if format not in ("auto", "bsr"):
        report.add(name, _kind(mod), reason=f"format {format!r} is not for RNNs: their recurrent kernels run BSR "
                                            f"(format 'bsr' or 'auto')", sparsity=sparsity)
        return
    blk = rnn_block(mod.hidden_size, block)
    stored = sum(formats.to_bsr(w, blk).col.numel() for w in ws)
    blocks = sum((w.shape[0] // blk[0]) * -(-w.shape[1] // blk[1]) for w in ws)
    if stored == blocks:
        report.add(name, _kind(mod), reason=f"does not fit bsr: no {blk[0]}x{blk[1]} block of the recurrent weights "
                                            f"is entirely zero", sparsity=sparsity)
        return
    op = _RNN_OP[kind]
    dev = ws[0].device
    backend, _ = ops.resolve(op, dev)
    details = {"format": "bsr", "block": blk, "sparsity": sparsity, "block_density": round(stored / blocks, 4)}
    if blk[0] != block[0]:
        details["block_note"] = f"block rows {block[0]} -> {blk[0]} to divide hidden_size = {mod.hidden_size}"
    if format == "auto":
        larger = _larger(SPARSE[kind].from_dense(mod, blk), FUSED[kind].from_torch(mod))
        if larger:
            report.add(name, _kind(mod), reason=f"kept dense: bsr {larger}", **details)
            return
        if backend == "reference":
            report.add(name, _kind(mod), reason=f"kept dense: only the slow reference backend runs {op} on {dev}",
                       **details)
            return
        times = _time_rnn(kind, mod, blk, batch)
        dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        steps = "" if kind in (nn.LSTMCell, nn.GRUCell) else f", {_RNN_STEPS} steps"
        measured = ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(times.items(), key=lambda kv: kv[1]))
        why = f"fastest at batch {batch}{steps} on {dev_name}: {measured} (dense: the fused dense recurrence)"
        if times["bsr"] >= times["dense"]:
            report.add(name, _kind(mod), reason=f"kept dense: {why}", **details)
            return
    else:
        why = "chosen by the caller"
    new = SPARSE[kind].from_dense(mod, blk)
    parent, attr = _parent(model, name)
    setattr(parent, attr, new)
    report.add(name, _kind(mod), type(new).__name__, **details, op=op, backend=backend,
               sparse_part="recurrent weights (weight_hh); input projection dense", why=why)


def sparsify(model: nn.Module, format: str = "auto", block=(32, 32), batch: int = 16,
             filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> Report:
    """Replace pruned nn.Linear layers of `model` (in place) with SparseLinear, and pruned LSTM /
    GRU layers and cells (torch's or compress's Fused ones) with SparseLSTM, ...; return a Report.

    format: "2:4", "bsr", "csr", "channel", or "auto": per layer, the fastest of the formats its
        weight suits and the dense layer itself, timed on the layer's device at `batch` rows
        (measured once per shape and cached); dense layers stay nn.Linear when nothing beats them.
        "auto" never picks a format that takes more memory than the dense weight (CSR at 50%).
        RNNs run their recurrent weights in BSR ("bsr", or "auto": when the Sparse module beats the
        Fused dense one over 16 steps at `batch` rows); other formats leave them dense.
    block: BSR block (rows, cols). For an RNN the block rows become gcd(rows, hidden_size) (see
        rnn_block). Layers without zero weights are left alone."""
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"sparsify: expected `format` in {('auto',) + FORMATS}, got {format!r}")
    if (not isinstance(block, (tuple, list)) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)):
        raise ValueError(f"sparsify: expected `block` as (rows, cols) of positive ints, got {block!r}")
    report = Report("sparsify")
    block = tuple(block)
    for name, mod in list(model.named_modules()):
        rnn, reason = _rnn_candidate(model, name, mod, filter_fn, SPARSE, "from_dense")
        if rnn is not None:
            _sparsify_rnn(model, name, mod, rnn, reason, format, block, batch, report)
            continue
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
