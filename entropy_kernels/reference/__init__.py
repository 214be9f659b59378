"""Pure-torch implementations of every op: the CPU path, the benchmark baseline, and readable
documentation of the math. They favour clarity over memory (they build full fp32 tensors)."""

from .entropy import entropy_backward_reference, entropy_forward_reference

__all__ = ["entropy_forward_reference", "entropy_backward_reference"]
