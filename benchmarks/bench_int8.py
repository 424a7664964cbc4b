"""int8 speed: our int8 ops against torch's dense and int8 paths, measured in the same run.

    python benchmarks/bench_int8.py [--device cpu|cuda] [--threads N] [--quick] [--only BENCH] [--out DIR]

Benches (RESULTS_SCHEMA.md names): int8_mm (vs torch._int_mm and the float matmul), int8_linear
(W8A8 with the dequant fused; also the whole linear including activation quantization, `w8a8`,
vs the float nn.Linear), w8a16_linear (vs the float linear), quantize_per_token (vs the plain
torch reference). Writes benchmarks/results/int8-<device>-<date>.json; make a table and plot with
`python -m compress report <file>`. Every timed output is checked against its reference.
"""
from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from compress import ops
from compress.benchmark import Results, copies_to_exceed_cache, time_ms

CPU_MM = [(1024, 1024, 1024), (1, 4096, 4096), (16, 4096, 4096), (128, 4096, 4096), (2048, 2048, 2048)]
GPU_MM = [(1, 4096, 4096), (16, 4096, 4096), (128, 4096, 4096), (1024, 4096, 4096), (4096, 4096, 4096),
          (8192, 8192, 8192), (4095, 4097, 4096)]
# LLM-shaped linears (M tokens; N, K of the layer), as the int8 issue lists them
LLM = [(M, N, K) for M in (1, 16, 128, 2048) for N, K in ((4096, 4096), (11008, 4096), (4096, 11008))]
CPU_LINEAR = [(1024, 1024, 1024), (1, 4096, 4096), (16, 4096, 4096), (128, 4096, 4096)]
GPU_LINEAR = [(8192, 8192, 8192), (4096, 4096, 4096)] + LLM
QUICK = {"cpu": [(1024, 1024, 1024), (16, 1024, 1024)], "cuda": [(16, 4096, 4096), (4096, 4096, 4096)]}

IMPL = {"cpu": "ours_cpu", "cuda": "ours_cuda", "triton": "ours_triton"}


def backends(dev):
    return ["cpu"] if dev.type == "cpu" else ["cuda", "triton"]


def float_dtype(dev):
    return torch.float32 if dev.type == "cpu" else torch.bfloat16


def float_baseline(dev):
    return "fp32_torch" if dev.type == "cpu" else "bf16_cublas"


class Rotation:
    """Enough copies of the inputs that one pass over them is larger than the cache."""

    def __init__(self, make, bytes_per_set, dev):
        self.sets = [make() for _ in range(copies_to_exceed_cache(bytes_per_set, dev))]
        self._it = itertools.cycle(self.sets)

    def first(self):
        return self.sets[0]

    def __call__(self, fn):
        return lambda: fn(*next(self._it))


def rel_err(out, ref):
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30))


def time_ours(dev, op, rot, ref, min_s):
    """Times `op` on each of our backends for this device; returns {impl: timing}."""
    out = {}
    for backend in backends(dev):
        why = ops.why_unavailable(op, backend, dev)
        if why:
            print(f"  {IMPL[backend]}: unavailable ({why})")
            continue
        with ops.backend(backend):
            got = getattr(ops, op)(*rot.first())
            t = time_ms(rot(getattr(ops, op)), dev, min_seconds=min_s)
        out[IMPL[backend]] = (t, rel_err(got[0] if isinstance(got, tuple) else got, ref))
    return out


def add_rows(res, bench, ours, baselines, flops, keys):
    for impl, (t, err) in ours.items():
        for base, bt in baselines.items():
            res.add(bench=bench, impl=impl, baseline=base, **keys, ms=t["ms"], baseline_ms=bt["ms"],
                    p20=round(t["p20"], 6), p80=round(t["p80"], 6), tops=round(flops / t["ms"] / 1e9, 3),
                    max_rel_err=err)


