"""The Part IV tasks, pretraining and stored weights of the tiny ViT (Chapters 7–9).

The model itself is :mod:`lorakit.book.tinyformer.model`.

* **Pretraining task** — the five garment classes of FashionMNIST
  (T-shirt/top, Trouser, Pullover, Dress, Coat), upright images.
* **Downstream task** — the *other* five classes (Sandal, Shirt, Sneaker, Bag,
  Ankle boot), which the pretrained model never saw, shown **rotated by 90°**.
  A new 5-way head is trained by every adaptation method (as the LoRA paper does
  for GLUE); the body is adapted by the method under study. Fine-tuning is
  :func:`lorakit.book.scaffold.finetune` (AdamW, cross-entropy).

The pretrained weights are produced by :func:`pretrain` from a seed and stored in
``lorakit/book/assets/tinyvit_fmnist.safetensors`` (about 0.3 MB, package data, so an installed
wheel has it too), in :mod:`lorakit.book.scaffold`'s one metadata format. Regenerate them bit for
bit with::

    python -m lorakit.book.tinyformer --out lorakit/book/assets/tinyvit_fmnist.safetensors

:func:`load_pretrained` loads the file if present, else trains and writes it.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...repro import seed_everything
from ...train import accuracy, fit
from ..data import load_fashion_mnist
from ..scaffold import Task, load_or_pretrain, load_weights, rotate, save_weights
from .model import TinyViT, TinyViTConfig

__all__ = [
    "PRETRAIN_CLASSES",
    "DOWNSTREAM_CLASSES",
    "CLASS_NAMES",
    "DEFAULT_WEIGHTS",
    "load_task",
    "downstream_task",
    "pretrain",
    "save_model",
    "load_model",
    "load_pretrained",
    "reset_head",
    "PretrainRecipe",
    "main",
]

#: FashionMNIST's ten class names, by label (Chapter 7).
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: Labels of the pretraining task (T-shirt/top, Trouser, Pullover, Dress, Coat) (Chapter 7).
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
#: Labels of the downstream task (Sandal, Shirt, Sneaker, Bag, Ankle boot), shown rotated by 90° (Chapter 7).
DOWNSTREAM_CLASSES = (5, 6, 7, 8, 9)
#: The pretrained weight file, ``lorakit/book/assets/tinyvit_fmnist.safetensors`` (package data) (Chapter 7).
DEFAULT_WEIGHTS = Path(__file__).parent.parent / "assets" / "tinyvit_fmnist.safetensors"
_FORMAT = "lorakit-tinyvit/1"


# ----------------------------------------------------------------------------- data


def load_task(
    task: str, split: str, n: int | None = None, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pretraining or the downstream task, as in-memory tensors (Chapter 7).

    Args:
        task: ``"pretrain"`` (classes 0–4, upright) or ``"downstream"`` (classes 5–9,
            images rotated by 90° counter-clockwise).
        split: ``"train"`` or ``"test"`` (FashionMNIST's own split).
        n: keep a random subset of ``n`` examples (drawn with ``seed``), or all if ``None``.
        seed: seed of the subset draw.

    Returns:
        ``X`` float32 ``(n, 784)`` in ``[0, 1]`` and ``y`` int64 ``(n,)`` with labels ``0..4``
        (the position of the class in :data:`PRETRAIN_CLASSES` or :data:`DOWNSTREAM_CLASSES`).

    Example:
        >>> X, y = load_task("downstream", "test", n=10)   # doctest: +SKIP
        >>> X.shape, int(y.max()) <= 4                     # doctest: +SKIP
        (torch.Size([10, 784]), True)
    """
    if task not in ("pretrain", "downstream"):
        raise ValueError(f"task={task!r} is unknown: use 'pretrain' or 'downstream'")
    X, y = load_fashion_mnist(split)
    X, y = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
    classes = torch.tensor(PRETRAIN_CLASSES if task == "pretrain" else DOWNSTREAM_CLASSES)
    keep = torch.isin(y, classes)
    X, y = X[keep], torch.searchsorted(classes, y[keep])
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(X):
            raise ValueError(f"n={n!r} must be an int in 1..{len(X)} (the size of the {split} split), or None")
        idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:n]
        X, y = X[idx], y[idx]
    if task == "downstream":
        X = rotate(X)
    return X, y


