"""compress.ops.w8a8_linear (quantize_per_token + int8_linear in one op): bit-identical to the two-op
path on every backend, and to the reference (= the two references composed)."""
import pytest
import torch
from torch import nn

from backends import BACKENDS, INTERPRETED, NATIVE, device_for, native_op, op_for, run
from compress import ops
from compress.nn import Int8Linear
from helpers import FLOAT_TOL, assert_close_scaled, assert_exact, make_float, make_int8, poisoned_outputs

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(M, N, K) for M in (1, 3, 17) for N in (3, 17) for K in (1, 17, 80)]
# On a GPU the CUDA backend picks the fused kernel for M <= 16 and the two kernels above; these
# force each (csrc/int8/int8_linear_cuda.cpp), so both are compared on the same shapes.
CUDA_PATHS = ("fused", "two_kernels")


def make_args(M, N, K, dev, dtype, bias=True, layout="contiguous"):
    x = (make_float(M, K, "cpu", dtype, layout) * 4).to(dev) if layout == "contiguous" else \
        make_float(M, K, dev, dtype, layout)
    if M > 1:
        x[1] = 0  # an all-zero row: scale 1, q 0
    qw = make_int8(N, K, dev)
    w_scale = (torch.rand(N) / 50 + 1e-3).to(dev)
    b = torch.randn(N).to(dtype).to(dev) if bias else None
    return x, qw, w_scale, b


def two_op(backend, x, qw, w_scale, bias):
    """The path this op replaces, on the same backend."""
    with ops.backend(backend):
        q, s = ops.quantize_per_token(x)
        return ops.int8_linear(q, s, qw, w_scale, bias, x.dtype)


def assert_same(out, ref, what):
    """assert_exact for float results that may hold NaN (a NaN where the other has NaN counts as equal)."""
    assert_exact(out.isnan(), ref.isnan(), f"{what}: NaN positions")
    assert_exact(torch.nan_to_num(out, nan=0.0), torch.nan_to_num(ref, nan=0.0), what)


def check(backend, args, what):
    with poisoned_outputs():
        out = run("w8a8_linear", backend, *args)
    assert out.is_contiguous() and out.dtype == args[0].dtype
    assert_same(out, two_op(backend, *args), f"{what}: vs the two-op path")
    ref = ops.w8a8_linear_reference(*args)
    if backend == "triton" and INTERPRETED and args[0].dtype == torch.bfloat16:
        # Triton 3.8's interpreter converts float32 -> bfloat16 by truncation, not round-to-nearest
        # (its int8_linear too, hence the two-op equality above): one bf16 ulp.
        fin = ref.isfinite()
        assert_exact(out.isnan(), ref.isnan(), f"{what}: NaN positions")
        assert_close_scaled(out[fin], ref[fin], FLOAT_TOL[torch.bfloat16], what)
    else:
        assert_same(out, ref, f"{what}: vs the reference")


