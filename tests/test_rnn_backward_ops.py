"""compress.ops.rnn.lstm_layer_backward / gru_layer_backward (the gradients of lstm_layer /
gru_layer) on every backend (C++ CPU, Triton: interpreted on the CPU without a GPU, CUDA when
built) against their plain-PyTorch references: odd sizes, empty sequences, zero lengths, reverse,
projection, bf16 / fp16, strided gradients, poisoned outputs, bad input, opcheck, compile, and that
autograd of the forward ops runs them."""
import itertools

import pytest
import torch

from backends import BACKENDS, device_for, op_for
from compress import ops
from compress.ops import rnn
from helpers import FLOAT_TOL, assert_close_scaled, poisoned_outputs


def _need_kernel(backend, op):
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(backend)
    if key is not None and not torch._C._dispatch_has_kernel_for_dispatch_key(f"compress::{op}", key):
        pytest.skip(f"compress._C has no {key} kernel for {op} (CPU: csrc/rnn/rnn_backward_cpu.cpp, rebuild "
                    f"the package; CUDA: none written yet)")


def _to(args, dev):
    return tuple(a.to(dev) if isinstance(a, torch.Tensor) else a for a in args)


def _rand(g, dtype):
    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(dtype)
    return r


def _lengths(g, T, B):
    # Row 0 never runs (length 0); the others anything in 0..T.
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[:1] = 0
    return lengths


def lstm_bwd_args(T, B, H, P, with_len, reverse, dtype=torch.float32):
    """(dy, dh_n, dc_n, xg, h0, c0, w_hh, w_hr, lengths, reverse); P = 0: no projection."""
    g = torch.Generator().manual_seed(1000 * T + 100 * B + 10 * H + P)
    r, Pw = _rand(g, dtype), P or H
    return (r(T, B, Pw), r(B, Pw), r(B, H), r(T, B, 4 * H), r(B, Pw), r(B, H), r(4 * H, Pw, scale=0.5),
            r(Pw, H, scale=0.5) if P else None, _lengths(g, T, B) if with_len else None, reverse)


def gru_bwd_args(T, B, H, with_bias, with_len, reverse, dtype=torch.float32):
    """(dy, dh_n, xg, h0, w_hh, b_hh, lengths, reverse)."""
    g = torch.Generator().manual_seed(1000 * T + 100 * B + 10 * H + 1)
    r = _rand(g, dtype)
    return (r(T, B, H), r(B, H), r(T, B, 3 * H), r(B, H), r(3 * H, H, scale=0.5), r(3 * H) if with_bias else None,
            _lengths(g, T, B) if with_len else None, reverse)


def _args(op, T, B, H, P, L, R, dtype=torch.float32, dev="cpu"):
    if op == "lstm_layer_backward":
        return _to(lstm_bwd_args(T, B, H, P, L, R, dtype), dev)
    return _to(gru_bwd_args(T, B, H, P > 0, L, R, dtype), dev)


def _run(op, backend, args):
    with ops.backend(backend):
        out = getattr(rnn, op)(*args)
    assert ops.last_choice(op).backend == backend, ops.last_choice(op)
    return out


OPS = ["lstm_layer_backward", "gru_layer_backward"]
# (T, B, H) with T = 0 (nothing to do), 1 and 5; H = 1, 3 and 17; each case toggles projection
# (P = 5: wider than H = 1 or 3, narrower than 17) / GRU bias, lengths (row 0 of length 0) and direction.
SIZES = list(itertools.product((0, 1, 5), (1, 3), (1, 3, 17)))
CASES = [(T, B, H, 5 if i % 3 != 0 else 0, i % 2 == 0, i % 4 >= 2) for i, (T, B, H) in enumerate(SIZES)]
CASE_IDS = [f"T{T}-B{B}-H{H}-P{P}-len{int(L)}-rev{int(R)}" for T, B, H, P, L, R in CASES]
# float32: the kernels sum dW over all T * B rows in one GEMM where the reference adds T rank-B
# products, and their exp/tanh are libm's (C++) or built from exp (Triton), not ATen's: a few ulp
# of the largest gradient, 1e-5 of max|ref| per element. bf16 / fp16: both round the same float32
# gradients once, at the end; float32 differences may flip a rounding, so one ulp of max|ref|
# (bf16 2^-8, fp16 2^-11) doubled, as FLOAT_TOL.
TOL = {torch.float32: 1e-5, torch.bfloat16: 2 * FLOAT_TOL[torch.bfloat16], torch.float16: 2 * FLOAT_TOL[torch.float16]}
DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.bfloat16, id="bf16"),
          pytest.param(torch.float16, id="f16")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,B,H,P,L,R", CASES, ids=CASE_IDS)
