"""Magnitude pruning with kept masks: compress.prune, compress.GradualPruner, compress.distill_loss.

Pure PyTorch, any device. What is pruned: the weight of every nn.Linear, and every weight matrix
of nn.LSTM / nn.GRU / nn.LSTMCell / nn.GRUCell and compress's fused versions of them (weight_ih_*,
weight_hh_*, weight_hr_*; each matrix is pruned as its own [out, in] weight, and the report has one
entry per matrix, named `module.parameter`). A pruned weight is kept dense as a parametrization
(torch.nn.utils.parametrize): `layer.weight` is always `original * mask`, so training with any
optimizer leaves the pruned weights at zero. `compress.prune.remove(model)` bakes the masks in.
Structures (weight W [out, in]; for an RNN's stacked gates [G*H, in], so a block of rows lies
within one gate when the block height divides H):
  unstructured  the smallest |w|
  2:4           in every 4 consecutive inputs of a row, the 2 smallest |w| (sparse tensor cores)
  block         whole (rows x cols) blocks with the smallest L1 norm (edge blocks are partial)
  channel       whole output rows with the smallest L1 norm (sparsify runs the kept rows densely)
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from compress.report import Report

STRUCTURES = ("unstructured", "2:4", "block", "channel")
SCOPES = ("layer", "global")


class WeightMask(nn.Module):
    """Parametrization: weight = original * mask (mask a bool buffer, saved in the state_dict)."""

    def __init__(self, mask: Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: Tensor) -> Tensor:
        return w * self.mask.to(w.dtype)


def _mask_of(module: nn.Module, pname: str = "weight") -> Optional[WeightMask]:
    if parametrize.is_parametrized(module, pname):
        for p in getattr(module.parametrizations, pname):
            if isinstance(p, WeightMask):
                return p
    return None


# --- scores: one value per prunable unit, and how to expand unit keep-flags to a weight mask ---

def _block_view(w: Tensor, block) -> Tensor:
    """|w| summed over (bn x bk) blocks, zero-padded at the edges: [ceil(N/bn), ceil(K/bk)]."""
    bn, bk = block
    a = w.abs()
    N, K = a.shape
    a = F.pad(a, (0, (-K) % bk, 0, (-N) % bn))
    return a.reshape(a.shape[0] // bn, bn, a.shape[1] // bk, bk).sum(dim=(1, 3))


def _unit_scores(w: Tensor, structure: str, block) -> Tensor:
    """Scores comparable across layers (for scope="global"): mean |w| per unit."""
    w = w.detach().float()
    if structure == "unstructured":
        return w.abs()
    if structure == "channel":
        return w.abs().mean(dim=1)
    if structure == "block":
        return _block_view(w, block) / (block[0] * block[1])
    raise ValueError(structure)


def _expand(keep: Tensor, structure: str, shape, block) -> Tensor:
    if structure == "unstructured":
        return keep
    if structure == "channel":
        return keep[:, None].expand(shape).clone()
    bn, bk = block
    return keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)[: shape[0], : shape[1]].contiguous()


def _mask_2_4(w: Tensor) -> Tensor:
    N, K = w.shape
    groups = w.detach().abs().reshape(N, K // 4, 4)
    top2 = groups.topk(2, dim=-1).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top2, True).reshape(N, K)


def _unit_sizes(w: Tensor, structure: str, block) -> Tensor:
    """How many weights each unit of _unit_scores holds (edge blocks hold fewer)."""
    if structure == "unstructured":
        return torch.ones(w.shape, device=w.device)
    if structure == "channel":
        return torch.full((w.shape[0],), float(w.shape[1]), device=w.device)
    return _block_view(torch.ones(w.shape, device=w.device), block)


def _keep_top(scores: Tensor, sizes: Tensor, sparsity: float) -> Tensor:
    """Keep-flags: prune the lowest-scored units until they hold `sparsity` of all weights
    (to the nearest unit; ties broken by position)."""
    s, n = scores.flatten(), sizes.flatten().double()
    order = torch.argsort(s, stable=True)
    cum = torch.cumsum(n[order], 0)
    # a unit is pruned while the running total, counted to its middle, is under the target
    n_prune = int(((cum - n[order] / 2) < sparsity * float(n.sum())).sum())
    keep = torch.ones(s.numel(), dtype=torch.bool, device=s.device)
    keep[order[:n_prune]] = False
    return keep.view(scores.shape)


def _rnn_types() -> tuple:
    from compress.nn.rnn import _FusedCellBase, _FusedRNNBase
    return nn.RNNBase, nn.RNNCellBase, _FusedRNNBase, _FusedCellBase


def _weights_of(mod: nn.Module) -> list[str]:
    """The prunable weight matrices of a module: Linear.weight, an RNN's weight_ih/hh/hr_*."""
    if isinstance(mod, nn.Linear):
        return ["weight"]
    if isinstance(mod, _rnn_types()):
        names = [n for n, _ in mod.named_parameters(recurse=False)]
        names += list(getattr(mod, "parametrizations", {}).keys())  # already pruned ones
        return sorted({n.removeprefix("parametrizations.").split(".")[0] for n in names
                       if n.startswith(("weight_", "parametrizations.weight_"))})
    return []


