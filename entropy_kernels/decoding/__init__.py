"""Wrappers for inference: Top-H logits processing and sampling, entropy-coded (DFloat) weights.

Example
-------
>>> from entropy_kernels.decoding import TopHLogitsProcessor
>>> TopHLogitsProcessor(0.4).top_h
0.4
"""

from .compressed_model import compress_model, load_compressed, save_compressed
from .dfloat import DFloatError, DFloatTensor
from .top_h import (
    TopHLogitsProcessor,
    top_h_generate,
    use_kernel_for_transformers_top_h,
)

__all__ = ["DFloatError", "DFloatTensor", "compress_model", "load_compressed", "save_compressed", "TopHLogitsProcessor", "top_h_generate", "use_kernel_for_transformers_top_h"]
