"""Wrappers for training stacks: loss modules and transformers integration.

Example
-------
>>> from entropy_kernels.training import LinearCrossEntropyLoss
>>> LinearCrossEntropyLoss(z_loss=1e-4)
LinearCrossEntropyLoss(ignore_index=-100, reduction='mean', label_smoothing=0.0, z_loss=0.0001, softcap=None, shift=False, impl='auto', filter_eps='auto', accum_fp32=False, chunk_size=None)
"""

from .losses import LinearCrossEntropyLoss
from .policy_loss import clip_cov_policy_loss, kl_cov_policy_loss, linear_cov_policy_loss
from .rl import LOSS_AGG_MODES, aggregate_loss, entropy_bonus, response_logprobs_and_entropy
from .transformers_patch import SUPPORTED as SUPPORTED_CAUSAL_LMS
from .transformers_patch import patch_causal_lm, unpatch_causal_lm
from .verl_adapter import register_with_verl

__all__ = [
    "LinearCrossEntropyLoss",
    "patch_causal_lm",
    "unpatch_causal_lm",
    "SUPPORTED_CAUSAL_LMS",
    "response_logprobs_and_entropy",
    "aggregate_loss",
    "entropy_bonus",
    "LOSS_AGG_MODES",
    "clip_cov_policy_loss",
    "kl_cov_policy_loss",
    "linear_cov_policy_loss",
    "register_with_verl",
]
