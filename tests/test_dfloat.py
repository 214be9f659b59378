"""EKDF (entropy-coded bf16): round trips, code optimality, size vs the entropy bound, format
validation, safetensors I/O, the ops under opcheck / torch.compile, and the CUDA decoder.

The oracle for every round trip is the input's own bit pattern (lossless means bit-identical);
the format itself is checked by an independent pure-Python decoder (reference.dfloat)."""

import copy
import heapq
import math
import os
import pickle

import numpy as np
import pytest
import torch

from entropy_kernels import config
from entropy_kernels.decoding.dfloat import (
    DFloatError,
    DFloatTensor,
    load_file,
    save_file,
)
from entropy_kernels.reference import dfloat as ref

HAS_CUDA = torch.cuda.is_available()


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).cpu().view(torch.int16)


def assert_bit_exact(y: torch.Tensor, x: torch.Tensor) -> None:
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert torch.equal(bits(y), bits(x))


def from_bits(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)


def structured_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    randn = lambda n, s: (torch.randn(n, generator=g) * s).to(torch.bfloat16)  # noqa: E731
    every_pattern = torch.randint(-32768, 32768, (70_001,), generator=g, dtype=torch.int32)
    specials = [0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7FFF, 0x0001, 0x8001, 0x007F, 0x0000, 0x8000, 0x0080]
    return {
        "normal 1e-3": randn(4097, 1e-3),
        "normal 0.02 2-D": randn(300 * 257, 0.02).view(300, 257),
        "normal 1": randn(1_048_579, 1.0),
        "normal 30": randn(5000, 30.0),
        "all zero": torch.zeros(7, dtype=torch.bfloat16),
        "one exponent": torch.full((100_000,), -1.5, dtype=torch.bfloat16),
        "every exponent": from_bits([(e << 7) | (e % 128) for e in range(256)] * 3),
        "every bit pattern": every_pattern.to(torch.int16).view(torch.bfloat16),
        "nan inf denormal": from_bits(specials * 301),
        "size 0": torch.zeros(0, dtype=torch.bfloat16),
        "size 1": torch.tensor([0.1], dtype=torch.bfloat16),
        "size 7": randn(7, 0.02),
        "4-D": randn(2 * 3 * 5 * 7, 0.02).view(2, 3, 5, 7),
    }


INPUTS = structured_inputs()


@pytest.mark.parametrize("name", list(INPUTS))
def test_round_trip_cpu_is_bit_exact(name):
    x = INPUTS[name]
    c = DFloatTensor.compress(x)
    assert_bit_exact(c.decompress(), x)
    assert c.verify(c.decompress())
    c.validate()


@pytest.mark.parametrize("name", [n for n, x in INPUTS.items() if x.numel() <= 20_000])
def test_reference_decoder_reads_the_documented_format(name):
    # an independent decoder of the layout in csrc/dfloat.h, segment by segment like the GPU
    x = INPUTS[name]
    c = DFloatTensor.compress(x)
    y = ref.decode_reference(c.words, c.gaps, c.block_starts, c.lut, c.raw, c.numel, c.total_bits)
    assert torch.equal(bits(y), bits(x))


def _emulated_gpu_decode(c: DFloatTensor) -> torch.Tensor:
    from fuzz_ekdf import emulated_gpu_decode

    return emulated_gpu_decode(*c.payload(), *c.sizes()).view(c.shape)


@pytest.mark.parametrize("name", list(INPUTS))
def test_gpu_decoder_block_algorithm_emulated_on_cpu(name):
    # the exact per-thread steps of the CUDA decoder (csrc/dfloat_block.h), thread by thread
    x = INPUTS[name]
    assert_bit_exact(_emulated_gpu_decode(DFloatTensor.compress(x)), x)


