"""Put LoRA into an existing model: find target layers by name, wrap, freeze, count, merge.

The functions here work on any ``nn.Module``. Layers are chosen by their qualified
names (``model.named_modules()``), matched in one of three ways:

* ``"suffix"`` (default): ``"q_proj"`` matches ``"encoder.layer.0.attn.q_proj"``;
* ``"exact"``: the whole qualified name must be equal;
* ``"regex"``: ``re.fullmatch`` of the pattern against the qualified name.

:func:`select_linears` does the choosing (and all its checks) and :func:`swap_in` the
replacing and freezing; :func:`inject_lora` is the two with :class:`LoRALinear` in between.
The LoRA variants (:func:`lorakit.variants.wrap_linears`) and the bottleneck adapters
(:func:`lorakit.peft_methods.inject_adapters`) reuse both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, Mapping

from torch import nn

from .layer import InitA, LoRALinear, check_hyperparameters

__all__ = [
    "ParameterCount",
    "count_parameters",
    "inject_lora",
    "select_linears",
    "swap_in",
    "lora_layers",
    "merge_lora",
    "unmerge_lora",
    "unload_lora",
]

MatchMode = Literal["suffix", "exact", "regex"]


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameter counts of a model.

    Example:
        >>> count = ParameterCount(trainable=10, total=40)
        >>> count.fraction
        0.25
        >>> str(count)
        'trainable 10 of 40 parameters (25%)'
    """

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} of {self.total:,} parameters ({100 * self.fraction:.4g}%)"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count trainable (``requires_grad``) and total parameters, each tensor once.

    Example:
        >>> str(count_parameters(nn.Linear(3, 2)))
        'trainable 8 of 8 parameters (100%)'
    """
    params = {id(p): p for p in model.parameters()}.values()
    return ParameterCount(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
    )


def _matches(name: str, target: str, match: MatchMode) -> bool:
    if match == "exact":
        return name == target
    if match == "suffix":
        return name == target or name.endswith("." + target)
    return re.fullmatch(target, name) is not None


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def select_linears(model: nn.Module, targets: str | Iterable[str], match: MatchMode = "suffix") -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers that ``targets`` name, in model order; checks everything, changes nothing.

    Args:
        model: any module.
        targets: one name or several; how they match is set by ``match``.
        match: ``"suffix"``, ``"exact"`` or ``"regex"`` (see the module docstring).

    Returns:
        ``{qualified_name: layer}`` for every module some target matches, in the order of
        ``model.named_modules()``.

    Raises:
        ValueError: ``match`` is unknown, no target is given, a target matches no module
            (the message lists the model's Linear layers), or a layer already carries LoRA.
        TypeError: a matched module is not an ``nn.Linear``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> list(select_linears(model, ["2", "0"], match="exact"))
        ['0', '2']
    """
    if match not in ("suffix", "exact", "regex"):
        raise ValueError(f"match={match!r} is unknown: use 'suffix', 'exact' or 'regex'")
    target_list = [targets] if isinstance(targets, str) else list(targets)
    if not target_list:
        raise ValueError("no targets given: pass layer names such as ['q_proj', 'v_proj']")

    modules = [(name, module) for name, module in model.named_modules() if name]
    for target in target_list:
        if not any(_matches(name, target, match) for name, _ in modules):
            linear_names = [name for name, module in modules if isinstance(module, nn.Linear)]
            shown = ", ".join(linear_names[:12]) + (" …" if len(linear_names) > 12 else "")
            raise ValueError(
                f"target {target!r} (match={match!r}) matches no module of the model; "
                f"its Linear layers are: {shown or 'none'}"
            )
    chosen = {
        name: module for name, module in modules if any(_matches(name, target, match) for target in target_list)
    }
    for name, module in chosen.items():
        if isinstance(module, LoRALinear):
            raise ValueError(f"module {name!r} already carries LoRA; merge or unload it before injecting again")
        if not isinstance(module, nn.Linear):
            raise TypeError(
                f"target matched {name!r}, a {type(module).__name__}, but only nn.Linear layers can be wrapped; "
                "name the Linear layers inside it instead"
            )
    return chosen


