"""Backend choice for every op: one registry, one context manager, one record of what ran.

Each op has up to four implementations:
  "cpu"        our C++ kernel (compress._C), CPU tensors
  "cuda"       our CUDA kernel (compress._C), CUDA tensors
  "triton"     our Triton kernel, CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)
  "reference"  the plain-PyTorch reference, any device (slow; what tests compare against)

`auto` (the default) takes the first available of cuda, cpu, triton, reference for the
input's device, and never picks the Triton interpreter. Choose another with

    with compress.ops.backend("triton"):
        y = compress.ops.int8_mm(a, b)

An explicitly chosen backend that cannot run raises, saying why. After each eager call,
`compress.ops.last_choice("int8_mm")` tells which backend ran and why it was chosen; a
fallback to the slow reference also warns once. Under torch.compile the choice is made
while tracing, and last_choice is not updated by the compiled graph.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

log = logging.getLogger("compress")

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
_AUTO_ORDER = ("cuda", "cpu", "triton", "reference")


class _State:
    name = "auto"  # process-wide, not per thread: torch.compile guards on it when tracing


_STATE = _State()


@contextlib.contextmanager
def backend(name: str):
    """Run the ops inside the block on backend `name` (one of BACKENDS)."""
    if name not in BACKENDS:
        raise ValueError(f"compress.ops.backend: expected one of {BACKENDS}, got {name!r}")
    prev = _STATE.name
    _STATE.name = name
    try:
        yield
    finally:
        _STATE.name = prev


def current_backend() -> str:
    return _STATE.name


@dataclass(frozen=True)
class Choice:
    op: str
    backend: str
    device: str
    reason: str


@dataclass
class _Impl:
    fn: Callable
    # Returns None when this implementation can run on `device`, else the reason it cannot.
    unavailable: Callable[[torch.device], Optional[str]]


_REGISTRY: dict[str, dict[str, _Impl]] = {}
_DEVICE_ARG: dict[str, str] = {}  # op -> the argument dispatch names when the chosen backend cannot run
_LAST: dict[str, Choice] = {}
_WARNED: set = set()
_CACHE: dict = {}

# Set by compress.ops when it tries to import the extension.
native_import_error: Optional[str] = None


def register(op: str, name: str, fn: Callable, unavailable: Callable[[torch.device], Optional[str]]):
    assert name in BACKENDS and name != "auto", name
    _REGISTRY.setdefault(op, {})[name] = _Impl(fn, unavailable)


def register_standard(op: str, triton_fn: Callable, reference_fn: Callable):
    """The usual four backends of an op: the C++ kernels registered by compress._C for the schema
    `compress::<op>` (CPU and CUDA dispatch keys), a Triton custom op, and the reference."""
    native = getattr(torch.ops.compress, op).default
    # The wrappers dispatch on their first argument's device (the backward ops on xg's, where their
    # checks have put the first argument too), so the message of dispatch names it.
    _DEVICE_ARG[op] = native._schema.arguments[0].name
    register(op, "cpu", native, native_cpu(f"compress::{op}"))
    register(op, "cuda", native, native_cuda(f"compress::{op}"))
    register(op, "triton", triton_fn, triton_unavailable)
    register(op, "reference", reference_fn, always)


def implemented(op: str) -> tuple[str, ...]:
    return tuple(_REGISTRY[op])


def why_unavailable(op: str, name: str, device: torch.device) -> Optional[str]:
    """None if backend `name` of `op` can run on `device`, else the reason."""
    key = (op, name, device.type, device.index)
    if key not in _CACHE:
        impl = _REGISTRY[op].get(name)
        _CACHE[key] = (f"{op} has no {name} implementation" if impl is None
                       else impl.unavailable(device))
    return _CACHE[key]


def resolve(op: str, device: torch.device, arg: Optional[str] = None) -> tuple[str, Callable, str]:
    """The (backend, function, reason) that runs `op` for inputs on `device`; `arg`, if given, is
    the argument `device` is taken from, named when the chosen backend cannot run there."""
    want = _STATE.name
    if want != "auto":
        why = why_unavailable(op, want, device)
        if why is not None:
            on = f"`{arg}` on {device}" if arg else str(device)
            raise RuntimeError(f"{op}: backend {want!r} was chosen but cannot run on {on}: {why}")
        return want, _REGISTRY[op][want].fn, "chosen with compress.ops.backend"
    skipped = []
    for name in _AUTO_ORDER:
        if name not in _REGISTRY[op]:
            continue
        if name in ("cuda", "triton") and device.type != "cuda" or name == "cpu" and device.type != "cpu":
            continue  # not for this device (and the Triton interpreter is never an automatic choice)
        why = why_unavailable(op, name, device)
        if why is None:
            reason = "auto: " + ("; ".join(skipped) if skipped else f"first choice on {device.type}")
            return name, _REGISTRY[op][name].fn, reason
        skipped.append(f"not {name} ({why})")
    raise RuntimeError(f"{op}: no backend can run on {device}: {'; '.join(skipped)}")


def dispatch(op: str, device: torch.device) -> Callable:
    """The function that runs `op` on `device`, the device of the op's first argument."""
    name, fn, reason = resolve(op, device, _DEVICE_ARG.get(op))
    if not torch.compiler.is_compiling():
        _LAST[op] = Choice(op, name, str(device), reason)
        if name == "reference" and (op, device.type) not in _WARNED:
            _WARNED.add((op, device.type))
            warnings.warn(f"compress: {op} on {device} runs the slow plain-PyTorch reference ({reason})",
                          stacklevel=3)
        log.debug("%s on %s: %s (%s)", op, device, name, reason)
    return fn


