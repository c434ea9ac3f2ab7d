"""PiSSA (Meng, Wang & Zhang, 2024): principal singular values and vectors adaptation (Chapter 11).

Split ``W = U S Vᵀ`` into its top-``r`` part and the residual. PiSSA trains the
principal part, ``s·B A = U_r S_r V_rᵀ`` with ``B = U_r √(S_r/s)`` and
``A = √(S_r/s) V_rᵀ``, and freezes the residual ``W_res = W − U_r S_r V_rᵀ`` as the
base weight. At init ``W_res + s·B A = W`` (up to rounding): the model is unchanged,
but training starts on the directions that matter most instead of on ``B = 0``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..layer import LoRALinear, register_variant

__all__ = ["PiSSALinear"]


@register_variant
class PiSSALinear(LoRALinear):
    """LoRA whose ``A``, ``B`` start as the top-``r`` singular triplets of ``W``; the residual is frozen (Chapter 11).

    Its adapter holds ``A``, ``B`` *and* the rewritten base weight ``base.weight`` (the residual): without
    it, a fresh SVD of a different base would not reproduce the trained model. ``init_A`` is refused
    (the SVD is the initialisation).

    The base layer's weight is **overwritten in place** by the residual
    ``W − U_r S_r V_rᵀ`` (that is the method); ``merged_weight()`` gives back ``W`` at init.

    Args:
        base: the ``nn.Linear`` to adapt (frozen; its weight becomes the residual).
        r, alpha, dropout, rslora: as :class:`lorakit.LoRALinear` (scaling ``s = alpha/r``).
        init_A: must be left ``None``.

    Attributes:
        singular_values: buffer, all singular values of the original ``W`` (descending).

    Shapes:
        input ``(..., in)`` → output ``(..., out)``; ``A`` is ``(r, in)``, ``B`` is ``(out, r)``.

    Example:
        >>> base = nn.Linear(6, 4)
        >>> W = base.weight.detach().clone()
        >>> layer = PiSSALinear(base, r=2, alpha=2)
        >>> torch.allclose(layer.merged_weight(), W, atol=1e-6)
        True
    """

    VARIANT: ClassVar[str] = "pissa"
    ADAPTER_TENSORS: ClassVar[tuple[str, ...]] = ("A", "B", "base.weight")
    INIT_CHOICES: ClassVar[tuple[str, ...]] = ("svd",)
    INIT_NOTE: ClassVar[str] = "PiSSA initialises A and B from the SVD of W"

    def _init_variant(self) -> None:
        base = self.base
        self.register_buffer("singular_values", torch.zeros(min(base.in_features, base.out_features)))
        self._init_from_svd()

    @torch.no_grad()
    def _init_from_svd(self) -> None:
        # float64 throughout: the split W = W_res + s·B A is then exact to float32 rounding.
        W = self.base.weight.to(torch.float64)
        if not torch.isfinite(W).all():
            raise ValueError("the base weight holds NaN/Inf; PiSSA needs a finite W to take its SVD")
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        root = torch.sqrt(S[: self.r] / self.scaling)
        B, A = U[:, : self.r] * root, root.unsqueeze(1) * Vh[: self.r]
        self.B.copy_(B.to(self.B.dtype))
        self.A.copy_(A.to(self.A.dtype))
        principal = (self.B.to(torch.float64) @ self.A.to(torch.float64)) * self.scaling
        self.base.weight.copy_((W - principal).to(self.base.weight.dtype))
        self.singular_values.copy_(S.to(self.singular_values.dtype))

    def reset_lora_parameters(self) -> None:
        """Only meaningful before the SVD init: afterwards it would drop the principal part, so it refuses."""
        if hasattr(self, "singular_values"):
            raise ValueError(
                "PiSSA's A and B hold W's principal part: resetting them would change the model; "
                "build a new PiSSALinear from merged_weight() instead"
            )
        super().reset_lora_parameters()
