"""Put LoRA into an existing model: find target layers by name, wrap, freeze, count, merge.

The functions here work on any ``nn.Module``. Layers are chosen by their qualified
names (``model.named_modules()``), matched in one of three ways:

* ``"suffix"`` (default): ``"q_proj"`` matches ``"encoder.layer.0.attn.q_proj"``;
* ``"exact"``: the whole qualified name must be equal;
* ``"regex"``: ``re.fullmatch`` of the pattern against the qualified name.

:func:`select_linears` does the choosing (and all its checks) and :func:`swap_in` the
replacing and freezing; :func:`inject_adapter` is the two with the layer class of the
config's variant in between (the one injection path, Chapter 1), and :func:`inject_lora`
is its plain-LoRA shorthand. The bottleneck adapters (:func:`lorakit.peft_methods.inject_adapters`)
reuse both. peft's names are here too: :func:`merge_and_unload`, :func:`unload`,
:func:`disable_adapters`.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from .config import LoraConfig, MatchMode, check_pattern
from .layer import InitA, LoRALinear, check_hyperparameters, check_rank_type, variant_class

__all__ = [
    "ParameterCount",
    "count_parameters",
    "inject_lora",
    "inject_adapter",
    "select_linears",
    "select_modules",
    "modules_to_save",
    "swap_in",
    "build_and_swap",
    "build_wrappers",
    "lora_layers",
    "merge_lora",
    "unmerge_lora",
    "unload_lora",
    "merge_and_unload",
    "unload",
    "disable_adapters",
]

#: The model attribute that lists the names of its ``modules_to_save`` (set by :func:`inject_adapter`).
_SAVED_ATTR = "_lorakit_modules_to_save"


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameter counts of a model (Chapter 1).

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
    """Count trainable (``requires_grad``) and total parameters, each tensor once (Chapter 1).

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


def select_modules(model: nn.Module, targets: str | Iterable[str], match: MatchMode = "suffix") -> dict[str, nn.Module]:
    r"""The modules that ``targets`` name, in model order; ``ValueError`` if a target matches none (Chapter 1).

    Raises:
        ValueError: ``match`` is unknown, no target is given, a regex is invalid (the message names it),
            or a target matches no module (the message lists the model's Linear layers).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> list(select_modules(model, r"\d", match="regex"))
        ['0', '1', '2']
    """
    if match not in ("suffix", "exact", "regex"):
        raise ValueError(f"match={match!r} is unknown: use 'suffix', 'exact' or 'regex'")
    target_list = [targets] if isinstance(targets, str) else list(targets)
    if not target_list:
        raise ValueError("no targets given: pass layer names such as ['q_proj', 'v_proj']")
    if match == "regex":
        for target in target_list:
            check_pattern(target)
    modules = [(name, module) for name, module in model.named_modules() if name]
    for target in target_list:
        if not any(_matches(name, target, match) for name, _ in modules):
            linear_names = [name for name, module in modules if isinstance(module, nn.Linear)]
            shown = ", ".join(linear_names[:12]) + (" …" if len(linear_names) > 12 else "")
            raise ValueError(
                f"target {target!r} (match={match!r}) matches no module of the model; "
                f"its Linear layers are: {shown or 'none'}"
            )
    return {name: module for name, module in modules if any(_matches(name, t, match) for t in target_list)}


