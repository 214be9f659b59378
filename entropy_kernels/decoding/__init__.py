"""Wrappers for inference: Top-H logits processing and sampling.

Example
-------
>>> from entropy_kernels.decoding import TopHLogitsProcessor
>>> TopHLogitsProcessor(0.4).top_h
0.4
"""

from .top_h import TopHLogitsProcessor, top_h_generate, use_kernel_for_transformers_top_h

__all__ = ["TopHLogitsProcessor", "top_h_generate", "use_kernel_for_transformers_top_h"]
