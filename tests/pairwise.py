"""Pairwise covering of a test's parameter grid, for the slow Triton-interpreter runs.

A test marked ``interpreter_pairwise`` runs its full parameter grid on the CPU reference and on
CUDA, but under the interpreter (~4 ms per block iteration) only a subset in which every pair
of parameter values still appears together at least once: each value of each parameter is
met with each value of every other one. A kernel bug that needs two parameters to show (bf16
with 32-token blocks, a ratio with the phase launches) is still caught; only three-way and
higher combinations are left to the GPU runs. ``EK_TEST_FULL_GRID=1`` runs the whole grid.

    >>> rows = [(("dtype", 0), ("ratio", 0)), (("dtype", 0), ("ratio", 1)),
    ...         (("dtype", 1), ("ratio", 0)), (("dtype", 1), ("ratio", 1))]
    >>> pairwise_cover(rows)  # two parameters: every pair is one row, so all rows stay
    [0, 1, 2, 3]
"""

from itertools import combinations


def _pairs(row):
    return set(combinations(row, 2)) | {(value,) for value in row}


def pairwise_cover(rows):
    """Indices of a subset of ``rows`` (tuples of ``(parameter, value index)``) that contains
    every pair of values any row contains: greedily the row covering most uncovered pairs,
    the earliest on ties (deterministic, so every pytest-xdist worker keeps the same rows)."""
    covers = [_pairs(tuple(sorted(row))) for row in rows]
    uncovered = set().union(*covers) if covers else set()
    keep = []
    while uncovered:
        best = max(range(len(rows)), key=lambda i: (len(covers[i] & uncovered), -i))
        keep.append(best)
        uncovered -= covers[best]
    return sorted(keep)
