"""The C++ encoder and decoders under AddressSanitizer, on the EKDF corruption cases.

Builds ``_C`` with ``EK_SANITIZE=address`` (host C++ only, no CUDA) into a temporary directory
through setup.py, then runs tests/fuzz_ekdf.py in a subprocess that loads that build with the
ASan runtime preloaded: any out-of-bounds read or write in the C++ code aborts it with a report.
A planted overflow (a decoder told its buffer is larger than it is) checks that the harness
does catch one.

Opt-in -- the build takes one to two minutes on two cores::

    pip install pybind11   # the build needs it importable (pip's isolated builds fetch it otherwise)
    python -m pytest -m sanitize tests/test_ekdf_sanitize.py

``EK_ASAN_EXTENSION=/path/to/_C...so`` uses a build made beforehand instead (e.g.
``EK_SANITIZE=address EK_SKIP_CUDA=1 python setup.py build_ext --build-temp /tmp/t --build-lib /tmp/l``);
``EK_FUZZ_CASES`` sets the number of damaged files (default 300).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import entropy_kernels

pytestmark = pytest.mark.sanitize

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(entropy_kernels.__file__)))

# loads the extension given as argv[1] as entropy_kernels._C, then runs argv[2:] as a script
LOADER = textwrap.dedent("""
    import importlib.util, runpy, sys
    spec = importlib.util.spec_from_file_location("entropy_kernels._C", sys.argv[1])
    C = importlib.util.module_from_spec(spec)
    sys.modules["entropy_kernels._C"] = C
    spec.loader.exec_module(C)
    assert C.sanitizers() == "address", C.sanitizers()
    from entropy_kernels import _backend
    assert _backend.native() is C
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")

PLANTED_OVERFLOW = textwrap.dedent("""
    import torch
    from entropy_kernels import _backend
    from entropy_kernels.decoding import DFloatTensor
    from entropy_kernels.ops import dfloat as ops
    c = DFloatTensor.compress((torch.randn(5000) * 0.02).to(torch.bfloat16))
    out = torch.empty(c.numel - 1, dtype=torch.bfloat16)  # one value short...
    args = ops.launch_args(*c.payload(), *c.sizes())
    _backend.native().dfloat_decode_cpu(*args, out.data_ptr(), c.numel)  # ...said to be long enough
    print("not caught")
""")


def _selected(config) -> bool:
    return "sanitize" in (config.getoption("markexpr") or "") or os.environ.get("EK_SANITIZE_TESTS") == "1"


def _runtime() -> str:
    cxx = os.environ.get("CXX", "c++")
    path = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(path):
        pytest.fail(f"{cxx} has no AddressSanitizer runtime (libasan.so)")
    return path


@pytest.fixture(scope="module")
def asan(request, tmp_path_factory):
    """``(extension path, environment)`` for subprocesses running under ASan."""
    if not _selected(request.config):
        pytest.skip("AddressSanitizer build (1-2 min): python -m pytest -m sanitize tests/test_ekdf_sanitize.py")
    so = os.environ.get("EK_ASAN_EXTENSION")
    if not so:
        try:
            import pybind11  # noqa: F401
        except ImportError:
            pytest.fail("building the ASan extension needs pybind11 importable: pip install pybind11")
        if not os.path.exists(os.path.join(ROOT, "setup.py")):
            pytest.fail(f"no setup.py in {ROOT}: set EK_ASAN_EXTENSION to an extension built with EK_SANITIZE=address")
        build = tmp_path_factory.mktemp("asan")
        env = dict(os.environ, EK_SANITIZE="address", EK_SKIP_CUDA="1")
        r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-temp", str(build / "tmp"),
                            "--build-lib", str(build / "lib")], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=1200)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        (so,) = [str(p) for p in (build / "lib" / "entropy_kernels").glob("_C*.so")]
    env = dict(os.environ)
    # libstdc++ preloaded too: ASan's exception interceptors need it present when they start
    env["LD_PRELOAD"] = f"{_runtime()} libstdc++.so.6"
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"  # the interpreter's own leaks are not ours
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE] + [p for p in [env.get("PYTHONPATH")] if p])
    return so, env


def _run(asan, script_args, tmp_path):
    so, env = asan
    loader = tmp_path / "loader.py"
    loader.write_text(LOADER)
    return subprocess.run([sys.executable, str(loader), so, *script_args], env=env, capture_output=True, text=True,
                          timeout=1200)


def test_asan_harness_catches_a_planted_overflow(asan, tmp_path):
    script = tmp_path / "planted.py"
    script.write_text(PLANTED_OVERFLOW)
    r = _run(asan, [str(script)], tmp_path)
    assert r.returncode != 0 and "heap-buffer-overflow" in r.stderr and "not caught" not in r.stdout, r.stderr[-3000:]


def test_fuzz_cases_run_clean_under_asan(asan, tmp_path):
    cases = int(os.environ.get("EK_FUZZ_CASES", "300"))
    r = _run(asan, [os.path.join(HERE, "fuzz_ekdf.py"), "--files", str(cases), "--ops", str(max(100, cases // 2)),
                    "--seed", "5"], tmp_path)
    assert "AddressSanitizer" not in r.stderr, r.stderr[-6000:]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert all(report[k]["failed"] == 0 for k in ("files", "unvalidated", "ops")), report
    assert report["files"]["cases"] == cases