@pytest.fixture(params=[None, *CUDA_PATHS])
def cuda_path(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setenv("COMPRESS_W8A8_CUDA_PATH", request.param)
    return request.param


def _skip_path(backend, path):
    if path is not None and backend != "cuda":
        pytest.skip("COMPRESS_W8A8_CUDA_PATH only concerns the CUDA backend")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,K", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_two_op_path_and_reference(backend, M, N, K, dtype, cuda_path):
    _skip_path(backend, cuda_path)
    if cuda_path == "fused" and M > 16:
        pytest.skip("the fused CUDA kernel takes M <= 16")
    args = make_args(M, N, K, device_for(backend), dtype, bias=(M + N + K) % 2 == 1)
    check(backend, args, f"{backend} {cuda_path} {M}x{N}x{K} {dtype}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "strided", "offset"])
def test_non_contiguous_x(backend, layout, cuda_path):
    _skip_path(backend, cuda_path)
    dev = device_for(backend)
    x, qw, w_scale, b = make_args(5, 17, 80, dev, torch.float32, layout=layout)
    qw = make_int8(17, 80, dev, "strided")  # and a weight read through its strides
    check(backend, (x, qw, w_scale, b), f"{backend} {cuda_path} {layout}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_finite_rows(backend, dtype, cuda_path):
    # A NaN row: scale 1, the NaN quantizes to 0 (and an inf beside it to 127); an inf row: scale
    # inf, its finite entries 0 and the inf NaN -> 0; a row with a huge finite value; a zero row.
    _skip_path(backend, cuda_path)
    dev = device_for(backend)
    x = torch.randn(6, 17) * 3
    x[0, 3] = float("nan")
    x[1, 5] = float("nan")
    x[1, 6] = float("inf")
    x[2, 0] = float("-inf")
    x[3, 4] = 6e4
    x[4] = 0
    x = x.to(dtype).to(dev)
    qw, w_scale = make_int8(3, 17, dev), (torch.rand(3) / 50 + 1e-3).to(dev)
    check(backend, (x, qw, w_scale, torch.randn(3).to(dev)), f"{backend} {cuda_path} non-finite {dtype}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,K", [(0, 5, 7), (4, 0, 7), (4, 5, 0)], ids=str)
def test_empty(backend, M, N, K):
    # K = 0: every scale is 1 and the output 0 * w_scale + bias, as the two references compose.
    dev = device_for(backend)
    args = make_args(M, N, K, dev, torch.float32)
    with poisoned_outputs():
        out = run("w8a8_linear", backend, *args)
    assert_exact(out, ops.w8a8_linear_reference(*args), f"{backend} empty {M}x{N}x{K}")


BAD = [
    ("int x", {"x": ((3, 8), torch.int8)}, TypeError, "w8a8_linear: expected `x` to be torch.float32"),
    ("3-D x", {"x": ((2, 3, 8), torch.float32)}, ValueError, "expected `x` to be 2-D"),
    ("float qw", {"qw": ((5, 8), torch.float32)}, TypeError, "expected `qw` to be torch.int8"),
    ("qw K", {"qw": ((5, 9), torch.int8)}, ValueError, "expected `qw` to be \\[N, K\\] with K = x.shape\\[1\\] = 8"),
    ("bf16 w_scale", {"w_scale": ((5,), torch.bfloat16)}, TypeError, "expected `w_scale` to be torch.float32"),
    ("w_scale N", {"w_scale": ((4,), torch.float32)}, ValueError, "expected `w_scale` to have qw.shape\\[0\\] = 5"),
    ("bias N", {"bias": ((4,), torch.float32)}, ValueError, "expected `bias` to have qw.shape\\[0\\] = 5"),
    ("int bias", {"bias": ((5,), torch.int32)}, TypeError, "expected `bias` to be torch.float32"),
]


def bad_args(dev, change):
    spec = {"x": ((3, 8), torch.float32), "qw": ((5, 8), torch.int8), "w_scale": ((5,), torch.float32),
            "bias": ((5,), torch.float32), **change}
    return [torch.ones(shape, dtype=dtype, device=dev) for shape, dtype in spec.values()]


@pytest.mark.parametrize("backend", BACKENDS + [pytest.param("reference", id="reference")])
@pytest.mark.parametrize("what,change,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input(backend, what, change, exc, msg):
    with pytest.raises(exc, match=msg), ops.backend(backend):
        ops.w8a8_linear(*bad_args(device_for(backend), change))


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("what,change,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_native_op(backend, what, change, exc, msg):
    # torch.ops.compress.w8a8_linear straight to the C++ kernel: the same messages, naming this op's
    # arguments (not those of the int8_linear it calls).
    with pytest.raises(exc, match=msg):
        native_op("w8a8_linear")(*bad_args(device_for(backend), change))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    dev = device_for(backend)
    for M, N, K, bias in [(3, 17, 17, True), (1, 5, 80, False)]:
        x, qw, w_scale, b = make_args(M, N, K, dev, torch.float32, bias)
        torch.library.opcheck(op_for("w8a8_linear", backend), (x, qw, w_scale, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8linear_w8a8_uses_the_op_and_compiles(backend):
    dev = device_for(backend)
    torch.manual_seed(0)
    m = Int8Linear.from_float(nn.Linear(17, 3), "w8a8").to(dev)
    x = torch.randn(2, 5, 17, device=dev)
    with ops.backend(backend):
        eager = m(x)
        assert ops.last_choice("w8a8_linear").backend == backend
        compiled = torch.compile(m, fullgraph=True)(x)
    assert eager.shape == (2, 5, 3)
    assert torch.equal(eager, compiled)
    assert torch.equal(eager, ops.w8a8_linear_reference(x.reshape(10, 17), m.weight, m.weight_scale,
                                                         m.bias).reshape(2, 5, 3))
