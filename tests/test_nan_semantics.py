"""NaN / ±inf semantics, the tables of docs/nan-semantics.md row by row, on every backend (the
CPU reference, the Triton kernels interpreted on CPU, CUDA): each result is compared with values
computed here in float64 from the definitions (torch's softmax, verl's formulas with its
``masked_sum`` rule), NaN positions and infinities included. Tiny shapes: the interpreter runs
every kernel."""

import pytest
import torch

import entropy_kernels as ek
from entropy_kernels.training import LOSS_AGG_MODES, aggregate_loss, clip_cov_policy_loss, kl_cov_policy_loss

NAN, INF = float("nan"), float("inf")


def run(backend, fn, *args, **kwargs):
    with backend.context():
        return fn(*args, **kwargs)


def same(got, want, rtol=1e-4, atol=1e-5):
    """Equal up to fp32 rounding, with NaN where ``want`` is NaN and the same infinities."""
    torch.testing.assert_close(got.detach().double().cpu(), want.detach().double().cpu(), rtol=rtol, atol=atol,
                               equal_nan=True)


def softmax_oracle(z):
    """(log-probs, entropy, lse) of float64 logits rows by torch's softmax: NaN for a row with a
    NaN or +inf entry; entropy NaN and lse -inf for a row that is entirely -inf; the table's lse
    is NaN (not torch.logsumexp's +inf) for a row with a +inf entry."""
    logp = torch.log_softmax(z, -1)
    ent = -torch.where(torch.isneginf(z), 0.0, logp.exp() * logp).sum(-1)
    all_masked = torch.isneginf(z).all(-1)
    ent = torch.where(all_masked, NAN, ent)
    lse = torch.where(torch.isposinf(z).any(-1), NAN, torch.logsumexp(z, -1))
    return logp, ent, lse


# ------------------------------------------------------------------------ entropy ----------

def entropy_rows():
    x = torch.randn(7, 12, dtype=torch.float64)
    x[1, [2, 5]] = -INF              # masked entries
    x[2] = -INF                      # fully masked row
    x[3, 4] = NAN
    x[4, 7] = INF
    x[5, 0], x[5, 3] = NAN, -INF     # NaN next to a masked entry
    x[6, 1], x[6, 9] = INF, -INF
    return x


def test_entropy_rows(backend):
    x = entropy_rows()
    logits = x.float().to(backend.device).requires_grad_()
    g = torch.randn(7, dtype=torch.float64)
    with backend.context():  # the backward too: it launches the backward kernel
        h, lse = ek.entropy(logits, return_lse=True)
        (grad,) = torch.autograd.grad(h, logits, g.float().to(backend.device))
    _, ent_ref, lse_ref = softmax_oracle(x)
    same(h, ent_ref)
    same(lse, lse_ref)
    # gradient: float64 autograd on the rows with a softmax; NaN on the others except at -inf
    # entries (0 there), zero on the fully masked row
    for row in (0, 1):  # autograd over the unmasked entries only (masked ones: 0)
        kept = ~torch.isneginf(x[row])
        z = x[row, kept].clone().requires_grad_()
        (ref,) = torch.autograd.grad(softmax_oracle(z[None])[1][0] * g[row], z)
        same(grad[row].cpu()[kept], ref)
        assert (grad[row].cpu()[~kept] == 0).all()
    assert torch.equal(grad[2].cpu(), torch.zeros(12))
    for row in (3, 4, 5, 6):
        masked = torch.isneginf(x[row])
        assert torch.isnan(grad[row].cpu()[~masked]).all() and (grad[row].cpu()[masked] == 0).all(), row


def test_entropy_nan_temperature_row(backend):
    x = torch.randn(3, 10)
    temperature = torch.tensor([1.0, NAN, 0.5])
    h, lse = run(backend, ek.entropy, x.to(backend.device), temperature=temperature.to(backend.device), return_lse=True)
    _, ent_ref, lse_ref = softmax_oracle(x.double() / temperature.double()[:, None])
    same(h, ent_ref)
    same(lse, lse_ref)
    assert torch.isnan(h[1]) and torch.isnan(lse[1])


# ------------------------------------------------------------------- linear heads ----------

V, D = 16, 8


def linear_oracle(h, w, b, y, ignore_index=-100):
    """float64 (log-prob, entropy, cross-entropy, lse) per token from full logits."""
    z = h.double() @ w.double().T + (b.double() if b is not None else 0.0)
    logp, ent, lse = softmax_oracle(z)
    ignored = y == ignore_index
    lp = logp.gather(-1, torch.where(ignored, 0, y)[:, None])[:, 0]
    zero = torch.zeros_like(lp)
    return torch.where(ignored, zero, lp), torch.where(ignored, zero, ent), torch.where(ignored, zero, -lp), lse


