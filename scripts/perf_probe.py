"""The GPU probe: every op, and every variant switch that decides a default, measured in one
command; JSON + markdown into --out (default $OUT), a summary of at most 80 lines printed last.
How to run it and what each step decides: docs/gpu-probe.md.

    python scripts/perf_probe.py --out ek-results                   # all steps (~7 min on an H100)
    python scripts/perf_probe.py --steps top_h,ekdf                  # some
    python scripts/perf_probe.py --warm --jobs 16                    # compile only, in parallel
    python scripts/perf_probe.py --dry-run --out /tmp/probe          # CPU, tiny shapes: every code path
"""

import os
import sys

if "--dry-run" in sys.argv:
    # before torch/triton are imported: Triton decides at import whether it interprets
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from entropy_kernels.benchmarking.probe import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
