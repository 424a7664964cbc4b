"""Timing and results records, shared by benchmarks/bench_*.py and `python -m compress demo`.

Results follow RESULTS_SCHEMA.md (one JSON file per run under benchmarks/results/, named
<bench>-<device-slug>-<YYYYMMDD>.json); `report` turns such files into a Markdown table and a PNG.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Timing

def cpu_cache_bytes() -> int:
    """Largest CPU cache (L3 on x86), from sysfs; 32 MiB if unknown."""
    best = 0
    for p in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        m = re.fullmatch(r"(\d+)([KMG]?)", p.read_text().strip())
        if m:
            best = max(best, int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)])
    return best or 32 * 2**20


def copies_to_exceed_cache(bytes_per_set: int, device: torch.device) -> int:
    """How many input sets to rotate through so one pass over them is larger than the cache."""
    cache = (torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda"
             else cpu_cache_bytes())
    return max(1, min(64, math.ceil(2 * cache / max(1, bytes_per_set))))


def time_ms(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, min_reps: int = 10,
            min_seconds: float = 0.3) -> dict:
    """Median, p20 and p80 of one call of `fn`, in milliseconds, after warm-up.

    CUDA: triton.testing.do_bench (CUDA events; it clears L2 before each call) when Triton is
    there, else CUDA events around each call. CPU: time.perf_counter around each call; rotate
    inputs inside `fn` (see copies_to_exceed_cache) to keep them out of cache.
    """
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
            q = do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.2, 0.8])
            return {"ms": q[0], "p20": q[1], "p80": q[2]}
        except ImportError:
            pass
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize(device)
        times = []
        for _ in range(max(min_reps, 50)):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(warmup):
            fn()
        times = []
        t_end = time.perf_counter() + min_seconds
        while len(times) < min_reps or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            if len(times) >= 10000:
                break
    qs = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return {"ms": statistics.median(times), "p20": qs[1], "p80": qs[7]}


def timing_note(device: torch.device) -> str:
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
            return "triton.testing.do_bench (cuda events, L2 cleared per call), median after warm-up"
        except ImportError:
            return "cuda events, median after warm-up"
    return (f"time.perf_counter, median after warm-up, {torch.get_num_threads()} threads, "
            "inputs rotated past the last-level cache")


# ---------------------------------------------------------------------------------------------
# Records

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = device_name(device).lower()
    m = re.search(r"\b([a-z]\d{2,4}[a-z]?)\b", name.replace("nvidia", ""))
    return m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Results:
    """Rows of one benchmark run on one device, written as RESULTS_SCHEMA.md says."""

    def __init__(self, bench: str, device: torch.device, timing: str | None = None):
        try:
            import triton
            triton_version = triton.__version__
        except ImportError:
            triton_version = None
        self.bench = bench
        self.device = torch.device(device)
        self.header = {
            "device": device_name(self.device),
            "torch": torch.__version__,
            "triton": triton_version,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "commit": git_commit(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "timing": timing or timing_note(self.device),
        }
        self.rows: list[dict] = []

    def add(self, *, bench: str, impl: str, baseline: str, ms: float, baseline_ms: float, **keys) -> dict:
        row = {"bench": bench, "impl": impl, "baseline": baseline, **keys,
               "ms": round(ms, 6), "baseline_ms": round(baseline_ms, 6),
               "speedup": round(baseline_ms / ms, 4) if ms > 0 else None}
        self.rows.append(row)
        return row

    def to_dict(self) -> dict:
        return {**self.header, "rows": self.rows}

    def write(self, out_dir: str | Path = REPO / "benchmarks" / "results") -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        day = self.header["date"][:10].replace("-", "")
        path = out_dir / f"{self.bench}-{device_slug(self.device)}-{day}.json"
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path


# Measured values of a row; every other field says what the row is and must agree between runs.
_MEASURED = ("ms", "baseline_ms", "speedup", "p20", "p80", "tops", "tflops", "max_rel_err")


def merge_runs(runs: Sequence[dict]) -> dict:
    """One results dict from several runs of the same benchmark: each row is taken from the run
    with the median speed-up (the lower one of an even count; ours and its baseline are timed back to back within a run, so their
    ratio survives a slow phase of a shared machine better than either time), max_rel_err is the
    largest of all runs. Rows are matched by position and must describe the same measurement."""
    if not runs:
        raise ValueError("merge_runs: expected at least one run, got none")
    first = runs[0]
    for i, r in enumerate(runs[1:], 1):
        if len(r["rows"]) != len(first["rows"]) or r["device"] != first["device"]:
            raise ValueError(f"merge_runs: run {i} has {len(r['rows'])} rows on {r['device']!r}, run 0 "
                             f"{len(first['rows'])} on {first['device']!r}: not runs of one benchmark")
    rows = []
    for j, group in enumerate(zip(*(r["rows"] for r in runs))):
        keys = [{k: v for k, v in row.items() if k not in _MEASURED} for row in group]
        if any(k != keys[0] for k in keys):
            raise ValueError(f"merge_runs: row {j} differs between runs ({keys[0]} vs "
                             f"{next(k for k in keys if k != keys[0])})")
        ranked = sorted(group, key=lambda row: row.get("speedup") or 0.0)
        row = dict(ranked[(len(ranked) - 1) // 2])
        errs = [row_["max_rel_err"] for row_ in group if row_.get("max_rel_err") is not None]
        if errs:
            row["max_rel_err"] = max(errs)
        rows.append(row)
    return {**first, "timing": f"{first['timing']}; each row from the median (by speed-up) of {len(runs)} runs",
            "rows": rows}


# ---------------------------------------------------------------------------------------------
# Report: results JSON -> Markdown table + PNG plot

_FIXED = ("bench", "impl", "baseline", "ms", "baseline_ms", "speedup")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def markdown(results: dict) -> str:
    rows = results["rows"]
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in _FIXED]
    cols = ["bench", "impl", "baseline", *keys, "ms", "baseline_ms", "speedup"]
    out = [f"**{results['device']}** — torch {results['torch']}, triton {results.get('triton')}, "
           f"commit `{results['commit'][:12]}`, {results['date']}; timing: {results['timing']}", "",
           "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(out) + "\n"


_SWEEP_KEYS = ("M", "batch", "sparsity", "seq", "hidden", "N", "K", "layers")
_SERIES_KEYS = ("dtype", "format", "variant", "block", "M", "N", "K", "batch", "hidden", "seq", "layers", "sparsity")


def _as_number(v):
    return v if isinstance(v, (int, float)) else float("inf")


def _x(r, key):
    v = r.get(key)
    return round(v, 2) if isinstance(v, float) else v  # achieved sparsities 0.897, 0.9 -> one point


def plot(results: dict, path: str | Path) -> Path:
    """One panel per bench: speed-up (y) against the key that varies most in it (x: M, batch,
    sparsity, ...), one line per implementation / baseline / remaining keys; the baseline is 1.0."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = list(dict.fromkeys(r["bench"] for r in results["rows"])) or ["(no rows)"]
    fig, axes = plt.subplots(1, len(benches), figsize=(5.5 * len(benches), 4.2), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        rows = [r for r in results["rows"] if r["bench"] == bench]
        varying = {k: len({_x(r, k) for r in rows}) for k in _SWEEP_KEYS if any(k in r for r in rows)}
        x_key = max(varying, key=varying.get) if varying else None
        xs = sorted({_x(r, x_key) for r in rows}, key=_as_number) if x_key else [None]
        series: dict = {}
        for r in rows:
            other = [f"{k}={_x(r, k)}" for k in _SERIES_KEYS if k != x_key and k in r and
                     len({_x(q, k) for q in rows}) > 1]
            label = f"{r['impl']} vs {r['baseline']}" + (f" ({', '.join(other)})" if other else "")
            series.setdefault(label, {})[_x(r, x_key)] = r["speedup"] or 0.0
        if len(xs) > 1:
            for label, pts in series.items():
                px = [i for i, x in enumerate(xs) if x in pts]
                ax.plot(px, [pts[xs[i]] for i in px], marker="o", linewidth=1, label=label)
            ax.set_xticks(range(len(xs)), [str(x) for x in xs], fontsize=7)
            ax.set_xlabel(x_key)
            ax.legend(fontsize=5, loc="best")
        else:  # nothing swept (e.g. the demo's models): one bar per series
            speed = [next(iter(pts.values())) for pts in series.values()]
            ax.bar(range(len(series)), speed, color=["tab:green" if v >= 1 else "tab:red" for v in speed])
            ax.set_xticks(range(len(series)), [lbl.replace(" (", "\n(") for lbl in series], rotation=60,
                          fontsize=5, ha="right")
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel("speed-up over baseline (x)")
        ax.set_title(bench, fontsize=9)
    fig.suptitle(f"{results['device']} ({results['date'][:10]})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def report(paths: Sequence[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """For each results JSON: <name>.md (table) and <name>.png (speed-up plot) in out_dir."""
    written = []
    for p in map(Path, paths):
        results = json.loads(p.read_text())
        d = Path(out_dir) if out_dir else p.parent
        d.mkdir(parents=True, exist_ok=True)
        md = d / (p.stem + ".md")
        md.write_text(markdown(results))
        written += [md, plot(results, d / (p.stem + ".png"))]
    return written


# ---------------------------------------------------------------------------------------------
# README results section: regenerated from the committed results files, one table per file

README_BEGIN = "<!-- results: generated by `python -m compress report --readme README.md <files>` -->"
README_END = "<!-- end of results -->"
_SHAPE_KEYS = ("M", "N", "K", "batch", "hidden", "seq", "layers", "dtype", "format", "sparsity", "variant")


def _shape(r) -> str:
    return " ".join(f"{k}={_x(r, k)}" for k in _SHAPE_KEYS if k in r)


def summary(results: dict, name: str) -> str:
    """Per (bench, impl, baseline): how many rows, the smallest / median / largest speed-up and where."""
    groups: dict = {}
    for r in results["rows"]:
        groups.setdefault((r["bench"], r["impl"], r["baseline"]), []).append(r)
    out = [f"`{name}`: **{results['device']}**, torch {results['torch']}, commit `{results['commit'][:12]}`, "
           f"{results['date'][:10]}; {results['timing']}", "",
           "| bench | impl | baseline | rows | min speed-up | median | max speed-up (at) |", "|---|---|---|---|---|---|---|"]
    for (bench, impl, base), rows in groups.items():
        rows = sorted(rows, key=lambda r: r["speedup"] or 0.0)
        mid = statistics.median(r["speedup"] or 0.0 for r in rows)
        lo, hi = rows[0], rows[-1]
        out.append(f"| {bench} | {impl} | {base} | {len(rows)} | {lo['speedup']:.2f}x ({_shape(lo)}) | "
                   f"{mid:.2f}x | {hi['speedup']:.2f}x ({_shape(hi)}) |")
    return "\n".join(out) + "\n"


def update_readme(readme: str | Path, paths: Sequence[str | Path]) -> Path:
    """Rewrite the README's results section (between README_BEGIN and README_END) from `paths`,
    CPU and GPU files under separate headings, never in one table."""
    readme = Path(readme)
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"update_readme: {readme} has no results section (the lines {README_BEGIN!r} and "
                         f"{README_END!r})")
    files = [(Path(p), json.loads(Path(p).read_text())) for p in sorted(map(str, paths))]
    parts = [README_BEGIN]
    for title, is_cpu in (("CPU", True), ("GPU", False)):
        chosen = [(p, r) for p, r in files if (Path(p).stem.split("-")[-2] == "cpu") == is_cpu]
        if chosen:
            parts.append(f"#### {title}\n")
            parts += [summary(r, str(p.relative_to(readme.parent)) if p.is_absolute() else str(p)) for p, r in chosen]
    if len(parts) == 1:
        parts.append("(no results files yet)\n")
    parts.append(README_END)
    head, rest = text.split(README_BEGIN, 1)
    readme.write_text(head + "\n".join(parts) + rest.split(README_END, 1)[1])
    return readme
