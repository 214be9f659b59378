"""The package's runtime switches: read from the environment once, at import, then held in
:data:`CONFIG` -- so hot paths read an attribute instead of ``os.environ`` on every call, and a
switch can be set for a block of code without touching the environment.

| attribute | variable | default | what it does |
|---|---|---|---|
| ``cov_fused`` | ``EK_COV_FUSED`` | on | Clip-Cov / KL-Cov / ``high_entropy_mask`` run eagerly as one cooperative launch; ``EK_COV_FUSED=0``: one launch per phase (faster under CUDA graphs at ~1M tokens on an H100) |
| ``via_ops`` | ``EK_VIA_OPS`` | off | route every eager call through the registered torch.library ops instead of launching the kernels directly (to compare, or to debug; ~50-80 µs of host time per call) |
| ``wrap_triton`` | ``EK_WRAP_TRITON`` | off | launch every Triton kernel through ``torch.library.wrap_triton``, also eagerly (to compare; it costs host time per launch) |

``entropy-kernels info`` lists them with their current values.

Example
-------
>>> from entropy_kernels import config
>>> with config.override(cov_fused=False):
...     config.CONFIG.cov_fused
False
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from typing import Iterator, List, Tuple


@dataclasses.dataclass
class Config:
    """The switches; see the module docstring."""

    cov_fused: bool = True
    via_ops: bool = False
    wrap_triton: bool = False


# attribute -> (environment variable, meaning)
VARIABLES = {
    "cov_fused": ("EK_COV_FUSED", "Clip-Cov/KL-Cov/high_entropy_mask: one cooperative launch (0: one launch per phase)"),
    "via_ops": ("EK_VIA_OPS", "eager calls go through the torch.library ops instead of launching directly (1)"),
    "wrap_triton": ("EK_WRAP_TRITON", "launch Triton kernels through torch.library.wrap_triton also eagerly (1)"),
}


def _flag(value: str, name: str, default: bool) -> bool:
    if value.strip().lower() in ("1", "true", "on", "yes"):
        return True
    if value.strip().lower() in ("0", "false", "off", "no"):
        return False
    # read at import: a typo must not make the package unimportable
    warnings.warn(f"entropy_kernels: {name}={value!r} is not 0 or 1; using the default ({int(default)})")
    return default


def from_environment() -> Config:
    """A :class:`Config` from the ``EK_*`` variables now set (unset ones keep their defaults).

    Example
    -------
    >>> from_environment().wrap_triton == (os.environ.get("EK_WRAP_TRITON") == "1")
    True
    """
    cfg = Config()
    for attr, (var, _) in VARIABLES.items():
        if var in os.environ:
            setattr(cfg, attr, _flag(os.environ[var], var, getattr(cfg, attr)))
    return cfg


CONFIG = from_environment()


def reload() -> Config:
    """Re-read the environment into :data:`CONFIG` (after changing a variable at run time).

    Example
    -------
    >>> reload() is CONFIG
    True
    """
    fresh = from_environment()
    for field in dataclasses.fields(Config):
        setattr(CONFIG, field.name, getattr(fresh, field.name))
    return CONFIG


@contextlib.contextmanager
def override(**values: bool) -> Iterator[Config]:
    """Set switches for the block, restoring them after (not thread-safe: one setting per process).

    Example
    -------
    >>> with override(wrap_triton=True) as cfg:
    ...     cfg.wrap_triton
    True
    """
    unknown = set(values) - set(VARIABLES)
    if unknown:
        raise TypeError(f"unknown switch(es) {sorted(unknown)}; known: {sorted(VARIABLES)}")
    before = {name: getattr(CONFIG, name) for name in values}
    try:
        for name, value in values.items():
            setattr(CONFIG, name, bool(value))
        yield CONFIG
    finally:
        for name, value in before.items():
            setattr(CONFIG, name, value)


def describe() -> List[Tuple[str, str, str]]:
    """``(variable, current value, meaning)`` for each switch (``entropy-kernels info``).

    Example
    -------
    >>> [row[0] for row in describe()]
    ['EK_COV_FUSED', 'EK_VIA_OPS', 'EK_WRAP_TRITON']
    """
    return [(var, "1" if getattr(CONFIG, attr) else "0", meaning) for attr, (var, meaning) in VARIABLES.items()]
