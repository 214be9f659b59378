"""``entropy_kernels::dfloat_linear`` / ``DFloatTensor.linear``: y = x @ W.T + bias from the EKDF
payload of W.

The CUDA kernel cannot run on a GPU-less machine, so its algorithm is run thread by thread on the
CPU (``ops.dfloat_linear.emulated``, csrc/dfloat_linear_cpu.cpp: the kernel's steps from
csrc/dfloat_linear.h, same order of fp32 operations) and checked against a float64 product of
fresh random data; the gpu-marked tests check the real kernel against that emulation bit for bit
and against F.linear. Shapes are chosen so that the payload spans several EKDF blocks and rows
are cut by block boundaries (a row spanning 2 and 4 blocks, many rows per block)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from entropy_kernels import _backend
from entropy_kernels.decoding import DFloatError, DFloatTensor, compress_model
from entropy_kernels.decoding.compressed_model import EKDFLinear
from entropy_kernels.ops import dfloat as dops
from entropy_kernels.ops import dfloat_linear as lin

BF16 = torch.bfloat16


def weight(n: int, k: int) -> torch.Tensor:
    return (torch.randn(n, k) * 0.02).to(BF16)


def reference(x, w, bias=None) -> torch.Tensor:
    """x @ w.T + bias in float64."""
    y = x.double() @ w.double().T
    return y + bias.double() if bias is not None else y


def assert_close_to_fp64(y, x, w, bias=None):
    """Within bf16 rounding of the float64 result (relative 2^-8) plus an fp32 accumulation
    bound (2^-20 of the sum of |x||w| terms)."""
    ref = reference(x, w, bias)
    bound = 2.0**-8 * ref.abs() + 2.0**-20 * (x.double().abs() @ w.double().abs().T) + 1e-30
    err = (y.double() - ref).abs()
    assert y.dtype == BF16 and y.shape == ref.shape
    assert bool((err <= bound).all()), f"max error {err.max().item()} (bound {bound[err > bound].min().item()})"


def linear_case(n: int, k: int, m: int, with_bias: bool):
    """``(W [n, k], x [m, k], bias [n] or None, W compressed)``, random in that order."""
    w = weight(n, k)
    x = torch.randn(m, k).to(BF16)
    b = torch.randn(n).to(BF16) if with_bias else None
    return w, x, b, DFloatTensor.compress(w)


def cut_rows(c: DFloatTensor, k: int) -> int:
    """Rows of W split between EKDF blocks (the partial-sum path of the kernel)."""
    starts = c.block_starts[1:-1]
    return int(((starts % k) != 0).sum())


# (N, K, M): several blocks, K a multiple of nothing; a row over 2 blocks and one over 4; many
# short rows per block; one row; M from 1 to 16 (accumulator widths 1, 2, 4, 8, 16)
CASES = [(37, 3001, 1), (37, 3001, 3), (200, 999, 16), (61, 2039, 5), (1, 100003, 2), (5000, 13, 9),
         (3, 7, 4), (26, 6007, 8), (300, 337, 12)]


@pytest.mark.parametrize("n,k,m", CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_kernel_algorithm_emulated_on_cpu_matches_float64(n, k, m, with_bias):
    w, x, b, c = linear_case(n, k, m, with_bias)
    if n * k > 100_000:
        assert c.block_starts.numel() - 1 >= 3 and cut_rows(c, k) >= 2
    assert_close_to_fp64(lin.emulated(x, *c.payload(), *c.sizes(), n, k, b), x, w, b)


def test_emulation_every_row_count_1_to_16():
    n, k = 53, 1999  # 105947 values: 3 blocks, rows cut at both boundaries
    w, b = weight(n, k), torch.randn(n).to(BF16)
    c = DFloatTensor.compress(w)
    assert cut_rows(c, k) == c.block_starts.numel() - 2 >= 2
    x = torch.randn(16, k).to(BF16)
    for m in range(1, 17):
        assert_close_to_fp64(lin.emulated(x[:m], *c.payload(), *c.sizes(), n, k, b), x[:m], w, b)


def _payload_with_empty_last_block():
    """Codes 1 bit (A), 2 bits (B, C): 65335 A and 100 B fill bits [0, 65535), then one C crosses
    the block boundary: total_bits 65537, two blocks, the second one holding no code."""
    a, bb, cc = 1.0, 2.0**-20, 2.0**20
    values = torch.full((65436,), a)
    values[torch.randperm(65435)[:100]] = bb
    values[-1] = cc
    values *= torch.where(torch.rand(65436) < 0.5, -1.0, 1.0) * (1 + torch.randint(0, 128, (65436,)) / 128)
    return values.to(BF16)


def test_emulation_with_an_empty_block():
    n, k = 84, 779
    w = _payload_with_empty_last_block().view(n, k)
    c = DFloatTensor.compress(w)
    assert c.total_bits == 65537 and c.block_starts.tolist() == [0, 65436, 65436]
    x = (torch.randn(2, k) * 1e-3).to(BF16)
    assert_close_to_fp64(lin.emulated(x, *c.payload(), *c.sizes(), n, k), x, w)
    # the empty block's start past numel: every block's codes still match its clamped range, but
    # the index is not ordered -- refused as the CPU decoder refuses it
    bad = _damaged(c, "block_starts", 1, 65436 + 5)
    assert bool(lin.emulated(x, *bad.payload(), *bad.sizes(), n, k).isnan().all())
    with pytest.raises(DFloatError):
        bad.linear(x)


def _damaged(c: DFloatTensor, part: str, index: int, value: int) -> DFloatTensor:
    parts, header = c.state_dict()
    parts = {p: t.clone() for p, t in parts.items()}
    parts[part][index] = value
    return DFloatTensor.from_state_dict(parts, header, validate=False)


def test_index_that_disagrees_with_the_stream_gives_nan_emulated_and_an_error_on_cpu():
    n, k = 40, 3001
    w = weight(n, k)
    c = DFloatTensor.compress(w)
    x = torch.randn(3, k).to(BF16)
    starts = c.block_starts
    for bad in (_damaged(c, "block_starts", 1, int(starts[1]) + 1),   # block 0 one value short of its codes
                _damaged(c, "block_starts", 1, int(starts[2]) + 5),   # not monotonic
                _damaged(c, "block_starts", 1, -3)):
        y = lin.emulated(x, *bad.payload(), *bad.sizes(), n, k)
        assert bool(y.isnan().all()), "every value of y must be written, as NaN"
        with pytest.raises(DFloatError):
            bad.linear(x)


def test_damaged_payloads_never_leave_y_unwritten():
    """Seeded byte damage in every array: the emulated kernel writes every value of y (a sentinel
    never survives) and, when the CPU decoder accepts the payload, agrees with it."""
    n, k, m = 30, 2501, 2
    w = weight(n, k)
    c = DFloatTensor.compress(w)
    x = torch.randn(m, k).to(BF16)
    C = _backend.native()
    g = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    for trial in range(40):
        part = ("words", "gaps", "block_starts", "raw")[trial % 4]
        arr = getattr(c, part)
        i = int(torch.randint(0, arr.numel(), (1,), generator=g))
        flip = arr[i].item() ^ (1 << int(torch.randint(0, 8, (1,), generator=g)))
        bad = _damaged(c, part, i, flip)
        y = torch.full((m, n), 12345.0, dtype=BF16)
        scratch = torch.full((2 * (bad.block_starts.numel() - 1) * m + 1,), 7.0)
        args = dops.launch_args(*bad.payload(), *bad.sizes())
        assert C.dfloat_linear_emulated(*args, x.data_ptr(), m, n, k, 0, y.data_ptr(), scratch.data_ptr()) == 0
        assert not bool((y == 12345.0).any())
        try:
            decoded = bad.decompress().view(n, k)
        except DFloatError:
            continue
        assert_close_to_fp64(y, x, decoded)


def test_cuda_launch_arguments_reach_the_kernel_in_order(monkeypatch):
    """The CUDA path's call into _C (pointers, sizes, scratch, stream), checked without a GPU: a
    stand-in _C runs the emulation with the same arguments but the stream."""
    real = _backend.native()
    n, k, m = 70, 2999, 5
    w, b = weight(n, k), torch.randn(n).to(BF16)
    c = DFloatTensor.compress(w)
    x = torch.randn(k, m).to(BF16).T  # not contiguous: the launcher makes it so
    calls = []

    class FakeC:
        @staticmethod
        def dfloat_linear_cuda(*args):
            calls.append(args[-1])
            assert real.dfloat_linear_emulated(*args[:-1]) == 0

    monkeypatch.setattr(_backend, "native", lambda: FakeC)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)
    monkeypatch.setattr(dops, "_stream_handle", lambda device: 1234)
    for bias in (None, b):
        y = lin._cuda_fused(x, bias, n, k, dops.launch_args(*c.payload(), *c.sizes()))
        assert_close_to_fp64(y, x, w, bias)
    assert calls == [1234, 1234]


# ------------------------------------------------------------------------ the op on the CPU ---

@pytest.mark.parametrize("shape", [(1, 700), (3, 5, 700), (17, 700), (40, 700), (0, 700), (2, 0, 700)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_on_cpu_equals_f_linear(shape, with_bias):
    w = weight(130, 700)
    b = torch.randn(130).to(BF16) if with_bias else None
    x = torch.randn(*shape).to(BF16)
    y = DFloatTensor.compress(w).linear(x, b)
    assert y.shape == (*shape[:-1], 130)
    assert torch.equal(y, F.linear(x, w, b))


def test_empty_weight():
    x = torch.randn(2, 0).to(BF16)
    b = torch.randn(5).to(BF16)
    c = DFloatTensor.compress(torch.zeros(5, 0, dtype=BF16))
    assert torch.equal(c.linear(x, b), F.linear(x, torch.zeros(5, 0, dtype=BF16), b))


def test_opcheck_and_torch_compile():
    w, b = weight(48, 96), torch.randn(48).to(BF16)
    c = DFloatTensor.compress(w)
    x = torch.randn(3, 96).to(BF16)
    op = torch.ops.entropy_kernels.dfloat_linear.default
    torch.library.opcheck(op, (x, *c.payload(), *c.sizes(), 48, 96), {"bias": b})
    torch.library.opcheck(op, (x, *c.payload(), *c.sizes(), 48, 96))
    torch._dynamo.reset()
    f = torch.compile(lambda h: c.linear(h, b) * 2, fullgraph=True)
    assert torch.equal(f(x), F.linear(x, w, b) * 2)


@pytest.mark.parametrize("m", [3, 20])
def test_gradients_flow_to_x_and_bias(m):
    n, k = 40, 300
    w, b = weight(n, k), torch.randn(n).to(BF16).requires_grad_()
    c = DFloatTensor.compress(w)
    x = torch.randn(2, m, k).to(BF16).requires_grad_()
    dy = torch.randn(2, m, n).to(BF16)
    y = c.linear(x, b)
    assert_close_to_fp64(y.detach().reshape(-1, n), x.detach().reshape(-1, k), w, b.detach())
    y.backward(dy)
    dx = dy.double() @ w.double()
    assert bool(((x.grad.double() - dx).abs() <= 2.0**-7 * dx.abs() + 2.0**-18 * (dy.double().abs() @ w.double().abs())
                 ).all())
    db = dy.double().sum((0, 1))
    assert bool(((b.grad.double() - db).abs() <= 2.0**-7 * db.abs() + 2.0**-18 * dy.double().abs().sum((0, 1))).all())
    op = torch.ops.entropy_kernels.dfloat_linear.default
    torch.library.opcheck(op, (x.detach()[0].requires_grad_(), *c.payload(), *c.sizes(), n, k), {"bias": b})


def test_bad_arguments_raise_errors_naming_them():
    w = weight(6, 10)
    c = DFloatTensor.compress(w)
    x = torch.randn(2, 10).to(BF16)
    op = torch.ops.entropy_kernels.dfloat_linear
    with pytest.raises(TypeError, match="x must be a bfloat16"):
        c.linear(x.float())
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        c.linear([1.0] * 10)
    with pytest.raises(ValueError, match="x must have K = cols = 10"):
        c.linear(torch.randn(2, 9).to(BF16))
    with pytest.raises(ValueError, match="x must have shape"):
        c.linear(torch.tensor(1.0, dtype=BF16))
    with pytest.raises(ValueError, match="x must be a dense 2-D"):
        op(x[0], *c.payload(), *c.sizes(), 6, 10)
    with pytest.raises(ValueError, match="x must be on the payload's device"):
        op(x.to("meta"), *c.payload(), *c.sizes(), 6, 10)
    with pytest.raises(ValueError, match="bias must have shape \\(6,\\)"):
        c.linear(x, torch.ones(5, dtype=BF16))
    with pytest.raises(TypeError, match="bias must be a bfloat16"):
        c.linear(x, torch.ones(6))
    with pytest.raises(TypeError, match="bias must be a torch.Tensor"):
        c.linear(x, 1.0)
    with pytest.raises(ValueError, match="bias must be on the payload's device"):
        c.linear(x, torch.ones(6, dtype=BF16, device="meta"))
    with pytest.raises(ValueError, match="rows \\* cols must equal numel"):
        op(x, *c.payload(), *c.sizes(), 5, 10)
    with pytest.raises(TypeError, match="rows must be an int"):  # the op's schema refuses it earlier
        lin.check_inputs(x, None, 6.0, 10, 60, x.device)
    # the payload checks of dfloat_decompress
    words, gaps, block_starts, lut, raw = c.payload()
    with pytest.raises(ValueError, match="raw must have 60 entries"):
        op(x, words, gaps, block_starts, lut, raw[:-1], *c.sizes(), 6, 10)
    with pytest.raises(TypeError, match="lut must have dtype"):
        op(x, words, gaps, block_starts, lut.int(), raw, *c.sizes(), 6, 10)
    with pytest.raises(ValueError, match="linear needs a 2-D weight"):
        DFloatTensor.compress(torch.ones(2, 3, 4, dtype=BF16)).linear(torch.ones(1, 4, dtype=BF16))
    with pytest.raises(ValueError, match="x must have 1 to 16 rows"):
        lin.emulated(torch.randn(17, 10).to(BF16), *c.payload(), *c.sizes(), 6, 10)


# -------------------------------------------------------------------------------- models ---

def tiny_llama(seed: int = 0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).to(BF16).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    return model


def _generate(model, ids):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)


@pytest.mark.slow
def test_compressed_llama_uses_linear_for_small_inputs(monkeypatch):
    """The compressed model's nn.Linear modules call DFloatTensor.linear for inputs of <= 16 rows
    (decode steps, short prompts) and decode into the buffer for larger ones. On the CPU that
    path is decode + F.linear, so logits and generations are identical to the bf16 model; with
    the emulated CUDA kernel in its place (fp32 sums in another order) greedy tokens are equal
    and logits within a bf16 tolerance (2^-6 of the largest logit)."""
    model = tiny_llama()
    packed = copy.deepcopy(model)
    compress_model(packed, min_numel=4096, progress=False, fused_linear=True)
    fused = [m for m in packed.modules() if isinstance(m, EKDFLinear)]
    big = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.numel() >= 4096]
    assert len(fused) == len(big) == 2 * 5 + 1  # q o gate up down per layer (k, v are small), LM head

    rows_seen = []
    cpu_path = lin._cpu

    def counting(x, bias, rows, cols, args):
        rows_seen.append(x.shape[0])
        return cpu_path(x, bias, rows, cols, args)

    monkeypatch.setattr(lin, "_cpu", counting)
    short = torch.randint(0, 320, (1, 12))  # 12 rows: every linear goes to dfloat_linear
    long = torch.randint(0, 320, (2, 9))    # 18 rows: the decode-into-buffer path
    with torch.no_grad():
        ref_short, ref_long = model(short).logits, model(long).logits
        assert torch.equal(packed(short).logits, ref_short)
        assert rows_seen and set(rows_seen) == {12}
        rows_seen.clear()
        assert torch.equal(packed(long).logits, ref_long)
        assert rows_seen == []
    assert torch.equal(_generate(packed, long), _generate(model, long))
    assert set(rows_seen) == {2}  # each generated token of 2 sequences

    def emulated_kernel(x, bias, rows, cols, args):
        if x.shape[0] > lin.MAX_FUSED_ROWS:
            return cpu_path(x, bias, rows, cols, args)
        c = next(m._ekdf_weight for m in packed.modules() if isinstance(m, EKDFLinear)
                 and m._ekdf_weight.raw.data_ptr() == args[7])
        return lin.emulated(x, *c.payload(), *c.sizes(), rows, cols, bias)

    monkeypatch.setattr(lin, "_cpu", emulated_kernel)
    with torch.no_grad():
        got = packed(short).logits
    assert (got.float() - ref_short.float()).abs().max() <= 2.0**-6 * ref_short.float().abs().max()
    assert torch.equal(_generate(packed, short), _generate(model, short))


def test_fused_linear_is_opt_in():
    """Off by default until a GPU run has checked the CUDA kernel; False keeps plain modules."""
    for kwargs in ({}, {"fused_linear": False}):
        model = tiny_llama()
        compress_model(model, min_numel=4096, progress=False, **kwargs)
        assert not any(isinstance(m, EKDFLinear) for m in model.modules())
    with pytest.raises(TypeError, match="fused_linear must be a bool"):
        compress_model(tiny_llama(), min_numel=4096, progress=False, fused_linear=1)


# ------------------------------------------------------------------------------- on a GPU ---

GPU_CASES = [(37, 3001, 1), (37, 3001, 16), (200, 999, 7), (1, 100003, 2), (5000, 13, 3), (4096, 1024, 1),
             (512, 4096, 4), (300, 337, 12)]


@pytest.mark.gpu
@pytest.mark.parametrize("n,k,m", GPU_CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_cuda_kernel_equals_its_emulation_and_f_linear(n, k, m, with_bias):
    """x in shared memory (M*K*2 <= 32 KB) and through the cache, every accumulator width."""
    w, x, b, c = linear_case(n, k, m, with_bias)
    expected = lin.emulated(x, *c.payload(), *c.sizes(), n, k, b)
    cg = c.to("cuda")
    y = cg.linear(x.cuda(), None if b is None else b.cuda())
    assert torch.equal(y.cpu(), expected)
    assert_close_to_fp64(y.cpu(), x, w, b)
    y_op = torch.ops.entropy_kernels.dfloat_linear(x.cuda(), *cg.payload(), *cg.sizes(), n, k,
                                                   None if b is None else b.cuda())
    assert torch.equal(y_op, y)


@pytest.mark.gpu
def test_cuda_large_batch_decodes_and_uses_cublas():
    w, b = weight(300, 1000), torch.randn(300).to(BF16)
    x = torch.randn(40, 1000).to(BF16)
    c = DFloatTensor.compress(w).to("cuda")
    assert torch.equal(c.linear(x.cuda(), b.cuda()), F.linear(x.cuda(), w.cuda(), b.cuda()))


@pytest.mark.gpu
def test_cuda_bad_index_gives_nan():
    n, k = 40, 3001
    c = DFloatTensor.compress(weight(n, k))
    bad = _damaged(c, "block_starts", 1, int(c.block_starts[1]) + 1).to("cuda")
    y = bad.linear(torch.randn(2, k).to(BF16).cuda())
    assert bool(y.isnan().all())


@pytest.mark.gpu
def test_cuda_gradients_through_the_fused_kernel():
    n, k = 300, 1000
    w = weight(n, k).cuda()
    b = torch.randn(n).to(BF16).cuda().requires_grad_()
    x = torch.randn(3, k).to(BF16).cuda().requires_grad_()
    dy = torch.randn(3, n).to(BF16).cuda()
    DFloatTensor.compress(w).linear(x, b).backward(dy)
    x2, b2 = x.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    F.linear(x2, w, b2).backward(dy)
    assert torch.allclose(x.grad.float(), x2.grad.float(), rtol=2**-7, atol=1e-3)
    assert torch.allclose(b.grad.float(), b2.grad.float(), rtol=2**-7, atol=1e-3)


@pytest.mark.gpu
def test_cuda_graph_capture():
    n, k = 256, 3001
    w, b = weight(n, k), torch.randn(n).to(BF16).cuda()
    c = DFloatTensor.compress(w).to("cuda")
    x = torch.randn(4, k).to(BF16).cuda()
    c.linear(x, b)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = c.linear(x, b)
    for _ in range(2):
        x.copy_(torch.randn(4, k).to(BF16))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, c.linear(x, b))
        assert_close_to_fp64(y.cpu(), x.cpu(), w, b.cpu())


@pytest.mark.gpu
def test_compressed_llama_on_cuda_generates_the_same_tokens():
    model = tiny_llama().cuda()
    packed = copy.deepcopy(model)
    compress_model(packed, min_numel=4096, progress=False, fused_linear=True)
    ids = torch.randint(0, 320, (1, 12), device="cuda")
    with torch.no_grad():
        ref, got = model(ids).logits, packed(ids).logits
    assert (got.float() - ref.float()).abs().max() <= 2.0**-6 * ref.float().abs().max()
    assert torch.equal(_generate(packed, ids), _generate(model, ids))
