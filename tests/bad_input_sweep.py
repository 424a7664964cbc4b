"""Bad-input sweep over every op of namespace `compress` (OPS below; reliability, issue 8).

    python tests/bad_input_sweep.py --calls 2000 --seed 0 --json out.json

Each call starts from valid random arguments (VALID[op], which tests/test_fuzz.py shares),
corrupts one or two of them (CORRUPTIONS) and calls the op by one of ROUTES. Every call is held to
one contract:
  - it returns, and the result equals the reference (compress.ops.<op>_reference) on the same
    arguments (exact for integer results, the tolerances of tests/helpers.py for float ones,
    NaN-aware: see assert_matches); on the route that calls torch.ops.compress.<op> directly, on
    the arguments as torch's parser converts them (see torch_converted), or
  - it raises TypeError / ValueError / RuntimeError / NotImplementedError whose message names an
    argument of the op (`name` or 'name'). Naming the corrupted argument is counted apart from
    naming another one (x's dtype changed: "expected `values` to be torch.bfloat16 ...").
Anything else is a violation, listed with the call. A crash (segfault, abort) ends the process:
tests/test_bad_input_sweep.py runs this script in a subprocess and shows the call it died in (the
last line of --progress).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers, when run as a script
if not torch.cuda.is_available():  # as tests/conftest.py: Triton's interpreter, set before it loads
    os.environ.setdefault("TRITON_INTERPRET", "1")
from helpers import FLOAT_TOL, assert_close_scaled, assert_exact, poisoned_outputs  # noqa: E402

from compress import formats, ops  # noqa: E402

FLOATS = (torch.float32, torch.bfloat16, torch.float16)
ALL_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
              torch.bfloat16, torch.float32, torch.float64)
SIZES = (0, 1, 2, 3, 5, 7, 8, 16, 17, 33, 64, 65)  # 0, 1, primes, tile edges and one past them
LAYOUTS = ("contiguous", "transposed", "strided", "offset", "rows")
ALLOWED = (TypeError, ValueError, RuntimeError, NotImplementedError)


# ------------------------------------------------------------------------------ random choices

class Rand:
    """The random choices an argument generator makes. Here a seeded random.Random;
    tests/test_fuzz.py passes an object with the same methods that draws from hypothesis."""

    def __init__(self, seed: int):
        self._r = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:  # lo..hi inclusive
        return self._r.randint(lo, hi)

    def choice(self, seq):
        return seq[self._r.randrange(len(seq))]

    def coin(self) -> bool:
        return self._r.random() < 0.5

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self._r.getrandbits(31))


def relayout(t: Tensor, kind: str) -> Tensor:
    """The same values in another memory layout: contiguous; transposed (last two dims stored
    swapped); strided (every other element of the last dim of a wider tensor); offset (one element
    into its storage, so misaligned); rows (every other index of dim 0)."""
    if t.dim() == 0 or kind == "contiguous":
        return t.contiguous()
    if kind == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind in ("strided", "transposed"):
        big = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])
        big[..., ::2] = t
        return big[..., ::2]
    if kind == "offset":
        flat = t.new_zeros(t.numel() + 1)
        flat[1:] = t.reshape(-1)
        return flat[1:].view(t.shape)
    if kind == "rows":
        big = t.new_zeros(2 * t.shape[0], *t.shape[1:])
        big[::2] = t
        return big[::2]
    raise ValueError(kind)


def to_device(args: dict, device) -> dict:
    """The arguments on `device` with the same sizes, strides and storage offsets."""
    def move(t):
        if not isinstance(t, Tensor) or t.device == torch.device(device):
            return t
        span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride())) if t.numel() else 0
        flat = torch.empty(t.storage_offset() + span, dtype=t.dtype, device=device)
        return flat.as_strided(t.shape, t.stride(), t.storage_offset()).copy_(t)
    return {k: move(v) for k, v in args.items()}


def _size(r: Rand, cap: int) -> int:
    return r.choice([s for s in SIZES if s <= cap])


def _int8(g, *shape) -> Tensor:
    return torch.randint(-128, 128, shape, dtype=torch.int8, generator=g)


def _float(g, shape, dtype, scale=1.0) -> Tensor:
    return (torch.randn(shape, generator=g) * scale).to(dtype)


def _scales(g, n) -> Tensor:
    return (torch.rand(n, generator=g) + 0.01) * 0.02


def _lay(r: Rand, t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else relayout(t, r.choice(LAYOUTS))


# ------------------------------------------------------------------- valid arguments per op
# VALID[op](r, cap, sizes=None) -> {argument name: value} in the op's signature order, sizes up to
# `cap`: shapes with 0, 1 and odd sizes, every float dtype, random memory layouts, and for the sparse
# formats random masks from all-zero to dense. `sizes` fixes the shape instead: (M, N, K) for the
# linear ops, x's shape for quantize_per_token, (T, B, H, P) for the recurrences (P = 0: none).

def _mnk(r, cap, sizes):
    return sizes if sizes else (_size(r, cap), _size(r, cap), _size(r, cap))


def _int8_mm(r, cap, sizes=None):
    M, N, K = _mnk(r, cap, sizes)
    g = r.generator()
    return {"a": _lay(r, _int8(g, M, K)), "b": _lay(r, _int8(g, K, N))}


def _quantize_per_token(r, cap, sizes=None):
    shape = list(sizes or [_size(r, min(cap, 8)) for _ in range(r.int(0, 2))] + [_size(r, cap)])
    x = _float(r.generator(), shape, r.choice(FLOATS), scale=r.choice((1e-3, 1.0, 1e3)))
    if r.coin() and x.numel():
        x.view(-1, shape[-1])[0] = 0  # an all-zero row: scale 1, q 0
    return {"x": _lay(r, x)}


def _bias(r, g, N):
    return _lay(r, _float(g, (N,), r.choice(FLOATS))) if r.coin() else None


def _int8_linear(r, cap, sizes=None):
    M, N, K = _mnk(r, cap, sizes)
    g = r.generator()
    return {"qx": _lay(r, _int8(g, M, K)), "x_scale": _lay(r, _scales(g, M)), "qw": _lay(r, _int8(g, N, K)),
            "w_scale": _lay(r, _scales(g, N)), "bias": _bias(r, g, N), "out_dtype": r.choice(FLOATS)}


def _w8a16_linear(r, cap, sizes=None):
    M, N, K = _mnk(r, cap, sizes)
    g = r.generator()
    return {"x": _lay(r, _float(g, (M, K), r.choice(FLOATS))), "qw": _lay(r, _int8(g, N, K)),
            "w_scale": _lay(r, _scales(g, N)), "bias": _bias(r, g, N)}


def _w8a8_linear(r, cap, sizes=None):
    a = _w8a16_linear(r, cap, sizes)  # the same arguments: x, qw, w_scale, bias
    if r.coin() and a["x"].numel():
        a["x"][0] = 0  # an all-zero row: the safe scale
    return a


def _sparse24_linear(r, cap, sizes=None):
    K4 = [k for k in (0, 4, 8, 12, 16, 36, 64) if k <= max(cap, 4)]  # K divisible by 4
    M, N, K = sizes or (_size(r, cap), _size(r, cap), r.choice(K4))
    dtype = r.choice(FLOATS)
    g = r.generator()
    w = torch.randn(N, K, generator=g)
    pattern = r.choice(("zero", "2:4", "sparser"))
    groups = torch.rand(N, K // 4, 4, generator=g)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, -1).indices, True)
    if pattern == "sparser":
        keep &= torch.rand(keep.shape, generator=g) < 0.5
    w = (w * keep.reshape(N, K) * (pattern != "zero")).to(dtype)
    p = formats.pack_2_4(w)
    return {"x": _lay(r, _float(g, (M, K), dtype)), "values": _lay(r, p.values), "meta": _lay(r, p.meta),
            "bias": _bias(r, g, N)}


def _block_sparse(r, cap, fmt, sizes=None):
    M, N, K = _mnk(r, cap, sizes)
    dtype = r.choice(FLOATS)
    g = r.generator()
    density = r.choice((0.0, 0.2, 0.7, 1.0))
    x = _lay(r, _float(g, (M, K), dtype))
    if fmt == "csr":
        w = torch.randn(N, K, generator=g) * (torch.rand(N, K, generator=g) < density)
        c = formats.to_csr(w.to(dtype))
        crow, col, values = c.crow, c.col, c.values
    else:
        bn, bk = r.choice(((1, 1), (2, 3), (4, 4), (5, 7), (16, 16), (8, 32)))
        keep = torch.rand(-(-N // bn), -(-K // bk), generator=g) < density
        mask = keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)[:N, :K]
        b = formats.to_bsr((torch.randn(N, K, generator=g) * mask).to(dtype), (bn, bk))
        crow, col, values = b.crow, b.col, b.values
    return {"x": x, "crow": _lay(r, crow), "col": _lay(r, col), "values": _lay(r, values), "out_features": N,
            "bias": _bias(r, g, N)}


def _rnn(r, cap, lstm, sizes=None):
    T, B = r.choice((0, 1, 2, 5)), r.choice((0, 1, 3))
    H = r.choice([h for h in (0, 1, 2, 5, 17) if h <= max(cap, 5)])
    # H = 0 only without a projection: lstm_layer_cpu leaves y and h_n unwritten there (bug, see
    # test_fuzz.py::test_lstm_zero_hidden_with_projection)
    P = r.choice((0, 1, 3)) if lstm and H else 0
    if sizes:
        T, B, H, P = sizes
        P = P if lstm else 0
    dtype = r.choice(FLOATS)
    g = r.generator()
    lengths = torch.randint(0, T + 1, (B,), generator=g) if r.coin() else None
    Pw = P or H
    if lstm:
        return {"xg": _lay(r, _float(g, (T, B, 4 * H), dtype)), "h0": _lay(r, _float(g, (B, Pw), dtype)),
                "c0": _lay(r, _float(g, (B, H), dtype)), "w_hh": _lay(r, _float(g, (4 * H, Pw), dtype, 0.3)),
                "w_hr": _lay(r, _float(g, (P, H), dtype, 0.3)) if P else None, "lengths": _lay(r, lengths),
                "reverse": r.coin()}
    return {"xg": _lay(r, _float(g, (T, B, 3 * H), dtype)), "h0": _lay(r, _float(g, (B, H), dtype)),
            "w_hh": _lay(r, _float(g, (3 * H, H), dtype, 0.3)),
            "b_hh": _lay(r, _float(g, (3 * H,), dtype)) if r.coin() else None, "lengths": _lay(r, lengths),
            "reverse": r.coin()}


def _rnn_backward(r, cap, lstm, sizes=None):
    """lstm_layer_backward / gru_layer_backward: the forward's arguments after random gradients of
    its outputs y [T, B, P], h_n [B, P] (and c_n [B, H]) in xg's dtype."""
    a = _rnn(r, cap, lstm, sizes)
    T, B = a["xg"].shape[:2]
    shapes = {"dy": (T, B, a["h0"].shape[1]), "dh_n": a["h0"].shape, **({"dc_n": a["c0"].shape} if lstm else {})}
    g = r.generator()
    return {**{k: _lay(r, _float(g, shape, a["xg"].dtype)) for k, shape in shapes.items()}, **a}


