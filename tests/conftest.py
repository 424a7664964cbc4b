"""Test setup: the `cuda` marker, and Triton under its interpreter when no GPU is present."""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

# Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter (numpy). The variable
# must be set before any @triton.jit is evaluated, i.e. before compress.triton_kernels imports.
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (runs on the lent GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Tests may change threads, the CPU ISA or the backend; put them back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    from compress import ops
    if ops._C is not None:
        ops._C.set_cpu_isa("auto")
    assert ops.current_backend() == "auto", "a test leaked a compress.ops.backend(...) choice"
