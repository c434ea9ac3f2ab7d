"""A tiny vision transformer (ViT) on FashionMNIST: the model Part IV adapts.

The LoRA paper's questions (which weights to adapt, which rank, what ``ΔW`` looks
like) need a transformer, with query/key/value/output projections. This module
holds one small enough to pretrain and adapt on a 2-core CPU in seconds:

* **Model** — a 28×28 image is cut into 16 patches of 7×7 pixels; each patch is a
  token (a 49-dimensional vector projected to ``dim``), a learned ``[CLS]`` token is
  prepended, and ``depth`` pre-norm transformer blocks follow. Every block has the
  four attention projections ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (each an
  ``nn.Linear(dim, dim)``, the paper's ``W_q``, ``W_k``, ``W_v``, ``W_o``) and a
  two-layer GELU MLP ``fc1``/``fc2``.
* **Pretraining task** — the five garment classes of FashionMNIST
  (T-shirt/top, Trouser, Pullover, Dress, Coat), upright images.
* **Downstream task** — the *other* five classes (Sandal, Shirt, Sneaker, Bag,
  Ankle boot), which the pretrained model never saw, shown **rotated by 90°**.
  A new 5-way head is trained by every adaptation method (as the LoRA paper does
  for GLUE); the body is adapted by the method under study.

The pretrained weights are produced by :func:`pretrain` from a seed and stored in
``lorakit/assets/tinyvit_fmnist.safetensors`` (about 0.3 MB, package data, so an installed wheel
has it too). Regenerate them bit for bit with::

    python -m lorakit.tinyformer --out lorakit/assets/tinyvit_fmnist.safetensors

:func:`load_pretrained` loads the file if present, else trains and writes it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .repro import seed_everything
from .train import History, fit

__all__ = [
    "TinyViTConfig",
    "Attention",
    "Block",
    "TinyViT",
    "PRETRAIN_CLASSES",
    "DOWNSTREAM_CLASSES",
    "CLASS_NAMES",
    "DEFAULT_WEIGHTS",
    "patchify",
    "load_task",
    "pretrain",
    "save_model",
    "load_model",
    "load_pretrained",
    "reset_head",
    "accuracy",
    "finetune",
    "FinetuneResult",
    "PretrainRecipe",
    "main",
]

#: FashionMNIST's ten class names, by label.
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: Labels of the pretraining task (T-shirt/top, Trouser, Pullover, Dress, Coat).
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
#: Labels of the downstream task (Sandal, Shirt, Sneaker, Bag, Ankle boot), shown rotated by 90°.
DOWNSTREAM_CLASSES = (5, 6, 7, 8, 9)
#: The pretrained weight file, ``lorakit/assets/tinyvit_fmnist.safetensors`` (package data).
DEFAULT_WEIGHTS = Path(__file__).with_name("assets") / "tinyvit_fmnist.safetensors"
_FORMAT = "lorakit-tinyvit/1"


@dataclass(frozen=True)
class TinyViTConfig:
    """Sizes of a :class:`TinyViT`.

    Attributes:
        image_size: side of the square input image in pixels.
        patch_size: side of a square patch; must divide ``image_size``.
        dim: token width ``d`` (the attention projections are ``d × d``).
        depth: number of transformer blocks.
        heads: attention heads; must divide ``dim``.
        mlp_dim: hidden width of each block's MLP.
        n_classes: outputs of the classification head.

    Example:
        >>> c = TinyViTConfig()
        >>> c.n_patches, c.patch_dim, c.dim // c.heads
        (16, 49, 16)
        >>> TinyViTConfig(dim=30, heads=4)
        Traceback (most recent call last):
            ...
        ValueError: heads=4 does not divide dim=30; choose e.g. heads=4 for dim=64
    """

    image_size: int = 28
    patch_size: int = 7
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 128
    n_classes: int = 5

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TinyViTConfig.{name}={value!r} must be a positive int")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size={self.patch_size} does not divide image_size={self.image_size}; "
                "choose a divisor such as 7 or 4 for 28-pixel images"
            )
        if self.dim % self.heads:
            raise ValueError(f"heads={self.heads} does not divide dim={self.dim}; choose e.g. heads=4 for dim=64")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.patch_size**2


def patchify(X: torch.Tensor, image_size: int = 28, patch_size: int = 7) -> torch.Tensor:
    """Cut flattened images into flattened square patches, row by row.

    Args:
        X: images, shape ``(N, image_size**2)`` (or ``(N, image_size, image_size)``).
        image_size, patch_size: see :class:`TinyViTConfig`.

    Returns:
        Shape ``(N, (image_size/patch_size)**2, patch_size**2)``.

    Example:
        >>> patchify(torch.zeros(3, 784)).shape
        torch.Size([3, 16, 49])
    """
    n = X.shape[0]
    if X.numel() != n * image_size * image_size:
        raise ValueError(
            f"X has shape {tuple(X.shape)}, expected (N, {image_size * image_size}) flattened "
            f"{image_size}x{image_size} images"
        )
    g = image_size // patch_size
    X = X.reshape(n, g, patch_size, g, patch_size).permute(0, 1, 3, 2, 4)
    return X.reshape(n, g * g, patch_size * patch_size)


class Attention(nn.Module):
    """Multi-head self-attention with separate ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``.

    ``prefix_k`` and ``prefix_v`` are ``None`` unless prefix tuning sets them
    (:func:`lorakit.peft_methods.add_prefix`): then ``(n_prefix, dim)`` trainable
    vectors are prepended to the keys and values of every sequence.

    Shapes:
        input ``(N, T, dim)`` → output ``(N, T, dim)``; each projection's weight is ``(dim, dim)``.

    Example:
        >>> attn = Attention(dim=8, heads=2)
        >>> attn(torch.randn(2, 5, 8)).shape, attn.q_proj.weight.shape
        (torch.Size([2, 5, 8]), torch.Size([8, 8]))
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.prefix_k: nn.Parameter | None = None
        self.prefix_v: nn.Parameter | None = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.reshape(n, t, self.heads, self.dim // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.prefix_k is not None and self.prefix_v is not None:
            k = torch.cat([self.prefix_k.expand(n, -1, -1), k], dim=1)
            v = torch.cat([self.prefix_v.expand(n, -1, -1), v], dim=1)
        q, k, v = self._split(q), self._split(k), self._split(v)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.dim // self.heads)
        out = scores.softmax(dim=-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(n, t, self.dim))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + fc2(gelu(fc1(ln2(x))))``.

    Shapes:
        input ``(N, T, dim)`` → output ``(N, T, dim)``; ``fc1.weight`` is ``(mlp_dim, dim)``,
        ``fc2.weight`` is ``(dim, mlp_dim)``.

    Example:
        >>> block = Block(dim=8, heads=2, mlp_dim=16)
        >>> block(torch.randn(2, 5, 8)).shape, block.fc1.weight.shape
        (torch.Size([2, 5, 8]), torch.Size([16, 8]))
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyViT(nn.Module):
    """A small vision transformer for 28×28 grey images.

    Module names follow the usual LoRA targets: ``blocks.{i}.attn.q_proj`` (and
    ``k_proj``, ``v_proj``, ``o_proj``), ``blocks.{i}.fc1``, ``blocks.{i}.fc2``,
    ``patch_embed`` and ``head``.

    Args:
        config: the sizes (default: 64-wide, 2 blocks, 4 heads, 5 classes; 72k parameters).

    Shapes:
        input ``(N, 784)`` pixels in ``[0, 1]`` → logits ``(N, n_classes)``.

    Example:
        >>> model = TinyViT(TinyViTConfig(dim=32, depth=1, heads=2, mlp_dim=64))
        >>> model(torch.rand(3, 784)).shape
        torch.Size([3, 5])
        >>> model.blocks[0].attn.q_proj.weight.shape
        torch.Size([32, 32])
    """

    def __init__(self, config: TinyViTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TinyViTConfig()
        self.patch_embed = nn.Linear(config.patch_dim, config.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, config.n_patches + 1, config.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_dim) for _ in range(config.depth))
        self.ln_f = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.n_classes)

    def features(self, X: torch.Tensor) -> torch.Tensor:
        """The final ``[CLS]`` representation, shape ``(N, dim)``."""
        c = self.config
        tokens = self.patch_embed(patchify(X, c.image_size, c.patch_size))
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.ln_f(tokens[:, 0])

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(X))


