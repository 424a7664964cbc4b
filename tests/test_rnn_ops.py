"""compress.ops.lstm_layer / gru_layer on every backend against their references (values and
gradients), with odd sizes, reverse, lengths, poisoned outputs, bad input, opcheck and compile."""
import itertools

import pytest
import torch

from backends import BACKENDS, device_for, op_for, run
from compress import ops
from helpers import FLOAT_TOL, assert_close_scaled, poisoned_outputs


def _need_kernel(backend, op):
    if backend == "cpu" and not torch._C._dispatch_has_kernel_for_dispatch_key(f"compress::{op}", "CPU"):
        pytest.skip("compress._C was built without csrc/rnn/rnn_cpu.cpp: rebuild the package")


# (T, B, H): 1, primes and non-multiples of the 16-unit chunk of the CPU kernel; each case also
# toggles projection, lengths and direction so the 12 cases cover every combination's pieces.
SIZES = list(itertools.product((1, 5), (1, 3), (1, 17, 33)))
CASES = [(T, B, H, 7 if i % 3 == 1 else 0, i % 2 == 0, i % 4 >= 2) for i, (T, B, H) in enumerate(SIZES)]
CASE_IDS = [f"T{T}-B{B}-H{H}-P{P}-len{int(L)}-rev{int(R)}" for T, B, H, P, L, R in CASES]


def lstm_args(T, B, H, P, with_len, reverse, dev, dtype=torch.float32, grad=False):
    g = torch.Generator().manual_seed(T * 100 + B * 10 + H)
    Pw = P or H

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(dtype).to(dev).requires_grad_(grad)
    lengths = torch.randint(0, T + 1, (B,), generator=g).to(dev) if with_len else None
    return (r(T, B, 4 * H), r(B, Pw), r(B, H), r(4 * H, Pw, scale=0.3), r(Pw, H, scale=0.3) if P else None,
            lengths, reverse)


def gru_args(T, B, H, with_bias, with_len, reverse, dev, dtype=torch.float32, grad=False):
    g = torch.Generator().manual_seed(T * 100 + B * 10 + H + 1)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(dtype).to(dev).requires_grad_(grad)
    lengths = torch.randint(0, T + 1, (B,), generator=g).to(dev) if with_len else None
    return r(T, B, 3 * H), r(B, H), r(3 * H, H, scale=0.3), r(3 * H) if with_bias else None, lengths, reverse


def _cases(op, T, B, H, P, L, R, dev, **kw):
    return lstm_args(T, B, H, P, L, R, dev, **kw) if op == "lstm_layer" else gru_args(T, B, H, P > 0, L, R, dev, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["lstm_layer", "gru_layer"])