def downstream_task(n_train: int | None = 2000, n_test: int | None = 2000, *, seed: int = 0) -> Task:
    """The Part IV downstream task, both splits, as one :class:`~lorakit.book.scaffold.Task` (Chapter 7).

    Chapters 7–9 train on 2,000 rotated images of the five unseen classes and score on 2,000 more
    (each a random subset drawn with ``seed``, see :func:`load_task`).

    Example:
        >>> X, y, X_test, y_test = downstream_task(10, 20)   # doctest: +SKIP
        >>> X.shape, X_test.shape                            # doctest: +SKIP
        (torch.Size([10, 784]), torch.Size([20, 784]))
    """
    return Task(*load_task("downstream", "train", n_train, seed=seed), *load_task("downstream", "test", n_test, seed=seed))


# ----------------------------------------------------------------------------- the new head


def reset_head(model: TinyViT, n_classes: int = 5, *, generator: torch.Generator | None = None) -> nn.Linear:
    """Replace ``model.head`` by a fresh trainable ``nn.Linear(dim, n_classes)``; return it (Chapter 7).

    The new head is drawn from ``generator`` (PyTorch's default ``nn.Linear`` init),
    so every method in a comparison can start from the same head.

    Example:
        >>> model = TinyViT(TinyViTConfig(dim=16, depth=1, heads=2, mlp_dim=16))
        >>> head = reset_head(model, 3, generator=torch.Generator().manual_seed(0))
        >>> head is model.head, head.weight.shape, model(torch.rand(2, 784)).shape
        (True, torch.Size([3, 16]), torch.Size([2, 3]))
    """
    if not isinstance(model, TinyViT):
        raise TypeError(f"reset_head expects a TinyViT, got {type(model).__name__}")
    head = nn.Linear(model.config.dim, n_classes)
    bound = 1 / math.sqrt(model.config.dim)
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    model.head = head
    return head


# ----------------------------------------------------------------------------- pretraining and storage


@dataclass(frozen=True)
class PretrainRecipe:
    """How :func:`pretrain` trains; stored in the weight file's metadata (Chapter 7).

    Attributes:
        seed: seeds torch (weights, batch order) and the training subset.
        epochs, batch_size: passed to :func:`lorakit.train.fit`.
        lr, weight_decay: AdamW settings.

    Example:
        >>> PretrainRecipe()
        PretrainRecipe(seed=0, epochs=4, batch_size=128, lr=0.003, weight_decay=0.01)
        >>> PretrainRecipe(epochs=1).batch_size
        128
    """

    seed: int = 0
    epochs: int = 4
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.01


def pretrain(
    config: TinyViTConfig | None = None,
    recipe: PretrainRecipe | None = None,
    *,
    n_train: int | None = None,
    progress: bool = True,
) -> tuple[TinyViT, float]:
    """Pretrain a :class:`TinyViT` on the pretraining task; return ``(model, test accuracy)`` (Chapter 7).

    Deterministic: the same config and recipe give bit-identical weights on the same
    machine and torch version (one thread, seeded from ``recipe.seed``).

    Args:
        config: model sizes (default :class:`TinyViTConfig`).
        recipe: seed, epochs, batch size, AdamW learning rate and weight decay.
        n_train: use a subset of the 30,000 training images (for tests), or all.
        progress: show the progress bar.

    Example:
        >>> config = TinyViTConfig(dim=16, depth=1, heads=2, mlp_dim=16)
        >>> recipe = PretrainRecipe(epochs=1)
        >>> model, acc = pretrain(config, recipe, n_train=256, progress=False)  # doctest: +SKIP
        >>> model.config == config, 0.0 <= acc <= 1.0  # doctest: +SKIP
        (True, True)
    """
    config = config or TinyViTConfig()
    recipe = recipe or PretrainRecipe()
    generator = seed_everything(recipe.seed)
    X, y = load_task("pretrain", "train", n_train, seed=recipe.seed)
    X_test, y_test = load_task("pretrain", "test")
    model = TinyViT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    fit(model, X, y, loss_fn=F.cross_entropy, optimizer=optimizer, epochs=recipe.epochs,
        batch_size=recipe.batch_size, generator=generator, progress=progress, desc="pretraining")
    return model, accuracy(model, X_test, y_test)


