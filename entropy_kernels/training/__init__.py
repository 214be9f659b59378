"""Wrappers for training stacks (losses, nn.Modules, transformers patching, RL policy losses).

Empty until the cut cross-entropy and vocabulary-entropy ops land; the raw op
:func:`entropy_kernels.entropy` is usable directly in a training step today.
"""
