"""`python -m compress demo`: the main job, end to end on real work.

For now (foundation): an MLP whose weights are quantized to int8 per output channel, its
activations per row, its matmuls run through compress.ops.int8_mm, timed against the same MLP in
float (fp32 on the CPU, bf16 on a GPU) on the chosen device; accuracy is the relative error and
cosine similarity of the outputs. The conversion APIs (quantize, prune, sparsify, fuse_rnn) replace
this hand-made conversion as their issues land.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from compress import ops
from compress.benchmark import Results, copies_to_exceed_cache, time_ms


def _quantize_rows(x: torch.Tensor):
    """Symmetric per-row int8: x ~= q * scale[:, None]."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp_min(1e-8) / 127
    return (x / scale).round().clamp(-127, 127).to(torch.int8), scale


class Int8MLP(nn.Module):
    """An MLP of int8 weights [K, N] with float per-channel scales; activations quantized per row."""

    def __init__(self, mlp: nn.Sequential):
        super().__init__()
        self.layers = []
        for m in mlp:
            if isinstance(m, nn.Linear):
                qw, s = _quantize_rows(m.weight.detach().float())
                self.layers.append(("linear", qw.t().contiguous(), s.view(1, -1), m.bias.detach().float()))
            else:
                self.layers.append(("act", m, None, None))

    def forward(self, x):
        for kind, a, b, c in self.layers:
            if kind == "act":
                x = a(x)
            else:
                qx, sx = _quantize_rows(x)
                x = ops.int8_mm(qx, a).float() * sx * b + c
        return x


def _mlp(width: int, depth: int) -> nn.Sequential:
    mods = []
    for _ in range(depth):
        mods += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*mods[:-1])


def run(quick: bool = False, device: str | None = None, out: str | None = None) -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu":
        print("compress demo: running on the CPU" + ("" if torch.cuda.is_available() else " (no CUDA GPU found)"))
    else:
        print(f"compress demo: running on {torch.cuda.get_device_name(dev)}")
    torch.manual_seed(0)
    width, depth, batch = (512, 3, 64) if quick else ((1024, 4, 256) if dev.type == "cpu" else (4096, 4, 2048))
    float_dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    model = _mlp(width, depth).to(dev).eval()
    t0 = time.perf_counter()
    qmodel = Int8MLP(model)
    convert_s = time.perf_counter() - t0

    n_sets = copies_to_exceed_cache(batch * width * 4, dev)
    xs = [torch.randn(batch, width, device=dev) for _ in range(n_sets)]
    model_f = model.to(float_dtype)
    with torch.no_grad():
        ref = model(xs[0].to(float_dtype)).float()
        y = qmodel(xs[0])
        choice = ops.last_choice("int8_mm")
        rel_err = ((y - ref).norm() / ref.norm()).item()
        cos = torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0).item()
        it = iter(range(10**9))
        t_float = time_ms(lambda: model_f(xs[next(it) % n_sets].to(float_dtype)), dev, min_seconds=0.5 if quick else 2)
        t_int8 = time_ms(lambda: qmodel(xs[next(it) % n_sets]), dev, min_seconds=0.5 if quick else 2)

    float_bytes = sum(p.numel() * p.element_size() for p in model_f.parameters())
    int8_bytes = sum(a.numel() + b.numel() * 4 + c.numel() * 4 for k, a, b, c in qmodel.layers if k == "linear")
    impl = {"cpu": "ours_cpu", "cuda": "ours_cuda", "triton": "ours_triton"}.get(choice.backend, choice.backend)
    baseline = "fp32_torch" if dev.type == "cpu" else "bf16_cublas"
    results = Results("demo", dev)
    row = results.add(bench="model_mlp", impl=impl, baseline=baseline, ms=t_int8["ms"], baseline_ms=t_float["ms"],
                      batch=batch, hidden=width, layers=depth, dtype="int8", max_rel_err=round(rel_err, 5),
                      cosine=round(cos, 6), bytes=int8_bytes, baseline_bytes=float_bytes)

    print(f"\nMLP {depth} x Linear({width}, {width}), batch {batch}: int8 W8A8 via compress.ops.int8_mm "
          f"[backend {choice.backend}: {choice.reason}]")
    print(f"  {'model':<14}{'latency ms':>12}{'speed-up':>10}{'size MB':>10}{'rel err':>10}{'cosine':>10}")
    print(f"  {str(float_dtype).replace('torch.', ''):<14}{t_float['ms']:>12.3f}{1.0:>10.2f}{float_bytes / 1e6:>10.2f}"
          f"{0.0:>10.4f}{1.0:>10.4f}")
    print(f"  {'int8 (ours)':<14}{t_int8['ms']:>12.3f}{row['speedup']:>10.2f}{int8_bytes / 1e6:>10.2f}"
          f"{rel_err:>10.4f}{cos:>10.4f}")
    print(f"  conversion took {convert_s:.2f} s; timing: {results.header['timing']}")
    if out:
        path = results.write(Path(out))
        print(f"  results written to {path}")
    return results.to_dict()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m compress demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: finishes in well under 2 minutes on 2 CPU cores")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if a GPU is found, else cpu")
    p.add_argument("--out", help="directory for the results JSON")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is visible to torch")
    run(a.quick, a.device, a.out)
