"""Save and load only the adapter: the ``A`` and ``B`` factors, not the frozen base.

An adapter file is a safetensors file with tensors ``"<layer>.A"`` and
``"<layer>.B"`` for every LoRA layer, and string metadata recording each layer's
``r``, ``alpha`` and ``rslora``. It is a small fraction of the model's size, and one
base model can switch between several adapter files.

Writes are atomic (a temporary file renamed into place), and loading checks every
name, shape and hyperparameter before it copies anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .inject import lora_layers

__all__ = ["adapter_state_dict", "save_adapter", "load_adapter"]

_FORMAT = "lorakit-adapter/1"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``model``: ``{"<layer>.A": A, "<layer>.B": B, ...}`` (detached).

    ``A`` has shape ``(r, in)`` and ``B`` shape ``(out, r)``.

    Example:
        >>> from lorakit import inject_lora
        >>> model = nn.Sequential(nn.Linear(8, 6))
        >>> _ = inject_lora(model, "0", r=2, match="exact")
        >>> {key: tuple(value.shape) for key, value in adapter_state_dict(model).items()}
        {'0.A': (2, 8), '0.B': (6, 2)}
    """
    state = {}
    for name, layer in lora_layers(model):
        state[f"{name}.A"] = layer.A.detach()
        state[f"{name}.B"] = layer.B.detach()
    return state


def _layer_config(model: nn.Module) -> dict[str, dict]:
    return {
        name: {"r": layer.r, "alpha": layer.alpha, "rslora": layer.rslora} for name, layer in lora_layers(model)
    }


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the adapter of ``model`` to ``path`` (safetensors); return the path.

    Raises ``ValueError`` if the model has no LoRA layers. The file appears whole
    or not at all.

    Example:
        >>> from lorakit import inject_lora
        >>> model = nn.Sequential(nn.Linear(8, 8))
        >>> _ = inject_lora(model, "0", r=2, match="exact")
        >>> import tempfile, os
        >>> path = save_adapter(model, os.path.join(tempfile.mkdtemp(), "adapter.safetensors"))
        >>> sorted(load_file(path))
        ['0.A', '0.B']
    """
    config = _layer_config(model)
    if not config:
        raise ValueError("the model has no LoRA layers to save; call inject_lora(...) first")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.contiguous().cpu() for key, value in adapter_state_dict(model).items()}
    metadata = {"format": _FORMAT, "layers": json.dumps(config, sort_keys=True)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _read_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != _FORMAT:
        raise ValueError(
            f"{path} is not a lorakit adapter (metadata format={metadata.get('format')!r}); "
            "save adapters with lorakit.save_adapter, or use lorakit's peft loader for peft adapters"
        )
    return json.loads(metadata["layers"])


def load_adapter(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy the adapter stored at ``path`` into the LoRA layers of ``model``.

    The model must already carry LoRA layers with the same names, ranks, alphas
    and shapes (inject them with the same call that made the adapter). Every
    mismatch is reported in one ``ValueError`` before any weight changes.
    Loading into a merged layer is refused too: unmerge first.

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
        >>> torch.equal(target[0].A, source[0].A), torch.equal(target[0].B, source[0].B)
        (True, True)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no adapter file at {path}; save one with lorakit.save_adapter(model, path)")
    stored_config = _read_metadata(path)
    tensors = load_file(str(path))
    layers = dict(lora_layers(model))

    problems = []
    missing = sorted(set(stored_config) - set(layers))
    extra = sorted(set(layers) - set(stored_config))
    if missing:
        problems.append(f"the adapter has layers the model lacks: {missing}")
    if extra:
        problems.append(f"the model has LoRA layers the adapter lacks: {extra}")
    for name in sorted(set(stored_config) & set(layers)):
        layer, saved = layers[name], stored_config[name]
        ours = {"r": layer.r, "alpha": layer.alpha, "rslora": layer.rslora}
        if ours != saved:
            problems.append(f"layer {name!r}: adapter has {saved}, model has {ours}")
        for factor in ("A", "B"):
            key = f"{name}.{factor}"
            expected = tuple(getattr(layer, factor).shape)
            if key not in tensors:
                problems.append(f"tensor {key!r} is missing from the file")
            elif tuple(tensors[key].shape) != expected:
                problems.append(f"tensor {key!r} has shape {tuple(tensors[key].shape)}, the model needs {expected}")
        if layer.merged:
            problems.append(f"layer {name!r} is merged; call lorakit.unmerge_lora(model) before loading")
    if problems:
        raise ValueError(
            f"adapter {path} does not fit this model (nothing was loaded):\n  - " + "\n  - ".join(problems)
        )
    with torch.no_grad():
        for name, layer in layers.items():
            layer.A.copy_(tensors[f"{name}.A"])
            layer.B.copy_(tensors[f"{name}.B"])
