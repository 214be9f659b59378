"""entropy_kernels: fused GPU kernels for entropy in LLM training and decoding.

Example
-------
>>> import torch, entropy_kernels as ek
>>> ek.entropy(torch.zeros(1, 4))    # uniform over 4 tokens: log 4
tensor([1.3863])
"""

from . import ops  # noqa: F401  (registers the torch.library ops)
from ._version import __version__
from .ops.cov_select import clip_cov_select, kl_cov_select
from .ops.entropy import entropy
from .ops.high_entropy_mask import high_entropy_mask
from .ops.linear_cross_entropy import linear_cross_entropy
from .ops.linear_logprob_entropy import linear_logprob_entropy
from .ops.top_h import top_h_mask, top_h_sample

__all__ = ["__version__", "entropy", "high_entropy_mask", "linear_cross_entropy", "linear_logprob_entropy",
           "top_h_mask", "top_h_sample", "clip_cov_select", "kl_cov_select"]