@pytest.mark.parametrize("T,B,H,P,L,R", CASES, ids=CASE_IDS)
def test_matches_reference(backend, op, T, B, H, P, L, R):
    _need_kernel(backend, op)
    args = _cases(op, T, B, H, P, L, R, device_for(backend))
    with poisoned_outputs():
        out = run(op, backend, *args)
    ref = getattr(ops, f"{op}_reference")(*args)
    for i, (o, r) in enumerate(zip(out, ref)):
        assert_close_scaled(o, r, 1e-5, f"{backend} {op} output {i}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["lstm_layer", "gru_layer"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_dtypes(backend, op, dtype):
    # State and gates stay float32 in every backend; only the inputs and the final rounding differ.
    _need_kernel(backend, op)
    args = _cases(op, 5, 3, 17, 7, True, False, device_for(backend), dtype=dtype)
    out = run(op, backend, *args)
    ref = getattr(ops, f"{op}_reference")(*args)
    for i, (o, r) in enumerate(zip(out, ref)):
        assert_close_scaled(o, r, 2 * FLOAT_TOL[dtype], f"{backend} {op} {dtype} output {i}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["lstm_layer", "gru_layer"])
@pytest.mark.parametrize("P,L,R", [(0, False, False), (7, True, True), (3, True, False)])
def test_gradients_match_reference(backend, op, P, L, R):
    _need_kernel(backend, op)
    args = _cases(op, 5, 3, 17, P, L, R, device_for(backend), grad=True)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = []
    for fn in (lambda *a: run(op, backend, *a), getattr(ops, f"{op}_reference")):
        out = fn(*args)
        loss = sum((o * (i + 0.5)).sum() + (o ** 2).sum() for i, o in enumerate(out))
        grads.append(torch.autograd.grad(loss, leaves))
    for i, (a, b) in enumerate(zip(*grads)):
        assert_close_scaled(a, b, 1e-4, f"{backend} {op} grad {i}")


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512_vnni"])
def test_cpu_isa_paths(isa):
    _need_kernel("cpu", "lstm_layer")
    if ops._C is None:
        pytest.skip("compress._C not importable")
    try:
        ops._C.set_cpu_isa(isa)
    except ValueError as e:
        pytest.skip(str(e))
    for op in ("lstm_layer", "gru_layer"):
        # B = 6 and H = 40: every batch block (4 + 2) and a partial chunk; B = 5, H = 300 takes two
        # workers (when two threads are set) and a B = 1 block.
        for T, B, H in ((4, 6, 40), (3, 5, 300)):
            args = _cases(op, T, B, H, 5 if op == "lstm_layer" else 1, True, False, "cpu")
            out = run(op, "cpu", *args)
            for o, r in zip(out, getattr(ops, f"{op}_reference")(*args)):
                assert_close_scaled(o, r, 1e-5, f"{isa} {op} T{T} B{B} H{H}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend):
    _need_kernel(backend, "lstm_layer")
    dev = device_for(backend)
    for T, B in ((0, 3), (4, 0)):
        for op in ("lstm_layer", "gru_layer"):
            args = _cases(op, T, B, 5, 0, False, False, dev)
            out = run(op, backend, *args)
            for o, r in zip(out, getattr(ops, f"{op}_reference")(*args)):
                assert_close_scaled(o, r, 1e-6, f"{backend} {op} T{T} B{B}")


F32 = torch.float32
LSTM_BAD = [
    ("xg", lambda a: a.update(xg=a["xg"].to(torch.int32)), TypeError, "expected `xg` to be torch.float32"),
    ("xg gates", lambda a: a.update(xg=a["xg"][..., :-1]), ValueError, "`xg` to be \\[T, B, 4H\\]"),
    ("h0 dtype", lambda a: a.update(h0=a["h0"].double()), TypeError, "expected `h0` to be torch.float32"),
    ("h0 shape", lambda a: a.update(h0=a["h0"][:2]), ValueError, "`h0` of shape \\(3, 7\\)"),
    ("c0 shape", lambda a: a.update(c0=a["c0"][:, :4]), ValueError, "`c0` of shape \\(3, 5\\)"),
    ("w_hh shape", lambda a: a.update(w_hh=a["w_hh"][:, :6]), ValueError, "`w_hh` of shape \\(20, 7\\)"),
    ("w_hr shape", lambda a: a.update(w_hr=a["w_hr"][:, :4]), ValueError, "`w_hr` of shape"),
    ("lengths dtype", lambda a: a.update(lengths=a["lengths"].int()), TypeError, "`lengths` to be torch.int64"),
    ("lengths shape", lambda a: a.update(lengths=a["lengths"][:2]), ValueError, "`lengths` of shape \\(3,\\)"),
]


@pytest.mark.parametrize("backend", BACKENDS + [pytest.param("reference", id="reference")])
@pytest.mark.parametrize("desc,edit,exc,msg", LSTM_BAD, ids=[b[0] for b in LSTM_BAD])
def test_lstm_bad_input(backend, desc, edit, exc, msg):
    names = ("xg", "h0", "c0", "w_hh", "w_hr", "lengths", "reverse")
    a = dict(zip(names, lstm_args(4, 3, 5, 7, True, False, device_for(backend))))
    edit(a)
    with pytest.raises(exc, match="lstm_layer: .*" + msg), ops.backend(backend):
        ops.lstm_layer(*a.values())


@pytest.mark.parametrize("backend", BACKENDS + [pytest.param("reference", id="reference")])
def test_gru_bad_input(backend):
    dev = device_for(backend)
    xg, h0, w, b, lengths, _ = gru_args(4, 3, 5, True, True, False, dev)
    cases = [((xg[..., :-1], h0, w, b, lengths), ValueError, "`xg` to be \\[T, B, 3H\\]"),
             ((xg, h0.half(), w, b, lengths), TypeError, "`h0` to be torch.float32"),
             ((xg, h0, w[:, :4], b, lengths), ValueError, "`w_hh` of shape \\(15, 5\\)"),
             ((xg, h0, w, b[:14], lengths), ValueError, "`b_hh` of shape \\(15,\\)"),
             ((xg, h0, w, b, lengths.float()), TypeError, "`lengths` to be torch.int64")]
    for args, exc, msg in cases:
        with pytest.raises(exc, match="gru_layer: .*" + msg), ops.backend(backend):
            ops.gru_layer(*args, False)


def test_native_op_checks_inputs():
    _need_kernel("cpu", "lstm_layer")
    xg, h0, c0, w, wr, lengths, _ = lstm_args(4, 3, 5, 0, True, False, "cpu")
    with pytest.raises(ValueError, match="h0"):
        torch.ops.compress.lstm_layer.default(xg, h0[:2], c0, w, None, lengths, False)
    with pytest.raises(TypeError, match="w_hh"):
        torch.ops.compress.lstm_layer.default(xg, h0, c0, w.double(), None, lengths, False)


# ---- CUDA kernels (csrc/rnn/rnn_recurrence.cu) -------------------------------------------------------
# Two paths: persistent (one cooperative launch, weight slices in shared memory, B <= 16) and
# stepwise (one or two launches per step, any shape). The backend tests above run whichever `auto`
# picks (persistent at their sizes); here COMPRESS_RNN_CUDA_PATH forces each.

# (T, B, H, P, lengths, reverse): B = 16 (the largest persistent batch), 6 and 7 (a partial group of
# 4 rows), H = 1 / 3 (fewer units than a block's warps) and 130 (several units per block), P > H.
CUDA_PATH_CASES = [(1, 1, 1, 0, False, False), (5, 3, 17, 7, True, True), (4, 16, 33, 5, True, False),
                   (3, 6, 130, 0, True, True), (3, 2, 3, 2, True, False), (2, 7, 10, 13, False, True)]


def _cuda_cases(op, T, B, H, P, L, R, **kw):
    args = _cases(op, T, B, H, P, L, R, "cuda", **kw)
    if args[-2] is not None:
        args[-2][0] = 0  # a row that never runs: its state passes through, its y is 0
    return args


@pytest.mark.cuda
@pytest.mark.parametrize("path", ["persistent", "stepwise"])
@pytest.mark.parametrize("op", ["lstm_layer", "gru_layer"])
@pytest.mark.parametrize("T,B,H,P,L,R", CUDA_PATH_CASES,
                         ids=[f"T{T}-B{B}-H{H}-P{P}-len{int(L)}-rev{int(R)}" for T, B, H, P, L, R in CUDA_PATH_CASES])
def test_cuda_paths(monkeypatch, path, op, T, B, H, P, L, R):
    monkeypatch.setenv("COMPRESS_RNN_CUDA_PATH", path)
    args = _cuda_cases(op, T, B, H, P, L, R)
    with poisoned_outputs():
        out = run(op, "cuda", *args)
    ref = getattr(ops, f"{op}_reference")(*args)
    for i, (o, r) in enumerate(zip(out, ref)):
        assert_close_scaled(o, r, 1e-5, f"cuda {path} {op} output {i}")


@pytest.mark.cuda
@pytest.mark.parametrize("path", ["persistent", "stepwise"])
@pytest.mark.parametrize("op", ["lstm_layer", "gru_layer"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cuda_paths_half_dtypes(monkeypatch, path, op, dtype):
    # 16-bit weights are widened in the kernel (shared-memory copy in the persistent path).
    monkeypatch.setenv("COMPRESS_RNN_CUDA_PATH", path)
    args = _cuda_cases(op, 5, 6, 37, 7, True, False, dtype=dtype)
    out = run(op, "cuda", *args)
    for i, (o, r) in enumerate(zip(out, getattr(ops, f"{op}_reference")(*args))):
        assert_close_scaled(o, r, 2 * FLOAT_TOL[dtype], f"cuda {path} {op} {dtype} output {i}")


# Larger shapes under `auto` and forced stepwise: B = 20 and 37 are above the persistent batch limit
# (37: three 16-row slices); H = 1100 is persistent where its 170 KB float32 slice fits (H100, not
# A100). float32 sums over up to 1100 products of pre-activations around 10 differ from cuBLAS's
# order by ~1e-5 of the largest output, hence 1e-4.
CUDA_LARGE = [("lstm_layer", 3, 20, 40, 7), ("gru_layer", 3, 37, 29, 0), ("lstm_layer", 2, 2, 1100, 0),
              ("gru_layer", 2, 2, 1100, 0), ("lstm_layer", 2, 4, 600, 300)]


@pytest.mark.cuda
@pytest.mark.parametrize("path", ["auto", "stepwise"])
@pytest.mark.parametrize("op,T,B,H,P", CUDA_LARGE, ids=[f"{o}-T{T}-B{B}-H{H}-P{P}" for o, T, B, H, P in CUDA_LARGE])
def test_cuda_large_shapes(monkeypatch, path, op, T, B, H, P):
    monkeypatch.setenv("COMPRESS_RNN_CUDA_PATH", path)
    args = _cuda_cases(op, T, B, H, P, True, True)
    with poisoned_outputs():
        out = run(op, "cuda", *args)
    for i, (o, r) in enumerate(zip(out, getattr(ops, f"{op}_reference")(*args))):
        assert_close_scaled(o, r, 1e-4, f"cuda {path} {op} output {i}")


@pytest.mark.cuda
def test_cuda_strided_inputs():
    # xg of any strides (a transposed view), weights as transposed views, h0 / c0 column slices.
    g = torch.Generator().manual_seed(5)
    T, B, H, P = 4, 3, 13, 6
    xg = torch.randn(B, T, 4 * H, generator=g).cuda().transpose(0, 1)
    h0 = torch.randn(B, 2 * P, generator=g).cuda()[:, ::2]
    c0 = torch.randn(B, H + 1, generator=g).cuda()[:, 1:]
    w_hh = (torch.randn(P, 4 * H, generator=g) * 0.3).cuda().t()
    w_hr = (torch.randn(H, P, generator=g) * 0.3).cuda().t()
    for path in ("persistent", "stepwise"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("COMPRESS_RNN_CUDA_PATH", path)
            out = run("lstm_layer", "cuda", xg, h0, c0, w_hh, w_hr, None, False)
        for i, (o, r) in enumerate(zip(out, ops.lstm_layer_reference(xg, h0, c0, w_hh, w_hr))):
            assert_close_scaled(o, r, 1e-5, f"cuda {path} strided output {i}")


@pytest.mark.cuda
def test_cuda_path_choice_errors(monkeypatch):
    args = _cuda_cases("lstm_layer", 2, 17, 5, 0, False, False)
    monkeypatch.setenv("COMPRESS_RNN_CUDA_PATH", "persistent")
    with pytest.raises(RuntimeError, match="persistent kernel cannot run .* B = 17"):
        run("lstm_layer", "cuda", *args)
    monkeypatch.setenv("COMPRESS_RNN_CUDA_PATH", "fast")
    with pytest.raises(ValueError, match="COMPRESS_RNN_CUDA_PATH to be auto, persistent or stepwise, got 'fast'"):
        run("lstm_layer", "cuda", *args)


@pytest.mark.cuda
def test_cuda_native_op_checks_inputs():
    xg, h0, c0, w, wr, lengths, _ = lstm_args(4, 3, 5, 0, True, False, "cuda")
    with pytest.raises(ValueError, match="h0"):
        torch.ops.compress.lstm_layer.default(xg, h0[:2], c0, w, None, lengths, False)
    with pytest.raises(ValueError, match="expected `h0` on cuda"):
        torch.ops.compress.lstm_layer.default(xg, h0.cpu(), c0, w, None, lengths, False)
    with pytest.raises(ValueError, match="expected `lengths` on cuda"):
        torch.ops.compress.lstm_layer.default(xg, h0, c0, w, None, lengths.cpu(), False)
    with pytest.raises(TypeError, match="w_hh"):
        torch.ops.compress.lstm_layer.default(xg, h0, c0, w.double(), None, lengths, False)
    gx, gh, gw, gb, glen, _ = gru_args(4, 3, 5, True, True, False, "cuda")
    with pytest.raises(ValueError, match="b_hh"):
        torch.ops.compress.gru_layer.default(gx, gh, gw, gb[:14], glen, False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    _need_kernel(backend, "lstm_layer")
    dev = device_for(backend)
    for P, L, R in ((0, False, False), (3, True, True)):
        torch.library.opcheck(op_for("lstm_layer", backend), lstm_args(3, 2, 5, P, L, R, dev, grad=True))
        torch.library.opcheck(op_for("gru_layer", backend), gru_args(3, 2, 5, P > 0, L, R, dev, grad=True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    _need_kernel(backend, "lstm_layer")
    dev = device_for(backend)
    largs = lstm_args(3, 2, 5, 3, True, True, dev)
    gargs = gru_args(3, 2, 5, True, True, False, dev)

    def f(la, ga):
        y, h, c = ops.lstm_layer(*la)
        y2, h2 = ops.gru_layer(*ga)
        return y.sum(0) @ h.t() + c.sum() + y2.sum() + h2.sum()

    with ops.backend(backend):
        eager = f(largs, gargs)
        compiled = torch.compile(f, fullgraph=True)(largs, gargs)
    assert_close_scaled(compiled, eager, 1e-6, "compiled vs eager")
