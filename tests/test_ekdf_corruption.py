"""EKDF under hostile input: header values that disagree with the payload, threads the system
cannot start, damaged files (header, payload, sizes), inconsistent arguments of the public
decode op -- each either raises DFloatError / ValueError / TypeError naming what is wrong, or
decodes bit-exactly; never a crash, a wrong value or an unwritten output value. The seeded fuzz
(tests/fuzz_ekdf.py) runs in a subprocess so that a crash fails the test instead of pytest.

The oracle is the original tensor's bit pattern; outputs are pre-filled with sentinels so that
a value the decoder never wrote is seen."""

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch

import entropy_kernels
from entropy_kernels import _backend
from entropy_kernels.decoding.dfloat import (
    DFloatError,
    DFloatTensor,
    header_crc32,
    load_file,
    save_file,
    to_safetensors,
)
from entropy_kernels.ops import dfloat as ops_dfloat

from conftest import RUN_SEED
from fuzz_ekdf import SENTINELS, bits, emulated_gpu_decode

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(entropy_kernels.__file__)))  # what pytest imports
NAN = ops_dfloat.UNDECODABLE


def _weights(n=70_000, shape=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16)
    return x.view(shape) if shape else x


def _subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _write(path, flat, info):
    from safetensors.torch import save_file as st_save

    st_save(flat, path, metadata={"format": "pt", "ekdf": json.dumps(info)})


def _file_parts(x):
    flat, meta = to_safetensors({"tensor": DFloatTensor.compress(x)})
    return flat, json.loads(meta["ekdf"])


# ---- 1. the header values the decoders size their work from ------------------------------------

def test_shape_cannot_be_set_and_is_checked_against_numel_before_every_decode():
    x = _weights(70_000, (200, 350))
    c = DFloatTensor.compress(x)
    for name, value in (("shape", (10,)), ("numel", 10), ("total_bits", 5), ("max_block_values", 1)):
        with pytest.raises(AttributeError):
            setattr(c, name, value)
    assert torch.equal(c.decompress(), x)  # after a first decode (the cached arguments) as well
    for shape in ((10,), (70_010,), (350, 201)):
        c._shape = shape  # even the private value: the decode path checks it against numel
        for call in (lambda: c.decompress(), lambda: c.decompress(out=torch.empty(70_000, dtype=torch.bfloat16))):
            with pytest.raises(DFloatError, match="does not hold numel"):
                call()
    c._shape, c._sizes = (10,), (10,) + c._sizes[1:]  # consistent with each other, not with the arrays
    with pytest.raises(ValueError, match="numel"):
        c.decompress()


def test_decoders_never_write_past_the_buffer_they_are_given():
    x = _weights(5000)
    c = DFloatTensor.compress(x)
    args = ops_dfloat.launch_args(*c.payload(), *c.sizes())
    C = _backend.native()
    for s in SENTINELS:
        buf = torch.full((c.numel + 64,), s, dtype=torch.int16)
        # told the buffer holds one value less than the payload: nothing is written
        assert C.dfloat_decode_cpu(*args, buf.data_ptr(), c.numel - 1) == 1
        assert C.dfloat_decode_emulated(*args, buf.data_ptr(), c.numel - 1) == 1
        assert bool((buf == s).all())
        assert C.dfloat_decode_cpu(*args, buf.data_ptr(), c.numel) == 0
        assert torch.equal(buf[:c.numel], bits(x)) and bool((buf[c.numel:] == s).all())


# ---- 2. threads ---------------------------------------------------------------------------------

@pytest.mark.parametrize("threads,error", [(True, TypeError), (2.0, TypeError), ("4", TypeError), (None, TypeError),
                                           (-1, ValueError), (1025, ValueError), (100_000, ValueError)])
def test_threads_argument_is_checked(threads, error):
    with pytest.raises(error, match="threads"):
        DFloatTensor.compress(_weights(100), threads=threads)


