"""`python -m compress` commands, run as a user would (a subprocess)."""
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
    assert "running on the CPU" in out and "backend cpu" in out
    (path,) = tmp_path.glob("demo-cpu-*.json")
    results = json.loads(path.read_text())
    (row,) = results["rows"]
    assert row["bench"] == "model_mlp" and row["impl"] == "ours_cpu" and row["baseline"] == "fp32_torch"
    assert row["ms"] > 0 and row["baseline_ms"] > 0
    assert row["cosine"] > 0.99  # int8 W8A8 of a random MLP stays close to fp32


def test_unknown_command_fails():
    p = subprocess.run([sys.executable, "-m", "compress", "frobnicate"], capture_output=True, text=True)
    assert p.returncode != 0 and "invalid choice" in p.stderr


@pytest.mark.cuda
def test_demo_quick_on_cuda(tmp_path):
    out = run_cli("demo", "--quick", "--device", "cuda", "--out", str(tmp_path))
    assert "backend cuda" in out
