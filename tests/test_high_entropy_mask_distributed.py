"""high_entropy_mask(process_group=...) over torch.distributed (gloo, 2 and 3 CPU processes):
each rank holds a slice of uneven size and must get exactly its part of the mask that one
process computes on the concatenated tokens — with ties across the rank boundaries, NaN
entropies, a rank without valid tokens, and a rank with no tokens at all; plus a float64-free
oracle (a stable sort of the concatenation) so the single-process op is not the only judge."""

import pytest
import torch
import torch.distributed as dist

import entropy_kernels as ek
from entropy_kernels.ops import distributed_select

from ranks import run_ranks


def _batch():
    torch.manual_seed(0)  # the same full batch on every rank
    n = 301
    ent = (torch.rand(n, dtype=torch.float64) * 3).float()
    ent[torch.rand(n) < 0.3] = 1.25  # many exact ties, spread over every rank
    ent[5], ent[200] = float("nan"), float("nan")
    mask = torch.rand(n) < 0.85
    return ent, mask


def _oracle(ent, mask, top_fraction):
    """k = ceil(q·n) by exact integer arithmetic where q·n is not within 1e-9 of an integer;
    highest entropies, ties to the lower index, NaN lowest: a stable sort."""
    n = int(mask.sum())
    k = 0 if n == 0 else max(1, -int(-(top_fraction * n - 1e-9) // 1))
    key = torch.where(torch.isnan(ent), torch.tensor(float("-inf")), ent.double())
    order = [i for i in sorted(range(len(ent)), key=lambda i: (-key[i].item(), i)) if mask[i]]
    want = torch.zeros(len(ent), dtype=torch.bool)
    want[order[:k]] = True
    return want


def _check(rank, group, bounds):
    ent, mask = _batch()
    world = len(bounds) - 1
    lo, hi = bounds[rank], bounds[rank + 1]
    local_mask = mask[lo:hi].clone()
    if rank == world - 1:
        local_mask[:] = False  # a rank without a valid token
    objects = [None] * world
    dist.all_gather_object(objects, local_mask, group=group)
    full_mask = torch.cat(objects)
    for q in (0.01, 0.2, 0.37, 0.5, 1.0):
        got = ek.high_entropy_mask(ent[lo:hi], local_mask, q, process_group=group)
        want = ek.high_entropy_mask(ent, full_mask, q)
        assert got.shape == (hi - lo,) and got.dtype == torch.bool
        assert torch.equal(got, want[lo:hi]), f"rank {rank} of {world}, bounds {bounds}, q {q}"
        assert torch.equal(want, _oracle(ent, full_mask, q)), f"single process vs oracle, q {q}"
    # 2-D slices: the flattened order of each rank's [B, T] is its part of the concatenation
    got = ek.high_entropy_mask(ent[lo:hi].reshape(1, -1), local_mask.reshape(1, -1), 0.3, process_group=group)
    assert torch.equal(got.reshape(-1), ek.high_entropy_mask(ent, full_mask, 0.3)[lo:hi])


def _check_trl_method(rank, bounds):
    """The TRL patch's GRPOTrainer.get_high_entropy_mask on 3 processes, both rules: one global
    threshold, equal to one process on the concatenation (TRL's torch.quantile rule; the top-k)."""
    from entropy_kernels.training.trl_patch import get_high_entropy_mask

    class Trainer:
        class accelerator:  # noqa: N801 - what the method reads of a TRL trainer
            num_processes = 3

    ent, mask = _batch()
    ent = torch.nan_to_num(ent, nan=0.5)  # torch.quantile returns NaN for NaN input: TRL keeps nothing
    lo, hi = bounds[rank], bounds[rank + 1]
    got = get_high_entropy_mask(Trainer(), ent[lo:hi].reshape(1, -1), mask[lo:hi].reshape(1, -1), threshold=0.8)
    cut = torch.quantile(ent[mask].float(), 0.8)
    want = (ent * mask.float() >= cut) & mask
    assert torch.equal(got.reshape(-1), want[lo:hi]), f"rank {rank}, TRL's rule"
    Trainer._ek_trl_mask_rule = "top_k"
    got = get_high_entropy_mask(Trainer(), ent[lo:hi].reshape(1, -1), mask[lo:hi].reshape(1, -1), threshold=0.8)
    assert torch.equal(got.reshape(-1), _oracle(ent, mask, 1 - 0.8)[lo:hi]), f"rank {rank}, top-k rule"


def _worker(rank, world, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for bounds in ((0, 97, 97, 301), (0, 1, 250, 301), (0, 120, 200, 301)):  # an empty rank, a tiny one
            _check(rank, dist.group.WORLD, bounds)
        _check_trl_method(rank, (0, 120, 200, 301))
        pair = dist.new_group([0, 1])  # every rank creates it; ranks 0 and 1 use it
        if rank < 2:
            _check(rank, pair, (0, 140, 301))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_global_mask_equals_one_process_on_the_concatenation(tmp_path):
    """3 processes (uneven slices, an empty rank, ties and NaN across boundaries) and a 2-rank group."""
    run_ranks(_worker, 3, str(tmp_path / "init"))


def test_one_process_group_is_the_local_op(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        ent, mask = _batch()
        torch.testing.assert_close(ek.high_entropy_mask(ent, mask, 0.2, process_group=dist.group.WORLD),
                                   _oracle(ent, mask, 0.2), rtol=0, atol=0)
        key = torch.tensor([5, 0, 9, 5, 7, 5])
        for k, want in ((0, [0, 0, 0, 0, 0, 0]), (2, [0, 0, 1, 0, 1, 0]), (3, [1, 0, 1, 0, 1, 0]),
                        (4, [1, 0, 1, 1, 1, 0]), (5, [1, 0, 1, 1, 1, 1]), (99, [1, 0, 1, 1, 1, 1])):
            got = distributed_select.global_select_top(key, torch.tensor(k), dist.group.WORLD)
            assert got.tolist() == [bool(x) for x in want], k
    finally:
        dist.destroy_process_group()


def test_process_group_without_distributed_is_a_value_error():
    ent, mask = _batch()
    with pytest.raises(ValueError, match="process_group"):
        ek.high_entropy_mask(ent, mask, 0.2, process_group=object())
