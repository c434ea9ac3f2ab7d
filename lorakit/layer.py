"""The LoRA layer: a frozen ``nn.Linear`` plus a trainable low-rank update.

Convention used throughout the book (see the notation page):

* the base layer computes ``y = x @ W.T + b`` with ``W`` of shape ``(out, in)``;
* LoRA adds ``ΔW = scaling * B @ A`` with ``A`` of shape ``(r, in)`` and ``B`` of
  shape ``(out, r)``, so the layer computes ``y = x @ (W + ΔW).T + b``;
* ``scaling = alpha / r`` (or ``alpha / sqrt(r)`` with ``rslora=True``).

``B`` starts at zero, so a freshly wrapped layer computes exactly what the base
layer computed: fine-tuning starts from the pretrained function (Chapter 1).

Every LoRA-family layer (the variants of Chapter 11, QLoRA of Chapter 12) is a subclass of
:class:`LoRALinear` registered under a variant name (:func:`register_variant`); one injection path,
:func:`lorakit.inject_adapter`, builds any of them from a :class:`lorakit.LoraConfig`. Each layer type
declares the tensors that make up its adapter (``ADAPTER_TENSORS``) and the options it takes
(``OPTIONS``), so saving, loading and the optimizers handle every variant the same way.
"""

from __future__ import annotations

import math
import operator
from typing import Any, ClassVar, Literal, Mapping

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LoRALinear", "check_hyperparameters", "check_rank_type", "check_alpha", "check_dropout", "register_variant", "variant_class", "variant_names"]

InitA = Literal["kaiming", "gaussian"]


def check_hyperparameters(r: int, alpha: float | None, dropout: float, in_features: int, out_features: int) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``r``, ``alpha`` and ``dropout`` suit an ``out × in`` weight (Chapter 1).

    Example:
        >>> check_hyperparameters(r=2, alpha=4.0, dropout=0.0, in_features=8, out_features=4)  # valid: no error
        >>> check_hyperparameters(r=5, alpha=4.0, dropout=0.0, in_features=8, out_features=4)
        Traceback (most recent call last):
            ...
        ValueError: rank r=5 is invalid for a 4x8 weight: choose 1 <= r <= min(in, out) = 4
    """
    check_rank_type(r)
    max_rank = min(in_features, out_features)
    if not 1 <= r <= max_rank:
        raise ValueError(
            f"rank r={r} is invalid for a {out_features}x{in_features} weight: "
            f"choose 1 <= r <= min(in, out) = {max_rank}"
        )
    if alpha is not None:
        check_alpha(alpha)
    check_dropout(dropout)


def check_rank_type(r: object) -> None:
    """``TypeError`` unless ``r`` is an int (not a bool) (Chapter 1).

    Example:
        >>> check_rank_type(2.0)
        Traceback (most recent call last):
            ...
        TypeError: rank r must be an int, got float; pass e.g. r=8
    """
    if isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"rank r must be an int, got {type(r).__name__}; pass e.g. r=8")


def check_alpha(alpha: object) -> float:
    """``alpha`` as a float, or ``ValueError`` unless it is a finite number > 0 (Chapter 1).

    Example:
        >>> check_alpha(4)
        4.0
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha={alpha!r} must be a finite number > 0; the usual choices are alpha=r or alpha=2*r")
    return float(alpha)


def check_dropout(dropout: object) -> float:
    """``dropout`` as a float, or ``ValueError`` unless it lies in ``[0, 1)`` (Chapter 1).

    Example:
        >>> check_dropout(0.1)
        0.1
    """
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} must be in [0, 1); use 0 to switch it off")
    return float(dropout)


