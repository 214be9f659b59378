"""Every Triton kernel compiles to cubin for sm_90 at the launch configurations the ops use, with
the specialisation the JIT applies at launch -- checked on any machine, GPU or not (Triton ships
its NVIDIA backend and ptxas). The interpreter runs the kernels' logic; this runs the real
compiler over them.

The committed report ``benchmarks/static/triton_kernels.json`` (registers, shared memory, spills
for sm_80 and sm_90) doubles as a cache: a configuration whose key -- kernel source, argument
specialisation, launch options, arch, Triton version -- is in it compiled when the report was
written, so only changed configurations are compiled here, and a report that no longer matches
the kernels fails the test (regenerate it with the command in the message)."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nvidia_backend_available() -> bool:
    try:
        from triton.backends import backends

        return "nvidia" in backends
    except Exception:
        return False


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _nvidia_backend_available(), reason="Triton without its NVIDIA backend")]
ENV = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=1800)


def test_kernels_compile_for_hopper_and_the_committed_report_is_current():
    out = subprocess.run(
        [sys.executable, "-m", "entropy_kernels.kernels.aot_check", "--check", "benchmarks/static/", "--arch", "90",
         "--jobs", "2"],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=1800,
    )
    failures = [line for line in out.stdout.splitlines() if line.startswith("sm_") and " ok" not in line]
    assert not failures, "\n".join(failures)
    assert out.returncode == 0 and " 0 failed" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_specialisation_is_the_jits_and_aligned_loads_vectorise():
    """The report must describe what runs: the configurations go through the JIT's own launch
    binder (and the by-hand rules, used on a Triton without it, agree with it on every
    configuration); and a launch the JIT sees as 16-byte aligned compiles to 16-byte vector
    loads, which the same kernel compiled without the alignment attributes does not."""
    out = _python("""
        import re
        from triton.backends.compiler import GPUTarget
        from entropy_kernels.kernels import aot_check as A

        target = GPUTarget("cuda", 90, 32)
        for cfg in A._configs():
            jit, hand = A.specialise(cfg, target), A.specialise(cfg, target, by_hand=True)
            assert jit[4] == "jit binder", (cfg.name, jit[4])
            assert jit[:3] == hand[:3], (cfg.name, jit[:3], hand[:3])
        cfg = A.find_config("entropy_fwd[bf16,split=False,row_temp=False]")
        sig, constexprs, attrs, _, _ = A.specialise(cfg, target)
        names = list(sig)
        assert attrs[(names.index("x_ptr"),)] == [["tt.divisibility", 16]], attrs
        assert sig["n_splits"] == "constexpr" and constexprs[(names.index("n_splits"),)] == 1, sig
        compiled, _ = A.compile_kernel(cfg, 90)
        print("v4 loads:", len(re.findall(r"ld\\.global(\\.\\w+)*\\.v4", compiled.asm["ptx"])))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    v4 = int(out.stdout.split("v4 loads:")[1])
    assert v4 > 0, "a 16-byte-aligned bf16 row compiled without vector loads"


def test_the_committed_report_checked_every_kernel_with_fp64_floats():
    """Triton types a Python float argument fp32; torch.compile's launcher of a user kernel types
    it fp64. ``aot_check`` compiles each configuration's TTIR both ways and fails one whose typed
    operations differ (beyond the casts back); the report records the verdict per configuration,
    so the check above re-runs it exactly for the configurations whose kernels changed."""
    import json

    rows = json.load(open(os.path.join(ROOT, "benchmarks", "static", "triton_kernels.json")))["kernels"]
    verdicts = [r.get("fp64_floats") for r in rows if int(r["arch"]) == 90]
    assert all(v in ("same", "no floats") for v in verdicts), verdicts
    assert verdicts.count("same") >= 50, verdicts


def test_the_fp64_float_check_catches_a_kernel_that_computes_in_fp64(tmp_path):
    """The check can fail: a kernel that multiplies by a float argument without casting it back
    to fp32 computes in fp64 when torch.compile passes fp64; the cast makes it the same."""
    script = tmp_path / "fp64_probe.py"  # @triton.jit needs its source in a file
    script.write_text(textwrap.dedent("""
        import triton, triton.language as tl
        from entropy_kernels.kernels import aot_check as A

        @triton.jit
        def scale_uncast(x_ptr, s, n, BLOCK: tl.constexpr):
            o = tl.arange(0, BLOCK)
            x = tl.load(x_ptr + o, mask=o < n)
            tl.store(x_ptr + o, x * s, mask=o < n)

        @triton.jit
        def scale_cast(x_ptr, s, n, BLOCK: tl.constexpr):
            s = s.to(tl.float32)
            o = tl.arange(0, BLOCK)
            x = tl.load(x_ptr + o, mask=o < n)
            tl.store(x_ptr + o, x * s, mask=o < n)

        for k in (scale_uncast, scale_cast):
            cfg = A.Config(k.__name__, k, {"x_ptr": "*fp32", "s": 0.5, "n": 4096}, {"BLOCK": 128}, num_warps=4)
            print(k.__name__, "=", A.fp64_float_check(cfg, 90))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "scale_cast = same" in out.stdout, out.stdout
    assert "scale_uncast = fp64 floats add" in out.stdout, out.stdout
