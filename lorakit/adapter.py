"""Save and load only the adapter, not the frozen base (Chapter 1).

An adapter file (format ``lorakit-adapter/2``) is a safetensors file with

* every adapter tensor of every adapter layer, named ``"<layer>.<tensor>"``: ``A`` and ``B``, DoRA's
  magnitude ``m``, AdaLoRA's singular values ``E`` (its pruning state), PiSSA's rewritten base
  ``base.weight`` — whatever the layer type declares in ``ADAPTER_TENSORS``;
* the state of every module trained in full beside it (``modules_to_save``), named
  ``"modules_to_save.<module>.<key>"``;
* string metadata: ``"configs"``, the :class:`~lorakit.LoraConfig` list that rebuilds the layers (one
  per group of layers with equal settings, their names matched exactly), and ``"layers"``, each
  layer's variant, ``r``, ``alpha``, ``rslora`` and options.

:func:`load_adapter` loads into a model that already carries the same adapter layers, or, given the
plain base model, injects them from the stored configs first (as peft's ``PeftModel.from_pretrained``).
Every name, variant, shape and value (NaN/Inf are refused) is checked before anything changes.
Files of the first format (``lorakit-adapter/1``: plain LoRA, ``A`` and ``B`` only) still load.
Writes are atomic (:func:`lorakit.io.atomic_write`).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .config import LoraConfig
from .inject import build_wrappers, lora_layers, modules_to_save, select_linears, select_modules, swap_in
from .inject import _SAVED_ATTR
from .io import atomic_write, read_safetensors
from .layer import LoRALinear, check_hyperparameters, variant_class

__all__ = ["adapter_state_dict", "adapter_configs", "save_adapter", "load_adapter"]

_FORMAT = "lorakit-adapter/2"
_FORMAT_V1 = "lorakit-adapter/1"
_SAVED_PREFIX = "modules_to_save."
_FIX = "save it again with lorakit.save_adapter(model, path)"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter tensor of ``model`` (detached): ``{"<layer>.A": A, "<layer>.B": B, ...}`` (Chapter 1).

    ``A`` has shape ``(r, in)`` and ``B`` shape ``(out, r)``; a variant adds its own tensors (DoRA
    ``m``, AdaLoRA ``E``, PiSSA ``base.weight``), and the modules to save add
    ``"modules_to_save.<module>.<key>"`` entries.

    Example:
        >>> from lorakit import inject_lora
        >>> model = nn.Sequential(nn.Linear(8, 6))
        >>> _ = inject_lora(model, "0", r=2, match="exact")
        >>> {key: tuple(value.shape) for key, value in adapter_state_dict(model).items()}
        {'0.A': (2, 8), '0.B': (6, 2)}
    """
    state = {}
    for name, layer in lora_layers(model):
        for path, tensor in layer.adapter_tensors().items():
            state[f"{name}.{path}"] = tensor.detach()
    for name, module in modules_to_save(model).items():
        for key, tensor in module.state_dict().items():
            state[f"{_SAVED_PREFIX}{name}.{key}"] = tensor.detach()
    return state


