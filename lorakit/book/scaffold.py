"""The experiment scaffold the fine-tuning chapters share (Chapters 2, 3 and 7–12).

One of each, so that every chapter's comparison runs through the same code:

* :class:`Task` — a task's ``(X, y, X_test, y_test)``, as in-memory tensors;
* :func:`rotate` — the distribution shift of Parts II and IV: images turned by 90°;
* :func:`finetune` and :class:`FinetuneResult` — the one fine-tuning helper (any optimizer
  by name, cross-entropy, :func:`lorakit.train.fit`), with one timing convention:
  **wall-clock seconds per optimisation step** (``time.perf_counter``);
* :func:`optimizer_state_bytes` — the memory an optimizer keeps;
* :func:`save_weights`, :func:`load_weights`, :func:`load_or_pretrain` — a pretrained model
  stored as safetensors with one metadata format: a single key ``"lorakit"`` holding sorted JSON
  with a ``"format"`` tag (one key, so the file's bytes are reproducible).

Accuracy is the library's :func:`lorakit.train.accuracy` (eval mode, no gradients); every file is
written with :func:`lorakit.io.atomic_write`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, NamedTuple, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..io import atomic_write
from ..train import History, accuracy, fit

__all__ = [
    "Task",
    "rotate",
    "FinetuneResult",
    "finetune",
    "optimizer_state_bytes",
    "save_weights",
    "load_weights",
    "load_or_pretrain",
]

OptimizerName = Literal["adam", "adamw", "sgd"]
_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


class Task(NamedTuple):
    """A classification task as in-memory tensors (Chapter 3); unpacks as ``X, y, X_test, y_test``.

    Example:
        >>> task = Task(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
        >>> X, y, X_test, y_test = task
        >>> task.X.shape, len(task.y_test)
        (torch.Size([4, 2]), 2)
    """

    X: torch.Tensor
    y: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor


def rotate(X: torch.Tensor, quarter_turns: int = 1) -> torch.Tensor:
    """Rotate flattened 28×28 images by ``quarter_turns`` × 90°, counter-clockwise (Chapter 3).

    Shapes:
        ``(N, 784)`` → ``(N, 784)``.

    Example:
        >>> X = torch.arange(784.).reshape(1, 784)
        >>> torch.equal(rotate(rotate(X), 3), X)
        True
    """
    if X.ndim != 2 or X.shape[1] != 784:
        raise ValueError(f"X has shape {tuple(X.shape)}; pass flattened 28x28 images of shape (N, 784)")
    return X.reshape(-1, 28, 28).rot90(quarter_turns, dims=(1, 2)).reshape(-1, 784).contiguous()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's state tensors, e.g. Adam's two moments per parameter (Chapter 3).

    Example:
        >>> p = nn.Parameter(torch.zeros(10))
        >>> opt = torch.optim.Adam([p]); p.grad = torch.ones(10); opt.step()
        >>> optimizer_state_bytes(opt)   # exp_avg + exp_avg_sq (10 float32 each) + step
        84
    """
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns (Chapter 3).

    Attributes:
        history: the :class:`lorakit.train.History`; ``history.metric("accuracy")`` is the test
            accuracy at each evaluation.
        accuracy: test accuracy after the last epoch.
        trainable: number of trainable parameters (0: the model was only scored).
        optimizer_bytes: bytes of optimizer state (:func:`optimizer_state_bytes`).
        step_seconds: mean wall-clock seconds per optimisation step (a timing: varies run to run).

    Example:
        >>> history = History(train_loss=[0.9], evals=[{"epoch": 1, "accuracy": 0.8}])
        >>> res = FinetuneResult(history, accuracy=0.8, trainable=325, optimizer_bytes=2616, step_seconds=0.002)
        >>> res.history.metric("accuracy"), res.trainable
        ([0.8], 325)
    """

    history: History
    accuracy: float
    trainable: int
    optimizer_bytes: int
    step_seconds: float


def finetune(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    X_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    epochs: int,
    lr: float = 1e-3,
    optimizer: OptimizerName = "adamw",
    weight_decay: float = 0.0,
    batch_size: int = 64,
    sampling: Literal["shuffle", "sequential"] = "shuffle",
    generator: torch.Generator | None = None,
    parameters: Sequence[nn.Parameter] | None = None,
    eval_every: int | None = None,
    progress: bool = True,
    desc: str = "fine-tuning",
) -> FinetuneResult:
    """Train ``model``'s trainable parameters with cross-entropy; score the test accuracy (Chapter 3).

    Every fine-tuning comparison of the book (Chapter 2's source recipe, Chapter 3's methods,
    Part IV's PEFT family) runs through this one function, so they share batches, budget and
    the way they are scored and timed.

    Args:
        model: the classifier; its trainable parameters are those with ``requires_grad``.
        X, y: training inputs ``(N, ...)`` and labels ``(N,)``.
        X_test, y_test: the evaluation set, scored with :func:`lorakit.train.accuracy`.
        epochs, batch_size, sampling, generator: passed to :func:`lorakit.train.fit`.
        lr, weight_decay: the optimizer's settings.
        optimizer: ``"adamw"`` (the default; with ``weight_decay=0`` it is exactly Adam), ``"adam"`` or
            ``"sgd"`` (plain SGD, no momentum).
        parameters: train these instead of the ``requires_grad`` ones.
        eval_every: also score every ``eval_every`` epochs (default: after the last epoch only).
        progress, desc: the progress bar.

    Returns:
        A :class:`FinetuneResult`. A model with nothing to train is only scored (``trainable == 0``).

    Example:
        >>> model = nn.Linear(784, 10)
        >>> X, y = torch.rand(64, 784), torch.randint(0, 10, (64,))
        >>> res = finetune(model, X, y, X, y, epochs=2, eval_every=1, progress=False)
        >>> res.trainable, res.optimizer_bytes, len(res.history.metric("accuracy"))
        (7850, 62808, 2)
    """
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is unknown: use one of {sorted(_OPTIMIZERS)}")
    params = list(parameters) if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    params = list({id(p): p for p in params}.values())
    if not params:
        history = History(evals=[{"epoch": 0, "accuracy": accuracy(model, X_test, y_test)}])
        return FinetuneResult(history, history.evals[-1]["accuracy"], 0, 0, 0.0)
    opt = _OPTIMIZERS[optimizer](params, lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(X) / batch_size)
    start = time.perf_counter()
    history = fit(
        model, X, y, loss_fn=F.cross_entropy, optimizer=opt, epochs=epochs, batch_size=batch_size,
        sampling=sampling, generator=generator, evaluate=lambda m: {"accuracy": accuracy(m, X_test, y_test)},
        eval_every=eval_every or epochs, progress=progress, desc=desc,
    )
    elapsed = time.perf_counter() - start
    return FinetuneResult(
        history=history,
        accuracy=history.evals[-1]["accuracy"],
        trainable=sum(p.numel() for p in params),
        optimizer_bytes=optimizer_state_bytes(opt),
        step_seconds=elapsed / steps,
    )


def save_weights(model: nn.Module, path: str | os.PathLike, *, format: str, metadata: dict | None = None) -> Path:
    """Write ``model``'s state dict to a safetensors file, atomically; return the path (Chapter 3).

    Args:
        model: the model whose ``state_dict()`` is stored.
        path: the file; missing parent folders are created.
        format: the format tag :func:`load_weights` checks, e.g. ``"lorakit-tinyvit/1"``.
        metadata: more JSON-serialisable metadata (a recipe, a config), returned by :func:`load_weights`.

    Example:
        >>> import tempfile
        >>> path = save_weights(nn.Linear(2, 3), Path(tempfile.mkdtemp()) / "w.safetensors", format="demo/1")
        >>> load_weights(path, format="demo/1")[0]["weight"].shape
        torch.Size([3, 2])
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    # One metadata key: safetensors stores its metadata in a hash map, so with several keys their
    # order in the file header (and the file's bytes) would change from run to run.
    record = json.dumps({"format": format, **(metadata or {})}, sort_keys=True)

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata={"lorakit": record})
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a data file should be readable like any other

    return atomic_write(path, write)


def load_weights(path: str | os.PathLike, *, format: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_weights`; return ``(tensors, metadata)`` (Chapter 3).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a safetensors file of this ``format``.

    Example:
        >>> import tempfile
        >>> path = save_weights(nn.Linear(2, 3), Path(tempfile.mkdtemp()) / "w.safetensors", format="a/1")
        >>> load_weights(path, format="b/1")
        Traceback (most recent call last):
            ...
        ValueError: ... holds format 'a/1', not 'b/1'; ...
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("lorakit", "{}")
        meta = json.loads(raw)
        tensors = load_file(str(path))
    except Exception as error:  # safetensors and json raise their own types
        raise ValueError(f"{path} is not a readable lorakit weight file ({error}); delete it to recreate it") from error
    if meta.get("format") != format:
        raise ValueError(f"{path} holds format {meta.get('format')!r}, not {format!r}; delete it to recreate it")
    return tensors, meta


def load_or_pretrain(
    path: str | os.PathLike,
    *,
    format: str,
    build: Callable[[dict], nn.Module],
    pretrain: Callable[[], tuple[nn.Module, dict]],
) -> tuple[nn.Module, dict]:
    """Load a pretrained model from ``path``, or pretrain it and save it there first (Chapter 3).

    Args:
        path: the safetensors file.
        format: its format tag (see :func:`save_weights`).
        build: makes an untrained model from the file's metadata (e.g. a stored config).
        pretrain: trains a model; returns it and the metadata to store beside it (e.g. the recipe).

    Returns:
        ``(model, metadata)``, the model in eval mode with the stored weights.

    Raises:
        ValueError: the file is not of this format or its tensors do not fit the model built.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "w.safetensors"
        >>> make = lambda: (nn.Linear(2, 3), {"recipe": "demo"})
        >>> model, meta = load_or_pretrain(path, format="demo/1", build=lambda meta: nn.Linear(2, 3), pretrain=make)
        >>> meta["recipe"], path.is_file(), model.training
        ('demo', True, False)
    """
    path = Path(path)
    if not path.is_file():
        trained, metadata = pretrain()
        save_weights(trained, path, format=format, metadata=metadata)
    tensors, meta = load_weights(path, format=format)
    model = build(meta)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in tensors.items()}
    if expected != found:
        raise ValueError(f"{path} holds tensors {found}, but the model needs {expected}; delete the file to retrain it")
    model.load_state_dict(tensors)
    return model.eval(), meta
