"""EKDF measurements for benchmarks/results/: size vs the entropy bound and dfloat11, encoder and
CPU-decoder throughput, bit-exactness on structured data (CPU, and GPU where there is one). The
GPU decode speed, beside dfloat11's kernel and a copy, is the GPU probe's
``ekdf`` step (``python scripts/perf_probe.py --steps ekdf``; docs/gpu-probe.md).

    python scripts/dfloat_report.py --out ek-results          # any machine; GPU exactness where there is one
"""

import argparse
import json
import os
import platform
import time

import torch

from entropy_kernels.benchmarking.dfloat import (
    ANCHOR,
    dfloat11_available,
    dfloat11_encode,
    weights,
)
from entropy_kernels.benchmarking.report import environment
from entropy_kernels.decoding.dfloat import DFloatTensor


def bits_equal(a, b):
    return a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.int16), b.reshape(-1).view(torch.int16))


def structured(device):
    """Inputs that stress the coder: scales, constants, every exponent, NaN/Inf/denormals, odd sizes."""
    g = torch.Generator().manual_seed(1)
    bits_all = torch.randint(-32768, 32768, (1_000_003,), generator=g, dtype=torch.int32).to(torch.int16)
    special = torch.tensor([0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x0001, 0x8001, 0x007F, 0x0000, 0x8000], dtype=torch.int32).to(torch.int16)
    cases = {
        "normal 1e-3 (4097)": (torch.randn(4097, generator=g) * 1e-3).to(torch.bfloat16),
        "normal 1.0 (1M+3)": torch.randn(1_048_579, generator=g).to(torch.bfloat16),
        "normal 30 (70001)": (torch.randn(70_001, generator=g) * 30).to(torch.bfloat16),
        "all zero (7)": torch.zeros(7, dtype=torch.bfloat16),
        "one exponent (100000)": torch.full((100_000,), 1.5, dtype=torch.bfloat16),
        "every bit pattern (1M+3)": bits_all.view(torch.bfloat16),
        "nan/inf/denormal (9·1001)": special.repeat(1001).view(torch.bfloat16),
        "size 1": torch.tensor([3.0], dtype=torch.bfloat16),
        "size 0": torch.zeros(0, dtype=torch.bfloat16),
    }
    rows = []
    for name, x in cases.items():
        c = DFloatTensor.compress(x)
        ok_cpu = bits_equal(c.decompress(), x)
        ok_gpu = bits_equal(c.to(device).decompress().cpu(), x) if device.type == "cuda" else None
        rows.append({"input": name, "ratio": c.ratio, "cpu_exact": ok_cpu, "gpu_exact": ok_gpu})
    return rows


def timed(fn, reps=5):
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "ek-results"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = {"environment": environment(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
              "torch": torch.__version__, "cpu_count": os.cpu_count(), "machine": platform.machine()}

    x = weights(ANCHOR, "cpu")
    c = DFloatTensor.compress(x)
    report["size_anchor"] = {"ratio": c.ratio, "bits_per_value": c.bits_per_value, "bound_bits": c.entropy_bound_bits,
                             "bound_ratio": c.entropy_bound_bits / 16,
                             "over_bound_pct": 100 * (c.bits_per_value / c.entropy_bound_bits - 1)}
    if dfloat11_available() and device.type == "cuda":
        t = time.perf_counter()
        _, bytes11 = dfloat11_encode(x, device)
        report["dfloat11"] = {"ratio": bytes11 / (2 * ANCHOR), "encode_s": time.perf_counter() - t}
    c = DFloatTensor.compress(x)
    report["encode_Mvalues_per_s"] = {str(t): ANCHOR / timed(lambda: DFloatTensor.compress(x, threads=t), 3) / 1e6
                                      for t in (2, 0)}
    out = torch.empty(ANCHOR, dtype=torch.bfloat16)
    report["cpu_decode_Mvalues_per_s"] = ANCHOR / timed(lambda: c.decompress(out=out)) / 1e6
    report["structured"] = structured(device)

    with open(os.path.join(args.out, "dfloat_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "structured"}, indent=1))
    bad = [r for r in report["structured"] if not r["cpu_exact"] or r["gpu_exact"] is False]
    print("structured round trips:", len(report["structured"]), "failures:", bad)


if __name__ == "__main__":
    main()
