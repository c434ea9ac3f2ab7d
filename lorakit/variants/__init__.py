"""The LoRA family: variants built on :class:`lorakit.layer.LoRALinear` (Part V).

One small module per idea:

* :mod:`lorakit.variants.lora_plus` — LoRA+: a larger learning rate for ``B`` than for ``A``;
* :mod:`lorakit.variants.dora` — DoRA: magnitude and direction, LoRA on the direction;
* :mod:`lorakit.variants.pissa` — PiSSA: ``A``, ``B`` from the top-``r`` singular triplets of ``W``;
* :mod:`lorakit.variants.adalora` — AdaLoRA: SVD-form adapter with a pruned rank budget;
* :mod:`lorakit.variants.relora` — ReLoRA: merge and restart the adapter periodically;
* :mod:`lorakit.variants.galore` — GaLore: full-parameter Adam with low-rank projected gradients;
* :mod:`lorakit.variants.nf4` — the QLoRA idea: a 4-bit NormalFloat base with LoRA on top.

rsLoRA needs no module: it is ``LoRALinear(..., rslora=True)``.
"""

from ._common import update_rank, wrap_linears
from .adalora import AdaLoRAController, AdaLoRALinear, orthogonal_regularizer
from .dora import DoRALinear
from .galore import GaLoreAdamW, adam_state_numel
from .lora_plus import loraplus_param_groups
from .nf4 import NF4Linear, NF4Tensor, QLoRALinear, dequantize_nf4, nf4_table, quantize_nf4
from .pissa import PiSSALinear
from .relora import ReLoRA

__all__ = [
    "wrap_linears",
    "update_rank",
    "loraplus_param_groups",
    "DoRALinear",
    "PiSSALinear",
    "AdaLoRALinear",
    "AdaLoRAController",
    "orthogonal_regularizer",
    "ReLoRA",
    "GaLoreAdamW",
    "adam_state_numel",
    "nf4_table",
    "quantize_nf4",
    "dequantize_nf4",
    "NF4Tensor",
    "NF4Linear",
    "QLoRALinear",
]