def select_linears(model: nn.Module, targets: str | Iterable[str], match: MatchMode = "suffix") -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers that ``targets`` name, in model order; checks everything, changes nothing (Chapter 1).

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
    chosen = select_modules(model, targets, match)
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
    """Freeze every parameter of ``model``, put ``wrappers`` in place by name, then unfreeze ``trainable`` (Chapter 1).

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
    """Yield ``(qualified_name, layer)`` for every :class:`LoRALinear` (any variant) in ``model`` (Chapter 1).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> _ = inject_lora(model, ["0", "2"], r=1, match="exact")
        >>> [(name, layer.A.shape, layer.B.shape) for name, layer in lora_layers(model)]
        [('0', torch.Size([1, 4]), torch.Size([4, 1])), ('2', torch.Size([1, 4]), torch.Size([2, 1]))]
    """
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def inject_adapter(model: nn.Module, config: LoraConfig) -> list[str]:
    """Wrap the layers ``config`` targets in the layer class of ``config.variant``, in place (Chapter 1).

    The one injection path for every variant: the class comes from the registry
    (:func:`lorakit.layer.variant_class`) and is built by its ``from_config``. Every parameter of the
    model is frozen first; afterwards the adapter's trainable tensors (``A``, ``B``, DoRA's ``m``,
    AdaLoRA's ``E``) and every parameter of ``config.modules_to_save`` train. Everything is validated
    and every wrapper built before the model changes: on an error the model is as it was (a
    variant that rewrites its base, PiSSA, is undone too).

    Returns:
        The qualified names of the wrapped layers, in model order.

    Raises:
        ValueError: a target matches nothing, the rank does not fit a layer, a layer already
            carries LoRA, a module to save is also a target.
        TypeError: a matched module is not an ``nn.Linear``; ``config`` is not a :class:`LoraConfig`.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> inject_adapter(model, LoraConfig(r=1, target_modules=["0"], match="exact", variant="dora",
        ...                                  modules_to_save=["2"]))
        ['0']
        >>> type(model[0]).__name__, [n for n, p in model.named_parameters() if p.requires_grad]
        ('DoRALinear', ['0.A', '0.B', '0.m', '2.weight', '2.bias'])
    """
    if not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a lorakit.LoraConfig, got {type(config).__name__}")
    chosen = select_linears(model, config.target_modules, config.match)
    saved = select_modules(model, config.modules_to_save, config.match) if config.modules_to_save else {}
    overlap = sorted(n for n in saved if any(n == t or n.startswith(t + ".") or t.startswith(n + ".") for t in chosen))
    if overlap:
        raise ValueError(
            f"modules_to_save {overlap} overlap the adapter's target layers; a module is either adapted or "
            "trained in full, not both: remove it from one of the two lists"
        )
    for name, module in chosen.items():
        try:
            check_hyperparameters(config.r, config.alpha, config.dropout, module.in_features, module.out_features)
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from None
    cls = variant_class(config.variant)
    names = build_and_swap(model, chosen, lambda module: cls.from_config(module, config), saved)
    if saved:
        object.__setattr__(model, _SAVED_ATTR, sorted(set(getattr(model, _SAVED_ATTR, [])) | set(saved)))
    return names


def build_wrappers(
    chosen: Mapping[str, nn.Linear], build: Callable[[nn.Linear], LoRALinear]
) -> tuple[dict[str, LoRALinear], Callable[[], None]]:
    """``{name: build(layer)}`` for every chosen layer, and an ``undo()`` that restores their base weights (Chapter 1).

    Builders such as PiSSA rewrite the base weight in place; if one build fails, every weight is
    restored before the error propagates. Call ``undo()`` yourself to abandon the wrappers later.

    Example:
        >>> lin = nn.Linear(4, 4)
        >>> wrappers, undo = build_wrappers({"0": lin}, lambda m: LoRALinear(m, r=1))
        >>> list(wrappers)
        ['0']
    """
    originals = {name: module.weight.detach().clone() for name, module in chosen.items()}

    def undo() -> None:
        with torch.no_grad():
            for name, module in chosen.items():
                module.weight.copy_(originals[name])

    wrappers: dict[str, LoRALinear] = {}
    try:
        for name, module in chosen.items():
            wrapper = build(module)
            if not isinstance(wrapper, LoRALinear):
                raise TypeError(f"the builder returned a {type(wrapper).__name__}; it must return a LoRALinear (subclass)")
            wrappers[name] = wrapper
    except Exception:
        undo()
        raise
    return wrappers, undo


def build_and_swap(
    model: nn.Module,
    chosen: Mapping[str, nn.Linear],
    build: Callable[[nn.Linear], LoRALinear],
    saved: Mapping[str, nn.Module] | None = None,
) -> list[str]:
    """Build ``build(layer)`` for every chosen layer, then :func:`swap_in` them; all or nothing (Chapter 1).

    If any build fails, base weights a builder rewrote (PiSSA's residual) are restored and the
    model is unchanged. Afterwards the wrappers' own trainable tensors and every parameter of
    ``saved`` (the modules to save) train.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4))
        >>> build_and_swap(model, {"0": model[0]}, lambda lin: LoRALinear(lin, r=1))
        ['0']
    """
    wrappers, _ = build_wrappers(chosen, build)
    # From here on nothing can fail halfway.
    trainable = [p for w in wrappers.values() for p in w.parameters(recurse=False) if p.requires_grad]
    trainable += [p for module in (saved or {}).values() for p in module.parameters()]
    return swap_in(model, wrappers, trainable)


def modules_to_save(model: nn.Module) -> dict[str, nn.Module]:
    """The modules :func:`inject_adapter` set to train in full beside the adapter, by name (Chapter 3).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> _ = inject_adapter(model, LoraConfig(r=1, target_modules="0", match="exact", modules_to_save="2"))
        >>> list(modules_to_save(model))
        ['2']
    """
    names = getattr(model, _SAVED_ATTR, [])
    return {name: model.get_submodule(name) for name in names}


def inject_lora(
    model: nn.Module,
    targets: str | Iterable[str],
    r: int,
    alpha: float | None = None,
    *,
    match: MatchMode = "suffix",
    dropout: float = 0.0,
    init_A: InitA | None = None,
    rslora: bool = False,
) -> list[str]:
    """Wrap the targeted ``nn.Linear`` layers of ``model`` in :class:`LoRALinear`, in place (Chapter 1).

    Shorthand for ``inject_adapter(model, LoraConfig(r, alpha, targets, match, dropout, init_A, rslora))``.
    Every parameter of the model is frozen first, so afterwards only the new ``A``
    and ``B`` factors train. All targets are validated before anything changes: on
    an error the model is left exactly as it was.

    Args:
        model: any module.
        targets: one name or several; how they match is set by ``match``.
        r, alpha, dropout, init_A, rslora: passed to :class:`LoRALinear` (``alpha=None`` means ``alpha=r``).
        match: ``"suffix"``, ``"exact"`` or ``"regex"`` (see the module docstring).

    Returns:
        The qualified names of the wrapped layers, in model order.

    Raises:
        ValueError: a target matches no module, or ``match`` is unknown, or the
            hyperparameters are invalid for some layer, or a regex is invalid.
        TypeError: a matched module is not an ``nn.Linear``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> inject_lora(model, ["0", "2"], r=1, match="exact")
        ['0', '2']
        >>> str(count_parameters(model))
        'trainable 14 of 44 parameters (31.82%)'
    """
    if match not in ("suffix", "exact", "regex"):
        raise ValueError(f"match={match!r} is unknown: use 'suffix', 'exact' or 'regex'")
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets:
        raise ValueError("no targets given: pass layer names such as ['q_proj', 'v_proj']")
    check_rank_type(r)
    chosen = select_linears(model, targets, match)  # the errors that name the model's layers come first
    for name, module in chosen.items():
        try:
            check_hyperparameters(r, alpha, dropout, module.in_features, module.out_features)
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from None
    config = LoraConfig(r=r, alpha=alpha, target_modules=tuple(targets), match=match, dropout=dropout,
                        init_A=init_A, rslora=rslora)
    return inject_adapter(model, config)


def _require_lora(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    layers = list(lora_layers(model))
    if not layers:
        raise ValueError("the model has no LoRA layers; call lorakit.inject_lora(model, targets, r) "
                         "(or lorakit.inject_adapter(model, config)) first")
    return layers


def merge_lora(model: nn.Module) -> int:
    """Merge every adapter layer that is not merged yet; return how many were merged (Chapter 1).

    All or nothing: if any pending layer cannot merge (a QLoRA layer's 4-bit base) or would produce
    NaN/Inf, nothing is merged and ``ValueError`` names the layers. Safe to call twice (the second
    call merges nothing).

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
    unmergeable = [f"{name!r} ({type(layer).__name__})" for name, layer in pending if not layer.MERGEABLE]
    if unmergeable:
        raise ValueError(
            f"layers {', '.join(unmergeable)} cannot merge into their base (a 4-bit base would re-quantise the "
            "update away); no layer of the model was merged. Use QLoRALinear.to_linear() for those layers, "
            "or keep the model unmerged"
        )
    for name, layer in pending:
        try:
            layer.merged_weight()  # validate every layer before changing any
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}; no layer of the model was merged") from None
    for _, layer in pending:
        layer.merge()
    return len(pending)


