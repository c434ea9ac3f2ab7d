"""Reproducibility: one call that makes a run repeatable (Chapter 1).

Every notebook starts with ``seed_everything(0)``. It seeds Python's, NumPy's and
PyTorch's generators and fixes the number of CPU threads, because a matrix
product summed in a different order rounds differently.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int, threads: int | None = 1) -> torch.Generator:
    """Seed ``random``, ``numpy`` and ``torch`` and fix torch's CPU thread count (Chapter 1).

    Args:
        seed: any non-negative int.
        threads: CPU threads for torch (``None`` leaves the current setting). One
            thread is the default: on a small shared CPU it is often the fastest,
            and results do not depend on how work is split.

    Returns:
        A ``torch.Generator`` seeded with ``seed``, for code that wants its own stream.

    Example:
        >>> g = seed_everything(0)
        >>> a = torch.rand(2); _ = seed_everything(0); torch.equal(a, torch.rand(2))
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative int")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads={threads!r} must be a positive int, or None to keep torch's setting")
        torch.set_num_threads(threads)
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)