def test_encoder_runs_on_fewer_threads_when_the_system_refuses_them():
    """Under an address-space limit that leaves no room for the threads' stacks, the encoder and
    the decoder run the work on the threads they got (or the calling one): same bytes, no
    std::terminate. The subprocess loads _C alone (it needs no torch) with plain arrays."""
    code = textwrap.dedent(f"""
        import array, importlib.util, random, resource, sys
        spec = importlib.util.spec_from_file_location("entropy_kernels._C", {_backend.native().__file__!r})
        C = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(C)
        rng = random.Random(0)
        n = 300_000
        values = array.array("H", [(rng.choice([118, 119, 120, 121, 122]) << 7) | rng.randrange(128) for _ in range(n)])

        def encode(threads):
            hist = array.array("q", [0] * 256)
            C.dfloat_histogram(values.buffer_info()[0], n, hist.buffer_info()[0], threads)
            lengths = array.array("B", [0] * 256)
            C.dfloat_code_lengths(hist.buffer_info()[0], 12, lengths.buffer_info()[0])
            bits = C.dfloat_stream_bits(values.buffer_info()[0], n, lengths.buffer_info()[0], threads)
            words = array.array("I", [0] * (-(-bits // 32) + 1))
            gaps = array.array("B", [0] * (-(-(-(-bits // 256)) // 2)))
            starts = array.array("q", [0] * (-(-bits // 65536) + 1))
            raw = array.array("B", [0] * n)
            info = C.dfloat_encode(values.buffer_info()[0], n, lengths.buffer_info()[0], bits, words.buffer_info()[0],
                                   gaps.buffer_info()[0], starts.buffer_info()[0], raw.buffer_info()[0], threads)
            return hist, lengths, bits, words, gaps, starts, raw, info

        ref = encode(1)
        vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vm + (64 << 20), resource.RLIM_INFINITY))
        got = encode(C.DFLOAT_MAX_THREADS)  # 1024 stacks of 8 MB do not fit in 64 MB
        assert got == ref
        hist, lengths, bits, words, gaps, starts, raw, (checksum, most) = got
        lut = array.array("H", [0] * 4096)
        C.dfloat_build_lut(lengths.buffer_info()[0], lut.buffer_info()[0])
        out = array.array("H", [0] * n)
        status = C.dfloat_decode_cpu(words.buffer_info()[0], len(words), starts.buffer_info()[0], len(starts) - 1,
                                     gaps.buffer_info()[0], len(gaps), lut.buffer_info()[0], raw.buffer_info()[0], n,
                                     bits, most, out.buffer_info()[0], n, C.DFLOAT_MAX_THREADS)
        assert status == 0 and out == values, status
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.returncode, r.stderr[-2000:])


def test_compress_rejects_tensors_without_values():
    with pytest.raises(ValueError, match="meta"):
        DFloatTensor.compress(torch.empty(10, dtype=torch.bfloat16, device="meta"))
    with pytest.raises(TypeError, match="torch.Tensor"):
        DFloatTensor.compress(b"\x00\x01")
    with pytest.raises(TypeError, match="bfloat16"):
        DFloatTensor.compress(torch.ones(3, dtype=torch.int16))
    sparse = torch.ones(3, dtype=torch.bfloat16).to_sparse()
    with pytest.raises(ValueError, match="dense"):
        DFloatTensor.compress(sparse)


# ---- 3./4./5. the header is covered by the integrity check --------------------------------------

def test_edited_code_lengths_in_a_file_are_refused(tmp_path):
    x = _weights(70_000, (200, 350))
    flat, info = _file_parts(x)
    h = info["tensors"]["tensor"]
    # two exponents trade code lengths: still a valid prefix code, the stream decodes wrongly
    lengths = h["code_lengths"]
    a, b = sorted(lengths, key=lambda k: (lengths[k], k))[:2]
    if lengths[a] == lengths[b]:
        b = sorted(lengths, key=lambda k: (-lengths[k], k))[0]
    lengths[a], lengths[b] = lengths[b], lengths[a]
    path = str(tmp_path / "w.safetensors")
    _write(path, flat, info)
    with pytest.raises(DFloatError, match="tensor: header CRC32 mismatch"):
        load_file(path)
    # opting out loads it (and the CPU decoder refuses the stream or decodes other values)
    c = load_file(path, validate=False)["tensor"]
    try:
        assert not torch.equal(bits(c.decompress()), bits(x))
    except DFloatError:
        pass


def test_same_size_shape_and_lowered_total_bits_are_refused():
    x = _weights(70_000, (200, 350))
    parts, header = DFloatTensor.compress(x).state_dict()
    for field, value in (("shape", [350, 200]), ("total_bits", header["total_bits"] - 3),
                         ("checksum", header["checksum"] ^ 1), ("exponent_hist", {**header["exponent_hist"], "0": 1})):
        edited = {**header, field: value}
        with pytest.raises(DFloatError, match="header CRC32 mismatch"):
            DFloatTensor.from_state_dict(parts, edited)
        edited["header_crc32"] = header_crc32(edited)  # sealed again: the content checks see the rest
        if field in ("total_bits", "exponent_hist"):
            with pytest.raises(DFloatError, match="total_bits|histogram"):
                DFloatTensor.from_state_dict(parts, edited)
        elif field == "checksum":  # only a decode can tell, which validate(decode=True) runs
            c = DFloatTensor.from_state_dict(parts, edited)
            with pytest.raises(DFloatError, match="checksum"):
                c.validate(decode=True)
        # (a sealed transposed shape is a valid header of another tensor)


def test_random_single_digit_changes_of_the_header_never_decode_wrong_values(tmp_path):
    x = _weights(70_000, (200, 350))
    flat, info = _file_parts(x)
    text = json.dumps(info)
    digits = [i for i, ch in enumerate(text) if ch.isdigit()]
    rng = random.Random(RUN_SEED)
    path = str(tmp_path / "w.safetensors")
    outcomes = {"error": 0, "exact": 0}
    for _ in range(150):
        i = rng.choice(digits)
        edited = text[:i] + rng.choice("0123456789".replace(text[i], "")) + text[i + 1:]
        from safetensors.torch import save_file as st_save
        st_save(flat, path, metadata={"format": "pt", "ekdf": edited})
        try:
            y = load_file(path)["tensor"].decompress()
        except DFloatError:
            outcomes["error"] += 1
            continue
        assert y.shape == x.shape and torch.equal(bits(y), bits(x)), edited[max(0, i - 40):i + 40]
        outcomes["exact"] += 1
    assert outcomes["error"] >= 140  # nearly every digit is covered by the header CRC


def test_files_without_the_header_crc_still_load_and_are_verified_by_decoding(tmp_path, monkeypatch):
    """Files written before header_crc32 existed load as before, checked by one verifying
    decode against the stored checksum; files with it are not decoded at load."""
    x = _weights(70_000, (200, 350))
    flat, info = _file_parts(x)
    h = info["tensors"]["tensor"]
    del h["header_crc32"]
    path = str(tmp_path / "old.safetensors")
    _write(path, flat, info)
    assert torch.equal(load_file(path)["tensor"].decompress(), x)
    decodes = []
    real = DFloatTensor._verify_decode
    monkeypatch.setattr(DFloatTensor, "_verify_decode", lambda self: decodes.append(1) or real(self))
    load_file(path)
    new_path = str(tmp_path / "new.safetensors")
    save_file({"tensor": DFloatTensor.compress(x)}, new_path)
    load_file(new_path)
    assert decodes == [1]
    # the shortest and the longest code trade lengths and the histogram follows: the header is
    # self-consistent (same total_bits, a complete code), the values are not
    lengths, hist = dict(h["code_lengths"]), dict(h["exponent_hist"])
    a, b = min(lengths, key=lambda k: lengths[k]), max(lengths, key=lambda k: lengths[k])
    lengths[a], lengths[b], hist[a], hist[b] = lengths[b], lengths[a], hist[b], hist[a]
    for edit in ({"checksum": h["checksum"] ^ 0x10000}, {"code_lengths": lengths, "exponent_hist": hist}):
        _write(path, flat, {**info, "tensors": {"tensor": {**h, **edit}}})
        with pytest.raises(DFloatError, match="checksum|stream"):
            load_file(path)


def test_lowered_total_bits_is_refused_by_the_cpu_decoder_and_makes_gpu_blocks_nan():
    """total_bits a few bits short with the array sizes unchanged: the CPU decoder used to ignore
    it (exact values) while the GPU decoders stop there (wrong last values). Now the CPU
    decoder refuses the stream, and the GPU algorithm writes NaN over the block it cannot
    decode instead of stale shared memory."""
    for n in range(70_000, 70_100):  # a stream whose last word and segment hold > 3 bits
        x = _weights(n)
        c = DFloatTensor.compress(x)
        numel, total_bits, mbv = c.sizes()
        low = total_bits - 3
        if ops_dfloat.payload_sizes(numel, low) == ops_dfloat.payload_sizes(numel, total_bits):
            break
    words, gaps, starts, lut, raw = c.payload()
    with pytest.raises(DFloatError, match="gaps / block_starts / total_bits"):
        torch.ops.entropy_kernels.dfloat_decompress(words, gaps, starts, lut, raw, numel, low, mbv)
    y = bits(emulated_gpu_decode(words, gaps, starts, lut, raw, numel, low, mbv))
    last = int(starts[-2])
    assert torch.equal(y[:last], bits(x)[:last])
    assert bool((y[last:] == NAN).all())


# ---- 6. the public op: devices, sizes, index -----------------------------------------------------

def _payload(n=70_000):
    x = _weights(n)
    c = DFloatTensor.compress(x)
    return x, [t.clone() for t in c.payload()], list(c.sizes())


@pytest.mark.parametrize("i", range(5))
def test_op_refuses_a_payload_array_on_the_meta_device(i):
    _, arrays, sizes = _payload(3000)
    arrays[i] = arrays[i].to("meta")
    with pytest.raises(ValueError, match="one device"):
        torch.ops.entropy_kernels.dfloat_decompress(*arrays, *sizes)
    out = torch.full((sizes[0],), 1.0, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="one device"):
        torch.ops.entropy_kernels.dfloat_decompress_into(out, *arrays, *sizes)
    meta = [t.to("meta") for t in arrays]  # all on meta: shapes only, as under torch.compile
    assert torch.ops.entropy_kernels.dfloat_decompress(*meta, *sizes).shape == (sizes[0],)


def _into(arrays, sizes, sentinel):
    out = torch.full((sizes[0],), sentinel, dtype=torch.int16)
    torch.ops.entropy_kernels.dfloat_decompress_into(out.view(torch.bfloat16), *arrays, *sizes)
    return out


@pytest.mark.parametrize("edit", ["numel+5 raw+5", "starts[1]+5", "starts[1]-5", "starts[-1]-1", "starts[0]=-1",
                                  "starts swapped", "gap", "max_block_values-1"])
def test_op_with_an_inconsistent_index_raises_or_writes_every_value(edit):
    x, arrays, sizes = _payload()
    words, gaps, starts, lut, raw = arrays
    if edit == "numel+5 raw+5":
        sizes[0] += 5
        arrays[4] = torch.cat([raw, torch.zeros(5, dtype=torch.uint8)])
    elif edit.startswith("starts["):
        index, delta = edit[7:].split("]")
        value = int(starts[int(index)]) + int(delta) if delta[0] in "+-" else int(delta[1:])
        starts[int(index)] = value
    elif edit == "starts swapped":
        starts[1], starts[2] = starts[2].clone(), starts[1].clone()
    elif edit == "gap":
        gaps[3] ^= 0x01
    else:
        sizes[2] -= 1
    for s in SENTINELS:
        with pytest.raises(ValueError, match="block|gaps|max_block_values|stream"):
            _into(arrays, sizes, s)
    with pytest.raises(ValueError):
        torch.ops.entropy_kernels.dfloat_decompress(*arrays, *sizes)
    if sizes[2] < _payload()[2][2]:
        return  # refused by the host checks; the GPU decoders are never launched with it
    # the GPU's block algorithm cannot raise: every value written (NaN where undecodable)
    written = []
    for s in SENTINELS:
        out = torch.full((sizes[0],), s, dtype=torch.int16)
        emulated_gpu_decode(*arrays, *sizes, out=out.view(torch.bfloat16))
        written.append(out != s)
    assert bool((written[0] | written[1]).all())


def test_op_argument_types_name_the_argument():
    x, arrays, sizes = _payload(3000)
    for i, name in enumerate(("numel", "total_bits", "max_block_values")):
        for bad, error in ((1.5, TypeError), (-1, ValueError), (2**63 - 1, ValueError)):
            wrong = list(sizes)
            wrong[i] = bad
            with pytest.raises(error, match=name):
                ops_dfloat.decompress(*arrays, *wrong)
    with pytest.raises(ValueError, match="max_block_values must be in"):
        ops_dfloat.decompress(*arrays, sizes[0], sizes[1], 0)


# ---- 7. load errors name the tensor and the field ------------------------------------------------

@pytest.mark.parametrize("field,value", [("total_bits", "Infinity"), ("num_words", "null"), ("shape", "[1e400]"),
                                         ("max_block_values", "1.5"), ("checksum", "true"), ("shape", '"7"'),
                                         ("code_lengths", "null"), ("exponent_hist", '{"1": -3}')])
@pytest.mark.parametrize("legacy", [False, True])
def test_malformed_header_fields_raise_dfloat_error_naming_tensor_and_field(tmp_path, field, value, legacy):
    flat, meta = to_safetensors({"w": DFloatTensor.compress(_weights(100))})
    info = json.loads(meta["ekdf"])
    h = info["tensors"]["w"]
    if legacy:
        del h["header_crc32"]
    h[field] = "@@"
    text = json.dumps(info).replace('"@@"', value)
    path = str(tmp_path / "w.safetensors")
    from safetensors.torch import save_file as st_save
    st_save(flat, path, metadata={"format": "pt", "ekdf": text})
    with pytest.raises(DFloatError, match=f"^w: .*{field}"):
        load_file(path)


@pytest.mark.parametrize("text", ['{"magic": "EKDF", "version": 1, "tensors": null}',
                                  '{"magic": "EKDF", "version": 1, "tensors": {"w": null}}',
                                  '{"magic": "EKDF", "version": 1, "tensors": {"w": []}}',
                                  '{"magic": "EKDF", "version": 1.0, "tensors": {}}', "[1, 2]", "{", "Infinity"])
def test_malformed_metadata_raises_dfloat_error(tmp_path, text):
    flat, _ = to_safetensors({"w": DFloatTensor.compress(_weights(100))})
    path = str(tmp_path / "w.safetensors")
    from safetensors.torch import save_file as st_save
    st_save(flat, path, metadata={"format": "pt", "ekdf": text})
    with pytest.raises(DFloatError):
        load_file(path)


def test_truncated_file_raises_dfloat_error(tmp_path):
    path = str(tmp_path / "w.safetensors")
    save_file({"w": DFloatTensor.compress(_weights(3000))}, path)
    data = open(path, "rb").read()
    for cut in (0, 5, 100, len(data) // 2, len(data) - 1):
        with open(path, "wb") as f:
            f.write(data[:cut])
        with pytest.raises(DFloatError, match="not a readable safetensors file"):
            load_file(path)


# ---- the decode path stays free of host syncs ----------------------------------------------------

def test_decompress_never_verifies_on_the_decode_path(monkeypatch):
    """Verification happens when a payload is loaded, never in decompress: a compressed model
    decodes every weight before every forward, and on CUDA a check there would be a host sync
    per weight per step (and illegal under CUDA graph capture)."""
    import entropy_kernels.native as native

    x = _weights(5000)
    c = DFloatTensor.from_state_dict(*DFloatTensor.compress(x).state_dict())

    def forbidden(*args, **kwargs):
        raise AssertionError("verification on the decode path")

    monkeypatch.setattr(DFloatTensor, "_verify_decode", forbidden)
    monkeypatch.setattr(DFloatTensor, "validate", forbidden)
    monkeypatch.setattr(native, "read_checksum", forbidden)
    buf = torch.empty(5000, dtype=torch.bfloat16)
    for _ in range(3):
        assert torch.equal(c.decompress(), x) and torch.equal(c.decompress(out=buf), x)


# ---- the fuzz ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_seeded_fuzz_of_files_and_op_arguments():
    """tests/fuzz_ekdf.py in a subprocess: damaged files (validated and not) and inconsistent op
    calls. EK_FUZZ_CASES sets the number of damaged files (default 300; a third as many
    unvalidated files and op calls, at least 60); EK_TEST_SEED reproduces a run."""
    cases = int(os.environ.get("EK_FUZZ_CASES", "300"))
    seed = RUN_SEED % 2**31
    cmd = [sys.executable, os.path.join(HERE, "fuzz_ekdf.py"), "--files", str(cases), "--seed", str(seed)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_subprocess_env())
    assert r.returncode in (0, 1), f"fuzz process died (status {r.returncode}, seed {seed}): {r.stderr[-3000:]}"
    report = json.loads(r.stdout.strip().splitlines()[-1])
    failures = {k: report[k]["failures"] for k in ("files", "unvalidated", "ops") if report[k]["failed"]}
    assert r.returncode == 0 and not failures, f"seed {seed}: {json.dumps(failures, indent=1)[:6000]}"
    files, op_calls = report["files"]["outcomes"], report["ops"]["outcomes"]
    # both ends were reached: damage that is refused, and damage that changes nothing
    assert files.get("error", 0) > cases // 2 and files.get("exact", 0) > 0, files
    assert op_calls.get("error", 0) > 0 and report["ops"]["cases"] >= 60, op_calls


# ---- CUDA (not run without a GPU) -----------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("edit", ["starts[1]+5", "starts[-2]-3", "total_bits-3", "numel+5 raw+5", "starts swapped"])
def test_cuda_decoder_writes_every_value_whatever_the_index_says(edit):
    """The CUDA decoder cannot raise without a sync: with an index that disagrees with the
    stream every output value is still written -- the decodable blocks exactly, the others NaN,
    as the CPU emulation of the block algorithm does."""
    for n in range(70_000, 70_100):  # a stream whose last word and segment hold > 3 bits
        x, arrays, sizes = _payload(n)
        if ops_dfloat.payload_sizes(sizes[0], sizes[1] - 3) == ops_dfloat.payload_sizes(*sizes[:2]):
            break
    starts = arrays[2]
    if edit == "numel+5 raw+5":
        sizes[0] += 5
        arrays[4] = torch.cat([arrays[4], torch.zeros(5, dtype=torch.uint8)])
    elif edit == "total_bits-3":
        sizes[1] -= 3
    elif edit == "starts swapped":
        starts[1], starts[2] = starts[2].clone(), starts[1].clone()
    else:
        index, delta = edit[7:].split("]")
        starts[int(index)] += int(delta)
    expected = bits(emulated_gpu_decode(*arrays, *sizes))
    gpu = [t.cuda() for t in arrays]
    written = []
    for s in SENTINELS:
        out = torch.full((sizes[0],), s, dtype=torch.int16, device="cuda")
        torch.ops.entropy_kernels.dfloat_decompress_into(out.view(torch.bfloat16), *gpu, *sizes)
        written.append((out != s).cpu())
        if edit != "starts swapped":  # overlapping ranges: blocks race, any of their values
            assert torch.equal(out.cpu(), expected)
    assert bool((written[0] | written[1]).all())
    assert bool((expected == NAN).any())