def _rnn_w8(r, cap, lstm, sizes=None):
    """lstm_layer_w8 / gru_layer_w8: the float recurrence's weights quantized per row."""
    a = _rnn(r, cap, lstm, sizes)
    qw, ws = ops.quantize_per_token_reference(a.pop("w_hh").float())
    out = {k: a[k] for k in ("xg", "h0", "c0") if k in a}
    out.update(qw_hh=_lay(r, qw), w_hh_scale=_lay(r, ws))
    if lstm:
        w_hr = a.pop("w_hr")
        q, s = ops.quantize_per_token_reference(w_hr.float()) if w_hr is not None else (None, None)
        out.update(qw_hr=_lay(r, q), w_hr_scale=_lay(r, s))
    else:
        out["b_hh"] = a["b_hh"]
    return {**out, "lengths": a["lengths"], "reverse": a["reverse"]}


def _rnn_bsr(r, cap, lstm, sizes=None):
    """lstm_layer_bsr / gru_layer_bsr: w_hh pruned by blocks (bn dividing H) and stored as BSR."""
    a = _rnn(r, cap, lstm, sizes)
    w = a.pop("w_hh")
    H = w.shape[0] // (4 if lstm else 3)
    bn, bk = r.choice([d for d in (1, 2, 5, 17) if H % d == 0]), r.choice((1, 2, 3, 16))
    g = r.generator()
    keep = torch.rand(-(-w.shape[0] // bn), -(-w.shape[1] // bk), generator=g) < r.choice((0.0, 0.3, 1.0))
    mask = keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)[:w.shape[0], :w.shape[1]]
    b = formats.to_bsr(w * mask.to(w.dtype), (bn, bk))
    out = {k: a[k] for k in ("xg", "h0", "c0") if k in a}
    out.update(crow=_lay(r, b.crow), col=_lay(r, b.col), values=_lay(r, b.values))
    out.update({"w_hr": a["w_hr"]} if lstm else {"b_hh": a["b_hh"]})
    return {**out, "lengths": a["lengths"], "reverse": a["reverse"]}


VALID: dict[str, Callable[..., dict]] = {
    "int8_mm": _int8_mm,
    "quantize_per_token": _quantize_per_token,
    "int8_linear": _int8_linear,
    "w8a16_linear": _w8a16_linear,
    "w8a8_linear": _w8a8_linear,
    "sparse24_linear": _sparse24_linear,
    "bsr_linear": lambda r, cap, sizes=None: _block_sparse(r, cap, "bsr", sizes),
    "csr_linear": lambda r, cap, sizes=None: _block_sparse(r, cap, "csr", sizes),
    "lstm_layer": lambda r, cap, sizes=None: _rnn(r, cap, True, sizes),
    "gru_layer": lambda r, cap, sizes=None: _rnn(r, cap, False, sizes),
    "lstm_layer_backward": lambda r, cap, sizes=None: _rnn_backward(r, cap, True, sizes),
    "gru_layer_backward": lambda r, cap, sizes=None: _rnn_backward(r, cap, False, sizes),
    "lstm_layer_w8": lambda r, cap, sizes=None: _rnn_w8(r, cap, True, sizes),
    "gru_layer_w8": lambda r, cap, sizes=None: _rnn_w8(r, cap, False, sizes),
    "lstm_layer_bsr": lambda r, cap, sizes=None: _rnn_bsr(r, cap, True, sizes),
    "gru_layer_bsr": lambda r, cap, sizes=None: _rnn_bsr(r, cap, False, sizes),
}
RNN_OPS = tuple(op for op in VALID if op.startswith(("lstm_layer", "gru_layer")))

# Every op of namespace `compress` but the Triton backends' own custom ops (compress::<op>_triton,
# called through the "triton" route): compress.ops.OPS and the recurrences' backward ops, which
# autograd calls and which can be called themselves (compress.ops.rnn).
OPS = tuple(dict.fromkeys((*ops.OPS, "lstm_layer_backward", "gru_layer_backward")))


def public(name: str) -> Callable:
    """compress.ops.<name> (an op's wrapper or reference); compress.ops.rnn's where compress.ops
    does not export it (the backward ops)."""
    return getattr(ops, name) if hasattr(ops, name) else getattr(ops.rnn, name)


# Where the reference is not finite these ops' results are not bound (where it is finite, they are):
# the sparse kernels skip stored zeros, so the dense reference's 0 * inf = NaN may be finite there;
# the recurrences compute the same gates in algebraically equal forms (e.g. n + z * (h - n) for
# (1 - z) * n + z * h) that part ways only on infinities.
FREE_WHERE_NONFINITE = {"sparse24_linear", "bsr_linear", "csr_linear", *RNN_OPS}


# ------------------------------------------------------------------------- result comparison

def tolerance(op: str, args: dict) -> Optional[float]:
    """None for exact (integer ops, quantize_per_token), else the relative bar of helpers.FLOAT_TOL
    for the output dtype (twice that for bf16/fp16 recurrences, as tests/test_rnn_ops.py)."""
    if op in ("int8_mm", "quantize_per_token"):
        return None
    if op == "int8_linear":
        return FLOAT_TOL[args["out_dtype"]]
    first = next(iter(args.values()))
    tol = FLOAT_TOL[first.dtype]
    return tol * 2 if op in RNN_OPS and first.dtype != torch.float32 else tol


def _assert_float(o: Tensor, r: Tensor, rtol, what: str, free_where_nonfinite: bool) -> None:
    assert o.shape == r.shape, f"{what}: shape {tuple(o.shape)} != reference {tuple(r.shape)}"
    assert o.dtype == r.dtype, f"{what}: dtype {o.dtype} != reference {r.dtype}"
    o, r = o.detach().float().cpu(), r.detach().float().cpu()
    fin = r.isfinite()
    if not free_where_nonfinite:
        same = (o == r) | (o.isnan() & r.isnan())
        bad = ~fin & ~same
        assert not bad.any(), (f"{what}: {int(bad.sum())} non-finite reference elements differ; first at "
                               f"{tuple(bad.nonzero()[0].tolist())}")
    if rtol is None:
        assert torch.equal(o[fin], r[fin]), f"{what}: {int((o[fin] != r[fin]).sum())} elements differ"
    else:
        assert_close_scaled(o[fin], r[fin], rtol, what)


def assert_matches(op: str, out, ref, args: dict) -> None:
    """out equals ref: integer tensors exactly; float tensors within tolerance(op, args) of the
    largest finite |ref|, with NaN where ref has NaN and the same infinities (ops in
    FREE_WHERE_NONFINITE are free where ref is not finite)."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    assert len(outs) == len(refs), f"{op}: {len(outs)} outputs, reference has {len(refs)}"
    rtol = tolerance(op, args)
    for i, (o, r) in enumerate(zip(outs, refs)):
        what = f"{op} output {i}"
        assert isinstance(o, Tensor), f"{what}: got {type(o).__name__}"
        if o.is_meta or r.is_meta:  # meta in, meta out (the reference runs on meta tensors): no data
            assert (o.shape, o.dtype, o.device) == (r.shape, r.dtype, r.device), \
                f"{what}: {o.dtype}{list(o.shape)} on {o.device}, reference {r.dtype}{list(r.shape)} on {r.device}"
        elif r.is_floating_point():
            _assert_float(o, r, rtol, what, op in FREE_WHERE_NONFINITE)
        else:
            assert_exact(o, r, what)


# ----------------------------------------------------------------------- one call, one verdict

def named_in(msg: str, names) -> set:
    """The argument names `msg` quotes (`name`, `name[0]`, 'name') or refers to as code (x.shape[1])."""
    quoted = re.findall(r"[`']([A-Za-z_]\w*)", msg)
    as_code = re.findall(r"\b([A-Za-z_]\w*)\.(?:shape|size\(|dim\(|dtype|device)", msg)
    return set(quoted + as_code) & set(names)


def check_call(call: Callable, reference: Callable, compare: Callable, names, corrupted) -> tuple[str, str]:
    """Runs call() and holds it to the contract (module docstring). Returns (outcome, detail),
    outcome one of matched, raised_named, raised_named_other, violation."""
    try:
        with poisoned_outputs(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = call()
    except ALLOWED as e:
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        quoted = named_in(str(e), names)
        if quoted & set(corrupted):
            return "raised_named", msg
        if quoted:
            return "raised_named_other", msg
        return "violation", f"the message names no argument: {msg}"
    except Exception as e:  # noqa: BLE001 - any other exception type breaks the contract
        return "violation", f"unexpected {type(e).__name__}: {e}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = reference()
    except Exception as e:  # noqa: BLE001
        return "violation", f"returned, but the reference rejects the arguments: {type(e).__name__}: {e}"
    try:
        compare(out, ref)
    except AssertionError as e:
        return "violation", f"returned a result that differs from the reference: {e}"
    return "matched", ""


# --------------------------------------------------------------------------------- corruptions

INDEX_ARGS = ("crow", "col", "meta", "lengths")  # arguments whose values (not only shape) matter


def _tensors(args, floating=False):
    return [k for k, v in args.items() if isinstance(v, Tensor) and (not floating or v.is_floating_point())]


def _dtype(r, args, name):
    t = args[name]
    new = r.choice([d for d in ALL_DTYPES if d != t.dtype])
    return t != 0 if new == torch.bool else t.to(new)


def _rank(r, t):
    if t.dim() == 0 or r.coin():
        return t.unsqueeze(r.int(0, t.dim()))
    return t[0] if t.shape[0] else t.new_zeros(t.shape[1:])


def _size_of(r, t):
    if t.dim() == 0:
        return t.unsqueeze(0)
    d = r.int(0, t.dim() - 1)
    how = r.choice(("more", "less", "zero"))
    if how == "more":
        one = t.narrow(d, 0, 1) if t.shape[d] else t.new_zeros(*t.shape[:d], 1, *t.shape[d + 1:])
        return torch.cat([t, one], d)
    return t.narrow(d, 0, 0 if how == "zero" else max(t.shape[d] - 1, 0))


def _poke(r, t, value):
    """t with one random element set to value (t's layout kept)."""
    if t.numel():
        t[tuple(r.int(0, s - 1) for s in t.shape)] = value
    return t


def _bsr_padding(args: dict) -> Optional[Tensor]:
    """For BSR values [nnz, bn, bk]: where the blocks reach past the weight's [N, K] (the format's
    zero padding, which no backend need read), else None."""
    try:
        v, crow, col = args["values"], args["crow"].long(), args["col"].long()
        if v.dim() != 3:
            return None
        N = args["out_features"] if "out_features" in args else args["xg"].shape[2]
        K = args["x"].shape[1] if "x" in args else args["h0"].shape[1]
        block_row = torch.repeat_interleave(torch.arange(crow.numel() - 1), crow.diff())
        rows = block_row[:, None] * v.shape[1] + torch.arange(v.shape[1])   # [nnz, bn]
        cols = col[:, None] * v.shape[2] + torch.arange(v.shape[2])         # [nnz, bk]
        return (rows[:, :, None] >= N) | (cols[:, None, :] >= K)
    except (KeyError, AttributeError, IndexError, TypeError, RuntimeError):
        return None


def _nonfinite(r, t, padding=None):
    """t with 1 to 3 elements set to NaN / +-inf; none where `padding` is True."""
    t = t.clone()
    inside = (~padding).nonzero() if padding is not None else None
    for _ in range(r.int(1, 3)):
        value = r.choice((math.nan, math.inf, -math.inf))
        if inside is None:
            _poke(r, t, value)
        elif len(inside):
            t[tuple(inside[r.int(0, len(inside) - 1)].tolist())] = value
    return t


def _content(r, op, args, name):
    t = args[name].clone()
    n = t.numel()
    if name == "col" and n:
        try:
            limit = col_limit(args)
        except (AttributeError, IndexError, TypeError, ZeroDivisionError):  # another argument is malformed
            limit = 0
        t[r.int(0, n - 1)] = r.choice((-1, -2 ** 31, 2 ** 31 - 1, limit, limit + 7))
    elif name == "crow" and n:
        i = r.int(0, n - 1)
        how = r.choice(("first", "last", "decrease", "negative"))
        if how == "first":
            t[0] = 1
        elif how == "last":
            t[-1] += r.choice((1, -1))
        elif how == "decrease" and n > 1:
            t[min(i, n - 2)] = t[min(i, n - 2) + 1] + 1
        else:
            t[i] = -1
    elif name == "meta":
        _poke(r, t, r.int(0, 255))  # any byte: first >= second, high bits set
    elif name == "lengths" and n:
        T = args["xg"].shape[0] if isinstance(args.get("xg"), Tensor) and args["xg"].dim() else 0
        t[r.int(0, n - 1)] = r.choice((-1, T + 1, 2 ** 40, -2 ** 40))
    return t


def _wrong_type(r, name, v):
    if name == "out_features":
        return r.choice((-1, 2.5, None, 2 ** 40, v + 1 if isinstance(v, int) else 1))
    if name == "reverse":
        return r.choice((1, 0, None, "yes"))
    if name == "out_dtype":
        return r.choice((torch.int8, torch.float64, "float32", None))
    if isinstance(v, Tensor):
        return r.choice((v.tolist(), 3, 2.5, "x"))
    return r.choice((None, "x", 1.5))


def corrupt(r: Rand, op: str, args: dict, validated: bool) -> tuple[dict, list, list]:
    """Returns (args, corrupted argument names, kinds): one corruption, two for 1 call in 6.
    crow / col contents are corrupted only where `validated` (see CONTENT_ROUTES)."""
    args = dict(args)
    names, kinds = [], []
    for _ in range(2 if r.int(0, 5) == 0 and len(args) > 1 else 1):
        kind = r.choice(CORRUPTIONS)
        tensors = [n for n in _tensors(args) if n not in names]
        floats = [n for n in _tensors(args, floating=True) if n not in names and args[n].numel()]
        index = [n for n in tensors if n in INDEX_ARGS and (validated or n not in ("crow", "col"))]
        if kind == "content" and not index:
            kind = "size"
        if kind == "nonfinite" and not floats:
            kind = "dtype"
        if kind in ("dtype", "device", "rank", "size", "stride", "empty") and not tensors:
            kind = "type"
        if kind == "valid":
            break
        if kind == "type":
            name = r.choice([n for n in args if n not in names])
            args[name] = _wrong_type(r, name, args[name])
        elif kind == "none":
            name = r.choice([n for n in args if n not in names])
            args[name] = None
        elif kind == "nonfinite":
            name = r.choice(floats)
            args[name] = _nonfinite(r, args[name], _bsr_padding(args) if name == "values" else None)
        elif kind == "content":
            name = r.choice(index)
            args[name] = _content(r, op, args, name)
        else:
            name = r.choice(tensors)
            t = args[name]
            args[name] = {"dtype": lambda: _dtype(r, args, name), "device": lambda: t.to("meta"),
                          "rank": lambda: _rank(r, t), "size": lambda: _size_of(r, t),
                          "stride": lambda: relayout(t, r.choice(LAYOUTS[1:])),
                          "empty": lambda: t.new_empty((0,) * t.dim())}[kind]()
        names.append(name)
        kinds.append(kind)
    return args, names, kinds or ["valid"]


# Weighted: each name once per unit of weight.
CORRUPTIONS = (["dtype"] * 3 + ["size"] * 3 + ["rank"] * 2 + ["content"] * 3 + ["nonfinite"] * 2 +
               ["device", "stride", "empty", "none", "type", "valid"])

# Routes: "auto" the public op with the default backend choice (the C++ kernel for CPU tensors);
# "native" torch.ops.compress.<op> directly (the C++ kernel's own checks; the fake implementation
# for meta tensors); "triton" the public op under ops.backend("triton") (Triton's interpreter
# without a GPU), tiny sizes; "reference" the public op under ops.backend("reference").
ROUTES = ["auto"] * 12 + ["native"] * 4 + ["triton"] * 2 + ["reference"] * 2
# crow / col contents (out of range, crow decreasing) are corrupted only where they are validated:
# the C++ CPU kernels check them; the Triton kernels and the reference do not (nor do the CUDA
# kernels, which document clamping instead), and the Triton ones then read out of bounds (see
# test_bad_input_sweep.py::test_triton_malformed_crow_is_memory_safe). Calls elsewhere whose index
# arrays a size change made out of range are skipped for the same reason. meta (2-bit positions)
# and lengths (any int64) have defined meanings on every route.


def validates_index(op: str, route: str) -> bool:
    """Whether the route reaches the C++ CPU kernel, which validates crow / col."""
    return route == "native" or route == "auto" and ops.resolve(op, torch.device("cpu"))[0] == "cpu"


CAP = {"auto": 65, "native": 65, "reference": 17, "triton": 8}


def col_limit(args: dict) -> int:
    """The bound of `col` entries: in_features (CSR), or block columns of the weight (BSR: x's K,
    or for the recurrences the state width P = h0.shape[1], over bk)."""
    K = args["x"].shape[1] if "x" in args else args["h0"].shape[1]
    return -(-K // args["values"].shape[2]) if args["values"].dim() == 3 else K


def malformed_index(args: dict) -> bool:
    """crow / col whose contents do not fit the other arguments' shapes (False where the arguments
    are malformed otherwise: the op's own checks answer those)."""
    try:
        limit, c, k = col_limit(args), args["crow"].long(), args["col"].long()
        return bool(c[0] != 0 or (c[1:] < c[:-1]).any() or c[-1] != k.numel() or (k < 0).any() or (k >= limit).any())
    except (KeyError, AttributeError, IndexError, TypeError, RuntimeError, ZeroDivisionError):
        return False


def _noncontiguous(args, *names):
    return any(isinstance(args.get(n), Tensor) and not args[n].is_contiguous() for n in names)


# Violations from known, reported defects: counted under their id, not as violations. Each has a
# reproducer in test_bad_input_sweep.py marked xfail(strict=True), so that a fix shows (the test then
# passes unexpectedly and fails) and its entry here is removed with the xfail. The six of issue 8
# are fixed; their reproducers stay there as regression tests.
# predicate(op, route, args, corrupted names, detail) -> bool.
KNOWN: dict[str, tuple[str, Callable]] = {
}


def torch_converted(op: str, args: dict) -> dict:
    """`args` as torch.ops.compress.<op> hands them to a kernel. torch's argument parser converts
    None or a number given for a `bool` argument (`reverse`) to bool(value), None to False
    (pybind11's conversion; a one-element tensor too, which the sweep does not pass), and rejects
    a str or list naming the argument. That happens in torch before any code of ours runs: the
    C++ kernel and the fake implementation receive a bool, so neither can tell `reverse=0` from
    `reverse=False`. The Python wrappers (the other routes) take only a bool."""
    schema = getattr(torch.ops.compress, op).default._schema
    out = dict(args)
    for a in schema.arguments:
        v = out.get(a.name)
        converts = v is None or isinstance(v, (int, float)) and not isinstance(v, bool)
        if isinstance(a.type, torch.BoolType) and converts:
            out[a.name] = v is not None and bool(v)
    return out


def verdict(op: str, route: str, args: dict, corrupted) -> tuple[str, str]:
    """Calls `op` with `args` by `route` and holds the call to the contract (check_call)."""
    values = list(args.values())

    def call():
        if route == "native":
            return getattr(torch.ops.compress, op).default(*values)
        with ops.backend(route):  # "auto" too: the default choice
            return public(op)(*values)

    ref_args = list((torch_converted(op, args) if route == "native" else args).values())
    return check_call(call, lambda: public(f"{op}_reference")(*ref_args),
                      lambda out, ref: assert_matches(op, out, ref, args), list(args), corrupted)


def describe(v) -> str:
    if isinstance(v, Tensor):
        return f"{str(v.dtype)[6:]}{list(v.shape)}{'' if v.is_contiguous() else f's{list(v.stride())}'}" \
               f"{'' if v.device.type == 'cpu' else '@' + str(v.device)}"
    return repr(v)


def run_sweep(calls: int, seed: int, progress=None, ops_list=None, replay: Optional[int] = None) -> dict:
    """The sweep; with `replay`, only call #replay is made (the same draws lead up to it), and its
    arguments are returned under "args"."""
    ops_list = list(ops_list or OPS)
    missing = [op for op in ops_list if op not in VALID]
    ops_list = [op for op in ops_list if op in VALID]
    counts = {k: 0 for k in ("calls", "matched", "raised_named", "raised_named_other", "violations", "known",
                             "skipped")}
    by_route = {}
    examples_other, violations, known, known_examples = [], [], {k: 0 for k in KNOWN}, []
    r = Rand(seed)
    t0 = time.time()
    i = 0
    while counts["calls"] < calls:
        op, route = ops_list[i % len(ops_list)], r.choice(ROUTES)
        i += 1
        if route == "native" and not torch._C._dispatch_has_kernel_for_dispatch_key(f"compress::{op}", "CPU") \
                or route == "triton" and ops.why_unavailable(op, "triton", "cpu"):
            route = "auto"  # no such kernel (yet) for this op
        validated = validates_index(op, route)
        args, names, kinds = corrupt(r, op, VALID[op](r, CAP[route]), validated)
        desc = f"#{i} {route} {op}({', '.join(f'{k}={describe(v)}' for k, v in args.items())}) " \
               f"corrupted {'+'.join(kinds)} of {'+'.join(names) or '-'}"
        if progress:
            progress.write(desc + "\n")
            progress.flush()
        if not validated and malformed_index(args):
            counts["skipped"] += 1
            continue
        if replay is not None and i != replay:
            continue
        outcome, detail = verdict(op, route, args, names)
        counts["calls"] += 1
        by_route.setdefault(route, {}).setdefault(outcome, 0)
        by_route[route][outcome] += 1
        hit = outcome == "violation" and next((k for k, (_, known_in) in KNOWN.items()
                                              if known_in(op, route, args, names, detail)), None)
        if hit:
            known[hit] += 1
            counts["known"] += 1
            if known[hit] <= 2:
                known_examples.append(f"[{hit}] {desc}: {detail}")
        elif outcome == "violation":
            counts["violations"] += 1
            violations.append(f"{desc}: {detail}")
        else:
            counts[outcome] += 1
            if outcome == "raised_named_other" and len(examples_other) < 20:
                examples_other.append(f"{desc}: {detail}")
        if replay is not None:
            return {"args": args, "call": desc, "outcome": outcome, "known": hit, "detail": detail}
    return {"seed": seed, "seconds": round(time.time() - t0, 1), "counts": counts, "by_route": by_route,
            "ops": ops_list, "ops_without_generator": missing, "known": known,
            "known_text": {k: v[0] for k, v in KNOWN.items()}, "known_examples": known_examples,
            "violations": violations,
            "named_other_examples": examples_other}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the counts and violations here")
    p.add_argument("--progress", help="append each call's description here before making it")
    p.add_argument("--replay", type=int, help="make only call #REPLAY (a reproducer) and print its verdict")
    p.add_argument("--save-args", help="with --replay: torch.save the call's arguments here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.replay is not None:
        res = run_sweep(a.replay + 1, a.seed, replay=a.replay)
        print(res["call"], "->", res["outcome"], f"(known: {res['known']})" if res["known"] else "", res["detail"])
        if a.save_args:
            torch.save(res["args"], a.save_args)
        return 1 if res["outcome"] == "violation" else 0
    with open(a.progress, "w") if a.progress else contextlib.nullcontext() as progress:
        res = run_sweep(a.calls, a.seed, progress)
    c = res["counts"]
    print(f"bad-input sweep, seed {a.seed}: {c['calls']} calls in {res['seconds']} s: {c['matched']} returned the "
          f"reference result, {c['raised_named']} raised naming the corrupted argument, "
          f"{c['raised_named_other']} naming another argument, {c['known']} known issues, "
          f"{c['violations']} violations")
    for v in res["violations"][:50]:
        print("VIOLATION", v)
    if res["ops_without_generator"]:
        print("no argument generator (add one to VALID):", ", ".join(res["ops_without_generator"]))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 1 if c["violations"] or res["ops_without_generator"] else 0


if __name__ == "__main__":
    sys.exit(main())
