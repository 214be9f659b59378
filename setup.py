"""Build script: setuptools drives CMake (Ninja) to build the pybind11 extension ``entropy_kernels._C``.

Environment switches (read at build time only):

- ``EK_SKIP_CUDA=1``      build a CPU-only ``_C`` even when nvcc is present.
- ``EK_CUDA_ARCHS``       semicolon list of SM versions, default ``80;90``; SASS for each,
                          PTX for the newest so later GPUs can JIT it.
- ``EK_BUILD_TYPE``       CMake build type, default ``Release`` (``RelWithDebInfo`` with EK_SANITIZE).
- ``EK_SANITIZE``         sanitizers for the host C++ code, e.g. ``address`` (``-fsanitize=address
                          -fno-omit-frame-pointer``); the module then needs the runtime preloaded:
                          ``LD_PRELOAD=$(c++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0``.
- ``MAX_JOBS``            parallel compile jobs (default: CPU count, capped by memory).

No network access and no torch import happen here: the extension does not link libtorch,
so ``pip install --no-build-isolation --no-deps -e .`` works offline on a GPU box.
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path):
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


def _default_jobs() -> int:
    # Each nvcc job can take ~1-2 GB; cap jobs by memory so small build boxes do not swap.
    cpus = os.cpu_count() or 1
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return max(1, min(cpus, int(mem_gb // 2)))
    except (ValueError, OSError, AttributeError):
        return cpus


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11  # build requirement; imported here so `setup.py --version` needs nothing

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        sanitize = os.environ.get("EK_SANITIZE", "")
        # symbols kept (pybind11 strips Release builds) so sanitizer reports name the functions
        cfg = os.environ.get("EK_BUILD_TYPE", "RelWithDebInfo" if sanitize else "Release")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DEK_CUDA_ARCHS={os.environ.get('EK_CUDA_ARCHS', '80;90')}",
            f"-DEK_SKIP_CUDA={'ON' if os.environ.get('EK_SKIP_CUDA', '0') == '1' else 'OFF'}",
            f"-DEK_SANITIZE={sanitize}",
        ]
        if self._have_ninja():
            args.append("-GNinja")
        jobs = os.environ.get("MAX_JOBS", str(_default_jobs()))
        subprocess.run(["cmake", "-S", ext.source_dir, "-B", str(build_dir), *args], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--config", cfg, "-j", jobs], check=True)

    @staticmethod
    def _have_ninja() -> bool:
        try:
            subprocess.run(["ninja", "--version"], check=True, capture_output=True)
            return True
        except (OSError, subprocess.CalledProcessError):
            return False


setup(
    ext_modules=[CMakeExtension("entropy_kernels._C", ROOT)],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
