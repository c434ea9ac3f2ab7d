"""lorakit — the small LoRA library grown from the book *Understanding LoRA*.

The top level is the reusable library; it never imports the book's experiment code.

* :mod:`lorakit.config` — :class:`LoraConfig`, the one description of an adapter (any variant;
  Chapter 1);
* :mod:`lorakit.layer` — :class:`LoRALinear`, the LoRA layer, and the variant registry (Chapter 1);
* :mod:`lorakit.inject` — :func:`inject_adapter` (one path for every variant), count, merge, unload,
  ``merge_and_unload``/``unload``/``disable_adapters`` (peft's names; Chapter 1);
* :mod:`lorakit.adapter` — save and load adapters (every variant's tensors, stored config; Chapter 3);
* :mod:`lorakit.train` — the training loop and ``accuracy``; :mod:`lorakit.repro` — seeding, threads;
  :mod:`lorakit.io` — atomic writes and checked reads;
* :mod:`lorakit.protocol` (Chapter 3) — splits, tuning on validation, seeds, intervals, paired
  differences; :mod:`lorakit.results` — stored full-scale results, resumable and re-verified;
  :mod:`lorakit.replicas` (Chapter 4) — K training runs as one vectorised computation;
* :mod:`lorakit.peft_methods` (Chapter 7) — BitFit, adapters, prefix tuning, intrinsic dimension;
  :mod:`lorakit.subspace` (Chapter 9) — subspace similarity, amplification;
* :mod:`lorakit.optim` (Chapter 10) — Riemannian-preconditioned optimizers; :mod:`lorakit.variants`
  (Part V) — LoRA+, DoRA, PiSSA, AdaLoRA, ReLoRA, GaLore, NF4/QLoRA;
* :mod:`lorakit.peft_compat` (Chapter 13) — 🤗 peft's adapter format.

The book's experiment code (tasks, pretrained models, sweeps, benchmarks) lives in
:mod:`lorakit.book`, one module per chapter or part.
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
