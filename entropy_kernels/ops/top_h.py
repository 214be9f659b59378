"""Top-H selection and sampling: ``entropy_kernels::top_h`` and the public :func:`top_h_mask`
and :func:`top_h_sample`. Semantics of both rules: :mod:`entropy_kernels.reference.top_h`."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .. import _backend, _validation
from ..reference.top_h import MODES, top_h_mask_reference
from ._registry import define_op

if _backend.triton_available():
    from ..kernels import top_h as _kernels
else:  # pragma: no cover
    _kernels = None


def _to_signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _MIX1, _MIX2 = (_to_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _uniform_reference(seed: torch.Tensor, offset: torch.Tensor, b: int, v: int, device) -> torch.Tensor:
    """Counter-based uniforms in (0, 1) from (seed, row, offset + token) via splitmix64, in plain
    torch int64 (no host sync, traceable). The CUDA kernel uses Triton's Philox instead, so CPU
    and CUDA draw different (equally distributed) samples for the same seed."""
    rows = torch.arange(b, device=device, dtype=torch.int64).unsqueeze(1)
    cols = torch.arange(v, device=device, dtype=torch.int64).unsqueeze(0)
    x = (seed.reshape(()) + rows) * _GOLDEN + (offset.reshape(()) + cols) * _MIX1
    for shift, mul in ((30, _MIX1), (27, _MIX2)):
        x = (x ^ ((x >> shift) & ((1 << (64 - shift)) - 1))) * mul
    x = x ^ ((x >> 31) & ((1 << 33) - 1))
    return (((x >> 11) & ((1 << 53) - 1)).double() + 0.5) / float(1 << 53)


def _top_h_signature(
    logits: torch.Tensor,
    alpha: torch.Tensor,
    temperature: float,
    exact: bool,
    top_n: int,
    write_mask: bool,
    seed: Optional[torch.Tensor],
    offset: Optional[torch.Tensor],
    with_stats: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mask [B, V] bool or [0, 0], samples [B] int64 or [0], stats [B, 2] fp32 or [0, 2])``;
    ``stats`` rows are ``(lse, log Σ_kept p)`` of ``logits / temperature``. Internal: use the
    public API."""


def _top_h_reference(logits, alpha, temperature, exact, top_n, write_mask, seed, offset, with_stats=False):
    """The CPU path (and the fake impl): the kept set of the reference rule, Gumbel-max sampling on
    counter-based uniforms."""
    b, v = logits.shape
    keep = top_h_mask_reference(logits, alpha, temperature, "exact" if exact else "transformers", top_n)
    samples = torch.empty((0,), dtype=torch.int64, device=logits.device)
    z = logits.float() / temperature if seed is not None or with_stats else None
    if seed is not None:
        gumbel = -torch.log(-torch.log(_uniform_reference(seed, offset, b, v, logits.device)))
        score = torch.where(keep, z.double() + gumbel, torch.full_like(gumbel, float("-inf")))
        samples = score.argmax(dim=-1)
    stats = torch.empty((0, 2), dtype=torch.float32, device=logits.device)
    if with_stats:
        z = torch.where(torch.isnan(z), float("-inf"), z)  # NaN counts as -inf, as in the kernel
        lse = torch.logsumexp(z, dim=-1)
        kept = torch.logsumexp(torch.where(keep, z, float("-inf")), dim=-1)
        stats = torch.stack([lse, torch.clamp(kept - lse, max=0.0)], dim=-1)  # <= 0 also after rounding
    mask = keep if write_mask else torch.zeros((0, 0), dtype=torch.bool, device=logits.device)
    return mask, samples, stats


def _samples():
    b, v = 3, 300
    # small: the shared tests run each under Triton's interpreter, twice
    for exact, seed, stats, label in ((False, None, False, "transformers mask"), (True, 7, True, "exact sample, stats")):
        alpha = torch.rand(b) * 0.6 + 0.2
        s = None if seed is None else torch.tensor([seed])
        o = None if seed is None else torch.tensor([3])
        yield (torch.randn(b, v) * 2, alpha, 0.8, exact, 50, seed is None, s, o, stats), label


TOP_H = define_op(
    "top_h", _top_h_signature, public="top_h_mask / top_h_sample",
    kernel=_kernels.top_h if _kernels else None, reference=_top_h_reference, samples=_samples,
)
top_h_op = TOP_H.op  # the torch.library op (what torch.compile sees)


