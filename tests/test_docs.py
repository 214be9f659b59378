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


ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".md", ".sh", ".cu", ".h", ".cpp", ".txt", ".toml", ".cfg"}


def _tracked_text_files():
    import subprocess

    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.stdout.split() if (ROOT / p).suffix in TEXT_SUFFIXES and (ROOT / p).is_file()]


def test_the_repository_cites_no_document_outside_it():
    outside = ("SPEC §", "ANCHORS.md", "../shared/", "gpu-static-analysis")
    hits = [f"{p.relative_to(ROOT)}: {word}" for p in _tracked_text_files() if p.name != "test_docs.py"
            for word in outside if word in p.read_text(errors="replace")]
    assert not hits, hits


def test_readme_and_docs_links_resolve():
    import re

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
