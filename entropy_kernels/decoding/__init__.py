"""Wrappers for inference (logits processors, Top-H sampling, compressed-weight models).

Empty until the Top-H and DFloat ops land.
"""
