"""The entropy-kernels command: `info` describes the install, `bench --quick` writes results."""

import json
import subprocess
import sys

from entropy_kernels import cli


def test_info_lists_versions_and_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "_C" in out
    assert "entropy" in out and "triton" in out


def test_bench_quick_writes_json_and_markdown(tmp_path, capsys):
    code = cli.main(["bench", "--quick", "--device", "cpu", "--ops", "entropy", "--providers", "entropy_kernels,torch,floor",
                     "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "cpu_quick_entropy.json").read_text())
    providers = {r["provider"] for r in data["results"]}
    assert {"entropy_kernels", "torch", "floor: copy"} <= providers
    assert "torch.compile" not in providers  # filtered out
    assert all(r["error"] is None and r["p50_ms"] > 0 for r in data["results"])
    assert data["environment"]["torch"] and data["environment"]["command"]
    md = (tmp_path / "cpu_quick_entropy.md").read_text()
    assert "| entropy fwd B=8 V=8192 float32 | entropy_kernels |" in md


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "entropy_kernels.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "bench" in out.stdout
