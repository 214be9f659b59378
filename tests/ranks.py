"""Run a test's worker on several gloo ranks, each forked from one server process that has
already imported torch and entropy_kernels.

``torch.multiprocessing.spawn`` starts every rank as a fresh interpreter that imports torch and
the package again (~6 s of CPU each on the 2-core CI machine, most of the distributed tests'
time). The ``forkserver`` start method imports them once per test process (the modules named
in ``rank_preload``) and forks each rank from there; the server has started no threads, so the
fork is safe.

    >>> run_ranks(_worker, 2, str(tmp_path / "init"))  # doctest: +SKIP  (calls _worker(rank, 2, path))
"""

import multiprocessing

import torch.multiprocessing as mp


def run_ranks(worker, world, *args):
    """``worker(rank, world, *args)`` on ranks 0..world-1; raises if any rank fails."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(["rank_preload"])
    mp.start_processes(worker, args=(world, *args), nprocs=world, join=True, start_method="forkserver")
