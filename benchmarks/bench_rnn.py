"""Fused RNN speed: our LSTM / GRU modules against nn.LSTM / nn.GRU (cuDNN, oneDNN), same run.

    python benchmarks/bench_rnn.py [--device cpu|cuda] [--threads N] [--quick] [--only BENCH] [--out DIR]

Benches (RESULTS_SCHEMA.md names):
- lstm_inference, gru_inference: the whole module forward (input projection + recurrence) under
  no_grad, our fused module on each of our backends vs the torch module (baseline `cudnn` on the
  GPU, `nn_lstm_cpu` on the CPU, also used for GRU) with the same weights and dtype.
- the same benches with compressed weights (`dtype: int8`, or `format: bsr` + `sparsity`), made
  with the public conversions compress.quantize / compress.prune + compress.sparsify, against our
  own dense fused module (baseline `dense_fused`) and the torch module.
- lstm_training, gru_training: forward + backward (loss = output.sum()) vs the torch module.
Shape keys: batch, hidden, seq, layers (input size = hidden). Every timed output is checked against
the torch module's (max_rel_err). Writes benchmarks/results/rnn-<device>-<date>.json.
"""
from __future__ import annotations

import argparse
import copy
import itertools

import torch
from torch import nn

import compress
from compress import ops
from compress.benchmark import Results, time_ms
from compress.nn import FusedGRU, FusedLSTM
from bench_int8 import IMPL, backends, rel_err

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TORCH_MOD = {"lstm": nn.LSTM, "gru": nn.GRU}
FUSED_MOD = {"lstm": FusedLSTM, "gru": FusedGRU}

# (kind, batch, hidden, seq, layers, dtype)
GPU_INFER = [(k, b, h, s, l, d) for k in ("lstm", "gru") for b in (1, 8, 64) for h in (256, 512, 1024)
             for s in (128, 512) for l in (1, 2) for d in ("fp32", "bf16", "fp16")]
CPU_INFER = [("lstm", 1, 256, 100, 1, "fp32"), ("gru", 1, 256, 100, 1, "fp32"), ("lstm", 8, 256, 100, 1, "fp32"),
             ("lstm", 1, 512, 128, 1, "fp32"), ("lstm", 1, 256, 128, 2, "fp32"), ("lstm", 64, 256, 128, 1, "fp32")]
GPU_TRAIN = [(k, 64, 1024, s, 1, d) for k in ("lstm", "gru") for s in (128, 512) for d in ("fp32", "bf16")]
CPU_TRAIN = [("lstm", 64, 256, 64, 1, "fp32")]
# compressed weights: (kind, batch, hidden, seq, layers, dtype of the dense model)
GPU_COMPRESSED = [(k, b, 1024, 512, 1, "bf16") for k in ("lstm", "gru") for b in (1, 8)]
CPU_COMPRESSED = [("lstm", 1, 256, 100, 1, "fp32"), ("gru", 1, 256, 100, 1, "fp32"), ("lstm", 1, 512, 128, 1, "fp32")]
QUICK = {"cpu": dict(infer=CPU_INFER[:2], train=[], compressed=CPU_COMPRESSED[:1]),
         "cuda": dict(infer=[("lstm", 1, 1024, 128, 1, "bf16"), ("lstm", 64, 1024, 128, 1, "bf16")],
                      train=GPU_TRAIN[:1], compressed=GPU_COMPRESSED[:1])}


