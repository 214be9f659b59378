"""What the forkserver of ``ranks.run_ranks`` imports once before forking the ranks."""

import torch  # noqa: F401

import entropy_kernels  # noqa: F401
import interpreter_speedups

interpreter_speedups.install()