def _candidates(model: nn.Module, filter_fn, structure: str):
    """([(unit name, module, parameter name)], [(unit name, module, reason)]); a unit is one
    weight matrix, named `module.parameter` for RNNs and `module` for nn.Linear."""
    out, skipped = [], []
    for name, mod in model.named_modules():
        pnames = _weights_of(mod)
        if not pnames:
            continue
        if filter_fn is not None and not filter_fn(mod, name):
            skipped.append((name, mod, "excluded by filter_fn"))
            continue
        for pname in pnames:
            unit = name if isinstance(mod, nn.Linear) else (f"{name}.{pname}" if name else pname)
            in_features = getattr(mod, pname).shape[1]
            if structure == "2:4" and in_features % 4:
                skipped.append((unit, mod, f"2:4 needs in_features divisible by 4, got {in_features}"))
            else:
                out.append((unit, mod, pname))
    return out, skipped


def _effective_weight(mod: nn.Module, pname: str = "weight") -> Tensor:
    return getattr(mod, pname).detach()


def _set_mask(mod: nn.Module, pname: str, mask: Tensor) -> None:
    existing = _mask_of(mod, pname)
    if existing is not None:
        existing.mask = mask.to(existing.mask.device)
    else:
        parametrize.register_parametrization(mod, pname, WeightMask(mask.to(getattr(mod, pname).device)))


