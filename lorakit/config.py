"""One configuration object for every LoRA-family adapter: :class:`LoraConfig` (Chapter 1).

A :class:`LoraConfig` says which layers get an adapter (``target_modules`` and ``match``), which
variant (``"lora"``, ``"dora"``, ``"pissa"``, ``"adalora"``, ``"qlora"``; see
:func:`lorakit.layer.variant_names`) and with which settings. It is validated once, when it is
made, is immutable, and round-trips through JSON (:meth:`LoraConfig.to_dict` /
:meth:`LoraConfig.from_dict`); every adapter file stores it. :func:`lorakit.inject_adapter` builds
the layers it describes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal, Mapping

from .layer import check_alpha, check_dropout, check_rank_type, variant_class

__all__ = ["LoraConfig", "MatchMode", "MATCH_MODES"]

#: How a target names layers — "suffix" (default), "exact" or "regex" (re.fullmatch) (Chapter 1).
MatchMode = Literal["suffix", "exact", "regex"]
#: The ways a target names layers, as :mod:`lorakit.inject` explains them (Chapter 1).
MATCH_MODES: tuple[str, ...] = ("suffix", "exact", "regex")


def check_pattern(pattern: str) -> None:
    """Raise a ``ValueError`` naming ``pattern`` and the fix if it is not a valid regular expression (Chapter 1).

    Example:
        >>> check_pattern(r"layers\\.\\d+\\.q")  # valid: no error
        >>> check_pattern("layers.(0")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: target 'layers.(0' (match='regex') is not a valid regular expression (missing ), ...
    """
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(
            f"target {pattern!r} (match='regex') is not a valid regular expression ({error}); escape literal "
            "dots and brackets (re.escape), or use match='suffix' or 'exact' for plain layer names"
        ) from None


def _names(value: Any, what: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError(f"{what} must be a layer name or a list of names, got {type(value).__name__}") from None
    for item in items:
        if not isinstance(item, str) or not item:
            raise TypeError(f"{what} must hold non-empty strings (layer names), got {item!r}")
    return items


@dataclass(frozen=True)
class LoraConfig:
    """Everything that describes an adapter, validated once (Chapter 1; in the spirit of peft's ``LoraConfig``).

    Attributes:
        r: the rank, ``>= 1`` (checked against each layer's ``min(in, out)`` at injection).
        alpha: the scale numerator; ``ΔW = (alpha/r) B A``. **Default ``None``, meaning ``alpha = r``**
            (scaling 1), everywhere in lorakit: it is peft's default pair (``r=8, lora_alpha=8``), the
            setting the book's comparisons use, and it makes a freshly chosen ``r`` change the rank of
            the update without also changing its learning-rate scale (with rsLoRA: ``alpha/√r = √r``).
            ``to_dict`` stores the resolved number.
        target_modules: the layer names (or patterns) to adapt.
        match: ``"suffix"`` (default), ``"exact"`` or ``"regex"`` (``re.fullmatch``).
        dropout: on the LoRA branch's input, in ``[0, 1)``.
        init_A: ``None`` (the variant's own initialisation, stored resolved: ``"kaiming"`` for plain LoRA,
            ``"svd"`` for PiSSA, ``"normal"`` for AdaLoRA) or a choice the variant accepts
            (``"kaiming"``/``"gaussian"`` for ``lora``, ``dora``, ``qlora``).
        rslora: scale by ``alpha/√r`` instead of ``alpha/r``.
        variant: a registered variant name (:func:`lorakit.layer.variant_names`).
        variant_options: the variant's own options, e.g. ``{"detach_norm": False}`` for DoRA or
            ``{"double_quant": True}`` for QLoRA; unknown keys are refused.
        modules_to_save: modules trained in full beside the adapter (e.g. a classifier head) and saved
            with it; matched like ``target_modules``.

    Example:
        >>> config = LoraConfig(r=4, target_modules=["q", "v"], variant="dora")
        >>> config.alpha, config.target_modules, dict(config.variant_options)
        (4.0, ('q', 'v'), {'detach_norm': True})
        >>> LoraConfig.from_dict(config.to_dict()) == config
        True
        >>> LoraConfig(r=4, target_modules="q", variant="dora", variant_options={"detach": False})
        Traceback (most recent call last):
            ...
        ValueError: variant 'dora' has no option 'detach': its options are detach_norm
    """

    r: int = 8
    alpha: float | None = None
    target_modules: tuple[str, ...] = ()
    match: MatchMode = "suffix"
    dropout: float = 0.0
    init_A: str | None = None
    rslora: bool = False
    variant: str = "lora"
    variant_options: Mapping[str, Any] = field(default_factory=dict)
    modules_to_save: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        check_rank_type(self.r)
        if self.r < 1:
            raise ValueError(f"rank r={self.r} is invalid: choose r >= 1 (and r <= min(in, out) of every target)")
        set_(self, "alpha", check_alpha(float(self.r) if self.alpha is None else self.alpha))
        if self.match not in MATCH_MODES:
            raise ValueError(f"match={self.match!r} is unknown: use 'suffix', 'exact' or 'regex'")
        set_(self, "target_modules", _names(self.target_modules, "target_modules"))
        if not self.target_modules:
            raise ValueError("no target_modules given: pass layer names such as ['q_proj', 'v_proj']")
        set_(self, "modules_to_save", _names(self.modules_to_save, "modules_to_save"))
        if self.match == "regex":
            for pattern in self.target_modules + self.modules_to_save:
                check_pattern(pattern)
        set_(self, "dropout", check_dropout(self.dropout))
        if not isinstance(self.rslora, bool):
            raise TypeError(f"rslora={self.rslora!r} must be True or False")
        cls = variant_class(self.variant)
        if self.init_A is not None and self.init_A not in cls.INIT_CHOICES:
            raise ValueError(
                f"init_A={self.init_A!r} is not available for variant {self.variant!r}: use None (its own init)"
                + ("" if len(cls.INIT_CHOICES) < 2 else " or one of " + ", ".join(map(repr, cls.INIT_CHOICES)))
            )
        if not isinstance(self.variant_options, Mapping):
            raise TypeError(f"variant_options must be a dict, got {type(self.variant_options).__name__}")
        for key in self.variant_options:
            if key not in cls.OPTIONS:
                allowed = ", ".join(cls.OPTIONS) or "none"
                raise ValueError(f"variant {self.variant!r} has no option {key!r}: its options are {allowed}")
        set_(self, "variant_options", MappingProxyType({**cls.OPTIONS, **self.variant_options}))  # read-only
        if self.init_A is None:
            set_(self, "init_A", cls.INIT_CHOICES[0])

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __reduce__(self) -> tuple:  # copy, deepcopy and pickle go through the JSON form
        return (type(self).from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tuples as lists) (Chapter 1).

        Example:
            >>> LoraConfig(r=2, target_modules="0").to_dict()["target_modules"]
            ['0']
        """
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("target_modules", "modules_to_save"):
            out[key] = list(out[key])
        out["variant_options"] = dict(self.variant_options)
        return out

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string with sorted keys."""
        import json

        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LoraConfig":
        """Rebuild a config from :meth:`to_dict`'s output; unknown or bad fields raise ``ValueError`` (Chapter 1).

        Example:
            >>> LoraConfig.from_dict({"r": 2, "target_modules": ["0"], "colour": "red"})
            Traceback (most recent call last):
                ...
            ValueError: a LoraConfig has no field(s) ['colour']; its fields are r, alpha, target_modules, match, dropout, init_A, rslora, variant, variant_options, modules_to_save
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a LoraConfig is stored as a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"a LoraConfig has no field(s) {unknown}; its fields are {', '.join(names)}")
        try:
            return cls(**dict(data))
        except TypeError as error:
            raise ValueError(f"invalid LoraConfig: {error}") from None
