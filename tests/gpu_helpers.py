"""Helpers shared by the GPU test modules."""

import torch


def peak_extra_bytes(fn) -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before
