"""LoRA+ (Hayou, Ghosh & Yu, 2024): train ``B`` with a learning rate ``ratio`` times that of ``A`` (Chapter 11).

With ``B = 0`` at init and a wide layer, one learning rate for both factors is
inefficient: the paper's infinite-width analysis says ``B`` should move faster,
``lr_B = λ · lr_A`` with ``λ ≫ 1`` (they recommend ``λ = 2^4 = 16`` as a default).
LoRA+ is therefore not a new layer, only optimizer parameter groups.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..layer import LoRALinear

__all__ = ["loraplus_param_groups"]


def loraplus_param_groups(
    model: nn.Module, lr: float, ratio: float = 16.0, *, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for LoRA+: ``A`` (and other trainables) at ``lr``, ``B`` at ``ratio * lr`` (Chapter 11).

    Every trainable parameter of the model (every variant's adapter tensors, the modules to save)
    is put in exactly one group. ``B`` is the ``B`` factor of each :class:`LoRALinear` (subclasses
    included).

    Checked against peft's ``create_loraplus_optimizer`` in the tests: for LoRA's ``A`` and ``B`` the
    groups and learning rates are the same. The deliberate difference, which the test pins: peft puts
    *every* 1-D trainable tensor (biases, DoRA's magnitude ``m``) in ``B``'s fast group as a heuristic,
    lorakit only the ``B`` factors, which is what the paper's analysis is about; the rest train at ``lr``.

    Args:
        model: a model with LoRA layers (e.g. after :func:`lorakit.inject_lora`).
        lr: learning rate of ``A`` and of every other trainable parameter, > 0.
        ratio: ``λ = lr_B / lr_A``, > 0 (``1`` gives plain LoRA; the paper's default is 16).
        weight_decay: the same for both groups.

    Returns:
        ``[{"params": [...A...], "lr": lr}, {"params": [...B...], "lr": ratio * lr}]``, ready
        for ``torch.optim.AdamW(groups)``.

    Raises:
        ValueError: ``lr`` or ``ratio`` not a positive finite number, or the model has no LoRA layer.

    Example:
        >>> from lorakit import inject_lora
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> _ = inject_lora(model, "0", r=2)
        >>> groups = loraplus_param_groups(model, lr=1e-3, ratio=16)
        >>> [g["lr"] for g in groups], [len(g["params"]) for g in groups]
        ([0.001, 0.016], [1, 1])
    """
    for name, value in (("lr", lr), ("ratio", ratio)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value!r} must be a finite number > 0 (LoRA+ suggests lr≈1e-4…1e-3, ratio=16)")
    b_ids = {id(m.B) for m in model.modules() if isinstance(m, LoRALinear)}
    if not b_ids:
        raise ValueError("the model has no LoRA layer: call lorakit.inject_lora (or a variant) first")
    seen: set[int] = set()
    group_a, group_b = [], []
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (group_b if id(p) in b_ids else group_a).append(p)
    return [
        {"params": group_a, "lr": float(lr), "weight_decay": weight_decay},
        {"params": group_b, "lr": float(lr) * ratio, "weight_decay": weight_decay},
    ]
