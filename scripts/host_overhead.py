"""Host (Python) time per call of the cheap ops, with every kernel launch stubbed out: what a
call costs before the GPU does anything. Runs on any machine (CPU tensors; no GPU, no Triton
interpreter): the Triton launchers and the EKDF decoder are replaced by no-ops and the ops are
told to take their kernel path.

    python scripts/host_overhead.py                  # median µs per call, eager fast path vs the ops
    python scripts/host_overhead.py --registration   # the registration styles on a trivial op

Each case is timed in the same run through the eager fast path (the default: kernels launched
directly, see ``_backend.eager_direct``) and with ``EK_VIA_OPS=1`` (through the registered
``torch.library`` ops), so the ratio needs no other baseline; the policy losses also with
``EK_COV_FUSED=0`` (fast path, one launch per phase instead of the one-launch kernel). The numbers include
the small torch ops each call makes (allocations, a reduction or two), which on CPU tensors
also do their (tiny) CPU work, and exclude Triton's own launch cost (stubbed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import entropy_kernels as ek
from entropy_kernels import _backend, config


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def stub_launches() -> None:
    """Make every op take its kernel path on CPU tensors, with launches that do nothing."""
    from entropy_kernels.kernels import cov_launch, entropy, linear_softmax, logits_rows, top_h

    _backend.use_triton = lambda t: True
    for mod in (cov_launch, entropy, linear_softmax, logits_rows, top_h):
        mod.launcher = lambda kernel, probe: _NoLaunch()
        if hasattr(mod, "sm_count"):
            mod.sm_count = lambda device: 132
    cov_launch._fused_kernel = _NoLaunch()  # launched without ``launcher`` (eager only)

    class _NativeStub:
        def __getattr__(self, name):
            return lambda *args: None

    _backend.native = lambda: _NativeStub()


def cases(tokens: int, vocab: int):
    from entropy_kernels.decoding import DFloatTensor
    from entropy_kernels.training import clip_cov_policy_loss, kl_cov_policy_loss

    b = 64
    t = tokens // b
    old = -torch.rand(b, t) * 3
    lp = (old + 0.1 * torch.randn(b, t)).requires_grad_()
    adv, mask = torch.randn(b, t), torch.ones(b, t, dtype=torch.bool)
    seed, off = torch.tensor([1]), torch.tensor([0])

    def clip():
        lp.grad = None
        clip_cov_policy_loss(old, lp, adv, mask, seed=seed, offset=off)[0].backward()

    def kl():
        lp.grad = None
        kl_cov_policy_loss(old, lp, adv, mask)[0].backward()

    logits = torch.randn(4, vocab)
    x = logits.clone().requires_grad_()

    def entropy():
        x.grad = None
        ek.entropy(x).sum().backward()

    c = DFloatTensor.compress((torch.randn(65536) * 0.02).to(torch.bfloat16))
    buf = torch.empty(c.numel, dtype=torch.bfloat16)
    hooks = _compressed_block_hooks(7)
    return {
        f"clip_cov_policy_loss fwd+bwd, {tokens} tokens": clip,
        f"kl_cov_policy_loss fwd+bwd, {tokens} tokens": kl,
        f"top_h_sample, 4 x {vocab}": lambda: ek.top_h_sample(logits, 0.4, seed=seed, offset=off),
        f"entropy fwd+bwd, 4 x {vocab}": entropy,
        "DFloatTensor.decompress(out=), 65536 values": lambda: c.decompress(out=buf),
        "compressed model: decode hooks of 7 weights": lambda: [hook(None, ()) for hook in hooks],
    }


def _compressed_block_hooks(n: int):
    """The forward pre-hooks that a compressed model runs before a block of ``n`` Linear layers
    (``decoding.compress_model``): one weight decode each, into the shared buffer."""
    from entropy_kernels.decoding import compress_model

    block = torch.nn.Sequential(*[torch.nn.Linear(256, 256, bias=False, dtype=torch.bfloat16) for _ in range(n)])
    compress_model(torch.nn.Sequential(block), group_by="module", min_numel=0, progress=False)
    return [hook for m in block.modules() for hook in m._forward_pre_hooks.values()]


def registration_styles():
    """One trivial differentiable op (a copy) registered each way the package could register an
    op, to time what the registration itself costs per call, with and without autograd:
    ``triton_op`` and ``custom_op`` (what the package uses), ``torch.library.Library``
    ``define``/``impl`` with ``register_autograd`` (no wrapper), an ``Autograd``-key kernel
    around a plain ``autograd.Function``, and the plain ``autograd.Function`` (the eager twin)."""
    from torch.library import Library, custom_op, triton_op

    def impl(x, t: float):
        return x.clone()

    def fake(x, t):
        return torch.empty_like(x)

    def setup(ctx, inputs, output):
        pass

    def bwd(ctx, g):
        return g, None

    def schema(x: torch.Tensor, t: float) -> torch.Tensor:
        ...

    import functools

    a = triton_op("ek_overhead::a", functools.wraps(schema)(impl), mutates_args=())
    b = custom_op("ek_overhead::b", functools.wraps(schema)(impl), mutates_args=())
    b.register_fake(fake)
    for op in (a, b):
        op.register_autograd(bwd, setup_context=setup)
    lib = Library("ek_overhead", "FRAGMENT")
    for name in ("c", "d"):
        lib.define(f"{name}(Tensor x, float t) -> Tensor")
        lib.impl(name, impl, "CPU")
        lib.impl(name, fake, "Meta")
    torch.library.register_autograd("ek_overhead::c", bwd, setup_context=setup, lib=lib)
    d = torch.ops.ek_overhead.d.default

    class Twin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, t):
            return impl(x, t)

        @staticmethod
        def backward(ctx, g):
            return g, None

    class BelowAutograd(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, t):
            with torch._C._AutoDispatchBelowAutograd():
                return d(x, t)

        @staticmethod
        def backward(ctx, g):
            return g, None

    lib.impl("d", BelowAutograd.apply, "Autograd")
    return lib, {
        "triton_op + register_autograd": a,
        "custom_op + register_autograd": b,
        "Library.define/impl + register_autograd": torch.ops.ek_overhead.c.default,
        "Library.define/impl + Autograd-key Function": d,
        "autograd.Function (the eager twin)": Twin.apply,
        "the implementation alone": impl,
    }


def registration(reps: int) -> None:
    """Print µs per call of :func:`registration_styles`, input with and without requires_grad."""
    lib, styles = registration_styles()
    x, xg = torch.randn(16), torch.randn(16, requires_grad=True)
    print(f"host µs per call of a registered copy op (median of 7 x {reps}), torch {torch.__version__}")
    print(f"{'registration':45s} {'no grad':>9s} {'grad':>9s}")
    for name, fn in styles.items():
        print(f"{name:45s} {median_us(lambda: fn(x, 1.0), reps):9.1f} {median_us(lambda: fn(xg, 1.0), reps):9.1f}")
    del lib


def median_us(fn, reps: int, rounds: int = 7) -> float:
    for _ in range(20):
        fn()
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        per_round.append((time.perf_counter() - t0) / reps * 1e6)
    return statistics.median(per_round)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--registration", action="store_true",
                        help="time the ways of registering an op instead (does registration alone pay for the twins?)")
    args = parser.parse_args(argv)
    if args.registration:
        registration(args.reps)
        return 0
    calls = cases(args.tokens, args.vocab)  # before the stubs: building the EKDF payload needs _C
    stub_launches()
    print(f"host µs per call (median of 7 x {args.reps}), torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"{'case':50s} {'fast path':>10s} {'phases':>10s} {'via ops':>10s} {'ratio':>7s}")
    for name, fn in calls.items():
        with config.override(via_ops=False):
            fast = median_us(fn, args.reps)
        phases = "-"
        if "policy_loss" in name:
            with config.override(via_ops=False, cov_fused=False):
                phases = f"{median_us(fn, args.reps):.1f}"
        with config.override(via_ops=True):
            via_ops = median_us(fn, args.reps)
        print(f"{name:50s} {fast:10.1f} {phases:>10s} {via_ops:10.1f} {via_ops / fast:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
