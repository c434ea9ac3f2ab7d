"""The tiny vision transformer of Part IV and its tasks (Chapters 7–9).

Split along its seam: :mod:`~lorakit.book.tinyformer.model` is the model (patches, attention,
blocks, :class:`TinyViT`); :mod:`~lorakit.book.tinyformer.task` the pretraining and downstream
tasks, the new head, pretraining and the stored weights. Fine-tuning is the book's one helper,
:func:`lorakit.book.scaffold.finetune`. ``python -m lorakit.book.tinyformer`` pretrains and writes
the weights.
"""

from .model import Attention, Block, TinyViT, TinyViTConfig, patchify
from .task import (
    CLASS_NAMES,
    DEFAULT_WEIGHTS,
    DOWNSTREAM_CLASSES,
    PRETRAIN_CLASSES,
    PretrainRecipe,
    downstream_task,
    load_model,
    load_pretrained,
    load_task,
    main,
    pretrain,
    reset_head,
    save_model,
)

__all__ = [
    "TinyViTConfig", "Attention", "Block", "TinyViT", "patchify",
    "PRETRAIN_CLASSES", "DOWNSTREAM_CLASSES", "CLASS_NAMES", "DEFAULT_WEIGHTS",
    "load_task", "downstream_task", "pretrain", "save_model", "load_model", "load_pretrained", "reset_head", "PretrainRecipe", "main",
]