# ----------------------------------------------------------------------------- data


def load_task(
    task: str, split: str, n: int | None = None, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pretraining or the downstream task, as in-memory tensors.

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
    from .data import load_fashion_mnist

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
        X = torch.rot90(X.reshape(-1, 28, 28), k=1, dims=(1, 2)).reshape(-1, 784).contiguous()
    return X, y


# ----------------------------------------------------------------------------- training


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``X`` that ``model`` classifies as ``y`` (eval mode, no gradients).

    Args:
        model: any classifier mapping ``(N, 784)`` to logits ``(N, n_classes)``; its
            train/eval mode is restored afterwards.
        X, y: images ``(N, 784)`` and labels ``(N,)``.
        batch_size: images per forward pass.

    Example:
        >>> model = TinyViT(TinyViTConfig(dim=16, depth=1, heads=2, mlp_dim=16))
        >>> with torch.no_grad():  # a head that always predicts class 2
        ...     _ = model.head.weight.zero_()
        ...     _ = model.head.bias.copy_(torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]))
        >>> accuracy(model, torch.rand(4, 784), torch.tensor([2, 2, 0, 1]))
        0.5
    """
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            correct += int((model(X[start : start + batch_size]).argmax(-1) == y[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / len(X)


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        history: the :class:`lorakit.train.History` of the run (train loss per epoch, test accuracy).
        accuracy: test accuracy after the last epoch.
        trainable: number of trainable parameters.
        step_seconds: mean wall-clock seconds per optimisation step (a timing: varies run to run).

    Example:
        >>> history = History(train_loss=[0.9], evals=[{"epoch": 1, "acc": 0.8}])
        >>> res = FinetuneResult(history=history, accuracy=0.8, trainable=325, step_seconds=0.002)
        >>> res.history.metric("acc"), res.trainable
        ([0.8], 325)
    """

    history: History
    accuracy: float
    trainable: int
    step_seconds: float


