"""``nn.Module`` front ends of the package's losses."""

from __future__ import annotations

from typing import Optional

import torch

from ..ops.linear_cross_entropy import check_options, linear_cross_entropy


class LinearCrossEntropyLoss(torch.nn.Module):
    """:func:`entropy_kernels.linear_cross_entropy` as a module; options fixed at construction.

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.training import LinearCrossEntropyLoss
    >>> loss_fn = LinearCrossEntropyLoss(shift=True, label_smoothing=0.1)
    >>> h, w = torch.randn(2, 6, 16), torch.randn(50, 16)
    >>> loss_fn(h, w, torch.randint(0, 50, (2, 6))).shape
    torch.Size([])
    """

    def __init__(
        self,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: Optional[float] = None,
        shift=False,
        impl: str = "auto",
        filter_eps="auto",
        accum_fp32: bool = False,
        chunk_size: Optional[int] = None,
        class_weight: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        # checked now, not at the first forward (possibly hours into a run)
        check_options(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                      softcap=softcap, shift=shift, impl=impl, filter_eps=filter_eps, accum_fp32=accum_fp32,
                      chunk_size=chunk_size)
        self.options = dict(
            ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
            softcap=softcap, shift=shift, impl=impl, filter_eps=filter_eps, accum_fp32=accum_fp32,
            chunk_size=chunk_size,
        )
        if class_weight is not None and not isinstance(class_weight, torch.Tensor):
            raise TypeError(f"class_weight must be a torch.Tensor or None, got {type(class_weight).__name__}")
        # a buffer, as nn.CrossEntropyLoss's weight: it follows .to(device) and the state dict
        self.register_buffer("class_weight", class_weight)

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: Optional[torch.Tensor] = None):
        return linear_cross_entropy(hidden, weight, targets, bias=bias, class_weight=self.class_weight, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
