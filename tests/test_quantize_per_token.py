"""compress.ops.quantize_per_token: bit-identical to the reference on every backend."""
import pytest
import torch

from backends import BACKENDS, NATIVE, device_for, native_op, op_for, run
from compress import ops
from helpers import assert_exact, make_float, poisoned_outputs

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (2, 5, 33), (7, 1000), (1, 4097), (13,)], ids=str)
def test_matches_reference(backend, dtype, shape):
    dev = device_for(backend)
    x = (torch.randn(shape) * 5).to(dtype).to(dev)
    x.view(-1, shape[-1])[0] = 0  # an all-zero row: scale 1, q 0
    with poisoned_outputs():
        q, s = run("quantize_per_token", backend, x)
    qr, sr = ops.quantize_per_token_reference(x)
    assert_exact(q, qr, f"q {backend} {dtype} {shape}")
    assert_exact(s, sr, f"scale {backend} {dtype} {shape}")
    assert q.is_contiguous() and s.shape == x.shape[:-1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "strided", "offset"])
def test_non_contiguous(backend, layout):
    dev = device_for(backend)
    x = make_float(9, 70, dev, torch.float32, layout)
    q, s = run("quantize_per_token", backend, x)
    qr, sr = ops.quantize_per_token_reference(x)
    assert_exact(q, qr, layout)
    assert_exact(s, sr, layout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rounding_ties_to_even_and_clamp(backend):
    dev = device_for(backend)
    # absmax 127 -> scale 1: x / scale is x itself, so ties are exact .5 values
    x = torch.tensor([[127.0, 63.5, 0.5, 1.5, -2.5, -0.5, 2.5, -127.0]], device=dev)
    q, s = run("quantize_per_token", backend, x)
    assert s.item() == 1.0
    assert q.tolist() == [[127, 64, 0, 2, -2, 0, 2, -127]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(4, 0), (0, 5), (0,)], ids=str)
def test_empty(backend, shape):
    dev = device_for(backend)
    x = torch.randn(shape, device=dev)
    q, s = run("quantize_per_token", backend, x)
    qr, sr = ops.quantize_per_token_reference(x)
    assert_exact(q, qr)
    assert_exact(s, sr)


@pytest.mark.parametrize("backend", BACKENDS + [pytest.param("reference", id="reference")])
def test_bad_input(backend):
    dev = device_for(backend)
    with pytest.raises(TypeError, match="quantize_per_token: expected `x` to be torch.float32"), ops.backend(backend):
        ops.quantize_per_token(torch.zeros(3, 4, dtype=torch.int8, device=dev))
    with pytest.raises(ValueError, match="`x`"), ops.backend(backend):
        ops.quantize_per_token(torch.tensor(1.0, device=dev))


@pytest.mark.parametrize("backend", NATIVE)
def test_bad_input_native_op(backend):
    with pytest.raises(TypeError, match="`x`"):
        native_op("quantize_per_token")(torch.zeros(3, 4, dtype=torch.int8, device=device_for(backend)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    dev = device_for(backend)
    for shape in [(3, 17), (2, 4, 40)]:
        torch.library.opcheck(op_for("quantize_per_token", backend), (torch.randn(shape, device=dev),))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    dev = device_for(backend)
    x = torch.randn(5, 33, device=dev)

    def f(x):
        q, s = ops.quantize_per_token(x * 2)
        return q.float() * s[:, None]

    with ops.backend(backend):
        eager = f(x)
        compiled = torch.compile(f, fullgraph=True)(x)
    assert torch.equal(eager, compiled)
