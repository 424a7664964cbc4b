"""Sparse linear ops (2:4, BSR, CSR) against their references on every backend."""
import pytest
import torch

from backends import BACKENDS, NATIVE, device_for, native_op, op_for, run
from compress import formats, ops
from helpers import FLOAT_TOL, assert_close_scaled, make_float, poisoned_outputs

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 1, 4), (1, 7, 8), (3, 17, 36), (17, 33, 100), (33, 70, 64)]  # (M, N, K)


def weight(N, K, kind, dtype, dev, density=0.3):
    """kind: 2:4 | random (unstructured) | zero | dense | blocky (whole blocks and rows zero)."""
    w = torch.randn(N, K)
    if kind == "2:4":
        g = w.reshape(N, K // 4, 4)
        drop = g.abs().argsort(-1)[..., :2]
        w = g.scatter(-1, drop, 0.0).reshape(N, K)
        w[0] = 0  # an empty row
    elif kind == "random":
        w[torch.rand(N, K) > density] = 0
        w[N // 2] = 0
    elif kind == "zero":
        w.zero_()
    elif kind == "blocky":
        w[torch.rand(N, K) > 0.7] = 0
        w[: N // 3] = 0
        w[:, K // 2:] = 0
    return w.to(dtype).to(dev)


def check(backend, op, args, ref, dtype, what):
    with poisoned_outputs():
        out = run(op, backend, *args)
    assert_close_scaled(out, ref, FLOAT_TOL[dtype], what)


def bias_for(N, dev, with_bias):
    return torch.randn(N, device=dev) if with_bias else None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sparse24(backend, M, N, K, dtype):
    dev = device_for(backend)
    x = make_float(M, K, dev, dtype)
    p = formats.pack_2_4(weight(N, K, "2:4", dtype, dev))
    b = bias_for(N, dev, M % 2)
    check(backend, "sparse24_linear", (x, p.values, p.meta, b), ops.sparse24_linear_reference(x, p.values, p.meta, b),
          dtype, f"2:4 {backend} {M}x{N}x{K}")


SM90_SHAPES = [(129, 130, 192), (257, 77, 100), (131, 264, 1092), (5, 33, 64)]  # (M, N, K)


@pytest.mark.cuda
@pytest.mark.parametrize("sm90", ["1", "0"], ids=["sm90-on", "sm90-off"])
@pytest.mark.parametrize("M,N,K", SM90_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_sparse24_sm90(monkeypatch, sm90, M, N, K, dtype, with_bias):
    """The Hopper wgmma.sp + TMA kernel (csrc/sparse/sparse24_sm90.cu, never run before its first
    GPU run) forced on (COMPRESS_SPARSE24_SM90=1: any M; odd M above the 128-row threshold, N and K
    tails: K % 64 != 0 is padded by the glue, N, M not multiples of the 128-row tiles) and off
    (=0: the sm_80 mma.sp kernel on the same inputs), against the reference with poisoned outputs."""
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the sm_90a kernel runs on compute capability 9.0 only")
    monkeypatch.setenv("COMPRESS_SPARSE24_SM90", sm90)
    dev = torch.device("cuda")
    x = make_float(M, K, dev, dtype)
    p = formats.pack_2_4(weight(N, K, "2:4", dtype, dev))
    b = bias_for(N, dev, with_bias)
    check("cuda", "sparse24_linear", (x, p.values, p.meta, b), ops.sparse24_linear_reference(x, p.values, p.meta, b),
          dtype, f"2:4 cuda sm90={sm90} {M}x{N}x{K}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block", [(16, 16), (32, 16), (5, 7)], ids=str)
def test_bsr(backend, M, N, K, dtype, block):
    dev = device_for(backend)
    x = make_float(M, K, dev, dtype)
    b = formats.to_bsr(weight(N, K, "blocky", dtype, dev), block)
    bias = bias_for(N, dev, M % 2)
    args = (x, b.crow, b.col, b.values, N, bias)
    check(backend, "bsr_linear", args, ops.bsr_linear_reference(*args), dtype, f"bsr {backend} {M}x{N}x{K} {block}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_csr(backend, M, N, K, dtype):
    dev = device_for(backend)
    x = make_float(M, K, dev, dtype)
    c = formats.to_csr(weight(N, K, "random", dtype, dev))
    bias = bias_for(N, dev, M % 2)
    args = (x, c.crow, c.col, c.values, N, bias)
    check(backend, "csr_linear", args, ops.csr_linear_reference(*args), dtype, f"csr {backend} {M}x{N}x{K}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["zero", "dense"])
def test_fully_zero_and_fully_dense(backend, kind):
    dev = device_for(backend)
    M, N, K = 5, 19, 40
    x = torch.randn(M, K, device=dev)
    w = weight(N, K, kind, torch.float32, dev)
    bias = torch.randn(N, device=dev)
    c, b = formats.to_csr(w), formats.to_bsr(w, (16, 16))
    check(backend, "csr_linear", (x, c.crow, c.col, c.values, N, bias), x @ w.t() + bias, torch.float32, f"csr {kind}")
    check(backend, "bsr_linear", (x, b.crow, b.col, b.values, N, bias), x @ w.t() + bias, torch.float32, f"bsr {kind}")
    if kind == "zero":
        p = formats.pack_2_4(w)
        check(backend, "sparse24_linear", (x, p.values, p.meta, bias), x @ w.t() + bias, torch.float32, "2:4 zero")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "strided", "offset"])
def test_non_contiguous_x(backend, layout):
    dev = device_for(backend)
    x = make_float(9, 64, dev, torch.float32, layout)
    w = weight(24, 64, "2:4", torch.float32, dev)
    p, c, b = formats.pack_2_4(w), formats.to_csr(w), formats.to_bsr(w, (16, 16))
    ref = x @ w.t()
    check(backend, "sparse24_linear", (x, p.values, p.meta, None), ref, torch.float32, layout)
    check(backend, "csr_linear", (x, c.crow, c.col, c.values, 24, None), ref, torch.float32, layout)
    check(backend, "bsr_linear", (x, b.crow, b.col, b.values, 24, None), ref, torch.float32, layout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    dev = device_for(backend)
    x = torch.randn(0, 32, device=dev)
    w = weight(8, 32, "2:4", torch.float32, dev)
    p, c, b = formats.pack_2_4(w), formats.to_csr(w), formats.to_bsr(w, (16, 16))
    assert run("sparse24_linear", backend, x, p.values, p.meta, None).shape == (0, 8)
    assert run("csr_linear", backend, x, c.crow, c.col, c.values, 8, None).shape == (0, 8)
    assert run("bsr_linear", backend, x, b.crow, b.col, b.values, 8, None).shape == (0, 8)


def _bad_cases(dev):
    x = torch.randn(4, 16, device=dev)
    w = weight(6, 16, "2:4", torch.float32, dev)
    p, c, b = formats.pack_2_4(w), formats.to_csr(w), formats.to_bsr(w, (4, 4))
    return [
        ("sparse24_linear", (x.to(torch.int8), p.values, p.meta, None), TypeError, "`x`"),
        ("sparse24_linear", (x, p.values.half(), p.meta, None), TypeError, "`values` to be torch.float32"),
        ("sparse24_linear", (x, p.values, p.meta.int(), None), TypeError, "`meta` to be torch.uint8"),
        ("sparse24_linear", (x[:, :14], p.values, p.meta, None), ValueError, "divisible by 4"),
        ("sparse24_linear", (x, p.values[:, :6], p.meta, None), ValueError, "`values` to be \\[N, K/2\\]"),
        ("sparse24_linear", (x, p.values, p.meta[:5], None), ValueError, "`meta` to be \\[N, K/4\\]"),
        ("sparse24_linear", (x, p.values, p.meta, torch.ones(5, device=dev)), ValueError, "`bias`"),
        ("csr_linear", (x, c.crow.long(), c.col, c.values, 6, None), TypeError, "`crow` to be torch.int32"),
        ("csr_linear", (x, c.crow, c.col, c.values, 7, None), ValueError, "`crow` to have 8 entries"),
        ("csr_linear", (x, c.crow, c.col[:-1], c.values, 6, None), ValueError, "`col`"),
        ("bsr_linear", (x, b.crow, b.col, b.values.double(), 6, None), TypeError, "`values`"),
        ("bsr_linear", (x, b.crow, b.col, b.values.flatten(1), 6, None), ValueError, "`values` to be 3-D"),
    ]


@pytest.mark.parametrize("backend", BACKENDS + [pytest.param("reference", id="reference")])
def test_bad_input(backend):
    for op, args, exc, msg in _bad_cases(device_for(backend)):
        with pytest.raises(exc, match=msg), ops.backend(backend):
            getattr(ops, op)(*args)


@pytest.mark.parametrize("backend", NATIVE)
def test_bad_input_native_op(backend):
    for op, args, exc, msg in _bad_cases(device_for(backend)):
        with pytest.raises(exc, match=msg.split("`")[1] if "`" in msg else msg):
            native_op(op)(*args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    dev = device_for(backend)
    x = torch.randn(5, 32, device=dev)
    w = weight(12, 32, "2:4", torch.float32, dev)
    p, c, b = formats.pack_2_4(w), formats.to_csr(w), formats.to_bsr(w, (16, 16))
    bias = torch.randn(12, device=dev)
    torch.library.opcheck(op_for("sparse24_linear", backend), (x, p.values, p.meta, bias))
    torch.library.opcheck(op_for("csr_linear", backend), (x, c.crow, c.col, c.values, 12, bias))
    torch.library.opcheck(op_for("bsr_linear", backend), (x, b.crow, b.col, b.values, 12, None))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    dev = device_for(backend)
    x = torch.randn(5, 32, device=dev)
    w = weight(12, 32, "2:4", torch.float32, dev)
    p, c, b = formats.pack_2_4(w), formats.to_csr(w), formats.to_bsr(w, (16, 16))

    def f(x):
        return (ops.sparse24_linear(x, p.values, p.meta) + ops.csr_linear(x, c.crow, c.col, c.values, 12)
                + ops.bsr_linear(x, b.crow, b.col, b.values, 12)).relu()

    with ops.backend(backend):
        eager = f(x)
        compiled = torch.compile(f, fullgraph=True)(x)
    assert_close_scaled(compiled, eager, 1e-6, "compiled vs eager")
