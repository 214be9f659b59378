"""linear_logprob_entropy and the RL helpers against float64 oracles (high_entropy_mask:
test_high_entropy_mask.py)."""

import pytest
import torch

import entropy_kernels as ek
from conftest import aot_once
from entropy_kernels.training import aggregate_loss, entropy_bonus, response_logprobs_and_entropy

N, D, V = 37, 48, 1000
NEG_INF = float("-inf")


def oracle(h, w, y, bias=None, temperature=1.0, ignore_index=-100, logits_dtype=None):
    """(logprobs, entropy) in float64 from log_softmax on full logits; differentiable.
    ``logits_dtype`` rounds the logits first (what the ``stored`` impl keeps)."""
    z = h.double() @ w.double().T
    if bias is not None:
        z = z + bias.double()
    if logits_dtype is not None:
        delta = (z.detach().to(logits_dtype).double() - z.detach()).nan_to_num(0.0)  # -inf - -inf
        z = z + delta  # the rounded value, with the exact gradient
    logp = torch.log_softmax(z / temperature, dim=-1)
    ignored = y == ignore_index
    lp = logp.gather(-1, torch.where(ignored, 0, y).unsqueeze(-1)).squeeze(-1)
    finite_logp = torch.where(torch.isneginf(logp), torch.zeros_like(logp), logp)
    ent = -(logp.exp() * finite_logp).sum(-1)
    zero = torch.zeros_like(lp)
    return torch.where(ignored, zero, lp), torch.where(ignored, zero, ent)


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert not torch.isnan(a).any(), "NaN in result"
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def make(device, dtype, shape=(N,), bias=None, ignore_fraction=0.2):
    h = torch.randn(*shape, D, dtype=torch.float64).to(dtype).to(device)
    w = (torch.randn(V, D, dtype=torch.float64) / D**0.5 * 3).to(dtype).to(device)
    b = None
    if bias == "random":
        b = torch.randn(V, dtype=torch.float64).to(dtype).to(device)
    elif bias == "negative":  # every logit < 0: catches a running max initialised at 0
        b = torch.full((V,), -60.0, dtype=torch.float64).to(dtype).to(device)
    elif bias == "masked":  # masked vocabulary: -inf bias entries
        b = torch.randn(V, dtype=torch.float64)
        b[torch.rand(V) < 0.3] = NEG_INF
        b = b.to(dtype).to(device)
    y = torch.randint(0, V, shape)
    if bias == "masked":  # labels only on unmasked entries
        allowed = torch.nonzero(~torch.isneginf(b.cpu())).squeeze(-1)
        y = allowed[torch.randint(0, allowed.numel(), shape)]
    y[torch.rand(shape) < ignore_fraction] = -100
    return h, w, b, y.to(device)


def dtypes_for(backend):
    return [torch.float32, torch.float16] if backend.name == "cpu-triton-interpreter" else [torch.float32, torch.bfloat16]


TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


@pytest.fixture
def five_token_chunks(monkeypatch):
    """The chunked impl's chunks at 5 tokens, so that every test crosses chunk boundaries
    (and the last chunk is partial)."""
    import entropy_kernels.ops.linear_logprob_entropy as mod

    monkeypatch.setattr(mod, "chunk_tokens", lambda n, vocab, itemsize: 5)


