"""What a PEFT method costs at inference: FLOPs counted and latency timed (Chapter 7).

Split out of :mod:`lorakit.peft_methods` (the methods) as the chapter's measurement helpers:

* :func:`forward_flops` — floating-point operations of the matrix products in one forward pass;
* :func:`compare_latency` — the fastest of many forward passes of several models, timed in turns.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["forward_flops", "compare_latency"]


def forward_flops(model: nn.Module, X: torch.Tensor) -> int:
    """Floating-point operations of one ``model(X)`` call, counted, not timed: deterministic (Chapter 7).

    Counts matrix products (``mm``, ``addmm``, ``bmm``, …) as PyTorch's
    ``FlopCounterMode`` does; element-wise operations are not counted.

    Example:
        >>> forward_flops(nn.Linear(4, 3, bias=False), torch.zeros(2, 4))
        48
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(X)
    model.train(was_training)
    return int(counter.get_total_flops())


def compare_latency(
    models: dict[str, nn.Module], X: torch.Tensor, *, repeats: int = 30, warmup: int = 3
) -> dict[str, float]:
    """Fastest wall-clock seconds of ``model(X)`` for several models, timed in turns (a timing; Chapter 7).

    The models are timed round-robin (one call each, ``repeats`` rounds) and the
    minimum per model is kept, so a burst of load from other processes hits every
    model alike instead of one of them; the minimum is the least noisy estimate of
    the cost of the computation itself.

    Example:
        >>> times = compare_latency({"a": nn.Linear(4, 4), "b": nn.Identity()}, torch.zeros(1, 4), repeats=2)
        >>> sorted(times)
        ['a', 'b']
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    if not models:
        raise ValueError("models is empty: pass {name: model, ...}")
    states = {name: m.training for name, m in models.items()}
    best = {name: math.inf for name in models}
    with torch.no_grad():
        for m in models.values():
            m.eval()
            for _ in range(warmup):
                m(X)
        for _ in range(repeats):
            for name, m in models.items():
                start = time.perf_counter()
                m(X)
                best[name] = min(best[name], time.perf_counter() - start)
    for name, m in models.items():
        m.train(states[name])
    return best
