"""Backend choice: the context manager, auto, fallbacks, and the record of what ran."""
import warnings

import pytest
import torch

from compress import ops
from compress.ops import _backend
from helpers import assert_exact, make_int8, poisoned_outputs


def test_auto_on_cpu_runs_the_cpp_kernel():
    a, b = make_int8(5, 9, "cpu"), make_int8(9, 4, "cpu")
    ops.int8_mm(a, b)
    choice = ops.last_choice("int8_mm")
    assert choice.backend == "cpu" and choice.device == "cpu"
    assert "first choice" in choice.reason


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="expected one of"):
        with ops.backend("fastest"):
            pass


def test_explicit_backend_that_cannot_run_says_why():
    a, b = make_int8(5, 9, "cpu"), make_int8(9, 4, "cpu")
    with pytest.raises(RuntimeError, match="backend 'cuda' was chosen but cannot run on `a` on cpu: the CUDA kernel takes CUDA"):
        with ops.backend("cuda"):
            ops.int8_mm(a, b)


def test_context_manager_restores_after_error():
    with pytest.raises(KeyError):
        with ops.backend("reference"):
            raise KeyError
    assert ops.current_backend() == "auto"


def test_reference_backend():
    a, b = make_int8(5, 9, "cpu"), make_int8(9, 4, "cpu")
    with ops.backend("reference"):
        out = ops.int8_mm(a, b)
    assert ops.last_choice("int8_mm").backend == "reference"
    assert_exact(out, (a.long() @ b.long()).int(), "reference vs int64 matmul")


def test_auto_fallback_is_recorded_and_warned(monkeypatch):
    impl = _backend._REGISTRY["int8_mm"]["cpu"]
    monkeypatch.setattr(impl, "unavailable", lambda device: "simulated: kernel missing")
    monkeypatch.setattr(_backend, "_CACHE", {})
    monkeypatch.setattr(_backend, "_WARNED", set())
    a, b = make_int8(5, 9, "cpu"), make_int8(9, 4, "cpu")
    with pytest.warns(UserWarning, match="slow plain-PyTorch reference.*simulated: kernel missing"):
        out = ops.int8_mm(a, b)
    choice = ops.last_choice("int8_mm")
    assert choice.backend == "reference" and "not cpu (simulated: kernel missing)" in choice.reason
    assert_exact(out, ops.int8_mm_reference(a, b))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.int8_mm(a, b)  # warned once only


def test_poison_catches_an_unwritten_output():
    # The poisoning these tests rely on must be able to fail: a kernel that leaves its output
    # unwritten is caught even where the uninitialised memory happens to hold the right values.
    a, b = make_int8(6, 10, "cpu"), make_int8(10, 7, "cpu")
    ref = ops.int8_mm_reference(a, b)

    def lazy_kernel(a, b):
        out = torch.empty(a.shape[0], b.shape[1], dtype=torch.int32)
        out[:-1] = ref[:-1]  # forgets the last row
        return out

    with poisoned_outputs():
        bad = lazy_kernel(a, b)
    assert (bad[-1] == torch.iinfo(torch.int32).max).all()
    with pytest.raises(AssertionError, match="7 of 42 elements differ"):
        assert_exact(bad, ref)


def test_runs_on():
    assert _backend._runs_on("8.0", (8, 6)) and _backend._runs_on("8.0", (8, 0))
    assert not _backend._runs_on("8.0", (9, 0))
    assert _backend._runs_on("9.0a", (9, 0)) and not _backend._runs_on("9.0a", (10, 0))
    assert _backend._runs_on("8.0+PTX", (12, 0))


def test_compile_fullgraph_as_the_first_call_of_a_process():
    """Backend availability is looked up while Dynamo traces (nothing cached by an eager call yet)."""
    import subprocess
    import sys
    code = ("import torch, compress\n"
            "m = compress.nn.FusedLSTM(8, 16)\n"
            "x = torch.randn(3, 2, 8)\n"
            "y = torch.compile(m, fullgraph=True)(x)[0]\n"
            "assert torch.allclose(y, m(x)[0]), 'compiled != eager'\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