def bench_int8_mm(res, dev, M, N, K, min_s):
    rot = Rotation(lambda: (torch.randint(-128, 128, (M, K), dtype=torch.int8, device=dev),
                            torch.randint(-128, 128, (K, N), dtype=torch.int8, device=dev)), M * K + K * N + 4 * M * N, dev)
    exact = ops.int8_mm_reference(*rot.first())
    frot = Rotation(lambda: (torch.randn(M, K, device=dev, dtype=float_dtype(dev)),
                             torch.randn(K, N, device=dev, dtype=float_dtype(dev))), 2 * (M * K + K * N + M * N), dev)
    baselines = {float_baseline(dev): time_ms(frot(torch.matmul), dev, min_seconds=min_s)}
    int_mm = "int_mm_cpu" if dev.type == "cpu" else "int_mm_cuda"
    try:
        assert torch.equal(torch._int_mm(*rot.first()), exact)
        baselines[int_mm] = time_ms(rot(torch._int_mm), dev, min_seconds=min_s)
    except RuntimeError as e:  # CUDA torch._int_mm needs M > 16
        print(f"  {int_mm} cannot run {M}x{N}x{K}: {str(e).splitlines()[0]}")
    keys = {"M": M, "N": N, "K": K, "dtype": "int8"}
    add_rows(res, "int8_mm", time_ours(dev, "int8_mm", rot, exact, min_s), baselines, 2 * M * N * K, keys)
    if int_mm in baselines:
        base = float_baseline(dev)
        res.add(bench="int8_mm", impl=int_mm, baseline=base, **keys, ms=baselines[int_mm]["ms"],
                baseline_ms=baselines[base]["ms"], tops=round(2 * M * N * K / baselines[int_mm]["ms"] / 1e9, 3))


def bench_linear(res, dev, M, N, K, min_s):
    fd = float_dtype(dev)
    w = torch.randn(N, K, device=dev) / K ** 0.5
    qw, w_scale = ops.quantize_per_token_reference(w)
    bias = torch.randn(N, device=dev)
    keys = {"M": M, "N": N, "K": K}
    flops = 2 * M * N * K
    # Every input set has its own copy of the weights too: a model's other layers evict a layer's
    # weights between its calls, and a shared weight would sit in the CPU's L3 (an int8 4096 x 4096
    # weight does, its fp32 original does not), flattering the small-M, memory-bound rows.
    frot = Rotation(lambda: (torch.randn(M, K, device=dev, dtype=fd), w.to(fd).clone(), bias.to(fd)),
                    fd.itemsize * (M * K + N * K), dev)
    dense = {float_baseline(dev): time_ms(frot(F.linear), dev, min_seconds=min_s)}

    # int8_linear: the GEMM with its fused epilogue, inputs already quantized
    def make_q():
        q, s = ops.quantize_per_token_reference(torch.randn(M, K, device=dev))
        return q, s, qw.clone(), w_scale, bias, fd
    qrot = Rotation(make_q, M * K + N * K + 4 * M * N, dev)
    ref = ops.int8_linear_reference(*qrot.first())
    baselines = dict(dense)

    def int_mm_dequant(q, s, qw_, ws, b, od):
        return (torch._int_mm(q, qw_.t()).float() * s[:, None] * ws[None, :] + b).to(od)
    try:
        int_mm_dequant(*qrot.first())
        baselines["int_mm_dequant"] = time_ms(qrot(int_mm_dequant), dev, min_seconds=min_s)
    except RuntimeError as e:  # CUDA torch._int_mm needs M > 16
        print(f"  int_mm_dequant cannot run {M}x{N}x{K}: {str(e).splitlines()[0]}")
    add_rows(res, "int8_linear", time_ours(dev, "int8_linear", qrot, ref, min_s), baselines, flops,
             {**keys, "dtype": "int8"})

    # the whole W8A8 linear: activation quantization + GEMM + epilogue, float in, float out
    xrot = Rotation(lambda: (torch.randn(M, K, device=dev, dtype=fd), qw.clone(), w_scale, bias), 2 * M * K + N * K, dev)
    x0 = xrot.first()
    q0, s0 = ops.quantize_per_token_reference(x0[0])
    ref = ops.int8_linear_reference(q0, s0, qw, w_scale, bias, fd)
    ours = {}
    for backend in backends(dev):
        if ops.why_unavailable("int8_linear", backend, dev) or ops.why_unavailable("quantize_per_token", backend, dev):
            continue
        with ops.backend(backend):
            got = ops.w8a8_linear(*x0)
            ours[IMPL[backend]] = (time_ms(xrot(ops.w8a8_linear), dev, min_seconds=min_s), rel_err(got, ref))
    add_rows(res, "int8_linear", ours, dense, flops, {**keys, "dtype": "int8", "variant": "w8a8_with_act_quant"})

    # weight-only int8
    wrot = Rotation(lambda: (torch.randn(M, K, device=dev, dtype=fd), qw.clone(), w_scale, bias), 2 * M * K + N * K, dev)
    ref = ops.w8a16_linear_reference(*wrot.first())
    add_rows(res, "w8a16_linear", time_ours(dev, "w8a16_linear", wrot, ref, min_s), dense,
             flops, {**keys, "dtype": str(fd).replace("torch.", "")})


