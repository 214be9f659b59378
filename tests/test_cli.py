"""The entropy-kernels command: `info` describes the install, `bench --quick` writes results."""

import json
import subprocess
import sys
import pytest

from entropy_kernels import cli


def test_info_lists_versions_and_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "_C" in out
    assert "entropy" in out and "triton" in out


def test_bench_quick_writes_json_and_markdown(tmp_path, capsys):
    code = cli.main(["bench", "--quick", "--device", "cpu", "--ops", "entropy", "--providers", "entropy_kernels,torch,floor",
                     "--out", str(tmp_path), "--plot"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    # without a GPU the first line says what the CPU rows are, the last where GPU numbers are
    assert "no GPU" in out[0] and "reference paths" in out[0]
    assert out[-1].startswith("GPU numbers:") and "benchmarks/results/" in out[-1]
    png = tmp_path / "cpu_quick_entropy_plots" / "entropy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "cpu_quick_entropy.json").read_text())
    providers = {r["provider"] for r in data["results"]}
    assert {"entropy_kernels", "torch", "floor: copy"} <= providers
    assert "torch.compile" not in providers  # filtered out
    assert all(r["error"] is None and r["p50_ms"] > 0 for r in data["results"])
    assert data["environment"]["torch"] and data["environment"]["command"]
    md = (tmp_path / "cpu_quick_entropy.md").read_text()
    assert "| entropy fwd B=8 V=8192 float32 | entropy_kernels |" in md


@pytest.mark.slow
def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "entropy_kernels.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "bench" in out.stdout


def test_compress_decompress_inspect_a_model_directory(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    src, packed, back = tmp_path / "model", tmp_path / "packed", tmp_path / "back"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    shard1 = {"a.weight": (torch.randn(512, 384, generator=g) * 0.02).to(torch.bfloat16),
              "a.bias": torch.randn(384, generator=g).to(torch.bfloat16)}  # small: stays plain
    shard2 = {"b.weight": (torch.randn(300, 1000, generator=g) * 0.05).to(torch.bfloat16),
              "c.weight": torch.randn(100, 1000, generator=g)}  # float32: stays plain
    save_file(shard1, str(src / "model-1.safetensors"), metadata={"format": "pt", "note": "kept"})
    save_file(shard2, str(src / "model-2.safetensors"))
    (src / "config.json").write_text("{}")

    assert cli.main(["compress", str(src), str(packed), "-q"]) == 0
    out = capsys.readouterr().out
    assert "2 of 4 tensors EKDF-coded" in out and "entropy bound" in out
    assert (packed / "config.json").exists()
    assert (packed / "model-1.safetensors").stat().st_size < 0.75 * (src / "model-1.safetensors").stat().st_size

    assert cli.main(["inspect", str(packed)]) == 0
    out = capsys.readouterr().out
    assert "a.weight" in out and "ekdf" in out and "4 tensors, 2 EKDF-coded" in out

    assert cli.main(["decompress", str(packed), str(back), "-q"]) == 0
    for name, shard in (("model-1", shard1), ("model-2", shard2)):
        restored = load_file(str(back / f"{name}.safetensors"))
        assert restored.keys() == shard.keys()
        for k, v in shard.items():
            assert restored[k].dtype == v.dtype and torch.equal(restored[k].view(-1).view(torch.uint8),
                                                                v.view(-1).view(torch.uint8))


def test_compress_reports_missing_input(tmp_path, capsys):
    code = cli.main(["compress", str(tmp_path / "nope.safetensors"), str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("entropy-kernels: error: ") and "nope.safetensors" in err
    assert not (tmp_path / "out.safetensors").exists()


def test_bench_progress_shows_case_and_eta():
    import io

    import torch

    from entropy_kernels.benchmarking import cases_for, run_cases
    from entropy_kernels.benchmarking.progress import run_with_progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    cases = cases_for(["entropy"], "quick", torch.device("cpu"))[:2]
    stream = Terminal()
    rows = run_with_progress(cases, ["floor"], run_cases, stream=stream)
    text = stream.getvalue()
    assert len(rows) == 2 and all(r.provider.startswith("floor") for r in rows)
    assert cases[0].label in text and cases[1].label in text
    piped = io.StringIO()
    run_with_progress(cases, ["floor"], run_cases, stream=piped)
    assert piped.getvalue() == ""  # nothing in logs


def test_plots_leave_failed_rows_out(tmp_path):
    from entropy_kernels.benchmarking.plots import group_by_op, plot_results

    rows = [dict(op="top_h", mode="fwd", shape="B=1", dtype="bfloat16", provider=p, kind=k, p50_ms=t,
                 peak_mem_bytes=m, error=e)
            for p, k, t, m, e in (("entropy_kernels", "ours", 0.2, 100, None), ("warper", "baseline", float("nan"), None, "boom"),
                                  ("floor: read", "floor", 0.01, 0, None))]
    assert [r["provider"] for r in group_by_op(rows)["top_h"]["fwd B=1 bfloat16"]] == ["entropy_kernels", "floor: read"]
    assert [p.name for p in plot_results(rows, tmp_path)] == ["top-h.png"]