@pytest.mark.parametrize("impl", ["fused", "stored", "chunked", "reference"])
@pytest.mark.parametrize("bias", [None, "random", "negative", "masked"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.interpreter_pairwise
def test_values_and_grads_match_float64(backend, impl, bias, temperature, five_token_chunks):
    if impl == "reference" and backend.name != "cpu-reference":
        pytest.skip("plain torch: one backend is enough")
    for dtype in dtypes_for(backend):
        h, w, b, y = make(backend.device, dtype, (3, 13), bias=bias)
        inputs = [t.clone().requires_grad_() for t in (h, w) + ((b,) if b is not None else ())]
        with backend.context():
            lp, ent = ek.linear_logprob_entropy(inputs[0], inputs[1], y, bias=inputs[2] if b is not None else None,
                                                temperature=temperature, impl=impl)
        refs = [t.detach().double().requires_grad_() for t in inputs]
        # stored / chunked keep logits in the input dtype (the numerics of torch's own bf16 logits)
        logits_dtype = dtype if impl in ("stored", "chunked") and dtype != torch.float32 else None
        lp_r, ent_r = oracle(refs[0], refs[1], y, refs[2] if b is not None else None, temperature, logits_dtype=logits_dtype)
        assert lp.shape == (3, 13) and lp.dtype == torch.float32 and ent.dtype == torch.float32
        assert rel(lp, lp_r) <= TOL[dtype] and rel(ent, ent_r) <= TOL[dtype]
        g_lp, g_ent = torch.randn(3, 13), torch.randn(3, 13)
        with backend.context():
            torch.autograd.backward([lp, ent], [g_lp.to(lp.device), g_ent.to(lp.device)])
        torch.autograd.backward([lp_r, ent_r], [g_lp.double().to(lp_r.device), g_ent.double().to(lp_r.device)])
        for x, xr, name in zip(inputs, refs, ["hidden", "weight", "bias"]):
            err = rel(x.grad, xr.grad) if name != "bias" else rel(x.grad[~torch.isneginf(b)], xr.grad[~torch.isneginf(b)])
            assert err <= 2 * TOL[dtype], (name, dtype, err)
        ignored = (y == -100).cpu()
        assert (lp.detach().cpu()[ignored] == 0).all() and (ent.detach().cpu()[ignored] == 0).all()


@pytest.mark.parametrize("which", ["logprobs", "entropy"])
def test_gradient_of_one_output_only(backend, which):
    h, w, _, y = make(backend.device, torch.float32)
    hk, wk = h.clone().requires_grad_(), w.clone().requires_grad_()
    with backend.context():
        lp, ent = ek.linear_logprob_entropy(hk, wk, y, temperature=1.3, impl="fused")
        (lp if which == "logprobs" else ent).sum().backward()
    hr, wr = h.double().requires_grad_(), w.double().requires_grad_()
    lp_r, ent_r = oracle(hr, wr, y, temperature=1.3)
    (lp_r if which == "logprobs" else ent_r).sum().backward()
    assert rel(hk.grad, hr.grad) <= 2e-5 and rel(wk.grad, wr.grad) <= 2e-5


def test_consistent_with_cross_entropy_and_entropy(backend):
    h, w, _, y = make(backend.device, torch.float32, (2, 9))
    with backend.context():
        lp, ent = ek.linear_logprob_entropy(h, w, y, impl="fused")
        ce = ek.linear_cross_entropy(h, w, y, reduction="none", impl="fused")
        ent2 = ek.entropy(h @ w.T)
    torch.testing.assert_close(-lp, ce, rtol=1e-5, atol=1e-5)
    valid = y != -100
    torch.testing.assert_close(ent[valid], ent2[valid], rtol=1e-5, atol=1e-5)


def test_return_entropy_false(backend):
    h, w, _, y = make(backend.device, torch.float32)
    with backend.context():
        lp, ent = ek.linear_logprob_entropy(h, w, y, return_entropy=False)
    assert ent is None and lp.shape == (N,)


def test_gradcheck_float64(backend, five_token_chunks):
    h, w, b, y = make(backend.device, torch.float64, (5,), bias="random")
    h, w, b = h[:, :6].contiguous(), w[:11, :6].contiguous(), b[:11].contiguous()
    y = torch.randint(0, 11, (5,), device=backend.device)
    impls = ["fused", "stored", "chunked", "reference"] if backend.name == "cpu-reference" else ["reference"]
    for impl in impls:
        def f(h, w, b):
            return ek.linear_logprob_entropy(h, w, y, bias=b, temperature=0.7, impl=impl)

        with backend.context():
            assert torch.autograd.gradcheck(f, (h.requires_grad_(), w.requires_grad_(), b.requires_grad_()), eps=1e-6, atol=1e-6)


@pytest.mark.kernel_backends_only
def test_opcheck_stored(backend):
    h, w, b, y = make(backend.device, torch.float32, (9,), bias="random")
    # The stored path's logits come from a BLAS matmul whose summation order can depend on the
    # output buffer's alignment, which differs between eager and the AOT-traced run; Σz (a sum
    # over V logits) then moves by a few fp32 ulps, so compare with a tolerance of that size.
    tol = dict(rtol=2e-5, atol=1e-4)
    with backend.context():
        torch.library.opcheck(torch.ops.entropy_kernels.linear_softmax_stats_stored.default,
                              (h.requires_grad_(), w.requires_grad_(), b.requires_grad_(), y, 0.0, 0.8), **tol)
        stats, logits = torch.ops.entropy_kernels.linear_softmax_stats_stored(h.detach(), w.detach(), b.detach(), y, 0.0, 0.8)
        torch.library.opcheck(torch.ops.entropy_kernels.linear_softmax_stored_backward.default,
                              (torch.randn_like(stats), stats, logits, h.detach(), w.detach(), b.detach(), y, 0.0, 0.8), **tol)


@pytest.mark.kernel_backends_only
def test_opcheck_chunked(backend):
    h, w, b, y = make(backend.device, torch.float32, (9,), bias="random")
    tol = dict(rtol=2e-5, atol=1e-4)  # BLAS summation order, as for the stored path
    with backend.context():
        for chunk, accum in ((4, False), (9, True)):
            torch.library.opcheck(torch.ops.entropy_kernels.linear_softmax_stats_chunked.default,
                                  (h.requires_grad_(), w.requires_grad_(), b.requires_grad_(), y, 0.0, 0.8, chunk, accum),
                                  **tol, **aot_once(chunk == 4))
        stats = torch.ops.entropy_kernels.linear_softmax_stats_chunked(h.detach(), w.detach(), b.detach(), y, 0.0, 0.8, 4,
                                                                       False)
        for need_dh, need_dw in ((True, True), (True, False), (False, True)):
            torch.library.opcheck(torch.ops.entropy_kernels.linear_softmax_chunked_backward.default,
                                  (torch.randn_like(stats), stats, h.detach(), w.detach(), b.detach(), y, 0.0, 0.8, 4, False,
                                   need_dh, need_dw), **tol, **aot_once(need_dh and need_dw))


def test_auto_picks_chunked_on_the_kernel_path(backend, monkeypatch):
    """auto: chunked (cuBLAS, one chunk of logits) on the kernel path, with and without a
    backward (so that no_grad log-probs round like the trained ones), fused with gradient
    filtering; the reference on the plain-torch CPU path."""
    import entropy_kernels.ops.linear_logprob_entropy as mod

    seen = []
    for name in ("linear_softmax_stats_chunked", "linear_softmax_stats"):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _name=name: seen.append(_name) or _real(*a))
    h, w, _, y = make(backend.device, torch.float32, (4,))
    with backend.context():
        ek.linear_logprob_entropy(h.requires_grad_(), w, y)
        with torch.no_grad():
            ek.linear_logprob_entropy(h, w, y)
        ek.linear_logprob_entropy(h, w, y, filter_eps=1e-6)
    kernels = backend.name != "cpu-reference"
    want = ["linear_softmax_stats_chunked", "linear_softmax_stats_chunked", "linear_softmax_stats"]
    assert seen == (want if kernels else []), seen


@pytest.mark.parametrize("accum_fp32", [False, True])
def test_chunked_frozen_head_and_fp32_accumulation(backend, five_token_chunks, accum_fp32):
    """A frozen LM head (LoRA): the chunked backward gives dh and no dW; with accum_fp32 the
    dW sum over chunks is fp32. Both against float64."""
    for dtype in dtypes_for(backend):
        h, w, _, y = make(backend.device, dtype, (3, 13))
        hk = h.clone().requires_grad_()
        with backend.context():
            lp, ent = ek.linear_logprob_entropy(hk, w, y, impl="chunked", accum_fp32=accum_fp32)
            (lp.sum() + ent.sum()).backward()
        hr, wr = h.double().requires_grad_(), w.double()
        lp_r, ent_r = oracle(hr, wr, y, logits_dtype=dtype if dtype != torch.float32 else None)
        (lp_r.sum() + ent_r.sum()).backward()
        assert w.grad is None and rel(hk.grad, hr.grad) <= 2 * TOL[dtype]
        hk2, wk = h.clone(), w.clone().requires_grad_()
        with backend.context():
            lp, ent = ek.linear_logprob_entropy(hk2, wk, y, impl="chunked", accum_fp32=accum_fp32)
            (lp.sum() + ent.sum()).backward()
        wr = w.double().requires_grad_()
        lp_r, ent_r = oracle(h.double(), wr, y, logits_dtype=dtype if dtype != torch.float32 else None)
        (lp_r.sum() + ent_r.sum()).backward()
        assert wk.grad.dtype == dtype and rel(wk.grad, wr.grad) <= 2 * TOL[dtype]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("impl", ["fused", "stored", "chunked"])
def test_torch_compile_fullgraph_matches_eager(device, impl):
    torch._dynamo.reset()
    h, w, b, y = make(device, torch.float32, (2, 6), bias="random")
    h, w, b = (t.requires_grad_() for t in (h, w, b))

    def f(h, w, b):
        lp, ent = ek.linear_logprob_entropy(h, w, y, bias=b, temperature=0.9, impl=impl)
        return (lp * 2).sum() + ent.mean()

    eager = f(h, w, b)
    ge = torch.autograd.grad(eager, (h, w, b))
    out = torch.compile(f, fullgraph=True)(h, w, b)
    gc = torch.autograd.grad(out, (h, w, b))
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for a, e in zip(gc, ge):
        # by norm: inductor reorders fp32 sums, so single tiny entries can differ by 1e-3
        assert ((a - e).norm() / e.norm()).item() <= 1e-5


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(impl="gpu"), ValueError, "impl"),
        (dict(labels=torch.tensor([0, 5000, 1, 2])), ValueError, r"labels must be in \[0, 10\)"),
        (dict(labels=torch.zeros(4)), TypeError, "labels must be int64 or int32"),
        (dict(weight=torch.randn(10, 3)), ValueError, "must equal weight's D"),
        (dict(filter_eps=-1.0), ValueError, "filter_eps"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(hidden=torch.randn(4, 8), weight=torch.randn(10, 8), labels=torch.randint(0, 10, (4,)))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ek.linear_logprob_entropy(args.pop("hidden"), args.pop("weight"), args.pop("labels"), **args)


# ------------------------------------------------------------------------ RL helpers -----

def test_response_logprobs_and_entropy_matches_manual_slicing(backend):
    h = torch.randn(2, 12, D, device=backend.device)
    w = torch.randn(V, D, device=backend.device) / D**0.5 * 3
    ids = torch.randint(0, V, (2, 12), device=backend.device)
    with backend.context():
        lp, ent = response_logprobs_and_entropy(h, w, ids, response_length=5, temperature=0.8)
    lp_r, ent_r = oracle(h[:, -6:-1], w, ids[:, -5:], temperature=0.8)
    assert rel(lp, lp_r) <= 2e-5 and rel(ent, ent_r) <= 2e-5
    with pytest.raises(ValueError, match="response_length"):
        response_logprobs_and_entropy(h, w, ids, response_length=12)


def test_aggregate_loss_modes():
    loss = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.rand(4, 6) < 0.6
    mask[[0, 1, 3], 0] = True
    mask[2] = False  # a sequence without valid tokens
    m = mask.double()
    expected = {
        "token-mean": (loss * m).sum() / m.sum(),
        # the seq-mean modes average over the sequences with a valid token (verl's agg_loss)
        "seq-mean-token-sum": sum((loss[i] * m[i]).sum() for i in range(4)) / 3,
        "seq-mean-token-mean": sum((loss[i] * m[i]).sum() / max(m[i].sum(), 1) for i in range(4)) / 3,
    }
    for mode, value in expected.items():
        torch.testing.assert_close(aggregate_loss(loss, mask, mode), value)
        nan_in_padding = torch.where(mask, loss, float("nan"))  # masked positions never contribute
        torch.testing.assert_close(aggregate_loss(nan_in_padding, mask, mode), value)
        assert float(aggregate_loss(loss, torch.zeros_like(mask), mode)) == 0.0  # empty batch: 0, not nan
    torch.testing.assert_close(entropy_bonus(loss, mask, 0.01, "token-mean"), -0.01 * expected["token-mean"])
    with pytest.raises(ValueError, match="loss_agg_mode"):
        aggregate_loss(loss, mask, "seq-sum")
