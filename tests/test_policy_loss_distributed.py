"""Global Clip-Cov / KL-Cov selection over torch.distributed (gloo, 2 CPU processes): each rank
holds half of the batch and must select exactly the tokens that one process selects on the
concatenated batch; the per-rank loss is the loss of its slice with that selection; and with
verl's global_batch_info (dp_size, global counts) the ranks' losses summed and their gradients
averaged, as data parallelism does, equal one process's loss and gradient on the whole batch."""

import contextlib

import pytest
import torch
import torch.distributed as dist

import entropy_kernels as ek
from entropy_kernels import _backend
from entropy_kernels.reference.policy_loss import LOSS_AGG_MODES
from entropy_kernels.training import clip_cov_policy_loss, kl_cov_policy_loss

from ranks import run_ranks


def _worker(rank, world, init_file, interpreted):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ctx = _backend.triton_on_cpu() if interpreted else contextlib.nullcontext()
        with ctx:
            _check(rank, world)
    finally:
        dist.destroy_process_group()


def _check(rank, world):
    torch.manual_seed(0)  # identical full batch on every rank
    b, t = 4 * world, 37
    old = -torch.rand(b, t) * 4
    lp = old + 0.3 * torch.randn(b, t)
    adv = (torch.randn(b, 1) + 0.3 * torch.randn(b, t)) * 4
    mask = torch.rand(b, t) < 0.8
    mask[0] = False  # a sequence without valid tokens, on rank 0 only
    # ties in covariance across the rank boundary: duplicate rows
    lp[b // 2], adv[b // 2], mask[b // 2] = lp[b // 2 - 1], adv[b // 2 - 1], mask[b // 2 - 1]
    rows = slice(rank * (b // world), (rank + 1) * (b // world))
    group = dist.group.WORLD
    seed, off = torch.tensor([7]), torch.tensor([100])
    for ratio in (0.01, 0.1, 0.5):
        want = ek.kl_cov_select(lp, adv, mask, kl_cov_ratio=ratio)
        got = ek.kl_cov_select(lp[rows], adv[rows], mask[rows], kl_cov_ratio=ratio, process_group=group)
        assert torch.equal(got, want[rows]), f"rank {rank}: KL-Cov ratio {ratio}"
        kw = dict(clip_cov_ratio=ratio, clip_cov_lb=0.2, clip_cov_ub=6.0, seed=seed, offset=off)
        want = ek.clip_cov_select(old, lp, adv, mask, **kw)
        got = ek.clip_cov_select(old[rows], lp[rows], adv[rows], mask[rows], process_group=group, **kw)
        assert torch.equal(got, want[rows]), f"rank {rank}: Clip-Cov ratio {ratio}"
    for fn, kw, select in (
        (kl_cov_policy_loss, dict(kl_cov_ratio=0.1, ppo_kl_coef=1.0), lambda: ek.kl_cov_select(lp, adv, mask, kl_cov_ratio=0.1)),
        (clip_cov_policy_loss, dict(clip_cov_ratio=0.1, clip_cov_lb=0.2, seed=seed, offset=off),
         lambda: ek.clip_cov_select(old, lp, adv, mask, clip_cov_ratio=0.1, clip_cov_lb=0.2, seed=seed, offset=off)),
    ):
        x = lp[rows].clone().requires_grad_()
        loss, _ = fn(old[rows], x, adv[rows], mask[rows], "seq-mean-token-mean", process_group=group, **kw)
        loss.backward()
        y = lp[rows].clone().requires_grad_()
        extra = {k: v for k, v in kw.items() if k in ("ppo_kl_coef",)}
        ref, _ = fn(old[rows], y, adv[rows], mask[rows], "seq-mean-token-mean", selection=select()[rows], **extra)
        ref.backward()
        assert torch.allclose(loss, ref, rtol=1e-6, atol=1e-7) and torch.allclose(x.grad, y.grad, rtol=1e-6, atol=1e-9)
    _check_data_parallel_invariance(rank, world, old, lp, adv, mask, rows, group, seed, off)


def _check_data_parallel_invariance(rank, world, old, lp, adv, mask, rows, group, seed, off):
    weights = torch.rand(lp.shape) * 2  # the same on every rank (same seed)
    info = dict(dp_size=world, batch_num_tokens=int(mask.sum()), global_batch_size=int((mask.sum(-1) > 0).sum()))
    selections = {
        kl_cov_policy_loss: ek.kl_cov_select(lp, adv, mask, kl_cov_ratio=0.1),
        clip_cov_policy_loss: ek.clip_cov_select(old, lp, adv, mask, clip_cov_ratio=0.1, clip_cov_lb=0.2, seed=seed, offset=off),
    }
    options = {kl_cov_policy_loss: dict(kl_cov_ratio=0.1, ppo_kl_coef=1.0),
               clip_cov_policy_loss: dict(clip_cov_ratio=0.1, clip_cov_lb=0.2, seed=seed, offset=off)}
    for mode in LOSS_AGG_MODES:
        for fn, selected in selections.items():
            x = lp[rows].clone().requires_grad_()
            loss, _ = fn(old[rows], x, adv[rows], mask[rows], mode, process_group=group, rollout_is_weights=weights[rows],
                         **options[fn], **info)
            loss.backward()
            total = loss.detach().clone()
            dist.all_reduce(total)  # the ranks' losses averaged: the loss of the global batch
            y = lp.clone().requires_grad_()
            kw = {k: v for k, v in options[fn].items() if k == "ppo_kl_coef"}
            ref, _ = fn(old, y, adv, mask, mode, selection=selected, rollout_is_weights=weights, **kw)
            ref.backward()
            assert torch.allclose(total / world, ref, rtol=1e-5, atol=1e-6), f"rank {rank}: {fn.__name__} {mode}"
            # data parallelism averages the ranks' parameter gradients: each token counts with
            # its rank's gradient / world, which must be the whole-batch gradient
            assert torch.allclose(x.grad / world, y.grad[rows], rtol=1e-5, atol=1e-8), f"rank {rank}: {fn.__name__} {mode}"


@pytest.mark.slow
@pytest.mark.parametrize("interpreted", [False, pytest.param(True, marks=pytest.mark.interpreter)], ids=["reference", "interpreter"])
def test_global_selection_matches_single_process_gloo(interpreted, tmp_path):
    run_ranks(_worker, 2, str(tmp_path / "init"), interpreted)

