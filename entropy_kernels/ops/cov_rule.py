"""Which tokens a Clip-Cov / KL-Cov step selects, as one value passed between the public
functions, the training losses, the distributed selection and the launchers; it is flattened
into the ops' scalar arguments only where an op or a kernel is called."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CovRule:
    """The selection rule of Clip-Cov (``clip_mode``) or KL-Cov.

    - ``ratio``: ``clip_cov_ratio`` / ``kl_cov_ratio`` (the share of tokens selected).
    - ``clip_low``, ``clip_high``: PPO's ε; Clip-Cov selects only tokens that PPO did not clip.
    - ``lb``, ``ub``: Clip-Cov's open covariance band ``lb < cov < ub``.

    KL-Cov uses only ``ratio`` (its PPO loss takes ε from the caller, not from the rule).

    Example
    -------
    >>> CovRule.kl_cov(0.01).flat()
    (False, 0.01, 0.0, 0.0, 0.0, 0.0)
    >>> CovRule.clip_cov(2e-4, 0.2, 0.28, 1.0, 5.0).clip_mode
    True
    """

    clip_mode: bool
    ratio: float
    clip_low: float = 0.0
    clip_high: float = 0.0
    lb: float = 0.0
    ub: float = 0.0

    @classmethod
    def kl_cov(cls, ratio: float) -> "CovRule":
        return cls(False, ratio)

    @classmethod
    def clip_cov(cls, ratio: float, clip_low: float, clip_high: float, lb: float, ub: float) -> "CovRule":
        return cls(True, ratio, clip_low, clip_high, lb, ub)

    def flat(self) -> tuple:
        """``(clip_mode, ratio, clip_low, clip_high, lb, ub)``: the ops' argument order."""
        return (self.clip_mode, self.ratio, self.clip_low, self.clip_high, self.lb, self.ub)
