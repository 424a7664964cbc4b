"""compress.save / compress.load: converted models through safetensors (no pickle).

The file holds the state_dict's tensors plus, in its metadata, which modules were converted and
how to rebuild them (class and constructor arguments). `load(model, path)` takes the original
(unconverted, or identically converted) model as a skeleton, swaps in the recorded module types,
then loads the tensors, on any device. Everything is checked before the model is touched: a
corrupted or mismatched file raises and leaves the model as it was.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

import compress

_FORMAT = "compress-1"


def _converted_modules() -> dict:
    """Modules whose state_dict differs from the torch module they replace (the fused dense RNNs
    share torch's, so they load into a torch skeleton as they are)."""
    from compress.nn import Int8Linear, SparseLinear
    from compress.nn.rnn import INT8, SPARSE
    rnn = {c.__name__: c for c in list(INT8.values()) + list(SPARSE.values())}
    return {"Int8Linear": Int8Linear, "SparseLinear": SparseLinear, **rnn}


def _spec(mod: nn.Module) -> dict | None:
    name = type(mod).__name__
    if name in _converted_modules() and hasattr(type(mod), "init_args"):  # the int8 / sparse RNNs
        args = type(mod).init_args(mod)
        if hasattr(mod, "block"):
            args["block"] = list(mod.block)
        return {"type": name, "args": args}
    if name == "Int8Linear":
        return {"type": name, "args": {"in_features": mod.in_features, "out_features": mod.out_features,
                                       "bias": mod.bias is not None, "mode": mod.mode}}
    if name == "SparseLinear":
        return {"type": name, "args": {"in_features": mod.in_features, "out_features": mod.out_features,
                                       "bias": mod.bias is not None, "format": mod.format, "block": list(mod.block)}}
    return None


def save(model: nn.Module, path: str | Path) -> None:
    """Write `model`'s state_dict and its converted-module layout to a safetensors file."""
    from safetensors.torch import save_file
    modules = {name: s for name, m in model.named_modules() if (s := _spec(m)) is not None}
    # safetensors refuses tensors that share storage: give each its own contiguous copy
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": _FORMAT, "compress_version": compress.__version__, "modules": json.dumps(modules)}
    save_file(tensors, str(path), metadata=meta)


def load(model: nn.Module, path: str | Path, device=None) -> nn.Module:
    """Load a file written by save() into `model` (in place, also returned). device: where the
    tensors go (default: where the model's parameters are, else CPU)."""
    from safetensors import safe_open
    from compress.quantize import _parent
    path = Path(path)
    if device is None:
        p = next(iter(model.parameters()), None)
        p = p if p is not None else next(iter(model.buffers()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a bad header or file
        raise ValueError(f"compress.load: {path} is not a readable safetensors file: {e}") from e
    if meta.get("format") != _FORMAT:
        raise ValueError(f"compress.load: {path} was not written by compress.save (format {meta.get('format')!r})")
    specs = json.loads(meta["modules"])
    classes = _converted_modules()
    names = dict(model.named_modules())
    replacements = {}
    for name, spec in specs.items():
        if name not in names:
            raise ValueError(f"compress.load: the file has a converted module {name!r} that the model lacks")
        if spec["type"] not in classes:
            raise ValueError(f"compress.load: unknown module type {spec['type']!r} for {name!r}")
        old = names[name]
        if _spec(old) == spec:
            continue  # already converted the same way
        args = dict(spec["args"])
        for k in ("in_features", "out_features", "input_size", "hidden_size", "num_layers", "proj_size",
                  "bidirectional"):
            if k in args and getattr(old, k, args[k]) != args[k]:
                raise ValueError(f"compress.load: {name!r} has {k}={getattr(old, k)} in the model but "
                                 f"{args[k]} in the file")
        replacements[name] = classes[spec["type"]](**args, device=device)
    # Check the whole state_dict against the file before changing anything.
    expected = {}
    for name, mod in model.named_modules():
        if any(name == r or name.startswith(r + ".") for r in replacements) and name not in replacements:
            continue
        m = replacements.get(name, mod)
        prefix = name + "." if name else ""
        for k, v in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if v is not None and k not in getattr(m, "_non_persistent_buffers_set", set()):
                expected[prefix + k] = v
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"compress.load: {path} does not match the model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    variable = {"values", "meta", "crow", "col", "rows"}  # SparseLinear sizes come from the file

    def is_variable(key):  # ... and the sparse RNNs' <weight>_crow / _col / _values
        last = key.rsplit(".", 1)[-1]
        return last in variable or last.endswith(("_crow", "_col", "_values"))

    for k, v in expected.items():
        if not is_variable(k) and tuple(v.shape) != tuple(tensors[k].shape):
            raise ValueError(f"compress.load: {k} has shape {tuple(tensors[k].shape)} in the file, "
                             f"{tuple(v.shape)} in the model")
    for name, new in replacements.items():
        parent, attr = _parent(model, name)
        setattr(parent, attr, new)
    model.to(device)
    model.load_state_dict(tensors, strict=True)
    return model
