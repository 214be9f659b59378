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


pytestmark = pytest.mark.skipif(not _nvidia_backend_available(), reason="Triton without its NVIDIA backend")
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


def test_kernels_compute_the_same_when_torch_compile_passes_floats_as_fp64():
    """Triton types a Python float argument fp32; torch.compile's launcher of a user kernel types
    it fp64. A kernel must compile both ways and do the same arithmetic: the fp64 form may only
    add the casts that bring the argument back (``arith.truncf``) -- seen on a GPU: the policy
    loss's fp32 accumulator turned fp64 (a compile error), and Clip-Cov's clipping comparison
    ran in fp64 (a different selection than eager). The TTIR of each configuration with float
    arguments is generated both ways and its typed operations are compared."""
    out = _python("""
        import re
        from collections import Counter
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton._C.libtriton import ir
        from entropy_kernels.kernels import aot_check as A

        target = GPUTarget("cuda", 90, 32)
        backend = make_backend(target)

        def typed_ops(cfg, sig, constexprs, attrs, options):
            opts = backend.parse_options({k: v for k, v in options.items() if k in ("num_warps", "num_stages", "num_ctas")})
            ctx = ir.context()
            ir.load_dialects(ctx)
            backend.load_dialects(ctx)
            mod = ASTSource(fn=cfg.kernel, signature=sig, constexprs=constexprs, attrs=attrs).make_ir(
                target, opts, backend.get_codegen_implementation(opts), backend.get_module_map(), ctx)
            ops = Counter()
            for line in str(mod).splitlines():
                m = re.search(r'=\\s*"?([a-z_]+\\.[a-z_.]+)"?.*?:\\s*(.*)$', line)
                if m:
                    ops[(m.group(1), re.sub(r"loc\\(.*\\)", "", m.group(2)).strip())] += 1
            return ops

        checked, bad = 0, []
        for cfg in A._configs():
            sig, constexprs, attrs, options, _ = A.specialise(cfg, target)
            if "fp32" not in sig.values():
                continue
            sig64 = {k: "fp64" if v == "fp32" else v for k, v in sig.items()}
            try:
                extra = typed_ops(cfg, sig64, constexprs, attrs, options) - typed_ops(cfg, sig, constexprs, attrs, options)
            except Exception as e:
                bad.append(f"{cfg.name}: does not compile with fp64 floats: {str(e).splitlines()[-1][:200]}")
                continue
            # calls of helpers whose float parameters are fp64 now; their bodies are compared too
            extra = [op for op in extra if op[0] not in ("arith.truncf", "tt.call")]
            if extra:
                bad.append(f"{cfg.name}: fp64 floats add {extra[:3]}")
            checked += 1
        print("checked", checked)
        print("\\n".join(bad))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split("checked")[1].split()[0]) >= 50, out.stdout
    assert out.stdout.strip().splitlines()[1:] == [], out.stdout[-3000:]