def linear_cases():
    """(name, hidden, weight, bias, labels): every token class of the table."""
    h = torch.randn(5, D)
    w = torch.randn(V, D) / D**0.5
    b = torch.randn(V)
    y = torch.randint(0, V, (5,))
    cases = []
    bm = b.clone()
    bm[[1, 4, 9]] = -INF                       # masked vocabulary
    y0 = y.clone()
    y0[y0 == 1] = 0
    y0[y0 == 4] = 0
    y0[y0 == 9] = 0
    y0[2] = 4                                   # token 2: target on a masked entry
    hn = h.clone()
    hn[1, 3] = NAN                              # token 1: NaN hidden state
    hn[3, 0] = NAN
    y0[3] = -100                                # token 3: ignored, with a NaN hidden state
    cases.append(("masked-vocab-nan-hidden", hn, w, bm, y0))
    wn = w.clone()
    wn[5, 2] = NAN
    cases.append(("nan-weight", h, wn, b, y))
    bi = b.clone()
    bi[7] = INF
    cases.append(("+inf-bias", h, w, bi, y))
    hp = h.clone()
    hp[:, 0] = hp[:, 0].abs() + 0.1
    hp[[1, 3], 0] *= -1                         # tokens 1, 3: that logit is -inf (masked)
    wi = w.clone()
    wi[6, 0] = INF                              # +inf logit where hidden[:, 0] > 0
    cases.append(("+inf-weight", hp, wi, b, y))
    cases.append(("all-masked", h, w, torch.full((V,), -INF), y))
    return cases


LINEAR_CASES = [c[0] for c in linear_cases()]


def _linear_impls(backend):
    return ["reference"] if backend.name == "cpu-reference" else ["fused", "stored"]


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_linear_logprob_entropy(backend, case):
    _, h, w, b, y = next(c for c in linear_cases() if c[0] == case)
    lp_ref, ent_ref, _, _ = linear_oracle(h, w, b, y)
    dev = backend.device
    for impl in _linear_impls(backend):
        lp, ent = run(backend, ek.linear_logprob_entropy, h.to(dev), w.to(dev), y.to(dev), bias=b.to(dev), impl=impl)
        same(lp, lp_ref)
        same(ent, ent_ref)


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_linear_cross_entropy(backend, case):
    _, h, w, b, y = next(c for c in linear_cases() if c[0] == case)
    _, _, ce_ref, lse_ref = linear_oracle(h, w, b, y)
    counted = y != -100
    dev = backend.device
    args = (h.to(dev), w.to(dev), y.to(dev))
    reference = backend.name == "cpu-reference"
    ce, lse = run(backend, ek.linear_cross_entropy, *args, bias=b.to(dev), reduction="none", return_lse=True,
                  impl="reference" if reference else "fused")
    same(ce, ce_ref)
    same(lse[counted], lse_ref[counted])
    hg = args[0].clone().requires_grad_()  # a backward to come: what the chunked impl needs
    impl = "reference" if reference else "chunked"
    mean = run(backend, ek.linear_cross_entropy, hg, *args[1:], bias=b.to(dev), reduction="mean", impl=impl)
    same(mean, ce_ref.sum() / counted.sum())


def test_linear_gradients_stay_finite_with_masked_vocabulary(backend):
    """-inf bias entries: zero gradient there, the float64 autograd gradient elsewhere."""
    h, w, b = torch.randn(4, D), torch.randn(V, D) / D**0.5, torch.randn(V)
    b[[0, 5, 11]] = -INF
    y = torch.tensor([2, 3, 7, -100])
    dev = backend.device
    impls = ["reference"] if backend.name == "cpu-reference" else ["fused", "chunked"]
    hd, wd = h.double().requires_grad_(), w.double().requires_grad_()
    _, _, ce_ref, _ = linear_oracle(hd, wd, b, y)
    ref_h, ref_w = torch.autograd.grad(ce_ref.sum(), (hd, wd))
    for impl in impls:
        hh, ww = h.to(dev).requires_grad_(), w.to(dev).requires_grad_()
        with backend.context():
            loss = ek.linear_cross_entropy(hh, ww, y.to(dev), bias=b.to(dev), reduction="sum", impl=impl)
            gh, gw = torch.autograd.grad(loss, (hh, ww))
        same(gh, ref_h)
        same(gw, ref_w)
        assert (gw.cpu()[[0, 5, 11]] == 0).all()


