"""How the entropy-kernels command fails: one line on stderr (``entropy-kernels: error: ...``),
no traceback unless ``--debug``, exit status 2 for usage errors / 1 for runtime failures / 130
for Ctrl-C, and never a partial OUT (no OUT, no temporary entries beside it, an existing OUT
untouched). Most cases call ``cli.main`` in process; a few run the real command as a subprocess."""

import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from entropy_kernels import cli
from entropy_kernels.decoding import dfloat_files

PREFIX = "entropy-kernels: error: "


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The single stderr line of a failure, without its prefix."""
    assert "Traceback" not in err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX), err
    return lines[0][len(PREFIX):]


def entries(folder) -> set:
    return set(os.listdir(folder))


def snapshot(folder) -> dict:
    return {p: open(os.path.join(folder, p), "rb").read() for p in sorted(os.listdir(folder))}


@pytest.fixture
def model(tmp_path):
    """A two-shard model folder with a config; small bf16 tensors (coded with --min-numel 1000)."""
    src = tmp_path / "model"
    src.mkdir()
    shards = {
        "model-1.safetensors": {"a.weight": (torch.randn(96, 64) * 0.02).to(torch.bfloat16), "a.bias": torch.randn(8)},
        "model-2.safetensors": {"b.weight": (torch.randn(64, 80) * 0.05).to(torch.bfloat16)},
    }
    for name, tensors in shards.items():
        save_file(tensors, str(src / name))
    (src / "config.json").write_text('{"layers": 2}')
    return src, shards


def compressed(capsys, model, tmp_path):
    src, _ = model
    packed = tmp_path / "packed"
    assert run(capsys, "compress", src, packed, "-q", "--min-numel", 1000)[0] == 0
    return packed


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_missing_input_fails_in_one_line_and_writes_nothing(tmp_path, capsys):
    for argv in (["compress", tmp_path / "nope", tmp_path / "out"], ["decompress", tmp_path / "nope", tmp_path / "out"],
                 ["inspect", tmp_path / "nope"], ["inspect", tmp_path / "nope.safetensors"]):
        code, _, err = run(capsys, *argv)
        assert code == 1, argv
        assert "nope" in one_error_line(err) and "does not exist" in err
    assert entries(tmp_path) == set()


def test_usage_errors_exit_2_in_one_line(tmp_path, capsys):
    cases = {
        ("bench", "--ops", "entropy", "nope", "--out", tmp_path / "res"): "nope",
        ("bench", "--ops", "entropy", "--providers", "torch,bogus", "--device", "cpu",
         "--out", tmp_path / "res"): "bogus",
        ("compress", tmp_path / "in"): "dst",
        ("compress", tmp_path / "in", tmp_path / "out", "--min-numel", "-1"): "--min-numel",
        ("compress", tmp_path / "in", tmp_path / "out", "--threads", "x"): "--threads",
        ("frobnicate",): "frobnicate",
        (): "command",
    }
    for argv, named in cases.items():
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert named in one_error_line(err), argv
    assert entries(tmp_path) == set()  # the bench runs stopped before creating --out


def test_bench_out_under_a_file_is_refused_before_running(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    code, out, err = run(capsys, "bench", "--ops", "entropy", "--device", "cpu", "--out", tmp_path / "file.txt" / "res")
    assert code == 2 and "running" not in out
    assert "file.txt" in one_error_line(err)


def test_inspect_of_a_folder_without_safetensors_fails(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    (tmp_path / "other" / "dir.safetensors").mkdir()  # a folder with the suffix is not a shard
    for folder in ("empty", "other"):
        code, out, err = run(capsys, "inspect", tmp_path / folder)
        assert code == 1 and "0 tensors" not in out
        assert "no *.safetensors" in one_error_line(err)


def test_output_under_a_regular_file_fails_and_leaves_nothing(model, tmp_path, capsys):
    src, _ = model
    (tmp_path / "file.txt").write_text("keep")
    code, _, err = run(capsys, "compress", src, tmp_path / "file.txt" / "sub" / "out", "-q")
    assert code == 1
    assert "file.txt" in one_error_line(err)
    assert entries(tmp_path) == {"model", "file.txt"} and (tmp_path / "file.txt").read_text() == "keep"


def test_permission_denied_mid_write_removes_the_partial_output(model, tmp_path, capsys, monkeypatch):
    # Tests run as root, where chmod 000 denies nothing: the copy of config.json is made to fail
    # the way it would without the permission, after the temporary folder exists.
    src, _ = model

    def denied(s, d, **kwargs):
        raise PermissionError(13, "Permission denied", str(s))

    monkeypatch.setattr(dfloat_files.shutil, "copy2", denied)
    code, _, err = run(capsys, "compress", src, tmp_path / "out", "-q")
    assert code == 1
    assert "Permission denied" in one_error_line(err) and "config.json" in err
    assert entries(tmp_path) == {"model"}


def test_crc_failure_fails_without_output(model, tmp_path, capsys):
    packed = compressed(capsys, model, tmp_path)
    shard = packed / "model-2.safetensors"
    data = bytearray(shard.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    begin, end = header["b.weight.__ekdf__.raw"]["data_offsets"]  # sign/mantissa bytes: only the CRC sees them
    data[8 + n + (begin + end) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    before = entries(tmp_path)
    for argv in (["decompress", packed, tmp_path / "back", "-q"], ["inspect", packed]):
        code, _, err = run(capsys, *argv)
        assert code == 1, argv
        message = one_error_line(err)
        assert "model-2.safetensors" in message and "crc" in message.lower()
    assert entries(tmp_path) == before


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_truncated_second_shard_leaves_no_output(model, tmp_path, capsys, command):
    src, _ = model
    if command == "decompress":
        src = compressed(capsys, model, tmp_path)
    truncate(src / "model-2.safetensors")
    before = entries(tmp_path)
    dst = tmp_path / "new" / "deeper" / "out"  # parents made for the output go too
    code, _, err = run(capsys, command, src, dst, "-q")
    assert code == 1
    assert "model-2.safetensors" in one_error_line(err)
    assert entries(tmp_path) == before

    # an existing OUT is refused without --overwrite, and kept as it was when --overwrite fails
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    code, _, err = run(capsys, command, src, existing, "-q")
    assert code == 2 and "--overwrite" in one_error_line(err)
    code, _, err = run(capsys, command, src, existing, "-q", "--overwrite")
    assert code == 1 and "model-2" in one_error_line(err)
    assert snapshot(existing) == {"keep.txt": b"user data"}
    assert entries(tmp_path) == before | {"existing"}


def test_overwrite_replaces_only_after_success(model, tmp_path, capsys):
    src, shards = model
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "stale.txt").write_text("old")
    assert run(capsys, "compress", src, dst, "-q", "--force", "--min-numel", 1000)[0] == 0
    assert entries(dst) == {"config.json", "model-1.safetensors", "model-2.safetensors"}
    umask = os.umask(0)
    os.umask(umask)
    assert (dst.stat().st_mode & 0o777) == 0o777 & ~umask  # not a private temp folder's 0700
    assert ((dst / "model-1.safetensors").stat().st_mode & 0o777) == 0o666 & ~umask
    back = tmp_path / "back.safetensors"
    back.write_bytes(b"old file")
    assert run(capsys, "decompress", dst / "model-2.safetensors", back, "-q", "--overwrite")[0] == 0
    assert torch.equal(load_file(str(back))["b.weight"], shards["model-2.safetensors"]["b.weight"])
    assert (back.stat().st_mode & 0o777) == 0o666 & ~umask
    assert entries(tmp_path) == {"model", "out", "back.safetensors"}


def test_output_that_is_or_lies_in_the_input_is_refused(model, tmp_path, capsys):
    src, _ = model
    shard = src / "model-1.safetensors"
    (tmp_path / "link").symlink_to(src)
    os.link(shard, tmp_path / "hard.safetensors")
    before = snapshot(src)
    cases = [
        (shard, shard), (shard, src / "." / "model-1.safetensors"), (shard, tmp_path / "link" / "model-1.safetensors"),
        (shard, tmp_path / "hard.safetensors"), (src, src), (src, f"{src}/"), (src, src / ".." / "model"),
        (src, tmp_path / "link"), (src, src / "packed"), (src, tmp_path / "link" / "sub" / "packed"),
        (tmp_path / "link", src), (src, tmp_path),  # OUT contains IN
    ]
    for command in ("compress", "decompress"):
        for a, b in cases:
            code, _, err = run(capsys, command, a, b, "-q", "--overwrite")
            assert code == 2, (command, a, b)
            one_error_line(err)
    assert snapshot(src) == before
    assert entries(tmp_path) == {"model", "link", "hard.safetensors"}


def test_interrupt_and_unexpected_errors(model, tmp_path, capsys, monkeypatch):
    src, _ = model
    real_load = dfloat_files._load
    for raised, expected_code in ((KeyboardInterrupt(), 130), (ZeroDivisionError("boom"), 1)):
        def load(path, _raised=raised):
            if path.endswith("model-2.safetensors"):
                raise _raised
            return real_load(path)

        monkeypatch.setattr(dfloat_files, "_load", load)
        code, _, err = run(capsys, "compress", src, tmp_path / "out", "-q")
        assert code == expected_code
        message = one_error_line(err)
        assert ("interrupted" in message) if expected_code == 130 else ("boom" in message and "--debug" in message)
        assert entries(tmp_path) == {"model"}

        code, _, err = run(capsys, "compress", src, tmp_path / "out", "-q", "--debug")
        assert code == expected_code and "Traceback" in err
        assert err.strip().splitlines()[-1].startswith(PREFIX)


@pytest.mark.slow
def test_the_command_fails_in_one_line_as_a_subprocess(tmp_path, capsys):
    """The installed entry point (``python -m`` runs the same main) prints no traceback, and
    shows one with --debug before the command (checked in this process: a second subprocess
    would only import the package again)."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    cmd = [sys.executable, "-m", "entropy_kernels.cli"]
    plain = subprocess.run(cmd + ["inspect", str(bad)], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and plain.stdout == ""
    assert "bad.safetensors" in one_error_line(plain.stderr)
    code, _, err = run(capsys, "--debug", "decompress", bad, tmp_path / "out")
    assert code == 1 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith(PREFIX)
    assert entries(tmp_path) == {"bad.safetensors"}
