"""The QLoRA idea (Dettmers et al., 2023) in plain PyTorch: a 4-bit NormalFloat base, LoRA on top (Chapter 12).

* **NF4.** Pretrained weights are roughly normal, so the 16 code values are quantiles
  of ``N(0, 1)`` rescaled to ``[-1, 1]`` (with an exact 0): each code is used about
  equally often. :func:`nf4_table` computes them.
* **Block-wise absmax.** The weight is cut into blocks of 64 numbers; each block is
  divided by its largest absolute value (stored in fp32), then rounded to the nearest code.
  Cost: 4 bits + 32/64 = 0.5 bit per weight for the scales.
* **Double quantisation** (optional). The fp32 scales are themselves quantised in blocks
  of 256 (QLoRA uses 8-bit floats; here symmetric int8 around their mean, a simplification):
  8/64 + 32/(64·256) ≈ 0.127 bit per weight for the scales.
* **QLoRA.** The base stays 4-bit and frozen; it is dequantised on the fly for each
  forward pass, and only the LoRA factors (fp32) train.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..layer import InitA, LoRALinear, register_variant

__all__ = ["nf4_table", "NF4Tensor", "quantize_nf4", "dequantize_nf4", "NF4Linear", "QLoRALinear"]

_OFFSET = 0.5 * (1 / 32 + 1 / 30)  # QLoRA's δ: the outermost quantile used, 1 − δ ≈ 0.9677


def nf4_table() -> torch.Tensor:
    """The 16 NF4 code values, ascending, in ``[-1, 1]``, computed from normal quantiles (Chapter 12).

    Eight positive values are the normal quantiles at ``linspace(1−δ, 0.5, 9)[:-1]``, seven
    negative ones at ``linspace(1−δ, 0.5, 8)[:-1]`` (mirrored), plus an exact 0; the whole set is
    divided by its largest value (``δ = (1/32 + 1/30)/2``, as in QLoRA's code).

    Returns:
        A float32 tensor of shape ``(16,)``.

    Example:
        >>> t = nf4_table()
        >>> t.shape, t[0].item(), t[7].item(), t[15].item()
        (torch.Size([16]), -1.0, 0.0, 1.0)
    """
    q = torch.special.ndtri
    pos = q(torch.linspace(1 - _OFFSET, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -q(torch.linspace(1 - _OFFSET, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (values / values.max()).float()


@dataclass
class NF4Tensor:
    """A block-wise NF4-quantised tensor (two 4-bit codes per byte) (Chapter 12).

    Attributes:
        codes: ``uint8``, ``ceil(numel/2)`` bytes.
        absmax: fp32 scale per block ``(n_blocks,)``; ``None`` when double-quantised.
        absmax_codes, absmax_scale, absmax_mean: the double-quantised scales (int8 per block,
            fp32 per group of ``dq_block_size`` blocks, one fp32 mean).
        shape, block_size, dq_block_size: what :func:`dequantize_nf4` needs.

    Made by :func:`quantize_nf4`, not by hand.

    Example:
        >>> q = quantize_nf4(torch.randn(4, 32), block_size=64)
        >>> q.shape, q.codes.shape, q.absmax.shape, q.nbytes, q.bits_per_parameter
        ((4, 32), torch.Size([64]), torch.Size([2]), 72, 4.5)
        >>> dq = quantize_nf4(torch.randn(4, 32), double_quant=True)
        >>> dq.absmax is None, dq.absmax_codes.dtype, dq.block_absmax().shape
        (True, torch.int8, torch.Size([2]))
    """

    codes: torch.Tensor
    absmax: torch.Tensor | None
    absmax_codes: torch.Tensor | None
    absmax_scale: torch.Tensor | None
    absmax_mean: torch.Tensor | None
    shape: tuple[int, ...]
    block_size: int
    dq_block_size: int

    @property
    def nbytes(self) -> int:
        """The storage in bytes of the codes, the scales and any second-level scales."""
        parts = [self.codes, self.absmax, self.absmax_codes, self.absmax_scale, self.absmax_mean]
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    @property
    def bits_per_parameter(self) -> float:
        return 8 * self.nbytes / torch.Size(self.shape).numel()

    def block_absmax(self) -> torch.Tensor:
        """The (de-quantised) fp32 scale of every block."""
        if self.absmax is not None:
            return self.absmax
        assert self.absmax_codes is not None and self.absmax_scale is not None and self.absmax_mean is not None
        n = self.absmax_codes.numel()
        groups = self.absmax_codes.float().split(self.dq_block_size)
        scaled = torch.cat([c * s for c, s in zip(groups, self.absmax_scale)])
        return scaled[:n] + self.absmax_mean


def quantize_nf4(
    W: torch.Tensor, block_size: int = 64, *, double_quant: bool = False, dq_block_size: int = 256
) -> NF4Tensor:
    """Quantise ``W`` to block-wise NF4 (and optionally double-quantise the block scales) (Chapter 12).

    Args:
        W: any floating tensor (flattened row-major; the last block is zero-padded).
        block_size: numbers per absmax block, even, >= 2 (QLoRA: 64).
        double_quant: also quantise the fp32 absmax values to int8, in groups of ``dq_block_size``.
        dq_block_size: blocks per second-level scale (QLoRA: 256).

    Returns:
        An :class:`NF4Tensor`; :func:`dequantize_nf4` gives back an approximation of ``W``.

    Raises:
        TypeError: ``W`` is not floating point. ValueError: bad block sizes or non-finite ``W``.

    Example:
        >>> W = torch.randn(8, 16)
        >>> q = quantize_nf4(W)
        >>> q.codes.dtype, q.codes.numel(), q.bits_per_parameter
        (torch.uint8, 64, 4.5)
        >>> (dequantize_nf4(q) - W).abs().max().item() < 0.16 * W.abs().max().item()
        True
    """
    if not torch.is_tensor(W) or not W.is_floating_point():
        raise TypeError(f"W must be a floating-point tensor, got {type(W).__name__}; convert it with W.float()")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2 or block_size % 2:
        raise ValueError(f"block_size={block_size!r} must be an even int >= 2 (QLoRA uses 64)")
    if dq_block_size < 1:
        raise ValueError(f"dq_block_size={dq_block_size} must be >= 1 (QLoRA uses 256)")
    if W.numel() == 0 or not torch.isfinite(W).all():
        raise ValueError("W must be non-empty and finite (no NaN/Inf) to be quantised")
    flat = W.detach().float().flatten()
    pad = (-flat.numel()) % block_size
    blocks = F.pad(flat, (0, pad)).view(-1, block_size)
    absmax = blocks.abs().amax(dim=1)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    table = nf4_table().to(flat.device)
    midpoints = (table[1:] + table[:-1]) / 2
    idx = torch.bucketize(blocks / safe.unsqueeze(1), midpoints).to(torch.uint8).flatten()
    codes = (idx[0::2] << 4) | idx[1::2]
    q = NF4Tensor(codes, absmax, None, None, None, tuple(W.shape), block_size, dq_block_size)
    if double_quant:
        mean = absmax.mean()
        centred = absmax - mean
        groups = centred.split(dq_block_size)
        scales = torch.stack([g.abs().max() / 127 for g in groups])
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        a_codes = torch.cat([torch.round(g / s).clamp(-127, 127) for g, s in zip(groups, scales)]).to(torch.int8)
        q = NF4Tensor(codes, None, a_codes, scales, mean.reshape(1), tuple(W.shape), block_size, dq_block_size)
    return q


def dequantize_nf4(q: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rebuild the tensor: ``table[code] × block absmax``, in ``dtype``, with ``q.shape`` (Chapter 12).

    Example:
        >>> W = torch.randn(3, 5)
        >>> dequantize_nf4(quantize_nf4(W, block_size=4)).shape
        torch.Size([3, 5])
    """
    if not isinstance(q, NF4Tensor):
        raise TypeError(f"expected an NF4Tensor from quantize_nf4, got {type(q).__name__}")
    idx = torch.stack([q.codes >> 4, q.codes & 0x0F], dim=1).flatten().long()
    values = nf4_table().to(idx.device)[idx].view(-1, q.block_size) * q.block_absmax().unsqueeze(1)
    n = torch.Size(q.shape).numel()
    return values.flatten()[:n].view(q.shape).to(dtype)


class NF4Linear(nn.Module):
    """A frozen Linear whose weight is stored in NF4 and dequantised on every forward pass (Chapter 12).

    A teaching implementation: the packed codes live in ``self.quantized`` (an
    :class:`NF4Tensor`) on the device of the weight it quantised, not in registered buffers, so
    ``.to(device)`` and ``state_dict()`` do not carry them: move the ``nn.Linear`` to its device
    first, then quantise. Save the fp32 weights (or the adapter) instead.

    Args:
        linear: the layer to quantise (its weight is copied into NF4; the bias stays fp32, frozen).
        block_size, double_quant: as :func:`quantize_nf4`.

    Shapes:
        input ``(..., in)`` → output ``(..., out)``; ``weight`` (a property) is ``(out, in)`` fp32.

    Example:
        >>> layer = NF4Linear(nn.Linear(64, 8))
        >>> layer(torch.randn(2, 64)).shape, layer.weight_nbytes
        (torch.Size([2, 8]), 288)
    """

    def __init__(self, linear: nn.Linear, block_size: int = 64, *, double_quant: bool = False) -> None:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"NF4Linear quantises an nn.Linear, got {type(linear).__name__}")
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.quantized = quantize_nf4(linear.weight, block_size, double_quant=double_quant)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight ``(out, in)`` (fp32, no gradient)."""
        return dequantize_nf4(self.quantized)

    @property
    def weight_nbytes(self) -> int:
        """The storage in bytes of the 4-bit weight (codes and scales)."""
        return self.quantized.nbytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{self.quantized.bits_per_parameter:.4g} bits/weight")


@register_variant
class QLoRALinear(LoRALinear):
    """LoRA on a 4-bit NF4 base: the frozen base is an :class:`NF4Linear`, ``A``, ``B`` train in fp32 (Chapter 12).

    The adapter holds ``A`` and ``B`` only: quantisation is deterministic, so the same base model
    quantised again gives the same 4-bit weight. It cannot be merged (``MERGEABLE = False``).

    Args:
        base: the full-precision ``nn.Linear``; it is quantised and not kept.
        r, alpha, dropout, init_A, rslora: as :class:`lorakit.LoRALinear`.
        block_size, double_quant: as :func:`quantize_nf4`.

    Shapes:
        input ``(..., in)`` → output ``(..., out)``; ``A`` is ``(r, in)``, ``B`` is ``(out, r)``.

    Example:
        >>> layer = QLoRALinear(nn.Linear(64, 8), r=2)
        >>> type(layer.base).__name__, layer(torch.randn(3, 64)).shape
        ('NF4Linear', torch.Size([3, 8]))
    """

    VARIANT: ClassVar[str] = "qlora"
    OPTIONS: ClassVar[Mapping[str, Any]] = {"block_size": 64, "double_quant": False}
    MERGEABLE: ClassVar[bool] = False

    def __init__(
        self, base: nn.Linear, r: int, alpha: float | None = None, *, dropout: float = 0.0,
        init_A: InitA | None = None, rslora: bool = False, block_size: int = 64, double_quant: bool = False,
    ) -> None:
        super().__init__(base, r, alpha, dropout=dropout, init_A=init_A, rslora=rslora)
        self.block_size, self.double_quant = block_size, bool(double_quant)
        self.base = NF4Linear(base, block_size, double_quant=double_quant)  # type: ignore[assignment]

    def merge(self) -> None:
        """Refused: adding ``ΔW`` to a 4-bit weight would re-quantise (and lose) it; use :meth:`to_linear`."""
        raise ValueError(
            "a QLoRA layer cannot merge into its 4-bit base without re-quantising the update away; "
            "call to_linear() to get an fp32 nn.Linear holding dequant(W) + ΔW"
        )

    def unmerge(self) -> None:
        raise ValueError("a QLoRA layer is never merged; there is nothing to unmerge")

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """An fp32 ``nn.Linear`` with weight ``dequant(W_NF4) + ΔW`` (and the base's bias)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None)
        out.weight.copy_(self.merged_weight())
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        return out
