"""Triton kernels and their launch helpers. Importing this package imports Triton; the ops in
:mod:`entropy_kernels.ops` only do so when a kernel is about to run."""
