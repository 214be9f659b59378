"""What the forkserver of ``ranks.run_ranks`` imports once before forking the ranks."""

import torch

import entropy_kernels  # noqa: F401
import interpreter_speedups

interpreter_speedups.install()
# one intra-op thread per rank: the ranks of a test (and the other test workers) already share
# the cores, and more threads than cores make every rank wait on the others
torch.set_num_threads(1)