class _FusedLoRALinear(torch.autograd.Function):
    """``y = x Wᵀ + b + s·(x Aᵀ) Bᵀ`` for a frozen ``W``, ``b``, with the LoRA GEMMs accumulating in place.

    Autograd on the plain expression writes the branch's ``tokens × out`` output and then adds it to
    the base output, and in the backward pass sums two ``tokens × in`` input gradients: two extra
    passes over the largest tensors of the layer. Here the small GEMM adds straight into the big
    GEMM's result (BLAS ``beta = 1``), in both directions; the products are the same ones autograd
    computes. Used by :meth:`LoRALinear.forward` when it applies and pays (see ``_fusable``).
    """

    @staticmethod
    def forward(ctx, x, W, bias, A, B, scaling):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])
        h = torch.mm(x2, A.t()).mul_(scaling)  # (tokens, r): scale the small side
        y = torch.addmm(bias, x2, W.t()) if bias is not None else torch.mm(x2, W.t())
        y.addmm_(h, B.t())  # y += h Bᵀ, in place
        ctx.save_for_backward(x2, W, A, B, h)
        ctx.scaling = scaling
        return y.view(*x.shape[:-1], W.shape[0])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x2, W, A, B, h = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        dh = torch.mm(g, B).mul_(ctx.scaling)  # (tokens, r)
        dx = dA = dB = None
        if ctx.needs_input_grad[0]:
            dx = torch.mm(g, W).addmm_(dh, A).view(*grad.shape[:-1], W.shape[1])
        if ctx.needs_input_grad[3]:
            dA = torch.mm(dh.t(), x2)
        if ctx.needs_input_grad[4]:
            dB = torch.mm(h.t(), g).t()  # laid out like B (the transpose of a row-major r × out)
        return dx, None, None, dA, dB, None


#: Fuse only when gradients are being recorded and the layer's output has at least this many entries:
#: below it, a custom autograd function's fixed cost (tens of µs on this book's CPU) outweighs the memory
#: passes it saves; the break-even measured here was near 256 tokens × 64 outputs (2**14).
FUSE_MIN_OUTPUT_ELEMENTS = 1 << 15


def _autocast_on(x: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


_VARIANTS: dict[str, type["LoRALinear"]] = {}


def register_variant(cls: type["LoRALinear"]) -> type["LoRALinear"]:
    """Class decorator: make ``cls`` the layer of the variant named ``cls.VARIANT`` (Chapter 11).

    The registry is the only map from a variant name (``"lora"``, ``"dora"``, …) to a layer class;
    :func:`lorakit.inject_adapter` and the adapter loaders look names up here.

    Example:
        >>> variant_class("lora").__name__
        'LoRALinear'
    """
    if not (isinstance(cls, type) and issubclass(cls, LoRALinear)):
        raise TypeError(f"register_variant decorates LoRALinear subclasses, got {cls!r}")
    existing = _VARIANTS.get(cls.VARIANT)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"variant {cls.VARIANT!r} is already registered to {existing.__name__}; pick another name")
    _VARIANTS[cls.VARIANT] = cls
    return cls


def _load_builtin_variants() -> None:
    from . import variants  # noqa: F401  (registers DoRA, PiSSA, AdaLoRA, QLoRA)


def variant_names() -> tuple[str, ...]:
    """The registered variant names, sorted (Chapter 11).

    Example:
        >>> variant_names()
        ('adalora', 'dora', 'lora', 'pissa', 'qlora')
    """
    _load_builtin_variants()
    return tuple(sorted(_VARIANTS))


def variant_class(name: str) -> type["LoRALinear"]:
    """The layer class registered as variant ``name``; ``ValueError`` listing the names if unknown (Chapter 11).

    Example:
        >>> variant_class("dora").__name__
        'DoRALinear'
        >>> variant_class("lorra")
        Traceback (most recent call last):
            ...
        ValueError: variant='lorra' is unknown: choose one of 'adalora', 'dora', 'lora', 'pissa', 'qlora'
    """
    _load_builtin_variants()
    if not isinstance(name, str) or name not in _VARIANTS:
        raise ValueError(f"variant={name!r} is unknown: choose one of " + ", ".join(repr(n) for n in variant_names()))
    return _VARIANTS[name]


