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
