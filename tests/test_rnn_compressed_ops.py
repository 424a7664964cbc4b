"""compress.ops.lstm_layer_w8 / gru_layer_w8 (int8 recurrent weights, per-row scales) and
lstm_layer_bsr / gru_layer_bsr (block-sparse recurrent weights) on every backend against their
references: odd sizes, lengths, reverse, dtypes, strided inputs, poisoned outputs, block
structures, bad input, opcheck, compile, and the CPU kernel's packed-weight cache."""
import pytest
import torch

from backends import BACKENDS, INTERPRETED, NATIVE, device_for, op_for, run
from compress import ops
from compress.formats.sparse import to_bsr
from helpers import FLOAT_TOL, assert_close_scaled, poisoned_outputs
from test_rnn_ops import gru_args, lstm_args

OPS = ["lstm_layer_w8", "gru_layer_w8", "lstm_layer_bsr", "gru_layer_bsr"]


def _need_kernel(backend, op):
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(backend)
    if key and not torch._C._dispatch_has_kernel_for_dispatch_key(f"compress::{op}", key):
        pytest.skip(f"compress._C has no {key} kernel for compress::{op} (rebuild, or not written yet)")


def _reference(op, args):
    return getattr(ops, f"{op}_reference")(*args)


def _check(backend, op, args, rtol, what):
    """Runs `op` on `backend` with every fresh output poisoned; compares with the reference."""
    with poisoned_outputs():
        out = run(op, backend, *args)
    ref = _reference(op, args)
    assert len(out) == len(ref)
    for i, (o, r) in enumerate(zip(out, ref)):
        assert_close_scaled(o, r, rtol, f"{backend} {op} {what} output {i}")


# ------------------------------------------------------------------------------------ arguments

def _quantize(w):
    """Symmetric per-row int8 of a float weight: (q int8, scale float32) with w ~ q * scale[:, None]."""
    return ops.quantize_per_token_reference(w.float()) if w is not None else (None, None)


def _prune_blocks(w, block, density, g):
    """w with whole (bn, bk) blocks zeroed at random (density: the fraction kept; 0 all zero, 1 none)."""
    bn, bk = block
    R, C = -(-w.shape[0] // bn), -(-w.shape[1] // bk)
    keep = torch.rand(R, C, generator=g) < density
    mask = keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)[: w.shape[0], : w.shape[1]]
    return w * mask.to(w.device)


def _bsr(w, block, density, g):
    b = to_bsr(_prune_blocks(w, block, density, g), block)
    return b.crow, b.col, b.values


def _lengths_with_zero(lengths, T):
    """Every row length in [0, T], the first T and the last 0 (when there are two rows)."""
    if lengths is not None and lengths.numel() > 1:
        lengths = lengths.clone()
        lengths[0], lengths[-1] = T, 0
    return lengths


def make_args(op, T, B, H, P, with_len, reverse, dev, dtype=torch.float32, block=None, density=0.5):
    """Arguments of `op` from the dense cases of test_rnn_ops: P is the LSTM proj_size (0: none)
    and for GRU whether b_hh is given; block (bn, bk) for the BSR ops (default (1, 3))."""
    g = torch.Generator().manual_seed(T * 1000 + B * 100 + H + P)
    block = block or (1, 3)
    if op.startswith("lstm"):
        xg, h0, c0, w, wr, lengths, rev = lstm_args(T, B, H, P, with_len, reverse, dev, dtype)
        lengths = _lengths_with_zero(lengths, T)
        if op == "lstm_layer_w8":
            (q, s), (qr, sr) = _quantize(w), _quantize(wr)
            return xg, h0, c0, q, s, qr, sr, lengths, rev
        return (xg, h0, c0, *_bsr(w, block, density, g), wr, lengths, rev)
    xg, h0, w, b, lengths, rev = gru_args(T, B, H, P > 0, with_len, reverse, dev, dtype)
    lengths = _lengths_with_zero(lengths, T)
    if op == "gru_layer_w8":
        return (xg, h0, *_quantize(w), b, lengths, rev)
    return (xg, h0, *_bsr(w, block, density, g), b, lengths, rev)