# ------------------------------------------------------------------------- top-H -----------

def top_h_oracle(z, alpha, mode, top_n=100):
    """float64 kept sets of the two rules, written from their definitions (NaN as -inf, ties by
    lower index, a token on the boundary kept)."""
    z = torch.where(torch.isnan(z), -INF, z.double())
    keep = torch.zeros(z.shape, dtype=torch.bool)
    for i in range(z.shape[0]):
        order = sorted(range(z.shape[1]), key=lambda j: (-z[i, j].item(), j))
        zs = z[i, order]
        if torch.isposinf(zs[0]):              # all the probability on the first +inf token
            keep[i, order[0]] = True
            continue
        a = float(alpha[i])
        if mode == "transformers":
            q = torch.softmax(zs[:top_n], -1)
            terms = torch.where(q > 0, -q * q.log(), NAN)
            tau = a * torch.nansum(terms) * (1 + 1e-5)
            n = [j == 0 or bool(c <= tau) for j, c in enumerate(torch.cumsum(terms, 0))]
        else:
            p = torch.softmax(zs, -1)
            plogp = torch.where(p > 0, p * p.log(), 0.0)
            tau = a * -plogp.sum() * (1 + 1e-5)
            s, t = torch.cumsum(p, 0), torch.cumsum(plogp, 0)
            ok = (s.log() - t / s <= tau) & (zs > -INF)
            n = [j == 0 or bool(ok[: j + 1].all()) for j in range(len(order))]
        for j, kept in enumerate(n):
            keep[i, order[j]] = kept
    return keep


def top_h_rows():
    x = torch.randn(7, 24) * 2
    x[0, [3, 11]] = NAN
    x[0, 4] = -INF
    x[1, [5, 17]] = INF
    x[2] = -INF
    x[3] = NAN
    x[3, ::3] = -INF
    alpha = torch.tensor([0.5, 0.5, 0.5, 0.5, NAN, INF, -0.5])  # rows 4-6: per-row alpha classes
    return x, alpha


@pytest.mark.parametrize("mode", ["transformers", "exact"])
def test_top_h(backend, mode):
    x, alpha = top_h_rows()
    dev = backend.device
    kept = run(backend, ek.top_h_mask, x.to(dev), alpha.to(dev), mode=mode).cpu()
    ref = top_h_oracle(x, torch.where(torch.isnan(alpha), -1.0, alpha), mode)
    assert torch.equal(kept, ref), (kept ^ ref).nonzero()
    assert kept[1].nonzero().flatten().tolist() == [5] and kept[2].nonzero().flatten().tolist() == [0]
    assert kept[3].nonzero().flatten().tolist() == [0] and kept[4].sum() == 1
    assert kept[5].all() and kept[6].sum() == 1  # alpha = inf keeps every (finite) token, alpha < 0 one
    seed, offset = torch.tensor([3], device=dev), torch.tensor([0], device=dev)
    # sampling on the rows of non-finite logits (each interpreted row costs ~0.5 s)
    samples = run(backend, ek.top_h_sample, x[:4].to(dev), alpha[:4].to(dev), mode=mode, seed=seed, offset=offset).cpu()
    assert kept[torch.arange(4), samples].all()


# -------------------------------------------------------------- high_entropy_mask ----------

