"""Reference math of Top-H selection (entropy-bounded truncation; docs/ops/top-h.md).

``z = logits / T``. Two semantics:

- ``"transformers"`` (transformers' ``TopHLogitsWarper``): take the ``top_n`` largest logits,
  ``q = softmax`` over them alone, ``τ = α·H(q)``; walking the candidates in descending order,
  keep token ``k`` while ``Σ_{i≤k} −q_i log q_i ≤ τ·(1 + 1e-5)`` (a token with ``q = 0`` is
  never kept, as its ``0·log 0`` is nan there); the first token is always kept.
- ``"exact"`` (the paper's rule over the whole vocabulary): with ``p = softmax(z)`` sorted
  descending, ``S_k = Σ_{i≤k} p_i``, ``T_k = Σ_{i≤k} p_i log p_i``, the renormalised prefix
  entropy ``H_k = log S_k − T_k / S_k`` increases with ``k``; keep the longest prefix with
  ``H_k ≤ α·H(p)·(1 + 1e-5)`` (at least one token; the slack absorbs fp32 rounding).
  Tokens with ``-inf`` logits (probability 0, which would not change ``H_k``) are never kept.

Ties between equal logits are broken by the lower vocabulary index. NaN logits count as ``-inf``.
A ``+inf`` logit takes the whole probability: the first ``+inf`` token (lowest index) is the only
one kept.

Boundary rule (both rules, CPU and kernel alike): a token whose cumulative quantity equals the
threshold is kept. The relative slack ``BOUNDARY_SLACK`` (1e-5) is what makes "equals" mean the
same on every path: fp32 sums in different orders land a few ulps either side of τ, so without
it a row of equal logits at ``α = k/n`` kept ``k - 1`` tokens on one path and ``k`` on another
(transformers' own warper keeps 9 of 10 equal tokens at ``top_h = 1``). The slack only moves a
token whose sum lies within 1e-5·τ of τ, which in exact arithmetic is a tie.
"""

from __future__ import annotations

import torch

MODES = ("transformers", "exact")
# fp32 cannot order the cumulative sums and τ closer than ~1e-6; with this relative slack a token
# exactly on the boundary is kept on every path (and α = 1 keeps the whole vocabulary instead of
# losing tokens to rounding). The kernel uses the same constant (kernels/top_h.py).
BOUNDARY_SLACK = 1e-5
EXACT_SLACK = BOUNDARY_SLACK  # the exact rule's name for it


def _scaled(logits: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    z = logits.to(dtype) / temperature
    return torch.where(torch.isnan(z), torch.full_like(z, float("-inf")), z)


def _sorted_desc(z: torch.Tensor):
    # stable sort of -z: descending values, ties by ascending index
    order = torch.sort(-z, dim=-1, stable=True).indices
    return z.gather(-1, order), order


def top_h_mask_reference(
    logits: torch.Tensor, alpha: torch.Tensor, temperature: float = 1.0, mode: str = "transformers", top_n: int = 100,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Bool ``[B, V]`` mask of the kept tokens (see module doc); ``alpha`` is ``[B]``.

    Computes in ``dtype`` (fp32 like the kernels; the tests also use fp64).

    Example
    -------
    >>> logits = torch.tensor([[4.0, 3.0, 0.0, -1.0]])
    >>> top_h_mask_reference(logits, torch.tensor([0.9]), mode="exact")
    tensor([[ True,  True, False, False]])
    """
    z = _scaled(logits, temperature, dtype)
    b, v = z.shape
    zs, order = _sorted_desc(z)
    alpha = alpha.to(dtype).reshape(b, 1)
    pos = torch.arange(v, device=z.device)
    if mode == "transformers":
        n = min(top_n, v)
        top, idx = zs[:, :n], order[:, :n]
        log_q = torch.log_softmax(top, dim=-1)
        q = log_q.exp()
        terms = torch.where(q > 0, -q * log_q, torch.full_like(q, float("nan")))
        entropy = -(q * torch.where(q > 0, log_q, torch.zeros_like(q))).sum(-1, keepdim=True)
        keep = (torch.cumsum(terms, -1) <= alpha * entropy * (1.0 + BOUNDARY_SLACK)) | (pos[:n] == 0)
    else:
        log_p = zs - torch.logsumexp(zs, dim=-1, keepdim=True)
        p = log_p.exp()
        plogp = torch.where(p > 0, p * log_p, torch.zeros_like(p))
        entropy = -plogp.sum(-1, keepdim=True)
        s, t = torch.cumsum(p, -1), torch.cumsum(plogp, -1)
        h_k = torch.log(s) - t / s
        ok = ((h_k <= alpha * entropy * (1.0 + EXACT_SLACK)) & (zs > float("-inf"))) | (pos == 0)
        n_keep = torch.cumprod(ok.to(torch.int64), -1).sum(-1, keepdim=True)  # longest prefix
        keep, idx = pos < n_keep, order
    mask = torch.zeros(b, v, dtype=torch.bool, device=z.device)
    return mask.scatter(1, idx, keep)
