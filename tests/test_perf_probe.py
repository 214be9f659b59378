"""The GPU probe (scripts/perf_probe.py) and the generated benchmark tables
(scripts/regen_bench_docs.py), checked without a GPU: the probe's dry run takes every code path
on the CPU (the torch reference and Triton's interpreter), a step over its budget is cut with its
earlier rows kept, and the README's benchmark tables are exactly what the committed results give.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from entropy_kernels.benchmarking import probe, probe_steps
from entropy_kernels.benchmarking.probe_hardware import _expected_histograms
from entropy_kernels.benchmarking.probe_rows import decide

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe")
    env = dict(os.environ, OUT=str(out))
    t0 = time.monotonic()
    script = ROOT / "scripts" / "perf_probe.py"
    # the script as its own process, with the tests' interpreter shortcuts installed first (the
    # steps' forked children inherit them): interpreter_speedups.py, the same kernels run
    boot = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); import interpreter_speedups; "
            "interpreter_speedups.install(); sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", boot, str(ROOT / "tests"), str(script), "--dry-run", "--parallel", "2"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    wall = time.monotonic() - t0
    files = list(out.glob("*_probe_dry_run.json"))
    doc = json.loads(files[0].read_text()) if files else None
    return proc, doc, out, wall


@pytest.mark.slow
def test_dry_run_runs_every_step_without_errors(dry_run):
    proc, doc, out, wall = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert doc is not None, proc.stdout[-2000:]
    rows = doc["results"]
    for name in probe.step_names():
        assert doc["steps"][name]["outcome"] == "ok", (name, doc["steps"][name])
        assert any(r["step"] == name and r["status"] == "ok" for r in rows), f"step {name} wrote no measured row"
    errors = [r for r in rows if r["status"] != "ok" and not r["status"].startswith("skipped")]
    assert not errors, errors
    skipped = {r["status"] for r in rows if r["status"].startswith("skipped")}
    assert "skipped: needs CUDA" in skipped  # graphs, profiler, ncu: said, not silently dropped
    assert not [r for r in rows if r["check"] is False], "a correctness check failed on the CPU"
    assert sum(1 for r in rows if r["check"] is True) >= 10


def test_dry_run_outputs_are_stamped_and_the_summary_is_short(dry_run):
    proc, doc, out, _ = dry_run
    env = doc["environment"]
    for field in ("torch", "triton", "date", "command"):
        assert env.get(field), field
    assert "gpu" in env and env["dry_run"] is True
    md = next(out.glob("*_probe_dry_run.md")).read_text()
    assert env["date"] in md and env["torch"] in md and "perf_probe.py" in md
    summary = proc.stdout.split("\n\n")[-2].splitlines()  # printed last, before the "wrote" line
    assert summary[0].startswith("GPU probe:") and 8 <= len(summary) <= 80, summary


def test_dry_run_fits_the_test_budget(dry_run):
    assert dry_run[3] < 120, f"the dry run took {dry_run[3]:.0f} s (keep dry-run shapes tiny)"


def _fake_steps(monkeypatch, steps):
    monkeypatch.setattr(probe_steps, "steps_by_name", lambda: {s.name: s for s in steps})


def test_a_step_over_its_budget_is_cut_and_its_rows_kept(tmp_path, monkeypatch):
    def slow(ctx):
        ctx.row(op="slow", provider="first sub-case", p50_ms=1.0)
        time.sleep(60)
        ctx.row(op="slow", provider="never written", p50_ms=1.0)

    def crash(ctx):
        ctx.row(op="crash", provider="before the crash", p50_ms=1.0)
        os._exit(3)

    def fine(ctx):
        ctx.row(op="fine", provider="done", p50_ms=2.0)

    steps = [probe.Step("slow", slow, 1.5, lambda rows: [], ""), probe.Step("crash", crash, 30, lambda rows: [], ""),
             probe.Step("fine", fine, 30, lambda rows: [], "")]
    _fake_steps(monkeypatch, steps)
    t0 = time.monotonic()
    report = probe.run_steps(["slow", "crash", "fine"], tmp_path, dry=True, deadline_s=60, log=lambda s: None)
    assert time.monotonic() - t0 < 30
    slow_rows = probe.read_rows(tmp_path / "steps" / "slow.jsonl")
    assert [r["provider"] for r in slow_rows] == ["first sub-case", "(step)"]
    assert slow_rows[-1]["status"].startswith("cut: over its budget") and report["slow"]["outcome"].startswith("cut")
    crash_rows = probe.read_rows(tmp_path / "steps" / "crash.jsonl")
    assert crash_rows[0]["provider"] == "before the crash" and crash_rows[-1]["status"].startswith("error")
    assert report["crash"]["outcome"].startswith("failed (exit 3)")
    assert report["fine"]["outcome"] == "ok"


def test_steps_past_the_deadline_are_reported_not_dropped(tmp_path, monkeypatch):
    steps = [probe.Step("a", lambda ctx: time.sleep(60), 30, lambda rows: [], ""),
             probe.Step("b", lambda ctx: None, 30, lambda rows: [], "")]
    _fake_steps(monkeypatch, steps)
    report = probe.run_steps(["a", "b"], tmp_path, dry=True, deadline_s=2.5, log=lambda s: None)
    assert report["a"]["outcome"].startswith("cut at its budget of 2 s")
    assert report["b"]["outcome"] == "cut (no time left)"
    assert probe.read_rows(tmp_path / "steps" / "b.jsonl")[0]["status"].startswith("cut: no time left")


def _row(variant, ms, shape="B=1", provider="x"):
    return {"op": "op", "mode": "fwd", "shape": shape, "dtype": "float32", "provider": provider, "timing": "graph",
            "variant": variant, "p50_ms": ms, "status": "ok"}


def test_decide_picks_the_variant_that_is_faster_across_cases():
    faster_b = [_row("a", 2.0), _row("b", 1.0, provider="x (no a)"), _row("a", 4.0, "B=2"), _row("b", 3.0, "B=2")]
    line = decide(faster_b, "a", "b", "SWITCH")[0]
    assert "make 'b' the default" in line and "2 pairs" in line
    slower_b = [_row("a", 1.0), _row("b", 2.0)]
    assert "keep 'a'" in decide(slower_b, "a", "b", "SWITCH")[0]
    mixed = [_row("a", 1.0), _row("b", 1.01), _row("a", 1.0, "B=2"), _row("b", 0.995, "B=2")]
    assert "no clear winner" in decide(mixed, "a", "b", "SWITCH")[0]
    assert "no paired rows" in decide([_row("a", 1.0)], "a", "b", "SWITCH")[0]


def test_expected_histograms_match_a_direct_count():
    g = torch.Generator().manual_seed(1)
    block, nb, programs, iters = 64, 32, 3, 11
    x = torch.randint(0, nb, (8 * block,), generator=g, dtype=torch.int32)
    want = torch.zeros(programs, nb, dtype=torch.int32)
    for p in range(programs):
        for i in range(iters):
            b = (p + i) % 8
            for k in x[b * block:(b + 1) * block].tolist():
                want[p, k] += 1
    assert torch.equal(_expected_histograms(x, programs, iters, nb, block), want)


# ---------------------------------------------------------------------------------------------
# generated benchmark tables


def _regen(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "regen_bench_docs.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def _regen_here(*args):
    """The same script in this process (the charts need the package, which is imported here
    already: a subprocess would spend ~5 s importing it again)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("regen_bench_docs", ROOT / "scripts" / "regen_bench_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in args])


def test_readme_and_benchmarks_page_are_what_the_committed_results_give():
    proc = _regen("--check")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr


def test_a_hand_edited_number_fails_the_check(tmp_path):
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- benchmark-table:start -->")
    pos = text.index(" µs", start)
    readme.write_text(text[:pos - 1] + ("1" if text[pos - 1] != "1" else "2") + text[pos:])
    docs = tmp_path / "benchmarks.md"
    shutil.copy(ROOT / "docs" / "benchmarks.md", docs)
    proc = _regen("--check", "--readme", readme, "--docs", docs)
    assert proc.returncode == 1 and "never typed" in proc.stderr


@pytest.mark.slow
def test_the_newest_results_file_wins_and_dry_runs_are_ignored(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    row = {"op": "entropy", "mode": "fwd", "shape": "B=1024 V=151936", "dtype": "bfloat16", "provider": "entropy_kernels",
           "kind": "ours", "p50_ms": 0.123456, "p20_ms": 0.12, "p80_ms": 0.13, "status": "ok"}
    newer = {"environment": {"date": "2999-01-01T00:00:00+00:00", "gpu": "Test GPU"}, "results": [row]}
    (results / "test-gpu_probe.json").write_text(json.dumps(newer))
    dry = {"environment": {"date": "3999-01-01T00:00:00+00:00", "gpu": None, "dry_run": True},
           "results": [dict(row, p50_ms=9.0)]}
    (results / "cpu_probe_dry_run.json").write_text(json.dumps(dry))
    readme, docs = tmp_path / "README.md", tmp_path / "benchmarks.md"
    shutil.copy(ROOT / "README.md", readme)
    assert _regen_here("--readme", readme, "--docs", docs, "--results", results, "--charts", "") == 0
    only_newer, charts = tmp_path / "only_newer", tmp_path / "charts"  # charts: one op is enough
    only_newer.mkdir()
    shutil.copy(results / "test-gpu_probe.json", only_newer)
    shutil.copy(ROOT / "README.md", tmp_path / "r2.md")
    assert _regen_here("--readme", tmp_path / "r2.md", "--docs", tmp_path / "d2.md", "--results", only_newer,
                       "--charts", charts) == 0
    assert [p.name for p in charts.iterdir()] == ["entropy.png"]  # the newest file's entropy rows, plotted
    table = readme.read_text().split("<!-- benchmark-table:start -->")[1]
    assert "| `entropy` fwd, B=1024, V=151936 | 123 µs" in table
    assert "`test-gpu_probe.json` (Test GPU, 2999-01-01)" in table and "9.00 ms" not in table
    # the committed files still fill the cells the new file lacks: the B=64 row's "ours" cell as in the README
    committed = (ROOT / "README.md").read_text().split("<!-- benchmark-table:start -->")[1]
    b64 = next(line for line in committed.splitlines() if line.startswith("| `entropy` fwd, B=64, V=151936 |"))
    assert "|".join(b64.split("|")[:3]) in table and " µs" in b64.split("|")[2]


def test_ncu_counters_are_read_from_nsight_csv(tmp_path, monkeypatch):
    """One profiled decode: its metrics (units and thousands separators kept), the ==PROF== lines
    skipped, the kernel filter naming the decoder's kernel; a second kernel's rows (were more
    launches profiled) are not mixed in."""
    from entropy_kernels.benchmarking import probe_ekdf

    head = '"ID","Process ID","Process Name","Host Name","Kernel Name","Metric Name","Metric Unit","Metric Value"'
    rows = [head]
    for kid, (us, conflicts) in enumerate(((66.25, "1,234"), (130.5, "9,999,999"))):
        rows.append(f'"{kid}","7","python","h","decode_kernel(...)","gpu__time_duration.sum","usecond","{us}"')
        rows.append(f'"{kid}","7","python","h","decode_kernel(...)",'
                    f'"l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum","","{conflicts}"')
    args = tmp_path / "args"
    fake = tmp_path / "ncu"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {args}\n"
                    "while [ $# -gt 0 ]; do [ \"$1\" = --log-file ] && log=$2; shift; done\n"
                    "echo '==PROF== Connected to process' > \"$log\"\ncat >> \"$log\" <<'CSV'\n" + "\n".join(rows)
                    + "\nCSV\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    got = probe_ekdf.ncu_counters(1024)
    assert got == {"gpu__time_duration.sum": "66.25 usecond",
                   "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum": "1,234"}
    called = args.read_text()
    assert "--kernel-name regex:decode_kernel --launch-count 1" in called
    assert "__global__ void __launch_bounds__(kThreads) decode_kernel(" in (ROOT / "csrc/cuda/dfloat_decode.cu").read_text()


def test_decide_leaves_out_cases_whose_check_failed():
    rows = [_row("a", 2.0), dict(_row("b", 1.0), check=False), _row("a", 2.0, "B=2"), _row("b", 2.2, "B=2")]
    line = decide(rows, "a", "b", "SWITCH")[0]
    assert "1 cases left out" in line and "keep 'a'" in line
