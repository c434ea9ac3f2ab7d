"""GaLore (Zhao et al., 2024): full-parameter training with gradients projected to rank ``r`` (Chapter 11).

For a weight ``W`` (``out × in``) with gradient ``G``, GaLore keeps a projector ``P``
from the top-``r`` singular vectors of ``G`` (refreshed every ``update_proj_gap``
steps), runs Adam on the small ``R = Pᵀ G`` (``r × in`` when ``out <= in``, else
``G P``, ``out × r``) and projects the Adam direction back: ``W ← W − lr · scale · P N``.
The optimizer state lives in the small space — ``2·r·in + out·r`` numbers instead of
``2·out·in`` — while every entry of ``W`` trains, and the total update, summed over
several projectors, can have rank above ``r``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from ..optim import adam_direction

__all__ = ["GaLoreAdamW", "adam_state_numel"]


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW whose 2-D parameters in groups with a ``rank`` entry are updated GaLore-style (Chapter 11).

    The Adam arithmetic is :func:`lorakit.optim.adam_direction` (``torch.optim.AdamW``'s). Checked
    against ``galore-torch``'s ``GaLoreAdamW`` in the tests; the deliberate differences, which the test
    pins: galore-torch (like Hugging Face's old AdamW) adds ``eps`` before the bias correction and
    applies weight decay after the update, lorakit does both as ``torch.optim.AdamW``; for a square
    weight lorakit projects on the left (``P`` from ``U``) where galore-torch projects on the right
    (both keep ``r × n`` moments).

    Args:
        params: parameters or groups. A group with ``"rank": r`` projects its 2-D
            parameters (others, e.g. biases, get plain AdamW).
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW``.
        update_proj_gap: steps between two projector refreshes (the paper's ``T``, 200).
        scale: multiplies the projected-back update (the paper's ``α``, 0.25).

    Shapes:
        state ``exp_avg``/``exp_avg_sq`` of a projected ``(out, in)`` weight: ``(r, in)``
        if ``out <= in`` else ``(out, r)``; ``projector``: ``(out, r)`` or ``(r, in)``.

    Example:
        >>> W = torch.nn.Parameter(torch.randn(4, 6))
        >>> opt = GaLoreAdamW([{"params": [W], "rank": 2}], lr=1e-2)
        >>> W.pow(2).sum().backward(); opt.step()
        >>> opt.state[W]["exp_avg"].shape, opt.state[W]["projector"].shape
        (torch.Size([2, 6]), torch.Size([4, 2]))
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        update_proj_gap: int = 200,
        scale: float = 0.25,
    ) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr={lr!r} must be a finite number > 0")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas={betas} must both be in [0, 1)")
        if update_proj_gap < 1:
            raise ValueError(f"update_proj_gap={update_proj_gap} must be >= 1 (the paper uses 200)")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        update_proj_gap=update_proj_gap, scale=scale, rank=None)
        super().__init__(params, defaults)
        for group in self.param_groups:
            rank = group["rank"]
            if rank is None:
                continue
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise ValueError(f"rank={rank!r} must be an int >= 1")
            for p in group["params"]:
                if p.dim() == 2 and rank > min(p.shape):
                    raise ValueError(f"rank={rank} exceeds min{tuple(p.shape)} of a parameter; choose rank <= {min(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One AdamW step; projected parameters keep their moments in the rank-``r`` space."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                project = group["rank"] is not None and p.dim() == 2
                if not state:
                    state["step"] = 0
                if project and state["step"] % group["update_proj_gap"] == 0:
                    r = group["rank"]
                    U, _, Vh = torch.linalg.svd(g.float(), full_matrices=False)
                    left = p.shape[0] <= p.shape[1]
                    state["projector"] = (U[:, :r] if left else Vh[:r]).to(p.dtype)
                if project:
                    P = state["projector"]
                    g = P.T @ g if p.shape[0] <= p.shape[1] else g @ P.T
                direction = adam_direction(state, g, (beta1, beta2), group["eps"])
                if project:
                    P = state["projector"]
                    direction = (P @ direction if p.shape[0] <= p.shape[1] else direction @ P) * group["scale"]
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(direction, alpha=-group["lr"])
        return loss


def adam_state_numel(optimizer: torch.optim.Optimizer) -> int:
    """The number of floats an optimizer keeps in its state (moments, projectors; step counters excluded) (Chapter 11).

    Example:
        >>> W = torch.nn.Parameter(torch.randn(4, 6))
        >>> opt = torch.optim.Adam([W]); W.sum().backward(); opt.step()
        >>> adam_state_numel(opt)
        48
    """
    total = 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if key != "step" and torch.is_tensor(value) and value.dim() > 0:
                total += value.numel()
    return total