def bench_quantize(res, dev, M, K, min_s):
    fd = float_dtype(dev)
    rot = Rotation(lambda: (torch.randn(M, K, device=dev, dtype=fd),), 3 * M * K, dev)
    ref = ops.quantize_per_token_reference(*rot.first())[0]
    base = {"torch_reference": time_ms(rot(ops.quantize_per_token_reference), dev, min_seconds=min_s)}
    add_rows(res, "quantize_per_token", time_ours(dev, "quantize_per_token", rot, ref, min_s), base,
             0, {"M": M, "K": K, "dtype": str(fd).replace("torch.", "")})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--quick", action="store_true", help="two shapes per bench, short timings")
    p.add_argument("--only", choices=["int8_mm", "linear", "quantize"], action="append")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    a = p.parse_args(argv)
    torch.manual_seed(0)  # the same inputs (and sparsity patterns) in every run: runs can be merged
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    only = set(a.only or ["int8_mm", "linear", "quantize"])
    min_s = 0.2 if a.quick else 1.0
    res = Results("int8", dev)
    print(f"on {res.header['device']}; timing: {res.header['timing']}")
    gpu = dev.type == "cuda"
    if "int8_mm" in only:
        for M, N, K in QUICK[dev.type] if a.quick else (GPU_MM if gpu else CPU_MM):
            print(f"int8_mm {M}x{N}x{K}")
            bench_int8_mm(res, dev, M, N, K, min_s)
    if "linear" in only:
        for M, N, K in QUICK[dev.type] if a.quick else (GPU_LINEAR if gpu else CPU_LINEAR):
            print(f"int8_linear / w8a16_linear {M}x{N}x{K}")
            bench_linear(res, dev, M, N, K, min_s)
    if "quantize" in only:
        for M, K in [(16, 4096), (2048, 4096)] if a.quick or not gpu else [(1, 4096), (16, 4096), (2048, 4096), (8192, 8192)]:
            print(f"quantize_per_token {M}x{K}")
            bench_quantize(res, dev, M, K, min_s)
    for r in res.rows:
        shape = "x".join(str(r[k]) for k in ("M", "N", "K") if k in r)
        print(f"{r['bench']:>18} {r.get('variant', ''):>20} {shape:>16} {r['impl']:>12} vs {r['baseline']:<15}"
              f"{r['ms']:9.3f} ms {r['speedup']:7.2f}x  err {r.get('max_rel_err', 0):.2e}")
    path = res.write(a.out) if a.out else res.write()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
