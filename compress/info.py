"""`python -m compress info`: what this installation holds and what it will run, read off the
live objects (the dispatcher, the device, the build config), never typed in by hand."""
from __future__ import annotations

import platform
import sys

import torch

import compress
from compress import ops
from compress.ops import _backend


def collect() -> dict:
    try:
        from compress._build_config import BUILD
    except ImportError:
        BUILD = None
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None

    info = {
        "compress": compress.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "triton_interpret": _backend.triton_interpreted(),
        "native_extension": "loaded" if ops._C is not None else f"not loaded: {_backend.native_import_error}",
        "build": BUILD,
        "cuda_kernels_registered": any(torch._C._dispatch_has_kernel_for_dispatch_key(f"compress::{op}", "CUDA")
                                       for op in ops.OPS),
        "cpu_isa": None,
        "cpu_threads": torch.get_num_threads(),
        "devices": [],
        "ops": {},
    }
    if ops._C is not None:
        info["cpu_isa"] = ops._C.cpu_isa()
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append(f"cuda:{i} {p.name} (sm {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
                                   f"{p.total_memory / 2**30:.0f} GiB)")
            devices.append(torch.device("cuda", i))
    for op in ops.OPS:
        per_op = {"implemented": list(ops.implemented(op))}
        for dev in devices:
            per_dev = {}
            for name in ops.implemented(op):
                per_dev[name] = ops.why_unavailable(op, name, dev) or "available"
            with ops.backend("auto"):
                try:
                    per_dev["auto"] = ops.resolve(op, dev)[0]
                except RuntimeError as e:
                    per_dev["auto"] = f"none: {e}"
            per_op[str(dev)] = per_dev
        info["ops"][op] = per_op
    return info


def render(info: dict) -> str:
    lines = [f"compress {info['compress']}",
             f"  python {info['python']}, torch {info['torch']} (CUDA {info['torch_cuda'] or 'none: CPU build'}), "
             f"triton {info['triton'] or 'not installed'}" + (" [TRITON_INTERPRET=1]" if info["triton_interpret"] else "")]
    lines.append(f"  native extension compress._C: {info['native_extension']}")
    b = info["build"]
    if b is None:
        lines.append("  build config: missing (package not built with setup.py)")
    else:
        cuda = (f"yes, for sm {';'.join(b['cuda_archs'])} with CUDA {b['nvcc_cuda_version']}" if b["cuda_built"]
                else f"no ({b['cuda_reason']})")
        lines.append(f"  CUDA part built: {cuda}; CUDA kernels registered: "
                     f"{'yes' if info['cuda_kernels_registered'] else 'no'}")
        lines.append(f"  built against torch {b['built_with_torch']}")
    lines.append(f"  CPU kernels: ISA {info['cpu_isa'] or 'n/a'}, {info['cpu_threads']} threads")
    lines.append("  devices: " + ("; ".join(info["devices"]) if info["devices"] else "no CUDA device seen (CPU only)"))
    lines.append("  ops (backend: availability on each device; auto = what runs by default):")
    for op, per_op in info["ops"].items():
        lines.append(f"    {op}: implemented {', '.join(per_op['implemented'])}")
        for dev, per_dev in per_op.items():
            if dev == "implemented":
                continue
            avail = [n for n, s in per_dev.items() if n != "auto" and s == "available"]
            lines.append(f"      {dev}: auto -> {per_dev['auto']}; available: {', '.join(avail) or 'none'}")
            for n, s in per_dev.items():
                if n != "auto" and s != "available":
                    lines.append(f"        {n}: {s}")
    return "\n".join(lines)
