"""python -m compress {info, demo, bench, report}."""
import argparse
import subprocess
import sys

BENCHES = ("int8", "sparse", "rnn")


def bench(names, extra, runs: int = 1, out: str | None = None) -> int:
    """Run benchmarks/bench_<name>.py of the source checkout (benchmarks/ is not installed), `runs`
    times each; several runs are merged row by row (compress.benchmark.merge_runs) into one file."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from compress.benchmark import REPO, merge_runs
    code = 0
    for name in BENCHES if "all" in names else names:
        script = REPO / "benchmarks" / f"bench_{name}.py"
        if not script.is_file():
            print(f"bench {name}: {script} not found; the benchmarks run from a source checkout of compress",
                  file=sys.stderr)
            return 2
        if runs == 1:
            print(f"== {script.relative_to(REPO)} {' '.join(extra)}", flush=True)
            code = subprocess.call([sys.executable, str(script), *extra, *(["--out", out] if out else [])]) or code
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))  # kept if the runs cannot be merged
        for i in range(runs):
            print(f"== {script.relative_to(REPO)} {' '.join(extra)} (run {i + 1} of {runs})", flush=True)
            rc = subprocess.call([sys.executable, str(script), *extra, "--out", str(tmp / str(i))])
            if rc:
                return rc
        files = [sorted((tmp / str(i)).glob("*.json")) for i in range(runs)]
        for group in zip(*files):
            try:
                merged = merge_runs([json.loads(f.read_text()) for f in group])
            except ValueError as e:
                print(f"bench {name}: {e}; the runs are kept in {tmp}", file=sys.stderr)
                return 1
            dest = Path(out or REPO / "benchmarks" / "results") / group[0].name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(json.dumps(merged, indent=1) + "\n")
            print(f"wrote {dest} (median of {runs} runs)")
        shutil.rmtree(tmp)
    return code


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m compress")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, what was built, devices, backends of each op")
    sub.add_parser("demo", help="the main job: convert and time real models (see `demo --help`)", add_help=False)
    bp = sub.add_parser("bench", help="run benchmark scripts (results JSON under benchmarks/results/)")
    bp.add_argument("names", nargs="+", choices=BENCHES + ("all",))
    bp.add_argument("--quick", action="store_true", help="a few shapes only")
    bp.add_argument("--device", choices=["cpu", "cuda"])
    bp.add_argument("--out", help="results directory (default benchmarks/results/)")
    bp.add_argument("--runs", type=int, default=1,
                    help="run each benchmark this many times and keep, per row, the run with the median "
                         "speed-up (for a shared or noisy machine)")
    rp = sub.add_parser("report", help="results JSON -> Markdown table + PNG plot")
    rp.add_argument("files", nargs="+")
    rp.add_argument("--out", help="output directory (default: beside each file)")
    rp.add_argument("--readme", help="also rewrite this README's results section from the files")
    a, rest = p.parse_known_args(argv)
    if a.cmd == "demo":
        from compress import demo
        return demo.main(rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if a.cmd == "info":
        from compress import info
        print(info.render(info.collect()))
    elif a.cmd == "bench":
        if a.runs < 1:
            p.error(f"--runs: expected a positive number of runs, got {a.runs}")
        extra = (["--quick"] if a.quick else []) + (["--device", a.device] if a.device else [])
        sys.exit(bench(a.names, extra, a.runs, a.out))
    elif a.cmd == "report":
        from compress.benchmark import report, update_readme
        for path in report(a.files, a.out):
            print(path)
        if a.readme:
            print(update_readme(a.readme, a.files))


if __name__ == "__main__":
    main()
