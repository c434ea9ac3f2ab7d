"""lorakit — the small library grown from the book *Understanding LoRA*.

Each module is one idea a chapter teaches:

* :mod:`lorakit.layer` — :class:`LoRALinear`, the LoRA layer (Chapter 1);
* :mod:`lorakit.inject` — put LoRA into any model by layer names, count, merge;
* :mod:`lorakit.adapter` — save and load adapter weights only;
* :mod:`lorakit.train` — the shared training loop;
* :mod:`lorakit.repro` — seeding and thread control;
* :mod:`lorakit.toy` — the minimal ``y = Xθ`` example;
* :mod:`lorakit.rlang` — R cells through rpy2.
"""

from .adapter import adapter_state_dict, load_adapter, save_adapter
from .inject import (
    ParameterCount,
    count_parameters,
    inject_lora,
    lora_layers,
    merge_lora,
    unload_lora,
    unmerge_lora,
)
from .layer import LoRALinear
from .repro import seed_everything
from .train import History, fit

__version__ = "0.1.0"

__all__ = [
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