def _token_logprobs(x: torch.Tensor, tokens: torch.Tensor, temperature: float, stats: torch.Tensor):
    """``(log p_token, log p_token − log Σ_kept p)`` from the kernel's ``(lse, log Σ_kept p)``:
    a gather and two subtractions on the device (no host sync)."""
    z = x.gather(1, tokens.unsqueeze(1)).squeeze(1).float() / temperature
    z = torch.where(torch.isnan(z), float("-inf"), z)
    logprob = z - stats[:, 0]
    return logprob, logprob - stats[:, 1]


def check_options(alpha, temperature, mode: str, top_n: int) -> float:
    """The scalar settings of Top-H (also checked by the decoding wrappers when they are built);
    returns the temperature as a float (a tensor ``temperature`` as it is). A tensor ``alpha`` or
    ``temperature`` is checked against the logits later.

    Example
    -------
    >>> check_options(0.4, 1.0, "exact", 0)
    Traceback (most recent call last):
    ...
    ValueError: top_n must be >= 1, got 0
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _validation.check_int("top_n", top_n, 1)
    if not isinstance(alpha, torch.Tensor):
        _validation.check_real("alpha", alpha, 0.0, 1.0, low_open=True)
    if isinstance(temperature, torch.Tensor):
        return temperature
    return _validation.check_positive_scalar("temperature", temperature)


def _per_row(name: str, t: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """A float scalar or ``[B]`` tensor on the logits' device, as fp32 ``[B]`` (values unchecked:
    that would synchronise with the GPU)."""
    b = logits.shape[0]
    _validation.check_tensor(name, t)
    _validation.check_float_dtype(name, t)
    _validation.check_same_device(name, t, "logits", logits)
    if t.numel() not in (1, b) or t.dim() > 1:
        raise ValueError(f"{name} must be a float, a scalar tensor or a [batch] = [{b}] tensor, got shape {tuple(t.shape)}")
    return t.reshape(-1).expand(b).to(torch.float32)


def _prepare(logits, alpha, temperature, mode, top_n):
    _validation.check_tensor("logits", logits)
    _validation.check_float_dtype("logits", logits, (torch.float16, torch.bfloat16, torch.float32))
    if logits.dim() != 2:
        raise ValueError(f"logits must be [batch, vocab] (2-D), got shape {tuple(logits.shape)}")
    if logits.shape[1] == 0:
        raise ValueError("logits must have a non-empty vocabulary dimension")
    temperature = check_options(alpha, temperature, mode, top_n)
    b = logits.shape[0]
    if isinstance(alpha, torch.Tensor):
        alpha_t = _per_row("alpha", alpha, logits).contiguous()
    else:
        alpha_t = torch.full((b,), float(alpha), dtype=torch.float32, device=logits.device)
    if isinstance(temperature, torch.Tensor):
        # per-row temperature: the logits are scaled here (one fp32 pass over [B, V]) and the
        # kernel runs at T = 1
        logits = logits.float() / _per_row("temperature", temperature, logits).unsqueeze(1)
        temperature = 1.0
    x = logits if logits.stride(-1) == 1 else logits.contiguous()
    return x, alpha_t, temperature


def top_h_mask(
    logits: torch.Tensor,
    alpha: Union[float, torch.Tensor],
    *,
    temperature: Union[float, torch.Tensor] = 1.0,
    mode: str = "transformers",
    top_n: int = 100,
    return_log_mass: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Bool ``[B, V]`` mask of the tokens Top-H keeps, found without sorting the vocabulary.

    Parameters
    ----------
    logits : Tensor ``[B, V]``, fp32/bf16/fp16 (computed in fp32). ``-inf`` entries are allowed;
        NaN counts as ``-inf``.
    alpha : float in (0, 1], or a per-row tensor ``[B]`` (its values are not checked: that
        would synchronise with the GPU).
    temperature : float > 0, divides the logits first (as the temperature warper does in
        ``generate``); or a per-row tensor ``[B]`` (values not checked; the logits are then
        scaled in one fp32 pass before the kernel).
    mode : ``"transformers"`` reproduces ``TopHLogitsWarper`` (top ``top_n`` candidates,
        cumulative ``−q log q ≤ α·H(q)``); ``"exact"`` is the paper's rule over the whole
        vocabulary (longest prefix with renormalised entropy ``≤ α·H(p)``).
    top_n : int, candidates of the transformers rule (transformers uses 100).
    return_log_mass : bool, also return ``log_mass`` fp32 ``[B]``: ``log Σ_kept p`` with ``p =
        softmax(logits / temperature)`` over the whole vocabulary (≤ 0; the log-normaliser of
        the renormalised kept distribution). Computed on the device by the same launch, no host
        sync. A row without a finite logit (all ``-inf``/NaN), or with a ``+inf`` one, gives NaN.

    Returns ``mask``, or ``(mask, log_mass)`` given ``return_log_mass=True``.

    Ties between equal logits are broken by the lower vocabulary index, and a token whose
    cumulative entropy equals the threshold is kept (to a relative 1e-5, the same on every
    path: transformers' warper decides such a token by its fp32 rounding). NaN / ±inf logits:
    docs/nan-semantics.md.

    Example
    -------
    >>> import torch, entropy_kernels as ek
    >>> logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -2.0]])
    >>> ek.top_h_mask(logits, 0.9)      # τ = 0.9·H(q): the top two tokens fit
    tensor([[ True,  True, False, False, False]])
    >>> ek.top_h_mask(logits, 1.0, mode="exact")
    tensor([[True, True, True, True, True]])
    >>> ek.top_h_mask(logits.expand(2, -1), torch.tensor([0.9, 0.9]), temperature=torch.tensor([1.0, 0.1])).sum(1)
    tensor([2, 1])
    >>> mask, log_mass = ek.top_h_mask(logits, 0.9, return_log_mass=True)
    >>> round(float(log_mass.exp()), 4)    # the kept tokens' share of the probability
    0.9814
    """
    _validation.check_bool("return_log_mass", return_log_mass)
    x, alpha_t, temperature = _prepare(logits, alpha, temperature, mode, top_n)
    mask, _, stats = TOP_H(x, alpha_t, temperature, mode == "exact", top_n, True, None, None, return_log_mass)
    if return_log_mass:
        return mask, stats[:, 1]
    return mask


