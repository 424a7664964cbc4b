"""Sparse linear speed: our 2:4 / BSR / CSR ops against the dense and torch.sparse paths, same run.

    python benchmarks/bench_sparse.py [--device cpu|cuda] [--threads N] [--quick] [--out DIR]

Benches (RESULTS_SCHEMA.md names): sparse24_linear, bsr_linear, csr_linear, each y = x @ W^T with
W [N, K] pruned to the given sparsity; baselines: the dense linear (fp32 on CPU, bf16 cuBLAS on GPU)
and torch's own sparse path (torch.sparse CSR; to_sparse_semi_structured for 2:4 on GPU). Writes
benchmarks/results/sparse-<device>-<date>.json; every timed output is checked against the reference.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from compress import formats, ops
from compress.benchmark import Results, time_ms
from bench_int8 import IMPL, Rotation, backends, float_baseline, float_dtype, rel_err

CPU_SHAPES = [(M, 4096, 4096) for M in (1, 16, 128)]
GPU_SHAPES = [(8192, 8192, 8192)] + [(M, 4096, 4096) for M in (1, 16, 128, 2048)]
QUICK = {"cpu": [(16, 1024, 1024)], "cuda": [(16, 4096, 4096), (2048, 4096, 4096)]}


def pruned(N, K, dev, dtype, kind, sparsity, block=(32, 32)):
    w = torch.randn(N, K, device=dev)
    if kind == "2:4":
        g = w.reshape(N, K // 4, 4)
        w = g.scatter(-1, g.abs().argsort(-1)[..., :2], 0.0).reshape(N, K)
    elif kind == "block":
        bn, bk = block
        keep = torch.rand(N // bn, K // bk, device=dev) >= sparsity
        w = w * keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    else:
        w = w * (torch.rand(N, K, device=dev) >= sparsity)
    return w.to(dtype)


def bench(res, dev, M, N, K, fmt, sparsity, min_s):
    fd = float_dtype(dev)
    kind = {"2:4": "2:4", "bsr": "block", "csr": "unstructured"}[fmt]
    w = pruned(N, K, dev, fd, kind, sparsity)
    op = {"2:4": "sparse24_linear", "bsr": "bsr_linear", "csr": "csr_linear"}[fmt]
    if fmt == "2:4":
        p = formats.pack_2_4(w)
        extra = (p.values, p.meta, None)
    else:
        s = formats.to_bsr(w, (32, 32)) if fmt == "bsr" else formats.to_csr(w)
        extra = (s.crow, s.col, s.values, N, None)
    # Each input set has its own copy of the weight (dense or compressed), as in bench_int8: a
    # shared one would stay in the CPU's L3 between calls, which a layer of a real model does not.
    def fresh(*ts):
        return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in ts)
    sparse_bytes = sum(t.numel() * t.element_size() for t in extra if isinstance(t, torch.Tensor))
    rot = Rotation(lambda: (torch.randn(M, K, device=dev, dtype=fd), *fresh(*extra)),
                   fd.itemsize * M * K + sparse_bytes, dev)
    ref = F.linear(rot.first()[0].float(), w.float()).to(fd)
    dense_rot = Rotation(lambda: (torch.randn(M, K, device=dev, dtype=fd), w.clone()), fd.itemsize * (M * K + N * K), dev)
    baselines = {float_baseline(dev): time_ms(dense_rot(F.linear), dev, min_seconds=min_s)}
    try:
        if fmt == "2:4" and dev.type == "cuda":
            from torch.sparse import to_sparse_semi_structured
            ws = to_sparse_semi_structured(w)
            baselines["torch_semi_structured"] = time_ms(dense_rot(lambda x, _: F.linear(x, ws)), dev, min_seconds=min_s)
        elif fmt == "csr":
            wc = w.to_sparse_csr()
            csr_rot = Rotation(lambda: (torch.randn(M, K, device=dev, dtype=fd), wc.clone()),
                               fd.itemsize * M * K + sparse_bytes, dev)
            name = "cusparse_csr" if dev.type == "cuda" else "torch_sparse_csr"
            baselines[name] = time_ms(csr_rot(lambda x, wc_: (wc_ @ x.t()).t()), dev, min_seconds=min_s)
    except (RuntimeError, NotImplementedError) as e:
        print(f"  torch's sparse baseline cannot run: {str(e).splitlines()[0]}")
    keys = {"M": M, "N": N, "K": K, "dtype": str(fd).replace("torch.", ""), "format": fmt,
            "sparsity": round(1 - (w != 0).float().mean().item(), 3)}
    if fmt == "bsr":
        keys["block"] = 32
    for backend in backends(dev):
        why = ops.why_unavailable(op, backend, dev)
        if why:
            print(f"  {IMPL[backend]}: unavailable ({why})")
            continue
        with ops.backend(backend):
            err = rel_err(getattr(ops, op)(*rot.first()), ref)
            t = time_ms(rot(getattr(ops, op)), dev, min_seconds=min_s)
        for base, bt in baselines.items():
            res.add(bench=op, impl=IMPL[backend], baseline=base, **keys, ms=t["ms"], baseline_ms=bt["ms"],
                    p20=round(t["p20"], 6), p80=round(t["p80"], 6), max_rel_err=err)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.manual_seed(0)  # the same inputs (and sparsity patterns) in every run: runs can be merged
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    res = Results("sparse", dev)
    print(f"on {res.header['device']}; timing: {res.header['timing']}")
    min_s = 0.2 if a.quick else 1.0
    for M, N, K in QUICK[dev.type] if a.quick else (GPU_SHAPES if dev.type == "cuda" else CPU_SHAPES):
        print(f"{M}x{N}x{K}")
        bench(res, dev, M, N, K, "2:4", 0.5, min_s)
        for sp in (0.5, 0.7, 0.9, 0.95) if not a.quick else (0.9,):
            bench(res, dev, M, N, K, "bsr", sp, min_s)
            bench(res, dev, M, N, K, "csr", sp, min_s)
    for r in res.rows:
        print(f"{r['bench']:>16} {r['M']:>5}x{r['N']}x{r['K']} s={r['sparsity']:<5} {r['impl']:>10} vs "
              f"{r['baseline']:<22}{r['ms']:9.3f} ms {r['speedup']:7.2f}x  err {r['max_rel_err']:.1e}")
    print(f"wrote {res.write(a.out) if a.out else res.write()}")


if __name__ == "__main__":
    main()
