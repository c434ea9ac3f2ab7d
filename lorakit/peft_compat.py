"""Read and write adapters in 🤗 peft's format, so lorakit and peft can swap them.

A peft LoRA adapter is a directory with two files:

* ``adapter_config.json`` — the hyperparameters (``r``, ``lora_alpha``,
  ``target_modules``, ``lora_dropout``, ``use_rslora``, …);
* ``adapter_model.safetensors`` — one pair of tensors per adapted layer, named
  ``base_model.model.<layer>.lora_A.weight`` (shape ``r × in``) and
  ``base_model.model.<layer>.lora_B.weight`` (shape ``out × r``).

peft's ``lora_A``/``lora_B`` are the book's ``A``/``B`` in the same orientation,
and its scaling is the same ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with
``use_rslora``), so the translation is a renaming (Chapter 13). What both sides represent:
plain LoRA, rsLoRA, DoRA (``use_dora``, its magnitude stored as ``<layer>.lora_magnitude_vector``,
with peft's detached norm) and ``modules_to_save`` (stored as ``<module>.<key>``). peft has
many more options (trained biases, per-layer ranks, PiSSA-style initialisations that change
the base weights, …) and lorakit has variants peft's LoRA format cannot hold (PiSSA's residual,
AdaLoRA, QLoRA's NF4 base, DoRA's undetached norm): each side refuses the other's extras with
a ``ValueError`` instead of silently computing something else.

peft itself is *not* needed by this module: it only reads and writes JSON and
safetensors. (The tests and the chapter use peft to check the files.)
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .config import LoraConfig
from .inject import inject_adapter, inject_lora, lora_layers, modules_to_save  # noqa: F401 (inject_lora: doctests)
from .io import atomic_write, read_json, read_safetensors
from .layer import LoRALinear

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "peft_config",
    "peft_state_dict",
    "save_peft_adapter",
    "read_peft_config",
    "peft_target_names",
    "load_peft_adapter",
]

#: The adapter's config file in a peft adapter directory, as peft's ``save_pretrained`` names it (Chapter 13).
CONFIG_NAME = "adapter_config.json"
#: The adapter's weight file (safetensors) in a peft adapter directory, as peft names it (Chapter 13).
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."

# Fields that describe the file or the run, not the computation: read and ignored.
_IGNORED_FIELDS = frozenset(
    {
        "peft_type",  # checked separately: must be "LORA"
        "task_type",
        "auto_mapping",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "megatron_core",  # a module name, used only together with megatron_config
        "qalora_group_size",  # used only with use_qalora=True
        "ensure_weight_tying",  # used only with modules_to_save / trainable tokens
        "runtime_config",
        "init_lora_weights",  # checked separately
    }
)
# Fields lorakit implements.
_SUPPORTED_FIELDS = frozenset(
    {"r", "lora_alpha", "target_modules", "lora_dropout", "use_rslora", "use_dora", "modules_to_save"}
)
_MAGNITUDE = "lora_magnitude_vector"
_FIX = "pass the directory that peft's save_pretrained (or lorakit.save_peft_adapter) wrote, or write it again"


def _is_off(value: Any) -> bool:
    """True for the values peft uses to mean "this option is not used"."""
    return value is None or value is False or value == "none" or (isinstance(value, (dict, list)) and not value)


def _uniform_hyperparameters(model: nn.Module) -> tuple[list[tuple[str, LoRALinear]], dict[str, Any]]:
    layers = list(lora_layers(model))
    if not layers:
        raise ValueError("the model has no LoRA layers to save; call lorakit.inject_lora(model, targets, r) first")
    for name, layer in layers:
        if layer.VARIANT not in ("lora", "dora"):
            raise ValueError(
                f"layer {name!r} is a {type(layer).__name__} (variant {layer.VARIANT!r}), which peft's LoRA format "
                "cannot hold (it has only plain LoRA, rsLoRA and DoRA); save it with lorakit.save_adapter instead"
            )
        if layer.VARIANT == "dora" and not layer.detach_norm:
            raise ValueError(
                f"layer {name!r} is DoRA with detach_norm=False; peft's DoRA always detaches the norm (DoRA §4.3), "
                "so it would train differently. Export a detach_norm=True model, or use lorakit.save_adapter"
            )
    settings = {
        name: (layer.r, layer.alpha, layer.rslora, layer.dropout_p, layer.init_A, layer.VARIANT)
        for name, layer in layers
    }
    distinct = sorted(set(settings.values()), key=str)
    if len(distinct) > 1:
        raise ValueError(
            "peft's format holds one (r, alpha, rslora, dropout, init, variant) for all layers unless it uses "
            f"rank_pattern/alpha_pattern, which lorakit does not write; this model mixes {distinct}. "
            "Inject all layers with the same settings to export it"
        )
    r, alpha, rslora, dropout, init_A, variant = distinct[0]
    return layers, {"r": r, "alpha": alpha, "rslora": rslora, "dropout": dropout, "init_A": init_A,
                    "dora": variant == "dora"}


def peft_config(model: nn.Module, *, base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """The ``adapter_config.json`` content that describes the LoRA layers of ``model`` (Chapter 13).

    ``target_modules`` lists the layers' full qualified names, which peft matches
    exactly (a name equals itself), so peft adapts precisely the same layers.

    Raises:
        ValueError: the model has no LoRA layers, its layers differ in ``r``,
            ``alpha``, ``rslora``, dropout, ``init_A`` or variant, or a layer is a variant peft's
            LoRA format cannot hold (PiSSA, AdaLoRA, QLoRA, DoRA with ``detach_norm=False``).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4))
        >>> _ = inject_lora(model, "0", r=2, alpha=4, match="exact")
        >>> cfg = peft_config(model)
        >>> cfg["r"], cfg["lora_alpha"], cfg["target_modules"]
        (2, 4.0, ['0'])
    """
    layers, hp = _uniform_hyperparameters(model)
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "r": hp["r"],
        "lora_alpha": hp["alpha"],
        "lora_dropout": hp["dropout"],
        "use_rslora": hp["rslora"],
        "target_modules": [name for name, _ in layers],
        "init_lora_weights": True if hp["init_A"] == "kaiming" else "gaussian",
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": hp["dora"],
        "modules_to_save": list(modules_to_save(model)) or None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``model`` under peft's names (detached, contiguous) (Chapter 13).

    Shapes: ``...lora_A.weight`` is ``r × in`` (the book's ``A``), ``...lora_B.weight``
    is ``out × r`` (the book's ``B``); DoRA adds ``...lora_magnitude_vector`` (``out``), and each
    module to save its ``state_dict`` under ``base_model.model.<module>.<key>``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> _ = inject_lora(model, "0", r=2, match="exact")
        >>> {k: tuple(v.shape) for k, v in peft_state_dict(model).items()}
        {'base_model.model.0.lora_A.weight': (2, 4), 'base_model.model.0.lora_B.weight': (3, 2)}
    """
    state = {}
    for name, layer in lora_layers(model):
        state[f"{_PREFIX}{name}.lora_A.weight"] = layer.A.detach().contiguous()
        state[f"{_PREFIX}{name}.lora_B.weight"] = layer.B.detach().contiguous()
        if layer.VARIANT == "dora":
            state[f"{_PREFIX}{name}.{_MAGNITUDE}"] = layer.m.detach().contiguous()
    for name, module in modules_to_save(model).items():
        for key, tensor in module.state_dict().items():
            state[f"{_PREFIX}{name}.{key}"] = tensor.detach().contiguous()
    return state


