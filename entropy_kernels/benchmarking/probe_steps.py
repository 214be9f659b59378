"""The GPU probe's steps, in the order they run (the most decisive first). Each lives in the
module of its family; a step measures beside the switch that decides a default (the variant
rows), writes a check measured in the same run where one exists, and its ``summary`` turns the
rows into the lines printed at the end.
"""

from __future__ import annotations

from typing import Dict, List

from . import probe_cov, probe_dfloat_linear, probe_ekdf, probe_entropy, probe_hardware, probe_lsm, probe_top_h
from .probe_context import Step

STEPS: List[Step] = [
    *probe_hardware.STEPS,  # ceilings, histogram
    *probe_ekdf.STEPS,
    *probe_top_h.STEPS,
    *probe_cov.STEPS,
    *probe_entropy.STEPS,
    *probe_lsm.STEPS,
    *probe_dfloat_linear.STEPS,
]


def steps_by_name() -> Dict[str, Step]:
    """Every step by its name, in running order (what the runner and the summary look steps up in).

    Example
    -------
    >>> steps_by_name()["top_h"].name
    'top_h'
    """
    return {s.name: s for s in STEPS}


def step_names() -> List[str]:
    """The probe's steps in the order they run (the most decisive first).

    Example
    -------
    >>> step_names()[:3]
    ['ceilings', 'histogram', 'ekdf']
    """
    return list(steps_by_name())