def high_entropy_oracle(ent, mask, q):
    """Top k = max(1, ceil(q·n)) of the valid (mask != 0) tokens, NaN lowest, ties by index."""
    flat, valid = ent.reshape(-1).double(), (mask.reshape(-1) != 0)
    idx = [i for i in range(flat.numel()) if valid[i]]
    k = 0 if not idx else max(1, -int(-(q * len(idx) - 1e-9) // 1))
    ranked = sorted(idx, key=lambda i: (bool(torch.isnan(flat[i])), -float(flat[i]) if not torch.isnan(flat[i]) else 0.0, i))
    out = torch.zeros(flat.numel(), dtype=torch.bool)
    out[ranked[:k]] = True
    return out.reshape(ent.shape)


@pytest.mark.parametrize("top_fraction", [0.2, 0.5, 0.8, 1.0])
def test_high_entropy_mask(backend, top_fraction):
    ent = torch.rand(2, 8) * 3
    mask = torch.ones(2, 8)
    ent[0, 1], ent[0, 2], ent[0, 3], ent[1, 0] = NAN, INF, -INF, NAN
    mask[1, 2:5] = 0
    ent[1, 2], ent[1, 3], ent[1, 4] = NAN, INF, -INF       # at masked tokens: no effect
    mask[1, 6] = NAN                                       # nonzero: valid
    got = run(backend, ek.high_entropy_mask, ent.to(backend.device), mask.to(backend.device), top_fraction).cpu()
    assert torch.equal(got, high_entropy_oracle(ent, mask, top_fraction))


# ------------------------------------------------------------------ policy losses ----------

B, T = 2, 8


def agg_oracle(tok, mask, mode):
    """verl's agg_loss with its masked_sum rule (NaN outside the mask replaced) in every mode."""
    valid = mask > 0
    m = torch.where(valid, mask.double(), 0.0)
    x = torch.where(valid, tok * m, 0.0)
    if mode == "token-mean":
        return x.sum() / m.sum().clamp_min(1)
    if mode == "token-sum":
        return x.sum()
    seq = x.sum(-1)
    if mode == "seq-mean-token-mean":
        seq = seq / m.sum(-1).clamp_min(1)
    loss = seq.sum() / (m.sum(-1) > 0).sum().clamp_min(1)
    return loss / mask.shape[-1] if mode == "seq-mean-token-sum-norm" else loss


def policy_oracle(old, lp, adv, mask, sel, clip, mode, weights=None, kl_coef=0.1):
    """float64 loss of verl's compute_policy_loss_clip_cov / _kl_cov given the selection."""
    d = lp - old
    ratio = torch.exp(d)
    l1 = -adv * ratio
    if clip:
        tok = torch.maximum(l1, -adv * torch.clamp(ratio, 0.8, 1.2)) * (~sel).double()  # verl: loss * corr
    else:
        tok = torch.where(sel, l1 + kl_coef * d.abs(), l1)
    return agg_oracle(tok if weights is None else tok * weights, mask, mode)


def policy_batch():
    old = -torch.rand(B, T, dtype=torch.float64) * 2
    lp = old + 0.3 * torch.randn(B, T, dtype=torch.float64)
    adv = torch.randn(B, T, dtype=torch.float64)
    weights = torch.rand(B, T, dtype=torch.float64) + 0.5
    mask = torch.ones(B, T)
    mask[1, 5:] = 0
    return [old, lp, adv, weights], mask


INPUTS = ["old_log_prob", "log_prob", "advantages", "rollout_is_weights"]
# the infinity tried per input: a token the old policy could not produce, one the new policy
# cannot, an unbounded advantage, an unbounded importance weight
INFINITY = {"old_log_prob": -INF, "log_prob": -INF, "advantages": INF, "rollout_is_weights": INF}


def _loss_fn(clip):
    return clip_cov_policy_loss if clip else kl_cov_policy_loss


@pytest.mark.parametrize("clip", [True, False], ids=["clip_cov", "kl_cov"])
@pytest.mark.parametrize("where", ["valid", "selected"])
@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("name", INPUTS)
def test_policy_loss_given_selection(backend, clip, where, value, name):
    """One non-finite input value at a valid or a selected token, and NaN / ±inf in every input
    at the masked tokens: loss and ppo_kl vs the float64 oracle; ∂loss/∂log_prob vs float64
    autograd of the oracle on the finite batch (masked positions: 0, by definition), NaN at a
    NaN token (the token's term is NaN, so is its gradient: not autograd's 0 where a clamp or a
    selection happens to cut the NaN off)."""
    finite, mask = policy_batch()
    tensors = [t.clone() for t in finite]
    for t, v in zip(tensors, (NAN, INF, -INF, NAN)):
        t[1, 5:] = v                                   # mask == 0 there: must not leak
    sel = torch.zeros(B, T, dtype=torch.bool)
    sel[0, [1, 6]] = True
    pos = {"valid": (0, 3), "selected": (0, 6)}[where]
    tensors[INPUTS.index(name)][pos] = NAN if value == "nan" else INFINITY[name]
    old, lp, adv, weights = tensors
    mode = "token-mean" if name != "advantages" else "seq-mean-token-mean"
    dev = backend.device
    lp_in = lp.float().to(dev).requires_grad_()
    with backend.context():
        loss, metrics = _loss_fn(clip)(old.float().to(dev), lp_in, adv.float().to(dev), mask.to(dev), mode,
                                       selection=sel.to(dev), rollout_is_weights=weights.float().to(dev))
        (grad,) = torch.autograd.grad(loss, lp_in)
    f32 = [t.float().double() for t in tensors]  # the oracle sees the fp32 inputs
    same(loss, policy_oracle(*f32[:3], mask, sel, clip, mode, f32[3]))
    d = f32[1] - f32[0]
    valid = mask > 0
    same(metrics["ppo_kl"], torch.where(valid, -d if clip else d.abs(), 0.0).sum() / valid.sum())
    clean = [torch.where(valid, t.float().double(), 0.0) for t in finite]
    lp_ref = clean[1].clone().requires_grad_()
    (ref,) = torch.autograd.grad(policy_oracle(clean[0], lp_ref, clean[2], mask, sel, clip, mode, clean[3]), lp_ref)
    others = torch.ones(B, T, dtype=torch.bool)
    others[pos] = False
    same(grad.cpu()[others], ref[others])     # the loss is linear in the per-token terms
    assert (grad.cpu()[~valid] == 0).all()
    if value == "nan":
        assert torch.isnan(loss) and torch.isnan(grad[pos])


@pytest.mark.parametrize("clip, mode", [(True, "token-mean"), (False, "seq-mean-token-sum")], ids=["clip_cov", "kl_cov"])
def test_policy_loss_sampled_nan(backend, clip, mode):
    """Through the selection (the one-launch kernel on the kernel path): a NaN log-prob at a valid
    token gives a NaN loss and a NaN gradient at that token only; NaN / inf at masked tokens
    change nothing (loss, gradient and selection equal those of the batch with zeros there)."""
    (old, lp, adv, _), mask = policy_batch()
    dev = backend.device

    def call(o, l, a):
        if clip:  # a wide band: the selection is not empty
            kwargs = dict(clip_cov_ratio=0.3, clip_cov_lb=-10.0, clip_cov_ub=10.0,
                          seed=torch.tensor([7], device=dev), offset=torch.tensor([0], device=dev))
        else:
            kwargs = dict(kl_cov_ratio=0.3)
        x = l.float().to(dev).requires_grad_()
        with backend.context():
            loss, metrics = _loss_fn(clip)(o.float().to(dev), x, a.float().to(dev), mask.to(dev), mode, **kwargs)
            return loss, torch.autograd.grad(loss, x)[0], metrics["n_selected"]

    bad = lp.clone()
    bad[0, 2] = NAN
    loss, grad, _ = call(old, bad, adv)
    assert torch.isnan(loss) and torch.isnan(grad[0, 2])
    others = torch.ones(B, T, dtype=torch.bool)
    others[0, 2] = False
    assert torch.isfinite(grad[others.to(dev)]).all()

    dirty = [t.clone() for t in (old, lp, adv)]
    dirty[0][1, 5], dirty[1][1, 6], dirty[2][1, 7] = NAN, INF, -INF  # all at mask == 0
    clean = [torch.where(mask > 0, t, 0.0) for t in (old, lp, adv)]
    got, want = call(*dirty), call(*clean)
    assert torch.isfinite(got[0])
    same(got[0], want[0], rtol=1e-6, atol=1e-7)
    same(got[1], want[1], rtol=1e-6, atol=1e-7)
    assert got[2] == want[2]


@pytest.mark.parametrize("which", ["kl", "clip"])
def test_selection_with_nan_log_prob(backend, which):
    """NaN log-prob at a valid token: every covariance is NaN -- KL-Cov picks the first k valid
    tokens (NaN ranks lowest, ties by index), Clip-Cov finds no token in the band."""
    (old, lp, adv, _), mask = policy_batch()
    lp[0, 4] = NAN
    dev = backend.device
    if which == "kl":
        sel = run(backend, ek.kl_cov_select, lp.float().to(dev), adv.float().to(dev), mask.to(dev), kl_cov_ratio=0.25).cpu()
        k = int(0.25 * int((mask > 0).sum()))
        want = torch.zeros(B * T, dtype=torch.bool)
        want[torch.nonzero((mask > 0).reshape(-1)).flatten()[:k]] = True
        assert torch.equal(sel.reshape(-1), want)
    else:
        sel = run(backend, ek.clip_cov_select, old.float().to(dev), lp.float().to(dev), adv.float().to(dev), mask.to(dev),
                  clip_cov_ratio=0.5, clip_cov_lb=-INF, clip_cov_ub=INF, generator=None)
        assert not sel.any()


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_aggregate_loss(mode):
    """Plain torch (no kernel path): NaN / inf at mask == 0 never reach the result in any mode;
    NaN at a valid token makes it NaN."""
    loss = torch.randn(3, 5, dtype=torch.float64)
    mask = torch.ones(3, 5)
    mask[1, 3:] = 0
    mask[2] = 0
    loss[1, 3], loss[1, 4], loss[2, 0] = NAN, INF, -INF
    same(aggregate_loss(loss, mask, mode), agg_oracle(torch.where(mask > 0, loss, 0.0), mask, mode))
    loss[0, 1] = NAN
    assert torch.isnan(aggregate_loss(loss, mask, mode))