def unmerge_lora(model: nn.Module) -> int:
    """Unmerge every merged LoRA layer; return how many were unmerged (Chapter 1).

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


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every adapter layer and put its plain ``nn.Linear`` back; return ``model`` (Chapter 1; peft's name).

    The result has no trace of LoRA: the module types from before injection, the adapted weights
    baked in, parameters frozen (``requires_grad=False``). All or nothing, like :func:`merge_lora`.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> _ = inject_lora(model, "0", r=2, match="exact")
        >>> model = merge_and_unload(model)
        >>> type(model[0]).__name__, model[0].weight.shape, list(lora_layers(model))
        ('Linear', torch.Size([3, 4]), [])
    """
    merge_lora(model)
    for name, layer in list(lora_layers(model)):
        _set_submodule(model, name, layer.base)
    return model


def unload_lora(model: nn.Module) -> nn.Module:
    """The name Chapter 1 uses for :func:`merge_and_unload` (merge, then plain modules back).

    Example:
        >>> model = unload_lora(nn.Sequential(LoRALinear(nn.Linear(4, 3), r=2)))
        >>> type(model[0]).__name__
        'Linear'
    """
    return merge_and_unload(model)


def unload(model: nn.Module) -> nn.Module:
    """Remove every adapter layer **without** merging: put each base module back; return ``model`` (Chapter 1).

    peft's ``unload``. A merged layer is unmerged first, so the result computes the base model
    again. Two variants have a base that is not the original layer: PiSSA's is the residual
    ``W − U_r S_r V_rᵀ`` (its principal part lived in the adapter) and QLoRA's is the 4-bit
    :class:`~lorakit.variants.NF4Linear`; those are what comes back, as in peft.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> W = model[0].weight.detach().clone()
        >>> _ = inject_lora(model, "0", r=2, match="exact")
        >>> _ = nn.init.constant_(model[0].B, 0.1)
        >>> model = unload(model)
        >>> type(model[0]).__name__, torch.equal(model[0].weight, W)
        ('Linear', True)
    """
    for name, layer in _require_lora(model):
        if layer.merged:
            layer.unmerge()
        _set_submodule(model, name, layer.base)
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model unchanged inside a ``with`` block; the adapters come back afterwards (Chapter 1).

    peft's ``disable_adapter()``. Refused (``ValueError``, nothing changed) when a layer is merged
    (its update is inside the base weight: unmerge first) or is a PiSSA layer (its base weight is the
    residual, not the original ``W``).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> base = nn.Linear(4, 3); _ = base.load_state_dict(model[0].state_dict())
        >>> _ = inject_lora(model, "0", r=2, match="exact")
        >>> _ = nn.init.constant_(model[0].B, 0.1)
        >>> x = torch.randn(2, 4)
        >>> with disable_adapters(model):
        ...     torch.equal(model(x), base(x))
        True
        >>> torch.equal(model(x), base(x))
        False
    """
    layers = _require_lora(model)
    merged = [name for name, layer in layers if layer.merged]
    if merged:
        raise ValueError(f"layers {merged} are merged, so their update is inside the base weight; "
                         "call lorakit.unmerge_lora(model) before disabling the adapters")
    rewritten = [name for name, layer in layers if "base.weight" in layer.ADAPTER_TENSORS]
    if rewritten:
        raise ValueError(f"layers {rewritten} rewrote their base weight (PiSSA keeps the residual there), so "
                         "disabling them would not run the original model; keep a copy of the base model instead")
    previous = [(layer, layer.disabled) for _, layer in layers]
    for layer, _ in previous:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, state in previous:
            layer.disabled = state
