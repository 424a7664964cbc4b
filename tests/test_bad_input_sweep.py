"""The bad-input sweep (tests/bad_input_sweep.py): 2000 random corrupted calls in a subprocess, so that
a segfault or abort fails the test with the call it died in; the sweep's checker shown to catch
planted violations; one reproducer per known defect (xfail, strict: a fix makes it fail, and then
its KNOWN entry and the xfail go), and those of the defects fixed since."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bad_input_sweep as sweep
from compress import formats, ops

SWEEP = Path(sweep.__file__)


def run_sweep_process(tmp_path, code=None, calls=2000, seed=0, timeout=300):
    """Runs the sweep script (or `code` that ends in bad_input_sweep.main) in a fresh process; returns
    (returncode, parsed JSON or None, combined output, last line of the progress file)."""
    out, progress = tmp_path / "sweep.json", tmp_path / "progress.txt"
    argv = ["--calls", str(calls), "--seed", str(seed), "--json", str(out), "--progress", str(progress)]
    cmd = [sys.executable, str(SWEEP), *argv] if code is None else \
        [sys.executable, "-c", code + f"\nsys.exit(bad_input_sweep.main({argv!r}))"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=SWEEP.parent.parent)
    lines = progress.read_text().splitlines() if progress.exists() else []
    return p.returncode, json.loads(out.read_text()) if out.exists() else None, p.stdout + p.stderr, \
        lines[-1] if lines else "(no call made)"


def assert_no_crash(rc, res, output, last):
    assert rc >= 0 and res is not None, (f"the sweep died (exit status {rc}) in the call\n  {last}\n"
                                         f"output:\n{output[-4000:]}")


def test_sweep_2000_calls(tmp_path):
    rc, res, output, last = run_sweep_process(tmp_path)
    assert_no_crash(rc, res, output, last)
    c = res["counts"]
    print(output.splitlines()[0], json.dumps(res["known"]))
    assert not res["ops_without_generator"], (
        f"ops without an argument generator in bad_input_sweep.VALID: {res['ops_without_generator']}")
    assert c["violations"] == 0, "\n".join(res["violations"][:30])
    assert c["calls"] >= 2000 and rc == 0, output[-4000:]
    # Not vacuous: every op ran, and calls both returned checked results and raised.
    assert set(res["ops"]) == set(sweep.OPS)
    assert c["matched"] > 300 and c["raised_named"] > 800, c
    triton_here = ops.why_unavailable("int8_mm", "triton", "cpu") is None  # the interpreter, without a GPU
    assert set(res["by_route"]) == {"auto", "native", "reference"} | ({"triton"} if triton_here else set())


def test_crash_is_reported_with_its_call(tmp_path):
    # int8_mm replaced by an abort: the process dies, and the runner says in which call.
    code = ("import os, sys; sys.path.insert(0, 'tests'); import bad_input_sweep\n"
            "bad_input_sweep.ops.int8_mm = lambda *a: os.abort()")
    rc, res, output, last = run_sweep_process(tmp_path, code, calls=200)  # dies at the first int8_mm call
    assert rc != 0 and res is None
    assert any(f"{route} int8_mm(" in last for route in ("auto", "reference", "triton")), last
    with pytest.raises(AssertionError, match="died .* in the call"):
        assert_no_crash(rc, res, output, last)


def _verdict(fn, ref=lambda: torch.ones(3)):
    return sweep.check_call(fn, ref, lambda o, r: sweep.assert_matches("int8_mm", o, r, {}), ["a", "b"], ["a"])


def test_checker_catches_planted_violations():
    def raise_(e):
        raise e
    good = torch.ones(3)
    assert _verdict(lambda: good.clone())[0] == "matched"
    assert _verdict(lambda: good + 1)[0] == "violation"                                   # wrong values
    assert _verdict(lambda: good.int())[0] == "violation"                                 # wrong dtype
    assert _verdict(lambda: torch.ones(4))[0] == "violation"                              # wrong shape
    assert _verdict(lambda: raise_(ValueError("int8_mm: expected `a` to be 2-D")))[0] == "raised_named"
    assert _verdict(lambda: raise_(ValueError("int8_mm: expected `b` on cpu")))[0] == "raised_named_other"
    assert _verdict(lambda: raise_(ValueError("int8_mm: shapes do not match")))[0] == "violation"
    assert _verdict(lambda: raise_(KeyError("a")))[0] == "violation"                      # not a Python error type
    assert _verdict(lambda: good, ref=lambda: raise_(ValueError("`a`")))[0] == "violation"  # accepts bad input


def test_checker_nan_aware():
    nan, inf = math.nan, math.inf
    same = sweep.check_call(lambda: torch.tensor([1.0, nan, inf]), lambda: torch.tensor([1.0, nan, inf]),
                            lambda o, r: sweep.assert_matches("w8a16_linear", o, r, {"x": torch.ones(1)}), [], [])
    assert same[0] == "matched"
    for got in ([1.0, 0.0, inf], [1.0, nan, -inf], [2.0, nan, inf]):
        v = sweep.check_call(lambda: torch.tensor(got), lambda: torch.tensor([1.0, nan, inf]),
                             lambda o, r: sweep.assert_matches("w8a16_linear", o, r, {"x": torch.ones(1)}), [], [])
        assert v[0] == "violation", got
    # sparse ops skip stored zeros: where the dense reference is NaN they are free, elsewhere bound
    free = sweep.check_call(lambda: torch.tensor([1.0, 5.0]), lambda: torch.tensor([1.0, nan]),
                            lambda o, r: sweep.assert_matches("csr_linear", o, r, {"x": torch.ones(1)}), [], [])
    assert free[0] == "matched"


def test_every_op_has_a_generator():
    assert set(sweep.OPS) <= set(sweep.VALID), f"add generators to VALID for {set(sweep.OPS) - set(sweep.VALID)}"


def test_sweep_covers_every_op_of_the_library():
    # Every schema of namespace `compress` (the Triton backends' custom ops <op>_triton aside: the
    # sweep's "triton" route calls them) is one of the sweep's ops.
    defined = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("compress::")}
    backends = {n for n in defined if n.endswith("_triton") and n[:-len("_triton")] in defined}
    assert defined - backends == set(sweep.OPS), (f"not in bad_input_sweep.OPS: {defined - backends - set(sweep.OPS)}; "
                                                  f"not an op: {set(sweep.OPS) - defined}")


# ---------------------------------------------------------------- known defects and fixed ones

def _csr(K=8, N=5):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=g) * (torch.rand(N, K, generator=g) < 0.5)
    return torch.randn(3, K, generator=g), formats.to_csr(w)


def _lstm(T=3, B=3, H=5):
    g = torch.Generator().manual_seed(0)
    return {"xg": torch.randn(T, B, 4 * H, generator=g), "h0": torch.randn(B, H, generator=g),
            "c0": torch.randn(B, H, generator=g), "w_hh": torch.randn(4 * H, H, generator=g) * 0.3, "w_hr": None,
            "lengths": torch.tensor([3, 1, 2]), "reverse": False}


def test_triton_recurrence_with_strided_lengths_and_transposed_states():
    """Formerly known issues: the Triton recurrences read a strided `lengths` as if contiguous and
    indexed a transposed h0 / c0 as row-major."""
    a = _lstm()
    a["lengths"] = torch.tensor([3, 9, 1, 9, 2, 9])[::2]
    a["h0"], a["c0"] = (sweep.relayout(a[k], "transposed") for k in ("h0", "c0"))
    assert not a["lengths"].is_contiguous() and not a["h0"].is_contiguous()
    with ops.backend("triton"):
        out = ops.lstm_layer(*a.values())
    sweep.assert_matches("lstm_layer", out, ops.lstm_layer_reference(*a.values()), a)


def test_triton_sparse_indices_with_strides_match():
    """Formerly a known issue: the Triton csr_linear read a strided `col` as if contiguous."""
    x, c = _csr()
    args = {"x": x, "crow": c.crow, "col": sweep.relayout(c.col, "strided"), "values": c.values,
            "out_features": 5, "bias": None}
    with ops.backend("triton"):
        out = ops.csr_linear(*args.values())
    sweep.assert_matches("csr_linear", out, ops.csr_linear_reference(*args.values()), args)


def _run(op, route, args, corrupted):
    """sweep.verdict; skipped where the route cannot run here (Triton on CPU tensors: interpreter only)."""
    why = route == "triton" and ops.why_unavailable(op, "triton", "cpu")
    if why:
        pytest.skip(why)
    return sweep.verdict(op, route, args, corrupted)


# Reproducers of defects the sweep found: each returns (op, route, args, corrupted names); its
# comment says what the code did before the fix.

def _repro_triton_k0_scales():
    # K = 0 returned the bias (or zeros) without applying the scales: no NaN from 0 * inf
    return "w8a16_linear", "triton", {"x": torch.randn(2, 0), "qw": torch.zeros(3, 0, dtype=torch.int8),
                                      "w_scale": torch.tensor([1.0, math.inf, 1.0]), "bias": None}, ["w_scale"]


def _repro_triton_k0_scales_int8():
    empty = torch.zeros(3, 0, dtype=torch.int8)
    args = {"qx": empty[:2], "x_scale": torch.tensor([1.0, math.nan]), "qw": empty, "w_scale": torch.ones(3),
            "bias": torch.ones(3), "out_dtype": torch.bfloat16}
    return "int8_linear", "triton", args, ["x_scale"]


def _repro_meta_duplicate_position():
    x = torch.randn(2, 4)
    meta = torch.tensor([[0b0101]], dtype=torch.uint8)  # both kept weights at position 1
    return "sparse24_linear", "auto", {"x": x, "values": torch.tensor([[1.0, 2.0]]), "meta": meta,
                                       "bias": None}, ["meta"]


def _repro_cpp_bias_name():
    # the C++ check named the bias `(*bias)` (COMPRESS_CHECK_DIM stringified the expression)
    return "int8_linear", "native", {"qx": torch.ones(2, 3, dtype=torch.int8), "x_scale": torch.ones(2),
                                     "qw": torch.ones(4, 3, dtype=torch.int8), "w_scale": torch.ones(4),
                                     "bias": torch.tensor(1.0), "out_dtype": torch.float32}, ["bias"]


def _repro_cpp_undefined_tensor():
    # None for a required Tensor reached the C++ kernel as an undefined tensor: "tensor does not
    # have a device", naming nothing
    a = _lstm()
    a["h0"] = None
    return "lstm_layer", "native", a, ["h0"]


def _repro_cpp_undefined_tensor_backward():
    a = _lstm()
    grads = {"dy": torch.ones(3, 3, 5), "dh_n": None, "dc_n": torch.ones(3, 5)}
    return "lstm_layer_backward", "native", {**grads, **a}, ["dh_n"]


def _repro_rnn_lengths_type():
    # the check compared lengths.device before checking that lengths is a tensor: AttributeError
    a = _lstm()
    a["lengths"] = [3, 1, 2]
    return "lstm_layer", "auto", a, ["lengths"]


def _repro_backend_choice_message():
    # the message named the backend and the device, not the argument
    return "quantize_per_token", "triton", {"x": torch.randn(2, 3, device="meta")}, ["x"]


def _repro_torch_bool_arg():
    # torch's parser gives the kernel reverse=False for None: the sweep's reference takes the same
    a = _lstm()
    a["reverse"] = None
    return "lstm_layer", "native", a, ["reverse"]


def _repro_torch_bool_arg_int():
    a = _lstm()
    a["reverse"] = 2
    return "lstm_layer", "native", a, ["reverse"]


def _repro_triton_interpreter_bf16_add():
    # the Triton sparse24_linear added the two values in bfloat16, which Triton 3.8's interpreter gets wrong
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.bfloat16)
    values = torch.tensor([[0.5, -1.28]], dtype=torch.bfloat16)
    meta = torch.tensor([[0]], dtype=torch.uint8)  # both kept weights at position 0: the sum -0.78
    return "sparse24_linear", "triton", {"x": x, "values": values, "meta": meta, "bias": None}, ["meta"]


@pytest.mark.parametrize("make,expected", [
    (_repro_triton_k0_scales, "matched"), (_repro_triton_k0_scales_int8, "matched"),
    (_repro_cpp_bias_name, "raised_named"), (_repro_cpp_undefined_tensor, "raised_named"),
    (_repro_cpp_undefined_tensor_backward, "raised_named"), (_repro_rnn_lengths_type, "raised_named"),
    (_repro_backend_choice_message, "raised_named"), (_repro_torch_bool_arg, "matched"),
    (_repro_torch_bool_arg_int, "matched"), (_repro_triton_interpreter_bf16_add, "matched")], ids=lambda v: v.__name__[len("_repro_"):] if callable(v) else None)
def test_formerly_known_issue(make, expected):
    op, route, args, corrupted = make()
    outcome, detail = _run(op, route, args, corrupted)
    assert outcome == expected, detail


def test_torch_converts_bool_arguments():
    """What torch_converted assumes of torch's parser: None and numbers become bool(value), a str
    is rejected naming the argument. If torch starts rejecting them, torch_converted can go."""
    a = _lstm()
    op = torch.ops.compress.lstm_layer.default
    for value, as_bool in ((None, False), (0, False), (2, True), (0.5, True)):
        out = op(*{**a, "reverse": value}.values())
        sweep.assert_matches("lstm_layer", out, ops.lstm_layer_reference(*{**a, "reverse": as_bool}.values()), a)
    with pytest.raises(RuntimeError, match="'reverse'"):
        op(*{**a, "reverse": "yes"}.values())


@pytest.mark.parametrize("route", ["native", "triton"])
def test_sparse24_meta_naming_one_position_twice_adds_both(route):
    """Formerly a known issue: the kernels add both values, and now so does the reference."""
    op, _, args, corrupted = _repro_meta_duplicate_position()
    outcome, detail = _run(op, route, args, corrupted)
    assert outcome == "matched", detail


# Known defects not fixed yet: (KNOWN id, reproducer), each an xfail(strict) until its fix.
REPRODUCERS = []


def test_every_known_issue_has_a_reproducer():
    assert {k for k, _ in REPRODUCERS} == set(sweep.KNOWN)


@pytest.mark.parametrize("known,make", [
    pytest.param(k, f, id=f.__name__[len("_repro_"):],
                 marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=sweep.KNOWN[k][0]))
    for k, f in REPRODUCERS])
def test_known_issue(known, make):
    op, route, args, corrupted = make()
    outcome, detail = _run(op, route, args, corrupted)
    if outcome == "violation" and not sweep.KNOWN[known][1](op, route, args, corrupted, detail):
        pytest.fail(f"not the known violation (the sweep would not file it under {known!r}): {detail}")
    assert outcome != "violation", detail  # the contract the known defect breaks


def test_triton_malformed_crow_is_memory_safe(tmp_path):
    # Unvalidated index contents may give any result or error on the Triton backend, but no crash.
    code = ("import os, sys, torch; os.environ['TRITON_INTERPRET'] = '1'\n"
            "from compress import formats, ops\n"
            "w = torch.randn(5, 8) * (torch.rand(5, 8) < 0.5); c = formats.to_csr(w)\n"
            "crow = c.crow.clone(); crow[2] = 100\n"
            "with ops.backend('triton'):\n"
            "    try: ops.csr_linear(torch.randn(3, 8), crow, c.col, c.values, 5)\n"
            "    except Exception as e: print(type(e).__name__, e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"exit status {p.returncode}: {p.stderr[-2000:]}"