def prune(model: nn.Module, sparsity: float = 0.5, structure: str = "unstructured", scope: str = "layer",
          block: tuple[int, int] = (32, 32), filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> Report:
    """Magnitude-prune every nn.Linear and RNN weight matrix of `model` (in place); return a Report.

    sparsity: fraction of weights zeroed (2:4 is always 0.5). scope "layer" hits it in each layer;
    "global" uses one threshold over all selected layers, so the overall zero fraction hits it while
    layers differ. Pruning again re-prunes from the current (masked) weights. Masks stay: see
    the module docstring; compress.prune.remove(model) makes them permanent."""
    if structure not in STRUCTURES:
        raise ValueError(f"prune: expected `structure` in {STRUCTURES}, got {structure!r}")
    if scope not in SCOPES:
        raise ValueError(f"prune: expected `scope` in {SCOPES}, got {scope!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"prune: expected 0 <= `sparsity` < 1, got {sparsity}")
    if structure == "block" and (len(block) != 2 or min(block) < 1):
        raise ValueError(f"prune: expected `block` as (rows, cols) >= 1, got {block}")
    report = Report("prune")
    targets, skipped = _candidates(model, filter_fn, structure)
    masks = {}
    if structure == "2:4":
        masks = {name: _mask_2_4(_effective_weight(m, pn)) for name, m, pn in targets}
    elif scope == "layer":
        for name, m, pn in targets:
            w = _effective_weight(m, pn)
            keep = _keep_top(_unit_scores(w, structure, block), _unit_sizes(w, structure, block), sparsity)
            masks[name] = _expand(keep, structure, w.shape, block)
    elif targets:
        weights = [_effective_weight(m, pn) for _, m, pn in targets]
        scores = [_unit_scores(w, structure, block) for w in weights]
        sizes = [_unit_sizes(w, structure, block) for w in weights]
        # one ranking over all layers' units, each counted by the weights it holds
        keep = _keep_top(torch.cat([s.flatten().cpu() for s in scores]),
                         torch.cat([n.flatten().cpu() for n in sizes]), sparsity)
        for (name, _, _), w, sc, part in zip(targets, weights, scores, keep.split([s.numel() for s in scores])):
            if not part.any():  # a global threshold must not delete a whole layer: keep its best unit
                part = part.clone()
                part[sc.flatten().argmax()] = True
            masks[name] = _expand(part.view(sc.shape).to(w.device), structure, w.shape, block)
    for name, mod, reason in skipped:
        report.add(name, _kind(mod), reason=reason)
    for name, mod, pname in targets:
        if name in masks:
            _set_mask(mod, pname, masks[name])
            achieved = 1.0 - masks[name].float().mean().item()
            details = {"structure": structure, "sparsity": round(achieved, 4), "scope": scope}
            if structure == "block":
                details["block"] = tuple(block)
            report.add(name, _kind(mod), f"{_kind(mod)} (masked)", **details)
    return report


def _kind(mod: nn.Module) -> str:
    # parametrize swaps the class for a generated "Parametrized<Name>" subclass
    cls = type(mod)
    return cls.__bases__[0].__name__ if parametrize.is_parametrized(mod) else cls.__name__


def remove(model: nn.Module) -> int:
    """Make the masks permanent: each pruned weight becomes the plain masked tensor.
    Returns how many weights were unmasked."""
    n = 0
    for mod in model.modules():
        if parametrize.is_parametrized(mod):
            # A deep copy shares torch's generated Parametrized<Name> class with its original, and
            # removing deletes the property from that class: give this module a class of its own first.
            cls = type(mod)
            mod.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        for pname in list(getattr(mod, "parametrizations", {}).keys()):
            if _mask_of(mod, pname) is not None:
                parametrize.remove_parametrizations(mod, pname, leave_parametrized=True)
                n += 1
    return n


prune.remove = remove  # compress.prune.remove(model)


def sparsity_of(model: nn.Module) -> float:
    """Fraction of zeros over all prunable weights (nn.Linear, RNN weight matrices)."""
    zeros = total = 0
    for mod in model.modules():
        for pname in _weights_of(mod):
            w = getattr(mod, pname).detach()
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / max(total, 1)


class GradualPruner:
    """Prune while training (Zhu & Gupta 2017): call .step() every few optimizer steps; sparsity
    rises monotonically from `initial_sparsity` to `final_sparsity` at step `steps` along
    s_t = s_f + (s_i - s_f) * (1 - t / steps)^3 ("cubic"), or linearly ("linear")."""

    def __init__(self, model: nn.Module, final_sparsity: float, steps: int, structure: str = "unstructured",
                 scope: str = "layer", schedule: str = "cubic", initial_sparsity: float = 0.0,
                 block=(32, 32), filter_fn=None):
        if schedule not in ("cubic", "linear"):
            raise ValueError(f"GradualPruner: expected `schedule` 'cubic' or 'linear', got {schedule!r}")
        if steps < 1:
            raise ValueError(f"GradualPruner: expected `steps` >= 1, got {steps}")
        if structure == "2:4":
            raise ValueError("GradualPruner: 2:4 has a fixed sparsity of 0.5; use compress.prune(structure='2:4')")
        self.model, self.final, self.initial, self.steps = model, final_sparsity, initial_sparsity, steps
        self.kwargs = {"structure": structure, "scope": scope, "block": block, "filter_fn": filter_fn}
        self.schedule, self.t = schedule, 0

    def sparsity_at(self, t: int) -> float:
        frac = min(max(t / self.steps, 0.0), 1.0)
        shape = (1 - frac) ** 3 if self.schedule == "cubic" else 1 - frac
        return self.final + (self.initial - self.final) * shape

    @property
    def sparsity(self) -> float:
        return self.sparsity_at(self.t)

    def step(self) -> Report:
        self.t = min(self.t + 1, self.steps)
        return prune(self.model, sparsity=self.sparsity, **self.kwargs)


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """Knowledge distillation (Hinton et al. 2015): KL(teacher || student) on temperature-softened
    distributions, times T^2 so gradients keep their scale as T changes. Logits [..., classes]."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"distill_loss: expected `teacher_logits` of shape {tuple(student_logits.shape)}, "
                         f"got {tuple(teacher_logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"distill_loss: expected `temperature` > 0, got {temperature}")
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    return F.kl_div(s.reshape(-1, s.shape[-1]), p.reshape(-1, p.shape[-1]), reduction="batchmean",
                    log_target=True) * (t * t)


