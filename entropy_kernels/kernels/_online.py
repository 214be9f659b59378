"""The online softmax update every streaming kernel of the package uses, written once.

Running state for a stream of logits ``z`` (``-inf`` = masked) with running max ``m``:

    s = Σ exp(z - m)          u = Σ (z - m)·exp(z - m)

so ``lse = m + log s`` and ``H = log s - u/s``. Keeping ``u`` relative to ``m`` avoids the
cancellation of ``lse - E[z]`` at large |z|. A new max ``m'`` rescales by ``c = exp(m - m')``:
``s ← c·s``, ``u ← c·(u + (m - m')·s)``. While everything seen is ``-inf`` the shift is 0, so
no ``exp(-inf + inf)`` or ``0·inf`` NaN can appear.

Every kernel writes ``-inf`` inline as ``float("-inf")``: a module-level ``tl.constexpr`` global
is re-emitted by torch.compile's inductor as the bare name ``-inf`` (a NameError at compile).
"""

import triton
import triton.language as tl



@triton.jit
def online_softmax_update(m, s_vec, u_vec, z):
    """Fold one block ``z`` (lanes) into ``(m scalar, s_vec, u_vec)``; returns the new state."""
    m_new = tl.maximum(m, tl.max(z, axis=0))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    scale = tl.exp(m - m_safe)
    shift = tl.where(m == float("-inf"), 0.0, m - m_safe)
    e = tl.exp(z - m_safe)
    u_vec = scale * (u_vec + shift * s_vec) + tl.where(e > 0, (z - m_safe) * e, 0.0)
    s_vec = scale * s_vec + e
    return m_new, s_vec, u_vec


@triton.jit
def online_softmax_update_rows(m, s, u, z):
    """Same for a 2-D tile ``z [rows, cols]`` and per-row state ``(m, s, u) [rows]``."""
    m_new = tl.maximum(m, tl.max(z, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    scale = tl.exp(m - m_safe)
    shift = tl.where(m == float("-inf"), 0.0, m - m_safe)
    e = tl.exp(z - m_safe[:, None])
    u = scale * (u + shift * s) + tl.sum(tl.where(e > 0, (z - m_safe[:, None]) * e, 0.0), axis=1)
    s = scale * s + tl.sum(e, axis=1)
    return m_new, s, u
