"""DoRA (Liu et al., 2024): weight-decomposed low-rank adaptation.

Write each output row of the weight as a magnitude times a unit direction,
``W = m · W / ‖W‖``. DoRA trains the magnitude ``m`` (one number per output) and
puts LoRA on the direction only:

``W' = m · (W + s·B A) / ‖W + s·B A‖``   (norms taken per output row, ``s`` the LoRA scaling).

At init ``B = 0`` and ``m = ‖W‖``, so ``W' = W``. The merged layer is an ordinary Linear.

**The detached norm (the default).** DoRA's §4.3 treats ``‖W + s·B A‖`` as a constant in the
backward pass (``.detach()``): the gradient then flows only through the numerator, which saves
the memory and time of differentiating the norm, and is what peft does by default. The paper
reports no accuracy loss. ``detach_norm=False`` keeps the undetached form (the exact gradient of
the formula above); it is kept as a named option for comparison (Chapter 11). Forward values are
identical either way; only the gradients of ``A`` and ``B`` differ.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from typing import Any, ClassVar, Mapping

from ..layer import InitA, LoRALinear, register_variant

__all__ = ["DoRALinear"]


@register_variant
class DoRALinear(LoRALinear):
    """LoRA on the direction of ``W`` plus a trainable per-output magnitude ``m`` (Chapter 11).

    Args:
        base: the ``nn.Linear`` to adapt (frozen, kept as ``self.base``).
        r, alpha, init_A, rslora: as :class:`lorakit.LoRALinear`.
        dropout: refused unless 0 (the weight is built explicitly, there is no separate branch input).
        detach_norm: treat ``‖W + ΔW‖`` as a constant in backward (DoRA §4.3, peft's default; the
            default here too). ``False``: differentiate through it.

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
        alpha: float | None = None,
        *,
        dropout: float = 0.0,
        init_A: InitA | None = None,
        rslora: bool = False,
        detach_norm: bool = True,
    ) -> None:
        if dropout:
            raise ValueError("DoRALinear computes the adapted weight explicitly and has no input dropout; use dropout=0")
        if not isinstance(detach_norm, bool):
            raise TypeError(f"detach_norm={detach_norm!r} must be True (DoRA §4.3, the default) or False")
        super().__init__(base, r, alpha, dropout=0.0, init_A=init_A, rslora=rslora)
        self.detach_norm = detach_norm
        norms = torch.linalg.vector_norm(base.weight.detach().to(self._compute_dtype()), dim=1)
        if (norms == 0).any():
            raise ValueError("the base weight has an all-zero row, whose direction is undefined; DoRA needs nonzero rows")
        self.m = nn.Parameter(norms.to(base.weight.dtype))
        self.register_buffer("_merge_norms", torch.zeros_like(norms), persistent=False)

    VARIANT: ClassVar[str] = "dora"
    ADAPTER_TENSORS: ClassVar[tuple[str, ...]] = ("A", "B", "m")
    OPTIONS: ClassVar[Mapping[str, Any]] = {"detach_norm": True}

    def _directional(self) -> torch.Tensor:
        return super().effective_weight()  # V = W + ΔW

    def effective_weight(self) -> torch.Tensor:
        """``W' = m · (W + ΔW) / ‖W + ΔW‖`` (rows), shape ``(out, in)``, differentiable in ``A``, ``B``, ``m``.

        With ``detach_norm`` (the default) the norm is a constant for autograd (DoRA §4.3).

        Example:
            >>> layer = DoRALinear(nn.Linear(4, 3), r=2)
            >>> torch.allclose(layer.effective_weight(), layer.base.weight, atol=1e-6)
            True
        """
        V = self._directional()
        norm = torch.linalg.vector_norm(V, dim=1, keepdim=True)
        if self.detach_norm:
            norm = norm.detach()
        return self.m.to(V.dtype).unsqueeze(1) * V / norm

    def adapted_weight(self) -> torch.Tensor:
        """The same as :meth:`effective_weight` (the name Chapter 11 uses)."""
        return self.effective_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return self.base(x)
        W = self.effective_weight()
        bias = self.base.bias
        return F.linear(x.to(W.dtype), W, None if bias is None else bias.to(W.dtype)).to(x.dtype)

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