def save_peft_adapter(
    model: nn.Module, directory: str | os.PathLike, *, base_model_name_or_path: str | None = None
) -> Path:
    """Write the LoRA adapter of ``model`` as a peft adapter directory; return it (Chapter 13).

    The directory gets ``adapter_config.json`` and ``adapter_model.safetensors``;
    ``peft.PeftModel.from_pretrained(base_model, directory)`` loads it into an
    unwrapped copy of the same base model. Everything is validated before a file
    is written, and each file is written atomically.

    Args:
        model: a model carrying :class:`~lorakit.layer.LoRALinear` or
            :class:`~lorakit.variants.DoRALinear` layers that all share ``r``, ``alpha``,
            ``rslora``, dropout, ``init_A`` and variant; its modules to save go along.
        directory: created if missing.
        base_model_name_or_path: recorded in the config (peft uses it only when
            you load without passing a base model).

    Raises:
        ValueError: see :func:`peft_config`.

    Example:
        >>> import tempfile
        >>> model = nn.Sequential(nn.Linear(4, 4))
        >>> _ = inject_lora(model, "0", r=2, match="exact")
        >>> out = save_peft_adapter(model, tempfile.mkdtemp())
        >>> sorted(p.name for p in out.iterdir())
        ['adapter_config.json', 'adapter_model.safetensors']
    """
    config = peft_config(model, base_model_name_or_path=base_model_name_or_path)
    tensors = {key: value.cpu() for key, value in peft_state_dict(model).items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def read_peft_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read ``adapter_config.json`` and check that lorakit can compute what it describes (Chapter 13).

    Returns the config dict. Fields that only describe the run (``task_type``,
    ``peft_version``, …) are ignored; fields lorakit does not implement must be
    switched off (``None``, ``False``, ``"none"``, ``{}`` or ``[]``).

    Raises:
        FileNotFoundError: no ``adapter_config.json`` in ``directory``.
        ValueError: not valid JSON, not a LoRA config, or it uses an option lorakit lacks (the
            message names the file and lists every such field).

    Example:
        >>> import tempfile, json, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA", "r": 4,
        ...     "lora_alpha": 8, "target_modules": ["q"], "bias": "all"}))
        >>> read_peft_config(d)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ... bias='all' ...
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no {CONFIG_NAME} in {Path(directory)}; pass the directory that peft's save_pretrained "
            "(or lorakit.save_peft_adapter) wrote"
        )
    config = read_json(path, fix=_FIX)
    if config.get("peft_type") != "LORA":
        raise ValueError(
            f"{path} has peft_type={config.get('peft_type')!r}; lorakit loads LoRA adapters only (peft_type 'LORA')"
        )
    problems = []
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            problems.append(f"required field {key!r} is missing")
    for key, value in sorted(config.items()):
        if key in _SUPPORTED_FIELDS or key in _IGNORED_FIELDS:
            continue
        if not _is_off(value):
            problems.append(f"{key}={value!r} is not supported by lorakit (it must be unset)")
    init = config.get("init_lora_weights", True)
    if not (init is True or init is False or init == "gaussian"):
        problems.append(
            f"init_lora_weights={init!r} changes the base weights too (PiSSA/OLoRA/LoftQ-style); "
            "lorakit supports only True, False or 'gaussian'"
        )
    r, alpha = config.get("r"), config.get("lora_alpha")
    if "r" in config and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
        problems.append(f"r={r!r} must be a positive int")
    if "lora_alpha" in config and not (
        isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha) and alpha > 0
    ):
        problems.append(f"lora_alpha={alpha!r} must be a finite number > 0")
    targets = config.get("target_modules")
    if "target_modules" in config and not (
        isinstance(targets, str) or (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets))
    ):
        problems.append(f"target_modules={targets!r} must be a regex string or a non-empty list of names")
    saved = config.get("modules_to_save")
    if saved is not None and not (isinstance(saved, list) and all(isinstance(t, str) and t for t in saved)):
        problems.append(f"modules_to_save={saved!r} must be null or a list of module names")
    if config.get("use_dora") not in (None, True, False):
        problems.append(f"use_dora={config.get('use_dora')!r} must be true or false")
    dropout = config.get("lora_dropout") or 0.0
    if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        problems.append(f"lora_dropout={dropout!r} must be a number in [0, 1)")
    if problems:
        raise ValueError(
            f"the peft adapter config {path} cannot be loaded by lorakit (nothing was changed):\n  - "
            + "\n  - ".join(problems)
        )
    return config