def test_gpu_decoder_emulation_on_many_blocks_and_corrupted_payloads():
    x = (torch.randn(3_000_017) * 0.02).to(torch.bfloat16)
    c = DFloatTensor.compress(x)
    assert_bit_exact(_emulated_gpu_decode(c), x)
    parts, header = c.state_dict()
    parts = {k: v.clone() for k, v in parts.items()}
    parts["lut"] = c.lut.clone()
    g = torch.Generator().manual_seed(2)
    for part in ("words", "gaps", "lut"):
        bad = dict(parts)
        bad[part] = parts[part].clone()
        t = bad[part].view(torch.uint8)
        t.copy_(torch.randint(0, 256, t.shape, generator=g, dtype=torch.uint8))
        assert _emulated_gpu_decode(DFloatTensor.from_state_dict(bad, header, validate=False)).shape == x.shape


def test_large_tensor_spans_many_blocks_and_threads():
    x = (torch.randn(3_000_017) * 0.02).to(torch.bfloat16)
    c = DFloatTensor.compress(x, threads=3)
    assert c.block_starts.numel() > 100  # many GPU blocks' worth of index
    assert_bit_exact(c.decompress(), x)
    assert torch.equal(DFloatTensor.compress(x, threads=1).words, c.words)  # thread count never changes the bytes


def _huffman_lengths(counts):
    heap = [(int(c), i, (s,)) for i, (s, c) in enumerate((s, c) for s, c in enumerate(counts) if c > 0)]
    heapq.heapify(heap)
    lengths = [0] * 256
    tie = len(heap)
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        for s in a[2] + b[2]:
            lengths[s] += 1
        tie += 1
        heapq.heappush(heap, (a[0] + b[0], tie, a[2] + b[2]))
    return lengths


def test_code_is_optimal_and_length_limited():
    g = torch.Generator().manual_seed(3)
    for scale in (0.02, 1.0, 1e-4):
        x = (torch.randn(200_000, generator=g) * scale).to(torch.bfloat16)
        c = DFloatTensor.compress(x)
        hist = np.array(c.exponent_hist)
        lengths = np.array(c.code_lengths)
        assert lengths.max() <= ref.MAX_CODE_LEN
        assert ref.kraft_sum(lengths) <= 1.0 + 1e-12
        avg = (hist * lengths).sum() / hist.sum()
        huff = np.array(_huffman_lengths(hist))
        huff_avg = (hist * huff).sum() / hist.sum()
        h = ref.exponent_entropy_bits(hist)
        assert h - 1e-9 <= avg <= h + 1
        if huff.max() <= ref.MAX_CODE_LEN:
            assert avg == pytest.approx(huff_avg, abs=1e-12)  # the unconstrained optimum
        else:
            assert huff_avg <= avg <= huff_avg + 0.01  # the length limit costs almost nothing


