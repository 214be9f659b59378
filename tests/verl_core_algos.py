"""verl's own Clip-Cov / KL-Cov policy losses (``verl.trainer.ppo.core_algos``), for the
comparison tests of ``test_policy_loss.py``.

The test environment installs the verl wheel without its dependencies (README's test command:
``pip install --no-deps verl``): the policy losses and ``agg_loss`` are plain torch, but
``import verl`` also pulls in its trainer stack (ray, tensordict, ...). Those packages, when
missing, are replaced by empty stand-in modules for the duration of the import only; nothing
that the loss functions compute comes from them. Without the verl wheel, :func:`load` returns
None and the tests skip.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from unittest import mock

# imported at module level by verl's package / trainer modules, never called by the losses
TRAINER_ONLY = ("ray", "tensordict", "omegaconf", "codetiming", "orjson")


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the missing ``TRAINER_ONLY`` packages as empty (MagicMock) modules."""

    def __init__(self, roots):
        self.roots = set(roots)

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = mock.MagicMock(name=spec.name)
        module.__path__, module.__spec__ = [], spec
        return module

    def exec_module(self, module):
        pass


def load():
    """``verl.trainer.ppo.core_algos``, or None if the verl wheel is not installed."""
    if importlib.util.find_spec("verl") is None:
        return None
    try:
        return importlib.import_module("verl.trainer.ppo.core_algos")
    except ImportError:
        pass
    missing = [name for name in TRAINER_ONLY if importlib.util.find_spec(name) is None]
    finder = _StandIns(missing)
    before = set(sys.modules)
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module("verl.trainer.ppo.core_algos")
    finally:
        sys.meta_path.remove(finder)
        for name in set(sys.modules) - before:  # the stand-ins do not outlive the import
            if name.split(".")[0] in finder.roots:
                del sys.modules[name]


def config(clip_ratio_high=0.28, **policy_loss):
    """The ``config`` argument of verl's policy losses (an ``ActorConfig``-shaped namespace)."""
    return types.SimpleNamespace(
        policy_loss=types.SimpleNamespace(**{"clip_cov_ratio": None, "clip_cov_lb": None, "clip_cov_ub": None,
                                             "kl_cov_ratio": None, "ppo_kl_coef": None, **policy_loss}),
        clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=clip_ratio_high, global_batch_info={},
    )