def top_h_sample(
    logits: torch.Tensor,
    alpha: Union[float, torch.Tensor],
    *,
    temperature: Union[float, torch.Tensor] = 1.0,
    mode: str = "transformers",
    top_n: int = 100,
    generator: Optional[torch.Generator] = None,
    seed: Optional[torch.Tensor] = None,
    offset: Optional[torch.Tensor] = None,
    return_logprobs: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Token ids ``[B]`` sampled ∝ ``softmax(logits / T)`` over the Top-H kept set, in one pass.

    ``alpha``, ``temperature``, ``mode``, ``top_n``: as in :func:`top_h_mask` (per-row tensors
    ``[B]`` accepted for ``alpha`` and ``temperature``).

    Sampling is Gumbel-max over the kept tokens (no normalisation pass, no host sync).
    Randomness comes from, in order of precedence: explicit ``seed`` and ``offset`` (one-element
    int64 tensors on the logits' device: change ``offset`` between steps; this is the form a
    CUDA graph can capture and replay), a ``generator`` (one seed drawn from it on the device),
    or torch's default generator. Identical seeds give identical samples on the same device;
    the CPU path uses a different counter-based generator than the CUDA kernel.

    ``return_logprobs=True`` returns ``(tokens, logprob, logprob_kept)``, fp32 ``[B]`` each:
    the sampled token's log-probability under the full ``softmax(logits / T)`` and under the
    renormalised kept set (``logprob − log Σ_kept p``, ≤ 0; the distribution the token was drawn
    from). The kernel writes the row's lse and kept mass in the same launch; no host sync. A row
    without a finite logit (all ``-inf``/NaN) gives NaN for both (its token is meaningless), and
    so does a row with a ``+inf`` logit.

    Example
    -------
    >>> import torch, entropy_kernels as ek
    >>> logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -2.0]])
    >>> g = torch.Generator().manual_seed(0)
    >>> int(ek.top_h_sample(logits, 0.9, generator=g)) in (0, 1)   # only kept tokens come out
    True
    >>> tokens, logprob, logprob_kept = ek.top_h_sample(logits, 0.9, generator=g, return_logprobs=True)
    >>> bool((logprob <= logprob_kept).all() and (logprob_kept <= 0).all())
    True
    """
    _validation.check_bool("return_logprobs", return_logprobs)
    x, alpha_t, temperature = _prepare(logits, alpha, temperature, mode, top_n)
    seed, offset = _validation.seed_and_offset(generator, seed, offset, "logits", logits)
    _, samples, stats = TOP_H(x, alpha_t, temperature, mode == "exact", top_n, False, seed.reshape(1), offset.reshape(1),
                             return_logprobs)
    if return_logprobs:
        return (samples, *_token_logprobs(x, samples, temperature, stats))
    return samples