class LoRALinear(nn.Module):
    """Wrap an ``nn.Linear`` with a trainable rank-``r`` update ``ΔW = (alpha/r) B A`` (Chapter 1).

    The wrapped layer's weight and bias are frozen (``requires_grad=False``); only
    ``A`` (``r × in``) and ``B`` (``out × r``) train.

    Every variant (a registered subclass) takes the same arguments and refuses, with a
    ``ValueError``, one it cannot honour.

    Args:
        base: the layer to adapt. It is kept (not copied) as ``self.base``.
        r: the rank of the update, ``1 <= r <= min(in, out)``.
        alpha: the scale numerator; the update is multiplied by ``alpha / r``. ``None`` (the
            default everywhere in lorakit) means ``alpha = r``: see :class:`lorakit.LoraConfig`.
        dropout: dropout probability on the input of the LoRA branch only.
        init_A: ``"kaiming"`` (uniform, as ``nn.Linear``; the default, also for ``None``) or
            ``"gaussian"`` (normal with std ``1/r``).
        rslora: scale by ``alpha / sqrt(r)`` (rank-stabilised LoRA) instead of ``alpha / r``.

    Class attributes:
        VARIANT: the registry name (``"lora"``).
        ADAPTER_TENSORS: the attribute paths of the tensors an adapter file holds for this layer.
        OPTIONS: the variant-specific keyword options and their defaults (none here).

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

    VARIANT: ClassVar[str] = "lora"
    ADAPTER_TENSORS: ClassVar[tuple[str, ...]] = ("A", "B")
    OPTIONS: ClassVar[Mapping[str, Any]] = {}
    INIT_CHOICES: ClassVar[tuple[str, ...]] = ("kaiming", "gaussian")
    #: Why a variant with a single ``INIT_CHOICES`` entry refuses any other ``init_A``.
    INIT_NOTE: ClassVar[str] = ""
    #: ``False`` for a layer whose update cannot be added into its base (QLoRA's 4-bit weight).
    MERGEABLE: ClassVar[bool] = True

    @classmethod
    def from_config(cls, base: nn.Linear, config: Any) -> "LoRALinear":
        """Build this layer on ``base`` from a :class:`lorakit.LoraConfig` (the one constructor call) (Chapter 1).

        Example:
            >>> from lorakit import LoraConfig
            >>> LoRALinear.from_config(nn.Linear(4, 3), LoraConfig(r=2, target_modules=("0",))).scaling
            1.0
        """
        return cls(base, config.r, config.alpha, dropout=config.dropout, init_A=config.init_A,
                   rslora=config.rslora, **dict(config.variant_options))

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float | None = None,
        *,
        dropout: float = 0.0,
        init_A: InitA | None = None,
        rslora: bool = False,
    ) -> None:
        if init_A is None:
            init_A = self.INIT_CHOICES[0]
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"LoRALinear wraps nn.Linear, got {type(base).__name__}; "
                "target only the Linear layers of the model (see lorakit.inject_lora)"
            )
        if init_A not in self.INIT_CHOICES:
            if len(self.INIT_CHOICES) == 1:  # a variant with its own initialisation (PiSSA, AdaLoRA)
                raise ValueError(
                    f"{type(self).__name__} cannot honour init_A={init_A!r}: {self.INIT_NOTE}; leave init_A unset"
                )
            choices = " or ".join(repr(c) for c in self.INIT_CHOICES)
            raise ValueError(f"init_A={init_A!r} is unknown for {type(self).__name__}: use {choices}")
        check_hyperparameters(r, alpha, dropout, base.in_features, base.out_features)
        super().__init__()
        self.base = base
        self.r = r
        self.alpha = float(r if alpha is None else alpha)
        self.rslora = rslora
        self.init_A = init_A
        self.merged = False
        #: ``True`` inside :func:`lorakit.disable_adapters`: the layer then runs its base unchanged.
        self.disabled = False
        for p in self.base.parameters():
            p.requires_grad_(False)

        weight = base.weight
        self.A = nn.Parameter(torch.empty(r, base.in_features, device=weight.device, dtype=weight.dtype))
        # B is ``out × r`` like everywhere in the book, but stored as the transpose of a row-major
        # ``r × out`` tensor: F.linear(h, B) then multiplies by a plain row-major matrix, which this
        # CPU BLAS runs markedly faster for small r (measured with ``python -m lorakit.book.bench``).
        self.B = nn.Parameter(
            torch.zeros(r, base.out_features, device=weight.device, dtype=weight.dtype).t()
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora_parameters()
        self._init_variant()

    def _init_variant(self) -> None:
        """Hook for a variant's own tensors, run at the end of ``__init__`` (PiSSA's SVD, AdaLoRA's ``E``)."""

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
            if self.init_A == "gaussian":
                nn.init.normal_(self.A, std=1.0 / self.r)
            else:
                # The same draw nn.Linear uses for its own weight: U(-1/sqrt(in), 1/sqrt(in)). (A variant with
                # its own init, PiSSA, overwrites it afterwards; drawing it keeps the random stream as before.)
                nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
            self.B.zero_()

    def _compute_dtype(self) -> torch.dtype:
        # At least float32: bf16/fp16 products would round the update away; float64 stays float64.
        return torch.promote_types(self.base.weight.dtype, torch.float32)

    def delta_weight(self) -> torch.Tensor:
        """The update ``ΔW = scaling · B A`` (shape ``(out, in)``), in float32 or wider."""
        dtype = self._compute_dtype()
        return (self.B.to(dtype) @ self.A.to(dtype)) * self.scaling

    def effective_weight(self) -> torch.Tensor:
        """The weight the unmerged layer applies, ``W + ΔW`` (shape ``(out, in)``, float32 or wider) (Chapter 1).

        Differentiable in the adapter tensors. Variants override it (DoRA: ``m · V / ‖V‖``); merging,
        :func:`lorakit.book.compare.effective_weight` and the chapters' update ranks all use it.

        Example:
            >>> layer = LoRALinear(nn.Linear(4, 3), r=2)
            >>> torch.equal(layer.effective_weight(), layer.base.weight.detach())  # B = 0 at init
            True
        """
        return self.base.weight.to(self._compute_dtype()) + self.delta_weight()

    @property
    def dropout_p(self) -> float:
        """The LoRA branch's dropout probability (0 when switched off)."""
        return float(self.dropout.p) if isinstance(self.dropout, nn.Dropout) else 0.0

    def options(self) -> dict[str, Any]:
        """The values of this layer's variant options (``OPTIONS`` keys), as stored in adapter files."""
        return {key: getattr(self, key) for key in self.OPTIONS}

    def layer_config(self) -> dict[str, Any]:
        """What an adapter file records about this layer: variant, ``r``, ``alpha``, ``rslora``, options (Chapter 1).

        Example:
            >>> LoRALinear(nn.Linear(4, 3), r=2).layer_config()
            {'variant': 'lora', 'r': 2, 'alpha': 2.0, 'rslora': False, 'options': {}}
        """
        return {"variant": self.VARIANT, "r": self.r, "alpha": self.alpha, "rslora": self.rslora,
                "options": self.options()}

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """``{path: tensor}`` for every tensor in ``ADAPTER_TENSORS`` (live tensors, not copies) (Chapter 1).

        Example:
            >>> sorted(LoRALinear(nn.Linear(4, 3), r=2).adapter_tensors())
            ['A', 'B']
        """
        return {path: operator.attrgetter(path)(self) for path in self.ADAPTER_TENSORS}

    def trainable_extras(self) -> list[nn.Parameter]:
        """The trainable adapter parameters besides ``A`` and ``B`` (DoRA's ``m``, AdaLoRA's ``E``; none here)."""
        return [t for path, t in self.adapter_tensors().items()
                if path not in ("A", "B") and isinstance(t, nn.Parameter)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return self.base(x)
        if self._fusable(x):
            return _FusedLoRALinear.apply(x, self.base.weight, self.base.bias, self.A, self.B, self.scaling)
        # The general path (no grad, small inputs, dropout while training, a trainable or non-Linear base,
        # mixed dtypes, autocast).
        # Scale the (tokens × r) intermediate rather than the (tokens × out) result: r is the small side.
        h = F.linear(self.dropout(x), self.A) * self.scaling
        return self.base(x) + F.linear(h, self.B)

    def _fusable(self, x: torch.Tensor) -> bool:
        base = self.base
        return (
            torch.is_grad_enabled()  # inference: the plain expression, no custom-function overhead
            and x.numel() // max(x.shape[-1], 1) * base.out_features >= FUSE_MIN_OUTPUT_ELEMENTS
            and type(base) is nn.Linear  # exactly: a subclass or a quantised base may compute differently
            and not base._forward_hooks and not base._forward_pre_hooks
            and not (self.training and isinstance(self.dropout, nn.Dropout))
            and not base.weight.requires_grad
            and (base.bias is None or not base.bias.requires_grad)
            and x.dtype == base.weight.dtype == self.A.dtype == self.B.dtype
            and x.shape[-1] == base.in_features
            and not _autocast_on(x)
        )

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``W + ΔW`` in the base weight's dtype, summed in float32 (or float64) first.

        Raises ``ValueError`` if the result holds NaN or Inf (non-finite factors, or
        a sum too large for the weight's dtype).
        """
        dtype = self.base.weight.dtype
        merged = self.effective_weight().to(dtype)
        if not torch.isfinite(merged).all():
            names = " and ".join(f"layer.{p}" for p in self.ADAPTER_TENSORS)
            raise ValueError(
                f"merging would put NaN/Inf into the {dtype} base weight (an adapter tensor holds non-finite "
                f"values, or the merged weight overflows the dtype); nothing was changed — inspect {names}, "
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


register_variant(LoRALinear)
