"""Every docstring example in the package runs and prints what it claims (doctest)."""

import doctest
import importlib
import pkgutil

import pytest

import entropy_kernels

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(entropy_kernels.__path__, "entropy_kernels.")
    if not m.name.endswith("._C")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_public_functions_have_examples():
    for name in entropy_kernels.__all__:
        obj = getattr(entropy_kernels, name)
        if callable(obj):
            assert "Example" in (obj.__doc__ or ""), f"entropy_kernels.{name} has no docstring example"
