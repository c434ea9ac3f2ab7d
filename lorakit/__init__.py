"""lorakit — the small library grown from the book *Understanding LoRA*.

Each module is one idea a chapter teaches; later chapters import it.

Core (Chapter 1):

* :mod:`lorakit.config` — :class:`LoraConfig`, the one description of an adapter (any variant);
* :mod:`lorakit.layer` — :class:`LoRALinear`, the LoRA layer, and the variant registry;
* :mod:`lorakit.inject` — :func:`inject_adapter` (one path for every variant), count, merge, unload,
  ``merge_and_unload``/``unload``/``disable_adapters`` (peft's names);
* :mod:`lorakit.adapter` — save and load adapters (every variant's tensors, stored config);
* :mod:`lorakit.io` — atomic writes and checked reads of the files lorakit uses;
* :mod:`lorakit.train` — the shared training loop; :mod:`lorakit.repro` — seeding and threads;
* :mod:`lorakit.toy` — the minimal ``y = Xθ`` example; :mod:`lorakit.rlang` — R cells through rpy2.

Part II: :mod:`lorakit.data` (FashionMNIST without torchvision), :mod:`lorakit.lowrank`
(low-rank layers instead of full-rank weights), :mod:`lorakit.transfer` (the shared fine-tuning task).

Part III: :mod:`lorakit.expressive` (the expressive power of LoRA: constructions, methods, sweeps).

Part IV: :mod:`lorakit.tinyformer` (a tiny ViT), :mod:`lorakit.peft_methods` (BitFit, adapters,
prefix tuning, intrinsic dimension), :mod:`lorakit.subspace` (subspace similarity, amplification).

Part V: :mod:`lorakit.optim` (Riemannian-preconditioned optimizers), :mod:`lorakit.variants`
(LoRA+, DoRA, PiSSA, AdaLoRA, ReLoRA, GaLore, NF4/QLoRA).

Part VI: :mod:`lorakit.peft_compat` (🤗 peft's adapter format), :mod:`lorakit.sentences` (the sentence
task of Chapter 13), :mod:`lorakit.bench` (speed).
"""

from .adapter import adapter_state_dict, load_adapter, save_adapter
from .config import LoraConfig
from .inject import (
    ParameterCount,
    count_parameters,
    disable_adapters,
    inject_adapter,
    inject_lora,
    lora_layers,
    merge_and_unload,
    merge_lora,
    unload,
    unload_lora,
    unmerge_lora,
)
from .layer import LoRALinear, register_variant, variant_class, variant_names
from .repro import seed_everything
from .train import History, fit

__version__ = "0.1.0"

__all__ = [
    "LoraConfig",
    "inject_adapter",
    "merge_and_unload",
    "unload",
    "disable_adapters",
    "register_variant",
    "variant_class",
    "variant_names",
    "LoRALinear",
    "ParameterCount",
    "count_parameters",
    "inject_lora",
    "lora_layers",
    "merge_lora",
    "unmerge_lora",
    "unload_lora",
    "adapter_state_dict",
    "save_adapter",
    "load_adapter",
    "seed_everything",
    "History",
    "fit",
]