def finetune(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    X_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    lr: float,
    epochs: int,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    weight_decay: float = 0.0,
    parameters: Sequence[nn.Parameter] | None = None,
    eval_every: int | None = None,
    progress: bool = True,
    desc: str = "fine-tuning",
) -> FinetuneResult:
    """Train the ``requires_grad`` parameters of ``model`` with AdamW and cross-entropy.

    Every Part IV method (full fine-tuning, BitFit, adapters, prefix, LoRA) runs
    through this one function, so they share data, batches, optimiser and budget.

    Args:
        model: the model; its trainable parameters are those with ``requires_grad``.
        X, y: training images ``(N, 784)`` and labels ``(N,)``.
        X_test, y_test: evaluation set, scored after the last epoch (and every
            ``eval_every`` epochs if given).
        lr, weight_decay: AdamW settings.
        epochs, batch_size, generator: passed to :func:`lorakit.train.fit`.
        parameters: train these instead of the ``requires_grad`` ones.
        progress, desc: the progress bar.

    Returns:
        A :class:`FinetuneResult`.

    Example:
        >>> model = TinyViT(TinyViTConfig(dim=16, depth=1, heads=2, mlp_dim=16))
        >>> X, y = torch.rand(32, 784), torch.randint(0, 5, (32,))
        >>> res = finetune(model, X, y, X, y, lr=1e-3, epochs=1, progress=False)
        >>> res.trainable == sum(p.numel() for p in model.parameters())
        True
    """
    params = list(parameters) if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; unfreeze some (e.g. the head) before finetune")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(X) / batch_size)
    start = time.perf_counter()
    history = fit(
        model, X, y, loss_fn=F.cross_entropy, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
        generator=generator, evaluate=lambda m: {"acc": accuracy(m, X_test, y_test)},
        eval_every=eval_every or epochs, progress=progress, desc=desc,
    )
    elapsed = time.perf_counter() - start
    return FinetuneResult(
        history=history,
        accuracy=history.evals[-1]["acc"],
        trainable=sum(p.numel() for p in {id(p): p for p in params}.values()),
        step_seconds=elapsed / steps,
    )


