"""torch.library ops in the ``entropy_kernels::`` namespace, one module per capability.

Every op is declared once with :func:`entropy_kernels.ops._registry.define_op` -- read
:mod:`entropy_kernels.ops.entropy` first: a typed signature (the schema), the kernel launcher
and the pure-torch reference (or one composite implementation, or a native ``_C`` kernel with
a fake impl), the backward if differentiable, and sample calls. The registry builds the
``torch.library`` op, its autograd, the eager fast path, the ``entropy-kernels info`` row and
the shared opcheck / eager-vs-op tests (``tests/test_registry.py``). The public function
validates arguments (``_validation``), calls the registered op and carries the docstring.
"""

from . import entropy  # noqa: F401  (registers entropy_kernels::entropy_fwd / entropy_bwd)
from . import linear_softmax  # noqa: F401  (entropy_kernels::linear_softmax_stats / _backward)
from . import linear_softmax_stored  # noqa: F401  (entropy_kernels::linear_softmax_stats_stored)
from . import linear_cross_entropy  # noqa: F401  (entropy_kernels::linear_cross_entropy_chunked)
from . import linear_logprob_entropy  # noqa: F401  (built on the ops above)
from . import top_h  # noqa: F401  (entropy_kernels::top_h)
from . import dfloat  # noqa: F401  (entropy_kernels::dfloat_decompress / dfloat_decompress_into)
from . import cov_select  # noqa: F401  (entropy_kernels::cov_select / cov_stats / cov_keys / cov_policy_loss)
from . import high_entropy_mask  # noqa: F401  (entropy_kernels::high_entropy_mask)

from ._registry import REGISTRY, info_rows  # noqa: E402

def op_table():
    """``[(public function, ops behind it, CPU implementation, CUDA implementation)]`` for
    ``entropy-kernels info`` and the docs, from the registry.

    Example
    -------
    >>> op_table()[0][:2]
    ('entropy', ('entropy_kernels::entropy_fwd', 'entropy_kernels::entropy_bwd'))
    """
    return [(r.public, tuple(r.ops), r.cpu, r.cuda) for r in info_rows()]


# public function -> the torch.library ops behind it
OPS = {public: ops for public, ops, _, _ in op_table()}