def last_choice(op: str) -> Optional[Choice]:
    """Which backend the last eager call of `op` ran on, and why."""
    return _LAST.get(op)


# Availability predicates shared by every op.

@torch.compiler.assume_constant_result  # a fact of the process: Dynamo evaluates it while tracing
def _has_kernel(qualname: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)


def _native_unavailable(device, qualname: str, key: str, kernel: str, missing: str) -> Optional[str]:
    """Why compress._C cannot run `qualname` for dispatch key `key` ("CPU" or "CUDA") on `device`
    (None if it can): `kernel` names the kernel in the device message, `missing` says why there is none."""
    if device.type != key.lower():
        return f"{kernel} takes {key} tensors, got {device.type}"
    if native_import_error is not None:
        return f"compress._C failed to import: {native_import_error}"
    if not _has_kernel(qualname, key):
        return missing
    return None


def native_cpu(qualname: str) -> Callable[[torch.device], Optional[str]]:
    def unavailable(device):
        return _native_unavailable(device, qualname, "CPU", "the C++ kernel", "compress._C has no CPU kernel for it")
    return unavailable


def native_cuda(qualname: str, min_capability=(8, 0)) -> Callable[[torch.device], Optional[str]]:
    def unavailable(device):
        why = _native_unavailable(device, qualname, "CUDA", "the CUDA kernel",
                                  "compress._C was built without its CUDA part (see `python -m compress info`)")
        if why is not None:
            return why
        cap = torch.cuda.get_device_capability(device)
        if cap < min_capability:
            return f"needs compute capability {min_capability[0]}.{min_capability[1]}+, device has {cap[0]}.{cap[1]}"
        archs = built_cuda_archs()
        if not any(_runs_on(a, cap) for a in archs):
            return f"compress._C holds code for sm {archs}, none runs on sm {cap[0]}.{cap[1]}"
        return None
    return unavailable


def built_cuda_archs() -> list:
    try:
        from compress._build_config import BUILD
    except ImportError:
        return []
    return BUILD["cuda_archs"]


def _runs_on(arch: str, cap) -> bool:
    # A cubin for sm_XY runs on sm_XZ with Z >= Y; an "a" (arch-specific) cubin only on its own
    # chip; "+PTX" is JIT-compiled by the driver for any newer chip.
    base = arch.replace("+PTX", "")
    a = base.endswith("a")
    major, minor = (int(x) for x in base.rstrip("a").split("."))
    if arch.endswith("+PTX"):
        return cap >= (major, minor)
    if a:
        return cap == (major, minor)
    return cap[0] == major and cap[1] >= minor


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable(device: torch.device) -> Optional[str]:
    import importlib.util
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and triton_interpreted():
        return None
    return f"Triton kernels run on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device.type}"


def always(device: torch.device) -> Optional[str]:
    return None
