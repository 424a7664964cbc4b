"""int8 GEMM speed: compress.ops.int8_mm against torch._int_mm and the float matmul, same run.

    python benchmarks/bench_int8.py [--device cpu|cuda] [--threads N] [--quick] [--out DIR]

Writes benchmarks/results/int8-<device>-<date>.json (RESULTS_SCHEMA.md); make a table and plot
with `python -m compress report <file>`. Every timed output is checked against the exact result.
"""
from __future__ import annotations

import argparse
import itertools

import torch

from compress import ops
from compress.benchmark import Results, copies_to_exceed_cache, time_ms

CPU_SHAPES = [(1024, 1024, 1024), (1, 4096, 4096), (16, 4096, 4096), (128, 4096, 4096), (2048, 2048, 2048)]
GPU_SHAPES = [(1, 4096, 4096), (16, 4096, 4096), (128, 4096, 4096), (1024, 4096, 4096), (4096, 4096, 4096),
              (8192, 8192, 8192), (4095, 4097, 4096)]
QUICK_CPU = [(1024, 1024, 1024), (16, 1024, 1024)]
QUICK_GPU = [(16, 4096, 4096), (4096, 4096, 4096)]


def rotating(make, n):
    sets = [make() for _ in range(n)]
    it = itertools.cycle(sets)
    return lambda: next(it), sets[0]


def bench_shape(res: Results, dev: torch.device, M: int, N: int, K: int, min_seconds: float):
    n = copies_to_exceed_cache(M * K + K * N + 4 * M * N, dev)
    nxt, (a0, b0) = rotating(lambda: (torch.randint(-128, 128, (M, K), dtype=torch.int8, device=dev),
                                      torch.randint(-128, 128, (K, N), dtype=torch.int8, device=dev)), n)
    exact = ops.int8_mm_reference(a0, b0)
    ops_per_call = 2 * M * N * K
    float_dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    fsets = [(a.to(float_dtype), b.to(float_dtype)) for a, b in [nxt() for _ in range(n)]]
    fit = itertools.cycle(fsets)

    def timed(fn):
        return time_ms(lambda: fn(*nxt()), dev, min_seconds=min_seconds)

    baselines = {("fp32_torch" if dev.type == "cpu" else "bf16_cublas"):
                 time_ms(lambda: torch.matmul(*next(fit)), dev, min_seconds=min_seconds)}
    int_mm_name = "int_mm_cpu" if dev.type == "cpu" else "int_mm_cuda"
    try:
        assert torch.equal(torch._int_mm(a0, b0), exact)
        baselines[int_mm_name] = timed(torch._int_mm)
    except RuntimeError as e:  # e.g. CUDA torch._int_mm needs M > 16
        print(f"  {int_mm_name} cannot run {M}x{N}x{K}: {str(e).splitlines()[0]}")

    impls = {"cpu": "ours_cpu"} if dev.type == "cpu" else {"cuda": "ours_cuda", "triton": "ours_triton"}
    for backend, impl in impls.items():
        if ops.why_unavailable("int8_mm", backend, dev):
            print(f"  {impl}: unavailable ({ops.why_unavailable('int8_mm', backend, dev)})")
            continue
        with ops.backend(backend):
            out = ops.int8_mm(a0, b0)
            mismatches = int((out != exact).sum())
            t = timed(ops.int8_mm)
        for base, bt in baselines.items():
            res.add(bench="int8_mm", impl=impl, baseline=base, M=M, N=N, K=K, dtype="int8",
                    ms=t["ms"], baseline_ms=bt["ms"], p20=round(t["p20"], 6), p80=round(t["p80"], 6),
                    tops=round(ops_per_call / t["ms"] / 1e9, 3), max_rel_err=0.0 if mismatches == 0 else
                    float((out - exact).abs().max() / exact.abs().max().clamp_min(1)), mismatches=mismatches)
    if int_mm_name in baselines:
        base = "fp32_torch" if dev.type == "cpu" else "bf16_cublas"
        t = baselines[int_mm_name]
        res.add(bench="int8_mm", impl=int_mm_name, baseline=base, M=M, N=N, K=K, dtype="int8", ms=t["ms"],
                baseline_ms=baselines[base]["ms"], tops=round(ops_per_call / t["ms"] / 1e9, 3))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--shape", action="append", help="MxNxK, repeatable; replaces the default list")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    shapes = ([tuple(int(x) for x in s.split("x")) for s in a.shape] if a.shape else
              (QUICK_CPU if a.quick else CPU_SHAPES) if dev.type == "cpu" else (QUICK_GPU if a.quick else GPU_SHAPES))
    res = Results("int8", dev)
    for M, N, K in shapes:
        print(f"int8_mm {M}x{N}x{K} on {res.header['device']}")
        bench_shape(res, dev, M, N, K, 0.3 if a.quick else 1.0)
        for r in res.rows:
            if (r["M"], r["N"], r["K"]) == (M, N, K):
                print(f"  {r['impl']:>12} vs {r['baseline']:<12} {r['ms']:9.3f} ms  {r['speedup']:6.2f}x  {r['tops']:8.2f} TOPS")
    path = res.write(a.out) if a.out else res.write()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