# (T, B, H, P, lengths, reverse): T 0/1/7, B 1/3/17, H 1/3/16/17/33 (1, primes, the CPU kernel's
# 16-unit chunk and one past it), with projection / bias, lengths (with a 0) and direction mixed.
CASES = [(1, 1, 1, 0, False, False), (7, 3, 17, 5, True, False), (7, 17, 33, 0, True, True),
         (0, 3, 16, 0, False, False), (1, 17, 3, 2, False, True), (7, 1, 16, 7, True, True),
         (7, 3, 3, 0, False, True), (7, 1, 33, 9, True, False), (1, 3, 17, 0, True, True),
         (0, 1, 17, 4, True, False), (7, 6, 16, 0, True, False), (7, 7, 17, 16, False, True)]
CASE_IDS = [f"T{T}-B{B}-H{H}-P{P}-len{int(L)}-rev{int(R)}" for T, B, H, P, L, R in CASES]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("T,B,H,P,L,R", CASES, ids=CASE_IDS)
def test_matches_reference(backend, op, T, B, H, P, L, R):
    _need_kernel(backend, op)
    args = make_args(op, T, B, H, P, L, R, device_for(backend))
    _check(backend, op, args, FLOAT_TOL[torch.float32], "")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_dtypes(backend, op, dtype):
    # Gates and state are float32 everywhere; only the inputs and the final rounding are in dtype,
    # so the bar is that rounding (as test_rnn_ops.test_half_dtypes).
    _need_kernel(backend, op)
    args = make_args(op, 5, 3, 17, 7, True, False, device_for(backend), dtype)
    _check(backend, op, args, 2 * FLOAT_TOL[dtype], str(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_strided_inputs(backend, op):
    # xg as a [B, T, G*H] tensor transposed (batch_first input) and every other gate column of a
    # wider one; the int8 weight column-major, the BSR values a strided view.
    _need_kernel(backend, op)
    args = list(make_args(op, 7, 3, 17, 5, True, True, device_for(backend)))
    xg = args[0]
    wide = torch.zeros(xg.shape[1], xg.shape[0], 2 * xg.shape[2], dtype=xg.dtype, device=xg.device)
    wide[..., ::2] = xg.transpose(0, 1)
    args[0] = wide[..., ::2].transpose(0, 1)
    assert not args[0].is_contiguous() and torch.equal(args[0], xg)
    w_at = 3 if op.startswith("lstm") else 2
    if op.endswith("w8"):
        args[w_at] = args[w_at].t().contiguous().t()
    else:
        v = args[w_at + 2]
        args[w_at + 2] = torch.cat([v, v], 2)[..., : v.shape[2]]
        assert not args[w_at + 2].is_contiguous()
    _check(backend, op, tuple(args), FLOAT_TOL[torch.float32], "strided")


# BSR weights: (block, density) with H = 16 (LSTM P = 16 as well, GRU K = H).
STRUCTURES = [((1, 1), 0.5, "bn1-bk1"), ((4, 4), 0.0, "all-zero"), ((4, 4), 1.0, "dense"),
              ((16, 16), 0.3, "bn16"), ((2, 5), 0.5, "non-square-2x5"), ((8, 3), 0.5, "non-square-8x3"),
              ((1, 32), 0.5, "bk-past-K"), ((16, 64), 1.0, "single-block-per-gate"), ((4, 16), 0.1, "sparse")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["lstm_layer_bsr", "gru_layer_bsr"])
@pytest.mark.parametrize("block,density", [s[:2] for s in STRUCTURES], ids=[s[2] for s in STRUCTURES])
def test_bsr_structures(backend, op, block, density):
    _need_kernel(backend, op)
    args = make_args(op, 5, 3, 16, 0, True, False, device_for(backend), block=block, density=density)
    crow, col = args[-6], args[-5]
    if density == 0.0:
        assert col.numel() == 0
    _check(backend, op, args, FLOAT_TOL[torch.float32], f"block {block} density {density}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["lstm_layer_bsr", "gru_layer_bsr"])
def test_bsr_one_block(backend, op):
    # A single stored block in the whole weight: every other chunk and gate runs on no weights.
    _need_kernel(backend, op)
    args = list(make_args(op, 4, 2, 17, 0, False, False, device_for(backend), block=(17, 4), density=1.0))
    crow, col, values = args[-6:-3]
    args[-6] = torch.zeros_like(crow)
    args[-6][2:] = 1  # block row 1 (the second gate) holds the one block
    args[-5], args[-4] = col[:1] + 2, values[:1]
    _check(backend, op, tuple(args), FLOAT_TOL[torch.float32], "one block")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["lstm_layer_w8", "gru_layer_w8"])
def test_w8_extreme_codes(backend, op):
    # Every int8 code including -128 (the quantizer never makes it, the format allows it), scales of
    # very different size per row and a zero scale.
    _need_kernel(backend, op)
    args = list(make_args(op, 6, 3, 17, 5, True, False, device_for(backend)))
    q_at = 3 if op.startswith("lstm") else 2
    g = torch.Generator().manual_seed(7)
    for qi in ([q_at, q_at + 2] if op.startswith("lstm") else [q_at]):
        q = args[qi]
        args[qi] = torch.randint(-128, 128, q.shape, generator=g, dtype=torch.int8).to(q.device)
        args[qi][0] = -128
        scale = 10.0 ** torch.empty(q.shape[0]).uniform_(-5, -2, generator=g)
        scale[1] = 0.0
        args[qi + 1] = scale.to(q.device)
    _check(backend, op, tuple(args), FLOAT_TOL[torch.float32], "extreme codes")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["lstm_layer_w8", "gru_layer_w8"])
def test_w8_nonfinite_state(backend, op):
    # h0 with NaN in row 0 and inf in row 1 (row 2 finite): the result must match the reference
    # wherever the reference is finite (the CPU kernel's AVX-512 path turns h into integers, and
    # takes its float path for such rows).
    _need_kernel(backend, op)
    args = list(make_args(op, 4, 3, 17, 5, False, False, device_for(backend)))
    h0 = args[1].clone()
    h0[0, 3], h0[1, 0] = float("nan"), float("inf")
    args[1] = h0
    with poisoned_outputs():
        out = run(op, backend, *args)
    for i, (o, r) in enumerate(zip(out, _reference(op, tuple(args)))):
        fin = r.isfinite()
        assert (fin[:, 2] if r.dim() == 3 else fin[2]).all(), "batch row 2 must stay finite"
        assert_close_scaled(o[fin], r[fin], FLOAT_TOL[torch.float32], f"{backend} {op} output {i} (finite part)")


# K = 65537 targets the CPU kernel's int32 limit on its VNNI path; under Triton's interpreter it
# takes minutes and tests nothing the other Triton cases do not (float32 sums per tile).
@pytest.mark.parametrize("backend", BACKENDS if not INTERPRETED else NATIVE)
def test_w8_long_reduction(backend):
    # K = P = 65537: past the CPU kernel's exact int32 bound for its VNNI path (it takes the float
    # path); H = 1 keeps it small.
    _need_kernel(backend, "lstm_layer_w8")
    args = make_args("lstm_layer_w8", 3, 2, 1, 65537, True, False, device_for(backend))
    assert args[3].shape == (4, 65537)
    _check(backend, "lstm_layer_w8", args, FLOAT_TOL[torch.float32], "K 65537")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_empty(backend, op):
    _need_kernel(backend, op)
    for T, B in ((0, 3), (4, 0)):
        _check(backend, op, make_args(op, T, B, 5, 0, True, False, device_for(backend)), 1e-6, f"T{T} B{B}")


# ------------------------------------------------------------------------------------ bad input

def _lstm_w8_bad():
    F = torch.float32
    return [
        ("qw_hh dtype", lambda a: a.update(qw_hh=a["qw_hh"].float()), TypeError, "`qw_hh` to be torch.int8"),
        ("qw_hh shape", lambda a: a.update(qw_hh=a["qw_hh"][:, :4]), ValueError, "`qw_hh` of shape \\(20, 7\\)"),
        ("scale dtype", lambda a: a.update(w_hh_scale=a["w_hh_scale"].half()), TypeError,
         "`w_hh_scale` to be torch.float32"),
        ("scale length", lambda a: a.update(w_hh_scale=a["w_hh_scale"][:-1]), ValueError,
         "`w_hh_scale` of shape \\(20,\\)"),
        ("qw_hr shape", lambda a: a.update(qw_hr=a["qw_hr"][:, :4]), ValueError, "`qw_hr` of shape"),
        ("w_hr_scale length", lambda a: a.update(w_hr_scale=a["w_hr_scale"][:3]), ValueError,
         "`w_hr_scale` of shape \\(7,\\)"),
        ("w_hr_scale missing", lambda a: a.update(w_hr_scale=None), ValueError, "`qw_hr` and `w_hr_scale`"),
        ("xg dtype", lambda a: a.update(xg=a["xg"].to(torch.int32)), TypeError, "`xg` to be torch.float32"),
        ("xg gates", lambda a: a.update(xg=a["xg"][..., :-1]), ValueError, "`xg` to be \\[T, B, 4H\\]"),
        ("h0 dtype", lambda a: a.update(h0=a["h0"].to(torch.float64)), TypeError, f"`h0` to be {F}"),
        ("c0 shape", lambda a: a.update(c0=a["c0"][:, :4]), ValueError, "`c0` of shape \\(3, 5\\)"),
        ("lengths dtype", lambda a: a.update(lengths=a["lengths"].int()), TypeError, "`lengths` to be torch.int64"),
    ]


def _gru_w8_bad():
    return [
        ("qw_hh dtype", lambda a: a.update(qw_hh=a["qw_hh"].to(torch.uint8)), TypeError, "`qw_hh` to be torch.int8"),
        ("qw_hh shape", lambda a: a.update(qw_hh=a["qw_hh"][:-1]), ValueError, "`qw_hh` of shape \\(15, 5\\)"),
        ("scale length", lambda a: a.update(w_hh_scale=a["w_hh_scale"][:2]), ValueError,
         "`w_hh_scale` of shape \\(15,\\)"),
        ("scale 2-D", lambda a: a.update(w_hh_scale=a["w_hh_scale"][:, None]), ValueError, "`w_hh_scale` to be 1-D"),
        ("b_hh shape", lambda a: a.update(b_hh=a["b_hh"][:14]), ValueError, "`b_hh` of shape \\(15,\\)"),
        ("xg gates", lambda a: a.update(xg=a["xg"][..., :-1]), ValueError, "`xg` to be \\[T, B, 3H\\]"),
        ("h0 shape", lambda a: a.update(h0=a["h0"][:2]), ValueError, "`h0` of shape \\(3, 5\\)"),
    ]


def _bsr_bad(G):
    rows = G * 5
    return [
        ("crow dtype", lambda a: a.update(crow=a["crow"].long()), TypeError, "`crow` to be torch.int32"),
        ("col dtype", lambda a: a.update(col=a["col"].long()), TypeError, "`col` to be torch.int32"),
        ("values dtype", lambda a: a.update(values=a["values"].double()), TypeError, "`values` to be torch.float32"),
        ("values 2-D", lambda a: a.update(values=a["values"][:, 0]), ValueError, "`values` to be 3-D"),
        ("crow length", lambda a: a.update(crow=a["crow"][:-1]), ValueError, f"`crow` of shape \\({rows + 1},\\)"),
        ("col length", lambda a: a.update(col=a["col"][:-1]), ValueError, "`col` of shape"),
        ("bn not dividing H", lambda a: a.update(values=torch.zeros(a["col"].numel(), 2, 3)), ValueError,
         "`values` blocks \\[nnz, bn, bk\\] with bn dividing H = 5"),
    ]


def _bsr_bad_contents():
    """Index contents the Python checks do not look at (that would cost a GPU sync): the kernels do."""
    def crow_decreasing(a):
        crow = a["crow"].clone()
        crow[1], crow[2] = crow[2], crow[1] - 1
        a.update(crow=crow)

    def crow_end(a):
        crow = a["crow"].clone()
        crow[-1] += 1
        a.update(crow=crow)
    return [
        ("col out of range", lambda a: a.update(col=torch.full_like(a["col"], 3)), ValueError,
         "`col` entries in \\[0, [23]\\)"),
        ("col negative", lambda a: a.update(col=-torch.ones_like(a["col"])), ValueError, "`col` entries"),
        ("crow decreasing", crow_decreasing, ValueError, "`crow` to be non-decreasing"),
        ("crow end", crow_end, ValueError, "`crow\\[-1\\]` to be col.size\\(0\\)"),
    ]


NAMES = {"lstm_layer_w8": ("xg", "h0", "c0", "qw_hh", "w_hh_scale", "qw_hr", "w_hr_scale", "lengths", "reverse"),
         "gru_layer_w8": ("xg", "h0", "qw_hh", "w_hh_scale", "b_hh", "lengths", "reverse"),
         "lstm_layer_bsr": ("xg", "h0", "c0", "crow", "col", "values", "w_hr", "lengths", "reverse"),
         "gru_layer_bsr": ("xg", "h0", "crow", "col", "values", "b_hh", "lengths", "reverse")}
BAD = ([("lstm_layer_w8",) + b for b in _lstm_w8_bad()] + [("gru_layer_w8",) + b for b in _gru_w8_bad()]
       + [("lstm_layer_bsr",) + b for b in _bsr_bad(4)] + [("gru_layer_bsr",) + b for b in _bsr_bad(3)])


def _bad_args(op, dev, edit):
    # T 4, B 3, H 5, P 7 (LSTM), blocks (1, 3): 3 block columns of P = 7, crow of 4*5 + 1.
    a = dict(zip(NAMES[op], make_args(op, 4, 3, 5, 7 if op.startswith("lstm") else 1, True, False, dev,
                                      block=(1, 3), density=0.6)))
    edit(a)
    return tuple(a.values())


@pytest.mark.parametrize("backend", BACKENDS + [pytest.param("reference", id="reference")])
@pytest.mark.parametrize("op,desc,edit,exc,msg", BAD, ids=[f"{b[0]}-{b[1]}" for b in BAD])
def test_bad_input(backend, op, desc, edit, exc, msg):
    args = _bad_args(op, device_for(backend), edit)
    with pytest.raises(exc, match=f"{op}: .*{msg}"), ops.backend(backend):
        getattr(ops, op)(*args)


@pytest.mark.parametrize("op", ["lstm_layer_bsr", "gru_layer_bsr"])
@pytest.mark.parametrize("desc,edit,exc,msg", _bsr_bad_contents(), ids=[b[0] for b in _bsr_bad_contents()])
def test_cpu_kernel_checks_bsr_indices(op, desc, edit, exc, msg):
    # Through compress.ops and through the bare op: a bad index must raise, never read out of bounds.
    _need_kernel("cpu", op)
    args = _bad_args(op, "cpu", edit)
    with pytest.raises(exc, match=f"{op}: .*{msg}"), ops.backend("cpu"):
        getattr(ops, op)(*args)
    with pytest.raises(exc, match=f"{op}: .*{msg}"):
        getattr(torch.ops.compress, op).default(*args)


@pytest.mark.parametrize("op,desc,edit,exc,msg", BAD, ids=[f"{b[0]}-{b[1]}" for b in BAD])
def test_cpu_kernel_checks_inputs(op, desc, edit, exc, msg):
    # The bare op (torch.ops.compress.*) skips the Python checks: the C++ ones must say the same.
    _need_kernel("cpu", op)
    with pytest.raises(exc, match=f"{op}: .*{msg}"):
        getattr(torch.ops.compress, op).default(*_bad_args(op, "cpu", edit))


# ------------------------------------------------------------------------------ opcheck, compile

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_opcheck(backend, op):
    # No autograd (inference-only ops): no input requires grad.
    _need_kernel(backend, op)
    dev = device_for(backend)
    for P, L, R in ((0, False, False), (3, True, True)):
        torch.library.opcheck(op_for(op, backend), make_args(op, 3, 2, 5, P, L, R, dev))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    for op in OPS:
        _need_kernel(backend, op)
    dev = device_for(backend)
    args = {op: make_args(op, 3, 2, 5, 3, True, True, dev) for op in OPS}

    def f(a):
        y, h, c = ops.lstm_layer_w8(*a["lstm_layer_w8"])
        y2, h2 = ops.gru_layer_w8(*a["gru_layer_w8"])
        y3, h3, c3 = ops.lstm_layer_bsr(*a["lstm_layer_bsr"])
        y4, h4 = ops.gru_layer_bsr(*a["gru_layer_bsr"])
        return y.sum(0) @ h.t() + c.sum() + y2.sum() + h2.sum() + y3.sum() + h3.sum() * c3.sum() + y4.sum() - h4.sum()

    with ops.backend(backend):
        eager = f(args)
        compiled = torch.compile(f, fullgraph=True)(args)
    assert_close_scaled(compiled, eager, 1e-6, "compiled vs eager")


# --------------------------------------------------------------------- CPU kernel: ISAs, cache

@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512_vnni"])
@pytest.mark.parametrize("op", OPS)
def test_cpu_isa_paths(isa, op):
    _need_kernel("cpu", op)
    try:
        ops._C.set_cpu_isa(isa)
    except ValueError as e:
        pytest.skip(str(e))
    torch.set_num_threads(2)  # restored by conftest
    # B = 7 takes every batch block (4 + 2 + 1) and H = 40 a partial chunk; B = 5, H = 300 is
    # enough work for two workers (when two threads are there).
    for T, B, H in ((4, 7, 40), (3, 5, 300)):
        args = make_args(op, T, B, H, 5 if op.startswith("lstm") else 1, True, False, "cpu", block=(4, 8))
        out = run(op, "cpu", *args)
        for i, (o, r) in enumerate(zip(out, _reference(op, args))):
            assert_close_scaled(o, r, FLOAT_TOL[torch.float32], f"{isa} {op} T{T} B{B} H{H} output {i}")


def _weights_at(op):
    """Positions of the tensors a CPU kernel packs (and caches) in `op`'s arguments."""
    return {"lstm_layer": (3, 4), "gru_layer": (2,), "lstm_layer_w8": (3, 4, 5, 6), "gru_layer_w8": (2, 3),
            "lstm_layer_bsr": (5, 6), "gru_layer_bsr": (4,)}[op]


def _dense_args(op, dev):
    return lstm_args(5, 3, 17, 7, True, False, dev) if op == "lstm_layer" else gru_args(5, 3, 17, True, True, False,
                                                                                        dev)


@pytest.mark.parametrize("op", ["lstm_layer", "gru_layer"] + OPS)
def test_cpu_weight_changed_in_place(op):
    # The CPU kernels keep packed weights between calls; a weight written in place (as an
    # optimizer step or load_state_dict does) must be repacked, every packed tensor of the op.
    _need_kernel("cpu", op)
    args = list(_dense_args(op, "cpu") if op in ("lstm_layer", "gru_layer") else
                make_args(op, 5, 3, 17, 7, True, False, "cpu", block=(1, 4)))
    for i in _weights_at(op):
        _check("cpu", op, tuple(args), FLOAT_TOL[torch.float32], "before")
        with torch.no_grad():
            if args[i].dtype == torch.int8:
                args[i].neg_()
            else:
                args[i].mul_(-0.5)
        _check("cpu", op, tuple(args), FLOAT_TOL[torch.float32], f"after writing argument {i}")


def test_cpu_weight_cache_fresh_tensors():
    # New weights of the same shape, often at a freed weight's address, must never hit its entry;
    # nor may a view of the same storage at another offset.
    _need_kernel("cpu", "lstm_layer")
    for seed in range(6):
        args = list(lstm_args(4, 2, 17, 0, False, False, "cpu"))
        args[3] = torch.randn(args[3].shape, generator=torch.Generator().manual_seed(seed)) * 0.3
        _check("cpu", "lstm_layer", tuple(args), FLOAT_TOL[torch.float32], f"seed {seed}")
        del args
    xg, h0, c0, w, _, _, _ = lstm_args(4, 2, 17, 0, False, False, "cpu")
    both = torch.randn(2 * w.shape[0], w.shape[1]) * 0.3
    for half in (both[: w.shape[0]], both[w.shape[0]:]):
        _check("cpu", "lstm_layer", (xg, h0, c0, half, None, None, False), FLOAT_TOL[torch.float32], "view")


def test_cpu_weight_inference_tensor():
    # Inference tensors have no version counter: never cached, so an in-place write still shows.
    _need_kernel("cpu", "gru_layer_w8")
    with torch.inference_mode():
        args = make_args("gru_layer_w8", 5, 3, 17, 1, True, False, "cpu")
        assert args[2].is_inference()
        _check("cpu", "gru_layer_w8", args, FLOAT_TOL[torch.float32], "before")
        args[3].mul_(3.0)
        _check("cpu", "gru_layer_w8", args, FLOAT_TOL[torch.float32], "after")
