"""What a benchmark is: a :class:`Case` (op, mode, shape, dtype) and the :class:`Provider` s
timed on it (ours, baselines, floors). Each op contributes a ``<op>_cases(size, device)``
function in a module of this package; :data:`CASES` names the ops that have one (found by
reading the sources, so no list is kept by hand)."""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass, field
from pathlib import Path
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


def _discover_suites() -> Dict[str, str]:
    """op name -> "module:function" for every ``def <op>_cases(size, device)`` in this package,
    found by reading the sources (importing the suites would import every op): a new op's
    benchmark module is picked up without a list to edit."""
    suites: Dict[str, str] = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_cases") and \
                    [a.arg for a in node.args.args] == ["size", "device"]:
                suites[node.name[: -len("_cases")]] = f"{path.stem}:{node.name}"
    return suites


_SUITES = _discover_suites()


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
