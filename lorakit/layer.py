"""The LoRA layer: a frozen ``nn.Linear`` plus a trainable low-rank update.

Convention used throughout the book (see the notation page):

* the base layer computes ``y = x @ W.T + b`` with ``W`` of shape ``(out, in)``;
* LoRA adds ``ΔW = scaling * B @ A`` with ``A`` of shape ``(r, in)`` and ``B`` of
  shape ``(out, r)``, so the layer computes ``y = x @ (W + ΔW).T + b``;
* ``scaling = alpha / r`` (or ``alpha / sqrt(r)`` with ``rslora=True``).

``B`` starts at zero, so a freshly wrapped layer computes exactly what the base
layer computed: fine-tuning starts from the pretrained function.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LoRALinear", "check_hyperparameters"]

InitA = Literal["kaiming", "gaussian"]


def check_hyperparameters(r: int, alpha: float, dropout: float, in_features: int, out_features: int) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``r``, ``alpha`` and ``dropout`` suit an ``out × in`` weight.

    Example:
        >>> check_hyperparameters(r=2, alpha=4.0, dropout=0.0, in_features=8, out_features=4)  # valid: no error
        >>> check_hyperparameters(r=5, alpha=4.0, dropout=0.0, in_features=8, out_features=4)
        Traceback (most recent call last):
            ...
        ValueError: rank r=5 is invalid for a 4x8 weight: choose 1 <= r <= min(in, out) = 4
    """
    if isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"rank r must be an int, got {type(r).__name__}; pass e.g. r=8")
    max_rank = min(in_features, out_features)
    if not 1 <= r <= max_rank:
        raise ValueError(
            f"rank r={r} is invalid for a {out_features}x{in_features} weight: "
            f"choose 1 <= r <= min(in, out) = {max_rank}"
        )
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha={alpha!r} must be a finite number > 0; the usual choices are alpha=r or alpha=2*r")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} must be in [0, 1); use 0 to switch it off")


class LoRALinear(nn.Module):
    """Wrap an ``nn.Linear`` with a trainable rank-``r`` update ``ΔW = (alpha/r) B A``.

    The wrapped layer's weight and bias are frozen (``requires_grad=False``); only
    ``A`` (``r × in``) and ``B`` (``out × r``) train.

    Args:
        base: the layer to adapt. It is kept (not copied) as ``self.base``.
        r: the rank of the update, ``1 <= r <= min(in, out)``.
        alpha: the scale numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout probability on the input of the LoRA branch only.
        init_A: ``"kaiming"`` (uniform, as ``nn.Linear``; the default) or
            ``"gaussian"`` (normal with std ``1/r``).
        rslora: scale by ``alpha / sqrt(r)`` (rank-stabilised LoRA) instead of ``alpha / r``.

    Shapes:
        input ``(..., in)`` → output ``(..., out)``.

    Example:
        >>> layer = LoRALinear(nn.Linear(4, 3), r=2, alpha=2)
        >>> layer.A.shape, layer.B.shape
        (torch.Size([2, 4]), torch.Size([3, 2]))
        >>> x = torch.randn(5, 4)
        >>> torch.equal(layer(x), layer.base(x))   # B = 0 at init
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
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"LoRALinear wraps nn.Linear, got {type(base).__name__}; "
                "target only the Linear layers of the model (see lorakit.inject_lora)"
            )
        if init_A not in ("kaiming", "gaussian"):
            raise ValueError(f"init_A={init_A!r} is unknown: use 'kaiming' or 'gaussian'")
        check_hyperparameters(r, alpha, dropout, base.in_features, base.out_features)
        super().__init__()
        self.base = base
        self.r = r
        self.alpha = float(alpha)
        self.rslora = rslora
        self.init_A = init_A
        self.merged = False
        for p in self.base.parameters():
            p.requires_grad_(False)

        weight = base.weight
        self.A = nn.Parameter(torch.empty(r, base.in_features, device=weight.device, dtype=weight.dtype))
        # B is ``out × r`` like everywhere in the book, but stored as the transpose of a row-major
        # ``r × out`` tensor: F.linear(h, B) then multiplies by a plain row-major matrix, which this
        # CPU BLAS runs markedly faster for small r (measured with ``python -m lorakit.bench``).
        self.B = nn.Parameter(
            torch.zeros(r, base.out_features, device=weight.device, dtype=weight.dtype).t()
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora_parameters()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def scaling(self) -> float:
        """``alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA."""
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    def reset_lora_parameters(self) -> None:
        """Draw a fresh ``A`` and set ``B = 0`` (so ``ΔW = 0``)."""
        with torch.no_grad():
            if self.init_A == "kaiming":
                # The same draw nn.Linear uses for its own weight: U(-1/sqrt(in), 1/sqrt(in)).
                nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
            else:
                nn.init.normal_(self.A, std=1.0 / self.r)
            self.B.zero_()

    def _compute_dtype(self) -> torch.dtype:
        # At least float32: bf16/fp16 products would round the update away; float64 stays float64.
        return torch.promote_types(self.base.weight.dtype, torch.float32)

    def delta_weight(self) -> torch.Tensor:
        """The update ``ΔW = scaling · B A`` (shape ``(out, in)``), in float32 or wider."""
        dtype = self._compute_dtype()
        return (self.B.to(dtype) @ self.A.to(dtype)) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        # Scale the (tokens × r) intermediate rather than the (tokens × out) result: r is the small side.
        h = F.linear(self.dropout(x), self.A) * self.scaling
        return y + F.linear(h, self.B)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``W + ΔW`` in the base weight's dtype, summed in float32 (or float64) first.

        Raises ``ValueError`` if the result holds NaN or Inf (non-finite factors, or
        a sum too large for the weight's dtype).
        """
        dtype = self.base.weight.dtype
        merged = (self.base.weight.to(self._compute_dtype()) + self.delta_weight()).to(dtype)
        if not torch.isfinite(merged).all():
            raise ValueError(
                f"merging would put NaN/Inf into the {dtype} base weight (A or B holds non-finite values, "
                "or W + ΔW overflows the dtype); nothing was changed — inspect layer.A and layer.B, "
                "or reset them with reset_lora_parameters()"
            )
        return merged

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``ΔW`` into the base weight, so the layer costs what ``nn.Linear`` costs.

        Summed in float32 (float64 for float64 weights) whatever the weight's dtype.
        Raises ``ValueError`` and leaves the weight untouched if the layer is already
        merged or if the merged weight would hold NaN or Inf.
        """
        if self.merged:
            raise ValueError("this LoRA layer is already merged; call unmerge() first to merge again")
        self.base.weight.copy_(self.merged_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``ΔW`` from the base weight again (float32 or wider arithmetic).

        Exact up to one float32 rounding per entry. Raises ``ValueError`` if the layer
        is not merged.
        """
        if not self.merged:
            raise ValueError("this LoRA layer is not merged, so there is nothing to unmerge; call merge() first")
        restored = self.base.weight.to(self._compute_dtype()) - self.delta_weight()
        self.base.weight.copy_(restored.to(self.base.weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        kind = "alpha/sqrt(r)" if self.rslora else "alpha/r"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha:g}, scaling={self.scaling:g} ({kind}), merged={self.merged}"
        )