class _Holder(nn.Module):
    """Gives the conversions a parent to swap the RNN in (they cannot replace the model itself)."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn


def _torch_baseline(dev):
    return "cudnn" if dev.type == "cuda" else "nn_lstm_cpu"


def _inputs(kind, batch, hidden, seq, dev, dtype, n=4):
    return [torch.randn(seq, batch, hidden, device=dev, dtype=dtype) for _ in range(n)]


def _timed(fn, xs, dev, min_s):
    it = itertools.cycle(xs)
    return time_ms(lambda: fn(next(it)), dev, min_seconds=min_s)


def _our_backends(op, dev, what=""):
    """Our backends of `op` that can run on `dev`; says why for the others."""
    for backend in backends(dev):
        why = ops.why_unavailable(op, backend, dev)
        if why:
            print(f"  {what}{IMPL[backend]}: unavailable ({why})")
        else:
            yield backend


def _keys(kind, batch, hidden, seq, layers, dtype):
    return {"batch": batch, "hidden": hidden, "seq": seq, "layers": layers, "dtype": dtype}


def bench_inference(res, dev, cfg, min_s):
    kind, batch, hidden, seq, layers, dname = cfg
    dtype = DTYPES[dname]
    ref_mod = TORCH_MOD[kind](hidden, hidden, layers).to(dev, dtype).eval()
    ours = FUSED_MOD[kind].from_torch(ref_mod).eval()
    xs = _inputs(kind, batch, hidden, seq, dev, dtype)
    with torch.no_grad():
        ref = ref_mod(xs[0])[0]
        t_base = _timed(lambda x: ref_mod(x), xs, dev, min_s)
        for backend in _our_backends(f"{kind}_layer", dev):
            with ops.backend(backend):
                err = rel_err(ours(xs[0])[0], ref)
                t = _timed(lambda x: ours(x), xs, dev, min_s)
            res.add(bench=f"{kind}_inference", impl=IMPL[backend], baseline=_torch_baseline(dev),
                    **_keys(*cfg), ms=t["ms"], baseline_ms=t_base["ms"], p20=round(t["p20"], 6),
                    p80=round(t["p80"], 6), max_rel_err=err)


def bench_training(res, dev, cfg, min_s):
    kind, batch, hidden, seq, layers, dname = cfg
    dtype = DTYPES[dname]
    ref_mod = TORCH_MOD[kind](hidden, hidden, layers).to(dev, dtype).train()
    ours = FUSED_MOD[kind].from_torch(ref_mod).train()
    xs = [x.requires_grad_() for x in _inputs(kind, batch, hidden, seq, dev, dtype)]

    def step(m):
        def run(x):
            m.zero_grad(set_to_none=True)
            m(x)[0].float().sum().backward()
        return run

    step(ref_mod)(xs[0])
    ref_grad = ref_mod.weight_hh_l0.grad.clone()
    t_base = _timed(step(ref_mod), xs, dev, min_s)
    for backend in _our_backends(f"{kind}_layer", dev):
        with ops.backend(backend):
            step(ours)(xs[0])
            err = rel_err(ours.weight_hh_l0.grad, ref_grad)
            t = _timed(step(ours), xs, dev, min_s)
        res.add(bench=f"{kind}_training", impl=IMPL[backend], baseline=_torch_baseline(dev), **_keys(*cfg),
                ms=t["ms"], baseline_ms=t_base["ms"], p20=round(t["p20"], 6), p80=round(t["p80"], 6),
                max_rel_err=err, variant="forward+backward, error of grad weight_hh_l0")


def bench_compressed(res, dev, cfg, min_s, sparsity=0.9, block=(32, 32)):
    """int8 weights (compress.quantize) and 90% block-sparse recurrent weights (prune + sparsify)."""
    kind, batch, hidden, seq, layers, dname = cfg
    dtype = DTYPES[dname]
    ref_mod = TORCH_MOD[kind](hidden, hidden, layers).to(dev, dtype).eval()
    xs = _inputs(kind, batch, hidden, seq, dev, dtype)
    variants = []
    q = _Holder(FUSED_MOD[kind].from_torch(ref_mod))
    report = compress.quantize(q)
    variants.append(("int8", {"dtype": "int8", "base_dtype": dname}, ref_mod, q, report))
    pruned = _Holder(copy.deepcopy(ref_mod))
    compress.prune(pruned, sparsity=sparsity, structure="block", block=block)
    compress.prune.remove(pruned)
    s = _Holder(FUSED_MOD[kind].from_torch(pruned.rnn))
    report = compress.sparsify(s, format="bsr", block=block)
    variants.append(("bsr", {"format": "bsr", "sparsity": sparsity, "block": block[0]}, pruned.rnn, s, report))
    with torch.no_grad():
        for name, keys, dense_ref, conv, report in variants:
            entry = report["rnn"] if any(e.name == "rnn" for e in report.entries) else None
            if entry is None or not entry.converted:
                print(f"  {name}: not converted ({entry.reason if entry else 'no report entry'})")
                continue
            dense = FUSED_MOD[kind].from_torch(dense_ref).eval()
            ref = dense_ref(xs[0])[0]
            t_torch = _timed(lambda x: dense_ref(x), xs, dev, min_s)
            for backend in _our_backends(entry.details.get("op", f"{kind}_layer"), dev, f"{name} "):
                with ops.backend(backend):
                    err = rel_err(conv.rnn(xs[0])[0], ref)
                    t = _timed(lambda x: conv.rnn(x), xs, dev, min_s)
                    t_dense = _timed(lambda x: dense(x), xs, dev, min_s)
                common = dict(bench=f"{kind}_inference", impl=IMPL[backend], **{**_keys(*cfg), **keys}, ms=t["ms"],
                              p20=round(t["p20"], 6), p80=round(t["p80"], 6), max_rel_err=err)
                res.add(baseline="dense_fused", baseline_ms=t_dense["ms"], **common)
                res.add(baseline=_torch_baseline(dev), baseline_ms=t_torch["ms"], **common)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", choices=["inference", "training", "compressed"])
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    res = Results("rnn", dev)
    print(f"on {res.header['device']}; timing: {res.header['timing']}")
    min_s = 0.2 if a.quick else 1.0
    gpu = dev.type == "cuda"
    plan = QUICK[dev.type] if a.quick else dict(infer=GPU_INFER if gpu else CPU_INFER,
                                                train=GPU_TRAIN if gpu else CPU_TRAIN,
                                                compressed=GPU_COMPRESSED if gpu else CPU_COMPRESSED)
    for part, fn in (("inference", bench_inference), ("training", bench_training), ("compressed", bench_compressed)):
        if a.only and a.only != part:
            continue
        for cfg in plan["infer" if part == "inference" else "train" if part == "training" else "compressed"]:
            print(f"{part}: {cfg}")
            n = len(res.rows)
            fn(res, dev, cfg, min_s)
            for r in res.rows[n:]:
                what = r.get("format") or r["dtype"]
                print(f"  {r['impl']:>11} {what:>5} vs {r['baseline']:<12}{r['ms']:9.3f} ms "
                      f"{r['speedup']:7.2f}x  err {r['max_rel_err']:.1e}")
    print(f"wrote {res.write(a.out) if a.out else res.write()}")


if __name__ == "__main__":
    main()
