"""LM-head weights given as DTensors (gloo, CPU processes): a replicated weight and a weight
sharded on the vocabulary (uneven shards) must give every rank the single-process loss,
log-probs, entropy and gradients -- compared with float64 torch on the full weight -- with the
weight's gradient coming back as a DTensor placed like the weight. Also FSDP2's ``fully_shard``
of a tiny model whose LM head feeds ``linear_cross_entropy``."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import entropy_kernels as ek

from ranks import run_ranks

pytest.importorskip("torch.distributed.tensor")


def _close(a, b, name, tol=2e-5):
    err = ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()
    assert err <= tol, f"{name}: relative error {err:.2e}"


def _reference(h, w, b, y, ignore_index=-100):
    """float64 loss, dh, dW, db of mean cross-entropy on the full weight."""
    h64, w64, b64 = (t.detach().double().requires_grad_() for t in (h, w, b))
    loss = F.cross_entropy(h64 @ w64.T + b64, y, ignore_index=ignore_index)
    loss.backward()
    return loss.detach(), h64.grad, w64.grad, b64.grad


def _check_placements(mesh, rank, world):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    torch.manual_seed(0)  # identical full inputs on every rank
    vocab, d, n = 37, 8, 12
    h = torch.randn(n, d)
    w = torch.randn(vocab, d) / d**0.5 * 3
    b = torch.randn(vocab) * 0.5
    y = torch.randint(0, vocab, (n,))
    y[:2] = -100
    loss_ref, dh_ref, dw_ref, db_ref = _reference(h, w, b, y)
    rows = torch.arange(vocab).chunk(world)[rank]  # the rows Shard(0) puts on this rank

    for placement in (Replicate(), Shard(0)):
        wd = distribute_tensor(w.clone(), mesh, [placement]).requires_grad_()
        bd = distribute_tensor(b.clone(), mesh, [placement]).requires_grad_()
        hp = h.clone().requires_grad_()
        # a vocabulary shard runs vocabulary-parallel only when the caller confirms the group
        group = mesh.get_group() if isinstance(placement, Shard) else None
        loss = ek.linear_cross_entropy(hp, wd, y, bias=bd, process_group=group)
        _close(loss, loss_ref, f"loss {placement}")
        loss.backward()
        _close(hp.grad, dh_ref, f"dh {placement}")
        assert type(wd.grad).__name__ == "DTensor" and wd.grad.placements == (placement,), wd.grad
        local_rows = slice(None) if isinstance(placement, Replicate) else slice(rows[0].item(), rows[-1].item() + 1)
        _close(wd.grad.to_local(), dw_ref[local_rows], f"dW {placement}")
        _close(bd.grad.to_local(), db_ref[local_rows], f"db {placement}")

        # log-probs and entropy at a temperature, against float64 log_softmax
        wd2 = distribute_tensor(w.clone(), mesh, [placement]).requires_grad_()
        hp2 = h.clone().requires_grad_()
        yl = y.clamp_min(0)
        lp, ent = ek.linear_logprob_entropy(hp2, wd2, yl, temperature=0.7, process_group=group)
        h64, w64 = h.double().requires_grad_(), w.double().requires_grad_()
        logp = torch.log_softmax(h64 @ w64.T / 0.7, -1)
        lp_ref, ent_ref = logp.gather(-1, yl[:, None])[:, 0], -(logp.exp() * logp).sum(-1)
        _close(lp, lp_ref, f"logprobs {placement}")
        _close(ent, ent_ref, f"entropy {placement}", tol=1e-4)
        g1 = torch.randn(n, generator=torch.Generator().manual_seed(1))
        g2 = torch.randn(n, generator=torch.Generator().manual_seed(2))
        torch.autograd.backward([lp, ent], [g1, g2])
        torch.autograd.backward([lp_ref, ent_ref], [g1.double(), g2.double()])
        _close(hp2.grad, h64.grad, f"logprob/entropy dh {placement}", tol=1e-4)
        _close(wd2.grad.to_local(), w64.grad[local_rows], f"logprob/entropy dW {placement}", tol=1e-4)

    # placements without a meaning for an LM head are refused, naming the argument
    bad = distribute_tensor(w.clone(), mesh, [Shard(1)])
    with pytest.raises(ValueError, match="weight"):
        ek.linear_cross_entropy(h, bad, y)
    # a row-sharded weight without the confirming group: it may be an FSDP2 shard (different
    # tokens per rank), which must never be run vocabulary-parallel silently
    sharded = distribute_tensor(w.clone(), mesh, [Shard(0)])
    with pytest.raises(ValueError, match="FSDP2"):
        ek.linear_cross_entropy(h, sharded, y)
    with pytest.raises(ValueError, match="FSDP2"):
        ek.linear_logprob_entropy(h, sharded, y.clamp_min(0))
    with pytest.raises(ValueError, match="process_group"):
        ek.linear_cross_entropy(h, distribute_tensor(w.clone(), mesh, [Replicate()]), y, process_group=mesh.get_group())
    # torch.chunk leaves a rank without rows: every rank raises (none enters a collective)
    with pytest.raises(ValueError, match="leave a rank with none"):
        ek.linear_cross_entropy(h, distribute_tensor(w[:1].clone(), mesh, [Shard(0)]), y.clamp(0, 0),
                                process_group=mesh.get_group())


def _check_fully_shard(mesh):
    """FSDP2: a tiny model (embedding → LM head) sharded with fully_shard; the loss through
    linear_cross_entropy and the gradients equal an unsharded copy's (torch autograd, float64
    reference on the full weights)."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    vocab, d, n = 29, 8, 10
    emb = torch.nn.Embedding(vocab, d)
    head = torch.nn.Linear(d, vocab, bias=False)
    x = torch.randint(0, vocab, (n,))
    y = torch.randint(0, vocab, (n,))
    h64 = emb.weight.detach().double()[x].requires_grad_()
    w64 = head.weight.detach().double().requires_grad_()
    F.cross_entropy(h64 @ w64.T, y).backward()
    emb_grad_ref = torch.zeros(vocab, d, dtype=torch.float64).index_add_(0, x, h64.grad)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = emb, head

        def forward(self, x, y):  # the head's weight is read, never called: the root unshards it
            return ek.linear_cross_entropy(self.emb(x), self.head.weight, y)

    model = Model()
    fully_shard(model.emb, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the root owns (and all-gathers around its forward) the head

    loss = model(x, y)
    loss.backward()
    for name, param, want in (("head", model.head.weight, w64.grad), ("emb", model.emb.weight, emb_grad_ref)):
        got = param.grad.full_tensor()
        _close(got, want, f"fully_shard {name} grad")


def _worker(rank, world, init_file):
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        _check_placements(mesh, rank, world)
        _check_fully_shard(mesh)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_dtensor_lm_head_matches_single_process_gloo(tmp_path):
    run_ranks(_worker, 2, str(tmp_path / "init"))


def test_plain_tensors_pass_through():
    """Plain tensors (the usual case) come back unchanged: no group, no offset."""
    from entropy_kernels.ops.dtensor_weights import unwrap_lm_head

    w = torch.randn(5, 4)
    assert unwrap_lm_head(w, None, None, None) == (w, None, None, None)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.main([__file__, "-q"])
