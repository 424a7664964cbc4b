"""Which device each backend's tests run on, shared by the op tests."""
import pytest
import torch

from compress import ops

HAS_CUDA = torch.cuda.is_available()
INTERPRETED = not HAS_CUDA  # Triton runs under its interpreter (see conftest.py)

BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("triton", marks=pytest.mark.triton, id="triton"),
    pytest.param("cuda", marks=pytest.mark.cuda, id="cuda"),
]
NATIVE = [pytest.param("cpu", id="cpu"), pytest.param("cuda", marks=pytest.mark.cuda, id="cuda")]


def device_for(backend):
    if backend == "cuda" or (backend == "triton" and HAS_CUDA):
        return torch.device("cuda")
    return torch.device("cpu")


def run(op: str, backend: str, *args):
    with ops.backend(backend):
        out = getattr(ops, op)(*args)
    choice = ops.last_choice(op)
    assert choice.backend == backend, choice
    return out


def triton_op(op: str):
    return getattr(torch.ops.compress, f"{op}_triton").default


def native_op(op: str):
    return getattr(torch.ops.compress, op).default


def op_for(op: str, backend: str):
    return triton_op(op) if backend == "triton" else native_op(op)
