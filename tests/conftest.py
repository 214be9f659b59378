"""Test setup shared by every test module.

Triton decides at import time whether kernels are interpreted, so the choice is made here,
before anything imports triton: on a machine without an NVIDIA device the Triton kernels run
in the interpreter on CPU tensors (tests marked ``interpreter``); with a GPU they are compiled
and the ``gpu`` tests run. ``scripts/gpu_check.sh`` runs the suite both ways on a GPU box.
"""

import glob
import os

if "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "0" if glob.glob("/dev/nvidia[0-9]*") else "1"

import contextlib  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from entropy_kernels import _backend  # noqa: E402

import interpreter_speedups  # noqa: E402
from pairwise import pairwise_cover  # noqa: E402

interpreter_speedups.install()

HAS_CUDA = torch.cuda.is_available()
INTERPRETING = _backend.interpreting() and _backend.triton_available()


# Fixtures that choose between kernel launch paths: the CPU reference ignores them, so on the
# reference backend only their first value runs.
KERNEL_ONLY_FIXTURES = ("small_blocks", "launch_path", "launches")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_interp = pytest.mark.skip(reason="needs TRITON_INTERPRET=1 (set automatically without a GPU)")
    for item in items:
        if "interpreter" in item.keywords:  # the fast tier (-m "not slow") leaves the interpreter out
            item.add_marker(pytest.mark.slow)
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "interpreter" in item.keywords and not INTERPRETING:
            item.add_marker(skip_interp)
    if os.environ.get("EK_TEST_FULL_GRID") != "1":
        _deselect(config, items, _redundant_items(items))


def _backend_of(item):
    spec = getattr(item, "callspec", None)
    return getattr(spec.params.get("backend"), "name", None) if spec else None


def _redundant_items(items):
    """Items that add nothing:

    - on the reference backend: a kernel-only fixture's later values, and tests marked
      ``kernel_backends_only`` (opchecks that tests/test_registry.py runs there for every op);
    - under the interpreter: ``impl="reference"`` (plain torch on CPU tensors, the reference
      backend's run again), and for tests marked ``interpreter_pairwise`` the rows outside a
      pairwise covering of their parameter grid (pairwise.py)."""
    redundant, grids = set(), {}
    for item in items:
        backend = _backend_of(item)
        indices = item.callspec.indices if backend else {}
        if backend == "cpu-reference" and (any(indices.get(name, 0) for name in KERNEL_ONLY_FIXTURES)
                             or item.get_closest_marker("kernel_backends_only")):
            redundant.add(item.nodeid)
        elif backend == "cpu-triton-interpreter" and item.callspec.params.get("impl") == "reference":
            redundant.add(item.nodeid)  # plain torch on CPU tensors: the cpu-reference run, again
        elif backend == "cpu-triton-interpreter" and item.get_closest_marker("interpreter_pairwise"):
            grids.setdefault((item.path, item.originalname), []).append(item)
    for grid in grids.values():
        rows = [tuple((k, repr(v)) for k, v in item.callspec.params.items() if k != "backend") for item in grid]
        keep = set(pairwise_cover(rows))
        redundant.update(item.nodeid for i, item in enumerate(grid) if i not in keep)
    return redundant


def _deselect(config, items, nodeids):
    if nodeids:
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid in nodeids])
        items[:] = [item for item in items if item.nodeid not in nodeids]


class Backend:
    """Where a test runs an op: the device of its inputs and the routing context."""

    def __init__(self, name, device, context):
        self.name, self.device, self._context = name, device, context

    def __repr__(self):
        return self.name

    def context(self):
        return self._context()


BACKENDS = [
    pytest.param(Backend("cpu-reference", "cpu", contextlib.nullcontext), id="cpu-reference"),
    pytest.param(
        Backend("cpu-triton-interpreter", "cpu", _backend.triton_on_cpu),
        id="cpu-triton-interpreter",
        marks=pytest.mark.interpreter,
    ),
    pytest.param(Backend("cuda-triton", "cuda", contextlib.nullcontext), id="cuda-triton", marks=pytest.mark.gpu),
]


def aot_once(first: bool) -> dict:
    """opcheck keyword arguments: every check on an op's first call of a test, the cheap ones
    (schema, autograd registration, fake tensors) on its variants. The AOT-autograd trace with
    dynamic shapes is 94 % of opcheck's time (~1 s a call on two cores, more under the interpreter)."""
    return {} if first else {"test_utils": ("test_schema", "test_autograd_registration", "test_faketensor")}


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every op test runs once per backend: CPU reference, Triton interpreted on CPU, CUDA."""
    return request.param


# Fresh random data on every run; EK_TEST_SEED=<printed value> reproduces a failing run. Under
# pytest-xdist every worker derives the same seed from the run's id, so the printed one holds.
_RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID")
RUN_SEED = int(os.environ.get("EK_TEST_SEED", zlib.crc32(_RUN_ID.encode()) if _RUN_ID else
                              int.from_bytes(os.urandom(4), "little")))
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one core per worker: the workers already fill the machine


def pytest_configure(config):
    """The controller of an xdist run picks the run id the workers derive the seed from."""
    global RUN_SEED
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    if not getattr(config.option, "testrunuid", None):
        config.option.testrunuid = os.urandom(8).hex()
    if "EK_TEST_SEED" not in os.environ:
        RUN_SEED = zlib.crc32(config.option.testrunuid.encode())


def pytest_report_header(config):
    return f"entropy_kernels: EK_TEST_SEED={RUN_SEED} TRITON_INTERPRET={os.environ['TRITON_INTERPRET']} cuda={HAS_CUDA}"


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    torch.manual_seed((RUN_SEED + zlib.crc32(request.node.nodeid.encode())) % (2**63))
