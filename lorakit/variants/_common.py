"""Helpers shared by the variants: wrap Linear layers with any LoRA-like factory, measure update rank."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ..inject import MatchMode, select_linears, swap_in
from ..layer import LoRALinear

__all__ = ["wrap_linears", "update_rank"]


def wrap_linears(
    model: nn.Module,
    targets: str | Iterable[str],
    factory: Callable[[nn.Linear], LoRALinear],
    *,
    match: MatchMode = "suffix",
) -> list[str]:
    """Replace the targeted ``nn.Linear`` layers by ``factory(layer)``, in place.

    The generalisation of :func:`lorakit.inject_lora` to any :class:`LoRALinear`
    subclass: the same choice of layers (:func:`lorakit.inject.select_linears`) and the
    same swap (:func:`lorakit.inject.swap_in`), with ``factory`` in between. Every parameter of the model is frozen first; afterwards only the
    parameters the wrappers create (``A``, ``B``, and e.g. DoRA's magnitude) train.
    All wrappers are built before the model is touched, so an error changes nothing.

    Args:
        model: any module.
        targets: one layer name or several (matched as in :func:`lorakit.inject_lora`).
        factory: builds the wrapper from a Linear, e.g. ``lambda lin: DoRALinear(lin, r=4)``.
        match: ``"suffix"``, ``"exact"`` or ``"regex"``.

    Returns:
        The qualified names of the wrapped layers, in model order.

    Raises:
        ValueError: a target matches nothing, ``match`` is unknown, or a layer already carries LoRA.
        TypeError: a matched module is not an ``nn.Linear``, or the factory does not
            return a ``LoRALinear``.

    Example:
        >>> from lorakit.variants import DoRALinear
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> wrap_linears(model, ["0", "2"], lambda lin: DoRALinear(lin, r=1), match="exact")
        ['0', '2']
    """
    chosen = select_linears(model, targets, match)
    # Factories such as PiSSA rewrite the base weight: build them on copies, swap in only when all succeeded.
    originals = {name: module.weight.detach().clone() for name, module in chosen.items()}
    wrappers: dict[str, LoRALinear] = {}
    try:
        for name, module in chosen.items():
            wrapper = factory(module)
            if not isinstance(wrapper, LoRALinear):
                raise TypeError(f"factory returned a {type(wrapper).__name__}; it must return a LoRALinear (subclass)")
            wrappers[name] = wrapper
    except Exception:
        with torch.no_grad():
            for name, module in chosen.items():
                module.weight.copy_(originals[name])
        raise
    # The wrapper's own trainable parameters (A, B, DoRA's m, AdaLoRA's E), not its frozen base's.
    trainable = [p for w in wrappers.values() for p in w.parameters(recurse=False) if p.requires_grad]
    return swap_in(model, wrappers, trainable)


def update_rank(delta: torch.Tensor, rtol: float = 1e-3) -> int:
    """Numerical rank of a weight update: singular values above ``rtol`` × the largest.

    Args:
        delta: a 2-D update ``W_after - W_before`` of shape ``(out, in)``.
        rtol: relative threshold in ``(0, 1)``.

    Returns:
        The number of singular values ``> rtol * s_max`` (0 for an all-zero update).

    Example:
        >>> update_rank(torch.ones(5, 1) @ torch.ones(1, 4))
        1
    """
    if delta.dim() != 2:
        raise ValueError(f"delta must be a 2-D matrix (out, in), got shape {tuple(delta.shape)}")
    if not 0 < rtol < 1:
        raise ValueError(f"rtol={rtol} must be in (0, 1), e.g. 1e-3")
    s = torch.linalg.svdvals(delta.detach().double())
    if s.numel() == 0 or s[0] == 0:
        return 0
    return int((s > rtol * s[0]).sum())