def peft_target_names(model: nn.Module, target_modules: str | list[str]) -> list[str]:
    """The qualified module names peft would adapt for ``target_modules``, in model order (Chapter 13).

    peft's rule: a string is a regular expression that must match the whole
    name (``re.fullmatch``); a list matches a name equal to an entry or ending in
    ``"." + entry``. Unlike :func:`lorakit.inject_lora`, list entries that match
    nothing are allowed, as in peft, as long as something matches.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
        >>> peft_target_names(model, ["2", "absent"]), peft_target_names(model, r"\\d")
        (['2'], ['0', '1', '2'])
    """
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as error:
            raise ValueError(
                f"target_modules={target_modules!r} is not a valid regular expression ({error}); peft reads a string "
                "target as a regex: fix the pattern, or give a list of layer names"
            ) from None
        return [name for name in names if pattern.fullmatch(name)]
    wanted = set(target_modules)
    return [name for name in names if name in wanted or any(name.endswith("." + t) for t in wanted)]


def load_peft_adapter(model: nn.Module, directory: str | os.PathLike) -> list[str]:
    """Inject LoRA (or DoRA) into ``model`` as a peft adapter directory describes, and load its weights (Chapter 13).

    ``model`` is the plain base model (the one peft's ``get_peft_model`` or
    ``PeftModel.from_pretrained`` would wrap), without LoRA layers yet. The
    config is validated (:func:`read_peft_config`), the targeted layers found
    with peft's matching rule, and every tensor name, shape and value checked before
    anything changes; then the layers are wrapped (:func:`lorakit.inject_adapter`, variant
    ``"dora"`` when ``use_dora``) and ``A``, ``B`` (and DoRA's magnitude, and the modules to
    save) copied in.

    Returns:
        The qualified names of the adapted layers.

    Raises:
        FileNotFoundError: a file of the adapter is missing.
        ValueError: unsupported or unreadable config, corrupt weights (truncated, not safetensors,
            NaN/Inf), the model already carries LoRA, no layer matches, or the tensors do not fit
            (all problems listed at once, naming the directory).
        TypeError: a targeted module is not an ``nn.Linear``.

    Example:
        >>> import tempfile, copy
        >>> base = nn.Sequential(nn.Linear(4, 4))
        >>> trained = copy.deepcopy(base)
        >>> _ = inject_adapter(trained, LoraConfig(r=2, target_modules="0", variant="dora"))
        >>> d = save_peft_adapter(trained, tempfile.mkdtemp())
        >>> load_peft_adapter(base, d), type(base[0]).__name__
        (['0'], 'DoRALinear')
    """
    directory = Path(directory)
    config = read_peft_config(directory)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}; peft's save_pretrained writes one next to the config")
    if any(True for _ in lora_layers(model)):
        raise ValueError(
            "the model already carries LoRA layers; load a peft adapter into the plain base model "
            "(or lorakit.unload(model) first)"
        )
    names = peft_target_names(model, config["target_modules"])
    if not names:
        raise ValueError(
            f"target_modules={config['target_modules']!r} matches no module of this model; "
            "load the adapter into the same architecture it was trained on"
        )
    modules = dict(model.named_modules())
    for name in names:
        if not isinstance(modules[name], nn.Linear):
            raise TypeError(
                f"target_modules matches {name!r}, a {type(modules[name]).__name__}; lorakit adapts nn.Linear only"
            )
    saved = peft_target_names(model, config["modules_to_save"]) if config.get("modules_to_save") else []
    saved = [n for n in saved if not any(n.startswith(s + ".") for s in saved)]  # outermost matches only
    tensors, _ = read_safetensors(weights_path, fix=_FIX)
    r, dora = config["r"], bool(config.get("use_dora"))
    problems = []
    expected: dict[str, tuple[int, ...]] = {}
    for name in names:
        linear = modules[name]
        if r > min(linear.in_features, linear.out_features):
            problems.append(
                f"layer {name!r} is {linear.out_features}x{linear.in_features} but r={r}: peft allows a rank "
                "above min(in, out) (the update then has rank min(in, out) anyway), lorakit does not; "
                "re-train the adapter with r <= min(in, out) or leave this layer out of target_modules"
            )
        expected[f"{_PREFIX}{name}.lora_A.weight"] = (r, linear.in_features)
        expected[f"{_PREFIX}{name}.lora_B.weight"] = (linear.out_features, r)
        if dora:
            expected[f"{_PREFIX}{name}.{_MAGNITUDE}"] = (linear.out_features,)
    for name in saved:
        for key, tensor in modules[name].state_dict().items():
            expected[f"{_PREFIX}{name}.{key}"] = tuple(tensor.shape)
    for key, shape in expected.items():
        if key not in tensors:
            problems.append(f"tensor {key!r} is missing")
        elif tuple(tensors[key].shape) != shape:
            problems.append(f"tensor {key!r} has shape {tuple(tensors[key].shape)}, the model needs {shape}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        problems.append(f"the file holds tensors lorakit would not load: {extra[:6]}{' …' if len(extra) > 6 else ''}")
    if problems:
        raise ValueError(f"adapter {directory} does not fit this model (nothing was changed):\n  - " + "\n  - ".join(problems))

    init = config.get("init_lora_weights", True)
    inject_adapter(model, LoraConfig(
        r=r, alpha=config["lora_alpha"], target_modules=tuple(names), match="exact",
        dropout=float(config.get("lora_dropout") or 0.0), init_A="gaussian" if init == "gaussian" else "kaiming",
        rslora=bool(config.get("use_rslora", False)), variant="dora" if dora else "lora",
        modules_to_save=tuple(saved),
    ))
    layers = dict(lora_layers(model))
    with torch.no_grad():
        for name in names:
            layers[name].A.copy_(tensors[f"{_PREFIX}{name}.lora_A.weight"])
            layers[name].B.copy_(tensors[f"{_PREFIX}{name}.lora_B.weight"])
            if dora:
                layers[name].m.copy_(tensors[f"{_PREFIX}{name}.{_MAGNITUDE}"])
        for name in saved:
            for key, tensor in modules[name].state_dict().items():
                tensor.copy_(tensors[f"{_PREFIX}{name}.{key}"])
    return names