def swap_in(model: nn.Module, wrappers: Mapping[str, nn.Module], trainable: Iterable[nn.Parameter]) -> list[str]:
    """Freeze every parameter of ``model``, put ``wrappers`` in place by name, then unfreeze ``trainable``.

    Call it only once every wrapper is built: it cannot fail halfway.

    Args:
        model: the module to change in place.
        wrappers: ``{qualified_name: new_module}``, e.g. from :func:`select_linears`.
        trainable: the parameters that train afterwards (the wrappers' new factors).

    Returns:
        The names of the replaced modules, in the order of ``wrappers``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        >>> wrapper = LoRALinear(model[0], r=1)
        >>> swap_in(model, {"0": wrapper}, [wrapper.A, wrapper.B])
        ['0']
        >>> [name for name, p in model.named_parameters() if p.requires_grad]
        ['0.A', '0.B']
    """
    trainable = list(trainable)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, wrapper in wrappers.items():
        _set_submodule(model, name, wrapper)
    for p in trainable:
        p.requires_grad_(True)
    return list(wrappers)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """Yield ``(qualified_name, layer)`` for every :class:`LoRALinear` in ``model``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> _ = inject_lora(model, ["0", "2"], r=1, match="exact")
        >>> [(name, layer.A.shape, layer.B.shape) for name, layer in lora_layers(model)]
        [('0', torch.Size([1, 4]), torch.Size([4, 1])), ('2', torch.Size([1, 4]), torch.Size([2, 1]))]
    """
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def inject_lora(
    model: nn.Module,
    targets: str | Iterable[str],
    r: int,
    alpha: float = 1.0,
    *,
    match: MatchMode = "suffix",
    dropout: float = 0.0,
    init_A: InitA = "kaiming",
    rslora: bool = False,
) -> list[str]:
    """Wrap the targeted ``nn.Linear`` layers of ``model`` in :class:`LoRALinear`, in place.

    Every parameter of the model is frozen first, so afterwards only the new ``A``
    and ``B`` factors train. All targets are validated before anything changes: on
    an error the model is left exactly as it was.

    Args:
        model: any module.
        targets: one name or several; how they match is set by ``match``.
        r, alpha, dropout, init_A, rslora: passed to :class:`LoRALinear`.
        match: ``"suffix"``, ``"exact"`` or ``"regex"`` (see the module docstring).

    Returns:
        The qualified names of the wrapped layers, in model order.

    Raises:
        ValueError: a target matches no module, or ``match`` is unknown, or the
            hyperparameters are invalid for some layer.
        TypeError: a matched module is not an ``nn.Linear``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> inject_lora(model, ["0", "2"], r=1, match="exact")
        ['0', '2']
        >>> str(count_parameters(model))
        'trainable 14 of 44 parameters (31.82%)'
    """
    chosen = select_linears(model, targets, match)
    for name, module in chosen.items():
        try:
            check_hyperparameters(r, alpha, dropout, module.in_features, module.out_features)
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from None

    # Everything is validated: from here on nothing can fail halfway.
    wrappers = {
        name: LoRALinear(module, r, alpha, dropout=dropout, init_A=init_A, rslora=rslora)
        for name, module in chosen.items()
    }
    return swap_in(model, wrappers, [p for wrapper in wrappers.values() for p in (wrapper.A, wrapper.B)])


def _require_lora(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    layers = list(lora_layers(model))
    if not layers:
        raise ValueError("the model has no LoRA layers; call inject_lora(model, targets, r) first")
    return layers


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA layer that is not merged yet; return how many were merged.

    Safe to call twice (the second call merges nothing). If any layer's merge
    would produce NaN/Inf, nothing is merged and ``ValueError`` names the layer.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> _ = inject_lora(model, "0", r=2, match="exact")
        >>> _ = nn.init.constant_(model[0].B, 0.1)  # as if training had moved B away from 0
        >>> x = torch.randn(5, 4)
        >>> before = model(x)
        >>> merge_lora(model)
        1
        >>> model[0].merged, torch.allclose(model(x), before, atol=1e-6)
        (True, True)
        >>> merge_lora(model)  # already merged: nothing to do
        0
    """
    pending = [(name, layer) for name, layer in _require_lora(model) if not layer.merged]
    for name, layer in pending:
        try:
            layer.merged_weight()  # validate every layer before changing any
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}; no layer of the model was merged") from None
    for _, layer in pending:
        layer.merge()
    return len(pending)


def unmerge_lora(model: nn.Module) -> int:
    """Unmerge every merged LoRA layer; return how many were unmerged.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> _ = inject_lora(model, "0", r=2, match="exact")
        >>> merge_lora(model), unmerge_lora(model), model[0].merged
        (1, 1, False)
        >>> unmerge_lora(model)  # nothing is merged any more
        0
    """
    merged = [layer for _, layer in _require_lora(model) if layer.merged]
    for layer in merged:
        layer.unmerge()
    return len(merged)


def unload_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer and replace it by its plain ``nn.Linear``; return ``model``.

    The result has no trace of LoRA: same module types as before injection, the
    adapted weights baked in. Parameters keep ``requires_grad=False``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> _ = inject_lora(model, "0", r=2, match="exact")
        >>> model = unload_lora(model)
        >>> type(model[0]).__name__, model[0].weight.shape, list(lora_layers(model))
        ('Linear', torch.Size([3, 4]), [])
    """
    merge_lora(model)
    for name, layer in list(lora_layers(model)):
        _set_submodule(model, name, layer.base)
    return model
