"""DoRA (Liu et al., 2024): weight-decomposed low-rank adaptation.

Write each output row of the weight as a magnitude times a unit direction,
``W = m · W / ‖W‖``. DoRA trains the magnitude ``m`` (one number per output) and
puts LoRA on the direction only:

``W' = m · (W + s·B A) / ‖W + s·B A‖``   (norms taken per output row, ``s`` the LoRA scaling).

At init ``B = 0`` and ``m = ‖W‖``, so ``W' = W``. The merged layer is an ordinary Linear.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..layer import InitA, LoRALinear

__all__ = ["DoRALinear"]


class DoRALinear(LoRALinear):
    """LoRA on the direction of ``W`` plus a trainable per-output magnitude ``m``.

    Args:
        base: the ``nn.Linear`` to adapt (frozen, kept as ``self.base``).
        r, alpha, dropout, init_A, rslora: as :class:`lorakit.LoRALinear`.

    Attributes:
        m: trainable magnitude, shape ``(out,)``, initialised to the row norms ``‖W_i‖``.

    Shapes:
        input ``(..., in)`` → output ``(..., out)``; ``A`` is ``(r, in)``, ``B`` is ``(out, r)``.

    Example:
        >>> layer = DoRALinear(nn.Linear(4, 3), r=2, alpha=2)
        >>> layer.m.shape
        torch.Size([3])
        >>> x = torch.randn(5, 4)
        >>> torch.allclose(layer(x), layer.base(x), atol=1e-6)   # W' = W at init
        True
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float = 1.0,
        *,
        dropout: float = 0.0,
        init_A: InitA = "kaiming",
        rslora: bool = False,
    ) -> None:
        if dropout:
            raise ValueError("DoRALinear computes the adapted weight explicitly and has no input dropout; use dropout=0")
        super().__init__(base, r, alpha, dropout=0.0, init_A=init_A, rslora=rslora)
        norms = torch.linalg.vector_norm(base.weight.detach().to(self._compute_dtype()), dim=1)
        if (norms == 0).any():
            raise ValueError("the base weight has an all-zero row, whose direction is undefined; DoRA needs nonzero rows")
        self.m = nn.Parameter(norms.to(base.weight.dtype))
        self.register_buffer("_merge_norms", torch.zeros_like(norms), persistent=False)

    def _directional(self) -> torch.Tensor:
        return self.base.weight.to(self._compute_dtype()) + self.delta_weight()

    def adapted_weight(self) -> torch.Tensor:
        """``W' = m · (W + ΔW) / ‖W + ΔW‖`` (rows), shape ``(out, in)``, differentiable in ``A``, ``B``, ``m``."""
        V = self._directional()
        return self.m.to(V.dtype).unsqueeze(1) * V / torch.linalg.vector_norm(V, dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        W = self.adapted_weight()
        bias = self.base.bias
        return F.linear(x.to(W.dtype), W, None if bias is None else bias.to(W.dtype)).to(x.dtype)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The adapted weight ``W'`` in the base weight's dtype (what :meth:`merge` writes)."""
        merged = self.adapted_weight().to(self.base.weight.dtype)
        if not torch.isfinite(merged).all():
            raise ValueError("merging would put NaN/Inf into the base weight; nothing was changed — inspect A, B and m")
        return merged

    @torch.no_grad()
    def merge(self) -> None:
        """Write ``W'`` into the base weight; remembers ``‖W + ΔW‖`` so :meth:`unmerge` can undo it."""
        if self.merged:
            raise ValueError("this DoRA layer is already merged; call unmerge() first to merge again")
        merged = self.merged_weight()
        self._merge_norms.copy_(torch.linalg.vector_norm(self._directional(), dim=1))
        self.base.weight.copy_(merged)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Recover ``W = W' · ‖W + ΔW‖ / m − ΔW`` (float32 or wider arithmetic)."""
        if not self.merged:
            raise ValueError("this DoRA layer is not merged, so there is nothing to unmerge; call merge() first")
        dtype = self._compute_dtype()
        direction = self.base.weight.to(dtype) / self.m.to(dtype).unsqueeze(1)
        restored = direction * self._merge_norms.to(dtype).unsqueeze(1) - self.delta_weight()
        self.base.weight.copy_(restored.to(self.base.weight.dtype))
        self.merged = False
