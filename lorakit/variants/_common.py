"""Helpers shared by the variants: wrap Linear layers in a variant layer, measure update rank (Chapter 11)."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..config import LoraConfig, MatchMode
from ..inject import build_and_swap, inject_adapter, select_linears
from ..layer import LoRALinear

__all__ = ["wrap_linears", "update_rank"]


def wrap_linears(
    model: nn.Module,
    targets: str | Iterable[str],
    variant: str | Callable[[nn.Linear], LoRALinear],
    *,
    match: MatchMode = "suffix",
    **settings: Any,
) -> list[str]:
    """Wrap the targeted ``nn.Linear`` layers in the layer of ``variant``, in place (Chapter 11).

    ``wrap_linears(model, targets, "dora", r=4)`` is
    ``inject_adapter(model, LoraConfig(variant="dora", r=4, target_modules=targets))``: the one
    injection path, through the registry. ``settings`` are :class:`lorakit.LoraConfig` fields
    (``r``, ``alpha``, ``dropout``, ``init_A``, ``rslora``, ``variant_options``, ``modules_to_save``).
    For layers that are not registered, ``variant`` may also be a builder ``layer -> LoRALinear``
    (then ``settings`` must be empty); it goes through the same all-or-nothing
    :func:`lorakit.inject.build_and_swap`.

    Returns:
        The qualified names of the wrapped layers, in model order.

    Raises:
        ValueError: a target matches nothing, ``match`` or ``variant`` is unknown, a layer already
            carries LoRA, or a setting is invalid.
        TypeError: a matched module is not an ``nn.Linear``, or a builder does not return a ``LoRALinear``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> wrap_linears(model, ["0", "2"], "dora", r=1, match="exact")
        ['0', '2']
        >>> type(model[2]).__name__
        'DoRALinear'
    """
    if isinstance(variant, str):
        targets = [targets] if isinstance(targets, str) else list(targets)
        return inject_adapter(model, LoraConfig(target_modules=tuple(targets), match=match, variant=variant, **settings))
    if settings:
        raise TypeError(f"settings {sorted(settings)} go with a variant name, not with a builder; pass a name such as 'dora'")
    return build_and_swap(model, select_linears(model, targets, match), variant)


def update_rank(delta: torch.Tensor, rtol: float = 1e-3) -> int:
    """Numerical rank of a weight update: singular values above ``rtol`` × the largest (Chapter 11).

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