def adapter_configs(model: nn.Module) -> list[LoraConfig]:
    """The :class:`~lorakit.LoraConfig` list that rebuilds ``model``'s adapter layers on its base (Chapter 1).

    Layers with equal settings share one config (their names matched exactly); the first config
    carries the modules to save.

    Example:
        >>> from lorakit import inject_lora
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> _ = inject_lora(model, ["0", "2"], r=2, match="exact")
        >>> [(c.variant, c.r, c.target_modules) for c in adapter_configs(model)]
        [('lora', 2, ('0', '2'))]
    """
    groups: dict[str, list[str]] = defaultdict(list)
    settings: dict[str, dict[str, Any]] = {}
    for name, layer in lora_layers(model):
        entry = {
            "r": layer.r, "alpha": layer.alpha, "rslora": layer.rslora, "dropout": layer.dropout_p,
            "init_A": layer.init_A, "variant": layer.VARIANT, "variant_options": layer.options(),
        }
        key = json.dumps(entry, sort_keys=True)
        groups[key].append(name)
        settings[key] = entry
    saved = tuple(modules_to_save(model))
    configs = []
    for i, (key, names) in enumerate(groups.items()):
        configs.append(LoraConfig(target_modules=tuple(names), match="exact",
                                  modules_to_save=saved if i == 0 else (), **settings[key]))
    return configs


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the adapter of ``model`` (every variant's tensors, modules to save, configs) to ``path`` (Chapter 1).

    Raises ``ValueError`` if the model has no adapter layers. The file appears whole
    or not at all.

    Example:
        >>> from lorakit import inject_lora
        >>> from safetensors.torch import load_file
        >>> model = nn.Sequential(nn.Linear(8, 8))
        >>> _ = inject_lora(model, "0", r=2, match="exact")
        >>> import tempfile, os
        >>> path = save_adapter(model, os.path.join(tempfile.mkdtemp(), "adapter.safetensors"))
        >>> sorted(load_file(path))
        ['0.A', '0.B']
    """
    layers = dict(lora_layers(model))
    if not layers:
        raise ValueError("the model has no LoRA layers to save; call lorakit.inject_lora(...) "
                         "or lorakit.inject_adapter(...) first")
    merged = sorted(name for name, layer in layers.items() if layer.merged and "base.weight" in layer.ADAPTER_TENSORS)
    if merged:
        raise ValueError(f"layers {merged} are merged, so their base weight (part of their adapter) holds the "
                         "merged weight; call lorakit.unmerge_lora(model) before saving the adapter")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.contiguous().cpu() for key, value in adapter_state_dict(model).items()}
    metadata = {
        "format": _FORMAT,
        "configs": json.dumps([c.to_dict() for c in adapter_configs(model)], sort_keys=True),
        "layers": json.dumps({name: layer.layer_config() for name, layer in layers.items()}, sort_keys=True),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _read(path: Path) -> tuple[list[LoraConfig], dict[str, dict], dict[str, torch.Tensor]]:
    """Configs, per-layer records and tensors of an adapter file; ``ValueError`` naming the file if bad."""
    tensors, metadata = read_safetensors(path, fix=_FIX)
    fmt = metadata.get("format")
    if fmt not in (_FORMAT, _FORMAT_V1):
        raise ValueError(
            f"{path} is not a lorakit adapter (metadata format={fmt!r}); save adapters with lorakit.save_adapter, "
            "or use lorakit.load_peft_adapter for peft adapter directories"
        )
    try:
        layers = json.loads(metadata.get("layers", ""))
        if not isinstance(layers, dict) or not all(isinstance(v, dict) for v in layers.values()):
            raise ValueError("'layers' must map each layer name to its settings")
        if fmt == _FORMAT_V1:  # plain LoRA, A and B only
            layers = {n: {"variant": "lora", "options": {}, **v} for n, v in layers.items()}
            configs = [LoraConfig(target_modules=(n,), match="exact", r=v["r"], alpha=v["alpha"],
                                  rslora=v["rslora"]) for n, v in layers.items()]
        else:
            raw = json.loads(metadata.get("configs", ""))
            if not isinstance(raw, list):
                raise ValueError("'configs' must be a list of LoraConfig objects")
            configs = [LoraConfig.from_dict(c) for c in raw]
        for name, record in layers.items():
            missing = {"variant", "r", "alpha", "rslora", "options"} - set(record)
            if missing:
                raise ValueError(f"layer {name!r} lacks {sorted(missing)}")
            variant_class(record["variant"])
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path} has unreadable adapter metadata ({error}); {_FIX}") from None
    return configs, layers, tensors


def _tensor_problems(name: str, expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> list[str]:
    problems = []
    for path, tensor in expected.items():
        key = f"{name}.{path}"
        if key not in tensors:
            problems.append(f"tensor {key!r} is missing from the file")
        elif tuple(tensors[key].shape) != tuple(tensor.shape):
            problems.append(f"tensor {key!r} has shape {tuple(tensors[key].shape)}, the model needs {tuple(tensor.shape)}")
    return problems


def _saved_modules(model: nn.Module, tensors: dict[str, torch.Tensor], names: list[str], problems: list[str]) -> dict:
    modules = {}
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            problems.append(f"module to save {name!r} is not in the model")
            continue
        modules[name] = module
        problems += _tensor_problems(f"{_SAVED_PREFIX}{name}", module.state_dict(), tensors)
    return modules


def _copy_in(layers: dict[str, LoRALinear], modules: dict[str, nn.Module], tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, layer in layers.items():
            for path, tensor in layer.adapter_tensors().items():
                tensor.copy_(tensors[f"{name}.{path}"])
        for name, module in modules.items():
            for key, tensor in module.state_dict().items():
                tensor.copy_(tensors[f"{_SAVED_PREFIX}{name}.{key}"])


def _fail(path: Path, problems: list[str]) -> None:
    if problems:
        raise ValueError(f"adapter {path} does not fit this model (nothing was loaded):\n  - " + "\n  - ".join(problems))


def load_adapter(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load the adapter at ``path`` into ``model``; inject its layers first if ``model`` has none (Chapter 1).

    * ``model`` already carries adapter layers: they must have the names, variants, ranks, alphas,
      options and shapes the file records (inject them with the same call that made the adapter).
    * ``model`` is the plain base model: the layers are built from the configs stored in the file
      (the symmetric of peft's ``PeftModel.from_pretrained``).

    Every problem — a bad file, NaN/Inf values, a variant mismatch (a DoRA adapter into a plain LoRA
    layer), a missing layer, a wrong shape, a merged layer — is reported in one ``ValueError`` naming
    the file, before any weight changes.

    Returns:
        The names of the adapter layers loaded, in model order.

    Example:
        >>> import os, tempfile
        >>> from lorakit import inject_lora
        >>> source = nn.Sequential(nn.Linear(8, 6))
        >>> _ = inject_lora(source, "0", r=2, match="exact")
        >>> _ = nn.init.constant_(source[0].B, 0.5)  # as if trained
        >>> path = save_adapter(source, os.path.join(tempfile.mkdtemp(), "adapter.safetensors"))
        >>> target = nn.Sequential(nn.Linear(8, 6))
        >>> _ = inject_lora(target, "0", r=2, match="exact")  # the same call that made the adapter
        >>> load_adapter(target, path)
        ['0']
        >>> torch.equal(target[0].A, source[0].A), torch.equal(target[0].B, source[0].B)
        (True, True)
        >>> base = nn.Sequential(nn.Linear(8, 6))  # or a plain base: the layers are injected from the file
        >>> load_adapter(base, path), type(base[0]).__name__
        (['0'], 'LoRALinear')
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no adapter file at {path}; save one with lorakit.save_adapter(model, path)")
    configs, records, tensors = _read(path)
    saved_names = sorted({n for c in configs for n in c.modules_to_save})
    layers = dict(lora_layers(model))
    if not layers:
        return _inject_and_load(model, path, configs, records, tensors, saved_names)

    problems = []
    missing = sorted(set(records) - set(layers))
    extra = sorted(set(layers) - set(records))
    if missing:
        problems.append(f"the adapter has layers the model lacks: {missing}")
    if extra:
        problems.append(f"the model has LoRA layers the adapter lacks: {extra}")
    for name in sorted(set(records) & set(layers)):
        layer, saved = layers[name], records[name]
        if saved["variant"] != layer.VARIANT:
            problems.append(
                f"layer {name!r} is a {type(layer).__name__} (variant {layer.VARIANT!r}) but the adapter holds a "
                f"{saved['variant']!r} layer; inject variant={saved['variant']!r}, or load into the plain base model"
            )
            continue
        ours = layer.layer_config()
        if ours != saved:
            problems.append(f"layer {name!r}: adapter has {saved}, model has {ours}")
        problems += _tensor_problems(name, layer.adapter_tensors(), tensors)
        if layer.merged:
            problems.append(f"layer {name!r} is merged; call lorakit.unmerge_lora(model) before loading")
    ours_saved = sorted(modules_to_save(model))
    if ours_saved != saved_names:
        problems.append(f"the adapter saves modules {saved_names}, the model trains {ours_saved} in full beside "
                        "its adapter; inject with the same modules_to_save, or load into the plain base model")
    modules = _saved_modules(model, tensors, saved_names, problems)
    _fail(path, problems)
    _copy_in(layers, modules, tensors)
    return list(layers)


def _inject_and_load(
    model: nn.Module, path: Path, configs: list[LoraConfig], records: dict, tensors: dict, saved_names: list[str]
) -> list[str]:
    problems: list[str] = []
    plans = []
    for config in configs:
        try:
            chosen = select_linears(model, config.target_modules, config.match)
            for name, module in chosen.items():
                check_hyperparameters(config.r, config.alpha, config.dropout, module.in_features, module.out_features)
        except (ValueError, TypeError) as error:
            problems.append(str(error))
            continue
        plans.append((config, chosen))
    names = [n for _, chosen in plans for n in chosen]
    if len(set(names)) != len(names):
        problems.append("two stored configs target the same layer")
    modules = _saved_modules(model, tensors, saved_names, problems)
    _fail(path, problems)
    wrappers: dict[str, LoRALinear] = {}
    undos = []
    try:
        for config, chosen in plans:
            cls = variant_class(config.variant)
            built, undo = build_wrappers(chosen, lambda module: cls.from_config(module, config))
            wrappers.update(built)
            undos.append(undo)
        for name, wrapper in wrappers.items():
            problems += _tensor_problems(name, wrapper.adapter_tensors(), tensors)
        _fail(path, problems)
    except Exception:
        for undo in undos:
            undo()
        raise
    _copy_in(wrappers, modules, tensors)
    trainable = [p for w in wrappers.values() for p in w.parameters(recurse=False) if p.requires_grad]
    trainable += [p for module in modules.values() for p in module.parameters()]
    order = [name for name, _ in model.named_modules() if name in wrappers]
    swap_in(model, {name: wrappers[name] for name in order}, trainable)
    if modules:
        object.__setattr__(model, _SAVED_ATTR, sorted(set(getattr(model, _SAVED_ATTR, [])) | set(modules)))
    return order
