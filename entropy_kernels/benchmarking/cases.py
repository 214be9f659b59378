"""What a benchmark is: a :class:`Case` (op, mode, shape, dtype) and the :class:`Provider` s
timed on it (ours, baselines, floors). Each op contributes a ``cases(size, device)`` function;
:data:`CASES` maps op name to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

# setup(case) -> (fn to time, tensors whose .grad is reset between runs)
SetupFn = Callable[["Case"], Tuple[Callable[[], object], Sequence[torch.Tensor]]]


@dataclass
class Provider:
    name: str
    kind: str  # "ours" | "baseline" | "floor"
    setup: SetupFn
    available: Callable[["Case"], bool] = lambda case: True


@dataclass
class Case:
    op: str
    mode: str  # "fwd" | "fwd+bwd"
    shape: Dict[str, int]
    dtype: torch.dtype
    device: torch.device
    providers: List[Provider] = field(default_factory=list)

    @property
    def label(self) -> str:
        dims = " ".join(f"{k}={v}" for k, v in self.shape.items())
        return f"{self.op} {self.mode} {dims} {str(self.dtype).replace('torch.', '')}"


def _entropy_cases(size: str, device: torch.device) -> List[Case]:
    from .entropy import entropy_cases

    return entropy_cases(size, device)


def _linear_cross_entropy_cases(size: str, device: torch.device) -> List[Case]:
    from .linear_cross_entropy import linear_cross_entropy_cases

    return linear_cross_entropy_cases(size, device)


def _linear_logprob_entropy_cases(size: str, device: torch.device) -> List[Case]:
    from .linear_logprob_entropy import linear_logprob_entropy_cases

    return linear_logprob_entropy_cases(size, device)


def _top_h_cases(size: str, device: torch.device) -> List[Case]:
    from .top_h import top_h_cases

    return top_h_cases(size, device)


CASES: Dict[str, Callable[[str, torch.device], List[Case]]] = {
    "entropy": _entropy_cases,
    "linear_cross_entropy": _linear_cross_entropy_cases,
    "linear_logprob_entropy": _linear_logprob_entropy_cases,
    "top_h": _top_h_cases,
}


def cases_for(ops: Optional[Sequence[str]], size: str, device: torch.device) -> List[Case]:
    """All cases of the named ops (all ops if None) for ``size`` in {"quick", "full"}.

    Example
    -------
    >>> [c.label for c in cases_for(["entropy"], "quick", torch.device("cpu"))][:1]
    ['entropy fwd B=8 V=8192 float32']
    """
    names = list(CASES) if not ops else list(ops)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; known: {sorted(CASES)}")
    out: List[Case] = []
    for name in names:
        out.extend(CASES[name](size, device))
    return out
