"""Vocabulary-parallel loss, log-probs and entropy over torch.distributed (gloo, CPU
processes): every rank holds a shard of the LM head (uneven sizes) and must get the
single-process loss and gradients (its dW shard, the full dh)."""

import os

import pytest
import torch
import torch.distributed as dist

import entropy_kernels as ek

from ranks import run_ranks


def _shards(vocab, world):
    base, extra = divmod(vocab, world)
    sizes = [base + (1 if r < extra else 0) for r in range(world)]
    offsets = [sum(sizes[:r]) for r in range(world)]
    return sizes, offsets


def _close(a, b, name, tol=2e-5):
    err = ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()
    assert err <= tol, f"{name}: relative error {err:.2e}"


def _check_collectives(h, w_shard, y):
    """Per step: all_gather of P shard sizes, all-reduce MAX [N], all-reduce SUM [N, 4] in the
    forward; one all-reduce SUM of dh [N, D] in the backward. Nothing proportional to V."""
    calls = []
    originals = {name: getattr(dist, name) for name in ("all_reduce", "all_gather")}

    def counting(name):
        def wrapped(*args, **kwargs):
            t = args[0] if name == "all_reduce" else args[1]
            calls.append((name, t.numel() * t.element_size()))
            return originals[name](*args, **kwargs)
        return wrapped

    try:
        for name in originals:
            setattr(dist, name, counting(name))
        hp, wp = h.clone().requires_grad_(), w_shard.clone().requires_grad_()
        loss = ek.linear_cross_entropy(hp, wp, y, process_group=dist.group.WORLD)
        forward = list(calls)
        loss.backward()
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    n, d = y.numel(), h.shape[-1]
    assert forward == [("all_gather", 8), ("all_reduce", 4 * n), ("all_reduce", 16 * n)], forward
    assert calls[len(forward):] == [("all_reduce", 4 * n * d)], calls


def _worker(rank, world, init_file, device):
    dist.init_process_group("gloo" if device == "cpu" else "nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    if device == "cuda":
        torch.cuda.set_device(rank)
    try:
        dev = torch.device(device, rank) if device == "cuda" else torch.device("cpu")
        torch.manual_seed(0)  # identical full inputs on every rank
        vocab, d = 37, 8
        h = torch.randn(2, 9, d, dtype=torch.float32)
        w = torch.randn(vocab, d) / d**0.5 * 3
        b = torch.randn(vocab) * 0.5
        y = torch.randint(0, vocab, (2, 9))
        y[0, :2] = -100
        sizes, offsets = _shards(vocab, world)
        sl = slice(offsets[rank], offsets[rank] + sizes[rank])
        h, w, b, y = h.to(dev), w.to(dev), b.to(dev), y.to(dev)

        cases = [dict(reduction=r) for r in ("mean", "sum", "none")]
        cases += [dict(label_smoothing=0.1, z_loss=1e-3, softcap=2.0, shift=True, return_lse=True)]
        for options in cases:
            hs, ws, bs = (t.clone().requires_grad_() for t in (h, w, b))
            ref = ek.linear_cross_entropy(hs, ws, y, bias=bs, impl="fused", **options)
            hp, wp, bp = h.clone().requires_grad_(), w[sl].clone().requires_grad_(), b[sl].clone().requires_grad_()
            out = ek.linear_cross_entropy(hp, wp, y, bias=bp, process_group=dist.group.WORLD, **options)
            if options.get("return_lse"):
                (ref, ref_lse), (out, out_lse) = ref, out
                _close(out_lse, ref_lse, "lse")
            _close(out, ref, f"loss {options}")
            g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(dev)
            ref.backward(g)
            out.backward(g)
            _close(hp.grad, hs.grad, f"dh {options}")
            _close(wp.grad, ws.grad[sl], f"dW shard {options}")
            _close(bp.grad, bs.grad[sl], f"db shard {options}")

        _check_collectives(h, w[sl], y)

        hs, ws = h.clone().requires_grad_(), w.clone().requires_grad_()
        lp_ref, ent_ref = ek.linear_logprob_entropy(hs, ws, y, temperature=0.7, impl="fused")
        hp, wp = h.clone().requires_grad_(), w[sl].clone().requires_grad_()
        lp, ent = ek.linear_logprob_entropy(hp, wp, y, temperature=0.7, process_group=dist.group.WORLD)
        _close(lp, lp_ref, "logprobs")
        _close(ent, ent_ref, "entropy")
        g1 = torch.randn(lp.shape, generator=torch.Generator().manual_seed(2)).to(dev)
        g2 = torch.randn(lp.shape, generator=torch.Generator().manual_seed(3)).to(dev)
        torch.autograd.backward([lp_ref, ent_ref], [g1, g2])
        torch.autograd.backward([lp, ent], [g1, g2])
        _close(hp.grad, hs.grad, "logprob/entropy dh")
        _close(wp.grad, ws.grad[sl], "logprob/entropy dW shard")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_vocab_parallel_matches_single_process_gloo(world, tmp_path):
    run_ranks(_worker, world, str(tmp_path / "init"), "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL test needs >= 2 GPUs")
def test_vocab_parallel_matches_single_process_nccl(tmp_path):
    run_ranks(_worker, 2, str(tmp_path / "init"), "cuda")


def test_vocab_parallel_rejects_other_impls():
    with pytest.raises(ValueError, match="process_group"):
        ek.linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2]),
                                impl="chunked", process_group=object())
    with pytest.raises(ValueError, match="process_group"):
        ek.linear_logprob_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2]),
                                  impl="stored", process_group=object())


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TRITON_INTERPRET", "1")
