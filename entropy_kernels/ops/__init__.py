"""torch.library ops in the ``entropy_kernels::`` namespace, one module per capability.

Every module follows the pattern of :mod:`entropy_kernels.ops.entropy` -- read that one first:

1. ``@torch.library.triton_op`` defines the op. Its body routes by device through
   :func:`entropy_kernels._backend.use_triton`: the Triton launcher (which calls kernels via
   ``wrap_triton`` so ``torch.compile`` can see and inline them) or the pure-torch reference.
   The same body serves as the fake impl, so shapes are computed in exactly one place.
2. A second op for the backward, same routing; ``register_autograd`` connects them.
3. A public function that validates arguments (``_validation``), prepares tensors and calls the
   op; it carries the docstring with an example and is re-exported by ``entropy_kernels``.
"""

from . import entropy  # noqa: F401  (registers entropy_kernels::entropy_fwd / entropy_bwd)
from . import linear_softmax  # noqa: F401  (entropy_kernels::linear_softmax_stats / _backward)
from . import linear_softmax_stored  # noqa: F401  (entropy_kernels::linear_softmax_stats_stored)
from . import linear_cross_entropy  # noqa: F401  (entropy_kernels::linear_cross_entropy_chunked)
from . import linear_logprob_entropy  # noqa: F401  (built on the ops above)
from . import top_h  # noqa: F401  (entropy_kernels::top_h)
from . import dfloat  # noqa: F401  (entropy_kernels::dfloat_decompress / dfloat_decompress_into)
from . import cov_select  # noqa: F401  (entropy_kernels::cov_select / cov_stats / cov_keys / cov_policy_loss)

# public function -> the torch.library ops behind it (for `entropy-kernels info` and the docs)
OPS = {
    "entropy": ("entropy_kernels::entropy_fwd", "entropy_kernels::entropy_bwd"),
    "linear_cross_entropy": (
        "entropy_kernels::linear_softmax_stats",
        "entropy_kernels::linear_softmax_backward",
        "entropy_kernels::linear_cross_entropy_chunked",
    ),
    "top_h_mask / top_h_sample": ("entropy_kernels::top_h",),
    "linear_logprob_entropy": (
        "entropy_kernels::linear_softmax_stats",
        "entropy_kernels::linear_softmax_stats_stored",
    ),
    "DFloatTensor.decompress": ("entropy_kernels::dfloat_decompress", "entropy_kernels::dfloat_decompress_into"),
    "DFloatTensor.linear": ("entropy_kernels::dfloat_linear",),
    "high_entropy_mask": ("entropy_kernels::high_entropy_mask",),
    "clip_cov_select / kl_cov_select": ("entropy_kernels::cov_select",),
    "clip_cov_policy_loss / kl_cov_policy_loss": (
        "entropy_kernels::cov_select",
        "entropy_kernels::cov_policy_loss",
        "entropy_kernels::cov_stats",
        "entropy_kernels::cov_keys",
    ),
}