def test_matches_reference(backend, op, dtype, T, B, H, P, L, R):
    _need_kernel(backend, op)
    args = _args(op, T, B, H, P, L, R, dtype, device_for(backend))
    with poisoned_outputs():
        out = _run(op, backend, args)
    ref = getattr(rnn, f"{op}_reference")(*args)
    names = ("dxg", "dh0", "dc0", "dw_hh", "dw_hr") if op == "lstm_layer_backward" else ("dxg", "dh0", "dw_hh",
                                                                                         "db_hh")
    assert len(out) == len(names)
    for name, o, r in zip(names, out, ref):
        assert_close_scaled(o, r, TOL[dtype], f"{backend} {op} {dtype} {name}")
    lengths = args[-2]
    if T > 0 and (lengths is None or lengths.max() > 0):
        assert out[0].abs().sum() > 0, "dxg all zero though a step ran: the case tests nothing"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_empty(backend, op):
    """No steps (T = 0: the gradients of h_n, c_n pass to h0, c0; dW = 0) or no batch rows."""
    _need_kernel(backend, op)
    for T, B in ((0, 3), (4, 0)):
        args = _args(op, T, B, 5, 3, True, False, dev=device_for(backend))
        with poisoned_outputs():
            out = _run(op, backend, args)
        for i, (o, r) in enumerate(zip(out, getattr(rnn, f"{op}_reference")(*args))):
            assert_close_scaled(o, r, 1e-6, f"{backend} {op} T{T} B{B} output {i}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_strided_inputs(backend, op):
    """Gradients as autograd hands them (expanded, stride 0), a transposed weight, xg a slice."""
    _need_kernel(backend, op)
    args = list(_args(op, 4, 3, 6, 4, True, True, dev=device_for(backend)))
    dy = args[0]
    args[0] = dy[:1, :1, :1].expand(dy.shape)
    args[1] = args[1].t().contiguous().t()
    iw = 6 if op == "lstm_layer_backward" else 4
    args[iw] = args[iw].t().contiguous().t()
    ix = 3 if op == "lstm_layer_backward" else 2
    args[ix] = torch.cat([args[ix], args[ix]], 2)[..., ::2]
    assert not args[ix].is_contiguous() and not args[iw].is_contiguous()
    with poisoned_outputs():
        out = _run(op, backend, args)
    ref = getattr(rnn, f"{op}_reference")(*args)
    for i, (o, r) in enumerate(zip(out, ref)):
        assert_close_scaled(o, r, TOL[torch.float32], f"{backend} {op} strided output {i}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("used", ["y", "state", "all"])
def test_autograd_runs_the_op(backend, kind, used):
    """Gradients of the forward op on a backend come from that backend's backward op, also when
    some outputs are unused (autograd passes None, materialized as zeros), and match the
    reference's autograd (which runs through its own step loop)."""
    _need_kernel(backend, f"{kind}_layer_backward")
    _need_kernel(backend, f"{kind}_layer")
    g = torch.Generator().manual_seed(7)
    T, B, H, P = 6, 3, 9, 4
    r = _rand(g, torch.float32)
    dev = device_for(backend)
    lengths = torch.tensor([0, 6, 3], device=dev)
    if kind == "lstm":
        args = [r(T, B, 4 * H), r(B, P), r(B, H), r(4 * H, P, scale=0.5), r(P, H, scale=0.5)]
    else:
        args = [r(T, B, 3 * H), r(B, H), r(3 * H, H, scale=0.5), r(3 * H)]
    leaves = [a.to(dev).requires_grad_() for a in args]
    fwd = getattr(ops, f"{kind}_layer")
    grads = []
    for name in (backend, "reference"):
        before = ops.last_choice(f"{kind}_layer_backward")
        with ops.backend(name):
            out = fwd(*leaves, lengths, True)
            loss = {"y": out[0].sum(), "state": sum(o.square().sum() for o in out[1:]),
                    "all": sum((o * (i + 1)).sum() for i, o in enumerate(out))}[used]
            grads.append(torch.autograd.grad(loss, leaves))
        assert ops.last_choice(f"{kind}_layer").backend == name
        choice = ops.last_choice(f"{kind}_layer_backward")
        if name == "reference":  # no backward op: autograd runs through the reference's own loop
            assert choice is before, choice
        else:  # a fresh choice (Choice is made anew by each dispatch), this backend's
            assert choice is not before and choice.backend == backend, choice
    for i, (a, b) in enumerate(zip(*grads)):
        assert_close_scaled(a, b, 1e-5, f"{backend} {kind} loss on {used}: grad {i}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    for op in OPS:
        _need_kernel(backend, op)
    dev = device_for(backend)
    for T, B, H, P, L, R in ((3, 2, 5, 0, False, False), (3, 2, 5, 3, True, True), (0, 2, 3, 0, True, False)):
        torch.library.opcheck(op_for("lstm_layer_backward", backend), _to(lstm_bwd_args(T, B, H, P, L, R), dev))
        torch.library.opcheck(op_for("gru_layer_backward", backend), _to(gru_bwd_args(T, B, H, P > 0, L, R), dev))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    _need_kernel(backend, "lstm_layer_backward")
    args = _to(lstm_bwd_args(3, 2, 5, 3, True, True), device_for(backend))

    def f(*a):
        dxg, dh0, dc0, dw, dwr = rnn.lstm_layer_backward(*a)
        return dxg.sum() + dh0.sum() + dc0.sum() + dw.sum() + dwr.sum()

    with ops.backend(backend):
        eager = f(*args)
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(*args)
    assert_close_scaled(compiled, eager, 1e-6, "compiled vs eager")


def _lstm_named():
    names = ("dy", "dh_n", "dc_n", "xg", "h0", "c0", "w_hh", "w_hr", "lengths", "reverse")
    return dict(zip(names, lstm_bwd_args(4, 3, 5, 7, True, False)))


LSTM_BAD = [
    ("dy shape", lambda a: a.update(dy=a["dy"][:, :, :6]), ValueError, "`dy` of shape"),
    ("dy dtype", lambda a: a.update(dy=a["dy"].double()), TypeError, "`dy` to be torch.float32"),
    ("dh_n shape", lambda a: a.update(dh_n=a["dh_n"][:2]), ValueError, "`dh_n` of shape"),
    ("dc_n dtype", lambda a: a.update(dc_n=a["dc_n"].bfloat16()), TypeError, "`dc_n` to be torch.float32"),
    ("xg gates", lambda a: a.update(xg=a["xg"][..., :-1]), ValueError, "`xg` to be \\[T, B, 4H\\]"),
    ("h0 shape", lambda a: a.update(h0=a["h0"][:, :6]), ValueError, "`h0` of shape"),
    ("w_hh shape", lambda a: a.update(w_hh=a["w_hh"][:, :6]), ValueError, "`w_hh` of shape"),
    ("w_hr shape", lambda a: a.update(w_hr=a["w_hr"][:, :4]), ValueError, "`w_hr` of shape"),
    ("lengths dtype", lambda a: a.update(lengths=a["lengths"].int()), TypeError, "`lengths` to be torch.int64"),
]


# Entries: the Python wrapper (reference and fake share its checks), the C++ op and the Triton op.
ENTRIES = ["wrapper", "native", pytest.param("triton", marks=pytest.mark.triton)]


def _entry(op, entry):
    if entry == "native":
        _need_kernel("cpu", op)
    return {"wrapper": getattr(rnn, op), "native": op_for(op, "cpu"), "triton": op_for(op, "triton")}[entry]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("desc,edit,exc,msg", LSTM_BAD, ids=[b[0] for b in LSTM_BAD])
def test_lstm_bad_input(entry, desc, edit, exc, msg):
    """Every entry names the argument."""
    fn = _entry("lstm_layer_backward", entry)
    a = _lstm_named()
    edit(a)
    with pytest.raises(exc, match="lstm_layer_backward: .*" + msg), ops.backend("cpu"):
        fn(*a.values())


@pytest.mark.parametrize("entry", ENTRIES)
def test_gru_bad_input(entry):
    fn = _entry("gru_layer_backward", entry)
    dy, dh_n, xg, h0, w, b, lengths, _ = gru_bwd_args(4, 3, 5, True, True, False)
    cases = [((dy[:3], dh_n, xg, h0, w, b, lengths), ValueError, "`dy` of shape"),
             ((dy, dh_n.half(), xg, h0, w, b, lengths), TypeError, "`dh_n` to be torch.float32"),
             ((dy, dh_n, xg[..., :-1], h0, w, b, lengths), ValueError, "`xg` to be \\[T, B, 3H\\]"),
             ((dy, dh_n, xg, h0, w[:, :4], b, lengths), ValueError, "`w_hh` of shape"),
             ((dy, dh_n, xg, h0, w, b[:14], lengths), ValueError, "`b_hh` of shape"),
             ((dy, dh_n, xg, h0, w, b, lengths[:2]), ValueError, "`lengths` of shape")]
    for args, exc, msg in cases:
        with pytest.raises(exc, match="gru_layer_backward: .*" + msg), ops.backend("cpu"):
            fn(*args, False)
