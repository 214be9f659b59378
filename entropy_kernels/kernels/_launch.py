"""Launch-configuration helpers shared by the kernel modules."""

import torch


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; 4 under the interpreter (CPU), a small "GPU" so
    that multi-program paths (row splits, vocabulary splits) are exercised there too."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4