def test_size_beats_dfloat11_and_is_within_one_percent_of_the_entropy_bound():
    # 16.8M values from N(0, 0.02), the size tables' test tensor; dfloat11 reaches 67.48% of bf16 on it
    x = (torch.randn(16_777_216, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    c = DFloatTensor.compress(x)
    bound = ref.entropy_bound_bytes(ref.exponent_histogram(x))
    assert c.ratio <= 0.6748
    assert c.nbytes <= 1.01 * bound, (c.nbytes / bound)
    assert c.bits_per_value == pytest.approx(8 * c.nbytes / x.numel())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_other_dtypes_are_rejected(dtype):
    with pytest.raises(TypeError, match="bfloat16"):
        DFloatTensor.compress(torch.randn(10).to(dtype))
    with pytest.raises(TypeError, match="torch.Tensor"):
        DFloatTensor.compress([1.0, 2.0])


# ---- corruption, truncation, bad metadata -----------------------------------------------------

def _parts():
    x = (torch.randn(70_000) * 0.02).to(torch.bfloat16)
    parts, header = DFloatTensor.compress(x).state_dict()
    return x, {k: v.clone() for k, v in parts.items()}, dict(header)


@pytest.mark.parametrize("part", ["words", "gaps", "block_starts", "raw"])
def test_flipped_byte_is_detected(part):
    _, parts, header = _parts()
    parts[part].view(torch.uint8)[parts[part].numel() * parts[part].element_size() // 2] ^= 0x10
    with pytest.raises(DFloatError, match="CRC32"):
        DFloatTensor.from_state_dict(parts, header)


@pytest.mark.parametrize("part", ["words", "gaps", "block_starts", "raw"])
def test_truncated_arrays_are_rejected_before_any_decode(part):
    _, parts, header = _parts()
    parts[part] = parts[part][:-1].clone()
    with pytest.raises(DFloatError, match="entries|num_words"):
        DFloatTensor.from_state_dict(parts, header)


def _sealed(header: dict) -> dict:
    """``header`` with its header_crc32 recomputed: an edit that the header CRC cannot see."""
    from entropy_kernels.decoding.dfloat import header_crc32

    return {**header, "header_crc32": header_crc32(header)}


@pytest.mark.parametrize("field,value,match", [
    ("magic", "XXXX", "not an EKDF"), ("version", 99, "version"), ("dtype", "float16", "dtype"),
    ("shape", [70_001], "entries"), ("total_bits", 5, "total_bits"), ("num_words", 3, "num_words"),
    ("max_block_values", 10**9, "max_block_values"), ("code_lengths", {"999": 1}, "out of range"),
])
@pytest.mark.parametrize("sealed", [False, True])
def test_wrong_metadata_is_rejected(field, value, match, sealed):
    # unsealed: the header CRC catches an edit that leaves the field well-typed; sealed (CRC
    # recomputed, as a writer with another idea of the format would): the field checks do
    _, parts, header = _parts()
    header[field] = value
    if sealed:
        header = _sealed(header)
    elif field in ("shape", "total_bits", "num_words", "max_block_values"):
        match = "header CRC32 mismatch"
    with pytest.raises(DFloatError, match=match):
        DFloatTensor.from_state_dict(parts, header)


def test_inconsistent_index_is_rejected_even_with_a_matching_crc():
    from entropy_kernels.decoding.dfloat import _crc32

    for part, edit, match in (("block_starts", lambda t: t.__setitem__(1, int(t[2]) + 1), "block"),
                              ("block_starts", lambda t: t.__setitem__(-1, int(t[-1]) - 1), "block"),
                              ("gaps", lambda t: t.__setitem__(0, 0xCC), "gaps")):
        _, parts, header = _parts()
        edit(parts[part])
        header["payload_crc32"] = _crc32([parts[p] for p in ("words", "gaps", "block_starts", "raw")])
        with pytest.raises(DFloatError, match=match):
            DFloatTensor.from_state_dict(parts, _sealed(header))


def test_decoding_garbage_never_crashes():
    # without validation a corrupted payload decodes to wrong values or is refused by the CPU
    # decoder's stream check, but every read is bounded
    x, parts, header = _parts()
    parts["lut"] = DFloatTensor.compress(x).lut  # not stored in files (rebuilt from the code lengths)
    g = torch.Generator().manual_seed(1)
    refused = 0
    for part in ("words", "gaps", "block_starts", "lut"):
        bad = {k: v.clone() for k, v in parts.items()}
        t = bad[part].view(torch.uint8)
        t.copy_(torch.randint(0, 256, t.shape, generator=g, dtype=torch.uint8))
        c = DFloatTensor.from_state_dict(bad, header, validate=False)
        try:
            assert c.decompress().shape == x.shape
        except DFloatError:
            refused += 1
    assert refused >= 3  # random gaps / block_starts / tables never describe the stream


# ---- serialisation -----------------------------------------------------------------------------

def test_decode_table_is_rebuilt_from_the_code_lengths():
    x, parts, header = _parts()
    assert "lut" not in parts
    c = DFloatTensor.from_state_dict(parts, header)
    assert torch.equal(c.lut, DFloatTensor.compress(x).lut)
    assert_bit_exact(c.decompress(), x)
    header["code_lengths"] = {"120": 1, "121": 1, "119": 1}  # not a prefix code
    with pytest.raises(DFloatError, match="prefix code"):
        DFloatTensor.from_state_dict(parts, _sealed(header))


def test_safetensors_round_trip(tmp_path):
    x = INPUTS["normal 0.02 2-D"]
    y = INPUTS["nan inf denormal"]
    path = os.path.join(tmp_path, "w.safetensors")
    save_file({"a.weight": DFloatTensor.compress(x), "b.weight": DFloatTensor.compress(y),
               "norm.weight": torch.ones(3)}, path)
    loaded = load_file(path)
    assert_bit_exact(loaded["a.weight"].decompress(), x)
    assert_bit_exact(loaded["b.weight"].decompress(), y)
    assert torch.equal(loaded["norm.weight"], torch.ones(3))
    # a plain safetensors reader sees ordinary integer tensors and the JSON header
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        assert "ekdf" in f.metadata() and "a.weight.__ekdf__.words" in f.keys()


def test_tensor_save_and_load(tmp_path):
    x = INPUTS["normal 0.02 2-D"]
    path = os.path.join(tmp_path, "x.safetensors")
    DFloatTensor.compress(x).save(path)
    assert_bit_exact(DFloatTensor.load(path).decompress(), x)
    save_file({"tensor": torch.ones(2)}, path)
    with pytest.raises(DFloatError, match="no EKDF tensor"):
        DFloatTensor.load(path)


def test_corrupted_file_is_rejected(tmp_path):
    x = INPUTS["normal 1"]
    path = os.path.join(tmp_path, "w.safetensors")
    save_file({"w": DFloatTensor.compress(x)}, path)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(DFloatError, match="CRC32"):
        load_file(path)


# ---- ops --------------------------------------------------------------------------------------

def test_opcheck_and_fake_impls():
    x = INPUTS["size 7"]
    c = DFloatTensor.compress((torch.randn(5000) * 0.02).to(torch.bfloat16))
    ops = torch.ops.entropy_kernels
    torch.library.opcheck(ops.dfloat_decompress.default, (*c.payload(), *c.sizes()))
    out = torch.empty(c.numel, dtype=torch.bfloat16)
    torch.library.opcheck(ops.dfloat_decompress_into.default, (out, *c.payload(), *c.sizes()))
    assert x.numel() == 7


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    w = (torch.randn(64, 48) * 0.02).to(torch.bfloat16)
    c = DFloatTensor.compress(w)
    h = torch.randn(5, 48).to(torch.bfloat16)

    def f(h):
        return h @ c.decompress().T

    assert torch.equal(torch.compile(f, fullgraph=True)(h), h @ w.T)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_eager_fast_path_equals_the_registered_ops(device, monkeypatch):
    """Eagerly DFloatTensor.decompress launches the decoder without the dispatcher; with
    EK_VIA_OPS=1 it goes through the ops. Same values, same checks, both ways."""
    x = INPUTS["normal 1e-3"]
    c = DFloatTensor.compress(x).to(device)
    got = []
    for via_ops in ("0", "1"):
        monkeypatch.setattr(config.CONFIG, "via_ops", via_ops == "1")
        buf = torch.full((c.numel,), 7.0, dtype=torch.bfloat16, device=device)
        got += [c.decompress(), c.decompress(out=buf), buf]
        with pytest.raises(ValueError, match="out must be contiguous"):
            c.decompress(out=torch.empty(3, dtype=torch.bfloat16, device=device))
    for y in got:
        assert torch.equal(y.view(-1).view(torch.int16).cpu(), x.view(-1).view(torch.int16))


def test_replaced_payload_arrays_are_checked_again():
    """DFloatTensor computes the decoder's arguments once; replacing an array must check the
    payload again (a truncated one is refused before any decode) and decode from the new one."""
    x = INPUTS["normal 1e-3"]
    c = DFloatTensor.compress(x)
    assert torch.equal(c.decompress(), x)
    original = c.raw
    c.raw = original[:-1].clone()
    with pytest.raises(ValueError, match="raw must have"):
        c.decompress()
    c.raw = original.clone()  # same values, new memory: the decoder must read the new array
    original.zero_()
    assert torch.equal(c.decompress().view(torch.int16), x.view(torch.int16))


def test_copies_and_swapped_storage_decode_from_their_own_memory():
    """A copy (deepcopy, pickle) of a DFloatTensor that has decoded, and an array whose storage
    was swapped in place, must decode from their own memory, not from cached pointers."""
    x = INPUTS["normal 1e-3"]
    c = DFloatTensor.compress(x)
    c.decompress()
    copies = [copy.deepcopy(c), pickle.loads(pickle.dumps(c))]
    old_words = c.words.data
    c.words.data = old_words.clone()
    old_words.zero_()  # what a stale pointer would read
    assert torch.equal(c.decompress().view(torch.int16), x.view(torch.int16))
    for t in c.payload():
        t.zero_()
    for d in copies:
        assert torch.equal(d.decompress().view(torch.int16), x.view(torch.int16))


def test_bad_op_arguments_raise_clear_errors():
    c = DFloatTensor.compress(INPUTS["normal 1e-3"])
    ops = torch.ops.entropy_kernels
    words, gaps, starts, lut, raw = c.payload()
    with pytest.raises(TypeError, match="words must have dtype"):
        ops.dfloat_decompress(words.float(), gaps, starts, lut, raw, *c.sizes())
    with pytest.raises(ValueError, match="raw must have"):
        ops.dfloat_decompress(words, gaps, starts, lut, raw[:-1], *c.sizes())
    with pytest.raises(ValueError, match="out must be contiguous"):
        c.decompress(out=torch.empty(3, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="out must be a bfloat16"):
        c.decompress(out=torch.empty(c.numel))


# ---- GPU ----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("name", list(INPUTS))
def test_round_trip_cuda_is_bit_exact(name):
    x = INPUTS[name]
    c = DFloatTensor.compress(x.cuda())
    assert c.device.type == "cuda"
    y = c.decompress()
    assert y.device.type == "cuda"
    assert_bit_exact(y, x)
    assert c.verify(y)


@pytest.mark.gpu
def test_cuda_decoder_is_bit_exact_on_structured_inputs():
    for x in (INPUTS["normal 1"], INPUTS["every bit pattern"], INPUTS["nan inf denormal"], INPUTS["size 7"]):
        assert_bit_exact(DFloatTensor.compress(x.cuda()).decompress(), x)


@pytest.mark.gpu
def test_cuda_decode_into_a_reused_buffer_under_cuda_graph_capture():
    xs = [(torch.randn(n) * 0.02).to(torch.bfloat16) for n in (1000, 300_001, 2_000_000)]
    cs = [DFloatTensor.compress(x).to("cuda") for x in xs]
    buf = torch.full((2_000_000,), float("nan"), dtype=torch.bfloat16, device="cuda")
    outs = []
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # no host sync allowed inside
        for c in cs:
            outs.append(c.decompress(out=buf[:c.numel]).sum(dtype=torch.float32))
    buf.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    for x, s in zip(xs, outs):
        assert s.item() == pytest.approx(x.float().sum().item(), rel=1e-3, abs=1e-3)
    assert_bit_exact(buf[:2_000_000].cpu(), xs[2])


@pytest.mark.gpu
def test_cuda_decode_of_a_gigabyte_tensor():
    n = 536_870_912 + 5
    x = (torch.randn(n, device="cuda") * 0.02).to(torch.bfloat16)
    c = DFloatTensor.compress(x)
    y = c.decompress()
    assert torch.equal(y.view(torch.int16), x.view(torch.int16))
    assert math.isclose(c.ratio, 0.665, abs_tol=0.01)
