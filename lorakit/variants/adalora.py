"""AdaLoRA (Zhang et al., 2023): an SVD-shaped adapter whose rank budget is pruned during training (Chapter 11).

The update is written like an SVD, ``ΔW = s · P diag(λ) Q`` with ``P`` (``out × r``,
stored as ``B``), ``Q`` (``r × in``, stored as ``A``) and the "singular values" ``λ``
(stored as ``E``, initialised to 0). A regulariser ``‖PᵀP − I‖² + ‖QQᵀ − I‖²`` keeps
``P``, ``Q`` near-orthogonal, so zeroing one ``λ_i`` removes one rank-1 direction
cleanly. Every few steps :class:`AdaLoRAController` scores each triplet
``(P_{:,i}, λ_i, Q_{i,:})`` by a smoothed sensitivity ``|θ · ∂L/∂θ|`` and keeps only
the ``b(t)`` most important triplets over **all** layers, with the budget ``b(t)``
falling on a cubic schedule from the initial total rank to the target.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..layer import LoRALinear, register_variant

__all__ = ["AdaLoRALinear", "AdaLoRAController", "orthogonal_regularizer"]


@register_variant
class AdaLoRALinear(LoRALinear):
    """LoRA in SVD form, ``ΔW = s · B diag(E) A`` (``B`` = P, ``E`` = Λ, ``A`` = Q) (Chapter 11).

    The adapter holds ``A``, ``B`` and ``E``; the pruning state is ``E`` itself (a pruned triplet has
    ``λ_i = 0``), so a saved adapter keeps the ranks it was pruned to. The controller's smoothed
    scores are training state, like an optimizer's moments, and are not saved.

    Args:
        base: the ``nn.Linear`` to adapt (frozen).
        r: the initial rank (number of triplets) of this layer.
        alpha: scaling numerator, ``s = alpha / r`` (``None``: ``alpha = r``).
        dropout, rslora: as :class:`lorakit.LoRALinear`.
        init_A: must be left ``None`` (A, B start N(0, 0.02²) as in the paper's code).

    Attributes:
        E: trainable singular values, shape ``(r,)``, zero at init (so ``ΔW = 0``).

    Shapes:
        input ``(..., in)`` → output ``(..., out)``; ``A`` is ``(r, in)``, ``B`` is ``(out, r)``.

    Example:
        >>> layer = AdaLoRALinear(nn.Linear(6, 4), r=3)
        >>> layer.E.shape, layer.active_rank
        (torch.Size([3]), 0)
    """

    VARIANT: ClassVar[str] = "adalora"
    ADAPTER_TENSORS: ClassVar[tuple[str, ...]] = ("A", "B", "E")
    INIT_CHOICES: ClassVar[tuple[str, ...]] = ("normal",)
    INIT_NOTE: ClassVar[str] = "AdaLoRA draws A and B from N(0, 0.02²) and starts E at 0"

    def _init_variant(self) -> None:
        self.E = nn.Parameter(torch.zeros(self.r, device=self.A.device, dtype=self.A.dtype))

    def reset_lora_parameters(self) -> None:
        """``A``, ``B`` ~ N(0, 0.02²) as in the paper's code, ``E = 0`` (so ``ΔW = 0``)."""
        with torch.no_grad():
            nn.init.normal_(self.A, std=0.02)
            nn.init.normal_(self.B, std=0.02)
            if hasattr(self, "E"):
                self.E.zero_()

    @property
    def active_rank(self) -> int:
        """The number of triplets with ``λ_i ≠ 0``."""
        return int((self.E.detach() != 0).sum())

    def delta_weight(self) -> torch.Tensor:
        dtype = self._compute_dtype()
        return (self.B.to(dtype) * self.E.to(dtype)) @ self.A.to(dtype) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged or self.disabled:
            return y
        h = F.linear(self.dropout(x), self.A) * (self.E * self.scaling)
        return y + F.linear(h, self.B)


def orthogonal_regularizer(model: nn.Module) -> torch.Tensor:
    """``Σ_layers ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F`` over every :class:`AdaLoRALinear`; add ``γ`` × this to the loss (Chapter 11).

    Example:
        >>> model = nn.Sequential(AdaLoRALinear(nn.Linear(6, 4), r=2))
        >>> orthogonal_regularizer(model).item() > 0
        True
    """
    terms = []
    for m in model.modules():
        if isinstance(m, AdaLoRALinear):
            eye = torch.eye(m.r, device=m.A.device, dtype=m.A.dtype)
            terms.append(((m.B.T @ m.B - eye) ** 2).sum() + ((m.A @ m.A.T - eye) ** 2).sum())
    if not terms:
        raise ValueError("the model has no AdaLoRALinear layer: wrap its Linear layers with AdaLoRALinear first")
    return torch.stack(terms).sum()


class AdaLoRAController:
    """Score the triplets of every :class:`AdaLoRALinear` and prune to a shrinking total rank budget (Chapter 11).

    Budget at step ``t`` (``b0`` = initial total rank, ``T`` = ``total_steps``):
    ``b0`` during the first ``warmup_steps``; then
    ``target + (b0 − target)(1 − (t − t_i)/(T − t_i − t_f))³``; ``target`` for the last ``final_steps``.

    Importance of a parameter entry: ``Ī ← β₁Ī + (1−β₁)|θ·g|``, ``Ū ← β₂Ū + (1−β₂)|θ·g − Ī|``,
    ``score = Ī·Ū``; of triplet ``i``: ``score(λ_i) + mean score(P_{:,i}) + mean score(Q_{i,:})``.

    Args:
        model: holds the AdaLoRA layers.
        target_rank: total number of triplets kept at the end, ``1 <= target_rank <= b0``.
        total_steps, warmup_steps, final_steps: the schedule, ``warmup + final < total``.
        beta1, beta2: smoothing factors in ``[0, 1)``.
        mask_every: prune every this many steps.

    Example:
        >>> model = nn.Sequential(AdaLoRALinear(nn.Linear(6, 4), r=3))
        >>> ctl = AdaLoRAController(model, target_rank=1, total_steps=10, warmup_steps=2, final_steps=2)
        >>> [ctl.budget(t) for t in (0, 2, 3, 8)]
        [3, 3, 2, 1]
    """

    def __init__(
        self,
        model: nn.Module,
        target_rank: int,
        total_steps: int,
        *,
        warmup_steps: int = 0,
        final_steps: int = 0,
        beta1: float = 0.85,
        beta2: float = 0.85,
        mask_every: int = 1,
    ) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, AdaLoRALinear)]
        if not self.layers:
            raise ValueError("the model has no AdaLoRALinear layer: wrap its Linear layers with AdaLoRALinear first")
        self.initial_rank = sum(m.r for m in self.layers)
        if not 1 <= target_rank <= self.initial_rank:
            raise ValueError(f"target_rank={target_rank} must be in [1, {self.initial_rank}] (the initial total rank)")
        if warmup_steps < 0 or final_steps < 0 or warmup_steps + final_steps >= total_steps:
            raise ValueError(
                f"need 0 <= warmup_steps ({warmup_steps}) + final_steps ({final_steps}) < total_steps ({total_steps})"
            )
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1) or mask_every < 1:
            raise ValueError("beta1, beta2 must be in [0, 1) and mask_every >= 1")
        self.target_rank, self.total_steps = target_rank, total_steps
        self.warmup_steps, self.final_steps = warmup_steps, final_steps
        self.beta1, self.beta2, self.mask_every = beta1, beta2, mask_every
        self.steps = 0
        self._ipt: dict[int, torch.Tensor] = {}
        self._unc: dict[int, torch.Tensor] = {}
        self._final_mask: list[torch.Tensor] | None = None

    def budget(self, step: int) -> int:
        """The total number of triplets allowed at ``step``."""
        t_i, t_f, T = self.warmup_steps, self.final_steps, self.total_steps
        if step < t_i:
            return self.initial_rank
        if step >= T - t_f:
            return self.target_rank
        frac = 1 - (step - t_i) / (T - t_i - t_f)
        return int(round(self.target_rank + (self.initial_rank - self.target_rank) * frac**3))

    def _score(self, p: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ipt = (p * p.grad).abs() if p.grad is not None else torch.zeros_like(p)
            key = id(p)
            if key not in self._ipt:
                self._ipt[key], self._unc[key] = torch.zeros_like(p), torch.zeros_like(p)
            self._ipt[key].mul_(self.beta1).add_(ipt, alpha=1 - self.beta1)
            self._unc[key].mul_(self.beta2).add_((ipt - self._ipt[key]).abs(), alpha=1 - self.beta2)
            return self._ipt[key] * self._unc[key]

    @torch.no_grad()
    def step(self) -> int:
        """Update the scores (call after ``backward``, gradients present) and prune; returns the budget used.

        Pruning sets the ``λ_i`` of the least important triplets to 0. As in the paper's code, a pruned
        triplet may regrow (its ``λ_i`` still gets gradients) and be kept at the next pruning; during the
        last ``final_steps`` the mask is frozen.
        """
        t = self.steps
        self.steps += 1
        scores = [self._score(m.E) + self._score(m.A).mean(1) + self._score(m.B).mean(0) for m in self.layers]
        if t >= self.total_steps - self.final_steps and self._final_mask is not None:
            for m, keep in zip(self.layers, self._final_mask):
                m.E.mul_(keep)
            return self.target_rank
        b = self.budget(t)
        if t < self.warmup_steps or t % self.mask_every:
            return b
        flat = torch.cat(scores)
        keep_flat = torch.zeros_like(flat, dtype=torch.bool)
        keep_flat[torch.topk(flat, b).indices] = True
        masks = list(keep_flat.split([m.r for m in self.layers]))
        for m, keep in zip(self.layers, masks):
            m.E.mul_(keep.to(m.E.dtype))
        if t >= self.total_steps - self.final_steps - 1:
            self._final_mask = [k.to(m.E.dtype) for m, k in zip(self.layers, masks)]
        return b

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Call :meth:`step` automatically after every ``optimizer.step()`` (so :func:`lorakit.fit` needs no change)."""
        optimizer.register_step_post_hook(lambda *_: self.step())

    def rank_pattern(self) -> list[int]:
        """The active rank of each layer, in model order."""
        return [m.active_rank for m in self.layers]
