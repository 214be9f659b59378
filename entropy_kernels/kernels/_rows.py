"""How a ``[..., V]`` tensor is addressed as rows, without copying it when possible.

Kernels that work row by row over the last dimension take a row index ``r`` in ``[0, N)`` and
compute the row's start as ``(r // n_inner) * stride_outer + (r % n_inner) * stride_inner``.
Two strides cover the common non-contiguous cases without a copy: a contiguous tensor, a slice
of a wider vocabulary (``logits[..., :V]``) and a slice along time (``logits[:, :-1, :]``, the
next-token shift). Anything else (a transposed last dim, three unmergeable leading dims) is
copied to contiguous memory first.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class RowLayout(NamedTuple):
    tensor: torch.Tensor  # the tensor to pass to the kernel (the input, or a contiguous copy)
    n_rows: int
    n_cols: int
    n_inner: int
    stride_outer: int
    stride_inner: int


def _merge_leading(sizes, strides):
    """Merge adjacent leading dims whose strides allow it; drop size-1 dims."""
    dims = [(s, st) for s, st in zip(sizes, strides) if s != 1]
    merged = []
    for size, stride in dims:
        if merged and merged[-1][1] == stride * size:
            prev_size, _ = merged[-1]
            merged[-1] = (prev_size * size, stride)
        else:
            merged.append((size, stride))
    return merged


def row_layout(x: torch.Tensor) -> RowLayout:
    """Describe ``x`` (``[..., V]``) as rows for a kernel, copying only if two strides cannot.

    Example
    -------
    >>> x = torch.randn(2, 5, 7)[:, :-1, :]          # time-shifted view: no copy needed
    >>> lay = row_layout(x)
    >>> (lay.n_rows, lay.n_inner, lay.stride_outer, lay.stride_inner)
    (8, 4, 35, 7)
    >>> lay.tensor.data_ptr() == x.data_ptr()
    True
    """
    n_cols = x.shape[-1]
    n_rows = x.numel() // n_cols if n_cols else 0
    if x.dim() >= 1 and (x.stride(-1) == 1 or n_cols == 1):
        merged = _merge_leading(x.shape[:-1], x.stride()[:-1])
        if len(merged) == 0:
            return RowLayout(x, n_rows, n_cols, 1, 0, n_cols)
        if len(merged) == 1:
            size, stride = merged[0]
            return RowLayout(x, n_rows, n_cols, size, 0, stride)
        if len(merged) == 2:
            (_, s_outer), (inner, s_inner) = merged
            return RowLayout(x, n_rows, n_cols, inner, s_outer, s_inner)
    xc = x.contiguous()
    return RowLayout(xc, n_rows, n_cols, max(n_rows, 1), 0, n_cols)
