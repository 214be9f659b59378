"""Pure-torch implementations of every op: the CPU path, the benchmark baseline, and readable
documentation of the math. They favour clarity over memory (they build full fp32 tensors)."""

from .cross_entropy import linear_cross_entropy_reference
from .entropy import entropy_backward_reference, entropy_forward_reference
from .linear_softmax import linear_softmax_backward_reference, linear_softmax_stats_reference

__all__ = [
    "entropy_forward_reference",
    "entropy_backward_reference",
    "linear_cross_entropy_reference",
    "linear_softmax_stats_reference",
    "linear_softmax_backward_reference",
]
