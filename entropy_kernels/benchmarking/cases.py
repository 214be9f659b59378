"""What a benchmark is: a :class:`Case` (op, mode, shape, dtype) and the :class:`Provider` s
timed on it (ours, baselines, floors). Each op contributes a ``cases(size, device)`` function
in its own module; :data:`CASES` names the ops that have one."""

from __future__ import annotations

import importlib
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


def pick_shapes(size: str, device: torch.device, full, quick):
    """``(shapes, dtype)`` of a suite: the production shapes (docs/design/performance.md) in bf16 for ``full``; for ``quick``,
    the per-device small shapes (``quick`` maps "cpu"/"cuda" to them), bf16 on GPU, fp32 on CPU."""
    if size == "full":
        return full, torch.bfloat16
    gpu = device.type == "cuda"
    return quick["cuda" if gpu else "cpu"], torch.bfloat16 if gpu else torch.float32


# op name -> "module:function" of its cases, imported on demand (the suites import the ops)
_SUITES = {
    "entropy": "entropy:entropy_cases",
    "linear_cross_entropy": "linear_cross_entropy:linear_cross_entropy_cases",
    "linear_logprob_entropy": "linear_logprob_entropy:linear_logprob_entropy_cases",
    "high_entropy_mask": "linear_logprob_entropy:high_entropy_mask_cases",
    "top_h": "top_h:top_h_cases",
    "dfloat": "dfloat:dfloat_cases",
    "policy_loss": "policy_loss:policy_loss_cases",
}


def _suite(name: str) -> Callable[[str, torch.device], List[Case]]:
    module, function = _SUITES[name].split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


CASES = tuple(_SUITES)


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
        out.extend(_suite(name)(size, device))
    return out
