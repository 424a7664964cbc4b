"""The timing helper, the results writer (RESULTS_SCHEMA.md) and the report."""
import json

import pytest
import torch

from compress import benchmark

HEADER_KEYS = {"device": str, "torch": str, "cuda": (str, type(None)), "python": str, "commit": str,
               "date": str, "timing": str, "rows": list}
ROW_KEYS = {"bench": str, "impl": str, "baseline": str, "ms": float, "baseline_ms": float, "speedup": float}


def check_schema(results: dict):
    for k, t in HEADER_KEYS.items():
        assert isinstance(results[k], t), (k, results.get(k))
    assert "triton" in results
    for row in results["rows"]:
        for k, t in ROW_KEYS.items():
            assert isinstance(row[k], t), (k, row)
        for k in ("M", "N", "K", "batch", "hidden", "seq", "layers"):
            if k in row:
                assert isinstance(row[k], int), (k, row)


def test_results_file(tmp_path):
    r = benchmark.Results("int8", torch.device("cpu"))
    row = r.add(bench="int8_mm", impl="ours_cpu", baseline="int_mm_cpu", M=3, N=5, K=7, dtype="int8",
                ms=2.0, baseline_ms=3.0)
    assert row["speedup"] == 1.5
    path = r.write(tmp_path)
    assert path.name.startswith("int8-cpu-") and path.suffix == ".json"
    results = json.loads(path.read_text())
    check_schema(results)
    assert results["rows"][0]["M"] == 3


def _run(speedups, errs, **keys):
    r = benchmark.Results("int8", torch.device("cpu"))
    for i, (sp, err) in enumerate(zip(speedups, errs)):
        r.add(bench="int8_mm", impl="ours_cpu", baseline="int_mm_cpu", M=i + 1, N=5, K=7, dtype="int8",
              ms=1.0 + i, baseline_ms=(1.0 + i) * sp, max_rel_err=err, **keys)
    return r.to_dict()


def test_merge_runs_takes_the_median_run_per_row():
    runs = [_run([1.0, 3.0], [0.0, 1e-3]), _run([2.0, 1.0], [2e-3, 0.0]), _run([3.0, 2.0], [0.0, 0.0])]
    merged = benchmark.merge_runs(runs)
    check_schema(merged)
    assert [r["speedup"] for r in merged["rows"]] == [2.0, 2.0]
    for r in merged["rows"]:  # ms, baseline_ms and speedup come from one run: they agree
        assert r["speedup"] == pytest.approx(r["baseline_ms"] / r["ms"])
    assert [r["max_rel_err"] for r in merged["rows"]] == [2e-3, 1e-3]
    assert "median (by speed-up) of 3 runs" in merged["timing"]
    with pytest.raises(ValueError, match="row 0 differs between runs"):
        benchmark.merge_runs([_run([1.0], [0.0]), _run([1.0], [0.0], variant="other")])
    with pytest.raises(ValueError, match="run 1 has 1 rows"):
        benchmark.merge_runs([_run([1.0, 2.0], [0.0, 0.0]), _run([1.0], [0.0])])
    with pytest.raises(ValueError, match="at least one run"):
        benchmark.merge_runs([])


def test_report_makes_table_and_plot(tmp_path):
    r = benchmark.Results("int8", torch.device("cpu"))
    r.add(bench="int8_mm", impl="ours_cpu", baseline="int_mm_cpu", M=3, N=5, K=7, ms=2.0, baseline_ms=3.0)
    r.add(bench="int8_mm", impl="ours_cpu", baseline="fp32_torch", M=3, N=5, K=7, ms=2.0, baseline_ms=1.0)
    md, png = benchmark.report([r.write(tmp_path)])
    table = md.read_text()
    assert "| int8_mm | ours_cpu | int_mm_cpu | 3 | 5 | 7 | 2 | 3 | 1.5 |" in table
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_ms_measures():
    x = torch.randn(256, 256)
    t = benchmark.time_ms(lambda: x @ x, torch.device("cpu"), min_seconds=0.05)
    assert 0 < t["p20"] <= t["ms"] <= t["p80"]


@pytest.mark.parametrize("name,slug", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                       ("NVIDIA A100-SXM4-80GB", "a100")])
def test_device_slug(monkeypatch, name, slug):
    monkeypatch.setattr(benchmark, "device_name", lambda d: name)
    assert benchmark.device_slug(torch.device("cuda")) == slug


def test_committed_results_follow_the_schema():
    for path in (benchmark.REPO / "benchmarks" / "results").glob("*.json"):
        check_schema(json.loads(path.read_text()))


def test_readme_results_section_from_files(tmp_path):
    cpu = benchmark.Results("rnn", torch.device("cpu"))
    cpu.add(bench="lstm_inference", impl="ours_cpu", baseline="nn_lstm_cpu", batch=1, hidden=256, ms=1.0,
            baseline_ms=1.5)
    cpu.add(bench="lstm_inference", impl="ours_cpu", baseline="nn_lstm_cpu", batch=8, hidden=256, ms=2.0,
            baseline_ms=1.0)
    cpu_path = cpu.write(tmp_path)
    gpu_path = tmp_path / "rnn-h100-20261201.json"
    gpu = {**cpu.to_dict(), "device": "NVIDIA H100 80GB HBM3"}
    gpu_path.write_text(json.dumps(gpu))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{benchmark.README_BEGIN}\nold\n{benchmark.README_END}\n\ntail\n")
    benchmark.update_readme(readme, [gpu_path, cpu_path])
    text = readme.read_text()
    assert "old" not in text and text.endswith("\n\ntail\n")
    cpu_part, gpu_part = text.split("#### CPU")[1].split("#### GPU")
    assert cpu_path.name in cpu_part and gpu_path.name not in cpu_part and "H100" in gpu_part
    assert "| lstm_inference | ours_cpu | nn_lstm_cpu | 2 | 0.50x (batch=8 hidden=256) | 1.00x | " \
           "1.50x (batch=1 hidden=256) |" in cpu_part
    with pytest.raises(ValueError, match="no results section"):
        benchmark.update_readme(cpu_path.with_suffix(".md").write_text("x") and cpu_path.with_suffix(".md"),
                                [cpu_path])
