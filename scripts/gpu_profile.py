"""Where the time goes, for the ops whose H100 times are far from their floors (README,
Benchmarks): host (Python, dispatch, launches) vs device (each kernel), with torch.profiler.

    python scripts/gpu_profile.py --out ek-results            # all cases
    python scripts/gpu_profile.py --cases top_h policy_loss   # some

For each case it prints the wall time per call, the summed device-kernel time per call and the
top kernels / host ops, and writes them all to ``profile.txt`` in ``--out``. A wall time far above
the kernel time means host overhead; otherwise the named kernel is the one to fix.
"""

import argparse
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

import entropy_kernels as ek


def _policy_loss(kind: str, tokens: int):
    from entropy_kernels.training import clip_cov_policy_loss, kl_cov_policy_loss

    b = 64 if tokens <= 65536 else 256
    t = tokens // b
    g = torch.Generator(device="cuda").manual_seed(0)
    old = -torch.rand(b, t, device="cuda", generator=g) * 3
    lp = (old + 0.1 * torch.randn(b, t, device="cuda", generator=g)).requires_grad_()
    adv = torch.randn(b, t, device="cuda", generator=g)
    mask = torch.rand(b, t, device="cuda", generator=g) > 0.1
    seed, off = torch.tensor([1], device="cuda"), torch.tensor([0], device="cuda")

    def step():
        if kind == "clip_cov":
            loss, _ = clip_cov_policy_loss(old, lp, adv, mask, "token-mean", seed=seed, offset=off)
        else:
            loss, _ = kl_cov_policy_loss(old, lp, adv, mask, "token-mean")
        loss.backward()

    return step


def _top_h(batch: int, mode: str):
    x = (torch.randn(batch, 151936, device="cuda") * 3).to(torch.bfloat16)
    return lambda: ek.top_h_mask(x, 0.4, mode=mode)


def _entropy(batch: int):
    x = (torch.randn(batch, 151936, device="cuda") * 2).to(torch.bfloat16).requires_grad_()
    g = torch.randn(batch, device="cuda")
    return lambda: ek.entropy(x).backward(g)


def _dfloat(n: int):
    from entropy_kernels.decoding import DFloatTensor

    c = DFloatTensor.compress((torch.randn(n) * 0.02).to(torch.bfloat16)).to("cuda")
    out = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    return lambda: c.decompress(out=out)


CASES = {
    "policy_loss": [("clip_cov 65536", lambda: _policy_loss("clip_cov", 65536)),
                    ("kl_cov 1048576", lambda: _policy_loss("kl_cov", 1 << 20))],
    "top_h": [("top_h exact B=1", lambda: _top_h(1, "exact")), ("top_h transformers B=1", lambda: _top_h(1, "transformers")),
              ("top_h exact B=64", lambda: _top_h(64, "exact"))],
    "entropy": [("entropy fwd+bwd B=64", lambda: _entropy(64))],
    "dfloat": [("dfloat 16.8M", lambda: _dfloat(16_777_216))],
}


def run(name: str, make, iters: int = 20) -> list:
    fn = make()
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    wall_us = (time.perf_counter() - t0) / iters * 1e6
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / iters
    text = [f"== {name}: wall {wall_us:.1f} us/call, device kernels {kernel_us:.1f} us/call",
            events.table(sort_by="self_cuda_time_total", row_limit=12),
            events.table(sort_by="self_cpu_time_total", row_limit=12)]
    return text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "ek-results"))
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    os.makedirs(args.out, exist_ok=True)
    reports = [run(name, make) for group in args.cases for name, make in CASES[group]]
    with open(os.path.join(args.out, "profile.txt"), "w") as f:
        f.write("\n\n".join("\n".join(r) for r in reports))
    print("\n".join(r[0] for r in reports))


if __name__ == "__main__":
    main()