def reset_head(model: TinyViT, n_classes: int = 5, *, generator: torch.Generator | None = None) -> nn.Linear:
    """Replace ``model.head`` by a fresh trainable ``nn.Linear(dim, n_classes)``; return it.

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
    """How :func:`pretrain` trains; stored in the weight file's metadata.

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
    """Pretrain a :class:`TinyViT` on the pretraining task; return ``(model, test accuracy)``.

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
    """Write ``model``'s weights and config to a safetensors file (atomically); return the path.

    Args:
        model: the :class:`TinyViT` to save.
        path: the file; missing parent directories are created.
        extra: more JSON-serialisable metadata, returned by :func:`load_model`.

    Example:
        >>> model = TinyViT(TinyViTConfig(dim=16, depth=1, heads=2, mlp_dim=16))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_model(model, Path(tmp) / "vit.safetensors", extra={"note": "demo"})
        ...     print(path.name, path.is_file())
        vit.safetensors True
    """
    from safetensors.torch import save_file

    if not isinstance(model, TinyViT):
        raise TypeError(f"save_model expects a TinyViT, got {type(model).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # One metadata key: safetensors writes its metadata map in no fixed order, and a single
    # entry keeps the file byte-for-byte reproducible.
    record = {"format": _FORMAT, "config": asdict(model.config), **(extra or {})}
    metadata = {"lorakit": json.dumps(record, sort_keys=True)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a data file should be readable by all
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_model(path: str | os.PathLike) -> tuple[TinyViT, dict]:
    """Load a :class:`TinyViT` written by :func:`save_model`; return ``(model, metadata)``.

    Example:
        >>> model = TinyViT(TinyViTConfig(dim=16, depth=1, heads=2, mlp_dim=16))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_model(model, Path(tmp) / "vit.safetensors", extra={"note": "demo"})
        ...     loaded, meta = load_model(path)
        >>> meta["config"]["dim"], meta["note"], torch.equal(loaded.head.weight, model.head.weight)
        (16, 'demo', True)
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}; create it with `python -m lorakit.tinyformer --out {path}`")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    meta = json.loads(metadata.get("lorakit", "{}"))
    if meta.get("format") != _FORMAT:
        raise ValueError(
            f"{path} is not a lorakit TinyViT file (format={meta.get('format')!r}); "
            f"write it with lorakit.tinyformer.save_model or `python -m lorakit.tinyformer --out {path}`"
        )
    model = TinyViT(TinyViTConfig(**meta["config"]))
    model.load_state_dict(load_file(str(path)))
    return model, meta


def load_pretrained(path: str | os.PathLike | None = None, *, progress: bool = False) -> TinyViT:
    """The pretrained TinyViT: load ``path`` if present, else pretrain (default recipe) and save it.

    Args:
        path: the weight file (default :data:`DEFAULT_WEIGHTS`, ``lorakit/assets/tinyvit_fmnist.safetensors``).
        progress: show the pretraining progress bar when it has to train.

    Returns:
        The model in eval mode, all parameters trainable (freeze what you adapt).

    Example:
        >>> small = TinyViT(TinyViTConfig(dim=16, depth=1, heads=2, mlp_dim=16))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_model(small, Path(tmp) / "vit.safetensors")
        ...     model = load_pretrained(path)  # the file exists, so nothing trains
        >>> model.training, model.config.dim
        (False, 16)
        >>> model = load_pretrained()  # the book's weights, pretrained if missing  # doctest: +SKIP
    """
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        recipe = PretrainRecipe()
        model, acc = pretrain(recipe=recipe, progress=progress)
        save_model(model, path, extra={"recipe": asdict(recipe), "pretrain_test_accuracy": acc})
    model, _ = load_model(path)
    return model.eval()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: pretrain the default TinyViT and write its weights.

    ``python -m lorakit.tinyformer [--out FILE] [--seed 0] [--epochs 4]``; prints the
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
        >>> main(["--out", "lorakit/assets/tinyvit_fmnist.safetensors"])  # pretrains on FashionMNIST  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(description="Pretrain the Part IV TinyViT on FashionMNIST classes 0-4.")
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
