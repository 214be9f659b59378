"""What an ahead-of-time compile configuration is: :class:`Config` (a kernel, typical launch
arguments, constexprs, launch options) and :func:`launch_args` to build its arguments from a
type signature. Each kernel module declares its own configurations in an ``aot_configs()``
generator beside its kernels; :mod:`.aot_check` finds them, so a new kernel module needs no
list edited elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

BLOCK_NAMES = ("BLOCK_N", "BLOCK_V", "BLOCK_D")

# Typical launch values of integer arguments (what the JIT specialises on): the ops' anchor
# shapes -- V = 151936 / 256000 / 128256, D = 2304 / 4096, 64-8192 rows, 65,536-1M tokens -- are
# all multiples of 16, so an integer defaults to a multiple of 16; configurations override the
# ones that are not (e.g. 5 vocabulary splits, top_n = 100) or are 1 (a constant at launch).
DEFAULT_INT = 4096

@dataclass
class Config:
    """One launch configuration: the kernel, its runtime arguments (``"*bf16"``-style strings
    for pointers, typical values for scalars), its constexprs and launch options.

    Example
    -------
    >>> from entropy_kernels.kernels.aot_check import find_config
    >>> cfg = find_config("entropy_combine")
    >>> cfg.num_warps, cfg.args["n_splits"], cfg.constexprs
    (1, 9, {'BLOCK_S': 16})
    """

    name: str
    kernel: object
    args: Dict[str, object]
    constexprs: Dict[str, object]
    num_warps: int = 8
    num_stages: Optional[int] = None  # None: Triton's default
    options: Dict[str, object] = field(default_factory=dict)  # e.g. launch_cooperative_grid


def launch_args(signature: Dict[str, str], **values) -> Dict[str, object]:
    """Runtime arguments from a type signature: pointers stay type strings, integers get
    ``values[name]`` or :data:`DEFAULT_INT`, floats 1.0.

    Example
    -------
    >>> launch_args({"x_ptr": "*bf16", "n": "i32", "t": "fp32"}, n=7)
    {'x_ptr': '*bf16', 'n': 7, 't': 1.0}
    """
    out: Dict[str, object] = {}
    for name, ty in signature.items():
        if ty.startswith("*"):
            out[name] = ty
        elif ty.startswith("fp"):
            out[name] = float(values.get(name, 1.0))
        else:
            out[name] = int(values.get(name, DEFAULT_INT))
    unknown = set(values) - set(signature)
    if unknown:
        raise KeyError(f"values for unknown arguments {sorted(unknown)}")
    return out