def save_model(model: TinyViT, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``model``'s weights and config to a safetensors file (atomically); return the path (Chapter 7).

    Args:
        model: the :class:`TinyViT` to save.
        path: the file; missing parent directories are created.
        extra: more JSON-serialisable metadata, returned by :func:`load_model`.

    Example:
        >>> import tempfile
        >>> model = TinyViT(TinyViTConfig(dim=16, depth=1, heads=2, mlp_dim=16))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_model(model, Path(tmp) / "vit.safetensors", extra={"note": "demo"})
        ...     print(path.name, path.is_file())
        vit.safetensors True
    """
    if not isinstance(model, TinyViT):
        raise TypeError(f"save_model expects a TinyViT, got {type(model).__name__}")
    return save_weights(model, path, format=_FORMAT, metadata={"config": asdict(model.config), **(extra or {})})


def load_model(path: str | os.PathLike) -> tuple[TinyViT, dict]:
    """Load a :class:`TinyViT` written by :func:`save_model`; return ``(model, metadata)`` (Chapter 7).

    Example:
        >>> import tempfile
        >>> model = TinyViT(TinyViTConfig(dim=16, depth=1, heads=2, mlp_dim=16))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_model(model, Path(tmp) / "vit.safetensors", extra={"note": "demo"})
        ...     loaded, meta = load_model(path)
        >>> meta["config"]["dim"], meta["note"], torch.equal(loaded.head.weight, model.head.weight)
        (16, 'demo', True)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}; create it with `python -m lorakit.book.tinyformer --out {path}`")
    tensors, meta = load_weights(path, format=_FORMAT)
    model = TinyViT(TinyViTConfig(**meta["config"]))
    model.load_state_dict(tensors)
    return model, meta


def load_pretrained(path: str | os.PathLike | None = None, *, progress: bool = False) -> TinyViT:
    """The pretrained TinyViT: load ``path`` if present, else pretrain (default recipe) and save it (Chapter 7).

    Args:
        path: the weight file (default :data:`DEFAULT_WEIGHTS`, ``lorakit/book/assets/tinyvit_fmnist.safetensors``).
        progress: show the pretraining progress bar when it has to train.

    Returns:
        The model in eval mode, all parameters trainable (freeze what you adapt).

    Example:
        >>> import tempfile
        >>> small = TinyViT(TinyViTConfig(dim=16, depth=1, heads=2, mlp_dim=16))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_model(small, Path(tmp) / "vit.safetensors")
        ...     model = load_pretrained(path)  # the file exists, so nothing trains
        >>> model.training, model.config.dim
        (False, 16)
        >>> model = load_pretrained()  # the book's weights, pretrained if missing  # doctest: +SKIP
    """

    def train() -> tuple[TinyViT, dict]:
        recipe = PretrainRecipe()
        model, acc = pretrain(recipe=recipe, progress=progress)
        return model, {"config": asdict(model.config), "recipe": asdict(recipe), "pretrain_test_accuracy": acc}

    model, _ = load_or_pretrain(
        Path(path) if path is not None else DEFAULT_WEIGHTS, format=_FORMAT,
        build=lambda meta: TinyViT(TinyViTConfig(**meta["config"])), pretrain=train,
    )
    return model


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: pretrain the default TinyViT and write its weights (Chapter 7).

    ``python -m lorakit.book.tinyformer [--out FILE] [--seed 0] [--epochs 4]``; prints the
    pretraining test accuracy and the file written.

    Example:
        >>> import contextlib, io
        >>> out = io.StringIO()
        >>> with contextlib.redirect_stdout(out):
        ...     try:
        ...         main(["--help"])
        ...     except SystemExit:
        ...         pass
        >>> "--out" in out.getvalue() and "--epochs" in out.getvalue()
        True
        >>> main(["--out", "lorakit/book/assets/tinyvit_fmnist.safetensors"])  # pretrains on FashionMNIST  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(prog="python -m lorakit.book.tinyformer",
                                     description="Pretrain the Part IV TinyViT on FashionMNIST classes 0-4.")
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="output safetensors file")
    parser.add_argument("--seed", type=int, default=PretrainRecipe.seed)
    parser.add_argument("--epochs", type=int, default=PretrainRecipe.epochs)
    args = parser.parse_args(argv)
    recipe = PretrainRecipe(seed=args.seed, epochs=args.epochs)
    model, acc = pretrain(recipe=recipe)
    path = save_model(model, args.out, extra={"recipe": asdict(recipe), "pretrain_test_accuracy": acc})
    print(f"pretraining test accuracy {acc:.4g}; wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
